//! The `ferry` CNI plugin binary: wires [`ferry_cni::run`] to the process
//! (environment, stdin, stdout, exit code) and to ferryd's socket.

use std::io::{Read, Write};

use ferry_cni::logfile::{self, LogConf};
use ferry_cni::{client, result, CniError, CniVersion, Env};

/// More than any network configuration (with prevResult) a runtime sends.
const MAX_STDIN: u64 = 16 << 20;

fn main() {
    let started = std::time::Instant::now();
    let env = Env::from_process();
    let mut stdin = Vec::new();
    let read = if matches!(env.get("CNI_COMMAND"), Ok(None)) {
        // Run by hand, not by a runtime: say what this is instead of waiting
        // on a terminal's stdin; stdout still carries the code-4 error.
        eprintln!(
            "ferry: the ferry CNI plugin, run by a container runtime with CNI_COMMAND set. \
             CNI protocol versions supported: {}",
            CniVersion::supported_list()
        );
        Ok(0)
    } else {
        std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin)
    };
    let (code, out) = match read {
        Err(e) => (
            1,
            read_error(format!(
                "cannot read the network configuration from stdin: {e}"
            )),
        ),
        Ok(_) if stdin.len() as u64 > MAX_STDIN => (
            1,
            read_error(format!(
                "the network configuration on stdin is larger than {MAX_STDIN} bytes"
            )),
        ),
        Ok(_) => ferry_cni::run(&env, &stdin, &|path, req| {
            client::call(path, req, client::Timeouts::default())
        }),
    };
    let var = |k: &str| env.get(k).ok().flatten().unwrap_or("");
    logfile::write(
        &LogConf::peek(&stdin),
        &logfile::Record {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            exit: code,
            stdout: &out,
            stdin: &stdin,
            elapsed_ms: started.elapsed().as_millis(),
        },
    );
    let mut stdout = std::io::stdout().lock();
    if !out.is_empty() {
        // Nothing useful is left to do if stdout is gone; the exit code
        // still tells the runtime.
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    std::process::exit(code);
}

fn read_error(msg: String) -> String {
    result::to_text(&result::error(
        &CniError::io(msg),
        CniVersion::LATEST.as_str(),
    ))
}

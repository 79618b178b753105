//! The compiled `ferry` binary writes one line per invocation to `logFile`,
//! and a log file it cannot open changes nothing about the CNI answer.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fcni-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ferry(env: &[(&str, &str)], stdin: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stdout).unwrap(),
    )
}

fn conf(dir: &TempDir, log_file: &str, level: &str) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "ferry-log",
        "type": "ferry",
        "ferrydSocket": dir.0.join("nobody-listens.sock"),
        "logFile": log_file,
        "logLevel": level,
    })
    .to_string()
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c0ffee"),
    ("CNI_NETNS", "/proc/self/ns/net"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/opt/cni/bin"),
];

#[test]
fn every_invocation_is_one_line_in_the_log_file() {
    let dir = TempDir::new("lines");
    // The directory is created when missing.
    let log = dir.0.join("sub/cni.log");
    let c = conf(&dir, log.to_str().unwrap(), "info");

    let (code, out) = ferry(ADD, &c);
    assert_eq!(code, 1, "{out}");
    let err: Value = serde_json::from_str(&out).expect("stdout stays the CNI answer");
    assert_eq!(err["code"], 11);

    let (code, _) = ferry(&[("CNI_COMMAND", "VERSION")], &c);
    assert_eq!(code, 0);

    let text = std::fs::read_to_string(&log).expect("log file written");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("[ERROR] ferry pid="), "{text}");
    for field in [
        "cmd=ADD",
        "containerID=c0ffee",
        "netns=/proc/self/ns/net",
        "ifname=eth0",
        "result=error",
        "code=11",
        "msg=\"ferryd is not reachable",
    ] {
        assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
    }
    assert!(lines[1].contains("[INFO]"), "{text}");
    assert!(lines[1].contains("cmd=VERSION"), "{text}");
    assert!(lines[1].contains("result=ok"), "{text}");

    // At level error, successes are not logged; failures are.
    let quiet = conf(&dir, log.to_str().unwrap(), "error");
    ferry(&[("CNI_COMMAND", "VERSION")], &quiet);
    ferry(ADD, &quiet);
    let again = std::fs::read_to_string(&log).unwrap();
    assert_eq!(again.lines().count(), 3, "{again}");
}

#[test]
fn an_unopenable_log_file_changes_nothing() {
    let dir = TempDir::new("bad");
    let with_log = conf(&dir, "/proc/self/status/cni.log", "debug");
    let without: Value = {
        let mut v: Value = serde_json::from_str(&with_log).unwrap();
        v.as_object_mut().unwrap().remove("logFile");
        v
    };
    let a = ferry(ADD, &with_log);
    let b = ferry(ADD, &without.to_string());
    assert_eq!(a, b);
    assert_eq!(a.0, 1);
}

#[test]
fn a_bad_log_level_is_an_invalid_config() {
    let dir = TempDir::new("level");
    let c = conf(&dir, "", "loud");
    let (code, out) = ferry(ADD, &c);
    assert_eq!(code, 1);
    let err: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 7, "{out}");
    assert!(err["msg"].as_str().unwrap().contains("logLevel"), "{out}");
    // DEL still succeeds past it (it never judges those fields): here it
    // fails only because ferryd is absent (11), not with 7.
    let del: Vec<(&str, &str)> = ADD
        .iter()
        .map(|(k, v)| {
            if *k == "CNI_COMMAND" {
                (*k, "DEL")
            } else {
                (*k, *v)
            }
        })
        .collect();
    let (_, out) = ferry(&del, &c);
    let err: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 11, "{out}");
}

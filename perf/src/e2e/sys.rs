//! Processes, namespaces and signals: everything here is bounded in time and
//! undone by a guard that drops (by name for namespaces, by pid for processes).

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{E2eError, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install SIGINT/SIGTERM/SIGHUP handlers that only raise a flag; every wait
/// in the harness polls it and unwinds through the guards.
pub fn install_signal_handlers() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: `sigaction` is given a zeroed struct whose handler is a plain
        // `extern "C"` function that only stores to an atomic (async-signal-safe);
        // the pointers passed are valid for the duration of the call.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(E2eError::io("sigaction", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// True once SIGINT/SIGTERM/SIGHUP arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Err(Interrupted) once a signal arrived.
pub fn check_interrupt() -> Result<()> {
    if interrupted() {
        Err(E2eError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleep up to `d`, waking early (with an error) on a signal.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Poll `f` every 20 ms until true; false after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Result<bool> {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(true);
        }
        check_interrupt()?;
        if Instant::now() >= end {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run `cmd` with `stdin` bytes, collecting output; killed (by pid) after
/// `timeout`, or at once when a signal arrives.
pub fn run_with(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Out> {
    run_inner(cmd, stdin, timeout, true)
}

/// Run a cleanup command: bounded in time but not cut short by a signal
/// (it is what runs *because* of the signal).
pub fn run_cleanup(prog: &str, args: &[&str]) -> Result<Out> {
    let mut c = Command::new(prog);
    c.args(args);
    run_inner(c, None, Duration::from_secs(30), false)
}

fn run_inner(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
    interruptible: bool,
) -> Result<Out> {
    let what = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| E2eError::Command {
        cmd: what.clone(),
        detail: format!("cannot start: {e}"),
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        // A plugin that exits without reading stdin is reported by its status, not here.
        let _ = pipe.write_all(data);
    }
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) => {}
            Err(e) => break Err(E2eError::io(format!("waiting for {what}"), e)),
        }
        if interruptible && interrupted() {
            break Err(E2eError::Interrupted);
        }
        if Instant::now() >= end {
            break Err(E2eError::Timeout {
                cmd: what.clone(),
                secs: timeout.as_secs_f64(),
            });
        }
        thread::sleep(Duration::from_millis(5));
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut texts = readers.into_iter().map(|h| h.join().unwrap_or_default());
    let stdout = texts.next().unwrap_or_default();
    let stderr = texts.next().unwrap_or_default();
    let status = status?;
    Ok(Out {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Run a program with arguments (30 s bound).
pub fn run(prog: &str, args: &[&str]) -> Result<Out> {
    let mut c = Command::new(prog);
    c.args(args);
    run_with(c, None, Duration::from_secs(30))
}

/// Run and require exit status 0; returns stdout.
pub fn run_ok(prog: &str, args: &[&str]) -> Result<String> {
    let out = run(prog, args)?;
    if !out.ok() {
        return Err(E2eError::Command {
            cmd: format!("{prog} {}", args.join(" ")),
            detail: format!(
                "exit {:?}: {}{}",
                out.code,
                out.stderr.trim(),
                out.stdout.trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// `ip netns exec NS args...`, required to succeed.
pub fn ns_run_ok(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_ok("ip", &full)
}

/// A network namespace, deleted by name on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        if !name.starts_with("fpf-") {
            return Err(E2eError::setup(
                name,
                "harness namespaces must be named fpf-*",
            ));
        }
        let _ = run("ip", &["netns", "del", name]);
        run_ok("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_cleanup("ip", &["netns", "del", &self.name]);
    }
}

/// Remove namespaces left over by earlier runs of this harness that were
/// killed without a chance to clean up (SIGKILL). Only `fpf-*` names.
pub fn remove_stale_namespaces() -> Result<Vec<String>> {
    let list = run_ok("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with("fpf-") {
            let out = run_cleanup("ip", &["netns", "del", name])?;
            if !out.ok() {
                return Err(E2eError::Command {
                    cmd: format!("ip netns del {name}"),
                    detail: out.stderr,
                });
            }
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn create(tag: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!("ferry-perf-{tag}"));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .map_err(|e| E2eError::io(format!("mkdir {}", path.display()), e))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A long-running process we started; SIGTERM then SIGKILL, by pid, on drop.
#[derive(Debug)]
pub struct Proc {
    pub what: String,
    pub child: Child,
    pub log: Option<PathBuf>,
    /// Where and how it was started, for [`Proc::respawn`].
    ns: String,
    args: Vec<String>,
}

impl Proc {
    /// Start `args` inside network namespace `ns`, output to `log` (or discarded).
    pub fn spawn_in_ns(what: &str, ns: &str, args: &[String], log: Option<&Path>) -> Result<Proc> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| E2eError::io(format!("open {}", p.display()), e))?;
                let f2 = f.try_clone().map_err(|e| E2eError::io("dup log", e))?;
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd.spawn().map_err(|e| E2eError::Command {
            cmd: format!("ip netns exec {ns} {}", args.join(" ")),
            detail: format!("cannot start: {e}"),
        })?;
        Ok(Proc {
            what: what.to_string(),
            child,
            log: log.map(Path::to_path_buf),
            ns: ns.to_string(),
            args: args.to_vec(),
        })
    }

    /// Start the same command line again in the same namespace (output
    /// appended to the same log). The old process must be gone (reaped).
    pub fn respawn(&mut self) -> Result<()> {
        if self.alive() {
            return Err(E2eError::setup(
                &self.ns,
                format!("{} is still running: not started twice", self.what),
            ));
        }
        let fresh = Proc::spawn_in_ns(&self.what, &self.ns, &self.args, self.log.as_deref())?;
        // The old value's Drop finds its child reaped and does nothing.
        *self = fresh;
        Ok(())
    }

    /// The pid (`ip netns exec` execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by pid, then reap (bounded: a SIGKILLed process exits).
    pub fn kill_now(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout`: its exit status, or `None` when it
    /// had to be SIGKILLed (or had already been reaped).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.alive() {
            return None;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the pid of our own child that has not been reaped
            // yet (alive() above said it is running), so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill_now();
        None
    }

    /// Open file descriptors (entries of /proc/<pid>/fd); `None` once gone.
    pub fn fd_count(&mut self) -> Option<usize> {
        if !self.alive() {
            return None;
        }
        fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .ok()
            .map(|d| d.count())
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self) -> String {
        let text = self
            .log
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Move the calling thread into network namespace `ns` (by its name under
/// /var/run/netns). Only for threads made for that purpose: the thread stays there.
pub fn enter_netns(ns: &str) -> Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let f = fs::File::open(&path).map_err(|e| E2eError::io(format!("open {path}"), e))?;
    // SAFETY: setns(2) with a valid open fd of a network namespace file; it only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(E2eError::io(
            format!("setns {path}"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Run `f` on a fresh thread inside network namespace `ns` and return its result.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            f()
        })
        .join()
        .map_err(|_| E2eError::setup(ns, "a thread inside the namespace panicked"))?
    })
}

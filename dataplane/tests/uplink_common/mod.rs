//! What the uplink tests share: throwaway namespaces removed by name on
//! drop (even when the test fails), `ip` commands, and running a closure on
//! a thread inside a namespace (setns changes only that thread).

#![allow(dead_code, reason = "each test file uses part of it")]

use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// Network namespaces `fup<tag>-<pid>`, made on creation, deleted by name
/// on drop. Nothing is ever done to the test's own namespace.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn new(tags: &[&str]) -> Namespaces {
        let pid = std::process::id();
        let names: Vec<String> = tags.iter().map(|t| format!("fup{t}-{pid}")).collect();
        let guard = Namespaces(names);
        for ns in &guard.0 {
            // A leftover of an earlier run with the same pid.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        guard
    }

    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Run a command; its stdout, or the error with its stderr.
pub fn try_run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {args:?} ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn ip(args: &[&str]) -> String {
    try_run("ip", args).unwrap_or_else(|e| panic!("{e}"))
}

/// `ip` with the arguments of `line`, split at spaces.
pub fn ip_line(line: &str) -> String {
    ip(&line.split(' ').collect::<Vec<_>>())
}

/// A veth pair with 2 RX and 2 TX queues: `a` in `ns_a`, `b` in `ns_b`,
/// both up.
pub fn veth_pair(ns_a: &str, a: &str, ns_b: &str, b: &str) {
    ip_line(&format!(
        "-n {ns_a} link add {a} numtxqueues 2 numrxqueues 2 type veth peer name {b} netns {ns_b}"
    ));
    ip_line(&format!("-n {ns_a} link set {a} up"));
    ip_line(&format!("-n {ns_b} link set {b} up"));
}

/// `f` on a new thread inside the namespace `ns`; its panic is the caller's.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let t = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open the namespace");
        // SAFETY: setns(2) on a namespace fd we own; it changes only the
        // calling thread, which is this test's own.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    });
    match t.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Poll `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! The pod namespace a tap endpoint names (`Endpoint::netns`), opened so
//! that no path in a table-API message can make the dataplane attach to
//! something that is not a pod's namespace.
//!
//! [`open_pod_netns`] opens the path with `O_NONBLOCK` (a FIFO or a device
//! there opens at once and is then refused, instead of blocking the control
//! thread) and accepts it only if
//! - it is a namespace file (`fstatfs` says nsfs) of a *network* namespace
//!   (`NS_GET_NSTYPE`);
//! - it is not the dataplane's own namespace nor the initial one (pid 1's):
//!   a tap there would be a node interface;
//! - it is still the namespace ferryd saw at ADD when the endpoint says
//!   which (`Endpoint::netns_id`, compared with `fstat` of the opened
//!   file): `/proc/<pid>/ns/net` paths are reused by other processes.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;

use ferry_api::table::NetnsId;

/// A namespace path that was refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("network namespace path {path}: {fault}")]
pub struct NetnsError {
    pub path: String,
    pub fault: NetnsFault,
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsFault {
    #[error("cannot open it: {0}")]
    Open(io::Error),
    #[error("not a network namespace: {0}")]
    NotNetns(String),
    #[error("it is {0} network namespace, not a pod's")]
    Node(&'static str),
    #[error("it is now namespace {found}, not {expected} as the endpoint says")]
    Changed { expected: NetnsId, found: NetnsId },
}

fn id_of(md: &std::fs::Metadata) -> NetnsId {
    NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    }
}

/// The namespaces no pod may name, with whose they are; one that cannot be
/// read is left out (a restricted /proc).
fn node_namespaces() -> Vec<(NetnsId, &'static str)> {
    [
        ("/proc/self/ns/net", "the dataplane's own"),
        ("/proc/1/ns/net", "the initial (pid 1)"),
    ]
    .into_iter()
    .filter_map(|(path, whose)| Some((id_of(&std::fs::metadata(path).ok()?), whose)))
    .collect()
}

/// Open `path` as a pod's network namespace; with `expect`, it must be
/// that namespace. See the module comment for every check.
pub fn open_pod_netns(path: &str, expect: Option<NetnsId>) -> Result<File, NetnsError> {
    open_checked(path, expect).map_err(|fault| NetnsError {
        path: path.to_string(),
        fault,
    })
}

fn open_checked(path: &str, expect: Option<NetnsId>) -> Result<File, NetnsFault> {
    let (file, dev, ino) = ferry_tun::netns::open(path).map_err(|e| match e {
        ferry_tun::netns::OpenError::Io(e) => NetnsFault::Open(e),
        ferry_tun::netns::OpenError::NotNetns(what) => NetnsFault::NotNetns(what),
    })?;
    let found = NetnsId { dev, ino };
    if let Some((_, whose)) = node_namespaces().into_iter().find(|(id, _)| *id == found) {
        return Err(NetnsFault::Node(whose));
    }
    match expect {
        Some(expected) if expected != found => Err(NetnsFault::Changed { expected, found }),
        _ => Ok(file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    /// `open_pod_netns(path)` on a thread, waited for at most 5 s: a FIFO
    /// must not block.
    fn open_bounded(path: &str, expect: Option<NetnsId>) -> Result<File, NetnsError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.to_string();
        std::thread::spawn(move || {
            let _ = tx.send(open_pod_netns(&p, expect));
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("opening the namespace path blocked")
    }

    #[test]
    fn files_that_are_not_network_namespaces_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("fdp-netns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (fifo, plain) = (dir.join("fifo"), dir.join("plain"));
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success() || fifo.exists());
        std::fs::write(&plain, b"x").unwrap();
        for p in [&fifo, &plain] {
            let e = open_bounded(p.to_str().unwrap(), None).unwrap_err();
            assert!(matches!(e.fault, NetnsFault::NotNetns(_)), "{e}");
        }
        let e = open_bounded(dir.join("absent").to_str().unwrap(), None).unwrap_err();
        assert!(matches!(e.fault, NetnsFault::Open(_)), "{e}");
        let e = open_bounded("/proc/self/ns/uts", None).unwrap_err();
        assert!(e.to_string().contains("another type"), "{e}");
        let e = open_bounded("/proc/self/ns/net", None).unwrap_err();
        assert!(
            matches!(e.fault, NetnsFault::Node(whose) if whose.contains("own")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A named namespace made for the test (`ip netns add`), removed by
    /// name on drop.
    struct TestNetns(String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    #[test]
    fn a_pod_namespace_opens_and_must_be_the_one_expected() {
        let ns = TestNetns(format!("fdp-nsid-{}", std::process::id()));
        let made = Command::new("ip").args(["netns", "add", &ns.0]).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot make a network namespace here");
            return;
        }
        let path = format!("/run/netns/{}", ns.0);
        let id = id_of(&std::fs::metadata(&path).unwrap());
        open_bounded(&path, None).expect("a pod namespace");
        open_bounded(&path, Some(id)).expect("the namespace expected");
        let other = NetnsId {
            ino: id.ino + 1,
            ..id
        };
        let e = open_bounded(&path, Some(other)).unwrap_err();
        assert!(matches!(e.fault, NetnsFault::Changed { .. }), "{e}");
    }
}

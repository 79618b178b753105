//! Opening a pod's network namespace from a path that comes from outside
//! (CNI_NETNS, or a record written at ADD), so that no such path can hurt
//! the node.
//!
//! Every open is checked, in this order:
//! - bounded: the `open` runs on a thread of its own and the caller waits at
//!   most [`OPEN_TIMEOUT`] (a path on a hung filesystem never blocks an async
//!   runtime thread, nor ferryd's exit);
//! - non-blocking: `O_NONBLOCK`, so a FIFO or a device opens (and is then
//!   refused) instead of waiting for a writer;
//! - an nsfs file of a *network* namespace (`fstatfs` magic, then the
//!   `NS_GET_NSTYPE` ioctl);
//! - not one of the node's own namespaces ([`Forbidden`]: ferryd's, the
//!   dataplane's, pid 1's): a pod made there would rewrite the node's routes;
//! - when the caller knows which namespace it means (a stored
//!   [`NetnsId`]), still that one: `/proc/<pid>/ns/net` paths are reused.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_api::table::NetnsId;
use nix::sched::CloneFlags;
use rtnetlink::Handle;

use super::NetlinkError;

/// Longest wait for the `open` of a namespace path.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path} does not exist")]
    Missing { path: String },
    #[error("{path} is not a network namespace: {what}")]
    NotNetns { path: String, what: String },
    #[error("{path} is {whose} network namespace; a pod cannot be attached there")]
    Forbidden { path: String, whose: &'static str },
    #[error("{path} is now {found}, not the namespace {expected} it named at ADD")]
    Changed {
        path: String,
        expected: NetnsId,
        found: NetnsId,
    },
    #[error("opening {path} did not finish within {OPEN_TIMEOUT:?}")]
    Timeout { path: String },
    #[error("open {path}: {msg}")]
    Io { path: String, msg: String },
}

impl NetnsError {
    /// The namespace named is gone (or is another one now): whatever ferry
    /// made in it went with it.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            NetnsError::Missing { .. } | NetnsError::Changed { .. }
        )
    }
}

/// The node's own namespaces, which no pod may name. Shared between the
/// request handlers and the dataplane client (which learns the
/// dataplane's namespace at each connect).
#[derive(Debug, Default, Clone)]
pub struct Forbidden {
    ids: Arc<RwLock<Vec<(NetnsId, &'static str)>>>,
}

impl Forbidden {
    /// ferryd's own namespace and the initial one (pid 1's). Either may be
    /// unreadable (a restricted /proc): that one is then not known.
    pub fn node() -> Forbidden {
        let f = Forbidden::default();
        for (path, whose) in [
            ("/proc/self/ns/net", "ferryd's own"),
            ("/proc/1/ns/net", "the initial (pid 1)"),
        ] {
            match id_of_path(path) {
                Ok(id) => f.add(id, whose),
                Err(e) => log::warn!("cannot identify {whose} network namespace: {e}"),
            }
        }
        f
    }

    pub fn add(&self, id: NetnsId, whose: &'static str) {
        let mut ids = self.ids.write().unwrap_or_else(|p| p.into_inner());
        if !ids.iter().any(|(i, _)| *i == id) {
            ids.push((id, whose));
        }
    }

    /// Whose namespace `id` is, if it is one of the node's.
    pub fn whose(&self, id: NetnsId) -> Option<&'static str> {
        let ids = self.ids.read().unwrap_or_else(|p| p.into_inner());
        ids.iter().find(|(i, _)| *i == id).map(|(_, w)| *w)
    }
}

/// The identity of the namespace of process `pid` (for the dataplane,
/// from its socket's peer credentials).
pub fn id_of_pid(pid: i32) -> Result<NetnsId, NetnsError> {
    id_of_path(&format!("/proc/{pid}/ns/net"))
}

fn id_of_path(path: &str) -> Result<NetnsId, NetnsError> {
    let md = std::fs::metadata(path).map_err(|e| io_err(path, &e))?;
    Ok(NetnsId {
        dev: md.dev(),
        ino: md.ino(),
    })
}

fn io_err(path: &str, e: &std::io::Error) -> NetnsError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NetnsError::Missing {
            path: path.to_string(),
        }
    } else {
        NetnsError::Io {
            path: path.to_string(),
            msg: e.to_string(),
        }
    }
}

/// Open `path` as a pod network namespace (see the module comment for
/// every check). With `expect`, the namespace must be that one.
pub async fn open(
    path: &str,
    expect: Option<NetnsId>,
    forbidden: &Forbidden,
) -> Result<(File, NetnsId), NetnsError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let p = path.to_string();
    std::thread::Builder::new()
        .name("ferryd-nsopen".into())
        .spawn(move || {
            // The receiver is gone only after a timeout: nothing to report.
            let _ = tx.send(open_blocking(&p));
        })
        .map_err(|e| NetnsError::Io {
            path: path.to_string(),
            msg: format!("start a thread: {e}"),
        })?;
    let (file, id) = match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) => {
            return Err(NetnsError::Io {
                path: path.to_string(),
                msg: "open thread ended without an answer".into(),
            })
        }
        // The thread is left to finish (or not) on its own; a
        // non-blocking open of an nsfs file never waits.
        Err(_) => {
            return Err(NetnsError::Timeout {
                path: path.to_string(),
            })
        }
    };
    check(path, id, expect, forbidden)?;
    Ok((file, id))
}

/// The checks that need no I/O: the namespace is not the node's own, and
/// is the one expected.
pub fn check(
    path: &str,
    id: NetnsId,
    expect: Option<NetnsId>,
    forbidden: &Forbidden,
) -> Result<(), NetnsError> {
    if let Some(whose) = forbidden.whose(id) {
        return Err(NetnsError::Forbidden {
            path: path.to_string(),
            whose,
        });
    }
    match expect {
        Some(expected) if expected != id => Err(NetnsError::Changed {
            path: path.to_string(),
            expected,
            found: id,
        }),
        _ => Ok(()),
    }
}

/// The blocking part of [`open`]: open without blocking, then check that
/// the file is a network namespace.
pub fn open_blocking(path: &str) -> Result<(File, NetnsId), NetnsError> {
    match ferry_tun::netns::open(path) {
        Ok((file, dev, ino)) => Ok((file, NetnsId { dev, ino })),
        Err(ferry_tun::netns::OpenError::Io(e)) => Err(io_err(path, &e)),
        Err(ferry_tun::netns::OpenError::NotNetns(what)) => Err(NetnsError::NotNetns {
            path: path.to_string(),
            what,
        }),
    }
}

/// Run `f` with a netlink handle inside the network namespace at `path`
/// (opened and checked by [`open`]: with `expect`, it must still be
/// that namespace), on a dedicated OS thread (setns affects only the
/// calling thread).
pub async fn in_netns<F, Fut, T>(
    path: &str,
    expect: Option<NetnsId>,
    forbidden: &Forbidden,
    f: F,
) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    let (ns, _) = open(path, expect, forbidden).await?;
    in_netns_file(ns, path, f).await
}

pub(super) async fn in_netns_file<F, Fut, T>(ns: File, path: &str, f: F) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    on_own_thread(Some(ns), path, f).await
}

/// Run `f` with a netlink connection of its own on an OS thread of its
/// own: in namespace `ns` when given (setns affects only the calling
/// thread), else in the namespace of the thread that calls this (ferryd's,
/// for its runtime's threads). `what` names the namespace in errors. A
/// netlink request is served inside the sending thread's `sendto`, so
/// requests that wait in the kernel (a link's deletion) wait side by side
/// only on threads and sockets of their own.
pub(super) async fn on_own_thread<F, Fut, T>(
    ns: Option<File>,
    what: &str,
    f: F,
) -> Result<T, NetlinkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned_path = what.to_string();
    let thread_path = owned_path.clone();
    std::thread::Builder::new()
        .name("ferryd-netns".into())
        .spawn(move || {
            let run = || -> Result<T, NetlinkError> {
                if let Some(ns) = ns {
                    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetlinkError::Setns {
                            path: thread_path.clone(),
                            source,
                        }
                    })?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetlinkError::Thread {
                        path: thread_path.clone(),
                        msg: e.to_string(),
                    })?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
                    tokio::spawn(conn);
                    f(handle).await
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|e| NetlinkError::Thread {
            path: owned_path.clone(),
            msg: e.to_string(),
        })?;
    rx.await.map_err(|_| NetlinkError::Thread {
        path: owned_path,
        msg: "thread ended without an answer".into(),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> NetnsId {
        NetnsId { dev: 4, ino }
    }

    #[test]
    fn own_and_changed_namespaces_are_refused() {
        let f = Forbidden::default();
        f.add(id(1), "ferryd's own");
        f.add(id(1), "twice");
        assert!(matches!(
            check("/p", id(1), None, &f),
            Err(NetnsError::Forbidden {
                whose: "ferryd's own",
                ..
            })
        ));
        assert_eq!(check("/p", id(2), None, &f), Ok(()));
        assert_eq!(check("/p", id(2), Some(id(2)), &f), Ok(()));
        let changed = check("/p", id(3), Some(id(2)), &f).unwrap_err();
        assert!(changed.is_gone(), "{changed}");
        assert!(changed.to_string().contains("net:[3]"), "{changed}");
    }

    #[test]
    fn non_namespace_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("ferryd-nsopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").unwrap();
        for p in [&fifo, &plain] {
            let e = open_blocking(p.to_str().unwrap()).unwrap_err();
            assert!(matches!(e, NetnsError::NotNetns { .. }), "{e}");
        }
        let e = open_blocking(dir.join("absent").to_str().unwrap()).unwrap_err();
        assert!(matches!(e, NetnsError::Missing { .. }), "{e}");
        // A namespace of another type is refused too.
        let e = open_blocking("/proc/self/ns/uts").unwrap_err();
        assert!(e.to_string().contains("type"), "{e}");
        let (_, own) = open_blocking("/proc/self/ns/net").unwrap();
        assert_eq!(own, id_of_path("/proc/self/ns/net").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

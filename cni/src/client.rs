//! The one round trip to ferryd: a Unix stream socket, one `PodRequest`
//! line out, one `PodResponse` line back (ferry_api::wire framing), every
//! step bounded by a timeout.

use std::io::{self, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ferry_api::pod::{PodRequest, PodResponse};
use ferry_api::wire::{self, WireError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub write: Duration,
    /// ADD waits for IPAM, plumbing and the dataplane's ack.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            write: Duration::from_secs(5),
            read: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("connect to {path}: no answer within {timeout:?}")]
    ConnectTimeout { path: PathBuf, timeout: Duration },
    #[error("send the request to {path}: {source}")]
    Send { path: PathBuf, source: WireError },
    #[error("no reply from {path} within {timeout:?}")]
    ReplyTimeout { path: PathBuf, timeout: Duration },
    #[error("read the reply from {path}: {source}")]
    Receive { path: PathBuf, source: WireError },
}

impl ClientError {
    /// Whether the failure says ferryd is not there (or went away) rather
    /// than that it answered something we cannot read.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectTimeout { .. }
            | ClientError::Send { .. } => true,
            ClientError::ReplyTimeout { .. } => false,
            ClientError::Receive { source, .. } => {
                matches!(source, WireError::Io(_) | WireError::Closed)
            }
        }
    }
}

/// Sends `req` to the ferryd listening at `path` and returns its answer.
pub fn call(path: &Path, req: &PodRequest, timeouts: Timeouts) -> Result<PodResponse, ClientError> {
    let stream = connect(path, timeouts.connect)?;
    // ferryd learns when we stop waiting, so it rolls back what it cannot
    // finish by then instead of completing it behind the runtime's back.
    let mut req = req.clone();
    if req.deadline_ms.is_none() {
        req.deadline_ms = deadline_ms(timeouts.read);
    }
    let req = &req;
    let send_err = |source| ClientError::Send {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_write_timeout(Some(timeouts.write))
        .map_err(|e| send_err(WireError::Io(e)))?;
    stream
        .set_read_timeout(Some(timeouts.read))
        .map_err(|e| send_err(WireError::Io(e)))?;
    let mut writer = &stream;
    wire::write_message(&mut writer, req).map_err(send_err)?;
    let mut reader = BufReader::new(&stream);
    wire::read_message(&mut reader).map_err(|source| match source {
        WireError::Io(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::ReplyTimeout {
                path: path.to_path_buf(),
                timeout: timeouts.read,
            }
        }
        source => ClientError::Receive {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Milliseconds since the Unix epoch, `after` from now.
fn deadline_ms(after: Duration) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from((now + after).as_millis()).ok()
}

/// `UnixStream::connect` blocks while the listener's backlog is full; it
/// runs on a helper thread so the wait is bounded. A thread left blocked
/// after the timeout ends with the process (the binary makes one call).
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let (tx, rx) = mpsc::channel();
    let target = path.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("ferryd-connect".into())
        .spawn(move || {
            // The receiver is gone only after a timeout; nothing to report then.
            let _ = tx.send(UnixStream::connect(target));
        });
    if let Err(source) = spawned {
        return Err(ClientError::Connect {
            path: path.to_path_buf(),
            source,
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ClientError::Connect {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Err(ClientError::ConnectTimeout {
            path: path.to_path_buf(),
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::net::UnixListener;

    use ferry_api::pod::{Command, IpamRequest, PodError};

    use super::*;

    fn request() -> PodRequest {
        PodRequest {
            command: Command::Status,
            network: "ferry".into(),
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: BTreeMap::new(),
            ipam: IpamRequest::default(),
            mtu: None,
            attachment: Default::default(),
            valid_attachments: vec![],
            prev_result: None,
            deadline_ms: None,
        }
    }

    fn temp_socket(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("fcni-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn round_trip_with_a_real_listener() {
        let path = temp_socket("rt");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(&conn);
            let req: PodRequest = wire::read_message(&mut r).unwrap();
            let mut w = &conn;
            wire::write_message(
                &mut w,
                &PodResponse::Error(PodError {
                    code: 101,
                    msg: "pool exhausted".into(),
                    details: "x".into(),
                }),
            )
            .unwrap();
            req
        });
        let resp = call(&path, &request(), Timeouts::default()).unwrap();
        assert_eq!(
            resp,
            PodResponse::Error(PodError {
                code: 101,
                msg: "pool exhausted".into(),
                details: "x".into()
            })
        );
        // The request arrives as sent, plus the time the plugin stops
        // waiting (about the read timeout from now).
        let mut got = server.join().unwrap();
        let deadline = got.deadline_ms.take().expect("a deadline is sent");
        let now = deadline_ms(Duration::ZERO).unwrap();
        let read = Timeouts::default().read.as_millis() as u64;
        assert!(
            deadline > now && deadline <= now + read,
            "{deadline} vs {now}"
        );
        assert_eq!(got, request());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn failures_are_classified() {
        let missing = temp_socket("missing");
        let e = call(&missing, &request(), Timeouts::default()).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(e.is_unreachable());

        // A listener that closes without answering: EOF is "unreachable".
        let path = temp_socket("eof");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(&conn);
            let _: PodRequest = wire::read_message(&mut r).unwrap();
        });
        let e = call(&path, &request(), Timeouts::default()).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(
                e,
                ClientError::Receive {
                    source: WireError::Closed,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_unreachable());

        // A listener that never answers: bounded by the read timeout.
        let listener = UnixListener::bind({
            std::fs::remove_file(&path).unwrap();
            &path
        })
        .unwrap();
        let short = Timeouts {
            read: Duration::from_millis(200),
            ..Timeouts::default()
        };
        let e = call(&path, &request(), short).unwrap_err();
        assert!(matches!(e, ClientError::ReplyTimeout { .. }), "{e}");
        assert!(!e.is_unreachable());
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }
}

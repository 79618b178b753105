//! The table-API server: a Unix stream socket, newline-delimited JSON
//! ([`ferry_api::wire`]), one thread per connection.
//!
//! Every connection must start with `Hello`. Requests are served in turn
//! under the dataplane's Mutex, so updates from different clients never
//! interleave (one update at a time), while Stats/Tables work from any
//! connection. The Mutex is the control side's only: workers never take it.

use std::fs;
use std::io::{self, BufReader, BufWriter};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_api::table::{Request, Response};
use ferry_api::wire::{self, WireError};

use crate::control::Dataplane;
use crate::port::PortBackend;

/// How often the accept loop looks at the stop flag.
const ACCEPT_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating the socket directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("another dataplane is already serving {path}")]
    InUse { path: PathBuf },
    #[error("removing the stale socket {path}: {source}")]
    Stale { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("binding {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("starting the server thread: {0}")]
    Spawn(io::Error),
}

/// Bind `path`: create its directory, replace a stale socket file (one no
/// process answers on), refuse a live one.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            fs::remove_file(path).map_err(|source| ServerError::Stale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serve connections on `listener` until `stop` is set.
pub fn spawn<B: PortBackend>(
    listener: UnixListener,
    dataplane: Arc<Mutex<Dataplane<B>>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ServerError> {
    listener.set_nonblocking(true).map_err(ServerError::Spawn)?;
    std::thread::Builder::new()
        .name("ferry-control".into())
        .spawn(move || accept_loop(listener, dataplane, stop))
        .map_err(ServerError::Spawn)
}

fn accept_loop<B: PortBackend>(
    listener: UnixListener,
    dataplane: Arc<Mutex<Dataplane<B>>>,
    stop: Arc<AtomicBool>,
) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `pfd` is one valid pollfd for the listener, which stays
        // open for the whole call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ACCEPT_TICK.as_millis() as i32) };
        if rc <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let dp = Arc::clone(&dataplane);
                let spawned = std::thread::Builder::new()
                    .name("ferry-conn".into())
                    .spawn(move || serve_connection(stream, dp));
                if let Err(e) = spawned {
                    log::error!("cannot start a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::warn!("accept on the table-API socket: {e}");
                std::thread::sleep(ACCEPT_TICK);
            }
        }
    }
}

/// One client: Hello first, then any requests, until it hangs up.
pub fn serve_connection<B: PortBackend>(stream: UnixStream, dataplane: Arc<Mutex<Dataplane<B>>>) {
    if let Err(e) = stream.set_nonblocking(false) {
        log::warn!("table-API connection: {e}");
        return;
    }
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = BufWriter::new(write_half);
    let mut greeted = false;
    loop {
        let response = match wire::read_message::<_, Request>(&mut reader) {
            Ok(req) => {
                let is_hello = matches!(req, Request::Hello { .. });
                if !greeted && !is_hello {
                    Response::Error {
                        message: "the first message on a connection must be hello".into(),
                    }
                } else {
                    let resp = dataplane
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .handle(req);
                    if is_hello {
                        greeted = matches!(resp, Response::Hello { .. });
                    }
                    resp
                }
            }
            Err(WireError::Closed) => return,
            Err(WireError::Decode(e)) => Response::Error {
                message: format!("malformed request: {e}"),
            },
            Err(e @ WireError::TooLong) => {
                let _ = wire::write_message(
                    &mut writer,
                    &Response::Error {
                        message: e.to_string(),
                    },
                );
                return;
            }
            Err(e) => {
                log::debug!("table-API connection closed: {e}");
                return;
            }
        };
        if let Err(e) = wire::write_message(&mut writer, &response) {
            log::debug!("table-API connection: writing the reply: {e}");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::DataplaneConfig;
    use crate::mem::{MemBackend, MemNetwork};
    use ferry_api::table::API_VERSION;
    use std::io::Write;

    #[test]
    fn a_connection_must_say_hello_and_survives_bad_lines() {
        let cfg = DataplaneConfig {
            workers: 1,
            cpus: vec![None],
            batch: 8,
            idle_timeout: Duration::from_millis(1),
            idle_spin: Duration::ZERO,
        };
        let dp = Dataplane::start(MemBackend::new(MemNetwork::new()), &cfg).unwrap();
        let dp = Arc::new(Mutex::new(dp));
        let (client, server_end) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_connection(server_end, dp));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut w = client.try_clone().unwrap();
        let mut r = BufReader::new(client);
        fn call(w: &mut UnixStream, r: &mut BufReader<UnixStream>, req: &Request) -> Response {
            wire::write_message(w, req).unwrap();
            wire::read_message(r).unwrap()
        }
        let reply = call(&mut w, &mut r, &Request::Stats);
        assert!(matches!(reply, Response::Error { message } if message.contains("hello")));
        let reply = call(&mut w, &mut r, &Request::Hello { api_version: 99 });
        assert!(matches!(reply, Response::Error { .. }));
        let reply = call(&mut w, &mut r, &Request::Stats);
        assert!(
            matches!(reply, Response::Error { .. }),
            "a refused hello does not count"
        );
        assert_eq!(
            call(
                &mut w,
                &mut r,
                &Request::Hello {
                    api_version: API_VERSION
                }
            ),
            Response::Hello {
                api_version: API_VERSION,
                workers: 1,
                mtu_limits: Some(ferry_api::table::MtuLimits {
                    veth: 2048 - 14,
                    tap: 65535
                }),
            }
        );
        assert!(matches!(
            call(&mut w, &mut r, &Request::Stats),
            Response::Stats(_)
        ));
        let reply = call(&mut w, &mut r, &Request::Tables);
        assert!(matches!(reply, Response::Tables(d) if d.generation == 0));
        // A malformed line gets an error reply and the connection goes on.
        w.write_all(b"{\"op\":\"bogus\"}\n").unwrap();
        let resp: Response = wire::read_message(&mut r).unwrap();
        assert!(matches!(resp, Response::Error { message } if message.contains("malformed")));
        assert!(matches!(
            call(&mut w, &mut r, &Request::Stats),
            Response::Stats(_)
        ));
        drop(w);
        drop(r);
        t.join().unwrap();
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = std::env::temp_dir().join(format!("fdp-srv-{}", std::process::id()));
        let path = dir.join("sub").join("dp.sock");
        let first = bind(&path).expect("bind creates the directory");
        assert!(matches!(bind(&path), Err(ServerError::InUse { .. })));
        drop(first); // the file stays behind: stale
        assert!(path.exists());
        let second = bind(&path).expect("a stale socket is replaced");
        drop(second);
        let plain = dir.join("plain");
        fs::write(&plain, b"x").unwrap();
        assert!(matches!(bind(&plain), Err(ServerError::NotASocket { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}

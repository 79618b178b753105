//! The table-API server: a Unix stream socket, newline-delimited JSON
//! ([`ferry_api::wire`]), one thread per connection.
//!
//! Who may speak: the socket file is mode 0600 (set right after bind; the
//! peer check below also covers the moment before), every accepted
//! connection's peer credentials (`SO_PEERCRED`) must be uid 0 or the
//! dataplane's own effective uid, or it is closed with a log line; at most
//! [`MAX_CONNECTIONS`] are served at once, and one more gets an `Error`
//! reply and is closed; a message is at most
//! [`ferry_api::wire::MAX_MESSAGE`] bytes. Binding never takes over a
//! socket another dataplane still answers on.
//!
//! Every connection must start with `Hello`. Requests are served in turn
//! under the dataplane's Mutex, so updates from different clients never
//! interleave (one update at a time), while Stats/Tables work from any
//! connection. The Mutex is the control side's only: workers never take it.

use std::io::{self, BufReader, BufWriter};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ferry_api::table::{Request, Response};
use ferry_api::wire::{self, WireError};

use crate::control::Dataplane;
use crate::io::port::PortBackend;

/// How often the accept loop looks at the stop flag.
const ACCEPT_TICK: Duration = Duration::from_millis(100);
/// Connections served at once. ferryd keeps one; ferryctl and metrics
/// scrapes open one per request.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest wait to tell a refused client why.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

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
    #[error("setting mode 0600 on {path}: {source}")]
    Chmod { path: PathBuf, source: io::Error },
    #[error("starting the server thread: {0}")]
    Spawn(io::Error),
}

/// Bind `path`: create its directory, replace a stale socket file (one no
/// process answers on), refuse a live one; the socket is mode 0600
/// ([`wire::bind_private`]).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use wire::BindError as B;
    wire::bind_private(path)
        .map(|(listener, _)| listener)
        .map_err(|e| match e {
            B::Dir { path, source } => ServerError::Dir { path, source },
            B::InUse { path } => ServerError::InUse { path },
            B::NotASocket { path } => ServerError::NotASocket { path },
            B::Stale { path, source } => ServerError::Stale { path, source },
            B::Bind { path, source } => ServerError::Bind { path, source },
            B::Chmod { path, source } => ServerError::Chmod { path, source },
        })
}

/// Whether a peer with uid `peer` may use the table API of a dataplane
/// running with effective uid `own`.
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == 0 || peer == own
}

/// The credentials of the process at the other end of `stream`, as the
/// kernel recorded them at connect (`SO_PEERCRED`).
fn peer_credentials(stream: &UnixStream) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a writable ucred of `len` bytes that outlives the
    // call, and the fd is the stream's, open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

/// One of the [`MAX_CONNECTIONS`] places; given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decide whether the connection just accepted is served: its peer must be
/// allowed and a place free. A refused connection is closed here (with an
/// `Error` reply when it only came too many).
fn admit(stream: &UnixStream, active: &Arc<AtomicUsize>) -> Option<Slot> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    match peer_credentials(stream) {
        Ok(c) if peer_allowed(c.uid, own) => {}
        Ok(c) => {
            log::warn!(
                "table-API connection from uid {} (pid {}) refused: only uid 0 or {own} may use it",
                c.uid,
                c.pid
            );
            return None;
        }
        Err(e) => {
            log::warn!("table-API connection refused: reading its peer credentials: {e}");
            return None;
        }
    }
    // Only the accept loop adds to `active`, so a place seen free here is
    // still free when taken (connection threads only give places back).
    if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
        log::warn!("table-API connection refused: {MAX_CONNECTIONS} already served");
        let mut w = stream;
        let _ = w.set_write_timeout(Some(REFUSAL_WRITE_TIMEOUT));
        let _ = wire::write_message(
            &mut w,
            &Response::Error {
                message: format!(
                    "too many table-API connections ({MAX_CONNECTIONS} at a time); try again"
                ),
            },
        );
        return None;
    }
    active.fetch_add(1, Ordering::Relaxed);
    Some(Slot(Arc::clone(active)))
}

/// Serve connections on `listener` until `stop` is set.
pub fn spawn<B: PortBackend>(
    listener: UnixListener,
    dataplane: Arc<Mutex<Dataplane<B>>>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ServerError> {
    listener.set_nonblocking(true).map_err(ServerError::Spawn)?;
    {
        let (dp, stop) = (Arc::clone(&dataplane), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("ferry-neigh".into())
            .spawn(move || neighbour_loop(dp, stop))
            .map_err(ServerError::Spawn)?;
    }
    std::thread::Builder::new()
        .name("ferry-control".into())
        .spawn(move || accept_loop(listener, dataplane, stop))
        .map_err(ServerError::Spawn)
}

/// How often the uplink's peers are resolved again: a changed MAC (a peer
/// replaced, a gateway failed over) reaches the tables within this.
const NEIGHBOUR_REFRESH: Duration = Duration::from_millis(500);

/// Follow the peers' MACs until `stop` ([`Dataplane::refresh_neighbours`]).
fn neighbour_loop<B: PortBackend>(dataplane: Arc<Mutex<Dataplane<B>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(NEIGHBOUR_REFRESH);
        dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refresh_neighbours();
    }
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
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `pfd` is one valid pollfd for the listener, which stays
        // open for the whole call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ACCEPT_TICK.as_millis() as i32) };
        if rc <= 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let Some(slot) = admit(&stream, &active) else {
                    continue;
                };
                let dp = Arc::clone(&dataplane);
                let spawned =
                    std::thread::Builder::new()
                        .name("ferry-conn".into())
                        .spawn(move || {
                            serve_connection(stream, dp);
                            drop(slot);
                        });
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
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use crate::control::DataplaneConfig;
    use crate::sim::{MemBackend, MemNetwork};
    use ferry_api::table::API_VERSION;
    use std::io::Write;

    fn dataplane() -> Arc<Mutex<Dataplane<MemBackend>>> {
        let cfg = DataplaneConfig {
            workers: 1,
            cpus: vec![None],
            batch: 8,
            idle_timeout: Duration::from_millis(1),
            idle_spin: Duration::ZERO,
            poll_mode: crate::engine::worker::PollMode::Interrupt,
            conntrack_max: 4096,
        };
        let dp = Dataplane::start(MemBackend::new(MemNetwork::new()), &cfg).unwrap();
        Arc::new(Mutex::new(dp))
    }

    fn call(w: &mut UnixStream, r: &mut BufReader<UnixStream>, req: &Request) -> Response {
        wire::write_message(w, req).unwrap();
        wire::read_message(r).unwrap()
    }

    const HELLO: Request = Request::Hello {
        api_version: API_VERSION,
    };

    /// A server on a fresh socket under the temp dir, stopped and removed
    /// on drop.
    struct TestServer {
        dir: PathBuf,
        path: PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl TestServer {
        fn start(name: &str) -> TestServer {
            let dir = std::env::temp_dir().join(format!("fdp-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            let path = dir.join("dp.sock");
            let listener = bind(&path).unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let thread = spawn(listener, dataplane(), Arc::clone(&stop)).unwrap();
            TestServer {
                dir,
                path,
                stop,
                thread: Some(thread),
            }
        }

        fn connect(&self) -> (UnixStream, BufReader<UnixStream>) {
            let s = UnixStream::connect(&self.path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let r = BufReader::new(s.try_clone().unwrap());
            (s, r)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn the_socket_is_private_to_its_owner() {
        let srv = TestServer::start("mode");
        let mode = fs::metadata(&srv.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

    #[test]
    fn connections_beyond_the_limit_get_an_error_and_are_closed() {
        let srv = TestServer::start("limit");
        let mut served: Vec<_> = (0..MAX_CONNECTIONS).map(|_| srv.connect()).collect();
        for (w, r) in &mut served {
            assert!(matches!(call(w, r, &HELLO), Response::Hello { .. }));
        }
        let (_w, mut r) = srv.connect();
        match wire::read_message::<_, Response>(&mut r) {
            Ok(Response::Error { message }) => assert!(message.contains("too many"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            wire::read_message::<_, Response>(&mut r),
            Err(WireError::Closed)
        ));
        // A place given back is taken by the next client.
        drop(served.pop());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (mut w, mut r) = srv.connect();
            // Still full: the server may refuse and close before the hello
            // is written (EPIPE) or read; try again.
            let answer = wire::write_message(&mut w, &HELLO)
                .ok()
                .and_then(|()| wire::read_message::<_, Response>(&mut r).ok());
            match answer {
                Some(Response::Hello { .. }) => break,
                other => assert!(
                    std::time::Instant::now() < deadline,
                    "no place came free: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client of another uid is closed without an answer. The test
    /// thread takes uid 65534 with the raw setresuid syscall, which (unlike
    /// libc's wrapper) changes only the calling thread; the socket is
    /// opened to everyone so that only the peer check stands in the way.
    #[test]
    fn peers_of_another_uid_are_closed() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to connect as another uid");
            return;
        }
        let srv = TestServer::start("peer");
        fs::set_permissions(&srv.path, fs::Permissions::from_mode(0o666)).unwrap();
        let path = srv.path.clone();
        let got = std::thread::spawn(move || {
            // SAFETY: setresuid on this thread only (raw syscall); the
            // thread does nothing else as root afterwards and ends here.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());
            let mut s = UnixStream::connect(&path).expect("connect as uid 65534");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            wire::write_message(&mut s, &HELLO).ok();
            wire::read_message::<_, Response>(&mut BufReader::new(s))
        })
        .join()
        .unwrap();
        assert!(
            matches!(got, Err(WireError::Closed) | Err(WireError::Io(_))),
            "{got:?}"
        );
        // Root still gets in.
        let (mut w, mut r) = srv.connect();
        assert!(matches!(
            call(&mut w, &mut r, &HELLO),
            Response::Hello { .. }
        ));
    }

    #[test]
    fn a_connection_must_say_hello_and_survives_bad_lines() {
        let dp = dataplane();
        let (client, server_end) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_connection(server_end, dp));
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut w = client.try_clone().unwrap();
        let mut r = BufReader::new(client);
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
                    tap: 65535,
                    uplink: Some(2048 - 14),
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

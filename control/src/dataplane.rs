//! The table-API client: ferryd's one connection to ferry-dataplane.
//!
//! A task owns the connection. While disconnected it retries every 500 ms;
//! once connected it says `Hello`, lets a hook make the host port for the
//! dataplane's worker count, sends a full `Sync`, then forwards upserts and
//! removes one at a time, each waiting for its `Applied`.
//!
//! The task also keeps the set of endpoints the dataplane must have: it
//! starts from the store's ready records, gains an endpoint when its upsert
//! was applied and loses it on remove (even while disconnected). Every
//! `Sync` sends that set, so a restarted dataplane is refilled and a DEL made
//! while it was away is reconciled.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::table::{Endpoint, NodeSettings, Request, Response, API_VERSION};
use ferry_api::wire::MAX_MESSAGE;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

/// Time between connection attempts.
pub const RETRY: Duration = Duration::from_millis(500);
/// Longest wait for any one reply of the dataplane.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpError {
    #[error("ferry-dataplane is not connected")]
    NotConnected,
    #[error("connection to ferry-dataplane lost: {0}")]
    Lost(String),
    #[error("ferry-dataplane refused the update: {0}")]
    Refused(String),
    #[error("ferry-dataplane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ferryd is shutting down")]
    Shutdown,
}

/// Called after each successful `Hello` with the dataplane's worker count;
/// makes sure the host port fits and returns the node settings to sync.
pub type HelloHook =
    Arc<dyn Fn(u32) -> Pin<Box<dyn Future<Output = NodeSettings> + Send>> + Send + Sync>;

enum Cmd {
    Upsert(Endpoint, oneshot::Sender<Result<u64, DpError>>),
    Remove(String, oneshot::Sender<Result<u64, DpError>>),
}

#[derive(Default)]
struct Shared {
    /// Worker count of the connected dataplane; 0 while disconnected.
    workers: AtomicU32,
    /// Last generation the dataplane reported.
    generation: AtomicU64,
}

/// Handle to the client task (cheap to clone).
#[derive(Clone)]
pub struct DataplaneClient {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

impl DataplaneClient {
    /// Start the client task on the current runtime. `endpoints` is what the
    /// dataplane must hold (the store's ready records).
    pub fn spawn(socket: PathBuf, endpoints: Vec<Endpoint>, hook: HelloHook) -> DataplaneClient {
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared::default());
        let task = Task {
            socket,
            hook,
            rx,
            shared: Arc::clone(&shared),
            endpoints: endpoints.into_iter().map(|e| (e.id.clone(), e)).collect(),
        };
        tokio::spawn(task.run());
        DataplaneClient { tx, shared }
    }

    /// The dataplane's worker count while connected.
    pub fn workers(&self) -> Option<u32> {
        // Relaxed: a hint for STATUS and for sizing veths; the authority on
        // connectedness is the task answering each command.
        match self.shared.workers.load(Ordering::Relaxed) {
            0 => None,
            w => Some(w),
        }
    }

    pub fn connected(&self) -> bool {
        self.workers().is_some()
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// Upsert an endpoint and wait (at most `wait`) until the dataplane
    /// applied it; returns the generation from which it is visible.
    pub async fn upsert(&self, ep: Endpoint, wait: Duration) -> Result<u64, DpError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Upsert(ep, tx))
            .await
            .map_err(|_| DpError::Shutdown)?;
        match timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DpError::Shutdown),
            Err(_) => Err(DpError::Timeout(wait)),
        }
    }

    /// Remove an endpoint. The endpoint leaves the synced set at once, so
    /// even when this fails (not connected), the next `Sync` drops it.
    pub async fn remove(&self, id: &str, wait: Duration) -> Result<u64, DpError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Remove(id.to_string(), tx))
            .await
            .map_err(|_| DpError::Shutdown)?;
        match timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DpError::Shutdown),
            Err(_) => Err(DpError::Timeout(wait)),
        }
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn call(&mut self, req: &Request) -> Result<Response, DpError> {
        timeout(REPLY_TIMEOUT, self.call_inner(req))
            .await
            .map_err(|_| DpError::Timeout(REPLY_TIMEOUT))?
    }

    async fn call_inner(&mut self, req: &Request) -> Result<Response, DpError> {
        let mut line =
            serde_json::to_vec(req).map_err(|e| DpError::Lost(format!("encode request: {e}")))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .await
            .map_err(|e| DpError::Lost(format!("send: {e}")))?;
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| DpError::Lost(format!("receive: {e}")))?;
        if n == 0 {
            return Err(DpError::Lost("peer closed the connection".into()));
        }
        if buf.len() > MAX_MESSAGE {
            return Err(DpError::Lost(format!(
                "reply longer than {MAX_MESSAGE} bytes"
            )));
        }
        serde_json::from_slice(&buf).map_err(|e| DpError::Lost(format!("malformed reply: {e}")))
    }
}

struct Task {
    socket: PathBuf,
    hook: HelloHook,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    endpoints: BTreeMap<String, Endpoint>,
}

/// How the connected phase ended.
enum End {
    Shutdown,
    Lost(String),
}

impl Task {
    async fn run(mut self) {
        let mut last_err = String::new();
        loop {
            self.shared.workers.store(0, Ordering::Relaxed);
            let attempt = async {
                let stream = UnixStream::connect(&self.socket)
                    .await
                    .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
                let (r, w) = stream.into_split();
                let conn = Conn {
                    reader: BufReader::new(r),
                    writer: w,
                };
                Ok::<Conn, String>(conn)
            }
            .await;
            let conn = match attempt {
                Ok(c) => c,
                Err(e) => {
                    if e != last_err {
                        log::warn!("ferry-dataplane: {e}; retrying every {RETRY:?}");
                        last_err = e;
                    }
                    if !self.wait_disconnected(RETRY).await {
                        return;
                    }
                    continue;
                }
            };
            let mut conn = conn;
            match self.handshake(&mut conn).await {
                Ok(workers) => {
                    last_err.clear();
                    // Relaxed: see DataplaneClient::workers.
                    self.shared.workers.store(workers, Ordering::Relaxed);
                }
                Err(e) => {
                    log::warn!("ferry-dataplane handshake failed: {e}");
                    if !self.wait_disconnected(RETRY).await {
                        return;
                    }
                    continue;
                }
            }
            match self.serve_connected(conn).await {
                End::Shutdown => return,
                End::Lost(why) => {
                    log::warn!("ferry-dataplane disconnected: {why}");
                    self.shared.workers.store(0, Ordering::Relaxed);
                }
            }
        }
    }

    /// Hello, host port, Sync. Returns the worker count.
    async fn handshake(&mut self, conn: &mut Conn) -> Result<u32, DpError> {
        let workers = match conn
            .call(&Request::Hello {
                api_version: API_VERSION,
            })
            .await?
        {
            Response::Hello {
                api_version,
                workers,
            } if api_version == API_VERSION => workers.max(1),
            Response::Hello { api_version, .. } => {
                return Err(DpError::Refused(format!(
                    "dataplane speaks API version {api_version}, ferryd {API_VERSION}"
                )))
            }
            Response::Error { message } => return Err(DpError::Refused(message)),
            other => {
                return Err(DpError::Lost(format!(
                    "unexpected reply to Hello: {other:?}"
                )))
            }
        };
        let node = (self.hook)(workers).await;
        let endpoints: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let n = endpoints.len();
        let req = Request::Sync {
            node,
            endpoints,
            routes: Vec::new(),
        };
        match conn.call(&req).await? {
            Response::Applied { generation } => {
                self.shared.generation.store(generation, Ordering::Relaxed);
                log::info!("ferry-dataplane connected: {workers} worker(s), synced {n} endpoint(s), generation {generation}");
                Ok(workers)
            }
            Response::Error { message } => Err(DpError::Refused(format!("Sync: {message}"))),
            other => Err(DpError::Lost(format!(
                "unexpected reply to Sync: {other:?}"
            ))),
        }
    }

    /// Serve commands while disconnected, for `d`. False: shutting down.
    async fn wait_disconnected(&mut self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(Cmd::Upsert(_, reply)) => {
                        let _ = reply.send(Err(DpError::NotConnected));
                    }
                    Some(Cmd::Remove(id, reply)) => {
                        self.endpoints.remove(&id);
                        let _ = reply.send(Err(DpError::NotConnected));
                    }
                },
            }
        }
    }

    async fn serve_connected(&mut self, mut conn: Conn) -> End {
        loop {
            let cmd = tokio::select! {
                biased;
                // The dataplane never speaks first: anything readable while
                // idle is EOF, an error or a protocol violation.
                r = async { conn.reader.fill_buf().await.map(|b| b.len()) } => {
                    return End::Lost(match r {
                        Ok(0) => "peer closed the connection".into(),
                        Ok(_) => "unsolicited data".into(),
                        Err(e) => e.to_string(),
                    });
                }
                cmd = self.rx.recv() => match cmd {
                    None => return End::Shutdown,
                    Some(c) => c,
                },
            };
            match cmd {
                Cmd::Upsert(ep, reply) => {
                    let id = ep.id.clone();
                    let r = conn
                        .call(&Request::UpsertEndpoint {
                            endpoint: ep.clone(),
                        })
                        .await;
                    match r {
                        Ok(Response::Applied { generation }) => {
                            self.endpoints.insert(id, ep);
                            self.shared.generation.store(generation, Ordering::Relaxed);
                            let _ = reply.send(Ok(generation));
                        }
                        Ok(Response::Error { message }) => {
                            let _ = reply.send(Err(DpError::Refused(message)));
                        }
                        Ok(other) => {
                            let why = format!("unexpected reply to UpsertEndpoint: {other:?}");
                            let _ = reply.send(Err(DpError::Lost(why.clone())));
                            return End::Lost(why);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.clone()));
                            return End::Lost(e.to_string());
                        }
                    }
                }
                Cmd::Remove(id, reply) => {
                    self.endpoints.remove(&id);
                    match conn.call(&Request::RemoveEndpoint { id }).await {
                        Ok(Response::Applied { generation }) => {
                            self.shared.generation.store(generation, Ordering::Relaxed);
                            let _ = reply.send(Ok(generation));
                        }
                        Ok(Response::Error { message }) => {
                            let _ = reply.send(Err(DpError::Refused(message)));
                        }
                        Ok(other) => {
                            let why = format!("unexpected reply to RemoveEndpoint: {other:?}");
                            let _ = reply.send(Err(DpError::Lost(why.clone())));
                            return End::Lost(why);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.clone()));
                            return End::Lost(e.to_string());
                        }
                    }
                }
            }
        }
    }
}

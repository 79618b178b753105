//! The table-API client: ferryd's one connection to ferry-dataplane.
//!
//! A task owns the connection. While disconnected it retries every
//! [`RETRY`]; once connected it says `Hello`, asks the [`SyncHook`] for the
//! desired state (which makes the host port for the dataplane's worker
//! count and checks every stored attachment against the kernel:
//! [`crate::reconcile`]), sends it as a full `Sync`, then forwards upserts
//! and removes one at a time, each waiting for its `Applied`.
//!
//! A `Sync` the dataplane applied without some ports (`missing`) is a
//! success: those endpoints join the stale set the hook reported, and the
//! connection serves on. Stale endpoints leave that set when they are
//! upserted again or removed (DEL, GC).
//!
//! After the `Sync`, a `SyncServices` hands over every service port (the
//! hook's `services`); a dataplane that refuses it keeps the connection
//! (its pods still need their endpoints), and the refusal is shown by
//! `ferryctl get services` ([`DataplaneClient::services_problem`]).
//! A `SyncPolicies` follows with every endpoint policy (the hook's
//! `policies`), refusals kept the same way
//! ([`DataplaneClient::policies_problem`], `ferryctl get policies`).
//!
//! Besides what the hook computes from the store, every `Sync` carries the
//! endpoints upserted on an earlier connection whose ADD had not yet marked
//! them ready in the store (`inflight`), so a dataplane that reconnects in
//! the middle of an ADD still holds that pod when the ADD returns.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::sync::Mutex;

use ferry_api::pod::StaleAttachment;
use ferry_api::table::{
    Attachment, Endpoint, EndpointPolicy, MissingPort, MtuLimits, NodeSettings, Request, Response,
    Route, ServicePort, API_VERSION,
};
use ferry_api::wire::MAX_MESSAGE;
use ipnet::IpNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

/// Time between connection attempts. A Unix-socket connect costs next to
/// nothing, and a restarted dataplane forwards nothing until ferryd has
/// synced it: the gap after a dataplane restart is at most this long.
pub const RETRY: Duration = Duration::from_millis(20);
/// How `Applied { missing }` and `Stats` name the uplink's port.
pub const UPLINK_ENDPOINT: &str = "uplink";
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

/// What a `Sync` must establish, as the [`SyncHook`] computes it.
#[derive(Debug, Clone)]
pub struct Desired {
    pub node: NodeSettings,
    /// Live endpoints (ready in the store, present in the kernel).
    pub endpoints: Vec<Endpoint>,
    /// Routes beside the endpoints' (a peer node's pod CIDR each).
    pub routes: Vec<Route>,
    /// Ready records whose pod is gone: not synced, reported.
    pub stale: Vec<StaleAttachment>,
    /// Every service port (`SyncServices` after the `Sync`).
    pub services: Vec<ServicePort>,
    /// Every endpoint policy (`SyncPolicies` after `SyncServices`).
    pub policies: Vec<EndpointPolicy>,
}

/// What the dataplane said in its `Hello`, and who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub workers: u32,
    /// From the socket's peer credentials, if known.
    pub pid: Option<i32>,
    pub mtu_limits: Option<MtuLimits>,
}

/// Called after each successful `Hello`: makes sure the host port fits
/// and returns the state to sync.
pub type SyncHook =
    Arc<dyn Fn(Hello) -> Pin<Box<dyn Future<Output = Desired> + Send>> + Send + Sync>;

enum Cmd {
    Upsert(Endpoint, oneshot::Sender<Result<u64, DpError>>),
    Remove(String, oneshot::Sender<Result<u64, DpError>>),
    /// A route's, a service's or a policy's change (`what` names it in
    /// errors); the set itself is the hook's (the next sync carries it),
    /// so nothing is remembered here.
    Table(&'static str, Request, oneshot::Sender<Result<u64, DpError>>),
}

#[derive(Default)]
struct Shared {
    /// Worker count of the connected dataplane; 0 while disconnected.
    workers: AtomicU32,
    /// Last generation the dataplane reported.
    generation: AtomicU64,
    /// Endpoint id -> stale attachment, as of the last `Sync` and the
    /// updates since.
    stale: Mutex<BTreeMap<String, StaleAttachment>>,
    /// Why the host port is not in the dataplane, if it is not (the node
    /// cannot reach its pods: STATUS says "limited connectivity").
    host_port_problem: Mutex<Option<String>>,
    /// Why the uplink is not in the dataplane, if it is configured and not
    /// (pods cannot reach other nodes: "limited connectivity" too).
    uplink_problem: Mutex<Option<String>>,
    /// What the dataplane answered to the last `SyncServices` or service
    /// update, if it refused it.
    services_problem: Mutex<Option<String>>,
    /// The same for `SyncPolicies` and policy updates.
    policies_problem: Mutex<Option<String>>,
    /// What the dataplane's ports carry, as its last `Hello` said (`None`
    /// before the first, or from a dataplane that does not say).
    mtu_limits: Mutex<Option<MtuLimits>>,
}

/// Handle to the client task (cheap to clone).
#[derive(Clone)]
pub struct DataplaneClient {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

impl DataplaneClient {
    /// Start the client task on the current runtime; `hook` computes what
    /// every `Sync` sends.
    pub fn spawn(socket: PathBuf, hook: SyncHook) -> DataplaneClient {
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared::default());
        let task = Task {
            socket,
            hook,
            rx,
            shared: Arc::clone(&shared),
            inflight: BTreeMap::new(),
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

    /// Attachments kept although their pod is gone, by endpoint id.
    pub fn stale(&self) -> Vec<StaleAttachment> {
        lock(&self.shared.stale).values().cloned().collect()
    }

    /// Whether the endpoint `id` is stale.
    pub fn is_stale(&self, id: &str) -> bool {
        lock(&self.shared.stale).contains_key(id)
    }

    /// The largest pod MTU the dataplane carries on `attachment`, as its
    /// last `Hello` said; `None` when it did not say.
    pub fn max_mtu(&self, attachment: Attachment) -> Option<u32> {
        lock(&self.shared.mtu_limits).map(|l| l.of(attachment))
    }

    /// What the dataplane said its frames carry, if it did.
    pub fn mtu_limits(&self) -> Option<MtuLimits> {
        *lock(&self.shared.mtu_limits)
    }

    /// Why the dataplane has no host port, if it has none.
    pub fn host_port_problem(&self) -> Option<String> {
        lock(&self.shared.host_port_problem).clone()
    }

    /// Why the dataplane has no uplink port although one is configured.
    pub fn uplink_problem(&self) -> Option<String> {
        lock(&self.shared.uplink_problem).clone()
    }

    /// What the dataplane answered when it refused the service ports (the
    /// last `SyncServices` or update), if it did.
    pub fn services_problem(&self) -> Option<String> {
        lock(&self.shared.services_problem).clone()
    }

    /// What the dataplane answered when it refused the endpoint policies
    /// (the last `SyncPolicies` or update), if it did.
    pub fn policies_problem(&self) -> Option<String> {
        lock(&self.shared.policies_problem).clone()
    }

    /// Upsert an endpoint and wait (at most `wait`) until the dataplane
    /// applied it; returns the generation from which it is visible.
    pub async fn upsert(&self, ep: Endpoint, wait: Duration) -> Result<u64, DpError> {
        self.command(|tx| Cmd::Upsert(ep, tx), wait).await
    }

    /// Remove an endpoint. The endpoint leaves the synced set at once, so
    /// even when this fails (not connected), the next `Sync` drops it.
    pub async fn remove(&self, id: &str, wait: Duration) -> Result<u64, DpError> {
        self.command(|tx| Cmd::Remove(id.to_string(), tx), wait)
            .await
    }

    /// Add or replace a route (a peer's block). Not connected: the next
    /// `Sync` carries the hook's routes instead.
    pub async fn upsert_route(&self, route: Route, wait: Duration) -> Result<u64, DpError> {
        self.command(
            |tx| Cmd::Table("UpsertRoute", Request::UpsertRoute { route }, tx),
            wait,
        )
        .await
    }

    /// Take a route away (removing an unknown prefix is not an error).
    pub async fn remove_route(&self, prefix: IpNet, wait: Duration) -> Result<u64, DpError> {
        self.command(
            |tx| Cmd::Table("RemoveRoute", Request::RemoveRoute { prefix }, tx),
            wait,
        )
        .await
    }

    /// Add or replace a service port. Not connected: the next
    /// `SyncServices` carries the hook's set instead.
    pub async fn upsert_service(
        &self,
        service: ServicePort,
        wait: Duration,
    ) -> Result<u64, DpError> {
        self.command(
            |tx| Cmd::Table("UpsertService", Request::UpsertService { service }, tx),
            wait,
        )
        .await
    }

    /// Take a service port away (an unknown id is not an error).
    pub async fn remove_service(&self, id: &str, wait: Duration) -> Result<u64, DpError> {
        let id = id.to_string();
        self.command(
            |tx| Cmd::Table("RemoveService", Request::RemoveService { id }, tx),
            wait,
        )
        .await
    }

    /// Add or replace an endpoint's policy (it may precede its endpoint).
    /// Not connected: the next `SyncPolicies` carries the hook's set.
    pub async fn upsert_policy(
        &self,
        policy: EndpointPolicy,
        wait: Duration,
    ) -> Result<u64, DpError> {
        self.command(
            |tx| Cmd::Table("UpsertPolicy", Request::UpsertPolicy { policy }, tx),
            wait,
        )
        .await
    }

    /// Take an endpoint's policy away: it allows everything again (an
    /// unknown id is not an error).
    pub async fn remove_policy(&self, endpoint: &str, wait: Duration) -> Result<u64, DpError> {
        let endpoint = endpoint.to_string();
        self.command(
            |tx| Cmd::Table("RemovePolicy", Request::RemovePolicy { endpoint }, tx),
            wait,
        )
        .await
    }

    /// Hand one command to the task and wait (at most `wait`) for its answer.
    async fn command(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<u64, DpError>>) -> Cmd,
        wait: Duration,
    ) -> Result<u64, DpError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(cmd(tx)).await.map_err(|_| DpError::Shutdown)?;
        match timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(DpError::Shutdown),
            Err(_) => Err(DpError::Timeout(wait)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Conn {
    /// The dataplane's pid, from the socket's peer credentials.
    peer_pid: Option<i32>,
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

/// One of the sets sent after the `Sync` (service ports, endpoint
/// policies; `count` says how many, for the log). A refusal is remembered
/// in `problem` and logged, not fatal: the endpoints are in, pods talk to
/// each other.
async fn sync_set(
    conn: &mut Conn,
    shared: &Shared,
    what: &str,
    req: Request,
    count: String,
    problem: &Mutex<Option<String>>,
) -> Result<(), DpError> {
    match conn.call(&req).await? {
        Response::Applied { generation, .. } => {
            shared.generation.store(generation, Ordering::Relaxed);
            *lock(problem) = None;
            log::info!("synced {count}, generation {generation}");
            Ok(())
        }
        Response::Error { message } => {
            log::error!("ferry-dataplane refused {count}: {message}");
            *lock(problem) = Some(format!("{what} refused: {message}"));
            Ok(())
        }
        other => Err(DpError::Lost(format!(
            "unexpected reply to {what}: {other:?}"
        ))),
    }
}

struct Task {
    socket: PathBuf,
    hook: SyncHook,
    rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    /// Endpoints applied by an upsert that the store may not list as
    /// ready yet; dropped once a hook's answer names them, or on remove.
    inflight: BTreeMap<String, Endpoint>,
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
                let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
                let (r, w) = stream.into_split();
                let conn = Conn {
                    peer_pid,
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
                mtu_limits,
            } if api_version == API_VERSION => {
                *lock(&self.shared.mtu_limits) = mtu_limits;
                workers.max(1)
            }
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
        let mtu_limits = *lock(&self.shared.mtu_limits);
        let desired = (self.hook)(Hello {
            workers,
            pid: conn.peer_pid,
            mtu_limits,
        })
        .await;
        let mut endpoints: BTreeMap<String, Endpoint> = desired
            .endpoints
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        self.inflight.retain(|id, _| !endpoints.contains_key(id));
        for (id, ep) in &self.inflight {
            endpoints.insert(id.clone(), ep.clone());
        }
        let mut stale: BTreeMap<String, StaleAttachment> = desired
            .stale
            .into_iter()
            .map(|s| (s.endpoint.clone(), s))
            .collect();
        let host_port = desired.node.host_port.clone();
        let uplink = desired.node.uplink.as_ref().map(|u| u.ifname.clone());
        let n = endpoints.len();
        let services = desired.services;
        let policies = desired.policies;
        let req = Request::Sync {
            node: desired.node,
            endpoints: endpoints.values().cloned().collect(),
            routes: desired.routes,
        };
        match conn.call(&req).await? {
            Response::Applied {
                generation,
                missing,
            } => {
                self.shared.generation.store(generation, Ordering::Relaxed);
                let mut host_problem = match &host_port {
                    None => Some("ferryd could not make the host port".to_string()),
                    Some(_) => None,
                };
                let mut uplink_problem = None;
                for MissingPort {
                    endpoint,
                    port,
                    error,
                } in &missing
                {
                    match endpoints.get(endpoint) {
                        None if endpoint == UPLINK_ENDPOINT => {
                            log::error!("uplink {port} is not in the dataplane: {error}");
                            uplink_problem = Some(format!("uplink {port}: {error}"));
                        }
                        Some(ep) => {
                            log::warn!("endpoint {endpoint} is stale: port {port}: {error}");
                            stale.insert(
                                endpoint.clone(),
                                StaleAttachment::new(
                                    endpoint.clone(),
                                    ep.ips.clone(),
                                    ep.netns.clone(),
                                    format!("the dataplane cannot open {port}: {error}"),
                                ),
                            );
                        }
                        None => {
                            log::error!("host port {port} is not in the dataplane: {error}");
                            host_problem = Some(format!("host port {port}: {error}"));
                        }
                    }
                }
                let m = missing.len();
                *lock(&self.shared.stale) = stale;
                *lock(&self.shared.host_port_problem) = host_problem;
                if let (None, Some(name)) = (&uplink_problem, &uplink) {
                    log::info!("uplink {name} is in the dataplane");
                }
                *lock(&self.shared.uplink_problem) = uplink_problem;
                log::info!(
                    "ferry-dataplane connected: {workers} worker(s), synced {} endpoint(s) ({m} stale), generation {generation}",
                    n - m.min(n)
                );
                let shared = &self.shared;
                let count = format!("{} service port(s)", services.len());
                let req = Request::SyncServices { services };
                sync_set(
                    conn,
                    shared,
                    "SyncServices",
                    req,
                    count,
                    &shared.services_problem,
                )
                .await?;
                let count = format!("{} endpoint policy(ies)", policies.len());
                let req = Request::SyncPolicies { policies };
                sync_set(
                    conn,
                    shared,
                    "SyncPolicies",
                    req,
                    count,
                    &shared.policies_problem,
                )
                .await?;
                Ok(workers)
            }
            Response::Error { message } => Err(DpError::Refused(format!("Sync: {message}"))),
            other => Err(DpError::Lost(format!(
                "unexpected reply to Sync: {other:?}"
            ))),
        }
    }

    /// An endpoint removed (DEL, GC, rollback): no longer synced, no
    /// longer stale.
    fn forget(&mut self, id: &str) {
        self.inflight.remove(id);
        lock(&self.shared.stale).remove(id);
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
                        self.forget(&id);
                        let _ = reply.send(Err(DpError::NotConnected));
                    }
                    Some(Cmd::Table(_, _, reply)) => {
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
            let (what, req, reply, upserted) = match cmd {
                Cmd::Upsert(ep, reply) => (
                    "UpsertEndpoint",
                    Request::UpsertEndpoint {
                        endpoint: ep.clone(),
                    },
                    reply,
                    Some(ep),
                ),
                Cmd::Remove(id, reply) => {
                    self.forget(&id);
                    (
                        "RemoveEndpoint",
                        Request::RemoveEndpoint { id },
                        reply,
                        None,
                    )
                }
                Cmd::Table(what, req, reply) => (what, req, reply, None),
            };
            match conn.call(&req).await {
                Ok(Response::Applied { generation, .. }) => {
                    if let Some(ep) = upserted {
                        lock(&self.shared.stale).remove(&ep.id);
                        self.inflight.insert(ep.id.clone(), ep);
                    }
                    self.shared.generation.store(generation, Ordering::Relaxed);
                    let _ = reply.send(Ok(generation));
                }
                Ok(Response::Error { message }) => {
                    let problem = match req {
                        Request::UpsertService { .. } | Request::RemoveService { .. } => {
                            Some(&self.shared.services_problem)
                        }
                        Request::UpsertPolicy { .. } | Request::RemovePolicy { .. } => {
                            Some(&self.shared.policies_problem)
                        }
                        _ => None,
                    };
                    if let Some(p) = problem {
                        *lock(p) = Some(format!("{what} refused: {message}"));
                    }
                    let _ = reply.send(Err(DpError::Refused(message)));
                }
                Ok(other) => {
                    let why = format!("unexpected reply to {what}: {other:?}");
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

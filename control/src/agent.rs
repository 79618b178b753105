//! ADD, DEL, CHECK, GC and STATUS: the store, the plumbing and the
//! dataplane put together, with the rollback rules that keep them agreeing.
//!
//! Order of an ADD: allocation + `pending` record (one transaction) ->
//! plumbing -> dataplane upsert, wait for `Applied` -> record `ready`. Any
//! failure undoes the steps already done, in reverse. A crash leaves a
//! `pending` record, rolled back by [`Agent::start`].
//! Order of a DEL: dataplane remove -> host veth deleted -> address released,
//! so an address is only free once nothing uses it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::pod::{
    code, Command, Interface, IpConfig, PodError, PodRequest, PodResponse, PodResult,
};
use ferry_api::table::{Attachment, HostPort, NodeSettings};
use ferry_api::MacAddr;
use ipnet::Ipv4Net;
use tokio::sync::OwnedMutexGuard;

use crate::config::{validate_ifname, Config};
use crate::dataplane::{DataplaneClient, Desired, DpError, SyncHook, REPLY_TIMEOUT};
use crate::ipam::{IpamError, Pools};
use crate::plumbing::netns::{self, Forbidden, NetnsError};
use crate::plumbing::{host_ifname, tap_port_name, Netlink, NetlinkError, PodPlumbing};
use crate::reconcile::{self, endpoint_of};
use crate::store::{AllocError, AttachmentId, Record, State, Store, StoreError};

/// How long ADD waits for the dataplane's `Applied`, queueing included.
/// The dataplane itself gets [`REPLY_TIMEOUT`] (10 s) from the moment the
/// upsert is sent, or the connection is dropped and the ADD fails; this
/// outer bound only covers waiting behind other ADDs' upserts (each port
/// the dataplane makes takes a while, and upserts go one at a time).
pub const ADD_ACK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> PodError {
    PodError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

fn store_err(e: impl std::fmt::Display) -> PodError {
    err(code::STORE, "ferryd's state store failed", e.to_string())
}

impl From<IpamError> for PodError {
    fn from(e: IpamError) -> Self {
        err(code::INVALID_CONFIG, "invalid ipam ranges", e.to_string())
    }
}

fn alloc_err(e: AllocError) -> PodError {
    match e {
        AllocError::Exhausted { .. } => err(code::POOL_EXHAUSTED, "no free address", e.to_string()),
        AllocError::Unavailable { .. } => err(
            code::ADDRESS_UNAVAILABLE,
            "requested address is not available",
            e.to_string(),
        ),
        AllocError::AlreadyExists { .. } | AllocError::Store(_) => store_err(e),
    }
}

fn dp_err(e: DpError) -> PodError {
    match e {
        DpError::Refused(_) => err(
            code::PLUMBING_FAILED,
            "ferry-dataplane refused the endpoint",
            e.to_string(),
        ),
        DpError::NotConnected => err(
            code::TRY_AGAIN_LATER,
            "ferry-dataplane is not connected",
            "",
        ),
        _ => err(
            code::TRY_AGAIN_LATER,
            "ferry-dataplane did not acknowledge the endpoint",
            e.to_string(),
        ),
    }
}

fn netns_err(e: NetnsError) -> PodError {
    let code = match &e {
        NetnsError::Timeout { .. } => code::TRY_AGAIN_LATER,
        NetnsError::Io { .. } => code::IO,
        _ => code::INVALID_ENV,
    };
    err(
        code,
        "CNI_NETNS is not a usable pod network namespace",
        e.to_string(),
    )
}

fn abandoned(why: String) -> PodError {
    err(code::TRY_AGAIN_LATER, "ADD abandoned and rolled back", why)
}

/// When a request stops being wanted: past the deadline the plugin sent,
/// or once its client hung up (the server watches the connection).
#[derive(Debug, Clone, Default)]
pub struct Abandon {
    deadline: Option<std::time::SystemTime>,
    hung_up: Arc<std::sync::atomic::AtomicBool>,
}

impl Abandon {
    /// `deadline_ms`: milliseconds since the Unix epoch, as in the request.
    pub fn new(deadline_ms: Option<u64>) -> Abandon {
        Abandon {
            deadline: deadline_ms.map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms)),
            hung_up: Default::default(),
        }
    }

    /// The client closed its connection: nobody will read the answer.
    pub fn hang_up(&self) {
        // Relaxed: a flag read at step boundaries; no data hangs on it.
        self.hung_up
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the request is no longer wanted, if it is not.
    pub fn why(&self) -> Option<String> {
        if self.hung_up.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("the plugin closed its connection before the answer".into());
        }
        match self.remaining() {
            Some(r) if r.is_zero() => Some("the plugin's deadline passed".into()),
            _ => None,
        }
    }

    /// Time left before the deadline (zero once past); `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        let d = self.deadline?;
        Some(
            d.duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// Run a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PodError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| store_err(format!("store task failed: {e}")))
}

/// Per-attachment locks: ADD/DEL/CHECK of one (container id, ifname) run
/// one at a time; different attachments run concurrently.
#[derive(Default)]
struct Locks {
    map: Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// (container id, ifname).
type LockKey = (String, String);

struct LockGuard<'a> {
    locks: &'a Locks,
    key: LockKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Locks {
    async fn lock(&self, container_id: &str, ifname: &str) -> LockGuard<'_> {
        let key = (container_id.to_string(), ifname.to_string());
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key.clone()).or_default())
        };
        let guard = m.lock_owned().await;
        LockGuard {
            locks: self,
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: nobody waits, the entry can go. Clones are
        // taken under the map lock, so none can appear meanwhile.
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

pub struct Agent {
    cfg: Config,
    store: Arc<Store>,
    netlink: Netlink,
    dp: DataplaneClient,
    locks: Locks,
    node_pools: Pools,
}

/// The node settings the dataplane is synced with.
fn node_settings(cfg: &Config, host_port: Option<HostPort>) -> NodeSettings {
    NodeSettings {
        gateway: cfg.gateway,
        router_mac: MacAddr::ROUTER,
        pod_cidrs: cfg.pod_cidrs.clone(),
        host_port,
        mtu: cfg.mtu,
    }
}

/// What the dataplane must hold, computed at each (re)connect: the host port
/// made for its worker count, its namespace added to the forbidden ones,
/// and the store's ready records checked against the kernel.
async fn desired(
    netlink: &Netlink,
    cfg: &Config,
    store: std::sync::Weak<Store>,
    workers: u32,
    dataplane_pid: Option<i32>,
) -> Desired {
    if let Some(pid) = dataplane_pid {
        match netns::id_of_pid(pid) {
            Ok(id) => netlink.forbidden().add(id, "the dataplane's"),
            Err(e) => log::warn!("cannot identify the dataplane's network namespace: {e}"),
        }
    }
    let kernel = cfg.host_port_kernel().to_string();
    let dp_name = cfg.host_port_dp();
    let r = netlink
        .ensure_host_port(
            &kernel,
            &dp_name,
            cfg.gateway,
            &cfg.pod_cidrs,
            cfg.mtu,
            Some(workers),
        )
        .await;
    let host_port = match r {
        Ok(mac) => Some(HostPort {
            ifname: dp_name,
            kernel_ifname: kernel,
            kernel_mac: mac,
        }),
        Err(e) => {
            log::error!("host port for {workers} worker(s): {e}");
            None
        }
    };
    let ready = match tokio::task::spawn_blocking(move || store.upgrade().map(|s| s.ready())).await
    {
        Ok(None) => Vec::new(), // the agent is gone
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(e))) => {
            log::error!("store: list ready attachments: {e}");
            Vec::new()
        }
        Err(e) => {
            log::error!("store task failed: {e}");
            Vec::new()
        }
    };
    let (endpoints, stale) = reconcile::desired(netlink, &ready, workers).await;
    log::info!(
        "{} ready attachment(s) in the store: {} live, {} stale",
        ready.len(),
        endpoints.len(),
        stale.len()
    );
    Desired {
        node: node_settings(cfg, host_port),
        endpoints,
        stale,
    }
}

/// Delete what plumbing made for `rec` (nothing there is fine).
async fn unplumb_record(netlink: &Netlink, rec: &Record) -> Result<bool, NetlinkError> {
    match rec.attachment {
        Attachment::Veth => netlink.unplumb(&rec.host_ifname).await,
        Attachment::Tap => {
            netlink
                .unplumb_tap(
                    &rec.netns,
                    rec.netns_id,
                    &rec.id.container_id,
                    &rec.id.ifname,
                    rec.mac,
                )
                .await
        }
    }
}

impl Agent {
    /// Open the store, roll back pending records, make the host port and
    /// start the dataplane client. Pods of ready records are not touched.
    pub async fn start(cfg: Config) -> Result<Arc<Agent>, AgentError> {
        let dir = cfg.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StoreError::CreateDir {
                path: cfg.state_dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let store = Arc::new(store);
        log::info!("store {}", store.path().display());
        let netlink = Netlink::connect(Forbidden::node())?;

        for rec in store.pending()? {
            log::info!("rolling back unfinished ADD of {} ({})", rec.id, rec.ip);
            if let Err(e) = unplumb_record(&netlink, &rec).await {
                log::warn!("rollback of {}: delete {}: {e}", rec.id, rec.host_ifname);
            }
            store.release(&rec.id)?;
        }

        let kernel = cfg.host_port_kernel().to_string();
        let dp_name = cfg.host_port_dp();
        match netlink
            .ensure_host_port(
                &kernel,
                &dp_name,
                cfg.gateway,
                &cfg.pod_cidrs,
                cfg.mtu,
                None,
            )
            .await
        {
            Ok(mac) => log::info!("host port {kernel} ({mac}) / {dp_name} ready"),
            Err(e) => log::error!(
                "host port {kernel}/{dp_name}: {e} (retried when the dataplane connects)"
            ),
        }

        let hook: SyncHook = {
            // Weak: the client task may outlive the agent by a moment, and
            // must not keep the database open (a restarted agent reopens it).
            let (netlink, cfg, store) = (netlink.clone(), cfg.clone(), Arc::downgrade(&store));
            Arc::new(move |workers, dataplane_pid| {
                let (netlink, cfg, store) = (netlink.clone(), cfg.clone(), store.clone());
                Box::pin(
                    async move { desired(&netlink, &cfg, store, workers, dataplane_pid).await },
                )
            })
        };
        let dp = DataplaneClient::spawn(cfg.dataplane_socket.clone(), hook);
        let node_pools = Pools::for_request(&Default::default(), &cfg.pod_cidrs, cfg.gateway)
            .expect("node pools from a validated config");
        Ok(Arc::new(Agent {
            cfg,
            store,
            netlink,
            dp,
            locks: Locks::default(),
            node_pools,
        }))
    }

    pub fn dataplane(&self) -> &DataplaneClient {
        &self.dp
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Serve one pod-API request with no client to watch (its deadline,
    /// if it carries one, still holds).
    pub async fn handle(&self, req: PodRequest) -> PodResponse {
        let abandon = Abandon::new(req.deadline_ms);
        self.handle_watched(req, &abandon).await
    }

    /// Serve one pod-API request; an ADD that `abandon` says nobody waits
    /// for any more is rolled back instead of completed.
    pub async fn handle_watched(&self, req: PodRequest, abandon: &Abandon) -> PodResponse {
        let what = format!(
            "{:?} {} {}/{}",
            req.command, req.network, req.container_id, req.ifname
        );
        let r = match req.command {
            Command::Add => self
                .add(&req, abandon)
                .await
                .map(|r| PodResponse::Ok { result: Some(r) }),
            Command::Del => self
                .del(&req)
                .await
                .map(|()| PodResponse::Ok { result: None }),
            Command::Check => self
                .check(&req)
                .await
                .map(|()| PodResponse::Ok { result: None }),
            Command::Gc => self
                .gc(&req)
                .await
                .map(|()| PodResponse::Ok { result: None }),
            Command::Status => Ok(self.status().await),
        };
        match r {
            Ok(resp) => {
                log::debug!("{what}: ok");
                resp
            }
            Err(e) => {
                log::warn!("{what}: error {}: {} ({})", e.code, e.msg, e.details);
                PodResponse::Error(e)
            }
        }
    }

    fn attachment(req: &PodRequest) -> Result<AttachmentId, PodError> {
        if req.container_id.is_empty() {
            return Err(err(
                code::INVALID_ENV,
                "missing container id",
                "CNI_CONTAINERID is empty",
            ));
        }
        validate_ifname(&req.ifname, 15)
            .map_err(|m| err(code::INVALID_ENV, "invalid interface name", m))?;
        Ok(AttachmentId::new(
            &req.network,
            &req.container_id,
            &req.ifname,
        ))
    }

    async fn add(&self, req: &PodRequest, abandon: &Abandon) -> Result<PodResult, PodError> {
        let id = Self::attachment(req)?;
        let netns = match req.netns.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => {
                return Err(err(
                    code::INVALID_ENV,
                    "ADD needs a network namespace",
                    "CNI_NETNS is empty",
                ))
            }
        };
        let mtu = req.mtu.unwrap_or(self.cfg.mtu);
        if !(68..=65535).contains(&mtu) {
            return Err(err(
                code::INVALID_CONFIG,
                "invalid mtu",
                format!("{mtu} is outside 68..=65535"),
            ));
        }
        if req.ipam.requested.len() > 1 {
            return Err(err(
                code::INVALID_CONFIG,
                "one IPv4 address per interface",
                format!(
                    "{} addresses requested: {:?}",
                    req.ipam.requested.len(),
                    req.ipam.requested
                ),
            ));
        }
        let pools = Pools::for_request(&req.ipam, &self.cfg.pod_cidrs, self.cfg.gateway)?;
        let Some(workers) = self.dp.workers() else {
            return Err(dp_err(DpError::NotConnected));
        };
        // A pod whose MTU its port cannot carry would lose every large
        // frame at the dataplane, silently.
        if let Some(max) = self.dp.max_mtu(req.attachment) {
            if mtu > max {
                let kind = req.attachment.name();
                return Err(err(
                    code::INVALID_CONFIG,
                    format!("mtu {mtu} is above the {kind} attachment's limit of {max}"),
                    format!(
                        "ferry-dataplane carries packets of at most {max} bytes on a {kind} port; \
                         set mtu to {max} or less, or attach the pod otherwise"
                    ),
                ));
            }
        }
        // The namespace is identified once, here; plumbing later opens the
        // path again and works only if it still names this namespace.
        let (_, netns_id) = netns::open(&netns, None, self.netlink.forbidden())
            .await
            .map_err(netns_err)?;

        let _lock = self.locks.lock(&id.container_id, &id.ifname).await;
        let existing = {
            let (store, id) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.get(&id)).await?.map_err(store_err)?
        };
        if let Some(rec) = existing {
            // A ready record whose pod is gone (stale, or its path now
            // names another namespace) is replaced by this ADD.
            let gone = rec.state == State::Ready
                && (self.dp.is_stale(&id.endpoint_id())
                    || rec.netns_id.is_some_and(|old| old != netns_id));
            match rec.state {
                State::Ready if gone => {
                    log::info!("{id}: replacing a stale attachment ({})", rec.ip);
                    self.undo(&rec, true).await;
                    let (store, id2) = (Arc::clone(&self.store), id.clone());
                    if blocking(move || store.get(&id2))
                        .await?
                        .map_err(store_err)?
                        .is_some()
                    {
                        return Err(err(
                            code::PLUMBING_FAILED,
                            "a stale attachment could not be removed",
                            format!("{id}: see ferryd's log"),
                        ));
                    }
                }
                State::Ready if rec.netns == netns => return Ok(rec.result),
                State::Ready => {
                    return Err(err(
                        code::PLUMBING_FAILED,
                        "attachment exists in another network namespace",
                        format!(
                            "{} is attached in {}; DEL it before adding it to {netns}",
                            id, rec.netns
                        ),
                    ))
                }
                State::Pending => {
                    log::warn!("{id}: leftover pending record, rolling it back");
                    self.undo(&rec, true).await;
                }
            }
        }

        let attachment = req.attachment;
        let host = match attachment {
            Attachment::Veth => host_ifname(&id.container_id, &id.ifname),
            Attachment::Tap => tap_port_name(&id.container_id, &id.ifname),
        };
        let routes = req.ipam.routes.clone();
        let record = {
            let store = Arc::clone(&self.store);
            let (id, netns, host, routes) =
                (id.clone(), netns.clone(), host.clone(), routes.clone());
            let requested = req.ipam.requested.first().copied();
            blocking(move || {
                store.allocate_pending(&id, &pools, requested, |pool, ip| {
                    let mac = MacAddr::for_pod(ip);
                    let address =
                        Ipv4Net::new(ip, pool.prefix_len()).expect("pool prefix is valid");
                    let result_routes = if routes.is_empty() {
                        vec![ferry_api::pod::RouteSpec {
                            dst: Ipv4Net::default(),
                            gw: Some(pool.gateway),
                        }]
                    } else {
                        routes.clone()
                    };
                    Record {
                        id: id.clone(),
                        ip,
                        address,
                        gateway: pool.gateway,
                        host_ifname: host.clone(),
                        mac,
                        netns: netns.clone(),
                        netns_id: Some(netns_id),
                        mtu,
                        attachment,
                        state: State::Pending,
                        result: PodResult {
                            interfaces: vec![Interface {
                                name: id.ifname.clone(),
                                mac,
                                sandbox: Some(netns.clone()),
                            }],
                            ips: vec![IpConfig {
                                address,
                                gateway: Some(pool.gateway),
                                interface: 0,
                            }],
                            routes: result_routes,
                        },
                    }
                })
            })
            .await?
            .map_err(alloc_err)?
        };
        log::info!(
            "ADD {id}: {} in {netns} via {host} ({})",
            record.address,
            attachment.name()
        );

        let plumbing = PodPlumbing {
            container_id: id.container_id.clone(),
            ifname: id.ifname.clone(),
            host_ifname: host.clone(),
            netns: netns.clone(),
            netns_id,
            mac: record.mac,
            address: record.address,
            gateway: record.gateway,
            routes,
            mtu,
            queues: workers,
            max_queues: crate::plumbing::max_veth_queues(workers),
            attachment,
        };
        if let Err(e) = self.netlink.plumb(&plumbing).await {
            self.undo(&record, false).await;
            return Err(err(
                code::PLUMBING_FAILED,
                format!("plumbing {} failed", id.ifname),
                e.to_string(),
            ));
        }

        if let Some(why) = abandon.why() {
            self.undo(&record, false).await;
            return Err(abandoned(why));
        }
        let wait = abandon
            .remaining()
            .map_or(ADD_ACK_TIMEOUT, |r| r.min(ADD_ACK_TIMEOUT));
        if let Err(e) = self.dp.upsert(endpoint_of(&record), wait).await {
            self.undo(&record, true).await;
            return Err(dp_err(e));
        }
        // Last point of return: past it the runtime gets its result.
        if let Some(why) = abandon.why() {
            self.undo(&record, true).await;
            return Err(abandoned(why));
        }

        let marked = {
            let (store, id) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.set_state(&id, State::Ready)).await?
        };
        match marked {
            Ok(true) => Ok(record.result),
            Ok(false) => {
                self.undo(&record, true).await;
                Err(store_err(format!("record of {id} vanished during ADD")))
            }
            Err(e) => {
                self.undo(&record, true).await;
                Err(store_err(e))
            }
        }
    }

    /// Undo an attachment: dataplane (if it was told), host veth, address.
    /// Best effort: what fails stays `pending` and is retried at start.
    async fn undo(&self, rec: &Record, dataplane: bool) {
        if dataplane {
            if let Err(e) = self.dp.remove(&rec.id.endpoint_id(), REPLY_TIMEOUT).await {
                log::debug!("undo {}: dataplane remove: {e}", rec.id);
            }
        }
        if let Err(e) = unplumb_record(&self.netlink, rec).await {
            log::warn!("undo {}: delete {}: {e}", rec.id, rec.host_ifname);
            return;
        }
        let (store, id) = (Arc::clone(&self.store), rec.id.clone());
        match blocking(move || store.release(&id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("undo {}: release {}: {e}", rec.id, rec.ip),
            Err(e) => log::warn!("undo {}: release {}: {}", rec.id, rec.ip, e.details),
        }
    }

    async fn del(&self, req: &PodRequest) -> Result<(), PodError> {
        let id = Self::attachment(req)?;
        let _lock = self.locks.lock(&id.container_id, &id.ifname).await;
        self.release_attachment(&id).await
    }

    /// DEL under the attachment lock: idempotent.
    async fn release_attachment(&self, id: &AttachmentId) -> Result<(), PodError> {
        let rec = {
            let (store, id) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.get(&id)).await?.map_err(store_err)?
        };
        let (host, deleted) = match &rec {
            Some(r) => {
                if let Err(e) = self.dp.remove(&id.endpoint_id(), REPLY_TIMEOUT).await {
                    // The endpoint left the synced set: the next Sync drops it.
                    log::info!("DEL {id}: dataplane: {e} (reconciled at the next sync)");
                }
                let deleted = unplumb_record(&self.netlink, r).await.map_err(|e| {
                    err(
                        code::PLUMBING_FAILED,
                        format!("delete the {} of {id}", r.attachment.name()),
                        e.to_string(),
                    )
                })?;
                (r.host_ifname.clone(), deleted)
            }
            None => {
                let host = host_ifname(&id.container_id, &id.ifname);
                let deleted = self.netlink.unplumb(&host).await.map_err(|e| {
                    err(
                        code::PLUMBING_FAILED,
                        format!("delete host veth {host}"),
                        e.to_string(),
                    )
                })?;
                (host, deleted)
            }
        };
        if let Some(r) = rec {
            let (store, id2) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.release(&id2))
                .await?
                .map_err(store_err)?;
            log::info!(
                "DEL {id}: released {}{}",
                r.ip,
                if deleted { ", link deleted" } else { "" }
            );
        } else if deleted {
            log::info!("DEL {id}: no record, deleted leftover {host}");
        }
        Ok(())
    }

    async fn check(&self, req: &PodRequest) -> Result<(), PodError> {
        let id = Self::attachment(req)?;
        let _lock = self.locks.lock(&id.container_id, &id.ifname).await;
        let rec = {
            let (store, id) = (Arc::clone(&self.store), id.clone());
            blocking(move || store.get(&id)).await?.map_err(store_err)?
        };
        let Some(rec) = rec.filter(|r| r.state == State::Ready) else {
            return Err(err(
                code::UNKNOWN_CONTAINER,
                "unknown container",
                format!("ferryd has no attachment {id}"),
            ));
        };
        let mismatch = |what: String| {
            err(
                code::CHECK_MISMATCH,
                "attachment differs from its result",
                what,
            )
        };
        if let Some(netns) = req.netns.as_deref().filter(|n| !n.is_empty()) {
            if netns != rec.netns {
                return Err(mismatch(format!(
                    "netns is {netns}, attachment was made in {}",
                    rec.netns
                )));
            }
        }
        if !self.dp.connected() {
            return Err(err(
                code::TRY_AGAIN_LATER,
                "ferry-dataplane is not connected",
                "",
            ));
        }
        // A tap has no host end: the pod's interface is the whole of it.
        if rec.attachment == Attachment::Veth
            && self
                .netlink
                .link(&rec.host_ifname)
                .await
                .map_err(|e| err(code::PLUMBING_FAILED, "netlink", e.to_string()))?
                .is_none()
        {
            return Err(mismatch(format!(
                "host veth {} is missing",
                rec.host_ifname
            )));
        }
        let view = self
            .netlink
            .pod_view(&rec.netns, rec.netns_id, &rec.id.ifname)
            .await
            .map_err(|e| {
                mismatch(format!(
                    "cannot inspect {} in {}: {e}",
                    rec.id.ifname, rec.netns
                ))
            })?;
        let Some(view) = view else {
            return Err(mismatch(format!(
                "interface {} is missing in {}",
                rec.id.ifname, rec.netns
            )));
        };
        if view.mac != Some(rec.mac) {
            return Err(mismatch(format!(
                "{} has MAC {}, expected {}",
                rec.id.ifname,
                view.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "none".into()),
                rec.mac
            )));
        }
        if !view.addresses.contains(&rec.address) {
            return Err(mismatch(format!(
                "{} lacks {} (has {:?})",
                rec.id.ifname, rec.address, view.addresses
            )));
        }
        if !view.up {
            return Err(mismatch(format!("{} is down", rec.id.ifname)));
        }
        if let Some(prev) = &req.prev_result {
            let want: BTreeSet<Ipv4Net> = rec.result.ips.iter().map(|i| i.address).collect();
            let got: BTreeSet<Ipv4Net> = prev.ips.iter().map(|i| i.address).collect();
            if want != got {
                return Err(mismatch(format!(
                    "prevResult has addresses {got:?}, ferryd assigned {want:?}"
                )));
            }
            if let Some(iface) = prev.interfaces.iter().find(|i| i.name == rec.id.ifname) {
                if iface.mac != rec.mac {
                    return Err(mismatch(format!(
                        "prevResult has MAC {} for {}, ferryd set {}",
                        iface.mac, iface.name, rec.mac
                    )));
                }
            }
        }
        Ok(())
    }

    async fn gc(&self, req: &PodRequest) -> Result<(), PodError> {
        let valid: BTreeSet<(String, String)> = req
            .valid_attachments
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        let records = {
            let store = Arc::clone(&self.store);
            blocking(move || store.records())
                .await?
                .map_err(store_err)?
        };
        let mut failed = Vec::new();
        for rec in records {
            if rec.id.network != req.network
                || valid.contains(&(rec.id.container_id.clone(), rec.id.ifname.clone()))
            {
                continue;
            }
            let _lock = self.locks.lock(&rec.id.container_id, &rec.id.ifname).await;
            log::info!(
                "GC {}: not in valid attachments, releasing {}",
                rec.id,
                rec.ip
            );
            if let Err(e) = self.release_attachment(&rec.id).await {
                failed.push(format!("{}: {} ({})", rec.id, e.msg, e.details));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(err(
                code::PLUMBING_FAILED,
                "GC could not release every attachment",
                failed.join("; "),
            ))
        }
    }

    async fn status(&self) -> PodResponse {
        let stale = self.dp.stale();
        let not_ready = |code: u32, msg: String, stale: Vec<_>| PodResponse::Status {
            ready: false,
            msg,
            code,
            stale,
        };
        let store = Arc::clone(&self.store);
        let pools = self.node_pools.clone();
        let allocated = match blocking(move || store.allocated_in(&pools)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return not_ready(code::NOT_AVAILABLE, format!("store: {e}"), stale),
            Err(e) => return not_ready(code::NOT_AVAILABLE, e.details, stale),
        };
        let free = self.node_pools.size().saturating_sub(allocated);
        let Some(w) = self.dp.workers() else {
            return not_ready(
                code::NOT_AVAILABLE,
                "ferry-dataplane is not connected".into(),
                stale,
            );
        };
        if free == 0 {
            return not_ready(
                code::NOT_AVAILABLE,
                format!("no free address in {:?}", self.cfg.pod_cidrs),
                stale,
            );
        }
        if let Some(problem) = self.dp.host_port_problem() {
            return not_ready(
                code::LIMITED_CONNECTIVITY,
                format!("the node cannot reach its pods: {problem}"),
                stale,
            );
        }
        let stale_note = match stale.len() {
            0 => String::new(),
            n => format!("; {n} stale attachment(s) kept until DEL or GC (pod gone)"),
        };
        PodResponse::Status {
            ready: true,
            msg: format!(
                "ferry-dataplane connected ({w} worker(s), generation {}); {allocated} address(es) in use, {free} free{stale_note}",
                self.dp.generation()
            ),
            code: 0,
            stale,
        }
    }
}

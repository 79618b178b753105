//! This node as a member of the cluster: its claim on a block, the peers it
//! knows, and the task that keeps both current.
//!
//! Two shapes, one type. The embedded single node ([`Member::embedded`])
//! holds its configured pod CIDR and `[[peers]]` and never changes. A
//! `[cluster]` node ([`Member::cluster`]) first [`Member::join`]s (settings
//! checked, a block claimed, retried until the datastore answers; a block
//! saved by an earlier run lets it start at once, degraded), then
//! [`Member::spawn`]s its task: list, watch from the listing's revision,
//! renew every quarter of the lease's TTL, and turn every change into
//! dataplane route updates through the [`PeerTable`]. When the datastore
//! fails, the routes stay as they were (forwarding goes on), the failure is
//! shown in STATUS and metrics, and the task lists again once it answers.
//!
//! The routes the dataplane's next `Sync` carries are [`Member::routes`]:
//! the table is updated before each update is sent, so a dataplane that
//! (re)connects in between gets the new state either way.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::pod::{ClusterView, NodeView};
use ferry_api::table::{Overlay, Route};
use ferry_api::MacAddr;
use ipnet::Ipv4Net;

use super::embedded::Embedded;
use super::etcd::Etcd;
use super::{
    local, unix_now, Change, Claim, ClusterSettings, Datastore, DsError, NodeRecord, PeerRules,
    PeerTable, RouteState, RouteUpdate, WatchEvent,
};
use crate::config::{hostname, Config, UplinkFacts};
use crate::dataplane_client::{DataplaneClient, REPLY_TIMEOUT};

/// First wait after a failed datastore call; doubled up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Run `pass` (a listing and the watch after it) again and again: at once
/// when it ends by asking for a new listing (`Ok(why)`, logged under
/// `what`), after a backoff ([`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`])
/// when it fails (`failed` is told why). Never returns.
pub async fn follow_forever<F, Fut>(what: &str, mut pass: F, failed: impl Fn(&DsError))
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, DsError>>,
{
    let mut backoff = MIN_BACKOFF;
    loop {
        match pass().await {
            Ok(why) => {
                log::info!("{what}: {why}; listing again");
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

struct Inner {
    /// `None` until a block is held (joining).
    claim: Option<Claim>,
    rules: PeerRules,
    table: PeerTable,
    reachable: bool,
    error: Option<String>,
    since: u64,
}

pub struct Member {
    ds: Arc<dyn Datastore>,
    /// `None` for the embedded node (nothing shared to agree on).
    settings: Option<ClusterSettings>,
    state_dir: PathBuf,
    renew_every: Duration,
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn overlay_fields(o: Overlay) -> (String, u32) {
    match o {
        Overlay::Vxlan { vni, .. } => ("vxlan".into(), vni),
        Overlay::Direct => ("direct".into(), 0),
    }
}

fn view_of(r: &NodeRecord, route: String) -> NodeView {
    NodeView {
        name: r.name.clone(),
        address: IpAddr::V4(r.address),
        block: r.block.into(),
        block6: r.block6.map(Into::into),
        vtep_mac: r.vtep_mac,
        overlay: r.overlay.clone(),
        vni: r.vni,
        renewed: r.renewed,
        route,
    }
}

impl Member {
    /// The single node: its configured pod CIDR (the first) and peers.
    pub fn embedded(cfg: &Config) -> Arc<Member> {
        let (overlay, vni) = cfg
            .uplink
            .as_ref()
            .map_or(("none".to_string(), 0), |u| overlay_fields(u.overlay));
        let me = NodeRecord {
            name: hostname(),
            address: cfg
                .uplink
                .as_ref()
                .and_then(|u| u.node_address)
                .unwrap_or(Ipv4Addr::UNSPECIFIED),
            block: cfg.pod_cidrs[0],
            block6: cfg.ipv6.map(|v6| v6.cidr),
            vtep_mac: MacAddr::ZERO,
            overlay: overlay.clone(),
            vni,
            renewed: 0,
        };
        let peers: Vec<NodeRecord> = cfg
            .uplink
            .iter()
            .flat_map(|u| &u.peers)
            .map(|p| NodeRecord {
                name: p.address.to_string(),
                address: p.address,
                block: p.pod_cidr,
                block6: p.pod_cidr6,
                vtep_mac: MacAddr::ZERO,
                overlay: overlay.clone(),
                vni,
                renewed: 0,
            })
            .collect();
        let rules = PeerRules {
            settings: None,
            me: me.clone(),
            on_link: None,
        };
        let mut table = PeerTable::default();
        table.replace(&rules, peers.clone());
        Arc::new(Member {
            ds: Arc::new(Embedded::new(me.block, peers)),
            settings: None,
            state_dir: cfg.state_dir.clone(),
            renew_every: Duration::MAX,
            inner: Mutex::new(Inner {
                claim: Some(Claim {
                    record: me,
                    lease: 0,
                }),
                rules,
                table,
                reachable: true,
                error: None,
                since: 0,
            }),
        })
    }

    /// A `[cluster]` node, not joined yet. `cfg` has its uplink resolved;
    /// `facts` are the uplink's (its subnets bound direct-mode peers),
    /// `vtep_mac` its MAC. Fails only on what no retry mends (a TLS file
    /// that cannot be read).
    pub async fn cluster(
        cfg: &Config,
        facts: Option<&UplinkFacts>,
        vtep_mac: MacAddr,
    ) -> Result<Arc<Member>, DsError> {
        let k = cfg
            .cluster
            .as_ref()
            .ok_or_else(|| DsError::Refused("no [cluster] in the configuration".into()))?;
        let u = cfg
            .uplink
            .as_ref()
            .ok_or_else(|| DsError::Refused("[cluster] needs an uplink".into()))?;
        let (overlay, vni) = overlay_fields(u.overlay);
        let settings = ClusterSettings {
            cidr: k.cidr,
            block_len: k.block_len,
            overlay: overlay.clone(),
            vni,
            v6: k.v6,
        };
        let me = NodeRecord {
            name: k.node_name.clone(),
            address: u.node_address.unwrap_or(Ipv4Addr::UNSPECIFIED),
            block: k.first_block(),
            block6: k.block6(k.first_block()),
            vtep_mac,
            overlay,
            vni,
            renewed: 0,
        };
        let on_link = (u.overlay == Overlay::Direct)
            .then(|| facts.map(|f| f.addresses.clone()).unwrap_or_default());
        let ds = Etcd::connect(&k.etcd()).await?;
        Ok(Arc::new(Member {
            ds: Arc::new(ds),
            settings: Some(settings.clone()),
            state_dir: cfg.state_dir.clone(),
            renew_every: (k.lease_ttl / 4).max(Duration::from_secs(1)),
            inner: Mutex::new(Inner {
                claim: None,
                rules: PeerRules {
                    settings: Some(settings),
                    me,
                    on_link,
                },
                table: PeerTable::default(),
                reachable: false,
                error: Some("joining: the datastore has not answered yet".into()),
                since: unix_now(),
            }),
        }))
    }

    pub fn describe(&self) -> String {
        self.ds.describe()
    }

    /// The block this node holds, if any.
    pub fn block(&self) -> Option<Ipv4Net> {
        lock(&self.inner).claim.as_ref().map(|c| c.record.block)
    }

    /// The peers' routes, for the dataplane's next `Sync`.
    pub fn routes(&self) -> Vec<Route> {
        lock(&self.inner).table.routes()
    }

    /// The routed peers' uplink addresses.
    pub fn peer_addresses(&self) -> Vec<Ipv4Addr> {
        lock(&self.inner).table.addresses()
    }

    /// Whether the datastore answered the last call, and if not why.
    pub fn reachable(&self) -> (bool, Option<String>) {
        let i = lock(&self.inner);
        (i.reachable, i.error.clone())
    }

    /// The cluster as this node sees it (STATUS, `ferryctl nodes`).
    pub fn view(&self) -> ClusterView {
        let i = lock(&self.inner);
        ClusterView {
            datastore: self.ds.describe(),
            reachable: i.reachable,
            error: i.error.clone(),
            since: i.since,
            node: i.claim.as_ref().map(|c| view_of(&c.record, "self".into())),
            peers: i
                .table
                .entries()
                .map(|p| {
                    let route = match &p.state {
                        RouteState::Routed => "routed".to_string(),
                        RouteState::Refused(why) => format!("refused: {why}"),
                    };
                    view_of(&p.record, route)
                })
                .collect(),
        }
    }

    fn set_reachable(&self, ok: Result<(), &DsError>) {
        let mut i = lock(&self.inner);
        let now_ok = ok.is_ok();
        match ok {
            Ok(()) => {
                if !i.reachable {
                    log::info!("datastore {}: reachable again", self.ds.describe());
                }
                i.error = None;
            }
            Err(e) => {
                let text = e.to_string();
                if i.error.as_deref() != Some(text.as_str()) {
                    log::error!("datastore {}: {text}", self.ds.describe());
                }
                i.error = Some(text);
            }
        }
        if i.reachable != now_ok {
            i.reachable = now_ok;
            i.since = unix_now();
        }
    }

    /// Join: the cluster's settings checked, a block claimed (the saved one
    /// preferred). Retried until it works; each failure is logged once and
    /// shown by [`Member::view`]. Returns the block, at once when an
    /// earlier run saved one and the datastore does not answer (the claim
    /// is then made by the task, keeping that block).
    pub async fn join(&self) -> Ipv4Net {
        let Some(settings) = self.settings.clone() else {
            return self
                .block()
                .unwrap_or_else(|| lock(&self.inner).rules.me.block);
        };
        let me = lock(&self.inner).rules.me.clone();
        let saved = {
            let (dir, name) = (self.state_dir.clone(), me.name.clone());
            tokio::task::spawn_blocking(move || local::load(&dir, &name))
                .await
                .ok()
                .flatten()
        };
        let mut backoff = MIN_BACKOFF;
        loop {
            match self
                .try_claim(&settings, &me, saved.as_ref().and_then(|s| s.block))
                .await
            {
                Ok(block) => {
                    let peers = saved.map(|s| s.peers).unwrap_or_default();
                    self.first_listing(peers).await;
                    return block;
                }
                Err(e) => {
                    self.set_reachable(Err(&e));
                    if let (DsError::Unreachable(_), Some(s)) = (&e, &saved) {
                        if let Some(block) = s.block {
                            log::warn!(
                                "starting with block {block} and {} peer(s) saved by the last run; the claim is renewed when the datastore answers",
                                s.peers.len()
                            );
                            let mut i = lock(&self.inner);
                            let mut rules = i.rules.clone();
                            rules.me.block = block;
                            i.table.replace(&rules, s.peers.clone());
                            i.claim = Some(Claim {
                                record: rules.me.clone(),
                                lease: 0,
                            });
                            i.rules = rules;
                            return block;
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// The peers before the dataplane's first `Sync`: a restarted ferryd
    /// must hand the dataplane the routes it already has, or it would
    /// forward nothing to the peers until the task's first listing. The
    /// saved peers if the datastore does not answer now.
    async fn first_listing(&self, saved: Vec<NodeRecord>) {
        let nodes = match self.ds.list().await {
            Ok(l) => l.nodes,
            Err(e) => {
                self.set_reachable(Err(&e));
                saved
            }
        };
        let updates = {
            let mut i = lock(&self.inner);
            let rules = i.rules.clone();
            i.table.replace(&rules, nodes)
        };
        // Not pushed: the dataplane's first Sync carries them. Logged like
        // every later change, so the log says when this node routed a peer.
        for u in updates {
            if let RouteUpdate::Upsert(route) = u {
                log::info!(
                    "route {} -> {:?} (first listing: the dataplane's first sync carries it)",
                    route.prefix,
                    route.next_hop
                );
            }
        }
    }

    /// Settings checked, then a claim; on success it is this node's.
    async fn try_claim(
        &self,
        settings: &ClusterSettings,
        me: &NodeRecord,
        preferred: Option<Ipv4Net>,
    ) -> Result<Ipv4Net, DsError> {
        let theirs = self.ds.settings(settings).await?;
        if let Some(why) = settings.mismatch(&theirs) {
            return Err(DsError::Refused(why));
        }
        let me = NodeRecord {
            renewed: unix_now(),
            ..me.clone()
        };
        let claim = self.ds.claim(&me, settings, preferred).await?;
        let block = claim.record.block;
        if let Some(p) = preferred.filter(|p| *p != block) {
            log::warn!(
                "block {p} (saved by the last run) is another node's now; this node holds {block}"
            );
        }
        log::info!(
            "node {} holds block {block} of {} (lease {:x})",
            me.name,
            settings.cidr,
            claim.lease
        );
        {
            let mut i = lock(&self.inner);
            i.rules.me.block = block;
            i.rules.me.block6 = claim.record.block6;
            i.claim = Some(claim);
        }
        self.set_reachable(Ok(()));
        self.save().await;
        Ok(block)
    }

    /// The block and peers written to the state directory, for a start
    /// while the datastore does not answer.
    async fn save(&self) {
        let saved = {
            let i = lock(&self.inner);
            local::Saved {
                node_name: i.rules.me.name.clone(),
                block: i.claim.as_ref().map(|c| c.record.block),
                peers: i.table.entries().map(|p| p.record.clone()).collect(),
            }
        };
        let dir = self.state_dir.clone();
        match tokio::task::spawn_blocking(move || local::save(&dir, &saved)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::warn!("save cluster state in {}: {e}", self.state_dir.display()),
            Err(e) => log::warn!("save cluster state: task failed: {e}"),
        }
    }

    /// Start the task that keeps the claim and the peers current, sending
    /// route updates to `dp`. Nothing to do for the embedded node.
    pub fn spawn(self: &Arc<Self>, dp: DataplaneClient) {
        if self.settings.is_none() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move { me.run(dp).await });
    }

    async fn run(&self, dp: DataplaneClient) {
        follow_forever(
            &format!("datastore {}", self.ds.describe()),
            || self.follow(&dp),
            |e| self.set_reachable(Err(e)),
        )
        .await
    }

    /// One pass: the claim made good, a listing, then the watch and the
    /// renewals until one of them says to start again (`Ok(why)`) or fails.
    async fn follow(&self, dp: &DataplaneClient) -> Result<String, DsError> {
        let settings = self.settings.clone().expect("a cluster member");
        let (claim, me) = {
            let i = lock(&self.inner);
            (i.claim.clone(), i.rules.me.clone())
        };
        let claim = match claim {
            Some(c) if c.lease != 0 => c,
            // Started from the saved block, or the claim was lost: claim
            // it again, keeping the block this node's pods are in.
            held => {
                let keep = held.map(|c| c.record.block);
                let got = self.ds.claim(&me, &settings, keep).await?;
                if keep.is_some_and(|b| b != got.record.block) {
                    let _ = self.ds.release(&got).await;
                    return Err(DsError::Refused(format!(
                        "block {} this node's pods are in is held by another node; this node cannot renew it (free it there, or move this node's pods and restart ferryd without its state)",
                        keep.unwrap_or(got.record.block)
                    )));
                }
                log::info!(
                    "block {} claimed again (lease {:x})",
                    got.record.block,
                    got.lease
                );
                lock(&self.inner).claim = Some(got.clone());
                got
            }
        };
        let listing = self.ds.list().await?;
        self.set_reachable(Ok(()));
        for (key, why) in &listing.unreadable {
            log::warn!("datastore record {key} ignored: {why}");
        }
        let updates = {
            let mut i = lock(&self.inner);
            let rules = i.rules.clone();
            i.table.replace(&rules, listing.nodes)
        };
        self.push(dp, updates).await;
        self.save().await;
        let mut watch = self.ds.watch(listing.revision).await?;
        let mut renew = tokio::time::interval(self.renew_every);
        renew.tick().await; // the first tick is now: the claim is fresh
        loop {
            tokio::select! {
                ev = watch.next() => match ev {
                    WatchEvent::Resync(why) => return Ok(why),
                    WatchEvent::Changes { changes, unreadable, .. } => {
                        for (key, why) in &unreadable {
                            log::warn!("datastore record {key} ignored: {why}");
                        }
                        let mine_gone = changes
                            .iter()
                            .any(|c| matches!(c, Change::Gone(b) if *b == claim.record.block));
                        let updates = {
                            let mut i = lock(&self.inner);
                            let rules = i.rules.clone();
                            changes
                                .into_iter()
                                .flat_map(|c| i.table.apply(&rules, c))
                                .collect::<Vec<_>>()
                        };
                        self.push(dp, updates).await;
                        self.save().await;
                        if mine_gone {
                            log::error!(
                                "this node's block {} left the datastore (lease revoked or expired); claiming it again",
                                claim.record.block
                            );
                            self.lose_claim();
                            return Ok("this node's claim ended".into());
                        }
                    }
                },
                _ = renew.tick() => {
                    if !self.ds.renew(&claim, unix_now()).await? {
                        log::error!("the claim on block {} ended (lease expired); claiming it again", claim.record.block);
                        self.lose_claim();
                        return Ok("this node's claim ended".into());
                    }
                    log::debug!("claim on block {} renewed", claim.record.block);
                }
            }
        }
    }

    fn lose_claim(&self) {
        if let Some(c) = lock(&self.inner).claim.as_mut() {
            c.lease = 0;
        }
    }

    /// Hand route updates to the dataplane. Not connected (or refused): the
    /// next `Sync` carries [`Member::routes`] anyway.
    async fn push(&self, dp: &DataplaneClient, updates: Vec<RouteUpdate>) {
        for u in updates {
            let (what, r) = match u {
                RouteUpdate::Upsert(route) => {
                    let what = format!("route {} -> {:?}", route.prefix, route.next_hop);
                    (what, dp.upsert_route(route, REPLY_TIMEOUT).await)
                }
                RouteUpdate::Remove(block) => (
                    format!("route {block} removed"),
                    dp.remove_route(block, REPLY_TIMEOUT).await,
                ),
            };
            match r {
                Ok(generation) => log::info!("{what} (generation {generation})"),
                Err(e) => {
                    log::info!("{what}: not in the dataplane yet ({e}); the next sync carries it")
                }
            }
        }
    }

    /// Give this node's block up (`ferryd --leave`). Returns the blocks
    /// released.
    pub async fn leave(&self) -> Result<Vec<Ipv4Net>, DsError> {
        let name = lock(&self.inner).rules.me.name.clone();
        self.ds.release_node(&name).await
    }
}

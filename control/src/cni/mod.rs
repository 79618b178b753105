//! ADD, DEL, CHECK, GC and STATUS: the store, the plumbing and the
//! dataplane put together, with the rollback rules that keep them agreeing.
//!
//! Order of an ADD: allocation + `pending` record (one transaction) ->
//! plumbing -> dataplane upsert, wait for `Applied` -> record `ready`. Any
//! failure undoes the steps already done, in reverse. A crash leaves a
//! `pending` record, rolled back by [`Agent::start`].
//! Order of a DEL: dataplane remove -> host veth deleted -> address released,
//! so an address is only free once nothing uses it.
//!
//! One file per command (`add`, `del`, `check`, `gc`, `status`) on the
//! [`Agent`]; `errors` maps every failure to its CNI code, `locks` holds
//! the per-attachment locks, `abandon` says when nobody waits any more.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::objects::{ObjectsRequest, ObjectsResponse};
use ferry_api::pod::{
    code, Command, Interface, IpConfig, PodError, PodRequest, PodResponse, PodResult,
};
use ferry_api::table::Attachment;
use ferry_api::MacAddr;
use ipnet::IpNet;

use crate::cluster::member::Member;
use crate::config::{validate_ifname, Config, ConfigError, UplinkFacts};
use crate::dataplane_client::{DataplaneClient, DpError, SyncHook, REPLY_TIMEOUT};
use crate::ipam::{IpamError, PodAddress, PoolSets};
use crate::plumbing::netns::{self, Forbidden, NetnsError};
use crate::plumbing::{host_ifname, tap_port_name, Netlink, NetlinkError, PodPlumbing, PodRoute};
use crate::reconcile::{self, endpoint_of, local_endpoint_of};
use crate::services::etcd::EtcdObjects;
use crate::services::source::{Embedded, ObjectStore};
use crate::services::Services;
use crate::store::{Addresses, AllocError, AttachmentId, Record, State, Store, StoreError};

mod abandon;
mod add;
mod check;
mod del;
mod errors;
mod gc;
mod locks;
mod status;

pub use abandon::Abandon;
use errors::*;
use locks::Locks;

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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("object store: {0}")]
    Objects(#[from] crate::cluster::DsError),
}

/// Run a blocking store call off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PodError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| store_err(format!("store task failed: {e}")))
}

pub struct Agent {
    cfg: Config,
    store: Arc<Store>,
    netlink: Netlink,
    dp: DataplaneClient,
    locks: Locks,
    node_pools: PoolSets,
    /// What the node kernel could not be made to do for the uplink
    /// (forwarding, masquerade), found at start: STATUS says "limited
    /// connectivity" while any is there.
    node_problems: Vec<String>,
    member: Arc<Member>,
    services: Arc<Services>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.services.stop();
    }
}

/// Where the node's Kubernetes objects are kept: etcd with `[cluster]`,
/// else the embedded store.
async fn object_store(
    cfg: &Config,
    store: &Arc<Store>,
) -> Result<Arc<dyn ObjectStore>, AgentError> {
    Ok(match &cfg.cluster {
        Some(k) => Arc::new(EtcdObjects::connect(&k.etcd()).await?),
        None => Arc::new(Embedded::new(Arc::clone(store))),
    })
}

/// What [`Agent::prepare`] found.
pub struct Prepared {
    pub netlink: Netlink,
    pub cfg: Config,
    pub facts: Option<UplinkFacts>,
    pub uplink_mac: Option<MacAddr>,
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
    /// The configuration checked against the node before anything is made
    /// or changed (a configuration it refuses stops ferryd here): the
    /// uplink's address and MTU filled in. Returns the netlink handle, the
    /// resolved configuration and what the node says of the uplink.
    pub async fn prepare(cfg: Config) -> Result<Prepared, AgentError> {
        let netlink = Netlink::connect(Forbidden::node())?;
        let Some(u) = &cfg.uplink else {
            return Ok(Prepared {
                netlink,
                cfg,
                facts: None,
                uplink_mac: None,
            });
        };
        let facts = netlink.uplink_facts(&u.ifname).await?;
        let uplink_mac = netlink.link_mac(&u.ifname).await?;
        let cfg = cfg.resolve(facts.as_ref())?;
        if let Some(u) = &cfg.uplink {
            log::info!(
                "uplink {} (MTU {}), node address {}, overlay {:?}, {} peer(s), masquerade {}; path MTU {}",
                u.ifname,
                u.link_mtu.unwrap_or_default(),
                u.node_address.map(|a| a.to_string()).unwrap_or_default(),
                u.overlay,
                u.peers.len(),
                if u.masquerade { "on" } else { "off" },
                cfg.mtu()
            );
        }
        Ok(Prepared {
            netlink,
            cfg,
            facts,
            uplink_mac,
        })
    }

    /// A single node (its peers, if any, from the configuration): prepared
    /// and started.
    pub async fn start(cfg: Config) -> Result<Arc<Agent>, AgentError> {
        let p = Agent::prepare(cfg).await?;
        let member = Member::embedded(&p.cfg);
        Agent::start_with(p.netlink, p.cfg, member).await
    }

    /// Open the store, roll back pending records, make the host port and
    /// start the dataplane client and the member's task. Pods of ready
    /// records are not touched. `cfg` is prepared ([`Agent::prepare`]) and
    /// holds the member's block as its pod CIDR.
    pub async fn start_with(
        netlink: Netlink,
        cfg: Config,
        member: Arc<Member>,
    ) -> Result<Arc<Agent>, AgentError> {
        let dir = cfg.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| StoreError::CreateDir {
                path: cfg.state_dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let store = Arc::new(store);
        log::info!("store {}", store.path().display());

        for rec in store.pending()? {
            log::info!("rolling back unfinished ADD of {} ({})", rec.id, rec.addrs);
            if let Err(e) = unplumb_record(&netlink, &rec).await {
                log::warn!("rollback of {}: delete {}: {e}", rec.id, rec.host_ifname);
            }
            store.release(&rec.id)?;
        }

        match reconcile::ensure_host_port(&netlink, &cfg, None, cfg.host_port_mtu(None)).await {
            Ok(hp) => log::info!(
                "host port {} ({}) / {} ready",
                hp.kernel_ifname,
                hp.kernel_mac,
                hp.ifname
            ),
            Err(e) => log::error!("host port: {e} (retried when the dataplane connects)"),
        }

        let rule = crate::services::compile::ClusterIpRule {
            service_cidrs: cfg.service_cidrs.clone(),
            pod_cidrs: cfg.cluster_nets(),
        };
        let node_name = cfg.cluster.as_ref().map(|c| c.node_name.clone());
        let services = Services::start(
            object_store(&cfg, &store).await?,
            cfg.maglev_seed,
            rule,
            node_name,
        )
        .await;
        // The endpoints policy is compiled for, before the first sync;
        // from here on ADD, DEL, GC and rollbacks keep them (`policy_*`).
        services.set_endpoints(store.ready()?.iter().map(local_endpoint_of).collect());
        let hook: SyncHook = {
            // Weak: the client task may outlive the agent by a moment, and
            // must not keep the database open (a restarted agent reopens it).
            let (netlink, cfg, store) = (netlink.clone(), cfg.clone(), Arc::downgrade(&store));
            let (member, services) = (Arc::clone(&member), Arc::clone(&services));
            Arc::new(move |hello| {
                let (netlink, cfg, store) = (netlink.clone(), cfg.clone(), store.clone());
                let tables = (member.routes(), services.ports(), services.policies());
                Box::pin(async move {
                    reconcile::sync_state(&netlink, &cfg, store, hello, tables).await
                })
            })
        };
        let node_problems = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || reconcile::node_kernel(&cfg))
                .await
                .unwrap_or_else(|e| vec![format!("node kernel setup task failed: {e}")])
        };
        let dp = DataplaneClient::spawn(cfg.dataplane_socket.clone(), hook);
        member.spawn(dp.clone());
        services.spawn(dp.clone());
        let node_pools =
            PoolSets::for_request(&Default::default(), &cfg.pod_nets(), &cfg.gateways())
                .expect("node pools from a validated config");
        Ok(Arc::new(Agent {
            cfg,
            store,
            netlink,
            dp,
            locks: Locks::default(),
            node_pools,
            node_problems,
            member,
            services,
        }))
    }

    /// One `ferryctl apply`/`delete`/`get` request.
    pub async fn objects(&self, req: ObjectsRequest) -> ObjectsResponse {
        self.services
            .handle(req, crate::services::dataplane_state(&self.dp))
            .await
    }

    /// This node in the cluster (the embedded single node included).
    pub fn member(&self) -> &Arc<Member> {
        &self.member
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
}

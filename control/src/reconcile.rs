//! The one place where the state the dataplane must hold is computed: the
//! store's ready attachments, each checked against the kernel.
//!
//! An attachment is *live* when its pod namespace is still there and still
//! the namespace it was made in (by [`NetnsId`], since namespace paths get
//! reused), and its link is present: the host veth in the node namespace,
//! or the tap (with ferry's MAC) inside the pod namespace. Anything else is
//! *stale*: the pod went away without a DEL (a node crash, a reboot, a
//! runtime that lost track). Stale attachments keep their record and
//! address until DEL or GC, are reported (ferryctl, STATUS, metrics), and
//! are left out of the dataplane's tables, so one vanished pod never stops
//! the node from serving the rest.
//!
//! Runs at every dataplane (re)connect, ferryd's start included
//! ([`sync_state`], the dataplane client's sync hook).

use std::sync::Weak;

use ferry_api::pod::StaleAttachment;
use ferry_api::table::{Attachment, Endpoint, HostPort, NetnsId, NodeSettings};
use ferry_api::MacAddr;

use crate::config::Config;
use crate::dataplane_client::Desired;

use crate::plumbing::netns;
use crate::plumbing::{Netlink, NetlinkError};
use crate::store::{Record, Store};

/// What the kernel says of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// What is missing.
    Stale(String),
}

/// Check one ready record against the kernel. Only definite evidence
/// makes a record stale: a netlink request that fails is logged and the
/// record kept live.
pub async fn check(netlink: &Netlink, rec: &Record) -> Liveness {
    match rec.attachment {
        // The pod namespace, then the host end in the node. (A tap's check
        // opens the namespace itself, with the same checks, in `pod_view`.)
        Attachment::Veth => {
            if let Err(e) = netns::open(&rec.netns, rec.netns_id, netlink.forbidden()).await {
                return Liveness::Stale(e.to_string());
            }
            match netlink.link(&rec.host_ifname).await {
                Ok(Some(_)) => Liveness::Live,
                Ok(None) => Liveness::Stale(format!("host veth {} is missing", rec.host_ifname)),
                Err(e) => {
                    log::warn!(
                        "{}: cannot check host veth {}: {e}",
                        rec.id,
                        rec.host_ifname
                    );
                    Liveness::Live
                }
            }
        }
        Attachment::Tap => match netlink
            .pod_view(&rec.netns, rec.netns_id, &rec.id.ifname)
            .await
        {
            Ok(Some(v)) if v.mac == Some(rec.mac) => Liveness::Live,
            Ok(Some(_)) => Liveness::Stale(format!(
                "{} in {} is not ferry's tap (MAC differs)",
                rec.id.ifname, rec.netns
            )),
            Ok(None) => {
                Liveness::Stale(format!("tap {} is missing in {}", rec.id.ifname, rec.netns))
            }
            Err(NetlinkError::Netns(e)) => Liveness::Stale(e.to_string()),
            Err(e) => {
                log::warn!("{}: cannot check tap {}: {e}", rec.id, rec.id.ifname);
                Liveness::Live
            }
        },
    }
}

/// The dataplane's view of a record.
pub fn endpoint_of(rec: &Record) -> Endpoint {
    // A tap is found by the dataplane inside the pod namespace; a veth by
    // its host end in the node namespace.
    let (netns, pod_ifname, netns_id) = match rec.attachment {
        Attachment::Tap => (rec.netns.clone(), rec.id.ifname.clone(), rec.netns_id),
        Attachment::Veth => (String::new(), String::new(), None::<NetnsId>),
    };
    Endpoint {
        id: rec.id.endpoint_id(),
        host_ifname: rec.host_ifname.clone(),
        ips: vec![rec.ip.into()],
        mac: rec.mac,
        attachment: rec.attachment,
        netns,
        pod_ifname,
        netns_id,
        mtu: Some(rec.mtu),
    }
}

/// Best effort: a veth that cannot follow keeps its queues, and workers
/// without a queue on it count `no_tx_queue` for frames towards it.
async fn fit_queues(netlink: &Netlink, rec: &Record, workers: u32) {
    match netlink
        .fit_veth_queues(
            &rec.host_ifname,
            &rec.netns,
            rec.netns_id,
            &rec.id.ifname,
            workers,
        )
        .await
    {
        Ok(n) if n < workers => log::warn!(
            "{}: veth {} was made with room for {n} queue(s); workers {n}.. have no queue on it",
            rec.id,
            rec.host_ifname
        ),
        Ok(_) => {}
        Err(e) => log::warn!("{}: queues of {}: {e}", rec.id, rec.host_ifname),
    }
}

/// How a stale record is reported.
pub fn stale_of(rec: &Record, reason: String) -> StaleAttachment {
    StaleAttachment {
        endpoint: rec.id.endpoint_id(),
        ip: rec.ip.into(),
        netns: rec.netns.clone(),
        reason,
    }
}

/// The live endpoints of `ready` and the stale records, in store order.
/// Live veths are set to use `workers` queues (a dataplane restarted with
/// another worker count finds a queue for each worker on every pod).
pub async fn desired(
    netlink: &Netlink,
    ready: &[Record],
    workers: u32,
) -> (Vec<Endpoint>, Vec<StaleAttachment>) {
    let mut live = Vec::with_capacity(ready.len());
    let mut stale = Vec::new();
    for rec in ready {
        match check(netlink, rec).await {
            Liveness::Live => {
                if rec.attachment == Attachment::Veth {
                    fit_queues(netlink, rec, workers).await;
                }
                live.push(endpoint_of(rec))
            }
            Liveness::Stale(why) => {
                log::warn!(
                    "{} ({}) is stale: {why}; kept until DEL or GC",
                    rec.id,
                    rec.ip
                );
                stale.push(stale_of(rec, why));
            }
        }
    }
    (live, stale)
}

/// The node settings the dataplane is synced with.
fn node_settings(cfg: &Config, host_port: Option<HostPort>) -> NodeSettings {
    NodeSettings {
        gateways: vec![cfg.gateway.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: cfg.pod_cidrs.iter().map(|&c| c.into()).collect(),
        host_port,
        mtu: cfg.mtu(),
        uplink: None,
    }
}

/// What the dataplane must hold, computed at each (re)connect: the host port
/// made for its worker count, its namespace added to the forbidden ones,
/// and the store's ready records checked against the kernel.
pub async fn sync_state(
    netlink: &Netlink,
    cfg: &Config,
    store: Weak<Store>,
    workers: u32,
    dataplane_pid: Option<i32>,
) -> Desired {
    if let Some(pid) = dataplane_pid {
        match netns::id_of_pid(pid) {
            Ok(id) => netlink.forbidden().add(id, "the dataplane's"),
            Err(e) => log::warn!("cannot identify the dataplane's network namespace: {e}"),
        }
    }
    let host_port = match ensure_host_port(netlink, cfg, Some(workers)).await {
        Ok(hp) => Some(hp),
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
    let (endpoints, stale) = desired(netlink, &ready, workers).await;
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

/// The host port of `cfg` made (or kept), with `queues` queues if given.
pub async fn ensure_host_port(
    netlink: &Netlink,
    cfg: &Config,
    queues: Option<u32>,
) -> Result<HostPort, NetlinkError> {
    let kernel = cfg.host_port_kernel().to_string();
    let dp_name = cfg.host_port_dp();
    let mac = netlink
        .ensure_host_port(
            &kernel,
            &dp_name,
            cfg.gateway,
            &cfg.pod_cidrs,
            cfg.mtu(),
            queues,
        )
        .await?;
    Ok(HostPort {
        ifname: dp_name,
        kernel_ifname: kernel,
        kernel_mac: mac,
    })
}

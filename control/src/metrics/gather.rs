//! Collecting a [`Snapshot`]: the dataplane's Stats and the store's counts,
//! both read off the async workers.

use std::sync::Arc;

use super::{peer_states, ClusterInfo, PoolUsage, RequestCounters, Snapshot, UplinkInfo};
use crate::cni::Agent;
use crate::ipam::PoolSets;

/// Collect a [`Snapshot`]: the dataplane's Stats and the store's counts,
/// both read off the async workers.
pub async fn gather(agent: &Agent, requests: &RequestCounters) -> Snapshot {
    let socket = agent.config().dataplane_socket.clone();
    let dataplane =
        match tokio::task::spawn_blocking(move || ferry_api::client::stats(&socket)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("stats task failed: {e}")),
        };
    let cfg = agent.config();
    let pools: Vec<_> =
        PoolSets::for_request(&Default::default(), &cfg.pod_nets(), &cfg.gateways())
            .map(|s| s.pools().cloned().collect())
            .unwrap_or_default();
    let store = Arc::clone(agent.store());
    let counts = tokio::task::spawn_blocking(move || {
        let endpoints = store.ready()?.len() as u64;
        let mut usage = Vec::with_capacity(pools.len());
        for pool in pools {
            let allocated = store.allocated_in(|ip| pool.contains(ip))?;
            usage.push(PoolUsage {
                pool: pool.subnet.to_string(),
                size: pool.size(),
                allocated,
            });
        }
        Ok::<_, crate::store::StoreError>((endpoints, usage))
    })
    .await;
    let (endpoints, pools) = match counts {
        Ok(Ok((n, usage))) => (Some(n), usage),
        Ok(Err(e)) => {
            log::warn!("metrics: reading the store: {e}");
            (None, Vec::new())
        }
        Err(e) => {
            log::warn!("metrics: store task failed: {e}");
            (None, Vec::new())
        }
    };
    if let Err(e) = &dataplane {
        log::debug!("metrics: dataplane stats: {e}");
    }
    // The neighbours are in the dataplane's table dump: asked only when
    // there are peers to report.
    let peers: Vec<std::net::IpAddr> = agent
        .member()
        .peer_addresses()
        .into_iter()
        .map(Into::into)
        .collect();
    let cluster = cfg.cluster.as_ref().map(|_| {
        let v = agent.member().view();
        let routed = v.peers.iter().filter(|p| p.route == "routed").count() as u64;
        ClusterInfo {
            datastore: v.datastore,
            reachable: v.reachable,
            since: v.since,
            block: v.node.map(|n| n.block.to_string()),
            peers_routed: routed,
            peers_refused: v.peers.len() as u64 - routed,
        }
    });
    let neighbours = if peers.is_empty() {
        Vec::new()
    } else {
        let socket = cfg.dataplane_socket.clone();
        match tokio::task::spawn_blocking(move || ferry_api::client::tables(&socket)).await {
            Ok(Ok(t)) => t.neighbours,
            Ok(Err(e)) => {
                log::debug!("metrics: dataplane tables: {e}");
                Vec::new()
            }
            Err(e) => {
                log::debug!("metrics: tables task failed: {e}");
                Vec::new()
            }
        }
    };
    Snapshot {
        dataplane,
        dataplane_connected: agent.dataplane().connected(),
        endpoints,
        stale_endpoints: agent.dataplane().stale().len() as u64,
        host_port_missing: agent.dataplane().host_port_problem().is_some(),
        pools,
        requests: requests.snapshot(),
        uplink: cfg.uplink.as_ref().map(|u| UplinkInfo {
            ifname: u.ifname.clone(),
            overlay: u.overlay.name().to_string(),
            missing: agent.dataplane().uplink_problem(),
        }),
        peers: peer_states(&peers, &neighbours),
        cluster,
    }
}

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
use ferry_api::table::{
    Attachment, Endpoint, EndpointPolicy, HostPort, NetnsId, NodeSettings, Route, ServicePort,
};
use ferry_api::MacAddr;

use crate::config::Config;
use crate::dataplane_client::{Desired, Hello};

use crate::plumbing::netns;
use crate::plumbing::{Netlink, NetlinkError};
use crate::services::policy::LocalEndpoint;
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
        ips: rec.ips(),
        mac: rec.mac,
        attachment: rec.attachment,
        netns,
        pod_ifname,
        netns_id,
        mtu: Some(rec.mtu),
    }
}

/// NetworkPolicy's view of a record: its endpoint id, pod and addresses.
pub fn local_endpoint_of(rec: &Record) -> LocalEndpoint {
    LocalEndpoint {
        id: rec.id.endpoint_id(),
        namespace: rec.pod_namespace.clone(),
        name: rec.pod_name.clone(),
        ips: rec.ips(),
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
    StaleAttachment::new(rec.id.endpoint_id(), rec.ips(), rec.netns.clone(), reason)
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
                    rec.addrs
                );
                stale.push(stale_of(rec, why));
            }
        }
    }
    (live, stale)
}

/// The node settings the dataplane is synced with; `host_mtu` is the host
/// port's ([`Config::default_mtu`] for a veth).
pub fn node_settings(cfg: &Config, host_port: Option<HostPort>, host_mtu: u32) -> NodeSettings {
    NodeSettings {
        gateways: cfg.gateways(),
        router_mac: MacAddr::ROUTER,
        pod_cidrs: cfg.pod_nets(),
        host_port,
        mtu: host_mtu,
        uplink: cfg.uplink.as_ref().and_then(|u| u.api()),
    }
}

/// The routes the dataplane is synced with: each peer's pod CIDR to that
/// peer node.
pub fn peer_routes(cfg: &Config) -> Vec<Route> {
    cfg.uplink
        .iter()
        .flat_map(|u| &u.peers)
        .flat_map(|p| crate::cluster::node_routes(p.address, p.pod_cidr, p.pod_cidr6))
        .collect()
}

/// What the dataplane must hold, computed at each (re)connect: the host port
/// made for its worker count, its namespace added to the forbidden ones,
/// the store's ready records checked against the kernel, `routes` (the
/// peers' blocks, as the cluster member holds them now), `services` and
/// `policies` (the service ports and endpoint policies compiled now).
pub async fn sync_state(
    netlink: &Netlink,
    cfg: &Config,
    store: Weak<Store>,
    hello: Hello,
    (routes, services, policies): (Vec<Route>, Vec<ServicePort>, Vec<EndpointPolicy>),
) -> Desired {
    let workers = hello.workers;
    let host_mtu = cfg.host_port_mtu(hello.mtu_limits);
    if let Some(pid) = hello.pid {
        match netns::id_of_pid(pid) {
            Ok(id) => netlink.forbidden().add(id, "the dataplane's"),
            Err(e) => log::warn!("cannot identify the dataplane's network namespace: {e}"),
        }
    }
    let host_port = match ensure_host_port(netlink, cfg, Some(workers), host_mtu).await {
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
        node: node_settings(cfg, host_port, host_mtu),
        endpoints,
        routes,
        stale,
        services,
        policies,
    }
}

/// The node kernel's part of an uplink, in ferryd's namespace: IPv4
/// forwarding on (pod traffic leaving the cluster is routed by the node
/// kernel) and ferry's nftables table loaded (`masquerade`), or removed
/// when not wanted. Blocking (runs `nft`). Returns what failed, for
/// STATUS; never fails ferryd.
pub fn node_kernel(cfg: &Config) -> Vec<String> {
    use crate::plumbing::uplink::{
        apply_nft, enable_ip_forward, masquerade_ruleset, remove_ruleset,
    };
    let mut problems = Vec::new();
    let Some(u) = &cfg.uplink else {
        // A single node never needs it; one left by an earlier uplink
        // configuration goes (nftables absent: there is none).
        if let Err(e) = apply_nft(&remove_ruleset()) {
            log::debug!("remove nftables table ip ferry: {e}");
        }
        return problems;
    };
    match enable_ip_forward() {
        Ok(true) => log::info!(
            "net.ipv4.ip_forward = 1 (was 0): the node routes pod traffic leaving the cluster"
        ),
        Ok(false) => log::info!("net.ipv4.ip_forward is already 1"),
        Err(e) => {
            log::error!("cannot turn on net.ipv4.ip_forward: {e}; pod traffic leaving the cluster is not routed");
            problems.push(format!("net.ipv4.ip_forward: {e}"));
        }
    }
    let cluster = cfg.cluster_cidrs();
    if u.masquerade {
        match apply_nft(&masquerade_ruleset(&cluster)) {
            Ok(()) => log::info!(
                "masquerade: nftables table ip ferry, pod traffic from {cluster:?} to elsewhere leaves as {}",
                u.ifname
            ),
            Err(e) => {
                log::error!("masquerade: {e}; pods cannot reach addresses outside the cluster");
                problems.push(format!("masquerade: {e}"));
            }
        }
    } else if let Err(e) = apply_nft(&remove_ruleset()) {
        log::debug!("masquerade off; remove nftables table ip ferry: {e}");
    }
    problems
}

/// The host port of `cfg` made (or kept), with `queues` queues if given
/// and MTU `mtu`, and the kernel's routes to the peers' pod CIDRs through
/// it (ferry's routes to pod CIDRs no longer configured removed).
pub async fn ensure_host_port(
    netlink: &Netlink,
    cfg: &Config,
    queues: Option<u32>,
    mtu: u32,
) -> Result<HostPort, NetlinkError> {
    let kernel = cfg.host_port_kernel().to_string();
    let dp_name = cfg.host_port_dp();
    let mac = netlink
        .ensure_host_port(
            &kernel,
            &dp_name,
            &cfg.gateways(),
            &cfg.pod_nets(),
            mtu,
            queues,
        )
        .await?;
    // The service ranges go the peers' way: the node's own connections to
    // a ClusterIP enter the dataplane, which translates them.
    let (svc4, svc6) = cfg.service_cidrs_by_family();
    let peers: Vec<_> = cfg.kernel_peer_cidrs().into_iter().chain(svc4).collect();
    netlink
        .ensure_peer_routes(&kernel, cfg.gateway, &cfg.pod_cidrs, &peers)
        .await?;
    if let Some(v6) = cfg.ipv6 {
        let peers6: Vec<_> = cfg.kernel_peer_cidrs6().into_iter().chain(svc6).collect();
        netlink
            .ensure_peer_routes6(&kernel, v6.gateway, &peers6)
            .await?;
    }
    Ok(HostPort {
        ifname: dp_name,
        kernel_ifname: kernel,
        kernel_mac: mac,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ferry_api::table::{Overlay, Uplink};

    use super::*;
    use crate::config::UplinkFacts;

    fn two_node() -> Config {
        Config::parse(
            r#"
            pod_cidrs = ["10.70.1.0/24"]
            uplink = "up0"
            [[peers]]
            address = "192.168.70.2"
            pod_cidr = "10.70.2.0/24"
            [[peers]]
            address = "192.168.70.3"
            pod_cidr = "10.70.3.0/24"
            "#,
        )
        .unwrap()
        .resolve(Some(&UplinkFacts {
            mtu: 1500,
            addresses: vec!["192.168.70.1/24".parse().unwrap()],
        }))
        .unwrap()
    }

    #[test]
    fn node_settings_carry_the_uplink_and_routes_the_peers() {
        let cfg = two_node();
        let host_mtu = cfg.default_mtu(Some(1778));
        assert_eq!(host_mtu, 1450, "uplink 1500 less VXLAN's 50");
        let n = node_settings(&cfg, None, host_mtu);
        assert_eq!(n.mtu, 1450);
        assert_eq!(
            n.uplink,
            Some(Uplink {
                ifname: "up0".into(),
                address: Ipv4Addr::new(192, 168, 70, 1),
                overlay: Overlay::Vxlan { vni: 1, port: 4789 },
                set_channels: false,
            })
        );
        assert_eq!(
            peer_routes(&cfg),
            vec![
                Route {
                    prefix: "10.70.2.0/24".parse().unwrap(),
                    next_hop: ferry_api::table::NextHop::Node("192.168.70.2".parse().unwrap()),
                },
                Route {
                    prefix: "10.70.3.0/24".parse().unwrap(),
                    next_hop: ferry_api::table::NextHop::Node("192.168.70.3".parse().unwrap()),
                },
            ]
        );
    }

    #[test]
    fn a_dual_stack_node_syncs_both_families() {
        let cfg = Config::parse(r#"pod_cidrs = ["10.88.0.0/16", "fd00:10:88::/64"]"#).unwrap();
        let n = node_settings(&cfg, None, 1500);
        assert_eq!(
            n.gateways,
            vec![
                "10.88.0.1".parse::<std::net::IpAddr>().unwrap(),
                "fd00:10:88::1".parse().unwrap()
            ]
        );
        assert_eq!(
            n.pod_cidrs,
            vec![
                "10.88.0.0/16".parse::<ipnet::IpNet>().unwrap(),
                "fd00:10:88::/64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn endpoints_and_stale_reports_carry_every_address() {
        use crate::store::{Addresses, AttachmentId, PodAddress, State};
        let rec = |addresses: &[(&str, &str)]| Record {
            id: AttachmentId::new("n", "c", "eth0"),
            addrs: Addresses {
                addresses: addresses
                    .iter()
                    .map(|(a, g)| PodAddress {
                        address: a.parse().unwrap(),
                        gateway: g.parse().unwrap(),
                    })
                    .collect(),
            },
            host_ifname: "fyx".into(),
            mac: MacAddr::ZERO,
            netns: "/run/netns/p".into(),
            netns_id: None,
            mtu: 1500,
            attachment: Attachment::Veth,
            state: State::Ready,
            pod_namespace: None,
            pod_name: None,
            result: ferry_api::pod::PodResult {
                interfaces: vec![],
                ips: vec![],
                routes: vec![],
            },
        };
        let dual = rec(&[("10.88.0.2/16", "10.88.0.1"), ("fd00::2/64", "fd00::1")]);
        let ips: Vec<std::net::IpAddr> =
            vec!["10.88.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        assert_eq!(endpoint_of(&dual).ips, ips);
        let s = stale_of(&dual, "gone".into());
        assert_eq!((s.ip, s.ips), (ips[0], ips.clone()));
        let v6 = rec(&[("fd00::2/64", "fd00::1")]);
        assert_eq!(stale_of(&v6, "gone".into()).ip, ips[1]);
    }

    #[test]
    fn a_single_node_syncs_as_before() {
        let cfg = Config::default();
        let n = node_settings(&cfg, None, cfg.default_mtu(Some(1778)));
        assert_eq!(n.uplink, None);
        assert_eq!(n.mtu, 1500);
        assert!(peer_routes(&cfg).is_empty());
    }

    #[test]
    fn derived_mtus_stay_within_the_attachment_written_ones_do_not() {
        let jumbo = crate::config::over_uplink(9000);
        assert_eq!(jumbo.default_mtu(Some(1778)), 1778, "veth");
        let limits = |uplink| ferry_api::table::MtuLimits {
            veth: 28658,
            tap: 65535,
            uplink,
        };
        assert_eq!(
            jumbo.host_port_mtu(Some(limits(Some(1778)))),
            1778,
            "one uplink frame"
        );
        assert_eq!(
            jumbo.host_port_mtu(Some(limits(None))),
            8950,
            "no uplink limit said"
        );
        let single = Config::default();
        assert_eq!(
            single.host_port_mtu(Some(limits(Some(1778)))),
            1500,
            "no uplink"
        );
        assert_eq!(jumbo.default_mtu(Some(65535)), 8950, "tap");
        assert_eq!(jumbo.default_mtu(None), 8950, "limits unknown");
        let mut written = jumbo.clone();
        written.mtu_setting = Some(9000);
        // Written: as it is; ADD refuses it above the limit.
        assert_eq!(written.default_mtu(Some(1778)), 9000);
    }
}

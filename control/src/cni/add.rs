//! ADD: allocation and a `pending` record (one transaction) -> plumbing ->
//! dataplane upsert, wait for `Applied` -> record `ready`; any failure, or
//! an ADD nobody waits for any more, undoes the steps done.

use super::*;
use crate::config::PodMtus;

impl Agent {
    pub(super) async fn add(
        &self,
        req: &PodRequest,
        abandon: &Abandon,
    ) -> Result<PodResult, PodError> {
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
        // The network config's mtu, else ferryd's: a veth's local MTU on the
        // link and the path MTU on its routes through the gateway.
        let PodMtus {
            link: mtu,
            route: route_mtu,
        } = self
            .cfg
            .pod_mtus(req.attachment, self.dp.mtu_limits(), req.mtu);
        if !(68..=65535).contains(&mtu) {
            return Err(err(
                code::INVALID_CONFIG,
                "invalid mtu",
                format!("{mtu} is outside 68..=65535"),
            ));
        }
        let requested = req.ipam.requested.clone();
        if requested
            .iter()
            .enumerate()
            .any(|(i, a)| requested[..i].iter().any(|b| b.is_ipv4() == a.is_ipv4()))
        {
            return Err(err(
                code::INVALID_CONFIG,
                "one address per family per interface",
                format!("addresses requested: {requested:?}"),
            ));
        }
        let pools = PoolSets::for_request(&req.ipam, &self.cfg.pod_nets(), &self.cfg.gateways())?;
        if let Some(a) = requested
            .iter()
            .find(|a| !pools.0.iter().any(|s| s.is_ipv4() == a.is_ipv4()))
        {
            return Err(err(
                code::INVALID_CONFIG,
                "requested address of a family the pod gets no address of",
                format!(
                    "{a} is IPv{} but no range of the request (or of the node) is",
                    if a.is_ipv4() { 4 } else { 6 }
                ),
            ));
        }
        let routes = pod_routes_of(req, &pools)?;
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
        let (netns_file, netns_id) = netns::open(&netns, None, self.netlink.forbidden())
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
                    log::info!("{id}: replacing a stale attachment ({})", rec.addrs);
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
        // Who the pod is, for NetworkPolicy; an empty value is no value.
        let pod_arg = |k: &str| req.args.get(k).filter(|v| !v.is_empty()).cloned();
        let (pod_namespace, pod_name) = (pod_arg("K8S_POD_NAMESPACE"), pod_arg("K8S_POD_NAME"));
        let host = match attachment {
            Attachment::Veth => host_ifname(&id.container_id, &id.ifname),
            Attachment::Tap => tap_port_name(&id.container_id, &id.ifname),
        };
        let record = {
            let store = Arc::clone(&self.store);
            let (id, netns, host, routes) =
                (id.clone(), netns.clone(), host.clone(), routes.clone());
            blocking(move || {
                store.allocate_pending(&id, &pools, &requested, |chosen| {
                    let addresses: Vec<PodAddress> = chosen
                        .iter()
                        .map(|(pool, ip)| PodAddress::new(pool, *ip))
                        .collect();
                    // The IPv4 address names the MAC when there is one.
                    let mac = MacAddr::for_pod_ip(chosen[0].1);
                    let result_routes = crate::plumbing::pod_routes(&addresses, &routes)
                        .iter()
                        .map(|r| ferry_api::pod::RouteSpec {
                            dst: r.dst,
                            gw: r.gw,
                        })
                        .collect();
                    Record {
                        id: id.clone(),
                        addrs: Addresses {
                            addresses: addresses.clone(),
                        },
                        host_ifname: host.clone(),
                        mac,
                        netns: netns.clone(),
                        netns_id: Some(netns_id),
                        mtu,
                        attachment,
                        state: State::Pending,
                        pod_namespace: pod_namespace.clone(),
                        pod_name: pod_name.clone(),
                        result: PodResult {
                            interfaces: vec![Interface {
                                name: id.ifname.clone(),
                                mac,
                                sandbox: Some(netns.clone()),
                            }],
                            ips: addresses
                                .iter()
                                .map(|a| IpConfig {
                                    address: a.address,
                                    gateway: Some(a.gateway),
                                    interface: 0,
                                })
                                .collect(),
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
            record.addrs,
            attachment.name()
        );

        let plumbing = PodPlumbing {
            container_id: id.container_id.clone(),
            ifname: id.ifname.clone(),
            host_ifname: host.clone(),
            netns: netns.clone(),
            mac: record.mac,
            addresses: record.addrs.addresses.clone(),
            routes,
            mtu,
            route_mtu,
            queues: workers,
            max_queues: crate::plumbing::max_veth_queues(workers),
            attachment,
        };
        if let Err(e) = self.netlink.plumb(&plumbing, netns_file).await {
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
        // The pod's policy (and what it changes in others') goes first: a
        // policy may precede its endpoint, so the pod is policed from its
        // first packet.
        self.services
            .endpoint_up(local_endpoint_of(&record), &self.dp)
            .await;
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
    pub(super) async fn undo(&self, rec: &Record, dataplane: bool) {
        if dataplane {
            if let Err(e) = self.dp.remove(&rec.id.endpoint_id(), REPLY_TIMEOUT).await {
                log::debug!("undo {}: dataplane remove: {e}", rec.id);
            }
        }
        // Never live: its policy goes (after the endpoint: no moment with
        // the endpoint and without its policy).
        self.services
            .endpoint_down(&rec.id.endpoint_id(), &self.dp)
            .await;
        if let Err(e) = unplumb_record(&self.netlink, rec).await {
            log::warn!("undo {}: delete {}: {e}", rec.id, rec.host_ifname);
            return;
        }
        let (store, id) = (Arc::clone(&self.store), rec.id.clone());
        match blocking(move || store.release(&id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("undo {}: release {}: {e}", rec.id, rec.addrs),
            Err(e) => log::warn!("undo {}: release {}: {}", rec.id, rec.addrs, e.details),
        }
    }
}

/// The request's routes, each of a family the pod gets an address of, its
/// `gw` (if any) of the same family.
fn pod_routes_of(req: &PodRequest, pools: &PoolSets) -> Result<Vec<PodRoute>, PodError> {
    req.ipam
        .routes
        .iter()
        .map(|r| {
            let v4 = r.dst.addr().is_ipv4();
            if r.gw.is_some_and(|gw| gw.is_ipv4() != v4) {
                return Err(err(
                    code::INVALID_CONFIG,
                    "invalid route",
                    format!("route {} has a gateway of the other family", r.dst),
                ));
            }
            if !pools.0.iter().any(|s| s.is_ipv4() == v4) {
                return Err(err(
                    code::INVALID_CONFIG,
                    "invalid route",
                    format!(
                        "route {} is IPv{} but the pod gets no address of that family",
                        r.dst,
                        if v4 { 4 } else { 6 }
                    ),
                ));
            }
            Ok(PodRoute {
                dst: r.dst.trunc(),
                gw: r.gw,
            })
        })
        .collect()
}

//! CHECK: the attachment as the kernel shows it against its record and
//! the runtime's prevResult.

use super::*;

impl Agent {
    pub(super) async fn check(&self, req: &PodRequest) -> Result<(), PodError> {
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
        if let Some(a) = rec
            .addrs
            .addresses
            .iter()
            .find(|a| !view.addresses.contains(&a.address))
        {
            return Err(mismatch(format!(
                "{} lacks {} (has {:?}; an IPv6 address that failed duplicate address \
                 detection does not count)",
                rec.id.ifname, a.address, view.addresses
            )));
        }
        if let Some(r) = rec
            .result
            .routes
            .iter()
            .find(|r| !view.has_route(r.dst, r.gw))
        {
            return Err(mismatch(format!(
                "{} in {} lacks its route {}{} (has {:?})",
                rec.id.ifname,
                rec.netns,
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                view.routes
            )));
        }
        if !view.up {
            return Err(mismatch(format!("{} is down", rec.id.ifname)));
        }
        if let Some(prev) = &req.prev_result {
            let want: BTreeSet<IpNet> = rec.result.ips.iter().map(|i| i.address).collect();
            let got: BTreeSet<IpNet> = prev.ips.iter().map(|i| i.address).collect();
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
}

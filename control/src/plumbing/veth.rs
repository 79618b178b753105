//! A veth pod: the pair (the peer made straight into the pod namespace),
//! and its queue count, which follows the dataplane's worker count.

use std::fs::File;

use ferry_api::table::NetnsId;
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::netns::{in_netns, in_netns_file};
use super::pod::configure_pod_end;
use super::{
    delete_link, errno, link_by_name, set_up, temp_peer_name, Netlink, NetlinkError, PodPlumbing,
};

/// A veth pair creation message with both ends' queue counts and MTU; the
/// peer goes into the namespace `peer_netns` (an open netns fd) if given.
pub(super) fn veth_message(
    name: &str,
    peer: &str,
    queues: u32,
    mtu: u32,
    peer_netns: Option<&File>,
) -> LinkMessage {
    use std::os::fd::AsRawFd;
    let mut peer_b = LinkUnspec::new_with_name(peer)
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues));
    if let Some(ns) = peer_netns {
        peer_b = peer_b.setns_by_fd(ns.as_raw_fd());
    }
    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(queues))
        .append_extra_attribute(LinkAttribute::NumRxQueues(queues))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_b.build())))
        .build()
}

/// The most queues a pod veth is made with: one per CPU (the most pinned
/// workers the dataplane runs) or the current worker count if larger. A
/// veth's maximum is fixed at creation; its channels in use follow the
/// worker count (`ETHTOOL_SCHANNELS`, [`Netlink::fit_veth_queues`]).
pub fn max_veth_queues(workers: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    workers.max(u32::try_from(cpus).unwrap_or(1)).clamp(1, 64)
}

pub(super) fn set_channels(ifname: &str, n: u32) -> Result<(), NetlinkError> {
    ferry_tun::channels::set(ifname, n, n).map_err(|source| NetlinkError::Channels {
        ifname: ifname.to_string(),
        op: "set",
        source,
    })
}

impl Netlink {
    /// A veth pod: the pair, its peer made in the pod namespace and
    /// configured there, the host end up with one queue per worker.
    pub(super) async fn plumb_veth(&self, p: &PodPlumbing, ns: File) -> Result<(), NetlinkError> {
        let h = &self.handle;
        let tmp = temp_peer_name(&p.container_id, &p.ifname);
        let pair = || {
            veth_message(
                &p.host_ifname,
                &tmp,
                p.max_queues.max(p.queues).max(1),
                p.mtu,
                Some(&ns),
            )
        };
        let failed = |e| {
            NetlinkError::request(
                format!("create veth {} (peer {tmp} in {})", p.host_ifname, p.netns),
                e,
            )
        };
        match h.link().add(pair()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(libc::EEXIST) => {
                // A leftover of an earlier attempt under our deterministic
                // name (the caller holds this attachment's lock and has no
                // record of it): replace it.
                log::warn!("{}: leftover host veth found, recreating it", p.host_ifname);
                delete_link(h, &p.host_ifname).await?;
                h.link().add(pair()).execute().await.map_err(failed)?;
            }
            Err(e) => return Err(failed(e)),
        }
        let host = link_by_name(h, &p.host_ifname)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(p.host_ifname.clone()))?;
        set_channels(&p.host_ifname, p.queues.max(1))?;
        set_up(h, host.index, &p.host_ifname).await?;

        let pod = p.clone();
        in_netns_file(ns, &p.netns, move |h| async move {
            configure_pod_end(&h, &tmp, &pod).await
        })
        .await
    }

    /// Make a live pod veth use `workers` queues on both ends (or as many as
    /// it was made with, if fewer: workers beyond get no queue on it).
    /// Returns the queue count in use. The side that shrinks goes first:
    /// with XDP on the host end the kernel refuses a pod end sending on
    /// more queues than the host end receives on.
    pub async fn fit_veth_queues(
        &self,
        host_ifname: &str,
        netns: &str,
        netns_id: Option<NetnsId>,
        pod_ifname: &str,
        workers: u32,
    ) -> Result<u32, NetlinkError> {
        let get_err = |source| NetlinkError::Channels {
            ifname: host_ifname.to_string(),
            op: "get",
            source,
        };
        let host = ferry_tun::channels::get(host_ifname).map_err(get_err)?;
        let want = workers.min(host.max_rx).min(host.max_tx).max(1);
        if host.rx == want && host.tx == want {
            return Ok(want);
        }
        let pod_ifname = pod_ifname.to_string();
        let pod_end = || {
            let pod_ifname = pod_ifname.clone();
            in_netns(netns, netns_id, &self.forbidden, move |_| async move {
                set_channels(&pod_ifname, want)
            })
        };
        if want > host.rx {
            set_channels(host_ifname, want)?;
            pod_end().await?;
        } else {
            pod_end().await?;
            set_channels(host_ifname, want)?;
        }
        log::info!(
            "{host_ifname}: {} -> {want} queue(s) for {workers} worker(s)",
            host.rx
        );
        Ok(want)
    }

    /// Delete the pod's host veth (which removes its peer in the pod);
    /// nothing to delete is fine. Returns whether a link was deleted.
    pub async fn unplumb(&self, host_ifname: &str) -> Result<bool, NetlinkError> {
        self.delete_link_alone(host_ifname).await
    }
}

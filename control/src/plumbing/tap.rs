//! Making a pod's tap: a persistent multi-queue tap with virtio-net headers,
//! created in the calling thread's network namespace (ferryd calls it on
//! its pod-namespace thread, see [`super::netns::in_netns`]). The flags,
//! offloads and ioctls are [`ferry_tun`]'s, shared with the dataplane.
//!
//! The device outlives the fd (TUNSETPERSIST): ferryd closes its fd right
//! away, the dataplane attaches its own queues by name (see the dataplane's
//! `tap.rs`), and the device goes only when ferryd deletes the link (DEL,
//! rollback) or the pod namespace is destroyed.

use ferry_api::table::NetnsId;
use ferry_api::MacAddr;

use super::netns::{in_netns, in_netns_file};
use super::pod::configure_pod_end;
use super::{delete_link, link_by_name, temp_peer_name, Netlink, NetlinkError, PodPlumbing};

/// Create the persistent tap `name` in the current thread's namespace.
/// Fails (EBUSY) if an interface of that name exists: `IFF_TUN_EXCL`
/// keeps us from attaching to someone else's tap. On error nothing is
/// left behind (a device not yet persistent goes with its fd).
pub fn create_persistent(name: &str) -> Result<(), ferry_tun::TunError> {
    let fd = ferry_tun::open(name, libc::IFF_TUN_EXCL, false)?;
    ferry_tun::set_offloads(&fd)?;
    ferry_tun::set_persist(&fd)
}

impl Netlink {
    /// A tap pod: create the persistent tap under the temporary name inside
    /// the pod namespace (on the netns thread), then configure it like a
    /// veth's pod end (rename, MAC, MTU, address, routes).
    pub(super) async fn plumb_tap(
        &self,
        p: &PodPlumbing,
        ns: std::fs::File,
    ) -> Result<(), NetlinkError> {
        let tmp = temp_peer_name(&p.container_id, &p.ifname);
        let pod = p.clone();
        in_netns_file(ns, &p.netns, move |h| async move {
            create_persistent(&tmp).map_err(|(op, source)| NetlinkError::Tap {
                name: tmp.clone(),
                netns: pod.netns.clone(),
                op,
                source,
            })?;
            configure_pod_end(&h, &tmp, &pod).await
        })
        .await
    }

    /// Undo a tap pod: delete its tap inside the pod namespace, under the
    /// temporary name or under `ifname` if it carries our `mac` (so an
    /// interface of that name that ADD did not make is never touched).
    /// A namespace that is gone (or, by `netns_id`, is another namespace
    /// now) took the tap with it. Returns whether a link was deleted.
    pub async fn unplumb_tap(
        &self,
        netns: &str,
        netns_id: Option<NetnsId>,
        container_id: &str,
        ifname: &str,
        mac: MacAddr,
    ) -> Result<bool, NetlinkError> {
        let tmp = temp_peer_name(container_id, ifname);
        let ifname = ifname.to_string();
        let r = in_netns(netns, netns_id, &self.forbidden, move |h| async move {
            let mut deleted = delete_link(&h, &tmp).await?;
            if let Some(link) = link_by_name(&h, &ifname).await? {
                if link.mac == Some(mac) {
                    deleted |= delete_link(&h, &ifname).await?;
                }
            }
            Ok(deleted)
        })
        .await;
        match r {
            // The namespace is gone (or went away meanwhile): so is the tap.
            Err(NetlinkError::Netns(e)) if e.is_gone() => Ok(false),
            other => other,
        }
    }
}

//! Making a pod's tap: a persistent multi-queue tap with virtio-net headers,
//! created in the calling thread's network namespace (ferryd calls it on
//! its pod-namespace thread, see [`crate::netlink::in_netns`]). The flags,
//! offloads and ioctls are [`ferry_tun`]'s, shared with the dataplane.
//!
//! The device outlives the fd (TUNSETPERSIST): ferryd closes its fd right
//! away, the dataplane attaches its own queues by name (see the dataplane's
//! `tap.rs`), and the device goes only when ferryd deletes the link (DEL,
//! rollback) or the pod namespace is destroyed.

/// Create the persistent tap `name` in the current thread's namespace.
/// Fails (EBUSY) if an interface of that name exists: `IFF_TUN_EXCL`
/// keeps us from attaching to someone else's tap. On error nothing is
/// left behind (a device not yet persistent goes with its fd).
pub fn create_persistent(name: &str) -> Result<(), ferry_tun::TunError> {
    let fd = ferry_tun::open(name, libc::IFF_TUN_EXCL, false)?;
    ferry_tun::set_offloads(&fd)?;
    ferry_tun::set_persist(&fd)
}

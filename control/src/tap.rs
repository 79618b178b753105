//! Making a pod's tap: a persistent multi-queue tap with virtio-net headers,
//! created by ioctls on `/dev/net/tun` in the calling thread's network
//! namespace (ferryd calls it on its pod-namespace thread, see
//! [`crate::netlink::in_netns`]). The only `unsafe` of ferryd.
//!
//! The device outlives the fd (TUNSETPERSIST): ferryd closes its fd right
//! away, the dataplane attaches its own queues by name (see the dataplane's
//! `tap.rs`), and the device goes only when ferryd deletes the link (DEL,
//! rollback) or the pod namespace is destroyed.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Flags of the device: tap, no packet info, virtio-net header, several
/// queues. Must match what the dataplane attaches with.
pub const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
/// Offloads the reader (the dataplane) takes: partial checksums and TSO,
/// so the pod's stack sends 64 KiB GSO frames.
pub const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// `ioctl(fd, req, arg)`, the errno as an error.
///
/// # Safety
///
/// `arg` must be what `req` expects (a pointer to a live value of the
/// right type, or a plain integer).
unsafe fn ioctl(fd: RawFd, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Create the persistent tap `name` in the current thread's namespace.
/// Fails (EBUSY) if an interface of that name exists: `IFF_TUN_EXCL`
/// keeps us from attaching to someone else's tap. On error nothing is
/// left behind (a device not yet persistent goes with its fd).
pub fn create_persistent(name: &str) -> Result<(), (&'static str, io::Error)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| ("open /dev/net/tun", e))?;
    let fd: OwnedFd = file.into();
    let raw = fd.as_raw_fd();
    // SAFETY: ifreq is a plain C struct for which all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (TAP_FLAGS | libc::IFF_TUN_EXCL) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back) the ifreq we pass a pointer
    // to; it lives across the call.
    unsafe {
        ioctl(
            raw,
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq as libc::c_ulong,
        )
    }
    .map_err(|e| ("TUNSETIFF", e))?;
    // SAFETY: TUNSETOFFLOAD takes the flags as the integer argument.
    unsafe { ioctl(raw, libc::TUNSETOFFLOAD, libc::c_ulong::from(TAP_OFFLOADS)) }
        .map_err(|e| ("TUNSETOFFLOAD", e))?;
    // SAFETY: TUNSETPERSIST takes 0/1 as the integer argument.
    unsafe { ioctl(raw, libc::TUNSETPERSIST, 1) }.map_err(|e| ("TUNSETPERSIST", e))?;
    Ok(())
}

//! ferry-tun: the pod tap both sides open. ferryd creates it (persistent,
//! exclusive) inside the pod namespace; the dataplane attaches one queue
//! per worker to it by name. Both must use the same flags and offloads,
//! so they live here, with the ioctls (the only `unsafe` either side needs
//! for taps).
//!
//! Layer: bottom, beside ferry-api. Only libc; calls act on the network
//! namespace of the calling thread. [`channels`] holds the one other ioctl
//! ferryd needs on a pod link: a veth's queue count; [`netns`] opens a path
//! that should be a network namespace without trusting it (both processes
//! open pod namespaces named by someone else).

pub mod channels;
pub mod netns;

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF` flags of the device and of every queue: tap, no packet
/// info, virtio-net header, several queues.
pub const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
/// Offloads the reader (the dataplane) takes from, and sends to, the pod's
/// stack: partial checksums and TSO, so the pod sends 64 KiB GSO frames.
pub const TAP_OFFLOADS: libc::c_uint =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Most segments a pod's tap may put in one GSO frame (`gso_max_segs`,
/// set by ferryd when it makes the tap). The dataplane refuses a frame
/// that would be cut into more (`bad_gso_size`, its `MAX_GSO_SEGMENTS`),
/// so without this cap a pod whose peer forces a small MSS would build
/// 64 KiB frames the dataplane drops, and that connection would stall.
pub const TAP_GSO_MAX_SEGS: u32 = 128;

/// A failed step: which one (`"TUNSETIFF"`, ...) and the errno.
pub type TunError = (&'static str, io::Error);

/// `ioctl(fd, req, arg)` with the errno as an error.
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

/// Open `/dev/net/tun` and `TUNSETIFF` the fd onto the tap `name` with
/// [`TAP_FLAGS`] plus `extra_flags` (e.g. `IFF_TUN_EXCL`), in the calling
/// thread's namespace. Creates the device if it does not exist.
pub fn open(name: &str, extra_flags: libc::c_int, nonblocking: bool) -> Result<OwnedFd, TunError> {
    let mode = if nonblocking { libc::O_NONBLOCK } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(mode | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| ("open /dev/net/tun", e))?;
    let fd: OwnedFd = file.into();
    // SAFETY: ifreq is a plain C struct for which all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (TAP_FLAGS | extra_flags) as libc::c_short;
    // SAFETY: TUNSETIFF reads (and writes back) the ifreq we pass a pointer
    // to; it lives across the call.
    unsafe {
        ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq as libc::c_ulong,
        )
    }
    .map_err(|e| ("TUNSETIFF", e))?;
    Ok(fd)
}

/// Enable [`TAP_OFFLOADS`] on the queue `fd`.
pub fn set_offloads(fd: &OwnedFd) -> Result<(), TunError> {
    // SAFETY: TUNSETOFFLOAD takes the flags as the integer argument.
    unsafe {
        ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            libc::c_ulong::from(TAP_OFFLOADS),
        )
    }
    .map_err(|e| ("TUNSETOFFLOAD", e))
}

/// Make the device outlive its fds (`TUNSETPERSIST 1`).
pub fn set_persist(fd: &OwnedFd) -> Result<(), TunError> {
    // SAFETY: TUNSETPERSIST takes 0/1 as the integer argument.
    unsafe { ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1) }.map_err(|e| ("TUNSETPERSIST", e))
}

/// Set the virtio-net header length of the queue `fd`.
pub fn set_vnet_hdr_len(fd: &OwnedFd, len: usize) -> Result<(), TunError> {
    let len = len as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which
    // points to `len`, alive across the call.
    unsafe {
        ioctl(
            fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &len as *const libc::c_int as libc::c_ulong,
        )
    }
    .map_err(|e| ("TUNSETVNETHDRSZ", e))
}

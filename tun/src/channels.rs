//! A veth's channel (queue) count, through ethtool's `ETHTOOL_GCHANNELS` /
//! `ETHTOOL_SCHANNELS` (veth implements both since Linux 5.x). A pod veth is
//! created with room for more queues than it uses, so its queue count can
//! follow the dataplane's worker count across dataplane restarts without
//! remaking the pod's interface. Acts on the calling thread's namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETHTOOL_GCHANNELS: u32 = 0x3c;
const ETHTOOL_SCHANNELS: u32 = 0x3d;

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// A link's queue counts: in use, and the most it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    pub rx: u32,
    pub tx: u32,
    pub max_rx: u32,
    pub max_tx: u32,
}

fn ethtool(ifname: &str, ch: &mut EthtoolChannels) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() > 15 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    // SAFETY: socket() with constant arguments; the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is a plain C struct for which all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = ch as *mut EthtoolChannels as *mut libc::c_char;
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_channels it points
    // to (and writes the latter for GCHANNELS); both live across the call.
    let r = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCETHTOOL,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The channel counts of `ifname`.
pub fn get(ifname: &str) -> io::Result<Channels> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    ethtool(ifname, &mut ch)?;
    Ok(Channels {
        rx: ch.rx_count,
        tx: ch.tx_count,
        max_rx: ch.max_rx,
        max_tx: ch.max_tx,
    })
}

/// Use `rx` RX and `tx` TX queues of `ifname` (each at most its maximum).
pub fn set(ifname: &str, rx: u32, tx: u32) -> io::Result<()> {
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_SCHANNELS,
        rx_count: rx,
        tx_count: tx,
        ..Default::default()
    };
    ethtool(ifname, &mut ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_kernel() {
        // struct ethtool_channels is nine __u32.
        assert_eq!(std::mem::size_of::<EthtoolChannels>(), 36);
    }

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        assert!(get("").is_err());
        assert!(get("a-name-longer-than-15").is_err());
        // `lo` has no channels: the kernel says so.
        assert!(get("lo").is_err());
    }
}

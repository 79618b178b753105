//! Offload settings through the SIOCETHTOOL ioctl (the ethtool tool is not
//! installed by default). Runs in the calling thread's network namespace.

use std::collections::BTreeMap;

use super::error::{E2eError, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// The legacy get commands and the names ethtool -k shows for them.
const FEATURES: [(u32, &str); 6] = [
    (0x14, "rx-checksumming"),
    (0x16, "tx-checksumming"),
    (0x18, "scatter-gather"),
    (0x1e, "tcp-segmentation-offload"),
    (0x23, "generic-segmentation-offload"),
    (ETHTOOL_GGRO, "generic-receive-offload"),
];

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ioctl(ifname: &str, cmd: u32, data: u32) -> Result<u32> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(E2eError::parse("interface name", ifname.to_string()));
    }
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(E2eError::io(
            "socket for SIOCETHTOOL",
            std::io::Error::last_os_error(),
        ));
    }
    let mut val = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut val,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: `req` is a properly laid out struct ifreq (name + data pointer, padded
    // to the union's size) whose data pointer points at `val`, both alive across
    // the call; the kernel reads/writes only struct ethtool_value through it.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened above, exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(E2eError::io(
            format!("SIOCETHTOOL {cmd:#x} on {ifname}"),
            err,
        ));
    }
    Ok(val.data)
}

/// The main offload switches of an interface, as `name -> on/off`.
pub fn offloads(ifname: &str) -> Result<BTreeMap<String, bool>> {
    FEATURES
        .iter()
        .map(|(cmd, name)| Ok((name.to_string(), ioctl(ifname, *cmd, 0)? != 0)))
        .collect()
}

/// Turn tx checksumming on or off (like `ethtool -K IF tx off`); the kernel
/// also turns off what depends on it (TSO, GSO of TCP).
pub fn set_tx_checksum(ifname: &str, on: bool) -> Result<()> {
    ioctl(ifname, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Whether GRO is on (`ethtool -k IF`'s generic-receive-offload).
pub fn gro(ifname: &str) -> Result<bool> {
    ioctl(ifname, ETHTOOL_GGRO, 0).map(|v| v != 0)
}

/// Turn GRO on or off (like `ethtool -K IF gro on|off`). On a veth, GRO on
/// gives the device a NAPI context, so its peer can send it XDP frames even
/// without an XDP program of its own.
pub fn set_gro(ifname: &str, on: bool) -> Result<()> {
    ioctl(ifname, ETHTOOL_SGRO, u32::from(on)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_offloads_are_readable_and_bad_names_rejected() {
        // `lo` exists in every namespace, and reading needs no privilege.
        let o = offloads("lo").unwrap();
        assert_eq!(o.len(), FEATURES.len());
        assert!(o.contains_key("tx-checksumming"));
        assert!(offloads("").is_err());
        assert!(offloads("this-name-is-too-long").is_err());
        assert!(offloads("nosuchif0").is_err());
    }
}

//! The uplink: the node's NIC, which the node kernel keeps using. Opened by
//! [`crate::io::afxdp::AfXdpBackend::open`] for [`PortKind::Uplink`]; this
//! module holds what is the uplink's own:
//!
//! - which interfaces may be one ([`check_name`]): never a link ferry makes
//!   (`fy*` pod veths, `ft*` taps, `ferry0*` the host port) nor `lo`;
//! - its channel (queue) policy ([`fit_channels`]): worker `i` binds queue
//!   `i`. When the channel count is not the worker count and the spec says
//!   `set_channels`, it becomes the worker count (`ETHTOOL_SCHANNELS`);
//!   otherwise it is used as it is: workers at or beyond the queue count get
//!   no queue (frames routed to the uplink from them count `no_tx_queue`),
//!   and queues at or beyond the worker count have no socket, so their
//!   ferry traffic passes to the kernel (which drops VXLAN it has no device
//!   for);
//! - the classifier `xdp-progs/uplink.c` and its maps: `uplink_cfg`
//!   ([`UplinkCfg`]), `local_cidrs` ([`LpmV4Key`]) and `local_cidrs6`
//!   ([`LpmV6Key`]), filled from the
//!   [`UplinkSpec`] before the program is attached ([`configure`]). Only
//!   ferry's traffic (VXLAN to the node address, or in direct mode packets
//!   to the node's pod CIDRs) reaches the sockets; the rest, and everything
//!   on a queue without a socket, passes to the kernel.
//!
//! The map structs mirror `xdp-progs/ferry_maps.h`, the one C declaration;
//! the const asserts below and the test against the object's BTF keep the
//! two the same.

use std::mem::{offset_of, size_of};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::Array;
use aya::{Ebpf, Pod};

use crate::io::port::{PortError, UplinkSpec};

/// The compiled `xdp-progs/uplink.c` (see build.rs).
pub static UPLINK_PROG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink.bpf.o"));
pub const PROG_NAME: &str = "ferry_uplink";
pub const CFG_MAP: &str = "uplink_cfg";
pub const CIDR_MAP: &str = "local_cidrs";
pub const CIDR6_MAP: &str = "local_cidrs6";
pub const NODE_PORTS_MAP: &str = "node_ports";
/// `max_entries` of `node_ports`.
pub const MAX_NODE_PORTS: usize = 4096;
/// `max_entries` of `local_cidrs` (and of `local_cidrs6`).
pub const MAX_LOCAL_CIDRS: usize = 256;

/// `struct uplink_cfg` of `ferry_maps.h`: network-order fields as bytes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UplinkCfg {
    /// The node address (`__be32`).
    pub node_addr: [u8; 4],
    /// The VXLAN UDP port (`__be16`); zero: VXLAN off.
    pub vxlan_port: [u8; 2],
    /// Non-zero: direct mode.
    pub direct: u8,
    pub pad: u8,
}

/// `struct lpm_v4_key` of `ferry_maps.h`: an IPv4 prefix, address in
/// network order. Written through aya's [`Key`] (same layout, asserted).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LpmV4Key {
    pub prefixlen: u32,
    pub addr: [u8; 4],
}

/// `struct lpm_v6_key` of `ferry_maps.h`: an IPv6 prefix.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LpmV6Key {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

const _: () = {
    assert!(size_of::<LpmV6Key>() == 20);
    assert!(offset_of!(LpmV6Key, addr) == 4);
    assert!(size_of::<Key<[u8; 16]>>() == size_of::<LpmV6Key>());
    assert!(size_of::<UplinkCfg>() == 8);
    assert!(offset_of!(UplinkCfg, node_addr) == 0);
    assert!(offset_of!(UplinkCfg, vxlan_port) == 4);
    assert!(offset_of!(UplinkCfg, direct) == 6);
    assert!(offset_of!(UplinkCfg, pad) == 7);
    assert!(size_of::<LpmV4Key>() == 8);
    assert!(offset_of!(LpmV4Key, prefixlen) == 0);
    assert!(offset_of!(LpmV4Key, addr) == 4);
    // aya's key is `#[repr(packed)] { prefix_len: u32, data: K }`.
    assert!(size_of::<Key<[u8; 4]>>() == size_of::<LpmV4Key>());
};

// SAFETY: plain integers and byte arrays with no padding (the size is the
// sum of the fields, asserted above), so every byte pattern is valid.
unsafe impl Pod for UplinkCfg {}

impl UplinkCfg {
    /// What the classifier matches for `spec`: VXLAN when it names a port,
    /// direct mode (`local_cidrs`) otherwise.
    pub fn from_spec(spec: &UplinkSpec) -> UplinkCfg {
        UplinkCfg {
            node_addr: spec.address.octets(),
            vxlan_port: spec.vxlan_port.unwrap_or(0).to_be_bytes(),
            direct: u8::from(spec.vxlan_port.is_none()),
            pad: 0,
        }
    }
}

impl LpmV4Key {
    pub fn of(net: ipnet::Ipv4Net) -> LpmV4Key {
        let net = net.trunc();
        LpmV4Key {
            prefixlen: u32::from(net.prefix_len()),
            addr: net.addr().octets(),
        }
    }

    fn to_aya(self) -> Key<[u8; 4]> {
        Key::new(self.prefixlen, self.addr)
    }
}

/// Why `ifname` may not be the uplink, if it may not.
pub fn refusal(ifname: &str) -> Option<&'static str> {
    if ifname == "lo" {
        Some("the loopback interface")
    } else if ifname.starts_with("ferry0") {
        Some("ferry's host port")
    } else if ifname.starts_with("fy") {
        Some("a name ferry gives pod veths (fy*)")
    } else if ifname.starts_with("ft") {
        Some("a name ferry gives taps (ft*)")
    } else {
        None
    }
}

/// Refuse `lo` and the names of links ferry makes itself.
pub fn check_name(ifname: &str) -> Result<(), PortError> {
    match refusal(ifname) {
        None => Ok(()),
        Some(reason) => Err(PortError::NotUplink {
            ifname: ifname.to_string(),
            reason,
        }),
    }
}

/// What [`fit_channels`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelFit {
    /// Queues in use before.
    pub before: u32,
    /// Queues in use now (worker `i < now` binds queue `i`).
    pub now: u32,
}

/// The queue count of `ifname`: the RX/TX channels ethtool reports (a
/// veth, a NIC with separate rings), else what sysfs shows (NICs with
/// combined channels report them in a field `ferry_tun::channels` does not
/// read).
fn channel_count(ifname: &str) -> Result<(Option<ferry_tun::channels::Channels>, u32), PortError> {
    let ethtool = ferry_tun::channels::get(ifname).ok();
    if let Some(ch) = ethtool.filter(|c| c.rx > 0 && c.tx > 0) {
        return Ok((Some(ch), ch.rx.min(ch.tx)));
    }
    match crate::io::afxdp::queue_count(ifname) {
        Some(n) => Ok((ethtool, n)),
        None => Err(PortError::Channels {
            ifname: ifname.to_string(),
            op: "count queues (ETHTOOL_GCHANNELS, /sys/class/net/*/queues)",
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }),
    }
}

/// Apply the channel policy (module comment) to `ifname` for `workers`
/// workers, before anything is attached to it.
pub fn fit_channels(ifname: &str, workers: u32, set: bool) -> Result<ChannelFit, PortError> {
    let (ethtool, before) = channel_count(ifname)?;
    let fit = |now| Ok(ChannelFit { before, now });
    if before == workers {
        return fit(before);
    }
    if !set {
        if workers > before {
            log::warn!(
                "{ifname}: {before} queue(s) for {workers} workers and set_channels is off: \
                 workers {before}..{workers} get no queue on the uplink (frames they route \
                 to it count no_tx_queue)"
            );
        } else {
            log::warn!(
                "{ifname}: {before} queues for {workers} workers and set_channels is off: \
                 queues {workers}..{before} have no socket, their ferry traffic passes to \
                 the kernel (which drops VXLAN); set the channels to {workers} or turn \
                 set_channels on"
            );
        }
        return fit(before);
    }
    let err = |op, source| PortError::Channels {
        ifname: ifname.to_string(),
        op,
        source,
    };
    let Some(ch) = ethtool.filter(|c| c.rx > 0 && c.tx > 0) else {
        return Err(err(
            "set channels (ETHTOOL_SCHANNELS rx/tx)",
            std::io::Error::other(
                "the interface has combined channels, which ferry_tun::channels cannot set yet; \
                 set them with `ethtool -L <if> combined <workers>` or turn set_channels off",
            ),
        ));
    };
    let want = workers.min(ch.max_rx).min(ch.max_tx).max(1);
    if want != workers {
        log::warn!(
            "{ifname}: at most {} RX / {} TX queues, fewer than {workers} workers: using {want}",
            ch.max_rx,
            ch.max_tx
        );
    }
    if want != before {
        ferry_tun::channels::set(ifname, want, want)
            .map_err(|source| err("set channels (ETHTOOL_SCHANNELS rx/tx)", source))?;
        log::info!("{ifname}: channels {before} -> {want} (set_channels)");
    }
    let (_, now) = channel_count(ifname)?;
    fit(now)
}

/// Make the classifier's `node_ports` hold exactly `ports` (at open, and
/// in place when the services change).
pub fn set_node_ports(ifname: &str, ebpf: &mut Ebpf, ports: &[(u8, u16)]) -> Result<(), PortError> {
    let err = |cause: String| PortError::XdpLoad {
        ifname: ifname.to_string(),
        cause: format!("map {NODE_PORTS_MAP}: {cause}"),
    };
    if ports.len() > MAX_NODE_PORTS {
        return Err(err(format!(
            "{} node ports, the map holds {MAX_NODE_PORTS}",
            ports.len()
        )));
    }
    let map = ebpf
        .map_mut(NODE_PORTS_MAP)
        .ok_or_else(|| err("missing from the object".into()))?;
    let mut map: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(map).map_err(|e| err(e.to_string()))?;
    let want: std::collections::BTreeSet<u32> = ports
        .iter()
        .map(|(proto, port)| u32::from(*proto) << 16 | u32::from(*port))
        .collect();
    let stale: Vec<u32> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains(k))
        .collect();
    for k in stale {
        map.remove(&k)
            .map_err(|e| err(format!("remove {k:#x}: {e}")))?;
    }
    for k in want {
        map.insert(k, 1, 0)
            .map_err(|e| err(format!("{k:#x}: {e}")))?;
    }
    Ok(())
}

/// Fill the classifier's maps of a loaded object from `spec`.
pub fn configure(ifname: &str, ebpf: &mut Ebpf, spec: &UplinkSpec) -> Result<(), PortError> {
    let err = |map: &str, cause: String| PortError::XdpLoad {
        ifname: ifname.to_string(),
        cause: format!("map {map}: {cause}"),
    };
    let map = ebpf
        .map_mut(CFG_MAP)
        .ok_or_else(|| err(CFG_MAP, "missing from the object".into()))?;
    let mut cfg: Array<_, UplinkCfg> =
        Array::try_from(map).map_err(|e| err(CFG_MAP, e.to_string()))?;
    cfg.set(0, UplinkCfg::from_spec(spec), 0)
        .map_err(|e| err(CFG_MAP, e.to_string()))?;

    let (v4, v6): (Vec<ipnet::IpNet>, Vec<ipnet::IpNet>) = spec
        .local_cidrs
        .iter()
        .partition(|n| matches!(n, ipnet::IpNet::V4(_)));
    for (name, nets) in [(CIDR_MAP, &v4), (CIDR6_MAP, &v6)] {
        if nets.len() > MAX_LOCAL_CIDRS {
            return Err(err(
                name,
                format!("{} pod CIDRs, the map holds {MAX_LOCAL_CIDRS}", nets.len()),
            ));
        }
    }
    let map = ebpf
        .map_mut(CIDR_MAP)
        .ok_or_else(|| err(CIDR_MAP, "missing from the object".into()))?;
    let mut cidrs: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(map).map_err(|e| err(CIDR_MAP, e.to_string()))?;
    for net in &v4 {
        if let ipnet::IpNet::V4(n) = net {
            cidrs
                .insert(&LpmV4Key::of(*n).to_aya(), 1, 0)
                .map_err(|e| err(CIDR_MAP, format!("{net}: {e}")))?;
        }
    }
    set_node_ports(ifname, ebpf, &spec.node_ports)?;
    let map = ebpf
        .map_mut(CIDR6_MAP)
        .ok_or_else(|| err(CIDR6_MAP, "missing from the object".into()))?;
    let mut cidrs6: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(map).map_err(|e| err(CIDR6_MAP, e.to_string()))?;
    for net in &v6 {
        if let ipnet::IpNet::V6(n) = net {
            let n = n.trunc();
            cidrs6
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.addr().octets()),
                    1,
                    0,
                )
                .map_err(|e| err(CIDR6_MAP, format!("{net}: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foreign_names_may_be_the_uplink() {
        for bad in ["lo", "fy1234abcd", "ft0", "ferry0", "ferry0dp"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
        for ok in ["eth0", "ens5", "enp1s0f0", "bond0", "up1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_config_is_in_network_order() {
        let spec = UplinkSpec {
            address: "192.168.1.10".parse().unwrap(),
            vxlan_port: Some(4789),
            local_cidrs: vec![],
            node_ports: vec![],
            set_channels: false,
        };
        let cfg = UplinkCfg::from_spec(&spec);
        assert_eq!(cfg.node_addr, [192, 168, 1, 10]);
        assert_eq!(cfg.vxlan_port, [0x12, 0xb5]);
        assert_eq!(cfg.direct, 0);
        let direct = UplinkCfg::from_spec(&UplinkSpec {
            vxlan_port: None,
            ..spec
        });
        assert_eq!((direct.vxlan_port, direct.direct), ([0, 0], 1));
        let key = LpmV4Key::of("10.244.1.77/24".parse().unwrap());
        assert_eq!(
            key,
            LpmV4Key {
                prefixlen: 24,
                addr: [10, 244, 1, 0]
            }
        );
    }

    /// The object's BTF says what clang laid out: each struct's size and
    /// its members' byte offsets, by name.
    #[test]
    fn the_rust_mirrors_match_the_objects_btf() {
        let btf = btf::section(UPLINK_PROG).expect("a .BTF section in uplink.bpf.o");
        // The C struct `name` has the size and member offsets of `$ty`.
        macro_rules! same_layout {
            ($name:literal, $ty:ty, [$($field:ident),+]) => {
                let (size, members) = btf::struct_layout(btf, $name)
                    .unwrap_or_else(|| panic!("struct {} in the BTF", $name));
                let ours = vec![$((stringify!($field).to_string(), offset_of!($ty, $field))),+];
                assert_eq!((size, members), (size_of::<$ty>(), ours), "struct {}", $name);
            };
        }
        same_layout!(
            "uplink_cfg",
            UplinkCfg,
            [node_addr, vxlan_port, direct, pad]
        );
        same_layout!("lpm_v4_key", LpmV4Key, [prefixlen, addr]);
        same_layout!("lpm_v6_key", LpmV6Key, [prefixlen, addr]);
    }

    /// Just enough of ELF and BTF to read struct layouts (aya's BTF parser
    /// keeps struct members private).
    mod btf {
        fn u16_at(b: &[u8], at: usize) -> Option<u16> {
            Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
        }
        fn u32_at(b: &[u8], at: usize) -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        }
        fn u64_at(b: &[u8], at: usize) -> Option<usize> {
            usize::try_from(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)).ok()
        }
        fn cstr(b: &[u8], at: usize) -> Option<&str> {
            let s = b.get(at..)?;
            let end = s.iter().position(|&c| c == 0)?;
            std::str::from_utf8(&s[..end]).ok()
        }

        /// The `.BTF` section of a little-endian ELF64 object.
        pub fn section(elf: &[u8]) -> Option<&[u8]> {
            let shoff = u64_at(elf, 0x28)?;
            let shentsize = usize::from(u16_at(elf, 0x3a)?);
            let shnum = usize::from(u16_at(elf, 0x3c)?);
            let shstrndx = usize::from(u16_at(elf, 0x3e)?);
            let sh = |i: usize| shoff + i * shentsize;
            let names = u64_at(elf, sh(shstrndx) + 0x18)?;
            (0..shnum).find_map(|i| {
                let name = cstr(elf, names + u32_at(elf, sh(i))? as usize)?;
                let off = u64_at(elf, sh(i) + 0x18)?;
                let size = u64_at(elf, sh(i) + 0x20)?;
                (name == ".BTF").then(|| elf.get(off..off + size)).flatten()
            })
        }

        /// Size and (member name, byte offset) of the struct `name`.
        pub fn struct_layout(btf: &[u8], name: &str) -> Option<(usize, Vec<(String, usize)>)> {
            let hdr_len = u32_at(btf, 4)? as usize;
            let type_off = hdr_len + u32_at(btf, 8)? as usize;
            let type_end = type_off + u32_at(btf, 12)? as usize;
            let str_off = hdr_len + u32_at(btf, 16)? as usize;
            let string = |off: u32| cstr(btf, str_off + off as usize);
            let mut at = type_off;
            while at < type_end {
                let (name_off, info, size) =
                    (u32_at(btf, at)?, u32_at(btf, at + 4)?, u32_at(btf, at + 8)?);
                let kind = (info >> 24) & 0x1f;
                let vlen = (info & 0xffff) as usize;
                at += 12;
                // Bytes after the common header, by kind (linux/btf.h):
                // int, var, decl_tag; array; struct, union; enum,
                // func_proto; datasec, enum64; the rest none.
                let extra = match kind {
                    1 | 14 | 17 => 4,
                    3 => 12,
                    4 | 5 | 15 | 19 => 12 * vlen,
                    6 | 13 => 8 * vlen,
                    _ => 0,
                };
                if kind == 4 && string(name_off)? == name {
                    let members = (0..vlen)
                        .map(|m| {
                            let mem = at + 12 * m;
                            let bits = u32_at(btf, mem + 8)? & 0x00ff_ffff;
                            Some((string(u32_at(btf, mem)?)?.to_string(), bits as usize / 8))
                        })
                        .collect::<Option<Vec<_>>>()?;
                    return Some((size as usize, members));
                }
                at += extra;
            }
            None
        }
    }
}

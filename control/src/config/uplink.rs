//! The uplink's part of the configuration: `uplink`, `node_address`,
//! `masquerade`, `[overlay]` and `[[peers]]`.
//!
//! Checked in two steps: [`UplinkConfig::from_raw`] what the file alone
//! decides (names, ranges, overlaps), at parse time; [`UplinkConfig::resolve`]
//! what needs the node's word on the uplink ([`UplinkFacts`]: present, its
//! addresses, its MTU), at ferryd's start before anything is made. Both are
//! pure, so every refusal is unit-tested without touching a namespace.

use std::net::Ipv4Addr;

use ferry_api::table::{Overlay, Uplink, VXLAN_PORT};
use ipnet::{Ipv4Net, Ipv6Net};

use super::HOST_PORT_DP_SUFFIX;
use super::{invalid, validate_ifname, ConfigError, RawConfig, RawOverlay, RawPeer};

/// Flannel's VNI.
pub const DEFAULT_VNI: u32 = 1;
/// VXLAN's VNI is 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// What a direct-mode peer off the uplink's link is told.
pub const OFF_LINK_PEER: &str =
    "direct routing needs peers on the uplink's link; use overlay vxlan or fix the address";

/// One peer node: where it is and which pods it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The peer's address on its uplink.
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// Its IPv6 pod CIDR, if it is dual-stack (routed to `address` too:
    /// the overlay is IPv4).
    pub pod_cidr6: Option<Ipv6Net>,
}

impl Peer {
    pub(super) fn to_raw(self) -> RawPeer {
        RawPeer {
            address: self.address.to_string(),
            pod_cidr: self.pod_cidr.to_string(),
            pod_cidr6: self.pod_cidr6.map(|c| c.to_string()),
        }
    }
}

/// The validated uplink settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    pub ifname: String,
    /// As written, or (after [`UplinkConfig::resolve`]) the uplink's first
    /// IPv4 address.
    pub node_address: Option<Ipv4Addr>,
    pub masquerade: bool,
    pub overlay: Overlay,
    pub set_channels: bool,
    pub peers: Vec<Peer>,
    /// The uplink's MTU as the kernel said at [`UplinkConfig::resolve`]
    /// (not in the file).
    pub link_mtu: Option<u32>,
}

/// What the node namespace says of the uplink (netlink, at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkFacts {
    pub mtu: u32,
    /// Its IPv4 addresses with their prefix (`192.168.70.1/24`), in the
    /// kernel's order.
    pub addresses: Vec<Ipv4Net>,
}

/// A unicast address a node can have.
fn node_unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
}

fn parse_addr(field: &'static str, text: &str) -> Result<Ipv4Addr, ConfigError> {
    let a: Ipv4Addr = text
        .trim()
        .parse()
        .map_err(|_| invalid(field, format!("{text:?} is not an IPv4 address")))?;
    if !node_unicast(a) {
        return Err(invalid(
            field,
            format!("{a} is not a unicast address a node can have"),
        ));
    }
    Ok(a)
}

fn overlay_from_raw(raw: Option<&RawOverlay>) -> Result<(Overlay, bool), ConfigError> {
    let raw = raw.cloned().unwrap_or_default();
    let mode = raw.mode.as_deref().unwrap_or("vxlan");
    let overlay = match mode.trim() {
        "vxlan" => {
            let vni = raw.vni.unwrap_or(i64::from(DEFAULT_VNI));
            if !(0..=i64::from(MAX_VNI)).contains(&vni) {
                return Err(invalid(
                    "overlay.vni",
                    format!("{vni} is outside 0..={MAX_VNI} (24 bits)"),
                ));
            }
            let port = raw.port.unwrap_or(i64::from(VXLAN_PORT));
            if !(1..=65535).contains(&port) {
                return Err(invalid(
                    "overlay.port",
                    format!("{port} is outside 1..=65535"),
                ));
            }
            Overlay::Vxlan {
                vni: vni as u32,
                port: port as u16,
            }
        }
        "direct" => {
            for (field, set) in [
                ("overlay.vni", raw.vni.is_some()),
                ("overlay.port", raw.port.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        "applies to mode \"vxlan\" only; remove it for mode \"direct\"",
                    ));
                }
            }
            Overlay::Direct
        }
        other => {
            return Err(invalid(
                "overlay.mode",
                format!("{other:?} is not one of \"vxlan\", \"direct\""),
            ))
        }
    };
    Ok((overlay, raw.set_channels.unwrap_or(false)))
}

/// An uplink name that is not one of ferry's own links.
fn check_ifname(name: &str, host_port: &str) -> Result<(), ConfigError> {
    validate_ifname(name, 15).map_err(|m| invalid("uplink", m))?;
    let dp = format!("{host_port}{HOST_PORT_DP_SUFFIX}");
    if name == host_port || name == dp {
        return Err(invalid(
            "uplink",
            format!("{name:?} is ferry's host port ({host_port}/{dp}), not a NIC"),
        ));
    }
    if name.starts_with("fy") || name.starts_with("ft") {
        return Err(invalid(
            "uplink",
            format!("{name:?} is named like ferry's pod ports (fy*, ft*), not a NIC"),
        ));
    }
    if name == "lo" {
        return Err(invalid("uplink", "\"lo\" is the loopback, not a NIC"));
    }
    Ok(())
}

/// Peer `i`'s IPv6 pod CIDR, overlapping neither this node's (`own6`)
/// nor an earlier peer's.
fn peer_cidr6(
    i: usize,
    text: &str,
    own6: Option<Ipv6Net>,
    peers: &[Peer],
) -> Result<Ipv6Net, ConfigError> {
    let field = "peers.pod_cidr6";
    let net: Ipv6Net = text
        .trim()
        .parse()
        .map_err(|_| invalid(field, format!("peer {i}: {text:?} is not an IPv6 prefix")))?;
    if net.trunc() != net {
        return Err(invalid(
            field,
            format!(
                "peer {i}: {text:?} has host bits set; did you mean {}?",
                net.trunc()
            ),
        ));
    }
    let overlaps = |o: &Ipv6Net| o.contains(&net) || net.contains(o);
    if let Some(own) = own6.filter(overlaps) {
        return Err(invalid(
            field,
            format!("peer {i}: {net} overlaps this node's IPv6 pod CIDR {own}"),
        ));
    }
    if let Some(other) = peers
        .iter()
        .find(|o| o.pod_cidr6.as_ref().is_some_and(overlaps))
    {
        return Err(invalid(
            field,
            format!(
                "peer {i}: {net} overlaps the IPv6 pod CIDR of peer {}",
                other.address
            ),
        ));
    }
    Ok(net)
}

fn peers_from_raw(
    raw: &[RawPeer],
    (pod_cidrs, own6): (&[Ipv4Net], Option<Ipv6Net>),
    node_address: Option<Ipv4Addr>,
) -> Result<Vec<Peer>, ConfigError> {
    let mut peers: Vec<Peer> = Vec::with_capacity(raw.len());
    for (i, p) in raw.iter().enumerate() {
        let address = parse_addr("peers.address", &p.address).map_err(|e| at_peer(e, i))?;
        let pod_cidr: Ipv4Net = p.pod_cidr.trim().parse().map_err(|_| {
            invalid(
                "peers.pod_cidr",
                format!("peer {i}: {:?} is not an IPv4 CIDR", p.pod_cidr),
            )
        })?;
        if pod_cidr.network() != pod_cidr.addr() {
            return Err(invalid(
                "peers.pod_cidr",
                format!(
                    "peer {i}: {:?} has host bits set; did you mean {}?",
                    p.pod_cidr,
                    pod_cidr.trunc()
                ),
            ));
        }
        let overlaps = |o: &Ipv4Net| o.contains(&pod_cidr) || pod_cidr.contains(o);
        if let Some(own) = pod_cidrs.iter().find(|o| overlaps(o)) {
            return Err(invalid(
                "peers.pod_cidr",
                format!("peer {i} ({address}): {pod_cidr} overlaps this node's pod CIDR {own}"),
            ));
        }
        if let Some(other) = peers.iter().find(|o| overlaps(&o.pod_cidr)) {
            return Err(invalid(
                "peers.pod_cidr",
                format!(
                    "peer {i} ({address}): {pod_cidr} overlaps {} of peer {}",
                    other.pod_cidr, other.address
                ),
            ));
        }
        if node_address == Some(address) {
            return Err(invalid(
                "peers.address",
                format!("peer {i}: {address} is this node's own address"),
            ));
        }
        if peers.iter().any(|o| o.address == address) {
            return Err(invalid(
                "peers.address",
                format!("peer {i}: {address} is listed twice"),
            ));
        }
        let pod_cidr6 = p
            .pod_cidr6
            .as_deref()
            .map(|t| peer_cidr6(i, t, own6, &peers))
            .transpose()?;
        peers.push(Peer {
            address,
            pod_cidr,
            pod_cidr6,
        });
    }
    // A node's address inside a pod CIDR would be routed to pods.
    for (i, p) in peers.iter().enumerate() {
        let cidrs = pod_cidrs.iter().chain(peers.iter().map(|p| &p.pod_cidr));
        if let Some(c) = cidrs.into_iter().find(|c| c.contains(&p.address)) {
            return Err(invalid(
                "peers.address",
                format!("peer {i}: {} is inside the pod CIDR {c}", p.address),
            ));
        }
    }
    Ok(peers)
}

fn at_peer(e: ConfigError, i: usize) -> ConfigError {
    match e {
        ConfigError::Invalid { field, msg } => invalid(field, format!("peer {i}: {msg}")),
        other => other,
    }
}

impl UplinkConfig {
    /// The uplink fields of `raw`; `None` without `uplink` (and then none
    /// of the uplink's other fields may be set).
    pub(super) fn from_raw(
        raw: &RawConfig,
        (pod_cidrs, own6): (&[Ipv4Net], Option<Ipv6Net>),
        host_port: &str,
    ) -> Result<Option<UplinkConfig>, ConfigError> {
        let Some(ifname) = raw.uplink.as_deref() else {
            let needs = |field| invalid(field, "needs `uplink` (the node's NIC) to be set");
            if raw.overlay.is_some() {
                return Err(needs("overlay"));
            }
            if raw.peers.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(needs("peers"));
            }
            if raw.node_address.is_some() {
                return Err(needs("node_address"));
            }
            if raw.masquerade == Some(true) {
                return Err(needs("masquerade"));
            }
            return Ok(None);
        };
        check_ifname(ifname, host_port)?;
        let node_address = raw
            .node_address
            .as_deref()
            .map(|t| parse_addr("node_address", t))
            .transpose()?;
        if let (Some(a), Some(c)) = (
            node_address,
            node_address.and_then(|a| pod_cidrs.iter().find(|c| c.contains(&a))),
        ) {
            return Err(invalid(
                "node_address",
                format!("{a} is inside the pod CIDR {c}"),
            ));
        }
        let (overlay, set_channels) = overlay_from_raw(raw.overlay.as_ref())?;
        let peers = peers_from_raw(
            raw.peers.as_deref().unwrap_or(&[]),
            (pod_cidrs, own6),
            node_address,
        )?;
        Ok(Some(UplinkConfig {
            ifname: ifname.to_string(),
            node_address,
            masquerade: raw.masquerade.unwrap_or(true),
            overlay,
            set_channels,
            peers,
            link_mtu: None,
        }))
    }

    pub(super) fn raw_overlay(&self) -> RawOverlay {
        let (vni, port) = match self.overlay {
            Overlay::Vxlan { vni, port } => (Some(i64::from(vni)), Some(i64::from(port))),
            Overlay::Direct => (None, None),
        };
        RawOverlay {
            mode: Some(self.overlay.name().to_string()),
            vni,
            port,
            set_channels: Some(self.set_channels),
        }
    }

    /// Checked against the node's word on the link (see the module doc).
    pub(super) fn resolve(
        &mut self,
        facts: Option<&UplinkFacts>,
        mtu_setting: Option<u32>,
    ) -> Result<(), ConfigError> {
        let name = &self.ifname;
        let Some(facts) = facts else {
            return Err(invalid(
                "uplink",
                format!("there is no interface {name:?} in ferryd's network namespace"),
            ));
        };
        let list = || {
            let all: Vec<String> = facts.addresses.iter().map(ToString::to_string).collect();
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        };
        let address = match self.node_address {
            Some(a) if facts.addresses.iter().any(|n| n.addr() == a) => a,
            Some(a) => {
                return Err(invalid(
                    "node_address",
                    format!(
                        "{a} is not an address of {name} (its IPv4 addresses: {})",
                        list()
                    ),
                ))
            }
            None => match facts
                .addresses
                .iter()
                .map(|n| n.addr())
                .find(|a| node_unicast(*a))
            {
                Some(a) => a,
                None => {
                    return Err(invalid(
                        "node_address",
                        format!(
                        "{name} has no IPv4 address to default to; give it one or set node_address"
                    ),
                    ))
                }
            },
        };
        for (i, p) in self.peers.iter().enumerate() {
            if p.address == address {
                return Err(invalid(
                    "peers.address",
                    format!("peer {i}: {address} is this node's own address (on {name})"),
                ));
            }
            if self.overlay == Overlay::Direct
                && !facts.addresses.iter().any(|n| n.contains(&p.address))
            {
                return Err(invalid(
                    "peers.address",
                    format!(
                        "peer {i}: {} (pod CIDR {}) is not inside any IPv4 subnet of {name} ({}): {OFF_LINK_PEER}",
                        p.address,
                        p.pod_cidr,
                        list()
                    ),
                ));
            }
        }
        let overhead = self.overlay.mtu_overhead();
        let room = facts.mtu.saturating_sub(overhead);
        match mtu_setting {
            None if room < 68 => {
                return Err(invalid(
                    "uplink",
                    format!(
                        "{name}'s MTU {} leaves {room} bytes for pods after the {} overlay's {overhead}; pods need at least 68",
                        facts.mtu,
                        self.overlay.name()
                    ),
                ))
            }
            Some(m) if m > room => log::warn!(
                "mtu {m} is above what {name} carries for pods ({} less the {} overlay's {overhead} = {room}): larger packets between nodes will be lost",
                facts.mtu,
                self.overlay.name()
            ),
            _ => {}
        }
        self.node_address = Some(address);
        self.link_mtu = Some(facts.mtu);
        Ok(())
    }

    /// The uplink's MTU less the overlay's overhead, once known.
    pub fn derived_mtu(&self) -> Option<u32> {
        self.link_mtu
            .map(|m| m.saturating_sub(self.overlay.mtu_overhead()))
            .filter(|m| *m >= 68)
    }

    /// The table API's uplink; `None` until the node address is known.
    pub fn api(&self) -> Option<Uplink> {
        Some(Uplink {
            ifname: self.ifname.clone(),
            address: self.node_address?,
            overlay: self.overlay,
            set_channels: self.set_channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const FULL: &str = r#"
        pod_cidrs = ["10.70.1.0/24"]
        uplink = "up0"
        node_address = "192.168.70.1"
        masquerade = true
        [overlay]
        mode = "vxlan"
        vni = 1
        port = 4789
        set_channels = false
        [[peers]]
        address = "192.168.70.2"
        pod_cidr = "10.70.2.0/24"
        [[peers]]
        address = "192.168.71.3"
        pod_cidr = "10.70.3.0/24"
    "#;

    fn facts() -> UplinkFacts {
        UplinkFacts {
            mtu: 1500,
            addresses: vec!["192.168.70.1/24".parse().unwrap()],
        }
    }

    fn field_of(r: Result<Config, ConfigError>) -> (&'static str, String) {
        match r {
            Err(ConfigError::Invalid { field, msg }) => (field, msg),
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_dual_stack_peer_has_its_ipv6_cidr_checked() {
        let base = "pod_cidrs = [\"10.70.1.0/24\", \"fd00:70:1::/64\"]\nuplink = \"up0\"\n";
        let peer = |a: &str, c6: &str| {
            format!("[[peers]]\naddress = \"{a}\"\npod_cidr = \"10.70.{}.0/24\"\npod_cidr6 = \"{c6}\"\n", &a[11..])
        };
        let ok = format!(
            "{base}{}{}",
            peer("192.168.70.2", "fd00:70:2::/64"),
            peer("192.168.70.3", "fd00:70:3::/64")
        );
        let c = Config::parse(&ok).unwrap();
        let u = c.uplink.as_ref().unwrap();
        assert_eq!(
            u.peers[1].pod_cidr6,
            Some("fd00:70:3::/64".parse().unwrap())
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        for (bad, why) in [
            (peer("192.168.70.2", "fd00:70:1::/80"), "this node's"),
            (peer("192.168.70.2", "fd00:70:2::1/64"), "host bits"),
            (peer("192.168.70.2", "10.9.9.0/24"), "not an IPv6"),
        ] {
            let (field, msg) = field_of(Config::parse(&format!("{base}{bad}")));
            assert_eq!(field, "peers.pod_cidr6");
            assert!(msg.contains(why), "{msg}");
        }
        let twice = format!(
            "{base}{}{}",
            peer("192.168.70.2", "fd00:70:2::/64"),
            peer("192.168.70.3", "fd00:70:2::/72")
        );
        assert!(field_of(Config::parse(&twice))
            .1
            .contains("peer 192.168.70.2"));
    }

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(FULL).unwrap();
        let u = c.uplink.as_ref().unwrap();
        assert_eq!(u.ifname, "up0");
        assert_eq!(u.node_address, Some(Ipv4Addr::new(192, 168, 70, 1)));
        assert!(u.masquerade);
        assert_eq!(u.overlay, Overlay::Vxlan { vni: 1, port: 4789 });
        assert!(!u.set_channels);
        assert_eq!(u.peers.len(), 2);
        assert_eq!(u.peers[0].pod_cidr, "10.70.2.0/24".parse().unwrap());
        assert_eq!(
            c.cluster_cidrs(),
            ["10.70.1.0/24", "10.70.2.0/24", "10.70.3.0/24"].map(|t| t.parse().unwrap())
        );
        // Printed and read back: the same configuration.
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn uplink_defaults() {
        let c = Config::parse("uplink = \"eth0\"").unwrap();
        let u = c.uplink.clone().unwrap();
        assert_eq!(u.node_address, None);
        assert!(u.masquerade, "masquerade defaults to on with an uplink");
        assert_eq!(
            u.overlay,
            Overlay::Vxlan {
                vni: DEFAULT_VNI,
                port: VXLAN_PORT
            }
        );
        assert!(u.peers.is_empty());
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        // Direct mode prints without vni/port and reads back.
        let d = Config::parse("uplink = \"eth0\"\n[overlay]\nmode = \"direct\"").unwrap();
        assert_eq!(d.uplink.as_ref().unwrap().overlay, Overlay::Direct);
        assert_eq!(Config::parse(&d.to_toml()).unwrap(), d);
        // No uplink: none of it, and masquerade = false is harmless.
        let none = Config::parse("masquerade = false\npeers = []").unwrap();
        assert_eq!(none.uplink, None);
        assert_eq!(none.cluster_cidrs(), none.pod_cidrs);
    }

    #[test]
    fn bad_uplink_configs_name_the_field() {
        let up = "uplink = \"up0\"\n";
        let peer = |a: &str, c: &str| format!("[[peers]]\naddress = \"{a}\"\npod_cidr = \"{c}\"\n");
        let cases: Vec<(String, &str)> = vec![
            (format!("{up}[overlay]\nmode = \"geneve\""), "overlay.mode"),
            (format!("{up}[overlay]\nvni = 16777216"), "overlay.vni"),
            (format!("{up}[overlay]\nvni = -1"), "overlay.vni"),
            (format!("{up}[overlay]\nport = 0"), "overlay.port"),
            (format!("{up}[overlay]\nport = 65536"), "overlay.port"),
            (
                format!("{up}[overlay]\nmode = \"direct\"\nvni = 5"),
                "overlay.vni",
            ),
            ("[overlay]\nmode = \"vxlan\"".into(), "overlay"),
            (peer("192.168.70.2", "10.70.2.0/24"), "peers"),
            ("node_address = \"192.168.70.1\"".into(), "node_address"),
            ("masquerade = true".into(), "masquerade"),
            ("uplink = \"ferry0\"".into(), "uplink"),
            ("uplink = \"ferry0dp\"".into(), "uplink"),
            ("host_port = \"fh\"\nuplink = \"fhdp\"".into(), "uplink"),
            ("uplink = \"fy0123456789a\"".into(), "uplink"),
            ("uplink = \"ft0123456789a\"".into(), "uplink"),
            ("uplink = \"lo\"".into(), "uplink"),
            ("uplink = \"\"".into(), "uplink"),
            ("uplink = \"a234567890123456\"".into(), "uplink"),
            (format!("{up}node_address = \"nope\""), "node_address"),
            (format!("{up}node_address = \"0.0.0.0\""), "node_address"),
            (format!("{up}node_address = \"10.88.0.7\""), "node_address"),
            (
                format!("{up}{}", peer("192.168.70.2", "10.88.1.0/24")),
                "peers.pod_cidr",
            ),
            (
                format!("{up}{}", peer("192.168.70.2", "10.0.0.0/8")),
                "peers.pod_cidr",
            ),
            (
                format!(
                    "{up}{}{}",
                    peer("192.168.70.2", "10.70.2.0/24"),
                    peer("192.168.70.3", "10.70.2.128/25")
                ),
                "peers.pod_cidr",
            ),
            (
                format!("{up}{}", peer("192.168.70.2", "10.70.2.1/24")),
                "peers.pod_cidr",
            ),
            (
                format!("{up}{}", peer("192.168.70.2", "nope")),
                "peers.pod_cidr",
            ),
            (
                format!(
                    "{up}{}{}",
                    peer("192.168.70.2", "10.70.2.0/24"),
                    peer("192.168.70.2", "10.70.3.0/24")
                ),
                "peers.address",
            ),
            (
                format!(
                    "{up}node_address = \"192.168.70.1\"\n{}",
                    peer("192.168.70.1", "10.70.2.0/24")
                ),
                "peers.address",
            ),
            (
                format!("{up}{}", peer("10.70.2.9", "10.70.2.0/24")),
                "peers.address",
            ),
            (
                format!("{up}{}", peer("224.0.0.1", "10.70.2.0/24")),
                "peers.address",
            ),
            (
                format!("{up}{}", peer("x", "10.70.2.0/24")),
                "peers.address",
            ),
        ];
        for (text, field) in &cases {
            let (f, msg) = field_of(Config::parse(text));
            assert_eq!(f, *field, "{text}: {msg}");
            assert!(!msg.is_empty());
        }
        // A peer table missing a field, or with an unknown one, is a parse error.
        for text in [
            format!("{up}[[peers]]\naddress = \"192.168.70.2\""),
            format!("{up}{}colour = 1", peer("192.168.70.2", "10.70.2.0/24")),
            format!("{up}[overlay]\nmtu = 1"),
        ] {
            let err = Config::parse(&text).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn resolve_fills_the_node_address_and_checks_it() {
        let c = Config::parse("uplink = \"up0\"").unwrap();
        let two = UplinkFacts {
            mtu: 9000,
            addresses: vec![
                "192.168.70.5/24".parse().unwrap(),
                "192.168.80.5/24".parse().unwrap(),
            ],
        };
        let r = c.resolve(Some(&two)).unwrap();
        let u = r.uplink.as_ref().unwrap();
        assert_eq!(u.node_address, Some(Ipv4Addr::new(192, 168, 70, 5)));
        assert_eq!(u.link_mtu, Some(9000));
        assert_eq!(
            u.api().unwrap(),
            Uplink {
                ifname: "up0".into(),
                address: Ipv4Addr::new(192, 168, 70, 5),
                overlay: Overlay::Vxlan { vni: 1, port: 4789 },
                set_channels: false,
            }
        );
        // An explicit address must be one of the uplink's.
        let c = Config::parse("uplink = \"up0\"\nnode_address = \"192.168.80.5\"").unwrap();
        let r = c.resolve(Some(&two)).unwrap();
        assert_eq!(
            r.uplink.unwrap().node_address,
            Some(Ipv4Addr::new(192, 168, 80, 5))
        );
        let c = Config::parse("uplink = \"up0\"\nnode_address = \"192.168.70.9\"").unwrap();
        let (f, msg) = field_of(c.resolve(Some(&two)));
        assert_eq!(f, "node_address", "{msg}");
        assert!(msg.contains("192.168.70.5/24"), "{msg}");
        // No address to default to.
        let bare = UplinkFacts {
            mtu: 1500,
            addresses: vec![],
        };
        let (f, _) = field_of(
            Config::parse("uplink = \"up0\"")
                .unwrap()
                .resolve(Some(&bare)),
        );
        assert_eq!(f, "node_address");
        // The uplink is not there.
        let (f, msg) = field_of(Config::parse("uplink = \"up0\"").unwrap().resolve(None));
        assert_eq!(f, "uplink");
        assert!(msg.contains("up0"), "{msg}");
        // Without an uplink nothing is asked.
        assert_eq!(Config::default().resolve(None).unwrap(), Config::default());
    }

    #[test]
    fn resolve_refuses_the_node_itself_as_a_peer() {
        let c = Config::parse(
            "uplink = \"up0\"\n[[peers]]\naddress = \"192.168.70.1\"\npod_cidr = \"10.70.2.0/24\"",
        )
        .unwrap();
        let (f, msg) = field_of(c.resolve(Some(&facts())));
        assert_eq!(f, "peers.address", "{msg}");
    }

    #[test]
    fn direct_mode_needs_peers_on_the_link() {
        let direct = FULL.replace(
            "mode = \"vxlan\"\n        vni = 1\n        port = 4789",
            "mode = \"direct\"",
        );
        let c = Config::parse(&direct).unwrap();
        // 192.168.71.3 is not inside 192.168.70.0/24.
        let (f, msg) = field_of(c.resolve(Some(&facts())));
        assert_eq!(f, "peers.address");
        assert!(msg.contains(OFF_LINK_PEER), "{msg}");
        assert!(msg.contains("192.168.71.3"), "{msg}");
        // With a second subnet on the uplink it is on-link.
        let mut wide = facts();
        wide.addresses.push("192.168.71.1/24".parse().unwrap());
        let r = c.resolve(Some(&wide)).unwrap();
        assert_eq!(r.mtu(), 1500, "direct routing takes nothing of the MTU");
        // The same peers over VXLAN are fine anywhere.
        assert!(Config::parse(FULL).unwrap().resolve(Some(&facts())).is_ok());
    }

    #[test]
    fn mtu_follows_the_uplink_unless_written() {
        let c = Config::parse(FULL).unwrap();
        assert_eq!(c.mtu(), 1500, "unresolved: the plain default");
        let r = c.resolve(Some(&facts())).unwrap();
        assert_eq!(r.mtu(), 1450);
        assert!(r.mtu_is_derived());
        let jumbo = UplinkFacts {
            mtu: 9000,
            ..facts()
        };
        assert_eq!(c.resolve(Some(&jumbo)).unwrap().mtu(), 8950);
        let written = Config::parse(&format!("mtu = 1400\n{FULL}")).unwrap();
        let r = written.resolve(Some(&facts())).unwrap();
        assert_eq!(r.mtu(), 1400);
        assert!(!r.mtu_is_derived());
        // An uplink too small for the overlay.
        let tiny = UplinkFacts {
            mtu: 100,
            ..facts()
        };
        let (f, _) = field_of(c.resolve(Some(&tiny)));
        assert_eq!(f, "uplink");
        // Single node: the default, as before.
        assert_eq!(Config::default().mtu(), 1500);
    }
}

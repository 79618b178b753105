//! Ethernet MAC address, serialized as the usual `aa:bb:cc:dd:ee:ff` text.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// No MAC (not known, or not one).
    pub const ZERO: MacAddr = MacAddr([0; 6]);
    /// The router MAC every pod sees for its gateway (Calico's convention;
    /// locally administered, unicast).
    pub const ROUTER: MacAddr = MacAddr([0xee; 6]);

    /// The deterministic MAC ferryd gives a pod interface: `0a:58:` followed
    /// by the IPv4 address (the convention of the reference plugins and
    /// OVN-Kubernetes), so the MAC can be recomputed from the store.
    pub fn for_pod(ip: Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    /// The MAC of a pod by its first address: [`MacAddr::for_pod`] for
    /// IPv4; for IPv6 (a pod without an IPv4 address) `0a:58:` followed by
    /// the address's last four bytes, as OVN-Kubernetes does. Both are
    /// locally administered unicast and recomputable from the store.
    pub fn for_pod_ip(ip: IpAddr) -> MacAddr {
        match ip {
            IpAddr::V4(v4) => MacAddr::for_pod(v4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                MacAddr([0x0a, 0x58, o[12], o[13], o[14], o[15]])
            }
        }
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets separated by ':'")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_string()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text() {
        let m: MacAddr = "0a:58:0a:58:00:05".parse().unwrap();
        assert_eq!(m, MacAddr::for_pod(Ipv4Addr::new(10, 88, 0, 5)));
        assert_eq!(m.to_string(), "0a:58:0a:58:00:05");
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"0a:58:0a:58:00:05\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
    }

    #[test]
    fn pod_macs_by_family() {
        let v4 = Ipv4Addr::new(10, 88, 0, 5);
        assert_eq!(MacAddr::for_pod_ip(v4.into()), MacAddr::for_pod(v4));
        let v6: IpAddr = "fd00:10:88::a:7".parse().unwrap();
        let m = MacAddr::for_pod_ip(v6);
        assert_eq!(m.to_string(), "0a:58:00:0a:00:07");
        // Locally administered (bit 1), unicast (bit 0 clear).
        assert_eq!(m.0[0] & 0b11, 0b10);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "0a:58",
            "0a:58:0a:58:00:05:01",
            "zz:58:0a:58:00:05",
            "0a:58:0a:58:00:5",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}

//! `[cluster]`: this node is one of several that find each other through
//! etcd. Its pod CIDR is then a block claimed from the cluster CIDR (not
//! `pod_cidrs`), and its peers come from the datastore (not `[[peers]]`).
//!
//! Pure, like the rest of the configuration: what the file says is checked
//! here; whether etcd answers is the member's business
//! ([`crate::cluster::member`]).

use std::path::PathBuf;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};
use crate::cluster::etcd::EtcdOptions;
use crate::cluster::Cidr6;

/// Flannel's subnet lease: a day, renewed well before it ends.
pub const DEFAULT_LEASE_TTL_S: i64 = 86_400;
pub const MIN_LEASE_TTL_S: i64 = 10;
pub const DEFAULT_BLOCK_LEN: i64 = 24;
/// A node's IPv6 block: a /64, as Flannel's `IPv6SubnetLen`.
pub const DEFAULT_BLOCK_LEN6: i64 = 64;
pub const DEFAULT_PREFIX: &str = "/ferry";

/// `[cluster]` as written.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_len: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_len6: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ttl_s: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// The validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub cidr: Ipv4Net,
    pub block_len: u8,
    /// A dual-stack cluster's IPv6 pods (`cidr6`, `block_len6`).
    pub v6: Option<Cidr6>,
    pub node_name: String,
    pub prefix: String,
    pub lease_ttl: Duration,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The machine's hostname (the default node name).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A node name etcd keys and logs can carry: 1..=253 bytes of
/// `[A-Za-z0-9.-_]` (a Kubernetes node name is a DNS subdomain).
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{name:?} must be 1 to 253 bytes long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; a node name is letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

fn check_endpoint(e: &str) -> Result<bool, String> {
    let (tls, rest) = if let Some(r) = e.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "{e:?} is not an http:// or https:// URL such as \"http://10.0.0.1:2379\""
        ));
    };
    let hostport = rest.trim_end_matches('/');
    let ok = hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok || hostport.contains('/') {
        return Err(format!(
            "{e:?} needs a host and a port, e.g. \"http://10.0.0.1:2379\""
        ));
    }
    Ok(tls)
}

/// The IPv6 side of a dual-stack cluster: `cidr6` and `block_len6`, with
/// room for an IPv6 block for every IPv4 block of `cidr` (a node's IPv6
/// block is the one with its IPv4 block's index).
fn cidr6(
    text: &str,
    block_len6: Option<i64>,
    cidr: Ipv4Net,
    block_len: u8,
) -> Result<Cidr6, ConfigError> {
    let net: Ipv6Net = text.trim().parse().map_err(|_| {
        invalid(
            "cluster.cidr6",
            format!("{text:?} is not an IPv6 prefix such as \"fd00:10:244::/56\""),
        )
    })?;
    if net.trunc() != net {
        return Err(invalid(
            "cluster.cidr6",
            format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    let len = block_len6.unwrap_or(DEFAULT_BLOCK_LEN6);
    let blocks_bits = i64::from(block_len - cidr.prefix_len());
    let least = i64::from(net.prefix_len()) + blocks_bits;
    if !(least..=126).contains(&len) {
        return Err(invalid(
            "cluster.block_len6",
            format!(
                "{len} must be between {least} (cidr6's length {} plus the {blocks_bits} bits that number the /{block_len} blocks of {cidr}) and 126",
                net.prefix_len()
            ),
        ));
    }
    Ok(Cidr6 {
        cidr: net,
        block_len: len as u8,
    })
}

impl ClusterConfig {
    /// The IPv6 block of the IPv4 `block`, in a dual-stack cluster.
    pub fn block6(&self, block: Ipv4Net) -> Option<Ipv6Net> {
        self.v6
            .and_then(|v6| v6.block_of(self.cidr, self.block_len, block))
    }

    pub(super) fn from_raw(raw: &RawCluster) -> Result<ClusterConfig, ConfigError> {
        let endpoints = raw.endpoints.clone().unwrap_or_default();
        if endpoints.is_empty() {
            return Err(invalid(
                "cluster.endpoints",
                "needs at least one etcd endpoint, e.g. [\"http://10.0.0.1:2379\"]",
            ));
        }
        let mut tls = None;
        for e in &endpoints {
            let this = check_endpoint(e).map_err(|m| invalid("cluster.endpoints", m))?;
            if tls.is_some_and(|t| t != this) {
                return Err(invalid(
                    "cluster.endpoints",
                    "mixes http:// and https:// endpoints; use one scheme",
                ));
            }
            tls = Some(this);
        }
        let tls = tls.unwrap_or(false);

        let Some(text) = raw.cidr.as_deref() else {
            return Err(invalid(
                "cluster.cidr",
                "needs the cluster's pod CIDR, e.g. \"10.244.0.0/16\"",
            ));
        };
        let cidr: Ipv4Net = text.trim().parse().map_err(|_| {
            invalid(
                "cluster.cidr",
                format!("{text:?} is not an IPv4 CIDR (a.b.c.d/len; IPv6 is not supported yet)"),
            )
        })?;
        if cidr.trunc() != cidr {
            return Err(invalid(
                "cluster.cidr",
                format!("{text:?} has host bits set; did you mean {}?", cidr.trunc()),
            ));
        }
        let block_len = raw.block_len.unwrap_or(DEFAULT_BLOCK_LEN);
        if !(i64::from(cidr.prefix_len())..=30).contains(&block_len) {
            return Err(invalid(
                "cluster.block_len",
                format!(
                    "{block_len} must be between the cluster CIDR's length ({}) and 30",
                    cidr.prefix_len()
                ),
            ));
        }

        let v6 = match &raw.cidr6 {
            None if raw.block_len6.is_some() => {
                return Err(invalid("cluster.block_len6", "goes with cidr6"))
            }
            None => None,
            Some(text) => Some(cidr6(text, raw.block_len6, cidr, block_len as u8)?),
        };

        let node_name = raw.node_name.clone().unwrap_or_else(hostname);
        check_node_name(&node_name).map_err(|m| invalid("cluster.node_name", m))?;

        let prefix = raw
            .prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err(invalid(
                "cluster.prefix",
                format!("{prefix:?} must start with '/' and not end with one, e.g. \"/ferry\""),
            ));
        }

        let ttl = raw.lease_ttl_s.unwrap_or(DEFAULT_LEASE_TTL_S);
        if ttl < MIN_LEASE_TTL_S {
            return Err(invalid(
                "cluster.lease_ttl_s",
                format!("{ttl} is below {MIN_LEASE_TTL_S} seconds"),
            ));
        }

        let nonempty = |field: &'static str, p: &Option<PathBuf>| match p {
            Some(p) if p.as_os_str().is_empty() => Err(invalid(field, "must not be empty")),
            _ => Ok(p.clone()),
        };
        let ca_file = nonempty("cluster.ca_file", &raw.ca_file)?;
        let cert_file = nonempty("cluster.cert_file", &raw.cert_file)?;
        let key_file = nonempty("cluster.key_file", &raw.key_file)?;
        if cert_file.is_some() != key_file.is_some() {
            return Err(invalid(
                "cluster.cert_file",
                "cert_file and key_file go together (the client certificate and its key)",
            ));
        }
        if tls && ca_file.is_none() {
            return Err(invalid(
                "cluster.ca_file",
                "https:// endpoints need the CA that signed etcd's certificate",
            ));
        }
        if !tls && (ca_file.is_some() || cert_file.is_some()) {
            return Err(invalid(
                "cluster.endpoints",
                "ca_file/cert_file are for https:// endpoints; these are http://",
            ));
        }
        Ok(ClusterConfig {
            endpoints,
            cidr,
            block_len: block_len as u8,
            v6,
            node_name,
            prefix,
            lease_ttl: Duration::from_secs(ttl as u64),
            ca_file,
            cert_file,
            key_file,
        })
    }

    pub(super) fn to_raw(&self) -> RawCluster {
        RawCluster {
            endpoints: Some(self.endpoints.clone()),
            cidr: Some(self.cidr.to_string()),
            block_len: Some(i64::from(self.block_len)),
            cidr6: self.v6.map(|v6| v6.cidr.to_string()),
            block_len6: self.v6.map(|v6| i64::from(v6.block_len)),
            node_name: Some(self.node_name.clone()),
            prefix: Some(self.prefix.clone()),
            lease_ttl_s: Some(self.lease_ttl.as_secs() as i64),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The etcd client's options.
    pub fn etcd(&self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            lease_ttl: self.lease_ttl,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// The block every node starts with before its claim (the cluster
    /// CIDR's first): only a placeholder for the parsed configuration.
    pub fn first_block(&self) -> Ipv4Net {
        self.cidr
            .subnets(self.block_len)
            .ok()
            .and_then(|mut s| s.next())
            .unwrap_or(self.cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const CLUSTER: &str = r#"
        uplink = "up0"
        [cluster]
        endpoints = ["http://10.99.0.1:2379"]
        cidr = "10.244.0.0/16"
        node_name = "node-a"
    "#;

    fn field_of(text: &str) -> (&'static str, String) {
        match Config::parse(text) {
            Err(ConfigError::Invalid { field, msg }) => (field, msg),
            other => panic!("{text}: expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn a_cluster_node_parses_with_defaults_and_round_trips() {
        let c = Config::parse(CLUSTER).unwrap();
        let k = c.cluster.as_ref().unwrap();
        assert_eq!(k.cidr, "10.244.0.0/16".parse().unwrap());
        assert_eq!(k.block_len, 24);
        assert_eq!(k.prefix, "/ferry");
        assert_eq!(k.lease_ttl, Duration::from_secs(86_400));
        assert_eq!(k.node_name, "node-a");
        // Until the claim, the first block stands in for the pod CIDR.
        assert_eq!(c.pod_cidrs, vec!["10.244.0.0/24".parse().unwrap()]);
        assert_eq!(c.cluster_cidrs(), vec![k.cidr]);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        // The claimed block becomes the pod CIDR, its first host the gateway.
        let b = c.with_block("10.244.7.0/24".parse().unwrap());
        assert_eq!(b.pod_cidrs, vec!["10.244.7.0/24".parse().unwrap()]);
        assert_eq!(b.gateway, std::net::Ipv4Addr::new(10, 244, 7, 1));
        assert_eq!(b.cluster_cidrs(), vec![k.cidr]);
        // The node name defaults to the hostname.
        let d = Config::parse(&CLUSTER.replace("node_name = \"node-a\"", "")).unwrap();
        assert_eq!(d.cluster.unwrap().node_name, hostname());
    }

    #[test]
    fn tls_needs_a_ca_and_both_halves_of_a_client_identity() {
        let tls = CLUSTER.replace("http://", "https://");
        assert_eq!(field_of(&tls).0, "cluster.ca_file");
        let ok = format!("{tls}ca_file = \"/etc/ferry/ca.pem\"\n");
        let c = Config::parse(&ok).unwrap();
        assert!(c.cluster.unwrap().ca_file.is_some());
        let half = format!("{ok}cert_file = \"/etc/ferry/node.pem\"\n");
        assert_eq!(field_of(&half).0, "cluster.cert_file");
        let both = format!("{half}key_file = \"/etc/ferry/node-key.pem\"\n");
        assert!(Config::parse(&both).is_ok());
        let plain_with_ca = format!("{CLUSTER}ca_file = \"/ca.pem\"\n");
        assert_eq!(field_of(&plain_with_ca).0, "cluster.endpoints");
    }

    #[test]
    fn bad_cluster_settings_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "endpoints = [\"http://10.99.0.1:2379\"]",
                "endpoints = []",
                "cluster.endpoints",
            ),
            (
                "http://10.99.0.1:2379",
                "10.99.0.1:2379",
                "cluster.endpoints",
            ),
            (
                "http://10.99.0.1:2379",
                "http://10.99.0.1",
                "cluster.endpoints",
            ),
            (
                "http://10.99.0.1:2379",
                "http://10.99.0.1:0",
                "cluster.endpoints",
            ),
            ("\"10.244.0.0/16\"", "\"10.244.0.1/16\"", "cluster.cidr"),
            ("\"10.244.0.0/16\"", "\"fd00::/64\"", "cluster.cidr"),
            ("cidr = \"10.244.0.0/16\"", "block_len = 24", "cluster.cidr"),
            (
                "node_name = \"node-a\"",
                "node_name = \"a/b\"",
                "cluster.node_name",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"\"",
                "cluster.node_name",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"a\"\nblock_len = 15",
                "cluster.block_len",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"a\"\nblock_len = 31",
                "cluster.block_len",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"a\"\nprefix = \"ferry\"",
                "cluster.prefix",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"a\"\nprefix = \"/f/\"",
                "cluster.prefix",
            ),
            (
                "node_name = \"node-a\"",
                "node_name = \"a\"\nlease_ttl_s = 5",
                "cluster.lease_ttl_s",
            ),
        ];
        for (from, to, field) in cases {
            let text = CLUSTER.replace(from, to);
            assert_ne!(text, CLUSTER, "{from} not in the template");
            let (f, msg) = field_of(&text);
            assert_eq!(f, *field, "{text}: {msg}");
        }
    }

    #[test]
    fn a_cluster_node_takes_its_cidr_and_peers_from_the_datastore() {
        // No uplink: nothing to reach the others with.
        let no_uplink = CLUSTER.replace("uplink = \"up0\"", "");
        assert_eq!(field_of(&no_uplink).0, "cluster");
        for (extra, field) in [
            ("pod_cidrs = [\"10.1.0.0/24\"]\n", "pod_cidrs"),
            ("gateway = \"10.244.0.1\"\n", "gateway"),
            (
                "[[peers]]\naddress = \"192.168.1.2\"\npod_cidr = \"10.2.0.0/24\"\n",
                "peers",
            ),
        ] {
            let text = format!("{extra}{CLUSTER}");
            let text = if field == "peers" {
                format!("{CLUSTER}{extra}")
            } else {
                text
            };
            assert_eq!(field_of(&text).0, field, "{text}");
        }
        // A node address inside the cluster CIDR would be routed to pods.
        let inside = CLUSTER.replace(
            "uplink = \"up0\"",
            "uplink = \"up0\"\nnode_address = \"10.244.9.9\"",
        );
        assert_eq!(field_of(&inside).0, "node_address");
    }

    #[test]
    fn a_dual_stack_cluster_derives_the_ipv6_block_from_the_claim() {
        let text = CLUSTER.replace(
            "cidr = \"10.244.0.0/16\"",
            "cidr = \"10.244.0.0/16\"\ncidr6 = \"fd00:10:244::/48\"",
        );
        let c = Config::parse(&text).unwrap();
        let v6 = c.ipv6.expect("the first block's IPv6 block stands in");
        assert_eq!(v6.cidr, "fd00:10:244::/64".parse().unwrap());
        let b = c.with_block("10.244.7.0/24".parse().unwrap());
        let v6 = b.ipv6.unwrap();
        assert_eq!(v6.cidr, "fd00:10:244:7::/64".parse().unwrap());
        assert_eq!(
            v6.gateway,
            "fd00:10:244:7::1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);

        // Too few IPv6 blocks for the IPv4 ones, a block length without a
        // CIDR, a gateway6 (it comes from the block), an IPv4 cidr6.
        let few = text.replace("fd00:10:244::/48\"", "fd00:10:244::/60\"");
        assert_eq!(field_of(&few).0, "cluster.block_len6");
        let lone = CLUSTER.replace("node_name", "block_len6 = 64\nnode_name");
        assert_eq!(field_of(&lone).0, "cluster.block_len6");
        let gw = format!("gateway6 = \"fd00:10:244::1\"\n{text}");
        assert_eq!(field_of(&gw).0, "gateway6");
        let v4 = text.replace("fd00:10:244::/48", "10.245.0.0/16");
        assert_eq!(field_of(&v4).0, "cluster.cidr6");
    }
}

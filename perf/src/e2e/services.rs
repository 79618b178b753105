//! The service cases (`--services N`): N Kubernetes Services, each with a
//! UDP and a TCP port 80 on a ClusterIP of its own, all backed by pod 1
//! (the flood's port 9, the request/response server's port); the workloads
//! are sent to the ClusterIP of the last one. ferry gets them as the YAML
//! `ferryctl apply -f` reads ([`yaml_files`]); the kernel baseline as the
//! nat table kube-proxy's iptables mode writes ([`iptables_rules`]), loaded
//! with `iptables-restore` in the node namespace.
//!
//! Pure: text in, text out; the topology applies it ([`super::topo`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::ops::Range;

use super::error::{E2eError, Result};
use super::traffic::FLOOD_PORT;
use super::workload::RR_PORT;

/// The service port every case is sent to (both protocols).
pub const SERVICE_PORT: u16 = 80;
/// The namespace of the generated Services and EndpointSlices.
pub const NAMESPACE: &str = "perf";
/// Most services one run may ask for (their ClusterIPs stay in 10.96.0.0/12).
pub const MAX_SERVICES: usize = 20_000;
/// ferryctl's limit on one file (`ctl/src/main.rs`), less a margin.
pub const FILE_LIMIT: usize = 880 << 10;

/// `--services 10,1000`: the service counts of the service cases, in run
/// order, without duplicates; `0` (alone) or nothing: no service case.
pub fn parse_counts(s: &str) -> Result<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: usize = part
            .parse()
            .map_err(|_| E2eError::setup("-", format!("--services: {part:?} is not a count")))?;
        if n > MAX_SERVICES {
            return Err(E2eError::setup(
                "-",
                format!("--services: {n} is more than {MAX_SERVICES}"),
            ));
        }
        if n > 0 && !v.contains(&n) {
            v.push(n);
        }
    }
    Ok(v)
}

/// The case label of `workload` through `n` services: `udp-64B-svc10`.
pub fn case(workload: &str, n: usize) -> String {
    format!("{workload}-svc{n}")
}

/// The name of service `i`.
pub fn name(i: usize) -> String {
    format!("svc-{i}")
}

/// The ClusterIP of service `i`: `10.96.(1 + i / 200).(10 + i % 200)`,
/// clear of 10.96.0.x (kube-apiserver's and DNS's by custom).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    let hi = 1 + i / 200;
    Ipv4Addr::new(
        10,
        96 + (hi / 256) as u8,
        (hi % 256) as u8,
        (10 + i % 200) as u8,
    )
}

/// The service whose ClusterIP the workloads use when `n` exist: the last,
/// whose rules iptables meets last in KUBE-SERVICES (matched in order), the
/// kernel's worst case and a fair one for a per-rule path.
pub fn measured(n: usize) -> usize {
    n.saturating_sub(1)
}

/// The Service and EndpointSlice of service `i`, backed by `backends`
/// (each at the flood's port for UDP and the request/response port for TCP).
fn documents(i: usize, backends: &[Ipv4Addr]) -> String {
    let n = name(i);
    let addresses: String = backends
        .iter()
        .map(|b| format!("- addresses: [{b}]\n  conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {n}, namespace: {NAMESPACE}}}\nspec:\n  \
         clusterIP: {ip}\n  ports:\n  - {{name: udp, port: {SERVICE_PORT}, protocol: UDP, targetPort: {FLOOD_PORT}}}\n  \
         - {{name: tcp, port: {SERVICE_PORT}, protocol: TCP, targetPort: {RR_PORT}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {n}-1\n  \
         namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {n}}}\naddressType: IPv4\n\
         ports: [{{name: udp, port: {FLOOD_PORT}, protocol: UDP}}, {{name: tcp, port: {RR_PORT}, protocol: TCP}}]\n\
         endpoints:\n{addresses}",
        ip = cluster_ip(i),
    )
}

/// The services `range` as `ferryctl apply -f` (or `delete -f`) files, each
/// at most `limit` bytes, documents separated by `---`; empty for an empty range.
pub fn yaml_files(range: Range<usize>, backends: &[Ipv4Addr], limit: usize) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    let mut cur = String::new();
    for i in range {
        let d = documents(i, backends);
        if !cur.is_empty() && cur.len() + 4 + d.len() > limit {
            files.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push_str("---\n");
        }
        cur.push_str(&d);
    }
    if !cur.is_empty() {
        files.push(cur);
    }
    files
}

/// The ids ferryd compiles services `0..n` into (`<namespace>/<name>:<port>/<protocol>`).
pub fn port_ids(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            let s = name(i);
            ["UDP", "TCP"].map(|p| format!("{NAMESPACE}/{s}:{SERVICE_PORT}/{p}"))
        })
        .collect()
}

/// kube-proxy's chain-name hash: 16 characters of base32 from a hash of
/// the service port's name and protocol (kube-proxy takes SHA-256; any
/// stable hash names the chains alike).
fn chain_suffix(what: &str) -> String {
    // FNV-1a 64, then splitmix64 for a second word: 80 bits for 16 characters.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let bits = (u128::from(h) << 16) | u128::from(z >> 48);
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    (0..16)
        .map(|k| ALPHABET[((bits >> (75 - 5 * k)) & 31) as usize] as char)
        .collect()
}

/// The `KUBE-SVC-…` chain of a service port (`proto` `tcp` or `udp`).
pub fn svc_chain(i: usize, proto: &str) -> String {
    format!(
        "KUBE-SVC-{}",
        chain_suffix(&format!("{NAMESPACE}/{}:{proto}", name(i)))
    )
}

/// The `KUBE-SEP-…` chain of a service port's endpoint.
pub fn sep_chain(i: usize, proto: &str, backend: Ipv4Addr) -> String {
    format!(
        "KUBE-SEP-{}",
        chain_suffix(&format!("{NAMESPACE}/{}:{proto}:{backend}", name(i)))
    )
}

/// The nat table kube-proxy's iptables mode would write for services
/// `0..n`, each port's endpoints `backends`, as `iptables-restore` input
/// (the whole table: it replaces what was there).
///
/// KUBE-SERVICES holds one rule per service port, service by service (UDP,
/// then TCP), in order, jumped to from PREROUTING (pods) and OUTPUT (the
/// node); KUBE-SVC-… picks an endpoint (`-m statistic --mode random
/// --probability 1/k` for the k-th last, as kube-proxy does, none for the
/// last or only one); KUBE-SEP-… DNATs to it and marks the endpoint's own
/// traffic to itself for masquerade (hairpin). `masquerade_all`
/// (kube-proxy's `--masquerade-all`): every service packet is marked and
/// masqueraded in POSTROUTING, so a reply can never bypass the node's
/// conntrack; needed only when the bridge's frames skip iptables
/// (br_netfilter off).
pub fn iptables_rules(n: usize, backends: &[Ipv4Addr], masquerade_all: bool) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for c in ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        let _ = writeln!(chains, ":{c} - [0:0]");
    }
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let mut per_service = String::new();
    for i in 0..n {
        let (vip, s) = (cluster_ip(i), name(i));
        for (proto, target) in [("udp", FLOOD_PORT), ("tcp", RR_PORT)] {
            let svc = svc_chain(i, proto);
            let _ = writeln!(chains, ":{svc} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {vip}/32 -p {proto} -m comment --comment \"{NAMESPACE}/{s}:{proto} cluster IP\" -m {proto} --dport {SERVICE_PORT} -j {svc}"
            );
            if masquerade_all {
                let _ = writeln!(
                    per_service,
                    "-A {svc} -d {vip}/32 -p {proto} -m comment --comment \"{NAMESPACE}/{s}:{proto} cluster IP\" -m {proto} --dport {SERVICE_PORT} -j KUBE-MARK-MASQ"
                );
            }
            for (k, b) in backends.iter().enumerate() {
                let sep = sep_chain(i, proto, *b);
                let _ = writeln!(chains, ":{sep} - [0:0]");
                let left = backends.len() - k;
                let pick = if left > 1 {
                    format!(
                        " -m statistic --mode random --probability {:.11}",
                        1.0 / left as f64
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    per_service,
                    "-A {svc} -m comment --comment \"{NAMESPACE}/{s}:{proto} -> {b}:{target}\"{pick} -j {sep}"
                );
                let _ = writeln!(
                    per_service,
                    "-A {sep} -s {b}/32 -m comment --comment \"{NAMESPACE}/{s}:{proto}\" -j KUBE-MARK-MASQ\n\
                     -A {sep} -p {proto} -m comment --comment \"{NAMESPACE}/{s}:{proto}\" -m {proto} -j DNAT --to-destination {b}:{target}"
                );
            }
        }
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         {chains}{rules}{per_service}COMMIT\n"
    )
}

/// The packet count of the DNAT rule in chain `sep` in `iptables-save -c`
/// output (`[packets:bytes] -A <sep> ... -j DNAT ...`); `None` if absent.
pub fn dnat_packets(save: &str, sep: &str) -> Option<u64> {
    save.lines().find_map(|l| {
        let (counts, rule) = l.strip_prefix('[')?.split_once("] ")?;
        let chain = rule.strip_prefix("-A ")?.split(' ').next()?;
        if chain != sep || !rule.contains("-j DNAT") {
            return None;
        }
        counts.split(':').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse_in_order_without_zero_or_duplicates() {
        assert_eq!(parse_counts("10,1000").unwrap(), vec![10, 1000]);
        assert_eq!(parse_counts("1000, 10,10").unwrap(), vec![1000, 10]);
        assert!(parse_counts("0").unwrap().is_empty());
        assert!(parse_counts("").unwrap().is_empty());
        assert!(parse_counts("ten")
            .unwrap_err()
            .to_string()
            .contains("\"ten\""));
        assert!(parse_counts("20001").is_err());
        assert_eq!(case("udp-64B", 1000), "udp-64B-svc1000");
    }

    #[test]
    fn cluster_ips_are_distinct_service_cidr_addresses() {
        assert_eq!(cluster_ip(0), Ipv4Addr::new(10, 96, 1, 10));
        assert_eq!(cluster_ip(199), Ipv4Addr::new(10, 96, 1, 209));
        assert_eq!(cluster_ip(200), Ipv4Addr::new(10, 96, 2, 10));
        let mut all: Vec<Ipv4Addr> = (0..MAX_SERVICES).map(cluster_ip).collect();
        assert!(all.iter().all(|a| {
            let o = a.octets();
            o[0] == 10 && (96..112).contains(&o[1]) && o[3] >= 10 && o[3] < 210
        }));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), MAX_SERVICES);
        assert_eq!(measured(10), 9);
    }

    #[test]
    fn yaml_is_one_service_and_slice_per_service_and_1000_fit_one_file() {
        let b = [Ipv4Addr::new(10, 99, 10, 3)];
        let files = yaml_files(0..2, &b, FILE_LIMIT);
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert_eq!(f.matches("kind: Service\n").count(), 2);
        assert_eq!(f.matches("kind: EndpointSlice\n").count(), 2);
        assert_eq!(f.matches("\n---\n").count(), 3);
        assert!(f.starts_with(
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc-0, namespace: perf}\n"
        ));
        assert!(f.contains("  clusterIP: 10.96.1.11\n"), "{f}");
        assert!(f.contains("- {name: udp, port: 80, protocol: UDP, targetPort: 9}"));
        assert!(f.contains("- {name: tcp, port: 80, protocol: TCP, targetPort: 5301}"));
        assert!(f.contains("labels: {kubernetes.io/service-name: svc-1}\n"));
        assert!(f.ends_with("- addresses: [10.99.10.3]\n  conditions: {ready: true}\n"));
        let big = yaml_files(0..1000, &b, FILE_LIMIT);
        assert_eq!(big.len(), 1, "1000 services: {} bytes", big[0].len());
        // A small limit splits at document boundaries and loses nothing.
        let small = yaml_files(10..30, &b, 2000);
        assert!(small.len() > 1 && small.iter().all(|f| f.len() <= 2000));
        assert!(small
            .iter()
            .all(|f| f.starts_with("apiVersion: v1\nkind: Service\n")));
        let joined = small.join("---\n");
        assert_eq!(joined, yaml_files(10..30, &b, FILE_LIMIT)[0]);
        assert!(yaml_files(5..5, &b, FILE_LIMIT).is_empty());
        assert_eq!(
            port_ids(1),
            vec![
                "perf/svc-0:80/UDP".to_string(),
                "perf/svc-0:80/TCP".to_string()
            ]
        );
    }

    #[test]
    fn the_generated_yaml_parses_as_the_objects_ferryd_expects() {
        let f = &yaml_files(0..3, &[Ipv4Addr::new(10, 99, 10, 3)], FILE_LIMIT)[0];
        let docs: Vec<serde_json::Value> = f
            .split("\n---\n")
            .map(|d| serde_yaml_ng::from_str(d).expect("a YAML document"))
            .collect();
        assert_eq!(docs.len(), 6);
        assert_eq!(docs[4]["spec"]["clusterIP"], "10.96.1.12");
        assert_eq!(docs[4]["spec"]["ports"][1]["targetPort"], 5301);
        assert_eq!(
            docs[5]["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-2"
        );
        assert_eq!(docs[5]["endpoints"][0]["conditions"]["ready"], true);
    }

    #[test]
    fn iptables_rules_are_kube_proxys_chains_in_order() {
        let b = Ipv4Addr::new(10, 99, 1, 3);
        let r = iptables_rules(3, &[b], false);
        assert!(r.starts_with("*nat\n:PREROUTING ACCEPT [0:0]\n") && r.ends_with("COMMIT\n"));
        let services: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(services.len(), 6);
        // The measured service's ports are the last rules KUBE-SERVICES holds.
        assert!(services[4].starts_with("-A KUBE-SERVICES -d 10.96.1.12/32 -p udp "));
        assert!(
            services[5].contains(" -m tcp --dport 80 -j KUBE-SVC-"),
            "{}",
            services[5]
        );
        assert!(services[5].ends_with(&svc_chain(2, "tcp")));
        let sep = sep_chain(2, "tcp", b);
        assert!(r.contains(&format!("-A {sep} -p tcp -m comment --comment \"perf/svc-2:tcp\" -m tcp -j DNAT --to-destination 10.99.1.3:5301\n")));
        assert!(r.contains(&format!(
            "-A {} -m comment --comment \"perf/svc-2:udp -> 10.99.1.3:9\" -j {}\n",
            svc_chain(2, "udp"),
            sep_chain(2, "udp", b)
        )));
        // One endpoint: no statistic; no masquerade-all mark in the service chains.
        assert!(!r.contains("statistic"));
        assert_eq!(
            r.matches("-j KUBE-MARK-MASQ").count(),
            6,
            "hairpin marks only"
        );
        // Every chain used is declared once, every declared chain is used.
        let declared: Vec<&str> = r
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut d = declared.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), declared.len());
        assert_eq!(declared.len(), 4 + 3 + 3 * 2 * 2);
        for c in &declared[4..] {
            assert!(r.contains(&format!("-A {c} ")), "{c} unused");
        }
        // Names are kube-proxy's shape: KUBE-SVC- + 16 base32 characters.
        let c = svc_chain(0, "udp");
        assert_eq!(c.len(), 9 + 16);
        assert!(c[9..]
            .bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_ne!(svc_chain(0, "udp"), svc_chain(0, "tcp"));
    }

    #[test]
    fn several_endpoints_are_picked_at_random_and_masquerade_all_marks_every_service() {
        let bs = [
            Ipv4Addr::new(10, 99, 1, 3),
            Ipv4Addr::new(10, 99, 1, 4),
            Ipv4Addr::new(10, 99, 1, 5),
        ];
        let r = iptables_rules(1, &bs, true);
        let svc = svc_chain(0, "tcp");
        let picks: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with(&format!("-A {svc} ")))
            .collect();
        assert_eq!(picks.len(), 4, "{picks:?}");
        assert!(picks[0].ends_with("-j KUBE-MARK-MASQ"));
        assert!(picks[1].contains("--probability 0.33333333333 -j KUBE-SEP-"));
        assert!(picks[2].contains("--probability 0.50000000000 -j KUBE-SEP-"));
        assert!(!picks[3].contains("statistic"));
        assert_eq!(r.matches("-j DNAT").count(), 6);
        // No service: only the hooks and the masquerade chains.
        let empty = iptables_rules(0, &bs, false);
        assert!(!empty.contains("KUBE-SVC") && empty.contains("-j MASQUERADE"));
    }

    #[test]
    fn dnat_counters_are_read_from_iptables_save() {
        let sep = sep_chain(9, "udp", Ipv4Addr::new(10, 99, 1, 3));
        let save = format!(
            "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [9:540]\n\
             [0:0] -A {sep} -s 10.99.1.3/32 -j KUBE-MARK-MASQ\n\
             [1234:74040] -A {sep} -p udp -m udp -j DNAT --to-destination 10.99.1.3:9\nCOMMIT\n"
        );
        assert_eq!(dnat_packets(&save, &sep), Some(1234));
        assert_eq!(dnat_packets(&save, "KUBE-SEP-OTHER"), None);
    }
}

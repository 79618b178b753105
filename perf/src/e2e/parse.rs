//! Parsers for what the tools print: ping, iperf3 -J, /proc/stat, /proc/net/dev.
//! Pure functions over text, unit-tested on captured outputs.

use serde_json::Value;

use super::error::{E2eError, Result};

/// Per-packet round-trip times (µs) from `ping` output lines `... time=0.045 ms`.
pub fn ping_times_us(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("time=")? + 5..];
            let num: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let v: f64 = num.parse().ok()?;
            let unit = rest[num.len()..].trim_start();
            Some(if unit.starts_with("us") || unit.starts_with("µs") {
                v
            } else if unit.starts_with('s') {
                v * 1e6
            } else {
                v * 1e3
            })
        })
        .collect()
}

/// What a `ping` run counted: packets transmitted, replies received, and
/// the `icmp_seq` of every reply (in the order printed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingCount {
    pub transmitted: u64,
    pub received: u64,
    pub reply_seqs: Vec<u64>,
}

impl PingCount {
    pub fn lost(&self) -> u64 {
        self.transmitted.saturating_sub(self.received)
    }

    /// The longest run of consecutive sequence numbers without a reply,
    /// among `1..=transmitted` (the outage, in packets).
    pub fn longest_gap(&self) -> u64 {
        let mut seen = self.reply_seqs.clone();
        seen.sort_unstable();
        seen.dedup();
        let mut prev = 0;
        let mut longest = 0;
        for s in seen.iter().copied().filter(|s| *s <= self.transmitted) {
            longest = longest.max(s.saturating_sub(prev + 1));
            prev = s;
        }
        longest.max(self.transmitted.saturating_sub(prev))
    }
}

/// Counts from `ping` output: the `N packets transmitted, M received` line
/// and the `icmp_seq=` of each `bytes from` reply line.
pub fn ping_count(text: &str) -> Result<PingCount> {
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| E2eError::parse("ping output", format!("no summary line in {text:?}")))?;
    let num_before = |word: &str| -> Option<u64> {
        let head = &summary[..summary.find(word)?];
        head.split([' ', ','])
            .rfind(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    let (Some(transmitted), Some(received)) =
        (num_before(" packets transmitted"), num_before(" received"))
    else {
        return Err(E2eError::parse("ping summary", summary));
    };
    let reply_seqs = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let rest = &l[l.find("icmp_seq=")? + 9..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    Ok(PingCount {
        transmitted,
        received,
        reply_seqs,
    })
}

/// What one iperf3 TCP client run measured (from its `-J` output).
#[derive(Debug, Clone, PartialEq)]
pub struct Iperf {
    /// Received by the server, bits per second.
    pub bits_per_second: f64,
    /// Bytes received by the server.
    pub bytes: f64,
    pub seconds: f64,
    pub retransmits: f64,
}

/// Parse iperf3's JSON report (client side, TCP).
pub fn iperf3_json(text: &str) -> Result<Iperf> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| E2eError::parse("iperf3 JSON", format!("{e} in {:.200}", text)))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(E2eError::parse(
            "iperf3 JSON",
            format!("iperf3 reported: {err}"),
        ));
    }
    let recv = &v["end"]["sum_received"];
    let num = |x: &Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| E2eError::parse("iperf3 JSON", format!("no number at {what}")))
    };
    Ok(Iperf {
        bits_per_second: num(&recv["bits_per_second"], "end.sum_received.bits_per_second")?,
        bytes: num(&recv["bytes"], "end.sum_received.bytes")?,
        seconds: num(&recv["seconds"], "end.sum_received.seconds")?,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
    })
}

/// Aggregate CPU time counters from the first line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    pub busy: u64,
    pub idle: u64,
    /// The softirq part of `busy` (the kernel's forwarding, on its paths).
    pub softirq: u64,
}

/// Parse the `cpu ` line of /proc/stat: busy = user+nice+system+irq+softirq,
/// idle = idle+iowait. Guest time is already inside user; steal (time the
/// hypervisor gave to someone else) is neither.
pub fn proc_stat(text: &str) -> Result<CpuTicks> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| E2eError::parse("/proc/stat", "no aggregate `cpu` line"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|e| E2eError::parse("/proc/stat", format!("{e} in {line:?}")))?;
    if f.len() < 7 {
        return Err(E2eError::parse(
            "/proc/stat",
            format!("too few fields in {line:?}"),
        ));
    }
    let g = |i: usize| f.get(i).copied().unwrap_or(0);
    Ok(CpuTicks {
        busy: g(0) + g(1) + g(2) + g(5) + g(6),
        idle: g(3) + g(4),
        softirq: g(6),
    })
}

/// Interface counters from /proc/net/dev.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DevCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// The counters of interface `ifname` in /proc/net/dev text.
pub fn proc_net_dev(text: &str, ifname: &str) -> Result<DevCounters> {
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != ifname {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|e| E2eError::parse("/proc/net/dev", format!("{e} in {line:?}")))?;
        if f.len() < 16 {
            return Err(E2eError::parse(
                "/proc/net/dev",
                format!("too few fields in {line:?}"),
            ));
        }
        return Ok(DevCounters {
            rx_bytes: f[0],
            rx_packets: f[1],
            rx_dropped: f[3],
            tx_bytes: f[8],
            tx_packets: f[9],
            tx_dropped: f[11],
        });
    }
    Err(E2eError::parse(
        "/proc/net/dev",
        format!("no interface {ifname}"),
    ))
}

/// The next hop for a destination, from `ip -j route get DST`: the gateway, or the
/// destination itself when it is on-link.
pub fn route_get_next_hop(json: &str) -> Result<String> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| E2eError::parse("ip -j route get", e.to_string()))?;
    let r = v
        .get(0)
        .ok_or_else(|| E2eError::parse("ip -j route get", "empty answer"))?;
    r.get("gateway")
        .or_else(|| r.get("dst"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| E2eError::parse("ip -j route get", format!("no gateway or dst in {r}")))
}

/// The link-layer address of the first reachable-ish entry of `ip -j neigh show`.
pub fn neigh_lladdr(json: &str) -> Result<String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| E2eError::parse("ip -j neigh", e.to_string()))?;
    v.as_array()
        .into_iter()
        .flatten()
        .find_map(|n| n.get("lladdr").and_then(Value::as_str))
        .map(str::to_string)
        .ok_or_else(|| E2eError::parse("ip -j neigh", format!("no lladdr in {v}")))
}

/// The MAC address of a link from `ip -j link show DEV`.
pub fn link_address(json: &str) -> Result<String> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| E2eError::parse("ip -j link", e.to_string()))?;
    v.get(0)
        .and_then(|l| l.get("address"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| E2eError::parse("ip -j link", format!("no address in {v}")))
}

/// The `mtu` of the first link of `ip -j link show` output.
pub fn link_mtu(json: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.get(0)?.get("mtu")?.as_u64()
}

/// CPU time of a process (all its threads) from `/proc/<pid>/stat`, in
/// clock ticks: utime + stime (fields 14 and 15, counted after the
/// parenthesized command name, which may hold spaces and parentheses).
pub fn pid_stat_ticks(text: &str) -> Result<u64> {
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| E2eError::parse("/proc/<pid>/stat", "no `(comm)`"))?;
    // After `)`: state is field 3, so utime (14) is the 12th of the rest.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        f.get(i).and_then(|x| x.parse().ok()).ok_or_else(|| {
            E2eError::parse("/proc/<pid>/stat", format!("field {} in {rest:?}", i + 3))
        })
    };
    Ok(num(11)? + num(12)?)
}

/// `aa:bb:cc:dd:ee:ff` to bytes.
pub fn mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(E2eError::parse("MAC address", text.to_string()));
    }
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| E2eError::parse("MAC address", text.to_string()))?;
    }
    Ok(m)
}

/// Whether a TCP socket listens on `port` in /proc/net/tcp text.
pub fn tcp_listening(text: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: &str = "PING 10.99.1.3 (10.99.1.3) 56(84) bytes of data.
64 bytes from 10.99.1.3: icmp_seq=1 ttl=64 time=0.061 ms
64 bytes from 10.99.1.3: icmp_seq=2 ttl=64 time=0.045 ms
64 bytes from 10.99.1.3: icmp_seq=3 ttl=64 time=1.20 ms
64 bytes from 10.99.1.3: icmp_seq=4 ttl=64 time=12 ms

--- 10.99.1.3 ping statistics ---
4 packets transmitted, 4 received, 0% packet loss, time 31ms
rtt min/avg/max/mdev = 0.045/3.326/12.000/5.000 ms
";

    #[test]
    fn ping_lines_give_microseconds() {
        let t = ping_times_us(PING);
        assert_eq!(t.len(), 4);
        let want = [61.0, 45.0, 1200.0, 12000.0];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn ping_counts_losses_and_the_longest_outage() {
        let c = ping_count(PING).unwrap();
        assert_eq!((c.transmitted, c.received, c.lost()), (4, 4, 0));
        assert_eq!(c.longest_gap(), 0);
        let text = "64 bytes from 10.0.0.3: icmp_seq=1 ttl=63 time=0.1 ms
64 bytes from 10.0.0.3: icmp_seq=2 ttl=63 time=0.1 ms
64 bytes from 10.0.0.3: icmp_seq=6 ttl=63 time=0.1 ms
64 bytes from 10.0.0.3: icmp_seq=8 ttl=63 time=0.1 ms

--- 10.0.0.3 ping statistics ---
10 packets transmitted, 4 received, 60% packet loss, time 90ms
";
        let c = ping_count(text).unwrap();
        assert_eq!((c.transmitted, c.received, c.lost()), (10, 4, 6));
        assert_eq!(c.reply_seqs, vec![1, 2, 6, 8]);
        // 3,4,5 missing (3), 7 (1), 9,10 at the end (2).
        assert_eq!(c.longest_gap(), 3);
        let none = "--- x ping statistics ---\n5 packets transmitted, 0 received, +5 errors, 100% packet loss\n";
        let c = ping_count(none).unwrap();
        assert_eq!((c.lost(), c.longest_gap()), (5, 5));
        assert!(ping_count("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn ping_without_replies_is_empty() {
        let t = ping_times_us("PING x\nFrom 10.0.0.1 icmp_seq=1 Destination Host Unreachable\n");
        assert!(t.is_empty());
    }

    const IPERF: &str = r#"{"start":{"connected":[]},"intervals":[],
      "end":{"sum_sent":{"start":0,"end":2.0,"seconds":2.0,"bytes":2500000000,
             "bits_per_second":1.0e10,"retransmits":3},
             "sum_received":{"start":0,"end":2.0004,"seconds":2.0004,"bytes":2490000000,
             "bits_per_second":9.958e9},
             "cpu_utilization_percent":{"host_total":50.0}}}"#;

    #[test]
    fn iperf3_json_takes_the_receiver_side() {
        let r = iperf3_json(IPERF).unwrap();
        assert_eq!(r.bits_per_second, 9.958e9);
        assert_eq!(r.bytes, 2.49e9);
        assert_eq!(r.seconds, 2.0004);
        assert_eq!(r.retransmits, 3.0);
    }

    #[test]
    fn iperf3_error_and_garbage_are_errors() {
        let e = iperf3_json(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("Connection refused"), "{e}");
        assert!(iperf3_json("not json").is_err());
        assert!(iperf3_json(r#"{"end":{"sum_received":{}}}"#).is_err());
    }

    #[test]
    fn proc_stat_busy_and_idle() {
        let t = "cpu  100 5 50 1000 20 3 7 1 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n";
        let c = proc_stat(t).unwrap();
        assert_eq!(
            c,
            CpuTicks {
                busy: 100 + 5 + 50 + 3 + 7,
                idle: 1020,
                softirq: 7,
            }
        );
        assert!(proc_stat("intr 1\n").is_err());
        assert!(proc_stat("cpu  a b c d e f g\n").is_err());
    }

    #[test]
    fn process_cpu_ticks_survive_odd_command_names() {
        let t = "4242 (ferry dp (w0)) S 1 4242 4242 0 -1 4194560 100 0 0 0 700 300 0 0 20 0 3 0 5 1 1\n";
        assert_eq!(pid_stat_ticks(t).unwrap(), 1000);
        assert!(pid_stat_ticks("4242 (x) S 1").is_err());
        assert!(pid_stat_ticks("no parens").is_err());
    }

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 6000000  100000    0    7    0     0          0         0     4200      42    0    1    0     0       0          0
";

    #[test]
    fn net_dev_counters_of_one_interface() {
        let c = proc_net_dev(DEV, "eth0").unwrap();
        assert_eq!(c.rx_bytes, 6_000_000);
        assert_eq!(c.rx_packets, 100_000);
        assert_eq!(c.rx_dropped, 7);
        assert_eq!(c.tx_bytes, 4200);
        assert_eq!(c.tx_packets, 42);
        assert_eq!(c.tx_dropped, 1);
        assert!(proc_net_dev(DEV, "eth1").is_err());
    }

    #[test]
    fn next_hop_neighbour_and_link() {
        let via = r#"[{"dst":"10.99.2.3","gateway":"10.99.2.1","dev":"eth0","prefsrc":"10.99.2.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(route_get_next_hop(via).unwrap(), "10.99.2.1");
        let direct = r#"[{"dst":"10.99.1.3","dev":"eth0","prefsrc":"10.99.1.2","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(route_get_next_hop(direct).unwrap(), "10.99.1.3");
        assert!(route_get_next_hop("[]").is_err());
        let n = r#"[{"dst":"10.99.1.3","dev":"eth0","lladdr":"0a:58:0a:63:01:03","state":["REACHABLE"]}]"#;
        assert_eq!(neigh_lladdr(n).unwrap(), "0a:58:0a:63:01:03");
        assert!(neigh_lladdr(r#"[{"dst":"10.99.1.3","dev":"eth0","state":["FAILED"]}]"#).is_err());
        let l = r#"[{"ifindex":2,"ifname":"eth0","mtu":1450,"address":"ee:ee:ee:ee:ee:ee"}]"#;
        assert_eq!(link_address(l).unwrap(), "ee:ee:ee:ee:ee:ee");
        assert_eq!(link_mtu(l), Some(1450));
        assert_eq!(link_mtu("[]"), None);
        assert_eq!(
            mac("0a:58:0a:63:01:03").unwrap(),
            [0x0a, 0x58, 0x0a, 0x63, 1, 3]
        );
        assert!(mac("0a:58").is_err());
        assert!(mac("zz:58:0a:63:01:03").is_err());
    }

    #[test]
    fn tcp_listen_detection() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0300630A:1452 0200630A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
";
        assert!(tcp_listening(t, 5201));
        assert!(!tcp_listening(t, 5202));
    }
}

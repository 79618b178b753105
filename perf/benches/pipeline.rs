//! Micro-benchmarks of the pure dataplane core: the pipeline on batches of
//! frames (plain routing, and through a ClusterIP with the connection
//! table, and between pods policed by 100-rule NetworkPolicies), the
//! forward path after it (copy into the egress frame, checksum
//! completion, TCP segmentation of a tap's GSO frame), endpoint lookups by
//! table size, and the cost of publishing a new table while a reader loads
//! snapshots.
//!
//! Run: `cargo bench -p perf --bench pipeline` (add `-- --quick` for a
//! short run). Throughput is per frame / per lookup.
//!
//! Frames are rewritten in place by the pipeline, so before every batch the
//! first 64 bytes of each frame (all headers the pipeline touches) are
//! restored from a template; that 64-byte copy per frame is included in the
//! figures (a real RX ring costs at least as much to fill).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use ferry_api::table::{
    Backend, EndpointPolicy, L4Proto, PolicyPeer, PolicyRule, PortRange, ServicePort,
};
use ferry_api::table::{Endpoint, HostPort, NodeSettings};
use ferry_api::MacAddr;
use ferry_dataplane::core::conntrack::Conntrack;
use ferry_dataplane::core::offload::{self, CsumState, EgressCaps, Offload};
use ferry_dataplane::core::pipeline::{process_batch, DropReason, Frame, Verdict};
use ferry_dataplane::core::service::ServiceTable;
use ferry_dataplane::core::tables::{Policies, PortId, Services, TableHandle, Tables};

const CHUNK: usize = 2048;
const HEADERS: usize = 64;
const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);

fn node() -> NodeSettings {
    NodeSettings {
        gateways: vec![GW.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: vec!["10.88.0.0/16".parse().expect("cidr")],
        host_port: Some(HostPort {
            ifname: "ferry0dp".into(),
            kernel_ifname: "ferry0".into(),
            kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }),
        mtu: 1500,
        uplink: None,
    }
}

/// The i-th endpoint: 10.88.0.2 upwards, port i + 1.
fn endpoint(i: u32) -> Endpoint {
    let ip = Ipv4Addr::from(u32::from(POD_A) + i);
    Endpoint::veth(format!("pod{i}/eth0"), format!("fy{}", i + 1), ip)
}

fn port_of(name: &str) -> Option<PortId> {
    if name == "ferry0dp" {
        return Some(0);
    }
    name.strip_prefix("fy")?.parse().ok()
}

fn tables(generation: u64, endpoints: u32) -> Tables {
    let eps: Vec<Endpoint> = (0..endpoints).map(endpoint).collect();
    Tables::build(generation, &node(), &eps, &[], port_of)
}

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(MacAddr::for_pod(POD_A).0, MacAddr::ROUTER.0)
}

fn tcp(dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let b = eth()
        .ipv4(POD_A.octets(), dst.octets(), 64)
        .tcp(40000, 5201, 1, 64240)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, &payload).expect("build tcp frame");
    v
}

/// The TCP frame as a veth pod with tx offload sends it: the checksum field
/// holds the folded pseudo-header sum.
fn tcp_partial(dst: Ipv4Addr, payload_len: usize) -> Vec<u8> {
    let mut f = tcp(dst, payload_len);
    let l4_len = (f.len() - 34) as u32;
    let mut s: u32 = 6 + l4_len;
    for c in f[26..34].chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    f[50..52].copy_from_slice(&(s as u16).to_be_bytes());
    f
}

fn echo_to_gateway() -> Vec<u8> {
    let b = eth()
        .ipv4(POD_A.octets(), GW.octets(), 64)
        .icmpv4_echo_request(1, 1);
    let mut v = Vec::new();
    b.write(&mut v, &[0x5a; 56]).expect("build icmp frame");
    v
}

fn arp_for_gateway() -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&MacAddr::for_pod(POD_A).0);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    v.extend_from_slice(&MacAddr::for_pod(POD_A).0);
    v.extend_from_slice(&POD_A.octets());
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&GW.octets());
    v.resize(60, 0);
    v
}

/// One pipeline case: a template frame, its ingress port, and the verdict
/// it must get (checked once before measuring).
struct Case {
    name: &'static str,
    template: Vec<u8>,
    expect: Verdict,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "routed_tcp_64B",
            template: tcp(POD_B, 64),
            expect: Verdict::Tx(2),
        },
        Case {
            name: "routed_tcp_1400B",
            template: tcp(POD_B, 1400),
            expect: Verdict::Tx(2),
        },
        Case {
            name: "routed_tcp_1400B_partial_csum",
            template: tcp_partial(POD_B, 1400),
            expect: Verdict::Tx(2),
        },
        Case {
            name: "arp_for_gateway",
            template: arp_for_gateway(),
            expect: Verdict::Reply,
        },
        Case {
            name: "icmp_echo_gateway",
            template: echo_to_gateway(),
            expect: Verdict::Reply,
        },
        Case {
            name: "drop_no_endpoint",
            template: tcp(Ipv4Addr::new(10, 88, 200, 1), 64),
            expect: Verdict::Drop(DropReason::NoEndpoint),
        },
    ]
}

/// Run `N`-frame batches of `case` on `t`.
fn bench_batch<const N: usize>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    t: &Tables,
    case: &Case,
) {
    let len = case.template.len();
    let mut bufs: Vec<Vec<u8>> = (0..N)
        .map(|_| {
            let mut b = vec![0u8; CHUNK];
            b[..len].copy_from_slice(&case.template);
            b
        })
        .collect();
    let head = HEADERS.min(len);
    let mut verdicts = [Verdict::Drop(DropReason::Malformed); N];

    // Check the case does what its name says before timing it.
    {
        let mut frames: Vec<Frame<'_>> = bufs.iter_mut().map(|b| Frame::new(1, b, len)).collect();
        process_batch(t, 0, &mut frames, &mut verdicts);
        assert!(
            verdicts.iter().all(|v| *v == case.expect),
            "{}: {:?}",
            case.name,
            verdicts[0]
        );
    }

    c.throughput(Throughput::Elements(N as u64));
    c.bench_with_input(BenchmarkId::new(case.name, N), &N, |b, _| {
        b.iter(|| {
            for buf in bufs.iter_mut() {
                buf[..head].copy_from_slice(&case.template[..head]);
            }
            let mut it = bufs.iter_mut();
            let mut frames: [Frame<'_>; N] = std::array::from_fn(|_| {
                let buf = it.next().expect("N buffers");
                Frame::new(1, buf, len)
            });
            process_batch(black_box(t), 0, &mut frames, &mut verdicts);
            black_box(&verdicts);
        })
    });
}

fn pipeline(c: &mut Criterion) {
    let t = tables(1, 16);
    let mut g = c.benchmark_group("pipeline");
    for case in cases() {
        bench_batch::<1>(&mut g, &t, &case);
        bench_batch::<32>(&mut g, &t, &case);
        bench_batch::<64>(&mut g, &t, &case);
    }
    g.finish();
}

/// The pipeline on frames to a ClusterIP (a service port with 16
/// backends, one of 1000 service ports): the first batch makes the flows,
/// the timed ones find them in the connection table and translate.
fn service(c: &mut Criterion) {
    let ports: Vec<ServicePort> = (0..1000u32)
        .map(|i| ServicePort {
            id: format!("bench/svc{i}:80/TCP"),
            vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i).into(),
            port: 80,
            protocol: L4Proto::Tcp,
            backends: (1..17)
                .map(|b| Backend {
                    ip: Ipv4Addr::from(u32::from(POD_A) + b).into(),
                    port: 8080,
                })
                .collect(),
            affinity_timeout_s: None,
            seed: 1,
            node_port: None,
            node_local: None,
        })
        .collect();
    let t = tables(1, 32).with_services(Some(Services {
        table: Arc::new(ServiceTable::build(&ports)),
        conntrack: Arc::new(Conntrack::new(1 << 16)),
    }));
    let vip = Ipv4Addr::new(10, 96, 3, 231);
    let mut g = c.benchmark_group("service");
    for (name, payload) in [("clusterip_tcp_64B", 64), ("clusterip_tcp_1400B", 1400)] {
        let template = tcp(vip, payload);
        let expect = {
            let mut b = template.clone();
            b.resize(CHUNK, 0);
            let mut f = [Frame::new(1, &mut b, template.len())];
            let mut v = [Verdict::Drop(DropReason::Malformed)];
            process_batch(&t, 0, &mut f, &mut v);
            v[0]
        };
        assert!(matches!(expect, Verdict::Tx(_)), "{name}: {expect:?}");
        let case = Case {
            name,
            template,
            expect,
        };
        bench_batch::<64>(&mut g, &t, &case);
    }
    g.finish();
}

/// `n` rules, the last admitting 10.88.0.0/16 on TCP 5201 (the bench
/// frames' flow); the others a /32 of 198.18.0.0/15 each, to a UDP port.
fn rules(n: u32) -> Vec<PolicyRule> {
    let rule = |cidr: &str, protocol: u8, port: u16| PolicyRule {
        peers: Some(vec![PolicyPeer {
            cidr: cidr.parse().expect("cidr"),
            except: vec![],
        }]),
        ports: vec![PortRange {
            protocol,
            first: port,
            last: port,
        }],
    };
    let mut v: Vec<PolicyRule> = (1..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
            rule(&format!("{ip}/32"), 17, 1000 + i as u16)
        })
        .collect();
    v.push(rule("10.88.0.0/16", 6, 5201));
    v
}

/// Pod to pod with every endpoint policed both ways by 100 rules (the
/// one admitting the flow last), beside the same frames unpoliced: the
/// first batch judges the flow against the rules and tracks it, the timed
/// ones find it in the connection table; and the rule scan a new flow
/// pays, alone.
fn policy(c: &mut Criterion) {
    const RULES: u32 = 100;
    let policy = Arc::new(EndpointPolicy {
        endpoint: String::new(),
        ingress: Some(rules(RULES)),
        egress: Some(rules(RULES)),
    });
    let policed = tables(1, 32).with_policy(Some(Policies::new(
        (1..=32).map(|port| (port, Arc::clone(&policy))),
        vec![GW.into()],
        Arc::new(Conntrack::new(1 << 16)),
    )));
    let plain = tables(1, 32);
    let mut g = c.benchmark_group("policy");
    for (name, t) in [
        ("unpoliced_tcp_64B", &plain),
        ("policed_100_rules_established_tcp_64B", &policed),
    ] {
        let case = Case {
            name,
            template: tcp(POD_B, 64),
            expect: Verdict::Tx(2),
        };
        bench_batch::<64>(&mut g, t, &case);
    }
    let table = rules(RULES);
    let peer = std::net::IpAddr::V4(POD_A);
    assert!(table.iter().position(|r| r.allows(&peer, 6, Some(5201))) == Some(RULES as usize - 1));
    g.throughput(Throughput::Elements(1));
    g.bench_function("new_flow_rule_scan_100_rules", |b| {
        b.iter(|| {
            black_box(&table)
                .iter()
                .any(|r| r.allows(black_box(&peer), 6, Some(5201)))
        })
    });
    g.finish();
}

/// What the worker does with a forwarded frame, after the pipeline: the
/// copy into the egress port's frame, a partial checksum completed for a
/// port without offloads, and a tap's 64 KiB TCP GSO frame cut into
/// MSS-sized segments with full checksums.
fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    for payload in [64usize, 1400] {
        let frame = tcp(POD_B, payload);
        let mut egress = vec![0u8; CHUNK];
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("copy_to_egress_frame", frame.len()), |b| {
            b.iter(|| {
                egress[..frame.len()].copy_from_slice(black_box(&frame));
                black_box(&egress);
            })
        });
        let partial = tcp_partial(POD_B, payload);
        let csum = CsumState::Partial {
            start: 34,
            offset: 16,
        };
        g.bench_function(
            BenchmarkId::new("complete_partial_csum", partial.len()),
            |b| {
                b.iter_batched(
                    || partial.clone(),
                    |mut f| {
                        let r =
                            offload::finish(&mut f, csum, &Offload::NONE, EgressCaps::default());
                        black_box((r, f))
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    // A tap's GSO frame: 44 segments of 1448 bytes.
    let gso = tcp_partial(POD_B, 44 * 1448);
    let hdr = Offload {
        flags: offload::F_NEEDS_CSUM,
        gso_type: offload::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let plan = offload::plan_tcp(&gso, &hdr).expect("a GSO plan");
    assert_eq!(plan.count, 44);
    let mut seg = vec![0u8; CHUNK];
    g.throughput(Throughput::Elements(plan.count as u64));
    g.bench_function("segment_64KiB_gso_into_1448B", |b| {
        b.iter(|| {
            for i in 0..plan.count {
                black_box(offload::write_tcp_segment(
                    black_box(&gso),
                    &plan,
                    i,
                    &mut seg,
                ));
            }
        })
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    const LOOKUPS: usize = 1024;
    let mut g = c.benchmark_group("endpoint_lookup");
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    for size in [10u32, 1000, 100_000] {
        let t = tables(1, size);
        // Addresses of existing endpoints in a scattered order (an LCG), so
        // the large tables are not walked cache-friendly.
        let mut x: u32 = 12345;
        let ips: Vec<Ipv4Addr> = (0..LOOKUPS)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                Ipv4Addr::from(u32::from(POD_A) + x % size)
            })
            .collect();
        assert!(ips.iter().all(|ip| t.endpoint(*ip).is_some()));
        g.bench_with_input(BenchmarkId::from_parameter(size), &ips, |b, ips| {
            b.iter(|| {
                let mut ports = 0u32;
                for ip in ips {
                    if let Some(e) = t.endpoint(black_box(*ip)) {
                        ports = ports.wrapping_add(e.port);
                    }
                }
                black_box(ports)
            })
        });
    }
    g.finish();
}

fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("table_publish");
    g.throughput(Throughput::Elements(1));
    for size in [10u32, 1000] {
        let handle = Arc::new(TableHandle::new(tables(0, size)));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (handle, stop) = (Arc::clone(&handle), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut loads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let snapshot = handle.load();
                    black_box(snapshot.generation);
                    loads += 1;
                }
                loads
            })
        };
        let mut generation = 0;
        g.bench_function(
            BenchmarkId::new("publish_prebuilt_with_1_reader", size),
            |b| {
                b.iter_batched(
                    || {
                        generation += 1;
                        tables(generation, size)
                    },
                    |t| handle.publish(t),
                    BatchSize::SmallInput,
                )
            },
        );
        g.bench_function(
            BenchmarkId::new("build_and_publish_with_1_reader", size),
            |b| {
                b.iter(|| {
                    generation += 1;
                    handle.publish(tables(generation, size));
                })
            },
        );
        stop.store(true, Ordering::Relaxed);
        // (With a name filter the benches above may not run at all, so the
        // reader may not have loaded anything: nothing to assert here.)
        let loads = reader.join().expect("reader thread");
        black_box(loads);
    }
    g.finish();
}

fn config() -> Criterion {
    // No HTML plots: figures are read from the terminal, and criterion's
    // plotter panics on the degenerate samples of a `--quick` run.
    Criterion::default()
        .without_plots()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = pipeline, service, policy, forward, lookup, publish
}
criterion_main!(benches);

//! Network policy through the pipeline, on the fixture node: pods 1-3
//! (10.88.0.2-4 on ports 1-3), the gateway 10.88.0.1 on the host port.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use etherparse::PacketBuilder;
use ferry_api::table::{
    Backend, EndpointPolicy, L4Proto, PolicyPeer, PolicyRule, PortRange, ServicePort,
};

use super::fixtures::*;
use super::{process_frame_at, DropReason, Frame, Verdict};
use crate::core::conntrack::Conntrack;
use crate::core::service::ServiceTable;
use crate::core::tables::{Policies, PortId, Services, Tables};

fn pod(i: usize) -> Ipv4Addr {
    PODS[i].1
}

fn port_of_pod(i: usize) -> PortId {
    PODS[i].0
}

fn host(ip: Ipv4Addr) -> PolicyPeer {
    PolicyPeer {
        cidr: IpAddr::V4(ip).into(),
        except: vec![],
    }
}

fn tcp_ports(first: u16, last: u16) -> PortRange {
    PortRange {
        protocol: 6,
        first,
        last,
    }
}

/// The fixture tables with `policies` on pods `(index, policy)`.
fn policed(policies: &[(usize, EndpointPolicy)], ct: &Arc<Conntrack>) -> Tables {
    let by_port = policies
        .iter()
        .map(|(i, p)| (port_of_pod(*i), Arc::new(p.clone())));
    tables().with_policy(Some(Policies::new(
        by_port,
        vec![GW.into()],
        Arc::clone(ct),
    )))
}

fn ingress(rules: Vec<PolicyRule>) -> EndpointPolicy {
    EndpointPolicy {
        endpoint: String::new(),
        ingress: Some(rules),
        egress: None,
    }
}

fn egress(rules: Vec<PolicyRule>) -> EndpointPolicy {
    EndpointPolicy {
        endpoint: String::new(),
        ingress: None,
        egress: Some(rules),
    }
}

fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, syn: bool) -> Vec<u8> {
    super::nat_tests::tcp(src, sport, dst, dport, syn, b"x")
}

fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    super::nat_tests::udp(src, sport, dst, dport, b"q")
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac_of(src), ROUTER).ipv4(src.octets(), dst.octets(), 64);
    let b = if reply {
        b.icmpv4_echo_reply(7, 1)
    } else {
        b.icmpv4_echo_request(7, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

fn verdict(t: &Tables, port: PortId, frame: &[u8]) -> Verdict {
    let mut buf = vec![0u8; CHUNK];
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::new(port, &mut buf, frame.len());
    process_frame_at(t, 1, &mut f)
}

fn denied_in(port: PortId) -> Verdict {
    Verdict::Denied {
        port,
        reason: DropReason::PolicyDeniedIngress,
    }
}

fn denied_out(port: PortId) -> Verdict {
    Verdict::Denied {
        port,
        reason: DropReason::PolicyDeniedEgress,
    }
}

#[test]
fn deny_all_ingress_drops_pods_but_not_the_node_and_counts_on_the_policed_pod() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = policed(&[(1, ingress(vec![]))], &ct);
    let (p0, p1, p2) = (port_of_pod(0), port_of_pod(1), port_of_pod(2));
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, pod(1), 80, true)),
        denied_in(p1)
    );
    assert_eq!(
        verdict(&t, p0, &udp(pod(0), 4000, pod(1), 53)),
        denied_in(p1)
    );
    // Unpoliced pods are untouched; the node (its gateway) always gets in.
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, pod(2), 80, true)),
        Verdict::Tx(p2)
    );
    assert_eq!(
        verdict(&t, HOST_PORT, &tcp(GW, 4000, pod(1), 80, true)),
        Verdict::Tx(p1)
    );
    // The policed pod itself may still send (egress is not isolated), and
    // the replies of what it sends come back.
    assert_eq!(
        verdict(&t, p1, &tcp(pod(1), 5000, pod(0), 80, true)),
        Verdict::Tx(p0)
    );
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 80, pod(1), 5000, false)),
        Verdict::Tx(p1)
    );
}

#[test]
fn ingress_rules_match_peers_protocols_and_port_ranges() {
    let ct = Arc::new(Conntrack::new(1024));
    let rule = PolicyRule {
        peers: Some(vec![host(pod(0))]),
        ports: vec![tcp_ports(80, 80), tcp_ports(8000, 8099)],
    };
    let t = policed(&[(1, ingress(vec![rule]))], &ct);
    let (p0, p1, p2) = (port_of_pod(0), port_of_pod(1), port_of_pod(2));
    for (from, src, dport, want) in [
        (p0, pod(0), 80, Verdict::Tx(p1)),
        (p0, pod(0), 8000, Verdict::Tx(p1)),
        (p0, pod(0), 8099, Verdict::Tx(p1)),
        (p0, pod(0), 8100, denied_in(p1)),
        (p0, pod(0), 81, denied_in(p1)),
        (p2, pod(2), 80, denied_in(p1)),
    ] {
        let v = verdict(&t, from, &tcp(src, 40000 + dport, pod(1), dport, true));
        assert_eq!(v, want, "{src} -> :{dport}");
    }
    // The rule names TCP: UDP to the same port is denied.
    assert_eq!(
        verdict(&t, p0, &udp(pod(0), 4000, pod(1), 80)),
        denied_in(p1)
    );
}

#[test]
fn egress_ip_blocks_with_exceptions() {
    let ct = Arc::new(Conntrack::new(1024));
    let rule = PolicyRule {
        peers: Some(vec![PolicyPeer {
            cidr: "10.88.0.0/24".parse().unwrap(),
            except: vec!["10.88.0.4/32".parse().unwrap()],
        }]),
        ports: vec![],
    };
    let t = policed(&[(0, egress(vec![rule]))], &ct);
    let (p0, p1) = (port_of_pod(0), port_of_pod(1));
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, pod(1), 80, true)),
        Verdict::Tx(p1)
    );
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, pod(2), 80, true)),
        denied_out(p0)
    );
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, OUTSIDE, 80, true)),
        denied_out(p0)
    );
}

#[test]
fn replies_of_allowed_flows_pass_the_other_directions_rules() {
    let ct = Arc::new(Conntrack::new(1024));
    // Pod 2 takes anything in but may send nothing; pod 1 may send only
    // to pod 2 and takes nothing in.
    let to_pod2 = PolicyRule {
        peers: Some(vec![host(pod(1))]),
        ports: vec![],
    };
    let t = policed(
        &[
            (1, egress(vec![])),
            (
                0,
                EndpointPolicy {
                    endpoint: String::new(),
                    ingress: Some(vec![]),
                    egress: Some(vec![to_pod2]),
                },
            ),
        ],
        &ct,
    );
    let (p0, p1) = (port_of_pod(0), port_of_pod(1));
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, pod(1), 80, true)),
        Verdict::Tx(p1)
    );
    assert_eq!(
        verdict(&t, p1, &tcp(pod(1), 80, pod(0), 4000, false)),
        Verdict::Tx(p0)
    );
    assert_eq!(
        verdict(&t, p0, &echo(pod(0), pod(1), false)),
        Verdict::Tx(p1)
    );
    assert_eq!(
        verdict(&t, p1, &echo(pod(1), pod(0), true)),
        Verdict::Tx(p0)
    );
    // What pod 2 starts itself is its egress', denied.
    assert_eq!(
        verdict(&t, p1, &tcp(pod(1), 5000, pod(0), 4000, true)),
        denied_out(p1)
    );
    assert_eq!(
        verdict(&t, p1, &echo(pod(1), pod(0), false)),
        denied_out(p1)
    );
    assert_eq!(ct.stats().entries, 4);
}

#[test]
fn a_new_policy_applies_to_new_flows_and_established_ones_run_on() {
    let ct = Arc::new(Conntrack::new(1024));
    let open = policed(&[(1, egress(vec![]))], &ct);
    let (p0, p1) = (port_of_pod(0), port_of_pod(1));
    assert_eq!(
        verdict(&open, p0, &tcp(pod(0), 4000, pod(1), 80, true)),
        Verdict::Tx(p1)
    );
    let closed = policed(&[(1, ingress(vec![]))], &ct);
    assert_eq!(
        verdict(&closed, p0, &tcp(pod(0), 4000, pod(1), 80, false)),
        Verdict::Tx(p1)
    );
    assert_eq!(
        verdict(&closed, p0, &tcp(pod(0), 4001, pod(1), 80, true)),
        denied_in(p1)
    );
}

#[test]
fn service_flows_are_judged_on_the_backend_and_their_replies_pass() {
    let ct = Arc::new(Conntrack::new(1024));
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let svc = ServicePort {
        id: "default/web:80/TCP".into(),
        vip: vip.into(),
        port: 80,
        protocol: L4Proto::Tcp,
        backends: vec![Backend {
            ip: pod(1).into(),
            port: 8080,
        }],
        affinity_timeout_s: None,
        seed: 7,
        node_port: None,
        node_local: None,
    };
    // The backend takes port 8080 from pod 1 only, and sends nothing of
    // its own.
    let rule = PolicyRule {
        peers: Some(vec![host(pod(0))]),
        ports: vec![tcp_ports(8080, 8080)],
    };
    let policy = EndpointPolicy {
        endpoint: String::new(),
        ingress: Some(vec![rule]),
        egress: Some(vec![]),
    };
    let t = policed(&[(1, policy)], &ct).with_services(Some(Services {
        table: Arc::new(ServiceTable::build(&[svc])),
        conntrack: Arc::clone(&ct),
    }));
    let (p0, p1, p2) = (port_of_pod(0), port_of_pod(1), port_of_pod(2));
    assert_eq!(
        verdict(&t, p0, &tcp(pod(0), 4000, vip, 80, true)),
        Verdict::Tx(p1)
    );
    assert_eq!(
        verdict(&t, p1, &tcp(pod(1), 8080, pod(0), 4000, false)),
        Verdict::Tx(p0)
    );
    assert_eq!(
        verdict(&t, p2, &tcp(pod(2), 4000, vip, 80, true)),
        denied_in(p1)
    );
}

#[test]
fn a_full_table_refuses_new_policed_flows() {
    let ct = Arc::new(Conntrack::new(1));
    let t = policed(&[(1, egress(vec![]))], &ct);
    let (p0, p1) = (port_of_pod(0), port_of_pod(1));
    let verdicts: Vec<Verdict> = (0..200)
        .map(|i| verdict(&t, p0, &tcp(pod(0), 4000 + i, pod(1), 80, true)))
        .collect();
    assert!(verdicts.contains(&Verdict::Tx(p1)));
    assert!(verdicts.contains(&Verdict::Drop(DropReason::CtFull)));
}

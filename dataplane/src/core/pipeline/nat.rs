//! Service translation (kube-proxy's job, done where ferry's traffic is):
//! a pod's or the node's packet to a ClusterIP port gets a backend's
//! address and port as its destination, the backend's replies get the
//! ClusterIP back as their source. The connection table
//! ([`crate::core::conntrack`]) holds both directions of every flow, so
//! whichever worker a packet arrives on, and on whichever node the
//! backend is, the same translation applies; a flow keeps its backend
//! until that backend leaves the service.
//!
//! A pod reaching a service whose chosen backend is itself (hairpin) has
//! its source rewritten to the gateway too, as kube-proxy masquerades it:
//! otherwise the pod would answer itself over its loopback.
//!
//! A service port without backends is refused as kube-proxy refuses it:
//! TCP with a reset, UDP with ICMP port unreachable, from the ClusterIP.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{checksum, classify_l4_checksum, icmp_error, wire, Offending, ReplyTo, Verdict};
use crate::core::conntrack::{Endpoint, FlowKey, Translation, PROTO_AFFINITY};
use crate::core::offload::CsumState;
use crate::core::pipeline::DropReason;
use crate::core::service::addr_key;
use crate::core::tables::Services;
use wire::{Ipv4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// What the service stage decided.
pub(super) enum Outcome {
    /// Not a service flow, or translated in place: route it on.
    Pass,
    /// A reply of a service flow, translated back in place: route it on.
    Reply,
    /// To a service port without backends: refuse it.
    Reject,
    /// A reply of a NodePort flow, translated: it leaves by the uplink to
    /// this MAC (where the request came from), not by the routes.
    ToUplink([u8; 6]),
}

fn v4(key: u128) -> Option<Ipv4Addr> {
    Ipv6Addr::from(key).to_ipv4_mapped()
}

/// A packet as the service stage sees it, in either family.
pub(super) trait Flow {
    /// IPv6 (its addresses are 16 bytes in the pseudo-header).
    const V6: bool;
    /// Protocol and addresses (as conntrack keys them), and whether the
    /// packet is unfragmented (its L4 header is there to read).
    fn header(&self) -> (u8, u128, u128, bool);
    /// Protocol and addresses, if the packet can be translated:
    /// unfragmented (TCP or UDP is the caller's check).
    fn parts(&self) -> Option<(u8, u128, u128)> {
        let (proto, src, dst, whole) = self.header();
        whole.then_some((proto, src, dst))
    }
    /// The TCP/UDP header and payload.
    fn l4(&self) -> &[u8];
    fn l4_mut(&mut self) -> &mut [u8];
    /// Find out the checksum state if it is not known.
    fn classify(&mut self, csum: &mut CsumState) -> Result<(), DropReason>;
    /// Rewrite the addresses (keys of this family).
    fn set_addresses(&mut self, src: u128, dst: u128) -> Result<(), DropReason>;
}

impl Flow for Ipv4<'_> {
    const V6: bool = false;
    fn header(&self) -> (u8, u128, u128, bool) {
        let src = addr_key(self.src().into());
        let dst = addr_key(self.dst().into());
        (self.protocol(), src, dst, self.is_unfragmented())
    }
    fn l4(&self) -> &[u8] {
        self.payload()
    }
    fn l4_mut(&mut self) -> &mut [u8] {
        self.payload_mut()
    }
    fn classify(&mut self, csum: &mut CsumState) -> Result<(), DropReason> {
        classify_l4_checksum(self, csum)
    }
    fn set_addresses(&mut self, src: u128, dst: u128) -> Result<(), DropReason> {
        let (Some(src), Some(dst)) = (v4(src), v4(dst)) else {
            // A backend of the other family: nothing ferryd sends.
            return Err(DropReason::NoRoute);
        };
        Ipv4::set_addresses(self, src, dst);
        Ok(())
    }
}

/// Translate the packet if it belongs to a service flow (a new one to a
/// ClusterIP port, or one the table knows, either way). `hairpin` is the
/// source a pod's flow to itself gets (the gateway of its family).
/// `outside`: the packet came from the uplink to the node's address (a
/// NodePort), from this MAC; its flow is translated to the gateway as
/// source too, so the backend's replies come back through this node.
pub(super) fn translate<F: Flow>(
    svc: &Services,
    now: u64,
    ip: &mut F,
    csum: &mut CsumState,
    (hairpin, outside): (u128, Option<[u8; 6]>),
) -> Result<Outcome, DropReason> {
    let Some((proto, src, dst)) = ip.parts() else {
        return Ok(Outcome::Pass);
    };
    let min = match proto {
        wire::IP_PROTO_TCP => wire::TCP_MIN_HDR_LEN,
        wire::IP_PROTO_UDP => wire::UDP_HDR_LEN,
        _ => return Ok(Outcome::Pass),
    };
    let l4 = ip.l4();
    if l4.len() < min {
        return Ok(Outcome::Pass);
    }
    let (sport, dport) = (wire::get_u16(l4, 0), wire::get_u16(l4, 2));
    let flags = if proto == wire::IP_PROTO_TCP {
        l4[13]
    } else {
        0
    };
    let key = FlowKey {
        policy: false,
        proto,
        src,
        dst,
        sport,
        dport,
    };
    let ct = &svc.conntrack;
    if let Some(e) = ct.touch(&key, now, flags) {
        // A flow whose backend left its service is forgotten and, if it
        // still goes to the service, given another.
        let gone = !e.reply
            && svc
                .table
                .by_id(e.service)
                .is_none_or(|s| !s.has_backend(&e.translation.dst));
        if !gone {
            rewrite(ip, csum, e.translation)?;
            return Ok(match (e.via, e.reply) {
                (Some(mac), _) => Outcome::ToUplink(mac),
                (None, true) => Outcome::Reply,
                (None, false) => Outcome::Pass,
            });
        }
        ct.remove_flow(&key);
    }
    let service = match outside {
        Some(_) => svc.table.by_node_port(dport, proto),
        None => svc.table.lookup(key.dst, dport, proto).map(|s| (s, false)),
    };
    let Some((service, keep_source)) = service else {
        return Ok(Outcome::Pass);
    };
    let backend = match service.affinity_ns {
        None => service.pick(key.src, sport, proto),
        Some(timeout) => {
            let client = FlowKey {
                proto: PROTO_AFFINITY,
                sport: 0,
                ..key
            };
            let last = ct
                .get(&client, now)
                .map(|e| e.translation.dst)
                .filter(|b| service.has_backend(b));
            let chosen = last.or_else(|| service.pick(key.src, sport, proto));
            if let Some(b) = chosen {
                // Best effort: a full table only loses the stickiness.
                ct.set_affinity(client, b, service.id, now.saturating_add(timeout));
            }
            chosen
        }
    };
    let Some(backend) = backend else {
        // externalTrafficPolicy: Local without a backend here: dropped, as
        // kube-proxy drops it (a load balancer's health check sees it).
        if keep_source {
            return Err(DropReason::NoLocalEndpoint);
        }
        return Ok(Outcome::Reject);
    };
    let src = if (outside.is_some() && !keep_source) || backend.ip == key.src {
        hairpin
    } else {
        key.src
    };
    let to = Translation {
        src: Endpoint {
            ip: src,
            port: sport,
        },
        dst: backend,
    };
    if !ct.insert_flow(key, to, (service.id, outside), now, flags) {
        return Err(DropReason::CtFull);
    }
    rewrite(ip, csum, to)?;
    Ok(Outcome::Pass)
}

/// The 16-bit words an address adds to the pseudo-header sum.
fn words(a: u128, v6: bool) -> impl Iterator<Item = u16> {
    let n = if v6 { 8 } else { 2 };
    (0..n).rev().map(move |i| (a >> (16 * i)) as u16)
}

/// Rewrite addresses and ports to `to`, keeping the L4 checksum right: a
/// complete one is updated for the addresses and ports, a partial one (the
/// pseudo-header sum) for the addresses only, UDP's "no checksum" (IPv4)
/// stays so.
fn rewrite<F: Flow>(ip: &mut F, csum: &mut CsumState, to: Translation) -> Result<(), DropReason> {
    let Some((proto, old_src, old_dst)) = ip.parts() else {
        return Ok(());
    };
    ip.classify(csum)?;
    ip.set_addresses(to.src.ip, to.dst.ip)?;
    let field_at = if proto == wire::IP_PROTO_TCP {
        wire::TCP_CHECKSUM_OFFSET
    } else {
        wire::UDP_CHECKSUM_OFFSET
    };
    let l4 = ip.l4_mut();
    let old_ports = [wire::get_u16(l4, 0), wire::get_u16(l4, 2)];
    let new_ports = [to.src.port, to.dst.port];
    wire::set_u16(l4, 0, to.src.port);
    wire::set_u16(l4, 2, to.dst.port);
    let field = wire::get_u16(l4, field_at);
    let old_words = words(old_src, F::V6).chain(words(old_dst, F::V6));
    let new_words = words(to.src.ip, F::V6).chain(words(to.dst.ip, F::V6));
    let addr_changes = old_words.zip(new_words);
    let updated = match *csum {
        CsumState::Partial { .. } => {
            // The field holds the (uncomplemented) pseudo-header sum.
            !addr_changes.fold(!field, |hc, (o, n)| checksum::update16(hc, o, n))
        }
        _ if proto == wire::IP_PROTO_UDP && field == 0 => 0,
        _ => {
            let ports = old_ports.into_iter().zip(new_ports);
            let c = addr_changes
                .chain(ports)
                .fold(field, |hc, (o, n)| checksum::update16(hc, o, n));
            if proto == wire::IP_PROTO_UDP && c == 0 {
                0xffff
            } else {
                c
            }
        }
    };
    wire::set_u16(l4, field_at, updated);
    Ok(())
}

/// Replace the frame (an IPv4 TCP or UDP packet to a service port without
/// backends) with the refusal: a TCP reset, or ICMP port unreachable, from
/// the ClusterIP, out of the ingress port.
pub(super) fn reject4(buf: &mut [u8], len: usize, to: ReplyTo) -> (Verdict, usize) {
    let refused = Verdict::Drop(DropReason::ServiceNoEndpoints);
    let Ok(ip) = Ipv4::new_checked(&mut buf[wire::ETH_HDR_LEN..len]) else {
        return (refused, len);
    };
    let (src, dst) = (ip.src(), ip.dst());
    if ip.protocol() == wire::IP_PROTO_UDP {
        let offending = Offending::of(&ip);
        let unreachable = (wire::ICMP_DEST_UNREACHABLE, ICMP_PORT_UNREACHABLE, [0; 4]);
        return match icmp_error(offending, unreachable, dst, buf, to) {
            Some(new_len) => (as_error(to), new_len),
            None => (refused, len),
        };
    }
    let Some(reset) = reset_for(ip.payload()) else {
        return (refused, len);
    };
    let new_len = wire::ETH_HDR_LEN + wire::IPV4_MIN_HDR_LEN + wire::TCP_MIN_HDR_LEN;
    if buf.len() < new_len {
        return (refused, len);
    }
    let ip_at = wire::ETH_HDR_LEN;
    let tcp_at = ip_at + wire::IPV4_MIN_HDR_LEN;
    wire::write_ipv4_header(
        &mut buf[ip_at..tcp_at],
        0,
        (wire::IPV4_MIN_HDR_LEN + wire::TCP_MIN_HDR_LEN) as u16,
        super::REPLY_TTL,
        wire::IP_PROTO_TCP,
        dst,
        src,
    );
    let tcp = &mut buf[tcp_at..new_len];
    reset.write(tcp);
    let pseudo = checksum::pseudo_header(
        dst.octets(),
        src.octets(),
        wire::IP_PROTO_TCP,
        wire::TCP_MIN_HDR_LEN as u16,
    );
    let c = !checksum::fold(checksum::add_bytes(pseudo, tcp));
    wire::set_u16(tcp, wire::TCP_CHECKSUM_OFFSET, c);
    match super::set_macs(buf, new_len, to.mac, to.router) {
        Ok(()) => (as_error(to), new_len),
        Err(reason) => (Verdict::Drop(reason), len),
    }
}

/// The reset answering a TCP segment (its header and payload, `l4`);
/// `None` for a reset (never answered) or a short header.
pub(super) fn reset_for(l4: &[u8]) -> Option<Reset> {
    if l4.len() < wire::TCP_MIN_HDR_LEN {
        return None;
    }
    let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    let ack = u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]);
    let flags = l4[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let data = l4.len().saturating_sub(usize::from(l4[12] >> 4) * 4);
    // RFC 9293 3.10.7.1: to a segment with ACK, a reset with its ack as
    // sequence; otherwise sequence 0 and an ACK of everything it used.
    let (seq, ack, flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        let used = data as u32 + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        (0, seq.wrapping_add(used), TCP_RST | TCP_ACK)
    };
    Some(Reset {
        sport: wire::get_u16(l4, 2),
        dport: wire::get_u16(l4, 0),
        seq,
        ack,
        flags,
    })
}

/// A TCP reset to write (ports already swapped).
pub(super) struct Reset {
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
}

impl Reset {
    /// Write the 20-byte header into `tcp`, checksum field zero.
    pub(super) fn write(&self, tcp: &mut [u8]) {
        tcp.fill(0);
        wire::set_u16(tcp, 0, self.sport);
        wire::set_u16(tcp, 2, self.dport);
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = self.flags;
    }
}

fn as_error(to: ReplyTo) -> Verdict {
    Verdict::IcmpError {
        port: to.ingress,
        reason: DropReason::ServiceNoEndpoints,
    }
}

const ICMP_PORT_UNREACHABLE: u8 = 3;

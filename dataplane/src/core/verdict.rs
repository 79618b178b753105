//! Verdicts and numbered drop reasons.

use crate::core::tables::PortId;

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the (possibly rewritten) frame out of this port.
    Tx(PortId),
    /// The frame was answered in place (ARP reply, ICMP echo reply, ICMP
    /// time exceeded): send it back out of its ingress port. Distinct from
    /// `Tx(ingress)`, which would be forwarding to a port that happens to
    /// be the ingress (hairpin); a reply is a plain frame with complete
    /// checksums.
    Reply,
    /// Drop it, counted under this reason.
    Drop(DropReason),
    /// The frame was not forwarded, counted under `reason` as a drop of
    /// the original, and was replaced in place by an ICMP error to its
    /// sender, to transmit on `port` (its ingress port) like a
    /// [`Verdict::Reply`].
    IcmpError { port: PortId, reason: DropReason },
    /// Dropped by network policy, counted under `reason` on `port`: the
    /// policed pod's port (for an ingress denial the destination's, not
    /// the ingress port), so denials show per pod.
    Denied { port: PortId, reason: DropReason },
}

/// Why a frame was dropped. Numbers are stable and never reused: they are
/// what operators see in counters and what dashboards key on. 0 is not a
/// reason (it was the placeholder `not_implemented` and stays unused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum DropReason {
    /// Ingress port unknown to the current tables.
    UnknownPort = 1,
    /// Shorter than an Ethernet header.
    Runt = 2,
    /// A header that does not parse (ARP, IPv4, L4 lengths), or a reply that
    /// does not fit its buffer.
    Malformed = 3,
    /// Neither ARP, IPv4 nor IPv6 (LLDP, VLAN tags, ...). IPv6 has its own
    /// reason, [`DropReason::Ipv6Unsupported`].
    UnsupportedEthertype = 4,
    /// ARP we do not answer: replies, gratuitous ARP, a pod asking for its
    /// own address, the host asking for a non-endpoint.
    ArpNotForUs = 5,
    /// IPv4 header checksum wrong.
    BadIpChecksum = 6,
    /// A pod sent from an address that is not its own.
    SpoofedSource = 7,
    /// Destination inside a pod CIDR without an endpoint.
    NoEndpoint = 8,
    /// Blackhole or unresolved route, or host-port traffic that would go
    /// back to the host port.
    NoRoute = 9,
    /// Traffic for the node kernel while no host port is attached.
    NoHostPort = 10,
    /// An echo request to the gateway whose ICMP checksum is wrong, or
    /// IPv6 UDP without a checksum. Forwarded TCP/UDP checksums are not
    /// verified (the receiver does).
    BadL4Checksum = 11,
    /// TTL expired and no ICMP error was sent (not allowed by RFC 1812 or
    /// the reply does not fit the buffer).
    TtlExceeded = 12,
    /// I/O layer: the TX ring of the egress port had no slot for the frame
    /// when the batch was committed (the kernel is not draining it fast
    /// enough). A frame that found no free frame to be copied into is
    /// [`DropReason::NoEgressFrame`] instead.
    TxRingFull = 13,
    /// I/O layer: the egress port went away.
    PortGone = 14,
    /// I/O layer: the worker has no TX queue on the egress port.
    NoTxQueue = 15,
    /// A tap frame's virtio-net header does not fit the frame: unknown
    /// flags, a header length beyond the frame, checksum or GSO offload on
    /// a frame that is not an unfragmented IPv4 packet with a whole L4
    /// header. (More precise header faults have reasons 24-26.)
    BadOffload = 16,
    /// A GSO frame of a type that cannot be segmented in software here
    /// (UDP/USO, TCP over IPv6), towards a port without offloads.
    GsoUnsupported = 17,
    /// I/O layer: a GSO frame some of whose segments found no free frame or
    /// TX slot on the egress port (counted once per such frame).
    GsoTxFull = 18,
    /// I/O layer: a frame larger than the egress port's frames and not
    /// segmentable (no GSO header).
    FrameTooBig = 19,
    /// I/O layer: the kernel refused a write to a tap queue (link down,
    /// malformed header).
    TapWriteFailed = 20,
    /// I/O layer: a frame for another port found no free frame in the
    /// egress queue's pool to be copied into (every frame is in the fill
    /// ring, or in flight in the TX ring waiting for completion).
    NoEgressFrame = 21,
    /// I/O layer: a tap read shorter than the virtio-net header plus an
    /// Ethernet header (not a frame at all).
    TapShortRead = 22,
    /// An IPv6 frame (ethertype 0x86DD) on a node that serves no IPv6
    /// (no IPv6 gateway in its settings).
    Ipv6Unsupported = 23,
    /// A tap frame's partial checksum (`NEEDS_CSUM`) is not where the
    /// frame's TCP/UDP checksum is: `csum_start` is not the L4 header, or
    /// `csum_offset` is not 16 (TCP) / 6 (UDP), or the protocol is neither.
    /// Completing it would write into other header fields.
    BadCsumOffload = 24,
    /// A tap frame's GSO type does not fit the frame: not TCPv4 on a TCP
    /// segment (UDP GSO was never offered to the tap), or GSO without a
    /// partial checksum.
    BadGsoType = 25,
    /// A tap frame's `gso_size` is below [`super::offload::MIN_GSO_SIZE`],
    /// or the frame would be cut into more than
    /// [`super::offload::MAX_GSO_SEGMENTS`] segments.
    BadGsoSize = 26,
    /// An IPv4 packet with DF set larger than its egress MTU (for a GSO
    /// frame: whose segments are): answered with ICMP "fragmentation
    /// needed" and the egress MTU (counted also when RFC 1812 forbids the
    /// answer: a non-first fragment, an ICMP error).
    FragNeeded = 27,
    /// An IPv4 packet without DF larger than its egress MTU: ferry does
    /// not fragment.
    TooBigNoDf = 28,
    /// From the uplink in VXLAN mode: not a VXLAN packet we take (not
    /// IPv4/UDP, a bad outer IPv4 checksum, a fragment, lengths that do
    /// not add up, the VNI flag clear, no inner Ethernet header).
    VxlanMalformed = 29,
    /// VXLAN to another address or UDP port than this node's.
    VxlanNotForUs = 30,
    /// VXLAN with a VNI other than the configured one.
    VxlanWrongVni = 31,
    /// From the uplink: the inner source is not inside a peer node's pod
    /// CIDR, or (VXLAN) not inside the one of the peer that sent it.
    UnknownPeer = 32,
    /// From the uplink for an address that is neither a pod of this node
    /// nor its gateway: ferry does not carry traffic through a node.
    NotLocal = 33,
    /// For a peer node whose MAC on the uplink is not (yet) known.
    NeighbourUnresolved = 34,
    /// For a peer node while no uplink is attached.
    NoUplink = 35,
    /// The frame's buffer has no room in front for the outer headers
    /// (every I/O pool keeps `FRAME_HEADROOM`, so only a bug gets here).
    NoHeadroom = 36,
    /// A neighbour solicitation for an address ferry does not answer for
    /// (a pod asking for itself, the node kernel for an address that is no
    /// pod's), or a neighbour advertisement or redirect (ferry never
    /// solicits; nobody redirects its pods).
    NdNotForUs = 37,
    /// A duplicate-address-detection probe (a neighbour solicitation from
    /// `::`): never answered, so a pod's own address is never "taken".
    NdDad = 38,
    /// A router solicitation: ferry sends no router advertisements (pods
    /// get their addresses and routes from the CNI result).
    RouterSolicit = 39,
    /// Neighbour discovery that fails RFC 4861's checks (hop limit not
    /// 255, code not 0, too short, bad checksum), or a router
    /// advertisement from a pod or the node kernel.
    NdInvalid = 40,
    /// To an IPv6 multicast address other than neighbour discovery's (MLD
    /// reports, mDNS, ...): ferry forwards no multicast.
    Ipv6Multicast = 41,
    /// From or to a link-local address, other than neighbour discovery:
    /// link-local packets are never routed (RFC 4291 2.5.6).
    Ipv6LinkLocal = 42,
    /// More than `wire::ipv6::MAX_EXT_HEADERS` IPv6 extension headers
    /// before the upper layer.
    Ipv6ExtHeaders = 43,
    /// An IPv6 packet larger than its egress MTU: answered with ICMPv6
    /// "packet too big" and the egress MTU (counted also when RFC 4443
    /// forbids the answer).
    PacketTooBig = 44,
    /// To a service port without ready backends: answered with a TCP
    /// reset or ICMP port unreachable (as kube-proxy rejects it).
    ServiceNoEndpoints = 45,
    /// A new service flow found the connection table full (of live
    /// flows): not translated, dropped.
    CtFull = 46,
    /// A packet to a pod whose network policy isolates its ingress and
    /// allows nothing matching it (counted on that pod's port).
    PolicyDeniedIngress = 47,
    /// A packet from a pod whose network policy isolates its egress and
    /// allows nothing matching it.
    PolicyDeniedEgress = 48,
    /// To a node port of an `externalTrafficPolicy: Local` service with no
    /// ready backend on this node: dropped (kube-proxy drops it too).
    NoLocalEndpoint = 49,
}

impl DropReason {
    pub const ALL: &'static [DropReason] = &[
        DropReason::UnknownPort,
        DropReason::Runt,
        DropReason::Malformed,
        DropReason::UnsupportedEthertype,
        DropReason::ArpNotForUs,
        DropReason::BadIpChecksum,
        DropReason::SpoofedSource,
        DropReason::NoEndpoint,
        DropReason::NoRoute,
        DropReason::NoHostPort,
        DropReason::BadL4Checksum,
        DropReason::TtlExceeded,
        DropReason::TxRingFull,
        DropReason::PortGone,
        DropReason::NoTxQueue,
        DropReason::BadOffload,
        DropReason::GsoUnsupported,
        DropReason::GsoTxFull,
        DropReason::FrameTooBig,
        DropReason::TapWriteFailed,
        DropReason::NoEgressFrame,
        DropReason::TapShortRead,
        DropReason::Ipv6Unsupported,
        DropReason::BadCsumOffload,
        DropReason::BadGsoType,
        DropReason::BadGsoSize,
        DropReason::FragNeeded,
        DropReason::TooBigNoDf,
        DropReason::VxlanMalformed,
        DropReason::VxlanNotForUs,
        DropReason::VxlanWrongVni,
        DropReason::UnknownPeer,
        DropReason::NotLocal,
        DropReason::NeighbourUnresolved,
        DropReason::NoUplink,
        DropReason::NoHeadroom,
        DropReason::NdNotForUs,
        DropReason::NdDad,
        DropReason::RouterSolicit,
        DropReason::NdInvalid,
        DropReason::Ipv6Multicast,
        DropReason::Ipv6LinkLocal,
        DropReason::Ipv6ExtHeaders,
        DropReason::PacketTooBig,
        DropReason::ServiceNoEndpoints,
        DropReason::CtFull,
        DropReason::PolicyDeniedIngress,
        DropReason::PolicyDeniedEgress,
        DropReason::NoLocalEndpoint,
    ];

    /// Counter name (`drop_<name>` in metrics).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::UnknownPort => "unknown_port",
            DropReason::Runt => "runt",
            DropReason::Malformed => "malformed",
            DropReason::UnsupportedEthertype => "unsupported_ethertype",
            DropReason::ArpNotForUs => "arp_not_for_us",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoRoute => "no_route",
            DropReason::NoHostPort => "no_host_port",
            DropReason::BadL4Checksum => "bad_l4_checksum",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::TxRingFull => "tx_ring_full",
            DropReason::PortGone => "port_gone",
            DropReason::NoTxQueue => "no_tx_queue",
            DropReason::BadOffload => "bad_offload",
            DropReason::GsoUnsupported => "gso_unsupported",
            DropReason::GsoTxFull => "gso_tx_full",
            DropReason::FrameTooBig => "frame_too_big",
            DropReason::TapWriteFailed => "tap_write_failed",
            DropReason::NoEgressFrame => "no_egress_frame",
            DropReason::TapShortRead => "tap_short_read",
            DropReason::Ipv6Unsupported => "ipv6_unsupported",
            DropReason::BadCsumOffload => "bad_csum_offload",
            DropReason::BadGsoType => "bad_gso_type",
            DropReason::BadGsoSize => "bad_gso_size",
            DropReason::FragNeeded => "frag_needed",
            DropReason::TooBigNoDf => "too_big_no_df",
            DropReason::VxlanMalformed => "vxlan_malformed",
            DropReason::VxlanNotForUs => "vxlan_not_for_us",
            DropReason::VxlanWrongVni => "vxlan_wrong_vni",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::NotLocal => "not_local",
            DropReason::NeighbourUnresolved => "neighbour_unresolved",
            DropReason::NoUplink => "no_uplink",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::NdNotForUs => "nd_not_for_us",
            DropReason::NdDad => "nd_dad",
            DropReason::RouterSolicit => "router_solicit",
            DropReason::NdInvalid => "nd_invalid",
            DropReason::Ipv6Multicast => "ipv6_multicast",
            DropReason::Ipv6LinkLocal => "ipv6_link_local",
            DropReason::Ipv6ExtHeaders => "ipv6_ext_headers",
            DropReason::PacketTooBig => "packet_too_big",
            DropReason::ServiceNoEndpoints => "service_no_endpoints",
            DropReason::CtFull => "ct_full",
            DropReason::PolicyDeniedIngress => "policy_denied_ingress",
            DropReason::PolicyDeniedEgress => "policy_denied_egress",
            DropReason::NoLocalEndpoint => "no_local_endpoint",
        }
    }

    /// The stable number.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The reason with this number, if any.
    pub fn from_code(code: u16) -> Option<DropReason> {
        DropReason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_dense_and_named_uniquely() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.code() as usize, i + 1, "{r:?}");
            assert_eq!(DropReason::from_code(r.code()), Some(*r));
            assert!(r
                .name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        assert_eq!(DropReason::from_code(0), None);
        assert_eq!(DropReason::BadL4Checksum.code(), 11);
        assert_eq!(DropReason::NoTxQueue.code(), 15);
        assert_eq!(DropReason::TapWriteFailed.code(), 20);
        assert_eq!(DropReason::NoEgressFrame.code(), 21);
        assert_eq!(DropReason::TapShortRead.code(), 22);
        assert_eq!(DropReason::Ipv6Unsupported.code(), 23);
        assert_eq!(DropReason::Ipv6Unsupported.name(), "ipv6_unsupported");
        assert_eq!(DropReason::BadGsoSize.code(), 26);
        assert_eq!(DropReason::FragNeeded.code(), 27);
        assert_eq!(DropReason::TooBigNoDf.code(), 28);
        assert_eq!(DropReason::VxlanMalformed.code(), 29);
        assert_eq!(DropReason::NoHeadroom.code(), 36);
    }
}

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ferry's port program, one copy for every pod veth and the host port:
// every frame received on a port goes to the AF_XDP socket bound to the
// receiving queue; a port without a slot, or a queue without a socket,
// passes the frame to the kernel (bpf_redirect_map's fallback action).
//
// One program for all ports because attaching a program that is already
// attached somewhere costs ~30 us, a new one ~10 ms: the kernel's XDP
// dispatcher is rebuilt, with an RCU grace period, whenever the set of
// attached programs changes (bpf_dispatcher_change_prog). So the ports
// share it, and `ferry_ports` tells their sockets apart: the receiving
// interface's index -> its slot, whose sockets are `xsks` entries
// slot * FERRY_XSKS_MAX + queue.
//
// It is an `xdp.frags` program: a frame larger than a page arrives as a
// multi-buffer xdp_buff and goes to the socket whole (the socket is bound
// with XDP_USE_SG and reads it as a chain of descriptors). The section also
// sets how large the pod end's MTU of a veth may be, at the first attach:
// 3506 for a plain program, ~73000 for a frags one (DESIGN.md, performance
// levers), so every port gets this kind from the start.
//
// Built by dataplane/build.rs with `clang -O2 -g -target bpf`; loaded once
// and attached by ferry-dataplane (aya). Rust writes both maps (u32 keys
// and values; no struct of our own).

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Slots for this many ports at once.
#define FERRY_PORT_SLOTS 1024
#define FERRY_XSKS_ENTRIES (FERRY_PORT_SLOTS * 64)

#include "ferry_maps.h"

_Static_assert(FERRY_XSKS_ENTRIES == FERRY_PORT_SLOTS * FERRY_XSKS_MAX, "xsks stride");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FERRY_PORT_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} ferry_ports SEC(".maps");

SEC("xdp.frags")
int ferry_redirect(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 queue = ctx->rx_queue_index;
	__u32 *slot = bpf_map_lookup_elem(&ferry_ports, &ifindex);

	if (!slot || queue >= FERRY_XSKS_MAX || *slot >= FERRY_PORT_SLOTS)
		return XDP_PASS;
	return bpf_redirect_map(&xsks, *slot * FERRY_XSKS_MAX + queue, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

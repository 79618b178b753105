// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ferry's XDP maps that Rust writes: the `xsks` socket map of every port
// program, and the key and value structs of the uplink's maps, the one
// place they are declared on the C side. Their Rust mirrors live in
// dataplane/src/io/uplink.rs, whose tests check these sizes and offsets
// against the compiled object's BTF; the asserts below keep this side from
// drifting on its own. Byte order is the wire's where the type says __be*.

#ifndef FERRY_MAPS_H
#define FERRY_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

// Every port program's socket map: value an AF_XDP socket fd (written
// with aya's XskMap; no struct of our own). The uplink's is keyed by RX
// queue index; the shared redirect program's by slot * FERRY_XSKS_MAX +
// RX queue index (it defines FERRY_XSKS_ENTRIES before including this).
// Each object that includes this has its own copy.
#define FERRY_XSKS_MAX 64
#ifndef FERRY_XSKS_ENTRIES
#define FERRY_XSKS_ENTRIES FERRY_XSKS_MAX
#endif
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, FERRY_XSKS_ENTRIES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

// The uplink classifier's configuration (`uplink_cfg`, one entry, key 0).
struct uplink_cfg {
	// The node's address on the uplink: VXLAN packets must be sent to it.
	__be32 node_addr;
	// VXLAN UDP destination port; 0: VXLAN off.
	__be16 vxlan_port;
	// Non-zero: direct mode, packets to `local_cidrs` are ferry's.
	__u8 direct;
	__u8 pad;
};

// A key of the `local_cidrs` LPM trie: an IPv4 prefix.
struct lpm_v4_key {
	__u32 prefixlen;
	__be32 addr;
};

// A key of the `local_cidrs6` LPM trie: an IPv6 prefix.
struct lpm_v6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

_Static_assert(sizeof(struct uplink_cfg) == 8, "uplink_cfg size");
_Static_assert(__builtin_offsetof(struct uplink_cfg, node_addr) == 0, "node_addr");
_Static_assert(__builtin_offsetof(struct uplink_cfg, vxlan_port) == 4, "vxlan_port");
_Static_assert(__builtin_offsetof(struct uplink_cfg, direct) == 6, "direct");
_Static_assert(__builtin_offsetof(struct uplink_cfg, pad) == 7, "pad");
_Static_assert(sizeof(struct lpm_v4_key) == 8, "lpm_v4_key size");
_Static_assert(__builtin_offsetof(struct lpm_v4_key, prefixlen) == 0, "prefixlen");
_Static_assert(__builtin_offsetof(struct lpm_v4_key, addr) == 4, "addr");
_Static_assert(sizeof(struct lpm_v6_key) == 20, "lpm_v6_key size");
_Static_assert(__builtin_offsetof(struct lpm_v6_key, addr) == 4, "v6 addr");

#endif

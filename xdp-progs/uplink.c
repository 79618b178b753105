// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ferry's uplink program: the node's NIC is shared with the node kernel, so
// only ferry's own traffic goes to the AF_XDP socket of the receiving
// queue, and everything else passes to the kernel untouched. Ferry's
// traffic is untagged IPv4 with a complete header and either
//   - VXLAN on (`uplink_cfg.vxlan_port` != 0): sent to the node address,
//     UDP, not a fragment (offset 0, MF clear: a VXLAN header is only in a
//     first fragment, and ferry does not reassemble), to the VXLAN port; or
//   - direct on (`uplink_cfg.direct`): sent to an address inside one of the
//     node's pod CIDRs (`local_cidrs`), or IPv6 with a complete fixed
//     header to one inside its IPv6 pod CIDRs (`local_cidrs6`).
// In either mode, TCP/UDP to the node address at a service's NodePort
// (`node_ports`, key protocol << 16 | port) is ferry's too.
// ARP, other IPv6 (neighbour discovery, the node's own), VLAN-tagged
// frames, anything to the node other than VXLAN (SSH, the API server,
// kubelet), fragments and truncated frames pass.
//
// The redirect's fallback is XDP_PASS: a queue without a socket, or a
// dataplane that died (the kernel removes a closed socket from the map),
// leaves every frame to the kernel, so the node never loses its link.
//
// Built by dataplane/build.rs; loaded, configured and attached by
// dataplane/src/io/afxdp.rs (one copy per uplink). Map structs: ferry_maps.h.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "ferry_maps.h"

// Fragment offset and more-fragments bits of iphdr.frag_off (host order).
#define FERRY_IP_MF 0x2000
#define FERRY_IP_OFFSET 0x1fff

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uplink_cfg);
} uplink_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v4_key);
	__type(value, __u8);
} local_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} node_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lpm_v6_key);
	__type(value, __u8);
} local_cidrs6 SEC(".maps");

// Direct mode, IPv6: a packet to one of the node's IPv6 pod CIDRs, whole
// in the frame as its payload length says, is ferry's.
static __always_inline int ipv6_direct(struct xdp_md *ctx, struct ethhdr *eth, void *end)
{
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct uplink_cfg *cfg;
	struct lpm_v6_key key = { .prefixlen = 128 };
	__u32 zero = 0;

	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return XDP_PASS;
	if ((void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len) > end)
		return XDP_PASS;
	cfg = bpf_map_lookup_elem(&uplink_cfg, &zero);
	if (!cfg || !cfg->direct)
		return XDP_PASS;
	__builtin_memcpy(key.addr, &ip6->daddr, sizeof(key.addr));
	if (bpf_map_lookup_elem(&local_cidrs6, &key))
		return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	return XDP_PASS;
}

SEC("xdp")
int ferry_uplink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	struct uplink_cfg *cfg;
	__u32 zero = 0;
	__u32 hdr_len, tot_len;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return ipv6_direct(ctx, eth, end);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;
	hdr_len = ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	// The whole header and the whole packet the header announces must be
	// in the frame (Ethernet padding after it is fine).
	if (tot_len < hdr_len || (void *)ip + tot_len > end)
		return XDP_PASS;

	cfg = bpf_map_lookup_elem(&uplink_cfg, &zero);
	if (!cfg)
		return XDP_PASS;

	if (ip->daddr == cfg->node_addr &&
	    (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) &&
	    !(ip->frag_off & bpf_htons(FERRY_IP_MF | FERRY_IP_OFFSET))) {
		__be16 *ports = (void *)ip + hdr_len;
		__u32 key;

		if ((void *)(ports + 2) > end || tot_len < hdr_len + 4)
			return XDP_PASS;
		key = ((__u32)ip->protocol << 16) | bpf_ntohs(ports[1]);
		if (bpf_map_lookup_elem(&node_ports, &key))
			return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	}

	if (cfg->vxlan_port && ip->daddr == cfg->node_addr) {
		if (ip->protocol != IPPROTO_UDP ||
		    (ip->frag_off & bpf_htons(FERRY_IP_MF | FERRY_IP_OFFSET)))
			return XDP_PASS;
		udp = (void *)ip + hdr_len;
		if ((void *)(udp + 1) > end || tot_len < hdr_len + sizeof(*udp))
			return XDP_PASS;
		if (udp->dest != cfg->vxlan_port)
			return XDP_PASS;
		return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	}

	if (cfg->direct) {
		struct lpm_v4_key key = { .prefixlen = 32, .addr = ip->daddr };

		if (bpf_map_lookup_elem(&local_cidrs, &key))
			return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

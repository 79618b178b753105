// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ferry's port program: every frame received on a port goes to the AF_XDP
// socket bound to the receiving queue; a queue without a socket passes the
// frame to the kernel (bpf_redirect_map's fallback action).
//
// Built by dataplane/build.rs with `clang -O2 -g -target bpf`; loaded and
// attached by ferry-dataplane (aya), one copy of the program and its map per
// port. The map (`xsks`, ferry_maps.h) has no Rust-side key/value struct:
// keys are queue indices (u32) and values are socket fds, written with
// aya's XskMap.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "ferry_maps.h"

SEC("xdp")
int ferry_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

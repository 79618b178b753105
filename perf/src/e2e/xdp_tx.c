// The live-frames generator's program (perf/src/e2e/live.rs): run with
// BPF_PROG_TEST_RUN and BPF_F_TEST_XDP_LIVE_FRAMES on the sending pod's
// eth0, every frame it returns XDP_TX for leaves that eth0 as an xdp_frame
// to its veth peer.
//
// Self-contained on purpose (no libbpf headers): built at run time with
// `clang -O2 -g -target bpf`.

enum { XDP_DROP = 1, XDP_TX = 3 };

#define SEC(name) __attribute__((section(name), used))

struct xdp_md;

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
    return XDP_TX;
}

// The probe of whether the kernel runs live frames at all: every copy is
// dropped, nothing is sent.
SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
    return XDP_DROP;
}

char _license[] SEC("license") = "GPL";

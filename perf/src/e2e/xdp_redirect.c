// The fast-path limit of the machine for the end-to-end harness: frames
// arriving on one pod's host veth are redirected in the kernel (XDP_REDIRECT
// through a DEVMAP_HASH keyed by ingress ifindex) straight to the other pod's
// host veth. `xdp_pass` goes on the pod ends: veth only accepts redirected
// frames when its peer runs an XDP program.
//
// Self-contained on purpose (no libbpf headers): built at run time with
// `clang -O2 -g -target bpf`.

typedef unsigned int __u32;
typedef unsigned long long __u64;

struct xdp_md {
    __u32 data;
    __u32 data_end;
    __u32 data_meta;
    __u32 ingress_ifindex;
    __u32 rx_queue_index;
    __u32 egress_ifindex;
};

enum { XDP_ABORTED = 0, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT };
enum { BPF_MAP_TYPE_DEVMAP_HASH = 25 };

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

// struct bpf_devmap_val: target ifindex + optional program fd.
struct devmap_val {
    __u32 ifindex;
    __u32 prog_fd;
};

struct {
    __uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
    __uint(max_entries, 256);
    __type(key, __u32);
    __type(value, struct devmap_val);
} peer SEC(".maps");

// Helper 51: long bpf_redirect_map(void *map, __u64 key, __u64 flags).
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;

SEC("xdp")
int xdp_redirect_peer(struct xdp_md *ctx)
{
    // Unknown ingress: fall back to the kernel (lower bits of flags = action).
    return bpf_redirect_map(&peer, ctx->ingress_ifindex, XDP_PASS);
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char _license[] SEC("license") = "GPL";

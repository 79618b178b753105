//! The port XDP program (`xdp-progs/redirect.c`, one copy shared by every
//! port) run with `BPF_PROG_TEST_RUN` on crafted frames: a frame received
//! on a port with a slot, on a queue with a bound AF_XDP socket, is
//! redirected to it, whatever it holds; a port without a slot (another
//! interface), or a queue without a socket, passes the frame to the kernel
//! (so a dead dataplane leaves the node's traffic alone). Root: a
//! throwaway namespace with one veth.

use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd};

use std::process::Command;

use aya::maps::{HashMap, XskMap};
use aya::programs::Xdp;
use aya::Ebpf;
use ferry_dataplane::io::xdp_run::{self, Ingress, XDP_PASS, XDP_REDIRECT};
use xsk_rs::config::{FrameSize, Interface, QueueSize, UmemConfig};
use xsk_rs::{Socket, Umem};

static PROG: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Crafted frames: ARP, IPv4/TCP, IPv6, and an Ethernet header with an
/// unknown type and no payload.
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let eth = |ty: [u8; 2]| {
        let mut f = vec![0xee; 6];
        f.extend_from_slice(&[0x0a, 0x58, 10, 99, 0, 2]);
        f.extend_from_slice(&ty);
        f
    };
    let mut arp = eth([0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    let mut tcp = eth([0x08, 0x00]);
    tcp.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    tcp.extend_from_slice(&[10, 99, 0, 2, 10, 99, 0, 3]);
    tcp.extend_from_slice(&[0; 20]);
    let mut v6 = eth([0x86, 0xdd]);
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 58, 64]);
    v6.extend_from_slice(&[0; 32]);
    vec![
        ("arp", arp),
        ("ipv4/tcp", tcp),
        ("ipv6", v6),
        ("unknown type", eth([0x12, 0x34])),
    ]
}

#[test]
fn frames_on_a_bound_queue_are_redirected_and_the_rest_pass() {
    let ns = Netns(format!("fxp-{}", std::process::id()));
    let _ = Command::new("ip").args(["netns", "del", &ns.0]).status();
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n",
        &ns.0,
        "link",
        "add",
        "fxa",
        "numtxqueues",
        "2",
        "numrxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "fxb",
    ]);
    ip(&["-n", &ns.0, "link", "set", "fxa", "up"]);
    ip(&["-n", &ns.0, "link", "set", "fxb", "up"]);
    let path = format!("/run/netns/{}", ns.0);

    // Everything below runs in the namespace, on a thread of its own.
    let t = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns on an fd we own; it only changes this thread.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        // SAFETY: a NUL-terminated literal.
        let ifindex = unsafe { libc::if_nametoindex(c"fxa".as_ptr()) };
        assert_ne!(ifindex, 0, "fxa exists");

        let mut ebpf = Ebpf::load(PROG).expect("load the object");
        let prog: &mut Xdp = ebpf
            .program_mut("ferry_redirect")
            .expect("program")
            .try_into()
            .expect("an XDP program");
        prog.load().expect("verifier accepts it");
        // Attached as the dataplane attaches it: a test run naming a queue
        // needs the queue's XDP info, which veth registers with XDP on.
        prog.attach("fxa", aya::programs::XdpFlags::DRV_MODE)
            .expect("attach in driver mode");
        // The same program on the other end too: one copy serves every port.
        prog.attach("fxb", aya::programs::XdpFlags::DRV_MODE)
            .expect("attach the same program to a second port");
        // SAFETY: a NUL-terminated literal.
        let other_ifindex = unsafe { libc::if_nametoindex(c"fxb".as_ptr()) };
        assert_ne!(other_ifindex, 0, "fxb exists");
        let prog_fd = prog.fd().expect("loaded").as_fd().as_raw_fd();
        // SAFETY of the borrow below: `ebpf` owns the fd for the whole test.
        let prog_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(prog_fd) };

        let on = |queue| Some(Ingress { ifindex, queue });
        // Nothing bound: every frame passes to the kernel.
        for (what, frame) in frames() {
            let r = xdp_run::run(prog_fd, &frame, on(0)).expect("test run");
            assert_eq!(r.action, XDP_PASS, "{what} with no socket");
            assert_eq!(r.frame, frame, "{what} unchanged");
        }

        // A socket on queue 0 of fxa.
        let ring = QueueSize::new(64).unwrap();
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(2048).unwrap())
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .build()
            .unwrap();
        let (umem, _descs) = Umem::new(umem_config, NonZeroU32::new(128).unwrap(), false).unwrap();
        let config = ferry_dataplane::io::afxdp::socket_config(ring);
        let iface: Interface = "fxa".parse().unwrap();
        // SAFETY: a fresh UMEM whose only socket this is; libxdp's own
        // program load is inhibited.
        let (tx, rx, rings) =
            unsafe { Socket::new(config, &umem, &iface, 0) }.expect("bind queue 0");
        // In slot 5: its sockets are xsks entries 5 * 64 + queue.
        const SLOT: u32 = 5;
        {
            let mut xsks: XskMap<_> =
                XskMap::try_from(ebpf.map_mut("xsks").expect("map")).expect("an XSKMAP");
            xsks.set(SLOT * 64, rx.fd().as_raw_fd(), 0)
                .expect("map the socket");
        }
        for (what, frame) in frames() {
            let r = xdp_run::run(prog_fd, &frame, on(0)).expect("test run");
            assert_eq!(r.action, XDP_PASS, "{what} before the port has its slot");
        }
        {
            let mut ports: HashMap<_, u32, u32> =
                HashMap::try_from(ebpf.map_mut("ferry_ports").expect("map")).expect("a hash");
            ports.insert(ifindex, SLOT, 0).expect("the port's slot");
        }
        let other = Some(Ingress {
            ifindex: other_ifindex,
            queue: 0,
        });
        for (what, frame) in frames() {
            let r = xdp_run::run(prog_fd, &frame, on(0)).expect("test run");
            assert_eq!(r.action, XDP_REDIRECT, "{what} on the bound queue");
            let r = xdp_run::run(prog_fd, &frame, on(1)).expect("test run");
            assert_eq!(r.action, XDP_PASS, "{what} on a queue without a socket");
            let r = xdp_run::run(prog_fd, &frame, other).expect("test run");
            assert_eq!(r.action, XDP_PASS, "{what} on an interface without a slot");
        }

        // The socket closed (a dataplane that died): the kernel takes it out
        // of the map, and frames pass again.
        drop((tx, rx, rings, umem));
        for (what, frame) in frames() {
            let r = xdp_run::run(prog_fd, &frame, on(0)).expect("test run");
            assert_eq!(r.action, XDP_PASS, "{what} after the socket left");
        }
        // The kernel refuses a frame shorter than an Ethernet header.
        assert!(xdp_run::run(prog_fd, &[0u8; 10], on(0)).is_err());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

//! Our own traffic: a UDP flood from one of two generators — an AF_PACKET
//! socket (sendmmsg of prebuilt frames, qdisc bypassed) or live frames of an
//! XDP program ([`super::live`]) — and a 1-byte TCP request/response pair.
//! Each runs on a thread that entered the pod's network namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::error::{E2eError, Result};
use super::live;
use super::sys::{enter_netns, in_netns, interrupted};
use super::xdp::ifindex;

/// Smallest Ethernet frame without its FCS (a "64 B" frame on the wire).
pub const MIN_FRAME: usize = 60;
/// Smallest Ethernet/IPv6/UDP frame (14 + 40 + 8, no payload): the "64 B"
/// workload over IPv6 sends these, 66 B on the wire.
pub const MIN_FRAME6: usize = 62;
/// UDP destination port of the flood (discard).
pub const FLOOD_PORT: u16 = 9;

/// What makes the flood's frames in the sending pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// An AF_PACKET socket, `sendmmsg` of 256 prebuilt frames per call,
    /// qdisc bypassed: skbs through the pod's stack below the qdisc; the
    /// node end's receive work runs in the sender's softirq, on its core.
    AfPacket,
    /// `BPF_PROG_TEST_RUN` with live frames of an `XDP_TX` program on the
    /// pod's eth0 ([`super::live`]): xdp_frames straight to the veth peer,
    /// no skb on the sending side.
    Live,
}

impl Generator {
    /// Its name in options, case labels and reports.
    pub fn name(self) -> &'static str {
        match self {
            Generator::AfPacket => "afpacket",
            Generator::Live => "live",
        }
    }

    /// `afpacket`, `live` or `both` (afpacket first).
    pub fn parse_choice(s: &str) -> Result<Vec<Generator>> {
        let a = Generator::AfPacket;
        let b = Generator::Live;
        super::workload::one_or_both(s, "generator", (a.name(), a), (b.name(), b))
    }

    /// The case label of a flood case made by this generator: afpacket
    /// keeps `label` (results stay comparable with earlier runs), live adds
    /// `-live`.
    pub fn case(self, label: &str) -> String {
        match self {
            Generator::AfPacket => label.to_string(),
            Generator::Live => format!("{label}-live"),
        }
    }
}

/// One's complement sum folded to 16 bits, inverted (the IPv4 header and
/// the UDP checksum).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for ch in data.chunks(2) {
        let w = u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A zeroed frame of `len` bytes behind an Ethernet header.
fn ethernet_frame(src_mac: [u8; 6], dst_mac: [u8; 6], ethertype: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

/// A UDP header from `src_port` to `dst_port`, checksum 0.
fn write_udp_header(udp: &mut [u8], src_port: u16, dst_port: u16, udp_len: u16) {
    udp[0..2].copy_from_slice(&src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
}

/// An Ethernet/IPv4/UDP frame of exactly `len` bytes (without FCS; at least
/// [`MIN_FRAME`]) to [`FLOOD_PORT`], IP checksum filled, UDP checksum 0
/// (allowed for IPv4).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    len: usize,
) -> Vec<u8> {
    udp_frame_to(src_mac, dst_mac, (src, src_port), (dst, FLOOD_PORT), len)
}

/// [`udp_frame`] to any destination port (a service port).
pub fn udp_frame_to(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    (src, src_port): (Ipv4Addr, u16),
    (dst, dst_port): (Ipv4Addr, u16),
    len: usize,
) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME, 9000);
    let mut f = ethernet_frame(src_mac, dst_mac, 0x0800, len);
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    write_udp_header(&mut f[34..42], src_port, dst_port, ip_len - 20);
    f
}

/// An Ethernet/IPv6/UDP frame of exactly `len` bytes (without FCS; at least
/// [`MIN_FRAME6`]), hop limit 64, UDP checksum filled: it is mandatory over
/// IPv6 (RFC 8200 8.1), and ferry drops a zero one.
pub fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    len: usize,
) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME6, 9000);
    let mut f = ethernet_frame(src_mac, dst_mac, 0x86dd, len);
    let udp_len = (len - 54) as u16;
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    write_udp_header(&mut f[54..62], src_port, FLOOD_PORT, udp_len);
    // Pseudo-header (addresses, upper-layer length, next header) + segment.
    let mut sum = Vec::with_capacity(40 + usize::from(udp_len));
    sum.extend_from_slice(&src.octets());
    sum.extend_from_slice(&dst.octets());
    sum.extend_from_slice(&u32::from(udp_len).to_be_bytes());
    sum.extend_from_slice(&[0, 0, 0, 17]);
    sum.extend_from_slice(&f[54..]);
    // A computed 0 is sent as all ones (0 means "no checksum").
    let c = match checksum(&sum) {
        0 => 0xffff,
        c => c,
    };
    f[60..62].copy_from_slice(&c.to_be_bytes());
    f
}

/// Where and what to flood.
#[derive(Debug, Clone)]
pub struct Flood {
    pub ns: String,
    pub ifname: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// Both of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// UDP destination port: [`FLOOD_PORT`], or a service port.
    pub dst_port: u16,
    pub frame_len: usize,
    /// Distinct UDP source ports (flows), so multi-queue paths spread them.
    pub flows: u16,
    /// The first of those source ports.
    pub first_port: u16,
}

impl Flood {
    /// The frames of every flow, in source port order.
    pub fn frames(&self) -> Result<Vec<Vec<u8>>> {
        (0..self.flows.max(1))
            .map(|i| self.frame(self.first_port.wrapping_add(i)))
            .collect()
    }

    /// The frame of the flow from `src_port`.
    fn frame(&self, src_port: u16) -> Result<Vec<u8>> {
        let (mac_s, mac_d, len) = (self.src_mac, self.dst_mac, self.frame_len);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Ok(udp_frame_to(
                mac_s,
                mac_d,
                (s, src_port),
                (d, self.dst_port),
                len,
            )),
            (IpAddr::V6(_), IpAddr::V6(_)) if self.dst_port != FLOOD_PORT => Err(E2eError::setup(
                "flood",
                "IPv6 floods go to the discard port only (no IPv6 service cases)",
            )),
            (IpAddr::V6(s), IpAddr::V6(d)) => Ok(udp6_frame(mac_s, mac_d, s, d, src_port, len)),
            (s, d) => Err(E2eError::setup(
                "flood",
                format!("{s} and {d} are of two families"),
            )),
        }
    }
}

/// A running flood; `stop` ends it and returns how many frames the
/// generator handed on (the socket took, or the live runs completed).
pub struct FloodHandle {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: JoinHandle<Result<u64>>,
}

impl FloodHandle {
    /// Frames handed on so far; it moves once per generator call (256
    /// frames for afpacket, a live run's repeat count for live).
    pub fn sent(&self) -> u64 {
        // Relaxed: a counter read for a rate, nothing else depends on it.
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| E2eError::setup("flood", "generator thread panicked"))?
    }
}

/// What a generator thread is given: the flood, the stop flag, its
/// counter, and where to say it is ready.
pub struct GenCtl<'a> {
    pub stop: &'a AtomicBool,
    pub sent: &'a AtomicU64,
    pub ready: &'a mpsc::Sender<Result<()>>,
}

impl GenCtl<'_> {
    /// Whether to keep going: not stopped, not interrupted.
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && !interrupted()
    }
}

const BATCH: usize = 256;

fn flood_loop(spec: &Flood, ctl: &GenCtl<'_>) -> Result<u64> {
    enter_netns(&spec.ns)?;
    let idx = ifindex(&spec.ifname)?;
    // SAFETY: plain socket(2); the fd is owned by `sock` right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(E2eError::io(
            "AF_PACKET socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a fresh fd we own and close nowhere else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and size describe `one`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(E2eError::io(
            "PACKET_QDISC_BYPASS",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = idx as i32;
    // Protocol 0: this socket receives nothing, it only sends.
    // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(E2eError::io(
            "bind AF_PACKET",
            std::io::Error::last_os_error(),
        ));
    }
    let frames = spec.frames()?;
    let mut iovs: Vec<libc::iovec> = (0..BATCH)
        .map(|i| {
            let f = &frames[i % frames.len()];
            libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let _ = ctl.ready.send(Ok(()));
    let mut sent: u64 = 0;
    while ctl.running() {
        // SAFETY: `msgs` holds BATCH headers whose iovecs point into `frames`;
        // both outlive the call and the kernel only reads the frame bytes.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            sent += n as u64;
            ctl.sent.fetch_add(n as u64, Ordering::Relaxed);
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => thread::yield_now(),
                _ => return Err(E2eError::io("sendmmsg", e)),
            }
        }
    }
    Ok(sent)
}

/// The flood's sink in the receiving pod `ns`: a UDP socket on
/// [`FLOOD_PORT`] (both families where the pod has IPv6) that is never
/// read, so the pod's kernel queues a frame and, its buffer full, drops it
/// (`RcvbufErrors`) instead of answering each one with an ICMP port
/// unreachable: without it the route lookups of those answers (made before
/// their rate limit) took 37 % of ferry's worker core and as much of the
/// bridge's softirq (perf/results/generator-20261207.md). Received counts
/// stay the interface's; drop the socket to close it.
pub fn discard_sink(ns: &str) -> Result<std::net::UdpSocket> {
    in_netns(ns, || {
        std::net::UdpSocket::bind(("::", FLOOD_PORT))
            .or_else(|_| std::net::UdpSocket::bind(("0.0.0.0", FLOOD_PORT)))
            .map_err(|e| E2eError::io(format!("bind the discard sink in {ns}"), e))
    })
}

/// Start flooding with `generator`; returns once it is ready (or failed:
/// the error says which step).
pub fn start(spec: Flood, generator: Generator) -> Result<FloodHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let (st, se) = (stop.clone(), sent.clone());
    let what = generator.name();
    let handle = thread::Builder::new()
        .name(format!("flood-{what}"))
        .spawn(move || {
            let ctl = GenCtl {
                stop: &st,
                sent: &se,
                ready: &tx,
            };
            let r = match generator {
                Generator::AfPacket => flood_loop(&spec, &ctl),
                Generator::Live => live::flood_loop(&spec, &ctl),
            };
            if let Err(e) = &r {
                let _ = tx.send(Err(E2eError::setup(
                    format!("flood ({what})"),
                    e.to_string(),
                )));
            }
            r
        })
        .map_err(|e| E2eError::io("spawn flood thread", e))?;
    // The live generator compiles its program (clang) before it is ready.
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => Ok(FloodHandle { stop, sent, handle }),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            Err(E2eError::setup(
                format!("flood ({what})"),
                "generator did not start within 20 s",
            ))
        }
    }
}

/// Round-trip times (µs) of 1-byte TCP request/response exchanges between a
/// server in `server_ns` (listening on `server_ip:port`) and a client in
/// `client_ns` connecting to `connect` (the server's address, or a
/// ClusterIP port translated to it), for `duration`.
pub fn tcp_rr(
    server_ns: &str,
    (server_ip, port): (IpAddr, u16),
    client_ns: &str,
    connect: SocketAddr,
    duration: Duration,
) -> Result<Vec<f64>> {
    let (tx, rx) = mpsc::channel::<Result<()>>();
    let sns = server_ns.to_string();
    let bound = duration + Duration::from_secs(5);
    let server = thread::Builder::new()
        .name("rr-server".into())
        .spawn(move || -> Result<u64> {
            let setup = || -> Result<TcpListener> {
                enter_netns(&sns)?;
                let l = TcpListener::bind((server_ip, port))
                    .map_err(|e| E2eError::io(format!("bind {server_ip}:{port}"), e))?;
                l.set_nonblocking(true)
                    .map_err(|e| E2eError::io("nonblocking listener", e))?;
                Ok(l)
            };
            let l = match setup() {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(E2eError::setup("rr-server", e.to_string())));
                    return Err(e);
                }
            };
            let end = Instant::now() + bound;
            let mut conn = loop {
                match l.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > end || interrupted() {
                            return Err(E2eError::setup("rr-server", "no client connected"));
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(E2eError::io("accept", e)),
                }
            };
            conn.set_nonblocking(false)
                .map_err(|e| E2eError::io("blocking conn", e))?;
            conn.set_nodelay(true)
                .map_err(|e| E2eError::io("TCP_NODELAY", e))?;
            conn.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| E2eError::io("read timeout", e))?;
            let mut b = [0u8; 1];
            let mut n = 0;
            while Instant::now() < end {
                match conn.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if conn.write_all(&b).is_err() {
                            break;
                        }
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
        .map_err(|e| E2eError::io("spawn rr-server", e))?;
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| E2eError::setup("rr-server", "did not start within 5 s"))??;
    let cns = client_ns.to_string();
    let client = thread::Builder::new()
        .name("rr-client".into())
        .spawn(move || -> Result<Vec<f64>> {
            enter_netns(&cns)?;
            let addr = connect;
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| E2eError::io(format!("connect {addr}"), e))?;
            c.set_nodelay(true)
                .map_err(|e| E2eError::io("TCP_NODELAY", e))?;
            c.set_read_timeout(Some(Duration::from_secs(1)))
                .map_err(|e| E2eError::io("read timeout", e))?;
            let mut rtts = Vec::with_capacity(100_000);
            let end = Instant::now() + duration;
            let mut b = [7u8; 1];
            while Instant::now() < end && !interrupted() {
                let t = Instant::now();
                c.write_all(&b).map_err(|e| E2eError::io("rr write", e))?;
                c.read_exact(&mut b)
                    .map_err(|e| E2eError::io("rr read", e))?;
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(rtts)
        })
        .map_err(|e| E2eError::io("spawn rr-client", e))?;
    let rtts = client
        .join()
        .map_err(|_| E2eError::setup("rr-client", "panicked"))?;
    let served = server
        .join()
        .map_err(|_| E2eError::setup("rr-server", "panicked"))?;
    let rtts = rtts?;
    served?;
    Ok(rtts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_asked_size_and_valid_headers() {
        for len in [10, 60, 1400] {
            let f = udp_frame(
                [2, 0, 0, 0, 0, 1],
                [2, 0, 0, 0, 0, 2],
                Ipv4Addr::new(10, 99, 1, 2),
                Ipv4Addr::new(10, 99, 1, 3),
                10_001,
                len,
            );
            assert_eq!(f.len(), len.max(MIN_FRAME));
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            // A correct IPv4 header sums to zero (all ones before inversion).
            assert_eq!(checksum(&f[14..34]), 0);
            let ip_len = u16::from_be_bytes([f[16], f[17]]) as usize;
            assert_eq!(ip_len, f.len() - 14);
            let udp_len = u16::from_be_bytes([f[38], f[39]]) as usize;
            assert_eq!(udp_len, ip_len - 20);
            assert_eq!(u16::from_be_bytes([f[34], f[35]]), 10_001);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), FLOOD_PORT);
        }
    }

    #[test]
    fn ipv6_frames_parse_with_the_udp_checksum_etherparse_computes() {
        use etherparse::{NetSlice, SlicedPacket, TransportSlice};
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "fd00:99:1::2".parse().unwrap(),
            "fd00:99:1::3".parse().unwrap(),
        );
        for (len, port) in [(10, 10_000), (60, 10_007), (62, 10_001), (1400, 65_535)] {
            let f = udp6_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], src, dst, port, len);
            assert_eq!(f.len(), len.max(MIN_FRAME6));
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
            let p = SlicedPacket::from_ethernet(&f).expect("parses");
            let Some(NetSlice::Ipv6(ip)) = &p.net else {
                panic!("not IPv6: {:?}", p.net)
            };
            let h = ip.header();
            assert_eq!((h.source_addr(), h.destination_addr()), (src, dst));
            assert_eq!(usize::from(h.payload_length()), f.len() - 54);
            assert_eq!(h.hop_limit(), 64);
            let Some(TransportSlice::Udp(udp)) = &p.transport else {
                panic!("not UDP: {:?}", p.transport)
            };
            assert_eq!(
                (udp.source_port(), udp.destination_port()),
                (port, FLOOD_PORT)
            );
            assert_eq!(usize::from(udp.length()), f.len() - 54);
            let want = udp
                .to_header()
                .calc_checksum_ipv6(&h.to_header(), udp.payload())
                .unwrap();
            assert_ne!(udp.checksum(), 0);
            assert_eq!(udp.checksum(), want, "len {len}");
        }
    }

    #[test]
    fn a_flood_builds_frames_of_its_family_only() {
        let mut spec = Flood {
            ns: "fpf-x".into(),
            ifname: "eth0".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "10.99.1.2".parse().unwrap(),
            dst: "10.99.1.3".parse().unwrap(),
            dst_port: FLOOD_PORT,
            frame_len: MIN_FRAME,
            flows: 8,
            first_port: 10_000,
        };
        assert_eq!(spec.frame(10_000).unwrap()[12..14], [0x08, 0x00]);
        // A service port: the same frame but for the port (and the UDP length).
        spec.dst_port = 80;
        let f = spec.frame(10_000).unwrap();
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 80);
        assert_eq!(checksum(&f[14..34]), 0);
        spec.dst_port = FLOOD_PORT;
        spec.src = "fd00:99:1::2".parse().unwrap();
        assert!(spec.frame(10_000).is_err());
        spec.dst = "fd00:99:1::3".parse().unwrap();
        let f = spec.frame(10_000).unwrap();
        assert_eq!((&f[12..14], f.len()), (&[0x86, 0xdd][..], MIN_FRAME6));
        spec.dst_port = 80;
        assert!(spec.frame(10_000).is_err());
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // Example header from RFC 1071 discussions (checksum b861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
    }
}

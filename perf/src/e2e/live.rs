//! The live-frames generator: from inside the sending pod's network
//! namespace, `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` runs a
//! program that returns `XDP_TX` ([`SOURCE`]) on the flood's frames,
//! "received" on the pod's eth0. The kernel turns each `XDP_TX` into a
//! redirect to that eth0, so every copy leaves it as an xdp_frame to the
//! veth peer (the node's end), where ferry's XDP program or the kernel's
//! path takes it: no socket, no skb and no qdisc on the sending side.
//!
//! What the kernel asks for (net/bpf/test_run.c, 6.x): the program's type
//! XDP; no `data_out`/`ctx_out`; a context whose `data_end` is the frame's
//! length and whose ingress is an interface of the caller's namespace (the
//! generator thread enters the pod's); at most 256 frames per batch; frames
//! that fit a page with the kernel's headroom. A copy that cannot be sent —
//! eth0 down, or a veth whose peer has neither an XDP program nor GRO, so
//! the veth takes no XDP frames — is freed without an error: the harness
//! checks the pod's eth0 counters for that ([`super::workload`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use aya::programs::Xdp;
use aya::Ebpf;
use ferry_dataplane::io::xdp_run::{self, Ingress, LIVE_MAX_BATCH};

use serde_json::Value;

use super::error::{E2eError, Result};
use super::ethtool;
use super::sys::{self, enter_netns, in_netns};
use super::traffic::{Flood, GenCtl};
use super::xdp::{compile_source, ifindex};

/// The C source of the `XDP_TX` program.
pub const SOURCE: &str = include_str!("xdp_tx.c");

/// Copies of a frame per test run. One run of 2^15 takes ~10-15 ms at the
/// 2-3 Mpps a veth takes here: the stop flag is seen that often, and the
/// counter moves in steps that small against a window of seconds.
pub const REPEAT: u32 = 1 << 15;

/// Frames per batch of a run: the kernel's most.
pub const BATCH: u32 = LIVE_MAX_BATCH;

// Runs short enough to see the stop flag often, long enough that the
// syscall's own cost is amortized.
const _: () = assert!(REPEAT >= 1 << 12 && REPEAT <= 1 << 20 && BATCH == 256);

/// The compiled object, once per process (clang takes ~100 ms).
fn object() -> Result<&'static [u8]> {
    static OBJECT: OnceLock<std::result::Result<Vec<u8>, String>> = OnceLock::new();
    OBJECT
        .get_or_init(|| {
            let dir = sys::TempDir::create(&format!("xdp-tx-{}", std::process::id()))
                .map_err(|e| e.to_string())?;
            compile_source(&dir.path, "xdp_tx", SOURCE).map_err(|e| e.to_string())
        })
        .as_deref()
        .map_err(|e| E2eError::Xdp(format!("live generator: compile xdp_tx.c: {e}")))
}

/// The object's programs, loaded (attached nowhere): `xdp_tx` sends,
/// `xdp_drop` probes.
fn load() -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(object()?)
        .map_err(|e| E2eError::Xdp(format!("live generator: load object: {e}")))?;
    for name in ["xdp_tx", "xdp_drop"] {
        program_mut(&mut ebpf, name)?
            .load()
            .map_err(|e| E2eError::Xdp(format!("live generator: load {name}: {e}")))?;
    }
    Ok(ebpf)
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| E2eError::Xdp(format!("live generator: no program {name}")))?
        .try_into()
        .map_err(|e| E2eError::Xdp(format!("live generator: {name} is not XDP: {e}")))
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<BorrowedFd<'a>> {
    let p: &Xdp = ebpf
        .program(name)
        .ok_or_else(|| E2eError::Xdp(format!("live generator: no program {name}")))?
        .try_into()
        .map_err(|e| E2eError::Xdp(format!("live generator: {name} is not XDP: {e}")))?;
    Ok(p.fd()
        .map_err(|e| E2eError::Xdp(format!("live generator: {name} fd: {e}")))?
        .as_fd())
}

/// The error of a refused live run: the step, the errno, what it likely
/// means, and whether the same run without live frames works (then it is
/// live frames themselves that are refused, not the program or the frame).
fn refused(step: &str, prog: BorrowedFd<'_>, frame: &[u8], e: &std::io::Error) -> E2eError {
    let plain = match xdp_run::run(prog, frame, None) {
        Ok(_) => "the same test run without BPF_F_TEST_XDP_LIVE_FRAMES succeeds".to_string(),
        Err(p) => format!("the same test run without BPF_F_TEST_XDP_LIVE_FRAMES fails too: {p}"),
    };
    let caps = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|t| cap_eff(&t))
        .map(|eff| {
            let missing: Vec<&str> = CAPS
                .iter()
                .filter(|(bit, _)| eff >> bit & 1 == 0)
                .map(|(_, name)| *name)
                .collect();
            match missing.as_slice() {
                [] => format!("this thread has every one of {}", cap_names()),
                m => format!("this thread lacks {} (of {})", m.join(", "), cap_names()),
            }
        })
        .unwrap_or_else(|| "capabilities unread".into());
    E2eError::Xdp(format!(
        "live generator: the kernel refuses {step}: bpf(BPF_PROG_TEST_RUN, flags \
         BPF_F_TEST_XDP_LIVE_FRAMES) returned {e} ({}); {plain}; {caps}",
        errno_hint(e.raw_os_error())
    ))
}

/// The capabilities that bear on BPF and packet injection, by bit.
const CAPS: [(u32, &str); 6] = [
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"),
    (24, "CAP_SYS_RESOURCE"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

fn cap_names() -> String {
    CAPS.map(|(_, n)| n).join(", ")
}

/// `CapEff` of /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Whether this kernel runs live frames for this process at all: one copy
/// of a minimal frame through `xdp_drop` (nothing is sent), in the calling
/// thread's namespace. Run before anything is built, so a refusal stops
/// the run at once instead of failing every live case.
pub fn probe() -> Result<()> {
    let ebpf = load()?;
    let fd = program(&ebpf, "xdp_drop")?;
    let frame = probe_frame();
    xdp_run::run_live(fd, &frame, None, 1, 1)
        .map_err(|e| refused("the probe (xdp_drop, 1 copy, no interface)", fd, &frame, &e))
}

/// An Ethernet broadcast frame of the minimum size, zero payload.
fn probe_frame() -> Vec<u8> {
    let mut f = vec![0u8; super::traffic::MIN_FRAME];
    f[0..6].fill(0xff);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// `ENOTSUPP`, the kernel's internal "not supported" that
/// `BPF_PROG_TEST_RUN` returns for a program type without a test run (libc
/// has no constant for it).
const ENOTSUPP: i32 = 524;

/// What an errno of a live test run most likely means.
pub fn errno_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EINVAL) => {
            "the kernel refused the run: live frames need kernel 5.18 or later \
             (BPF_F_TEST_XDP_LIVE_FRAMES unknown before), a frame that fits a page, \
             and a context whose data_end is the frame's length"
        }
        Some(libc::E2BIG) => "batch_size above the kernel's 256, or a frame too large",
        Some(libc::ENODEV) => "no interface of that ifindex in the generator's namespace",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "denied: a capability the kernel asks for is missing, or a security module \
             (/sys/kernel/security/lsm) refuses it"
        }
        Some(ENOTSUPP) => "this program type has no test run",
        _ => "unexpected error",
    }
}

/// The generator thread: enter the pod's namespace, load the program, check
/// one run, say ready, then runs of [`REPEAT`] copies, one flow per run in
/// turn, until stopped. Returns the copies handed on.
pub fn flood_loop(spec: &Flood, ctl: &GenCtl<'_>) -> Result<u64> {
    enter_netns(&spec.ns)?;
    let idx = ifindex(&spec.ifname)?;
    let ebpf = load()?;
    let fd = program(&ebpf, "xdp_tx")?;
    let frames = spec.frames()?;
    let ingress = Some(Ingress {
        ifindex: idx,
        queue: 0,
    });
    let step = |frame: &[u8], repeat: u32| -> Result<()> {
        xdp_run::run_live(fd, frame, ingress, repeat, BATCH).map_err(|e| {
            let step = format!(
                "xdp_tx on {} B frames received on {} (ifindex {idx}, queue 0) in {}, \
                 repeat {repeat}, batch {BATCH}",
                frame.len(),
                spec.ifname,
                spec.ns
            );
            refused(&step, fd, frame, &e)
        })
    };
    // One copy first, so a refusal is the start's error, not the thread's.
    step(&frames[0], 1)?;
    let _ = ctl.ready.send(Ok(()));
    let mut sent: u64 = 1;
    ctl.sent.fetch_add(1, Ordering::Relaxed);
    let mut flow = 0;
    while ctl.running() {
        step(&frames[flow], REPEAT)?;
        sent += u64::from(REPEAT);
        ctl.sent.fetch_add(u64::from(REPEAT), Ordering::Relaxed);
        flow = (flow + 1) % frames.len();
    }
    Ok(sent)
}

/// The node's end of the sending pod's veth, made able to take XDP frames
/// for as long as this lives.
///
/// A veth sends XDP frames to its peer only when the peer has a NAPI
/// context: an XDP program of its own (ferry's, the xdp topology's
/// redirect) or GRO on. The kernel topologies' host ends have neither, so
/// their GRO is turned on for the live case and off again on drop; the
/// skb the node then builds from each frame goes through GRO (no UDP
/// aggregation here) before the bridge or the routing.
#[derive(Debug)]
pub struct PeerReady {
    node_ns: String,
    /// The node's end, if the pod's eth0 is a veth.
    peer: Option<String>,
    /// GRO was turned on by us: turn it off again.
    restore_gro: bool,
}

impl PeerReady {
    /// What was found and done, for the report.
    pub fn describe(&self) -> String {
        match (&self.peer, self.restore_gro) {
            (None, _) => "the pod's eth0 has no veth peer: nothing to prepare".into(),
            (Some(p), true) => {
                format!("{p} (node end) had no XDP program and GRO off: GRO on for the live case")
            }
            (Some(p), false) => {
                format!("{p} (node end) takes XDP frames as it is (XDP program or GRO)")
            }
        }
    }
}

impl Drop for PeerReady {
    fn drop(&mut self) {
        if let (Some(p), true) = (&self.peer, self.restore_gro) {
            let p = p.clone();
            let _ = in_netns(&self.node_ns, || ethtool::set_gro(&p, false));
        }
    }
}

/// `link_index` of `ip -j link show` output's first entry: a veth's peer
/// ifindex (in the peer's namespace).
fn link_index(json: &str) -> Result<Option<u64>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| E2eError::parse("ip -j link show", e.to_string()))?;
    Ok(v.get(0)
        .and_then(|l| l.get("link_index"))
        .and_then(Value::as_u64))
}

/// The name of the link of `ifindex` in `ip -j link show` output, and
/// whether an XDP program is attached to it.
fn link_by_index(json: &str, ifindex: u64) -> Result<Option<(String, bool)>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| E2eError::parse("ip -j link show", e.to_string()))?;
    Ok(v.as_array().and_then(|links| {
        links
            .iter()
            .find(|l| l.get("ifindex").and_then(Value::as_u64) == Some(ifindex))
            .and_then(|l| {
                let name = l.get("ifname")?.as_str()?.to_string();
                Some((name, l.get("xdp").is_some()))
            })
    }))
}

/// Make the node end of `pod_ns`'s `ifname` (a veth whose peer is in
/// `node_ns`) take XDP frames; see [`PeerReady`].
pub fn ready_peer(node_ns: &str, pod_ns: &str, ifname: &str) -> Result<PeerReady> {
    let mut ready = PeerReady {
        node_ns: node_ns.to_string(),
        peer: None,
        restore_gro: false,
    };
    let pod = sys::run_ok("ip", &["-n", pod_ns, "-j", "link", "show", ifname])?;
    let Some(peer_idx) = link_index(&pod)? else {
        return Ok(ready);
    };
    let node = sys::run_ok("ip", &["-n", node_ns, "-j", "link", "show"])?;
    let (peer, has_xdp) = link_by_index(&node, peer_idx)?.ok_or_else(|| {
        E2eError::setup(
            node_ns,
            format!("live generator: no link of ifindex {peer_idx} (the peer of {pod_ns}'s {ifname}) in the node namespace"),
        )
    })?;
    ready.peer = Some(peer.clone());
    if !has_xdp && !in_netns(node_ns, || ethtool::gro(&peer))? {
        in_netns(node_ns, || ethtool::set_gro(&peer, true))?;
        ready.restore_gro = true;
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_compiles_when_clang_is_present() {
        if crate::e2e::xdp::clang_present() {
            assert_eq!(&object().unwrap()[..4], b"\x7fELF");
        }
    }

    #[test]
    fn the_probe_frame_is_a_minimal_ethernet_frame() {
        let f = probe_frame();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
    }

    #[test]
    fn effective_capabilities_are_read_from_status() {
        let t = "Name:\tperf\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n";
        let eff = cap_eff(t).unwrap();
        assert_eq!(eff >> 24 & 1, 0, "CAP_SYS_RESOURCE off");
        assert_eq!(eff >> 39 & 1, 1, "CAP_BPF on");
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn every_refusal_names_a_cause() {
        for e in [
            libc::EINVAL,
            libc::E2BIG,
            libc::ENODEV,
            libc::EPERM,
            ENOTSUPP,
        ] {
            assert_ne!(errno_hint(Some(e)), "unexpected error", "errno {e}");
        }
        assert!(errno_hint(Some(libc::EINVAL)).contains("5.18"));
        assert_eq!(errno_hint(None), "unexpected error");
    }

    #[test]
    fn the_node_end_is_found_by_the_pods_link_index() {
        let pod = r#"[{"ifindex":2,"link_index":17,"ifname":"eth0","link_netnsid":0}]"#;
        assert_eq!(link_index(pod).unwrap(), Some(17));
        assert_eq!(
            link_index(r#"[{"ifindex":2,"ifname":"eth0"}]"#).unwrap(),
            None
        );
        let node = r#"[{"ifindex":1,"ifname":"lo"},
            {"ifindex":17,"ifname":"veth1a2b","xdp":{"mode":1,"prog":{"id":9}}},
            {"ifindex":18,"ifname":"veth3c4d"}]"#;
        assert_eq!(
            link_by_index(node, 17).unwrap(),
            Some(("veth1a2b".into(), true))
        );
        assert_eq!(
            link_by_index(node, 18).unwrap(),
            Some(("veth3c4d".into(), false))
        );
        assert_eq!(link_by_index(node, 99).unwrap(), None);
        assert!(link_index("not json").is_err());
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// A "node" and a "pod" namespace joined by a veth (`h0` in the node,
    /// `eth0` in the pod), both ends up; removed on drop.
    fn veth_pair(tag: &str) -> (sys::Netns, sys::Netns) {
        let pid = std::process::id();
        let node = sys::Netns::create(&format!("fpf-{pid}-{tag}-n")).unwrap();
        let pod = sys::Netns::create(&format!("fpf-{pid}-{tag}-p")).unwrap();
        let ip = |args: &[&str]| sys::run_ok("ip", args).unwrap();
        ip(&[
            "-n", &node.name, "link", "add", "h0", "type", "veth", "peer", "name", "eth0", "netns",
            &pod.name,
        ]);
        ip(&["-n", &node.name, "link", "set", "h0", "up"]);
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"]);
        (node, pod)
    }

    #[test]
    fn the_node_end_gets_gro_for_the_live_case_and_loses_it_after() {
        if !root() {
            eprintln!("skipped: needs root (network namespaces)");
            return;
        }
        let (node, pod) = veth_pair("lgro");
        let gro = || in_netns(&node.name, || ethtool::gro("h0")).unwrap();
        assert!(!gro(), "a new veth starts with GRO off");
        let ready = ready_peer(&node.name, &pod.name, "eth0").unwrap();
        assert!(gro());
        assert!(ready.describe().contains("h0") && ready.describe().contains("GRO on"));
        drop(ready);
        assert!(!gro(), "GRO back off once the case is over");
    }

    #[test]
    fn live_frames_leave_the_pods_eth0_or_the_refusal_says_why() {
        if !root() {
            eprintln!("skipped: needs root (network namespaces, bpf)");
            return;
        }
        if !crate::e2e::xdp::clang_present() {
            eprintln!("skipped: no clang");
            return;
        }
        if let Err(e) = probe() {
            // The refusal is the result on a kernel or sandbox without live
            // frames: it must say what was refused and how.
            let e = e.to_string();
            assert!(
                e.contains("BPF_F_TEST_XDP_LIVE_FRAMES") && e.contains("os error"),
                "{e}"
            );
            eprintln!("skipped: {e}");
            return;
        }
        let (node, pod) = veth_pair("lrun");
        let _ready = ready_peer(&node.name, &pod.name, "eth0").unwrap();
        let spec = Flood {
            ns: pod.name.clone(),
            ifname: "eth0".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: "10.99.250.2".parse().unwrap(),
            dst: "10.99.250.3".parse().unwrap(),
            dst_port: crate::e2e::traffic::FLOOD_PORT,
            frame_len: crate::e2e::traffic::MIN_FRAME,
            flows: 2,
            first_port: 10_000,
        };
        let before = crate::e2e::workload::counters(&node.name, "h0").unwrap();
        let f = crate::e2e::traffic::start(spec, crate::e2e::traffic::Generator::Live).unwrap();
        sys::sleep(std::time::Duration::from_millis(300)).unwrap();
        let sent = f.stop().unwrap();
        let after = crate::e2e::workload::counters(&node.name, "h0").unwrap();
        let got = (after.rx_packets + after.rx_dropped) - (before.rx_packets + before.rx_dropped);
        assert!(sent >= u64::from(REPEAT), "sent {sent}");
        assert!(got > 0, "the node end saw none of {sent} frames");
    }
}

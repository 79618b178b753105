//! Running a loaded XDP program on a crafted frame with
//! `BPF_PROG_TEST_RUN`, so tests can ask a program for its verdict without
//! any traffic: which frames go to an AF_XDP socket (`XDP_REDIRECT`) and
//! which pass to the kernel; and, with `BPF_F_TEST_XDP_LIVE_FRAMES`, to
//! send what it returns as real frames ([`run_live`]). An I/O adapter (the
//! `bpf` syscall), used by tests of the programs in `xdp-progs/` and by the
//! perf harness's live-frames generator.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_PROG_TEST_RUN` from linux/bpf.h.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (linux/bpf.h, kernel 5.18): the frames the
/// program returns `XDP_TX` or `XDP_REDIRECT` for are really sent.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Most frames a live test run hands on per batch (`TEST_XDP_MAX_BATCH`).
pub const LIVE_MAX_BATCH: u32 = 256;

/// XDP verdicts (enum xdp_action).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The `test` member of `union bpf_attr`.
#[repr(C, align(8))]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    /// Explicit, so it is zero: the kernel refuses an attribute whose bytes
    /// past the command's last field are not (`CHECK_ATTR`).
    _pad: u32,
}

/// `struct xdp_md` as the test run's context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Where the frame is received: an interface of the calling thread's
/// namespace and one of its RX queues.
#[derive(Debug, Clone, Copy)]
pub struct Ingress {
    pub ifindex: u32,
    pub queue: u32,
}

/// What the program did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// The XDP action returned.
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

/// The test run's context for `frame` received on `ingress`.
fn context(frame: &[u8], ingress: Option<Ingress>) -> XdpMd {
    XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ingress.map_or(0, |i| i.ifindex),
        rx_queue_index: ingress.map_or(0, |i| i.queue),
        ..Default::default()
    }
}

/// `bpf(BPF_PROG_TEST_RUN, attr)`.
fn test_run(attr: &mut TestRunAttr) -> io::Result<()> {
    // SAFETY: the callers fill `attr` as a valid BPF_PROG_TEST_RUN argument:
    // its pointers name buffers (input read, output written up to its stated
    // size) and a context that outlive the call; the size passed is the
    // struct's, which the kernel accepts as a prefix of `union bpf_attr`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Run the XDP program `prog` once on `frame` (at least 14 bytes: the
/// kernel refuses shorter input), received on `ingress` if given.
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], ingress: Option<Ingress>) -> io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let ctx = context(frame, ingress);
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        ..Default::default()
    };
    test_run(&mut attr)?;
    out.truncate((attr.data_size_out as usize).min(out.len()));
    Ok(RunResult {
        action: attr.retval,
        frame: out,
    })
}

/// Run `prog` `repeat` times on copies of `frame` received on `ingress` (an
/// interface of the calling thread's network namespace, which must be up;
/// none: the namespace's loopback, which sends nothing),
/// `batch` frames at a time (1..=[`LIVE_MAX_BATCH`]), with live frames: each
/// copy the program returns `XDP_TX` for leaves `ingress`'s interface (the
/// kernel turns `XDP_TX` into a redirect to that interface), `XDP_REDIRECT`
/// goes where the program sent it. No output is read back: the kernel
/// refuses `data_out` and `ctx_out` in this mode. A frame that cannot be
/// sent is freed without an error (e.g. a veth whose peer takes no XDP
/// frames): check the interface's counters. Kernel 5.18 or later; frames
/// up to a page less the kernel's headroom.
pub fn run_live(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ingress: Option<Ingress>,
    repeat: u32,
    batch: u32,
) -> io::Result<()> {
    let ctx = context(frame, ingress);
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<XdpMd>() as u32,
        ctx_in: &ctx as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: batch.clamp(1, LIVE_MAX_BATCH),
        ..Default::default()
    };
    test_run(&mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        // The test member of union bpf_attr ends with batch_size at 72.
        assert_eq!(std::mem::offset_of!(TestRunAttr, data_in), 16);
        assert_eq!(std::mem::offset_of!(TestRunAttr, ctx_in), 48);
        assert_eq!(std::mem::offset_of!(TestRunAttr, repeat), 32);
        assert_eq!(std::mem::offset_of!(TestRunAttr, flags), 64);
        assert_eq!(std::mem::offset_of!(TestRunAttr, cpu), 68);
        assert_eq!(std::mem::offset_of!(TestRunAttr, batch_size), 72);
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
        assert_eq!(std::mem::size_of::<XdpMd>(), 24);
        assert_eq!(std::mem::offset_of!(XdpMd, ingress_ifindex), 12);
        assert_eq!(std::mem::offset_of!(XdpMd, rx_queue_index), 16);
    }
}

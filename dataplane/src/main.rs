//! `ferry-dataplane`: pinned AF_XDP workers and the table-API server, in the
//! current network namespace. Stops on SIGINT/SIGTERM: workers stop, XDP
//! programs are detached, the socket file is removed, exit status 0.
//!
//! Failure policy: a worker that panics or ends unasked ends the process at
//! once with [`EXIT_WORKER_FAILED`] and a log line naming the worker. Its
//! queues are gone with it and every later update would time out at the
//! barrier; a fresh process (systemd `Restart=always`, or the pod's restart
//! policy) reattaches every port from ferryd's resync instead. The exit
//! closes every socket and XDP link, as a SIGKILL would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferry_dataplane::control::server;
use ferry_dataplane::control::{wait_for_end, Dataplane, DataplaneConfig, Ending};
use ferry_dataplane::engine::worker::{PollMode, MAX_BATCH};
use ferry_dataplane::io::afxdp::AfXdpBackend;
use ferry_dataplane::io::backend::NodeBackend;
use ferry_dataplane::io::tap::TapBackend;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-dataplane",
    version,
    about = "ferry's userspace AF_XDP dataplane"
)]
struct Cli {
    /// Unix socket of the table API (made mode 0600; only peers of uid 0 or the dataplane's own uid are served).
    #[arg(long, default_value = ferry_api::pod::DEFAULT_DATAPLANE_SOCKET)]
    socket: PathBuf,
    /// Number of worker threads (worker i serves queue i of every port).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Cores to pin the workers to, e.g. `0,1` (worker i -> entry i mod len).
    /// Default: worker i on core i while the workers leave a core to the
    /// pods, else not pinned (a pinned worker sharing its core with a busy
    /// pod is descheduled and drops).
    #[arg(long, value_delimiter = ',')]
    cpus: Option<Vec<usize>>,
    /// Frames received per queue per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Frames (2048 bytes each) in each worker's UMEM, shared by its
    /// sockets on every pod veth and the host port, at least 2048; memory
    /// = workers x this x 2 KiB, whatever the number of pods.
    #[arg(long, default_value_t = ferry_dataplane::io::afxdp::DEFAULT_FRAMES_PER_WORKER)]
    frames_per_worker: u32,
    /// Frames (2048 bytes each) in the UMEM of each worker's socket on the
    /// uplink (a UMEM of its own, so it can be zero-copy), at least 2048
    /// (twice the rings' 1024 descriptors).
    #[arg(long, default_value_t = 2048)]
    frames_per_queue: u32,
    /// Frames (66 KiB each, room for a 64 KiB GSO frame) per worker queue
    /// on each tap port; memory per tap = workers x this x 66 KiB.
    #[arg(long, default_value_t = 128)]
    tap_frames_per_queue: usize,
    /// How an idle worker waits: `adaptive` keeps polling after traffic
    /// (yielding the core between passes) for a window that doubles when
    /// traffic came back within it and halves when not, up to
    /// --idle-spin-us, then sleeps in poll(2); `busy` never sleeps (a whole
    /// core per worker); `interrupt` sleeps at the first empty pass.
    #[arg(long, default_value = "adaptive", value_parser = parse_poll_mode)]
    poll_mode: PollMode,
    /// The adaptive window's maximum, in microseconds (0: no spinning,
    /// as `interrupt`).
    #[arg(long, default_value_t = 100)]
    idle_spin_us: u64,
    /// Entries of the connection tracking table of service flows and of
    /// flows network policy allowed (two per flow; about 100 bytes each,
    /// allocated with the first service or endpoint policy).
    #[arg(long, default_value_t = ferry_dataplane::control::DEFAULT_CONNTRACK_MAX)]
    conntrack_max: usize,
    /// How long an idle worker sleeps in poll(2), in milliseconds.
    #[arg(long, default_value_t = 10)]
    idle_ms: u64,
    /// Log level: off|error|warn|info|debug|trace. RUST_LOG, when set,
    /// overrides it (and may name modules, e.g. `ferry_dataplane::engine::worker=debug`).
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: log::LevelFilter,
}

/// Exit status when a worker died (EX_SOFTWARE).
const EXIT_WORKER_FAILED: i32 = 70;

fn parse_poll_mode(s: &str) -> Result<PollMode, String> {
    PollMode::from_name(s).ok_or_else(|| format!("{s:?} is not one of busy|adaptive|interrupt"))
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not one of off|error|warn|info|debug|trace"))
}

/// Block SIGINT/SIGTERM in this thread (and every thread spawned after), so
/// they are taken only by `wait_for_signal`.
fn block_signals() -> Result<libc::sigset_t> {
    // SAFETY: `set` is a plain C struct initialised by sigemptyset before
    // use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set and `sig` a valid out
        // pointer for the duration of the call.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        if rc == 0 {
            return sig;
        }
    }
}

/// A thread that takes SIGINT/SIGTERM (blocked everywhere) and passes
/// each on, so main can wait for a signal and a worker failure at once.
fn spawn_signal_thread(set: libc::sigset_t) -> Result<crossbeam::channel::Receiver<i32>> {
    let (tx, rx) = crossbeam::channel::unbounded();
    std::thread::Builder::new()
        .name("ferry-signals".into())
        .spawn(move || while tx.send(wait_for_signal(&set)).is_ok() {})
        .context("starting the signal thread")?;
    Ok(rx)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or(cli.log_level.as_str()),
    )
    .format_timestamp_millis()
    .init();
    if cli.workers == 0 || cli.workers > ferry_dataplane::io::afxdp::MAX_QUEUES as usize {
        bail!(
            "--workers must be between 1 and {}",
            ferry_dataplane::io::afxdp::MAX_QUEUES
        );
    }
    if cli.batch == 0 || cli.batch > MAX_BATCH {
        bail!("--batch must be between 1 and {MAX_BATCH}");
    }
    let signals = block_signals()?;

    let mut cfg = DataplaneConfig::new(cli.workers, cli.cpus.as_deref(), cli.batch);
    cfg.idle_timeout = std::time::Duration::from_millis(cli.idle_ms.max(1));
    cfg.idle_spin = std::time::Duration::from_micros(cli.idle_spin_us.min(1_000_000));
    cfg.poll_mode = cli.poll_mode;
    cfg.conntrack_max = cli.conntrack_max;
    let mut xdp = AfXdpBackend::default();
    xdp.frames_per_queue = cli.frames_per_queue;
    xdp.frames_per_worker = cli.frames_per_worker;
    let backend = NodeBackend {
        xdp,
        tap: TapBackend {
            frames_per_queue: cli.tap_frames_per_queue,
        },
    };
    // Parse the kernel's BTF for the XDP loader while ferryd connects and
    // reconciles (the first port open waits for it if it is not done).
    std::thread::spawn(ferry_dataplane::io::afxdp::prepare_loader);
    let listener = server::bind(&cli.socket).context("table-API socket")?;
    let dataplane = Dataplane::start(backend, &cfg).context("starting workers")?;
    let failures = dataplane.failures();
    let dataplane = Arc::new(Mutex::new(dataplane));
    let stop = Arc::new(AtomicBool::new(false));
    let server = server::spawn(listener, Arc::clone(&dataplane), Arc::clone(&stop))?;
    log::info!(
        "ferry-dataplane serving {} with {} worker(s) on cpus {:?}, batch {}, {} frames per worker",
        cli.socket.display(),
        cfg.workers,
        cfg.cpus,
        cfg.batch,
        cli.frames_per_worker
    );

    let signals = spawn_signal_thread(signals)?;
    let sig = match wait_for_end(&signals, &failures) {
        Ending::Signal(sig) => sig,
        Ending::WorkerFailed(failure) => {
            log::error!(
                "{failure}; exiting with status {EXIT_WORKER_FAILED} so that the dataplane is \
                 restarted (ferryd then resyncs it)"
            );
            std::process::exit(EXIT_WORKER_FAILED);
        }
    };
    log::info!("signal {sig}: shutting down");
    stop.store(true, Ordering::Relaxed);
    if server.join().is_err() {
        log::error!("the server thread panicked");
    }
    dataplane
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .shutdown();
    if let Err(e) = std::fs::remove_file(&cli.socket) {
        log::warn!("removing {}: {e}", cli.socket.display());
    }
    log::info!("stopped");
    Ok(())
}

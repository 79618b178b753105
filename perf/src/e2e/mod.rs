//! The end-to-end harness: build every topology in network namespaces of its
//! own, run the same workloads through each (warm-up, then interleaved
//! repetitions A B C D A B C D ...), tear everything down and write
//! results.json, results.md and results.png.

pub mod chart;
pub mod cross;
pub mod error;
pub mod ethtool;
pub mod live;
pub mod parse;
pub mod policies;
pub mod report;
pub mod services;
pub mod stats;
pub mod sys;
pub mod topo;
pub mod traffic;
pub mod workload;
pub mod xdp;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use cross::Overlay;
use error::{E2eError, Result};
use report::{Failure, Report, Sample};
use topo::{Kind, Topology};
use traffic::Generator;
use workload::{Family, Params, Target, Workload};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Results directory; default `perf-results/<timestamp>/`.
    pub out: Option<PathBuf>,
    /// Repetitions (default 3, quick 2).
    pub reps: Option<u32>,
    /// Topologies among `ferry`, `ferry-tap`, `ferry-tap-2w`, `bridge`, `ptp`, `xdp`
    /// (one node) and the two-node [`report::CROSS_TOPOLOGIES`].
    pub topologies: Vec<String>,
    /// Where ferry's binaries are (default target/release).
    pub bin_dir: PathBuf,
    /// Pod counts of the scale cases, beyond the 2 of the main cases.
    pub scale_pods: Vec<usize>,
    /// Also measure the 64 B workload with a second ferry instance of this many workers.
    pub extra_ferry_workers: Option<u32>,
    /// Generator threads of the UDP workloads (default 1).
    pub senders: u32,
    /// The generators every main-case UDP workload runs with, in turn
    /// (default AF_PACKET only); the scale and service cases use the first.
    /// Live-frame cases are labelled `<workload>-live`.
    pub generators: Vec<Generator>,
    /// Main-case workloads to run, by label (`tcp-1`, `udp-64B`, ...);
    /// empty: all of [`WORKLOADS`].
    pub workloads: Vec<String>,
    /// Extra ferry-dataplane arguments of every ferry topology (tuning runs).
    pub dataplane_args: Vec<String>,
    /// The families every main-case workload runs over, in turn (default
    /// IPv4 only). With IPv6 the single-node topologies are built
    /// dual-stack; IPv6 cases are labelled `<workload>-v6`.
    pub families: Vec<Family>,
    /// Service counts of the service cases (`--services 10,1000`; empty:
    /// none): the flood and the request/response pair sent to a ClusterIP
    /// among that many services, labelled `<workload>-svcN`.
    pub services: Vec<usize>,
    /// Rules per direction of the policy cases (`--policy-rules 100`;
    /// `None`: no policy case): udp-64B and tcp-rr with and without one
    /// NetworkPolicy selecting every pod, labelled `<workload>-polN` and
    /// `<workload>-pol0`, on ferry's one-node topologies.
    pub policy_rules: Option<usize>,
}

impl Options {
    pub fn new(quick: bool) -> Options {
        Options {
            quick,
            out: None,
            reps: None,
            topologies: ["ferry", "bridge", "ptp", "xdp"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            bin_dir: topo::default_bin_dir(),
            scale_pods: vec![16, 64],
            extra_ferry_workers: Some(2),
            senders: 1,
            generators: vec![Generator::AfPacket],
            workloads: Vec::new(),
            dataplane_args: Vec::new(),
            families: vec![Family::V4],
            services: Vec::new(),
            policy_rules: None,
        }
    }

    fn params(&self) -> Params {
        if self.quick {
            Params {
                tcp_secs: 1,
                udp_warmup: Duration::from_millis(200),
                udp_window: Duration::from_millis(600),
                ping_count: 50,
                rr_window: Duration::from_millis(600),
                senders: self.senders,
                generator: self
                    .generators
                    .first()
                    .copied()
                    .unwrap_or(Generator::AfPacket),
            }
        } else {
            Params {
                tcp_secs: 4,
                udp_warmup: Duration::from_millis(500),
                udp_window: Duration::from_secs(3),
                ping_count: 300,
                rr_window: Duration::from_secs(2),
                senders: self.senders,
                generator: self
                    .generators
                    .first()
                    .copied()
                    .unwrap_or(Generator::AfPacket),
            }
        }
    }
}

/// Most pods one topology can hold (each gets an address of a /24).
pub const MAX_PODS: usize = 250;

/// The workloads of the main cases, in run order.
pub const WORKLOADS: [Workload; 6] = [
    Workload::Tcp(1),
    Workload::Tcp(4),
    Workload::Udp(traffic::MIN_FRAME),
    Workload::Udp(1400),
    Workload::Ping,
    Workload::TcpRr,
];

/// The workloads of the two-node topologies (pod on node A to pod on node
/// B): the main cases but the 1400 B flood.
pub const CROSS_WORKLOADS: [Workload; 5] = [
    Workload::Tcp(1),
    Workload::Tcp(4),
    Workload::Udp(traffic::MIN_FRAME),
    Workload::Ping,
    Workload::TcpRr,
];

/// What a finished run left.
#[derive(Debug)]
pub struct Outcome {
    pub dir: PathBuf,
    pub failures: usize,
    pub markdown: String,
}

/// `YYYYmmddTHHMMSSZ` for a time since the epoch (UTC, proleptic Gregorian).
pub fn timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn planned(opts: &Options) -> Result<Vec<(String, Kind)>> {
    let mut v = Vec::new();
    for t in &opts.topologies {
        match t.as_str() {
            "ferry" => {
                v.push(("ferry".to_string(), Kind::Ferry { workers: 1 }));
                if let Some(w) = opts.extra_ferry_workers.filter(|w| *w > 1) {
                    v.push((format!("ferry-{w}w"), Kind::Ferry { workers: w }));
                }
            }
            "ferry-tap" => v.push(("ferry-tap".into(), Kind::FerryTap { workers: 1 })),
            "ferry-tap-2w" => v.push(("ferry-tap-2w".into(), Kind::FerryTap { workers: 2 })),
            "bridge" => v.push(("bridge".into(), Kind::Bridge)),
            "ptp" => v.push(("ptp".into(), Kind::Ptp)),
            "xdp" => v.push(("xdp".into(), Kind::Xdp)),
            "ferry-vxlan" | "ferry-vxlan-tap" | "ferry-direct" | "kernel-vxlan" | "kernel-hostgw" => {
                let overlay = if t.ends_with("direct") || t.ends_with("hostgw") {
                    Overlay::Direct
                } else {
                    Overlay::Vxlan
                };
                let kind = if t.starts_with("ferry") {
                    Kind::FerryCross {
                        overlay,
                        tap: t.ends_with("-tap"),
                    }
                } else {
                    Kind::KernelCross { overlay }
                };
                v.push((t.clone(), kind));
            }
            other => return Err(E2eError::setup(
                other,
                "unknown topology (choose among ferry, ferry-tap, ferry-tap-2w, bridge, ptp, xdp; \
                 two nodes: ferry-vxlan, ferry-vxlan-tap, ferry-direct, kernel-vxlan, kernel-hostgw)",
            )),
        }
    }
    if v.is_empty() {
        return Err(E2eError::setup("-", "no topology selected"));
    }
    if opts.families.contains(&Family::V6) {
        if let Some((name, _)) = v.iter().find(|(_, k)| k.two_node()) {
            return Err(E2eError::setup(
                name,
                "IPv6 across nodes is not built yet: two-node topologies run with --family 4 only",
            ));
        }
    }
    if !opts.services.is_empty() && opts.families == [Family::V6] {
        return Err(E2eError::setup(
            "-",
            "the service cases are IPv4 (ClusterIPs in 10.96.0.0/12): add --family 4 or both",
        ));
    }
    if opts.policy_rules.is_some() && opts.families == [Family::V6] {
        return Err(E2eError::setup(
            "-",
            "the policy cases are IPv4: add --family 4 or both",
        ));
    }
    if let Some(n) = opts.scale_pods.iter().find(|n| **n > MAX_PODS) {
        return Err(E2eError::setup(
            "-",
            format!("{n} pods: at most {MAX_PODS} fit a topology's /24"),
        ));
    }
    Ok(v)
}

/// Root and the tools every command needs (`ip`, `ping`, and `extra`), or
/// an error saying what to install; `what` names the command.
pub fn preflight_root(what: &str, extra: &[(&str, &str, &str)]) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(E2eError::setup(
            "-",
            format!("{what} needs root (network namespaces, XDP)"),
        ));
    }
    for (tool, arg, pkg) in [("ip", "-V", "iproute2"), ("ping", "-V", "iputils-ping")]
        .iter()
        .chain(extra)
    {
        let ok = sys::run(tool, &[arg]).map(|o| o.ok()).unwrap_or(false);
        if !ok {
            return Err(E2eError::setup(
                "-",
                format!("`{tool}` is missing: apt-get install {pkg}"),
            ));
        }
    }
    Ok(())
}

fn preflight(opts: &Options) -> Result<()> {
    preflight_root("perf e2e", &[("iperf3", "--version", "iperf3")])?;
    let kernel_services =
        !opts.services.is_empty() && opts.topologies.iter().any(|t| t == "bridge" || t == "ptp");
    if kernel_services {
        preflight_root(
            "perf e2e --services",
            &[("iptables-restore", "--version", "iptables")],
        )?;
    }
    if opts.topologies.iter().any(|t| t.starts_with("ferry")) {
        topo::check_ferry_bins(&opts.bin_dir)?;
    }
    if opts.generators.contains(&Generator::Live) {
        // Never a silent fallback to the other generator: a kernel that
        // refuses live frames stops the run here, saying why.
        live::probe().map_err(|e| E2eError::setup("-", format!("--generator live: {e}")))?;
    }
    Ok(())
}

fn machine_meta(opts: &Options, params: &Params, reps: u32) -> BTreeMap<String, Value> {
    let read = |p: &str| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let iperf = sys::run("iperf3", &["--version"])
        .map(|o| o.stdout.lines().next().unwrap_or("").to_string());
    let mut m = BTreeMap::new();
    m.insert("started".into(), json!(timestamp(SystemTime::now())));
    m.insert(
        "mode".into(),
        json!(if opts.quick { "quick" } else { "default" }),
    );
    m.insert(
        "cores".into(),
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)),
    );
    m.insert("cpu".into(), json!(cpu_model));
    m.insert("kernel".into(), json!(read("/proc/sys/kernel/osrelease")));
    m.insert("iperf3".into(), json!(iperf.unwrap_or_default()));
    m.insert("repetitions".into(), json!(reps));
    if !opts.dataplane_args.is_empty() {
        m.insert(
            "dataplane_args".into(),
            json!(opts.dataplane_args.join(" ")),
        );
    }
    if !opts.workloads.is_empty() {
        m.insert("workloads".into(), json!(opts.workloads.join(",")));
    }
    if !opts.services.is_empty() {
        let counts: Vec<String> = opts.services.iter().map(|n| n.to_string()).collect();
        m.insert(
            "services".into(),
            json!(format!(
                "service cases <workload>-svcN for N = {}: N Services (UDP and TCP port {} each, ClusterIP 10.96.x.y, one endpoint: pod 1's flood port {} / request-response port {}); the workload goes to the last service's ClusterIP (the last rules of kube-proxy's KUBE-SERVICES); measured after the main and scale cases, N ascending within each repetition",
                counts.join(", "),
                services::SERVICE_PORT,
                traffic::FLOOD_PORT,
                workload::RR_PORT
            )),
        );
    }
    if let Some(n) = opts.policy_rules {
        m.insert(
            "policy".into(),
            json!(format!(
                "policy cases <workload>-pol0 / -pol{n}: without, then with one NetworkPolicy in namespace {} selecting every pod, {n} ingress and {n} egress rules, the one admitting the workloads (the pods' /24 on UDP {} and TCP {}) last; ferry's one-node topologies, after the scale cases",
                policies::NAMESPACE,
                traffic::FLOOD_PORT,
                workload::RR_PORT
            )),
        );
    }
    if opts.families != [Family::V4] {
        let f: Vec<&str> = opts
            .families
            .iter()
            .map(|f| match f {
                Family::V4 => "IPv4",
                Family::V6 => "IPv6 (cases *-v6)",
            })
            .collect();
        m.insert("families".into(), json!(f.join(", ")));
    }
    m.insert(
        "durations".into(),
        json!({
            "tcp_s": params.tcp_secs,
            "udp_warmup_s": params.udp_warmup.as_secs_f64(),
            "udp_window_s": params.udp_window.as_secs_f64(),
            "ping_count": params.ping_count,
            "ping_interval_s": 0.01,
            "rr_window_s": params.rr_window.as_secs_f64(),
            "udp_senders": params.senders,
        }),
    );
    m.insert(
        "frames".into(),
        json!("udp-64B = 60-byte frames (64 B on the wire with FCS); udp-1400B = 1400-byte frames; over IPv6 udp-64B-v6 = 62-byte frames (14 + 40 + 8, no payload: the smallest; 66 B on the wire), UDP checksum set; 8 UDP flows per sender thread, to pod 1's port 9, sunk there by a UDP socket never read (no ICMP port unreachable per frame)"),
    );
    let gens: Vec<&str> = opts.generators.iter().map(|g| g.name()).collect();
    m.insert("generators".into(), json!(gens.join(",")));
    m.insert(
        "generator_notes".into(),
        json!(format!(
            "afpacket (cases as labelled, no suffix): per sender thread an AF_PACKET socket in the sending pod (sendmmsg of 256 frames, qdisc bypass); offered_mpps = the sending pod's eth0 tx_packets + tx_dropped. live (cases *-live): per sender thread BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES of an XDP_TX program on the sending pod's eth0 (repeat {}, batch {}, one flow per run in turn), frames leave eth0 as xdp_frames to its veth peer; offered_mpps = the runs' own count; a node end with neither an XDP program nor GRO gets GRO on for the live case. sender_if_mpps = eth0's tx_packets + tx_dropped for both. Scale and service cases use the first generator",
            live::REPEAT,
            live::BATCH
        )),
    );
    m
}

/// Build, measure, tear down, report.
pub fn run(opts: &Options) -> Result<Outcome> {
    let started = Instant::now();
    preflight(opts)?;
    sys::install_signal_handlers()?;
    let params = opts.params();
    let reps = opts.reps.unwrap_or(if opts.quick { 2 } else { 3 }).max(1);
    let plan = planned(opts)?;
    let chosen = selected_workloads(&opts.workloads)?;
    let order: Vec<String> = plan.iter().map(|(n, _)| n.clone()).collect();
    let mut meta = machine_meta(opts, &params, reps);
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("perf-results").join(timestamp(SystemTime::now())));
    let run_tag = format!("{}", std::process::id() % 100_000);
    let mut failures: Vec<Failure> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    let mut topo_notes: BTreeMap<String, Value> = BTreeMap::new();

    let measured = (|| -> Result<()> {
        // Setup.
        let t = Instant::now();
        let mut topos: Vec<Topology> = Vec::new();
        for (name, kind) in &plan {
            eprintln!("perf: building {name}");
            let built = Topology::build(
                name,
                *kind,
                &run_tag,
                2,
                &opts.bin_dir,
                &opts.dataplane_args,
                opts.families.contains(&Family::V6),
            )
            .and_then(|mut tp| tp.start_iperf_server().map(|_| tp));
            match built {
                Ok(tp) => topos.push(tp),
                Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
                Err(e) => {
                    eprintln!("perf: {name} left out: {e}");
                    topo_notes.insert(
                        name.clone(),
                        json!({"description": kind.describe(), "error": e.to_string()}),
                    );
                    failures.push(Failure {
                        topology: name.clone(),
                        case: "setup".into(),
                        rep: None,
                        error: e.to_string(),
                    });
                }
            }
        }
        phases.insert("setup_s".into(), t.elapsed().as_secs_f64());
        if topos.is_empty() {
            return Err(E2eError::setup("-", "no topology could be built"));
        }

        // Warm-up: resolves neighbours, starts caches, wakes the daemons.
        let t = Instant::now();
        let warm = Params {
            tcp_secs: 1,
            udp_warmup: Duration::from_millis(100),
            udp_window: Duration::from_millis(200),
            ping_count: 10,
            rr_window: Duration::from_millis(200),
            senders: params.senders,
            generator: params.generator,
        };
        for tp in &topos {
            eprintln!("perf: warming up {}", tp.name);
            for &f in &opts.families {
                // Ping, 1 s TCP, a short flood with each generator, a short
                // request/response.
                let mut runs = vec![
                    (Workload::Ping, warm.generator),
                    (Workload::Tcp(1), warm.generator),
                ];
                runs.extend(
                    generators_of(Workload::Udp(traffic::MIN_FRAME), &opts.generators)
                        .into_iter()
                        .map(|g| (Workload::Udp(traffic::MIN_FRAME), g)),
                );
                runs.push((Workload::TcpRr, warm.generator));
                for (w, generator) in runs {
                    let warm = Params { generator, ..warm };
                    if let Err(e) = workload::run(w, f, tp, &warm) {
                        if matches!(e, E2eError::Interrupted) {
                            return Err(e);
                        }
                        eprintln!("perf: warm-up: {e}");
                        failures.push(Failure {
                            topology: tp.name.clone(),
                            case: format!("warm-up {}", case_label(w, f, generator)),
                            rep: None,
                            error: e.to_string(),
                        });
                    }
                }
            }
        }
        let c0 = workload::cpu_now()?;
        let i0 = Instant::now();
        sys::sleep(Duration::from_secs(1))?;
        let idle = workload::cpu_seconds(c0, workload::cpu_now()?) / i0.elapsed().as_secs_f64();
        meta.insert("idle_busy_cores".into(), json!(idle));
        phases.insert("warmup_s".into(), t.elapsed().as_secs_f64());

        // Main cases, interleaved: for each repetition, each workload runs
        // over each family on every topology in turn (a workload's IPv4 and
        // IPv6 cases side by side in time).
        let t = Instant::now();
        let only_64 = |tp: &Topology| matches!(tp.kind, Kind::Ferry { workers } if workers > 1);
        for rep in 0..reps {
            for &w in &chosen {
                for &f in &opts.families {
                    for tp in topos.iter_mut() {
                        if only_64(tp) && w != Workload::Udp(traffic::MIN_FRAME)
                            || tp.kind.two_node() && !CROSS_WORKLOADS.contains(&w)
                        {
                            continue;
                        }
                        for generator in generators_of(w, &opts.generators) {
                            let case = case_label(w, f, generator);
                            let params = Params {
                                generator,
                                ..params
                            };
                            measure(tp, w, f, rep, case, &params, &mut samples, &mut failures)?;
                        }
                    }
                }
            }
            eprintln!(
                "perf: repetition {} of {reps} done ({:.0} s)",
                rep + 1,
                started.elapsed().as_secs_f64()
            );
        }
        phases.insert("main_s".into(), t.elapsed().as_secs_f64());

        // Scale: the 64 B workload with more pods present (they only exist).
        let t = Instant::now();
        for &n in &opts.scale_pods {
            let mut grown = Vec::new();
            for (i, tp) in topos.iter_mut().enumerate() {
                // Two-node topologies: the pods across are the point, not their count.
                if only_64(tp) || tp.kind.two_node() {
                    continue;
                }
                let g = Instant::now();
                match tp.ensure_pods(n) {
                    Ok(()) => {
                        eprintln!(
                            "perf: {} has {n} pods ({:.1} s)",
                            tp.name,
                            g.elapsed().as_secs_f64()
                        );
                        grown.push(i);
                    }
                    Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
                    Err(e) => failures.push(Failure {
                        topology: tp.name.clone(),
                        case: format!("pods={n}"),
                        rep: None,
                        error: e.to_string(),
                    }),
                }
            }
            let case = format!(
                "{} pods={n}",
                case_label(
                    Workload::Udp(traffic::MIN_FRAME),
                    Family::V4,
                    params.generator
                )
            );
            for rep in 0..reps {
                for &i in &grown {
                    measure(
                        &mut topos[i],
                        Workload::Udp(traffic::MIN_FRAME),
                        Family::V4,
                        rep,
                        case.clone(),
                        &params,
                        &mut samples,
                        &mut failures,
                    )?;
                }
            }
        }
        phases.insert("scale_s".into(), t.elapsed().as_secs_f64());

        // Policy cases: per repetition, without the policy then with it,
        // each workload on every ferry topology in turn; the first time it
        // is in place, a check that it admitted the workloads.
        let t = Instant::now();
        // The workloads of the service and the policy cases.
        let svc_workloads: Vec<Workload> = chosen
            .iter()
            .copied()
            .filter(Workload::through_services)
            .collect();
        if let Some(rules) = opts.policy_rules.filter(|_| !svc_workloads.is_empty()) {
            let mut left_out: Vec<usize> = Vec::new();
            for rep in 0..reps {
                for n in [0, rules] {
                    for (i, tp) in topos.iter_mut().enumerate() {
                        if !tp.polices() || tp.kind.two_node() || left_out.contains(&i) {
                            continue;
                        }
                        let g = Instant::now();
                        if let Err(e) = tp.ensure_policy(n) {
                            if matches!(e, E2eError::Interrupted) {
                                return Err(e);
                            }
                            eprintln!("perf: {} left out of the policy cases: {e}", tp.name);
                            left_out.push(i);
                            failures.push(Failure {
                                topology: tp.name.clone(),
                                case: format!("policy={n}"),
                                rep: Some(rep),
                                error: e.to_string(),
                            });
                            continue;
                        }
                        if rep == 0 && n > 0 {
                            eprintln!(
                                "perf: {} polices its pods with {n} rules each way ({:.1} s)",
                                tp.name,
                                g.elapsed().as_secs_f64()
                            );
                        }
                        for &w in &svc_workloads {
                            if only_64(tp) && w != Workload::Udp(traffic::MIN_FRAME) {
                                continue;
                            }
                            let case = policies::case(&w.label(), n);
                            measure(
                                tp,
                                w,
                                Family::V4,
                                rep,
                                case,
                                &params,
                                &mut samples,
                                &mut failures,
                            )?;
                        }
                        if rep == 0 && n > 0 {
                            match tp.policy_path_check() {
                                Ok(c) => {
                                    tp.notes.insert("policy_check".into(), json!(c));
                                }
                                Err(e) => failures.push(Failure {
                                    topology: tp.name.clone(),
                                    case: format!("policy={n} check"),
                                    rep: Some(rep),
                                    error: e.to_string(),
                                }),
                            }
                        }
                    }
                }
            }
            for tp in topos.iter_mut().filter(|tp| tp.polices()) {
                let _ = tp.ensure_policy(0);
            }
        }
        phases.insert("policy_s".into(), t.elapsed().as_secs_f64());

        // Services: after everything else, since loading a nat table turns
        // conntrack on in the kernel topology's node namespace for all its
        // traffic. Per repetition, N ascending: services 0..N in place on
        // every topology, then each workload on each in turn; the first
        // time an N is in place, a short run through the service and a
        // check that it went through the translation.
        let t = Instant::now();
        let mut left_out: Vec<(usize, usize)> = Vec::new();
        let mut checks: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for rep in 0..reps {
            if svc_workloads.is_empty() || opts.services.is_empty() {
                break;
            }
            for &n in &opts.services {
                for (i, tp) in topos.iter_mut().enumerate() {
                    if !tp.serves_services() || left_out.contains(&(i, n)) {
                        continue;
                    }
                    let g = Instant::now();
                    let vip = services::cluster_ip(services::measured(n));
                    let r = tp.ensure_services(n).and_then(|_| {
                        if rep > 0 {
                            return Ok(None);
                        }
                        for w in [Workload::Udp(traffic::MIN_FRAME), Workload::TcpRr] {
                            workload::run_to(w, Family::V4, Target::Service(vip), tp, &warm)?;
                        }
                        tp.service_path_check().map(Some)
                    });
                    match r {
                        Ok(check) => {
                            eprintln!(
                                "perf: {} has {n} services ({:.1} s){}",
                                tp.name,
                                g.elapsed().as_secs_f64(),
                                check
                                    .as_deref()
                                    .map(|c| format!(": {c}"))
                                    .unwrap_or_default()
                            );
                            if let Some(c) = check {
                                checks
                                    .entry(tp.name.clone())
                                    .or_default()
                                    .insert(n.to_string(), c);
                            }
                        }
                        Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
                        Err(e) => {
                            eprintln!("perf: {} left out of the {n}-service cases: {e}", tp.name);
                            left_out.push((i, n));
                            failures.push(Failure {
                                topology: tp.name.clone(),
                                case: format!("services={n}"),
                                rep: Some(rep),
                                error: e.to_string(),
                            });
                        }
                    }
                }
                let vip = services::cluster_ip(services::measured(n));
                for &w in &svc_workloads {
                    for (i, tp) in topos.iter_mut().enumerate() {
                        if !tp.serves_services()
                            || left_out.contains(&(i, n))
                            || only_64(tp) && w != Workload::Udp(traffic::MIN_FRAME)
                        {
                            continue;
                        }
                        let case = services::case(&case_label(w, Family::V4, params.generator), n);
                        measure_in(
                            tp,
                            w,
                            Family::V4,
                            Target::Service(vip),
                            rep,
                            case,
                            &params,
                            &mut samples,
                            &mut failures,
                        )?;
                    }
                }
            }
            eprintln!(
                "perf: service repetition {} of {reps} done ({:.0} s)",
                rep + 1,
                started.elapsed().as_secs_f64()
            );
        }
        phases.insert("services_s".into(), t.elapsed().as_secs_f64());

        for tp in &topos {
            let mut notes = json!(tp.notes);
            notes["pods_at_end"] = json!(tp.pods.len());
            if let Some(c) = checks.get(&tp.name) {
                notes["services_check"] = json!(c);
            }
            topo_notes.insert(tp.name.clone(), notes);
        }
        let t = Instant::now();
        drop(topos);
        phases.insert("teardown_s".into(), t.elapsed().as_secs_f64());
        Ok(())
    })();
    // On error everything built was already dropped (removed) on the way out.
    measured?;
    phases.insert("total_s".into(), started.elapsed().as_secs_f64());
    meta.insert("phase_seconds".into(), json!(phases));

    let summary = report::summarize_samples(&samples);
    let report = Report {
        meta,
        topologies: topo_notes,
        order,
        samples,
        failures,
        summary,
    };
    let markdown = report::render_markdown(&report);
    write_outputs(&out_dir, &report, &markdown)?;
    Ok(Outcome {
        dir: out_dir,
        failures: report.failures.len(),
        markdown,
    })
}

/// The generators `w` runs with: each of `chosen` for the UDP floods, one
/// (whichever: it makes no frames) for the others.
fn generators_of(w: Workload, chosen: &[Generator]) -> Vec<Generator> {
    match w {
        Workload::Udp(_) if !chosen.is_empty() => chosen.to_vec(),
        _ => vec![Generator::AfPacket],
    }
}

/// The case label of `w` over `family` made by `generator`: the family's
/// label, `-live` added for live-frame floods only.
fn case_label(w: Workload, family: Family, generator: Generator) -> String {
    match w {
        Workload::Udp(_) => generator.case(&family.case(w)),
        _ => family.case(w),
    }
}

/// The main-case workloads named in `labels` (all when empty), in run
/// order; an unknown label is an error naming the known ones.
fn selected_workloads(labels: &[String]) -> Result<Vec<Workload>> {
    if let Some(bad) = labels
        .iter()
        .find(|l| !WORKLOADS.iter().any(|w| w.label() == **l))
    {
        let known: Vec<String> = WORKLOADS.iter().map(|w| w.label()).collect();
        return Err(E2eError::setup(
            "-",
            format!("unknown workload {bad:?} (known: {})", known.join(", ")),
        ));
    }
    Ok(WORKLOADS
        .into_iter()
        .filter(|w| labels.is_empty() || labels.contains(&w.label()))
        .collect())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one case and the two lists it adds to"
)]
fn measure(
    tp: &mut Topology,
    w: Workload,
    family: Family,
    rep: u32,
    case: String,
    params: &Params,
    samples: &mut Vec<Sample>,
    failures: &mut Vec<Failure>,
) -> Result<()> {
    measure_in(
        tp,
        w,
        family,
        Target::Pod,
        rep,
        case,
        params,
        samples,
        failures,
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "one case and the two lists it adds to"
)]
fn measure_in(
    tp: &mut Topology,
    w: Workload,
    family: Family,
    target: Target,
    rep: u32,
    case: String,
    params: &Params,
    samples: &mut Vec<Sample>,
    failures: &mut Vec<Failure>,
) -> Result<()> {
    sys::check_interrupt()?;
    let r = tp
        .check_alive()
        .and_then(|_| workload::run_to(w, family, target, tp, params));
    match r {
        Ok(metrics) => samples.push(Sample {
            topology: tp.name.clone(),
            case,
            rep,
            metrics,
        }),
        Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
        Err(e) => {
            eprintln!("perf: {e}");
            failures.push(Failure {
                topology: tp.name.clone(),
                case,
                rep: Some(rep),
                error: e.to_string(),
            });
        }
    }
    Ok(())
}

fn write_outputs(dir: &PathBuf, report: &Report, markdown: &str) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| E2eError::io(format!("mkdir {}", dir.display()), e))?;
    let json = serde_json::to_string_pretty(report).map_err(|e| E2eError::Report(e.to_string()))?;
    let w = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        fs::write(&p, data).map_err(|e| E2eError::io(format!("write {}", p.display()), e))
    };
    w("results.json", json.as_bytes())?;
    w("results.md", markdown.as_bytes())?;
    chart::render(report, &dir.join("results.png"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723); // 2000-02-29 01:02:03
        assert_eq!(timestamp(t), "20000229T010203Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599); // 2026-12-31 23:59:59
        assert_eq!(timestamp(t), "20261231T235959Z");
    }

    #[test]
    fn plan_adds_the_two_worker_ferry_and_rejects_unknown_names() {
        let o = Options::new(true);
        let names: Vec<String> = planned(&o).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["ferry", "ferry-2w", "bridge", "ptp", "xdp"]);
        let mut o = Options::new(false);
        o.topologies = vec!["bridge".into(), "vpp".into()];
        assert!(planned(&o).is_err());
        o.topologies = vec![];
        assert!(planned(&o).is_err());
        let mut o = Options::new(false);
        o.scale_pods = vec![16, 251];
        assert!(planned(&o).unwrap_err().to_string().contains("at most 250"));
    }

    #[test]
    fn ipv6_is_planned_for_single_node_topologies_only() {
        let mut o = Options::new(false);
        o.families = Family::parse_choice("both").unwrap();
        assert_eq!(planned(&o).unwrap().len(), 5);
        o.topologies = vec!["ferry".into(), "kernel-vxlan".into()];
        let e = planned(&o).unwrap_err().to_string();
        assert!(
            e.contains("kernel-vxlan") && e.contains("--family 4"),
            "{e}"
        );
        o.families = vec![Family::V4];
        assert!(planned(&o).is_ok());
    }

    #[test]
    fn two_node_topologies_are_named_and_compared_with_kernel_vxlan() {
        let mut o = Options::new(false);
        o.topologies = report::CROSS_TOPOLOGIES.map(String::from).to_vec();
        let plan = planned(&o).unwrap();
        let names: Vec<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, report::CROSS_TOPOLOGIES);
        assert!(plan.iter().all(|(_, k)| k.two_node()));
        assert_eq!(
            plan[1].1,
            Kind::FerryCross {
                overlay: Overlay::Vxlan,
                tap: true
            }
        );
        assert_eq!(
            plan[2].1,
            Kind::FerryCross {
                overlay: Overlay::Direct,
                tap: false
            }
        );
        assert_eq!(
            plan[4].1,
            Kind::KernelCross {
                overlay: Overlay::Direct
            }
        );
        assert!(plan
            .iter()
            .all(|(n, _)| report::baseline_of(n) == report::CROSS_BASELINE));
        // The defaults are single-node and compared with the bridge.
        let d = planned(&Options::new(false)).unwrap();
        assert!(d
            .iter()
            .all(|(n, k)| !k.two_node() && report::baseline_of(n) == "bridge"));
        assert!(CROSS_WORKLOADS.iter().all(|w| WORKLOADS.contains(w)));
    }

    #[test]
    fn service_cases_need_ipv4_and_take_the_flood_and_rr_only() {
        let mut o = Options::new(false);
        o.services = services::parse_counts("10,1000").unwrap();
        assert!(planned(&o).is_ok());
        o.families = Family::parse_choice("both").unwrap();
        assert!(planned(&o).is_ok());
        o.families = vec![Family::V6];
        let e = planned(&o).unwrap_err().to_string();
        assert!(e.contains("IPv4"), "{e}");
        let through: Vec<String> = WORKLOADS
            .iter()
            .filter(|w| w.through_services())
            .map(|w| w.label())
            .collect();
        assert_eq!(through, ["udp-64B", "udp-1400B", "tcp-rr"]);
    }

    #[test]
    fn only_floods_cross_with_the_generators_and_live_cases_say_so() {
        let both = Generator::parse_choice("both").unwrap();
        assert_eq!(both, vec![Generator::AfPacket, Generator::Live]);
        assert_eq!(generators_of(Workload::Udp(60), &both), both);
        assert_eq!(generators_of(Workload::Tcp(1), &both).len(), 1);
        assert_eq!(generators_of(Workload::TcpRr, &both).len(), 1);
        let live = Generator::Live;
        assert_eq!(
            case_label(Workload::Udp(60), Family::V4, live),
            "udp-64B-live"
        );
        assert_eq!(
            case_label(Workload::Udp(60), Family::V6, live),
            "udp-64B-v6-live"
        );
        assert_eq!(
            case_label(Workload::Udp(1400), Family::V4, Generator::AfPacket),
            "udp-1400B"
        );
        assert_eq!(case_label(Workload::TcpRr, Family::V4, live), "tcp-rr");
        let e = Generator::parse_choice("pktgen").unwrap_err().to_string();
        assert!(e.contains("pktgen") && e.contains("live"), "{e}");
    }

    #[test]
    fn workloads_are_chosen_by_label_in_run_order() {
        assert_eq!(selected_workloads(&[]).unwrap(), WORKLOADS.to_vec());
        let some = ["ping".to_string(), "tcp-1".to_string()];
        assert_eq!(
            selected_workloads(&some).unwrap(),
            vec![Workload::Tcp(1), Workload::Ping]
        );
        let err = selected_workloads(&["tcp-9".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcp-9") && err.contains("udp-1400B"), "{err}");
    }
}

//! Harness for ferry's network-namespace integration tests.
//!
//! Layer: test support only. Builds a throwaway "node" network namespace per
//! test, runs the real `ferry-dataplane` and `ferryd` binaries inside it, and
//! invokes the real `ferry` CNI binary exactly as a runtime does (env +
//! stdin). Everything made is removed by name or pid when the guards drop,
//! also when a test fails. It never touches the root namespace's links,
//! routes or sysctls, nor /etc/cni or /opt/cni.
//!
//! The binaries must be built first (`cargo build --workspace --bins`); they
//! are looked up in `$FERRY_BIN_DIR` or the workspace's `target/debug`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod clients;
pub mod cluster;
pub mod etcd;

/// Path of one of ferry's binaries.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("FERRY_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (cargo build --workspace --bins) or set FERRY_BIN_DIR",
        p.display()
    );
    p
}

/// Run a command, returning its output (never panics on failure status).
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Run a command and require success.
pub fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command inside a network namespace.
pub fn ns_run(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

pub fn ns_run_ok(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_ok("ip", &full)
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Unique short tag for names made by this process (netns names are
/// global on the machine; interface names must stay under 16 bytes).
pub fn unique_tag(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace deleted by name on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = run("ip", &["netns", "del", name]);
        run_ok("ip", &["netns", "add", name]);
        run_ok("ip", &["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_string(),
        }
    }
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes a test started inside this namespace (an `iperf3 -s -D`
        // left by a failed test, say) would outlive it: stop them by pid.
        let out = run("ip", &["netns", "pids", &self.name]);
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                let _ = run("kill", &["-KILL", pid]);
            }
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A scratch directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("ferry-itest-{tag}"));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A daemon we started; stopped by pid (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub what: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (a zombie not reaped yet counts),
    /// without reaping it.
    pub fn exited(&self) -> bool {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The state follows the parenthesised command name.
        match stat.rsplit_once(") ") {
            Some((_, rest)) => rest.starts_with('Z') || rest.starts_with('X'),
            None => true,
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = run("kill", &[&format!("-{sig}"), &self.child.id().to_string()]);
    }

    /// SIGTERM and wait (bounded); SIGKILL if it does not exit.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// SIGKILL, no chance to clean up (crash simulation).
    pub fn kill(mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_inner();
        if thread::panicking() {
            eprintln!(
                "---- {} log ({}) ----\n{}",
                self.what,
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// What one invocation of the `ferry` binary did.
#[derive(Debug)]
pub struct CniOutcome {
    pub exit: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("ferry printed non-JSON ({e}): {:?}", self.stdout))
    }
    /// The CNI error code printed, if the call failed.
    pub fn code(&self) -> Option<u64> {
        if self.exit == 0 {
            return None;
        }
        self.json()["code"].as_u64()
    }
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(
            self.exit, 0,
            "ferry failed: {}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Invoke `ferry` as a runtime does: env variables + network config on stdin.
pub fn invoke_ferry(env: &[(&str, &str)], stdin: &str) -> CniOutcome {
    let mut cmd = Command::new(bin("ferry"));
    cmd.env_clear();
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = wait_output_bounded(child, Duration::from_secs(60));
    CniOutcome {
        exit: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Wait for a child (bounded), collecting its output; kills it and panics
/// when it does not finish in time.
pub fn wait_output_bounded(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().expect("collect output"),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("command did not finish within {timeout:?}");
            }
        }
    }
}

/// A child process killed and reaped when dropped (test failures
/// included), unless [`ChildGuard::finish`] waited for it.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// Wait for exit within `timeout` (killed and a panic past it).
    pub fn finish(mut self, timeout: Duration) -> Output {
        wait_output_bounded(self.0.take().expect("child"), timeout)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ferry-tcpcheck ARGS` inside namespace `ns`, stdout and stderr piped.
pub fn tcpcheck_in(ns: &str, args: &[&str]) -> Child {
    let tool = bin("ferry-tcpcheck").display().to_string();
    Command::new("ip")
        .args(["netns", "exec", ns, &tool])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry-tcpcheck")
}

/// Bytes per [`transfer`]: enough for thousands of 64 KiB GSO frames.
pub const TRANSFER_BYTES: u64 = 32 * 1024 * 1024;

/// Send `TRANSFER_BYTES` from namespace `from` to `to_ip:port` (a receiver in
/// namespace `to`), and check that what arrived is what was sent.
pub fn transfer(from: &str, to: &str, to_ip: &str, port: u16, seed: u64) {
    let dst = if to_ip.contains(':') && !to_ip.starts_with('[') {
        format!("[{to_ip}]:{port}")
    } else {
        format!("{to_ip}:{port}")
    };
    transfer_via(from, to, port, &dst, seed);
}

/// [`transfer`] to the address `dst` (`ip:port`, e.g. a ClusterIP), the
/// receiver in `to` listening on `listen_port` (the backend's port).
pub fn transfer_via(from: &str, to: &str, listen_port: u16, dst: &str, seed: u64) {
    transfer_paced(from, to, listen_port, dst, seed, 0);
}

/// [`transfer_via`] spread over at least `secs` seconds (0: as fast as it
/// goes), so a test can change policies or services under a live flow.
pub fn transfer_paced(from: &str, to: &str, listen_port: u16, dst: &str, seed: u64, secs: u64) {
    let any = if dst.starts_with('[') {
        "[::]"
    } else {
        "0.0.0.0"
    };
    let mut rx_child = tcpcheck_in(to, &["recv", &format!("{any}:{listen_port}")]);
    let stdout = rx_child.stdout.take().expect("stdout");
    let rx = ChildGuard::new(rx_child);
    let mut first = String::new();
    let mut reader = BufReader::new(stdout);
    // The receiver prints one line right after bind (or exits on error).
    reader.read_line(&mut first).expect("receiver output");
    assert_eq!(first.trim(), "listening", "receiver in {to} did not start");

    let tx = ChildGuard::new(tcpcheck_in(
        from,
        &[
            "send",
            dst,
            &TRANSFER_BYTES.to_string(),
            &seed.to_string(),
            &secs.to_string(),
        ],
    ));
    let tx = tx.finish(Duration::from_secs(120 + secs));
    let rx = rx.finish(Duration::from_secs(30));
    let (tx_ok, tx_out, tx_err) = (
        tx.status.success(),
        String::from_utf8_lossy(&tx.stdout),
        String::from_utf8_lossy(&tx.stderr),
    );
    let (rx_ok, rx_err) = (rx.status.success(), String::from_utf8_lossy(&rx.stderr));
    let mut rx_out = String::new();
    reader.read_line(&mut rx_out).expect("receiver result");
    assert!(tx_ok, "sender {from} -> {dst}: {tx_err}");
    assert!(rx_ok, "receiver {to}: {rx_err}");
    let want = format!("{TRANSFER_BYTES} ");
    assert!(tx_out.starts_with(&want), "sender sent {tx_out}");
    assert_eq!(
        rx_out.trim(),
        tx_out.trim(),
        "{from} -> {dst}: bytes/hash received differ from those sent"
    );
}

/// Settings of a simulated node.
#[derive(Clone, Debug)]
pub struct NodeOpts {
    /// `""`: none written (a `[cluster]` node claims its block).
    pub pod_cidr: String,
    /// An IPv6 pod CIDR beside `pod_cidr` (a dual-stack node; its
    /// gateway is ferryd's default, the CIDR's first address).
    pub pod_cidr6: Option<String>,
    pub workers: u32,
    /// Extra `ipam` object for the network config (JSON), if any.
    pub ipam: Option<String>,
    /// ferryd's `mtu`; `None` leaves it out (ferryd's default, which an
    /// uplink's overlay lowers).
    pub mtu: Option<u32>,
    /// More ferryd.toml text, after the fields above (an uplink, peers).
    pub extra_config: String,
}

/// The largest pod MTU a veth port carries, as ferry-dataplane reports it
/// (`mtu_limits.veth`, `afxdp::MAX_POD_MTU`).
pub const VETH_MTU_LIMIT: u32 = 28658;
/// A veth pod's link MTU when its network config names none: ferryd's
/// `local_mtu` (65535 by default) lowered to [`VETH_MTU_LIMIT`]. Its routes
/// through the gateway carry ferryd's `mtu`, the path MTU.
pub const VETH_POD_MTU: u32 = VETH_MTU_LIMIT;

/// The IPv6 pod CIDR of dual-stack test nodes ([`NodeOpts::dual_stack`]).
pub const POD_CIDR6: &str = "fd00:88::/64";
/// Their IPv6 gateway (ferryd's default: the CIDR's first address).
pub const GATEWAY6: &str = "fd00:88::1";

impl NodeOpts {
    /// The default node with [`POD_CIDR6`] beside its IPv4 pool.
    pub fn dual_stack() -> NodeOpts {
        NodeOpts {
            pod_cidr6: Some(POD_CIDR6.into()),
            ..NodeOpts::default()
        }
    }
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts {
            pod_cidr: "10.88.0.0/24".into(),
            pod_cidr6: None,
            workers: 1,
            ipam: None,
            mtu: Some(1500),
            extra_config: String::new(),
        }
    }
}

/// A node namespace running ferry-dataplane and ferryd.
pub struct Node {
    pub tag: String,
    pub opts: NodeOpts,
    // Field order is drop order: daemons stop before their netns goes away.
    pub ferryd: Option<Daemon>,
    pub dataplane: Option<Daemon>,
    pub ns: Netns,
    pub dir: TempDir,
}

impl Node {
    pub fn start(prefix: &str, opts: NodeOpts) -> Node {
        let mut node = Node::create(unique_tag(prefix), opts);
        node.launch();
        node
    }

    /// The node namespace and ferryd.toml, named after `tag`, with no
    /// daemon running yet (for what must be in the namespace before
    /// ferryd starts, as an uplink); [`Node::launch`] starts them.
    pub fn create(tag: String, opts: NodeOpts) -> Node {
        let dir = TempDir::new(&tag);
        let ns = Netns::new(&format!("{tag}-node"));
        let mut config = format!(
            "socket = \"{d}/ferryd.sock\"\ndataplane_socket = \"{d}/dataplane.sock\"\n\
             state_dir = \"{d}/state\"\n",
            d = dir.path.display(),
        );
        // No pod CIDR: a [cluster] node, whose block comes from etcd.
        if !opts.pod_cidr.is_empty() {
            let gateway = first_host(&opts.pod_cidr);
            let cidr6 = opts
                .pod_cidr6
                .as_ref()
                .map(|c| format!(", \"{c}\""))
                .unwrap_or_default();
            config.push_str(&format!(
                "pod_cidrs = [\"{}\"{cidr6}]\ngateway = \"{gateway}\"\n",
                opts.pod_cidr
            ));
        }
        if let Some(mtu) = opts.mtu {
            config.push_str(&format!("mtu = {mtu}\n"));
        }
        config.push_str(&opts.extra_config);
        fs::write(dir.path.join("ferryd.toml"), config).expect("write ferryd config");
        Node {
            tag,
            opts,
            ferryd: None,
            dataplane: None,
            ns,
            dir,
        }
    }

    /// Start ferry-dataplane and ferryd and wait until ferryd is ready.
    pub fn launch(&mut self) {
        self.start_dataplane();
        self.start_ferryd();
        self.wait_ready();
    }

    pub fn ferryd_socket(&self) -> PathBuf {
        self.dir.path.join("ferryd.sock")
    }
    pub fn dataplane_socket(&self) -> PathBuf {
        self.dir.path.join("dataplane.sock")
    }

    fn spawn_in_ns(&self, what: &str, args: &[String]) -> Daemon {
        let log = self.dir.path.join(format!("{what}.log"));
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut full: Vec<String> = vec!["netns".into(), "exec".into(), self.ns.name.clone()];
        full.extend_from_slice(args);
        let child = Command::new("ip")
            .args(&full)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Daemon {
            what: what.to_string(),
            child,
            log,
        }
    }

    pub fn start_dataplane(&mut self) {
        assert!(self.dataplane.is_none(), "dataplane already running");
        let sock = self.dataplane_socket();
        let _ = fs::remove_file(&sock);
        let d = self.spawn_in_ns(
            "ferry-dataplane",
            &[
                bin("ferry-dataplane").display().to_string(),
                "--socket".into(),
                sock.display().to_string(),
                "--workers".into(),
                self.opts.workers.to_string(),
            ],
        );
        let ok = wait_until(Duration::from_secs(20), || sock.exists());
        assert!(
            ok,
            "ferry-dataplane did not create {}:\n{}",
            sock.display(),
            d.log_text()
        );
        self.dataplane = Some(d);
    }

    pub fn start_ferryd(&mut self) {
        assert!(self.ferryd.is_none(), "ferryd already running");
        let d = self.spawn_in_ns(
            "ferryd",
            &[
                bin("ferryd").display().to_string(),
                "--config".into(),
                self.dir.path.join("ferryd.toml").display().to_string(),
            ],
        );
        self.ferryd = Some(d);
    }

    /// Stop ferryd, add `line` to its config, start it again and wait
    /// until it is ready.
    pub fn restart_ferryd_with(&mut self, line: &str) {
        self.ferryd.take().expect("ferryd running").stop();
        let cfg = self.dir.path.join("ferryd.toml");
        let mut text = fs::read_to_string(&cfg).expect("read ferryd config");
        text.push_str(line);
        text.push('\n');
        fs::write(&cfg, text).expect("write ferryd config");
        self.start_ferryd();
        self.wait_ready();
    }

    /// Wait until ferryd answers STATUS ready (dataplane connected).
    pub fn wait_ready(&self) {
        // A ferryd that exited (a config it refuses, say) never gets ready.
        let gone = || self.ferryd.as_ref().is_some_and(|d| d.exited());
        let ok = wait_until(Duration::from_secs(30), || {
            self.status().exit == 0 || gone()
        }) && !gone();
        assert!(
            ok,
            "ferryd never became ready: {:?}\nferryd log:\n{}\ndataplane log:\n{}",
            self.status(),
            self.ferryd
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default(),
            self.dataplane
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default()
        );
    }

    /// The network config for a cniVersion (optionally with extra fields).
    pub fn conf(&self, version: &str) -> String {
        let mut v = serde_json::json!({
            "cniVersion": version,
            "name": "ferry-test",
            "type": "ferry",
            "ferrydSocket": self.ferryd_socket().display().to_string(),
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
        });
        if let Some(ipam) = &self.opts.ipam {
            v["ipam"] = serde_json::from_str(ipam).expect("ipam JSON");
        }
        v.to_string()
    }

    /// The network config for a cniVersion with `"attachment": "tap"`.
    pub fn tap_conf(&self, version: &str) -> String {
        let mut v: Value = serde_json::from_str(&self.conf(version)).expect("conf is JSON");
        v["attachment"] = "tap".into();
        v.to_string()
    }

    pub fn status(&self) -> CniOutcome {
        invoke_ferry(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/nonexistent")],
            &self.conf("1.1.0"),
        )
    }

    /// ADD/CHECK/DEL for a container, as a runtime invokes it.
    pub fn cni(
        &self,
        command: &str,
        container: &str,
        netns: &str,
        ifname: &str,
        conf: &str,
    ) -> CniOutcome {
        self.cni_as(
            command,
            (container, "default", "itest"),
            netns,
            ifname,
            conf,
        )
    }

    /// [`Node::cni`] for the Kubernetes pod `namespace`/`name` (the
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` arguments).
    pub fn cni_as(
        &self,
        command: &str,
        (container, namespace, name): (&str, &str, &str),
        netns: &str,
        ifname: &str,
        conf: &str,
    ) -> CniOutcome {
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        invoke_ferry(
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", container),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/opt/cni/bin"),
                ("CNI_ARGS", &args),
            ],
            conf,
        )
    }

    /// Create a pod namespace and ADD it (cniVersion 1.0.0).
    pub fn add_pod(&self, n: u32) -> Pod {
        self.add_pod_with(n, &self.conf("1.0.0"))
    }

    /// Create a pod namespace and ADD it with the network config `conf`.
    pub fn add_pod_with(&self, n: u32, conf: &str) -> Pod {
        self.add_pod_as(n, ("default", "itest"), conf)
    }

    /// [`Node::add_pod_with`] for the Kubernetes pod `namespace`/`name`.
    pub fn add_pod_as(&self, n: u32, (namespace, name): (&str, &str), conf: &str) -> Pod {
        let ns = Netns::new(&format!("{}-p{n}", self.tag));
        let container = format!("{}-c{n}", self.tag);
        let out = self.cni_as(
            "ADD",
            (&container, namespace, name),
            &ns.path(),
            "eth0",
            conf,
        );
        out.assert_ok();
        let result = out.json();
        let addr = result["ips"][0]["address"]
            .as_str()
            .expect("ips[0].address")
            .to_string();
        let ip = addr.split('/').next().unwrap().to_string();
        Pod {
            ns,
            container,
            ip,
            result,
        }
    }

    /// Create a pod namespace and ADD it as a tap pod (cniVersion 1.0.0).
    pub fn add_tap_pod(&self, n: u32) -> Pod {
        self.add_pod_with(n, &self.tap_conf("1.0.0"))
    }

    pub fn del_pod(&self, pod: &Pod) -> CniOutcome {
        self.cni(
            "DEL",
            &pod.container,
            &pod.ns.path(),
            "eth0",
            &self.conf("1.0.0"),
        )
    }

    pub fn ferryctl(&self, args: &[&str]) -> Output {
        let mut full: Vec<String> = vec![
            "--ferryd".into(),
            self.ferryd_socket().display().to_string(),
            "--dataplane".into(),
            self.dataplane_socket().display().to_string(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        Command::new(bin("ferryctl"))
            .args(&full)
            .output()
            .expect("run ferryctl")
    }

    /// Run ferryctl, which must succeed (the ferryd log in the failure);
    /// its output.
    pub fn ferryctl_ok(&self, args: &[&str]) -> String {
        let out = self.ferryctl(args);
        assert!(
            out.status.success(),
            "ferryctl {args:?}: {}\nferryd log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.ferryd
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The dataplane's Stats as JSON (through ferryctl --json).
    pub fn stats(&self) -> Value {
        let out = self.ferryctl(&["stats", "--json"]);
        assert!(
            out.status.success(),
            "ferryctl stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ferryctl stats --json prints JSON")
    }

    /// The counters of `pod`'s port in [`Node::stats`] (its endpoint id
    /// starts with the pod's container id).
    pub fn port_of(&self, pod: &Pod) -> Value {
        let stats = self.stats();
        stats["ports"]
            .as_array()
            .and_then(|ports| {
                ports.iter().find(|p| {
                    p["endpoint"]
                        .as_str()
                        .is_some_and(|e| e.starts_with(&pod.container))
                })
            })
            .cloned()
            .unwrap_or_else(|| panic!("no port of {}: {stats}", pod.container))
    }
}

/// A pod namespace with an attachment made by `ferry ADD`.
pub struct Pod {
    pub ns: Netns,
    pub container: String,
    pub ip: String,
    pub result: Value,
}

impl Pod {
    /// `ping -c count` to `dst`; true if all replies came back.
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        ns_ping(&self.ns.name, dst, count)
    }
}

/// `ping -c count` to `dst` from namespace `ns` (0.2 s apart, 1 s for each
/// reply); true if all replies came back.
pub fn ns_ping(ns: &str, dst: &str, count: u32) -> bool {
    let count = count.to_string();
    ns_run(ns, &["ping", "-c", &count, "-i", "0.2", "-W", "1", dst])
        .status
        .success()
}

/// First host address of an IPv4 CIDR written as text (a.b.c.d/len).
pub fn first_host(cidr: &str) -> String {
    let ip = cidr.split('/').next().expect("cidr");
    let o: Vec<u32> = ip.split('.').map(|p| p.parse().expect("octet")).collect();
    let n = (o[0] << 24 | o[1] << 16 | o[2] << 8 | o[3]) + 1;
    format!(
        "{}.{}.{}.{}",
        n >> 24,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255
    )
}

/// Sum of a counter over every port of a Stats JSON.
pub fn port_counter(stats: &Value, field: &str) -> u64 {
    stats["ports"]
        .as_array()
        .map(|ports| ports.iter().map(|p| p[field].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

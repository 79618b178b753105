//! Support for driving ferry through real CNI clients: libcni (the Go
//! library runtimes link, through `itest/go/libcni-driver`), containerd's
//! `ctr run --cni`, and containerd's CRI plugin (through the minimal CRI
//! client `itest/go/cri-driver`).
//!
//! Nothing here touches the machine's /etc/cni, /opt/cni, /var/lib/cni or
//! a system containerd: plugin and config directories and libcni's result
//! cache live in the test's temp dir; where a client insists on the fixed
//! paths, it runs in a private mount namespace with temp dirs mounted over
//! them (`itest/scripts/private-mounts.sh`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use crate::{bin, wait_output_bounded, Node};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("workspace root")
}

/// The libcni driver (`itest/go/libcni-driver`), built against Debian's
/// libcni sources.
pub fn libcni_driver() -> PathBuf {
    go_tool("libcni-driver")
}

/// Build (once per process, when its sources are newer than the binary) the
/// Go program `itest/go/<name>` into `target/go/<name>`, offline in GOPATH
/// mode against Debian's Go library sources in /usr/share/gocode. Panics
/// when Go or the sources are missing: `scripts/setup.sh` installs them, and
/// a missing client must fail the suite, not skip it.
pub fn go_tool(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return p.clone();
    }
    let root = workspace();
    let src = root.join("itest/go").join(name);
    let out_dir = root.join("target/go");
    let out = out_dir.join(name);
    let gopath = Path::new("/usr/share/gocode");
    assert!(
        gopath.join("src").is_dir(),
        "no Go library sources under {}: run scripts/setup.sh (golang-github-appc-cni-dev, golang-google-grpc-dev)",
        gopath.display()
    );
    let newest_src = fs::read_dir(&src)
        .expect("read driver source dir")
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
        .expect("driver sources");
    let fresh = fs::metadata(&out)
        .and_then(|m| m.modified())
        .map(|t| t >= newest_src)
        .unwrap_or(false);
    if !fresh {
        fs::create_dir_all(&out_dir).expect("create target/go");
        let child = Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&src)
            .env("GO111MODULE", "off")
            .env("GOPATH", gopath)
            .env("GOCACHE", out_dir.join("cache"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run go ({e}): install golang-go (scripts/setup.sh)")
            });
        let res = wait_output_bounded(child, Duration::from_secs(300));
        assert!(
            res.status.success(),
            "go build of {name} failed (scripts/setup.sh installs its Debian packages):\n{}",
            String::from_utf8_lossy(&res.stderr)
        );
    }
    built.push((name.to_string(), out.clone()));
    out
}

/// A network configuration list for the node: one `ferry` plugin whose
/// `ferrydSocket` is the node's ferryd.
pub fn conflist(node: &Node, name: &str, version: &str) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": name,
        "plugins": [{
            "type": "ferry",
            "ferrydSocket": node.ferryd_socket().display().to_string(),
            "capabilities": {"ips": true},
        }],
    })
    .to_string()
}

/// A plugin directory (CNI_PATH) holding only `ferry`, linked to the build.
pub fn plugin_dir(parent: &Path) -> PathBuf {
    let dir = parent.join("cni-bin");
    fs::create_dir_all(&dir).expect("create plugin dir");
    let link = dir.join("ferry");
    let _ = fs::remove_file(&link);
    symlink(bin("ferry"), &link).expect("link ferry into the plugin dir");
    dir
}

/// What one run of the libcni driver printed.
#[derive(Debug)]
pub struct LibcniOutcome {
    pub exit: i32,
    pub report: Value,
    pub stderr: String,
}

impl LibcniOutcome {
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.report["ok"] == true
    }
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.ok(),
            "libcni {} failed: {self:?}",
            self.report["action"]
        );
        self
    }
    pub fn error(&self) -> &str {
        self.report["error"].as_str().unwrap_or("")
    }
}

/// Where libcni finds its configuration, plugins and result cache.
pub struct LibcniEnv {
    pub conflist: PathBuf,
    pub plugin_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl LibcniEnv {
    /// Run one driver action (`add`, `check`, `del`, `version`, `validate`).
    pub fn run(&self, action: &str, container: &str, netns: &str) -> LibcniOutcome {
        let child = Command::new(libcni_driver())
            .arg("-conflist")
            .arg(&self.conflist)
            .arg("-plugin-dir")
            .arg(&self.plugin_dir)
            .arg("-cache-dir")
            .arg(&self.cache_dir)
            .args(["-container", container, "-netns", netns, "-ifname", "eth0"])
            .arg(action)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn libcni driver");
        let out = wait_output_bounded(child, Duration::from_secs(90));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "libcni driver printed non-JSON ({e}): {stdout:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        LibcniOutcome {
            exit: out.status.code().unwrap_or(-1),
            report,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// ferryd's endpoints as the dataplane's tables hold them
/// (`ferryctl endpoints --json`).
pub fn endpoints(node: &Node) -> Vec<Value> {
    let out = node.ferryctl(&["endpoints", "--json"]);
    assert!(
        out.status.success(),
        "ferryctl endpoints: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("ferryctl endpoints --json");
    v.as_array().cloned().unwrap_or_default()
}

/// The addresses ferryd's endpoint `id` (`<container id>/<ifname>`) holds,
/// IPv4 first, as `ferryctl endpoints` reports them (live or stale); `None`
/// when ferryd holds no such endpoint.
pub fn endpoint_ips(node: &Node, id: &str) -> Option<Vec<String>> {
    endpoints(node).iter().find(|e| e["id"] == id).map(|e| {
        e["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str().map(str::to_string))
            .collect()
    })
}

/// Path of one of the helper scripts in `itest/scripts`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Fixed paths a CNI client reads that must never be the machine's own.
pub const HOST_CNI_PATHS: &[&str] = &[
    "/etc/cni",
    "/opt/cni",
    "/var/lib/cni",
    "/run/containerd",
    "/opt/containerd",
];

/// Which of [`HOST_CNI_PATHS`] exist, to show afterwards that a test made
/// none of them.
pub fn host_cni_paths_present() -> Vec<&'static str> {
    HOST_CNI_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect()
}

/// A private containerd (Debian's 1.6 with runc): its own config, root,
/// state and socket under a temp dir, the CRI plugin off. The daemon runs
/// in a private copy of the root mount namespace (not `ip netns exec`,
/// which remounts /sys and breaks runc) with a temp dir over
/// /run/containerd, where 1.6 puts shim sockets and runc state whatever its
/// config says. `ctr` runs in a mount namespace of its own in which temp
/// dirs cover /etc/cni/net.d, /opt/cni/bin and /var/lib/cni, the only paths
/// Debian's `ctr run --cni` reads and writes.
///
/// On drop: every task killed and deleted, containers and images removed,
/// the daemon stopped, leftover shims of this daemon killed by pid, its
/// cgroups removed, the temp dir deleted.
pub struct Containerd {
    /// containerd namespace used by `ctr` (unique per test); the CRI plugin
    /// always uses `k8s.io`.
    pub namespace: String,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_cache_dir: PathBuf,
    /// Cgroup parent given to CRI pod sandboxes (removed on drop).
    pub cri_cgroup_parent: String,
    /// Pod sandboxes started through CRI: stopped and removed on drop.
    pub cri_sandboxes: Mutex<Vec<String>>,
    /// `/run/netns/cni-*` entries present before the daemon started: any
    /// other one is a CRI pod netns of ours, unmounted and removed on drop
    /// if containerd left it (a sandbox that failed half-way). That holds
    /// because only one CRI-enabled daemon runs at a time: `_cri_serial`
    /// (the only test binary with one is `containerd`).
    cni_netns_before: Option<Vec<String>>,
    _cri_serial: Option<std::sync::MutexGuard<'static, ()>>,
    // Field order is drop order (after `Drop::drop` ran): the daemon's
    // network namespace and its directory go last.
    daemon: Option<crate::Daemon>,
    pub netns: crate::Netns,
    pub dir: crate::TempDir,
}

/// How to run a private containerd.
pub struct ContainerdOpts<'a> {
    /// The network configuration list, installed before the daemon starts
    /// (the only file in its CNI config dir).
    pub conflist: &'a str,
    /// Turn on the CRI plugin (Kubernetes' path: containerd itself invokes
    /// CNI for pod sandboxes; its pause image is imported on start).
    pub cri: bool,
}

/// Image the CRI plugin uses for pod sandboxes (busybox sleeping).
pub const PAUSE_IMAGE: &str = "docker.io/ferry/pause:itest";

/// Image name the busybox OCI tar is imported as.
pub const BUSYBOX_IMAGE: &str = "docker.io/ferry/busybox:itest";

impl Containerd {
    pub fn start(tag: &str, opts: ContainerdOpts) -> Containerd {
        for tool in ["containerd", "ctr", "runc", "unshare"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(
                found,
                "{tool} not found: install containerd and runc (scripts/setup.sh)"
            );
        }
        let dir = crate::TempDir::new(&format!("{tag}-ctd"));
        let d = dir.path.clone();
        for sub in [
            "root",
            "state",
            "run-containerd",
            "opt",
            "fifo",
            "stash",
            "net.d",
            "cni-bin",
            "cni-cache",
        ] {
            fs::create_dir_all(d.join(sub)).expect("create containerd dirs");
        }
        static CRI_SERIAL: Mutex<()> = Mutex::new(());
        let cri_serial = opts
            .cri
            .then(|| CRI_SERIAL.lock().unwrap_or_else(|e| e.into_inner()));
        let cri = if opts.cri {
            // restrict_oom_score_adj: the CRI plugin cannot lower its
            // sandboxes' OOM score on these machines otherwise.
            format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 sandbox_image = \"{PAUSE_IMAGE}\"\n\
                 restrict_oom_score_adj = true\n\
                 stream_server_address = \"127.0.0.1\"\n\
                 stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 bin_dir = \"{d}/cni-bin\"\n  conf_dir = \"{d}/net.d\"\n  max_conf_num = 1\n",
                d = d.display()
            )
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n".to_string()
        };
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
            d = d.display()
        );
        // Top-level keys must precede the tables.
        let config = if opts.cri {
            format!("{config}{cri}")
        } else {
            format!("{cri}{config}")
        };
        fs::write(d.join("config.toml"), config).expect("write containerd config");
        fs::write(d.join("net.d/10-ferry.conflist"), opts.conflist).expect("write conflist");
        // CNI_PATH: ferry, and for the CRI plugin (which brings up each
        // sandbox's `lo` through CNI) the reference loopback plugin.
        symlink(bin("ferry"), d.join("cni-bin/ferry")).expect("link ferry");
        if opts.cri {
            let loopback = Path::new("/usr/lib/cni/loopback");
            assert!(
                loopback.exists(),
                "{} missing: install containernetworking-plugins (scripts/setup.sh)",
                loopback.display()
            );
            symlink(loopback, d.join("cni-bin/loopback")).expect("link loopback");
        }
        // The daemon gets a network namespace of its own (its CRI stream
        // server listens there); pods get theirs from runc or the CRI plugin.
        let netns = crate::Netns::new(&format!("{tag}-ctd"));
        let log = d.join("containerd.log");
        let logf = fs::File::create(&log).expect("containerd log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .args(["unshare", "-m", "--propagation", "unchanged"])
            .arg(script("private-mounts.sh"))
            // The CRI plugin mounts pod netns under /var/run/netns: those
            // mounts must reach ferryd, which runs in another mount namespace.
            .args(["--share", "/run/netns"])
            .arg(d.join("stash"))
            .arg(format!(
                "/run/containerd={}",
                d.join("run-containerd").display()
            ))
            // The CRI plugin's libcni caches results in /var/lib/cni.
            .arg(format!("/var/lib/cni={}", d.join("cni-cache").display()))
            .arg("--")
            .arg("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .expect("start containerd");
        let namespace = format!("ferry-{tag}");
        let ctd = Containerd {
            cni_conf_dir: d.join("net.d"),
            cni_bin_dir: d.join("cni-bin"),
            cni_cache_dir: d.join("cni-cache"),
            cri_cgroup_parent: format!("/ferry-{tag}-cri"),
            cri_sandboxes: Mutex::new(Vec::new()),
            cni_netns_before: opts.cri.then(cri_netns_entries),
            _cri_serial: cri_serial,
            daemon: Some(crate::Daemon {
                what: "containerd".into(),
                child,
                log,
            }),
            netns,
            dir,
            namespace,
        };
        let up = crate::wait_until(Duration::from_secs(30), || {
            ctd.ctr(&["version"]).status.success()
        });
        if !up {
            let log = ctd
                .daemon
                .as_ref()
                .map(|d| d.log_text())
                .unwrap_or_default();
            panic!("containerd did not come up:\n{log}");
        }
        if opts.cri {
            ctd.import_image(PAUSE_IMAGE, r#"["sleep","2147483647"]"#, "k8s.io");
        }
        ctd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path.join("containerd.sock")
    }

    pub fn log_text(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// A `ctr` command that is not `run --cni` (needs no private mounts).
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_in(&self.namespace, args)
    }

    /// `ctr` in a given containerd namespace.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> std::process::Output {
        let child = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr");
        wait_output_bounded(child, Duration::from_secs(120))
    }

    /// Install the network configuration ctr will use (the only file in its
    /// /etc/cni/net.d).
    pub fn install_conflist(&self, conflist: &str) {
        fs::write(self.cni_conf_dir.join("10-ferry.conflist"), conflist).expect("write conflist");
    }

    /// Build the busybox OCI tar and import it for `ctr`.
    pub fn import_busybox(&self) {
        self.import_image(BUSYBOX_IMAGE, r#"["sh"]"#, &self.namespace.clone());
    }

    /// Build a busybox OCI tar with a default command and import it into a
    /// containerd namespace.
    pub fn import_image(&self, name: &str, cmd_json: &str, namespace: &str) {
        let tar = self.dir.path.join(format!("{namespace}-image.tar"));
        let out = run_bounded(
            Command::new(script("busybox-oci.sh"))
                .arg(&tar)
                .args([name, cmd_json]),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "busybox-oci.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = self.ctr_in(namespace, &["images", "import", &tar.display().to_string()]);
        assert!(
            out.status.success(),
            "ctr images import {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One call of the CRI client (`itest/go/cri-driver`) on this daemon.
    pub fn cri(&self, args: &[&str]) -> CriOutcome {
        let child = Command::new(go_tool("cri-driver"))
            .arg("-socket")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cri-driver");
        let out = wait_output_bounded(child, Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "cri-driver printed non-JSON ({e}): {stdout:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        CriOutcome {
            exit: out.status.code().unwrap_or(-1),
            report,
        }
    }

    /// RunPodSandbox as the kubelet does; the sandbox is stopped and removed
    /// on drop if the test does not.
    pub fn cri_run_pod(&self, name: &str) -> CriOutcome {
        let uid = format!("uid-{name}");
        let out = self.cri(&[
            "-name",
            name,
            "-namespace",
            "default",
            "-uid",
            &uid,
            "-cgroup-parent",
            &self.cri_cgroup_parent,
            "run",
        ]);
        if let Some(id) = out.report["podSandboxId"].as_str() {
            self.cri_sandboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id.to_string());
        }
        out
    }

    /// Start `ctr run --cni <args>` (in its private mount namespace) and
    /// return the child; the caller bounds its wait.
    pub fn spawn_run_cni(&self, args: &[&str]) -> std::process::Child {
        let d = &self.dir.path;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "unchanged"])
            .arg(script("private-mounts.sh"))
            .arg(d.join("stash"))
            .arg(format!("/etc/cni/net.d={}", self.cni_conf_dir.display()))
            .arg(format!("/opt/cni/bin={}", self.cni_bin_dir.display()))
            .arg(format!("/var/lib/cni={}", self.cni_cache_dir.display()))
            .arg("--")
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace, "run", "--cni", "--fifo-dir"])
            .arg(d.join("fifo"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn ctr run --cni")
    }

    /// `ctr run --cni <args>` to completion (bounded).
    pub fn run_cni(&self, args: &[&str]) -> std::process::Output {
        wait_output_bounded(self.spawn_run_cni(args), Duration::from_secs(120))
    }

    /// The id libcni and ferry see for a ctr container (`<namespace>-<id>`).
    pub fn cni_container_id(&self, id: &str) -> String {
        format!("{}-{id}", self.namespace)
    }

    /// Kill and delete a task and its container (no CNI DEL: ctr does not
    /// run one for these).
    pub fn remove_container(&self, id: &str) {
        let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        let _ = crate::wait_until(Duration::from_secs(20), || {
            let out = self.ctr(&["tasks", "ls"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            !text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
        });
        let _ = self.ctr(&["tasks", "delete", "--force", id]);
        let _ = self.ctr(&["containers", "delete", id]);
    }

    /// Pids of processes started for this daemon (shims) that are still
    /// alive: found by our unique socket path in their command lines.
    fn shim_pids(&self) -> Vec<u32> {
        let needle = self.socket().display().to_string();
        let mut pids = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(cmdline) = fs::read(e.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let sandboxes =
            std::mem::take(&mut *self.cri_sandboxes.lock().unwrap_or_else(|e| e.into_inner()));
        if self.daemon.is_some() {
            for id in &sandboxes {
                let _ = self.cri(&["-id", id, "stop"]);
                let _ = self.cri(&["-id", id, "remove"]);
            }
            let out = self.ctr(&["containers", "ls", "--quiet"]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                self.remove_container(id);
            }
            let _ = self.ctr(&["images", "rm", BUSYBOX_IMAGE]);
        }
        // Daemon's drop stops it (bounded) and prints its log on a panic.
        drop(self.daemon.take());
        for pid in self.shim_pids() {
            let _ = crate::run("kill", &["-KILL", &pid.to_string()]);
        }
        // Our cgroups: ctr's containers' are <namespace>/<id>, the CRI
        // sandboxes' <cgroup parent>/<id>, under each v1 controller
        // (/sys/fs/cgroup/<controller>/...) or the v2 root. Processes a dead
        // shim left in them are killed by pid, then the directories removed.
        let parents = [
            self.namespace.clone(),
            self.cri_cgroup_parent.trim_start_matches('/').to_string(),
        ];
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs: Vec<PathBuf> = parents.iter().map(|p| root.join(p)).collect();
        for ctl in fs::read_dir(root).into_iter().flatten().flatten() {
            dirs.extend(parents.iter().map(|p| ctl.path().join(p)));
        }
        let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        for dir in &dirs {
            for id in fs::read_dir(dir).into_iter().flatten().flatten() {
                let procs = fs::read_to_string(id.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    let _ = crate::run("kill", &["-KILL", pid]);
                }
            }
        }
        for dir in &dirs {
            for id in fs::read_dir(dir).into_iter().flatten().flatten() {
                if id.path().is_dir() {
                    // A cgroup empties only once its killed processes are
                    // reaped; bounded retries.
                    let _ = crate::wait_until(Duration::from_secs(5), || {
                        fs::remove_dir(id.path()).is_ok() || !id.path().exists()
                    });
                }
            }
            let _ = fs::remove_dir(dir);
        }
        if let Some(before) = &self.cni_netns_before {
            for name in cri_netns_entries() {
                if !before.contains(&name) {
                    let path = format!("/run/netns/{name}");
                    let _ = crate::run("umount", &[&path]);
                    let _ = fs::remove_file(&path);
                }
            }
        }
        // The daemon's mounts (snapshots, rootfs) lived in its private mount
        // namespace, gone with its last process; nothing was mounted here.
        // Removing the dir regardless of panics: nothing in it is evidence
        // that the printed log does not already show.
        let _ = fs::remove_dir_all(&self.dir.path);
    }
}

/// Run a command to completion within `timeout` (killed and a panic after).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    wait_output_bounded(child, timeout)
}

/// Names of the CRI plugin's pod netns (`/run/netns/cni-*`), sorted.
pub fn cri_netns_entries() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("cni-"))
        .collect();
    names.sort();
    names
}

/// What one CRI call printed.
#[derive(Debug)]
pub struct CriOutcome {
    pub exit: i32,
    pub report: Value,
}

impl CriOutcome {
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.exit, 0, "CRI call failed: {}", self.report);
        self
    }
}

//! Network-namespace tests of ferryd's agent: real veths, real netlink,
//! a real redb store. Each test makes `fyd-node-<pid>-<n>` and
//! `fyd-pod-<pid>-<n>-<i>` namespaces (deleted by a guard, even on failure)
//! and runs the agent on a thread that entered the node namespace.
//!
//! The dataplane side is `RecordingTableServer`: a test-only table-API
//! server that records what ferryd sends and answers Hello/Applied, so the
//! tests can assert the Hello, Sync, upserts and removes. The real
//! ferry-dataplane is exercised by the integration tests in itest/.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_api::objects::{ObjectsRequest, ObjectsResponse};
use ferry_api::pod::{self, code, IpamRequest, PodRequest, PodResponse, PodResult, RangeSpec};
use ferry_api::table::{MissingPort, Request, Response};
use ferry_api::MacAddr;
use ferryd::cni::Agent;
use ferryd::config::Config;
use ferryd::plumbing::host_ifname;
use ferryd::store::{AttachmentId, Record, State, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Notify;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed: {text}");
    text
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
    /// Only the owner deletes the namespace; views just run commands in it.
    owned: bool,
}

impl Netns {
    fn new(name: String) -> Netns {
        let _ = run("ip", &["netns", "del", &name]);
        run_ok("ip", &["netns", "add", &name]);
        run_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Netns { name, owned: true }
    }
    fn view(&self) -> Netns {
        Netns {
            name: self.name.clone(),
            owned: false,
        }
    }
    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ok("ip", &full)
    }
    fn has_link(&self, name: &str) -> bool {
        run("ip", &["-n", &self.name, "link", "show", "dev", name]).0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One test's world: a node namespace, pod namespaces, a state directory.
struct World {
    tag: String,
    node: Netns,
    dir: TempDir,
}

impl World {
    fn new() -> World {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("fyd-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        World {
            node: Netns::new(format!("fyd-node-{tag}")),
            tag,
            dir: TempDir(dir),
        }
    }
    fn pod(&self, i: u32) -> Netns {
        Netns::new(format!("fyd-pod-{}-{i}", self.tag))
    }
    fn dp_socket(&self) -> PathBuf {
        self.dir.0.join("dataplane.sock")
    }
    fn config(&self) -> Config {
        self.config_with("mtu = 1400\n").unwrap()
    }
    /// The test's sockets, state, pod CIDR and host port, plus `extra`.
    fn config_with(&self, extra: &str) -> Result<Config, ferryd::config::ConfigError> {
        self.config_cidrs(r#"["10.77.0.0/24"]"#, extra)
    }
    /// [`World::config_with`] with `pod_cidrs` of its own.
    fn config_cidrs(
        &self,
        pod_cidrs: &str,
        extra: &str,
    ) -> Result<Config, ferryd::config::ConfigError> {
        Config::parse(&format!(
            "socket = \"{d}/ferryd.sock\"\ndataplane_socket = \"{d}/dataplane.sock\"\nstate_dir = \"{d}/state\"\n\
             pod_cidrs = {pod_cidrs}\nhost_port = \"fhp0\"\nmetrics_listen = \"\"\n{extra}",
            d = self.dir.0.display()
        ))
    }

    /// Run `f` on a thread inside the node namespace, on a current-thread
    /// runtime (so every thread the agent spawns starts in the node too).
    fn in_node<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        common::in_netns(self.node.path(), f)
    }
}

/// What the test dataplane says its ports carry.
const MTU_LIMITS: ferry_api::table::MtuLimits = ferry_api::table::MtuLimits {
    veth: 1778,
    tap: 9000,
    uplink: None,
};

/// Test-only table-API server: records every request, answers Hello with
/// `workers` and [`MTU_LIMITS`], and every update with Applied.
#[derive(Clone)]
struct RecordingTableServer {
    requests: Arc<Mutex<Vec<Request>>>,
    kick: Arc<Notify>,
    /// How long each UpsertEndpoint waits before its answer.
    upsert_delay: Arc<Mutex<Duration>>,
    /// What every Sync answer names as missing.
    sync_missing: Arc<Mutex<Vec<MissingPort>>>,
}

impl RecordingTableServer {
    fn start(path: &Path, workers: u32) -> RecordingTableServer {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let srv = RecordingTableServer {
            requests: Arc::default(),
            kick: Arc::new(Notify::new()),
            upsert_delay: Arc::default(),
            sync_missing: Arc::default(),
        };
        let s = srv.clone();
        tokio::spawn(async move {
            let mut generation = 0u64;
            while let Ok((stream, _)) = listener.accept().await {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                loop {
                    let line = tokio::select! {
                        l = lines.next_line() => l,
                        _ = s.kick.notified() => break,
                    };
                    let Ok(Some(line)) = line else { break };
                    let req: Request =
                        serde_json::from_str(&line).expect("ferryd sent a valid table request");
                    let resp = match &req {
                        Request::Hello { .. } => Response::Hello {
                            api_version: ferry_api::table::API_VERSION,
                            workers,
                            mtu_limits: Some(MTU_LIMITS),
                        },
                        Request::Sync { .. } => {
                            generation += 1;
                            Response::Applied {
                                generation,
                                missing: s.sync_missing.lock().unwrap().clone(),
                            }
                        }
                        _ => {
                            generation += 1;
                            Response::Applied {
                                generation,
                                missing: Vec::new(),
                            }
                        }
                    };
                    let upsert = matches!(req, Request::UpsertEndpoint { .. });
                    s.requests.lock().unwrap().push(req);
                    if upsert {
                        let d = *s.upsert_delay.lock().unwrap();
                        tokio::time::sleep(d).await;
                    }
                    let mut out = serde_json::to_vec(&resp).unwrap();
                    out.push(b'\n');
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
        });
        srv
    }
    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
    /// Close the current connection (as a dataplane restart would).
    fn disconnect(&self) {
        self.kick.notify_one();
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn req(command: pod::Command, container: &str, netns: Option<&str>, ifname: &str) -> PodRequest {
    PodRequest {
        command,
        network: "fyd-net".into(),
        container_id: container.into(),
        netns: netns.map(str::to_string),
        ifname: ifname.into(),
        args: Default::default(),
        ipam: IpamRequest::default(),
        mtu: None,
        attachment: Default::default(),
        valid_attachments: vec![],
        prev_result: None,
        deadline_ms: None,
    }
}

fn ok_result(resp: PodResponse) -> PodResult {
    match resp {
        PodResponse::Ok { result: Some(r) } => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

fn assert_ok(resp: PodResponse) {
    assert!(
        matches!(resp, PodResponse::Ok { result: None }),
        "expected ok, got {resp:?}"
    );
}

fn error_code(resp: PodResponse) -> u32 {
    pod_error(resp).code
}

fn pod_error(resp: PodResponse) -> pod::PodError {
    match resp {
        PodResponse::Error(e) => {
            assert!(!e.msg.is_empty());
            e
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn add_plumbs_pod_check_passes_del_twice_succeeds() {
    let w = World::new();
    let pod = w.pod(1);
    let (cfg, dp_sock, pod_path, node_ns, pod_ns) = (
        w.config(),
        w.dp_socket(),
        pod.path(),
        w.node.view(),
        pod.view(),
    );
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 2);
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;

        // The host port: kernel end with the gateway /32 and the CIDR route.
        let addr = node_ns.ip(&["-4", "addr", "show", "dev", "fhp0"]);
        assert!(addr.contains("10.77.0.1/32"), "{addr}");
        let routes = node_ns.ip(&["-4", "route", "show"]);
        assert!(routes.contains("10.77.0.0/24 dev fhp0"), "{routes}");
        assert!(routes.contains("src 10.77.0.1"), "{routes}");
        let dpend = node_ns.ip(&["-d", "link", "show", "dev", "fhp0dp"]);
        assert!(
            dpend.contains("numtxqueues 2") && dpend.contains("numrxqueues 2"),
            "{dpend}"
        );
        assert!(dpend.contains("mtu 1400"), "{dpend}");

        // Hello then Sync with the host port in the node settings.
        let reqs = dp.requests();
        assert!(
            matches!(
                reqs[0],
                Request::Hello {
                    api_version: ferry_api::table::API_VERSION
                }
            ),
            "{reqs:?}"
        );
        let Request::Sync {
            node,
            endpoints,
            routes,
        } = &reqs[1]
        else {
            panic!("second request not Sync: {reqs:?}")
        };
        assert!(endpoints.is_empty() && routes.is_empty());
        assert_eq!(node.gateway4(), Some(Ipv4Addr::new(10, 77, 0, 1)));
        assert_eq!(node.router_mac, MacAddr::ROUTER);
        let hp = node.host_port.as_ref().expect("host port in Sync");
        assert_eq!(
            (hp.ifname.as_str(), hp.kernel_ifname.as_str()),
            ("fhp0dp", "fhp0")
        );
        let link = node_ns.ip(&["link", "show", "dev", "fhp0"]);
        assert!(
            link.contains(&hp.kernel_mac.to_string()),
            "{link} vs {}",
            hp.kernel_mac
        );

        // A NetworkPolicy isolating the pods of `shop`, seen by the
        // follower before the ADD.
        let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n";
        let apply = ObjectsRequest::Apply {
            file: "deny.yaml".into(),
            text: deny.into(),
        };
        assert!(matches!(
            agent.objects(apply).await,
            ObjectsResponse::Applied { .. }
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ObjectsResponse::Listing(l) = agent.objects(ObjectsRequest::Get).await else {
                panic!("no listing")
            };
            if !l.objects.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "policy never followed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // ADD, of pod shop/a.
        let mut add = req(pod::Command::Add, "ctr-a", Some(&pod_path), "eth0");
        add.args.insert("K8S_POD_NAMESPACE".into(), "shop".into());
        add.args.insert("K8S_POD_NAME".into(), "a".into());
        let result = ok_result(agent.handle(add.clone()).await);
        let ip = Ipv4Addr::new(10, 77, 0, 2);
        let mac = MacAddr::for_pod(ip);
        assert_eq!(result.ips.len(), 1);
        assert_eq!(result.ips[0].address.to_string(), "10.77.0.2/24");
        assert_eq!(
            result.ips[0].gateway,
            Some(Ipv4Addr::new(10, 77, 0, 1).into())
        );
        let iface = &result.interfaces[result.ips[0].interface];
        assert_eq!(iface.name, "eth0");
        assert_eq!(iface.mac, mac);
        assert_eq!(iface.sandbox.as_deref(), Some(pod_path.as_str()));
        assert_eq!(result.routes.len(), 1);
        assert_eq!(result.routes[0].dst.to_string(), "0.0.0.0/0");

        // The pod end: name, address, MAC, MTU (the local one: local_mtu
        // lowered to what the veth port carries), up, default route with
        // the path MTU (`mtu`); the pods of the node (the connected route)
        // are reached at the link's.
        let shown = pod_ns.ip(&["-d", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains("10.77.0.2/24"), "{shown}");
        assert!(shown.contains(&mac.to_string()), "{shown}");
        let local = format!("mtu {}", MTU_LIMITS.veth);
        assert!(shown.contains(&local), "{shown}");
        assert!(shown.contains("numtxqueues 2"), "{shown}");
        assert!(
            shown.contains("state UP") || shown.contains(",UP"),
            "{shown}"
        );
        let r = pod_ns.ip(&["-4", "route", "show"]);
        assert!(r.contains("default via 10.77.0.1 dev eth0"), "{r}");
        let default = r.lines().find(|l| l.starts_with("default")).unwrap();
        assert!(default.contains(" mtu 1400"), "{r}");
        let connected = r.lines().find(|l| l.starts_with("10.77.0.0/24")).unwrap();
        assert!(!connected.contains("mtu"), "{r}");
        // The host end: deterministic name, up, the link's MTU (a veth
        // drops what is larger than its receiving end's), queues.
        let host = host_ifname("ctr-a", "eth0");
        let hl = node_ns.ip(&["-d", "link", "show", "dev", &host]);
        assert!(
            hl.contains(&local) && hl.contains("numtxqueues 2"),
            "{hl}"
        );
        assert!(
            !node_ns.ip(&["-4", "route", "show"]).contains("10.77.0.2"),
            "no kernel route to a pod"
        );

        // The dataplane got the endpoint.
        let up = dp.requests().into_iter().find_map(|r| match r {
            Request::UpsertEndpoint { endpoint } => Some(endpoint),
            _ => None,
        });
        let ep = up.expect("UpsertEndpoint sent");
        assert_eq!(
            (
                ep.id.as_str(),
                ep.host_ifname.as_str(),
                ep.ipv4().unwrap(),
                ep.mac
            ),
            ("ctr-a/eth0", host.as_str(), ip, mac)
        );
        assert_eq!(ep.mtu, Some(MTU_LIMITS.veth), "the link's MTU");

        // Its policy went first, before ADD answered.
        let reqs = dp.requests();
        let at = |f: &dyn Fn(&Request) -> bool| reqs.iter().position(f);
        let policy = at(&|r| {
            matches!(r, Request::UpsertPolicy { policy }
                if policy.endpoint == "ctr-a/eth0" && policy.ingress == Some(vec![]))
        });
        let endpoint = at(&|r| matches!(r, Request::UpsertEndpoint { .. }));
        assert!(
            policy.is_some() && policy < endpoint,
            "UpsertPolicy before UpsertEndpoint: {reqs:?}"
        );

        // The record is ready.
        let id = AttachmentId::new("fyd-net", "ctr-a", "eth0");
        assert_eq!(agent.store().get(&id).unwrap().unwrap().state, State::Ready);

        // ADD again: the same result, no second upsert.
        let n_before = dp.requests().len();
        assert_eq!(ok_result(agent.handle(add.clone()).await), result);
        assert_eq!(dp.requests().len(), n_before);

        // CHECK, with and without prevResult; with a wrong one -> 103.
        let mut check = req(pod::Command::Check, "ctr-a", Some(&pod_path), "eth0");
        assert_ok(agent.handle(check.clone()).await);
        check.prev_result = Some(result.clone());
        assert_ok(agent.handle(check.clone()).await);
        let mut wrong = result.clone();
        wrong.ips[0].address = "10.77.0.9/24".parse().unwrap();
        check.prev_result = Some(wrong);
        assert_eq!(
            error_code(agent.handle(check.clone()).await),
            code::CHECK_MISMATCH
        );
        // CHECK of an unknown container -> 3.
        let unknown = req(pod::Command::Check, "nobody", Some(&pod_path), "eth0");
        assert_eq!(
            error_code(agent.handle(unknown).await),
            code::UNKNOWN_CONTAINER
        );

        // STATUS: ready.
        match agent.handle(req(pod::Command::Status, "", None, "")).await {
            PodResponse::Status { ready, msg, .. } => assert!(ready, "{msg}"),
            other => panic!("{other:?}"),
        }

        // DEL, then DEL again (and once more without a netns).
        let del = req(pod::Command::Del, "ctr-a", Some(&pod_path), "eth0");
        assert_ok(agent.handle(del.clone()).await);
        assert!(!node_ns.has_link(&host), "host veth left after DEL");
        assert!(!pod_ns.has_link("eth0"), "pod eth0 left after DEL");
        assert!(agent.store().get(&id).unwrap().is_none());
        assert_eq!(
            agent.store().holder_of(ip.into()).unwrap(),
            None,
            "address released"
        );
        assert!(
            dp.requests()
                .iter()
                .any(|r| matches!(r, Request::RemoveEndpoint { id } if id == "ctr-a/eth0")),
            "RemoveEndpoint sent"
        );
        assert!(
            dp.requests().iter().any(
                |r| matches!(r, Request::RemovePolicy { endpoint } if endpoint == "ctr-a/eth0")
            ),
            "RemovePolicy sent"
        );
        assert_ok(agent.handle(del).await);
        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-a", None, "eth0"))
                .await,
        );
        // CHECK after DEL: unknown container.
        let check = req(pod::Command::Check, "ctr-a", Some(&pod_path), "eth0");
        assert_eq!(
            error_code(agent.handle(check).await),
            code::UNKNOWN_CONTAINER
        );
    });
    drop(pod);
}

/// A sysctl as the namespace `ns` sees it (/proc/sys/net is per namespace).
fn sysctl_in(ns: &Netns, path: &str) -> String {
    run_ok("ip", &["netns", "exec", &ns.name, "cat", path])
        .trim()
        .to_string()
}

#[test]
fn dual_stack_add_plumbs_both_families_and_del_frees_both() {
    let w = World::new();
    let (pod, pod6, podt) = (w.pod(1), w.pod(2), w.pod(3));
    let cfg = w
        .config_cidrs(r#"["10.77.0.0/24", "fd00:77::/64"]"#, "mtu = 1400\n")
        .unwrap();
    let (dp_sock, pod_path, pod6_path, node_ns, pod_ns, pod6_ns, tap_ns) = (
        w.dp_socket(),
        pod.path(),
        pod6.path(),
        w.node.view(),
        pod.view(),
        pod6.view(),
        podt.view(),
    );
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 1);
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;

        // The host port's kernel end: both gateways, both CIDR routes.
        let addr = node_ns.ip(&["-6", "addr", "show", "dev", "fhp0"]);
        let gw_line = addr
            .lines()
            .find(|l| l.contains("fd00:77::1/128"))
            .unwrap_or_else(|| panic!("no IPv6 gateway on fhp0: {addr}"));
        assert!(!gw_line.contains("tentative"), "nodad: {addr}");
        let routes = node_ns.ip(&["-6", "route", "show"]);
        assert!(routes.contains("fd00:77::/64 dev fhp0"), "{routes}");
        assert!(node_ns
            .ip(&["-4", "addr", "show", "dev", "fhp0"])
            .contains("10.77.0.1/32"));

        // The Sync carries both families.
        let Some(Request::Sync { node, .. }) = dp.requests().get(1).cloned() else {
            panic!("no Sync: {:?}", dp.requests())
        };
        let gw6: std::net::IpAddr = "fd00:77::1".parse().unwrap();
        assert_eq!(node.gateways, vec![Ipv4Addr::new(10, 77, 0, 1).into(), gw6]);
        assert_eq!(
            node.pod_cidrs,
            vec![
                "10.77.0.0/24".parse::<ipnet::IpNet>().unwrap(),
                "fd00:77::/64".parse().unwrap()
            ]
        );

        // ADD: one address per family, a default route per family.
        let add = req(pod::Command::Add, "ctr-d", Some(&pod_path), "eth0");
        let result = ok_result(agent.handle(add).await);
        let got: Vec<String> = result.ips.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(got, ["10.77.0.2/24", "fd00:77::2/64"]);
        assert_eq!(result.ips[1].gateway, Some(gw6));
        let routes: Vec<String> = result
            .routes
            .iter()
            .map(|r| format!("{} {:?}", r.dst, r.gw))
            .collect();
        assert_eq!(
            routes,
            ["0.0.0.0/0 Some(10.77.0.1)", "::/0 Some(fd00:77::1)"]
        );
        let v4 = Ipv4Addr::new(10, 77, 0, 2);
        let v6: std::net::IpAddr = "fd00:77::2".parse().unwrap();
        let mac = MacAddr::for_pod(v4);
        assert_eq!(
            result.interfaces[0].mac, mac,
            "the IPv4 address names the MAC"
        );

        // The pod end: both addresses, the IPv6 one usable at once (nodad),
        // both default routes; no DAD and no RAs on the interface.
        let shown = pod_ns.ip(&["addr", "show", "dev", "eth0"]);
        assert!(shown.contains("10.77.0.2/24"), "{shown}");
        let line6 = shown
            .lines()
            .find(|l| l.contains("fd00:77::2/64"))
            .unwrap_or_else(|| panic!("no IPv6 address: {shown}"));
        assert!(
            !line6.contains("tentative") && !line6.contains("dadfailed"),
            "{shown}"
        );
        assert!(!shown.contains("dadfailed"), "{shown}");
        let r4 = pod_ns.ip(&["-4", "route", "show"]);
        assert!(r4.contains("default via 10.77.0.1 dev eth0"), "{r4}");
        let r6 = pod_ns.ip(&["-6", "route", "show"]);
        assert!(r6.contains("default via fd00:77::1 dev eth0"), "{r6}");
        // The path MTU on both default routes and on the gateways' host
        // routes, none on the connected ones.
        for r in [&r4, &r6] {
            for l in r.lines() {
                let path = l.starts_with("default")
                    || l.starts_with("10.77.0.1 ")
                    || l.starts_with("fd00:77::1 ");
                assert_eq!(path, l.contains(" mtu 1400"), "{r}");
            }
        }
        for key in ["accept_dad", "accept_ra"] {
            let path = format!("/proc/sys/net/ipv6/conf/eth0/{key}");
            assert_eq!(sysctl_in(&pod_ns, &path), "0", "{key}");
        }

        // The dataplane's endpoint holds both addresses.
        let ep = dp
            .requests()
            .into_iter()
            .find_map(|r| match r {
                Request::UpsertEndpoint { endpoint } => Some(endpoint),
                _ => None,
            })
            .expect("UpsertEndpoint sent");
        assert_eq!(ep.ips, vec![std::net::IpAddr::from(v4), v6]);
        assert_eq!(ep.mac, mac);

        // CHECK with an IPv6 prevResult passes; without the IPv6 default
        // route it is a mismatch.
        let mut check = req(pod::Command::Check, "ctr-d", Some(&pod_path), "eth0");
        check.prev_result = Some(result.clone());
        assert_ok(agent.handle(check.clone()).await);
        pod_ns.ip(&["-6", "route", "del", "default"]);
        let e = pod_error(agent.handle(check.clone()).await);
        assert_eq!(e.code, code::CHECK_MISMATCH, "{e:?}");
        assert!(e.details.contains("::/0"), "{e:?}");

        // An IPv6-only pod (its network's one range set is IPv6): one
        // address, a MAC of its own, the IPv6 default route only.
        let mut add6 = req(pod::Command::Add, "ctr-6", Some(&pod6_path), "eth0");
        add6.ipam.ranges = vec![RangeSpec {
            subnet: "fd00:77::/64".parse().unwrap(),
            range_start: Some("fd00:77::100".parse().unwrap()),
            range_end: None,
            gateway: None,
        }];
        let r6only = ok_result(agent.handle(add6).await);
        let only: std::net::IpAddr = "fd00:77::100".parse().unwrap();
        assert_eq!(r6only.ips.len(), 1, "{r6only:?}");
        assert_eq!(r6only.ips[0].address.addr(), only);
        assert_eq!(r6only.interfaces[0].mac, MacAddr::for_pod_ip(only));
        assert_eq!(r6only.routes.len(), 1);
        let shown = pod6_ns.ip(&["addr", "show", "dev", "eth0"]);
        assert!(
            shown.contains("fd00:77::100/64") && !shown.contains("inet "),
            "{shown}"
        );
        let r6 = pod6_ns.ip(&["-6", "route", "show"]);
        assert!(r6.contains("default via fd00:77::1 dev eth0"), "{r6}");

        // A dual-stack tap pod is configured the same way.
        let mut addt = req(pod::Command::Add, "ctr-t", Some(&tap_ns.path()), "eth0");
        addt.attachment = ferry_api::table::Attachment::Tap;
        let rt = ok_result(agent.handle(addt).await);
        assert_eq!(rt.ips.len(), 2, "{rt:?}");
        let shown = tap_ns.ip(&["addr", "show", "dev", "eth0"]);
        let tap6 = rt.ips[1].address.to_string();
        let line6 = shown
            .lines()
            .find(|l| l.contains(&tap6))
            .unwrap_or_else(|| panic!("no {tap6}: {shown}"));
        assert!(!line6.contains("tentative"), "{shown}");
        let r6 = tap_ns.ip(&["-6", "route", "show"]);
        assert!(r6.contains("default via fd00:77::1 dev eth0"), "{r6}");
        // A tap keeps TSO: `mtu` on its link, no route MTU.
        assert!(!r6.contains("mtu"), "{r6}");
        let link = tap_ns.ip(&["link", "show", "dev", "eth0"]);
        assert!(link.contains("mtu 1400"), "{link}");

        // DEL frees both families and removes every link.
        for (ctr, ns) in [("ctr-d", &pod_ns), ("ctr-6", &pod6_ns), ("ctr-t", &tap_ns)] {
            let del = req(pod::Command::Del, ctr, Some(&ns.path()), "eth0");
            assert_ok(agent.handle(del).await);
            assert!(!ns.has_link("eth0"), "{ctr}: pod eth0 left after DEL");
            assert!(!node_ns.has_link(&host_ifname(ctr, "eth0")), "{ctr}");
        }
        for ip in [v4.into(), v6, only] {
            assert_eq!(agent.store().holder_of(ip).unwrap(), None, "{ip} released");
        }
        assert!(agent.store().records().unwrap().is_empty());
    });
    drop((pod, pod6, podt));
}

/// Nothing of an attachment is left: no record, no address, no host veth.
fn assert_nothing_left(agent: &Agent, node_ns: &Netns, container: &str) {
    assert!(
        agent.store().records().unwrap().is_empty(),
        "a record is left"
    );
    assert!(
        !node_ns.has_link(&host_ifname(container, "eth0")),
        "a host veth is left"
    );
}

#[test]
fn adds_nobody_waits_for_are_rolled_back() {
    let w = World::new();
    let pod = w.pod(1);
    let (cfg, dp_sock, pod_path, node_ns) = (w.config(), w.dp_socket(), pod.path(), w.node.view());
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 1);
        let sock = cfg.socket.clone();
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;

        // The plugin's deadline has passed: rolled back, code 11.
        let mut late = req(pod::Command::Add, "ctr-late", Some(&pod_path), "eth0");
        late.deadline_ms = Some(1);
        assert_eq!(error_code(agent.handle(late).await), code::TRY_AGAIN_LATER);
        assert_nothing_left(&agent, &node_ns, "ctr-late");

        // The plugin hangs up while the dataplane is slow to apply: the
        // ADD is rolled back rather than completed behind its back.
        *dp.upsert_delay.lock().unwrap() = Duration::from_millis(500);
        let listener = ferryd::server::bind(&sock).unwrap();
        let requests = Arc::new(ferryd::metrics::RequestCounters::default());
        let server_agent = Arc::clone(&agent);
        tokio::spawn(async move { ferryd::server::serve(&listener, server_agent, requests).await });
        {
            let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let mut line =
                serde_json::to_vec(&req(pod::Command::Add, "ctr-gone", Some(&pod_path), "eth0"))
                    .unwrap();
            line.push(b'\n');
            s.write_all(&line).await.unwrap();
            wait_for("the ADD reaches the dataplane", || {
                dp.requests()
                    .iter()
                    .any(|r| matches!(r, Request::UpsertEndpoint { .. }))
            })
            .await;
        } // hang up
        wait_for("the abandoned ADD is rolled back", || {
            agent.store().records().unwrap().is_empty()
                && dp
                    .requests()
                    .iter()
                    .any(|r| matches!(r, Request::RemoveEndpoint { id } if id == "ctr-gone/eth0"))
        })
        .await;
        assert_nothing_left(&agent, &node_ns, "ctr-gone");
        // The socket is the owner's alone, and a second ferryd cannot take
        // it over while this one serves.
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            ferryd::server::bind(&sock),
            Err(ferryd::server::ServerError::InUse { .. })
        ));
    });
    drop(pod);
}

/// Drop the dataplane connection and wait until ferryd said Hello and
/// synced again.
async fn resync(dp: &RecordingTableServer, agent: &Agent) {
    let n = dp.requests().len();
    dp.disconnect();
    wait_for("resync", || {
        dp.requests().len() >= n + 2 && agent.dataplane().connected()
    })
    .await;
}

fn status_of(resp: PodResponse) -> (bool, u32, Vec<pod::StaleAttachment>) {
    match resp {
        PodResponse::Status {
            ready, code, stale, ..
        } => (ready, code, stale),
        other => panic!("expected a STATUS answer, got {other:?}"),
    }
}

#[test]
fn a_partial_sync_is_a_success_that_names_what_is_missing() {
    let w = World::new();
    let pod = w.pod(1);
    let (cfg, dp_sock, pod_path) = (w.config(), w.dp_socket(), pod.path());
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 1);
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;
        let r = ok_result(
            agent
                .handle(req(pod::Command::Add, "ctr-m", Some(&pod_path), "eth0"))
                .await,
        );
        let status = || req(pod::Command::Status, "", None, "");
        assert_eq!(status_of(agent.handle(status()).await).1, 0);

        // The restarted dataplane cannot open the pod's port nor the host
        // port: still connected and serving, the pod reported stale and
        // STATUS "limited connectivity" (51).
        *dp.sync_missing.lock().unwrap() = vec![
            MissingPort {
                endpoint: "ctr-m/eth0".into(),
                port: host_ifname("ctr-m", "eth0"),
                error: "interface does not exist".into(),
            },
            MissingPort {
                endpoint: "host".into(),
                port: "fhp0dp".into(),
                error: "interface does not exist".into(),
            },
        ];
        resync(&dp, &agent).await;
        let (ready, code, stale) = status_of(agent.handle(status()).await);
        assert!(!ready);
        assert_eq!(code, code::LIMITED_CONNECTIVITY);
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].endpoint, "ctr-m/eth0");
        assert_eq!(stale[0].ip, r.ips[0].address.addr());

        // All ports back: ready again, nothing stale.
        dp.sync_missing.lock().unwrap().clear();
        resync(&dp, &agent).await;
        let (ready, code, stale) = status_of(agent.handle(status()).await);
        assert!(ready && code == 0 && stale.is_empty(), "{code} {stale:?}");
        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-m", Some(&pod_path), "eth0"))
                .await,
        );
    });
    drop(pod);
}

const UPLINK: &str = "uplink = \"up0\"\n\
    [[peers]]\naddress = \"192.168.70.2\"\npod_cidr = \"10.70.2.0/24\"\n\
    [[peers]]\naddress = \"192.168.71.3\"\npod_cidr = \"10.70.3.0/24\"\n";

/// An uplink (a veth `up0` of the node namespace standing in for the NIC):
/// the Sync carries it and a route per peer, the node kernel gets the peer
/// routes through the host port, forwarding and the masquerade table, the
/// MTU follows the uplink, and a dataplane without the uplink port makes
/// STATUS answer 51.
#[test]
fn an_uplink_reaches_the_sync_and_the_node_kernel() {
    let w = World::new();
    w.node
        .ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    w.node.ip(&["addr", "add", "192.168.70.1/24", "dev", "up0"]);
    w.node.ip(&["link", "set", "up0", "up"]);
    let node = w.node.view();
    let (cfg, dp_sock) = (w.config_with(UPLINK).unwrap(), w.dp_socket());
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 1);
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;
        let sync = dp
            .requests()
            .into_iter()
            .find_map(|r| match r {
                Request::Sync { node, routes, .. } => Some((node, routes)),
                _ => None,
            })
            .expect("a Sync");
        let (settings, routes) = sync;
        let up = settings.uplink.expect("the uplink in the Sync");
        assert_eq!(up.ifname, "up0");
        assert_eq!(up.address, Ipv4Addr::new(192, 168, 70, 1));
        assert_eq!(settings.mtu, 1450, "veth MTU 1500 less VXLAN's 50");
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(
            routes[0].next_hop,
            ferry_api::table::NextHop::Node("192.168.70.2".parse().unwrap())
        );

        let kernel_routes = node.ip(&["route"]);
        for want in [
            "10.70.2.0/24 dev fhp0",
            "10.70.3.0/24 dev fhp0",
            "10.77.0.0/24 dev fhp0",
        ] {
            assert!(kernel_routes.contains(want), "{want}: {kernel_routes}");
        }
        assert!(node.ip(&["link", "show", "fhp0"]).contains("mtu 1450"));
        let forward = run_ok(
            "ip",
            &[
                "netns",
                "exec",
                &node.name,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ],
        );
        assert_eq!(forward.trim(), "1");
        let (have_nft, _) = run("nft", &["--version"]);
        if have_nft {
            let table = run_ok(
                "ip",
                &[
                    "netns", "exec", &node.name, "nft", "list", "table", "ip", "ferry",
                ],
            );
            assert!(table.contains("masquerade"), "{table}");
            assert!(table.contains("10.70.3.0/24"), "{table}");
        }

        let status = || req(pod::Command::Status, "", None, "");
        let (ready, code, _) = status_of(agent.handle(status()).await);
        assert!(ready && code == 0, "{code}");
        *dp.sync_missing.lock().unwrap() = vec![MissingPort {
            endpoint: "uplink".into(),
            port: "up0".into(),
            error: "not a NIC the dataplane can drive".into(),
        }];
        resync(&dp, &agent).await;
        let (ready, code, stale) = status_of(agent.handle(status()).await);
        assert!(!ready);
        assert_eq!(code, code::LIMITED_CONNECTIVITY);
        assert!(stale.is_empty(), "the uplink is no pod: {stale:?}");
        dp.sync_missing.lock().unwrap().clear();
        resync(&dp, &agent).await;
        assert_eq!(status_of(agent.handle(status()).await).1, 0);
    });
    // A configuration the node refuses stops the agent before it makes
    // anything (a fresh namespace: no host port appears).
    let w = World::new();
    w.node
        .ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"]);
    w.node.ip(&["addr", "add", "192.168.70.1/24", "dev", "up0"]);
    let node = w.node.view();
    let direct = format!("{UPLINK}[overlay]\nmode = \"direct\"\n");
    let cfg = w.config_with(&direct).unwrap();
    w.in_node(move || async move {
        match Agent::start(cfg).await {
            Err(e) => assert!(e.to_string().contains(ferryd::config::OFF_LINK_PEER), "{e}"),
            Ok(_) => panic!("direct mode with an off-link peer was accepted"),
        }
        assert!(!node.has_link("fhp0"), "the host port was made");
    });
}

#[test]
fn failed_add_leaves_no_veth_and_no_allocation() {
    let w = World::new();
    let pod = w.pod(1);
    // The interface name is already taken in the pod: the rename fails midway.
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    let (cfg, dp_sock, pod_path, node_ns) = (w.config(), w.dp_socket(), pod.path(), w.node.view());
    w.in_node(move || async move {
        let _dp = RecordingTableServer::start(&dp_sock, 1);
        let agent = Agent::start(cfg).await.unwrap();
        wait_for("dataplane connection", || agent.dataplane().connected()).await;

        let add = req(pod::Command::Add, "ctr-f", Some(&pod_path), "eth0");
        assert_eq!(error_code(agent.handle(add).await), code::PLUMBING_FAILED);
        let host = host_ifname("ctr-f", "eth0");
        assert!(
            !node_ns.has_link(&host),
            "host veth left after a failed ADD"
        );
        let links = run_ok("ip", &["-n", &node_ns.name, "link", "show"]);
        assert!(
            !links.contains(": fy"),
            "a pod veth is left in the node: {links}"
        );
        assert!(
            agent.store().records().unwrap().is_empty(),
            "a record is left"
        );
        assert_eq!(
            agent
                .store()
                .holder_of(Ipv4Addr::new(10, 77, 0, 2).into())
                .unwrap(),
            None
        );

        // A netns path that does not exist: error 4 (CNI_NETNS is bad), nothing left.
        let add = req(
            pod::Command::Add,
            "ctr-g",
            Some("/run/netns/fyd-does-not-exist"),
            "eth0",
        );
        assert_eq!(error_code(agent.handle(add).await), code::INVALID_ENV);
        assert!(agent.store().records().unwrap().is_empty());

        // Bad requests get their codes without touching anything.
        let mut bad = req(pod::Command::Add, "ctr-h", Some(&pod_path), "eth1");
        bad.ipam = IpamRequest {
            ranges: vec![RangeSpec {
                subnet: "10.99.0.0/24".parse().unwrap(),
                range_start: None,
                range_end: None,
                gateway: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            error_code(agent.handle(bad.clone()).await),
            code::INVALID_CONFIG
        );
        // This node serves IPv4 only: an IPv6 range (outside its CIDRs), a
        // route or an address asked of a family the pod gets no address of
        // is code 7.
        let v6_range = RangeSpec {
            subnet: "fd00:77::/64".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        };
        let v6_route = pod::RouteSpec {
            dst: "::/0".parse().unwrap(),
            gw: Some("fd00:77::1".parse().unwrap()),
        };
        for ipam in [
            IpamRequest {
                ranges: vec![v6_range],
                ..Default::default()
            },
            IpamRequest {
                routes: vec![v6_route],
                ..Default::default()
            },
            IpamRequest {
                requested: vec!["fd00:77::5".parse().unwrap()],
                ..Default::default()
            },
        ] {
            bad.ipam = ipam;
            let resp = agent.handle(bad.clone()).await;
            assert_eq!(error_code(resp), code::INVALID_CONFIG);
            assert_eq!(agent.store().records().unwrap().len(), 0);
        }
        bad.ipam = IpamRequest {
            requested: vec![Ipv4Addr::new(10, 77, 0, 1).into()],
            ..Default::default()
        };
        assert_eq!(
            error_code(agent.handle(bad.clone()).await),
            code::ADDRESS_UNAVAILABLE
        );
        bad.netns = None;
        assert_eq!(error_code(agent.handle(bad).await), code::INVALID_ENV);

        // An MTU above what the pod's attachment carries: error 7 naming
        // the limit, before anything is made.
        let mut big = req(pod::Command::Add, "ctr-m", Some(&pod_path), "eth1");
        big.mtu = Some(MTU_LIMITS.veth + 1);
        let e = pod_error(agent.handle(big.clone()).await);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("1778"), "{e:?}");
        assert!(agent.store().records().unwrap().is_empty());
        assert!(!node_ns.has_link(&host_ifname("ctr-m", "eth1")));
        big.attachment = ferry_api::table::Attachment::Tap;
        big.mtu = Some(MTU_LIMITS.tap + 1);
        let e = pod_error(agent.handle(big).await);
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("tap") && e.msg.contains("9000"), "{e:?}");
        assert!(agent.store().records().unwrap().is_empty());

        // An explicit request in a range works; asking for it again is 102.
        let mut add = req(pod::Command::Add, "ctr-i", Some(&pod_path), "eth1");
        add.ipam = IpamRequest {
            ranges: vec![RangeSpec {
                subnet: "10.77.0.0/24".parse().unwrap(),
                range_start: Some(Ipv4Addr::new(10, 77, 0, 100).into()),
                range_end: Some(Ipv4Addr::new(10, 77, 0, 110).into()),
                gateway: None,
            }],
            requested: vec![Ipv4Addr::new(10, 77, 0, 105).into()],
            ..Default::default()
        };
        let r = ok_result(agent.handle(add.clone()).await);
        assert_eq!(r.ips[0].address.to_string(), "10.77.0.105/24");
        let mut again = add.clone();
        again.container_id = "ctr-j".into();
        again.ifname = "eth2".into();
        assert_eq!(
            error_code(agent.handle(again).await),
            code::ADDRESS_UNAVAILABLE
        );
        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-i", Some(&pod_path), "eth1"))
                .await,
        );
    });
    drop(pod);
}

#[test]
fn add_without_dataplane_fails_11_and_rolls_back() {
    let w = World::new();
    let pod = w.pod(1);
    let (cfg, pod_path, node_ns) = (w.config(), pod.path(), w.node.view());
    w.in_node(move || async move {
        let agent = Agent::start(cfg).await.unwrap();
        // The host port exists even before the dataplane comes.
        assert!(node_ns.has_link("fhp0") && node_ns.has_link("fhp0dp"));
        let add = req(pod::Command::Add, "ctr-n", Some(&pod_path), "eth0");
        let resp = agent.handle(add).await;
        match &resp {
            PodResponse::Error(e) => {
                assert_eq!(e.code, code::TRY_AGAIN_LATER);
                assert!(e.msg.contains("ferry-dataplane is not connected"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        assert!(agent.store().records().unwrap().is_empty());
        assert!(!node_ns.has_link(&host_ifname("ctr-n", "eth0")));
        match agent.handle(req(pod::Command::Status, "", None, "")).await {
            PodResponse::Status { ready, msg, .. } => {
                assert!(!ready);
                assert!(msg.contains("not connected"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // DEL still succeeds.
        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-n", Some(&pod_path), "eth0"))
                .await,
        );
    });
    drop(pod);
}

#[test]
fn restart_rolls_back_pending_keeps_ready_and_resyncs() {
    let w = World::new();
    let pod = w.pod(1);
    let (cfg, dp_sock, pod_path, node_ns, pod_ns) = (
        w.config(),
        w.dp_socket(),
        pod.path(),
        w.node.view(),
        pod.view(),
    );
    w.in_node(move || async move {
        let dp = RecordingTableServer::start(&dp_sock, 1);
        // First life: one ready pod.
        let ready_ep;
        {
            let agent = Agent::start(cfg.clone()).await.unwrap();
            wait_for("dataplane connection", || agent.dataplane().connected()).await;
            let r = ok_result(
                agent
                    .handle(req(pod::Command::Add, "ctr-r", Some(&pod_path), "eth0"))
                    .await,
            );
            ready_ep = v4(r.ips[0].address.addr());
        }
        // A crash between allocation and plumbing: a pending record and a
        // half-made veth under its deterministic name.
        let crashed = AttachmentId::new("fyd-net", "ctr-p", "eth0");
        let host_p = host_ifname("ctr-p", "eth0");
        {
            let store = Store::open(&cfg.state_dir).unwrap();
            let pools = ferryd::ipam::PoolSets::for_request(
                &IpamRequest::default(),
                &cfg.pod_nets(),
                &cfg.gateways(),
            )
            .unwrap();
            let rec = store
                .allocate_pending(&crashed, &pools, &[], |chosen| Record {
                    id: crashed.clone(),
                    addrs: ferryd::store::Addresses {
                        addresses: chosen
                            .iter()
                            .map(|(pool, ip)| ferryd::store::PodAddress::new(pool, *ip))
                            .collect(),
                    },
                    host_ifname: host_p.clone(),
                    mac: MacAddr::for_pod_ip(chosen[0].1),
                    netns: pod_path.clone(),
                    netns_id: None,
                    mtu: 1400,
                    attachment: Default::default(),
                    state: State::Pending,
                    pod_namespace: None,
                    pod_name: None,
                    result: PodResult {
                        interfaces: vec![],
                        ips: vec![],
                        routes: vec![],
                    },
                })
                .unwrap();
            assert_eq!(rec.state, State::Pending);
        }
        node_ns.ip(&[
            "link", "add", &host_p, "type", "veth", "peer", "name", "fydtmp",
        ]);
        // The host port was lost too; restart must re-create it.
        node_ns.ip(&["link", "del", "fhp0"]);

        let before = dp.requests().len();
        let agent = Agent::start(cfg.clone()).await.unwrap();
        assert!(!node_ns.has_link(&host_p), "pending veth not rolled back");
        assert!(
            agent.store().get(&crashed).unwrap().is_none(),
            "pending record not rolled back"
        );
        assert!(node_ns.has_link("fhp0"), "host port not re-created");
        let kept = AttachmentId::new("fyd-net", "ctr-r", "eth0");
        assert_eq!(
            agent.store().get(&kept).unwrap().unwrap().state,
            State::Ready
        );
        assert!(pod_ns.has_link("eth0"), "restart touched the ready pod");

        // The new connection syncs the ready endpoint.
        wait_for("resync", || dp.requests().len() >= before + 2).await;
        let reqs = dp.requests();
        let Request::Sync { endpoints, .. } = &reqs[before + 1] else {
            panic!("no Sync after Hello: {reqs:?}")
        };
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].ipv4(), Some(ready_ep));

        // A dataplane restart (connection dropped) gets a full Sync again;
        // a DEL made meanwhile is reconciled by it.
        let n = dp.requests().len();
        dp.disconnect();
        wait_for("reconnect", || {
            dp.requests().len() >= n + 2 && agent.dataplane().connected()
        })
        .await;
        let reqs = dp.requests();
        assert!(matches!(reqs[n], Request::Hello { .. }), "{:?}", &reqs[n..]);
        assert!(matches!(&reqs[n + 1], Request::Sync { endpoints, .. } if endpoints.len() == 1));

        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-r", Some(&pod_path), "eth0"))
                .await,
        );
        assert!(agent.store().records().unwrap().is_empty());

        // GC releases what is not listed as valid.
        let a = ok_result(
            agent
                .handle(req(pod::Command::Add, "ctr-g1", Some(&pod_path), "eth0"))
                .await,
        );
        // A second interface in the same pod may not write over the first
        // one's default route (routes are created, never replaced, as the
        // reference plugins do): refused and rolled back.
        let dup = req(pod::Command::Add, "ctr-g2", Some(&pod_path), "eth1");
        assert_eq!(error_code(agent.handle(dup).await), code::PLUMBING_FAILED);
        assert!(!pod_ns.has_link("eth1"), "refused ADD left its interface");
        assert_eq!(agent.store().records().unwrap().len(), 1);
        // With a route of its own it is fine.
        let mut second = req(pod::Command::Add, "ctr-g2", Some(&pod_path), "eth1");
        second.ipam.routes = vec![pod::RouteSpec {
            dst: "10.200.0.0/16".parse().unwrap(),
            gw: None,
        }];
        let b = ok_result(agent.handle(second).await);
        let mut gc = req(pod::Command::Gc, "", None, "");
        gc.valid_attachments = vec![pod::AttachmentKey {
            container_id: "ctr-g1".into(),
            ifname: "eth0".into(),
        }];
        assert_ok(agent.handle(gc).await);
        assert!(
            agent
                .store()
                .holder_of(a.ips[0].address.addr())
                .unwrap()
                .is_some(),
            "GC removed a valid one"
        );
        assert!(
            agent
                .store()
                .holder_of(b.ips[0].address.addr())
                .unwrap()
                .is_none(),
            "GC kept an invalid one"
        );
        assert!(!node_ns.has_link(&host_ifname("ctr-g2", "eth1")));
        assert!(!pod_ns.has_link("eth1"));
        assert_ok(
            agent
                .handle(req(pod::Command::Del, "ctr-g1", Some(&pod_path), "eth0"))
                .await,
        );
    });
    drop(pod);
}

/// The IPv4 address of a result's (family-generic) address.
fn v4(a: std::net::IpAddr) -> Ipv4Addr {
    match a {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(a) => panic!("ferryd handed out IPv6 {a}"),
    }
}

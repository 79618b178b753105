//! ferry under a real runtime: a private containerd 1.6 (Debian's, with
//! runc) whose `ctr run --cni` invokes the real `ferry` binary through
//! go-cni/libcni, with busybox containers imported from an OCI tar made on
//! the spot (no registry). Pods ping each other and exchange TCP through
//! the dataplane; a foreground container's exit makes ctr run DEL; a
//! detached one is cleaned up with the runtime's DEL from ctr's own libcni
//! result cache. The same containerd with its CRI plugin on is driven as
//! the kubelet drives it (RunPodSandbox .. RemovePodSandbox, through
//! `itest/go/cri-driver`): the plugin invokes ferry itself. The `ctr run`
//! and CRI pod tests run on a dual-stack node with the shipped conflist
//! (the node's pools: both families): containers and sandboxes get both
//! addresses and ping over IPv6 too. Nothing of the
//! machine's /etc/cni, /opt/cni, /var/lib/cni or /run/containerd is used or
//! made (see `itest::clients::Containerd`).

use itest::clients::{self, Containerd, ContainerdOpts, LibcniEnv, BUSYBOX_IMAGE};
use itest::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// The shipped `cni/10-ferry.conflist`, pointed at the node's ferryd, its
/// plugin log in the node's temp dir rather than the machine's /var/log.
fn shipped_conflist(node: &Node) -> String {
    let path = clients::workspace().join("cni/10-ferry.conflist");
    let text = std::fs::read_to_string(&path).expect("read cni/10-ferry.conflist");
    let mut v: Value = serde_json::from_str(&text).expect("10-ferry.conflist is JSON");
    v["plugins"][0]["ferrydSocket"] = node.ferryd_socket().display().to_string().into();
    v["plugins"][0]["logFile"] = node.dir.path.join("cni.log").display().to_string().into();
    v.to_string()
}

/// ferryd's endpoint `id` must hold one IPv4 and one IPv6 pod address:
/// they are returned in that order.
fn dual_stack_ips(node: &Node, id: &str) -> (String, String) {
    let ips = clients::endpoint_ips(node, id)
        .unwrap_or_else(|| panic!("no endpoint {id}: {:?}", clients::endpoints(node)));
    match ips.as_slice() {
        [ip4, ip6] if ip4.starts_with("10.88.0.") && ip6.starts_with("fd00:88::") => {
            (ip4.clone(), ip6.clone())
        }
        _ => panic!("endpoint {id} does not hold one address per family: {ips:?}"),
    }
}

fn endpoint_ip(node: &Node, id: &str) -> Option<String> {
    clients::endpoints(node)
        .iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["ip"].as_str().map(str::to_string))
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ctr_run_cni_dual_stack_pods_ping_and_talk_tcp_and_del_frees_addresses() {
    let host_before = clients::host_cni_paths_present();
    let node = Node::start("cr", NodeOpts::dual_stack());
    let ctd = Containerd::start(
        &node.tag,
        ContainerdOpts {
            conflist: &shipped_conflist(&node),
            cri: false,
        },
    );
    ctd.import_busybox();

    // A detached echo server: ctr sets up its network and returns.
    let srv = ctd.run_cni(&[
        "-d",
        BUSYBOX_IMAGE,
        "srv",
        "nc",
        "-ll",
        "-p",
        "7777",
        "-e",
        "cat",
    ]);
    assert!(srv.status.success(), "ctr run -d srv: {}", text(&srv));
    let srv_key = format!("{}/eth0", ctd.cni_container_id("srv"));
    let (srv_ip, srv_ip6) = dual_stack_ips(&node, &srv_key);
    // ctr's libcni cached the result (both addresses) in the directory
    // that covered its /var/lib/cni, not the machine's.
    let cached = std::fs::read_dir(ctd.cni_cache_dir.join("results"))
        .expect("ctr's libcni result cache")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .any(|c| c.contains(&format!("{srv_ip}/24")) && c.contains(&format!("{srv_ip6}/64")));
    assert!(cached, "no cached result naming {srv_ip} and {srv_ip6}");
    // While containers run, none of containerd's or ctr's mounts is visible
    // in this (the machine's) mount namespace.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let ours = ctd.dir.path.display().to_string();
    assert!(
        !mountinfo.lines().any(|l| l.contains(&ours)),
        "a mount under {ours} leaked into the host mount namespace"
    );
    assert_eq!(clients::host_cni_paths_present(), host_before);

    // A foreground client: both addresses on its eth0, ping over both
    // families (the server, and the node's IPv6 gateway), then a TCP
    // exchange with the echo server (retried until the server listens;
    // every step bounded).
    let token = format!("ferry-{}", node.tag);
    let script = format!(
        "ip -4 addr show dev eth0 && ip -6 addr show dev eth0 && \
         ping -c 3 -W 2 {srv_ip} && ping -6 -c 3 -W 2 {srv_ip6} && ping -6 -c 2 -W 2 {GATEWAY6} && \
         i=0; while [ $i -lt 50 ]; do \
           r=$(echo {token} | timeout 5 nc {srv_ip} 7777) && [ \"$r\" = {token} ] && echo got:$r && exit 0; \
           i=$((i+1)); sleep 0.2; \
         done; exit 1"
    );
    let cli = ctd.run_cni(&["--rm", BUSYBOX_IMAGE, "cli", "sh", "-c", &script]);
    let cli_text = text(&cli);
    assert!(cli.status.success(), "client container failed: {cli_text}");
    assert!(cli_text.contains(&format!("got:{token}")), "{cli_text}");
    assert_eq!(
        cli_text.matches(" 0% packet loss").count(),
        3,
        "a ping lost packets: {cli_text}"
    );
    let cli_ip = cli_text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("client's eth0 address")
        .to_string();
    assert!(
        cli_ip.starts_with("10.88.0.") && cli_ip != srv_ip,
        "{cli_ip} vs {srv_ip}"
    );
    let cli_ip6 = cli_text
        .lines()
        .filter(|l| l.contains("scope global"))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|w| *w == "inet6")?;
            w.next()?.split('/').next()
        })
        .expect("client's global IPv6 address on eth0")
        .to_string();
    assert!(
        cli_ip6.starts_with("fd00:88::") && cli_ip6 != srv_ip6,
        "{cli_ip6} vs {srv_ip6}"
    );
    // Traffic went through the dataplane: its pod ports received frames.
    assert!(port_counter(&node.stats(), "rx_frames") > 0);
    // The container exited: ctr ran DEL and ferryd released the address.
    let cli_key = format!("{}/eth0", ctd.cni_container_id("cli"));
    assert_eq!(
        endpoint_ip(&node, &cli_key),
        None,
        "DEL did not run for cli"
    );

    // ctr runs no DEL for a detached container: the runtime's DEL, from
    // the same libcni cache ctr wrote, releases it (and again: idempotent).
    ctd.remove_container("srv");
    assert!(
        endpoint_ip(&node, &srv_key).is_some(),
        "ctr unexpectedly ran DEL for a detached container"
    );
    let conf_path = ctd.cni_conf_dir.join("10-ferry.conflist");
    let libcni = LibcniEnv {
        conflist: conf_path,
        plugin_dir: ctd.cni_bin_dir.clone(),
        cache_dir: ctd.cni_cache_dir.clone(),
    };
    let srv_cni_id = ctd.cni_container_id("srv");
    libcni.run("del", &srv_cni_id, "").assert_ok();
    assert_eq!(
        clients::endpoint_ips(&node, &srv_key),
        None,
        "srv still holds an address"
    );
    libcni.run("del", &srv_cni_id, "").assert_ok();
    assert!(
        clients::endpoints(&node).is_empty(),
        "addresses left: {:?}",
        clients::endpoints(&node)
    );

    drop(ctd);
    assert_eq!(
        clients::host_cni_paths_present(),
        host_before,
        "a machine CNI/containerd path appeared"
    );
}

/// `ctr run --cni` for each cniVersion its libcni (1.1.2) can parse: the
/// container sees the address ferry reported, and DEL runs on exit.
#[test]
fn ctr_run_cni_every_version_libcni_knows() {
    let node = Node::start("cv", NodeOpts::default());
    let ctd = Containerd::start(
        &node.tag,
        ContainerdOpts {
            conflist: &clients::conflist(&node, "ferry-ctr", "1.0.0"),
            cri: false,
        },
    );
    ctd.import_busybox();
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"].iter().enumerate() {
        ctd.install_conflist(&clients::conflist(&node, "ferry-ctr", version));
        let id = format!("v{i}");
        let out = ctd.run_cni(&[
            "--rm",
            BUSYBOX_IMAGE,
            &id,
            "ip",
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
        let t = text(&out);
        assert!(out.status.success(), "cniVersion {version}: {t}");
        assert!(t.contains("inet 10.88.0."), "cniVersion {version}: {t}");
        let key = format!("{}/eth0", ctd.cni_container_id(&id));
        assert_eq!(
            endpoint_ip(&node, &key),
            None,
            "cniVersion {version}: no DEL"
        );
    }
}

/// The network namespace path of a CRI sandbox, from its verbose status.
fn sandbox_netns(status: &Value) -> String {
    status["info"]["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .and_then(|nss| nss.iter().find(|n| n["type"] == "network"))
        .and_then(|n| n["path"].as_str())
        .unwrap_or_else(|| panic!("no network namespace in sandbox status: {status}"))
        .to_string()
}

/// Kubernetes' path: containerd's CRI plugin invokes ferry for pod
/// sandboxes (RunPodSandbox, StopPodSandbox, RemovePodSandbox, as the
/// kubelet calls them), checks the result has an IP on eth0, reports it in
/// PodSandboxStatus; the pods reach each other; stopping releases them.
/// On a dual-stack node: the IPv4 address is the sandbox's `ip` (the CRI
/// plugin prefers IPv4), the IPv6 one its only `additional_ips`, and the
/// sandboxes reach each other and the node over IPv6. No kubelet-side
/// setting is involved: the pod CIDRs the kubelet passes in
/// UpdateRuntimeConfig only fill containerd's `conf_template`, unused when
/// a conflist is installed; ferry allocates from ferryd's pools.
#[test]
fn cri_dual_stack_pod_sandboxes_get_addresses_talk_and_release_them() {
    let host_before = clients::host_cni_paths_present();
    let node = Node::start("ci", NodeOpts::dual_stack());
    let ctd = Containerd::start(
        &node.tag,
        ContainerdOpts {
            conflist: &shipped_conflist(&node),
            cri: true,
        },
    );
    let version = ctd.cri(&["version"]);
    version.assert_ok();
    assert_eq!(version.report["runtimeName"], "containerd", "{version:?}");
    assert_eq!(version.report["runtimeApiVersion"], "v1", "{version:?}");

    let mut pods = Vec::new();
    for name in ["web", "client"] {
        let run = ctd.cri_run_pod(name);
        run.assert_ok();
        let id = run.report["podSandboxId"]
            .as_str()
            .expect("podSandboxId")
            .to_string();
        let status = ctd.cri(&["-id", &id, "status"]);
        status.assert_ok();
        assert_eq!(status.report["state"], "SANDBOX_READY", "{status:?}");
        // ferryd's endpoint for CNI_CONTAINERID = sandbox id, CNI_IFNAME
        // = eth0, and what containerd reports of it.
        let (ip, ip6) = dual_stack_ips(&node, &format!("{id}/eth0"));
        assert_eq!(status.report["ip"], ip.as_str(), "{status:?}");
        assert_eq!(
            status.report["additionalIps"],
            serde_json::json!([ip6]),
            "{status:?}"
        );
        let netns = sandbox_netns(&status.report);
        let shown = clients::run_bounded(
            Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .args(["ip", "addr", "show", "dev", "eth0"]),
            Duration::from_secs(30),
        );
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.contains(&format!("inet {ip}/24")), "{shown}");
        assert!(shown.contains(&format!("inet6 {ip6}/64")), "{shown}");
        pods.push((id, ip, ip6, netns));
    }

    // client -> web over both families, client -> the node over IPv6.
    for dst in [pods[0].1.as_str(), pods[0].2.as_str(), GATEWAY6] {
        let ping = clients::run_bounded(
            Command::new("nsenter")
                .arg(format!("--net={}", pods[1].3))
                .args(["ping", "-c", "3", "-i", "0.2", "-W", "2", dst]),
            Duration::from_secs(60),
        );
        assert!(
            ping.status.success(),
            "client sandbox cannot ping {dst}: {}",
            String::from_utf8_lossy(&ping.stdout)
        );
    }
    // TCP between the sandboxes' netns: a busybox echo server in web's, a
    // client in client's (retried until the server listens; bounded).
    let _server = ChildGuard::new(
        Command::new("nsenter")
            .arg(format!("--net={}", pods[0].3))
            .args(["busybox", "nc", "-ll", "-p", "7777", "-e", "cat"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start echo server"),
    );
    let token = format!("ferry-cri-{}", node.tag);
    let echo = clients::run_bounded(
        Command::new("nsenter")
            .arg(format!("--net={}", pods[1].3))
            .args(["busybox", "sh", "-c"])
            .arg(format!(
                "i=0; while [ $i -lt 50 ]; do \
                   r=$(echo {token} | timeout 5 busybox nc {ip} 7777) && [ \"$r\" = {token} ] && echo got:$r && exit 0; \
                   i=$((i+1)); sleep 0.2; \
                 done; exit 1",
                ip = pods[0].1
            )),
        Duration::from_secs(90),
    );
    assert!(
        echo.status.success()
            && String::from_utf8_lossy(&echo.stdout).contains(&format!("got:{token}")),
        "no TCP echo between the sandboxes: {echo:?}"
    );
    // The CRI plugin's libcni cached the results in the directory that
    // covered its /var/lib/cni, not the machine's.
    let cached = std::fs::read_dir(ctd.cni_cache_dir.join("results"))
        .expect("CRI's libcni result cache")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            // libcni names them <network>-<container id>-<ifname>; the
            // CRI plugin also caches its loopback network's.
            pods.iter()
                .any(|(id, _, _, _)| *name == format!("ferry-{id}-eth0"))
        })
        .count();
    assert_eq!(cached, 2, "ferry results cached for both sandboxes");

    for (id, _ip, _ip6, netns) in &pods {
        ctd.cri(&["-id", id, "stop"]).assert_ok();
        assert_eq!(
            clients::endpoint_ips(&node, &format!("{id}/eth0")),
            None,
            "StopPodSandbox did not release {id}"
        );
        ctd.cri(&["-id", id, "remove"]).assert_ok();
        assert!(
            !std::path::Path::new(netns).exists(),
            "{netns} left after RemovePodSandbox"
        );
    }
    assert!(clients::endpoints(&node).is_empty());

    drop(ctd);
    assert_eq!(clients::host_cni_paths_present(), host_before);
}

/// A helper process killed by pid (and reaped) when the test ends.
/// A sandbox started while ferry cannot serve it (dataplane down: ferry
/// answers "try again later", code 11) fails through containerd's CRI
/// without leaking an address or a netns; once the dataplane is back, the
/// kubelet's retry succeeds.
#[test]
fn cri_sandbox_fails_cleanly_while_the_dataplane_is_down_then_retry_works() {
    let mut node = Node::start("cd", NodeOpts::default());
    let ctd = Containerd::start(
        &node.tag,
        ContainerdOpts {
            conflist: &shipped_conflist(&node),
            cri: true,
        },
    );
    node.dataplane.take().expect("dataplane running").stop();
    let down = wait_until(std::time::Duration::from_secs(30), || {
        node.status().exit != 0
    });
    assert!(down, "ferryd still reports ready without its dataplane");

    let netns_before = clients::cri_netns_entries();
    let failed = ctd.cri_run_pod("early");
    assert_ne!(
        failed.exit, 0,
        "RunPodSandbox succeeded without a dataplane"
    );
    let msg = failed.report["error"].as_str().unwrap_or_default();
    // containerd passes on ferry's CNI error message.
    assert!(
        msg.contains("failed to setup network") && msg.contains("ferry-dataplane is not connected"),
        "{msg}"
    );
    assert_eq!(
        clients::cri_netns_entries(),
        netns_before,
        "the failed sandbox's netns was left behind"
    );

    node.start_dataplane();
    node.wait_ready();
    // The reconnected dataplane holds ferryd's whole store: nothing of the
    // failed ADD may be in it.
    assert!(
        clients::endpoints(&node).is_empty(),
        "the failed ADD left an endpoint: {:?}",
        clients::endpoints(&node)
    );
    let run = ctd.cri_run_pod("early");
    run.assert_ok();
    let id = run.report["podSandboxId"].as_str().expect("podSandboxId");
    let status = ctd.cri(&["-id", id, "status"]);
    status.assert_ok();
    assert_eq!(status.report["state"], "SANDBOX_READY");
    assert_eq!(
        endpoint_ip(&node, &format!("{id}/eth0")).as_deref(),
        status.report["ip"].as_str()
    );
    ctd.cri(&["-id", id, "stop"]).assert_ok();
    ctd.cri(&["-id", id, "remove"]).assert_ok();
    assert!(clients::endpoints(&node).is_empty());
}

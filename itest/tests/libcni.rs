//! ferry driven through libcni, the Go library container runtimes use to
//! invoke CNI plugins (Debian's golang-github-appc-cni-dev, libcni 1.1.2),
//! for every supported cniVersion: ValidateNetworkList, GetVersionInfo,
//! AddNetworkList, CheckNetworkList, DelNetworkList twice. libcni parses and
//! converts ferry's results exactly as a runtime would; the test then checks
//! the pod netns and ferryd's endpoints. On a dual-stack node, conflists
//! asking for both families (in `ipam.ranges`, or through the node's pools)
//! give pods both addresses, in the cached result too, and the pods reach
//! each other over both.

use itest::clients::{self, LibcniEnv};
use itest::*;
use serde_json::Value;

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn env_for(node: &Node, version: &str) -> LibcniEnv {
    env_with(
        node,
        version,
        &clients::conflist(node, "ferry-libcni", version),
    )
}

/// libcni's files for one conflist text, in a directory of its own.
fn env_with(node: &Node, version: &str, conflist_text: &str) -> LibcniEnv {
    let dir = node.dir.path.join(format!("libcni-{version}"));
    std::fs::create_dir_all(&dir).expect("create libcni dir");
    let conflist = dir.join("10-ferry.conflist");
    std::fs::write(&conflist, conflist_text).expect("write conflist");
    LibcniEnv {
        conflist,
        plugin_dir: clients::plugin_dir(&node.dir.path),
        cache_dir: dir.join("cache"),
    }
}

fn endpoint_ids(node: &Node) -> Vec<String> {
    clients::endpoints(node)
        .iter()
        .map(|e| e["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn libcni_version_and_validate_every_version() {
    let node = Node::start("lv", NodeOpts::default());
    for version in VERSIONS {
        let env = env_for(&node, version);

        let info = env.run("version", "", "");
        info.assert_ok();
        let supported: Vec<&str> = info.report["supportedVersions"]
            .as_array()
            .expect("supportedVersions")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for v in VERSIONS {
            assert!(supported.contains(v), "{v} missing from {supported:?}");
        }

        let valid = env.run("validate", "", "");
        valid.assert_ok();
        assert_eq!(
            valid.report["capabilities"],
            serde_json::json!(["ips"]),
            "{valid:?}"
        );
    }
}

#[test]
fn libcni_add_check_del_del_every_version() {
    let node = Node::start("lc", NodeOpts::default());
    for (i, version) in VERSIONS.iter().enumerate() {
        let env = env_for(&node, version);
        let ns = Netns::new(&format!("{}-v{i}", node.tag));
        let container = format!("{}-lib{i}", node.tag);

        let add = env.run("add", &container, &ns.path());
        if *version == "1.1.0" {
            // libcni 1.1.2 knows result formats up to 1.0.0 only; it rejects
            // the 1.1.0 result ferry prints (as a runtime linking it would).
            // ferry did its ADD, so the runtime's DEL must undo it.
            assert!(!add.ok(), "libcni 1.1.2 unexpectedly parsed a 1.1.0 result");
            assert!(
                add.error()
                    .contains("unsupported CNI result version \"1.1.0\""),
                "unexpected libcni error: {add:?}"
            );
            assert!(
                endpoint_ids(&node).contains(&format!("{container}/eth0")),
                "ferry's ADD did not happen"
            );
        } else {
            add.assert_ok();
            let result = &add.report["result"];
            assert_eq!(result["cniVersion"], *version, "{add:?}");
            // libcni's conversion to its current (1.0.0) form, which is what
            // go-cni and containerd read the IPs from.
            let cur = &add.report["current"];
            let ip0 = &cur["ips"][0];
            let addr = ip0["address"].as_str().expect("ips[0].address");
            assert!(
                addr.starts_with("10.88.0.") && addr.ends_with("/24"),
                "{addr}"
            );
            assert_eq!(ip0["gateway"], "10.88.0.1");
            let iface = ip0["interface"].as_u64().expect("ips[0].interface") as usize;
            assert_eq!(cur["interfaces"][iface]["name"], "eth0");
            assert_eq!(cur["interfaces"][iface]["sandbox"], ns.path());
            let shown = ns_run_ok(&ns.name, &["ip", "-4", "addr", "show", "dev", "eth0"]);
            assert!(shown.contains(addr), "pod eth0 lacks {addr}: {shown}");
            assert!(
                endpoint_ids(&node).contains(&format!("{container}/eth0")),
                "no endpoint for {container}"
            );

            // CHECK goes through libcni's cached result (prevResult).
            let check = env.run("check", &container, &ns.path());
            if version.starts_with("0.3.") {
                assert!(!check.ok(), "CHECK accepted for {version}");
                assert!(
                    check.error().contains("does not support the CHECK command"),
                    "{check:?}"
                );
            } else {
                check.assert_ok();
            }
        }

        env.run("del", &container, &ns.path()).assert_ok();
        let gone = ns_run(&ns.name, &["ip", "link", "show", "eth0"]);
        assert!(!gone.status.success(), "eth0 still in the pod after DEL");
        assert!(
            !endpoint_ids(&node).contains(&format!("{container}/eth0")),
            "endpoint {container} left after DEL"
        );
        env.run("del", &container, &ns.path()).assert_ok();
        // containerd's CRI sends its second DEL without a netns.
        env.run("del", &container, "").assert_ok();
    }
    assert!(endpoint_ids(&node).is_empty(), "endpoints leaked");
}

/// The address (prefix length dropped) of one family among a result's
/// `ips`.
fn result_addr(result: &Value, v6: bool) -> String {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains(':') == v6)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv{} address in {result}", if v6 { 6 } else { 4 }))
        .to_string()
}

/// Two pods on a dual-stack node through libcni: one with a 0.4.0 conflist
/// whose `ipam.ranges` asks for both families (host-local style, one range
/// set each), one with a 1.0.0 conflist that takes the node's pools. Each
/// gets an IPv4 and an IPv6 address (in libcni's cached result too, 0.4.0
/// with each `version`), CHECK passes, they ping each other over both
/// families, and DEL leaves ferryd holding nothing of either.
#[test]
fn libcni_dual_stack_add_check_ping_del() {
    let node = Node::start("ld", NodeOpts::dual_stack());
    let mut ranged: Value =
        serde_json::from_str(&clients::conflist(&node, "ferry-libcni", "0.4.0")).unwrap();
    ranged["plugins"][0]["ipam"] = serde_json::json!({
        "ranges": [[{"subnet": "10.88.0.0/24"}], [{"subnet": POD_CIDR6}]],
    });
    let envs = [
        ("0.4.0", env_with(&node, "0.4.0", &ranged.to_string())),
        ("1.0.0", env_for(&node, "1.0.0")),
    ];

    let mut pods = Vec::new();
    for (i, (version, env)) in envs.iter().enumerate() {
        let ns = Netns::new(&format!("{}-d{i}", node.tag));
        let container = format!("{}-dual{i}", node.tag);
        let add = env.run("add", &container, &ns.path());
        add.assert_ok();
        let result = &add.report["result"];
        assert_eq!(result["cniVersion"], *version, "{add:?}");
        let (ip4, ip6) = (result_addr(result, false), result_addr(result, true));
        assert!(ip4.starts_with("10.88.0."), "{add:?}");
        assert!(ip6.starts_with("fd00:88::"), "{add:?}");
        // libcni's conversion to 1.0.0 (what go-cni and containerd read)
        // keeps both, each on eth0, with its family's gateway.
        let cur = &add.report["current"];
        let ips = cur["ips"].as_array().expect("current ips");
        assert_eq!(ips.len(), 2, "{cur}");
        for ip in ips {
            let iface = ip["interface"].as_u64().expect("ips[].interface") as usize;
            assert_eq!(cur["interfaces"][iface]["name"], "eth0", "{cur}");
            let gw = if ip["address"].as_str().unwrap_or("").contains(':') {
                GATEWAY6
            } else {
                "10.88.0.1"
            };
            assert_eq!(ip["gateway"], gw, "{cur}");
        }

        // What libcni cached (CHECK's and DEL's prevResult) has both, in
        // the conflist's version; 0.4.0 says each address's family.
        let cache = env
            .cache_dir
            .join("results")
            .join(format!("ferry-libcni-{container}-eth0"));
        let cached: Value = serde_json::from_str(
            &std::fs::read_to_string(&cache)
                .unwrap_or_else(|e| panic!("libcni cache {}: {e}", cache.display())),
        )
        .expect("cached result is JSON");
        let cached = &cached["result"];
        assert_eq!(cached["cniVersion"], *version, "{cached}");
        assert_eq!(result_addr(cached, false), ip4, "{cached}");
        assert_eq!(result_addr(cached, true), ip6, "{cached}");
        if *version == "0.4.0" {
            let families: Vec<&str> = cached["ips"]
                .as_array()
                .expect("cached ips")
                .iter()
                .filter_map(|ip| ip["version"].as_str())
                .collect();
            assert_eq!(families, ["4", "6"], "{cached}");
        }

        let shown = ns_run_ok(&ns.name, &["ip", "-6", "addr", "show", "dev", "eth0"]);
        assert!(
            shown.contains(&format!("{ip6}/64")),
            "pod eth0 lacks {ip6}: {shown}"
        );
        let id = format!("{container}/eth0");
        assert_eq!(
            clients::endpoint_ips(&node, &id),
            Some(vec![ip4.clone(), ip6.clone()]),
            "ferryd's endpoint {id}"
        );
        env.run("check", &container, &ns.path()).assert_ok();
        pods.push((ns, container, ip4, ip6));
    }

    // Each pod answers the other over both families.
    for (from, to) in [(0, 1), (1, 0)] {
        let (ns, _, _, _) = &pods[from];
        let (_, _, ip4, ip6) = &pods[to];
        assert!(ns_ping(&ns.name, ip4, 2), "{} -> {ip4}", ns.name);
        let ping6 = ns_run(
            &ns.name,
            &["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", ip6],
        );
        assert!(
            ping6.status.success(),
            "{} -> {ip6}: {}",
            ns.name,
            String::from_utf8_lossy(&ping6.stdout)
        );
    }

    for ((_, env), (ns, container, _, _)) in envs.iter().zip(&pods) {
        env.run("del", container, &ns.path()).assert_ok();
        let gone = ns_run(&ns.name, &["ip", "link", "show", "eth0"]);
        assert!(!gone.status.success(), "eth0 still in the pod after DEL");
        // Neither a live endpoint nor a stale attachment: ferryd holds
        // neither address any more.
        assert_eq!(
            clients::endpoint_ips(&node, &format!("{container}/eth0")),
            None
        );
        env.run("del", container, &ns.path()).assert_ok();
    }
    assert!(endpoint_ids(&node).is_empty(), "endpoints leaked");
}

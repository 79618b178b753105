//! ferry driven through libcni, the Go library container runtimes use to
//! invoke CNI plugins (Debian's golang-github-appc-cni-dev, libcni 1.1.2),
//! for every supported cniVersion: ValidateNetworkList, GetVersionInfo,
//! AddNetworkList, CheckNetworkList, DelNetworkList twice. libcni parses and
//! converts ferry's results exactly as a runtime would; the test then checks
//! the pod netns and ferryd's endpoints.

use itest::clients::{self, LibcniEnv};
use itest::*;

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn env_for(node: &Node, version: &str) -> LibcniEnv {
    let dir = node.dir.path.join(format!("libcni-{version}"));
    std::fs::create_dir_all(&dir).expect("create libcni dir");
    let conflist = dir.join("10-ferry.conflist");
    std::fs::write(&conflist, clients::conflist(node, "ferry-libcni", version))
        .expect("write conflist");
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

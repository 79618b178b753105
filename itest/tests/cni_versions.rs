//! Every supported cniVersion through ADD, CHECK, DEL, DEL again, with the
//! real binaries on a throwaway node namespace.

use itest::*;

const VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

#[test]
fn every_version_add_check_del_del() {
    let node = Node::start("fv", NodeOpts::default());
    for (i, version) in VERSIONS.iter().enumerate() {
        let ns = Netns::new(&format!("{}-v{i}", node.tag));
        let container = format!("{}-ver{i}", node.tag);
        let conf = node.conf(version);

        let add = node.cni("ADD", &container, &ns.path(), "eth0", &conf);
        add.assert_ok();
        let result = add.json();
        assert_eq!(
            result["cniVersion"], *version,
            "result answered in the version asked"
        );
        let ip0 = &result["ips"][0];
        let addr = ip0["address"].as_str().expect("address");
        assert!(
            addr.starts_with("10.88.0.") && addr.ends_with("/24"),
            "{addr}"
        );
        assert_eq!(ip0["gateway"], "10.88.0.1");
        if version.starts_with("0.") {
            assert_eq!(
                ip0["version"], "4",
                "0.3.x/0.4.0 results carry ips[].version"
            );
        } else {
            assert!(
                ip0.get("version").is_none(),
                "1.x results have no ips[].version"
            );
        }
        // The IP must be on the interface named by CNI_IFNAME (containerd checks this).
        let iface = ip0["interface"].as_u64().expect("ips[].interface") as usize;
        assert_eq!(result["interfaces"][iface]["name"], "eth0");
        assert_eq!(result["interfaces"][iface]["sandbox"], ns.path());
        assert_eq!(result["dns"]["nameservers"][0], "10.96.0.10");

        // The pod really has it.
        let ip = addr.split('/').next().unwrap();
        let shown = ns_run_ok(&ns.name, &["ip", "-4", "addr", "show", "dev", "eth0"]);
        assert!(shown.contains(addr), "pod eth0 lacks {addr}: {shown}");
        let routes = ns_run_ok(&ns.name, &["ip", "-4", "route"]);
        assert!(routes.contains("default via 10.88.0.1"), "{routes}");

        if *version != "0.3.0" && *version != "0.3.1" {
            let mut with_prev: serde_json::Value = serde_json::from_str(&conf).unwrap();
            with_prev["prevResult"] = result.clone();
            let check = node.cni(
                "CHECK",
                &container,
                &ns.path(),
                "eth0",
                &with_prev.to_string(),
            );
            check.assert_ok();
        } else {
            let check = node.cni("CHECK", &container, &ns.path(), "eth0", &conf);
            assert_eq!(
                check.code(),
                Some(1),
                "CHECK before 0.4.0 is incompatible: {check:?}"
            );
        }

        node.cni("DEL", &container, &ns.path(), "eth0", &conf)
            .assert_ok();
        let gone = ns_run(&ns.name, &["ip", "link", "show", "eth0"]);
        assert!(!gone.status.success(), "eth0 still in the pod after DEL");
        node.cni("DEL", &container, &ns.path(), "eth0", &conf)
            .assert_ok();
        // containerd's second DEL comes without a netns.
        node.cni("DEL", &container, "", "eth0", &conf).assert_ok();
        let _ = ip;
    }
}

#[test]
fn version_command_lists_supported_versions() {
    let out = invoke_ferry(&[("CNI_COMMAND", "VERSION")], "");
    out.assert_ok();
    let v = out.json();
    let supported: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for version in VERSIONS {
        assert!(
            supported.contains(version),
            "{version} missing from {supported:?}"
        );
    }
}

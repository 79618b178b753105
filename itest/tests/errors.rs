//! Error cases of the CNI binary, each with the spec's code.

use itest::*;

fn conf(version: &str, sock: &str) -> String {
    serde_json::json!({"cniVersion": version, "name": "n", "type": "ferry", "ferrydSocket": sock})
        .to_string()
}

fn add_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

/// (description, environment, stdin, expected CNI error code)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64);

#[test]
fn errors_without_ferryd_have_their_codes() {
    let ns = Netns::new(&unique_tag("fe"));
    let path = ns.path();
    let sock = "/nonexistent/ferry/ferryd.sock";
    let good = conf("1.0.0", sock);

    // (description, env, stdin, expected code)
    let mut cases: Vec<Case> = Vec::new();
    for var in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
        let env: Vec<_> = add_env(&path)
            .into_iter()
            .filter(|(k, _)| *k != var)
            .collect();
        cases.push(("missing env var", env, good.clone(), 4));
    }
    let mut env = add_env(&path);
    env[1] = ("CNI_CONTAINERID", "-bad id");
    cases.push(("invalid container id", env, good.clone(), 4));
    let mut env = add_env(&path);
    env[3] = ("CNI_IFNAME", "a-name-too-long-for-linux");
    cases.push(("interface name too long", env, good.clone(), 4));
    let mut env = add_env(&path);
    env[2] = ("CNI_NETNS", "/var/run/netns/ferry-does-not-exist");
    cases.push(("netns does not exist", env, good.clone(), 4));
    let mut env = add_env(&path);
    env[0] = ("CNI_COMMAND", "FROB");
    cases.push(("unknown command", env, good.clone(), 4));
    cases.push(("undecodable config", add_env(&path), "{not json".into(), 6));
    cases.push((
        "unsupported version",
        add_env(&path),
        conf("9.9.9", sock),
        1,
    ));
    let wrong_type = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
    cases.push((
        "wrong plugin type",
        add_env(&path),
        wrong_type.to_string(),
        7,
    ));
    let mixed = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "ferry",
        "ipam": {"ranges": [[{"subnet": "10.88.0.0/24"}, {"subnet": "fd00::/64"}]]}});
    cases.push((
        "range set of both families",
        add_env(&path),
        mixed.to_string(),
        7,
    ));
    let two_v6 = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "ferry",
        "ipam": {"ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "fd01::/64"}]]}});
    cases.push(("two IPv6 range sets", add_env(&path), two_v6.to_string(), 7));
    let outside = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "ferry",
        "ipam": {"ranges": [[{"subnet": "10.88.0.0/24", "rangeStart": "10.99.0.5"}]]}});
    cases.push((
        "rangeStart outside subnet",
        add_env(&path),
        outside.to_string(),
        7,
    ));
    let mut env = add_env(&path);
    env[0] = ("CNI_COMMAND", "STATUS");
    cases.push(("STATUS before 1.1.0", env, conf("1.0.0", sock), 1));
    let mut env = add_env(&path);
    env[0] = ("CNI_COMMAND", "GC");
    cases.push(("GC before 1.1.0", env, conf("0.4.0", sock), 1));
    cases.push(("ferryd unreachable", add_env(&path), good.clone(), 11));

    for (what, env, stdin, code) in &cases {
        let out = invoke_ferry(env, stdin);
        assert_ne!(out.exit, 0, "{what}: must fail");
        let err = out.json();
        assert_eq!(err["code"].as_u64(), Some(*code), "{what}: {}", out.stdout);
        assert!(
            !err["msg"].as_str().unwrap_or("").is_empty(),
            "{what}: empty msg"
        );
    }
    // STATUS with ferryd unreachable: not available (50).
    let out = invoke_ferry(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", sock));
    assert_eq!(out.code(), Some(50), "{out:?}");
}

#[test]
fn pool_exhausted_and_taken_address_are_reported() {
    let ipam = r#"{"ranges": [[{"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.11"}]]}"#;
    let node = Node::start(
        "fx",
        NodeOpts {
            ipam: Some(ipam.into()),
            ..NodeOpts::default()
        },
    );
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let mut ips = vec![a.ip.clone(), b.ip.clone()];
    ips.sort();
    assert_eq!(ips, ["10.88.0.10", "10.88.0.11"]);

    let ns = Netns::new(&format!("{}-p3", node.tag));
    let out = node.cni("ADD", "third", &ns.path(), "eth0", &node.conf("1.0.0"));
    assert_eq!(out.code(), Some(101), "pool exhausted: {out:?}");
    // Nothing half-made is left: no eth0 in the pod.
    assert!(!ns_run(&ns.name, &["ip", "link", "show", "eth0"])
        .status
        .success());

    // An explicit request for a taken address (CNI_ARGS IP=) fails with 102.
    node.del_pod(&b).assert_ok();
    let out = invoke_ferry(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "explicit"),
            ("CNI_NETNS", &ns.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", &format!("IgnoreUnknown=1;IP={}", a.ip)),
        ],
        &node.conf("1.0.0"),
    );
    assert_eq!(out.code(), Some(102), "taken address: {out:?}");
    // ... and a free one is granted.
    let out = invoke_ferry(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "explicit"),
            ("CNI_NETNS", &ns.path()),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.88.0.11"),
        ],
        &node.conf("1.0.0"),
    );
    out.assert_ok();
    assert_eq!(out.json()["ips"][0]["address"], "10.88.0.11/24");

    // This node serves IPv4 only: an IPv6 range (outside its CIDRs) is
    // refused by ferryd with 7, and nothing is made.
    let mut v6: serde_json::Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    v6["ipam"] = serde_json::json!({"ranges": [[{"subnet": "fd00::/64"}]]});
    let ns4 = Netns::new(&format!("{}-p4", node.tag));
    let out = node.cni("ADD", "v6", &ns4.path(), "eth0", &v6.to_string());
    assert_eq!(out.code(), Some(7), "IPv6 range on an IPv4 node: {out:?}");
    assert!(!ns_run(&ns4.name, &["ip", "link", "show", "eth0"])
        .status
        .success());
}

//! The `ferry` plugin's log file on a real node: one line per invocation
//! (ADD, CHECK, DEL, DEL again) with the runtime's identifiers and the
//! result, while stdout stays the CNI protocol.

use std::fs;

use itest::*;

#[test]
fn each_invocation_is_one_log_line() {
    let node = Node::start("fl", NodeOpts::default());
    let pod_ns = Netns::new(&format!("{}-p1", node.tag));
    let container = format!("{}-c1", node.tag);
    let log = node.dir.path.join("log/cni.log");
    let mut conf: serde_json::Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    conf["logFile"] = log.display().to_string().into();
    conf["logLevel"] = "info".into();
    let conf = conf.to_string();

    let add = node.cni("ADD", &container, &pod_ns.path(), "eth0", &conf);
    add.assert_ok();
    let addr = add.json()["ips"][0]["address"]
        .as_str()
        .expect("ADD result on stdout")
        .to_string();
    let mut check_conf: serde_json::Value = serde_json::from_str(&conf).unwrap();
    check_conf["prevResult"] = add.json();
    node.cni(
        "CHECK",
        &container,
        &pod_ns.path(),
        "eth0",
        &check_conf.to_string(),
    )
    .assert_ok();
    node.cni("DEL", &container, &pod_ns.path(), "eth0", &conf)
        .assert_ok();
    node.cni("DEL", &container, "", "eth0", &conf).assert_ok();

    let text = fs::read_to_string(&log).expect("log file written");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for (line, cmd) in lines.iter().zip(["ADD", "CHECK", "DEL", "DEL"]) {
        assert!(line.contains(" [INFO] ferry pid="), "{line}");
        assert!(line.contains(&format!(" cmd={cmd} ")), "{line}");
        assert!(
            line.contains(&format!(" containerID={container} ")),
            "{line}"
        );
        assert!(line.contains(" ifname=eth0 "), "{line}");
        assert!(line.contains(" result=ok"), "{line}");
    }
    assert!(
        lines[0].contains(&format!(" netns={} ", pod_ns.path())),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(&format!(" ips={addr} ")), "{}", lines[0]);
    // The second DEL came without a netns.
    assert!(lines[3].contains(" netns=\"\" "), "{}", lines[3]);
}

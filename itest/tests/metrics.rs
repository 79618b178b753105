//! ferryd's Prometheus endpoint, scraped with curl from inside the node
//! namespace: exposition format, counters that rise with traffic, drops by
//! reason, IPAM and endpoint gauges, garbage requests, and `metrics_listen
//! = ""` turning it off. Also `ferryctl drops`.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use itest::*;

const URL: &str = "http://127.0.0.1:9469/metrics";

/// `curl -i` inside the node namespace: (status line, headers+body text).
fn curl(node: &Node, args: &[&str]) -> Option<String> {
    let mut full = vec!["curl", "-sS", "-i", "--max-time", "10"];
    full.extend_from_slice(args);
    let out = ns_run(&node.ns.name, &full);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One successful scrape: the samples by `name{labels}`.
fn scrape(node: &Node) -> BTreeMap<String, u64> {
    let mut resp = None;
    let ok = wait_until(Duration::from_secs(20), || {
        resp = curl(node, &[URL]);
        resp.is_some()
    });
    assert!(
        ok,
        "metrics endpoint never answered:\n{}",
        node.ferryd.as_ref().unwrap().log_text()
    );
    let resp = resp.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(body)
}

fn parse(body: &str) -> BTreeMap<String, u64> {
    let mut samples = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        assert!(typed.contains(name), "sample before its # TYPE: {line}");
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
        samples.insert(
            key.to_string(),
            value.parse().unwrap_or_else(|_| panic!("value of {line}")),
        );
    }
    samples
}

/// Sum of the samples of `name` whose labels contain `needle`.
fn sum(m: &BTreeMap<String, u64>, name: &str, needle: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(needle))
        .map(|(_, v)| *v)
        .sum()
}

#[test]
fn metrics_rise_with_traffic() {
    let mut node = Node::start("fm", NodeOpts::default());
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let a_ep = format!("endpoint=\"{}/eth0\"", a.container);
    let b_ep = format!("endpoint=\"{}/eth0\"", b.container);

    let before = scrape(&node);
    assert_eq!(before["ferry_dataplane_up"], 1, "{before:?}");
    assert_eq!(before["ferry_dataplane_connected"], 1);
    assert_eq!(before["ferry_endpoints"], 2);
    // 10.88.0.0/24: 254 host addresses minus the gateway, two taken.
    let pool = "{pool=\"10.88.0.0/24\"}";
    assert_eq!(before[&format!("ferry_ipam_addresses_size{pool}")], 253);
    assert_eq!(before[&format!("ferry_ipam_addresses_allocated{pool}")], 2);
    assert_eq!(before[&format!("ferry_ipam_addresses_free{pool}")], 251);
    assert!(before["ferry_table_generation"] >= 1);
    assert_eq!(
        before["ferry_pod_requests_total{command=\"ADD\",code=\"0\"}"],
        2
    );
    assert!(before["ferry_pod_requests_total{command=\"STATUS\",code=\"0\"}"] >= 1);
    assert_eq!(
        before["ferry_port_attached{port=\"ferry0dp\",endpoint=\"host\"}"],
        1
    );

    // Every drop reason has a series from the start, at zero.
    let drops = format!("{a_ep},reason=\"no_endpoint\"");
    assert!(
        before
            .keys()
            .any(|k| k.starts_with("ferry_port_drops_total{") && k.contains(&drops)),
        "no zero-valued no_endpoint series before the first drop: {before:?}"
    );
    assert_eq!(sum(&before, "ferry_port_drops_total", &drops), 0);

    assert!(a.ping(&b.ip, 3), "a -> b");
    // An address in the pod CIDR without an endpoint: dropped `no_endpoint`.
    assert!(!a.ping("10.88.0.200", 1), "ping to nobody answered");

    let after = scrape(&node);
    for (name, ep, rise) in [
        ("ferry_port_rx_frames_total", &a_ep, 4),
        ("ferry_port_tx_frames_total", &a_ep, 3),
        ("ferry_port_rx_frames_total", &b_ep, 3),
        ("ferry_port_tx_frames_total", &b_ep, 3),
        ("ferry_port_rx_bytes_total", &a_ep, 4 * 98),
        ("ferry_port_tx_bytes_total", &b_ep, 3 * 98),
    ] {
        let (x, y) = (sum(&before, name, ep), sum(&after, name, ep));
        assert!(
            y >= x + rise,
            "{name}{{{ep}}}: {x} -> {y}, expected +{rise}"
        );
    }
    assert!(
        sum(&after, "ferry_port_drops_total", &drops)
            > sum(&before, "ferry_port_drops_total", &drops),
        "no no_endpoint drop counted: {after:?}"
    );
    assert!(sum(&after, "ferry_worker_drops_total", "reason=\"no_endpoint\"") >= 1);
    // The kernel's AF_XDP socket counters of the pod's port (read by the
    // worker about once a second; the pings took longer than that).
    for counter in ["rx_ring_full", "rx_dropped", "tx_invalid_descs"] {
        let series = format!("{a_ep},counter=\"{counter}\"");
        assert!(
            after
                .keys()
                .any(|k| k.starts_with("ferry_port_xsk_total{") && k.contains(&series)),
            "no ferry_port_xsk_total {series} series: {after:?}"
        );
    }
    assert_eq!(
        sum(
            &after,
            "ferry_port_xsk_total",
            &format!("{a_ep},counter=\"tx_invalid_descs\"")
        ),
        0
    );
    assert!(
        sum(&after, "ferry_worker_busy_polls_total", "worker=\"0\"")
            > sum(&before, "ferry_worker_busy_polls_total", "worker=\"0\""),
        "busy polls did not rise"
    );
    assert!(
        sum(&after, "ferry_worker_idle_polls_total", "worker=\"0\"")
            > sum(&before, "ferry_worker_idle_polls_total", "worker=\"0\""),
        "idle polls did not rise (pings are 200 ms apart)"
    );

    // ferryctl shows the same drop, as a table and as JSON.
    let out = node.ferryctl(&["drops"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("PORT "), "{table}");
    assert!(table.contains("no_endpoint"), "{table}");
    let out = node.ferryctl(&["drops", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("drops --json");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"] == "no_endpoint"
                && r["endpoint"] == format!("{}/eth0", a.container)
                && r["frames"].as_u64() >= Some(1)),
        "{rows}"
    );

    // DEL frees the address and the endpoint in the gauges.
    node.del_pod(&b).assert_ok();
    let del = scrape(&node);
    assert_eq!(del["ferry_endpoints"], 1);
    assert_eq!(del[&format!("ferry_ipam_addresses_free{pool}")], 252);
    assert!(del["ferry_table_generation"] > after["ferry_table_generation"]);
    assert_eq!(
        del["ferry_pod_requests_total{command=\"DEL\",code=\"0\"}"],
        1
    );

    // The dataplane down: ferryd still answers, and says so.
    node.dataplane.take().unwrap().stop();
    let down = scrape(&node);
    assert_eq!(down["ferry_dataplane_up"], 0);
    assert!(
        !down.keys().any(|k| k.starts_with("ferry_port_")),
        "{down:?}"
    );
    assert_eq!(down["ferry_endpoints"], 1);
    node.start_dataplane();
    node.wait_ready();
    node.del_pod(&a).assert_ok();
}

#[test]
fn bad_requests_get_4xx_and_the_server_keeps_serving() {
    let mut node = Node::start("fmh", NodeOpts::default());
    scrape(&node);
    let status = |args: &[&str]| -> String {
        let r = curl(&node, args).expect("curl ran");
        r.lines().next().unwrap_or_default().trim().to_string()
    };
    assert_eq!(
        status(&["http://127.0.0.1:9469/"]),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(&["-X", "POST", URL]),
        "HTTP/1.1 405 Method Not Allowed"
    );
    let head = curl(&node, &["-I", URL]).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(!head.contains("# HELP"), "HEAD sent a body: {head}");

    // Raw garbage, an oversized head and a client that sends half a line
    // and hangs up: each gets an answer or a closed connection, none takes
    // the server down.
    let raw = |payload: &str| -> String {
        let script =
            "exec 3<>/dev/tcp/127.0.0.1/9469; printf '%s' \"$1\" >&3; timeout 10 cat <&3; exit 0";
        let out = ns_run(&node.ns.name, &["bash", "-c", script, "raw", payload]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        raw("\u{1}\u{2}garbage\r\n\r\n").starts_with("HTTP/1.1 400 Bad Request"),
        "garbage"
    );
    assert!(raw("GET /metrics HTTP/9.9\r\n\r\n").starts_with("HTTP/1.1 505"));
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(
        raw(&big).starts_with("HTTP/1.1 431"),
        "oversized head not refused"
    );
    raw("GET /met");
    let again = scrape(&node);
    assert_eq!(again["ferry_dataplane_up"], 1);

    // The address taken by someone else: ferryd says so and serves the pod
    // API anyway.
    node.ferryd.take().unwrap().stop();
    let holder_log = node.dir.path.join("holder.log");
    let holder = Daemon {
        what: "port holder".into(),
        child: std::process::Command::new("ip")
            .args(["netns", "exec", &node.ns.name, "python3", "-c"])
            .arg(
                "import socket,sys,time\n\
                 s=socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('127.0.0.1', 9469)); s.listen()\n\
                 print('bound', flush=True); time.sleep(120)",
            )
            .stdout(fs::File::create(&holder_log).unwrap())
            .stderr(fs::File::create(holder_log.with_extension("err")).unwrap())
            .spawn()
            .expect("start port holder"),
        log: holder_log,
    };
    assert!(
        wait_until(Duration::from_secs(10), || holder
            .log_text()
            .contains("bound")),
        "port holder did not bind"
    );
    node.start_ferryd();
    node.wait_ready();
    let log = node.ferryd.as_ref().unwrap().log_text();
    assert!(
        log.contains("bind metrics listener on 127.0.0.1:9469")
            && log.contains("continuing without the metrics endpoint"),
        "{log}"
    );
    holder.stop();

    // metrics_listen = "" turns the endpoint off.
    node.restart_ferryd_with("metrics_listen = \"\"");
    assert!(
        curl(&node, &[URL]).is_none(),
        "metrics served while disabled"
    );
    assert!(
        node.ferryd
            .as_ref()
            .unwrap()
            .log_text()
            .contains("metrics endpoint disabled"),
        "{}",
        node.ferryd.as_ref().unwrap().log_text()
    );
}

/// With metrics on every address (the shipped DaemonSet's 0.0.0.0), the
/// node scrapes its metrics at the gateway address, and a pod asking the
/// same address gets nothing: the node's counters are not the pods'.
#[test]
fn metrics_on_every_address_are_not_served_to_pods() {
    let mut node = Node::start("fmp", NodeOpts::default());
    node.restart_ferryd_with("metrics_listen = \"0.0.0.0:9469\"");
    let pod = node.add_pod(1);
    let gw = itest::first_host(&node.opts.pod_cidr);
    let url = format!("http://{gw}:9469/metrics");
    let from_node = ns_run(&node.ns.name, &["curl", "-sf", "--max-time", "5", &url]);
    assert!(
        String::from_utf8_lossy(&from_node.stdout).contains("ferry_dataplane_up 1"),
        "the node scrapes its gateway address"
    );
    assert!(pod.ping(&gw, 1), "the pod reaches the node");
    let from_pod = ns_run(&pod.ns.name, &["curl", "-sf", "--max-time", "5", &url]);
    assert!(
        !from_pod.status.success() && from_pod.stdout.is_empty(),
        "a pod read the node's metrics: {}",
        String::from_utf8_lossy(&from_pod.stdout)
    );
    node.del_pod(&pod).assert_ok();
}

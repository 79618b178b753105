//! Concurrent ADD/DEL and crash safety of ferryd's state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use itest::*;

/// A pool of exactly `n` addresses: 10.88.0.10 .. 10.88.0.(10+n-1).
fn pool(n: u32) -> String {
    format!(
        r#"{{"ranges": [[{{"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.{}"}}]]}}"#,
        10 + n - 1
    )
}

/// ADD pods 0..n in parallel; returns (index, outcome) for each.
fn parallel_adds(
    node: &Arc<Node>,
    pods: &Arc<Vec<Netns>>,
    round: &str,
) -> Vec<(usize, CniOutcome)> {
    let handles: Vec<_> = (0..pods.len())
        .map(|i| {
            let node = Arc::clone(node);
            let pods = Arc::clone(pods);
            let round = round.to_string();
            thread::spawn(move || {
                let out = node.cni(
                    "ADD",
                    &format!("{round}-{i}"),
                    &pods[i].path(),
                    "eth0",
                    &node.conf("1.0.0"),
                );
                (i, out)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("ADD thread"))
        .collect()
}

fn parallel_dels(node: &Arc<Node>, pods: &Arc<Vec<Netns>>, round: &str) {
    let handles: Vec<_> = (0..pods.len())
        .map(|i| {
            let node = Arc::clone(node);
            let pods = Arc::clone(pods);
            let round = round.to_string();
            thread::spawn(move || {
                node.cni(
                    "DEL",
                    &format!("{round}-{i}"),
                    &pods[i].path(),
                    "eth0",
                    &node.conf("1.0.0"),
                )
            })
        })
        .collect();
    for h in handles {
        h.join().expect("DEL thread").assert_ok();
    }
}

fn ips_of(outcomes: &[(usize, CniOutcome)]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|(_, o)| o.exit == 0)
        .map(|(_, o)| o.json()["ips"][0]["address"].as_str().unwrap().to_string())
        .collect()
}

/// The last `n` lines of a log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn fifty_parallel_adds_then_dels_no_duplicate_no_leak() {
    const N: usize = 50;
    let node = Arc::new(Node::start(
        "fc",
        NodeOpts {
            ipam: Some(pool(N as u32)),
            ..NodeOpts::default()
        },
    ));
    let pods: Arc<Vec<Netns>> = Arc::new(
        (0..N)
            .map(|i| Netns::new(&format!("{}-p{i}", node.tag)))
            .collect(),
    );

    for round in ["r1", "r2"] {
        let outcomes = parallel_adds(&node, &pods, round);
        for (i, o) in &outcomes {
            assert_eq!(
                o.exit,
                0,
                "ADD {round}-{i} failed: {o:?}\nferryd log (tail):\n{}",
                node.ferryd
                    .as_ref()
                    .map(|d| tail(&d.log_text(), 40))
                    .unwrap_or_default()
            );
        }
        let ips = ips_of(&outcomes);
        let unique: BTreeSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), N, "duplicate addresses handed out: {ips:?}");
        parallel_dels(&node, &pods, round);
        // Round 2 can only get all 50 addresses of the 50-address pool again if
        // round 1 leaked none.
    }
    let eps = node.ferryctl(&["endpoints", "--json"]);
    let eps: serde_json::Value = serde_json::from_slice(&eps.stdout).expect("endpoints json");
    assert_eq!(
        eps.as_array().map(|a| a.len()),
        Some(0),
        "endpoints left after DEL: {eps}"
    );
}

#[test]
fn ferryd_sigkill_during_add_burst_keeps_state() {
    const N: usize = 16;
    let mut node = Node::start(
        "fk",
        NodeOpts {
            ipam: Some(pool(N as u32)),
            ..NodeOpts::default()
        },
    );
    let pods: Vec<Netns> = (0..N)
        .map(|i| Netns::new(&format!("{}-p{i}", node.tag)))
        .collect();

    // Start the burst, kill ferryd while it is under way.
    let ferryd_pid = node
        .ferryd
        .as_ref()
        .expect("ferryd running")
        .pid()
        .to_string();
    let outcomes = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let node = &node;
                let pods = &pods;
                s.spawn(move || {
                    thread::sleep(Duration::from_millis(20 * i as u64));
                    (
                        i,
                        node.cni(
                            "ADD",
                            &format!("k-{i}"),
                            &pods[i].path(),
                            "eth0",
                            &node.conf("1.0.0"),
                        ),
                    )
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(150));
        run_ok("kill", &["-KILL", &ferryd_pid]);
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let acked: Vec<&(usize, CniOutcome)> = outcomes.iter().filter(|(_, o)| o.exit == 0).collect();
    node.ferryd.take().expect("ferryd handle").kill(); // reap it
    for (_, o) in outcomes.iter().filter(|(_, o)| o.exit != 0) {
        // A call cut off by the crash is "try again later" (or a spec error), never a success.
        assert!(o.code().is_some(), "failed ADD printed no CNI error: {o:?}");
    }

    node.start_ferryd();
    node.wait_ready();

    // Every acknowledged ADD survived: CHECK passes and addresses are unique.
    let ips = ips_of(&outcomes);
    let unique: BTreeSet<_> = ips.iter().collect();
    assert_eq!(unique.len(), ips.len(), "duplicate addresses: {ips:?}");
    for (i, o) in &acked {
        let mut conf: serde_json::Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
        conf["prevResult"] = o.json();
        node.cni(
            "CHECK",
            &format!("k-{i}"),
            &pods[*i].path(),
            "eth0",
            &conf.to_string(),
        )
        .assert_ok();
    }
    // The runtime cleans up the failed ones with DEL (must succeed), then retries them.
    for (i, o) in outcomes.iter().filter(|(_, o)| o.exit != 0) {
        let _ = o;
        node.cni(
            "DEL",
            &format!("k-{i}"),
            &pods[*i].path(),
            "eth0",
            &node.conf("1.0.0"),
        )
        .assert_ok();
        node.cni(
            "ADD",
            &format!("k-{i}"),
            &pods[*i].path(),
            "eth0",
            &node.conf("1.0.0"),
        )
        .assert_ok();
    }
    // All N fit in the N-address pool: nothing leaked by the crash.
    let ns = Netns::new(&format!("{}-extra", node.tag));
    let out = node.cni("ADD", "extra", &ns.path(), "eth0", &node.conf("1.0.0"));
    assert_eq!(
        out.code(),
        Some(101),
        "pool should be exactly full: {out:?}"
    );
    for (i, pod) in pods.iter().enumerate() {
        node.cni(
            "DEL",
            &format!("k-{i}"),
            &pod.path(),
            "eth0",
            &node.conf("1.0.0"),
        )
        .assert_ok();
    }
}

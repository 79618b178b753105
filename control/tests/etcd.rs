//! The etcd datastore against a real etcd server (Debian's etcd-server,
//! installed by scripts/setup.sh), started by each test in a network
//! namespace of its own, listening on that namespace's loopback only, with
//! a temporary data directory. Needs root (namespaces).
//!
//! What is shown: the cluster settings are written once and read back;
//! many nodes claiming at once never share a block; a node that restarts
//! within its lease keeps its block, and one that left gets its block back
//! when it asks for it; a released or expired claim is seen by a watcher;
//! a compacted watch asks for a resync; an unreachable endpoint is a clear,
//! bounded error.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferry_api::MacAddr;
use ferryd::cluster::etcd::{Etcd, EtcdOptions};
use ferryd::cluster::{Change, ClusterSettings, Datastore, DsError, NodeRecord, WatchEvent};
use ipnet::Ipv4Net;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// etcd in a namespace of its own; the namespace, the process (by pid)
/// and the data directory go on drop.
struct EtcdServer {
    ns: String,
    child: Option<Child>,
    dir: PathBuf,
    url: String,
}

impl EtcdServer {
    fn start() -> EtcdServer {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let ns = format!("fyetcd-{}-{n}", std::process::id());
        let _ = run("ip", &["netns", "del", &ns]);
        assert!(run("ip", &["netns", "add", &ns]));
        assert!(run("ip", &["-n", &ns, "link", "set", "lo", "up"]));
        let dir = std::env::temp_dir().join(format!("{ns}.etcd"));
        let _ = std::fs::remove_dir_all(&dir);
        let url = "http://127.0.0.1:23790".to_string();
        let log = std::fs::File::create(std::env::temp_dir().join(format!("{ns}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "etcd", "--name", "t", "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                "http://127.0.0.1:23800",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:23800",
                "--initial-cluster",
                "t=http://127.0.0.1:23800",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        let s = EtcdServer {
            ns,
            child: Some(child),
            dir,
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !run(
            "ip",
            &[
                "netns",
                "exec",
                &s.ns,
                "etcdctl",
                "--endpoints",
                &s.url,
                "endpoint",
                "health",
            ],
        ) {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    fn options(&self, ttl: u64) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.url.clone()],
            prefix: "/ferry".into(),
            lease_ttl: Duration::from_secs(ttl),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    /// Run `f` on a current-thread runtime inside the etcd namespace.
    fn in_ns<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        common::in_netns(format!("/run/netns/{}", self.ns), f)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs etcd: the pid is etcd's.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = run("ip", &["netns", "del", &self.ns]);
    }
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        cidr: "10.70.0.0/22".parse().unwrap(),
        block_len: 24,
        overlay: "vxlan".into(),
        vni: 1,
        v6: None,
    }
}

fn me(i: u8) -> NodeRecord {
    NodeRecord {
        name: format!("node{i}"),
        address: std::net::Ipv4Addr::new(192, 168, 70, i),
        block: "0.0.0.0/32".parse().unwrap(),
        block6: None,
        vtep_mac: MacAddr([2, 0, 0, 0, 0, i]),
        overlay: "vxlan".into(),
        vni: 1,
        renewed: 0,
    }
}

/// The next batch of the watch, bounded.
async fn next(w: &mut Box<dyn ferryd::cluster::NodeWatch>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch event within 20 s")
}

#[test]
fn settings_are_written_once_and_compared() {
    let server = EtcdServer::start();
    let opts = server.options(60);
    server.in_ns(move || async move {
        let a = Etcd::connect(&opts).await.unwrap();
        assert_eq!(a.settings(&settings()).await.unwrap(), settings());
        let other = ClusterSettings {
            block_len: 26,
            ..settings()
        };
        let b = Etcd::connect(&opts).await.unwrap();
        let theirs = b.settings(&other).await.unwrap();
        assert_eq!(theirs, settings(), "the first node's settings stand");
        assert!(other.mismatch(&theirs).unwrap().contains("block_len 24"));
    });
}

#[test]
fn nodes_claiming_at_once_never_share_a_block() {
    let server = EtcdServer::start();
    let opts = server.options(60);
    server.in_ns(move || async move {
        // 6 nodes for 4 blocks, all at once: 4 distinct blocks, 2 refused.
        let mut tasks = Vec::new();
        for i in 1..=6u8 {
            let opts = opts.clone();
            tasks.push(tokio::spawn(async move {
                let ds = Etcd::connect(&opts).await.unwrap();
                ds.claim(&me(i), &settings(), None).await
            }));
        }
        let mut blocks = BTreeSet::new();
        let mut full = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => assert!(blocks.insert(c.record.block), "{} twice", c.record.block),
                Err(DsError::Full { .. }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(blocks.len(), 4, "{blocks:?}");
        assert_eq!(full, 2);
        let ds = Etcd::connect(&opts).await.unwrap();
        let listing = ds.list().await.unwrap();
        assert_eq!(listing.nodes.len(), 4);
        assert!(listing.unreadable.is_empty());
    });
}

#[test]
fn a_restarted_node_keeps_its_block_and_a_returning_one_gets_it_back() {
    let server = EtcdServer::start();
    let opts = server.options(60);
    server.in_ns(move || async move {
        let ds = Etcd::connect(&opts).await.unwrap();
        let first = ds.claim(&me(1), &settings(), None).await.unwrap();
        let other = ds.claim(&me(2), &settings(), None).await.unwrap();
        assert_ne!(first.record.block, other.record.block);
        // A restart within the lease (a new client, no memory): same block,
        // same lease.
        let again = Etcd::connect(&opts)
            .await
            .unwrap()
            .claim(&me(1), &settings(), None)
            .await
            .unwrap();
        assert_eq!(again.record.block, first.record.block);
        assert_eq!(again.lease, first.lease);
        assert!(ds.renew(&again, 42).await.unwrap());
        // Leaving frees the block; asking for it again gets it back.
        let mut watch = ds.watch(ds.list().await.unwrap().revision).await.unwrap();
        ds.release(&again).await.unwrap();
        match next(&mut watch).await {
            WatchEvent::Changes { changes, .. } => {
                assert_eq!(changes, vec![Change::Gone(first.record.block)])
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !ds.renew(&again, 43).await.unwrap(),
            "a released claim is lost"
        );
        let back = ds
            .claim(&me(1), &settings(), Some(first.record.block))
            .await
            .unwrap();
        assert_eq!(back.record.block, first.record.block);
        match next(&mut watch).await {
            WatchEvent::Changes { changes, .. } => {
                assert!(matches!(&changes[..], [Change::Put(r)] if r.name == "node1"))
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn an_expired_lease_is_seen_and_a_compacted_watch_resyncs() {
    let server = EtcdServer::start();
    let opts = server.options(5);
    server.in_ns(move || async move {
        let ds = Etcd::connect(&opts).await.unwrap();
        let rev = ds.list().await.unwrap().revision;
        let mut watch = ds.watch(rev).await.unwrap();
        let c = ds.claim(&me(3), &settings(), None).await.unwrap();
        assert!(matches!(next(&mut watch).await, WatchEvent::Changes { .. }));
        // Not renewed: gone after the 5 s TTL.
        match next(&mut watch).await {
            WatchEvent::Changes { changes, .. } => {
                assert_eq!(changes, vec![Change::Gone(c.record.block)])
            }
            other => panic!("{other:?}"),
        }
        // A watch from a compacted revision: resync.
        let now = ds.list().await.unwrap().revision;
        ds.claim(&me(4), &settings(), None).await.unwrap();
        let mut raw = etcd_client::Client::connect(&opts.endpoints, None)
            .await
            .unwrap();
        let head = raw
            .get("x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        raw.compact(head, None).await.unwrap();
        let mut stale = ds.watch(now - 1).await.unwrap();
        assert!(matches!(next(&mut stale).await, WatchEvent::Resync(m) if m.contains("compacted")));
    });
}

#[test]
fn an_unreachable_endpoint_is_a_bounded_clear_error() {
    let server = EtcdServer::start();
    let mut opts = server.options(60);
    opts.endpoints = vec!["http://127.0.0.1:1".into()];
    server.in_ns(move || async move {
        let t = Instant::now();
        let r = match Etcd::connect(&opts).await {
            Ok(ds) => ds.list().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match r {
            Err(DsError::Unreachable(m)) => assert!(!m.is_empty()),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(30));
    });
}

#[test]
fn garbage_in_the_datastore_is_reported_not_routed() {
    let server = EtcdServer::start();
    let opts = server.options(60);
    server.in_ns(move || async move {
        let mut raw = etcd_client::Client::connect(&opts.endpoints, None)
            .await
            .unwrap();
        raw.put("/ferry/blocks/10.70.1.0-24", "{not json", None)
            .await
            .unwrap();
        raw.put("/ferry/blocks/nonsense", "{}", None).await.unwrap();
        let ds = Etcd::connect(&opts).await.unwrap();
        let l = ds.list().await.unwrap();
        assert!(l.nodes.is_empty());
        assert_eq!(l.unreadable.len(), 2, "{:?}", l.unreadable);
        // The garbage holds its block: a claim takes another.
        let c = ds.claim(&me(1), &settings(), None).await.unwrap();
        assert_ne!(c.record.block, "10.70.1.0/24".parse::<Ipv4Net>().unwrap());
    });
}

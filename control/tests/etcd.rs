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

/// The next batch of an object watch, bounded.
async fn next_object(
    w: &mut Box<dyn ferryd::services::source::ObjectWatch>,
) -> ferryd::services::source::WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("a watch event within 20 s")
}

/// Kubernetes objects in etcd: an apply is one transaction under
/// `<prefix>/objects/`, listed and watched by every node; a delete names
/// what was there; a garbage value is reported, never used.
#[test]
fn objects_round_trip_through_etcd_and_are_watched() {
    use ferryd::services::etcd::EtcdObjects;
    use ferryd::services::objects::{parse_file, Object};
    use ferryd::services::source::{Change, ObjectSource, ObjectStore, WatchEvent};
    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.88.0.5]}]\n";
    let server = EtcdServer::start();
    let opts = server.options(60);
    let url = server.url.clone();
    let ns = server.ns.clone();
    server.in_ns(move || async move {
        let a = EtcdObjects::connect(&opts).await.unwrap();
        let b = EtcdObjects::connect(&opts).await.unwrap();
        let l = b.list().await.unwrap();
        assert!(l.objects.is_empty());
        let mut watch = b.watch(l.revision).await.unwrap();
        let objs = parse_file("web.yaml", WEB).unwrap();
        a.apply(&objs).await.unwrap();
        match next_object(&mut watch).await {
            WatchEvent::Changes {
                changes,
                unreadable,
            } => {
                assert!(unreadable.is_empty());
                assert_eq!(
                    changes,
                    objs.iter().cloned().map(Change::Put).collect::<Vec<_>>()
                );
            }
            other => panic!("{other:?}"),
        }
        let mut listed = b.list().await.unwrap().objects;
        listed.sort_by_key(Object::key);
        let mut want = objs.clone();
        want.sort_by_key(Object::key);
        assert_eq!(listed, want);
        // Kubernetes JSON at the documented key, readable by any etcd client.
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "etcdctl",
                "--endpoints",
                &url,
                "get",
                "--print-value-only",
                "/ferry/objects/services/default/web",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "Service");
        assert_eq!(v["spec"]["clusterIP"], "10.96.0.10");

        // Garbage under the prefix is reported, and a watcher drops it.
        assert!(run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "etcdctl",
                "--endpoints",
                &url,
                "put",
                "/ferry/objects/services/default/web",
                "not json"
            ]
        ));
        match next_object(&mut watch).await {
            WatchEvent::Changes {
                changes,
                unreadable,
            } => {
                assert_eq!(changes, vec![Change::Gone(objs[0].key())]);
                assert_eq!(unreadable.len(), 1, "{unreadable:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.list().await.unwrap().unreadable.len(), 1);

        let keys: Vec<_> = objs.iter().map(Object::key).collect();
        let gone = a.delete(&keys).await.unwrap();
        assert_eq!(gone, keys, "the garbage key is deleted too");
        match next_object(&mut watch).await {
            WatchEvent::Changes { changes, .. } => assert_eq!(changes.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.delete(&keys).await.unwrap(), vec![], "nothing left");

        // One transaction: more than etcd takes is refused whole.
        let many: String = (0..130)
            .map(|i| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n"))
            .collect();
        let e = a
            .apply(&parse_file("many.yaml", &many).unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("at most 128"), "{e}");
        assert!(b.list().await.unwrap().objects.is_empty(), "all or nothing");
    });
}

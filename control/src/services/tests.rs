//! The embedded store's round trip and watch, and the service diff.

use super::*;
use crate::store::tests::TempDir;
use crate::store::Store;
use ferry_api::table::{Request, Response};
use source::{Embedded, ObjectSource};

/// A Service and its EndpointSlice (also in the parser's tests).
pub(super) const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.88.0.5]}]
"#;

fn apply(file: &str, text: &str) -> ObjectsRequest {
    ObjectsRequest::Apply {
        file: file.into(),
        text: text.into(),
    }
}

fn state(s: &str) -> DataplaneState {
    DataplaneState {
        services: s.into(),
        policies: s.into(),
    }
}

fn listing(r: ObjectsResponse) -> ObjectListing {
    match r {
        ObjectsResponse::Listing(l) => *l,
        other => panic!("not a listing: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_round_trip_watch_and_restart() {
    let dir = TempDir::new("svc-round");
    let store = Arc::new(Store::open(&dir.0).unwrap());
    let emb = Arc::new(Embedded::new(Arc::clone(&store)));
    let l = emb.list().await.unwrap();
    assert!(l.objects.is_empty());
    let mut watch = emb.watch(l.revision).await.unwrap();

    let objs = objects::parse_file("web.yaml", WEB).unwrap();
    emb.apply(&objs).await.unwrap();
    match watch.next().await {
        WatchEvent::Changes { changes, .. } => {
            assert_eq!(
                changes,
                objs.iter().cloned().map(Change::Put).collect::<Vec<_>>()
            )
        }
        other => panic!("{other:?}"),
    }
    // Listed in key order: endpointslices/... before services/...
    let l = emb.list().await.unwrap();
    assert_eq!(l.objects, [objs[1].clone(), objs[0].clone()]);

    // Delete names what was there; the missing one is not an error.
    let mut keys: Vec<ObjectKey> = objs.iter().map(Object::key).collect();
    keys.push(ObjectKey {
        kind: objects::Kind::Pod,
        namespace: "default".into(),
        name: "nobody".into(),
    });
    let gone = emb.delete(&keys[1..]).await.unwrap();
    assert_eq!(gone, vec![keys[1].clone()]);
    match watch.next().await {
        WatchEvent::Changes { changes, .. } => {
            assert_eq!(changes, vec![Change::Gone(keys[1].clone())])
        }
        other => panic!("{other:?}"),
    }
    // A watch that starts behind the store says so.
    let mut late = emb.watch(0).await.unwrap();
    assert!(matches!(late.next().await, WatchEvent::Resync(_)));

    // Kept across a restart (the redb file).
    drop((watch, late, emb));
    drop(store);
    let store = Arc::new(Store::open(&dir.0).unwrap());
    let l = Embedded::new(Arc::clone(&store)).list().await.unwrap();
    assert_eq!(l.objects, objs[..1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_stores_nothing_and_services_compile_from_the_store() {
    let dir = TempDir::new("svc-all");
    let store = Arc::new(Store::open(&dir.0).unwrap());
    let svc = Services::start(
        Arc::new(Embedded::new(Arc::clone(&store))),
        42,
        Default::default(),
        None,
    )
    .await;
    let bad = format!("{WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x, namespace: default}}\nspec: {{clusterIP: 10.96.0.400}}\n");
    match svc.handle(apply("bad.yaml", &bad), state("test")).await {
        ObjectsResponse::Error { msg } => {
            assert!(
                msg.contains("bad.yaml: document 3 (Service default/x)"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(store.objects().unwrap().is_empty(), "all or nothing");

    match svc.handle(apply("web.yaml", WEB), state("test")).await {
        ObjectsResponse::Applied { objects } => assert_eq!(objects.len(), 2),
        other => panic!("{other:?}"),
    }
    // The task is not running here: a restart's first listing compiles.
    let again = Services::start(
        Arc::new(Embedded::new(Arc::clone(&store))),
        42,
        Default::default(),
        None,
    )
    .await;
    let ports = again.ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].id, "default/web:80/TCP");
    assert_eq!(ports[0].seed, 42);
    assert_eq!(ports[0].backends.len(), 1);
    let l = listing(again.handle(ObjectsRequest::Get, state("synced")).await);
    assert_eq!(
        (l.objects.len(), l.services, l.dataplane.as_str()),
        (2, ports, "synced")
    );

    match again
        .handle(
            ObjectsRequest::Delete {
                file: "web.yaml".into(),
                text: WEB.into(),
            },
            DataplaneState::default(),
        )
        .await
    {
        ObjectsResponse::Deleted { objects, missing } => {
            assert_eq!((objects.len(), missing.len()), (2, 0))
        }
        other => panic!("{other:?}"),
    }
    assert!(store.objects().unwrap().is_empty());
}

#[test]
fn diff_upserts_what_changed_and_removes_what_went() {
    let port = |id: &str, n: u16| ServicePort {
        id: id.into(),
        vip: "10.96.0.1".parse().unwrap(),
        port: n,
        protocol: ferry_api::table::L4Proto::Tcp,
        backends: vec![],
        affinity_timeout_s: None,
        seed: 0,
        node_port: None,
        node_local: None,
    };
    let old = vec![port("a", 1), port("b", 2), port("c", 3)];
    let new = vec![port("a", 1), port("b", 20), port("d", 4)];
    let (up, rm) = diff(&old, &new);
    assert_eq!(up, vec![port("b", 20), port("d", 4)]);
    assert_eq!(rm, vec!["c".to_string()]);
    assert_eq!(diff(&new, &new), (vec![], vec![]));
}

/// A table-API server that answers everything and records what it got.
fn fake_dataplane(path: &std::path::Path) -> Arc<Mutex<Vec<Request>>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let got: Arc<Mutex<Vec<Request>>> = Arc::default();
    let log = Arc::clone(&got);
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Request = serde_json::from_str(&line).unwrap();
            let resp = match req {
                Request::Hello { .. } => Response::Hello {
                    api_version: ferry_api::table::API_VERSION,
                    workers: 1,
                    mtu_limits: None,
                },
                _ => Response::Applied {
                    generation: 1,
                    missing: vec![],
                },
            };
            log.lock().unwrap().push(req);
            let mut out = serde_json::to_vec(&resp).unwrap();
            out.push(b'\n');
            w.write_all(&out).await.unwrap();
        }
    });
    got
}

/// Wait until the fake dataplane got `n` requests (the follower pushes
/// from its own task), then take them.
async fn take(got: &Mutex<Vec<Request>>, n: usize) -> Vec<Request> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.lock().unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            got.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    std::mem::take(&mut *got.lock().unwrap())
}

const DENY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_and_object_changes_push_policy_upserts_and_removes() {
    use ferry_api::table::{EndpointPolicy, NodeSettings};
    let dir = TempDir::new("svc-policy");
    let store = Arc::new(Store::open(&dir.0).unwrap());
    let emb = Arc::new(Embedded::new(Arc::clone(&store)));
    emb.apply(&objects::parse_file("deny.yaml", DENY).unwrap())
        .await
        .unwrap();
    let svc = Services::start(emb, 0, Default::default(), None).await;
    let ep = |id: &str, ip: &str| LocalEndpoint {
        id: id.into(),
        namespace: Some("shop".into()),
        name: Some(id.into()),
        ips: vec![ip.parse().unwrap()],
    };
    // A ready record at start: in the first sync's policies.
    svc.set_endpoints(vec![ep("a", "10.88.0.2")]);
    let deny = |id: &str| EndpointPolicy {
        endpoint: id.into(),
        ingress: Some(vec![]),
        egress: None,
    };

    let got = fake_dataplane(&dir.0.join("dp.sock"));
    let hook: crate::dataplane_client::SyncHook = {
        let svc = Arc::clone(&svc);
        Arc::new(move |_| {
            let policies = svc.policies();
            Box::pin(async move {
                crate::dataplane_client::Desired {
                    node: NodeSettings {
                        gateways: vec![],
                        router_mac: ferry_api::MacAddr::ROUTER,
                        pod_cidrs: vec![],
                        host_port: None,
                        mtu: 1500,
                        uplink: None,
                    },
                    endpoints: vec![],
                    routes: vec![],
                    stale: vec![],
                    services: vec![],
                    policies,
                }
            })
        })
    };
    let dp = DataplaneClient::spawn(dir.0.join("dp.sock"), hook);
    let first = take(&got, 4).await;
    assert!(matches!(first[1], Request::Sync { .. }), "{first:?}");
    assert!(
        matches!(first[2], Request::SyncServices { .. }),
        "{first:?}"
    );
    assert_eq!(
        first[3],
        Request::SyncPolicies {
            policies: vec![deny("a")]
        }
    );

    // An ADD's endpoint: its policy is in before the call returns.
    svc.endpoint_up(ep("b", "10.88.0.3"), &dp).await;
    assert_eq!(
        std::mem::take(&mut *got.lock().unwrap()),
        [Request::UpsertPolicy { policy: deny("b") }]
    );
    // The same endpoint again changes nothing; an unknown one going neither.
    svc.endpoint_up(ep("b", "10.88.0.3"), &dp).await;
    svc.endpoint_down("nobody", &dp).await;
    svc.endpoint_down("a", &dp).await;
    assert_eq!(
        std::mem::take(&mut *got.lock().unwrap()),
        [Request::RemovePolicy {
            endpoint: "a".into()
        }]
    );

    // Object changes reach the follower: a policy letting in the pods of
    // shop adds a rule; deleting both policies removes b's policy.
    svc.spawn(dp.clone());
    let allow = DENY.replace("deny", "allow").replace(
        "{podSelector: {}}",
        "{podSelector: {}, ingress: [{from: [{podSelector: {}}]}]}",
    );
    svc.handle(apply("allow.yaml", &allow), state("")).await;
    let rule = ferry_api::table::PolicyRule {
        peers: Some(vec![ferry_api::table::PolicyPeer {
            cidr: "10.88.0.3/32".parse().unwrap(),
            except: vec![],
        }]),
        ports: vec![],
    };
    let want = EndpointPolicy {
        ingress: Some(vec![rule]),
        ..deny("b")
    };
    // The follower's first listing may or may not see allow.yaml already.
    let pushed = take(&got, 1).await;
    assert_eq!(
        pushed.last(),
        Some(&Request::UpsertPolicy { policy: want }),
        "{pushed:?}"
    );
    for file in [DENY.to_string(), allow] {
        let del = ObjectsRequest::Delete {
            file: "f.yaml".into(),
            text: file,
        };
        svc.handle(del, state("")).await;
    }
    // Without deny, allow alone gives b the same policy: nothing to send
    // until allow goes too.
    assert_eq!(
        take(&got, 1).await,
        [Request::RemovePolicy {
            endpoint: "b".into()
        }]
    );
    svc.stop();
}

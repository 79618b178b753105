//! The embedded store's round trip and watch, and the service diff.

use super::*;
use crate::store::tests::TempDir;
use crate::store::Store;
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
    )
    .await;
    let bad = format!("{WEB}---\napiVersion: v1\nkind: Service\nmetadata: {{name: x, namespace: default}}\nspec: {{clusterIP: 10.96.0.400}}\n");
    match svc.handle(apply("bad.yaml", &bad), "test".into()).await {
        ObjectsResponse::Error { msg } => {
            assert!(
                msg.contains("bad.yaml: document 3 (Service default/x)"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(store.objects().unwrap().is_empty(), "all or nothing");

    match svc.handle(apply("web.yaml", WEB), "test".into()).await {
        ObjectsResponse::Applied { objects } => assert_eq!(objects.len(), 2),
        other => panic!("{other:?}"),
    }
    // The task is not running here: a restart's first listing compiles.
    let again = Services::start(
        Arc::new(Embedded::new(Arc::clone(&store))),
        42,
        Default::default(),
    )
    .await;
    let ports = again.ports();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].id, "default/web:80/TCP");
    assert_eq!(ports[0].seed, 42);
    assert_eq!(ports[0].backends.len(), 1);
    let l = listing(again.handle(ObjectsRequest::Get, "synced".into()).await);
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
            String::new(),
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
    };
    let old = vec![port("a", 1), port("b", 2), port("c", 3)];
    let new = vec![port("a", 1), port("b", 20), port("d", 4)];
    let (up, rm) = diff(&old, &new);
    assert_eq!(up, vec![port("b", 20), port("d", 4)]);
    assert_eq!(rm, vec!["c".to_string()]);
    assert_eq!(diff(&new, &new), (vec![], vec![]));
}

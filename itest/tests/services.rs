//! Kubernetes Services through the real binaries on one node: `ferryctl
//! apply -f` puts a Service and its EndpointSlice into ferryd's embedded
//! store, ferryd compiles the service port (ready endpoints only) and the
//! dataplane's tables hold it (`TableDump.services`); a bad file stores
//! nothing; a restarted dataplane gets the services again in its sync; the
//! node kernel routes the service CIDR through the host port; `delete -f`
//! takes the port out of the dataplane.

use std::fs;
use std::time::Duration;

use ferry_api::table::ServicePort;
use itest::*;

const ID: &str = "default/web:80/TCP";

fn web(backend: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{backend}]
  conditions: {{ready: true}}
- addresses: [10.88.0.250]
  conditions: {{ready: false}}
"#
    )
}

fn ctl_ok(node: &Node, args: &[&str]) -> String {
    let out = node.ferryctl(args);
    assert!(
        out.status.success(),
        "ferryctl {args:?}: {}\nferryd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.ferryd.as_ref().unwrap().log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dataplane's service ports.
fn dataplane_services(node: &Node) -> Vec<ServicePort> {
    ferry_api::client::tables(&node.dataplane_socket())
        .map(|t| t.services)
        .unwrap_or_default()
}

fn wait_dataplane_has(node: &Node, want: Option<&ServicePort>) {
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        got = dataplane_services(node);
        match want {
            Some(w) => got.iter().any(|p| p == w),
            None => !got.iter().any(|p| p.id == ID),
        }
    });
    assert!(
        ok,
        "dataplane services {got:?}, wanted {want:?}\nferryd log:\n{}",
        node.ferryd.as_ref().unwrap().log_text()
    );
}

#[test]
fn apply_get_delete_through_ferryd_reach_the_dataplane() {
    let mut node = Node::start(
        "fysvc",
        NodeOpts {
            extra_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..NodeOpts::default()
        },
    );
    let pod = node.add_pod(1);
    let file = node.dir.path.join("web.yaml");
    fs::write(&file, web(&pod.ip)).unwrap();
    let file = file.display().to_string();

    let out = ctl_ok(&node, &["apply", "-f", &file]);
    assert!(out.contains("Service default/web applied"), "{out}");
    assert!(out.contains("EndpointSlice default/web-1 applied"), "{out}");

    // ferryd's view: the compiled port, the not-ready endpoint left out.
    let ports: Vec<ServicePort> =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "services"])).unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    let port = ports[0].clone();
    assert_eq!(port.id, ID);
    assert_eq!(port.vip.to_string(), "10.96.0.10");
    assert_eq!(
        port.backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect::<Vec<_>>(),
        [format!("{}:8080", pod.ip)]
    );
    let table = ctl_ok(&node, &["get", "services"]);
    assert!(
        table.contains(ID) && table.contains("10.96.0.10:80"),
        "{table}"
    );
    let objects = ctl_ok(&node, &["get", "objects"]);
    assert!(
        objects.contains("EndpointSlice") && objects.contains("web-1"),
        "{objects}"
    );

    // The dataplane's view.
    wait_dataplane_has(&node, Some(&port));
    let listing: serde_json::Value =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "objects"])).unwrap();
    assert_eq!(listing["dataplane"], "synced", "{listing}");

    // The node kernel sends ClusterIP traffic into the dataplane.
    let routes = ns_run_ok(&node.ns.name, &["ip", "route", "show", "10.96.0.0/12"]);
    assert!(routes.contains("dev ferry0"), "{routes}");

    // A bad file: refused, naming the document, and nothing of it stored.
    let bad = node.dir.path.join("bad.yaml");
    fs::write(
        &bad,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}",
            web(&pod.ip).replace("10.96.0.10", "10.96.0.300")
        ),
    )
    .unwrap();
    let out = node.ferryctl(&["apply", "-f", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("document 2 (Service default/web)") && err.contains("10.96.0.300"),
        "{err}"
    );
    let objects = ctl_ok(&node, &["get", "objects"]);
    assert!(!objects.contains("shop"), "all or nothing: {objects}");

    // A restarted dataplane gets the services in its sync.
    node.dataplane.take().unwrap().kill();
    node.start_dataplane();
    node.wait_ready();
    wait_dataplane_has(&node, Some(&port));

    // Delete: out of ferryd and out of the dataplane.
    let out = ctl_ok(&node, &["delete", "-f", &file]);
    assert!(out.contains("Service default/web deleted"), "{out}");
    wait_dataplane_has(&node, None);
    let ports: Vec<ServicePort> =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "services"])).unwrap();
    assert!(ports.is_empty(), "{ports:?}");
    let out = ctl_ok(&node, &["delete", "-f", &file]);
    assert!(out.contains("not found"), "{out}");
    node.del_pod(&pod).assert_ok();
}

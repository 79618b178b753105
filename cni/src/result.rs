//! What ferry prints on stdout: the ADD result in the cniVersion asked, the
//! VERSION answer, and CNI errors. Empty/absent fields are left out, as the
//! reference plugins' Go types do (`omitempty`); `dns` is always present,
//! verbatim from the config or `{}`, as Go prints a struct.

use ferry_api::pod::PodResult;
use serde_json::{json, Map, Value};

use crate::error::CniError;
use crate::version::CniVersion;

/// The ADD result in the format of `version`.
pub fn add_result(
    result: &PodResult,
    version: CniVersion,
    dns: Option<&Map<String, Value>>,
) -> Value {
    let interfaces: Vec<Value> = result
        .interfaces
        .iter()
        .map(|itf| {
            let mut o = Map::new();
            o.insert("name".into(), json!(itf.name));
            o.insert("mac".into(), json!(itf.mac.to_string()));
            if let Some(sandbox) = itf.sandbox.as_deref().filter(|s| !s.is_empty()) {
                o.insert("sandbox".into(), json!(sandbox));
            }
            Value::Object(o)
        })
        .collect();
    let ips: Vec<Value> = result
        .ips
        .iter()
        .map(|ip| {
            let mut o = Map::new();
            if version.result_has_ip_version() {
                let family = match ip.address {
                    ipnet::IpNet::V4(_) => "4",
                    ipnet::IpNet::V6(_) => "6",
                };
                o.insert("version".into(), json!(family));
            }
            o.insert("interface".into(), json!(ip.interface));
            o.insert("address".into(), json!(ip.address.to_string()));
            if let Some(gw) = ip.gateway {
                o.insert("gateway".into(), json!(gw.to_string()));
            }
            Value::Object(o)
        })
        .collect();
    let routes: Vec<Value> = result
        .routes
        .iter()
        .map(|r| {
            let mut o = Map::new();
            o.insert("dst".into(), json!(r.dst.to_string()));
            if let Some(gw) = r.gw {
                o.insert("gw".into(), json!(gw.to_string()));
            }
            Value::Object(o)
        })
        .collect();

    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version.as_str()));
    if !interfaces.is_empty() {
        out.insert("interfaces".into(), Value::Array(interfaces));
    }
    if !ips.is_empty() {
        out.insert("ips".into(), Value::Array(ips));
    }
    if !routes.is_empty() {
        out.insert("routes".into(), Value::Array(routes));
    }
    out.insert(
        "dns".into(),
        Value::Object(dns.cloned().unwrap_or_default()),
    );
    Value::Object(out)
}

/// The VERSION answer.
pub fn version_info(asked: &str) -> Value {
    json!({
        "cniVersion": asked,
        "supportedVersions": CniVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

/// A CNI error as printed on stdout.
pub fn error(e: &CniError, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "code": e.code,
        "msg": e.msg,
        "details": e.details,
    })
}

/// Pretty JSON as the reference plugins print it. Serializing a `Value`
/// cannot fail (string keys only); the fallback keeps that unreachable path
/// panic-free all the same.
pub fn to_text(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ferry_api::pod::{Interface, IpConfig, RouteSpec};
    use ferry_api::MacAddr;

    use super::*;

    fn sample() -> PodResult {
        PodResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: MacAddr::for_pod(Ipv4Addr::new(10, 88, 0, 5)),
                sandbox: Some("/var/run/netns/p".into()),
            }],
            ips: vec![IpConfig {
                address: "10.88.0.5/16".parse().unwrap(),
                gateway: Some(Ipv4Addr::new(10, 88, 0, 1).into()),
                interface: 0,
            }],
            routes: vec![RouteSpec {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some(Ipv4Addr::new(10, 88, 0, 1).into()),
            }],
        }
    }

    #[test]
    fn result_shape_for_every_version() {
        for v in CniVersion::ALL {
            let out = add_result(&sample(), v, None);
            let mut ip = json!({"interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"});
            if v < CniVersion::V1_0_0 {
                ip["version"] = json!("4");
            }
            let expected = json!({
                "cniVersion": v.as_str(),
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/var/run/netns/p"}],
                "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
                "dns": {},
            });
            assert_eq!(out, expected, "{v}");
        }
    }

    #[test]
    fn both_families_in_every_version() {
        let mut r = sample();
        r.ips.push(IpConfig {
            address: "fd00::5/64".parse().unwrap(),
            gateway: Some("fd00::1".parse().unwrap()),
            interface: 0,
        });
        r.routes.push(RouteSpec {
            dst: "::/0".parse().unwrap(),
            gw: Some("fd00::1".parse().unwrap()),
        });
        for v in CniVersion::ALL {
            let out = add_result(&r, v, None);
            let versions: Vec<&Value> = out["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ip| &ip["version"])
                .collect();
            if v < CniVersion::V1_0_0 {
                assert_eq!(versions, [&json!("4"), &json!("6")], "{v}");
            } else {
                assert!(
                    versions.iter().all(|x| x.is_null()),
                    "{v}: no version in 1.x"
                );
            }
            assert_eq!(out["ips"][1]["address"], json!("fd00::5/64"), "{v}");
            assert_eq!(out["ips"][1]["gateway"], json!("fd00::1"), "{v}");
            assert_eq!(
                out["routes"][1],
                json!({"dst": "::/0", "gw": "fd00::1"}),
                "{v}"
            );
        }
    }

    #[test]
    fn omits_empty_fields_and_copies_dns() {
        let bare = PodResult {
            interfaces: vec![Interface {
                name: "fy0".into(),
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                sandbox: None,
            }],
            ips: vec![IpConfig {
                address: "10.0.0.2/24".parse().unwrap(),
                gateway: None,
                interface: 0,
            }],
            routes: vec![],
        };
        let dns: Map<String, Value> = serde_json::from_str(
            r#"{"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "x": 1}"#,
        )
        .unwrap();
        let out = add_result(&bare, CniVersion::V1_1_0, Some(&dns));
        assert_eq!(
            out,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "fy0", "mac": "02:00:00:00:00:01"}],
                "ips": [{"interface": 0, "address": "10.0.0.2/24"}],
                "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "x": 1},
            })
        );
    }
}

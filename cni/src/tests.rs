//! [`run`](crate::run) end to end, with ferryd replaced by a closure: env,
//! config, version gates, the request built and the output printed.

use std::cell::RefCell;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::pod::{
    Command, Interface, IpConfig, PodError, PodRequest, PodResponse, PodResult, RouteSpec,
};
use ferry_api::wire::WireError;
use ferry_api::MacAddr;
use serde_json::{json, Value};

use crate::{run, ClientError, CniVersion, Env};

const NETNS: &str = "/proc/self/ns/net";

fn env(command: &str, extra: &[(&str, &str)]) -> Env {
    let mut pairs = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    for (k, v) in extra {
        pairs.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            pairs.push((k, v));
        }
    }
    Env::from_pairs(pairs)
}

fn conf(version: &str, extra: Value) -> Vec<u8> {
    let mut base = json!({"cniVersion": version, "name": "ferry", "type": "ferry", "ferrydSocket": "/tmp/fcni-test.sock"});
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    serde_json::to_vec(&base).unwrap()
}

fn pod_result() -> PodResult {
    PodResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: MacAddr::for_pod(Ipv4Addr::new(10, 88, 0, 5)),
            sandbox: Some(NETNS.into()),
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

type Reply = Box<dyn Fn(&PodRequest) -> Result<PodResponse, ClientError>>;

/// A stand-in ferryd that records what it was asked and answers `reply`.
struct Fake {
    seen: RefCell<Vec<(PathBuf, PodRequest)>>,
    reply: Reply,
}

impl Fake {
    fn answering(
        reply: impl Fn(&PodRequest) -> Result<PodResponse, ClientError> + 'static,
    ) -> Fake {
        Fake {
            seen: RefCell::new(Vec::new()),
            reply: Box::new(reply),
        }
    }

    fn ok() -> Fake {
        Fake::answering(|req| {
            Ok(match req.command {
                Command::Add => PodResponse::Ok {
                    result: Some(pod_result()),
                },
                Command::Status => PodResponse::Status {
                    ready: true,
                    msg: String::new(),
                    code: 0,
                    stale: vec![],
                    cluster: None,
                },
                _ => PodResponse::Ok { result: None },
            })
        })
    }

    fn run(&self, env: &Env, stdin: &[u8]) -> (i32, String) {
        run(env, stdin, &|path: &Path, req: &PodRequest| {
            self.seen
                .borrow_mut()
                .push((path.to_path_buf(), req.clone()));
            (self.reply)(req)
        })
    }

    fn only_request(&self) -> PodRequest {
        let seen = self.seen.borrow();
        assert_eq!(seen.len(), 1, "expected exactly one request to ferryd");
        seen[0].1.clone()
    }
}

fn json_out(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {out}"))
}

#[test]
fn add_prints_the_result_in_every_version() {
    for v in CniVersion::ALL {
        let fake = Fake::ok();
        let (code, out) = fake.run(
            &env(
                "ADD",
                &[("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.88.0.9")],
            ),
            &conf(
                v.as_str(),
                json!({"runtimeConfig": {"ips": ["10.88.0.9/16", "10.88.0.7/16"]}, "mtu": 1400}),
            ),
        );
        assert_eq!(code, 0, "{v}: {out}");
        let mut ip = json!({"interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"});
        if v < CniVersion::V1_0_0 {
            ip["version"] = json!("4");
        }
        assert_eq!(
            json_out(&out),
            json!({
                "cniVersion": v.as_str(),
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": NETNS}],
                "ips": [ip],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
                "dns": {},
            }),
            "{v}"
        );
        let (path, req) = fake.seen.borrow()[0].clone();
        assert_eq!(path, PathBuf::from("/tmp/fcni-test.sock"));
        assert_eq!(req.command, Command::Add);
        assert_eq!(req.network, "ferry");
        assert_eq!(req.container_id, "c0ffee");
        assert_eq!(req.ifname, "eth0");
        assert_eq!(req.netns.as_deref(), Some(NETNS));
        assert_eq!(req.mtu, Some(1400));
        assert_eq!(
            req.args.get("K8S_POD_NAME").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            req.ipam.requested,
            vec![Ipv4Addr::new(10, 88, 0, 9), Ipv4Addr::new(10, 88, 0, 7)]
        );
        assert!(req.prev_result.is_none());
    }
}

/// What ferryd answers a dual-stack ADD with.
fn dual_stack_result() -> PodResult {
    let mut r = pod_result();
    let gw6: std::net::IpAddr = "fd00::1".parse().unwrap();
    r.ips.push(IpConfig {
        address: "fd00::5/64".parse().unwrap(),
        gateway: Some(gw6),
        interface: 0,
    });
    r.routes.push(RouteSpec {
        dst: "::/0".parse().unwrap(),
        gw: Some(gw6),
    });
    r
}

#[test]
fn dual_stack_add_and_check_in_every_version() {
    for v in CniVersion::ALL {
        let fake = Fake::answering(|_| {
            Ok(PodResponse::Ok {
                result: Some(dual_stack_result()),
            })
        });
        let ranges = json!([[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00::/64", "rangeStart": "fd00::10", "gateway": "fd00::1"}]]);
        let (code, out) = fake.run(
            &env("ADD", &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.88.0.9,fd00::9")]),
            &conf(
                v.as_str(),
                json!({"ipam": {"ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]},
                       "runtimeConfig": {"ips": ["fd00::9/64"]}}),
            ),
        );
        assert_eq!(code, 0, "{v}: {out}");
        let mut ip4 = json!({"interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"});
        let mut ip6 = json!({"interface": 0, "address": "fd00::5/64", "gateway": "fd00::1"});
        if v < CniVersion::V1_0_0 {
            ip4["version"] = json!("4");
            ip6["version"] = json!("6");
        }
        let printed = json_out(&out);
        assert_eq!(printed["ips"], json!([ip4, ip6]), "{v}");
        assert_eq!(
            printed["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]),
            "{v}"
        );
        let req = fake.only_request();
        assert_eq!(req.ipam.ranges.len(), 2, "{v}");
        assert_eq!(req.ipam.ranges[1].subnet.to_string(), "fd00::/64");
        assert_eq!(
            req.ipam.ranges[1].range_start,
            Some("fd00::10".parse().unwrap())
        );
        assert_eq!(req.ipam.routes[1].dst.to_string(), "::/0");
        // CNI_ARGS first, the runtime's duplicate not twice.
        let want: Vec<std::net::IpAddr> = vec![[10, 88, 0, 9].into(), "fd00::9".parse().unwrap()];
        assert_eq!(req.ipam.requested, want, "{v}");

        // CHECK (0.4.0 and later) with that result as prevResult: both
        // families reach ferryd, version-neutral.
        if v < CniVersion::V0_4_0 {
            continue;
        }
        let fake = Fake::ok();
        let (code, out) = fake.run(
            &env("CHECK", &[]),
            &conf(v.as_str(), json!({"prevResult": printed})),
        );
        assert_eq!((code, out.as_str()), (0, ""), "{v}");
        assert_eq!(
            fake.only_request().prev_result,
            Some(dual_stack_result()),
            "{v}"
        );
    }
}

#[test]
fn add_copies_dns_and_ipam_from_the_config() {
    let fake = Fake::ok();
    let dns = json!({"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["svc.cluster.local"], "options": ["ndots:5"]});
    let (code, out) = fake.run(
        &env("ADD", &[]),
        &conf(
            "1.0.0",
            json!({"dns": dns, "ipam": {"ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]], "routes": [{"dst": "0.0.0.0/0"}]}}),
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_out(&out)["dns"], dns);
    let req = fake.only_request();
    assert_eq!(req.ipam.ranges.len(), 1);
    assert_eq!(
        req.ipam.ranges[0].gateway,
        Some(Ipv4Addr::new(10, 88, 0, 1).into())
    );
    assert_eq!(
        req.ipam.routes,
        vec![RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gw: None
        }]
    );
    assert!(req.ipam.requested.is_empty());
}

#[test]
fn invalid_input_is_reported_with_its_code_and_never_reaches_ferryd() {
    let ok11 = conf("1.1.0", json!({}));
    let cases: Vec<(&str, Env, Vec<u8>, u32, &str)> = vec![
        (
            "no CNI_COMMAND",
            Env::from_pairs([("CNI_NETNS", NETNS)]),
            ok11.clone(),
            4,
            "CNI_COMMAND is not set",
        ),
        (
            "unknown command",
            env("FROB", &[]),
            ok11.clone(),
            4,
            "CNI_COMMAND=\"FROB\"",
        ),
        (
            "missing CNI_NETNS",
            env("ADD", &[("CNI_NETNS", "")]),
            ok11.clone(),
            4,
            "CNI_NETNS is not set",
        ),
        (
            "missing CNI_PATH on CHECK",
            env("CHECK", &[("CNI_PATH", "")]),
            ok11.clone(),
            4,
            "CNI_PATH is not set",
        ),
        (
            "missing CNI_CONTAINERID on DEL",
            env("DEL", &[("CNI_CONTAINERID", "")]),
            ok11.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "bad container id",
            env("ADD", &[("CNI_CONTAINERID", "../x")]),
            ok11.clone(),
            4,
            "CNI_CONTAINERID=\"../x\"",
        ),
        (
            "long ifname",
            env("ADD", &[("CNI_IFNAME", "eth0123456789abc")]),
            ok11.clone(),
            4,
            "CNI_IFNAME=\"eth0123456789abc\"",
        ),
        (
            "nonexistent netns",
            env("ADD", &[("CNI_NETNS", "/var/run/netns/fcni-nope")]),
            ok11.clone(),
            4,
            "CNI_NETNS=\"/var/run/netns/fcni-nope\"",
        ),
        (
            "malformed CNI_ARGS",
            env("ADD", &[("CNI_ARGS", "IgnoreUnknown")]),
            ok11.clone(),
            4,
            "CNI_ARGS item",
        ),
        (
            "CNI_ARGS bad IP",
            env("ADD", &[("CNI_ARGS", "IP=10.88.0.x")]),
            ok11.clone(),
            4,
            "CNI_ARGS IP=\"10.88.0.x\"",
        ),
        (
            "CNI_ARGS bad IPv6",
            env("ADD", &[("CNI_ARGS", "IP=10.88.0.9,fd00::zz")]),
            ok11.clone(),
            4,
            "\"fd00::zz\" is not an IP address",
        ),
        (
            "bad JSON",
            env("ADD", &[]),
            b"cniVersion: 1.0.0".to_vec(),
            6,
            "not valid JSON",
        ),
        (
            "empty stdin",
            env("DEL", &[]),
            Vec::new(),
            6,
            "stdin is empty",
        ),
        (
            "wrong type",
            env("ADD", &[]),
            conf("1.0.0", json!({"type": "bridge"})),
            7,
            "`type` = \"bridge\"",
        ),
        (
            "bad version",
            env("ADD", &[]),
            conf("0.2.0", json!({})),
            1,
            "cniVersion \"0.2.0\" is not supported",
        ),
        (
            "CHECK on 0.3.1",
            env("CHECK", &[]),
            conf("0.3.1", json!({})),
            1,
            "CHECK needs cniVersion 0.4.0",
        ),
        (
            "STATUS on 1.0.0",
            Env::from_pairs([("CNI_COMMAND", "STATUS")]),
            conf("1.0.0", json!({})),
            1,
            "STATUS needs cniVersion 1.1.0",
        ),
        (
            "GC on 1.0.0",
            Env::from_pairs([("CNI_COMMAND", "GC")]),
            conf("1.0.0", json!({"cni.dev/valid-attachments": []})),
            1,
            "GC needs cniVersion 1.1.0",
        ),
        (
            "a range set of both families",
            env("ADD", &[]),
            conf(
                "1.1.0",
                json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/16"}, {"subnet": "fd00::/64"}]]}}),
            ),
            7,
            "mixes families",
        ),
        (
            "range outside subnet",
            env("ADD", &[]),
            conf(
                "1.1.0",
                json!({"ipam": {"ranges": [[{"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.1.10"}]]}}),
            ),
            7,
            "is outside the range's subnet 10.88.0.0/24",
        ),
        (
            "mtu out of range",
            env("ADD", &[]),
            conf("1.1.0", json!({"mtu": 9})),
            7,
            "`mtu` = 9",
        ),
        (
            "CHECK without prevResult",
            env("CHECK", &[]),
            conf("0.4.0", json!({})),
            7,
            "required prevResult missing",
        ),
        (
            "CHECK with an IPv6 prevResult labelled version 4",
            env("CHECK", &[]),
            conf(
                "0.4.0",
                json!({"prevResult": {"interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05"}], "ips": [{"version": "4", "address": "fd00::5/64", "interface": 0}]}}),
            ),
            7,
            "does not match the IPv6 address",
        ),
        (
            "GC without attachments",
            Env::from_pairs([("CNI_COMMAND", "GC")]),
            conf("1.1.0", json!({})),
            7,
            "cni.dev/valid-attachments",
        ),
    ];
    for (what, env, stdin, code, needle) in cases {
        let fake = Fake::ok();
        let (exit, out) = fake.run(&env, &stdin);
        assert_eq!(exit, 1, "{what}: {out}");
        let err = json_out(&out);
        assert_eq!(err["code"], json!(code), "{what}: {out}");
        assert!(
            err["msg"].as_str().unwrap().contains(needle),
            "{what}: {out} lacks {needle:?}"
        );
        assert!(err["details"].is_string(), "{what}");
        // Labelled with the version asked when ferry speaks it.
        let asked = crate::conf::peek_version(&stdin).filter(|v| CniVersion::parse(v).is_ok());
        assert_eq!(
            err["cniVersion"],
            json!(asked.as_deref().unwrap_or("1.1.0")),
            "{what}"
        );
        assert!(fake.seen.borrow().is_empty(), "{what}: ferryd was called");
    }
}

#[test]
fn version_answers_without_ferryd() {
    let cases: [(&[u8], &str); 4] = [
        (b"", "1.1.0"),
        (br#"{"cniVersion": "0.4.0"}"#, "0.4.0"),
        (
            br#"{"cniVersion": "1.0.0", "name": "x", "type": "ferry"}"#,
            "1.0.0",
        ),
        (b"garbage", "1.1.0"),
    ];
    for (stdin, asked) in cases {
        let fake = Fake::ok();
        let (code, out) = fake.run(&Env::from_pairs([("CNI_COMMAND", "VERSION")]), stdin);
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            json_out(&out),
            json!({"cniVersion": asked, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        assert!(fake.seen.borrow().is_empty());
    }
}

#[test]
fn del_check_gc_status_succeed_silently() {
    // DEL: no netns, nothing printed.
    let fake = Fake::ok();
    let (code, out) = fake.run(
        &env("DEL", &[("CNI_NETNS", ""), ("CNI_PATH", "")]),
        &conf("0.3.1", json!({})),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    let req = fake.only_request();
    assert_eq!(
        (req.command, req.netns, req.container_id.as_str()),
        (Command::Del, None, "c0ffee")
    );

    // DEL ignores a prevResult ferry could not represent.
    let fake = Fake::ok();
    let weird_prev = json!({"prevResult": {"ips": [{"address": "fd00::1/64"}]}});
    let (code, out) = fake.run(&env("DEL", &[]), &conf("1.0.0", weird_prev));
    assert_eq!((code, out.as_str()), (0, ""));

    // CHECK: prevResult is sent, version-neutral.
    let fake = Fake::ok();
    let prev = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": NETNS}],
        "ips": [{"version": "4", "interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
        "dns": {}
    });
    let (code, out) = fake.run(
        &env("CHECK", &[]),
        &conf("0.4.0", json!({"prevResult": prev})),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    let req = fake.only_request();
    assert_eq!(req.command, Command::Check);
    assert_eq!(req.prev_result, Some(pod_result()));

    // GC: the valid attachments are passed on; attachment env is not needed.
    let fake = Fake::ok();
    let gc = json!({"cni.dev/valid-attachments": [{"containerID": "a1", "ifname": "eth0"}, {"containerID": "b2", "ifname": "net1"}]});
    let (code, out) = fake.run(
        &Env::from_pairs([("CNI_COMMAND", "GC")]),
        &conf("1.1.0", gc),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    let req = fake.only_request();
    assert_eq!(req.command, Command::Gc);
    assert_eq!(req.valid_attachments.len(), 2);
    assert_eq!(req.valid_attachments[1].container_id, "b2");
    assert_eq!(req.valid_attachments[1].ifname, "net1");
    assert!(req.container_id.is_empty());

    // STATUS ready.
    let fake = Fake::ok();
    let (code, out) = fake.run(
        &Env::from_pairs([("CNI_COMMAND", "STATUS")]),
        &conf("1.1.0", json!({})),
    );
    assert_eq!((code, out.as_str()), (0, ""));
    assert_eq!(fake.only_request().command, Command::Status);
}

fn unreachable(path: &Path) -> ClientError {
    ClientError::Connect {
        path: path.to_path_buf(),
        source: io::Error::from(io::ErrorKind::NotFound),
    }
}

#[test]
fn ferryd_failures_map_to_codes() {
    let status_env = || Env::from_pairs([("CNI_COMMAND", "STATUS")]);
    let pod_error = PodError {
        code: 101,
        msg: "no free address in 10.88.0.0/16".into(),
        details: "254 in use".into(),
    };
    let p = PathBuf::from("/tmp/fcni-test.sock");
    let cases: Vec<(&str, Env, Reply, u32, &str)> = vec![
        (
            "ADD unreachable",
            env("ADD", &[]),
            Box::new({
                let p = p.clone();
                move |_| Err(unreachable(&p))
            }),
            11,
            "ferryd is not reachable at /tmp/fcni-test.sock",
        ),
        (
            "DEL unreachable",
            env("DEL", &[]),
            Box::new({
                let p = p.clone();
                move |_| Err(unreachable(&p))
            }),
            11,
            "is ferryd running?",
        ),
        (
            "STATUS unreachable",
            status_env(),
            Box::new({
                let p = p.clone();
                move |_| Err(unreachable(&p))
            }),
            50,
            "ferryd is not reachable",
        ),
        (
            "STATUS not ready",
            status_env(),
            Box::new(|_| {
                Ok(PodResponse::Status {
                    ready: false,
                    msg: "dataplane disconnected".into(),
                    code: 0,
                    stale: vec![],
                    cluster: None,
                })
            }),
            50,
            "dataplane disconnected",
        ),
        (
            "STATUS limited connectivity",
            status_env(),
            Box::new(|_| {
                Ok(PodResponse::Status {
                    ready: false,
                    msg: "host port ferry0dp is missing".into(),
                    code: 51,
                    stale: vec![],
                    cluster: None,
                })
            }),
            51,
            "host port ferry0dp is missing",
        ),
        (
            "ADD EOF",
            env("ADD", &[]),
            Box::new({
                let p = p.clone();
                move |_| {
                    Err(ClientError::Receive {
                        path: p.clone(),
                        source: WireError::Closed,
                    })
                }
            }),
            11,
            "peer closed",
        ),
        (
            "ADD slow",
            env("ADD", &[]),
            Box::new({
                let p = p.clone();
                move |_| {
                    Err(ClientError::ReplyTimeout {
                        path: p.clone(),
                        timeout: Duration::from_secs(30),
                    })
                }
            }),
            11,
            "within 30 s",
        ),
        (
            "ADD garbage reply",
            env("ADD", &[]),
            Box::new({
                let p = p.clone();
                move |_| {
                    Err(ClientError::Receive {
                        path: p.clone(),
                        source: WireError::TooLong,
                    })
                }
            }),
            5,
            "cannot read",
        ),
        (
            "ADD without result",
            env("ADD", &[]),
            Box::new(|_| Ok(PodResponse::Ok { result: None })),
            5,
            "without the ADD result",
        ),
        (
            "DEL answered with status",
            env("DEL", &[]),
            Box::new(|_| {
                Ok(PodResponse::Status {
                    ready: true,
                    msg: String::new(),
                    code: 0,
                    stale: vec![],
                    cluster: None,
                })
            }),
            5,
            "a STATUS answer",
        ),
        (
            "ADD pod error",
            env("ADD", &[]),
            Box::new({
                let e = pod_error.clone();
                move |_| Ok(PodResponse::Error(e.clone()))
            }),
            101,
            "no free address",
        ),
    ];
    for (what, env, reply, code, needle) in cases {
        let fake = Fake {
            seen: RefCell::new(Vec::new()),
            reply,
        };
        let (exit, out) = fake.run(&env, &conf("1.1.0", json!({})));
        assert_eq!(exit, 1, "{what}");
        let err = json_out(&out);
        assert_eq!(err["code"], json!(code), "{what}: {out}");
        let text = format!(
            "{} {}",
            err["msg"].as_str().unwrap(),
            err["details"].as_str().unwrap()
        );
        assert!(text.contains(needle), "{what}: {out} lacks {needle:?}");
        assert_eq!(err["cniVersion"], json!("1.1.0"));
    }
    // ferryd's own error is printed as it sent it.
    let fake = Fake::answering(move |_| Ok(PodResponse::Error(pod_error.clone())));
    let (_, out) = fake.run(&env("ADD", &[]), &conf("0.3.0", json!({})));
    assert_eq!(
        json_out(&out),
        json!({"cniVersion": "0.3.0", "code": 101, "msg": "no free address in 10.88.0.0/16", "details": "254 in use"})
    );
}

#[test]
fn del_succeeds_whatever_add_refused() {
    // An ADD refused for its ipam, mtu, runtimeConfig or CNI_ARGS is
    // followed by a DEL with the same input: that DEL must reach ferryd.
    let bad = json!({
        "mtu": 1,
        "ipam": {"ranges": [[{"subnet": "fd00::/64"}]]},
        "runtimeConfig": {"ips": ["nonsense"]},
        "prevResult": {"ips": [{"address": "fd00::1/64"}]}
    });
    let bad_args = [("CNI_ARGS", "IP=fd00::1;garbage")];
    let fake = Fake::ok();
    let (code, out) = fake.run(&env("ADD", &bad_args), &conf("1.0.0", bad.clone()));
    assert_eq!(code, 1, "{out}");
    assert!(fake.seen.borrow().is_empty());

    let fake = Fake::ok();
    let (code, out) = fake.run(&env("DEL", &bad_args), &conf("1.0.0", bad));
    assert_eq!((code, out.as_str()), (0, ""));
    let req = fake.only_request();
    assert_eq!(req.command, Command::Del);
    assert_eq!(
        (req.container_id.as_str(), req.ifname.as_str()),
        ("c0ffee", "eth0")
    );
    assert!(req.ipam.requested.is_empty() && req.ipam.ranges.is_empty());
    assert_eq!(req.mtu, None);

    // DEL still refuses a config that is not ferry's.
    let fake = Fake::ok();
    let (code, out) = fake.run(&env("DEL", &[]), &conf("1.0.0", json!({"type": "bridge"})));
    assert_eq!(code, 1);
    assert_eq!(json_out(&out)["code"], json!(7));
}

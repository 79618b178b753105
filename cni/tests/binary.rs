//! The compiled `ferry` binary, invoked exactly as a runtime does: env
//! vars, config on stdin, JSON and exit code back.

use std::io::{BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_api::pod::{self, Interface, IpConfig, PodRequest, PodResponse, PodResult, RouteSpec};
use ferry_api::{wire, MacAddr};
use serde_json::{json, Value};

/// A socket path in the temp dir, removed when dropped.
struct TempSocket(PathBuf);

impl TempSocket {
    fn new(tag: &str) -> TempSocket {
        let p = std::env::temp_dir().join(format!("fcni-bin-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempSocket(p)
    }
}

impl Drop for TempSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn ferry(env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    (out.status.code().expect("exited"), json, stdout)
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn conf(version: &str, socket: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "cniVersion": version, "name": "ferry", "type": "ferry",
        "ferrydSocket": socket.to_str().unwrap(),
    }))
    .unwrap()
}

#[test]
fn missing_env_var_is_code_4() {
    let sock = TempSocket::new("env");
    let mut env = add_env();
    env.retain(|(k, _)| *k != "CNI_IFNAME");
    let (code, out, _) = ferry(&env, &conf("1.0.0", &sock.0));
    assert_eq!(code, 1);
    assert_eq!(out["code"], json!(4));
    assert_eq!(out["cniVersion"], json!("1.0.0"));
    assert!(
        out["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_IFNAME is not set"),
        "{out}"
    );
}

#[test]
fn bad_stdin_is_code_6() {
    let (code, out, _) = ferry(&add_env(), b"{\"cniVersion\": \"1.1.0\",");
    assert_eq!(code, 1);
    assert_eq!(out["code"], json!(6));
    assert_eq!(out["cniVersion"], json!("1.1.0"));
    assert!(
        out["msg"].as_str().unwrap().contains("not valid JSON"),
        "{out}"
    );
}

#[test]
fn unreachable_ferryd_is_code_11_and_status_50() {
    let sock = TempSocket::new("nobody");
    let (code, out, _) = ferry(&add_env(), &conf("0.4.0", &sock.0));
    assert_eq!(code, 1);
    assert_eq!(out["code"], json!(11));
    assert_eq!(out["cniVersion"], json!("0.4.0"));
    let msg = out["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("ferryd is not reachable at {}", sock.0.display())),
        "{msg}"
    );
    assert!(msg.contains("is ferryd running?"), "{msg}");

    let (code, out, _) = ferry(&[("CNI_COMMAND", "STATUS")], &conf("1.1.0", &sock.0));
    assert_eq!(code, 1);
    assert_eq!(out["code"], json!(50));
}

#[test]
fn version_needs_only_the_command() {
    let (code, out, _) = ferry(&[("CNI_COMMAND", "VERSION")], b"");
    assert_eq!(code, 0);
    assert_eq!(
        out,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn add_and_del_round_trip_over_the_socket() {
    let sock = TempSocket::new("rt");
    let listener = UnixListener::bind(&sock.0).unwrap();
    let result = PodResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: MacAddr::for_pod(Ipv4Addr::new(10, 88, 0, 5)),
            sandbox: Some("/proc/self/ns/net".into()),
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
    };
    // Serves two connections (ADD, then DEL), one request each.
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            let req: PodRequest = wire::read_message(&mut BufReader::new(&conn)).unwrap();
            let reply = match req.command {
                pod::Command::Add => PodResponse::Ok {
                    result: Some(result.clone()),
                },
                _ => PodResponse::Ok { result: None },
            };
            wire::write_message(&mut &conn, &reply).unwrap();
            seen.push(req);
        }
        seen
    });

    let (code, out, raw) = ferry(&add_env(), &conf("0.3.1", &sock.0));
    assert_eq!(code, 0, "{raw}");
    assert_eq!(out["cniVersion"], json!("0.3.1"));
    assert_eq!(
        out["ips"][0],
        json!({"version": "4", "interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"})
    );
    assert_eq!(out["interfaces"][0]["mac"], json!("0a:58:0a:58:00:05"));

    let del_env = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, _, raw) = ferry(&del_env, &conf("0.3.1", &sock.0));
    assert_eq!((code, raw.as_str()), (0, ""));

    let seen = server.join().unwrap();
    assert_eq!(seen[0].command, pod::Command::Add);
    assert_eq!(seen[0].netns.as_deref(), Some("/proc/self/ns/net"));
    assert_eq!(seen[1].command, pod::Command::Del);
    assert_eq!(seen[1].netns, None);
    assert_eq!(seen[1].container_id, "c0ffee");
}

#[test]
fn run_by_hand_without_a_command_does_not_wait_for_stdin() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferry");
    // Held open until ferry exits: a plugin that read stdin would block.
    let stdin = child.stdin.take();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry without CNI_COMMAND waited on stdin");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], json!(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CNI protocol versions supported: 0.3.0"));
}

//! Fuzzes the CNI network-config parser and the whole plugin logic on
//! arbitrary stdin: no input may panic, and whatever is printed is JSON.

#![no_main]

use ferry_api::pod::{Command, PodResponse};
use ferry_cni::{conf, run, Env};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = conf::peek_version(data);
    if let Ok(c) = conf::parse(data) {
        if let Some(prev) = &c.prev_result {
            let _ = conf::parse_prev_result(prev, c.cni_version);
        }
    }
    // The full invocation for the commands that touch nothing outside the
    // process; ferryd is a closure answering success.
    for command in ["DEL", "GC", "STATUS", "VERSION"] {
        let env = Env::from_pairs([
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "fuzz"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let (code, out) = run(&env, data, &|_, req| {
            Ok(match req.command {
                Command::Status => PodResponse::Status { ready: true, msg: String::new(), code: 0, stale: vec![], cluster: None },
                _ => PodResponse::Ok { result: None },
            })
        });
        if code == 0 {
            assert!(out.is_empty() || serde_json::from_str::<serde_json::Value>(&out).is_ok());
        } else {
            let v: serde_json::Value = serde_json::from_str(&out).expect("errors are JSON");
            assert!(v["code"].is_u64(), "{out}");
        }
    }
});

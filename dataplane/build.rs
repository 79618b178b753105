//! Compiles the XDP programs in `xdp-progs/` with clang into OUT_DIR:
//! `redirect` (pod veths and the host port) and `uplink` (the node's NIC,
//! classifying), both including the shared map structs of
//! `xdp-progs/ferry_maps.h`.
//!
//! Debian's clang targets BPF out of the box; headers come from
//! linux-libc-dev (`asm/types.h` under the multiarch include directory) and
//! libbpf-dev (`bpf/bpf_helpers.h`). Set `FERRY_CLANG` to use another clang.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["redirect", "uplink"];
/// Headers the programs include from `xdp-progs/`.
const HEADERS: &[&str] = &["ferry_maps.h"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src_dir = manifest.join("..").join("xdp-progs");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("FERRY_CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_string());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    println!("cargo:rerun-if-env-changed=FERRY_CLANG");
    for header in HEADERS {
        println!("cargo:rerun-if-changed={}", src_dir.join(header).display());
    }

    for prog in PROGRAMS {
        let src = src_dir.join(format!("{prog}.c"));
        let obj = out_dir.join(format!("{prog}.bpf.o"));
        println!("cargo:rerun-if-changed={}", src.display());
        let output = Command::new(&clang)
            .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-c"])
            .arg("-I")
            .arg(&multiarch)
            .arg("-I")
            .arg("/usr/include")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .output();
        match output {
            Err(e) => panic!(
                "cannot run `{clang}` to build the XDP program {}: {e}. \
                 Install clang (Debian: apt-get install clang llvm libbpf-dev linux-libc-dev) \
                 or point FERRY_CLANG at a clang that can target BPF.",
                src.display()
            ),
            Ok(o) if !o.status.success() => panic!(
                "`{clang}` failed to build the XDP program {} ({}):\n{}",
                src.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Ok(_) => {}
        }
    }
}

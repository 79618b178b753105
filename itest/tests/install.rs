//! `scripts/install.sh` into a temporary root: the standard layout, units
//! naming the installed paths, a second install that changes nothing, an
//! operator-edited config kept (and replaced only with --force).
//! Never touches the machine's /etc/cni, /opt/cni or systemd state.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use itest::{bin, unique_tag, TempDir};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh")
}

fn from_dir() -> PathBuf {
    bin("ferry").parent().unwrap().to_path_buf()
}

fn install(args: &[&str]) -> Output {
    let out = Command::new("bash")
        .arg(script())
        .arg("--from")
        .arg(from_dir())
        .args(args)
        .output()
        .expect("run install.sh");
    assert!(
        out.status.code().is_some(),
        "install.sh killed by a signal: {out:?}"
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every file under `dir` with its content and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.clone(),
                    (
                        fs::read(&p).unwrap(),
                        md.modified().unwrap(),
                        md.permissions().mode() & 0o7777,
                    ),
                );
            }
        }
    }
    out
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 == 0o111)
        .unwrap_or(false)
}

#[test]
fn install_into_a_root_gives_the_standard_layout_and_is_idempotent() {
    let tmp = TempDir::new(&unique_tag("inst"));
    let root = tmp.path.join("root");
    let r = root.to_str().unwrap();

    let first = install(&["--root", r]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));

    // The CNI plugin where runtimes look for it, the same bytes as built.
    let plugin = root.join("opt/cni/bin/ferry");
    assert!(is_executable(&plugin), "{}", plugin.display());
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(bin("ferry")).unwrap());
    for b in ["ferryd", "ferry-dataplane", "ferryctl"] {
        assert!(is_executable(&root.join("usr/local/bin").join(b)), "{b}");
    }

    // The conflist: valid JSON naming the ferry plugin.
    let conflist = root.join("etc/cni/net.d/10-ferry.conflist");
    let c: serde_json::Value =
        serde_json::from_slice(&fs::read(&conflist).unwrap()).expect("conflist is JSON");
    assert!(c["name"].is_string() && c["cniVersion"].is_string(), "{c}");
    let plugins = c["plugins"].as_array().expect("plugins list");
    assert!(plugins.iter().any(|p| p["type"] == "ferry"), "{c}");

    // The default config is one ferryd accepts, and is the defaults.
    let toml = root.join("etc/ferry/ferryd.toml");
    let printed = Command::new(bin("ferryd"))
        .arg("--config")
        .arg(&toml)
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", text(&printed));
    let defaults = Command::new(bin("ferryd"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert_eq!(printed.stdout, defaults.stdout);

    // Units for both daemons, naming the installed binaries and config.
    let units = root.join("etc/systemd/system");
    let dp = fs::read_to_string(units.join("ferry-dataplane.service")).unwrap();
    let fd = fs::read_to_string(units.join("ferryd.service")).unwrap();
    assert!(
        dp.contains("ExecStart=/usr/local/bin/ferry-dataplane "),
        "{dp}"
    );
    assert!(
        dp.contains("EnvironmentFile=-/etc/ferry/ferry-dataplane.env"),
        "{dp}"
    );
    assert!(
        fd.contains("ExecStart=/usr/local/bin/ferryd --config /etc/ferry/ferryd.toml"),
        "{fd}"
    );
    assert!(fd.contains("Wants=ferry-dataplane.service"), "{fd}");
    assert!(
        root.join("etc/ferry/ferry-dataplane.env").exists()
            && root.join("usr/local/share/doc/ferry/config.md").exists()
    );
    // Exactly the ten files of the layout, all below the root.
    let before = tree(&root);
    assert_eq!(before.len(), 10, "{:?}", before.keys());

    // A second install is harmless: exit 0, every file untouched.
    let second = install(&["--root", r]);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("0 installed, 0 updated, 10 unchanged, 0 kept"),
        "{}",
        text(&second)
    );
    assert_eq!(tree(&root), before, "second install changed files");

    // An operator edits the conflist and ferryd.toml: a reinstall keeps
    // both, says so, and still exits 0.
    let edited_conflist = fs::read_to_string(&conflist)
        .unwrap()
        .replace("\"info\"", "\"debug\"");
    fs::write(&conflist, &edited_conflist).unwrap();
    fs::write(&toml, "pod_cidrs = [\"10.77.0.0/24\"]\n").unwrap();
    let third = install(&["--root", r]);
    let t = text(&third);
    assert_eq!(third.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!("kept       {}", conflist.display())),
        "{t}"
    );
    assert!(t.contains(&format!("kept       {}", toml.display())), "{t}");
    assert!(t.contains("2 kept"), "{t}");
    assert_eq!(fs::read_to_string(&conflist).unwrap(), edited_conflist);
    assert_eq!(
        fs::read_to_string(&toml).unwrap(),
        "pod_cidrs = [\"10.77.0.0/24\"]\n"
    );

    // A kept config ferryd would refuse is reported.
    fs::write(&toml, "pod_cidrs = [\"nonsense\"]\n").unwrap();
    let bad = install(&["--root", r]);
    assert_eq!(bad.status.code(), Some(0), "{}", text(&bad));
    assert!(
        text(&bad).contains("WARNING") && text(&bad).contains("pod_cidrs"),
        "{}",
        text(&bad)
    );

    // --force puts the shipped files back and saves the edited ones.
    let forced = install(&["--root", r, "--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", text(&forced));
    assert_eq!(
        fs::read(&conflist).unwrap(),
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../cni/10-ferry.conflist")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/ferry/10-ferry.conflist.bak")).unwrap(),
        edited_conflist
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/ferry/ferryd.toml.bak")).unwrap(),
        "pod_cidrs = [\"nonsense\"]\n"
    );
}

#[test]
fn every_directory_can_be_moved() {
    let tmp = TempDir::new(&unique_tag("instdirs"));
    let root = tmp.path.join("r");
    let out = install(&[
        "--root",
        root.to_str().unwrap(),
        "--prefix",
        "/opt/ferry",
        "--cni-bin-dir",
        "/usr/libexec/cni",
        "--cni-conf-dir",
        "/etc/cni/custom.d",
        "--config-dir",
        "/etc/ferry-node",
        "--systemd-dir",
        "/usr/lib/systemd/system",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(is_executable(&root.join("usr/libexec/cni/ferry")));
    assert!(root.join("etc/cni/custom.d/10-ferry.conflist").exists());
    assert!(is_executable(&root.join("opt/ferry/bin/ferryd")));
    assert!(root.join("opt/ferry/share/doc/ferry/config.md").exists());
    let fd = fs::read_to_string(root.join("usr/lib/systemd/system/ferryd.service")).unwrap();
    assert!(
        fd.contains("ExecStart=/opt/ferry/bin/ferryd --config /etc/ferry-node/ferryd.toml"),
        "{fd}"
    );
    assert!(fd.contains("Documentation=file:///opt/ferry/share/doc/ferry/config.md"));
    let dp =
        fs::read_to_string(root.join("usr/lib/systemd/system/ferry-dataplane.service")).unwrap();
    assert!(
        dp.contains("ExecStart=/opt/ferry/bin/ferry-dataplane ")
            && dp.contains("EnvironmentFile=-/etc/ferry-node/ferry-dataplane.env"),
        "{dp}"
    );
    assert!(!fd.contains("/usr/local/") && !dp.contains("/usr/local/"));

    // --cni-only installs just the plugin and the conflist.
    let cni_root = tmp.path.join("cni");
    let out = install(&["--root", cni_root.to_str().unwrap(), "--cni-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let files = tree(&cni_root);
    let names: Vec<_> = files
        .keys()
        .map(|p| p.strip_prefix(&cni_root).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        names,
        [
            PathBuf::from("etc/cni/net.d/10-ferry.conflist"),
            PathBuf::from("opt/cni/bin/ferry")
        ],
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let tmp = TempDir::new(&unique_tag("instbad"));
    let root = tmp.path.join("r");
    let r = root.to_str().unwrap();
    for (args, want) in [
        (vec!["--root", r, "--bogus"], "unknown option '--bogus'"),
        (vec!["--root", r, "--prefix"], "--prefix needs a value"),
        (
            vec!["--root", r, "--cni-bin-dir", "relative/dir"],
            "must be an absolute path",
        ),
        (
            vec!["--root", r, "--from", "/nonexistent/ferry-bins"],
            "/nonexistent/ferry-bins/ferry not found",
        ),
    ] {
        // (--from given twice: the last one wins.)
        let out = install(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(want), "{args:?}: {}", text(&out));
    }
    assert!(!root.join("opt").exists(), "a failed install wrote files");
    let help = install(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help).contains("--cni-conf-dir"));
}

/// The units, installed with every directory in a scratch place (so their
/// paths exist), pass `systemd-analyze verify` (offline; needs no running
/// systemd and changes no state).
#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze not installed: skipping unit verification");
        return;
    }
    let tmp = TempDir::new(&unique_tag("instverify"));
    let t = tmp.path.display().to_string();
    let dirs = [
        ("--prefix", format!("{t}/usr")),
        ("--cni-bin-dir", format!("{t}/opt/cni/bin")),
        ("--cni-conf-dir", format!("{t}/etc/cni/net.d")),
        ("--config-dir", format!("{t}/etc/ferry")),
        ("--systemd-dir", format!("{t}/units")),
    ];
    let mut args: Vec<&str> = Vec::new();
    for (flag, dir) in &dirs {
        args.push(flag);
        args.push(dir);
    }
    let out = install(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("{t}/units/ferryd.service"))
        .arg(format!("{t}/units/ferry-dataplane.service"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
}

/// The Kubernetes init container's command, run as written with `/host`
/// and the image's paths mapped to a temporary root and the built binaries.
#[test]
fn the_daemonset_init_container_installs_the_cni_plugin() {
    let manifest = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/ferry.yaml"),
    )
    .unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- /opt/ferry/scripts/install.sh")
        .expect("init container runs install.sh");
    let indent = lines[start].len() - lines[start].trim_start().len();
    let argv: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.len() - l.trim_start().len() == indent && l.trim().starts_with("- "))
        .map(|l| l.trim().trim_start_matches("- "))
        .collect();
    assert!(argv.contains(&"--cni-only"), "{argv:?}");
    let tmp = TempDir::new(&unique_tag("instk8s"));
    let host = tmp.path.join("host");
    let from = from_dir();
    let mapped: Vec<String> = argv
        .iter()
        .map(|a| match *a {
            "/host" => host.display().to_string(),
            "/opt/ferry/bin" => from.display().to_string(),
            other => other.to_string(),
        })
        .collect();
    let out = Command::new("bash")
        .arg(script())
        .args(&mapped)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(is_executable(&host.join("opt/cni/bin/ferry")));
    assert!(host.join("etc/cni/net.d/10-ferry.conflist").exists());
    // The host paths the init container mounts are the ones it writes.
    for mount in [
        "mountPath: /host/opt/cni/bin",
        "mountPath: /host/etc/cni/net.d",
    ] {
        assert!(manifest.contains(mount), "{mount}");
    }
    for host_path in [
        "path: /opt/cni/bin",
        "path: /etc/cni/net.d",
        "path: /run/ferry",
        "path: /var/lib/ferry",
        "path: /sys/fs/bpf",
        "path: /run/netns",
        "path: /var/run/netns",
    ] {
        assert!(
            manifest.contains(host_path),
            "manifest lacks hostPath {host_path}"
        );
    }
    assert!(manifest.contains("hostNetwork: true"));
}

/// docs/config.md documents every ferryd field (as `--print-default-config`
/// lists them), every ferry-dataplane flag (as `--help` lists them) and the
/// conflist keys the plugin reads.
#[test]
fn the_config_reference_covers_every_field_and_flag() {
    let doc = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md"))
        .unwrap();
    let defaults = Command::new(bin("ferryd"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    let defaults = String::from_utf8(defaults.stdout).unwrap();
    // `mtu` has no fixed default (the uplink's less the overlay's, or
    // 1500), so it is not printed; docs/config.md still has its row.
    assert!(defaults.lines().count() >= 8, "{defaults}");
    assert!(
        doc.contains("| `mtu` |"),
        "docs/config.md lacks ferryd field mtu"
    );
    for line in defaults.lines() {
        let (field, value) = line.split_once(" = ").expect("key = value");
        assert!(
            doc.contains(&format!("| `{field}` |")),
            "docs/config.md lacks ferryd field {field}"
        );
        // The default shown is the code's (the gateway's is derived).
        let value = value.trim_matches('"');
        if field != "gateway" {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{field}` |")))
                .unwrap();
            assert!(
                row.contains(value),
                "default of {field} is {value}, docs say: {row}"
            );
        }
    }
    let help = Command::new(bin("ferry-dataplane"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', ']', '.']))
        .filter(|w| !["--help", "--version"].contains(w))
        .collect();
    assert!(flags.contains(&"--log-level"), "{help}");
    for flag in flags {
        assert!(
            doc.contains(&format!("`{flag}")),
            "docs/config.md lacks ferry-dataplane {flag}"
        );
    }
    for key in [
        "cniVersion",
        "name",
        "type",
        "ferrydSocket",
        "mtu",
        "ipam",
        "ipam.ranges",
        "ipam.routes",
        "dns",
        "runtimeConfig.ips",
        "cni.dev/valid-attachments",
        "prevResult",
        "logFile",
        "logLevel",
        "attachment",
        "runtimeConfig.io.kubernetes.cri.pod-annotations",
    ] {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/config.md lacks {key}"
        );
    }
}

#[test]
fn uninstall_removes_what_install_put_and_keeps_edited_configs() {
    let tmp = TempDir::new(&unique_tag("uninst"));
    let root = tmp.path.join("root");
    let r = root.to_str().unwrap();
    let out = install(&["--root", r]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // State of ferryd and an operator's edit must survive.
    let state = root.join("var/lib/ferry/ferry.redb");
    fs::create_dir_all(state.parent().unwrap()).unwrap();
    fs::write(&state, b"not ours to remove").unwrap();
    let toml = root.join("etc/ferry/ferryd.toml");
    fs::write(&toml, "mtu = 9000\n").unwrap();

    let out = install(&["--root", r, "--uninstall"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("9 removed, 1 kept"), "{t}");
    let left: Vec<PathBuf> = tree(&root).into_keys().collect();
    assert_eq!(left, [toml.clone(), state.clone()], "{t}");
    assert_eq!(fs::read_to_string(&toml).unwrap(), "mtu = 9000\n");

    // Again: nothing left to do, still exit 0; --force takes the edit too.
    let out = install(&["--root", r, "--uninstall"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = install(&["--root", r, "--uninstall", "--force"]);
    assert!(
        text(&out).contains("1 removed, 0 kept, 9 not present"),
        "{}",
        text(&out)
    );
    let left: Vec<PathBuf> = tree(&root).into_keys().collect();
    assert_eq!(left, [state]);
}

//! A real etcd server for the cluster tests: Debian's `etcd` (3.4,
//! installed by scripts/setup.sh) in a namespace of its own, cabled to the
//! fabric like a machine of the network (`ETCD_ADDR`), with a temporary
//! data directory. It can be killed and started again on the same data
//! (an outage), and serve TLS with certificates made by `openssl` for the
//! test (a CA, etcd's server certificate, a client certificate, and a CA
//! that signed none of them for the wrong-certificate case).
//!
//! Cleanup by name and pid on drop: the process, then its namespace (the
//! veth into the fabric goes with it), then the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::{Fabric, FABRIC};
use crate::{wait_until, ChildGuard, Netns, TempDir};

/// etcd's address on the fabric.
pub fn etcd_addr() -> String {
    format!("{FABRIC}.250")
}
pub const ETCD_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// What a client needs for TLS: the CA and its own identity.
#[derive(Clone, Debug)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A CA that signed nothing here (a wrong `ca_file`).
    pub other_ca: PathBuf,
}

pub struct EtcdServer {
    // Field order is drop order: the process, its namespace, its files.
    child: Option<ChildGuard>,
    pub ns: Netns,
    pub dir: TempDir,
    pub tls: Option<Tls>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>-key.pem`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", &format!("/CN=ferry test {name}"),
        "-keyout", &format!("{name}-key.pem"), "-out", &format!("{name}.pem"),
    ]);
}

/// A certificate `<name>.pem` (key `<name>-key.pem`) signed by `ca`, with
/// the subject alternative names `san` (`IP:1.2.3.4`) and the usage given.
fn make_cert(dir: &Path, ca: &str, name: &str, san: &str, usage: &str) {
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-subj", &format!("/CN={name}"), "-keyout", &format!("{name}-key.pem"),
        "-out", &format!("{name}.csr"),
    ]);
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={san}\nextendedKeyUsage={usage}\n"),
    )
    .expect("write extensions");
    #[rustfmt::skip]
    openssl(dir, &[
        "x509", "-req", "-in", &format!("{name}.csr"), "-CA", &format!("{ca}.pem"),
        "-CAkey", &format!("{ca}-key.pem"), "-CAcreateserial", "-days", "2",
        "-extfile", &ext, "-out", &format!("{name}.pem"),
    ]);
}

impl EtcdServer {
    /// etcd in `<tag>-etcd`, plugged into `fabric` at [`etcd_addr`],
    /// healthy before this returns; with `tls`, HTTPS with client
    /// certificates required.
    pub fn start(tag: &str, fabric: &Fabric, tls: bool) -> EtcdServer {
        let ns = Netns::new(&format!("{tag}-etcd"));
        fabric.plug("etcd", &ns.name, "eth0", &etcd_addr());
        let dir = TempDir::new(&format!("{tag}-etcd"));
        let tls = tls.then(|| {
            make_ca(&dir.path, "ca");
            make_ca(&dir.path, "other-ca");
            let ip = format!("IP:{},IP:127.0.0.1", etcd_addr());
            make_cert(&dir.path, "ca", "server", &ip, "serverAuth");
            make_cert(&dir.path, "ca", "client", "DNS:ferryd", "clientAuth");
            Tls {
                ca: dir.path.join("ca.pem"),
                cert: dir.path.join("client.pem"),
                key: dir.path.join("client-key.pem"),
                other_ca: dir.path.join("other-ca.pem"),
            }
        });
        let mut s = EtcdServer {
            child: None,
            ns,
            dir,
            tls,
        };
        s.resume();
        s
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URL nodes are given.
    pub fn url(&self) -> String {
        format!("{}://{}:{ETCD_PORT}", self.scheme(), etcd_addr())
    }

    /// `etcdctl` in etcd's namespace, with what TLS needs.
    pub fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns.name, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()))
            .arg("--command-timeout=5s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl (apt-get install etcd-client)")
    }

    /// `etcdctl` that must succeed; its stdout.
    pub fn etcdctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.etcdctl_ok(&["endpoint", "status", "--write-out=json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("endpoint status JSON");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("a revision")
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Kill etcd (SIGKILL, by pid): an outage. Its data stays.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            drop(c); // ChildGuard kills and reaps
        }
    }

    /// Start etcd on its data directory and wait until it is healthy.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let addr = etcd_addr();
        let scheme = self.scheme();
        let client = format!("{scheme}://{addr}:{ETCD_PORT},{scheme}://127.0.0.1:{ETCD_PORT}");
        let peer = format!("http://127.0.0.1:{PEER_PORT}");
        let data = self.dir.path.join("data");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("etcd.log"))
            .expect("etcd log");
        let mut cmd = Command::new("ip");
        #[rustfmt::skip]
        cmd.args(["netns", "exec", &self.ns.name, "etcd", "--name", "t"])
            .arg("--data-dir").arg(&data)
            .args([
                "--listen-client-urls", &client,
                "--advertise-client-urls", &format!("{scheme}://{addr}:{ETCD_PORT}"),
                "--listen-peer-urls", &peer,
                "--initial-advertise-peer-urls", &peer,
                "--initial-cluster", &format!("t={peer}"),
            ]);
        if let Some(t) = &self.tls {
            let d = &self.dir.path;
            cmd.arg(format!("--cert-file={}", d.join("server.pem").display()))
                .arg(format!("--key-file={}", d.join("server-key.pem").display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        self.child = Some(ChildGuard::new(child));
        let healthy = wait_until(Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"]).status.success()
        });
        assert!(
            healthy,
            "etcd did not become healthy in 20 s:\n{}",
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("etcd.log")).unwrap_or_default()
    }
}

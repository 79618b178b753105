//! The CNI environment: `CNI_COMMAND` and the attachment parameters, read
//! and validated as the spec (and libcni's skel) does. Every failure here is
//! code 4 and names the variable.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use crate::error::CniError;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// The process environment as the plugin sees it: a snapshot, so tests can
/// build one without touching the real environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, OsString>,
}

impl Env {
    pub fn from_process() -> Env {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
            .collect();
        Env { vars }
    }

    pub fn from_pairs<K, V, I>(pairs: I) -> Env
    where
        K: Into<String>,
        V: Into<OsString>,
        I: IntoIterator<Item = (K, V)>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value of `name`; unset and empty are both `None` (as in libcni).
    pub fn get(&self, name: &str) -> Result<Option<&str>, CniError> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(v) => match v.to_str() {
                Some("") => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(CniError::invalid_env(format!(
                    "environment variable {name} is not valid UTF-8: {v:?}"
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl CniCommand {
    pub const ALL: [CniCommand; 6] = [
        CniCommand::Add,
        CniCommand::Del,
        CniCommand::Check,
        CniCommand::Version,
        CniCommand::Status,
        CniCommand::Gc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }

    /// Reads `CNI_COMMAND` (code 4 when missing or unknown).
    pub fn from_env(env: &Env) -> Result<CniCommand, CniError> {
        let expected = "expected one of ADD, DEL, CHECK, VERSION, STATUS, GC";
        let value = env.get("CNI_COMMAND")?.ok_or_else(|| {
            CniError::invalid_env(format!(
                "required environment variable CNI_COMMAND is not set; {expected}"
            ))
        })?;
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == value)
            .ok_or_else(|| {
                CniError::invalid_env(format!(
                    "CNI_COMMAND={value:?} is not a CNI command; {expected}"
                ))
            })
    }

    /// The attachment variables this command cannot do without.
    fn required_vars(self) -> &'static [&'static str] {
        match self {
            CniCommand::Add | CniCommand::Check => {
                &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            }
            CniCommand::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            CniCommand::Version | CniCommand::Status | CniCommand::Gc => &[],
        }
    }

    /// Whether the command names one attachment (container id + ifname).
    fn is_per_attachment(self) -> bool {
        matches!(self, CniCommand::Add | CniCommand::Del | CniCommand::Check)
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validated CNI environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: CniCommand,
    /// Empty for VERSION, STATUS, GC.
    pub container_id: String,
    /// `None` when the runtime sent none (allowed for DEL, STATUS, GC).
    pub netns: Option<String>,
    /// Empty for VERSION, STATUS, GC.
    pub ifname: String,
    pub cni_path: Option<String>,
    /// CNI_ARGS as key/value pairs, unknown keys included.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads and validates every variable the command needs: missing ones
    /// are listed together; malformed values are named with what is expected.
    pub fn from_env(env: &Env) -> Result<Invocation, CniError> {
        let command = CniCommand::from_env(env)?;
        let missing: Vec<&str> = command
            .required_vars()
            .iter()
            .copied()
            .map(|name| env.get(name).map(|v| (name, v.is_none())))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter_map(|(name, missing)| missing.then_some(name))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::invalid_env(format!(
                "required environment variable{} {} not set for CNI_COMMAND={command}",
                if missing.len() == 1 { "" } else { "s" },
                if missing.len() == 1 {
                    format!("{} is", missing[0])
                } else {
                    format!("{} are", missing.join(", "))
                },
            )));
        }
        let mut inv = Invocation {
            command,
            container_id: String::new(),
            netns: env.get("CNI_NETNS")?.map(str::to_string),
            ifname: String::new(),
            cni_path: env.get("CNI_PATH")?.map(str::to_string),
            args: BTreeMap::new(),
        };
        if command.is_per_attachment() {
            let id = env.get("CNI_CONTAINERID")?.unwrap_or_default();
            validate_container_id(id)?;
            inv.container_id = id.to_string();
            let ifname = env.get("CNI_IFNAME")?.unwrap_or_default();
            validate_ifname(ifname)?;
            inv.ifname = ifname.to_string();
            let args = env
                .get("CNI_ARGS")
                .and_then(|raw| parse_cni_args(raw.unwrap_or_default()));
            inv.args = match args {
                Ok(args) => args,
                // DEL must be able to clean up after an ADD that was refused
                // for these very args; it does not need them.
                Err(_) if command == CniCommand::Del => BTreeMap::new(),
                Err(e) => return Err(e),
            };
        }
        Ok(inv)
    }

    /// ADD/CHECK: the netns path must exist (code 4 otherwise).
    pub fn check_netns_exists(&self) -> Result<(), CniError> {
        let Some(netns) = &self.netns else {
            return Err(CniError::invalid_env(format!(
                "required environment variable CNI_NETNS is not set for CNI_COMMAND={}",
                self.command
            )));
        };
        std::fs::metadata(Path::new(netns)).map(|_| ()).map_err(|e| {
            CniError::invalid_env(format!(
                "CNI_NETNS={netns:?} cannot be used: {e}; expected the path of the pod's network namespace \
                 (e.g. /var/run/netns/<name> or /proc/<pid>/ns/net)"
            ))
        })
    }

    /// Addresses asked for with `IP=a.b.c.d[,fd00::9]` in CNI_ARGS
    /// (host-local's convention, one per family for a dual-stack pod; a
    /// `/prefix` is accepted and ignored).
    pub fn requested_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        let Some(list) = self.args.get("IP") else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                parse_ip_maybe_cidr(item).map_err(|why| {
                    CniError::invalid_env(format!("CNI_ARGS IP={list:?}: {item:?} {why}"))
                })
            })
            .collect()
    }
}

/// Parses an address of either family, alone or with a `/len`, to the
/// address; the error says what is wrong with the text (to be prefixed by
/// where it came from).
pub fn parse_ip_maybe_cidr(s: &str) -> Result<IpAddr, String> {
    match s.split_once('/') {
        Some(_) => s.parse::<ipnet::IpNet>().map(|n| n.addr()).map_err(|_| {
            "is not an IP address or CIDR (expected e.g. 10.88.0.9, 10.88.0.9/24 or fd00::9/64)"
                .to_string()
        }),
        None => s
            .parse::<IpAddr>()
            .map_err(|_| "is not an IP address (expected e.g. 10.88.0.9 or fd00::9)".to_string()),
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.-]*$` (the spec's container id rule).
pub fn is_valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if is_valid_container_id(id) {
        Ok(())
    } else {
        Err(CniError::invalid_env(format!(
            "CNI_CONTAINERID={id:?} is not a valid container id: expected a letter or digit followed by \
             letters, digits, '_', '.' or '-'"
        )))
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > MAX_IFNAME_LEN {
        Some(format!(
            "is {} bytes long, longer than the {MAX_IFNAME_LEN} Linux allows",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is reserved".to_string())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::invalid_env(format!(
            "CNI_IFNAME={name:?} is not a valid interface name: it {why}; expected 1-{MAX_IFNAME_LEN} \
             characters without '/', ':' or whitespace"
        ))),
    }
}

/// `K=V;K=V` into a map. Empty items (a trailing ';') are skipped; an item
/// without '=' or with an empty key is code 4. Values may contain '='.
pub fn parse_cni_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for item in raw.split(';').filter(|s| !s.is_empty()) {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(CniError::invalid_env(format!(
                "CNI_ARGS item {item:?} is malformed: expected KEY=VALUE pairs separated by ';' \
                     (e.g. IgnoreUnknown=1;K8S_POD_NAME=web)"
            )))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (*k, *v)))
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn with(base: &[(&str, &str)], key: &str, value: Option<&str>) -> Env {
        let mut v: Vec<(&str, &str)> = base.iter().copied().filter(|(k, _)| *k != key).collect();
        if let Some(value) = value {
            v.push((key, value));
        }
        env(&v)
    }

    #[test]
    fn reads_a_complete_add_environment() {
        let inv = Invocation::from_env(&with(
            ADD,
            "CNI_ARGS",
            Some("IgnoreUnknown=1;K8S_POD_NAME=web;X=a=b;"),
        ))
        .unwrap();
        assert_eq!(inv.command, CniCommand::Add);
        assert_eq!(inv.container_id, "abc123");
        assert_eq!(inv.netns.as_deref(), Some("/proc/self/ns/net"));
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(
            inv.args.get("K8S_POD_NAME").map(String::as_str),
            Some("web")
        );
        assert_eq!(inv.args.get("X").map(String::as_str), Some("a=b"));
        assert_eq!(inv.args.len(), 3);
        inv.check_netns_exists().unwrap();
    }

    #[test]
    fn env_error_table() {
        let del: &[(&str, &str)] = &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        let cases: Vec<(&str, Env, &str)> = vec![
            ("no command", env(&[]), "CNI_COMMAND is not set"),
            (
                "unknown command",
                with(ADD, "CNI_COMMAND", Some("add")),
                "CNI_COMMAND=\"add\"",
            ),
            (
                "no container id",
                with(ADD, "CNI_CONTAINERID", None),
                "CNI_CONTAINERID is not set",
            ),
            (
                "empty netns on ADD",
                with(ADD, "CNI_NETNS", Some("")),
                "CNI_NETNS is not set",
            ),
            (
                "no ifname",
                with(ADD, "CNI_IFNAME", None),
                "CNI_IFNAME is not set",
            ),
            (
                "no path",
                with(ADD, "CNI_PATH", None),
                "CNI_PATH is not set",
            ),
            (
                "bad container id",
                with(ADD, "CNI_CONTAINERID", Some("-abc")),
                "not a valid container id",
            ),
            (
                "container id with slash",
                with(ADD, "CNI_CONTAINERID", Some("a/b")),
                "not a valid container id",
            ),
            (
                "long ifname",
                with(ADD, "CNI_IFNAME", Some("abcdefghijklmnop")),
                "longer than the 15",
            ),
            (
                "ifname with slash",
                with(ADD, "CNI_IFNAME", Some("eth/0")),
                "contains '/'",
            ),
            (
                "ifname with colon",
                with(ADD, "CNI_IFNAME", Some("eth:0")),
                "contains '/'",
            ),
            (
                "ifname with space",
                with(ADD, "CNI_IFNAME", Some("eth 0")),
                "whitespace",
            ),
            (
                "ifname dot",
                with(ADD, "CNI_IFNAME", Some("..")),
                "reserved",
            ),
            (
                "malformed CNI_ARGS",
                with(ADD, "CNI_ARGS", Some("K8S_POD_NAME=a;oops")),
                "\"oops\" is malformed",
            ),
            (
                "empty CNI_ARGS key",
                with(ADD, "CNI_ARGS", Some("=v")),
                "is malformed",
            ),
            (
                "DEL without ifname",
                with(del, "CNI_IFNAME", None),
                "CNI_IFNAME is not set for CNI_COMMAND=DEL",
            ),
        ];
        for (what, env, needle) in cases {
            let e = Invocation::from_env(&env).expect_err(what);
            assert_eq!(e.code, 4, "{what}: {e}");
            assert!(
                e.msg.contains(needle),
                "{what}: {:?} lacks {needle:?}",
                e.msg
            );
        }
        let e = Invocation::from_env(&env(&[("CNI_COMMAND", "CHECK")])).unwrap_err();
        assert!(
            e.msg
                .contains("CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH are not set"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_status_gc_need_little() {
        let del = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ]))
        .unwrap();
        assert_eq!(del.netns, None);
        for cmd in ["STATUS", "GC", "VERSION"] {
            let inv = Invocation::from_env(&env(&[("CNI_COMMAND", cmd)])).unwrap();
            assert_eq!(inv.command.as_str(), cmd);
            assert!(inv.container_id.is_empty());
        }
    }

    #[test]
    fn missing_netns_path_is_code_4() {
        let inv = Invocation::from_env(&with(
            ADD,
            "CNI_NETNS",
            Some("/var/run/netns/fcni-does-not-exist"),
        ))
        .unwrap();
        let e = inv.check_netns_exists().unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("fcni-does-not-exist"), "{}", e.msg);
    }

    #[test]
    fn requested_ips_from_cni_args() {
        let inv = Invocation::from_env(&with(
            ADD,
            "CNI_ARGS",
            Some("IgnoreUnknown=1;IP=10.88.0.9,10.88.0.10/24"),
        ))
        .unwrap();
        assert_eq!(
            inv.requested_ips().unwrap(),
            vec![Ipv4Addr::new(10, 88, 0, 9), Ipv4Addr::new(10, 88, 0, 10)]
        );
        // Dual stack, as host-local takes it: one address per family.
        let inv = Invocation::from_env(&with(ADD, "CNI_ARGS", Some("IP=10.88.0.9/24,fd00::9/64")))
            .unwrap();
        let want: Vec<IpAddr> = vec![[10, 88, 0, 9].into(), "fd00::9".parse().unwrap()];
        assert_eq!(inv.requested_ips().unwrap(), want);
        for (bad, needle) in [
            ("IP=10.88.0.300", "not an IP address"),
            ("IP=fd00::zz", "not an IP address"),
            ("IP=fd00::1/129", "not an IP address or CIDR"),
        ] {
            let inv = Invocation::from_env(&with(ADD, "CNI_ARGS", Some(bad))).unwrap();
            let e = inv.requested_ips().unwrap_err();
            assert_eq!(e.code, 4, "{bad}");
            assert!(e.msg.contains(needle), "{bad}: {}", e.msg);
        }
    }

    #[test]
    fn container_id_rule() {
        for ok in [
            "a",
            "0",
            "abc-DEF_1.2",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            assert!(is_valid_container_id(ok), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "é"] {
            assert!(!is_valid_container_id(bad), "{bad}");
        }
    }
}

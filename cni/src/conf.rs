//! The network configuration on stdin (one plugin conf as libcni passes it)
//! parsed into a [`NetConf`]. Not JSON is code 6; JSON that ferry cannot use
//! is code 7 naming the field, the value and what is expected; an
//! unsupported `cniVersion` is code 1. Unknown fields are ignored (runtimes
//! add their own).

use std::net::IpAddr;
use std::path::PathBuf;

use ferry_api::pod::{
    AttachmentKey, Interface, IpConfig, PodResult, RangeSpec, RouteSpec, DEFAULT_FERRYD_SOCKET,
};
use ferry_api::table::Attachment;
use ferry_api::MacAddr;
use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::env::parse_ip_maybe_cidr;
use crate::error::CniError;
use crate::version::CniVersion;

/// The plugin `type` ferry answers to.
pub const PLUGIN_TYPE: &str = "ferry";
/// The key libcni adds to the config of a GC call.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The runtimeConfig key containerd's CRI fills with the pod's annotations
/// (when the plugin declares the capability of that name).
pub const POD_ANNOTATIONS_KEY: &str = "io.kubernetes.cri.pod-annotations";
/// The pod annotation choosing the attachment of one pod.
pub const ATTACHMENT_ANNOTATION: &str = "ferry.dev/attachment";
/// Pod interface MTU bounds (IPv4 minimum .. largest IP datagram).
pub const MTU_RANGE: std::ops::RangeInclusive<u64> = 68..=65535;

#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    /// Network name (`name`), validated like libcni does.
    pub name: String,
    pub ferryd_socket: PathBuf,
    pub mtu: Option<u32>,
    pub ipam: IpamConf,
    /// `dns`, copied verbatim into the ADD result.
    pub dns: Option<Map<String, Value>>,
    /// `runtimeConfig.ips` (the `ips` capability), either family.
    pub runtime_ips: Vec<IpAddr>,
    /// How the pod interface is made: the `ferry.dev/attachment` pod
    /// annotation if the runtime passed one, else the network's
    /// `attachment`, else veth.
    pub attachment: Attachment,
    /// `cni.dev/valid-attachments` (GC). `None` when the key is absent;
    /// JSON `null` reads as an empty list (libcni's nil slice).
    pub valid_attachments: Option<Vec<AttachmentKey>>,
    /// `prevResult`, kept raw: only CHECK reads it (see [`parse_prev_result`]),
    /// so a result ferry cannot represent never makes DEL fail.
    pub prev_result: Option<Value>,
}

/// `ipam` of the config (type absent or "ferry"); both lists may be empty,
/// in which case ferryd uses its own pools and a default route per family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamConf {
    /// The ranges of every range set; each set is of one family and the
    /// sets of different families, so ferryd tells them apart by family.
    pub ranges: Vec<RangeSpec>,
    pub routes: Vec<RouteSpec>,
}

/// The asked `cniVersion` as written, if stdin is a JSON object carrying a
/// string there. Never fails: used to answer VERSION and to label errors.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

/// Decodes stdin and checks only `cniVersion` (6, 7 or 1), so the version
/// gates of the commands can be applied before the rest of the config is
/// judged (the order libcni's skel uses).
pub fn parse_version(stdin: &[u8]) -> Result<CniVersion, CniError> {
    let root = decode(stdin)?;
    version_of(&Obj::root(&root))
}

/// Parses and validates the whole network configuration.
pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    parse_scoped(stdin, Scope::Full)
}

/// What DEL reads: `cniVersion`, `name`, `type` and `ferrydSocket` only.
/// DEL names the attachment to release and must succeed even when the rest
/// of the config (ipam, mtu, runtimeConfig, prevResult) is something the
/// ADD already refused; those fields keep their defaults here.
pub fn parse_for_del(stdin: &[u8]) -> Result<NetConf, CniError> {
    parse_scoped(stdin, Scope::Identity)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Identity,
    Full,
}

fn parse_scoped(stdin: &[u8], scope: Scope) -> Result<NetConf, CniError> {
    let root = decode(stdin)?;
    let conf = Obj::root(&root);
    let cni_version = version_of(&conf)?;

    let name = conf.str_opt("name")?.ok_or_else(|| {
        CniError::invalid_config("required field `name` (the network name) is missing")
    })?;
    if !crate::env::is_valid_container_id(name) {
        return Err(CniError::invalid_config(format!(
            "field `name` = {name:?} is not a valid network name: expected a letter or digit followed by \
             letters, digits, '_', '.' or '-'"
        )));
    }
    match conf.str_opt("type")? {
        Some(PLUGIN_TYPE) => {}
        Some(other) => {
            return Err(CniError::invalid_config(format!(
                "field `type` = {other:?}: this is the {PLUGIN_TYPE:?} plugin, expected \"{PLUGIN_TYPE}\""
            )))
        }
        None => {
            return Err(CniError::invalid_config(format!(
                "required field `type` is missing; expected \"{PLUGIN_TYPE}\""
            )))
        }
    }

    let ferryd_socket = match conf.str_opt("ferrydSocket")? {
        None => PathBuf::from(DEFAULT_FERRYD_SOCKET),
        Some(s) if s.contains('\0') => {
            return Err(CniError::invalid_config(format!(
                "field `ferrydSocket` = {s:?} contains a NUL byte; expected a filesystem path"
            )))
        }
        Some(s) => PathBuf::from(s),
    };
    if scope == Scope::Identity {
        return Ok(NetConf {
            cni_version,
            name: name.to_string(),
            ferryd_socket,
            mtu: None,
            ipam: IpamConf::default(),
            dns: None,
            runtime_ips: Vec::new(),
            attachment: Attachment::default(),
            valid_attachments: None,
            prev_result: None,
        });
    }

    let mtu = match conf.get("mtu") {
        None => None,
        Some(v) => match v.as_u64().filter(|m| MTU_RANGE.contains(m)) {
            // The filter bounds m to 65535, which fits u32.
            Some(m) => Some(m as u32),
            None => {
                return Err(CniError::invalid_config(format!(
                    "field `mtu` = {v}: expected an integer from {} to {}",
                    MTU_RANGE.start(),
                    MTU_RANGE.end()
                )))
            }
        },
    };

    let ipam = match conf.obj_opt("ipam")? {
        None => IpamConf::default(),
        Some(ipam) => parse_ipam(&ipam)?,
    };

    let dns = conf.obj_opt("dns")?.map(|o| o.map.clone());

    let runtime_config = conf.obj_opt("runtimeConfig")?;
    let runtime_ips = match &runtime_config {
        None => Vec::new(),
        Some(rc) => parse_runtime_ips(rc)?,
    };

    let mut attachment = match conf.str_opt("attachment")? {
        None => Attachment::default(),
        Some(v) => parse_attachment(v, "attachment")?,
    };
    if let Some(annotations) = runtime_config
        .as_ref()
        .map(|rc| rc.obj_opt(POD_ANNOTATIONS_KEY))
        .transpose()?
        .flatten()
    {
        if let Some(v) = annotations.str_opt(ATTACHMENT_ANNOTATION)? {
            attachment = parse_attachment(v, &annotations.field(ATTACHMENT_ANNOTATION))?;
        }
    }

    let valid_attachments = match conf.map.get(VALID_ATTACHMENTS_KEY) {
        None => None,
        Some(Value::Null) => Some(Vec::new()),
        Some(_) => Some(parse_valid_attachments(&conf)?),
    };

    let prev_result = conf.get("prevResult").cloned();

    Ok(NetConf {
        cni_version,
        name: name.to_string(),
        ferryd_socket,
        mtu,
        ipam,
        dns,
        runtime_ips,
        attachment,
        valid_attachments,
        prev_result,
    })
}

fn parse_attachment(value: &str, field: &str) -> Result<Attachment, CniError> {
    Attachment::from_name(value).ok_or_else(|| {
        CniError::invalid_config(format!(
            "field `{field}` = {value:?}: expected \"veth\" (the default) or \"tap\""
        ))
    })
}

fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::decode(
            "stdin is empty: expected the network configuration as a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::decode("the network configuration on stdin is not valid JSON")
            .with_details(e.to_string())
    })?;
    match v {
        Value::Object(map) => Ok(map),
        other => Err(CniError::decode(format!(
            "the network configuration on stdin must be a JSON object, got {}",
            kind(&other)
        ))),
    }
}

fn version_of(conf: &Obj<'_>) -> Result<CniVersion, CniError> {
    let v = conf.str_opt("cniVersion")?.ok_or_else(|| {
        CniError::invalid_config(format!(
            "required field `cniVersion` is missing; expected one of {}",
            CniVersion::supported_list()
        ))
    })?;
    CniVersion::parse(v)
}

fn parse_ipam(ipam: &Obj<'_>) -> Result<IpamConf, CniError> {
    match ipam.str_opt("type")? {
        None | Some(PLUGIN_TYPE) => {}
        Some(other) => {
            return Err(CniError::invalid_config(format!(
                "field `ipam.type` = {other:?}: ferry does its own IPAM; omit `ipam.type` or set it to \
                 \"{PLUGIN_TYPE}\""
            )))
        }
    }
    for legacy in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
        if ipam.get(legacy).is_some() {
            return Err(CniError::invalid_config(format!(
                "field `ipam.{legacy}` is not supported: put it in a range of `ipam.ranges` \
                 (e.g. \"ranges\": [[{{\"subnet\": \"10.88.0.0/16\"}}]])"
            )));
        }
    }
    let mut out = IpamConf::default();
    if let Some(sets) = ipam.arr_opt("ranges")? {
        if sets.len() > 2 {
            return Err(CniError::invalid_config(format!(
                "field `ipam.ranges` has {} range sets: ferry gives a pod one address per family, so it takes \
                 at most two, an IPv4 one and an IPv6 one (\"ranges\": [[{{IPv4...}}], [{{IPv6...}}]])",
                sets.len()
            )));
        }
        let mut families: Vec<bool> = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let path = format!("ipam.ranges[{i}]");
            let Value::Array(ranges) = set else {
                return Err(CniError::invalid_config(format!(
                    "field `{path}` must be an array of ranges (a range set), got {}",
                    kind(set)
                )));
            };
            if ranges.is_empty() {
                return Err(CniError::invalid_config(format!(
                    "field `{path}` is an empty range set; give at least one {{\"subnet\": ...}}"
                )));
            }
            let first = out.ranges.len();
            for (j, range) in ranges.iter().enumerate() {
                let range = Obj::at(range, format!("{path}[{j}]"))?;
                out.ranges.push(parse_range(&range)?);
            }
            let v4 = out.ranges[first].subnet.addr().is_ipv4();
            if let Some(other) = out.ranges[first..]
                .iter()
                .find(|r| r.subnet.addr().is_ipv4() != v4)
            {
                return Err(CniError::invalid_config(format!(
                    "field `{path}` mixes families ({} and {}): a range set is of one family; put the IPv6 \
                     ranges in a range set of their own",
                    out.ranges[first].subnet, other.subnet
                )));
            }
            if families.contains(&v4) {
                return Err(CniError::invalid_config(format!(
                    "field `{path}` is a second IPv{} range set: ferry gives a pod one address per family \
                     (put several ranges in one set)",
                    if v4 { 4 } else { 6 }
                )));
            }
            families.push(v4);
        }
    }
    if let Some(routes) = ipam.arr_opt("routes")? {
        for (i, route) in routes.iter().enumerate() {
            let route = Obj::at(route, format!("ipam.routes[{i}]"))?;
            out.routes.push(parse_route(&route)?);
        }
    }
    Ok(out)
}

fn parse_range(range: &Obj<'_>) -> Result<RangeSpec, CniError> {
    let subnet_text = range.str_opt("subnet")?.ok_or_else(|| {
        CniError::invalid_config(format!("field `{}` is missing", range.field("subnet")))
    })?;
    let subnet = parse_net(subnet_text, &range.field("subnet"))?;
    if subnet.addr() != subnet.network() {
        return Err(CniError::invalid_config(format!(
            "field `{}` = {subnet_text:?} has host bits set; did you mean \"{}\"?",
            range.field("subnet"),
            subnet.trunc()
        )));
    }
    let max = subnet.max_prefix_len() - 2;
    if subnet.prefix_len() > max {
        return Err(CniError::invalid_config(format!(
            "field `{}` = {subnet_text:?} is too small to allocate pod addresses from; expected a prefix of \
             /{max} or shorter",
            range.field("subnet")
        )));
    }
    let inside = |key: &str| -> Result<Option<IpAddr>, CniError> {
        let Some(text) = range.str_opt(key)? else {
            return Ok(None);
        };
        let ip = parse_addr(text, &range.field(key))?;
        if !subnet.contains(&ip) {
            return Err(CniError::invalid_config(format!(
                "field `{}` = {text:?} is outside the range's subnet {subnet}",
                range.field(key)
            )));
        }
        Ok(Some(ip))
    };
    let range_start = inside("rangeStart")?;
    let range_end = inside("rangeEnd")?;
    let gateway = inside("gateway")?;
    if let (Some(start), Some(end)) = (range_start, range_end) {
        if start > end {
            return Err(CniError::invalid_config(format!(
                "field `{}` = {start} is after `{}` = {end}; expected rangeStart <= rangeEnd",
                range.field("rangeStart"),
                range.field("rangeEnd")
            )));
        }
    }
    Ok(RangeSpec {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

fn parse_route(route: &Obj<'_>) -> Result<RouteSpec, CniError> {
    let dst_text = route.str_opt("dst")?.ok_or_else(|| {
        CniError::invalid_config(format!("field `{}` is missing", route.field("dst")))
    })?;
    // Like Go's ParseCIDR, a destination with host bits means its network.
    let dst = parse_net(dst_text, &route.field("dst"))?.trunc();
    let gw = match route.str_opt("gw")? {
        None => None,
        Some(text) => Some(parse_addr(text, &route.field("gw"))?),
    };
    if let Some(gw) = gw.filter(|gw| gw.is_ipv4() != dst.addr().is_ipv4()) {
        return Err(CniError::invalid_config(format!(
            "field `{}` = \"{gw}\" is not of the family of `{}` = {dst_text:?}",
            route.field("gw"),
            route.field("dst")
        )));
    }
    Ok(RouteSpec { dst, gw })
}

fn parse_runtime_ips(rc: &Obj<'_>) -> Result<Vec<IpAddr>, CniError> {
    let Some(ips) = rc.arr_opt("ips")? else {
        return Ok(Vec::new());
    };
    ips.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("runtimeConfig.ips[{i}]");
            let text = v.as_str().ok_or_else(|| {
                CniError::invalid_config(format!(
                    "field `{field}` must be a string such as \"10.88.0.9/24\", got {}",
                    kind(v)
                ))
            })?;
            parse_ip_maybe_cidr(text).map_err(|why| {
                CniError::invalid_config(format!("field `{field}` = {text:?} {why}"))
            })
        })
        .collect()
}

fn parse_valid_attachments(conf: &Obj<'_>) -> Result<Vec<AttachmentKey>, CniError> {
    let list = conf.arr_opt(VALID_ATTACHMENTS_KEY)?.unwrap_or(&EMPTY);
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let a = Obj::at(v, format!("{VALID_ATTACHMENTS_KEY}[{i}]"))?;
            let container_id = a.str_opt("containerID")?.ok_or_else(|| {
                CniError::invalid_config(format!("field `{}` is missing", a.field("containerID")))
            })?;
            let ifname = a.str_opt("ifname")?.ok_or_else(|| {
                CniError::invalid_config(format!("field `{}` is missing", a.field("ifname")))
            })?;
            Ok(AttachmentKey {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            })
        })
        .collect()
}

static EMPTY: Vec<Value> = Vec::new();

/// Reads `prevResult` (as the runtime converted it to the config's
/// cniVersion) into the version-neutral result CHECK compares with. For
/// 0.3.x/0.4.0 each `ips[]` may carry `version`, which must be the family
/// of its address ("4" or "6").
pub fn parse_prev_result(prev: &Value, version: CniVersion) -> Result<PodResult, CniError> {
    let prev = Obj::at(prev, "prevResult".to_string())?;
    let mut interfaces = Vec::new();
    for (i, v) in prev
        .arr_opt("interfaces")?
        .unwrap_or(&EMPTY)
        .iter()
        .enumerate()
    {
        let itf = Obj::at(v, format!("prevResult.interfaces[{i}]"))?;
        let name = itf.str_opt("name")?.ok_or_else(|| {
            CniError::invalid_config(format!("field `{}` is missing", itf.field("name")))
        })?;
        let mac_text = itf.str_opt("mac")?.ok_or_else(|| {
            CniError::invalid_config(format!("field `{}` is missing", itf.field("mac")))
        })?;
        let mac: MacAddr = mac_text.parse().map_err(|e| {
            CniError::invalid_config(format!("field `{}` = {mac_text:?}: {e}", itf.field("mac")))
        })?;
        let sandbox = itf
            .str_opt("sandbox")?
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        interfaces.push(Interface {
            name: name.to_string(),
            mac,
            sandbox,
        });
    }
    let mut ips = Vec::new();
    for (i, v) in prev.arr_opt("ips")?.unwrap_or(&EMPTY).iter().enumerate() {
        let ip = Obj::at(v, format!("prevResult.ips[{i}]"))?;
        let addr_text = ip.str_opt("address")?.ok_or_else(|| {
            CniError::invalid_config(format!("field `{}` is missing", ip.field("address")))
        })?;
        let address = addr_text.parse::<IpNet>().map_err(|_| {
            CniError::invalid_config(format!(
                "field `{}` = {addr_text:?} is not an address with prefix (e.g. \"10.88.0.5/16\" or \
                 \"fd00::5/64\")",
                ip.field("address")
            ))
        })?;
        // 0.3.x/0.4.0 results carry `version`; when absent (or in 1.x) the
        // family is the address's.
        let family = if address.addr().is_ipv4() { "4" } else { "6" };
        if let Some(v) = ip.str_opt("version")?.filter(|v| *v != family) {
            return Err(CniError::invalid_config(format!(
                "field `{}` = {v:?} (cniVersion {version}) does not match the IPv{family} address {addr_text:?}; \
                 expected \"{family}\"",
                ip.field("version")
            )));
        }
        let gateway = match ip.str_opt("gateway")? {
            None => None,
            Some(text) => Some(parse_addr(text, &ip.field("gateway"))?),
        };
        let interface = match ip.get("interface") {
            // Without an index the address belongs to the pod's interface:
            // the first one in a sandbox (ferry reports only that one).
            None => interfaces
                .iter()
                .position(|i| i.sandbox.is_some())
                .unwrap_or(0),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    return Err(CniError::invalid_config(format!(
                        "field `{}` = {v}: expected an index into prevResult.interfaces",
                        ip.field("interface")
                    )))
                }
            },
        };
        if interface >= interfaces.len() {
            return Err(CniError::invalid_config(format!(
                "field `{}` = {interface} does not name one of the {} interface(s) of prevResult",
                ip.field("interface"),
                interfaces.len()
            )));
        }
        ips.push(IpConfig {
            address,
            gateway,
            interface,
        });
    }
    let mut routes = Vec::new();
    for (i, v) in prev.arr_opt("routes")?.unwrap_or(&EMPTY).iter().enumerate() {
        let route = Obj::at(v, format!("prevResult.routes[{i}]"))?;
        routes.push(parse_route(&route)?);
    }
    Ok(PodResult {
        interfaces,
        ips,
        routes,
    })
}

/// A CIDR of either family; the error names `field`.
fn parse_net(text: &str, field: &str) -> Result<IpNet, CniError> {
    text.parse::<IpNet>().map_err(|_| {
        CniError::invalid_config(format!(
            "field `{field}` = {text:?} is not a CIDR; expected e.g. \"10.88.0.0/16\" or \"fd00::/64\""
        ))
    })
}

/// An address of either family; the error names `field`.
fn parse_addr(text: &str, field: &str) -> Result<IpAddr, CniError> {
    text.parse::<IpAddr>().map_err(|_| {
        CniError::invalid_config(format!(
            "field `{field}` = {text:?} is not an IP address; expected e.g. \"10.88.0.1\" or \"fd00::1\""
        ))
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON object and where it sits in the config, so every error can name
/// the full field path (`ipam.ranges[0][1].subnet`). JSON `null` reads as
/// absent, as in Go's decoder.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    fn root(map: &'a Map<String, Value>) -> Obj<'a> {
        Obj {
            map,
            path: String::new(),
        }
    }

    fn at(v: &'a Value, path: String) -> Result<Obj<'a>, CniError> {
        match v {
            Value::Object(map) => Ok(Obj { map, path }),
            other => Err(CniError::invalid_config(format!(
                "field `{path}` must be an object, got {}",
                kind(other)
            ))),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(CniError::invalid_config(format!(
                "field `{}` must be a string, got {}",
                self.field(key),
                kind(other)
            ))),
        }
    }

    fn obj_opt(&self, key: &str) -> Result<Option<Obj<'a>>, CniError> {
        self.get(key)
            .map(|v| Obj::at(v, self.field(key)))
            .transpose()
    }

    fn arr_opt(&self, key: &str) -> Result<Option<&'a Vec<Value>>, CniError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(CniError::invalid_config(format!(
                "field `{}` must be an array, got {}",
                self.field(key),
                kind(other)
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use serde_json::json;

    use super::*;

    fn conf(extra: Value) -> Vec<u8> {
        let mut base = json!({"cniVersion": "1.1.0", "name": "ferry", "type": "ferry"});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        serde_json::to_vec(&base).unwrap()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(&conf(json!({}))).unwrap();
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.name, "ferry");
        assert_eq!(c.ferryd_socket, PathBuf::from(DEFAULT_FERRYD_SOCKET));
        assert_eq!(c.mtu, None);
        assert_eq!(c.ipam, IpamConf::default());
        assert_eq!(c.dns, None);
        assert!(c.runtime_ips.is_empty());
        assert_eq!(c.valid_attachments, None);
        assert_eq!(c.prev_result, None);
    }

    #[test]
    fn attachment_comes_from_the_network_and_the_pod_annotation() {
        let cases = [
            (json!({}), Attachment::Veth),
            (json!({"attachment": "veth"}), Attachment::Veth),
            (json!({"attachment": "tap"}), Attachment::Tap),
            (
                json!({"runtimeConfig": {POD_ANNOTATIONS_KEY: {ATTACHMENT_ANNOTATION: "tap"}}}),
                Attachment::Tap,
            ),
            // The pod annotation overrides the network default, both ways.
            (
                json!({"attachment": "tap", "runtimeConfig": {POD_ANNOTATIONS_KEY: {ATTACHMENT_ANNOTATION: "veth"}}}),
                Attachment::Veth,
            ),
            // Other annotations (and none) leave the network's choice.
            (
                json!({"attachment": "tap", "runtimeConfig": {POD_ANNOTATIONS_KEY: {"other/key": "x"}}}),
                Attachment::Tap,
            ),
            (
                json!({"attachment": "tap", "runtimeConfig": {POD_ANNOTATIONS_KEY: null}}),
                Attachment::Tap,
            ),
        ];
        for (extra, want) in cases {
            let c = parse(&conf(extra.clone())).unwrap_or_else(|e| panic!("{extra}: {e:?}"));
            assert_eq!(c.attachment, want, "{extra}");
        }
    }

    #[test]
    fn bad_attachments_are_invalid_config() {
        let cases = [
            (
                json!({"attachment": "macvlan"}),
                "`attachment` = \"macvlan\"",
            ),
            (json!({"attachment": "TAP"}), "`attachment` = \"TAP\""),
            (json!({"attachment": 1}), "`attachment` must be a string"),
            (
                json!({"runtimeConfig": {POD_ANNOTATIONS_KEY: {ATTACHMENT_ANNOTATION: "vhost"}}}),
                "ferry.dev/attachment` = \"vhost\"",
            ),
            (
                json!({"runtimeConfig": {POD_ANNOTATIONS_KEY: {ATTACHMENT_ANNOTATION: true}}}),
                "ferry.dev/attachment` must be a string",
            ),
            (
                json!({"runtimeConfig": {POD_ANNOTATIONS_KEY: "tap"}}),
                "must be an object",
            ),
        ];
        for (extra, msg) in cases {
            let e = parse(&conf(extra.clone())).expect_err(&extra.to_string());
            assert_eq!(e.code, 7, "{extra}: {e:?}");
            assert!(e.msg.contains(msg), "{extra}: {}", e.msg);
        }
        // DEL does not judge the attachment (it releases whatever ADD made).
        let del = parse_for_del(&conf(json!({"attachment": "bogus"}))).unwrap();
        assert_eq!(del.attachment, Attachment::Veth);
    }

    #[test]
    fn full_config() {
        let c = parse(&conf(json!({
            "ferrydSocket": "/tmp/fcni.sock",
            "mtu": 1450,
            "unknownTopLevel": {"whatever": true},
            "ipam": {
                "type": "ferry",
                "ranges": [[
                    {"subnet": "10.88.0.0/24", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.200", "gateway": "10.88.0.1"},
                    {"subnet": "10.89.0.0/16"}
                ]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.1.7/24", "gw": "10.88.0.254"}]
            },
            "dns": {"nameservers": ["10.96.0.10"], "options": ["ndots:5"]},
            "runtimeConfig": {"ips": ["10.88.0.9/24", "10.88.0.11"], "portMappings": [{"hostPort": 80}]},
            "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
            "prevResult": {"cniVersion": "1.1.0"}
        })))
        .unwrap();
        assert_eq!(c.ferryd_socket, PathBuf::from("/tmp/fcni.sock"));
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(
            c.ipam.ranges,
            vec![
                RangeSpec {
                    subnet: "10.88.0.0/24".parse().unwrap(),
                    range_start: Some(Ipv4Addr::new(10, 88, 0, 10).into()),
                    range_end: Some(Ipv4Addr::new(10, 88, 0, 200).into()),
                    gateway: Some(Ipv4Addr::new(10, 88, 0, 1).into()),
                },
                RangeSpec {
                    subnet: "10.89.0.0/16".parse().unwrap(),
                    range_start: None,
                    range_end: None,
                    gateway: None
                },
            ]
        );
        assert_eq!(
            c.ipam.routes,
            vec![
                RouteSpec {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: None
                },
                RouteSpec {
                    dst: "192.168.1.0/24".parse().unwrap(),
                    gw: Some(Ipv4Addr::new(10, 88, 0, 254).into())
                },
            ]
        );
        assert_eq!(c.dns.unwrap()["options"], json!(["ndots:5"]));
        assert_eq!(
            c.runtime_ips,
            vec![IpAddr::from([10, 88, 0, 9]), IpAddr::from([10, 88, 0, 11])]
        );
        assert_eq!(
            c.valid_attachments,
            Some(vec![AttachmentKey {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
        assert!(c.prev_result.is_some());
        let null = parse(&conf(
            json!({"cni.dev/valid-attachments": null, "mtu": null}),
        ))
        .unwrap();
        assert_eq!(null.valid_attachments, Some(vec![]));
        assert_eq!(null.mtu, None);
    }

    #[test]
    fn error_table() {
        let raw: Vec<(&str, Vec<u8>, u32, &str)> = vec![
            ("empty", b"".to_vec(), 6, "stdin is empty"),
            ("not json", b"{cniVersion".to_vec(), 6, "not valid JSON"),
            (
                "array",
                b"[1]".to_vec(),
                6,
                "must be a JSON object, got an array",
            ),
            (
                "deep nesting",
                "[".repeat(10_000).into_bytes(),
                6,
                "not valid JSON",
            ),
            (
                "no version",
                br#"{"name":"n","type":"ferry"}"#.to_vec(),
                7,
                "`cniVersion` is missing",
            ),
            (
                "bad version",
                br#"{"cniVersion":"0.2.0","name":"n","type":"ferry"}"#.to_vec(),
                1,
                "\"0.2.0\" is not supported",
            ),
            (
                "numeric version",
                br#"{"cniVersion":1,"name":"n","type":"ferry"}"#.to_vec(),
                7,
                "`cniVersion` must be a string",
            ),
            (
                "no name",
                br#"{"cniVersion":"1.0.0","type":"ferry"}"#.to_vec(),
                7,
                "`name`",
            ),
        ];
        let fields: Vec<(&str, Value, u32, &str)> = vec![
            ("empty name", json!({"name": ""}), 7, "`name`"),
            (
                "bad name",
                json!({"name": "a b"}),
                7,
                "not a valid network name",
            ),
            (
                "wrong type",
                json!({"type": "bridge"}),
                7,
                "field `type` = \"bridge\"",
            ),
            ("no type", json!({"type": null}), 7, "`type` is missing"),
            ("mtu too small", json!({"mtu": 67}), 7, "`mtu` = 67"),
            ("mtu too big", json!({"mtu": 65536}), 7, "`mtu` = 65536"),
            ("mtu string", json!({"mtu": "1500"}), 7, "`mtu` = \"1500\""),
            ("mtu float", json!({"mtu": 1500.5}), 7, "`mtu` = 1500.5"),
            (
                "socket type",
                json!({"ferrydSocket": 3}),
                7,
                "`ferrydSocket` must be a string",
            ),
            (
                "ipam not object",
                json!({"ipam": "ferry"}),
                7,
                "`ipam` must be an object",
            ),
            (
                "ipam type",
                json!({"ipam": {"type": "host-local"}}),
                7,
                "`ipam.type` = \"host-local\"",
            ),
            (
                "legacy subnet",
                json!({"ipam": {"subnet": "10.0.0.0/24"}}),
                7,
                "`ipam.subnet` is not supported",
            ),
            (
                "ranges not array",
                json!({"ipam": {"ranges": {}}}),
                7,
                "`ipam.ranges` must be an array",
            ),
            (
                "range set not array",
                json!({"ipam": {"ranges": [{}]}}),
                7,
                "`ipam.ranges[0]` must be an array",
            ),
            (
                "empty range set",
                json!({"ipam": {"ranges": [[]]}}),
                7,
                "empty range set",
            ),
            (
                "two IPv4 range sets",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]]}}),
                7,
                "second IPv4 range set",
            ),
            (
                "two IPv6 range sets",
                json!({"ipam": {"ranges": [[{"subnet": "fd00::/64"}], [{"subnet": "fd01::/64"}]]}}),
                7,
                "second IPv6 range set",
            ),
            (
                "three range sets",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}], [{"subnet": "fd01::/64"}]]}}),
                7,
                "at most two",
            ),
            (
                "no subnet",
                json!({"ipam": {"ranges": [[{"gateway": "10.0.0.1"}]]}}),
                7,
                "`ipam.ranges[0][0].subnet` is missing",
            ),
            (
                "mixed families in one range set",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}}),
                7,
                "mixes families",
            ),
            (
                "bad subnet",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/33"}]]}}),
                7,
                "not a CIDR",
            ),
            (
                "host bits",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.5/24"}]]}}),
                7,
                "did you mean \"10.0.0.0/24\"",
            ),
            (
                "tiny subnet",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/31"}]]}}),
                7,
                "too small",
            ),
            (
                "start outside",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.5"}]]}}),
                7,
                "`ipam.ranges[0][0].rangeStart` = \"10.0.1.5\" is outside",
            ),
            (
                "end outside",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.5"}]]}}),
                7,
                "rangeEnd` = \"10.0.1.5\" is outside",
            ),
            (
                "gateway outside",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.9.0.1"}]]}}),
                7,
                "gateway` = \"10.9.0.1\" is outside",
            ),
            (
                "start after end",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}]]}}),
                7,
                "rangeStart <= rangeEnd",
            ),
            (
                "ipv6 gateway of an ipv4 range",
                json!({"ipam": {"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "fd00::1"}]]}}),
                7,
                "outside the range's subnet",
            ),
            (
                "route no dst",
                json!({"ipam": {"routes": [{"gw": "10.0.0.1"}]}}),
                7,
                "`ipam.routes[0].dst` is missing",
            ),
            (
                "route with a gateway of the other family",
                json!({"ipam": {"routes": [{"dst": "::/0", "gw": "10.0.0.1"}]}}),
                7,
                "is not of the family",
            ),
            (
                "route bad gw",
                json!({"ipam": {"routes": [{"dst": "0.0.0.0/0", "gw": "x"}]}}),
                7,
                "`ipam.routes[0].gw` = \"x\"",
            ),
            (
                "dns not object",
                json!({"dns": []}),
                7,
                "`dns` must be an object",
            ),
            (
                "runtimeConfig not object",
                json!({"runtimeConfig": 1}),
                7,
                "`runtimeConfig` must be an object",
            ),
            (
                "runtime ip number",
                json!({"runtimeConfig": {"ips": [1]}}),
                7,
                "`runtimeConfig.ips[0]` must be a string",
            ),
            (
                "runtime ip bad",
                json!({"runtimeConfig": {"ips": ["10.0.0.300/24"]}}),
                7,
                "runtimeConfig.ips[0]` = \"10.0.0.300/24\"",
            ),
            (
                "ipv6 subnet too small",
                json!({"ipam": {"ranges": [[{"subnet": "fd00::/127"}]]}}),
                7,
                "/126 or shorter",
            ),
            (
                "attachments not array",
                json!({"cni.dev/valid-attachments": {}}),
                7,
                "must be an array",
            ),
            (
                "attachment without ifname",
                json!({"cni.dev/valid-attachments": [{"containerID": "a"}]}),
                7,
                "[0].ifname` is missing",
            ),
        ];
        let cases = raw
            .into_iter()
            .chain(fields.into_iter().map(|(w, v, c, n)| (w, conf(v), c, n)));
        for (what, stdin, code, needle) in cases {
            let e = parse(&stdin).expect_err(what);
            assert_eq!(e.code, code, "{what}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{what}: {e:?} lacks {needle:?}"
            );
        }
    }

    #[test]
    fn every_version_parses_and_peeks() {
        for v in CniVersion::ALL {
            let stdin = serde_json::to_vec(
                &json!({"cniVersion": v.as_str(), "name": "n", "type": "ferry"}),
            )
            .unwrap();
            assert_eq!(parse(&stdin).unwrap().cni_version, v);
            assert_eq!(parse_version(&stdin).unwrap(), v);
            assert_eq!(peek_version(&stdin).as_deref(), Some(v.as_str()));
        }
        assert_eq!(peek_version(b"nonsense"), None);
        assert_eq!(peek_version(br#"{"cniVersion": 1}"#), None);
    }

    fn prev_040() -> Value {
        json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:58:00:05", "sandbox": "/var/run/netns/p"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.88.0.5/16", "gateway": "10.88.0.1"}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.88.0.1"}],
            "dns": {}
        })
    }

    #[test]
    fn prev_result_in_every_shape() {
        let expected = PodResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:05".parse().unwrap(),
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
        };
        assert_eq!(
            parse_prev_result(&prev_040(), CniVersion::V0_4_0).unwrap(),
            expected
        );
        let mut v1 = prev_040();
        v1["cniVersion"] = json!("1.0.0");
        v1["ips"][0].as_object_mut().unwrap().remove("version");
        assert_eq!(
            parse_prev_result(&v1, CniVersion::V1_0_0).unwrap(),
            expected
        );
        // No interface index: the sandbox interface.
        v1["ips"][0].as_object_mut().unwrap().remove("interface");
        assert_eq!(
            parse_prev_result(&v1, CniVersion::V1_0_0).unwrap(),
            expected
        );
        // The address keeps its host part (it is the pod's address).
        assert_eq!(expected.ips[0].address.addr(), Ipv4Addr::new(10, 88, 0, 5));
    }

    #[test]
    fn prev_result_errors() {
        type Mutate = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutate, &str)> = vec![
            (
                "not object",
                Box::new(|p| *p = json!([])),
                "`prevResult` must be an object",
            ),
            (
                "version 6 of an IPv4 address",
                Box::new(|p| p["ips"][0]["version"] = json!("6")),
                "does not match the IPv4 address",
            ),
            (
                "version 4 of an IPv6 address",
                Box::new(|p| p["ips"][0]["address"] = json!("fd00::5/64")),
                "does not match the IPv6 address",
            ),
            (
                "bare address",
                Box::new(|p| p["ips"][0]["address"] = json!("10.88.0.5")),
                "not an address with prefix",
            ),
            (
                "interface out of range",
                Box::new(|p| p["ips"][0]["interface"] = json!(3)),
                "does not name one of the 1",
            ),
            (
                "interface negative",
                Box::new(|p| p["ips"][0]["interface"] = json!(-1)),
                "expected an index",
            ),
            (
                "bad mac",
                Box::new(|p| p["interfaces"][0]["mac"] = json!("zz")),
                "invalid MAC address",
            ),
            (
                "no mac",
                Box::new(|p| p["interfaces"][0].as_object_mut().unwrap().clear()),
                "interfaces[0].name` is missing",
            ),
            (
                "routes not array",
                Box::new(|p| p["routes"] = json!("x")),
                "`prevResult.routes` must be an array",
            ),
        ];
        for (what, mutate, needle) in cases {
            let mut p = prev_040();
            mutate(&mut p);
            let e = parse_prev_result(&p, CniVersion::V0_4_0).expect_err(what);
            assert_eq!(e.code, 7, "{what}");
            assert!(e.msg.contains(needle), "{what}: {} lacks {needle:?}", e.msg);
        }
    }
}

//! The CNI protocol (spec 1.0.0, GC and STATUS of 1.1.0) as `dataplane-cni`
//! speaks it: the environment a runtime sets, the network configuration on
//! stdin, results and error objects on stdout, and the conversion of results
//! to the older shapes (0.4.0, 0.3.x) a runtime may ask for.
//!
//! Everything here is pure (no daemon, no I/O) so the unit tests cover it;
//! [`plugin`] maps the commands onto the daemon's `/attachments` routes.

pub mod plugin;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The versions whose configurations and results we read and write.
/// 0.1.0 and 0.2.0 (the `ip4`/`ip6` result shape) are not among them: no
/// runtime still in use asks for them.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version of our own answers when the configuration names none we can
/// use (VERSION, errors before the configuration is read).
pub const OUR_VERSION: &str = "1.1.0";

/// The spec's well-known error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Codes above 100 are the plugin's own; we report daemon refusals
    /// (a taken address, an unknown network) with this one.
    pub const DAEMON_REFUSED: u32 = 101;
}

/// A CNI error object: written to stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The error object for a configuration of `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut o = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            o["details"] = Value::String(self.details.clone());
        }
        o
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type CniResultOf<T> = Result<T, CniError>;

/// `major.minor.patch`, compared numerically.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

/// Whether we read and write `version`.
pub fn supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Whether `version` is at least `min`.
pub fn at_least(version: &str, min: &str) -> bool {
    match (parse_version(version), parse_version(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// The answer to VERSION.
pub fn version_info() -> Value {
    json!({"cniVersion": OUR_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl std::str::FromStr for Command {
    type Err = CniError;
    fn from_str(s: &str) -> CniResultOf<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "" => return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set")),
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "unknown CNI_COMMAND {other:?}: ADD, DEL, CHECK, VERSION, GC or STATUS"
                    ),
                ))
            }
        })
    }
}

/// The runtime's environment variables, checked for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    /// `CNI_NETNS`: may be empty on DEL (the namespace is gone).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as `KEY=VALUE` pairs, in order.
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Reads the variables from `get` (the process environment in the
    /// binary, a map in tests). The spec requires CNI_CONTAINERID and
    /// CNI_IFNAME for ADD, DEL and CHECK, and CNI_NETNS for ADD and CHECK.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> CniResultOf<Env> {
        let command: Command = get("CNI_COMMAND").unwrap_or_default().parse()?;
        let var = |k: &str| get(k).unwrap_or_default();
        let env = Env {
            command,
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: parse_cni_args(&var("CNI_ARGS"))?,
        };
        let attaching = matches!(command, Command::Add | Command::Del | Command::Check);
        if attaching {
            if env.container_id.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "CNI_CONTAINERID is not set",
                ));
            }
            // The spec: alphanumerics, then also `_ . -`.
            let ok = env.container_id.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'.' | b'-'))
            });
            if !ok {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "invalid CNI_CONTAINERID {:?}: letters and digits, then also _ . -",
                        env.container_id
                    ),
                ));
            }
            if env.ifname.is_empty() {
                return Err(CniError::new(code::INVALID_ENV, "CNI_IFNAME is not set"));
            }
            if !valid_ifname(&env.ifname) {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "invalid CNI_IFNAME {:?}: at most 15 characters, no / : or space",
                        env.ifname
                    ),
                ));
            }
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"));
        }
        Ok(env)
    }

    /// The key of the attachment at the daemon: `CONTAINERID:IFNAME`.
    pub fn attachment_id(&self) -> String {
        attachment_id(&self.container_id, &self.ifname)
    }

    /// One `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub fn attachment_id(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

fn valid_ifname(name: &str) -> bool {
    name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// `CNI_ARGS`: `K=V;K=V` (empty pieces ignored).
pub fn parse_cni_args(s: &str) -> CniResultOf<Vec<(String, String)>> {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CniError::new(
                        code::INVALID_ENV,
                        format!("invalid CNI_ARGS piece {p:?}: expected KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// One entry of the `portMappings` capability, as runtimes send it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniPortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: String,
}

/// A port to publish, checked: TCP or UDP, an IPv4 host address or any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub udp: bool,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl CniPortMapping {
    pub fn check(&self) -> CniResultOf<Publish> {
        let udp = match self.protocol.to_ascii_lowercase().as_str() {
            "" | "tcp" => false,
            "udp" => true,
            p => {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("portMappings: protocol {p:?} is not supported (tcp or udp)"),
                ))
            }
        };
        let host_ip = match self.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            s => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Some(ip),
                Ok(IpAddr::V6(_)) => {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("portMappings: hostIP {s} is IPv6; this dataplane is IPv4 only"),
                    ))
                }
                Err(_) => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("portMappings: invalid hostIP {s:?}"),
                    ))
                }
            },
        };
        if self.container_port == 0 {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "portMappings: containerPort 0",
            ));
        }
        Ok(Publish {
            udp,
            host_ip,
            host_port: self.host_port,
            container_port: self.container_port,
        })
    }
}

/// `runtimeConfig`: the capabilities the runtime filled in (others are
/// ignored, as the spec asks).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<CniPortMapping>,
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin (one plugin's entry of a conflist,
/// with `name` and `cniVersion` copied in by the runtime).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// Our network (name or id); the configuration's `name` when absent.
    pub network: String,
    /// Used to create the network when it does not exist.
    pub subnet: Option<String>,
    pub socket: Option<String>,
    pub runtime: RuntimeConfig,
    /// `args.cni.ips` (the other way to ask for an address).
    pub args_ips: Vec<String>,
    /// The previous plugin's result, already in the 1.x shape.
    pub prev_result: Option<CniResult>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// The version a configuration asks for, to answer it in, when it has one
/// we support (else our own).
pub fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| supported(v))
        .unwrap_or_else(|| OUR_VERSION.to_string())
}

impl NetConf {
    /// Parses and checks stdin. Codes: 6 not JSON, 1 a version we do not
    /// speak, 7 a missing or wrong field.
    pub fn parse(stdin: &[u8]) -> CniResultOf<NetConf> {
        let v: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .with_details(e.to_string())
        })?;
        let Value::Object(o) = v else {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        };
        let version = match o.get("cniVersion") {
            None => {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "the network configuration has no cniVersion (an implied 0.1.0 is not \
                     supported)",
                )
                .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))))
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("cniVersion must be a string")),
        };
        if !supported(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {version:?}"),
            )
            .with_details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        let name = str_field(&o, "name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("the network configuration has no name"))?;
        let network = str_field(&o, "network")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| name.clone());
        let subnet = str_field(&o, "subnet")?;
        if let Some(s) = &subnet {
            s.parse::<ipnetwork::Ipv4Network>()
                .map_err(|e| invalid(format!("invalid subnet {s:?}: {e}")))?;
        }
        let socket = str_field(&o, "socket")?;
        let runtime = match o.get("runtimeConfig") {
            None | Some(Value::Null) => RuntimeConfig::default(),
            Some(v) => RuntimeConfig::deserialize(v)
                .map_err(|e| invalid(format!("invalid runtimeConfig: {e}")))?,
        };
        let args_ips = match o.get("args").and_then(|a| a.get("cni")?.get("ips")) {
            None => Vec::new(),
            Some(v) => Vec::<String>::deserialize(v)
                .map_err(|e| invalid(format!("invalid args.cni.ips: {e}")))?,
        };
        let prev_result = match o.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(CniResult::from_json(v)?),
        };
        let valid_attachments = match o.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                Vec::<ValidAttachment>::deserialize(v)
                    .map_err(|e| invalid(format!("invalid cni.dev/valid-attachments: {e}")))?,
            ),
        };
        Ok(NetConf {
            cni_version: version,
            name,
            network,
            subnet,
            socket,
            runtime,
            args_ips,
            prev_result,
            valid_attachments,
        })
    }

    /// The ports to publish (`portMappings`), checked.
    pub fn publish(&self) -> CniResultOf<Vec<Publish>> {
        self.runtime
            .port_mappings
            .iter()
            .map(CniPortMapping::check)
            .collect()
    }

    /// The address asked for, if any: the `ips` capability, then
    /// `args.cni.ips`, then `CNI_ARGS` `IP=` (the static plugin's
    /// convention). One IPv4 address; a prefix, if given, is dropped (the
    /// network's is used).
    pub fn requested_ip(&self, env: &Env) -> CniResultOf<Option<Ipv4Addr>> {
        let mut asked: Vec<String> = if !self.runtime.ips.is_empty() {
            self.runtime.ips.clone()
        } else if !self.args_ips.is_empty() {
            self.args_ips.clone()
        } else {
            env.arg("IP")
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        asked.retain(|s| !s.is_empty());
        let mut v4 = Vec::new();
        for s in &asked {
            let addr = s.split_once('/').map_or(s.as_str(), |(a, _)| a);
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => v4.push(ip),
                Ok(IpAddr::V6(_)) => {
                    return Err(CniError::new(
                        code::UNSUPPORTED_FIELD,
                        format!("ips: {s} is IPv6; this dataplane is IPv4 only"),
                    ))
                }
                Err(_) => {
                    return Err(CniError::new(
                        code::INVALID_CONFIG,
                        format!("ips: invalid address {s:?}"),
                    ))
                }
            }
        }
        match v4.as_slice() {
            [] => Ok(None),
            [ip] => Ok(Some(*ip)),
            _ => Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "ips: {} addresses asked for; an attachment has one",
                    v4.len()
                ),
            )),
        }
    }

    /// GC: the attachment ids (`CONTAINERID:IFNAME`) the runtime still
    /// uses. Without `cni.dev/valid-attachments` GC would take every
    /// attachment of the network, so its absence is an error (code 7).
    pub fn valid_ids(&self) -> CniResultOf<BTreeSet<String>> {
        let list = self.valid_attachments.as_ref().ok_or_else(|| {
            invalid("GC needs cni.dev/valid-attachments (an empty list removes every attachment)")
        })?;
        Ok(list
            .iter()
            .map(|a| attachment_id(&a.container_id, &a.ifname))
            .collect())
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn str_field(o: &Map<String, Value>, key: &str) -> CniResultOf<Option<String>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{key} must be a string"))),
    }
}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace path for an interface inside the container, absent for
    /// a host-side one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "String::is_empty"
    )]
    pub socket_path: String,
}

/// An address of a result (`"address": "10.1.0.5/24"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    // 1.1's mtu/advmss/priority/table/scope are kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// A result in the 1.x shape; [`CniResult::to_json`] writes older shapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported shape (0.3.x and 0.4.0 add a
    /// `version` to each address, which is dropped; it follows from the
    /// address).
    pub fn from_json(v: &Value) -> CniResultOf<CniResult> {
        let bad =
            |e: String| CniError::new(code::DECODE, "cannot decode prevResult").with_details(e);
        let Value::Object(o) = v else {
            return Err(bad("not a JSON object".into()));
        };
        if o.contains_key("ip4") || o.contains_key("ip6") {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "prevResult is in the 0.2.0 shape (ip4/ip6), which is not supported",
            ));
        }
        let list = |key: &str| -> Vec<Value> {
            o.get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let interfaces = list("interfaces")
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("interfaces: {e}")))?;
        let ips = list("ips")
            .into_iter()
            .map(|mut ip| {
                if let Value::Object(m) = &mut ip {
                    m.remove("version");
                }
                serde_json::from_value(ip)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("ips: {e}")))?;
        let routes = list("routes")
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("routes: {e}")))?;
        let dns = match o.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(d) => serde_json::from_value(d.clone()).map_err(|e| bad(format!("dns: {e}")))?,
        };
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns,
        })
    }

    /// The result for a configuration of `version` (one of
    /// [`SUPPORTED_VERSIONS`]): 1.x as is; 0.3.x and 0.4.0 with each
    /// address's `version` ("4" or "6"). Route fields 1.1 added are dropped
    /// for the older versions.
    pub fn to_json(&self, version: &str) -> Value {
        let old = !at_least(version, "1.0.0");
        let mut o = Map::new();
        o.insert("cniVersion".into(), json!(version));
        if !self.interfaces.is_empty() {
            o.insert("interfaces".into(), json!(self.interfaces));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = json!(ip);
                    if old {
                        let six = ip.address.contains(':');
                        v["version"] = json!(if six { "6" } else { "4" });
                    }
                    v
                })
                .collect();
            o.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self
                .routes
                .iter()
                .map(|r| {
                    if old || !at_least(version, "1.1.0") {
                        json!({"dst": r.dst, "gw": r.gw})
                    } else {
                        json!(r)
                    }
                })
                .map(|mut r| {
                    if r["gw"].is_null() {
                        r.as_object_mut().map(|m| m.remove("gw"));
                    }
                    r
                })
                .collect();
            o.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            o.insert("dns".into(), json!(self.dns));
        }
        Value::Object(o)
    }

    /// Chains our attachment after a previous plugin's result: our
    /// interface is appended, our address points at it, our routes and DNS
    /// servers are added to theirs.
    pub fn chain(prev: Option<CniResult>, ours: CniResult) -> CniResult {
        let Some(mut r) = prev else { return ours };
        let base = r.interfaces.len();
        r.interfaces.extend(ours.interfaces);
        r.ips.extend(ours.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        for route in ours.routes {
            if !r.routes.iter().any(|x| x.dst == route.dst) {
                r.routes.push(route);
            }
        }
        for ns in ours.dns.nameservers {
            if !r.dns.nameservers.contains(&ns) {
                r.dns.nameservers.push(ns);
            }
        }
        r
    }
}

/// What the daemon made, as a result: the interface in the container's
/// namespace, its address and gateway, and a default route unless the
/// network is internal.
#[allow(clippy::too_many_arguments)]
pub fn attachment_result(
    ifname: &str,
    mac: &str,
    netns: &str,
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    internal: bool,
    nameservers: Vec<String>,
) -> CniResult {
    CniResult {
        interfaces: vec![Interface {
            name: ifname.to_string(),
            mac: mac.to_string(),
            mtu: None,
            sandbox: netns.to_string(),
            socket_path: String::new(),
        }],
        ips: vec![IpConfig {
            address: format!("{ip}/{prefix}"),
            gateway: Some(gateway.to_string()),
            interface: Some(0),
        }],
        routes: if internal {
            Vec::new()
        } else {
            vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some(gateway.to_string()),
                extra: Map::new(),
            }]
        },
        dns: Dns {
            nameservers,
            ..Dns::default()
        },
    }
}

#[cfg(test)]
mod tests;

//! The CNI commands on the daemon's `/attachments` routes. The daemon's
//! engine makes the endpoint inside the runtime's namespace (`CNI_NETNS`);
//! the plugin only asks and answers, so a crashed plugin leaves nothing half
//! made that the daemon does not know of.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::Method;
use serde_json::Value;

use super::{
    at_least, attachment_result, code, version_info, CniError, CniResult, CniResultOf, Command,
    Env, NetConf,
};
use crate::{
    api::{
        client::{seg, Client, HttpError},
        Attach, Attachment, NetworkCreate, PortMapping, DEFAULT_SOCKET,
    },
    model::{validate, Proto, Runtime},
};

/// How long one call to the daemon may take. An ADD is tens of
/// milliseconds; runtimes give a plugin minutes before they give up.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the daemon's DNS resolver answers inside every sandbox of a
/// user-defined network (CNI attachments included).
const EMBEDDED_DNS: &str = "127.0.0.11";

/// A blocking client of the daemon's socket: one current-thread runtime,
/// started only for the calls (the plugin runs once per command).
struct Daemon {
    client: Client,
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// A call's failure: the daemon answered with an error status, or did not
/// answer at all.
enum CallError {
    Http(HttpError),
    Down(String),
}

impl CallError {
    /// The CNI error for a failure of `what`: a daemon that is not
    /// answering is code 11 (try again later), its refusals are reported
    /// with its message.
    fn cni(self, what: &str) -> CniError {
        match self {
            CallError::Down(e) => CniError::new(
                code::TRY_AGAIN_LATER,
                format!("the dataplane daemon is not answering ({what})"),
            )
            .with_details(e),
            CallError::Http(h) => {
                let c = match h.status {
                    404 => code::INVALID_CONFIG,
                    _ => code::DAEMON_REFUSED,
                };
                CniError::new(c, format!("{what}: {}", h.message))
            }
        }
    }
}

impl Daemon {
    fn new(conf: &NetConf) -> CniResultOf<Daemon> {
        let socket = conf.socket.as_deref().unwrap_or(DEFAULT_SOCKET);
        let socket = PathBuf::from(socket.strip_prefix("unix://").unwrap_or(socket));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                CniError::new(code::IO, "starting the I/O runtime").with_details(e.to_string())
            })?;
        Ok(Daemon {
            client: Client::new(&socket).with_timeout(Some(CALL_TIMEOUT)),
            socket,
            rt,
        })
    }

    fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, CallError> {
        self.rt
            .block_on(self.client.json(method, path, body))
            .map_err(|e| match e.downcast::<HttpError>() {
                Ok(h) => CallError::Http(h),
                Err(e) => CallError::Down(format!("unix://{}: {e:#}", self.socket.display())),
            })
    }

    /// `/_ping` (a plain-text `OK`).
    fn ping(&self) -> Result<(), CallError> {
        self.rt
            .block_on(self.client.call(Method::GET, "/_ping", None))
            .map(drop)
            .map_err(|e| match e.downcast::<HttpError>() {
                Ok(h) => CallError::Http(h),
                Err(e) => CallError::Down(format!("unix://{}: {e:#}", self.socket.display())),
            })
    }

    fn attachment_path(id: &str) -> String {
        format!("/attachments/{}/{}", Runtime::Cni, seg(id))
    }

    /// The attachment `id`, `None` when the daemon has none.
    fn attachment(&self, id: &str) -> Result<Option<Attachment>, CallError> {
        match self.call(Method::GET, &Self::attachment_path(id), None) {
            Ok(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| CallError::Down(format!("decoding the daemon's answer: {e}"))),
            Err(CallError::Http(h)) if h.status == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether network `name` exists.
    fn network_exists(&self, name: &str) -> Result<bool, CallError> {
        match self.call(Method::GET, &format!("/networks/{}", seg(name)), None) {
            Ok(_) => Ok(true),
            Err(CallError::Http(h)) if h.status == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Runs one command: the JSON to print on success (ADD's result, VERSION's
/// answer), nothing for the others.
pub fn run(env: &Env, stdin: &[u8]) -> CniResultOf<Option<Value>> {
    if env.command == Command::Version {
        return Ok(Some(version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    let d = Daemon::new(&conf)?;
    match env.command {
        Command::Add => add(&d, env, &conf).map(Some),
        Command::Del => del(&d, env).map(|()| None),
        Command::Check => check(&d, env, &conf).map(|()| None),
        Command::Gc => gc(&d, &conf).map(|()| None),
        Command::Status => status(&d, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    }
}

/// The name the daemon lists the attachment under: `cni-<12 of the
/// container id>` (the daemon's default) for `eth0`, with `-IFNAME` for a
/// container's further interfaces, so that they do not collide.
fn attachment_name(env: &Env) -> Option<String> {
    if env.ifname == "eth0" {
        return None;
    }
    let short: String = env.container_id.chars().take(12).collect();
    let ifname: String = env
        .ifname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
        .collect();
    Some(format!("cni-{short}-{ifname}"))
}

/// DNS names for the container besides its own: the runtime's name for it
/// (Podman and the kubelet pass `K8S_POD_NAME`), when it is a valid one.
fn aliases(env: &Env) -> Vec<String> {
    env.arg("K8S_POD_NAME")
        .filter(|n| validate::valid_hostname(n))
        .map(|n| vec![n.to_string()])
        .unwrap_or_default()
}

fn ensure_network(d: &Daemon, conf: &NetConf) -> CniResultOf<()> {
    let what = format!("looking up network {}", conf.network);
    if d.network_exists(&conf.network).map_err(|e| e.cni(&what))? {
        return Ok(());
    }
    let Some(subnet) = &conf.subnet else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "network {} does not exist at the dataplane daemon: create it \
                 (dataplane network create --subnet CIDR {}) or give \"subnet\" in the \
                 network configuration",
                conf.network, conf.network
            ),
        ));
    };
    let req = NetworkCreate {
        name: conf.network.clone(),
        subnet: Some(subnet.clone()),
        ..NetworkCreate::default()
    };
    let body = serde_json::to_value(req).expect("a plain struct");
    match d.call(Method::POST, "/networks", Some(body)) {
        Ok(_) => Ok(()),
        // Another ADD created it at the same moment.
        Err(CallError::Http(h))
            if h.status == 409 && d.network_exists(&conf.network).unwrap_or(false) =>
        {
            Ok(())
        }
        Err(e) => Err(e.cni(&format!("creating network {}", conf.network))),
    }
}

fn add(d: &Daemon, env: &Env, conf: &NetConf) -> CniResultOf<Value> {
    let ports: Vec<PortMapping> = conf
        .publish()?
        .into_iter()
        .map(|p| PortMapping {
            proto: if p.udp { Proto::Udp } else { Proto::Tcp },
            host_ip: p.host_ip,
            host_port: p.host_port,
            host_port_end: 0,
            container_port: p.container_port,
        })
        .collect();
    let ip = conf.requested_ip(env)?;
    ensure_network(d, conf)?;
    let req = Attach {
        runtime: Runtime::Cni,
        id: env.attachment_id(),
        name: attachment_name(env),
        network: conf.network.clone(),
        netns: Some(env.netns.clone()),
        ifname: Some(env.ifname.clone()),
        ip: ip.map(|ip| ip.to_string()),
        mac: None,
        aliases: aliases(env),
        ports,
    };
    let body = serde_json::to_value(&req).expect("a plain struct");
    let what = format!("attaching {} to network {}", env.container_id, conf.network);
    let a: Attachment = d
        .call(Method::POST, "/attachments", Some(body))
        .map_err(|e| e.cni(&what))
        .and_then(|v| {
            serde_json::from_value(v).map_err(|e| {
                CniError::new(code::DECODE, "decoding the daemon's attachment")
                    .with_details(e.to_string())
            })
        })?;
    if a.netns != env.netns {
        // The same container and interface attached from another namespace
        // (a runtime that lost a DEL): say so rather than hand back a result
        // for a namespace that is not the one asked for.
        return Err(CniError::new(
            code::DAEMON_REFUSED,
            format!(
                "{} is already attached in namespace {}, not {}: DEL it first",
                env.attachment_id(),
                a.netns,
                env.netns
            ),
        ));
    }
    if let Some(want) = ip {
        if a.ip != want {
            return Err(CniError::new(
                code::DAEMON_REFUSED,
                format!(
                    "{} is already attached with {}, not {want}",
                    env.attachment_id(),
                    a.ip
                ),
            ));
        }
    }
    let ours = result_of(&a);
    Ok(CniResult::chain(conf.prev_result.clone(), ours).to_json(&conf.cni_version))
}

/// The CNI result of an attachment.
fn result_of(a: &Attachment) -> CniResult {
    attachment_result(
        &a.ifname,
        &a.mac.to_string(),
        &a.netns,
        a.ip,
        a.prefix,
        a.gateway,
        a.internal,
        vec![EMBEDDED_DNS.to_string()],
    )
}

/// DEL: the daemon removes the endpoint, address, ports and veth; the
/// namespace is the runtime's and stays. Deleting what is not there
/// succeeds.
fn del(d: &Daemon, env: &Env) -> CniResultOf<()> {
    let what = format!("detaching {}", env.attachment_id());
    d.call(
        Method::DELETE,
        &Daemon::attachment_path(&env.attachment_id()),
        None,
    )
    .map(drop)
    .map_err(|e| e.cni(&what))
}

/// CHECK: the daemon has the attachment, in this namespace, on this
/// network, and the interface is in the namespace with its address and MAC;
/// the previous result carries it.
fn check(d: &Daemon, env: &Env, conf: &NetConf) -> CniResultOf<()> {
    if !at_least(&conf.cni_version, "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, not {}",
                conf.cni_version
            ),
        ));
    }
    let id = env.attachment_id();
    let a = d
        .attachment(&id)
        .map_err(|e| e.cni(&format!("looking up {id}")))?
        .ok_or_else(|| {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("{id} is not attached to any dataplane network"),
            )
        })?;
    if a.network != conf.network && a.network_id != conf.network {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "{id} is attached to network {}, not {}",
                a.network, conf.network
            ),
        ));
    }
    if a.netns != env.netns {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "{id} is attached in namespace {}, not {}",
                a.netns, env.netns
            ),
        ));
    }
    let addr = format!("{}/{}", a.ip, a.prefix);
    if let Some(prev) = &conf.prev_result {
        if !prev.ips.iter().any(|ip| ip.address == addr) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("prevResult does not carry {id}'s address {addr}"),
            ));
        }
    }
    let found = interface_in(Path::new(&env.netns), &env.ifname).map_err(|e| {
        CniError::new(code::IO, format!("reading the interfaces of {}", env.netns)).with_details(e)
    })?;
    let Some(Found { ips, mac }) = found else {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("interface {} is missing from {}", env.ifname, env.netns),
        ));
    };
    if !ips.contains(&a.ip) {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "interface {} in {} does not have {addr}",
                env.ifname, env.netns
            ),
        ));
    }
    if mac != Some(a.mac.0) {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "interface {} in {} does not have MAC {}",
                env.ifname, env.netns, a.mac
            ),
        ));
    }
    Ok(())
}

/// An interface as CHECK found it: its IPv4 addresses and MAC.
struct Found {
    ips: Vec<Ipv4Addr>,
    mac: Option<[u8; 6]>,
}

/// The IPv4 addresses and MAC of `ifname` in namespace `netns` (`None`: no
/// such interface). Read on a thread of its own that enters the namespace,
/// so the plugin's own thread never changes namespace.
fn interface_in(netns: &Path, ifname: &str) -> Result<Option<Found>, String> {
    let file = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    let ifname = ifname.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering the namespace: {e}"))?;
        let mut seen = false;
        let mut ips = Vec::new();
        let mut mac = None;
        for ifa in nix::ifaddrs::getifaddrs().map_err(|e| format!("getifaddrs: {e}"))? {
            if ifa.interface_name != ifname {
                continue;
            }
            seen = true;
            let Some(addr) = ifa.address else { continue };
            if let Some(sin) = addr.as_sockaddr_in() {
                ips.push(sin.ip());
            } else if let Some(link) = addr.as_link_addr() {
                mac = link.addr();
            }
        }
        Ok(seen.then_some(Found { ips, mac }))
    })
    .join()
    .map_err(|_| "the namespace reader panicked".to_string())?
}

/// GC: detaches every attachment of this network whose container and
/// interface the runtime no longer lists.
fn gc(d: &Daemon, conf: &NetConf) -> CniResultOf<()> {
    let valid = conf.valid_ids()?;
    let list = d
        .call(
            Method::GET,
            &format!("/attachments?runtime={}", Runtime::Cni),
            None,
        )
        .map_err(|e| e.cni("listing attachments"))?;
    let list: Vec<Attachment> = serde_json::from_value(list).map_err(|e| {
        CniError::new(code::DECODE, "decoding the daemon's attachments").with_details(e.to_string())
    })?;
    for a in list {
        let ours = a.network == conf.network || a.network_id == conf.network;
        if ours && !valid.contains(&a.id) {
            d.call(Method::DELETE, &Daemon::attachment_path(&a.id), None)
                .map_err(|e| e.cni(&format!("detaching {}", a.id)))?;
        }
    }
    Ok(())
}

/// STATUS: ready when the daemon answers and the network exists or can be
/// made.
fn status(d: &Daemon, conf: &NetConf) -> CniResultOf<()> {
    let unavailable = |msg: String, details: String| {
        CniError::new(code::NOT_AVAILABLE, msg).with_details(details)
    };
    match d.ping() {
        Ok(_) => {}
        Err(CallError::Down(e)) => {
            return Err(unavailable(
                "the dataplane daemon is not answering".into(),
                e,
            ))
        }
        Err(CallError::Http(h)) => {
            return Err(unavailable(
                "the dataplane daemon is not ready".into(),
                h.message,
            ))
        }
    }
    match d.network_exists(&conf.network) {
        Ok(true) => Ok(()),
        Ok(false) if conf.subnet.is_some() => Ok(()),
        Ok(false) => Err(unavailable(
            format!(
                "network {} does not exist and the configuration has no subnet",
                conf.network
            ),
            String::new(),
        )),
        Err(CallError::Down(e)) | Err(CallError::Http(HttpError { message: e, .. })) => Err(
            unavailable("the dataplane daemon is not answering".into(), e),
        ),
    }
}

/// What the binary prints for an error: the object, in the configuration's
/// version when it has one we speak.
pub fn error_json(e: &CniError, stdin: &[u8]) -> Value {
    e.to_json(&super::answer_version(stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ifname: &str, args: &str) -> Env {
        Env {
            command: Command::Add,
            container_id: "0123456789abcdef".into(),
            netns: "/run/netns/x".into(),
            ifname: ifname.into(),
            args: super::super::parse_cni_args(args).unwrap(),
        }
    }

    #[test]
    fn further_interfaces_get_names_of_their_own() {
        assert_eq!(attachment_name(&env("eth0", "")), None);
        assert_eq!(
            attachment_name(&env("net1", "")).as_deref(),
            Some("cni-0123456789ab-net1")
        );
        assert!(validate::valid_name(
            &attachment_name(&env("a@b", "")).unwrap()
        ));
    }

    #[test]
    fn the_runtimes_name_becomes_an_alias_when_valid() {
        assert_eq!(aliases(&env("eth0", "K8S_POD_NAME=web")), vec!["web"]);
        assert!(aliases(&env("eth0", "K8S_POD_NAME=-bad name")).is_empty());
        assert!(aliases(&env("eth0", "IgnoreUnknown=1")).is_empty());
    }

    #[test]
    fn a_silent_socket_is_try_again_later() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","socket":"unix:///nonexistent/dp.sock"}"#,
        )
        .unwrap();
        let e = run(
            &env("eth0", ""),
            br#"{"cniVersion":"1.0.0","name":"n","socket":"unix:///nonexistent/dp.sock"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER, "{e}");
        assert!(e.details.contains("/nonexistent/dp.sock"), "{e}");
        let d = Daemon::new(&conf).unwrap();
        assert_eq!(status(&d, &conf).unwrap_err().code, code::NOT_AVAILABLE);
    }
}

//! The daemon's state and every operation on it.
//!
//! The in-memory maps mirror the store; each operation validates first, then
//! changes the kernel (netns, veth, routes, BPF maps) step by step, recording
//! how to undo each step, and commits the store last. If any step fails, the
//! completed ones are undone in reverse, so a failed call leaves nothing
//! behind: no half-created network, no leaked address, netns, veth or pin.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _};
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::{
    api::{Connect, ContainerCreate, NetworkCreate, PublishedPort},
    bpf::Datapath,
    dns::{Dns, NameEntry, Names, NetworkNames, SandboxServer},
    ipam,
    model::{self, Container, Endpoint, Mac, Network},
    netns,
    ports::{self, PortError, Reservation, Taken},
    store::{Store, Txn},
};

/// An API-visible failure: the message is the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<ipam::IpamError> for ApiError {
    fn from(e: ipam::IpamError) -> Self {
        match e {
            ipam::IpamError::InUse(..) | ipam::IpamError::Overlap { .. } => {
                ApiError::Conflict(e.to_string())
            }
            ipam::IpamError::Exhausted(_) | ipam::IpamError::PoolExhausted => {
                ApiError::Conflict(e.to_string())
            }
            _ => ApiError::BadRequest(e.to_string()),
        }
    }
}

impl From<PortError> for ApiError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Invalid(m) => ApiError::BadRequest(m),
            PortError::Conflict(m) => ApiError::Conflict(m),
            PortError::Internal(m) => ApiError::Internal(anyhow!(m)),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest(msg.into())
}

/// Steps to undo, run in reverse unless disarmed.
#[derive(Default)]
struct Undo(Vec<UndoStep>);

type UndoStep = Box<dyn FnOnce(&mut Datapath) + Send>;

/// What a new endpoint asks for, beside its sandbox.
struct EndpointRequest {
    network_id: String,
    ip: Option<Ipv4Addr>,
    ifname: String,
    aliases: Vec<String>,
}

impl Undo {
    fn push(&mut self, f: impl FnOnce(&mut Datapath) + Send + 'static) {
        self.0.push(Box::new(f));
    }
    fn run(self, dp: &mut Datapath) {
        for f in self.0.into_iter().rev() {
            f(dp);
        }
    }
}

pub struct Config {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
}

pub struct Daemon {
    store: Box<dyn Store>,
    dp: Datapath,
    state_dir: PathBuf,
    networks: BTreeMap<String, Network>,
    endpoints: BTreeMap<String, Endpoint>,
    containers: BTreeMap<String, Container>,
    /// The embedded resolver, and its per-sandbox sockets (by container id).
    dns: Dns,
    dns_servers: HashMap<String, SandboxServer>,
    /// The sockets holding each container's published host ports (by
    /// container id).
    port_reservations: HashMap<String, Vec<Reservation>>,
    /// Host interfaces this daemon attached `from_uplink` to (by ifindex).
    uplinks: HashSet<u32>,
}

fn load_all<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, T>> {
    store
        .list(prefix)?
        .into_iter()
        .map(|(k, v)| {
            let t = serde_json::from_slice(&v).with_context(|| format!("decoding {k}"))?;
            Ok((k[prefix.len()..].to_string(), t))
        })
        .collect()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 64
}

fn parse_ip(s: &str, what: &str) -> ApiResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| bad(format!("invalid {what} {s:?}: not an IPv4 address")))
}

fn parse_cidr(s: &str, what: &str) -> ApiResult<Ipv4Network> {
    if !s.contains('/') {
        return Err(bad(format!(
            "invalid {what} {s:?}: expected CIDR like 10.1.0.0/16"
        )));
    }
    s.parse().map_err(|_| {
        bad(format!(
            "invalid {what} {s:?}: expected CIDR like 10.1.0.0/16"
        ))
    })
}

/// Finds the id of the object named `name_or_id`, or whose id starts with
/// it, as Docker does. `Err(true)`: none; `Err(false)`: an ambiguous prefix.
fn resolve_name<'a>(
    objects: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    name_or_id: &str,
) -> Result<String, bool> {
    if let Some((_, id)) = objects.clone().find(|(name, _)| *name == name_or_id) {
        return Ok(id.to_string());
    }
    let mut by_prefix =
        objects.filter(|(_, id)| !name_or_id.is_empty() && id.starts_with(name_or_id));
    match (by_prefix.next(), by_prefix.next()) {
        (Some((_, id)), None) => Ok(id.to_string()),
        (None, _) => Err(true),
        _ => Err(false),
    }
}

/// Whether `name` has the shape of the host-side veths this daemon makes
/// (`dp` and 12 hex digits of an endpoint id).
fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("dp")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !h.starts_with('-')
}

fn check_aliases(aliases: &[String]) -> ApiResult<Vec<String>> {
    for a in aliases {
        if !valid_hostname(a) {
            return Err(bad(format!("invalid network alias {a:?}")));
        }
    }
    Ok(aliases.to_vec())
}

/// `80`, `80/tcp` or `53/udp` -> `80/tcp`, `53/udp`.
/// `--expose PORT[/PROTO]`, normalised to `80/tcp` (the same parser as
/// `dataplane port`'s argument).
fn parse_port_proto(s: &str) -> ApiResult<String> {
    let (port, proto) = ports::parse_private_port(s).map_err(bad)?;
    Ok(format!("{port}/{proto}"))
}

/// Whether `pid` is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Finds `cmd` the way execvp would, so that `run` fails up front (and
/// creates nothing) for a command that does not exist.
fn resolve_command(cmd: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_exec(p))
}

impl Daemon {
    /// Opens the store, loads the programs (reusing pins), makes sure the
    /// default `bridge` network exists and projects the model into the
    /// kernel again.
    pub fn start(cfg: Config, store: Box<dyn Store>) -> anyhow::Result<Self> {
        let mut dp = Datapath::load(&cfg.bpffs)?;
        // Host processes reach published ports through socket-level
        // translation (no proxy process); only this namespace's sockets.
        crate::sockhook::attach(&mut dp)?;
        let mut d = Daemon {
            networks: load_all(store.as_ref(), model::NETWORKS)?,
            endpoints: load_all(store.as_ref(), model::ENDPOINTS)?,
            containers: load_all(store.as_ref(), model::CONTAINERS)?,
            store,
            dp,
            state_dir: cfg.state_dir,
            dns: Dns::new(Dns::upstreams_from_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            )),
            dns_servers: HashMap::new(),
            port_reservations: HashMap::new(),
            uplinks: HashSet::new(),
        };
        netns::enable_forwarding()?;
        if !d.networks.values().any(|n| n.name == "bridge") {
            d.create_network(NetworkCreate {
                name: "bridge".into(),
                subnet: Some("172.17.0.0/16".into()),
                gateway: Some("172.17.0.1".into()),
                ..Default::default()
            })
            .map_err(|e| anyhow!("creating the default bridge network: {e}"))?;
        }
        d.restore()?;
        d.maintain();
        Ok(d)
    }

    /// Periodic upkeep (every second): `from_uplink` on new host
    /// interfaces, `LOCAL_ADDRS` in step with the host's addresses.
    pub fn maintain(&mut self) {
        if let Err(e) = crate::uplink::sync(&mut self.dp, &mut self.uplinks) {
            warn!("syncing uplinks and host addresses: {e:#}");
        }
    }

    /// The pinned conntrack map, which the upkeep task expires on its own
    /// handle (see [`crate::bpf::expire_conntrack_at`]).
    pub fn ct_pin(&self) -> PathBuf {
        self.dp.ct_pin()
    }

    /// Re-projects the stored model into the kernel after a (re)start:
    /// gateways, program links (swapped atomically where pinned) and maps.
    /// Removes what operations of a daemon that died half-way left: the
    /// sandbox of every pending `run` (its processes, netns, files), and host
    /// veths that no endpoint owns (a `connect` cut short).
    fn collect_garbage(&mut self) -> anyhow::Result<()> {
        for (key, value) in self.store.list(model::PENDING)? {
            let p: model::Pending = serde_json::from_slice(&value)?;
            warn!(container = %p.container_id, netns = %p.netns, "cleaning up a run the previous daemon did not finish");
            netns::kill_processes_in(&p.netns);
            netns::delete(&p.netns)?;
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&p.netns));
            let _ =
                std::fs::remove_dir_all(self.state_dir.join("containers").join(&p.container_id));
            let mut t = Txn::default();
            t.delete(key);
            self.store.commit(t)?;
        }
        let owned: HashSet<&str> = self
            .endpoints
            .values()
            .map(|e| e.host_ifname.as_str())
            .collect();
        for name in netns::link_names()? {
            if is_host_veth_name(&name) && !owned.contains(name.as_str()) {
                warn!(veth = %name, "deleting a host veth no endpoint owns");
                netns::delete_link(&name)?;
            }
        }
        Ok(())
    }

    fn restore(&mut self) -> anyhow::Result<()> {
        self.collect_garbage()?;
        for n in self.networks.values() {
            netns::ensure_gateway(n.gateway)?;
        }
        let mut bpf_eps = Vec::new();
        let eps: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        for ep in &eps {
            let Some(ifindex) = ifindex_of(&ep.host_ifname) else {
                warn!(endpoint = %ep.id, veth = %ep.host_ifname, "host veth is gone; endpoint left out of the datapath");
                continue;
            };
            if dataplane_common::iface_slot(ifindex).is_none() {
                warn!(endpoint = %ep.id, veth = %ep.host_ifname, ifindex, "host veth predates the endpoint ifindex range; recreate its container");
                continue;
            }
            self.dp.attach(&ep.host_ifname)?;
            bpf_eps.push(self.bpf_endpoint(ep, ifindex)?);
        }
        let known: HashSet<&str> = eps.iter().map(|e| e.host_ifname.as_str()).collect();
        for stale in self.dp.pinned_links() {
            if !known.contains(stale.as_str()) {
                info!(link = %stale, "removing a pinned link no endpoint owns");
                self.dp.detach(&stale)?;
            }
        }
        self.dp.reconcile(&bpf_eps, &self.link_pairs())?;
        self.restore_ports()?;
        self.refresh_names();
        let ids: Vec<String> = self.containers.keys().cloned().collect();
        for id in ids {
            self.start_dns(&id);
        }
        // The resolvers listen on new ports now; forget sandboxes that are gone.
        let dns_ports: Vec<(u64, u16)> = self
            .dns_servers
            .values()
            .map(|s| (s.netns_cookie(), s.addr().port()))
            .collect();
        if let Err(e) = self.dp.sync_dns_ports(&dns_ports) {
            warn!("rewriting the resolver ports: {e:#}");
        }
        info!(
            networks = self.networks.len(),
            endpoints = bpf_eps.len(),
            containers = self.containers.len(),
            "state restored"
        );
        Ok(())
    }

    /// Projects what every change may affect beyond its own endpoint: the
    /// `--link` pairs allowed through `icc=false`, and the resolver's names.
    fn after_change(&mut self) {
        let pairs = self.link_pairs();
        if let Err(e) = self.dp.sync_links(&pairs) {
            warn!("updating the link table: {e:#}");
        }
        self.refresh_names();
    }

    /// Every published host port of every container.
    fn taken_ports(&self) -> Taken {
        Taken::new(self.containers.values().flat_map(|c| &c.ports))
    }

    /// The `PORTS` entries of container `cid`: its published ports, leading
    /// to its `eth0` endpoint (none while it has no `eth0`).
    fn port_entries(
        &self,
        cid: &str,
    ) -> Vec<(dataplane_common::PortKey, dataplane_common::NatAddr)> {
        let Some(c) = self.containers.get(cid) else {
            return Vec::new();
        };
        let Some(eth0) = self
            .endpoints_of_container(cid)
            .into_iter()
            .find(|e| e.ifname == "eth0")
        else {
            return Vec::new();
        };
        c.ports.iter().map(|b| b.to_bpf(eth0.ip)).collect()
    }

    /// After a (re)start: reserves every published host port again (a port
    /// taken meanwhile is logged, the binding kept) and makes `PORTS` the
    /// projection of the stored bindings.
    fn restore_ports(&mut self) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for c in self.containers.values() {
            let mut held = Vec::new();
            for b in &c.ports {
                match ports::reserve(&b.proto, b.host_ip, b.host_port) {
                    Ok((r, _)) => held.push(r),
                    Err(e) => warn!(
                        container = %c.name,
                        "cannot reserve published port {}:{}/{} again: {}",
                        b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), b.host_port, b.proto, e.desc()
                    ),
                }
            }
            self.port_reservations.insert(c.id.clone(), held);
            entries.extend(self.port_entries(&c.id));
        }
        self.dp
            .sync_ports(&entries)
            .context("rewriting the published ports")?;
        Ok(())
    }

    /// Both addresses of every `--link`ed pair of endpoints sharing a network.
    fn link_pairs(&self) -> Vec<(dataplane_common::Ipv4Wire, dataplane_common::Ipv4Wire)> {
        let mut out = Vec::new();
        for c in self.containers.values() {
            for l in &c.links {
                for a in self.endpoints_of_container(&c.id) {
                    for b in self.endpoints_of_container(&l.container_id) {
                        if a.network_id == b.network_id {
                            out.push((
                                dataplane_common::ipv4_wire(a.ip.octets()),
                                dataplane_common::ipv4_wire(b.ip.octets()),
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// Hands the resolver the names of every user-defined network: container
    /// names, hostnames and aliases. The default `bridge` network keeps
    /// Docker's behaviour: no names there (use `--link`).
    fn refresh_names(&self) {
        let mut names = Names::default();
        for n in self.networks.values().filter(|n| n.user_defined()) {
            let entries = self
                .endpoints_of_network(&n.id)
                .into_iter()
                .filter_map(|e| {
                    let c = self.containers.get(&e.container_id)?;
                    let mut all = vec![c.name.clone()];
                    if c.hostname != c.name {
                        all.push(c.hostname.clone());
                    }
                    all.extend(e.aliases.iter().cloned());
                    Some(NameEntry {
                        container_id: c.id.clone(),
                        names: all,
                        ip: e.ip,
                    })
                })
                .collect();
            names.networks.insert(
                n.id.clone(),
                NetworkNames {
                    name: n.name.clone(),
                    entries,
                },
            );
        }
        for c in self.containers.values() {
            for l in &c.links {
                let mut seen = Vec::new();
                for a in self.endpoints_of_container(&c.id) {
                    if !self.networks[&a.network_id].user_defined() {
                        continue;
                    }
                    for b in self.endpoints_of_container(&l.container_id) {
                        if b.network_id == a.network_id && !seen.contains(&b.ip) {
                            seen.push(b.ip);
                            names
                                .links
                                .entry(c.id.clone())
                                .or_default()
                                .push((l.alias.clone(), b.ip));
                        }
                    }
                }
            }
        }
        self.dns.update(names);
    }

    /// Opens the resolver's sockets at 127.0.0.11:53 inside the container's
    /// sandbox (again, after a restart). A failure costs the container its
    /// name service, not its network: it is logged, not fatal.
    fn start_dns(&mut self, cid: &str) {
        let Some(c) = self.containers.get(cid) else {
            return;
        };
        let path = PathBuf::from(c.sandbox_key());
        if !path.exists() {
            return;
        }
        let upstreams = (!c.dns.is_empty()).then(|| {
            c.dns
                .iter()
                .map(|ip| std::net::SocketAddr::from((*ip, 53)))
                .collect()
        });
        match self.dns.start_sandbox(&path, cid, upstreams) {
            Ok(server) => {
                // The sandbox's 127.0.0.11:53 leads to the server's own port.
                if let Err(e) = self
                    .dp
                    .set_dns_port(server.netns_cookie(), server.addr().port())
                {
                    warn!(container = %c.name, "pointing 127.0.0.11:53 at the resolver: {e:#}");
                }
                self.dns_servers.insert(cid.to_string(), server);
            }
            Err(e) => warn!(container = %c.name, "starting the embedded DNS server: {e:#}"),
        }
    }

    /// Resolves `--link NAME[:ALIAS]` arguments: the target must exist and
    /// share the network `nid` the new container joins.
    fn parse_links(&self, links: &[String], nid: &str) -> ApiResult<Vec<model::Link>> {
        links
            .iter()
            .map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
                if name.is_empty() || alias.is_empty() || !valid_hostname(alias) {
                    return Err(bad(format!("invalid --link {l:?}: expected NAME[:ALIAS]")));
                }
                let cid = self.container_id(name)?;
                if !self
                    .endpoints_of_container(&cid)
                    .iter()
                    .any(|e| e.network_id == nid)
                {
                    return Err(bad(format!(
                        "cannot link to {name}: it is not on network {}",
                        self.networks[nid].name
                    )));
                }
                Ok(model::Link {
                    container_id: cid,
                    alias: alias.to_string(),
                })
            })
            .collect()
    }

    /// Docker's link environment for `c`: for each link ALIAS to a container
    /// at IP exposing PORT/PROTO, `ALIAS_NAME=/c/alias`,
    /// `ALIAS_PORT=proto://IP:port` (lowest port) and
    /// `ALIAS_PORT_<port>_<PROTO>[_ADDR|_PORT|_PROTO]`, plus `-e` variables.
    fn link_env(&self, c: &Container, nid: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = c
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for l in &c.links {
            let Some(t) = self.containers.get(&l.container_id) else {
                continue;
            };
            let Some(ip) = self
                .endpoints_of_container(&t.id)
                .into_iter()
                .find(|e| e.network_id == nid)
                .map(|e| e.ip)
            else {
                continue;
            };
            let a = l.alias.to_uppercase().replace(['-', '.'], "_");
            env.push((format!("{a}_NAME"), format!("/{}/{}", c.name, l.alias)));
            // Published ports count as exposed, as with Docker.
            let ports = ports::exposed_ports(&t.exposed, &t.ports);
            if let Some((port, proto)) = ports.first() {
                env.push((format!("{a}_PORT"), format!("{proto}://{ip}:{port}")));
            }
            for (port, proto) in &ports {
                let p = format!("{a}_PORT_{port}_{}", proto.to_uppercase());
                env.push((p.clone(), format!("{proto}://{ip}:{port}")));
                env.push((format!("{p}_ADDR"), ip.to_string()));
                env.push((format!("{p}_PORT"), port.to_string()));
                env.push((format!("{p}_PROTO"), proto.clone()));
            }
            for kv in &t.env {
                if let Some((k, v)) = kv.split_once('=') {
                    env.push((format!("{a}_ENV_{k}"), v.to_string()));
                }
            }
        }
        env
    }

    /// Writes the sandbox's `/etc/netns/<sandbox>/{resolv.conf,hosts}`, which
    /// `ip netns exec` (and so `run` and `exec`) bind-mounts over /etc. On a
    /// user-defined network the resolver is the embedded one at 127.0.0.11;
    /// on the default bridge it is the host's (or `--dns`), as with Docker.
    fn write_etc_files(&self, c: &Container, ep: &Endpoint) -> anyhow::Result<()> {
        let dir = c.etc_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let search: Vec<&str> = host_conf
            .lines()
            .filter(|l| l.starts_with("search ") || l.starts_with("domain "))
            .collect();
        let mut conf = String::from("# written by dataplane\n");
        if self.networks[&ep.network_id].user_defined() {
            conf.push_str("nameserver 127.0.0.11\n");
        } else if !c.dns.is_empty() {
            for ip in &c.dns {
                conf.push_str(&format!("nameserver {ip}\n"));
            }
        } else {
            for l in host_conf.lines().filter(|l| l.starts_with("nameserver")) {
                if !l
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|ip| ip.starts_with("127."))
                {
                    conf.push_str(l);
                    conf.push('\n');
                }
            }
        }
        for l in search {
            conf.push_str(l);
            conf.push('\n');
        }
        conf.push_str("options ndots:0\n");
        std::fs::write(dir.join("resolv.conf"), conf)?;
        let mut hosts =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        hosts.push_str(&format!("{}\t{}\n", ep.ip, c.hostname));
        for l in &c.links {
            let Some(t) = self.containers.get(&l.container_id) else {
                continue;
            };
            if let Some(e) = self
                .endpoints_of_container(&t.id)
                .into_iter()
                .find(|e| e.network_id == ep.network_id)
            {
                let mut names = vec![l.alias.clone()];
                for n in [&t.name, &t.hostname] {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
                hosts.push_str(&format!("{}\t{}\n", e.ip, names.join(" ")));
            }
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        Ok(())
    }

    fn bpf_endpoint(
        &self,
        ep: &Endpoint,
        ifindex: u32,
    ) -> anyhow::Result<dataplane_common::Endpoint> {
        let net = self
            .networks
            .get(&ep.network_id)
            .ok_or_else(|| anyhow!("endpoint {} names a missing network", ep.id))?;
        Ok(dataplane_common::Endpoint {
            ifindex,
            network_id: net.num,
            ip: dataplane_common::ipv4_wire(ep.ip.octets()),
            mac: ep.mac.0,
            host_mac: ep.host_mac.0,
            flags: 0,
            net: net.to_bpf(),
        })
    }

    // ----- lookups -------------------------------------------------------

    fn network_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.networks
                .values()
                .map(|n| (n.name.as_str(), n.id.as_str())),
            name_or_id,
        )
        .map_err(|found_none| {
            if found_none {
                ApiError::NotFound(format!("network {name_or_id} not found"))
            } else {
                bad(format!("network id prefix {name_or_id} is ambiguous"))
            }
        })
    }

    fn container_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.containers
                .values()
                .map(|c| (c.name.as_str(), c.id.as_str())),
            name_or_id,
        )
        .map_err(|found_none| {
            if found_none {
                ApiError::NotFound(format!("no such container: {name_or_id}"))
            } else {
                bad(format!("container id prefix {name_or_id} is ambiguous"))
            }
        })
    }

    fn endpoints_of_container(&self, cid: &str) -> Vec<Endpoint> {
        let mut v: Vec<Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.container_id == cid)
            .cloned()
            .collect();
        v.sort_by_key(|e| e.ifname[3..].parse::<u32>().unwrap_or(0));
        v
    }

    fn endpoints_of_network(&self, nid: &str) -> Vec<&Endpoint> {
        self.endpoints
            .values()
            .filter(|e| e.network_id == nid)
            .collect()
    }

    // ----- networks ------------------------------------------------------

    pub fn create_network(&mut self, req: NetworkCreate) -> ApiResult<String> {
        if !valid_name(&req.name) {
            return Err(bad(format!(
                "invalid network name {:?}: use letters, digits, '_', '.', '-', starting with a letter or digit",
                req.name
            )));
        }
        if self.networks.values().any(|n| n.name == req.name) {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let driver = req.driver.clone().unwrap_or_else(|| "bridge".into());
        if driver != "bridge" {
            return Err(bad(format!(
                "driver {driver:?} is not supported yet (available: bridge)"
            )));
        }
        let subnet = req
            .subnet
            .as_deref()
            .map(|s| parse_cidr(s, "subnet"))
            .transpose()?;
        let gateway = req
            .gateway
            .as_deref()
            .map(|s| parse_ip(s, "gateway"))
            .transpose()?;
        let ip_range = req
            .ip_range
            .as_deref()
            .map(|s| parse_cidr(s, "ip-range"))
            .transpose()?;
        if subnet.is_none()
            && (gateway.is_some() || ip_range.is_some() || !req.aux_addresses.is_empty())
        {
            return Err(bad("--gateway, --ip-range and --aux-address need --subnet"));
        }
        let mut aux = BTreeMap::new();
        for (k, v) in &req.aux_addresses {
            if k.is_empty() {
                return Err(bad(format!(
                    "invalid aux-address {k}={v}: expected NAME=IP"
                )));
            }
            aux.insert(k.clone(), parse_ip(v, "aux-address")?);
        }
        for k in req.options.keys() {
            if k.is_empty() {
                return Err(bad("invalid --opt: expected KEY=VALUE"));
            }
        }
        let existing: Vec<(String, Ipv4Network)> = self
            .networks
            .values()
            .map(|n| (n.name.clone(), n.subnet))
            .collect();
        let (subnet, gateway) = ipam::plan_network(
            &ipam::NetworkRequest {
                subnet,
                gateway,
                ip_range,
                aux_addresses: aux.clone(),
            },
            &existing,
            &ipam::host_routes(),
        )?;
        let num = (1u32..)
            .find(|i| !self.networks.values().any(|n| n.num == *i))
            .expect("u32 space");
        if num > dataplane_common::MAX_NETWORKS {
            return Err(ApiError::Conflict("too many networks".into()));
        }
        let net = Network {
            id: model::new_id(),
            name: req.name,
            driver,
            num,
            subnet,
            gateway,
            ip_range,
            aux_addresses: aux,
            internal: req.internal,
            options: req.options,
            created: model::now_rfc3339(),
        };
        let mut undo = Undo::default();
        let res = (|| -> anyhow::Result<()> {
            netns::ensure_gateway(net.gateway)?;
            let gw = net.gateway;
            undo.push(move |_| {
                let _ = netns::remove_gateway(gw);
            });
            let mut t = Txn::default();
            t.put(net.key(), serde_json::to_vec(&net)?);
            self.store.commit(t)
        })();
        if let Err(e) = res {
            undo.run(&mut self.dp);
            return Err(e.into());
        }
        info!(network = %net.name, subnet = %net.subnet, "network created");
        let id = net.id.clone();
        self.networks.insert(id.clone(), net);
        Ok(id)
    }

    pub fn remove_network(&mut self, name: &str) -> ApiResult<()> {
        let id = self.network_id(name)?;
        let net = self.networks[&id].clone();
        if net.name == "bridge" {
            return Err(ApiError::Conflict(
                "bridge is a pre-defined network and cannot be removed".into(),
            ));
        }
        let attached: Vec<String> = self
            .endpoints_of_network(&id)
            .iter()
            .filter_map(|e| self.containers.get(&e.container_id).map(|c| c.name.clone()))
            .collect();
        if !attached.is_empty() {
            return Err(ApiError::Conflict(format!(
                "network {} has active endpoints ({})",
                net.name,
                attached.join(", ")
            )));
        }
        let mut t = Txn::default();
        t.delete(net.key());
        self.store.commit(t)?;
        self.networks.remove(&id);
        netns::remove_gateway(net.gateway)?;
        info!(network = %net.name, "network removed");
        Ok(())
    }

    pub fn list_networks(&self) -> Value {
        Value::Array(
            self.networks
                .values()
                .map(|n| {
                    json!({
                        "Name": n.name, "Id": n.id, "Driver": n.driver, "Scope": "local",
                        "Internal": n.internal, "Subnet": n.subnet.to_string(),
                        "Gateway": n.gateway.to_string(), "Created": n.created,
                    })
                })
                .collect(),
        )
    }

    pub fn inspect_network(&self, name: &str) -> ApiResult<Value> {
        let id = self.network_id(name)?;
        let n = &self.networks[&id];
        let mut config = json!({"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string()});
        if let Some(r) = n.ip_range {
            config["IPRange"] = json!(r.to_string());
        }
        if !n.aux_addresses.is_empty() {
            config["AuxiliaryAddresses"] = json!(n
                .aux_addresses
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect::<BTreeMap<_, _>>());
        }
        let containers: serde_json::Map<String, Value> = self
            .endpoints_of_network(&id)
            .iter()
            .filter_map(|e| {
                let c = self.containers.get(&e.container_id)?;
                Some((
                    c.id.clone(),
                    json!({
                        "Name": c.name, "EndpointID": e.id, "MacAddress": e.mac.to_string(),
                        "IPv4Address": format!("{}/{}", e.ip, n.subnet.prefix()), "IPv6Address": "",
                    }),
                ))
            })
            .collect();
        Ok(json!([{
            "Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local", "Driver": n.driver,
            "EnableIPv6": false, "Internal": n.internal, "Attachable": false,
            "IPAM": {"Driver": "default", "Options": {}, "Config": [config]},
            "Containers": containers, "Options": n.options, "Labels": {},
        }]))
    }

    // ----- endpoints -----------------------------------------------------

    /// Plumbs a new endpoint of `cid` on network `nid` (veth, addresses,
    /// routes, program link, map entries) and returns its record. Every step
    /// is added to `undo`.
    fn add_endpoint(
        &mut self,
        cid: &str,
        netns_path: &Path,
        req: EndpointRequest,
        undo: &mut Undo,
    ) -> ApiResult<Endpoint> {
        let EndpointRequest {
            network_id: nid,
            ip: requested_ip,
            ifname,
            aliases,
        } = req;
        let nid = nid.as_str();
        let net = self.networks[nid].clone();
        let used: HashSet<Ipv4Addr> = self
            .endpoints_of_network(nid)
            .iter()
            .map(|e| e.ip)
            .collect();
        let ip = ipam::allocate(&net, &used, requested_ip)?;
        let id = model::new_id();
        let ep = Endpoint {
            host_ifname: format!("dp{}", &id[..12]),
            id,
            network_id: nid.to_string(),
            container_id: cid.to_string(),
            ip,
            mac: Mac::for_container(ip),
            host_mac: Mac::random_local(),
            ifname,
            aliases,
        };
        let mut plan = netns::VethPlan {
            host_ifname: ep.host_ifname.clone(),
            host_ifindex: 0,
            host_mac: ep.host_mac,
            netns: netns_path.to_path_buf(),
            ifname: ep.ifname.clone(),
            mac: ep.mac,
            ip,
            prefix: net.subnet.prefix(),
            gateway: net.gateway,
            default_route: ep.ifname == "eth0" && !net.internal,
        };
        netns::ensure_gateway(net.gateway)?;
        let ifindex = self.create_veth_in_range(&mut plan)?;
        let host = ep.host_ifname.clone();
        undo.push(move |_| {
            let _ = netns::delete_link(&host);
        });
        self.dp.attach(&ep.host_ifname)?;
        let host = ep.host_ifname.clone();
        undo.push(move |dp| {
            let _ = dp.detach(&host);
        });
        let bpf = self.bpf_endpoint(&ep, ifindex)?;
        self.dp.set_endpoint(bpf)?;
        undo.push(move |dp| {
            let _ = dp.remove_endpoint(bpf.ip, bpf.ifindex);
        });
        Ok(ep)
    }

    /// Creates the endpoint's veth with a host-side ifindex from the
    /// `IFACES` range (lowest free slot first), skipping indexes that a
    /// device unknown to us turns out to hold.
    fn create_veth_in_range(&self, plan: &mut netns::VethPlan) -> ApiResult<u32> {
        let used: HashSet<u32> = self
            .endpoints
            .values()
            .filter_map(|e| ifindex_of(&e.host_ifname))
            .collect();
        let mut free = (0..dataplane_common::MAX_ENDPOINTS)
            .map(|slot| dataplane_common::IFINDEX_BASE + slot)
            .filter(|i| !used.contains(i));
        for _ in 0..64 {
            let Some(ifindex) = free.next() else { break };
            plan.host_ifindex = ifindex;
            match netns::create_endpoint(plan) {
                Ok(i) => return Ok(i),
                Err(e) if netns::is_ifindex_taken(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(format!(
            "no free interface index left for endpoints (at most {} per host)",
            dataplane_common::MAX_ENDPOINTS
        )))
    }

    /// Removes an endpoint's kernel state (map entries, link pin, veth).
    fn drop_endpoint_kernel_state(&mut self, ep: &Endpoint) {
        if let Some(ifindex) = ifindex_of(&ep.host_ifname) {
            let _ = self
                .dp
                .remove_endpoint(dataplane_common::ipv4_wire(ep.ip.octets()), ifindex);
        }
        let _ = self.dp.detach(&ep.host_ifname);
        if let Err(e) = netns::delete_link(&ep.host_ifname) {
            warn!(veth = %ep.host_ifname, "deleting veth: {e:#}");
        }
    }

    // ----- containers ----------------------------------------------------

    pub fn run(&mut self, req: ContainerCreate) -> ApiResult<String> {
        let id = model::new_id();
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("dp_{}", &id[..8]));
        if !valid_name(&name) {
            return Err(bad(format!("invalid container name {name:?}")));
        }
        if self.containers.values().any(|c| c.name == name) {
            return Err(ApiError::Conflict(format!(
                "container name {name} is already in use"
            )));
        }
        if req.cmd.is_empty() {
            return Err(bad(
                "no command given: dataplane run [OPTIONS] -- CMD [ARGS...]",
            ));
        }
        if resolve_command(&req.cmd[0]).is_none() {
            return Err(bad(format!("executable file not found: {}", req.cmd[0])));
        }
        let nid = self.network_id(req.network.as_deref().unwrap_or("bridge"))?;
        let ip = req.ip.as_deref().map(|s| parse_ip(s, "--ip")).transpose()?;
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        if !valid_hostname(&hostname) {
            return Err(bad(format!("invalid hostname {hostname:?}")));
        }
        let aliases = check_aliases(&req.network_aliases)?;
        let dns = req
            .dns
            .iter()
            .map(|s| parse_ip(s, "--dns"))
            .collect::<ApiResult<Vec<_>>>()?;
        let links = self.parse_links(&req.links, &nid)?;
        for kv in &req.env {
            if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(bad(format!("invalid -e {kv:?}: expected KEY=VALUE")));
            }
        }
        let exposed = req
            .expose
            .iter()
            .map(|p| parse_port_proto(p))
            .collect::<ApiResult<Vec<_>>>()?;
        let mut port_reqs = Vec::new();
        for spec in &req.publish {
            port_reqs.extend(ports::parse_publish(spec).map_err(bad)?);
        }
        if req.publish_all {
            let all = ports::publish_all_requests(&exposed, &port_reqs);
            port_reqs.extend(all);
        }
        if !req.publish.is_empty() && self.networks[&nid].internal {
            // An internal network has no way in or out (Docker publishes
            // nothing there either); say so instead of a dead port.
            return Err(bad(format!(
                "cannot publish ports of a container on internal network {}",
                self.networks[&nid].name
            )));
        }
        // Refuse a published port that is taken before creating anything.
        let taken = self.taken_ports();
        ports::precheck(&port_reqs, &taken)?;
        let ns_name = format!("dp-{}", &id[..12]);
        let dir = self.state_dir.join("containers").join(&id);
        let mut ctr = Container {
            id: id.clone(),
            name,
            hostname,
            cmd: req.cmd,
            netns: ns_name.clone(),
            pid: None,
            log_path: dir.join("log").display().to_string(),
            created: model::now_rfc3339(),
            dns,
            links,
            env: req.env,
            exposed,
            ports: Vec::new(),
            publish: req.publish,
            publish_all: req.publish_all,
        };
        // Refuse an impossible address before creating anything.
        {
            let net = &self.networks[&nid];
            let used: HashSet<Ipv4Addr> = self
                .endpoints_of_network(&nid)
                .iter()
                .map(|e| e.ip)
                .collect();
            ipam::allocate(net, &used, ip)?;
        }
        let pending = model::Pending {
            container_id: id.clone(),
            netns: ns_name.clone(),
        };
        let mut t = Txn::default();
        t.put(
            pending.key(),
            serde_json::to_vec(&pending).context("encoding")?,
        );
        self.store.commit(t)?;
        let mut undo = Undo::default();
        let res = (|| -> ApiResult<(Endpoint, Vec<Reservation>)> {
            // The host ports first: held from here on, released on failure.
            let (bindings, reserved) = ports::allocate(&port_reqs, &taken)?;
            ctr.ports = bindings;
            std::fs::create_dir_all(&dir).context("creating the container directory")?;
            let d = dir.clone();
            undo.push(move |_| {
                let _ = std::fs::remove_dir_all(&d);
            });
            let path = netns::create(&ns_name)?;
            let n = ns_name.clone();
            undo.push(move |_| {
                let _ = netns::delete(&n);
            });
            netns::prepare_sandbox(&path)?;
            let req = EndpointRequest {
                network_id: nid.clone(),
                ip,
                ifname: "eth0".into(),
                aliases,
            };
            let ep = self.add_endpoint(&id, &path, req, &mut undo)?;
            for b in &ctr.ports {
                let (key, to) = b.to_bpf(ep.ip);
                self.dp.set_port(key, to)?;
                undo.push(move |dp| {
                    let _ = dp.remove_port(&key);
                });
            }
            let etc = ctr.etc_dir();
            undo.push(move |_| {
                let _ = std::fs::remove_dir_all(&etc);
            });
            self.write_etc_files(&ctr, &ep)?;
            let env = self.link_env(&ctr, &nid);
            let pid = spawn_in_sandbox(&ctr, &env)?;
            undo.push(move |_| kill_group(pid, Duration::from_secs(1)));
            ctr.pid = Some(pid);
            crate::fault::point("run-before-commit");
            let mut t = Txn::default();
            t.put(ctr.key(), serde_json::to_vec(&ctr).context("encoding")?)
                .put(ep.key(), serde_json::to_vec(&ep).context("encoding")?)
                .delete(pending.key());
            self.store.commit(t)?;
            Ok((ep, reserved))
        })();
        match res {
            Ok((ep, reserved)) => {
                info!(container = %ctr.name, ip = %ep.ip, "container started");
                self.port_reservations.insert(id.clone(), reserved);
                self.endpoints.insert(ep.id.clone(), ep);
                self.containers.insert(id.clone(), ctr);
                self.after_change();
                self.start_dns(&id);
                Ok(id)
            }
            Err(e) => {
                undo.run(&mut self.dp);
                let mut t = Txn::default();
                t.delete(pending.key());
                if let Err(e) = self.store.commit(t) {
                    warn!("dropping the intent record of a failed run: {e:#}");
                }
                Err(e)
            }
        }
    }

    pub fn connect(&mut self, network: &str, req: Connect) -> ApiResult<()> {
        let nid = self.network_id(network)?;
        let cid = self.container_id(&req.container)?;
        let eps = self.endpoints_of_container(&cid);
        if eps.iter().any(|e| e.network_id == nid) {
            return Err(ApiError::Conflict(format!(
                "container {} is already attached to network {}",
                self.containers[&cid].name, self.networks[&nid].name
            )));
        }
        let ip = req.ip.as_deref().map(|s| parse_ip(s, "--ip")).transpose()?;
        let aliases = check_aliases(&req.aliases)?;
        let ifname = (0u32..)
            .map(|i| format!("eth{i}"))
            .find(|n| !eps.iter().any(|e| &e.ifname == n))
            .expect("free ethN");
        let path = PathBuf::from(self.containers[&cid].sandbox_key());
        let mut undo = Undo::default();
        let res = (|| -> ApiResult<Endpoint> {
            let req = EndpointRequest {
                network_id: nid.clone(),
                ip,
                ifname,
                aliases,
            };
            let ep = self.add_endpoint(&cid, &path, req, &mut undo)?;
            crate::fault::point("connect-before-commit");
            let mut t = Txn::default();
            t.put(ep.key(), serde_json::to_vec(&ep).context("encoding")?);
            self.store.commit(t)?;
            Ok(ep)
        })();
        match res {
            Ok(ep) => {
                let eth0 = ep.ifname == "eth0";
                self.endpoints.insert(ep.id.clone(), ep);
                if eth0 {
                    // Back on an eth0: its published ports lead there again.
                    for (key, to) in self.port_entries(&cid) {
                        if let Err(e) = self.dp.set_port(key, to) {
                            warn!("publishing a port again: {e:#}");
                        }
                    }
                }
                self.after_change();
                Ok(())
            }
            Err(e) => {
                undo.run(&mut self.dp);
                Err(e)
            }
        }
    }

    pub fn disconnect(&mut self, network: &str, container: &str) -> ApiResult<()> {
        let nid = self.network_id(network)?;
        let cid = self.container_id(container)?;
        let ep = self
            .endpoints_of_container(&cid)
            .into_iter()
            .find(|e| e.network_id == nid)
            .ok_or_else(|| {
                ApiError::Conflict(format!(
                    "container {} is not connected to network {}",
                    self.containers[&cid].name, self.networks[&nid].name
                ))
            })?;
        let mut t = Txn::default();
        t.delete(ep.key());
        self.store.commit(t)?;
        // Published ports lead to eth0: without it they lead nowhere (the
        // bindings and their host ports stay the container's).
        let unpublish = if ep.ifname == "eth0" {
            self.port_entries(&cid)
        } else {
            Vec::new()
        };
        for (key, _) in &unpublish {
            let _ = self.dp.remove_port(key);
        }
        self.endpoints.remove(&ep.id);
        self.drop_endpoint_kernel_state(&ep);
        if !unpublish.is_empty() {
            self.flush_conntrack(ep.ip);
        }
        self.after_change();
        Ok(())
    }

    pub fn remove_container(&mut self, name: &str, force: bool) -> ApiResult<()> {
        let cid = self.container_id(name)?;
        let ctr = self.containers[&cid].clone();
        let running = ctr.pid.is_some_and(process_alive);
        if running && !force {
            return Err(ApiError::Conflict(format!(
                "container {} is running: stop it first or use rm -f",
                ctr.name
            )));
        }
        if let Some(pid) = ctr.pid.filter(|_| running) {
            kill_group(pid, Duration::from_secs(3));
        }
        let eps = self.endpoints_of_container(&cid);
        let published = self.port_entries(&cid);
        let mut t = Txn::default();
        t.delete(ctr.key());
        for e in &eps {
            t.delete(e.key());
        }
        self.store.commit(t)?;
        for (key, _) in &published {
            let _ = self.dp.remove_port(key);
        }
        for e in &eps {
            self.endpoints.remove(&e.id);
            self.drop_endpoint_kernel_state(e);
            self.flush_conntrack(e.ip);
        }
        // Frees the host ports.
        self.port_reservations.remove(&cid);
        self.containers.remove(&cid);
        // Closes the resolver's sockets inside the sandbox.
        if let Some(server) = self.dns_servers.remove(&cid) {
            let _ = self.dp.remove_dns_port(server.netns_cookie());
        }
        self.after_change();
        if let Err(e) = netns::delete(&ctr.netns) {
            warn!(netns = %ctr.netns, "deleting netns: {e:#}");
        }
        let _ = std::fs::remove_dir_all(ctr.etc_dir());
        let _ = std::fs::remove_dir_all(self.state_dir.join("containers").join(&cid));
        info!(container = %ctr.name, "container removed");
        Ok(())
    }

    fn container_networks(&self, cid: &str) -> serde_json::Map<String, Value> {
        self.endpoints_of_container(cid)
            .iter()
            .filter_map(|e| {
                let n = self.networks.get(&e.network_id)?;
                Some((
                    n.name.clone(),
                    json!({
                        "NetworkID": n.id, "EndpointID": e.id, "Gateway": n.gateway.to_string(),
                        "IPAddress": e.ip.to_string(), "IPPrefixLen": n.subnet.prefix(),
                        "MacAddress": e.mac.to_string(), "InterfaceName": e.ifname,
                        "HostInterfaceName": e.host_ifname,
                    }),
                ))
            })
            .collect()
    }

    pub fn list_containers(&self) -> Value {
        Value::Array(
            self.containers
                .values()
                .map(|c| {
                    let running = c.pid.is_some_and(process_alive);
                    json!({
                        "Id": c.id, "Name": c.name, "Command": c.cmd.join(" "), "Created": c.created,
                        "State": if running { "running" } else { "exited" },
                        "Networks": self.container_networks(&c.id).keys().cloned().collect::<Vec<_>>(),
                        "Ports": ports::ps_ports(&c.exposed, &c.ports),
                    })
                })
                .collect(),
        )
    }

    pub fn inspect_container(&self, name: &str) -> ApiResult<Value> {
        let cid = self.container_id(name)?;
        let c = &self.containers[&cid];
        let running = c.pid.is_some_and(process_alive);
        Ok(json!([{
            "Id": c.id, "Name": c.name, "Created": c.created, "Path": c.cmd[0], "Args": c.cmd[1..],
            "State": {"Status": if running {"running"} else {"exited"}, "Running": running, "Pid": if running { c.pid.unwrap_or(0) } else { 0 }},
            "Config": {"Hostname": c.hostname, "Cmd": c.cmd, "ExposedPorts": ports::exposed_ports_json(&c.exposed, &c.ports)},
            "HostConfig": {"PortBindings": ports::host_config_port_bindings(&c.publish), "PublishAllPorts": c.publish_all},
            "LogPath": c.log_path,
            "NetworkSettings": {
                "SandboxKey": c.sandbox_key(), "SandboxID": c.netns, "Networks": self.container_networks(&cid),
                "Ports": ports::network_settings_ports(&c.exposed, &c.ports),
            },
        }]))
    }

    /// The container's published ports, as Docker's API lists them.
    pub fn container_ports(&self, name: &str) -> ApiResult<Vec<PublishedPort>> {
        let cid = self.container_id(name)?;
        Ok(ports::api_ports(&self.containers[&cid].ports))
    }

    /// Deletes the conntrack entries of a container address going away.
    fn flush_conntrack(&mut self, ip: Ipv4Addr) {
        if let Err(e) = self
            .dp
            .flush_conntrack(dataplane_common::ipv4_wire(ip.octets()))
        {
            warn!(%ip, "flushing conntrack entries: {e:#}");
        }
    }

    pub fn logs(&self, name: &str) -> ApiResult<String> {
        let cid = self.container_id(name)?;
        let path = &self.containers[&cid].log_path;
        Ok(std::fs::read_to_string(path).unwrap_or_default())
    }

    pub fn stats(&self) -> ApiResult<Value> {
        Ok(json!({
            "programs": self.dp.stats()?,
            "conntrack": {"entries": self.dp.conntrack_entries()?},
        }))
    }
}

/// ifindex of `name` in the daemon's namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Starts the container's command in its sandbox, detached (own session),
/// with its own UTS namespace carrying the hostname, output to its log.
/// `ip netns exec` is used so that the sandbox sees `/etc/netns/<name>/`
/// files exactly as `ip netns exec` users do.
fn spawn_in_sandbox(c: &Container, env: &[(String, String)]) -> anyhow::Result<u32> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log_path)
        .with_context(|| format!("opening {}", c.log_path))?;
    let hostname = c.hostname.clone();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &c.netns])
        .args(&c.cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOSTNAME", &c.hostname)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, unshare, sethostname)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)
                .map_err(std::io::Error::from)?;
            nix::unistd::sethostname(&hostname).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the container command")?;
    let pid = child.id();
    // Reap it when it exits (after a daemon restart, init does).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
fn kill_group(pid: u32, grace: Duration) {
    use nix::{
        sys::signal::{killpg, Signal},
        unistd::Pid,
    };
    let pg = Pid::from_raw(pid as i32);
    let _ = killpg(pg, Signal::SIGTERM);
    let t = Instant::now();
    while process_alive(pid) && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid) {
        let _ = killpg(pg, Signal::SIGKILL);
        let t = Instant::now();
        while process_alive(pid) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

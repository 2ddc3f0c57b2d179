//! The reconciler: projects the store's desired state into the kernel and
//! repairs drift. It alone changes netns, veths, addresses, routes, program
//! links, map entries, DNS sockets and port reservations.
//!
//! It runs on a thread of its own. Each change the store's watch brings
//! marks keys dirty and wakes it for an *incremental* pass over just those
//! objects (so a `run` costs the same at 1,000 sandboxes as at 10); every
//! second a *full* pass compares everything with what the kernel has and
//! puts back what is missing (a veth or route deleted by hand, a map entry
//! deleted with bpftool, a detached TC link) and removes what nothing in the
//! store wants. A change that fails is retried with backoff and shown as a
//! problem of its object (`inspect`, `network inspect`), never dropped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context as _, Result};
use serde::Serialize;
use tracing::{info, warn};

use super::{sandbox, ClusterConfig, Shared};
use crate::model::snapshot::Snapshot;
use crate::{
    bpf::Datapath,
    dns::{Dns, SandboxServer},
    drivers,
    model::{self, Container, Endpoint, Network},
    netns,
    ports::{self, Reservation},
    store::Revision,
};

/// How often a full pass runs.
pub const FULL_PASS: Duration = Duration::from_secs(1);

/// Something the store wants that is not in place, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// What is missing, in a few words.
    pub what: String,
    /// The last error.
    pub error: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it first failed (RFC 3339).
    pub since: String,
}

/// The reconciler's report: up to which store revision the kernel is in
/// place, and the objects (by store key) that are not.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub revision: Revision,
    pub problems: BTreeMap<String, Problem>,
}

/// The first retry of a failed change comes after this, then twice as
/// late each time, up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What an applied endpoint was, to undo it once the store no longer wants
/// it.
#[derive(Clone, Debug)]
struct Applied {
    container_id: String,
    ip: Ipv4Addr,
    /// The host side's ifindex; 0 for an endpoint that is one link inside
    /// its sandbox (`Driver::sandbox_only`), which no map entry names.
    ifindex: u32,
    host_ifname: String,
    /// For a sandbox-only endpoint: the sandbox and the link's name there.
    in_sandbox: Option<(PathBuf, String)>,
}

/// The kernel as one full pass sees it (one dump each, not one query per
/// object).
struct Observed {
    links: HashMap<String, u32>,
    routes: HashSet<(Ipv4Addr, u32)>,
}

pub struct Reconciler {
    shared: Arc<Shared>,
    dp: Arc<Mutex<Datapath>>,
    state_dir: PathBuf,
    dns: Dns,
    dns_servers: HashMap<String, SandboxServer>,
    reservations: HashMap<String, Vec<Reservation>>,
    uplinks: HashSet<u32>,
    endpoints: HashMap<String, Applied>,
    networks: HashMap<String, Network>,
    /// The PORTS keys projected for each container.
    ports: HashMap<String, Vec<dataplane_common::PortKey>>,
    retry: HashMap<String, (u32, Instant)>,
    problems: BTreeMap<String, Problem>,
    host_conf: String,
    names_revision: Option<Revision>,
    cluster: Option<ClusterConfig>,
    /// The inner MTU of the tunnel, once `TUNNEL` is written.
    tunnel_mtu: Option<u32>,
    /// Remote endpoints projected into `ENDPOINTS`, by endpoint id, as
    /// written.
    remote: HashMap<String, dataplane_common::Endpoint>,
    /// The services as last written into the maps.
    services_applied: Option<Vec<crate::bpf::services::ServiceSpec>>,
    /// The `VLANS` slots this daemon wrote (None: not yet, so the first
    /// sync clears every slot a previous daemon may have left).
    vlans_written: Option<HashSet<u32>>,
    /// Sockets bound on every address for the services' ingress ports, so
    /// that no process of this host takes a port the routing mesh answers.
    ingress_held: HashMap<(model::Proto, u16), Reservation>,
    /// Local endpoints whose entries were written with `EP_BACKEND`.
    backends: HashSet<String>,
}

/// Whether local endpoint `ep` is a service replica: its container runs a
/// task, or its address is a task's (`replicas`).
fn is_replica(snap: &Snapshot, ep: &Endpoint, replicas: &HashSet<Ipv4Addr>) -> bool {
    snap.containers
        .get(&ep.container_id)
        .is_some_and(|c| c.task.is_some())
        || replicas.contains(&ep.ip)
}

/// `EP_BACKEND` for a replica, else nothing.
fn backend_flag(replica: bool) -> u32 {
    if replica {
        dataplane_common::EP_BACKEND
    } else {
        0
    }
}

impl Reconciler {
    pub fn new(
        shared: Arc<Shared>,
        dp: Arc<Mutex<Datapath>>,
        state_dir: PathBuf,
        dns: Dns,
        cluster: Option<ClusterConfig>,
    ) -> Self {
        Self {
            shared,
            dp,
            state_dir,
            dns,
            dns_servers: HashMap::new(),
            reservations: HashMap::new(),
            uplinks: HashSet::new(),
            endpoints: HashMap::new(),
            networks: HashMap::new(),
            ports: HashMap::new(),
            retry: HashMap::new(),
            problems: BTreeMap::new(),
            host_conf: String::new(),
            names_revision: None,
            cluster,
            tunnel_mtu: None,
            remote: HashMap::new(),
            services_applied: None,
            vlans_written: None,
            ingress_held: HashMap::new(),
            backends: HashSet::new(),
        }
    }

    /// Runs passes until the process ends: a full one at once (after a
    /// restart the kernel is compared with the store as a whole), then an
    /// incremental one whenever keys change and a full one every
    /// [`FULL_PASS`].
    pub fn run(mut self) {
        let mut last_full = None::<Instant>;
        loop {
            let due = last_full.is_none_or(|t: Instant| t.elapsed() >= FULL_PASS);
            let (dirty, snap) = self.shared.take_dirty(if due {
                Duration::ZERO
            } else {
                FULL_PASS.saturating_sub(last_full.map_or(Duration::ZERO, |t| t.elapsed()))
            });
            let full = last_full.is_none_or(|t| t.elapsed() >= FULL_PASS);
            let started = Instant::now();
            if full {
                self.full_pass(&snap);
                last_full = Some(Instant::now());
            } else if !dirty.is_empty() {
                self.incremental_pass(&snap, &dirty);
            }
            if full || !dirty.is_empty() {
                tracing::debug!(
                    full,
                    keys = dirty.len(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "reconciler pass"
                );
            }
            self.publish(snap.revision);
        }
    }

    fn dp(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.dp.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, revision: Revision) {
        *self
            .shared
            .status
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Status {
            revision,
            problems: self.problems.clone(),
        });
        self.shared.applied.advance(revision);
    }

    // ----- bookkeeping of failures ---------------------------------------

    /// Whether a failed `key` may be tried again now.
    fn due(&self, key: &str) -> bool {
        self.retry
            .get(key)
            .is_none_or(|(_, at)| Instant::now() >= *at)
    }

    /// Records the outcome of an attempt on `key`.
    fn outcome(&mut self, key: &str, what: &str, r: Result<()>) {
        match r {
            Ok(()) => {
                if self.problems.remove(key).is_some() {
                    info!(object = key, "{what}: in place now");
                }
                self.retry.remove(key);
            }
            Err(e) => {
                let attempts = self.retry.get(key).map_or(0, |(n, _)| *n) + 1;
                let wait = BACKOFF_MIN
                    .saturating_mul(1 << attempts.min(16))
                    .min(BACKOFF_MAX);
                self.retry
                    .insert(key.to_string(), (attempts, Instant::now() + wait));
                let error = format!("{e:#}");
                if self.problems.get(key).is_none_or(|p| p.error != error) {
                    warn!(object = key, attempts, "{what}: {error}");
                }
                let since = self
                    .problems
                    .get(key)
                    .map_or_else(model::now_rfc3339, |p| p.since.clone());
                self.problems.insert(
                    key.to_string(),
                    Problem {
                        what: what.to_string(),
                        error,
                        attempts,
                        since,
                    },
                );
            }
        }
    }

    fn forget(&mut self, key: &str) {
        self.problems.remove(key);
        self.retry.remove(key);
    }

    // ----- passes --------------------------------------------------------

    fn full_pass(&mut self, snap: &Snapshot) {
        self.shared.children.reap();
        self.host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        self.sync_tunnel(snap);
        self.sync_networks(snap, None);
        let containers: Vec<&Container> = snap.containers.values().collect();
        for c in &containers {
            self.ensure_sandbox(snap, c);
        }
        self.sweep_sandboxes(snap);
        let observed = match (netns::links(), netns::host_routes32()) {
            (Ok(l), Ok(r)) => Some(Observed {
                links: l.into_iter().collect(),
                routes: r,
            }),
            (Err(e), _) | (_, Err(e)) => {
                warn!("reading the host's links and routes: {e:#}");
                None
            }
        };
        for ep in snap.endpoints.values() {
            self.ensure_endpoint(snap, ep, observed.as_ref());
        }
        self.sweep_endpoints(snap, observed.as_ref());
        let replicas = model::service::replica_addrs(snap.tasks.values());
        self.backends.clear();
        let mut bpf_eps: Vec<dataplane_common::Endpoint> = Vec::new();
        for ep in snap.endpoints.values() {
            if let Some(b) = self.bpf_endpoint(snap, ep, &replicas) {
                self.note_backend(&ep.id, b.flags);
                bpf_eps.push(b);
            }
        }
        let remote = self.remote_entries(snap);
        self.remote = remote.iter().map(|(id, e)| (id.clone(), *e)).collect();
        bpf_eps.extend(remote.into_values());
        let learned_nets: HashSet<u32> = snap
            .networks
            .values()
            .filter(|n| !n.vteps.is_empty())
            .map(Network::bpf_num)
            .collect();
        match self.dp().sync_endpoints(&bpf_eps, &learned_nets) {
            Ok(0) => {}
            Ok(n) => info!(
                entries = n,
                "endpoint map entries put back in step with the store"
            ),
            Err(e) => warn!("syncing the endpoint maps: {e:#}"),
        }
        self.sync_vlans(snap);
        self.sync_ports(snap, None);
        self.sync_links(snap);
        self.sync_dns(snap, None);
        // Compared with the maps themselves, not with what was written.
        self.services_applied = None;
        self.sync_services(snap);
        let dp = self.dp.clone();
        let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = crate::uplink::sync(&mut dp, &mut self.uplinks) {
            warn!("syncing uplinks and host addresses: {e:#}");
        }
    }

    fn incremental_pass(&mut self, snap: &Snapshot, dirty: &BTreeSet<String>) {
        // Shared records (`cluster/networks/...`) are handled like this
        // host's own.
        let ids = |prefix: &str| -> BTreeSet<String> {
            dirty
                .iter()
                .map(|k| k.strip_prefix(model::CLUSTER).unwrap_or(k))
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
                .collect()
        };
        let nets = ids(model::NETWORKS);
        // Endpoints of other hosts only change map entries and names.
        let (remote_eps, eps): (BTreeSet<String>, BTreeSet<String>) = ids(model::ENDPOINTS)
            .into_iter()
            .partition(|id| snap.remote.contains_key(id) || self.remote.contains_key(id));
        let cluster_changed = !remote_eps.is_empty()
            || !nets.is_empty()
            || dirty
                .iter()
                .any(|k| k.starts_with(model::NODES) || k.starts_with(model::ALIVE));
        // A container's files and ports depend on its endpoints too.
        let mut ctrs = ids(model::CONTAINERS);
        for id in &eps {
            if let Some(e) = snap.endpoints.get(id) {
                ctrs.insert(e.container_id.clone());
            } else if let Some(a) = self.endpoints.get(id) {
                ctrs.insert(a.container_id.clone());
            }
        }
        if !nets.is_empty() {
            self.sync_networks(snap, Some(&nets));
        }
        for id in &ctrs {
            match snap.containers.get(id) {
                Some(c) => self.ensure_sandbox(snap, c),
                None => self.remove_sandbox_of(id),
            }
        }
        let services_changed = dirty.iter().any(|k| model::service::is_service_key(k));
        let replicas = if services_changed || !eps.is_empty() {
            model::service::replica_addrs(snap.tasks.values())
        } else {
            HashSet::new()
        };
        for id in &eps {
            match snap.endpoints.get(id) {
                Some(ep) => {
                    self.ensure_endpoint(snap, ep, None);
                    if let Some(b) = self.bpf_endpoint(snap, ep, &replicas) {
                        let r = self.dp().set_endpoint(b);
                        if r.is_ok() {
                            self.note_backend(&ep.id, b.flags);
                        }
                        self.outcome(&ep.key(), "endpoint map entries", r);
                    }
                }
                None => {
                    self.teardown_endpoint(id);
                    self.backends.remove(id);
                }
            }
        }
        if services_changed {
            // A task that got (or lost) its address makes its endpoint a
            // replica (or no longer one): only those entries are rewritten.
            let changed: Vec<(&Endpoint, dataplane_common::Endpoint)> = snap
                .endpoints
                .values()
                .filter(|ep| !eps.contains(&ep.id))
                .filter(|ep| self.backends.contains(&ep.id) != is_replica(snap, ep, &replicas))
                .filter_map(|ep| Some((ep, self.bpf_endpoint(snap, ep, &replicas)?)))
                .collect();
            for (ep, b) in changed {
                let r = self.dp().set_endpoint(b);
                if r.is_ok() {
                    self.note_backend(&ep.id, b.flags);
                }
                self.outcome(&ep.key(), "endpoint map entries", r);
            }
        }
        if !eps.is_empty() || !nets.is_empty() {
            self.sync_vlans(snap);
        }
        if !ctrs.is_empty() || !eps.is_empty() {
            self.sync_ports(snap, Some(&ctrs));
            self.sync_links(snap);
            self.sync_dns(snap, Some(&ctrs));
        }
        if services_changed {
            // Names (VIPs, dnsrr and tasks.NAME) and the tables.
            self.sync_dns(snap, Some(&BTreeSet::new()));
        }
        if services_changed || cluster_changed || !eps.is_empty() {
            self.sync_services(snap);
        }
        if (cluster_changed || services_changed) && self.cluster.is_some() {
            // Other hosts' replicas carry EP_BACKEND too.
            self.sync_remote(snap);
            if !remote_eps.is_empty() {
                // The names of other hosts' containers.
                self.sync_dns(snap, Some(&BTreeSet::new()));
            }
        }
    }

    // ----- VLAN networks -------------------------------------------------

    /// Projects the VLAN networks into `VLANS`, `TRUNKS` and `FDB`: each
    /// one's parent and VID, and its containers on this host by MAC. A
    /// network whose parent is missing gets no entries (its state says why,
    /// from `network_up`) until the parent is back.
    fn sync_vlans(&mut self, snap: &Snapshot) {
        use dataplane_common::{vlan::MAX_VLAN_MEMBERS, FdbKey, TrunkKey, VlanNet};
        let (mut vlans, mut trunks, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
        for net in snap.networks.values() {
            let (Some(m), Some(vid)) = (&net.macvlan, net.vlan()) else {
                continue;
            };
            let Some(parent) = crate::engine::ifindex_of(&m.parent) else {
                continue;
            };
            let num = net.bpf_num();
            let mut v = VlanNet {
                parent,
                tci: u32::from(vid),
                ..VlanNet::EMPTY
            };
            for ep in snap.endpoints.values().filter(|e| e.network_id == net.id) {
                let Some(a) = self.endpoints.get(&ep.id).filter(|a| a.ifindex != 0) else {
                    continue;
                };
                fdb.push((FdbKey::new(num, ep.mac.0), a.ifindex));
                // The engine keeps a network below the bound.
                if (v.count as usize) < MAX_VLAN_MEMBERS {
                    v.members[v.count as usize] = a.ifindex;
                    v.count += 1;
                }
            }
            vlans.push((num, v));
            trunks.push((
                TrunkKey {
                    ifindex: parent,
                    vid: u32::from(vid),
                },
                num,
            ));
        }
        let mut written = self.vlans_written.take();
        let r = self.dp().sync_vlans(&vlans, &trunks, &fdb, &mut written);
        self.vlans_written = written;
        if let Err(e) = r {
            warn!("syncing the VLAN maps: {e:#}");
        }
    }

    // ----- services ------------------------------------------------------

    /// The services' frontends, replicas and Maglev tables (`SERVICES`,
    /// `BACKENDS`, `BACKEND_PORTS`, `MAGLEV`).
    fn sync_services(&mut self, snap: &Snapshot) {
        self.hold_ingress_ports(snap);
        let want = super::services::projections(snap, self.cluster.is_some());
        if self.services_applied.as_ref() == Some(&want) {
            return;
        }
        let r = super::services::apply(&mut self.dp(), &want);
        if r.is_ok() {
            self.services_applied = Some(want);
        }
        self.outcome("services", "service tables", r);
    }

    /// Binds (without listening) every ingress port of every service on
    /// this host's addresses, as published ports are held, and lets go of
    /// the ports no service publishes any more. A port a host process
    /// already holds is a problem of this host (the routing mesh still
    /// answers it: its packets never reach the socket).
    fn hold_ingress_ports(&mut self, snap: &Snapshot) {
        let want: HashSet<(model::Proto, u16)> = snap
            .services
            .values()
            .flat_map(|s| s.ingress_ports())
            .map(|p| (p.proto, p.published))
            .collect();
        self.ingress_held.retain(|k, _| want.contains(k));
        for (proto, port) in want {
            if self.ingress_held.contains_key(&(proto, port)) {
                continue;
            }
            let key = format!("ingress/{port}/{proto}");
            if !self.due(&key) {
                continue;
            }
            let r = crate::ports::reserve(&proto, None, port)
                .map(|(held, _)| {
                    self.ingress_held.insert((proto, port), held);
                })
                .map_err(|e| anyhow::anyhow!("holding ingress port {port}/{proto} on this host: {e} (a process of this host has it)"));
            self.outcome(&key, "ingress port", r);
        }
    }

    // ----- the cluster ---------------------------------------------------

    /// This host's end of the tunnel, and the hosts and static VTEPs whose
    /// VXLAN it accepts (`TUNNEL`, `VTEPS`, `FLOOD`).
    fn sync_tunnel(&mut self, snap: &Snapshot) {
        let Some(c) = self.cluster.clone() else {
            return;
        };
        let r = (|| -> Result<()> {
            let (ifindex, mtu) = netns::device_of_address(c.addr)?;
            let inner = mtu.saturating_sub(dataplane_common::VXLAN_OVERHEAD);
            self.dp().set_tunnel(dataplane_common::Tunnel {
                addr: dataplane_common::ipv4_wire(c.addr.octets()),
                ifindex,
                mtu: inner,
                flags: dataplane_common::TUNNEL_ENABLED,
            })?;
            if self.tunnel_mtu != Some(inner) {
                info!(addr = %c.addr, ifindex, mtu = inner, "tunnel in place");
            }
            self.tunnel_mtu = Some(inner);
            self.sync_vteps(snap)
        })();
        self.outcome("tunnel", "the overlay tunnel", r);
    }

    fn sync_vteps(&mut self, snap: &Snapshot) -> Result<()> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let mut vteps: BTreeMap<dataplane_common::Ipv4Wire, u32> = BTreeMap::new();
        for n in snap.nodes.values() {
            if n.name != c.node && snap.node_in_grace(&n.name, c.grace) {
                *vteps
                    .entry(dataplane_common::ipv4_wire(n.addr.octets()))
                    .or_default() |= dataplane_common::VTEP_NODE;
            }
        }
        let mut flood = Vec::new();
        for net in snap.networks.values().filter(|n| !n.vteps.is_empty()) {
            let mut f = dataplane_common::Flood {
                len: 0,
                vteps: [0; dataplane_common::MAX_FLOOD],
            };
            for ip in net.vteps.iter().take(dataplane_common::MAX_FLOOD) {
                let w = dataplane_common::ipv4_wire(ip.octets());
                *vteps.entry(w).or_default() |= dataplane_common::VTEP_STATIC;
                f.vteps[f.len as usize] = w;
                f.len += 1;
            }
            flood.push((net.bpf_num(), f));
        }
        let vteps: Vec<(u32, u32)> = vteps.into_iter().collect();
        let mut dp = self.dp();
        dp.sync_vteps(&vteps)?;
        dp.sync_flood(&flood)
    }

    /// The `ENDPOINTS` entries of other hosts' endpoints on overlay
    /// networks: those of hosts that are alive or within their grace period.
    fn remote_entries(&self, snap: &Snapshot) -> BTreeMap<String, dataplane_common::Endpoint> {
        let Some(c) = &self.cluster else {
            return BTreeMap::new();
        };
        let replicas = model::service::replica_addrs(snap.tasks.values());
        snap.remote
            .values()
            .filter(|ep| snap.node_in_grace(&ep.node, c.grace))
            .filter_map(|ep| {
                let net = snap.networks.get(&ep.network_id)?;
                let node = snap.nodes.get(&ep.node)?;
                Some((
                    ep.id.clone(),
                    dataplane_common::Endpoint {
                        ifindex: 0,
                        network_id: net.bpf_num(),
                        ip: dataplane_common::ipv4_wire(ep.ip.octets()),
                        mac: ep.mac.0,
                        host_mac: [0; 6],
                        flags: dataplane_common::EP_REMOTE
                            | backend_flag(replicas.contains(&ep.ip)),
                        vtep: dataplane_common::ipv4_wire(node.addr.octets()),
                        net: net.to_bpf(),
                    },
                ))
            })
            .collect()
    }

    /// Puts the remote entries in step with the store (only the ones that
    /// changed are written).
    fn sync_remote(&mut self, snap: &Snapshot) {
        let want = self.remote_entries(snap);
        let r = (|| -> Result<()> {
            let wanted_ips: HashSet<u32> = want.values().map(|e| e.ip).collect();
            let gone: Vec<String> = self
                .remote
                .keys()
                .filter(|id| !want.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                let e = self.remote.remove(&id).expect("listed");
                // An address that moved to another endpoint keeps its entry.
                if !wanted_ips.contains(&e.ip) {
                    self.dp().remove_remote_endpoint(e.ip)?;
                }
            }
            for (id, e) in want {
                if self.remote.get(&id) != Some(&e) {
                    self.dp().set_remote_endpoint(e)?;
                    self.remote.insert(id, e);
                }
            }
            self.sync_vteps(snap)
        })();
        self.outcome("remote", "other hosts' endpoints", r);
    }

    // ----- networks ------------------------------------------------------

    fn sync_networks(&mut self, snap: &Snapshot, only: Option<&BTreeSet<String>>) {
        let wanted = |id: &String| only.is_none_or(|o| o.contains(id));
        // A full pass reads the host's addresses once and only touches
        // networks whose gateway is missing (or that failed before).
        let present: Option<HashSet<Ipv4Addr>> = match only {
            Some(_) => None,
            None => netns::addresses().ok().map(|a| a.into_iter().collect()),
        };
        for (id, net) in snap.networks.iter().filter(|(id, _)| wanted(id)) {
            let key = net.key();
            let in_place = self.networks.contains_key(id)
                && !self.problems.contains_key(&key)
                && present.as_ref().is_some_and(|p| p.contains(&net.gateway));
            if in_place || (only.is_none() && !self.due(&key)) {
                continue;
            }
            // A shared network made on another host may overlap one of
            // this host's own (that host could not see it): serving both
            // would mix their addresses, so the shared one waits here.
            let clash = net.is_cluster().then(|| {
                snap.networks
                    .values()
                    .find(|n| !n.is_cluster() && n.subnet.overlaps(net.subnet))
            });
            let r = match clash.flatten() {
                Some(local) => Err(anyhow!(
                    "its subnet {} overlaps {} of this host's network {}",
                    net.subnet,
                    local.subnet,
                    local.name
                )),
                None => drivers::of(net).network_up(net),
            };
            self.outcome(&key, "network gateway", r);
            self.networks.insert(id.clone(), net.clone());
        }
        if only.is_none() {
            // Gateways this daemon labelled that no network wants any more
            // (a daemon that died between removing a network and its
            // gateway). Only labelled addresses: never the host's own.
            let wanted: HashSet<Ipv4Addr> = snap.networks.values().map(|n| n.gateway).collect();
            for gw in netns::labelled_gateways().unwrap_or_default() {
                if !wanted.contains(&gw) {
                    info!(gateway = %gw, "removing a gateway no network wants");
                    if let Err(e) = netns::remove_gateway(gw) {
                        warn!(gateway = %gw, "removing a stale gateway: {e:#}");
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .networks
            .keys()
            .filter(|id| wanted(id) && !snap.networks.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            let net = self.networks.remove(&id).expect("listed");
            // Another network may still use the same gateway address.
            if snap.networks.values().any(|n| n.gateway == net.gateway) {
                continue;
            }
            if let Err(e) = drivers::of(&net).network_down(&net) {
                warn!(network = %net.name, "removing the network's gateway: {e:#}");
            }
            self.forget(&net.key());
            info!(network = %net.name, "network removed from the kernel");
        }
    }

    // ----- sandboxes -----------------------------------------------------

    fn container_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }

    /// The sandbox of `c`: its state directory, network namespace (with `lo`
    /// up) and `/etc/netns` files.
    fn ensure_sandbox(&mut self, snap: &Snapshot, c: &Container) {
        let key = c.key();
        let r = (|| -> Result<()> {
            let dir = self.container_dir(&c.id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Another runtime's namespace is its own: nothing is made in
            // it but the endpoint's link.
            if c.shares_host_netns() || c.external.is_some() {
                return Ok(());
            }
            let path = netns::path_of(&c.netns);
            if !path.exists() {
                let p = netns::create(&c.netns)?;
                if let Err(e) = netns::prepare_sandbox(&p) {
                    let _ = netns::delete(&c.netns);
                    return Err(e);
                }
            }
            let (conf, hosts) = sandbox::etc_files(snap, c, &self.host_conf);
            let etc = c.etc_dir();
            for (name, text) in [("resolv.conf", &conf), ("hosts", &hosts)] {
                let p = etc.join(name);
                if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
                    std::fs::create_dir_all(&etc)
                        .with_context(|| format!("creating {}", etc.display()))?;
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
                }
            }
            Ok(())
        })();
        self.outcome(&key, "sandbox", r);
    }

    /// Removes everything of a sandbox the store no longer has: its
    /// processes, network namespace, `/etc/netns` files and state directory
    /// (last, so that a daemon dying half-way finds it again).
    fn remove_sandbox_of(&mut self, id: &str) {
        self.dns_servers.remove(id);
        self.reservations.remove(id);
        let ns = model::sandbox_netns_name(id);
        netns::kill_processes_in(&ns);
        if let Err(e) = netns::delete(&ns) {
            warn!(netns = %ns, "deleting netns: {e:#}");
            return;
        }
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&ns));
        let _ = std::fs::remove_dir_all(self.container_dir(id));
        self.forget(&format!("{}{id}", model::CONTAINERS));
    }

    /// Sandboxes of this daemon (a directory under `<state>/containers`) that
    /// the store does not want. Another daemon's namespaces are never
    /// touched: only those this daemon's state directory names.
    fn sweep_sandboxes(&mut self, snap: &Snapshot) {
        let Ok(dir) = std::fs::read_dir(self.state_dir.join("containers")) else {
            return;
        };
        let stale: Vec<String> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| !snap.containers.contains_key(id))
            .collect();
        for id in stale {
            info!(container = %id, "removing a sandbox the store no longer has");
            self.remove_sandbox_of(&id);
        }
    }

    // ----- endpoints -----------------------------------------------------

    /// The map entry of a local endpoint; `replicas` are the tasks'
    /// addresses ([`model::service::replica_addrs`]).
    fn bpf_endpoint(
        &self,
        snap: &Snapshot,
        ep: &Endpoint,
        replicas: &HashSet<Ipv4Addr>,
    ) -> Option<dataplane_common::Endpoint> {
        let applied = self.endpoints.get(&ep.id)?;
        if applied.ifindex == 0 {
            return None;
        }
        let net = snap.networks.get(&ep.network_id)?;
        Some(dataplane_common::Endpoint {
            ifindex: applied.ifindex,
            network_id: net.bpf_num(),
            ip: dataplane_common::ipv4_wire(ep.ip.octets()),
            mac: ep.mac.0,
            host_mac: ep.host_mac.0,
            flags: backend_flag(is_replica(snap, ep, replicas)),
            vtep: 0,
            net: net.to_bpf(),
        })
    }

    /// Remembers whether endpoint `id`'s entry was written with
    /// `EP_BACKEND` (`flags`).
    fn note_backend(&mut self, id: &str, flags: u32) {
        if flags & dataplane_common::EP_BACKEND != 0 {
            self.backends.insert(id.to_string());
        } else {
            self.backends.remove(id);
        }
    }

    fn plan(&self, net: &Network, ep: &Endpoint, c: &Container, sandbox: &Path) -> netns::VethPlan {
        // A Docker endpoint's peer waits in this namespace, under its own
        // name, for Docker to move and configure.
        let docker = c.docker().filter(|x| x.netns_path.is_empty());
        // A DHCP endpoint's prefix and router are its lease's.
        let lease = ep.lease.as_ref().filter(|l| l.lost.is_empty());
        let prefix = lease
            .map(|l| l.lease.prefix)
            .filter(|p| *p != 0)
            .unwrap_or(net.subnet.prefix());
        let gateway = lease.and_then(|l| l.lease.router).unwrap_or(net.gateway);
        netns::VethPlan {
            host_ifname: ep.host_ifname.clone(),
            host_ifindex: 0,
            host_mac: ep.host_mac,
            netns: sandbox.to_path_buf(),
            configure_peer: docker.is_none(),
            ifname: docker.map_or_else(|| ep.ifname.clone(), |x| x.peer.clone()),
            mac: ep.mac,
            ip: ep.ip,
            prefix,
            gateway,
            default_route: ep.ifname == "eth0" && !net.internal,
            mtu: if net.is_cluster() {
                self.tunnel_mtu
            } else {
                None
            },
            host_route: drivers::of(net).host_route(net),
        }
    }

    /// Makes an endpoint's link, route and program link present. With
    /// `observed` (a full pass) it compares against one dump of the host's
    /// links and routes; without, it looks up just this endpoint.
    fn ensure_endpoint(&mut self, snap: &Snapshot, ep: &Endpoint, observed: Option<&Observed>) {
        let key = ep.key();
        let Some(net) = snap.networks.get(&ep.network_id) else {
            self.outcome(
                &key,
                "endpoint",
                Err(anyhow!("its network {} is gone", ep.network_id)),
            );
            return;
        };
        let Some(c) = snap.containers.get(&ep.container_id) else {
            return;
        };
        if !self.due(&key) && self.problems.contains_key(&key) {
            return;
        }
        let sandbox = PathBuf::from(c.sandbox_key());
        if !sandbox.exists() {
            // The sandbox is not there (yet, or it failed): its own problem.
            return;
        }
        let driver = drivers::of(net);
        let plan = self.plan(net, ep, c, &sandbox);
        if driver.sandbox_only(net) {
            let r = self
                .ensure_sandbox_link(driver, net, ep, c, &plan)
                .and_then(|()| lease_address(net, ep, &plan));
            self.outcome(&key, "endpoint", r);
            return;
        }
        let existing = match observed {
            Some(o) => o.links.get(&ep.host_ifname).copied(),
            None => crate::engine::ifindex_of(&ep.host_ifname),
        };
        if existing.is_none() && c.docker().is_some_and(|x| !x.netns_path.is_empty()) {
            // Docker moved the peer into its sandbox and configured it; a
            // new one would stay in this namespace. The veth goes with the
            // sandbox (a stopped container), and Docker's Leave and
            // DeleteEndpoint follow.
            self.outcome(
                &key,
                "endpoint",
                Err(anyhow!(
                    "the veth {} of Docker's sandbox {} is gone (disconnect and connect the container again)",
                    ep.host_ifname,
                    sandbox.display()
                )),
            );
            return;
        }
        let r = (|| -> Result<()> {
            let ifindex = match existing {
                Some(i) => {
                    if let Some(o) = observed.filter(|_| plan.host_route) {
                        if !o.routes.contains(&(ep.ip, i)) {
                            info!(endpoint = %ep.id, ip = %ep.ip, "putting back the host route");
                            netns::set_link_up(i)?;
                            driver.repair_routes(&plan, i)?;
                        }
                    }
                    i
                }
                None => {
                    if self.endpoints.contains_key(&ep.id) {
                        info!(endpoint = %ep.id, veth = %ep.host_ifname, "putting back a deleted veth");
                    }
                    self.create_link(driver, net, plan.clone())?
                }
            };
            if !self.endpoints.contains_key(&ep.id) {
                // First time this daemon sees the endpoint (a new one, or one
                // a previous daemon made): attach, or swap this daemon's
                // program into the pinned link atomically.
                self.dp().attach(&ep.host_ifname)?;
            } else if !self.dp().is_attached(&ep.host_ifname) {
                info!(endpoint = %ep.id, veth = %ep.host_ifname, "attaching the program again");
                self.dp().reattach(&ep.host_ifname)?;
            }
            self.endpoints.insert(
                ep.id.clone(),
                Applied {
                    container_id: ep.container_id.clone(),
                    ip: ep.ip,
                    ifindex,
                    host_ifname: ep.host_ifname.clone(),
                    in_sandbox: None,
                },
            );
            lease_address(net, ep, &plan)
        })();
        self.outcome(&key, "endpoint", r);
    }

    /// A sandbox-only endpoint (a kernel macvlan device): made if its link
    /// is missing from the sandbox; no program, no map entry.
    fn ensure_sandbox_link(
        &mut self,
        driver: &dyn drivers::Driver,
        net: &Network,
        ep: &Endpoint,
        c: &Container,
        plan: &netns::VethPlan,
    ) -> Result<()> {
        // Where the link lives and under what name; whether to check it.
        // Docker moves and renames the link into its own sandbox (and back
        // under its first name on Leave): once joined, the link is
        // Docker's to keep, and ours to delete under that first name.
        let (netns, ifname, check) = match c.docker() {
            Some(x) => (
                PathBuf::from(format!("/proc/{}/ns/net", std::process::id())),
                x.peer.clone(),
                x.netns_path.is_empty(),
            ),
            None => (plan.netns.clone(), plan.ifname.clone(), true),
        };
        if check && !netns::link_exists_in(&netns, &ifname)? {
            if self.endpoints.contains_key(&ep.id) {
                info!(endpoint = %ep.id, ifname = %ifname, "putting back a deleted macvlan link");
            }
            driver.create_link(net, plan)?;
        }
        self.endpoints.insert(
            ep.id.clone(),
            Applied {
                container_id: ep.container_id.clone(),
                ip: ep.ip,
                ifindex: 0,
                host_ifname: ep.host_ifname.clone(),
                in_sandbox: Some((netns, ifname)),
            },
        );
        Ok(())
    }

    /// Creates the endpoint's link with a host-side ifindex from the
    /// `IFACES` range (lowest free slot first), skipping indexes that a
    /// device unknown to us turns out to hold.
    fn create_link(
        &self,
        driver: &dyn drivers::Driver,
        net: &Network,
        mut plan: netns::VethPlan,
    ) -> Result<u32> {
        let used: HashSet<u32> = self.endpoints.values().map(|a| a.ifindex).collect();
        let mut free = (0..dataplane_common::MAX_ENDPOINTS)
            .map(|slot| dataplane_common::IFINDEX_BASE + slot)
            .filter(|i| !used.contains(i));
        for _ in 0..64 {
            let Some(ifindex) = free.next() else { break };
            plan.host_ifindex = ifindex;
            match driver.create_link(net, &plan) {
                Ok(i) => return Ok(i),
                Err(e) if netns::is_ifindex_taken(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(anyhow!(
            "no free interface index left for endpoints (at most {} per host)",
            dataplane_common::MAX_ENDPOINTS
        ))
    }

    /// Removes an endpoint the store no longer has: its map entries,
    /// conntrack entries, link pin and veth.
    fn teardown_endpoint(&mut self, id: &str) {
        let Some(a) = self.endpoints.remove(id) else {
            return;
        };
        if let Some((sandbox, ifname)) = &a.in_sandbox {
            // The link goes with its sandbox anyway; a disconnect removes it.
            if let Err(e) = netns::delete_link_in(sandbox, ifname) {
                warn!(link = %ifname, "deleting the macvlan link: {e:#}");
            }
            self.forget(&format!("{}{id}", model::ENDPOINTS));
            return;
        }
        let ip = dataplane_common::ipv4_wire(a.ip.octets());
        {
            let mut dp = self.dp();
            let _ = dp.remove_endpoint(ip, a.ifindex);
            let _ = dp.detach(&a.host_ifname);
            if let Err(e) = dp.flush_conntrack(ip) {
                warn!(ip = %a.ip, "flushing conntrack entries: {e:#}");
            }
        }
        if let Err(e) = netns::delete_link(&a.host_ifname) {
            warn!(veth = %a.host_ifname, "deleting veth: {e:#}");
        }
        self.forget(&format!("{}{id}", model::ENDPOINTS));
    }

    /// Host veths and pinned links no endpoint of the store owns.
    fn sweep_endpoints(&mut self, snap: &Snapshot, observed: Option<&Observed>) {
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|id| !snap.endpoints.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.teardown_endpoint(&id);
        }
        let owned: HashSet<&str> = snap
            .endpoints
            .values()
            .map(|e| e.host_ifname.as_str())
            .collect();
        if let Some(o) = observed {
            for name in o.links.keys() {
                if is_host_veth_name(name) && !owned.contains(name.as_str()) {
                    warn!(veth = %name, "deleting a host veth no endpoint owns");
                    if let Err(e) = netns::delete_link(name) {
                        warn!(veth = %name, "deleting veth: {e:#}");
                    }
                }
            }
        }
        let stale: Vec<String> = self
            .dp()
            .pinned_links()
            .into_iter()
            .filter(|l| !owned.contains(l.as_str()))
            .collect();
        for l in stale {
            info!(link = %l, "removing a pinned link no endpoint owns");
            let _ = self.dp().detach(&l);
        }
    }

    // ----- published ports -----------------------------------------------

    /// Holds a socket on every published host port and makes `PORTS` the
    /// projection of the stored bindings (for `only` containers, or all).
    fn sync_ports(&mut self, snap: &Snapshot, only: Option<&BTreeSet<String>>) {
        let ids: Vec<String> = match only {
            Some(o) => o.iter().cloned().collect(),
            None => snap
                .containers
                .keys()
                .chain(self.reservations.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        for id in &ids {
            let Some(c) = snap.containers.get(id) else {
                self.reservations.remove(id);
                continue;
            };
            if c.ports.is_empty() {
                // Published nothing, or no longer (an attachment's ports
                // revoked): its sockets go.
                self.reservations.remove(id);
                continue;
            }
            // Sockets the engine bound while choosing the ports (they
            // replace any held before), or new ones (after a restart).
            let handed = self.shared.take_reservations(id);
            if handed.is_none() && self.reservations.contains_key(id) {
                continue;
            }
            let held = match handed {
                Some(h) => h,
                None => {
                    let mut held = Vec::new();
                    let sharing = c
                        .runtime()
                        .map_or(ports::Sharing::Exclusive, super::attach::sharing);
                    for b in &c.ports {
                        match ports::hold(&b.proto, b.host_ip, b.host_port, sharing) {
                            Ok((r, _)) => held.extend(r),
                            Err(e) => warn!(
                                container = %c.name,
                                "cannot reserve published port {}:{}/{} again: {}",
                                b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), b.host_port, b.proto, e.desc()
                            ),
                        }
                    }
                    held
                }
            };
            self.reservations.insert(id.clone(), held);
        }
        let dp = self.dp.clone();
        let ports = &mut self.ports;
        let r = (|| -> Result<()> {
            let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
            match only {
                None => {
                    let entries: Vec<_> = snap
                        .containers
                        .keys()
                        .flat_map(|id| snap.port_entries(id))
                        .collect();
                    dp.sync_ports(&entries)?;
                    *ports = snap
                        .containers
                        .keys()
                        .map(|id| {
                            let keys = snap.port_entries(id).into_iter().map(|(k, _)| k).collect();
                            (id.clone(), keys)
                        })
                        .collect();
                }
                Some(o) => {
                    for id in o {
                        for k in ports.remove(id).unwrap_or_default() {
                            dp.remove_port(&k)?;
                        }
                        let entries = snap.port_entries(id);
                        for (k, v) in &entries {
                            dp.set_port(*k, *v)?;
                        }
                        if !entries.is_empty() {
                            ports.insert(id.clone(), entries.into_iter().map(|(k, _)| k).collect());
                        }
                    }
                }
            }
            Ok(())
        })();
        self.outcome("ports", "published ports map", r);
    }

    fn sync_links(&mut self, snap: &Snapshot) {
        let r = self.dp().sync_links(&snap.link_pairs());
        self.outcome("links", "--link table", r);
    }

    // ----- DNS -----------------------------------------------------------

    /// Hands the resolver the names of this revision, starts the resolver
    /// of each sandbox that has none (for `only` containers, or all), stops
    /// those of sandboxes that are gone, and points each sandbox's
    /// 127.0.0.11:53 at its resolver.
    fn sync_dns(&mut self, snap: &Snapshot, only: Option<&BTreeSet<String>>) {
        if self.names_revision != Some(snap.revision) {
            self.dns.update(snap.names());
            self.names_revision = Some(snap.revision);
        }
        let gone: Vec<String> = self
            .dns_servers
            .keys()
            .filter(|id| !snap.containers.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(s) = self.dns_servers.remove(&id) {
                let _ = self.dp().remove_dns_port(s.netns_cookie());
            }
        }
        let ids: Vec<&String> = match only {
            Some(o) => o.iter().collect(),
            None => snap.containers.keys().collect(),
        };
        for id in ids {
            let Some(c) = snap.containers.get(id) else {
                continue;
            };
            // `host` and `none` sandboxes have no names to serve; Docker's
            // own resolver serves its sandboxes.
            if self.dns_servers.contains_key(id) || c.network_mode.is_some() || c.docker().is_some()
            {
                continue;
            }
            let key = format!("dns/{id}");
            if !self.due(&key) {
                continue;
            }
            let path = PathBuf::from(c.sandbox_key());
            if !path.exists() {
                continue;
            }
            let upstreams = (!c.dns.is_empty()).then(|| {
                c.dns
                    .iter()
                    .map(|ip| std::net::SocketAddr::from((*ip, 53)))
                    .collect()
            });
            let r = self.dns.start_sandbox(&path, id, upstreams).map(|server| {
                self.dns_servers.insert(id.clone(), server);
            });
            self.outcome(&key, "embedded DNS server", r);
        }
        let ports: Vec<(u64, u16)> = self
            .dns_servers
            .values()
            .map(|s| (s.netns_cookie(), s.addr().port()))
            .collect();
        let r = self.dp().sync_dns_ports(&ports);
        self.outcome("dns", "resolver ports map", r);
    }
}

/// Whether `name` has the shape of the host-side veths this daemon makes
/// (`dp` and 12 hex digits of an endpoint id).
/// A DHCP endpoint's address as its lease says (none before the first
/// lease or after losing it); nothing to do on other networks.
fn lease_address(net: &Network, ep: &Endpoint, plan: &netns::VethPlan) -> Result<()> {
    if !net.dhcp || !plan.configure_peer {
        return Ok(());
    }
    netns::sync_address(
        &plan.netns,
        &plan.ifname,
        ep.has_address().then_some((ep.ip, plan.prefix)),
        plan.default_route.then_some(plan.gateway),
    )
}

pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14
        && name.starts_with("dp")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, container: &str, ip: &str) -> Endpoint {
        serde_json::from_value(serde_json::json!({
            "id": id, "network_id": "n", "container_id": container, "ip": ip,
            "mac": "02:42:0a:00:00:02", "host_mac": "0e:00:00:00:00:02",
            "host_ifname": format!("dp{id}"), "ifname": "eth0",
        }))
        .expect("an endpoint record")
    }

    fn container(id: &str, task: Option<&str>) -> Container {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": id, "hostname": id, "cmd": [], "netns": id, "pid": null,
            "log_path": "", "created": "", "task": task,
        }))
        .expect("a container record")
    }

    #[test]
    fn replicas_are_task_containers_or_task_addresses() {
        let mut snap = Snapshot::default();
        for c in [
            container("plain", None),
            container("replica", Some("cluster/tasks/s/00001")),
        ] {
            snap.containers.insert(c.id.clone(), c);
        }
        let tasks: HashSet<Ipv4Addr> = ["10.0.0.9".parse().unwrap()].into();
        let is = |ep: &Endpoint| is_replica(&snap, ep, &tasks);
        // A task's container, before its task has an address.
        assert!(is(&endpoint("a", "replica", "10.0.0.3")));
        // An address that is a task's (its container record elsewhere).
        assert!(is(&endpoint("b", "other-host", "10.0.0.9")));
        // Neither.
        assert!(!is(&endpoint("c", "plain", "10.0.0.4")));
        assert_eq!(backend_flag(true), dataplane_common::EP_BACKEND);
        assert_eq!(backend_flag(false), 0);
    }
}

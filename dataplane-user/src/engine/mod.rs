//! The engine: one set of operations (networks, containers, endpoints, host
//! ports) behind every front door. The HTTP API is a thin layer over it; the
//! Docker plugin and the CNI plugin will be two more.
//!
//! Each write validates against a snapshot of the model, commits its intent
//! to the store with guards on everything it read (so that two writers can
//! never hand out the same address, host port, name or network number, and a
//! `network rm` cannot race a `run` on it), then waits for the reconciler to
//! put the kernel work in place. If that fails, it takes its records back out
//! of the store, the reconciler removes what was made, and the caller gets
//! the error: nothing half-made is left. Reads never wait on a write: they
//! answer from the newest snapshot.

pub mod attach;
mod dhcp;
pub mod docker;
pub mod reconcile;
pub mod sandbox;
pub mod services;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, PoisonError, RwLock},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use ipnetwork::Ipv4Network;
use tracing::{info, warn};

pub use self::reconcile::{Problem, Status};
pub use crate::model::snapshot::{NetRef, Snapshot};
use crate::{
    api::{
        error::{bad, ApiError, ApiResult},
        Connect, ContainerCreate, NetworkCreate,
    },
    bpf::Datapath,
    dns::Dns,
    drivers, ipam,
    model::{self, validate, Container, Endpoint, Mac, Network, Pending},
    netns,
    ports::{self, Reservation},
    store::{Revision, Store, StoreError, Txn},
};

/// How long an operation waits for the reconciler before it gives up.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a write whose guards lost a race is validated and tried again.
const COMMIT_ATTEMPTS: usize = 20;

/// A value that only grows, with waiters (the revision the cache or the
/// kernel has reached).
#[derive(Default)]
pub struct Watermark {
    value: Mutex<Revision>,
    changed: Condvar,
}

impl Watermark {
    pub fn advance(&self, to: Revision) {
        let mut v = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        if to > *v {
            *v = to;
            self.changed.notify_all();
        }
    }

    pub fn get(&self) -> Revision {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the value is at least `at_least`; false on timeout.
    pub fn wait(&self, at_least: Revision, timeout: Duration) -> bool {
        let v = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        let (v, _) = self
            .changed
            .wait_timeout_while(v, timeout, |v| *v < at_least)
            .unwrap_or_else(PoisonError::into_inner);
        *v >= at_least
    }
}

/// What the engine, the cache's watch and the reconciler share.
#[derive(Default)]
pub struct Shared {
    cache: RwLock<Arc<Snapshot>>,
    /// The store revision the cache has reached.
    pub cached: Watermark,
    /// The store revision the kernel has been reconciled to.
    pub applied: Watermark,
    pub status: RwLock<Arc<Status>>,
    dirty: Mutex<BTreeSet<String>>,
    dirty_changed: Condvar,
    /// Sockets an operation bound while choosing host ports, handed to the
    /// reconciler (by container id) so that no other process can take the
    /// ports in between.
    handoff: Mutex<HashMap<String, Vec<Reservation>>>,
    pub children: sandbox::Children,
}

impl Shared {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn status(&self) -> Arc<Status> {
        self.status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `snap` the current snapshot and marks `dirty` for the
    /// reconciler, in one step with [`Shared::take_dirty`]: a pass never
    /// sees a snapshot newer than the keys it was handed, so it never
    /// reports a revision as applied whose changes it did not look at.
    fn install(&self, snap: Snapshot, dirty: impl IntoIterator<Item = String>) {
        let rev = snap.revision;
        let mut d = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snap);
        d.extend(dirty);
        drop(d);
        self.cached.advance(rev);
        self.dirty_changed.notify_all();
    }

    /// The keys changed since the last call (waiting up to `wait` for
    /// some) and the snapshot that has every one of them.
    pub fn take_dirty(&self, wait: Duration) -> (BTreeSet<String>, Arc<Snapshot>) {
        let d = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut d, _) = self
            .dirty_changed
            .wait_timeout_while(d, wait, |d| d.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        let keys = std::mem::take(&mut *d);
        (keys, self.snapshot())
    }

    pub fn take_reservations(&self, cid: &str) -> Option<Vec<Reservation>> {
        self.handoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cid)
    }

    fn hand_off(&self, cid: &str, r: Vec<Reservation>) {
        if !r.is_empty() {
            self.handoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(cid.to_string(), r);
        }
    }
}

pub struct Config {
    pub state_dir: PathBuf,
    pub bpffs: PathBuf,
    /// Set when the daemon joins a cluster (`--store etcd://...`).
    pub cluster: Option<ClusterConfig>,
    /// `--docker-plugin`: a Docker engine shares this namespace, so the
    /// default bridge keeps off the pools Docker takes first.
    pub beside_docker: bool,
}

/// This host as a member of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `--node-name`.
    pub node: String,
    /// `--advertise-addr`: the underlay address VXLAN leaves from.
    pub addr: Ipv4Addr,
    /// `--lease-ttl`: how soon other hosts see this one down once it stops.
    pub lease_ttl: Duration,
    /// `--node-grace`: how long a down host's endpoints stay in the maps.
    pub grace: Duration,
}

/// A network Docker creates through our driver.
#[derive(Clone, Debug)]
pub struct DockerNetwork {
    /// Docker's NetworkID (our network's id too).
    pub id: String,
    /// The pool of our IPAM driver the network is on (none with Docker's
    /// default IPAM).
    pub pool: Option<String>,
}

/// What `--driver overlay` says without a cluster.
pub const NEEDS_CLUSTER: &str = "overlay networks span hosts and need a cluster store: start the daemon with --store etcd://HOST:PORT --node-name NAME --advertise-addr IP";

pub struct Engine {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    dp: Arc<Mutex<Datapath>>,
    state_dir: PathBuf,
    cluster: Option<ClusterConfig>,
    /// Keeps `cluster/alive/<node>` while the daemon runs.
    _lease: Mutex<Option<Box<dyn crate::store::Lease>>>,
}

/// ifindex of `name` in the daemon's namespace.
pub fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

fn json<T: serde::Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    Ok(serde_json::to_vec(v).context("encoding a record")?)
}

impl Engine {
    /// Loads the programs (reusing pins), finishes what a daemon that died
    /// half-way left (its intent records), starts the cache and the
    /// reconciler, waits for the first full pass to put the kernel in step
    /// with the store, and makes sure the default `bridge` network exists.
    pub fn start(cfg: Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<Self>> {
        let cfg_beside_docker = cfg.beside_docker;
        let mut dp = Datapath::load(&cfg.bpffs)?;
        // Host processes reach published ports through socket-level
        // translation (no proxy process); only this namespace's sockets.
        crate::sockhook::attach(&mut dp)?;
        netns::enable_forwarding()?;
        Self::abandon_unfinished(store.as_ref())?;
        let lease = match &cfg.cluster {
            Some(c) => Some(Self::join(store.as_ref(), c)?),
            None => None,
        };
        let node = cfg
            .cluster
            .as_ref()
            .map_or(String::new(), |c| c.node.clone());
        let listing = store.list("")?;
        let snap = Snapshot::from_listing(&listing, &node)?;
        let shared = Arc::new(Shared::default());
        shared.install(snap, []);
        let dp = Arc::new(Mutex::new(dp));
        let dns = Dns::new(Dns::upstreams_from_resolv_conf(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ));
        let watch = store.watch("", listing.revision)?;
        {
            let (store, shared) = (store.clone(), shared.clone());
            std::thread::Builder::new()
                .name("store-watch".into())
                .spawn(move || follow(store, shared, watch, node))?;
        }
        let reconciler = reconcile::Reconciler::new(
            shared.clone(),
            dp.clone(),
            cfg.state_dir.clone(),
            dns,
            cfg.cluster.clone(),
        );
        std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || reconciler.run())?;
        if !shared.applied.wait(listing.revision, APPLY_TIMEOUT) {
            anyhow::bail!("the first reconciliation did not finish");
        }
        let engine = Arc::new(Engine {
            store,
            shared,
            dp,
            state_dir: cfg.state_dir,
            cluster: cfg.cluster,
            _lease: Mutex::new(lease),
        });
        let snap = engine.snapshot();
        if !snap.networks.values().any(|n| n.name == "bridge") {
            let bridge = |subnet: Option<&str>, gateway: Option<&str>| NetworkCreate {
                name: "bridge".into(),
                subnet: subnet.map(Into::into),
                gateway: gateway.map(Into::into),
                ..Default::default()
            };
            // Docker's 172.17.0.0/16, unless the host already routes it (a
            // Docker engine beside us): then the first free default pool.
            // Beside a Docker engine that may start later (the plugin), the
            // last free default pool: Docker takes 172.17 for docker0 and
            // the first pools for its own networks, and sees no route of
            // ours while our bridge has no container.
            let beside_docker = (cfg_beside_docker).then(|| {
                let pools: Vec<Ipv4Network> = ipam::default_pools().collect();
                pools.into_iter().rev().find_map(|p| {
                    let s = p.to_string();
                    engine.create_network(bridge(Some(&s), None)).ok()
                })
            });
            let made = match beside_docker {
                Some(Some(id)) => Ok(id),
                Some(None) => Err(ApiError::Conflict("no free default pool".into())),
                None => engine
                .create_network(bridge(Some("172.17.0.0/16"), Some("172.17.0.1")))
                .or_else(|e| match e {
                    ApiError::BadRequest(_) | ApiError::Conflict(_) => {
                        warn!("the default bridge cannot have 172.17.0.0/16 ({e}); taking a free pool");
                        engine.create_network(bridge(None, None))
                    }
                    e => Err(e),
                }),
            };
            made.map_err(|e| anyhow!("creating the default bridge network: {e}"))?;
        }
        engine.start_agent()?;
        engine.start_dhcp()?;
        let snap = engine.snapshot();
        info!(
            networks = snap.networks.len(),
            endpoints = snap.endpoints.len(),
            containers = snap.containers.len(),
            "state restored"
        );
        Ok(engine)
    }

    /// Records this host in the cluster (its underlay address) and keeps its
    /// liveness key alive for as long as the daemon runs.
    fn join(store: &dyn Store, c: &ClusterConfig) -> anyhow::Result<Box<dyn crate::store::Lease>> {
        let key = format!("{}{}", model::NODES, c.node);
        let old: Option<model::Node> = store
            .get(&key)?
            .and_then(|e| serde_json::from_slice(&e.value).ok());
        if old.as_ref().is_none_or(|n| n.addr != c.addr) {
            let node = model::Node {
                name: c.node.clone(),
                addr: c.addr,
                joined: old.map_or_else(model::now_rfc3339, |n| n.joined),
            };
            let mut t = Txn::default();
            t.put(key, serde_json::to_vec(&node)?);
            store.commit(t)?;
        }
        let alive = format!("{}{}", model::ALIVE, c.node);
        let lease = store.keep_alive(&alive, model::now_rfc3339().into_bytes(), c.lease_ttl)?;
        info!(node = %c.node, addr = %c.addr, "joined the cluster");
        Ok(lease)
    }

    /// This host's name in the cluster ("" alone).
    pub fn node(&self) -> &str {
        self.cluster.as_ref().map_or("", |c| c.node.as_str())
    }

    /// Deletes what operations of a daemon that died half-way committed
    /// (the keys their intent records name); the reconciler then removes
    /// what they had made in the kernel.
    fn abandon_unfinished(store: &dyn Store) -> anyhow::Result<()> {
        for e in store.list(model::PENDING)?.entries {
            let p: Pending =
                serde_json::from_slice(&e.value).with_context(|| format!("decoding {}", e.key))?;
            warn!(container = %p.container_id, netns = %p.netns, "cleaning up a run the previous daemon did not finish");
            let mut t = Txn::default();
            t.delete(e.key.clone());
            for k in &p.keys {
                t.delete(k.clone());
            }
            store.commit(t)?;
        }
        Ok(())
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot()
    }

    pub fn status(&self) -> Arc<Status> {
        self.shared.status()
    }

    /// The pinned conntrack map, which the upkeep task expires on its own
    /// handle (see [`crate::bpf::expire_conntrack_at`]).
    pub fn ct_pin(&self) -> PathBuf {
        self.dp
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ct_pin()
    }

    pub fn stats(&self) -> ApiResult<serde_json::Value> {
        let dp = self.dp.lock().unwrap_or_else(PoisonError::into_inner);
        let services = services::counters(&self.snapshot(), &dp.service_stats()?);
        Ok(serde_json::json!({
            "programs": dp.stats()?,
            "conntrack": {"entries": dp.conntrack_entries()?},
            "services": services,
        }))
    }

    // ----- committing and waiting ----------------------------------------

    /// Waits until the cache has caught up with the store (after a commit
    /// that lost a race: the winner's change is then visible).
    fn catch_up(&self) -> ApiResult<()> {
        let rev = self.store.list(model::PENDING)?.revision;
        if !self.shared.cached.wait(rev, APPLY_TIMEOUT) {
            return Err(ApiError::Internal(anyhow!(
                "the model cache is not keeping up with the store"
            )));
        }
        Ok(())
    }

    /// Waits until the reconciler has applied revision `rev`; returns the
    /// problems of `keys` if any of them is not in place.
    fn applied(&self, rev: Revision, keys: &[String]) -> ApiResult<Option<String>> {
        if !self.shared.applied.wait(rev, APPLY_TIMEOUT) {
            return Err(ApiError::Internal(anyhow!(
                "the kernel work was not done within {}s (see the daemon's log)",
                APPLY_TIMEOUT.as_secs()
            )));
        }
        let status = self.status();
        let problems: Vec<String> = keys
            .iter()
            .filter_map(|k| status.problems.get(k))
            .map(|p| format!("{}: {}", p.what, p.error))
            .collect();
        Ok((!problems.is_empty()).then(|| problems.join("; ")))
    }

    /// Commits `build(snapshot)`, validating again on a fresh snapshot each
    /// time the guards find that another writer got there first.
    fn commit_with<T>(
        &self,
        mut build: impl FnMut(&Snapshot) -> ApiResult<(Txn, T)>,
    ) -> ApiResult<(Revision, T)> {
        for _ in 0..COMMIT_ATTEMPTS {
            let snap = self.snapshot();
            let (txn, out) = build(&snap)?;
            match self.store.commit(txn) {
                Ok(rev) => {
                    self.shared.cached.wait(rev, APPLY_TIMEOUT);
                    return Ok((rev, out));
                }
                Err(StoreError::Conflict { .. }) => self.catch_up()?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Conflict(
            "too many concurrent changes to the same objects; try again".into(),
        ))
    }

    /// Takes an unfinished operation's records back out of the store and
    /// waits until the reconciler has removed what it made.
    fn roll_back(&self, pending: &Pending) {
        let mut t = Txn::default();
        t.delete(pending.key());
        for k in &pending.keys {
            t.delete(k.clone());
        }
        match self.store.commit(t) {
            Ok(rev) => {
                let _ = self.applied(rev, &[]);
            }
            Err(e) => warn!("taking back the records of a failed operation: {e:#}"),
        }
    }

    // ----- networks ------------------------------------------------------

    pub fn create_network(&self, req: NetworkCreate) -> ApiResult<String> {
        self.create_network_as(req, None)
    }

    /// `create_network`, for Docker's network `docker` when given: the
    /// network takes Docker's NetworkID as its id, and adopts the pool of
    /// Docker's IPAM it was asked on, if it was (our IPAM driver).
    pub(crate) fn create_network_as(
        &self,
        req: NetworkCreate,
        docker: Option<DockerNetwork>,
    ) -> ApiResult<String> {
        if !validate::valid_name(&req.name) {
            return Err(bad(format!(
                "invalid network name {:?}: use letters, digits, '_', '.', '-', starting with a letter or digit",
                req.name
            )));
        }
        let driver_name = req.driver.clone().unwrap_or_else(|| "bridge".into());
        let driver = drivers::get(&driver_name).map_err(bad)?;
        if !driver.user_creatable() {
            return Err(bad(format!(
                "only one instance of {driver_name:?} network is allowed: it is predefined as network {driver_name}"
            )));
        }
        if drivers::predefined(&req.name).is_some() {
            return Err(ApiError::Conflict(format!(
                "network with name {} already exists",
                req.name
            )));
        }
        let subnet = req
            .subnet
            .as_deref()
            .map(|s| validate::parse_cidr(s, "subnet"))
            .transpose()?;
        let gateway = req
            .gateway
            .as_deref()
            .map(|s| validate::parse_ip(s, "gateway"))
            .transpose()?;
        let ip_range = req
            .ip_range
            .as_deref()
            .map(|s| validate::parse_cidr(s, "ip-range"))
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
            aux.insert(k.clone(), validate::parse_ip(v, "aux-address")?);
        }
        if req.options.keys().any(String::is_empty) {
            return Err(bad("invalid --opt: expected KEY=VALUE"));
        }
        let overlay = driver_name == "overlay";
        if overlay && self.cluster.is_none() {
            return Err(bad(NEEDS_CLUSTER));
        }
        let opts = validate::overlay_options(&req.options, overlay, subnet)?;
        let macvlan = validate::macvlan_options(&req.options, driver_name == "macvlan", |n| {
            ifindex_of(n).is_some()
        })?;
        let dhcp = match req.ipam_driver.as_deref() {
            None | Some("default") => false,
            Some("dhcp") => true,
            Some(other) => {
                return Err(bad(format!(
                    "unknown IPAM driver {other:?}: this daemon offers default and dhcp"
                )))
            }
        };
        if dhcp {
            if macvlan.is_none() {
                return Err(bad(
                    "--ipam-driver dhcp takes its addresses from a LAN's DHCP server: it needs a macvlan network (--driver macvlan -o parent=IFACE)",
                ));
            }
            if subnet.is_none() {
                return Err(bad(
                    "--ipam-driver dhcp needs the LAN's --subnet: a lease outside it is refused",
                ));
            }
            if ip_range.is_some() || !req.aux_addresses.is_empty() {
                return Err(bad(
                    "--ip-range and --aux-address are the DHCP server's business on an --ipam-driver dhcp network",
                ));
            }
        }
        if let Some(m) = &macvlan {
            if req.internal {
                return Err(bad(
                    "a macvlan network is on a LAN: --internal is not offered (use a bridge network)",
                ));
            }
            netns::check_parent(&m.parent).map_err(|e| bad(format!("{e:#}")))?;
        }
        // A macvlan network's subnet is the LAN's, which the host's own
        // routes usually cover: only the bridge kinds must stay clear of them.
        let host_routes = if macvlan.is_some() {
            Vec::new()
        } else {
            ipam::host_routes()
        };
        let pool_id = docker.as_ref().and_then(|d| d.pool.clone());
        let (rev, net) = self.commit_with(|snap| {
            if let Some(d) = &docker {
                if let Some(n) = snap.networks.get(&d.id) {
                    return Ok((Txn::default(), n.clone()));
                }
            }
            if snap.networks.values().any(|n| n.name == req.name) {
                return Err(ApiError::Conflict(format!(
                    "network with name {} already exists",
                    req.name
                )));
            }
            if let Some(m) = &macvlan {
                if let Some(n) = snap.networks.values().find(|n| {
                    n.macvlan
                        .as_ref()
                        .is_some_and(|o| o.parent == m.parent && o.vlan == m.vlan)
                }) {
                    return Err(ApiError::Conflict(format!(
                        "{} is already the segment of macvlan network {}: one network per parent and VLAN",
                        m.segment(),
                        n.name
                    )));
                }
            }
            let existing = snap.taken_subnets(pool_id.as_deref());
            let pool = match &pool_id {
                Some(id) => Some(snap.pools.get(id).cloned().ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "no such address pool {id} (ask the IPAM driver for one first)"
                    ))
                })?),
                None => None,
            };
            let ip_range = ip_range.or(pool.as_ref().and_then(|p| p.ip_range));
            let (subnet, gateway) = ipam::plan_network(
                &ipam::NetworkRequest {
                    subnet,
                    gateway,
                    ip_range,
                    aux_addresses: aux.clone(),
                },
                &existing,
                &host_routes,
            )?;
            let shared: Vec<&Network> = snap.networks.values().filter(|n| n.is_cluster()).collect();
            let (num, vni) = if overlay {
                let vni = match opts.vni {
                    Some(v) => {
                        if let Some(n) = shared.iter().find(|n| n.vni == v) {
                            return Err(ApiError::Conflict(format!(
                                "VNI {v} is taken by overlay network {}",
                                n.name
                            )));
                        }
                        v
                    }
                    None => (validate::FIRST_AUTO_VNI..=validate::MAX_VNI)
                        .find(|v| !shared.iter().any(|n| n.vni == *v))
                        .ok_or_else(|| ApiError::Conflict("no free VNI left".into()))?,
                };
                (0, vni)
            } else {
                let num = (1u32..)
                    .find(|i| !snap.networks.values().any(|n| n.num == *i))
                    .expect("u32 space");
                if num > dataplane_common::MAX_NETWORKS {
                    return Err(ApiError::Conflict("too many networks".into()));
                }
                (num, 0)
            };
            let net = Network {
                id: docker.as_ref().map_or_else(model::new_id, |d| d.id.clone()),
                name: req.name.clone(),
                driver: driver_name.clone(),
                num,
                subnet,
                gateway,
                ip_range,
                aux_addresses: aux.clone(),
                internal: req.internal,
                options: req.options.clone(),
                created: model::now_rfc3339(),
                vni,
                block_prefix: if overlay {
                    opts.block_prefix
                        .unwrap_or_else(|| ipam::default_block_prefix(subnet))
                } else {
                    0
                },
                vteps: opts.vteps.clone(),
                labels: req.labels.clone(),
                attachable: req.attachable,
                docker: docker.is_some(),
                macvlan: macvlan.clone(),
                dhcp,
            };
            // Names and subnets are checked against this host's networks
            // and the cluster's: both sets are guarded, the network's own
            // one is rewritten.
            let (own, other) = if overlay {
                (model::CLUSTER_NETWORKS_CLAIM, model::NETWORKS_CLAIM)
            } else {
                (model::NETWORKS_CLAIM, model::CLUSTER_NETWORKS_CLAIM)
            };
            let mut t = Txn::default();
            t.unchanged(own, snap.rev_of(own))
                .unchanged(other, snap.rev_of(other))
                .put(own, net.id.clone().into_bytes())
                .put(net.key(), json(&net)?);
            if let Some(mut p) = pool {
                t.unchanged(p.key(), snap.rev_of(&p.key()));
                p.network_id = Some(net.id.clone());
                t.put(p.key(), json(&p)?);
            }
            Ok((t, net))
        })?;
        if let Some(problem) = self.applied(rev, &[net.key()])? {
            let mut t = Txn::default();
            t.delete(net.key());
            if let Ok(rev) = self.store.commit(t) {
                let _ = self.applied(rev, &[]);
            }
            return Err(ApiError::Internal(anyhow!(
                "creating network {}: {problem}",
                net.name
            )));
        }
        info!(network = %net.name, subnet = %net.subnet, "network created");
        Ok(net.id)
    }

    pub fn remove_network(&self, name: &str) -> ApiResult<()> {
        if drivers::predefined(name).is_some() || name == "bridge" {
            return Err(ApiError::Conflict(format!(
                "{name} is a pre-defined network and cannot be removed"
            )));
        }
        let (rev, net) = self.commit_with(|snap| {
            let id = snap.network_id(name)?;
            let net = snap.networks[&id].clone();
            if net.name == "bridge" {
                return Err(ApiError::Conflict(
                    "bridge is a pre-defined network and cannot be removed".into(),
                ));
            }
            let mut attached: Vec<String> = snap
                .endpoints_of_network(&id)
                .iter()
                .filter_map(|e| snap.containers.get(&e.container_id).map(|c| c.name.clone()))
                .collect();
            attached.extend(
                snap.remote_endpoints_of_network(&id)
                    .iter()
                    .map(|e| format!("{} on {}", e.container_name, e.node)),
            );
            if !attached.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "network {} has active endpoints ({})",
                    net.name,
                    attached.join(", ")
                )));
            }
            // A service holds its VIP on the network (and starts replicas
            // there) even while none of them runs.
            let services: Vec<&str> = snap
                .services
                .values()
                .filter(|s| s.network == id)
                .map(|s| s.name.as_str())
                .collect();
            if !services.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "network {} is used by services ({}): remove them first",
                    net.name,
                    services.join(", ")
                )));
            }
            if net.is_cluster() && self.cluster.is_none() {
                return Err(bad(NEEDS_CLUSTER));
            }
            let using = model::net_use_claim(&net);
            let claim = if net.is_cluster() {
                model::CLUSTER_NETWORKS_CLAIM
            } else {
                model::NETWORKS_CLAIM
            };
            let mut t = Txn::default();
            t.unchanged(net.key(), snap.rev_of(&net.key()))
                .unchanged(using.clone(), snap.rev_of(&using))
                .unchanged(claim, snap.rev_of(claim))
                .put(claim, id.clone().into_bytes())
                .delete(net.key())
                .delete(using);
            for (block, _) in snap.blocks.get(&id).into_iter().flatten() {
                t.delete(model::block_key(&id, *block));
            }
            Ok((t, net))
        })?;
        // The gateway goes with the next pass; a failure there is the
        // reconciler's to retry and log, not this call's.
        self.applied(rev, &[])?;
        info!(network = %net.name, "network removed");
        Ok(())
    }

    /// `network prune`: removes the networks [`Snapshot::unused_networks`]
    /// names whose labels pass `f`, and returns their names. One that
    /// gains an endpoint or goes away meanwhile is left to whoever won.
    pub fn prune_networks(&self, f: &crate::api::filters::Filters) -> ApiResult<Vec<String>> {
        let snap = self.snapshot();
        let mut gone = Vec::new();
        for (net, name) in snap.unused_networks() {
            if !f.labels(&net.labels) {
                continue;
            }
            match self.remove_network(&net.id) {
                Ok(()) => gone.push(name),
                Err(ApiError::Conflict(e) | ApiError::NotFound(e)) => {
                    info!(network = %name, "not pruned: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(gone)
    }

    // ----- containers ----------------------------------------------------

    pub fn run(&self, req: ContainerCreate) -> ApiResult<String> {
        self.run_as(req, None)
    }

    /// `run`, for the replica of service task `task` (its key) when given.
    pub(crate) fn run_as(&self, req: ContainerCreate, task: Option<String>) -> ApiResult<String> {
        let id = model::new_id();
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("dp_{}", &id[..8]));
        if !validate::valid_name(&name) {
            return Err(bad(format!("invalid container name {name:?}")));
        }
        if req.cmd.is_empty() {
            return Err(bad(
                "no command given: dataplane run [OPTIONS] -- CMD [ARGS...]",
            ));
        }
        if sandbox::resolve_command(&req.cmd[0]).is_none() {
            return Err(bad(format!("executable file not found: {}", req.cmd[0])));
        }
        let ip = req
            .ip
            .as_deref()
            .map(|s| validate::parse_ip(s, "--ip"))
            .transpose()?;
        let hostname = req.hostname.clone().unwrap_or_else(|| id[..12].to_string());
        if !validate::valid_hostname(&hostname) {
            return Err(bad(format!("invalid hostname {hostname:?}")));
        }
        let aliases = validate::check_aliases(&req.network_aliases)?;
        let dns = req
            .dns
            .iter()
            .map(|s| validate::parse_ip(s, "--dns"))
            .collect::<ApiResult<Vec<_>>>()?;
        validate::check_env(&req.env)?;
        let exposed = req
            .expose
            .iter()
            .map(|p| {
                let (port, proto) = ports::parse_private_port(p).map_err(bad)?;
                Ok(format!("{port}/{proto}"))
            })
            .collect::<ApiResult<Vec<_>>>()?;
        let mut port_reqs = Vec::new();
        for spec in &req.publish {
            port_reqs.extend(ports::parse_publish(spec).map_err(bad)?);
        }
        if req.publish_all {
            let all = ports::publish_all_requests(&exposed, &port_reqs);
            port_reqs.extend(all);
        }
        let ns_name = model::sandbox_netns_name(&id);
        let log_path = self.log_path(&id);
        let network = req.network.clone().unwrap_or_else(|| "bridge".into());
        let (rev, (ctr, pending, nid)) = self
            .commit_with(|snap| {
                if snap.containers.values().any(|c| c.name == name) {
                    return Err(ApiError::Conflict(format!(
                        "container name {name} is already in use"
                    )));
                }
                let net_ref = snap.network_ref(&network)?;
                let (nid, mode) = match &net_ref {
                    NetRef::Stored(nid) => (Some(nid.clone()), None),
                    NetRef::Predefined(d) => (None, Some(d.to_string())),
                };
                if mode.is_some() {
                    if ip.is_some() || !aliases.is_empty() {
                        return Err(bad(format!(
                            "--ip and --network-alias need a network with addresses, not {network}"
                        )));
                    }
                    if !port_reqs.is_empty() {
                        return Err(bad(format!(
                            "cannot publish ports of a container on network {network}: {}",
                            if network == "host" {
                                "it already uses the host's ports directly"
                            } else {
                                "it has no network interface"
                            }
                        )));
                    }
                    if !req.links.is_empty() {
                        return Err(bad(format!(
                            "--link needs a network with addresses, not {network}"
                        )));
                    }
                }
                let links = match &nid {
                    Some(nid) => self.parse_links(snap, &req.links, nid)?,
                    None => Vec::new(),
                };
                if let Some(nid) = &nid {
                    let net = &snap.networks[nid];
                    if !port_reqs.is_empty() && net.macvlan.is_some() {
                        return Err(bad(format!(
                            "cannot publish ports of a container on macvlan network {}: it has its own address on the LAN, reach it there",
                            net.name
                        )));
                    }
                    if !req.publish.is_empty() && snap.networks[nid].internal {
                        // An internal network has no way in or out (Docker
                        // publishes nothing there either); say so instead of a
                        // dead port.
                        return Err(bad(format!(
                            "cannot publish ports of a container on internal network {}",
                            snap.networks[nid].name
                        )));
                    }
                }
                // Refuse a published port that is taken before binding anything.
                let taken = snap.taken_ports();
                ports::precheck(&port_reqs, &taken)?;
                let mut t = Txn::default();
                let endpoint = match &nid {
                    Some(nid) => {
                        let net = &snap.networks[nid];
                        let ip = self.allocate(snap, net, ip, &mut t)?;
                        Some(self.new_endpoint(
                            net,
                            &id,
                            ip,
                            "eth0".into(),
                            aliases.clone(),
                            (&name, &hostname),
                        ))
                    }
                    None => None,
                };
                // The host ports are held from here on; the reconciler adopts
                // the sockets, or they are released if the commit fails. A
                // retry first lets go of what the attempt before it held.
                drop(self.shared.take_reservations(&id));
                let (bindings, reserved) = ports::allocate(&port_reqs, &taken)?;
                let ctr = Container {
                    id: id.clone(),
                    name: name.clone(),
                    hostname: hostname.clone(),
                    cmd: req.cmd.clone(),
                    netns: if mode.as_deref() == Some("host") {
                        String::new()
                    } else {
                        ns_name.clone()
                    },
                    pid: None,
                    log_path: log_path.clone(),
                    created: model::now_rfc3339(),
                    dns: dns.clone(),
                    links,
                    env: req.env.clone(),
                    exposed: exposed.clone(),
                    ports: bindings,
                    publish: req.publish.clone(),
                    publish_all: req.publish_all,
                    network_mode: mode,
                    task: task.clone(),
                    external: None,
                    labels: req.labels.clone(),
                };
                let mut keys = vec![ctr.key(), model::name_claim(&name)];
                t.absent(model::name_claim(&name))
                    .put(model::name_claim(&name), id.clone().into_bytes());
                if let (Some(nid), Some(ep)) = (&nid, &endpoint) {
                    let net = &snap.networks[nid];
                    let net_key = net.key();
                    let claim = model::endpoint_claim(net, ep);
                    t.unchanged(net_key.clone(), snap.rev_of(&net_key))
                        .absent(claim.clone())
                        .put(claim.clone(), ep.id.clone().into_bytes())
                        .put(model::net_use_claim(net), ep.id.clone().into_bytes())
                        .put(ep.key(), json(ep)?);
                    keys.extend([ep.key(), claim]);
                }
                if !ctr.ports.is_empty() {
                    t.unchanged(model::PORTS_CLAIM, snap.rev_of(model::PORTS_CLAIM))
                        .put(model::PORTS_CLAIM, id.clone().into_bytes());
                }
                let pending = Pending {
                    op: id.clone(),
                    container_id: id.clone(),
                    netns: ctr.netns.clone(),
                    keys,
                };
                t.put(ctr.key(), json(&ctr)?)
                    .put(pending.key(), json(&pending)?);
                self.shared.hand_off(&id, reserved);
                Ok((t, (ctr, pending, nid)))
            })
            .inspect_err(|_| drop(self.shared.take_reservations(&id)))?;
        let mut check = vec![ctr.key()];
        check.extend(
            self.snapshot()
                .endpoints_of_container(&id)
                .iter()
                .map(|e| e.key()),
        );
        let fail = |e: ApiError| {
            self.roll_back(&pending);
            drop(self.shared.take_reservations(&id));
            Err(e)
        };
        match self.applied(rev, &check) {
            Ok(None) => {}
            Ok(Some(problem)) => {
                return fail(ApiError::Internal(anyhow!("starting {name}: {problem}")))
            }
            Err(e) => return fail(e),
        }
        // A DHCP network's address comes now, on the link just made.
        if let Err(e) = self.lease_new_endpoints(&id, &pending) {
            return fail(e);
        }
        let snap = self.snapshot();
        let mut ctr = ctr;
        let env = match &nid {
            Some(nid) => sandbox::link_env(&snap, &ctr, nid),
            None => sandbox::link_env(&snap, &ctr, ""),
        };
        let child = match sandbox::spawn(&ctr, &env) {
            Ok(c) => c,
            Err(e) => return fail(e.into()),
        };
        let pid = child.id();
        self.shared.children.adopt(child);
        ctr.pid = Some(pid);
        crate::fault::point("run-before-commit");
        let mut t = Txn::default();
        t.unchanged(ctr.key(), snap.rev_of(&ctr.key()))
            .put(ctr.key(), json(&ctr)?)
            .delete(pending.key());
        match self.store.commit(t) {
            Ok(rev) => {
                self.shared.cached.wait(rev, APPLY_TIMEOUT);
            }
            Err(e) => {
                sandbox::kill_group(pid, Duration::from_secs(1));
                return fail(match e {
                    StoreError::Conflict { .. } => {
                        ApiError::Conflict(format!("container {name} was removed while it started"))
                    }
                    e => e.into(),
                });
            }
        }
        info!(container = %ctr.name, "container started");
        Ok(id)
    }

    /// Where container `id`'s output goes (its state directory, which the
    /// reconciler makes).
    fn log_path(&self, id: &str) -> String {
        self.state_dir
            .join("containers")
            .join(id)
            .join("log")
            .display()
            .to_string()
    }

    /// Resolves `--link NAME[:ALIAS]` arguments: the target must exist and
    /// share the network `nid` the new container joins.
    fn parse_links(
        &self,
        snap: &Snapshot,
        links: &[String],
        nid: &str,
    ) -> ApiResult<Vec<model::Link>> {
        links
            .iter()
            .map(|l| {
                let (name, alias) = l.split_once(':').unwrap_or((l.as_str(), l.as_str()));
                if name.is_empty() || alias.is_empty() || !validate::valid_hostname(alias) {
                    return Err(bad(format!("invalid --link {l:?}: expected NAME[:ALIAS]")));
                }
                let cid = snap.container_id(name)?;
                if !snap
                    .endpoints_of_container(&cid)
                    .iter()
                    .any(|e| e.network_id == nid)
                {
                    return Err(bad(format!(
                        "cannot link to {name}: it is not on network {}",
                        snap.networks[nid].name
                    )));
                }
                Ok(model::Link {
                    container_id: cid,
                    alias: alias.to_string(),
                })
            })
            .collect()
    }

    pub fn connect(&self, network: &str, req: Connect) -> ApiResult<()> {
        let ip = req
            .ip
            .as_deref()
            .map(|s| validate::parse_ip(s, "--ip"))
            .transpose()?;
        let aliases = validate::check_aliases(&req.aliases)?;
        let (rev, (ep, pending)) = self.commit_with(|snap| {
            let cid = snap.container_id(&req.container)?;
            let c = &snap.containers[&cid];
            attach::refuse_rm(c)?;
            let nid = match snap.network_ref(network)? {
                NetRef::Stored(nid) => nid,
                NetRef::Predefined(d) => {
                    return Err(bad(format!(
                        "container cannot be connected to network {d}: it is for containers started on it"
                    )))
                }
            };
            if let Some(mode) = &c.network_mode {
                return Err(bad(format!(
                    "container {} uses network {mode} and cannot be connected to other networks",
                    c.name
                )));
            }
            let eps = snap.endpoints_of_container(&cid);
            if eps.iter().any(|e| e.network_id == nid) {
                return Err(ApiError::Conflict(format!(
                    "container {} is already attached to network {}",
                    c.name, snap.networks[&nid].name
                )));
            }
            let ifname = (0u32..)
                .map(|i| format!("eth{i}"))
                .find(|n| !eps.iter().any(|e| &e.ifname == n))
                .expect("free ethN");
            let net = &snap.networks[&nid];
            let mut t = Txn::default();
            let ip = self.allocate(snap, net, ip, &mut t)?;
            let ep = self.new_endpoint(
                net,
                &cid,
                ip,
                ifname,
                aliases.clone(),
                (&c.name, &c.hostname),
            );
            let claim = model::endpoint_claim(net, &ep);
            let pending = Pending {
                op: ep.id.clone(),
                container_id: cid.clone(),
                netns: c.netns.clone(),
                keys: vec![ep.key(), claim.clone()],
            };
            t.unchanged(net.key(), snap.rev_of(&net.key()))
                .unchanged(c.key(), snap.rev_of(&c.key()))
                .absent(claim.clone())
                .put(claim, ep.id.clone().into_bytes())
                .put(model::net_use_claim(net), ep.id.clone().into_bytes())
                .put(ep.key(), json(&ep)?)
                .put(pending.key(), json(&pending)?);
            Ok((t, (ep, pending)))
        })?;
        match self.applied(rev, &[ep.key()]) {
            Ok(None) => {}
            Ok(Some(problem)) => {
                self.roll_back(&pending);
                return Err(ApiError::Internal(anyhow!("connecting: {problem}")));
            }
            Err(e) => {
                self.roll_back(&pending);
                return Err(e);
            }
        }
        if !ep.has_address() {
            if let Err(e) = self.lease_endpoint(&ep.id, &pending) {
                self.roll_back(&pending);
                return Err(e);
            }
        }
        crate::fault::point("connect-before-commit");
        let mut t = Txn::default();
        t.delete(pending.key());
        let rev = self.store.commit(t)?;
        self.shared.cached.wait(rev, APPLY_TIMEOUT);
        Ok(())
    }

    pub fn disconnect(&self, network: &str, container: &str) -> ApiResult<()> {
        {
            let snap = self.snapshot();
            if let (Ok(nid), Ok(cid)) = (snap.network_id(network), snap.container_id(container)) {
                let eps: Vec<&Endpoint> = snap
                    .endpoints_of_container(&cid)
                    .into_iter()
                    .filter(|e| e.network_id == nid)
                    .collect();
                self.release_leases(&snap, &eps);
            }
        }
        let (rev, ()) = self.commit_with(|snap| {
            let nid = snap.network_id(network)?;
            let cid = snap.container_id(container)?;
            attach::refuse_rm(&snap.containers[&cid])?;
            let ep = snap
                .endpoints_of_container(&cid)
                .into_iter()
                .find(|e| e.network_id == nid)
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "container {} is not connected to network {}",
                        snap.containers[&cid].name, snap.networks[&nid].name
                    ))
                })?;
            let mut t = Txn::default();
            t.unchanged(ep.key(), snap.rev_of(&ep.key()))
                .delete(ep.key())
                .delete(snap.ip_claim_of(ep));
            Ok((t, ()))
        })?;
        self.applied(rev, &[])?;
        Ok(())
    }

    pub fn remove_container(&self, name: &str, force: bool) -> ApiResult<()> {
        let snap = self.snapshot();
        let cid = snap.container_id(name)?;
        let ctr = snap.containers[&cid].clone();
        attach::refuse_rm(&ctr)?;
        let running = ctr.pid.is_some_and(crate::host::process_alive);
        if running && !force {
            return Err(ApiError::Conflict(format!(
                "container {} is running: stop it first or use rm -f",
                ctr.name
            )));
        }
        if let Some(pid) = ctr.pid.filter(|_| running) {
            sandbox::kill_group(pid, Duration::from_secs(3));
        }
        self.release_leases(&snap, &snap.endpoints_of_container(&cid));
        let (rev, ()) = self.commit_with(|snap| {
            let Some(c) = snap.containers.get(&cid) else {
                return Err(ApiError::NotFound(format!("no such container: {name}")));
            };
            let mut t = Txn::default();
            t.unchanged(c.key(), snap.rev_of(&c.key()))
                .delete(c.key())
                .delete(model::name_claim(&c.name));
            for e in snap.endpoints_of_container(&cid) {
                t.delete(e.key()).delete(snap.ip_claim_of(e));
            }
            for (k, p) in &snap.pending {
                if p.container_id == cid {
                    t.delete(format!("{}{k}", model::PENDING));
                }
            }
            Ok((t, ()))
        })?;
        crate::fault::point("rm-after-commit");
        self.applied(rev, &[])?;
        info!(container = %ctr.name, "container removed");
        Ok(())
    }
}

impl Engine {
    /// Picks an address of `net` (in this host's blocks, for a shared
    /// network: a block it must claim goes into `t`, guarded so that no two
    /// hosts claim it).
    fn allocate(
        &self,
        snap: &Snapshot,
        net: &Network,
        requested: Option<Ipv4Addr>,
        t: &mut Txn,
    ) -> ApiResult<Ipv4Addr> {
        if net.dhcp {
            if requested.is_some() {
                return Err(bad(format!(
                    "--ip is not offered on network {}: its addresses come from the LAN's DHCP server",
                    net.name
                )));
            }
            return Ok(Ipv4Addr::UNSPECIFIED);
        }
        let used = snap.used_ips(&net.id);
        if net.vlan().is_some() {
            let members = snap
                .endpoints
                .values()
                .filter(|e| e.network_id == net.id)
                .count();
            if members >= dataplane_common::vlan::MAX_VLAN_MEMBERS {
                return Err(ApiError::Conflict(format!(
                    "VLAN network {} has {members} containers on this host, the most it takes",
                    net.name
                )));
            }
        }
        if !net.is_cluster() {
            return Ok(ipam::allocate(net, &used, requested)?);
        }
        if let Some(local) = snap
            .networks
            .values()
            .find(|n| !n.is_cluster() && n.subnet.overlaps(net.subnet))
        {
            return Err(ApiError::Conflict(format!(
                "overlay network {} ({}) overlaps {} of this host's network {}: this host cannot serve it",
                net.name, net.subnet, local.subnet, local.name
            )));
        }
        let blocks = snap.blocks.get(&net.id).map_or(&[][..], Vec::as_slice);
        let pick = ipam::allocate_in_blocks(net, &used, requested, blocks, self.node())?;
        if let Some(b) = pick.new_block {
            let key = model::block_key(&net.id, b);
            t.absent(key.clone())
                .put(key, self.node().as_bytes().to_vec());
        }
        Ok(pick.ip)
    }

    /// A new endpoint of `net` for container `cid` (`ctr`: its name and
    /// hostname, which an endpoint of a shared network carries for the
    /// other hosts).
    fn new_endpoint(
        &self,
        net: &Network,
        cid: &str,
        ip: Ipv4Addr,
        ifname: String,
        aliases: Vec<String>,
        ctr: (&str, &str),
    ) -> Endpoint {
        let id = model::new_id();
        let shared = net.is_cluster();
        let or_empty = |s: &str| if shared { s.to_string() } else { String::new() };
        Endpoint {
            host_ifname: format!("dp{}", &id[..12]),
            id,
            network_id: net.id.clone(),
            container_id: cid.to_string(),
            ip,
            // A DHCP endpoint's MAC is the client's identity on the LAN:
            // its own, not one derived from an address it has yet to get.
            mac: if net.dhcp {
                Mac::random_local()
            } else {
                Mac::for_container(ip)
            },
            host_mac: Mac::random_local(),
            ifname,
            aliases,
            node: or_empty(self.node()),
            container_name: or_empty(ctr.0),
            hostname: or_empty(ctr.1),
            lease: None,
        }
    }
}

/// Keeps the cache current: applies every change the store's watch brings
/// and marks its key dirty for the reconciler. A watch the store can no
/// longer serve (compacted) is replaced by a fresh listing.
fn follow(
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    mut watch: Box<dyn crate::store::Watch>,
    node: String,
) {
    loop {
        match watch.next(Duration::from_secs(1)) {
            // Revisions of other hosts' own keys (left out by the store's
            // scope): nothing to apply, but the cache is as of them.
            Ok(events) if events.is_empty() => shared.cached.advance(watch.revision()),
            Ok(events) => {
                let mut snap = (*shared.snapshot()).clone();
                let mut dirty = Vec::with_capacity(events.len());
                for e in &events {
                    snap.apply(e);
                    dirty.push(e.key().to_string());
                }
                snap.revision = snap.revision.max(watch.revision());
                shared.install(snap, dirty);
            }
            Err(StoreError::Compacted { .. }) => {
                match store.list("").map_err(anyhow::Error::from).and_then(|l| {
                    let snap = Snapshot::from_listing(&l, &node)?;
                    let w = store.watch("", l.revision)?;
                    Ok((snap, w))
                }) {
                    Ok((snap, w)) => {
                        let all: Vec<String> = snap.revs.keys().cloned().collect();
                        shared.install(snap, all);
                        watch = w;
                    }
                    Err(e) => {
                        warn!("relisting the store: {e:#}");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            Err(e) => {
                warn!("watching the store: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

//! Services: the operations behind `service create|update|scale|rm`, the
//! placement of replicas on the cluster's hosts, and each host's task
//! agent, which starts, watches, health-checks and restarts the replicas
//! placed on it and re-places the replicas of hosts whose lease expired.
//!
//! The store is the truth: a service record and one task per replica. The
//! agent of the host a task names makes its container with the ordinary
//! `run` (so a replica is a container like any other: netns, veth, names,
//! host-mode ports) and writes what it sees back into the task (running,
//! unhealthy, exited). Every host's reconciler projects the live tasks into
//! its Maglev tables (`specs`).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    process::{Command, Stdio},
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use anyhow::anyhow;
use tracing::{info, warn};

use super::{json, Engine, NetRef, Snapshot};
use crate::{
    api::{
        error::{bad, ApiError, ApiResult},
        ContainerCreate, ServiceCreate, ServiceUpdate,
    },
    bpf::services::{FrontendSpec, ReplicaSpec, ServiceSpec, ServiceStats},
    model::{
        self,
        service::{
            EndpointMode, HealthCheck, PublishMode, Service, ServicePort, Task, TaskState,
            SERVICES_CLAIM,
        },
        validate,
    },
    store::Txn,
};

/// Most replicas one service may ask for.
pub const MAX_REPLICAS: u32 = 1_000;
/// Most tasks one commit makes or removes: etcd refuses a transaction of
/// more than 128 operations (or guards) by default, and a service of 1,000
/// replicas must still be created, scaled and removed on it. What does not
/// fit goes in the commits that follow (`fill_tasks`), and the agent of the
/// first live host finishes the work of a daemon that died in between.
pub const TASKS_PER_COMMIT: usize = 100;
/// How long one tick may spend starting containers (a `run` takes a
/// tenth of a second or more): 1,000 replicas to start must not hold off
/// noticing, for seconds, that a running one exited. The rest start in
/// the ticks that follow.
const START_BUDGET: Duration = Duration::from_secs(1);
/// How often the agent looks at its tasks.
const AGENT_TICK: Duration = Duration::from_millis(200);
/// Health-check defaults (Docker's interval is 30 s; a routing mesh that
/// must drop a dead replica within seconds wants shorter).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_RETRIES: u32 = 3;
/// Wait before starting a task again whose container could not start or
/// exited soon after it started: doubled by every such failure in a row,
/// up to `MAX_BACKOFF` (so a replica that crashes at once is not restarted
/// five times a second).
const FAILED_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A container that ran this long before it exited starts again at once
/// (Docker resets its restart delay after 10 s too).
const STABLE_RUN: Duration = Duration::from_secs(10);
/// The longest service name whose replicas' container names
/// (`NAME.REPLICA.TASKID12`) and hostnames still fit: 63 characters, less
/// `.1000.` and 12.
pub const MAX_SERVICE_NAME: usize = 63 - 6 - 12;

/// The wait before the next start after `streak` failed or short-lived
/// starts in a row.
pub fn restart_delay(streak: u32) -> Duration {
    FAILED_BACKOFF
        .saturating_mul(1u32 << streak.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

impl Engine {
    // ----- operations ----------------------------------------------------

    pub fn create_service(&self, req: ServiceCreate) -> ApiResult<String> {
        let name = req.name.clone();
        check_service_name(&name)?;
        check_replicas(req.replicas)?;
        if req.cmd.is_empty() {
            return Err(bad(
                "no command given: dataplane service create [OPTIONS] -- CMD [ARGS...]",
            ));
        }
        if super::sandbox::resolve_command(&req.cmd[0]).is_none() {
            return Err(bad(format!("executable file not found: {}", req.cmd[0])));
        }
        validate::check_env(&req.env)?;
        let ports = parse_ports(&req.publish)?;
        let endpoint_mode = match req.endpoint_mode.as_deref() {
            None | Some("vip") => EndpointMode::Vip,
            Some("dnsrr") => EndpointMode::Dnsrr,
            Some(m) => {
                return Err(bad(format!(
                    "invalid --endpoint-mode {m:?}: expected vip or dnsrr"
                )))
            }
        };
        check_endpoint_mode(endpoint_mode, &ports)?;
        let health = health_check(&req)?;
        let id = model::new_id();
        let (rev, ()) = self.commit_with(|snap| {
            if snap.services.values().any(|s| s.name == name) {
                return Err(ApiError::Conflict(format!(
                    "service name {name} is already in use"
                )));
            }
            let nid = match snap.network_ref(&req.network)? {
                NetRef::Stored(nid) => nid,
                NetRef::Predefined(d) => {
                    return Err(bad(format!(
                        "a service needs a network with addresses, not {d}"
                    )))
                }
            };
            let net = &snap.networks[&nid];
            if self.cluster.is_some() && !net.is_cluster() {
                return Err(bad(format!(
                    "network {} is this host's only ({} driver): a service's replicas run on any host, so it needs an overlay network",
                    net.name, net.driver
                )));
            }
            if net.internal && !ports.is_empty() {
                return Err(bad(format!(
                    "cannot publish ports of a service on internal network {}",
                    net.name
                )));
            }
            check_ports(snap, &id, &ports)?;
            check_total_replicas(snap, &id, req.replicas)?;
            let slot = (0..dataplane_common::MAX_SERVICES)
                .find(|s| !snap.services.values().any(|o| o.slot == *s))
                .ok_or_else(|| {
                    ApiError::Conflict(format!(
                        "{} services exist already, the most one cluster holds",
                        dataplane_common::MAX_SERVICES
                    ))
                })?;
            let mut t = Txn::default();
            let vip = match endpoint_mode {
                EndpointMode::Vip => {
                    let ip = self.allocate(snap, net, None, &mut t)?;
                    let claim = model::ip_claim(net, ip);
                    t.absent(claim.clone())
                        .put(claim, format!("service:{id}").into_bytes());
                    Some(ip)
                }
                EndpointMode::Dnsrr => None,
            };
            let svc = Service {
                id: id.clone(),
                name: name.clone(),
                network: nid.clone(),
                endpoint_mode,
                vip,
                replicas: req.replicas,
                ports: ports.clone(),
                cmd: req.cmd.clone(),
                env: req.env.clone(),
                health: health.clone(),
                slot,
                created: model::now_rfc3339(),
                version: 0,
            };
            let net_key = net.key();
            t.unchanged(net_key.clone(), snap.rev_of(&net_key))
                .unchanged(SERVICES_CLAIM, snap.rev_of(SERVICES_CLAIM))
                .put(SERVICES_CLAIM, id.clone().into_bytes())
                .put(model::net_use_claim(net), id.clone().into_bytes())
                .put(svc.key(), json(&svc)?);
            self.converge_tasks(snap, &svc, &mut t)?;
            Ok((t, ()))
        })?;
        self.applied(rev, &[])?;
        self.fill_tasks(&id)?;
        info!(service = %name, replicas = req.replicas, "service created");
        Ok(id)
    }

    pub fn update_service(&self, name: &str, req: ServiceUpdate) -> ApiResult<()> {
        if req.replicas.is_none() && req.publish_add.is_empty() && req.publish_rm.is_empty() {
            return Err(bad(
                "nothing to change: give --replicas, --publish-add or --publish-rm",
            ));
        }
        if let Some(n) = req.replicas {
            check_replicas(n)?;
        }
        let add = parse_ports(&req.publish_add)?;
        let rm = req
            .publish_rm
            .iter()
            .map(|p| parse_port_ref(p))
            .collect::<ApiResult<Vec<_>>>()?;
        let (rev, sid) = self.commit_with(|snap| {
            let sid = snap.service_id(name)?;
            let old = &snap.services[&sid];
            let mut svc = old.clone();
            for (port, proto) in &rm {
                let before = svc.ports.len();
                svc.ports
                    .retain(|p| !(p.published == *port && proto.is_none_or(|x| x == p.proto)));
                if svc.ports.len() == before {
                    return Err(bad(format!(
                        "service {} does not publish port {port}{}",
                        svc.name,
                        proto.map_or(String::new(), |p| format!("/{p}"))
                    )));
                }
            }
            svc.ports.extend(add.iter().copied());
            check_endpoint_mode(svc.endpoint_mode, &svc.ports)?;
            if !add.is_empty() && snap.networks.get(&svc.network).is_some_and(|n| n.internal) {
                return Err(bad(
                    "cannot publish ports of a service on an internal network",
                ));
            }
            check_ports(snap, &sid, &svc.ports)?;
            if let Some(n) = req.replicas {
                check_total_replicas(snap, &sid, n)?;
                svc.replicas = n;
            }
            svc.version += 1;
            let mut t = Txn::default();
            t.unchanged(svc.key(), snap.rev_of(&svc.key()))
                .unchanged(SERVICES_CLAIM, snap.rev_of(SERVICES_CLAIM))
                .put(SERVICES_CLAIM, sid.clone().into_bytes())
                .put(svc.key(), json(&svc)?);
            self.converge_tasks(snap, &svc, &mut t)?;
            Ok((t, sid))
        })?;
        self.applied(rev, &[])?;
        self.fill_tasks(&sid)?;
        info!(service = %name, "service updated");
        Ok(())
    }

    pub fn remove_service(&self, name: &str) -> ApiResult<()> {
        let (rev, (sid, mine)) = self.commit_with(|snap| {
            let sid = snap.service_id(name)?;
            let svc = &snap.services[&sid];
            let mut t = Txn::default();
            t.unchanged(svc.key(), snap.rev_of(&svc.key()))
                .delete(svc.key())
                .unchanged(SERVICES_CLAIM, snap.rev_of(SERVICES_CLAIM))
                .put(SERVICES_CLAIM, sid.clone().into_bytes());
            if let (Some(vip), Some(net)) = (svc.vip, snap.networks.get(&svc.network)) {
                t.delete(model::ip_claim(net, vip));
            }
            // The first tasks go with it; the rest (a service of more
            // than fit in one commit) right after, by `fill_tasks`.
            for task in snap.tasks_of(&sid).into_iter().take(TASKS_PER_COMMIT) {
                t.delete(task.key());
            }
            let mine: Vec<String> = snap
                .tasks_of(&sid)
                .into_iter()
                .filter(|task| task.node.as_deref() == Some(self.node()))
                .filter_map(|task| task.container.clone())
                .collect();
            Ok((t, (sid, mine)))
        })?;
        self.applied(rev, &[])?;
        self.fill_tasks(&sid)?;
        // This host's replicas go now; other hosts' agents remove theirs.
        for cid in mine {
            match self.remove_container(&cid, true) {
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(e) => warn!(container = %cid, "removing a replica: {e}"),
            }
        }
        info!(service = %name, "service removed");
        Ok(())
    }

    /// Adds to `t` the first `TASKS_PER_COMMIT` changes that bring the
    /// tasks of `svc` (as `t` will write it) to its replica count: tasks
    /// of replicas above it removed, missing ones made and placed. Each
    /// guarded, so that two writers (the call and the agent that finishes
    /// its work) cannot both make or remove one. Returns how many.
    fn converge_tasks(&self, snap: &Snapshot, svc: &Service, t: &mut Txn) -> ApiResult<usize> {
        let plan = task_changes(snap, svc, TASKS_PER_COMMIT);
        for key in &plan.remove {
            t.unchanged(key.clone(), snap.rev_of(key))
                .delete(key.clone());
        }
        if !plan.add.is_empty() {
            let candidates = self.candidate_nodes(snap);
            let gone: HashSet<String> = plan.remove.iter().cloned().collect();
            let mut placer = Placer::new(&candidates, snap, &gone);
            for replica in &plan.add {
                let task = Self::new_task(&mut placer, svc, *replica);
                t.absent(task.key()).put(task.key(), json(&task)?);
            }
        }
        Ok(plan.remove.len() + plan.add.len())
    }

    /// Commits, `TASKS_PER_COMMIT` at a time, what is left of bringing the
    /// tasks of service `sid` to its replica count (all its tasks removed,
    /// once it is gone).
    pub(super) fn fill_tasks(&self, sid: &str) -> ApiResult<()> {
        loop {
            let (rev, n) = self.commit_with(|snap| {
                let mut t = Txn::default();
                let n = match snap.services.get(sid) {
                    Some(svc) => {
                        t.unchanged(svc.key(), snap.rev_of(&svc.key()));
                        self.converge_tasks(snap, svc, &mut t)?
                    }
                    None => {
                        let orphans = snap.tasks_of(sid);
                        for task in orphans.iter().take(TASKS_PER_COMMIT) {
                            t.delete(task.key());
                        }
                        orphans.len().min(TASKS_PER_COMMIT)
                    }
                };
                Ok((t, n))
            })?;
            if n == 0 {
                return Ok(());
            }
            self.applied(rev, &[])?;
        }
    }

    /// `service inspect`: the record, its tasks, and its counters on this
    /// host.
    pub fn inspect_service(&self, name: &str) -> ApiResult<serde_json::Value> {
        let snap = self.snapshot();
        let mut v = crate::api::views::inspect_service(&snap, name)?;
        let sid = snap.service_id(name)?;
        v["Counters"] = self.service_counters(&snap, &sid)?;
        Ok(v)
    }

    /// This host's counters of service `sid` and of its replicas.
    fn service_counters(&self, snap: &Snapshot, sid: &str) -> ApiResult<serde_json::Value> {
        let stats = self
            .dp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .service_stats()?;
        let name = &snap.services[sid].name;
        Ok(counters(snap, &stats)
            .into_iter()
            .find(|c| c["Service"] == name.as_str())
            .unwrap_or(serde_json::Value::Null))
    }

    /// A new task for replica `replica` of `svc`, placed by `placer` (and
    /// counted there).
    fn new_task(placer: &mut Placer, svc: &Service, replica: u32) -> Task {
        let mut task = Task {
            id: model::new_id(),
            service: svc.id.clone(),
            replica,
            node: placer.place(svc),
            state: TaskState::Pending,
            message: String::new(),
            container: None,
            ip: None,
            restarts: 0,
            since: model::now_rfc3339(),
        };
        if task.node.is_none() {
            task.message = if placer.candidates.is_empty() {
                "no host is alive".into()
            } else {
                "no host can take it: each host runs one replica of a service with host-mode ports"
                    .into()
            };
        }
        placer.add(&task);
        task
    }

    /// The hosts a replica may be placed on: every live host of the
    /// cluster, or this one alone.
    fn candidate_nodes(&self, snap: &Snapshot) -> Vec<String> {
        if self.cluster.is_none() {
            return vec![String::new()];
        }
        snap.alive
            .iter()
            .filter(|n| snap.nodes.contains_key(*n))
            .cloned()
            .collect()
    }

    // ----- the agent -----------------------------------------------------

    /// Starts this host's task agent.
    pub(super) fn start_agent(self: &Arc<Self>) -> anyhow::Result<()> {
        let engine = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("tasks".into())
            .spawn(move || {
                let mut agent = Agent::default();
                while let Some(e) = engine.upgrade() {
                    agent.tick(&e);
                    drop(e);
                    std::thread::sleep(AGENT_TICK);
                }
            })?;
        Ok(())
    }

    /// Commits `task` if its record is still the one `snap` saw.
    fn put_task(&self, snap: &Snapshot, task: &Task) -> ApiResult<()> {
        let mut t = Txn::default();
        t.unchanged(task.key(), snap.rev_of(&task.key()))
            .put(task.key(), json(task)?);
        let rev = self.store.commit(t)?;
        self.shared.cached.wait(rev, super::APPLY_TIMEOUT);
        Ok(())
    }
}

/// A replica count a service may have.
fn check_replicas(n: u32) -> ApiResult<()> {
    if n > MAX_REPLICAS {
        return Err(bad(format!(
            "--replicas {n} is more than {MAX_REPLICAS}, the most one service may have"
        )));
    }
    Ok(())
}

/// `--publish` (and `--publish-add`) specs.
fn parse_ports(specs: &[String]) -> ApiResult<Vec<ServicePort>> {
    specs
        .iter()
        .map(|p| validate::parse_service_port(p))
        .collect()
}

/// Swarm refuses ingress ports of a `dnsrr` service too: the routing mesh
/// balances to a VIP's replicas.
fn check_endpoint_mode(mode: EndpointMode, ports: &[ServicePort]) -> ApiResult<()> {
    if mode == EndpointMode::Dnsrr && ports.iter().any(|p| p.mode == PublishMode::Ingress) {
        return Err(bad(
            "ingress-mode ports need --endpoint-mode vip; publish with mode=host for dnsrr",
        ));
    }
    Ok(())
}

/// A service name that DNS and its replicas' container names can carry.
fn check_service_name(name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(bad("a service needs a name: --name NAME"));
    }
    if !validate::valid_name(name) {
        return Err(bad(format!(
            "invalid service name {name:?}: letters, digits, '_', '.' and '-', starting with a letter or digit"
        )));
    }
    if name.len() > MAX_SERVICE_NAME {
        return Err(bad(format!(
            "service name {name:?} is longer than {MAX_SERVICE_NAME} characters (its replicas' names must fit in 63)"
        )));
    }
    Ok(())
}

/// `--health-*` into a check.
fn health_check(req: &ServiceCreate) -> ApiResult<Option<HealthCheck>> {
    let Some(cmd) = req.health_cmd.clone() else {
        if req.health_interval.is_some()
            || req.health_timeout.is_some()
            || req.health_retries.is_some()
        {
            return Err(bad(
                "--health-interval, --health-timeout and --health-retries need --health-cmd",
            ));
        }
        return Ok(None);
    };
    if cmd.trim().is_empty() {
        return Err(bad("--health-cmd is empty"));
    }
    let d = |v: &Option<String>, what: &str, default: Duration| -> ApiResult<Duration> {
        let d = match v {
            Some(s) => validate::parse_duration(s, what)?,
            None => default,
        };
        if d < Duration::from_millis(100) {
            return Err(bad(format!("{what} must be at least 100ms")));
        }
        Ok(d)
    };
    let retries = req.health_retries.unwrap_or(HEALTH_RETRIES);
    if retries == 0 {
        return Err(bad("--health-retries must be at least 1"));
    }
    Ok(Some(HealthCheck {
        cmd,
        interval_ms: d(&req.health_interval, "--health-interval", HEALTH_INTERVAL)?.as_millis()
            as u64,
        timeout_ms: d(&req.health_timeout, "--health-timeout", HEALTH_TIMEOUT)?.as_millis() as u64,
        retries,
    }))
}

/// `P` or `P/PROTO` (or a whole spec) of `--publish-rm`.
fn parse_port_ref(s: &str) -> ApiResult<(u16, Option<model::Proto>)> {
    if s.contains('=') || s.contains(':') {
        let p = validate::parse_service_port(s)?;
        return Ok((p.published, Some(p.proto)));
    }
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (
            p,
            Some(
                proto
                    .parse::<model::Proto>()
                    .map_err(|e| bad(format!("invalid --publish-rm {s:?}: {e}")))?,
            ),
        ),
        None => (s, None),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(format!("invalid --publish-rm {s:?}: expected PORT[/PROTO]")))?;
    Ok((port, proto))
}

/// Refuses a replica count that would take the cluster's services past
/// the replicas every host's `BACKENDS` map holds (the maps of every host
/// would then fail to take them all, for every service).
fn check_total_replicas(snap: &Snapshot, sid: &str, replicas: u32) -> ApiResult<()> {
    let others: u64 = snap
        .services
        .values()
        .filter(|s| s.id != sid)
        .map(|s| u64::from(s.replicas))
        .sum();
    let room = u64::from(dataplane_common::MAX_BACKENDS).saturating_sub(others);
    if u64::from(replicas) > room {
        return Err(ApiError::Conflict(format!(
            "{replicas} replicas would take the cluster's services past {} replicas in all (the other services have {others})",
            dataplane_common::MAX_BACKENDS
        )));
    }
    Ok(())
}

/// Refuses ports published twice, by another service, or (ingress ports:
/// every host address answers them) by a container of this host.
fn check_ports(snap: &Snapshot, sid: &str, ports: &[ServicePort]) -> ApiResult<()> {
    let own_tasks = format!("{}{sid}/", model::service::TASKS);
    for (i, p) in ports.iter().enumerate() {
        let same = |q: &ServicePort| q.published == p.published && q.proto == p.proto;
        if ports[..i].iter().any(same) {
            return Err(bad(format!(
                "port {}/{} is published twice",
                p.published, p.proto
            )));
        }
        let taken_by = if let Some(other) = snap
            .services
            .values()
            .find(|s| s.id != sid && s.ports.iter().any(same))
        {
            format!("service {}", other.name)
        } else if let Some(c) = snap.containers.values().find(|c| {
            // Ingress ports: every host address answers them. (This
            // service's own replicas hold its host-mode ports.)
            p.mode == PublishMode::Ingress
                && c.task.as_ref().is_none_or(|k| !k.starts_with(&own_tasks))
                && c.ports
                    .iter()
                    .any(|b| b.host_port == p.published && b.proto == p.proto)
        }) {
            format!("container {}", c.name)
        } else {
            continue;
        };
        return Err(ApiError::Conflict(format!(
            "port {}/{} is already published by {taken_by}",
            p.published, p.proto
        )));
    }
    Ok(())
}

/// Places new replicas: among the candidate hosts, the one with the
/// fewest replicas of the service, then of all services, then by name.
/// With host-mode ports, a host runs one replica of a service at most.
///
/// Built once from a snapshot and updated by every placement, so placing
/// `n` replicas costs `O(n * hosts)`, not a scan of every task each.
pub struct Placer<'a> {
    candidates: &'a [String],
    /// Tasks per host, of every service.
    total: HashMap<String, usize>,
    /// Tasks per (service id, host).
    per_service: HashMap<(String, String), usize>,
}

impl<'a> Placer<'a> {
    /// Counts the tasks of `snap`, leaving out those `moving` names (the
    /// keys of tasks about to be placed again).
    pub fn new(candidates: &'a [String], snap: &Snapshot, moving: &HashSet<String>) -> Self {
        let mut p = Placer {
            candidates,
            total: HashMap::new(),
            per_service: HashMap::new(),
        };
        for (key, t) in &snap.tasks {
            if !moving.contains(key) {
                p.add(t);
            }
        }
        p
    }

    /// Counts `task` where it is placed.
    pub fn add(&mut self, task: &Task) {
        if let Some(n) = &task.node {
            *self.total.entry(n.clone()).or_default() += 1;
            *self
                .per_service
                .entry((task.service.clone(), n.clone()))
                .or_default() += 1;
        }
    }

    /// The host for a new replica of `svc` (not counted until `add`).
    pub fn place(&self, svc: &Service) -> Option<String> {
        let host_mode = svc.ports.iter().any(|p| p.mode == PublishMode::Host);
        self.candidates
            .iter()
            .map(|n| {
                let mine = self
                    .per_service
                    .get(&(svc.id.clone(), n.clone()))
                    .copied()
                    .unwrap_or(0);
                (mine, self.total.get(n).copied().unwrap_or(0), n)
            })
            .filter(|(mine, _, _)| !host_mode || *mine == 0)
            .min()
            .map(|(_, _, n)| n.clone())
    }
}

/// What brings a service's tasks to its replica count.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TaskChanges {
    /// Keys of the tasks of replicas above the count.
    pub remove: Vec<String>,
    /// Replica numbers that have no task.
    pub add: Vec<u32>,
}

/// The first `max` changes (removals first) that bring the tasks of `svc`
/// in `snap` to `svc.replicas`; linear in the service's tasks.
pub fn task_changes(snap: &Snapshot, svc: &Service, max: usize) -> TaskChanges {
    let tasks = snap.tasks_of(&svc.id);
    let remove: Vec<String> = tasks
        .iter()
        .filter(|t| t.replica > svc.replicas)
        .take(max)
        .map(|t| t.key())
        .collect();
    let have: HashSet<u32> = tasks.iter().map(|t| t.replica).collect();
    let add = (1..=svc.replicas)
        .filter(|r| !have.contains(r))
        .take(max - remove.len())
        .collect();
    TaskChanges { remove, add }
}

/// Where the tasks of hosts whose lease expired (and the tasks no host
/// could take) go: their new records, to commit one by one. A task that no
/// host can take comes back unplaced (`node: None`) if it was placed.
pub fn replan(snap: &Snapshot, candidates: &[String]) -> Vec<Task> {
    let lost: Vec<&Task> = snap
        .tasks
        .values()
        .filter(|t| t.node.as_ref().is_none_or(|n| !snap.alive.contains(n)))
        .filter(|t| snap.services.contains_key(&t.service))
        .collect();
    if lost.is_empty() {
        // The common tick: nothing to count.
        return Vec::new();
    }
    let moving = lost.iter().map(|t| t.key()).collect();
    let mut placer = Placer::new(candidates, snap, &moving);
    let mut out = Vec::new();
    for task in lost {
        let svc = &snap.services[&task.service];
        let mut t = task.entering(TaskState::Pending, "");
        t.container = None;
        t.ip = None;
        match (placer.place(svc), &task.node) {
            (Some(node), old) => {
                t.message = old
                    .as_ref()
                    .map_or_else(String::new, |o| format!("host {o} went down; moved"));
                t.node = Some(node);
                placer.add(&t);
            }
            // Nowhere to go: unplaced (out of every table) until a host
            // can take it.
            (None, Some(old)) => {
                t.node = None;
                t.message = format!("host {old} went down; no other host can take it");
            }
            (None, None) => continue,
        }
        out.push(t);
    }
    out
}

/// What the agent remembers between ticks (nothing of it is needed after
/// a restart: the store has the tasks, the kernel their containers).
#[derive(Default)]
struct Agent {
    health: HashMap<String, Health>,
    /// Tasks whose start failed or whose container exited soon after it
    /// started: how many times in a row, and when to try again.
    backoff: HashMap<String, Backoff>,
    /// When this agent started a task's container (to tell a crash loop
    /// from a replica that ran a while).
    started: HashMap<String, Instant>,
    /// Until when this tick may start containers (`START_BUDGET`).
    starts_until: Option<Instant>,
    /// Tasks that stayed unhealthy for another `retries` checks: their
    /// container is replaced at the next tick.
    restart: HashSet<String>,
}

struct Backoff {
    streak: u32,
    until: Instant,
}

impl Agent {
    /// One more failed (or short-lived) start of task `key`.
    fn failed(&mut self, key: &str) -> Duration {
        let b = self.backoff.entry(key.to_string()).or_insert(Backoff {
            streak: 0,
            until: Instant::now(),
        });
        b.streak = b.streak.saturating_add(1);
        let delay = restart_delay(b.streak);
        b.until = Instant::now() + delay;
        delay
    }
}

/// A task's health checks.
struct Health {
    next: Instant,
    fails: u32,
    running: Option<mpsc::Receiver<Result<(), String>>>,
    /// The container the counts are for.
    container: String,
}

impl Agent {
    fn tick(&mut self, e: &Engine) {
        let snap = e.snapshot();
        let me = e.node().to_string();
        self.starts_until = Some(Instant::now() + START_BUDGET);
        // Replicas by task, once a tick (not a scan of every container for
        // every task).
        let by_task = replicas_by_task(&snap);
        for task in snap.tasks.values() {
            if task.node.as_deref() != Some(me.as_str()) {
                continue;
            }
            let Some(svc) = snap.services.get(&task.service) else {
                continue;
            };
            if let Err(err) = self.tend(e, &snap, svc, task, by_task.get(task.key().as_str())) {
                if !matches!(err, ApiError::Conflict(_)) {
                    warn!(task = %task.key(), "{err}");
                }
            }
        }
        self.sweep(e, &snap, &me);
        if e.cluster.is_none() || snap.alive.iter().next() == Some(&me) {
            finish_tasks(e, &snap);
        }
        if e.cluster.is_some() {
            self.replace_lost(e, &snap, &me);
        }
        let mine = |k: &String| {
            snap.tasks
                .get(k)
                .is_some_and(|t| t.node.as_deref() == Some(me.as_str()))
        };
        self.health.retain(|k, _| mine(k));
        self.backoff.retain(|k, _| mine(k));
        self.started.retain(|k, _| mine(k));
    }

    /// Brings one of this host's tasks along: starts its container,
    /// notices its exit, runs its health check.
    fn tend(
        &mut self,
        e: &Engine,
        snap: &Snapshot,
        svc: &Service,
        task: &Task,
        replica: Option<&&model::Container>,
    ) -> ApiResult<()> {
        let key = task.key();
        let ctr = task
            .container
            .as_ref()
            .and_then(|cid| snap.containers.get(cid))
            .filter(|c| c.task.as_deref() == Some(key.as_str()));
        if ctr.is_none() && task.container.is_none() {
            // Started, but the task was not updated (a daemon that died in
            // between, or a lost race): adopt it.
            if let Some(c) = replica.filter(|c| !snap.is_pending(&c.id)) {
                let mut t = task.clone();
                t.container = Some(c.id.clone());
                t.ip = snap.endpoints_of_container(&c.id).first().map(|ep| ep.ip);
                return e.put_task(snap, &t);
            }
        }
        let Some(c) = ctr else {
            if self
                .backoff
                .get(&key)
                .is_some_and(|b| Instant::now() < b.until)
                || self.starts_until.is_some_and(|u| Instant::now() >= u)
            {
                return Ok(());
            }
            return self.start(e, snap, svc, task);
        };
        let alive = c.pid.is_some_and(crate::host::process_alive);
        let sick = self.restart.remove(&key);
        if !alive || sick || c.publish != svc.host_publish() {
            // Exited (or its host-mode ports changed): out of every table
            // first, then a new container.
            let t = if !alive {
                let ran = self.started.get(&key).map(Instant::elapsed);
                let message = if ran.is_some_and(|r| r < STABLE_RUN) {
                    let delay = self.failed(&key);
                    format!(
                        "its process exited after {:.1}s; restarting in {delay:?}",
                        ran.unwrap_or_default().as_secs_f32()
                    )
                } else {
                    self.backoff.remove(&key);
                    "its process exited; restarting".into()
                };
                task.entering(TaskState::Exited, message)
            } else if sick {
                task.entering(TaskState::Unhealthy, "unhealthy for too long; restarting")
            } else {
                task.entering(
                    TaskState::Pending,
                    "its published ports changed; restarting",
                )
            };
            e.put_task(snap, &t)?;
            let cid = c.id.clone();
            match e.remove_container(&cid, true) {
                Ok(()) | Err(ApiError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
            let snap = e.snapshot();
            if let Some(cur) = snap.tasks.get(&key) {
                let mut t = cur.clone();
                t.container = None;
                t.ip = None;
                t.restarts += 1;
                e.put_task(&snap, &t)?;
            }
            self.health.remove(&key);
            return Ok(());
        }
        let Some(check) = &svc.health else {
            if task.state != TaskState::Running {
                e.put_task(snap, &task.entering(TaskState::Running, ""))?;
            }
            return Ok(());
        };
        self.check_health(e, snap, task, c, check)
    }

    fn start(&mut self, e: &Engine, snap: &Snapshot, svc: &Service, task: &Task) -> ApiResult<()> {
        let key = task.key();
        let Some(net) = snap.networks.get(&svc.network) else {
            return Ok(());
        };
        let req = ContainerCreate {
            name: Some(task.container_name(&svc.name)),
            network: Some(net.id.clone()),
            hostname: Some(task.container_name(&svc.name).replace('.', "-")),
            publish: svc.host_publish(),
            env: svc.env.clone(),
            cmd: svc.cmd.clone(),
            ..Default::default()
        };
        match e.run_as(req, Some(key.clone())) {
            Ok(cid) => {
                self.started.insert(key.clone(), Instant::now());
                let now = e.snapshot();
                let ip = now.endpoints_of_container(&cid).first().map(|ep| ep.ip);
                let Some(cur) = now
                    .tasks
                    .get(&key)
                    .filter(|cur| cur.id == task.id && cur.node == task.node)
                    .cloned()
                else {
                    // Removed, or removed and made again (a scale down and
                    // up) or moved, while it started: this container is no
                    // one's.
                    if let Err(err) = e.remove_container(&cid, true) {
                        warn!(container = %cid, "removing a replica whose task went: {err}");
                    }
                    return Ok(());
                };
                let state = if svc.health.is_some() {
                    TaskState::Starting
                } else {
                    TaskState::Running
                };
                let mut t = cur.entering(state, "");
                t.container = Some(cid.clone());
                t.ip = ip;
                if let Err(err) = e.put_task(&now, &t) {
                    let _ = e.remove_container(&cid, true);
                    return Err(err);
                }
                info!(task = %key, container = %cid, "replica started");
                Ok(())
            }
            Err(err) => {
                let delay = self.failed(&key);
                let message = format!("starting its container: {err} (trying again in {delay:?})");
                if task.state != TaskState::Failed || task.message != message {
                    e.put_task(snap, &task.entering(TaskState::Failed, message))?;
                }
                Err(err)
            }
        }
    }

    fn check_health(
        &mut self,
        e: &Engine,
        snap: &Snapshot,
        task: &Task,
        c: &model::Container,
        check: &HealthCheck,
    ) -> ApiResult<()> {
        let key = task.key();
        let fresh = || Health {
            next: Instant::now(),
            fails: 0,
            running: None,
            container: c.id.clone(),
        };
        let h = self.health.entry(key.clone()).or_insert_with(fresh);
        if h.container != c.id {
            // Counts of a container that is gone.
            *h = fresh();
        }
        if let Some(rx) = &h.running {
            let outcome = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => Err("the check did not report".into()),
            };
            h.running = None;
            h.next = Instant::now() + Duration::from_millis(check.interval_ms);
            match outcome {
                Ok(()) => {
                    h.fails = 0;
                    if task.state != TaskState::Running {
                        e.put_task(snap, &task.entering(TaskState::Running, ""))?;
                        info!(task = %key, "replica healthy");
                    }
                }
                Err(why) => {
                    h.fails += 1;
                    if h.fails >= check.retries.saturating_mul(2) {
                        self.restart.insert(key.clone());
                        h.fails = 0;
                        return Ok(());
                    }
                    if h.fails >= check.retries && task.state != TaskState::Unhealthy {
                        let why = format!("health check failed {} times: {why}", h.fails);
                        e.put_task(snap, &task.entering(TaskState::Unhealthy, why.clone()))?;
                        warn!(task = %key, "replica unhealthy: {why}");
                    }
                }
            }
            return Ok(());
        }
        if Instant::now() < h.next {
            return Ok(());
        }
        let (tx, rx) = mpsc::channel();
        let netns = c.netns.clone();
        let cmd = check.cmd.clone();
        let timeout = Duration::from_millis(check.timeout_ms);
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                let _ = tx.send(run_check(&netns, &cmd, timeout));
            })
            .map_err(|err| ApiError::Internal(anyhow!("starting a health check: {err}")))?;
        h.running = Some(rx);
        Ok(())
    }

    /// Removes this host's replicas whose task is gone (scaled down, the
    /// service removed) or now names another container or host.
    fn sweep(&mut self, e: &Engine, snap: &Snapshot, me: &str) {
        for c in snap.containers.values() {
            let Some(key) = &c.task else {
                continue;
            };
            let wanted = snap.tasks.get(key).is_some_and(|t| {
                t.node.as_deref() == Some(me)
                    && t.container.as_deref().is_none_or(|id| id == c.id)
                    && snap.services.contains_key(&t.service)
            });
            // A container being started has no task container yet: leave
            // it to the start that made it.
            if wanted || snap.is_pending(&c.id) {
                continue;
            }
            match e.remove_container(&c.id, true) {
                Ok(()) => info!(container = %c.name, "replica removed"),
                Err(ApiError::NotFound(_)) => {}
                Err(err) => warn!(container = %c.name, "removing a replica: {err}"),
            }
        }
    }

    /// Places again the tasks of hosts whose lease expired, and the tasks
    /// no host could take; done by the first live host by name (the
    /// guarded commit makes a race between two harmless).
    fn replace_lost(&mut self, e: &Engine, snap: &Snapshot, me: &str) {
        if snap.alive.iter().next().map(String::as_str) != Some(me) {
            return;
        }
        let candidates = e.candidate_nodes(snap);
        for t in replan(snap, &candidates) {
            match (e.put_task(snap, &t), &t.node) {
                (Ok(()), Some(node)) => {
                    info!(task = %t.key(), node = %node, "replica placed again")
                }
                (Ok(()), None) => info!(task = %t.key(), "replica unplaced: no host can take it"),
                (Err(err), _) => warn!(task = %t.key(), "placing a replica again: {err}"),
            }
        }
    }
}

/// Finishes what a `service create|update|rm` left undone (its daemon died
/// between two of its commits): tasks missing or above the replica count,
/// tasks of a removed service. Done by the first live host alone.
fn finish_tasks(e: &Engine, snap: &Snapshot) {
    for sid in unfinished(snap) {
        if let Err(err) = e.fill_tasks(sid) {
            warn!(service = %sid, "finishing the tasks of a service: {err}");
        }
    }
}

/// The services whose tasks do not match their replica count, and the ids
/// of removed services that still have tasks; one pass over the tasks.
pub fn unfinished(snap: &Snapshot) -> Vec<&str> {
    let mut per_service: HashMap<&str, (u32, u32)> = HashMap::new();
    for t in snap.tasks.values() {
        let c = per_service.entry(t.service.as_str()).or_default();
        c.0 += 1;
        c.1 = c.1.max(t.replica);
    }
    snap.services
        .values()
        .filter(|s| {
            let (n, top) = per_service.get(s.id.as_str()).copied().unwrap_or_default();
            n != s.replicas || top > s.replicas
        })
        .map(|s| s.id.as_str())
        .chain(
            per_service
                .keys()
                .copied()
                .filter(|sid| !snap.services.contains_key(*sid)),
        )
        .collect()
}

/// This host's replicas by their task's key, built once a tick.
fn replicas_by_task(snap: &Snapshot) -> HashMap<&str, &model::Container> {
    snap.containers
        .values()
        .filter_map(|c| Some((c.task.as_deref()?, c)))
        .collect()
}

/// Runs a health check in the sandbox `netns`: success is exit status 0
/// within `timeout`.
fn run_check(netns: &str, cmd: &str, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args(["--", "/bin/sh", "-c", cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting nsenter: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("exit status {}", s.code().unwrap_or(-1))),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {:?}", timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for the check: {e}")),
        }
    }
}

/// The services as this host projects them into the maps: a replica is
/// live while its task says so and its host is alive (a down host's
/// replicas take no new connections; their established ones go on while
/// its grace lasts).
pub fn projections(snap: &Snapshot, cluster: bool) -> Vec<ServiceSpec> {
    snap.services
        .values()
        .map(|svc| {
            let mut frontends = Vec::new();
            for p in &svc.ports {
                if let Some(vip) = svc.vip {
                    frontends.push(FrontendSpec {
                        proto: p.proto.ipproto(),
                        addr: vip,
                        port: p.target,
                        target: p.target,
                        flags: dataplane_common::SVC_VIP,
                    });
                }
                if p.mode == PublishMode::Ingress {
                    frontends.push(FrontendSpec {
                        proto: p.proto.ipproto(),
                        addr: Ipv4Addr::UNSPECIFIED,
                        port: p.published,
                        target: p.target,
                        flags: dataplane_common::SVC_INGRESS,
                    });
                }
            }
            frontends.sort_by_key(|f| (f.proto, f.addr, f.port));
            frontends.dedup();
            let replicas = snap
                .tasks_of(&svc.id)
                .into_iter()
                .filter_map(|t| {
                    let ip = t.ip?;
                    let host_up =
                        !cluster || t.node.as_ref().is_some_and(|n| snap.alive.contains(n));
                    Some(ReplicaSpec {
                        name: t.id.clone(),
                        ip,
                        live: t.live() && host_up,
                        weight: 1,
                    })
                })
                .collect();
            ServiceSpec {
                slot: svc.slot,
                frontends,
                replicas,
            }
        })
        .collect()
}

/// Writes the projections into the maps.
pub fn apply(dp: &mut crate::bpf::Datapath, want: &[ServiceSpec]) -> anyhow::Result<()> {
    let report = dp.sync_services(want)?;
    if !report.tables_written.is_empty() {
        tracing::debug!(slots = ?report.tables_written, "Maglev tables written");
    }
    Ok(())
}

/// The counters of every service on this host, with names: `SVC_STATS`
/// by slot and `BACKEND_STATS` by replica, as `stats` and `service
/// inspect` show them.
pub fn counters(snap: &Snapshot, stats: &[ServiceStats]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for svc in snap.services.values() {
        let Some(st) = stats.iter().find(|s| s.slot == svc.slot) else {
            continue;
        };
        let tasks: HashMap<&str, &Task> = snap
            .tasks_of(&svc.id)
            .into_iter()
            .map(|t| (t.id.as_str(), t))
            .collect();
        let replicas: Vec<serde_json::Value> = st
            .replicas
            .iter()
            .map(|r| {
                let t = tasks.get(r.name.as_str());
                serde_json::json!({
                    "Name": t.map_or_else(|| r.ip.to_string(), |t| format!("{}.{}", svc.name, t.replica)),
                    "Task": r.name, "IP": r.ip.to_string(), "Live": r.live,
                    "Node": t.and_then(|t| t.node.clone()).unwrap_or_default(),
                    "Connections": r.conns, "Packets": r.packets, "Bytes": r.bytes,
                })
            })
            .collect();
        out.push(serde_json::json!({
            "Service": svc.name, "Slot": svc.slot,
            "Connections": st.conns, "Packets": st.packets, "Bytes": st.bytes,
            "Drops": st.drops, "Replicas": replicas,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{service::task_key, Proto};

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            id: "s1".into(),
            name: "web".into(),
            network: "n".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: Some(Ipv4Addr::new(10, 0, 0, 2)),
            replicas: 0,
            ports,
            cmd: vec!["true".into()],
            env: vec![],
            health: None,
            slot: 3,
            created: String::new(),
            version: 0,
        }
    }

    fn task(replica: u32, node: &str) -> Task {
        Task {
            id: format!("t{replica}"),
            service: "s1".into(),
            replica,
            node: Some(node.into()),
            state: TaskState::Running,
            message: String::new(),
            container: None,
            ip: Some(Ipv4Addr::from(0x0a00_000a + replica)),
            restarts: 0,
            since: String::new(),
        }
    }

    #[test]
    fn placement_spreads_and_respects_host_mode() {
        let snap = Snapshot::default();
        let nodes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let s = svc(vec![]);
        let mut placer = Placer::new(&nodes, &snap, &HashSet::new());
        let mut placed: Vec<Task> = Vec::new();
        for r in 1..=6 {
            let t = task(r, &placer.place(&s).unwrap());
            placer.add(&t);
            placed.push(t);
        }
        for n in &nodes {
            assert_eq!(
                placed
                    .iter()
                    .filter(|t| t.node.as_deref() == Some(n))
                    .count(),
                2
            );
        }
        let mut h = svc(vec![ServicePort {
            published: 80,
            target: 80,
            proto: Proto::Tcp,
            mode: PublishMode::Host,
        }]);
        h.id = "s2".into();
        for r in 1..=3 {
            let mut t = task(r, &placer.place(&h).unwrap());
            t.service = h.id.clone();
            placer.add(&t);
        }
        assert_eq!(
            placer.place(&h),
            None,
            "a fourth host-mode replica has no host"
        );
    }

    /// Placement also weighs other services' replicas: a host that runs
    /// more of them gets the next replica last.
    #[test]
    fn placement_prefers_the_least_loaded_host() {
        let mut snap = Snapshot::default();
        let mut other = task(1, "a");
        other.service = "busy".into();
        snap.tasks.insert(other.key(), other);
        let nodes = vec!["a".to_string(), "b".to_string()];
        let placer = Placer::new(&nodes, &snap, &HashSet::new());
        assert_eq!(placer.place(&svc(vec![])).as_deref(), Some("b"));
    }

    /// A host that went down has its replicas spread over the live hosts
    /// (evenly, counting what they run already); with host-mode ports, a
    /// replica no host can take comes back unplaced. Also the cost: 1,000
    /// replicas of a lost host are planned in one linear pass.
    #[test]
    fn replan_moves_a_lost_hosts_replicas() {
        let mut snap = Snapshot::default();
        let s = svc(vec![]);
        snap.services.insert(s.id.clone(), s.clone());
        for r in 1..=1_000 {
            let t = task(r, if r <= 10 { "a" } else { "gone" });
            snap.tasks.insert(t.key(), t);
        }
        snap.alive.extend(["a".to_string(), "b".to_string()]);
        let nodes: Vec<String> = snap.alive.iter().cloned().collect();
        let started = Instant::now();
        let plan = replan(&snap, &nodes);
        let took = started.elapsed();
        eprintln!("replan of 990 lost replicas over 2 hosts: {took:?}");
        assert_eq!(plan.len(), 990);
        let on = |n: &str| plan.iter().filter(|t| t.node.as_deref() == Some(n)).count();
        // 1,000 over two hosts, "a" runs 10 already.
        assert_eq!((on("a"), on("b")), (490, 500));
        assert!(plan.iter().all(|t| t.state == TaskState::Pending
            && t.ip.is_none()
            && t.message == "host gone went down; moved"));
        assert!(took < Duration::from_secs(1), "replan took {took:?}");

        let mut h = svc(vec![ServicePort {
            published: 80,
            target: 80,
            proto: Proto::Tcp,
            mode: PublishMode::Host,
        }]);
        h.id = "s1".into();
        let mut snap = Snapshot::default();
        snap.services.insert(h.id.clone(), h);
        for (r, n) in [(1, "a"), (2, "gone")] {
            let t = task(r, n);
            snap.tasks.insert(t.key(), t);
        }
        snap.alive.insert("a".into());
        let plan = replan(&snap, &["a".to_string()]);
        assert_eq!(plan.len(), 1);
        assert_eq!((plan[0].replica, plan[0].node.as_deref()), (2, None));
        // Unplaced already: nothing to write again.
        let mut snap2 = snap.clone();
        snap2.tasks.insert(plan[0].key(), plan[0].clone());
        assert!(replan(&snap2, &["a".to_string()]).is_empty());
    }

    #[test]
    fn projection_has_vip_and_ingress_frontends_and_live_replicas() {
        let mut snap = Snapshot::default();
        let s = svc(vec![ServicePort {
            published: 8080,
            target: 80,
            proto: Proto::Tcp,
            mode: PublishMode::Ingress,
        }]);
        snap.services.insert(s.id.clone(), s.clone());
        let mut down = task(2, "b");
        down.state = TaskState::Unhealthy;
        for t in [task(1, "a"), down, task(3, "gone")] {
            snap.tasks.insert(t.key(), t);
        }
        snap.alive.insert("a".into());
        snap.alive.insert("b".into());
        let p = &projections(&snap, true)[0];
        assert_eq!(p.slot, 3);
        let fe: Vec<(Ipv4Addr, u16, u16, u16)> = p
            .frontends
            .iter()
            .map(|f| (f.addr, f.port, f.target, f.flags))
            .collect();
        assert_eq!(
            fe,
            vec![
                (
                    Ipv4Addr::UNSPECIFIED,
                    8080,
                    80,
                    dataplane_common::SVC_INGRESS
                ),
                (
                    Ipv4Addr::new(10, 0, 0, 2),
                    80,
                    80,
                    dataplane_common::SVC_VIP
                ),
            ]
        );
        let live: Vec<bool> = p.replicas.iter().map(|r| r.live).collect();
        assert_eq!(
            live,
            vec![true, false, false],
            "unhealthy, and on a host that is down"
        );
    }

    /// A misspelt field is an error naming it, not a default taken in
    /// silence; the CLI's own bodies still parse.
    #[test]
    fn service_requests_refuse_unknown_fields() {
        let err = serde_json::from_str::<ServiceCreate>(
            r#"{"name":"web","network":"n","replica":3,"cmd":["sleep","1"]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `replica`"), "{err}");
        let ok: ServiceCreate = serde_json::from_value(serde_json::json!({
            "name": "web", "network": "n", "replicas": 3, "publish": ["8080:80"],
            "endpoint_mode": null, "health_cmd": null, "health_interval": null,
            "health_timeout": null, "health_retries": null, "env": [], "cmd": ["sleep", "1"],
        }))
        .unwrap();
        assert_eq!(ok.replicas, 3);
        let err = serde_json::from_str::<ServiceUpdate>(r#"{"replicas":2,"publish-add":[]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `publish-add`"), "{err}");
        serde_json::from_value::<ServiceUpdate>(serde_json::json!({
            "replicas": null, "publish_add": ["9090:90"], "publish_rm": ["8080"],
        }))
        .unwrap();
    }

    /// Scaling happens `max` changes a commit at most (etcd's 128
    /// operations), removals first, and converges: the next round after
    /// the changes are in has nothing left.
    #[test]
    fn task_changes_are_bounded_and_converge() {
        let mut snap = Snapshot::default();
        let mut s = svc(vec![]);
        snap.services.insert(s.id.clone(), s.clone());
        for r in 1..=5 {
            let t = task(r, "a");
            snap.tasks.insert(t.key(), t);
        }
        s.replicas = 2;
        let c = task_changes(&snap, &s, TASKS_PER_COMMIT);
        assert_eq!(
            c.remove,
            (3..=5).map(|r| task_key("s1", r)).collect::<Vec<_>>()
        );
        assert!(c.add.is_empty());
        assert_eq!(task_changes(&snap, &s, 2).remove.len(), 2);

        s.replicas = MAX_REPLICAS;
        let mut rounds = 0;
        loop {
            let c = task_changes(&snap, &s, TASKS_PER_COMMIT);
            if c.add.is_empty() && c.remove.is_empty() {
                break;
            }
            assert!(c.add.len() + c.remove.len() <= TASKS_PER_COMMIT);
            for r in c.add {
                let t = task(r, "a");
                snap.tasks.insert(t.key(), t);
            }
            rounds += 1;
        }
        assert_eq!(rounds, 10, "995 new tasks, 100 a commit");
        assert_eq!(snap.tasks_of("s1").len(), MAX_REPLICAS as usize);
        // Each commit of a task change is a guard and a write: within
        // etcd's 128 with the service's own few.
        const { assert!(TASKS_PER_COMMIT + 8 <= 128) };
    }

    #[test]
    fn total_replicas_stay_within_the_backends_map() {
        let mut snap = Snapshot::default();
        let mut other = svc(vec![]);
        other.id = "other".into();
        other.replicas = dataplane_common::MAX_BACKENDS - 10;
        snap.services.insert(other.id.clone(), other);
        let mut me = svc(vec![]);
        me.replicas = 500;
        snap.services.insert(me.id.clone(), me);
        // Its own current count does not count against it.
        check_total_replicas(&snap, "s1", 10).unwrap();
        let err = check_total_replicas(&snap, "s1", 11)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the other services have 65526"), "{err}");
        check_total_replicas(&snap, "new", 0).unwrap();
    }

    /// A port published twice, by another service, or (ingress) by a
    /// container is refused, naming who has it; this service's own
    /// replicas (a task key of it, not one that merely contains its id)
    /// do not count.
    #[test]
    fn ports_taken_are_refused_with_their_holder() {
        let port = |published, mode| ServicePort {
            published,
            target: 80,
            proto: Proto::Tcp,
            mode,
        };
        let mut snap = Snapshot::default();
        let mut other = svc(vec![port(8080, PublishMode::Host)]);
        other.id = "other".into();
        other.name = "api".into();
        snap.services.insert(other.id.clone(), other);
        let ctr = |id: &str, task: Option<String>| model::Container {
            id: id.into(),
            name: format!("c-{id}"),
            hostname: String::new(),
            cmd: vec![],
            netns: String::new(),
            pid: None,
            log_path: String::new(),
            created: String::new(),
            dns: vec![],
            links: vec![],
            env: vec![],
            exposed: vec![],
            ports: vec![model::PortBinding {
                proto: Proto::Tcp,
                host_ip: None,
                host_port: 9090,
                container_port: 80,
            }],
            publish: vec![],
            publish_all: false,
            network_mode: None,
            task,
            external: None,
            labels: Default::default(),
        };
        snap.containers
            .insert("own".into(), ctr("own", Some(task_key("s1", 1))));
        let check = |snap: &Snapshot, ports: &[ServicePort]| {
            check_ports(snap, "s1", ports).map_err(|e| e.to_string())
        };
        assert!(check(&snap, &[port(9090, PublishMode::Ingress)]).is_ok());
        let twice = [port(81, PublishMode::Ingress), port(81, PublishMode::Host)];
        assert!(check(&snap, &twice)
            .unwrap_err()
            .contains("published twice"));
        assert_eq!(
            check(&snap, &[port(8080, PublishMode::Ingress)]).unwrap_err(),
            "port 8080/tcp is already published by service api"
        );
        // A replica of service "xs1y" is not one of "s1"'s.
        snap.containers
            .insert("theirs".into(), ctr("theirs", Some(task_key("xs1y", 1))));
        assert_eq!(
            check(&snap, &[port(9090, PublishMode::Ingress)]).unwrap_err(),
            "port 9090/tcp is already published by container c-theirs"
        );
        // Host-mode ports only meet containers on the host a replica
        // lands on.
        assert!(check(&snap, &[port(9090, PublishMode::Host)]).is_ok());
    }

    /// What a tick computes besides tending each task, with 1,000
    /// replicas: the replica index, the unfinished services, the lost-host
    /// plan. Linear: measured, and bounded well below the 200 ms tick.
    #[test]
    fn tick_bookkeeping_is_linear_in_tasks() {
        let mut snap = Snapshot::default();
        let mut s = svc(vec![]);
        s.replicas = MAX_REPLICAS;
        snap.services.insert(s.id.clone(), s.clone());
        let mut gone = svc(vec![]);
        gone.id = "gone".into();
        for r in 1..=MAX_REPLICAS {
            let mut t = task(r, "a");
            t.container = Some(format!("c{r}"));
            let mut c = serde_json::from_value::<model::Container>(serde_json::json!({
                "id": format!("c{r}"), "name": format!("web.{r}"), "hostname": "h",
                "cmd": ["sleep"], "netns": "n", "pid": null, "log_path": "",
                "created": "",
            }))
            .unwrap();
            c.task = Some(t.key());
            snap.containers.insert(c.id.clone(), c);
            snap.tasks.insert(t.key(), t);
        }
        snap.alive.insert("a".into());
        let nodes = vec!["a".to_string()];
        let started = Instant::now();
        let index = replicas_by_task(&snap);
        let todo = unfinished(&snap);
        let plan = replan(&snap, &nodes);
        let took = started.elapsed();
        eprintln!("tick bookkeeping with 1,000 replicas: {took:?}");
        assert_eq!(index.len(), 1_000);
        assert_eq!(index[task_key("s1", 7).as_str()].id, "c7");
        assert!(todo.is_empty() && plan.is_empty());
        assert!(took < Duration::from_millis(100), "{took:?}");
        // One replica short, one too many, and leftovers of a removed
        // service: all three are found.
        snap.tasks.remove(&task_key("s1", 3));
        let mut extra = task(1, "a");
        extra.service = "gone".into();
        snap.tasks.insert(extra.key(), extra);
        let mut todo = unfinished(&snap);
        todo.sort();
        assert_eq!(todo, vec!["gone", "s1"]);
        let mut s2 = s.clone();
        s2.replicas = 998;
        snap.services.insert(s2.id.clone(), s2);
        assert_eq!(unfinished(&snap), vec!["s1", "gone"]);
    }

    #[test]
    fn restart_delay_doubles_up_to_a_minute() {
        let d: Vec<u64> = [1, 2, 3, 4, 6, 7, 8, 100, u32::MAX]
            .into_iter()
            .map(|n| restart_delay(n).as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 32, 60, 60, 60, 60]);
        assert_eq!(restart_delay(0), FAILED_BACKOFF);
    }

    /// The longest accepted name still gives replica container names and
    /// hostnames that `run` accepts, for the highest replica number; one
    /// character more is refused at create, not at every start.
    #[test]
    fn service_names_fit_their_replicas_names() {
        let name = "s".repeat(MAX_SERVICE_NAME);
        check_service_name(&name).unwrap();
        let mut t = task(MAX_REPLICAS, "a");
        t.id = model::new_id();
        let cname = t.container_name(&name);
        assert!(validate::valid_name(&cname), "{cname}");
        assert!(
            validate::valid_hostname(&cname.replace('.', "-")),
            "{cname}"
        );
        let long = format!("{name}s");
        let err = check_service_name(&long).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
        assert!(check_service_name("")
            .unwrap_err()
            .to_string()
            .contains("needs a name"));
        assert!(check_service_name("-web").is_err());
    }

    #[test]
    fn publish_rm_references() {
        assert_eq!(parse_port_ref("8080").unwrap(), (8080, None));
        assert_eq!(parse_port_ref("53/udp").unwrap(), (53, Some(Proto::Udp)));
        assert_eq!(
            parse_port_ref("published=8080,target=80").unwrap(),
            (8080, Some(Proto::Tcp))
        );
        assert!(parse_port_ref("x").is_err());
        assert!(parse_port_ref("0").is_err());
    }
}

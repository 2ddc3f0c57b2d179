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
    collections::{BTreeMap, HashMap},
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
/// How often the agent looks at its tasks.
const AGENT_TICK: Duration = Duration::from_millis(200);
/// Health-check defaults (Docker's interval is 30 s; a routing mesh that
/// must drop a dead replica within seconds wants shorter).
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
const HEALTH_RETRIES: u32 = 3;
/// Wait before starting a task again whose container could not start.
const FAILED_BACKOFF: Duration = Duration::from_secs(2);

impl Engine {
    // ----- operations ----------------------------------------------------

    pub fn create_service(&self, req: ServiceCreate) -> ApiResult<String> {
        let name = req.name.clone();
        if !validate::valid_name(&name) {
            return Err(bad(format!("invalid service name {name:?}")));
        }
        if req.replicas > MAX_REPLICAS {
            return Err(bad(format!(
                "--replicas {} is more than {MAX_REPLICAS}",
                req.replicas
            )));
        }
        if req.cmd.is_empty() {
            return Err(bad(
                "no command given: dataplane service create [OPTIONS] -- CMD [ARGS...]",
            ));
        }
        if super::sandbox::resolve_command(&req.cmd[0]).is_none() {
            return Err(bad(format!("executable file not found: {}", req.cmd[0])));
        }
        for kv in &req.env {
            if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(bad(format!("invalid -e {kv:?}: expected KEY=VALUE")));
            }
        }
        let ports = req
            .publish
            .iter()
            .map(|p| validate::parse_service_port(p))
            .collect::<ApiResult<Vec<_>>>()?;
        let endpoint_mode = match req.endpoint_mode.as_deref() {
            None | Some("vip") => EndpointMode::Vip,
            Some("dnsrr") => EndpointMode::Dnsrr,
            Some(m) => {
                return Err(bad(format!(
                    "invalid --endpoint-mode {m:?}: expected vip or dnsrr"
                )))
            }
        };
        if endpoint_mode == EndpointMode::Dnsrr
            && ports.iter().any(|p| p.mode == PublishMode::Ingress)
        {
            // Swarm refuses this too: the routing mesh balances to a VIP's
            // replicas.
            return Err(bad(
                "ingress-mode ports need --endpoint-mode vip; publish with mode=host for dnsrr",
            ));
        }
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
            let mut placed = Vec::new();
            for replica in 1..=req.replicas {
                let task = self.new_task(snap, &svc, replica, &placed);
                t.put(task.key(), json(&task)?);
                placed.push(task);
            }
            Ok((t, ()))
        })?;
        self.applied(rev, &[])?;
        info!(service = %name, replicas = req.replicas, "service created");
        Ok(id)
    }

    pub fn update_service(&self, name: &str, req: ServiceUpdate) -> ApiResult<()> {
        if let Some(n) = req.replicas {
            if n > MAX_REPLICAS {
                return Err(bad(format!("replicas {n} is more than {MAX_REPLICAS}")));
            }
        }
        let add = req
            .publish_add
            .iter()
            .map(|p| validate::parse_service_port(p))
            .collect::<ApiResult<Vec<_>>>()?;
        let rm = req
            .publish_rm
            .iter()
            .map(|p| parse_port_ref(p))
            .collect::<ApiResult<Vec<_>>>()?;
        let (rev, ()) = self.commit_with(|snap| {
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
            if svc.endpoint_mode == EndpointMode::Dnsrr
                && svc.ports.iter().any(|p| p.mode == PublishMode::Ingress)
            {
                return Err(bad(
                    "ingress-mode ports need --endpoint-mode vip; publish with mode=host for dnsrr",
                ));
            }
            if !add.is_empty() && snap.networks.get(&svc.network).is_some_and(|n| n.internal) {
                return Err(bad(
                    "cannot publish ports of a service on an internal network",
                ));
            }
            check_ports(snap, &sid, &svc.ports)?;
            if let Some(n) = req.replicas {
                svc.replicas = n;
            }
            svc.version += 1;
            let mut t = Txn::default();
            t.unchanged(svc.key(), snap.rev_of(&svc.key()))
                .unchanged(SERVICES_CLAIM, snap.rev_of(SERVICES_CLAIM))
                .put(SERVICES_CLAIM, sid.clone().into_bytes())
                .put(svc.key(), json(&svc)?);
            let tasks: Vec<Task> = snap.tasks_of(&sid).into_iter().cloned().collect();
            let mut kept: Vec<Task> = Vec::new();
            for task in tasks {
                if task.replica > svc.replicas {
                    t.unchanged(task.key(), snap.rev_of(&task.key()))
                        .delete(task.key());
                } else {
                    kept.push(task);
                }
            }
            for replica in 1..=svc.replicas {
                if kept.iter().any(|k| k.replica == replica) {
                    continue;
                }
                let task = self.new_task(snap, &svc, replica, &kept);
                t.put(task.key(), json(&task)?);
                kept.push(task);
            }
            Ok((t, ()))
        })?;
        self.applied(rev, &[])?;
        info!(service = %name, "service updated");
        Ok(())
    }

    pub fn remove_service(&self, name: &str) -> ApiResult<()> {
        let (rev, mine) = self.commit_with(|snap| {
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
            let mut mine = Vec::new();
            for task in snap.tasks_of(&sid) {
                t.delete(task.key());
                if task.node.as_deref() == Some(self.node()) {
                    mine.extend(task.container.clone());
                }
            }
            Ok((t, mine))
        })?;
        self.applied(rev, &[])?;
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

    /// A new task for replica `replica` of `svc`, placed on the host with
    /// the fewest replicas of this service (then of all services), given
    /// the tasks `placed` of this commit so far.
    fn new_task(&self, snap: &Snapshot, svc: &Service, replica: u32, placed: &[Task]) -> Task {
        let mut task = Task {
            id: model::new_id(),
            service: svc.id.clone(),
            replica,
            node: None,
            state: TaskState::Pending,
            message: String::new(),
            container: None,
            ip: None,
            restarts: 0,
            since: model::now_rfc3339(),
        };
        let candidates = self.candidate_nodes(snap);
        let mut same: Vec<&Task> = snap.tasks_of(&svc.id);
        same.retain(|t| !placed.iter().any(|p| p.replica == t.replica));
        same.extend(placed.iter());
        task.node = place(&candidates, snap, svc, &same);
        if task.node.is_none() {
            task.message = if candidates.is_empty() {
                "no host is alive".into()
            } else {
                "no host can take it: each host runs one replica of a service with host-mode ports"
                    .into()
            };
        }
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

/// Refuses ports published twice, by another service, or (ingress ports:
/// every host address answers them) by a container of this host.
fn check_ports(snap: &Snapshot, sid: &str, ports: &[ServicePort]) -> ApiResult<()> {
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.published == p.published && q.proto == p.proto)
        {
            return Err(bad(format!(
                "port {}/{} is published twice",
                p.published, p.proto
            )));
        }
        if let Some(other) = snap.services.values().find(|s| {
            s.id != sid
                && s.ports
                    .iter()
                    .any(|q| q.published == p.published && q.proto == p.proto)
        }) {
            return Err(ApiError::Conflict(format!(
                "port {}/{} is already published by service {}",
                p.published, p.proto, other.name
            )));
        }
        if p.mode == PublishMode::Ingress {
            if let Some(c) = snap.containers.values().find(|c| {
                c.task.as_ref().is_none_or(|k| !k.contains(sid))
                    && c.ports
                        .iter()
                        .any(|b| b.host_port == p.published && b.proto == p.proto)
            }) {
                return Err(ApiError::Conflict(format!(
                    "port {}/{} is already published by container {}",
                    p.published, p.proto, c.name
                )));
            }
        }
    }
    Ok(())
}

/// The host a new replica of `svc` goes to: among `candidates`, the one
/// with the fewest replicas of `svc` (`same`), then of all services, then
/// by name. With host-mode ports, a host runs one replica at most.
pub fn place(
    candidates: &[String],
    snap: &Snapshot,
    svc: &Service,
    same: &[&Task],
) -> Option<String> {
    let host_mode = svc.ports.iter().any(|p| p.mode == PublishMode::Host);
    let mut total: HashMap<&str, usize> = HashMap::new();
    for t in snap.tasks.values() {
        if let Some(n) = &t.node {
            *total.entry(n.as_str()).or_default() += 1;
        }
    }
    candidates
        .iter()
        .map(|n| {
            let mine = same
                .iter()
                .filter(|t| t.node.as_deref() == Some(n.as_str()))
                .count();
            (mine, total.get(n.as_str()).copied().unwrap_or(0), n)
        })
        .filter(|(mine, _, _)| !host_mode || *mine == 0)
        .min()
        .map(|(_, _, n)| n.clone())
}

/// What the agent remembers between ticks (nothing of it is needed after
/// a restart: the store has the tasks, the kernel their containers).
#[derive(Default)]
struct Agent {
    health: HashMap<String, Health>,
    /// Tasks whose start failed, and when to try again.
    backoff: HashMap<String, Instant>,
    /// Tasks that stayed unhealthy for another `retries` checks: their
    /// container is replaced at the next tick.
    restart: std::collections::HashSet<String>,
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
        for task in snap.tasks.values() {
            if task.node.as_deref() != Some(me.as_str()) {
                continue;
            }
            let Some(svc) = snap.services.get(&task.service) else {
                continue;
            };
            if let Err(err) = self.tend(e, &snap, svc, task) {
                if !matches!(err, ApiError::Conflict(_)) {
                    warn!(task = %task.key(), "{err}");
                }
            }
        }
        self.sweep(e, &snap, &me);
        if e.cluster.is_some() {
            self.replace_lost(e, &snap, &me);
        }
        self.health.retain(|k, _| {
            snap.tasks
                .get(k)
                .is_some_and(|t| t.node.as_deref() == Some(me.as_str()))
        });
    }

    /// Brings one of this host's tasks along: starts its container,
    /// notices its exit, runs its health check.
    fn tend(&mut self, e: &Engine, snap: &Snapshot, svc: &Service, task: &Task) -> ApiResult<()> {
        let key = task.key();
        let ctr = task
            .container
            .as_ref()
            .and_then(|cid| snap.containers.get(cid))
            .filter(|c| c.task.as_deref() == Some(key.as_str()));
        if ctr.is_none() && task.container.is_none() {
            // Started, but the task was not updated (a daemon that died in
            // between, or a lost race): adopt it.
            if let Some(c) = snap
                .containers
                .values()
                .find(|c| c.task.as_deref() == Some(key.as_str()) && !snap.is_pending(&c.id))
            {
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
                .is_some_and(|at| Instant::now() < *at)
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
            let mut t = task.clone();
            if !alive {
                t.state = TaskState::Exited;
                t.message = "its process exited; restarting".into();
            } else if sick {
                t.state = TaskState::Unhealthy;
                t.message = "unhealthy for too long; restarting".into();
            } else {
                t.state = TaskState::Pending;
                t.message = "its published ports changed; restarting".into();
            }
            t.since = model::now_rfc3339();
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
                let mut t = task.clone();
                t.state = TaskState::Running;
                t.message.clear();
                t.since = model::now_rfc3339();
                e.put_task(snap, &t)?;
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
                self.backoff.remove(&key);
                let now = e.snapshot();
                let ip = now.endpoints_of_container(&cid).first().map(|ep| ep.ip);
                let Some(cur) = now.tasks.get(&key).cloned() else {
                    // Removed while it started.
                    let _ = e.remove_container(&cid, true);
                    return Ok(());
                };
                let mut t = cur;
                t.container = Some(cid.clone());
                t.ip = ip;
                t.state = if svc.health.is_some() {
                    TaskState::Starting
                } else {
                    TaskState::Running
                };
                t.message.clear();
                t.since = model::now_rfc3339();
                if let Err(err) = e.put_task(&now, &t) {
                    let _ = e.remove_container(&cid, true);
                    return Err(err);
                }
                info!(task = %key, container = %cid, "replica started");
                Ok(())
            }
            Err(err) => {
                self.backoff
                    .insert(key.clone(), Instant::now() + FAILED_BACKOFF);
                if task.state != TaskState::Failed || task.message != err.to_string() {
                    let mut t = task.clone();
                    t.state = TaskState::Failed;
                    t.message = err.to_string();
                    t.since = model::now_rfc3339();
                    e.put_task(snap, &t)?;
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
        let h = self.health.entry(key.clone()).or_insert_with(|| Health {
            next: Instant::now(),
            fails: 0,
            running: None,
            container: c.id.clone(),
        });
        if h.container != c.id {
            *h = Health {
                next: Instant::now(),
                fails: 0,
                running: None,
                container: c.id.clone(),
            };
        }
        if let Some(rx) = &h.running {
            let outcome = match rx.try_recv() {
                Ok(r) => r,
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => Err("the check did not report".into()),
            };
            h.running = None;
            h.next = Instant::now() + Duration::from_millis(check.interval_ms);
            let mut t = task.clone();
            match outcome {
                Ok(()) => {
                    h.fails = 0;
                    if task.state != TaskState::Running {
                        t.state = TaskState::Running;
                        t.message.clear();
                        t.since = model::now_rfc3339();
                        e.put_task(snap, &t)?;
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
                        t.state = TaskState::Unhealthy;
                        t.message = format!("health check failed {} times: {why}", h.fails);
                        t.since = model::now_rfc3339();
                        e.put_task(snap, &t)?;
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
                t.node.as_deref() == Some(me) && t.container.as_deref().is_none_or(|id| id == c.id)
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
        let mut placed: BTreeMap<String, Task> = BTreeMap::new();
        for task in snap.tasks.values() {
            let lost = match &task.node {
                Some(n) => !snap.alive.contains(n),
                None => true,
            };
            if !lost {
                continue;
            }
            let Some(svc) = snap.services.get(&task.service) else {
                continue;
            };
            let mut same: Vec<&Task> = snap
                .tasks_of(&svc.id)
                .into_iter()
                .filter(|t| t.replica != task.replica && !placed.contains_key(&t.key()))
                .collect();
            same.extend(placed.values().filter(|t| t.service == svc.id));
            let mut t = task.clone();
            let Some(node) = place(&candidates, snap, svc, &same) else {
                if let Some(old) = &task.node {
                    // Nowhere to go: unplaced (out of every table) until a
                    // host can take it.
                    t.node = None;
                    t.state = TaskState::Pending;
                    t.container = None;
                    t.ip = None;
                    t.message = format!("host {old} went down; no other host can take it");
                    t.since = model::now_rfc3339();
                    if let Err(err) = e.put_task(snap, &t) {
                        warn!(task = %t.key(), "unplacing a replica: {err}");
                    }
                }
                continue;
            };
            if let Some(old) = &task.node {
                t.message = format!("host {old} went down; moved");
            } else {
                t.message.clear();
            }
            t.node = Some(node.clone());
            t.state = TaskState::Pending;
            t.container = None;
            t.ip = None;
            t.since = model::now_rfc3339();
            match e.put_task(snap, &t) {
                Ok(()) => {
                    info!(task = %t.key(), node = %node, "replica placed again");
                    placed.insert(t.key(), t);
                }
                Err(err) => warn!(task = %t.key(), "placing a replica again: {err}"),
            }
        }
    }
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
        let tasks = snap.tasks_of(&svc.id);
        let replicas: Vec<serde_json::Value> = st
            .replicas
            .iter()
            .map(|r| {
                let t = tasks.iter().find(|t| t.id == r.name);
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
    use crate::model::Proto;

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
            ip: Some(Ipv4Addr::new(10, 0, 0, 10 + replica as u8)),
            restarts: 0,
            since: String::new(),
        }
    }

    #[test]
    fn placement_spreads_and_respects_host_mode() {
        let snap = Snapshot::default();
        let nodes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let s = svc(vec![]);
        let mut placed: Vec<Task> = Vec::new();
        for r in 1..=6 {
            let same: Vec<&Task> = placed.iter().collect();
            let n = place(&nodes, &snap, &s, &same).unwrap();
            placed.push(task(r, &n));
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
        let h = svc(vec![ServicePort {
            published: 80,
            target: 80,
            proto: Proto::Tcp,
            mode: PublishMode::Host,
        }]);
        let mut placed: Vec<Task> = Vec::new();
        for r in 1..=3 {
            let same: Vec<&Task> = placed.iter().collect();
            placed.push(task(r, &place(&nodes, &snap, &h, &same).unwrap()));
        }
        let same: Vec<&Task> = placed.iter().collect();
        assert_eq!(
            place(&nodes, &snap, &h, &same),
            None,
            "a fourth host-mode replica has no host"
        );
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

//! Services (Docker swarm's model): a named set of replicas of one command
//! on one network, with a virtual IP (or round-robin DNS) and published
//! ports answered on every host (`mode=ingress`) or on the hosts that run a
//! replica (`mode=host`). The store holds the service and one task per
//! replica; each task names the host that runs it, and that host's engine
//! starts, watches and restarts its container.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Proto, CLUSTER};

/// `cluster/services/<id>`.
pub const SERVICES: &str = "cluster/services/";
/// `cluster/tasks/<service id>/<replica number>`.
pub const TASKS: &str = "cluster/tasks/";
/// Rewritten and guarded by every commit that creates, changes or removes
/// a service: names, slots and ingress ports are checked against a set
/// that cannot change under the check.
pub const SERVICES_CLAIM: &str = "cluster/claims/services";

/// How a service's name resolves (`--endpoint-mode`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    /// One virtual IP, balanced in eBPF.
    #[default]
    Vip,
    /// The live replicas' own addresses, in DNS.
    Dnsrr,
}

impl EndpointMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }
}

/// Where a published port answers.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Every host of the cluster answers and balances to any replica.
    #[default]
    Ingress,
    /// Only hosts running a replica answer, to their own replica.
    Host,
}

impl PublishMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }
}

/// `--publish published=P,target=T,protocol=tcp,mode=ingress`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
    pub mode: PublishMode,
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "*:{}->{}/{} ({})",
            self.published,
            self.target,
            self.proto,
            self.mode.as_str()
        )
    }
}

/// `--health-cmd` and its settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HealthCheck {
    /// Run with `/bin/sh -c` inside the replica's sandbox.
    pub cmd: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that make a replica unhealthy.
    pub retries: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    pub name: String,
    /// The network's id.
    pub network: String,
    pub endpoint_mode: EndpointMode,
    /// The virtual IP on the network (`vip` mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Ipv4Addr>,
    pub replicas: u32,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// The service's Maglev table and counters on every host
    /// (`dataplane_common::MAX_SERVICES` of them).
    pub slot: u32,
    pub created: String,
    /// Bumped by every `service update`.
    #[serde(default)]
    pub version: u64,
}

impl Service {
    pub fn key(&self) -> String {
        format!("{SERVICES}{}", self.id)
    }

    /// The ports every host answers.
    pub fn ingress_ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.ports.iter().filter(|p| p.mode == PublishMode::Ingress)
    }

    /// The `-p` arguments of a replica's container: its host-mode ports.
    pub fn host_publish(&self) -> Vec<String> {
        self.ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .map(|p| format!("{}:{}/{}", p.published, p.target, p.proto))
            .collect()
    }
}

/// What a replica is doing, as `service ps` shows it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Not placed on a host yet, or placed and not started.
    #[default]
    Pending,
    /// Its container runs; with a health check, not yet seen healthy.
    Starting,
    /// Its container runs (and passed its last health check).
    Running,
    /// Its health check failed `retries` times in a row.
    Unhealthy,
    /// Its process exited; it is being restarted.
    Exited,
    /// Its container could not be started (the message says why).
    Failed,
}

impl TaskState {
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Unhealthy => "unhealthy",
            TaskState::Exited => "exited",
            TaskState::Failed => "failed",
        }
    }
}

/// One replica of a service (`cluster/tasks/<service id>/<replica>`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub service: String,
    /// The replica number, from 1 (`web.1`, `web.2`, ...).
    pub replica: u32,
    /// The host it is placed on ("" for one host alone); `None` while no
    /// host can take it.
    pub node: Option<String>,
    pub state: TaskState,
    /// Why it is in this state (an error, a failed health check, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Its container on that host, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Its address on the service's network, once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// How many times its container was started again.
    #[serde(default)]
    pub restarts: u32,
    /// When it entered this state (RFC 3339).
    pub since: String,
}

impl Task {
    pub fn key(&self) -> String {
        task_key(&self.service, self.replica)
    }

    /// Whether new connections may go to it.
    pub fn live(&self) -> bool {
        self.state == TaskState::Running && self.ip.is_some()
    }

    /// The name of its container (`web.2.<task id prefix>`, as swarm names
    /// them).
    pub fn container_name(&self, service: &str) -> String {
        format!(
            "{service}.{}.{}",
            self.replica,
            &self.id[..12.min(self.id.len())]
        )
    }
}

pub fn task_key(service_id: &str, replica: u32) -> String {
    format!("{TASKS}{service_id}/{replica:05}")
}

/// Whether `key` is a service's or a task's.
pub fn is_service_key(key: &str) -> bool {
    key.starts_with(SERVICES) || key.starts_with(TASKS)
}

const _: () = assert!(SERVICES.len() > CLUSTER.len());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_keys_sort_by_replica() {
        assert!(task_key("s", 2) < task_key("s", 10));
        assert!(is_service_key(&task_key("s", 1)));
        assert!(!is_service_key("cluster/endpoints/x"));
    }

    #[test]
    fn host_mode_ports_become_publish_arguments() {
        let p = |published, mode| ServicePort {
            published,
            target: 80,
            proto: Proto::Tcp,
            mode,
        };
        let s = Service {
            id: "i".into(),
            name: "web".into(),
            network: "n".into(),
            endpoint_mode: EndpointMode::Vip,
            vip: None,
            replicas: 1,
            ports: vec![p(8080, PublishMode::Ingress), p(9090, PublishMode::Host)],
            cmd: vec!["true".into()],
            env: vec![],
            health: None,
            slot: 0,
            created: String::new(),
            version: 0,
        };
        assert_eq!(s.host_publish(), vec!["9090:80/tcp".to_string()]);
        assert_eq!(s.ingress_ports().count(), 1);
    }
}

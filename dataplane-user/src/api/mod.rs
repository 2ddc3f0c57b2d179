//! The HTTP+JSON API on a Unix socket. The CLI is one client; the Docker
//! remote driver and the CNI plugin (later) are two more front doors to the
//! same routes and types.

pub mod client;
pub mod error;
pub mod server;
pub mod views;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default socket of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/dataplane/api.sock";

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct NetworkCreate {
    pub name: String,
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub subnet: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub ip_range: Option<String>,
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ContainerCreate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    /// Aliases on the network joined at run (`--network-alias`).
    #[serde(default)]
    pub network_aliases: Vec<String>,
    /// Upstream resolvers for this container (`--dns`).
    #[serde(default)]
    pub dns: Vec<String>,
    /// `--link NAME[:ALIAS]`.
    #[serde(default)]
    pub links: Vec<String>,
    /// `-e KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `--expose PORT[/PROTO]`.
    #[serde(default)]
    pub expose: Vec<String>,
    /// `-p SPEC` in any form Docker accepts (parsed by the daemon:
    /// `crate::ports::parse_publish`).
    #[serde(default)]
    pub publish: Vec<String>,
    /// `-P`: every exposed port onto a free host port on every address.
    #[serde(default)]
    pub publish_all: bool,
    pub cmd: Vec<String>,
}

/// One published port as Docker's API lists it
/// (`GET /containers/{name}/ports`, `dataplane port --format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    #[serde(rename = "PrivatePort")]
    pub private_port: u16,
    /// `tcp` or `udp`.
    #[serde(rename = "Type")]
    pub proto: crate::model::Proto,
    /// The host address, `0.0.0.0` for every address.
    #[serde(rename = "IP")]
    pub ip: String,
    #[serde(rename = "PublicPort")]
    pub public_port: u16,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Connect {
    pub container: String,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    pub container: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Created {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
}

/// `service create`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServiceCreate {
    pub name: String,
    pub network: String,
    #[serde(default = "one")]
    pub replicas: u32,
    /// `--publish` in swarm's long form (`published=P,target=T,...`) or
    /// short form (`P:T[/PROTO]`).
    #[serde(default)]
    pub publish: Vec<String>,
    /// `vip` (default) or `dnsrr`.
    #[serde(default)]
    pub endpoint_mode: Option<String>,
    #[serde(default)]
    pub health_cmd: Option<String>,
    /// `--health-interval` (`5s`, `500ms`, `1m`).
    #[serde(default)]
    pub health_interval: Option<String>,
    #[serde(default)]
    pub health_timeout: Option<String>,
    #[serde(default)]
    pub health_retries: Option<u32>,
    #[serde(default)]
    pub env: Vec<String>,
    pub cmd: Vec<String>,
}

fn one() -> u32 {
    1
}

/// `service update` and `service scale`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ServiceUpdate {
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub publish_add: Vec<String>,
    /// A published port (`P` or `P/PROTO`) or a whole spec to remove.
    #[serde(default)]
    pub publish_rm: Vec<String>,
}

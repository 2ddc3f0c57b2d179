//! The HTTP+JSON API on a Unix socket. The CLI is one client; the Docker
//! remote driver and the CNI plugin (later) are two more front doors to the
//! same routes and types.

pub mod client;
pub mod error;
pub mod filters;
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
    /// `--label KEY=VALUE`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--attachable`.
    #[serde(default)]
    pub attachable: bool,
    /// `--ipam-driver`: `default` (this daemon's) or `dhcp`.
    #[serde(default)]
    pub ipam_driver: Option<String>,
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
    /// `--label KEY=VALUE`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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

/// `service create`. Unknown fields are refused: a misspelt `replica` or
/// `health_command` would otherwise create a service other than the one
/// asked for, without a word.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

/// `service update` and `service scale` (unknown fields refused, as for
/// create).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub publish_add: Vec<String>,
    /// A published port (`P` or `P/PROTO`) or a whole spec to remove.
    #[serde(default)]
    pub publish_rm: Vec<String>,
}

/// A sandbox another runtime owns, to be attached to one of our networks
/// (`POST /attachments`): what the Docker plugin's `CreateEndpoint` and the
/// CNI plugin's `ADD` ask for. Unknown fields are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    pub runtime: crate::model::Runtime,
    /// The runtime's key (Docker's endpoint id; CNI: `CONTAINERID:IFNAME`).
    pub id: String,
    /// The name `ps` and DNS know it by (default `<runtime>-<12 of id>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Our network's name or id.
    pub network: String,
    /// The runtime's network namespace (CNI_NETNS). Without one (Docker),
    /// the veth's peer is left in the daemon's namespace for the runtime to
    /// move and configure.
    #[serde(default)]
    pub netns: Option<String>,
    /// The interface name inside the namespace (CNI_IFNAME; eth0).
    #[serde(default)]
    pub ifname: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PortMapping>,
}

/// One port to publish for an attachment (Docker's portmap, CNI's
/// `portMappings`). `host_port` 0 takes any free port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    pub proto: crate::model::Proto,
    #[serde(default)]
    pub host_ip: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    pub host_port: u16,
    /// The last port of a range `host_port..=host_port_end` (0: just
    /// `host_port`).
    #[serde(default)]
    pub host_port_end: u16,
    pub container_port: u16,
}

impl PortMapping {
    /// The request as `run -p` would make it.
    pub fn to_request(&self) -> Result<crate::ports::PortRequest, String> {
        if self.container_port == 0 {
            return Err("invalid port mapping: the container port is 0".into());
        }
        let end = self.host_port_end.max(self.host_port);
        if self.host_port == 0 && self.host_port_end != 0 {
            return Err(format!(
                "invalid port mapping: a range must start above 0 (0-{})",
                self.host_port_end
            ));
        }
        Ok(crate::ports::PortRequest {
            proto: self.proto,
            host_ip: self.host_ip,
            host_ports: (self.host_port != 0).then_some((self.host_port, end)),
            container_port: self.container_port,
        })
    }
}

/// An attachment as made: what the runtime needs to finish its side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub runtime: crate::model::Runtime,
    pub id: String,
    pub container_id: String,
    pub endpoint_id: String,
    pub name: String,
    /// The network's name and id.
    pub network: String,
    pub network_id: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: std::net::Ipv4Addr,
    /// An internal network: no default route through the gateway.
    pub internal: bool,
    pub mac: crate::model::Mac,
    /// The host side of the veth.
    pub host_ifname: String,
    /// Docker: the end to move into the sandbox ("" for CNI).
    pub peer: String,
    /// The interface name inside the sandbox.
    pub ifname: String,
    /// The runtime's namespace ("" until Docker joins).
    pub netns: String,
    pub ports: Vec<crate::model::PortBinding>,
}

/// `POST /attachments/{runtime}/{id}/netns`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNetns {
    pub netns: String,
}

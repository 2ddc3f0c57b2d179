//! Docker's Container Network Model: networks, endpoints and sandboxes
//! (containers). These records are what the store holds; everything in the
//! kernel (netns, veths, routes, BPF map entries) is derived from them.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

pub mod docker;
pub mod service;
pub mod snapshot;
pub mod validate;

/// Key prefixes in the store.
pub const NETWORKS: &str = "networks/";
pub const ENDPOINTS: &str = "endpoints/";
pub const CONTAINERS: &str = "containers/";
pub const PENDING: &str = "pending/";

/// Claim keys: they make allocations unique across concurrent writers (a
/// commit that claims one guards that it is absent, or unchanged since it
/// was read).
pub const CLAIMS: &str = "claims/";

/// Keys every host of a cluster shares (overlay networks, their endpoints,
/// address blocks, nodes); everything else is this host's own. On a cluster
/// store, a host's own keys live under `nodes/<name>/` (see
/// [`crate::store::NodeScoped`]), so that two hosts can both have a
/// `bridge` network and containers of the same name, as with Docker.
pub const CLUSTER: &str = "cluster/";

/// The cluster's counterpart of [`NETWORKS_CLAIM`]: rewritten and guarded by
/// every commit that creates or removes an overlay network (names, VNIs and
/// subnets unique across hosts).
pub const CLUSTER_NETWORKS_CLAIM: &str = "cluster/claims/networks";

/// `cluster/nodes/<name>`: a host that joined, with its underlay address.
pub const NODES: &str = "cluster/nodes/";
/// `cluster/alive/<name>`: present while the host's lease is kept alive.
pub const ALIVE: &str = "cluster/alive/";
/// `cluster/blocks/<network id>/<block>`: a host's block of an overlay
/// subnet (the value is the host's name).
pub const BLOCKS: &str = "cluster/blocks/";

/// The store key of a block of network `nid`.
pub fn block_key(nid: &str, block: Ipv4Network) -> String {
    format!("{BLOCKS}{nid}/{}_{}", block.network(), block.prefix())
}

/// `claims/names/<name>`: a container name.
pub fn name_claim(name: &str) -> String {
    format!("{CLAIMS}names/{name}")
}

/// `claims/ips/<network id>/<ip>`: an address on a network (under
/// `cluster/` for a network every host shares).
pub fn ip_claim(net: &Network, ip: Ipv4Addr) -> String {
    format!("{}{CLAIMS}ips/{}/{ip}", net.scope(), net.id)
}

/// The claim an endpoint holds: its address's, or, for a DHCP endpoint
/// without an address yet (or any more), one of its own.
pub fn endpoint_claim(net: &Network, ep: &Endpoint) -> String {
    if ep.has_address() {
        ip_claim(net, ep.ip)
    } else {
        format!("{}{CLAIMS}dhcp/{}/{}", net.scope(), net.id, ep.id)
    }
}

/// Rewritten by every commit that creates or removes a network, and guarded
/// by it: network names, numbers and subnets are checked against a set that
/// cannot change under the check.
pub const NETWORKS_CLAIM: &str = "claims/networks";

/// Rewritten and guarded by every commit that publishes host ports.
pub const PORTS_CLAIM: &str = "claims/ports";

/// `claims/net-use/<network id>`: rewritten by every commit that attaches an
/// endpoint to the network; `network rm` guards it, so a removal can never
/// race an attachment it did not see.
pub fn net_use_claim(net: &Network) -> String {
    format!("{}{CLAIMS}net-use/{}", net.scope(), net.id)
}

/// A host of the cluster (`cluster/nodes/<name>`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The underlay address its VXLAN comes from (`--advertise-addr`).
    pub addr: Ipv4Addr,
    /// When it first joined (RFC 3339).
    pub joined: String,
}

impl Node {
    pub fn key(&self) -> String {
        format!("{NODES}{}", self.name)
    }
}

/// The intent of an operation in progress (`run`, `connect`), committed
/// with the records it creates and deleted by the commit that completes it.
/// A daemon that finds one at start died half-way: it deletes the keys the
/// intent names, and the reconciler removes what the store no longer wants.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// The operation's id (the new container's id for `run`, the new
    /// endpoint's for `connect`).
    #[serde(default)]
    pub op: String,
    pub container_id: String,
    /// The sandbox netns the operation creates or joins.
    pub netns: String,
    /// The keys to delete if the operation never completes.
    #[serde(default)]
    pub keys: Vec<String>,
}

impl Pending {
    pub fn key(&self) -> String {
        let op = if self.op.is_empty() {
            &self.container_id
        } else {
            &self.op
        };
        format!("{PENDING}{op}")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Network {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// Small number naming the network in BPF maps.
    pub num: u32,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub ip_range: Option<Ipv4Network>,
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
    pub internal: bool,
    pub options: BTreeMap<String, String>,
    pub created: String,
    /// The VXLAN network identifier of an overlay network (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vni: u32,
    /// The prefix length of the per-host address blocks of an overlay network.
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub block_prefix: u8,
    /// Static VTEPs (hosts without our daemon) of an overlay network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vteps: Vec<Ipv4Addr>,
    /// `--label KEY=VALUE`: the user's metadata, matched by `--filter label=`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `--attachable` as given (every network here takes standalone
    /// containers; the flag is kept for `inspect` and Docker's tools).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attachable: bool,
    /// Created by a Docker engine through our driver plugin: Docker owns
    /// its life (`network prune` leaves it alone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker: bool,
    /// A `macvlan` network's parent interface, mode and VLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<Macvlan>,
    /// `--ipam-driver dhcp`: addresses come from the LAN's DHCP server,
    /// one lease per endpoint, instead of this daemon's IPAM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
}

/// Where a `macvlan` network meets the LAN (`-o parent=`, `-o
/// macvlan_mode=`, `-o vlan=` or Docker's `parent=IFACE.VID`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Macvlan {
    /// The host interface on the LAN.
    pub parent: String,
    /// `bridge`, `private`, `vepa` or `passthru` (the kernel's macvlan
    /// modes; a VLAN network switches like `bridge`).
    pub mode: String,
    /// The 802.1Q VID our programs push and pop on the parent (no
    /// sub-interface): the network is then a VLAN network of veth pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

impl Macvlan {
    /// How the network names its segment: `eth0` or `eth0 VLAN 100`.
    pub fn segment(&self) -> String {
        match self.vlan {
            Some(v) => format!("{} VLAN {v}", self.parent),
            None => format!("{} (untagged)", self.parent),
        }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

/// The numeric ids of overlay networks in BPF maps: the VNI with this bit,
/// so that every host numbers a shared network alike and no local network
/// (1..=[`dataplane_common::MAX_NETWORKS`]) collides with one.
pub const OVERLAY_NUM_BASE: u32 = 1 << 24;

impl Network {
    pub fn key(&self) -> String {
        format!("{}{NETWORKS}{}", self.scope(), self.id)
    }

    /// Whether every host of the cluster shares this network.
    pub fn is_cluster(&self) -> bool {
        self.driver == "overlay"
    }

    /// The key prefix of this network's records and claims: [`CLUSTER`] or "".
    pub fn scope(&self) -> &'static str {
        if self.is_cluster() {
            CLUSTER
        } else {
            ""
        }
    }

    /// The network's id in BPF maps (`Endpoint::network_id`).
    pub fn bpf_num(&self) -> u32 {
        if self.is_cluster() {
            OVERLAY_NUM_BASE | self.vni
        } else {
            self.num
        }
    }

    /// The VID of a VLAN network (`macvlan` on a tagged segment).
    pub fn vlan(&self) -> Option<u16> {
        self.macvlan.as_ref().and_then(|m| m.vlan)
    }

    /// `--opt icc=false` (or Docker's own key for it).
    pub fn icc_disabled(&self) -> bool {
        ["icc", "com.docker.network.bridge.enable_icc"]
            .iter()
            .any(|k| self.options.get(*k).is_some_and(|v| v == "false"))
    }

    /// Whether this is a user-defined network (names resolve on it).
    pub fn user_defined(&self) -> bool {
        self.name != "bridge"
    }

    /// The network as every endpoint entry in the BPF maps carries it.
    pub fn to_bpf(&self) -> dataplane_common::Network {
        dataplane_common::Network {
            subnet: dataplane_common::ipv4_wire(self.subnet.network().octets()),
            mask: dataplane_common::ipv4_wire(self.subnet.mask().octets()),
            gateway: dataplane_common::ipv4_wire(self.gateway.octets()),
            flags: if self.internal {
                dataplane_common::NET_INTERNAL
            } else {
                0
            } | if self.icc_disabled() {
                dataplane_common::NET_ICC_DISABLED
            } else {
                0
            } | if self.vlan().is_some() {
                dataplane_common::NET_VLAN
            } else {
                0
            },
            vni: self.vni,
        }
    }
}

/// A network attachment: a veth pair, one end in the sandbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub network_id: String,
    pub container_id: String,
    pub ip: Ipv4Addr,
    /// MAC of the sandbox side.
    pub mac: Mac,
    /// MAC of the host side (the gateway MAC the sandbox sees).
    pub host_mac: Mac,
    /// Name of the host-side veth in the daemon's namespace.
    pub host_ifname: String,
    /// Name inside the sandbox: eth0, eth1, ...
    pub ifname: String,
    /// Network-scoped aliases (`--network-alias`, `network connect --alias`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The host the endpoint lives on, for an endpoint of a network every
    /// host shares (empty for this host's own networks). Such an endpoint
    /// also carries what other hosts need of its container: their resolvers
    /// answer its names and `network inspect` lists it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The lease of an endpoint of a DHCP network (`ip` is its address,
    /// or unspecified once it was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<EndpointLease>,
}

/// A DHCP endpoint's lease as the store keeps it, so that a restarted
/// daemon goes on renewing it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointLease {
    #[serde(flatten)]
    pub lease: crate::dhcp::Lease,
    /// The lease ran out (or the server refused it) and the address was
    /// taken away: why, for `inspect` and the logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lost: String,
}

impl Endpoint {
    /// Whether the endpoint has an address to configure (a DHCP endpoint
    /// before its lease, or after losing it, has none).
    pub fn has_address(&self) -> bool {
        !self.ip.is_unspecified()
    }

    pub fn key(&self) -> String {
        let scope = if self.node.is_empty() { "" } else { CLUSTER };
        format!("{scope}{ENDPOINTS}{}", self.id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub cmd: Vec<String>,
    /// Name of the sandbox netns under /var/run/netns.
    pub netns: String,
    pub pid: Option<u32>,
    pub log_path: String,
    pub created: String,
    /// `--dns`: this container's own upstream resolvers.
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// `--link NAME:ALIAS`.
    #[serde(default)]
    pub links: Vec<Link>,
    /// `-e KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `--expose PORT[/PROTO]`, normalised to `80/tcp`.
    #[serde(default)]
    pub exposed: Vec<String>,
    /// Published ports (`-p`, `-P`), resolved: with the host ports chosen.
    /// They lead to the address of the container's `eth0` endpoint.
    #[serde(default)]
    pub ports: Vec<PortBinding>,
    /// The `-p` arguments as given (validated), for `HostConfig`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `-P`: every exposed port onto a free host port.
    #[serde(default)]
    pub publish_all: bool,
    /// The driver of a predefined network without stored state that the
    /// container joined instead of a network of its own (`host`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// The key of the service task this container runs, if it is a
    /// service's replica (its host's engine owns it then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Set when another runtime (Docker, a CNI runtime) owns the sandbox:
    /// this daemon plumbs its endpoint and publishes its ports, but never
    /// creates, enters or deletes its network namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    /// `--label KEY=VALUE`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The runtime that owns an external sandbox.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A Docker engine, through our network driver plugin.
    Docker,
    /// A CNI runtime (Podman, containerd, a kubelet), through `dataplane-cni`.
    Cni,
}

impl Runtime {
    pub const fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Cni => "cni",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Runtime::Docker),
            "cni" => Ok(Runtime::Cni),
            _ => Err(format!("unknown runtime {s:?}: docker or cni")),
        }
    }
}

/// A sandbox another runtime owns (an attachment).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct External {
    pub runtime: Runtime,
    /// The runtime's key for it: Docker's endpoint id; for CNI
    /// `CONTAINERID:IFNAME`.
    pub id: String,
    /// The runtime's network namespace ("" while Docker has not joined).
    #[serde(default)]
    pub netns_path: String,
    /// Docker: the veth end left in the daemon's namespace for Docker to
    /// move into its sandbox (Docker configures it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer: String,
}

/// The store key that makes (runtime, id) name one attachment:
/// `claims/attachments/<runtime>/<id>`, holding the container id.
pub fn attachment_claim(runtime: Runtime, id: &str) -> String {
    format!("{CLAIMS}attachments/{runtime}/{id}")
}

/// The transport protocol of a published or exposed port. Serialised as
/// Docker writes it, `tcp` or `udp` (so state files written when this was
/// a string still load); anything else is an error, never "TCP".
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub const fn ipproto(self) -> u8 {
        match self {
            Proto::Tcp => dataplane_common::IPPROTO_TCP,
            Proto::Udp => dataplane_common::IPPROTO_UDP,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Proto {
    type Err = String;

    /// `tcp` or `udp`, in any case (as Docker takes `-p 53:53/UDP`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("invalid protocol {s:?}: tcp or udp")),
        }
    }
}

/// A published port: host `host_ip:host_port` (`None`: every address,
/// 0.0.0.0) leads to `container_port` of the container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct PortBinding {
    pub proto: Proto,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl PortBinding {
    /// The binding as the `PORTS` map holds it, leading to `container_ip`.
    pub fn to_bpf(
        &self,
        container_ip: Ipv4Addr,
    ) -> (dataplane_common::PortKey, dataplane_common::NatAddr) {
        let proto = self.proto.ipproto();
        let addr = self
            .host_ip
            .map_or(0, |ip| dataplane_common::ipv4_wire(ip.octets()));
        (
            dataplane_common::PortKey::new(
                proto,
                addr,
                dataplane_common::port_wire(self.host_port),
            ),
            dataplane_common::NatAddr::new(
                dataplane_common::ipv4_wire(container_ip.octets()),
                dataplane_common::port_wire(self.container_port),
            ),
        )
    }
}

/// A legacy link to another container, under an alias.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub container_id: String,
    pub alias: String,
}

impl Container {
    pub fn key(&self) -> String {
        format!("{CONTAINERS}{}", self.id)
    }

    /// The path of the sandbox's network namespace (for `--network host`,
    /// the daemon's own).
    pub fn sandbox_key(&self) -> String {
        if let Some(x) = &self.external {
            if x.netns_path.is_empty() {
                // A Docker endpoint not joined yet: its veth's peer waits in
                // the daemon's namespace.
                return format!("/proc/{}/ns/net", std::process::id());
            }
            return x.netns_path.clone();
        }
        if self.shares_host_netns() {
            return format!("/proc/{}/ns/net", std::process::id());
        }
        format!("{}/{}", crate::netns::NETNS_DIR, self.netns)
    }

    /// The runtime that owns the sandbox, if not this daemon.
    pub fn runtime(&self) -> Option<Runtime> {
        self.external.as_ref().map(|x| x.runtime)
    }

    /// A Docker endpoint: its veth's peer is Docker's to configure.
    pub fn docker(&self) -> Option<&External> {
        self.external
            .as_ref()
            .filter(|x| x.runtime == Runtime::Docker)
    }

    /// `--network host`: no sandbox namespace of its own.
    pub fn shares_host_netns(&self) -> bool {
        self.network_mode.as_deref() == Some("host")
    }

    /// Where `ip netns exec` (and so the container) finds its own /etc files.
    pub fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.netns)
    }
}

/// The network namespace of container `id`'s sandbox (`dp-` and 12 hex
/// digits of the id).
pub fn sandbox_netns_name(id: &str) -> String {
    format!("dp-{}", id.get(..12).unwrap_or(id))
}

/// A MAC address, stored as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("invalid MAC address {s:?}"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| format!("invalid MAC address {s:?}"))?;
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Mac {
    /// Docker's container MAC: 02:42 followed by the IPv4 address.
    pub fn for_container(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    /// A locally administered unicast MAC for the host side of a veth.
    pub fn random_local() -> Mac {
        let mut m: [u8; 6] = rand::random();
        m[0] = (m[0] & 0xfe) | 0x02;
        Mac(m)
    }
}

/// A random 64-hex-digit id, as Docker uses.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 UTC timestamp of now, without pulling in a date crate.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Seconds since the epoch of a time [`now_rfc3339`] wrote (`None` for any
/// other text).
pub fn epoch_of_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Hinnant's days-from-civil, the inverse of `civil_from_days`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_times_read_back_as_epoch_seconds() {
        assert_eq!(epoch_of_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_of_rfc3339("2000-03-01T01:02:03Z"), Some(951_872_523));
        assert_eq!(
            epoch_of_rfc3339("2024-02-29T23:59:59Z"),
            Some(1_709_251_199)
        );
        let now = now_rfc3339();
        let back = epoch_of_rfc3339(&now).unwrap();
        let (y, m, d) = civil_from_days((back / 86_400) as i64);
        assert!(now.starts_with(&format!("{y:04}-{m:02}-{d:02}")));
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "x024-01-01T00:00:00Z",
        ] {
            assert_eq!(epoch_of_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn mac_round_trips_and_container_mac_follows_docker() {
        let m = Mac::for_container("172.18.0.2".parse().unwrap());
        assert_eq!(m.to_string(), "02:42:ac:12:00:02");
        assert_eq!("02:42:ac:12:00:02".parse::<Mac>().unwrap(), m);
        assert!("02:42:zz:12:00:02".parse::<Mac>().is_err());
        let r = Mac::random_local();
        assert_eq!(r.0[0] & 0x03, 0x02, "local, unicast");
    }

    #[test]
    fn port_bindings_project_to_ports_entries() {
        use dataplane_common::{ipv4_wire, port_wire, NatAddr, PortKey, IPPROTO_TCP, IPPROTO_UDP};
        let ctr: Ipv4Addr = "172.17.0.2".parse().unwrap();
        let b = PortBinding {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 8080,
            container_port: 80,
        };
        assert_eq!(
            b.to_bpf(ctr),
            (
                PortKey::new(IPPROTO_TCP, 0, port_wire(8080)),
                NatAddr::new(ipv4_wire([172, 17, 0, 2]), port_wire(80))
            )
        );
        let u = PortBinding {
            proto: Proto::Udp,
            host_ip: Some(Ipv4Addr::LOCALHOST),
            ..b
        };
        assert_eq!(
            u.to_bpf(ctr).0,
            PortKey::new(IPPROTO_UDP, ipv4_wire([127, 0, 0, 1]), port_wire(8080))
        );
    }

    #[test]
    fn protocols_parse_and_keep_their_stored_form() {
        assert_eq!("tcp".parse::<Proto>(), Ok(Proto::Tcp));
        assert_eq!("UDP".parse::<Proto>(), Ok(Proto::Udp));
        for bad in ["", "sctp", "tcp/udp", "6"] {
            assert_eq!(
                bad.parse::<Proto>(),
                Err(format!("invalid protocol {bad:?}: tcp or udp"))
            );
        }
        // A binding as state files hold it (written when proto was a string).
        let stored = r#"{"proto":"udp","host_ip":null,"host_port":5353,"container_port":53}"#;
        let b: PortBinding = serde_json::from_str(stored).unwrap();
        assert_eq!(b.proto, Proto::Udp);
        assert_eq!(serde_json::to_string(&b).unwrap(), stored);
        // An unknown protocol is an error, not TCP.
        let bad = stored.replace("udp", "sctp");
        assert!(serde_json::from_str::<PortBinding>(&bad).is_err());
        assert!(serde_json::from_str::<PortBinding>(&stored.replace("udp", "UDP")).is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_517), (2026, 3, 5));
    }
}

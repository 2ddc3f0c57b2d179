//! Every map of the datapath, pinned by name under the daemon's
//! `<bpffs>/v<LAYOUT_VERSION>/maps` so that they outlive the daemon.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
};
use dataplane_common::{
    vlan::MAX_FDB, Backend, Counters, CtEntry, CtKey, Endpoint, FdbKey, Flood, FragKey, FragPorts,
    Ipv4Wire, LinkKey, NatAddr, PeerCache, PortKey, Service, ServiceCounters, SockRevKey, TrunkKey,
    Tunnel, VlanNet, VtepFlags, CONFIG_SLOTS, FLOOD_PROG_SLOTS, MAGLEV_M, MAX_BACKENDS, MAX_CT,
    MAX_ENDPOINTS, MAX_FRAGS, MAX_FRONTENDS, MAX_LINKS, MAX_LOCAL_ADDRS, MAX_NETWORKS, MAX_PORTS,
    MAX_SERVICES, MAX_SOCK_REV, MAX_VTEPS, PROG_SLOTS, TUNNEL_SLOTS,
};

/// Container IPv4 address -> its endpoint.
#[map]
pub static ENDPOINTS: HashMap<Ipv4Wire, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// `iface_slot(ifindex of a host-side veth)` -> the endpoint behind it.
#[map]
pub static IFACES: Array<Endpoint> = Array::pinned(MAX_ENDPOINTS, 0);

/// `iface_slot(ifindex of a sender's host-side veth)` -> its last endpoint
/// destination and that endpoint's `IFACES` slot: a cache in front of the
/// `ENDPOINTS` lookup, checked against `IFACES` at every use (see
/// `dataplane_common::PeerCache`).
#[map]
pub static PEER_CACHE: Array<PeerCache> = Array::pinned(MAX_ENDPOINTS, 0);

/// Directed pairs allowed to talk on `icc=false` networks (`--link`).
#[map]
pub static LINKS: HashMap<LinkKey, u32> = HashMap::pinned(MAX_LINKS, 0);

/// Per-program counters, indexed by `PROG_*`.
#[map]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::pinned(PROG_SLOTS, 0);

/// Connection tracking of translated flows: one entry per direction, keyed
/// by the tuple a program sees, holding the tuple to rewrite to. LRU: when
/// full, the least recently used flow gives way instead of new flows failing.
#[map]
pub static CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CT, 0);

/// Published ports: (proto, host address or 0 for all, host port) -> the
/// container address and port.
#[map]
pub static PORTS: HashMap<PortKey, NatAddr> = HashMap::pinned(MAX_PORTS, 0);

/// The daemon's own IPv4 addresses (uplinks, gateways): destinations a port
/// published on every address answers on.
#[map]
pub static LOCAL_ADDRS: HashMap<Ipv4Wire, u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

/// Socket-level translations of UDP sockets, for `recvmsg`/`getpeername`.
#[map]
pub static SOCK_REV: LruHashMap<SockRevKey, NatAddr> = LruHashMap::pinned(MAX_SOCK_REV, 0);

/// Fragmented datagrams in flight: the ports of each one's first fragment,
/// for its later fragments (which carry no L4 header).
#[map]
pub static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::pinned(MAX_FRAGS, 0);

/// Netns cookie of a sandbox -> the port (wire form, in a `u32`) its
/// embedded resolver listens on at 127.0.0.11: the socket hooks send the
/// sandbox's 127.0.0.11:53 there, so that port 53 stays free for the
/// container's own use (Docker does the same with iptables rules).
#[map]
pub static DNS_PORTS: HashMap<u64, u32> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// Settings the daemon writes once (`CFG_*` slots).
#[map]
pub static CONFIG: Array<u64> = Array::pinned(CONFIG_SLOTS, 0);

/// This host's end of the tunnel (slot 0), written when the daemon runs in
/// a cluster; all zero (disabled) otherwise.
#[map]
pub static TUNNEL: Array<Tunnel> = Array::pinned(TUNNEL_SLOTS, 0);

/// Underlay address of a host whose VXLAN this host accepts -> `VTEP_*`
/// flags (a cluster node, or a static VTEP whose endpoints are learned).
#[map]
pub static VTEPS: HashMap<Ipv4Wire, VtepFlags> = HashMap::pinned(MAX_VTEPS, 0);

/// Network id -> the static VTEPs its containers' ARP requests for unknown
/// addresses are flooded to (`flood`).
#[map]
pub static FLOOD: HashMap<u32, Flood> = HashMap::pinned(MAX_NETWORKS, 0);

/// `FLOOD_PROG` -> the `flood` program, which `from_container` tail-calls;
/// the daemon writes it each time it loads the programs.
#[map]
pub static FLOOD_PROGS: ProgramArray = ProgramArray::pinned(FLOOD_PROG_SLOTS, 0);

/// Service frontends: (VIP, target port, proto) for east-west, or (0,
/// published port, proto) for an ingress port -> the service's slot, live
/// replica count and target port (see `dataplane_common::service`).
#[map]
pub static SERVICES: HashMap<PortKey, Service> = HashMap::pinned(MAX_FRONTENDS, 0);

/// `MAX_SERVICES` Maglev tables of `MAGLEV_M` entries: `maglev_index(slot,
/// flow_hash)` -> the `BACKENDS` id of the replica a new flow goes to.
#[map]
pub static MAGLEV: Array<u32> = Array::pinned(MAX_SERVICES * MAGLEV_M, 0);

/// Replica id -> its address and service slot.
#[map]
pub static BACKENDS: Array<Backend> = Array::pinned(MAX_BACKENDS, 0);

/// (replica address, target port, proto) -> replica id: on the replica's
/// host, a tunnelled ingress flow is recognised by it.
#[map]
pub static BACKEND_PORTS: HashMap<PortKey, u32> = HashMap::pinned(MAX_BACKENDS, 0);

/// Per-service counters, by slot.
#[map]
pub static SVC_STATS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Per-replica counters, by id.
#[map]
pub static BACKEND_STATS: PerCpuArray<ServiceCounters> = PerCpuArray::pinned(MAX_BACKENDS, 0);

/// Numeric id of a VLAN network -> its parent, tag and local containers
/// (see `dataplane_common::vlan`); empty slots have `parent` 0.
#[map]
pub static VLANS: Array<VlanNet> = Array::pinned(MAX_NETWORKS + 1, 0);

/// (parent ifindex, VID) -> the numeric id of the VLAN network it carries.
#[map]
pub static TRUNKS: HashMap<TrunkKey, u32> = HashMap::pinned(MAX_NETWORKS, 0);

/// (VLAN network, container MAC) -> the host-side veth of that container.
#[map]
pub static FDB: HashMap<FdbKey, u32> = HashMap::pinned(MAX_FDB, 0);

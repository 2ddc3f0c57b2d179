//! Every map of the datapath, pinned by name under the daemon's
//! `<bpffs>/v<LAYOUT_VERSION>/maps` so that they outlive the daemon.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use dataplane_common::{
    Counters, Endpoint, Ipv4Wire, LinkKey, MAX_ENDPOINTS, MAX_LINKS, PROG_SLOTS,
};

/// Container IPv4 address -> its endpoint.
#[map]
pub static ENDPOINTS: HashMap<Ipv4Wire, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

/// `iface_slot(ifindex of a host-side veth)` -> the endpoint behind it.
#[map]
pub static IFACES: Array<Endpoint> = Array::pinned(MAX_ENDPOINTS, 0);

/// Directed pairs allowed to talk on `icc=false` networks (`--link`).
#[map]
pub static LINKS: HashMap<LinkKey, u32> = HashMap::pinned(MAX_LINKS, 0);

/// Per-program counters, indexed by `PROG_*`.
#[map]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::pinned(PROG_SLOTS, 0);

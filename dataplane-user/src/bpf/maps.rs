//! The pinned maps: their names and the layout each must have, and the
//! helpers that make a map hold exactly a wanted set of entries.

use std::{mem::size_of, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::maps::{HashMap, MapInfo, MapType};
use dataplane_common::{
    Counters, CtEntry, CtKey, Endpoint, Flood, FragKey, FragPorts, Ipv4Wire, LinkKey, NatAddr,
    Network, PeerCache, PortKey, Service, ServiceCounters, SockRevKey, Tunnel, VtepFlags,
    CONFIG_SLOTS, FLOOD_PROG_SLOTS, MAGLEV_M, MAX_BACKENDS, MAX_CT, MAX_ENDPOINTS, MAX_FRAGS,
    MAX_FRONTENDS, MAX_LINKS, MAX_LOCAL_ADDRS, MAX_NETWORKS, MAX_PORTS, MAX_SERVICES, MAX_SOCK_REV,
    MAX_VTEPS, PROG_SLOTS, TUNNEL_SLOTS,
};

/// What an unused `IFACES` slot holds.
pub(super) const EMPTY_ENDPOINT: Endpoint = Endpoint {
    ifindex: 0,
    network_id: 0,
    ip: 0,
    mac: [0; 6],
    host_mac: [0; 6],
    flags: 0,
    vtep: 0,
    net: Network {
        subnet: 0,
        mask: 0,
        gateway: 0,
        flags: 0,
        vni: 0,
    },
};

// The names of the pinned maps (the kernel side's `static`s).
pub const DNS_PORTS: &str = "DNS_PORTS";
pub const FRAGS: &str = "FRAGS";
pub const PORTS: &str = "PORTS";
pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
pub const SOCK_REV: &str = "SOCK_REV";
pub const CONFIG: &str = "CONFIG";
pub const LINKS: &str = "LINKS";
pub const ENDPOINTS: &str = "ENDPOINTS";
pub const IFACES: &str = "IFACES";
pub const PEER_CACHE: &str = "PEER_CACHE";
pub const STATS: &str = "STATS";
pub const CT: &str = "CT";
pub const TUNNEL: &str = "TUNNEL";
pub const VTEPS: &str = "VTEPS";
pub const FLOOD: &str = "FLOOD";
pub const FLOOD_PROGS: &str = "FLOOD_PROGS";
pub const SERVICES: &str = "SERVICES";
pub const MAGLEV: &str = "MAGLEV";
pub const BACKENDS: &str = "BACKENDS";
pub const BACKEND_PORTS: &str = "BACKEND_PORTS";
pub const SVC_STATS: &str = "SVC_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";
pub const VLANS: &str = "VLANS";
pub const TRUNKS: &str = "TRUNKS";
pub const FDB: &str = "FDB";

/// The layout every pinned map must have: (name, type, key size, value size,
/// capacity).
fn expected_maps() -> [(&'static str, MapType, u32, u32, u32); 25] {
    [
        (
            VLANS,
            MapType::Array,
            4,
            size_of::<dataplane_common::VlanNet>() as u32,
            MAX_NETWORKS + 1,
        ),
        (
            TRUNKS,
            MapType::Hash,
            size_of::<dataplane_common::TrunkKey>() as u32,
            4,
            MAX_NETWORKS,
        ),
        (
            FDB,
            MapType::Hash,
            size_of::<dataplane_common::FdbKey>() as u32,
            4,
            dataplane_common::vlan::MAX_FDB,
        ),
        (DNS_PORTS, MapType::Hash, 8, 4, MAX_ENDPOINTS),
        (
            FRAGS,
            MapType::LruHash,
            size_of::<FragKey>() as u32,
            size_of::<FragPorts>() as u32,
            MAX_FRAGS,
        ),
        (
            CT,
            MapType::LruHash,
            size_of::<CtKey>() as u32,
            size_of::<CtEntry>() as u32,
            MAX_CT,
        ),
        (
            PORTS,
            MapType::Hash,
            size_of::<PortKey>() as u32,
            size_of::<NatAddr>() as u32,
            MAX_PORTS,
        ),
        (LOCAL_ADDRS, MapType::Hash, 4, 4, MAX_LOCAL_ADDRS),
        (
            SOCK_REV,
            MapType::LruHash,
            size_of::<SockRevKey>() as u32,
            size_of::<NatAddr>() as u32,
            MAX_SOCK_REV,
        ),
        (CONFIG, MapType::Array, 4, 8, CONFIG_SLOTS),
        (
            LINKS,
            MapType::Hash,
            size_of::<LinkKey>() as u32,
            4,
            MAX_LINKS,
        ),
        (
            ENDPOINTS,
            MapType::Hash,
            size_of::<Ipv4Wire>() as u32,
            size_of::<Endpoint>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            IFACES,
            MapType::Array,
            4,
            size_of::<Endpoint>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            PEER_CACHE,
            MapType::Array,
            4,
            size_of::<PeerCache>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            STATS,
            MapType::PerCpuArray,
            4,
            size_of::<Counters>() as u32,
            PROG_SLOTS,
        ),
        (
            TUNNEL,
            MapType::Array,
            4,
            size_of::<Tunnel>() as u32,
            TUNNEL_SLOTS,
        ),
        (
            VTEPS,
            MapType::Hash,
            size_of::<Ipv4Wire>() as u32,
            size_of::<VtepFlags>() as u32,
            MAX_VTEPS,
        ),
        (
            FLOOD,
            MapType::Hash,
            4,
            size_of::<Flood>() as u32,
            MAX_NETWORKS,
        ),
        (FLOOD_PROGS, MapType::ProgramArray, 4, 4, FLOOD_PROG_SLOTS),
        (
            SERVICES,
            MapType::Hash,
            size_of::<PortKey>() as u32,
            size_of::<Service>() as u32,
            MAX_FRONTENDS,
        ),
        (MAGLEV, MapType::Array, 4, 4, MAX_SERVICES * MAGLEV_M),
        (
            BACKENDS,
            MapType::Array,
            4,
            size_of::<dataplane_common::Backend>() as u32,
            MAX_BACKENDS,
        ),
        (
            BACKEND_PORTS,
            MapType::Hash,
            size_of::<PortKey>() as u32,
            4,
            MAX_BACKENDS,
        ),
        (
            SVC_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<ServiceCounters>() as u32,
            MAX_SERVICES,
        ),
        (
            BACKEND_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<ServiceCounters>() as u32,
            MAX_BACKENDS,
        ),
    ]
}

/// Refuses to reuse a pinned map whose layout differs from this build's.
pub(super) fn check_pinned_layout(maps_dir: &Path) -> Result<()> {
    for (name, ty, key, value, cap) in expected_maps() {
        let pin = maps_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned map {}", pin.display()))?;
        let got_ty = info.map_type().map_err(|e| anyhow!("{e}"))?;
        if got_ty != ty
            || info.key_size() != key
            || info.value_size() != value
            || info.max_entries() != cap
        {
            bail!(
                "pinned map {} has type {:?}, key {} B, value {} B, {} entries, but this daemon needs {:?}, {} B, {} B, {}: \
                 its layout changed without a LAYOUT_VERSION bump; remove {} once no traffic depends on it",
                pin.display(),
                got_ty,
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                ty,
                key,
                value,
                cap,
                maps_dir.display()
            );
        }
    }
    Ok(())
}

/// Makes hash map `m` (named `what` in errors) hold exactly `want`: writes
/// the entries that differ (an unchanged entry is not touched, so traffic
/// never sees it flicker) and deletes every other key.
pub(super) fn sync_hash<T, K, V>(
    m: &mut HashMap<T, K, V>,
    want: &[(K, V)],
    what: &str,
) -> Result<()>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    for (k, v) in want {
        if m.get(k, 0).ok().as_ref() != Some(v) {
            m.insert(*k, *v, 0)
                .with_context(|| format!("{what} map full"))?;
        }
    }
    let keep: std::collections::HashSet<K> = want.iter().map(|(k, _)| *k).collect();
    let stale: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// Deletes the entries of `m` for which `f` holds; how many went.
pub(super) fn delete_where<T, K, V>(m: &mut HashMap<T, K, V>, f: impl Fn(&K, &V) -> bool) -> usize
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
    K: aya::Pod,
    V: aya::Pod,
{
    let doomed: Vec<K> = m
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, v)| f(k, v))
        .map(|(k, _)| k)
        .collect();
    let n = doomed.len();
    for k in doomed {
        let _ = m.remove(&k);
    }
    n
}

//! Projecting services into the maps (`dataplane_common::service` says what
//! each holds): the reconciler hands [`Datapath::sync_services`] the whole
//! wanted state, and this module makes `SERVICES`, `MAGLEV`, `BACKENDS` and
//! `BACKEND_PORTS` hold it, writing only what differs.
//!
//! - Backend ids are allocated here, one per replica (a service slot and
//!   the replica's address), and kept while the replica exists, live or
//!   not: a replica that is not live leaves the Maglev table but keeps its
//!   id, so its established flows (conntrack entries naming the id) keep
//!   counting. After a restart the ids are read back from the pinned
//!   `BACKENDS`, so counters and conntrack stay meaningful. A freed id is
//!   reused as late as possible (allocation goes round from the last one
//!   handed out), so a conntrack entry that outlives its replica rarely
//!   names a new one.
//! - A slot's table is rewritten only when its live replica set (names,
//!   addresses, weights) changed, in one `BPF_MAP_UPDATE_BATCH`, and fully
//!   before `SERVICES` announces the new count; a replica that goes away is
//!   freed only after no table names it.
//! - A removed service: its `SERVICES` entries go first, then its table is
//!   filled with `NO_REPLICA`, then its ids are freed.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap, HashSet},
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use dataplane_common::{
    ipv4_wire, port_wire, Backend, DropReason, PortKey, Service, ServiceCounters, BE_ACTIVE,
    MAGLEV_M, MAX_BACKENDS, MAX_SERVICES, NO_REPLICA,
};
use serde::Serialize;

use super::{maglev, maps, maps::sync_hash};

/// One frontend of a service: a VIP port (`addr` the VIP, `SVC_VIP`) or an
/// ingress port (`addr` 0.0.0.0, `SVC_INGRESS`). Ports in host order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendSpec {
    pub proto: u8,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The port the replicas listen on.
    pub target: u16,
    /// `SVC_*` flags.
    pub flags: u16,
}

/// One replica: a stable name (the task id; every host must use the same),
/// its address on the service's network, and whether it takes new flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub live: bool,
    /// Share of new flows relative to the others (1 is the usual; 0 is
    /// like not live).
    pub weight: u32,
}

impl ReplicaSpec {
    /// A replica of weight 1.
    pub fn new(name: impl Into<String>, ip: Ipv4Addr, live: bool) -> Self {
        ReplicaSpec {
            name: name.into(),
            ip,
            live,
            weight: 1,
        }
    }
}

/// A service as the maps must hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its Maglev table and `SVC_STATS` entry, below `MAX_SERVICES`;
    /// chosen by the control plane, the same on every host.
    pub slot: u32,
    pub frontends: Vec<FrontendSpec>,
    pub replicas: Vec<ReplicaSpec>,
}

/// What a sync changed, for the reconciler's log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Slots whose Maglev table was written (changed replica set or a
    /// removed service).
    pub tables_written: Vec<u32>,
    /// Ids handed out and freed.
    pub allocated: usize,
    pub freed: usize,
}

/// Counters of one replica, summed over CPUs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Empty for a replica recovered from the pins that no sync named yet.
    pub name: String,
    pub id: u32,
    pub ip: Ipv4Addr,
    pub live: bool,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Counters of one service, summed over CPUs.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ServiceStats {
    pub slot: u32,
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Drops by reason name, only reasons that occurred.
    pub drops: BTreeMap<String, u64>,
    pub replicas: Vec<ReplicaStats>,
}

/// One allocated id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    id: u32,
    name: String,
    live: bool,
}

/// What this module knows the maps hold (rebuilt from the pins after a
/// restart).
#[derive(Debug, Default)]
pub(super) struct State {
    /// (slot, replica address) -> its id.
    ids: StdHashMap<(u32, u32), Replica>,
    /// slot -> the live set its table was built from (sorted (name, ip,
    /// weight)); absent: unknown (after a restart), compared entry by entry.
    tables: StdHashMap<u32, Vec<(String, u32, u32)>>,
    /// Slots that have something in the maps (ids or frontends).
    slots: HashSet<u32>,
    /// Where the next id search starts.
    cursor: u32,
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing"))
}

fn map<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Map> {
    ebpf.map(name).ok_or_else(|| anyhow!("map {name} missing"))
}

impl State {
    /// Reads the ids from the pinned `BACKENDS` and the slots from
    /// `SERVICES` (after a restart: names are unknown until the next sync).
    pub(super) fn recover(ebpf: &Ebpf) -> Result<Self> {
        let mut st = State::default();
        let backends: Array<&MapData, Backend> = Array::try_from(map(ebpf, maps::BACKENDS)?)?;
        let mut last = None;
        for id in 0..MAX_BACKENDS {
            let be = backends.get(&id, 0)?;
            if be.flags & BE_ACTIVE == 0 {
                continue;
            }
            st.ids.insert(
                (be.slot, be.ip),
                Replica {
                    id,
                    name: String::new(),
                    live: false,
                },
            );
            st.slots.insert(be.slot);
            last = Some(id);
        }
        st.cursor = last.map_or(0, |l| (l + 1) % MAX_BACKENDS);
        let services: HashMap<&MapData, PortKey, Service> =
            HashMap::try_from(map(ebpf, maps::SERVICES)?)?;
        for r in services.iter() {
            let (_, svc) = r?;
            st.slots.insert(svc.slot);
        }
        Ok(st)
    }

    fn allocate(&mut self, used: &HashSet<u32>) -> Result<u32> {
        for k in 0..MAX_BACKENDS {
            let id = (self.cursor + k) % MAX_BACKENDS;
            if !used.contains(&id) {
                self.cursor = (id + 1) % MAX_BACKENDS;
                return Ok(id);
            }
        }
        bail!("all {MAX_BACKENDS} backend ids are in use")
    }
}

/// Refuses a wanted state the maps cannot hold, before anything is
/// written.
fn validate(want: &[ServiceSpec]) -> Result<()> {
    let mut slots = HashSet::new();
    let mut keys = HashSet::new();
    // (proto, replica address, target) -> slot: BACKEND_PORTS names one id.
    let mut targets: StdHashMap<(u8, Ipv4Addr, u16), u32> = StdHashMap::new();
    for s in want {
        if s.slot >= MAX_SERVICES {
            bail!("service slot {} is not below {MAX_SERVICES}", s.slot);
        }
        if !slots.insert(s.slot) {
            bail!("service slot {} is given twice", s.slot);
        }
        for f in &s.frontends {
            if !keys.insert((f.proto, f.addr, f.port)) {
                bail!(
                    "frontend {}:{} (protocol {}) is given twice",
                    f.addr,
                    f.port,
                    f.proto
                );
            }
        }
        let mut ips = HashSet::new();
        let mut names = HashSet::new();
        for r in &s.replicas {
            if !ips.insert(r.ip) {
                bail!("slot {}: replica address {} is given twice", s.slot, r.ip);
            }
            if !names.insert(&r.name) {
                bail!("slot {}: replica name {:?} is given twice", s.slot, r.name);
            }
            for f in &s.frontends {
                let other = *targets.entry((f.proto, r.ip, f.target)).or_insert(s.slot);
                if other != s.slot {
                    bail!(
                        "{}:{} (protocol {}) is a target of services {other} and {}",
                        r.ip,
                        f.target,
                        f.proto,
                        s.slot
                    );
                }
            }
        }
    }
    Ok(())
}

/// Writes `values` at `first..first + values.len()` of the array map:
/// one `BPF_MAP_UPDATE_BATCH` (Linux 5.6+), element by element if the
/// kernel refuses the batch.
fn write_range(
    a: &mut Array<&mut MapData, u32>,
    data_fd: i32,
    first: u32,
    values: &[u32],
) -> Result<()> {
    let keys: Vec<u32> = (first..first + values.len() as u32).collect();
    match update_batch(data_fd, &keys, values) {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::debug!("BPF_MAP_UPDATE_BATCH on MAGLEV failed ({e}); writing entry by entry");
            for (k, v) in keys.iter().zip(values) {
                a.set(*k, *v, 0).context("writing MAGLEV")?;
            }
            Ok(())
        }
    }
}

fn update_batch(map_fd: i32, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    // include/uapi/linux/bpf.h: the `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct Batch {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut done = 0usize;
    while done < keys.len() {
        let mut attr = Batch {
            in_batch: 0,
            out_batch: 0,
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: map_fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is the kernel's `batch` layout; the key and value
        // buffers hold `count` elements each and outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut Batch,
                std::mem::size_of::<Batch>() as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The kernel reports how many it wrote; a short count goes round.
        if attr.count == 0 {
            return Err(std::io::Error::other("BPF_MAP_UPDATE_BATCH wrote nothing"));
        }
        done += attr.count as usize;
    }
    Ok(())
}

fn maglev_map(ebpf: &mut Ebpf) -> Result<(Array<&mut MapData, u32>, i32)> {
    let m = map_mut(ebpf, maps::MAGLEV)?;
    let fd = match &*m {
        Map::Array(d) => d.fd().as_fd().as_raw_fd(),
        _ => bail!("map {} is not an array", maps::MAGLEV),
    };
    Ok((Array::try_from(m)?, fd))
}

/// Makes table `slot` hold `table` (ids); compared with the map first when
/// the previous contents are unknown. Whether it wrote.
fn write_table(ebpf: &mut Ebpf, slot: u32, table: &[u32], known_differs: bool) -> Result<bool> {
    let (mut a, fd) = maglev_map(ebpf)?;
    let first = slot * MAGLEV_M;
    if !known_differs {
        let mut same = true;
        for (k, want) in table.iter().enumerate() {
            if a.get(&(first + k as u32), 0)? != *want {
                same = false;
                break;
            }
        }
        if same {
            return Ok(false);
        }
    }
    write_range(&mut a, fd, first, table)?;
    Ok(true)
}

fn zero_counters(ebpf: &mut Ebpf, name: &str, index: u32) -> Result<()> {
    let n = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
    let mut a: PerCpuArray<&mut MapData, ServiceCounters> =
        PerCpuArray::try_from(map_mut(ebpf, name)?)?;
    let zero = PerCpuValues::try_from(vec![ServiceCounters::ZERO; n])?;
    a.set(index, zero, 0)
        .with_context(|| format!("clearing {name}[{index}]"))?;
    Ok(())
}

/// The body of [`super::Datapath::sync_services`].
pub(super) fn sync(ebpf: &mut Ebpf, st: &mut State, want: &[ServiceSpec]) -> Result<SyncReport> {
    validate(want)?;
    let mut report = SyncReport::default();

    // 1. Ids: keep those of replicas still wanted, allocate the new ones,
    //    and write their BACKENDS entries before any table names them.
    let wanted: HashSet<(u32, u32)> = want
        .iter()
        .flat_map(|s| {
            s.replicas
                .iter()
                .map(|r| (s.slot, ipv4_wire(r.ip.octets())))
        })
        .collect();
    let mut used: HashSet<u32> = st.ids.values().map(|r| r.id).collect();
    for s in want {
        // A slot new to the maps starts its counters at zero.
        if st.slots.insert(s.slot) {
            zero_counters(ebpf, maps::SVC_STATS, s.slot)?;
        }
        for r in &s.replicas {
            let key = (s.slot, ipv4_wire(r.ip.octets()));
            if let Some(have) = st.ids.get_mut(&key) {
                have.name.clone_from(&r.name);
                have.live = r.live;
                continue;
            }
            let id = st.allocate(&used)?;
            used.insert(id);
            zero_counters(ebpf, maps::BACKEND_STATS, id)?;
            let mut backends: Array<&mut MapData, Backend> =
                Array::try_from(map_mut(ebpf, maps::BACKENDS)?)?;
            backends
                .set(
                    id,
                    Backend {
                        ip: key.1,
                        slot: s.slot,
                        flags: BE_ACTIVE,
                    },
                    0,
                )
                .context("writing BACKENDS")?;
            st.ids.insert(
                key,
                Replica {
                    id,
                    name: r.name.clone(),
                    live: r.live,
                },
            );
            report.allocated += 1;
        }
    }

    // 2. The tables of the wanted services whose live set changed.
    for s in want {
        let mut live: Vec<(String, u32, u32)> = s
            .replicas
            .iter()
            .filter(|r| r.live && r.weight > 0)
            .map(|r| (r.name.clone(), ipv4_wire(r.ip.octets()), r.weight))
            .collect();
        live.sort();
        let known = st.tables.get(&s.slot);
        if known == Some(&live) {
            continue;
        }
        let weighted: Vec<(&str, u32)> = live.iter().map(|(n, _, w)| (n.as_str(), *w)).collect();
        let idx = maglev::build_weighted(&weighted, MAGLEV_M)?;
        let table: Vec<u32> = idx
            .iter()
            .map(|&i| {
                if i == NO_REPLICA {
                    NO_REPLICA
                } else {
                    st.ids[&(s.slot, live[i as usize].1)].id
                }
            })
            .collect();
        if write_table(ebpf, s.slot, &table, known.is_some())? {
            report.tables_written.push(s.slot);
        }
        st.tables.insert(s.slot, live);
    }

    // 3. SERVICES (new counts only now that the tables are full) and
    //    BACKEND_PORTS (every replica, live or not, for every frontend).
    let mut services = Vec::new();
    let mut ports: StdHashMap<PortKey, u32> = StdHashMap::new();
    for s in want {
        let count = st.tables[&s.slot].len() as u32;
        for f in &s.frontends {
            services.push((
                PortKey::new(f.proto, ipv4_wire(f.addr.octets()), port_wire(f.port)),
                Service {
                    slot: s.slot,
                    count,
                    target: port_wire(f.target),
                    flags: f.flags,
                },
            ));
            for r in &s.replicas {
                let ip = ipv4_wire(r.ip.octets());
                let key = PortKey::new(f.proto, ip, port_wire(f.target));
                let id = st.ids[&(s.slot, ip)].id;
                // One id per key: `validate` refused two services sharing it.
                ports.insert(key, id);
            }
        }
    }
    {
        let mut m: HashMap<&mut MapData, PortKey, Service> =
            HashMap::try_from(map_mut(ebpf, maps::SERVICES)?)?;
        sync_hash(&mut m, &services, maps::SERVICES)?;
    }
    {
        let ports: Vec<(PortKey, u32)> = ports.into_iter().collect();
        let mut m: HashMap<&mut MapData, PortKey, u32> =
            HashMap::try_from(map_mut(ebpf, maps::BACKEND_PORTS)?)?;
        sync_hash(&mut m, &ports, maps::BACKEND_PORTS)?;
    }

    // 4. Removed services: their frontends are gone, now their tables.
    let wanted_slots: HashSet<u32> = want.iter().map(|s| s.slot).collect();
    let mut gone: Vec<u32> = st
        .slots
        .iter()
        .copied()
        .filter(|s| !wanted_slots.contains(s))
        .collect();
    gone.sort();
    for slot in gone {
        // Known empty: already all NO_REPLICA. Unknown (recovered after a
        // restart): compared with the map.
        let known = st.tables.get(&slot).map(|t| !t.is_empty());
        if known != Some(false) {
            let empty = vec![NO_REPLICA; MAGLEV_M as usize];
            if write_table(ebpf, slot, &empty, known == Some(true))? {
                report.tables_written.push(slot);
            }
        }
        st.tables.remove(&slot);
        st.slots.remove(&slot);
    }

    // 5. Ids of replicas no longer wanted: no table names them any more.
    let doomed: Vec<(u32, u32)> = st
        .ids
        .keys()
        .filter(|k| !wanted.contains(k))
        .copied()
        .collect();
    if !doomed.is_empty() {
        let mut backends: Array<&mut MapData, Backend> =
            Array::try_from(map_mut(ebpf, maps::BACKENDS)?)?;
        for k in doomed {
            let r = st.ids.remove(&k).expect("listed above");
            backends
                .set(
                    r.id,
                    Backend {
                        ip: 0,
                        slot: 0,
                        flags: 0,
                    },
                    0,
                )
                .context("clearing BACKENDS")?;
            report.freed += 1;
        }
    }
    Ok(report)
}

fn sum(per_cpu: &[ServiceCounters]) -> ServiceCounters {
    let mut s = ServiceCounters::ZERO;
    for c in per_cpu {
        s.conns += c.conns;
        s.packets += c.packets;
        s.bytes += c.bytes;
        for (a, b) in s.drops.iter_mut().zip(c.drops.iter()) {
            *a += b;
        }
    }
    s
}

/// The body of [`super::Datapath::service_stats`]: every slot the maps
/// hold, with its replicas by id.
pub(super) fn stats(ebpf: &Ebpf, st: &State) -> Result<Vec<ServiceStats>> {
    let svc: PerCpuArray<&MapData, ServiceCounters> =
        PerCpuArray::try_from(map(ebpf, maps::SVC_STATS)?)?;
    let be: PerCpuArray<&MapData, ServiceCounters> =
        PerCpuArray::try_from(map(ebpf, maps::BACKEND_STATS)?)?;
    let mut slots: Vec<u32> = st.slots.iter().copied().collect();
    slots.sort();
    let mut out = Vec::new();
    for slot in slots {
        let s = sum(&svc.get(&slot, 0)?);
        let mut replicas = Vec::new();
        for ((rs, ip), r) in &st.ids {
            if *rs != slot {
                continue;
            }
            let c = sum(&be.get(&r.id, 0)?);
            replicas.push(ReplicaStats {
                name: r.name.clone(),
                id: r.id,
                ip: Ipv4Addr::from(ip.to_ne_bytes()),
                live: r.live,
                conns: c.conns,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        replicas.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        out.push(ServiceStats {
            slot,
            conns: s.conns,
            packets: s.packets,
            bytes: s.bytes,
            drops: DropReason::ALL
                .iter()
                .filter(|r| s.drops[**r as usize] > 0)
                .map(|r| (r.name().to_string(), s.drops[*r as usize]))
                .collect(),
            replicas,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slot: u32, replicas: &[(&str, [u8; 4])]) -> ServiceSpec {
        ServiceSpec {
            slot,
            frontends: vec![],
            replicas: replicas
                .iter()
                .map(|(n, ip)| ReplicaSpec {
                    name: (*n).to_string(),
                    ip: Ipv4Addr::from(*ip),
                    live: true,
                    weight: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(validate(&[spec(MAX_SERVICES, &[])]).is_err());
        assert!(validate(&[spec(1, &[]), spec(1, &[])]).is_err());
        assert!(validate(&[spec(1, &[("a", [10, 0, 0, 1]), ("b", [10, 0, 0, 1])])]).is_err());
        assert!(validate(&[spec(1, &[("a", [10, 0, 0, 1]), ("a", [10, 0, 0, 2])])]).is_err());
        let mut s = spec(1, &[]);
        let f = FrontendSpec {
            proto: 6,
            addr: Ipv4Addr::new(10, 0, 0, 100),
            port: 80,
            target: 80,
            flags: 0,
        };
        s.frontends = vec![f.clone(), f];
        assert!(validate(&[s]).is_err());
        assert!(validate(&[
            spec(0, &[("a", [10, 0, 0, 1])]),
            spec(1, &[("a", [10, 0, 0, 1])])
        ])
        .is_ok());
        // One replica address and target port in two services.
        let fe = |port| FrontendSpec {
            proto: 6,
            addr: Ipv4Addr::new(10, 0, 0, 100),
            port,
            target: 8080,
            flags: 0,
        };
        let mut a = spec(0, &[("a", [10, 0, 0, 1])]);
        let mut b = spec(1, &[("b", [10, 0, 0, 1])]);
        a.frontends = vec![fe(80)];
        b.frontends = vec![fe(81)];
        assert!(validate(&[a.clone(), b]).is_err());
        // Two frontends of one service sharing a target are fine.
        a.frontends = vec![fe(80), fe(81)];
        assert!(validate(&[a]).is_ok());
    }

    #[test]
    fn ids_go_round_before_reuse() {
        let mut st = State {
            cursor: MAX_BACKENDS - 1,
            ..State::default()
        };
        let used: HashSet<u32> = [0].into_iter().collect();
        assert_eq!(st.allocate(&used).unwrap(), MAX_BACKENDS - 1);
        assert_eq!(st.allocate(&used).unwrap(), 1, "wraps, skipping a used id");
        let full: HashSet<u32> = (0..MAX_BACKENDS).collect();
        assert!(st.allocate(&full).is_err());
    }
}

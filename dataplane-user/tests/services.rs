//! The projection of services into the pinned maps, read back from the pins
//! after each of a sequence of syncs: a service created, synced again
//! unchanged, scaled up, a replica that dies, a restarted daemon (a new
//! `Datapath` on the same pins), a replica removed, the service removed.
//! Root; its own scratch bpffs directory, removed even on failure.

mod common;

use std::{collections::HashMap as StdHashMap, net::Ipv4Addr, path::Path, time::Instant};

use aya::maps::{Array, HashMap, Map, MapData};
use common::Scratch;
use dataplane_common::{
    ipv4_wire, port_wire, Backend, PortKey, Service, BE_ACTIVE, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_M,
    MAX_BACKENDS, NO_REPLICA, SVC_INGRESS, SVC_VIP,
};
use dataplane_user::bpf::{
    maglev,
    services::{FrontendSpec, ReplicaSpec, ServiceSpec},
    Datapath,
};

const SLOT: u32 = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 100);

fn replica(name: &str, last: u8, live: bool) -> ReplicaSpec {
    ReplicaSpec::new(name, Ipv4Addr::new(10, 99, 0, last), live)
}

fn service(replicas: Vec<ReplicaSpec>) -> ServiceSpec {
    ServiceSpec {
        slot: SLOT,
        frontends: vec![
            FrontendSpec {
                proto: IPPROTO_TCP,
                addr: VIP,
                port: 80,
                target: 8080,
                flags: SVC_VIP,
            },
            FrontendSpec {
                proto: IPPROTO_TCP,
                addr: Ipv4Addr::UNSPECIFIED,
                port: 30080,
                target: 8080,
                flags: SVC_INGRESS,
            },
            FrontendSpec {
                proto: IPPROTO_UDP,
                addr: VIP,
                port: 53,
                target: 5353,
                flags: SVC_VIP,
            },
        ],
        replicas,
    }
}

/// What the pinned maps hold, read through the pins.
struct Pins {
    services: StdHashMap<PortKey, Service>,
    /// Active BACKENDS entries: id -> entry.
    backends: StdHashMap<u32, Backend>,
    backend_ports: StdHashMap<PortKey, u32>,
    /// The table of `SLOT`.
    table: Vec<u32>,
}

fn open(maps: &Path, name: &str) -> MapData {
    MapData::from_pin(maps.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read(maps: &Path) -> Pins {
    let services: HashMap<_, PortKey, Service> =
        HashMap::try_from(Map::HashMap(open(maps, "SERVICES"))).unwrap();
    let ports: HashMap<_, PortKey, u32> =
        HashMap::try_from(Map::HashMap(open(maps, "BACKEND_PORTS"))).unwrap();
    let backends: Array<_, Backend> = Array::try_from(Map::Array(open(maps, "BACKENDS"))).unwrap();
    let maglev: Array<_, u32> = Array::try_from(Map::Array(open(maps, "MAGLEV"))).unwrap();
    Pins {
        services: services.iter().map(|r| r.unwrap()).collect(),
        backend_ports: ports.iter().map(|r| r.unwrap()).collect(),
        backends: (0..MAX_BACKENDS)
            .map(|id| (id, backends.get(&id, 0).unwrap()))
            .filter(|(_, b)| b.flags & BE_ACTIVE != 0)
            .collect(),
        table: (SLOT * MAGLEV_M..(SLOT + 1) * MAGLEV_M)
            .map(|i| maglev.get(&i, 0).unwrap())
            .collect(),
    }
}

/// Replica address -> its id, from BACKENDS.
fn ids(p: &Pins) -> StdHashMap<Ipv4Addr, u32> {
    p.backends
        .iter()
        .map(|(id, b)| (Ipv4Addr::from(b.ip.to_ne_bytes()), *id))
        .collect()
}

/// Checks every map against `spec` (the only service).
fn check(p: &Pins, spec: &ServiceSpec) {
    let ids = ids(p);
    assert_eq!(
        ids.len(),
        spec.replicas.len(),
        "one id per replica, live or not"
    );
    for b in p.backends.values() {
        assert_eq!(b.slot, SLOT);
    }
    let live: Vec<&ReplicaSpec> = spec.replicas.iter().filter(|r| r.live).collect();
    for f in &spec.frontends {
        let key = PortKey::new(f.proto, ipv4_wire(f.addr.octets()), port_wire(f.port));
        assert_eq!(
            p.services.get(&key),
            Some(&Service {
                slot: SLOT,
                count: live.len() as u32,
                target: port_wire(f.target),
                flags: f.flags,
            }),
            "{f:?}"
        );
        for r in &spec.replicas {
            let key = PortKey::new(f.proto, ipv4_wire(r.ip.octets()), port_wire(f.target));
            assert_eq!(p.backend_ports.get(&key), Some(&ids[&r.ip]), "{r:?} {f:?}");
        }
    }
    assert_eq!(p.services.len(), spec.frontends.len());
    // (proto, target) pairs: TCP 8080 (two frontends share it), UDP 5353.
    assert_eq!(p.backend_ports.len(), 2 * spec.replicas.len());
    // The table is the Maglev table of the live replicas' names.
    let names: Vec<&str> = live.iter().map(|r| r.name.as_str()).collect();
    let want: Vec<u32> = maglev::build(&names, MAGLEV_M)
        .unwrap()
        .into_iter()
        .map(|i| {
            if i == NO_REPLICA {
                NO_REPLICA
            } else {
                ids[&live[i as usize].ip]
            }
        })
        .collect();
    assert!(p.table == want, "MAGLEV table of slot {SLOT} differs");
}

#[test]
fn services_are_projected_and_survive_a_restart() {
    let scratch = Scratch::new("services");
    let maps = scratch.maps();
    let mut dp = Datapath::load(scratch.path()).expect("loading the datapath");

    // Created with three replicas.
    let mut spec = service(vec![
        replica("task-a", 2, true),
        replica("task-b", 3, true),
        replica("task-c", 4, true),
    ]);
    let t = Instant::now();
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    eprintln!(
        "first sync (ids read back from the pins, one {MAGLEV_M}-entry table written): {:?}",
        t.elapsed()
    );
    assert_eq!(
        (r.tables_written.as_slice(), r.allocated, r.freed),
        (&[SLOT][..], 3, 0)
    );
    let p = read(&maps);
    check(&p, &spec);
    let first_ids = ids(&p);

    // The same state again: nothing written.
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    assert_eq!((r.tables_written.len(), r.allocated, r.freed), (0, 0, 0));

    // Scaled to four: a new id, the others kept, the table rebuilt.
    spec.replicas.push(replica("task-d", 5, true));
    let t = Instant::now();
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    eprintln!("scale sync (table rebuilt and written): {:?}", t.elapsed());
    assert_eq!((r.tables_written.as_slice(), r.allocated), (&[SLOT][..], 1));
    let p = read(&maps);
    check(&p, &spec);
    for (ip, id) in &first_ids {
        assert_eq!(ids(&p)[ip], *id, "{ip} keeps its id");
    }

    // task-b dies: out of the table, count 3, but its id stays.
    spec.replicas[1].live = false;
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    assert_eq!(
        (r.tables_written.as_slice(), r.allocated, r.freed),
        (&[SLOT][..], 0, 0)
    );
    let p = read(&maps);
    check(&p, &spec);
    let b_id = first_ids[&Ipv4Addr::new(10, 99, 0, 3)];
    assert!(!p.table.contains(&b_id), "a dead replica takes no new flow");
    assert!(p.backends.contains_key(&b_id));
    let before_restart = ids(&p);

    // A restarted daemon: the ids come back from the pins, and the table
    // (compared with the map, its names unknown) is not rewritten.
    drop(dp);
    let mut dp = Datapath::load(scratch.path()).expect("reloading the datapath");
    let stats = dp.service_stats().unwrap();
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].replicas.len(), 4, "recovered ids: {stats:?}");
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    assert_eq!(
        (r.tables_written.len(), r.allocated, r.freed),
        (0, 0, 0),
        "{r:?}"
    );
    let p = read(&maps);
    check(&p, &spec);
    assert_eq!(ids(&p), before_restart);
    let stats = dp.service_stats().unwrap();
    let names: Vec<(&str, bool)> = stats[0]
        .replicas
        .iter()
        .map(|r| (r.name.as_str(), r.live))
        .collect();
    assert_eq!(
        names,
        [
            ("task-a", true),
            ("task-b", false),
            ("task-c", true),
            ("task-d", true)
        ]
    );
    assert!(stats[0]
        .replicas
        .iter()
        .all(|r| r.conns == 0 && r.packets == 0));

    // task-d removed: its id freed (after the table no longer names it).
    let d_id = before_restart[&Ipv4Addr::new(10, 99, 0, 5)];
    spec.replicas.pop();
    let r = dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    assert_eq!((r.tables_written.as_slice(), r.freed), (&[SLOT][..], 1));
    let p = read(&maps);
    check(&p, &spec);
    assert!(!p.backends.contains_key(&d_id));
    assert!(!p.table.contains(&d_id));

    // A new replica does not get task-d's id back at once.
    spec.replicas.push(replica("task-e", 6, true));
    dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    let p = read(&maps);
    check(&p, &spec);
    assert_ne!(
        ids(&p)[&Ipv4Addr::new(10, 99, 0, 6)],
        d_id,
        "a freed id is not reused first"
    );

    // Every replica dead: count 0, an empty table, the ids kept.
    for r in &mut spec.replicas {
        r.live = false;
    }
    dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    let p = read(&maps);
    check(&p, &spec);
    assert!(p.table.iter().all(|&e| e == NO_REPLICA));

    // Back to live, then a restart just before the service is removed: the
    // table, unknown to the new daemon, is found non-empty and cleared.
    for r in &mut spec.replicas {
        r.live = true;
    }
    dp.sync_services(std::slice::from_ref(&spec)).unwrap();
    check(&read(&maps), &spec);
    drop(dp);
    let mut dp = Datapath::load(scratch.path()).expect("reloading the datapath");

    // The service removed: no frontend, an empty table, no id.
    let r = dp.sync_services(&[]).unwrap();
    assert_eq!((r.tables_written.as_slice(), r.freed), (&[SLOT][..], 4));
    let p = read(&maps);
    assert!(p.services.is_empty() && p.backend_ports.is_empty() && p.backends.is_empty());
    assert!(p.table.iter().all(|&e| e == NO_REPLICA));
    assert!(dp.service_stats().unwrap().is_empty());

    // Two services with conflicting frontends are refused, nothing written.
    let mut other = service(vec![replica("x", 9, true)]);
    other.slot = SLOT + 1;
    let err = dp
        .sync_services(&[service(vec![replica("task-a", 2, true)]), other])
        .expect_err("one frontend, two services");
    assert!(format!("{err:#}").contains("twice"), "{err:#}");
    assert!(read(&maps).services.is_empty());
}

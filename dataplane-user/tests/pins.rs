//! Pinned-map safety: a daemon must never run on a pinned map whose layout
//! differs from its own (aya reuses a pin by name without checking), and must
//! reuse a matching one. Root; uses its own scratch directory on bpffs.

mod common;

use std::process::Command;

use common::Scratch;
use dataplane_common::Endpoint;
use dataplane_user::bpf::Datapath;

#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    let s = Scratch::new("layout");
    std::fs::create_dir_all(s.maps()).unwrap();
    // An ENDPOINTS map as an older build might have left it: 8-byte values.
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(s.maps().join("ENDPOINTS"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "ENDPOINTS",
        ])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Datapath::load(s.path())
        .err()
        .expect("load must refuse the mismatched pin");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ENDPOINTS") && msg.contains("value 8 B"),
        "{msg}"
    );
}

#[test]
fn matching_pins_are_reused_with_their_contents() {
    let s = Scratch::new("reuse");
    let ep = Endpoint {
        ifindex: dataplane_common::IFINDEX_BASE + 7,
        network_id: 7,
        ip: dataplane_common::ipv4_wire([10, 9, 8, 7]),
        mac: [2, 0x42, 10, 9, 8, 7],
        host_mac: [0x0e, 0, 0, 0, 0, 1],
        flags: 0,
        vtep: 0,
        net: dataplane_common::Network {
            subnet: dataplane_common::ipv4_wire([10, 9, 8, 0]),
            mask: dataplane_common::ipv4_wire([255, 255, 255, 0]),
            gateway: dataplane_common::ipv4_wire([10, 9, 8, 1]),
            flags: 0,
            vni: 0,
        },
    };
    {
        let mut dp = Datapath::load(s.path()).unwrap();
        dp.set_endpoint(ep).unwrap();
    }
    // A second load (a restarted daemon) reuses the map the first one wrote.
    let mut dp = Datapath::load(s.path()).unwrap();
    assert_eq!(entries(&s), 1, "the entry survives the reload");
    // Reconciling against an empty model removes the stale entry.
    dp.sync_endpoints(&[], &Default::default()).unwrap();
    assert_eq!(entries(&s), 0);
}

/// Number of entries in the pinned ENDPOINTS map, as bpftool sees them.
fn entries(s: &Scratch) -> usize {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(s.maps().join("ENDPOINTS"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().map_or(0, Vec::len)
}

/// The upkeep task expires conntrack entries through its own handle on the
/// pinned map: idle ones go (per protocol and TCP state), live ones stay,
/// and `flush_conntrack` removes every entry of one address.
#[test]
fn conntrack_expiry_and_flush_work_on_the_pinned_map() {
    use aya::maps::HashMap;
    use dataplane_common::{
        ipv4_wire, port_wire, CtEntry, CtKey, CT_TIMEOUT_TCP_SYN, CT_TIMEOUT_UDP, IPPROTO_TCP,
        IPPROTO_UDP, SEEN_CLOSING, SEEN_ESTABLISHED, SEEN_SYN,
    };
    let s = Scratch::new("ctexpire");
    let mut dp = Datapath::load(s.path()).unwrap();
    // A clock of the test's own, not CLOCK_MONOTONIC: on a machine booted
    // less than an hour ago `monotonic - 3600 s` does not exist. No program
    // runs on these entries, so only `expire_conntrack_at` reads `now`.
    let sec = 1_000_000_000u64;
    let now = 7 * 24 * 3600 * sec;
    let key = |proto, last: u8| {
        CtKey::new(
            proto,
            ipv4_wire([172, 17, 0, last]),
            port_wire(40000),
            ipv4_wire([192, 0, 2, 9]),
            port_wire(80),
        )
    };
    let entry = |seen, age: u64| CtEntry {
        saddr: ipv4_wire([198, 51, 100, 1]),
        daddr: ipv4_wire([192, 0, 2, 9]),
        sport: port_wire(40000),
        dport: port_wire(80),
        flags: 0,
        seen,
        _pad: 0,
        last_seen: now.saturating_sub(age),
        backend: dataplane_common::NO_BACKEND,
        vtep: 0,
    };
    let cases = [
        // (key, entry, expected to survive)
        (
            key(IPPROTO_TCP, 2),
            entry(SEEN_SYN, CT_TIMEOUT_TCP_SYN + sec),
            false,
        ),
        (key(IPPROTO_TCP, 3), entry(SEEN_SYN, sec), true),
        (
            key(IPPROTO_TCP, 4),
            entry(SEEN_SYN | SEEN_ESTABLISHED, 3600 * sec),
            true,
        ),
        (
            key(IPPROTO_TCP, 5),
            entry(SEEN_ESTABLISHED | SEEN_CLOSING, 11 * sec),
            false,
        ),
        (
            key(IPPROTO_UDP, 6),
            entry(SEEN_ESTABLISHED, CT_TIMEOUT_UDP + sec),
            false,
        ),
        (key(IPPROTO_UDP, 7), entry(SEEN_ESTABLISHED, sec), true),
    ];
    {
        let mut ct: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(dp.ebpf_mut().map_mut("CT").unwrap()).unwrap();
        for (k, e, _) in &cases {
            ct.insert(k, e, 0).unwrap();
        }
    }
    let gone = dataplane_user::bpf::expire_conntrack_at(&dp.ct_pin(), now).unwrap();
    assert_eq!(gone, 3);
    {
        let ct: HashMap<_, CtKey, CtEntry> =
            HashMap::try_from(dp.ebpf_mut().map_mut("CT").unwrap()).unwrap();
        for (k, _, live) in &cases {
            assert_eq!(ct.get(k, 0).is_ok(), *live, "{k:?}");
        }
    }
    assert_eq!(dp.conntrack_entries().unwrap(), 3);
    // Everything mentioning 192.0.2.9 goes with one flush.
    assert_eq!(dp.flush_conntrack(ipv4_wire([192, 0, 2, 9])).unwrap(), 3);
    assert_eq!(dp.conntrack_entries().unwrap(), 0);
}

//! Helpers shared by the integration tests (`mod common;` in each): the
//! crate's own test helpers, `src/testutil.rs`, compiled into each test
//! binary, so that the unit and integration tests use one copy of
//! `Scratch` and `in_private_netns`.

#![allow(dead_code, unused_imports)] // each test binary uses its own subset

#[path = "../../src/testutil.rs"]
mod testutil;

pub use testutil::*;

use dataplane_common::{
    ipv4_octets, ipv4_wire, Counters, DropReason, Endpoint, Network, EP_REMOTE,
};
use dataplane_user::bpf::Datapath;

/// The host side `{prefix}-{n}` (peer `{prefix}-{n}-c`) of each named
/// container's veth, at the endpoint's ifindex, both ends up.
pub fn container_veths(prefix: &str, eps: &[(&str, &Endpoint)]) {
    for (n, ep) in eps {
        let (host, peer) = (format!("{prefix}-{n}"), format!("{prefix}-{n}-c"));
        dataplane_user::netns::add_veth(&host, &peer, ep.ifindex)
            .unwrap_or_else(|e| panic!("veth {host}: {e:#}"));
        ip_cmd(&["link", "set", &host, "up"]);
        ip_cmd(&["link", "set", &peer, "up"]);
    }
}

/// One BPF_PROG_TEST_RUN of `prog` on `frame` arriving at `ifindex`: the
/// verdict and the output frame.
pub fn run_prog(
    dp: &mut Datapath,
    what: &str,
    prog: Prog,
    ifindex: u32,
    frame: &[u8],
) -> (u32, Vec<u8>) {
    let p: &aya::programs::SchedClassifier = dp
        .ebpf_mut()
        .program(prog.name())
        .expect("program")
        .try_into()
        .expect("classifier");
    tc_test_run(p, ifindex, frame)
        .unwrap_or_else(|e| panic!("{what}: BPF_PROG_TEST_RUN of {}: {e:?}", prog.name()))
}

/// A counter of `Counters` / `ProgramStats` by the name both give it.
#[derive(Clone, Copy, Debug)]
pub enum Field {
    Packets,
    Bytes,
    Redirected,
    Passed,
    ArpReplies,
    Translated,
    CtCreated,
    AllocFailed,
}

impl Field {
    pub const ALL: [Field; 8] = [
        Field::Packets,
        Field::Bytes,
        Field::Redirected,
        Field::Passed,
        Field::ArpReplies,
        Field::Translated,
        Field::CtCreated,
        Field::AllocFailed,
    ];
}

/// Checks the named counters and every drop reason of both programs in
/// `STATS` against what the cases booked in `expected`.
pub fn assert_prog_stats(dp: &Datapath, expected: &[Counters; 2], fields: &[Field]) {
    let stats = dp.stats().expect("STATS");
    for prog in [Prog::Container, Prog::Uplink] {
        let got = &stats[prog.slot()];
        let want = &expected[prog.slot()];
        let name = prog.name();
        assert_eq!(got.name, name);
        for f in fields {
            let (g, w) = match f {
                Field::Packets => (got.packets, want.packets),
                Field::Bytes => (got.bytes, want.bytes),
                Field::Redirected => (got.redirected, want.redirected),
                Field::Passed => (got.passed, want.passed),
                Field::ArpReplies => (got.arp_replies, want.arp_replies),
                Field::Translated => (got.translated, want.translated),
                Field::CtCreated => (got.ct_created, want.ct_created),
                Field::AllocFailed => (got.alloc_failed, want.alloc_failed),
            };
            assert_eq!(g, w, "{name}: {f:?}");
        }
        for r in DropReason::ALL {
            assert_eq!(
                got.drops[r.name()],
                want.drops[r as usize],
                "{name}: drops[{}]",
                r.name()
            );
        }
    }
}

/// The overlay network of the VXLAN and service labs: 10.7.0.0/24,
/// gateway 10.7.0.1, VNI 0x010a0b.
pub const OVERLAY_NET: Network = Network {
    subnet: ipv4_wire([10, 7, 0, 0]),
    mask: ipv4_wire([255, 255, 255, 0]),
    gateway: ipv4_wire([10, 7, 0, 1]),
    flags: 0,
    vni: 0x01_0a0b,
};

/// A container of `OVERLAY_NET` on this host, 10.7.0.`last`, at `ifindex`.
pub fn local(ifindex: u32, last: u8) -> Endpoint {
    Endpoint {
        ifindex,
        network_id: 1,
        ip: ipv4_wire([10, 7, 0, last]),
        mac: [0x02, 0x42, 10, 7, 0, last],
        host_mac: [0xee, 0xee, 10, 7, 0, last],
        flags: 0,
        vtep: 0,
        net: OVERLAY_NET,
    }
}

/// A container of `OVERLAY_NET` behind `vtep`, as the daemon writes another
/// host's endpoint.
pub fn remote(last: u8, vtep: [u8; 4]) -> Endpoint {
    Endpoint {
        ifindex: 0,
        network_id: 1,
        ip: ipv4_wire([10, 7, 0, last]),
        mac: [0x02, 0x42, 10, 7, 0, last],
        host_mac: [0; 6],
        flags: EP_REMOTE,
        vtep: ipv4_wire(vtep),
        net: OVERLAY_NET,
    }
}

/// An endpoint's address in octets.
pub fn ip(ep: &Endpoint) -> [u8; 4] {
    ipv4_octets(ep.ip)
}

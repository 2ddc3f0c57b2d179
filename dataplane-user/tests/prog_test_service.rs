//! Ingress-mode services (the routing mesh) as the kernel runs them,
//! through BPF_PROG_TEST_RUN on the loaded object, one run per frame:
//!
//! - on the host that receives a connection to an ingress port: the
//!   Maglev pick, the DNAT to a local replica, the VXLAN to a replica on
//!   another host, later packets that keep their replica whatever the table
//!   says since, and no live replica (`service_no_backend`);
//! - on the replica's host: the tunnelled flow accepted (from a cluster
//!   node, to a replica's port only) with its `CT_TUNNEL` pair, and the
//!   replica's reply encapsulated back to the host that received the flow;
//! - back on the receiving host: that reply decapsulated, un-DNATed and
//!   routed to the client;
//! - east-west per packet (a container's flow to a VIP that no socket hook
//!   translated): the DNAT to a local replica or the VXLAN to a remote
//!   one, the replies' source back to the VIP (at the replica's veth, or at
//!   decapsulation), a flow that keeps its replica, the drops, and a
//!   replica without `EP_BACKEND` whose reply nothing looks up; and live,
//!   TCP and UDP from a client namespace to replicas on two hosts.
//!
//! Each case checks the verdict, the output frame byte for byte against
//! frames built here from the RFCs (checksums from scratch), the CT
//! entries, and the program, service and replica counters.
//!
//! Root only. Each test runs in a thread of its own with a private network
//! namespace: the host side of two local containers' veths (at
//! `IFINDEX_BASE + n`), an uplink `ul0` with 192.0.2.1/24 (this host's
//! address and VTEP) and a default route via 192.0.2.254, permanent
//! neighbours for the router and the cluster node 192.0.2.2 (whose replica
//! is 10.7.0.9), and its own pin directory (Drop guard). The service maps
//! are written directly here, as the daemon's projection will write them.

mod common;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use common::{
    assert_prog_stats, be16, container_veths, csum, dotted, hex, in_private_netns, ip, ip_cmd,
    local, mac_str, remote, run_prog, tc_test_run, uplink_veth, Field, NsThread, Prog, Scratch,
    OVERLAY_NET,
};
use dataplane_common::{
    flow_hash, ipv4_octets, ipv4_wire, maglev_index, port_host, port_wire, Backend, Counters,
    CtEntry, CtKey, DropReason, Endpoint, Network, PortKey, Service, ServiceCounters, Tunnel,
    BE_ACTIVE, CT_DNAT, CT_PUBLISHED, CT_REPLY, CT_SERVICE, CT_SNAT, CT_TUNNEL, EP_BACKEND,
    EP_REMOTE, IFINDEX_BASE, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_M, NO_REPLICA, PROG_FROM_CONTAINER,
    PROG_FROM_UPLINK, SVC_INGRESS, SVC_VIP, TUNNEL_ENABLED, VTEP_NODE, VTEP_STATIC,
};
use dataplane_user::bpf::Datapath;

// TC verdicts (include/uapi/linux/pkt_cls.h).
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// This host: its address on the uplink, which is also its VTEP.
const HOST: [u8; 4] = [192, 0, 2, 1];
const UL_MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 2, 1];
const ROUTER: [u8; 4] = [192, 0, 2, 254];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 2, 0xfe];
/// A cluster node (with a neighbour entry): the other host.
const NODE: [u8; 4] = [192, 0, 2, 2];
const NODE_MAC: [u8; 6] = [0x02, 0, 0x5e, 0, 2, 2];
/// A static VTEP: no daemon, no replicas.
const STATIC_VTEP: [u8; 4] = [192, 0, 2, 3];
/// The client, outside the cluster (behind the router).
const CLIENT: [u8; 4] = [198, 51, 100, 7];
const VNI: u32 = OVERLAY_NET.vni;
const MTU: u32 = 1450;

/// The ingress port, the replicas' port, the service's slot.
const PUBLISHED: u16 = 8080;
const TARGET: u16 = 80;
const SLOT: u32 = 3;
/// Replica ids: two on this host, one on the node.
const ID_L: u32 = 10;
const ID_R: u32 = 11;
const ID_M: u32 = 12;

const NET: Network = OVERLAY_NET;

// ---------------------------------------------------------------------------
// Frames, built from the RFCs independently of the code under test.
// ---------------------------------------------------------------------------

fn ethernet(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet (IHL 5, DF, id `id`, TTL `ttl`).
fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&0x4000u16.to_be_bytes());
    p.extend_from_slice(&[ttl, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = csum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A TCP segment (no options) from `s` to `d` with a correct checksum.
fn tcp(s: ([u8; 4], u16), d: ([u8; 4], u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&s.1.to_be_bytes());
    t.extend_from_slice(&d.1.to_be_bytes());
    t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    t.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags]);
    t.extend_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&s.0);
    pseudo.extend_from_slice(&d.0);
    pseudo.extend_from_slice(&[0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&(t.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&t);
    let c = csum(&pseudo);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

const SYN: u8 = 0x02;
const SYN_ACK: u8 = 0x12;
const ACK: u8 = 0x10;

/// A TCP frame `s` -> `d` (payload of 12 bytes) with TTL `ttl`.
fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    s: ([u8; 4], u16),
    d: ([u8; 4], u16),
    flags: u8,
    ttl: u8,
) -> Vec<u8> {
    let payload = if flags & SYN != 0 {
        &[][..]
    } else {
        &b"GET / HTTP/1"[..]
    };
    ethernet(
        macs.0,
        macs.1,
        &ipv4(
            s.0,
            d.0,
            IPPROTO_TCP,
            0x3344,
            ttl,
            &tcp(s, d, flags, payload),
        ),
    )
}

/// A UDP frame `s` -> `d` with a correct checksum (TTL `ttl`).
fn udp_frame(macs: ([u8; 6], [u8; 6]), s: ([u8; 4], u16), d: ([u8; 4], u16), ttl: u8) -> Vec<u8> {
    let payload = b"a datagram of a UDP service";
    let mut u = Vec::new();
    u.extend_from_slice(&s.1.to_be_bytes());
    u.extend_from_slice(&d.1.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&s.0);
    pseudo.extend_from_slice(&d.0);
    pseudo.extend_from_slice(&[0, IPPROTO_UDP]);
    pseudo.extend_from_slice(&(u.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&u);
    let c = csum(&pseudo);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    ethernet(
        macs.0,
        macs.1,
        &ipv4(s.0, d.0, IPPROTO_UDP, 0x5566, ttl, &u),
    )
}

/// The frame RFC 7348 makes of `inner` from `src` to `dst` (outer MACs
/// `macs`, UDP source port `sport`, checksum 0, DF, id 0, TTL 64).
fn vxlan(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    inner: &[u8],
) -> Vec<u8> {
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&VNI.to_be_bytes()[1..]);
    vx.push(0);
    vx.extend_from_slice(inner);
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&4789u16.to_be_bytes());
    u.extend_from_slice(&((8 + vx.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&vx);
    let mut ip = ipv4(src, dst, 17, 0, 64, &u);
    // The encapsulation's id is 0 and TTL 64, as built; recheck the sum.
    ip[10..12].fill(0);
    let c = csum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ethernet(macs.0, macs.1, &ip)
}

/// Checks that `out` is `inner` encapsulated from this host to `vtep`
/// (outer MACs `macs`), and returns the outer UDP source port, which comes
/// from the skb's flow hash (only its range is known here).
fn check_encap(what: &str, out: &[u8], inner: &[u8], vtep: [u8; 4], macs: ([u8; 6], [u8; 6])) {
    assert!(out.len() > 36, "{what}: {}", hex(out));
    let sport = be16(out, 34);
    assert!(
        (32_768..61_000).contains(&sport),
        "{what}: source port {sport} in the local port range"
    );
    assert_eq!(csum(&out[14..34]), 0, "{what}: outer IPv4 checksum");
    assert_eq!(
        hex(out),
        hex(&vxlan(macs, HOST, vtep, sport, inner)),
        "{what}: the whole frame"
    );
}

// ---------------------------------------------------------------------------
// The lab.
// ---------------------------------------------------------------------------

fn tcp_key(s: ([u8; 4], u16), d: ([u8; 4], u16)) -> CtKey {
    CtKey::new(
        IPPROTO_TCP,
        ipv4_wire(s.0),
        port_wire(s.1),
        ipv4_wire(d.0),
        port_wire(d.1),
    )
}

/// (saddr, sport, daddr, dport) of an entry, in octets and host order.
fn tuple(e: &CtEntry) -> ([u8; 4], u16, [u8; 4], u16) {
    (
        ipv4_octets(e.saddr),
        port_host(e.sport),
        ipv4_octets(e.daddr),
        port_host(e.dport),
    )
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// First packet of a translated flow: rewritten, CT pair, redirected (7).
    New,
    /// Packet of a known translated flow, rewritten, redirected (7).
    Translated,
    /// Redirected untranslated (7): en- or decapsulated.
    Redirected,
    /// Dropped (2), counted under the reason, untouched.
    Drop(DropReason),
    /// Dropped (2), counted under the reason, after the rewrite (the way
    /// out failed).
    DropLate(DropReason),
}

struct Lab {
    // Field order is drop order: close program and maps before unpinning.
    dp: Datapath,
    _pins: Scratch,
    /// Replicas on this host (ids ID_L, ID_M) and on the node (ID_R).
    l: Endpoint,
    m: Endpoint,
    r: Endpoint,
    uplink: u32,
    expected: [Counters; 2],
}

impl Lab {
    fn new(tag: &str) -> Self {
        let l = local(IFINDEX_BASE + 1, 2);
        let m = local(IFINDEX_BASE + 2, 3);
        container_veths("dps", &[("l", &l), ("m", &m)]);
        let uplink = uplink_veth(
            "ul0",
            "ul1",
            UL_MAC,
            HOST,
            Some(ROUTER),
            &[(ROUTER, ROUTER_MAC), (NODE, NODE_MAC)],
        );

        let pins = Scratch::new(&format!("svc-{tag}"));
        let mut dp = Datapath::load(pins.path()).expect("loading the datapath");
        let r = remote(9, NODE);
        dp.set_endpoint(l).expect("endpoint l");
        dp.set_endpoint(m).expect("endpoint m");
        dp.set_remote_endpoint(r).expect("remote endpoint r");
        dp.set_tunnel(Tunnel {
            addr: ipv4_wire(HOST),
            ifindex: uplink,
            mtu: MTU,
            flags: TUNNEL_ENABLED,
        })
        .expect("TUNNEL");
        dp.sync_vteps(&[
            (ipv4_wire(NODE), VTEP_NODE),
            (ipv4_wire(STATIC_VTEP), VTEP_STATIC),
        ])
        .expect("VTEPS");
        dp.sync_local_addrs(&[ipv4_wire(HOST), NET.gateway])
            .expect("LOCAL_ADDRS");
        let mut lab = Lab {
            dp,
            _pins: pins,
            l,
            m,
            r,
            uplink,
            expected: [Counters::ZERO; 2],
        };
        for (id, ep) in [(ID_L, l), (ID_R, r), (ID_M, m)] {
            lab.set_backend(id, ep.ip, BE_ACTIVE);
        }
        lab.set_service(3);
        lab
    }

    fn set_service(&mut self, count: u32) {
        set_service(&mut self.dp, PUBLISHED, count);
    }

    fn set_backend(&mut self, id: u32, addr: u32, flags: u32) {
        set_backend(&mut self.dp, id, addr, flags);
    }

    fn set_table(&mut self, table: impl Fn(u32) -> u32) {
        set_table(&mut self.dp, table);
    }

    fn set_backend_port(&mut self, ep: &Endpoint, port: u16, id: u32) {
        set_backend_port(&mut self.dp, ep, port, id);
    }

    fn ct(&mut self, k: &CtKey) -> Option<CtEntry> {
        let m: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(self.dp.ebpf_mut().map_mut("CT").expect("CT")).expect("CT");
        m.get(k, 0).ok()
    }

    fn ct_len(&mut self) -> usize {
        let m: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(self.dp.ebpf_mut().map_mut("CT").expect("CT")).expect("CT");
        m.keys().count()
    }

    /// The per-CPU counters of `map` at `i`, summed.
    fn svc_counters(&mut self, map: &str, i: u32) -> ServiceCounters {
        let m: PerCpuArray<&mut MapData, ServiceCounters> =
            PerCpuArray::try_from(self.dp.ebpf_mut().map_mut(map).expect(map)).expect(map);
        let mut sum = ServiceCounters::ZERO;
        for c in m.get(&i, 0).expect("per-CPU counters").iter() {
            sum.conns += c.conns;
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            for (s, d) in sum.drops.iter_mut().zip(c.drops.iter()) {
                *s += d;
            }
        }
        sum
    }

    /// The replica id the lab's table gives the flow first seen as `key`,
    /// computed here with the programs' hash and index.
    fn expected_id(table: impl Fn(u32) -> u32, key: &CtKey) -> u32 {
        let i = maglev_index(SLOT, flow_hash(key)) - SLOT * MAGLEV_M;
        table(i)
    }

    /// Runs `frame`, asserts the verdict (and an untouched frame for a
    /// drop), books the program counters and returns the output.
    fn send(&mut self, what: &str, prog: Prog, ifindex: u32, frame: &[u8], o: Outcome) -> Vec<u8> {
        let (ret, out) = run_prog(&mut self.dp, what, prog, ifindex, frame);
        let e = &mut self.expected[prog.slot()];
        e.packets += 1;
        e.bytes += frame.len() as u64;
        let want = match o {
            Outcome::New => {
                e.translated += 1;
                e.ct_created += 1;
                e.redirected += 1;
                TC_ACT_REDIRECT
            }
            Outcome::Translated => {
                e.translated += 1;
                e.redirected += 1;
                TC_ACT_REDIRECT
            }
            Outcome::Redirected => {
                e.redirected += 1;
                TC_ACT_REDIRECT
            }
            Outcome::Drop(r) | Outcome::DropLate(r) => {
                e.drops[r as usize] += 1;
                TC_ACT_SHOT
            }
        };
        assert_eq!(ret, want, "{what}: verdict ({o:?}) from {}", prog.name());
        if matches!(o, Outcome::Drop(_)) {
            assert_eq!(hex(&out), hex(frame), "{what}: the frame must be untouched");
        }
        out
    }

    fn uplink(&mut self, what: &str, frame: &[u8], o: Outcome) -> Vec<u8> {
        let ul = self.uplink;
        self.send(what, Prog::Uplink, ul, frame, o)
    }

    fn container(&mut self, what: &str, from: Endpoint, frame: &[u8], o: Outcome) -> Vec<u8> {
        self.send(what, Prog::Container, from.ifindex, frame, o)
    }

    fn assert_stats(&self) {
        use Field::*;
        let fields = [Packets, Bytes, Redirected, Passed, Translated, CtCreated];
        assert_prog_stats(&self.dp, &self.expected, &fields);
    }
}

/// The ingress frontend (tcp, every address, `port`) of the service at
/// SLOT, with `count` live replicas.
fn set_service(dp: &mut Datapath, port: u16, count: u32) {
    let mut m: HashMap<&mut MapData, PortKey, Service> =
        HashMap::try_from(dp.ebpf_mut().map_mut("SERVICES").expect("SERVICES")).expect("SERVICES");
    let svc = Service {
        slot: SLOT,
        count,
        target: port_wire(TARGET),
        flags: SVC_INGRESS,
    };
    m.insert(PortKey::new(IPPROTO_TCP, 0, port_wire(port)), svc, 0)
        .expect("SERVICES insert");
}

fn set_backend(dp: &mut Datapath, id: u32, addr: u32, flags: u32) {
    let mut m: Array<&mut MapData, Backend> =
        Array::try_from(dp.ebpf_mut().map_mut("BACKENDS").expect("BACKENDS")).expect("BACKENDS");
    let be = Backend {
        ip: addr,
        slot: SLOT,
        flags,
    };
    m.set(id, be, 0).expect("BACKENDS set");
}

/// Writes the whole Maglev table of SLOT: entry `i` is `table(i)`.
fn set_table(dp: &mut Datapath, table: impl Fn(u32) -> u32) {
    let mut m: Array<&mut MapData, u32> =
        Array::try_from(dp.ebpf_mut().map_mut("MAGLEV").expect("MAGLEV")).expect("MAGLEV");
    for i in 0..MAGLEV_M {
        m.set(SLOT * MAGLEV_M + i, table(i), 0).expect("MAGLEV set");
    }
}

fn set_backend_port(dp: &mut Datapath, ep: &Endpoint, port: u16, id: u32) {
    let mut m: HashMap<&mut MapData, PortKey, u32> = HashMap::try_from(
        dp.ebpf_mut()
            .map_mut("BACKEND_PORTS")
            .expect("BACKEND_PORTS"),
    )
    .expect("BACKEND_PORTS");
    m.insert(PortKey::new(IPPROTO_TCP, ep.ip, port_wire(port)), id, 0)
        .expect("BACKEND_PORTS insert");
}

/// A client's connection to the ingress port of this host.
fn client_at(sport: u16) -> (([u8; 4], u16), ([u8; 4], u16)) {
    ((CLIENT, sport), (HOST, PUBLISHED))
}

/// A table that gives every third entry to each replica.
fn thirds(i: u32) -> u32 {
    [ID_L, ID_R, ID_M][(i % 3) as usize]
}

/// The first client source port from 40000 on whose flow `table` gives
/// to replica `id`.
fn sport_for(table: impl Fn(u32) -> u32 + Copy, id: u32) -> u16 {
    (40_000u16..)
        .find(|&p| {
            let (s, d) = client_at(p);
            Lab::expected_id(table, &tcp_key(s, d)) == id
        })
        .expect("a source port")
}

// ---------------------------------------------------------------------------
// The receiving host.
// ---------------------------------------------------------------------------

#[test]
fn a_new_ingress_flow_to_a_local_replica_is_dnated_into_it() {
    in_private_netns(|| {
        let mut lab = Lab::new("local");
        lab.set_table(thirds);
        let l = lab.l;
        let sport = sport_for(thirds, ID_L);
        let (c, h) = client_at(sport);
        let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
        let out = lab.uplink("SYN to the ingress port", &syn, Outcome::New);
        // To the replica's address and target port, from the client's own
        // address and port; one hop off the TTL; checksums from scratch.
        let want = tcp_frame((l.mac, l.host_mac), c, (ip(&l), TARGET), SYN, 63);
        assert_eq!(hex(&out), hex(&want), "the DNATed SYN");
        assert_eq!(csum(&out[14..34]), 0, "its IPv4 checksum");

        let fwd = lab
            .ct(&tcp_key(c, h))
            .expect("CT entry of the client's direction");
        assert_eq!(tuple(&fwd), (CLIENT, sport, ip(&l), TARGET));
        assert_eq!(fwd.flags, CT_DNAT | CT_PUBLISHED | CT_SERVICE);
        assert_eq!((fwd.backend, fwd.vtep), (ID_L, 0));
        let rev = lab
            .ct(&tcp_key((ip(&l), TARGET), c))
            .expect("CT entry of the reply direction");
        assert_eq!(tuple(&rev), (HOST, PUBLISHED, CLIENT, sport));
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_SERVICE | CT_REPLY);
        assert_eq!(rev.backend, ID_L);
        assert_eq!(lab.ct_len(), 2);

        // The replica's SYN-ACK goes back to the client from host:P.
        let sa = tcp_frame((l.host_mac, l.mac), (ip(&l), TARGET), c, SYN_ACK, 64);
        let out = lab.container("SYN-ACK from the replica", l, &sa, Outcome::Translated);
        let want = tcp_frame((ROUTER_MAC, UL_MAC), h, c, SYN_ACK, 63);
        assert_eq!(hex(&out), hex(&want), "the un-DNATed SYN-ACK");

        let len = (syn.len() + sa.len()) as u64;
        let svc = lab.svc_counters("SVC_STATS", SLOT);
        assert_eq!((svc.conns, svc.packets, svc.bytes), (1, 2, len), "service");
        let be = lab.svc_counters("BACKEND_STATS", ID_L);
        assert_eq!((be.conns, be.packets, be.bytes), (1, 2, len), "replica l");
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_R).conns, 0);
        lab.assert_stats();
    });
}

#[test]
fn a_new_ingress_flow_to_a_remote_replica_is_tunnelled_to_its_host() {
    in_private_netns(|| {
        let mut lab = Lab::new("remote");
        lab.set_table(thirds);
        let r = lab.r;
        let sport = sport_for(thirds, ID_R);
        let (c, h) = client_at(sport);
        let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
        let out = lab.uplink("SYN for a remote replica", &syn, Outcome::New);
        // Inside: DNATed to the replica (client address kept, TTL 63), from
        // the MAC the client's packet came to; outside: to the node's VTEP.
        let inner = tcp_frame((r.mac, UL_MAC), c, (ip(&r), TARGET), SYN, 63);
        check_encap("SYN to r", &out, &inner, NODE, (NODE_MAC, UL_MAC));
        let fwd = lab.ct(&tcp_key(c, h)).expect("CT entry");
        assert_eq!(tuple(&fwd), (CLIENT, sport, ip(&r), TARGET));
        assert_eq!(fwd.backend, ID_R);

        // Every later packet of the flow is encapsulated too.
        let ack = tcp_frame((UL_MAC, ROUTER_MAC), c, h, ACK, 64);
        let out = lab.uplink("ACK for a remote replica", &ack, Outcome::Translated);
        let inner = tcp_frame((r.mac, UL_MAC), c, (ip(&r), TARGET), ACK, 63);
        check_encap("ACK to r", &out, &inner, NODE, (NODE_MAC, UL_MAC));

        let be = lab.svc_counters("BACKEND_STATS", ID_R);
        let len = (syn.len() + ack.len()) as u64;
        assert_eq!((be.conns, be.packets, be.bytes), (1, 2, len), "replica r");

        // The tunnel switched off: the flow's packets cannot reach r, and
        // the drops are the service's too.
        lab.dp
            .set_tunnel(Tunnel {
                addr: 0,
                ifindex: 0,
                mtu: 0,
                flags: 0,
            })
            .expect("TUNNEL off");
        let off = DropReason::TunnelDisabled;
        lab.uplink("ACK, tunnel off", &ack, Outcome::DropLate(off));
        let svc = lab.svc_counters("SVC_STATS", SLOT);
        assert_eq!(svc.drops[off as usize], 1, "service drops");
        lab.assert_stats();
    });
}

#[test]
fn maglev_gives_each_flow_the_replica_its_hash_names() {
    in_private_netns(|| {
        let mut lab = Lab::new("maglev");
        // Entries of the two local replicas, in runs of 7 (not a pattern
        // the hash could line up with by accident).
        let table = |i: u32| {
            if (i / 7).is_multiple_of(2) {
                ID_L
            } else {
                ID_M
            }
        };
        lab.set_table(table);
        let (l, m) = (lab.l, lab.m);
        let mut seen = std::collections::BTreeMap::new();
        for sport in 41_000u16..41_032 {
            let (c, h) = client_at(sport);
            let want = Lab::expected_id(table, &tcp_key(c, h));
            let ep = if want == ID_L { l } else { m };
            let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
            let out = lab.uplink("SYN", &syn, Outcome::New);
            let exp = tcp_frame((ep.mac, ep.host_mac), c, (ip(&ep), TARGET), SYN, 63);
            assert_eq!(hex(&out), hex(&exp), "sport {sport}: to replica {want}");
            let e = lab.ct(&tcp_key(c, h)).expect("CT entry");
            assert_eq!(e.backend, want, "sport {sport}");
            *seen.entry(want).or_insert(0u64) += 1;
        }
        assert_eq!(seen.len(), 2, "32 flows reach both replicas: {seen:?}");
        for (id, n) in &seen {
            let be = lab.svc_counters("BACKEND_STATS", *id);
            assert_eq!((be.conns, be.packets), (*n, *n), "replica {id}");
        }
        assert_eq!(lab.svc_counters("SVC_STATS", SLOT).conns, 32);
        lab.assert_stats();
    });
}

#[test]
fn an_established_flow_keeps_its_replica_when_the_table_changes() {
    in_private_netns(|| {
        let mut lab = Lab::new("keep");
        lab.set_table(|_| ID_L);
        let (l, m) = (lab.l, lab.m);
        let (c, h) = client_at(42_000);
        let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
        lab.uplink("SYN (conntrack miss)", &syn, Outcome::New);
        // Scaled: the table now gives everything to m.
        lab.set_table(|_| ID_M);
        let ack = tcp_frame((UL_MAC, ROUTER_MAC), c, h, ACK, 64);
        let out = lab.uplink("ACK (conntrack hit)", &ack, Outcome::Translated);
        let want = tcp_frame((l.mac, l.host_mac), c, (ip(&l), TARGET), ACK, 63);
        assert_eq!(hex(&out), hex(&want), "still to l");
        // A retransmitted SYN renews the flow on the same replica.
        let out = lab.uplink("SYN again (renewed)", &syn, Outcome::Translated);
        let want = tcp_frame((l.mac, l.host_mac), c, (ip(&l), TARGET), SYN, 63);
        assert_eq!(hex(&out), hex(&want), "renewed, still to l");
        assert_eq!(lab.ct(&tcp_key(c, h)).expect("CT").backend, ID_L);
        // A new flow follows the new table.
        let (c2, _) = client_at(42_001);
        let syn2 = tcp_frame((UL_MAC, ROUTER_MAC), c2, h, SYN, 64);
        let out = lab.uplink("new SYN (conntrack miss)", &syn2, Outcome::New);
        let want = tcp_frame((m.mac, m.host_mac), c2, (ip(&m), TARGET), SYN, 63);
        assert_eq!(hex(&out), hex(&want), "a new flow goes to m");
        let be_l = lab.svc_counters("BACKEND_STATS", ID_L);
        assert_eq!((be_l.conns, be_l.packets), (1, 3), "replica l");
        let be_m = lab.svc_counters("BACKEND_STATS", ID_M);
        assert_eq!((be_m.conns, be_m.packets), (1, 1), "replica m");
        lab.assert_stats();
    });
}

#[test]
fn no_live_replica_is_a_counted_drop() {
    in_private_netns(|| {
        let mut lab = Lab::new("none");
        let no = DropReason::ServiceNoBackend;
        lab.set_table(|_| ID_L);
        let (c, h) = client_at(43_000);
        let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
        // No replica left in the service.
        lab.set_service(0);
        lab.uplink("no replica", &syn, Outcome::Drop(no));
        // A table being rebuilt (no replica in the entry), a replica id
        // not in use any more, one of another service, one the daemon has
        // no endpoint for.
        lab.set_service(1);
        lab.set_table(|_| NO_REPLICA);
        lab.uplink("empty table entry", &syn, Outcome::Drop(no));
        lab.set_table(|_| ID_L);
        lab.set_backend(ID_L, lab.l.ip, 0);
        lab.uplink("inactive replica", &syn, Outcome::Drop(no));
        {
            let mut m: Array<&mut MapData, Backend> =
                Array::try_from(lab.dp.ebpf_mut().map_mut("BACKENDS").expect("BACKENDS"))
                    .expect("BACKENDS");
            let other = Backend {
                ip: lab.l.ip,
                slot: SLOT + 1,
                flags: BE_ACTIVE,
            };
            m.set(ID_L, other, 0).expect("BACKENDS set");
        }
        lab.uplink("another service's replica", &syn, Outcome::Drop(no));
        lab.set_backend(ID_L, ipv4_wire([10, 7, 0, 99]), BE_ACTIVE);
        lab.uplink("replica without endpoint", &syn, Outcome::Drop(no));
        assert_eq!(lab.ct_len(), 0, "no conntrack entry for a dropped flow");
        let svc = lab.svc_counters("SVC_STATS", SLOT);
        assert_eq!(svc.drops[no as usize], 5, "service drops");
        assert_eq!((svc.conns, svc.packets), (0, 0));
        // Back in service: the same SYN opens its flow.
        lab.set_backend(ID_L, lab.l.ip, BE_ACTIVE);
        lab.uplink("replica back", &syn, Outcome::New);
        // Another port of this host is not the service's: to the host.
        let other = tcp_frame((UL_MAC, ROUTER_MAC), c, (HOST, 8081), SYN, 64);
        let p: &aya::programs::SchedClassifier = lab
            .dp
            .ebpf_mut()
            .program("from_uplink")
            .expect("program")
            .try_into()
            .expect("classifier");
        let ul = lab.uplink;
        let (ret, out) = tc_test_run(p, ul, &other).expect("test run");
        assert_eq!((ret, hex(&out)), (TC_ACT_OK, hex(&other)), "other port");
        lab.expected[PROG_FROM_UPLINK as usize].packets += 1;
        lab.expected[PROG_FROM_UPLINK as usize].bytes += other.len() as u64;
        lab.expected[PROG_FROM_UPLINK as usize].passed += 1;
        lab.assert_stats();
    });
}

#[test]
fn a_udp_ingress_flow_is_dnated_both_ways_with_its_checksum() {
    in_private_netns(|| {
        let mut lab = Lab::new("udp");
        set_table(&mut lab.dp, |_| ID_M);
        {
            let mut m: HashMap<&mut MapData, PortKey, Service> =
                HashMap::try_from(lab.dp.ebpf_mut().map_mut("SERVICES").expect("SERVICES"))
                    .expect("SERVICES");
            let svc = Service {
                slot: SLOT,
                count: 1,
                target: port_wire(5353),
                flags: SVC_INGRESS,
            };
            m.insert(PortKey::new(IPPROTO_UDP, 0, port_wire(53)), svc, 0)
                .expect("SERVICES insert");
        }
        let m = lab.m;
        let (c, h) = ((CLIENT, 46_000), (HOST, 53));
        let q = udp_frame((UL_MAC, ROUTER_MAC), c, h, 64);
        let out = lab.uplink("UDP to the ingress port", &q, Outcome::New);
        let want = udp_frame((m.mac, m.host_mac), c, (ip(&m), 5353), 63);
        assert_eq!(hex(&out), hex(&want), "the DNATed datagram");
        let again = lab.uplink("the next datagram", &q, Outcome::Translated);
        assert_eq!(hex(&again), hex(&want), "same flow, same replica");
        let a = udp_frame((m.host_mac, m.mac), (ip(&m), 5353), c, 64);
        let out = lab.container("the answer", m, &a, Outcome::Translated);
        let want = udp_frame((ROUTER_MAC, UL_MAC), h, c, 63);
        assert_eq!(hex(&out), hex(&want), "the answer from host:53");
        let be = lab.svc_counters("BACKEND_STATS", ID_M);
        assert_eq!((be.conns, be.packets), (1, 3));
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// The replica's host, and the reply's way back.
// ---------------------------------------------------------------------------

/// The node's encapsulation of a client's packet for replica `l` of this
/// host (as `a_new_ingress_flow_to_a_remote_replica...` shows it built).
fn tunnelled(from: [u8; 4], l: &Endpoint, sport: u16, port: u16, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let inner = tcp_frame((l.mac, NODE_MAC), (CLIENT, sport), (ip(l), port), flags, 63);
    let f = vxlan((UL_MAC, NODE_MAC), from, HOST, 51_234, &inner);
    (f, inner)
}

#[test]
fn the_replicas_host_accepts_tunnelled_ingress_flows_and_tunnels_replies_back() {
    in_private_netns(|| {
        let mut lab = Lab::new("replica");
        let l = lab.l;
        lab.set_backend_port(&l, TARGET, ID_L);
        let spoofed = DropReason::VxlanSpoofed;

        // Refused: from a static VTEP, to a port that is no replica's.
        let (f, _) = tunnelled(STATIC_VTEP, &l, 44_000, TARGET, SYN);
        lab.uplink("from a static VTEP", &f, Outcome::Drop(spoofed));
        let (f, _) = tunnelled(NODE, &l, 44_000, 22, SYN);
        lab.uplink("to another port", &f, Outcome::Drop(spoofed));
        assert_eq!(lab.ct_len(), 0);

        let (f, inner) = tunnelled(NODE, &l, 44_000, TARGET, SYN);
        let out = lab.uplink("tunnelled SYN", &f, Outcome::Redirected);
        // Unchanged inside, from the replica's gateway MAC.
        let mut want = inner.clone();
        want[6..12].copy_from_slice(&l.host_mac);
        assert_eq!(hex(&out), hex(&want), "into the replica");
        let c = (CLIENT, 44_000);
        let fwd = lab.ct(&tcp_key(c, (ip(&l), TARGET))).expect("CT forward");
        assert_eq!(tuple(&fwd), (CLIENT, 44_000, ip(&l), TARGET), "no rewrite");
        assert_eq!(fwd.flags, CT_TUNNEL);
        assert_eq!((fwd.vtep, fwd.backend), (ipv4_wire(NODE), ID_L));
        let rev = lab.ct(&tcp_key((ip(&l), TARGET), c)).expect("CT reply");
        assert_eq!(tuple(&rev), (ip(&l), TARGET, CLIENT, 44_000), "no rewrite");
        assert_eq!(rev.flags, CT_TUNNEL | CT_REPLY);
        assert_eq!((rev.vtep, rev.backend), (ipv4_wire(NODE), ID_L));
        // A later packet finds its flow (no second pair).
        let (f, _) = tunnelled(NODE, &l, 44_000, TARGET, ACK);
        lab.uplink("tunnelled ACK", &f, Outcome::Redirected);
        assert_eq!(lab.ct_len(), 2);

        // The replica's reply goes back to the node, unchanged inside: not
        // masqueraded (this host has a default route it would take).
        let sa = tcp_frame((l.host_mac, l.mac), (ip(&l), TARGET), c, SYN_ACK, 64);
        let out = lab.container("the replica's SYN-ACK", l, &sa, Outcome::Redirected);
        check_encap("SYN-ACK back", &out, &sa, NODE, (NODE_MAC, UL_MAC));
        assert_eq!(lab.ct_len(), 2, "no masquerade entry");
        let be = lab.svc_counters("BACKEND_STATS", ID_L);
        assert_eq!(be.packets, 3, "replica l's packets on its host");
        lab.assert_stats();
    });
}

#[test]
fn the_reply_from_a_remote_replica_is_routed_to_the_client_from_host_and_port() {
    in_private_netns(|| {
        let mut lab = Lab::new("reply");
        lab.set_table(|_| ID_R);
        let r = lab.r;
        let (c, h) = client_at(45_000);
        let syn = tcp_frame((UL_MAC, ROUTER_MAC), c, h, SYN, 64);
        lab.uplink("SYN for r", &syn, Outcome::New);

        // r's host sends the reply back in VXLAN, as it came.
        let inner = tcp_frame((NET_GW_MAC, r.mac), (ip(&r), TARGET), c, SYN_ACK, 64);
        let not_local = DropReason::VxlanNotLocal;
        // Refused: from a static VTEP; from a node the replica is not
        // behind; for a flow this host has no entry of.
        let f = vxlan((UL_MAC, NODE_MAC), STATIC_VTEP, HOST, 50_000, &inner);
        lab.uplink("reply from a static VTEP", &f, Outcome::Drop(not_local));
        let other = tcp_frame(
            (NET_GW_MAC, r.mac),
            (ip(&r), TARGET),
            (CLIENT, 45_001),
            SYN_ACK,
            64,
        );
        let f = vxlan((UL_MAC, NODE_MAC), NODE, HOST, 50_000, &other);
        lab.uplink("reply of no flow", &f, Outcome::Drop(not_local));
        lab.dp
            .set_remote_endpoint(remote(9, [192, 0, 2, 99]))
            .expect("r moved");
        let f = vxlan((UL_MAC, NODE_MAC), NODE, HOST, 50_000, &inner);
        lab.uplink("reply from the wrong node", &f, Outcome::Drop(not_local));
        lab.dp.set_remote_endpoint(r).expect("r back");

        let out = lab.uplink("the reply", &f, Outcome::Translated);
        // From this host's address and the published port, to the client,
        // through the router; one hop off the TTL.
        let want = tcp_frame((ROUTER_MAC, UL_MAC), h, c, SYN_ACK, 63);
        assert_eq!(hex(&out), hex(&want), "the reply toward the client");
        assert_eq!(csum(&out[14..34]), 0, "its IPv4 checksum");
        let be = lab.svc_counters("BACKEND_STATS", ID_R);
        assert_eq!(
            (be.conns, be.packets, be.bytes),
            (1, 2, (syn.len() + inner.len()) as u64),
            "replica r (the reply counted without its tunnel headers)"
        );
        lab.assert_stats();
    });
}

/// Whatever MAC the replica's own host gives the inner frame: overwritten.
const NET_GW_MAC: [u8; 6] = [0xee, 0xee, 10, 7, 0, 1];

// ---------------------------------------------------------------------------
// East-west, per packet: a container's flow to the VIP that no socket hook
// translated (another runtime's container, a raw socket).
// ---------------------------------------------------------------------------

/// The service's virtual IP on the lab's network, and its port.
const VIP: [u8; 4] = [10, 7, 0, 100];
const VIP_PORT: u16 = 8000;

/// The VIP frontend (`proto`, VIP, `port`) of the service at SLOT, to
/// `target`, with `count` live replicas.
fn set_vip(dp: &mut Datapath, proto: u8, vip: [u8; 4], port: u16, target: u16, count: u32) {
    let mut m: HashMap<&mut MapData, PortKey, Service> =
        HashMap::try_from(dp.ebpf_mut().map_mut("SERVICES").expect("SERVICES")).expect("SERVICES");
    let svc = Service {
        slot: SLOT,
        count,
        target: port_wire(target),
        flags: SVC_VIP,
    };
    m.insert(PortKey::new(proto, ipv4_wire(vip), port_wire(port)), svc, 0)
        .expect("SERVICES insert");
}

/// The lab with a client container `c` (10.7.0.5, host veth `dps-c`, no
/// EP_BACKEND) and the replicas l, m and r marked EP_BACKEND, as the
/// reconciler marks every task's endpoint; the VIP frontend tcp
/// VIP:VIP_PORT -> TARGET with three replicas.
fn vip_lab(tag: &str) -> (Lab, Endpoint) {
    let mut lab = Lab::new(tag);
    let c = local(IFINDEX_BASE + 3, 5);
    dataplane_user::netns::add_veth("dps-c", "dps-c-c", c.ifindex).expect("veth dps-c");
    ip_cmd(&["link", "set", "dps-c", "up"]);
    ip_cmd(&["link", "set", "dps-c-c", "up"]);
    lab.dp.set_endpoint(c).expect("endpoint c");
    lab.l.flags |= EP_BACKEND;
    lab.m.flags |= EP_BACKEND;
    lab.r.flags |= EP_BACKEND;
    let (l, m, r) = (lab.l, lab.m, lab.r);
    lab.dp.set_endpoint(l).expect("endpoint l");
    lab.dp.set_endpoint(m).expect("endpoint m");
    lab.dp.set_remote_endpoint(r).expect("endpoint r");
    set_vip(&mut lab.dp, IPPROTO_TCP, VIP, VIP_PORT, TARGET, 3);
    (lab, c)
}

/// Client `c`'s frame to VIP:VIP_PORT from `sport` (to its gateway's MAC,
/// the one a VIP resolves to).
fn to_vip(c: &Endpoint, sport: u16, flags: u8) -> Vec<u8> {
    tcp_frame(
        (c.host_mac, c.mac),
        (ip(c), sport),
        (VIP, VIP_PORT),
        flags,
        64,
    )
}

#[test]
fn a_new_vip_flow_to_a_local_replica_is_dnated_into_it_and_its_reply_shows_the_vip() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-local");
        lab.set_table(|_| ID_L);
        let l = lab.l;
        let sport = 47_000;
        let syn = to_vip(&c, sport, SYN);
        let out = lab.container("SYN to the VIP", c, &syn, Outcome::New);
        // To the replica's address, MAC and target port; the client's
        // address, port and MAC kept; switched, not routed (TTL kept).
        let want = tcp_frame((l.mac, c.mac), (ip(&c), sport), (ip(&l), TARGET), SYN, 64);
        assert_eq!(hex(&out), hex(&want), "the DNATed SYN");
        assert_eq!(csum(&out[14..34]), 0, "its IPv4 checksum");

        let cs = (ip(&c), sport);
        let fwd = lab.ct(&tcp_key(cs, (VIP, VIP_PORT))).expect("CT forward");
        assert_eq!(tuple(&fwd), (ip(&c), sport, ip(&l), TARGET));
        assert_eq!(fwd.flags, CT_DNAT | CT_SERVICE);
        assert_eq!((fwd.backend, fwd.vtep), (ID_L, 0));
        let rev = lab.ct(&tcp_key((ip(&l), TARGET), cs)).expect("CT reply");
        assert_eq!(tuple(&rev), (VIP, VIP_PORT, ip(&c), sport));
        assert_eq!(rev.flags, CT_SNAT | CT_SERVICE | CT_REPLY);
        assert_eq!(rev.backend, ID_L);
        assert_eq!(lab.ct_len(), 2);

        // The replica answers the client's own address; the client gets
        // it from VIP:VIP_PORT.
        let sa = tcp_frame((c.mac, l.mac), (ip(&l), TARGET), cs, SYN_ACK, 64);
        let out = lab.container("SYN-ACK from the replica", l, &sa, Outcome::Translated);
        let want = tcp_frame((c.mac, l.mac), (VIP, VIP_PORT), cs, SYN_ACK, 64);
        assert_eq!(hex(&out), hex(&want), "the reverse-translated SYN-ACK");
        assert_eq!(csum(&out[14..34]), 0, "its IPv4 checksum");
        // A later packet of the client hits conntrack.
        let ack = to_vip(&c, sport, ACK);
        let out = lab.container("ACK (conntrack hit)", c, &ack, Outcome::Translated);
        let want = tcp_frame((l.mac, c.mac), cs, (ip(&l), TARGET), ACK, 64);
        assert_eq!(hex(&out), hex(&want), "the DNATed ACK");
        assert_eq!(lab.ct_len(), 2, "no second pair");

        let len = (syn.len() + sa.len() + ack.len()) as u64;
        let svc = lab.svc_counters("SVC_STATS", SLOT);
        assert_eq!((svc.conns, svc.packets, svc.bytes), (1, 3, len), "service");
        let be = lab.svc_counters("BACKEND_STATS", ID_L);
        assert_eq!((be.conns, be.packets, be.bytes), (1, 3, len), "replica l");
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_M).conns, 0);
        lab.assert_stats();
    });
}

#[test]
fn a_udp_vip_flow_is_dnated_both_ways_with_its_checksum() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-udp");
        lab.set_table(|_| ID_M);
        set_vip(&mut lab.dp, IPPROTO_UDP, VIP, 53, 5353, 3);
        let m = lab.m;
        let cs = (ip(&c), 47_100);
        let q = udp_frame((c.host_mac, c.mac), cs, (VIP, 53), 64);
        let out = lab.container("UDP to the VIP", c, &q, Outcome::New);
        let want = udp_frame((m.mac, c.mac), cs, (ip(&m), 5353), 64);
        assert_eq!(hex(&out), hex(&want), "the DNATed datagram");
        let again = lab.container("the next datagram", c, &q, Outcome::Translated);
        assert_eq!(hex(&again), hex(&want), "same flow, same replica");
        let a = udp_frame((c.mac, m.mac), (ip(&m), 5353), cs, 64);
        let out = lab.container("the answer", m, &a, Outcome::Translated);
        let want = udp_frame((c.mac, m.mac), (VIP, 53), cs, 64);
        assert_eq!(hex(&out), hex(&want), "the answer from VIP:53");
        let be = lab.svc_counters("BACKEND_STATS", ID_M);
        assert_eq!((be.conns, be.packets), (1, 3));
        lab.assert_stats();
    });
}

#[test]
fn a_new_vip_flow_to_a_remote_replica_is_tunnelled_and_its_reply_reverse_translated_at_decap() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-remote");
        lab.set_table(|_| ID_R);
        let r = lab.r;
        let cs = (ip(&c), 47_200);
        let syn = to_vip(&c, cs.1, SYN);
        let out = lab.container("SYN for a remote replica", c, &syn, Outcome::New);
        // Inside: DNATed to the replica, as direct traffic to it is sent
        // (the client's MAC, the replica's); outside: to the node's VTEP.
        let inner = tcp_frame((r.mac, c.mac), cs, (ip(&r), TARGET), SYN, 64);
        check_encap("SYN to r", &out, &inner, NODE, (NODE_MAC, UL_MAC));
        let fwd = lab.ct(&tcp_key(cs, (VIP, VIP_PORT))).expect("CT forward");
        assert_eq!(tuple(&fwd), (ip(&c), cs.1, ip(&r), TARGET));
        assert_eq!((fwd.flags, fwd.backend), (CT_DNAT | CT_SERVICE, ID_R));
        let ack = to_vip(&c, cs.1, ACK);
        let out = lab.container("ACK for r (conntrack hit)", c, &ack, Outcome::Translated);
        let inner_ack = tcp_frame((r.mac, c.mac), cs, (ip(&r), TARGET), ACK, 64);
        check_encap("ACK to r", &out, &inner_ack, NODE, (NODE_MAC, UL_MAC));

        // r's host sends the reply as direct traffic to the client (r's
        // host has no entry of the flow); here it is decapsulated and its
        // source goes back to the VIP before it reaches the client.
        let sa = tcp_frame((c.mac, r.mac), (ip(&r), TARGET), cs, SYN_ACK, 64);
        let f = vxlan((UL_MAC, NODE_MAC), NODE, HOST, 50_000, &sa);
        let out = lab.uplink("the reply in VXLAN", &f, Outcome::Translated);
        let want = tcp_frame((c.mac, r.mac), (VIP, VIP_PORT), cs, SYN_ACK, 64);
        assert_eq!(hex(&out), hex(&want), "decapsulated, from VIP:VIP_PORT");
        assert_eq!(csum(&out[14..34]), 0, "its IPv4 checksum");
        // Another packet of r's to the client, of no VIP flow: delivered
        // untouched (direct traffic).
        let other = tcp_frame((c.mac, r.mac), (ip(&r), 22), cs, ACK, 64);
        let f = vxlan((UL_MAC, NODE_MAC), NODE, HOST, 50_000, &other);
        let out = lab.uplink("r's own traffic", &f, Outcome::Redirected);
        assert_eq!(hex(&out), hex(&other), "decapsulated, unchanged");

        let be = lab.svc_counters("BACKEND_STATS", ID_R);
        let len = (syn.len() + ack.len() + sa.len()) as u64;
        assert_eq!((be.conns, be.packets, be.bytes), (1, 3, len), "replica r");
        lab.assert_stats();
    });
}

#[test]
fn a_vip_flow_keeps_its_replica_when_the_table_changes() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-keep");
        lab.set_table(|_| ID_L);
        let (l, m) = (lab.l, lab.m);
        let cs = (ip(&c), 47_300);
        lab.container("SYN (miss)", c, &to_vip(&c, cs.1, SYN), Outcome::New);
        lab.set_table(|_| ID_M);
        let out = lab.container("ACK (hit)", c, &to_vip(&c, cs.1, ACK), Outcome::Translated);
        let want = tcp_frame((l.mac, c.mac), cs, (ip(&l), TARGET), ACK, 64);
        assert_eq!(hex(&out), hex(&want), "still to l");
        // A retransmitted SYN renews the flow on the same replica.
        let out = lab.container("SYN again", c, &to_vip(&c, cs.1, SYN), Outcome::Translated);
        let want = tcp_frame((l.mac, c.mac), cs, (ip(&l), TARGET), SYN, 64);
        assert_eq!(hex(&out), hex(&want), "renewed, still to l");
        // A new flow follows the new table.
        let cs2 = (ip(&c), 47_301);
        let out = lab.container("new SYN", c, &to_vip(&c, cs2.1, SYN), Outcome::New);
        let want = tcp_frame((m.mac, c.mac), cs2, (ip(&m), TARGET), SYN, 64);
        assert_eq!(hex(&out), hex(&want), "a new flow goes to m");
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_L).conns, 1);
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_M).conns, 1);
        lab.assert_stats();
    });
}

#[test]
fn a_vip_with_no_replica_or_of_another_network_is_a_counted_drop() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-none");
        let no = DropReason::ServiceNoBackend;
        lab.set_table(|_| ID_L);
        let syn = to_vip(&c, 47_400, SYN);
        set_vip(&mut lab.dp, IPPROTO_TCP, VIP, VIP_PORT, TARGET, 0);
        lab.container("no replica", c, &syn, Outcome::Drop(no));
        set_vip(&mut lab.dp, IPPROTO_TCP, VIP, VIP_PORT, TARGET, 1);
        lab.set_table(|_| NO_REPLICA);
        lab.container("empty table entry", c, &syn, Outcome::Drop(no));
        lab.set_table(|_| ID_L);
        lab.set_backend(ID_L, ipv4_wire([10, 7, 0, 99]), BE_ACTIVE);
        lab.container("replica without endpoint", c, &syn, Outcome::Drop(no));
        // The VIP of a service of another network (outside the client's
        // subnet): as direct traffic to another network is.
        set_vip(
            &mut lab.dp,
            IPPROTO_TCP,
            [10, 8, 0, 100],
            VIP_PORT,
            TARGET,
            1,
        );
        lab.set_backend(ID_L, lab.l.ip, BE_ACTIVE);
        let far = tcp_frame(
            (c.host_mac, c.mac),
            (ip(&c), 47_400),
            ([10, 8, 0, 100], VIP_PORT),
            SYN,
            64,
        );
        let cross = DropReason::CrossNetwork;
        lab.container("another network's VIP", c, &far, Outcome::Drop(cross));
        assert_eq!(lab.ct_len(), 0, "no conntrack entry for a dropped flow");
        let svc = lab.svc_counters("SVC_STATS", SLOT);
        assert_eq!((svc.drops[no as usize], svc.drops[cross as usize]), (3, 1));
        assert_eq!((svc.conns, svc.packets), (0, 0));
        // Back in service: the same SYN opens its flow.
        lab.container("replica back", c, &syn, Outcome::New);
        lab.assert_stats();
    });
}

#[test]
fn a_replica_without_ep_backend_pays_no_conntrack_lookup_and_its_reply_is_untouched() {
    in_private_netns(|| {
        let (mut lab, c) = vip_lab("vip-plain");
        lab.set_table(|_| ID_L);
        // l as an endpoint that is no replica (the flag is off).
        lab.l.flags &= !EP_BACKEND;
        let l = lab.l;
        lab.dp.set_endpoint(l).expect("endpoint l");
        let cs = (ip(&c), 47_500);
        lab.container("SYN to the VIP", c, &to_vip(&c, cs.1, SYN), Outcome::New);
        let sa = tcp_frame((c.mac, l.mac), (ip(&l), TARGET), cs, SYN_ACK, 64);
        let out = lab.container("l's SYN-ACK", l, &sa, Outcome::Redirected);
        assert_eq!(hex(&out), hex(&sa), "switched as it was sent");
        // Its CT reply entry was not even looked at: no packet counted
        // for the replica beyond the SYN.
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_L).packets, 1);
        // A replica's packet that is no VIP flow's goes on as it was sent.
        lab.l.flags |= EP_BACKEND;
        let l = lab.l;
        lab.dp.set_endpoint(l).expect("endpoint l");
        let other = tcp_frame((c.mac, l.mac), (ip(&l), 22), cs, ACK, 64);
        let out = lab.container("l's own traffic", l, &other, Outcome::Redirected);
        assert_eq!(hex(&out), hex(&other), "switched as it was sent");
        assert_eq!(lab.svc_counters("BACKEND_STATS", ID_L).packets, 1);
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// Live: a client, the host it connects to, and the replica's host.
// ---------------------------------------------------------------------------

/// The statistics of the datapath that the namespace thread `ns` keeps last.
fn kept_stats(ns: &NsThread, host: &'static str) -> Vec<dataplane_user::bpf::ProgramStats> {
    ns.run(move |keep| {
        keep.last()
            .and_then(|d| d.downcast_ref::<Datapath>())
            .unwrap_or_else(|| panic!("{host}'s datapath"))
            .stats()
            .unwrap_or_else(|e| panic!("stats of {host}: {e:#}"))
    })
}

/// Asserts that neither tc program of a host counted a drop of any reason.
fn assert_no_drops(stats: &[dataplane_user::bpf::ProgramStats], host: &str) {
    for s in &stats[..2] {
        for r in DropReason::ALL {
            assert_eq!(s.drops[r.name()], 0, "{host}: {} {}", s.name, r.name());
        }
    }
}

/// The connections `BACKEND_STATS` counted for replica `id`, over CPUs.
fn backend_conns(dp: &mut Datapath, id: u32) -> u64 {
    let m: PerCpuArray<&mut MapData, ServiceCounters> =
        PerCpuArray::try_from(dp.ebpf_mut().map_mut("BACKEND_STATS").expect("map"))
            .expect("BACKEND_STATS");
    m.get(&id, 0)
        .expect("counters")
        .iter()
        .map(|c| c.conns)
        .sum()
}

#[test]
fn a_client_reaches_a_replica_on_another_host_through_the_ingress_port() {
    in_private_netns(|| {
        // This thread is host A, the one the client connects to; host B,
        // the client and the replica are threads in namespaces of their own.
        let (host_b, client, replica) = (NsThread::spawn(), NsThread::spawn(), NsThread::spawn());
        let b = local(IFINDEX_BASE + 2, 3);
        // The client's link to A (A: 198.51.100.1), the underlay A-B.
        const A_FRONT: [u8; 4] = [198, 51, 100, 1];
        ip_cmd(&[
            "link", "add", "cliA", "type", "veth", "peer", "name", "cliC",
        ]);
        ip_cmd(&["link", "set", "cliC", "netns", &client.id()]);
        ip_cmd(&[
            "addr",
            "add",
            &format!("{}/24", dotted(A_FRONT)),
            "dev",
            "cliA",
        ]);
        ip_cmd(&["link", "set", "cliA", "up"]);
        ip_cmd(&["link", "add", "ulA", "type", "veth", "peer", "name", "ulB"]);
        ip_cmd(&["link", "set", "ulB", "netns", &host_b.id()]);
        ip_cmd(&["addr", "add", &format!("{}/24", dotted(HOST)), "dev", "ulA"]);
        ip_cmd(&["link", "set", "ulA", "up"]);
        dataplane_user::netns::add_veth("vB", "ethB", b.ifindex).expect("veth b");
        ip_cmd(&["link", "set", "ethB", "netns", &replica.id()]);
        ip_cmd(&["link", "set", "vB", "netns", &host_b.id()]);
        host_b.ip(&["addr", "add", &format!("{}/24", dotted(NODE)), "dev", "ulB"]);
        host_b.ip(&["link", "set", "ulB", "up"]);
        host_b.ip(&["link", "set", "vB", "up"]);
        client.ip(&[
            "addr",
            "add",
            &format!("{}/24", dotted(CLIENT)),
            "dev",
            "cliC",
        ]);
        client.ip(&["link", "set", "cliC", "up"]);
        client.ip(&["link", "set", "lo", "up"]);
        for c in [&client, &replica] {
            // IPv6 (not carried) would send router solicitations.
            let ok = c
                .cmd("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "disabling IPv6");
        }
        replica.ip(&["link", "set", "ethB", "address", &mac_str(b.mac)]);
        replica.ip(&["link", "set", "ethB", "mtu", &MTU.to_string()]);
        replica.ip(&[
            "addr",
            "add",
            &format!("{}/24", dotted(ip(&b))),
            "dev",
            "ethB",
        ]);
        replica.ip(&["link", "set", "ethB", "up"]);
        replica.ip(&["link", "set", "lo", "up"]);
        replica.ip(&[
            "route",
            "add",
            "default",
            "via",
            &dotted(ipv4_octets(NET.gateway)),
        ]);
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");

        // Host A: the ingress port, its one replica b behind B.
        let pins_a = Scratch::new("svc-live-a");
        let mut dp_a = Datapath::load(pins_a.path()).expect("datapath A");
        let ul_a = nix::net::if_::if_nametoindex("ulA").expect("ulA");
        let cli_a = nix::net::if_::if_nametoindex("cliA").expect("cliA");
        dp_a.set_remote_endpoint(remote(3, NODE)).expect("remote b");
        dp_a.set_tunnel(Tunnel {
            addr: ipv4_wire(HOST),
            ifindex: ul_a,
            mtu: MTU,
            flags: TUNNEL_ENABLED,
        })
        .expect("TUNNEL A");
        dp_a.sync_vteps(&[(ipv4_wire(NODE), VTEP_NODE)])
            .expect("VTEPS A");
        dp_a.sync_local_addrs(&[ipv4_wire(A_FRONT), ipv4_wire(HOST)])
            .expect("LOCAL_ADDRS A");
        set_service(&mut dp_a, PUBLISHED, 1);
        set_backend(&mut dp_a, ID_R, b.ip, BE_ACTIVE);
        set_table(&mut dp_a, |_| ID_R);
        dp_a.attach_uplink("cliA", cli_a).expect("attach cliA");
        dp_a.attach_uplink("ulA", ul_a).expect("attach ulA");

        // Host B: the replica b, its port known as replica ID_R's.
        host_b.run(move |keep| {
            let pins = Scratch::new("svc-live-b");
            let mut dp = Datapath::load(pins.path()).expect("datapath B");
            let ul = nix::net::if_::if_nametoindex("ulB").expect("ulB");
            dp.set_endpoint(b).expect("endpoint b");
            dp.set_tunnel(Tunnel {
                addr: ipv4_wire(NODE),
                ifindex: ul,
                mtu: MTU,
                flags: TUNNEL_ENABLED,
            })
            .expect("TUNNEL B");
            dp.sync_vteps(&[(ipv4_wire(HOST), VTEP_NODE)])
                .expect("VTEPS B");
            set_backend(&mut dp, ID_R, b.ip, BE_ACTIVE);
            set_backend_port(&mut dp, &b, TARGET, ID_R);
            dp.attach("vB").expect("attach vB");
            dp.attach_uplink("ulB", ul).expect("attach ulB");
            std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");
            keep.push(Box::new(pins));
            keep.push(Box::new(dp));
        });

        // The replica answers each connection with the address it sees the
        // client at, then echoes what it gets.
        let server = format!(
            r#"import socket
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(('{}',{TARGET}));s.listen(8);s.settimeout(20)
print('ready',flush=True)
for _ in range(3):
    c,a=s.accept();c.settimeout(20)
    c.sendall(('%s:%d\n'%a).encode())
    while True:
        d=c.recv(1<<16)
        if not d: break
        c.sendall(d)
    c.close()
"#,
            dotted(ip(&b))
        );
        let mut srv = replica
            .cmd("python3", &["-c", &server])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("server");
        let mut srv_out = std::io::BufReader::new(srv.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut srv_out, &mut line).expect("server ready");
        assert_eq!(line.trim(), "ready");

        // Three connections from the client to A's ingress port, 256 KiB
        // echoed on each: what the replica saw, and every byte back.
        const BYTES: usize = 256 << 10;
        let probe = format!(
            r#"import socket,threading
data=bytes(range(256))*({BYTES}//256)
for _ in range(3):
    s=socket.create_connection(('{}',{PUBLISHED}),timeout=20)
    f=s.makefile('rb');seen=f.readline().decode().strip()
    me='%s:%d'%s.getsockname()
    def send():
        s.sendall(data);s.shutdown(socket.SHUT_WR)
    t=threading.Thread(target=send);t.start()
    got=f.read();t.join();s.close()
    print(seen==me,got==data,seen,me,len(got),flush=True)
"#,
            dotted(A_FRONT)
        );
        let out = client
            .cmd("python3", &["-c", &probe])
            .output()
            .expect("client");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let _ = srv.kill();
        let _ = srv.wait();
        assert!(
            out.status.success(),
            "client: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for l in &lines {
            assert!(
                l.starts_with(&format!("True True {}:", dotted(CLIENT))),
                "the replica sees the client's own address and port, and every byte comes back: {l}"
            );
        }

        // Both hosts: no drop anywhere; A counted the connections for the
        // service and the replica; B's replies went through its tunnel path.
        let check = |stats: Vec<dataplane_user::bpf::ProgramStats>, host: &str| {
            assert_no_drops(&stats, host);
            (
                stats[PROG_FROM_CONTAINER as usize].redirected,
                stats[PROG_FROM_UPLINK as usize].redirected,
            )
        };
        let (_, up_a) = check(dp_a.stats().expect("stats A"), "host A");
        assert!(up_a > 0, "host A redirected nothing");
        let conns = backend_conns(&mut dp_a, ID_R);
        assert_eq!(conns, 3, "host A: connections given to the replica");
        let stats_b = kept_stats(&host_b, "host B");
        let (fc_b, up_b) = check(stats_b, "host B");
        assert!(fc_b > 0 && up_b > 0, "host B: {fc_b} {up_b}");
        drop(dp_a);
        drop(pins_a);
    });
}

/// Puts the container end `dev` of endpoint `ep` in shape inside `ns`: its
/// MAC, the tunnel's MTU, its address, the default route via the gateway,
/// no IPv6.
fn container_up(ns: &NsThread, dev: &str, ep: &Endpoint) {
    let ok = ns
        .cmd("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "disabling IPv6");
    ns.ip(&["link", "set", dev, "address", &mac_str(ep.mac)]);
    ns.ip(&["link", "set", dev, "mtu", &MTU.to_string()]);
    let addr = format!("{}/24", dotted(ip(ep)));
    ns.ip(&["addr", "add", &addr, "dev", dev]);
    ns.ip(&["link", "set", dev, "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    let gw = dotted(ipv4_octets(NET.gateway));
    ns.ip(&["route", "add", "default", "via", &gw]);
}

#[test]
fn a_container_whose_sockets_no_hook_translates_reaches_the_vip_on_both_hosts() {
    in_private_netns(|| {
        // This thread is host A, with the client container and replica l;
        // host B runs replica r. No socket hook is attached anywhere: the
        // client's sockets go to the VIP as they were made (a container of
        // another runtime, whose netns is in no DNS_PORTS).
        let (host_b, client, rep_l, rep_r) = (
            NsThread::spawn(),
            NsThread::spawn(),
            NsThread::spawn(),
            NsThread::spawn(),
        );
        let c = local(IFINDEX_BASE + 1, 5);
        let l = Endpoint {
            flags: EP_BACKEND,
            ..local(IFINDEX_BASE + 2, 2)
        };
        let r = Endpoint {
            flags: EP_BACKEND,
            ..local(IFINDEX_BASE + 3, 9)
        };
        ip_cmd(&["link", "add", "ulA", "type", "veth", "peer", "name", "ulB"]);
        ip_cmd(&["link", "set", "ulB", "netns", &host_b.id()]);
        ip_cmd(&["addr", "add", &format!("{}/24", dotted(HOST)), "dev", "ulA"]);
        ip_cmd(&["link", "set", "ulA", "up"]);
        for (host, dev, ep, ns) in [("vC", "ethC", &c, &client), ("vL", "ethL", &l, &rep_l)] {
            dataplane_user::netns::add_veth(host, dev, ep.ifindex).expect("veth");
            ip_cmd(&["link", "set", dev, "netns", &ns.id()]);
            ip_cmd(&["link", "set", host, "up"]);
            container_up(ns, dev, ep);
        }
        dataplane_user::netns::add_veth("vR", "ethR", r.ifindex).expect("veth r");
        ip_cmd(&["link", "set", "ethR", "netns", &rep_r.id()]);
        ip_cmd(&["link", "set", "vR", "netns", &host_b.id()]);
        container_up(&rep_r, "ethR", &r);
        host_b.ip(&["addr", "add", &format!("{}/24", dotted(NODE)), "dev", "ulB"]);
        host_b.ip(&["link", "set", "ulB", "up"]);
        host_b.ip(&["link", "set", "vR", "up"]);
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");

        // The client's source ports: one whose flows the table gives to l,
        // one to r, for each protocol (the programs' hash, computed here).
        let table = |i: u32| if i.is_multiple_of(2) { ID_L } else { ID_R };
        let sport_to = |proto: u8, id: u32| -> u16 {
            (41_000u16..)
                .find(|&p| {
                    let k = CtKey::new(
                        proto,
                        c.ip,
                        port_wire(p),
                        ipv4_wire(VIP),
                        port_wire(VIP_PORT),
                    );
                    Lab::expected_id(table, &k) == id
                })
                .expect("a source port")
        };
        let flows = [
            ("tcp", sport_to(IPPROTO_TCP, ID_L), "l"),
            ("tcp", sport_to(IPPROTO_TCP, ID_R), "r"),
            ("udp", sport_to(IPPROTO_UDP, ID_L), "l"),
            ("udp", sport_to(IPPROTO_UDP, ID_R), "r"),
        ];

        // Host A: the VIP (tcp and udp) over l (here) and r (behind B).
        let pins_a = Scratch::new("svc-vip-a");
        let mut dp_a = Datapath::load(pins_a.path()).expect("datapath A");
        let ul_a = nix::net::if_::if_nametoindex("ulA").expect("ulA");
        dp_a.set_endpoint(c).expect("endpoint c");
        dp_a.set_endpoint(l).expect("endpoint l");
        dp_a.set_remote_endpoint(Endpoint {
            flags: EP_REMOTE | EP_BACKEND,
            ..remote(9, NODE)
        })
        .expect("remote r");
        dp_a.set_tunnel(Tunnel {
            addr: ipv4_wire(HOST),
            ifindex: ul_a,
            mtu: MTU,
            flags: TUNNEL_ENABLED,
        })
        .expect("TUNNEL A");
        dp_a.sync_vteps(&[(ipv4_wire(NODE), VTEP_NODE)])
            .expect("VTEPS A");
        dp_a.sync_local_addrs(&[ipv4_wire(HOST), NET.gateway])
            .expect("LOCAL_ADDRS A");
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            set_vip(&mut dp_a, proto, VIP, VIP_PORT, TARGET, 2);
        }
        // The VIP's address entry: the client's ARP request for it is
        // answered (with its gateway's MAC).
        set_vip(&mut dp_a, 0, VIP, 0, 0, 2);
        set_backend(&mut dp_a, ID_L, l.ip, BE_ACTIVE);
        set_backend(&mut dp_a, ID_R, r.ip, BE_ACTIVE);
        set_table(&mut dp_a, table);
        dp_a.attach("vC").expect("attach vC");
        dp_a.attach("vL").expect("attach vL");
        dp_a.attach_uplink("ulA", ul_a).expect("attach ulA");

        // Host B: replica r, the client as a remote endpoint behind A. No
        // service map: the flow reaches r as direct traffic from the client.
        host_b.run(move |keep| {
            let pins = Scratch::new("svc-vip-b");
            let mut dp = Datapath::load(pins.path()).expect("datapath B");
            let ul = nix::net::if_::if_nametoindex("ulB").expect("ulB");
            dp.set_endpoint(r).expect("endpoint r");
            dp.set_remote_endpoint(remote(5, HOST)).expect("remote c");
            dp.set_tunnel(Tunnel {
                addr: ipv4_wire(NODE),
                ifindex: ul,
                mtu: MTU,
                flags: TUNNEL_ENABLED,
            })
            .expect("TUNNEL B");
            dp.sync_vteps(&[(ipv4_wire(HOST), VTEP_NODE)])
                .expect("VTEPS B");
            dp.attach("vR").expect("attach vR");
            dp.attach_uplink("ulB", ul).expect("attach ulB");
            std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");
            keep.push(Box::new(pins));
            keep.push(Box::new(dp));
        });

        // Each replica answers with its name and the address it sees the
        // client at, over TCP and UDP on the target port.
        let server = |name: &str| {
            format!(
                r#"import socket,threading
def udp():
    u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.bind(('',{TARGET}))
    while True:
        d,a=u.recvfrom(512);u.sendto(('{name} %s:%d'%a).encode(),a)
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(('',{TARGET}));s.listen(8);s.settimeout(30)
threading.Thread(target=udp,daemon=True).start()
print('ready',flush=True)
while True:
    c,a=s.accept();c.sendall(('{name} %s:%d\n'%a).encode());c.close()
"#
            )
        };
        let mut servers = Vec::new();
        for (ns, name) in [(&rep_l, "l"), (&rep_r, "r")] {
            let mut srv = ns
                .cmd("python3", &["-c", &server(name)])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("server");
            let mut out = std::io::BufReader::new(srv.stdout.take().unwrap());
            let mut line = String::new();
            std::io::BufRead::read_line(&mut out, &mut line).expect("server ready");
            assert_eq!(line.trim(), "ready", "replica {name}");
            servers.push(srv);
        }

        // The client: what its socket says the peer is, and what the
        // replica saw. UDP retries a lost first datagram (ARP on the way),
        // at most five times.
        let flows_py: Vec<String> = flows
            .iter()
            .map(|(p, s, _)| format!("('{p}',{s})"))
            .collect();
        let probe = format!(
            r#"import socket
for proto,sport in [{}]:
    if proto=='tcp':
        s=socket.socket();s.bind(('',sport));s.settimeout(10)
        s.connect(('{vip}',{VIP_PORT}));peer='%s:%d'%s.getpeername()
        said=s.makefile().readline().strip();s.close()
    else:
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('',sport));s.settimeout(2)
        said=None
        for _ in range(5):
            s.sendto(b'q',('{vip}',{VIP_PORT}))
            try:
                d,a=s.recvfrom(512);said=d.decode();peer='%s:%d'%a;break
            except socket.timeout:
                pass
        s.close()
    print(proto,sport,peer,said,flush=True)
"#,
            flows_py.join(","),
            vip = dotted(VIP)
        );
        let out = client
            .cmd("python3", &["-c", &probe])
            .output()
            .expect("client");
        for mut s in servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "client: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), flows.len(), "{text}");
        for (line, (proto, sport, name)) in lines.iter().zip(flows) {
            let want = format!(
                "{proto} {sport} {}:{VIP_PORT} {name} {}:{sport}",
                dotted(VIP),
                dotted(ip(&c))
            );
            assert_eq!(
                *line, want,
                "the client sees the VIP, replica {name} the client's own address"
            );
        }

        // The client resolved the VIP through the ARP responder.
        let neigh = client
            .cmd("ip", &["neigh", "show", &dotted(VIP)])
            .output()
            .expect("ip neigh");
        let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
        assert!(
            neigh.contains(&mac_str(c.host_mac)),
            "the VIP's neighbour entry: {neigh}"
        );
        // No drop on either host; A counted two flows for each replica.
        assert_no_drops(&dp_a.stats().expect("stats A"), "host A");
        for id in [ID_L, ID_R] {
            let conns = backend_conns(&mut dp_a, id);
            assert_eq!(conns, 2, "host A: flows given to replica {id}");
        }
        assert_no_drops(&kept_stats(&host_b, "host B"), "host B");
        drop(dp_a);
        drop(pins_a);
    });
}

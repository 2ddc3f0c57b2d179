//! `from_container` as the kernel runs it: crafted frames go through
//! BPF_PROG_TEST_RUN on the loaded object, and each case checks the verdict,
//! the output bytes (when the frame is rewritten or must stay untouched) and,
//! at the end, the per-reason counters in `STATS`.
//!
//! Root only. Each test runs in a thread of its own with a private network
//! namespace (veth pairs created there give every endpoint a real ifindex and
//! vanish with the thread) and its own pin directory on bpffs (removed by a
//! Drop guard, even when the test panics).
//!
//! How the sender's ifindex reaches the program (found by experiment on
//! kernel 6.18, matching net/bpf/test_run.c): the program reads
//! `skb->ifindex`, i.e. `skb->dev->ifindex`. `bpf_prog_test_run_skb` sets
//! `skb->dev` to the loopback device unless the `__sk_buff` passed as
//! `ctx_in` has `ifindex > 1`, in which case it looks that index up in the
//! caller's network namespace and fails with ENODEV if there is no such
//! device. So `ctx_in.ifindex` is honoured, but only for real devices: hence
//! the veth pairs. With `ifindex` 0 the program sees 1 (`lo`).

mod common;

use std::{io, process::Command};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{ProgramError, SchedClassifier},
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use common::{in_private_netns, tc_test_run, Scratch};
use dataplane_common::{
    iface_slot, ipv4_octets, ipv4_wire,
    packet::{arp, eth},
    Counters, DropReason, Endpoint, LinkKey, Network, PeerCache, IFINDEX_BASE, NET_ICC_DISABLED,
    NET_INTERNAL, PROG_FROM_CONTAINER,
};

// TC verdicts (include/uapi/linux/pkt_cls.h).
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// What both `bpf_redirect` and `bpf_redirect_peer` return on success. Under
/// BPF_PROG_TEST_RUN the redirect itself never happens (the kernel frees the
/// skb after the run), so the target ifindex is not observable here; the
/// `redirected` / `arp_replies` counters tell the two helpers apart.
const TC_ACT_REDIRECT: u32 = 7;

const BROADCAST: [u8; 6] = [0xff; 6];

// ---------------------------------------------------------------------------
// Frame builders. They build the wire format from the RFCs independently of
// the code under test, so expected outputs are not derived from the program's
// own rewriting helpers.
// ---------------------------------------------------------------------------

/// An Ethernet II frame.
fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(eth::HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The 28-byte Ethernet/IPv4 ARP packet (RFC 826).
fn arp_packet(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = Vec::with_capacity(28);
    p.extend_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    p.extend_from_slice(&eth::P_IPV4.to_be_bytes()); // ptype
    p.extend_from_slice(&[6, 4]); // hlen, plen
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa);
    p
}

/// "Who has `tpa`? Tell `spa`", broadcast by `sha`.
fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    ethernet(
        BROADCAST,
        sha,
        eth::P_ARP,
        &arp_packet(arp::OP_REQUEST, sha, spa, [0; 6], tpa),
    )
}

/// "`ip` is at `mac`", sent to `to_mac` / `to_ip`.
fn arp_reply(mac: [u8; 6], ip: [u8; 4], to_mac: [u8; 6], to_ip: [u8; 4]) -> Vec<u8> {
    ethernet(
        to_mac,
        mac,
        eth::P_ARP,
        &arp_packet(arp::OP_REPLY, mac, ip, to_mac, to_ip),
    )
}

/// A minimal IPv4/UDP datagram (IHL 5, valid header checksum, 4-byte payload).
fn ipv4_udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    const UDP_LEN: u16 = 8 + 4;
    let mut p = Vec::with_capacity(20 + usize::from(UDP_LEN));
    p.extend_from_slice(&[0x45, 0]); // version 4, IHL 5; DSCP/ECN
    p.extend_from_slice(&(20 + UDP_LEN).to_be_bytes()); // total length
    p.extend_from_slice(&[0, 0, 0x40, 0]); // id; flags DF, fragment offset
    p.extend_from_slice(&[64, 17, 0, 0]); // TTL, protocol UDP, checksum (below)
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let sum = ipv4_checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&5201u16.to_be_bytes());
    p.extend_from_slice(&UDP_LEN.to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum
    p.extend_from_slice(b"ping");
    p
}

/// RFC 1071 checksum of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying [`ipv4_udp`].
fn ipv4_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    ethernet(dst_mac, src_mac, eth::P_IPV4, &ipv4_udp(src, dst))
}

/// An Ethernet frame carrying an IPv6/UDP datagram (fe80::1 -> ff02::1):
/// a protocol the datapath does not carry yet. A full 40-byte header matters:
/// test_run refuses IPv6-ethertype frames shorter than that.
fn ipv6_frame(dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + 8);
    p.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class, flow
    p.extend_from_slice(&8u16.to_be_bytes()); // payload length
    p.extend_from_slice(&[17, 64]); // next header UDP, hop limit
    p.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&[0x0f, 0xa0, 0x14, 0x51, 0, 8, 0, 0]); // UDP 4000 -> 5201
    ethernet(dst_mac, src_mac, eth::P_IPV6, &p)
}

/// `frame` with its destination MAC replaced.
fn with_dst_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[eth::DST..eth::DST + 6].copy_from_slice(&mac);
    f
}

// ---------------------------------------------------------------------------
// Endpoints and networks.
// ---------------------------------------------------------------------------

fn network(subnet: [u8; 4], prefix: u32, gateway: [u8; 4], flags: u32) -> Network {
    let mask = (u32::MAX << (32 - prefix)).to_be_bytes();
    Network {
        subnet: ipv4_wire(subnet),
        mask: ipv4_wire(mask),
        gateway: ipv4_wire(gateway),
        flags,
        vni: 0,
    }
}

/// An endpoint whose MACs are derived from its address, as Docker does
/// (02:42:<ip>); the host side gets a distinct, recognisable MAC.
fn endpoint(ifindex: u32, network_id: u32, net: Network, ip: [u8; 4]) -> Endpoint {
    Endpoint {
        ifindex,
        network_id,
        ip: ipv4_wire(ip),
        mac: [0x02, 0x42, ip[0], ip[1], ip[2], ip[3]],
        host_mac: [0xee, 0xee, ip[0], ip[1], ip[2], ip[3]],
        flags: 0,
        vtep: 0,
        net,
    }
}

fn ip(ep: &Endpoint) -> [u8; 4] {
    ipv4_octets(ep.ip)
}

fn gateway(ep: &Endpoint) -> [u8; 4] {
    ipv4_octets(ep.net.gateway)
}

/// The endpoints every test installs.
struct Topology {
    /// Network 1 (172.18.0.0/16): `a` is the usual sender, `b` its peer.
    a: Endpoint,
    b: Endpoint,
    /// Network 2 (172.19.0.0/16): a container `a` must not reach.
    other: Endpoint,
    /// Network 3, `--internal` (10.30.0.0/24).
    sealed: Endpoint,
    /// Network 4, `icc=false` (10.40.0.0/24): `x <-> y` are `--link`ed, `z` is not.
    x: Endpoint,
    y: Endpoint,
    z: Endpoint,
    /// A real device in the namespace that carries no endpoint (the container
    /// side of `a`'s veth).
    stray_ifindex: u32,
    /// A device inside the endpoint ifindex range whose `IFACES` slot is empty.
    empty_slot_ifindex: u32,
}

// ---------------------------------------------------------------------------
// Environment: private network namespace, bpffs pin directory.
// ---------------------------------------------------------------------------

/// Creates the veth pair `host`/`container` in the current thread's network
/// namespace (`ip` inherits it), the host side at ifindex `host_index` (the
/// daemon picks host-side indexes from `IFINDEX_BASE..`, which `IFACES` is
/// indexed by), and returns their ifindexes.
fn veth(host: &str, host_index: u32, container: &str) -> (u32, u32) {
    let host_index = host_index.to_string();
    let out = Command::new("ip")
        .args([
            "link",
            "add",
            host,
            "index",
            &host_index,
            "type",
            "veth",
            "peer",
            "name",
            container,
        ])
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip link add {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = |name: &str| nix::net::if_::if_nametoindex(name).expect(name);
    (index(host), index(container))
}

// ---------------------------------------------------------------------------
// The lab: loaded program, populated maps, expected counters.
// ---------------------------------------------------------------------------

/// What a case expects the program to do with a frame.
enum Expect {
    /// TC_ACT_SHOT, counted under this reason; the frame is left untouched.
    Drop(DropReason),
    /// TC_ACT_OK: to the host stack, byte for byte as sent.
    Pass,
    /// `bpf_redirect_peer` into a peer's namespace; the frame as it leaves.
    Redirect(Vec<u8>),
    /// `bpf_redirect` back to the sender, carrying this ARP reply.
    ArpReply(Vec<u8>),
    /// The syscall itself fails with this errno: the program never runs.
    Refused(i32),
    /// An IPv4-ethertype frame too short for an IPv4 header. Kernels with
    /// the test_run fix of April 2026 (net/bpf/test_run.c: "skb_headlen(skb)
    /// < sizeof(struct iphdr)" -> -EINVAL, in this machine's 6.18) refuse it
    /// before the program runs; older ones run it, and then it must be dropped
    /// for this reason. (On a real veth nothing stops such a frame.)
    DropUnlessRefused(DropReason),
}

struct Lab {
    // Field order is drop order: close the program and maps before unpinning.
    ebpf: Ebpf,
    _pins: Scratch,
    topo: Topology,
    /// What `STATS[PROG_FROM_CONTAINER]` must add up to.
    expected: Counters,
}

impl Lab {
    /// Loads the object with its maps pinned under a fresh directory, creates
    /// one veth pair per endpoint and installs the endpoints. Must run inside
    /// [`in_private_netns`].
    fn new(tag: &str) -> Self {
        let pins = Scratch::new(tag);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .load(dataplane_user::bpf::EBPF_OBJECT)
            .expect("loading the eBPF object");
        let prog: &mut SchedClassifier = ebpf
            .program_mut("from_container")
            .expect("from_container in the object")
            .try_into()
            .expect("from_container is a classifier");
        prog.load().expect("verifier accepts from_container");

        let net1 = network([172, 18, 0, 0], 16, [172, 18, 0, 1], 0);
        let net2 = network([172, 19, 0, 0], 16, [172, 19, 0, 1], 0);
        let net3 = network([10, 30, 0, 0], 24, [10, 30, 0, 1], NET_INTERNAL);
        let net4 = network([10, 40, 0, 0], 24, [10, 40, 0, 1], NET_ICC_DISABLED);
        let mut n = 0;
        let mut host_veth = || {
            n += 1;
            veth(&format!("h{n}"), IFINDEX_BASE + n, &format!("c{n}"))
        };
        let (a_if, stray_ifindex) = host_veth();
        let topo = Topology {
            a: endpoint(a_if, 1, net1, [172, 18, 0, 2]),
            b: endpoint(host_veth().0, 1, net1, [172, 18, 0, 3]),
            other: endpoint(host_veth().0, 2, net2, [172, 19, 0, 2]),
            sealed: endpoint(host_veth().0, 3, net3, [10, 30, 0, 2]),
            x: endpoint(host_veth().0, 4, net4, [10, 40, 0, 2]),
            y: endpoint(host_veth().0, 4, net4, [10, 40, 0, 3]),
            z: endpoint(host_veth().0, 4, net4, [10, 40, 0, 4]),
            stray_ifindex,
            empty_slot_ifindex: veth("h99", IFINDEX_BASE + 99, "c99").0,
        };

        let eps = [
            topo.a,
            topo.b,
            topo.other,
            topo.sealed,
            topo.x,
            topo.y,
            topo.z,
        ];
        let mut endpoints: HashMap<_, u32, Endpoint> =
            HashMap::try_from(ebpf.map_mut("ENDPOINTS").expect("ENDPOINTS")).expect("ENDPOINTS");
        for ep in &eps {
            endpoints.insert(ep.ip, ep, 0).expect("ENDPOINTS");
        }
        let mut ifaces: Array<_, Endpoint> =
            Array::try_from(ebpf.map_mut("IFACES").expect("IFACES")).expect("IFACES");
        for ep in &eps {
            let slot = iface_slot(ep.ifindex).expect("host veths are in the range");
            ifaces.set(slot, ep, 0).expect("IFACES");
        }
        let mut links: HashMap<_, LinkKey, u32> =
            HashMap::try_from(ebpf.map_mut("LINKS").expect("LINKS")).expect("LINKS");
        for (src, dst) in [(topo.x.ip, topo.y.ip), (topo.y.ip, topo.x.ip)] {
            links.insert(LinkKey { src, dst }, 1, 0).expect("LINKS");
        }

        Lab {
            ebpf,
            _pins: pins,
            topo,
            expected: Counters::ZERO,
        }
    }

    /// One BPF_PROG_TEST_RUN of `from_container` on `frame`, as if it arrived
    /// on the device `ifindex`: (return value, output frame).
    fn run(&self, ifindex: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program("from_container")
            .expect("from_container")
            .try_into()
            .expect("classifier");
        tc_test_run(prog, ifindex, frame)
    }

    /// Runs `frame` from the device `ifindex`, asserts `expect` and books the
    /// counters it must move.
    fn case(&mut self, what: &str, ifindex: u32, frame: &[u8], expect: Expect) {
        let result = self.run(ifindex, frame);
        let expect = match (expect, &result) {
            (Expect::DropUnlessRefused(_), Err(e)) if errno(e) == Some(nix::libc::EINVAL) => {
                Expect::Refused(nix::libc::EINVAL)
            }
            (Expect::DropUnlessRefused(reason), _) => Expect::Drop(reason),
            (expect, _) => expect,
        };
        if let Expect::Refused(want) = expect {
            let got = result.as_ref().err().and_then(errno);
            assert_eq!(
                got,
                Some(want),
                "{what}: expected the syscall to fail with {}, got {result:?}",
                io::Error::from_raw_os_error(want)
            );
            return;
        }
        let (ret, out) =
            result.unwrap_or_else(|e| panic!("{what}: BPF_PROG_TEST_RUN failed: {e:?}"));
        let e = &mut self.expected;
        e.packets += 1;
        e.bytes += frame.len() as u64;
        let (want_ret, want_out) = match expect {
            Expect::Drop(reason) => {
                e.drops[reason as usize] += 1;
                (TC_ACT_SHOT, frame.to_vec())
            }
            Expect::Pass => {
                e.passed += 1;
                (TC_ACT_OK, frame.to_vec())
            }
            Expect::Redirect(f) => {
                e.redirected += 1;
                (TC_ACT_REDIRECT, f)
            }
            Expect::ArpReply(f) => {
                e.arp_replies += 1;
                (TC_ACT_REDIRECT, f)
            }
            Expect::Refused(_) | Expect::DropUnlessRefused(_) => unreachable!("resolved above"),
        };
        assert_eq!(ret, want_ret, "{what}: verdict");
        assert_eq!(hex(&out), hex(&want_out), "{what}: output frame");
    }

    /// Sums `STATS[PROG_FROM_CONTAINER]` over CPUs and checks it against every
    /// case run so far, reason by reason.
    fn assert_stats(&self) {
        let got = self.counters();
        let want = &self.expected;
        for r in DropReason::ALL {
            assert_eq!(
                got.drops[r as usize],
                want.drops[r as usize],
                "drops[{}]",
                r.name()
            );
        }
        assert_eq!(
            (
                got.packets,
                got.bytes,
                got.redirected,
                got.passed,
                got.arp_replies
            ),
            (
                want.packets,
                want.bytes,
                want.redirected,
                want.passed,
                want.arp_replies
            ),
            "(packets, bytes, redirected, passed, arp_replies)"
        );
        // Also the unnamed drop slots (0 and the spare ones).
        assert_eq!(&got, want);
        // Every packet is accounted exactly once.
        let drops: u64 = got.drops.iter().sum();
        assert_eq!(
            got.packets,
            got.redirected + got.passed + got.arp_replies + drops
        );
    }
}

impl Lab {
    fn endpoints(&mut self) -> HashMap<&mut aya::maps::MapData, u32, Endpoint> {
        HashMap::try_from(self.ebpf.map_mut("ENDPOINTS").expect("ENDPOINTS")).expect("ENDPOINTS")
    }

    fn ifaces(&mut self) -> Array<&mut aya::maps::MapData, Endpoint> {
        Array::try_from(self.ebpf.map_mut("IFACES").expect("IFACES")).expect("IFACES")
    }

    /// `STATS[PROG_FROM_CONTAINER]` summed over CPUs (the counters the
    /// same-network path moves: packets, bytes, verdicts and drops).
    fn counters(&self) -> Counters {
        let stats: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.ebpf.map("STATS").expect("STATS")).expect("STATS");
        let mut got = Counters::ZERO;
        for c in stats
            .get(&PROG_FROM_CONTAINER, 0)
            .expect("STATS slot")
            .iter()
        {
            got.packets += c.packets;
            got.bytes += c.bytes;
            got.redirected += c.redirected;
            got.passed += c.passed;
            got.arp_replies += c.arp_replies;
            for (g, d) in got.drops.iter_mut().zip(c.drops) {
                *g += d;
            }
        }
        got
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.counters().drops[reason as usize]
    }

    fn redirected(&self) -> u64 {
        self.counters().redirected
    }
}

/// The errno of a failed BPF_PROG_TEST_RUN.
fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

/// Frames as space-separated hex, so a mismatch shows the differing bytes.
fn hex(f: &[u8]) -> String {
    f.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------

#[test]
fn arp_is_answered_for_the_gateway_and_same_network_peers() {
    in_private_netns(|| {
        let mut lab = Lab::new("arp");
        let Topology { a, b, other, .. } = lab.topo;
        let on = a.ifindex;

        lab.case(
            "ARP for the gateway",
            on,
            &arp_request(a.mac, ip(&a), gateway(&a)),
            Expect::ArpReply(arp_reply(a.host_mac, gateway(&a), a.mac, ip(&a))),
        );
        // Linux re-validates a cached entry with a unicast request.
        lab.case(
            "unicast ARP refresh for the gateway",
            on,
            &with_dst_mac(&arp_request(a.mac, ip(&a), gateway(&a)), a.host_mac),
            Expect::ArpReply(arp_reply(a.host_mac, gateway(&a), a.mac, ip(&a))),
        );
        lab.case(
            "ARP for a peer on the same network",
            on,
            &arp_request(a.mac, ip(&a), ip(&b)),
            Expect::ArpReply(arp_reply(b.mac, ip(&b), a.mac, ip(&a))),
        );
        lab.case(
            "ARP for a container of another network",
            on,
            &arp_request(a.mac, ip(&a), ip(&other)),
            Expect::Drop(DropReason::ArpUnknownTarget),
        );
        lab.case(
            "ARP for an unused address of the subnet",
            on,
            &arp_request(a.mac, ip(&a), [172, 18, 0, 99]),
            Expect::Drop(DropReason::ArpUnknownTarget),
        );
        // RFC 5227 duplicate-address probe: sender 0.0.0.0, target itself.
        lab.case(
            "ARP probe for its own address",
            on,
            &arp_request(a.mac, [0; 4], ip(&a)),
            Expect::Pass,
        );
        lab.case(
            "ARP reply to the host's own request",
            on,
            &arp_reply(a.mac, ip(&a), a.host_mac, gateway(&a)),
            Expect::Pass,
        );

        let mut bad_op = arp_request(a.mac, ip(&a), gateway(&a));
        bad_op[eth::HLEN + 7] = 3; // RARP request
        lab.case("ARP op 3", on, &bad_op, Expect::Drop(DropReason::BadArp));
        let mut bad_htype = arp_request(a.mac, ip(&a), gateway(&a));
        bad_htype[eth::HLEN + 1] = 6; // IEEE 802
        lab.case(
            "ARP htype 6",
            on,
            &bad_htype,
            Expect::Drop(DropReason::BadArp),
        );

        lab.assert_stats();
    });
}

#[test]
fn ipv4_is_switched_by_network() {
    in_private_netns(|| {
        let mut lab = Lab::new("ipv4");
        let Topology {
            a,
            b,
            other,
            sealed,
            x,
            y,
            z,
            ..
        } = lab.topo;
        let outside = [1, 1, 1, 1];

        let to_b = ipv4_frame(b.mac, a.mac, ip(&a), ip(&b));
        lab.case(
            "to a same-network peer, already addressed to its MAC",
            a.ifindex,
            &to_b,
            Expect::Redirect(to_b.clone()),
        );
        // E.g. a stale neighbour entry or a route via the gateway: the frame
        // must still arrive addressed to the peer, or its stack drops it.
        lab.case(
            "to a same-network peer, addressed to the gateway's MAC",
            a.ifindex,
            &with_dst_mac(&to_b, a.host_mac),
            Expect::Redirect(to_b.clone()),
        );
        lab.case(
            "to a container of another network",
            a.ifindex,
            &ipv4_frame(a.host_mac, a.mac, ip(&a), ip(&other)),
            Expect::Drop(DropReason::CrossNetwork),
        );
        for (what, dst) in [
            ("to the gateway", gateway(&a)),
            ("to the outside", outside),
            ("to an unused address of the subnet", [172, 18, 0, 99]),
        ] {
            lab.case(
                what,
                a.ifindex,
                &ipv4_frame(a.host_mac, a.mac, ip(&a), dst),
                Expect::Pass,
            );
        }

        let from_sealed = |dst| ipv4_frame(sealed.host_mac, sealed.mac, ip(&sealed), dst);
        lab.case(
            "internal network to the outside",
            sealed.ifindex,
            &from_sealed(outside),
            Expect::Drop(DropReason::InternalNetwork),
        );
        lab.case(
            "internal network to its gateway",
            sealed.ifindex,
            &from_sealed(gateway(&sealed)),
            Expect::Pass,
        );

        let to_y = ipv4_frame(y.mac, x.mac, ip(&x), ip(&y));
        lab.case(
            "icc=false, to a --linked peer",
            x.ifindex,
            &to_y,
            Expect::Redirect(to_y.clone()),
        );
        lab.case(
            "icc=false, to a peer that is not linked",
            x.ifindex,
            &ipv4_frame(z.mac, x.mac, ip(&x), ip(&z)),
            Expect::Drop(DropReason::IccDenied),
        );
        lab.case(
            "icc=false, to the gateway",
            x.ifindex,
            &ipv4_frame(x.host_mac, x.mac, ip(&x), gateway(&x)),
            Expect::Pass,
        );

        lab.assert_stats();
    });
}

#[test]
fn spoofed_and_unknown_senders_are_dropped() {
    in_private_netns(|| {
        let mut lab = Lab::new("spoof");
        let Topology {
            a,
            b,
            stray_ifindex,
            empty_slot_ifindex,
            ..
        } = lab.topo;
        let on = a.ifindex;

        lab.case(
            "IPv4 with another container's source MAC",
            on,
            &ipv4_frame(a.host_mac, b.mac, ip(&a), gateway(&a)),
            Expect::Drop(DropReason::SpoofedMac),
        );
        lab.case(
            "IPv4 with another container's source IP, to the gateway",
            on,
            &ipv4_frame(a.host_mac, a.mac, ip(&b), gateway(&a)),
            Expect::Drop(DropReason::SpoofedIp),
        );
        lab.case(
            "IPv4 with a forged source IP, to a peer",
            on,
            &ipv4_frame(b.mac, a.mac, [172, 18, 0, 99], ip(&b)),
            Expect::Drop(DropReason::SpoofedIp),
        );
        lab.case(
            "ARP from another container's Ethernet source",
            on,
            &arp_request(b.mac, ip(&a), gateway(&a)),
            Expect::Drop(DropReason::SpoofedMac),
        );
        let mut forged_sha = arp_request(a.mac, ip(&a), gateway(&a));
        forged_sha[eth::HLEN + 8..eth::HLEN + 14].copy_from_slice(&b.mac);
        lab.case(
            "ARP whose sender hardware address is another container's",
            on,
            &forged_sha,
            Expect::Drop(DropReason::SpoofedMac),
        );
        lab.case(
            "ARP whose sender IP is another container's",
            on,
            &arp_request(a.mac, ip(&b), gateway(&a)),
            Expect::Drop(DropReason::SpoofedIp),
        );

        let to_gw = ipv4_frame(a.host_mac, a.mac, ip(&a), gateway(&a));
        lab.case(
            "a real device that carries no endpoint",
            stray_ifindex,
            &to_gw,
            Expect::Drop(DropReason::UnknownInterface),
        );
        lab.case(
            "a device in the endpoint range whose IFACES slot is empty",
            empty_slot_ifindex,
            &to_gw,
            Expect::Drop(DropReason::UnknownInterface),
        );
        // ctx ifindex 0 leaves skb->dev on the loopback device (ifindex 1).
        lab.case(
            "no ifindex in the context (loopback)",
            0,
            &to_gw,
            Expect::Drop(DropReason::UnknownInterface),
        );
        // An ifindex with no device behind it never reaches the program.
        lab.case(
            "ifindex of no device",
            999_999,
            &to_gw,
            Expect::Refused(nix::libc::ENODEV),
        );

        lab.assert_stats();
    });
}

#[test]
fn malformed_frames_are_dropped() {
    in_private_netns(|| {
        let mut lab = Lab::new("malformed");
        let a = lab.topo.a;
        let on = a.ifindex;
        let ipv4 = ipv4_frame(a.host_mac, a.mac, ip(&a), gateway(&a));
        let arp = arp_request(a.mac, ip(&a), gateway(&a));

        // BPF_PROG_TEST_RUN for skb programs wants a full Ethernet header.
        for len in 0..eth::HLEN {
            lab.case(
                &format!("{len}-byte frame"),
                on,
                &ipv4[..len],
                Expect::Refused(nix::libc::EINVAL),
            );
        }
        // From the bare Ethernet header up to one byte short of the headers
        // the ethertype promises. This machine's kernel refuses every IPv4
        // cut itself (see `Expect::DropUnlessRefused`), so only the ARP cuts
        // reach the program's own length checks here.
        for len in eth::HLEN..20 + eth::HLEN {
            lab.case(
                &format!("IPv4 frame cut to {len} bytes"),
                on,
                &ipv4[..len],
                Expect::DropUnlessRefused(DropReason::Malformed),
            );
        }
        for len in eth::HLEN..arp::FRAME_LEN {
            lab.case(
                &format!("ARP frame cut to {len} bytes"),
                on,
                &arp[..len],
                Expect::Drop(DropReason::Malformed),
            );
        }

        for ihl in 0..5 {
            let mut f = ipv4.clone();
            f[eth::HLEN] = 0x40 | ihl;
            lab.case(
                &format!("IPv4 with IHL {ihl}"),
                on,
                &f,
                Expect::Drop(DropReason::Malformed),
            );
        }
        let mut v6_in_v4 = ipv4.clone();
        v6_in_v4[eth::HLEN] = 0x65;
        lab.case(
            "IP version 6 under the IPv4 ethertype",
            on,
            &v6_in_v4,
            Expect::Drop(DropReason::Malformed),
        );

        lab.case(
            "IPv6",
            on,
            &ipv6_frame(a.host_mac, a.mac),
            Expect::Drop(DropReason::UnsupportedProtocol),
        );
        lab.assert_stats();
    });
}

/// The sender's `PEER_CACHE` entry spares the `ENDPOINTS` lookup while it
/// keeps talking to one peer; it must never outlive the peer. Each step
/// changes the maps as the daemon does (`Datapath::set_endpoint` /
/// `remove_endpoint` write `ENDPOINTS` and `IFACES` alike).
#[test]
fn the_peer_cache_follows_the_endpoint_maps() {
    in_private_netns(|| {
        let mut lab = Lab::new("peercache");
        let Topology { a, b, other, .. } = lab.topo;
        let to_b = ipv4_frame(b.mac, a.mac, ip(&a), ip(&b));
        for i in 0..3 {
            lab.case(
                &format!("to a peer, {i}"),
                a.ifindex,
                &to_b,
                Expect::Redirect(to_b.clone()),
            );
        }
        let cache: Array<_, PeerCache> =
            Array::try_from(lab.ebpf.map("PEER_CACHE").expect("PEER_CACHE")).expect("PEER_CACHE");
        let from = iface_slot(a.ifindex).unwrap();
        assert_eq!(
            cache.get(&from, 0).unwrap(),
            PeerCache {
                dst: b.ip,
                slot: iface_slot(b.ifindex).unwrap()
            },
            "the sender's cache entry names the peer"
        );
        // Another destination in between replaces the entry; both still
        // get their own verdict.
        lab.case(
            "to a container of another network, between two to the peer",
            a.ifindex,
            &ipv4_frame(a.host_mac, a.mac, ip(&a), ip(&other)),
            Expect::Drop(DropReason::CrossNetwork),
        );
        lab.case(
            "to the peer again",
            a.ifindex,
            &to_b,
            Expect::Redirect(to_b.clone()),
        );

        // The peer goes: the host stack gets the frame, as for any unused
        // address of the subnet.
        let slot = iface_slot(b.ifindex).unwrap();
        lab.endpoints().remove(&b.ip).unwrap();
        let empty = Endpoint {
            ifindex: 0,
            network_id: 0,
            ip: 0,
            mac: [0; 6],
            host_mac: [0; 6],
            flags: 0,
            vtep: 0,
            net: network([0; 4], 32, [0; 4], 0),
        };
        lab.ifaces().set(slot, empty, 0).unwrap();
        lab.case("to the removed peer", a.ifindex, &to_b, Expect::Pass);

        // Its veth slot is reused by a new endpoint with another address.
        let newcomer = endpoint(b.ifindex, 1, a.net, [172, 18, 0, 7]);
        lab.endpoints().insert(newcomer.ip, newcomer, 0).unwrap();
        lab.ifaces().set(slot, newcomer, 0).unwrap();
        lab.case(
            "to the old peer's address, its slot reused",
            a.ifindex,
            &to_b,
            Expect::Pass,
        );
        let to_new = ipv4_frame(newcomer.mac, a.mac, ip(&a), ip(&newcomer));
        lab.case(
            "to the newcomer",
            a.ifindex,
            &to_new,
            Expect::Redirect(to_new.clone()),
        );

        // The peer comes back on another network: no redirect across.
        let moved = endpoint(b.ifindex, 2, other.net, ip(&b));
        lab.endpoints().remove(&newcomer.ip).unwrap();
        lab.endpoints().insert(moved.ip, moved, 0).unwrap();
        lab.ifaces().set(slot, moved, 0).unwrap();
        lab.case(
            "to the peer's address, now on another network",
            a.ifindex,
            &with_dst_mac(&to_b, a.host_mac),
            Expect::Drop(DropReason::CrossNetwork),
        );

        lab.assert_stats();
    });
}

/// `frame` with a VLAN tag (`tpid`, VLAN id 5) inserted after the MACs.
fn with_tag(frame: &[u8], tpid: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let mut tag = tpid.to_be_bytes().to_vec();
    tag.extend_from_slice(&5u16.to_be_bytes());
    f.splice(eth::PROTO..eth::PROTO, tag);
    f
}

/// `frame` (Ethernet + IPv4) with its IPv4 total length set to `len` and
/// the header checksum recomputed, so that only the length is wrong.
fn with_total_length(frame: &[u8], len: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ip = eth::HLEN;
    f[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
    f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    let sum = ipv4_checksum(&f[ip..ip + ihl.max(20)]);
    f[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn vlan_tags_and_bad_ipv4_lengths_are_dropped() {
    in_private_netns(|| {
        let mut lab = Lab::new("tags");
        let Topology { a, b, .. } = lab.topo;
        let on = a.ifindex;
        let to_b = ipv4_frame(b.mac, a.mac, ip(&a), ip(&b));
        let to_gw = ipv4_frame(a.host_mac, a.mac, ip(&a), gateway(&a));
        let arp = arp_request(a.mac, ip(&a), gateway(&a));

        // A tag the container chose must not reach another segment, to a
        // peer (which would get the frame still tagged) or anywhere else.
        for (what, frame) in [
            ("to a peer", &to_b),
            ("to the gateway", &to_gw),
            ("ARP", &arp),
        ] {
            lab.case(
                &format!("802.1Q-tagged, {what}"),
                on,
                &with_tag(frame, eth::P_8021Q),
                Expect::Drop(DropReason::VlanTagged),
            );
            lab.case(
                &format!("802.1ad-tagged, {what}"),
                on,
                &with_tag(frame, eth::P_8021AD),
                Expect::Drop(DropReason::VlanTagged),
            );
        }
        lab.case(
            "QinQ (802.1ad over 802.1Q) to a peer",
            on,
            &with_tag(&with_tag(&to_b, eth::P_8021Q), eth::P_8021AD),
            Expect::Drop(DropReason::VlanTagged),
        );

        // The frame holds 20 + 12 bytes of IPv4: a total length past that
        // promises bytes that are not there.
        let ip_len = (to_b.len() - eth::HLEN) as u16;
        for len in [ip_len + 1, ip_len + 100, u16::MAX] {
            lab.case(
                &format!("IPv4 total length {len} in a {ip_len}-byte packet"),
                on,
                &with_total_length(&to_b, len),
                Expect::Drop(DropReason::Ipv4Truncated),
            );
        }
        lab.case(
            "IPv4 total length past the frame, to the gateway",
            on,
            &with_total_length(&to_gw, ip_len + 1),
            Expect::Drop(DropReason::Ipv4Truncated),
        );
        for len in [0, 1, 19] {
            lab.case(
                &format!("IPv4 total length {len}, below the header"),
                on,
                &with_total_length(&to_b, len),
                Expect::Drop(DropReason::Malformed),
            );
        }
        // IHL 6: a 24-byte header, so a total length of 20 is too short.
        let mut opts = with_total_length(&to_b, 20);
        opts[eth::HLEN] = 0x46;
        lab.case(
            "IPv4 with IHL 6 and total length 20",
            on,
            &opts,
            Expect::Drop(DropReason::Malformed),
        );

        // Valid packets still go through byte for byte: exact length, and
        // a shorter total length with the rest as link padding (a 60-byte
        // minimum Ethernet frame).
        lab.case(
            "IPv4 whose total length is the frame's",
            on,
            &to_b,
            Expect::Redirect(to_b.clone()),
        );
        let mut padded = to_b.clone();
        padded.resize(60, 0);
        lab.case(
            "IPv4 with Ethernet padding after it",
            on,
            &padded,
            Expect::Redirect(padded.clone()),
        );
        lab.case(
            "IPv4 with padding, to the gateway",
            on,
            &{
                let mut f = to_gw.clone();
                f.resize(60, 0);
                f
            },
            Expect::Pass,
        );

        lab.assert_stats();
    });
}

/// Sends `frame` out of the device `ifindex` through an AF_PACKET socket,
/// as a container's raw socket would.
fn send_raw(ifindex: u32, frame: &[u8]) {
    // SAFETY: plain socket calls with valid, correctly sized arguments; the
    // descriptor is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    }
}

/// BPF_PROG_TEST_RUN shows the program a tag only in the frame. On a real
/// veth the kernel moves a received frame's outer tag into the skb
/// (`vlan_present`/`vlan_tci`) before TC runs, and the program then sees the
/// inner ethertype: this is how tagged frames used to reach other
/// containers. Here `from_container` is attached to `a`'s host-side veth
/// and tagged frames are sent into the container side.
#[test]
fn tags_the_kernel_moved_into_metadata_are_dropped() {
    in_private_netns(|| {
        let mut lab = Lab::new("vlanmeta");
        let Topology {
            a,
            b,
            stray_ifindex,
            ..
        } = lab.topo;
        for dev in ["h1", "c1"] {
            let out = Command::new("ip")
                .args(["link", "set", dev, "up"])
                .output()
                .expect("running ip");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let prog: &mut SchedClassifier = lab
            .ebpf
            .program_mut("from_container")
            .expect("from_container")
            .try_into()
            .expect("classifier");
        prog.attach("h1", aya::programs::TcAttachType::Ingress)
            .expect("attaching from_container to h1");

        let to_b = ipv4_frame(b.mac, a.mac, ip(&a), ip(&b));
        let to_gw = ipv4_frame(a.host_mac, a.mac, ip(&a), gateway(&a));
        let frames = [
            with_tag(&to_b, eth::P_8021Q),
            with_tag(&to_b, eth::P_8021AD),
            with_tag(&to_gw, eth::P_8021Q),
            with_tag(&arp_request(a.mac, ip(&a), gateway(&a)), eth::P_8021Q),
        ];
        for f in &frames {
            send_raw(stray_ifindex, f);
        }
        let want = frames.len() as u64;
        // Received frames are processed asynchronously (softirq): wait for
        // them, boundedly. Other frames the kernel sends on a new link
        // (IPv6 neighbour discovery) land on other counters.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let got = loop {
            let got = lab.drops(DropReason::VlanTagged);
            if got >= want || std::time::Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(
            got, want,
            "vlan_tagged drops of tagged frames sent on a veth"
        );
        assert_eq!(lab.redirected(), 0, "nothing reached the peer");
    });
}

//! Address translation: the map types of connection tracking, published ports
//! and socket-level translation, and the pure logic both sides use on them
//! (flow keys, timeouts, NAT port candidates, the entry pair of a new flow).
//!
//! Connection tracking keeps one `CT` entry per direction of a translated
//! flow. The key is the flow's tuple exactly as a program sees a packet of
//! it; the value is the tuple to rewrite that packet to. A new flow inserts
//! both entries at once (see [`nat_pair`]), so each direction needs one
//! lookup, in whichever program sees it.
//!
//! Ports are kept in wire order read as a native `u16` ([`PortWire`]), as
//! addresses are ([`crate::Ipv4Wire`]), so the programs never swap bytes.

use crate::Ipv4Wire;

/// A TCP or UDP port (or ICMP echo identifier) as the two wire bytes read as
/// a native `u16`.
pub type PortWire = u16;

/// Converts a host-order port to the [`PortWire`] form.
#[inline(always)]
pub const fn port_wire(port: u16) -> PortWire {
    port.to_be()
}

/// The host-order port of a [`PortWire`].
#[inline(always)]
pub const fn port_host(port: PortWire) -> u16 {
    u16::from_be(port)
}

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Capacity of `CT` (an LRU hash: the least recently used flow makes room).
pub const MAX_CT: u32 = 262_144;
/// Capacity of `PORTS` (published ports, TCP and UDP, per host address).
pub const MAX_PORTS: u32 = 65_536;
/// Capacity of `LOCAL_ADDRS` (the daemon's own IPv4 addresses).
pub const MAX_LOCAL_ADDRS: u32 = 1_024;
/// Capacity of `SOCK_REV` (an LRU hash of socket-level translations).
pub const MAX_SOCK_REV: u32 = 65_536;
/// Capacity of `FRAGS` (an LRU hash: datagrams being fragmented right now).
pub const MAX_FRAGS: u32 = 8_192;
/// The embedded resolver's address inside every sandbox (wire form).
pub const DNS_IP: crate::Ipv4Wire = crate::ipv4_wire([127, 0, 0, 11]);
/// The port applications ask for (wire form); the resolver really listens
/// on another one, which `DNS_PORTS` gives per sandbox.
pub const DNS_PORT: PortWire = port_wire(53);
/// Slots of the `CONFIG` array.
pub const CONFIG_SLOTS: u32 = 4;
/// `CONFIG` slot: the cookie of the daemon's network namespace. Socket-level
/// translation acts only on sockets of that namespace (cgroup hooks see
/// every namespace of the machine).
pub const CFG_NETNS_COOKIE: u32 = 0;

/// Key of `CT`: a flow's tuple as a program sees one of its packets.
///
/// For TCP and UDP, `sport`/`dport` are the ports. For ICMP echo, the
/// identifier is `sport` of a request and `dport` of a reply (the other is
/// 0), so that the reply's key is the request's with both ends swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: Ipv4Wire,
    pub daddr: Ipv4Wire,
    pub sport: PortWire,
    pub dport: PortWire,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    #[inline(always)]
    pub const fn new(
        proto: u8,
        saddr: Ipv4Wire,
        sport: PortWire,
        daddr: Ipv4Wire,
        dport: PortWire,
    ) -> Self {
        CtKey {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad: [0; 3],
        }
    }

    /// The same flow seen from the other end.
    #[inline(always)]
    pub const fn reversed(&self) -> Self {
        CtKey::new(self.proto, self.daddr, self.dport, self.saddr, self.sport)
    }
}

/// Value of `CT`: what a packet whose tuple is the key is rewritten to, and
/// the state of that direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub saddr: Ipv4Wire,
    pub daddr: Ipv4Wire,
    pub sport: PortWire,
    pub dport: PortWire,
    /// `CT_*` flags.
    pub flags: u16,
    /// `SEEN_*` bits: what this direction has carried.
    pub seen: u8,
    pub _pad: u8,
    /// `bpf_ktime_get_ns()` of the last packet (refreshed at most once per
    /// [`CT_REFRESH_NS`] to spare the shared cache line).
    pub last_seen: u64,
    /// For a service flow ([`CT_SERVICE`]): the `BACKENDS` id of the replica
    /// it was given, for its counters. [`NO_BACKEND`] otherwise.
    pub backend: u32,
    /// For a flow that came in through the tunnel from the host that
    /// received it ([`CT_TUNNEL`]): that host's underlay address, where the
    /// replies go back to. 0 otherwise.
    pub vtep: Ipv4Wire,
}

/// The entry rewrites the source (masquerade, hairpin, reply of a published port).
pub const CT_SNAT: u16 = 1 << 0;
/// The entry rewrites the destination (published port, reply of a masqueraded flow).
pub const CT_DNAT: u16 = 1 << 1;
/// The entry serves the reply direction of its flow.
pub const CT_REPLY: u16 = 1 << 2;
/// The flow entered through a published port.
pub const CT_PUBLISHED: u16 = 1 << 3;
/// The flow is a container reaching a published port through the host (hairpin).
pub const CT_HAIRPIN: u16 = 1 << 4;
/// The flow was balanced to a service replica (`CtEntry::backend` names it).
pub const CT_SERVICE: u16 = 1 << 5;
/// The flow reached this host's replica through the tunnel from the host
/// that received it: its replies are encapsulated back to `CtEntry::vtep`
/// (no address is rewritten here).
pub const CT_TUNNEL: u16 = 1 << 6;
/// `CtEntry::backend` of a flow that is not a service's.
pub const NO_BACKEND: u32 = u32::MAX;

/// A TCP segment with SYN has been seen in this direction.
pub const SEEN_SYN: u8 = 1 << 0;
/// A packet without SYN has been seen (TCP: the handshake is done).
pub const SEEN_ESTABLISHED: u8 = 1 << 1;
/// FIN or RST has been seen: the flow is closing.
pub const SEEN_CLOSING: u8 = 1 << 2;

const SEC: u64 = 1_000_000_000;
/// TCP flow before its handshake completes.
pub const CT_TIMEOUT_TCP_SYN: u64 = 60 * SEC;
/// Established TCP flow without traffic (Cilium's default; Linux keeps 5 days).
pub const CT_TIMEOUT_TCP_ESTABLISHED: u64 = 6 * 3600 * SEC;
/// TCP flow after FIN or RST.
pub const CT_TIMEOUT_TCP_CLOSING: u64 = 10 * SEC;
/// UDP flow without traffic.
pub const CT_TIMEOUT_UDP: u64 = 60 * SEC;
/// ICMP echo without traffic.
pub const CT_TIMEOUT_ICMP: u64 = 30 * SEC;
/// `last_seen` is rewritten at most this often.
pub const CT_REFRESH_NS: u64 = SEC;

/// How long an entry lives without traffic.
#[inline(always)]
pub const fn ct_timeout(proto: u8, seen: u8) -> u64 {
    match proto {
        IPPROTO_TCP => {
            if seen & SEEN_CLOSING != 0 {
                CT_TIMEOUT_TCP_CLOSING
            } else if seen & SEEN_ESTABLISHED != 0 {
                CT_TIMEOUT_TCP_ESTABLISHED
            } else {
                CT_TIMEOUT_TCP_SYN
            }
        }
        IPPROTO_UDP => CT_TIMEOUT_UDP,
        _ => CT_TIMEOUT_ICMP,
    }
}

/// Whether `e` (of a flow of `proto`) still holds at time `now`. The age
/// is taken as signed: a `now` read before another CPU refreshed
/// `last_seen` (or before a conntrack walk that takes a while) is a small
/// negative age, alive, not an age of 2^64 ns.
#[inline(always)]
pub const fn ct_alive(e: &CtEntry, proto: u8, now: u64) -> bool {
    (now.wrapping_sub(e.last_seen) as i64) <= ct_timeout(proto, e.seen) as i64
}

/// TCP header flag bits.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The `SEEN_*` bits a packet adds (`tcp_flags` is 0 for other protocols).
#[inline(always)]
pub const fn seen_bits(proto: u8, tcp_flags: u8) -> u8 {
    if proto != IPPROTO_TCP {
        return SEEN_ESTABLISHED;
    }
    let mut s = 0;
    if tcp_flags & TCP_SYN != 0 {
        s |= SEEN_SYN;
    } else {
        s |= SEEN_ESTABLISHED;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        s |= SEEN_CLOSING;
    }
    s
}

/// Whether a packet may open a new translated flow toward a published port:
/// any UDP datagram or ICMP echo request, but for TCP only a SYN without ACK
/// (a stray segment of a flow the host itself owns must not be taken).
#[inline(always)]
pub const fn opens_flow(proto: u8, tcp_flags: u8) -> bool {
    proto != IPPROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
}

/// Number of source ports tried for a new masqueraded or hairpin flow.
pub const NAT_ATTEMPTS: u32 = 8;
/// Remapped source ports come from `NAT_PORT_MIN..=65535`: above Linux's
/// default ephemeral range (32768-60999), so the host's own sockets do not
/// pick them.
pub const NAT_PORT_MIN: u16 = 61_000;

/// The `attempt`-th candidate source port (wire form) for a flow whose
/// original source port is `orig`: the original port first (as Linux
/// masquerading keeps it when it is free), then ports spread over
/// `NAT_PORT_MIN..=65535` by `seed`.
#[inline(always)]
pub const fn nat_port_candidate(orig: PortWire, attempt: u32, seed: u32) -> PortWire {
    if attempt == 0 {
        return orig;
    }
    let span = (u16::MAX - NAT_PORT_MIN) as u32 + 1;
    // Mix seed and attempt (murmur3's finaliser constants).
    let mut h = seed.wrapping_mul(0x9e37_79b1) ^ attempt.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 15;
    h = h.wrapping_mul(0xc2b2_ae35);
    port_wire(NAT_PORT_MIN + ((h >> 16) % span) as u16)
}

/// The two entries of a new flow first seen as `orig` and rewritten to
/// `new`: (entry for `orig`, key of the reply direction, entry for it).
/// `flags` names the rewrite of the original direction (`CT_SNAT`,
/// `CT_DNAT` or both, plus `CT_PUBLISHED`/`CT_HAIRPIN`); the reply entry
/// carries the mirror image with `CT_REPLY`.
#[inline(always)]
pub const fn nat_pair(
    orig: &CtKey,
    new: &CtKey,
    flags: u16,
    seen: u8,
    now: u64,
) -> (CtEntry, CtKey, CtEntry) {
    let fwd = CtEntry {
        saddr: new.saddr,
        daddr: new.daddr,
        sport: new.sport,
        dport: new.dport,
        flags,
        seen,
        _pad: 0,
        last_seen: now,
        backend: NO_BACKEND,
        vtep: 0,
    };
    let reply_key = new.reversed();
    let back = orig.reversed();
    let mut rflags = flags & !(CT_SNAT | CT_DNAT);
    if flags & CT_SNAT != 0 {
        rflags |= CT_DNAT;
    }
    if flags & CT_DNAT != 0 {
        rflags |= CT_SNAT;
    }
    let rev = CtEntry {
        saddr: back.saddr,
        daddr: back.daddr,
        sport: back.sport,
        dport: back.dport,
        flags: rflags | CT_REPLY,
        seen: 0,
        _pad: 0,
        last_seen: now,
        backend: NO_BACKEND,
        vtep: 0,
    };
    (fwd, reply_key, rev)
}

/// [`nat_pair`] for a flow that names its replica: both entries carry the
/// `BACKENDS` id `backend` (a service flow's, or [`NO_BACKEND`]) and the
/// VTEP `vtep` its replies go back to (`CT_TUNNEL`, or 0).
#[inline(always)]
pub const fn nat_pair_for(
    orig: &CtKey,
    new: &CtKey,
    flags: u16,
    seen: u8,
    now: u64,
    backend: u32,
    vtep: Ipv4Wire,
) -> (CtEntry, CtKey, CtEntry) {
    let (mut fwd, reply_key, mut rev) = nat_pair(orig, new, flags, seen, now);
    fwd.backend = backend;
    rev.backend = backend;
    fwd.vtep = vtep;
    rev.vtep = vtep;
    (fwd, reply_key, rev)
}

/// Key of `PORTS`: a published port. `addr` 0 means every host address
/// (`-p 8080:80`); otherwise only that address answers (`-p IP:8080:80`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub addr: Ipv4Wire,
    pub port: PortWire,
    pub proto: u8,
    pub _pad: u8,
}

impl PortKey {
    #[inline(always)]
    pub const fn new(proto: u8, addr: Ipv4Wire, port: PortWire) -> Self {
        PortKey {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// An address and port: the container end of a published port (value of
/// `PORTS`), or the address a socket originally asked for (value of
/// `SOCK_REV`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatAddr {
    pub addr: Ipv4Wire,
    pub port: PortWire,
    pub _pad: u16,
}

impl NatAddr {
    #[inline(always)]
    pub const fn new(addr: Ipv4Wire, port: PortWire) -> Self {
        NatAddr {
            addr,
            port,
            _pad: 0,
        }
    }
}

/// Key of `SOCK_REV`: a UDP socket (by cookie) that the socket hook pointed
/// at a container address, so that `recvmsg` can show the sender as the
/// address the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevKey {
    pub cookie: u64,
    pub addr: Ipv4Wire,
    pub port: PortWire,
    pub _pad: u16,
}

/// Key of `FRAGS`: one fragmented datagram, as RFC 791 names it (source,
/// destination, protocol, identification), seen before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: Ipv4Wire,
    pub daddr: Ipv4Wire,
    /// The IPv4 identification field (wire order).
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of `FRAGS`: the ports (or echo identifier, as in [`CtKey`]) the
/// first fragment carried, so that later fragments find their flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragPorts {
    pub sport: PortWire,
    pub dport: PortWire,
}

/// Where the host's loopback range starts and ends, for the socket hook: a
/// port published on every address also answers on 127.0.0.0/8.
#[inline(always)]
pub const fn is_loopback(addr: Ipv4Wire) -> bool {
    crate::ipv4_octets(addr)[0] == 127
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::ipv4_wire;

    #[test]
    fn ports_round_trip_through_wire_form() {
        assert_eq!(port_host(port_wire(8080)), 8080);
        assert_eq!(port_wire(0x1234).to_ne_bytes(), [0x12, 0x34]);
    }

    #[test]
    fn masquerade_pair_restores_the_original_on_reply() {
        let c = ipv4_wire([172, 17, 0, 2]);
        let r = ipv4_wire([192, 0, 2, 9]);
        let host = ipv4_wire([198, 51, 100, 1]);
        let orig = CtKey::new(IPPROTO_TCP, c, port_wire(40000), r, port_wire(80));
        let new = CtKey::new(IPPROTO_TCP, host, port_wire(61001), r, port_wire(80));
        let (fwd, reply_key, rev) = nat_pair(&orig, &new, CT_SNAT, SEEN_SYN, 7);
        assert_eq!(
            (fwd.saddr, fwd.sport, fwd.daddr),
            (host, port_wire(61001), r)
        );
        assert_eq!(fwd.flags, CT_SNAT);
        // The reply arrives from r:80 to host:61001 ...
        assert_eq!(
            reply_key,
            CtKey::new(IPPROTO_TCP, r, port_wire(80), host, port_wire(61001))
        );
        // ... and goes back to c:40000, still from r:80.
        assert_eq!(
            (rev.saddr, rev.sport, rev.daddr, rev.dport),
            (r, port_wire(80), c, port_wire(40000))
        );
        assert_eq!(rev.flags, CT_DNAT | CT_REPLY);
        assert_eq!(rev.last_seen, 7);
    }

    #[test]
    fn published_pair_keeps_the_client_address() {
        let client = ipv4_wire([192, 0, 2, 9]);
        let host = ipv4_wire([198, 51, 100, 1]);
        let c = ipv4_wire([172, 17, 0, 2]);
        let orig = CtKey::new(IPPROTO_UDP, client, port_wire(5353), host, port_wire(8053));
        let new = CtKey::new(IPPROTO_UDP, client, port_wire(5353), c, port_wire(53));
        let (fwd, reply_key, rev) = nat_pair(&orig, &new, CT_DNAT | CT_PUBLISHED, 0, 1);
        assert_eq!(fwd.saddr, client, "the container sees the real client");
        assert_eq!(reply_key.saddr, c);
        assert_eq!(reply_key.sport, port_wire(53));
        assert_eq!((rev.saddr, rev.sport), (host, port_wire(8053)));
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_REPLY);
    }

    #[test]
    fn service_pairs_name_their_replica_both_ways() {
        let client = ipv4_wire([198, 51, 100, 7]);
        let host = ipv4_wire([192, 0, 2, 1]);
        let replica = ipv4_wire([10, 7, 0, 9]);
        let orig = CtKey::new(IPPROTO_TCP, client, port_wire(40000), host, port_wire(8080));
        let new = CtKey::new(
            IPPROTO_TCP,
            client,
            port_wire(40000),
            replica,
            port_wire(80),
        );
        let flags = CT_DNAT | CT_PUBLISHED | CT_SERVICE;
        let (fwd, reply_key, rev) = nat_pair_for(&orig, &new, flags, SEEN_SYN, 3, 17, 0);
        let (f0, k0, r0) = nat_pair(&orig, &new, flags, SEEN_SYN, 3);
        assert_eq!(reply_key, k0);
        assert_eq!((fwd.backend, rev.backend), (17, 17));
        assert_eq!(
            CtEntry {
                backend: NO_BACKEND,
                ..fwd
            },
            f0
        );
        assert_eq!(
            CtEntry {
                backend: NO_BACKEND,
                ..rev
            },
            r0
        );
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_SERVICE | CT_REPLY);
        // On the replica's host: the tuple maps to itself, both directions
        // know the VTEP the flow came from.
        let vtep = ipv4_wire([192, 0, 2, 2]);
        let (fwd, reply_key, rev) = nat_pair_for(&new, &new, CT_TUNNEL, 0, 3, 17, vtep);
        assert_eq!(reply_key, new.reversed());
        assert_eq!(
            (fwd.saddr, fwd.sport, fwd.daddr, fwd.dport),
            (client, port_wire(40000), replica, port_wire(80))
        );
        assert_eq!(
            (rev.saddr, rev.sport, rev.daddr, rev.dport),
            (replica, port_wire(80), client, port_wire(40000))
        );
        assert_eq!((fwd.flags, rev.flags), (CT_TUNNEL, CT_TUNNEL | CT_REPLY));
        assert_eq!((fwd.vtep, rev.vtep), (vtep, vtep));
    }

    #[test]
    fn icmp_echo_keys_mirror() {
        let a = ipv4_wire([10, 0, 0, 1]);
        let b = ipv4_wire([10, 0, 0, 2]);
        let request = CtKey::new(IPPROTO_ICMP, a, port_wire(77), b, 0);
        let reply = CtKey::new(IPPROTO_ICMP, b, 0, a, port_wire(77));
        assert_eq!(request.reversed(), reply);
    }

    #[test]
    fn timeouts_follow_tcp_state() {
        let mut e = CtEntry {
            saddr: 0,
            daddr: 0,
            sport: 0,
            dport: 0,
            flags: 0,
            seen: seen_bits(IPPROTO_TCP, TCP_SYN),
            _pad: 0,
            last_seen: 0,
            backend: NO_BACKEND,
            vtep: 0,
        };
        assert!(ct_alive(&e, IPPROTO_TCP, CT_TIMEOUT_TCP_SYN));
        assert!(!ct_alive(&e, IPPROTO_TCP, CT_TIMEOUT_TCP_SYN + 1));
        e.seen |= seen_bits(IPPROTO_TCP, TCP_ACK);
        assert!(ct_alive(&e, IPPROTO_TCP, 3600 * SEC));
        e.seen |= seen_bits(IPPROTO_TCP, TCP_ACK | TCP_FIN);
        assert!(!ct_alive(&e, IPPROTO_TCP, 11 * SEC));
        assert!(ct_alive(&e, IPPROTO_UDP, 60 * SEC));
        assert!(!ct_alive(&e, IPPROTO_ICMP, 31 * SEC));
        // A clock read before last_seen (another CPU refreshed it) is alive.
        e.last_seen = 100;
        assert!(ct_alive(&e, IPPROTO_UDP, 100));
        assert!(ct_alive(&e, IPPROTO_UDP, 99));
        assert!(ct_alive(&e, IPPROTO_UDP, 0));
        // Ages are wrapping differences: a last_seen set to "now - age" on
        // a clock younger than the age (a freshly booted machine) wraps,
        // and still reads as that age.
        e.last_seen = 5u64.wrapping_sub(CT_TIMEOUT_UDP);
        assert!(ct_alive(&e, IPPROTO_UDP, 5));
        assert!(!ct_alive(&e, IPPROTO_UDP, 6));
    }

    #[test]
    fn only_a_bare_syn_opens_a_tcp_flow() {
        assert!(opens_flow(IPPROTO_TCP, TCP_SYN));
        assert!(!opens_flow(IPPROTO_TCP, TCP_SYN | TCP_ACK));
        assert!(!opens_flow(IPPROTO_TCP, TCP_ACK));
        assert!(!opens_flow(IPPROTO_TCP, TCP_RST));
        assert!(opens_flow(IPPROTO_UDP, 0));
    }

    #[test]
    fn port_candidates_start_with_the_original_and_stay_in_range() {
        let orig = port_wire(40000);
        assert_eq!(nat_port_candidate(orig, 0, 5), orig);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50u32 {
            for a in 1..NAT_ATTEMPTS {
                let p = port_host(nat_port_candidate(orig, a, seed));
                assert!(p >= NAT_PORT_MIN, "{p}");
                seen.insert(p);
            }
        }
        assert!(seen.len() > 200, "candidates spread: {}", seen.len());
    }

    #[test]
    fn loopback_is_all_of_127_slash_8() {
        assert!(is_loopback(ipv4_wire([127, 0, 0, 1])));
        assert!(is_loopback(ipv4_wire([127, 9, 9, 9])));
        assert!(!is_loopback(ipv4_wire([128, 0, 0, 1])));
    }
}

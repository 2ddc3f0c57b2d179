//! Services: a virtual IP (east-west) and ingress ports (every host
//! answers) balanced over a service's replicas, with Maglev consistent
//! hashing (Eisenbud et al., NSDI 2016) and connection tracking.
//!
//! The maps, all written by the daemon's reconciler from the store:
//!
//! - `SERVICES`: [`PortKey`] -> [`Service`]. `addr` is the VIP for the
//!   east-west frontend (`VIP:target`), or 0 for an ingress port answered on
//!   every address of the host (`published`); one entry per published port
//!   and protocol.
//! - `MAGLEV`: an array of [`MAX_SERVICES`] tables of [`MAGLEV_M`] entries
//!   each; entry `slot * MAGLEV_M + hash % MAGLEV_M` is the `BACKENDS` id of
//!   the replica a flow of the service at `slot` goes to. Every host builds
//!   the same table from the same replica names, so a flow that reaches any
//!   host goes to the same replica.
//! - `BACKENDS`: id -> [`Backend`]: a replica's address and its service.
//! - `BACKEND_PORTS`: ([`PortKey`] of a replica's address and target port)
//!   -> its id: the replica's host recognises tunnelled ingress flows by it.
//! - `SVC_STATS` (per service slot) and `BACKEND_STATS` (per id): per-CPU
//!   [`ServiceCounters`].
//!
//! A flow's backend is chosen once, when it opens, and kept in its conntrack
//! entry (`CtEntry::backend`), so a change of the replica set moves no
//! established connection.

use crate::{CtKey, Ipv4Wire, PortWire, DROP_REASON_SLOTS};

/// Size of each service's Maglev lookup table: a prime well above 100x the
/// replicas of any service (Katran's and Cilium's default).
pub const MAGLEV_M: u32 = 16_381;
/// Service slots (Maglev tables) one host holds.
pub const MAX_SERVICES: u32 = 1_024;
/// Capacity of `SERVICES` (frontends: a VIP port or an ingress port each).
pub const MAX_FRONTENDS: u32 = 8_192;
/// Capacity of `BACKENDS` and `BACKEND_STATS`.
pub const MAX_BACKENDS: u32 = 65_536;
/// A `MAGLEV` entry of a table with no live replica.
pub const NO_REPLICA: u32 = u32::MAX;

/// Value of `SERVICES`: one frontend of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// The service's slot: its table in `MAGLEV`, its `SVC_STATS` entry.
    pub slot: u32,
    /// Live replicas in the table; 0: a new flow is dropped as
    /// `service_no_backend`.
    pub count: u32,
    /// The port the replicas listen on ([`PortWire`]).
    pub target: PortWire,
    /// `SVC_*` flags.
    pub flags: u16,
}

/// The frontend is an ingress port (`SERVICES` key `addr` 0): answered on
/// every address of every host, from outside.
pub const SVC_INGRESS: u16 = 1 << 0;
/// The frontend is the service's virtual IP, for containers of its network.
pub const SVC_VIP: u16 = 1 << 1;

/// Value of `BACKENDS`: one replica of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The replica's address on the service's network ([`Ipv4Wire`]); its
    /// `ENDPOINTS` entry says whether it is on this host or behind which VTEP.
    pub ip: Ipv4Wire,
    /// The slot of its service.
    pub slot: u32,
    /// `BE_*` flags; 0 is an empty id.
    pub flags: u32,
}

/// The id is in use.
pub const BE_ACTIVE: u32 = 1 << 0;

/// Per-CPU counters of a service (`SVC_STATS`, by slot) or of one replica
/// (`BACKEND_STATS`, by id; its `drops` stay 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connections (flows) opened toward it.
    pub conns: u64,
    /// Packets of its flows, both directions.
    pub packets: u64,
    /// Bytes of its flows, both directions.
    pub bytes: u64,
    /// Packets of its flows dropped, by `DropReason` code.
    pub drops: [u64; DROP_REASON_SLOTS],
}

impl ServiceCounters {
    pub const ZERO: ServiceCounters = ServiceCounters {
        conns: 0,
        packets: 0,
        bytes: 0,
        drops: [0; DROP_REASON_SLOTS],
    };
}

/// The hash of a flow's 5-tuple that indexes its service's Maglev table.
/// Symmetric in nothing: the original direction's key is hashed. The same
/// function runs in the programs and in the host tests, so a test can say
/// which replica a flow must reach.
#[inline(always)]
pub const fn flow_hash(k: &CtKey) -> u32 {
    let mut h = mix(0x9747_b28c, k.saddr);
    h = mix(h, k.daddr);
    h = mix(h, (k.sport as u32) | ((k.dport as u32) << 16));
    h = mix(h, k.proto as u32);
    fmix(h)
}

/// The hash that picks the replica of a socket's `connect` (or unconnected
/// `sendmsg`) to a VIP in the socket hooks. At `connect` the source port is
/// usually not chosen yet, so there is no 5-tuple: the socket's cookie
/// (unique per socket while the kernel runs) stands for the flow. Unlike a
/// random pick, it is the same for every datagram of one unconnected UDP
/// socket to one VIP port (one replica answers it, and `recvmsg` shows it
/// as the VIP), and a test can tell which replica a socket must reach.
/// Sequential cookies spread like random ones after the murmur mixing.
#[inline(always)]
pub const fn sock_hash(cookie: u64, vip: Ipv4Wire, port: PortWire, proto: u8) -> u32 {
    let mut h = mix(0x5bd1_e995, cookie as u32);
    h = mix(h, (cookie >> 32) as u32);
    h = mix(h, vip);
    h = mix(h, (port as u32) | ((proto as u32) << 16));
    fmix(h)
}

/// The `MAGLEV` index of a flow of the service at `slot`.
#[inline(always)]
pub const fn maglev_index(slot: u32, hash: u32) -> u32 {
    slot * MAGLEV_M + hash % MAGLEV_M
}

/// One murmur3 round.
#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let mut k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    let h = h ^ k;
    h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// murmur3's finaliser.
#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::mem::{offset_of, size_of};

    use super::*;
    use crate::{ipv4_wire, port_wire, IPPROTO_TCP};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<Service>(), 12);
        assert_eq!(offset_of!(Service, target), 8);
        assert_eq!(offset_of!(Service, flags), 10);
        assert_eq!(size_of::<Backend>(), 12);
        assert_eq!(size_of::<ServiceCounters>(), 8 * (3 + DROP_REASON_SLOTS));
    }

    #[test]
    fn the_table_size_is_prime() {
        let m = MAGLEV_M;
        assert!((2..m)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d)));
        // The tables fit the array's u32 index.
        assert!((MAX_SERVICES as u64) * (MAGLEV_M as u64) < u32::MAX as u64);
    }

    #[test]
    fn flow_hashes_spread_over_source_ports() {
        // 20,000 flows from one client over 16 buckets: each within 10 %.
        let mut buckets = [0u32; 16];
        for sport in 20_000u16..40_000 {
            let k = CtKey::new(
                IPPROTO_TCP,
                ipv4_wire([192, 0, 2, 9]),
                port_wire(sport),
                ipv4_wire([198, 51, 100, 1]),
                port_wire(8080),
            );
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((1125..=1375).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn socket_hashes_spread_over_sequential_cookies() {
        // 30,000 sockets (cookies count up) to one VIP port over 3 replicas'
        // worth of buckets: each within 3 % of a third.
        let mut buckets = [0u32; 3];
        for cookie in 4_096u64..34_096 {
            let h = sock_hash(
                cookie,
                ipv4_wire([10, 0, 0, 100]),
                port_wire(80),
                IPPROTO_TCP,
            );
            buckets[(h % MAGLEV_M % 3) as usize] += 1;
        }
        for b in buckets {
            assert!((9_700..=10_300).contains(&b), "{buckets:?}");
        }
        // The port, the VIP and the protocol all matter.
        let h = |c, v, p, pr| sock_hash(c, ipv4_wire(v), port_wire(p), pr);
        let base = h(7, [10, 0, 0, 1], 80, IPPROTO_TCP);
        assert_ne!(base, h(8, [10, 0, 0, 1], 80, IPPROTO_TCP));
        assert_ne!(base, h(7, [10, 0, 0, 2], 80, IPPROTO_TCP));
        assert_ne!(base, h(7, [10, 0, 0, 1], 81, IPPROTO_TCP));
        assert_ne!(base, h(7, [10, 0, 0, 1], 80, crate::IPPROTO_UDP));
        assert_ne!(base, h(7 | (1 << 32), [10, 0, 0, 1], 80, IPPROTO_TCP));
    }

    #[test]
    fn indexes_stay_in_their_table() {
        assert_eq!(maglev_index(0, 0), 0);
        assert_eq!(maglev_index(3, MAGLEV_M), 3 * MAGLEV_M);
        assert_eq!(
            maglev_index(3, u32::MAX),
            3 * MAGLEV_M + u32::MAX % MAGLEV_M
        );
        assert!(maglev_index(MAX_SERVICES - 1, u32::MAX) < MAX_SERVICES * MAGLEV_M);
    }
}

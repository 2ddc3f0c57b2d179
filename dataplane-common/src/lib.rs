//! Types shared by the eBPF programs and the userspace control plane, and the
//! pure packet logic both sides use.
//!
//! Everything here is `no_std` and compiles for `bpfel-unknown-none` and for the
//! host, so `cargo test -p dataplane-common` covers the packet logic that the
//! kernel programs run. Map values are `#[repr(C)]` with explicit padding; the
//! `layout` tests pin their sizes and offsets, and [`LAYOUT_VERSION`] names the
//! pin directory so a daemon never reuses a pinned map of another layout.
#![no_std]

pub mod packet;

/// Bump whenever a map's key, value, type or capacity changes. The daemon pins
/// its maps under `<bpffs>/v<LAYOUT_VERSION>/` and also checks every pinned map's
/// key size, value size and capacity before reusing it.
pub const LAYOUT_VERSION: u32 = 5;

/// Capacity of `ENDPOINTS` and `IFACES`.
pub const MAX_ENDPOINTS: u32 = 16_384;

/// The daemon creates every host-side veth with an ifindex it picks from
/// `IFINDEX_BASE .. IFINDEX_BASE + MAX_ENDPOINTS` (the kernel accepts a
/// requested ifindex at link creation), so that `IFACES` is an array indexed
/// by [`iface_slot`]: an inlined lookup on every packet instead of a hash
/// lookup (about 20-25 ns of the program's cost, measured with
/// BPF_PROG_TEST_RUN). The base sits far above the indexes the kernel hands
/// out by itself.
pub const IFINDEX_BASE: u32 = 1 << 20;

/// The `IFACES` slot of a host-side veth, if its ifindex is in the range.
#[inline(always)]
pub const fn iface_slot(ifindex: u32) -> Option<u32> {
    let slot = ifindex.wrapping_sub(IFINDEX_BASE);
    if slot < MAX_ENDPOINTS {
        Some(slot)
    } else {
        None
    }
}
/// Capacity of `LINKS` (directed pairs allowed through `icc=false`).
pub const MAX_LINKS: u32 = 16_384;
/// Most networks one daemon manages (numeric ids 1..=MAX_NETWORKS).
pub const MAX_NETWORKS: u32 = 1_024;

/// An IPv4 address as the kernel sees it in a packet: the four wire bytes read
/// as a native `u32`. Map keys and values use this form on both sides.
pub type Ipv4Wire = u32;

/// Converts dotted-quad octets to the [`Ipv4Wire`] form.
#[inline(always)]
pub const fn ipv4_wire(octets: [u8; 4]) -> Ipv4Wire {
    u32::from_ne_bytes(octets)
}

/// The octets of an [`Ipv4Wire`] address.
#[inline(always)]
pub const fn ipv4_octets(ip: Ipv4Wire) -> [u8; 4] {
    ip.to_ne_bytes()
}

/// One container endpoint: the value of `ENDPOINTS` (keyed by the endpoint's
/// IPv4 address) and of `IFACES` (at the [`iface_slot`] of its host-side
/// veth; an empty slot has `ifindex` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// ifindex of the host-side veth (in the daemon's network namespace).
    pub ifindex: u32,
    /// The network's small numeric id (same network <=> same id).
    pub network_id: u32,
    /// The endpoint's IPv4 address ([`Ipv4Wire`]).
    pub ip: Ipv4Wire,
    /// MAC of the container side (`eth0` in the sandbox).
    pub mac: [u8; 6],
    /// MAC of the host side: the gateway's MAC as this container sees it.
    pub host_mac: [u8; 6],
    /// `EP_*` flags.
    pub flags: u32,
    /// For a remote endpoint ([`EP_REMOTE`]): the underlay address of the
    /// host it lives on, where its VXLAN goes ([`Ipv4Wire`]). 0 for an
    /// endpoint of this host.
    pub vtep: Ipv4Wire,
    /// The endpoint's network, inlined so that the per-packet path needs one
    /// lookup for the sender (`IFACES`) and one for the destination
    /// (`ENDPOINTS`), not a third for the network.
    pub net: Network,
}

/// The endpoint lives on another host of the cluster (or behind a static
/// VTEP): `ifindex` and `host_mac` are 0, `vtep` is that host's underlay
/// address, and frames for it are encapsulated in VXLAN with its network's
/// [`Network::vni`].
pub const EP_REMOTE: u32 = 1 << 0;
/// Written by the datapath itself from the VXLAN a static VTEP (a host
/// without our daemon, `--opt vtep=`) sent: the daemon's projection leaves
/// such entries alone, except to remove them with their network.
pub const EP_LEARNED: u32 = 1 << 1;
/// The endpoint is a service replica (a task's container, on this host or
/// another): `from_container` of its veth, and the decapsulation of what it
/// sends from another host, look its packets up in conntrack for the reply
/// of a per-packet VIP flow (source back to `VIP:port`). No other
/// endpoint's packets pay that lookup.
pub const EP_BACKEND: u32 = 1 << 2;

/// A value of `PEER_CACHE`, indexed by the sender's [`iface_slot`]: the
/// last destination it sent to that is an endpoint, and the `IFACES` slot
/// of that endpoint. The programs consult it before the `ENDPOINTS` hash
/// lookup (most of the cost of a same-network redirect: about 20 ns of 50,
/// measured with BPF_PROG_TEST_RUN) and trust it only when the `IFACES`
/// entry it points to still is `dst`'s endpoint ([`PeerCache::names`]), so a
/// stale or torn entry only costs a miss. Written by the programs only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCache {
    /// The destination ([`Ipv4Wire`]).
    pub dst: Ipv4Wire,
    /// The `IFACES` slot of its endpoint.
    pub slot: u32,
}

impl PeerCache {
    /// Whether `ep`, the `IFACES` entry at `self.slot`, is the endpoint of
    /// `dst` as this entry says: the address matches and the entry is live
    /// (its ifindex is the one of that slot; an emptied slot has 0).
    #[inline(always)]
    pub fn names(&self, dst: Ipv4Wire, ep: &Endpoint) -> bool {
        self.dst == dst
            && ep.ip == dst
            && matches!(iface_slot(ep.ifindex), Some(s) if s == self.slot)
    }
}

/// One network's subnet, gateway and flags, as inlined in every [`Endpoint`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// Subnet address ([`Ipv4Wire`]), already masked.
    pub subnet: Ipv4Wire,
    /// Subnet mask ([`Ipv4Wire`]).
    pub mask: Ipv4Wire,
    /// Gateway address ([`Ipv4Wire`]); answered by the ARP responder.
    pub gateway: Ipv4Wire,
    /// `NET_*` flags.
    pub flags: u32,
    /// The VXLAN network identifier of an overlay network (24 bits); 0 for
    /// a network of this host only.
    pub vni: u32,
}

/// `--internal`: nothing leaves the subnet.
pub const NET_INTERNAL: u32 = 1 << 0;
/// `icc=false`: containers of the network may not talk to each other, except
/// pairs joined by `--link` (listed in `LINKS`).
pub const NET_ICC_DISABLED: u32 = 1 << 1;

/// Key of `LINKS`: one allowed direction between two endpoints of an
/// `icc=false` network. The value is unused (`u32` 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub src: Ipv4Wire,
    pub dst: Ipv4Wire,
}

impl Network {
    /// Whether `ip` lies inside this network's subnet.
    #[inline(always)]
    pub const fn contains(&self, ip: Ipv4Wire) -> bool {
        ip & self.mask == self.subnet
    }
}

/// Why a packet was dropped. The value indexes [`Counters::drops`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than the headers its ethertype promises, or a bad IHL.
    Malformed = 1,
    /// Arrived on an interface that carries no endpoint.
    UnknownInterface = 2,
    /// Ethernet source is not the endpoint's own MAC.
    SpoofedMac = 3,
    /// IPv4 or ARP sender address is not the endpoint's own IP.
    SpoofedIp = 4,
    /// Destination is a container on another network.
    CrossNetwork = 5,
    /// `--internal` network and a destination outside its subnet.
    InternalNetwork = 6,
    /// Ethertype this datapath does not carry (IPv6 is not enabled yet).
    UnsupportedProtocol = 7,
    /// ARP request for an address that is neither the gateway nor a
    /// container of the same network.
    ArpUnknownTarget = 8,
    /// ARP that is not Ethernet/IPv4 or not a request/reply.
    BadArp = 9,
    /// Container to container on an `icc=false` network, not `--link`ed.
    IccDenied = 10,
    /// A later fragment of a flow that needs address translation, whose
    /// first fragment (the one with the ports) was not seen first.
    Fragment = 11,
    /// No free source port for a new translated flow (eight candidates taken).
    NatExhausted = 12,
    /// The conntrack map refused a new entry.
    CtFull = 13,
    /// A translated flow whose headers are cut short (IHL other than 5, or
    /// shorter than its L4 header).
    NatMalformed = 14,
    /// An IPv4 packet whose total length runs past the end of the frame
    /// (a total length below its own header length is [`Malformed`]).
    ///
    /// [`Malformed`]: DropReason::Malformed
    Ipv4Truncated = 15,
    /// A VLAN-tagged frame (802.1Q or 802.1ad) from a container, with the
    /// tag in the frame or in the skb's metadata: a tag a container chose
    /// must never reach another segment.
    VlanTagged = 16,
    /// A frame for a remote endpoint ([`EP_REMOTE`]) while this host has
    /// no tunnel (`TUNNEL[0]` not [`TUNNEL_ENABLED`]), or for one on a
    /// network without a VNI.
    TunnelDisabled = 17,
    /// The FIB has no way out of the underlay to the remote endpoint's VTEP.
    TunnelNoRoute = 18,
    /// An IPv4 packet for a remote endpoint larger than [`Tunnel::mtu`].
    /// With DF set it is answered with an ICMP fragmentation-needed
    /// carrying the tunnel MTU (the packet itself still counts here);
    /// without DF it is dropped (the datapath does not fragment).
    TunnelTooBig = 19,
    /// VXLAN to this host's VTEP from an underlay address not in `VTEPS`.
    VxlanUnknownVtep = 20,
    /// VXLAN whose outer or inner headers are cut short or disagree with
    /// the frame's length, an outer fragment, or an inner frame of a kind
    /// the overlay does not carry.
    VxlanMalformed = 21,
    /// A VXLAN header without the I flag, or with reserved bits set.
    VxlanBadFlags = 22,
    /// The inner destination is an endpoint of this host, but of another
    /// VNI (or of a network that is not an overlay).
    VxlanUnknownVni = 23,
    /// The inner destination is no endpoint of this host.
    VxlanNotLocal = 24,
    /// The inner source is not a remote endpoint of the destination's
    /// network behind the VTEP that sent the packet (with its MAC), and was
    /// not learnable (only static VTEPs' endpoints are learned).
    VxlanSpoofed = 25,
    /// A new connection to a service (its VIP or an ingress port) while it
    /// has no live replica.
    ServiceNoBackend = 26,
    /// A frame of one of our VLANs (from the parent) whose destination MAC
    /// is no container of that VLAN's network on this host.
    VlanNoEndpoint = 27,
    /// A frame of one of our VLANs with a second tag inside (QinQ into a
    /// network that carries untagged frames only).
    VlanStacked = 28,
    /// A frame whose ethertype says 802.1Q or 802.1ad that ends inside the
    /// tag.
    VlanTruncated = 29,
    /// A frame for a VLAN network's parent that the kernel refused
    /// (`bpf_skb_vlan_push`/`pop` failed, or the parent is gone).
    VlanFailed = 30,
}

/// Number of slots in [`Counters::drops`] (index 0 unused). Room to grow
/// without a layout change.
pub const DROP_REASON_SLOTS: usize = 32;
const _: () = assert!(DROP_REASON_SLOTS.is_power_of_two());

/// The `drops` index of `reason`, masked into the array: every code is
/// below [`DROP_REASON_SLOTS`] (a layout test says so), and the mask lets
/// the verifier see the bound on the very register that indexes (LLVM may
/// check one copy of a value and index with another).
#[inline(always)]
pub const fn drop_slot(reason: DropReason) -> usize {
    (reason as usize) & (DROP_REASON_SLOTS - 1)
}

impl DropReason {
    /// Every reason, in code order, for userspace to name counters.
    pub const ALL: [DropReason; 30] = [
        DropReason::Malformed,
        DropReason::UnknownInterface,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::CrossNetwork,
        DropReason::InternalNetwork,
        DropReason::UnsupportedProtocol,
        DropReason::ArpUnknownTarget,
        DropReason::BadArp,
        DropReason::IccDenied,
        DropReason::Fragment,
        DropReason::NatExhausted,
        DropReason::CtFull,
        DropReason::NatMalformed,
        DropReason::Ipv4Truncated,
        DropReason::VlanTagged,
        DropReason::TunnelDisabled,
        DropReason::TunnelNoRoute,
        DropReason::TunnelTooBig,
        DropReason::VxlanUnknownVtep,
        DropReason::VxlanMalformed,
        DropReason::VxlanBadFlags,
        DropReason::VxlanUnknownVni,
        DropReason::VxlanNotLocal,
        DropReason::VxlanSpoofed,
        DropReason::ServiceNoBackend,
        DropReason::VlanNoEndpoint,
        DropReason::VlanStacked,
        DropReason::VlanTruncated,
        DropReason::VlanFailed,
    ];

    /// The counter name shown by `dataplane stats`.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownInterface => "unknown_interface",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::CrossNetwork => "cross_network",
            DropReason::InternalNetwork => "internal_network",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::ArpUnknownTarget => "arp_unknown_target",
            DropReason::BadArp => "bad_arp",
            DropReason::IccDenied => "icc_denied",
            DropReason::Fragment => "fragment",
            DropReason::NatExhausted => "nat_port_exhausted",
            DropReason::CtFull => "conntrack_full",
            DropReason::NatMalformed => "nat_malformed",
            DropReason::Ipv4Truncated => "ipv4_truncated",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::TunnelDisabled => "tunnel_disabled",
            DropReason::TunnelNoRoute => "tunnel_no_route",
            DropReason::TunnelTooBig => "tunnel_too_big",
            DropReason::VxlanUnknownVtep => "vxlan_unknown_vtep",
            DropReason::VxlanMalformed => "vxlan_malformed",
            DropReason::VxlanBadFlags => "vxlan_bad_flags",
            DropReason::VxlanUnknownVni => "vxlan_unknown_vni",
            DropReason::VxlanNotLocal => "vxlan_not_local",
            DropReason::VxlanSpoofed => "vxlan_spoofed_source",
            DropReason::ServiceNoBackend => "service_no_backend",
            DropReason::VlanNoEndpoint => "vlan_no_endpoint",
            DropReason::VlanStacked => "vlan_stacked",
            DropReason::VlanTruncated => "vlan_truncated",
            DropReason::VlanFailed => "vlan_failed",
        }
    }
}

/// Per-program, per-CPU counters: the value of the `STATS` per-CPU array,
/// indexed by `PROG_*`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen.
    pub bytes: u64,
    /// Redirected straight into another endpoint's namespace.
    pub redirected: u64,
    /// Handed to the host stack (gateway, host, outside).
    pub passed: u64,
    /// ARP requests answered by the program itself.
    pub arp_replies: u64,
    /// Packets whose addresses or ports were rewritten (NAT).
    pub translated: u64,
    /// Conntrack entry pairs created (new translated flows).
    pub ct_created: u64,
    /// New flows that found no free NAT port (also counted as drops).
    pub alloc_failed: u64,
    /// Drops, indexed by [`DropReason`] code.
    pub drops: [u64; DROP_REASON_SLOTS],
}

impl Counters {
    pub const ZERO: Counters = Counters {
        packets: 0,
        bytes: 0,
        redirected: 0,
        passed: 0,
        arp_replies: 0,
        translated: 0,
        ct_created: 0,
        alloc_failed: 0,
        drops: [0; DROP_REASON_SLOTS],
    };
}

/// Index in `STATS` of the TC program on the host side of each endpoint veth
/// (the container's egress).
pub const PROG_FROM_CONTAINER: u32 = 0;
/// Index in `STATS` of the TC program on ingress of the host's own
/// interfaces (uplinks): published ports and replies to masqueraded flows.
pub const PROG_FROM_UPLINK: u32 = 1;
/// Index in `STATS` of the cgroup socket programs (host processes reaching
/// published ports without a proxy).
pub const PROG_SOCK: u32 = 2;
/// Index in `STATS` of the VLAN trunk half of `from_uplink`: tagged frames
/// of our VLAN networks arriving on their parent.
pub const PROG_VLAN_TRUNK: u32 = 3;
/// Number of program slots in `STATS`.
pub const PROG_SLOTS: u32 = 4;
/// Program names, by `PROG_*` index, as `dataplane stats` prints them.
pub const PROG_NAMES: [&str; 4] = ["from_container", "from_uplink", "sock_addr", "vlan_trunk"];

pub mod nat;
pub use nat::*;
pub mod tunnel;
pub use tunnel::*;
pub mod service;
pub use service::*;
pub mod vlan;
pub use vlan::{FdbKey, TrunkKey, VlanNet, NET_VLAN};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are #[repr(C)], contain only integers and byte arrays,
    // and have no implicit padding (checked by the layout tests).
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::Network {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::LinkKey {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::NatAddr {}
    unsafe impl aya::Pod for super::SockRevKey {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragPorts {}
    unsafe impl aya::Pod for super::PeerCache {}
    unsafe impl aya::Pod for super::Tunnel {}
    unsafe impl aya::Pod for super::Flood {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::Backend {}
    unsafe impl aya::Pod for super::ServiceCounters {}
    unsafe impl aya::Pod for super::VlanNet {}
    unsafe impl aya::Pod for super::TrunkKey {}
    unsafe impl aya::Pod for super::FdbKey {}
}

#[cfg(test)]
mod layout {
    extern crate std;
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn endpoint_layout() {
        assert_eq!(size_of::<Endpoint>(), 52);
        assert_eq!(offset_of!(Endpoint, ifindex), 0);
        assert_eq!(offset_of!(Endpoint, network_id), 4);
        assert_eq!(offset_of!(Endpoint, ip), 8);
        assert_eq!(offset_of!(Endpoint, mac), 12);
        assert_eq!(offset_of!(Endpoint, host_mac), 18);
        assert_eq!(offset_of!(Endpoint, flags), 24);
        assert_eq!(offset_of!(Endpoint, vtep), 28);
        assert_eq!(offset_of!(Endpoint, net), 32);
    }

    #[test]
    fn network_layout() {
        assert_eq!(size_of::<Network>(), 20);
        assert_eq!(offset_of!(Network, subnet), 0);
        assert_eq!(offset_of!(Network, mask), 4);
        assert_eq!(offset_of!(Network, gateway), 8);
        assert_eq!(offset_of!(Network, flags), 12);
        assert_eq!(offset_of!(Network, vni), 16);
    }

    #[test]
    fn tunnel_layouts() {
        assert_eq!(size_of::<Tunnel>(), 16);
        assert_eq!(size_of::<Flood>(), 4 + 4 * MAX_FLOOD);
    }

    #[test]
    fn link_key_layout() {
        assert_eq!(size_of::<LinkKey>(), 8);
        assert_eq!(offset_of!(LinkKey, dst), 4);
    }

    #[test]
    fn counters_layout() {
        assert_eq!(size_of::<Counters>(), 8 * (8 + DROP_REASON_SLOTS));
        assert_eq!(offset_of!(Counters, drops), 64);
    }

    #[test]
    fn nat_layouts() {
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, sport), 8);
        assert_eq!(offset_of!(CtKey, dport), 10);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(size_of::<CtEntry>(), 32);
        assert_eq!(offset_of!(CtEntry, backend), 24);
        assert_eq!(offset_of!(CtEntry, vtep), 28);
        assert_eq!(offset_of!(CtEntry, flags), 12);
        assert_eq!(offset_of!(CtEntry, seen), 14);
        assert_eq!(offset_of!(CtEntry, last_seen), 16);
        assert_eq!(size_of::<PortKey>(), 8);
        assert_eq!(offset_of!(PortKey, port), 4);
        assert_eq!(offset_of!(PortKey, proto), 6);
        assert_eq!(size_of::<NatAddr>(), 8);
        assert_eq!(size_of::<SockRevKey>(), 16);
        assert_eq!(offset_of!(SockRevKey, addr), 8);
        assert_eq!(size_of::<FragKey>(), 12);
        assert_eq!(offset_of!(FragKey, id), 8);
        assert_eq!(offset_of!(FragKey, proto), 10);
        assert_eq!(size_of::<FragPorts>(), 4);
    }

    #[test]
    fn peer_cache_layout() {
        assert_eq!(size_of::<PeerCache>(), 8);
        assert_eq!(offset_of!(PeerCache, slot), 4);
    }

    #[test]
    fn a_peer_cache_entry_is_trusted_only_while_ifaces_agrees() {
        let net = Network {
            subnet: ipv4_wire([172, 18, 0, 0]),
            mask: ipv4_wire([255, 255, 0, 0]),
            gateway: ipv4_wire([172, 18, 0, 1]),
            flags: 0,
            vni: 0,
        };
        let ep = Endpoint {
            ifindex: IFINDEX_BASE + 7,
            network_id: 1,
            ip: ipv4_wire([172, 18, 0, 3]),
            mac: [2, 0x42, 172, 18, 0, 3],
            host_mac: [0xe, 0, 0, 0, 0, 3],
            flags: 0,
            vtep: 0,
            net,
        };
        let c = PeerCache {
            dst: ep.ip,
            slot: 7,
        };
        assert!(c.names(ep.ip, &ep));
        // Another destination than the cached one.
        assert!(!c.names(ipv4_wire([172, 18, 0, 4]), &ep));
        // The slot now holds another endpoint (the peer went, a new one
        // came), or nothing (emptied: ifindex 0), or an entry of another slot.
        let other = Endpoint {
            ip: ipv4_wire([172, 18, 0, 9]),
            ..ep
        };
        assert!(!c.names(ep.ip, &other));
        let empty = Endpoint { ifindex: 0, ..ep };
        assert!(!c.names(ep.ip, &empty));
        let moved = Endpoint {
            ifindex: IFINDEX_BASE + 8,
            ..ep
        };
        assert!(!c.names(ep.ip, &moved));
        // A never-written (zero) entry names nothing real.
        let zero = PeerCache { dst: 0, slot: 0 };
        assert!(!zero.names(ep.ip, &ep));
    }

    #[test]
    fn drop_reasons_fit_and_are_unique() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "codes are dense from 1");
            assert!((*r as usize) < DROP_REASON_SLOTS);
            assert_eq!(drop_slot(*r), *r as usize);
        }
    }

    #[test]
    fn iface_slots_cover_exactly_the_range() {
        assert_eq!(iface_slot(IFINDEX_BASE), Some(0));
        assert_eq!(
            iface_slot(IFINDEX_BASE + MAX_ENDPOINTS - 1),
            Some(MAX_ENDPOINTS - 1)
        );
        assert_eq!(iface_slot(IFINDEX_BASE + MAX_ENDPOINTS), None);
        assert_eq!(iface_slot(IFINDEX_BASE - 1), None);
        assert_eq!(iface_slot(1), None);
        assert_eq!(iface_slot(0), None);
    }

    #[test]
    fn wire_form_round_trips() {
        let ip = ipv4_wire([172, 18, 0, 2]);
        assert_eq!(ipv4_octets(ip), [172, 18, 0, 2]);
        let net = Network {
            subnet: ipv4_wire([172, 18, 0, 0]),
            mask: ipv4_wire([255, 255, 0, 0]),
            gateway: ipv4_wire([172, 18, 0, 1]),
            flags: 0,
            vni: 0,
        };
        assert!(net.contains(ip));
        assert!(!net.contains(ipv4_wire([172, 19, 0, 2])));
    }
}

//! Layouts of the overlay's maps: this host's end of the tunnel, the hosts
//! (VTEPs) whose VXLAN it accepts, and the VTEPs a network's broadcasts go
//! to. Remote endpoints themselves are entries of `ENDPOINTS` with
//! [`crate::EP_REMOTE`] set.

use crate::Ipv4Wire;

/// The IANA port of VXLAN (RFC 7348), outer UDP destination.
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds in front of the inner Ethernet frame: outer
/// Ethernet (14), IPv4 (20), UDP (8), VXLAN (8).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Capacity of `VTEPS`.
pub const MAX_VTEPS: u32 = 4_096;
/// Static VTEPs one network floods its broadcasts to (`--opt vtep=`).
pub const MAX_FLOOD: usize = 8;
/// Slots of `TUNNEL` (one: this host's end).
pub const TUNNEL_SLOTS: u32 = 1;

/// Slots of `FLOOD_PROGS`, the program array `from_container` tail-calls
/// into (the daemon fills it when it loads the programs).
pub const FLOOD_PROG_SLOTS: u32 = 1;
/// The slot of the `flood` program in `FLOOD_PROGS`: it encapsulates a
/// container's ARP request for an unknown address of its overlay network
/// to every static VTEP of the network's `FLOOD` entry.
pub const FLOOD_PROG: u32 = 0;
/// `skb->mark` of a flooded copy whose VTEP had no resolved neighbour: the
/// copy is sent back into the ingress of the container's host-side veth
/// (which makes the kernel take it as the IPv4 frame it now is), where
/// `from_container` hands it to `flood` again, which sends it out with
/// `bpf_redirect_neigh`. A container cannot send a frame with a mark (the
/// veth clears it when the frame leaves the container's namespace).
pub const FLOOD_LOOP_MARK: u32 = 0x7d1f_a10d;

/// This host's end of the tunnel: the value of `TUNNEL[0]`, written by the
/// daemon when it joins a cluster (all zero otherwise: no overlay).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// The underlay address VXLAN leaves from and arrives at (`--advertise-addr`).
    pub addr: Ipv4Wire,
    /// ifindex of the underlay device that holds `addr`.
    pub ifindex: u32,
    /// The largest inner IPv4 packet the tunnel carries (underlay MTU minus
    /// [`VXLAN_OVERHEAD`]).
    pub mtu: u32,
    /// `TUNNEL_*` flags.
    pub flags: u32,
}

/// The tunnel is configured: encapsulate and decapsulate.
pub const TUNNEL_ENABLED: u32 = 1 << 0;

/// Value of `VTEPS` (keyed by a host's underlay address): `VTEP_*` flags.
/// Only VXLAN whose outer source is a key of `VTEPS` is accepted.
pub type VtepFlags = u32;
/// A host of the cluster (runs our daemon; its endpoints come from the store).
pub const VTEP_NODE: VtepFlags = 1 << 0;
/// A static VTEP declared with `--opt vtep=`: no daemon; its endpoints are
/// learned from the VXLAN it sends.
pub const VTEP_STATIC: VtepFlags = 1 << 1;

/// Value of `FLOOD` (keyed by a network's numeric id): the static VTEPs that
/// the network's broadcasts and frames for unknown addresses go to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flood {
    /// How many of `vteps` are set.
    pub len: u32,
    pub vteps: [Ipv4Wire; MAX_FLOOD],
}

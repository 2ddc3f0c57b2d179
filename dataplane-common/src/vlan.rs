//! VLAN networks without the kernel's 8021q: the maps that tie a parent
//! interface's VLAN IDs to networks and their containers, and the pure
//! decisions both ends of such a network make.
//!
//! A VLAN network (`-d macvlan -o parent=eth0.100`, or `-o vlan=100`) gives
//! each container a veth pair like the bridge driver's. `from_container`
//! switches its frames as a per-VLAN learning-free L2 switch would: to a
//! container of the same network on this host by destination MAC
//! (`FDB`), or out of the parent with the network's 802.1Q tag pushed.
//! `from_uplink` on the parent pops the tag of a frame whose VID belongs to
//! one of our networks (`TRUNKS`) and hands it to the container with that
//! MAC, or to all of them for broadcast and multicast. A VID no network of
//! ours claims is left to the host untouched.

use crate::packet::eth;

/// Most containers of one VLAN network on one host (broadcast is copied
/// to each of them in a bounded loop).
pub const MAX_VLAN_MEMBERS: usize = 64;
/// Capacity of `FDB`.
pub const MAX_FDB: u32 = 16_384;

/// The network is a VLAN network: its frames leave through the parent
/// with a tag, and `from_container` switches them by MAC (`NET_*` flag of
/// [`crate::Network`]).
pub const NET_VLAN: u32 = 1 << 2;

/// Value of `VLANS`, indexed by the network's numeric id: where the
/// network's frames leave and which local containers get its broadcast.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanNet {
    /// ifindex of the parent interface (0: the slot is empty).
    pub parent: u32,
    /// The 802.1Q tag control information pushed on the way out: the VID
    /// in the low 12 bits, priority 0.
    pub tci: u32,
    /// How many of `members` are in use.
    pub count: u32,
    /// Host-side veth ifindexes of the network's containers on this host.
    pub members: [u32; MAX_VLAN_MEMBERS],
}

impl VlanNet {
    pub const EMPTY: VlanNet = VlanNet {
        parent: 0,
        tci: 0,
        count: 0,
        members: [0; MAX_VLAN_MEMBERS],
    };
}

/// Key of `TRUNKS`: a parent interface and a VID on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TrunkKey {
    pub ifindex: u32,
    pub vid: u32,
}

/// Key of `FDB`: a container's MAC on a VLAN network (numeric id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdbKey {
    pub net: u32,
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

impl FdbKey {
    #[inline(always)]
    pub const fn new(net: u32, mac: [u8; 6]) -> Self {
        FdbKey {
            net,
            mac,
            pad: [0; 2],
        }
    }
}

/// Bytes of an 802.1Q or 802.1ad tag in a frame.
pub const TAG_LEN: usize = 4;
/// An Ethernet header with one tag in the frame.
pub const TAGGED_HLEN: usize = eth::HLEN + TAG_LEN;
/// The VID bits of a TCI.
pub const VID_MASK: u16 = 0x0fff;

/// The outer tag of a frame on a trunk, wherever the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// No tag: the host's own traffic.
    None,
    /// A tag of ethertype `proto` (802.1Q or 802.1ad) with `tci`; `inner`
    /// is the ethertype it carries, when known (a tag in the frame).
    Tagged { proto: u16, tci: u16 },
    /// The frame says it is tagged but ends inside the tag.
    Truncated,
}

impl Tag {
    /// The tag of a frame of `len` bytes whose first bytes are `head` (as
    /// many as the frame has, up to [`TAGGED_HLEN`]), given the tag the
    /// kernel already moved into the skb (`meta`: `skb->vlan_present`,
    /// `vlan_proto`, `vlan_tci`; the frame then starts with what was inside).
    #[inline(always)]
    pub fn of(head: &[u8; eth::HLEN], len: u32, meta: Option<(u16, u16)>) -> Tag {
        if let Some((proto, tci)) = meta {
            return Tag::Tagged { proto, tci };
        }
        if !eth::is_vlan(eth::proto(head)) {
            return Tag::None;
        }
        if (len as usize) < TAGGED_HLEN {
            return Tag::Truncated;
        }
        // The TCI is read by the caller from the frame (it lies past the
        // 14 bytes it handed over).
        Tag::Tagged {
            proto: eth::proto(head),
            tci: 0,
        }
    }
}

/// What the trunk side does with a tagged frame whose VID is ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrunkVerdict {
    /// To the one container with the destination MAC.
    Deliver(u32),
    /// A copy to every container of the network.
    Flood,
    /// Dropped for the reason given.
    Drop(crate::DropReason),
}

/// Whether `mac` is a group address (broadcast or multicast).
#[inline(always)]
pub const fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// The trunk's decision for a frame with destination `dst` once its tag is
/// known to be one of our networks': `local` is the `FDB` hit for `dst`,
/// `inner` the ethertype under the tag.
#[inline(always)]
pub fn decide_trunk(dst: &[u8; 6], inner: u16, local: Option<u32>) -> TrunkVerdict {
    if eth::is_vlan(inner) {
        // A second tag inside ours would reach the container still tagged.
        return TrunkVerdict::Drop(crate::DropReason::VlanStacked);
    }
    if is_group(dst) {
        return TrunkVerdict::Flood;
    }
    match local {
        Some(i) => TrunkVerdict::Deliver(i),
        None => TrunkVerdict::Drop(crate::DropReason::VlanNoEndpoint),
    }
}

/// What a container's frame on a VLAN network does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressVerdict {
    /// Straight to a container of the same network on this host.
    Local(u32),
    /// Out of the parent, tagged.
    Out,
    /// A copy to the other local containers, then out of the parent.
    Flood,
}

/// The container side's decision for destination `dst`: `local` is the
/// `FDB` hit for it.
#[inline(always)]
pub fn decide_egress(dst: &[u8; 6], local: Option<u32>) -> EgressVerdict {
    if is_group(dst) {
        return EgressVerdict::Flood;
    }
    match local {
        Some(i) => EgressVerdict::Local(i),
        None => EgressVerdict::Out,
    }
}

/// Whether `src` may send from an endpoint whose address is `own`: its own
/// address, or none yet (a DHCP client's DISCOVER, an ARP probe).
#[inline(always)]
pub const fn sender_ok(src: crate::Ipv4Wire, own: crate::Ipv4Wire) -> bool {
    src == own || src == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DropReason;

    fn head(proto: u16) -> [u8; eth::HLEN] {
        let mut f = [0u8; eth::HLEN];
        f[eth::PROTO..].copy_from_slice(&proto.to_be_bytes());
        f
    }

    #[test]
    fn tags_in_metadata_or_in_the_frame() {
        assert_eq!(Tag::of(&head(eth::P_IPV4), 60, None), Tag::None);
        assert_eq!(
            Tag::of(&head(eth::P_IPV4), 60, Some((eth::P_8021Q, 100))),
            Tag::Tagged {
                proto: eth::P_8021Q,
                tci: 100
            }
        );
        assert!(matches!(
            Tag::of(&head(eth::P_8021AD), 60, None),
            Tag::Tagged {
                proto: eth::P_8021AD,
                ..
            }
        ));
        for len in 14..18 {
            assert_eq!(
                Tag::of(&head(eth::P_8021Q), len, None),
                Tag::Truncated,
                "{len}"
            );
        }
        assert_ne!(Tag::of(&head(eth::P_8021Q), 18, None), Tag::Truncated);
    }

    #[test]
    fn trunk_delivers_floods_or_drops() {
        let bcast = [0xff; 6];
        let mcast = [0x01, 0, 0x5e, 0, 0, 1];
        let uni = [0x02, 0, 0, 0, 0, 1];
        assert_eq!(decide_trunk(&bcast, eth::P_ARP, None), TrunkVerdict::Flood);
        assert_eq!(decide_trunk(&mcast, eth::P_IPV4, None), TrunkVerdict::Flood);
        assert_eq!(
            decide_trunk(&uni, eth::P_IPV4, Some(7)),
            TrunkVerdict::Deliver(7)
        );
        assert_eq!(
            decide_trunk(&uni, eth::P_IPV4, None),
            TrunkVerdict::Drop(DropReason::VlanNoEndpoint)
        );
        assert_eq!(
            decide_trunk(&uni, eth::P_8021Q, Some(7)),
            TrunkVerdict::Drop(DropReason::VlanStacked)
        );
    }

    #[test]
    fn egress_is_local_out_or_flood() {
        assert_eq!(decide_egress(&[0xff; 6], Some(3)), EgressVerdict::Flood);
        assert_eq!(
            decide_egress(&[2, 0, 0, 0, 0, 9], Some(3)),
            EgressVerdict::Local(3)
        );
        assert_eq!(decide_egress(&[2, 0, 0, 0, 0, 9], None), EgressVerdict::Out);
        assert!(sender_ok(0, 5) && sender_ok(5, 5) && !sender_ok(6, 5));
    }
}

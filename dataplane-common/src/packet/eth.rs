//! Ethernet II header.

use crate::DropReason;

/// Header length.
pub const HLEN: usize = 14;
/// Offset of the destination MAC.
pub const DST: usize = 0;
/// Offset of the source MAC.
pub const SRC: usize = 6;
/// Offset of the ethertype (big endian).
pub const PROTO: usize = 12;

pub const P_IPV4: u16 = 0x0800;
pub const P_ARP: u16 = 0x0806;
pub const P_IPV6: u16 = 0x86dd;
/// 802.1Q VLAN tag (C-tag).
pub const P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (S-tag, the outer tag of QinQ).
pub const P_8021AD: u16 = 0x88a8;

/// Whether `proto` is the ethertype of a VLAN tag.
#[inline(always)]
pub const fn is_vlan(proto: u16) -> bool {
    proto == P_8021Q || proto == P_8021AD
}

/// The ethertype a switch port acts on, refusing tagged frames: a tag in
/// the frame itself (802.1Q or 802.1ad, whatever is inside), or one the
/// kernel already took out of the frame into the skb's metadata
/// (`tag_in_metadata`: `skb->vlan_present`, which is where a received
/// frame's outer tag is by the time TC ingress runs, the frame then showing
/// the inner ethertype).
#[inline(always)]
pub fn untagged_proto(frame: &[u8; HLEN], tag_in_metadata: bool) -> Result<u16, DropReason> {
    let proto = proto(frame);
    if tag_in_metadata {
        return Err(DropReason::VlanTagged);
    }
    // The ethertypes the switch carries first: they settle it in one
    // compare each on the per-packet path.
    match proto {
        P_IPV4 | P_ARP => Ok(proto),
        p if is_vlan(p) => Err(DropReason::VlanTagged),
        p => Ok(p),
    }
}

/// The ethertype of a frame that has at least a full Ethernet header.
#[inline(always)]
pub fn proto(frame: &[u8; HLEN]) -> u16 {
    super::load::be16(frame, PROTO)
}

/// Whether the source MAC is `mac`.
#[inline(always)]
pub fn src_is(frame: &[u8; HLEN], mac: &[u8; 6]) -> bool {
    super::load::mac_eq(frame, SRC, mac)
}

/// Whether the destination MAC is `mac`.
#[inline(always)]
pub fn dst_is(frame: &[u8; HLEN], mac: &[u8; 6]) -> bool {
    super::load::mac_eq(frame, DST, mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u16) -> [u8; HLEN] {
        let mut f = [0u8; HLEN];
        f[PROTO..].copy_from_slice(&proto.to_be_bytes());
        f
    }

    #[test]
    fn tags_in_the_frame_or_in_metadata_are_refused() {
        assert_eq!(untagged_proto(&frame(P_IPV4), false), Ok(P_IPV4));
        assert_eq!(untagged_proto(&frame(P_ARP), false), Ok(P_ARP));
        for tag in [P_8021Q, P_8021AD] {
            assert_eq!(
                untagged_proto(&frame(tag), false),
                Err(DropReason::VlanTagged),
                "{tag:#x} in the frame"
            );
        }
        // The kernel moved the tag into the skb: the frame looks untagged.
        for inner in [P_IPV4, P_ARP, P_8021Q] {
            assert_eq!(
                untagged_proto(&frame(inner), true),
                Err(DropReason::VlanTagged),
                "{inner:#x} under a tag in metadata"
            );
        }
    }

    #[test]
    fn macs_compare() {
        let mut f = frame(P_IPV4);
        f[SRC..SRC + 6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        assert!(src_is(&f, &[2, 0, 0, 0, 0, 1]));
        assert!(!src_is(&f, &[2, 0, 0, 0, 0, 2]));
        f[DST..DST + 6].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
        assert!(dst_is(&f, &[2, 0, 0, 0, 0, 3]));
        assert!(!dst_is(&f, &[2, 0, 0, 0, 0, 1]));
    }
}

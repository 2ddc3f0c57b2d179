//! Ethernet II header.

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

/// The source MAC.
#[inline(always)]
pub fn src(frame: &[u8; HLEN]) -> [u8; 6] {
    [
        frame[SRC],
        frame[SRC + 1],
        frame[SRC + 2],
        frame[SRC + 3],
        frame[SRC + 4],
        frame[SRC + 5],
    ]
}

/// The destination MAC.
#[inline(always)]
pub fn dst(frame: &[u8; HLEN]) -> [u8; 6] {
    [
        frame[DST],
        frame[DST + 1],
        frame[DST + 2],
        frame[DST + 3],
        frame[DST + 4],
        frame[DST + 5],
    ]
}

/// Overwrites the destination MAC.
#[inline(always)]
pub fn set_dst(frame: &mut [u8; HLEN], mac: &[u8; 6]) {
    let mut i = 0;
    while i < 6 {
        frame[DST + i] = mac[i];
        i += 1;
    }
}

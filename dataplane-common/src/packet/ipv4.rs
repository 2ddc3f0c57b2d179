//! IPv4 header fields the switch reads.

use super::eth;
use crate::{DropReason, Ipv4Wire};

/// Length of an Ethernet frame carrying a minimal (IHL 5) IPv4 header.
pub const FRAME_MIN: usize = eth::HLEN + 20;
/// Offset in the frame of the total length (big endian).
pub const TOT_LEN: usize = eth::HLEN + 2;

/// Source and destination of an IPv4 frame (Ethernet header included), after
/// checking the version and the header length field.
#[inline(always)]
pub fn addrs(frame: &[u8; FRAME_MIN]) -> Result<(Ipv4Wire, Ipv4Wire), DropReason> {
    let vihl = frame[eth::HLEN];
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(DropReason::Malformed);
    }
    Ok((
        super::load::ne32(frame, eth::HLEN + 12),
        super::load::ne32(frame, eth::HLEN + 16),
    ))
}

/// Source and destination of an IPv4 frame of `frame_len` bytes (Ethernet
/// header included, the whole skb), after checking its header as a router
/// would (RFC 1812 5.2.2, the kernel's `ip_rcv_core`): version 4, IHL at
/// least 5, a total length at least the header's own length
/// ([`DropReason::Malformed`]) and no larger than what the frame holds
/// ([`DropReason::Ipv4Truncated`]). Bytes past the total length are link
/// padding and allowed. `gso` is asked only for a total length of 0, which a
/// GSO packet larger than 64 KiB carries (BIG TCP: the kernel then takes the
/// skb's length, see `iph_totlen`).
#[inline(always)]
pub fn checked_addrs(
    frame: &[u8; FRAME_MIN],
    frame_len: u32,
    gso: impl FnOnce() -> bool,
) -> Result<(Ipv4Wire, Ipv4Wire), DropReason> {
    let addrs = addrs(frame)?;
    let tot = super::load::be16(frame, TOT_LEN) as u32;
    if tot == 0 && gso() {
        return Ok(addrs);
    }
    let ihl = (frame[eth::HLEN] & 0x0f) as u32 * 4;
    if tot < ihl {
        return Err(DropReason::Malformed);
    }
    // `tot` is at most 65535: adding cannot overflow, and no subtraction
    // can underflow for a frame shorter than its Ethernet header.
    if tot + eth::HLEN as u32 > frame_len {
        return Err(DropReason::Ipv4Truncated);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipv4_wire;

    /// An IPv4 header (IHL `ihl`, total length `tot`) in a frame.
    fn frame(ihl: u8, tot: u16) -> [u8; FRAME_MIN] {
        let mut f = [0u8; FRAME_MIN];
        f[12..14].copy_from_slice(&eth::P_IPV4.to_be_bytes());
        f[eth::HLEN] = 0x40 | ihl;
        f[TOT_LEN..TOT_LEN + 2].copy_from_slice(&tot.to_be_bytes());
        f[26..30].copy_from_slice(&[172, 18, 0, 2]);
        f[30..34].copy_from_slice(&[172, 18, 0, 3]);
        f
    }

    const ADDRS: (Ipv4Wire, Ipv4Wire) = (ipv4_wire([172, 18, 0, 2]), ipv4_wire([172, 18, 0, 3]));

    #[test]
    fn total_length_must_fit_the_frame() {
        let no_gso = || false;
        // 20-byte header and 12 bytes of UDP: a 46-byte frame.
        assert_eq!(checked_addrs(&frame(5, 32), 46, no_gso), Ok(ADDRS));
        // Padded to the 60-byte Ethernet minimum: the padding is no error.
        assert_eq!(checked_addrs(&frame(5, 32), 60, no_gso), Ok(ADDRS));
        // One byte more than the frame holds.
        assert_eq!(
            checked_addrs(&frame(5, 33), 46, no_gso),
            Err(DropReason::Ipv4Truncated)
        );
        assert_eq!(
            checked_addrs(&frame(5, u16::MAX), 46, no_gso),
            Err(DropReason::Ipv4Truncated)
        );
        // A frame_len below the Ethernet header cannot underflow.
        assert_eq!(
            checked_addrs(&frame(5, 20), 0, no_gso),
            Err(DropReason::Ipv4Truncated)
        );
    }

    #[test]
    fn total_length_below_the_header_is_malformed() {
        let no_gso = || false;
        for tot in [0, 1, 19] {
            assert_eq!(
                checked_addrs(&frame(5, tot), 60, no_gso),
                Err(DropReason::Malformed),
                "total length {tot}"
            );
        }
        assert_eq!(checked_addrs(&frame(5, 20), 60, no_gso), Ok(ADDRS));
        // With options the header is longer than 20 bytes.
        assert_eq!(
            checked_addrs(&frame(6, 20), 60, no_gso),
            Err(DropReason::Malformed)
        );
        assert_eq!(checked_addrs(&frame(6, 24), 60, no_gso), Ok(ADDRS));
        // IHL below 5 or another version, whatever the length.
        for ihl in 0..5 {
            assert_eq!(
                checked_addrs(&frame(ihl, 32), 60, no_gso),
                Err(DropReason::Malformed),
                "IHL {ihl}"
            );
        }
    }

    #[test]
    fn a_zero_total_length_is_only_accepted_from_gso() {
        assert_eq!(checked_addrs(&frame(5, 0), 70_000, || true), Ok(ADDRS));
        // GSO is asked only for a zero length.
        let asked = core::cell::Cell::new(false);
        let r = checked_addrs(&frame(5, 32), 46, || {
            asked.set(true);
            true
        });
        assert_eq!(r, Ok(ADDRS));
        assert!(!asked.get());
    }
}

//! IPv4 header fields the switch reads.

use super::eth;
use crate::{DropReason, Ipv4Wire};

/// Length of an Ethernet frame carrying a minimal (IHL 5) IPv4 header.
pub const FRAME_MIN: usize = eth::HLEN + 20;

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

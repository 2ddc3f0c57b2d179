//! ARP for Ethernet/IPv4 (RFC 826), and the in-place reply the responder sends.

use super::eth;
use crate::{DropReason, Ipv4Wire};

/// Ethernet header plus the 28-byte Ethernet/IPv4 ARP body.
pub const FRAME_LEN: usize = eth::HLEN + 28;
pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

const HTYPE: usize = eth::HLEN;
const PTYPE: usize = eth::HLEN + 2;
const HLEN: usize = eth::HLEN + 4;
const PLEN: usize = eth::HLEN + 5;
const OP: usize = eth::HLEN + 6;
const SHA: usize = eth::HLEN + 8;
const SPA: usize = eth::HLEN + 14;
const THA: usize = eth::HLEN + 18;
const TPA: usize = eth::HLEN + 24;

/// The fields of an Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Wire,
    pub tpa: Ipv4Wire,
}

#[inline(always)]
fn mac_at(frame: &[u8; FRAME_LEN], at: usize) -> [u8; 6] {
    [
        frame[at],
        frame[at + 1],
        frame[at + 2],
        frame[at + 3],
        frame[at + 4],
        frame[at + 5],
    ]
}

#[inline(always)]
fn ip_at(frame: &[u8; FRAME_LEN], at: usize) -> Ipv4Wire {
    u32::from_ne_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]])
}

/// Parses an ARP frame, refusing anything but Ethernet/IPv4 requests and replies.
#[inline(always)]
pub fn parse(frame: &[u8; FRAME_LEN]) -> Result<Arp, DropReason> {
    let htype = u16::from_be_bytes([frame[HTYPE], frame[HTYPE + 1]]);
    let ptype = u16::from_be_bytes([frame[PTYPE], frame[PTYPE + 1]]);
    let op = u16::from_be_bytes([frame[OP], frame[OP + 1]]);
    if htype != 1 || ptype != eth::P_IPV4 || frame[HLEN] != 6 || frame[PLEN] != 4 {
        return Err(DropReason::BadArp);
    }
    if op != OP_REQUEST && op != OP_REPLY {
        return Err(DropReason::BadArp);
    }
    Ok(Arp {
        op,
        sha: mac_at(frame, SHA),
        spa: ip_at(frame, SPA),
        tpa: ip_at(frame, TPA),
    })
}

/// Turns a request, in place, into the reply `answer_mac is-at answer_ip`,
/// addressed back to the requester.
#[inline(always)]
pub fn write_reply(frame: &mut [u8; FRAME_LEN], answer_mac: &[u8; 6], answer_ip: Ipv4Wire) {
    let requester_mac = mac_at(frame, SHA);
    let requester_ip = ip_at(frame, SPA).to_ne_bytes();
    let answer_ip = answer_ip.to_ne_bytes();
    let mut i = 0;
    while i < 6 {
        frame[eth::DST + i] = requester_mac[i];
        frame[eth::SRC + i] = answer_mac[i];
        frame[THA + i] = requester_mac[i];
        frame[SHA + i] = answer_mac[i];
        i += 1;
    }
    let mut i = 0;
    while i < 4 {
        frame[TPA + i] = requester_ip[i];
        frame[SPA + i] = answer_ip[i];
        i += 1;
    }
    frame[OP] = 0;
    frame[OP + 1] = OP_REPLY as u8;
}

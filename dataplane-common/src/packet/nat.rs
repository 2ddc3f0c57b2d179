//! Reading the flow of an IPv4 packet for translation: its [`CtKey`], the
//! offsets of the fields a rewrite touches, and the flow an ICMP error is
//! about.

use super::{eth, load};
use crate::{CtKey, DropReason, PortWire, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

/// Offset of the IPv4 header in a frame.
pub const IP: usize = eth::HLEN;
/// Offset of the L4 header (translation handles IHL 5 only).
pub const L4: usize = IP + 20;
/// Frame bytes holding the ports (or the ICMP type, code, checksum and id).
pub const L4_FRAME: usize = L4 + 8;
/// Frame bytes holding a minimal TCP header (flags and checksum included).
pub const TCP_FRAME: usize = L4 + 20;
/// Frame bytes holding an ICMP error's quoted IPv4 header and 8 L4 bytes.
pub const ICMP_ERR_FRAME: usize = L4 + 8 + 20 + 8;
/// Offset of the quoted IPv4 header of an ICMP error.
pub const INNER_IP: usize = L4 + 8;
/// Offset of the quoted L4 header of an ICMP error.
pub const INNER_L4: usize = INNER_IP + 20;

/// Offset of the IPv4 header checksum.
pub const IP_CSUM: usize = IP + 10;
pub const IP_SADDR: usize = IP + 12;
pub const IP_DADDR: usize = IP + 16;
pub const IP_TTL: usize = IP + 8;
/// Offsets, from the L4 header, of the checksum of TCP, UDP and ICMP.
pub const TCP_CSUM: usize = 16;
pub const UDP_CSUM: usize = 6;
pub const ICMP_CSUM: usize = 2;
/// Offset, from the ICMP header, of the echo identifier.
pub const ICMP_ID: usize = 4;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// What kind of packet a flow key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
    /// ICMP echo request (`sport` is the identifier).
    EchoRequest,
    /// ICMP echo reply (`dport` is the identifier).
    EchoReply,
    /// ICMP destination unreachable, time exceeded or parameter problem:
    /// the flow is read from the quoted header ([`icmp_error_key`]).
    IcmpError,
    /// A later fragment ([`Frag::Later`]): no L4 header, so only its
    /// addresses are translated; its ports come from the first fragment
    /// (`FRAGS`). [`flow`] never returns it.
    LaterFragment,
}

/// The flow of a packet, if translation can handle its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: CtKey,
    pub kind: Kind,
}

/// Header facts needed before reading ports: protocol, whether the packet is
/// a fragment, and whether the header has options.
#[inline(always)]
pub fn proto(f: &[u8; L4]) -> u8 {
    f[IP + 9]
}

/// Where a packet stands in fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    /// A whole datagram.
    Whole,
    /// The first fragment: it carries the L4 header.
    First,
    /// A later fragment: no L4 header; its flow is the first fragment's.
    Later,
}

/// Where the packet stands in fragmentation (more-fragments bit and offset).
#[inline(always)]
pub fn fragment(f: &[u8; L4]) -> Frag {
    let v = load::be16(f, IP + 6);
    if v & 0x1fff != 0 {
        Frag::Later
    } else if v & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::Whole
    }
}

/// The `FRAGS` key of a fragment.
#[inline(always)]
pub fn frag_key(f: &[u8; L4]) -> crate::FragKey {
    crate::FragKey {
        saddr: load::ne32(f, IP_SADDR),
        daddr: load::ne32(f, IP_DADDR),
        id: load::ne16(f, IP + 4),
        proto: f[IP + 9],
        _pad: 0,
    }
}

/// Reads the flow of an IPv4 frame with a 20-byte header. `Ok(None)` for a
/// protocol translation does not carry (it goes on untranslated); errors
/// for headers with options and for later fragments (no L4 header: their
/// flow comes from `FRAGS`, see [`fragment`]). A first fragment reads like a
/// whole datagram.
#[inline(always)]
pub fn flow(f: &[u8; L4_FRAME]) -> Result<Option<Flow>, DropReason> {
    if f[IP] != 0x45 {
        return Err(DropReason::NatMalformed);
    }
    let p = f[IP + 9];
    let saddr = load::ne32(f, IP_SADDR);
    let daddr = load::ne32(f, IP_DADDR);
    let (sport, dport, kind): (PortWire, PortWire, Kind) = match p {
        IPPROTO_TCP | IPPROTO_UDP => (
            load::ne16(f, L4),
            load::ne16(f, L4 + 2),
            if p == IPPROTO_TCP {
                Kind::Tcp
            } else {
                Kind::Udp
            },
        ),
        IPPROTO_ICMP => match f[L4] {
            ICMP_ECHO_REQUEST => (load::ne16(f, L4 + ICMP_ID), 0, Kind::EchoRequest),
            ICMP_ECHO_REPLY => (0, load::ne16(f, L4 + ICMP_ID), Kind::EchoReply),
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                (0, 0, Kind::IcmpError)
            }
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    // Checked after the protocol so that protocols we pass untouched are not
    // refused for being fragmented.
    if load::be16(f, IP + 6) & 0x1fff != 0 {
        return Err(DropReason::Fragment);
    }
    Ok(Some(Flow {
        key: CtKey::new(p, saddr, sport, daddr, dport),
        kind,
    }))
}

/// The TCP flags of a frame already known to be TCP.
#[inline(always)]
pub fn tcp_flags(f: &[u8; TCP_FRAME]) -> u8 {
    f[L4 + 13]
}

/// For an ICMP error, the key under which the flow it reports on was seen
/// *arriving* here: the quoted packet is one this host sent (`a -> b`), so
/// the flow's packets from `b` carry the key `b -> a`.
#[inline(always)]
pub fn icmp_error_key(f: &[u8; ICMP_ERR_FRAME]) -> Result<CtKey, DropReason> {
    if f[INNER_IP] != 0x45 {
        return Err(DropReason::NatMalformed);
    }
    let p = f[INNER_IP + 9];
    let saddr = load::ne32(f, INNER_IP + 12);
    let daddr = load::ne32(f, INNER_IP + 16);
    let (sport, dport) = match p {
        IPPROTO_TCP | IPPROTO_UDP => (load::ne16(f, INNER_L4), load::ne16(f, INNER_L4 + 2)),
        IPPROTO_ICMP if f[INNER_L4] == ICMP_ECHO_REQUEST => (load::ne16(f, INNER_L4 + ICMP_ID), 0),
        IPPROTO_ICMP if f[INNER_L4] == ICMP_ECHO_REPLY => (0, load::ne16(f, INNER_L4 + ICMP_ID)),
        _ => return Err(DropReason::NatMalformed),
    };
    Ok(CtKey::new(p, saddr, sport, daddr, dport).reversed())
}

/// Offset from the L4 header of the checksum of `proto`.
#[inline(always)]
pub const fn l4_csum_offset(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => TCP_CSUM,
        IPPROTO_UDP => UDP_CSUM,
        _ => ICMP_CSUM,
    }
}

/// RFC 1624 incremental update of a ones'-complement checksum for a 16-bit
/// field changing from `old` to `new` (all in wire order read as native).
/// The programs use the kernel's checksum helpers (which also handle
/// offloaded checksums); this is what the host tests check results against.
pub fn csum_update16(csum: u16, old: u16, new: u16) -> u16 {
    let c = u16::from_be(csum);
    let mut sum = (!c as u32) + (!u16::from_be(old) as u32) + u16::from_be(new) as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be()
}

/// Ones'-complement sum of `data` as 16-bit big-endian words (host tests).
pub fn csum_fold(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        sum += (data[i] as u32) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{ipv4_wire, port_wire};

    fn frame(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = std::vec![0u8; L4];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[IP] = 0x45;
        f[IP + 8] = 64;
        f[IP + 9] = proto;
        f[IP_SADDR..IP_SADDR + 4].copy_from_slice(&[172, 17, 0, 2]);
        f[IP_DADDR..IP_DADDR + 4].copy_from_slice(&[192, 0, 2, 9]);
        f.extend_from_slice(l4);
        f.resize(f.len().max(ICMP_ERR_FRAME), 0);
        f
    }

    fn head<const N: usize>(f: &[u8]) -> [u8; N] {
        f[..N].try_into().unwrap()
    }

    #[test]
    fn tcp_and_udp_flows_carry_their_ports() {
        let mut l4 = std::vec![0u8; 20];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&80u16.to_be_bytes());
        l4[13] = 0x02;
        let f = frame(IPPROTO_TCP, &l4);
        let fl = flow(&head(&f)).unwrap().unwrap();
        assert_eq!(fl.kind, Kind::Tcp);
        assert_eq!(
            fl.key,
            CtKey::new(
                IPPROTO_TCP,
                ipv4_wire([172, 17, 0, 2]),
                port_wire(40000),
                ipv4_wire([192, 0, 2, 9]),
                port_wire(80)
            )
        );
        assert_eq!(tcp_flags(&head(&f)), 0x02);
        let f = frame(IPPROTO_UDP, &l4[..8]);
        assert_eq!(flow(&head(&f)).unwrap().unwrap().kind, Kind::Udp);
    }

    #[test]
    fn echo_request_and_reply_put_the_id_on_opposite_sides() {
        let f = frame(
            IPPROTO_ICMP,
            &[ICMP_ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 1],
        );
        let k = flow(&head(&f)).unwrap().unwrap().key;
        assert_eq!((k.sport, k.dport), (port_wire(0x1234), 0));
        let f = frame(IPPROTO_ICMP, &[ICMP_ECHO_REPLY, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let k = flow(&head(&f)).unwrap().unwrap().key;
        assert_eq!((k.sport, k.dport), (0, port_wire(0x1234)));
    }

    #[test]
    fn other_protocols_pass_and_options_or_fragments_are_refused() {
        let f = frame(47, &[0; 8]);
        assert_eq!(flow(&head(&f)), Ok(None));
        let f = frame(IPPROTO_ICMP, &[13, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(flow(&head(&f)), Ok(None), "timestamp requests pass");
        let mut f = frame(IPPROTO_UDP, &[0; 8]);
        f[IP] = 0x46;
        assert_eq!(flow(&head(&f)), Err(DropReason::NatMalformed));
        let mut f = frame(IPPROTO_UDP, &[0, 53, 0, 54, 0, 0, 0, 0]);
        f[IP + 6] = 0x20; // more fragments, offset 0: the first fragment
        assert_eq!(fragment(&head(&f)), Frag::First);
        let k = flow(&head(&f)).unwrap().unwrap().key;
        assert_eq!((k.sport, k.dport), (port_wire(53), port_wire(54)));
        f[IP + 4..IP + 6].copy_from_slice(&[0xab, 0xcd]);
        let fk = frag_key(&head(&f));
        assert_eq!((fk.saddr, fk.daddr), (k.saddr, k.daddr));
        assert_eq!(
            (fk.id, fk.proto),
            (u16::from_ne_bytes([0xab, 0xcd]), IPPROTO_UDP)
        );
        let mut f = frame(IPPROTO_UDP, &[0; 8]);
        f[IP + 7] = 0x10; // offset 16 * 8: a later fragment
        assert_eq!(fragment(&head(&f)), Frag::Later);
        assert_eq!(flow(&head(&f)), Err(DropReason::Fragment));
        f[IP + 6] = 0x20; // a middle one
        assert_eq!(fragment(&head(&f)), Frag::Later);
        let mut f = frame(IPPROTO_UDP, &[0; 8]);
        f[IP + 6] = 0x40; // don't fragment is no fragment
        assert_eq!(fragment(&head(&f)), Frag::Whole);
        assert!(flow(&head(&f)).is_ok());
    }

    #[test]
    fn icmp_error_names_the_flow_of_the_quoted_packet() {
        // Port unreachable from 192.0.2.9 about our UDP 198.51.100.1:61001 -> 192.0.2.9:53.
        let mut l4 = std::vec![ICMP_DEST_UNREACH, 3, 0, 0, 0, 0, 0, 0];
        let mut inner = std::vec![0u8; 28];
        inner[0] = 0x45;
        inner[9] = IPPROTO_UDP;
        inner[12..16].copy_from_slice(&[198, 51, 100, 1]);
        inner[16..20].copy_from_slice(&[192, 0, 2, 9]);
        inner[20..22].copy_from_slice(&61001u16.to_be_bytes());
        inner[22..24].copy_from_slice(&53u16.to_be_bytes());
        l4.extend_from_slice(&inner);
        let f = frame(IPPROTO_ICMP, &l4);
        assert_eq!(flow(&head(&f)).unwrap().unwrap().kind, Kind::IcmpError);
        assert_eq!(
            icmp_error_key(&head(&f)).unwrap(),
            CtKey::new(
                IPPROTO_UDP,
                ipv4_wire([192, 0, 2, 9]),
                port_wire(53),
                ipv4_wire([198, 51, 100, 1]),
                port_wire(61001)
            )
        );
    }

    #[test]
    fn incremental_checksum_matches_a_full_one() {
        let mut hdr: [u8; 20] = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 172, 17, 0, 2, 192, 0, 2, 9,
        ];
        let c = csum_fold(&hdr, 0);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(csum_fold(&hdr, 0), 0);
        // Rewrite the source address word by word.
        let old = [hdr[12], hdr[13], hdr[14], hdr[15]];
        let new = [198u8, 51, 100, 1];
        let mut cs = u16::from_ne_bytes([hdr[10], hdr[11]]);
        for i in [0, 2] {
            cs = csum_update16(
                cs,
                u16::from_ne_bytes([old[i], old[i + 1]]),
                u16::from_ne_bytes([new[i], new[i + 1]]),
            );
        }
        hdr[12..16].copy_from_slice(&new);
        hdr[10..12].copy_from_slice(&cs.to_ne_bytes());
        assert_eq!(csum_fold(&hdr, 0), 0);
    }
}

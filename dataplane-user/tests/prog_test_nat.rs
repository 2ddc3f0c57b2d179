//! Address translation in `from_container` and `from_uplink` as the kernel
//! runs it: crafted frames go through BPF_PROG_TEST_RUN on the loaded object
//! (one run per frame: with `repeat` > 1 a rewritten frame would be fed back
//! in already rewritten), and each case checks the verdict, the output frame
//! (built independently here, checksums recomputed from scratch), the
//! conntrack entries and, at the end, every counter of both programs.
//!
//! Root only. Each test runs in a thread of its own with a private network
//! namespace holding:
//! - the host side of each container's veth at `IFINDEX_BASE + n` (a context
//!   ifindex is honoured only for a real device, see prog_test_run.rs),
//! - an "uplink" veth `up0` with 198.51.100.1/24, a default route via
//!   198.51.100.2 and a permanent neighbour entry for it (so the programs'
//!   `bpf_fib_lookup` returns SUCCESS; other addresses of the /24 have no
//!   neighbour: NO_NEIGH), and IPv4 forwarding on,
//!
//! and its own pin directory on bpffs (removed by a Drop guard).
//!
//! BPF_PROG_TEST_RUN hands the programs CHECKSUM_NONE skbs, so the kernel's
//! checksum helpers must leave complete, correct checksums in the frame:
//! every output is checked by recomputing the IPv4 header checksum, the
//! TCP/UDP checksum with its pseudo header and the ICMP checksum.

mod common;

use aya::maps::{HashMap, MapData};
use common::{
    assert_prog_stats, be16, container_veths, dotted, hex, in_private_netns, ip_cmd, run_prog,
    uplink_veth, Field, Prog, Scratch,
};
use dataplane_common::{
    ipv4_octets, ipv4_wire, packet::nat::csum_fold, port_host, port_wire, Counters, CtEntry, CtKey,
    DropReason, Endpoint, FragKey, FragPorts, NatAddr, Network, PortKey, CT_DNAT, CT_HAIRPIN,
    CT_PUBLISHED, CT_REPLY, CT_SNAT, CT_TIMEOUT_TCP_SYN, CT_TIMEOUT_UDP, IFINDEX_BASE,
    IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NAT_PORT_MIN, SEEN_CLOSING, SEEN_ESTABLISHED, SEEN_SYN,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use dataplane_user::bpf::Datapath;

// TC verdicts (include/uapi/linux/pkt_cls.h).
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
/// What `bpf_redirect`, `bpf_redirect_peer` and `bpf_redirect_neigh` return.
const TC_ACT_REDIRECT: u32 = 7;

const ETH_HLEN: usize = 14;
const IP: usize = ETH_HLEN;

/// The uplink's address, its MAC, and the next hop's.
const HOST: [u8; 4] = [198, 51, 100, 1];
const UPLINK_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
const ROUTER: [u8; 4] = [198, 51, 100, 2];
const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];
/// On the uplink's subnet, without a neighbour entry.
const NO_NEIGH_HOST: [u8; 4] = [198, 51, 100, 77];
/// A second host address, for ports bound to one address.
const HOST2: [u8; 4] = [198, 51, 100, 99];
/// A server on the Internet, and a client reaching published ports.
const SERVER: [u8; 4] = [203, 0, 113, 5];
const CLIENT: [u8; 4] = [203, 0, 113, 7];

// ---------------------------------------------------------------------------
// Frames, built from the RFCs independently of the code under test.
// ---------------------------------------------------------------------------

/// Ones'-complement sum of the IPv4 pseudo header (RFC 793/768), unfolded.
fn pseudo_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let w = |b: [u8; 4]| {
        u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
    };
    w(src) + w(dst) + u32::from(proto) + len as u32
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    /// `checksum: false` sends 0 ("no checksum").
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
        payload: Vec<u8>,
    },
    /// Type, code, the 4 bytes after the checksum, and the data.
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
        data: Vec<u8>,
    },
    Other {
        proto: u8,
        data: Vec<u8>,
    },
}

/// An Ethernet/IPv4 frame.
#[derive(Clone, Debug)]
struct Pkt {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    /// Identification (0x1c46 by default).
    id: u16,
    /// Flags and fragment offset (DF by default).
    frag: u16,
    /// IPv4 options (a multiple of 4 bytes).
    options: Vec<u8>,
    l4: L4,
}

impl Pkt {
    fn new(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], l4: L4) -> Self {
        Pkt {
            dst_mac: macs.0,
            src_mac: macs.1,
            src,
            dst,
            ttl: 64,
            id: 0x1c46,
            frag: 0x4000,
            options: Vec::new(),
            l4,
        }
    }

    fn tcp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Self {
        let payload = if flags & TCP_SYN != 0 {
            Vec::new()
        } else {
            b"GET / HTTP/1.0\r\n\r\n".to_vec()
        };
        Self::new(
            macs,
            src.0,
            dst.0,
            L4::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
                payload,
            },
        )
    }

    fn udp(
        macs: ([u8; 6], [u8; 6]),
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        checksum: bool,
    ) -> Self {
        Self::new(
            macs,
            src.0,
            dst.0,
            L4::Udp {
                sport: src.1,
                dport: dst.1,
                checksum,
                // Odd length: the checksum pads it.
                payload: b"dataplane-nat-udp".to_vec(),
            },
        )
    }

    fn echo(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], ty: u8, id: u16) -> Self {
        let id = id.to_be_bytes();
        Self::new(
            macs,
            src,
            dst,
            L4::Icmp {
                ty,
                code: 0,
                rest: [id[0], id[1], 0, 1],
                data: b"0123456789abcdefghijklmnopqrstuv".to_vec(),
            },
        )
    }

    /// An ICMP error from `src` to `dst` quoting the IPv4 header and the
    /// first 8 L4 bytes of `quoted` (RFC 792's minimum).
    fn icmp_error(
        macs: ([u8; 6], [u8; 6]),
        src: [u8; 4],
        dst: [u8; 4],
        ty: u8,
        code: u8,
        quoted: &Pkt,
    ) -> Self {
        let q = quoted.build();
        Self::new(
            macs,
            src,
            dst,
            L4::Icmp {
                ty,
                code,
                rest: [0; 4],
                data: q[IP..IP + 28].to_vec(),
            },
        )
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp { .. } => IPPROTO_UDP,
            L4::Icmp { .. } => IPPROTO_ICMP,
            L4::Other { proto, .. } => *proto,
        }
    }

    /// The same packet with other ports (or echo identifier, as `sport`).
    fn ports(mut self, s: u16, d: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => {
                *sport = s;
                *dport = d;
            }
            L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&s.to_be_bytes()),
            L4::Other { .. } => unreachable!(),
        }
        self
    }

    fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    fn addrs(mut self, src: [u8; 4], dst: [u8; 4]) -> Self {
        self.src = src;
        self.dst = dst;
        self
    }

    fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// A UDP datagram with `len` bytes of payload, too big for one
    /// 1500-byte frame: sent without DF, to be cut by [`fragments`].
    fn big_udp(
        macs: ([u8; 6], [u8; 6]),
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
        len: usize,
    ) -> Self {
        let mut p = Self::new(
            macs,
            src.0,
            dst.0,
            L4::Udp {
                sport: src.1,
                dport: dst.1,
                checksum: true,
                payload: filler(len),
            },
        );
        p.frag = 0;
        p
    }

    /// An echo request or reply with `len` bytes of data (`ping -s len`),
    /// without DF.
    fn big_echo(
        macs: ([u8; 6], [u8; 6]),
        src: [u8; 4],
        dst: [u8; 4],
        ty: u8,
        id: u16,
        len: usize,
    ) -> Self {
        let mut p = Self::echo(macs, src, dst, ty, id);
        let L4::Icmp { data, .. } = &mut p.l4 else {
            unreachable!()
        };
        *data = filler(len);
        p.frag = 0;
        p
    }

    /// The L4 bytes with a correct checksum.
    fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut t = Vec::with_capacity(20 + payload.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&0x1122_3344u32.to_be_bytes()); // seq
                let ack = if flags & TCP_ACK != 0 {
                    0x5566_7788u32
                } else {
                    0
                };
                t.extend_from_slice(&ack.to_be_bytes());
                t.extend_from_slice(&[5 << 4, *flags]);
                t.extend_from_slice(&64240u16.to_be_bytes()); // window
                t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                t.extend_from_slice(payload);
                let c = csum_fold(&t, pseudo_sum(self.src, self.dst, IPPROTO_TCP, t.len()));
                t[16..18].copy_from_slice(&c.to_be_bytes());
                t
            }
            L4::Udp {
                sport,
                dport,
                checksum,
                payload,
            } => {
                let mut u = Vec::with_capacity(8 + payload.len());
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload);
                if *checksum {
                    let c = csum_fold(&u, pseudo_sum(self.src, self.dst, IPPROTO_UDP, u.len()));
                    // A computed 0 is sent as all ones (RFC 768).
                    let c = if c == 0 { 0xffff } else { c };
                    u[6..8].copy_from_slice(&c.to_be_bytes());
                }
                u
            }
            L4::Icmp {
                ty,
                code,
                rest,
                data,
            } => {
                let mut i = vec![*ty, *code, 0, 0];
                i.extend_from_slice(rest);
                i.extend_from_slice(data);
                let c = csum_fold(&i, 0);
                i[2..4].copy_from_slice(&c.to_be_bytes());
                i
            }
            L4::Other { data, .. } => data.clone(),
        }
    }

    fn build(&self) -> Vec<u8> {
        assert_eq!(self.options.len() % 4, 0);
        let l4 = self.l4_bytes();
        let hlen = 20 + self.options.len();
        let mut f = Vec::with_capacity(ETH_HLEN + hlen + l4.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        f.push(0x40 | (hlen / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&self.id.to_be_bytes());
        f.extend_from_slice(&self.frag.to_be_bytes());
        f.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        f.extend_from_slice(&self.src);
        f.extend_from_slice(&self.dst);
        f.extend_from_slice(&self.options);
        let c = csum_fold(&f[IP..IP + hlen], 0);
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }
}

// ---------------------------------------------------------------------------
// Reading and checking output frames.
// ---------------------------------------------------------------------------

fn ip4(f: &[u8], at: usize) -> [u8; 4] {
    f[at..at + 4].try_into().unwrap()
}

fn ihl(f: &[u8]) -> usize {
    usize::from(f[IP] & 0x0f) * 4
}

/// Offset of the L4 header.
fn l4_at(f: &[u8]) -> usize {
    IP + ihl(f)
}

fn src_of(f: &[u8]) -> ([u8; 4], u16) {
    (ip4(f, IP + 12), be16(f, l4_at(f)))
}

fn dst_of(f: &[u8]) -> ([u8; 4], u16) {
    (ip4(f, IP + 16), be16(f, l4_at(f) + 2))
}

/// Recomputes every checksum the frame carries and asserts it holds: the
/// IPv4 header, TCP/UDP with the pseudo header (a UDP 0 means none), ICMP,
/// and for an ICMP error the quoted IPv4 header.
fn assert_checksums(what: &str, f: &[u8]) {
    let h = ihl(f);
    assert_eq!(
        csum_fold(&f[IP..IP + h], 0),
        0,
        "{what}: IPv4 header checksum\n{}",
        hex(f)
    );
    let total = usize::from(be16(f, IP + 2));
    assert_eq!(IP + total, f.len(), "{what}: IPv4 total length");
    let l4 = &f[IP + h..IP + total];
    let (src, dst) = (ip4(f, IP + 12), ip4(f, IP + 16));
    match f[IP + 9] {
        IPPROTO_TCP => assert_eq!(
            csum_fold(l4, pseudo_sum(src, dst, IPPROTO_TCP, l4.len())),
            0,
            "{what}: TCP checksum\n{}",
            hex(f)
        ),
        // A UDP checksum of 0 means "none".
        IPPROTO_UDP if be16(l4, 6) != 0 => assert_eq!(
            csum_fold(l4, pseudo_sum(src, dst, IPPROTO_UDP, l4.len())),
            0,
            "{what}: UDP checksum\n{}",
            hex(f)
        ),
        IPPROTO_ICMP => {
            assert_eq!(csum_fold(l4, 0), 0, "{what}: ICMP checksum\n{}", hex(f));
            if matches!(l4[0], 3 | 11 | 12) {
                let inner = &l4[8..];
                let ih = usize::from(inner[0] & 0x0f) * 4;
                assert_eq!(
                    csum_fold(&inner[..ih], 0),
                    0,
                    "{what}: quoted IPv4 header checksum\n{}",
                    hex(f)
                );
            }
        }
        _ => {}
    }
}

/// The frame with its checksum fields zeroed (they are checked on their own
/// by [`assert_checksums`]: an incremental update may legitimately produce
/// the other ones'-complement zero than a full computation). A UDP checksum
/// of 0 is kept (it must stay 0), and so is ICMP's quoted transport header
/// but for its checksum, which nobody can verify (the payload is cut).
fn masked(f: &[u8]) -> Vec<u8> {
    let mut m = f.to_vec();
    m[IP + 10..IP + 12].fill(0);
    let l4 = l4_at(f);
    match f[IP + 9] {
        IPPROTO_TCP if m.len() >= l4 + 18 => m[l4 + 16..l4 + 18].fill(0),
        IPPROTO_UDP if m.len() >= l4 + 8 && be16(f, l4 + 6) != 0 => m[l4 + 6..l4 + 8].fill(0),
        IPPROTO_ICMP if m.len() >= l4 + 4 => {
            m[l4 + 2..l4 + 4].fill(0);
            if matches!(f[l4], 3 | 11 | 12) && m.len() >= l4 + 8 + 28 {
                let inner = l4 + 8;
                m[inner + 10..inner + 12].fill(0);
                match f[inner + 9] {
                    IPPROTO_UDP => m[inner + 20 + 6..inner + 20 + 8].fill(0),
                    IPPROTO_ICMP => m[inner + 20 + 2..inner + 20 + 4].fill(0),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    m
}

/// `got` has valid checksums and is `want` but for how checksums are written.
fn assert_frame(what: &str, got: &[u8], want: &Pkt) {
    assert_checksums(what, got);
    let want = want.build();
    assert_eq!(
        hex(&masked(got)),
        hex(&masked(&want)),
        "{what}: output frame"
    );
}

// ---------------------------------------------------------------------------
// Fragments: cutting a datagram as a sending host does, and putting the
// translated fragments back together as the receiving host does.
// ---------------------------------------------------------------------------

/// Where a 1500-byte MTU cuts a datagram: 1480 bytes of IPv4 payload each.
const CUTS: &[usize] = &[1480, 2960];

/// `n` bytes that differ from one offset to the next (a misplaced fragment
/// would show).
fn filler(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

/// `p` as a host sends it when it does not fit the link: built whole (its
/// L4 checksum over the whole datagram, with `p`'s pseudo header), then cut
/// into IPv4 fragments whose data starts at 0 and at each of `cuts`
/// (multiples of 8), MF on all but the last, each with its own offset,
/// total length and header checksum, DF clear.
fn fragments(p: &Pkt, cuts: &[usize]) -> Vec<Vec<u8>> {
    assert!(p.options.is_empty());
    let whole = p.build();
    let data = &whole[IP + 20..];
    let starts: Vec<usize> = std::iter::once(0).chain(cuts.iter().copied()).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            assert_eq!(start % 8, 0, "fragment offsets are in 8-byte units");
            let end = starts.get(i + 1).copied().unwrap_or(data.len());
            assert!(start < end && end <= data.len());
            let mut f = whole[..IP + 20].to_vec();
            f.extend_from_slice(&data[start..end]);
            let mf = if i + 1 < starts.len() { 0x2000 } else { 0 };
            f[IP + 2..IP + 4].copy_from_slice(&((20 + end - start) as u16).to_be_bytes());
            f[IP + 6..IP + 8].copy_from_slice(&(mf | (start / 8) as u16).to_be_bytes());
            f[IP + 10..IP + 12].fill(0);
            let c = csum_fold(&f[IP..IP + 20], 0);
            f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
            f
        })
        .collect()
}

/// `f` cut to its first `len` bytes as a sender would cut it: the IPv4
/// total length (and header checksum) say what is left, so the packet is
/// whole at the IP layer and only its L4 header is short. (A frame merely
/// cut, whose total length promises more, is dropped before NAT looks at
/// it: see `a_total_length_past_the_frame`.)
fn cut(f: &[u8], len: usize) -> Vec<u8> {
    let mut c = f[..len].to_vec();
    c[IP + 2..IP + 4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
    c[IP + 10..IP + 12].fill(0);
    let sum = csum_fold(&c[IP..IP + 20], 0);
    c[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
    c
}

/// A later fragment as it must leave: `f` with only its Ethernet header,
/// TTL and addresses changed (and its header checksum with them).
fn readdressed(f: &[u8], macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut m = f.to_vec();
    m[..6].copy_from_slice(&macs.0);
    m[6..12].copy_from_slice(&macs.1);
    m[IP + 8] = ttl;
    m[IP + 12..IP + 16].copy_from_slice(&src);
    m[IP + 16..IP + 20].copy_from_slice(&dst);
    m[IP + 10..IP + 12].fill(0);
    let c = csum_fold(&m[IP..IP + ihl(&m)], 0);
    m[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    m
}

/// Whether a frame is a later fragment (an offset: no L4 header).
fn is_later(f: &[u8]) -> bool {
    be16(f, IP + 6) & 0x1fff != 0
}

/// Reassembles fragments as RFC 791 does, after checking that each has a
/// valid header checksum and its total length, that all belong to one
/// datagram (addresses, identification, protocol) and left together (same
/// Ethernet header and TTL), and that they cover the data without gap or
/// overlap with MF on all but the last. The result is the whole datagram
/// as one frame (flags and offset 0, header checksum recomputed), for
/// [`assert_frame`] to check its L4 checksum over all of it.
fn reassemble(what: &str, frags: &[Vec<u8>]) -> Vec<u8> {
    let same = |f: &[u8]| {
        (
            f[..ETH_HLEN].to_vec(),
            be16(f, IP + 4),
            f[IP + 8],
            f[IP + 9],
            ip4(f, IP + 12),
            ip4(f, IP + 16),
        )
    };
    let mut parts: Vec<(usize, bool, &[u8])> = Vec::new();
    for f in frags {
        assert_eq!(ihl(f), 20, "{what}: IHL");
        assert_eq!(
            csum_fold(&f[IP..IP + 20], 0),
            0,
            "{what}: IPv4 header checksum of a fragment\n{}",
            hex(f)
        );
        assert_eq!(
            IP + usize::from(be16(f, IP + 2)),
            f.len(),
            "{what}: IPv4 total length of a fragment"
        );
        assert_eq!(
            same(f),
            same(&frags[0]),
            "{what}: (Ethernet header, id, TTL, protocol, source, destination) of the fragments"
        );
        let v = be16(f, IP + 6);
        parts.push((usize::from(v & 0x1fff) * 8, v & 0x2000 != 0, &f[IP + 20..]));
    }
    parts.sort_by_key(|p| p.0);
    let mut data = Vec::new();
    for (i, (offset, mf, bytes)) in parts.iter().enumerate() {
        assert_eq!(*offset, data.len(), "{what}: a gap or an overlap");
        assert_eq!(*mf, i + 1 < parts.len(), "{what}: MF of fragment {i}");
        data.extend_from_slice(bytes);
    }
    let head = frags
        .iter()
        .find(|f| !is_later(f))
        .unwrap_or_else(|| panic!("{what}: no first fragment"));
    let mut w = head[..IP + 20].to_vec();
    w[IP + 2..IP + 4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    w[IP + 6..IP + 8].fill(0);
    w[IP + 10..IP + 12].fill(0);
    let c = csum_fold(&w[IP..IP + 20], 0);
    w[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    w.extend_from_slice(&data);
    w
}

/// `got` is the fragment `want` but for how checksums are written: a valid
/// IPv4 header checksum, and every other byte equal except, in a first
/// fragment, the L4 checksum (it covers the whole datagram: checked after
/// [`reassemble`]). A UDP checksum of 0 must stay 0, and a later fragment
/// must keep all its bytes after the IPv4 header.
fn assert_fragment(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(
        csum_fold(&got[IP..IP + ihl(got)], 0),
        0,
        "{what}: IPv4 header checksum\n{}",
        hex(got)
    );
    assert_eq!(
        IP + usize::from(be16(got, IP + 2)),
        got.len(),
        "{what}: IPv4 total length"
    );
    let l4 = l4_at(want);
    let l4_csum = match want[IP + 9] {
        _ if is_later(want) => None,
        IPPROTO_TCP => Some(l4 + 16),
        IPPROTO_UDP if be16(want, l4 + 6) != 0 => Some(l4 + 6),
        IPPROTO_ICMP => Some(l4 + 2),
        _ => None,
    };
    let mask = |f: &[u8]| {
        let mut m = f.to_vec();
        m[IP + 10..IP + 12].fill(0);
        if let Some(at) = l4_csum {
            m[at..at + 2].fill(0);
        }
        m
    };
    assert_eq!(hex(&mask(got)), hex(&mask(want)), "{what}: output fragment");
}

/// The helpers above must agree with each other and catch what they are
/// for (no root needed).
#[test]
fn fragments_reassemble_to_the_whole_datagram() {
    let macs = ([2; 6], [4; 6]);
    let udp = Pkt::big_udp(macs, ([172, 18, 0, 2], 5000), (SERVER, 53), 3500).id(0x4242);
    let frags = fragments(&udp, CUTS);
    assert_eq!(
        frags.iter().map(|f| f.len() - IP).collect::<Vec<_>>(),
        vec![1500, 1500, 20 + 3508 - 2960]
    );
    assert_eq!(
        frags.iter().map(|f| be16(f, IP + 6)).collect::<Vec<_>>(),
        vec![0x2000, 0x2000 | 185, 370]
    );
    assert_eq!(hex(&reassemble("udp", &frags)), hex(&udp.build()));
    let mut shuffled = frags.clone();
    shuffled.reverse();
    assert_eq!(hex(&reassemble("reversed", &shuffled)), hex(&udp.build()));
    let echo = Pkt::big_echo(macs, [172, 18, 0, 2], SERVER, 8, 7, 3000);
    assert_frame("echo", &reassemble("echo", &fragments(&echo, CUTS)), &echo);

    let fails = |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
    for (i, f) in frags.iter().enumerate() {
        assert!(!fails(&|| assert_fragment("self-test", f, f)));
        // A touched data byte, its IPv4 header checksum fixed.
        let mut bad = f.clone();
        bad[IP + 20 + 100] ^= 1;
        assert!(
            fails(&|| assert_fragment("self-test", &bad, f)),
            "data of {i}"
        );
        // A port rewritten without the checksum of the whole datagram.
        let mut bad = frags.clone();
        bad[0][IP + 20] ^= 1;
        let got = reassemble("self-test", &bad);
        assert!(fails(&|| assert_frame("self-test", &got, &udp)));
    }
    let mut gap = frags.clone();
    gap.remove(1);
    assert!(fails(&|| {
        reassemble("self-test", &gap);
    }));
    let mut other = frags.clone();
    other[2] = fragments(&udp.clone().id(1), CUTS).remove(2);
    assert!(fails(&|| {
        reassemble("self-test", &other);
    }));
}

/// The checks above are what every case relies on: they must catch a
/// rewrite that forgets a checksum (no root needed).
#[test]
fn the_checksum_checks_catch_a_forgotten_update() {
    let fails = |f: &[u8]| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_checksums("self-test", f)
        }))
        .is_err()
    };
    let fix_ip = |f: &mut Vec<u8>| {
        f[IP + 10..IP + 12].fill(0);
        let c = csum_fold(&f[IP..IP + 20], 0);
        f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
    };
    let macs = ([2; 6], [4; 6]);
    let tcp = Pkt::tcp(macs, ([172, 18, 0, 2], 40000), (SERVER, 80), TCP_SYN);
    let udp = Pkt::udp(macs, ([172, 18, 0, 2], 5000), (SERVER, 53), true);
    let echo = Pkt::echo(macs, [172, 18, 0, 2], SERVER, 8, 1);
    let err = Pkt::icmp_error(macs, SERVER, HOST, 3, 3, &udp);
    for p in [&tcp, &udp, &echo, &err] {
        let f = p.build();
        assert!(!fails(&f), "{p:?}");
        let mut bad = f.clone();
        bad[IP + 12] ^= 1; // source address, no checksum touched
        assert!(fails(&bad), "IPv4 header: {p:?}");
    }
    for p in [&tcp, &udp] {
        let mut bad = p.build();
        bad[IP + 12] ^= 1;
        fix_ip(&mut bad); // the pseudo header still disagrees
        assert!(fails(&bad), "pseudo header: {p:?}");
        let mut bad = p.build();
        bad[IP + 20] ^= 1; // source port
        assert!(fails(&bad), "port: {p:?}");
    }
    let mut bad = echo.build();
    bad[IP + 20 + 4] ^= 1; // identifier
    assert!(fails(&bad), "echo identifier");
    let mut bad = err.build();
    bad[IP + 20 + 8 + 12] ^= 1; // quoted source, ICMP checksum fixed below
    bad[IP + 22..IP + 24].fill(0);
    let c = csum_fold(&bad[IP + 20..], 0);
    bad[IP + 22..IP + 24].copy_from_slice(&c.to_be_bytes());
    assert!(fails(&bad), "quoted IPv4 header");
    // A UDP checksum of 0 means none, and all ones is a valid zero.
    let mut none = Pkt::udp(macs, ([172, 18, 0, 2], 5000), (SERVER, 53), false).build();
    assert!(!fails(&none));
    none[IP + 12] ^= 1;
    fix_ip(&mut none);
    assert!(!fails(&none));
}

// ---------------------------------------------------------------------------
// Environment.
// ---------------------------------------------------------------------------

fn network(subnet: [u8; 4], prefix: u32, gateway: [u8; 4]) -> Network {
    Network {
        subnet: ipv4_wire(subnet),
        mask: ipv4_wire((u32::MAX << (32 - prefix)).to_be_bytes()),
        gateway: ipv4_wire(gateway),
        flags: 0,
        vni: 0,
    }
}

fn endpoint(ifindex: u32, net: Network, ip: [u8; 4]) -> Endpoint {
    Endpoint {
        ifindex,
        network_id: 1,
        ip: ipv4_wire(ip),
        mac: [0x02, 0x42, ip[0], ip[1], ip[2], ip[3]],
        host_mac: [0xee, 0xee, ip[0], ip[1], ip[2], ip[3]],
        flags: 0,
        vtep: 0,
        net,
    }
}

/// The MACs of a frame a container sends: to its gateway's MAC.
fn tx(ep: &Endpoint) -> ([u8; 6], [u8; 6]) {
    (ep.host_mac, ep.mac)
}

fn ip(ep: &Endpoint) -> [u8; 4] {
    ipv4_octets(ep.ip)
}

fn gw(ep: &Endpoint) -> [u8; 4] {
    ipv4_octets(ep.net.gateway)
}

fn tcp_key(s: ([u8; 4], u16), d: ([u8; 4], u16)) -> CtKey {
    CtKey::new(
        IPPROTO_TCP,
        ipv4_wire(s.0),
        port_wire(s.1),
        ipv4_wire(d.0),
        port_wire(d.1),
    )
}

fn udp_key(s: ([u8; 4], u16), d: ([u8; 4], u16)) -> CtKey {
    CtKey::new(
        IPPROTO_UDP,
        ipv4_wire(s.0),
        port_wire(s.1),
        ipv4_wire(d.0),
        port_wire(d.1),
    )
}

/// (saddr, sport, daddr, dport) of an entry, in octets and host order.
fn tuple(e: &CtEntry) -> ([u8; 4], u16, [u8; 4], u16) {
    (
        ipv4_octets(e.saddr),
        port_host(e.sport),
        ipv4_octets(e.daddr),
        port_host(e.dport),
    )
}

fn now_ns() -> u64 {
    dataplane_user::host::monotonic_ns()
}

// ---------------------------------------------------------------------------
// The lab.
// ---------------------------------------------------------------------------

/// What a program must do with a frame (the verdict and the counters).
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// First packet of a translated flow: rewritten, CT pair, redirected (7).
    New,
    /// Packet of a known flow (or ICMP error about one): rewritten, redirected (7).
    Translated,
    /// Rewritten, then left to the host stack (0).
    TranslatedPassed,
    /// To the host stack untouched (0).
    Passed,
    /// Dropped (2), counted under the reason, untouched.
    Drop(DropReason),
}

struct Lab {
    // Field order is drop order: close program and maps before unpinning.
    dp: Datapath,
    _pins: Scratch,
    /// Two containers of network 172.18.0.0/16 (gateway 172.18.0.1).
    a: Endpoint,
    b: Endpoint,
    /// ifindex of `up0`.
    uplink: u32,
    expected: [Counters; 2],
}

impl Lab {
    fn new(tag: &str) -> Self {
        let net = network([172, 18, 0, 0], 16, [172, 18, 0, 1]);
        let a = endpoint(IFINDEX_BASE + 1, net, [172, 18, 0, 2]);
        let b = endpoint(IFINDEX_BASE + 2, net, [172, 18, 0, 3]);
        container_veths("dpn", &[("a", &a), ("b", &b)]);
        let uplink = uplink_veth(
            "up0",
            "up1",
            UPLINK_MAC,
            HOST,
            Some(ROUTER),
            &[(ROUTER, ROUTER_MAC)],
        );

        // Removed (pins and all) when the lab is dropped, even on failure.
        let pins = Scratch::new(&format!("nat-{tag}"));
        let mut dp = Datapath::load(pins.path()).expect("loading the datapath");
        dp.set_endpoint(a).expect("endpoint a");
        dp.set_endpoint(b).expect("endpoint b");
        dp.sync_local_addrs(&[ipv4_wire(HOST), ipv4_wire(HOST2), a.net.gateway])
            .expect("LOCAL_ADDRS");
        Lab {
            dp,
            _pins: pins,
            a,
            b,
            uplink,
            expected: [Counters::ZERO; 2],
        }
    }

    /// One BPF_PROG_TEST_RUN of `prog` on `frame` from device `ifindex`.
    fn run(&mut self, prog: Prog, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        run_prog(&mut self.dp, "prog_test_nat", prog, ifindex, frame)
    }

    /// Runs `frame` through `prog`, asserts the verdict of `outcome` (and an
    /// untouched frame when it passes or drops), books the counters it must
    /// move and returns the output frame.
    fn send(
        &mut self,
        what: &str,
        prog: Prog,
        ifindex: u32,
        frame: &[u8],
        outcome: Outcome,
    ) -> Vec<u8> {
        let (ret, out) = self.run(prog, ifindex, frame);
        let e = &mut self.expected[prog.slot()];
        e.packets += 1;
        e.bytes += frame.len() as u64;
        let want = match outcome {
            Outcome::New => {
                e.translated += 1;
                e.ct_created += 1;
                e.redirected += 1;
                TC_ACT_REDIRECT
            }
            Outcome::Translated => {
                e.translated += 1;
                e.redirected += 1;
                TC_ACT_REDIRECT
            }
            Outcome::TranslatedPassed => {
                e.translated += 1;
                e.passed += 1;
                TC_ACT_OK
            }
            Outcome::Passed => {
                e.passed += 1;
                TC_ACT_OK
            }
            Outcome::Drop(r) => {
                e.drops[r as usize] += 1;
                if r as u32 == DropReason::NatExhausted as u32 {
                    e.alloc_failed += 1;
                }
                TC_ACT_SHOT
            }
        };
        assert_eq!(
            ret,
            want,
            "{what}: verdict ({outcome:?}) from {}",
            prog.name()
        );
        if matches!(outcome, Outcome::Passed | Outcome::Drop(_)) {
            assert_eq!(hex(&out), hex(frame), "{what}: the frame must be untouched");
        }
        out
    }

    fn container(&mut self, what: &str, from: Endpoint, frame: &[u8], outcome: Outcome) -> Vec<u8> {
        self.send(what, Prog::Container, from.ifindex, frame, outcome)
    }

    fn uplink(&mut self, what: &str, frame: &[u8], outcome: Outcome) -> Vec<u8> {
        let up = self.uplink;
        self.send(what, Prog::Uplink, up, frame, outcome)
    }

    fn ct(&mut self) -> HashMap<&mut MapData, CtKey, CtEntry> {
        HashMap::try_from(self.dp.ebpf_mut().map_mut("CT").expect("CT")).expect("CT")
    }

    fn ct_get(&mut self, k: &CtKey) -> Option<CtEntry> {
        self.ct().get(k, 0).ok()
    }

    fn ct_put(&mut self, k: CtKey, e: CtEntry) {
        self.ct().insert(k, e, 0).expect("CT insert");
    }

    /// Removes `k`'s entry, as the LRU evicting it would.
    fn ct_del(&mut self, k: &CtKey) {
        self.ct().remove(k).expect("CT remove");
    }

    fn ct_len(&mut self) -> usize {
        self.ct().keys().filter(|k| k.is_ok()).count()
    }

    /// The ports `FRAGS` holds for a datagram (by its first fragment, as
    /// it arrived), in host order.
    fn frags_get(&mut self, proto: u8, src: [u8; 4], dst: [u8; 4], id: u16) -> Option<(u16, u16)> {
        let m: HashMap<&mut MapData, FragKey, FragPorts> =
            HashMap::try_from(self.dp.ebpf_mut().map_mut("FRAGS").expect("FRAGS")).expect("FRAGS");
        let k = FragKey {
            saddr: ipv4_wire(src),
            daddr: ipv4_wire(dst),
            id: id.to_be(),
            proto,
            _pad: 0,
        };
        m.get(&k, 0)
            .ok()
            .map(|p| (port_host(p.sport), port_host(p.dport)))
    }

    fn publish(&mut self, proto: u8, addr: [u8; 4], port: u16, to: [u8; 4], to_port: u16) {
        self.dp
            .set_port(
                PortKey::new(proto, ipv4_wire(addr), port_wire(port)),
                NatAddr::new(ipv4_wire(to), port_wire(to_port)),
            )
            .expect("PORTS");
    }

    /// Every counter of both programs against what the cases booked.
    fn assert_stats(&self) {
        assert_prog_stats(&self.dp, &self.expected, &Field::ALL);
    }
}

/// A live entry, as if a packet of its flow had just passed.
fn live_entry(to: ([u8; 4], u16, [u8; 4], u16), flags: u16, seen: u8, last_seen: u64) -> CtEntry {
    CtEntry {
        saddr: ipv4_wire(to.0),
        daddr: ipv4_wire(to.2),
        sport: port_wire(to.1),
        dport: port_wire(to.3),
        flags,
        seen,
        _pad: 0,
        last_seen,
        backend: dataplane_common::NO_BACKEND,
        vtep: 0,
    }
}

// ---------------------------------------------------------------------------
// 1. Masquerade of TCP.
// ---------------------------------------------------------------------------

#[test]
fn masquerade_tcp_syn_then_ack_then_reply() {
    in_private_netns(|| {
        let mut lab = Lab::new("tcp");
        let a = lab.a;
        let to_server = |flags| Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), flags);

        let syn = to_server(TCP_SYN);
        let out = lab.container("SYN to the Internet", a, &syn.build(), Outcome::New);
        let want = syn
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        assert_frame("SYN to the Internet", &out, &want);
        assert_eq!(
            src_of(&out),
            (HOST, 40000),
            "the source port is kept when free"
        );

        let orig = tcp_key((ip(&a), 40000), (SERVER, 80));
        let fwd = lab
            .ct_get(&orig)
            .expect("CT entry of the original direction");
        assert_eq!(tuple(&fwd), (HOST, 40000, SERVER, 80));
        assert_eq!(fwd.flags, CT_SNAT);
        assert_eq!(fwd.seen, SEEN_SYN);
        let reply_key = tcp_key((SERVER, 80), (HOST, 40000));
        let rev = lab
            .ct_get(&reply_key)
            .expect("CT entry of the reply direction");
        assert_eq!(tuple(&rev), (SERVER, 80, ip(&a), 40000));
        assert_eq!(rev.flags, CT_DNAT | CT_REPLY);
        assert_eq!(lab.ct_len(), 2, "one entry pair per flow");

        // The reply comes in on the uplink and goes straight to the container
        // (bpf_redirect_peer), one routed hop: the TTL goes down by one.
        let syn_ack = Pkt::tcp(
            (UPLINK_MAC, ROUTER_MAC),
            (SERVER, 80),
            (HOST, 40000),
            TCP_SYN | TCP_ACK,
        );
        let out = lab.uplink(
            "SYN-ACK from the server",
            &syn_ack.build(),
            Outcome::Translated,
        );
        let want = syn_ack
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(SERVER, ip(&a))
            .ttl(63);
        assert_frame("SYN-ACK from the server", &out, &want);
        assert_eq!(dst_of(&out), (ip(&a), 40000));
        // A reply with TTL 1 goes to the host stack untranslated (which
        // answers time exceeded); with TTL 2 it is delivered with TTL 1.
        let late = syn_ack.clone().ttl(1);
        lab.uplink("SYN-ACK with TTL 1", &late.build(), Outcome::Passed);
        let close = syn_ack.clone().ttl(2);
        let out = lab.uplink("SYN-ACK with TTL 2", &close.build(), Outcome::Translated);
        assert_frame(
            "SYN-ACK with TTL 2",
            &out,
            &close
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ttl(1),
        );

        // Later packets of the flow use the entry.
        let ack = to_server(TCP_ACK);
        let out = lab.container("ACK with data", a, &ack.build(), Outcome::Translated);
        let want = ack
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        assert_frame("ACK with data", &out, &want);
        let fwd = lab.ct_get(&orig).unwrap();
        assert_eq!(
            fwd.seen,
            SEEN_SYN | SEEN_ESTABLISHED,
            "the handshake is done"
        );
        assert_eq!(lab.ct_len(), 2, "no new entries for a known flow");

        let fin = to_server(TCP_FIN | TCP_ACK).ttl(2);
        let out = lab.container("FIN with TTL 2", a, &fin.build(), Outcome::Translated);
        assert_frame(
            "FIN with TTL 2",
            &out,
            &fin.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(1),
        );

        // A second container flow, toward a host of the uplink's subnet that
        // has no neighbour entry: bpf_redirect_neigh resolves it on the way
        // out, so the Ethernet header is left as it came.
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40001), (NO_NEIGH_HOST, 22), TCP_SYN);
        let out = lab.container(
            "SYN to a host without neighbour entry",
            a,
            &syn.build(),
            Outcome::New,
        );
        assert_frame(
            "SYN to a host without neighbour entry",
            &out,
            &syn.clone().addrs(HOST, NO_NEIGH_HOST).ttl(63),
        );
        assert_eq!(lab.ct_len(), 4);

        // Traffic to the host itself is not translated.
        let to_host = Pkt::tcp(tx(&a), (ip(&a), 40002), (HOST, 22), TCP_SYN);
        lab.container(
            "SYN to a host address",
            a,
            &to_host.build(),
            Outcome::Passed,
        );
        let to_gw = Pkt::tcp(tx(&a), (ip(&a), 40003), (gw(&a), 53), TCP_SYN);
        lab.container("SYN to the gateway", a, &to_gw.build(), Outcome::Passed);
        assert_eq!(lab.ct_len(), 4);

        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 2. Masquerade of UDP, with and without a checksum.
// ---------------------------------------------------------------------------

#[test]
fn masquerade_udp_with_and_without_checksum() {
    in_private_netns(|| {
        let mut lab = Lab::new("udp");
        let a = lab.a;

        let plain = Pkt::udp(tx(&a), (ip(&a), 5000), (SERVER, 53), false);
        let out = lab.container("UDP without checksum", a, &plain.build(), Outcome::New);
        assert_frame(
            "UDP without checksum",
            &out,
            &plain
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        assert_eq!(be16(&out, IP + 20 + 6), 0, "a UDP checksum of 0 stays 0");

        let summed = Pkt::udp(tx(&a), (ip(&a), 5001), (SERVER, 53), true);
        let out = lab.container("UDP with checksum", a, &summed.build(), Outcome::New);
        assert_frame(
            "UDP with checksum",
            &out,
            &summed
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        assert_ne!(be16(&out, IP + 20 + 6), 0);

        // Replies back to the container, likewise.
        let reply = Pkt::udp((UPLINK_MAC, ROUTER_MAC), (SERVER, 53), (HOST, 5000), false);
        let out = lab.uplink(
            "UDP reply without checksum",
            &reply.build(),
            Outcome::Translated,
        );
        assert_frame(
            "UDP reply without checksum",
            &out,
            &reply
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ttl(63),
        );
        assert_eq!(be16(&out, IP + 20 + 6), 0);
        let reply = Pkt::udp((UPLINK_MAC, ROUTER_MAC), (SERVER, 53), (HOST, 5001), true);
        let out = lab.uplink(
            "UDP reply with checksum",
            &reply.build(),
            Outcome::Translated,
        );
        assert_frame(
            "UDP reply with checksum",
            &out,
            &reply
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ttl(63),
        );

        // A datagram whose checksum after the rewrite computes to 0 must
        // carry 0xffff (RFC 768), not 0 ("no checksum"). Two leading payload
        // bytes are chosen so that the rewritten datagram sums to all ones.
        let mut tuned = Pkt::udp(tx(&a), (ip(&a), 5002), (SERVER, 53), true);
        let L4::Udp { payload, .. } = &mut tuned.l4 else {
            unreachable!()
        };
        payload.splice(0..0, [0, 0]);
        let mut u = tuned.clone().addrs(HOST, SERVER).l4_bytes();
        u[6..8].fill(0);
        let filler = csum_fold(&u, pseudo_sum(HOST, SERVER, IPPROTO_UDP, u.len()));
        let L4::Udp { payload, .. } = &mut tuned.l4 else {
            unreachable!()
        };
        payload[..2].copy_from_slice(&filler.to_be_bytes());
        assert_eq!(
            be16(&tuned.clone().addrs(HOST, SERVER).l4_bytes(), 6),
            0xffff,
            "the tuned datagram checksums to 0 once rewritten"
        );
        let out = lab.container(
            "UDP whose new checksum is 0",
            a,
            &tuned.build(),
            Outcome::New,
        );
        assert_frame(
            "UDP whose new checksum is 0",
            &out,
            &tuned
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        assert_eq!(
            be16(&out, IP + 20 + 6),
            0xffff,
            "a computed 0 goes out as 0xffff"
        );

        assert_eq!(lab.ct_len(), 6);
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 3. ICMP echo.
// ---------------------------------------------------------------------------

#[test]
fn icmp_echo_is_masqueraded_and_the_reply_returns() {
    in_private_netns(|| {
        let mut lab = Lab::new("echo");
        let a = lab.a;

        let ping = Pkt::echo(tx(&a), ip(&a), SERVER, 8, 0x1234);
        let out = lab.container("echo request", a, &ping.build(), Outcome::New);
        assert_frame(
            "echo request",
            &out,
            &ping
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        assert_eq!(be16(&out, IP + 20 + 4), 0x1234, "the identifier is kept");
        let k = CtKey::new(IPPROTO_ICMP, a.ip, port_wire(0x1234), ipv4_wire(SERVER), 0);
        assert_eq!(
            lab.ct_get(&k).map(|e| tuple(&e)),
            Some((HOST, 0x1234, SERVER, 0))
        );
        let rk = CtKey::new(
            IPPROTO_ICMP,
            ipv4_wire(SERVER),
            0,
            ipv4_wire(HOST),
            port_wire(0x1234),
        );
        assert_eq!(
            lab.ct_get(&rk).map(|e| tuple(&e)),
            Some((SERVER, 0, ip(&a), 0x1234))
        );

        let pong = Pkt::echo((UPLINK_MAC, ROUTER_MAC), SERVER, HOST, 0, 0x1234);
        let out = lab.uplink("echo reply", &pong.build(), Outcome::Translated);
        assert_frame(
            "echo reply",
            &out,
            &pong
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ttl(63),
        );

        // Echo traffic that belongs to no flow of ours is the host's.
        let other = Pkt::echo((UPLINK_MAC, ROUTER_MAC), SERVER, HOST, 0, 0x4321);
        lab.uplink("echo reply of no flow", &other.build(), Outcome::Passed);
        let request = Pkt::echo((UPLINK_MAC, ROUTER_MAC), SERVER, HOST, 8, 0x1234);
        lab.uplink(
            "echo request to the host",
            &request.build(),
            Outcome::Passed,
        );
        // An ICMP type translation does not carry leaves the container
        // only to the host.
        let mut timestamp = Pkt::echo(tx(&a), ip(&a), SERVER, 13, 7);
        lab.container(
            "ICMP timestamp request to the Internet",
            a,
            &timestamp.build(),
            Outcome::Drop(DropReason::UnsupportedProtocol),
        );
        timestamp.dst = HOST;
        lab.container(
            "ICMP timestamp request to the host",
            a,
            &timestamp.build(),
            Outcome::Passed,
        );
        // An echo reply from the container (it answers someone's ping) is
        // not masqueraded.
        let answer = Pkt::echo(tx(&a), ip(&a), SERVER, 0, 99);
        lab.container(
            "echo reply from the container",
            a,
            &answer.build(),
            Outcome::Passed,
        );

        assert_eq!(lab.ct_len(), 2);
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 4. Source port collisions.
// ---------------------------------------------------------------------------

#[test]
fn a_taken_source_port_is_replaced_from_the_nat_range() {
    in_private_netns(|| {
        let mut lab = Lab::new("collide");
        let a = lab.a;
        let now = now_ns();

        // Another flow already owns the reply tuple of A's port 40000 toward
        // the server (as another container's masqueraded connection would).
        let taken = tcp_key((SERVER, 80), (HOST, 40000));
        let squatter = live_entry(
            ([1, 2, 3, 4], 80, [172, 18, 0, 9], 40000),
            CT_DNAT | CT_REPLY,
            SEEN_ESTABLISHED,
            now,
        );
        lab.ct_put(taken, squatter);

        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN);
        let out = lab.container("SYN whose port is taken", a, &syn.build(), Outcome::New);
        let (src, port) = src_of(&out);
        assert_eq!(src, HOST);
        assert!(
            (NAT_PORT_MIN..=65535).contains(&port),
            "remapped source port {port} outside {NAT_PORT_MIN}..=65535"
        );
        assert_frame(
            "SYN whose port is taken",
            &out,
            &syn.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ports(port, 80)
                .ttl(63),
        );
        let fwd = lab.ct_get(&tcp_key((ip(&a), 40000), (SERVER, 80))).unwrap();
        assert_eq!(tuple(&fwd), (HOST, port, SERVER, 80));
        let rev = lab.ct_get(&tcp_key((SERVER, 80), (HOST, port))).unwrap();
        assert_eq!(tuple(&rev), (SERVER, 80, ip(&a), 40000));
        assert_eq!(
            lab.ct_get(&taken).map(|e| tuple(&e)),
            Some(tuple(&squatter)),
            "the other flow keeps its entry"
        );

        // The flow keeps its port, both ways.
        let ack = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_ACK);
        let out = lab.container(
            "ACK of the remapped flow",
            a,
            &ack.build(),
            Outcome::Translated,
        );
        assert_frame(
            "ACK of the remapped flow",
            &out,
            &ack.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ports(port, 80)
                .ttl(63),
        );
        let reply = Pkt::tcp(
            (UPLINK_MAC, ROUTER_MAC),
            (SERVER, 80),
            (HOST, port),
            TCP_ACK,
        );
        let out = lab.uplink(
            "reply to the remapped port",
            &reply.build(),
            Outcome::Translated,
        );
        assert_frame(
            "reply to the remapped port",
            &out,
            &reply
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ports(80, 40000)
                .ttl(63),
        );

        // UDP, with a checksum, likewise.
        let taken = udp_key((SERVER, 53), (HOST, 6000));
        lab.ct_put(
            taken,
            live_entry(
                ([1, 2, 3, 4], 53, [172, 18, 0, 9], 6000),
                CT_DNAT | CT_REPLY,
                SEEN_ESTABLISHED,
                now,
            ),
        );
        let dgram = Pkt::udp(tx(&a), (ip(&a), 6000), (SERVER, 53), true);
        let out = lab.container("UDP whose port is taken", a, &dgram.build(), Outcome::New);
        let (_, port) = src_of(&out);
        assert!((NAT_PORT_MIN..=65535).contains(&port), "{port}");
        assert_frame(
            "UDP whose port is taken",
            &out,
            &dgram
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ports(port, 53)
                .ttl(63),
        );

        // An expired entry on the reply tuple does not hold the port: the
        // original is kept and the dead entry replaced.
        let stale_key = udp_key((SERVER, 53), (HOST, 7000));
        lab.ct_put(
            stale_key,
            live_entry(
                ([1, 2, 3, 4], 53, [172, 18, 0, 9], 7000),
                CT_DNAT | CT_REPLY,
                0,
                now.wrapping_sub(2 * CT_TIMEOUT_UDP),
            ),
        );
        let dgram = Pkt::udp(tx(&a), (ip(&a), 7000), (SERVER, 53), true);
        let out = lab.container("UDP over an expired entry", a, &dgram.build(), Outcome::New);
        assert_frame(
            "UDP over an expired entry",
            &out,
            &dgram
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        let rev = lab.ct_get(&stale_key).unwrap();
        assert_eq!(
            tuple(&rev),
            (SERVER, 53, ip(&a), 7000),
            "the dead entry is replaced"
        );
        assert_eq!(rev.flags, CT_DNAT | CT_REPLY);

        // ICMP echo: a taken identifier is replaced like a port, and the
        // reply gets the original back (both move the ICMP checksum).
        let taken = CtKey::new(
            IPPROTO_ICMP,
            ipv4_wire(SERVER),
            0,
            ipv4_wire(HOST),
            port_wire(0x1234),
        );
        lab.ct_put(
            taken,
            live_entry(
                ([1, 2, 3, 4], 0, [172, 18, 0, 9], 0x1234),
                CT_DNAT | CT_REPLY,
                SEEN_ESTABLISHED,
                now,
            ),
        );
        let ping = Pkt::echo(tx(&a), ip(&a), SERVER, 8, 0x1234);
        let out = lab.container("ping whose id is taken", a, &ping.build(), Outcome::New);
        let id = be16(&out, IP + 20 + 4);
        assert!((NAT_PORT_MIN..=65535).contains(&id), "{id}");
        let sent = ping
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ports(id, 0)
            .ttl(63);
        assert_frame("ping whose id is taken", &out, &sent);
        let pong = Pkt::echo((UPLINK_MAC, ROUTER_MAC), SERVER, HOST, 0, id);
        let out = lab.uplink(
            "reply to the remapped ping",
            &pong.build(),
            Outcome::Translated,
        );
        assert_frame(
            "reply to the remapped ping",
            &out,
            &pong
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ports(0x1234, 0)
                .ttl(63),
        );
        // An error about it quotes the original identifier again.
        let err = Pkt::icmp_error((UPLINK_MAC, ROUTER_MAC), ROUTER, HOST, 11, 0, &sent);
        let out = lab.uplink(
            "time exceeded about the remapped ping",
            &err.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error(
            (a.mac, a.host_mac),
            ROUTER,
            ip(&a),
            11,
            0,
            &ping.clone().ttl(63),
        )
        .ttl(63);
        assert_frame("time exceeded about the remapped ping", &out, &want);
        assert_eq!(
            be16(&out, IP + 20 + 8 + 20 + 4),
            0x1234,
            "quoted identifier"
        );

        lab.assert_stats();
    });
}

#[test]
fn no_free_source_port_drops_and_counts() {
    in_private_netns(|| {
        let mut lab = Lab::new("exhaust");
        let a = lab.a;
        let now = now_ns();
        // Every candidate: the original port and the whole NAT range.
        for port in std::iter::once(40000).chain(NAT_PORT_MIN..=65535) {
            lab.ct_put(
                tcp_key((SERVER, 80), (HOST, port)),
                live_entry(
                    (SERVER, 80, [172, 18, 0, 9], port),
                    CT_DNAT | CT_REPLY,
                    SEEN_ESTABLISHED,
                    now,
                ),
            );
        }
        let before = lab.ct_len();
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN);
        lab.container(
            "SYN without a free port",
            a,
            &syn.build(),
            Outcome::Drop(DropReason::NatExhausted),
        );
        assert_eq!(lab.ct_len(), before, "no entry for a refused flow");
        // Another destination port is another reply tuple: free.
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 443), TCP_SYN);
        let out = lab.container("SYN to another port", a, &syn.build(), Outcome::New);
        assert_eq!(src_of(&out), (HOST, 40000));
        lab.assert_stats();
    });
}

/// Looking for a free reply tuple must not count as traffic of the flow
/// that holds it.
#[test]
fn probing_a_taken_reply_tuple_leaves_its_entry_alone() {
    in_private_netns(|| {
        let mut lab = Lab::new("probe");
        let a = lab.a;
        // A half-open flow of another container: its reply entry has seen
        // nothing yet and was last refreshed 30 s ago (SYN timeout 60 s).
        let taken = tcp_key((SERVER, 80), (HOST, 40000));
        let before = live_entry(
            (SERVER, 80, [172, 18, 0, 9], 40000),
            CT_DNAT | CT_REPLY,
            0,
            now_ns().wrapping_sub(CT_TIMEOUT_TCP_SYN / 2),
        );
        lab.ct_put(taken, before);
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN);
        lab.container("SYN whose port is taken", a, &syn.build(), Outcome::New);
        let after = lab.ct_get(&taken).unwrap();
        assert_eq!(
            (after.seen, after.last_seen),
            (before.seen, before.last_seen),
            "the other flow's entry must not change"
        );
    });
}

// ---------------------------------------------------------------------------
// 5. Published ports.
// ---------------------------------------------------------------------------

#[test]
fn published_ports_from_the_uplink() {
    in_private_netns(|| {
        let mut lab = Lab::new("publish");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        lab.publish(IPPROTO_TCP, HOST2, 9090, ip(&a), 90);
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        let syn = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), TCP_SYN);
        let out = lab.uplink("SYN to a published port", &syn.build(), Outcome::New);
        assert_frame(
            "SYN to a published port",
            &out,
            &syn.clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(50000, 80)
                .ttl(63),
        );
        let orig = tcp_key((CLIENT, 50000), (HOST, 8080));
        let fwd = lab
            .ct_get(&orig)
            .expect("CT entry of the client's direction");
        assert_eq!(
            tuple(&fwd),
            (CLIENT, 50000, ip(&a), 80),
            "the client address is kept"
        );
        assert_eq!(fwd.flags, CT_DNAT | CT_PUBLISHED);
        let rev = lab
            .ct_get(&tcp_key((ip(&a), 80), (CLIENT, 50000)))
            .expect("reply entry");
        assert_eq!(tuple(&rev), (HOST, 8080, CLIENT, 50000));
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_REPLY);

        // Segments that cannot open a flow and belong to none are the host's.
        for (what, port, flags) in [
            ("ACK without a flow", 50001, TCP_ACK),
            ("SYN-ACK without a flow", 50002, TCP_SYN | TCP_ACK),
            ("FIN without a flow", 50003, TCP_FIN | TCP_ACK),
        ] {
            let f = Pkt::tcp(from_net, (CLIENT, port), (HOST, 8080), flags);
            lab.uplink(what, &f.build(), Outcome::Passed);
        }
        let f = Pkt::tcp(from_net, (CLIENT, 50004), (HOST, 9090), TCP_SYN);
        lab.uplink(
            "SYN to a port published on another address",
            &f.build(),
            Outcome::Passed,
        );
        let f = Pkt::tcp(from_net, (CLIENT, 50005), (HOST, 8081), TCP_SYN);
        lab.uplink("SYN to an unpublished port", &f.build(), Outcome::Passed);
        let f = Pkt::udp(from_net, (CLIENT, 50006), (HOST, 8080), true);
        lab.uplink(
            "UDP to a port published for TCP",
            &f.build(),
            Outcome::Passed,
        );
        let f = Pkt::tcp(
            from_net,
            (CLIENT, 50007),
            ([198, 51, 100, 50], 8080),
            TCP_SYN,
        );
        lab.uplink(
            "SYN to a published port of an address not ours",
            &f.build(),
            Outcome::Passed,
        );

        let syn2 = Pkt::tcp(from_net, (CLIENT, 50008), (HOST2, 9090), TCP_SYN);
        let out = lab.uplink(
            "SYN to the address a port is bound to",
            &syn2.build(),
            Outcome::New,
        );
        assert_frame(
            "SYN to the address a port is bound to",
            &out,
            &syn2
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(50008, 90)
                .ttl(63),
        );

        // With TTL 1 the SYN goes to the host stack untranslated (which
        // answers time exceeded), and opens no flow.
        let before = lab.ct_len();
        let f = Pkt::tcp(from_net, (CLIENT, 50009), (HOST, 8080), TCP_SYN).ttl(1);
        lab.uplink(
            "SYN with TTL 1 to a published port",
            &f.build(),
            Outcome::Passed,
        );
        assert_eq!(lab.ct_len(), before, "a TTL-1 SYN opens no flow");
        assert!(lab
            .ct_get(&tcp_key((CLIENT, 50009), (HOST, 8080)))
            .is_none());

        // The container answers; it leaves from the published address and port.
        let syn_ack = Pkt::tcp(tx(&a), (ip(&a), 80), (CLIENT, 50000), TCP_SYN | TCP_ACK);
        let out = lab.container(
            "the container's SYN-ACK",
            a,
            &syn_ack.build(),
            Outcome::Translated,
        );
        assert_frame(
            "the container's SYN-ACK",
            &out,
            &syn_ack
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, CLIENT)
                .ports(8080, 50000)
                .ttl(63),
        );
        assert_eq!(src_of(&out), (HOST, 8080));

        // With no way to the client, the translated packet is left to the
        // host stack (which answers unreachable): rewritten, but neither
        // forwarded nor aged by a hop.
        let client = format!("{}/32", dotted(CLIENT));
        ip_cmd(&["route", "add", "unreachable", &client]);
        let data = Pkt::tcp(tx(&a), (ip(&a), 80), (CLIENT, 50000), TCP_ACK);
        let out = lab.container(
            "the container's data with no route to the client",
            a,
            &data.build(),
            Outcome::TranslatedPassed,
        );
        assert_frame(
            "the container's data with no route to the client",
            &out,
            &data.clone().addrs(HOST, CLIENT).ports(8080, 50000),
        );
        ip_cmd(&["route", "del", "unreachable", &client]);

        // The rest of the client's flow uses the entry, one routed hop like
        // the first SYN.
        let ack = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), TCP_ACK);
        let out = lab.uplink("the client's ACK", &ack.build(), Outcome::Translated);
        assert_frame(
            "the client's ACK",
            &out,
            &ack.clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(50000, 80)
                .ttl(63),
        );

        // Published UDP, and a container's ICMP error about such a flow:
        // it leaves from the host, quoting the published address and port.
        lab.publish(IPPROTO_UDP, [0; 4], 8053, ip(&a), 53);
        let q = Pkt::udp(from_net, (CLIENT, 5353), (HOST, 8053), true);
        let out = lab.uplink("UDP to a published port", &q.build(), Outcome::New);
        assert_frame(
            "UDP to a published port",
            &out,
            &q.clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(5353, 53)
                .ttl(63),
        );
        let seen_by_a = q
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(CLIENT, ip(&a))
            .ports(5353, 53)
            .ttl(63);
        let unreach = Pkt::icmp_error(tx(&a), ip(&a), CLIENT, 3, 3, &seen_by_a);
        let out = lab.container(
            "port unreachable from the container",
            a,
            &unreach.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error(
            (ROUTER_MAC, UPLINK_MAC),
            HOST,
            CLIENT,
            3,
            3,
            &q.clone().macs(a.mac, a.host_mac).ttl(63),
        )
        .ttl(63);
        assert_frame("port unreachable from the container", &out, &want);

        assert_eq!(lab.ct_len(), 6, "8080, 9090 and UDP 8053 flows");
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 6. ICMP errors about masqueraded flows.
// ---------------------------------------------------------------------------

#[test]
fn icmp_errors_about_masqueraded_flows_are_translated() {
    in_private_netns(|| {
        let mut lab = Lab::new("icmperr");
        let a = lab.a;
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        // A's UDP 5353 -> server:53 leaves as HOST:5353.
        let q = Pkt::udp(tx(&a), (ip(&a), 5353), (SERVER, 53), true);
        let out = lab.container("UDP query", a, &q.build(), Outcome::New);
        assert_eq!(src_of(&out), (HOST, 5353));
        let sent = q
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        // What A sent, as A sent it (but for the TTL the quote carries).
        let as_a_sent = q.clone().ttl(63);

        let err = Pkt::icmp_error(from_net, SERVER, HOST, 3, 3, &sent);
        let out = lab.uplink(
            "port unreachable from the server",
            &err.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error((a.mac, a.host_mac), SERVER, ip(&a), 3, 3, &as_a_sent).ttl(63);
        assert_frame("port unreachable from the server", &out, &want);
        let inner = IP + 20 + 8;
        assert_eq!(ip4(&out, inner + 12), ip(&a), "quoted source address");
        assert_eq!(be16(&out, inner + 20), 5353, "quoted source port");

        // A router on the way keeps its own address as the source.
        let err = Pkt::icmp_error(from_net, ROUTER, HOST, 11, 0, &sent);
        let out = lab.uplink(
            "time exceeded from a router",
            &err.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error((a.mac, a.host_mac), ROUTER, ip(&a), 11, 0, &as_a_sent).ttl(63);
        assert_frame("time exceeded from a router", &out, &want);
        // With TTL 1 an error is the host's, untranslated.
        let err = Pkt::icmp_error(from_net, ROUTER, HOST, 11, 0, &sent).ttl(1);
        lab.uplink("time exceeded with TTL 1", &err.build(), Outcome::Passed);

        // A flow whose port was remapped: the quoted port goes back too,
        // which moves the ICMP checksum.
        lab.ct_put(
            udp_key((SERVER, 53), (HOST, 5354)),
            live_entry(
                ([1, 2, 3, 4], 53, [172, 18, 0, 9], 5354),
                CT_DNAT | CT_REPLY,
                SEEN_ESTABLISHED,
                now_ns(),
            ),
        );
        let q2 = Pkt::udp(tx(&a), (ip(&a), 5354), (SERVER, 53), true);
        let out = lab.container(
            "UDP query whose port is taken",
            a,
            &q2.build(),
            Outcome::New,
        );
        let (_, port) = src_of(&out);
        assert_ne!(port, 5354);
        let sent2 = q2
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ports(port, 53)
            .ttl(63);
        let err = Pkt::icmp_error(from_net, SERVER, HOST, 3, 3, &sent2);
        let out = lab.uplink(
            "port unreachable about a remapped port",
            &err.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error(
            (a.mac, a.host_mac),
            SERVER,
            ip(&a),
            3,
            3,
            &q2.clone().ttl(63),
        )
        .ttl(63);
        assert_frame("port unreachable about a remapped port", &out, &want);
        assert_eq!(be16(&out, inner + 20), 5354, "quoted source port restored");

        // The container's own error about a reply of that flow (its socket
        // is gone) leaves from the host, quoting the remapped port.
        let reply_seen_by_a = Pkt::udp(tx(&a), (SERVER, 53), (ip(&a), 5354), true)
            .macs(a.mac, a.host_mac)
            .ttl(63);
        let unreach = Pkt::icmp_error(tx(&a), ip(&a), SERVER, 3, 3, &reply_seen_by_a);
        let out = lab.container(
            "the container's port unreachable about a remapped flow",
            a,
            &unreach.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error(
            (ROUTER_MAC, UPLINK_MAC),
            HOST,
            SERVER,
            3,
            3,
            &reply_seen_by_a.clone().addrs(SERVER, HOST).ports(53, port),
        )
        .ttl(63);
        assert_frame(
            "the container's port unreachable about a remapped flow",
            &out,
            &want,
        );
        let late = unreach.clone().ttl(1);
        lab.container(
            "the container's port unreachable with TTL 1",
            a,
            &late.build(),
            Outcome::Passed,
        );

        // An error about a ping.
        let ping = Pkt::echo(tx(&a), ip(&a), SERVER, 8, 0x0777);
        lab.container("echo request", a, &ping.build(), Outcome::New);
        let sent = ping
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        let err = Pkt::icmp_error(from_net, ROUTER, HOST, 3, 1, &sent);
        let out = lab.uplink(
            "host unreachable about a ping",
            &err.build(),
            Outcome::Translated,
        );
        let want = Pkt::icmp_error(
            (a.mac, a.host_mac),
            ROUTER,
            ip(&a),
            3,
            1,
            &ping.clone().ttl(63),
        )
        .ttl(63);
        assert_frame("host unreachable about a ping", &out, &want);

        // Errors about nothing we translated are the host's.
        let stranger = Pkt::udp(from_net, (HOST, 4444), (SERVER, 53), true);
        let err = Pkt::icmp_error(from_net, SERVER, HOST, 3, 3, &stranger);
        lab.uplink(
            "port unreachable about a host flow",
            &err.build(),
            Outcome::Passed,
        );
        let mut short = Pkt::icmp_error(from_net, SERVER, HOST, 3, 3, &sent2).build();
        short.truncate(short.len() - 4);
        let total = (short.len() - IP) as u16;
        short[IP + 2..IP + 4].copy_from_slice(&total.to_be_bytes());
        short[IP + 10..IP + 12].fill(0);
        let c = csum_fold(&short[IP..IP + 20], 0);
        short[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        lab.uplink("ICMP error quoting too little", &short, Outcome::Passed);

        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 7. Fragments, truncated frames, IP options.
// ---------------------------------------------------------------------------

#[test]
fn fragments_truncated_frames_and_options() {
    in_private_netns(|| {
        let mut lab = Lab::new("frag");
        let a = lab.a;
        lab.publish(IPPROTO_UDP, [0; 4], 8053, ip(&a), 53);
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let shot = Outcome::Drop;

        let udp_out = Pkt::udp(tx(&a), (ip(&a), 5000), (SERVER, 53), true);
        let tcp_out = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN);
        let out_there = |p: &Pkt| {
            p.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63)
        };
        // A first fragment reads like a whole datagram: it opens its flow
        // (whole fragmented datagrams: section 7b).
        let mut mf = udp_out.clone();
        mf.frag = 0x2000;
        let out = lab.container(
            "UDP first fragment to the Internet",
            a,
            &mf.build(),
            Outcome::New,
        );
        assert_fragment(
            "UDP first fragment to the Internet",
            &out,
            &out_there(&mf).build(),
        );
        assert_eq!(
            lab.frags_get(IPPROTO_UDP, ip(&a), SERVER, mf.id),
            Some((5000, 53)),
            "FRAGS: the first fragment's ports, under its untranslated addresses"
        );
        // A later one takes its flow's ports from FRAGS; only its addresses
        // change (whatever its data looks like).
        let mut later = udp_out.clone();
        later.frag = 185;
        let later = later.build();
        let out = lab.container(
            "UDP later fragment to the Internet",
            a,
            &later,
            Outcome::Translated,
        );
        let moved = |f: &[u8]| readdressed(f, (ROUTER_MAC, UPLINK_MAC), HOST, SERVER, 63);
        assert_fragment("UDP later fragment to the Internet", &out, &moved(&later));
        let mut tcp_mf = tcp_out.clone();
        tcp_mf.frag = 0x2000;
        let out = lab.container(
            "TCP first fragment to the Internet",
            a,
            &tcp_mf.build(),
            Outcome::New,
        );
        assert_fragment(
            "TCP first fragment to the Internet",
            &out,
            &out_there(&tcp_mf).build(),
        );
        // A later fragment reads no L4 bytes: 4 of them are fine, for the
        // datagram whose first fragment was seen (same id); of another
        // datagram, it is dropped.
        let mut tiny = Pkt::new(
            tx(&a),
            ip(&a),
            SERVER,
            L4::Other {
                proto: IPPROTO_UDP,
                data: b"abcd".to_vec(),
            },
        );
        tiny.frag = 0x2000 | 200;
        let out = lab.container(
            "4-byte UDP fragment to the Internet",
            a,
            &tiny.build(),
            Outcome::Translated,
        );
        assert_fragment(
            "4-byte UDP fragment to the Internet",
            &out,
            &moved(&tiny.build()),
        );
        lab.container(
            "4-byte UDP fragment of an unseen datagram to the Internet",
            a,
            &tiny.clone().id(0x0bad).build(),
            shot(DropReason::Fragment),
        );
        let mut tiny_opts = tiny.clone();
        tiny_opts.options = vec![1, 1, 1, 0];
        lab.container(
            "later UDP fragment with IHL 6 to the Internet",
            a,
            &tiny_opts.build(),
            shot(DropReason::NatMalformed),
        );
        // Protocols translation does not carry: refused toward the Internet.
        let mut gre = Pkt::new(
            tx(&a),
            ip(&a),
            SERVER,
            L4::Other {
                proto: 47,
                data: vec![0; 12],
            },
        );
        lab.container(
            "GRE to the Internet",
            a,
            &gre.build(),
            shot(DropReason::UnsupportedProtocol),
        );
        gre.frag = 0x2000;
        lab.container(
            "GRE fragment to the Internet",
            a,
            &gre.build(),
            shot(DropReason::UnsupportedProtocol),
        );
        gre.frag = 0x2000 | 185;
        lab.container(
            "later GRE fragment to the Internet",
            a,
            &gre.build(),
            shot(DropReason::UnsupportedProtocol),
        );

        // Cut short.
        let syn = tcp_out.build();
        lab.container(
            "IPv4 header only (TCP)",
            a,
            &cut(&syn, IP + 20),
            shot(DropReason::NatMalformed),
        );
        lab.container(
            "TCP cut after the ports",
            a,
            &cut(&syn, IP + 20 + 10),
            shot(DropReason::NatMalformed),
        );
        lab.container(
            "TCP cut before the flags",
            a,
            &cut(&syn, IP + 20 + 13),
            shot(DropReason::NatMalformed),
        );
        // The NAT path needs the whole 20-byte header (checksum included).
        lab.container(
            "TCP cut one byte short of its header",
            a,
            &cut(&syn, IP + 20 + 19),
            shot(DropReason::NatMalformed),
        );
        let udp = udp_out.build();
        lab.container(
            "UDP cut to 6 bytes",
            a,
            &cut(&udp, IP + 20 + 6),
            shot(DropReason::NatMalformed),
        );

        // IP options.
        let mut opts = udp_out.clone();
        opts.options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
        lab.container(
            "UDP with IHL 6 to the Internet",
            a,
            &opts.build(),
            shot(DropReason::NatMalformed),
        );
        let mut tcp_opts = tcp_out.clone();
        tcp_opts.options = vec![1, 1, 1, 0];
        lab.container(
            "TCP with IHL 6 to the Internet",
            a,
            &tcp_opts.build(),
            shot(DropReason::NatMalformed),
        );

        // The same oddities to a host address go to the host as they are.
        let to_host = |p: &Pkt| p.clone().addrs(ip(&a), HOST);
        let mut f = to_host(&udp_out);
        f.frag = 0x2000;
        lab.container(
            "UDP fragment to a host address",
            a,
            &f.build(),
            Outcome::Passed,
        );
        let mut f = to_host(&udp_out);
        f.frag = 185;
        lab.container(
            "later UDP fragment to a host address",
            a,
            &f.build(),
            Outcome::Passed,
        );
        let mut f = to_host(&tcp_out);
        f.options = vec![1, 1, 1, 0];
        lab.container(
            "TCP with IHL 6 to a host address",
            a,
            &f.build(),
            Outcome::Passed,
        );
        lab.container(
            "TCP cut after the ports, to a host address",
            a,
            &cut(&to_host(&tcp_out).build(), IP + 20 + 10),
            Outcome::Passed,
        );
        lab.container(
            "IPv4 header only, to the gateway",
            a,
            &cut(&tcp_out.clone().addrs(ip(&a), gw(&a)).build(), IP + 20),
            Outcome::Passed,
        );
        let gre_home = Pkt::new(
            tx(&a),
            ip(&a),
            HOST,
            L4::Other {
                proto: 47,
                data: vec![0; 12],
            },
        );
        lab.container(
            "GRE to a host address",
            a,
            &gre_home.build(),
            Outcome::Passed,
        );

        // A first fragment to a published port opens its flow like a whole
        // datagram; its later fragments follow it.
        let from_net = (UPLINK_MAC, ROUTER_MAC);
        let published_udp = Pkt::udp(from_net, (CLIENT, 5353), (HOST, 8053), true);
        let to_a = |p: &Pkt| {
            p.clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ttl(63)
        };
        let mut f = published_udp.clone();
        f.frag = 0x2000;
        let out = lab.uplink(
            "UDP first fragment to a published port",
            &f.build(),
            Outcome::New,
        );
        assert_fragment(
            "UDP first fragment to a published port",
            &out,
            &to_a(&f).ports(5353, 53).build(),
        );
        let mut f = published_udp.clone();
        f.frag = 185;
        let later = f.build();
        let out = lab.uplink(
            "UDP later fragment to a published port",
            &later,
            Outcome::Translated,
        );
        // Its data are left alone, "ports" included.
        assert_fragment(
            "UDP later fragment to a published port",
            &out,
            &readdressed(&later, (a.mac, a.host_mac), CLIENT, ip(&a), 63),
        );
        // from_uplink never judges what it cannot translate: to the host.
        lab.uplink(
            "UDP later fragment of an unseen datagram to a host address",
            &f.clone().id(0x0bad).build(),
            Outcome::Passed,
        );
        let published_syn = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), TCP_SYN);
        let mut f = published_syn.clone();
        f.options = vec![1, 1, 1, 0];
        lab.uplink(
            "SYN with IHL 6 to a published port",
            &f.build(),
            Outcome::Passed,
        );
        let s = published_syn.build();
        lab.uplink(
            "SYN cut after the ports",
            &cut(&s, IP + 20 + 10),
            Outcome::Passed,
        );
        lab.uplink(
            "SYN cut one byte short of its header",
            &cut(&s, IP + 20 + 19),
            Outcome::Passed,
        );
        lab.uplink("IPv4 header only", &cut(&s, IP + 20), Outcome::Passed);
        let gre_in = Pkt::new(
            from_net,
            SERVER,
            HOST,
            L4::Other {
                proto: 47,
                data: vec![0; 12],
            },
        );
        lab.uplink("GRE", &gre_in.build(), Outcome::Passed);

        assert_eq!(
            lab.ct_len(),
            6,
            "only the three first fragments (UDP, TCP, published UDP) open flows"
        );

        // And a whole packet of the first fragment's flow uses its entry.
        let out = lab.container("a plain UDP datagram", a, &udp, Outcome::Translated);
        assert_frame("a plain UDP datagram", &out, &out_there(&udp_out));
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 7b. Fragmented datagrams: the first fragment is translated like a whole
// datagram (ports, and an L4 checksum that holds for the whole datagram),
// the later ones get only their addresses, from the first one's flow.
// ---------------------------------------------------------------------------

/// Sends the fragments of one datagram through `prog` in the given order
/// (indexes into `frags`), the first fragment (index 0) with `first`, the
/// others as [`Outcome::Translated`]; checks each output against the same
/// cut of `want` and returns the outputs in the order sent.
#[allow(clippy::too_many_arguments)]
fn send_fragments(
    lab: &mut Lab,
    what: &str,
    prog: Prog,
    ifindex: u32,
    frags: &[Vec<u8>],
    order: &[usize],
    first: Outcome,
    want: &Pkt,
) -> Vec<Vec<u8>> {
    let wants = fragments(want, CUTS);
    assert_eq!(wants.len(), frags.len());
    order
        .iter()
        .map(|&i| {
            let w = format!("{what}, fragment {i}");
            let outcome = if i == 0 { first } else { Outcome::Translated };
            let out = lab.send(&w, prog, ifindex, &frags[i], outcome);
            assert_fragment(&w, &out, &wants[i]);
            if i > 0 {
                assert_eq!(
                    hex(&out[IP + 20..]),
                    hex(&frags[i][IP + 20..]),
                    "{w}: a later fragment keeps its data"
                );
            }
            out
        })
        .collect()
}

#[test]
fn a_fragmented_udp_datagram_is_masqueraded_and_its_fragmented_reply_returns() {
    in_private_netns(|| {
        let mut lab = Lab::new("fragudp");
        let a = lab.a;
        let up = lab.uplink;
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        // 3508 bytes of UDP: three fragments at MTU 1500, the checksum of
        // the first computed over all of them.
        let dgram = Pkt::big_udp(tx(&a), (ip(&a), 5000), (SERVER, 53), 3500).id(0x4242);
        let frags = fragments(&dgram, CUTS);
        assert_eq!(frags.len(), 3);
        let want = dgram
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented UDP to the Internet",
            Prog::Container,
            a.ifindex,
            &frags,
            &[0, 1, 2],
            Outcome::New,
            &want,
        );
        assert_eq!(src_of(&outs[0]), (HOST, 5000));
        assert_eq!(
            lab.frags_get(IPPROTO_UDP, ip(&a), SERVER, 0x4242),
            Some((5000, 53))
        );
        let whole = reassemble("fragmented UDP to the Internet", &outs);
        assert_frame("fragmented UDP to the Internet, reassembled", &whole, &want);
        let fwd = lab.ct_get(&udp_key((ip(&a), 5000), (SERVER, 53))).unwrap();
        assert_eq!(tuple(&fwd), (HOST, 5000, SERVER, 53));
        assert_eq!(lab.ct_len(), 2, "one flow for the whole datagram");

        // The server's fragmented answer, back to the container.
        let reply = Pkt::big_udp(from_net, (SERVER, 53), (HOST, 5000), 3900).id(0x9999);
        let want = reply
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(SERVER, ip(&a))
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented UDP reply",
            Prog::Uplink,
            up,
            &fragments(&reply, CUTS),
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        assert_eq!(dst_of(&outs[0]), (ip(&a), 5000));
        let whole = reassemble("fragmented UDP reply", &outs);
        assert_frame("fragmented UDP reply, reassembled", &whole, &want);

        // A source port that must change: the first fragment's port and
        // checksum change, the later ones follow it in any order.
        let now = now_ns();
        lab.ct_put(
            udp_key((SERVER, 53), (HOST, 6000)),
            live_entry(
                ([1, 2, 3, 4], 53, [172, 18, 0, 9], 6000),
                CT_DNAT | CT_REPLY,
                SEEN_ESTABLISHED,
                now,
            ),
        );
        let dgram = Pkt::big_udp(tx(&a), (ip(&a), 6000), (SERVER, 53), 3500).id(0x4343);
        let frags = fragments(&dgram, CUTS);
        // The remapped port is random: what to want is known after the run.
        let first = lab.container(
            "fragmented UDP whose port is taken, fragment 0",
            a,
            &frags[0],
            Outcome::New,
        );
        let port = src_of(&first).1;
        assert!((NAT_PORT_MIN..=65535).contains(&port), "{port}");
        let want = dgram
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ports(port, 53)
            .ttl(63);
        let wants = fragments(&want, CUTS);
        assert_fragment(
            "fragmented UDP whose port is taken, fragment 0",
            &first,
            &wants[0],
        );
        let mut outs = vec![first];
        for i in [2, 1] {
            let w = format!("fragmented UDP whose port is taken, fragment {i}");
            let out = lab.container(&w, a, &frags[i], Outcome::Translated);
            assert_fragment(&w, &out, &wants[i]);
            outs.push(out);
        }
        let whole = reassemble("fragmented UDP whose port is taken", &outs);
        assert_frame(
            "fragmented UDP whose port is taken, reassembled",
            &whole,
            &want,
        );
        let reply = Pkt::big_udp(from_net, (SERVER, 53), (HOST, port), 3000).id(0x9a9a);
        let want = reply
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(SERVER, ip(&a))
            .ports(53, 6000)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented UDP reply to the remapped port",
            Prog::Uplink,
            up,
            &fragments(&reply, CUTS),
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        let whole = reassemble("fragmented UDP reply to the remapped port", &outs);
        assert_frame(
            "fragmented UDP reply to the remapped port, reassembled",
            &whole,
            &want,
        );

        assert_eq!(lab.ct_len(), 5, "two flows and the squatter");
        lab.assert_stats();
    });
}

#[test]
fn a_later_fragment_whose_first_was_not_seen_opens_nothing() {
    in_private_netns(|| {
        let mut lab = Lab::new("fraglate");
        let a = lab.a;
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        let dgram = Pkt::big_udp(tx(&a), (ip(&a), 5000), (SERVER, 53), 3500).id(0x5151);
        let frags = fragments(&dgram, CUTS);
        for i in [1, 2] {
            lab.container(
                &format!("later fragment {i} to the Internet, no first seen"),
                a,
                &frags[i],
                Outcome::Drop(DropReason::Fragment),
            );
        }
        let home = fragments(&dgram.clone().addrs(ip(&a), HOST), CUTS);
        lab.container(
            "later fragment to a host address, no first seen",
            a,
            &home[1],
            Outcome::Passed,
        );
        let home = fragments(&dgram.clone().addrs(ip(&a), gw(&a)), CUTS);
        lab.container(
            "later fragment to the gateway, no first seen",
            a,
            &home[2],
            Outcome::Passed,
        );
        let inbound = Pkt::big_udp(from_net, (SERVER, 53), (HOST, 5000), 3500).id(0x5252);
        for i in [1, 2] {
            lab.uplink(
                &format!("later fragment {i} from the Internet, no first seen"),
                &fragments(&inbound, CUTS)[i],
                Outcome::Passed,
            );
        }
        assert_eq!(lab.ct_len(), 0, "a later fragment never opens a flow");

        // With the flow known (a whole datagram opened it), a later
        // fragment of a datagram whose first fragment was not seen still
        // cannot be placed: dropped going out, the host's coming in.
        let small = Pkt::udp(tx(&a), (ip(&a), 5000), (SERVER, 53), true);
        lab.container(
            "a whole datagram of the flow",
            a,
            &small.build(),
            Outcome::New,
        );
        lab.container(
            "later fragment of the known flow, no first seen",
            a,
            &frags[1],
            Outcome::Drop(DropReason::Fragment),
        );
        let small_reply = Pkt::udp(from_net, (SERVER, 53), (HOST, 5000), true);
        lab.uplink(
            "a whole reply of the flow",
            &small_reply.build(),
            Outcome::Translated,
        );
        lab.uplink(
            "later fragment of a reply, no first seen",
            &fragments(&inbound, CUTS)[1],
            Outcome::Passed,
        );
        assert_eq!(lab.ct_len(), 2);

        // Once the first fragment comes, the later ones after it go through
        // (the ones dropped before it are for the sender to retransmit).
        let want = dgram
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        send_fragments(
            &mut lab,
            "the datagram again, first fragment first",
            Prog::Container,
            a.ifindex,
            &frags,
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        assert_eq!(lab.ct_len(), 2);
        lab.assert_stats();
    });
}

#[test]
fn a_fragmented_ping_is_masqueraded_and_its_fragmented_reply_returns() {
    in_private_netns(|| {
        let mut lab = Lab::new("fragping");
        let a = lab.a;
        let up = lab.uplink;
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        // ping -s 3000: 3008 bytes of ICMP in three fragments.
        let ping = Pkt::big_echo(tx(&a), ip(&a), SERVER, 8, 0x1234, 3000).id(0x6161);
        let want = ping
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented echo request",
            Prog::Container,
            a.ifindex,
            &fragments(&ping, CUTS),
            &[0, 1, 2],
            Outcome::New,
            &want,
        );
        assert_eq!(
            be16(&outs[0], IP + 20 + 4),
            0x1234,
            "the identifier is kept"
        );
        assert_eq!(
            lab.frags_get(IPPROTO_ICMP, ip(&a), SERVER, 0x6161),
            Some((0x1234, 0)),
            "FRAGS: the echo identifier, as the flow key holds it"
        );
        let whole = reassemble("fragmented echo request", &outs);
        assert_frame("fragmented echo request, reassembled", &whole, &want);

        let pong = Pkt::big_echo(from_net, SERVER, HOST, 0, 0x1234, 3000).id(0x7171);
        let want = pong
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(SERVER, ip(&a))
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented echo reply",
            Prog::Uplink,
            up,
            &fragments(&pong, CUTS),
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        let whole = reassemble("fragmented echo reply", &outs);
        assert_frame("fragmented echo reply, reassembled", &whole, &want);

        // An identifier that must change (another flow holds its reply
        // tuple): the first fragment's identifier and ICMP checksum change.
        lab.ct_put(
            CtKey::new(
                IPPROTO_ICMP,
                ipv4_wire(SERVER),
                0,
                ipv4_wire(HOST),
                port_wire(0x2222),
            ),
            live_entry(
                ([1, 2, 3, 4], 0, [172, 18, 0, 9], 0x2222),
                CT_DNAT | CT_REPLY,
                SEEN_ESTABLISHED,
                now_ns(),
            ),
        );
        let ping = Pkt::big_echo(tx(&a), ip(&a), SERVER, 8, 0x2222, 3000).id(0x6262);
        let frags = fragments(&ping, CUTS);
        let first = lab.container(
            "fragmented echo request whose id is taken, fragment 0",
            a,
            &frags[0],
            Outcome::New,
        );
        let id = be16(&first, IP + 20 + 4);
        assert_ne!(id, 0x2222);
        let want = ping
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ports(id, 0)
            .ttl(63);
        let wants = fragments(&want, CUTS);
        assert_fragment(
            "fragmented echo request whose id is taken, fragment 0",
            &first,
            &wants[0],
        );
        let mut outs = vec![first];
        for i in [1, 2] {
            let w = format!("fragmented echo request whose id is taken, fragment {i}");
            let out = lab.container(&w, a, &frags[i], Outcome::Translated);
            assert_fragment(&w, &out, &wants[i]);
            outs.push(out);
        }
        let whole = reassemble("fragmented echo request whose id is taken", &outs);
        assert_frame(
            "fragmented echo request whose id is taken, reassembled",
            &whole,
            &want,
        );
        let pong = Pkt::big_echo(from_net, SERVER, HOST, 0, id, 3000).id(0x7272);
        let want = pong
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(SERVER, ip(&a))
            .ports(0x2222, 0)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented echo reply to the remapped id",
            Prog::Uplink,
            up,
            &fragments(&pong, CUTS),
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        let whole = reassemble("fragmented echo reply to the remapped id", &outs);
        assert_frame(
            "fragmented echo reply to the remapped id, reassembled",
            &whole,
            &want,
        );

        assert_eq!(lab.ct_len(), 5, "two flows and the squatter");
        lab.assert_stats();
    });
}

#[test]
fn a_fragmented_datagram_to_a_published_udp_port_reaches_the_container() {
    in_private_netns(|| {
        let mut lab = Lab::new("fragpub");
        let (a, b) = (lab.a, lab.b);
        let up = lab.uplink;
        let from_net = (UPLINK_MAC, ROUTER_MAC);
        lab.publish(IPPROTO_UDP, [0; 4], 8053, ip(&a), 53);

        let q = Pkt::big_udp(from_net, (CLIENT, 5353), (HOST, 8053), 3500).id(0x8181);
        let want = q
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(CLIENT, ip(&a))
            .ports(5353, 53)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "fragmented UDP to a published port",
            Prog::Uplink,
            up,
            &fragments(&q, CUTS),
            &[0, 1, 2],
            Outcome::New,
            &want,
        );
        let whole = reassemble("fragmented UDP to a published port", &outs);
        assert_frame(
            "fragmented UDP to a published port, reassembled",
            &whole,
            &want,
        );
        let fwd = lab
            .ct_get(&udp_key((CLIENT, 5353), (HOST, 8053)))
            .expect("the published flow");
        assert_eq!(tuple(&fwd), (CLIENT, 5353, ip(&a), 53));

        // The container's big answer leaves from the published port.
        let answer = Pkt::big_udp(tx(&a), (ip(&a), 53), (CLIENT, 5353), 3900).id(0x8282);
        let want = answer
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, CLIENT)
            .ports(8053, 5353)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "the container's fragmented answer",
            Prog::Container,
            a.ifindex,
            &fragments(&answer, CUTS),
            &[0, 1, 2],
            Outcome::Translated,
            &want,
        );
        let whole = reassemble("the container's fragmented answer", &outs);
        assert_frame(
            "the container's fragmented answer, reassembled",
            &whole,
            &want,
        );

        // Hairpin: B's fragmented datagram to the host's published port.
        let hp = Pkt::big_udp(tx(&b), (ip(&b), 7000), (HOST, 8053), 3500).id(0x8383);
        let want = hp
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(gw(&a), ip(&a))
            .ports(7000, 53)
            .ttl(63);
        let outs = send_fragments(
            &mut lab,
            "B's fragmented UDP to the published port",
            Prog::Container,
            b.ifindex,
            &fragments(&hp, CUTS),
            &[0, 1, 2],
            Outcome::New,
            &want,
        );
        let whole = reassemble("B's fragmented UDP to the published port", &outs);
        assert_frame(
            "B's fragmented UDP to the published port, reassembled",
            &whole,
            &want,
        );

        assert_eq!(lab.ct_len(), 4);
        lab.assert_stats();
    });
}

/// A first fragment that `from_container` passes untranslated to a
/// destination beyond the host (as it passes the whole datagram: a
/// container's echo reply, or a packet to an address of its own subnet that
/// is no container) opens no flow, but is recorded in FRAGS; its later
/// fragments then find no CT entry and, their destination not being a host
/// address, are dropped as `fragment`: the host gets the first fragment
/// only and the datagram is lost, where the whole datagram passes.
#[test]
fn later_fragments_follow_a_first_fragment_passed_untranslated() {
    in_private_netns(|| {
        let mut lab = Lab::new("fragpass");
        let a = lab.a;
        // A container answering a big ping from beyond the host (a routed
        // setup): the whole reply is passed ...
        let pong = Pkt::big_echo(tx(&a), ip(&a), SERVER, 0, 0x4444, 3000).id(0x6363);
        lab.container(
            "a whole echo reply from the container",
            a,
            &Pkt::echo(tx(&a), ip(&a), SERVER, 0, 0x4444).build(),
            Outcome::Passed,
        );
        // ... and so must be all its fragments, not the first one only.
        for (i, f) in fragments(&pong, CUTS).iter().enumerate() {
            lab.container(
                &format!("fragment {i} of a big echo reply from the container"),
                a,
                f,
                Outcome::Passed,
            );
        }
        // Likewise UDP to an address of the container's subnet that is no
        // container.
        let dgram = Pkt::big_udp(tx(&a), (ip(&a), 5000), ([172, 18, 0, 50], 53), 3500).id(0x6464);
        for (i, f) in fragments(&dgram, CUTS).iter().enumerate() {
            lab.container(
                &format!("fragment {i} of UDP to an own-subnet address"),
                a,
                f,
                Outcome::Passed,
            );
        }
        assert_eq!(lab.ct_len(), 0);
        lab.assert_stats();
    });
}

/// A TCP SYN cut inside its checksum field is shorter than the 20-byte
/// header the NAT path reads before anything else: dropped as malformed
/// before any CT entry is created.
#[test]
fn a_tcp_header_cut_in_its_checksum_leaves_no_flow() {
    in_private_netns(|| {
        let mut lab = Lab::new("cutcsum");
        let a = lab.a;
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN).build();
        lab.container(
            "TCP cut inside its checksum",
            a,
            &cut(&syn, IP + 20 + 17),
            Outcome::Drop(DropReason::NatMalformed),
        );
        assert_eq!(lab.ct_len(), 0, "a dropped packet opens no flow");
        lab.assert_stats();
    });
}

/// A frame cut short while its IPv4 total length still promises the rest
/// is no packet: from a container it is dropped and counted before any
/// translation; on an uplink it goes to the host untouched (the host's
/// stack drops it), and neither opens a flow.
#[test]
fn a_total_length_past_the_frame() {
    in_private_netns(|| {
        let mut lab = Lab::new("totlen");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN).build();
        for len in [IP + 20 + 20 - 1, IP + 20 + 10, IP + 20] {
            lab.container(
                &format!("TCP SYN to the Internet cut to {len} bytes"),
                a,
                &syn[..len],
                Outcome::Drop(DropReason::Ipv4Truncated),
            );
        }
        let inbound = Pkt::tcp(
            (UPLINK_MAC, ROUTER_MAC),
            (CLIENT, 50000),
            (HOST, 8080),
            TCP_SYN,
        )
        .build();
        lab.uplink(
            "SYN to a published port cut one byte short",
            &inbound[..inbound.len() - 1],
            Outcome::Passed,
        );
        assert_eq!(lab.ct_len(), 0, "a dropped or passed packet opens no flow");
        lab.assert_stats();
    });
}

/// A VLAN-tagged frame on an uplink belongs to a VLAN of the host's, not
/// to a published port: it goes to the host untranslated (the tag in the
/// frame here; one in skb metadata takes the same branch), opening no flow.
#[test]
fn a_tagged_frame_on_an_uplink_is_left_to_the_host() {
    in_private_netns(|| {
        let mut lab = Lab::new("uplinktag");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let syn = Pkt::tcp(
            (UPLINK_MAC, ROUTER_MAC),
            (CLIENT, 50000),
            (HOST, 8080),
            TCP_SYN,
        )
        .build();
        for tpid in [0x8100u16, 0x88a8] {
            let mut tagged = syn.clone();
            let mut tag = tpid.to_be_bytes().to_vec();
            tag.extend_from_slice(&[0, 5]);
            tagged.splice(12..12, tag);
            lab.uplink(
                &format!("SYN to a published port under a {tpid:#x} tag"),
                &tagged,
                Outcome::Passed,
            );
        }
        assert_eq!(lab.ct_len(), 0, "a tagged frame opens no flow");
        // The same SYN untagged is translated as ever.
        lab.uplink("the same SYN untagged", &syn, Outcome::New);
        lab.assert_stats();
    });
}

/// A container's packet with TTL 1 must reach the host stack as it was
/// sent, so that the host answers time exceeded to the container (the
/// first hop of a traceroute), as `dec_ttl`'s comment intends.
#[test]
fn ttl_1_from_a_container_reaches_the_host_untranslated() {
    in_private_netns(|| {
        let mut lab = Lab::new("ttl1");
        let a = lab.a;
        // A new flow (traceroute's first probe) ...
        let probe = Pkt::udp(tx(&a), (ip(&a), 33434), (SERVER, 33434), true).ttl(1);
        let frame = probe.build();
        let (ret, out) = lab.run(Prog::Container, a.ifindex, &frame);
        let ct = lab.ct_len();
        // ... and a packet of a known flow.
        let open = Pkt::udp(tx(&a), (ip(&a), 5000), (SERVER, 53), true);
        lab.container("UDP query", a, &open.build(), Outcome::New);
        let late = open.clone().ttl(1).build();
        let (ret2, out2) = lab.run(Prog::Container, a.ifindex, &late);
        assert_eq!(
            (ret, src_of(&out), ct, ret2, src_of(&out2)),
            (TC_ACT_OK, (ip(&a), 33434), 0, TC_ACT_OK, (ip(&a), 5000)),
            "(verdict, source, CT entries) of a new flow's TTL-1 packet, \
             (verdict, source) of a known flow's: to the host stack untranslated"
        );
        assert_eq!(hex(&out), hex(&frame));
        assert_eq!(hex(&out2), hex(&late));
    });
}

// ---------------------------------------------------------------------------
// 8. Hairpin.
// ---------------------------------------------------------------------------

#[test]
fn hairpin_to_a_published_port_of_a_container_on_the_same_network() {
    in_private_netns(|| {
        let mut lab = Lab::new("hairpin");
        let (a, b) = (lab.a, lab.b);
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&b), 80);

        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (HOST, 8080), TCP_SYN);
        let out = lab.container(
            "A's SYN to the host's published port",
            a,
            &syn.build(),
            Outcome::New,
        );
        // To B, from the network's gateway (so B's replies come back here).
        assert_frame(
            "A's SYN to the host's published port",
            &out,
            &syn.clone()
                .macs(b.mac, b.host_mac)
                .addrs(gw(&b), ip(&b))
                .ports(40000, 80)
                .ttl(63),
        );
        let fwd = lab.ct_get(&tcp_key((ip(&a), 40000), (HOST, 8080))).unwrap();
        assert_eq!(tuple(&fwd), (gw(&b), 40000, ip(&b), 80));
        assert_eq!(fwd.flags, CT_SNAT | CT_DNAT | CT_HAIRPIN | CT_PUBLISHED);
        let rev = lab.ct_get(&tcp_key((ip(&b), 80), (gw(&b), 40000))).unwrap();
        assert_eq!(tuple(&rev), (HOST, 8080, ip(&a), 40000));
        assert_eq!(
            rev.flags,
            CT_SNAT | CT_DNAT | CT_HAIRPIN | CT_PUBLISHED | CT_REPLY
        );

        let syn_ack = Pkt::tcp(tx(&b), (ip(&b), 80), (gw(&b), 40000), TCP_SYN | TCP_ACK);
        let out = lab.container("B's SYN-ACK", b, &syn_ack.build(), Outcome::Translated);
        assert_frame(
            "B's SYN-ACK",
            &out,
            &syn_ack
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(HOST, ip(&a))
                .ports(8080, 40000)
                .ttl(63),
        );
        let ack = Pkt::tcp(tx(&a), (ip(&a), 40000), (HOST, 8080), TCP_ACK);
        let out = lab.container("A's ACK", a, &ack.build(), Outcome::Translated);
        assert_frame(
            "A's ACK",
            &out,
            &ack.clone()
                .macs(b.mac, b.host_mac)
                .addrs(gw(&b), ip(&b))
                .ports(40000, 80)
                .ttl(63),
        );

        // Through the gateway address, which is the host's too.
        let syn = Pkt::tcp(tx(&a), (ip(&a), 40001), (gw(&a), 8080), TCP_SYN);
        let out = lab.container(
            "A's SYN to the gateway's published port",
            a,
            &syn.build(),
            Outcome::New,
        );
        assert_frame(
            "A's SYN to the gateway's published port",
            &out,
            &syn.clone()
                .macs(b.mac, b.host_mac)
                .addrs(gw(&b), ip(&b))
                .ports(40001, 80)
                .ttl(63),
        );

        // A container reaching its own published port.
        let syn = Pkt::tcp(tx(&b), (ip(&b), 40002), (HOST, 8080), TCP_SYN);
        let out = lab.container(
            "B's SYN to its own published port",
            b,
            &syn.build(),
            Outcome::New,
        );
        assert_frame(
            "B's SYN to its own published port",
            &out,
            &syn.clone()
                .macs(b.mac, b.host_mac)
                .addrs(gw(&b), ip(&b))
                .ports(40002, 80)
                .ttl(63),
        );

        // Not hairpinned: other ports, pings, stray segments.
        let f = Pkt::tcp(tx(&a), (ip(&a), 40003), (HOST, 8081), TCP_SYN);
        lab.container(
            "SYN to an unpublished host port",
            a,
            &f.build(),
            Outcome::Passed,
        );
        let f = Pkt::tcp(tx(&a), (ip(&a), 40004), (HOST, 8080), TCP_ACK);
        lab.container(
            "ACK to the published port without a flow",
            a,
            &f.build(),
            Outcome::Passed,
        );
        let f = Pkt::echo(tx(&a), ip(&a), HOST, 8, 1);
        lab.container("ping to the host", a, &f.build(), Outcome::Passed);
        // With TTL 1, neither a new hairpin nor a packet of a known one is
        // translated: the host stack gets them as sent.
        let f = Pkt::tcp(tx(&a), (ip(&a), 40005), (HOST, 8080), TCP_SYN).ttl(1);
        lab.container(
            "A's SYN with TTL 1 to the published port",
            a,
            &f.build(),
            Outcome::Passed,
        );
        let f = Pkt::tcp(tx(&a), (ip(&a), 40000), (HOST, 8080), TCP_ACK).ttl(1);
        lab.container("A's ACK with TTL 1", a, &f.build(), Outcome::Passed);

        assert_eq!(lab.ct_len(), 6);
        lab.assert_stats();
    });
}

// ---------------------------------------------------------------------------
// 9. A flow's tuple reused: half an entry pair left, and a new SYN on a
//    known flow.
// ---------------------------------------------------------------------------

/// A client reconnecting from the same port to a published port after the
/// forward entry of its previous connection went (LRU eviction, or it
/// expired a little before the reply entry): the leftover reply entry leads
/// back to this very tuple, so it does not hold the reply tuple against the
/// new flow.
#[test]
fn a_leftover_reply_entry_of_the_same_flow_does_not_block_a_published_port() {
    in_private_netns(|| {
        let mut lab = Lab::new("leftpub");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let from_net = (UPLINK_MAC, ROUTER_MAC);
        let orig = tcp_key((CLIENT, 50000), (HOST, 8080));
        let reply_key = tcp_key((ip(&a), 80), (CLIENT, 50000));

        let syn = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), TCP_SYN);
        let to_a = syn
            .clone()
            .macs(a.mac, a.host_mac)
            .addrs(CLIENT, ip(&a))
            .ports(50000, 80)
            .ttl(63);
        let out = lab.uplink("first SYN", &syn.build(), Outcome::New);
        assert_frame("first SYN", &out, &to_a);
        assert_eq!(lab.ct_len(), 2);

        // Only the forward half goes.
        lab.ct_del(&orig);
        assert!(lab.ct_get(&reply_key).is_some());
        assert_eq!(lab.ct_len(), 1);

        let t0 = now_ns();
        let out = lab.uplink(
            "SYN on the tuple of the leftover reply entry",
            &syn.build(),
            Outcome::New,
        );
        assert_frame("SYN on the tuple of the leftover reply entry", &out, &to_a);
        let fwd = lab.ct_get(&orig).expect("forward entry back");
        assert_eq!(tuple(&fwd), (CLIENT, 50000, ip(&a), 80));
        assert_eq!(fwd.flags, CT_DNAT | CT_PUBLISHED);
        assert_eq!(fwd.seen, SEEN_SYN);
        let rev = lab.ct_get(&reply_key).expect("reply entry");
        assert_eq!(tuple(&rev), (HOST, 8080, CLIENT, 50000));
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_REPLY);
        assert!(rev.last_seen >= t0, "the reply entry is rewritten fresh");
        assert_eq!(lab.ct_len(), 2, "both entries, nothing else");

        // The flow works both ways.
        let syn_ack = Pkt::tcp(tx(&a), (ip(&a), 80), (CLIENT, 50000), TCP_SYN | TCP_ACK);
        let out = lab.container(
            "the container's SYN-ACK",
            a,
            &syn_ack.build(),
            Outcome::Translated,
        );
        assert_frame(
            "the container's SYN-ACK",
            &out,
            &syn_ack
                .clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, CLIENT)
                .ports(8080, 50000)
                .ttl(63),
        );

        lab.assert_stats();
    });
}

/// The reply tuple of a published port held by a *different* flow is still
/// taken: with `-p 8080:80 -p 9090:80`, one client port reaching both host
/// ports maps to the same container tuple, and the second flow is refused.
#[test]
fn a_reply_tuple_of_another_published_flow_is_still_taken() {
    in_private_netns(|| {
        let mut lab = Lab::new("otherpub");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        lab.publish(IPPROTO_TCP, [0; 4], 9090, ip(&a), 80);
        let from_net = (UPLINK_MAC, ROUTER_MAC);
        let reply_key = tcp_key((ip(&a), 80), (CLIENT, 50000));

        let syn = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), TCP_SYN);
        lab.uplink("SYN to 8080", &syn.build(), Outcome::New);
        let held = lab.ct_get(&reply_key).unwrap();
        assert_eq!(tuple(&held), (HOST, 8080, CLIENT, 50000));

        let syn = Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 9090), TCP_SYN);
        lab.uplink(
            "SYN to 9090 from the same client port",
            &syn.build(),
            Outcome::Drop(DropReason::NatExhausted),
        );
        assert_eq!(
            lab.ct_get(&reply_key),
            Some(held),
            "the 8080 flow keeps its reply entry"
        );
        assert!(lab
            .ct_get(&tcp_key((CLIENT, 50000), (HOST, 9090)))
            .is_none());
        assert_eq!(lab.ct_len(), 2);

        // Also with the 8080 flow's forward entry gone: its reply entry
        // leads back to 8080, not to 9090.
        lab.ct_del(&tcp_key((CLIENT, 50000), (HOST, 8080)));
        lab.uplink(
            "SYN to 9090 with the 8080 flow's reply entry left over",
            &syn.build(),
            Outcome::Drop(DropReason::NatExhausted),
        );
        assert_eq!(lab.ct_get(&reply_key), Some(held));
        assert_eq!(lab.ct_len(), 1);

        lab.assert_stats();
    });
}

/// A masqueraded flow whose forward entry went, reconnecting from the same
/// port: the leftover reply entry is its own, so the original source port
/// is kept (not remapped into the NAT range).
#[test]
fn a_leftover_reply_entry_of_the_same_flow_keeps_the_masquerade_port() {
    in_private_netns(|| {
        let mut lab = Lab::new("leftmasq");
        let a = lab.a;
        let orig = tcp_key((ip(&a), 40000), (SERVER, 80));
        let reply_key = tcp_key((SERVER, 80), (HOST, 40000));

        let syn = Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), TCP_SYN);
        let sent = syn
            .clone()
            .macs(ROUTER_MAC, UPLINK_MAC)
            .addrs(HOST, SERVER)
            .ttl(63);
        let out = lab.container("first SYN", a, &syn.build(), Outcome::New);
        assert_frame("first SYN", &out, &sent);

        lab.ct_del(&orig);
        assert_eq!(lab.ct_len(), 1);

        let t0 = now_ns();
        let out = lab.container(
            "SYN on the tuple of the leftover reply entry",
            a,
            &syn.build(),
            Outcome::New,
        );
        assert_eq!(src_of(&out), (HOST, 40000), "the source port is kept");
        assert_frame("SYN on the tuple of the leftover reply entry", &out, &sent);
        let fwd = lab.ct_get(&orig).expect("forward entry back");
        assert_eq!(tuple(&fwd), (HOST, 40000, SERVER, 80));
        assert_eq!(fwd.flags, CT_SNAT);
        let rev = lab.ct_get(&reply_key).expect("reply entry");
        assert_eq!(tuple(&rev), (SERVER, 80, ip(&a), 40000));
        assert_eq!(rev.flags, CT_DNAT | CT_REPLY);
        assert!(rev.last_seen >= t0);
        assert_eq!(lab.ct_len(), 2);

        // The same with UDP (a datagram opens a flow as a SYN does).
        let q = Pkt::udp(tx(&a), (ip(&a), 5353), (SERVER, 53), true);
        lab.container("first UDP query", a, &q.build(), Outcome::New);
        lab.ct_del(&udp_key((ip(&a), 5353), (SERVER, 53)));
        let out = lab.container(
            "UDP query on the tuple of the leftover reply entry",
            a,
            &q.build(),
            Outcome::New,
        );
        assert_frame(
            "UDP query on the tuple of the leftover reply entry",
            &out,
            &q.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        assert_eq!(lab.ct_len(), 4);

        lab.assert_stats();
    });
}

/// A bare SYN on the tuple of a flow that saw FIN/RST (a client reusing its
/// port within the closing timeout) starts both entries over: the new
/// connection must not inherit SEEN_CLOSING and its 10 s timeout. A SYN in
/// the reply direction, or a SYN-ACK, does not.
#[test]
fn a_new_syn_on_a_closing_flow_renews_both_entries() {
    in_private_netns(|| {
        let mut lab = Lab::new("renew");
        let a = lab.a;
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        // Masquerade, from_container.
        let orig = tcp_key((ip(&a), 40000), (SERVER, 80));
        let reply_key = tcp_key((SERVER, 80), (HOST, 40000));
        let to_server = |flags| Pkt::tcp(tx(&a), (ip(&a), 40000), (SERVER, 80), flags);
        let from_server = |flags| Pkt::tcp(from_net, (SERVER, 80), (HOST, 40000), flags);
        lab.container("SYN", a, &to_server(TCP_SYN).build(), Outcome::New);
        for (what, f) in [
            ("SYN-ACK", from_server(TCP_SYN | TCP_ACK)),
            ("RST", from_server(TCP_RST | TCP_ACK)),
        ] {
            lab.uplink(what, &f.build(), Outcome::Translated);
        }
        for (what, flags) in [("ACK", TCP_ACK), ("FIN", TCP_FIN | TCP_ACK)] {
            lab.container(what, a, &to_server(flags).build(), Outcome::Translated);
        }
        let fwd = lab.ct_get(&orig).unwrap();
        let rev = lab.ct_get(&reply_key).unwrap();
        assert_eq!(fwd.seen, SEEN_SYN | SEEN_ESTABLISHED | SEEN_CLOSING);
        assert_eq!(rev.seen, SEEN_SYN | SEEN_ESTABLISHED | SEEN_CLOSING);
        // 5 s into the 10 s closing timeout.
        let old = now_ns().wrapping_sub(5_000_000_000);
        lab.ct_put(
            orig,
            CtEntry {
                last_seen: old,
                ..fwd
            },
        );
        lab.ct_put(
            reply_key,
            CtEntry {
                last_seen: old,
                ..rev
            },
        );

        // An ACK (no SYN) does not renew.
        lab.container(
            "ACK after FIN",
            a,
            &to_server(TCP_ACK).build(),
            Outcome::Translated,
        );
        assert_ne!(lab.ct_get(&orig).unwrap().seen & SEEN_CLOSING, 0);

        let t0 = now_ns();
        let syn = to_server(TCP_SYN);
        let out = lab.container(
            "new SYN on the closing flow's tuple",
            a,
            &syn.build(),
            Outcome::Translated,
        );
        assert_frame(
            "new SYN on the closing flow's tuple",
            &out,
            &syn.clone()
                .macs(ROUTER_MAC, UPLINK_MAC)
                .addrs(HOST, SERVER)
                .ttl(63),
        );
        let fwd = lab.ct_get(&orig).unwrap();
        assert_eq!(tuple(&fwd), (HOST, 40000, SERVER, 80));
        assert_eq!(fwd.flags, CT_SNAT);
        assert_eq!(fwd.seen, SEEN_SYN, "fresh state: no SEEN_CLOSING");
        assert!(fwd.last_seen >= t0, "fresh last_seen");
        let rev = lab.ct_get(&reply_key).unwrap();
        assert_eq!(tuple(&rev), (SERVER, 80, ip(&a), 40000));
        assert_eq!(rev.flags, CT_DNAT | CT_REPLY);
        assert_eq!(rev.seen, 0, "the reply entry starts over too");
        assert!(rev.last_seen >= t0);
        assert_eq!(lab.ct_len(), 2);

        // The server's SYN-ACK goes back as before.
        let syn_ack = from_server(TCP_SYN | TCP_ACK);
        let out = lab.uplink("SYN-ACK", &syn_ack.build(), Outcome::Translated);
        assert_frame(
            "SYN-ACK",
            &out,
            &syn_ack
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(SERVER, ip(&a))
                .ttl(63),
        );
        // A bare SYN in the reply direction (CT_REPLY) renews nothing.
        lab.ct_put(
            orig,
            CtEntry {
                last_seen: old,
                ..fwd
            },
        );
        let before = lab.ct_get(&orig).unwrap();
        lab.uplink(
            "SYN from the server",
            &from_server(TCP_SYN).build(),
            Outcome::Translated,
        );
        assert_eq!(lab.ct_get(&orig), Some(before), "forward entry untouched");
        assert_eq!(lab.ct_len(), 2);

        // Published port, from_uplink: the client resets, then reconnects
        // from the same port.
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let orig = tcp_key((CLIENT, 50000), (HOST, 8080));
        let reply_key = tcp_key((ip(&a), 80), (CLIENT, 50000));
        let from_client = |flags| Pkt::tcp(from_net, (CLIENT, 50000), (HOST, 8080), flags);
        lab.uplink("client SYN", &from_client(TCP_SYN).build(), Outcome::New);
        lab.container(
            "container SYN-ACK",
            a,
            &Pkt::tcp(tx(&a), (ip(&a), 80), (CLIENT, 50000), TCP_SYN | TCP_ACK).build(),
            Outcome::Translated,
        );
        lab.uplink(
            "client RST",
            &from_client(TCP_RST | TCP_ACK).build(),
            Outcome::Translated,
        );
        let fwd = lab.ct_get(&orig).unwrap();
        assert_ne!(fwd.seen & SEEN_CLOSING, 0);
        lab.ct_put(
            orig,
            CtEntry {
                last_seen: old,
                ..fwd
            },
        );
        let t0 = now_ns();
        let syn = from_client(TCP_SYN);
        let out = lab.uplink(
            "client's new SYN on the reset flow's tuple",
            &syn.build(),
            Outcome::Translated,
        );
        assert_frame(
            "client's new SYN on the reset flow's tuple",
            &out,
            &syn.clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(50000, 80)
                .ttl(63),
        );
        let fwd = lab.ct_get(&orig).unwrap();
        assert_eq!(tuple(&fwd), (CLIENT, 50000, ip(&a), 80));
        assert_eq!(fwd.flags, CT_DNAT | CT_PUBLISHED);
        assert_eq!(fwd.seen, SEEN_SYN);
        assert!(fwd.last_seen >= t0);
        let rev = lab.ct_get(&reply_key).unwrap();
        assert_eq!(tuple(&rev), (HOST, 8080, CLIENT, 50000));
        assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_REPLY);
        assert_eq!(rev.seen, 0);
        assert!(rev.last_seen >= t0);
        assert_eq!(lab.ct_len(), 4);

        lab.assert_stats();
    });
}

/// The reply entry of a published flow evicted while the forward one lives:
/// the client's SYN (retransmitted, or a reconnect) brings it back, so the
/// container's SYN-ACK leaves from the published address and port instead
/// of being masqueraded as a new flow from port 80. Likewise when the reply
/// entry is there but dead.
#[test]
fn a_new_syn_brings_back_an_evicted_reply_entry() {
    in_private_netns(|| {
        let mut lab = Lab::new("revive");
        let a = lab.a;
        lab.publish(IPPROTO_TCP, [0; 4], 8080, ip(&a), 80);
        let from_net = (UPLINK_MAC, ROUTER_MAC);

        for (cport, evict) in [(50000u16, true), (50001, false)] {
            let orig = tcp_key((CLIENT, cport), (HOST, 8080));
            let reply_key = tcp_key((ip(&a), 80), (CLIENT, cport));
            let syn = Pkt::tcp(from_net, (CLIENT, cport), (HOST, 8080), TCP_SYN);
            let to_a = syn
                .clone()
                .macs(a.mac, a.host_mac)
                .addrs(CLIENT, ip(&a))
                .ports(cport, 80)
                .ttl(63);
            let out = lab.uplink("client SYN", &syn.build(), Outcome::New);
            assert_frame("client SYN", &out, &to_a);
            if evict {
                lab.ct_del(&reply_key);
                assert!(lab.ct_get(&reply_key).is_none());
            } else {
                let rev = lab.ct_get(&reply_key).unwrap();
                let dead = now_ns().wrapping_sub(2 * CT_TIMEOUT_TCP_SYN);
                lab.ct_put(
                    reply_key,
                    CtEntry {
                        last_seen: dead,
                        ..rev
                    },
                );
            }

            let what = format!("client SYN again (reply entry evicted: {evict})");
            let out = lab.uplink(&what, &syn.build(), Outcome::Translated);
            assert_frame(&what, &out, &to_a);
            let rev = lab.ct_get(&reply_key).expect("reply entry back");
            assert_eq!(tuple(&rev), (HOST, 8080, CLIENT, cport));
            assert_eq!(rev.flags, CT_SNAT | CT_PUBLISHED | CT_REPLY);
            let fwd = lab.ct_get(&orig).unwrap();
            assert_eq!(tuple(&fwd), (CLIENT, cport, ip(&a), 80));
            assert_eq!(fwd.seen, SEEN_SYN);

            let syn_ack = Pkt::tcp(tx(&a), (ip(&a), 80), (CLIENT, cport), TCP_SYN | TCP_ACK);
            let what = format!("the container's SYN-ACK (reply entry evicted: {evict})");
            let out = lab.container(&what, a, &syn_ack.build(), Outcome::Translated);
            assert_frame(
                &what,
                &out,
                &syn_ack
                    .clone()
                    .macs(ROUTER_MAC, UPLINK_MAC)
                    .addrs(HOST, CLIENT)
                    .ports(8080, cport)
                    .ttl(63),
            );
            assert_eq!(src_of(&out), (HOST, 8080), "the published address and port");
        }
        assert_eq!(lab.ct_len(), 4, "no masquerade entries");

        lab.assert_stats();
    });
}

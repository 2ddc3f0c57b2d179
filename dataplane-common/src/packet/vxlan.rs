//! VXLAN over IPv4 (RFC 7348) as the datapath builds and takes it apart:
//! the outer headers of an encapsulated frame, the outer UDP source port
//! (the entropy the underlay's ECMP hashes on), the checks a received
//! datagram must pass before its inner frame is looked at, the decision
//! for that inner frame, and the ICMP fragmentation-needed the sender of a
//! packet too big for the tunnel gets.
//!
//! Layout of an encapsulated frame (offsets from the start of the frame):
//!
//! ```text
//!  0 outer Ethernet | 14 outer IPv4 (IHL 5) | 34 UDP | 42 VXLAN | 50 inner Ethernet | 64 inner L3
//! ```

use super::{
    arp::{self, Arp},
    eth, ipv4, load,
};
use crate::{
    CtKey, DropReason, Endpoint, Ipv4Wire, Network, VtepFlags, CT_REPLY, CT_SERVICE, EP_LEARNED,
    EP_REMOTE, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, VTEP_NODE, VTEP_STATIC, VXLAN_PORT,
};

/// Offset of the outer IPv4 header.
pub const OUTER_IP: usize = eth::HLEN;
/// Offset of the outer UDP header.
pub const OUTER_UDP: usize = OUTER_IP + 20;
/// Offset of the VXLAN header.
pub const VXLAN: usize = OUTER_UDP + 8;
/// Offset of the inner Ethernet frame (= `VXLAN_OVERHEAD`).
pub const INNER: usize = VXLAN + 8;
/// Offset of the inner frame's L3 header: what the encapsulation writes in
/// front of the inner packet (outer headers and the inner Ethernet header).
pub const INNER_L3: usize = INNER + eth::HLEN;
/// Bytes of a frame needed to see the outer UDP destination port.
pub const PORTS_LEN: usize = OUTER_UDP + 4;
/// The I flag: the VNI is valid (the only flag RFC 7348 defines).
pub const FLAG_VNI: u8 = 0x08;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// The range outer UDP source ports are picked from: the kernel's default
/// local port range (`ip_local_port_range` 32768-60999), as the kernel's
/// own VXLAN device does with `udp_flow_src_port`. Upper bound exclusive.
pub const SRC_PORT_MIN: u32 = 32_768;
pub const SRC_PORT_END: u32 = 61_000;

/// The outer UDP source port (host order) for an inner flow whose hash is
/// `hash` (the skb's flow hash): the same flow always gets the same port,
/// different flows spread over the range. The upper half of the hash is
/// folded into the lower one first (small hashes still spread), then scaled
/// onto the range with a multiply instead of a modulo, as the kernel does.
#[inline(always)]
pub fn src_port(hash: u32) -> u16 {
    let h = hash ^ (hash << 16);
    let span = (SRC_PORT_END - SRC_PORT_MIN) as u64;
    (((h as u64 * span) >> 32) as u32 + SRC_PORT_MIN) as u16
}

/// RFC 1071 checksum of the 20-byte IPv4 header at `at` in `f`, with its
/// checksum field taken as zero.
#[inline(always)]
pub fn ipv4_header_csum<const N: usize>(f: &[u8; N], at: usize) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        if i != 10 {
            sum += ((f[at + i] as u32) << 8) | f[at + i + 1] as u32;
        }
        i += 2;
    }
    fold(sum)
}

/// Folds a 32-bit ones'-complement sum and complements it.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// What the outer headers of one encapsulated frame say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outer {
    /// Next hop's MAC (all zero when `bpf_redirect_neigh` fills it in).
    pub dmac: [u8; 6],
    /// The underlay device's MAC.
    pub smac: [u8; 6],
    /// This host's VTEP address.
    pub saddr: Ipv4Wire,
    /// The remote VTEP.
    pub daddr: Ipv4Wire,
    /// UDP ports, host order.
    pub sport: u16,
    pub dport: u16,
    /// The 24-bit VNI.
    pub vni: u32,
}

#[inline(always)]
fn put16<const N: usize>(f: &mut [u8; N], at: usize, v: u16) {
    let b = v.to_be_bytes();
    f[at] = b[0];
    f[at + 1] = b[1];
}

#[inline(always)]
fn put_bytes<const N: usize, const M: usize>(f: &mut [u8; N], at: usize, v: &[u8; M]) {
    let mut i = 0;
    while i < M {
        f[at + i] = v[i];
        i += 1;
    }
}

/// Writes the outer headers (bytes `0..INNER`) of a frame that carries an
/// inner Ethernet frame of `inner_len` bytes: Ethernet (IPv4), IPv4 (IHL 5,
/// id 0, DF, TTL 64, UDP, a correct header checksum), UDP with checksum 0
/// (allowed for IPv4 by RFC 7348 section 5) and the VXLAN header (I flag,
/// the VNI, reserved bits zero). Lengths saturate at 65535: only a GSO
/// packet can be that large, and segmentation rewrites them per segment.
#[inline(always)]
pub fn write_outer<const N: usize>(f: &mut [u8; N], o: &Outer, inner_len: u32) {
    put_bytes(f, eth::DST, &o.dmac);
    put_bytes(f, eth::SRC, &o.smac);
    put16(f, eth::PROTO, eth::P_IPV4);
    let ip = OUTER_IP;
    let tot = inner_len.saturating_add((INNER - OUTER_IP) as u32);
    let tot = if tot > 0xffff { 0xffff } else { tot } as u16;
    f[ip] = 0x45;
    f[ip + 1] = 0;
    put16(f, ip + 2, tot);
    put16(f, ip + 4, 0); // id 0: DF is set, the packet is never fragmented
    put16(f, ip + 6, 0x4000); // DF, offset 0
    f[ip + 8] = 64;
    f[ip + 9] = IPPROTO_UDP;
    put16(f, ip + 10, 0);
    put_bytes(f, ip + 12, &o.saddr.to_ne_bytes());
    put_bytes(f, ip + 16, &o.daddr.to_ne_bytes());
    let c = ipv4_header_csum(f, ip);
    put16(f, ip + 10, c);
    let udp = OUTER_UDP;
    put16(f, udp, o.sport);
    put16(f, udp + 2, o.dport);
    put16(f, udp + 4, tot.saturating_sub(20));
    put16(f, udp + 6, 0);
    f[VXLAN] = FLAG_VNI;
    f[VXLAN + 1] = 0;
    f[VXLAN + 2] = 0;
    f[VXLAN + 3] = 0;
    let vni = (o.vni & VNI_MAX).to_be_bytes();
    f[VXLAN + 4] = vni[1];
    f[VXLAN + 5] = vni[2];
    f[VXLAN + 6] = vni[3];
    f[VXLAN + 7] = 0;
}

/// Offset of the outer IPv4 header checksum; the source and destination
/// addresses follow it, so one store of [`DADDR_FIX_LEN`] bytes from here
/// readdresses a flooded copy.
pub const OUTER_CSUM: usize = OUTER_IP + 10;
/// Bytes from [`OUTER_CSUM`] to the end of the outer destination address.
pub const DADDR_FIX_LEN: usize = 10;

/// Whether a container's ARP `a` on network `net` is flooded to the
/// network's static VTEPs when no endpoint owns the requested address: a
/// request (a reply or a gratuitous ARP announces, it asks nothing), on an
/// overlay network (a VNI), for an address inside its subnet that is not
/// the gateway (answered here) nor the subnet's network or broadcast
/// address (no container has those).
#[inline(always)]
pub fn floods(net: &Network, a: &Arp) -> bool {
    let host = a.tpa & !net.mask;
    a.op == arp::OP_REQUEST
        && net.vni != 0
        && net.contains(a.tpa)
        && a.tpa != net.gateway
        && host != 0
        && host != !net.mask
}

/// The IPv4 header checksum after a 32-bit field (an address, in wire
/// form like the checksum's bytes) changed from `old` to `new`, updated
/// incrementally as RFC 1624 (eqn. 3) says: `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn csum_replace32(csum: u16, old: Ipv4Wire, new: Ipv4Wire) -> u16 {
    let (o, n) = (old.to_ne_bytes(), new.to_ne_bytes());
    let word = |b: [u8; 4], i: usize| ((b[i] as u32) << 8) | b[i + 1] as u32;
    let mut sum = (!csum) as u32;
    sum += (!word(o, 0)) & 0xffff;
    sum += (!word(o, 2)) & 0xffff;
    sum += word(n, 0);
    sum += word(n, 2);
    fold(sum)
}

/// The [`DADDR_FIX_LEN`] bytes at [`OUTER_CSUM`] of a flooded copy whose
/// outer headers were written by [`write_outer`] with checksum `csum` and
/// destination `first`, readdressed to `vtep`: the updated checksum, the
/// source `saddr` (unchanged) and `vtep`.
#[inline(always)]
pub fn readdress(
    csum: u16,
    saddr: Ipv4Wire,
    first: Ipv4Wire,
    vtep: Ipv4Wire,
) -> [u8; DADDR_FIX_LEN] {
    let c = csum_replace32(csum, first, vtep).to_be_bytes();
    let (s, d) = (saddr.to_ne_bytes(), vtep.to_ne_bytes());
    [c[0], c[1], s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]
}

/// Whether the frame (at least its Ethernet and a minimal IPv4 header) is
/// UDP to `vtep`, this host's tunnel address, in an IHL-5 header: a
/// candidate for VXLAN, whose port is looked at next ([`is_vxlan_port`]).
/// IPv4 with options is never VXLAN of ours (the encapsulation sends none)
/// and goes on to the host as any other packet.
#[inline(always)]
pub fn to_vtep(f: &[u8; ipv4::FRAME_MIN], vtep: Ipv4Wire) -> bool {
    f[OUTER_IP] == 0x45 && f[OUTER_IP + 9] == IPPROTO_UDP && load::ne32(f, OUTER_IP + 16) == vtep
}

/// Whether the outer UDP destination port is VXLAN's.
#[inline(always)]
pub fn is_vxlan_port(f: &[u8; PORTS_LEN]) -> bool {
    load::be16(f, OUTER_UDP + 2) == VXLAN_PORT
}

/// A received VXLAN datagram whose outer headers passed [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rx {
    /// Outer source: the sending VTEP.
    pub src: Ipv4Wire,
    /// Outer UDP source port (host order).
    pub sport: u16,
    /// The VNI.
    pub vni: u32,
    /// Length of the inner Ethernet frame, from the outer UDP length.
    pub inner_len: u32,
}

/// Checks the outer IPv4, UDP and VXLAN headers of a frame of `frame_len`
/// bytes that [`to_vtep`] and [`is_vxlan_port`] accepted: lengths that
/// agree with each other and fit the frame (IPv4 total length, UDP length,
/// room for an inner Ethernet header), no fragment
/// ([`DropReason::VxlanMalformed`]), and a VXLAN header with the I flag and
/// every reserved bit zero ([`DropReason::VxlanBadFlags`]; RFC 7348 lets a
/// receiver ignore them, but nothing we accept sets them).
#[inline(always)]
pub fn parse(f: &[u8; INNER], frame_len: u32) -> Result<Rx, DropReason> {
    let tot = load::be16(f, OUTER_IP + 2) as u32;
    let min = (INNER_L3 - OUTER_IP) as u32;
    if tot < min || tot + OUTER_IP as u32 > frame_len {
        return Err(DropReason::VxlanMalformed);
    }
    // MF set or a fragment offset: the datapath does not reassemble.
    if load::be16(f, OUTER_IP + 6) & 0x3fff != 0 {
        return Err(DropReason::VxlanMalformed);
    }
    if load::be16(f, OUTER_UDP + 4) as u32 != tot - 20 {
        return Err(DropReason::VxlanMalformed);
    }
    if f[VXLAN] != FLAG_VNI
        || f[VXLAN + 1] != 0
        || f[VXLAN + 2] != 0
        || f[VXLAN + 3] != 0
        || f[VXLAN + 7] != 0
    {
        return Err(DropReason::VxlanBadFlags);
    }
    Ok(Rx {
        src: load::ne32(f, OUTER_IP + 12),
        sport: load::be16(f, OUTER_UDP),
        vni: ((f[VXLAN + 4] as u32) << 16) | ((f[VXLAN + 5] as u32) << 8) | f[VXLAN + 6] as u32,
        inner_len: tot - (INNER - OUTER_IP) as u32,
    })
}

/// Checks the inner IPv4 header of a VXLAN frame (`f` starts at the outer
/// Ethernet header) against the inner frame's length, as the router check
/// of [`ipv4::checked_addrs`] does for a plain frame; returns the inner
/// source and destination. Every failure is [`DropReason::VxlanMalformed`].
#[inline(always)]
pub fn inner_ipv4(
    f: &[u8; INNER_L3 + 20],
    inner_len: u32,
) -> Result<(Ipv4Wire, Ipv4Wire), DropReason> {
    let at = INNER_L3;
    let vihl = f[at];
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(DropReason::VxlanMalformed);
    }
    let tot = load::be16(f, at + 2) as u32;
    if tot < (vihl & 0x0f) as u32 * 4 || tot + eth::HLEN as u32 > inner_len {
        return Err(DropReason::VxlanMalformed);
    }
    Ok((load::ne32(f, at + 12), load::ne32(f, at + 16)))
}

/// The inner frame's sender as the anti-spoofing check sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerSrc {
    /// IPv4 source (the ARP sender address for ARP; 0 for an ARP probe).
    pub ip: Ipv4Wire,
    /// Ethernet source.
    pub mac: [u8; 6],
}

/// Where a received inner frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxVerdict<'a> {
    /// The local endpoint it is for.
    pub dst: &'a Endpoint,
    /// Whether the sender is to be learned ([`learned`]): it sits behind a
    /// static VTEP and is unknown, or has moved.
    pub learn: bool,
}

/// Decides a received inner frame of VNI `rx.vni`, sent by VTEP `rx.src`
/// (whose `VTEPS` flags are `vtep`), from `src` to the address whose
/// `ENDPOINTS` entry is `dst_ep`; `src_ep` is the entry of `src.ip`.
///
/// The destination must be an endpoint of this host
/// ([`DropReason::VxlanNotLocal`]) on an overlay network of that VNI
/// ([`DropReason::VxlanUnknownVni`]). The source must be a remote endpoint
/// of the same network behind that VTEP, with that MAC; from a static VTEP
/// an unknown source inside the network's subnet (or an entry this
/// datapath learned earlier from a static VTEP, which may have moved) is
/// learned instead. Anything else is [`DropReason::VxlanSpoofed`]: a
/// cluster node's endpoints come from the store only.
#[inline(always)]
pub fn decide_rx<'a>(
    rx: &Rx,
    vtep: VtepFlags,
    src: &InnerSrc,
    dst_ep: Option<&'a Endpoint>,
    src_ep: Option<&Endpoint>,
) -> Result<RxVerdict<'a>, DropReason> {
    let dst = match dst_ep {
        Some(d) if d.flags & EP_REMOTE == 0 => d,
        _ => return Err(DropReason::VxlanNotLocal),
    };
    if dst.net.vni == 0 || dst.net.vni != rx.vni {
        return Err(DropReason::VxlanUnknownVni);
    }
    let from_static = vtep & VTEP_STATIC != 0;
    let learn = match src_ep {
        Some(s)
            if s.flags & EP_REMOTE != 0
                && s.network_id == dst.network_id
                && s.vtep == rx.src
                && s.mac == src.mac =>
        {
            false
        }
        // A learned endpoint that now answers from elsewhere (another
        // static VTEP, a new MAC): learned again.
        Some(s) if from_static && s.flags & EP_LEARNED != 0 && s.network_id == dst.network_id => {
            true
        }
        Some(_) => return Err(DropReason::VxlanSpoofed),
        // An ARP probe (sender 0.0.0.0) claims no address: nothing to learn.
        None if from_static && src.ip == 0 => false,
        None if from_static && dst.net.contains(src.ip) && src.ip != dst.net.gateway => true,
        None => return Err(DropReason::VxlanSpoofed),
    };
    Ok(RxVerdict { dst, learn })
}

/// The `ENDPOINTS` entry of a sender learned from static VTEP `rx.src`, on
/// the network of the local endpoint `dst` it sent to.
#[inline(always)]
pub fn learned(rx: &Rx, src: &InnerSrc, dst: &Endpoint) -> Endpoint {
    Endpoint {
        ifindex: 0,
        network_id: dst.network_id,
        ip: src.ip,
        mac: src.mac,
        host_mac: [0; 6],
        flags: EP_REMOTE | EP_LEARNED,
        vtep: rx.src,
        net: dst.net,
    }
}

/// Bytes of a VXLAN frame up to the inner TCP/UDP ports (inner IHL 5).
pub const INNER_PORTS: usize = INNER_L3 + 24;
/// Bytes of a VXLAN frame up to and including the inner TCP flags (inner
/// IHL 5): the flags are byte `INNER_TCP_FLAGS - 1`.
pub const INNER_TCP_FLAGS: usize = INNER_L3 + 20 + 14;

/// The 5-tuple of the inner IPv4 packet of a VXLAN frame, for the service
/// paths: TCP or UDP in an IHL-5 header that is not a later fragment
/// (which carries no ports). `None` for anything else: such a packet is
/// no service flow and keeps the refusal `decide_rx` gave it.
#[inline(always)]
pub fn inner_flow(f: &[u8; INNER_PORTS]) -> Option<CtKey> {
    let at = INNER_L3;
    let proto = f[at + 9];
    if f[at] != 0x45 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return None;
    }
    if load::be16(f, at + 6) & 0x1fff != 0 {
        return None;
    }
    Some(CtKey::new(
        proto,
        load::ne32(f, at + 12),
        load::ne16(f, at + 20),
        load::ne32(f, at + 16),
        load::ne16(f, at + 22),
    ))
}

/// What a received inner IPv4 packet that [`decide_rx`] refused may still
/// be: a service flow of the routing mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceRx<'a> {
    /// A new or known ingress flow, tunnelled here by the host that
    /// received it, for the local replica `dst`: goes in unchanged, and
    /// its replies go back to that host (`CT_TUNNEL`).
    Ingress { dst: &'a Endpoint },
    /// The reply of an ingress flow this host received and sent to a
    /// replica on the sending host: un-DNATed here and routed to the client.
    Reply,
}

/// Whether VTEP flags name a cluster node (runs our daemon, its endpoints
/// and replicas come from the store) and not a static VTEP.
#[inline(always)]
const fn node_only(vtep: VtepFlags) -> bool {
    vtep & VTEP_NODE != 0 && vtep & VTEP_STATIC == 0
}

/// Decides an inner IPv4 packet of flow `key`, from VTEP `rx.src` (flags
/// `vtep`), that [`decide_rx`] refused with `refused`; `dst_ep`/`src_ep`
/// are the `ENDPOINTS` entries of its destination and source. Asked
/// lazily: `backend_port()` (whether `(key.daddr, key.dport, proto)` is in
/// `BACKEND_PORTS`) and `ct_flags()` (the flags of `key`'s live CT entry).
///
/// Accepted, only from a cluster node:
///
/// - [`ServiceRx::Ingress`]: the source is no endpoint at all (a client
///   from outside the cluster, whose address the replica is to see), the
///   destination a local endpoint of the frame's VNI, and its address and
///   port a replica's target (a node can thus reach only the ports of
///   replicas, not any port of any container, from an unknown source).
/// - [`ServiceRx::Reply`]: the destination is no endpoint (the client),
///   the source a remote endpoint of the frame's VNI behind the very VTEP
///   that sent it (the replica), and this host holds the reply direction
///   of a service flow for the tuple (`CT_SERVICE | CT_REPLY`).
///
/// Anything else keeps `refused`.
#[inline(always)]
pub fn decide_rx_service<'a>(
    refused: DropReason,
    rx: &Rx,
    vtep: VtepFlags,
    dst_ep: Option<&'a Endpoint>,
    src_ep: Option<&Endpoint>,
    backend_port: impl FnOnce() -> bool,
    ct_flags: impl FnOnce() -> Option<u16>,
) -> Result<ServiceRx<'a>, DropReason> {
    if !node_only(vtep) || rx.vni == 0 {
        return Err(refused);
    }
    match (dst_ep, src_ep) {
        (Some(d), None)
            if refused as u32 == DropReason::VxlanSpoofed as u32
                && d.flags & EP_REMOTE == 0
                && d.net.vni == rx.vni =>
        {
            if backend_port() {
                Ok(ServiceRx::Ingress { dst: d })
            } else {
                Err(refused)
            }
        }
        (None, Some(s))
            if refused as u32 == DropReason::VxlanNotLocal as u32
                && s.flags & EP_REMOTE != 0
                && s.vtep == rx.src
                && s.net.vni == rx.vni =>
        {
            let want = CT_SERVICE | CT_REPLY;
            match ct_flags() {
                Some(f) if f & want == want => Ok(ServiceRx::Reply),
                _ => Err(refused),
            }
        }
        _ => Err(refused),
    }
}

/// How much of the offending packet an ICMP fragmentation-needed quotes
/// (from its IPv4 header on): the longest IPv4 header (60) and the 8 bytes
/// RFC 792 asks for, whatever the header's length; more than the minimum
/// is allowed (RFC 1812 4.3.2.3).
pub const QUOTE: usize = 68;
/// Length of the headers in front of the quote: Ethernet, IPv4 and ICMP.
pub const TOO_BIG_HLEN: usize = eth::HLEN + 20 + 8;
/// Length of the ICMP fragmentation-needed frame.
pub const TOO_BIG_LEN: usize = TOO_BIG_HLEN + QUOTE;
/// ICMP destination unreachable, code fragmentation needed and DF set.
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// The smallest MTU an IPv4 link may have (RFC 791): a tunnel MTU below it
/// is taken as this, so the quote always fits inside the offending packet.
pub const MIN_MTU: u32 = 68;

/// Whether an IPv4 packet of total length `tot` is too big for a tunnel of
/// inner MTU `mtu` (a GSO packet is never: it is segmented to its MSS).
#[inline(always)]
pub fn too_big(tot: u32, mtu: u32, gso: bool) -> bool {
    let mtu = if mtu < MIN_MTU { MIN_MTU } else { mtu };
    !gso && tot > mtu
}

/// Whether the IPv4 packet in `f` has DF set.
#[inline(always)]
pub fn dont_fragment<const N: usize>(f: &[u8; N]) -> bool {
    f[OUTER_IP + 6] & 0x40 != 0
}

/// The headers of the ICMP fragmentation-needed (RFC 1191: type 3 code 4,
/// next-hop MTU `mtu`) about the packet whose first [`QUOTE`] bytes (from
/// its IPv4 header on) are `quote`, which follows them in the frame: from
/// `from` (the gateway of the sender's network) with MAC `from_mac`, back
/// to the packet's sender (`to_mac`, and the quote's source address). TTL
/// 64, id 0, no DF; the ICMP checksum covers the quote.
#[inline(always)]
pub fn frag_needed(
    quote: &[u8; QUOTE],
    to_mac: &[u8; 6],
    from: Ipv4Wire,
    from_mac: &[u8; 6],
    mtu: u32,
) -> [u8; TOO_BIG_HLEN] {
    let mut f = [0u8; TOO_BIG_HLEN];
    put_bytes(&mut f, eth::DST, to_mac);
    put_bytes(&mut f, eth::SRC, from_mac);
    put16(&mut f, eth::PROTO, eth::P_IPV4);
    let ip = eth::HLEN;
    f[ip] = 0x45;
    put16(&mut f, ip + 2, (TOO_BIG_LEN - eth::HLEN) as u16);
    f[ip + 8] = 64;
    f[ip + 9] = IPPROTO_ICMP;
    put_bytes(&mut f, ip + 12, &from.to_ne_bytes());
    put_bytes(&mut f, ip + 16, &load::ne32(quote, 12).to_ne_bytes());
    let c = ipv4_header_csum(&f, ip);
    put16(&mut f, ip + 10, c);
    let icmp = ip + 20;
    f[icmp] = ICMP_DEST_UNREACH;
    f[icmp + 1] = ICMP_FRAG_NEEDED;
    let mtu = if mtu < MIN_MTU { MIN_MTU } else { mtu };
    let mtu = if mtu > 0xffff { 0xffff } else { mtu };
    put16(&mut f, icmp + 6, mtu as u16);
    let mut sum: u32 = ((ICMP_DEST_UNREACH as u32) << 8) | ICMP_FRAG_NEEDED as u32;
    sum += mtu;
    let mut i = 0;
    while i < QUOTE {
        sum += load::be16(quote, i) as u32;
        i += 2;
    }
    let c = fold(sum);
    put16(&mut f, icmp + 2, c);
    f
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{ipv4_wire, Network, VTEP_NODE};

    /// RFC 1071 over any even number of bytes, written independently of
    /// the code under test (a correct header sums to 0).
    fn rfc1071(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    const LOCAL: [u8; 4] = [192, 0, 2, 1];
    const REMOTE: [u8; 4] = [192, 0, 2, 2];

    fn outer() -> Outer {
        Outer {
            dmac: [2, 0, 0, 0, 0, 2],
            smac: [2, 0, 0, 0, 0, 1],
            saddr: ipv4_wire(LOCAL),
            daddr: ipv4_wire(REMOTE),
            sport: 40_000,
            dport: VXLAN_PORT,
            vni: 0x12_3456,
        }
    }

    /// An encapsulated frame of `inner_len` inner bytes (filled with 0xab).
    fn encapsulated(o: &Outer, inner_len: usize) -> Vec<u8> {
        let mut h = [0u8; INNER];
        write_outer(&mut h, o, inner_len as u32);
        let mut f = h.to_vec();
        f.resize(INNER + inner_len, 0xab);
        f
    }

    #[test]
    fn outer_headers_are_written_as_rfc_7348_says() {
        let o = outer();
        let f = encapsulated(&o, 98);
        assert_eq!(&f[0..6], &o.dmac);
        assert_eq!(&f[6..12], &o.smac);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let ip = &f[OUTER_IP..OUTER_UDP];
        assert_eq!(ip[0], 0x45);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 20 + 8 + 8 + 98);
        assert_eq!(&ip[4..6], &[0, 0], "id 0");
        assert_eq!(&ip[6..8], &[0x40, 0], "DF, no offset");
        assert_eq!(ip[8], 64, "TTL");
        assert_eq!(ip[9], 17, "UDP");
        assert_eq!(&ip[12..16], &LOCAL);
        assert_eq!(&ip[16..20], &REMOTE);
        assert_eq!(rfc1071(ip), 0, "header checksum");
        let udp = &f[OUTER_UDP..VXLAN];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 40_000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]), 8 + 8 + 98);
        assert_eq!(&udp[6..8], &[0, 0], "no UDP checksum");
        assert_eq!(&f[VXLAN..INNER], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        // And what is written is what the receive side accepts.
        assert_eq!(
            parse(f[..INNER].try_into().unwrap(), f.len() as u32),
            Ok(Rx {
                src: ipv4_wire(LOCAL),
                sport: 40_000,
                vni: 0x12_3456,
                inner_len: 98,
            })
        );
    }

    #[test]
    fn the_checksum_changes_with_the_addresses() {
        for daddr in [[10, 0, 0, 1], [255, 255, 255, 255], [0, 0, 0, 0]] {
            let o = Outer {
                daddr: ipv4_wire(daddr),
                ..outer()
            };
            let f = encapsulated(&o, 60);
            assert_eq!(rfc1071(&f[OUTER_IP..OUTER_UDP]), 0, "{daddr:?}");
        }
    }

    #[test]
    fn lengths_saturate_for_huge_gso_packets() {
        let mut h = [0u8; INNER];
        write_outer(&mut h, &outer(), 70_000);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 0xffff);
        assert_eq!(rfc1071(&h[OUTER_IP..OUTER_UDP]), 0);
    }

    #[test]
    fn source_ports_stay_in_range_and_follow_the_hash() {
        for h in [
            0u32,
            1,
            0xffff,
            0x1_0000,
            0xdead_beef,
            u32::MAX,
            0x8000_0000,
        ] {
            let p = u32::from(src_port(h));
            assert!((SRC_PORT_MIN..SRC_PORT_END).contains(&p), "{h:#x} -> {p}");
        }
        assert_eq!(u32::from(src_port(0)), SRC_PORT_MIN);
        // Flow hashes (full 32-bit values; a multiplicative sequence stands
        // in for them) spread over the whole range: every eighth of it gets
        // a share, and the same hash always gives the same port.
        let mut buckets = [0u32; 8];
        let span = SRC_PORT_END - SRC_PORT_MIN;
        for i in 0..4096u32 {
            let h = i.wrapping_mul(0x9e37_79b9);
            assert_eq!(src_port(h), src_port(h));
            let p = u32::from(src_port(h)) - SRC_PORT_MIN;
            buckets[(p * 8 / span) as usize] += 1;
        }
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (256..=768).contains(n),
                "bucket {i}: {n} of 4096 ({buckets:?})"
            );
        }
    }

    fn vxlan(o: &Outer, inner_len: usize) -> [u8; INNER] {
        encapsulated(o, inner_len)[..INNER].try_into().unwrap()
    }

    #[test]
    fn candidates_are_udp_to_our_vtep_in_an_ihl_5_header() {
        let f = encapsulated(&outer(), 60);
        let head: &[u8; ipv4::FRAME_MIN] = f[..ipv4::FRAME_MIN].try_into().unwrap();
        assert!(to_vtep(head, ipv4_wire(REMOTE)));
        assert!(!to_vtep(head, ipv4_wire(LOCAL)));
        let mut tcp = *head;
        tcp[OUTER_IP + 9] = 6;
        assert!(!to_vtep(&tcp, ipv4_wire(REMOTE)));
        let mut opts = *head;
        opts[OUTER_IP] = 0x46;
        assert!(!to_vtep(&opts, ipv4_wire(REMOTE)));
        let ports: &[u8; PORTS_LEN] = f[..PORTS_LEN].try_into().unwrap();
        assert!(is_vxlan_port(ports));
        let mut other = *ports;
        other[OUTER_UDP + 3] = 0xb6; // 4790
        assert!(!is_vxlan_port(&other));
    }

    #[test]
    fn bad_flags_and_reserved_bits_are_refused() {
        let good = vxlan(&outer(), 60);
        let len = (INNER + 60) as u32;
        assert!(parse(&good, len).is_ok());
        // No I flag; another flag; each reserved byte.
        for (at, v) in [
            (VXLAN, 0x00),
            (VXLAN, 0x0c),
            (VXLAN, 0x88),
            (VXLAN + 1, 1),
            (VXLAN + 2, 0x80),
            (VXLAN + 3, 1),
            (VXLAN + 7, 1),
        ] {
            let mut f = good;
            f[at] = v;
            assert_eq!(
                parse(&f, len),
                Err(DropReason::VxlanBadFlags),
                "{at}={v:#x}"
            );
        }
    }

    #[test]
    fn lengths_must_agree_and_fit() {
        let o = outer();
        let good = vxlan(&o, 60);
        let len = (INNER + 60) as u32;
        // The frame is shorter than the IPv4 total length says.
        assert_eq!(parse(&good, len - 1), Err(DropReason::VxlanMalformed));
        // Padding after the datagram is fine.
        assert!(parse(&good, len + 10).is_ok());
        // A UDP length that disagrees with the IPv4 one.
        for udp_len in [0u16, 8 + 8 + 59, 8 + 8 + 61] {
            let mut f = good;
            f[OUTER_UDP + 4..OUTER_UDP + 6].copy_from_slice(&udp_len.to_be_bytes());
            assert_eq!(parse(&f, len), Err(DropReason::VxlanMalformed), "{udp_len}");
        }
        // Too short for an inner Ethernet header, however consistent.
        for inner in [0usize, 13] {
            let f = vxlan(&o, inner);
            assert_eq!(
                parse(&f, (INNER + inner) as u32),
                Err(DropReason::VxlanMalformed),
                "{inner}"
            );
        }
        assert!(parse(&vxlan(&o, 14), (INNER + 14) as u32).is_ok());
        // Fragments (MF, or an offset).
        for frag in [0x2000u16, 0x0001, 0x4001] {
            let mut f = good;
            f[OUTER_IP + 6..OUTER_IP + 8].copy_from_slice(&frag.to_be_bytes());
            assert_eq!(parse(&f, len), Err(DropReason::VxlanMalformed), "{frag:#x}");
        }
    }

    #[test]
    fn the_inner_ipv4_header_must_fit_the_inner_frame() {
        let mut f = [0u8; INNER_L3 + 20];
        f[INNER_L3] = 0x45;
        f[INNER_L3 + 2..INNER_L3 + 4].copy_from_slice(&40u16.to_be_bytes());
        f[INNER_L3 + 12..INNER_L3 + 16].copy_from_slice(&[10, 0, 0, 2]);
        f[INNER_L3 + 16..INNER_L3 + 20].copy_from_slice(&[10, 0, 0, 3]);
        let want = Ok((ipv4_wire([10, 0, 0, 2]), ipv4_wire([10, 0, 0, 3])));
        assert_eq!(inner_ipv4(&f, 14 + 40), want);
        assert_eq!(inner_ipv4(&f, 14 + 39), Err(DropReason::VxlanMalformed));
        let mut short = f;
        short[INNER_L3 + 2..INNER_L3 + 4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(inner_ipv4(&short, 100), Err(DropReason::VxlanMalformed));
        let mut v6 = f;
        v6[INNER_L3] = 0x65;
        assert_eq!(inner_ipv4(&v6, 100), Err(DropReason::VxlanMalformed));
    }

    const NET: Network = Network {
        subnet: ipv4_wire([10, 7, 0, 0]),
        mask: ipv4_wire([255, 255, 0, 0]),
        gateway: ipv4_wire([10, 7, 0, 1]),
        flags: 0,
        vni: 42,
    };

    fn ep(last: u8, flags: u32, vtep: [u8; 4]) -> Endpoint {
        Endpoint {
            ifindex: if flags & EP_REMOTE == 0 {
                100 + u32::from(last)
            } else {
                0
            },
            network_id: 3,
            ip: ipv4_wire([10, 7, 0, last]),
            mac: [2, 0x42, 10, 7, 0, last],
            host_mac: [0; 6],
            flags,
            vtep: ipv4_wire(vtep),
            net: NET,
        }
    }

    fn rx(vni: u32) -> Rx {
        Rx {
            src: ipv4_wire(REMOTE),
            sport: 50_000,
            vni,
            inner_len: 98,
        }
    }

    fn from(e: &Endpoint) -> InnerSrc {
        InnerSrc {
            ip: e.ip,
            mac: e.mac,
        }
    }

    #[test]
    fn a_known_remote_sender_reaches_a_local_endpoint_of_its_vni() {
        let local = ep(2, 0, [0; 4]);
        let remote = ep(9, EP_REMOTE, REMOTE);
        let v = decide_rx(
            &rx(42),
            VTEP_NODE,
            &from(&remote),
            Some(&local),
            Some(&remote),
        );
        assert_eq!(
            v,
            Ok(RxVerdict {
                dst: &local,
                learn: false
            })
        );
    }

    #[test]
    fn destination_checks() {
        let local = ep(2, 0, [0; 4]);
        let remote = ep(9, EP_REMOTE, REMOTE);
        let s = from(&remote);
        let d = |vni, dst: Option<&Endpoint>| {
            decide_rx(&rx(vni), VTEP_NODE, &s, dst, Some(&remote)).map(|v| *v.dst)
        };
        assert_eq!(d(42, None), Err(DropReason::VxlanNotLocal));
        assert_eq!(d(42, Some(&remote)), Err(DropReason::VxlanNotLocal));
        assert_eq!(d(43, Some(&local)), Err(DropReason::VxlanUnknownVni));
        // A plain (non-overlay) network's endpoint is not reachable as VNI 0.
        let plain = Endpoint {
            net: Network { vni: 0, ..NET },
            ..local
        };
        assert_eq!(d(0, Some(&plain)), Err(DropReason::VxlanUnknownVni));
    }

    #[test]
    fn senders_that_are_not_who_they_say_are_dropped() {
        let local = ep(2, 0, [0; 4]);
        let remote = ep(9, EP_REMOTE, REMOTE);
        let run = |vtep, s: InnerSrc, src: Option<&Endpoint>| {
            decide_rx(&rx(42), vtep, &s, Some(&local), src)
        };
        // Behind another VTEP than the one that sent the packet.
        let elsewhere = ep(9, EP_REMOTE, [192, 0, 2, 99]);
        assert_eq!(
            run(VTEP_NODE, from(&remote), Some(&elsewhere)),
            Err(DropReason::VxlanSpoofed)
        );
        // Another MAC than the entry's.
        let s = InnerSrc {
            mac: [2, 0, 0, 0, 0, 0x66],
            ..from(&remote)
        };
        assert_eq!(
            run(VTEP_NODE, s, Some(&remote)),
            Err(DropReason::VxlanSpoofed)
        );
        // A local endpoint's address from outside.
        let other_local = ep(5, 0, [0; 4]);
        assert_eq!(
            run(VTEP_STATIC, from(&other_local), Some(&other_local)),
            Err(DropReason::VxlanSpoofed)
        );
        // Another network's remote endpoint.
        let foreign = Endpoint {
            network_id: 4,
            ..remote
        };
        assert_eq!(
            run(VTEP_NODE, from(&foreign), Some(&foreign)),
            Err(DropReason::VxlanSpoofed)
        );
        // Unknown senders are never learned from cluster nodes.
        assert_eq!(
            run(VTEP_NODE, from(&remote), None),
            Err(DropReason::VxlanSpoofed)
        );
    }

    #[test]
    fn static_vteps_senders_are_learned() {
        let local = ep(2, 0, [0; 4]);
        let remote = ep(9, EP_REMOTE, REMOTE);
        let v = decide_rx(&rx(42), VTEP_STATIC, &from(&remote), Some(&local), None).unwrap();
        assert_eq!(v.dst, &local);
        assert!(v.learn);
        assert_eq!(
            learned(&rx(42), &from(&remote), &local),
            Endpoint {
                flags: EP_REMOTE | EP_LEARNED,
                ..remote
            }
        );
        // Outside the subnet, or the gateway's address: not learnable.
        for ip in [[10, 8, 0, 9], [10, 7, 0, 1]] {
            let s = InnerSrc {
                ip: ipv4_wire(ip),
                mac: remote.mac,
            };
            assert_eq!(
                decide_rx(&rx(42), VTEP_STATIC, &s, Some(&local), None),
                Err(DropReason::VxlanSpoofed),
                "{ip:?}"
            );
        }
        // A learned entry that moved to another MAC is learned again.
        let moved = Endpoint {
            flags: EP_REMOTE | EP_LEARNED,
            mac: [2, 0, 0, 0, 0, 1],
            ..remote
        };
        let v = decide_rx(
            &rx(42),
            VTEP_STATIC,
            &from(&remote),
            Some(&local),
            Some(&moved),
        );
        assert!(v.unwrap().learn);
        // A learned entry is then known: nothing more to learn.
        let known = learned(&rx(42), &from(&remote), &local);
        let v = decide_rx(
            &rx(42),
            VTEP_STATIC,
            &from(&remote),
            Some(&local),
            Some(&known),
        );
        assert!(!v.unwrap().learn);
        // A probe (0.0.0.0) passes and teaches nothing.
        let probe = InnerSrc {
            ip: 0,
            mac: remote.mac,
        };
        let v = decide_rx(&rx(42), VTEP_STATIC, &probe, Some(&local), None).unwrap();
        assert!(!v.learn);
    }

    #[test]
    fn a_readdressed_copy_has_the_checksum_written_from_scratch() {
        let mut o = outer();
        let f = encapsulated(&o, 42);
        let csum = u16::from_be_bytes([f[OUTER_CSUM], f[OUTER_CSUM + 1]]);
        for vtep in [
            [192, 0, 2, 3],
            [10, 255, 0, 1],
            [255, 255, 255, 254],
            REMOTE,
        ] {
            let fix = readdress(csum, o.saddr, o.daddr, ipv4_wire(vtep));
            let mut g = f.clone();
            g[OUTER_CSUM..OUTER_CSUM + DADDR_FIX_LEN].copy_from_slice(&fix);
            o.daddr = ipv4_wire(vtep);
            assert_eq!(g, encapsulated(&o, 42), "{vtep:?}");
            assert_eq!(rfc1071(&g[OUTER_IP..OUTER_UDP]), 0, "{vtep:?}");
            o.daddr = ipv4_wire(REMOTE);
        }
    }

    #[test]
    fn only_requests_for_unknown_hosts_of_an_overlay_subnet_flood() {
        let net = Network {
            subnet: ipv4_wire([10, 7, 0, 0]),
            mask: ipv4_wire([255, 255, 255, 0]),
            gateway: ipv4_wire([10, 7, 0, 1]),
            flags: 0,
            vni: 42,
        };
        let a = |op, tpa| Arp {
            op,
            sha: [2, 0, 0, 0, 0, 2],
            spa: ipv4_wire([10, 7, 0, 2]),
            tpa: ipv4_wire(tpa),
        };
        assert!(floods(&net, &a(arp::OP_REQUEST, [10, 7, 0, 250])));
        assert!(!floods(&net, &a(arp::OP_REPLY, [10, 7, 0, 250])));
        for tpa in [
            [10, 7, 0, 1],
            [10, 7, 0, 0],
            [10, 7, 0, 255],
            [10, 8, 0, 250],
        ] {
            assert!(!floods(&net, &a(arp::OP_REQUEST, tpa)), "{tpa:?}");
        }
        let plain = Network { vni: 0, ..net };
        assert!(!floods(&plain, &a(arp::OP_REQUEST, [10, 7, 0, 250])));
    }

    #[test]
    fn too_big_is_asked_of_non_gso_packets_only() {
        assert!(!too_big(1450, 1450, false));
        assert!(too_big(1451, 1450, false));
        assert!(!too_big(60_000, 1450, true));
        // A tunnel MTU below the IPv4 minimum counts as the minimum.
        assert!(!too_big(68, 0, false));
        assert!(too_big(69, 0, false));
    }

    #[test]
    fn frag_needed_quotes_the_packet_and_says_the_mtu() {
        let mut quote = [0u8; QUOTE];
        for (i, b) in quote.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        quote[0] = 0x45;
        quote[6] = 0x40;
        quote[12..16].copy_from_slice(&[10, 7, 0, 2]);
        let gw = ipv4_wire([10, 7, 0, 1]);
        let container = [2, 0x42, 10, 7, 0, 2];
        let h = frag_needed(&quote, &container, gw, &[2, 0, 0, 0, 0, 0xee], 1450);
        let mut f = h.to_vec();
        f.extend_from_slice(&quote);
        assert_eq!(f.len(), TOO_BIG_LEN);
        assert_eq!(&f[0..6], &container);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 0xee]);
        let ip = &f[14..34];
        assert_eq!(rfc1071(ip), 0);
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            TOO_BIG_LEN - 14
        );
        assert_eq!(ip[9], 1);
        assert_eq!(&ip[12..16], &[10, 7, 0, 1]);
        assert_eq!(&ip[16..20], &[10, 7, 0, 2]);
        let icmp = &f[34..];
        assert_eq!(rfc1071(icmp), 0, "ICMP checksum");
        assert_eq!(&icmp[0..2], &[3, 4]);
        assert_eq!(&icmp[4..8], &[0, 0, 0x05, 0xaa], "next-hop MTU 1450");
        // An MTU above 16 bits is capped, below the minimum raised.
        let h = frag_needed(&quote, &container, gw, &[0; 6], 10);
        assert_eq!(&h[38..42], &[0, 0, 0, 68]);
        let mut f = h.to_vec();
        f.extend_from_slice(&quote);
        assert_eq!(rfc1071(&f[34..]), 0);
    }

    fn inner_tcp(proto: u8, ihl: u8, frag: u16) -> [u8; INNER_PORTS] {
        let mut f = [0u8; INNER_PORTS];
        let at = INNER_L3;
        f[at] = 0x40 | ihl;
        f[at + 6..at + 8].copy_from_slice(&frag.to_be_bytes());
        f[at + 9] = proto;
        f[at + 12..at + 16].copy_from_slice(&[198, 51, 100, 7]);
        f[at + 16..at + 20].copy_from_slice(&[10, 7, 0, 9]);
        f[at + 20..at + 22].copy_from_slice(&40_000u16.to_be_bytes());
        f[at + 22..at + 24].copy_from_slice(&8080u16.to_be_bytes());
        f
    }

    #[test]
    fn the_inner_tcp_flags_are_the_last_byte_of_their_prefix() {
        // Byte 13 of the inner TCP header (after a 20-byte IPv4 header):
        // the tunnelled flows' conntrack must see their FIN and RST, or
        // their pass-through pair keeps an established timeout for hours.
        assert_eq!(INNER_TCP_FLAGS - 1, INNER_L3 + 20 + 13);
        assert!(INNER_TCP_FLAGS > INNER_PORTS);
    }

    #[test]
    fn the_inner_flow_is_read_from_tcp_and_udp_first_fragments_only() {
        use crate::{port_wire, IPPROTO_TCP};
        let want = |proto| {
            Some(CtKey::new(
                proto,
                ipv4_wire([198, 51, 100, 7]),
                port_wire(40_000),
                ipv4_wire([10, 7, 0, 9]),
                port_wire(8080),
            ))
        };
        assert_eq!(
            inner_flow(&inner_tcp(IPPROTO_TCP, 5, 0x4000)),
            want(IPPROTO_TCP)
        );
        assert_eq!(inner_flow(&inner_tcp(IPPROTO_UDP, 5, 0)), want(IPPROTO_UDP));
        // A first fragment (MF, offset 0) still carries the ports.
        assert_eq!(
            inner_flow(&inner_tcp(IPPROTO_UDP, 5, 0x2000)),
            want(IPPROTO_UDP)
        );
        // A later fragment, options (ports elsewhere), ICMP: no flow.
        assert_eq!(inner_flow(&inner_tcp(IPPROTO_UDP, 5, 0x2001)), None);
        assert_eq!(inner_flow(&inner_tcp(IPPROTO_TCP, 6, 0)), None);
        assert_eq!(inner_flow(&inner_tcp(IPPROTO_ICMP, 5, 0)), None);
    }

    #[test]
    fn tunnelled_ingress_flows_reach_replica_ports_only_from_nodes() {
        let local = ep(2, 0, [0; 4]);
        let spoofed = DropReason::VxlanSpoofed;
        let run = |vtep, dst: Option<&Endpoint>, src: Option<&Endpoint>, port: bool| {
            decide_rx_service(spoofed, &rx(42), vtep, dst, src, || port, || None).map(|v| match v {
                ServiceRx::Ingress { dst } => Some(*dst),
                ServiceRx::Reply => None,
            })
        };
        assert_eq!(run(VTEP_NODE, Some(&local), None, true), Ok(Some(local)));
        // Not a replica's port; from a static VTEP (or one flagged both);
        // a source that is a known endpoint (spoofing one of ours).
        assert_eq!(run(VTEP_NODE, Some(&local), None, false), Err(spoofed));
        assert_eq!(run(VTEP_STATIC, Some(&local), None, true), Err(spoofed));
        assert_eq!(
            run(VTEP_NODE | VTEP_STATIC, Some(&local), None, true),
            Err(spoofed)
        );
        let other = ep(5, 0, [0; 4]);
        assert_eq!(
            run(VTEP_NODE, Some(&local), Some(&other), true),
            Err(spoofed)
        );
        // Another VNI than the replica's network.
        assert_eq!(
            decide_rx_service(
                spoofed,
                &rx(43),
                VTEP_NODE,
                Some(&local),
                None,
                || true,
                || None
            ),
            Err(spoofed)
        );
        // Other refusals are never turned into an ingress flow.
        let not_local = DropReason::VxlanUnknownVni;
        assert_eq!(
            decide_rx_service(
                not_local,
                &rx(42),
                VTEP_NODE,
                Some(&local),
                None,
                || true,
                || None
            ),
            Err(not_local)
        );
        // The BACKEND_PORTS lookup is not made for what fails before it.
        let asked = core::cell::Cell::new(false);
        let _ = decide_rx_service(
            spoofed,
            &rx(42),
            VTEP_STATIC,
            Some(&local),
            None,
            || {
                asked.set(true);
                true
            },
            || None,
        );
        assert!(!asked.get());
    }

    #[test]
    fn replies_of_ingress_flows_come_back_from_the_replicas_vtep_only() {
        let replica = ep(9, EP_REMOTE, REMOTE);
        let nl = DropReason::VxlanNotLocal;
        let reply = CT_SERVICE | CT_REPLY;
        let run = |vtep, src: Option<&Endpoint>, flags: Option<u16>| {
            decide_rx_service(nl, &rx(42), vtep, None, src, || false, || flags)
        };
        assert_eq!(
            run(VTEP_NODE, Some(&replica), Some(reply)),
            Ok(ServiceRx::Reply)
        );
        // The original direction's entry, a flow that is no service's, or none.
        assert_eq!(run(VTEP_NODE, Some(&replica), Some(CT_SERVICE)), Err(nl));
        assert_eq!(run(VTEP_NODE, Some(&replica), Some(CT_REPLY)), Err(nl));
        assert_eq!(run(VTEP_NODE, Some(&replica), None), Err(nl));
        // The replica lives behind another VTEP; is a local endpoint; is unknown.
        let elsewhere = ep(9, EP_REMOTE, [192, 0, 2, 99]);
        assert_eq!(run(VTEP_NODE, Some(&elsewhere), Some(reply)), Err(nl));
        let local = ep(9, 0, [0; 4]);
        assert_eq!(run(VTEP_NODE, Some(&local), Some(reply)), Err(nl));
        assert_eq!(run(VTEP_NODE, None, Some(reply)), Err(nl));
        // From a static VTEP.
        assert_eq!(run(VTEP_STATIC, Some(&replica), Some(reply)), Err(nl));
        // To a remote endpoint (not the client): not this path.
        let other = ep(3, EP_REMOTE, REMOTE);
        assert_eq!(
            decide_rx_service(
                nl,
                &rx(42),
                VTEP_NODE,
                Some(&other),
                Some(&replica),
                || false,
                || Some(reply)
            ),
            Err(nl)
        );
    }
}

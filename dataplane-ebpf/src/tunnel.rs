//! The overlay: VXLAN built and taken apart by the TC programs themselves,
//! with no kernel vxlan device and no bridge.
//!
//! - [`encap`] (from `from_container`): a frame for a remote endpoint grows
//!   by the outer headers at the MAC layer (`bpf_skb_adjust_room` with the
//!   ENCAP flags, so that a GSO packet is segmented as UDP tunnel traffic
//!   and its inner checksums completed after encapsulation), gets them
//!   written with `bpf_skb_store_bytes`, and leaves through the underlay
//!   device the FIB names for the remote VTEP. A packet larger than the
//!   tunnel carries is answered with an ICMP fragmentation-needed.
//! - [`decap`] (from `from_uplink`, before NAT): VXLAN to this host's VTEP
//!   from a known VTEP, with valid headers, for an endpoint of this host of
//!   that VNI, from the remote endpoint it claims to be, is shrunk back to
//!   the inner frame and goes straight into the container
//!   (`bpf_redirect_peer`). Static VTEPs' endpoints are learned, and their
//!   ARP requests for local endpoints answered in place.
//! - A container's ARP request for an unknown address of its overlay goes
//!   to the network's static VTEPs (`flood`, a program of its own).
//! - The routing mesh of ingress services: [`to_replica`] carries a flow
//!   the receiving host DNATed to a replica on another host; on that host
//!   [`service_rx`] lets it in (`CT_TUNNEL`), and the replica's replies go
//!   back by [`encap`]; on the receiving host [`service_reply`] takes them
//!   apart, un-DNATs them and routes them to the client.
//!
//! The header layouts and every decision are `dataplane_common::packet::vxlan`'s
//! (host-tested); this module reads the frame, asks, and writes.

use aya_ebpf::{
    bindings::{
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_ENCAP_L2_SHIFT,
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO,
    },
    helpers::generated::{
        bpf_get_hash_recalc, bpf_redirect, bpf_redirect_peer, bpf_skb_change_tail,
        bpf_skb_load_bytes,
    },
    programs::TcContext,
};
use dataplane_common::{
    packet::{
        arp, eth, ipv4, load,
        vxlan::{
            self, InnerSrc, Outer, Rx, ServiceRx, INNER, INNER_L3, INNER_PORTS, INNER_TCP_FLAGS,
            PORTS_LEN, QUOTE, TOO_BIG_HLEN, TOO_BIG_LEN,
        },
    },
    DropReason, Endpoint, Ipv4Wire, PortKey, Tunnel, VtepFlags, CT_TUNNEL, IPPROTO_TCP, NO_BACKEND,
    TUNNEL_ENABLED, VXLAN_OVERHEAD, VXLAN_PORT,
};

use crate::{
    conntrack as ct,
    ctx::{frame, ifindex, is_gso, Action},
    fib, lb, lookup,
    maps::{BACKEND_PORTS, ENDPOINTS, TUNNEL, VTEPS},
    rewrite,
};

/// This host's end of the tunnel, if the daemon enabled it.
#[inline(always)]
pub(crate) fn tunnel() -> Option<&'static Tunnel> {
    let t = TUNNEL.get(0)?;
    if t.flags & TUNNEL_ENABLED == 0 {
        return None;
    }
    Some(t)
}

/// Writes `v` at `offset` through the kernel's helper (see `rewrite::store`
/// for why never through a packet pointer).
#[inline(always)]
fn store<T>(ctx: &TcContext, offset: usize, v: &T, e: DropReason) -> Result<(), DropReason> {
    ctx.store(offset, v, 0).map_err(|_| e)
}

/// Encapsulates the IPv4 frame `f` (already checked by the prologue) that
/// endpoint `me` sends to the remote endpoint with MAC `mac` behind the
/// VTEP `vtep`, in VXLAN of `vni`, and sends it out of the underlay.
#[inline(always)]
pub(crate) fn encap(
    ctx: &TcContext,
    me: &Endpoint,
    f: &[u8; ipv4::FRAME_MIN],
    vtep: Ipv4Wire,
    mac: &[u8; 6],
    vni: u32,
) -> Result<Action, DropReason> {
    let t = tunnel().ok_or(DropReason::TunnelDisabled)?;
    let tot = load::be16(f, ipv4::TOT_LEN) as u32;
    if vxlan::too_big(tot, t.mtu, is_gso(ctx)) {
        if vxlan::dont_fragment(f) {
            return too_big(ctx, me, t.mtu);
        }
        // The datapath does not fragment: the container's MTU is the
        // tunnel's, so only a container that raised its own gets here.
        return Err(DropReason::TunnelTooBig);
    }
    send(ctx, t, vtep, mac, &me.mac, vni)
}

/// The encapsulation itself: the frame (IPv4, its size checked against the
/// tunnel) gets outer headers to `vtep` with VNI `vni` and an inner
/// Ethernet header `src` -> `dst`, and leaves through the underlay.
#[inline(always)]
fn send(
    ctx: &TcContext,
    t: &Tunnel,
    vtep: Ipv4Wire,
    dst: &[u8; 6],
    src: &[u8; 6],
    vni: u32,
) -> Result<Action, DropReason> {
    let route = fib::underlay(ctx, t.addr, vtep, t.ifindex);
    if !route.found() {
        return Err(DropReason::TunnelNoRoute);
    }
    let (dmac, smac) = route.macs();
    // SAFETY: helper call on the program's own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let o = Outer {
        dmac,
        smac,
        saddr: t.addr,
        daddr: vtep,
        sport: vxlan::src_port(hash),
        dport: VXLAN_PORT,
        vni,
    };
    let mut h = [0u8; INNER_L3];
    vxlan::write_outer(&mut h, &o, ctx.len());
    let mut i = 0;
    while i < 6 {
        h[INNER + eth::DST + i] = dst[i];
        h[INNER + eth::SRC + i] = src[i];
        i += 1;
    }
    h[INNER + eth::PROTO] = (eth::P_IPV4 >> 8) as u8;
    h[INNER + eth::PROTO + 1] = eth::P_IPV4 as u8;
    // The room goes in after the frame's Ethernet header: the old header
    // becomes the outer one, the new bytes the outer IPv4, UDP, VXLAN and
    // inner Ethernet headers, all overwritten below. FIXED_GSO: the
    // container's MTU already leaves room for the outer headers, so a GSO
    // packet keeps its segment size (and UDP GSO, whose size may not
    // change, is accepted).
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | ((eth::HLEN as u64) << BPF_ADJ_ROOM_ENCAP_L2_SHIFT);
    ctx.adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, flags)
        .map_err(|_| DropReason::TunnelTooBig)?;
    store(ctx, 0, &h, DropReason::TunnelNoRoute)?;
    Ok(Action::redirected(fib::send(&route)))
}

/// An ingress flow's packet (already DNATed to the replica `ep`, a remote
/// endpoint) on its way to the replica's host: encapsulated to `ep.vtep`
/// with its network's VNI, inner Ethernet `src` (the MAC the client's
/// packet was sent to) -> the replica's MAC; the redirect's verdict. A
/// packet too big for the tunnel is dropped: the client is no container
/// of ours to answer with the tunnel's MTU, and a TCP client's segments
/// fit (the replica's MSS is its own, tunnel-sized, MTU's).
#[inline(always)]
pub(crate) fn to_replica(ctx: &TcContext, ep: &Endpoint, src: &[u8; 6]) -> Result<i32, DropReason> {
    let t = tunnel().ok_or(DropReason::TunnelDisabled)?;
    if ep.net.vni == 0 {
        return Err(DropReason::TunnelDisabled);
    }
    let f = frame::<{ ipv4::FRAME_MIN }>(ctx)?;
    // SAFETY: bounds checked by `frame`.
    let tot = load::be16(unsafe { &*f }, ipv4::TOT_LEN) as u32;
    if vxlan::too_big(tot, t.mtu, is_gso(ctx)) {
        return Err(DropReason::TunnelTooBig);
    }
    Ok(send(ctx, t, ep.vtep, &ep.mac, src, ep.net.vni)?.verdict())
}

/// Answers the sender of a packet too big for the tunnel with an ICMP
/// fragmentation-needed from its gateway, carrying the tunnel's MTU, in the
/// packet's own skb: room for the new headers goes in after the Ethernet
/// header (the old IPv4 header then sits where the ICMP quotes it), the
/// frame is cut after the quote, the headers are written, and it goes
/// back out of the veth it came in on. Counted as a drop of the packet
/// ([`DropReason::TunnelTooBig`]) whose verdict is the redirect.
#[inline(always)]
fn too_big(ctx: &TcContext, me: &Endpoint, mtu: u32) -> Result<Action, DropReason> {
    let e = |_| DropReason::TunnelTooBig;
    let mut quote = [0u8; QUOTE];
    // The packet is longer than the minimum MTU, which the quote fits in.
    // The raw helper with a constant length: aya's `load_bytes` clamps the
    // length to the frame, which the verifier sees as possibly zero.
    // SAFETY: `quote` is valid for QUOTE bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            eth::HLEN as u32,
            quote.as_mut_ptr() as *mut _,
            QUOTE as u32,
        )
    };
    if r != 0 {
        return Err(DropReason::TunnelTooBig);
    }
    let h = vxlan::frag_needed(&quote, &me.mac, me.net.gateway, &me.host_mac, mtu);
    ctx.adjust_room((TOO_BIG_HLEN - eth::HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .map_err(e)?;
    // SAFETY: helper call on the program's own skb.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, TOO_BIG_LEN as u32, 0) } != 0 {
        return Err(DropReason::TunnelTooBig);
    }
    store(ctx, 0, &h, DropReason::TunnelTooBig)?;
    // SAFETY: helper call with plain arguments.
    let a = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    Ok(Action::refused(a, DropReason::TunnelTooBig))
}

/// What [`decap`] made of a frame.
pub(crate) enum Decap {
    /// Not VXLAN for this host's VTEP (or no tunnel): the frame goes on to
    /// NAT and the host.
    NotOurs,
    Done(Action),
    /// An inner ARP frame ([`arp_in`], called next by `from_uplink`).
    Arp {
        rx: Rx,
        vtep: VtepFlags,
    },
    /// An inner IPv4 packet `decide_rx` refused for `refused`: perhaps a
    /// service flow ([`service_rx`], called next by `from_uplink`).
    Service {
        rx: Rx,
        vtep: VtepFlags,
        refused: DropReason,
    },
}

/// What [`service_rx`] made of a packet.
pub(crate) enum ServiceIn {
    Done(Action),
    /// The reply of an ingress flow of this host: [`service_reply`] next.
    Reply,
}

/// VXLAN arriving on an uplink. `NotOurs`: not VXLAN for this host's VTEP
/// (or no tunnel), the frame goes on to NAT and the host. A frame that is UDP
/// to the VTEP address but too short to show its ports is counted as
/// malformed VXLAN.
///
/// A BPF subprogram of its own (not inlined into `from_uplink`), so that
/// its buffers and NAT's do not have to fit one 512-byte stack frame.
#[inline(never)]
pub(crate) fn decap(ctx: &TcContext) -> Result<Decap, DropReason> {
    let Some(t) = tunnel() else {
        return Ok(Decap::NotOurs);
    };
    let Ok(f) = frame::<{ ipv4::FRAME_MIN }>(ctx) else {
        return Ok(Decap::NotOurs);
    };
    // SAFETY: bounds checked by `frame`.
    if !vxlan::to_vtep(unsafe { &*f }, t.addr) {
        return Ok(Decap::NotOurs);
    }
    let m = |_| DropReason::VxlanMalformed;
    let f = frame::<PORTS_LEN>(ctx).map_err(m)?;
    // SAFETY: as above.
    let f = unsafe { &*f };
    if !vxlan::is_vxlan_port(f) {
        return Ok(Decap::NotOurs);
    }
    let src = load::ne32(f, vxlan::OUTER_IP + 12);
    // SAFETY: read-only lookup of plain data.
    let vtep = *unsafe { VTEPS.get(&src) }.ok_or(DropReason::VxlanUnknownVtep)?;
    let f = frame::<INNER>(ctx).map_err(m)?;
    // SAFETY: as above.
    let rx = vxlan::parse(unsafe { &*f }, ctx.len())?;
    let f = frame::<INNER_L3>(ctx).map_err(m)?;
    // SAFETY: as above.
    let inner_proto = load::be16(unsafe { &*f }, INNER + eth::PROTO);
    if inner_proto == eth::P_IPV4 {
        let f = frame::<{ INNER_L3 + 20 }>(ctx).map_err(m)?;
        // SAFETY: as above.
        let f = unsafe { &*f };
        let (isrc, idst) = vxlan::inner_ipv4(f, rx.inner_len)?;
        let s = InnerSrc {
            ip: isrc,
            mac: mac_at(f, INNER + eth::SRC),
        };
        let v = match vxlan::decide_rx(
            &rx,
            vtep,
            &s,
            lookup::endpoint(idst),
            lookup::endpoint(isrc),
        ) {
            Ok(v) => v,
            // Perhaps a flow of the routing mesh, which no endpoint sends.
            Err(refused) => return Ok(Decap::Service { rx, vtep, refused }),
        };
        if v.learn {
            learn(&rx, &s, v.dst);
        }
        return Ok(Decap::Done(deliver(ctx, v.dst, &s.mac, eth::P_IPV4)?));
    }
    if inner_proto == eth::P_ARP {
        return Ok(Decap::Arp { rx, vtep });
    }
    // A well-formed frame of a protocol containers do not get (IPv6 is off
    // in sandboxes: a kernel VTEP's router solicitations, MLD, ...).
    Err(DropReason::UnsupportedProtocol)
}

/// An inner IPv4 packet `decide_rx` refused (`refused`): a service flow
/// of the routing mesh (`vxlan::decide_rx_service` says which), or a drop
/// for that reason. Its own BPF subprogram, as [`decap`].
///
/// - An ingress flow for a local replica, from the node that received it:
///   the CT pair (`CT_TUNNEL`, the tuple mapped to itself, `vtep` = that
///   node) is created if absent, and the packet goes into the replica
///   unchanged, from its gateway's MAC.
/// - The reply of an ingress flow this host received: the outer headers
///   go, the reply direction's CT entry rewrites its source back to this
///   host's address and published port, and the FIB sends it to the client.
#[inline(never)]
pub(crate) fn service_rx(
    ctx: &TcContext,
    rx: &Rx,
    vtep: VtepFlags,
    refused: DropReason,
) -> Result<ServiceIn, DropReason> {
    let f = frame::<INNER_PORTS>(ctx).map_err(|_| refused)?;
    // SAFETY: bounds checked by `frame`.
    let key = vxlan::inner_flow(unsafe { &*f }).ok_or(refused)?;
    let port = PortKey::new(key.proto, key.daddr, key.dport);
    // SAFETY: read-only lookup of plain data.
    let id = unsafe { BACKEND_PORTS.get(&port) }.copied();
    let dst = lookup::endpoint(key.daddr);
    let v = vxlan::decide_rx_service(
        refused,
        rx,
        vtep,
        dst,
        lookup::endpoint(key.saddr),
        || id.is_some(),
        || ct::live(&key).map(|e| e.flags),
    )?;
    match v {
        ServiceRx::Ingress { dst } => {
            let id = id.unwrap_or(NO_BACKEND);
            let tcp_flags = if key.proto == IPPROTO_TCP {
                let f = frame::<INNER_TCP_FLAGS>(ctx).map_err(|_| DropReason::VxlanMalformed)?;
                // SAFETY: bounds checked by `frame`.
                let f = unsafe { &*f };
                f[INNER_TCP_FLAGS - 1]
            } else {
                0
            };
            let known = matches!(
                ct::get(&key, tcp_flags),
                Some(e) if e.flags & CT_TUNNEL != 0 && e.vtep == rx.src
            );
            if !known {
                ct::create_for(&key, &key, CT_TUNNEL, tcp_flags, id, rx.src)?;
            }
            lb::count_packet(id, ctx.len().saturating_sub(VXLAN_OVERHEAD));
            deliver(ctx, dst, &dst.host_mac, eth::P_IPV4).map(ServiceIn::Done)
        }
        ServiceRx::Reply => Ok(ServiceIn::Reply),
    }
}

/// [`service_rx`]'s reply path, once decided: decapsulated, un-DNATed by
/// its CT entry, routed to the client.
#[inline(never)]
pub(crate) fn service_reply(ctx: &TcContext) -> Result<Action, DropReason> {
    let f = frame::<{ eth::HLEN }>(ctx).map_err(|_| DropReason::VxlanMalformed)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    // The inner frame leaves as the outer one came: to this host's MAC,
    // from the underlay neighbour's (the FIB's route rewrites both; what
    // goes to the host stack instead is addressed to it).
    let (to_us, from) = (mac_at(f, eth::DST), mac_at(f, eth::SRC));
    ctx.adjust_room(
        -(VXLAN_OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .map_err(|_| DropReason::VxlanMalformed)?;
    let mut h = [0u8; eth::HLEN];
    let mut i = 0;
    while i < 6 {
        h[eth::DST + i] = to_us[i];
        h[eth::SRC + i] = from[i];
        i += 1;
    }
    h[eth::PROTO] = (eth::P_IPV4 >> 8) as u8;
    h[eth::PROTO + 1] = eth::P_IPV4 as u8;
    store(ctx, 0, &h, DropReason::VxlanMalformed)?;
    let p = ct::read(ctx)?.ok_or(DropReason::VxlanMalformed)?;
    // Checked by `decide_rx_service` a moment ago; gone meanwhile only if
    // it expired in between.
    let e = ct::get(&p.key, p.tcp_flags).ok_or(DropReason::VxlanNotLocal)?;
    let to = ct::entry_key(p.key.proto, &e);
    lb::count_packet(e.backend, ctx.len());
    let r = rewrite::tuple(ctx, &p, &to).and_then(|_| fib::deliver(ctx, to.saddr, to.daddr));
    match r {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Ok(Action::TRANSLATED_PASSED),
        Err(r) => {
            lb::count_drop_of(e.backend, r);
            Err(r)
        }
    }
}

/// An inner ARP frame: a reply for a local endpoint goes into it, a
/// request for one is answered in place, back to the VTEP that asked, out
/// of the device it came in on. Its own BPF subprogram, as [`decap`].
#[inline(never)]
pub(crate) fn arp_in(ctx: &TcContext, rx: &Rx, vtep: VtepFlags) -> Result<Action, DropReason> {
    // `decap` saw the tunnel enabled a moment ago.
    let addr = tunnel().ok_or(DropReason::TunnelDisabled)?.addr;
    if rx.inner_len < arp::FRAME_LEN as u32 {
        return Err(DropReason::VxlanMalformed);
    }
    let f = frame::<{ INNER + arp::FRAME_LEN }>(ctx).map_err(|_| DropReason::VxlanMalformed)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    let mut r = [0u8; INNER + arp::FRAME_LEN];
    let mut i = 0;
    while i < arp::FRAME_LEN {
        r[INNER + i] = f[INNER + i];
        i += 1;
    }
    // SAFETY: `r[INNER..]` is exactly one ARP frame.
    let inner = unsafe { &mut *(r.as_mut_ptr().add(INNER) as *mut [u8; arp::FRAME_LEN]) };
    let a = arp::parse(inner)?;
    let s = InnerSrc {
        ip: a.spa,
        mac: a.sha,
    };
    let v = vxlan::decide_rx(
        rx,
        vtep,
        &s,
        lookup::endpoint(a.tpa),
        lookup::endpoint(a.spa),
    )?;
    if v.learn {
        learn(rx, &s, v.dst);
    }
    if a.op == arp::OP_REPLY {
        return deliver(ctx, v.dst, &s.mac, eth::P_ARP);
    }
    arp::write_reply(inner, &v.dst.mac, a.tpa);
    let o = Outer {
        dmac: mac_at(f, eth::SRC),
        smac: mac_at(f, eth::DST),
        saddr: addr,
        daddr: rx.src,
        // To the VXLAN port (RFC 7348): a VTEP listens on 4789 only, and
        // the request's source port is entropy, not a return address.
        sport: rx.sport,
        dport: VXLAN_PORT,
        vni: rx.vni,
    };
    vxlan::write_outer(&mut r, &o, arp::FRAME_LEN as u32);
    if ctx.len() as usize > r.len() {
        // SAFETY: helper call on the program's own skb.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, r.len() as u32, 0) } != 0 {
            return Err(DropReason::VxlanMalformed);
        }
    }
    store(ctx, 0, &r, DropReason::VxlanMalformed)?;
    // SAFETY: helper call with plain arguments.
    let a = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    Ok(Action::arp_replied(a))
}

#[inline(always)]
fn mac_at<const N: usize>(f: &[u8; N], at: usize) -> [u8; 6] {
    [f[at], f[at + 1], f[at + 2], f[at + 3], f[at + 4], f[at + 5]]
}

/// Writes the endpoint learned from a static VTEP. A full map only means
/// the sender is not remembered yet: its frame is valid and still goes in,
/// and its next one tries again.
#[inline(always)]
fn learn(rx: &Rx, s: &InnerSrc, dst: &Endpoint) {
    let ep = vxlan::learned(rx, s, dst);
    let _ = ENDPOINTS.insert(&ep.ip, &ep, 0);
}

/// Takes the outer headers off (the first `VXLAN_OVERHEAD` bytes after the
/// outer Ethernet header go, and that header becomes the inner one) and
/// sends the inner frame into endpoint `ep`'s namespace.
#[inline(always)]
fn deliver(
    ctx: &TcContext,
    ep: &Endpoint,
    smac: &[u8; 6],
    proto: u16,
) -> Result<Action, DropReason> {
    let mut h = [0u8; eth::HLEN];
    let mut i = 0;
    while i < 6 {
        h[eth::DST + i] = ep.mac[i];
        h[eth::SRC + i] = smac[i];
        i += 1;
    }
    h[eth::PROTO] = (proto >> 8) as u8;
    h[eth::PROTO + 1] = proto as u8;
    // FIXED_GSO: a GSO packet (veth hands them on unsegmented) keeps the
    // inner segment size it was encapsulated with, instead of growing by
    // the overhead.
    ctx.adjust_room(
        -(VXLAN_OVERHEAD as i32),
        BPF_ADJ_ROOM_MAC,
        BPF_F_ADJ_ROOM_FIXED_GSO as u64,
    )
    .map_err(|_| DropReason::VxlanMalformed)?;
    store(ctx, 0, &h, DropReason::VxlanMalformed)?;
    // SAFETY: helper call with plain arguments.
    let a = unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32;
    Ok(Action::redirected(a))
}

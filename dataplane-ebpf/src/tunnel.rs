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
            self, InnerSrc, Outer, Rx, INNER, INNER_L3, PORTS_LEN, QUOTE, TOO_BIG_HLEN, TOO_BIG_LEN,
        },
    },
    DropReason, Endpoint, Ipv4Wire, Tunnel, VtepFlags, TUNNEL_ENABLED, VXLAN_OVERHEAD, VXLAN_PORT,
};

use crate::{
    ctx::{frame, ifindex, is_gso, Action},
    fib, lookup,
    maps::{ENDPOINTS, TUNNEL, VTEPS},
};

/// This host's end of the tunnel, if the daemon enabled it.
#[inline(always)]
fn tunnel() -> Option<&'static Tunnel> {
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
        h[INNER + eth::DST + i] = mac[i];
        h[INNER + eth::SRC + i] = me.mac[i];
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
    Ok(Action::Redirected(fib::send(&route)))
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
    Ok(Action::Refused(a, DropReason::TunnelTooBig))
}

/// VXLAN arriving on an uplink. `None`: not VXLAN for this host's VTEP (or
/// no tunnel), the frame goes on to NAT and the host. A frame that is UDP
/// to the VTEP address but too short to show its ports is counted as
/// malformed VXLAN.
///
/// A BPF subprogram of its own (not inlined into `from_uplink`), so that
/// its buffers and NAT's do not have to fit one 512-byte stack frame.
#[inline(never)]
pub(crate) fn decap(ctx: &TcContext) -> Result<Option<Action>, DropReason> {
    let Some(t) = tunnel() else {
        return Ok(None);
    };
    let Ok(f) = frame::<{ ipv4::FRAME_MIN }>(ctx) else {
        return Ok(None);
    };
    // SAFETY: bounds checked by `frame`.
    if !vxlan::to_vtep(unsafe { &*f }, t.addr) {
        return Ok(None);
    }
    let m = |_| DropReason::VxlanMalformed;
    let f = frame::<PORTS_LEN>(ctx).map_err(m)?;
    // SAFETY: as above.
    let f = unsafe { &*f };
    if !vxlan::is_vxlan_port(f) {
        return Ok(None);
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
        let v = vxlan::decide_rx(
            &rx,
            vtep,
            &s,
            lookup::endpoint(idst),
            lookup::endpoint(isrc),
        )?;
        if v.learn {
            learn(&rx, &s, v.dst);
        }
        return Ok(Some(deliver(ctx, v.dst, &s.mac, eth::P_IPV4)?));
    }
    if inner_proto == eth::P_ARP {
        return arp_in(ctx, &rx, vtep, t.addr).map(Some);
    }
    Err(DropReason::VxlanMalformed)
}

/// An inner ARP frame: a reply for a local endpoint goes into it, a
/// request for one is answered in place, back to the VTEP that asked, out
/// of the device it came in on. Its own BPF subprogram, as [`decap`].
#[inline(never)]
fn arp_in(ctx: &TcContext, rx: &Rx, vtep: VtepFlags, addr: Ipv4Wire) -> Result<Action, DropReason> {
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
        sport: VXLAN_PORT,
        dport: rx.sport,
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
    Ok(Action::ArpReplied(a))
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
    Ok(Action::Redirected(a))
}

//! VLAN networks on a parent interface, without the kernel's 8021q (see
//! `dataplane_common::vlan`): the container side switches by MAC and
//! pushes the network's 802.1Q tag on the way out of the parent; the trunk
//! side (the head of `from_uplink` on the parent) pops the tag of a VID
//! that is ours and hands the frame to its container, or to all of them.
//! Tags go through `bpf_skb_vlan_push`/`pop`, so the kernel keeps them in
//! the skb's metadata and the NIC inserts them where it can.

use aya_ebpf::{
    bindings::TC_ACT_SHOT,
    helpers::generated::{bpf_redirect, bpf_redirect_peer, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use dataplane_common::{
    packet::{arp, eth, load},
    vlan::{
        decide_egress, decide_trunk, is_group, sender_ok, EgressVerdict, Tag, TrunkVerdict,
        MAX_VLAN_MEMBERS, TAGGED_HLEN, VID_MASK,
    },
    DropReason, Endpoint, FdbKey, TrunkKey, VlanNet,
};

use crate::{
    ctx::{self, Action},
    maps::{FDB, TRUNKS, VLANS},
};

/// What `main::trunk` returns for a frame that is not of our VLANs (no TC
/// verdict is negative but `TC_ACT_UNSPEC`, which these programs never
/// return).
pub(crate) const NOT_OURS: i32 = i32::MIN;

/// The tag the kernel holds in the skb's metadata, if any: (ethertype,
/// TCI). On receive the outer tag is always there by the time TC runs;
/// under BPF_PROG_TEST_RUN it stays in the frame.
#[inline(always)]
fn tag_in_metadata(ctx: &TcContext) -> Option<(u16, u16)> {
    // SAFETY: reading fields of the context the kernel handed us.
    let skb = unsafe { &*ctx.skb.skb };
    if skb.vlan_present == 0 {
        return None;
    }
    // `vlan_proto` is the skb's `__be16`, `vlan_tci` host order.
    Some((u16::from_be(skb.vlan_proto as u16), skb.vlan_tci as u16))
}

/// Whether the frame carries a tag, in the skb's metadata or (under
/// BPF_PROG_TEST_RUN, or from a device that does not untag) in the frame,
/// as `skb->protocol` says: no packet read.
#[inline(always)]
pub(crate) fn maybe_tagged(ctx: &TcContext) -> bool {
    // SAFETY: reading fields of the context the kernel handed us.
    let skb = unsafe { &*ctx.skb.skb };
    skb.vlan_present != 0 || eth::is_vlan(u16::from_be(skb.protocol as u16))
}

#[inline(always)]
fn dst_of(hdr: &[u8; eth::HLEN]) -> [u8; 6] {
    [hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5]]
}

/// The local container of network `net` with MAC `mac`.
#[inline(always)]
fn local(net: u32, mac: &[u8; 6]) -> Option<u32> {
    if is_group(mac) {
        return None;
    }
    // SAFETY: read-only lookup of plain data.
    unsafe { FDB.get(&FdbKey::new(net, *mac)) }.copied()
}

/// A copy of the frame to every member of `net` but `except`.
#[inline(always)]
fn flood(ctx: &TcContext, net: &VlanNet, except: u32) {
    for i in 0..MAX_VLAN_MEMBERS {
        if i as u32 >= net.count {
            break;
        }
        let m = net.members[i];
        if m != 0 && m != except {
            // A member whose veth is going away misses this copy only.
            let _ = ctx.clone_redirect(m, 0);
        }
    }
}

/// A frame of a container on a VLAN network (`me`, whose Ethernet header
/// `hdr` passed the source MAC check).
#[inline(always)]
pub(crate) fn from_container(
    ctx: &TcContext,
    me: &Endpoint,
    hdr: &[u8; eth::HLEN],
) -> Result<Action, DropReason> {
    // Read before the parse below, which may pull the frame and so end
    // `hdr`'s life.
    let dst = dst_of(hdr);
    // A tag the container chose itself never leaves (no VLAN hopping).
    match ctx::ethertype(ctx, hdr)? {
        eth::P_IPV4 => {
            let ip = ctx::ipv4(ctx)?;
            if !sender_ok(ip.src, me.ip) {
                return Err(DropReason::SpoofedIp);
            }
        }
        eth::P_ARP => {
            let f = ctx::frame::<{ arp::FRAME_LEN }>(ctx)?;
            // SAFETY: bounds checked by `frame`.
            let a = arp::parse(unsafe { &*f })?;
            if !sender_ok(a.spa, me.ip) {
                return Err(DropReason::SpoofedIp);
            }
        }
        // Other ethertypes (IPv6 among them) are the LAN's business.
        _ => {}
    }
    let net = VLANS.get(me.network_id).ok_or(DropReason::VlanFailed)?;
    if net.parent == 0 {
        return Err(DropReason::VlanFailed);
    }
    match decide_egress(&dst, local(me.network_id, &dst)) {
        // SAFETY: helper call with plain arguments.
        EgressVerdict::Local(i) => Ok(Action::redirected(unsafe {
            bpf_redirect_peer(i, 0) as i32
        })),
        EgressVerdict::Out => out(ctx, net),
        EgressVerdict::Flood => {
            flood(ctx, net, me.ifindex);
            out(ctx, net)
        }
    }
}

/// Tags the frame with the network's VID and sends it out of the parent.
#[inline(always)]
fn out(ctx: &TcContext, net: &VlanNet) -> Result<Action, DropReason> {
    // SAFETY: helper calls with plain arguments.
    let pushed = unsafe {
        bpf_skb_vlan_push(
            ctx.skb.skb as *mut _,
            eth::P_8021Q.to_be(),
            (net.tci as u16) & VID_MASK,
        )
    };
    if pushed != 0 {
        return Err(DropReason::VlanFailed);
    }
    Ok(Action::redirected(unsafe {
        bpf_redirect(net.parent, 0) as i32
    }))
}

/// The head of `from_uplink`: a tagged frame of one of our VLANs, popped
/// and handed to its container(s). `None` for everything else (untagged,
/// 802.1ad, or a VID no network of ours claims), which goes on as before.
#[inline(always)]
pub(crate) fn from_trunk(ctx: &TcContext) -> Option<Result<Action, DropReason>> {
    let hdr = ctx::eth_header(ctx).ok()?;
    // Copied now: pulling the tag into view below ends `hdr`'s life.
    let dst = dst_of(hdr);
    let meta = tag_in_metadata(ctx);
    let (proto, tci, inner) = match Tag::of(hdr, ctx.len(), meta) {
        Tag::None => return None,
        Tag::Truncated => return Some(Err(DropReason::VlanTruncated)),
        Tag::Tagged { proto, tci } => match meta {
            // The frame now starts with what the tag carried.
            Some(_) => (proto, tci, eth::proto(hdr)),
            None => {
                let f = match ctx::frame::<TAGGED_HLEN>(ctx) {
                    Ok(f) => f,
                    Err(_) => return Some(Err(DropReason::VlanTruncated)),
                };
                // SAFETY: bounds checked by `frame`.
                let f = unsafe { &*f };
                (
                    proto,
                    load::be16(f, eth::HLEN),
                    load::be16(f, eth::HLEN + 2),
                )
            }
        },
    };
    // An S-tag (802.1ad) is a provider's, never one of our networks'.
    if proto != eth::P_8021Q {
        return None;
    }
    let key = TrunkKey {
        ifindex: ctx::ifindex(ctx),
        vid: u32::from(tci & VID_MASK),
    };
    // SAFETY: read-only lookup of plain data.
    let num = *unsafe { TRUNKS.get(&key) }?;
    Some(trunk_in(ctx, num, &dst, inner))
}

#[inline(always)]
fn trunk_in(ctx: &TcContext, num: u32, dst: &[u8; 6], inner: u16) -> Result<Action, DropReason> {
    let net = VLANS.get(num).ok_or(DropReason::VlanFailed)?;
    let verdict = decide_trunk(dst, inner, local(num, dst));
    if let TrunkVerdict::Drop(r) = verdict {
        return Err(r);
    }
    // SAFETY: helper call; the frame pointers are not used after it.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb as *mut _) } != 0 {
        return Err(DropReason::VlanFailed);
    }
    match verdict {
        // SAFETY: helper call with plain arguments.
        TrunkVerdict::Deliver(i) => Ok(Action::redirected(unsafe {
            bpf_redirect_peer(i, 0) as i32
        })),
        TrunkVerdict::Flood => {
            flood(ctx, net, 0);
            Ok(Action::redirected(TC_ACT_SHOT as i32))
        }
        TrunkVerdict::Drop(r) => Err(r),
    }
}

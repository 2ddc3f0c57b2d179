//! Kernel programs of the dataplane: the entry points, one per attach point.
//! The stages live in their own modules: `ctx` (frame views, the shared
//! parse prologue, outcomes and their counters), `lookup` (map lookups shared
//! by NAT and the socket hooks), `conntrack`, `nat` (translation decisions),
//! `rewrite` (frame changes and checksums), `fib` (the way out) and `sock`
//! (the socket hooks).
//!
//! `from_container` runs on TC ingress of the host side of every endpoint
//! veth, i.e. on every frame a container sends. It parses (Ethernet, ARP,
//! IPv4), decides with `dataplane_common::packet` (the same code the host
//! tests run) and acts: a frame for a container on the same network goes
//! straight into that container's namespace with `bpf_redirect_peer`, ARP for
//! the gateway or a peer is answered here, traffic for the gateway, the host or
//! beyond goes to the host stack (translated if it needs to be), and
//! everything else is dropped with a counted reason: VLAN-tagged frames, IPv4
//! whose length disagrees with its frame, spoofed senders, ... A frame for
//! a container on another host is encapsulated in VXLAN and sent out of the
//! underlay (`tunnel`); `from_uplink` takes VXLAN for this host apart again.
//! An ARP request for an unknown address of an overlay network is flooded
//! to the network's static VTEPs by `flood`, a program of its own that
//! `from_container` tail-calls (`FLOOD_PROGS`).
//! No Linux bridge and no kernel vxlan device is involved.
#![no_std]
#![no_main]

mod conntrack;
mod ctx;
mod fib;
mod flood;
#[allow(dead_code)] // `pick`: the socket hooks'
mod lb;
mod lookup;
mod maps;
mod nat;
mod rewrite;
mod sock;
mod tunnel;
mod vlan;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};
use ctx::{account, Action};
use dataplane_common::{
    iface_slot,
    packet::{arp, decide_arp_vip, decide_ipv4, eth, ipv4, ArpVerdict, Verdict},
    DropReason, LinkKey, EP_BACKEND, FLOOD_LOOP_MARK, NET_VLAN, PROG_FROM_CONTAINER,
    PROG_FROM_UPLINK, PROG_VLAN_TRUNK,
};
use maps::{IFACES, LINKS};

#[classifier]
#[inline(always)]
pub fn from_container(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let r = try_from_container(&ctx);
    account(PROG_FROM_CONTAINER, len, r)
}

/// TC ingress of the host's own interfaces (uplinks): published ports and
/// the replies of masqueraded flows go straight into containers; everything
/// else goes to the host untouched.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Tagged frames of our VLAN networks first, counted apart. Untagged
    // frames (nearly all of them) skip the call: two context reads decide.
    if vlan::maybe_tagged(&ctx) {
        let v = trunk(&ctx, len);
        if v != vlan::NOT_OURS {
            return v;
        }
    }
    let r = try_from_uplink(&ctx);
    account(PROG_FROM_UPLINK, len, r)
}

/// Reached from `from_container` by a tail call only: a container's ARP
/// request flooded to its overlay's static VTEPs (`flood`). Counted as
/// `from_container`.
#[classifier]
pub fn flood(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let r = flood::run(&ctx);
    account(PROG_FROM_CONTAINER, len, r)
}

/// The floor for `cargo xtask bench`: an empty program on the same hook.
#[classifier]
pub fn noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::forward(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<Action, DropReason> {
    // Whatever the prologue refuses is not ours to judge (a tagged frame
    // belongs to a VLAN of the host's): it goes on untranslated.
    let Ok(hdr) = ctx::eth_header(ctx) else {
        return Ok(Action::PASSED);
    };
    if ctx::ethertype(ctx, hdr) != Ok(eth::P_IPV4) {
        return Ok(Action::PASSED);
    }
    // VXLAN for this host's VTEP first: it is never translated. The stages
    // below are BPF subprograms called one after the other, never one
    // inside another (see `nat::Uplink`).
    match tunnel::decap(ctx)? {
        tunnel::Decap::NotOurs => {}
        tunnel::Decap::Done(a) => return Ok(a),
        tunnel::Decap::Arp { rx, vtep } => return tunnel::arp_in(ctx, &rx, vtep),
        tunnel::Decap::Backend { ip, smac } => return tunnel::backend_rx(ctx, ip, &smac),
        tunnel::Decap::Service { rx, vtep, refused } => {
            return match tunnel::service_rx(ctx, &rx, vtep, refused)? {
                tunnel::ServiceIn::Done(a) => Ok(a),
                tunnel::ServiceIn::Reply => tunnel::service_reply(ctx),
            };
        }
    }
    let mut next = uplink_nat(ctx)?;
    if let nat::Uplink::Ingress(p) = next {
        next = nat::ingress(ctx, &p)?;
    }
    if let nat::Uplink::Service { p, to, id } = next {
        next = nat::service_finish(ctx, &p, &to, id)?;
    }
    match next {
        nat::Uplink::Done(a) => Ok(a),
        nat::Uplink::Remote(r) => nat::to_remote(ctx, &r),
        // Neither `ingress` nor `service_finish` answers these.
        nat::Uplink::Ingress(_) | nat::Uplink::Service { .. } => Ok(Action::PASSED),
    }
}

/// The VLAN half of `from_uplink`, a BPF subprogram of its own (its stack
/// frame is never live with the others'): the verdict of a frame of one of
/// our VLANs, counted as `vlan_trunk`, or [`vlan::NOT_OURS`].
#[inline(never)]
fn trunk(ctx: &TcContext, len: u32) -> i32 {
    match vlan::from_trunk(ctx) {
        Some(r) => account(PROG_VLAN_TRUNK, len, r),
        None => vlan::NOT_OURS,
    }
}

/// The NAT half of `from_uplink`, a BPF subprogram of its own: the
/// verifier sums the stack frames along a call chain (512 bytes at most),
/// and this one and the VXLAN decapsulation's are never live together.
#[inline(never)]
fn uplink_nat(ctx: &TcContext) -> Result<nat::Uplink, DropReason> {
    let Ok(ip) = ctx::ipv4(ctx) else {
        return Ok(nat::Uplink::Done(Action::PASSED));
    };
    nat::from_uplink(ctx, ip.dst)
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<Action, DropReason> {
    // A flooded copy sent back in by `flood` itself (see there).
    if flood::mark(ctx) == FLOOD_LOOP_MARK {
        return Err(flood::enter(ctx, DropReason::TunnelNoRoute));
    }
    let ifindex = ctx::ifindex(ctx);
    // Map values are borrowed in place, not copied: the pointers stay valid
    // for this run of the program. SAFETY: plain data; userspace replaces
    // entries whole.
    let slot = iface_slot(ifindex).ok_or(DropReason::UnknownInterface)?;
    let me = IFACES.get(slot).ok_or(DropReason::UnknownInterface)?;
    // An empty slot (ifindex 0), or a stale one, is no endpoint.
    if me.ifindex != ifindex {
        return Err(DropReason::UnknownInterface);
    }

    let hdr = ctx::eth_header(ctx)?;
    if !eth::src_is(hdr, &me.mac) {
        return Err(DropReason::SpoofedMac);
    }
    if me.net.flags & NET_VLAN != 0 {
        return vlan::from_container(ctx, me, hdr);
    }

    match ctx::ethertype(ctx, hdr)? {
        eth::P_IPV4 => {
            let ctx::Ipv4 { f, src, dst } = ctx::ipv4(ctx)?;
            let peer = lookup::peer(slot, dst);
            // SAFETY: read-only lookup of plain data.
            let linked = || unsafe { LINKS.get(&LinkKey { src, dst }) }.is_some();
            let (f, vtep, mac, vni, how) = match decide_ipv4(me, &me.net, src, dst, peer, linked) {
                Verdict::Redirect { ifindex, mac } => {
                    // The peer's MAC (the verdict's `mac`) read from its
                    // map value in place: the verdict's copy would go
                    // through the stack first, on every packet.
                    let mac = peer.map_or(&mac, |p| &p.mac);
                    // Only a service replica's frames may be the reply of
                    // a VIP flow: the others pay no conntrack lookup.
                    if me.flags & EP_BACKEND != 0 {
                        return nat::backend_to_peer(ctx, ifindex, mac);
                    }
                    // SAFETY: the first HLEN bytes of the frame are the
                    // Ethernet header.
                    let hdr = unsafe { &*(f.as_ptr() as *const [u8; eth::HLEN]) };
                    return Ok(Action::redirected(rewrite::to_peer(
                        ctx, hdr, ifindex, mac,
                    )?));
                }
                Verdict::Encap { vtep, mac, vni } => (f, vtep, mac, vni, nat::TUNNEL_AS_IS),
                Verdict::Pass => match nat::from_container(ctx, me, dst)? {
                    nat::Egress::Done(a) => return Ok(a),
                    // A replica's reply through the tunnel, as the
                    // container sent it (to its gateway's MAC), or a VIP
                    // flow's packet for a replica on another host. The
                    // frame is read again: conntrack may have pulled it.
                    nat::Egress::Tunnel {
                        vtep,
                        mac,
                        vni,
                        how,
                    } => {
                        let f = ctx::frame::<{ ipv4::FRAME_MIN }>(ctx)?;
                        // SAFETY: bounds checked by `frame`.
                        (unsafe { &*f }, vtep, mac, vni, how)
                    }
                },
                Verdict::Drop(r) => return Err(r),
            };
            // One encapsulation for all, so that its buffers are on the
            // stack once.
            let a = tunnel::encap(ctx, me, f, vtep, &mac, vni)?;
            Ok(a.counted_as(how))
        }
        eth::P_ARP => {
            let f = ctx::frame::<{ arp::FRAME_LEN }>(ctx)?;
            // SAFETY: bounds checked by `frame`.
            let f = unsafe { &*f };
            let a = arp::parse(f)?;
            let target = lookup::endpoint(a.tpa);
            match decide_arp_vip(me, &me.net, &a, target, lb::is_vip) {
                ArpVerdict::Reply { mac, ip } => Ok(Action::arp_replied(rewrite::arp_reply(
                    ctx, f, &mac, ip, ifindex,
                )?)),
                ArpVerdict::Pass => Ok(Action::PASSED),
                ArpVerdict::Flood => Err(flood::enter(ctx, DropReason::ArpUnknownTarget)),
                ArpVerdict::Drop(r) => Err(r),
            }
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

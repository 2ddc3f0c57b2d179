//! Flooding a container's ARP request to its overlay network's static
//! VTEPs (`--opt vtep=`, hosts with a kernel vxlan device and no daemon of
//! ours): a container behind one of them is unknown to `ENDPOINTS` until it
//! sends something, so a request for its address cannot be answered here.
//! The request goes, in VXLAN of the network's VNI from this host's VTEP,
//! to every VTEP of the network's `FLOOD` entry; the answer comes back
//! through `tunnel::decap`, which delivers it and learns its sender.
//!
//! A program of its own ([`run`], the `flood` classifier), reached from
//! `from_container` by a tail call through `FLOOD_PROGS`: it starts with an
//! empty 512-byte stack, which `from_container` has no room left in.
//!
//! The frame is encapsulated once: `bpf_skb_change_head` puts the outer
//! Ethernet, IPv4, UDP and VXLAN headers in front of the container's frame,
//! whose own Ethernet header becomes the inner one (`bpf_skb_adjust_room`,
//! which `tunnel::encap` uses, refuses an skb that is not IP). Then, for
//! each VTEP, the outer destination is set (the IPv4 checksum updated from
//! the first one's, RFC 1624) with the next hop's MACs, and the frame is
//! sent with `bpf_clone_redirect`, the last routable VTEP with
//! `bpf_redirect` (no clone). A VTEP without a route is skipped.
//!
//! A VTEP whose neighbour the FIB does not know yet cannot be sent to
//! from here: `bpf_redirect_neigh` (which resolves it) takes only an skb
//! whose protocol is IP, and this one is still the container's ARP. Its
//! copy is sent back, marked [`FLOOD_LOOP_MARK`], into the ingress of the
//! container's host-side veth: the kernel then takes it as the IPv4 frame
//! it now is, `from_container` hands it back here by its mark, and
//! [`looped`] sends it with `bpf_redirect_neigh` (such a copy is counted
//! twice in `packets`, once as the ARP and once as the copy).
//!
//! Counted in `from_container`'s counters: a flood that sent at least one
//! copy is `redirected`; one with no VTEP to go to is
//! [`DropReason::ArpUnknownTarget`] (no `FLOOD` entry) or
//! [`DropReason::TunnelNoRoute`] (no VTEP routable).

use aya_ebpf::{
    bindings::BPF_F_INGRESS,
    helpers::generated::{
        bpf_clone_redirect, bpf_get_hash_recalc, bpf_redirect, bpf_skb_change_head,
    },
    programs::TcContext,
};
use dataplane_common::{
    iface_slot,
    packet::{
        arp, eth, load,
        vxlan::{self, Outer, DADDR_FIX_LEN, INNER, OUTER_CSUM},
    },
    DropReason, FLOOD_LOOP_MARK, FLOOD_PROG, MAX_FLOOD, VXLAN_PORT,
};

use crate::{
    ctx::{frame, ifindex, Action},
    fib,
    maps::{FLOOD, FLOOD_PROGS, IFACES},
    tunnel::tunnel,
};

/// The mark of the frame (see [`FLOOD_LOOP_MARK`]).
#[inline(always)]
pub(crate) fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).mark }
}

/// Tail-calls the `flood` program. Returns only if that failed (the
/// daemon did not fill `FLOOD_PROGS`), with `otherwise`: the reason to
/// drop the frame for.
#[inline(always)]
pub(crate) fn enter(ctx: &TcContext, otherwise: DropReason) -> DropReason {
    // SAFETY: the program array holds only `flood`, a TC program that
    // takes the same context and does its own accounting.
    unsafe { FLOOD_PROGS.tail_call(ctx, FLOOD_PROG) };
    otherwise
}

#[inline(always)]
fn store<const N: usize>(ctx: &TcContext, offset: usize, v: &[u8; N]) -> Result<(), DropReason> {
    ctx.store(offset, v, 0)
        .map_err(|_| DropReason::TunnelNoRoute)
}

/// The body of the `flood` program, on a frame of a container veth.
#[inline(always)]
pub(crate) fn run(ctx: &TcContext) -> Result<Action, DropReason> {
    if mark(ctx) == FLOOD_LOOP_MARK {
        return looped(ctx);
    }
    // Everything `from_container` checked is checked again: this program
    // trusts nothing but the frame and the maps.
    let ifindex = ifindex(ctx);
    let slot = iface_slot(ifindex).ok_or(DropReason::UnknownInterface)?;
    let me = IFACES.get(slot).ok_or(DropReason::UnknownInterface)?;
    if me.ifindex != ifindex {
        return Err(DropReason::UnknownInterface);
    }
    let f = frame::<{ arp::FRAME_LEN }>(ctx)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    if load::be16(f, eth::PROTO) != eth::P_ARP {
        return Err(DropReason::BadArp);
    }
    let a = arp::parse(f)?;
    if a.sha != me.mac {
        return Err(DropReason::SpoofedMac);
    }
    if a.spa != me.ip && a.spa != 0 {
        return Err(DropReason::SpoofedIp);
    }
    if !vxlan::floods(&me.net, &a) {
        return Err(DropReason::ArpUnknownTarget);
    }
    // SAFETY: read-only lookup of plain data.
    let fl = unsafe { FLOOD.get(me.network_id) }.ok_or(DropReason::ArpUnknownTarget)?;
    let n = if (fl.len as usize) < MAX_FLOOD {
        fl.len as usize
    } else {
        MAX_FLOOD
    };
    if n == 0 {
        return Err(DropReason::ArpUnknownTarget);
    }
    let t = tunnel().ok_or(DropReason::TunnelDisabled)?;
    // The last VTEP with a route gets the frame itself; the others clones.
    let mut last = MAX_FLOOD;
    let mut i = 0;
    while i < MAX_FLOOD && i < n {
        if fib::underlay(ctx, t.addr, fl.vteps[i], t.ifindex).found() {
            last = i;
        }
        i += 1;
    }
    if last >= n || last >= MAX_FLOOD {
        return Err(DropReason::TunnelNoRoute);
    }
    let first = fl.vteps[0];
    // SAFETY: helper call on the program's own skb.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let o = Outer {
        dmac: [0; 6],
        smac: [0; 6],
        saddr: t.addr,
        daddr: first,
        sport: vxlan::src_port(hash),
        dport: VXLAN_PORT,
        vni: me.net.vni,
    };
    let mut h = [0u8; INNER];
    vxlan::write_outer(&mut h, &o, ctx.len());
    let csum = load::be16(&h, OUTER_CSUM);
    // SAFETY: helper call on the program's own skb.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, INNER as u32, 0) } != 0 {
        return Err(DropReason::TunnelNoRoute);
    }
    store(ctx, 0, &h)?;
    let mut i = 0;
    while i < MAX_FLOOD && i <= last {
        let vtep = fl.vteps[i];
        let route = fib::underlay(ctx, t.addr, vtep, t.ifindex);
        i += 1;
        if !route.found() {
            continue;
        }
        let fix: [u8; DADDR_FIX_LEN] = vxlan::readdress(csum, t.addr, first, vtep);
        store(ctx, OUTER_CSUM, &fix)?;
        let (dmac, smac) = route.macs();
        let mut macs = [0u8; 12];
        let mut j = 0;
        while j < 6 {
            macs[j] = dmac[j];
            macs[6 + j] = smac[j];
            j += 1;
        }
        store(ctx, 0, &macs)?;
        let (dev, flags) = if route.resolved() {
            (route.ifindex(), 0)
        } else {
            ctx.set_mark(FLOOD_LOOP_MARK);
            (ifindex, BPF_F_INGRESS as u64)
        };
        if i > last {
            // SAFETY: helper call with plain arguments.
            let a = unsafe { bpf_redirect(dev, flags) } as i32;
            return Ok(Action::redirected(a));
        }
        // SAFETY: helper call on the program's own skb.
        unsafe { bpf_clone_redirect(ctx.skb.skb, dev, flags) };
        ctx.set_mark(0);
    }
    // Only if the FIB lost the last VTEP's route a moment ago: the clones
    // went, the frame itself goes no further.
    Err(DropReason::TunnelNoRoute)
}

/// A flooded copy back from the ingress of the veth (see the module's
/// documentation): out of the underlay with `bpf_redirect_neigh`, or
/// straight to the neighbour if the FIB knows it by now.
#[inline(always)]
fn looped(ctx: &TcContext) -> Result<Action, DropReason> {
    ctx.set_mark(0);
    let t = tunnel().ok_or(DropReason::TunnelDisabled)?;
    let f = frame::<{ INNER }>(ctx)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    // Only this program marks frames, only copies it wrote: a container's
    // own frames lose any mark on their way out of its namespace.
    if load::ne32(f, vxlan::OUTER_IP + 12) != t.addr {
        return Err(DropReason::SpoofedIp);
    }
    let vtep = load::ne32(f, vxlan::OUTER_IP + 16);
    let route = fib::underlay(ctx, t.addr, vtep, t.ifindex);
    if !route.found() {
        return Err(DropReason::TunnelNoRoute);
    }
    if route.resolved() {
        let (dmac, smac) = route.macs();
        let mut macs = [0u8; 12];
        let mut j = 0;
        while j < 6 {
            macs[j] = dmac[j];
            macs[6 + j] = smac[j];
            j += 1;
        }
        store(ctx, 0, &macs)?;
    }
    Ok(Action::redirected(fib::send(&route)))
}

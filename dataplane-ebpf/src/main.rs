//! Kernel programs of the dataplane.
//!
//! `from_container` runs on TC ingress of the host side of every endpoint
//! veth, i.e. on every frame a container sends. It parses (Ethernet, ARP,
//! IPv4), decides with `dataplane_common::packet` (the same code the host
//! tests run) and acts: a frame for a container on the same network goes
//! straight into that container's namespace with `bpf_redirect_peer`, ARP for
//! the gateway or a peer is answered here, traffic for the gateway, the host or
//! beyond goes to the host stack, and everything else is dropped with a
//! counted reason. No Linux bridge is involved.
#![no_std]
#![no_main]

mod maps;
mod nat;
mod sock;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use dataplane_common::{
    iface_slot,
    packet::{arp, decide_arp, decide_ipv4, eth, ipv4, ArpVerdict, Verdict},
    Counters, DropReason, LinkKey, PROG_FROM_CONTAINER, PROG_FROM_UPLINK,
};
use maps::{ENDPOINTS, IFACES, LINKS, STATS};

/// Outcome of a frame, for the counters.
pub(crate) enum Action {
    Redirected(i32),
    Passed,
    ArpReplied(i32),
    /// A packet of a known translated flow, rewritten and redirected.
    Translated(i32),
    /// The first packet of a new translated flow, rewritten and redirected.
    New(i32),
    /// Rewritten, then left to the host stack (no direct way out).
    TranslatedPassed,
}

impl Action {
    /// The TC verdict.
    #[inline(always)]
    pub(crate) fn verdict(&self) -> i32 {
        match self {
            Action::Redirected(a)
            | Action::ArpReplied(a)
            | Action::Translated(a)
            | Action::New(a) => *a,
            Action::Passed | Action::TranslatedPassed => TC_ACT_OK as i32,
        }
    }
}

/// Bounds-checked view of the first `N` bytes of the frame, pulling
/// non-linear data into the linear area once if needed.
#[inline(always)]
pub(crate) fn frame<const N: usize>(ctx: &TcContext) -> Result<*mut [u8; N], DropReason> {
    if ctx.data() + N > ctx.data_end() {
        if (ctx.len() as usize) < N || ctx.pull_data(N as u32).is_err() {
            return Err(DropReason::Malformed);
        }
        if ctx.data() + N > ctx.data_end() {
            return Err(DropReason::Malformed);
        }
    }
    Ok(ctx.data() as *mut [u8; N])
}

/// Writes `v` into the frame at `offset` with `bpf_skb_store_bytes`.
///
/// Every write to the packet goes through this helper, never through a
/// packet pointer: one store through a pointer anywhere in a program makes
/// the verifier prepend an unclone (`bpf_skb_pull_data(skb, 0)` when
/// `skb->cloned`) to the whole program, and every TCP data segment is a
/// clone (TCP keeps the original for retransmission). That prologue copied
/// the head of every segment on the container-to-container path; the helper
/// unclones only the packets it writes to.
#[inline(always)]
pub(crate) fn store<T>(ctx: &TcContext, offset: usize, v: &T) -> Result<(), DropReason> {
    // Fails only if the frame is shorter than `offset + size_of::<T>()`
    // (callers checked it is not) or if uncloning the head runs out of memory.
    ctx.store(offset, v, 0).map_err(|_| DropReason::Malformed)
}

#[inline(always)]
fn counters(prog: u32) -> Option<&'static mut Counters> {
    // SAFETY: per-CPU slot; the program is not re-entered on one CPU.
    STATS.get_ptr_mut(prog).map(|p| unsafe { &mut *p })
}

/// Counts the outcome of one run of program `prog` and returns its verdict.
#[inline(always)]
fn account(ctx: &TcContext, prog: u32, result: Result<Action, DropReason>) -> i32 {
    let Some(c) = counters(prog) else {
        // STATS is a fixed-size array: this cannot miss. Keep the verdict.
        return match result {
            Ok(a) => a.verdict(),
            Err(_) => TC_ACT_SHOT as i32,
        };
    };
    c.packets += 1;
    c.bytes += ctx.len() as u64;
    match result {
        Ok(a) => {
            match a {
                Action::Redirected(_) => c.redirected += 1,
                Action::ArpReplied(_) => c.arp_replies += 1,
                Action::Passed => c.passed += 1,
                Action::Translated(_) => {
                    c.translated += 1;
                    c.redirected += 1;
                }
                Action::New(_) => {
                    c.translated += 1;
                    c.ct_created += 1;
                    c.redirected += 1;
                }
                Action::TranslatedPassed => {
                    c.translated += 1;
                    c.passed += 1;
                }
            }
            a.verdict()
        }
        Err(reason) => {
            if reason as u32 == DropReason::NatExhausted as u32 {
                c.alloc_failed += 1;
            }
            let i = reason as usize;
            if i < c.drops.len() {
                c.drops[i] += 1;
            }
            TC_ACT_SHOT as i32
        }
    }
}

#[classifier]
pub fn from_container(ctx: TcContext) -> i32 {
    let r = try_from_container(&ctx);
    account(&ctx, PROG_FROM_CONTAINER, r)
}

/// TC ingress of the host's own interfaces (uplinks): published ports and
/// the replies of masqueraded flows go straight into containers; everything
/// else goes to the host untouched.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    let r = try_from_uplink(&ctx);
    account(&ctx, PROG_FROM_UPLINK, r)
}

#[inline(always)]
fn try_from_uplink(ctx: &TcContext) -> Result<Action, DropReason> {
    let Ok(hdr) = frame::<{ eth::HLEN }>(ctx) else {
        return Ok(Action::Passed);
    };
    // SAFETY: `frame` checked that HLEN bytes are in the linear area.
    if eth::proto(unsafe { &*hdr }) != eth::P_IPV4 {
        return Ok(Action::Passed);
    }
    let Ok(f) = frame::<{ ipv4::FRAME_MIN }>(ctx) else {
        return Ok(Action::Passed);
    };
    // SAFETY: bounds checked by `frame`.
    let Ok((_, dst)) = ipv4::addrs(unsafe { &*f }) else {
        return Ok(Action::Passed);
    };
    nat::from_uplink(ctx, dst)
}

#[inline(always)]
fn try_from_container(ctx: &TcContext) -> Result<Action, DropReason> {
    // SAFETY: reading a field of the context the kernel handed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // Map values are borrowed in place, not copied: the pointers stay valid
    // for this run of the program. SAFETY: plain data; userspace replaces
    // entries whole.
    let slot = iface_slot(ifindex).ok_or(DropReason::UnknownInterface)?;
    let me = IFACES.get(slot).ok_or(DropReason::UnknownInterface)?;
    // An empty slot (ifindex 0), or a stale one, is no endpoint.
    if me.ifindex != ifindex {
        return Err(DropReason::UnknownInterface);
    }

    let hdr = frame::<{ eth::HLEN }>(ctx)?;
    // SAFETY: `frame` checked that HLEN bytes are in the linear area.
    let hdr = unsafe { &*hdr };
    if !eth::src_is(hdr, &me.mac) {
        return Err(DropReason::SpoofedMac);
    }

    match eth::proto(hdr) {
        eth::P_IPV4 => {
            let f = frame::<{ ipv4::FRAME_MIN }>(ctx)?;
            // SAFETY: bounds checked by `frame`.
            let f = unsafe { &*f };
            let (src, dst) = ipv4::addrs(f)?;
            let peer = unsafe { ENDPOINTS.get(&dst) };
            let linked = || unsafe { LINKS.get(&LinkKey { src, dst }) }.is_some();
            match decide_ipv4(me, &me.net, src, dst, peer, linked) {
                Verdict::Redirect { ifindex, mac } => {
                    // SAFETY: the first HLEN bytes of `f` are the Ethernet header.
                    let hdr = unsafe { &*(f.as_ptr() as *const [u8; eth::HLEN]) };
                    if !eth::dst_is(hdr, &mac) {
                        store(ctx, eth::DST, &mac)?;
                    }
                    // SAFETY: helper call with plain arguments.
                    let a = unsafe { bpf_redirect_peer(ifindex, 0) };
                    Ok(Action::Redirected(a as i32))
                }
                Verdict::Pass => nat::from_container(ctx, me, dst),
                Verdict::Drop(r) => Err(r),
            }
        }
        eth::P_ARP => {
            let f = frame::<{ arp::FRAME_LEN }>(ctx)?;
            // SAFETY: bounds checked by `frame`.
            let f = unsafe { &*f };
            let a = arp::parse(f)?;
            let target = unsafe { ENDPOINTS.get(&a.tpa) };
            match decide_arp(me, &me.net, &a, target) {
                ArpVerdict::Reply { mac, ip } => {
                    // Built on the stack and stored whole (see `store`).
                    let mut reply = *f;
                    arp::write_reply(&mut reply, &mac, ip);
                    store(ctx, 0, &reply)?;
                    // Back out of the same veth, to the asking container.
                    // SAFETY: helper call with plain arguments.
                    let r = unsafe { bpf_redirect(ifindex, 0) };
                    Ok(Action::ArpReplied(r as i32))
                }
                ArpVerdict::Pass => Ok(Action::Passed),
                ArpVerdict::Drop(r) => Err(r),
            }
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// The floor for `cargo xtask bench`: an empty program on the same hook.
#[classifier]
pub fn noop(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

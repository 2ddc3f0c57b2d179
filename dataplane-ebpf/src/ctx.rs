//! What every TC program starts and ends with: bounds-checked views of the
//! frame, the parse prologue both programs share (Ethernet, then IPv4), the
//! outcome of a run ([`Action`]) and its accounting in `STATS`.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use dataplane_common::{
    drop_slot,
    packet::{eth, ipv4},
    Counters, DropReason, Ipv4Wire, DROP_REASON_SLOTS,
};

use crate::maps::STATS;

/// What happened to a frame, for the counters ([`Action`]).
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Redirected,
    Passed,
    ArpReplied,
    /// A packet of a known translated flow, rewritten and redirected.
    Translated,
    /// The first packet of a new translated flow, rewritten and redirected.
    New,
    /// Rewritten, then left to the host stack (no direct way out).
    TranslatedPassed,
    /// Refused for the reason given, which is counted as a drop, but
    /// answered (e.g. an ICMP error in its place): the verdict is the
    /// answer's.
    Refused,
}

/// Outcome of a frame, for the counters, and its TC verdict.
///
/// A struct whose every field is always written, not an enum with
/// payload-less variants: actions cross BPF subprogram boundaries in
/// memory (`main::try_from_uplink`'s stages), and LLVM fills the unused
/// payload of such a variant with whatever a register holds, which the
/// verifier refuses when it is a packet pointer ("invalid size of
/// register spill").
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Action {
    pub(crate) outcome: Outcome,
    verdict: i32,
    reason: u32,
}

impl Action {
    #[inline(always)]
    const fn of(outcome: Outcome, verdict: i32) -> Self {
        Action {
            outcome,
            verdict,
            reason: 0,
        }
    }
    pub(crate) const PASSED: Action = Action::of(Outcome::Passed, TC_ACT_OK as i32);
    pub(crate) const TRANSLATED_PASSED: Action =
        Action::of(Outcome::TranslatedPassed, TC_ACT_OK as i32);

    #[inline(always)]
    pub(crate) const fn redirected(verdict: i32) -> Self {
        Action::of(Outcome::Redirected, verdict)
    }
    #[inline(always)]
    pub(crate) const fn arp_replied(verdict: i32) -> Self {
        Action::of(Outcome::ArpReplied, verdict)
    }
    #[inline(always)]
    pub(crate) const fn translated(verdict: i32) -> Self {
        Action::of(Outcome::Translated, verdict)
    }
    #[inline(always)]
    pub(crate) const fn new_flow(verdict: i32) -> Self {
        Action::of(Outcome::New, verdict)
    }
    #[inline(always)]
    pub(crate) const fn refused(verdict: i32, reason: DropReason) -> Self {
        Action {
            outcome: Outcome::Refused,
            verdict,
            reason: reason as u32,
        }
    }

    /// The TC verdict.
    #[inline(always)]
    pub(crate) fn verdict(&self) -> i32 {
        self.verdict
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

/// The ifindex of the device the frame arrived on.
#[inline(always)]
pub(crate) fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Whether the kernel holds a VLAN tag of this frame in the skb's metadata
/// (`skb->vlan_present`): on receive it moves the outer tag there before TC
/// runs, so the frame itself then looks untagged.
#[inline(always)]
fn vlan_tagged(ctx: &TcContext) -> bool {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).vlan_present != 0 }
}

/// Whether the skb is a GSO packet (segmented later, on its way out).
#[inline(always)]
pub(crate) fn is_gso(ctx: &TcContext) -> bool {
    // SAFETY: as above.
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// The Ethernet header (first step of the prologue).
#[inline(always)]
pub(crate) fn eth_header(ctx: &TcContext) -> Result<&'static [u8; eth::HLEN], DropReason> {
    let hdr = frame::<{ eth::HLEN }>(ctx)?;
    // SAFETY: `frame` checked that HLEN bytes are in the linear area; the
    // pointer stays valid until the frame is changed.
    Ok(unsafe { &*hdr })
}

/// The ethertype of `hdr`; a VLAN tag in the frame or in metadata is
/// refused ([`DropReason::VlanTagged`]).
#[inline(always)]
pub(crate) fn ethertype(ctx: &TcContext, hdr: &[u8; eth::HLEN]) -> Result<u16, DropReason> {
    eth::untagged_proto(hdr, vlan_tagged(ctx))
}

/// An IPv4 frame whose header was checked: the first bytes up to a
/// minimal IPv4 header, and its addresses.
pub(crate) struct Ipv4 {
    pub(crate) f: &'static [u8; ipv4::FRAME_MIN],
    pub(crate) src: Ipv4Wire,
    pub(crate) dst: Ipv4Wire,
}

/// The IPv4 header of a frame whose ethertype says IPv4, checked against
/// the frame's length (second step of the prologue).
#[inline(always)]
pub(crate) fn ipv4(ctx: &TcContext) -> Result<Ipv4, DropReason> {
    let f = frame::<{ ipv4::FRAME_MIN }>(ctx)?;
    // SAFETY: bounds checked by `frame`. Read only: writes go through the
    // kernel's helpers (see `rewrite`).
    let f = unsafe { &*f };
    let (src, dst) = ipv4::checked_addrs(f, ctx.len(), || is_gso(ctx))?;
    Ok(Ipv4 { f, src, dst })
}

#[inline(always)]
pub(crate) fn counters(prog: u32) -> Option<&'static mut Counters> {
    // SAFETY: per-CPU slot; the program is not re-entered on one CPU.
    STATS.get_ptr_mut(prog).map(|p| unsafe { &mut *p })
}

/// Counts the outcome of one run of program `prog` on a frame that was
/// `len` bytes long when the program started (encapsulation and
/// decapsulation change the length), and returns its verdict.
#[inline(always)]
pub(crate) fn account(prog: u32, len: u32, result: Result<Action, DropReason>) -> i32 {
    let Some(c) = counters(prog) else {
        // STATS is a fixed-size array: this cannot miss. Keep the verdict.
        return match result {
            Ok(a) => a.verdict(),
            Err(_) => TC_ACT_SHOT as i32,
        };
    };
    c.packets += 1;
    c.bytes += len as u64;
    match result {
        Ok(a) => {
            match a.outcome {
                Outcome::Redirected => c.redirected += 1,
                Outcome::ArpReplied => c.arp_replies += 1,
                Outcome::Passed => c.passed += 1,
                Outcome::Translated => {
                    c.translated += 1;
                    c.redirected += 1;
                }
                Outcome::New => {
                    c.translated += 1;
                    c.ct_created += 1;
                    c.redirected += 1;
                }
                Outcome::TranslatedPassed => {
                    c.translated += 1;
                    c.passed += 1;
                }
                Outcome::Refused => {
                    c.drops[(a.reason as usize) & (DROP_REASON_SLOTS - 1)] += 1;
                }
            }
            a.verdict()
        }
        Err(reason) => {
            if reason as u32 == DropReason::NatExhausted as u32 {
                c.alloc_failed += 1;
            }
            c.drops[drop_slot(reason)] += 1;
            TC_ACT_SHOT as i32
        }
    }
}

//! Where a translated packet goes next: straight into a container's
//! namespace, or out of the interface the kernel's FIB names (to a known
//! neighbour, or through `bpf_redirect_neigh` to resolve it). Each way out
//! is one routed hop: the TTL goes down by one.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, BPF_FIB_LOOKUP_SRC,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{DropReason, Endpoint, Ipv4Wire};

use crate::{
    ctx::{ifindex, Action},
    lookup,
    rewrite::{dec_ttl, set_macs},
};

const AF_INET: u8 = 2;

/// The result of a FIB lookup: its return code and the filled parameters.
pub struct Route {
    r: i64,
    fib: FibParams,
}

impl Route {
    /// Whether the FIB names a way out of an interface (with or without a
    /// known neighbour).
    #[inline(always)]
    pub fn found(&self) -> bool {
        self.r == BPF_FIB_LKUP_RET_SUCCESS as i64 || self.r == BPF_FIB_LKUP_RET_NO_NEIGH as i64
    }

    /// The source address the FIB chose (a `lookup_src` route).
    #[inline(always)]
    pub fn src(&self) -> Ipv4Wire {
        // SAFETY: the lookup filled the AF_INET member.
        unsafe { self.fib.__bindgen_anon_3.ipv4_src }
    }
}

impl Route {
    /// Whether the FIB also knows the next hop's MAC ([`Route::macs`]).
    #[inline(always)]
    pub fn resolved(&self) -> bool {
        self.r == BPF_FIB_LKUP_RET_SUCCESS as i64
    }

    /// The device the route leaves through.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.fib.ifindex
    }

    /// The Ethernet addresses of the next hop (destination, source): the
    /// destination is all zero when the neighbour is unknown, for
    /// [`send`]'s `bpf_redirect_neigh` fills it in.
    #[inline(always)]
    pub fn macs(&self) -> ([u8; 6], [u8; 6]) {
        if self.r == BPF_FIB_LKUP_RET_SUCCESS as i64 {
            (self.fib.dmac, self.fib.smac)
        } else {
            ([0; 6], self.fib.smac)
        }
    }
}

/// Looks up the route from `saddr` to `daddr` for the packet in `ctx`.
#[inline(always)]
fn lookup(ctx: &TcContext, saddr: Ipv4Wire, daddr: Ipv4Wire, flags: u32) -> Route {
    lookup_on(ctx, ifindex(ctx), saddr, daddr, flags)
}

/// [`lookup`] with the FIB's `ifindex` parameter chosen by the caller.
#[inline(always)]
fn lookup_on(ctx: &TcContext, dev: u32, saddr: Ipv4Wire, daddr: Ipv4Wire, flags: u32) -> Route {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value of the C struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.ifindex = dev;
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            flags,
        )
    };
    Route { r, fib }
}

/// The route to `daddr`, with the source address the FIB would pick.
#[inline(always)]
pub fn lookup_src(ctx: &TcContext, saddr: Ipv4Wire, daddr: Ipv4Wire) -> Route {
    lookup(ctx, saddr, daddr, BPF_FIB_LOOKUP_SRC)
}

/// The way out of the underlay device `dev` from this host's VTEP `saddr`
/// to the remote VTEP `daddr`: an output lookup (the route must leave
/// through `dev`), as the host's own sockets would send it.
#[inline(always)]
pub fn underlay(ctx: &TcContext, saddr: Ipv4Wire, daddr: Ipv4Wire, dev: u32) -> Route {
    lookup_on(ctx, dev, saddr, daddr, BPF_FIB_LOOKUP_OUTPUT)
}

/// Sends the frame, whose Ethernet header already holds
/// [`Route::macs`], out of the device a found `route` names: straight to a
/// known neighbour, or through `bpf_redirect_neigh`, which resolves it.
/// The caller checked [`Route::found`]. No TTL change: the frame is this
/// host's own (an encapsulation), not a routed one.
#[inline(always)]
pub fn send(route: &Route) -> i32 {
    let fib = &route.fib;
    if route.r == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // SAFETY: helper call with plain arguments.
        return unsafe { bpf_redirect(fib.ifindex, 0) } as i32;
    }
    let mut nh = bpf_redir_neigh {
        nh_family: AF_INET as u32,
        __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
            // SAFETY: reading the union member the lookup filled for AF_INET.
            ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        },
    };
    // SAFETY: `nh` is valid for the size passed.
    unsafe {
        bpf_redirect_neigh(
            fib.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    }
}

/// Puts a translated packet on its way to `daddr`: straight into a
/// container's namespace, or out of the interface the FIB names. `None`:
/// leave it to the host stack.
#[inline(always)]
pub fn deliver(
    ctx: &TcContext,
    saddr: Ipv4Wire,
    daddr: Ipv4Wire,
) -> Result<Option<Action>, DropReason> {
    if let Some(ep) = lookup::endpoint(daddr) {
        return Ok(Some(to_endpoint(ctx, ep)?));
    }
    out(ctx, &lookup(ctx, saddr, daddr, 0))
}

/// Into the namespace of endpoint `ep`.
#[inline(always)]
pub fn to_endpoint(ctx: &TcContext, ep: &Endpoint) -> Result<Action, DropReason> {
    // Routed through the host: one hop. (TTL 1 was sent to the stack before
    // any rewrite, see `nat::from_container`/`nat::from_uplink`.)
    if !dec_ttl(ctx)? {
        return Ok(Action::TRANSLATED_PASSED);
    }
    set_macs(ctx, &ep.mac, &ep.host_mac)?;
    // SAFETY: helper call with plain arguments.
    let a = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    Ok(Action::translated(a as i32))
}

/// Out of the interface `route` names. `None`: the stack knows best.
#[inline(always)]
pub fn out(ctx: &TcContext, route: &Route) -> Result<Option<Action>, DropReason> {
    let fib = &route.fib;
    if route.r == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if !dec_ttl(ctx)? {
            return Ok(None);
        }
        set_macs(ctx, &fib.dmac, &fib.smac)?;
        // SAFETY: helper call with plain arguments.
        let a = unsafe { bpf_redirect(fib.ifindex, 0) };
        return Ok(Some(Action::translated(a as i32)));
    }
    if route.r == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        if !dec_ttl(ctx)? {
            return Ok(None);
        }
        // SAFETY: reading the union member the lookup filled for AF_INET.
        let mut nh = bpf_redir_neigh {
            nh_family: AF_INET as u32,
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                ipv4_nh: unsafe { fib.__bindgen_anon_4.ipv4_dst },
            },
        };
        // SAFETY: `nh` is valid for the size passed.
        let a = unsafe {
            bpf_redirect_neigh(
                fib.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        return Ok(Some(Action::translated(a as i32)));
    }
    // Local, unreachable, needs fragmenting, ...: the stack knows best.
    Ok(None)
}

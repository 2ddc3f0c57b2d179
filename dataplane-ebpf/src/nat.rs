//! Address translation decisions in the TC programs: masquerade of
//! container traffic leaving the host, published ports (from outside and,
//! as hairpin, from containers), and the reverse translation of both.
//!
//! Decisions use `dataplane_common::{nat, packet::nat}` (host-tested); the
//! flow and its entries are `conntrack`'s, the rewrites `rewrite`'s, the
//! ways out `fib`'s.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    opens_flow,
    packet::nat::{self as pn, Kind, ICMP_ERR_FRAME},
    CtKey, DropReason, Endpoint, NatAddr, CT_DNAT, CT_HAIRPIN, CT_PUBLISHED, CT_SNAT,
};

use crate::{
    conntrack::{self as ct, Pkt},
    ctx::{frame, Action},
    fib, lookup, rewrite,
};

/// A container's packet to a destination that is not a container: a
/// translated flow in progress, a new hairpin to a published port, a new
/// masqueraded flow, or (`Passed`) plain traffic to the host.
#[inline(always)]
pub fn from_container(ctx: &TcContext, me: &Endpoint, dst: u32) -> Result<Action, DropReason> {
    let p = match ct::read(ctx) {
        Ok(Some(p)) => p,
        // Anything for the host itself goes to the host as it is.
        Ok(None) | Err(_) if lookup::is_local(dst) => return Ok(Action::Passed),
        Ok(None) if me.net.contains(dst) => return Ok(Action::Passed),
        Ok(None) => return Err(DropReason::UnsupportedProtocol),
        Err(r) => return Err(r),
    };
    if p.ttl <= 1 {
        // About to expire: the host stack answers time exceeded, and the
        // packet must reach it untranslated for that answer to find its way.
        return Ok(Action::Passed);
    }
    if p.kind == Kind::IcmpError {
        // Errors a container sends about flows it received (e.g. port
        // unreachable toward a client of a published port).
        return icmp_error(ctx, &p);
    }
    if let Some(e) = ct::get(&p.key, p.tcp_flags) {
        let to = ct::entry_key(p.key.proto, &e);
        if ct::renew_on_syn(&p, &to, &e) {
            return finish(ctx, &p, &to);
        }
    }
    if p.kind == Kind::LaterFragment {
        // Its first fragment was seen (`read` found it in FRAGS) but opened
        // no flow: it went on untranslated (to the host, to its own subnet,
        // an echo reply), and so do the rest of its datagram.
        return Ok(Action::Passed);
    }
    // Asked only now: packets of known flows (above) need no answer.
    if lookup::is_local(dst) {
        if opens_flow(p.key.proto, p.tcp_flags) && p.kind != Kind::EchoRequest {
            if let Some(t) = lookup::published(p.key.proto, dst, p.key.dport) {
                return hairpin(ctx, &p, t);
            }
        }
        return Ok(Action::Passed);
    }
    if me.net.contains(dst) || !matches!(p.kind, Kind::Tcp | Kind::Udp | Kind::EchoRequest) {
        return Ok(Action::Passed);
    }
    masquerade(ctx, &p)
}

/// A packet of a known flow: rewritten to `to` and sent on its way.
#[inline(always)]
fn finish(ctx: &TcContext, p: &Pkt, to: &CtKey) -> Result<Action, DropReason> {
    rewrite::tuple(ctx, p, to)?;
    match fib::deliver(ctx, to.saddr, to.daddr)? {
        Some(a) => Ok(a),
        None => Ok(Action::TranslatedPassed),
    }
}

/// A container reaching a published port through a host address: to the
/// published container, from its network's gateway (as Docker's proxy
/// shows it), so that the replies come back through here.
#[inline(always)]
fn hairpin(ctx: &TcContext, p: &Pkt, t: NatAddr) -> Result<Action, DropReason> {
    let Some(b) = lookup::endpoint(t.addr) else {
        return Ok(Action::Passed);
    };
    let new = ct::pick_source(p, b.net.gateway, t.addr, t.port)?;
    ct::create(
        &p.key,
        &new,
        CT_SNAT | CT_DNAT | CT_HAIRPIN | CT_PUBLISHED,
        p.tcp_flags,
    )?;
    rewrite::tuple(ctx, p, &new)?;
    let a = fib::to_endpoint(ctx, b)?;
    Ok(Action::New(a.verdict()))
}

/// A new flow from a container to beyond the host: leaves with the address
/// the FIB picks for its way out.
#[inline(always)]
fn masquerade(ctx: &TcContext, p: &Pkt) -> Result<Action, DropReason> {
    let route = fib::lookup_src(ctx, p.key.saddr, p.key.daddr);
    if !route.found() {
        return Ok(Action::Passed);
    }
    let src = route.src();
    if src == 0 {
        return Ok(Action::Passed);
    }
    let new = ct::pick_source(p, src, p.key.daddr, p.key.dport)?;
    ct::create(&p.key, &new, CT_SNAT, p.tcp_flags)?;
    rewrite::tuple(ctx, p, &new)?;
    match fib::out(ctx, &route)? {
        Some(a) => Ok(Action::New(a.verdict())),
        None => Ok(Action::TranslatedPassed),
    }
}

/// A packet arriving on an uplink (one of the host's own interfaces): a
/// reply of a masqueraded flow, a packet of a published-port flow, a new
/// connection to a published port, an ICMP error about one of these, or
/// (`Passed`) anything else, for the host.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, dst: u32) -> Result<Action, DropReason> {
    let p = match ct::read(ctx) {
        Ok(Some(p)) => p,
        // Not ours to judge: the host's own traffic goes on untouched.
        Ok(None) | Err(_) => return Ok(Action::Passed),
    };
    if p.ttl <= 1 {
        return Ok(Action::Passed);
    }
    if p.kind == Kind::IcmpError {
        return icmp_error(ctx, &p);
    }
    if let Some(e) = ct::get(&p.key, p.tcp_flags) {
        let to = ct::entry_key(p.key.proto, &e);
        if ct::renew_on_syn(&p, &to, &e) {
            return finish(ctx, &p, &to);
        }
    }
    if p.kind == Kind::EchoRequest || p.kind == Kind::EchoReply || p.kind == Kind::LaterFragment {
        return Ok(Action::Passed);
    }
    if !opens_flow(p.key.proto, p.tcp_flags) || !lookup::is_local(dst) {
        return Ok(Action::Passed);
    }
    let Some(t) = lookup::published(p.key.proto, dst, p.key.dport) else {
        return Ok(Action::Passed);
    };
    let Some(c) = lookup::endpoint(t.addr) else {
        return Ok(Action::Passed);
    };
    // The client's address is kept: the container sees who connects.
    let new = CtKey::new(p.key.proto, p.key.saddr, p.key.sport, t.addr, t.port);
    ct::create(&p.key, &new, CT_DNAT | CT_PUBLISHED, p.tcp_flags)?;
    rewrite::tuple(ctx, &p, &new)?;
    let a = fib::to_endpoint(ctx, c)?;
    Ok(Action::New(a.verdict()))
}

/// An ICMP error about a translated flow. The quoted packet belongs to the
/// flow's other direction: if the flow's packets arriving here as `key` are
/// rewritten to `e`, the quoted packet becomes `e` reversed, the error goes
/// where `e` goes, and comes from `e`'s source when the flow's own peer sent
/// it (a router on the way keeps its address).
#[inline(always)]
fn icmp_error(ctx: &TcContext, p: &Pkt) -> Result<Action, DropReason> {
    let key = match frame::<ICMP_ERR_FRAME>(ctx) {
        // SAFETY: bounds checked by `frame`.
        Ok(f) => match pn::icmp_error_key(unsafe { &*f }) {
            Ok(k) => k,
            Err(_) => return Ok(Action::Passed),
        },
        Err(_) => return Ok(Action::Passed),
    };
    let Some(e) = ct::live(&key) else {
        return Ok(Action::Passed);
    };
    let outer_src = if p.key.saddr == key.saddr {
        e.saddr
    } else {
        p.key.saddr
    };
    let outer_dst = e.daddr;
    rewrite::icmp_error(ctx, p, &key, &e, outer_src, outer_dst)?;
    match fib::deliver(ctx, outer_src, outer_dst)? {
        Some(a) => Ok(a),
        None => Ok(Action::TranslatedPassed),
    }
}

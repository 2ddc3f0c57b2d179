//! Address translation decisions in the TC programs: masquerade of
//! container traffic leaving the host, published ports (from outside and,
//! as hairpin, from containers), ingress ports of services (a replica
//! picked by `lb`, on this host or through the tunnel), and the reverse
//! translation of all of them.
//!
//! Decisions use `dataplane_common::{nat, packet::nat}` (host-tested); the
//! flow and its entries are `conntrack`'s, the rewrites `rewrite`'s, the
//! ways out `fib`'s.

use aya_ebpf::programs::TcContext;
use dataplane_common::{
    opens_flow,
    packet::nat::{self as pn, Kind, ICMP_ERR_FRAME},
    CtEntry, CtKey, DropReason, Endpoint, NatAddr, Service, CT_DNAT, CT_HAIRPIN, CT_PUBLISHED,
    CT_REPLY, CT_SERVICE, CT_SNAT, CT_TUNNEL, EP_REMOTE, NO_BACKEND, SVC_INGRESS,
};

use crate::{
    conntrack::{self as ct, Pkt},
    ctx::{self, frame, Action},
    fib, lb, lookup, rewrite, tunnel,
};

/// What [`from_container`] made of a packet.
pub enum Egress {
    /// Done with it.
    Done(Action),
    /// Encapsulate it, unchanged, to this VTEP (with the sender's VNI):
    /// the caller's encapsulation, so that one copy of its buffers sits on
    /// the stack (`from_container`'s frame has no room for a second).
    Tunnel(u32),
}

/// A container's packet to a destination that is not a container: a
/// translated flow in progress, a new hairpin to a published port, a new
/// masqueraded flow, or (`Passed`) plain traffic to the host.
#[inline(always)]
pub fn from_container(ctx: &TcContext, me: &Endpoint, dst: u32) -> Result<Egress, DropReason> {
    use Egress::Done;
    let p = match ct::read(ctx) {
        Ok(Some(p)) => p,
        // Anything for the host itself goes to the host as it is.
        Ok(None) | Err(_) if lookup::is_local(dst) => return Ok(Done(Action::PASSED)),
        Ok(None) if me.net.contains(dst) => return Ok(Done(Action::PASSED)),
        Ok(None) => return Err(DropReason::UnsupportedProtocol),
        Err(r) => return Err(r),
    };
    if p.ttl <= 1 {
        // About to expire: the host stack answers time exceeded, and the
        // packet must reach it untranslated for that answer to find its way.
        return Ok(Done(Action::PASSED));
    }
    if p.kind == Kind::IcmpError {
        // Errors a container sends about flows it received (e.g. port
        // unreachable toward a client of a published port).
        return icmp_error(ctx, &p).map(Done);
    }
    if let Some(e) = ct::get(&p.key, p.tcp_flags) {
        if e.flags & (CT_TUNNEL | CT_REPLY) == CT_TUNNEL | CT_REPLY {
            // A replica's reply to a flow another host received: back
            // through the tunnel to that host, never masqueraded.
            lb::count_packet(e.backend, ctx.len());
            return Ok(Egress::Tunnel(e.vtep));
        }
        let to = ct::entry_key(p.key.proto, &e);
        if ct::renew_on_syn(&p, &to, &e) {
            return finish(ctx, &p, &to, &e).map(Done);
        }
    }
    if p.kind == Kind::LaterFragment {
        // Its first fragment was seen (`read` found it in FRAGS) but opened
        // no flow: it went on untranslated (to the host, to its own subnet,
        // an echo reply), and so do the rest of its datagram.
        return Ok(Done(Action::PASSED));
    }
    // Asked only now: packets of known flows (above) need no answer.
    if lookup::is_local(dst) {
        if opens_flow(p.key.proto, p.tcp_flags) && p.kind != Kind::EchoRequest {
            if let Some(t) = lookup::published(p.key.proto, dst, p.key.dport) {
                return hairpin(ctx, &p, t).map(Done);
            }
        }
        return Ok(Done(Action::PASSED));
    }
    if me.net.contains(dst) || !matches!(p.kind, Kind::Tcp | Kind::Udp | Kind::EchoRequest) {
        return Ok(Done(Action::PASSED));
    }
    masquerade(ctx, &p).map(Done)
}

/// A packet of a known flow (entry `e`): rewritten to `to` and sent on
/// its way.
#[inline(always)]
fn finish(ctx: &TcContext, p: &Pkt, to: &CtKey, e: &CtEntry) -> Result<Action, DropReason> {
    let len = ctx.len();
    let r = rewrite::tuple(ctx, p, to).and_then(|_| fib::deliver(ctx, to.saddr, to.daddr));
    if e.backend != NO_BACKEND {
        // A service flow's reply (from a replica of this host).
        lb::count_packet(e.backend, len);
        if let Err(reason) = r {
            lb::count_drop_of(e.backend, reason);
        }
    }
    match r? {
        Some(a) => Ok(a),
        None => Ok(Action::TRANSLATED_PASSED),
    }
}

/// A container reaching a published port through a host address: to the
/// published container, from its network's gateway (as Docker's proxy
/// shows it), so that the replies come back through here.
#[inline(always)]
fn hairpin(ctx: &TcContext, p: &Pkt, t: NatAddr) -> Result<Action, DropReason> {
    let Some(b) = lookup::endpoint(t.addr) else {
        return Ok(Action::PASSED);
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
    Ok(Action::new_flow(a.verdict()))
}

/// A new flow from a container to beyond the host: leaves with the address
/// the FIB picks for its way out.
#[inline(always)]
fn masquerade(ctx: &TcContext, p: &Pkt) -> Result<Action, DropReason> {
    let route = fib::lookup_src(ctx, p.key.saddr, p.key.daddr);
    if !route.found() {
        return Ok(Action::PASSED);
    }
    let src = route.src();
    if src == 0 {
        return Ok(Action::PASSED);
    }
    let new = ct::pick_source(p, src, p.key.daddr, p.key.dport)?;
    ct::create(&p.key, &new, CT_SNAT, p.tcp_flags)?;
    rewrite::tuple(ctx, p, &new)?;
    match fib::out(ctx, &route)? {
        Some(a) => Ok(Action::new_flow(a.verdict())),
        None => Ok(Action::TRANSLATED_PASSED),
    }
}

/// What [`from_uplink`] (and [`ingress`]) made of a packet. The stages
/// of the service paths are BPF subprograms that `from_uplink`'s entry
/// calls one after the other (`main::try_from_uplink`), never one inside
/// another: the verifier sums the stack frames of nested calls (512 bytes
/// at most), and conntrack, the rewrite and the encapsulation each need
/// a good part of that.
pub enum Uplink {
    /// Done with it.
    Done(Action),
    /// A new flow to a host address on a port no container publishes: an
    /// ingress port of a service, perhaps ([`ingress`]).
    Ingress(Pkt),
    /// A packet of a known service flow of replica `id`, to be rewritten
    /// to `to` ([`service_finish`]).
    Service { p: Pkt, to: CtKey, id: u32 },
    /// A service flow's packet, rewritten already, for a replica on
    /// another host ([`to_remote`]).
    Remote(Remote),
}

/// A packet for a replica on another host (see [`Uplink::Remote`]).
pub struct Remote {
    /// The replica's address (an `EP_REMOTE` endpoint). Its map value is
    /// looked up again by [`to_remote`]: a pointer kept in a struct that
    /// is copied between subprograms' frames loses its type to the
    /// verifier.
    pub ip: u32,
    /// The MAC the packet was sent to (this host's): the inner source.
    pub via: [u8; 6],
    /// Its `BACKENDS` id.
    pub id: u32,
    /// The first packet of its flow (counted as a new flow).
    pub new: bool,
}

/// A packet arriving on an uplink (one of the host's own interfaces): a
/// reply of a masqueraded flow, a packet of a published-port or service
/// flow, a new connection to a published port, an ICMP error about one of
/// these, a candidate for an ingress port, or (`Passed`) anything else,
/// for the host.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, dst: u32) -> Result<Uplink, DropReason> {
    use Uplink::Done;
    let p = match ct::read(ctx) {
        Ok(Some(p)) => p,
        // Not ours to judge: the host's own traffic goes on untouched.
        Ok(None) | Err(_) => return Ok(Done(Action::PASSED)),
    };
    if p.ttl <= 1 {
        return Ok(Done(Action::PASSED));
    }
    if p.kind == Kind::IcmpError {
        return icmp_error(ctx, &p).map(Done);
    }
    if let Some(e) = ct::get(&p.key, p.tcp_flags) {
        let to = ct::entry_key(p.key.proto, &e);
        if ct::renew_on_syn(&p, &to, &e) {
            if e.backend != NO_BACKEND {
                return Ok(Uplink::Service {
                    p,
                    to,
                    id: e.backend,
                });
            }
            return finish(ctx, &p, &to, &e).map(Done);
        }
    }
    if p.kind == Kind::EchoRequest || p.kind == Kind::EchoReply || p.kind == Kind::LaterFragment {
        return Ok(Done(Action::PASSED));
    }
    if !opens_flow(p.key.proto, p.tcp_flags) || !lookup::is_local(dst) {
        return Ok(Done(Action::PASSED));
    }
    let Some(t) = lookup::published(p.key.proto, dst, p.key.dport) else {
        return Ok(Uplink::Ingress(p));
    };
    let Some(c) = lookup::endpoint(t.addr) else {
        return Ok(Done(Action::PASSED));
    };
    // The client's address is kept: the container sees who connects.
    let new = CtKey::new(p.key.proto, p.key.saddr, p.key.sport, t.addr, t.port);
    ct::create(&p.key, &new, CT_DNAT | CT_PUBLISHED, p.tcp_flags)?;
    rewrite::tuple(ctx, &p, &new)?;
    let a = fib::to_endpoint(ctx, c)?;
    Ok(Done(Action::new_flow(a.verdict())))
}

/// A packet arriving on an uplink of a known service flow of replica
/// `id`: counted for the service and the replica, rewritten, and sent on:
/// to a replica on another host through the tunnel (every packet: the FIB
/// knows no way to a remote endpoint; [`Uplink::Remote`]), anywhere else
/// as [`finish`] does. Its own BPF subprogram.
#[inline(never)]
pub fn service_finish(ctx: &TcContext, p: &Pkt, to: &CtKey, id: u32) -> Result<Uplink, DropReason> {
    lb::count_packet(id, ctx.len());
    let r = service_send(ctx, p, to, id);
    if let Err(reason) = r {
        lb::count_drop_of(id, reason);
    }
    r
}

#[inline(always)]
fn service_send(ctx: &TcContext, p: &Pkt, to: &CtKey, id: u32) -> Result<Uplink, DropReason> {
    let via = ctx::eth_header(ctx)?;
    let via = [via[0], via[1], via[2], via[3], via[4], via[5]];
    rewrite::tuple(ctx, p, to)?;
    if let Some(ep) = lookup::endpoint(to.daddr) {
        if ep.flags & EP_REMOTE != 0 {
            return Ok(Uplink::Remote(Remote {
                ip: ep.ip,
                via,
                id,
                new: false,
            }));
        }
        return fib::to_endpoint(ctx, ep).map(Uplink::Done);
    }
    match fib::deliver(ctx, to.saddr, to.daddr)? {
        Some(a) => Ok(Uplink::Done(a)),
        None => Ok(Uplink::Done(Action::TRANSLATED_PASSED)),
    }
}

/// Into the replica on another host that `r` names, through the tunnel
/// (routed through this host: one hop off the TTL). Drops are counted for
/// the replica's service. Its own BPF subprogram (the encapsulation's
/// buffers).
#[inline(never)]
pub fn to_remote(ctx: &TcContext, r: &Remote) -> Result<Action, DropReason> {
    let a = remote_send(ctx, r);
    if let Err(reason) = a {
        lb::count_drop_of(r.id, reason);
    }
    a
}

#[inline(always)]
fn remote_send(ctx: &TcContext, r: &Remote) -> Result<Action, DropReason> {
    // Never expires here: a TTL of 1 went to the host before anything
    // (`from_uplink`). Returning only variants with a payload matters too:
    // LLVM fills a payload-less variant's payload bytes with whatever a
    // register holds, and a packet pointer stored that way is refused by
    // the verifier ("invalid size of register spill").
    let _ = rewrite::dec_ttl(ctx)?;
    let ep = lookup::endpoint(r.ip).ok_or(DropReason::ServiceNoBackend)?;
    let v = tunnel::to_replica(ctx, ep, &r.via)?;
    Ok(if r.new {
        Action::new_flow(v)
    } else {
        Action::translated(v)
    })
}

/// A new flow to a host address whose port is no container's
/// ([`Uplink::Ingress`]): an ingress port of a service (`SVC_INGRESS`
/// frontend on every address) gets a replica from the service's Maglev
/// table (hash of the original tuple, the same on every host), the
/// client's address kept; anything else goes to the host. Drops of a
/// service's flow are also counted for it. Its own BPF subprogram.
#[inline(never)]
pub fn ingress(ctx: &TcContext, p: &Pkt) -> Result<Uplink, DropReason> {
    let Some(svc) = lb::frontend(p.key.proto, 0, p.key.dport) else {
        return Ok(Uplink::Done(Action::PASSED));
    };
    if svc.flags & SVC_INGRESS == 0 {
        return Ok(Uplink::Done(Action::PASSED));
    }
    let r = ingress_new(ctx, p, svc);
    if let Err(reason) = r {
        lb::count_drop(svc.slot, reason);
    }
    r
}

#[inline(always)]
fn ingress_new(ctx: &TcContext, p: &Pkt, svc: &Service) -> Result<Uplink, DropReason> {
    let (id, be) = lb::pick_flow(svc, &p.key)?;
    // A replica the daemon has not projected (or that went): no way to it.
    let ep = lookup::endpoint(be.ip).ok_or(DropReason::ServiceNoBackend)?;
    let via = ctx::eth_header(ctx)?;
    let via = [via[0], via[1], via[2], via[3], via[4], via[5]];
    let new = CtKey::new(p.key.proto, p.key.saddr, p.key.sport, be.ip, svc.target);
    ct::create_for(
        &p.key,
        &new,
        CT_DNAT | CT_PUBLISHED | CT_SERVICE,
        p.tcp_flags,
        id,
        0,
    )?;
    lb::count_conn(svc.slot, id);
    lb::count_packet(id, ctx.len());
    rewrite::tuple(ctx, p, &new)?;
    if ep.flags & EP_REMOTE != 0 {
        return Ok(Uplink::Remote(Remote {
            ip: ep.ip,
            via,
            id,
            new: true,
        }));
    }
    let a = fib::to_endpoint(ctx, ep)?;
    Ok(Uplink::Done(Action::new_flow(a.verdict())))
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
            Err(_) => return Ok(Action::PASSED),
        },
        Err(_) => return Ok(Action::PASSED),
    };
    let Some(e) = ct::live(&key) else {
        return Ok(Action::PASSED);
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
        None => Ok(Action::TRANSLATED_PASSED),
    }
}

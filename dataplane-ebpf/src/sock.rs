//! cgroup sock_addr programs: host processes reach published ports without a
//! proxy (what docker-proxy does for Docker), by translating at the socket
//! level as Cilium's socket LB does.
//!
//! - `connect4` (TCP and UDP) and `sendmsg4` (unconnected UDP): a destination
//!   in 127.0.0.0/8 or in `LOCAL_ADDRS` whose port is published in `PORTS`
//!   (exact host address first, then the wildcard 0) is rewritten to the
//!   container's address and port, and the original is recorded in
//!   `SOCK_REV` under (socket cookie, container address, container port).
//! - `recvmsg4` (UDP) and `getpeername4` (TCP and connected UDP): an address
//!   found in `SOCK_REV` for this socket is rewritten back, so the
//!   application sees the address it asked for.
//!
//! - In a sandbox of this daemon (its netns cookie is in `DNS_PORTS`),
//!   127.0.0.11:53 is sent to the port the embedded resolver really listens
//!   on, and shown as :53 again on the way back, so that the container
//!   itself may bind port 53.
//!
//! - Service VIPs (east-west): a `connect`/`sendmsg` of the daemon's
//!   namespace or of one of its sandboxes to a (proto, VIP, port) that is an
//!   `SVC_VIP` frontend in `SERVICES` goes to a replica that the service's
//!   Maglev table gives for `sock_hash(socket cookie, VIP, port)` (the
//!   cookie stands for the flow: the source port is not chosen yet), on the
//!   service's target port; recorded in `SOCK_REV` like a published port,
//!   so `getpeername`/`recvmsg` show the VIP. A connection is counted for
//!   the service and the replica the first time a socket goes to that
//!   replica. A VIP with no live replica is left alone (the call goes to
//!   the VIP and fails) and counted as a `service_no_backend` drop of the
//!   service. Translating at the socket means the packets already carry
//!   the replica's address: no per-packet NAT, no conntrack entry.
//!
//! - A service's ingress port (`SVC_INGRESS`, answered on every host
//!   address) asked by a process of the daemon's namespace on loopback or a
//!   local address goes to a replica the same way (after `PORTS`: a port is
//!   either published or a service's, the daemon refuses both).
//!
//! The hooks sit on the cgroup v2 root and so see every network namespace of
//! the machine: each program acts only when the socket's netns cookie is the
//! one the daemon wrote into `CONFIG[CFG_NETNS_COOKIE]` (and that is set), so
//! daemons in different namespaces never see each other's mappings. Every
//! program always returns 1 (allow): recvmsg4/getpeername4 may return nothing
//! else, and a miss must leave the call alone.
//!
//! Context fields are read and written with 4-byte volatile accesses: the
//! kernel accepts only full-width writes to `user_ip4`/`user_port`, and
//! volatile keeps LLVM from merging or narrowing the accesses.

use core::{
    ffi::c_void,
    ptr::{addr_of, addr_of_mut},
};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use dataplane_common::{
    is_loopback, sock_hash, Ipv4Wire, NatAddr, PortWire, Service, SockRevKey, CFG_NETNS_COOKIE,
    DNS_IP, DNS_PORT, IPPROTO_TCP, IPPROTO_UDP, PROG_SOCK,
};

use crate::{
    ctx::counters,
    lb, lookup,
    maps::{CONFIG, DNS_PORTS, SOCK_REV},
};

/// The only verdict these programs give: let the call proceed.
const ALLOW: i32 = 1;

/// Counts one call that concerns this daemon in `STATS[PROG_SOCK]`:
/// `packets` counts calls (these hooks see socket calls, not packets),
/// `translated` those whose address was rewritten. Counted: connect/sendmsg
/// of the daemon's namespace to one of the host's addresses (a published
/// port or not) and of its sandboxes to 127.0.0.11:53, of either to a
/// service VIP (translated if it has a live replica), and the
/// recvmsg/getpeername calls shown an address back.
#[inline(always)]
fn count(translated: bool) {
    // Per-CPU slot. cgroup programs run with migration disabled; a task
    // preempted mid-increment on the same CPU can lose a count, which is
    // acceptable for statistics.
    if let Some(c) = counters(PROG_SOCK) {
        c.packets += 1;
        if translated {
            c.translated += 1;
        }
    }
}

/// Whether the socket belongs to the daemon's network namespace.
#[inline(always)]
fn in_our_netns(sa: *mut bpf_sock_addr) -> bool {
    let want = match CONFIG.get(CFG_NETNS_COOKIE) {
        Some(v) => *v,
        None => return false,
    };
    // SAFETY: helper call on the context the kernel handed us.
    want != 0 && unsafe { bpf_get_netns_cookie(sa as *mut c_void) } == want
}

#[inline(always)]
fn user_ip4(sa: *mut bpf_sock_addr) -> Ipv4Wire {
    // SAFETY: `sa` is the program's context; 4-byte read of a readable field.
    unsafe { addr_of!((*sa).user_ip4).read_volatile() }
}

#[inline(always)]
fn user_port(sa: *mut bpf_sock_addr) -> PortWire {
    // SAFETY: as above. The port sits in the low 16 bits in wire order.
    unsafe { addr_of!((*sa).user_port).read_volatile() as PortWire }
}

#[inline(always)]
fn set_user_addr(sa: *mut bpf_sock_addr, to: &NatAddr) {
    // SAFETY: 4-byte writes of fields every attach type here may write.
    unsafe {
        addr_of_mut!((*sa).user_ip4).write_volatile(to.addr);
        addr_of_mut!((*sa).user_port).write_volatile(to.port as u32);
    }
}

#[inline(always)]
fn socket_cookie(sa: *mut bpf_sock_addr) -> u64 {
    // SAFETY: helper call on the context the kernel handed us.
    unsafe { bpf_get_socket_cookie(sa as *mut c_void) }
}

#[inline(always)]
fn netns_cookie(sa: *mut bpf_sock_addr) -> u64 {
    // SAFETY: helper call on the context the kernel handed us.
    unsafe { bpf_get_netns_cookie(sa as *mut c_void) }
}

/// The port a sandbox's embedded resolver really listens on, if `sa` is a
/// socket of one of this daemon's sandboxes.
#[inline(always)]
fn resolver_port(sa: *mut bpf_sock_addr) -> Option<u32> {
    // SAFETY: plain data; userspace replaces entries whole.
    unsafe { DNS_PORTS.get(&netns_cookie(sa)) }.copied()
}

/// Whether the socket is the daemon's or one of its sandboxes' (the
/// namespaces whose VIPs this daemon answers).
#[inline(always)]
fn ours_or_sandbox(sa: *mut bpf_sock_addr, ours: bool) -> bool {
    ours || resolver_port(sa).is_some()
}

/// connect4 / sendmsg4: a service VIP goes to a replica; a local
/// destination whose port is published goes to the container instead; in a
/// sandbox, 127.0.0.11:53 goes to the embedded resolver's real port.
#[inline(always)]
pub(crate) fn forward(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let dst = user_ip4(sa);
    let port = user_port(sa);
    if dst == DNS_IP && port == DNS_PORT {
        if let Some(port) = resolver_port(sa) {
            // SAFETY: 4-byte write of a field every attach type here may write.
            unsafe { addr_of_mut!((*sa).user_port).write_volatile(port) };
            count(true);
        }
        return ALLOW;
    }
    let ours = in_our_netns(sa);
    if !ours_or_sandbox(sa, ours) {
        return ALLOW;
    }
    // SAFETY: 4-byte read of a readable context field.
    let proto = unsafe { addr_of!((*sa).protocol).read_volatile() };
    if proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32 {
        return ALLOW;
    }
    let proto = proto as u8;
    if let Some(svc) = lb::vip_frontend(proto, dst, port) {
        to_replica(sa, svc, proto, dst, port);
        return ALLOW;
    }
    if !ours || (!is_loopback(dst) && !lookup::is_local(dst)) {
        return ALLOW;
    }
    let Some(to) = lookup::published(proto, dst, port) else {
        if let Some(svc) = lb::ingress_frontend(proto, port) {
            // A service's ingress port, asked by a process of the host
            // itself (no packet of it crosses a TC hook).
            to_replica(sa, svc, proto, dst, port);
        } else {
            count(false);
        }
        return ALLOW;
    };
    let key = SockRevKey {
        cookie: socket_cookie(sa),
        addr: to.addr,
        port: to.port,
        _pad: 0,
    };
    // A full LRU map evicts; an error here only costs the reverse view.
    let _ = SOCK_REV.insert(&key, &NatAddr::new(dst, port), 0);
    set_user_addr(sa, &to);
    count(true);
    ALLOW
}

/// Points the call to `vip:port` of `svc` at the replica the Maglev table
/// gives this socket; leaves it alone (counted as a drop of the service) if
/// there is none.
#[inline(always)]
fn to_replica(sa: *mut bpf_sock_addr, svc: &Service, proto: u8, vip: Ipv4Wire, port: PortWire) {
    let cookie = socket_cookie(sa);
    let (id, be) = match lb::pick(svc, sock_hash(cookie, vip, port, proto)) {
        Ok(p) => p,
        Err(reason) => {
            lb::count_drop(svc.slot, reason);
            count(false);
            return;
        }
    };
    let to = NatAddr::new(be.ip, svc.target);
    let key = SockRevKey {
        cookie,
        addr: to.addr,
        port: to.port,
        _pad: 0,
    };
    let orig = NatAddr::new(vip, port);
    // SAFETY: plain data; entries are replaced whole.
    let known = unsafe { SOCK_REV.get(&key) }.is_some_and(|o| *o == orig);
    if !known {
        // A new connection (or the first datagram of this socket to this
        // replica). A full LRU map evicts; an error only costs the reverse
        // view.
        let _ = SOCK_REV.insert(&key, &orig, 0);
        lb::count_conn(svc.slot, id);
    }
    set_user_addr(sa, &to);
    count(true);
}

/// recvmsg4 / getpeername4: show the address the application asked for
/// (127.0.0.11:53 for the embedded resolver, the VIP for a replica).
#[inline(always)]
pub(crate) fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    if user_ip4(sa) == DNS_IP {
        if resolver_port(sa) == Some(user_port(sa) as u32) {
            // SAFETY: as in `forward`.
            unsafe { addr_of_mut!((*sa).user_port).write_volatile(DNS_PORT as u32) };
            count(true);
        }
        return ALLOW;
    }
    if !ours_or_sandbox(sa, in_our_netns(sa)) {
        return ALLOW;
    }
    let key = SockRevKey {
        cookie: socket_cookie(sa),
        addr: user_ip4(sa),
        port: user_port(sa),
        _pad: 0,
    };
    // SAFETY: plain data; entries are replaced whole.
    if let Some(orig) = unsafe { SOCK_REV.get(&key) } {
        let orig = *orig;
        set_user_addr(sa, &orig);
        count(true);
    }
    ALLOW
}

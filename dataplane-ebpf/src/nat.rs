//! Address translation in the TC programs: masquerade of container traffic
//! leaving the host, published ports (from outside and, as hairpin, from
//! containers), and the reverse translation of both.
//!
//! Decisions use `dataplane_common::{nat, packet::nat}` (host-tested);
//! this module does the map work and the rewrites. Rewrites go through the
//! kernel's store and checksum helpers, which keep offloaded
//! (`CHECKSUM_PARTIAL`) and `CHECKSUM_COMPLETE` packets consistent; direct
//! packet pointers are dead after them, so everything is read first.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, bpf_redir_neigh, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR,
        BPF_NOEXIST,
    },
    helpers::generated::{
        bpf_fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh,
        bpf_redirect_peer,
    },
    programs::TcContext,
};
use dataplane_common::{
    ct_alive, nat_pair, nat_port_candidate, opens_flow,
    packet::nat::{
        self as pn, Frag, Kind, ICMP_ERR_FRAME, INNER_IP, INNER_L4, IP_CSUM, IP_DADDR, IP_SADDR,
        IP_TTL, L4, L4_FRAME, TCP_FRAME,
    },
    seen_bits, CtEntry, CtKey, DropReason, Endpoint, FragPorts, NatAddr, PortKey, CT_DNAT,
    CT_HAIRPIN, CT_PUBLISHED, CT_REFRESH_NS, CT_REPLY, CT_SNAT, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, NAT_ATTEMPTS, SEEN_CLOSING, TCP_RST,
};

use crate::{
    frame,
    maps::{CT, ENDPOINTS, FRAGS, LOCAL_ADDRS, PORTS},
    Action,
};

const AF_INET: u8 = 2;

/// A packet's flow, with what its rewrite needs.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub key: CtKey,
    pub kind: Kind,
    pub tcp_flags: u8,
    pub ttl: u8,
}

/// Reads the flow of the IPv4 frame in `ctx`. `Ok(None)`: a protocol
/// translation does not carry.
#[inline(always)]
pub fn read(ctx: &TcContext) -> Result<Option<Pkt>, DropReason> {
    let h = frame::<L4>(ctx).map_err(|_| DropReason::NatMalformed)?;
    // SAFETY: bounds checked by `frame`.
    let h = unsafe { &*h };
    let ttl = h[IP_TTL];
    let frag = pn::fragment(h);
    // Read now: pulling more of the frame below invalidates `h`.
    let fk = pn::frag_key(h);
    if frag == Frag::Later {
        // No L4 header: the flow is the one its first fragment named.
        let proto = pn::proto(h);
        if h[pn::IP] != 0x45 {
            return Err(DropReason::NatMalformed);
        }
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
            return Ok(None);
        }
        // SAFETY: read-only lookup of plain data.
        let Some(ports) = (unsafe { FRAGS.get(&fk) }) else {
            return Err(DropReason::Fragment);
        };
        return Ok(Some(Pkt {
            key: CtKey::new(proto, fk.saddr, ports.sport, fk.daddr, ports.dport),
            kind: Kind::LaterFragment,
            tcp_flags: 0,
            ttl,
        }));
    }
    let f = frame::<L4_FRAME>(ctx).map_err(|_| DropReason::NatMalformed)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    let Some(fl) = pn::flow(f)? else {
        return Ok(None);
    };
    let tcp_flags = if fl.kind == Kind::Tcp {
        let f = frame::<TCP_FRAME>(ctx).map_err(|_| DropReason::NatMalformed)?;
        // SAFETY: bounds checked by `frame`.
        pn::tcp_flags(unsafe { &*f })
    } else {
        0
    };
    if frag == Frag::First && fl.kind != Kind::IcmpError {
        let ports = FragPorts {
            sport: fl.key.sport,
            dport: fl.key.dport,
        };
        // A full map only costs the later fragments (dropped, counted).
        let _ = FRAGS.insert(&fk, &ports, 0);
    }
    Ok(Some(Pkt {
        key: fl.key,
        kind: fl.kind,
        tcp_flags,
        ttl,
    }))
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The live entry for `key`, its state and clock brought up to date.
#[inline(always)]
pub fn ct_get(key: &CtKey, tcp_flags: u8) -> Option<CtEntry> {
    let e = CT.get_ptr_mut(key)?;
    // SAFETY: a map value pointer, valid for this run; concurrent updates
    // of these plain fields are benign (last writer wins).
    let e = unsafe { &mut *e };
    let t = now();
    if !ct_alive(e, key.proto, t) {
        return None;
    }
    let seen = e.seen | seen_bits(key.proto, tcp_flags);
    if seen != e.seen {
        e.seen = seen;
    }
    if t.wrapping_sub(e.last_seen) > CT_REFRESH_NS {
        e.last_seen = t;
    }
    if tcp_flags & TCP_RST != 0 && key.proto == IPPROTO_TCP {
        // A reset ends both directions: the other half must not keep an
        // established (6 h) timeout for a flow that is gone.
        if let Some(o) = CT.get_ptr_mut(&entry_key(key.proto, e).reversed()) {
            // SAFETY: as above.
            unsafe { (*o).seen |= SEEN_CLOSING };
        }
    }
    Some(*e)
}

/// Whether `key` has a live entry, without touching it (probing for a free
/// tuple must not refresh someone else's flow).
#[inline(always)]
fn ct_live(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: read-only lookup of plain data.
    let e = unsafe { CT.get(key) }?;
    ct_alive(e, key.proto, now()).then_some(*e)
}

#[inline(always)]
fn is_local(addr: u32) -> bool {
    // SAFETY: read-only lookup.
    unsafe { LOCAL_ADDRS.get(&addr) }.is_some()
}

/// The container end of a port published on `addr` (exact binding first,
/// then one on every address).
#[inline(always)]
fn published(proto: u8, addr: u32, port: u16) -> Option<NatAddr> {
    // SAFETY: read-only lookups of plain data.
    unsafe {
        PORTS
            .get(&PortKey::new(proto, addr, port))
            .or_else(|| PORTS.get(&PortKey::new(proto, 0, port)))
            .copied()
    }
}

/// Records a new flow first seen as `orig` and rewritten to `new`, claiming
/// the reply tuple first so that two flows never share one.
#[inline(always)]
fn ct_create(orig: &CtKey, new: &CtKey, flags: u16, tcp_flags: u8) -> Result<(), DropReason> {
    let (fwd, reply_key, rev) = nat_pair(orig, new, flags, seen_bits(orig.proto, tcp_flags), now());
    if CT.insert(&reply_key, &rev, BPF_NOEXIST as u64).is_err() {
        // Taken: only a dead flow, or the leftover reply half of this very
        // flow (its forward half expired first), may be replaced.
        if !reply_free(orig, new) {
            return Err(DropReason::NatExhausted);
        }
        CT.insert(&reply_key, &rev, 0)
            .map_err(|_| DropReason::CtFull)?;
    }
    if CT.insert(orig, &fwd, 0).is_err() {
        let _ = CT.remove(&reply_key);
        return Err(DropReason::CtFull);
    }
    Ok(())
}

/// Whether the reply tuple of `orig` rewritten to `new` is free: no live
/// entry, or one that leads back to `orig` itself. The second case is a
/// flow reusing its tuple (a client reconnecting from the same port) whose
/// forward entry expired a little before the reply entry (`last_seen` is
/// refreshed once a second per direction); refusing it would drop every
/// reconnect in that window.
#[inline(always)]
fn reply_free(orig: &CtKey, new: &CtKey) -> bool {
    match ct_live(&new.reversed()) {
        None => true,
        Some(e) => {
            let back = orig.reversed();
            e.saddr == back.saddr
                && e.daddr == back.daddr
                && e.sport == back.sport
                && e.dport == back.dport
        }
    }
}

/// A source port (or echo id) for `orig` leaving as `saddr`, such that the
/// reply tuple is free: `new` gets it. `Err(NatExhausted)` after
/// `NAT_ATTEMPTS` taken candidates.
#[inline(always)]
fn pick_source(p: &Pkt, saddr: u32, daddr: u32, dport: u16) -> Result<CtKey, DropReason> {
    let k = &p.key;
    // SAFETY: helper without arguments.
    let seed = unsafe { bpf_get_prandom_u32() };
    let mut i = 0;
    while i < NAT_ATTEMPTS {
        let sport = nat_port_candidate(k.sport, i, seed);
        let new = CtKey::new(k.proto, saddr, sport, daddr, dport);
        if reply_free(k, &new) {
            return Ok(new);
        }
        i += 1;
    }
    Err(DropReason::NatExhausted)
}

/// Rewrites the packet whose tuple is `cur` to `to`, fixing checksums.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, p: &Pkt, to: &CtKey) -> Result<(), DropReason> {
    let cur = &p.key;
    let proto = cur.proto;
    let csum = L4 + pn::l4_csum_offset(proto);
    let mangled0 = if proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let e = |_| DropReason::NatMalformed;
    // An address is in the IPv4 header and in the TCP/UDP pseudo header
    // (ICMP has none).
    let l4_flags = if proto == IPPROTO_ICMP || p.kind == Kind::LaterFragment {
        None
    } else {
        Some(BPF_F_PSEUDO_HDR as u64 | mangled0 | 4)
    };
    if to.saddr != cur.saddr {
        set_addr(ctx, IP_SADDR, cur.saddr, to.saddr, csum, l4_flags)?;
    }
    if to.daddr != cur.daddr {
        set_addr(ctx, IP_DADDR, cur.daddr, to.daddr, csum, l4_flags)?;
    }
    match p.kind {
        Kind::Tcp | Kind::Udp => {
            if to.sport != cur.sport {
                ctx.l4_csum_replace(csum, cur.sport as u64, to.sport as u64, mangled0 | 2)
                    .map_err(e)?;
                ctx.store(L4, &to.sport, 0).map_err(e)?;
            }
            if to.dport != cur.dport {
                ctx.l4_csum_replace(csum, cur.dport as u64, to.dport as u64, mangled0 | 2)
                    .map_err(e)?;
                ctx.store(L4 + 2, &to.dport, 0).map_err(e)?;
            }
        }
        Kind::EchoRequest if to.sport != cur.sport => {
            ctx.l4_csum_replace(csum, cur.sport as u64, to.sport as u64, 2)
                .map_err(e)?;
            ctx.store(L4 + pn::ICMP_ID, &to.sport, 0).map_err(e)?;
        }
        Kind::EchoReply if to.dport != cur.dport => {
            ctx.l4_csum_replace(csum, cur.dport as u64, to.dport as u64, 2)
                .map_err(e)?;
            ctx.store(L4 + pn::ICMP_ID, &to.dport, 0).map_err(e)?;
        }
        _ => {}
    }
    Ok(())
}

/// Writes an IPv4 address at `at`, updating the header checksum and, with
/// `l4_flags`, the L4 checksum at `l4_csum`.
#[inline(always)]
fn set_addr(
    ctx: &TcContext,
    at: usize,
    old: u32,
    new: u32,
    l4_csum: usize,
    l4_flags: Option<u64>,
) -> Result<(), DropReason> {
    let e = |_| DropReason::NatMalformed;
    if let Some(flags) = l4_flags {
        ctx.l4_csum_replace(l4_csum, old as u64, new as u64, flags)
            .map_err(e)?;
    }
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .map_err(e)?;
    ctx.store(at, &new, 0).map_err(e)?;
    Ok(())
}

#[inline(always)]
fn entry_key(proto: u8, e: &CtEntry) -> CtKey {
    CtKey::new(proto, e.saddr, e.sport, e.daddr, e.dport)
}

/// Decrements the TTL as a router does. `false` if it would expire: the
/// packet then goes to the host stack, which answers with time exceeded.
#[inline(always)]
fn dec_ttl(ctx: &TcContext) -> Result<bool, DropReason> {
    let f = frame::<{ IP_TTL + 2 }>(ctx)?;
    // SAFETY: bounds checked by `frame`.
    let f = unsafe { &*f };
    let (ttl, proto) = (f[IP_TTL], f[IP_TTL + 1]);
    if ttl <= 1 {
        return Ok(false);
    }
    let old = u16::from_ne_bytes([ttl, proto]);
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    let e = |_| DropReason::NatMalformed;
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 2)
        .map_err(e)?;
    ctx.store(IP_TTL, &(ttl - 1), 0).map_err(e)?;
    Ok(true)
}

/// Puts a translated packet on its way to `daddr`: straight into a
/// container's namespace, or out of the interface the FIB names. `None`:
/// leave it to the host stack.
#[inline(always)]
fn deliver(ctx: &TcContext, saddr: u32, daddr: u32) -> Result<Option<Action>, DropReason> {
    // SAFETY: read-only lookup of plain data.
    if let Some(ep) = unsafe { ENDPOINTS.get(&daddr) } {
        return Ok(Some(to_endpoint(ctx, ep)?));
    }
    let mut fib = fib_params(ctx, saddr, daddr);
    // SAFETY: `fib` is a valid, initialised parameter block of the size passed.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    out_by_fib(ctx, r, &fib)
}

#[inline(always)]
fn to_endpoint(ctx: &TcContext, ep: &Endpoint) -> Result<Action, DropReason> {
    // Routed through the host: one hop. (TTL 1 was sent to the stack before
    // any rewrite, see `from_container`/`from_uplink`.)
    if !dec_ttl(ctx)? {
        return Ok(Action::TranslatedPassed);
    }
    let e = |_| DropReason::NatMalformed;
    ctx.store(0, &ep.mac, 0).map_err(e)?;
    ctx.store(6, &ep.host_mac, 0).map_err(e)?;
    // SAFETY: helper call with plain arguments.
    let a = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    Ok(Action::Translated(a as i32))
}

#[inline(always)]
fn fib_params(ctx: &TcContext, saddr: u32, daddr: u32) -> FibParams {
    // SAFETY: an all-zero bpf_fib_lookup is a valid value of the C struct.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    // SAFETY: reading a field of the context the kernel handed us.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = saddr;
    fib.__bindgen_anon_4.ipv4_dst = daddr;
    fib
}

#[inline(always)]
fn out_by_fib(ctx: &TcContext, r: i64, fib: &FibParams) -> Result<Option<Action>, DropReason> {
    if r == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if !dec_ttl(ctx)? {
            return Ok(None);
        }
        let e = |_| DropReason::NatMalformed;
        ctx.store(0, &fib.dmac, 0).map_err(e)?;
        ctx.store(6, &fib.smac, 0).map_err(e)?;
        // SAFETY: helper call with plain arguments.
        let a = unsafe { bpf_redirect(fib.ifindex, 0) };
        return Ok(Some(Action::Translated(a as i32)));
    }
    if r == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
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
        return Ok(Some(Action::Translated(a as i32)));
    }
    // Local, unreachable, needs fragmenting, ...: the stack knows best.
    Ok(None)
}

/// A container's packet to a destination that is not a container: a
/// translated flow in progress, a new hairpin to a published port, a new
/// masqueraded flow, or (`Passed`) plain traffic to the host.
#[inline(always)]
pub fn from_container(ctx: &TcContext, me: &Endpoint, dst: u32) -> Result<Action, DropReason> {
    let p = match read(ctx) {
        Ok(Some(p)) => p,
        // Anything for the host itself goes to the host as it is.
        Ok(None) | Err(_) if is_local(dst) => return Ok(Action::Passed),
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
    if let Some(e) = ct_get(&p.key, p.tcp_flags) {
        let to = entry_key(p.key.proto, &e);
        if renew_on_syn(&p, &to, &e) {
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
    if is_local(dst) {
        if opens_flow(p.key.proto, p.tcp_flags) && p.kind != Kind::EchoRequest {
            if let Some(t) = published(p.key.proto, dst, p.key.dport) {
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

/// A bare SYN on the tuple of a known flow is a new connection reusing it
/// (a client reconnecting from the same port within the old flow's
/// timeout): both entries start over with fresh state (else the new
/// connection would inherit the old one's FIN/RST and its 10 s timeout),
/// and a reply half the LRU evicted comes back. `false`: the old mapping
/// could not be renewed and is gone; treat the SYN as a new flow.
#[inline(always)]
fn renew_on_syn(p: &Pkt, to: &CtKey, e: &CtEntry) -> bool {
    if p.key.proto == IPPROTO_TCP
        && opens_flow(IPPROTO_TCP, p.tcp_flags)
        && e.flags & CT_REPLY == 0
        && ct_create(&p.key, to, e.flags, p.tcp_flags).is_err()
    {
        // Another flow took the reply tuple meanwhile: forget this mapping
        // and let the SYN open a flow afresh (a masqueraded one gets
        // another port).
        let _ = CT.remove(&p.key);
        return false;
    }
    true
}

#[inline(always)]
fn finish(ctx: &TcContext, p: &Pkt, to: &CtKey) -> Result<Action, DropReason> {
    rewrite(ctx, p, to)?;
    match deliver(ctx, to.saddr, to.daddr)? {
        Some(a) => Ok(a),
        None => Ok(Action::TranslatedPassed),
    }
}

/// A container reaching a published port through a host address: to the
/// published container, from its network's gateway (as Docker's proxy
/// shows it), so that the replies come back through here.
#[inline(always)]
fn hairpin(ctx: &TcContext, p: &Pkt, t: NatAddr) -> Result<Action, DropReason> {
    // SAFETY: read-only lookup of plain data.
    let Some(b) = (unsafe { ENDPOINTS.get(&t.addr) }) else {
        return Ok(Action::Passed);
    };
    let new = pick_source(p, b.net.gateway, t.addr, t.port)?;
    ct_create(
        &p.key,
        &new,
        CT_SNAT | CT_DNAT | CT_HAIRPIN | CT_PUBLISHED,
        p.tcp_flags,
    )?;
    rewrite(ctx, p, &new)?;
    let a = to_endpoint(ctx, b)?;
    Ok(Action::New(a.verdict()))
}

/// A new flow from a container to beyond the host: leaves with the address
/// the FIB picks for its way out.
#[inline(always)]
fn masquerade(ctx: &TcContext, p: &Pkt) -> Result<Action, DropReason> {
    let mut fib = fib_params(ctx, p.key.saddr, p.key.daddr);
    // SAFETY: `fib` is a valid parameter block of the size passed.
    let r = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SRC,
        )
    };
    if r != BPF_FIB_LKUP_RET_SUCCESS as i64 && r != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Ok(Action::Passed);
    }
    // SAFETY: the lookup filled the AF_INET member.
    let src = unsafe { fib.__bindgen_anon_3.ipv4_src };
    if src == 0 {
        return Ok(Action::Passed);
    }
    let new = pick_source(p, src, p.key.daddr, p.key.dport)?;
    ct_create(&p.key, &new, CT_SNAT, p.tcp_flags)?;
    rewrite(ctx, p, &new)?;
    match out_by_fib(ctx, r, &fib)? {
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
    let p = match read(ctx) {
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
    if let Some(e) = ct_get(&p.key, p.tcp_flags) {
        let to = entry_key(p.key.proto, &e);
        if renew_on_syn(&p, &to, &e) {
            return finish(ctx, &p, &to);
        }
    }
    if p.kind == Kind::EchoRequest || p.kind == Kind::EchoReply || p.kind == Kind::LaterFragment {
        return Ok(Action::Passed);
    }
    if !opens_flow(p.key.proto, p.tcp_flags) || !is_local(dst) {
        return Ok(Action::Passed);
    }
    let Some(t) = published(p.key.proto, dst, p.key.dport) else {
        return Ok(Action::Passed);
    };
    // SAFETY: read-only lookup of plain data.
    let Some(c) = (unsafe { ENDPOINTS.get(&t.addr) }) else {
        return Ok(Action::Passed);
    };
    // The client's address is kept: the container sees who connects.
    let new = CtKey::new(p.key.proto, p.key.saddr, p.key.sport, t.addr, t.port);
    ct_create(&p.key, &new, CT_DNAT | CT_PUBLISHED, p.tcp_flags)?;
    rewrite(ctx, &p, &new)?;
    let a = to_endpoint(ctx, c)?;
    Ok(Action::New(a.verdict()))
}

/// An ICMP error about a translated flow. The quoted packet belongs to the
/// flow's other direction: if the flow's packets arriving here as `key` are
/// rewritten to `e`, the quoted packet becomes `e` reversed, the error goes
/// where `e` goes, and comes from `e`'s source when the flow's own peer sent
/// it (a router on the way keeps its address). The quoted header's checksum
/// is updated with its addresses, which leaves the ICMP sum over it
/// unchanged; the quoted ports move the ICMP checksum.
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
    let Some(e) = ct_live(&key) else {
        return Ok(Action::Passed);
    };
    let err = |_| DropReason::NatMalformed;
    let outer_src = if p.key.saddr == key.saddr {
        e.saddr
    } else {
        p.key.saddr
    };
    let outer_dst = e.daddr;
    if outer_src != p.key.saddr {
        ctx.l3_csum_replace(IP_CSUM, p.key.saddr as u64, outer_src as u64, 4)
            .map_err(err)?;
        ctx.store(IP_SADDR, &outer_src, 0).map_err(err)?;
    }
    if outer_dst != p.key.daddr {
        ctx.l3_csum_replace(IP_CSUM, p.key.daddr as u64, outer_dst as u64, 4)
            .map_err(err)?;
        ctx.store(IP_DADDR, &outer_dst, 0).map_err(err)?;
    }
    // Quoted source: key.daddr -> e.daddr; quoted destination: key.saddr -> e.saddr.
    if key.daddr != e.daddr {
        ctx.l3_csum_replace(INNER_IP + 10, key.daddr as u64, e.daddr as u64, 4)
            .map_err(err)?;
        ctx.store(INNER_IP + 12, &e.daddr, 0).map_err(err)?;
    }
    if key.saddr != e.saddr {
        ctx.l3_csum_replace(INNER_IP + 10, key.saddr as u64, e.saddr as u64, 4)
            .map_err(err)?;
        ctx.store(INNER_IP + 16, &e.saddr, 0).map_err(err)?;
    }
    let icmp_csum = L4 + pn::ICMP_CSUM;
    let icmp = key.proto == IPPROTO_ICMP;
    if key.dport != e.dport {
        let at = if icmp {
            INNER_L4 + pn::ICMP_ID
        } else {
            INNER_L4
        };
        ctx.l4_csum_replace(icmp_csum, key.dport as u64, e.dport as u64, 2)
            .map_err(err)?;
        ctx.store(at, &e.dport, 0).map_err(err)?;
    }
    if key.sport != e.sport {
        let at = if icmp {
            INNER_L4 + pn::ICMP_ID
        } else {
            INNER_L4 + 2
        };
        ctx.l4_csum_replace(icmp_csum, key.sport as u64, e.sport as u64, 2)
            .map_err(err)?;
        ctx.store(at, &e.sport, 0).map_err(err)?;
    }
    match deliver(ctx, outer_src, outer_dst)? {
        Some(a) => Ok(a),
        None => Ok(Action::TranslatedPassed),
    }
}

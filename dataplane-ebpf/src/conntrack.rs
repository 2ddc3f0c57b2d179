//! Connection tracking of translated flows: the flow a packet belongs to
//! ([`read`], with `FRAGS` for later fragments), the `CT` entries of a flow
//! (found, refreshed, created as a pair, renewed on a reused tuple) and the
//! choice of a free source port for a new one.
//!
//! Entries are keyed by the tuple a program sees and hold the tuple to
//! rewrite to; the decisions and the entry arithmetic are
//! `dataplane_common::nat`'s (host-tested).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use dataplane_common::{
    ct_alive, nat_pair_for, nat_port_candidate, opens_flow,
    packet::nat::{self as pn, Frag, Kind, IP_TTL, L4, L4_FRAME, TCP_FRAME},
    seen_bits, CtEntry, CtKey, DropReason, FragPorts, Ipv4Wire, CT_REFRESH_NS, CT_REPLY,
    CT_SERVICE, CT_TUNNEL, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, NAT_ATTEMPTS, NO_BACKEND,
    SEEN_CLOSING, TCP_RST,
};

use crate::{
    ctx::frame,
    maps::{CT, FRAGS},
};

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
pub fn get(key: &CtKey, tcp_flags: u8) -> Option<CtEntry> {
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
pub fn live(key: &CtKey) -> Option<CtEntry> {
    // SAFETY: read-only lookup of plain data.
    let e = unsafe { CT.get(key) }?;
    ct_alive(e, key.proto, now()).then_some(*e)
}

/// Records a new flow first seen as `orig` and rewritten to `new`, claiming
/// the reply tuple first so that two flows never share one.
#[inline(always)]
pub fn create(orig: &CtKey, new: &CtKey, flags: u16, tcp_flags: u8) -> Result<(), DropReason> {
    create_for(orig, new, flags, tcp_flags, NO_BACKEND, 0)
}

/// [`create`] for a flow that names its replica (`backend`, a `BACKENDS`
/// id) and, on a replica's host, the VTEP its replies go back to.
#[inline(always)]
pub fn create_for(
    orig: &CtKey,
    new: &CtKey,
    flags: u16,
    tcp_flags: u8,
    backend: u32,
    vtep: Ipv4Wire,
) -> Result<(), DropReason> {
    let seen = seen_bits(orig.proto, tcp_flags);
    let (fwd, reply_key, rev) = nat_pair_for(orig, new, flags, seen, now(), backend, vtep);
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
    match live(&new.reversed()) {
        None => true,
        // A service flow to the same replica that has closed (FIN or RST
        // seen): its client may open the same tuple again through another
        // host, or through this one after another host, before the closing
        // timeout ends (a client's port meets one replica through two
        // hosts, or a NAT in front of many clients).
        Some(e) if e.flags & (CT_TUNNEL | CT_SERVICE) != 0 && e.seen & SEEN_CLOSING != 0 => true,
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
pub fn pick_source(p: &Pkt, saddr: u32, daddr: u32, dport: u16) -> Result<CtKey, DropReason> {
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

/// The tuple an entry rewrites to, as a key.
#[inline(always)]
pub fn entry_key(proto: u8, e: &CtEntry) -> CtKey {
    CtKey::new(proto, e.saddr, e.sport, e.daddr, e.dport)
}

/// A bare SYN on the tuple of a known flow is a new connection reusing it
/// (a client reconnecting from the same port within the old flow's
/// timeout): both entries start over with fresh state (else the new
/// connection would inherit the old one's FIN/RST and its 10 s timeout),
/// and a reply half the LRU evicted comes back. `false`: the old mapping
/// could not be renewed and is gone; treat the SYN as a new flow.
#[inline(always)]
pub fn renew_on_syn(p: &Pkt, to: &CtKey, e: &CtEntry) -> bool {
    if p.key.proto == IPPROTO_TCP
        && opens_flow(IPPROTO_TCP, p.tcp_flags)
        && e.flags & CT_REPLY == 0
        && create_for(&p.key, to, e.flags, p.tcp_flags, e.backend, e.vtep).is_err()
    {
        // Another flow took the reply tuple meanwhile: forget this mapping
        // and let the SYN open a flow afresh (a masqueraded one gets
        // another port).
        let _ = CT.remove(&p.key);
        return false;
    }
    true
}

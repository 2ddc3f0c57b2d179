//! Changing frames: the same-network redirect's MAC, the ARP responder's
//! reply, and the address translation rewrites with their checksums.
//!
//! Translation rewrites go through the kernel's store and checksum helpers,
//! which keep offloaded (`CHECKSUM_PARTIAL`) and `CHECKSUM_COMPLETE`
//! packets consistent; direct packet pointers are dead after them, so
//! callers read everything first.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{
    packet::{
        arp, eth,
        nat::{self as pn, Kind, INNER_IP, INNER_L4, IP_CSUM, IP_DADDR, IP_SADDR, IP_TTL, L4},
    },
    CtEntry, CtKey, DropReason, Ipv4Wire, IPPROTO_ICMP, IPPROTO_UDP,
};

use crate::{conntrack::Pkt, ctx::frame};

/// Writes `v` into the frame at `offset` with `bpf_skb_store_bytes`.
///
/// Every write to the packet goes through the kernel's helpers, never
/// through a packet pointer: one store through a pointer anywhere in a
/// program makes the verifier prepend an unclone (`bpf_skb_pull_data(skb,
/// 0)` whenever `skb->cloned`) to the whole program, and every TCP data
/// segment is a clone (TCP keeps the original for retransmission). That
/// prologue copied the head of every segment on the container-to-container
/// path; the helper unclones only the packets it writes to. Check with
/// `bpftool prog dump xlated`: the program must not start with a read of
/// `skb->cloned` and a call of `bpf_skb_pull_data`.
#[inline(always)]
fn store<T>(ctx: &TcContext, offset: usize, v: &T) -> Result<(), DropReason> {
    // Fails only if the frame is shorter than `offset + size_of::<T>()`
    // (callers checked it is not) or if uncloning the head runs out of memory.
    ctx.store(offset, v, 0).map_err(|_| DropReason::Malformed)
}

/// Sends the frame straight into the namespace of the endpoint behind
/// host-side veth `ifindex`, addressed to `mac` (`hdr` is the frame's
/// Ethernet header): the same-network switch. `bpf_redirect_peer`'s verdict.
#[inline(always)]
pub(crate) fn to_peer(
    ctx: &TcContext,
    hdr: &[u8; eth::HLEN],
    ifindex: u32,
    mac: &[u8; 6],
) -> Result<i32, DropReason> {
    if !eth::dst_is(hdr, mac) {
        store(ctx, eth::DST, mac)?;
    }
    // SAFETY: helper call with plain arguments.
    Ok(unsafe { bpf_redirect_peer(ifindex, 0) as i32 })
}

/// Turns the ARP request `f` into the reply `ip is-at mac` (built on the
/// stack and stored whole, see [`store`]) and sends it back out of the veth
/// it came in on (`ifindex`), to the asking container.
#[inline(always)]
pub(crate) fn arp_reply(
    ctx: &TcContext,
    f: &[u8; arp::FRAME_LEN],
    mac: &[u8; 6],
    ip: Ipv4Wire,
    ifindex: u32,
) -> Result<i32, DropReason> {
    let mut reply = *f;
    arp::write_reply(&mut reply, mac, ip);
    store(ctx, 0, &reply)?;
    // SAFETY: helper call with plain arguments.
    Ok(unsafe { bpf_redirect(ifindex, 0) as i32 })
}

/// Rewrites the packet whose tuple is `cur` to `to`, fixing checksums.
#[inline(always)]
pub fn tuple(ctx: &TcContext, p: &Pkt, to: &CtKey) -> Result<(), DropReason> {
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

/// Decrements the TTL as a router does. `false` if it would expire: the
/// packet then goes to the host stack, which answers with time exceeded.
#[inline(always)]
pub fn dec_ttl(ctx: &TcContext) -> Result<bool, DropReason> {
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

/// Writes the Ethernet addresses of the next hop.
#[inline(always)]
pub fn set_macs(ctx: &TcContext, dst: &[u8; 6], src: &[u8; 6]) -> Result<(), DropReason> {
    let e = |_| DropReason::NatMalformed;
    ctx.store(0, dst, 0).map_err(e)?;
    ctx.store(6, src, 0).map_err(e)?;
    Ok(())
}

/// Rewrites an ICMP error `p` about the flow seen here as `key`, whose
/// entry rewrites it to `e`, so that it leaves `outer_src -> outer_dst`
/// (see `nat::icmp_error`). The quoted packet belongs to the flow's other
/// direction and becomes `e` reversed: its header's checksum is updated with
/// its addresses, which leaves the ICMP sum over it unchanged; the quoted
/// ports move the ICMP checksum.
#[inline(always)]
pub fn icmp_error(
    ctx: &TcContext,
    p: &Pkt,
    key: &CtKey,
    e: &CtEntry,
    outer_src: Ipv4Wire,
    outer_dst: Ipv4Wire,
) -> Result<(), DropReason> {
    let err = |_| DropReason::NatMalformed;
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
    Ok(())
}

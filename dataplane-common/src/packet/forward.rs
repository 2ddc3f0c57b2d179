//! The switching decision for a frame a container sent (it arrives on the
//! ingress of the host side of the container's veth).

use super::arp::{self, Arp};
use crate::{DropReason, Endpoint, Ipv4Wire, Network, EP_REMOTE, NET_ICC_DISABLED, NET_INTERNAL};

/// What to do with an IPv4 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver straight into the namespace of the endpoint behind host-side
    /// veth `ifindex` (bpf_redirect_peer), with destination MAC `mac`.
    Redirect {
        ifindex: u32,
        mac: [u8; 6],
    },
    /// Encapsulate in VXLAN with `vni` to the host at underlay address
    /// `vtep`, where the endpoint with MAC `mac` lives ([`EP_REMOTE`]).
    Encap {
        vtep: Ipv4Wire,
        mac: [u8; 6],
        vni: u32,
    },
    /// Hand to the host stack: the gateway, the host, or beyond.
    Pass,
    Drop(DropReason),
}

/// What to do with an ARP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpVerdict {
    /// Answer it ourselves: `ip is-at mac`, sent back to the asker.
    Reply {
        mac: [u8; 6],
        ip: Ipv4Wire,
    },
    /// Hand to the host stack (replies to the host's own requests, gratuitous ARP).
    Pass,
    /// A request for an address of the sender's overlay network that no
    /// endpoint has: flood it to the network's static VTEPs (if it has
    /// any; otherwise [`DropReason::ArpUnknownTarget`]), where it may be
    /// the address of a container behind a kernel vxlan host that has not
    /// sent anything yet. See [`super::vxlan::floods`].
    Flood,
    Drop(DropReason),
}

/// Decides an IPv4 frame from endpoint `me` (on `net`), addressed `src -> dst`,
/// where `peer` is the endpoint that owns `dst`, if any. `linked` says whether
/// `src -> dst` is a `--link`ed pair; it is asked only on `icc=false`
/// networks, so other networks pay no lookup for it. A peer on another host
/// ([`EP_REMOTE`]) passes the same checks as a local one and is reached
/// through the tunnel, with the VNI of the sender's network (0, a network
/// that is no overlay, cannot be).
#[inline(always)]
pub fn decide_ipv4(
    me: &Endpoint,
    net: &Network,
    src: Ipv4Wire,
    dst: Ipv4Wire,
    peer: Option<&Endpoint>,
    linked: impl FnOnce() -> bool,
) -> Verdict {
    if src != me.ip {
        return Verdict::Drop(DropReason::SpoofedIp);
    }
    if let Some(peer) = peer {
        if peer.network_id != me.network_id {
            return Verdict::Drop(DropReason::CrossNetwork);
        }
        if net.flags & NET_ICC_DISABLED != 0 && !linked() {
            return Verdict::Drop(DropReason::IccDenied);
        }
        if peer.flags & EP_REMOTE != 0 {
            if net.vni == 0 {
                return Verdict::Drop(DropReason::TunnelDisabled);
            }
            return Verdict::Encap {
                vtep: peer.vtep,
                mac: peer.mac,
                vni: net.vni,
            };
        }
        return Verdict::Redirect {
            ifindex: peer.ifindex,
            mac: peer.mac,
        };
    }
    if net.flags & NET_INTERNAL != 0 && !net.contains(dst) {
        return Verdict::Drop(DropReason::InternalNetwork);
    }
    Verdict::Pass
}

/// Decides a packet from endpoint `me` (on `net`, source `src`) to the
/// service VIP `vip` whose flow goes to `replica` (its endpoint, if the
/// daemon has projected it): the way to the replica, with the checks of
/// direct traffic to it ([`decide_ipv4`]: spoofed source, another network,
/// `icc=false` unless `linked` names the client and the replica). A VIP
/// outside the sender's subnet is another network's
/// ([`DropReason::CrossNetwork`]); a replica with no endpoint entry is
/// [`DropReason::ServiceNoBackend`].
#[inline(always)]
pub fn decide_vip(
    me: &Endpoint,
    net: &Network,
    src: Ipv4Wire,
    vip: Ipv4Wire,
    replica: Option<&Endpoint>,
    linked: impl FnOnce() -> bool,
) -> Verdict {
    if !net.contains(vip) {
        return Verdict::Drop(DropReason::CrossNetwork);
    }
    let Some(r) = replica else {
        return Verdict::Drop(DropReason::ServiceNoBackend);
    };
    match decide_ipv4(me, net, src, r.ip, Some(r), linked) {
        // Never: a peer is given.
        Verdict::Pass => Verdict::Drop(DropReason::ServiceNoBackend),
        v => v,
    }
}

/// Decides an ARP frame from endpoint `me` (on `net`); `target` is the endpoint
/// that owns the requested address, if any.
#[inline(always)]
pub fn decide_arp(me: &Endpoint, net: &Network, a: &Arp, target: Option<&Endpoint>) -> ArpVerdict {
    decide_arp_vip(me, net, a, target, |_| false)
}

/// [`decide_arp`], where `is_vip` says whether an address of the sender's
/// subnet that no endpoint has is a service VIP (asked only then): a VIP
/// is answered with the sender's gateway MAC, so that a container whose
/// sockets no hook translates sends its packets to the VIP here, where
/// `from_container` balances them.
#[inline(always)]
pub fn decide_arp_vip(
    me: &Endpoint,
    net: &Network,
    a: &Arp,
    target: Option<&Endpoint>,
    is_vip: impl FnOnce(Ipv4Wire) -> bool,
) -> ArpVerdict {
    if a.sha != me.mac {
        return ArpVerdict::Drop(DropReason::SpoofedMac);
    }
    // A zero sender address is an RFC 5227 address probe; anything else must
    // be the endpoint's own address.
    if a.spa != me.ip && a.spa != 0 {
        return ArpVerdict::Drop(DropReason::SpoofedIp);
    }
    if a.op == arp::OP_REPLY || a.tpa == me.ip {
        return ArpVerdict::Pass;
    }
    if a.tpa == net.gateway {
        return ArpVerdict::Reply {
            mac: me.host_mac,
            ip: a.tpa,
        };
    }
    match target {
        Some(t) if t.network_id == me.network_id => ArpVerdict::Reply {
            mac: t.mac,
            ip: a.tpa,
        },
        Some(_) => ArpVerdict::Drop(DropReason::ArpUnknownTarget),
        None if net.contains(a.tpa) && is_vip(a.tpa) => ArpVerdict::Reply {
            mac: me.host_mac,
            ip: a.tpa,
        },
        None if super::vxlan::floods(net, a) => ArpVerdict::Flood,
        None => ArpVerdict::Drop(DropReason::ArpUnknownTarget),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::{ipv4_wire, packet::arp::FRAME_LEN};

    const NET: Network = Network {
        subnet: ipv4_wire([172, 18, 0, 0]),
        mask: ipv4_wire([255, 255, 0, 0]),
        gateway: ipv4_wire([172, 18, 0, 1]),
        flags: 0,
        vni: 0,
    };

    fn ep(last: u8, network_id: u32, ifindex: u32) -> Endpoint {
        Endpoint {
            ifindex,
            network_id,
            ip: ipv4_wire([172, 18, 0, last]),
            mac: [0x02, 0x42, 0xac, 0x12, 0, last],
            host_mac: [0x0e, 0, 0, 0, 0, last],
            flags: 0,
            vtep: 0,
            net: NET,
        }
    }

    #[test]
    fn same_network_peer_is_redirected_with_its_mac() {
        let (a, b) = (ep(2, 1, 10), ep(3, 1, 11));
        assert_eq!(
            decide_ipv4(&a, &NET, a.ip, b.ip, Some(&b), || false),
            Verdict::Redirect {
                ifindex: 11,
                mac: b.mac
            }
        );
    }

    fn remote(last: u8, network_id: u32) -> Endpoint {
        Endpoint {
            ifindex: 0,
            host_mac: [0; 6],
            flags: crate::EP_REMOTE,
            vtep: ipv4_wire([192, 0, 2, 9]),
            ..ep(last, network_id, 0)
        }
    }

    const OVERLAY: Network = Network { vni: 4242, ..NET };

    #[test]
    fn a_remote_peer_is_reached_through_the_tunnel_after_the_same_checks() {
        let a = Endpoint {
            net: OVERLAY,
            ..ep(2, 1, 10)
        };
        let r = remote(3, 1);
        assert_eq!(
            decide_ipv4(&a, &OVERLAY, a.ip, r.ip, Some(&r), || false),
            Verdict::Encap {
                vtep: r.vtep,
                mac: r.mac,
                vni: 4242
            }
        );
        // Another network's remote endpoint, a spoofed source, icc=false.
        let other = remote(3, 2);
        assert_eq!(
            decide_ipv4(&a, &OVERLAY, a.ip, other.ip, Some(&other), || false),
            Verdict::Drop(DropReason::CrossNetwork)
        );
        assert_eq!(
            decide_ipv4(&a, &OVERLAY, r.ip, r.ip, Some(&r), || false),
            Verdict::Drop(DropReason::SpoofedIp)
        );
        let no_icc = Network {
            flags: NET_ICC_DISABLED,
            ..OVERLAY
        };
        assert_eq!(
            decide_ipv4(&a, &no_icc, a.ip, r.ip, Some(&r), || false),
            Verdict::Drop(DropReason::IccDenied)
        );
        assert!(matches!(
            decide_ipv4(&a, &no_icc, a.ip, r.ip, Some(&r), || true),
            Verdict::Encap { .. }
        ));
        // A network without a VNI has no tunnel to send it through.
        assert_eq!(
            decide_ipv4(&a, &NET, a.ip, r.ip, Some(&r), || false),
            Verdict::Drop(DropReason::TunnelDisabled)
        );
    }

    #[test]
    fn arp_for_a_remote_peer_is_answered_with_its_mac() {
        let a = ep(2, 1, 10);
        let r = remote(3, 1);
        let f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 3]);
        let parsed = arp::parse(&f).unwrap();
        assert_eq!(
            decide_arp(&a, &OVERLAY, &parsed, Some(&r)),
            ArpVerdict::Reply {
                mac: r.mac,
                ip: r.ip
            }
        );
        assert_eq!(
            decide_arp(&a, &OVERLAY, &parsed, Some(&remote(3, 2))),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
    }

    #[test]
    fn arp_for_an_unknown_address_of_an_overlay_is_flooded() {
        let a = Endpoint {
            net: OVERLAY,
            ..ep(2, 1, 10)
        };
        let req = |tpa| arp::parse(&arp_request(a.mac, [172, 18, 0, 2], tpa)).unwrap();
        assert_eq!(
            decide_arp(&a, &OVERLAY, &req([172, 18, 0, 77]), None),
            ArpVerdict::Flood
        );
        // Known addresses are answered, the gateway too; another network's
        // endpoint is no unknown address.
        assert!(matches!(
            decide_arp(&a, &OVERLAY, &req([172, 18, 0, 1]), None),
            ArpVerdict::Reply { .. }
        ));
        assert_eq!(
            decide_arp(&a, &OVERLAY, &req([172, 18, 0, 3]), Some(&remote(3, 2))),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
        // Outside the subnet, or on a network without a VNI: dropped as before.
        assert_eq!(
            decide_arp(&a, &OVERLAY, &req([10, 0, 0, 1]), None),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
        assert_eq!(
            decide_arp(&a, &NET, &req([172, 18, 0, 77]), None),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
    }

    #[test]
    fn other_network_peer_is_dropped() {
        let (a, b) = (ep(2, 1, 10), ep(3, 2, 11));
        assert_eq!(
            decide_ipv4(&a, &NET, a.ip, b.ip, Some(&b), || false),
            Verdict::Drop(DropReason::CrossNetwork)
        );
    }

    #[test]
    fn spoofed_source_is_dropped_even_towards_a_peer() {
        let (a, b) = (ep(2, 1, 10), ep(3, 1, 11));
        let forged = ipv4_wire([172, 18, 0, 99]);
        assert_eq!(
            decide_ipv4(&a, &NET, forged, b.ip, Some(&b), || false),
            Verdict::Drop(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn gateway_host_and_outside_go_to_the_stack() {
        let a = ep(2, 1, 10);
        assert_eq!(
            decide_ipv4(&a, &NET, a.ip, NET.gateway, None, || false),
            Verdict::Pass
        );
        assert_eq!(
            decide_ipv4(&a, &NET, a.ip, ipv4_wire([10, 0, 0, 1]), None, || false),
            Verdict::Pass
        );
    }

    #[test]
    fn icc_disabled_allows_only_linked_pairs() {
        let (a, b) = (ep(2, 1, 10), ep(3, 1, 11));
        let no_icc = Network {
            flags: NET_ICC_DISABLED,
            ..NET
        };
        assert_eq!(
            decide_ipv4(&a, &no_icc, a.ip, b.ip, Some(&b), || false),
            Verdict::Drop(DropReason::IccDenied)
        );
        assert_eq!(
            decide_ipv4(&a, &no_icc, a.ip, b.ip, Some(&b), || true),
            Verdict::Redirect {
                ifindex: 11,
                mac: b.mac
            }
        );
        // The gateway and the host stay reachable.
        assert_eq!(
            decide_ipv4(&a, &no_icc, a.ip, no_icc.gateway, None, || false),
            Verdict::Pass
        );
        // With icc on, the link table is never consulted.
        let asked = core::cell::Cell::new(false);
        let _ = decide_ipv4(&a, &NET, a.ip, b.ip, Some(&b), || {
            asked.set(true);
            false
        });
        assert!(!asked.get());
    }

    #[test]
    fn internal_network_keeps_traffic_in_its_subnet() {
        let a = ep(2, 1, 10);
        let internal = Network {
            flags: NET_INTERNAL,
            ..NET
        };
        assert_eq!(
            decide_ipv4(&a, &internal, a.ip, internal.gateway, None, || false),
            Verdict::Pass
        );
        assert_eq!(
            decide_ipv4(&a, &internal, a.ip, ipv4_wire([10, 0, 0, 1]), None, || {
                false
            }),
            Verdict::Drop(DropReason::InternalNetwork)
        );
    }

    fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&sha);
        f[12..14].copy_from_slice(&[0x08, 0x06]);
        f[14..22].copy_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
        f[22..28].copy_from_slice(&sha);
        f[28..32].copy_from_slice(&spa);
        f[38..42].copy_from_slice(&tpa);
        f
    }

    #[test]
    fn arp_for_gateway_is_answered_with_host_mac() {
        let a = ep(2, 1, 10);
        let f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 1]);
        let parsed = arp::parse(&f).unwrap();
        assert_eq!(
            decide_arp(&a, &NET, &parsed, None),
            ArpVerdict::Reply {
                mac: a.host_mac,
                ip: NET.gateway
            }
        );
    }

    #[test]
    fn arp_for_peer_is_answered_only_on_the_same_network() {
        let (a, b, c) = (ep(2, 1, 10), ep(3, 1, 11), ep(4, 2, 12));
        let f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 3]);
        let parsed = arp::parse(&f).unwrap();
        assert_eq!(
            decide_arp(&a, &NET, &parsed, Some(&b)),
            ArpVerdict::Reply {
                mac: b.mac,
                ip: b.ip
            }
        );
        assert_eq!(
            decide_arp(&a, &NET, &parsed, Some(&c)),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
        assert_eq!(
            decide_arp(&a, &NET, &parsed, None),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
    }

    #[test]
    fn arp_with_forged_sender_is_dropped() {
        let a = ep(2, 1, 10);
        let f = arp_request([2, 0, 0, 0, 0, 9], [172, 18, 0, 2], [172, 18, 0, 1]);
        assert_eq!(
            decide_arp(&a, &NET, &arp::parse(&f).unwrap(), None),
            ArpVerdict::Drop(DropReason::SpoofedMac)
        );
        let f = arp_request(a.mac, [172, 18, 0, 9], [172, 18, 0, 1]);
        assert_eq!(
            decide_arp(&a, &NET, &arp::parse(&f).unwrap(), None),
            ArpVerdict::Drop(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn arp_reply_is_written_in_place() {
        let a = ep(2, 1, 10);
        let mut f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 1]);
        arp::write_reply(&mut f, &a.host_mac, NET.gateway);
        assert_eq!(&f[0..6], &a.mac, "back to the asker");
        assert_eq!(&f[6..12], &a.host_mac);
        assert_eq!(&f[20..22], &[0, 2], "op reply");
        assert_eq!(&f[22..28], &a.host_mac, "sha");
        assert_eq!(&f[28..32], &[172, 18, 0, 1], "spa");
        assert_eq!(&f[32..38], &a.mac, "tha");
        assert_eq!(&f[38..42], &[172, 18, 0, 2], "tpa");
    }

    #[test]
    fn non_ethernet_arp_is_refused() {
        let a = ep(2, 1, 10);
        let mut f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 1]);
        f[15] = 6; // htype 6 (IEEE 802)
        assert_eq!(arp::parse(&f), Err(DropReason::BadArp));
        let mut f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 1]);
        f[21] = 9; // op 9
        assert_eq!(arp::parse(&f), Err(DropReason::BadArp));
    }

    #[test]
    fn bad_ipv4_header_is_malformed() {
        let mut f = [0u8; crate::packet::ipv4::FRAME_MIN];
        f[14] = 0x44; // IHL 4
        assert_eq!(crate::packet::ipv4::addrs(&f), Err(DropReason::Malformed));
        f[14] = 0x65; // version 6
        assert_eq!(crate::packet::ipv4::addrs(&f), Err(DropReason::Malformed));
        f[14] = 0x45;
        f[26..30].copy_from_slice(&[172, 18, 0, 2]);
        f[30..34].copy_from_slice(&[172, 18, 0, 3]);
        assert_eq!(
            crate::packet::ipv4::addrs(&f),
            Ok((ipv4_wire([172, 18, 0, 2]), ipv4_wire([172, 18, 0, 3])))
        );
    }

    #[test]
    fn a_vip_goes_to_its_replica_after_the_checks_of_direct_traffic() {
        let vip = ipv4_wire([172, 18, 0, 100]);
        let (a, l) = (ep(2, 1, 10), ep(3, 1, 11));
        assert_eq!(
            decide_vip(&a, &NET, a.ip, vip, Some(&l), || false),
            Verdict::Redirect {
                ifindex: 11,
                mac: l.mac
            }
        );
        let a = Endpoint { net: OVERLAY, ..a };
        let r = remote(4, 1);
        assert_eq!(
            decide_vip(&a, &OVERLAY, a.ip, vip, Some(&r), || false),
            Verdict::Encap {
                vtep: r.vtep,
                mac: r.mac,
                vni: 4242
            }
        );
        // No replica entry; a VIP outside the sender's subnet; a replica
        // of another network; a spoofed sender.
        assert_eq!(
            decide_vip(&a, &OVERLAY, a.ip, vip, None, || false),
            Verdict::Drop(DropReason::ServiceNoBackend)
        );
        assert_eq!(
            decide_vip(
                &a,
                &OVERLAY,
                a.ip,
                ipv4_wire([10, 0, 0, 100]),
                Some(&r),
                || false
            ),
            Verdict::Drop(DropReason::CrossNetwork)
        );
        let other = remote(4, 2);
        assert_eq!(
            decide_vip(&a, &OVERLAY, a.ip, vip, Some(&other), || false),
            Verdict::Drop(DropReason::CrossNetwork)
        );
        assert_eq!(
            decide_vip(&a, &OVERLAY, l.ip, vip, Some(&r), || false),
            Verdict::Drop(DropReason::SpoofedIp)
        );
        // icc=false: only a linked client reaches the replica.
        let closed = Network {
            flags: NET_ICC_DISABLED,
            ..NET
        };
        let a = ep(2, 1, 10);
        assert_eq!(
            decide_vip(&a, &closed, a.ip, vip, Some(&l), || false),
            Verdict::Drop(DropReason::IccDenied)
        );
        assert_eq!(
            decide_vip(&a, &closed, a.ip, vip, Some(&l), || true),
            Verdict::Redirect {
                ifindex: 11,
                mac: l.mac
            }
        );
    }

    #[test]
    fn arp_for_a_vip_is_answered_with_the_gateway_mac() {
        let a = ep(2, 1, 10);
        let vip = ipv4_wire([172, 18, 0, 100]);
        let f = arp_request(a.mac, [172, 18, 0, 2], [172, 18, 0, 100]);
        let req = arp::parse(&f).expect("request");
        assert_eq!(
            decide_arp_vip(&a, &NET, &req, None, |ip| ip == vip),
            ArpVerdict::Reply {
                mac: a.host_mac,
                ip: vip
            }
        );
        // Not a VIP: as before.
        assert_eq!(
            decide_arp_vip(&a, &NET, &req, None, |_| false),
            ArpVerdict::Drop(DropReason::ArpUnknownTarget)
        );
        // An address outside the subnet is never asked about.
        let f = arp_request(a.mac, [172, 18, 0, 2], [10, 0, 0, 100]);
        let req = arp::parse(&f).expect("request");
        let asked = core::cell::Cell::new(false);
        let v = decide_arp_vip(&a, &NET, &req, None, |_| {
            asked.set(true);
            true
        });
        assert_eq!(v, ArpVerdict::Drop(DropReason::ArpUnknownTarget));
        assert!(!asked.get());
    }
}

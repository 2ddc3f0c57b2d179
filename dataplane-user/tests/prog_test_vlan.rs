//! VLAN networks as the kernel runs them: BPF_PROG_TEST_RUN of the trunk
//! half of `from_uplink` (on the parent) and of `from_container` on a VLAN
//! network's veth, byte for byte.
//!
//! Under BPF_PROG_TEST_RUN a received frame keeps its tag in the frame
//! (the kernel's receive path, which moves it into the skb's metadata
//! before TC runs, is not taken), so the pop is seen in the output bytes.
//! A push goes into the skb's metadata (`bpf_skb_vlan_push`), which the
//! output does not show: the container cases check that the frame itself
//! is untouched and that it goes out; the tag on the wire is checked by
//! `tests/tests/lan.rs` with tshark and a tagged peer. The copies of a
//! flood are real (`bpf_clone_redirect` transmits even under a test run)
//! and are read back on the containers' ends with AF_PACKET.
//!
//! Root only; each test in a private network namespace with its own pins.

mod common;

use common::{container_veths, in_private_netns, ip_cmd, run_prog, Prog, Scratch};
use dataplane_common::{
    ipv4_wire, Endpoint, FdbKey, Network, TrunkKey, VlanNet, IFINDEX_BASE, NET_VLAN,
    PROG_VLAN_TRUNK,
};
use dataplane_user::bpf::Datapath;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const NUM: u32 = 5;
const VID: u16 = 100;
const LAN_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x50];
const LAN_IP: [u8; 4] = [10, 100, 0, 50];
const P_IPV4: u16 = 0x0800;
const P_ARP: u16 = 0x0806;
const P_8021Q: u16 = 0x8100;
const P_8021AD: u16 = 0x88a8;

fn net() -> Network {
    Network {
        subnet: ipv4_wire([10, 100, 0, 0]),
        mask: ipv4_wire([255, 255, 255, 0]),
        gateway: ipv4_wire([10, 100, 0, 1]),
        flags: NET_VLAN,
        vni: 0,
    }
}

fn endpoint(ifindex: u32, last: u8) -> Endpoint {
    Endpoint {
        ifindex,
        network_id: NUM,
        ip: ipv4_wire([10, 100, 0, last]),
        mac: [0x02, 0x42, 10, 100, 0, last],
        host_mac: [0xee, 0xee, 10, 100, 0, last],
        flags: 0,
        vtep: 0,
        net: net(),
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], tags: &[(u16, u16)], proto: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&proto.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4/UDP with a valid header checksum.
fn udp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = common::csum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90, 0, 12, 0, 0]);
    p.extend_from_slice(b"vlan");
    p
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, 1];
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa);
    p.extend_from_slice(&[0; 6]);
    p.extend_from_slice(&tpa);
    eth([0xff; 6], sha, &[], P_ARP, &p)
}

struct Lab {
    dp: Datapath,
    _pins: Scratch,
    a: Endpoint,
    b: Endpoint,
    trunk: u32,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let a = endpoint(IFINDEX_BASE + 1, 2);
        let b = endpoint(IFINDEX_BASE + 2, 3);
        container_veths("dpv", &[("a", &a), ("b", &b)]);
        ip_cmd(&[
            "link", "add", "trunk0", "type", "veth", "peer", "name", "trunk1",
        ]);
        ip_cmd(&["link", "set", "trunk0", "up"]);
        ip_cmd(&["link", "set", "trunk1", "up"]);
        let trunk = nix::net::if_::if_nametoindex("trunk0").expect("trunk0");
        let pins = Scratch::new(&format!("vlan-{tag}"));
        let mut dp = Datapath::load(pins.path()).expect("loading the datapath");
        dp.set_endpoint(a).expect("a");
        dp.set_endpoint(b).expect("b");
        let mut v = VlanNet {
            parent: trunk,
            tci: u32::from(VID),
            count: 2,
            ..VlanNet::EMPTY
        };
        v.members[0] = a.ifindex;
        v.members[1] = b.ifindex;
        let mut written = None;
        dp.sync_vlans(
            &[(NUM, v)],
            &[(
                TrunkKey {
                    ifindex: trunk,
                    vid: u32::from(VID),
                },
                NUM,
            )],
            &[
                (FdbKey::new(NUM, a.mac), a.ifindex),
                (FdbKey::new(NUM, b.mac), b.ifindex),
            ],
            &mut written,
        )
        .expect("VLAN maps");
        Lab {
            dp,
            _pins: pins,
            a,
            b,
            trunk,
        }
    }

    fn run(&mut self, prog: Prog, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
        run_prog(&mut self.dp, "prog_test_vlan", prog, ifindex, frame)
    }

    fn trunk_stats(&self) -> dataplane_user::bpf::ProgramStats {
        self.dp.stats().expect("STATS")[PROG_VLAN_TRUNK as usize].clone()
    }
}

/// The frames that reach the container end `ifname` within a second
/// (AF_PACKET, non-blocking).
struct Tap(i32);

impl Tap {
    fn on(ifname: &str) -> Tap {
        let ifindex = nix::net::if_::if_nametoindex(ifname).expect(ifname);
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket calls with valid, correctly sized arguments.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(all),
            );
            assert!(fd >= 0);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0);
            Tap(fd)
        }
    }

    /// The next received frame carrying `marker`, if one comes.
    fn next_with(&self, marker: &[u8]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..100 {
            let mut pfd = libc::pollfd {
                fd: self.0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; `buf` valid for its length.
            unsafe {
                if libc::poll(&mut pfd, 1, 10) <= 0 {
                    continue;
                }
                let n = libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n > 0 && buf[..n as usize].windows(marker.len()).any(|w| w == marker) {
                    return Some(buf[..n as usize].to_vec());
                }
            }
        }
        None
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // SAFETY: our descriptor.
        unsafe { libc::close(self.0) };
    }
}

#[test]
fn the_trunk_pops_our_vids_and_leaves_the_rest_alone() {
    in_private_netns(|| {
        let mut lab = Lab::new("trunk");
        let (a, trunk) = (lab.a, lab.trunk);
        let inner = udp(LAN_IP, [10, 100, 0, 2]);
        let untagged = eth(a.mac, LAN_MAC, &[], P_IPV4, &inner);

        // Our VID, to a's MAC: popped, byte for byte, and redirected.
        let (ret, out) = lab.run(
            Prog::Uplink,
            trunk,
            &eth(a.mac, LAN_MAC, &[(P_8021Q, VID)], P_IPV4, &inner),
        );
        assert_eq!((ret, &out), (TC_ACT_REDIRECT, &untagged));
        // Priority and DEI bits do not change the VID.
        let tci = (5 << 13) | (1 << 12) | VID;
        let (ret, out) = lab.run(
            Prog::Uplink,
            trunk,
            &eth(a.mac, LAN_MAC, &[(P_8021Q, tci)], P_IPV4, &inner),
        );
        assert_eq!((ret, &out), (TC_ACT_REDIRECT, &untagged));

        // Not ours: another VID, an S-tag, no tag; untouched, to the host.
        for (what, f) in [
            (
                "VID 300",
                eth(a.mac, LAN_MAC, &[(P_8021Q, 300)], P_IPV4, &inner),
            ),
            (
                "802.1ad VID 100",
                eth(a.mac, LAN_MAC, &[(P_8021AD, VID)], P_IPV4, &inner),
            ),
            (
                "802.1ad over 802.1Q",
                eth(
                    a.mac,
                    LAN_MAC,
                    &[(P_8021AD, VID), (P_8021Q, VID)],
                    P_IPV4,
                    &inner,
                ),
            ),
            ("untagged", untagged.clone()),
        ] {
            let (ret, out) = lab.run(Prog::Uplink, trunk, &f);
            assert_eq!((ret, &out), (TC_ACT_OK, &f), "{what}");
        }
        // Ours, but for nobody here, or with a second tag inside (counted
        // below by reason).
        for (what, f) in [
            (
                "unknown MAC",
                eth(
                    [2, 0, 0, 0, 0, 9],
                    LAN_MAC,
                    &[(P_8021Q, VID)],
                    P_IPV4,
                    &inner,
                ),
            ),
            (
                "stacked 802.1Q",
                eth(
                    a.mac,
                    LAN_MAC,
                    &[(P_8021Q, VID), (P_8021Q, 7)],
                    P_IPV4,
                    &inner,
                ),
            ),
            (
                "802.1ad inside",
                eth(
                    a.mac,
                    LAN_MAC,
                    &[(P_8021Q, VID), (P_8021AD, 7)],
                    P_IPV4,
                    &inner,
                ),
            ),
        ] {
            let (ret, out) = lab.run(Prog::Uplink, trunk, &f);
            assert_eq!((ret, &out), (TC_ACT_SHOT, &f), "{what}");
        }
        // Cut short inside the tag (the kernel runs frames of 14 bytes and up).
        let full = eth(a.mac, LAN_MAC, &[(P_8021Q, VID)], P_IPV4, &inner);
        for len in 15..18 {
            let (ret, _) = lab.run(Prog::Uplink, trunk, &full[..len]);
            assert_eq!(ret, TC_ACT_SHOT, "{len} bytes");
        }
        let s = lab.trunk_stats();
        assert_eq!(s.name, "vlan_trunk");
        assert_eq!(s.redirected, 2);
        assert_eq!(s.drops["vlan_no_endpoint"], 1);
        assert_eq!(s.drops["vlan_stacked"], 2);
        assert_eq!(s.drops["vlan_truncated"], 3);
        assert_eq!(s.packets, 2 + 3 + 3);
        let up = &lab.dp.stats().expect("STATS")[Prog::Uplink.slot()];
        assert_eq!((up.packets, up.passed), (4, 4), "{up:?}");

        // Broadcast of our VID: an untagged copy to each member.
        let taps = [Tap::on("dpv-a-c"), Tap::on("dpv-b-c")];
        let arp = arp_request(LAN_MAC, LAN_IP, [10, 100, 0, 3]);
        let mut tagged = arp.clone();
        tagged.splice(12..12, [0x81, 0x00, 0x00, VID as u8]);
        let (ret, _) = lab.run(Prog::Uplink, trunk, &tagged);
        assert_eq!(ret, TC_ACT_SHOT, "the original is freed, its copies sent");
        for (t, who) in taps.iter().zip(["a", "b"]) {
            let got = t
                .next_with(&LAN_MAC)
                .unwrap_or_else(|| panic!("no copy for {who}"));
            assert_eq!(got, arp, "{who}'s copy");
        }
    });
}

#[test]
fn containers_frames_go_out_tagged_or_straight_to_a_neighbour() {
    in_private_netns(|| {
        let mut lab = Lab::new("egress");
        let (a, b) = (lab.a, lab.b);
        let ip_a = [10, 100, 0, 2];

        // Out of the parent (the tag goes into the skb's metadata), and to
        // a neighbour on this host: the frame itself untouched.
        for (what, f) in [
            (
                "to the LAN",
                eth(LAN_MAC, a.mac, &[], P_IPV4, &udp(ip_a, LAN_IP)),
            ),
            (
                "to b",
                eth(b.mac, a.mac, &[], P_IPV4, &udp(ip_a, [10, 100, 0, 3])),
            ),
            (
                "DHCP from no address",
                eth([0xff; 6], a.mac, &[], P_IPV4, &udp([0; 4], [255; 4])),
            ),
            ("ARP", arp_request(a.mac, ip_a, LAN_IP)),
        ] {
            let (ret, out) = lab.run(Prog::Container, a.ifindex, &f);
            assert_eq!((ret, &out), (TC_ACT_REDIRECT, &f), "{what}");
        }
        // A's broadcast reaches b as sent.
        let tap = Tap::on("dpv-b-c");
        let f = arp_request(a.mac, ip_a, [10, 100, 0, 77]);
        let (ret, _) = lab.run(Prog::Container, a.ifindex, &f);
        assert_eq!(ret, TC_ACT_REDIRECT);
        assert_eq!(tap.next_with(&[10, 100, 0, 77]).as_ref(), Some(&f));

        // A tag of a's own, another sender address: dropped.
        for (what, f) in [
            (
                "802.1Q",
                eth(
                    LAN_MAC,
                    a.mac,
                    &[(P_8021Q, 200)],
                    P_IPV4,
                    &udp(ip_a, LAN_IP),
                ),
            ),
            (
                "802.1ad",
                eth(
                    LAN_MAC,
                    a.mac,
                    &[(P_8021AD, 200)],
                    P_IPV4,
                    &udp(ip_a, LAN_IP),
                ),
            ),
            (
                "spoofed IP",
                eth(LAN_MAC, a.mac, &[], P_IPV4, &udp([10, 100, 0, 9], LAN_IP)),
            ),
            ("spoofed ARP", arp_request(a.mac, [10, 100, 0, 9], LAN_IP)),
            (
                "spoofed MAC",
                eth(LAN_MAC, [2, 0, 0, 0, 0, 1], &[], P_IPV4, &udp(ip_a, LAN_IP)),
            ),
        ] {
            let (ret, out) = lab.run(Prog::Container, a.ifindex, &f);
            assert_eq!((ret, &out), (TC_ACT_SHOT, &f), "{what}");
        }
        let s = &lab.dp.stats().expect("STATS")[Prog::Container.slot()];
        assert_eq!(s.redirected, 5, "{s:?}");
        assert_eq!(s.drops["vlan_tagged"], 2);
        assert_eq!(s.drops["spoofed_ip"], 2);
        assert_eq!(s.drops["spoofed_mac"], 1);
    });
}

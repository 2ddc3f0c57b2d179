//! A LAN for the macvlan and VLAN tests: a "switch" namespace whose plain
//! Linux bridge (no VLAN filtering: it carries tagged frames untouched, as
//! a trunk would) joins the daemon's parent interface to the other
//! machines of the segment:
//!
//! - plain namespaces with an address of their own (the kernel's stack:
//!   untagged peers nobody here wrote);
//! - for tagged segments, where no kernel peer exists here (no 8021q, no
//!   bridge VLAN filtering, no tc vlan action), a [`TaggedPeer`]: a thread
//!   on an AF_PACKET socket that answers ARP and ICMP echo for its address
//!   on one VID only, and records every tagged frame it sees;
//! - raw frames sent from any namespace ([`send_frame`]), and [`Capture`]s
//!   on the switch that tshark decodes (`vlan.id`, ...).

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use crate::{eventually, sh, unique, Daemon, NetNs, Proc, TempDir};

/// The switch and the daemon's parent on it.
pub struct Lan {
    switch: NetNs,
    dir: TempDir,
    ports: usize,
}

/// The daemon's end of the LAN, in the daemon's namespace.
pub const PARENT: &str = "lan0";

impl Lan {
    /// A switch with `d`'s [`PARENT`] on it (up, no address).
    pub fn new(d: &Daemon) -> Lan {
        let switch = NetNs::new();
        switch
            .exec(&["ip", "link", "add", "br0", "type", "bridge"])
            .ok();
        switch.exec(&["ip", "link", "set", "br0", "up"]).ok();
        let mut lan = Lan {
            switch,
            dir: TempDir::new(),
            ports: 0,
        };
        lan.plug(d.ns(), PARENT);
        lan
    }

    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    /// A veth from `ns` (named `ifname` there, up) to a new port of the
    /// switch; returns the port's name.
    pub fn plug(&mut self, ns: &NetNs, ifname: &str) -> String {
        self.ports += 1;
        let port = format!("sw{}", self.ports);
        let tmp = unique("lp");
        let tmp = &tmp[tmp.len().saturating_sub(12)..];
        sh(
            "ip",
            &[
                "-n",
                self.switch.name(),
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                tmp,
                "netns",
                ns.name(),
            ],
        )
        .ok();
        ns.exec(&["ip", "link", "set", tmp, "name", ifname]).ok();
        ns.exec(&["ip", "link", "set", ifname, "up"]).ok();
        self.switch
            .exec(&["ip", "link", "set", &port, "master", "br0"])
            .ok();
        self.switch.exec(&["ip", "link", "set", &port, "up"]).ok();
        port
    }

    /// A plain untagged machine on the LAN with `addr` (CIDR) on its
    /// `eth0`, and a default route via `gw` if given.
    pub fn peer(&mut self, addr: &str, gw: Option<&str>) -> NetNs {
        let ns = self.port_ns();
        ns.exec(&["ip", "addr", "add", addr, "dev", "eth0"]).ok();
        if let Some(g) = gw {
            ns.exec(&["ip", "route", "add", "default", "via", g]).ok();
        }
        ns
    }

    /// An empty namespace plugged into the switch as `eth0` (for a
    /// [`TaggedPeer`] or raw frames).
    pub fn port_ns(&mut self) -> NetNs {
        let ns = NetNs::new();
        self.plug(&ns, "eth0");
        ns
    }

    /// Starts tcpdump on switch port `port` (`sw1` is the daemon's parent).
    pub fn capture(&self, port: &str, filter: &str) -> crate::Capture {
        let file = self.dir.path().join(format!("{}.pcap", unique("cap")));
        let mut c = std::process::Command::new("ip");
        c.args([
            "netns",
            "exec",
            self.switch.name(),
            "tcpdump",
            "-i",
            port,
            "-n",
            "-U",
        ])
        .arg("--immediate-mode")
        .arg("-w")
        .arg(&file)
        .args(filter.split_whitespace());
        let p = Proc::spawn(c);
        eventually("tcpdump to listen on the switch", || {
            let out = p.output_so_far();
            out.contains("listening on").then_some(()).ok_or(out)
        });
        crate::Capture::from_parts(p, file)
    }
}

// ----- frames ----------------------------------------------------------------

pub const P_IPV4: u16 = 0x0800;
pub const P_ARP: u16 = 0x0806;
pub const P_8021Q: u16 = 0x8100;
pub const P_8021AD: u16 = 0x88a8;

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("six bytes")
}

pub fn ip4(s: &str) -> [u8; 4] {
    let a: std::net::Ipv4Addr = s.parse().expect("IPv4");
    a.octets()
}

/// An Ethernet frame, with 802.1Q (or other `tags`) tags after the MACs.
pub fn frame(
    dst: [u8; 6],
    src: [u8; 6],
    tags: &[(u16, u16)],
    proto: u16,
    payload: &[u8],
) -> Vec<u8> {
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

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 packet of protocol `proto` around `l4`.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let c = csum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// A UDP datagram (no checksum) from `sport` to `dport` carrying `data`.
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// Sends `frame` as is out of `ifname` in the namespace at `netns`
/// (AF_PACKET: the tags in it go out as written).
pub fn send_frame(netns: &Path, ifname: &str, frame: &[u8]) {
    let (netns, ifname, frame) = (netns.to_path_buf(), ifname.to_string(), frame.to_vec());
    std::thread::spawn(move || {
        let fd = PacketSocket::open_in(&netns, &ifname);
        fd.send(&frame);
    })
    .join()
    .expect("sending a raw frame");
}

/// An AF_PACKET socket bound to one interface of a namespace (the calling
/// thread moves into that namespace for good: use a thread of its own).
struct PacketSocket {
    fd: i32,
    ifindex: i32,
}

impl PacketSocket {
    fn open_in(netns: &Path, ifname: &str) -> PacketSocket {
        let ns = File::open(netns).unwrap_or_else(|e| panic!("opening {}: {e}", netns.display()));
        // SAFETY: plain syscalls on descriptors we own; buffers are ours.
        unsafe {
            assert_eq!(
                libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET),
                0,
                "setns: {}",
                std::io::Error::last_os_error()
            );
            let name = std::ffi::CString::new(ifname).expect("ifname");
            let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            assert!(ifindex > 0, "no interface {ifname} in {}", netns.display());
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex;
            let r = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                &one as *const _ as *const libc::c_void,
                4,
            );
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            PacketSocket { fd, ifindex }
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: as above.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = self.ifindex;
            sll.sll_halen = 6;
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                self.fd,
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                n,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// One received frame with its outer tag put back where the wire had
    /// it (the kernel hands it over in the auxiliary data), or None on the
    /// receive timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let mut ctl = [0u8; 256];
        // SAFETY: as above; the control messages are read within `ctl`.
        unsafe {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = ctl.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = ctl.len();
            let n = libc::recvmsg(self.fd, &mut msg, 0);
            if n < 0 {
                return None;
            }
            buf.truncate(n as usize);
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = &*(libc::CMSG_DATA(c) as *const libc::tpacket_auxdata);
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && buf.len() >= 12 {
                        let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            P_8021Q
                        };
                        let mut tag = tpid.to_be_bytes().to_vec();
                        tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                        buf.splice(12..12, tag);
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            Some(buf)
        }
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: our descriptor.
        unsafe { libc::close(self.fd) };
    }
}

/// A machine on one VLAN of the LAN: on `eth0` of its namespace it answers
/// ARP requests and ICMP echo requests for `ip`, tagged with `vid`, and
/// ignores every frame of another VID or without a tag. Every tagged frame
/// it receives is kept (`seen`), as the wire had it.
pub struct TaggedPeer {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub vid: u16,
    netns: PathBuf,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl TaggedPeer {
    pub fn start(ns: &NetNs, vid: u16, ip: &str, mac_addr: &str) -> TaggedPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (netns, me, my_ip) = (ns.path(), mac(mac_addr), ip4(ip));
        let (s2, seen2, path) = (stop.clone(), seen.clone(), netns.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let ready2 = ready.clone();
        let thread = std::thread::spawn(move || {
            let sock = PacketSocket::open_in(&path, "eth0");
            ready2.store(true, Ordering::SeqCst);
            while !s2.load(Ordering::SeqCst) {
                let Some(f) = sock.recv() else { continue };
                if f.len() < 18 || u16::from_be_bytes([f[12], f[13]]) != P_8021Q {
                    continue;
                }
                seen2.lock().expect("seen").push(f.clone());
                if u16::from_be_bytes([f[14], f[15]]) & 0x0fff != vid {
                    continue;
                }
                if let Some(reply) = answer(
                    &f[..12],
                    &f[18..],
                    u16::from_be_bytes([f[16], f[17]]),
                    me,
                    my_ip,
                ) {
                    let src: [u8; 6] = f[6..12].try_into().expect("six");
                    sock.send(&frame(src, me, &[(P_8021Q, vid)], reply.0, &reply.1));
                }
            }
        });
        eventually("the tagged peer's socket", || {
            ready
                .load(Ordering::SeqCst)
                .then_some(())
                .ok_or_else(String::new)
        });
        TaggedPeer {
            mac: me,
            ip: my_ip,
            vid,
            netns,
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// The tagged frames seen so far, as the wire had them.
    pub fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().expect("seen").clone()
    }

    /// Sends `frame` from this peer's port.
    pub fn send(&self, f: &[u8]) {
        send_frame(&self.netns, "eth0", f);
    }
}

impl Drop for TaggedPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer (ethertype, payload) to an untagged view of a frame for
/// `me`/`ip`: an ARP reply or an ICMP echo reply.
fn answer(
    macs: &[u8],
    payload: &[u8],
    proto: u16,
    me: [u8; 6],
    ip: [u8; 4],
) -> Option<(u16, Vec<u8>)> {
    let _ = macs;
    match proto {
        P_ARP if payload.len() >= 28 && payload[7] == 1 && payload[24..28] == ip => {
            let mut r = payload[..28].to_vec();
            r[7] = 2;
            let (sha, spa) = (payload[8..14].to_vec(), payload[14..18].to_vec());
            r[8..14].copy_from_slice(&me);
            r[14..18].copy_from_slice(&ip);
            r[18..24].copy_from_slice(&sha);
            r[24..28].copy_from_slice(&spa);
            Some((P_ARP, r))
        }
        P_IPV4
            if payload.len() >= 28
                && payload[9] == 1
                && payload[16..20] == ip
                && payload[20] == 8 =>
        {
            let ihl = usize::from(payload[0] & 0x0f) * 4;
            let total =
                usize::from(u16::from_be_bytes([payload[2], payload[3]])).min(payload.len());
            let mut icmp = payload[ihl..total].to_vec();
            icmp[0] = 0;
            icmp[2] = 0;
            icmp[3] = 0;
            let c = csum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let src: [u8; 4] = payload[12..16].try_into().ok()?;
            Some((P_IPV4, ipv4(ip, src, 1, &icmp)))
        }
        _ => None,
    }
}

// ----- a DHCP server ---------------------------------------------------------

/// Debian's dnsmasq as the LAN's DHCP server on `eth0` of `ns` (which
/// holds 10.80.0.1/24, the router it names): addresses
/// `range` ("FIRST,LAST") of 10.80.0.0/24, 2-minute leases renewed after
/// 4 s and rebound after 8 s, so that a test sees both.
pub fn dnsmasq(ns: &NetNs, dir: &std::path::Path, range: &str) -> Proc {
    let mut c = std::process::Command::new("ip");
    c.args([
        "netns",
        "exec",
        ns.name(),
        "dnsmasq",
        "--no-daemon",
        "--conf-file=/dev/null",
    ])
    .args([
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--no-ping",
    ])
    .arg(format!("--dhcp-range={range},255.255.255.0,2m"))
    .args([
        "--dhcp-option=option:router,10.80.0.1",
        "--dhcp-option=option:T1,4",
        "--dhcp-option=option:T2,8",
    ])
    .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
    .arg(format!("--pid-file={}", dir.join("pid").display()));
    Proc::spawn(c)
}

/// dnsmasq's lease file as it is now.
pub fn leases(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("leases")).unwrap_or_default()
}

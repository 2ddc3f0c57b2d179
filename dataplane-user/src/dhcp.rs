//! The DHCPv4 client side of `--ipam-driver dhcp`: the messages one
//! container's lease needs (RFC 2131: DISCOVER, REQUEST while selecting,
//! renewing and rebinding, RELEASE), the checks on what comes back, and the
//! lease's timers. Messages are built and read by the dhcproto crate.
//!
//! Everything here is a pure function of its inputs: the bytes received
//! and a clock the caller passes in (seconds on any monotonic scale), so
//! the state machine is tested without a server or a wall clock. Sending on
//! the container's interface is the caller's.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use dhcproto::{
    v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode},
    Decodable, Decoder, Encodable, Encoder,
};
use serde::{Deserialize, Serialize};

/// RFC 2131's "infinity" lease time.
pub const INFINITE: u32 = u32::MAX;

/// Who asks: the container's MAC and client identifier (RFC 2132 §9.14:
/// type 1 and the MAC, unless the user sets one), and the host name the
/// server may record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    pub client_id: Vec<u8>,
    pub hostname: Option<String>,
}

impl Identity {
    pub fn new(mac: [u8; 6], hostname: Option<String>) -> Self {
        let mut client_id = vec![1];
        client_id.extend_from_slice(&mac);
        Self {
            mac,
            client_id,
            hostname,
        }
    }
}

/// A lease as the store keeps it: what the server gave and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// From the subnet mask option (0 when the server sent none: the
    /// network's own prefix applies).
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The server identifier: where renewals go.
    pub server: Ipv4Addr,
    /// Seconds, [`INFINITE`] for no end.
    pub lease_secs: u32,
    pub t1_secs: u32,
    pub t2_secs: u32,
    /// The caller's clock when the ACK arrived.
    pub obtained_at: u64,
}

/// What a bound lease needs at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing before `until`.
    Bound { until: u64 },
    /// Past T1: ask the server that gave it (unicast), until `until` (T2).
    Renew { until: u64 },
    /// Past T2: ask any server (broadcast), until `until` (the end).
    Rebind { until: u64 },
    /// Past the end: the address must go.
    Expired,
}

impl Lease {
    fn at(&self, secs: u32) -> u64 {
        if self.lease_secs == INFINITE {
            u64::MAX
        } else {
            self.obtained_at.saturating_add(u64::from(secs))
        }
    }

    pub fn renew_at(&self) -> u64 {
        self.at(self.t1_secs)
    }

    pub fn rebind_at(&self) -> u64 {
        self.at(self.t2_secs)
    }

    pub fn expires_at(&self) -> u64 {
        self.at(self.lease_secs)
    }

    /// Where the lease stands at `now`.
    pub fn due(&self, now: u64) -> Due {
        if now >= self.expires_at() {
            Due::Expired
        } else if now >= self.rebind_at() {
            Due::Rebind {
                until: self.expires_at(),
            }
        } else if now >= self.renew_at() {
            Due::Renew {
                until: self.rebind_at(),
            }
        } else {
            Due::Bound {
                until: self.renew_at(),
            }
        }
    }
}

/// An OFFER worth answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub ip: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// A server's answer, checked against what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Offer(Offer),
    Ack(Lease),
    /// The server refuses (its message, if it sent one).
    Nak(String),
    /// Not for us, or not usable: why (counted, then the wait goes on).
    Ignored(&'static str),
}

fn base(id: &Identity, xid: u32, ciaddr: Ipv4Addr, kind: MessageType) -> Message {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, ciaddr, unspecified, unspecified, unspecified, &id.mac);
    m.set_opcode(Opcode::BootRequest);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ClientIdentifier(id.client_id.clone()));
    if let Some(h) = &id.hostname {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    m
}

fn wants(m: &mut Message) {
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ]));
}

fn encode(m: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(300);
    m.encode(&mut Encoder::new(&mut buf))
        .expect("a message built here encodes");
    buf
}

/// DISCOVER, broadcast: the container has no address yet.
pub fn discover(id: &Identity, xid: u32) -> Vec<u8> {
    let mut m = base(id, xid, Ipv4Addr::UNSPECIFIED, MessageType::Discover);
    m.set_flags(Flags::default().set_broadcast());
    wants(&mut m);
    encode(&m)
}

/// REQUEST in SELECTING state: takes `offer` from its server, broadcast.
pub fn request_offer(id: &Identity, xid: u32, offer: &Offer) -> Vec<u8> {
    let mut m = base(id, xid, Ipv4Addr::UNSPECIFIED, MessageType::Request);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.ip));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server));
    wants(&mut m);
    encode(&m)
}

/// REQUEST in RENEWING (unicast to `lease.server`) or REBINDING
/// (broadcast) state: `ciaddr` carries the address, no server identifier.
pub fn request_extend(id: &Identity, xid: u32, lease: &Lease) -> Vec<u8> {
    let mut m = base(id, xid, lease.ip, MessageType::Request);
    wants(&mut m);
    encode(&m)
}

/// REQUEST in INIT-REBOOT state: asks to keep `ip` (a stored lease, after
/// a restart), broadcast, without a server identifier. A server that knows
/// better answers NAK.
pub fn request_reboot(id: &Identity, xid: u32, ip: Ipv4Addr) -> Vec<u8> {
    let mut m = base(id, xid, Ipv4Addr::UNSPECIFIED, MessageType::Request);
    m.set_flags(Flags::default().set_broadcast());
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    wants(&mut m);
    encode(&m)
}

/// RELEASE, unicast to the server, when the container goes.
pub fn release(id: &Identity, xid: u32, lease: &Lease) -> Vec<u8> {
    let mut m = base(id, xid, lease.ip, MessageType::Release);
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(lease.server));
    encode(&m)
}

fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    // A mask is ones then zeros.
    (bits.leading_ones() + bits.trailing_zeros() == 32).then(|| bits.leading_ones() as u8)
}

/// Reads a server's message: one for `id` and `xid`, an OFFER, ACK or NAK.
/// An ACK becomes a lease obtained at `now`; the renewal and rebinding
/// times default to 1/2 and 7/8 of the lease (RFC 2131 §4.4.5) and are
/// kept in order.
pub fn read_reply(bytes: &[u8], id: &Identity, xid: u32, now: u64) -> Reply {
    let Ok(m) = Message::decode(&mut Decoder::new(bytes)) else {
        return Reply::Ignored("malformed");
    };
    if m.opcode() != Opcode::BootReply {
        return Reply::Ignored("not a reply");
    }
    if m.xid() != xid {
        return Reply::Ignored("another transaction");
    }
    if m.chaddr().get(..6) != Some(&id.mac[..]) {
        return Reply::Ignored("another client");
    }
    let o = m.opts();
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    match o.msg_type() {
        Some(MessageType::Nak) => Reply::Nak(match o.get(OptionCode::Message) {
            Some(DhcpOption::Message(s)) => s.clone(),
            _ => String::new(),
        }),
        Some(MessageType::Offer) => match (m.yiaddr(), server) {
            (ip, _) if ip.is_unspecified() => Reply::Ignored("offer without an address"),
            (_, None) => Reply::Ignored("offer without a server identifier"),
            (ip, Some(server)) => Reply::Offer(Offer { ip, server }),
        },
        Some(MessageType::Ack) => {
            let ip = m.yiaddr();
            if ip.is_unspecified() {
                return Reply::Ignored("ack without an address");
            }
            let lease_secs = match o.get(OptionCode::AddressLeaseTime) {
                Some(DhcpOption::AddressLeaseTime(t)) => *t,
                _ => return Reply::Ignored("ack without a lease time"),
            };
            let secs = |code, dflt: u32| match o.get(code) {
                Some(DhcpOption::Renewal(t) | DhcpOption::Rebinding(t)) => *t,
                _ => dflt,
            };
            let (t1, t2) = if lease_secs == INFINITE {
                (INFINITE, INFINITE)
            } else {
                let half = lease_secs / 2;
                let seven_eighths = (u64::from(lease_secs) * 7 / 8) as u32;
                let t2 = secs(OptionCode::Rebinding, seven_eighths).min(lease_secs);
                (secs(OptionCode::Renewal, half).min(t2), t2)
            };
            let prefix = match o.get(OptionCode::SubnetMask) {
                Some(DhcpOption::SubnetMask(mask)) => match prefix_of(*mask) {
                    Some(p) => p,
                    None => return Reply::Ignored("ack with a malformed subnet mask"),
                },
                _ => 0,
            };
            let router = match o.get(OptionCode::Router) {
                Some(DhcpOption::Router(r)) => r.first().copied(),
                _ => None,
            };
            let dns = match o.get(OptionCode::DomainNameServer) {
                Some(DhcpOption::DomainNameServer(d)) => d.clone(),
                _ => Vec::new(),
            };
            Reply::Ack(Lease {
                ip,
                prefix,
                router,
                dns,
                // A server that names itself nowhere is reached again at
                // the address it answered from, which the caller knows.
                server: server.unwrap_or(m.siaddr()),
                lease_secs,
                t1_secs: t1,
                t2_secs: t2,
                obtained_at: now,
            })
        }
        _ => Reply::Ignored("not an offer, ack or nak"),
    }
}

/// Why no lease came.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("no DHCP server answered within {0:?}")]
    Timeout(Duration),
    #[error("the DHCP server {server} refused the address{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Nak { server: Ipv4Addr, message: String },
    #[error("DHCP socket: {0}")]
    Io(#[from] io::Error),
}

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

/// A client socket in the network namespace at `netns`, on `ifname`: UDP
/// port 68, broadcasts allowed, bound to the device so that it sends and
/// hears only there (the interface may have no address yet).
pub fn socket_in(netns: &Path, ifname: &str) -> anyhow::Result<UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let ifname = std::ffi::OsString::from(ifname);
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> anyhow::Result<UdpSocket> {
        use anyhow::Context as _;
        let ns =
            std::fs::File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", netns.display()))?;
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        setsockopt(&fd, sockopt::Broadcast, &true)?;
        setsockopt(&fd, sockopt::BindToDevice, &ifname)
            .with_context(|| format!("binding the DHCP socket to {ifname:?}"))?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)),
        )
        .context("binding UDP port 68")?;
        Ok(UdpSocket::from(fd))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("DHCP socket thread panicked"))?
}

/// One message to send and where, in transaction `xid`.
struct Ask<'a> {
    xid: u32,
    msg: &'a [u8],
    to: Ipv4Addr,
}

/// Sends `ask` and reads replies to its transaction until `pick` takes
/// one, sending again after 1, 2, 4, ... s, for at most `limit`. A NAK ends
/// it; anything else is skipped.
fn transact<T>(
    sock: &UdpSocket,
    id: &Identity,
    ask: Ask<'_>,
    limit: Duration,
    now: u64,
    pick: fn(Reply) -> Option<T>,
) -> Result<T, DhcpError> {
    let end = Instant::now() + limit;
    let mut wait = Duration::from_secs(1);
    let mut buf = [0u8; 1500];
    loop {
        sock.send_to(ask.msg, SocketAddrV4::new(ask.to, SERVER_PORT))?;
        let resend = (Instant::now() + wait).min(end);
        loop {
            let left = resend.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => match read_reply(&buf[..n], id, ask.xid, now) {
                    Reply::Nak(message) => {
                        let server = match from {
                            std::net::SocketAddr::V4(a) => *a.ip(),
                            std::net::SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                        };
                        return Err(DhcpError::Nak { server, message });
                    }
                    r => {
                        if let Some(t) = pick(r) {
                            return Ok(t);
                        }
                    }
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() >= end {
            return Err(DhcpError::Timeout(limit));
        }
        wait = (wait * 2).min(Duration::from_secs(16));
    }
}

fn offer_of(r: Reply) -> Option<Offer> {
    match r {
        Reply::Offer(o) => Some(o),
        _ => None,
    }
}

fn ack_of(r: Reply) -> Option<Lease> {
    match r {
        Reply::Ack(l) => Some(l),
        _ => None,
    }
}

/// Sends the REQUEST `build(xid)` makes to `to` and waits for its ACK.
fn request(
    sock: &UdpSocket,
    id: &Identity,
    build: impl FnOnce(u32) -> Vec<u8>,
    to: Ipv4Addr,
    limit: Duration,
    now: u64,
) -> Result<Lease, DhcpError> {
    let xid: u32 = rand::random();
    let msg = build(xid);
    transact(sock, id, Ask { xid, msg: &msg, to }, limit, now, ack_of)
}

/// DISCOVER, OFFER, REQUEST, ACK on `sock`, within `limit`: a new lease,
/// obtained at `now` (the caller's clock).
pub fn obtain(
    sock: &UdpSocket,
    id: &Identity,
    limit: Duration,
    now: u64,
) -> Result<Lease, DhcpError> {
    let started = Instant::now();
    let xid: u32 = rand::random();
    let msg = discover(id, xid);
    let to = Ipv4Addr::BROADCAST;
    let offer = transact(sock, id, Ask { xid, msg: &msg, to }, limit, now, offer_of)?;
    let left = limit
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    request(sock, id, |x| request_offer(id, x, &offer), to, left, now)
}

/// Extends `lease`: RENEWING (unicast to its server) or, with `rebind`,
/// REBINDING (broadcast to any server). The new lease starts at `now`.
pub fn extend(
    sock: &UdpSocket,
    id: &Identity,
    lease: &Lease,
    rebind: bool,
    limit: Duration,
    now: u64,
) -> Result<Lease, DhcpError> {
    let to = if rebind {
        Ipv4Addr::BROADCAST
    } else {
        lease.server
    };
    request(sock, id, |x| request_extend(id, x, lease), to, limit, now)
}

/// INIT-REBOOT: asks any server to confirm `ip` for this client.
pub fn confirm(
    sock: &UdpSocket,
    id: &Identity,
    ip: Ipv4Addr,
    limit: Duration,
    now: u64,
) -> Result<Lease, DhcpError> {
    let to = Ipv4Addr::BROADCAST;
    request(sock, id, |x| request_reboot(id, x, ip), to, limit, now)
}

/// RELEASE, unicast to the lease's server (no answer comes).
pub fn send_release(sock: &UdpSocket, id: &Identity, lease: &Lease) -> io::Result<()> {
    let xid: u32 = rand::random();
    sock.send_to(
        &release(id, xid, lease),
        SocketAddrV4::new(lease.server, SERVER_PORT),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x07];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn id() -> Identity {
        Identity::new(MAC, Some("web".into()))
    }

    /// A server's reply to `xid`, as dnsmasq would shape it.
    fn reply(xid: u32, kind: MessageType, yiaddr: Ipv4Addr, opts: Vec<DhcpOption>) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(xid, z, yiaddr, SERVER, z, &MAC);
        m.set_opcode(Opcode::BootReply);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        encode(&m)
    }

    fn decoded(b: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(b)).unwrap()
    }

    #[test]
    fn requests_carry_the_container_s_identity() {
        let d = decoded(&discover(&id(), 7));
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(d.xid(), 7);
        assert_eq!(&d.chaddr()[..6], &MAC);
        assert!(d.flags().broadcast());
        assert_eq!(
            d.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier([&[1u8][..], &MAC].concat()))
        );
        assert_eq!(
            d.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("web".into()))
        );
        let offer = Offer {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            server: SERVER,
        };
        let r = decoded(&request_offer(&id(), 7, &offer));
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert_eq!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(offer.ip))
        );
        assert_eq!(
            r.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert!(r.ciaddr().is_unspecified());
        let lease = lease(100, 1000);
        let renew = decoded(&request_extend(&id(), 8, &lease));
        assert_eq!(renew.ciaddr(), lease.ip);
        assert!(renew.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(renew.opts().get(OptionCode::RequestedIpAddress).is_none());
        let reboot = decoded(&request_reboot(&id(), 10, lease.ip));
        assert!(reboot.ciaddr().is_unspecified() && reboot.flags().broadcast());
        assert_eq!(
            reboot.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(lease.ip))
        );
        assert!(reboot.opts().get(OptionCode::ServerIdentifier).is_none());
        let rel = decoded(&release(&id(), 9, &lease));
        assert_eq!(rel.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(rel.ciaddr(), lease.ip);
    }

    fn lease(obtained_at: u64, secs: u32) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            prefix: 24,
            router: Some(SERVER),
            dns: vec![],
            server: SERVER,
            lease_secs: secs,
            t1_secs: secs / 2,
            t2_secs: secs / 8 * 7,
            obtained_at,
        }
    }

    #[test]
    fn offers_acks_and_naks_are_read_and_checked() {
        let ip = Ipv4Addr::new(10, 0, 0, 50);
        let offer = reply(
            5,
            MessageType::Offer,
            ip,
            vec![DhcpOption::ServerIdentifier(SERVER)],
        );
        assert_eq!(
            read_reply(&offer, &id(), 5, 0),
            Reply::Offer(Offer { ip, server: SERVER })
        );
        // Another transaction, another client, garbage, a request echoed.
        assert_eq!(
            read_reply(&offer, &id(), 6, 0),
            Reply::Ignored("another transaction")
        );
        let other = Identity::new([2, 0, 0, 0, 0, 1], None);
        assert_eq!(
            read_reply(&offer, &other, 5, 0),
            Reply::Ignored("another client")
        );
        assert_eq!(
            read_reply(&[1, 2, 3], &id(), 5, 0),
            Reply::Ignored("malformed")
        );
        assert_eq!(
            read_reply(&offer[..100], &id(), 5, 0),
            Reply::Ignored("malformed")
        );
        assert_eq!(
            read_reply(&discover(&id(), 5), &id(), 5, 0),
            Reply::Ignored("not a reply")
        );
        let no_server = reply(5, MessageType::Offer, ip, vec![]);
        assert_eq!(
            read_reply(&no_server, &id(), 5, 0),
            Reply::Ignored("offer without a server identifier")
        );

        // An ACK to transaction 5 with `opts`.
        let ack = |opts| reply(5, MessageType::Ack, ip, opts);
        let full = ack(vec![
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::AddressLeaseTime(120),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
            DhcpOption::Router(vec![SERVER]),
            DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 0, 2)]),
        ]);
        let Reply::Ack(l) = read_reply(&full, &id(), 5, 1000) else {
            panic!("an ack")
        };
        assert_eq!(
            (l.ip, l.prefix, l.router, l.server),
            (ip, 24, Some(SERVER), SERVER)
        );
        assert_eq!(l.dns, [Ipv4Addr::new(10, 0, 0, 2)]);
        // Defaults: T1 = 1/2, T2 = 7/8 of the lease.
        assert_eq!((l.lease_secs, l.t1_secs, l.t2_secs), (120, 60, 105));
        assert_eq!(l.obtained_at, 1000);

        // Times the server gives are kept in order (T1 <= T2 <= lease).
        let odd = ack(vec![
            DhcpOption::ServerIdentifier(SERVER),
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::Renewal(500),
            DhcpOption::Rebinding(300),
        ]);
        let Reply::Ack(l) = read_reply(&odd, &id(), 5, 0) else {
            panic!("an ack")
        };
        assert_eq!((l.t1_secs, l.t2_secs, l.prefix), (100, 100, 0));
        let bad_mask = ack(vec![
            DhcpOption::AddressLeaseTime(100),
            DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)),
        ]);
        assert_eq!(
            read_reply(&bad_mask, &id(), 5, 0),
            Reply::Ignored("ack with a malformed subnet mask")
        );
        let no_time = ack(vec![]);
        assert_eq!(
            read_reply(&no_time, &id(), 5, 0),
            Reply::Ignored("ack without a lease time")
        );

        let nak = reply(
            5,
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            vec![DhcpOption::Message("wrong network".into())],
        );
        assert_eq!(
            read_reply(&nak, &id(), 5, 0),
            Reply::Nak("wrong network".into())
        );
    }

    #[test]
    fn a_lease_renews_at_t1_rebinds_at_t2_and_ends() {
        // A clock that starts near zero, as on a machine booted a minute ago.
        let l = lease(3, 120);
        assert_eq!(l.due(3), Due::Bound { until: 63 });
        assert_eq!(l.due(62), Due::Bound { until: 63 });
        assert_eq!(l.due(63), Due::Renew { until: 108 });
        assert_eq!(l.due(108), Due::Rebind { until: 123 });
        assert_eq!(l.due(123), Due::Expired);
        // An infinite lease never needs anything.
        let forever = Lease {
            lease_secs: INFINITE,
            t1_secs: INFINITE,
            t2_secs: INFINITE,
            ..l.clone()
        };
        assert_eq!(forever.due(u64::MAX - 1), Due::Bound { until: u64::MAX });
        // No overflow at the top of the clock.
        let late = lease(u64::MAX - 10, 120);
        assert_eq!(late.due(u64::MAX - 10), Due::Bound { until: u64::MAX });
    }

    #[test]
    fn masks_become_prefixes() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}

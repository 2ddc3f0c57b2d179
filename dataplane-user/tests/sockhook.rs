//! The cgroup socket hooks for real: host processes reach a published port
//! on loopback and on a local address without a proxy, see the address they
//! asked for in `getpeername`/`recvfrom`, and sockets of another network
//! namespace are left alone.
//!
//! Root only. Everything runs in network namespaces this test creates with
//! `unshare` on threads and keeps alive by file descriptor (they vanish with
//! the descriptors, even when the test panics):
//! - "host": the daemon's namespace (`lo`, one end of a veth, 10.231.77.1/24);
//! - "container": the other end of the veth (10.231.77.2/24) with TCP and UDP
//!   servers on port 80;
//! - "stranger": a third namespace with only `lo`, whose sockets must not be
//!   translated (another netns cookie).
//!
//! The second test: service VIPs balanced at `connect`/`sendto` over
//! three replicas (see its comment).
//!
//! The hooks are attached to the machine's cgroup v2 root (they cannot be
//! scoped to a namespace any other way); they act only on sockets of the
//! "host" namespace and go away when the scratch pin directory is removed.

mod common;

use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use common::Scratch;
use dataplane_common::{
    ipv4_wire, port_wire, sock_hash, NatAddr, PortKey, IPPROTO_TCP, IPPROTO_UDP, MAGLEV_M,
    SVC_INGRESS, SVC_VIP,
};
use dataplane_user::{
    bpf::{
        maglev,
        services::{FrontendSpec, ReplicaSpec, ServiceSpec, ServiceStats},
        Datapath,
    },
    sockhook,
};
use nix::sched::{setns, unshare, CloneFlags};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 77, 1);
const CONTAINER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 77, 2);
/// Published on every address: TCP and UDP.
const WILD_PORT: u16 = 18080;
/// Published on 127.0.0.1 only (TCP).
const LO_PORT: u16 = 18081;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A new network namespace with `lo` up, held by an open descriptor.
fn new_netns() -> File {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        ip(&["link", "set", "lo", "up"]);
        File::open("/proc/thread-self/ns/net").expect("opening the new netns")
    })
    .join()
    .expect("netns thread")
}

/// Runs `f` on a thread inside `ns` and waits for it.
fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `ip ARGS` in the calling thread's namespace (the child inherits it).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `/proc` path of an open namespace descriptor, for `ip ... netns`.
fn fd_path(f: &File) -> String {
    use std::os::fd::AsRawFd as _;
    format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd())
}

/// Sets `stop` when dropped, so the servers end even when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The container's TCP server: reads a request to EOF and answers
/// `<request> from <peer address>`.
fn tcp_server(l: TcpListener, stop: &AtomicBool) {
    accept_loop(l, stop, Duration::from_millis(20), |mut s, peer| {
        let mut req = String::new();
        if s.read_to_string(&mut req).is_ok() {
            let _ = write!(s, "{req} from {}", peer.ip());
        }
    });
}

/// Until `stop`: accepts on `l` (polling every `poll`) and hands each
/// connection, blocking with the read timeout TIMEOUT, and its peer to
/// `serve`, one at a time.
fn accept_loop(
    l: TcpListener,
    stop: &AtomicBool,
    poll: Duration,
    serve: impl Fn(std::net::TcpStream, std::net::SocketAddr),
) {
    l.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                serve(s, peer);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(poll),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The container's UDP server: echoes `echo:<datagram>` to the sender.
fn udp_server(u: UdpSocket, stop: &AtomicBool) {
    u.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        match u.recv_from(&mut buf) {
            Ok((n, from)) => {
                let mut reply = b"echo:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                u.send_to(&reply, from).unwrap();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

/// Connects to `to`, sends `msg`, and returns the answer and the peer
/// address `getpeername` shows.
fn tcp_request(to: SocketAddr, msg: &str) -> io::Result<(String, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&to, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let peer = s.peer_addr()?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok((answer, peer))
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn sock_translated(dp: &Datapath) -> u64 {
    sock_counts(dp).1
}

/// `(packets, translated)` of the `sock_addr` row: calls that concern the
/// daemon, and those whose address was rewritten.
fn sock_counts(dp: &Datapath) -> (u64, u64) {
    let s = dp
        .stats()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "sock_addr")
        .expect("sock_addr stats");
    (s.packets, s.translated)
}

/// `f`'s effect on `(packets, translated)` of the `sock_addr` row.
fn counted<T>(dp: &Datapath, f: impl FnOnce() -> T) -> (T, (u64, u64)) {
    let before = sock_counts(dp);
    let r = f();
    let after = sock_counts(dp);
    (r, (after.0 - before.0, after.1 - before.1))
}

/// In the calling thread's namespace: a veth `dev` with `cidr`, up, whose
/// peer `peer` is in the namespace at `peer_ns` (set up there).
fn veth_to(dev: &str, peer: &str, peer_ns: &str, cidr: &str) {
    ip(&[
        "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", peer_ns,
    ]);
    ip(&["addr", "add", cidr, "dev", dev]);
    ip(&["link", "set", dev, "up"]);
}

#[test]
fn host_processes_reach_published_ports_without_a_proxy() {
    let scratch = Scratch::new("sockhook");
    let host = new_netns();
    let container = new_netns();
    let stranger = new_netns();

    // The veth between "host" and "container".
    let cpath = fd_path(&container);
    run_in(&host, || {
        veth_to("dpsk-h", "dpsk-c", &cpath, &format!("{HOST_IP}/24"));
    });
    let (tcp, udp) = run_in(&container, || {
        ip(&[
            "addr",
            "add",
            &format!("{CONTAINER_IP}/24"),
            "dev",
            "dpsk-c",
        ]);
        ip(&["link", "set", "dpsk-c", "up"]);
        (
            TcpListener::bind(v4(Ipv4Addr::UNSPECIFIED, 80)).unwrap(),
            UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 80)).unwrap(),
        )
    });

    let stop = AtomicBool::new(false);
    let resolver_stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // The servers' sockets already live in "container"; any thread serves them.
        s.spawn(|| tcp_server(tcp, &stop));
        s.spawn(|| udp_server(udp, &stop));
        let _stop = StopOnDrop(&stop);

        let mut dp = run_in(&host, || host_side(&scratch));
        let sandbox = new_netns();
        sandbox_resolver(&mut dp, &sandbox, &resolver_stop);

        // A third namespace: same cgroup, same hooks, another cookie.
        run_in(&stranger, || {
            let err = TcpStream::connect_timeout(&v4(Ipv4Addr::LOCALHOST, WILD_PORT), TIMEOUT)
                .expect_err("a socket of another namespace must not be translated");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        });

        // A restarted daemon: new programs swapped into the pinned links.
        let before: Vec<_> = sockhook::PROGRAMS
            .iter()
            .map(|(n, _)| sockhook::pinned_link_info(&scratch.sock_pin(n)).unwrap())
            .collect();
        let dp2 = run_in(&host, || {
            let mut dp2 = Datapath::load(scratch.path()).unwrap();
            sockhook::attach(&mut dp2).unwrap();
            dp2
        });
        drop(dp);
        for ((name, _), old) in sockhook::PROGRAMS.iter().zip(&before) {
            let new = sockhook::pinned_link_info(&scratch.sock_pin(name)).unwrap();
            assert_eq!(new.link_id, old.link_id, "{name}: the same link is kept");
            assert_ne!(new.prog_id, old.prog_id, "{name}: the new program runs");
        }
        run_in(&host, || {
            let (answer, peer) =
                tcp_request(v4(Ipv4Addr::LOCALHOST, WILD_PORT), "after restart").unwrap();
            assert_eq!(answer, format!("after restart from {HOST_IP}"));
            assert_eq!(peer, v4(Ipv4Addr::LOCALHOST, WILD_PORT));
        });

        // A pin that is not a usable link (here a map) is replaced by a
        // fresh attachment.
        let pin = scratch.sock_pin("connect4");
        std::fs::remove_file(&pin).unwrap();
        let out = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&pin)
            .args(["type", "array", "key", "4", "value", "4", "entries", "1"])
            .args(["name", "bogus"])
            .output()
            .expect("bpftool (installed by cargo xtask setup)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut dp2 = dp2;
        run_in(&host, || sockhook::attach(&mut dp2)).unwrap();
        let info = sockhook::pinned_link_info(&pin).unwrap();
        assert_eq!((info.link_type, info.attach_type), (3, 10), "{info:?}");
        run_in(&host, || {
            let (answer, _) = tcp_request(v4(Ipv4Addr::LOCALHOST, WILD_PORT), "fresh").unwrap();
            assert_eq!(answer, format!("fresh from {HOST_IP}"));
        });

        // Full teardown: the pins go, and so do the hooks.
        sockhook::detach(&dp2).unwrap();
        assert!(!scratch.sock_pin("connect4").exists());
        run_in(&host, || {
            // Link release is deferred to a kernel work item: allow a moment.
            let deadline = Instant::now() + TIMEOUT;
            loop {
                match TcpStream::connect_timeout(&v4(Ipv4Addr::LOCALHOST, WILD_PORT), TIMEOUT) {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                    r => assert!(
                        Instant::now() < deadline,
                        "still translated after detach: {r:?}"
                    ),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    });
}

/// Everything the "host" namespace does while the hooks are attached: loads
/// the datapath, attaches, publishes, and checks every way in. Returns the
/// datapath (its programs stay loaded) for the restart check.
fn host_side(scratch: &Scratch) -> Datapath {
    let mut dp = Datapath::load(scratch.path()).expect("loading the datapath");
    sockhook::attach(&mut dp).expect("attaching the socket hooks");
    for (name, _) in sockhook::PROGRAMS {
        assert!(scratch.sock_pin(name).exists(), "{name} is pinned");
    }
    let container = NatAddr::new(ipv4_wire(CONTAINER_IP.octets()), port_wire(80));
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        dp.set_port(PortKey::new(proto, 0, port_wire(WILD_PORT)), container)
            .unwrap();
    }
    dp.set_port(
        PortKey::new(
            IPPROTO_TCP,
            ipv4_wire(Ipv4Addr::LOCALHOST.octets()),
            port_wire(LO_PORT),
        ),
        container,
    )
    .unwrap();
    dp.sync_local_addrs(&[ipv4_wire(HOST_IP.octets())]).unwrap();
    let translated = sock_translated(&dp);

    // TCP to loopback and to a local address; the container sees the
    // address of the route to it (here the veth's, on a daemon the gateway).
    for (to, msg) in [
        (v4(Ipv4Addr::LOCALHOST, WILD_PORT), "via loopback"),
        (v4(Ipv4Addr::new(127, 0, 0, 9), WILD_PORT), "via 127.0.0.9"),
        (v4(HOST_IP, WILD_PORT), "via a local address"),
        (v4(Ipv4Addr::LOCALHOST, LO_PORT), "via 127.0.0.1 only"),
    ] {
        let (answer, peer) = tcp_request(to, msg).unwrap_or_else(|e| panic!("{to}: {e}"));
        assert_eq!(answer, format!("{msg} from {HOST_IP}"), "{to}");
        assert_eq!(peer, to, "getpeername shows the address asked for");
    }
    // A port published on 127.0.0.1 only does not answer elsewhere.
    for to in [
        v4(Ipv4Addr::new(127, 0, 0, 2), LO_PORT),
        v4(HOST_IP, LO_PORT),
    ] {
        let err = tcp_request(to, "nope").expect_err("published on 127.0.0.1 only");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{to}: {err}");
    }
    // An unpublished port is left alone: a call counted, not translated.
    let (err, moved) = counted(&dp, || {
        tcp_request(v4(Ipv4Addr::LOCALHOST, WILD_PORT + 7), "x").unwrap_err()
    });
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        moved,
        (1, 0),
        "(packets, translated) of a connect to an unpublished port"
    );
    // A published one: connect and getpeername, both rewritten.
    let (_, moved) = counted(&dp, || {
        tcp_request(v4(Ipv4Addr::LOCALHOST, WILD_PORT), "counted").unwrap()
    });
    assert_eq!(
        moved,
        (2, 2),
        "(packets, translated) of connect + getpeername"
    );
    // Destinations that are not the host's are none of the hooks' business.
    let (_, moved) = counted(&dp, || {
        let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        u.send_to(b"x", v4(CONTAINER_IP, 9)).unwrap();
    });
    assert_eq!(
        moved,
        (0, 0),
        "(packets, translated) of a send to a container address"
    );

    // UDP, unconnected: sendto + recvfrom show the published address.
    let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    u.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = [0u8; 512];
    for to in [v4(Ipv4Addr::LOCALHOST, WILD_PORT), v4(HOST_IP, WILD_PORT)] {
        u.send_to(b"ping", to).unwrap();
        let (n, from) = u
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("UDP {to}: {e}"));
        assert_eq!(&buf[..n], b"echo:ping");
        assert_eq!(from, to, "recvfrom shows the address sent to");
    }
    // UDP, connected: connect4 translates, getpeername and recvfrom reverse.
    let c = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let to = v4(Ipv4Addr::LOCALHOST, WILD_PORT);
    c.connect(to).unwrap();
    assert_eq!(c.peer_addr().unwrap(), to);
    c.send(b"hello").unwrap();
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"echo:hello"[..], to));

    // 4 TCP + 2 unconnected sends + 2 recvfrom + connect, getpeername and
    // recvfrom of the connected socket, plus 4 getpeername of TCP.
    let got = sock_translated(&dp) - translated;
    assert!(
        got >= 15,
        "sock_addr translated {got} times, want at least 15"
    );
    dp
}

/// A sandbox of the daemon (its netns cookie in `DNS_PORTS`) asks
/// 127.0.0.11:53: the query goes to the resolver's real port, the answer
/// shows :53, and both calls are counted as translated. (`dataplane stats`
/// showed 0 on the `sock_addr` row while every DNS query went this way.)
fn sandbox_resolver(dp: &mut Datapath, sandbox: &File, stop: &AtomicBool) {
    const RESOLVER_PORT: u16 = 18053;
    let dns = v4(Ipv4Addr::new(127, 0, 0, 11), 53);
    let (server, cookie) = run_in(sandbox, || {
        (
            UdpSocket::bind(v4(Ipv4Addr::new(127, 0, 0, 11), RESOLVER_PORT)).unwrap(),
            sockhook::netns_cookie().unwrap(),
        )
    });
    // Without the entry the sandbox is not this daemon's: nothing counted.
    let (_, moved) = counted(dp, || {
        run_in(sandbox, || {
            let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            u.send_to(b"q", dns).unwrap();
        })
    });
    assert_eq!(moved, (0, 0), "a stranger's query to 127.0.0.11:53");
    dp.set_dns_port(cookie, RESOLVER_PORT).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| udp_server(server, stop));
        let _stop = StopOnDrop(stop);
        let (answer, moved) = counted(dp, || {
            run_in(sandbox, || {
                let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                u.set_read_timeout(Some(TIMEOUT)).unwrap();
                u.send_to(b"query", dns).unwrap();
                let mut buf = [0u8; 64];
                let (n, from) = u.recv_from(&mut buf).expect("the resolver answers");
                (buf[..n].to_vec(), from)
            })
        });
        assert_eq!(answer, (b"echo:query".to_vec(), dns));
        assert_eq!(moved, (2, 2), "(packets, translated) of sendto + recvfrom");
    });
    dp.remove_dns_port(cookie).unwrap();
}

// ---------------------------------------------------------------------------
// Service VIPs, east-west: a connect/sendto of the daemon's namespace or of
// one of its sandboxes to a VIP goes to a replica of the service's Maglev
// table.
//
// Namespaces: "host" (the daemon's; veth to "replicas", 10.231.78.1/24),
// "replicas" (10.231.78.2-4 on that veth, the three replicas' servers, and
// 10.231.79.1/24 toward "sandbox"), "sandbox" (10.231.79.2/24, default
// route via "replicas"; its cookie in DNS_PORTS) and "stranger" (no entry:
// its connects to the VIP are left alone). No namespace has a route to the
// VIPs (10.231.80.0/24): only a translated call gets anywhere.

const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 80, 100);
/// A service whose only replica is not live.
const DEAD_VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 80, 101);
const VIP_SLOT: u32 = 7;
const DEAD_SLOT: u32 = 8;
const REPLICAS: [(&str, Ipv4Addr); 3] = [
    ("task-1", Ipv4Addr::new(10, 231, 78, 2)),
    ("task-2", Ipv4Addr::new(10, 231, 78, 3)),
    ("task-3", Ipv4Addr::new(10, 231, 78, 4)),
];
const TCP_TARGET: u16 = 8080;
/// The service's ingress port (every host address).
const INGRESS_PORT: u16 = 30080;
const UDP_TARGET: u16 = 5353;

/// The VIP services: TCP VIP:80 -> 8080 and UDP VIP:53 -> 5353 over the
/// three replicas (`live` says which take new flows), and DEAD_VIP:80 with
/// one replica that is not.
fn vip_services(live: [bool; 3]) -> Vec<ServiceSpec> {
    let fe = |proto, addr, port, target| FrontendSpec {
        proto,
        addr,
        port,
        target,
        flags: SVC_VIP,
    };
    vec![
        ServiceSpec {
            slot: VIP_SLOT,
            frontends: vec![
                fe(IPPROTO_TCP, VIP, 80, TCP_TARGET),
                fe(IPPROTO_UDP, VIP, 53, UDP_TARGET),
                FrontendSpec {
                    proto: IPPROTO_TCP,
                    addr: Ipv4Addr::UNSPECIFIED,
                    port: INGRESS_PORT,
                    target: TCP_TARGET,
                    flags: SVC_INGRESS,
                },
            ],
            replicas: REPLICAS
                .iter()
                .zip(live)
                .map(|(&(name, ip), live)| ReplicaSpec {
                    name: name.to_string(),
                    ip,
                    live,
                    weight: 1,
                })
                .collect(),
        },
        ServiceSpec {
            slot: DEAD_SLOT,
            frontends: vec![fe(IPPROTO_TCP, DEAD_VIP, 80, TCP_TARGET)],
            replicas: vec![ReplicaSpec {
                name: "task-dead".to_string(),
                ip: Ipv4Addr::new(10, 231, 78, 9),
                live: false,
                weight: 1,
            }],
        },
    ]
}

/// The replica address the hooks must choose for a socket with `cookie`
/// to `(proto, VIP, port)`, from the live replicas' names alone: the
/// kernel's pick and the daemon's table must agree with the builder.
fn expected_replica(live: [bool; 3], cookie: u64, proto: u8, port: u16) -> Ipv4Addr {
    expected_replica_of(live, cookie, proto, VIP, port)
}

/// [`expected_replica`] for a socket that asked for `addr:port`.
fn expected_replica_of(
    live: [bool; 3],
    cookie: u64,
    proto: u8,
    addr: Ipv4Addr,
    port: u16,
) -> Ipv4Addr {
    let names: Vec<(&str, Ipv4Addr)> = REPLICAS
        .iter()
        .zip(live)
        .filter(|(_, l)| *l)
        .map(|(r, _)| *r)
        .collect();
    let table = maglev::build(&names.iter().map(|r| r.0).collect::<Vec<_>>(), MAGLEV_M).unwrap();
    let h = sock_hash(cookie, ipv4_wire(addr.octets()), port_wire(port), proto);
    names[table[(h % MAGLEV_M) as usize] as usize].1
}

/// `SO_COOKIE` of a socket: what `bpf_get_socket_cookie` returns for it.
fn socket_cookie(s: &impl std::os::fd::AsRawFd) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` outlive the call and match in size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    cookie
}

/// A TCP connect to `to` on a socket whose cookie is known before the
/// connect (std opens and connects in one call).
fn tcp_connect(to: SocketAddrV4) -> io::Result<(TcpStream, u64)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cookie = socket_cookie(&fd);
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sa` is a valid sockaddr_in of the size passed.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(TIMEOUT))?;
    Ok((s, cookie))
}

/// One request to the TCP VIP: the replica's answer (its address), what
/// getpeername shows, and the socket's cookie.
fn vip_request() -> io::Result<(Ipv4Addr, SocketAddr, u64)> {
    vip_request_to(SocketAddrV4::new(VIP, 80))
}

/// [`vip_request`] to any address.
fn vip_request_to(to: SocketAddrV4) -> io::Result<(Ipv4Addr, SocketAddr, u64)> {
    let (mut s, cookie) = tcp_connect(to)?;
    let peer = s.peer_addr()?;
    s.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let ip = answer
        .trim_end()
        .parse()
        .map_err(|e| io::Error::other(format!("answer {answer:?}: {e}")))?;
    Ok((ip, peer, cookie))
}

/// A replica's TCP server: greets each connection with the address it was
/// reached at and a newline, then echoes what it reads until EOF.
fn replica_tcp_server(l: TcpListener, stop: &AtomicBool) {
    accept_loop(l, stop, Duration::from_millis(1), |mut s, _| {
        let local = s.local_addr().unwrap();
        // One write: a reader must not see the line in pieces.
        let _ = s.write_all(format!("{}\n", local.ip()).as_bytes());
        let _ = io::copy(&mut s.try_clone().unwrap(), &mut s);
    });
}

/// A replica's UDP server (bound to its own address): answers each
/// datagram with that address.
fn replica_udp_server(u: UdpSocket, stop: &AtomicBool) {
    u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let me = u.local_addr().unwrap().ip().to_string();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        match u.recv_from(&mut buf) {
            Ok((_, from)) => {
                u.send_to(me.as_bytes(), from).unwrap();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

/// The stats of service `slot`.
fn svc_stats(dp: &Datapath, slot: u32) -> ServiceStats {
    dp.service_stats()
        .unwrap()
        .into_iter()
        .find(|s| s.slot == slot)
        .unwrap_or_else(|| panic!("no stats for slot {slot}"))
}

#[test]
fn vip_connects_are_balanced_over_the_replicas() {
    let scratch = Scratch::new("sockvip");
    let host = new_netns();
    let replicas = new_netns();
    let sandbox = new_netns();
    let stranger = new_netns();

    let rpath = fd_path(&replicas);
    run_in(&host, || {
        veth_to("dpv-h", "dpv-r", &rpath, "10.231.78.1/24");
    });
    run_in(&sandbox, || {
        veth_to("dpv-s", "dpv-rs", &rpath, "10.231.79.2/24");
        ip(&["route", "add", "default", "via", "10.231.79.1"]);
    });
    let (tcp, udps) = run_in(&replicas, || {
        for (_, a) in REPLICAS {
            ip(&["addr", "add", &format!("{a}/24"), "dev", "dpv-r"]);
        }
        ip(&["link", "set", "dpv-r", "up"]);
        ip(&["addr", "add", "10.231.79.1/24", "dev", "dpv-rs"]);
        ip(&["link", "set", "dpv-rs", "up"]);
        let tcp = TcpListener::bind(v4(Ipv4Addr::UNSPECIFIED, TCP_TARGET)).unwrap();
        let udps: Vec<UdpSocket> = REPLICAS
            .iter()
            .map(|(_, a)| UdpSocket::bind(v4(*a, UDP_TARGET)).unwrap())
            .collect();
        (tcp, udps)
    });

    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| replica_tcp_server(tcp, &stop));
        for u in udps {
            let stop = &stop;
            s.spawn(move || replica_udp_server(u, stop));
        }
        let _stop = StopOnDrop(&stop);

        let mut dp = run_in(&host, || {
            let mut dp = Datapath::load(scratch.path()).expect("loading the datapath");
            sockhook::attach(&mut dp).expect("attaching the socket hooks");
            dp
        });
        let all = [true; 3];
        dp.sync_services(&vip_services(all)).unwrap();

        // The daemon's namespace: each connect reaches the replica its
        // cookie picks, and getpeername shows the VIP.
        let vip80 = v4(VIP, 80);
        let (got, peer, cookie) = run_in(&host, vip_request).expect("TCP to the VIP");
        assert_eq!(peer, vip80, "getpeername shows the VIP");
        assert_eq!(got, expected_replica(all, cookie, IPPROTO_TCP, 80));

        // A few thousand connects spread within 10 % of even, each to its
        // expected replica, and each counted once for the service and for
        // its replica.
        const N: usize = 3000;
        let before = svc_stats(&dp, VIP_SLOT);
        let counts = run_in(&host, || {
            let mut counts = StdHashMap::<Ipv4Addr, u64>::new();
            for _ in 0..N {
                let (got, peer, cookie) = vip_request().expect("TCP to the VIP");
                assert_eq!(peer, vip80);
                assert_eq!(got, expected_replica(all, cookie, IPPROTO_TCP, 80));
                *counts.entry(got).or_default() += 1;
            }
            counts
        });
        eprintln!("{N} connects to the VIP per replica: {counts:?}");
        let even = (N / REPLICAS.len()) as f64;
        for (_, a) in REPLICAS {
            let c = counts.get(&a).copied().unwrap_or(0) as f64;
            assert!(
                (c - even).abs() <= even * 0.1,
                "{a}: {c} of {N}: {counts:?}"
            );
        }
        let after = svc_stats(&dp, VIP_SLOT);
        assert_eq!(after.conns - before.conns, N as u64);
        for r in &after.replicas {
            let was = before.replicas.iter().find(|b| b.id == r.id).unwrap();
            assert_eq!(r.conns - was.conns, counts[&r.ip], "{r:?}");
        }

        // A sandbox of the daemon: the same; a stranger namespace: left
        // alone (no route to the VIP).
        let cookie = run_in(&sandbox, sockhook::netns_cookie).unwrap();
        dp.set_dns_port(cookie, 18053).unwrap();
        let (got, peer, cookie) = run_in(&sandbox, vip_request).expect("TCP from the sandbox");
        assert_eq!(peer, vip80);
        assert_eq!(got, expected_replica(all, cookie, IPPROTO_TCP, 80));
        let err =
            run_in(&stranger, vip_request).expect_err("a stranger's connect is not translated");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");

        // UDP, unconnected: every datagram of one socket to its replica,
        // recvfrom shows the VIP; counted as one connection.
        let vip53 = v4(VIP, 53);
        let before = svc_stats(&dp, VIP_SLOT).conns;
        run_in(&host, || {
            let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            u.set_read_timeout(Some(TIMEOUT)).unwrap();
            let want = expected_replica(all, socket_cookie(&u), IPPROTO_UDP, 53);
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                u.send_to(b"q", vip53).unwrap();
                let (n, from) = u.recv_from(&mut buf).expect("the replica answers");
                assert_eq!(from, vip53, "recvfrom shows the VIP");
                assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want.to_string());
            }
        });
        assert_eq!(svc_stats(&dp, VIP_SLOT).conns - before, 1);
        // UDP, connected: connect4 translates, getpeername shows the VIP.
        run_in(&sandbox, || {
            let u = UdpSocket::bind(v4(Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            u.set_read_timeout(Some(TIMEOUT)).unwrap();
            let want = expected_replica(all, socket_cookie(&u), IPPROTO_UDP, 53);
            u.connect(vip53).unwrap();
            assert_eq!(u.peer_addr().unwrap(), vip53);
            u.send(b"q").unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = u.recv_from(&mut buf).expect("the replica answers");
            assert_eq!(from, vip53);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want.to_string());
        });

        // The ingress port, from a process of the host itself: loopback
        // and the host's address, shown back as asked. A sandbox's own
        // loopback is its own business.
        dp.sync_local_addrs(&[ipv4_wire([10, 231, 78, 1])]).unwrap();
        run_in(&host, || {
            for addr in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 231, 78, 1)] {
                let to = SocketAddrV4::new(addr, INGRESS_PORT);
                let (got, peer, cookie) = vip_request_to(to).expect("the ingress port");
                assert_eq!(peer, SocketAddr::V4(to));
                assert_eq!(
                    got,
                    expected_replica_of(all, cookie, IPPROTO_TCP, addr, INGRESS_PORT)
                );
            }
        });
        let err = run_in(&sandbox, || {
            vip_request_to(SocketAddrV4::new(Ipv4Addr::LOCALHOST, INGRESS_PORT))
        })
        .expect_err("not translated in a sandbox");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

        // A VIP whose replicas are all down: the connect is left alone (and
        // fails), and the service counts a service_no_backend drop.
        let err = run_in(&host, || tcp_connect(SocketAddrV4::new(DEAD_VIP, 80)))
            .expect_err("no replica: the connect goes nowhere");
        assert_eq!(err.raw_os_error(), Some(libc::ENETUNREACH), "{err}");
        let dead = svc_stats(&dp, DEAD_SLOT);
        assert_eq!(dead.drops.get("service_no_backend"), Some(&1), "{dead:?}");
        assert_eq!(dead.conns, 0);

        // A replica that dies takes no new connection, the others' share
        // follows the new table, and a connection it already has goes on
        // (still shown as the VIP).
        let (mut held, _) = run_in(&host, || tcp_connect(SocketAddrV4::new(VIP, 80))).unwrap();
        // The whole greeting line (one read may return part of it).
        let mut greeting = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(held.try_clone().unwrap()),
            &mut greeting,
        )
        .unwrap();
        let dying: Ipv4Addr = greeting.trim_end().parse().unwrap();
        let mut live = [true; 3];
        let k = REPLICAS.iter().position(|r| r.1 == dying).unwrap();
        live[k] = false;
        dp.sync_services(&vip_services(live)).unwrap();
        assert_eq!(held.peer_addr().unwrap(), vip80, "still shown as the VIP");
        held.write_all(b"still here").unwrap();
        held.shutdown(Shutdown::Write).unwrap();
        let mut echo = String::new();
        held.read_to_string(&mut echo).unwrap();
        assert_eq!(
            echo, "still here",
            "an established connection keeps its replica"
        );
        drop(held);
        run_in(&host, || {
            for _ in 0..200 {
                let (got, _, cookie) = vip_request().expect("TCP to the VIP");
                assert_ne!(got, dying, "the dead replica got a new connection");
                assert_eq!(got, expected_replica(live, cookie, IPPROTO_TCP, 80));
            }
        });

        dp.remove_dns_port(cookie).unwrap();
        dp.sync_services(&[]).unwrap();
        sockhook::detach(&dp).unwrap();
    });
}

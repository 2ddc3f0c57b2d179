//! The DHCP client against a server nobody here wrote: Debian's dnsmasq in
//! a namespace playing the LAN, the client on the interface of another
//! namespace playing the container. Lease, renewal, rebinding, a NAK,
//! RELEASE, and a server that stays silent.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use dataplane_user::dhcp::{self, DhcpError, Identity};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("dp-dhcp-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0))
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", &self.0];
        a.extend_from_slice(args);
        run("ip", &a);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0x00, 0x07];

#[test]
fn leases_from_dnsmasq_are_obtained_renewed_rebound_refused_and_released() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root (CI is)"
    );
    let lan = Ns::new("lan");
    let ctr = Ns::new("ctr");
    lan.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "c0"]);
    lan.ip(&["link", "set", "c0", "netns", &ctr.0]);
    lan.ip(&["addr", "add", "10.77.0.1/24", "dev", "l0"]);
    lan.ip(&["link", "set", "l0", "up"]);
    ctr.ip(&["link", "set", "c0", "address", "02:42:0a:4d:00:07"]);
    ctr.ip(&["link", "set", "c0", "up"]);

    let dir = tempdir();
    let leases = dir.join("leases");
    let server = Server(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lan.0,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
            ])
            .arg("--port=0")
            .arg("--interface=l0")
            .arg("--bind-interfaces")
            .arg("--dhcp-authoritative")
            .arg("--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,2m")
            .arg("--dhcp-option=option:router,10.77.0.1")
            // Short renewal and rebinding times, so the test sees both.
            .arg("--dhcp-option=option:T1,4")
            .arg("--dhcp-option=option:T2,8")
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq"),
    );

    let id = Identity::new(MAC, Some("web".into()));
    let sock = dhcp::socket_in(&ctr.path(), "c0").expect("a DHCP socket in the container");
    // dnsmasq may still be starting: the client's own retransmissions
    // cover that within the limit.
    let lease = dhcp::obtain(&sock, &id, Duration::from_secs(20), 1_000).expect("a lease");
    let octet = lease.ip.octets()[3];
    assert!(
        lease.ip.octets()[..3] == [10, 77, 0] && (50..=60).contains(&octet),
        "{lease:?}"
    );
    assert_eq!(
        (lease.prefix, lease.router, lease.server),
        (
            24,
            Some(Ipv4Addr::new(10, 77, 0, 1)),
            Ipv4Addr::new(10, 77, 0, 1)
        )
    );
    assert_eq!(
        (lease.lease_secs, lease.t1_secs, lease.t2_secs),
        (120, 4, 8)
    );
    assert_eq!(lease.obtained_at, 1_000);
    assert!(matches!(lease.due(1_004), dhcp::Due::Renew { .. }));
    let recorded = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(recorded.contains("02:42:0a:4d:00:07"), "{recorded}");

    // Bound: the address on the interface, then a unicast renewal.
    ctr.ip(&["addr", "add", &format!("{}/24", lease.ip), "dev", "c0"]);
    let renewed =
        dhcp::extend(&sock, &id, &lease, false, Duration::from_secs(10), 1_004).expect("renewed");
    assert_eq!((renewed.ip, renewed.obtained_at), (lease.ip, 1_004));
    let rebound =
        dhcp::extend(&sock, &id, &renewed, true, Duration::from_secs(10), 1_008).expect("rebound");
    assert_eq!(rebound.ip, lease.ip);

    // After a restart, the stored address is confirmed (INIT-REBOOT); an
    // address the server never gave is refused (an authoritative NAK).
    let kept = dhcp::confirm(&sock, &id, lease.ip, Duration::from_secs(10), 1_009)
        .expect("the stored address confirmed");
    assert_eq!(kept.ip, lease.ip);
    let foreign = Ipv4Addr::new(10, 77, 1, 99);
    match dhcp::confirm(&sock, &id, foreign, Duration::from_secs(10), 1_010) {
        Err(DhcpError::Nak { server, .. }) => assert_eq!(server, Ipv4Addr::new(10, 77, 0, 1)),
        other => panic!("expected a NAK, got {other:?}"),
    }

    // RELEASE: the server forgets the lease.
    dhcp::send_release(&sock, &id, &rebound).expect("release sent");
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string(&leases).unwrap_or_default();
        if !now.contains("02:42:0a:4d:00:07") {
            break;
        }
        assert!(Instant::now() < end, "lease still recorded: {now}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A silent server: a clear timeout within the bound.
    drop(server);
    let t = Instant::now();
    match dhcp::obtain(&sock, &id, Duration::from_secs(3), 2_000) {
        Err(DhcpError::Timeout(d)) => assert_eq!(d, Duration::from_secs(3)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("dp-dhcp-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! Containers on an existing LAN: the `macvlan` driver (the kernel's
//! macvlan device, untagged) and VLAN networks (802.1Q tags pushed and
//! popped by our programs on the parent, no 8021q), against machines of a
//! LAN made of namespaces around a switch (`dataplane_tests::lan`).

use dataplane_tests::{
    eventually, in_subnet,
    lan::{dnsmasq, leases},
    lan::{frame, ip4, ipv4, mac, send_frame, udp, Lan, TaggedPeer, P_8021AD, P_8021Q, P_IPV4},
    tshark, Daemon, TempDir,
};

/// The container's MAC and sandbox on network `net`.
fn mac_and_sandbox(d: &Daemon, ctr: &str, net: &str) -> ([u8; 6], String) {
    let i = d.inspect(ctr);
    let m = i["NetworkSettings"]["Networks"][net]["MacAddress"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC of {ctr} on {net}: {i:#}"))
        .to_string();
    (
        mac(&m),
        i["NetworkSettings"]["SandboxKey"]
            .as_str()
            .expect("SandboxKey")
            .to_string(),
    )
}

/// Whether the namespace `ns` (a [`dataplane_tests::NetNs`]) pings `ip`.
fn ns_pings(ns: &dataplane_tests::NetNs, ip: &str) -> bool {
    (0..5).any(|_| ns.exec(&["ping", "-c1", "-W1", ip]).success())
}

#[test]
fn macvlan_containers_and_a_lan_peer_reach_each_other_both_ways() {
    let d = Daemon::start();
    let mut lan = Lan::new(&d);
    let peer_ip = "10.70.0.50";
    let peer = lan.peer(&format!("{peer_ip}/24"), None);
    d.network_create(&[
        "--driver",
        "macvlan",
        "--subnet",
        "10.70.0.0/24",
        "--ip-range",
        "10.70.0.128/25",
        "--gateway",
        "10.70.0.1",
        "-o",
        "parent=lan0",
        "mv",
    ]);
    let n = d.network_inspect("mv");
    assert_eq!(n["Driver"], "macvlan", "{n:#}");
    assert_eq!(n["Options"]["parent"], "lan0", "{n:#}");
    assert_eq!(n["Options"]["macvlan_mode"], "bridge", "{n:#}");
    d.run_sleeper("m1", Some("mv"), &[]);
    d.run_sleeper("m2", Some("mv"), &[]);
    let (ip1, ip2) = (d.ip("m1", "mv"), d.ip("m2", "mv"));
    // --ip-range leaves the rest of the subnet to the LAN.
    assert!(in_subnet(&ip1, "10.70.0.128/25") && in_subnet(&ip2, "10.70.0.128/25"));
    // The container's interface is the kernel's macvlan on lan0.
    let link = d.exec_in("m1", &["ip", "-d", "link", "show", "eth0"]).ok();
    assert!(link.stdout.contains("macvlan mode bridge"), "{link}");
    d.assert_pings("m1", peer_ip);
    assert!(ns_pings(&peer, &ip1), "the LAN peer does not reach {ip1}");
    assert!(d.pings("m1", &ip2), "m1 does not reach m2 (bridge mode)");
    // The MAC the peer learned for the container is the container's own.
    let (m1_mac, _) = mac_and_sandbox(&d, "m1", "mv");
    let neigh = peer.exec(&["ip", "neigh", "show", &ip1]).ok();
    let want = m1_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(neigh.stdout.contains(&want), "{neigh} (want {want})");

    // Refusals change nothing.
    for (args, says) in [
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet",
                "10.71.0.0/24",
                "-o",
                "parent=nosuch0",
                "x",
            ][..],
            "does not exist",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet",
                "10.71.0.0/24",
                "-o",
                "parent=lan0",
                "x",
            ][..],
            "already the segment",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet",
                "10.71.0.0/24",
                "x",
            ][..],
            "needs its parent",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--internal",
                "--subnet",
                "10.71.0.0/24",
                "-o",
                "parent=lan0.9",
                "x",
            ][..],
            "--internal",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.71.0.0/24",
                "-o",
                "parent=lan0",
                "x",
            ][..],
            "option of macvlan",
        ),
        (
            &[
                "run",
                "-d",
                "--network",
                "mv",
                "-p",
                "8080:80",
                "--",
                "sleep",
                "60",
            ][..],
            "cannot publish ports",
        ),
    ] {
        let line = d.assert_refused(args);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    d.ns()
        .exec(&[
            "ip", "link", "add", "down0", "type", "veth", "peer", "name", "down1",
        ])
        .ok();
    let line = d.assert_refused(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.71.0.0/24",
        "-o",
        "parent=down0",
        "x",
    ]);
    assert!(line.contains("is down"), "{line}");

    // Disconnect takes the link away; rm takes the rest.
    d.ok(&["network", "disconnect", "mv", "m2"]);
    eventually("m2's eth0 to go", || {
        let o = d.exec_in("m2", &["ip", "link", "show", "eth0"]);
        (!o.success()).then_some(()).ok_or(o.to_string())
    });
    d.ok(&["rm", "-f", "m1", "m2"]);
    d.ok(&["network", "rm", "mv"]);
    // The parent is the host's and stays as it was.
    let p = d.ns().exec(&["ip", "-o", "link", "show", "lan0"]).ok();
    assert!(
        p.stdout.contains("state UP") || p.stdout.contains(",UP"),
        "{p}"
    );
}

/// A UDP frame to `dst_mac`/`dst_ip` port 7777 carrying `marker`, with
/// `tags`, from a LAN machine at `src_mac`/10.100.0.99.
fn marked(
    dst_mac: [u8; 6],
    dst_ip: &str,
    src_mac: [u8; 6],
    tags: &[(u16, u16)],
    marker: &str,
) -> Vec<u8> {
    frame(
        dst_mac,
        src_mac,
        tags,
        P_IPV4,
        &ipv4(
            ip4("10.100.0.99"),
            ip4(dst_ip),
            17,
            &udp(7777, 7777, marker.as_bytes()),
        ),
    )
}

#[test]
fn vlan_networks_share_a_parent_isolated_from_each_other_and_the_untagged_segment() {
    let mut d = Daemon::start();
    let mut lan = Lan::new(&d);
    // One machine on VLAN 100; one on VLAN 200 and one untagged, both with
    // addresses in VLAN 100's subnet, which must stay out of reach.
    let p100 = lan.port_ns();
    let t100 = TaggedPeer::start(&p100, 100, "10.100.0.50", "02:00:00:00:01:00");
    let p200 = lan.port_ns();
    let t200 = TaggedPeer::start(&p200, 200, "10.100.0.60", "02:00:00:00:02:00");
    let untagged = lan.peer("10.100.0.70/24", None);
    d.network_create(&[
        "-d",
        "macvlan",
        "--subnet",
        "10.100.0.0/24",
        "--gateway",
        "10.100.0.1",
        "-o",
        "parent=lan0.100",
        "v100",
    ]);
    d.network_create(&[
        "-d",
        "macvlan",
        "--subnet",
        "10.200.0.0/24",
        "-o",
        "parent=lan0",
        "-o",
        "vlan=200",
        "v200",
    ]);
    let n = d.network_inspect("v100");
    assert_eq!(
        (&n["Options"]["parent"], &n["Options"]["vlan"]),
        (&serde_json::json!("lan0"), &serde_json::json!("100")),
        "{n:#}"
    );
    let line = d.assert_refused(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "10.201.0.0/24",
        "-o",
        "parent=lan0",
        "-o",
        "vlan=100",
        "again",
    ]);
    assert!(line.contains("lan0 VLAN 100"), "{line}");
    d.run_sleeper("a", Some("v100"), &[]);
    d.run_sleeper("b", Some("v100"), &[]);
    d.run_sleeper("c", Some("v200"), &[]);
    let (a_ip, b_ip) = (d.ip("a", "v100"), d.ip("b", "v100"));
    let (a_mac, a_sandbox) = mac_and_sandbox(&d, "a", "v100");
    let cap = lan.capture("sw1", "vlan");

    d.assert_pings("a", "10.100.0.50");
    d.assert_pings("a", &b_ip);
    d.assert_no_ping("a", "10.100.0.60");
    d.assert_no_ping("a", "10.100.0.70");
    assert!(
        !ns_pings(&untagged, &a_ip),
        "an untagged machine reached {a_ip}"
    );

    // What reaches a's eth0: only its own VLAN's frame.
    let ns_name = std::path::Path::new(&a_sandbox)
        .file_name()
        .expect("netns name")
        .to_string_lossy()
        .into_owned();
    let mut dump = std::process::Command::new("ip");
    dump.args([
        "netns", "exec", &ns_name, "tcpdump", "-i", "eth0", "-n", "-l", "-A", "udp", "port", "7777",
    ]);
    let dump = dataplane_tests::Proc::spawn(dump);
    eventually("tcpdump in a's sandbox", || {
        let o = dump.output_so_far();
        o.contains("listening on").then_some(()).ok_or(o)
    });
    let before = d.drops("vlan_no_endpoint");
    t100.send(&marked(
        a_mac,
        &a_ip,
        t100.mac,
        &[(P_8021Q, 100)],
        "tagged-100",
    ));
    t200.send(&marked(
        a_mac,
        &a_ip,
        t200.mac,
        &[(P_8021Q, 200)],
        "tagged-200",
    ));
    t100.send(&marked(
        a_mac,
        &a_ip,
        t100.mac,
        &[(P_8021AD, 100)],
        "stag-100",
    ));
    t100.send(&marked(
        a_mac,
        &a_ip,
        t100.mac,
        &[(P_8021AD, 100), (P_8021Q, 100)],
        "qinq-100",
    ));
    send_frame(
        &untagged.path(),
        "eth0",
        &marked(a_mac, &a_ip, [2, 0, 0, 0, 0, 0x70], &[], "untagged"),
    );
    eventually("the tagged frame in a", || {
        let o = dump.output_so_far();
        o.contains("tagged-100").then_some(()).ok_or(o)
    });
    // VLAN 200 has no container with a's MAC: dropped and counted.
    eventually("vlan_no_endpoint to count the VLAN 200 frame", || {
        let now = d.drops("vlan_no_endpoint");
        (now > before).then_some(()).ok_or(format!("{now}"))
    });
    // The others had as long as the one that arrived.
    let seen = dump.output_so_far();
    for m in ["tagged-200", "stag-100", "qinq-100", "untagged"] {
        assert!(!seen.contains(m), "{m} reached a: {seen}");
    }

    // A tag a container writes itself is dropped (no VLAN hopping).
    let before = d.drops("vlan_tagged");
    send_frame(
        std::path::Path::new(&a_sandbox),
        "eth0",
        &marked(
            [0xff; 6],
            "10.100.0.60",
            a_mac,
            &[(P_8021Q, 200)],
            "hop-200",
        ),
    );
    eventually("vlan_tagged to count a's own tag", || {
        let now = d.drops("vlan_tagged");
        (now > before).then_some(()).ok_or(format!("{now}"))
    });

    // On the wire: a's frames carry VID 100, never 200; tshark decodes them.
    let file = cap.finish();
    let (_, rows) = tshark(
        &file,
        &format!("ip.src == {a_ip}"),
        &["vlan.id", "vlan.etype"],
    );
    assert!(!rows.is_empty(), "no frame of a on the trunk");
    for r in &rows {
        assert_eq!(r, "100\t0x0800", "a's frame tagged otherwise: {rows:?}");
    }
    assert!(
        !t200
            .seen()
            .iter()
            .any(|f| f.windows(7).any(|w| w == b"hop-200")),
        "a's own tag reached VLAN 200"
    );
    // Frames seen by the VLAN 100 peer from a carry a's MAC and VID 100.
    assert!(t100
        .seen()
        .iter()
        .any(|f| f[6..12] == a_mac && f[12..16] == [0x81, 0, 0, 100]));
    let stats = d.stats();
    assert!(
        stats["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "vlan_trunk"),
        "{stats:#}"
    );
    // A restart keeps the VLANs: the maps are pinned, and the new
    // daemon's first pass writes the same entries.
    d.stop("TERM");
    // Packets never wait on the daemon: a reaches VLAN 100 meanwhile.
    let ping = dataplane_tests::sh(
        "ip",
        &[
            "netns",
            "exec",
            &ns_name,
            "ping",
            "-c2",
            "-W2",
            "10.100.0.50",
        ],
    );
    assert!(ping.success(), "with the daemon down: {ping}");
    d.restart();
    d.assert_pings("a", "10.100.0.50");
    d.assert_pings("a", &b_ip);
    d.assert_no_ping("a", "10.100.0.60");
}

fn dhcp_of(d: &Daemon, ctr: &str) -> serde_json::Value {
    d.inspect(ctr)["NetworkSettings"]["Networks"]["dh"]["DHCP"].clone()
}

/// Waits for w's lease to be renewed after `after` (its `ObtainedAt`).
fn renewed(d: &Daemon, after: u64) -> u64 {
    eventually("a renewal", || {
        let l = dhcp_of(d, "w");
        let at = l["ObtainedAt"].as_u64().unwrap_or(0);
        (at > after && l["State"] == "bound")
            .then_some(at)
            .ok_or(format!("{l:#}"))
    })
}

#[test]
fn dhcp_leases_are_obtained_renewed_kept_across_a_restart_released_and_lost() {
    let mut d = Daemon::start();
    let mut lan = Lan::new(&d);
    let srv = lan.peer("10.80.0.1/24", None);
    let dir = TempDir::new();
    let server = dnsmasq(&srv, dir.path(), "10.80.0.50,10.80.0.60");

    // Refusals first: they change nothing.
    for (args, says) in [
        (
            &[
                "network",
                "create",
                "--ipam-driver",
                "dhcp",
                "--subnet",
                "10.80.0.0/24",
                "x",
            ][..],
            "needs a macvlan network",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--ipam-driver",
                "dhcp",
                "-o",
                "parent=lan0",
                "x",
            ][..],
            "--subnet",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--ipam-driver",
                "dhcp",
                "--subnet",
                "10.80.0.0/24",
                "--ip-range",
                "10.80.0.0/28",
                "-o",
                "parent=lan0",
                "x",
            ][..],
            "DHCP server's business",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--ipam-driver",
                "nope",
                "--subnet",
                "10.80.0.0/24",
                "-o",
                "parent=lan0",
                "x",
            ][..],
            "unknown IPAM driver",
        ),
    ] {
        let line = d.assert_refused(args);
        assert!(line.contains(says), "{args:?}: {line}");
    }
    d.network_create(&[
        "-d",
        "macvlan",
        "--ipam-driver",
        "dhcp",
        "--subnet",
        "10.80.0.0/24",
        "-o",
        "parent=lan0",
        "dh",
    ]);
    assert_eq!(d.network_inspect("dh")["IPAM"]["Driver"], "dhcp");
    let line = d.assert_refused(&[
        "run",
        "-d",
        "--network",
        "dh",
        "--ip",
        "10.80.0.9",
        "--",
        "sleep",
        "60",
    ]);
    assert!(line.contains("DHCP server"), "{line}");

    d.run_sleeper("w", Some("dh"), &[]);
    let ip = d.ip("w", "dh");
    let (w_mac, _) = mac_and_sandbox(&d, "w", "dh");
    let w_mac = w_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(in_subnet(&ip, "10.80.0.48/28"), "{ip}");
    let l = dhcp_of(&d, "w");
    assert_eq!(
        (l["State"].as_str(), l["Server"].as_str()),
        (Some("bound"), Some("10.80.0.1")),
        "{l:#}"
    );
    assert!(
        leases(dir.path()).contains(&w_mac),
        "dnsmasq has no lease for {w_mac}: {}",
        leases(dir.path())
    );
    d.assert_pings("w", "10.80.0.1");
    let route = d.exec_in("w", &["ip", "route", "show", "default"]).ok();
    assert!(route.stdout.contains("via 10.80.0.1"), "{route}");

    // Renewed at T1 (4 s), again after a restart of the daemon.
    let first = l["ObtainedAt"].as_u64().expect("ObtainedAt");
    let second = renewed(&d, first);
    d.stop("TERM");
    d.restart();
    assert_eq!(d.ip("w", "dh"), ip, "the lease survives a restart");
    renewed(&d, second);
    d.assert_pings("w", "10.80.0.1");

    // A second container's lease is released on rm.
    d.run_sleeper("r", Some("dh"), &[]);
    let (r_mac, _) = mac_and_sandbox(&d, "r", "dh");
    let r_mac = r_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(leases(dir.path()).contains(&r_mac));
    d.ok(&["rm", "-f", "r"]);
    eventually("dnsmasq to drop r's released lease", || {
        let l = leases(dir.path());
        (!l.contains(&r_mac)).then_some(()).ok_or(l)
    });

    // The server comes back knowing nothing and serving other addresses:
    // it refuses the renewal, and the address goes.
    drop(server);
    let _ = std::fs::remove_file(dir.path().join("leases"));
    let _server = dnsmasq(&srv, dir.path(), "10.80.0.70,10.80.0.80");
    // Then, as a client back in INIT, w asks again and gets one of the
    // new addresses.
    let back = eventually("a new lease from the new range", || {
        let l = dhcp_of(&d, "w");
        let addr = l["Address"].as_str().unwrap_or("").to_string();
        (l["State"] == "bound" && addr != ip)
            .then_some(addr)
            .ok_or(format!("{l:#}"))
    });
    assert!(in_subnet(&back, "10.80.0.64/27"), "{back}");
    let log = d.log();
    assert!(
        log.contains("refused to extend") && log.contains("the address is taken away"),
        "{log}"
    );
    assert!(log.contains("obtained again"), "{log}");
    eventually("w's address to be the new one", || {
        let o = d.exec_in("w", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        (!o.stdout.contains(&format!("{ip}/")) && o.stdout.contains(&format!("{back}/")))
            .then_some(())
            .ok_or(o.to_string())
    });
    assert_eq!(d.ip("w", "dh"), back);
}

#[test]
fn a_silent_dhcp_server_fails_run_and_leaves_nothing() {
    let d = Daemon::start();
    let _lan = Lan::new(&d);
    d.network_create(&[
        "-d",
        "macvlan",
        "--ipam-driver",
        "dhcp",
        "--subnet",
        "10.81.0.0/24",
        "-o",
        "parent=lan0",
        "quiet",
    ]);
    let before = (dataplane_tests::netns_list(), d.snapshot());
    let run = [
        "run",
        "-d",
        "--name",
        "nobody",
        "--network",
        "quiet",
        "--",
        "sleep",
        "60",
    ];
    // Twice: the first attempt left the name free again.
    for _ in 0..2 {
        let out = d.cli(&run);
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains("no DHCP server answered"), "{out}");
        assert_eq!((dataplane_tests::netns_list(), d.snapshot()), before);
    }
}

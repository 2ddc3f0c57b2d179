//! The datapath between sandboxes, their gateway and the host, without a
//! Linux bridge: who reaches whom, and which drops are counted.

use std::time::Duration;

use dataplane_tests::{eventually, retry, Daemon};
use serde_json::Value;

/// An address of "the host" (the daemon's netns) other than any gateway.
const HOST_OTHER: &str = "198.18.0.1";

/// Two sleepers, `c1` and `c2`, on network `n` with `subnet`.
fn pair(d: &Daemon, subnet: &str, extra: &[&str]) {
    let mut args = vec!["--subnet", subnet];
    args.extend_from_slice(extra);
    args.push("n");
    d.network_create(&args);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_sleeper("c2", Some("n"), &[]);
}

/// Asserts that `counter` rose while `f` ran.
#[track_caller]
fn assert_counted(d: &Daemon, counter: &str, f: impl FnOnce()) {
    let before = d.drops(counter);
    f();
    eventually(&format!("the {counter} drop counter to rise"), || {
        let now = d.drops(counter);
        if now > before {
            Ok(())
        } else {
            Err(format!("still {now}; stats: {:#}", d.stats()))
        }
    });
}

#[test]
fn containers_of_one_network_talk_icmp_tcp_and_udp() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.20.0.0/24", "n"]);
    d.run_sleeper("client", Some("n"), &[]);
    d.run_cmd("tcp", Some("n"), &[], &["nc", "-lk", "5000"]);
    d.run_cmd("udp", Some("n"), &[], &["nc", "-u", "-l", "5001"]);
    let (tcp, udp) = (d.ip("tcp", "n"), d.ip("udp", "n"));

    d.assert_pings("client", &tcp);
    d.assert_pings("tcp", &d.ip("client", "n"));
    // ARP was answered: the neighbour entry is complete.
    let neigh = d.exec_in("client", &["ip", "neigh", "show", &tcp]).ok();
    assert!(neigh.stdout.contains("lladdr"), "{neigh}");

    // Retried until the listener is up; -N closes after the line.
    retry(
        "a TCP line through nc",
        20,
        Duration::from_millis(100),
        || {
            let out = d.exec_in(
                "client",
                &[
                    "sh",
                    "-c",
                    &format!("echo tcp-hello | nc -N -w2 {tcp} 5000"),
                ],
            );
            out.success().then_some(()).ok_or(out.to_string())
        },
    );
    d.wait_logs("tcp", "tcp-hello");

    // A fixed source port: `nc -u -l` sticks to the first peer it hears.
    retry(
        "a UDP datagram through nc -u",
        20,
        Duration::from_millis(100),
        || {
            let send = format!("echo udp-hello | nc -u -w1 -p 40001 {udp} 5001");
            let out = d.exec_in("client", &["sh", "-c", &send]);
            let logs = d.cli(&["logs", "udp"]);
            logs.stdout
                .contains("udp-hello")
                .then_some(())
                .ok_or(format!("{out}\n{logs}"))
        },
    );
}

#[test]
fn networks_are_isolated_and_the_drops_counted() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.21.0.0/24", "a"]);
    d.network_create(&["--subnet", "10.22.0.0/24", "b"]);
    d.run_sleeper("a1", Some("a"), &[]);
    d.run_sleeper("a2", Some("a"), &[]);
    d.run_sleeper("b1", Some("b"), &[]);
    d.assert_pings("a1", &d.ip("a2", "a"));
    let b1 = d.ip("b1", "b");
    assert_counted(&d, "cross_network", || d.assert_no_ping("a1", &b1));
    assert_counted(&d, "cross_network", || {
        let out = d.exec_in(
            "b1",
            &[
                "sh",
                "-c",
                &format!("echo x | nc -N -w1 {} 5000", d.ip("a1", "a")),
            ],
        );
        assert!(!out.success(), "TCP crossed networks: {out}");
    });
    // Also the default bridge network is another network.
    d.run_sleeper("d1", None, &[]);
    assert_counted(&d, "cross_network", || d.assert_no_ping("d1", &b1));
}

/// Gives the daemon's namespace ("the host") a second address, HOST_OTHER.
fn add_host_other(d: &Daemon) {
    d.ns()
        .exec(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_OTHER}/32"),
            "dev",
            "lo",
        ])
        .ok();
}

#[test]
fn a_container_reaches_its_gateway_and_the_host_reaches_it() {
    let d = Daemon::start();
    pair(&d, "10.23.0.0/24", &[]);
    add_host_other(&d);
    d.assert_pings("c1", "10.23.0.1");
    d.assert_pings("c1", HOST_OTHER);
    let ip = d.ip("c1", "n");
    let ok = (0..5).any(|_| d.ns().exec(&["ping", "-c1", "-W1", &ip]).success());
    assert!(
        ok,
        "the host cannot reach {ip}: {}",
        d.ns().exec(&["ping", "-c1", "-W1", &ip])
    );
    // On the default bridge network too.
    d.run_sleeper("c3", None, &[]);
    d.assert_pings("c3", "172.17.0.1");
}

#[test]
fn a_spoofed_source_ip_is_dropped_and_counted() {
    let d = Daemon::start();
    pair(&d, "10.24.0.0/24", &[]);
    let c2 = d.ip("c2", "n");
    // Resolves c2's MAC first, so that the spoofed packets are IP, not ARP.
    d.assert_pings("c1", &c2);
    d.exec_in(
        "c1",
        &["ip", "addr", "add", "10.24.0.250/24", "dev", "eth0"],
    )
    .ok();
    assert_counted(&d, "spoofed_ip", || {
        let out = d.exec_in(
            "c1",
            &["ping", "-c2", "-i0.2", "-W1", "-I", "10.24.0.250", &c2],
        );
        assert!(!out.success(), "a spoofed source got through: {out}");
    });
    // Its own address still works.
    d.assert_pings("c1", &c2);
}

#[test]
fn an_internal_network_has_no_way_out() {
    let d = Daemon::start();
    pair(&d, "10.25.0.0/24", &["--internal"]);
    d.network_create(&["--subnet", "10.26.0.0/24", "open"]);
    d.run_sleeper("o1", Some("open"), &[]);
    add_host_other(&d);
    assert_eq!(d.network_inspect("n")["Internal"], true);

    let routes = d.exec_in("c1", &["ip", "route", "show"]).ok();
    assert!(
        !routes.stdout.contains("default"),
        "default route on an internal network: {routes}"
    );
    d.assert_pings("c1", &d.ip("c2", "n"));
    // The same host address is reachable from a non-internal network...
    d.assert_pings("o1", HOST_OTHER);
    // ...but not from the internal one, not even with a route added by hand.
    let out = d.exec_in("c1", &["ping", "-c1", "-W1", HOST_OTHER]);
    assert!(!out.success(), "{out}");
    d.exec_in(
        "c1",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.25.0.1",
            "dev",
            "eth0",
        ],
    )
    .ok();
    assert_counted(&d, "internal_network", || {
        d.assert_no_ping("c1", HOST_OTHER)
    });
}

#[test]
fn there_is_no_linux_bridge_while_containers_talk() {
    let d = Daemon::start();
    pair(&d, "10.27.0.0/24", &[]);
    d.run_sleeper("c3", None, &[]);
    let c2 = d.ip("c2", "n");
    let flood = d.spawn_cli(&["exec", "c1", "--", "ping", "-c", "40", "-i", "0.05", &c2]);
    let show = ["ip", "-d", "link", "show", "type", "bridge"];
    let host = d.ns().exec(&show).ok();
    assert_eq!(host.text(), "", "a bridge in the daemon's netns");
    for c in ["c1", "c2", "c3"] {
        let inside = d.exec_in(c, &show).ok();
        assert_eq!(inside.text(), "", "a bridge in {c}'s sandbox");
    }
    let out = flood.wait(Duration::from_secs(20));
    assert!(
        out.success() && out.stdout.contains(" 0% packet loss"),
        "{out}"
    );
}

/// The from_container program's entry of `stats --format json`.
fn from_container(d: &Daemon) -> Value {
    let stats = d.stats();
    stats["programs"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "from_container"))
        .cloned()
        .unwrap_or_else(|| panic!("no from_container program: {stats:#}"))
}

#[test]
fn stats_count_packets_redirects_and_arp_replies() {
    let d = Daemon::start();
    pair(&d, "10.28.0.0/24", &[]);
    let before = from_container(&d);
    for key in ["packets", "bytes", "redirected", "passed", "arp_replies"] {
        assert!(before[key].is_u64(), "{key} missing: {before:#}");
    }
    let reasons = [
        "malformed",
        "unknown_interface",
        "spoofed_mac",
        "spoofed_ip",
        "cross_network",
        "internal_network",
        "unsupported_protocol",
        "arp_unknown_target",
        "icc_denied",
        "bad_arp",
    ];
    let missing: Vec<&str> = reasons
        .into_iter()
        .filter(|r| !before["drops"][*r].is_u64())
        .collect();
    assert!(
        missing.is_empty(),
        "drop reasons {missing:?} missing: {before:#}"
    );
    let c2 = d.ip("c2", "n");
    let out = d
        .exec_in("c1", &["ping", "-c", "20", "-i", "0.05", &c2])
        .ok();
    assert!(out.stdout.contains(" 0% packet loss"), "{out}");
    let after = from_container(&d);
    let grew = |k: &str, by: u64| after[k].as_u64().unwrap() >= before[k].as_u64().unwrap() + by;
    // 20 requests from c1 and 20 replies from c2 leave through from_container.
    assert!(
        grew("packets", 40) && grew("redirected", 40),
        "{before:#}\n{after:#}"
    );
    assert!(grew("bytes", 40 * 84), "{before:#}\n{after:#}");
    assert!(grew("arp_replies", 1), "{before:#}\n{after:#}");
}

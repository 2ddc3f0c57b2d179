//! Address translation without iptables or docker-proxy: outbound
//! masquerade, every Docker form of `-p`/`-P`, the host reaching published
//! ports itself, hairpin, cleanup on `rm`, flows across a daemon restart and
//! the NAT counters of `stats`.
//!
//! "The outside world" is an [`Outside`] namespace joined to the daemon's by
//! two veth pairs: the host has [`HOST_IP`] and [`HOST_IP2`], the outside
//! [`OUTSIDE_IP`] and [`OUTSIDE_IP2`], and the outside has no route to any
//! container subnet. Servers are `WHOAMI_PY`, which answer with the client
//! address they saw; clients are `PROBE_PY`, run in a container (`exec`),
//! in the outside namespace or in the daemon's ("the host"). Every socket
//! operation has a timeout, so a broken datapath fails a test quickly.

use std::{collections::BTreeSet, time::Duration};

use dataplane_tests::{
    eventually, probe_args, probe_lines, retry, Daemon, Hello, Outside, Proc, HOST_IP, HOST_IP2,
    OUTSIDE_IP, OUTSIDE_IP2,
};
use serde_json::Value;

/// The port of the outside servers.
const OUT_PORT: u16 = 7000;
/// A port nothing listens on, outside.
const CLOSED_PORT: u16 = 7999;
/// Probe options for an attempt that must get no answer.
const SHORT: &[&str] = &["--timeout", "1"];

// ----- helpers --------------------------------------------------------------

/// The first exchange of a path, retried: the daemon notices the uplinks,
/// ARP resolves and servers start asynchronously. About 25 s at most.
#[track_caller]
fn reach(what: &str, f: impl FnMut() -> Result<Hello, String>) -> Hello {
    retry(what, 10, Duration::from_millis(300), f)
}

/// Asserts that a probe got no answer (but did run); returns the error.
#[track_caller]
fn assert_silent(what: &str, r: Result<Hello, String>) -> String {
    match r {
        Ok(h) => panic!("{what} got an answer: {h:?}"),
        Err(e) if e.starts_with("probe did not run") => panic!("{what}: {e}"),
        Err(e) => e,
    }
}

/// `(container side, host side)` pairs, sorted, as [`Daemon::ports`] gives.
fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = v
        .iter()
        .map(|(c, h)| (c.to_string(), h.to_string()))
        .collect();
    v.sort();
    v
}

/// `ip:port`.
fn at(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}

/// The port of a host side such as `0.0.0.0:8080`.
fn port_of(host_side: &str) -> u16 {
    host_side
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {host_side:?}"))
}

/// A counter of one program's entry in `stats --format json`.
#[track_caller]
fn counter(d: &Daemon, program: &str, key: &str) -> u64 {
    let p = d.program_stats(program);
    p[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{program} has no counter {key}: {p:#}"))
}

/// Asserts that `program`'s `key` grew by at least `by` since `before`.
#[track_caller]
fn assert_grew(d: &Daemon, program: &str, key: &str, before: u64, by: u64) {
    eventually(&format!("{program}.{key} to grow by {by}"), || {
        let now = counter(d, program, key);
        (now >= before + by)
            .then_some(())
            .ok_or(format!("{program}.{key}: {before} -> {now}"))
    });
}

/// Names of the links in the daemon's netns (to see that a refused `run`
/// left no veth behind).
fn host_links(d: &Daemon) -> BTreeSet<String> {
    d.ns()
        .exec(&["ip", "-o", "link", "show"])
        .ok()
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// TCP sockets listening on `port` in the daemon's netns.
fn host_tcp_listeners(d: &Daemon, port: u16) -> String {
    d.ns()
        .exec(&["ss", "-Hltnp", &format!("sport = :{port}")])
        .ok()
        .stdout
}

/// Asserts that the container saw the host client's own socket (its source
/// port), not a proxy's.
#[track_caller]
fn no_proxy(h: &Hello) {
    assert_eq!(
        h.peer_port(),
        h.client_port(),
        "the container saw another source port than the client's: a proxy? {h:?}"
    );
}

/// Waits until a background probe has printed its answer number `i`.
#[track_caller]
fn wait_answer(p: &Proc, i: u64) {
    eventually(&format!("answer {i} of the background probe"), || {
        let out = p.output_so_far();
        probe_lines(&out)
            .iter()
            .any(|v| v["ok"] == true && v["i"] == i)
            .then_some(())
            .ok_or(out)
    });
}

/// Asserts that a finished background probe got all `count` answers, all
/// from the same server and seen from the same client address.
#[track_caller]
fn assert_all_answered(out: &dataplane_tests::Output, count: u64) -> Vec<Value> {
    let lines = probe_lines(&out.stdout);
    let ok: Vec<&Value> = lines.iter().filter(|v| v["ok"] == true).collect();
    assert!(
        out.success() && ok.len() as u64 == count,
        "the connection broke: {} of {count} answers\n{out}",
        ok.len()
    );
    let peers: BTreeSet<&str> = ok.iter().filter_map(|v| v["peer"].as_str()).collect();
    let tags: BTreeSet<&str> = ok.iter().filter_map(|v| v["tag"].as_str()).collect();
    assert!(
        peers.len() == 1 && tags.len() == 1,
        "one connection, one client address, one server: {peers:?} {tags:?}"
    );
    lines
}

// ----- outbound -------------------------------------------------------------

#[test]
fn outbound_tcp_leaves_with_the_host_address() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["tcp:7000"]);
    d.network_create(&["--subnet", "10.60.1.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    let h = reach("c to reach the outside over TCP", || {
        d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    assert_eq!(h.tag, "outside");
    assert_eq!(h.peer_ip(), HOST_IP, "the outside saw {h:?}");
    assert_eq!(h.local, at(OUTSIDE_IP, OUT_PORT), "{h:?}");
    // The container itself sees only its own address and the real peer.
    assert!(
        h.client.starts_with(&format!("{}:", d.ip("c", "n"))),
        "{h:?}"
    );
    assert_eq!(h.sockpeer.as_deref(), Some(&*at(OUTSIDE_IP, OUT_PORT)));
    // The default bridge network too.
    d.run_sleeper("b", None, &[]);
    let h = reach("b to reach the outside over TCP", || {
        d.probe("b", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    assert_eq!(h.peer_ip(), HOST_IP, "the outside saw {h:?}");
}

#[test]
fn outbound_udp_leaves_with_the_host_address() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["udp:7000"]);
    d.network_create(&["--subnet", "10.60.2.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    for proto in ["udp", "udp-unconnected"] {
        let h = reach(&format!("c to reach the outside over {proto}"), || {
            d.probe("c", proto, OUTSIDE_IP, OUT_PORT, &[])
        });
        assert_eq!(h.tag, "outside");
        assert_eq!(h.peer_ip(), HOST_IP, "the outside saw {h:?}");
        // The answer is translated back: it comes from the address asked.
        assert_eq!(h.from.as_deref(), Some(&*at(OUTSIDE_IP, OUT_PORT)));
    }
}

#[test]
fn outbound_ping_reaches_the_outside() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.3.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    let c = d.ip("c", "n");
    // The outside could not answer the container's own address.
    let route = out.exec(&["ip", "route", "get", &c]);
    assert!(!route.success(), "the outside has a route to {c}: {route}");
    retry(
        "c to ping the outside",
        10,
        Duration::from_millis(300),
        || {
            d.pings("c", OUTSIDE_IP).then_some(()).ok_or(
                d.exec_in("c", &["ping", "-c1", "-W1", OUTSIDE_IP])
                    .to_string(),
            )
        },
    );
    d.assert_pings("c", OUTSIDE_IP2);
    // A burst: every echo comes back.
    let burst = d
        .exec_in(
            "c",
            &["ping", "-c", "20", "-i", "0.05", "-W", "1", OUTSIDE_IP],
        )
        .ok();
    assert!(burst.stdout.contains(" 0% packet loss"), "{burst}");
}

#[test]
fn outbound_source_is_the_address_of_the_uplink_used() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["tcp:7000", "udp:7000"]);
    d.network_create(&["--subnet", "10.60.4.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    for (dst, seen) in [(OUTSIDE_IP, HOST_IP), (OUTSIDE_IP2, HOST_IP2)] {
        for proto in ["tcp", "udp"] {
            let h = reach(&format!("c to reach {dst} over {proto}"), || {
                d.probe("c", proto, dst, OUT_PORT, &[])
            });
            assert_eq!(h.peer_ip(), seen, "{proto} to {dst}: {h:?}");
        }
    }
}

#[test]
fn two_containers_with_the_same_source_port_get_distinct_translations() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["udp:7000", "tcp:7000"]);
    d.network_create(&["--subnet", "10.60.5.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_sleeper("c2", Some("n"), &[]);
    reach("c1 to reach the outside", || {
        d.probe("c1", "udp", OUTSIDE_IP, OUT_PORT, &[])
    });
    let sport = ["--sport", "40000"];
    let h1 = reach("c1 from port 40000", || {
        d.probe("c1", "udp", OUTSIDE_IP, OUT_PORT, &sport)
    });
    let h2 = reach("c2 from port 40000", || {
        d.probe("c2", "udp", OUTSIDE_IP, OUT_PORT, &sport)
    });
    assert_eq!((h1.peer_ip(), h2.peer_ip()), (HOST_IP, HOST_IP));
    assert_ne!(h1.peer, h2.peer, "two live flows share one translation");
    // Both flows keep their translation while they live.
    let again1 = d.probe("c1", "udp", OUTSIDE_IP, OUT_PORT, &sport).unwrap();
    let again2 = d.probe("c2", "udp", OUTSIDE_IP, OUT_PORT, &sport).unwrap();
    assert_eq!((again1.peer, again2.peer), (h1.peer, h2.peer));
    // TCP from the same port of both, at the same time.
    let p1 = spawn_in(
        &d,
        "c1",
        "tcp",
        OUTSIDE_IP,
        OUT_PORT,
        &["--sport", "40001", "--count", "20", "--interval", "0.05"],
    );
    let p2 = spawn_in(
        &d,
        "c2",
        "tcp",
        OUTSIDE_IP,
        OUT_PORT,
        &["--sport", "40001", "--count", "20", "--interval", "0.05"],
    );
    let (o1, o2) = (
        p1.wait(Duration::from_secs(20)),
        p2.wait(Duration::from_secs(20)),
    );
    let (l1, l2) = (assert_all_answered(&o1, 20), assert_all_answered(&o2, 20));
    assert_ne!(
        l1[0]["peer"], l2[0]["peer"],
        "two TCP flows share one translation"
    );
}

/// A [`PROBE_PY`](dataplane_tests::PROBE_PY) in container `ctr`, in the
/// background.
fn spawn_in(d: &Daemon, ctr: &str, proto: &str, host: &str, port: u16, opts: &[&str]) -> Proc {
    let args = probe_args(proto, host, port, opts);
    let mut full = vec!["exec", ctr, "--"];
    full.extend(args.iter().map(String::as_str));
    d.spawn_cli(&full)
}

#[test]
fn icmp_port_unreachable_is_translated_back() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["udp:7000"]);
    d.network_create(&["--subnet", "10.60.6.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    reach("c to reach the outside over UDP", || {
        d.probe("c", "udp", OUTSIDE_IP, OUT_PORT, &[])
    });
    // A connected UDP socket learns of the ICMP port unreachable the
    // outside sends to the host address, only if it is translated back.
    // (Retried: the outside rate-limits its ICMP errors.)
    retry(
        "ECONNREFUSED for UDP to a closed port",
        3,
        Duration::from_millis(500),
        || match d.probe("c", "udp", OUTSIDE_IP, CLOSED_PORT, &[]) {
            Err(e) if e == "ECONNREFUSED" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // The RST of a closed TCP port too.
    let r = d.probe("c", "tcp", OUTSIDE_IP, CLOSED_PORT, &[]);
    assert_eq!(r, Err("ECONNREFUSED".to_string()));
}

// ----- fragments --------------------------------------------------------------

/// A UDP payload of 4000 bytes: more than one 1500-byte frame, so the
/// sender's stack cuts it into fragments, and the whoami answer that echoes
/// it too.
fn big_msg() -> String {
    (0..4000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

/// Asserts that `ctr`'s eth0 cannot carry `bytes` in one frame (so that
/// what it sends of that size leaves in fragments).
#[track_caller]
fn assert_mtu_below(d: &Daemon, ctr: &str, bytes: usize) {
    let link = d.exec_in(ctr, &["cat", "/sys/class/net/eth0/mtu"]).ok();
    let mtu: usize = link.text().parse().unwrap_or_else(|_| panic!("{link}"));
    assert!(
        mtu < bytes,
        "{ctr}'s eth0 has MTU {mtu}: nothing to fragment"
    );
}

#[test]
fn big_udp_datagrams_and_pings_from_a_container_are_fragmented_both_ways() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["udp:7000"]);
    d.network_create(&["--subnet", "10.60.24.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    reach("c to reach the outside over UDP", || {
        d.probe("c", "udp", OUTSIDE_IP, OUT_PORT, &[])
    });
    assert_mtu_below(&d, "c", 4000);
    let msg = big_msg();
    let frag_drops = d.drops("fragment");
    let (fc_tr, fu_tr) = (
        counter(&d, "from_container", "translated"),
        counter(&d, "from_uplink", "translated"),
    );
    for proto in ["udp", "udp-unconnected"] {
        let h = d
            .probe("c", proto, OUTSIDE_IP, OUT_PORT, &["--msg", &msg])
            .unwrap_or_else(|e| panic!("a 4000-byte datagram over {proto}: {e}"));
        assert_eq!(h.tag, "outside");
        assert_eq!(h.peer_ip(), HOST_IP, "the outside saw {h:?}");
        assert_eq!(h.from.as_deref(), Some(&*at(OUTSIDE_IP, OUT_PORT)));
        assert_eq!(
            h.msg.len(),
            msg.len(),
            "{proto}: the echoed payload came back cut"
        );
        assert!(h.msg == msg, "{proto}: the echoed payload differs");
    }
    // Three fragments each way, per datagram, all translated (a whole
    // datagram would count one).
    assert_grew(&d, "from_container", "translated", fc_tr, 6);
    assert_grew(&d, "from_uplink", "translated", fu_tr, 6);

    // ping -s 3000: 3008 bytes of ICMP each way, in fragments.
    let (fc_tr, fu_tr) = (
        counter(&d, "from_container", "translated"),
        counter(&d, "from_uplink", "translated"),
    );
    let ping = d.exec_in(
        "c",
        &["ping", "-c", "2", "-s", "3000", "-W", "2", OUTSIDE_IP],
    );
    assert!(
        ping.success() && ping.stdout.contains(" 0% packet loss"),
        "{ping}\n{:#}",
        d.stats()
    );
    assert_grew(&d, "from_container", "translated", fc_tr, 6);
    assert_grew(&d, "from_uplink", "translated", fu_tr, 6);
    assert_eq!(
        d.drops("fragment"),
        frag_drops,
        "no fragment was dropped: {:#}",
        d.stats()
    );
}

#[test]
fn a_big_udp_datagram_to_a_published_port_reaches_the_container_and_is_answered() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.25.0/24", "n"]);
    // (Not port 53: the embedded DNS server holds 127.0.0.11:53 there.)
    d.run_whoami("web", Some("n"), &["-p", "8053:5300/udp"], &["udp:5300"]);
    let web = d.ip("web", "n");
    reach("udp 8053 from outside", || {
        out.probe("udp", HOST_IP, 8053, &[])
    });
    assert_mtu_below(&d, "web", 4000);
    let msg = big_msg();
    let frag_drops = d.drops("fragment");
    let (fc_tr, fu_tr) = (
        counter(&d, "from_container", "translated"),
        counter(&d, "from_uplink", "translated"),
    );
    for proto in ["udp", "udp-unconnected"] {
        let h = out
            .probe(proto, HOST_IP, 8053, &["--msg", &msg])
            .unwrap_or_else(|e| panic!("a 4000-byte datagram to 8053 over {proto}: {e}"));
        assert_eq!(h.tag, "web");
        assert_eq!(h.local, at(&web, 5300), "{h:?}");
        assert_eq!(h.peer_ip(), OUTSIDE_IP, "the client address is kept: {h:?}");
        assert_eq!(h.from.as_deref(), Some(&*at(HOST_IP, 8053)), "{h:?}");
        assert_eq!(
            h.msg.len(),
            msg.len(),
            "{proto}: the echoed payload came back cut"
        );
        assert!(h.msg == msg, "{proto}: the echoed payload differs");
    }
    assert_grew(&d, "from_uplink", "translated", fu_tr, 6);
    assert_grew(&d, "from_container", "translated", fc_tr, 6);
    assert_eq!(
        d.drops("fragment"),
        frag_drops,
        "no fragment was dropped: {:#}",
        d.stats()
    );
}

// ----- published ports ------------------------------------------------------

#[test]
fn published_ports_reach_the_container_tcp_and_udp() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    // Several -p at once, on the default bridge network.
    d.run_whoami(
        "web",
        None,
        &["-p", "8080:80", "-p", "8080:80/udp", "-p", "8443:443"],
        &["tcp:80", "udp:80", "tcp:443"],
    );
    assert_eq!(
        d.ports("web"),
        pairs(&[
            ("80/tcp", "0.0.0.0:8080"),
            ("80/udp", "0.0.0.0:8080"),
            ("443/tcp", "0.0.0.0:8443"),
        ])
    );
    let web = d.ip("web", "bridge");
    for (host, client) in [(HOST_IP, OUTSIDE_IP), (HOST_IP2, OUTSIDE_IP2)] {
        for proto in ["tcp", "udp"] {
            let h = reach(&format!("{proto} {host}:8080 from outside"), || {
                out.probe(proto, host, 8080, &[])
            });
            assert_eq!(h.tag, "web");
            assert_eq!(h.local, at(&web, 80), "{h:?}");
            assert_eq!(h.peer_ip(), client, "the client address is kept: {h:?}");
            if proto == "udp" {
                assert_eq!(h.from.as_deref(), Some(&*at(host, 8080)), "{h:?}");
            }
        }
    }
    let h = reach("tcp 8443 from outside", || {
        out.probe("tcp", HOST_IP, 8443, &[])
    });
    assert_eq!(h.local, at(&web, 443), "{h:?}");
    // Not published: nothing answers.
    assert_silent("8444", out.probe("tcp", HOST_IP, 8444, SHORT));
    assert_silent("8443/udp", out.probe("udp", HOST_IP, 8443, SHORT));
}

#[test]
fn a_port_bound_to_one_host_address_answers_only_there() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.8.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "203.0.113.1:8081:80", "-p", "203.0.113.1:8081:80/udp"],
        &["tcp:80", "udp:80"],
    );
    assert_eq!(
        d.ports("web"),
        pairs(&[
            ("80/tcp", "203.0.113.1:8081"),
            ("80/udp", "203.0.113.1:8081")
        ])
    );
    let web = d.ip("web", "n");
    for proto in ["tcp", "udp"] {
        let h = reach(&format!("{proto} {HOST_IP2}:8081 from outside"), || {
            out.probe(proto, HOST_IP2, 8081, &[])
        });
        assert_eq!(
            (h.local.as_str(), h.peer_ip()),
            (&*at(&web, 80), OUTSIDE_IP2)
        );
        assert_silent(
            &format!("{proto} {HOST_IP}:8081 from outside"),
            out.probe(proto, HOST_IP, 8081, SHORT),
        );
    }
    // The host itself: on that address only, not on loopback.
    let h = reach("the host to reach 203.0.113.1:8081", || {
        d.probe_host("tcp", HOST_IP2, 8081, &[])
    });
    assert_eq!(h.tag, "web");
    for host in ["127.0.0.1", HOST_IP] {
        assert_silent(
            &format!("the host to {host}:8081"),
            d.probe_host("tcp", host, 8081, SHORT),
        );
    }
}

#[test]
fn an_ip_with_an_empty_host_port_gets_a_random_port_on_that_ip() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.9.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "198.51.100.1::80", "-p", "198.51.100.1::80/udp"],
        &["tcp:80", "udp:80"],
    );
    let ports = d.ports("web");
    assert_eq!(ports.len(), 2, "{ports:?}");
    let web = d.ip("web", "n");
    for ((cport, host_side), proto) in ports.iter().zip(["tcp", "udp"]) {
        assert_eq!(cport, &format!("80/{proto}"), "{ports:?}");
        let (ip, port) = (host_side.rsplit_once(':').unwrap().0, port_of(host_side));
        assert_eq!(ip, HOST_IP, "{ports:?}");
        assert_ne!(port, 0, "{ports:?}");
        let h = reach(&format!("{proto} {host_side} from outside"), || {
            out.probe(proto, HOST_IP, port, &[])
        });
        assert_eq!(h.local, at(&web, 80), "{h:?}");
        assert_silent(
            &format!("{proto} {HOST_IP2}:{port}"),
            out.probe(proto, HOST_IP2, port, SHORT),
        );
    }
}

#[test]
fn a_bare_container_port_gets_a_random_host_port() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.run_whoami(
        "web",
        None,
        &["-p", "80", "-p", "81/udp"],
        &["tcp:80", "udp:81"],
    );
    let ports = d.ports("web");
    let cports: Vec<&str> = ports.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cports, ["80/tcp", "81/udp"], "{ports:?}");
    let web = d.ip("web", "bridge");
    for ((cport, host_side), (proto, cp)) in ports.iter().zip([("tcp", 80), ("udp", 81)]) {
        assert!(host_side.starts_with("0.0.0.0:"), "{cport}: {ports:?}");
        let port = port_of(host_side);
        assert_ne!(port, 0, "{ports:?}");
        for host in [HOST_IP, HOST_IP2] {
            let h = reach(&format!("{proto} {host}:{port} from outside"), || {
                out.probe(proto, host, port, &[])
            });
            assert_eq!(h.local, at(&web, cp), "{h:?}");
        }
    }
}

#[test]
fn a_port_range_maps_one_to_one() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.11.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "9000-9002:7000-7002", "-p", "9000-9002:7000-7002/udp"],
        &["tcp:7000-7002", "udp:7000-7002"],
    );
    let mut want = Vec::new();
    for i in 0..3 {
        for proto in ["tcp", "udp"] {
            want.push((
                format!("{}/{proto}", 7000 + i),
                format!("0.0.0.0:{}", 9000 + i),
            ));
        }
    }
    want.sort();
    assert_eq!(d.ports("web"), want);
    let web = d.ip("web", "n");
    for i in 0..3u16 {
        for proto in ["tcp", "udp"] {
            let h = reach(
                &format!("{proto} {HOST_IP}:{} from outside", 9000 + i),
                || out.probe(proto, HOST_IP, 9000 + i, &[]),
            );
            assert_eq!(h.local, at(&web, 7000 + i), "{h:?}");
            assert_eq!(h.peer_ip(), OUTSIDE_IP, "{h:?}");
        }
    }
    assert_silent("9003", out.probe("tcp", HOST_IP, 9003, SHORT));
}

#[test]
fn publish_all_publishes_the_exposed_ports_on_random_host_ports() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.12.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-P", "--expose", "80", "--expose", "81/udp"],
        &["tcp:80", "udp:81"],
    );
    let ports = d.ports("web");
    let cports: Vec<&str> = ports.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(cports, ["80/tcp", "81/udp"], "{ports:?}");
    let web = d.ip("web", "n");
    let (tcp, udp) = (d.host_port("web", "80/tcp"), d.host_port("web", "81/udp"));
    assert!(tcp != 0 && udp != 0, "{ports:?}");
    let h = reach("the -P tcp port from outside", || {
        out.probe("tcp", HOST_IP, tcp, &[])
    });
    assert_eq!(h.local, at(&web, 80), "{h:?}");
    let h = reach("the -P udp port from outside", || {
        out.probe("udp", HOST_IP, udp, &[])
    });
    assert_eq!(h.local, at(&web, 81), "{h:?}");
    // A container without -P publishes nothing.
    d.run_sleeper("quiet", Some("n"), &["--expose", "80"]);
    assert_eq!(d.ports("quiet"), pairs(&[]));
}

#[test]
fn the_client_address_and_port_reach_the_container_unchanged() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.13.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "8080:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    for (i, (host, client)) in [(HOST_IP, OUTSIDE_IP), (HOST_IP2, OUTSIDE_IP2)]
        .into_iter()
        .enumerate()
    {
        for proto in ["tcp", "udp"] {
            reach(&format!("{proto} {host}:8080 from outside"), || {
                out.probe(proto, host, 8080, &[])
            });
            // A fixed source port, once (a TCP retry would meet TIME_WAIT).
            let sport = (45678 + i).to_string();
            let h = out
                .probe(proto, host, 8080, &["--sport", &sport])
                .unwrap_or_else(|e| panic!("{proto} from {client}:{sport}: {e}"));
            assert_eq!(h.peer, format!("{client}:{sport}"), "{proto}: {h:?}");
        }
    }
}

#[test]
fn a_taken_host_port_is_refused_and_nothing_changes() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.14.0/24", "n"]);
    d.run_whoami("web", Some("n"), &["-p", "8080:80"], &["tcp:80"]);
    let ports = d.ports("web");
    let links = host_links(&d);
    for p in ["8080:80", "203.0.113.1:8080:80", "8079-8080:80-81"] {
        let line = d.assert_refused(&[
            "run",
            "-d",
            "--name",
            "web2",
            "--network",
            "n",
            "-p",
            p,
            "--",
            "sleep",
            "infinity",
        ]);
        assert!(line.contains("port is already allocated"), "-p {p}: {line}");
        assert_eq!(host_links(&d), links, "-p {p} left a link behind");
    }
    assert_eq!(d.ports("web"), ports);
    let h = reach("web from outside", || out.probe("tcp", HOST_IP, 8080, &[]));
    assert_eq!(h.tag, "web");
    // What the refused range asked for besides 8080 is still free, and the
    // other protocol of 8080 is another port.
    d.run_whoami(
        "web3",
        Some("n"),
        &["-p", "8079:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    let h = reach("web3 on 8079", || out.probe("tcp", HOST_IP, 8079, &[]));
    assert_eq!(h.tag, "web3");
    let h = reach("web3 on 8080/udp", || out.probe("udp", HOST_IP, 8080, &[]));
    assert_eq!(h.tag, "web3");
    let h = out.probe("tcp", HOST_IP, 8080, &[]).unwrap();
    assert_eq!(h.tag, "web", "8080/tcp still goes to web");
}

// ----- the host, hairpin ----------------------------------------------------

#[test]
fn the_host_reaches_published_ports_on_loopback_and_its_addresses_without_a_proxy() {
    let d = Daemon::start();
    let _out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.15.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "8080:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    let web = d.ip("web", "n");
    for host in ["127.0.0.1", HOST_IP, HOST_IP2] {
        let h = reach(&format!("the host to reach {host}:8080 over TCP"), || {
            d.probe_host("tcp", host, 8080, &[])
        });
        assert_eq!((h.tag.as_str(), h.local.clone()), ("web", at(&web, 80)));
        no_proxy(&h);
        assert_eq!(
            h.sockpeer.as_deref(),
            Some(&*at(host, 8080)),
            "getpeername shows what the client asked for: {h:?}"
        );
        for proto in ["udp", "udp-unconnected"] {
            let h = reach(
                &format!("the host to reach {host}:8080 over {proto}"),
                || d.probe_host(proto, host, 8080, &[]),
            );
            assert_eq!((h.tag.as_str(), h.local.clone()), ("web", at(&web, 80)));
            no_proxy(&h);
            assert_eq!(
                h.from.as_deref(),
                Some(&*at(host, 8080)),
                "the answer comes from what the client asked: {h:?}"
            );
        }
    }
    // No proxy: nothing in the host's netns listens on the published TCP
    // port (a bound UDP socket that reserves the port is fine: the
    // datagrams above never reached it, see `no_proxy`).
    assert_eq!(host_tcp_listeners(&d, 8080), "", "a TCP listener on 8080");
}

#[test]
fn hairpin_from_a_sibling_another_network_and_the_container_itself() {
    let d = Daemon::start();
    let _out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.16.0/24", "n"]);
    d.network_create(&["--subnet", "10.60.17.0/24", "other"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "8080:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    d.run_sleeper("sib", Some("n"), &[]);
    d.run_sleeper("far", Some("other"), &[]);
    let web = d.ip("web", "n");
    for ctr in ["sib", "web", "far"] {
        for host in [HOST_IP, HOST_IP2] {
            for proto in ["tcp", "udp"] {
                let h = reach(&format!("{ctr} to reach {host}:8080 over {proto}"), || {
                    d.probe(ctr, proto, host, 8080, &[])
                });
                assert_eq!((h.tag.as_str(), h.local.clone()), ("web", at(&web, 80)));
                if proto == "udp" {
                    assert_eq!(h.from.as_deref(), Some(&*at(host, 8080)), "{h:?}");
                } else {
                    assert_eq!(h.sockpeer.as_deref(), Some(&*at(host, 8080)), "{h:?}");
                }
            }
        }
    }
}

// ----- cleanup and restarts -------------------------------------------------

#[test]
fn rm_unpublishes_and_the_port_can_be_taken_again() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.18.0/24", "n"]);
    d.run_whoami(
        "web",
        Some("n"),
        &["-p", "8080:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    let web = d.ip("web", "n");
    for proto in ["tcp", "udp"] {
        reach(&format!("web over {proto}"), || {
            out.probe(proto, HOST_IP, 8080, &[])
        });
        reach(&format!("web over {proto} from the host"), || {
            d.probe_host(proto, "127.0.0.1", 8080, &[])
        });
    }
    d.ok(&["rm", "-f", "web"]);
    assert!(
        !d.cli(&["port", "web"]).success(),
        "port of a removed container"
    );
    for proto in ["tcp", "udp"] {
        assert_silent(
            &format!("{proto} 8080 after rm"),
            out.probe(proto, HOST_IP, 8080, SHORT),
        );
        assert_silent(
            &format!("{proto} 127.0.0.1:8080 after rm"),
            d.probe_host(proto, "127.0.0.1", 8080, SHORT),
        );
    }
    match d.conntrack_mentions(&web) {
        Some(n) => assert_eq!(n, 0, "conntrack entries of {web} outlived it"),
        None => eprintln!("note: could not read the CT map; conntrack check skipped"),
    }
    // The port is free for the next container.
    d.run_whoami(
        "web2",
        Some("n"),
        &["-p", "8080:80", "-p", "8080:80/udp"],
        &["tcp:80", "udp:80"],
    );
    for proto in ["tcp", "udp"] {
        let h = reach(&format!("web2 over {proto}"), || {
            out.probe(proto, HOST_IP, 8080, &[])
        });
        assert_eq!(h.tag, "web2");
    }
}

#[test]
fn an_inbound_connection_survives_a_daemon_kill_and_restart() {
    let mut d = Daemon::start();
    let out = Outside::new(&d);
    d.network_create(&["--subnet", "10.60.19.0/24", "n"]);
    d.run_whoami("web", Some("n"), &["-p", "8080:80"], &["tcp:80"]);
    reach("web from outside", || out.probe("tcp", HOST_IP, 8080, &[]));
    let before = d.ports("web");
    // 100 exchanges over about 10 s on one connection.
    let opts = ["--count", "100", "--interval", "0.1", "--timeout", "5"];
    let mut stream = out.spawn_probe("tcp", HOST_IP, 8080, &opts);
    wait_answer(&stream, 10);
    d.stop("KILL");
    d.restart();
    assert!(
        stream.running(),
        "the connection ended before the daemon was back, so it proves nothing: {}",
        stream.output_so_far()
    );
    let done = stream.wait(Duration::from_secs(40));
    let lines = assert_all_answered(&done, 100);
    assert_eq!(
        lines[0]["peer"].as_str().map(|p| p.starts_with(OUTSIDE_IP)),
        Some(true)
    );
    // The restarted daemon still publishes the port, for new connections.
    assert_eq!(d.ports("web"), before);
    let h = reach("web from outside after the restart", || {
        out.probe("tcp", HOST_IP, 8080, &[])
    });
    assert_eq!(h.tag, "web");
}

#[test]
fn an_outbound_connection_survives_a_daemon_stop_and_restart() {
    let mut d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["tcp:7000"]);
    d.network_create(&["--subnet", "10.60.20.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &[]);
    reach("c to reach the outside", || {
        d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    let opts = ["--count", "100", "--interval", "0.1", "--timeout", "5"];
    let mut stream = spawn_in(&d, "c", "tcp", OUTSIDE_IP, OUT_PORT, &opts);
    wait_answer(&stream, 10);
    d.stop("TERM");
    d.restart();
    assert!(
        stream.running(),
        "the connection ended before the daemon was back, so it proves nothing: {}",
        stream.output_so_far()
    );
    let done = stream.wait(Duration::from_secs(40));
    let lines = assert_all_answered(&done, 100);
    assert_eq!(
        lines[0]["peer"]
            .as_str()
            .map(|p| p.starts_with(&format!("{HOST_IP}:"))),
        Some(true),
        "{lines:?}"
    );
    let h = reach("c to reach the outside after the restart", || {
        d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    assert_eq!(h.peer_ip(), HOST_IP);
}

// ----- counters, internal networks -------------------------------------------

#[test]
fn stats_count_translations_and_new_flows_per_program() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let _srv = out.serve("outside", &["tcp:7000"]);
    d.network_create(&["--subnet", "10.60.21.0/24", "n"]);
    d.run_whoami("web", Some("n"), &["-p", "8080:80"], &["tcp:80"]);
    d.run_sleeper("c", Some("n"), &[]);

    let programs = ["from_container", "from_uplink", "sock_addr"];
    for p in programs {
        let s = d.program_stats(p);
        for key in ["packets", "translated", "ct_created", "alloc_failed"] {
            assert!(s[key].is_u64(), "{p}.{key} missing: {s:#}");
        }
    }
    for p in ["from_container", "from_uplink"] {
        let s = d.program_stats(p);
        let missing: Vec<&str> = [
            "fragment",
            "nat_port_exhausted",
            "conntrack_full",
            "nat_malformed",
        ]
        .into_iter()
        .filter(|r| !s["drops"][*r].is_u64())
        .collect();
        assert!(
            missing.is_empty(),
            "{p}: drop reasons {missing:?} missing: {s:#}"
        );
    }

    // Outbound: from_container opens the flow, from_uplink translates the replies.
    reach("c to reach the outside", || {
        d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    let (fc_ct, fc_tr) = (
        counter(&d, "from_container", "ct_created"),
        counter(&d, "from_container", "translated"),
    );
    let fu_tr = counter(&d, "from_uplink", "translated");
    d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, &[]).unwrap();
    assert_grew(&d, "from_container", "ct_created", fc_ct, 1);
    // SYN, ACK, data, FIN... out; SYN-ACK, data, FIN... back.
    assert_grew(&d, "from_container", "translated", fc_tr, 3);
    assert_grew(&d, "from_uplink", "translated", fu_tr, 3);

    // Inbound: from_uplink opens the flow, from_container translates replies.
    reach("web from outside", || out.probe("tcp", HOST_IP, 8080, &[]));
    let (fu_ct, fu_tr) = (
        counter(&d, "from_uplink", "ct_created"),
        counter(&d, "from_uplink", "translated"),
    );
    let fc_tr = counter(&d, "from_container", "translated");
    out.probe("tcp", HOST_IP, 8080, &[]).unwrap();
    assert_grew(&d, "from_uplink", "ct_created", fu_ct, 1);
    assert_grew(&d, "from_uplink", "translated", fu_tr, 3);
    assert_grew(&d, "from_container", "translated", fc_tr, 3);

    // The host through loopback: the socket program translates.
    reach("web from the host", || {
        d.probe_host("tcp", "127.0.0.1", 8080, &[])
    });
    let sock_tr = counter(&d, "sock_addr", "translated");
    d.probe_host("tcp", "127.0.0.1", 8080, &[]).unwrap();
    assert_grew(&d, "sock_addr", "translated", sock_tr, 1);

    let alloc: u64 = programs
        .iter()
        .map(|p| counter(&d, p, "alloc_failed"))
        .sum();
    assert_eq!(alloc, 0, "no port allocation failed: {:#}", d.stats());
}

#[test]
fn an_internal_network_gets_no_outbound() {
    let d = Daemon::start();
    let out = Outside::new(&d);
    let srv = out.serve("outside", &["tcp:7000", "udp:7000"]);
    d.network_create(&["--subnet", "10.60.22.0/24", "--internal", "i"]);
    d.network_create(&["--subnet", "10.60.23.0/24", "open"]);
    d.run_sleeper("c", Some("i"), &[]);
    d.run_sleeper("o", Some("open"), &[]);
    // The way out works, from another network.
    reach("o to reach the outside", || {
        d.probe("o", "tcp", OUTSIDE_IP, OUT_PORT, &[])
    });
    let seen = srv.output_so_far().lines().count();
    for proto in ["tcp", "udp"] {
        assert_silent(
            &format!("{proto} from the internal network"),
            d.probe("c", proto, OUTSIDE_IP, OUT_PORT, SHORT),
        );
    }
    d.assert_no_ping("c", OUTSIDE_IP);
    // Not even with a default route added by hand; the drops are counted.
    d.exec_in(
        "c",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "10.60.22.1",
            "dev",
            "eth0",
        ],
    )
    .ok();
    let before = d.drops("internal_network");
    assert_silent(
        "tcp from the internal network with a default route",
        d.probe("c", "tcp", OUTSIDE_IP, OUT_PORT, SHORT),
    );
    d.assert_no_ping("c", OUTSIDE_IP);
    assert!(d.drops("internal_network") > before, "{:#}", d.stats());
    let log = srv.output_so_far();
    assert_eq!(
        log.lines().count(),
        seen,
        "the outside heard from the internal network: {log}"
    );
}

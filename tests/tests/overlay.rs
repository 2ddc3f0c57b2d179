//! The `overlay` driver across hosts: a [`Lab`] of host namespaces on an
//! underlay bridge, each running a daemon with `--store` on one etcd, VXLAN
//! between them. Cross-host traffic (ping, TCP, UDP, names), isolation,
//! per-host address blocks, racing allocations, a late host, daemon
//! crashes, lease expiry, etcd going away and coming back, and a foreign
//! VTEP (the kernel's own vxlan) declared with `--opt vtep=IP`.
//!
//! The `lab_*` tests check the harness itself (underlay, etcd, the kernel
//! vxlan peer, the capture and its decode) and need no daemon.
//!
//! Every wait is a bounded retry: remote endpoints reach a host through the
//! etcd watch, so the first packet to a new container may find it missing.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use dataplane_tests::{
    assert_well_formed, netns_exists, retry, tshark, Daemon, KernelVtep, Lab, Output, Proc,
};
use serde_json::Value;

/// The lease of the lab's daemons (seconds): short, so that a killed host
/// is seen down quickly.
const TTL: u64 = 3;
/// How much later than its lease a killed host may still be shown ready.
const MARGIN: Duration = Duration::from_secs(10);

/// `python3 -c ECHO_50_PY HOST LINE`: 50 lines LINE to a [`WHOAMI_PY`]
/// server on HOST:5000 over one connection; prints `answered N`, N the
/// bytes of `msg=` echoed back.
///
/// [`WHOAMI_PY`]: dataplane_tests::WHOAMI_PY
const ECHO_50_PY: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 5000), 5)
f = s.makefile('rb')
n = 0
for i in range(50):
    s.sendall((sys.argv[2] + '\n').encode())
    line = f.readline().decode()
    n += len(line.split('msg=', 1)[1])
print('answered', n)
"#;

// ----- helpers ----------------------------------------------------------------

/// `network create --driver overlay ARGS... NAME` on host `on`, then waits
/// until every host of the lab lists it.
fn overlay(lab: &Lab, on: usize, name: &str, args: &[&str]) {
    let mut full = vec!["--driver", "overlay"];
    full.extend_from_slice(args);
    full.push(name);
    lab.host(on).network_create(&full);
    for (i, d) in lab.hosts().iter().enumerate() {
        retry(
            &format!("overlay {name} to appear on host {i}"),
            100,
            Duration::from_millis(100),
            || {
                let out = d.cli(&["network", "inspect", name]);
                out.success().then_some(()).ok_or(out.to_string())
            },
        );
    }
}

/// Waits (bounded) until `ctr` on `d` pings `ip`: the remote endpoint may
/// not have reached this host's maps yet.
#[track_caller]
fn reach(d: &Daemon, ctr: &str, ip: &str) {
    retry(
        &format!("{ctr} to reach {ip}"),
        30,
        Duration::from_millis(200),
        || {
            let out = d.exec_in(ctr, &["ping", "-c1", "-W1", ip]);
            out.success().then_some(()).ok_or(out.to_string())
        },
    );
}

/// Runs a sleeper `name` on overlay `net` of `d`; its address.
#[track_caller]
fn sleeper(d: &Daemon, name: &str, net: &str) -> String {
    d.run_sleeper(name, Some(net), &[]);
    d.ip(name, net)
}

/// `node ls --format json` of `d`.
#[track_caller]
fn nodes(d: &Daemon) -> Vec<Value> {
    let v = d.ok(&["node", "ls", "--format", "json"]).json();
    v.as_array()
        .unwrap_or_else(|| panic!("node ls is not a list: {v:#}"))
        .clone()
}

/// The State of node `name` as `d` sees it.
fn node_state(d: &Daemon, name: &str) -> Option<String> {
    nodes(d)
        .iter()
        .find(|n| n["Name"] == name)
        .and_then(|n| n["State"].as_str().map(str::to_string))
}

/// Waits until every host of the lab sees every daemon `ready`.
fn all_ready(lab: &Lab) {
    for (i, d) in lab.hosts().iter().enumerate() {
        for j in 0..lab.hosts().len() {
            let name = lab.node_name(j);
            retry(
                &format!("host {i} to see {name} ready"),
                100,
                Duration::from_millis(100),
                || match node_state(d, &name) {
                    Some(s) if s == "ready" => Ok(()),
                    other => Err(format!("{name}: {other:?}; {:?}", nodes(d))),
                },
            );
        }
    }
}

/// The /26 block an address falls in.
fn block26(ip: &str) -> u32 {
    let ip: Ipv4Addr = ip.parse().expect("an IPv4 address");
    u32::from(ip) & !63
}

/// Waits until the background process printed `needle`.
fn wait_output(p: &Proc, needle: &str) {
    retry(
        &format!("{needle:?} from the background process"),
        100,
        Duration::from_millis(100),
        || {
            let out = p.output_so_far();
            out.contains(needle).then_some(()).ok_or(out)
        },
    );
}

/// Which rows of `tshark -T fields` show `want` among their values.
fn rows_with<'a>(rows: &'a [String], want: &str) -> Vec<&'a String> {
    rows.iter()
        .filter(|r| r.split(['\t', ',']).any(|f| f == want))
        .collect()
}

// ----- the harness itself (no daemon) -----------------------------------------

#[test]
fn lab_underlay_and_etcd_come_up_survive_a_restart_and_go_away() {
    let (names, etcd_pid, dir) = {
        let mut lab = Lab::new(0, TTL);
        let a = lab.add_plain_host();
        let b = lab.add_plain_host();
        let (ia, ib) = (lab.plain(a).ip.clone(), lab.plain(b).ip.clone());
        assert_ne!(ia, ib);
        assert!(
            dataplane_tests::in_subnet(&ia, &lab.underlay_subnet()),
            "{ia} not in {}",
            lab.underlay_subnet()
        );
        // Host to host across the switch.
        let out = lab.plain(a).ns.exec(&["ping", "-c2", "-i0.2", "-W1", &ib]);
        assert!(out.success(), "{out}");
        // The hosts reach etcd on the bridge address, and it keeps its data
        // across a stop and a start (the v3 JSON gateway: base64 keys).
        let url = format!("{}/health", lab.etcd().http());
        let out = lab.plain(b).ns.exec(&["curl", "-s", "-m", "2", &url]);
        assert!(out.stdout.contains(r#""health":"true""#), "{out}");
        let put = format!("{}/v3/kv/put", lab.etcd().http());
        let range = format!("{}/v3/kv/range", lab.etcd().http());
        // "lab-probe" -> "kept"
        let kv = r#"{"key":"bGFiLXByb2Jl","value":"a2VwdA=="}"#;
        let out = lab
            .etcd()
            .curl(&["-s", "-m", "5", "-X", "POST", "-d", kv, &put]);
        assert!(out.stdout.contains("revision"), "put: {out}");
        lab.etcd().stop();
        assert!(!lab.etcd().healthy(), "etcd answers after stop");
        let out = lab
            .etcd()
            .curl(&["-s", "-m", "2", "-X", "POST", "-d", kv, &put]);
        assert!(!out.success(), "a put succeeded with etcd stopped: {out}");
        lab.etcd().start();
        let out = lab.etcd().curl(&[
            "-s",
            "-m",
            "5",
            "-X",
            "POST",
            "-d",
            r#"{"key":"bGFiLXByb2Jl"}"#,
            &range,
        ]);
        assert!(
            out.stdout.contains("a2VwdA=="),
            "range after restart: {out}"
        );
        let names = vec![
            lab.underlay().name().to_string(),
            lab.plain(a).ns.name().to_string(),
            lab.plain(b).ns.name().to_string(),
        ];
        let pid = lab.etcd().pid().expect("etcd runs");
        (names, pid, lab.tempdir().to_path_buf())
    };
    for n in &names {
        assert!(!netns_exists(n), "netns {n} survived the lab");
    }
    assert!(
        !dataplane_tests::alive(etcd_pid),
        "etcd {etcd_pid} survived the lab"
    );
    assert!(!dir.exists(), "{} survived the lab", dir.display());
}

#[test]
fn lab_is_torn_down_when_a_test_panics() {
    let res = std::panic::catch_unwind(|| {
        let mut lab = Lab::new(0, TTL);
        let a = lab.add_plain_host();
        let names = [
            lab.underlay().name().to_string(),
            lab.plain(a).ns.name().to_string(),
        ];
        let pid = lab.etcd().pid().expect("etcd runs");
        std::panic::panic_any((names, pid));
    });
    let (names, pid) = *res
        .expect_err("the closure panics")
        .downcast::<([String; 2], u32)>()
        .expect("the panic carries the names");
    for n in &names {
        assert!(!netns_exists(n), "netns {n} survived a panic");
    }
    assert!(!dataplane_tests::alive(pid), "etcd {pid} survived a panic");
}

#[test]
fn lab_kernel_vxlan_hosts_talk_over_the_underlay_and_tshark_decodes_it() {
    let mut lab = Lab::new(0, TTL);
    let a = lab.add_plain_host();
    let b = lab.add_plain_host();
    let va = KernelVtep::new(&lab, a, 4242, "10.77.0.1/24");
    let vb = KernelVtep::new(&lab, b, 4242, "10.77.0.2/24");
    va.add_remote(&vb.host_ip);
    vb.add_remote(&va.host_ip);
    let cap = lab.capture(&lab.plain(a).port, "udp port 4789");
    assert!(va.pings(&vb.ctr_ip), "{} -> {}", va.ctr_ip, vb.ctr_ip);
    let _srv = vb.serve("b", &["tcp:5000"]);
    let hello = va
        .probe("tcp", &vb.ctr_ip, 5000, &[])
        .expect("TCP over vxlan");
    assert_eq!(hello.peer_ip(), va.ctr_ip, "{hello:?}");
    let file = cap.finish();
    assert_well_formed(&file);
    let (_, rows) = tshark(&file, "vxlan && icmp", &["vxlan.vni", "ip.src"]);
    assert!(!rows.is_empty(), "no VXLAN-encapsulated ICMP captured");
    for r in &rows {
        assert!(r.starts_with("4242\t"), "wrong VNI: {r}");
    }
    assert!(
        !rows_with(&rows, &vb.ctr_ip).is_empty(),
        "no reply: {rows:?}"
    );
    let (_, tcp) = tshark(&file, "vxlan && tcp.port == 5000", &["frame.number"]);
    assert!(!tcp.is_empty(), "no VXLAN-encapsulated TCP captured");
}

// ----- the overlay across daemons ------------------------------------------

#[test]
fn three_hosts_ping_tcp_udp_and_names_across() {
    let lab = Lab::new(3, TTL);
    all_ready(&lab);
    overlay(&lab, 0, "ov", &["--subnet", "10.201.0.0/24"]);
    let (h1, h2, h3) = (lab.host(0), lab.host(1), lab.host(2));
    let c1 = sleeper(h1, "c1", "ov");
    let c3 = sleeper(h3, "c3", "ov");
    h2.run_whoami("c2", Some("ov"), &[], &["tcp:5000", "udp:5001"]);
    let c2 = h2.ip("c2", "ov");
    let cap = lab.capture(lab.host_port(0), "udp port 4789");
    for (d, from, to) in [
        (h1, "c1", &c2),
        (h1, "c1", &c3),
        (h3, "c3", &c1),
        (h3, "c3", &c2),
    ] {
        reach(d, from, to);
    }
    // No translation across the overlay: c2 sees c1's own address.
    for proto in ["tcp", "udp"] {
        let port = if proto == "tcp" { 5000 } else { 5001 };
        let hello = retry(
            &format!("{proto} from c1 to c2"),
            20,
            Duration::from_millis(200),
            || h1.probe("c1", proto, &c2, port, &[]),
        );
        assert_eq!((hello.tag.as_str(), hello.peer_ip()), ("c2", c1.as_str()));
    }
    // What host 1 sent and got is VXLAN between the hosts' underlay
    // addresses, and tshark finds nothing malformed in it.
    let file = cap.finish();
    assert_well_formed(&file);
    let (_, rows) = tshark(&file, "vxlan", &["ip.src", "ip.dst"]);
    for i in 1..3 {
        let (me, peer) = (lab.host_ip(0), lab.host_ip(i));
        for (a, b) in [(&me, &peer), (&peer, &me)] {
            assert!(
                rows.iter()
                    .any(|r| r.starts_with(&format!("{a},")) && r.contains(&format!("\t{b},"))),
                "no VXLAN {a} -> {b}: {rows:?}"
            );
        }
    }
    // Many full-sized segments each way in one connection.
    let big = "x".repeat(4000);
    let out = h3.exec_in("c3", &["python3", "-c", ECHO_50_PY, &c2, &big]);
    assert!(out.success(), "{out}");
    let want = format!("answered {}", 50 * (big.len() + 1));
    assert!(out.stdout.contains(&want), "{out}");
    // A name on another host resolves (the embedded resolver, cluster-wide).
    let got = retry("c1 to resolve c2", 30, Duration::from_millis(200), || {
        let out = h1.exec_in("c1", &["getent", "ahostsv4", "c2"]);
        out.stdout
            .split_whitespace()
            .next()
            .map(str::to_string)
            .ok_or(out.to_string())
    });
    assert_eq!(got, c2);
    // inspect on any host lists every host's containers, each with its Host.
    let net = h3.network_inspect("ov");
    let ctrs = net["Containers"]
        .as_object()
        .unwrap_or_else(|| panic!("no Containers: {net:#}"));
    let mut seen: Vec<(String, String)> = ctrs
        .values()
        .map(|c| {
            (
                c["Name"].as_str().unwrap_or_default().to_string(),
                c["Host"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = [("c1", 0), ("c2", 1), ("c3", 2)]
        .iter()
        .map(|(n, i)| (n.to_string(), lab.node_name(*i)))
        .collect();
    assert_eq!(seen, want, "{net:#}");
}

#[test]
fn overlays_are_isolated_from_each_other_and_from_a_bridge() {
    let lab = Lab::new(2, TTL);
    overlay(&lab, 0, "ova", &["--subnet", "10.202.0.0/24"]);
    overlay(&lab, 1, "ovb", &["--subnet", "10.203.0.0/24"]);
    let (h1, h2) = (lab.host(0), lab.host(1));
    h1.network_create(&["--subnet", "10.204.0.0/24", "br"]);
    let a1 = sleeper(h1, "a1", "ova");
    let a2 = sleeper(h2, "a2", "ova");
    let b1 = sleeper(h1, "b1", "ovb");
    let b2 = sleeper(h2, "b2", "ovb");
    let r1 = sleeper(h1, "r1", "br");
    // The positive controls first: each network works.
    reach(h1, "a1", &a2);
    reach(h2, "b2", &b1);
    for (d, from, to) in [
        (h1, "a1", &b2),
        (h1, "a1", &b1),
        (h2, "a2", &b1),
        (h2, "b2", &a1),
        (h1, "a1", &r1),
        (h1, "r1", &a1),
        (h1, "r1", &a2),
        (h1, "b1", &r1),
    ] {
        d.assert_no_ping(from, to);
    }
    // And still the same afterwards (the refusals broke nothing).
    reach(h2, "a2", &a1);
}

#[test]
fn each_host_takes_its_own_block_and_claims_another_when_full() {
    let lab = Lab::new(2, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.205.0.0/24"]);
    let (h1, h2) = (lab.host(0), lab.host(1));
    let first = sleeper(h1, "a0", "ov");
    let other = sleeper(h2, "b0", "ov");
    let (mine, theirs) = (block26(&first), block26(&other));
    assert_ne!(mine, theirs, "{first} and {other} share a /26");
    // Fill host 1's block: every address of it but the network's own, the
    // gateway's (.1) and the broadcast, if they fall in it.
    let net = u32::from(Ipv4Addr::new(10, 205, 0, 0));
    let reserved = [net, net + 1, net + 255]
        .iter()
        .filter(|a| *a & !63 == mine)
        .count();
    let usable = 64 - reserved;
    let mut in_block = vec![first];
    let mut n = 1;
    let claimed = loop {
        assert!(n <= usable + 1, "host 1 never left its block: {in_block:?}");
        let ip = sleeper(h1, &format!("a{n}"), "ov");
        n += 1;
        if block26(&ip) == mine {
            in_block.push(ip);
        } else {
            break ip;
        }
    };
    assert_eq!(
        in_block.len(),
        usable,
        "host 1 took another block before its own was full: {in_block:?}"
    );
    let new = block26(&claimed);
    assert!(
        new != mine && new != theirs,
        "{claimed} is neither in a new block nor free"
    );
    assert!(dataplane_tests::in_subnet(&claimed, "10.205.0.0/24"));
    // The other host sees the claims: host 1 holds both its blocks.
    let cidr = |b: u32| format!("{}/26", Ipv4Addr::from(b));
    let want = [
        (cidr(mine), lab.node_name(0)),
        (cidr(new), lab.node_name(0)),
        (cidr(theirs), lab.node_name(1)),
    ];
    retry(
        "host 2 to see host 1's second block",
        50,
        Duration::from_millis(100),
        || {
            let v = h2.network_inspect("ov");
            let blocks: Vec<(String, String)> = v["IPAM"]["Config"][0]["Blocks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    (
                        b["Block"].as_str().unwrap_or_default().to_string(),
                        b["Host"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            want.iter()
                .all(|w| blocks.contains(w))
                .then_some(())
                .ok_or(format!("{blocks:?}, want {want:?}"))
        },
    );
    // Host 2 keeps to its block, and every address is unique.
    let next = sleeper(h2, "b1", "ov");
    assert_eq!(block26(&next), theirs, "{next}");
    let mut all: Vec<String> = in_block;
    all.extend([claimed, other, next]);
    let set: HashSet<&String> = all.iter().collect();
    assert_eq!(set.len(), all.len(), "an address handed out twice: {all:?}");
}

#[test]
fn racing_runs_on_two_hosts_never_share_an_address() {
    let lab = Lab::new(2, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.206.0.0/24"]);
    let (h1, h2) = (lab.host(0), lab.host(1));
    // Eight runs on each host at once.
    let mut procs = Vec::new();
    for i in 0..8 {
        for (h, d) in [("x", h1), ("y", h2)] {
            let name = format!("{h}{i}");
            procs.push((
                d,
                name.clone(),
                d.spawn_cli(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    "ov",
                    "--",
                    "sleep",
                    "infinity",
                ]),
            ));
        }
    }
    let mut ips = Vec::new();
    for (d, name, p) in procs {
        let out = p.wait(Duration::from_secs(60));
        d.track();
        assert!(out.success(), "run {name}: {out}");
        ips.push((name.clone(), d.ip(&name, "ov")));
    }
    let set: HashSet<&String> = ips.iter().map(|(_, ip)| ip).collect();
    assert_eq!(set.len(), ips.len(), "an address handed out twice: {ips:?}");
    // One address asked for on both hosts at once: exactly one gets it.
    let want = "10.206.0.200";
    let p1 = h1.spawn_cli(&[
        "run",
        "-d",
        "--name",
        "same1",
        "--network",
        "ov",
        "--ip",
        want,
        "--",
        "sleep",
        "infinity",
    ]);
    let p2 = h2.spawn_cli(&[
        "run",
        "-d",
        "--name",
        "same2",
        "--network",
        "ov",
        "--ip",
        want,
        "--",
        "sleep",
        "infinity",
    ]);
    let (o1, o2) = (
        p1.wait(Duration::from_secs(60)),
        p2.wait(Duration::from_secs(60)),
    );
    h1.track();
    h2.track();
    let won: Vec<&Output> = [&o1, &o2].into_iter().filter(|o| o.success()).collect();
    assert_eq!(won.len(), 1, "not exactly one winner:\n{o1}\n{o2}");
    let lost = if o1.success() { &o2 } else { &o1 };
    let line = lost.refused();
    assert!(
        line.contains(want),
        "the refusal does not name {want}: {line}"
    );
}

#[test]
fn a_host_joining_later_reaches_the_existing_containers() {
    let mut lab = Lab::new(3, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.207.0.0/24"]);
    let c1 = sleeper(lab.host(0), "c1", "ov");
    let c2 = sleeper(lab.host(1), "c2", "ov");
    reach(lab.host(0), "c1", &c2);
    let h4 = lab.add_host();
    all_ready(&lab);
    retry(
        "the overlay to show on the new host",
        100,
        Duration::from_millis(100),
        || {
            let out = lab.host(h4).cli(&["network", "inspect", "ov"]);
            out.success().then_some(()).ok_or(out.to_string())
        },
    );
    let c4 = sleeper(lab.host(h4), "c4", "ov");
    reach(lab.host(h4), "c4", &c1);
    reach(lab.host(h4), "c4", &c2);
    reach(lab.host(0), "c1", &c4);
    reach(lab.host(1), "c2", &c4);
}

#[test]
fn a_ping_stream_across_hosts_loses_nothing_when_a_daemon_is_killed() {
    let mut lab = Lab::new(2, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.208.0.0/24"]);
    sleeper(lab.host(0), "c1", "ov");
    let c2 = sleeper(lab.host(1), "c2", "ov");
    reach(lab.host(0), "c1", &c2);
    let mut ping = lab.host(0).spawn_cli(&[
        "exec", "c1", "--", "ping", "-i", "0.05", "-c", "200", "-W", "1", &c2,
    ]);
    wait_output(&ping, "icmp_seq=10 ");
    // The receiving side's daemon crashes and comes back.
    lab.host_mut(1).stop("KILL");
    lab.host_mut(1).restart();
    assert!(
        ping.running(),
        "the pings ended before the daemon was back: {}",
        ping.output_so_far()
    );
    let out = ping.wait(Duration::from_secs(30));
    assert!(
        out.success() && out.stdout.contains("200 received, 0% packet loss"),
        "replies lost across the kill: {out}"
    );
}

#[test]
fn a_tcp_stream_across_hosts_loses_nothing_when_a_daemon_is_killed() {
    let mut lab = Lab::new(2, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.209.0.0/24"]);
    sleeper(lab.host(0), "c1", "ov");
    lab.host(1).run_cmd(
        "srv",
        Some("ov"),
        &[],
        &["sh", "-c", "nc -l 5000 | wc -l | sed 's/^/lines=/'"],
    );
    let srv = lab.host(1).ip("srv", "ov");
    reach(lab.host(0), "c1", &srv);
    retry("the TCP listener", 100, Duration::from_millis(100), || {
        let ss = lab
            .host(1)
            .exec_in("srv", &["ss", "-Hltn", "sport = :5000"]);
        (!ss.stdout.trim().is_empty())
            .then_some(())
            .ok_or(ss.to_string())
    });
    let stream = format!(
        "seq 1 200 | while read i; do echo line-$i; sleep 0.05; done | tee /dev/stderr | nc -N {srv} 5000"
    );
    let mut tcp = lab
        .host(0)
        .spawn_cli(&["exec", "c1", "--", "sh", "-c", &stream]);
    wait_output(&tcp, "line-10\n");
    // The sending side's daemon this time.
    lab.host_mut(0).stop("KILL");
    lab.host_mut(0).restart();
    assert!(
        tcp.running(),
        "the stream ended before the daemon was back: {}",
        tcp.output_so_far()
    );
    let out = tcp.wait(Duration::from_secs(60));
    assert!(out.success(), "the TCP stream broke: {out}");
    lab.host(1).wait_logs("srv", "lines=200");
}

#[test]
fn a_killed_hosts_lease_expires_and_others_see_it_down() {
    let mut lab = Lab::new(3, TTL);
    all_ready(&lab);
    let victim = lab.node_name(1);
    lab.host_mut(1).stop("KILL");
    let killed = Instant::now();
    // Polled every 100 ms for at most TTL + MARGIN.
    let attempts = ((Duration::from_secs(TTL) + MARGIN).as_millis() / 100) as u32;
    let seen = retry(
        &format!("{victim} to be shown down"),
        attempts,
        Duration::from_millis(100),
        || match node_state(lab.host(0), &victim) {
            Some(s) if s == "down" => Ok(killed.elapsed()),
            other => Err(format!("{other:?}: {:?}", nodes(lab.host(0)))),
        },
    );
    println!(
        "{victim} seen down {:.1} s after the kill",
        seen.as_secs_f64()
    );
    let entry = nodes(lab.host(0))
        .into_iter()
        .find(|n| n["Name"] == victim.as_str())
        .expect("the victim is listed");
    assert!(
        entry["Since"].as_str().is_some_and(|s| !s.is_empty()),
        "a down node without Since: {entry}"
    );
    assert_eq!(entry["Addr"], lab.host_ip(1).as_str(), "{entry}");
    // The third host agrees, and still sees host 1 ready.
    assert_eq!(node_state(lab.host(2), &victim).as_deref(), Some("down"));
    assert_eq!(
        node_state(lab.host(2), &lab.node_name(0)).as_deref(),
        Some("ready")
    );
    // Back again: ready once more.
    lab.host_mut(1).restart();
    all_ready(&lab);
}

#[test]
fn traffic_flows_while_etcd_is_stopped_and_writes_resume_after() {
    let mut lab = Lab::new(3, TTL);
    overlay(&lab, 0, "ov", &["--subnet", "10.210.0.0/24"]);
    let c1 = sleeper(lab.host(0), "c1", "ov");
    let c2 = sleeper(lab.host(1), "c2", "ov");
    reach(lab.host(0), "c1", &c2);
    // Straight into the sandboxes: no daemon call on the packet's way.
    let (s1, s2) = (lab.host(0).sandbox("c1"), lab.host(1).sandbox("c2"));
    lab.etcd().stop();
    let in_ns = |ns: &str, args: &[&str]| {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        dataplane_tests::run(c)
    };
    let out = in_ns(&s1, &["ping", "-c", "20", "-i", "0.1", "-W", "1", &c2]);
    assert!(
        out.stdout.contains("20 received, 0% packet loss"),
        "c1 -> c2 with etcd stopped: {out}"
    );
    let out = in_ns(&s2, &["ping", "-c", "5", "-i", "0.1", "-W", "1", &c1]);
    assert!(out.success(), "c2 -> c1 with etcd stopped: {out}");
    // A write needs etcd: a clear refusal that says so.
    let out = lab.host(0).cli(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.211.0.0/24",
        "late",
    ]);
    let line = out.refused();
    assert!(
        line.contains("etcd"),
        "the error does not name etcd: {line}"
    );
    // etcd back: writes work again and a new container is reachable.
    lab.etcd().start();
    retry(
        "network create to work again",
        60,
        Duration::from_millis(500),
        || {
            let out = lab.host(0).cli(&[
                "network",
                "create",
                "--driver",
                "overlay",
                "--subnet",
                "10.211.0.0/24",
                "late",
            ]);
            out.success().then_some(()).ok_or(out.to_string())
        },
    );
    let c3 = sleeper(lab.host(2), "c3", "ov");
    reach(lab.host(0), "c1", &c3);
    reach(lab.host(2), "c3", &c2);
}

#[test]
fn a_kernel_vxlan_host_declared_as_a_vtep_talks_to_our_containers() {
    let mut lab = Lab::new(2, TTL);
    let p = lab.add_plain_host();
    let vni = 4300;
    let peer_ip = lab.plain(p).ip.clone();
    overlay(
        &lab,
        0,
        "ov",
        &[
            "--subnet",
            "10.212.0.0/24",
            "--opt",
            &format!("vni={vni}"),
            "--opt",
            &format!("vtep={peer_ip}"),
        ],
    );
    let vtep = KernelVtep::new(&lab, p, vni, "10.212.0.250/24");
    for i in 0..2 {
        vtep.add_remote(&lab.host_ip(i));
    }
    let (h1, h2) = (lab.host(0), lab.host(1));
    h1.run_whoami("c1", Some("ov"), &[], &["tcp:5000"]);
    let c1 = h1.ip("c1", "ov");
    let c2 = sleeper(h2, "c2", "ov");
    let cap = lab.capture(&lab.plain(p).port, "udp port 4789");
    reach(h1, "c1", &vtep.ctr_ip);
    reach(h2, "c2", &vtep.ctr_ip);
    assert!(vtep.pings(&c1), "the kernel VTEP's container -> c1");
    assert!(vtep.pings(&c2), "the kernel VTEP's container -> c2");
    // TCP both ways, addresses untouched.
    let hello = vtep.probe("tcp", &c1, 5000, &[]).expect("peer -> c1 TCP");
    assert_eq!(
        (hello.tag.as_str(), hello.peer_ip()),
        ("c1", vtep.ctr_ip.as_str())
    );
    let _srv = vtep.serve("peer", &["tcp:5001"]);
    let hello = h2
        .probe("c2", "tcp", &vtep.ctr_ip, 5001, &[])
        .expect("c2 -> peer TCP");
    assert_eq!((hello.tag.as_str(), hello.peer_ip()), ("peer", c2.as_str()));
    // Our VXLAN on the wire: tshark decodes it cleanly, with our VNI, both
    // ways between the peer and each of our hosts.
    let file = cap.finish();
    assert_well_formed(&file);
    let (_, rows) = tshark(&file, "vxlan", &["vxlan.vni", "ip.src", "ip.dst"]);
    assert!(!rows.is_empty(), "no VXLAN captured");
    for r in &rows {
        assert!(r.starts_with(&format!("{vni}\t")), "wrong VNI: {r}");
    }
    for i in 0..2 {
        let ours = lab.host_ip(i);
        let from_us: Vec<&String> = rows
            .iter()
            .filter(|r| r.split('\t').nth(1).is_some_and(|s| s.starts_with(&ours)))
            .collect();
        assert!(!from_us.is_empty(), "nothing from host {ours}: {rows:?}");
    }
    let (_, tcp) = tshark(&file, "vxlan && tcp.port == 5000", &["frame.number"]);
    assert!(!tcp.is_empty(), "no encapsulated TCP to c1 captured");
}

//! `cargo xtask demo`: a daemon in its own network namespace, a network, two
//! sandboxes talking through the eBPF switch (no Linux bridge), counters.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    build_dataplane,
    lab::{self, Cleanup, Daemon},
    setup, sh, Progress,
};

const WEB: &str = "while true; do echo hello-from-web | nc -l -p 8080 -q 1; done";

/// A service replica's server: answers each connection with its own
/// hostname and the client address it sees.
const HELLO: &str = "import socket,socketserver
class H(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(('hello from %s; you are %s:%d\\n' % ((socket.gethostname(),) + self.client_address)).encode())
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(('0.0.0.0', 8081), H).serve_forever()";

pub(crate) fn show(cmdline: &str, out: &str) {
    println!("$ {cmdline}");
    let out = out.trim_end();
    if !out.is_empty() {
        println!("{out}");
    }
    println!();
}

fn redirected(d: &Daemon) -> Result<u64> {
    let v: Value = serde_json::from_str(&d.cli(&["stats", "--format", "json"])?)
        .context("parsing stats JSON")?;
    Ok(v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["redirected"].as_u64())
        .sum())
}

pub fn demo() -> Result<()> {
    let mut p = Progress::new(31);
    setup::setup(&mut p)?;
    p.step("building dataplane-user and its eBPF object");
    let bin = build_dataplane(false)?;

    let pid = std::process::id();
    let ns = format!("dpdemo-{pid}");
    let dir = std::env::temp_dir().join(format!("dpdemo-{pid}"));
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/dpdemo-{pid}"));
    // Dropped last (declared first): netns, pins and tempdir go after the daemon.
    let mut cleanup = Cleanup::default();

    p.step(&format!("namespace {ns} and the daemon in it"));
    cleanup.dir(&dir)?;
    cleanup.path(&bpffs);
    cleanup.netns(&ns)?;
    let mut d = Daemon::start(&bin, &ns, &dir, &bpffs, Duration::from_secs(20))?;
    println!(
        "# daemon in netns {ns} (nsenter --net=/var/run/netns/{ns}), socket {}",
        d.sock.display()
    );
    println!("$ export DATAPLANE_HOST={}\n", d.host());

    p.step("network create --subnet 10.88.0.0/24 demo");
    let out = d.cli(&["network", "create", "--subnet", "10.88.0.0/24", "demo"])?;
    show("dataplane network create --subnet 10.88.0.0/24 demo", &out);
    show("dataplane network ls", &d.cli(&["network", "ls"])?);

    p.step("run web and client");
    let web = d.run("web", "demo", &["sh", "-c", WEB])?;
    show(
        &format!("dataplane run -d --name web --network demo -- sh -c '{WEB}'"),
        &format!("({}: sandbox {}, {})", web.name, web.netns, web.ip),
    );
    let client = d.run("client", "demo", &["sleep", "infinity"])?;
    show(
        "dataplane run -d --name client --network demo -- sleep infinity",
        &format!("({}: sandbox {}, {})", client.name, client.netns, client.ip),
    );
    show("dataplane ps", &d.cli(&["ps"])?);
    // Docker's habits: a Go template picks one field.
    let tmpl = "{{.NetworkSettings.Networks.demo.IPAddress}}";
    let ip = d.cli(&["inspect", "-f", tmpl, "web"])?;
    show(&format!("dataplane inspect -f '{tmpl}' web"), &ip);
    if ip.trim() != web.ip {
        bail!(
            "inspect -f gave {:?}, not web's address {}",
            ip.trim(),
            web.ip
        );
    }
    let table = "table {{.Names}}\\t{{.Networks}}\\t{{.Status}}";
    show(
        &format!("dataplane ps --format '{table}'"),
        &d.cli(&["ps", "--format", table])?,
    );
    let before = redirected(&d)?;

    p.step(&format!("ping web ({}) from client", web.ip));
    let ping = d.cli(&[
        "exec", "client", "--", "ping", "-c", "3", "-W", "2", &web.ip,
    ])?;
    show(
        &format!("dataplane exec client -- ping -c 3 {}", web.ip),
        &ping,
    );

    p.step("fetch from web over TCP");
    let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut d.client(&["exec", "client", "--", "nc", "-w", "3", &web.ip, "8080"]),
            Some(Duration::from_secs(20)),
        )?;
        Ok(o.stdout.contains("hello-from-web").then_some(o.stdout))
    })?;
    let Some(got) = got else {
        bail!("no answer from web:8080 over TCP within 15 s");
    };
    show(
        &format!("dataplane exec client -- nc -w 3 {} 8080", web.ip),
        &got,
    );

    // ----- NAT: the same daemon, seen from "outside" -----------------------
    let out_ns = format!("dpdemo-{pid}-out");
    p.step(&format!(
        "an outside namespace {out_ns}, joined to the host by a veth"
    ));
    cleanup.netns(&out_ns)?;
    let (up, down) = (format!("dpu{pid}"), format!("dpo{pid}"));
    sh::output(
        &mut crate::sh::cmd(
            "ip",
            [
                "link",
                "add",
                up.as_str(),
                "netns",
                ns.as_str(),
                "type",
                "veth",
                "peer",
                "name",
                down.as_str(),
                "netns",
                out_ns.as_str(),
            ],
        ),
        Some(Duration::from_secs(10)),
    )?;
    lab::ip(&ns, &["addr", "add", "198.51.100.1/24", "dev", &up])?;
    lab::ip(&ns, &["link", "set", &up, "up"])?;
    lab::ip(&out_ns, &["addr", "add", "198.51.100.2/24", "dev", &down])?;
    lab::ip(&out_ns, &["link", "set", &down, "up"])?;
    lab::ip(&out_ns, &["link", "set", "lo", "up"])?;
    println!("# outside: 198.51.100.2 in {out_ns}; host: 198.51.100.1 in {ns}\n");

    p.step("publish web2 with -p 8080:8080");
    d.run_with("web2", "demo", &["-p", "8080:8080"], &["sh", "-c", WEB])?;
    show(
        &format!("dataplane run -d --name web2 --network demo -p 8080:8080 -- sh -c '{WEB}'"),
        "",
    );
    show("dataplane port web2", &d.cli(&["port", "web2"])?);

    p.step("fetch from web2 through the published port, from outside");
    let fetch = |what: &str, c: &mut std::process::Command| -> Result<String> {
        let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
            let o = sh::capture(c, Some(Duration::from_secs(20)))?;
            Ok(o.stdout.contains("hello-from-web").then_some(o.stdout))
        })?;
        got.ok_or_else(|| anyhow::anyhow!("no answer from {what} within 15 s"))
    };
    let got = fetch(
        "198.51.100.1:8080 (outside)",
        &mut lab::in_netns(&out_ns, &["nc", "-w", "3", "198.51.100.1", "8080"]),
    )?;
    show(
        &format!("ip netns exec {out_ns} nc -w 3 198.51.100.1 8080"),
        &got,
    );
    let got = fetch(
        "127.0.0.1:8080 (the host itself)",
        &mut crate::sh::cmd(
            "nsenter",
            [
                format!("--net=/var/run/netns/{ns}").as_str(),
                "nc",
                "-w",
                "3",
                "127.0.0.1",
                "8080",
            ],
        ),
    )?;
    show(
        &format!("nsenter --net=/var/run/netns/{ns} nc -w 3 127.0.0.1 8080   # no proxy process"),
        &got,
    );

    p.step("outbound: client pings the outside, masqueraded");
    let ping = d.cli(&[
        "exec",
        "client",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "198.51.100.2",
    ])?;
    show("dataplane exec client -- ping -c 2 198.51.100.2", &ping);

    p.step("no Linux bridge in the daemon's namespace");
    let bridges = lab::ip(&ns, &["-d", "link", "show", "type", "bridge"])?;
    show(
        &format!("ip -n {ns} -d link show type bridge"),
        if bridges.trim().is_empty() {
            "(none)"
        } else {
            &bridges
        },
    );
    if !bridges.trim().is_empty() {
        bail!("a Linux bridge exists in {ns}; the eBPF path should need none");
    }
    show(
        &format!("ip -n {ns} -br link"),
        &lab::ip(&ns, &["-br", "link"])?,
    );

    p.step("eBPF counters");
    let after = redirected(&d)?;
    show("dataplane stats", &d.cli(&["stats"])?);
    println!(
        "redirected packets: {before} before the ping, {after} after the TCP fetch (+{})",
        after.saturating_sub(before)
    );
    if after <= before {
        bail!("the redirected counters did not increase: traffic did not take the eBPF path");
    }
    let v: Value = serde_json::from_str(&d.cli(&["stats", "--format", "json"])?)?;
    let translated: u64 = v["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["translated"].as_u64())
        .sum();
    println!("translated packets (published port, localhost, masquerade): {translated}");
    if translated == 0 {
        bail!("no packet was translated: the NAT path did not run");
    }
    let rules = sh::capture(
        &mut lab::in_netns(&ns, &["iptables-save"]),
        Some(Duration::from_secs(10)),
    )
    .map(|o| o.stdout.lines().filter(|l| l.starts_with("-A")).count())
    .unwrap_or(0);
    println!("iptables rules in {ns}: {rules}");
    println!("\none host OK: web and client talk through bpf_redirect_peer, no bridge; the published port, localhost and masquerade work with no iptables rule and no proxy.\n");
    drop(d);
    drop(cleanup);
    cross_host(&mut p, &bin, pid)?;
    crate::demo_clients::real_clients(&mut p, &bin, pid)?;
    crate::demo_lan::lan(&mut p, &bin, pid)?;
    println!("\ndemo OK: one host (eBPF switch, NAT without iptables or a proxy), two hosts (VXLAN done by the eBPF programs, no vxlan device, no bridge, hosts agreeing through etcd, a service answered on both hosts by the Maglev routing mesh with the client's own address kept), real clients (a stock Docker engine with -d dataplane, Podman through the CNI plugin), and a LAN (macvlan with DHCP, VLAN tags in eBPF).");
    Ok(())
}

/// The second part: two hosts on an underlay switch, etcd, a daemon on each,
/// an overlay network, and a container on one host reaching one on the other.
fn cross_host(p: &mut Progress, bin: &std::path::Path, pid: u32) -> Result<()> {
    let tag = format!("dpdemo{pid}");
    let dir = std::env::temp_dir().join(format!("dpdemo-{pid}-cluster"));
    let mut cleanup = Cleanup::default();
    p.step("two hosts on an underlay switch, etcd, a daemon on each (--store etcd://...)");
    let mut lab = lab::cluster(&mut cleanup, bin, &tag, &dir, 2)?;
    for (ns, ip) in &lab.addrs {
        println!("# host netns {ns}, underlay address {ip}");
    }
    println!();
    let [h1, h2] = &mut lab.hosts[..] else {
        bail!("the lab has two hosts");
    };
    show(
        "dataplane node ls        # on host1",
        &h1.cli(&["node", "ls"])?,
    );

    p.step("network create --driver overlay --subnet 10.89.0.0/24 ov, on host1");
    let out = h1.cli(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.89.0.0/24",
        "ov",
    ])?;
    show(
        "dataplane network create --driver overlay --subnet 10.89.0.0/24 ov   # on host1",
        &out,
    );
    show(
        "dataplane network ls        # on host2",
        &h2.cli(&["network", "ls"])?,
    );

    p.step("web on host2, client on host1");
    let web = h2.run("web", "ov", &["sh", "-c", WEB])?;
    show(
        "dataplane run -d --name web --network ov -- ...        # on host2",
        &format!("(web: {})", web.ip),
    );
    let client = h1.run("client", "ov", &["sleep", "infinity"])?;
    show(
        "dataplane run -d --name client --network ov -- sleep infinity   # on host1",
        &format!("(client: {})", client.ip),
    );

    p.step(&format!(
        "ping web ({}) on host2 from client on host1",
        web.ip
    ));
    let ping = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut h1.client(&[
                "exec", "client", "--", "ping", "-c", "3", "-W", "2", &web.ip,
            ]),
            Some(Duration::from_secs(20)),
        )?;
        Ok(o.ok().then_some(o.stdout))
    })?;
    let Some(ping) = ping else {
        bail!("client on host1 could not ping web on host2 within 15 s");
    };
    show(
        &format!("dataplane exec client -- ping -c 3 {}   # on host1", web.ip),
        &ping,
    );

    p.step("fetch from web by name, across the hosts");
    let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut h1.client(&["exec", "client", "--", "nc", "-w", "3", "web", "8080"]),
            Some(Duration::from_secs(20)),
        )?;
        Ok(o.stdout.contains("hello-from-web").then_some(o.stdout))
    })?;
    let Some(got) = got else {
        bail!("no answer from web:8080 (by name) across the hosts within 15 s");
    };
    show(
        "dataplane exec client -- nc -w 3 web 8080   # on host1",
        &got,
    );
    show(
        "dataplane node ls        # on host2",
        &h2.cli(&["node", "ls"])?,
    );

    p.step("service create --name hello --replicas 2 -p 8081:8081 (ingress), on host1");
    let out = h1.cli(&[
        "service",
        "create",
        "--name",
        "hello",
        "--replicas",
        "2",
        "--network",
        "ov",
        "-p",
        "published=8081,target=8081",
        "--",
        "python3",
        "-c",
        HELLO,
    ])?;
    show(
        "dataplane service create --name hello --replicas 2 --network ov -p published=8081,target=8081 -- python3 ...   # on host1",
        &out,
    );
    let live = lab::poll(Duration::from_secs(30), Duration::from_millis(300), || {
        let ls = h2.cli(&["service", "ls"])?;
        Ok(ls.contains("2/2").then_some(ls))
    })?;
    let Some(ls) = live else {
        bail!("service hello did not get 2 live replicas within 30 s");
    };
    show("dataplane service ls        # on host2", &ls);
    show(
        "dataplane service ps hello",
        &h1.cli(&["service", "ps", "hello"])?,
    );

    p.step("the routing mesh: both hosts answer 8081 from outside the cluster, spread over the replicas");
    let outside = format!("{tag}-underlay");
    let mut seen = std::collections::BTreeSet::new();
    for (_, ip) in &lab.addrs {
        for _ in 0..8 {
            let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
                let o = sh::capture(
                    &mut lab::in_netns(&outside, &["nc", "-w", "3", ip, "8081"]),
                    Some(Duration::from_secs(10)),
                )?;
                Ok(o.stdout.contains("hello from").then_some(o.stdout))
            })?;
            let Some(got) = got else {
                bail!("no answer from {ip}:8081 (ingress) within 15 s");
            };
            println!(
                "$ nc {ip} 8081   # from {outside}, outside the cluster\n{}",
                got.trim_end()
            );
            if !got.contains(&format!("you are {}.1:", lab::LAB_NET)) {
                bail!("the replica did not see the client's own address: {got}");
            }
            if let Some(who) = got.split_whitespace().nth(2) {
                seen.insert(who.trim_end_matches(';').to_string());
            }
        }
    }
    if seen.len() < 2 {
        bail!("16 connections through both hosts all reached one replica ({seen:?})");
    }
    println!("replicas that answered: {seen:?}, each seeing the client's own address");
    let (ns1, _) = &lab.addrs[0];
    let devices = lab::ip(ns1, &["-d", "-br", "link"])?;
    show(
        &format!("ip -n {ns1} -br link   # host1: no vxlan device, no bridge"),
        &devices,
    );
    let kinds = lab::ip(ns1, &["-d", "link", "show"])?;
    if kinds.contains("vxlan id") || kinds.contains("bridge_id") {
        bail!("host1 has a vxlan or bridge device; the tunnel should be eBPF's alone");
    }
    drop(lab);
    drop(cleanup);
    Ok(())
}

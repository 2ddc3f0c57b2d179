//! `cargo xtask bench`: the same traffic over four setups, side by side on
//! identical veth pairs, repetitions interleaved (rep 1: a b c d, rep 2: ...):
//! (a) a plain veth pair, (b) a Linux bridge, (c) a Linux bridge with
//! Docker's netfilter rules, (d) the dataplane's eBPF path. Plus `dns`:
//! name lookups from inside a sandbox of (d), through the embedded resolver
//! against a `--link` hosts-file entry (see `dnsbench`). Plus `nat`:
//! published ports through the eBPF NAT against Docker's iptables DNAT at
//! 1, 1,000 and 10,000 ports, in namespaces of its own (see `natbench`).
//! Plus `control`: what the daemon costs to drive (run/rm latency, memory,
//! restart and drift repair) at 100 and 1,000 sandboxes (see `ctlbench`).
//! Plus `services`: the routing mesh against kube-proxy's iptables rules at
//! 1, 100 and 1,000 services, two hosts (see `servicebench`).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    build_dataplane, clusterbench, ctlbench, dnsbench, dockerbench,
    lab::{self, addr, in_netns, Cleanup, Daemon},
    lanbench, md, natbench, overlaybench, root, servicebench, setup,
    sh::{self, bg, first_line, json_of},
    stats::{figure_table, spread, FigureRow, Spread},
    Format, Progress,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Floor,
    Bridge,
    Netfilter,
    Ebpf,
    /// Not a network setup: DNS lookups inside (d)'s first sandbox (builds
    /// (d) even when `ebpf` is not selected).
    Dns,
    /// Published ports: new TCP connections/s, latency and throughput to
    /// the last of N published ports, eBPF NAT against Docker's iptables
    /// DNAT (own namespaces and daemons; see --nat-ports).
    Nat,
    /// The control plane: `run`/`rm` latency, sandboxes/s with parallel
    /// clients, daemon memory, restart and drift repair (own namespaces
    /// and daemon; see --sandboxes).
    Control,
    /// Two hosts on one underlay, a container each: routed without a
    /// tunnel, the kernel's VXLAN as Docker builds it, and the dataplane's
    /// overlay network with etcd (own namespaces; see `overlaybench`).
    Overlay,
    /// Many hosts (daemons in namespaces, one etcd): how long a new
    /// container takes to reach every other host, etcd's and the daemons'
    /// costs (see --cluster-hosts, `clusterbench`).
    Cluster,
    /// A client outside a two-host cluster, a service on host B reached
    /// through host A: the eBPF routing mesh (Maglev, our VXLAN) against
    /// kube-proxy's iptables rules on a kernel VXLAN, at 1, 100 and 1,000
    /// services (see --services, `servicebench`).
    Services,
    /// Real Docker (dockerd 20.10) on the same machine: its bridge driver
    /// against `-d dataplane` (or our CLI as a stand-in when the plugin is
    /// not built): container-to-container latency and 64-byte pps,
    /// published-port connections/s, `docker run` until on the network
    /// (see --docker-runs, `dockerbench`).
    Docker,
    /// Containers on an existing LAN: plain namespaces on a switch, a
    /// macvlan container each on two hosts, a VLAN 100 container each
    /// (our eBPF tags); see `lanbench`.
    Lan,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Floor => "(a) floor: veth pair",
            Kind::Bridge => "(b) Linux bridge",
            Kind::Netfilter => "(c) bridge + Docker netfilter",
            Kind::Ebpf => "(d) dataplane eBPF",
            Kind::Dns => "DNS: embedded resolver vs hosts file",
            Kind::Nat => "published ports: eBPF NAT vs Docker iptables",
            Kind::Control => "control plane: run, rm, memory, restart, drift",
            Kind::Overlay => "overlay: routed vs kernel VXLAN vs eBPF VXLAN, two hosts",
            Kind::Cluster => "cluster: endpoint propagation to N hosts through etcd",
            Kind::Services => "services: eBPF routing mesh vs kube-proxy iptables",
            Kind::Docker => "docker: bridge driver vs -d dataplane",
            Kind::Lan => "lan: macvlan and VLAN networks vs plain namespaces",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Kind::Floor => "one veth pair between two namespaces (10.200.1.1 <-> 10.200.1.2)",
            Kind::Bridge => {
                "two namespaces, each with a veth into a Linux bridge `br0` in a third namespace \
                 (10.200.2.0/24; bridge-nf-call-iptables=0 there, so netfilter does not see bridged frames)"
            }
            Kind::Netfilter => {
                "as (b) on 10.200.3.0/24, plus what Docker sets up for a bridge network in the bridge's \
                 namespace: bridge-nf-call-iptables=1, ip_forward=1, filter FORWARD policy DROP with the \
                 DOCKER-USER, DOCKER-ISOLATION-STAGE-1/2 and DOCKER chains and the conntrack \
                 RELATED,ESTABLISHED accept, nat MASQUERADE of the subnet and the DOCKER nat chain"
            }
            Kind::Ebpf => {
                "a `dataplane daemon` in its own namespace (nsenter), `network create --subnet 10.200.4.0/24`, \
                 two sandboxes from `dataplane run -d ... -- sleep infinity`; their host-side veths are \
                 switched by the TC program with bpf_redirect_peer (no bridge, no iptables); the first \
                 is created with `--link <second>:peerlink`"
            }
            Kind::Dns => "name lookups inside (d)'s first sandbox (see the DNS section)",
            Kind::Nat => "published ports in namespaces of their own (see the published-ports section)",
            Kind::Control => "a daemon of its own driven through its CLI (see the control-plane section)",
            Kind::Overlay => "two hosts on an underlay bridge, three ways (see the overlay section)",
            Kind::Cluster => "daemons in host namespaces sharing one etcd (see the cluster section)",
            Kind::Services => "two hosts per path and a client on an underlay (see the services section)",
            Kind::Docker => "two hosts with dockerd, an outside client each (see the Docker section)",
            Kind::Lan => "a switch, plain namespaces and two daemon hosts (see the LAN section)",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyTool {
    /// sockperf if `sockperf --version` works, else the built-in ping-pong.
    Auto,
    Sockperf,
    /// The built-in 1-byte TCP ping-pong (this binary on both ends).
    Rust,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Repetitions (each runs every setup once, interleaved).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,
    /// Seconds per iperf3 / latency run, and per DNS lookup kind.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=120))]
    seconds: u64,
    /// Setups to measure (comma-separated); `dns` alone reruns only the DNS
    /// section of the report (it needs (d)'s daemon, which it builds), `nat`
    /// alone only the published-ports section (and its SVG).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = ALL)]
    setups: Vec<Kind>,
    /// `nat`: numbers of published ports to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = natbench::DEFAULT_PORTS,
          value_parser = clap::value_parser!(u32).range(1..=natbench::MAX_PORTS as i64))]
    nat_ports: Vec<u32>,
    /// `nat`: seconds per measurement (connections/s, latency, throughput);
    /// the repetitions are --reps.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    nat_seconds: u64,
    /// `control`: sandbox counts to measure (comma-separated), a fresh
    /// daemon each; the parallel create-and-remove cycles are --reps.
    #[arg(long, value_delimiter = ',', default_values_t = ctlbench::DEFAULT_SANDBOXES,
          value_parser = clap::value_parser!(u32).range(1..=ctlbench::MAX_SANDBOXES as i64))]
    sandboxes: Vec<u32>,
    /// `control`: parallel clients of the create-and-remove cycles.
    #[arg(long, default_value_t = ctlbench::DEFAULT_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    control_clients: u32,
    /// `cluster`: host counts to measure (comma-separated), a fresh
    /// cluster each.
    #[arg(long, value_delimiter = ',', default_values_t = clusterbench::DEFAULT_HOSTS,
          value_parser = clap::value_parser!(u32).range(2..=clusterbench::MAX_HOSTS as i64))]
    cluster_hosts: Vec<u32>,
    /// `cluster`: containers created (one at a time, hosts in turn) per
    /// host count; the propagation percentiles are over these.
    #[arg(long, default_value_t = clusterbench::DEFAULT_RUNS,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    cluster_runs: u32,
    /// `services`: service counts to measure (comma-separated), ascending.
    #[arg(long, value_delimiter = ',', default_values_t = servicebench::DEFAULT_COUNTS,
          value_parser = clap::value_parser!(u32).range(1..=servicebench::MAX_COUNT as i64))]
    services: Vec<u32>,
    /// `services`: seconds per measurement (connections/s, latency,
    /// throughput); the repetitions are --reps.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=120))]
    services_seconds: u64,
    /// `services`: replicas of the measured service (all on host B).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    service_replicas: u32,
    /// `services`: replicas of every other service.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=4))]
    filler_replicas: u32,
    /// `docker`: timed `run -d` (until the address answers a ping) per
    /// side and rep.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=99))]
    docker_runs: u32,
    /// `services`, for development: 1 rep, 1 s per measurement, 1 and 100
    /// services (unless --services or --reps say otherwise).
    #[arg(long)]
    quick: bool,
    #[arg(long, value_enum, default_value_t = LatencyTool::Auto)]
    latency: LatencyTool,
    /// Where to write the report (default: BENCHMARKS.md at the repo root).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not write the report file.
    #[arg(long)]
    no_write: bool,
    /// Use this `dataplane` binary instead of building one (release).
    #[arg(long)]
    dataplane_bin: Option<PathBuf>,
}

const ALL: [Kind; 12] = [
    Kind::Floor,
    Kind::Bridge,
    Kind::Netfilter,
    Kind::Ebpf,
    Kind::Dns,
    Kind::Nat,
    Kind::Control,
    Kind::Overlay,
    Kind::Cluster,
    Kind::Services,
    Kind::Docker,
    Kind::Lan,
];

/// Where traffic goes: client namespace -> server namespace/address.
pub(crate) struct Pair {
    pub kind: Kind,
    pub client: String,
    pub server: String,
    pub server_ip: String,
}

const NF_RULES: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s SUBNET ! -o br0 -j MASQUERADE
-A DOCKER -i br0 -j RETURN
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o br0 -j DOCKER
-A FORWARD -i br0 ! -o br0 -j ACCEPT
-A FORWARD -i br0 -o br0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o br0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

fn build_floor(cl: &mut Cleanup, tag: &str) -> Result<Pair> {
    let (a, b) = (format!("{tag}-fa"), format!("{tag}-fb"));
    cl.netns(&a)?;
    cl.netns(&b)?;
    lab::ip(
        &a,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ],
    )?;
    addr(&a, "eth0", "10.200.1.1/24")?;
    addr(&b, "eth0", "10.200.1.2/24")?;
    Ok(Pair {
        kind: Kind::Floor,
        client: a,
        server: b,
        server_ip: "10.200.1.2".into(),
    })
}

fn build_bridge(
    cl: &mut Cleanup,
    tag: &str,
    netfilter: bool,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<Pair> {
    let (k, kind, net) = if netfilter {
        ("n", Kind::Netfilter, 3)
    } else {
        ("b", Kind::Bridge, 2)
    };
    let (a, b, s) = (
        format!("{tag}-{k}a"),
        format!("{tag}-{k}b"),
        format!("{tag}-{k}s"),
    );
    for n in [&a, &b, &s] {
        cl.netns(n)?;
    }
    lab::ip(&s, &["link", "add", "br0", "type", "bridge"])?;
    addr(&s, "br0", &format!("10.200.{net}.254/24"))?;
    for (ns, port, host) in [(&a, "veth-a", 1), (&b, "veth-b", 2)] {
        lab::ip(
            ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &s,
            ],
        )?;
        lab::ip(&s, &["link", "set", port, "master", "br0", "up"])?;
        addr(ns, "eth0", &format!("10.200.{net}.{host}/24"))?;
        lab::ip(
            ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &format!("10.200.{net}.254"),
            ],
        )?;
    }
    let call = if netfilter { "1" } else { "0" };
    let mut brnf = true;
    for key in [
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
    ] {
        if lab::sysctl(&s, key, call).is_err() {
            brnf = false;
        }
    }
    if netfilter {
        if !brnf {
            notes.push(
                "(c): net.bridge.bridge-nf-call-iptables is unavailable here (no br_netfilter), \
                 so the FORWARD rules do not see bridged traffic"
                    .into(),
            );
        }
        lab::sysctl(&s, "net.ipv4.ip_forward", "1")?;
        let rules = dir.join("docker-rules.txt");
        std::fs::write(
            &rules,
            NF_RULES.replace("SUBNET", &format!("10.200.{net}.0/24")),
        )?;
        sh::output(
            in_netns(&s, &["iptables-restore"]).arg(&rules),
            Some(Duration::from_secs(30)),
        )
        .context("loading the Docker-style ruleset with iptables-restore")?;
    }
    Ok(Pair {
        kind,
        client: a,
        server: b,
        server_ip: format!("10.200.{net}.2"),
    })
}

fn build_ebpf(
    cl: &mut Cleanup,
    tag: &str,
    bin: &Path,
    dir: &Path,
) -> Result<(Daemon, Pair, dnsbench::Target)> {
    let ns = format!("{tag}-d");
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let ddir = dir.join("daemon");
    cl.path(&bpffs);
    cl.netns(&ns)?;
    let mut d = Daemon::start(bin, &ns, &ddir, &bpffs, Duration::from_secs(20))?;
    d.cli(&["network", "create", "--subnet", "10.200.4.0/24", "bench"])?;
    // b first: a links to it, so a's /etc/hosts names b (the DNS lookups).
    let b = d.run("bench-b", "bench", &["sleep", "infinity"])?;
    let a = d.run_with(
        "bench-a",
        "bench",
        &["--link", "bench-b:peerlink"],
        &["sleep", "infinity"],
    )?;
    let target = dnsbench::Target {
        netns: a.netns.clone(),
        client: a.name.clone(),
        peer: b.name.clone(),
        peer_ip: b
            .ip
            .parse()
            .with_context(|| format!("bench-b's address {:?}", b.ip))?,
        network: "bench".into(),
        alias: "peerlink".into(),
    };
    Ok((
        d,
        Pair {
            kind: Kind::Ebpf,
            client: a.netns,
            server: b.netns,
            server_ip: b.ip,
        },
        target,
    ))
}

/// TCP: Gbit/s received and the sender's retransmits; UDP: kpps received.
fn iperf(p: &Pair, secs: u64, udp: bool) -> Result<(f64, Option<f64>)> {
    let t = secs.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        &p.server_ip,
        "-p",
        "5201",
        "-t",
        &t,
        "--json",
        "--connect-timeout",
        "3000",
    ];
    if udp {
        args.extend(["-u", "-l", "64", "-b", "0"]);
    }
    let o = sh::capture(
        &mut in_netns(&p.client, &args),
        Some(Duration::from_secs(secs + 30)),
    )?;
    let what = if udp { "iperf3 UDP" } else { "iperf3 TCP" };
    let v = json_of(&o.stdout, what).map_err(|e| anyhow!("{e:#} ({})", sh::tail(&o.stderr, 3)))?;
    let end = &v["end"];
    if udp {
        let s = if end["sum_received"].is_object() {
            &end["sum_received"]
        } else {
            &end["sum"]
        };
        let secs = s["seconds"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .ok_or_else(|| anyhow!("{what}: no seconds"))?;
        let pkts = match (s["packets"].as_f64(), s["lost_packets"].as_f64()) {
            (Some(n), Some(l)) => n - l,
            _ => {
                s["bytes"]
                    .as_f64()
                    .ok_or_else(|| anyhow!("{what}: no packets"))?
                    / 64.0
            }
        };
        Ok((pkts / secs / 1e3, None))
    } else {
        let gbps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9)
            .ok_or_else(|| anyhow!("{what}: no end.sum_received.bits_per_second"))?;
        Ok((gbps, end["sum_sent"]["retransmits"].as_f64()))
    }
}

fn sockperf_percentile(out: &str, p: &str) -> Option<f64> {
    out.lines()
        .find(|l| l.contains(&format!("percentile {p} ")))
        .and_then(|l| l.rsplit('=').next())
        .and_then(|v| {
            v.trim()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

/// Where the request/response ends run: both on one CPU, or one each.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cores {
    Same(usize),
    Cross(usize, usize),
}

impl Cores {
    /// (server CPU, client CPU).
    fn cpus(self) -> (usize, usize) {
        match self {
            Cores::Same(c) => (c, c),
            Cores::Cross(s, c) => (s, c),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Cores::Same(_) => "same core",
            Cores::Cross(..) => "cross core",
        }
    }
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity for ourselves.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Where request/response runs: both ends on the first usable CPU, and
/// (with two or more) on the first two.
pub(crate) fn cores() -> Vec<Cores> {
    let cpus = allowed_cpus();
    let mut cores = vec![Cores::Same(cpus.first().copied().unwrap_or(0))];
    if let Some(&[s, c]) = cpus.get(..2) {
        cores.push(Cores::Cross(s, c));
    }
    cores
}

/// `ip netns exec NS taskset -c CPU ARGS...`
fn pinned(ns: &str, cpu: usize, args: &[&str]) -> std::process::Command {
    let cpu = cpu.to_string();
    let mut a = vec!["taskset", "-c", &cpu];
    a.extend_from_slice(args);
    in_netns(ns, &a)
}

fn latency(p: &Pair, secs: u64, tool: LatencyTool, cores: Cores) -> Result<(f64, f64)> {
    let t = secs.to_string();
    let (scpu, ccpu) = cores.cpus();
    if tool == LatencyTool::Sockperf {
        let _srv = bg(&mut pinned(
            &p.server,
            scpu,
            &[
                "sockperf",
                "server",
                "--tcp",
                "-i",
                &p.server_ip,
                "-p",
                "11111",
            ],
        ))?;
        lab::wait_listening(&p.server, 11111, Duration::from_secs(5))?;
        let o = sh::capture(
            &mut pinned(
                &p.client,
                ccpu,
                &[
                    "sockperf",
                    "ping-pong",
                    "--tcp",
                    "--full-rtt",
                    "-i",
                    &p.server_ip,
                    "-p",
                    "11111",
                    "-t",
                    &t,
                ],
            ),
            Some(Duration::from_secs(secs + 30)),
        )?;
        let all = format!("{}\n{}", o.stdout, o.stderr);
        match (
            sockperf_percentile(&all, "50.000"),
            sockperf_percentile(&all, "99.000"),
        ) {
            (Some(a), Some(b)) if o.ok() => Ok((a, b)),
            _ => bail!(
                "sockperf ping-pong gave no percentiles ({}): {}",
                o.status,
                sh::tail(&all, 3)
            ),
        }
    } else {
        let exe = std::env::current_exe()?;
        let exe = exe
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 xtask path"))?;
        let listen = format!("{}:11112", p.server_ip);
        let _srv = bg(&mut pinned(
            &p.server,
            scpu,
            &[exe, "pingpong-server", "--listen", &listen],
        ))?;
        lab::wait_listening(&p.server, 11112, Duration::from_secs(5))?;
        let out = sh::output(
            &mut pinned(
                &p.client,
                ccpu,
                &[
                    exe,
                    "pingpong-client",
                    "--connect",
                    &listen,
                    "--seconds",
                    &t,
                ],
            ),
            Some(Duration::from_secs(secs + 30)),
        )?;
        let v = json_of(&out, "ping-pong")?;
        match (v["p50_us"].as_f64(), v["p99_us"].as_f64()) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => bail!("ping-pong printed no percentiles: {out}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct Samples {
    pub tcp: Vec<f64>,
    pub retransmits: Vec<f64>,
    pub udp: Vec<f64>,
    pub same_p50: Vec<f64>,
    pub same_p99: Vec<f64>,
    pub cross_p50: Vec<f64>,
    pub cross_p99: Vec<f64>,
    pub errors: Vec<String>,
}

/// One rep of `p`: TCP and UDP through iperf3, then request/response on
/// each of `cores`; a failed measurement is recorded in `s.errors`.
pub(crate) fn measure(
    p: &Pair,
    secs: u64,
    tool: LatencyTool,
    cores: &[Cores],
    s: &mut Samples,
    rep: u32,
) -> Result<String> {
    let mut line = Vec::new();
    let err = |s: &mut Samples, what: &str, e: anyhow::Error| -> Result<()> {
        sh::check_interrupted()?;
        let m = format!("rep {rep}: {what}: {e:#}");
        eprintln!("    error: {m}");
        s.errors.push(m);
        Ok(())
    };
    {
        let srv = bg(&mut in_netns(
            &p.server,
            &["iperf3", "-s", "-B", &p.server_ip, "-p", "5201"],
        ))?;
        match lab::wait_listening(&p.server, 5201, Duration::from_secs(5)) {
            Err(e) => err(s, "iperf3 server", e)?,
            Ok(()) => {
                match iperf(p, secs, false) {
                    Ok((v, retr)) => {
                        line.push(format!("tcp {v:.2} Gbit/s"));
                        s.tcp.push(v);
                        if let Some(r) = retr {
                            line.push(format!("{r:.0} retransmits"));
                            s.retransmits.push(r);
                        }
                    }
                    Err(e) => err(s, "tcp", e)?,
                }
                match iperf(p, secs, true) {
                    Ok((v, _)) => {
                        line.push(format!("udp64 {v:.1} kpps"));
                        s.udp.push(v);
                    }
                    Err(e) => err(s, "udp", e)?,
                }
            }
        }
        drop(srv);
    }
    for &c in cores {
        match latency(p, secs, tool, c) {
            Ok((a, b)) => {
                line.push(format!("rr {} p50 {a:.1} us p99 {b:.1} us", c.label()));
                let (p50, p99) = match c {
                    Cores::Same(_) => (&mut s.same_p50, &mut s.same_p99),
                    Cores::Cross(..) => (&mut s.cross_p50, &mut s.cross_p99),
                };
                p50.push(a);
                p99.push(b);
            }
            Err(e) => err(s, &format!("latency ({})", c.label()), e)?,
        }
    }
    Ok(line.join(", "))
}

/// A setup's figure over reps, with its ratios to the floor and bridge.
#[derive(Serialize, Clone)]
struct Stat {
    #[serde(flatten)]
    s: Spread,
    vs_floor: Option<f64>,
    vs_bridge: Option<f64>,
}

fn stat(v: &[f64]) -> Option<Stat> {
    spread(v).map(|s| Stat {
        s,
        vs_floor: None,
        vs_bridge: None,
    })
}

#[derive(Serialize)]
struct SetupReport {
    setup: Kind,
    title: &'static str,
    description: &'static str,
    /// Why the setup could not be built, if it could not.
    failed: Option<String>,
    tcp_gbps: Option<Stat>,
    /// iperf3's `end.sum_sent.retransmits` of the TCP stream, per rep.
    tcp_retransmits: Option<Spread>,
    udp64_kpps: Option<Stat>,
    /// Request/response with server and client pinned to one CPU.
    rr_same_core_p50_us: Option<Stat>,
    rr_same_core_p99_us: Option<Stat>,
    /// ... and pinned to two different CPUs.
    rr_cross_core_p50_us: Option<Stat>,
    rr_cross_core_p99_us: Option<Stat>,
    errors: Vec<String>,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    nproc: usize,
    cpu: String,
    iperf3: String,
    sockperf: String,
    /// /proc/loadavg when the measurements started (other work skews results).
    loadavg: String,
}

#[derive(Serialize)]
struct Report {
    command: String,
    date: String,
    machine: Machine,
    reps: u32,
    seconds: u64,
    latency_tool: LatencyTool,
    setups: Vec<SetupReport>,
    notes: Vec<String>,
    /// xtask's `bench-prog` (JSON), or {"skipped": reason}.
    bpf_prog: Value,
    /// The DNS lookups (`--setups dns`), if they were asked for.
    dns: Option<dnsbench::Report>,
    /// The published-ports comparison (`--setups nat`), if asked for.
    nat: Option<natbench::Report>,
    /// The control-plane costs (`--setups control`), if asked for.
    control: Option<ctlbench::Report>,
    /// The two-host overlay comparison (`--setups overlay`), if asked for.
    overlay: Option<overlaybench::Report>,
    /// Endpoint propagation across N hosts (`--setups cluster`), if asked for.
    cluster: Option<clusterbench::Report>,
    /// The routing mesh against kube-proxy (`--setups services`), if asked for.
    services: Option<servicebench::Report>,
    /// Docker's bridge driver against `-d dataplane` (`--setups docker`).
    docker: Option<dockerbench::Report>,
    /// macvlan and VLAN networks on a LAN (`--setups lan`).
    lan: Option<lanbench::Report>,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        kernel: first_line(&mut sh::cmd("uname", ["-srvm"])),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        cpu,
        iperf3: first_line(&mut sh::cmd("iperf3", ["--version"])),
        sockperf: first_line(&mut sh::cmd("sockperf", ["--version"])).replace("sockperf, ", ""),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Builds xtask's `bench-prog` (release, `--features prog`: it links the
/// daemon's library) and runs it; its JSON, or {"skipped": reason}.
pub(crate) fn bpf_prog() -> Value {
    let skipped = |why: String| serde_json::json!({ "skipped": why });
    let built = sh::run(
        crate::cargo().args([
            "build",
            "--release",
            "-p",
            "xtask",
            "--features",
            "prog",
            "--bin",
            "bench-prog",
        ]),
        Some(Duration::from_secs(60 * 60)),
    )
    .and_then(|()| Ok(crate::target_dir()?.join("release").join("bench-prog")));
    let exe = match built {
        Ok(exe) => exe,
        Err(e) => return skipped(format!("building bench-prog: {e:#}")),
    };
    let o = sh::capture(&mut sh::cmd(&exe, [""; 0]), Some(Duration::from_secs(600)));
    match o {
        Err(e) => skipped(format!("{e:#}")),
        Ok(o) if !o.ok() => skipped(format!(
            "`bench-prog` failed ({}): {}",
            o.status,
            sh::tail(&format!("{}{}", o.stderr, o.stdout), 3)
        )),
        Ok(o) => match serde_json::from_str::<Value>(&o.stdout) {
            Ok(v) if v["from_container_median_ns"].is_number() => v,
            _ => skipped(format!(
                "unexpected `bench-prog` output: {}",
                sh::tail(&o.stdout, 3)
            )),
        },
    }
}

pub fn bench(args: Args) -> Result<i32> {
    // The network setups measured; the DNS lookups need (d) built anyway.
    let mut kinds = Vec::new();
    for k in [Kind::Floor, Kind::Bridge, Kind::Netfilter, Kind::Ebpf] {
        if args.setups.contains(&k) {
            kinds.push(k);
        }
    }
    let want_dns = args.setups.contains(&Kind::Dns);
    let want_nat = args.setups.contains(&Kind::Nat);
    let want_control = args.setups.contains(&Kind::Control);
    let want_overlay = args.setups.contains(&Kind::Overlay);
    let want_cluster = args.setups.contains(&Kind::Cluster);
    let want_services = args.setups.contains(&Kind::Services);
    let want_docker = args.setups.contains(&Kind::Docker);
    let want_lan = args.setups.contains(&Kind::Lan);
    // Explicit --services / --reps win over --quick.
    let services_given =
        std::env::args().any(|a| a == "--services" || a.starts_with("--services="));
    let reps_given = std::env::args().any(|a| a == "--reps" || a.starts_with("--reps="));
    let mut service_counts = if args.quick && !services_given {
        vec![1, 100]
    } else {
        args.services.clone()
    };
    service_counts.sort_unstable();
    service_counts.dedup();
    let service_reps = if args.quick && !reps_given {
        1
    } else {
        args.reps
    };
    let service_seconds = if args.quick { 1 } else { args.services_seconds };
    let mut cluster_hosts = args.cluster_hosts.clone();
    cluster_hosts.sort_unstable();
    cluster_hosts.dedup();
    let mut sandboxes = args.sandboxes.clone();
    sandboxes.sort_unstable();
    sandboxes.dedup();
    let mut nat_ports = args.nat_ports.clone();
    nat_ports.sort_unstable();
    nat_ports.dedup();
    let mut build = kinds.clone();
    if want_dns && !build.contains(&Kind::Ebpf) {
        build.push(Kind::Ebpf);
    }
    let mut p = Progress::new(
        8 + usize::from(want_dns || want_nat)
            + usize::from(!kinds.is_empty())
            + 2 * usize::from(want_nat)
            + if want_control { sandboxes.len() } else { 0 }
            + 2 * usize::from(want_overlay)
            + if want_cluster { cluster_hosts.len() } else { 0 }
            + if want_services {
                1 + service_counts.len()
            } else {
                0
            }
            + 2 * usize::from(want_docker)
            + 2 * usize::from(want_lan),
    );
    setup::setup(&mut p)?;
    let bin = match &args.dataplane_bin {
        Some(b) => {
            p.step(&format!("using {} (not building)", b.display()));
            std::path::absolute(b)?
        }
        None => {
            p.step("building dataplane-user (release) and its eBPF object");
            build_dataplane(true)?
        }
    };
    // The DNS and connection-rate clients loop in optimized code, so that
    // their own cost per lookup or connection is not a debug build's.
    let release_xtask = if want_dns || want_nat || want_services || want_docker {
        p.step("building the DNS and connection-rate clients (xtask, release)");
        Some(dnsbench::build_client()?)
    } else {
        None
    };
    let dns_client = release_xtask.clone().filter(|_| want_dns);

    let tool = match args.latency {
        LatencyTool::Auto if sh::succeeds(&mut sh::cmd("sockperf", ["--version"])) => {
            LatencyTool::Sockperf
        }
        LatencyTool::Auto => LatencyTool::Rust,
        t => t,
    };
    let tag = format!("dpb{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    let mut cl = Cleanup::default();
    cl.dir(&dir)?;
    let mut daemon: Option<Daemon> = None; // dropped before `cl`

    if !build.is_empty() {
        p.step(&format!(
            "building the setups: {}",
            build
                .iter()
                .map(|k| k.title())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut notes = Vec::new();
    let mut pairs = Vec::new();
    let mut failed: Vec<(Kind, String)> = Vec::new();
    let mut dns_target: Option<dnsbench::Target> = None;
    let mut dns_failed: Option<String> = None;
    for &k in &build {
        let r = match k {
            Kind::Floor => build_floor(&mut cl, &tag),
            Kind::Bridge => build_bridge(&mut cl, &tag, false, &dir, &mut notes),
            Kind::Netfilter => build_bridge(&mut cl, &tag, true, &dir, &mut notes),
            Kind::Ebpf => build_ebpf(&mut cl, &tag, &bin, &dir).map(|(d, pair, t)| {
                daemon = Some(d);
                dns_target = want_dns.then_some(t);
                pair
            }),
            Kind::Dns
            | Kind::Nat
            | Kind::Control
            | Kind::Overlay
            | Kind::Cluster
            | Kind::Services
            | Kind::Docker
            | Kind::Lan => Err(anyhow!("{k:?} is not a network setup")),
        }
        .and_then(|pair| {
            lab::wait_reachable(&pair.client, &pair.server_ip, Duration::from_secs(10))?;
            Ok(pair)
        });
        sh::check_interrupted()?;
        match r {
            Ok(pair) => {
                eprintln!(
                    "    {}: {} -> {} ({})",
                    k.title(),
                    pair.client,
                    pair.server,
                    pair.server_ip
                );
                if kinds.contains(&k) {
                    pairs.push(pair);
                }
            }
            Err(e) => {
                eprintln!("    error: {} could not be set up: {e:#}", k.title());
                if k == Kind::Ebpf && want_dns {
                    dns_target = None;
                    dns_failed = Some(format!("{e:#}"));
                }
                if kinds.contains(&k) {
                    failed.push((k, format!("{e:#}")));
                }
            }
        }
    }

    let mach = machine();
    let mut what = Vec::new();
    if !kinds.is_empty() {
        what.push(format!(
            "{} setups, {} s per run (TCP, UDP 64 B, request/response via {})",
            pairs.len(),
            args.seconds,
            if tool == LatencyTool::Sockperf {
                "sockperf"
            } else {
                "the built-in ping-pong"
            }
        ));
    }
    if want_dns {
        what.push(format!(
            "DNS lookups in (d)'s first sandbox, {} s per kind (embedded raw, embedded via getaddrinfo, hosts file)",
            args.seconds
        ));
    }
    if !what.is_empty() {
        p.step(&format!(
            "measuring: {} reps x {}",
            args.reps,
            what.join("; ")
        ));
    }
    // Request/response twice: both ends pinned to one CPU, then to two.
    let cores = cores();
    if cores.len() < 2 && !kinds.is_empty() {
        notes.push("only one CPU is usable here: no cross-core request/response figures".into())
    }
    let mut samples: Vec<Samples> = pairs.iter().map(|_| Samples::default()).collect();
    let mut dns_samples = dnsbench::Samples::default();
    for rep in 1..=args.reps {
        for (pair, s) in pairs.iter().zip(samples.iter_mut()) {
            let line = measure(pair, args.seconds, tool, &cores, s, rep)?;
            eprintln!("    rep {rep}/{}: {}: {line}", args.reps, pair.kind.title());
        }
        if let (Some(t), Some(exe)) = (&dns_target, &dns_client) {
            let line = dnsbench::measure(t, exe, args.seconds, &mut dns_samples, rep)?;
            eprintln!("    rep {rep}/{}: DNS: {line}", args.reps);
        }
    }

    // The published ports have namespaces and daemons of their own; (d)'s
    // daemon is done by now and stops first (fewer hooks, less noise).
    let nat = match (&release_xtask, want_nat) {
        (Some(x), true) => {
            drop(daemon.take());
            let cfg = natbench::Config {
                ports: nat_ports.clone(),
                reps: args.reps,
                seconds: args.nat_seconds,
                xtask: x.clone(),
                dataplane: bin.clone(),
                tag: tag.clone(),
                dir: dir.clone(),
            };
            Some(natbench::run(&cfg, &mut p)?)
        }
        _ => None,
    };

    // The control plane, last: a daemon of its own, nothing else running.
    let control = if want_control {
        drop(daemon.take());
        let cfg = ctlbench::Config {
            counts: sandboxes.clone(),
            reps: args.reps,
            clients: args.control_clients,
            dataplane: bin.clone(),
            tag: tag.clone(),
            dir: dir.clone(),
        };
        Some(ctlbench::run(&cfg, &mut p)?)
    } else {
        None
    };

    // The per-packet program cost belongs to the network figures (and
    // its encap/decap figures to the overlay's).
    let prog = if kinds.is_empty() && !want_overlay && !want_services {
        serde_json::json!({ "skipped": "no network setup was measured (--setups)" })
    } else {
        p.step("BPF_PROG_TEST_RUN: bench-prog (xtask --features prog)");
        let prog = bpf_prog();
        if let Some(why) = prog["skipped"].as_str() {
            eprintln!("    skipped: {why}");
        }
        prog
    };

    // Cross-host: namespaces, etcd and daemons of their own, after the
    // single-host parts are torn down.
    let overlay = if want_overlay {
        drop(daemon.take());
        let cfg = overlaybench::Config {
            reps: args.reps,
            seconds: args.seconds,
            tool,
            cores: cores.clone(),
            dataplane: bin.clone(),
            tag: tag.clone(),
            dir: dir.join("overlay"),
            bpf_prog: prog.clone(),
        };
        Some(overlaybench::run(&cfg, &mut p)?)
    } else {
        None
    };
    let lan = if want_lan {
        drop(daemon.take());
        let cfg = lanbench::Config {
            reps: args.reps,
            seconds: args.seconds,
            tool,
            cores: cores.clone(),
            dataplane: bin.clone(),
            tag: tag.clone(),
            dir: dir.join("lan"),
        };
        Some(lanbench::run(&cfg, &mut p)?)
    } else {
        None
    };
    let cluster = if want_cluster {
        drop(daemon.take());
        let cfg = clusterbench::Config {
            hosts: cluster_hosts.clone(),
            runs: args.cluster_runs,
            dataplane: bin.clone(),
            tag: tag.clone(),
            dir: dir.join("cluster"),
        };
        Some(clusterbench::run(&cfg, &mut p)?)
    } else {
        None
    };

    let services = match (&release_xtask, want_services) {
        (Some(x), true) => {
            drop(daemon.take());
            let cfg = servicebench::Config {
                counts: service_counts.clone(),
                reps: service_reps,
                seconds: service_seconds,
                replicas: args.service_replicas,
                filler_replicas: args.filler_replicas,
                xtask: x.clone(),
                dataplane: bin.clone(),
                tag: tag.clone(),
                dir: dir.join("services"),
                bpf_prog: prog.clone(),
            };
            std::fs::create_dir_all(&cfg.dir)?;
            Some(servicebench::run(&cfg, &mut p)?)
        }
        _ => None,
    };

    let docker = match (&release_xtask, want_docker) {
        (Some(x), true) => {
            drop(daemon.take());
            let cfg = dockerbench::Config {
                reps: args.reps,
                seconds: args.seconds,
                runs: args.docker_runs,
                tool,
                cores: cores.clone(),
                xtask: x.clone(),
                dataplane: bin.clone(),
                tag: tag.clone(),
                dir: dir.join("docker"),
            };
            std::fs::create_dir_all(&cfg.dir)?;
            Some(dockerbench::run(&cfg, &mut p)?)
        }
        _ => None,
    };

    p.step("report");
    let mut setups: Vec<SetupReport> = Vec::new();
    for &k in &kinds {
        let mut r = SetupReport {
            setup: k,
            title: k.title(),
            description: k.description(),
            failed: failed.iter().find(|(f, _)| *f == k).map(|(_, e)| e.clone()),
            tcp_gbps: None,
            tcp_retransmits: None,
            udp64_kpps: None,
            rr_same_core_p50_us: None,
            rr_same_core_p99_us: None,
            rr_cross_core_p50_us: None,
            rr_cross_core_p99_us: None,
            errors: Vec::new(),
        };
        if let Some(i) = pairs.iter().position(|p| p.kind == k) {
            let s = &mut samples[i];
            r.tcp_gbps = stat(&s.tcp);
            r.udp64_kpps = stat(&s.udp);
            r.tcp_retransmits = spread(&s.retransmits);
            r.rr_same_core_p50_us = stat(&s.same_p50);
            r.rr_same_core_p99_us = stat(&s.same_p99);
            r.rr_cross_core_p50_us = stat(&s.cross_p50);
            r.rr_cross_core_p99_us = stat(&s.cross_p99);
            r.errors = std::mem::take(&mut s.errors);
        }
        setups.push(r);
    }
    add_ratios(&mut setups);
    let mut command = String::from("cargo xtask bench");
    if args.reps != 5 {
        command += &format!(" --reps {}", args.reps);
    }
    if args.seconds != 5 {
        command += &format!(" --seconds {}", args.seconds);
    }
    if ALL.iter().any(|k| !args.setups.contains(k)) {
        let names: Vec<&str> = ALL
            .iter()
            .filter(|k| args.setups.contains(k))
            .map(|k| match k {
                Kind::Floor => "floor",
                Kind::Bridge => "bridge",
                Kind::Netfilter => "netfilter",
                Kind::Ebpf => "ebpf",
                Kind::Dns => "dns",
                Kind::Nat => "nat",
                Kind::Control => "control",
                Kind::Overlay => "overlay",
                Kind::Cluster => "cluster",
                Kind::Services => "services",
                Kind::Docker => "docker",
                Kind::Lan => "lan",
            })
            .collect();
        command += &format!(" --setups {}", names.join(","));
    }
    if args.latency != LatencyTool::Auto {
        command += &format!(
            " --latency {}",
            if tool == LatencyTool::Rust {
                "rust"
            } else {
                "sockperf"
            }
        );
    }
    if want_nat && nat_ports != natbench::DEFAULT_PORTS {
        command += &format!(
            " --nat-ports {}",
            nat_ports
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if want_nat && args.nat_seconds != 3 {
        command += &format!(" --nat-seconds {}", args.nat_seconds);
    }
    if want_control && sandboxes != ctlbench::DEFAULT_SANDBOXES {
        command += &format!(
            " --sandboxes {}",
            sandboxes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if want_control && args.control_clients != ctlbench::DEFAULT_CLIENTS {
        command += &format!(" --control-clients {}", args.control_clients);
    }
    if want_cluster && cluster_hosts != clusterbench::DEFAULT_HOSTS {
        command += &format!(
            " --cluster-hosts {}",
            cluster_hosts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if want_cluster && args.cluster_runs != clusterbench::DEFAULT_RUNS {
        command += &format!(" --cluster-runs {}", args.cluster_runs);
    }
    if want_docker && args.docker_runs != 10 {
        command += &format!(" --docker-runs {}", args.docker_runs);
    }
    if want_services && args.quick {
        command += " --quick";
    }
    if want_services && services_given && service_counts != servicebench::DEFAULT_COUNTS {
        command += &format!(
            " --services {}",
            service_counts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    if want_services && !args.quick && args.services_seconds != 3 {
        command += &format!(" --services-seconds {}", args.services_seconds);
    }
    if want_services && args.service_replicas != 3 {
        command += &format!(" --service-replicas {}", args.service_replicas);
    }
    if want_services && args.filler_replicas != 1 {
        command += &format!(" --filler-replicas {}", args.filler_replicas);
    }
    let date = first_line(&mut sh::cmd("date", ["-u", "+%Y-%m-%d %H:%M UTC"]));
    let dns = want_dns.then(|| {
        let meta = dnsbench::Meta {
            command: command.clone(),
            date: date.clone(),
            reps: args.reps,
            seconds: args.seconds,
            kernel: mach.kernel.clone(),
            loadavg: mach.loadavg.clone(),
        };
        dnsbench::report(meta, dns_target.as_ref(), dns_failed, dns_samples)
    });
    let nat = nat.map(|mut n| {
        n.command = command.clone();
        n.date = date.clone();
        n
    });
    let control = control.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let overlay = overlay.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let lan = lan.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let cluster = cluster.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let services = services.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let docker = docker.map(|mut c| {
        c.command = command.clone();
        c.date = date.clone();
        c
    });
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root().join("BENCHMARKS.md"));
    let svg_file = natbench::svg_path(&out);
    let svg_name = svg_file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned());
    let nat = match nat {
        Some(mut n) if !args.no_write => {
            match natbench::svg(&n, &svg_file) {
                Ok(true) => {
                    eprintln!("    wrote {}", svg_file.display());
                    n.svg = svg_name.clone();
                }
                Ok(false) => eprintln!("    no connections/s measured: no curve drawn"),
                Err(e) => {
                    eprintln!("    error: {e:#}");
                    n.notes.push(format!("the curve could not be drawn: {e:#}"));
                }
            }
            Some(n)
        }
        n => n,
    };
    let services_svg = servicebench::svg_path(&out);
    let services = match services {
        Some(mut s) if !args.no_write => {
            match servicebench::svg(&s, &services_svg) {
                Ok(true) => {
                    eprintln!("    wrote {}", services_svg.display());
                    s.svg = services_svg
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned());
                }
                Ok(false) => eprintln!("    no service connections/s measured: no curve drawn"),
                Err(e) => {
                    eprintln!("    error: {e:#}");
                    s.notes.push(format!("the curve could not be drawn: {e:#}"));
                }
            }
            Some(s)
        }
        s => s,
    };
    let report = Report {
        command,
        date,
        machine: mach,
        reps: args.reps,
        seconds: args.seconds,
        latency_tool: tool,
        setups,
        notes,
        bpf_prog: prog,
        dns,
        nat,
        control,
        overlay,
        cluster,
        services,
        docker,
        lan,
    };
    // Only the measured parts of BENCHMARKS.md are rewritten: `--setups dns`
    // replaces the DNS section and keeps the network figures, and a run
    // without `dns` keeps the DNS section it finds.
    let main_md = (!kinds.is_empty()).then(|| markdown(&report));
    let dns_md = report.dns.as_ref().map(dnsbench::markdown);
    let nat_md = report
        .nat
        .as_ref()
        .map(|n| natbench::markdown(n, n.svg.as_deref()));
    let control_md = report.control.as_ref().map(ctlbench::markdown);
    let overlay_md = report.overlay.as_ref().map(overlaybench::markdown);
    let cluster_md = report.cluster.as_ref().map(clusterbench::markdown);
    let services_md = report
        .services
        .as_ref()
        .map(|s| servicebench::markdown(s, s.svg.as_deref()));
    let docker_md = report.docker.as_ref().map(dockerbench::markdown);
    let lan_md = report.lan.as_ref().map(lanbench::markdown);
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if !kinds.is_empty() {
            println!("{}", tables(&report));
        }
        if let Some(d) = &report.dns {
            println!("### DNS lookups from inside a sandbox of (d)\n");
            println!("{}", dnsbench::table(d));
        }
        if let Some(n) = &report.nat {
            println!("### Published ports: eBPF NAT against Docker's iptables\n");
            println!("{}", natbench::table(n));
        }
        if let Some(c) = &report.control {
            println!("### Control plane\n");
            println!("{}", ctlbench::table(c));
        }
        if let Some(o) = &report.overlay {
            println!("### Overlay: two hosts\n");
            println!("{}", overlaybench::table(o));
        }
        if let Some(c) = &report.cluster {
            println!("### Cluster: endpoint propagation\n");
            println!("{}", clusterbench::table(c));
        }
        if let Some(s) = &report.services {
            println!("### Services: eBPF routing mesh against kube-proxy's iptables\n");
            println!("{}", servicebench::table(s));
        }
        if let Some(d) = &report.docker {
            println!("### Docker: the bridge driver against -d dataplane\n");
            println!("{}", dockerbench::table(d));
        }
        if let Some(l) = &report.lan {
            println!("### LAN: macvlan and VLAN networks\n");
            println!("{}", lanbench::table(l));
        }
    }
    if !args.no_write {
        let existing = std::fs::read_to_string(&out).unwrap_or_default();
        // The published-ports and control-plane sections go last: taken
        // out, the rest spliced as before, then the new (or the old) ones
        // appended.
        let (existing, old_nat) = natbench::split(&existing);
        let (existing, old_control) = ctlbench::split(&existing);
        let (existing, old_overlay) = overlaybench::split(&existing);
        let (existing, old_cluster) = clusterbench::split(&existing);
        let (existing, old_services) = servicebench::split(&existing);
        let (existing, old_docker) = dockerbench::split(&existing);
        let (existing, old_lan) = lanbench::split(&existing);
        let md = dnsbench::splice(&existing, main_md.as_deref(), dns_md.as_deref());
        let md = natbench::append(&md, nat_md.as_deref().or(old_nat.as_deref()));
        let md = md::append_section(&md, control_md.as_deref().or(old_control.as_deref()));
        let md = md::append_section(&md, overlay_md.as_deref().or(old_overlay.as_deref()));
        let md = md::append_section(&md, cluster_md.as_deref().or(old_cluster.as_deref()));
        let md = md::append_section(&md, services_md.as_deref().or(old_services.as_deref()));
        let md = md::append_section(&md, docker_md.as_deref().or(old_docker.as_deref()));
        let md = md::append_section(&md, lan_md.as_deref().or(old_lan.as_deref()));
        std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("    wrote {}", out.display());
    }
    let bad = report
        .setups
        .iter()
        .any(|s| s.failed.is_some() || !s.errors.is_empty())
        || report.dns.as_ref().is_some_and(dnsbench::Report::bad)
        || report.nat.as_ref().is_some_and(natbench::Report::bad)
        || report.control.as_ref().is_some_and(ctlbench::Report::bad)
        || report
            .overlay
            .as_ref()
            .is_some_and(overlaybench::Report::bad)
        || report
            .cluster
            .as_ref()
            .is_some_and(clusterbench::Report::bad)
        || report
            .services
            .as_ref()
            .is_some_and(servicebench::Report::bad)
        || report.docker.as_ref().is_some_and(dockerbench::Report::bad)
        || report.lan.as_ref().is_some_and(lanbench::Report::bad);
    drop(daemon);
    drop(cl);
    if bad {
        eprintln!("error: some setups or measurements failed (see above)");
        return Ok(1);
    }
    Ok(0)
}

pub(crate) const METRICS: [(&str, &str, usize); 6] = [
    ("TCP throughput, Gbit/s (iperf3, higher is better)", "Gbit/s", 2),
    (
        "UDP 64-byte packets received, kpps (iperf3 -u -l 64 -b 0, receiver side, higher is better)",
        "kpps",
        1,
    ),
    (
        "TCP request/response round trip p50, client and server on the same core, µs (lower is better)",
        "µs",
        1,
    ),
    (
        "TCP request/response round trip p99, client and server on the same core, µs (lower is better)",
        "µs",
        1,
    ),
    (
        "TCP request/response round trip p50, client and server on different cores, µs (lower is better)",
        "µs",
        1,
    ),
    (
        "TCP request/response round trip p99, client and server on different cores, µs (lower is better)",
        "µs",
        1,
    ),
];

fn metric(r: &SetupReport, i: usize) -> Option<&Stat> {
    [
        &r.tcp_gbps,
        &r.udp64_kpps,
        &r.rr_same_core_p50_us,
        &r.rr_same_core_p99_us,
        &r.rr_cross_core_p50_us,
        &r.rr_cross_core_p99_us,
    ][i]
        .as_ref()
}

fn metric_mut(r: &mut SetupReport, i: usize) -> Option<&mut Stat> {
    match i {
        0 => r.tcp_gbps.as_mut(),
        1 => r.udp64_kpps.as_mut(),
        2 => r.rr_same_core_p50_us.as_mut(),
        3 => r.rr_same_core_p99_us.as_mut(),
        4 => r.rr_cross_core_p50_us.as_mut(),
        _ => r.rr_cross_core_p99_us.as_mut(),
    }
}

fn add_ratios(setups: &mut [SetupReport]) {
    for i in 0..METRICS.len() {
        let base = |k: Kind| {
            setups
                .iter()
                .find(|s| s.setup == k)
                .and_then(|s| metric(s, i))
                .map(|st| st.s.median)
                .filter(|m| *m > 0.0)
        };
        let (floor, bridge) = (base(Kind::Floor), base(Kind::Bridge));
        for s in setups.iter_mut() {
            if let Some(st) = metric_mut(s, i) {
                st.vs_floor = floor.map(|f| st.s.median / f);
                st.vs_bridge = bridge.map(|b| st.s.median / b);
            }
        }
    }
}

fn tables(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s; medians, spread is min–max over reps, ratios are this median / the median of (a) floor or (b) bridge.\n",
        r.reps, r.seconds
    );
    for (i, (title, unit, prec)) in METRICS.into_iter().enumerate() {
        // The TCP stream's table also shows its retransmits.
        let retr = i == 0;
        let _ = writeln!(o, "### {title}\n");
        let rows: Vec<FigureRow> = r
            .setups
            .iter()
            .map(|s| FigureRow {
                title: s.title,
                fig: metric(s, i).map(|st| (&st.s, st.vs_floor, st.vs_bridge)),
                why_none: if s.failed.is_some() {
                    "not set up (see Failures)"
                } else {
                    "no sample"
                },
                retransmits: s.tcp_retransmits.as_ref(),
            })
            .collect();
        figure_table(&mut o, unit, ["vs floor", "vs bridge"], retr, prec, &rows);
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "### Per-packet cost of the TC programs (BPF_PROG_TEST_RUN)\n"
    );
    let b = &r.bpf_prog;
    if let Some(why) = b["skipped"].as_str() {
        let _ = writeln!(
            o,
            "| program | ns/packet (median) |\n| --- | ---: |\n| from_container vs noop | skipped: {} |\n",
            why.replace('|', "/")
        );
    } else {
        let runs = format!(
            "{} rounds x {} repeats",
            b["rounds"].as_u64().unwrap_or(0),
            b["repeat"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "| program | ns/packet (median of {runs}) |\n| --- | ---: |"
        );
        let _ = writeln!(o, "| from_container | {} |", b["from_container_median_ns"]);
        let _ = writeln!(o, "| noop | {} |", b["noop_median_ns"]);
        let _ = writeln!(
            o,
            "| ratio | {:.2}x |\n",
            b["ratio"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let problems: Vec<String> = r
        .setups
        .iter()
        .flat_map(|s| {
            s.failed
                .iter()
                .map(move |e| format!("{} could not be set up: {e}", s.title))
                .chain(s.errors.iter().map(move |e| format!("{}: {e}", s.title)))
        })
        .collect();
    if !problems.is_empty() {
        let _ = writeln!(o, "### Failures\n");
        for p in problems {
            let _ = writeln!(o, "- {}", p.replace('\n', " "));
        }
        let _ = writeln!(o);
    }
    o
}

fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (rerun it to refresh this file; it needs root and builds, \
         measures and cleans up everything itself).\n",
        r.command, r.date
    );
    let _ = writeln!(o, "## Machine\n");
    let _ = writeln!(o, "- kernel: `{}`", m.kernel);
    let _ = writeln!(o, "- CPUs (nproc): {}; {}", m.nproc, m.cpu);
    let _ = writeln!(o, "- {}; sockperf {}", m.iperf3, m.sockperf);
    let _ = writeln!(o, "- load average when measuring started: {}\n", m.loadavg);
    let _ = writeln!(o, "## Setups\n");
    let _ = writeln!(
        o,
        "Every setup is built at once on identical veth pairs (default settings, MTU 1500) in namespaces \
         created for the run; the repetitions are interleaved (rep 1: a, b, c, d; rep 2: a, b, c, d; ...) so \
         that machine noise hits all setups alike. Traffic only flows between those namespaces (10.200.x.y).\n"
    );
    for s in &r.setups {
        let _ = writeln!(o, "- **{}**: {}", s.title, s.description);
    }
    let _ = writeln!(o, "\nPer setup and rep: `iperf3 -t {0}` TCP (received bits/s, and the sender's retransmits), \
        `iperf3 -u -l 64 -b 0 -t {0}` (packets the receiver got per second), and a TCP request/response round \
        trip ({1}, {0} s) twice: server and client pinned with `taskset -c` to the same CPU, then to two \
        different CPUs.\n",
        r.seconds,
        if r.latency_tool == LatencyTool::Sockperf {
            "`sockperf ping-pong --tcp --full-rtt`, default 14-byte messages"
        } else {
            "the built-in 1-byte ping-pong of `cargo xtask`"
        });
    for n in &r.notes {
        let _ = writeln!(o, "Note: {n}\n");
    }
    let _ = writeln!(o, "## Results\n");
    o.push_str(&tables(r));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_lines() {
        let out = "sockperf: ---> percentile 99.000 =   58.008\nsockperf: ---> percentile 50.000 =   29.915\n";
        assert_eq!(sockperf_percentile(out, "50.000"), Some(29.915));
        assert_eq!(sockperf_percentile(out, "99.000"), Some(58.008));
        assert_eq!(sockperf_percentile(out, "90.000"), None);
    }
}

//! The published-port part of `cargo xtask bench` (`--setups nat`): traffic
//! to a container's published port through the dataplane's eBPF NAT against
//! the iptables path Docker 28 builds (iptables-nft: a `DOCKER` nat chain
//! with one DNAT rule per published port, reached from PREROUTING and
//! OUTPUT, MASQUERADE, and the filter chains with one ACCEPT per port), with
//! 1, 1,000 and 10,000 ports published.
//!
//! Each (path, port count) is its own set of three namespaces, all built
//! before measuring so that the repetitions can be interleaved:
//!
//! ```text
//! client netns (eth0 198.51.100.2/24) -- veth -- host netns (up0 198.51.100.1/24) -- container netns
//! ```
//!
//! - iptables: the host netns has a Linux bridge `docker0` (172.17.0.1/16)
//!   with the container's veth (172.17.0.2/16, default route via
//!   172.17.0.1), ip_forward=1 and Docker's rules, loaded with
//!   `iptables-nft-restore`.
//! - eBPF: a `dataplane daemon` runs in the host netns (nsenter, private
//!   run/state dirs and bpffs pins) and the container is `dataplane run -d
//!   -p 20000-<last>:20000-<last> -- sleep infinity` on the default `bridge`
//!   network; the daemon attaches its NAT program to the uplink itself.
//!
//! Everything is measured from the client netns to 198.51.100.1 on the LAST
//! published port (the iptables path's worst case: its DNAT rule is the last
//! of the chain): new TCP connections per second (`xtask conn-client`, see
//! `connrate`), request/response latency (the built-in ping-pong) and TCP
//! throughput (iperf3). The servers run in the container netns, one at a
//! time, on that port.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    connrate::ClientResult,
    lab::{self, addr, in_netns, Cleanup, Daemon},
    md, plot,
    sh::{self, bg, first_line, json_of, Bg},
    stats::{ratio, ratio_cell, ratio_or, spread, Spread},
    Progress,
};

/// The heading that starts this part's section of BENCHMARKS.md.
pub const HEADING: &str = "## Published ports: eBPF NAT against Docker's iptables";
/// Section headings of earlier versions that `split` also recognises.
const HEADING_PREFIX: &str = "## Published ports";

pub const CLIENT_IP: &str = "198.51.100.2";
pub const HOST_IP: &str = "198.51.100.1";
pub const BASE_PORT: u16 = 20000;
pub const DEFAULT_PORTS: [u32; 3] = [1, 1_000, 10_000];
/// Most ports one run may publish (from BASE_PORT up to 65535).
pub const MAX_PORTS: u32 = 65_535 - BASE_PORT as u32 + 1;
/// How long a path may take to carry its first connection.
const READY_WITHIN: u64 = 15;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatPath {
    Iptables,
    Ebpf,
}

const PATHS: [NatPath; 2] = [NatPath::Iptables, NatPath::Ebpf];

impl NatPath {
    pub fn title(self) -> &'static str {
        match self {
            NatPath::Iptables => "Docker iptables (nft)",
            NatPath::Ebpf => "dataplane eBPF",
        }
    }
}

/// What to run (from `cargo xtask bench`'s arguments).
pub struct Config {
    pub ports: Vec<u32>,
    pub reps: u32,
    pub seconds: u64,
    /// The release xtask binary (conn-client/server, ping-pong).
    pub xtask: PathBuf,
    pub dataplane: PathBuf,
    /// Unique prefix for namespaces and pins (`dpb<pid>`).
    pub tag: String,
    /// A scratch directory removed by the caller.
    pub dir: PathBuf,
}

/// One (path, port count): its namespaces and, for eBPF, its daemon.
struct Instance {
    path: NatPath,
    ports: u32,
    client: String,
    host: String,
    container: String,
    /// The measured port: the last one published.
    port: u16,
    /// Seconds it took to install the ports (iptables-nft-restore of the
    /// whole ruleset, or `dataplane run -p`).
    install_s: f64,
    daemon: Option<Daemon>,
}

impl Instance {
    fn label(&self) -> String {
        format!("{}, {} port(s)", self.path.title(), self.ports)
    }
}

/// A background server, its process group killed on drop.
fn last_port(n: u32) -> u16 {
    (BASE_PORT as u32 + n - 1) as u16
}

// ------------------------------------------------------------ the rules

/// Docker 28's ruleset (iptables-save form) for one container 172.17.0.2 on
/// `docker0` publishing TCP ports `first..first+n` to the same ports, with
/// the default userland-proxy and gateway mode `nat`: nat DNAT rules are
/// appended in publishing order; the filter ACCEPT rules are inserted at the
/// head of `DOCKER`, so the last published comes first there; raw drops
/// direct access to the container's address from outside the bridge.
pub fn docker_rules(first: u16, n: u32) -> String {
    let ports = || (0..n).map(|i| first as u32 + i);
    let mut o = String::with_capacity(200 * n as usize + 2048);
    o.push_str(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP\nCOMMIT\n",
    );
    o.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n\
         -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n\
         -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
         -A DOCKER -i docker0 -j RETURN\n",
    );
    for p in ports() {
        let _ = writeln!(
            o,
            "-A DOCKER ! -i docker0 -p tcp -m tcp --dport {p} -j DNAT --to-destination 172.17.0.2:{p}"
        );
    }
    o.push_str("COMMIT\n");
    o.push_str(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :DOCKER - [0:0]\n:DOCKER-BRIDGE - [0:0]\n:DOCKER-CT - [0:0]\n:DOCKER-FORWARD - [0:0]\n\
         :DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n\
         -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n",
    );
    let rev: Vec<u32> = ports().collect();
    for p in rev.iter().rev() {
        let _ = writeln!(
            o,
            "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport {p} -j ACCEPT"
        );
    }
    o.push_str(
        "-A DOCKER ! -i docker0 -o docker0 -j DROP\n\
         -A DOCKER-BRIDGE -o docker0 -j DOCKER\n\
         -A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A DOCKER-FORWARD -j DOCKER-CT\n\
         -A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1\n\
         -A DOCKER-FORWARD -j DOCKER-BRIDGE\n\
         -A DOCKER-FORWARD -i docker0 -j ACCEPT\n\
         -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2\n\
         -A DOCKER-ISOLATION-STAGE-1 -j RETURN\n\
         -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP\n\
         -A DOCKER-ISOLATION-STAGE-2 -j RETURN\n\
         -A DOCKER-USER -j RETURN\nCOMMIT\n",
    );
    o
}

// ------------------------------------------------------------ building

/// The client's veth into the host netns: eth0 198.51.100.2 <-> up0
/// 198.51.100.1, the host's default route through the client (its uplink).
pub(crate) fn uplink(client: &str, host: &str) -> Result<()> {
    lab::ip(
        client,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "up0", "netns", host,
        ],
    )?;
    addr(client, "eth0", &format!("{CLIENT_IP}/24"))?;
    addr(host, "up0", &format!("{HOST_IP}/24"))?;
    lab::ip(host, &["route", "add", "default", "via", CLIENT_IP])?;
    // The client opens tens of thousands of connections per run.
    lab::sysctl(client, "net.ipv4.ip_local_port_range", "1024 65535")?;
    Ok(())
}

fn build_iptables(
    cl: &mut Cleanup,
    cfg: &Config,
    i: usize,
    n: u32,
    notes: &mut Vec<String>,
) -> Result<Instance> {
    let t = &cfg.tag;
    let (c, h, k) = (
        format!("{t}-ni{i}c"),
        format!("{t}-ni{i}h"),
        format!("{t}-ni{i}k"),
    );
    for ns in [&c, &h, &k] {
        cl.netns(ns)?;
    }
    uplink(&c, &h)?;
    lab::ip(&h, &["link", "add", "docker0", "type", "bridge"])?;
    addr(&h, "docker0", "172.17.0.1/16")?;
    lab::ip(
        &k,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "veth0", "netns", &h,
        ],
    )?;
    lab::ip(&h, &["link", "set", "veth0", "master", "docker0", "up"])?;
    addr(&k, "eth0", "172.17.0.2/16")?;
    lab::ip(&k, &["route", "add", "default", "via", "172.17.0.1"])?;
    lab::sysctl(&h, "net.ipv4.ip_forward", "1")?;
    if lab::sysctl(&h, "net.bridge.bridge-nf-call-iptables", "1").is_err() {
        let m = "iptables path: net.bridge.bridge-nf-call-iptables is unavailable here (no br_netfilter); \
                 it only matters for traffic bridged between containers, which this benchmark has none of";
        if !notes.iter().any(|x| x == m) {
            notes.push(m.into());
        }
    }
    let rules = cfg.dir.join(format!("docker-nat-{n}.rules"));
    std::fs::write(&rules, docker_rules(BASE_PORT, n))?;
    let t0 = Instant::now();
    sh::output(
        in_netns(&h, &["iptables-nft-restore"]).arg(&rules),
        Some(Duration::from_secs(300)),
    )
    .with_context(|| format!("loading Docker's rules for {n} port(s) with iptables-nft-restore"))?;
    let install_s = t0.elapsed().as_secs_f64();
    let saved = sh::output(
        &mut in_netns(&h, &["iptables-nft-save", "-t", "nat"]),
        Some(Duration::from_secs(120)),
    )?;
    let dnat = saved.lines().filter(|l| l.contains("-j DNAT")).count();
    if dnat != n as usize {
        bail!("iptables-nft-save shows {dnat} DNAT rules after loading {n}");
    }
    Ok(Instance {
        path: NatPath::Iptables,
        ports: n,
        client: c,
        host: h,
        container: k,
        port: last_port(n),
        install_s,
        daemon: None,
    })
}

fn build_ebpf(cl: &mut Cleanup, cfg: &Config, i: usize, n: u32) -> Result<Instance> {
    let t = &cfg.tag;
    let (c, h) = (format!("{t}-ne{i}c"), format!("{t}-ne{i}h"));
    cl.netns(&c)?;
    cl.netns(&h)?;
    // The uplink exists before the daemon starts, as on a real host.
    uplink(&c, &h)?;
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/{t}-n{i}"));
    cl.path(&bpffs);
    let ddir = cfg.dir.join(format!("nat-daemon-{n}"));
    let mut d = Daemon::start(&cfg.dataplane, &h, &ddir, &bpffs, Duration::from_secs(20))?;
    let last = last_port(n);
    let spec = if n == 1 {
        format!("{last}:{last}")
    } else {
        format!("{BASE_PORT}-{last}:{BASE_PORT}-{last}")
    };
    let t0 = Instant::now();
    let sb = d
        .run_with("srv", "bridge", &["-p", &spec], &["sleep", "infinity"])
        .with_context(|| format!("publishing {n} port(s) with `dataplane run -d -p {spec}`"))?;
    let install_s = t0.elapsed().as_secs_f64();
    Ok(Instance {
        path: NatPath::Ebpf,
        ports: n,
        client: c,
        host: h,
        container: sb.netns,
        port: last,
        install_s,
        daemon: Some(d),
    })
}

/// `connrate` client in the client netns; its parsed result.
fn conn_client(x: &str, inst: &Instance, seconds: u64, wait: u64) -> Result<ClientResult> {
    let to = format!("{HOST_IP}:{}", inst.port);
    conn_client_in(x, &inst.client, &to, seconds, wait)
}

/// `xtask conn-client --connect TO` in netns `ns` (after waiting up to
/// `wait` s for a first good connection); its parsed result.
pub(crate) fn conn_client_in(
    x: &str,
    ns: &str,
    to: &str,
    seconds: u64,
    wait: u64,
) -> Result<ClientResult> {
    let (s, w) = (seconds.to_string(), wait.to_string());
    let out = sh::output(
        &mut in_netns(
            ns,
            &[
                x,
                "conn-client",
                "--connect",
                to,
                "--seconds",
                &s,
                "--wait",
                &w,
            ],
        ),
        Some(Duration::from_secs(seconds + wait + 30)),
    )?;
    serde_json::from_str(out.trim()).with_context(|| format!("parsing conn-client output {out:?}"))
}

fn conn_server(x: &str, inst: &Instance) -> Result<Bg> {
    conn_server_in(x, &inst.container, inst.port)
}

/// `xtask conn-server` on 0.0.0.0:`port` in netns `ns`, once it listens.
pub(crate) fn conn_server_in(x: &str, ns: &str, port: u16) -> Result<Bg> {
    let listen = format!("0.0.0.0:{port}");
    let srv = bg(&mut in_netns(ns, &[x, "conn-server", "--listen", &listen]))?;
    lab::wait_listening(ns, port, Duration::from_secs(5))?;
    Ok(srv)
}

/// `dataplane stats`, summed over the programs.
#[derive(Default)]
pub(crate) struct Counters {
    /// None if this build has no such counter.
    pub translated: Option<u64>,
    pub drops: BTreeMap<String, u64>,
}

impl Counters {
    /// From `dataplane stats --format json` output (empty if it does not
    /// parse).
    pub fn parse(stats_json: &str) -> Self {
        let mut c = Counters::default();
        let Ok(v) = serde_json::from_str::<Value>(stats_json) else {
            return c;
        };
        let progs = v["programs"].as_array().or_else(|| v.as_array());
        for p in progs.into_iter().flatten() {
            if let Some(x) = p["translated"].as_u64() {
                *c.translated.get_or_insert(0) += x;
            }
            for (k, n) in p["drops"].as_object().into_iter().flatten() {
                *c.drops.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
        c
    }

    /// The drop counters that grew from `before` to `self`, by how much.
    pub fn grown_drops(&self, before: &Counters) -> Vec<(String, u64)> {
        self.drops
            .iter()
            .filter_map(|(k, v)| {
                let d = v.saturating_sub(before.drops.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect()
    }
}

pub(crate) fn counters(d: &Daemon) -> Counters {
    Counters::parse(&d.cli(&["stats", "--format", "json"]).unwrap_or_default())
}

/// What is attached to the eBPF host's uplink, for error messages.
fn uplink_programs(host: &str) -> String {
    match sh::capture(
        &mut in_netns(host, &["bpftool", "net", "show", "dev", "up0"]),
        Some(Duration::from_secs(10)),
    ) {
        Ok(o) => {
            let progs: Vec<&str> = o
                .stdout
                .lines()
                .filter(|l| l.contains("id ") || l.contains("prog"))
                .map(str::trim)
                .collect();
            if progs.is_empty() {
                "none (bpftool net show dev up0 lists no program)".into()
            } else {
                progs.join("; ")
            }
        }
        Err(e) => format!("unknown ({e:#})"),
    }
}

/// Waits (bounded) until a connection through the path gets our server's
/// byte; for the eBPF path, a failure says what is on the uplink.
fn probe(x: &str, inst: &Instance) -> Result<f64> {
    let _srv = conn_server(x, inst)?;
    match conn_client(x, inst, 0, READY_WITHIN) {
        Ok(r) => Ok(r.ready_after_s),
        Err(e) => {
            sh::check_interrupted()?;
            match &inst.daemon {
                None => Err(e),
                Some(d) => Err(anyhow!(
                    "published port {} on {HOST_IP} carries no connection from the client netns: {e:#}. \
                     Programs on the host netns's uplink up0: {}; `dataplane stats` translated={}; \
                     daemon log: {}",
                    inst.port,
                    uplink_programs(&inst.host),
                    counters(d).translated.map_or("n/a".into(), |v| v.to_string()),
                    sh::tail(&std::fs::read_to_string(&d.log).unwrap_or_default(), 4)
                )),
            }
        }
    }
}

// ------------------------------------------------------------ measuring

#[derive(Default)]
struct Samples {
    conn: Vec<f64>,
    conn_p50: Vec<f64>,
    conn_p99: Vec<f64>,
    rr_p50: Vec<f64>,
    rr_p99: Vec<f64>,
    gbps: Vec<f64>,
    conn_errors: u64,
    conn_first_error: Option<String>,
    errors: Vec<String>,
}

fn latency(x: &str, inst: &Instance, secs: u64) -> Result<(f64, f64)> {
    let listen = format!("0.0.0.0:{}", inst.port);
    let _srv = bg(&mut in_netns(
        &inst.container,
        &[x, "pingpong-server", "--listen", &listen],
    ))?;
    lab::wait_listening(&inst.container, inst.port, Duration::from_secs(5))?;
    let to = format!("{HOST_IP}:{}", inst.port);
    let t = secs.to_string();
    let out = sh::output(
        &mut in_netns(
            &inst.client,
            &[x, "pingpong-client", "--connect", &to, "--seconds", &t],
        ),
        Some(Duration::from_secs(secs + 30)),
    )?;
    let v = json_of(&out, "ping-pong")?;
    match (v["p50_us"].as_f64(), v["p99_us"].as_f64()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("ping-pong printed no percentiles: {out}"),
    }
}

fn throughput(inst: &Instance, secs: u64) -> Result<f64> {
    let p = inst.port.to_string();
    let _srv = bg(&mut in_netns(&inst.container, &["iperf3", "-s", "-p", &p]))?;
    lab::wait_listening(&inst.container, inst.port, Duration::from_secs(5))?;
    let t = secs.to_string();
    let o = sh::capture(
        &mut in_netns(
            &inst.client,
            &[
                "iperf3",
                "-c",
                HOST_IP,
                "-p",
                &p,
                "-t",
                &t,
                "--json",
                "--connect-timeout",
                "3000",
            ],
        ),
        Some(Duration::from_secs(secs + 30)),
    )?;
    let v =
        json_of(&o.stdout, "iperf3").map_err(|e| anyhow!("{e:#} ({})", sh::tail(&o.stderr, 3)))?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("iperf3: no end.sum_received.bits_per_second"))
}

/// One rep of one instance: connections/s, then latency, then throughput.
fn measure(x: &str, inst: &Instance, secs: u64, s: &mut Samples, rep: u32) -> Result<String> {
    let mut line = Vec::new();
    let err = |s: &mut Samples, what: &str, e: anyhow::Error| -> Result<()> {
        sh::check_interrupted()?;
        let mut m = format!("rep {rep}: {}: {what}: {e:#}", inst.label());
        for ns in [&inst.container, &inst.host, &inst.client] {
            if !lab::netns_exists(ns) {
                m += &format!(" (netns {ns} no longer exists: removed by someone else?)");
            }
        }
        eprintln!("    error: {m}");
        s.errors.push(m);
        Ok(())
    };
    match conn_server(x, inst).and_then(|srv| {
        let r = conn_client(x, inst, secs, 2);
        drop(srv);
        r
    }) {
        Ok(r) => {
            line.push(format!(
                "{:.0} conn/s (connect-to-byte p50 {:.1} µs p99 {:.1} µs{})",
                r.per_sec,
                r.p50_us.unwrap_or(f64::NAN),
                r.p99_us.unwrap_or(f64::NAN),
                if r.errors > 0 {
                    format!(", {} errors", r.errors)
                } else {
                    String::new()
                }
            ));
            s.conn.push(r.per_sec);
            if let Some(p) = r.p50_us {
                s.conn_p50.push(p);
            }
            if let Some(p) = r.p99_us {
                s.conn_p99.push(p);
            }
            s.conn_errors += r.errors;
            if s.conn_first_error.is_none() {
                s.conn_first_error = r.first_error.map(|e| format!("rep {rep}: {e}"));
            }
        }
        Err(e) => err(s, "connections/s", e)?,
    }
    match latency(x, inst, secs) {
        Ok((a, b)) => {
            line.push(format!("rr p50 {a:.1} µs p99 {b:.1} µs"));
            s.rr_p50.push(a);
            s.rr_p99.push(b);
        }
        Err(e) => err(s, "latency", e)?,
    }
    match throughput(inst, secs) {
        Ok(g) => {
            line.push(format!("{g:.2} Gbit/s"));
            s.gbps.push(g);
        }
        Err(e) => err(s, "throughput", e)?,
    }
    Ok(line.join(", "))
}

// ------------------------------------------------------------ report

#[derive(Serialize, Debug)]
pub struct Point {
    pub path: NatPath,
    pub title: &'static str,
    pub ports: u32,
    /// The measured (last published) port.
    pub port: u16,
    /// Why this (path, ports) could not be set up or carried no traffic.
    pub failed: Option<String>,
    /// Seconds to install the ports (iptables-nft-restore of the whole
    /// ruleset; `dataplane run -d -p`).
    pub install_s: Option<f64>,
    /// Seconds until the first connection got through, after setup.
    pub ready_s: Option<f64>,
    pub conn_per_s: Option<Spread>,
    /// connect() to the server's first byte, p50 and p99 over each rep's
    /// connections.
    pub connect_p50_us: Option<Spread>,
    pub connect_p99_us: Option<Spread>,
    pub rr_p50_us: Option<Spread>,
    pub rr_p99_us: Option<Spread>,
    pub tcp_gbps: Option<Spread>,
    /// Connection attempts that failed during the measured windows (each
    /// costs up to 1 s: connect and read time out after 1 s), and the first
    /// one's error.
    pub conn_errors: u64,
    pub conn_first_error: Option<String>,
    /// eBPF: the daemon's drop counters that grew during the measuring.
    pub ebpf_drops: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

/// Median ratios for one metric.
#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Ratios {
    pub conn_per_s: Option<f64>,
    pub rr_p50_us: Option<f64>,
    pub rr_p99_us: Option<f64>,
    pub tcp_gbps: Option<f64>,
}

/// eBPF median / iptables median at one port count.
#[derive(Serialize, Debug)]
pub struct VsIptables {
    pub ports: u32,
    pub ebpf_over_iptables: Ratios,
}

/// A path's median at the most ports / at the fewest ports.
#[derive(Serialize, Debug)]
pub struct Flatness {
    pub path: NatPath,
    pub from_ports: u32,
    pub to_ports: u32,
    pub ratio: Ratios,
}

/// Pass/fail of the requirement, per metric (None: not measured).
#[derive(Serialize, Debug)]
pub struct Check {
    pub what: String,
    pub ok: Option<bool>,
    pub detail: String,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub nproc: usize,
    pub loadavg: String,
    pub iptables: String,
    pub iperf3: String,
    pub reps: u32,
    pub seconds: u64,
    pub ports: Vec<u32>,
    pub points: Vec<Point>,
    pub vs_iptables: Vec<VsIptables>,
    pub flatness: Vec<Flatness>,
    pub checks: Vec<Check>,
    /// Growth of the eBPF daemons' `translated` counters over the whole run
    /// (per port count), when `dataplane stats` has that counter.
    pub ebpf_translated: Vec<(u32, u64)>,
    pub notes: Vec<String>,
    /// The SVG written next to the report, if any (file name).
    pub svg: Option<String>,
}

impl Report {
    /// A path that could not be set up, a measurement that failed, or
    /// connection attempts that timed out or were refused.
    pub fn bad(&self) -> bool {
        self.points
            .iter()
            .any(|p| p.failed.is_some() || !p.errors.is_empty() || p.conn_errors > 0)
    }

    fn point(&self, path: NatPath, ports: u32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.path == path && p.ports == ports)
    }
}

type Metric = fn(&Point) -> Option<&Spread>;

const METRICS: [(&str, &str, usize, bool, Metric); 4] = [
    (
        "New TCP connections per second (higher is better)",
        "conn/s",
        0,
        true,
        |p| p.conn_per_s.as_ref(),
    ),
    (
        "TCP request/response round trip p50, µs (lower is better)",
        "µs",
        1,
        false,
        |p| p.rr_p50_us.as_ref(),
    ),
    (
        "TCP request/response round trip p99, µs (lower is better)",
        "µs",
        1,
        false,
        |p| p.rr_p99_us.as_ref(),
    ),
    (
        "TCP throughput, Gbit/s (iperf3, higher is better)",
        "Gbit/s",
        2,
        true,
        |p| p.tcp_gbps.as_ref(),
    ),
];

fn ratios(a: Option<&Point>, b: Option<&Point>) -> Ratios {
    let r = |f: Metric| ratio(Some(f(a?)?.median), Some(f(b?)?.median));
    Ratios {
        conn_per_s: r(METRICS[0].4),
        rr_p50_us: r(METRICS[1].4),
        rr_p99_us: r(METRICS[2].4),
        tcp_gbps: r(METRICS[3].4),
    }
}

/// "Flat": the most ports' median within 10% of the fewest ports' (in the
/// worse direction; better is fine), or their min–max ranges overlapping
/// (a difference within the rep-to-rep noise).
pub const FLAT_TOLERANCE: f64 = 0.10;

fn analyse(r: &mut Report) {
    let (Some(&lo), Some(&hi)) = (r.ports.iter().min(), r.ports.iter().max()) else {
        return;
    };
    r.vs_iptables = r
        .ports
        .iter()
        .map(|&n| VsIptables {
            ports: n,
            ebpf_over_iptables: ratios(r.point(NatPath::Ebpf, n), r.point(NatPath::Iptables, n)),
        })
        .collect();
    if hi > lo {
        r.flatness = PATHS
            .iter()
            .map(|&p| Flatness {
                path: p,
                from_ports: lo,
                to_ports: hi,
                ratio: ratios(r.point(p, hi), r.point(p, lo)),
            })
            .collect();
    }
    let fmt = |x: Option<f64>| ratio_or(x, "not measured");
    let mut checks = Vec::new();
    if hi > lo {
        let f = r.flatness.iter().find(|f| f.path == NatPath::Ebpf);
        for (i, (title, _, _, higher, metric)) in METRICS.iter().enumerate() {
            // The two reps' ranges overlapping: the difference is within
            // this machine's rep-to-rep noise.
            let overlap = match (
                r.point(NatPath::Ebpf, lo).and_then(metric),
                r.point(NatPath::Ebpf, hi).and_then(metric),
            ) {
                (Some(a), Some(b)) => Some(a.min <= b.max && b.min <= a.max),
                _ => None,
            };
            let x = f.and_then(|f| {
                [
                    f.ratio.conn_per_s,
                    f.ratio.rr_p50_us,
                    f.ratio.rr_p99_us,
                    f.ratio.tcp_gbps,
                ][i]
            });
            // Failed connection attempts make the connection rate not flat
            // whatever its medians say.
            let failed: u64 = if i == 0 {
                [lo, hi]
                    .iter()
                    .filter_map(|&n| r.point(NatPath::Ebpf, n))
                    .map(|p| p.conn_errors)
                    .sum()
            } else {
                0
            };
            let ok = x.map(|x| {
                failed == 0
                    && (overlap == Some(true)
                        || if *higher {
                            x >= 1.0 - FLAT_TOLERANCE
                        } else {
                            x <= 1.0 + FLAT_TOLERANCE
                        })
            });
            checks.push(Check {
                what: format!(
                    "eBPF flat from {lo} to {hi} ports: {}",
                    title
                        .split(',')
                        .next()
                        .unwrap_or(title)
                        .split(" (")
                        .next()
                        .unwrap_or(title)
                ),
                ok,
                detail: format!(
                    "eBPF({hi})/eBPF({lo}) = {}{}{}; flat: within {:.0}% in the worse direction, \
                     or min–max ranges that overlap, and no failed connection attempt",
                    fmt(x),
                    match overlap {
                        Some(true) => ", min–max ranges overlap",
                        Some(false) => ", min–max ranges apart",
                        None => "",
                    },
                    if failed > 0 {
                        format!(", {failed} failed connection attempt(s) at {lo} and {hi} ports")
                    } else {
                        String::new()
                    },
                    FLAT_TOLERANCE * 100.0
                ),
            });
        }
    }
    let v = r.vs_iptables.iter().find(|v| v.ports == lo);
    for (i, (title, _, _, higher, metric)) in METRICS.iter().enumerate() {
        let overlap = match (
            r.point(NatPath::Ebpf, lo).and_then(metric),
            r.point(NatPath::Iptables, lo).and_then(metric),
        ) {
            (Some(a), Some(b)) => Some(a.min <= b.max && b.min <= a.max),
            _ => None,
        };
        let x = v.and_then(|v| {
            let q = v.ebpf_over_iptables;
            [q.conn_per_s, q.rr_p50_us, q.rr_p99_us, q.tcp_gbps][i]
        });
        checks.push(Check {
            what: format!(
                "eBPF not below iptables at {lo} port(s): {}",
                title
                    .split(',')
                    .next()
                    .unwrap_or(title)
                    .split(" (")
                    .next()
                    .unwrap_or(title)
            ),
            ok: x.map(|x| if *higher { x >= 1.0 } else { x <= 1.0 }),
            detail: format!(
                "eBPF/iptables = {}{}; medians compared strictly",
                fmt(x),
                match overlap {
                    Some(true) => ", min–max ranges overlap",
                    Some(false) => ", min–max ranges apart",
                    None => "",
                }
            ),
        });
    }
    r.checks = checks;
}

/// Builds every (path, ports) instance, measures them interleaved, and
/// tears them down; `command` and `date` are left for the caller.
pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    // Declared first, dropped last: the daemons (in `insts`) stop first.
    let mut cl = Cleanup::default();
    let x = cfg
        .xtask
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", cfg.xtask.display()))?
        .to_string();
    let mut notes = Vec::new();
    // The daemons (children) hold one reserved socket per published port.
    let nofile = sh::raise_nofile();
    let max_ports = cfg.ports.iter().copied().max().unwrap_or(0);
    if nofile.is_some_and(|n| n < max_ports as u64 + 256) {
        notes.push(format!(
            "the open-files limit ({}) is below {} published ports plus headroom; the eBPF daemon \
             holds a socket per port",
            nofile.unwrap_or(0),
            max_ports
        ));
    }
    p.step(&format!(
        "published ports: building {} setups (iptables and eBPF at {} port(s)); the large ones take a while",
        cfg.ports.len() * 2,
        cfg.ports
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut insts: Vec<Instance> = Vec::new();
    let mut points: Vec<Point> = Vec::new();
    for (i, &n) in cfg.ports.iter().enumerate() {
        for path in PATHS {
            sh::check_interrupted()?;
            eprintln!(
                "    {}, {n} port(s): building{}",
                path.title(),
                if path == NatPath::Iptables {
                    " (bridge, veths, iptables-nft-restore)"
                } else {
                    " (daemon, `dataplane run -p`)"
                }
            );
            let t0 = Instant::now();
            let built = match path {
                NatPath::Iptables => build_iptables(&mut cl, cfg, i, n, &mut notes),
                NatPath::Ebpf => build_ebpf(&mut cl, cfg, i, n),
            };
            let mut point = Point {
                path,
                title: path.title(),
                ports: n,
                port: last_port(n),
                failed: None,
                install_s: None,
                ready_s: None,
                conn_per_s: None,
                connect_p50_us: None,
                connect_p99_us: None,
                rr_p50_us: None,
                rr_p99_us: None,
                tcp_gbps: None,
                conn_errors: 0,
                conn_first_error: None,
                ebpf_drops: Vec::new(),
                errors: Vec::new(),
            };
            let r = built.and_then(|inst| {
                let ready = probe(&x, &inst)?;
                Ok((inst, ready))
            });
            sh::check_interrupted()?;
            match r {
                Ok((inst, ready)) => {
                    eprintln!(
                        "    {}: ready in {:.1} s (ports installed in {:.2} s, first connection after {:.2} s)",
                        inst.label(),
                        t0.elapsed().as_secs_f64(),
                        inst.install_s,
                        ready
                    );
                    point.install_s = Some(inst.install_s);
                    point.ready_s = Some(ready);
                    insts.push(inst);
                }
                Err(e) => {
                    let m = format!("{e:#}");
                    eprintln!(
                        "    error: {}, {n} port(s) could not be set up: {m}",
                        path.title()
                    );
                    point.failed = Some(m);
                }
            }
            points.push(point);
        }
    }
    let counters_before: Vec<Option<Counters>> = insts
        .iter()
        .map(|i| i.daemon.as_ref().map(counters))
        .collect();

    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let total = insts.len() as u32 * cfg.reps;
    p.step(&format!(
        "published ports: measuring {} rep(s) x {} setup(s), {} s each for connections/s, latency and \
         throughput (about {} s)",
        cfg.reps,
        insts.len(),
        cfg.seconds,
        total as u64 * (3 * cfg.seconds + 1)
    ));
    let mut samples: Vec<Samples> = insts.iter().map(|_| Samples::default()).collect();
    let mut done = 0;
    for rep in 1..=cfg.reps {
        // Ascending port counts; within each, the path order alternates
        // from rep to rep so that neither always goes first.
        let mut order: Vec<usize> = Vec::new();
        for &n in &cfg.ports {
            let mut here: Vec<usize> = (0..insts.len()).filter(|&j| insts[j].ports == n).collect();
            if rep % 2 == 0 {
                here.reverse();
            }
            order.extend(here);
        }
        for j in order {
            done += 1;
            let line = measure(&x, &insts[j], cfg.seconds, &mut samples[j], rep)?;
            eprintln!(
                "    [{done}/{total}] rep {rep}/{}: {}: {line}",
                cfg.reps,
                insts[j].label()
            );
        }
    }
    let mut ebpf_translated = Vec::new();
    for ((inst, s), before) in insts.iter().zip(samples).zip(counters_before) {
        let after = inst.daemon.as_ref().map(counters);
        let mut drops = Vec::new();
        if let (Some(b), Some(a)) = (before, after) {
            if let (Some(b), Some(a)) = (b.translated, a.translated) {
                ebpf_translated.push((inst.ports, a.saturating_sub(b)));
            }
            drops = a.grown_drops(&b);
        }
        if let Some(pt) = points
            .iter_mut()
            .find(|pt| pt.path == inst.path && pt.ports == inst.ports)
        {
            pt.ebpf_drops = drops;
            pt.conn_per_s = spread(&s.conn);
            pt.connect_p50_us = spread(&s.conn_p50);
            pt.connect_p99_us = spread(&s.conn_p99);
            pt.conn_first_error = s.conn_first_error;
            pt.rr_p50_us = spread(&s.rr_p50);
            pt.rr_p99_us = spread(&s.rr_p99);
            pt.tcp_gbps = spread(&s.gbps);
            pt.conn_errors = s.conn_errors;
            pt.errors = s.errors;
        }
    }
    if insts.iter().any(|i| i.daemon.is_some()) {
        notes.push(
            "several daemons run at once (one per port count); the daemon's socket-level hooks, if \
             this build attaches them, are cgroup programs that every connect() on the machine runs \
             through, the iptables client's as much as the eBPF client's"
                .into(),
        );
    }
    // Stop the daemons (their containers and sandboxes) before the
    // namespaces go.
    drop(insts);
    drop(cl);
    let mut r = Report {
        command: String::new(),
        date: String::new(),
        kernel: first_line(&mut sh::cmd("uname", ["-srvm"])),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        loadavg,
        iptables: first_line(&mut sh::cmd("iptables-nft", ["--version"])),
        iperf3: first_line(&mut sh::cmd("iperf3", ["--version"])),
        reps: cfg.reps,
        seconds: cfg.seconds,
        ports: cfg.ports.clone(),
        points,
        vs_iptables: Vec::new(),
        flatness: Vec::new(),
        checks: Vec::new(),
        ebpf_translated,
        notes,
        svg: None,
    };
    analyse(&mut r);
    Ok(r)
}

// ------------------------------------------------------------ output

fn x(v: Option<f64>) -> String {
    ratio_cell(v)
}

/// The result tables (terminal and BENCHMARKS.md).
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s per metric, interleaved; medians over reps, spread is min–max; \
         everything to the last published port.\n",
        r.reps, r.seconds
    );
    for (mi, (title, unit, prec, _, f)) in METRICS.into_iter().enumerate() {
        let _ = writeln!(o, "#### {title}\n");
        let _ = writeln!(
            o,
            "| published ports | iptables median ({unit}) | iptables spread | eBPF median ({unit}) | eBPF spread | eBPF / iptables |"
        );
        let _ = writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: |");
        for &n in &r.ports {
            let cell = |path: NatPath| -> (String, String) {
                match r.point(path, n) {
                    Some(pt) if pt.failed.is_some() => ("not set up".into(), String::new()),
                    Some(pt) => match f(pt) {
                        Some(s) => (
                            format!("{:.prec$}", s.median),
                            format!("{:.prec$}–{:.prec$}", s.min, s.max),
                        ),
                        None => ("no sample".into(), String::new()),
                    },
                    None => ("–".into(), String::new()),
                }
            };
            let (im, is) = cell(NatPath::Iptables);
            let (em, es) = cell(NatPath::Ebpf);
            let ratio = ratios(r.point(NatPath::Ebpf, n), r.point(NatPath::Iptables, n));
            let q = [
                ratio.conn_per_s,
                ratio.rr_p50_us,
                ratio.rr_p99_us,
                ratio.tcp_gbps,
            ][mi];
            let _ = writeln!(o, "| {n} | {im} | {is} | {em} | {es} | {} |", x(q));
        }
        let _ = writeln!(o);
    }
    if !r.flatness.is_empty() {
        let (lo, hi) = (r.flatness[0].from_ports, r.flatness[0].to_ports);
        let _ = writeln!(
            o,
            "#### Flatness: median at {hi} ports / median at {lo} port(s)\n"
        );
        let _ = writeln!(o, "| path | conn/s | rr p50 | rr p99 | Gbit/s |");
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: |");
        for f in &r.flatness {
            let q = f.ratio;
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                f.path.title(),
                x(q.conn_per_s),
                x(q.rr_p50_us),
                x(q.rr_p99_us),
                x(q.tcp_gbps)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "#### Setup cost and connection latency\n");
    let _ = writeln!(
        o,
        "| path | published ports | ports installed in (s) | connect to first byte, p50 µs | p99 µs | failed connection attempts |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let med = |s: &Option<Spread>| {
        s.as_ref()
            .map_or("–".into(), |s| format!("{:.1}", s.median))
    };
    for pt in &r.points {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            pt.title,
            pt.ports,
            pt.install_s.map_or("–".into(), |s| format!("{s:.2}")),
            med(&pt.connect_p50_us),
            med(&pt.connect_p99_us),
            if pt.failed.is_some() {
                "–".into()
            } else {
                pt.conn_errors.to_string()
            }
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "(Installing: `iptables-nft-restore` of the whole ruleset at once, which is faster than \
         Docker's rule-by-rule updates; `dataplane run -d -p` for the eBPF path. Latencies are \
         medians over reps of each rep's percentile. A failed attempt costs up to 1 s, the \
         client's connect and read timeout.)\n"
    );
    let odd: Vec<String> = r
        .points
        .iter()
        .filter(|pt| pt.conn_first_error.is_some() || !pt.ebpf_drops.is_empty())
        .map(|pt| {
            let mut parts = Vec::new();
            if let Some(e) = &pt.conn_first_error {
                parts.push(format!(
                    "{} failed attempt(s), the first: {e}",
                    pt.conn_errors
                ));
            }
            if let Some(c) = &pt.conn_per_s {
                parts.push(format!(
                    "conn/s rep by rep: {}",
                    c.samples
                        .iter()
                        .map(|v| format!("{v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !pt.ebpf_drops.is_empty() {
                parts.push(format!(
                    "drop counters of `dataplane stats` that grew while measuring: {}",
                    pt.ebpf_drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            format!("- {}, {} port(s): {}", pt.title, pt.ports, parts.join("; "))
        })
        .collect();
    if !odd.is_empty() {
        let _ = writeln!(o, "{}\n", odd.join("\n").replace('|', "/"));
    }
    if !r.checks.is_empty() {
        let _ = writeln!(o, "#### Checks\n");
        for c in &r.checks {
            let mark = match c.ok {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "not measured",
            };
            let _ = writeln!(o, "- {}: {mark} ({})", c.what, c.detail);
        }
        let _ = writeln!(o);
    }
    let problems: Vec<String> = r
        .points
        .iter()
        .flat_map(|pt| {
            pt.failed
                .iter()
                .map(move |e| {
                    format!(
                        "{}, {} port(s) could not be set up: {e}",
                        pt.title, pt.ports
                    )
                })
                .chain(pt.errors.iter().cloned())
        })
        .collect();
    let problems: Vec<String> = problems.iter().map(|p| p.replace('|', "/")).collect();
    crate::md::bullets(&mut o, "Published-port failures", &problems);
    o
}

/// This part's section of BENCHMARKS.md; `svg` is the curve's file name
/// (beside the report), if one was drawn.
pub fn markdown(r: &Report, svg: Option<&str>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let minutes = (r.points.len() as u64 * r.reps as u64 * (3 * r.seconds + 1)) as f64 / 60.0;
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (`cargo xtask bench --setups nat` reruns only this section: \
         about {:.0} min of measuring plus setup; it needs root, and builds, measures and removes \
         everything itself). Kernel `{}`, {} CPUs, {}, {}; load average when measuring started: {}.\n",
        r.command,
        r.date,
        minutes.max(1.0),
        r.kernel,
        r.nproc,
        r.iptables,
        r.iperf3,
        r.loadavg
    );
    if let Some(f) = svg {
        let _ = writeln!(
            o,
            "![New TCP connections per second against published ports, eBPF and iptables]({f})\n"
        );
        let _ = writeln!(
            o,
            "([{f}]({f}): the median connections/s of each path at each port count, bars from the \
             slowest to the fastest rep; drawn by the bench itself.)\n"
        );
    }
    let _ = writeln!(
        o,
        "A container publishes TCP ports {BASE_PORT}..{BASE_PORT}+N-1 to the same ports, N = {}; \
         a client in its own namespace, one veth away from the host namespace, connects to the host \
         address {HOST_IP} on the **last** published port ({BASE_PORT}+N-1). Both paths are built \
         side by side in namespaces made for the run (client `eth0` {CLIENT_IP}/24 -- veth -- host \
         `up0` {HOST_IP}/24, the host's default route via the client -- container), all of them before \
         measuring, and the repetitions are interleaved (rep 1: iptables then eBPF at each N, rep 2: \
         eBPF then iptables, ...):\n",
        r.ports
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        o,
        "- **{}**: what Docker 28 builds with iptables-nft for one container on the default bridge: \
         a Linux bridge `docker0` (172.17.0.1/16) with the container's veth (172.17.0.2/16, default \
         route via 172.17.0.1), ip_forward=1, and Docker's rules loaded with `iptables-nft-restore`: \
         nat `-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER`, \
         `-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER`, \
         `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`, `-A DOCKER -i docker0 -j RETURN` \
         and one `-A DOCKER ! -i docker0 -p tcp -m tcp --dport P -j DNAT --to-destination 172.17.0.2:P` \
         per port, appended in publishing order (so the measured port's rule is the last of N); \
         filter FORWARD policy DROP, `FORWARD -> DOCKER-USER, DOCKER-FORWARD`, `DOCKER-FORWARD -> \
         DOCKER-CT` (the RELATED,ESTABLISHED accept), `DOCKER-ISOLATION-STAGE-1`, `DOCKER-BRIDGE -> \
         DOCKER`, with one `-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport P \
         -j ACCEPT` per port (Docker inserts these at the head, so the measured port's comes first) \
         before the chain's final DROP; and raw `-A PREROUTING -d 172.17.0.2/32 ! -i docker0 -j DROP`. \
         Only the first packet of a connection walks the nat chain; later ones are conntrack hits. \
         (Docker would also run a docker-proxy per port for host-local clients; remote clients, as \
         here, never reach it.)",
        NatPath::Iptables.title()
    );
    let _ = writeln!(
        o,
        "- **{}**: a `dataplane daemon` started in the host namespace with `nsenter` (private run dir, \
         state dir and bpffs pins), and the container from `dataplane run -d -p {BASE_PORT}-<last>:{BASE_PORT}-<last> \
         -- sleep infinity` on the default `bridge` network; no bridge, no iptables. The daemon attaches \
         its NAT program to the host's uplink `up0` itself; the bench waits (at most {READY_WITHIN} s) \
         for the first connection to get through before measuring.\n",
        NatPath::Ebpf.title()
    );
    let _ = writeln!(
        o,
        "Per path, port count and rep, against servers started in the container namespace on the \
         measured port one after the other: **new TCP connections per second**: `xtask conn-client` \
         (release build, single-threaded) connects, reads the one byte `xtask conn-server` writes on \
         accept, and closes with SO_LINGER 0 (an RST, so no TIME_WAIT), for {0} s after a 0.2 s \
         warm-up; every connection is a new flow through the NAT; **request/response latency**: the \
         built-in 1-byte TCP ping-pong over one connection, p50 and p99, {0} s; **throughput**: \
         `iperf3 -t {0}` TCP, received bits/s. Ratios are eBPF median / iptables median at the same \
         port count; flatness is a path's median at the most ports / at the fewest.\n",
        r.seconds
    );
    for n in &r.notes {
        let dot = if n.ends_with('.') { "" } else { "." };
        let _ = writeln!(o, "Note: {n}{dot}\n");
    }
    if !r.ebpf_translated.is_empty() {
        let _ = writeln!(
            o,
            "The eBPF daemons' `translated` counters (`dataplane stats`) grew by {} over the measuring, \
             so the traffic did go through the eBPF NAT.\n",
            r.ebpf_translated
                .iter()
                .map(|(n, d)| format!("{d} ({n} port(s))"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o.push_str(&table(r));
    o
}

/// `existing` without this part's section, and that section: it runs from
/// its heading to the next `## ` heading or the end.
pub fn split(existing: &str) -> (String, Option<String>) {
    md::split_section(existing, HEADING_PREFIX)
}

/// Appends `section` (trimmed) after `doc`, with one blank line between.
pub fn append(doc: &str, section: Option<&str>) -> String {
    md::append_section(doc, section)
}

/// The SVG's file name beside the report `out` (BENCHMARKS.md ->
/// BENCHMARKS-nat.svg).
pub fn svg_path(out: &Path) -> PathBuf {
    plot::beside(out, "nat")
}

/// Draws connections/s against published ports (log x axis), one line per
/// path with min–max bars, to `path`. False if nothing was measured.
pub fn svg(r: &Report, path: &Path) -> Result<bool> {
    let series: Vec<plot::Series> = PATHS
        .iter()
        .map(|&p| plot::Series {
            label: p.title(),
            rgb: match p {
                NatPath::Iptables => plot::RED,
                NatPath::Ebpf => plot::BLUE,
            },
            points: r
                .points
                .iter()
                .filter(|pt| pt.path == p)
                .filter_map(|pt| pt.conn_per_s.clone().map(|s| (pt.ports as f64, s)))
                .collect(),
        })
        .collect();
    plot::curve(
        path,
        &plot::Labels {
            caption: "New TCP connections/s to the last published port",
            x: "published ports (log scale)",
            y: "connections/s (median; bars: min–max over reps)",
        },
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_have_one_dnat_and_one_accept_per_port() {
        let r = docker_rules(20000, 3);
        assert_eq!(r.matches("-j DNAT").count(), 3);
        assert_eq!(r.matches("--dport 20002 -j ACCEPT").count(), 1);
        // nat: appended in order; filter: newest first.
        let d0 = r.find("--dport 20000 -j DNAT").unwrap();
        let d2 = r.find("--dport 20002 -j DNAT").unwrap();
        assert!(d0 < d2);
        let a0 = r.find("--dport 20000 -j ACCEPT").unwrap();
        let a2 = r.find("--dport 20002 -j ACCEPT").unwrap();
        assert!(a2 < a0);
        assert!(r.find("-A DOCKER ! -i docker0 -o docker0 -j DROP").unwrap() > a0);
        assert_eq!(r.matches("COMMIT").count(), 3);
    }

    #[test]
    fn splitting_and_appending_the_section() {
        let doc = format!("# B\n\nnet\n\n## DNS\n\ndns\n\n{HEADING}\n\nold\n");
        let (rest, sec) = split(&doc);
        assert_eq!(rest, "# B\n\nnet\n\n## DNS\n\ndns\n\n");
        assert_eq!(sec.as_deref(), Some(&*format!("{HEADING}\n\nold\n")));
        assert_eq!(append(&rest, sec.as_deref()), doc);
        let mid = format!("# B\n{HEADING}\nx\n## Later\ny\n");
        let (rest, sec) = split(&mid);
        assert_eq!(rest, "# B\n## Later\ny\n");
        assert_eq!(sec.unwrap(), format!("{HEADING}\nx\n"));
        assert_eq!(split("# B\n").1, None);
        assert_eq!(append("", Some("## S\n")), "## S\n");
    }

    #[test]
    fn counters_summed_over_programs_and_grown_drops() {
        let before = Counters::parse(
            r#"{"programs":[{"translated":3,"drops":{"no_route":1}},{"translated":4,"drops":{"no_route":2,"malformed":5}}]}"#,
        );
        assert_eq!(before.translated, Some(7));
        assert_eq!(before.drops["no_route"], 3);
        let after =
            Counters::parse(r#"[{"translated":9,"drops":{"no_route":3,"malformed":6,"new":1}}]"#);
        assert_eq!(
            after.grown_drops(&before),
            vec![("malformed".to_string(), 1), ("new".to_string(), 1)]
        );
        assert!(Counters::parse("not json").drops.is_empty());
    }

    #[test]
    fn svg_next_to_report() {
        assert_eq!(
            svg_path(Path::new("/r/BENCHMARKS.md")),
            Path::new("/r/BENCHMARKS-nat.svg")
        );
        assert_eq!(svg_path(Path::new("x.md")), Path::new("x-nat.svg"));
    }

    fn pt(path: NatPath, ports: u32, conn: f64) -> Point {
        let s = |v: f64| {
            Some(Spread {
                median: v,
                min: v * 0.9,
                max: v * 1.1,
                samples: vec![v],
            })
        };
        Point {
            path,
            title: path.title(),
            ports,
            port: last_port(ports),
            failed: None,
            install_s: Some(0.1),
            ready_s: Some(0.1),
            conn_per_s: s(conn),
            connect_p50_us: s(50.0),
            connect_p99_us: s(90.0),
            rr_p50_us: s(30.0),
            rr_p99_us: s(60.0),
            tcp_gbps: s(10.0),
            conn_errors: 0,
            conn_first_error: None,
            ebpf_drops: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn report(points: Vec<Point>) -> Report {
        let mut r = Report {
            command: "cargo xtask bench --setups nat".into(),
            date: "today".into(),
            kernel: "k".into(),
            nproc: 2,
            loadavg: "0".into(),
            iptables: "iptables v1.8.9 (nf_tables)".into(),
            iperf3: "iperf 3".into(),
            reps: 3,
            seconds: 3,
            ports: vec![1, 1000, 10000],
            points,
            vs_iptables: Vec::new(),
            flatness: Vec::new(),
            checks: Vec::new(),
            ebpf_translated: Vec::new(),
            notes: Vec::new(),
            svg: None,
        };
        analyse(&mut r);
        r
    }

    #[test]
    fn ratios_flatness_and_checks() {
        let r = report(vec![
            pt(NatPath::Iptables, 1, 10000.0),
            pt(NatPath::Ebpf, 1, 12000.0),
            pt(NatPath::Iptables, 1000, 8000.0),
            pt(NatPath::Ebpf, 1000, 12000.0),
            pt(NatPath::Iptables, 10000, 2000.0),
            pt(NatPath::Ebpf, 10000, 11500.0),
        ]);
        let v = r.vs_iptables.iter().find(|v| v.ports == 10000).unwrap();
        assert!((v.ebpf_over_iptables.conn_per_s.unwrap() - 5.75).abs() < 1e-9);
        let f = r
            .flatness
            .iter()
            .find(|f| f.path == NatPath::Iptables)
            .unwrap();
        assert!((f.ratio.conn_per_s.unwrap() - 0.2).abs() < 1e-9);
        assert!(
            r.checks.iter().all(|c| c.ok == Some(true)),
            "{:?}",
            r.checks
        );
        let t = table(&r);
        assert!(
            t.contains("| 10000 | 2000 | 1800–2200 | 11500 | 10350–12650 | 5.75x |"),
            "{t}"
        );
        let md = markdown(&r, Some("BENCHMARKS-nat.svg"));
        assert!(md.starts_with(HEADING));
        assert!(md.contains("](BENCHMARKS-nat.svg)"));
        let dir = std::env::temp_dir().join(format!("natbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.svg");
        assert!(svg(&r, &f).unwrap());
        let s = std::fs::read_to_string(&f).unwrap();
        assert!(s.contains("<svg") && s.contains("dataplane eBPF"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_connections_are_not_flat() {
        let mut e = pt(NatPath::Ebpf, 10000, 11900.0);
        e.conn_errors = 3;
        let r = report(vec![
            pt(NatPath::Iptables, 1, 10000.0),
            pt(NatPath::Ebpf, 1, 12000.0),
            pt(NatPath::Iptables, 10000, 2000.0),
            e,
        ]);
        assert!(r.bad());
        let c = &r.checks[0];
        assert_eq!(c.ok, Some(false), "{c:?}");
        assert!(c.detail.contains("3 failed connection attempt(s)"), "{c:?}");
        assert_eq!(r.checks[1].ok, Some(true));
    }

    #[test]
    fn a_failed_path_is_reported_not_invented() {
        let mut e = pt(NatPath::Ebpf, 1, 0.0);
        e.failed = Some("no -p".into());
        e.conn_per_s = None;
        e.rr_p50_us = None;
        e.rr_p99_us = None;
        e.tcp_gbps = None;
        let r = report(vec![pt(NatPath::Iptables, 1, 10000.0), e]);
        assert!(r.bad());
        assert!(r.checks.iter().any(|c| c.ok.is_none()));
        let t = table(&r);
        assert!(t.contains("not set up"), "{t}");
        assert!(t.contains("could not be set up: no -p"), "{t}");
    }
}

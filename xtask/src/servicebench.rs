//! The services part of `cargo xtask bench` (`--setups services`): a client
//! outside the cluster connects to a service's published port on host A,
//! whose replicas all run on host B, through (1) what Kubernetes users
//! would otherwise have here, kube-proxy's iptables mode on a kernel VXLAN
//! overlay, and (2) the dataplane's routing mesh (ingress mode: Maglev in
//! eBPF, our VXLAN overlay), with 1, 100 and 1,000 services installed.
//!
//! ```text
//! underlay netns: bridge br0 192.168.242.1/24 (the switch; etcd listens here for (2))
//!   |-- client netns eth0 .2
//!   |-- (1) host A' .21 (kube-proxy rules, br0 + vxlan0)  -- (1) host B' .22 (br0 + vxlan0, replica netns)
//!   `-- (2) host A  .31 (daemon, --store etcd)             -- (2) host B  .32 (daemon, replica sandboxes)
//! ```
//!
//! Both setups exist side by side for the whole run. The service counts are
//! measured in ascending order; at each count both setups are brought to it
//! (iptables-nft-restore of the whole ruleset; `service create` of the
//! missing services), then the repetitions of the two are interleaved
//! (rep 1: iptables then eBPF, rep 2: eBPF then iptables, ...). Everything
//! goes to the measured service: new TCP connections per second
//! (`connrate`), request/response latency (the built-in ping-pong) and
//! single-connection throughput (`stream`; iperf3's second connection could
//! reach another replica). The servers run in each replica's netns, one
//! kind at a time.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    connrate::ClientResult,
    lab::{self, addr, in_netns, Cleanup},
    md,
    natbench::Counters,
    overlaybench::{Etcd, Node, Underlay},
    plot,
    sh::{self, bg, first_line, json_of, Bg},
    stats::{ratio, ratio_cell, ratio_or, spread, Spread},
    stream, Progress,
};

/// The heading that starts this part's section of BENCHMARKS.md.
pub const HEADING: &str =
    "## Services: the eBPF routing mesh against kube-proxy's iptables, two hosts";
const HEADING_PREFIX: &str = "## Services";

pub const DEFAULT_COUNTS: [u32; 3] = [1, 100, 1_000];
/// Most services one run installs (the daemon holds 1,024 service slots).
pub const MAX_COUNT: u32 = 1_000;
/// The measured service's published port; the others take the next ones.
pub const PORT: u16 = 30_000;
/// The port the replicas listen on.
pub const TARGET: u16 = 8_080;
const UNDERLAY: &str = "192.168.242";
const CLIENT_LAST: u8 = 2;
/// The baseline's VXLAN (the kernel's), and its pod /16.
const VNI: &str = "4243";
const POD_NET: &str = "10.202";
/// Our overlay network.
const NETWORK: &str = "svcbench";
const OVERLAY_SUBNET: &str = "10.203.0.0/16";
const MEASURED: &str = "svcm";
/// How long a path may take to carry its first connection.
const READY_WITHIN: u64 = 30;
const SHORT: Duration = Duration::from_secs(30);

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SvcPath {
    Iptables,
    Ebpf,
}

const PATHS: [SvcPath; 2] = [SvcPath::Iptables, SvcPath::Ebpf];

impl SvcPath {
    pub fn title(self) -> &'static str {
        match self {
            SvcPath::Iptables => "kube-proxy iptables (nft) + kernel VXLAN",
            SvcPath::Ebpf => "dataplane routing mesh (eBPF)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            SvcPath::Iptables => "iptables",
            SvcPath::Ebpf => "eBPF",
        }
    }
}

/// What to run (from `cargo xtask bench`'s arguments).
pub struct Config {
    /// Service counts, ascending.
    pub counts: Vec<u32>,
    pub reps: u32,
    pub seconds: u64,
    /// Replicas of the measured service (all on host B).
    pub replicas: u32,
    /// Replicas of every other service.
    pub filler_replicas: u32,
    /// The release xtask binary (conn/stream/ping-pong ends).
    pub xtask: PathBuf,
    pub dataplane: PathBuf,
    /// Unique prefix for namespaces and pins (`dpb<pid>`).
    pub tag: String,
    /// A scratch directory removed by the caller.
    pub dir: PathBuf,
    /// `bench-prog`'s JSON (or {"skipped": why}).
    pub bpf_prog: Value,
}

// ------------------------------------------------------------ the rules

/// The kube-proxy chain suffix of service `i` (0 is the measured one).
/// kube-proxy names chains by a hash of the service; a readable index is
/// as long and walks the same.
fn chain(i: u32) -> String {
    format!("S{i:05}")
}

/// kube-proxy's `--probability` of endpoint `k` of `n` (the last one
/// gets no statistic match): 1/(n-k), printed with ten decimals as it does.
pub fn probability(k: u32, n: u32) -> String {
    format!("{:.10}", 1.0 / f64::from(n - k))
}

/// The address kube-proxy DNATs replica `r` of filler service `k` (1-based)
/// to: pods of the baseline's /16 that are never reached (only the measured
/// service's chains are walked past their KUBE-SERVICES match).
pub fn filler_endpoint(k: u32, r: u32) -> String {
    let n = (k - 1) * 4 + r; // up to 4 replicas per filler
    format!("{POD_NET}.{}.{}", 2 + n / 250, 1 + n % 250)
}

/// The ruleset (iptables-save form) kube-proxy's iptables mode writes on a
/// node for `fillers` services of `filler_replicas` endpoints each, then the
/// measured service with `measured` endpoints (so its KUBE-SERVICES match
/// is the last one), each service exposed on the node's address `node` as
/// an external IP (`spec.externalIPs`) on its own port: KUBE-SERVICES
/// `-d NODE/32 -p tcp --dport P -j KUBE-EXT-x`; KUBE-EXT-x marks for
/// masquerade and jumps to KUBE-SVC-x; KUBE-SVC-x picks an endpoint with
/// `-m statistic --mode random --probability 1/(n-k)`; KUBE-SEP-x-k DNATs
/// to it; KUBE-POSTROUTING masquerades marked packets (`--random-fully`);
/// KUBE-FORWARD accepts them.
pub fn kube_rules(node: &str, measured: &[String], fillers: u32, filler_replicas: u32) -> String {
    let mut svcs: Vec<(u32, u16, Vec<String>)> = (1..=fillers)
        .map(|k| {
            (
                k,
                PORT + k as u16,
                (0..filler_replicas)
                    .map(|r| filler_endpoint(k, r))
                    .collect(),
            )
        })
        .collect();
    svcs.push((0, PORT, measured.to_vec()));
    let mut o = String::with_capacity(600 * svcs.len() + 2048);
    o.push_str(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         COMMIT\n",
    );
    o.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    for (i, _, eps) in &svcs {
        let c = chain(*i);
        let _ = writeln!(o, ":KUBE-EXT-{c} - [0:0]\n:KUBE-SVC-{c} - [0:0]");
        for k in 0..eps.len() {
            let _ = writeln!(o, ":KUBE-SEP-{c}-{k} - [0:0]");
        }
    }
    o.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for (i, port, _) in &svcs {
        let c = chain(*i);
        let _ = writeln!(
            o,
            "-A KUBE-SERVICES -d {node}/32 -p tcp -m comment --comment \"bench/svc-{i}:http external IP\" -m tcp --dport {port} -j KUBE-EXT-{c}"
        );
    }
    for (i, _, eps) in &svcs {
        let c = chain(*i);
        let _ = writeln!(
            o,
            "-A KUBE-EXT-{c} -m comment --comment \"masquerade traffic for bench/svc-{i}:http external destinations\" -j KUBE-MARK-MASQ\n\
             -A KUBE-EXT-{c} -j KUBE-SVC-{c}"
        );
        let n = eps.len() as u32;
        for (k, ep) in eps.iter().enumerate() {
            let k32 = k as u32;
            if k32 + 1 < n {
                let _ = writeln!(
                    o,
                    "-A KUBE-SVC-{c} -m comment --comment \"bench/svc-{i}:http -> {ep}:{TARGET}\" -m statistic --mode random --probability {} -j KUBE-SEP-{c}-{k}",
                    probability(k32, n)
                );
            } else {
                let _ = writeln!(
                    o,
                    "-A KUBE-SVC-{c} -m comment --comment \"bench/svc-{i}:http -> {ep}:{TARGET}\" -j KUBE-SEP-{c}-{k}"
                );
            }
            let _ = writeln!(
                o,
                "-A KUBE-SEP-{c}-{k} -s {ep}/32 -j KUBE-MARK-MASQ\n\
                 -A KUBE-SEP-{c}-{k} -p tcp -m tcp -j DNAT --to-destination {ep}:{TARGET}"
            );
        }
    }
    o.push_str("COMMIT\n");
    o
}

// ------------------------------------------------------------ the baseline

/// (1): hosts A' and B' with a Linux bridge and a kernel vxlan device each
/// (as flannel's or Docker's overlay builds them: static FDB and neighbour
/// entries), the replicas' netns on B''s bridge, kube-proxy's rules on A'.
struct Kube {
    a: String,
    a_ip: String,
    /// The measured service's replicas: (netns, address).
    replicas: Vec<(String, String)>,
}

const KUBE_A_MAC: &str = "02:42:0a:ca:00:01";

fn replica_mac(r: u32) -> String {
    format!("02:42:0a:ca:01:{:02x}", r + 1)
}

fn build_kube(
    cl: &mut Cleanup,
    u: &Underlay,
    cfg: &Config,
    notes: &mut Vec<String>,
) -> Result<Kube> {
    let t = &cfg.tag;
    let (a, b) = (format!("{t}-sk1"), format!("{t}-sk2"));
    let a_ip = u.add_host(cl, &a, "sk1", 21)?;
    let b_ip = u.add_host(cl, &b, "sk2", 22)?;
    for (h, local) in [(&a, &a_ip), (&b, &b_ip)] {
        let mut br = vec!["link", "add", "br0"];
        if h == &a {
            br.extend(["address", KUBE_A_MAC]);
        }
        br.extend(["mtu", "1450", "type", "bridge"]);
        lab::ip(h, &br)?;
        lab::ip(
            h,
            &[
                "link",
                "add",
                "vxlan0",
                "mtu",
                "1450",
                "type",
                "vxlan",
                "id",
                VNI,
                "local",
                local,
                "dev",
                "eth0",
                "dstport",
                "4789",
                "nolearning",
            ],
        )?;
        lab::ip(h, &["link", "set", "vxlan0", "master", "br0", "up"])?;
        lab::ip(h, &["link", "set", "br0", "up"])?;
    }
    // A' routes into the pod /16 through its bridge (the masquerade source).
    addr(&a, "br0", &format!("{POD_NET}.0.1/16"))?;
    let fdb = |h: &str, mac: &str, dst: &str| -> Result<()> {
        sh::output(
            &mut sh::cmd(
                "bridge",
                [
                    "-n",
                    h,
                    "fdb",
                    "add",
                    mac,
                    "dev",
                    "vxlan0",
                    "dst",
                    dst,
                    "self",
                    "permanent",
                ],
            ),
            Some(SHORT),
        )?;
        Ok(())
    };
    fdb(&b, KUBE_A_MAC, &a_ip)?;
    let mut replicas = Vec::new();
    for r in 0..cfg.replicas {
        let ns = format!("{t}-skr{r}");
        cl.netns(&ns)?;
        let ip = format!("{POD_NET}.1.{}", r + 1);
        let mac = replica_mac(r);
        let port = format!("r{r}");
        lab::ip(
            &b,
            &[
                "link", "add", &port, "mtu", "1450", "type", "veth", "peer", "name", "eth0", "mtu",
                "1450", "netns", &ns,
            ],
        )?;
        lab::ip(&b, &["link", "set", &port, "master", "br0", "up"])?;
        lab::ip(&ns, &["link", "set", "eth0", "address", &mac])?;
        addr(&ns, "eth0", &format!("{ip}/16"))?;
        lab::ip(
            &ns,
            &[
                "neigh",
                "add",
                &format!("{POD_NET}.0.1"),
                "lladdr",
                KUBE_A_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )?;
        lab::ip(
            &ns,
            &["route", "add", "default", "via", &format!("{POD_NET}.0.1")],
        )?;
        fdb(&a, &mac, &b_ip)?;
        lab::ip(
            &a,
            &[
                "neigh",
                "add",
                &ip,
                "lladdr",
                &mac,
                "dev",
                "br0",
                "nud",
                "permanent",
            ],
        )?;
        replicas.push((ns, ip));
    }
    lab::sysctl(&a, "net.ipv4.ip_forward", "1")?;
    if lab::sysctl(&a, "net.bridge.bridge-nf-call-iptables", "1").is_err() {
        let m = "(1): net.bridge.bridge-nf-call-iptables is unavailable here (no br_netfilter); \
                 Kubernetes requires it for pod-to-pod traffic on a bridge, which this benchmark has none of";
        notes.push(m.into());
    }
    for (_, ip) in &replicas {
        lab::wait_reachable(&a, ip, Duration::from_secs(10)).with_context(|| {
            format!("(1): host A' cannot reach the replica {ip} over the kernel VXLAN")
        })?;
    }
    Ok(Kube { a, a_ip, replicas })
}

impl Kube {
    /// Loads the whole ruleset for `count` services; the seconds it took.
    fn install(&self, cfg: &Config, count: u32) -> Result<f64> {
        let eps: Vec<String> = self.replicas.iter().map(|(_, ip)| ip.clone()).collect();
        let rules = cfg.dir.join(format!("kube-proxy-{count}.rules"));
        std::fs::write(
            &rules,
            kube_rules(&self.a_ip, &eps, count - 1, cfg.filler_replicas),
        )?;
        let t0 = Instant::now();
        sh::output(
            in_netns(&self.a, &["iptables-nft-restore"]).arg(&rules),
            Some(Duration::from_secs(300)),
        )
        .with_context(|| format!("loading kube-proxy's rules for {count} service(s)"))?;
        let took = t0.elapsed().as_secs_f64();
        let saved = sh::output(
            &mut in_netns(&self.a, &["iptables-nft-save", "-t", "nat"]),
            Some(Duration::from_secs(120)),
        )?;
        let n = saved
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .count();
        if n != count as usize {
            bail!("iptables-nft-save shows {n} KUBE-SERVICES rules after loading {count}");
        }
        Ok(took)
    }
}

/// Removes every rule and chain of `ns`'s nat and filter tables (the netns
/// goes anyway; this keeps a failed deletion from leaving rules behind).
fn flush_rules(ns: &str) -> Option<String> {
    let mut warn = None;
    for t in ["nat", "filter"] {
        for op in ["-F", "-X"] {
            match sh::capture(
                &mut in_netns(ns, &["iptables-nft", "-t", t, op]),
                Some(SHORT),
            ) {
                Ok(o) if o.ok() => {}
                Ok(o) => warn = Some(sh::tail(&o.stderr, 2)),
                Err(e) => warn = Some(format!("{e:#}")),
            }
        }
    }
    warn
}

// ------------------------------------------------------------ ours

/// One `service ps` task: its container, its host, its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub container: String,
    pub node: String,
    pub state: String,
}

/// The tasks of `service ps NAME --format json` (an array of
/// `{"Name", "Node", "State", "Container", ...}`) that have a container.
pub fn parse_tasks(v: &Value) -> Vec<Task> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            let container = s("Container");
            (!container.is_empty()).then(|| Task {
                container,
                node: s("Node"),
                state: s("State"),
            })
        })
        .collect()
}

/// (2): etcd, a daemon on A and on B, an overlay network, the measured
/// service (replicas on B) and the other services. Dropping it removes the
/// services, then the daemons stop (their own drop), then etcd.
struct Ours {
    services: Vec<String>,
    a: Option<Node>,
    b: Node,
    _etcd: Etcd,
    a_ip: String,
    /// The measured service's replicas on B: (container, netns).
    replicas: Vec<(String, String)>,
    /// Services installed, the measured one included.
    count: u32,
    /// How the measured service's replicas were kept off A.
    placement: String,
}

impl Drop for Ours {
    fn drop(&mut self) {
        let _c = sh::Cleaning::enter();
        if self.services.is_empty() {
            return;
        }
        eprintln!("==> removing {} service(s)", self.services.len());
        let node = self.a.as_ref().unwrap_or(&self.b);
        let limit =
            Duration::from_secs(60) + Duration::from_millis(300) * self.services.len() as u32;
        let mut args = vec!["service", "rm"];
        args.extend(self.services.iter().map(String::as_str));
        let all = sh::capture(&mut node.client(&args), Some(limit));
        if !matches!(all, Ok(ref o) if o.ok()) {
            // One at a time, in case `service rm` takes one name only.
            for s in &self.services {
                if let Ok(o) = sh::capture(&mut node.client(&["service", "rm", s]), Some(SHORT)) {
                    if !o.ok() && !o.stderr.contains("no such") && !o.stderr.contains("not found") {
                        eprintln!("    warning: service rm {s}: {}", sh::tail(&o.stderr, 2));
                    }
                }
            }
        }
        self.services.clear();
        // The hosts' agents remove the replicas: wait (bounded) until no
        // container is left, then remove what is (and its netns) by hand,
        // so that no sandbox outlives its daemon.
        let mut nodes: Vec<&mut Node> = self.a.iter_mut().collect();
        nodes.push(&mut self.b);
        for n in nodes {
            let ids = |n: &Node| -> Vec<String> {
                n.cli(&["ps", "-a", "--no-trunc", "--format", "json"])
                    .ok()
                    .map(|o| crate::sh::json_list(&o))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|c| c["ID"].as_str().map(str::to_string))
                    .collect()
            };
            let end = Instant::now() + limit;
            let mut left = ids(n);
            while !left.is_empty() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(500));
                left = ids(n);
            }
            if left.is_empty() {
                continue;
            }
            eprintln!(
                "    warning: {}: {} container(s) left after `service rm`: removing them",
                n.name,
                left.len()
            );
            for id in &left {
                if let Ok(o) = n.cli(&["inspect", id]) {
                    if let Some(ns) = serde_json::from_str::<Value>(&o)
                        .ok()
                        .and_then(|v| lab::sandbox_of(&v, "").ok())
                        .and_then(|(key, _)| {
                            Path::new(&key)
                                .file_name()
                                .and_then(|f| f.to_str())
                                .map(str::to_string)
                        })
                    {
                        n.track_netns(&ns);
                    }
                }
                n.track(id);
            }
        }
    }
}

fn spawn_node(
    cfg: &Config,
    cl: &mut Cleanup,
    u: &Underlay,
    store: &str,
    i: u8,
    name: &str,
) -> Result<(Node, String)> {
    let host = format!("{}-se{i}", cfg.tag);
    let ip = u.add_host(cl, &host, &format!("se{i}"), 30 + i)?;
    lab::wait_reachable(&host, &u.gateway(), Duration::from_secs(10))?;
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}-se{i}", cfg.tag));
    cl.path(&bpffs);
    let mut n = Node::spawn(
        &cfg.dataplane,
        &host,
        name,
        &ip,
        store,
        &cfg.dir.join(format!("se{i}")),
        &bpffs,
        &[],
    )?;
    let took = match n.wait_ready(Duration::from_secs(30)) {
        // A daemon that exits while starting (etcd slow to answer its
        // first list on a loaded machine) is started once more.
        Err(e) if n.restart_if_exited()? => {
            eprintln!("    {name} exited while starting ({e:#}); starting it again");
            n.wait_ready(Duration::from_secs(30))?
        }
        r => r?,
    };
    eprintln!("    {name} ready in {:.1} s", took.as_secs_f64());
    Ok((n, ip))
}

fn tasks(n: &Node, service: &str) -> Result<Vec<Task>> {
    let out = n.cli(&["service", "ps", service, "--format", "json"])?;
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `service ps {service} --format json`: {out}"))?;
    Ok(parse_tasks(&v))
}

/// (services, services whose replicas are all live) of `service ls
/// --format json` (`"Replicas": "LIVE/DESIRED"`).
pub fn converged(v: &Value) -> (usize, usize) {
    let all = v.as_array().map_or(&[][..], Vec::as_slice);
    let done = all
        .iter()
        .filter(|s| {
            s["Replicas"]
                .as_str()
                .and_then(|r| r.split_once('/'))
                .is_some_and(|(live, want)| live == want)
        })
        .count();
    (all.len(), done)
}

fn running(t: &Task) -> bool {
    t.state.starts_with("running")
}

fn service_create(n: &Node, name: &str, replicas: u32, published: u16) -> Result<()> {
    let r = replicas.to_string();
    let publish = format!("published={published},target={TARGET},protocol=tcp,mode=ingress");
    n.cli(&[
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        &r,
        "--network",
        NETWORK,
        "--publish",
        &publish,
        "--",
        "sleep",
        "infinity",
    ])?;
    Ok(())
}

fn build_ours(cl: &mut Cleanup, u: &Underlay, cfg: &Config) -> Result<Ours> {
    let etcd = Etcd::start(&u.ns, &u.gateway(), &cfg.dir.join("etcd"))?;
    let store = etcd.store_url();
    // B alone first: the measured service is created while B is the only
    // host, so every replica lands on B (the CLI has no placement
    // constraint); A joins afterwards and answers the port for replicas it
    // does not run.
    let (b, _b_ip) = spawn_node(cfg, cl, u, &store, 2, "hostb")?;
    let mut ours = Ours {
        services: Vec::new(),
        a: None,
        b,
        _etcd: etcd,
        a_ip: String::new(),
        replicas: Vec::new(),
        count: 0,
        placement: "the measured service was created while host B's daemon was the only one in \
                    the cluster (the CLI has no placement constraint), host A's daemon started \
                    afterwards; `service ps` showed every replica on B before measuring"
            .into(),
    };
    ours.b.cli(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        OVERLAY_SUBNET,
        NETWORK,
    ])?;
    ours.services.push(MEASURED.into());
    service_create(&ours.b, MEASURED, cfg.replicas, PORT)?;
    let ts = lab::poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let ts = tasks(&ours.b, MEASURED)?;
        Ok((ts.iter().filter(|t| running(t)).count() >= cfg.replicas as usize).then_some(ts))
    })?
    .ok_or_else(|| {
        anyhow!(
            "{} replica(s) of {MEASURED} are not all running on host B after 60 s: {:?}",
            cfg.replicas,
            tasks(&ours.b, MEASURED).unwrap_or_default()
        )
    })?;
    ours.count = 1;
    for t in ts.iter().filter(|t| running(t)) {
        let sb = ours.b.sandbox(&t.container, NETWORK)?;
        ours.replicas.push((t.container.clone(), sb.netns));
    }
    let (a, a_ip) = spawn_node(cfg, cl, u, &store, 1, "hosta")?;
    ours.a_ip = a_ip;
    let seen = lab::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        Ok(sh::succeeds(&mut a.client(&["service", "inspect", MEASURED])).then_some(()))
    })?;
    ours.a = Some(a);
    if seen.is_none() {
        bail!("host A does not know service {MEASURED} 30 s after it started");
    }
    ours.check_placement()?;
    Ok(ours)
}

impl Ours {
    fn a(&self) -> &Node {
        self.a.as_ref().unwrap_or(&self.b)
    }

    /// Every running replica of the measured service is on B (the
    /// benchmark is A -> B), and there are as many as asked.
    fn check_placement(&self) -> Result<()> {
        let ts = tasks(self.a(), MEASURED)?;
        let run: Vec<&Task> = ts.iter().filter(|t| running(t)).collect();
        if run
            .iter()
            .any(|t| t.node != self.b.name && !t.node.is_empty())
        {
            bail!(
                "a replica of {MEASURED} runs outside host B: {:?}",
                run.iter()
                    .map(|t| (&t.container, &t.node))
                    .collect::<Vec<_>>()
            );
        }
        if run.len() != self.replicas.len() {
            bail!(
                "{MEASURED} has {} running replica(s), {} expected",
                run.len(),
                self.replicas.len()
            );
        }
        Ok(())
    }

    /// Creates services until there are `count`; the seconds it took until
    /// host A lists them all.
    fn grow(&mut self, cfg: &Config, count: u32) -> Result<f64> {
        let t0 = Instant::now();
        let from = self.count;
        for k in from..count {
            sh::check_interrupted()?;
            let name = format!("svcf{k:04}");
            self.services.push(name.clone());
            service_create(self.a(), &name, cfg.filler_replicas, PORT + k as u16)
                .with_context(|| format!("creating service {k} of {count}"))?;
            self.count = k + 1;
            if (k + 1 - from).is_multiple_of(100) {
                eprintln!(
                    "    eBPF: {} / {count} services ({:.0} s)",
                    k + 1,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        let mut last = (0, 0);
        let listed = lab::poll(
            Duration::from_secs(120 + u64::from(count) / 2),
            Duration::from_millis(500),
            || {
                let out = self.a().cli(&["service", "ls", "--format", "json"])?;
                let v: Value = serde_json::from_str(&out).context("parsing `service ls`")?;
                last = converged(&v);
                Ok((last.0 >= count as usize && last.1 == last.0).then_some(()))
            },
        )?;
        if listed.is_none() {
            bail!(
                "host A lists {} of {count} services, {} of them with all their replicas live",
                last.0,
                last.1
            );
        }
        self.check_placement()?;
        Ok(t0.elapsed().as_secs_f64())
    }

    fn counters(&self) -> Counters {
        Counters::parse(
            &self
                .a()
                .cli(&["stats", "--format", "json"])
                .unwrap_or_default(),
        )
    }
}

// ------------------------------------------------------------ measuring

/// Where one (path, count) sends its traffic.
struct Target {
    path: SvcPath,
    services: u32,
    client: String,
    addr: String,
    /// The netns of each replica of the measured service.
    replicas: Vec<String>,
}

impl Target {
    fn label(&self) -> String {
        format!("{}, {} service(s)", self.path.short(), self.services)
    }

    fn to(&self) -> String {
        format!("{}:{PORT}", self.addr)
    }
}

/// `args` (with `{listen}` in them) started in every replica, listening.
fn servers(t: &Target, args: &[&str]) -> Result<Vec<Bg>> {
    let listen = format!("0.0.0.0:{TARGET}");
    let mut v = Vec::new();
    for ns in &t.replicas {
        let a: Vec<&str> = args
            .iter()
            .map(|a| if *a == "{listen}" { listen.as_str() } else { a })
            .collect();
        v.push(bg(&mut in_netns(ns, &a))?);
    }
    for ns in &t.replicas {
        lab::wait_listening(ns, TARGET, Duration::from_secs(5))?;
    }
    Ok(v)
}

fn conn_client(x: &str, t: &Target, seconds: u64, wait: u64) -> Result<ClientResult> {
    let (s, w, to) = (seconds.to_string(), wait.to_string(), t.to());
    let out = sh::output(
        &mut in_netns(
            &t.client,
            &[
                x,
                "conn-client",
                "--connect",
                &to,
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

fn probe(x: &str, t: &Target) -> Result<f64> {
    let _s = servers(t, &[x, "conn-server", "--listen", "{listen}"])?;
    Ok(conn_client(x, t, 0, READY_WITHIN)?.ready_after_s)
}

fn latency(x: &str, t: &Target, secs: u64) -> Result<(f64, f64)> {
    let _s = servers(t, &[x, "pingpong-server", "--listen", "{listen}"])?;
    let (to, s) = (t.to(), secs.to_string());
    let out = sh::output(
        &mut in_netns(
            &t.client,
            &[x, "pingpong-client", "--connect", &to, "--seconds", &s],
        ),
        Some(Duration::from_secs(secs + 30)),
    )?;
    let v = json_of(&out, "ping-pong")?;
    match (v["p50_us"].as_f64(), v["p99_us"].as_f64()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("ping-pong printed no percentiles: {out}"),
    }
}

fn throughput(x: &str, t: &Target, secs: u64) -> Result<f64> {
    let _s = servers(t, &[x, "stream-server", "--listen", "{listen}"])?;
    let (to, s) = (t.to(), secs.to_string());
    let out = sh::output(
        &mut in_netns(
            &t.client,
            &[x, "stream-client", "--connect", &to, "--seconds", &s],
        ),
        Some(Duration::from_secs(secs + 30)),
    )?;
    let r: stream::ClientResult = serde_json::from_str(out.trim())
        .with_context(|| format!("parsing stream-client output {out:?}"))?;
    Ok(r.gbps)
}

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

/// One rep of one target: connections/s, latency, throughput.
fn measure(x: &str, t: &Target, secs: u64, s: &mut Samples, rep: u32) -> Result<String> {
    let mut line = Vec::new();
    let err = |s: &mut Samples, what: &str, e: anyhow::Error| -> Result<()> {
        sh::check_interrupted()?;
        let m = format!("rep {rep}: {}: {what}: {e:#}", t.label());
        eprintln!("    error: {m}");
        s.errors.push(m);
        Ok(())
    };
    let conn = servers(t, &[x, "conn-server", "--listen", "{listen}"]).and_then(|srv| {
        let r = conn_client(x, t, secs, 2);
        drop(srv);
        r
    });
    match conn {
        Ok(r) => {
            line.push(format!(
                "{:.0} conn/s{}",
                r.per_sec,
                if r.errors > 0 {
                    format!(" ({} errors)", r.errors)
                } else {
                    String::new()
                }
            ));
            s.conn.push(r.per_sec);
            s.conn_p50.extend(r.p50_us);
            s.conn_p99.extend(r.p99_us);
            s.conn_errors += r.errors;
            if s.conn_first_error.is_none() {
                s.conn_first_error = r.first_error.map(|e| format!("rep {rep}: {e}"));
            }
        }
        Err(e) => err(s, "connections/s", e)?,
    }
    match latency(x, t, secs) {
        Ok((a, b)) => {
            line.push(format!("rr p50 {a:.1} µs p99 {b:.1} µs"));
            s.rr_p50.push(a);
            s.rr_p99.push(b);
        }
        Err(e) => err(s, "latency", e)?,
    }
    match throughput(x, t, secs) {
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
    pub path: SvcPath,
    pub title: &'static str,
    pub services: u32,
    /// Why this (path, count) could not be set up or carried no traffic.
    pub failed: Option<String>,
    /// Seconds to bring the path to this many services
    /// (iptables-nft-restore of the whole ruleset; `service create` of the
    /// missing ones until host A lists them).
    pub install_s: Option<f64>,
    /// Seconds until the first connection got through, after install.
    pub ready_s: Option<f64>,
    pub conn_per_s: Option<Spread>,
    pub connect_p50_us: Option<Spread>,
    pub connect_p99_us: Option<Spread>,
    pub rr_p50_us: Option<Spread>,
    pub rr_p99_us: Option<Spread>,
    pub tcp_gbps: Option<Spread>,
    pub conn_errors: u64,
    pub conn_first_error: Option<String>,
    /// eBPF: host A's drop counters that grew while this count was measured.
    pub ebpf_drops: Vec<(String, u64)>,
    pub errors: Vec<String>,
}

impl Point {
    fn new(path: SvcPath, services: u32) -> Self {
        Self {
            path,
            title: path.title(),
            services,
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
        }
    }

    fn fill(&mut self, s: Samples) {
        self.conn_per_s = spread(&s.conn);
        self.connect_p50_us = spread(&s.conn_p50);
        self.connect_p99_us = spread(&s.conn_p99);
        self.rr_p50_us = spread(&s.rr_p50);
        self.rr_p99_us = spread(&s.rr_p99);
        self.tcp_gbps = spread(&s.gbps);
        self.conn_errors = s.conn_errors;
        self.conn_first_error = s.conn_first_error;
        self.errors.extend(s.errors);
    }
}

/// Pass/fail of one bar (None: not measured).
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
    pub reps: u32,
    pub seconds: u64,
    pub counts: Vec<u32>,
    pub replicas: u32,
    pub filler_replicas: u32,
    pub points: Vec<Point>,
    pub checks: Vec<Check>,
    /// How the measured service's replicas were kept off host A.
    pub placement: Option<String>,
    /// Per-packet ns of the LB program (bench-prog), or why there are none.
    pub lb_prog: Value,
    /// Maglev table rebuild for 1,000 replicas, or why there is none.
    pub maglev: Value,
    /// Wall time of this part, setup and teardown included.
    pub took_s: f64,
    pub notes: Vec<String>,
    /// The SVG written next to the report, if any (file name).
    pub svg: Option<String>,
}

type Metric = fn(&Point) -> Option<&Spread>;

/// (title, unit, precision, higher is better, figure).
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
        "TCP throughput over one connection, Gbit/s (higher is better)",
        "Gbit/s",
        2,
        true,
        |p| p.tcp_gbps.as_ref(),
    ),
];

/// "Flat": the most services' median within 10% of the fewest services'
/// (in the worse direction), or their min–max ranges overlapping.
pub const FLAT_TOLERANCE: f64 = 0.10;
/// The bar at 1,000 services: eBPF connections/s at least this many times
/// iptables'.
pub const BAR_AT_1000: f64 = 10.0;

impl Report {
    pub fn bad(&self) -> bool {
        self.points
            .iter()
            .any(|p| p.failed.is_some() || !p.errors.is_empty() || p.conn_errors > 0)
    }

    fn point(&self, path: SvcPath, n: u32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.path == path && p.services == n)
    }

    /// eBPF median / iptables median of metric `m` at `n` services.
    fn vs(&self, m: usize, n: u32) -> Option<f64> {
        let f = METRICS[m].4;
        ratio(
            self.point(SvcPath::Ebpf, n).and_then(f).map(|s| s.median),
            self.point(SvcPath::Iptables, n)
                .and_then(f)
                .map(|s| s.median),
        )
    }

    /// A path's median of metric `m` at the most services / at the fewest.
    fn flatness(&self, m: usize, path: SvcPath) -> Option<f64> {
        let (lo, hi) = (*self.counts.first()?, *self.counts.last()?);
        let f = METRICS[m].4;
        (hi > lo).then(|| {
            ratio(
                self.point(path, hi).and_then(f).map(|s| s.median),
                self.point(path, lo).and_then(f).map(|s| s.median),
            )
        })?
    }
}

fn analyse(r: &mut Report) {
    let (Some(&lo), Some(&hi)) = (r.counts.first(), r.counts.last()) else {
        return;
    };
    fn conn(p: Option<&Point>) -> Option<&Spread> {
        p.and_then(|p| p.conn_per_s.as_ref())
    }
    let mut checks = Vec::new();
    if hi > lo {
        let x = r.flatness(0, SvcPath::Ebpf);
        let overlap = match (
            conn(r.point(SvcPath::Ebpf, lo)),
            conn(r.point(SvcPath::Ebpf, hi)),
        ) {
            (Some(a), Some(b)) => Some(a.min <= b.max && b.min <= a.max),
            _ => None,
        };
        let failed: u64 = [lo, hi]
            .iter()
            .filter_map(|&n| r.point(SvcPath::Ebpf, n))
            .map(|p| p.conn_errors)
            .sum();
        checks.push(Check {
            what: format!("eBPF connection rate flat from {lo} to {hi} services"),
            ok: x.map(|x| failed == 0 && (overlap == Some(true) || x >= 1.0 - FLAT_TOLERANCE)),
            detail: format!(
                "eBPF({hi})/eBPF({lo}) = {}{}{}; flat: within {:.0}% below, or min–max ranges \
                 that overlap, and no failed connection attempt",
                ratio_or(x, "not measured"),
                match overlap {
                    Some(true) => ", min–max ranges overlap",
                    Some(false) => ", min–max ranges apart",
                    None => "",
                },
                if failed > 0 {
                    format!(", {failed} failed connection attempt(s)")
                } else {
                    String::new()
                },
                FLAT_TOLERANCE * 100.0
            ),
        });
    }
    let x = r.vs(0, lo);
    checks.push(Check {
        what: format!("eBPF connection rate ahead of iptables at {lo} service(s)"),
        ok: x.map(|x| x > 1.0),
        detail: format!("eBPF/iptables = {}", ratio_or(x, "not measured")),
    });
    let at = 1_000;
    let x = r.vs(0, at);
    checks.push(Check {
        what: format!("eBPF connection rate at least {BAR_AT_1000:.0}x iptables' at {at} services"),
        ok: x.map(|x| x >= BAR_AT_1000),
        detail: if r.counts.contains(&at) {
            format!("eBPF/iptables = {}", ratio_or(x, "not measured"))
        } else {
            format!("not measured: {at} services were not part of this run")
        },
    });
    r.checks = checks;
}

/// The LB program's per-packet figures of bench-prog's JSON, if it has them.
pub fn lb_prog(prog: &Value) -> Value {
    if let Some(why) = prog["skipped"].as_str() {
        return serde_json::json!({ "skipped": why });
    }
    let keys: Vec<(&String, &Value)> = prog
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| {
            (k.starts_with("lb_") || k.starts_with("ingress_") || k.contains("maglev"))
                && k.ends_with("_ns")
                && v.is_number()
        })
        .collect();
    if keys.is_empty() {
        return serde_json::json!({
            "skipped": "bench-prog reports no LB case (no lb_*_ns / ingress_*_ns figure): the ingress program's case is not in it yet"
        });
    }
    let mut m = serde_json::Map::new();
    for (k, v) in keys {
        m.insert(k.clone(), v.clone());
    }
    for k in ["noop_single_median_ns", "single_calls"] {
        if !prog[k].is_null() {
            m.insert(k.into(), prog[k].clone());
        }
    }
    Value::Object(m)
}

/// The LB figures in the order the table shows them.
const LB_ORDER: [&str; 5] = [
    "ingress_new_median_ns",
    "ingress_hit_median_ns",
    "ingress_remote_new_median_ns",
    "ingress_remote_hit_median_ns",
    "noop_single_median_ns",
];

/// What a bench-prog LB figure measures.
fn lb_label(key: &str) -> String {
    match key {
        "ingress_new_median_ns" => {
            "SYN to an ingress port, replica on this host: new flow (Maglev pick, conntrack pair, DNAT)".into()
        }
        "ingress_hit_median_ns" => "ACK of that flow: conntrack hit, DNAT".into(),
        "ingress_remote_new_median_ns" => {
            "SYN to an ingress port, replica on another host: new flow, DNAT and VXLAN encapsulation".into()
        }
        "ingress_remote_hit_median_ns" => {
            "ACK of that flow: conntrack hit, DNAT, VXLAN encapsulation".into()
        }
        "noop_single_median_ns" => "noop program, measured the same way".into(),
        other => format!("`{other}`"),
    }
}

// ------------------------------------------------------------ the run

pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let started = Instant::now();
    let mut cl = Cleanup::default();
    let x = cfg
        .xtask
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", cfg.xtask.display()))?
        .to_string();
    let mut notes = Vec::new();
    sh::raise_nofile();
    p.step(&format!(
        "services: building the underlay, the client, kube-proxy's two hosts (kernel VXLAN) and ours \
         (etcd, two daemons, {} replica(s) of the measured service on host B)",
        cfg.replicas
    ));
    let u = Underlay::build(&mut cl, &format!("{}-su", cfg.tag), UNDERLAY)?;
    let client = format!("{}-sc", cfg.tag);
    u.add_host(&mut cl, &client, "sc", CLIENT_LAST)?;
    // The client opens tens of thousands of connections per run.
    lab::sysctl(&client, "net.ipv4.ip_local_port_range", "1024 65535")?;
    let mut points: Vec<Point> = Vec::new();
    for &n in &cfg.counts {
        for path in PATHS {
            points.push(Point::new(path, n));
        }
    }
    let fail_all = |points: &mut Vec<Point>, path: SvcPath, why: &str| {
        for pt in points.iter_mut().filter(|pt| pt.path == path) {
            pt.failed.get_or_insert_with(|| why.to_string());
        }
    };
    eprintln!("    building {}", SvcPath::Iptables.title());
    let kube = match build_kube(&mut cl, &u, cfg, &mut notes) {
        Ok(k) => Some(k),
        Err(e) => {
            sh::check_interrupted()?;
            eprintln!(
                "    error: {} could not be set up: {e:#}",
                SvcPath::Iptables.title()
            );
            fail_all(&mut points, SvcPath::Iptables, &format!("{e:#}"));
            None
        }
    };
    if let Some(k) = &kube {
        let a = k.a.clone();
        cl.push(format!("flush the iptables rules of {a}"), move || {
            flush_rules(&a)
        });
    }
    eprintln!("    building {}", SvcPath::Ebpf.title());
    let mut ours = match build_ours(&mut cl, &u, cfg) {
        Ok(o) => Some(o),
        Err(e) => {
            sh::check_interrupted()?;
            eprintln!(
                "    error: {} could not be set up: {e:#}",
                SvcPath::Ebpf.title()
            );
            fail_all(&mut points, SvcPath::Ebpf, &format!("{e:#}"));
            None
        }
    };
    let placement = ours.as_ref().map(|o| o.placement.clone());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    for (ci, &n) in cfg.counts.iter().enumerate() {
        p.step(&format!(
            "services: {n} service(s): installing, then {} rep(s) x 2 paths x {} s x 3 measurements",
            cfg.reps, cfg.seconds
        ));
        let mut targets: Vec<Target> = Vec::new();
        for path in PATHS {
            sh::check_interrupted()?;
            let Some(pt) = points
                .iter_mut()
                .find(|pt| pt.path == path && pt.services == n)
            else {
                continue;
            };
            if pt.failed.is_some() {
                continue;
            }
            let built = match path {
                SvcPath::Iptables => kube.as_ref().map(|k| {
                    k.install(cfg, n).map(|s| {
                        (
                            s,
                            Target {
                                path,
                                services: n,
                                client: client.clone(),
                                addr: k.a_ip.clone(),
                                replicas: k.replicas.iter().map(|(ns, _)| ns.clone()).collect(),
                            },
                        )
                    })
                }),
                SvcPath::Ebpf => ours.as_mut().map(|o| {
                    o.grow(cfg, n).map(|s| {
                        (
                            s,
                            Target {
                                path,
                                services: n,
                                client: client.clone(),
                                addr: o.a_ip.clone(),
                                replicas: o.replicas.iter().map(|(_, ns)| ns.clone()).collect(),
                            },
                        )
                    })
                }),
            };
            let Some(built) = built else { continue };
            let (s, t) = match built {
                Ok(st) => st,
                Err(e) => {
                    sh::check_interrupted()?;
                    let m = format!("{e:#}");
                    eprintln!("    error: {}, {n} service(s): {m}", path.title());
                    // A later count builds on this one: it is not reached.
                    for pt in points
                        .iter_mut()
                        .filter(|pt| pt.path == path && pt.services >= n)
                    {
                        pt.failed.get_or_insert_with(|| {
                            if pt.services == n {
                                m.clone()
                            } else {
                                format!("not reached: installing {n} service(s) failed")
                            }
                        });
                    }
                    continue;
                }
            };
            pt.install_s = Some(s);
            match probe(&x, &t) {
                Ok(ready) => {
                    eprintln!(
                        "    {}: installed in {s:.2} s, first connection after {ready:.2} s",
                        t.label()
                    );
                    pt.ready_s = Some(ready);
                    targets.push(t);
                }
                Err(e) => {
                    // Installed but carrying nothing: this count fails, the
                    // next one is still installed and tried.
                    sh::check_interrupted()?;
                    let m = format!("installed in {s:.2} s, but {e:#}");
                    eprintln!("    error: {}: {m}", t.label());
                    pt.failed = Some(m);
                }
            }
        }
        let before = ours.as_ref().map(Ours::counters);
        let mut samples: Vec<Samples> = targets.iter().map(|_| Samples::default()).collect();
        for rep in 1..=cfg.reps {
            let mut order: Vec<usize> = (0..targets.len()).collect();
            if (rep as usize + ci).is_multiple_of(2) {
                order.reverse();
            }
            for j in order {
                let line = measure(&x, &targets[j], cfg.seconds, &mut samples[j], rep)?;
                eprintln!("    rep {rep}/{}: {}: {line}", cfg.reps, targets[j].label());
            }
        }
        let drops = match (before, ours.as_ref().map(Ours::counters)) {
            (Some(b), Some(a)) => a.grown_drops(&b),
            _ => Vec::new(),
        };
        for (t, s) in targets.iter().zip(samples) {
            if let Some(pt) = points
                .iter_mut()
                .find(|pt| pt.path == t.path && pt.services == n)
            {
                pt.fill(s);
                if t.path == SvcPath::Ebpf {
                    pt.ebpf_drops = drops.clone();
                }
            }
        }
    }
    notes.push(
        "our daemons' socket-level hooks, if this build attaches them, are cgroup programs that \
         every connect() on the machine runs through, the iptables client's as much as ours"
            .into(),
    );
    drop(ours.take());
    drop(kube);
    drop(cl);
    let mut r = Report {
        command: String::new(),
        date: String::new(),
        kernel: first_line(&mut sh::cmd("uname", ["-srvm"])),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        loadavg,
        iptables: first_line(&mut sh::cmd("iptables-nft", ["--version"])),
        reps: cfg.reps,
        seconds: cfg.seconds,
        counts: cfg.counts.clone(),
        replicas: cfg.replicas,
        filler_replicas: cfg.filler_replicas,
        points,
        checks: Vec::new(),
        placement,
        lb_prog: lb_prog(&cfg.bpf_prog),
        maglev: {
            p.step("services: Maglev table rebuild (bench-maglev, xtask --features prog)");
            maglev()
        },
        took_s: started.elapsed().as_secs_f64(),
        notes,
        svg: None,
    };
    analyse(&mut r);
    Ok(r)
}

/// The Maglev rebuild times of xtask's `bench-maglev` (built release with
/// `--features prog`: it links the daemon's builder), or {"skipped": why}.
fn maglev() -> Value {
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
            "bench-maglev",
        ]),
        Some(Duration::from_secs(60 * 60)),
    )
    .and_then(|()| Ok(crate::target_dir()?.join("release").join("bench-maglev")));
    let exe = match built {
        Ok(exe) => exe,
        Err(e) => return skipped(format!("building bench-maglev: {e:#}")),
    };
    match sh::capture(&mut sh::cmd(&exe, [""; 0]), Some(Duration::from_secs(600))) {
        Err(e) => skipped(format!("{e:#}")),
        Ok(o) if !o.ok() => skipped(format!(
            "`bench-maglev` failed ({}): {}",
            o.status,
            sh::tail(&format!("{}{}", o.stderr, o.stdout), 3)
        )),
        Ok(o) => match serde_json::from_str::<Value>(&o.stdout) {
            Ok(v) if v["rows"].is_array() => v,
            _ => skipped(format!(
                "unexpected `bench-maglev` output: {}",
                sh::tail(&o.stdout, 3)
            )),
        },
    }
}

/// The rebuild table's rows: (replicas, median, min, max) in µs.
fn maglev_rows(v: &Value) -> Vec<(u64, f64, f64, f64)> {
    v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["replicas"].as_u64()?,
                r["median_us"].as_f64()?,
                r["min_us"].as_f64()?,
                r["max_us"].as_f64()?,
            ))
        })
        .collect()
}

// ------------------------------------------------------------ output

/// The result tables (terminal and BENCHMARKS.md).
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s per measurement, interleaved; medians over reps, spread is min–max; \
         everything to the measured service ({} replica(s) on host B) through host A.\n",
        r.reps, r.seconds, r.replicas
    );
    for (mi, (title, unit, prec, _, f)) in METRICS.into_iter().enumerate() {
        let _ = writeln!(o, "#### {title}\n");
        let _ = writeln!(
            o,
            "| services | iptables median ({unit}) | iptables spread | eBPF median ({unit}) | eBPF spread | eBPF / iptables |"
        );
        let _ = writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: |");
        for &n in &r.counts {
            let cell = |path: SvcPath| -> (String, String) {
                match r.point(path, n) {
                    Some(pt) if pt.failed.is_some() && pt.install_s.is_some() => {
                        ("no traffic".into(), String::new())
                    }
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
            let (im, is) = cell(SvcPath::Iptables);
            let (em, es) = cell(SvcPath::Ebpf);
            let _ = writeln!(
                o,
                "| {n} | {im} | {is} | {em} | {es} | {} |",
                ratio_cell(r.vs(mi, n))
            );
        }
        let _ = writeln!(o);
    }
    if let (Some(lo), Some(hi)) = (r.counts.first(), r.counts.last()) {
        if hi > lo {
            let _ = writeln!(
                o,
                "#### Flatness: median at {hi} services / median at {lo}\n"
            );
            let _ = writeln!(o, "| path | conn/s | rr p50 | rr p99 | Gbit/s |");
            let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: |");
            for path in PATHS {
                let c: Vec<String> = (0..METRICS.len())
                    .map(|m| ratio_cell(r.flatness(m, path)))
                    .collect();
                let _ = writeln!(o, "| {} | {} |", path.title(), c.join(" | "));
            }
            let _ = writeln!(o);
        }
    }
    let _ = writeln!(o, "#### Setup cost and connection latency\n");
    let _ = writeln!(
        o,
        "| path | services | installed in (s) | first connection after (s) | connect to first byte, p50 µs | p99 µs | failed connection attempts |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let med = |s: &Option<Spread>| {
        s.as_ref()
            .map_or("–".into(), |s| format!("{:.1}", s.median))
    };
    for pt in &r.points {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            pt.title,
            pt.services,
            pt.install_s.map_or("–".into(), |s| format!("{s:.2}")),
            pt.ready_s.map_or("–".into(), |s| format!("{s:.2}")),
            med(&pt.connect_p50_us),
            med(&pt.connect_p99_us),
            if pt.failed.is_some() {
                "–".into()
            } else {
                pt.conn_errors.to_string()
            }
        );
    }
    let _ = writeln!(
        o,
        "\n(Installed: iptables-nft-restore of the whole ruleset at once, faster than kube-proxy's \
         own syncs; for eBPF, `service create` of the services added since the previous count, one \
         at a time, until host A's `service ls` lists them all.)\n"
    );
    let _ = writeln!(o, "#### Maglev table rebuild\n");
    if let Some(why) = r.maglev["skipped"].as_str() {
        let _ = writeln!(o, "Not measured: {}\n", why.replace('\n', " "));
    } else {
        let _ = writeln!(
            o,
            "One service's table of {} entries built from scratch by the daemon's builder \
             (`dataplane_user::bpf::maglev::build`), {} builds per row, each timed alone:\n",
            r.maglev["table_size"], r.maglev["builds"]
        );
        let _ = writeln!(
            o,
            "| replicas | median µs | min–max µs |\n| ---: | ---: | ---: |"
        );
        for (n, med, lo, hi) in maglev_rows(&r.maglev) {
            let _ = writeln!(o, "| {n} | {med:.0} | {lo:.0}–{hi:.0} |");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "#### Per-packet cost of the LB program (BPF_PROG_TEST_RUN)\n"
    );
    match r.lb_prog["skipped"].as_str() {
        Some(why) => {
            let _ = writeln!(o, "Not measured: {}\n", why.replace('\n', " "));
        }
        None => {
            let _ = writeln!(
                o,
                "Medians of {} single-run BPF_PROG_TEST_RUN calls of the TC program on the \
                 receiving host's uplink, a fresh tuple per call for new flows (`bench-prog`):\n",
                r.lb_prog["single_calls"]
            );
            let _ = writeln!(o, "| packet | ns/packet |\n| --- | ---: |");
            // The known figures in reading order, then any others.
            let mut keys: Vec<&String> = r
                .lb_prog
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| k.ends_with("_ns"))
                .collect();
            keys.sort_by_key(|k| {
                (
                    LB_ORDER.iter().position(|o| o == k).unwrap_or(usize::MAX),
                    *k,
                )
            });
            for k in keys {
                let _ = writeln!(o, "| {} | {} |", lb_label(k), r.lb_prog[k.as_str()]);
            }
            let _ = writeln!(o);
        }
    }
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
            if !pt.ebpf_drops.is_empty() {
                parts.push(format!(
                    "host A's drop counters that grew while measuring: {}",
                    pt.ebpf_drops
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            format!(
                "{}, {} service(s): {}",
                pt.title,
                pt.services,
                parts.join("; ")
            )
        })
        .collect();
    md::bullets(&mut o, "Connection errors and drops", &odd);
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
                        "{}, {} service(s) could not be set up: {e}",
                        pt.title, pt.services
                    )
                })
                .chain(pt.errors.iter().cloned())
        })
        .map(|p| p.replace('|', "/"))
        .collect();
    md::bullets(&mut o, "Services failures", &problems);
    o
}

/// This part's section of BENCHMARKS.md; `svg` is the curve's file name.
pub fn markdown(r: &Report, svg: Option<&str>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (`cargo xtask bench --setups services` reruns only this section; \
         this run took {:.1} min on {} CPUs, setup and teardown included; it needs root, and builds, \
         measures and removes everything itself). Kernel `{}`, {}; load average when measuring \
         started: {}.\n",
        r.command,
        r.date,
        r.took_s / 60.0,
        r.nproc,
        r.kernel,
        r.iptables,
        r.loadavg
    );
    if let Some(f) = svg {
        let _ = writeln!(
            o,
            "![New TCP connections per second against the number of services, eBPF and iptables]({f})\n"
        );
    }
    let _ = writeln!(
        o,
        "A client outside the cluster connects to host A's address on the measured service's \
         published port {PORT}; the service's {} replica(s) all run on host B, so every connection \
         crosses the overlay from A to B and its replies come back through A. One underlay netns \
         with a Linux bridge ({UNDERLAY}.1/24, the switch) carries a client netns (.{CLIENT_LAST}) \
         and two hosts per path; both paths are built before measuring and stay up for the whole \
         run. Service counts: {}, in ascending order; at each count both paths are brought to it, \
         then their repetitions are interleaved (rep 1: iptables then eBPF, rep 2: eBPF then \
         iptables, ...).\n",
        r.replicas,
        r.counts
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        o,
        "- **{}**: what Kubernetes users would otherwise have here. Hosts A' (.21) and B' (.22), \
         each with a Linux bridge and a kernel `vxlan` device on it (VNI {VNI}, dstport 4789, \
         nolearning; static FDB and permanent neighbour entries, as flannel and Docker's overlay \
         driver install them; MTU 1450), the replicas in netns on B''s bridge ({POD_NET}.1.x/16), \
         A''s bridge at {POD_NET}.0.1/16, ip_forward=1. On A', the rules kube-proxy's iptables \
         mode writes for services exposed on the node's address as external IPs, loaded with \
         `iptables-nft-restore` (iptables-nft, this machine's default): nat `PREROUTING -> \
         KUBE-SERVICES` with one `-d A'/32 -p tcp -m tcp --dport P -j KUBE-EXT-x` per service (the \
         measured service's is the **last** of the chain: the worst case of its linear walk), \
         `KUBE-EXT-x -> KUBE-MARK-MASQ, KUBE-SVC-x`, per service a chain of `-m statistic --mode \
         random --probability 1/(n-k)` jumps to per-endpoint `KUBE-SEP-x-k` chains that DNAT to \
         the replica, `KUBE-POSTROUTING` MASQUERADE (`--random-fully`) of the marked traffic, and \
         filter `FORWARD -> KUBE-FORWARD` (INVALID drop, accept marked and \
         RELATED,ESTABLISHED). The other services' endpoints are addresses of the pod /16 that \
         nothing answers: their chains are never walked, only their KUBE-SERVICES matches are \
         passed. The replicas see A''s bridge address, not the client's.",
        SvcPath::Iptables.title()
    );
    let _ = writeln!(
        o,
        "- **{}**: etcd on the underlay, a `dataplane daemon --store etcd://...` on hosts A (.31) \
         and B (.32) (nsenter, own run/state dirs and bpffs pins), `network create --driver \
         overlay --subnet {OVERLAY_SUBNET} {NETWORK}`, and `service create --replicas N --network \
         {NETWORK} --publish published=P,target={TARGET},mode=ingress -- sleep infinity` per \
         service; host A answers P on its own address and sends each new flow, by Maglev over the \
         5-tuple, through our eBPF VXLAN to a replica on B. Placement: {}.\n",
        SvcPath::Ebpf.title(),
        r.placement
            .as_deref()
            .unwrap_or("(the path was not set up)")
    );
    let _ = writeln!(
        o,
        "The services: the measured one has {} replica(s) (so iptables walks a statistic chain of \
         {} jump(s)); every other service has {} replica(s) and its own published port \
         ({}..{}); for iptables the measured service is the last added (its match is the last of \
         KUBE-SERVICES), for eBPF it is the first (created while B was alone; a hash lookup does \
         not depend on the order). Our other services' replicas are real sandboxes, placed by the \
         daemons on A and B.\n",
        r.replicas,
        r.replicas.saturating_sub(1),
        r.filler_replicas,
        PORT + 1,
        PORT as u32 + r.counts.last().copied().unwrap_or(1) - 1
    );
    let _ = writeln!(
        o,
        "Per path, count and rep, with servers started in every replica's netns on port {TARGET}, \
         one kind after the other: **new TCP connections per second**: `xtask conn-client` (release, \
         single-threaded) connects, reads the one byte `xtask conn-server` writes on accept, and \
         closes with SO_LINGER 0 (an RST, no TIME_WAIT), for {0} s after a 0.2 s warm-up, every \
         connection a new flow through the balancer; **request/response latency**: the built-in \
         1-byte TCP ping-pong over one connection, p50 and p99, {0} s; **throughput**: `xtask \
         stream-client`, one TCP connection read for {0} s (iperf3's control and data connections \
         could reach different replicas). Ratios are eBPF median / iptables median at the same \
         count; flatness is a path's median at the most services / at the fewest.\n",
        r.seconds
    );
    for n in &r.notes {
        let dot = if n.ends_with('.') { "" } else { "." };
        let _ = writeln!(o, "Note: {n}{dot}\n");
    }
    o.push_str(&table(r));
    o
}

/// `existing` without this part's section, and that section.
pub fn split(existing: &str) -> (String, Option<String>) {
    md::split_section(existing, HEADING_PREFIX)
}

/// The SVG's file name beside the report `out`.
pub fn svg_path(out: &Path) -> PathBuf {
    plot::beside(out, "services")
}

/// Connections/s against the number of services, both paths.
pub fn svg(r: &Report, path: &Path) -> Result<bool> {
    let series: Vec<plot::Series> = PATHS
        .iter()
        .map(|&p| plot::Series {
            label: p.title(),
            rgb: match p {
                SvcPath::Iptables => plot::RED,
                SvcPath::Ebpf => plot::BLUE,
            },
            points: r
                .points
                .iter()
                .filter(|pt| pt.path == p)
                .filter_map(|pt| pt.conn_per_s.clone().map(|s| (pt.services as f64, s)))
                .collect(),
        })
        .collect();
    plot::curve(
        path,
        &plot::Labels {
            caption: "New TCP connections/s through host A to a service on host B",
            x: "services installed (log scale)",
            y: "connections/s (median; bars: min–max over reps)",
        },
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_as_kube_proxy_prints_them() {
        assert_eq!(probability(0, 3), "0.3333333333");
        assert_eq!(probability(1, 3), "0.5000000000");
        assert_eq!(probability(0, 2), "0.5000000000");
    }

    #[test]
    fn filler_endpoints_are_distinct_pod_addresses() {
        let mut seen = std::collections::BTreeSet::new();
        for k in 1..=MAX_COUNT {
            for r in 0..4 {
                let ep = filler_endpoint(k, r);
                assert!(ep.starts_with("10.202."), "{ep}");
                let last: u32 = ep.rsplit('.').next().unwrap().parse().unwrap();
                assert!((1..=250).contains(&last), "{ep}");
                // Never the measured replicas' 10.202.1.x or A''s 10.202.0.1.
                assert!(
                    !ep.starts_with("10.202.0.") && !ep.starts_with("10.202.1."),
                    "{ep}"
                );
                assert!(seen.insert(ep));
            }
        }
    }

    #[test]
    fn rules_walk_every_service_before_the_measured_one() {
        let eps: Vec<String> = (1..=3).map(|r| format!("10.202.1.{r}")).collect();
        let r = kube_rules("192.168.242.21", &eps, 2, 1);
        let svc: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES "))
            .collect();
        assert_eq!(svc.len(), 3);
        assert!(
            svc[0].contains("--dport 30001 -j KUBE-EXT-S00001"),
            "{}",
            svc[0]
        );
        assert!(svc[2].contains("-d 192.168.242.21/32 -p tcp"), "{}", svc[2]);
        assert!(
            svc[2].ends_with("--dport 30000 -j KUBE-EXT-S00000"),
            "{}",
            svc[2]
        );
        // The measured service: 1/3, 1/2, then the last endpoint unconditionally.
        let m: Vec<&str> = r
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC-S00000 "))
            .collect();
        assert_eq!(m.len(), 3);
        assert!(m[0].contains("--probability 0.3333333333 -j KUBE-SEP-S00000-0"));
        assert!(m[1].contains("--probability 0.5000000000 -j KUBE-SEP-S00000-1"));
        assert!(!m[2].contains("statistic") && m[2].ends_with("-j KUBE-SEP-S00000-2"));
        assert!(r.contains(
            "-A KUBE-SEP-S00000-2 -p tcp -m tcp -j DNAT --to-destination 10.202.1.3:8080"
        ));
        // A one-endpoint filler has no statistic match.
        assert_eq!(
            r.lines()
                .filter(|l| l.starts_with("-A KUBE-SVC-S00001 "))
                .filter(|l| l.contains("statistic"))
                .count(),
            0
        );
        assert_eq!(r.matches("-j DNAT").count(), 3 + 2);
        assert_eq!(r.matches("MASQUERADE --random-fully").count(), 1);
        // Every chain jumped to is declared.
        for l in r.lines().filter(|l| l.starts_with("-A ")) {
            if let Some(to) = l.split(" -j ").nth(1).map(|t| t.split(' ').next().unwrap()) {
                if to.starts_with("KUBE-") {
                    assert!(r.contains(&format!(":{to} - [0:0]")), "{to} undeclared");
                }
            }
        }
        assert_eq!(r.matches("COMMIT").count(), 2);
        // Chain names fit iptables' 28 characters.
        assert!("KUBE-SEP-S00999-15".len() <= 28);
    }

    #[test]
    fn tasks_from_service_ps() {
        // The shape of `service ps NAME --format json`.
        let v = serde_json::json!([
            {"ID": "t1", "Name": "svcm.1", "Node": "hostb", "Placed": true, "State": "running",
             "Container": "svcm.1.0123", "IP": "10.203.0.3", "Live": true},
            {"ID": "t2", "Name": "svcm.2", "Node": "hostb", "Placed": true, "State": "starting",
             "Container": "svcm.2.4567", "IP": ""},
            {"ID": "t3", "Name": "svcm.3", "Node": "", "Placed": false, "State": "pending", "Container": ""}
        ]);
        let t = parse_tasks(&v);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            Task {
                container: "svcm.1.0123".into(),
                node: "hostb".into(),
                state: "running".into()
            }
        );
        assert!(running(&t[0]) && !running(&t[1]));
        assert!(parse_tasks(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn services_converged_when_every_replica_is_live() {
        let v = serde_json::json!([
            {"Name": "a", "Replicas": "3/3"}, {"Name": "b", "Replicas": "0/1"},
            {"Name": "c", "Replicas": "0/0"}, {"Name": "d"}
        ]);
        assert_eq!(converged(&v), (4, 2));
        assert_eq!(converged(&serde_json::json!([])), (0, 0));
    }

    #[test]
    fn lb_figures_or_why_not() {
        let s = lb_prog(&serde_json::json!({"skipped": "no root"}));
        assert_eq!(s["skipped"], "no root");
        let old =
            lb_prog(&serde_json::json!({"from_container_median_ns": 30, "encap_median_ns": 40}));
        assert!(old["skipped"].as_str().unwrap().contains("LB case"));
        let new = lb_prog(&serde_json::json!({
            "from_container_median_ns": 30, "ingress_new_median_ns": 55,
            "ingress_remote_hit_median_ns": 40, "noop_single_median_ns": 9, "single_calls": 7
        }));
        assert_eq!(new["ingress_new_median_ns"], 55);
        assert_eq!(new["single_calls"], 7);
        assert!(new["from_container_median_ns"].is_null());
        let mut r = report(vec![pt(SvcPath::Ebpf, 1, 1.0)], vec![1]);
        r.lb_prog = new;
        let t = table(&r);
        assert!(t.contains("Medians of 7 single-run"), "{t}");
        assert!(t.contains("| SYN to an ingress port, replica on this host: new flow (Maglev pick, conntrack pair, DNAT) | 55 |"), "{t}");
        assert!(
            t.contains("| noop program, measured the same way | 9 |"),
            "{t}"
        );
    }

    fn pt(path: SvcPath, n: u32, conn: f64) -> Point {
        let s = |v: f64| spread(&[v * 0.95, v, v * 1.05]);
        let mut p = Point::new(path, n);
        p.install_s = Some(0.5);
        p.ready_s = Some(0.1);
        p.conn_per_s = s(conn);
        p.rr_p50_us = s(40.0);
        p.rr_p99_us = s(80.0);
        p.tcp_gbps = s(5.0);
        p
    }

    fn report(points: Vec<Point>, counts: Vec<u32>) -> Report {
        let mut r = Report {
            command: "cargo xtask bench --setups services".into(),
            date: "today".into(),
            kernel: "k".into(),
            nproc: 2,
            loadavg: "0".into(),
            iptables: "iptables v1.8.9 (nf_tables)".into(),
            reps: 3,
            seconds: 3,
            counts,
            replicas: 3,
            filler_replicas: 1,
            points,
            checks: Vec::new(),
            placement: Some("B first".into()),
            lb_prog: serde_json::json!({"skipped": "not yet"}),
            maglev: serde_json::json!({"table_size": 16381, "builds": 31, "rows": [
                {"replicas": 1000, "median_us": 900.4, "min_us": 850.0, "max_us": 1200.0}
            ]}),
            took_s: 600.0,
            notes: vec!["a note".into()],
            svg: None,
        };
        analyse(&mut r);
        r
    }

    #[test]
    fn bars_ratios_and_tables() {
        let r = report(
            vec![
                pt(SvcPath::Iptables, 1, 9_000.0),
                pt(SvcPath::Ebpf, 1, 10_000.0),
                pt(SvcPath::Iptables, 100, 5_000.0),
                pt(SvcPath::Ebpf, 100, 10_000.0),
                pt(SvcPath::Iptables, 1000, 900.0),
                pt(SvcPath::Ebpf, 1000, 9_800.0),
            ],
            vec![1, 100, 1000],
        );
        assert!(!r.bad());
        assert!((r.vs(0, 1000).unwrap() - 9_800.0 / 900.0).abs() < 1e-9);
        assert!((r.flatness(0, SvcPath::Iptables).unwrap() - 0.1).abs() < 1e-9);
        assert!(
            r.checks.iter().all(|c| c.ok == Some(true)),
            "{:?}",
            r.checks
        );
        let t = table(&r);
        assert!(
            t.contains("| 1000 | 900 | 855–945 | 9800 | 9310–10290 | 10.89x |"),
            "{t}"
        );
        assert!(t.contains("| 1000 | 900 | 850–1200 |"), "{t}");
        assert!(
            t.contains("(BPF_PROG_TEST_RUN)\n\nNot measured: not yet"),
            "{t}"
        );
        let md = markdown(&r, Some("BENCHMARKS-services.svg"));
        assert!(md.starts_with(HEADING));
        assert!(md.contains("](BENCHMARKS-services.svg)"));
        assert!(md.contains("Note: a note."));
        let (rest, sec) = split(&format!("# B\n\n{md}\n## Later\n\nx\n"));
        assert_eq!(rest, "# B\n\n## Later\n\nx\n");
        assert!(sec.unwrap().starts_with(HEADING));
        let dir = std::env::temp_dir().join(format!("svcbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = svg_path(&dir.join("BENCHMARKS.md"));
        assert!(f.ends_with("BENCHMARKS-services.svg"));
        assert!(svg(&r, &f).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn below_the_bar_or_not_measured_is_said() {
        let mut slow = pt(SvcPath::Ebpf, 1000, 5_000.0);
        slow.conn_errors = 2;
        let mut failed = Point::new(SvcPath::Iptables, 1000);
        failed.failed = Some("no rules".into());
        let r = report(
            vec![
                pt(SvcPath::Iptables, 1, 11_000.0),
                pt(SvcPath::Ebpf, 1, 10_000.0),
                failed,
                slow,
            ],
            vec![1, 1000],
        );
        assert!(r.bad());
        let ok: Vec<Option<bool>> = r.checks.iter().map(|c| c.ok).collect();
        assert_eq!(ok, vec![Some(false), Some(false), None], "{:?}", r.checks);
        let t = table(&r);
        assert!(t.contains("not set up"), "{t}");
        assert!(t.contains("could not be set up: no rules"), "{t}");
        // Only 1 and 100: the 1,000 bar is not measured, and says why.
        let r = report(
            vec![pt(SvcPath::Iptables, 1, 1.0), pt(SvcPath::Ebpf, 1, 2.0)],
            vec![1],
        );
        assert_eq!(r.checks.len(), 2);
        assert!(r.checks[1].detail.contains("not part of this run"));
    }
}

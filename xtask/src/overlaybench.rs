//! The cross-host part of `cargo xtask bench` (`--setups overlay`): two
//! hosts on one underlay, one container each, three ways of joining them,
//! measured in one run with the repetitions interleaved:
//!
//! ```text
//! underlay netns: bridge br0 192.168.240.1/24 (the physical switch; etcd listens here for (c))
//!   |-- host netns eth0 192.168.240.11/21/31 -- veth -- container netns eth0
//!   `-- host netns eth0 192.168.240.12/22/32 -- veth -- container netns eth0
//! ```
//!
//! - (a) routed: no tunnel. Each container is on a /24 of its host
//!   (10.201.1.0/24, 10.201.2.0/24), each host routes the other's /24 via
//!   the other host's underlay address (ip_forward=1). The floor.
//! - (b) kernel VXLAN as Docker's overlay driver builds it: per host a Linux
//!   bridge with a kernel `vxlan` device (VNI 4242, dstport 4789,
//!   nolearning, proxy) and the container's veth on it; static FDB and
//!   neighbour entries for the other host's container; containers on one
//!   /24 (10.201.3.0/24) with Docker's overlay MTU of 1450.
//! - (c) ours: a `dataplane daemon --store etcd://192.168.240.1:2379` per
//!   host, one `network create --driver overlay`, one `run` per host; the
//!   TC programs encapsulate and decapsulate.
//!
//! The multi-host pieces (underlay, etcd, a daemon with `--store`) are
//! also used by `clusterbench`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    bench::{self, Cores, LatencyTool, Pair, Samples},
    lab::{self, addr, in_netns, Cleanup, Sandbox},
    md,
    sh::{self, cmd},
    stats::{figure_table, spread, FigureRow, Spread},
    Progress,
};

/// The heading that starts this part's section of BENCHMARKS.md.
pub const HEADING: &str = "## Overlay: two hosts, routed vs kernel VXLAN vs eBPF VXLAN";
const HEADING_PREFIX: &str = "## Overlay";

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCD_PORT: u16 = 2379;
/// The underlay /24 of this part (only inside its own namespaces).
const UNDERLAY: &str = "192.168.240";
const VNI: &str = "4242";
const NETWORK: &str = "ovbench";
const SHORT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------ the lab pieces

/// An underlay netns with a Linux bridge `br0` at `PREFIX.1/24`.
pub struct Underlay {
    pub ns: String,
    pub prefix: String,
}

impl Underlay {
    pub fn build(cl: &mut Cleanup, ns: &str, prefix: &str) -> Result<Self> {
        cl.netns(ns)?;
        // A fixed MAC: a bridge without one takes its lowest port's, so
        // plugging in a host would change the gateway's MAC under the
        // hosts that already resolved it (their TCP to etcd then stalls
        // until their ARP entry goes stale).
        lab::ip(
            ns,
            &[
                "link",
                "add",
                "br0",
                "address",
                "02:00:00:00:00:01",
                "type",
                "bridge",
            ],
        )?;
        addr(ns, "br0", &format!("{prefix}.1/24"))?;
        Ok(Self {
            ns: ns.to_string(),
            prefix: prefix.to_string(),
        })
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// A new host netns `host` whose eth0 (`PREFIX.last/24`) is plugged
    /// into the bridge through the port `port`; returns its address.
    pub fn add_host(&self, cl: &mut Cleanup, host: &str, port: &str, last: u8) -> Result<String> {
        cl.netns(host)?;
        lab::ip(
            &self.ns,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", host,
            ],
        )?;
        lab::ip(&self.ns, &["link", "set", port, "master", "br0", "up"])?;
        let ip = format!("{}.{last}", self.prefix);
        addr(host, "eth0", &format!("{ip}/24"))?;
        Ok(ip)
    }
}

/// etcd in a netns (its own data dir), stopped on drop.
pub struct Etcd {
    child: Option<Child>,
    ns: String,
    /// `IP:PORT` of its client URL.
    pub endpoint: String,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd in `ns` listening on `ip:ETCD_PORT` and waits (bounded)
    /// until `/health` answers true.
    pub fn start(ns: &str, ip: &str, dir: &Path) -> Result<Self> {
        if !Path::new(ETCD_BIN).is_file() {
            bail!("{ETCD_BIN} is missing: run `cargo xtask setup` (Debian's etcd-server)");
        }
        std::fs::create_dir_all(dir)?;
        let client = format!("http://{ip}:{ETCD_PORT}");
        // The peer URL is the underlay netns' own loopback: one member.
        let peer = "http://127.0.0.1:2380";
        let log = dir.join("etcd.log");
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = cmd("nsenter", [format!("--net=/var/run/netns/{ns}")]);
        c.arg(ETCD_BIN)
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .args(["--listen-metrics-urls", &format!("http://{ip}:2381")])
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
        let mut e = Self {
            child: Some(sh::spawn(&mut c)?),
            ns: ns.to_string(),
            endpoint: format!("{ip}:{ETCD_PORT}"),
            log,
        };
        let health = format!("{client}/health");
        let ok = lab::poll(Duration::from_secs(20), Duration::from_millis(100), || {
            if let Some(ch) = e.child.as_mut() {
                if let Some(st) = ch.try_wait()? {
                    bail!("etcd exited ({st}): {}", e.log_tail());
                }
            }
            let o = sh::capture(
                &mut in_netns(&e.ns, &["curl", "-s", "-m", "2", &health]),
                Some(SHORT),
            )?;
            Ok(o.stdout.contains(r#""health":"true""#).then_some(()))
        })?;
        if ok.is_none() {
            bail!(
                "etcd did not become healthy within 20 s; its log: {}",
                e.log_tail()
            );
        }
        Ok(e)
    }

    fn log_tail(&self) -> String {
        sh::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 6)
    }

    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint)
    }

    /// Its Prometheus `/metrics` (on the metrics URL), summed over labels
    /// per metric name.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let host = self.endpoint.split(':').next().unwrap_or_default();
        let url = format!("http://{host}:2381/metrics");
        let out = sh::output(
            &mut in_netns(&self.ns, &["curl", "-s", "-m", "5", &url]),
            Some(SHORT),
        )
        .context("reading etcd's /metrics")?;
        Ok(parse_metrics(&out))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _c = sh::Cleaning::enter();
            sh::stop_group(&mut ch, Duration::from_secs(5));
        }
    }
}

/// Prometheus text format: `name{labels} value` lines, summed per name.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (name_labels, value) = match l.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let name = name_labels.split('{').next().unwrap_or_default().trim();
        if let Ok(v) = value.trim().parse::<f64>() {
            *m.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// A `dataplane daemon --store ... --node-name ... --advertise-addr ...`
/// in a host netns (nsenter, own run/state dirs and bpffs pins). Dropping
/// it removes the containers it ran, stops it and deletes their netns.
pub struct Node {
    pub name: String,
    pub bin: PathBuf,
    pub sock: PathBuf,
    pub bpffs: PathBuf,
    log: PathBuf,
    /// `nsenter` arguments that start the daemon.
    argv: Vec<std::ffi::OsString>,
    child: Option<Child>,
    containers: Vec<String>,
    sandboxes: Vec<String>,
}

impl Node {
    /// Starts the daemon without waiting for it (see [`Node::wait_ready`]).
    /// `extra`: more `daemon` flags (e.g. `--lease-ttl`).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        bin: &Path,
        ns: &str,
        name: &str,
        ip: &str,
        store: &str,
        dir: &Path,
        bpffs: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(dir.join("state"))?;
        let log = dir.join("daemon.log");
        File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut argv: Vec<std::ffi::OsString> = vec![
            format!("--net=/var/run/netns/{ns}").into(),
            bin.into(),
            "daemon".into(),
            "--run-dir".into(),
            run.clone().into(),
            "--state-dir".into(),
            dir.join("state").into(),
            "--bpffs".into(),
            bpffs.into(),
        ];
        // No store: a host alone (its own embedded store), as the LAN
        // benchmark runs them.
        let cluster = [
            "--store",
            store,
            "--node-name",
            name,
            "--advertise-addr",
            ip,
        ];
        let cluster: &[&str] = if store.is_empty() { &[] } else { &cluster };
        for a in cluster.iter().chain(extra) {
            argv.push(a.into());
        }
        let mut n = Self {
            name: name.to_string(),
            bin: bin.to_path_buf(),
            sock: run.join("api.sock"),
            bpffs: bpffs.to_path_buf(),
            log,
            argv,
            child: None,
            containers: Vec::new(),
            sandboxes: Vec::new(),
        };
        n.start()?;
        Ok(n)
    }

    /// Starts the daemon process (its log appended to).
    fn start(&mut self) -> Result<()> {
        let f = File::options()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut c = cmd("nsenter", &self.argv);
        c.env_remove("DATAPLANE_HOST")
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
        self.child = Some(sh::spawn(&mut c)?);
        Ok(())
    }

    /// Starts the daemon again if it has exited (e.g. etcd did not answer
    /// its first list in time on a loaded machine); whether it had.
    pub fn restart_if_exited(&mut self) -> Result<bool> {
        if self.pid().is_some() {
            return Ok(false);
        }
        if let Some(mut ch) = self.child.take() {
            let _ = ch.wait();
        }
        self.start()?;
        Ok(true)
    }

    pub fn log_tail(&self) -> String {
        sh::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 6)
    }

    /// Waits (bounded) until `network ls` answers.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let ok = lab::poll(limit, Duration::from_millis(100), || {
            if let Some(ch) = self.child.as_mut() {
                if let Some(st) = ch.try_wait()? {
                    self.child = None;
                    bail!(
                        "the daemon of {} exited ({st}) before it was ready: {}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            let o = sh::capture(
                &mut self.client(&["network", "ls"]),
                Some(Duration::from_secs(5)),
            );
            Ok(matches!(o, Ok(ref o) if o.ok()).then_some(()))
        })?;
        if ok.is_none() {
            bail!(
                "the daemon of {} did not answer within {} s; its log: {}",
                self.name,
                limit.as_secs(),
                self.log_tail()
            );
        }
        Ok(start.elapsed())
    }

    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--host")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env_remove("DATAPLANE_HOST");
        c
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
        sh::output(&mut self.client(args), Some(Duration::from_secs(60)))
            .with_context(|| format!("on {}", self.name))
    }

    /// Registers a container before creating it, so that drop removes it.
    pub fn track(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    pub fn track_netns(&mut self, ns: &str) {
        self.sandboxes.push(ns.to_string());
    }

    /// `run -d --name NAME --network NET -- sleep infinity`, then inspect.
    pub fn run(&mut self, name: &str, network: &str) -> Result<Sandbox> {
        self.track(name);
        self.cli(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--",
            "sleep",
            "infinity",
        ])?;
        self.sandbox(name, network)
    }

    /// `inspect NAME`: its netns (tracked) and address.
    pub fn sandbox(&mut self, name: &str, network: &str) -> Result<Sandbox> {
        let out = self.cli(&["inspect", name])?;
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("parsing `inspect {name}`"))?;
        let (key, ip) = lab::sandbox_of(&v, network)
            .with_context(|| format!("reading `inspect {name}`: {out}"))?;
        let netns = Path::new(&key)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad SandboxKey {key:?}"))?
            .to_string();
        self.track_netns(&netns);
        Ok(Sandbox {
            name: name.to_string(),
            netns,
            ip,
        })
    }

    pub fn pid(&mut self) -> Option<u32> {
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        alive.then(|| self.child.as_ref().map(Child::id)).flatten()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _c = sh::Cleaning::enter();
        if self.pid().is_some() && !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            let limit = Duration::from_secs(60) + Duration::from_millis(250) * args.len() as u32;
            if let Ok(o) = sh::capture(&mut self.client(&args), Some(limit)) {
                if !o.ok() {
                    eprintln!(
                        "    warning: {}: rm -f: {}",
                        self.name,
                        sh::tail(&o.stderr, 3)
                    );
                }
            }
        }
        if let Some(mut ch) = self.child.take() {
            sh::stop_group(&mut ch, Duration::from_secs(10));
        }
        for ns in &self.sandboxes {
            if let Some(w) = lab::netns_delete(ns) {
                eprintln!("    warning: deleting sandbox netns {ns}: {w}");
            }
        }
    }
}

/// A container netns `cns` joined to host netns `host` by a veth: `eth0`
/// inside (address `cidr`, `mtu`, optional MAC), `host_dev` on the host.
fn container(
    cl: &mut Cleanup,
    host: &str,
    cns: &str,
    host_dev: &str,
    cidr: &str,
    mtu: &str,
    mac: Option<&str>,
) -> Result<()> {
    cl.netns(cns)?;
    lab::ip(
        host,
        &[
            "link", "add", host_dev, "mtu", mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            mtu, "netns", cns,
        ],
    )?;
    if let Some(m) = mac {
        lab::ip(cns, &["link", "set", "eth0", "address", m])?;
    }
    addr(cns, "eth0", cidr)?;
    Ok(())
}

// ------------------------------------------------------------ the setups

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    Routed,
    Kernel,
    Ours,
}

impl Setup {
    fn title(self) -> &'static str {
        match self {
            Setup::Routed => "(a) routed, no tunnel",
            Setup::Kernel => "(b) kernel VXLAN (Docker overlay)",
            Setup::Ours => "(c) dataplane eBPF VXLAN",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Setup::Routed => {
                "hosts .11 and .12; containers 10.201.1.2/24 and 10.201.2.2/24 behind veths into their \
                 host (gateway .1), each host routing the other's /24 via the other host's underlay \
                 address (ip_forward=1); MTU 1500, no encapsulation"
            }
            Setup::Kernel => {
                "hosts .21 and .22; per host a Linux bridge with a kernel vxlan device (VNI 4242, \
                 dstport 4789, local = the host's underlay address, nolearning, proxy) and the \
                 container's veth on it; a static FDB entry (the other container's MAC -> the other \
                 host) and a permanent neighbour entry on the vxlan device, as Docker's overlay driver \
                 installs them; containers 10.201.3.1/24 and 10.201.3.2/24, MTU 1450"
            }
            Setup::Ours => {
                "hosts .31 and .32, each a `dataplane daemon --store etcd://192.168.240.1:2379 \
                 --node-name --advertise-addr` (nsenter, own run/state dirs and bpffs pins); \
                 `network create --driver overlay --subnet 10.201.4.0/24` on the first, one \
                 `run -d -- sleep infinity` on each; the TC programs encapsulate (from_container) \
                 and decapsulate (from_uplink on eth0)"
            }
        }
    }
}

pub struct Config {
    pub reps: u32,
    pub seconds: u64,
    pub tool: LatencyTool,
    pub cores: Vec<Cores>,
    pub dataplane: PathBuf,
    pub tag: String,
    pub dir: PathBuf,
    /// `bench-prog`'s JSON (or {"skipped": why}).
    pub bpf_prog: Value,
}

fn build_routed(cl: &mut Cleanup, u: &Underlay, tag: &str) -> Result<Pair> {
    let (h1, h2) = (format!("{tag}-oa1"), format!("{tag}-oa2"));
    let (c1, c2) = (format!("{tag}-oac1"), format!("{tag}-oac2"));
    let ip1 = u.add_host(cl, &h1, "oa1", 11)?;
    let ip2 = u.add_host(cl, &h2, "oa2", 12)?;
    for (h, c, n, other, peer_ip) in [(&h1, &c1, 1, 2, &ip2), (&h2, &c2, 2, 1, &ip1)] {
        container(cl, h, c, "c0", &format!("10.201.{n}.2/24"), "1500", None)?;
        addr(h, "c0", &format!("10.201.{n}.1/24"))?;
        lab::ip(
            c,
            &["route", "add", "default", "via", &format!("10.201.{n}.1")],
        )?;
        lab::ip(
            h,
            &[
                "route",
                "add",
                &format!("10.201.{other}.0/24"),
                "via",
                peer_ip,
            ],
        )?;
        lab::sysctl(h, "net.ipv4.ip_forward", "1")?;
    }
    Ok(Pair {
        kind: bench::Kind::Overlay,
        client: c1,
        server: c2,
        server_ip: "10.201.2.2".into(),
    })
}

fn build_kernel(cl: &mut Cleanup, u: &Underlay, tag: &str) -> Result<Pair> {
    let (h1, h2) = (format!("{tag}-ob1"), format!("{tag}-ob2"));
    let (c1, c2) = (format!("{tag}-obc1"), format!("{tag}-obc2"));
    let ip1 = u.add_host(cl, &h1, "ob1", 21)?;
    let ip2 = u.add_host(cl, &h2, "ob2", 22)?;
    let macs = ["02:42:0a:c9:03:01", "02:42:0a:c9:03:02"];
    let ips = ["10.201.3.1", "10.201.3.2"];
    let hosts = [(&h1, &c1, &ip1, 0usize), (&h2, &c2, &ip2, 1usize)];
    for (h, c, local, i) in hosts {
        let (remote, j) = if i == 0 { (&ip2, 1) } else { (&ip1, 0) };
        lab::ip(h, &["link", "add", "br0", "type", "bridge"])?;
        lab::ip(
            h,
            &[
                "link",
                "add",
                "vxlan0",
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
                "proxy",
            ],
        )?;
        lab::ip(h, &["link", "set", "vxlan0", "mtu", "1450"])?;
        lab::ip(h, &["link", "set", "vxlan0", "master", "br0", "up"])?;
        container(
            cl,
            h,
            c,
            "c0",
            &format!("{}/24", ips[i]),
            "1450",
            Some(macs[i]),
        )?;
        lab::ip(h, &["link", "set", "c0", "master", "br0", "up"])?;
        lab::ip(h, &["link", "set", "br0", "up"])?;
        sh::output(
            &mut cmd(
                "bridge",
                [
                    "-n",
                    h,
                    "fdb",
                    "add",
                    macs[j],
                    "dev",
                    "vxlan0",
                    "dst",
                    remote,
                    "self",
                    "permanent",
                ],
            ),
            Some(SHORT),
        )?;
        lab::ip(
            h,
            &[
                "neigh",
                "add",
                ips[j],
                "lladdr",
                macs[j],
                "dev",
                "vxlan0",
                "nud",
                "permanent",
            ],
        )?;
    }
    Ok(Pair {
        kind: bench::Kind::Overlay,
        client: c1,
        server: c2,
        server_ip: ips[1].into(),
    })
}

/// What (c) holds while it is measured: dropped daemons first, then etcd.
struct Ours {
    nodes: Vec<Node>,
    _etcd: Etcd,
}

fn build_ours(
    cl: &mut Cleanup,
    u: &Underlay,
    cfg: &Config,
    notes: &mut Vec<String>,
) -> Result<(Ours, Pair)> {
    let tag = &cfg.tag;
    let etcd = Etcd::start(&u.ns, &u.gateway(), &cfg.dir.join("etcd"))?;
    let mut ours = Ours {
        nodes: Vec::new(),
        _etcd: etcd,
    };
    let store = ours._etcd.store_url();
    for i in 1..=2u8 {
        let host = format!("{tag}-oc{i}");
        let ip = u.add_host(cl, &host, &format!("oc{i}"), 30 + i)?;
        lab::wait_reachable(&host, &u.gateway(), Duration::from_secs(10))?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{tag}-oc{i}"));
        cl.path(&bpffs);
        let mut n = Node::spawn(
            &cfg.dataplane,
            &host,
            &format!("host{i}"),
            &ip,
            &store,
            &cfg.dir.join(format!("oc{i}")),
            &bpffs,
            &[],
        )?;
        let took = n.wait_ready(Duration::from_secs(30));
        ours.nodes.push(n);
        eprintln!("    host{i} ready in {:.1} s", took?.as_secs_f64());
    }
    ours.nodes[0].cli(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--subnet",
        "10.201.4.0/24",
        NETWORK,
    ])?;
    // The network is cluster-scoped: wait until the second host has it.
    let seen = lab::poll(Duration::from_secs(20), Duration::from_millis(50), || {
        Ok(sh::succeeds(&mut ours.nodes[1].client(&["network", "inspect", NETWORK])).then_some(()))
    })?;
    if seen.is_none() {
        bail!("host2 does not list network {NETWORK} 20 s after host1 created it");
    }
    let a = ours.nodes[0].run("ovb-a", NETWORK)?;
    let b = ours.nodes[1].run("ovb-b", NETWORK)?;
    if let Ok(m) = lab::ip(&a.netns, &["-o", "link", "show", "eth0"]) {
        if let Some(mtu) = m.split_whitespace().skip_while(|w| *w != "mtu").nth(1) {
            notes.push(format!("(c): the containers' eth0 has MTU {mtu}"));
        }
    }
    Ok((
        ours,
        Pair {
            kind: bench::Kind::Overlay,
            client: a.netns,
            server: b.netns,
            server_ip: b.ip,
        },
    ))
}

// ------------------------------------------------------------ the report

/// A figure over reps with its ratios to (a) and (b).
#[derive(Serialize, Clone, Debug)]
pub struct Stat {
    #[serde(flatten)]
    pub s: Spread,
    pub vs_routed: Option<f64>,
    pub vs_kernel: Option<f64>,
}

#[derive(Serialize, Debug)]
pub struct SetupReport {
    pub setup: Setup,
    pub title: &'static str,
    pub description: &'static str,
    pub failed: Option<String>,
    pub tcp_gbps: Option<Stat>,
    pub tcp_retransmits: Option<Spread>,
    pub udp64_kpps: Option<Stat>,
    pub rr_same_core_p50_us: Option<Stat>,
    pub rr_same_core_p99_us: Option<Stat>,
    pub rr_cross_core_p50_us: Option<Stat>,
    pub rr_cross_core_p99_us: Option<Stat>,
    pub errors: Vec<String>,
}

impl SetupReport {
    fn metric(&self, i: usize) -> Option<&Stat> {
        [
            &self.tcp_gbps,
            &self.udp64_kpps,
            &self.rr_same_core_p50_us,
            &self.rr_same_core_p99_us,
            &self.rr_cross_core_p50_us,
            &self.rr_cross_core_p99_us,
        ][i]
            .as_ref()
    }

    fn metric_mut(&mut self, i: usize) -> Option<&mut Stat> {
        match i {
            0 => self.tcp_gbps.as_mut(),
            1 => self.udp64_kpps.as_mut(),
            2 => self.rr_same_core_p50_us.as_mut(),
            3 => self.rr_same_core_p99_us.as_mut(),
            4 => self.rr_cross_core_p50_us.as_mut(),
            _ => self.rr_cross_core_p99_us.as_mut(),
        }
    }
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub loadavg: String,
    pub reps: u32,
    pub seconds: u64,
    pub latency_tool: LatencyTool,
    pub setups: Vec<SetupReport>,
    /// Per-packet ns of encapsulation and decapsulation (bench-prog), or
    /// why there are none.
    pub encap_decap: Value,
    pub notes: Vec<String>,
}

impl Report {
    pub fn bad(&self) -> bool {
        self.setups
            .iter()
            .any(|s| s.failed.is_some() || !s.errors.is_empty())
    }
}

fn stat(v: &[f64]) -> Option<Stat> {
    spread(v).map(|s| Stat {
        s,
        vs_routed: None,
        vs_kernel: None,
    })
}

fn add_ratios(setups: &mut [SetupReport]) {
    for i in 0..bench::METRICS.len() {
        let base = |k: Setup| {
            setups
                .iter()
                .find(|s| s.setup == k)
                .and_then(|s| s.metric(i))
                .map(|st| st.s.median)
                .filter(|m| *m > 0.0)
        };
        let (routed, kernel) = (base(Setup::Routed), base(Setup::Kernel));
        for s in setups.iter_mut() {
            if let Some(st) = s.metric_mut(i) {
                st.vs_routed = routed.map(|f| st.s.median / f);
                st.vs_kernel = kernel.map(|b| st.s.median / b);
            }
        }
    }
}

/// The encap/decap figures of bench-prog's JSON, if it has them.
fn encap_decap(prog: &Value) -> Value {
    if let Some(why) = prog["skipped"].as_str() {
        return serde_json::json!({ "skipped": why });
    }
    match (
        prog["encap_median_ns"].as_u64(),
        prog["decap_median_ns"].as_u64(),
    ) {
        (Some(e), Some(d)) => serde_json::json!({
            "encap_median_ns": e,
            "decap_median_ns": d,
            "noop_single_median_ns": prog["noop_single_median_ns"],
            "from_container_median_ns": prog["from_container_median_ns"],
            "single_calls": prog["single_calls"],
        }),
        _ => serde_json::json!({
            "skipped": "bench-prog reports no encap_median_ns / decap_median_ns (the VXLAN programs are not in it yet)"
        }),
    }
}

// ------------------------------------------------------------ the run

pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let mut cl = Cleanup::default();
    let mut notes = Vec::new();
    p.step("overlay: building the underlay and the three two-host setups");
    let u = Underlay::build(&mut cl, &format!("{}-ou", cfg.tag), UNDERLAY)?;
    let mut pairs: Vec<(Setup, Pair)> = Vec::new();
    let mut failed: Vec<(Setup, String)> = Vec::new();
    let mut ours: Option<Ours> = None; // dropped before `cl`
    for k in [Setup::Routed, Setup::Kernel, Setup::Ours] {
        eprintln!("    building {}", k.title());
        let r = match k {
            Setup::Routed => build_routed(&mut cl, &u, &cfg.tag),
            Setup::Kernel => build_kernel(&mut cl, &u, &cfg.tag),
            Setup::Ours => build_ours(&mut cl, &u, cfg, &mut notes).map(|(o, pair)| {
                ours = Some(o);
                pair
            }),
        }
        .and_then(|pair| {
            lab::wait_reachable(&pair.client, &pair.server_ip, Duration::from_secs(20))?;
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
                pairs.push((k, pair));
            }
            Err(e) => {
                eprintln!("    error: {} could not be set up: {e:#}", k.title());
                if k == Setup::Ours {
                    if let Some(o) = &ours {
                        for n in &o.nodes {
                            eprintln!("    {} log: {}", n.name, n.log_tail());
                        }
                    }
                }
                failed.push((k, format!("{e:#}")));
            }
        }
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    p.step(&format!(
        "overlay: measuring {} setups, {} reps x {} s (TCP, UDP 64 B, request/response)",
        pairs.len(),
        cfg.reps,
        cfg.seconds
    ));
    let mut samples: Vec<Samples> = pairs.iter().map(|_| Samples::default()).collect();
    for rep in 1..=cfg.reps {
        for ((k, pair), s) in pairs.iter().zip(samples.iter_mut()) {
            let line = bench::measure(pair, cfg.seconds, cfg.tool, &cfg.cores, s, rep)?;
            eprintln!("    rep {rep}/{}: {}: {line}", cfg.reps, k.title());
        }
    }
    drop(ours.take());
    let mut setups = Vec::new();
    for k in [Setup::Routed, Setup::Kernel, Setup::Ours] {
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
        if let Some(i) = pairs.iter().position(|(s, _)| *s == k) {
            let s = &mut samples[i];
            r.tcp_gbps = stat(&s.tcp);
            r.tcp_retransmits = spread(&s.retransmits);
            r.udp64_kpps = stat(&s.udp);
            r.rr_same_core_p50_us = stat(&s.same_p50);
            r.rr_same_core_p99_us = stat(&s.same_p99);
            r.rr_cross_core_p50_us = stat(&s.cross_p50);
            r.rr_cross_core_p99_us = stat(&s.cross_p99);
            r.errors = std::mem::take(&mut s.errors);
        }
        setups.push(r);
    }
    add_ratios(&mut setups);
    if cfg.cores.len() < 2 {
        notes.push("only one CPU is usable here: no cross-core request/response figures".into());
    }
    Ok(Report {
        command: String::new(),
        date: String::new(),
        kernel: sh::first_line(&mut cmd("uname", ["-srvm"])),
        loadavg,
        reps: cfg.reps,
        seconds: cfg.seconds,
        latency_tool: cfg.tool,
        setups,
        encap_decap: encap_decap(&cfg.bpf_prog),
        notes,
    })
}

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s; medians, spread is min–max over reps, ratios are this median / the median of (a) routed or (b) kernel VXLAN.\n",
        r.reps, r.seconds
    );
    for (i, (title, unit, prec)) in bench::METRICS.into_iter().enumerate() {
        let retr = i == 0;
        let _ = writeln!(o, "#### {title}\n");
        let rows: Vec<FigureRow> = r
            .setups
            .iter()
            .map(|s| FigureRow {
                title: s.title,
                fig: s.metric(i).map(|st| (&st.s, st.vs_routed, st.vs_kernel)),
                why_none: if s.failed.is_some() {
                    "not set up (see the failures below)"
                } else {
                    "no sample"
                },
                retransmits: s.tcp_retransmits.as_ref(),
            })
            .collect();
        figure_table(
            &mut o,
            unit,
            ["vs (a) routed", "vs (b) kernel VXLAN"],
            retr,
            prec,
            &rows,
        );
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "#### Per-packet cost of VXLAN encapsulation and decapsulation (BPF_PROG_TEST_RUN)\n"
    );
    let e = &r.encap_decap;
    if let Some(why) = e["skipped"].as_str() {
        let _ = writeln!(o, "Not measured: {}\n", why.replace('\n', " "));
    } else {
        let _ = writeln!(
            o,
            "| program path | ns/packet (median of {} single-run BPF_PROG_TEST_RUN calls) |\n| --- | ---: |",
            e["single_calls"].as_u64().unwrap_or(0)
        );
        let _ = writeln!(
            o,
            "| from_container, encapsulating for a remote endpoint | {} |",
            e["encap_median_ns"]
        );
        let _ = writeln!(
            o,
            "| from_uplink, decapsulating to a local endpoint | {} |",
            e["decap_median_ns"]
        );
        if e["noop_single_median_ns"].is_number() {
            let _ = writeln!(
                o,
                "| noop, measured the same way | {} |",
                e["noop_single_median_ns"]
            );
        }
        let _ = writeln!(o);
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
    crate::md::bullets(&mut o, "Overlay failures", &problems);
    o
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (kernel `{}`, load average {} when it started).\n",
        r.command, r.date, r.kernel, r.loadavg
    );
    let _ = writeln!(
        o,
        "One underlay netns with a Linux bridge (192.168.240.1/24, the physical switch); per setup \
         two host netns plugged into it by veths and one container netns behind each host. All \
         three setups are built before measuring and the repetitions are interleaved (rep 1: a, b, \
         c; rep 2: ...). Traffic goes from the first host's container to the second's: `iperf3 -t \
         {0}` TCP, `iperf3 -u -l 64 -b 0 -t {0}` (packets received per second), and a TCP \
         request/response round trip ({1}, {0} s) with both ends on one CPU, then on two.\n",
        r.seconds,
        if r.latency_tool == LatencyTool::Sockperf {
            "`sockperf ping-pong --tcp --full-rtt`"
        } else {
            "the built-in ping-pong"
        }
    );
    for s in &r.setups {
        let _ = writeln!(o, "- **{}**: {}", s.title, s.description);
    }
    let _ = writeln!(o);
    for n in &r.notes {
        let _ = writeln!(o, "Note: {n}\n");
    }
    o.push_str(&table(r));
    o
}

/// `existing` without this part's section, and that section.
pub fn split(existing: &str) -> (String, Option<String>) {
    md::split_section(existing, HEADING_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_summed_per_name() {
        let text = "# HELP x\n# TYPE etcd_mvcc_put_total counter\netcd_mvcc_put_total 12\n\
                    etcd_debugging_mvcc_events_total{a=\"1\"} 3\netcd_debugging_mvcc_events_total{a=\"2\"} 4\n\
                    bad line\nname_only\n";
        let m = parse_metrics(text);
        assert_eq!(m["etcd_mvcc_put_total"], 12.0);
        assert_eq!(m["etcd_debugging_mvcc_events_total"], 7.0);
        assert!(!m.contains_key("bad"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn section_split_keeps_the_rest() {
        let doc =
            format!("# Benchmarks\n\n## DNS\n\nd\n\n{HEADING}\n\nold\n\n## Control plane\n\nc\n");
        let (rest, sec) = split(&doc);
        assert_eq!(
            rest,
            "# Benchmarks\n\n## DNS\n\nd\n\n## Control plane\n\nc\n"
        );
        assert_eq!(sec.unwrap(), format!("{HEADING}\n\nold\n\n"));
    }

    #[test]
    fn encap_figures_or_why_not() {
        let skipped = encap_decap(&serde_json::json!({"skipped": "no root"}));
        assert_eq!(skipped["skipped"], "no root");
        let old = encap_decap(&serde_json::json!({"from_container_median_ns": 30}));
        assert!(old["skipped"].as_str().unwrap().contains("encap_median_ns"));
        let new = encap_decap(&serde_json::json!({
            "from_container_median_ns": 30, "encap_median_ns": 41, "decap_median_ns": 25, "single_calls": 7
        }));
        assert_eq!(new["encap_median_ns"], 41);
        assert_eq!(new["decap_median_ns"], 25);
    }
}

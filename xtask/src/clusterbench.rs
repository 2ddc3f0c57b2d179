//! The cluster part of `cargo xtask bench` (`--setups cluster`): N hosts
//! (a `dataplane daemon --store etcd://...` each, in a host netns plugged
//! into one underlay bridge) share one etcd and one overlay network.
//! Containers are created one at a time, on the hosts in turn, and each
//! time the bench measures how long it takes until every OTHER host's
//! datapath knows the new container.
//!
//! The signal is the data plane itself: each host's pinned `ENDPOINTS` map
//! (opened once with BPF_OBJ_GET, its keys walked with
//! BPF_MAP_GET_NEXT_KEY every `POLL`) gains a key, the new container's
//! address. The clock starts just before `dataplane run -d` is spawned; a
//! host's time is when the poller first sees the new key there. The key is
//! checked against the container's address from `inspect` afterwards.
//!
//! Also per host count: etcd's own counters (`/metrics` of etcd: puts,
//! txns, watch events sent, revisions) over all the creations divided by
//! their number, etcd's db size, each daemon's RSS, and how long the
//! daemons took to start (in batches of `BATCH`).

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fmt::Write as _,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::{
    lab::{self, Cleanup},
    md,
    overlaybench::{Etcd, Node, Underlay},
    sh,
    stats::{percentile, spread, Spread},
    Progress,
};

pub const HEADING: &str = "## Cluster: endpoint propagation through etcd to N hosts";
const HEADING_PREFIX: &str = "## Cluster";
pub const DEFAULT_HOSTS: [u32; 3] = [10, 30, 50];
pub const MAX_HOSTS: u32 = 200;
pub const DEFAULT_RUNS: u32 = 20;
const UNDERLAY: &str = "192.168.241";
const NETWORK: &str = "clbench";
const SUBNET: &str = "10.210.0.0/16";
/// Daemons started at once (each loads its BPF programs: on 2 cores more
/// at a time only makes every one of them slower).
const BATCH: usize = 5;
/// A long lease: a daemon starved of CPU for a few seconds must not be
/// seen down by the others (and its endpoints withdrawn) mid-measurement.
const LEASE_TTL: &str = "120";
const POLL: Duration = Duration::from_millis(2);
/// Given up (an error for that creation) after this long.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(60);

pub struct Config {
    pub hosts: Vec<u32>,
    pub runs: u32,
    pub dataplane: PathBuf,
    pub tag: String,
    pub dir: PathBuf,
}

// ------------------------------------------------------------ bpf(2)

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info` (the kernel fills `info_len` bytes).
#[repr(C)]
#[derive(Default)]
struct MapInfoHead {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a #[repr(C)] prefix of union bpf_attr for `cmd`,
    // alive for the call; the kernel reads (and may write) size_of::<T>().
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A pinned map with 4-byte keys (IPv4 in network order), opened read-only.
struct Ipv4KeyMap(OwnedFd);

impl Ipv4KeyMap {
    fn open(pin: &Path) -> Result<Self> {
        let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
        let mut a = ObjGetAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 1 << 3, // BPF_F_RDONLY
        };
        let fd =
            bpf(BPF_OBJ_GET, &mut a).with_context(|| format!("BPF_OBJ_GET {}", pin.display()))?;
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        let m = Self(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let mut info = MapInfoHead::default();
        let mut ia = InfoAttr {
            bpf_fd: m.0.as_raw_fd() as u32,
            info_len: std::mem::size_of::<MapInfoHead>() as u32,
            info: &mut info as *mut MapInfoHead as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut ia).context("BPF_OBJ_GET_INFO_BY_FD")?;
        if info.key_size != 4 {
            bail!(
                "{} has {}-byte keys, not IPv4 addresses",
                pin.display(),
                info.key_size
            );
        }
        Ok(m)
    }

    fn keys(&self) -> Result<HashSet<[u8; 4]>> {
        let mut out = HashSet::new();
        let mut cur = [0u8; 4];
        let mut next = [0u8; 4];
        let mut first = true;
        loop {
            let mut a = MapElemAttr {
                map_fd: self.0.as_raw_fd() as u32,
                key: if first { 0 } else { cur.as_ptr() as u64 },
                next_key: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e).context("BPF_MAP_GET_NEXT_KEY"),
            }
            if !out.insert(next) || out.len() > 1 << 20 {
                // The walk restarted (an entry was deleted under it): what
                // was collected is a superset of nothing lost; take it.
                return Ok(out);
            }
            cur = next;
            first = false;
        }
    }
}

/// The daemon's pinned `ENDPOINTS` map: `<bpffs>/v<N>/maps/ENDPOINTS`, the
/// highest layout version present.
fn endpoints_pin(bpffs: &Path) -> Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    for e in std::fs::read_dir(bpffs).with_context(|| format!("listing {}", bpffs.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = name.strip_prefix('v').and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        let pin = e.path().join("maps").join("ENDPOINTS");
        if pin.exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, pin));
        }
    }
    best.map(|(_, p)| p)
        .ok_or_else(|| anyhow!("no {}/v*/maps/ENDPOINTS pin", bpffs.display()))
}

// ------------------------------------------------------------ the report

/// Milliseconds over the creations of one host count.
#[derive(Serialize, Clone, Debug)]
pub struct Ms {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

fn ms(v: &[f64]) -> Option<Ms> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(Ms {
        n: s.len(),
        p50: percentile(&s, 50.0)?,
        p99: percentile(&s, 99.0)?,
        max: *s.last()?,
    })
}

#[derive(Serialize, Debug, Default)]
pub struct Count {
    pub hosts: u32,
    /// Why this count could not be measured, if it could not.
    pub failed: Option<String>,
    /// Daemons that answered (of `hosts`).
    pub hosts_up: u32,
    /// Daemons that exited while starting and were started once more.
    pub restarts: Vec<String>,
    /// Seconds from the first spawn until every daemon answered.
    pub start_all_s: Option<f64>,
    /// `dataplane run -d` until it returned, ms.
    pub run_ms: Option<Ms>,
    /// From `run` until EVERY other host's ENDPOINTS had the container, ms.
    pub all_hosts_ms: Option<Ms>,
    /// From `run` until one other host had it, over every (creation, host).
    pub per_host_ms: Option<Ms>,
    /// etcd counters over all the creations, divided by their number.
    pub etcd_per_container: BTreeMap<String, f64>,
    /// etcd gauges after the creations (db size, watchers, streams).
    pub etcd_after: BTreeMap<String, f64>,
    /// VmRSS of each daemon after the creations, KiB.
    pub daemon_rss_kib: Option<Spread>,
    /// etcd's VmRSS after the creations, KiB.
    pub etcd_rss_kib: Option<u64>,
    pub errors: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub loadavg: String,
    pub runs: u32,
    pub poll_ms: f64,
    pub counts: Vec<Count>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn bad(&self) -> bool {
        self.counts
            .iter()
            .any(|c| c.failed.is_some() || !c.errors.is_empty())
    }
}

/// Counters whose growth per created container is reported.
const COUNTERS: [&str; 7] = [
    "etcd_mvcc_put_total",
    "etcd_mvcc_txn_total",
    "etcd_mvcc_range_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    "etcd_mvcc_delete_total",
    "etcd_debugging_mvcc_events_total",
    "etcd_debugging_mvcc_current_revision",
];
/// Gauges reported as they are after the creations.
const GAUGES: [&str; 5] = [
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_watcher_total",
];

fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------------------------ the run

pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let mut counts = Vec::new();
    let mut notes = Vec::new();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    for &n in &cfg.hosts {
        p.step(&format!(
            "cluster of {n} hosts: start the daemons ({BATCH} at a time), {} container(s), propagation to every other host",
            cfg.runs
        ));
        let mut c = Count {
            hosts: n,
            ..Default::default()
        };
        if let Err(e) = one_count(cfg, n, &mut c) {
            sh::check_interrupted()?;
            eprintln!("    error: {n} hosts: {e:#}");
            c.failed = Some(format!("{e:#}"));
        }
        counts.push(c);
    }
    notes.push(format!(
        "each daemon runs with --lease-ttl {LEASE_TTL} (so that a daemon starved of CPU on this \
         shared machine is not declared down mid-run)"
    ));
    Ok(Report {
        command: String::new(),
        date: String::new(),
        kernel: sh::first_line(&mut sh::cmd("uname", ["-srvm"])),
        loadavg,
        runs: cfg.runs,
        poll_ms: POLL.as_secs_f64() * 1e3,
        counts,
        notes,
    })
}

/// The cluster's hosts while they are measured: the daemons go first on
/// drop, then etcd, then (the caller's `Cleanup`) the namespaces.
struct Cluster {
    nodes: Vec<Node>,
    etcd: Etcd,
}

fn one_count(cfg: &Config, n: u32, c: &mut Count) -> Result<()> {
    let mut cl = Cleanup::default();
    let dir = cfg.dir.join(format!("h{n}"));
    cl.dir(&dir)?;
    let u = Underlay::build(&mut cl, &format!("{}-cu", cfg.tag), UNDERLAY)?;
    let etcd = Etcd::start(&u.ns, &u.gateway(), &dir.join("etcd"))?;
    let mut cluster = Cluster {
        nodes: Vec::new(),
        etcd,
    };
    let store = cluster.etcd.store_url();
    let t_start = Instant::now();
    let names: Vec<u32> = (1..=n).collect();
    for batch in names.chunks(BATCH) {
        let first = cluster.nodes.len();
        for &i in batch {
            let host = format!("{}-c{i}", cfg.tag);
            let ip = u.add_host(&mut cl, &host, &format!("cp{i}"), (10 + i) as u8)?;
            lab::wait_reachable(&host, &u.gateway(), Duration::from_secs(10))?;
            let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}-c{i}", cfg.tag));
            cl.path(&bpffs);
            cluster.nodes.push(Node::spawn(
                &cfg.dataplane,
                &host,
                &format!("host{i}"),
                &ip,
                &store,
                &dir.join(format!("host{i}")),
                &bpffs,
                &["--lease-ttl", LEASE_TTL],
            )?);
        }
        for node in &mut cluster.nodes[first..] {
            // One second chance: under load a daemon's first etcd call
            // can time out, and the daemon exits.
            if let Err(e) = node.wait_ready(Duration::from_secs(180)) {
                if !node.restart_if_exited()? {
                    return Err(e);
                }
                let m = format!(
                    "{} exited before it was ready and was started again: {e:#}",
                    node.name
                );
                eprintln!("    warning: {m}");
                c.restarts.push(m);
                node.wait_ready(Duration::from_secs(180))?;
            }
            c.hosts_up += 1;
        }
        eprintln!(
            "    {}/{n} daemons ready after {:.1} s",
            c.hosts_up,
            t_start.elapsed().as_secs_f64()
        );
    }
    c.start_all_s = Some(t_start.elapsed().as_secs_f64());
    // Every host has joined (its node record with its VTEP) before the
    // first container: host1 sees all N ready.
    let ready = lab::poll(Duration::from_secs(60), Duration::from_millis(100), || {
        let out = cluster.nodes[0].cli(&["node", "ls", "--format", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing `node ls`")?;
        let up = v
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["State"] == "ready").count());
        Ok((up >= n as usize).then_some(()))
    })?;
    if ready.is_none() {
        bail!("host1 does not see all {n} nodes ready 60 s after they started");
    }
    cluster.nodes[0].cli(&[
        "network", "create", "--driver", "overlay", "--subnet", SUBNET, NETWORK,
    ])?;
    for node in &cluster.nodes[1..] {
        let seen = lab::poll(Duration::from_secs(60), Duration::from_millis(20), || {
            Ok(sh::succeeds(&mut node.client(&["network", "inspect", NETWORK])).then_some(()))
        })?;
        if seen.is_none() {
            bail!("{} does not list network {NETWORK} after 60 s", node.name);
        }
    }
    let maps = cluster
        .nodes
        .iter()
        .map(|node| Ipv4KeyMap::open(&endpoints_pin(&node.bpffs)?))
        .collect::<Result<Vec<_>>>()?;
    let before = cluster.etcd.metrics()?;
    let mut run_ms = Vec::new();
    let mut all_ms = Vec::new();
    let mut per_host = Vec::new();
    let every = (cfg.runs as usize / 5).max(1);
    for r in 0..cfg.runs as usize {
        sh::check_interrupted()?;
        let h = r % cluster.nodes.len();
        let name = format!("cb{r}");
        match create_and_wait(&mut cluster.nodes, &maps, h, &name) {
            Ok((run, times)) => {
                run_ms.push(run);
                if let Some(m) = times.iter().copied().reduce(f64::max) {
                    all_ms.push(m);
                }
                per_host.extend(times);
            }
            Err(e) => {
                let m = format!("creation {r} on host{}: {e:#}", h + 1);
                eprintln!("    error: {m}");
                c.errors.push(m);
            }
        }
        if (r + 1) % every == 0 || r + 1 == cfg.runs as usize {
            let s = ms(&all_ms);
            eprintln!(
                "    {}/{} containers; every other host after p50 {:.1} ms",
                r + 1,
                cfg.runs,
                s.map_or(f64::NAN, |s| s.p50)
            );
        }
    }
    let after = cluster.etcd.metrics()?;
    let created = run_ms.len().max(1) as f64;
    for k in COUNTERS {
        if let (Some(a), Some(b)) = (after.get(k), before.get(k)) {
            c.etcd_per_container
                .insert(k.to_string(), (a - b) / created);
        }
    }
    for k in GAUGES {
        if let Some(v) = after.get(k) {
            c.etcd_after.insert(k.to_string(), *v);
        }
    }
    let rss: Vec<f64> = cluster
        .nodes
        .iter_mut()
        .filter_map(|n| n.pid().and_then(rss_kib))
        .map(|k| k as f64)
        .collect();
    c.daemon_rss_kib = spread(&rss);
    // nsenter execs etcd: the child's pid is etcd's own.
    c.etcd_rss_kib = cluster.etcd.pid().and_then(rss_kib);
    c.run_ms = ms(&run_ms);
    c.all_hosts_ms = ms(&all_ms);
    c.per_host_ms = ms(&per_host);
    drop(maps);
    drop(cluster);
    drop(cl);
    Ok(())
}

/// When (ms after the clock's start) a host's map gained a key, and which.
type Seen = Option<(f64, [u8; 4])>;

/// Until every map in `others` has a key it had not in `before` (or the
/// limit, or a message on `stop`): per host, when (ms after `t0`) and which.
fn poll_new_keys(
    maps: &[Ipv4KeyMap],
    others: &[usize],
    before: &[HashSet<[u8; 4]>],
    t0: Instant,
    stop: mpsc::Receiver<()>,
) -> Result<Vec<Seen>> {
    let mut seen: Vec<Seen> = vec![None; others.len()];
    let end = t0 + PROPAGATION_LIMIT;
    loop {
        for (j, &i) in others.iter().enumerate() {
            if seen[j].is_some() {
                continue;
            }
            let keys = maps[i].keys()?;
            if let Some(k) = keys.difference(&before[j]).next() {
                seen[j] = Some((t0.elapsed().as_secs_f64() * 1e3, *k));
            }
        }
        if seen.iter().all(Option::is_some) || Instant::now() >= end || stop.try_recv().is_ok() {
            return Ok(seen);
        }
        std::thread::sleep(POLL);
    }
}

/// Creates `name` on host `h` and waits until every other host's
/// ENDPOINTS has a key it did not have before; `run`'s ms and each other
/// host's ms, both from just before `run` was spawned.
fn create_and_wait(
    nodes: &mut [Node],
    maps: &[Ipv4KeyMap],
    h: usize,
    name: &str,
) -> Result<(f64, Vec<f64>)> {
    let others: Vec<usize> = (0..nodes.len()).filter(|&i| i != h).collect();
    let before: Vec<HashSet<[u8; 4]>> = others
        .iter()
        .map(|&i| maps[i].keys())
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<()>();
    let (run, seen) = std::thread::scope(|sc| -> Result<_> {
        let poller = sc.spawn(|| poll_new_keys(maps, &others, &before, t0, rx));
        nodes[h].track(name);
        let r = sh::timed(
            &mut nodes[h].client(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                NETWORK,
                "--",
                "sleep",
                "infinity",
            ]),
            Duration::from_secs(60),
        );
        if !matches!(&r, Ok((_, o)) if o.ok()) {
            let _ = tx.send(());
        }
        let seen = poller
            .join()
            .map_err(|_| anyhow!("the ENDPOINTS poller panicked"))?;
        Ok((r, seen))
    })?;
    let (took, o) = run?;
    if !o.ok() {
        bail!(
            "`run {name}` failed ({}): {}",
            o.status,
            sh::tail(&o.stderr, 3)
        );
    }
    let run_ms = took.as_secs_f64() * 1e3;
    let seen = seen?;
    let sb = nodes[h].sandbox(name, NETWORK)?;
    let ip: std::net::Ipv4Addr = sb
        .ip
        .parse()
        .with_context(|| format!("{name}'s address {:?}", sb.ip))?;
    let mut times = Vec::new();
    let mut missing = Vec::new();
    for (j, s) in seen.iter().enumerate() {
        let host = &nodes[others[j]].name;
        match s {
            Some((t, k)) if *k == ip.octets() => times.push(*t),
            Some((_, k)) => bail!(
                "{host}'s ENDPOINTS gained {} rather than {name}'s address {ip}",
                std::net::Ipv4Addr::from(*k)
            ),
            None => missing.push(host.clone()),
        }
    }
    if !missing.is_empty() {
        bail!(
            "{name} ({ip}) was not in the ENDPOINTS of {} after {} s",
            missing.join(", "),
            PROPAGATION_LIMIT.as_secs()
        );
    }
    Ok((run_ms, times))
}

// ------------------------------------------------------------ output

fn ms_cells(m: &Option<Ms>) -> String {
    match m {
        Some(m) => format!("{:.1} | {:.1} | {:.1}", m.p50, m.p99, m.max),
        None => "– | – | –".into(),
    }
}

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "#### From `run` on one host until every other host's ENDPOINTS map has the container ({} containers per row, hosts in turn, polled every {} ms)\n",
        r.runs, r.poll_ms
    );
    let _ = writeln!(
        o,
        "| hosts | up | daemons started (s) | `run` p50 (ms) | p99 | max | every other host p50 (ms) | p99 | max | one host p50 (ms) | p99 | max |"
    );
    let _ = writeln!(
        o,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &r.counts {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            c.hosts,
            c.hosts_up,
            c.start_all_s.map_or("–".into(), |s| format!("{s:.1}")),
            ms_cells(&c.run_ms),
            ms_cells(&c.all_hosts_ms),
            ms_cells(&c.per_host_ms)
        );
    }
    let _ = writeln!(o, "\n#### etcd and the daemons\n");
    let _ = writeln!(
        o,
        "| hosts | puts / container | put bytes / container | txns / container | ranges / container | revisions / container | watch events sent / container | db size (KiB) | watchers | daemon RSS median (MiB) | min–max (MiB) | etcd RSS (MiB) |"
    );
    let _ = writeln!(
        o,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let cell = |m: &BTreeMap<String, f64>, k: &str, scale: f64| {
        m.get(k)
            .map_or("–".to_string(), |v| format!("{:.1}", v / scale))
    };
    for c in &r.counts {
        let rss = c.daemon_rss_kib.as_ref().map_or("– | –".into(), |s| {
            format!(
                "{:.1} | {:.1}–{:.1}",
                s.median / 1024.0,
                s.min / 1024.0,
                s.max / 1024.0
            )
        });
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {rss} | {} |",
            c.hosts,
            cell(&c.etcd_per_container, "etcd_mvcc_put_total", 1.0),
            cell(
                &c.etcd_per_container,
                "etcd_debugging_mvcc_total_put_size_in_bytes",
                1.0
            ),
            cell(&c.etcd_per_container, "etcd_mvcc_txn_total", 1.0),
            cell(&c.etcd_per_container, "etcd_mvcc_range_total", 1.0),
            cell(
                &c.etcd_per_container,
                "etcd_debugging_mvcc_current_revision",
                1.0
            ),
            cell(
                &c.etcd_per_container,
                "etcd_debugging_mvcc_events_total",
                1.0
            ),
            cell(&c.etcd_after, "etcd_mvcc_db_total_size_in_bytes", 1024.0),
            cell(&c.etcd_after, "etcd_debugging_mvcc_watcher_total", 1.0),
            c.etcd_rss_kib
                .map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        );
    }
    let _ = writeln!(o);
    let problems: Vec<String> = r
        .counts
        .iter()
        .flat_map(|c| {
            c.failed
                .iter()
                .map(move |e| format!("{} hosts could not be measured: {e}", c.hosts))
                .chain(
                    c.errors
                        .iter()
                        .map(move |e| format!("{} hosts: {e}", c.hosts)),
                )
        })
        .collect();
    let restarts: Vec<String> = r
        .counts
        .iter()
        .flat_map(|c| {
            c.restarts
                .iter()
                .map(move |m| format!("{} hosts: {m}", c.hosts))
        })
        .collect();
    crate::md::bullets(&mut o, "Daemons started twice", &restarts);
    crate::md::bullets(&mut o, "Cluster failures", &problems);
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
        "Per host count, a fresh cluster on this one machine: an underlay netns with a Linux bridge \
         ({UNDERLAY}.1/24) and one etcd listening on it, N host netns plugged into the bridge, each \
         with a `dataplane daemon --store etcd://{UNDERLAY}.1:2379 --node-name hostI \
         --advertise-addr ITS-IP` (nsenter, own run/state dirs and bpffs pins; started {BATCH} at a \
         time). One `network create --driver overlay --subnet {SUBNET}` on host1, then {} \
         containers `run -d -- sleep infinity` one at a time on host1, host2, ... in turn. The \
         signal is each other host's pinned `ENDPOINTS` map (BPF_OBJ_GET once, its keys walked \
         with BPF_MAP_GET_NEXT_KEY every {} ms): the time from spawning `run` until the new key \
         appears, checked afterwards to be the container's address from `inspect`. \"every other \
         host\" is the slowest host per container, \"one host\" every (container, host) pair. \
         etcd's figures are its `/metrics` counters over all the creations divided by their \
         number (revisions: one per write transaction) and its gauges afterwards; RSS is each \
         daemon's VmRSS afterwards. No traffic is sent.\n",
        r.runs, r.poll_ms
    );
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
    fn percentiles_of_runs() {
        let m = ms(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((m.n, m.p50, m.max), (5, 3.0, 5.0));
        assert!(ms(&[]).is_none());
    }

    #[test]
    fn section_split_keeps_the_rest() {
        let doc = format!("# B\n\n## Overlay x\n\no\n\n{HEADING}\n\nold\n");
        let (rest, sec) = split(&doc);
        assert_eq!(rest, "# B\n\n## Overlay x\n\no\n\n");
        assert_eq!(sec.unwrap(), format!("{HEADING}\n\nold\n"));
    }

    #[test]
    fn table_shows_failures_and_missing_figures() {
        let r = Report {
            command: "c".into(),
            date: "d".into(),
            kernel: "k".into(),
            loadavg: "l".into(),
            runs: 3,
            poll_ms: 2.0,
            counts: vec![Count {
                hosts: 10,
                failed: Some("etcd did not start".into()),
                ..Default::default()
            }],
            notes: vec![],
        };
        let t = table(&r);
        assert!(t.contains("| 10 | 0 | – | – | – | – |"));
        assert!(t.contains("10 hosts could not be measured: etcd did not start"));
        assert!(r.bad());
    }
}

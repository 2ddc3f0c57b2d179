//! The control-plane part of `cargo xtask bench` (`--setups control`): what
//! the daemon costs to drive, measured from outside through its CLI, /proc,
//! `bpftool` and `ip`, at each sandbox count of `--sandboxes` (a fresh
//! daemon in a namespace of its own per count, started as the other parts
//! start it: nsenter, private run/state dirs and bpffs pins):
//!
//! 1. `run -d -- sleep infinity` one after another up to N sandboxes, each
//!    timed from the CLI's spawn to its exit (the k-th sample is the k-th
//!    sandbox, so first-10 against last-10 shows whether it stays flat);
//! 2. the daemon's RSS, threads and fds at 0 and at N sandboxes;
//! 3. a crash and restart: SIGKILL, every entry of the pinned `ENDPOINTS`
//!    map deleted with bpftool, the daemon started again, and the time until
//!    `ps` answers and `ENDPOINTS` holds all N entries again;
//! 4. drift on the running daemon: one `ENDPOINTS` entry deleted with
//!    bpftool, one host route, one host veth deleted with `ip`, each polled
//!    every 10 ms for up to 10 s until it is back ("not repaired" after);
//! 5. `rm -f` of each sandbox in creation order, timed the same way;
//! 6. --reps cycles of N sandboxes created and then removed by
//!    `--control-clients` parallel clients (sandboxes per second), with the
//!    daemon's memory after each cycle (flat, or growing per cycle).
//!
//! Traffic: none. Everything lives in the daemon's namespace and the
//! sandbox namespaces it makes; all of it is removed afterwards, also on
//! an error or Ctrl-C (the `Daemon` and `Cleanup` guards).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::{
    lab::{self, Cleanup, Daemon},
    md, sh,
    stats::{percentile, ratio, ratio_cell, spread, Spread},
    Progress,
};

/// The heading that starts this part's section of BENCHMARKS.md.
pub const HEADING: &str = "## Control plane: run, rm, restart and drift";
const HEADING_PREFIX: &str = "## Control plane";
pub const DEFAULT_SANDBOXES: [u32; 2] = [100, 1_000];
/// Most sandboxes one count may ask for (the subnet and MAX_ENDPOINTS
/// allow more; this bounds a run's time and the host's load).
pub const MAX_SANDBOXES: u32 = 4_000;
pub const DEFAULT_CLIENTS: u32 = 4;
/// The sandboxes' network, in the daemon's namespace only.
const SUBNET: &str = "10.201.0.0/16";
const NETWORK: &str = "ctl";
/// How long one CLI call may take before it counts as hung.
const CLI_LIMIT: Duration = Duration::from_secs(60);
const DRIFT_POLL: Duration = Duration::from_millis(10);
const DRIFT_LIMIT: Duration = Duration::from_secs(10);
/// Samples at either end of a sequence that "first 10" / "last 10" take.
const EDGE: usize = 10;

pub struct Config {
    pub counts: Vec<u32>,
    pub reps: u32,
    pub clients: u32,
    pub dataplane: PathBuf,
    pub tag: String,
    pub dir: PathBuf,
}

/// One CLI operation's latency over a sequence of calls, in call order.
#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub calls: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// p50 of the first and the last `EDGE` calls (as the count grows for
    /// `run`, as it shrinks for `rm`).
    pub first10_p50_ms: f64,
    pub last10_p50_ms: f64,
    /// last10 / first10: 1.0 is flat.
    pub growth: Option<f64>,
    pub samples_ms: Vec<f64>,
}

fn latency(v: &[f64]) -> Option<Latency> {
    let p50 = |s: &[f64]| {
        let mut s = s.to_vec();
        s.sort_by(f64::total_cmp);
        percentile(&s, 50.0)
    };
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let first = p50(&v[..v.len().min(EDGE)])?;
    let last = p50(&v[v.len().saturating_sub(EDGE)..])?;
    Some(Latency {
        calls: v.len(),
        p50_ms: percentile(&sorted, 50.0)?,
        p99_ms: percentile(&sorted, 99.0)?,
        max_ms: *sorted.last()?,
        first10_p50_ms: first,
        last10_p50_ms: last,
        growth: ratio(Some(last), Some(first)),
        samples_ms: v.to_vec(),
    })
}

/// The daemon's footprint at one point of the run (from /proc/PID).
#[derive(Serialize, Clone, Debug)]
pub struct Mem {
    pub at: String,
    pub sandboxes: u32,
    pub rss_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

fn mem(pid: u32, at: &str, sandboxes: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    Ok(Mem {
        at: at.to_string(),
        sandboxes,
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
    })
}

#[derive(Serialize, Clone, Debug)]
pub struct Restart {
    /// `ENDPOINTS` entries before the kill, all deleted while it was down.
    pub endpoints_before: usize,
    pub endpoints_left_after_delete: usize,
    /// From the new daemon's spawn: `ps` first answered; `ENDPOINTS` first
    /// held every entry again (None: not within `gave_up_after_s`).
    pub ps_answered_ms: Option<f64>,
    pub reprojected_ms: Option<f64>,
    pub endpoints_after: usize,
    pub gave_up_after_s: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    EndpointsEntry,
    HostRoute,
    HostVeth,
}

const DRIFTS: [DriftKind; 3] = [
    DriftKind::EndpointsEntry,
    DriftKind::HostRoute,
    DriftKind::HostVeth,
];

impl DriftKind {
    fn title(self) -> &'static str {
        match self {
            DriftKind::EndpointsEntry => "one ENDPOINTS entry (bpftool map delete)",
            DriftKind::HostRoute => "one host route to a sandbox (ip route del)",
            DriftKind::HostVeth => "one sandbox's host veth (ip link del)",
        }
    }

    fn back(self) -> &'static str {
        match self {
            DriftKind::EndpointsEntry => "the same key is in ENDPOINTS again",
            DriftKind::HostRoute | DriftKind::HostVeth => {
                "a /32 route to the sandbox's address is in the daemon's namespace again"
            }
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Trial {
    /// The sandbox (or, for ENDPOINTS, the key in hex) that was broken.
    pub target: String,
    /// None: not back within DRIFT_LIMIT.
    pub repaired_ms: Option<f64>,
}

#[derive(Serialize, Clone, Debug)]
pub struct Drift {
    pub kind: DriftKind,
    pub title: &'static str,
    pub back_when: &'static str,
    pub trials: Vec<Trial>,
    pub repaired_ms: Option<Spread>,
    pub not_repaired: usize,
    /// Trials left out once one was not repaired (each costs the full wait).
    pub skipped: u32,
}

#[derive(Serialize, Clone, Debug)]
pub struct Cycle {
    pub cycle: u32,
    pub created: usize,
    pub create_s: f64,
    pub removed: usize,
    pub remove_s: f64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Count {
    pub sandboxes: u32,
    /// Why this count stopped early (what it measured until then is kept).
    pub failed: Option<String>,
    /// `ENDPOINTS` entries with no sandbox yet (the daemon's own).
    pub endpoints_at_0: Option<usize>,
    pub run: Option<Latency>,
    pub rm: Option<Latency>,
    pub memory: Vec<Mem>,
    pub restart: Option<Restart>,
    pub drift: Vec<Drift>,
    pub cycles: Vec<Cycle>,
    /// Per cycle: sandboxes created / removed per second by all clients.
    pub create_per_s: Option<Spread>,
    pub remove_per_s: Option<Spread>,
    /// Every `run` of the cycles, in completion order.
    pub parallel_run: Option<Latency>,
    pub errors: Vec<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub loadavg: String,
    pub reps: u32,
    pub clients: u32,
    pub subnet: &'static str,
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

// ------------------------------------------------------------ bpftool

/// The daemon's pinned `ENDPOINTS` map: `<bpffs>/v<N>/maps/ENDPOINTS`
/// (dataplane-user/src/bpf.rs), the highest layout version present.
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

/// One key of a `bpftool -j map dump` entry as bytes: bpftool prints raw
/// keys as `["0x0a", ...]`; a number (BTF-formatted u32) is taken as is.
fn key_bytes(k: &Value) -> Option<Vec<u8>> {
    match k {
        Value::Array(a) => a
            .iter()
            .map(|b| {
                let s = b.as_str()?;
                u8::from_str_radix(s.trim_start_matches("0x"), 16).ok()
            })
            .collect(),
        Value::Number(n) => Some((n.as_u64()? as u32).to_ne_bytes().to_vec()),
        _ => None,
    }
}

fn hex(key: &[u8]) -> String {
    key.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every key of the pinned map.
fn map_keys(pin: &Path) -> Result<Vec<Vec<u8>>> {
    let out = sh::output(
        sh::cmd("bpftool", ["-j", "map", "dump", "pinned"]).arg(pin),
        Some(Duration::from_secs(30)),
    )?;
    let v: Value = serde_json::from_str(&out).context("parsing `bpftool -j map dump`")?;
    let entries = v
        .as_array()
        .ok_or_else(|| anyhow!("`bpftool map dump` printed no array"))?;
    entries
        .iter()
        .map(|e| {
            let k = if e["key"].is_null() {
                &e["formatted"]["key"]
            } else {
                &e["key"]
            };
            key_bytes(k).ok_or_else(|| anyhow!("unreadable key in `bpftool map dump`: {e}"))
        })
        .collect()
}

fn key_args(key: &[u8]) -> Vec<String> {
    let mut a = vec!["key".to_string(), "hex".to_string()];
    a.extend(key.iter().map(|b| format!("{b:02x}")));
    a
}

fn map_has(pin: &Path, key: &[u8]) -> Result<bool> {
    let mut c = sh::cmd("bpftool", ["map", "lookup", "pinned"]);
    c.arg(pin).args(key_args(key));
    Ok(sh::capture(&mut c, Some(Duration::from_secs(10)))?.ok())
}

/// Deletes `keys` from the pinned map in one `bpftool batch`.
fn map_delete(pin: &Path, keys: &[Vec<u8>], scratch: &Path) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let p = pin
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 pin path {}", pin.display()))?;
    let mut batch = String::new();
    for k in keys {
        let _ = writeln!(batch, "map delete pinned {p} {}", key_args(k).join(" "));
    }
    let f = scratch.join("endpoints-delete.batch");
    std::fs::write(&f, batch).with_context(|| format!("writing {}", f.display()))?;
    sh::output(
        sh::cmd("bpftool", ["batch", "file"]).arg(&f),
        Some(Duration::from_secs(120)),
    )
    .context("deleting ENDPOINTS entries with bpftool batch")?;
    Ok(())
}

// ------------------------------------------------------------ CLI calls

/// `run -d --name NAME --network ctl -- sleep infinity`: its latency (ms)
/// and the container id it printed.
fn run_one(d: &Daemon, name: &str) -> Result<(f64, String)> {
    let (t, o) = sh::timed(
        &mut d.client(&[
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
        CLI_LIMIT,
    )?;
    if !o.ok() {
        bail!(
            "`run {name}` failed ({}): {}",
            o.status,
            sh::tail(&o.stderr, 3)
        );
    }
    let id = o.stdout.lines().last().unwrap_or("").trim().to_string();
    Ok((t.as_secs_f64() * 1e3, id))
}

fn rm_one(d: &Daemon, name: &str) -> Result<f64> {
    let (t, o) = sh::timed(&mut d.client(&["rm", "-f", name]), CLI_LIMIT)?;
    if !o.ok() {
        bail!(
            "`rm -f {name}` failed ({}): {}",
            o.status,
            sh::tail(&o.stderr, 3)
        );
    }
    Ok(t.as_secs_f64() * 1e3)
}

/// The sandbox netns the daemon names after a container id (`dp-` and the
/// id's first 12 characters, daemon.rs): only used to delete what a
/// stopped daemon may have left, and only if it exists.
fn netns_of(id: &str) -> Option<String> {
    (id.len() >= 12 && id.chars().all(|c| c.is_ascii_hexdigit()))
        .then(|| format!("dp-{}", &id[..12]))
}

/// Every `progress_every` calls: a line with the last calls' p50.
fn progress_every(n: u32) -> usize {
    (n as usize / 10).max(1)
}

fn show_progress(what: &str, done: usize, n: u32, lat: &[f64]) {
    if done.is_multiple_of(progress_every(n)) || done == n as usize {
        let k = progress_every(n).min(lat.len());
        let mut last = lat[lat.len() - k..].to_vec();
        last.sort_by(f64::total_cmp);
        eprintln!(
            "    {what} {done}/{n}: p50 of the last {k}: {:.1} ms",
            percentile(&last, 50.0).unwrap_or(f64::NAN)
        );
    }
}

/// The sandbox's address and its /32 route's device in the daemon's netns.
fn host_side(d: &Daemon, ns: &str, name: &str) -> Result<(String, String)> {
    let out = d.cli(&["inspect", name])?;
    let v: Value =
        serde_json::from_str(&out).with_context(|| format!("parsing `inspect {name}`"))?;
    let (_, ip) = lab::sandbox_of(&v, NETWORK)?;
    let dev = route_dev(ns, &ip)?
        .ok_or_else(|| anyhow!("no /32 route to {name}'s address {ip} in netns {ns}"))?;
    Ok((ip, dev))
}

/// The device of the /32 route to `ip` in `ns`, if there is one.
fn route_dev(ns: &str, ip: &str) -> Result<Option<String>> {
    let out = lab::ip(
        ns,
        &["-j", "route", "show", "to", "exact", &format!("{ip}/32")],
    )?;
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })
        .context("parsing `ip -j route show`")?;
    Ok(v.as_array()
        .and_then(|a| a.iter().find_map(|r| r["dev"].as_str()))
        .map(str::to_string))
}

// ------------------------------------------------------------ the run

/// Measures every count in `cfg.counts`, one fresh daemon each.
pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let mut counts = Vec::new();
    for &n in &cfg.counts {
        p.step(&format!(
            "control plane at {n} sandboxes: run, memory, restart, drift, rm, {} cycle(s) with {} clients",
            cfg.reps, cfg.clients
        ));
        let mut c = Count {
            sandboxes: n,
            failed: None,
            endpoints_at_0: None,
            run: None,
            rm: None,
            memory: Vec::new(),
            restart: None,
            drift: Vec::new(),
            cycles: Vec::new(),
            create_per_s: None,
            remove_per_s: None,
            parallel_run: None,
            errors: Vec::new(),
        };
        match one_count(cfg, n, &mut c) {
            Ok(()) => {}
            Err(e) if sh::interrupted() => return Err(e),
            Err(e) => {
                eprintln!("    error: {n} sandboxes: {e:#}");
                c.failed = Some(format!("{e:#}"));
            }
        }
        counts.push(c);
    }
    let kernel = sh::first_line(&mut sh::cmd("uname", ["-srvm"]));
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Report {
        command: String::new(),
        date: String::new(),
        kernel,
        loadavg,
        reps: cfg.reps,
        clients: cfg.clients,
        subnet: SUBNET,
        counts,
        notes: Vec::new(),
    })
}

fn one_count(cfg: &Config, n: u32, c: &mut Count) -> Result<()> {
    // Declared first, dropped last: the daemon (and its sandboxes) go first.
    let mut cl = Cleanup::default();
    let ns = format!("{}-c{n}", cfg.tag);
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}-c{n}", cfg.tag));
    let dir = cfg.dir.join(format!("control-{n}"));
    cl.dir(&dir)?;
    cl.path(&bpffs);
    cl.netns(&ns)?;
    let mut d = Daemon::start(&cfg.dataplane, &ns, &dir, &bpffs, Duration::from_secs(20))?;
    d.cli(&["network", "create", "--subnet", SUBNET, NETWORK])?;
    let pid = |d: &mut Daemon| d.pid().ok_or_else(|| anyhow!("the daemon is not running"));
    let pin = endpoints_pin(&bpffs)?;
    let base: BTreeSet<Vec<u8>> = map_keys(&pin)?.into_iter().collect();
    c.endpoints_at_0 = Some(base.len());
    c.memory.push(mem(pid(&mut d)?, "no sandbox", 0)?);

    // 1. One after another.
    let names: Vec<String> = (0..n).map(|k| format!("ctl-{k}")).collect();
    let mut lat = Vec::new();
    for name in &names {
        sh::check_interrupted()?;
        d.track(name);
        let (ms, id) = run_one(&d, name)?;
        if let Some(netns) = netns_of(&id) {
            d.track_netns(&netns);
        }
        lat.push(ms);
        show_progress("run", lat.len(), n, &lat);
    }
    c.run = latency(&lat);
    c.memory.push(mem(pid(&mut d)?, "all sandboxes", n)?);

    // 3. Crash, lose the map, restart.
    c.restart = Some(restart(&mut d, &pin, &dir, n)?);
    c.memory
        .push(mem(pid(&mut d)?, "all sandboxes, after the restart", n)?);

    // 4. Drift on the running daemon, each trial on a sandbox of its own.
    let mut next_victim = 0usize;
    for kind in DRIFTS {
        let dr = drift(
            &d,
            &ns,
            &pin,
            &base,
            kind,
            cfg.reps,
            &names,
            &mut next_victim,
        )?;
        c.drift.push(dr);
    }

    // 5. Removal in creation order.
    let mut lat = Vec::new();
    for name in &names {
        sh::check_interrupted()?;
        match rm_one(&d, name) {
            Ok(ms) => {
                d.untrack(name);
                lat.push(ms);
                show_progress("rm -f", lat.len(), n, &lat);
            }
            Err(e) => {
                sh::check_interrupted()?;
                eprintln!("    error: {e:#}");
                c.errors.push(format!("serial rm: {e:#}"));
            }
        }
    }
    c.rm = latency(&lat);
    c.memory
        .push(mem(pid(&mut d)?, "after removing them one by one", 0)?);

    // 6. Parallel create-and-remove cycles.
    let mut create = Vec::new();
    let mut remove = Vec::new();
    let mut plat = Vec::new();
    for cycle in 1..=cfg.reps {
        let names: Vec<String> = (0..n).map(|k| format!("ctl{cycle}-{k}")).collect();
        for name in &names {
            d.track(name);
        }
        let t0 = Instant::now();
        let made = parallel(&names, cfg.clients, |name| run_one(&d, name));
        let create_s = t0.elapsed().as_secs_f64();
        sh::check_interrupted()?;
        let mut ok = Vec::new();
        for (name, r) in names.iter().zip(made) {
            match r {
                Some(Ok((ms, id))) => {
                    if let Some(netns) = netns_of(&id) {
                        d.track_netns(&netns);
                    }
                    plat.push(ms);
                    ok.push(name.clone());
                }
                Some(Err(e)) => c.errors.push(format!("cycle {cycle}: {e:#}")),
                None => {}
            }
        }
        eprintln!(
            "    cycle {cycle}/{}: {} created by {} clients in {create_s:.1} s ({:.1}/s)",
            cfg.reps,
            ok.len(),
            cfg.clients,
            ok.len() as f64 / create_s
        );
        let t0 = Instant::now();
        let gone = parallel(&ok, cfg.clients, |name| rm_one(&d, name));
        let remove_s = t0.elapsed().as_secs_f64();
        sh::check_interrupted()?;
        let mut removed = 0;
        for (name, r) in ok.iter().zip(gone) {
            match r {
                Some(Ok(_)) => {
                    d.untrack(name);
                    removed += 1;
                }
                Some(Err(e)) => c.errors.push(format!("cycle {cycle}: {e:#}")),
                None => {}
            }
        }
        eprintln!(
            "    cycle {cycle}/{}: {removed} removed in {remove_s:.1} s ({:.1}/s)",
            cfg.reps,
            removed as f64 / remove_s
        );
        if ok.len() == n as usize {
            create.push(ok.len() as f64 / create_s);
        }
        if removed == ok.len() && removed > 0 {
            remove.push(removed as f64 / remove_s);
        }
        c.cycles.push(Cycle {
            cycle,
            created: ok.len(),
            create_s,
            removed,
            remove_s,
        });
        c.memory.push(mem(
            pid(&mut d)?,
            &format!("after create-and-remove cycle {cycle}"),
            0,
        )?);
        if ok.len() < n as usize {
            bail!(
                "cycle {cycle}: only {} of {n} sandboxes were created",
                ok.len()
            );
        }
    }
    c.create_per_s = spread(&create);
    c.remove_per_s = spread(&remove);
    c.parallel_run = latency(&plat);
    drop(d);
    drop(cl);
    Ok(())
}

/// Runs `f` on every item with `clients` threads (item i on thread
/// i % clients, in order); a thread stops at its first error, leaving
/// `None` for the items it did not get to.
fn parallel<T: Send>(
    items: &[String],
    clients: u32,
    f: impl Fn(&str) -> Result<T> + Sync,
) -> Vec<Option<Result<T>>> {
    let clients = clients.max(1) as usize;
    let mut out: Vec<Option<Result<T>>> = items.iter().map(|_| None).collect();
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                s.spawn(move || {
                    let mut got = Vec::new();
                    for (i, item) in items.iter().enumerate().skip(t).step_by(clients) {
                        let r = f(item);
                        let failed = r.is_err();
                        got.push((i, r));
                        if failed {
                            break;
                        }
                    }
                    got
                })
            })
            .collect();
        for h in handles {
            if let Ok(got) = h.join() {
                for (i, r) in got {
                    out[i] = Some(r);
                }
            }
        }
    });
    out
}

fn restart(d: &mut Daemon, pin: &Path, scratch: &Path, n: u32) -> Result<Restart> {
    let before = map_keys(pin)?;
    eprintln!(
        "    restart: SIGKILL, delete the {} ENDPOINTS entries, start again",
        before.len()
    );
    d.kill()?;
    map_delete(pin, &before, scratch)?;
    let left = map_keys(pin)?.len();
    let limit = Duration::from_secs(60) + Duration::from_millis(100) * n;
    let t0 = Instant::now();
    d.spawn()?;
    // Two pollers, so that neither's probe delays the other's: `ps` on a
    // thread, the map (and whether the daemon still runs) here.
    let stop = AtomicBool::new(false);
    let (bin, host) = (d.bin.clone(), d.host());
    let (ps_at, maps_at, after) = std::thread::scope(|s| -> Result<_> {
        let ps = s.spawn(|| {
            while t0.elapsed() < limit && !stop.load(Ordering::Relaxed) {
                let mut c = sh::cmd(&bin, ["--host", host.as_str(), "ps"]);
                c.env_remove("DATAPLANE_HOST");
                if matches!(sh::timed(&mut c, Duration::from_secs(10)), Ok((_, o)) if o.ok()) {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(DRIFT_POLL);
            }
            None
        });
        let polled = (|| -> Result<_> {
            let (mut maps_at, mut after) = (None, 0);
            while maps_at.is_none() && t0.elapsed() < limit {
                sh::check_interrupted()?;
                if d.pid().is_none() {
                    bail!(
                        "the restarted daemon exited: {}",
                        sh::tail(&std::fs::read_to_string(&d.log).unwrap_or_default(), 8)
                    );
                }
                after = map_keys(pin)?.len();
                if after >= before.len() {
                    maps_at = Some(t0.elapsed());
                } else {
                    std::thread::sleep(DRIFT_POLL);
                }
            }
            Ok((maps_at, after))
        })();
        if polled.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let ps_at = ps.join().unwrap_or(None);
        let (maps_at, after) = polled?;
        Ok((ps_at, maps_at, after))
    })?;
    let ms = |t: Option<Duration>| t.map(|t| t.as_secs_f64() * 1e3);
    let r = Restart {
        endpoints_before: before.len(),
        endpoints_left_after_delete: left,
        ps_answered_ms: ms(ps_at),
        reprojected_ms: ms(maps_at),
        endpoints_after: after,
        gave_up_after_s: limit.as_secs(),
    };
    let show = |t: Option<f64>| {
        t.map_or(format!("not within {} s", limit.as_secs()), |t| {
            format!("{:.0} ms", t)
        })
    };
    eprintln!(
        "    restart: ps answered after {}, ENDPOINTS full ({after}/{}) after {}",
        show(r.ps_answered_ms),
        before.len(),
        show(r.reprojected_ms)
    );
    if ps_at.is_none() {
        bail!(
            "the restarted daemon did not answer `ps` within {} s",
            limit.as_secs()
        );
    }
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn drift(
    d: &Daemon,
    ns: &str,
    pin: &Path,
    base: &BTreeSet<Vec<u8>>,
    kind: DriftKind,
    reps: u32,
    names: &[String],
    next_victim: &mut usize,
) -> Result<Drift> {
    let mut trials = Vec::new();
    let mut skipped = 0;
    for _ in 0..reps {
        sh::check_interrupted()?;
        if trials.iter().any(|t: &Trial| t.repaired_ms.is_none()) {
            skipped += 1;
            continue;
        }
        let Some(name) = names.get(*next_victim) else {
            skipped += 1;
            continue;
        };
        *next_victim += 1;
        let (target, t0, back): (String, Instant, Box<dyn Fn() -> Result<bool>>) = match kind {
            DriftKind::EndpointsEntry => {
                // A key of a sandbox (not one the daemon had at 0).
                let keys = map_keys(pin)?;
                let key = keys
                    .into_iter()
                    .filter(|k| !base.contains(k))
                    .nth(*next_victim - 1)
                    .ok_or_else(|| anyhow!("no sandbox entry in ENDPOINTS to delete"))?;
                let mut c = sh::cmd("bpftool", ["map", "delete", "pinned"]);
                c.arg(pin).args(key_args(&key));
                sh::output(&mut c, Some(Duration::from_secs(10)))?;
                let t0 = Instant::now();
                let pin = pin.to_path_buf();
                let k = key.clone();
                (
                    format!("key {}", hex(&key)),
                    t0,
                    Box::new(move || map_has(&pin, &k)),
                )
            }
            DriftKind::HostRoute | DriftKind::HostVeth => {
                let (ip, dev) = host_side(d, ns, name)?;
                if kind == DriftKind::HostRoute {
                    lab::ip(ns, &["route", "del", &format!("{ip}/32"), "dev", &dev])?;
                } else {
                    lab::ip(ns, &["link", "del", &dev])?;
                }
                let t0 = Instant::now();
                let ns = ns.to_string();
                (
                    format!("{name} ({ip}, {dev})"),
                    t0,
                    Box::new(move || Ok(route_dev(&ns, &ip)?.is_some())),
                )
            }
        };
        let mut repaired = None;
        while t0.elapsed() < DRIFT_LIMIT {
            sh::check_interrupted()?;
            if back()? {
                repaired = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            std::thread::sleep(DRIFT_POLL);
        }
        eprintln!(
            "    drift: {}: {target}: {}",
            kind.title(),
            repaired.map_or(
                format!("not repaired within {} s", DRIFT_LIMIT.as_secs()),
                |ms| format!("back after {ms:.0} ms")
            )
        );
        trials.push(Trial {
            target,
            repaired_ms: repaired,
        });
    }
    let ok: Vec<f64> = trials.iter().filter_map(|t| t.repaired_ms).collect();
    Ok(Drift {
        kind,
        title: kind.title(),
        back_when: kind.back(),
        not_repaired: trials.len() - ok.len(),
        repaired_ms: spread(&ok),
        trials,
        skipped,
    })
}

// ------------------------------------------------------------ output

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// The result tables (terminal and BENCHMARKS.md).
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Latencies are per CLI call, from its spawn to its exit (the `dataplane` client included); \
         first/last 10 are the p50 of the first and the last ten calls, growth is last / first.\n"
    );
    let _ = writeln!(o, "#### `run -d` and `rm -f`, one at a time\n");
    let _ = writeln!(
        o,
        "| sandboxes | call | p50 ms | p99 ms | max ms | first 10 ms | last 10 ms | growth |"
    );
    let _ = writeln!(
        o,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for c in &r.counts {
        for (what, l) in [("run", &c.run), ("rm -f", &c.rm)] {
            match l {
                Some(l) => {
                    let _ = writeln!(
                        o,
                        "| {} | {what} | {} | {} | {} | {} | {} | {} |",
                        c.sandboxes,
                        ms(l.p50_ms),
                        ms(l.p99_ms),
                        ms(l.max_ms),
                        ms(l.first10_p50_ms),
                        ms(l.last10_p50_ms),
                        ratio_cell(l.growth)
                    );
                }
                None => {
                    let _ = writeln!(o, "| {} | {what} | not measured | | | | | |", c.sandboxes);
                }
            }
        }
    }
    let _ = writeln!(
        o,
        "\n#### Parallel: {} clients, {} create-and-remove cycle(s) of all sandboxes\n",
        r.clients, r.reps
    );
    let _ = writeln!(
        o,
        "| sandboxes | created/s (median) | spread (min–max) | removed/s (median) | spread (min–max) | run p50 ms | run p99 ms |"
    );
    let _ = writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in &r.counts {
        let rate = |s: &Option<Spread>| {
            s.as_ref()
                .map_or(("not measured".into(), String::new()), |s| {
                    (
                        format!("{:.1}", s.median),
                        format!("{:.1}–{:.1}", s.min, s.max),
                    )
                })
        };
        let (cm, cs) = rate(&c.create_per_s);
        let (rm, rs) = rate(&c.remove_per_s);
        let (p50, p99) = c
            .parallel_run
            .as_ref()
            .map_or((String::new(), String::new()), |l| {
                (ms(l.p50_ms), ms(l.p99_ms))
            });
        let _ = writeln!(
            o,
            "| {} | {cm} | {cs} | {rm} | {rs} | {p50} | {p99} |",
            c.sandboxes
        );
    }
    let _ = writeln!(
        o,
        "\n#### Daemon memory, threads and open files (/proc/PID)\n"
    );
    let _ = writeln!(
        o,
        "| run with | when | sandboxes | RSS MiB | threads | fds |"
    );
    let _ = writeln!(o, "| ---: | --- | ---: | ---: | ---: | ---: |");
    for c in &r.counts {
        for m in &c.memory {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                c.sandboxes,
                m.at,
                m.sandboxes,
                mib(m.rss_kib),
                m.threads,
                m.fds
            );
        }
    }
    let _ = writeln!(
        o,
        "\n#### Restart: SIGKILL, every ENDPOINTS entry deleted, daemon started again\n"
    );
    let _ = writeln!(
        o,
        "| sandboxes | ENDPOINTS entries | left after delete | `ps` answers after | ENDPOINTS full after | entries after |"
    );
    let _ = writeln!(o, "| ---: | ---: | ---: | ---: | ---: | ---: |");
    for c in &r.counts {
        match &c.restart {
            Some(s) => {
                let t = |v: Option<f64>| {
                    v.map_or(format!("not within {} s", s.gave_up_after_s), |v| {
                        format!("{} ms", ms(v))
                    })
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} |",
                    c.sandboxes,
                    s.endpoints_before,
                    s.endpoints_left_after_delete,
                    t(s.ps_answered_ms),
                    t(s.reprojected_ms),
                    s.endpoints_after
                );
            }
            None => {
                let _ = writeln!(o, "| {} | not measured | | | | |", c.sandboxes);
            }
        }
    }
    let _ = writeln!(
        o,
        "\n#### Drift on a running daemon (polled every {} ms, given up after {} s)\n",
        DRIFT_POLL.as_millis(),
        DRIFT_LIMIT.as_secs()
    );
    let _ = writeln!(
        o,
        "| sandboxes | deleted | back when | trials | repaired in (median ms) | not repaired |"
    );
    let _ = writeln!(o, "| ---: | --- | --- | ---: | ---: | ---: |");
    for c in &r.counts {
        for dr in &c.drift {
            let rep = dr.repaired_ms.as_ref().map_or("–".into(), |s| {
                format!("{} ({}–{})", ms(s.median), ms(s.min), ms(s.max))
            });
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {rep} | {}{} |",
                c.sandboxes,
                dr.title,
                dr.back_when,
                dr.trials.len(),
                dr.not_repaired,
                if dr.skipped > 0 {
                    format!(" ({} more trials skipped)", dr.skipped)
                } else {
                    String::new()
                }
            );
        }
    }
    let _ = writeln!(o);
    let problems: Vec<String> = r
        .counts
        .iter()
        .flat_map(|c| {
            c.failed
                .iter()
                .map(move |e| format!("{} sandboxes: stopped early: {e}", c.sandboxes))
                .chain(
                    c.errors
                        .iter()
                        .map(move |e| format!("{} sandboxes: {e}", c.sandboxes)),
                )
        })
        .collect();
    crate::md::bullets(&mut o, "Control-plane failures", &problems);
    o
}

/// This part's section of BENCHMARKS.md.
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
        "Per sandbox count, a fresh `dataplane daemon` in a namespace of its own (nsenter, private \
         run/state dirs and bpffs pins) with one network `{NETWORK}` ({}), driven from outside \
         through its CLI, `/proc`, `bpftool` and `ip`: N `run -d -- sleep infinity` one at a time; \
         a SIGKILL, every `ENDPOINTS` entry deleted with bpftool and a restart; one `ENDPOINTS` \
         entry, one host route and one host veth deleted on the running daemon; N `rm -f` one at a \
         time; then {} cycle(s) of N sandboxes created and removed by {} parallel clients. No \
         traffic is sent.\n",
        r.subnet, r.reps, r.clients
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
    use serde_json::json;

    #[test]
    fn latency_edges_and_growth() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = latency(&v).unwrap();
        assert_eq!(l.calls, 100);
        assert_eq!(l.first10_p50_ms, 6.0);
        assert_eq!(l.last10_p50_ms, 96.0);
        assert_eq!(l.growth, Some(16.0));
        assert_eq!(l.max_ms, 100.0);
        assert_eq!(l.p99_ms, 99.0);
        let one = latency(&[5.0]).unwrap();
        assert_eq!((one.first10_p50_ms, one.last10_p50_ms), (5.0, 5.0));
        assert!(latency(&[]).is_none());
    }

    #[test]
    fn bpftool_keys() {
        assert_eq!(
            key_bytes(&json!(["0x0a", "0xc9", "0x00", "0x02"])),
            Some(vec![10, 201, 0, 2])
        );
        assert_eq!(
            key_bytes(&json!(0x0200_c90a_u32)),
            Some(0x0200_c90a_u32.to_ne_bytes().to_vec())
        );
        assert_eq!(key_bytes(&json!(["zz"])), None);
        assert_eq!(hex(&[10, 201, 0, 2]), "0a c9 00 02");
        assert_eq!(key_args(&[1, 255])[..], ["key", "hex", "01", "ff"]);
    }

    #[test]
    fn netns_names_from_ids() {
        assert_eq!(
            netns_of("0123456789abcdef0123").as_deref(),
            Some("dp-0123456789ab")
        );
        assert_eq!(netns_of("short"), None);
        assert_eq!(netns_of("../../etc/passwd-x"), None);
    }

    #[test]
    fn parallel_keeps_order_and_stops_a_client_at_its_error() {
        let items: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        let out = parallel(&items, 4, |s| {
            let i: u32 = s.parse()?;
            if i == 1 {
                bail!("one fails");
            }
            Ok(i * 10)
        });
        // Client 1 has items 1, 5, 9: it stops at 1.
        assert!(matches!(out[1], Some(Err(_))));
        assert!(out[5].is_none());
        for i in [0, 2, 3, 4, 6, 7, 8] {
            assert_eq!(*out[i].as_ref().unwrap().as_ref().unwrap(), i as u32 * 10);
        }
    }

    #[test]
    fn section_split_keeps_the_rest() {
        let doc = format!(
            "# Benchmarks\n\n## DNS\n\nd\n\n{HEADING}\n\nold\n\n## Published ports x\n\nn\n"
        );
        let (rest, sec) = split(&doc);
        assert_eq!(
            sec.as_deref(),
            Some(format!("{HEADING}\n\nold\n\n").as_str())
        );
        assert_eq!(
            rest,
            "# Benchmarks\n\n## DNS\n\nd\n\n## Published ports x\n\nn\n"
        );
    }
}

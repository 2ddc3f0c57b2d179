//! Network namespaces, a dataplane daemon in one of them, and the guards
//! that tear everything down on any exit path (error, panic or Ctrl-C).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::sh::{self, cmd};

pub const SHORT: Duration = Duration::from_secs(30);

/// Cleanup actions, run in reverse order of registration when dropped.
/// A cleanup step: returns a warning if it did not fully succeed.
type Action = Box<dyn FnOnce() -> Option<String>>;

#[derive(Default)]
pub struct Cleanup {
    actions: Vec<(String, Action)>,
}

impl Cleanup {
    /// Registers `f` (returning an optional warning) to run on drop.
    pub fn push(&mut self, what: impl Into<String>, f: impl FnOnce() -> Option<String> + 'static) {
        self.actions.push((what.into(), Box::new(f)));
    }

    /// Creates a namespace (loopback up) that is deleted on drop.
    pub fn netns(&mut self, name: &str) -> Result<()> {
        let n = name.to_string();
        sh::output(&mut cmd("ip", ["netns", "add", name]), Some(SHORT))?;
        self.push(format!("delete netns {name}"), move || netns_delete(&n));
        ip(name, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A fresh directory removed (with whatever is in it) on drop.
    pub fn dir(&mut self, path: &Path) -> Result<()> {
        let _ = sh::remove_path(path);
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let p = path.to_path_buf();
        self.push(format!("remove {}", path.display()), move || {
            sh::remove_path(&p)
        });
        Ok(())
    }

    /// Forgets every registered action: what they would undo stays (for a
    /// lab left running on purpose, recorded elsewhere).
    pub fn keep(&mut self) {
        self.actions.clear();
    }

    /// A path (e.g. a bpffs pin directory) removed on drop if it exists.
    pub fn path(&mut self, path: &Path) {
        let p = path.to_path_buf();
        self.push(format!("remove {}", path.display()), move || {
            sh::remove_path(&p)
        });
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.actions.is_empty() {
            return;
        }
        let _c = sh::Cleaning::enter();
        eprintln!("==> cleaning up");
        while let Some((what, f)) = self.actions.pop() {
            if let Some(w) = f() {
                eprintln!("    warning: {what}: {w}");
            }
        }
    }
}

/// `ip -n NS ARGS...`, error on failure.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    sh::output(cmd("ip", ["-n", ns]).args(args), Some(SHORT))
}

/// Adds `cidr` to `dev` in `ns` and brings `dev` up.
pub fn addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip(ns, &["addr", "add", cidr, "dev", dev])?;
    ip(ns, &["link", "set", dev, "up"])?;
    Ok(())
}

/// `ip netns exec NS ARGS...` as a command to run.
pub fn in_netns(ns: &str, args: &[&str]) -> Command {
    let mut c = cmd("ip", ["netns", "exec", ns]);
    c.args(args);
    c
}

/// Sets a sysctl inside a namespace through its /proc/sys.
pub fn sysctl(ns: &str, key: &str, val: &str) -> Result<()> {
    sh::output(
        &mut in_netns(ns, &["sysctl", "-q", "-w", &format!("{key}={val}")]),
        Some(SHORT),
    )?;
    Ok(())
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Kills every process in the namespace, then deletes it. Only ever called
/// for namespaces this process created (or its own daemon did).
pub fn netns_delete(name: &str) -> Option<String> {
    if !netns_exists(name) {
        return None;
    }
    for _ in 0..3 {
        let pids = sh::capture(&mut cmd("ip", ["netns", "pids", name]), Some(SHORT))
            .map(|o| o.stdout)
            .unwrap_or_default();
        let pids: Vec<u32> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != std::process::id())
            .collect();
        if pids.is_empty() {
            break;
        }
        for p in pids {
            sh::kill_pid(p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match sh::capture(&mut cmd("ip", ["netns", "del", name]), Some(SHORT)) {
        Ok(o) if o.ok() => None,
        Ok(o) => Some(sh::tail(&o.stderr, 3)),
        Err(e) => Some(format!("{e:#}")),
    }
}

/// Polls `f` every `every` until it returns Ok(Some), for at most `limit`.
pub fn poll<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let end = Instant::now() + limit;
    loop {
        sh::check_interrupted()?;
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        sh::sleep(every)?;
    }
}

/// Waits until something listens on TCP `port` in `ns`.
pub fn wait_listening(ns: &str, port: u16, limit: Duration) -> Result<()> {
    let filter = format!("sport = :{port}");
    let ok = poll(limit, Duration::from_millis(50), || {
        let o = sh::capture(&mut in_netns(ns, &["ss", "-Hltn", &filter]), Some(SHORT))?;
        Ok((o.ok() && !o.stdout.trim().is_empty()).then_some(()))
    })?;
    ok.ok_or_else(|| {
        anyhow!(
            "nothing listens on port {port} in netns {ns} after {} s",
            limit.as_secs()
        )
    })
}

/// Waits until `ping` from `ns` reaches `ip`.
pub fn wait_reachable(ns: &str, ip: &str, limit: Duration) -> Result<()> {
    let ok = poll(limit, Duration::from_millis(200), || {
        Ok(sh::succeeds(&mut in_netns(ns, &["ping", "-c", "1", "-W", "1", ip])).then_some(()))
    })?;
    ok.ok_or_else(|| {
        anyhow!(
            "{ip} is not reachable from netns {ns} after {} s",
            limit.as_secs()
        )
    })
}

/// A sandbox made by `dataplane run`.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub name: String,
    /// Basename of SandboxKey: usable with `ip netns exec`.
    pub netns: String,
    pub ip: String,
}

/// A `dataplane daemon` running in a namespace through nsenter. Dropping it
/// removes the containers it was asked to run, stops it, and deletes any
/// sandbox namespace of those containers that is left.
pub struct Daemon {
    pub bin: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    ns: String,
    dir: PathBuf,
    bpffs: PathBuf,
    child: Option<Child>,
    /// Process groups of daemons killed with [`Daemon::kill`]: their
    /// sandboxes' processes may still be in them.
    old_groups: Vec<u32>,
    containers: Vec<String>,
    sandboxes: Vec<String>,
    /// Extra `daemon` arguments of every start (e.g. `--store URL`).
    args: Vec<String>,
}

impl Daemon {
    /// Starts the daemon in `ns` with run/state dirs under `dir` and pins
    /// under `bpffs`, and waits (up to `ready_within`) until it answers.
    pub fn start(
        bin: &Path,
        ns: &str,
        dir: &Path,
        bpffs: &Path,
        ready_within: Duration,
    ) -> Result<Self> {
        Self::start_with(bin, ns, dir, bpffs, &[], ready_within)
    }

    /// As [`Daemon::start`], with extra `daemon` arguments.
    pub fn start_with(
        bin: &Path,
        ns: &str,
        dir: &Path,
        bpffs: &Path,
        args: &[&str],
        ready_within: Duration,
    ) -> Result<Self> {
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(dir.join("state"))?;
        let log = dir.join("daemon.log");
        File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut d = Self {
            bin: bin.to_path_buf(),
            sock: run.join("api.sock"),
            log,
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            bpffs: bpffs.to_path_buf(),
            child: None,
            old_groups: Vec::new(),
            containers: Vec::new(),
            sandboxes: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.spawn()?;
        d.wait_ready(ready_within)?;
        Ok(d)
    }

    /// Starts the daemon process (same dirs, pins and namespace; its log
    /// appended to) without waiting for it to answer.
    pub fn spawn(&mut self) -> Result<()> {
        if self.alive() {
            bail!("the daemon is already running");
        }
        let f = File::options()
            .append(true)
            .create(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut c = cmd("nsenter", [format!("--net=/var/run/netns/{}", self.ns)]);
        c.arg(&self.bin)
            .arg("daemon")
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(&self.args)
            .env_remove("DATAPLANE_HOST")
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f));
        self.child = Some(sh::spawn(&mut c)?);
        Ok(())
    }

    /// The daemon's pid (nsenter execs it), while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        if !self.alive() {
            return None;
        }
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL to the daemon alone (a crash: its sandboxes' processes,
    /// netns, veths and pins stay), reaped. [`Daemon::spawn`] starts it again.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut ch) = self.child.take() else {
            bail!("the daemon is not running");
        };
        sh::kill_pid(ch.id(), libc::SIGKILL);
        self.old_groups.push(ch.id());
        ch.wait().context("reaping the killed daemon")?;
        Ok(())
    }

    /// Leaves the daemon running past this guard (its own process group,
    /// so not stopped by a Ctrl-C of ours) and returns its pid; nothing is
    /// stopped or removed on drop.
    pub fn detach(mut self) -> Option<u32> {
        let pid = self.pid();
        self.child = None;
        self.containers.clear();
        self.sandboxes.clear();
        self.old_groups.clear();
        std::mem::forget(self);
        pid
    }

    /// Registers a container the caller creates itself (before creating
    /// it), so that drop removes it.
    pub fn track(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    /// Registers a sandbox netns that drop deletes if it is still there
    /// once the daemon has stopped.
    pub fn track_netns(&mut self, netns: &str) {
        self.sandboxes.push(netns.to_string());
    }

    /// Forgets a container the caller removed.
    pub fn untrack(&mut self, name: &str) {
        if let Some(i) = self.containers.iter().rposition(|c| c == name) {
            self.containers.swap_remove(i);
        }
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    fn log_tail(&self) -> String {
        sh::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 8)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let end = start + limit;
        loop {
            sh::check_interrupted()?;
            if let Some(ch) = self.child.as_mut() {
                if let Some(st) = ch.try_wait()? {
                    self.child = None;
                    bail!(
                        "the daemon exited ({st}) before it was ready: {}",
                        self.log_tail()
                    );
                }
            }
            let o = sh::capture(
                &mut self.client(&["network", "ls"]),
                Some(Duration::from_secs(5)),
            );
            if matches!(o, Ok(ref o) if o.ok()) {
                eprintln!("    daemon ready in {:.1} s", start.elapsed().as_secs_f64());
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "the daemon did not answer on {} within {} s (`dataplane network ls` kept failing); its log: {}",
                    self.sock.display(),
                    limit.as_secs(),
                    self.log_tail()
                );
            }
            sh::sleep(Duration::from_millis(200))?;
        }
    }

    /// `dataplane --host unix://SOCK ARGS...`
    pub fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--host")
            .arg(self.host())
            .args(args)
            .env_remove("DATAPLANE_HOST");
        c
    }

    /// Runs a client command; its stdout, or an error with its stderr.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        sh::output(&mut self.client(args), Some(Duration::from_secs(60)))
    }

    /// `run -d --name NAME --network NET -- CMD...`, then inspect for its
    /// sandbox namespace and address.
    pub fn run(&mut self, name: &str, network: &str, command: &[&str]) -> Result<Sandbox> {
        self.run_with(name, network, &[], command)
    }

    /// As `run`, with more `run` options (e.g. `--link NAME:ALIAS`) before `--`.
    pub fn run_with(
        &mut self,
        name: &str,
        network: &str,
        options: &[&str],
        command: &[&str],
    ) -> Result<Sandbox> {
        self.containers.push(name.to_string());
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(options);
        args.push("--");
        args.extend_from_slice(command);
        self.cli(&args)?;
        let out = self.cli(&["inspect", name])?;
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("parsing `inspect {name}`"))?;
        let (key, ip) =
            sandbox_of(&v, network).with_context(|| format!("reading `inspect {name}`: {out}"))?;
        let netns = Path::new(&key)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("bad SandboxKey {key:?}"))?
            .to_string();
        self.sandboxes.push(netns.clone());
        Ok(Sandbox {
            name: name.to_string(),
            netns,
            ip,
        })
    }

    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// SandboxKey and IPAddress from `inspect` output (object or one-element
/// array; SandboxKey at the top or under NetworkSettings).
pub fn sandbox_of(v: &Value, network: &str) -> Result<(String, String)> {
    let c = match v {
        Value::Array(a) => a.first().ok_or_else(|| anyhow!("empty inspect array"))?,
        other => other,
    };
    let key = c["SandboxKey"]
        .as_str()
        .or_else(|| c["NetworkSettings"]["SandboxKey"].as_str())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| anyhow!("no SandboxKey"))?
        .to_string();
    let nets = &c["NetworkSettings"]["Networks"];
    let ip = nets[network]["IPAddress"]
        .as_str()
        .or_else(|| {
            nets.as_object()
                .and_then(|o| o.values().find_map(|n| n["IPAddress"].as_str()))
        })
        .filter(|ip| !ip.is_empty())
        .ok_or_else(|| anyhow!("no NetworkSettings.Networks.{network}.IPAddress"))?
        .to_string();
    Ok((key, ip))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _c = sh::Cleaning::enter();
        eprintln!("==> stopping the daemon and its containers");
        if self.alive() {
            // Services first (their agents would start replicas again),
            // then every container the daemon lists: replicas are made by
            // the daemon itself, not by `run` here.
            let listed = |args: &[&str], key: &str| -> Vec<String> {
                let Ok(o) = sh::capture(&mut self.client(args), Some(Duration::from_secs(30)))
                else {
                    return Vec::new();
                };
                sh::json_list(&o.stdout)
                    .iter()
                    .filter_map(|x| x[key].as_str().map(str::to_string))
                    .collect()
            };
            for svc in listed(&["service", "ls", "--format", "json"], "Name") {
                let _ = sh::capture(
                    &mut self.client(&["service", "rm", &svc]),
                    Some(Duration::from_secs(60)),
                );
            }
            for name in listed(&["ps", "-a", "--format", "json"], "Names") {
                if !self.containers.contains(&name) {
                    self.containers.push(name);
                }
            }
        }
        if self.alive() && !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            // One `rm -f` per container inside: allow for many of them.
            let limit = Duration::from_secs(60) + Duration::from_millis(250) * args.len() as u32;
            let c = sh::capture(&mut self.client(&args), Some(limit));
            if let Ok(o) = c {
                if !o.ok() {
                    eprintln!("    warning: rm -f: {}", sh::tail(&o.stderr, 3));
                }
            }
        }
        if let Some(mut ch) = self.child.take() {
            sh::stop_group(&mut ch, Duration::from_secs(10));
        }
        for pg in self.old_groups.drain(..) {
            sh::killpg(pg, libc::SIGKILL);
        }
        for ns in &self.sandboxes {
            if let Some(w) = netns_delete(ns) {
                eprintln!("    warning: deleting sandbox netns {ns}: {w}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inspect_shapes() {
        let a = json!([{"NetworkSettings": {"SandboxKey": "/var/run/netns/dp-0123456789ab",
            "Networks": {"demo": {"IPAddress": "10.88.0.2"}}}}]);
        assert_eq!(
            sandbox_of(&a, "demo").unwrap(),
            ("/var/run/netns/dp-0123456789ab".into(), "10.88.0.2".into())
        );
        let o = json!({"SandboxKey": "/var/run/netns/dp-x", "NetworkSettings": {"Networks": {"n": {"IPAddress": "10.0.0.3"}}}});
        assert_eq!(sandbox_of(&o, "other").unwrap().1, "10.0.0.3");
        assert!(sandbox_of(&json!([]), "n").is_err());
    }
}

// ----- `cargo xtask lab up` / `lab down`: the multi-host lab -----------------

/// Where `lab up` keeps everything it made (run/state dirs, etcd's data,
/// logs) and its state file.
const LAB_DIR: &str = "/run/dataplane-lab";
const LAB_STATE: &str = "/run/dataplane-lab/lab.json";
/// The underlay's /24 (in the lab's own namespaces only).
pub const LAB_NET: &str = "192.168.100";
const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCD_PORT: u16 = 2379;

/// What `lab up` made, as `lab down` finds it in [`LAB_STATE`].
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct LabState {
    bin: PathBuf,
    underlay: String,
    etcd_pid: u32,
    etcd_data: PathBuf,
    etcd_url: String,
    hosts: Vec<LabHost>,
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct LabHost {
    name: String,
    netns: String,
    ip: String,
    pid: Option<u32>,
    dir: PathBuf,
    bpffs: PathBuf,
    sock: PathBuf,
}

/// Whether `pid` runs a command line containing every one of `needles`
/// (so that a recycled pid is never signalled).
fn runs(pid: u32, needles: &[&str]) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
    needles.iter().all(|n| line.contains(n))
}

/// SIGTERM, then SIGKILL after `grace`, to a process we did not spawn in
/// this run (no Child to wait on): polls /proc.
fn stop_pid(pid: u32, needles: &[&str], grace: Duration) {
    if !runs(pid, needles) {
        return;
    }
    sh::kill_pid(pid, libc::SIGTERM);
    let end = Instant::now() + grace;
    while runs(pid, needles) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    if runs(pid, needles) {
        sh::kill_pid(pid, libc::SIGKILL);
    }
}

/// `cargo xtask lab up --hosts N`: an underlay netns `dplab-underlay` with
/// a bridge (the switch) at .1, etcd on it, and N host netns `dplab-hostI`
/// (eth0 .1I on the bridge), each with a daemon `--store etcd://...
/// --node-name hostI --advertise-addr ITS-IP`. Everything is left running
/// and recorded in [`LAB_STATE`]; on any failure what was made is removed.
pub fn lab_up(bin: &Path, hosts: u8) -> Result<()> {
    let bin = &std::fs::canonicalize(bin).with_context(|| format!("{}", bin.display()))?;
    if !(1..=50).contains(&hosts) {
        bail!("--hosts must be 1 to 50, not {hosts}");
    }
    if Path::new(LAB_STATE).exists() {
        bail!("a lab is already up ({LAB_STATE}): `cargo xtask lab down` first");
    }
    let mut c = Cleanup::default();
    let (state, daemons) = build_lab(&mut c, bin, "dplab", Path::new(LAB_DIR), hosts)?;
    std::fs::write(LAB_STATE, serde_json::to_vec_pretty(&state)?)
        .with_context(|| format!("writing {LAB_STATE}"))?;
    // Up: from here on the lab is `lab down`'s to remove.
    for d in daemons {
        d.detach();
    }
    c.keep();
    print_lab(&state);
    Ok(())
}

/// A running multi-host lab: what [`build_lab`] made.
pub struct Lab {
    pub hosts: Vec<Daemon>,
    /// Each host's netns and underlay address.
    pub addrs: Vec<(String, String)>,
}

/// Builds the multi-host topology under `dir` with names starting with
/// `tag`, registering its removal in `c` (the demo drops it at the end;
/// `lab up` keeps it).
pub fn cluster(c: &mut Cleanup, bin: &Path, tag: &str, dir: &Path, hosts: u8) -> Result<Lab> {
    let (state, daemons) = build_lab(c, bin, tag, dir, hosts)?;
    Ok(Lab {
        hosts: daemons,
        addrs: state.hosts.into_iter().map(|h| (h.netns, h.ip)).collect(),
    })
}

fn build_lab(
    c: &mut Cleanup,
    bin: &Path,
    tag: &str,
    dir: &Path,
    hosts: u8,
) -> Result<(LabState, Vec<Daemon>)> {
    if !Path::new(ETCD_BIN).is_file() {
        bail!("{ETCD_BIN} is missing: run `cargo xtask setup` (Debian's etcd-server)");
    }
    let underlay = format!("{tag}-underlay");
    let names: Vec<String> = (1..=hosts).map(|i| format!("{tag}-host{i}")).collect();
    for n in std::iter::once(&underlay).chain(&names) {
        if netns_exists(n) {
            bail!("netns {n} exists but {LAB_STATE} does not: not ours to reuse or remove (delete it by hand if it is a leftover)");
        }
    }
    let dir = dir.to_path_buf();
    c.dir(&dir)?;
    eprintln!("==> underlay {underlay}: bridge br0 at {LAB_NET}.1/24");
    c.netns(&underlay)?;
    // A fixed MAC: a bridge without one takes its lowest port's, and
    // plugging in the next host would change the gateway's MAC under the
    // hosts that already resolved it.
    ip(
        &underlay,
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
    addr(&underlay, "br0", &format!("{LAB_NET}.1/24"))?;

    eprintln!("==> etcd on {LAB_NET}.1:{ETCD_PORT}");
    let client = format!("http://{LAB_NET}.1:{ETCD_PORT}");
    let peer = "http://127.0.0.1:2380";
    let etcd_data = dir.join("etcd");
    let log = File::create(dir.join("etcd.log"))?;
    let mut e = cmd("nsenter", [format!("--net=/var/run/netns/{underlay}")]);
    e.arg(ETCD_BIN)
        .args(["--name", "lab", "--data-dir"])
        .arg(&etcd_data)
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("lab={peer}")])
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let etcd = sh::spawn(&mut e)?;
    let etcd_pid = etcd.id();
    drop(etcd);
    c.push("stop etcd", move || {
        stop_pid(etcd_pid, &["etcd"], Duration::from_secs(5));
        None
    });
    let health = format!("{client}/health");
    let healthy = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let o = sh::capture(
            &mut in_netns(&underlay, &["curl", "-s", "-m", "2", &health]),
            Some(SHORT),
        )?;
        Ok(o.stdout.contains(r#""health":"true""#).then_some(()))
    })?;
    if healthy.is_none() {
        bail!(
            "etcd did not become healthy within 20 s; its log: {}",
            sh::tail(
                &std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default(),
                8
            )
        );
    }

    let store = format!("etcd://{LAB_NET}.1:{ETCD_PORT}");
    let mut daemons = Vec::new();
    let mut state = LabState {
        bin: bin.to_path_buf(),
        underlay: underlay.clone(),
        etcd_pid,
        etcd_data,
        etcd_url: store.clone(),
        hosts: Vec::new(),
    };
    for (i, ns) in names.iter().enumerate() {
        let n = i + 1;
        let host_ip = format!("{LAB_NET}.{}", 10 + n);
        let name = format!("host{n}");
        eprintln!("==> {name}: netns {ns}, eth0 {host_ip}/24, a daemon");
        c.netns(ns)?;
        let port = format!("h{n}");
        ip(
            &underlay,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        ip(&underlay, &["link", "set", &port, "master", "br0", "up"])?;
        addr(ns, "eth0", &format!("{host_ip}/24"))?;
        wait_reachable(ns, &format!("{LAB_NET}.1"), Duration::from_secs(10))?;
        let hdir = dir.join(&name);
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{tag}-{name}"));
        if bpffs.exists() {
            bail!("{} exists: not ours to reuse", bpffs.display());
        }
        c.path(&bpffs);
        let d = Daemon::start_with(
            bin,
            ns,
            &hdir,
            &bpffs,
            &[
                "--store",
                &store,
                "--node-name",
                &name,
                "--advertise-addr",
                &host_ip,
            ],
            Duration::from_secs(30),
        )?;
        state.hosts.push(LabHost {
            name,
            netns: ns.clone(),
            ip: host_ip,
            pid: None,
            dir: hdir,
            bpffs,
            sock: d.sock.clone(),
        });
        daemons.push(d);
    }
    for (h, d) in state.hosts.iter_mut().zip(daemons.iter_mut()) {
        h.pid = d.pid();
    }
    Ok((state, daemons))
}

fn print_lab(s: &LabState) {
    let b = s.bin.display();
    println!(
        "lab up: {} hosts on {LAB_NET}.0/24 (netns {}, bridge br0), etcd at {}",
        s.hosts.len(),
        s.underlay,
        s.etcd_url
    );
    for h in &s.hosts {
        println!(
            "  {:<6} netns {:<12} eth0 {:<16} -H unix://{}",
            h.name,
            h.netns,
            h.ip,
            h.sock.display()
        );
    }
    let (first, last) = (&s.hosts[0], &s.hosts[s.hosts.len() - 1]);
    let h = |x: &LabHost| {
        format!(
            "ip netns exec {} {b} -H unix://{}",
            x.netns,
            x.sock.display()
        )
    };
    println!("try:");
    println!(
        "  {} network create --driver overlay --subnet 10.90.0.0/24 ov",
        h(first)
    );
    println!(
        "  {} run -d --name a --network ov -- sleep infinity",
        h(first)
    );
    println!(
        "  {} run -d --name b --network ov -- sleep infinity",
        h(last)
    );
    println!(
        "  {} exec a -- ping -c3 B-ADDRESS   (from `inspect b`)",
        h(first)
    );
    println!("  {b} -H unix://{} node ls", first.sock.display());
    println!("  (the client only needs the socket: `ip netns exec` is optional; logs in {LAB_DIR}/HOST/daemon.log)");
    println!("tear down: cargo xtask lab down");
}

/// `cargo xtask lab down`: removes what [`LAB_STATE`] records (each host's
/// containers through its daemon, the daemons, the host netns and pins,
/// etcd, the underlay, [`LAB_DIR`]), and nothing else.
pub fn lab_down() -> Result<()> {
    let raw = match std::fs::read(LAB_STATE) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("==> no lab is up (no {LAB_STATE})");
            return Ok(());
        }
        Err(e) => return Err(e).with_context(|| format!("reading {LAB_STATE}")),
    };
    let s: LabState =
        serde_json::from_slice(&raw).with_context(|| format!("parsing {LAB_STATE}"))?;
    let _c = sh::Cleaning::enter();
    let mut warnings = Vec::new();
    for h in s.hosts.iter().rev() {
        eprintln!("==> {}: containers, daemon, netns {}", h.name, h.netns);
        let sock = h.sock.to_string_lossy().into_owned();
        let alive = h
            .pid
            .is_some_and(|p| runs(p, &["daemon", &sock.replace("/api.sock", "")]));
        let mut sandboxes = Vec::new();
        if alive {
            let client = |args: &[&str]| {
                let mut c = Command::new(&s.bin);
                c.arg("--host")
                    .arg(format!("unix://{sock}"))
                    .args(args)
                    .env_remove("DATAPLANE_HOST");
                sh::capture(&mut c, Some(Duration::from_secs(60)))
            };
            let ps = client(&["ps", "-a", "--no-trunc", "--format", "json"])
                .ok()
                .filter(|o| o.ok());
            let ids: Vec<String> = ps
                .map(|o| sh::json_list(&o.stdout))
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c["ID"].as_str().map(str::to_string))
                .collect();
            for id in &ids {
                if let Ok(o) = client(&["inspect", id]) {
                    if let Ok(v) = serde_json::from_str::<Value>(&o.stdout) {
                        if let Ok((key, _)) = sandbox_of(&v, "") {
                            sandboxes.push(key);
                        }
                    }
                }
            }
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                match client(&args) {
                    Ok(o) if o.ok() => {}
                    Ok(o) => {
                        warnings.push(format!("{}: rm -f: {}", h.name, sh::tail(&o.stderr, 3)))
                    }
                    Err(e) => warnings.push(format!("{}: rm -f: {e:#}", h.name)),
                }
            }
        } else {
            warnings.push(format!(
                "{}: the daemon was not running: containers it made by hand may be left (their sandbox netns are not recorded)",
                h.name
            ));
        }
        if let Some(p) = h.pid {
            stop_pid(
                p,
                &["daemon", &sock.replace("/api.sock", "")],
                Duration::from_secs(10),
            );
        }
        for key in sandboxes {
            if let Some(ns) = Path::new(&key).file_name().and_then(|n| n.to_str()) {
                if let Some(w) = netns_delete(ns) {
                    warnings.push(format!("sandbox netns {ns}: {w}"));
                }
            }
        }
        for w in [netns_delete(&h.netns), sh::remove_path(&h.bpffs)]
            .into_iter()
            .flatten()
        {
            warnings.push(format!("{}: {w}", h.name));
        }
    }
    eprintln!("==> etcd, underlay {}, {LAB_DIR}", s.underlay);
    stop_pid(
        s.etcd_pid,
        &["etcd", &s.etcd_data.to_string_lossy()],
        Duration::from_secs(5),
    );
    for w in [
        netns_delete(&s.underlay),
        sh::remove_path(Path::new(LAB_DIR)),
    ]
    .into_iter()
    .flatten()
    {
        warnings.push(w);
    }
    for w in &warnings {
        eprintln!("    warning: {w}");
    }
    eprintln!("==> lab down");
    Ok(())
}

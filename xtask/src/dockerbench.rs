//! The Docker part of `cargo xtask bench` (`--setups docker`): real Docker
//! (Debian's docker.io 20.10, `dockerd` and `/usr/bin/docker`) with the
//! same image and the same containers on two hosts built side by side:
//!
//! ```text
//! client netns (eth0 198.51.100.2/24) -- veth -- host netns (up0 198.51.100.1/24) -- containers
//! ```
//!
//! - **Docker bridge**: dockerd in the host netns with its defaults
//!   (iptables on, docker-proxy on), a user-defined network of the `bridge`
//!   driver (a Linux bridge, Docker's iptables rules).
//! - **dataplane**: our daemon in its host netns; the containers are made
//!   by `docker run` on `docker network create -d dataplane --ipam-driver
//!   dataplane` when the `dataplane` binary serves Docker's plugin
//!   protocol (`daemon --docker-plugin`), and otherwise by our own CLI
//!   (`dataplane run`) as a stand-in, labelled so in the report.
//!
//! dockerd runs under `nsenter --net=<host netns>` (not `ip netns exec`:
//! that remounts /sys and dockerd fails) and `unshare --mount --propagation
//! slave`: its overlay mounts, netns bind mounts and the `/run/docker`
//! it sees (a tmpfs, with `plugins/` bound to a directory of the run) stay
//! in a mount namespace of its own, so nothing of it is mounted on the
//! host and a dockerd killed half-way leaves no mount behind once its
//! processes are gone; the guard kills exactly those processes (found by
//! that mount namespace) if dockerd does not stop by itself.
//!
//! Per side and rep (sides alternating which goes first): container to
//! container TCP throughput, 64-byte UDP packets per second and TCP
//! request/response p50/p99 (the network setups' `measure`, tools from the
//! host's filesystem run in the containers' namespaces, named with `ip
//! netns attach`); new TCP connections per second to a published port
//! from the outside client; the same from a container on the network to
//! the host's address (Docker sends that through docker-proxy); and
//! `docker run -d` timed until it returns and until the container's
//! address answers a ping from the host netns.

use std::{
    fmt::Write as _,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;

use crate::{
    bench::{self, Cores, LatencyTool, Pair},
    lab::{self, Cleanup, Daemon},
    md,
    natbench::{self, conn_client_in, conn_server_in, Counters, CLIENT_IP, HOST_IP},
    sh::{self, cmd, first_line},
    stats::{percentile, ratio, ratio_cell, spread, Spread},
    Progress,
};

/// The heading that starts this part's section of BENCHMARKS.md.
pub const HEADING: &str = "## Docker: the bridge driver against -d dataplane";
const HEADING_PREFIX: &str = "## Docker:";

/// Debian's docker.io; `/usr/local/bin/docker` (a newer CLI) may come
/// first in PATH, so both are named by path.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
pub const DOCKER: &str = "/usr/bin/docker";
const BUSYBOX: &str = "/bin/busybox";
pub const IMAGE: &str = "dpbench-bb:latest";
/// The driver's name in Docker (`-d`, `--ipam-driver`); its socket is in a
/// plugin directory only this run's dockerd sees, so the name is free.
const PLUGIN: &str = "dataplane";
/// The published (host and container) port.
const PORT: u16 = 20000;
const CLI_LIMIT: Duration = Duration::from_secs(120);
/// How long a ping may take to get an answer after `run` returned.
const PING_WITHIN_S: u64 = 5;

/// Which containers the dataplane side has.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `docker run` on a `-d dataplane` network (our plugin).
    Plugin,
    /// Our CLI's `dataplane run` in place of Docker: the plugin is not
    /// in this build.
    CliStandIn,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Bridge,
    Dataplane,
}

impl Side {
    fn title(self, mode: Mode) -> &'static str {
        match (self, mode) {
            (Side::Bridge, _) => "Docker bridge driver",
            (Side::Dataplane, Mode::Plugin) => "docker -d dataplane",
            (Side::Dataplane, Mode::CliStandIn) => "dataplane CLI (stand-in for -d dataplane)",
        }
    }

    /// The containers' network (a /24 of its own per side).
    fn subnet(self) -> &'static str {
        match self {
            Side::Bridge => "10.210.0",
            Side::Dataplane => "10.211.0",
        }
    }
}

/// What to run (from `cargo xtask bench`'s arguments).
pub struct Config {
    pub reps: u32,
    pub seconds: u64,
    /// `docker run` samples per side and rep.
    pub runs: u32,
    pub tool: LatencyTool,
    pub cores: Vec<Cores>,
    /// The release xtask binary (conn-client/server).
    pub xtask: PathBuf,
    pub dataplane: PathBuf,
    pub tag: String,
    /// A scratch directory removed by the caller.
    pub dir: PathBuf,
}

// ------------------------------------------------------------ dockerd

/// A container made by [`Dockerd::run`], its netns named for `ip netns exec`.
#[derive(Clone, Debug)]
pub struct Container {
    pub ip: String,
    /// The name under /var/run/netns (`ip netns attach`).
    pub netns: String,
}

/// A dockerd in a network namespace with private data, exec and plugin
/// directories. Dropping it removes its containers and networks, stops
/// it, and kills whatever of it is left.
pub struct Dockerd {
    pub sock: PathBuf,
    pub log: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
    /// The inode of dockerd's own mount namespace (None if it is the
    /// host's, which never happens with `unshare`, but then nothing is
    /// killed by it).
    mntns: Option<String>,
    containers: Vec<String>,
    networks: Vec<String>,
    attached: Vec<String>,
}

fn mnt_ns(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// (pid, ppid) of every process, from /proc/PID/stat.
fn processes() -> Vec<(u32, u32)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ...": comm may hold spaces and parens.
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Every pid in `roots` and their descendants, from (pid, ppid) pairs.
pub fn with_descendants(procs: &[(u32, u32)], roots: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for &(c, pp) in procs {
            if pp == p && !out.contains(&c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

impl Dockerd {
    /// Starts dockerd in netns `ns` with everything under `dir`, the
    /// plugin directory it sees being `plugins`; waits until it answers.
    pub fn start(ns: &str, dir: &Path, plugins: &Path, ready_within: Duration) -> Result<Self> {
        for d in [dir, plugins] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // The mount point of the private tmpfs (dockerd would make it).
        std::fs::create_dir_all("/run/docker")?;
        let log = dir.join("dockerd.log");
        let f = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let sock = Self::socket_in(dir);
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let script = format!(
            "mount -t tmpfs -o mode=0700 tmpfs /run/docker && mkdir /run/docker/plugins && \
             mount --bind {plugins} /run/docker/plugins && \
             exec {DOCKERD} --data-root {data} --exec-root {exec} --pidfile {pid} -H unix://{sock}",
            plugins = q(plugins),
            data = q(&dir.join("data")),
            exec = q(&dir.join("exec")),
            pid = q(&dir.join("dockerd.pid")),
            sock = sock.display(),
        );
        let mut c = cmd("nsenter", [format!("--net=/var/run/netns/{ns}")]);
        c.args([
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_remove("DOCKER_HOST")
        .stdout(Stdio::from(f.try_clone()?))
        .stderr(Stdio::from(f));
        let child = sh::spawn(&mut c)?;
        let mut d = Self {
            sock,
            log,
            dir: dir.to_path_buf(),
            child: Some(child),
            mntns: None,
            containers: Vec::new(),
            networks: Vec::new(),
            attached: Vec::new(),
        };
        d.wait_ready(ready_within)?;
        Ok(d)
    }

    /// dockerd's pid while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        let ch = self.child.as_mut()?;
        matches!(ch.try_wait(), Ok(None)).then(|| ch.id())
    }

    /// The API socket of a dockerd started with `dir`.
    pub fn socket_in(dir: &Path) -> PathBuf {
        dir.join("docker.sock")
    }

    fn log_tail(&self) -> String {
        sh::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 6)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            sh::check_interrupted()?;
            if let Some(ch) = self.child.as_mut() {
                if let Some(st) = ch.try_wait()? {
                    self.child = None;
                    bail!(
                        "dockerd exited ({st}) before it answered: {}",
                        self.log_tail()
                    );
                }
            }
            let o = sh::capture(
                &mut self.docker(&["version", "--format", "{{.Server.Version}}"]),
                Some(Duration::from_secs(10)),
            );
            if matches!(o, Ok(ref o) if o.ok()) {
                let pid = self.pid().unwrap_or(0).to_string();
                let own = mnt_ns("self");
                self.mntns = mnt_ns(&pid).filter(|m| Some(m) != own.as_ref());
                if self.mntns.is_none() {
                    bail!("dockerd (pid {pid}) is not in a mount namespace of its own");
                }
                eprintln!(
                    "    dockerd ready in {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() >= limit {
                bail!(
                    "dockerd did not answer on {} within {} s: {}",
                    self.sock.display(),
                    limit.as_secs(),
                    self.log_tail()
                );
            }
            sh::sleep(Duration::from_millis(200))?;
        }
    }

    /// `/usr/bin/docker -H unix://SOCK ARGS...`
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    pub fn cli(&self, args: &[&str]) -> Result<String> {
        sh::output(&mut self.docker(args), Some(CLI_LIMIT))
    }

    /// `docker version`'s server version.
    pub fn version(&self) -> String {
        first_line(&mut self.docker(&["version", "--format", "{{.Server.Version}}"]))
    }

    /// Imports [`IMAGE`] from a busybox-static root filesystem (no
    /// registry is reachable): /bin/busybox and its applet links.
    pub fn import_busybox(&self) -> Result<()> {
        let root = self.dir.join("rootfs");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(BUSYBOX, bin.join("busybox"))
            .with_context(|| format!("copying {BUSYBOX} (Debian's busybox-static)"))?;
        for l in [
            "sh", "sleep", "true", "ping", "ip", "cat", "ls", "mkdir", "echo", "httpd", "wget",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(l))?;
        }
        let tar = root.join("../rootfs.tar");
        sh::output(
            cmd("tar", ["-C"])
                .arg(&root)
                .args(["-cf"])
                .arg(&tar)
                .arg("."),
            Some(CLI_LIMIT),
        )?;
        // By path: the CLI streams the file (our children get no stdin).
        sh::output(
            self.docker(&["import"]).arg(&tar).arg(IMAGE),
            Some(CLI_LIMIT),
        )
        .map(|_| ())
        .context("docker import of the busybox image")
    }

    /// `docker network create ARGS... NAME`, removed on drop.
    pub fn network(&mut self, name: &str, args: &[&str]) -> Result<()> {
        let mut a = vec!["network", "create"];
        a.extend_from_slice(args);
        a.push(name);
        self.cli(&a)?;
        self.networks.push(name.to_string());
        Ok(())
    }

    /// Registers a container the caller creates itself (before creating it).
    pub fn track(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    pub fn untrack(&mut self, name: &str) {
        self.containers.retain(|c| c != name);
    }

    /// `docker run -d --name NAME --network NET OPTS... IMAGE CMD...`; its
    /// pid and address, its netns named `netns` under /var/run/netns.
    pub fn run(
        &mut self,
        name: &str,
        network: &str,
        opts: &[&str],
        command: &[&str],
        netns: &str,
    ) -> Result<Container> {
        self.track(name);
        let mut a = vec!["run", "-d", "--name", name, "--network", network];
        a.extend_from_slice(opts);
        a.push(IMAGE);
        a.extend_from_slice(command);
        self.cli(&a)?;
        let out = self.cli(&[
            "inspect",
            "-f",
            "{{.State.Pid}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ])?;
        let (pid, ip) = parse_pid_ip(&out)
            .ok_or_else(|| anyhow!("`docker inspect {name}` gave no pid and address: {out:?}"))?;
        sh::output(
            &mut cmd("ip", ["netns", "attach", netns, &pid.to_string()]),
            Some(CLI_LIMIT),
        )
        .with_context(|| format!("naming {name}'s netns {netns}"))?;
        self.attached.push(netns.to_string());
        Ok(Container {
            ip,
            netns: netns.into(),
        })
    }

    /// Kills what is left of this dockerd: every process in its mount
    /// namespace (dockerd, containerd, shims, docker-proxy) and their
    /// descendants (the containers' processes).
    fn kill_leftovers(&self) {
        let Some(ns) = &self.mntns else { return };
        let me = std::process::id();
        for _ in 0..5 {
            let procs = processes();
            let roots: Vec<u32> = procs
                .iter()
                .map(|&(p, _)| p)
                .filter(|&p| p != me && mnt_ns(&p.to_string()).as_ref() == Some(ns))
                .collect();
            if roots.is_empty() {
                return;
            }
            for p in with_descendants(&procs, &roots) {
                if p != me {
                    sh::kill_pid(p, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("    warning: processes of dockerd's mount namespace {ns} survived SIGKILL");
    }
}

/// A note when the 1-minute load average (from /proc/loadavg's first
/// three fields) is above the CPU count: other work shared the machine.
pub fn load_note(loadavg: &str, nproc: usize) -> Option<String> {
    let one: f64 = loadavg.split_whitespace().next()?.parse().ok()?;
    (nproc > 0 && one > nproc as f64).then(|| {
        format!(
            "the machine was busy when measuring started (load average {loadavg} on {nproc} CPUs): other \
             work shared it, so spreads are wide and the tail figures (p99, the slowest run) mostly show \
             that load; compare medians, and both sides alike since their reps alternate"
        )
    })
}

/// `"PID IP "` from the inspect template (the first network's address).
pub fn parse_pid_ip(out: &str) -> Option<(u32, String)> {
    let mut w = out.split_whitespace();
    let pid: u32 = w.next()?.parse().ok().filter(|&p| p > 0)?;
    let ip = w.next()?.to_string();
    Some((pid, ip))
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _c = sh::Cleaning::enter();
        eprintln!("==> stopping dockerd and its containers");
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive {
            // Every container, also those the caller did not track.
            if let Ok(o) = sh::capture(
                &mut self.docker(&["ps", "-aq", "--no-trunc"]),
                Some(Duration::from_secs(30)),
            ) {
                let ids: Vec<String> = o.stdout.split_whitespace().map(String::from).collect();
                self.containers.extend(ids);
            }
            if !self.containers.is_empty() {
                let mut a = vec!["rm", "-f"];
                a.extend(self.containers.iter().map(String::as_str));
                let _ = sh::capture(&mut self.docker(&a), Some(Duration::from_secs(120)));
            }
        }
        for n in self.attached.drain(..) {
            let _ = sh::capture(
                &mut cmd("ip", ["netns", "del", &n]),
                Some(Duration::from_secs(30)),
            );
        }
        if alive {
            for n in self.networks.iter().rev() {
                let _ = sh::capture(
                    &mut self.docker(&["network", "rm", n]),
                    Some(Duration::from_secs(60)),
                );
            }
        }
        if let Some(mut ch) = self.child.take() {
            // dockerd alone first: it stops containerd and docker-proxy.
            sh::kill_pid(ch.id(), libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end && matches!(ch.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(ch.try_wait(), Ok(None)) {
                eprintln!("    warning: dockerd did not stop within 20 s of SIGTERM: killing it");
                sh::kill_pid(ch.id(), libc::SIGKILL);
            }
            let _ = ch.wait();
        }
        self.kill_leftovers();
    }
}

// ------------------------------------------------------------ the sides

/// One side: its namespaces, engines and containers.
struct Host {
    side: Side,
    mode: Mode,
    /// The host netns (dockerd and/or our daemon) and the outside client's.
    host: String,
    client: String,
    /// Dropped before `daemon`: Docker releases its endpoints while the
    /// plugin still answers.
    dockerd: Option<Dockerd>,
    daemon: Option<Daemon>,
    network: String,
    /// Container-to-container: client and server (the server publishes PORT).
    pair: Pair,
    /// Numbering of the timed `run` containers.
    runs: u32,
}

impl Host {
    fn title(&self) -> &'static str {
        self.side.title(self.mode)
    }

    fn ip(&self, host: u32) -> String {
        format!("{}.{host}", self.side.subnet())
    }

    /// A long-running container named `name` at `.host` (publishing `pub_`
    /// if given): its netns name and address.
    fn container(
        &mut self,
        tag: &str,
        name: &str,
        host: u32,
        publish: Option<&str>,
    ) -> Result<(String, String)> {
        let ip = self.ip(host);
        let mut opts = vec!["--ip", &ip];
        if let Some(p) = publish {
            opts.extend(["-p", p]);
        }
        if let Some(d) = self.dockerd.as_mut() {
            let ns = format!("{tag}-{}{name}", &format!("{:?}", self.side)[..1]);
            let c = d.run(name, &self.network, &opts, &["sleep", "86400"], &ns)?;
            if c.ip != ip {
                bail!("{name} got {} instead of the --ip {ip}", c.ip);
            }
            Ok((c.netns, c.ip))
        } else {
            let d = self
                .daemon
                .as_mut()
                .ok_or_else(|| anyhow!("no engine on this side"))?;
            let sb = d.run_with(name, &self.network, &opts, &["sleep", "86400"])?;
            Ok((sb.netns, sb.ip))
        }
    }

    /// `run -d` of a new container, then ping from the host netns until it
    /// answers: (ms until run returned, ms until the ping's answer); the
    /// container is removed after, and the rm timed (ms).
    fn timed_run(&mut self) -> Result<(f64, f64, f64)> {
        self.runs += 1;
        let name = format!("run{}", self.runs);
        // .100 up to .199, wrapping (each is removed before the next).
        let ip = self.ip(100 + self.runs % 100);
        let net = self.network.clone();
        let mut c = if let Some(d) = self.dockerd.as_mut() {
            d.track(&name);
            d.docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--ip",
                &ip,
                IMAGE,
                "sleep",
                "86400",
            ])
        } else {
            let d = self
                .daemon
                .as_mut()
                .ok_or_else(|| anyhow!("no engine on this side"))?;
            d.track(&name);
            d.client(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--ip",
                &ip,
                "--",
                "sleep",
                "86400",
            ])
        };
        let t0 = Instant::now();
        let (took, o) = sh::timed(&mut c, CLI_LIMIT)?;
        if !o.ok() {
            bail!(
                "`run {name}` failed ({}): {}",
                o.status,
                sh::tail(&o.stderr, 3)
            );
        }
        let w = PING_WITHIN_S.to_string();
        let p = sh::capture(
            &mut cmd(
                "nsenter",
                [
                    &*format!("--net=/var/run/netns/{}", self.host),
                    "ping",
                    "-n",
                    "-q",
                    "-c",
                    "1",
                    "-i",
                    "0.01",
                    "-w",
                    &w,
                    &ip,
                ],
            ),
            Some(Duration::from_secs(PING_WITHIN_S + 10)),
        )?;
        let ready = t0.elapsed();
        if !p.ok() {
            bail!(
                "{name} ({ip}) did not answer a ping from the host netns within {PING_WITHIN_S} s after `run` returned: {}",
                sh::tail(&p.stdout, 2)
            );
        }
        let mut rm = if let Some(d) = self.dockerd.as_ref() {
            d.docker(&["rm", "-f", &name])
        } else {
            self.daemon
                .as_ref()
                .ok_or_else(|| anyhow!("no engine on this side"))?
                .client(&["rm", "-f", &name])
        };
        let (rm_took, o) = sh::timed(&mut rm, CLI_LIMIT)?;
        if !o.ok() {
            bail!(
                "`rm -f {name}` failed ({}): {}",
                o.status,
                sh::tail(&o.stderr, 3)
            );
        }
        if let Some(d) = self.dockerd.as_mut() {
            d.untrack(&name);
        } else if let Some(d) = self.daemon.as_mut() {
            d.untrack(&name);
        }
        Ok((
            took.as_secs_f64() * 1e3,
            ready.as_secs_f64() * 1e3,
            rm_took.as_secs_f64() * 1e3,
        ))
    }

    /// The DNAT rule's packet counter for PORT in the host netns's nat
    /// table (Docker's side), if there is one.
    fn dnat_packets(&self) -> Option<u64> {
        let o = sh::capture(
            &mut lab::in_netns(
                &self.host,
                &["iptables", "-t", "nat", "-L", "DOCKER", "-n", "-v", "-x"],
            ),
            Some(Duration::from_secs(20)),
        )
        .ok()?;
        dnat_count(&o.stdout, PORT)
    }

    /// Our daemon's `translated` counter (None without our daemon).
    fn translated(&self) -> Option<u64> {
        natbench::counters(self.daemon.as_ref()?).translated
    }

    /// docker-proxy processes of the host netns.
    fn proxies(&self) -> usize {
        let pids = sh::capture(
            &mut cmd("ip", ["netns", "pids", &self.host]),
            Some(Duration::from_secs(20)),
        )
        .map(|o| o.stdout)
        .unwrap_or_default();
        pids.split_whitespace()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    c.split('\0')
                        .next()
                        .is_some_and(|a| a.ends_with("docker-proxy"))
                })
            })
            .count()
    }
}

/// The packet count of the `DNAT ... dpt:PORT` line of `iptables -L -v -x`.
pub fn dnat_count(listing: &str, port: u16) -> Option<u64> {
    let want = format!("dpt:{port} ");
    listing
        .lines()
        .find(|l| l.contains("DNAT") && format!("{l} ").contains(&want))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The `daemon --help` of `bin`, or nothing if it cannot be run.
fn daemon_help(bin: &Path) -> String {
    sh::capture(
        &mut cmd(bin, ["daemon", "--help"]),
        Some(Duration::from_secs(20)),
    )
    .map(|o| format!("{}{}", o.stdout, o.stderr))
    .unwrap_or_default()
}

/// Whether `daemon --help` offers the Docker plugin (branch `docker`:
/// `--docker-plugin`, `--docker-plugin-dir`, `--docker-plugin-name`,
/// `--docker-host`).
pub fn has_plugin(help: &str) -> bool {
    [
        "--docker-plugin",
        "--docker-plugin-dir",
        "--docker-plugin-name",
        "--docker-host",
    ]
    .iter()
    .all(|f| help.contains(f))
}

/// Our daemon's arguments to serve `-d dataplane` from `plugins` (the
/// directory dockerd sees as /run/docker/plugins) to the dockerd on
/// `docker_sock`.
fn plugin_args(plugins: &Path, docker_sock: &Path) -> Vec<String> {
    vec![
        "--docker-plugin".into(),
        "--docker-plugin-dir".into(),
        plugins.display().to_string(),
        "--docker-plugin-name".into(),
        PLUGIN.into(),
        "--docker-host".into(),
        format!("unix://{}", docker_sock.display()),
    ]
}

fn build_host(cl: &mut Cleanup, cfg: &Config, side: Side, mode: Mode) -> Result<Host> {
    let t = &cfg.tag;
    let k = &format!("{side:?}")[..1].to_lowercase();
    let (h, c) = (format!("{t}-x{k}h"), format!("{t}-x{k}c"));
    cl.netns(&h)?;
    cl.netns(&c)?;
    natbench::uplink(&c, &h)?;
    let dir = cfg.dir.join(format!("docker-{side:?}").to_lowercase());
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let subnet = format!("{}.0/24", side.subnet());
    let network = format!("dpb{k}");
    let mut host = Host {
        side,
        mode,
        host: h.clone(),
        client: c,
        dockerd: None,
        daemon: None,
        network: network.clone(),
        pair: Pair {
            kind: bench::Kind::Docker,
            client: String::new(),
            server: String::new(),
            server_ip: String::new(),
        },
        runs: 0,
    };
    let docker_dir = dir.join("docker");
    if side == Side::Dataplane {
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{t}-x"));
        cl.path(&bpffs);
        // Before dockerd: the plugin answers as soon as dockerd asks.
        let extra = match mode {
            Mode::Plugin => plugin_args(&plugins, &Dockerd::socket_in(&docker_dir)),
            Mode::CliStandIn => Vec::new(),
        };
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        host.daemon = Some(Daemon::start_with(
            &cfg.dataplane,
            &h,
            &dir.join("daemon"),
            &bpffs,
            &extra,
            Duration::from_secs(30),
        )?);
    }
    if side == Side::Bridge || mode == Mode::Plugin {
        let d = Dockerd::start(&h, &docker_dir, &plugins, Duration::from_secs(60))?;
        d.import_busybox()?;
        host.dockerd = Some(d);
    }
    let gw = format!("{}.1", side.subnet());
    match (side, mode, host.dockerd.as_mut(), host.daemon.as_ref()) {
        (Side::Bridge, _, Some(d), _) => {
            d.network(&network, &["--subnet", &subnet, "--gateway", &gw])?
        }
        (Side::Dataplane, Mode::Plugin, Some(d), _) => d.network(
            &network,
            &[
                "-d",
                PLUGIN,
                "--ipam-driver",
                PLUGIN,
                "--subnet",
                &subnet,
                "--gateway",
                &gw,
            ],
        )?,
        (Side::Dataplane, Mode::CliStandIn, _, Some(d)) => {
            d.cli(&["network", "create", "--subnet", &subnet, &network])?;
        }
        _ => bail!("{side:?}: no engine to create the network with"),
    }
    let publish = format!("{PORT}:{PORT}");
    let (sns, sip) = host.container(t, "srv", 2, Some(&publish))?;
    let (cns, _) = host.container(t, "cli", 3, None)?;
    host.pair = Pair {
        kind: bench::Kind::Docker,
        client: cns,
        server: sns,
        server_ip: sip,
    };
    Ok(host)
}

// ------------------------------------------------------------ measuring

#[derive(Default)]
struct Samples {
    net: bench::Samples,
    conn: Vec<f64>,
    conn_p50: Vec<f64>,
    conn_p99: Vec<f64>,
    hairpin: Vec<f64>,
    conn_errors: u64,
    conn_first_error: Option<String>,
    hairpin_errors: u64,
    /// Growth of Docker's DNAT counter and of our `translated` counter
    /// during the from-container runs alone (which path they took).
    hairpin_dnat: Option<u64>,
    hairpin_translated: Option<u64>,
    run_p50: Vec<f64>,
    run_p99: Vec<f64>,
    ready_p50: Vec<f64>,
    ready_p99: Vec<f64>,
    rm_p50: Vec<f64>,
    errors: Vec<String>,
}

/// One rep of one side: container to container, published port from
/// outside and from a container, then the timed runs.
fn measure(cfg: &Config, x: &str, h: &mut Host, s: &mut Samples, rep: u32) -> Result<String> {
    let title = h.title();
    let err = |s: &mut Samples, what: &str, e: anyhow::Error| -> Result<()> {
        sh::check_interrupted()?;
        let m = format!("rep {rep}: {title}: {what}: {e:#}");
        eprintln!("    error: {m}");
        s.errors.push(m);
        Ok(())
    };
    let mut line = vec![bench::measure(
        &h.pair,
        cfg.seconds,
        cfg.tool,
        &cfg.cores,
        &mut s.net,
        rep,
    )?];
    // bench::measure records its own errors; give them this side's name.
    for e in s.net.errors.iter_mut().filter(|e| !e.contains(title)) {
        *e = format!("{title}: {e}");
    }
    let to = format!("{HOST_IP}:{PORT}");
    match conn_server_in(x, &h.pair.server, PORT).map(|srv| {
        let outside = conn_client_in(x, &h.client, &to, cfg.seconds, 2);
        let (dnat0, tr0) = (h.dnat_packets(), h.translated());
        let inside = conn_client_in(x, &h.pair.client, &to, cfg.seconds, 2);
        let grew = |a: Option<u64>, b: Option<u64>, sum: &mut Option<u64>| {
            if let (Some(a), Some(b)) = (a, b) {
                *sum = Some(sum.unwrap_or(0) + b.saturating_sub(a));
            }
        };
        grew(dnat0, h.dnat_packets(), &mut s.hairpin_dnat);
        grew(tr0, h.translated(), &mut s.hairpin_translated);
        drop(srv);
        (outside, inside)
    }) {
        Ok((outside, inside)) => {
            match outside {
                Ok(r) => {
                    line.push(format!(
                        "published from outside {:.0} conn/s{}",
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
                Err(e) => err(s, "published port from the outside client", e)?,
            }
            match inside {
                Ok(r) => {
                    line.push(format!(
                        "from a container {:.0} conn/s{}",
                        r.per_sec,
                        if r.errors > 0 {
                            format!(" ({} errors)", r.errors)
                        } else {
                            String::new()
                        }
                    ));
                    s.hairpin.push(r.per_sec);
                    s.hairpin_errors += r.errors;
                }
                Err(e) => err(s, "published port from a container (host address)", e)?,
            }
        }
        Err(e) => err(s, "published port: conn-server", e)?,
    }
    let (mut run, mut ready, mut rm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.runs {
        match h.timed_run() {
            Ok((a, b, c)) => {
                run.push(a);
                ready.push(b);
                rm.push(c);
            }
            Err(e) => {
                err(s, "timed run", e)?;
                break;
            }
        }
    }
    for v in [&mut run, &mut ready, &mut rm] {
        v.sort_by(f64::total_cmp);
    }
    if let (Some(a), Some(b)) = (percentile(&run, 50.0), percentile(&ready, 50.0)) {
        line.push(format!("run p50 {a:.0} ms, on the network p50 {b:.0} ms"));
    }
    s.run_p50.extend(percentile(&run, 50.0));
    s.run_p99.extend(percentile(&run, 99.0));
    s.ready_p50.extend(percentile(&ready, 50.0));
    s.ready_p99.extend(percentile(&ready, 99.0));
    s.rm_p50.extend(percentile(&rm, 50.0));
    Ok(line.join("; "))
}

// ------------------------------------------------------------ report

#[derive(Serialize, Debug, Default)]
pub struct SideReport {
    pub side: Option<Side>,
    pub title: String,
    pub failed: Option<String>,
    pub tcp_gbps: Option<Spread>,
    pub udp64_kpps: Option<Spread>,
    pub rr_same_core_p50_us: Option<Spread>,
    pub rr_same_core_p99_us: Option<Spread>,
    pub rr_cross_core_p50_us: Option<Spread>,
    pub rr_cross_core_p99_us: Option<Spread>,
    /// New connections/s to the published port from the outside client.
    pub published_conn_per_s: Option<Spread>,
    pub published_connect_p50_us: Option<Spread>,
    pub published_connect_p99_us: Option<Spread>,
    /// ... from a container of the network to the host's address.
    pub from_container_conn_per_s: Option<Spread>,
    pub conn_errors: u64,
    pub conn_first_error: Option<String>,
    pub from_container_errors: u64,
    /// `run -d` until it returned, and until the address answered a ping
    /// (per rep: p50 and p99 of that rep's runs), ms.
    pub run_p50_ms: Option<Spread>,
    pub run_p99_ms: Option<Spread>,
    pub on_network_p50_ms: Option<Spread>,
    pub on_network_p99_ms: Option<Spread>,
    pub rm_p50_ms: Option<Spread>,
    /// What shows which path the published-port traffic took.
    pub evidence: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub kernel: String,
    pub nproc: usize,
    pub loadavg: String,
    pub docker: String,
    pub mode: Mode,
    pub reps: u32,
    pub seconds: u64,
    pub runs: u32,
    pub latency_tool: LatencyTool,
    pub sides: Vec<SideReport>,
    pub notes: Vec<String>,
}

type Metric = fn(&SideReport) -> Option<&Spread>;

/// (title, unit, precision, higher is better, figure).
const METRICS: [(&str, &str, usize, bool, Metric); 14] = [
    (
        "container to container: TCP throughput",
        "Gbit/s",
        2,
        true,
        |s| s.tcp_gbps.as_ref(),
    ),
    (
        "container to container: UDP 64-byte packets received",
        "kpps",
        1,
        true,
        |s| s.udp64_kpps.as_ref(),
    ),
    (
        "container to container: TCP request/response p50, same core",
        "µs",
        1,
        false,
        |s| s.rr_same_core_p50_us.as_ref(),
    ),
    (
        "container to container: TCP request/response p99, same core",
        "µs",
        1,
        false,
        |s| s.rr_same_core_p99_us.as_ref(),
    ),
    (
        "container to container: TCP request/response p50, cross core",
        "µs",
        1,
        false,
        |s| s.rr_cross_core_p50_us.as_ref(),
    ),
    (
        "container to container: TCP request/response p99, cross core",
        "µs",
        1,
        false,
        |s| s.rr_cross_core_p99_us.as_ref(),
    ),
    (
        "published port, outside client: new TCP connections",
        "conn/s",
        0,
        true,
        |s| s.published_conn_per_s.as_ref(),
    ),
    (
        "published port, outside client: connect to first byte p50",
        "µs",
        1,
        false,
        |s| s.published_connect_p50_us.as_ref(),
    ),
    (
        "published port, outside client: connect to first byte p99",
        "µs",
        1,
        false,
        |s| s.published_connect_p99_us.as_ref(),
    ),
    (
        "published port, from a container to the host address: new TCP connections",
        "conn/s",
        0,
        true,
        |s| s.from_container_conn_per_s.as_ref(),
    ),
    ("`run -d` until it returns, p50", "ms", 1, false, |s| {
        s.run_p50_ms.as_ref()
    }),
    (
        "`run -d` until the address answers a ping, p50",
        "ms",
        1,
        false,
        |s| s.on_network_p50_ms.as_ref(),
    ),
    (
        "`run -d` until the address answers a ping, p99",
        "ms",
        1,
        false,
        |s| s.on_network_p99_ms.as_ref(),
    ),
    ("`rm -f`, p50", "ms", 1, false, |s| s.rm_p50_ms.as_ref()),
];

impl Report {
    pub fn bad(&self) -> bool {
        self.sides
            .iter()
            .any(|s| s.failed.is_some() || !s.errors.is_empty() || s.conn_errors > 0)
    }

    fn side(&self, side: Side) -> Option<&SideReport> {
        self.sides.iter().find(|s| s.side == Some(side))
    }

    /// dataplane median / bridge median of metric `i`.
    pub fn ratio(&self, i: usize) -> Option<f64> {
        let f = METRICS[i].4;
        ratio(
            self.side(Side::Dataplane).and_then(f).map(|s| s.median),
            self.side(Side::Bridge).and_then(f).map(|s| s.median),
        )
    }
}

/// Builds both sides, measures them interleaved and tears them down;
/// `command` and `date` are left for the caller.
pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let mut cl = Cleanup::default();
    let x = cfg
        .xtask
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", cfg.xtask.display()))?
        .to_string();
    for (what, path) in [
        ("dockerd", DOCKERD),
        ("the docker CLI", DOCKER),
        ("busybox-static", BUSYBOX),
    ] {
        if !Path::new(path).exists() {
            bail!("{what} is not installed here ({path} is missing; Debian's docker.io and busybox-static)");
        }
    }
    let mode = if has_plugin(&daemon_help(&cfg.dataplane)) {
        Mode::Plugin
    } else {
        Mode::CliStandIn
    };
    let mut notes = Vec::new();
    if mode == Mode::CliStandIn {
        notes.push(format!(
            "STAND-IN: {} has no `daemon --docker-plugin` (the Docker plugin is not in this build), so the \
             dataplane side's containers are made by our own CLI (`dataplane run -d --network NET --ip IP \
             [-p {PORT}:{PORT}] -- sleep 86400`, network sandboxes on the host's filesystem) instead of \
             `docker run` on a `-d dataplane` network; the data path is the same eBPF one, the `run` \
             figures are our CLI's, not Docker's with our plugin",
            cfg.dataplane.display()
        ));
    }
    p.step(&format!(
        "docker: building the two hosts (dockerd with the bridge driver; {})",
        match mode {
            Mode::Plugin => "dockerd with -d dataplane and our daemon",
            Mode::CliStandIn => "our daemon and CLI as the stand-in",
        }
    ));
    let mut hosts: Vec<Host> = Vec::new();
    let mut sides: Vec<SideReport> = Vec::new();
    let mut docker_version = String::from("unknown");
    for side in [Side::Bridge, Side::Dataplane] {
        sh::check_interrupted()?;
        let t0 = Instant::now();
        let r = build_host(&mut cl, cfg, side, mode).and_then(|h| {
            lab::wait_reachable(&h.pair.client, &h.pair.server_ip, Duration::from_secs(10))?;
            Ok(h)
        });
        let mut rep = SideReport {
            side: Some(side),
            title: side.title(mode).into(),
            ..Default::default()
        };
        match r {
            Ok(h) => {
                eprintln!(
                    "    {}: ready in {:.1} s ({} -> {} at {})",
                    h.title(),
                    t0.elapsed().as_secs_f64(),
                    h.pair.client,
                    h.pair.server,
                    h.pair.server_ip
                );
                if let Some(d) = &h.dockerd {
                    docker_version = d.version();
                }
                hosts.push(h);
            }
            Err(e) => {
                sh::check_interrupted()?;
                let m = format!("{e:#}");
                eprintln!("    error: {} could not be set up: {m}", side.title(mode));
                rep.failed = Some(m);
            }
        }
        sides.push(rep);
    }
    let before: Vec<(Option<u64>, Option<Counters>)> = hosts
        .iter()
        .map(|h| (h.dnat_packets(), h.daemon.as_ref().map(natbench::counters)))
        .collect();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    p.step(&format!(
        "docker: measuring {} rep(s) x {} side(s): container to container ({} s x 4), the published port \
         from outside and from a container ({} s each), {} timed runs",
        cfg.reps,
        hosts.len(),
        cfg.seconds,
        cfg.seconds,
        cfg.runs
    ));
    if let Some(note) = load_note(
        &loadavg,
        std::thread::available_parallelism().map_or(0, usize::from),
    ) {
        notes.push(note);
    }
    let mut samples: Vec<Samples> = hosts.iter().map(|_| Samples::default()).collect();
    for rep in 1..=cfg.reps {
        let mut order: Vec<usize> = (0..hosts.len()).collect();
        if rep % 2 == 0 {
            order.reverse();
        }
        for j in order {
            let line = measure(cfg, &x, &mut hosts[j], &mut samples[j], rep)?;
            eprintln!("    rep {rep}/{}: {}: {line}", cfg.reps, hosts[j].title());
        }
    }
    for ((h, s), (dnat0, ctr0)) in hosts.iter().zip(samples).zip(before) {
        let Some(r) = sides.iter_mut().find(|r| r.side == Some(h.side)) else {
            continue;
        };
        let dnat = match (dnat0, h.dnat_packets()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        r.evidence.push(match dnat {
            Some(n) => format!("Docker's DNAT rule for port {PORT} in the host netns matched {n} packets while measuring"),
            None => format!("no Docker DNAT rule for port {PORT} in the host netns"),
        });
        r.evidence.push(format!(
            "docker-proxy processes in the host netns: {}",
            h.proxies()
        ));
        if let (Some(d), Some(b)) = (h.daemon.as_ref(), ctr0) {
            let a = natbench::counters(d);
            if let (Some(b), Some(a)) = (b.translated, a.translated) {
                r.evidence.push(format!(
                    "our daemon's `translated` counter grew by {} while measuring",
                    a.saturating_sub(b)
                ));
            }
            let grown = a.grown_drops(&b);
            if !grown.is_empty() {
                r.evidence.push(format!(
                    "drop counters that grew while measuring: {}",
                    grown
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let n = s.net;
        r.tcp_gbps = spread(&n.tcp);
        r.udp64_kpps = spread(&n.udp);
        r.rr_same_core_p50_us = spread(&n.same_p50);
        r.rr_same_core_p99_us = spread(&n.same_p99);
        r.rr_cross_core_p50_us = spread(&n.cross_p50);
        r.rr_cross_core_p99_us = spread(&n.cross_p99);
        r.published_conn_per_s = spread(&s.conn);
        r.published_connect_p50_us = spread(&s.conn_p50);
        r.published_connect_p99_us = spread(&s.conn_p99);
        r.from_container_conn_per_s = spread(&s.hairpin);
        r.conn_errors = s.conn_errors;
        r.conn_first_error = s.conn_first_error;
        r.from_container_errors = s.hairpin_errors;
        match (s.hairpin_dnat, s.hairpin_translated) {
            (Some(n), _) if h.daemon.is_none() => r.evidence.push(format!(
                "during the from-container runs alone Docker's DNAT rule matched {n} packets{}",
                if n == 0 {
                    " (so those connections went through docker-proxy)"
                } else {
                    ""
                }
            )),
            (_, Some(n)) => r.evidence.push(format!(
                "during the from-container runs alone our `translated` counter grew by {n}"
            )),
            _ => {}
        }
        r.run_p50_ms = spread(&s.run_p50);
        r.run_p99_ms = spread(&s.run_p99);
        r.on_network_p50_ms = spread(&s.ready_p50);
        r.on_network_p99_ms = spread(&s.ready_p99);
        r.rm_p50_ms = spread(&s.rm_p50);
        r.errors = n.errors.into_iter().chain(s.errors).collect();
    }
    // Docker (its endpoints) before our daemon, then the namespaces.
    for h in hosts.iter_mut() {
        drop(h.dockerd.take());
    }
    drop(hosts);
    drop(cl);
    Ok(Report {
        command: String::new(),
        date: String::new(),
        kernel: first_line(&mut cmd("uname", ["-srvm"])),
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        loadavg,
        docker: docker_version,
        mode,
        reps: cfg.reps,
        seconds: cfg.seconds,
        runs: cfg.runs,
        latency_tool: cfg.tool,
        sides,
        notes,
    })
}

// ------------------------------------------------------------ output

/// The result table (terminal and BENCHMARKS.md).
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let b = Side::Bridge.title(r.mode);
    let d = Side::Dataplane.title(r.mode);
    let _ = writeln!(
        o,
        "{} rep(s), interleaved; medians over reps, spread is min–max; ratio is {d} / {b}.\n",
        r.reps
    );
    let _ = writeln!(
        o,
        "| metric | {b} median | spread | {d} median | spread | ratio | better |"
    );
    let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: | :---: |");
    for (i, (title, unit, prec, higher, f)) in METRICS.into_iter().enumerate() {
        let cell = |side: Side| -> (String, String) {
            match r.side(side) {
                Some(s) if s.failed.is_some() => ("not set up".into(), String::new()),
                Some(s) => match f(s) {
                    Some(v) => (
                        format!("{:.prec$}", v.median),
                        format!("{:.prec$}–{:.prec$}", v.min, v.max),
                    ),
                    None => ("no sample".into(), String::new()),
                },
                None => ("–".into(), String::new()),
            }
        };
        let (bm, bs) = cell(Side::Bridge);
        let (dm, ds) = cell(Side::Dataplane);
        let q = r.ratio(i);
        let better = match q {
            Some(q) if (q > 1.0) == higher && q != 1.0 => "dataplane",
            Some(q) if q != 1.0 => "bridge",
            Some(_) => "equal",
            None => "",
        };
        let _ = writeln!(
            o,
            "| {title} ({unit}, {}) | {bm} | {bs} | {dm} | {ds} | {} | {better} |",
            if higher {
                "higher is better"
            } else {
                "lower is better"
            },
            ratio_cell(q)
        );
    }
    let _ = writeln!(o);
    for s in &r.sides {
        if !s.evidence.is_empty() {
            let _ = writeln!(o, "- {}: {}", s.title, s.evidence.join("; "));
        }
        if s.conn_errors > 0 || s.from_container_errors > 0 {
            let _ = writeln!(
                o,
                "- {}: {} failed connection attempt(s) from outside{}, {} from a container",
                s.title,
                s.conn_errors,
                s.conn_first_error
                    .as_deref()
                    .map_or(String::new(), |e| format!(" (first: {e})")),
                s.from_container_errors
            );
        }
    }
    let _ = writeln!(o);
    let problems: Vec<String> = r
        .sides
        .iter()
        .flat_map(|s| {
            s.failed
                .iter()
                .map(move |e| format!("{} could not be set up: {e}", s.title))
                .chain(s.errors.iter().cloned())
        })
        .map(|p| p.replace('|', "/"))
        .collect();
    md::bullets(&mut o, "Docker failures", &problems);
    o
}

/// This part's section of BENCHMARKS.md.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{HEADING}\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (`cargo xtask bench --setups docker` reruns only this section; it \
         needs root and Debian's docker.io and busybox-static, and builds, measures and removes \
         everything itself). Kernel `{}`, {} CPUs, Docker {} (`{DOCKERD}`, `{DOCKER}`); load average \
         when measuring started: {}.\n",
        r.command, r.date, r.kernel, r.nproc, r.docker, r.loadavg
    );
    if r.mode == Mode::CliStandIn {
        let _ = writeln!(
            o,
            "**The dataplane side is a stand-in**: the `dataplane` binary measured has no Docker \
             plugin yet, so its containers come from our own CLI, not from `docker run -d dataplane` \
             (see the note below).\n"
        );
    }
    let _ = writeln!(
        o,
        "Two hosts side by side, each a network namespace of the run with an outside client one veth \
         away (client `eth0` {CLIENT_IP}/24 -- host `up0` {HOST_IP}/24, the host's default route via \
         the client), the same busybox-static image (`docker import`; no registry is reachable) and \
         the same containers (`srv` at .2 publishing {PORT}:{PORT}, `cli` at .3, both `sleep 86400`):\n"
    );
    let _ = writeln!(
        o,
        "- **{}**: dockerd (`nsenter --net=<host netns> unshare --mount` with private data, exec and \
         plugin directories) with its defaults: iptables on, docker-proxy on; `docker network create \
         --subnet 10.210.0.0/24` (the `bridge` driver: a Linux bridge and Docker's iptables rules); \
         `docker run -d --network NET --ip IP [-p {PORT}:{PORT}] IMAGE sleep 86400`.",
        Side::Bridge.title(r.mode)
    );
    let _ = writeln!(
        o,
        "- **{}**: {}\n",
        Side::Dataplane.title(r.mode),
        match r.mode {
            Mode::Plugin => "our `dataplane daemon --docker-plugin` and a dockerd (as above) in the host \
                netns; `docker network create -d dataplane --ipam-driver dataplane --subnet \
                10.211.0.0/24`; the same `docker run` commands.",
            Mode::CliStandIn => "our `dataplane daemon` in the host netns; `dataplane network create \
                --subnet 10.211.0.0/24` and `dataplane run -d --network NET --ip IP [-p ...] -- sleep \
                86400` (no dockerd on this side).",
        }
    );
    let _ = writeln!(
        o,
        "Per side and rep (the side that goes first alternates): container `cli` to `srv`: `iperf3` \
         TCP and `iperf3 -u -l 64 -b 0` ({0} s each) and a TCP request/response round trip ({1}, {0} s) \
         with both ends pinned to one CPU and then to two, the tools run from the host's filesystem in \
         the containers' network namespaces; new TCP connections per second to {HOST_IP}:{PORT} \
         (`xtask conn-client`: connect, read one byte, RST; {0} s) from the outside client, and from \
         container `cli` (on Docker's side that goes through docker-proxy: Docker's DNAT rule skips \
         traffic from its bridge); and {2} times `run -d` of a new container with `--ip`, timed from \
         spawning the CLI until it returns and until the address answers `ping -i 0.01` from the \
         host netns, then `rm -f` timed (per rep: the p50 and p99 of its {2} runs; with 10 runs or \
         fewer the p99 is the slowest).\n",
        r.seconds,
        if r.latency_tool == LatencyTool::Sockperf {
            "`sockperf ping-pong --tcp --full-rtt`"
        } else {
            "the built-in 1-byte ping-pong"
        },
        r.runs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_pid_and_address() {
        assert_eq!(
            parse_pid_ip("5108 172.17.0.2 \n"),
            Some((5108, "172.17.0.2".into()))
        );
        assert_eq!(parse_pid_ip("0 "), None);
        assert_eq!(parse_pid_ip("12 "), None);
        assert_eq!(parse_pid_ip(""), None);
    }

    #[test]
    fn dnat_counter_of_the_port() {
        let l = "Chain DOCKER (2 references)\n\
            pkts      bytes target     prot opt in     out     source               destination\n\
               0        0 RETURN     all  --  br-1   *       0.0.0.0/0            0.0.0.0/0\n\
            4711   282660 DNAT       tcp  --  !br-1  *       0.0.0.0/0            0.0.0.0/0            tcp dpt:20000 to:10.210.0.2:20000\n\
               3      180 DNAT       tcp  --  !br-1  *       0.0.0.0/0            0.0.0.0/0            tcp dpt:200 to:10.210.0.2:200\n";
        assert_eq!(dnat_count(l, 20000), Some(4711));
        assert_eq!(dnat_count(l, 200), Some(3));
        assert_eq!(dnat_count(l, 2000), None);
    }

    /// A dockerd killed with SIGKILL (its containerd, shim, docker-proxy
    /// and container left running) leaves no process and no mount behind
    /// once its guard is dropped.
    #[test]
    #[ignore = "needs root and Debian's docker.io; run with --ignored"]
    fn a_killed_dockerd_leaves_nothing_behind() {
        let tag = format!("dbt{}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let mut cl = Cleanup::default();
        cl.dir(&dir).unwrap();
        let ns = format!("{tag}-h");
        cl.netns(&ns).unwrap();
        let mut d = Dockerd::start(
            &ns,
            &dir.join("docker"),
            &dir.join("plugins"),
            Duration::from_secs(60),
        )
        .unwrap();
        d.import_busybox().unwrap();
        let c = d
            .run(
                "held",
                "bridge",
                &["-p", "20000:20000"],
                &["sleep", "86400"],
                &format!("{tag}-c"),
            )
            .unwrap();
        assert!(c.ip.starts_with("172.17."), "{c:?}");
        let mntns = d.mntns.clone().unwrap();
        let in_ns = || {
            processes()
                .into_iter()
                .filter(|&(p, _)| mnt_ns(&p.to_string()).as_ref() == Some(&mntns))
                .count()
        };
        // dockerd, containerd, a shim and two docker-proxy at least.
        assert!(
            in_ns() >= 4,
            "{} processes in dockerd's mount namespace",
            in_ns()
        );
        let ctr = sh::output(
            &mut d.docker(&["inspect", "-f", "{{.State.Pid}}", "held"]),
            Some(CLI_LIMIT),
        )
        .unwrap();
        let ctr: u32 = ctr.trim().parse().unwrap();
        sh::kill_pid(d.pid().unwrap(), libc::SIGKILL);
        drop(d);
        assert_eq!(in_ns(), 0);
        // Killed, then reaped by init once its shim is gone (bounded wait).
        let gone = lab::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            let st = std::fs::read_to_string(format!("/proc/{ctr}/stat")).unwrap_or_default();
            Ok((st.is_empty() || st.contains(") Z ")).then_some(()))
        })
        .unwrap();
        assert!(gone.is_some(), "container process {ctr} survived");
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(&*dir.to_string_lossy()), "{mounts}");
        assert!(!lab::netns_exists(&format!("{tag}-c")));
    }

    #[test]
    fn plugin_detected_only_with_all_its_flags() {
        let full = "--docker-plugin  Serve ...\n--docker-plugin-dir <DIR>\n--docker-plugin-name <NAME>\n--docker-host <URL>";
        assert!(has_plugin(full));
        assert!(!has_plugin(
            "--docker-plugin  Serve ...\n--docker-plugin-dir <DIR>"
        ));
        assert!(!has_plugin(""));
        let a = plugin_args(Path::new("/t/plugins"), Path::new("/t/docker/docker.sock"));
        assert_eq!(
            a,
            [
                "--docker-plugin",
                "--docker-plugin-dir",
                "/t/plugins",
                "--docker-plugin-name",
                PLUGIN,
                "--docker-host",
                "unix:///t/docker/docker.sock"
            ]
        );
    }

    #[test]
    fn load_note_only_above_the_cpu_count() {
        assert!(load_note("6.94 6.93 5.05", 2)
            .unwrap()
            .contains("6.94 6.93 5.05 on 2 CPUs"));
        assert_eq!(load_note("1.50 1.0 1.0", 2), None);
        assert_eq!(load_note("", 2), None);
        assert_eq!(load_note("3.0", 0), None);
    }

    #[test]
    fn descendants_follow_the_tree_only() {
        let procs = [(1, 0), (10, 1), (11, 10), (12, 11), (20, 1), (21, 20)];
        let mut d = with_descendants(&procs, &[10]);
        d.sort_unstable();
        assert_eq!(d, vec![10, 11, 12]);
        assert_eq!(with_descendants(&procs, &[]), Vec::<u32>::new());
    }

    fn sp(v: f64) -> Option<Spread> {
        spread(&[v * 0.9, v, v * 1.1])
    }

    #[test]
    fn ratios_are_dataplane_over_bridge_and_failures_show() {
        let b = SideReport {
            side: Some(Side::Bridge),
            title: "b".into(),
            udp64_kpps: sp(100.0),
            on_network_p50_ms: sp(300.0),
            ..Default::default()
        };
        let d = SideReport {
            side: Some(Side::Dataplane),
            title: "d".into(),
            udp64_kpps: sp(150.0),
            on_network_p50_ms: sp(30.0),
            errors: vec!["rep 1: d: timed run: boom".into()],
            ..Default::default()
        };
        let r = Report {
            command: "cargo xtask bench --setups docker".into(),
            date: "today".into(),
            kernel: "k".into(),
            nproc: 2,
            loadavg: "0".into(),
            docker: "20.10.24".into(),
            mode: Mode::CliStandIn,
            reps: 3,
            seconds: 3,
            runs: 5,
            latency_tool: LatencyTool::Sockperf,
            sides: vec![b, d],
            notes: vec![],
        };
        assert!((r.ratio(1).unwrap() - 1.5).abs() < 1e-9);
        assert!((r.ratio(11).unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(r.ratio(0), None);
        assert!(r.bad());
        let t = table(&r);
        assert!(
            t.contains("| 100.0 | 90.0–110.0 | 150.0 | 135.0–165.0 | 1.50x | dataplane |"),
            "{t}"
        );
        assert!(
            t.contains("| 300.0 | 270.0–330.0 | 30.0 | 27.0–33.0 | 0.10x | dataplane |"),
            "{t}"
        );
        assert!(t.contains("timed run: boom"), "{t}");
        let m = markdown(&r);
        assert!(m.starts_with(HEADING));
        assert!(m.contains("stand-in"));
        let (rest, sec) = split(&format!("# B\n\n{m}\n## Later\nx\n"));
        assert_eq!(rest, "# B\n\n## Later\nx\n");
        assert!(sec.unwrap().starts_with(HEADING));
    }
}

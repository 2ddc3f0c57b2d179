//! `cargo xtask`: setup, build, test, demo and benchmarks of the dataplane.

mod bench;
mod clusterbench;
mod connrate;
mod ctlbench;
mod demo;
mod demo_clients;
mod demo_lan;
mod dnsbench;
mod dockerbench;
mod lab;
mod lanbench;
mod md;
mod natbench;
mod overlaybench;
mod pingpong;
mod plot;
mod servicebench;
mod setup;
mod sh;
mod stats;
mod stream;
mod testrun;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Setup, build, test, demo and benchmarks of the eBPF dataplane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh Debian machine lacks (apt packages, nightly
    /// rust-src, bpf-linker, bpffs mount); idempotent.
    Setup,
    /// Setup, then build the `dataplane` binary (and its eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, and run every test suite (root; namespaces and BPF).
    Test,
    /// Setup, build, and show two sandboxes talking through the eBPF switch.
    Demo,
    /// Setup, build (release), and compare veth / bridge / bridge+netfilter /
    /// eBPF, the embedded DNS resolver against a hosts-file lookup, and
    /// published ports through the eBPF NAT against Docker's iptables DNAT,
    /// and the control plane's costs (run/rm, memory, restart, drift);
    /// writes BENCHMARKS.md (and BENCHMARKS-nat.svg).
    Bench(bench::Args),
    /// A multi-host lab to try the overlay by hand: `lab up --hosts N`
    /// (an underlay bridge, etcd, a daemon per host netns, left running),
    /// `lab down` (removes exactly what `up` recorded).
    #[command(subcommand)]
    Lab(LabCmd),
    /// (internal) TCP ping-pong server for the latency fallback.
    #[command(hide = true)]
    PingpongServer {
        #[arg(long)]
        listen: String,
    },
    /// (internal) DNS lookup loop for the DNS benchmark (run inside a
    /// sandbox with `ip netns exec`).
    #[command(hide = true)]
    DnsClient(dnsbench::ClientArgs),
    /// (internal) TCP ping-pong client for the latency fallback.
    #[command(hide = true)]
    PingpongClient {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// (internal) Accept, write one byte, close: the server of the
    /// published-port connection-rate benchmark.
    #[command(hide = true)]
    ConnServer(connrate::ServerArgs),
    /// (internal) Connect, read one byte, close with an RST, in a loop;
    /// prints connections per second as JSON.
    #[command(hide = true)]
    ConnClient(connrate::ClientArgs),
    /// (internal) Write to every accepted connection until it closes: the
    /// server of the services benchmark's single-connection throughput.
    #[command(hide = true)]
    StreamServer(stream::ServerArgs),
    /// (internal) Read from one connection for N seconds; prints Gbit/s
    /// as JSON.
    #[command(hide = true)]
    StreamClient(stream::ClientArgs),
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build `dataplane` (debug) and start the lab; prints how to reach
    /// each host.
    Up {
        #[arg(long, default_value_t = 3)]
        hosts: u8,
        /// Use this `dataplane` binary instead of building one.
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// Stop and remove the lab recorded by `lab up`.
    Down,
}

/// Numbered progress lines on stderr: `==> [2/5] building eBPF object`.
pub struct Progress {
    n: usize,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { n: 0, total }
    }

    pub fn step(&mut self, what: &str) {
        self.n += 1;
        self.total = self.total.max(self.n);
        eprintln!("==> [{}/{}] {what}", self.n, self.total);
    }
}

/// The workspace root (xtask's parent).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// The target directory cargo uses for this workspace.
pub fn target_dir() -> Result<PathBuf> {
    let out = sh::output(
        cargo().args(["metadata", "--format-version", "1", "--no-deps"]),
        Some(Duration::from_secs(120)),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("cargo metadata has no target_directory"))
}

/// Builds `dataplane` (with its eBPF object) and the CNI plugin
/// `dataplane-cni` beside it; returns the path of `dataplane`.
pub fn build_dataplane(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "dataplane-user"]);
    if release {
        c.arg("--release");
    }
    sh::run(&mut c, Some(Duration::from_secs(60 * 60)))?;
    let bin = target_dir()?
        .join(if release { "release" } else { "debug" })
        .join("dataplane");
    for b in [bin.clone(), bin.with_file_name("dataplane-cni")] {
        if !b.is_file() {
            bail!("the build succeeded but {} is missing", b.display());
        }
    }
    Ok(bin)
}

fn main() {
    let cli = Cli::parse();
    // The benches stop their internal servers with SIGTERM: those keep the
    // default disposition (the handler only sets a flag that they never
    // check, so each stop would wait out its grace period).
    if !matches!(
        cli.cmd,
        Cmd::PingpongServer { .. } | Cmd::ConnServer(_) | Cmd::StreamServer(_)
    ) {
        sh::install_signal_handlers();
    }
    let res = match cli.cmd {
        Cmd::Setup => {
            let mut p = Progress::new(4);
            setup::setup(&mut p).map(|()| {
                eprintln!("==> setup complete");
                0
            })
        }
        Cmd::Build { release } => {
            let mut p = Progress::new(5);
            setup::setup(&mut p).and_then(|()| {
                p.step(&format!(
                    "building dataplane-user and its eBPF object ({})",
                    if release { "release" } else { "debug" }
                ));
                let bin = build_dataplane(release)?;
                println!("{}", bin.display());
                println!("{}", bin.with_file_name("dataplane-cni").display());
                Ok(0)
            })
        }
        Cmd::Test => testrun::test(),
        Cmd::Demo => demo::demo().map(|()| 0),
        Cmd::Bench(args) => bench::bench(args),
        Cmd::Lab(LabCmd::Up { hosts, bin }) => {
            let bin = match bin {
                Some(b) => Ok(b),
                None => build_dataplane(false),
            };
            bin.and_then(|b| lab::lab_up(&b, hosts)).map(|()| 0)
        }
        Cmd::Lab(LabCmd::Down) => lab::lab_down().map(|()| 0),
        Cmd::PingpongServer { listen } => pingpong::server(&listen).map(|()| 0),
        Cmd::DnsClient(args) => dnsbench::client(&args).map(|()| 0),
        Cmd::PingpongClient { connect, seconds } => pingpong::client(&connect, seconds).map(|()| 0),
        Cmd::ConnServer(args) => connrate::server(&args).map(|()| 0),
        Cmd::ConnClient(args) => connrate::client(&args).map(|()| 0),
        Cmd::StreamServer(args) => stream::server(&args).map(|()| 0),
        Cmd::StreamClient(args) => stream::client(&args).map(|()| 0),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

//! `cargo xtask bench --setups lan`: containers on an existing LAN.
//!
//! One switch netns (a plain Linux bridge, which carries 802.1Q frames
//! untouched, as a trunk does) and three ways to put two machines on it:
//!
//! - (a) floor: two plain namespaces on the switch;
//! - (b) macvlan: two host namespaces, each with a `dataplane daemon` (alone,
//!   no store) and a container on a `macvlan` network of its `eth0`: the
//!   kernel's macvlan device;
//! - (c) VLAN: the same two daemons, each with a container on a VLAN 100
//!   network of the same `eth0` (`-o parent=eth0.100`): our programs push
//!   the tag on the way out and pop it on the way in, on both hosts.
//!
//! The peer of (c) is the other host's container because no kernel peer
//! can terminate a VLAN here (no 8021q, no bridge VLAN filtering, no tc
//! vlan action): (c) against (b) is the cost of our tagging and switching
//! against the kernel's macvlan, both ends included. All three are built
//! before measuring and the repetitions interleave.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::Result;
use serde::Serialize;

use crate::{
    bench::{self, Cores, LatencyTool, Pair, Samples},
    lab::{self, Cleanup},
    md,
    overlaybench::{Node, Underlay},
    sh::{self, cmd},
    stats::{figure_table, spread, FigureRow, Spread},
    Progress,
};

pub const HEADING: &str = "## LAN: macvlan and VLAN networks against plain namespaces";
const HEADING_PREFIX: &str = "## LAN";
const SWITCH: &str = "192.168.242";

pub struct Config {
    pub reps: u32,
    pub seconds: u64,
    pub tool: LatencyTool,
    pub cores: Vec<Cores>,
    pub dataplane: PathBuf,
    pub tag: String,
    pub dir: PathBuf,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Setup {
    Floor,
    Macvlan,
    Vlan,
}

const SETUPS: [Setup; 3] = [Setup::Floor, Setup::Macvlan, Setup::Vlan];

impl Setup {
    fn title(self) -> &'static str {
        match self {
            Setup::Floor => "(a) floor: plain namespaces",
            Setup::Macvlan => "(b) macvlan (kernel device)",
            Setup::Vlan => "(c) VLAN 100 (eBPF tags)",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Setup::Floor => "two namespaces plugged into the switch by veths, addresses on the veths",
            Setup::Macvlan => {
                "two host namespaces on the switch, each with a daemon and a container on \
                 `network create -d macvlan -o parent=eth0` (the kernel's macvlan, bridge mode)"
            }
            Setup::Vlan => {
                "the same daemons, a container each on `network create -d macvlan -o parent=eth0.100`: \
                 veth pairs, from_container pushes the 802.1Q tag (bpf_skb_vlan_push) out of eth0, \
                 from_uplink on the other host pops it and redirects to the container"
            }
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Stat {
    #[serde(flatten)]
    pub s: Spread,
    pub vs_floor: Option<f64>,
    pub vs_macvlan: Option<f64>,
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
    fn metrics(&mut self) -> [&mut Option<Stat>; 6] {
        [
            &mut self.tcp_gbps,
            &mut self.udp64_kpps,
            &mut self.rr_same_core_p50_us,
            &mut self.rr_same_core_p99_us,
            &mut self.rr_cross_core_p50_us,
            &mut self.rr_cross_core_p99_us,
        ]
    }

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
    /// The bar: (c)'s 64-byte packet rate over (b)'s, at least 0.95.
    pub vlan_vs_untagged_pps: Option<f64>,
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
        vs_floor: None,
        vs_macvlan: None,
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
        let (floor, mv) = (base(Setup::Floor), base(Setup::Macvlan));
        for s in setups.iter_mut() {
            if let Some(st) = s.metrics()[i].as_mut() {
                st.vs_floor = floor.map(|f| st.s.median / f);
                st.vs_macvlan = mv.map(|b| st.s.median / b);
            }
        }
    }
}

/// The two daemons and their containers (dropped before the namespaces).
struct Hosts {
    nodes: Vec<Node>,
}

fn build_floor(cl: &mut Cleanup, u: &Underlay, tag: &str) -> Result<Pair> {
    let (a, b) = (format!("{tag}-la1"), format!("{tag}-la2"));
    u.add_host(cl, &a, "la1", 21)?;
    let ip = u.add_host(cl, &b, "la2", 22)?;
    Ok(Pair {
        kind: bench::Kind::Lan,
        client: a,
        server: b,
        server_ip: ip,
    })
}

fn build_hosts(cl: &mut Cleanup, u: &Underlay, cfg: &Config) -> Result<(Hosts, Pair, Pair)> {
    let mut hosts = Hosts { nodes: Vec::new() };
    for i in 1..=2u8 {
        let host = format!("{}-lh{i}", cfg.tag);
        let ip = u.add_host(cl, &host, &format!("lh{i}"), 30 + i)?;
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/{}-lh{i}", cfg.tag));
        cl.path(&bpffs);
        let mut n = Node::spawn(
            &cfg.dataplane,
            &host,
            &format!("lan{i}"),
            &ip,
            "",
            &cfg.dir.join(format!("lh{i}")),
            &bpffs,
            &[],
        )?;
        let took = n.wait_ready(Duration::from_secs(30));
        hosts.nodes.push(n);
        eprintln!("    lan host {i} ready in {:.1} s", took?.as_secs_f64());
    }
    let mut pairs = Vec::new();
    for (net, subnet, parent) in [
        ("lanmv", "10.203.1", "eth0"),
        ("lanv100", "10.203.2", "eth0.100"),
    ] {
        let mut sbs = Vec::new();
        for (i, n) in hosts.nodes.iter_mut().enumerate() {
            // Each host's IPAM takes its own quarter of the LAN's subnet.
            n.cli(&[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet",
                &format!("{subnet}.0/24"),
                "--ip-range",
                &format!("{subnet}.{}/26", 64 * (i + 1)),
                "--gateway",
                &format!("{subnet}.1"),
                "-o",
                &format!("parent={parent}"),
                net,
            ])?;
            sbs.push(n.run(&format!("{net}-{i}"), net)?);
        }
        pairs.push(Pair {
            kind: bench::Kind::Lan,
            client: sbs[0].netns.clone(),
            server: sbs[1].netns.clone(),
            server_ip: sbs[1].ip.clone(),
        });
    }
    let vlan = pairs.pop().expect("two pairs");
    let mv = pairs.pop().expect("two pairs");
    Ok((hosts, mv, vlan))
}

pub fn run(cfg: &Config, p: &mut Progress) -> Result<Report> {
    let mut cl = Cleanup::default();
    let mut notes = Vec::new();
    p.step("lan: building the switch, the plain pair and two hosts with macvlan and VLAN networks");
    let u = Underlay::build(&mut cl, &format!("{}-lsw", cfg.tag), SWITCH)?;
    let mut pairs: Vec<(Setup, Pair)> = Vec::new();
    let mut failed: Vec<(Setup, String)> = Vec::new();
    match build_floor(&mut cl, &u, &cfg.tag) {
        Ok(pair) => pairs.push((Setup::Floor, pair)),
        Err(e) => failed.push((Setup::Floor, format!("{e:#}"))),
    }
    let mut hosts = None;
    match build_hosts(&mut cl, &u, cfg) {
        Ok((h, mv, vlan)) => {
            hosts = Some(h);
            pairs.push((Setup::Macvlan, mv));
            pairs.push((Setup::Vlan, vlan));
        }
        Err(e) => {
            for k in [Setup::Macvlan, Setup::Vlan] {
                failed.push((k, format!("{e:#}")));
            }
        }
    }
    let mut reachable = Vec::new();
    for (k, pair) in pairs {
        sh::check_interrupted()?;
        match lab::wait_reachable(&pair.client, &pair.server_ip, Duration::from_secs(20)) {
            Ok(()) => reachable.push((k, pair)),
            Err(e) => failed.push((k, format!("{e:#}"))),
        }
    }
    let pairs = reachable;
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    p.step(&format!(
        "lan: measuring {} setups, {} reps x {} s (TCP, UDP 64 B, request/response)",
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
    drop(hosts.take());
    let mut setups = Vec::new();
    for k in SETUPS {
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
    let vlan_vs_untagged_pps = setups
        .iter()
        .find(|s| s.setup == Setup::Vlan)
        .and_then(|s| s.udp64_kpps.as_ref())
        .and_then(|st| st.vs_macvlan);
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
        vlan_vs_untagged_pps,
        notes,
    })
}

pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s; medians, spread is min–max over reps, ratios are this median / the median of (a) floor or (b) macvlan.\n",
        r.reps, r.seconds
    );
    for (i, (title, unit, prec)) in bench::METRICS.into_iter().enumerate() {
        let _ = writeln!(o, "#### {title}\n");
        let rows: Vec<FigureRow> = r
            .setups
            .iter()
            .map(|s| FigureRow {
                title: s.title,
                fig: s.metric(i).map(|st| (&st.s, st.vs_floor, st.vs_macvlan)),
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
            ["vs (a) floor", "vs (b) macvlan"],
            i == 0,
            prec,
            &rows,
        );
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "The bar, VLAN tagging in eBPF at 0.95x or better of the untagged packet rate ((c) / (b), 64-byte UDP): {}.\n",
        match r.vlan_vs_untagged_pps {
            Some(x) if x >= 0.95 => format!("**{x:.2}x, met**"),
            Some(x) => format!("**{x:.2}x, not met**"),
            None => "not measured".into(),
        }
    );
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
    md::bullets(&mut o, "LAN failures", &problems);
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
        "One switch netns with a plain Linux bridge ({SWITCH}.1/24). Traffic goes from the first \
         machine to the second: `iperf3 -t {0}` TCP, `iperf3 -u -l 64 -b 0 -t {0}` (packets \
         received per second), and a TCP request/response round trip ({1}, {0} s) with both ends \
         on one CPU, then on two. The repetitions interleave (rep 1: a, b, c; rep 2: ...). The \
         peer of (c) is the other host's container: no kernel peer can end a VLAN on this kernel \
         (no 8021q, no VLAN filtering on bridges, no tc vlan action), so (c) against (b) is our \
         tagging and switching on both ends against the kernel's macvlan on both ends.\n",
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

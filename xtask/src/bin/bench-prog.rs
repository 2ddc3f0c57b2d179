//! `bench-prog`: the per-packet cost of `from_container` against the empty
//! `noop` program on the same hook, through BPF_PROG_TEST_RUN with `repeat`,
//! on a private copy of the maps. Run by `cargo xtask bench` (which builds it
//! with `--features prog`); prints JSON. Needs root, no daemon.
//!
//! It lives here rather than in the `dataplane` binary so that the product
//! carries no benchmark code: it drives the library's `Datapath` exactly as
//! the daemon loads it.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use clap::Parser;
use dataplane_common::{Endpoint, Network, IFINDEX_BASE};
use dataplane_user::bpf::Datapath;
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// Runs per BPF_PROG_TEST_RUN call (the kernel reports their mean).
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Calls per program, interleaved; the medians are reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
}

/// What `cargo xtask bench` records under `bpf_prog` in its report.
#[derive(Debug, Serialize)]
struct ProgBench {
    repeat: u32,
    rounds: usize,
    from_container_ns: Vec<u32>,
    noop_ns: Vec<u32>,
    from_container_median_ns: u32,
    noop_median_ns: u32,
    ratio: f64,
}

fn median(v: &[u32]) -> u32 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// A 64-byte UDP frame from 10.0.0.2 to 10.0.0.3 on one network: the
/// same-network redirect path, which does not rewrite the frame (so
/// `repeat` feeds identical input every time).
fn bench_frame() -> (Vec<u8>, Endpoint, Endpoint) {
    let me = Endpoint {
        // A veth `measure` creates at this index in a private netns:
        // BPF_PROG_TEST_RUN honours a context ifindex only for a real device.
        ifindex: IFINDEX_BASE,
        network_id: 1,
        ip: dataplane_common::ipv4_wire([10, 0, 0, 2]),
        mac: [0x02, 0x42, 10, 0, 0, 2],
        host_mac: [0x0e, 0, 0, 0, 0, 1],
        flags: 0,
        vtep: 0,
        net: Network {
            subnet: dataplane_common::ipv4_wire([10, 0, 0, 0]),
            mask: dataplane_common::ipv4_wire([255, 255, 255, 0]),
            gateway: dataplane_common::ipv4_wire([10, 0, 0, 1]),
            flags: 0,
            vni: 0,
        },
    };
    let peer = Endpoint {
        // The peer is an endpoint as the daemon installs one (in ENDPOINTS
        // and IFACES, behind its own veth), so that the bench takes the
        // path real traffic takes (`PEER_CACHE` hits).
        ifindex: IFINDEX_BASE + 1,
        ip: dataplane_common::ipv4_wire([10, 0, 0, 3]),
        mac: [0x02, 0x42, 10, 0, 0, 3],
        ..me
    };
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&peer.mac);
    f[6..12].copy_from_slice(&me.mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 2]);
    f[30..34].copy_from_slice(&[10, 0, 0, 3]);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    (f, me, peer)
}

/// Runs `prog` on `frame` through BPF_PROG_TEST_RUN: (verdict, mean ns).
fn run_program(
    dp: &mut Datapath,
    prog: &str,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> Result<(u32, u32)> {
    let p: &mut SchedClassifier = dp
        .ebpf_mut()
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing"))?
        .try_into()?;
    let mut out = vec![0u8; frame.len() + 64];
    let r = p.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(ctx),
        repeat,
        ..Default::default()
    })?;
    Ok((r.return_value, r.duration.as_nanos() as u32))
}

/// The measurement proper; runs on a thread of its own, which it moves into
/// a network namespace of its own (holding the veths, gone with the thread).
fn measure(dir: &Path, repeat: u32, rounds: usize) -> Result<ProgBench> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    dataplane_user::netns::add_veth("dpbench0", "dpbench1", IFINDEX_BASE)?;
    dataplane_user::netns::add_veth("dpbench2", "dpbench3", IFINDEX_BASE + 1)?;
    let mut dp = Datapath::load(dir)?;
    let (frame, me, peer) = bench_frame();
    dp.set_endpoint(me)?;
    dp.set_endpoint(peer)?;
    // A zeroed struct __sk_buff but for `ifindex` (offset 40).
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&me.ifindex.to_ne_bytes());
    let (ret, _) = run_program(&mut dp, "from_container", &frame, &ctx, 1)?;
    if ret != 7 {
        bail!(
            "the bench frame did not take the redirect path (verdict {ret}, want TC_ACT_REDIRECT)"
        );
    }
    let (mut fc, mut noop) = (Vec::new(), Vec::new());
    // Interleave the two programs so machine noise hits both alike.
    for _ in 0..rounds {
        fc.push(run_program(&mut dp, "from_container", &frame, &ctx, repeat)?.1);
        noop.push(run_program(&mut dp, "noop", &frame, &ctx, repeat)?.1);
    }
    let (a, b) = (median(&fc), median(&noop));
    Ok(ProgBench {
        repeat,
        rounds,
        from_container_median_ns: a,
        noop_median_ns: b,
        ratio: f64::from(a) / f64::from(b.max(1)),
        from_container_ns: fc,
        noop_ns: noop,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/dataplane-bench-{}",
        std::process::id()
    ));
    let pins = dir.clone();
    let res = std::thread::spawn(move || measure(&pins, args.repeat, args.rounds))
        .join()
        .map_err(|_| anyhow!("bench thread panicked"));
    // The scratch pins go whatever happened (the maps die with the thread's
    // file descriptors; the pins would keep them).
    let _ = std::fs::remove_dir_all(&dir);
    let r = res??;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

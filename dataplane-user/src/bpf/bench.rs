//! `dataplane bench-prog`: the cost of `from_container` against an empty
//! program under BPF_PROG_TEST_RUN, on a private copy of the maps.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::TestRun as _;
use dataplane_common::{Endpoint, Network, IFINDEX_BASE};
use serde::Serialize;

use super::Datapath;

impl Datapath {
    /// Mean nanoseconds per run of `prog` on `frame` through
    /// BPF_PROG_TEST_RUN with `repeat` (for `bench-prog`).
    pub fn time_program(
        &mut self,
        prog: &str,
        frame: &[u8],
        ctx: &[u8],
        repeat: u32,
    ) -> Result<u32> {
        Ok(self.run_program(prog, frame, ctx, repeat)?.1)
    }

    /// Runs `prog` on `frame` through BPF_PROG_TEST_RUN: (verdict, mean ns).
    pub fn run_program(
        &mut self,
        prog: &str,
        frame: &[u8],
        ctx: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32)> {
        let p = self.prog(prog)?;
        let mut out = vec![0u8; frame.len() + 64];
        let r = p.test_run(aya::programs::TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(ctx),
            repeat,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as u32))
    }
}

/// Per-packet cost of `from_container` against `noop` on the same hook,
/// measured with BPF_PROG_TEST_RUN and `repeat` on a private copy of the
/// maps (a scratch pin directory removed afterwards).
#[derive(Debug, Serialize)]
pub struct ProgBench {
    pub repeat: u32,
    pub rounds: usize,
    pub from_container_ns: Vec<u32>,
    pub noop_ns: Vec<u32>,
    pub from_container_median_ns: u32,
    pub noop_median_ns: u32,
    pub ratio: f64,
}

fn median(v: &[u32]) -> u32 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s[s.len() / 2]
}

/// A 64-byte UDP frame from 10.0.0.2 to 10.0.0.3 on one network: the
/// same-network redirect path, which does not rewrite the frame (so
/// `repeat` feeds identical input every time).
pub fn bench_frame() -> (Vec<u8>, Endpoint, Endpoint) {
    let me = Endpoint {
        // A veth `bench_programs` creates at this index in a private netns:
        // BPF_PROG_TEST_RUN honours a context ifindex only for a real device.
        ifindex: IFINDEX_BASE,
        network_id: 1,
        ip: dataplane_common::ipv4_wire([10, 0, 0, 2]),
        mac: [0x02, 0x42, 10, 0, 0, 2],
        host_mac: [0x0e, 0, 0, 0, 0, 1],
        flags: 0,
        net: Network {
            subnet: dataplane_common::ipv4_wire([10, 0, 0, 0]),
            mask: dataplane_common::ipv4_wire([255, 255, 255, 0]),
            gateway: dataplane_common::ipv4_wire([10, 0, 0, 1]),
            flags: 0,
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

pub fn bench_programs(repeat: u32, rounds: usize) -> Result<ProgBench> {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/dataplane-bench-{}",
        std::process::id()
    ));
    // Everything runs on a thread in a network namespace of its own, which
    // holds the sender's veth and vanishes with the thread.
    let pins = dir.clone();
    let run = move || -> Result<ProgBench> {
        let dir = pins;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        crate::netns::add_veth("dpbench0", "dpbench1", IFINDEX_BASE)?;
        crate::netns::add_veth("dpbench2", "dpbench3", IFINDEX_BASE + 1)?;
        let mut dp = Datapath::load(&dir)?;
        let (frame, me, peer) = bench_frame();
        dp.set_endpoint(me)?;
        dp.set_endpoint(peer)?;
        // A zeroed struct __sk_buff but for `ifindex` (offset 40).
        let mut ctx = vec![0u8; 192];
        ctx[40..44].copy_from_slice(&me.ifindex.to_ne_bytes());
        let (ret, _) = dp.run_program("from_container", &frame, &ctx, 1)?;
        if ret != 7 {
            bail!("the bench frame did not take the redirect path (verdict {ret}, want TC_ACT_REDIRECT)");
        }
        let (mut fc, mut noop) = (Vec::new(), Vec::new());
        // Interleave the two programs so machine noise hits both alike.
        for _ in 0..rounds {
            fc.push(dp.time_program("from_container", &frame, &ctx, repeat)?);
            noop.push(dp.time_program("noop", &frame, &ctx, repeat)?);
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
    };
    let res = std::thread::spawn(run)
        .join()
        .map_err(|_| anyhow!("bench thread panicked"))?;
    let _ = std::fs::remove_dir_all(&dir);
    res
}

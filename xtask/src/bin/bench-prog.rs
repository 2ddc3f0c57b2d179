//! `bench-prog`: the per-packet cost of `from_container` against the empty
//! `noop` program on the same hook, through BPF_PROG_TEST_RUN with `repeat`,
//! on a private copy of the maps. Run by `cargo xtask bench` (which builds it
//! with `--features prog`); prints JSON. Needs root, no daemon.
//!
//! VXLAN encapsulation (`from_container` to a remote endpoint) and
//! decapsulation (`from_uplink`) change the frame's length, and `repeat`
//! re-runs a program on the skb its previous run left: they are measured
//! with one run per call instead (`--single-calls` calls each, fresh input
//! every time), against `noop` measured the same way, and the medians of
//! the per-call times are reported.
//!
//! The ingress-port paths of services (`from_uplink` on a SYN to an
//! ingress port, Maglev pick and DNAT to a local replica or VXLAN to a
//! remote one; and an ACK of such a flow, a conntrack hit) are measured
//! the same way: a new flow needs a new tuple every call, and the rewrite
//! changes the frame `repeat` would feed back.
//!
//! So are the per-packet VIP paths of `from_container` (a container's SYN
//! to a VIP for a local replica, an ACK of such a flow, and the replica's
//! reply, reverse-translated because the replica is `EP_BACKEND`).
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
    /// Single-run calls per program for the VXLAN paths (and their `noop`).
    #[arg(long, default_value_t = 20_000)]
    single_calls: usize,
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
    /// Single-run calls per program behind the three medians below.
    single_calls: usize,
    /// `noop`, one run per call (the floor of the two below).
    noop_single_median_ns: u32,
    /// A 64-byte frame to a remote endpoint, encapsulated and redirected.
    encap_median_ns: u32,
    /// That frame in VXLAN on the uplink, decapsulated into its container.
    decap_median_ns: u32,
    /// A SYN to an ingress port (a new flow: Maglev pick, CT pair, DNAT)
    /// for a replica on this host, redirected into it.
    ingress_new_median_ns: u32,
    /// An ACK of such a flow (conntrack hit, DNAT).
    ingress_hit_median_ns: u32,
    /// A SYN to an ingress port for a replica on another host: also
    /// encapsulated to that host.
    ingress_remote_new_median_ns: u32,
    /// An ACK of such a flow (conntrack hit, DNAT, VXLAN).
    ingress_remote_hit_median_ns: u32,
    /// A container's SYN to a VIP (per packet: a new flow, Maglev pick, CT
    /// pair, DNAT) for a replica on this host, redirected into it.
    vip_new_median_ns: u32,
    /// An ACK of such a flow (conntrack hit, DNAT).
    vip_hit_median_ns: u32,
    /// The replica's reply to it (`EP_BACKEND`: conntrack hit, source back
    /// to the VIP), redirected into the client.
    vip_reply_median_ns: u32,
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

const LOCAL_VTEP: [u8; 4] = [192, 0, 2, 1];
const REMOTE_VTEP: [u8; 4] = [192, 0, 2, 2];

fn ip_cmd(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The overlay setup: an underlay veth holding this host's VTEP with a
/// neighbour for the remote one, the tunnel, the VTEP, and a remote
/// endpoint on `me`'s network (made an overlay network). Returns the
/// underlay's ifindex, the frame `me` sends to the remote endpoint and the
/// VXLAN frame its answer arrives in.
fn overlay(dp: &mut Datapath, me: &mut Endpoint) -> Result<(u32, Vec<u8>, Vec<u8>)> {
    dataplane_user::netns::add_veth("dpbench4", "dpbench5", IFINDEX_BASE + 2)?;
    ip_cmd(&["link", "set", "dpbench4", "up"])?;
    ip_cmd(&["link", "set", "dpbench5", "up"])?;
    ip_cmd(&["addr", "add", "192.0.2.1/24", "dev", "dpbench4"])?;
    ip_cmd(&[
        "neigh",
        "add",
        "192.0.2.2",
        "lladdr",
        "02:00:5e:00:02:02",
        "dev",
        "dpbench4",
        "nud",
        "permanent",
    ])?;
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").context("forwarding")?;
    let ul = IFINDEX_BASE + 2;
    me.net.vni = 4242;
    dp.set_endpoint(*me)?;
    let remote = Endpoint {
        ifindex: 0,
        ip: dataplane_common::ipv4_wire([10, 0, 0, 9]),
        mac: [0x02, 0x42, 10, 0, 0, 9],
        host_mac: [0; 6],
        flags: dataplane_common::EP_REMOTE,
        vtep: dataplane_common::ipv4_wire(REMOTE_VTEP),
        ..*me
    };
    dp.set_remote_endpoint(remote)?;
    dp.set_tunnel(dataplane_common::Tunnel {
        addr: dataplane_common::ipv4_wire(LOCAL_VTEP),
        ifindex: ul,
        mtu: 1450,
        flags: dataplane_common::TUNNEL_ENABLED,
    })?;
    dp.sync_vteps(&[(
        dataplane_common::ipv4_wire(REMOTE_VTEP),
        dataplane_common::VTEP_NODE,
    )])?;
    let (mut to_remote, _, _) = bench_frame();
    to_remote[0..6].copy_from_slice(&remote.mac);
    to_remote[30..34].copy_from_slice(&[10, 0, 0, 9]);
    let mut answer = to_remote.clone();
    answer[0..6].copy_from_slice(&me.mac);
    answer[6..12].copy_from_slice(&remote.mac);
    answer[26..30].copy_from_slice(&[10, 0, 0, 9]);
    answer[30..34].copy_from_slice(&[10, 0, 0, 2]);
    // The outer headers, as a remote host's encapsulation writes them.
    let mut vx = vec![0u8; 50];
    vx[0..6].copy_from_slice(&[0x02, 0, 0x5e, 0, 2, 1]);
    vx[6..12].copy_from_slice(&[0x02, 0, 0x5e, 0, 2, 2]);
    vx[12..14].copy_from_slice(&[0x08, 0x00]);
    vx[14] = 0x45;
    vx[16..18].copy_from_slice(&((36 + answer.len()) as u16).to_be_bytes());
    vx[20] = 0x40;
    vx[22] = 64;
    vx[23] = 17;
    vx[26..30].copy_from_slice(&REMOTE_VTEP);
    vx[30..34].copy_from_slice(&LOCAL_VTEP);
    vx[34..36].copy_from_slice(&50_000u16.to_be_bytes());
    vx[36..38].copy_from_slice(&4789u16.to_be_bytes());
    vx[38..40].copy_from_slice(&((16 + answer.len()) as u16).to_be_bytes());
    vx[42] = 0x08;
    vx[46..49].copy_from_slice(&4242u32.to_be_bytes()[1..]);
    vx.extend_from_slice(&answer);
    Ok((ul, to_remote, vx))
}

/// Median of `calls` single-run calls of `prog` on `frame` from `ifindex`.
fn single_runs(
    dp: &mut Datapath,
    prog: &str,
    frame: &[u8],
    ifindex: u32,
    calls: usize,
) -> Result<u32> {
    single_runs_of(dp, prog, |_| frame.to_vec(), ifindex, calls)
}

/// [`single_runs`] with frame `frame(i)` for call `i`.
fn single_runs_of(
    dp: &mut Datapath,
    prog: &str,
    frame: impl Fn(usize) -> Vec<u8>,
    ifindex: u32,
    calls: usize,
) -> Result<u32> {
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut v = Vec::with_capacity(calls);
    for i in 0..calls {
        let frame = frame(i);
        let (ret, ns) = run_program(dp, prog, &frame, &ctx, 1)?;
        if prog != "noop" && ret != 7 {
            bail!("{prog}: the bench frame was not redirected (verdict {ret})");
        }
        v.push(ns);
    }
    Ok(median(&v))
}

/// The ingress ports: 8080 of a service (slot 0) whose one replica is
/// `local` (this host), 8081 of one (slot 1) whose one replica is
/// `remote` (behind the remote VTEP), both answered on this host's VTEP
/// address; the maps written as the daemon's projection writes them.
fn services(dp: &mut Datapath, local: &Endpoint, remote: u32) -> Result<()> {
    use aya::maps::{Array, HashMap, MapData};
    use dataplane_common::{
        port_wire, Backend, PortKey, Service, BE_ACTIVE, IPPROTO_TCP, MAGLEV_M, SVC_INGRESS,
    };
    dp.sync_local_addrs(&[dataplane_common::ipv4_wire(LOCAL_VTEP)])?;
    let ebpf = dp.ebpf_mut();
    let mut svcs: HashMap<&mut MapData, PortKey, Service> =
        HashMap::try_from(ebpf.map_mut("SERVICES").context("SERVICES")?)?;
    for (slot, port) in [(0u32, 8080u16), (1, 8081)] {
        let svc = Service {
            slot,
            count: 1,
            target: port_wire(80),
            flags: SVC_INGRESS,
        };
        svcs.insert(PortKey::new(IPPROTO_TCP, 0, port_wire(port)), svc, 0)?;
    }
    let mut bes: Array<&mut MapData, Backend> =
        Array::try_from(ebpf.map_mut("BACKENDS").context("BACKENDS")?)?;
    for (id, ip) in [(0u32, local.ip), (1, remote)] {
        let be = Backend {
            ip,
            slot: id,
            flags: BE_ACTIVE,
        };
        bes.set(id, be, 0)?;
    }
    let mut table: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut("MAGLEV").context("MAGLEV")?)?;
    for slot in 0..2u32 {
        for i in 0..MAGLEV_M {
            table.set(slot * MAGLEV_M + i, slot, 0)?;
        }
    }
    Ok(())
}

/// The VIP 10.0.0.100:8000 (tcp, slot 2) whose one replica is `replica`
/// (id 2, on this host, marked `EP_BACKEND` as the daemon marks a task's
/// endpoint), target port 80.
fn vip(dp: &mut Datapath, replica: &mut Endpoint) -> Result<()> {
    use aya::maps::{Array, HashMap, MapData};
    use dataplane_common::{
        port_wire, Backend, PortKey, Service, BE_ACTIVE, EP_BACKEND, IPPROTO_TCP, MAGLEV_M, SVC_VIP,
    };
    replica.flags |= EP_BACKEND;
    dp.set_endpoint(*replica)?;
    let ebpf = dp.ebpf_mut();
    let mut svcs: HashMap<&mut MapData, PortKey, Service> =
        HashMap::try_from(ebpf.map_mut("SERVICES").context("SERVICES")?)?;
    let svc = Service {
        slot: 2,
        count: 1,
        target: port_wire(80),
        flags: SVC_VIP,
    };
    let key = PortKey::new(
        IPPROTO_TCP,
        dataplane_common::ipv4_wire(VIP),
        port_wire(8000),
    );
    svcs.insert(key, svc, 0)?;
    let mut bes: Array<&mut MapData, Backend> =
        Array::try_from(ebpf.map_mut("BACKENDS").context("BACKENDS")?)?;
    let be = Backend {
        ip: replica.ip,
        slot: 2,
        flags: BE_ACTIVE,
    };
    bes.set(2, be, 0)?;
    let mut table: Array<&mut MapData, u32> =
        Array::try_from(ebpf.map_mut("MAGLEV").context("MAGLEV")?)?;
    for i in 0..MAGLEV_M {
        table.set(2 * MAGLEV_M + i, 2, 0)?;
    }
    Ok(())
}

const VIP: [u8; 4] = [10, 0, 0, 100];

/// A 64-byte TCP segment (`flags`) `src` -> `dst` with MACs `macs`
/// (destination, source): between containers of the bench network, or
/// from the underlay (`ingress_frame`).
fn container_tcp(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    flags: u8,
) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&macs.0);
    f[6..12].copy_from_slice(&macs.1);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.0);
    f[30..34].copy_from_slice(&dst.0);
    f[34..36].copy_from_slice(&src.1.to_be_bytes());
    f[36..38].copy_from_slice(&dst.1.to_be_bytes());
    f[46] = 0x50;
    f[47] = flags;
    f
}

/// A 64-byte TCP segment (`flags`) from 198.51.100.7:`sport` to this
/// host's VTEP address, port `dport`, as it arrives on the underlay.
fn ingress_frame(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    container_tcp(
        ([0x02, 0, 0x5e, 0, 2, 1], [0x02, 0, 0x5e, 0, 2, 2]),
        ([198, 51, 100, 7], sport),
        (LOCAL_VTEP, dport),
        flags,
    )
}

/// The measurement proper; runs on a thread of its own, which it moves into
/// a network namespace of its own (holding the veths, gone with the thread).
fn measure(dir: &Path, repeat: u32, rounds: usize, single_calls: usize) -> Result<ProgBench> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    dataplane_user::netns::add_veth("dpbench0", "dpbench1", IFINDEX_BASE)?;
    dataplane_user::netns::add_veth("dpbench2", "dpbench3", IFINDEX_BASE + 1)?;
    let mut dp = Datapath::load(dir)?;
    let (frame, mut me, peer) = bench_frame();
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
    let (ul, to_remote, vx) = overlay(&mut dp, &mut me)?;
    let (mut n1, mut enc, mut dec) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved in slices, as above.
    let slice = single_calls.div_ceil(10).max(1);
    for _ in 0..10 {
        n1.push(single_runs(&mut dp, "noop", &to_remote, me.ifindex, slice)?);
        enc.push(single_runs(
            &mut dp,
            "from_container",
            &to_remote,
            me.ifindex,
            slice,
        )?);
        dec.push(single_runs(&mut dp, "from_uplink", &vx, ul, slice)?);
    }
    // The ingress paths, on the same setup: `peer` is the local replica.
    services(&mut dp, &peer, dataplane_common::ipv4_wire([10, 0, 0, 9]))?;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    // Fresh source ports for the new flows: 10 slices of `slice` calls.
    if slice * 10 > usize::from(u16::MAX - 1024) {
        bail!("--single-calls too large for fresh source ports");
    }
    let fresh = |round: usize, i: usize| (1024 + round * slice + i) as u16;
    let (mut new_l, mut hit_l, mut new_r, mut hit_r) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let f = |dport| move |i| ingress_frame(fresh(round, i), dport, SYN);
        new_l.push(single_runs_of(&mut dp, "from_uplink", f(8080), ul, slice)?);
        new_r.push(single_runs_of(&mut dp, "from_uplink", f(8081), ul, slice)?);
        // The first flow of each slice, conntrack hits from then on.
        let ack = |dport| ingress_frame(fresh(round, 0), dport, ACK);
        hit_l.push(single_runs(&mut dp, "from_uplink", &ack(8080), ul, slice)?);
        hit_r.push(single_runs(&mut dp, "from_uplink", &ack(8081), ul, slice)?);
    }
    // Per-packet VIP flows, from `me` (the client: 10.0.0.2, an overlay
    // endpoint now, no EP_BACKEND) to `peer` (the replica).
    let mut replica = peer;
    vip(&mut dp, &mut replica)?;
    let (c, r) = (me.ip.to_ne_bytes(), replica.ip.to_ne_bytes());
    let (mut new_v, mut hit_v, mut rep_v) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let syn = |i| {
            container_tcp(
                (me.host_mac, me.mac),
                (c, fresh(round, i)),
                (VIP, 8000),
                SYN,
            )
        };
        new_v.push(single_runs_of(
            &mut dp,
            "from_container",
            syn,
            me.ifindex,
            slice,
        )?);
        let ack = container_tcp(
            (me.host_mac, me.mac),
            (c, fresh(round, 0)),
            (VIP, 8000),
            ACK,
        );
        hit_v.push(single_runs(
            &mut dp,
            "from_container",
            &ack,
            me.ifindex,
            slice,
        )?);
        let reply = container_tcp((me.mac, replica.mac), (r, 80), (c, fresh(round, 0)), ACK);
        rep_v.push(single_runs(
            &mut dp,
            "from_container",
            &reply,
            replica.ifindex,
            slice,
        )?);
    }
    Ok(ProgBench {
        vip_new_median_ns: median(&new_v),
        vip_hit_median_ns: median(&hit_v),
        vip_reply_median_ns: median(&rep_v),
        ingress_new_median_ns: median(&new_l),
        ingress_hit_median_ns: median(&hit_l),
        ingress_remote_new_median_ns: median(&new_r),
        ingress_remote_hit_median_ns: median(&hit_r),
        single_calls: slice * 10,
        noop_single_median_ns: median(&n1),
        encap_median_ns: median(&enc),
        decap_median_ns: median(&dec),
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
    let res =
        std::thread::spawn(move || measure(&pins, args.repeat, args.rounds, args.single_calls))
            .join()
            .map_err(|_| anyhow!("bench thread panicked"));
    // The scratch pins go whatever happened (the maps die with the thread's
    // file descriptors; the pins would keep them).
    let _ = std::fs::remove_dir_all(&dir);
    let r = res??;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}

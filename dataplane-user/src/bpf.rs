//! Loading the eBPF object, pinning, and projecting the model into maps.
//!
//! Pins live under `<bpffs>/v<LAYOUT_VERSION>/`: `maps/<NAME>` (reused by name
//! across daemon restarts) and `links/<host ifname>` (the TCX link of each
//! endpoint veth, so the program stays attached while no daemon runs). A
//! restarted daemon loads the new program and swaps it into every pinned link
//! atomically (`BPF_LINK_UPDATE`), so traffic never sees a gap.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapInfo, MapType, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, TestRun as _,
    },
    Ebpf, EbpfLoader,
};
use dataplane_common::{
    iface_slot, Counters, CtEntry, CtKey, DropReason, Endpoint, FragKey, FragPorts, Ipv4Wire,
    LinkKey, NatAddr, Network, PeerCache, PortKey, SockRevKey, CONFIG_SLOTS, IFINDEX_BASE,
    LAYOUT_VERSION, MAX_CT, MAX_ENDPOINTS, MAX_FRAGS, MAX_LINKS, MAX_LOCAL_ADDRS, MAX_PORTS,
    MAX_SOCK_REV, PROG_NAMES, PROG_SLOTS,
};
use serde::Serialize;

/// The eBPF object built by `build.rs` (aya-build), embedded in the binary.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What an unused `IFACES` slot holds.
const EMPTY_ENDPOINT: Endpoint = Endpoint {
    ifindex: 0,
    network_id: 0,
    ip: 0,
    mac: [0; 6],
    host_mac: [0; 6],
    flags: 0,
    net: Network {
        subnet: 0,
        mask: 0,
        gateway: 0,
        flags: 0,
    },
};

/// The layout every pinned map must have: (name, type, key size, value size,
/// capacity).
fn expected_maps() -> [(&'static str, MapType, u32, u32, u32); 12] {
    [
        ("DNS_PORTS", MapType::Hash, 8, 4, MAX_ENDPOINTS),
        (
            "FRAGS",
            MapType::LruHash,
            size_of::<FragKey>() as u32,
            size_of::<FragPorts>() as u32,
            MAX_FRAGS,
        ),
        (
            "CT",
            MapType::LruHash,
            size_of::<CtKey>() as u32,
            size_of::<CtEntry>() as u32,
            MAX_CT,
        ),
        (
            "PORTS",
            MapType::Hash,
            size_of::<PortKey>() as u32,
            size_of::<NatAddr>() as u32,
            MAX_PORTS,
        ),
        ("LOCAL_ADDRS", MapType::Hash, 4, 4, MAX_LOCAL_ADDRS),
        (
            "SOCK_REV",
            MapType::LruHash,
            size_of::<SockRevKey>() as u32,
            size_of::<NatAddr>() as u32,
            MAX_SOCK_REV,
        ),
        ("CONFIG", MapType::Array, 4, 8, CONFIG_SLOTS),
        (
            "LINKS",
            MapType::Hash,
            size_of::<LinkKey>() as u32,
            4,
            MAX_LINKS,
        ),
        (
            "ENDPOINTS",
            MapType::Hash,
            size_of::<Ipv4Wire>() as u32,
            size_of::<Endpoint>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            "IFACES",
            MapType::Array,
            4,
            size_of::<Endpoint>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            "PEER_CACHE",
            MapType::Array,
            4,
            size_of::<PeerCache>() as u32,
            MAX_ENDPOINTS,
        ),
        (
            "STATS",
            MapType::PerCpuArray,
            4,
            size_of::<Counters>() as u32,
            PROG_SLOTS,
        ),
    ]
}

pub struct Datapath {
    ebpf: Ebpf,
    links_dir: PathBuf,
    root: PathBuf,
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// The standard bpffs mount point.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Makes sure `dir` is on a bpf filesystem. A fresh machine may have no bpffs
/// on /sys/fs/bpf: then one is mounted there (for a `dir` below it) or on
/// `dir` itself (anywhere else).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let sys = Path::new(SYS_FS_BPF);
    if dir.starts_with(sys) && sys.is_dir() && !is_bpffs(sys) {
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpf filesystem at {SYS_FS_BPF}"))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if is_bpffs(dir) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting a bpf filesystem at {}", dir.display()))?;
    Ok(())
}

/// Refuses to reuse a pinned map whose layout differs from this build's.
fn check_pinned_layout(maps_dir: &Path) -> Result<()> {
    for (name, ty, key, value, cap) in expected_maps() {
        let pin = maps_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned map {}", pin.display()))?;
        let got_ty = info.map_type().map_err(|e| anyhow!("{e}"))?;
        if got_ty != ty
            || info.key_size() != key
            || info.value_size() != value
            || info.max_entries() != cap
        {
            bail!(
                "pinned map {} has type {:?}, key {} B, value {} B, {} entries, but this daemon needs {:?}, {} B, {} B, {}: \
                 its layout changed without a LAYOUT_VERSION bump; remove {} once no traffic depends on it",
                pin.display(),
                got_ty,
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                ty,
                key,
                value,
                cap,
                maps_dir.display()
            );
        }
    }
    Ok(())
}

/// What the `sock_addr` row of `dataplane stats` counts: the socket hooks
/// see calls, not packets (`dataplane-ebpf/src/sock.rs`).
pub const SOCK_STATS_NOTE: &str = "sock_addr counts socket calls, not packets: PACKETS = \
connect/sendto to a host address or (from a sandbox) 127.0.0.11:53, and recvfrom/getpeername \
shown an address back; TRANSLATED = those whose address was rewritten";

/// One program's counters, summed over CPUs.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct ProgramStats {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub redirected: u64,
    pub passed: u64,
    pub arp_replies: u64,
    #[serde(default)]
    pub translated: u64,
    #[serde(default)]
    pub ct_created: u64,
    #[serde(default)]
    pub alloc_failed: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl Datapath {
    /// Loads the programs, reusing (after a layout check) or creating the
    /// pinned maps under `<bpffs>/v<LAYOUT_VERSION>`.
    pub fn load(bpffs: &Path) -> Result<Self> {
        ensure_bpffs(bpffs)?;
        let root = bpffs.join(format!("v{LAYOUT_VERSION}"));
        let maps_dir = root.join("maps");
        let links_dir = root.join("links");
        std::fs::create_dir_all(&maps_dir)?;
        std::fs::create_dir_all(&links_dir)?;
        check_pinned_layout(&maps_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)
            .context("loading the eBPF object")?;
        for name in ["from_container", "from_uplink", "noop"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying program {name}"))?;
        }
        Ok(Self {
            ebpf,
            links_dir,
            root,
        })
    }

    /// The loaded object, for code that attaches programs of its own kind
    /// (the cgroup socket hooks).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// `<bpffs>/v<LAYOUT_VERSION>`: the directory under which pins live.
    pub fn pin_root(&self) -> &Path {
        &self.root
    }

    fn prog(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        Ok(self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?
            .try_into()?)
    }

    /// Attaches `from_container` to TC ingress of `ifname` and pins the link.
    /// If a pinned link is already there (a previous daemon made it), the new
    /// program replaces the old one in it atomically.
    pub fn attach(&mut self, ifname: &str) -> Result<()> {
        let pin = self.links_dir.join(ifname);
        self.attach_pinned("from_container", ifname, &pin)
    }

    fn uplinks_dir(&self) -> PathBuf {
        self.root.join("uplinks")
    }

    /// Attaches `from_uplink` to TC ingress of host interface `ifname`
    /// (ifindex `ifindex`), pinned as `uplinks/<ifindex>` (or swapped into
    /// that pin).
    pub fn attach_uplink(&mut self, ifname: &str, ifindex: u32) -> Result<()> {
        let dir = self.uplinks_dir();
        std::fs::create_dir_all(&dir)?;
        self.attach_pinned("from_uplink", ifname, &dir.join(ifindex.to_string()))
    }

    /// ifindexes of host interfaces with a pinned `from_uplink` link.
    pub fn pinned_uplinks(&self) -> Vec<u32> {
        std::fs::read_dir(self.uplinks_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drops the pinned uplink link of `ifindex` (gone interfaces).
    pub fn detach_uplink(&mut self, ifindex: u32) {
        let _ = std::fs::remove_file(self.uplinks_dir().join(ifindex.to_string()));
    }

    fn attach_pinned(&mut self, prog_name: &str, ifname: &str, pin: &Path) -> Result<()> {
        let prog = self.prog(prog_name)?;
        let id = match PinnedLink::from_pin(pin) {
            Ok(old) => {
                let link: SchedClassifierLink = FdLink::from(old).try_into()?;
                prog.attach_to_link(link)
                    .with_context(|| format!("updating the program on {ifname}"))?
            }
            Err(_) => prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .with_context(|| format!("attaching {prog_name} to {ifname}"))?,
        };
        let link: FdLink = prog.take_link(id)?.try_into()?;
        // The old pin (if any) still names the same link; re-pin after it goes.
        let _ = std::fs::remove_file(pin);
        link.pin(pin)
            .with_context(|| format!("pinning the link of {ifname}"))?;
        Ok(())
    }

    /// Drops the pinned link of `ifname` (the program detaches when the last
    /// reference goes; deleting the veth does that as well).
    pub fn detach(&mut self, ifname: &str) -> Result<()> {
        let pin = self.links_dir.join(ifname);
        match std::fs::remove_file(&pin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("unpinning {}", pin.display()))
            }
            _ => Ok(()),
        }
    }

    /// Names of the interfaces with a pinned link.
    pub fn pinned_links(&self) -> Vec<String> {
        std::fs::read_dir(&self.links_dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The hash (or LRU hash) map `name` with keys `K` and values `V`.
    fn hash<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<HashMap<&mut aya::maps::MapData, K, V>> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing"))?;
        Ok(HashMap::try_from(map)?)
    }

    fn ifaces(&mut self) -> Result<Array<&mut aya::maps::MapData, Endpoint>> {
        let map = self
            .ebpf
            .map_mut("IFACES")
            .ok_or_else(|| anyhow!("map IFACES missing"))?;
        Ok(Array::try_from(map)?)
    }

    /// Installs an endpoint under its address (`ENDPOINTS`) and in the
    /// `IFACES` slot of its host-side veth.
    pub fn set_endpoint(&mut self, ep: Endpoint) -> Result<()> {
        let slot = iface_slot(ep.ifindex).ok_or_else(|| {
            anyhow!(
                "host veth ifindex {} is outside the endpoint range {IFINDEX_BASE}..{}",
                ep.ifindex,
                IFINDEX_BASE + MAX_ENDPOINTS
            )
        })?;
        self.hash::<u32, Endpoint>("ENDPOINTS")?
            .insert(ep.ip, ep, 0)
            .context("ENDPOINTS map full")?;
        if let Err(e) = self.ifaces()?.set(slot, ep, 0) {
            let _ = self.hash::<u32, Endpoint>("ENDPOINTS")?.remove(&ep.ip);
            return Err(e).context("writing IFACES");
        }
        Ok(())
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Wire, ifindex: u32) -> Result<()> {
        let _ = self.hash::<u32, Endpoint>("ENDPOINTS")?.remove(&ip);
        if let Some(slot) = iface_slot(ifindex) {
            self.ifaces()?.set(slot, EMPTY_ENDPOINT, 0)?;
        }
        Ok(())
    }

    /// Makes the maps hold exactly `endpoints` and the `links` pairs (each
    /// allowed both ways): writes every desired entry (a no-op for traffic
    /// when unchanged) and deletes the rest.
    pub fn reconcile(
        &mut self,
        endpoints: &[Endpoint],
        links: &[(Ipv4Wire, Ipv4Wire)],
    ) -> Result<()> {
        for ep in endpoints {
            self.set_endpoint(*ep)?;
        }
        self.sync_links(links)?;
        let mut m = self.hash::<u32, Endpoint>("ENDPOINTS")?;
        let stale: Vec<u32> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !endpoints.iter().any(|e| e.ip == *k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        let mut ifaces = self.ifaces()?;
        let stale: Vec<u32> = (0..MAX_ENDPOINTS)
            .filter(|slot| {
                ifaces.get(slot, 0).is_ok_and(|e| {
                    e.ifindex != 0 && !endpoints.iter().any(|d| d.ifindex == e.ifindex)
                })
            })
            .collect();
        for slot in stale {
            ifaces.set(slot, EMPTY_ENDPOINT, 0)?;
        }
        Ok(())
    }

    /// Makes `ENDPOINTS` and `IFACES` hold exactly `endpoints`, writing only
    /// the entries that differ (so a pass over an unchanged set costs reads
    /// only); returns how many entries it had to write or delete.
    pub fn sync_endpoints(&mut self, endpoints: &[Endpoint]) -> Result<usize> {
        let mut changed = 0;
        let mut m = self.hash::<u32, Endpoint>("ENDPOINTS")?;
        for ep in endpoints {
            if m.get(&ep.ip, 0).ok().as_ref() != Some(ep) {
                m.insert(ep.ip, *ep, 0).context("ENDPOINTS map full")?;
                changed += 1;
            }
        }
        let stale: Vec<u32> = m
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !endpoints.iter().any(|e| e.ip == *k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
            changed += 1;
        }
        let mut want = vec![EMPTY_ENDPOINT; MAX_ENDPOINTS as usize];
        for ep in endpoints {
            if let Some(slot) = iface_slot(ep.ifindex) {
                want[slot as usize] = *ep;
            }
        }
        let mut ifaces = self.ifaces()?;
        for (slot, w) in want.iter().enumerate() {
            let slot = slot as u32;
            if ifaces.get(&slot, 0).ok().as_ref() != Some(w) {
                ifaces.set(slot, *w, 0)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Whether `from_container` is attached to TC ingress of `ifname` (a
    /// link detached by hand leaves its pin behind, defunct).
    pub fn is_attached(&self, ifname: &str) -> bool {
        SchedClassifier::query_tcx(ifname, TcAttachType::Ingress).is_ok_and(|(_, progs)| {
            progs
                .iter()
                .any(|p| p.name_as_str() == Some("from_container"))
        })
    }

    /// Attaches `from_container` to `ifname` afresh, dropping a pinned link
    /// that no longer holds it.
    pub fn reattach(&mut self, ifname: &str) -> Result<()> {
        let _ = std::fs::remove_file(self.links_dir.join(ifname));
        self.attach(ifname)
    }

    /// Makes `LINKS` hold exactly the `links` pairs, each both ways.
    pub fn sync_links(&mut self, links: &[(Ipv4Wire, Ipv4Wire)]) -> Result<()> {
        let want: Vec<(LinkKey, u32)> = links
            .iter()
            .flat_map(|&(a, b)| {
                [
                    (LinkKey { src: a, dst: b }, 1),
                    (LinkKey { src: b, dst: a }, 1),
                ]
            })
            .collect();
        sync_hash(&mut self.hash("LINKS")?, &want, "LINKS")
    }

    /// Publishes `key` (proto, host address or 0, host port) onto `to`.
    pub fn set_port(&mut self, key: PortKey, to: NatAddr) -> Result<()> {
        self.hash::<PortKey, NatAddr>("PORTS")?
            .insert(key, to, 0)
            .context("PORTS map full")?;
        Ok(())
    }

    /// Unpublishes `key` (absent is fine).
    pub fn remove_port(&mut self, key: &PortKey) -> Result<()> {
        let _ = self.hash::<PortKey, NatAddr>("PORTS")?.remove(key);
        Ok(())
    }

    /// Makes `PORTS` hold exactly `ports`.
    pub fn sync_ports(&mut self, ports: &[(PortKey, NatAddr)]) -> Result<()> {
        sync_hash(&mut self.hash("PORTS")?, ports, "PORTS")
    }

    /// Deletes every conntrack entry whose key or rewrite involves `ip` (a
    /// container going away); returns how many went.
    pub fn flush_conntrack(&mut self, ip: Ipv4Wire) -> Result<usize> {
        self.delete_ct_where(|k, e| {
            k.saddr == ip || k.daddr == ip || e.saddr == ip || e.daddr == ip
        })
    }

    /// Points 127.0.0.11:53 of the sandbox with netns cookie `cookie` at
    /// the resolver's real `port` (host order).
    pub fn set_dns_port(&mut self, cookie: u64, port: u16) -> Result<()> {
        self.hash::<u64, u32>("DNS_PORTS")?
            .insert(cookie, u32::from(port.to_be()), 0)
            .context("DNS_PORTS map full")?;
        Ok(())
    }

    /// Forgets a sandbox's resolver port (absent is fine).
    pub fn remove_dns_port(&mut self, cookie: u64) -> Result<()> {
        let _ = self.hash::<u64, u32>("DNS_PORTS")?.remove(&cookie);
        Ok(())
    }

    /// Makes `DNS_PORTS` hold exactly `ports` (netns cookie, host-order port).
    pub fn sync_dns_ports(&mut self, ports: &[(u64, u16)]) -> Result<()> {
        let want: Vec<(u64, u32)> = ports
            .iter()
            .map(|&(c, p)| (c, u32::from(p.to_be())))
            .collect();
        sync_hash(&mut self.hash("DNS_PORTS")?, &want, "DNS_PORTS")
    }

    /// Path of the pinned conntrack map, for [`expire_conntrack_at`].
    pub fn ct_pin(&self) -> PathBuf {
        self.root.join("maps").join("CT")
    }

    fn delete_ct_where(&mut self, f: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        Ok(delete_where(&mut self.hash("CT")?, f))
    }

    /// Live conntrack entries (both directions of a flow count).
    pub fn conntrack_entries(&self) -> Result<usize> {
        let map = self
            .ebpf
            .map("CT")
            .ok_or_else(|| anyhow!("map CT missing"))?;
        let m: HashMap<_, CtKey, CtEntry> = HashMap::try_from(map)?;
        Ok(m.keys().filter(|k| k.is_ok()).count())
    }

    /// Makes `LOCAL_ADDRS` hold exactly `addrs`.
    pub fn sync_local_addrs(&mut self, addrs: &[Ipv4Wire]) -> Result<()> {
        let want: Vec<(u32, u32)> = addrs.iter().map(|&a| (a, 1)).collect();
        sync_hash(&mut self.hash("LOCAL_ADDRS")?, &want, "LOCAL_ADDRS")
    }

    /// Writes `CONFIG[slot]`.
    pub fn set_config(&mut self, slot: u32, value: u64) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("CONFIG")
            .ok_or_else(|| anyhow!("map CONFIG missing"))?;
        let mut a: Array<_, u64> = Array::try_from(map)?;
        a.set(slot, value, 0)?;
        Ok(())
    }

    /// Per-program counters summed over CPUs.
    pub fn stats(&self) -> Result<Vec<ProgramStats>> {
        let map = self
            .ebpf
            .map("STATS")
            .ok_or_else(|| anyhow!("map STATS missing"))?;
        let stats: PerCpuArray<_, Counters> = PerCpuArray::try_from(map)?;
        let mut out = Vec::new();
        for (i, name) in PROG_NAMES.iter().enumerate() {
            let per_cpu = stats.get(&(i as u32), 0)?;
            let mut sum = Counters::ZERO;
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
                sum.redirected += c.redirected;
                sum.passed += c.passed;
                sum.arp_replies += c.arp_replies;
                sum.translated += c.translated;
                sum.ct_created += c.ct_created;
                sum.alloc_failed += c.alloc_failed;
                for (s, d) in sum.drops.iter_mut().zip(c.drops.iter()) {
                    *s += d;
                }
            }
            out.push(ProgramStats {
                name: (*name).to_string(),
                packets: sum.packets,
                bytes: sum.bytes,
                redirected: sum.redirected,
                passed: sum.passed,
                arp_replies: sum.arp_replies,
                translated: sum.translated,
                ct_created: sum.ct_created,
                alloc_failed: sum.alloc_failed,
                drops: DropReason::ALL
                    .iter()
                    .map(|r| (r.name().to_string(), sum.drops[*r as usize]))
                    .collect(),
            });
        }
        Ok(out)
    }

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

/// Deletes conntrack entries idle past their protocol's timeout as of `now`
/// (CLOCK_MONOTONIC ns, the clock of `bpf_ktime_get_ns`), through a handle
/// of its own on the pinned map `pin`: walking a full map takes a while,
/// and the daemon's lock (API calls) must not wait on it.
pub fn expire_conntrack_at(pin: &Path, now: u64) -> Result<usize> {
    let data =
        aya::maps::MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let mut m: HashMap<aya::maps::MapData, CtKey, CtEntry> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data))?;
    Ok(delete_where(&mut m, |k, e| {
        !dataplane_common::ct_alive(e, k.proto, now)
    }))
}

/// Makes hash map `m` (named `what` in errors) hold exactly `want`: writes
/// the entries that differ (an unchanged entry is not touched, so traffic
/// never sees it flicker) and deletes every other key.
fn sync_hash<T, K, V>(m: &mut HashMap<T, K, V>, want: &[(K, V)], what: &str) -> Result<()>
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod + PartialEq,
{
    for (k, v) in want {
        if m.get(k, 0).ok().as_ref() != Some(v) {
            m.insert(*k, *v, 0)
                .with_context(|| format!("{what} map full"))?;
        }
    }
    let keep: std::collections::HashSet<K> = want.iter().map(|(k, _)| *k).collect();
    let stale: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !keep.contains(k))
        .collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// Deletes the entries of `m` for which `f` holds; how many went.
fn delete_where<T, K, V>(m: &mut HashMap<T, K, V>, f: impl Fn(&K, &V) -> bool) -> usize
where
    T: std::borrow::BorrowMut<aya::maps::MapData>,
    K: aya::Pod,
    V: aya::Pod,
{
    let doomed: Vec<K> = m
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, v)| f(k, v))
        .map(|(k, _)| k)
        .collect();
    let n = doomed.len();
    for k in doomed {
        let _ = m.remove(&k);
    }
    n
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

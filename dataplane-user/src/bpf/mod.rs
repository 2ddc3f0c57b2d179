//! Loading the eBPF object, pinning, and projecting the model into maps.
//!
//! `maps` names every pinned map with the layout it must have, `links` the
//! TCX links of endpoints and uplinks, `conntrack` the flow table, `sockhook`
//! the cgroup socket hooks, `uplink` the host's own interfaces and
//! addresses, `maglev` the services' lookup tables and `services` their
//! projection into the service maps. (The program-cost benchmark is xtask's `bench-prog`, which
//! drives this module from outside the product.)
//!
//! Pins live under `<bpffs>/v<LAYOUT_VERSION>/`: `maps/<NAME>` (reused by name
//! across daemon restarts) and `links/<host ifname>` (the TCX link of each
//! endpoint veth, so the program stays attached while no daemon runs). A
//! restarted daemon loads the new program and swaps it into every pinned link
//! atomically (`BPF_LINK_UPDATE`), so traffic never sees a gap.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, HashMap, PerCpuArray, ProgramArray},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use dataplane_common::{
    iface_slot, Counters, DropReason, Endpoint, Ipv4Wire, LinkKey, NatAddr, PortKey, FLOOD_PROG,
    IFINDEX_BASE, LAYOUT_VERSION, MAX_ENDPOINTS, PROG_NAMES,
};
use serde::Serialize;

mod conntrack;
mod links;
pub mod maglev;
mod maps;
pub mod services;
pub mod sockhook;
pub mod uplink;

pub use conntrack::expire_conntrack_at;
use maps::{check_pinned_layout, sync_hash, EMPTY_ENDPOINT};

/// The eBPF object built by `build.rs` (aya-build), embedded in the binary.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

pub struct Datapath {
    ebpf: Ebpf,
    links_dir: PathBuf,
    root: PathBuf,
    /// What `sync_services` knows the service maps hold; read back from
    /// the pins on first use.
    services: Option<services::State>,
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

/// What the `sock_addr` row of `dataplane stats` counts: the socket hooks
/// see calls, not packets (`dataplane-ebpf/src/sock.rs`).
pub const SOCK_STATS_NOTE: &str = "sock_addr counts socket calls, not packets: PACKETS = \
connect/sendto to a host address, to a service VIP or (from a sandbox) 127.0.0.11:53, and \
recvfrom/getpeername shown an address back; TRANSLATED = those whose address was rewritten";

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
        for name in ["from_container", "from_uplink", "noop", "flood"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying program {name}"))?;
        }
        // `from_container` tail-calls `flood` through this array (pinned:
        // a program still attached from before a restart finds this load's
        // `flood` there).
        let fd = ebpf
            .program("flood")
            .ok_or_else(|| anyhow!("program flood missing from the object"))?
            .fd()?
            .try_clone()?;
        let map = ebpf
            .map_mut(maps::FLOOD_PROGS)
            .ok_or_else(|| anyhow!("map {} missing", maps::FLOOD_PROGS))?;
        ProgramArray::try_from(map)?
            .set(FLOOD_PROG, &fd, 0)
            .context("writing FLOOD_PROGS")?;
        Ok(Self {
            ebpf,
            links_dir,
            root,
            services: None,
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
            .map_mut(maps::IFACES)
            .ok_or_else(|| anyhow!("map {} missing", maps::IFACES))?;
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
        self.hash::<u32, Endpoint>(maps::ENDPOINTS)?
            .insert(ep.ip, ep, 0)
            .context("ENDPOINTS map full")?;
        if let Err(e) = self.ifaces()?.set(slot, ep, 0) {
            let _ = self.hash::<u32, Endpoint>(maps::ENDPOINTS)?.remove(&ep.ip);
            return Err(e).context("writing IFACES");
        }
        Ok(())
    }

    pub fn remove_endpoint(&mut self, ip: Ipv4Wire, ifindex: u32) -> Result<()> {
        let _ = self.hash::<u32, Endpoint>(maps::ENDPOINTS)?.remove(&ip);
        if let Some(slot) = iface_slot(ifindex) {
            self.ifaces()?.set(slot, EMPTY_ENDPOINT, 0)?;
        }
        Ok(())
    }

    /// Makes `ENDPOINTS` and `IFACES` hold exactly `endpoints`, writing only
    /// the entries that differ (so a pass over an unchanged set costs reads
    /// only); returns how many entries it had to write or delete.
    pub fn sync_endpoints(
        &mut self,
        endpoints: &[Endpoint],
        learned_nets: &std::collections::HashSet<u32>,
    ) -> Result<usize> {
        let mut changed = 0;
        let mut m = self.hash::<u32, Endpoint>(maps::ENDPOINTS)?;
        for ep in endpoints {
            if m.get(&ep.ip, 0).ok().as_ref() != Some(ep) {
                m.insert(ep.ip, *ep, 0).context("ENDPOINTS map full")?;
                changed += 1;
            }
        }
        let keep: std::collections::HashSet<u32> = endpoints.iter().map(|e| e.ip).collect();
        // Entries the datapath learned from a static VTEP stay while their
        // network does (they are the only record of those endpoints).
        let stale: Vec<u32> = m
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, v)| {
                let learned = v.flags & dataplane_common::EP_LEARNED != 0
                    && learned_nets.contains(&v.network_id);
                !keep.contains(k) && !learned
            })
            .map(|(k, _)| k)
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
        sync_hash(&mut self.hash(maps::LINKS)?, &want, maps::LINKS)
    }

    /// Publishes `key` (proto, host address or 0, host port) onto `to`.
    pub fn set_port(&mut self, key: PortKey, to: NatAddr) -> Result<()> {
        self.hash::<PortKey, NatAddr>(maps::PORTS)?
            .insert(key, to, 0)
            .context("PORTS map full")?;
        Ok(())
    }

    /// Unpublishes `key` (absent is fine).
    pub fn remove_port(&mut self, key: &PortKey) -> Result<()> {
        let _ = self.hash::<PortKey, NatAddr>(maps::PORTS)?.remove(key);
        Ok(())
    }

    /// Makes `PORTS` hold exactly `ports`.
    pub fn sync_ports(&mut self, ports: &[(PortKey, NatAddr)]) -> Result<()> {
        sync_hash(&mut self.hash(maps::PORTS)?, ports, maps::PORTS)
    }

    /// Points 127.0.0.11:53 of the sandbox with netns cookie `cookie` at
    /// the resolver's real `port` (host order).
    pub fn set_dns_port(&mut self, cookie: u64, port: u16) -> Result<()> {
        self.hash::<u64, u32>(maps::DNS_PORTS)?
            .insert(cookie, u32::from(port.to_be()), 0)
            .context("DNS_PORTS map full")?;
        Ok(())
    }

    /// Forgets a sandbox's resolver port (absent is fine).
    pub fn remove_dns_port(&mut self, cookie: u64) -> Result<()> {
        let _ = self.hash::<u64, u32>(maps::DNS_PORTS)?.remove(&cookie);
        Ok(())
    }

    /// Makes `DNS_PORTS` hold exactly `ports` (netns cookie, host-order port).
    pub fn sync_dns_ports(&mut self, ports: &[(u64, u16)]) -> Result<()> {
        let want: Vec<(u64, u32)> = ports
            .iter()
            .map(|&(c, p)| (c, u32::from(p.to_be())))
            .collect();
        sync_hash(&mut self.hash(maps::DNS_PORTS)?, &want, maps::DNS_PORTS)
    }

    /// Installs the endpoint of another host (`EP_REMOTE`: `ENDPOINTS` only).
    pub fn set_remote_endpoint(&mut self, ep: Endpoint) -> Result<()> {
        self.hash::<u32, Endpoint>(maps::ENDPOINTS)?
            .insert(ep.ip, ep, 0)
            .context("ENDPOINTS map full")?;
        Ok(())
    }

    /// Removes the remote endpoint at `ip`, if that is what the entry is.
    pub fn remove_remote_endpoint(&mut self, ip: Ipv4Wire) -> Result<()> {
        let mut m = self.hash::<u32, Endpoint>(maps::ENDPOINTS)?;
        if m.get(&ip, 0)
            .is_ok_and(|e| e.flags & dataplane_common::EP_REMOTE != 0)
        {
            let _ = m.remove(&ip);
        }
        Ok(())
    }

    /// Writes this host's end of the tunnel (`TUNNEL[0]`).
    pub fn set_tunnel(&mut self, t: dataplane_common::Tunnel) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::TUNNEL)
            .ok_or_else(|| anyhow!("map {} missing", maps::TUNNEL))?;
        let mut a: Array<_, dataplane_common::Tunnel> = Array::try_from(map)?;
        if a.get(&0, 0).ok() != Some(t) {
            a.set(0, t, 0)?;
        }
        Ok(())
    }

    /// Makes `VTEPS` hold exactly `vteps` (underlay address, `VTEP_*` flags).
    pub fn sync_vteps(&mut self, vteps: &[(Ipv4Wire, u32)]) -> Result<()> {
        sync_hash(&mut self.hash(maps::VTEPS)?, vteps, maps::VTEPS)
    }

    /// Makes `FLOOD` hold exactly `flood` (network id, static VTEPs).
    pub fn sync_flood(&mut self, flood: &[(u32, dataplane_common::Flood)]) -> Result<()> {
        sync_hash(&mut self.hash(maps::FLOOD)?, flood, maps::FLOOD)
    }

    /// Makes the VLAN maps hold exactly the wanted VLAN networks
    /// (`VLANS`, by numeric id), trunk VIDs (`TRUNKS`) and container MACs
    /// (`FDB`). `TRUNKS` and `FDB` entries go last on the way in and first
    /// on the way out, so a frame never finds a VID without its network.
    pub fn sync_vlans(
        &mut self,
        vlans: &[(u32, dataplane_common::VlanNet)],
        trunks: &[(dataplane_common::TrunkKey, u32)],
        fdb: &[(dataplane_common::FdbKey, u32)],
        written: &mut Option<std::collections::HashSet<u32>>,
    ) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::VLANS)
            .ok_or_else(|| anyhow!("map {} missing", maps::VLANS))?;
        let mut a: Array<_, dataplane_common::VlanNet> = Array::try_from(map)?;
        let want: std::collections::HashMap<u32, dataplane_common::VlanNet> =
            vlans.iter().copied().collect();
        for (num, v) in &want {
            if a.get(num, 0).ok().as_ref() != Some(v) {
                a.set(*num, *v, 0).context("writing VLANS")?;
            }
        }
        sync_hash(&mut self.hash(maps::TRUNKS)?, trunks, maps::TRUNKS)?;
        sync_hash(&mut self.hash(maps::FDB)?, fdb, maps::FDB)?;
        let map = self
            .ebpf
            .map_mut(maps::VLANS)
            .ok_or_else(|| anyhow!("map {} missing", maps::VLANS))?;
        let mut a: Array<_, dataplane_common::VlanNet> = Array::try_from(map)?;
        // The slots this daemon wrote before; all of them the first time
        // (a previous daemon's).
        let before: Vec<u32> = match written.take() {
            Some(w) => w.into_iter().collect(),
            None => (0..=dataplane_common::MAX_NETWORKS).collect(),
        };
        for num in before {
            if !want.contains_key(&num)
                && a.get(&num, 0).is_ok_and(|v| v.parent != 0 || v.count != 0)
            {
                a.set(num, dataplane_common::VlanNet::EMPTY, 0)?;
            }
        }
        *written = Some(want.keys().copied().collect());
        Ok(())
    }

    /// Makes `LOCAL_ADDRS` hold exactly `addrs`.
    pub fn sync_local_addrs(&mut self, addrs: &[Ipv4Wire]) -> Result<()> {
        let want: Vec<(u32, u32)> = addrs.iter().map(|&a| (a, 1)).collect();
        sync_hash(&mut self.hash(maps::LOCAL_ADDRS)?, &want, maps::LOCAL_ADDRS)
    }

    /// Writes `CONFIG[slot]`.
    pub fn set_config(&mut self, slot: u32, value: u64) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(maps::CONFIG)
            .ok_or_else(|| anyhow!("map {} missing", maps::CONFIG))?;
        let mut a: Array<_, u64> = Array::try_from(map)?;
        a.set(slot, value, 0)?;
        Ok(())
    }

    /// Makes the service maps (`SERVICES`, `MAGLEV`, `BACKENDS`,
    /// `BACKEND_PORTS`) hold exactly `want`, the whole wanted state; see
    /// `services` for the order of writes that keeps traffic safe.
    pub fn sync_services(
        &mut self,
        want: &[services::ServiceSpec],
    ) -> Result<services::SyncReport> {
        if self.services.is_none() {
            self.services = Some(services::State::recover(&self.ebpf)?);
        }
        let st = self.services.as_mut().expect("set above");
        let r = services::sync(&mut self.ebpf, st, want);
        if r.is_err() {
            // Half-applied: read the truth back from the maps next time.
            self.services = None;
        }
        r
    }

    /// Per-service and per-replica counters, summed over CPUs, for every
    /// service slot the maps hold.
    pub fn service_stats(&self) -> Result<Vec<services::ServiceStats>> {
        match &self.services {
            Some(st) => services::stats(&self.ebpf, st),
            None => services::stats(&self.ebpf, &services::State::recover(&self.ebpf)?),
        }
    }

    /// Per-program counters summed over CPUs.
    pub fn stats(&self) -> Result<Vec<ProgramStats>> {
        let map = self
            .ebpf
            .map(maps::STATS)
            .ok_or_else(|| anyhow!("map {} missing", maps::STATS))?;
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
}

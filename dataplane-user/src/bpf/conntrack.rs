//! The conntrack map: flushing a container's flows, counting entries, and
//! the periodic expiry of idle ones.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::HashMap;
use dataplane_common::{CtEntry, CtKey, Ipv4Wire};

use super::{maps, maps::delete_where, Datapath};

impl Datapath {
    /// Deletes every conntrack entry whose key or rewrite involves `ip` (a
    /// container going away); returns how many went.
    pub fn flush_conntrack(&mut self, ip: Ipv4Wire) -> Result<usize> {
        self.delete_ct_where(|k, e| {
            k.saddr == ip || k.daddr == ip || e.saddr == ip || e.daddr == ip
        })
    }

    /// Path of the pinned conntrack map, for [`expire_conntrack_at`].
    pub fn ct_pin(&self) -> PathBuf {
        self.root.join("maps").join(maps::CT)
    }

    fn delete_ct_where(&mut self, f: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        Ok(delete_where(&mut self.hash(maps::CT)?, f))
    }

    /// Live conntrack entries (both directions of a flow count).
    pub fn conntrack_entries(&self) -> Result<usize> {
        let map = self
            .ebpf
            .map(maps::CT)
            .ok_or_else(|| anyhow!("map {} missing", maps::CT))?;
        let m: HashMap<_, CtKey, CtEntry> = HashMap::try_from(map)?;
        Ok(m.keys().filter(|k| k.is_ok()).count())
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

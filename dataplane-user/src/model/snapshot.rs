//! The in-memory model: a cache of the store, built from one listing and kept
//! current by the store's watch. It is never a second truth: every change
//! reaches it through the store. Readers take an `Arc` of the newest
//! snapshot and never wait on a writer; writers validate against a snapshot
//! and let the store's guards refuse them if it was stale.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context as _;

use crate::{
    api::error::{bad, ApiError, ApiResult},
    dns::{NameEntry, Names, NetworkNames},
    model::{self, Container, Endpoint, Network, Pending},
    ports::Taken,
    store::{Event, Listing, Revision},
};

/// Which network a `--network` argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetRef {
    /// A stored network (by id).
    Stored(String),
    /// A predefined network of a driver without stored state
    /// (`host`, `none`).
    Predefined(&'static str),
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The store revision this snapshot is as of.
    pub revision: Revision,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    pub containers: BTreeMap<String, Container>,
    pub pending: BTreeMap<String, Pending>,
    /// The mod revision of every key, records and claims alike, for the
    /// guards of the next commit.
    pub revs: HashMap<String, Revision>,
}

/// Finds the id of the object named `name_or_id`, or whose id starts with
/// it, as Docker does. `Err(true)`: none; `Err(false)`: an ambiguous prefix.
fn resolve_name<'a>(
    objects: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    name_or_id: &str,
) -> Result<String, bool> {
    if let Some((_, id)) = objects.clone().find(|(name, _)| *name == name_or_id) {
        return Ok(id.to_string());
    }
    let mut by_prefix =
        objects.filter(|(_, id)| !name_or_id.is_empty() && id.starts_with(name_or_id));
    match (by_prefix.next(), by_prefix.next()) {
        (Some((_, id)), None) => Ok(id.to_string()),
        (None, _) => Err(true),
        _ => Err(false),
    }
}

impl Snapshot {
    pub fn from_listing(listing: &Listing) -> anyhow::Result<Self> {
        let mut s = Snapshot {
            revision: listing.revision,
            ..Default::default()
        };
        for e in &listing.entries {
            s.put(&e.key, &e.value, e.mod_revision)?;
        }
        Ok(s)
    }

    fn put(&mut self, key: &str, value: &[u8], rev: Revision) -> anyhow::Result<()> {
        fn de<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> anyhow::Result<T> {
            serde_json::from_slice(v).with_context(|| format!("decoding {key}"))
        }
        if let Some(id) = key.strip_prefix(model::NETWORKS) {
            self.networks.insert(id.to_string(), de(key, value)?);
        } else if let Some(id) = key.strip_prefix(model::ENDPOINTS) {
            self.endpoints.insert(id.to_string(), de(key, value)?);
        } else if let Some(id) = key.strip_prefix(model::CONTAINERS) {
            self.containers.insert(id.to_string(), de(key, value)?);
        } else if let Some(id) = key.strip_prefix(model::PENDING) {
            self.pending.insert(id.to_string(), de(key, value)?);
        }
        self.revs.insert(key.to_string(), rev);
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        if let Some(id) = key.strip_prefix(model::NETWORKS) {
            self.networks.remove(id);
        } else if let Some(id) = key.strip_prefix(model::ENDPOINTS) {
            self.endpoints.remove(id);
        } else if let Some(id) = key.strip_prefix(model::CONTAINERS) {
            self.containers.remove(id);
        } else if let Some(id) = key.strip_prefix(model::PENDING) {
            self.pending.remove(id);
        }
        self.revs.remove(key);
    }

    /// Applies one watched change. A record that cannot be decoded is
    /// logged and left out (the store keeps it; the next daemon may know it).
    pub fn apply(&mut self, ev: &Event) {
        match ev {
            Event::Put {
                key,
                value,
                revision,
            } => {
                if let Err(e) = self.put(key, value, *revision) {
                    tracing::warn!("{e:#}");
                }
            }
            Event::Delete { key, .. } => self.delete(key),
        }
        self.revision = self.revision.max(ev.revision());
    }

    /// The mod revision of `key` as this snapshot saw it.
    pub fn rev_of(&self, key: &str) -> Option<Revision> {
        self.revs.get(key).copied()
    }

    // ----- lookups -------------------------------------------------------

    pub fn network_ref(&self, name_or_id: &str) -> ApiResult<NetRef> {
        if let Some(d) = crate::drivers::predefined(name_or_id) {
            return Ok(NetRef::Predefined(d));
        }
        self.network_id(name_or_id).map(NetRef::Stored)
    }

    pub fn network_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.networks
                .values()
                .map(|n| (n.name.as_str(), n.id.as_str())),
            name_or_id,
        )
        .map_err(|found_none| {
            if found_none {
                ApiError::NotFound(format!("network {name_or_id} not found"))
            } else {
                bad(format!("network id prefix {name_or_id} is ambiguous"))
            }
        })
    }

    pub fn container_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.containers
                .values()
                .map(|c| (c.name.as_str(), c.id.as_str())),
            name_or_id,
        )
        .map_err(|found_none| {
            if found_none {
                ApiError::NotFound(format!("no such container: {name_or_id}"))
            } else {
                bad(format!("container id prefix {name_or_id} is ambiguous"))
            }
        })
    }

    /// The container's endpoints, eth0 first.
    pub fn endpoints_of_container(&self, cid: &str) -> Vec<&Endpoint> {
        let mut v: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.container_id == cid)
            .collect();
        v.sort_by_key(|e| e.ifname[3..].parse::<u32>().unwrap_or(0));
        v
    }

    pub fn endpoints_of_network(&self, nid: &str) -> Vec<&Endpoint> {
        self.endpoints
            .values()
            .filter(|e| e.network_id == nid)
            .collect()
    }

    /// Addresses taken on network `nid`.
    pub fn used_ips(&self, nid: &str) -> HashSet<std::net::Ipv4Addr> {
        self.endpoints_of_network(nid)
            .iter()
            .map(|e| e.ip)
            .collect()
    }

    /// Every published host port of every container.
    pub fn taken_ports(&self) -> Taken {
        Taken::new(self.containers.values().flat_map(|c| &c.ports))
    }

    /// The `PORTS` entries of container `cid`: its published ports, leading
    /// to its `eth0` endpoint (none while it has no `eth0`).
    pub fn port_entries(
        &self,
        cid: &str,
    ) -> Vec<(dataplane_common::PortKey, dataplane_common::NatAddr)> {
        let Some(c) = self.containers.get(cid) else {
            return Vec::new();
        };
        let Some(eth0) = self
            .endpoints_of_container(cid)
            .into_iter()
            .find(|e| e.ifname == "eth0")
        else {
            return Vec::new();
        };
        c.ports.iter().map(|b| b.to_bpf(eth0.ip)).collect()
    }

    /// Both addresses of every `--link`ed pair of endpoints sharing a network.
    pub fn link_pairs(&self) -> Vec<(dataplane_common::Ipv4Wire, dataplane_common::Ipv4Wire)> {
        let mut out = Vec::new();
        for c in self.containers.values() {
            for l in &c.links {
                for a in self.endpoints_of_container(&c.id) {
                    for b in self.endpoints_of_container(&l.container_id) {
                        if a.network_id == b.network_id {
                            out.push((
                                dataplane_common::ipv4_wire(a.ip.octets()),
                                dataplane_common::ipv4_wire(b.ip.octets()),
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The resolver's names: container names, hostnames and aliases on
    /// every user-defined network, and `--link` aliases per container. The
    /// default `bridge` network keeps Docker's behaviour: no names there (use
    /// `--link`).
    pub fn names(&self) -> Names {
        let mut names = Names::default();
        for n in self.networks.values().filter(|n| n.user_defined()) {
            let entries = self
                .endpoints_of_network(&n.id)
                .into_iter()
                .filter_map(|e| {
                    let c = self.containers.get(&e.container_id)?;
                    let mut all = vec![c.name.clone()];
                    if c.hostname != c.name {
                        all.push(c.hostname.clone());
                    }
                    all.extend(e.aliases.iter().cloned());
                    Some(NameEntry {
                        container_id: c.id.clone(),
                        names: all,
                        ip: e.ip,
                    })
                })
                .collect();
            names.networks.insert(
                n.id.clone(),
                NetworkNames {
                    name: n.name.clone(),
                    entries,
                },
            );
        }
        for c in self.containers.values() {
            for l in &c.links {
                let mut seen = Vec::new();
                for a in self.endpoints_of_container(&c.id) {
                    if !self
                        .networks
                        .get(&a.network_id)
                        .is_some_and(Network::user_defined)
                    {
                        continue;
                    }
                    for b in self.endpoints_of_container(&l.container_id) {
                        if b.network_id == a.network_id && !seen.contains(&b.ip) {
                            seen.push(b.ip);
                            names
                                .links
                                .entry(c.id.clone())
                                .or_default()
                                .push((l.alias.clone(), b.ip));
                        }
                    }
                }
            }
        }
        names
    }

    /// Whether a `run` or `connect` of this container is still in progress
    /// (its intent record is there).
    pub fn is_pending(&self, cid: &str) -> bool {
        self.pending.values().any(|p| p.container_id == cid)
    }
}

//! The in-memory model: a cache of the store, built from one listing and kept
//! current by the store's watch. It is never a second truth: every change
//! reaches it through the store. Readers take an `Arc` of the newest
//! snapshot and never wait on a writer; writers validate against a snapshot
//! and let the store's guards refuse them if it was stale.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::Instant,
};

use anyhow::Context as _;

use crate::{
    api::error::{bad, ApiError, ApiResult},
    dns::{NameEntry, Names, NetworkNames},
    model::{self, Container, Endpoint, Network, Node, Pending},
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
    /// This host's name in a cluster ("" alone).
    pub node: String,
    /// Endpoints of shared (overlay) networks that live on other hosts;
    /// `endpoints` has only this host's.
    pub remote: BTreeMap<String, Endpoint>,
    /// The hosts of the cluster.
    pub nodes: BTreeMap<String, Node>,
    /// Hosts whose lease is alive.
    pub alive: BTreeSet<String>,
    /// When this daemon saw a host's lease go (for the grace period of its
    /// endpoints and for `node ls`); hosts already down when it started
    /// count from its start.
    pub down_since: BTreeMap<String, (Instant, String)>,
    /// Services, by id.
    pub services: BTreeMap<String, model::service::Service>,
    /// Their tasks, by key (`cluster/tasks/<service id>/<replica>`), so in
    /// replica order per service.
    pub tasks: BTreeMap<String, model::service::Task>,
    /// Every host's address blocks of each overlay network (by network id).
    pub blocks: BTreeMap<String, Vec<(ipnetwork::Ipv4Network, String)>>,
    /// The mod revision of every key, records and claims alike, for the
    /// guards of the next commit.
    pub revs: HashMap<String, Revision>,
    /// Address pools handed to Docker's IPAM (by pool id).
    pub pools: BTreeMap<String, model::docker::Pool>,
    /// Address claims Docker's IPAM holds for an endpoint not created yet:
    /// claim key -> pool id.
    pub ip_holds: BTreeMap<String, String>,
}

/// `<network id>/<address>_<prefix>` of a block key.
fn parse_block(rest: &str) -> Option<(&str, ipnetwork::Ipv4Network)> {
    let (nid, b) = rest.split_once('/')?;
    let (addr, prefix) = b.split_once('_')?;
    let block = ipnetwork::Ipv4Network::new(addr.parse().ok()?, prefix.parse().ok()?).ok()?;
    Some((nid, block))
}

/// Finds the id of the `what` (network, container, service) named
/// `name_or_id`, or whose id starts with it, as Docker does; none is
/// `not_found`, an ambiguous prefix a bad request.
fn resolve_name<'a>(
    objects: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    name_or_id: &str,
    what: &str,
    not_found: impl FnOnce() -> String,
) -> ApiResult<String> {
    if let Some((_, id)) = objects.clone().find(|(name, _)| *name == name_or_id) {
        return Ok(id.to_string());
    }
    let mut by_prefix =
        objects.filter(|(_, id)| !name_or_id.is_empty() && id.starts_with(name_or_id));
    match (by_prefix.next(), by_prefix.next()) {
        (Some((_, id)), None) => Ok(id.to_string()),
        (None, _) => Err(ApiError::NotFound(not_found())),
        _ => Err(bad(format!("{what} id prefix {name_or_id} is ambiguous"))),
    }
}

impl Snapshot {
    /// The snapshot of `listing` as host `node` sees it ("" for one host
    /// alone).
    pub fn from_listing(listing: &Listing, node: &str) -> anyhow::Result<Self> {
        let mut s = Snapshot {
            revision: listing.revision,
            node: node.to_string(),
            ..Default::default()
        };
        for e in &listing.entries {
            s.put(&e.key, &e.value, e.mod_revision)?;
        }
        let start = (Instant::now(), model::now_rfc3339());
        for n in s.nodes.keys() {
            if !s.alive.contains(n) {
                s.down_since.insert(n.clone(), start.clone());
            }
        }
        Ok(s)
    }

    fn put(&mut self, key: &str, value: &[u8], rev: Revision) -> anyhow::Result<()> {
        fn de<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> anyhow::Result<T> {
            serde_json::from_slice(v).with_context(|| format!("decoding {key}"))
        }
        self.revs.insert(key.to_string(), rev);
        if let Some(name) = key.strip_prefix(model::NODES) {
            self.nodes.insert(name.to_string(), de(key, value)?);
            return Ok(());
        }
        if let Some(name) = key.strip_prefix(model::ALIVE) {
            self.alive.insert(name.to_string());
            self.down_since.remove(name);
            return Ok(());
        }
        if let Some(id) = key.strip_prefix(model::service::SERVICES) {
            self.services.insert(id.to_string(), de(key, value)?);
            return Ok(());
        }
        if key.starts_with(model::service::TASKS) {
            self.tasks.insert(key.to_string(), de(key, value)?);
            return Ok(());
        }
        if let Some(id) = key
            .strip_prefix(model::CLUSTER)
            .unwrap_or(key)
            .strip_prefix(model::docker::POOLS)
        {
            self.pools.insert(id.to_string(), de(key, value)?);
            return Ok(());
        }
        if key
            .strip_prefix(model::CLUSTER)
            .unwrap_or(key)
            .starts_with(model::CLAIMS)
        {
            // An address claim changes hands (a hold adopted by an
            // endpoint) by a rewrite: forget the old holder first.
            self.ip_holds.remove(key);
            if let Some(pool) = value
                .strip_prefix(model::docker::HOLD_PREFIX.as_bytes())
                .filter(|_| key.contains("/ips/") || key.starts_with("claims/ips/"))
            {
                self.ip_holds
                    .insert(key.to_string(), String::from_utf8_lossy(pool).into_owned());
            }
            return Ok(());
        }
        if let Some(rest) = key.strip_prefix(model::BLOCKS) {
            let (nid, block) = parse_block(rest).with_context(|| format!("decoding {key}"))?;
            let owner = String::from_utf8_lossy(value).into_owned();
            let v = self.blocks.entry(nid.to_string()).or_default();
            v.retain(|(b, _)| *b != block);
            v.push((block, owner));
            return Ok(());
        }
        let key = key.strip_prefix(model::CLUSTER).unwrap_or(key);
        if let Some(id) = key.strip_prefix(model::NETWORKS) {
            self.networks.insert(id.to_string(), de(key, value)?);
        } else if let Some(id) = key.strip_prefix(model::ENDPOINTS) {
            let ep: Endpoint = de(key, value)?;
            if ep.node.is_empty() || ep.node == self.node {
                self.endpoints.insert(id.to_string(), ep);
            } else {
                self.remote.insert(id.to_string(), ep);
            }
        } else if let Some(id) = key.strip_prefix(model::CONTAINERS) {
            self.containers.insert(id.to_string(), de(key, value)?);
        } else if let Some(id) = key.strip_prefix(model::PENDING) {
            self.pending.insert(id.to_string(), de(key, value)?);
        }
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        self.revs.remove(key);
        self.ip_holds.remove(key);
        if let Some(id) = key
            .strip_prefix(model::CLUSTER)
            .unwrap_or(key)
            .strip_prefix(model::docker::POOLS)
        {
            self.pools.remove(id);
            return;
        }
        if let Some(name) = key.strip_prefix(model::NODES) {
            self.nodes.remove(name);
            return;
        }
        if let Some(name) = key.strip_prefix(model::ALIVE) {
            self.alive.remove(name);
            self.down_since
                .insert(name.to_string(), (Instant::now(), model::now_rfc3339()));
            return;
        }
        if let Some(id) = key.strip_prefix(model::service::SERVICES) {
            self.services.remove(id);
            return;
        }
        if key.starts_with(model::service::TASKS) {
            self.tasks.remove(key);
            return;
        }
        if let Some(rest) = key.strip_prefix(model::BLOCKS) {
            if let Some((nid, block)) = parse_block(rest) {
                if let Some(v) = self.blocks.get_mut(nid) {
                    v.retain(|(b, _)| *b != block);
                }
            }
            return;
        }
        let key = key.strip_prefix(model::CLUSTER).unwrap_or(key);
        if let Some(id) = key.strip_prefix(model::NETWORKS) {
            self.networks.remove(id);
        } else if let Some(id) = key.strip_prefix(model::ENDPOINTS) {
            self.endpoints.remove(id);
            self.remote.remove(id);
        } else if let Some(id) = key.strip_prefix(model::CONTAINERS) {
            self.containers.remove(id);
        } else if let Some(id) = key.strip_prefix(model::PENDING) {
            self.pending.remove(id);
        }
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
            "network",
            || format!("network {name_or_id} not found"),
        )
    }

    pub fn container_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.containers
                .values()
                .map(|c| (c.name.as_str(), c.id.as_str())),
            name_or_id,
            "container",
            || format!("no such container: {name_or_id}"),
        )
    }

    /// The container's endpoints, eth0 first.
    pub fn endpoints_of_container(&self, cid: &str) -> Vec<&Endpoint> {
        let mut v: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|e| e.container_id == cid)
            .collect();
        v.sort_by_key(|e| {
            e.ifname
                .get(3..)
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(0)
        });
        v
    }

    pub fn endpoints_of_network(&self, nid: &str) -> Vec<&Endpoint> {
        self.endpoints
            .values()
            .filter(|e| e.network_id == nid)
            .collect()
    }

    /// Addresses taken on network `nid` (on every host, for a shared one).
    pub fn used_ips(&self, nid: &str) -> HashSet<std::net::Ipv4Addr> {
        self.endpoints_of_network(nid)
            .iter()
            .chain(self.remote_endpoints_of_network(nid).iter())
            .map(|e| e.ip)
            .chain(
                self.services
                    .values()
                    .filter(|s| s.network == nid)
                    .filter_map(|s| s.vip),
            )
            .chain(self.held_ips(nid))
            .collect()
    }

    /// Addresses of network `nid` that Docker's IPAM holds for endpoints
    /// it has not created yet.
    pub fn held_ips(&self, nid: &str) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
        let prefix = format!("{}ips/{nid}/", model::CLAIMS);
        self.ip_holds.keys().filter_map(move |k| {
            k.strip_prefix(model::CLUSTER)
                .unwrap_or(k)
                .strip_prefix(&prefix)?
                .parse()
                .ok()
        })
    }

    /// Endpoints of network `nid` on other hosts.
    pub fn remote_endpoints_of_network(&self, nid: &str) -> Vec<&Endpoint> {
        self.remote
            .values()
            .filter(|e| e.network_id == nid)
            .collect()
    }

    /// The claim key of an endpoint's address.
    pub fn ip_claim_of(&self, ep: &Endpoint) -> String {
        match self.networks.get(&ep.network_id) {
            Some(n) => model::endpoint_claim(n, ep),
            None => format!("{}ips/{}/{}", model::CLAIMS, ep.network_id, ep.ip),
        }
    }

    /// Whether host `name` counts as up for its endpoints: its lease is
    /// alive, or it went within `grace` (its containers may still run on
    /// their pinned datapath).
    pub fn node_in_grace(&self, name: &str, grace: std::time::Duration) -> bool {
        self.alive.contains(name)
            || self
                .down_since
                .get(name)
                .is_some_and(|(at, _)| at.elapsed() < grace)
    }

    /// Host ports in use: containers' published ports, and the ingress
    /// ports of services (every address of every host answers those).
    pub fn taken_ports(&self) -> Taken {
        let ingress: Vec<model::PortBinding> = self
            .services
            .values()
            .flat_map(|s| s.ingress_ports())
            .map(|p| model::PortBinding {
                proto: p.proto,
                host_ip: None,
                host_port: p.published,
                container_port: p.target,
            })
            .collect();
        Taken::new(
            self.containers
                .values()
                .flat_map(|c| &c.ports)
                .chain(ingress.iter()),
        )
    }

    /// The id of the service named `name_or_id` (or with that id prefix).
    pub fn service_id(&self, name_or_id: &str) -> ApiResult<String> {
        resolve_name(
            self.services
                .iter()
                .map(|(id, s)| (s.name.as_str(), id.as_str())),
            name_or_id,
            "service",
            || format!("no such service: {name_or_id}"),
        )
    }

    /// The tasks of service `sid`, in replica order.
    pub fn tasks_of(&self, sid: &str) -> Vec<&model::service::Task> {
        let prefix = format!("{}{sid}/", model::service::TASKS);
        self.tasks
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(_, t)| t)
            .collect()
    }

    /// The `PORTS` entries of container `cid`: its published ports, leading
    /// to its `eth0` endpoint (none while it has no `eth0`), or for an
    /// attachment another runtime owns, to its one endpoint.
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
            .find(|e| e.ifname == "eth0" || c.external.is_some())
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
                // A DHCP endpoint without a lease has no name to answer.
                .filter(|e| e.has_address())
                .filter_map(|e| {
                    let c = self.containers.get(&e.container_id)?;
                    let mut all = vec![c.name.clone()];
                    if c.hostname != c.name {
                        all.push(c.hostname.clone());
                    }
                    all.extend(e.aliases.iter().cloned());
                    // Docker answers the 12-character short id too.
                    all.push(c.id.chars().take(12).collect());
                    Some(NameEntry {
                        container_id: c.id.clone(),
                        names: all,
                        ip: e.ip,
                    })
                })
                .chain(
                    self.remote_endpoints_of_network(&n.id)
                        .into_iter()
                        .map(|e| {
                            let mut all = vec![e.container_name.clone()];
                            if !e.hostname.is_empty() && e.hostname != e.container_name {
                                all.push(e.hostname.clone());
                            }
                            all.extend(e.aliases.iter().cloned());
                            NameEntry {
                                container_id: e.container_id.clone(),
                                names: all,
                                ip: e.ip,
                            }
                        }),
                )
                .chain(self.service_names(&n.id))
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

    /// The names services of network `nid` give: `NAME` for the VIP (or,
    /// with `dnsrr`, for every live replica's address), and
    /// `tasks.NAME` for every live replica's address, as swarm has them.
    fn service_names(&self, nid: &str) -> Vec<NameEntry> {
        let mut out = Vec::new();
        for svc in self.services.values().filter(|s| s.network == nid) {
            let live: Vec<&model::service::Task> = self
                .tasks_of(&svc.id)
                .into_iter()
                .filter(|t| t.live())
                .collect();
            if let Some(vip) = svc.vip {
                out.push(NameEntry {
                    container_id: format!("service:{}", svc.id),
                    names: vec![svc.name.clone()],
                    ip: vip,
                });
            }
            for t in live {
                let mut names = vec![format!("tasks.{}", svc.name)];
                if svc.vip.is_none() {
                    names.push(svc.name.clone());
                }
                out.push(NameEntry {
                    container_id: format!("task:{}", t.id),
                    names,
                    ip: t.ip.expect("live tasks have an address"),
                });
            }
        }
        out
    }

    /// The networks `network prune` removes: this host's own (not shared
    /// overlays, which other hosts may be about to use), neither the
    /// default `bridge` nor one Docker made through our plugin, with no
    /// endpoint and no service on them. Id and name, by name.
    pub fn unused_networks(&self) -> Vec<(&Network, String)> {
        let mut out: Vec<(&Network, String)> = self
            .networks
            .values()
            .filter(|n| n.user_defined() && !n.docker && !n.is_cluster())
            .filter(|n| self.endpoints_of_network(&n.id).is_empty())
            .filter(|n| self.remote_endpoints_of_network(&n.id).is_empty())
            .filter(|n| !self.services.values().any(|s| s.network == n.id))
            .map(|n| (n, n.name.clone()))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// Whether a `run` or `connect` of this container is still in progress
    /// (its intent record is there).
    pub fn is_pending(&self, cid: &str) -> bool {
        self.pending.values().any(|p| p.container_id == cid)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

    use super::*;
    use crate::{
        model::{Mac, Node},
        store::{Entry, Event, Listing},
    };

    fn overlay() -> Network {
        Network {
            id: "ov".into(),
            name: "ov".into(),
            driver: "overlay".into(),
            num: 0,
            subnet: "10.211.55.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 211, 55, 1),
            ip_range: None,
            aux_addresses: BTreeMap::new(),
            internal: false,
            options: BTreeMap::new(),
            created: String::new(),
            vni: 4096,
            block_prefix: 26,
            vteps: Vec::new(),
            labels: BTreeMap::new(),
            attachable: false,
            docker: false,
            macvlan: None,
            dhcp: false,
        }
    }

    fn ep(id: &str, node: &str, last: u8) -> Endpoint {
        let ip = Ipv4Addr::new(10, 211, 55, last);
        Endpoint {
            id: id.into(),
            network_id: "ov".into(),
            container_id: format!("c-{id}"),
            ip,
            mac: Mac::for_container(ip),
            host_mac: Mac::random_local(),
            host_ifname: format!("dp{id}"),
            ifname: "eth0".into(),
            aliases: vec![format!("{id}-alias")],
            node: node.into(),
            container_name: format!("name-{id}"),
            hostname: String::new(),
            lease: None,
        }
    }

    fn entry(key: String, value: Vec<u8>) -> Entry {
        Entry {
            key,
            value,
            mod_revision: 1,
        }
    }

    #[test]
    fn a_host_sees_its_own_endpoints_apart_from_other_hosts() {
        let net = overlay();
        let node = |name: &str, last: u8| Node {
            name: name.into(),
            addr: Ipv4Addr::new(192, 168, 50, last),
            joined: String::new(),
        };
        let (mine, theirs) = (ep("a1", "a", 2), ep("b1", "b", 64));
        let listing = Listing {
            revision: 5,
            entries: vec![
                entry(net.key(), serde_json::to_vec(&net).unwrap()),
                entry(mine.key(), serde_json::to_vec(&mine).unwrap()),
                entry(theirs.key(), serde_json::to_vec(&theirs).unwrap()),
                entry(
                    format!("{}a", model::NODES),
                    serde_json::to_vec(&node("a", 10)).unwrap(),
                ),
                entry(
                    format!("{}b", model::NODES),
                    serde_json::to_vec(&node("b", 11)).unwrap(),
                ),
                entry(format!("{}a", model::ALIVE), b"now".to_vec()),
                entry(
                    model::block_key("ov", "10.211.55.64/26".parse().unwrap()),
                    b"b".to_vec(),
                ),
            ],
        };
        assert!(mine.key().starts_with(model::CLUSTER));
        let mut s = Snapshot::from_listing(&listing, "a").unwrap();
        assert_eq!(s.endpoints.keys().collect::<Vec<_>>(), ["a1"]);
        assert_eq!(s.remote.keys().collect::<Vec<_>>(), ["b1"]);
        assert!(s.endpoints_of_container("c-b1").is_empty());
        // Addresses are taken cluster-wide; names resolve cluster-wide.
        assert!(s.used_ips("ov").contains(&theirs.ip));
        let names = s.names();
        let on = &names.networks["ov"].entries;
        assert!(on
            .iter()
            .any(|e| e.ip == theirs.ip && e.names.contains(&"name-b1".to_string())));
        assert!(on
            .iter()
            .any(|e| e.ip == theirs.ip && e.names.contains(&"b1-alias".to_string())));
        assert_eq!(
            s.blocks["ov"],
            [("10.211.55.64/26".parse().unwrap(), "b".to_string())]
        );
        // b was down when this daemon started: its grace counts from then.
        assert!(s.node_in_grace("b", Duration::from_secs(60)));
        assert!(!s.node_in_grace("b", Duration::ZERO));
        assert!(s.node_in_grace("a", Duration::ZERO));
        // a's lease goes: a is down from now.
        s.apply(&Event::Delete {
            key: format!("{}a", model::ALIVE),
            revision: 6,
        });
        assert!(!s.alive.contains("a"));
        assert!(!s.node_in_grace("a", Duration::ZERO));
        // The remote endpoint goes.
        s.apply(&Event::Delete {
            key: theirs.key(),
            revision: 7,
        });
        assert!(s.remote.is_empty());
        // Seen by b, the same listing is the other way round.
        let s = Snapshot::from_listing(&listing, "b").unwrap();
        assert_eq!(s.endpoints.keys().collect::<Vec<_>>(), ["b1"]);
        assert_eq!(s.remote.keys().collect::<Vec<_>>(), ["a1"]);
    }

    #[test]
    fn prune_takes_only_this_host_s_unused_networks() {
        let mut snap = Snapshot::default();
        let local = |id: &str| Network {
            id: id.into(),
            name: id.into(),
            driver: "bridge".into(),
            num: 1,
            vni: 0,
            block_prefix: 0,
            ..overlay()
        };
        let mut docker = local("docker-made");
        docker.docker = true;
        let nets = [
            local("bridge"),
            local("unused"),
            local("used"),
            local("by-service"),
            docker,
            overlay(),
        ];
        for n in nets {
            snap.networks.insert(n.id.clone(), n);
        }
        let mut e = ep("a", "", 2);
        e.network_id = "used".into();
        snap.endpoints.insert(e.id.clone(), e);
        let svc: crate::model::service::Service = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "s", "network": "by-service", "endpoint_mode": "vip",
            "replicas": 1, "cmd": ["true"], "slot": 1,
            "created": "", "version": 1,
        }))
        .expect("a service record");
        snap.services.insert(svc.id.clone(), svc);
        let names: Vec<String> = snap.unused_networks().into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["unused"]);
    }

    #[test]
    fn docker_pools_and_held_addresses_are_read_and_counted_as_used() {
        let pool = |id: &str, global: bool| model::docker::Pool {
            id: id.into(),
            subnet: "10.9.0.0/24".parse().unwrap(),
            ip_range: None,
            gateway: None,
            aux: Default::default(),
            network_id: Some("n1".into()),
            global,
        };
        let (local, global) = (pool("dataplane/10.9.0.0/24", false), pool("g", true));
        assert_eq!(local.key(), "docker/pools/dataplane/10.9.0.0/24");
        assert_eq!(global.key(), "cluster/docker/pools/g");
        let entry = |key: String, value: Vec<u8>| Entry {
            key,
            value,
            mod_revision: 1,
        };
        let listing = Listing {
            revision: 1,
            entries: vec![
                entry(local.key(), serde_json::to_vec(&local).unwrap()),
                entry(global.key(), serde_json::to_vec(&global).unwrap()),
                entry(
                    "claims/ips/n1/10.9.0.7".into(),
                    model::docker::hold_value(&local.id),
                ),
                entry("claims/ips/n1/10.9.0.8".into(), b"some-endpoint".to_vec()),
            ],
        };
        let mut s = Snapshot::from_listing(&listing, "").unwrap();
        assert_eq!(s.pools.len(), 2);
        assert_eq!(s.pools["g"], global);
        let held: Vec<Ipv4Addr> = s.held_ips("n1").collect();
        assert_eq!(held, [Ipv4Addr::new(10, 9, 0, 7)]);
        assert!(s.used_ips("n1").contains(&Ipv4Addr::new(10, 9, 0, 7)));
        assert!(s.held_ips("n2").next().is_none());
        // An endpoint adopts the hold: the claim is rewritten with its id.
        s.apply(&Event::Put {
            key: "claims/ips/n1/10.9.0.7".into(),
            value: b"ep".to_vec(),
            revision: 2,
        });
        assert!(s.ip_holds.is_empty());
        s.apply(&Event::Delete {
            key: global.key(),
            revision: 3,
        });
        assert_eq!(s.pools.keys().collect::<Vec<_>>(), [&local.id]);
    }
}

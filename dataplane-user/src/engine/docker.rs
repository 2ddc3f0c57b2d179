//! The engine's side of Docker's remote IPAM driver: pools and addresses
//! handed to Docker, kept in the store beside the networks they become, and
//! checked by the same rules (no pool overlapping a network or another
//! pool, no address handed out twice). Every write is a guarded commit like
//! the others.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use tracing::info;

use super::{json, Engine};
use crate::{
    api::error::{bad, ApiError, ApiResult},
    ipam,
    model::snapshot::Snapshot,
    model::{self, docker::Pool, Network},
    store::Txn,
};

/// What `RequestAddress` asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressRequest {
    pub pool: String,
    /// A given address (`--gateway`, `--aux-address`, `docker run --ip`).
    pub ip: Option<Ipv4Addr>,
    /// The network's gateway (`RequestAddressType` =
    /// `com.docker.network.gateway`).
    pub gateway: bool,
}

impl Snapshot {
    /// The network Docker's pool `p` became, if Docker created it.
    pub fn network_of_pool(&self, p: &Pool) -> Option<&Network> {
        p.network_id.as_ref().and_then(|n| self.networks.get(n))
    }

    /// The guard for taking address claim `claim`: its revision when
    /// Docker's IPAM holds it (the endpoint adopts the hold), else absent.
    pub fn hold_rev(&self, claim: &str) -> Option<crate::store::Revision> {
        if self.ip_holds.contains_key(claim) {
            self.rev_of(claim)
        } else {
            None
        }
    }

    /// Subnets no new pool or network may overlap: every network's and
    /// those of pools whose network Docker has not created yet (but not
    /// pool `except`'s).
    pub fn taken_subnets(&self, except: Option<&str>) -> Vec<(String, Ipv4Network)> {
        let mut v: Vec<(String, Ipv4Network)> = self
            .networks
            .values()
            .map(|n| (n.name.clone(), n.subnet))
            .collect();
        v.extend(
            self.pools
                .values()
                .filter(|p| self.network_of_pool(p).is_none() && Some(p.id.as_str()) != except)
                .map(|p| (format!("(Docker IPAM pool {})", p.id), p.subnet)),
        );
        v
    }
}

impl Engine {
    /// `RequestPool`: `subnet` (or the first free default pool), with
    /// `ip_range` to allocate from. A pool asked for again before its
    /// network exists is returned as it is; one whose network exists is
    /// refused as the overlap it is (Docker's second network on a subnet).
    pub fn request_pool(
        &self,
        subnet: Option<Ipv4Network>,
        ip_range: Option<Ipv4Network>,
        global: bool,
    ) -> ApiResult<Pool> {
        if global && self.cluster.is_none() {
            return Err(bad(super::NEEDS_CLUSTER));
        }
        let host_routes = ipam::host_routes();
        let (_, pool) = self.commit_with(|snap| {
            if let Some(p) = subnet.and_then(|s| snap.pools.get(&Pool::id_for(s))) {
                if let Some(net) = snap.network_of_pool(p) {
                    return Err(ApiError::Conflict(format!(
                        "subnet {} overlaps subnet {} of network {}",
                        p.subnet, net.subnet, net.name
                    )));
                }
                if p.ip_range == ip_range {
                    // Asked again before its network exists (a retry).
                    return Ok((Txn::default(), p.clone()));
                }
                return Err(ApiError::Conflict(format!(
                    "pool {} is already in use with another ip range",
                    p.subnet
                )));
            }
            let req = ipam::NetworkRequest {
                subnet,
                ip_range,
                ..Default::default()
            };
            let (subnet, _) = ipam::plan_network(&req, &snap.taken_subnets(None), &host_routes)?;
            let pool = Pool {
                id: Pool::id_for(subnet),
                subnet,
                ip_range,
                gateway: None,
                aux: Default::default(),
                network_id: None,
                global,
            };
            let mut t = Txn::default();
            // Pools and networks are checked against one guarded set.
            let claim = pool.networks_claim();
            t.unchanged(claim, snap.rev_of(claim))
                .put(claim, pool.id.clone().into_bytes())
                .absent(pool.key())
                .put(pool.key(), json(&pool)?);
            Ok((t, pool))
        })?;
        info!(pool = %pool.id, "IPAM pool handed to Docker");
        Ok(pool)
    }

    /// `ReleasePool`: forgets the pool and the addresses held in it.
    /// Docker releases a global network's pool before it deletes the
    /// network, a local one's after: the network keeps its subnet and
    /// reserved addresses either way, and no request names the pool any
    /// more. Releasing a pool that is not there succeeds.
    pub fn release_pool(&self, id: &str) -> ApiResult<()> {
        self.commit_with(|snap| {
            let Some(p) = snap.pools.get(id) else {
                return Ok((Txn::default(), ()));
            };
            let mut t = Txn::default();
            t.unchanged(p.key(), snap.rev_of(&p.key())).delete(p.key());
            for (claim, pool) in &snap.ip_holds {
                if pool == id {
                    t.unchanged(claim.clone(), snap.rev_of(claim))
                        .delete(claim.clone());
                }
            }
            Ok((t, ()))
        })?;
        Ok(())
    }

    /// `RequestAddress`: the gateway or an auxiliary address of a network
    /// Docker is about to create (kept on the pool, they become the
    /// network's reserved addresses), or an endpoint's address, held by a
    /// claim until the endpoint is created and adopts it. Returns the
    /// address and the pool's prefix length.
    pub fn request_address(&self, req: &AddressRequest) -> ApiResult<(Ipv4Addr, u8)> {
        let (_, ip) = self.commit_with(|snap| {
            let p = snap.pools.get(&req.pool).ok_or_else(|| {
                ApiError::NotFound(format!("no such address pool {}", req.pool))
            })?;
            let mut t = Txn::default();
            let Some(net) = snap.network_of_pool(p) else {
                let mut p = p.clone();
                let ip = match (req.ip, req.gateway) {
                    (Some(ip), _) => ip,
                    (None, true) => p.gateway.unwrap_or_else(|| ipam::first_host(p.subnet)),
                    (None, false) => {
                        return Err(bad(format!(
                            "pool {} has no network yet: only its gateway and auxiliary addresses can be requested",
                            p.id
                        )))
                    }
                };
                ipam::check_host_address(p.subnet, ip, "address")?;
                if req.gateway {
                    p.gateway = Some(ip);
                } else {
                    p.aux.insert(ip);
                }
                t.unchanged(p.key(), snap.rev_of(&p.key()))
                    .put(p.key(), json(&p)?);
                return Ok((t, ip));
            };
            if req.gateway {
                // Asked again (a replay): the network has it.
                return Ok((t, net.gateway));
            }
            if let Some(ip) = req.ip {
                let claim = model::ip_claim(net, ip);
                if snap.ip_holds.get(&claim) == Some(&p.id)
                    || net.aux_addresses.values().any(|a| *a == ip)
                {
                    return Ok((t, ip));
                }
            }
            // An overlay network's address comes from this host's blocks.
            let ip = self.allocate(snap, net, req.ip, &mut t)?;
            let claim = model::ip_claim(net, ip);
            t.unchanged(net.key(), snap.rev_of(&net.key()))
                .absent(claim.clone())
                .put(claim, model::docker::hold_value(&p.id));
            Ok((t, ip))
        })?;
        let prefix = self
            .snapshot()
            .pools
            .get(&req.pool)
            .map_or(32, |p| p.subnet.prefix());
        Ok((ip, prefix))
    }

    /// `ReleaseAddress`: gives back an address held for an endpoint (or one
    /// kept on a pool without a network). An address an endpoint has
    /// adopted goes with the endpoint; one not held succeeds as well.
    pub fn release_address(&self, pool: &str, ip: Ipv4Addr) -> ApiResult<()> {
        self.commit_with(|snap| {
            let mut t = Txn::default();
            let Some(p) = snap.pools.get(pool) else {
                return Ok((t, ()));
            };
            match snap.network_of_pool(p) {
                Some(net) => {
                    let claim = model::ip_claim(net, ip);
                    if snap.ip_holds.get(&claim).map(String::as_str) == Some(pool) {
                        t.unchanged(claim.clone(), snap.rev_of(&claim))
                            .delete(claim);
                    }
                }
                None => {
                    let mut p = p.clone();
                    let before = p.clone();
                    p.aux.remove(&ip);
                    if p.gateway == Some(ip) {
                        p.gateway = None;
                    }
                    if p != before {
                        t.unchanged(p.key(), snap.rev_of(&p.key()))
                            .put(p.key(), json(&p)?);
                    }
                }
            }
            Ok((t, ()))
        })?;
        Ok(())
    }

    /// An address for an endpoint of `net`: `requested` when Docker's IPAM
    /// holds it (the caller adopts the hold with [`Snapshot::hold_rev`]),
    /// else as [`Engine::allocate`] picks.
    pub(crate) fn allocate_adopting(
        &self,
        snap: &Snapshot,
        net: &Network,
        requested: Option<Ipv4Addr>,
        t: &mut Txn,
    ) -> ApiResult<Ipv4Addr> {
        if let Some(ip) = requested {
            if snap.ip_holds.contains_key(&model::ip_claim(net, ip)) {
                return Ok(ip);
            }
        }
        self.allocate(snap, net, requested, t)
    }
}

impl Engine {
    /// Gives network `id` the name Docker knows it by (the driver protocol
    /// does not send it; the plugin learns it from Docker's API after
    /// `CreateNetwork`). A name another network has, or one our networks
    /// cannot take, leaves the network as it is: false then.
    pub fn rename_network(&self, id: &str, name: &str) -> ApiResult<bool> {
        if !crate::model::validate::valid_name(name) || crate::drivers::predefined(name).is_some() {
            return Ok(false);
        }
        let (rev, renamed) = self.commit_with(|snap| {
            let Some(net) = snap.networks.get(id) else {
                return Err(ApiError::NotFound(format!("network {id} not found")));
            };
            if net.name == name || snap.networks.values().any(|n| n.name == name) {
                return Ok((Txn::default(), net.name == name));
            }
            let claim = if net.is_cluster() {
                model::CLUSTER_NETWORKS_CLAIM
            } else {
                model::NETWORKS_CLAIM
            };
            let mut net = net.clone();
            net.name = name.to_string();
            let mut t = Txn::default();
            t.unchanged(claim, snap.rev_of(claim))
                .put(claim, net.id.clone().into_bytes())
                .unchanged(net.key(), snap.rev_of(&net.key()))
                .put(net.key(), json(&net)?);
            Ok((t, true))
        })?;
        self.applied(rev, &[])?;
        if renamed {
            info!(network = %id, %name, "network named as in Docker");
        }
        Ok(renamed)
    }
}

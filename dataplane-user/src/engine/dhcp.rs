//! `--ipam-driver dhcp`: each endpoint's address is a lease from the DHCP
//! server of the LAN its macvlan (or VLAN) network is on. The client runs
//! on the endpoint's own interface inside the sandbox, with the endpoint's
//! MAC and a client identifier made from it (`crate::dhcp`).
//!
//! The lease is part of the endpoint's record: `run` (and `connect`)
//! commit the endpoint without an address, wait for the reconciler to make
//! its link, obtain the lease there and commit it, and the reconciler then
//! puts the address on the link. A background loop renews each lease at
//! T1 (unicast to its server) and rebinds at T2 (broadcast), on the
//! store's copy, so a restarted daemon carries on where the last one was;
//! a lease that runs out, or that the server refuses, takes the address
//! away (`lost` says why). `rm` and `disconnect` send a RELEASE.
//!
//! Lease times are in wall-clock seconds since the epoch (saturating), the
//! only clock that means the same to the daemon after a restart.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::anyhow;
use tracing::{info, warn};

use super::{json, Engine, Snapshot, APPLY_TIMEOUT};
use crate::{
    api::error::{ApiError, ApiResult},
    dhcp::{self, DhcpError, Due, Identity, Lease},
    model::{self, Container, Endpoint, EndpointLease, Network, Pending},
    store::{StoreError, Txn},
};

/// How long `run` waits for a DHCP server before it fails.
pub const OBTAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long one renewal or rebinding attempt waits for an answer.
const EXTEND_LIMIT: Duration = Duration::from_secs(2);
/// How often the loop looks at the leases.
const TICK: Duration = Duration::from_secs(1);
/// How often an endpoint that lost its lease asks for a new one, and how
/// long each attempt waits.
const REACQUIRE_EVERY: u64 = 10;
const REACQUIRE_LIMIT: Duration = Duration::from_secs(3);

/// The wall clock in seconds (0 before the epoch).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn identity(ep: &Endpoint, c: &Container) -> Identity {
    Identity::new(ep.mac.0, Some(c.hostname.clone()))
}

fn segment(net: &Network) -> String {
    net.macvlan
        .as_ref()
        .map_or_else(String::new, model::Macvlan::segment)
}

/// A DHCP socket on `ep`'s interface inside `c`'s sandbox.
fn socket(ep: &Endpoint, c: &Container) -> anyhow::Result<std::net::UdpSocket> {
    dhcp::socket_in(Path::new(&c.sandbox_key()), &ep.ifname)
}

/// [`socket`], failing as an exchange does.
fn client_socket(ep: &Endpoint, c: &Container) -> Result<std::net::UdpSocket, DhcpError> {
    socket(ep, c).map_err(|e| DhcpError::Io(std::io::Error::other(format!("{e:#}"))))
}

impl Engine {
    /// The first lease of each endpoint of container `cid` that has no
    /// address yet (a run's or an attachment's, on a DHCP network).
    pub(super) fn lease_new_endpoints(&self, cid: &str, pending: &Pending) -> ApiResult<()> {
        for ep in self.snapshot().endpoints_of_container(cid) {
            if ep.lease.is_none() && !ep.has_address() {
                self.lease_endpoint(&ep.id, pending)?;
            }
        }
        Ok(())
    }

    /// Obtains the first lease of endpoint `ep_id` (whose link the
    /// reconciler made) and commits it, adding its address's claim to
    /// `pending` so that a failure later in the operation gives it back.
    pub(super) fn lease_endpoint(&self, ep_id: &str, pending: &Pending) -> ApiResult<()> {
        let snap = self.snapshot();
        let ep = snap
            .endpoints
            .get(ep_id)
            .ok_or_else(|| ApiError::Conflict("the endpoint went away while it started".into()))?;
        let (Some(net), Some(c)) = (
            snap.networks.get(&ep.network_id),
            snap.containers.get(&ep.container_id),
        ) else {
            return Err(ApiError::Conflict(
                "the network or container went away while it started".into(),
            ));
        };
        let no_address = |e: String| {
            ApiError::Conflict(format!(
                "no address for {} on network {} ({}): {e}",
                c.name,
                net.name,
                segment(net)
            ))
        };
        let sock = socket(ep, c).map_err(|e| no_address(format!("{e:#}")))?;
        let id = identity(ep, c);
        let lease =
            dhcp::obtain(&sock, &id, OBTAIN_LIMIT, now()).map_err(|e| no_address(e.to_string()))?;
        if !net.subnet.contains(lease.ip) {
            let _ = dhcp::send_release(&sock, &id, &lease);
            return Err(no_address(format!(
                "the DHCP server {} offered {}, outside the network's subnet {}",
                lease.server, lease.ip, net.subnet
            )));
        }
        info!(container = %c.name, ip = %lease.ip, server = %lease.server, secs = lease.lease_secs, "DHCP lease obtained");
        let r = self.commit_lease(&snap, ep, net, lease.clone(), Some(pending));
        if r.is_err() {
            let _ = dhcp::send_release(&sock, &id, &lease);
        }
        r
    }

    /// Commits `lease` as `ep`'s (its address and claim), then waits for
    /// the reconciler to put the address on the link.
    fn commit_lease(
        &self,
        snap: &Snapshot,
        ep: &Endpoint,
        net: &Network,
        lease: Lease,
        pending: Option<&Pending>,
    ) -> ApiResult<()> {
        let mut new = ep.clone();
        new.ip = lease.ip;
        new.lease = Some(EndpointLease {
            lease,
            lost: String::new(),
        });
        let (old_claim, claim) = (
            model::endpoint_claim(net, ep),
            model::endpoint_claim(net, &new),
        );
        let mut t = Txn::default();
        t.unchanged(ep.key(), snap.rev_of(&ep.key()))
            .put(ep.key(), json(&new)?);
        if old_claim != claim {
            t.delete(old_claim)
                .absent(claim.clone())
                .put(claim.clone(), ep.id.clone().into_bytes());
        }
        if let Some(p) = pending {
            let mut p = p.clone();
            p.keys.push(claim);
            t.put(p.key(), json(&p)?);
        }
        let rev = self.store.commit(t).map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::Conflict(format!(
                "the DHCP server gave {} an address another endpoint of network {} holds, or the endpoint changed meanwhile",
                new.ip, net.name
            )),
            e => e.into(),
        })?;
        match self.applied(rev, &[ep.key()])? {
            None => Ok(()),
            Some(problem) => Err(ApiError::Internal(anyhow!(
                "putting the leased address {} on {}: {problem}",
                new.ip,
                ep.ifname
            ))),
        }
    }

    /// Takes `ep`'s address away (its lease ran out or was refused).
    fn lose_lease(&self, snap: &Snapshot, ep: &Endpoint, net: &Network, why: String) {
        let name = snap
            .containers
            .get(&ep.container_id)
            .map_or("?", |c| c.name.as_str());
        warn!(container = %name, network = %net.name, ip = %ep.ip, "{why}: the address is taken away");
        let mut new = ep.clone();
        new.ip = Ipv4Addr::UNSPECIFIED;
        if let Some(l) = &mut new.lease {
            l.lost = why;
        }
        let mut t = Txn::default();
        t.unchanged(ep.key(), snap.rev_of(&ep.key()))
            .delete(model::endpoint_claim(net, ep))
            .put(model::endpoint_claim(net, &new), ep.id.clone().into_bytes());
        match json(&new).map(|v| t.put(ep.key(), v)) {
            Ok(_) => match self.store.commit(t) {
                Ok(rev) => {
                    self.shared.cached.wait(rev, APPLY_TIMEOUT);
                }
                Err(e) => warn!(container = %name, "recording the lost lease: {e:#}"),
            },
            Err(e) => warn!("{e}"),
        }
    }

    /// Sends a RELEASE for every live lease of `eps` (best effort: the
    /// server takes the address back at the lease's end otherwise).
    pub(super) fn release_leases(&self, snap: &Snapshot, eps: &[&Endpoint]) {
        for ep in eps {
            let Some(l) = ep.lease.as_ref().filter(|l| l.lost.is_empty()) else {
                continue;
            };
            let Some(c) = snap.containers.get(&ep.container_id) else {
                continue;
            };
            let sent = socket(ep, c).and_then(|s| {
                dhcp::send_release(&s, &identity(ep, c), &l.lease).map_err(anyhow::Error::from)
            });
            match sent {
                Ok(()) => {
                    info!(container = %c.name, ip = %l.lease.ip, server = %l.lease.server, "DHCP lease released")
                }
                Err(e) => {
                    warn!(container = %c.name, ip = %l.lease.ip, "releasing the DHCP lease: {e:#}")
                }
            }
        }
    }

    /// Starts the loop that renews and rebinds the leases.
    pub(super) fn start_dhcp(self: &Arc<Self>) -> anyhow::Result<()> {
        let engine = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("dhcp".into())
            .spawn(move || {
                let mut retry_at = HashMap::new();
                while let Some(e) = engine.upgrade() {
                    e.tend_leases(&mut retry_at, now());
                    drop(e);
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(())
    }

    /// A new lease for `ep`, whose lease was lost, tried every
    /// [`REACQUIRE_EVERY`] seconds (a DHCP client in INIT again).
    fn reacquire(
        &self,
        snap: &Snapshot,
        ep: &Endpoint,
        retry_at: &mut HashMap<String, u64>,
        now: u64,
    ) {
        if retry_at.get(&ep.id).is_some_and(|t| *t > now) {
            return;
        }
        retry_at.insert(ep.id.clone(), now.saturating_add(REACQUIRE_EVERY));
        let (Some(net), Some(c)) = (
            snap.networks.get(&ep.network_id),
            snap.containers.get(&ep.container_id),
        ) else {
            return;
        };
        let got = client_socket(ep, c)
            .and_then(|s| dhcp::obtain(&s, &identity(ep, c), REACQUIRE_LIMIT, now));
        match got {
            Ok(lease) if net.subnet.contains(lease.ip) => {
                let ip = lease.ip;
                match self.commit_lease(snap, ep, net, lease, None) {
                    Ok(()) => {
                        retry_at.remove(&ep.id);
                        info!(container = %c.name, %ip, "DHCP lease obtained again after losing the last one");
                    }
                    Err(e) => warn!(container = %c.name, "recording the new lease: {e}"),
                }
            }
            Ok(lease) => {
                warn!(container = %c.name, ip = %lease.ip, "the DHCP server offered an address outside {}", net.subnet)
            }
            Err(_) => {}
        }
    }

    /// One look at every lease at `now`: renews those past T1, rebinds
    /// those past T2, takes away those past their end. A failed attempt is
    /// tried again after half the time left before the next step (RFC
    /// 2131 §4.4.5), at least a second and at most a minute later.
    fn tend_leases(&self, retry_at: &mut HashMap<String, u64>, now: u64) {
        let snap = self.snapshot();
        retry_at.retain(|id, _| snap.endpoints.contains_key(id));
        for ep in snap.endpoints.values() {
            let Some(l) = ep.lease.as_ref() else {
                continue;
            };
            if !l.lost.is_empty() {
                self.reacquire(&snap, ep, retry_at, now);
                continue;
            }
            let due = l.lease.due(now);
            if matches!(due, Due::Bound { .. }) || retry_at.get(&ep.id).is_some_and(|t| *t > now) {
                continue;
            }
            let (Some(net), Some(c)) = (
                snap.networks.get(&ep.network_id),
                snap.containers.get(&ep.container_id),
            ) else {
                continue;
            };
            let (rebind, until) = match due {
                Due::Expired => {
                    self.lose_lease(
                        &snap,
                        ep,
                        net,
                        format!(
                            "the DHCP lease of {} ran out before a server renewed it",
                            l.lease.ip
                        ),
                    );
                    continue;
                }
                Due::Renew { until } => (false, until),
                Due::Rebind { until } => (true, until),
                Due::Bound { .. } => continue,
            };
            let r = client_socket(ep, c).and_then(|s| {
                dhcp::extend(&s, &identity(ep, c), &l.lease, rebind, EXTEND_LIMIT, now)
            });
            match r {
                Ok(new) if new.ip == l.lease.ip => {
                    retry_at.remove(&ep.id);
                    let secs = new.lease_secs;
                    match self.commit_lease(&snap, ep, net, new, None) {
                        Ok(()) => {
                            info!(container = %c.name, ip = %l.lease.ip, secs, rebind, "DHCP lease extended")
                        }
                        Err(e) => warn!(container = %c.name, "recording the extended lease: {e}"),
                    }
                }
                Ok(new) => self.lose_lease(
                    &snap,
                    ep,
                    net,
                    format!(
                        "the DHCP server moved {} to {} on renewal",
                        l.lease.ip, new.ip
                    ),
                ),
                Err(DhcpError::Nak { server, message }) => self.lose_lease(
                    &snap,
                    ep,
                    net,
                    format!(
                        "the DHCP server {server} refused to extend the lease of {}{}",
                        l.lease.ip,
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    ),
                ),
                Err(e) => {
                    let wait = (until.saturating_sub(now) / 2).clamp(1, 60);
                    warn!(container = %c.name, ip = %l.lease.ip, rebind, "extending the DHCP lease: {e}; again in {wait}s");
                    retry_at.insert(ep.id.clone(), now.saturating_add(wait));
                }
            }
        }
    }
}

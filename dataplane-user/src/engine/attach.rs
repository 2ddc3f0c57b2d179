//! Attachments: sandboxes another runtime owns (a Docker endpoint, a CNI
//! runtime's container) on one of our networks. The Docker plugin and the
//! CNI plugin are front doors to these operations.
//!
//! An attachment is an ordinary container record without a process, marked
//! [`External`]: the reconciler gives its endpoint the same veth, program,
//! map entries, published ports and conntrack as any other, but never
//! creates, enters or deletes the runtime's namespace. With a namespace
//! (CNI), the veth's peer is created in it and configured; without one
//! (Docker), the peer is left in the daemon's namespace for Docker to move
//! and configure from what the driver answered.
//!
//! `(runtime, id)` names an attachment uniquely: a claim key guards it, so
//! two racing ADDs of one container cannot both attach it.

use anyhow::anyhow;
use tracing::info;

use super::{json, Engine, APPLY_TIMEOUT};
use super::{NetRef, Snapshot};
use crate::{
    api::{
        error::{bad, ApiError, ApiResult},
        Attach, Attachment, PortMapping,
    },
    model::{self, validate, Container, External, Mac, PortBinding, Runtime},
    ports,
    store::Txn,
};

/// The longest runtime id taken (CNI container ids are 64 hex digits, plus
/// `:` and an interface name).
const MAX_ID: usize = 200;

/// Whether `id` may name an attachment: it becomes part of a store key.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// Whether `name` may name a link (IFNAMSIZ, no `/`, no space).
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// The default name of an attachment: `<runtime>-` and the first 12
/// characters of the runtime's id (the container id for CNI).
fn default_name(runtime: Runtime, id: &str) -> String {
    let short: String = id
        .split(':')
        .next()
        .unwrap_or(id)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("{runtime}-{short}")
}

/// The attachment of container `c` as the runtime sees it.
fn describe(snap: &Snapshot, c: &Container) -> Option<Attachment> {
    let x = c.external.as_ref()?;
    let ep = snap.endpoints_of_container(&c.id).into_iter().next()?;
    let net = snap.networks.get(&ep.network_id)?;
    Some(Attachment {
        runtime: x.runtime,
        id: x.id.clone(),
        container_id: c.id.clone(),
        endpoint_id: ep.id.clone(),
        name: c.name.clone(),
        network: net.name.clone(),
        network_id: net.id.clone(),
        ip: ep.ip,
        prefix: net.subnet.prefix(),
        gateway: net.gateway,
        internal: net.internal,
        mac: ep.mac,
        host_ifname: ep.host_ifname.clone(),
        peer: x.peer.clone(),
        ifname: ep.ifname.clone(),
        netns: x.netns_path.clone(),
        ports: c.ports.clone(),
    })
}

/// The container record of attachment `(runtime, id)`.
fn find<'a>(snap: &'a Snapshot, runtime: Runtime, id: &str) -> Option<&'a Container> {
    snap.containers.values().find(|c| {
        c.external
            .as_ref()
            .is_some_and(|x| x.runtime == runtime && x.id == id)
    })
}

/// How an attachment's ports are held: a CNI runtime (Podman) may hold them
/// too ([`ports::Sharing::WithRuntime`]).
pub(super) fn sharing(runtime: Runtime) -> ports::Sharing {
    match runtime {
        Runtime::Cni => ports::Sharing::WithRuntime,
        Runtime::Docker => ports::Sharing::Exclusive,
    }
}

fn port_requests(ports: &[PortMapping]) -> ApiResult<Vec<ports::PortRequest>> {
    ports.iter().map(|p| p.to_request().map_err(bad)).collect()
}

impl Engine {
    /// Attaches a sandbox of another runtime to one of our networks (the
    /// Docker plugin's `CreateEndpoint`, the CNI plugin's `ADD`). Asking
    /// again for an attachment that exists returns it as it is.
    pub fn attach(&self, req: Attach) -> ApiResult<Attachment> {
        if !valid_id(&req.id) {
            return Err(bad(format!(
                "invalid attachment id {:?}: 1 to {MAX_ID} letters, digits, '_', '.', ':' or '-'",
                req.id
            )));
        }
        if let Some(a) = self.attachment(req.runtime, &req.id) {
            return Ok(a);
        }
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| default_name(req.runtime, &req.id));
        if !validate::valid_name(&name) {
            return Err(bad(format!("invalid container name {name:?}")));
        }
        let netns_path = match (&req.netns, req.runtime) {
            (Some(p), _) => {
                let path = std::path::Path::new(p);
                if !path.is_absolute() {
                    return Err(bad(format!(
                        "invalid network namespace {p:?}: an absolute path is needed"
                    )));
                }
                if !path.exists() {
                    return Err(bad(format!("network namespace {p} does not exist")));
                }
                p.clone()
            }
            (None, Runtime::Cni) => {
                return Err(bad(
                    "a CNI attachment needs the runtime's network namespace",
                ))
            }
            (None, Runtime::Docker) => String::new(),
        };
        let ifname = req.ifname.clone().unwrap_or_else(|| "eth0".into());
        if !valid_ifname(&ifname) {
            return Err(bad(format!(
                "invalid interface name {ifname:?}: 1 to 15 characters, no '/', ':' or space"
            )));
        }
        let ip = req
            .ip
            .as_deref()
            .map(|s| validate::parse_ip(s, "ip"))
            .transpose()?;
        let mac = req
            .mac
            .as_deref()
            .map(|s| s.parse::<Mac>().map_err(bad))
            .transpose()?;
        if mac.is_some_and(|m| m.0[0] & 1 == 1 || m.0 == [0; 6]) {
            return Err(bad(format!(
                "invalid MAC address {}: a unicast address is needed",
                req.mac.as_deref().unwrap_or_default()
            )));
        }
        let aliases = validate::check_aliases(&req.aliases)?;
        let port_reqs = port_requests(&req.ports)?;
        let hostname = if validate::valid_hostname(&name) {
            name.clone()
        } else {
            default_name(req.runtime, &req.id)
        };
        let cid = model::new_id();
        let claim_key = model::attachment_claim(req.runtime, &req.id);
        let (rev, (ctr, pending)) = self
            .commit_with(|snap| {
                if find(snap, req.runtime, &req.id).is_some() {
                    return Err(ApiError::Conflict(format!(
                        "{} {} is being attached by another call",
                        req.runtime, req.id
                    )));
                }
                if snap.containers.values().any(|c| c.name == name) {
                    return Err(ApiError::Conflict(format!(
                        "container name {name} is already in use"
                    )));
                }
                let nid = match snap.network_ref(&req.network)? {
                    NetRef::Stored(nid) => nid,
                    NetRef::Predefined(d) => {
                        return Err(bad(format!(
                        "cannot attach to network {d}: attachments need a network with addresses"
                    )))
                    }
                };
                let net = &snap.networks[&nid];
                if !port_reqs.is_empty() && net.internal {
                    return Err(bad(format!(
                        "cannot publish ports on internal network {}",
                        net.name
                    )));
                }
                let taken = snap.taken_ports();
                ports::precheck(&port_reqs, &taken)?;
                let mut t = Txn::default();
                // An address Docker's IPAM holds for this endpoint is adopted.
                let ip = self.allocate_adopting(snap, net, ip, &mut t)?;
                let mut ep = self.new_endpoint(
                    net,
                    &cid,
                    ip,
                    ifname.clone(),
                    aliases.clone(),
                    (&name, &hostname),
                );
                if let Some(m) = mac {
                    ep.mac = m;
                }
                drop(self.shared.take_reservations(&cid));
                let (bindings, reserved) =
                    ports::allocate_shared(&port_reqs, &taken, sharing(req.runtime))?;
                let ctr = Container {
                    id: cid.clone(),
                    name: name.clone(),
                    hostname: hostname.clone(),
                    cmd: Vec::new(),
                    netns: String::new(),
                    pid: None,
                    log_path: String::new(),
                    created: model::now_rfc3339(),
                    dns: Vec::new(),
                    links: Vec::new(),
                    env: Vec::new(),
                    exposed: Vec::new(),
                    ports: bindings,
                    publish: Vec::new(),
                    publish_all: false,
                    network_mode: None,
                    task: None,
                    external: Some(External {
                        runtime: req.runtime,
                        id: req.id.clone(),
                        netns_path: netns_path.clone(),
                        peer: if req.runtime == Runtime::Docker {
                            format!("dpd{}", &ep.id[..12])
                        } else {
                            String::new()
                        },
                    }),
                    labels: Default::default(),
                };
                let ip_claim = model::ip_claim(net, ep.ip);
                let keys = vec![
                    ctr.key(),
                    model::name_claim(&name),
                    claim_key.clone(),
                    ep.key(),
                    ip_claim.clone(),
                ];
                let pending = model::Pending {
                    op: cid.clone(),
                    container_id: cid.clone(),
                    netns: String::new(),
                    keys,
                };
                t.absent(model::name_claim(&name))
                    .put(model::name_claim(&name), cid.clone().into_bytes())
                    .absent(claim_key.clone())
                    .put(claim_key.clone(), cid.clone().into_bytes())
                    .unchanged(net.key(), snap.rev_of(&net.key()))
                    .unchanged(ip_claim.clone(), snap.hold_rev(&ip_claim))
                    .put(ip_claim, ep.id.clone().into_bytes())
                    .put(model::net_use_claim(net), ep.id.clone().into_bytes())
                    .put(ep.key(), json(&ep)?);
                if !ctr.ports.is_empty() {
                    t.unchanged(model::PORTS_CLAIM, snap.rev_of(model::PORTS_CLAIM))
                        .put(model::PORTS_CLAIM, cid.clone().into_bytes());
                }
                t.put(ctr.key(), json(&ctr)?)
                    .put(pending.key(), json(&pending)?);
                self.shared.hand_off(&cid, reserved);
                Ok((t, (ctr, pending)))
            })
            .inspect_err(|_| drop(self.shared.take_reservations(&cid)))?;
        let mut check = vec![ctr.key()];
        check.extend(
            self.snapshot()
                .endpoints_of_container(&cid)
                .iter()
                .map(|e| e.key()),
        );
        let fail = |e: ApiError| {
            self.roll_back(&pending);
            drop(self.shared.take_reservations(&cid));
            Err(e)
        };
        match self.applied(rev, &check) {
            Ok(None) => {}
            Ok(Some(problem)) => {
                return fail(ApiError::Internal(anyhow!("attaching {name}: {problem}")))
            }
            Err(e) => return fail(e),
        }
        // A DHCP network's address, on the link just made in the runtime's
        // namespace.
        if let Err(e) = self.lease_new_endpoints(&cid, &pending) {
            return fail(e);
        }
        crate::fault::point("attach-before-commit");
        let mut t = Txn::default();
        t.delete(pending.key());
        let rev = self.store.commit(t)?;
        self.shared.cached.wait(rev, APPLY_TIMEOUT);
        info!(container = %name, runtime = %req.runtime, "attached");
        self.attachment(req.runtime, &req.id).ok_or_else(|| {
            ApiError::Conflict(format!(
                "{} {} was detached while it was attached",
                req.runtime, req.id
            ))
        })
    }

    /// The attachment `(runtime, id)`, if there is one.
    pub fn attachment(&self, runtime: Runtime, id: &str) -> Option<Attachment> {
        let snap = self.snapshot();
        find(&snap, runtime, id).and_then(|c| describe(&snap, c))
    }

    /// Every attachment of `runtime`.
    pub fn attachments(&self, runtime: Runtime) -> Vec<Attachment> {
        let snap = self.snapshot();
        snap.containers
            .values()
            .filter(|c| c.runtime() == Some(runtime))
            .filter_map(|c| describe(&snap, c))
            .collect()
    }

    /// Removes attachment `(runtime, id)`: its endpoint, address, ports and
    /// veth (never the runtime's namespace). False when there was none.
    pub fn detach(&self, runtime: Runtime, id: &str) -> ApiResult<bool> {
        let claim_key = model::attachment_claim(runtime, id);
        {
            let snap = self.snapshot();
            if let Some(c) = find(&snap, runtime, id) {
                self.release_leases(&snap, &snap.endpoints_of_container(&c.id));
            }
        }
        let (rev, found) = self.commit_with(|snap| {
            let Some(c) = find(snap, runtime, id) else {
                let mut t = Txn::default();
                if snap.rev_of(&claim_key).is_some() {
                    // A claim whose record went (a failed attach rolled
                    // back half-way): take it too.
                    t.unchanged(claim_key.clone(), snap.rev_of(&claim_key))
                        .delete(claim_key.clone());
                }
                return Ok((t, None));
            };
            let mut t = Txn::default();
            t.unchanged(c.key(), snap.rev_of(&c.key()))
                .delete(c.key())
                .delete(model::name_claim(&c.name))
                .delete(claim_key.clone());
            for e in snap.endpoints_of_container(&c.id) {
                t.delete(e.key()).delete(snap.ip_claim_of(e));
            }
            for (k, p) in &snap.pending {
                if p.container_id == c.id {
                    t.delete(format!("{}{k}", model::PENDING));
                }
            }
            Ok((t, Some(c.name.clone())))
        })?;
        self.applied(rev, &[])?;
        if let Some(name) = &found {
            info!(container = %name, %runtime, "detached");
        }
        Ok(found.is_some())
    }

    /// Publishes `ports` for attachment `(runtime, id)` in place of what it
    /// published before (Docker's `ProgramExternalConnectivity`; an empty
    /// list is its `RevokeExternalConnectivity`). Returns the bindings with
    /// the host ports chosen.
    pub fn set_ports(
        &self,
        runtime: Runtime,
        id: &str,
        ports: Vec<PortMapping>,
    ) -> ApiResult<Vec<PortBinding>> {
        let reqs = port_requests(&ports)?;
        // A changed set goes through none: the reconciler lets go of the
        // old ports' sockets before the new ones are bound (a port kept
        // would otherwise collide with itself).
        if !reqs.is_empty()
            && self
                .attachment(runtime, id)
                .is_some_and(|a| !a.ports.is_empty())
        {
            self.set_ports(runtime, id, Vec::new())?;
        }
        let mut cid = String::new();
        let (rev, bindings) = self
            .commit_with(|snap| {
                let c = find(snap, runtime, id)
                    .ok_or_else(|| ApiError::NotFound(format!("no {runtime} attachment {id}")))?;
                cid = c.id.clone();
                if !reqs.is_empty()
                    && snap
                        .endpoints_of_container(&c.id)
                        .iter()
                        .filter_map(|e| snap.networks.get(&e.network_id))
                        .any(|n| n.internal)
                {
                    return Err(bad("cannot publish ports on an internal network"));
                }
                // Its own bindings do not collide with themselves.
                let mut others = snap.clone();
                if let Some(me) = others.containers.get_mut(&c.id) {
                    me.ports.clear();
                }
                let taken = others.taken_ports();
                ports::precheck(&reqs, &taken)?;
                drop(self.shared.take_reservations(&c.id));
                let (bindings, reserved) = ports::allocate_shared(&reqs, &taken, sharing(runtime))?;
                let mut ctr = c.clone();
                ctr.ports = bindings.clone();
                let mut t = Txn::default();
                t.unchanged(c.key(), snap.rev_of(&c.key()))
                    .unchanged(model::PORTS_CLAIM, snap.rev_of(model::PORTS_CLAIM))
                    .put(model::PORTS_CLAIM, c.id.clone().into_bytes())
                    .put(ctr.key(), json(&ctr)?);
                self.shared.hand_off(&c.id, reserved);
                Ok((t, bindings))
            })
            .inspect_err(|_| {
                if !cid.is_empty() {
                    drop(self.shared.take_reservations(&cid));
                }
            })?;
        if let Some(problem) = self.applied(rev, &[])? {
            return Err(ApiError::Internal(anyhow!("publishing ports: {problem}")));
        }
        Ok(bindings)
    }

    /// Records the namespace Docker joined attachment `(runtime, id)` to
    /// (`Join`'s `SandboxKey`).
    pub fn set_netns(&self, runtime: Runtime, id: &str, path: &str) -> ApiResult<()> {
        if !std::path::Path::new(path).is_absolute() {
            return Err(bad(format!(
                "invalid network namespace {path:?}: an absolute path is needed"
            )));
        }
        let (rev, ()) = self.commit_with(|snap| {
            let c = find(snap, runtime, id)
                .ok_or_else(|| ApiError::NotFound(format!("no {runtime} attachment {id}")))?;
            let mut ctr = c.clone();
            let x = ctr.external.as_mut().expect("found by its runtime");
            if x.netns_path == path {
                return Ok((Txn::default(), ()));
            }
            x.netns_path = path.to_string();
            let mut t = Txn::default();
            t.unchanged(c.key(), snap.rev_of(&c.key()))
                .put(ctr.key(), json(&ctr)?);
            Ok((t, ()))
        })?;
        self.applied(rev, &[])?;
        Ok(())
    }
}

/// What `dataplane rm` says of an attachment: its runtime removes it.
pub fn refuse_rm(c: &Container) -> ApiResult<()> {
    match c.runtime() {
        Some(r) => Err(ApiError::Conflict(format!(
            "container {} is managed by {r}: remove it there (its runtime detaches it)",
            c.name
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_interface_names_are_checked() {
        assert!(valid_id("0123abcd:eth0"));
        assert!(valid_id(&"a".repeat(MAX_ID)));
        for bad in ["", "a/b", "a b", "x\n", &"a".repeat(MAX_ID + 1)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("net1"));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "sixteen-chars-xx"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn default_names_are_runtime_and_short_id() {
        assert_eq!(
            default_name(Runtime::Cni, "0123456789abcdef0123:eth0"),
            "cni-0123456789ab"
        );
        assert_eq!(default_name(Runtime::Docker, "ab-cd"), "docker-abcd");
    }

    #[test]
    fn port_mappings_become_publish_requests() {
        let m = |host_port, host_port_end| PortMapping {
            proto: model::Proto::Tcp,
            host_ip: None,
            host_port,
            host_port_end,
            container_port: 80,
        };
        assert_eq!(m(0, 0).to_request().unwrap().host_ports, None);
        assert_eq!(
            m(8080, 0).to_request().unwrap().host_ports,
            Some((8080, 8080))
        );
        assert_eq!(
            m(8000, 8010).to_request().unwrap().host_ports,
            Some((8000, 8010))
        );
        assert!(m(0, 10).to_request().is_err());
        let mut zero = m(80, 0);
        zero.container_port = 0;
        assert!(zero.to_request().is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let ok = r#"{"runtime":"cni","id":"x:eth0","network":"n","netns":"/proc/1/ns/net"}"#;
        assert!(serde_json::from_str::<Attach>(ok).is_ok());
        let typo = ok.replace("\"netns\"", "\"net_ns\"");
        assert!(serde_json::from_str::<Attach>(&typo).is_err());
        let bad_rt = ok.replace("cni", "rkt");
        assert!(serde_json::from_str::<Attach>(&bad_rt).is_err());
    }
}

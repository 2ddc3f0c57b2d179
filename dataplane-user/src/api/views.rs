//! The Docker-shaped JSON the API answers with, built from a snapshot of
//! the model and the reconciler's status (what is not in place, and why).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{error::ApiResult, filters::Filters, PublishedPort};
use crate::{
    drivers,
    engine::{NetRef, Snapshot, Status},
    host::process_alive,
    model::Container,
    ports,
};

/// The problems of the objects under `keys`, as `inspect` lists them.
fn problems(status: &Status, keys: &[String]) -> Value {
    Value::Array(
        keys.iter()
            .filter_map(|k| status.problems.get(k).map(|p| (k, p)))
            .map(|(k, p)| {
                json!({"Object": k, "What": p.what, "Error": p.error, "Attempts": p.attempts, "Since": p.since})
            })
            .collect(),
    )
}

fn state(snap: &Snapshot, c: &Container) -> (&'static str, bool) {
    if c.external.is_some() {
        // Another runtime's container: attached while its namespace is
        // there (or, for Docker, not joined yet).
        let s = if snap.is_pending(&c.id) {
            "created"
        } else if std::path::Path::new(&c.sandbox_key()).exists() {
            "running"
        } else {
            "exited"
        };
        return (s, s == "running");
    }
    let running = c.pid.is_some_and(process_alive);
    let s = if running {
        "running"
    } else if c.pid.is_none() || snap.is_pending(&c.id) {
        "created"
    } else {
        "exited"
    };
    (s, running)
}

fn container_networks(snap: &Snapshot, c: &Container) -> serde_json::Map<String, Value> {
    if let Some(mode) = &c.network_mode {
        let mut m = serde_json::Map::new();
        m.insert(
            mode.clone(),
            json!({"NetworkID": mode, "EndpointID": "", "Gateway": "", "IPAddress": "", "IPPrefixLen": 0, "MacAddress": ""}),
        );
        return m;
    }
    snap.endpoints_of_container(&c.id)
        .iter()
        .filter_map(|e| {
            let n = snap.networks.get(&e.network_id)?;
            let mut v = json!({
                "NetworkID": n.id, "EndpointID": e.id, "Gateway": n.gateway.to_string(),
                "IPAddress": if e.has_address() { e.ip.to_string() } else { String::new() },
                "IPPrefixLen": n.subnet.prefix(),
                "MacAddress": e.mac.to_string(), "InterfaceName": e.ifname,
                "HostInterfaceName": e.host_ifname,
                "Aliases": aliases(n, c, &e.aliases),
            });
            if let Some(l) = &e.lease {
                let d = &l.lease;
                if let Some(r) = d.router {
                    v["Gateway"] = json!(r.to_string());
                }
                if d.prefix != 0 {
                    v["IPPrefixLen"] = json!(d.prefix);
                }
                v["DHCP"] = json!({
                    "State": if l.lost.is_empty() { "bound" } else { "lost" },
                    "Lost": l.lost, "Address": d.ip.to_string(), "Server": d.server.to_string(),
                    "Router": d.router.map(|r| r.to_string()),
                    "DNS": d.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "LeaseSeconds": d.lease_secs, "ObtainedAt": d.obtained_at,
                    "RenewAt": d.renew_at(), "RebindAt": d.rebind_at(), "ExpiresAt": d.expires_at(),
                });
            }
            Some((n.name.clone(), v))
        })
        .collect()
}

/// The names a container answers to on network `n` besides its own, as
/// Docker's inspect lists them: the aliases and the short id (none on the
/// default `bridge`, which has no names).
fn aliases(n: &crate::model::Network, c: &Container, own: &[String]) -> Value {
    if !n.user_defined() {
        return Value::Null;
    }
    let mut all: Vec<String> = own.to_vec();
    all.push(c.id.chars().take(12).collect());
    json!(all)
}

/// Docker's `Status` column: `Up 5 minutes`, `Created`, `Exited`.
fn status_text(state: &str, created: &str, now: u64) -> String {
    match (state, crate::model::epoch_of_rfc3339(created)) {
        ("running", Some(t)) => format!("Up {}", human_duration(now.saturating_sub(t))),
        ("running", None) => "Up".into(),
        ("created", _) => "Created".into(),
        _ => "Exited".into(),
    }
}

/// Docker's human durations (`Less than a second`, `5 seconds`, `About a
/// minute`, `3 hours`, `2 days`, `3 weeks`, `4 months`, `2 years`).
fn human_duration(secs: u64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..60 => format!("{secs} seconds"),
        60..120 => "About a minute".into(),
        120..3600 => format!("{m} minutes"),
        3600..7200 => "About an hour".into(),
        7200..172_800 => format!("{h} hours"),
        172_800..1_209_600 => format!("{d} days"),
        1_209_600..5_184_000 => format!("{} weeks", d / 7),
        5_184_000..63_072_000 => format!("{} months", d / 30),
        _ => format!("{} years", d / 365),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who runs the container: this daemon, or the runtime of an attachment.
fn runtime_of(c: &Container) -> &'static str {
    c.runtime().map_or("dataplane", |r| r.as_str())
}

/// `ps`: the running containers (`all`: every one) that pass `f`
/// ([`super::filters::CONTAINER_KEYS`]). A `status` filter lists stopped
/// ones without `all`, as Docker does.
pub fn list_containers(snap: &Snapshot, all: bool, f: &Filters) -> Value {
    let now = now_secs();
    let all = all || f.has("status");
    let name_ok = f.name_matcher();
    Value::Array(
        snap.containers
            .values()
            .filter_map(|c| {
                let (state, running) = state(snap, c);
                let nets = container_networks(snap, c);
                let on_network = |want: &str| {
                    nets.iter()
                        .any(|(name, v)| name == want || v["NetworkID"].as_str() == Some(want))
                };
                let keep = (all || running)
                    && f.id(&c.id)
                    && name_ok(&c.name)
                    && f.any("network", on_network)
                    && f.any("status", |s| s == state)
                    && f.any("runtime", |r| r == runtime_of(c))
                    && f.labels(&c.labels);
                keep.then(|| {
                    json!({
                        "Id": c.id, "Name": c.name, "Command": c.cmd.join(" "), "Created": c.created,
                        "State": state, "Status": status_text(state, &c.created, now),
                        "RunningFor": crate::model::epoch_of_rfc3339(&c.created)
                            .map(|t| format!("{} ago", human_duration(now.saturating_sub(t))))
                            .unwrap_or_default(),
                        "Networks": nets.keys().cloned().collect::<Vec<_>>(),
                        "Ports": ports::ps_ports(&c.exposed, &c.ports),
                        "Labels": c.labels,
                        "Runtime": runtime_of(c),
                    })
                })
            })
            .collect(),
    )
}

pub fn inspect_container(snap: &Snapshot, status: &Status, name: &str) -> ApiResult<Value> {
    let cid = snap.container_id(name)?;
    let c = &snap.containers[&cid];
    let (state, running) = state(snap, c);
    let mut keys = vec![c.key(), format!("dns/{cid}")];
    keys.extend(snap.endpoints_of_container(&cid).iter().map(|e| e.key()));
    let networks = container_networks(snap, c);
    // Docker fills the top-level addresses from the default `bridge`
    // network only (empty on every other).
    let default = networks.get("bridge");
    let top = |k: &str| default.map_or(json!(""), |n| n[k].clone());
    Ok(json!([{
        "Id": c.id, "Name": c.name, "Created": c.created,
        "Path": c.cmd.first().cloned().unwrap_or_default(), "Args": c.cmd.get(1..).unwrap_or_default(),
        "Runtime": runtime_of(c),
        "Attachment": c.external.as_ref().map(|x| json!({"Runtime": x.runtime, "ID": x.id, "Netns": x.netns_path, "Peer": x.peer})),
        "State": {"Status": state, "Running": running, "Pid": if running { c.pid.unwrap_or(0) } else { 0 }},
        "Config": {
            "Hostname": c.hostname, "Cmd": c.cmd, "Env": c.env, "Labels": c.labels,
            "ExposedPorts": ports::exposed_ports_json(&c.exposed, &c.ports),
        },
        "HostConfig": {
            "NetworkMode": c.network_mode.as_deref().unwrap_or("default"),
            "PortBindings": ports::host_config_port_bindings(&c.publish), "PublishAllPorts": c.publish_all,
        },
        "LogPath": c.log_path,
        "NetworkSettings": {
            "SandboxKey": c.sandbox_key(), "SandboxID": c.netns,
            "IPAddress": top("IPAddress"), "IPPrefixLen": default.map_or(json!(0), |n| n["IPPrefixLen"].clone()),
            "Gateway": top("Gateway"), "MacAddress": top("MacAddress"),
            "EndpointID": top("EndpointID"),
            "Ports": ports::network_settings_ports(&c.exposed, &c.ports),
            "Networks": networks,
        },
        "Problems": problems(status, &keys),
    }]))
}

/// `network ls`: the networks that pass `f` ([`super::filters::NETWORK_KEYS`]).
pub fn list_networks(snap: &Snapshot, f: &Filters) -> Value {
    let none = BTreeMap::new();
    let name_ok = f.name_matcher();
    let keep = |id: &str, name: &str, driver: &str, scope: &str, builtin: bool, labels| {
        f.id(id)
            && name_ok(name)
            && f.any("driver", |d| d == driver)
            && f.any("scope", |s| s == scope)
            && f.any("type", |t| t == if builtin { "builtin" } else { "custom" })
            && f.labels(labels)
    };
    let mut out: Vec<Value> = snap
        .networks
        .values()
        .filter(|n| {
            keep(
                &n.id,
                &n.name,
                &n.driver,
                scope(n),
                !n.user_defined(),
                &n.labels,
            )
        })
        .map(|n| {
            json!({
                "Name": n.name, "Id": n.id, "Driver": n.driver, "Scope": scope(n),
                "Internal": n.internal, "Attachable": n.attachable, "IPv6": false,
                "Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string(),
                "Created": n.created, "Labels": n.labels,
            })
        })
        .collect();
    for p in drivers::PREDEFINED {
        if keep(p, p, p, "local", true, &none) {
            out.push(json!({
                "Name": p, "Id": p, "Driver": p, "Scope": "local", "Internal": false,
                "Attachable": false, "IPv6": false, "Subnet": "", "Gateway": "", "Created": "",
                "Labels": {},
            }));
        }
    }
    Value::Array(out)
}

/// Docker's scope of a network: `swarm` for one every host shares.
fn scope(n: &crate::model::Network) -> &'static str {
    if n.is_cluster() {
        "swarm"
    } else {
        "local"
    }
}

pub fn inspect_network(snap: &Snapshot, status: &Status, name: &str) -> ApiResult<Value> {
    let id = match snap.network_ref(name)? {
        NetRef::Stored(id) => id,
        NetRef::Predefined(p) => {
            let containers: serde_json::Map<String, Value> = snap
                .containers
                .values()
                .filter(|c| c.network_mode.as_deref() == Some(p))
                .map(|c| {
                    (
                        c.id.clone(),
                        json!({"Name": c.name, "EndpointID": "", "MacAddress": "", "IPv4Address": "", "IPv6Address": ""}),
                    )
                })
                .collect();
            return Ok(json!([{
                "Name": p, "Id": p, "Created": "", "Scope": "local", "Driver": p,
                "EnableIPv6": false, "Internal": false, "Attachable": false,
                "IPAM": {"Driver": "default", "Options": {}, "Config": []},
                "Containers": containers, "Options": {}, "Labels": {}, "Problems": [],
            }]));
        }
    };
    let n = &snap.networks[&id];
    let mut config = json!({"Subnet": n.subnet.to_string(), "Gateway": n.gateway.to_string()});
    if let Some(r) = n.ip_range {
        config["IPRange"] = json!(r.to_string());
    }
    if !n.aux_addresses.is_empty() {
        config["AuxiliaryAddresses"] = json!(n
            .aux_addresses
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect::<BTreeMap<_, _>>());
    }
    let eps = snap.endpoints_of_network(&id);
    let mut containers: serde_json::Map<String, Value> = eps
        .iter()
        .filter_map(|e| {
            let c = snap.containers.get(&e.container_id)?;
            let mut v = json!({
                "Name": c.name, "EndpointID": e.id, "MacAddress": e.mac.to_string(),
                "IPv4Address": format!("{}/{}", e.ip, n.subnet.prefix()), "IPv6Address": "",
            });
            if n.is_cluster() {
                v["Host"] = json!(snap.node);
            }
            Some((c.id.clone(), v))
        })
        .collect();
    // The containers of the other hosts of a shared network.
    for e in snap.remote_endpoints_of_network(&id) {
        containers.insert(
            e.container_id.clone(),
            json!({
                "Name": e.container_name, "EndpointID": e.id, "MacAddress": e.mac.to_string(),
                "IPv4Address": format!("{}/{}", e.ip, n.subnet.prefix()), "IPv6Address": "",
                "Host": e.node,
            }),
        );
    }
    let mut keys = vec![n.key()];
    keys.extend(eps.iter().map(|e| e.key()));
    if n.is_cluster() {
        config["Blocks"] = json!(snap
            .blocks
            .get(&id)
            .into_iter()
            .flatten()
            .map(|(b, node)| json!({"Block": b.to_string(), "Host": node}))
            .collect::<Vec<_>>());
    }
    let mut options = json!(n.options);
    if n.is_cluster() {
        options["vni"] = json!(n.vni.to_string());
    }
    // A macvlan network's segment as the daemon understood it: Docker's
    // `parent=eth0.100` reads as parent eth0, VLAN 100.
    if let Some(m) = &n.macvlan {
        options["parent"] = json!(m.parent);
        options["macvlan_mode"] = json!(m.mode);
        if let Some(v) = m.vlan {
            options["vlan"] = json!(v.to_string());
        }
    }
    Ok(json!([{
        "Name": n.name, "Id": n.id, "Created": n.created, "Scope": scope(n), "Driver": n.driver,
        "EnableIPv6": false, "Internal": n.internal, "Attachable": n.attachable,
        "IPAM": {"Driver": if n.dhcp { "dhcp" } else { "default" }, "Options": {}, "Config": [config]},
        "Containers": containers, "Options": options, "Labels": n.labels,
        "Problems": problems(status, &keys),
    }]))
}

/// `node ls`: the hosts of the cluster, their underlay address, whether
/// their lease is alive, and how many containers each has on shared
/// networks.
pub fn list_nodes(snap: &Snapshot) -> Value {
    let mut out = Vec::new();
    for n in snap.nodes.values() {
        let ready = snap.alive.contains(&n.name);
        let containers = snap
            .endpoints
            .values()
            .chain(snap.remote.values())
            .filter(|e| e.node == n.name)
            .map(|e| e.container_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let since = match snap.down_since.get(&n.name) {
            Some((_, at)) if !ready => at.clone(),
            _ => String::new(),
        };
        out.push(json!({
            "Name": n.name, "Addr": n.addr.to_string(),
            "State": if ready { "ready" } else { "down" },
            "Since": since, "Joined": n.joined, "Containers": containers,
            "Self": n.name == snap.node,
        }));
    }
    Value::Array(out)
}

/// The container's published ports, as Docker's API lists them.
pub fn container_ports(snap: &Snapshot, name: &str) -> ApiResult<Vec<PublishedPort>> {
    let cid = snap.container_id(name)?;
    Ok(ports::api_ports(&snap.containers[&cid].ports))
}

pub fn logs(snap: &Snapshot, name: &str) -> ApiResult<String> {
    let cid = snap.container_id(name)?;
    let path = &snap.containers[&cid].log_path;
    Ok(std::fs::read_to_string(path).unwrap_or_default())
}

/// `service ls`.
pub fn list_services(snap: &Snapshot) -> Value {
    let out = snap
        .services
        .values()
        .map(|svc| {
            let tasks = snap.tasks_of(&svc.id);
            let live = tasks.iter().filter(|t| t.live()).count();
            json!({
                "ID": svc.id, "Name": svc.name, "Mode": "replicated",
                "Replicas": format!("{live}/{}", svc.replicas),
                "Network": snap.networks.get(&svc.network).map_or("", |n| n.name.as_str()),
                "EndpointMode": svc.endpoint_mode.as_str(),
                "VIP": svc.vip.map(|v| v.to_string()).unwrap_or_default(),
                "Ports": svc.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(out)
}

/// `service ps NAME`: which replica runs where, in what state.
pub fn service_tasks(snap: &Snapshot, name: &str) -> ApiResult<Value> {
    let sid = snap.service_id(name)?;
    let svc = &snap.services[&sid];
    let out = snap
        .tasks_of(&sid)
        .into_iter()
        .map(|t| {
            json!({
                "ID": t.id, "Name": format!("{}.{}", svc.name, t.replica),
                "Node": t.node.clone().unwrap_or_default(),
                "Placed": t.node.is_some(),
                "State": t.state.as_str(), "Since": t.since, "Message": t.message,
                "Container": t.container.clone().unwrap_or_default(),
                "IP": t.ip.map(|i| i.to_string()).unwrap_or_default(),
                "Restarts": t.restarts, "Live": t.live(),
            })
        })
        .collect();
    Ok(Value::Array(out))
}

/// `service inspect NAME` (without counters: the engine adds them).
pub fn inspect_service(snap: &Snapshot, name: &str) -> ApiResult<Value> {
    let sid = snap.service_id(name)?;
    let svc = &snap.services[&sid];
    let net = snap.networks.get(&svc.network);
    Ok(json!({
        "ID": svc.id, "Name": svc.name, "CreatedAt": svc.created, "Version": svc.version,
        "Spec": {
            "Replicas": svc.replicas, "Command": svc.cmd, "Env": svc.env,
            "Network": net.map_or("", |n| n.name.as_str()),
            "EndpointMode": svc.endpoint_mode.as_str(),
            "Ports": svc.ports.iter().map(|p| json!({
                "PublishedPort": p.published, "TargetPort": p.target,
                "Protocol": p.proto, "PublishMode": p.mode.as_str(),
            })).collect::<Vec<_>>(),
            "HealthCheck": svc.health.as_ref().map(|h| json!({
                "Cmd": h.cmd, "IntervalMs": h.interval_ms, "TimeoutMs": h.timeout_ms, "Retries": h.retries,
            })),
        },
        "Endpoint": {
            "VirtualIP": svc.vip.map(|v| v.to_string()),
            "Slot": svc.slot,
        },
        "Tasks": service_tasks(snap, name)?,
    }))
}

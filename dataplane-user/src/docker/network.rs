//! `NetworkDriver.*`: Docker's remote network driver protocol on the
//! engine's networks and attachments.
//!
//! - `CreateNetwork` creates our network with Docker's NetworkID as its id
//!   (adopting the pool our IPAM handed out, if Docker used it), named
//!   `docker-<12 hex>` until Docker's own name is learnt from `--docker-host`.
//! - `CreateEndpoint` attaches a Docker endpoint (runtime `docker`, id the
//!   EndpointID): a veth whose host side our TC program serves, the other
//!   end left in the daemon's namespace for Docker to move (`Join` names
//!   it). Docker configures address, MAC and default route itself.
//! - `ProgramExternalConnectivity` publishes the `-p` bindings through the
//!   eBPF NAT (no docker-proxy, no iptables rule);
//!   `RevokeExternalConnectivity` takes them back.

use std::{collections::BTreeMap, net::Ipv4Addr};

use axum::{extract::State, routing::post, Router};
use serde_json::Value;
use tracing::{info, warn};

use super::{blocking, decode, ipam::parse_address, proto, Answer, Body, Shared};
use crate::{
    api::{
        error::{bad, ApiError, ApiResult},
        Attach, NetworkCreate, PortMapping,
    },
    engine::DockerNetwork,
    model::{self, docker::Pool, Proto, Runtime},
};

/// `-o dataplane.driver=overlay`: the network spans the cluster's hosts
/// (a daemon with `--store`).
pub const DRIVER_OPTION: &str = "dataplane.driver";

/// The name our network has until Docker's is known.
pub fn provisional_name(docker_id: &str) -> String {
    format!("docker-{}", docker_id.get(..12).unwrap_or(docker_id))
}

/// Docker's ids: hex digits (64 of them from Docker; any 1 to 64 are
/// taken, so that a hand-made request is answered, not refused).
pub fn check_id(id: &str, what: &str) -> ApiResult<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad(format!(
            "invalid {what} {id:?}: Docker's ids are 1 to 64 letters and digits"
        )));
    }
    Ok(())
}

fn as_bool(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// The `network create` that `CreateNetwork` asks for. `our_pool(subnet)`
/// says whether our IPAM handed out that pool (then the network adopts it).
pub fn network_create(
    req: &proto::CreateNetworkRequest,
    our_pool: impl Fn(&str) -> bool,
) -> ApiResult<(NetworkCreate, DockerNetwork)> {
    check_id(&req.network_id, "NetworkID")?;
    if !req.ipv6_data.is_empty() || as_bool(req.options.get(proto::ENABLE_IPV6)) {
        return Err(bad(
            "the dataplane driver has no IPv6 yet: create the network without --ipv6",
        ));
    }
    let data = match req.ipv4_data.as_slice() {
        [d] => d,
        [] => return Err(bad("CreateNetwork: no IPv4 pool given (IPv4Data is empty)")),
        _ => {
            return Err(bad(
                "the dataplane driver takes one IPv4 subnet per network: give one --subnet",
            ))
        }
    };
    let subnet = super::ipam::parse_pool(&data.pool, "subnet")?
        .ok_or_else(|| bad("CreateNetwork: the IPv4 pool is empty"))?;
    let gateway = parse_address(&data.gateway, "gateway")?;
    let mut aux_addresses = BTreeMap::new();
    for (k, v) in &data.aux_addresses {
        let ip = parse_address(v, "aux-address")?
            .ok_or_else(|| bad(format!("invalid aux-address {k}={v}")))?;
        aux_addresses.insert(k.clone(), ip.to_string());
    }
    let mut options: BTreeMap<String, String> = match req.options.get(proto::GENERIC) {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Some(v) => {
            return Err(bad(format!(
                "CreateNetwork: {} is not a map: {v}",
                proto::GENERIC
            )))
        }
    };
    let driver = match options.remove(DRIVER_OPTION).as_deref() {
        None | Some("bridge") | Some("local") => "bridge",
        Some("overlay") => "overlay",
        Some("macvlan") => "macvlan",
        Some(d) => {
            return Err(bad(format!(
                "invalid -o {DRIVER_OPTION}={d}: bridge (one host), overlay (every host of the cluster) or macvlan (with -o parent=IFACE[.VLAN])"
            )))
        }
    };
    let pool_id = Pool::id_for(subnet);
    let pool = our_pool(&pool_id).then_some(pool_id);
    Ok((
        NetworkCreate {
            name: provisional_name(&req.network_id),
            driver: Some(driver.into()),
            subnet: Some(subnet.to_string()),
            gateway: gateway.map(|g| g.to_string()),
            ip_range: None,
            aux_addresses,
            internal: as_bool(req.options.get(proto::INTERNAL)),
            options,
            // Docker keeps the labels and the attachable flag itself.
            ..NetworkCreate::default()
        },
        DockerNetwork {
            id: req.network_id.clone(),
            pool,
        },
    ))
}

/// The `-p` bindings of a `ProgramExternalConnectivity` (its
/// `com.docker.network.portmap` option). Bindings to an IPv6 host address
/// are left out (the data path is IPv4); duplicates are folded.
pub fn port_mappings(options: &BTreeMap<String, Value>) -> ApiResult<Vec<PortMapping>> {
    let list: Vec<proto::PortBinding> = match options.get(proto::PORT_MAP) {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| bad(format!("invalid {}: {e}", proto::PORT_MAP)))?,
    };
    let mut out: Vec<PortMapping> = Vec::new();
    for b in list {
        let proto = match b.proto {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            132 => {
                return Err(bad(
                    "SCTP ports cannot be published by the dataplane driver: tcp or udp",
                ))
            }
            p => return Err(bad(format!("invalid port protocol number {p}"))),
        };
        let host_ip = match b.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            s if s.contains(':') => continue,
            s => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| bad(format!("invalid host address {s:?} in a port binding")))?,
            ),
        };
        let m = PortMapping {
            proto,
            host_ip,
            host_port: b.host_port,
            host_port_end: if b.host_port_end == b.host_port {
                0
            } else {
                b.host_port_end
            },
            container_port: b.port,
        };
        m.to_request().map_err(bad)?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// The bindings as Docker's `types.PortBinding` list (`EndpointOperInfo`).
pub fn portmap_value(ip: Ipv4Addr, ports: &[model::PortBinding]) -> Value {
    let v: Vec<proto::PortBinding> = ports
        .iter()
        .map(|b| proto::PortBinding {
            proto: b.proto.ipproto(),
            ip: ip.to_string(),
            port: b.container_port,
            host_ip: b.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
            host_port: b.host_port,
            host_port_end: b.host_port,
        })
        .collect();
    serde_json::to_value(v).unwrap_or_default()
}

async fn capabilities(State(p): State<Shared>) -> Answer {
    let scope = if p.engine.node().is_empty() {
        "local"
    } else {
        "global"
    };
    Answer::ok(&proto::CapabilitiesResponse {
        scope,
        connectivity_scope: scope,
    })
}

async fn create_network(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::CreateNetworkRequest = decode("CreateNetwork", &body)?;
        let snap = p.engine.snapshot();
        let (req, docker) = network_create(&r, |id| snap.pools.contains_key(id))?;
        let id = docker.id.clone();
        blocking(&p, move |p| p.engine.create_network_as(req, Some(docker))).await?;
        super::names::learn_name(p.clone(), id);
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

async fn delete_network(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::NetworkRequest = decode("DeleteNetwork", &body)?;
        check_id(&r.network_id, "NetworkID")?;
        blocking(&p, move |p| {
            if !p.engine.snapshot().networks.contains_key(&r.network_id) {
                return Ok(());
            }
            p.engine.remove_network(&r.network_id)
        })
        .await?;
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

async fn create_endpoint(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::CreateEndpointRequest = decode("CreateEndpoint", &body)?;
        check_id(&r.network_id, "NetworkID")?;
        check_id(&r.endpoint_id, "EndpointID")?;
        let iface = r.interface.clone().unwrap_or_default();
        if !iface.address_ipv6.is_empty() {
            return Err(bad(
                "the dataplane driver has no IPv6 yet: the endpoint cannot have an IPv6 address",
            ));
        }
        let ip = parse_address(&iface.address, "address")?;
        let mac = (!iface.mac_address.is_empty()).then(|| iface.mac_address.clone());
        if !p.engine.snapshot().networks.contains_key(&r.network_id) {
            return Err(ApiError::NotFound(format!(
                "network {} is not a dataplane network (was it created while the dataplane daemon had other state?)",
                r.network_id
            )));
        }
        let req = Attach {
            runtime: Runtime::Docker,
            id: r.endpoint_id.clone(),
            name: None,
            network: r.network_id.clone(),
            netns: None,
            ifname: None,
            ip: ip.map(|i| i.to_string()),
            mac,
            aliases: Vec::new(),
            ports: Vec::new(),
        };
        let a = blocking(&p, move |p| p.engine.attach(req)).await?;
        let out = proto::EndpointInterfaceOut {
            address: if iface.address.is_empty() {
                format!("{}/{}", a.ip, a.prefix)
            } else {
                String::new()
            },
            mac_address: if iface.mac_address.is_empty() {
                a.mac.to_string()
            } else {
                String::new()
            },
        };
        let empty = out.address.is_empty() && out.mac_address.is_empty();
        Ok(proto::CreateEndpointResponse {
            interface: (!empty).then_some(out),
        })
    };
    Answer::from_result(r.await)
}

async fn endpoint_info(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::EndpointRequest = decode("EndpointOperInfo", &body)?;
        let a = p
            .engine
            .attachment(Runtime::Docker, &r.endpoint_id)
            .ok_or_else(|| ApiError::NotFound(format!("no such endpoint {}", r.endpoint_id)))?;
        let mut value = BTreeMap::new();
        value.insert(proto::PORT_MAP.to_string(), portmap_value(a.ip, &a.ports));
        value.insert(
            "dataplane.host_ifname".to_string(),
            Value::String(a.host_ifname),
        );
        value.insert("dataplane.container".to_string(), Value::String(a.name));
        Ok(proto::EndpointInfoResponse { value })
    };
    Answer::from_result(r.await)
}

async fn delete_endpoint(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::EndpointRequest = decode("DeleteEndpoint", &body)?;
        check_id(&r.endpoint_id, "EndpointID")?;
        blocking(&p, move |p| {
            p.engine.detach(Runtime::Docker, &r.endpoint_id)
        })
        .await?;
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

async fn join(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::JoinRequest = decode("Join", &body)?;
        check_id(&r.endpoint_id, "EndpointID")?;
        let eid = r.endpoint_id.clone();
        let a = blocking(&p, move |p| {
            if !r.sandbox_key.is_empty() {
                p.engine
                    .set_netns(Runtime::Docker, &r.endpoint_id, &r.sandbox_key)?;
            }
            p.engine
                .attachment(Runtime::Docker, &r.endpoint_id)
                .ok_or_else(|| ApiError::NotFound(format!("no such endpoint {}", r.endpoint_id)))
        })
        .await?;
        info!(endpoint = %eid, peer = %a.peer, "docker joined");
        super::names::learn_endpoint_name(p.clone(), a.network_id.clone(), eid);
        Ok(proto::JoinResponse {
            interface_name: proto::InterfaceName {
                src_name: a.peer,
                dst_prefix: "eth".into(),
            },
            gateway: if a.internal {
                String::new()
            } else {
                a.gateway.to_string()
            },
            disable_gateway_service: false,
        })
    };
    Answer::from_result(r.await)
}

async fn leave(body: Body) -> Answer {
    // Docker moves the interface back out; DeleteEndpoint removes it.
    match decode::<proto::EndpointRequest>("Leave", &body) {
        Ok(_) => Answer::empty(),
        Err(e) => Answer::err(e),
    }
}

async fn program_external(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::ProgramExternalConnectivityRequest =
            decode("ProgramExternalConnectivity", &body)?;
        check_id(&r.endpoint_id, "EndpointID")?;
        let ports = port_mappings(&r.options)?;
        if ports.is_empty()
            && p.engine
                .attachment(Runtime::Docker, &r.endpoint_id)
                .is_some_and(|a| a.ports.is_empty())
        {
            return Ok(serde_json::json!({}));
        }
        blocking(&p, move |p| {
            p.engine.set_ports(Runtime::Docker, &r.endpoint_id, ports)
        })
        .await?;
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

async fn revoke_external(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::EndpointRequest = decode("RevokeExternalConnectivity", &body)?;
        let has_ports = p
            .engine
            .attachment(Runtime::Docker, &r.endpoint_id)
            .is_some_and(|a| !a.ports.is_empty());
        if has_ports {
            blocking(&p, move |p| {
                p.engine
                    .set_ports(Runtime::Docker, &r.endpoint_id, Vec::new())
            })
            .await?;
        }
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

/// Calls that have nothing to do on one host (discovery, swarm's
/// network allocation) still check their body.
async fn nothing(uri: axum::http::Uri, body: Body) -> Answer {
    match decode::<Value>(uri.path(), &body) {
        Ok(Value::Object(_)) => Answer::empty(),
        Ok(v) => Answer::err(bad(format!(
            "{}: expected a JSON object, got {v}",
            uri.path()
        ))),
        Err(e) => {
            warn!("{e}");
            Answer::err(e)
        }
    }
}

pub fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route("/NetworkDriver.GetCapabilities", post(capabilities))
        .route("/NetworkDriver.CreateNetwork", post(create_network))
        .route("/NetworkDriver.DeleteNetwork", post(delete_network))
        .route("/NetworkDriver.CreateEndpoint", post(create_endpoint))
        .route("/NetworkDriver.EndpointOperInfo", post(endpoint_info))
        .route("/NetworkDriver.DeleteEndpoint", post(delete_endpoint))
        .route("/NetworkDriver.Join", post(join))
        .route("/NetworkDriver.Leave", post(leave))
        .route(
            "/NetworkDriver.ProgramExternalConnectivity",
            post(program_external),
        )
        .route(
            "/NetworkDriver.RevokeExternalConnectivity",
            post(revoke_external),
        )
        .route("/NetworkDriver.DiscoverNew", post(nothing))
        .route("/NetworkDriver.DiscoverDelete", post(nothing))
        .route("/NetworkDriver.AllocateNetwork", post(allocate_network))
        .route("/NetworkDriver.FreeNetwork", post(nothing))
}

/// Swarm's manager asks a global driver to allocate a network's
/// driver state; ours needs none (`Options` back empty).
async fn allocate_network(body: Body) -> Answer {
    match decode::<proto::NetworkRequest>("AllocateNetwork", &body) {
        Ok(_) => Answer::ok(&serde_json::json!({"Options": {}})),
        Err(e) => Answer::err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NID: &str = "8f1a3b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn create(body: &str) -> ApiResult<(NetworkCreate, DockerNetwork)> {
        let r: proto::CreateNetworkRequest = decode("CreateNetwork", body.as_bytes())?;
        network_create(&r, |id| id == "dataplane/10.9.0.0/24")
    }

    #[test]
    fn create_network_maps_docker_s_request() {
        let body = format!(
            r#"{{"NetworkID":"{NID}","Options":{{"com.docker.network.enable_ipv6":false,
            "com.docker.network.generic":{{"icc":"false","dataplane.driver":"bridge"}},
            "com.docker.network.internal":true}},
            "IPv4Data":[{{"AddressSpace":"dataplane-local","Gateway":"10.9.0.254/24","Pool":"10.9.0.0/24",
            "AuxAddresses":{{"printer":"10.9.0.9/24"}}}}],"IPv6Data":[]}}"#
        );
        let (req, d) = create(&body).unwrap();
        assert_eq!(req.name, "docker-8f1a3b2c4d5e");
        assert_eq!(req.driver.as_deref(), Some("bridge"));
        assert_eq!(req.subnet.as_deref(), Some("10.9.0.0/24"));
        assert_eq!(req.gateway.as_deref(), Some("10.9.0.254"));
        assert_eq!(req.aux_addresses["printer"], "10.9.0.9");
        assert!(req.internal);
        assert_eq!(
            req.options,
            BTreeMap::from([("icc".to_string(), "false".to_string())])
        );
        assert_eq!(d.id, NID);
        assert_eq!(d.pool.as_deref(), Some("dataplane/10.9.0.0/24"));
        // Docker's default IPAM: no pool of ours.
        let (_, d) = create(&body.replace("10.9.0.", "10.8.0.")).unwrap();
        assert_eq!(d.pool, None);
    }

    #[test]
    fn create_network_refuses_what_it_cannot_serve() {
        let ok = format!(r#"{{"NetworkID":"{NID}","IPv4Data":[{{"Pool":"10.9.0.0/24"}}]}}"#);
        assert!(create(&ok).is_ok());
        for (bad, says) in [
            (ok.replace(NID, "../x"), "invalid NetworkID"),
            (ok.replace(r#"[{"Pool":"10.9.0.0/24"}]"#, "[]"), "no IPv4 pool"),
            (
                ok.replace(r#"[{"Pool":"10.9.0.0/24"}]"#, r#"[{"Pool":"10.9.0.0/24"},{"Pool":"10.7.0.0/24"}]"#),
                "one IPv4 subnet",
            ),
            (ok.replace(r#""IPv4Data""#, r#""IPv6Data":[{"Pool":"fd00::/64"}],"IPv4Data""#), "IPv6"),
            (ok.replace(r#""IPv4Data""#, r#""Options":{"com.docker.network.generic":{"dataplane.driver":"ipvlan"}},"IPv4Data""#), "dataplane.driver=ipvlan"),
            (ok.replace(r#""IPv4Data""#, r#""Options":{"com.docker.network.generic":[1]},"IPv4Data""#), "not a map"),
            (ok.replace("10.9.0.0/24", "10.9.0.0/33"), "invalid subnet"),
        ] {
            let e = create(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn port_maps_become_mappings() {
        let opts: BTreeMap<String, Value> = serde_json::from_str(
            r#"{"com.docker.network.portmap":[
                {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080},
                {"Proto":6,"IP":"","Port":80,"HostIP":"::","HostPort":8080,"HostPortEnd":8080},
                {"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353},
                {"Proto":6,"IP":"","Port":90,"HostIP":"0.0.0.0","HostPort":9000,"HostPortEnd":9010},
                {"Proto":6,"IP":"","Port":70,"HostIP":"","HostPort":0,"HostPortEnd":0},
                {"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}],
              "com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}]}"#,
        )
        .unwrap();
        let m = port_mappings(&opts).unwrap();
        let pm = |proto, host_ip, host_port, host_port_end, container_port| PortMapping {
            proto,
            host_ip,
            host_port,
            host_port_end,
            container_port,
        };
        assert_eq!(
            m,
            vec![
                pm(Proto::Tcp, None, 8080, 0, 80),
                pm(Proto::Udp, Some(Ipv4Addr::LOCALHOST), 5353, 0, 53),
                pm(Proto::Tcp, None, 9000, 9010, 90),
                pm(Proto::Tcp, None, 0, 0, 70),
            ]
        );
        assert!(port_mappings(&BTreeMap::new()).unwrap().is_empty());
        for bad in [
            r#"{"com.docker.network.portmap":[{"Proto":132,"Port":80,"HostPort":80}]}"#,
            r#"{"com.docker.network.portmap":[{"Proto":6,"Port":0,"HostPort":80}]}"#,
            r#"{"com.docker.network.portmap":[{"Proto":6,"Port":80,"HostIP":"1.2.3","HostPort":80}]}"#,
            r#"{"com.docker.network.portmap":{"Proto":6}}"#,
            r#"{"com.docker.network.portmap":[{"Proto":"tcp"}]}"#,
        ] {
            let o: BTreeMap<String, Value> = serde_json::from_str(bad).unwrap();
            assert!(port_mappings(&o).is_err(), "{bad}");
        }
    }

    #[test]
    fn bindings_go_back_in_docker_s_form() {
        let b = model::PortBinding {
            proto: Proto::Udp,
            host_ip: None,
            host_port: 5353,
            container_port: 53,
        };
        assert_eq!(
            portmap_value(Ipv4Addr::new(10, 9, 0, 2), &[b]),
            serde_json::json!([{"Proto":17,"IP":"10.9.0.2","Port":53,"HostIP":"0.0.0.0","HostPort":5353,"HostPortEnd":5353}])
        );
    }
}

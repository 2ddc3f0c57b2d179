//! `IpamDriver.*`: Docker's remote IPAM protocol on the engine's pools and
//! address claims (see [`crate::engine::docker`]).

use std::{collections::BTreeMap, net::Ipv4Addr};

use axum::{extract::State, routing::post, Router};
use ipnetwork::Ipv4Network;

use super::{blocking, decode, proto, Answer, Body, Shared};
use crate::{
    api::error::{bad, ApiResult},
    engine::docker::AddressRequest,
};

/// Our address spaces (Docker shows them in `network inspect`).
pub const LOCAL_SPACE: &str = "dataplane-local";
pub const GLOBAL_SPACE: &str = "dataplane-global";

/// `10.0.0.0/24` (host bits must be clear), "" for none.
pub fn parse_pool(s: &str, what: &str) -> ApiResult<Option<Ipv4Network>> {
    if s.is_empty() {
        return Ok(None);
    }
    let n: Ipv4Network = s.parse().map_err(|_| {
        bad(format!(
            "invalid {what} {s:?}: expected an IPv4 CIDR such as 10.0.0.0/24"
        ))
    })?;
    if n.network() != n.ip() {
        return Err(bad(format!(
            "invalid {what} {s}: host bits are set (did you mean {}/{}?)",
            n.network(),
            n.prefix()
        )));
    }
    Ok(Some(n))
}

/// `10.0.0.2` or `10.0.0.2/24` (Docker sends both forms), "" for none.
pub fn parse_address(s: &str, what: &str) -> ApiResult<Option<Ipv4Addr>> {
    if s.is_empty() {
        return Ok(None);
    }
    let ip = s.split_once('/').map_or(s, |(ip, _)| ip);
    ip.parse()
        .map(Some)
        .map_err(|_| bad(format!("invalid {what} {s:?}: expected an IPv4 address")))
}

/// What a `RequestAddress` body asks of the engine.
pub fn address_request(r: &proto::RequestAddressRequest) -> ApiResult<AddressRequest> {
    if r.pool_id.is_empty() {
        return Err(bad("RequestAddress: PoolID is missing"));
    }
    Ok(AddressRequest {
        pool: r.pool_id.clone(),
        ip: parse_address(&r.address, "address")?,
        gateway: r
            .options
            .get(proto::REQUEST_ADDRESS_TYPE)
            .is_some_and(|t| t == proto::GATEWAY_TYPE),
    })
}

async fn capabilities() -> Answer {
    // Pools and addresses live in the store and outlive a restart of
    // either daemon: Docker need not replay its requests.
    Answer::ok(&proto::IpamCapabilities {
        requires_mac_address: false,
        requires_request_replay: false,
    })
}

async fn address_spaces() -> Answer {
    Answer::ok(&proto::AddressSpaces {
        local_default_address_space: LOCAL_SPACE,
        global_default_address_space: GLOBAL_SPACE,
    })
}

async fn request_pool(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::RequestPoolRequest = decode("RequestPool", &body)?;
        if r.v6 {
            return Err(bad(
                "the dataplane IPAM driver has no IPv6 pools: leave out --ipv6 (or use --ipam-driver default for the IPv6 part)",
            ));
        }
        let subnet = parse_pool(&r.pool, "subnet")?;
        let range = parse_pool(&r.sub_pool, "ip range")?;
        if range.is_some() && subnet.is_none() {
            return Err(bad("--ip-range needs --subnet"));
        }
        // Docker asks in the global space for a global-scope driver (ours
        // on a daemon with a cluster store).
        let global = r.address_space == GLOBAL_SPACE;
        let pool = blocking(&p, move |p| p.engine.request_pool(subnet, range, global)).await?;
        Ok(proto::RequestPoolResponse {
            pool_id: pool.id,
            pool: pool.subnet.to_string(),
            data: BTreeMap::new(),
        })
    };
    Answer::from_result(r.await)
}

async fn release_pool(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::ReleasePoolRequest = decode("ReleasePool", &body)?;
        blocking(&p, move |p| p.engine.release_pool(&r.pool_id)).await?;
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

async fn request_address(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::RequestAddressRequest = decode("RequestAddress", &body)?;
        let req = address_request(&r)?;
        let (ip, prefix) = blocking(&p, move |p| p.engine.request_address(&req)).await?;
        Ok(proto::RequestAddressResponse {
            address: format!("{ip}/{prefix}"),
            data: BTreeMap::new(),
        })
    };
    Answer::from_result(r.await)
}

async fn release_address(State(p): State<Shared>, body: Body) -> Answer {
    let r = async {
        let r: proto::ReleaseAddressRequest = decode("ReleaseAddress", &body)?;
        let Some(ip) = parse_address(&r.address, "address")? else {
            return Err(bad("ReleaseAddress: Address is missing"));
        };
        blocking(&p, move |p| p.engine.release_address(&r.pool_id, ip)).await?;
        Ok(serde_json::json!({}))
    };
    Answer::from_result(r.await)
}

pub fn routes(r: Router<Shared>) -> Router<Shared> {
    r.route("/IpamDriver.GetCapabilities", post(capabilities))
        .route("/IpamDriver.GetDefaultAddressSpaces", post(address_spaces))
        .route("/IpamDriver.RequestPool", post(request_pool))
        .route("/IpamDriver.ReleasePool", post(release_pool))
        .route("/IpamDriver.RequestAddress", post(request_address))
        .route("/IpamDriver.ReleaseAddress", post(release_address))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_addresses_parse_in_docker_s_forms() {
        assert_eq!(parse_pool("", "subnet").unwrap(), None);
        assert_eq!(
            parse_pool("10.9.0.0/16", "subnet").unwrap(),
            Some("10.9.0.0/16".parse().unwrap())
        );
        let e = parse_pool("10.9.0.1/16", "subnet").unwrap_err().to_string();
        assert!(e.contains("did you mean 10.9.0.0/16"), "{e}");
        assert!(parse_pool("fd00::/64", "subnet").is_err());
        assert_eq!(
            parse_address("10.9.0.1/16", "address").unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 1))
        );
        assert_eq!(
            parse_address("10.9.0.7", "address").unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 7))
        );
        assert!(parse_address("10.9.0.300", "address").is_err());
    }

    #[test]
    fn the_gateway_request_is_told_by_its_option() {
        let r: proto::RequestAddressRequest = decode(
            "RequestAddress",
            br#"{"PoolID":"dataplane/10.9.0.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert_eq!(
            address_request(&r).unwrap(),
            AddressRequest {
                pool: "dataplane/10.9.0.0/24".into(),
                ip: None,
                gateway: true
            }
        );
        let r: proto::RequestAddressRequest = decode(
            "RequestAddress",
            br#"{"PoolID":"p","Address":"10.9.0.9","Options":{"com.docker.network.endpoint.macaddress":"x"}}"#,
        )
        .unwrap();
        let a = address_request(&r).unwrap();
        assert_eq!((a.ip, a.gateway), (Some(Ipv4Addr::new(10, 9, 0, 9)), false));
        let r: proto::RequestAddressRequest = decode("RequestAddress", b"{}").unwrap();
        assert!(address_request(&r).is_err());
    }
}

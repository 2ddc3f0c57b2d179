//! IPv4 address management: choosing a network's subnet and gateway, and
//! handing out addresses to endpoints. Pure functions over the model, so the
//! rules are unit-tested without a daemon.

use std::{collections::BTreeMap, collections::HashSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;

use crate::model::Network;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpamError {
    #[error("invalid subnet {0}: host bits are set (did you mean {1}?)")]
    HostBitsSet(String, Ipv4Network),
    #[error("subnet {0} is too small: a network needs at least a /30")]
    TooSmall(Ipv4Network),
    #[error("subnet {subnet} overlaps subnet {other} of network {name}")]
    Overlap {
        subnet: Ipv4Network,
        other: Ipv4Network,
        name: String,
    },
    #[error("no free subnet left in the default address pools")]
    PoolExhausted,
    #[error("{what} {ip} is not in subnet {subnet}")]
    OutsideSubnet {
        what: &'static str,
        ip: Ipv4Addr,
        subnet: Ipv4Network,
    },
    #[error("{what} {ip} is the subnet's network or broadcast address")]
    Reserved { what: &'static str, ip: Ipv4Addr },
    #[error("ip range {0} is not inside subnet {1}")]
    RangeOutsideSubnet(Ipv4Network, Ipv4Network),
    #[error("auxiliary address {0} ({1}) is the gateway")]
    AuxIsGateway(String, Ipv4Addr),
    #[error("address {0} is already in use on network {1}")]
    InUse(Ipv4Addr, String),
    #[error("no available IPv4 addresses on network {0}")]
    Exhausted(String),
}

/// Docker's default local address pools: 172.17.0.0/16 .. 172.31.0.0/16 (the
/// first is the default `bridge` network), then 192.168.0.0/16 in /20 blocks.
pub fn default_pools() -> impl Iterator<Item = Ipv4Network> {
    let b16 = (17u8..=31).map(|b| Ipv4Network::new(Ipv4Addr::new(172, b, 0, 0), 16).unwrap());
    let c20 = (0u8..16).map(|i| Ipv4Network::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).unwrap());
    b16.chain(c20)
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// What a `network create` asks of IPAM.
#[derive(Debug, Default, Clone)]
pub struct NetworkRequest {
    pub subnet: Option<Ipv4Network>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Network>,
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
}

/// Chooses and checks the subnet and gateway of a new network. `existing`
/// names the other networks' subnets; `host_routes` are the destinations the
/// host already routes (a pool subnet overlapping one is skipped).
pub fn plan_network(
    req: &NetworkRequest,
    existing: &[(String, Ipv4Network)],
    host_routes: &[Ipv4Network],
) -> Result<(Ipv4Network, Ipv4Addr), IpamError> {
    let subnet = match req.subnet {
        Some(s) => {
            let normal = Ipv4Network::new(s.network(), s.prefix()).unwrap();
            if normal.ip() != s.ip() {
                return Err(IpamError::HostBitsSet(s.to_string(), normal));
            }
            if let Some((name, other)) = existing.iter().find(|(_, o)| overlaps(s, *o)) {
                return Err(IpamError::Overlap {
                    subnet: s,
                    other: *other,
                    name: name.clone(),
                });
            }
            s
        }
        None => default_pools()
            .find(|p| {
                !existing.iter().any(|(_, o)| overlaps(*p, *o))
                    && !host_routes
                        .iter()
                        .any(|r| r.prefix() > 0 && overlaps(*p, *r))
            })
            .ok_or(IpamError::PoolExhausted)?,
    };
    if subnet.prefix() > 30 {
        return Err(IpamError::TooSmall(subnet));
    }
    let gateway = match req.gateway {
        Some(g) => {
            check_host_address(subnet, g, "gateway")?;
            g
        }
        None => first_host(subnet),
    };
    if let Some(r) = req.ip_range {
        if !subnet.contains(r.network()) || r.prefix() < subnet.prefix() {
            return Err(IpamError::RangeOutsideSubnet(r, subnet));
        }
    }
    for (name, ip) in &req.aux_addresses {
        check_host_address(subnet, *ip, "auxiliary address")?;
        if *ip == gateway {
            return Err(IpamError::AuxIsGateway(name.clone(), *ip));
        }
    }
    Ok((subnet, gateway))
}

fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

fn check_host_address(
    subnet: Ipv4Network,
    ip: Ipv4Addr,
    what: &'static str,
) -> Result<(), IpamError> {
    if !subnet.contains(ip) {
        return Err(IpamError::OutsideSubnet { what, ip, subnet });
    }
    if ip == subnet.network() || ip == subnet.broadcast() {
        return Err(IpamError::Reserved { what, ip });
    }
    Ok(())
}

/// Addresses of `net` that no endpoint may take: the gateway and the
/// auxiliary addresses.
pub fn reserved(net: &Network) -> HashSet<Ipv4Addr> {
    let mut r: HashSet<Ipv4Addr> = net.aux_addresses.values().copied().collect();
    r.insert(net.gateway);
    r
}

/// Picks an address on `net` for an endpoint: `requested` if it is free and
/// valid, else the lowest free address of the ip-range (or the subnet).
/// `used` holds the addresses of the network's endpoints.
pub fn allocate(
    net: &Network,
    used: &HashSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, IpamError> {
    let reserved = reserved(net);
    let taken = |ip: &Ipv4Addr| used.contains(ip) || reserved.contains(ip);
    if let Some(ip) = requested {
        check_host_address(net.subnet, ip, "address")?;
        if taken(&ip) {
            return Err(IpamError::InUse(ip, net.name.clone()));
        }
        return Ok(ip);
    }
    let range = net.ip_range.unwrap_or(net.subnet);
    let (lo, hi) = (u32::from(range.network()), u32::from(range.broadcast()));
    let (net_lo, net_hi) = (
        u32::from(net.subnet.network()),
        u32::from(net.subnet.broadcast()),
    );
    (lo..=hi)
        .filter(|a| *a != net_lo && *a != net_hi)
        .map(Ipv4Addr::from)
        .find(|ip| !taken(ip))
        .ok_or_else(|| IpamError::Exhausted(net.name.clone()))
}

/// The IPv4 destinations routed in the calling thread's network namespace,
/// from `/proc/self/net/route` (so a daemon in a netns sees its own).
pub fn host_routes() -> Vec<Ipv4Network> {
    let Ok(text) = std::fs::read_to_string("/proc/thread-self/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // The file holds the addresses as native-endian words of wire bytes.
            let dst = Ipv4Addr::from(dst.to_ne_bytes());
            let mask = Ipv4Addr::from(mask.to_ne_bytes());
            Ipv4Network::with_netmask(dst, mask).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(subnet: &str, range: Option<&str>) -> Network {
        let subnet: Ipv4Network = subnet.parse().unwrap();
        Network {
            id: "n".into(),
            name: "n".into(),
            driver: "bridge".into(),
            num: 1,
            subnet,
            gateway: first_host(subnet),
            ip_range: range.map(|r| r.parse().unwrap()),
            aux_addresses: BTreeMap::new(),
            internal: false,
            options: BTreeMap::new(),
            created: String::new(),
        }
    }

    fn existing(s: &[&str]) -> Vec<(String, Ipv4Network)> {
        s.iter()
            .enumerate()
            .map(|(i, s)| (format!("net{i}"), s.parse().unwrap()))
            .collect()
    }

    #[test]
    fn default_pool_skips_taken_and_routed_ranges() {
        let req = NetworkRequest::default();
        let (s, g) = plan_network(&req, &existing(&["172.17.0.0/16"]), &[]).unwrap();
        assert_eq!(s.to_string(), "172.18.0.0/16");
        assert_eq!(g.to_string(), "172.18.0.1");
        let routes = [
            "172.18.5.0/24".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ];
        let (s, _) = plan_network(&req, &existing(&["172.17.0.0/16"]), &routes).unwrap();
        assert_eq!(
            s.to_string(),
            "172.19.0.0/16",
            "a routed range is skipped, the default route is not"
        );
    }

    #[test]
    fn pools_run_out() {
        let all: Vec<String> = default_pools().map(|p| p.to_string()).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(
            plan_network(&NetworkRequest::default(), &existing(&all), &[]),
            Err(IpamError::PoolExhausted)
        );
    }

    #[test]
    fn explicit_subnet_rules() {
        let req = |s: &str| NetworkRequest {
            subnet: Some(s.parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            plan_network(&req("10.1.0.0/16"), &existing(&["10.1.2.0/24"]), &[]),
            Err(IpamError::Overlap { .. })
        ));
        assert!(matches!(
            plan_network(&req("10.1.0.5/16"), &[], &[]),
            Err(IpamError::HostBitsSet(..))
        ));
        assert!(matches!(
            plan_network(&req("10.1.0.0/31"), &[], &[]),
            Err(IpamError::TooSmall(..))
        ));
        let (s, g) = plan_network(&req("10.1.0.0/16"), &[], &[]).unwrap();
        assert_eq!(
            (s.to_string(), g.to_string()),
            ("10.1.0.0/16".into(), "10.1.0.1".into())
        );
    }

    #[test]
    fn gateway_range_and_aux_are_checked() {
        let mut req = NetworkRequest {
            subnet: Some("10.1.0.0/24".parse().unwrap()),
            gateway: Some("10.2.0.1".parse().unwrap()),
            ..Default::default()
        };
        assert!(matches!(
            plan_network(&req, &[], &[]),
            Err(IpamError::OutsideSubnet { .. })
        ));
        req.gateway = Some("10.1.0.255".parse().unwrap());
        assert!(matches!(
            plan_network(&req, &[], &[]),
            Err(IpamError::Reserved { .. })
        ));
        req.gateway = Some("10.1.0.254".parse().unwrap());
        req.ip_range = Some("10.1.1.0/25".parse().unwrap());
        assert!(matches!(
            plan_network(&req, &[], &[]),
            Err(IpamError::RangeOutsideSubnet(..))
        ));
        req.ip_range = Some("10.1.0.128/25".parse().unwrap());
        req.aux_addresses
            .insert("router".into(), "10.1.0.254".parse().unwrap());
        assert!(matches!(
            plan_network(&req, &[], &[]),
            Err(IpamError::AuxIsGateway(..))
        ));
        req.aux_addresses
            .insert("router".into(), "10.1.0.253".parse().unwrap());
        assert!(plan_network(&req, &[], &[]).is_ok());
    }

    #[test]
    fn allocation_is_sequential_and_skips_reserved() {
        let mut n = net("10.1.0.0/24", None);
        n.aux_addresses
            .insert("host".into(), "10.1.0.2".parse().unwrap());
        let mut used = HashSet::new();
        let a = allocate(&n, &used, None).unwrap();
        assert_eq!(a.to_string(), "10.1.0.3", ".1 is the gateway, .2 auxiliary");
        used.insert(a);
        assert_eq!(allocate(&n, &used, None).unwrap().to_string(), "10.1.0.4");
    }

    #[test]
    fn allocation_honours_ip_range() {
        let n = net("10.1.0.0/24", Some("10.1.0.128/30"));
        let mut used = HashSet::new();
        for want in ["10.1.0.128", "10.1.0.129", "10.1.0.130", "10.1.0.131"] {
            let a = allocate(&n, &used, None).unwrap();
            assert_eq!(a.to_string(), want);
            used.insert(a);
        }
        assert_eq!(
            allocate(&n, &used, None),
            Err(IpamError::Exhausted("n".into()))
        );
        // A static address may still come from outside the range.
        assert!(allocate(&n, &used, Some("10.1.0.50".parse().unwrap())).is_ok());
    }

    #[test]
    fn static_addresses_are_checked() {
        let n = net("10.1.0.0/30", None);
        let mut used = HashSet::new();
        assert!(matches!(
            allocate(&n, &used, Some("10.9.0.2".parse().unwrap())),
            Err(IpamError::OutsideSubnet { .. })
        ));
        assert!(matches!(
            allocate(&n, &used, Some("10.1.0.1".parse().unwrap())),
            Err(IpamError::InUse(..))
        ));
        assert!(matches!(
            allocate(&n, &used, Some("10.1.0.3".parse().unwrap())),
            Err(IpamError::Reserved { .. })
        ));
        used.insert("10.1.0.2".parse().unwrap());
        assert_eq!(
            allocate(&n, &used, None),
            Err(IpamError::Exhausted("n".into()))
        );
    }

    #[test]
    fn host_routes_parse() {
        // Whatever this namespace routes, parsing must not fail; loopback
        // namespaces may route nothing.
        let _ = host_routes();
    }
}

//! IPv4 address management: choosing a network's subnet and gateway, and
//! handing out addresses to endpoints. Pure functions over the model, so the
//! rules are unit-tested without a daemon; [`host_routes`] reads what the
//! host already uses (netlink) for them.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::LinkAttribute,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
    AddressFamily,
};

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
    /// A subnet or ip-range that overlaps a range no network may use.
    #[error("{what} {net} overlaps {range} ({kind}): no network may use loopback, multicast, 0.0.0.0/8 or 240.0.0.0/4 addresses")]
    SpecialRange {
        what: &'static str,
        net: Ipv4Network,
        range: Ipv4Network,
        kind: &'static str,
    },
    /// A gateway or auxiliary address in such a range.
    #[error("{what} {ip} is {kind} ({range}): no network may use loopback, multicast, 0.0.0.0/8 or 240.0.0.0/4 addresses")]
    SpecialAddress {
        what: &'static str,
        ip: Ipv4Addr,
        range: Ipv4Network,
        kind: &'static str,
    },
    /// A subnet that overlaps a route or an address the host has already.
    #[error("subnet {subnet} overlaps {host} of this host: choose a subnet the host does not use")]
    HostOverlap { subnet: Ipv4Network, host: String },
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

/// Ranges no network may use: putting the gateway of one on `lo` (and
/// taking it off again) would break the host. Each with what it is, as a
/// range and as said of one address. The limited broadcast comes before
/// 240.0.0.0/4, which holds it, so that it is named.
const SPECIAL_RANGES: [([u8; 4], u8, &str, &str); 5] = [
    (
        [0, 0, 0, 0],
        8,
        "\"this network\", RFC 1122",
        "in \"this network\" (RFC 1122)",
    ),
    ([127, 0, 0, 0], 8, "loopback", "a loopback address"),
    ([224, 0, 0, 0], 4, "multicast", "a multicast address"),
    (
        [255, 255, 255, 255],
        32,
        "the limited broadcast address",
        "the limited broadcast address",
    ),
    (
        [240, 0, 0, 0],
        4,
        "reserved, class E",
        "a reserved (class E) address",
    ),
];

/// (range, what it is, what one address of it is).
fn special_ranges() -> impl Iterator<Item = (Ipv4Network, &'static str, &'static str)> {
    SPECIAL_RANGES.iter().map(|(a, p, range, one)| {
        (
            Ipv4Network::new(Ipv4Addr::from(*a), *p).unwrap(),
            *range,
            *one,
        )
    })
}

/// Refuses a subnet or ip-range (`what`) that overlaps a special range.
fn check_not_special_net(what: &'static str, net: Ipv4Network) -> Result<(), IpamError> {
    match special_ranges().find(|(r, _, _)| overlaps(net, *r)) {
        Some((range, kind, _)) => Err(IpamError::SpecialRange {
            what,
            net,
            range,
            kind,
        }),
        None => Ok(()),
    }
}

/// Refuses a gateway or auxiliary address (`what`) in a special range.
fn check_not_special_ip(what: &'static str, ip: Ipv4Addr) -> Result<(), IpamError> {
    match special_ranges().find(|(r, _, _)| r.contains(ip)) {
        Some((range, _, kind)) => Err(IpamError::SpecialAddress {
            what,
            ip,
            range,
            kind,
        }),
        None => Ok(()),
    }
}

/// A destination the host already uses: a route (of any table) or the
/// prefix of one of its addresses, with how to name it in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPrefix {
    pub net: Ipv4Network,
    /// `route 10.1.0.0/16 dev eth1`, `address 10.2.0.5/24 on eth0`.
    pub what: String,
}

impl HostPrefix {
    /// A route `net` (used by tests and callers that have no device name).
    pub fn route(net: Ipv4Network) -> Self {
        HostPrefix {
            net,
            what: format!("route {net}"),
        }
    }
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
/// names the other networks' subnets; `host` holds the destinations the
/// host already routes or has addresses in ([`host_routes`]): an explicit
/// subnet overlapping one is refused, a pool subnet overlapping one is
/// skipped (a default route, prefix 0, counts for neither). Loopback,
/// multicast, 0.0.0.0/8 and 240.0.0.0/4 (with the limited broadcast) are
/// refused as subnets, ip-ranges, gateways and auxiliary addresses.
pub fn plan_network(
    req: &NetworkRequest,
    existing: &[(String, Ipv4Network)],
    host: &[HostPrefix],
) -> Result<(Ipv4Network, Ipv4Addr), IpamError> {
    let host_overlap = |s: Ipv4Network| {
        host.iter()
            .find(|h| h.net.prefix() > 0 && overlaps(s, h.net))
    };
    let subnet = match req.subnet {
        Some(s) => {
            let normal = Ipv4Network::new(s.network(), s.prefix()).unwrap();
            if normal.ip() != s.ip() {
                return Err(IpamError::HostBitsSet(s.to_string(), normal));
            }
            check_not_special_net("subnet", s)?;
            if let Some((name, other)) = existing.iter().find(|(_, o)| overlaps(s, *o)) {
                return Err(IpamError::Overlap {
                    subnet: s,
                    other: *other,
                    name: name.clone(),
                });
            }
            if let Some(h) = host_overlap(s) {
                return Err(IpamError::HostOverlap {
                    subnet: s,
                    host: h.what.clone(),
                });
            }
            s
        }
        None => default_pools()
            .find(|p| !existing.iter().any(|(_, o)| overlaps(*p, *o)) && host_overlap(*p).is_none())
            .ok_or(IpamError::PoolExhausted)?,
    };
    if subnet.prefix() > 30 {
        return Err(IpamError::TooSmall(subnet));
    }
    let gateway = match req.gateway {
        Some(g) => {
            check_not_special_ip("gateway", g)?;
            check_host_address(subnet, g, "gateway")?;
            g
        }
        None => first_host(subnet),
    };
    if let Some(r) = req.ip_range {
        check_not_special_net("ip range", r)?;
        if !subnet.contains(r.network()) || r.prefix() < subnet.prefix() {
            return Err(IpamError::RangeOutsideSubnet(r, subnet));
        }
    }
    for (name, ip) in &req.aux_addresses {
        check_not_special_ip("auxiliary address", *ip)?;
        check_host_address(subnet, *ip, "auxiliary address")?;
        if *ip == gateway {
            return Err(IpamError::AuxIsGateway(name.clone(), *ip));
        }
    }
    Ok((subnet, gateway))
}

pub fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

pub fn check_host_address(
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

/// The default size of a host's block of an overlay subnet: a /26 (64
/// addresses, as `--fixed-cidr` 10.211.55.64/26 in the documents), or the
/// whole subnet if it is smaller.
pub fn default_block_prefix(subnet: Ipv4Network) -> u8 {
    subnet.prefix().max(26)
}

/// Where an address of an overlay network comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPick {
    pub ip: Ipv4Addr,
    /// A block this host must claim with the address (none free in its own).
    pub new_block: Option<Ipv4Network>,
}

/// Picks an address on overlay network `net` for an endpoint of host `me`:
/// `requested` if it is free anywhere in the cluster; else the lowest free
/// address of the host's own blocks (`blocks` lists every host's, with its
/// owner); else the first address of the first block of the subnet (or
/// ip-range) that no host holds, to be claimed with it; else, when every
/// block is held, a free address of another host's block (the claim key of
/// the address still makes it unique). `used` holds the addresses of the
/// network's endpoints on every host.
pub fn allocate_in_blocks(
    net: &Network,
    used: &HashSet<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
    blocks: &[(Ipv4Network, String)],
    me: &str,
) -> Result<BlockPick, IpamError> {
    if requested.is_some() {
        return allocate(net, used, requested).map(|ip| BlockPick {
            ip,
            new_block: None,
        });
    }
    let reserved = reserved(net);
    let range = net.ip_range.unwrap_or(net.subnet);
    let (net_lo, net_hi) = (
        u32::from(net.subnet.network()),
        u32::from(net.subnet.broadcast()),
    );
    let free = |ip: u32| {
        ip != net_lo
            && ip != net_hi
            && range.contains(Ipv4Addr::from(ip))
            && !used.contains(&Ipv4Addr::from(ip))
            && !reserved.contains(&Ipv4Addr::from(ip))
    };
    let first_free = |b: &Ipv4Network| {
        (u32::from(b.network())..=u32::from(b.broadcast()))
            .find(|ip| free(*ip))
            .map(Ipv4Addr::from)
    };
    let mut own: Vec<&Ipv4Network> = blocks
        .iter()
        .filter(|(_, n)| n == me)
        .map(|(b, _)| b)
        .collect();
    own.sort();
    if let Some(ip) = own.iter().find_map(|b| first_free(b)) {
        return Ok(BlockPick {
            ip,
            new_block: None,
        });
    }
    let prefix = if net.block_prefix == 0 {
        default_block_prefix(net.subnet)
    } else {
        net.block_prefix
    };
    let size = 1u64 << (32 - u32::from(prefix));
    let mut at = u64::from(net_lo);
    while at <= u64::from(net_hi) {
        let block = Ipv4Network::new(Ipv4Addr::from(at as u32), prefix).expect("prefix <= 32");
        at += size;
        if blocks.iter().any(|(b, _)| b.overlaps(block)) {
            continue;
        }
        if let Some(ip) = first_free(&block) {
            return Ok(BlockPick {
                ip,
                new_block: Some(block),
            });
        }
    }
    // Every block is held: borrow from another host's.
    allocate(net, used, None).map(|ip| BlockPick {
        ip,
        new_block: None,
    })
}

/// What the host of the calling thread's network namespace already uses
/// (so a daemon in a netns sees its own): the destination of every IPv4
/// route of every table (the main table, `local`, policy-routing tables)
/// and the prefix of every IPv4 address, as [`host_prefixes`] selects them.
/// The daemon's own gateways (labelled [`netns::GATEWAY_LABEL`]) are left
/// out. A netlink failure is logged and yields what could be read.
///
/// [`netns::GATEWAY_LABEL`]: crate::netns::GATEWAY_LABEL
pub fn host_routes() -> Vec<HostPrefix> {
    use futures::TryStreamExt as _;
    let dump = crate::netns::with_netlink(None, |h| async move {
        let mut links = HashMap::new();
        let mut s = h.link().get().execute();
        while let Some(m) = s.try_next().await? {
            for a in m.attributes {
                if let LinkAttribute::IfName(n) = a {
                    links.insert(m.header.index, n);
                }
            }
        }
        // A dump without strict checking returns every table.
        let mut routes = Vec::new();
        let mut s = h
            .route()
            .get(rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = s.try_next().await? {
            routes.push(m);
        }
        let mut addrs = Vec::new();
        let mut s = h.address().get().execute();
        while let Some(m) = s.try_next().await? {
            addrs.push(m);
        }
        Ok(host_prefixes(&routes, &addrs, &links))
    });
    dump.unwrap_or_else(|e| {
        tracing::warn!("reading the host's routes and addresses: {e:#}");
        Vec::new()
    })
}

/// The destinations `routes` and `addrs` (a netlink dump; `links` names
/// the ifindexes) show the host using. Left out: default routes, broadcast
/// routes (the kernel's, one per address), IPv6, and the daemon's own
/// gateways (addresses labelled [`crate::netns::GATEWAY_LABEL`]) with the
/// `local` routes the kernel made for them.
pub fn host_prefixes(
    routes: &[RouteMessage],
    addrs: &[AddressMessage],
    links: &HashMap<u32, String>,
) -> Vec<HostPrefix> {
    let dev = |i: u32| {
        links
            .get(&i)
            .cloned()
            .unwrap_or_else(|| format!("ifindex {i}"))
    };
    let mut ours = HashSet::new();
    let mut out = Vec::new();
    for a in addrs {
        if a.header.family != AddressFamily::Inet {
            continue;
        }
        let mut local = None;
        let mut label = None;
        for attr in &a.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) if local.is_none() => local = Some(*ip),
                AddressAttribute::Label(l) => label = Some(l.as_str()),
                _ => {}
            }
        }
        let Some(ip) = local else { continue };
        if label == Some(crate::netns::GATEWAY_LABEL) && a.header.prefix_len == 32 {
            ours.insert(ip);
            continue;
        }
        let Ok(net) = Ipv4Network::new(ip, a.header.prefix_len) else {
            continue;
        };
        let net = Ipv4Network::new(net.network(), net.prefix()).unwrap();
        out.push(HostPrefix {
            net,
            what: format!(
                "address {ip}/{} on {}",
                a.header.prefix_len,
                dev(a.header.index)
            ),
        });
    }
    for r in routes {
        let h = &r.header;
        if h.address_family != AddressFamily::Inet
            || h.destination_prefix_length == 0
            || h.kind == RouteType::Broadcast
        {
            continue;
        }
        let mut dst = None;
        let mut table = u32::from(h.table);
        let mut oif = None;
        for attr in &r.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let Some(dst) = dst else { continue };
        if h.kind == RouteType::Local && h.destination_prefix_length == 32 && ours.contains(&dst) {
            continue;
        }
        let Ok(net) = Ipv4Network::new(dst, h.destination_prefix_length) else {
            continue;
        };
        let mut what = match h.kind {
            RouteType::Local => format!("local route {net}"),
            RouteType::BlackHole => format!("blackhole route {net}"),
            RouteType::Unreachable => format!("unreachable route {net}"),
            RouteType::Prohibit => format!("prohibit route {net}"),
            _ => format!("route {net}"),
        };
        if let Some(i) = oif {
            what += &format!(" dev {}", dev(i));
        }
        match table {
            254 => {}
            255 => what += " (table local)",
            t => what += &format!(" (table {t})"),
        }
        out.push(HostPrefix { net, what });
    }
    out
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
            vni: 0,
            block_prefix: 0,
            vteps: Vec::new(),
            labels: BTreeMap::new(),
            attachable: false,
            docker: false,
            macvlan: None,
            dhcp: false,
        }
    }

    #[test]
    fn each_host_fills_its_own_block_then_claims_the_next() {
        let mut n = net("10.211.55.0/24", None);
        n.driver = "overlay".into();
        let mut blocks: Vec<(Ipv4Network, String)> = Vec::new();
        let mut used = HashSet::new();
        // The first host claims the first /26 (the gateway .1 is skipped).
        let p = allocate_in_blocks(&n, &used, None, &blocks, "a").unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 211, 55, 2));
        assert_eq!(p.new_block, Some("10.211.55.0/26".parse().unwrap()));
        blocks.push((p.new_block.unwrap(), "a".into()));
        used.insert(p.ip);
        // The second host claims the next one.
        let p = allocate_in_blocks(&n, &used, None, &blocks, "b").unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 211, 55, 64));
        assert_eq!(p.new_block, Some("10.211.55.64/26".parse().unwrap()));
        blocks.push((p.new_block.unwrap(), "b".into()));
        used.insert(p.ip);
        // The first host stays in its block without claiming more ...
        let p = allocate_in_blocks(&n, &used, None, &blocks, "a").unwrap();
        assert_eq!((p.ip, p.new_block), (Ipv4Addr::new(10, 211, 55, 3), None));
        // ... until it is full.
        for last in 2..64 {
            used.insert(Ipv4Addr::new(10, 211, 55, last));
        }
        let p = allocate_in_blocks(&n, &used, None, &blocks, "a").unwrap();
        assert_eq!(p.ip, Ipv4Addr::new(10, 211, 55, 128));
        assert_eq!(p.new_block, Some("10.211.55.128/26".parse().unwrap()));
        blocks.push((p.new_block.unwrap(), "a".into()));
        blocks.push(("10.211.55.192/26".parse().unwrap(), "c".into()));
        for last in 128..=254 {
            used.insert(Ipv4Addr::new(10, 211, 55, last));
        }
        // Every block held and a's full: an address of b's block, unclaimed.
        let p = allocate_in_blocks(&n, &used, None, &blocks, "a").unwrap();
        assert_eq!((p.ip, p.new_block), (Ipv4Addr::new(10, 211, 55, 65), None));
        // A requested address is checked against every host's.
        assert!(allocate_in_blocks(
            &n,
            &used,
            Some(Ipv4Addr::new(10, 211, 55, 64)),
            &blocks,
            "a"
        )
        .is_err());
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
            HostPrefix::route("172.18.5.0/24".parse().unwrap()),
            HostPrefix::route("0.0.0.0/0".parse().unwrap()),
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

    fn req(subnet: &str) -> NetworkRequest {
        NetworkRequest {
            subnet: Some(subnet.parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn special_ranges_are_refused_as_subnets_with_one_clear_line() {
        for (subnet, range) in [
            ("127.0.0.0/24", "127.0.0.0/8 (loopback)"),
            ("127.0.0.0/8", "127.0.0.0/8 (loopback)"),
            ("224.0.0.0/24", "224.0.0.0/4 (multicast)"),
            ("239.255.0.0/16", "224.0.0.0/4 (multicast)"),
            ("0.0.0.0/8", "0.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/8"),
            ("240.0.0.0/24", "240.0.0.0/4 (reserved, class E)"),
            (
                "255.255.255.252/30",
                "255.255.255.255/32 (the limited broadcast address)",
            ),
            // Wide subnets that merely contain a special range.
            ("96.0.0.0/3", "127.0.0.0/8 (loopback)"),
            ("192.0.0.0/2", "224.0.0.0/4 (multicast)"),
        ] {
            let e = plan_network(&req(subnet), &[], &[]).unwrap_err();
            assert!(
                matches!(e, IpamError::SpecialRange { what: "subnet", .. }),
                "{subnet}: {e:?}"
            );
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("subnet {subnet} overlaps {range}")),
                "{subnet}: {msg}"
            );
            assert!(!msg.contains('\n'));
        }
        // Next to them is fine.
        for ok in [
            "126.255.255.0/24",
            "128.0.0.0/24",
            "223.255.255.0/24",
            "1.0.0.0/24",
        ] {
            assert!(plan_network(&req(ok), &[], &[]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn special_gateways_ranges_and_aux_addresses_are_refused() {
        let mut r = req("10.1.0.0/24");
        for (gw, kind) in [
            ("127.0.0.1", "is a loopback address (127.0.0.0/8)"),
            ("224.0.0.1", "is a multicast address (224.0.0.0/4)"),
            ("0.0.0.1", "is in \"this network\" (RFC 1122) (0.0.0.0/8)"),
            (
                "255.255.255.255",
                "is the limited broadcast address (255.255.255.255/32)",
            ),
            ("250.0.0.1", "is a reserved (class E) address (240.0.0.0/4)"),
        ] {
            r.gateway = Some(gw.parse().unwrap());
            let e = plan_network(&r, &[], &[]).unwrap_err();
            assert!(
                matches!(
                    e,
                    IpamError::SpecialAddress {
                        what: "gateway",
                        ..
                    }
                ),
                "{gw}: {e:?}"
            );
            assert!(
                e.to_string().starts_with(&format!("gateway {gw} {kind}")),
                "{gw}: {e}"
            );
        }
        r.gateway = None;
        r.ip_range = Some("127.0.0.0/25".parse().unwrap());
        assert!(matches!(
            plan_network(&r, &[], &[]),
            Err(IpamError::SpecialRange {
                what: "ip range",
                ..
            })
        ));
        r.ip_range = None;
        r.aux_addresses
            .insert("lo".into(), "127.0.0.1".parse().unwrap());
        assert!(matches!(
            plan_network(&r, &[], &[]),
            Err(IpamError::SpecialAddress {
                what: "auxiliary address",
                ..
            })
        ));
    }

    #[test]
    fn a_subnet_the_host_uses_is_refused_and_skipped_by_the_pool() {
        let host = [
            HostPrefix {
                net: "10.40.0.0/16".parse().unwrap(),
                what: "route 10.40.0.0/16 dev eth1".into(),
            },
            HostPrefix {
                net: "172.17.0.0/16".parse().unwrap(),
                what: "address 172.17.0.1/16 on docker0".into(),
            },
            HostPrefix {
                net: "172.18.0.7/32".parse().unwrap(),
                what: "address 172.18.0.7/32 on lo".into(),
            },
            HostPrefix::route("0.0.0.0/0".parse().unwrap()),
        ];
        let e = plan_network(&req("10.40.3.0/24"), &[], &host).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet 10.40.3.0/24 overlaps route 10.40.0.0/16 dev eth1 of this host: \
             choose a subnet the host does not use"
        );
        assert!(matches!(
            plan_network(&req("10.0.0.0/8"), &[], &host),
            Err(IpamError::HostOverlap { .. })
        ));
        assert!(matches!(
            plan_network(&req("172.18.0.0/24"), &[], &host),
            Err(IpamError::HostOverlap { .. })
        ));
        // A network of the daemon is named first (a conflict, not bad input).
        assert!(matches!(
            plan_network(&req("10.40.3.0/24"), &existing(&["10.40.3.0/25"]), &host),
            Err(IpamError::Overlap { .. })
        ));
        // The default route overlaps everything and counts for nothing.
        assert!(plan_network(&req("10.41.0.0/16"), &[], &host).is_ok());
        // The pool skips 172.17 (an address) and 172.18 (a /32 on lo).
        let (s, g) = plan_network(&NetworkRequest::default(), &[], &host).unwrap();
        assert_eq!(
            (s.to_string(), g.to_string()),
            ("172.19.0.0/16".into(), "172.19.0.1".into())
        );
    }

    /// What `ip -4 route show table all` and `ip -4 addr` show on a typical
    /// host, as the kernel's netlink dump gives them.
    fn typical_host() -> (Vec<RouteMessage>, Vec<AddressMessage>, HashMap<u32, String>) {
        use rtnetlink::{
            packet_route::route::RouteScope, AddressMessageBuilder, RouteMessageBuilder,
        };
        // oif 0: none (a blackhole route has no device).
        let route = |dst: &str, p: u8, table: u32, kind: RouteType, oif: u32| {
            let b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.parse().unwrap(), p)
                .table_id(table)
                .kind(kind)
                .scope(RouteScope::Link);
            if oif == 0 { b } else { b.output_interface(oif) }.build()
        };
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway("192.168.1.1".parse().unwrap())
            .output_interface(2)
            .build();
        let routes = vec![
            default,
            route("192.168.1.0", 24, 254, RouteType::Unicast, 2),
            // A VPN's routes in a policy-routing table.
            route("10.8.0.0", 16, 1000, RouteType::Unicast, 3),
            route("10.99.0.0", 16, 254, RouteType::BlackHole, 0),
            route("127.0.0.0", 8, 255, RouteType::Local, 1),
            route("127.0.0.1", 32, 255, RouteType::Local, 1),
            route("127.255.255.255", 32, 255, RouteType::Broadcast, 1),
            route("192.168.1.20", 32, 255, RouteType::Local, 2),
            route("192.168.1.255", 32, 255, RouteType::Broadcast, 2),
            // The kernel's local route for the daemon's gateway.
            route("172.17.0.1", 32, 255, RouteType::Local, 1),
            route("10.7.0.1", 32, 255, RouteType::Local, 1),
        ];
        let addr = |ip: &str, p: u8, index: u32, label: &str| {
            let mut m = AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(ip.parse().unwrap(), p)
                .build();
            m.attributes.push(AddressAttribute::Label(label.into()));
            m
        };
        let addrs = vec![
            addr("127.0.0.1", 8, 1, "lo"),
            addr("192.168.1.20", 24, 2, "eth0"),
            // A /32 someone put on lo, and the daemon's gateway.
            addr("10.7.0.1", 32, 1, "lo"),
            addr("172.17.0.1", 32, 1, crate::netns::GATEWAY_LABEL),
            // An address whose prefix route lives in another table.
            addr("10.20.0.5", 24, 3, "wg0"),
        ];
        let links = [(1, "lo"), (2, "eth0"), (3, "wg0")]
            .into_iter()
            .map(|(i, n)| (i, n.to_string()))
            .collect();
        (routes, addrs, links)
    }

    #[test]
    fn host_routes_parse() {
        let (routes, addrs, links) = typical_host();
        let got: Vec<(String, String)> = host_prefixes(&routes, &addrs, &links)
            .into_iter()
            .map(|h| (h.net.to_string(), h.what))
            .collect();
        let want: Vec<(String, String)> = [
            ("127.0.0.0/8", "address 127.0.0.1/8 on lo"),
            ("192.168.1.0/24", "address 192.168.1.20/24 on eth0"),
            ("10.7.0.1/32", "address 10.7.0.1/32 on lo"),
            ("10.20.0.0/24", "address 10.20.0.5/24 on wg0"),
            ("192.168.1.0/24", "route 192.168.1.0/24 dev eth0"),
            ("10.8.0.0/16", "route 10.8.0.0/16 dev wg0 (table 1000)"),
            ("10.99.0.0/16", "blackhole route 10.99.0.0/16"),
            (
                "127.0.0.0/8",
                "local route 127.0.0.0/8 dev lo (table local)",
            ),
            (
                "127.0.0.1/32",
                "local route 127.0.0.1/32 dev lo (table local)",
            ),
            (
                "192.168.1.20/32",
                "local route 192.168.1.20/32 dev eth0 (table local)",
            ),
            (
                "10.7.0.1/32",
                "local route 10.7.0.1/32 dev lo (table local)",
            ),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want, "no default route, broadcast or daemon gateway");
        // And so, through plan_network:
        let host = host_prefixes(&routes, &addrs, &links);
        for taken in [
            "10.7.0.0/24",
            "10.20.0.0/16",
            "10.8.1.0/24",
            "192.168.0.0/16",
        ] {
            assert!(
                matches!(
                    plan_network(&req(taken), &[], &host),
                    Err(IpamError::HostOverlap { .. })
                ),
                "{taken}"
            );
        }
        // The daemon's own gateway does not count (its network does, as a
        // network), nor does the default route.
        assert!(plan_network(&req("172.17.0.0/16"), &[], &host).is_ok());
        assert!(plan_network(&req("10.30.0.0/16"), &[], &host).is_ok());
    }

    /// The live dump, in a private network namespace (needs root): a route
    /// in another table, a /32 on lo and the daemon's gateway.
    #[test]
    fn host_routes_reads_every_table_and_address() {
        let got = crate::testutil::try_in_private_netns(|| {
            let ip = |args: &[&str]| {
                std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            let ok = ip(&["link", "set", "lo", "up"])
                && ip(&["addr", "add", "10.61.0.9/32", "dev", "lo"])
                && ip(&["route", "add", "unreachable", "10.62.0.0/16", "table", "77"]);
            assert!(ok, "setting up the namespace");
            crate::netns::ensure_gateway("10.63.0.1".parse().unwrap()).unwrap();
            host_routes()
        });
        let Some(got) = got else {
            eprintln!("skipped: needs root for a private network namespace");
            return;
        };
        let has = |net: &str, what: &str| {
            got.iter()
                .any(|h| h.net.to_string() == net && h.what == what)
        };
        assert!(has("10.61.0.9/32", "address 10.61.0.9/32 on lo"), "{got:?}");
        assert!(
            has("10.62.0.0/16", "unreachable route 10.62.0.0/16 (table 77)"),
            "{got:?}"
        );
        assert!(has("127.0.0.0/8", "address 127.0.0.1/8 on lo"), "{got:?}");
        assert!(
            !got.iter()
                .any(|h| h.net.contains("10.63.0.1".parse().unwrap())),
            "the daemon's gateway is not the host's: {got:?}"
        );
    }
}

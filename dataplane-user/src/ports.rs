//! Published ports: Docker's `run -p` and `-P`, owned by the control plane.
//!
//! - [`parse_publish`] reads every `-p` form Docker accepts into
//!   [`PortRequest`]s. It is pure, and the daemon calls it (the CLI passes
//!   the strings through), so every front door shares one parser.
//! - [`Taken`] applies Docker's conflict rule: two bindings of one protocol
//!   and host port collide when either is on every address (0.0.0.0) or both
//!   are on the same one.
//! - [`allocate`] chooses the host ports and reserves each with a socket
//!   bound on the host ip:port in the daemon's namespace (TCP bound without
//!   `listen`, UDP bound), held for the binding's life, as docker-proxy and
//!   Podman hold theirs. A port a host process holds fails clearly, the
//!   host's own ephemeral ports stay off published ports, and "any free
//!   port" is the kernel's atomic choice from `ip_local_port_range`.
//! - The rest formats bindings as Docker shows them (`port`, `ps`,
//!   `inspect`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, OwnedFd},
};

use nix::{
    errno::Errno,
    sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn},
};
use serde_json::{json, Value};

use crate::{
    api::PublishedPort,
    model::{PortBinding, Proto},
};

/// The `-p` grammar, for messages.
pub const PUBLISH_FORMS: &str = "[[IP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]";

/// How many times a kernel-chosen port that the model says is taken (its
/// reservation could not be re-made after a restart) is skipped.
const EPHEMERAL_ATTEMPTS: usize = 64;

/// One container port to publish, as asked (before a host port is chosen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortRequest {
    pub proto: Proto,
    /// The host address as given (`None`: not given, i.e. every address).
    pub host_ip: Option<Ipv4Addr>,
    /// `None`: any free port; `Some((a, b))`: a free port of `a..=b`
    /// (exactly `a` when `a == b`).
    pub host_ports: Option<(u16, u16)>,
    pub container_port: u16,
}

impl PortRequest {
    /// The `HostPort` Docker shows for the request: empty, `8080` or
    /// `8000-8010`.
    pub fn host_port_str(&self) -> String {
        match self.host_ports {
            None => String::new(),
            Some((a, b)) if a == b => a.to_string(),
            Some((a, b)) => format!("{a}-{b}"),
        }
    }

    /// The host address the request binds (`None` for every address).
    fn bind_ip(&self) -> Option<Ipv4Addr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// Why publishing failed, by the API status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// A malformed request, or a host address that is not local (400).
    #[error("{0}")]
    Invalid(String),
    /// The port is published already or held by a host process (409).
    #[error("{0}")]
    Conflict(String),
    /// Anything else the kernel refused (500).
    #[error("{0}")]
    Internal(String),
}

fn port_number(s: &str, what: &str) -> Result<u16, String> {
    s.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| s.parse::<u32>().ok())
        .flatten()
        .filter(|n| (1..=65535).contains(n))
        .map(|n| n as u16)
        .ok_or_else(|| format!("invalid {what} {s:?}: ports are numbers from 1 to 65535"))
}

/// `PORT` or `PORT-PORT` (start not above end).
fn port_range(s: &str, what: &str) -> Result<(u16, u16), String> {
    let Some((a, b)) = s.split_once('-') else {
        let p = port_number(s, what)?;
        return Ok((p, p));
    };
    let (a, b) = (port_number(a, what)?, port_number(b, what)?);
    if a > b {
        return Err(format!(
            "invalid {what} range {s:?}: the start is above the end"
        ));
    }
    Ok((a, b))
}

/// Parses one `-p` argument in any form Docker accepts: `CPORT`,
/// `HOSTPORT:CPORT`, `IP:HOSTPORT:CPORT`, `IP::CPORT`, ranges
/// `H1-H2:C1-C2` (equal lengths, mapped pairwise), `H1-H2:CPORT` (one free
/// port of the host range) and `C1-C2` (each onto any free port), each with
/// an optional `/tcp` or `/udp`. Returns one request per container port.
pub fn parse_publish(spec: &str) -> Result<Vec<PortRequest>, String> {
    let err = |why: String| format!("invalid -p {spec:?}: {why}");
    if spec.is_empty() {
        return Err(err(format!("empty; expected {PUBLISH_FORMS}")));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts[..] {
        [c] => ("", "", c),
        [h, c] => ("", h, c),
        [i, h, c] => (i, h, c),
        _ if spec.starts_with('[') => {
            return Err(err("IPv6 host addresses are not supported".into()))
        }
        _ => return Err(err(format!("too many colons; expected {PUBLISH_FORMS}"))),
    };
    let (container, proto) = match container.split_once('/') {
        Some((c, p)) => (c, p),
        None => (container, "tcp"),
    };
    let proto: Proto = proto.parse().map_err(err)?;
    if container.is_empty() {
        return Err(err(format!("no container port; expected {PUBLISH_FORMS}")));
    }
    let (c0, c1) = port_range(container, "container port").map_err(err)?;
    let host_ip = match ip {
        "" => None,
        ip if ip.starts_with('[') => {
            return Err(err("IPv6 host addresses are not supported".into()))
        }
        ip => Some(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| err(format!("invalid host IP {ip:?}: not an IPv4 address")))?,
        ),
    };
    let host = match host {
        "" => None,
        h => Some(port_range(h, "host port").map_err(|e| {
            if h.parse::<Ipv4Addr>().is_ok() {
                err(format!(
                    "{e} (a host IP goes first: IP:HOSTPORT:CONTAINERPORT or IP::CONTAINERPORT)"
                ))
            } else {
                err(e)
            }
        })?),
    };
    if let Some((h0, h1)) = host {
        if c0 != c1 && h1 - h0 != c1 - c0 {
            return Err(err(format!(
                "the host port range {} and the container port range {container} differ in length",
                parts[parts.len() - 2]
            )));
        }
    }
    Ok((c0..=c1)
        .map(|c| PortRequest {
            proto,
            host_ip,
            host_ports: host.map(|(h0, h1)| {
                if c0 == c1 {
                    (h0, h1)
                } else {
                    (h0 + (c - c0), h0 + (c - c0))
                }
            }),
            container_port: c,
        })
        .collect())
}

/// `80`, `80/tcp`, `53/udp` (as `dataplane port` takes it) -> (80, Tcp).
pub fn parse_private_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto: Proto = proto
        .parse()
        .map_err(|_| format!("invalid port {s:?}: protocol {proto:?} is not tcp or udp"))?;
    let port = port_number(port, "port").map_err(|e| format!("{e} (expected PORT[/tcp|udp])"))?;
    Ok((port, proto))
}

/// `-P`: a request for every exposed port (`80/tcp` strings) onto any free
/// host port on every address, except ports `-p` already publishes (as
/// Docker skips them).
pub fn publish_all_requests(exposed: &[String], explicit: &[PortRequest]) -> Vec<PortRequest> {
    let mut seen: BTreeSet<(u16, Proto)> = explicit
        .iter()
        .map(|r| (r.container_port, r.proto))
        .collect();
    exposed
        .iter()
        .filter_map(|e| {
            let (port, proto) = parse_private_port(e).ok()?;
            seen.insert((port, proto)).then_some(PortRequest {
                proto,
                host_ip: None,
                host_ports: None,
                container_port: port,
            })
        })
        .collect()
}

/// Docker's conflict rule for two bindings.
pub fn conflicts(a: &PortBinding, b: &PortBinding) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// The published host ports, indexed for [`conflicts`] checks.
#[derive(Clone, Debug, Default)]
pub struct Taken(HashMap<(Proto, u16), Vec<Option<Ipv4Addr>>>);

impl Taken {
    pub fn new<'a>(bindings: impl IntoIterator<Item = &'a PortBinding>) -> Self {
        let mut t = Taken::default();
        for b in bindings {
            t.insert(b);
        }
        t
    }

    pub fn insert(&mut self, b: &PortBinding) {
        self.0
            .entry((b.proto, b.host_port))
            .or_default()
            .push(b.host_ip.filter(|ip| !ip.is_unspecified()));
    }

    /// Whether `proto` `ip:port` (`None`: every address) collides with a
    /// binding held here.
    pub fn collides(&self, proto: Proto, ip: Option<Ipv4Addr>, port: u16) -> bool {
        let ip = ip.filter(|ip| !ip.is_unspecified());
        let candidate = PortBinding {
            proto,
            host_ip: ip,
            host_port: port,
            container_port: 0,
        };
        self.0.get(&(proto, port)).is_some_and(|ips| {
            ips.iter().any(|other| {
                conflicts(
                    &candidate,
                    &PortBinding {
                        host_ip: *other,
                        ..candidate.clone()
                    },
                )
            })
        })
    }
}

fn ip_str(ip: Option<Ipv4Addr>) -> String {
    ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string()
}

/// Docker's message for a port another binding holds.
pub fn already_allocated(ip: Option<Ipv4Addr>, port: &str) -> PortError {
    PortError::Conflict(format!(
        "Bind for {}:{port} failed: port is already allocated",
        ip_str(ip)
    ))
}

/// Most host ports one container may publish. Each is a socket the daemon
/// holds for the container's life, and a container holding every port
/// would leave the host none for its own servers, nor for its outgoing
/// connections (a bound socket keeps its port out of the kernel's
/// ephemeral choice). The NAT benchmark publishes up to 10,000.
pub const MAX_PORTS_PER_CONTAINER: usize = 16_384;

/// Open files the daemon keeps free for everything but reservations:
/// sandboxes' DNS sockets, netlink, netns and BPF handles, API connections.
pub const FD_HEADROOM: u64 = 1024;

/// Whether `n` more reservations fit: at most [`MAX_PORTS_PER_CONTAINER`]
/// for one container, and no more than the daemon can still open (it holds
/// `open` files of a limit of `limit`, and keeps [`FD_HEADROOM`] spare).
pub fn check_budget(n: usize, open: u64, limit: u64) -> Result<(), PortError> {
    if n > MAX_PORTS_PER_CONTAINER {
        return Err(PortError::Invalid(format!(
            "cannot publish {n} ports for one container: the most is {MAX_PORTS_PER_CONTAINER} \
             (each holds a host port); publish a smaller range"
        )));
    }
    let free = limit.saturating_sub(open).saturating_sub(FD_HEADROOM);
    if n as u64 > free {
        return Err(PortError::Invalid(format!(
            "cannot publish {n} ports: each holds an open file of the daemon, which has {open} \
             open of its limit of {limit} and keeps {FD_HEADROOM} spare, so {free} more fit; \
             publish fewer ports, or raise the daemon's open-files limit (ulimit -n, \
             LimitNOFILE=) and restart it"
        )));
    }
    Ok(())
}

/// Refuses, before anything is created or bound: more ports than
/// [`check_budget`] allows, and requests for an exact host port that
/// collides with `taken` or with an earlier request of the same list.
pub fn precheck(reqs: &[PortRequest], taken: &Taken) -> Result<(), PortError> {
    if let Some((open, limit)) = crate::host::fd_usage() {
        check_budget(reqs.len(), open, limit)?;
    } else {
        check_budget(reqs.len(), 0, u64::MAX)?;
    }
    let mut taken = taken.clone();
    for r in reqs {
        let Some((a, _)) = r.host_ports.filter(|(a, b)| a == b) else {
            continue;
        };
        if taken.collides(r.proto, r.bind_ip(), a) {
            return Err(already_allocated(r.bind_ip(), &a.to_string()));
        }
        taken.insert(&PortBinding {
            proto: r.proto,
            host_ip: r.bind_ip(),
            host_port: a,
            container_port: r.container_port,
        });
    }
    Ok(())
}

/// A host port held for a published binding: a socket bound on the host
/// ip:port in the daemon's namespace (close-on-exec). Dropping it frees the
/// port.
#[derive(Debug)]
pub struct Reservation {
    _fd: OwnedFd,
}

/// Whether a reservation leaves room for the container's runtime to hold
/// the port as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Ours alone (what `run -p` and Docker attachments get).
    Exclusive,
    /// A CNI runtime may hold it too: Podman's conmon binds and listens on
    /// every published port with SO_REUSEADDR (Go's default) after the
    /// plugin's ADD, in the same namespace. Two TCP sockets with
    /// SO_REUSEADDR share a port while at most one listens, so ours is
    /// bound with it; a host process's plain bind still fails. UDP cannot
    /// be shared this way (Go binds UDP without SO_REUSEADDR), so a UDP
    /// port is only checked free and chosen, then left to the runtime to
    /// hold, as CNI's own portmap plugin leaves it.
    WithRuntime,
}

/// Reserves as `sharing` says: `None` when the port is the runtime's to
/// hold (UDP of [`Sharing::WithRuntime`]), after checking that it is free.
pub fn hold(
    proto: &Proto,
    ip: Option<Ipv4Addr>,
    port: u16,
    sharing: Sharing,
) -> Result<(Option<Reservation>, u16), Errno> {
    let (r, p) = reserve_shared(proto, ip, port, sharing)?;
    Ok((kept(proto, sharing, r), p))
}

/// A reservation made to check or choose a port, kept unless the runtime
/// holds the port ([`hold`]).
fn kept(proto: &Proto, sharing: Sharing, r: Reservation) -> Option<Reservation> {
    let runtimes = *proto == Proto::Udp && sharing == Sharing::WithRuntime;
    (!runtimes).then_some(r)
}

/// Binds a `proto` socket on `ip:port` (`None`: 0.0.0.0; port 0: the kernel
/// picks a free one) without listening. Returns it and the port it holds.
pub fn reserve(
    proto: &Proto,
    ip: Option<Ipv4Addr>,
    port: u16,
) -> Result<(Reservation, u16), Errno> {
    reserve_shared(proto, ip, port, Sharing::Exclusive)
}

/// [`reserve`], shared as `sharing` says.
pub fn reserve_shared(
    proto: &Proto,
    ip: Option<Ipv4Addr>,
    port: u16,
    sharing: Sharing,
) -> Result<(Reservation, u16), Errno> {
    let ty = match proto {
        Proto::Udp => SockType::Datagram,
        Proto::Tcp => SockType::Stream,
    };
    let fd = socket::socket(AddressFamily::Inet, ty, SockFlag::SOCK_CLOEXEC, None)?;
    if ty == SockType::Stream && sharing == Sharing::WithRuntime {
        socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    }
    let addr = SockaddrIn::from(SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port));
    socket::bind(fd.as_raw_fd(), &addr)?;
    let bound = if port == 0 {
        socket::getsockname::<SockaddrIn>(fd.as_raw_fd())?.port()
    } else {
        port
    };
    Ok((Reservation { _fd: fd }, bound))
}

/// The error for a failed bind of `proto` `ip:port` (port 0: any port).
fn bind_error(proto: Proto, ip: Option<Ipv4Addr>, port: u16, e: Errno) -> PortError {
    let what = if port == 0 {
        format!(
            "failed to bind a free host port on {} ({proto})",
            ip_str(ip)
        )
    } else {
        format!("failed to bind host port {}:{port}/{proto}", ip_str(ip))
    };
    match e {
        Errno::EADDRINUSE => PortError::Conflict(format!("{what}: address already in use")),
        Errno::EADDRNOTAVAIL => PortError::Invalid(format!(
            "{what}: {} is not an address of this host",
            ip_str(ip)
        )),
        Errno::EMFILE | Errno::ENFILE => PortError::Internal(format!(
            "{what}: {}: publish fewer ports, or raise the daemon's open-files limit \
             (ulimit -n, LimitNOFILE=) and restart it",
            e.desc()
        )),
        e => PortError::Internal(format!("{what}: {}", e.desc())),
    }
}

/// Chooses a host port for each request and reserves it: exact ports first,
/// then one free port of each host range, then any free port (the kernel's
/// choice). Skips what `taken` holds and what each earlier choice takes.
/// Returns the bindings (in request order) and their reservations; on error
/// every reservation made so far is released.
pub fn allocate(
    reqs: &[PortRequest],
    taken: &Taken,
) -> Result<(Vec<PortBinding>, Vec<Reservation>), PortError> {
    allocate_shared(reqs, taken, Sharing::Exclusive)
}

/// [`allocate`], its reservations shared as `sharing` says.
pub fn allocate_shared(
    reqs: &[PortRequest],
    taken: &Taken,
    sharing: Sharing,
) -> Result<(Vec<PortBinding>, Vec<Reservation>), PortError> {
    let mut taken = taken.clone();
    let mut chosen: Vec<Option<PortBinding>> = vec![None; reqs.len()];
    let mut held = Vec::with_capacity(reqs.len());
    let class = |r: &PortRequest| match r.host_ports {
        Some((a, b)) if a == b => 0,
        Some(_) => 1,
        None => 2,
    };
    for pass in 0..3 {
        for (i, r) in reqs.iter().enumerate().filter(|(_, r)| class(r) == pass) {
            let ip = r.bind_ip();
            let port = match r.host_ports {
                Some((a, b)) if a == b => {
                    if taken.collides(r.proto, ip, a) {
                        return Err(already_allocated(ip, &a.to_string()));
                    }
                    let (res, _) = hold(&r.proto, ip, a, sharing)
                        .map_err(|e| bind_error(r.proto, ip, a, e))?;
                    held.extend(res);
                    a
                }
                Some((a, b)) => {
                    let mut found = None;
                    for p in a..=b {
                        if taken.collides(r.proto, ip, p) {
                            continue;
                        }
                        match hold(&r.proto, ip, p, sharing) {
                            Ok((res, _)) => {
                                held.extend(res);
                                found = Some(p);
                                break;
                            }
                            Err(Errno::EADDRINUSE) => continue,
                            Err(e) => return Err(bind_error(r.proto, ip, p, e)),
                        }
                    }
                    found.ok_or_else(|| {
                        PortError::Conflict(format!(
                            "Bind for {}:{a}-{b} failed: all ports are allocated",
                            ip_str(ip)
                        ))
                    })?
                }
                None => {
                    // Skipped ports stay held until the choice is made, so
                    // the kernel does not offer them again.
                    let mut skipped = Vec::new();
                    let mut found = None;
                    for _ in 0..EPHEMERAL_ATTEMPTS {
                        match reserve_shared(&r.proto, ip, 0, sharing) {
                            Ok((res, p)) if taken.collides(r.proto, ip, p) => skipped.push(res),
                            Ok((res, p)) => {
                                held.extend(kept(&r.proto, sharing, res));
                                found = Some(p);
                                break;
                            }
                            Err(Errno::EADDRINUSE) => break,
                            Err(e) => return Err(bind_error(r.proto, ip, 0, e)),
                        }
                    }
                    found.ok_or_else(|| {
                        PortError::Conflict(format!(
                            "no free host port on {} for {}/{}: all ports are allocated",
                            ip_str(ip),
                            r.container_port,
                            r.proto
                        ))
                    })?
                }
            };
            let b = PortBinding {
                proto: r.proto,
                host_ip: ip,
                host_port: port,
                container_port: r.container_port,
            };
            taken.insert(&b);
            chosen[i] = Some(b);
        }
    }
    Ok((chosen.into_iter().flatten().collect(), held))
}

// ----- how Docker shows them ------------------------------------------------

/// The bindings as the API's port list (`dataplane port --format json`).
pub fn api_ports(bindings: &[PortBinding]) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = bindings
        .iter()
        .map(|b| PublishedPort {
            private_port: b.container_port,
            proto: b.proto,
            ip: ip_str(b.host_ip),
            public_port: b.host_port,
        })
        .collect();
    sort_published(&mut out);
    out
}

/// Docker's `port` order: private port, protocol, host address, host port.
pub fn sort_published(ports: &mut [PublishedPort]) {
    ports.sort_by_key(|p| {
        (
            p.private_port,
            p.proto,
            p.ip.parse::<Ipv4Addr>().map(u32::from).unwrap_or(0),
            p.public_port,
        )
    });
}

/// `dataplane port` lines: `80/tcp -> 0.0.0.0:8080`, or, for one private
/// port (`filter`), only `0.0.0.0:8080`.
pub fn port_lines(ports: &[PublishedPort], filter: Option<(u16, Proto)>) -> Vec<String> {
    let mut ports = ports.to_vec();
    sort_published(&mut ports);
    ports
        .iter()
        .filter(|p| filter.is_none_or(|(port, proto)| p.private_port == port && p.proto == proto))
        .map(|p| match filter {
            Some(_) => format!("{}:{}", p.ip, p.public_port),
            None => format!(
                "{}/{} -> {}:{}",
                p.private_port, p.proto, p.ip, p.public_port
            ),
        })
        .collect()
}

/// Every port of the container as Docker counts them exposed: `--expose`d
/// ones (`80/tcp` strings) and published ones, sorted, without repeats.
fn exposed_set(exposed: &[String], bindings: &[PortBinding]) -> BTreeSet<(u16, Proto)> {
    let mut set: BTreeSet<(u16, Proto)> = exposed
        .iter()
        .filter_map(|e| parse_private_port(e).ok())
        .collect();
    set.extend(bindings.iter().map(|b| (b.container_port, b.proto)));
    set
}

/// [`exposed_set`] as Docker's strings, `(80, "tcp")`, for the link
/// environment (`ALIAS_PORT_80_TCP_PROTO=tcp`).
pub fn exposed_ports(exposed: &[String], bindings: &[PortBinding]) -> Vec<(u16, String)> {
    exposed_set(exposed, bindings)
        .into_iter()
        .map(|(p, proto)| (p, proto.to_string()))
        .collect()
}

/// `ps`'s PORTS column, as Docker's `DisplayablePorts` writes it: exposed
/// but unpublished ports as `80/tcp`, published ones as
/// `0.0.0.0:8080->80/tcp`, runs of equal host and container ports grouped
/// (`0.0.0.0:8000-8002->8000-8002/tcp`), joined by `, `.
pub fn ps_ports(exposed: &[String], bindings: &[PortBinding]) -> String {
    // (private, ip or "", public, proto), in Docker's order.
    let mut ports: Vec<(u16, String, u16, Proto)> = bindings
        .iter()
        .map(|b| (b.container_port, ip_str(b.host_ip), b.host_port, b.proto))
        .collect();
    for (port, proto) in exposed_set(exposed, &[]) {
        if !bindings
            .iter()
            .any(|b| b.container_port == port && b.proto == proto)
        {
            ports.push((port, String::new(), 0, proto));
        }
    }
    ports.sort();
    let mut groups: HashMap<String, (u16, u16)> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut result = Vec::new();
    let mut mappings = Vec::new();
    let form = |key: &str, (first, last): (u16, u16)| {
        let (ip, proto) = key.split_once('/').unwrap_or(("", key));
        let mut g = first.to_string();
        if first != last {
            g = format!("{g}-{last}");
        }
        if !ip.is_empty() {
            g = format!("{ip}:{g}->{g}");
        }
        format!("{g}/{proto}")
    };
    for (private, ip, public, proto) in ports {
        let key = if ip.is_empty() {
            proto.to_string()
        } else if public != private {
            mappings.push(format!("{ip}:{public}->{private}/{proto}"));
            continue;
        } else {
            format!("{ip}/{proto}")
        };
        match groups.get_mut(&key) {
            None => {
                groups.insert(key.clone(), (private, private));
                order.push(key);
            }
            Some(g) if g.1.checked_add(1) == Some(private) => g.1 = private,
            Some(g) => {
                result.push(form(&key, *g));
                *g = (private, private);
            }
        }
    }
    for key in order {
        result.push(form(&key, groups[&key]));
    }
    result.extend(mappings);
    result.join(", ")
}

/// `inspect`'s `NetworkSettings.Ports`: every exposed port, mapped to its
/// host bindings (`[{"HostIp": "0.0.0.0", "HostPort": "8080"}]`) or `null`.
pub fn network_settings_ports(exposed: &[String], bindings: &[PortBinding]) -> Value {
    let mut out = serde_json::Map::new();
    for (port, proto) in exposed_set(exposed, bindings) {
        let mut hosts: Vec<&PortBinding> = bindings
            .iter()
            .filter(|b| b.container_port == port && b.proto == proto)
            .collect();
        hosts.sort_by_key(|b| (b.host_ip.map(u32::from).unwrap_or(0), b.host_port));
        let v = if hosts.is_empty() {
            Value::Null
        } else {
            hosts
                .iter()
                .map(|b| json!({"HostIp": ip_str(b.host_ip), "HostPort": b.host_port.to_string()}))
                .collect()
        };
        out.insert(format!("{port}/{proto}"), v);
    }
    Value::Object(out)
}

/// `inspect`'s `HostConfig.PortBindings`: the `-p` requests as given
/// (`HostIp` empty when not given, `HostPort` empty for any port or a
/// range for one of a range).
pub fn host_config_port_bindings(specs: &[String]) -> Value {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in specs.iter().filter_map(|s| parse_publish(s).ok()).flatten() {
        out.entry(format!("{}/{}", r.container_port, r.proto))
            .or_default()
            .push(json!({
                "HostIp": r.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                "HostPort": r.host_port_str(),
            }));
    }
    json!(out)
}

/// `inspect`'s `Config.ExposedPorts`: `{"80/tcp": {}}`.
pub fn exposed_ports_json(exposed: &[String], bindings: &[PortBinding]) -> Value {
    exposed_set(exposed, bindings)
        .into_iter()
        .map(|(p, proto)| (format!("{p}/{proto}"), json!({})))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{lo_up, try_in_private_netns};

    fn req(proto: &str, ip: Option<&str>, host: Option<(u16, u16)>, c: u16) -> PortRequest {
        PortRequest {
            proto: proto.parse().unwrap(),
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_ports: host,
            container_port: c,
        }
    }

    fn bind(proto: &str, ip: Option<&str>, host: u16, c: u16) -> PortBinding {
        PortBinding {
            proto: proto.parse().unwrap(),
            host_ip: ip.map(|s| s.parse().unwrap()),
            host_port: host,
            container_port: c,
        }
    }

    #[test]
    fn parses_every_docker_form() {
        let p = |s| parse_publish(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(p("8080:80"), vec![req("tcp", None, Some((8080, 8080)), 80)]);
        assert_eq!(
            p("127.0.0.1:8080:80"),
            vec![req("tcp", Some("127.0.0.1"), Some((8080, 8080)), 80)]
        );
        assert_eq!(
            p("127.0.0.1::80"),
            vec![req("tcp", Some("127.0.0.1"), None, 80)]
        );
        assert_eq!(p("80"), vec![req("tcp", None, None, 80)]);
        assert_eq!(p("::80"), vec![req("tcp", None, None, 80)]);
        assert_eq!(
            p(":8080:80"),
            vec![req("tcp", None, Some((8080, 8080)), 80)]
        );
        assert_eq!(p(":80"), vec![req("tcp", None, None, 80)]);
        assert_eq!(p("53/udp"), vec![req("udp", None, None, 53)]);
        assert_eq!(
            p("5353:53/UDP"),
            vec![req("udp", None, Some((5353, 5353)), 53)]
        );
        assert_eq!(
            p("8080:80/tcp"),
            vec![req("tcp", None, Some((8080, 8080)), 80)]
        );
        assert_eq!(
            p("0.0.0.0:8080:80"),
            vec![req("tcp", Some("0.0.0.0"), Some((8080, 8080)), 80)]
        );
        assert_eq!(
            p("8000-8002:80-82/udp"),
            vec![
                req("udp", None, Some((8000, 8000)), 80),
                req("udp", None, Some((8001, 8001)), 81),
                req("udp", None, Some((8002, 8002)), 82),
            ]
        );
        assert_eq!(
            p("8000-8010:80"),
            vec![req("tcp", None, Some((8000, 8010)), 80)]
        );
        assert_eq!(
            p("10.0.0.1:8000-8010:80"),
            vec![req("tcp", Some("10.0.0.1"), Some((8000, 8010)), 80)]
        );
        assert_eq!(
            p("80-81"),
            vec![req("tcp", None, None, 80), req("tcp", None, None, 81)]
        );
        assert_eq!(
            p("127.0.0.1::80-81"),
            vec![
                req("tcp", Some("127.0.0.1"), None, 80),
                req("tcp", Some("127.0.0.1"), None, 81)
            ]
        );
        assert_eq!(p("80-80"), vec![req("tcp", None, None, 80)]);
        assert_eq!(
            p("65535:1"),
            vec![req("tcp", None, Some((65535, 65535)), 1)]
        );
        assert_eq!(
            p("8080-8080:80-80"),
            vec![req("tcp", None, Some((8080, 8080)), 80)]
        );
    }

    #[test]
    fn refuses_every_bad_form_with_one_clear_message() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            (
                "0:80",
                "invalid host port \"0\": ports are numbers from 1 to 65535",
            ),
            ("8080:0", "invalid container port \"0\""),
            ("0", "invalid container port \"0\""),
            ("65536:80", "invalid host port \"65536\""),
            ("8080:65536", "invalid container port \"65536\""),
            ("99999999999:80", "invalid host port \"99999999999\""),
            ("+80", "invalid container port \"+80\""),
            ("http", "invalid container port \"http\""),
            ("8080:http", "invalid container port \"http\""),
            (
                "8010-8000:80",
                "invalid host port range \"8010-8000\": the start is above the end",
            ),
            ("8080:90-80", "invalid container port range \"90-80\""),
            (
                "8000-8001:80-82",
                "the host port range 8000-8001 and the container port range 80-82 differ in length",
            ),
            ("8080:80-82", "differ in length"),
            ("8000-:80", "invalid host port \"\""),
            ("-8000:80", "invalid host port \"\""),
            (
                "1.2.3:8080:80",
                "invalid host IP \"1.2.3\": not an IPv4 address",
            ),
            ("300.1.1.1:8080:80", "invalid host IP \"300.1.1.1\""),
            ("localhost:8080:80", "invalid host IP \"localhost\""),
            ("127.0.0.1:80", "a host IP goes first"),
            ("8080:80/sctp", "invalid protocol \"sctp\": tcp or udp"),
            ("8080:80/", "invalid protocol \"\""),
            ("80/tcp/udp", "invalid protocol \"tcp/udp\""),
            ("8080/tcp:80", "invalid host port \"8080/tcp\""),
            ("8080:", "no container port"),
            ("8080:/tcp", "no container port"),
            ("1:2:3:4", "too many colons"),
            ("1.2.3.4:80:80:80", "too many colons"),
            ("[::1]:8080:80", "IPv6 host addresses are not supported"),
            ("[::]::80", "IPv6 host addresses are not supported"),
        ];
        for (spec, want) in cases {
            let e = parse_publish(spec).expect_err(spec);
            assert!(
                e.starts_with(&format!("invalid -p {spec:?}: ")),
                "{spec:?}: {e}"
            );
            assert!(e.contains(want), "{spec:?}: {e:?} lacks {want:?}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn private_ports_for_the_port_command() {
        assert_eq!(parse_private_port("80"), Ok((80, Proto::Tcp)));
        assert_eq!(parse_private_port("53/UDP"), Ok((53, Proto::Udp)));
        for bad in ["0", "x", "80/sctp", "", "70000/tcp"] {
            assert!(parse_private_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_all_covers_exposed_ports_not_published_explicitly() {
        let exposed = vec!["80/tcp".to_string(), "53/udp".into(), "443/tcp".into()];
        let explicit = vec![req("tcp", None, Some((8443, 8443)), 443)];
        assert_eq!(
            publish_all_requests(&exposed, &explicit),
            vec![req("tcp", None, None, 80), req("udp", None, None, 53)]
        );
        let dup = vec!["80/tcp".to_string(), "80/tcp".into()];
        assert_eq!(publish_all_requests(&dup, &[]).len(), 1);
    }

    #[test]
    fn conflict_rule_follows_docker() {
        let any = bind("tcp", None, 8080, 80);
        let lo = bind("tcp", Some("127.0.0.1"), 8080, 81);
        let other = bind("tcp", Some("10.0.0.1"), 8080, 82);
        assert!(conflicts(&any, &lo) && conflicts(&lo, &any));
        assert!(conflicts(&any, &any));
        assert!(conflicts(&lo, &lo.clone()));
        assert!(!conflicts(&lo, &other), "two different addresses");
        assert!(
            !conflicts(&any, &bind("udp", None, 8080, 80)),
            "other protocol"
        );
        assert!(!conflicts(&any, &bind("tcp", None, 8081, 80)), "other port");

        let t = Taken::new([&lo]);
        assert!(t.collides(Proto::Tcp, None, 8080));
        assert!(t.collides(Proto::Tcp, Some(Ipv4Addr::UNSPECIFIED), 8080));
        assert!(t.collides(Proto::Tcp, Some(Ipv4Addr::LOCALHOST), 8080));
        assert!(!t.collides(Proto::Tcp, Some("10.0.0.1".parse().unwrap()), 8080));
        assert!(!t.collides(Proto::Udp, None, 8080));
        assert!(!t.collides(Proto::Tcp, None, 8081));
    }

    #[test]
    fn precheck_refuses_taken_ports_and_collisions_within_one_run() {
        let taken = Taken::new([&bind("tcp", None, 8080, 80)]);
        assert_eq!(
            precheck(&[req("tcp", None, Some((8080, 8080)), 80)], &taken),
            Err(PortError::Conflict(
                "Bind for 0.0.0.0:8080 failed: port is already allocated".into()
            ))
        );
        assert_eq!(
            precheck(
                &[req("tcp", Some("127.0.0.1"), Some((8080, 8080)), 80)],
                &taken
            )
            .unwrap_err()
            .to_string(),
            "Bind for 127.0.0.1:8080 failed: port is already allocated"
        );
        assert!(precheck(&[req("udp", None, Some((8080, 8080)), 80)], &taken).is_ok());
        let empty = Taken::default();
        let twice = [
            req("tcp", None, Some((9000, 9000)), 80),
            req("tcp", Some("127.0.0.1"), Some((9000, 9000)), 81),
        ];
        assert!(precheck(&twice, &empty).is_err());
        let distinct = [
            req("tcp", Some("127.0.0.1"), Some((9000, 9000)), 80),
            req("tcp", Some("127.0.0.2"), Some((9000, 9000)), 81),
        ];
        assert!(precheck(&distinct, &empty).is_ok());
        // Ranges and any-port requests are settled by `allocate`.
        assert!(precheck(&[req("tcp", None, Some((8080, 8081)), 80)], &taken).is_ok());
    }

    #[test]
    fn too_many_ports_are_refused_before_binding() {
        // The NAT benchmark's 10,000 fit with the daemon's usual limit.
        assert_eq!(check_budget(10_000, 40, 20_000), Ok(()));
        assert_eq!(check_budget(MAX_PORTS_PER_CONTAINER, 40, 1 << 20), Ok(()));
        let e = check_budget(65_535, 40, 1 << 20).unwrap_err();
        assert_eq!(
            e,
            PortError::Invalid(
                "cannot publish 65535 ports for one container: the most is 16384 \
                 (each holds a host port); publish a smaller range"
                    .into()
            )
        );
        // Under the cap but more than the open files left.
        let e = check_budget(3_000, 100, 4_096).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "cannot publish 3000 ports: each holds an open file of the daemon, which has 100 \
                 open of its limit of 4096 and keeps 1024 spare, so 2972 more fit;"
            ),
            "{e}"
        );
        assert!(e.contains("raise the daemon's open-files limit"), "{e}");
        assert_eq!(check_budget(2_972, 100, 4_096), Ok(()));
        // Past the limit already: nothing fits, and nothing underflows.
        assert!(check_budget(1, 5_000, 4_096).is_err());
        assert_eq!(check_budget(0, 5_000, 4_096), Ok(()));
        // precheck applies the cap to the whole request list.
        let reqs: Vec<PortRequest> = parse_publish("1-65535:1-65535").unwrap();
        assert_eq!(reqs.len(), 65_535);
        assert!(matches!(
            precheck(&reqs, &Taken::default()),
            Err(PortError::Invalid(m)) if m.starts_with("cannot publish 65535 ports")
        ));
    }

    #[test]
    fn host_port_strings() {
        assert_eq!(req("tcp", None, None, 80).host_port_str(), "");
        assert_eq!(req("tcp", None, Some((1, 1)), 80).host_port_str(), "1");
        assert_eq!(req("tcp", None, Some((1, 9)), 80).host_port_str(), "1-9");
    }

    #[test]
    fn port_command_lines_are_sorted_like_docker() {
        let b = [
            bind("udp", None, 5353, 53),
            bind("tcp", Some("127.0.0.1"), 9090, 80),
            bind("tcp", None, 8080, 80),
            bind("tcp", None, 4430, 443),
            bind("tcp", None, 9000, 9),
        ];
        let ports = api_ports(&b);
        assert_eq!(
            port_lines(&ports, None),
            vec![
                "9/tcp -> 0.0.0.0:9000",
                "53/udp -> 0.0.0.0:5353",
                "80/tcp -> 0.0.0.0:8080",
                "80/tcp -> 127.0.0.1:9090",
                "443/tcp -> 0.0.0.0:4430",
            ]
        );
        assert_eq!(
            port_lines(&ports, Some((80, Proto::Tcp))),
            vec!["0.0.0.0:8080", "127.0.0.1:9090"]
        );
        assert!(port_lines(&ports, Some((80, Proto::Udp))).is_empty());
        let json = serde_json::to_value(&ports[0]).unwrap();
        assert_eq!(
            json,
            json!({"PrivatePort": 9, "Type": "tcp", "IP": "0.0.0.0", "PublicPort": 9000})
        );
    }

    #[test]
    fn ps_column_matches_docker_displayable_ports() {
        assert_eq!(ps_ports(&[], &[]), "");
        assert_eq!(
            ps_ports(&[], &[bind("tcp", None, 8080, 80)]),
            "0.0.0.0:8080->80/tcp"
        );
        assert_eq!(
            ps_ports(
                &["80/tcp".into(), "90/udp".into()],
                &[bind("tcp", None, 8080, 80)]
            ),
            "90/udp, 0.0.0.0:8080->80/tcp"
        );
        // Equal host and container ports group into ranges.
        let same: Vec<PortBinding> = (8000..=8002).map(|p| bind("tcp", None, p, p)).collect();
        assert_eq!(ps_ports(&[], &same), "0.0.0.0:8000-8002->8000-8002/tcp");
        // Shifted ones are listed one by one.
        let shifted: Vec<PortBinding> = (0..3)
            .map(|i| bind("tcp", None, 8000 + i, 80 + i))
            .collect();
        assert_eq!(
            ps_ports(&[], &shifted),
            "0.0.0.0:8000->80/tcp, 0.0.0.0:8001->81/tcp, 0.0.0.0:8002->82/tcp"
        );
        // Exposed runs group too; a gap starts a new group.
        let exposed: Vec<String> = ["80/tcp", "81/tcp", "83/tcp"].map(String::from).to_vec();
        assert_eq!(ps_ports(&exposed, &[]), "80-81/tcp, 83/tcp");
        assert_eq!(
            ps_ports(&[], &[bind("udp", Some("127.0.0.1"), 53, 53)]),
            "127.0.0.1:53->53/udp"
        );
    }

    #[test]
    fn inspect_shapes() {
        let b = [
            bind("tcp", None, 8080, 80),
            bind("tcp", Some("127.0.0.1"), 9090, 80),
        ];
        let exposed = vec!["90/udp".to_string()];
        assert_eq!(
            network_settings_ports(&exposed, &b),
            json!({
                "80/tcp": [
                    {"HostIp": "0.0.0.0", "HostPort": "8080"},
                    {"HostIp": "127.0.0.1", "HostPort": "9090"},
                ],
                "90/udp": null,
            })
        );
        assert_eq!(
            exposed_ports_json(&exposed, &b),
            json!({"80/tcp": {}, "90/udp": {}})
        );
        let specs = [
            "8080:80".to_string(),
            "127.0.0.1::53/udp".into(),
            "8000-8010:443".into(),
            "0.0.0.0:7000-7001:70-71".into(),
        ];
        assert_eq!(
            host_config_port_bindings(&specs),
            json!({
                "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
                "443/tcp": [{"HostIp": "", "HostPort": "8000-8010"}],
                "70/tcp": [{"HostIp": "0.0.0.0", "HostPort": "7000"}],
                "71/tcp": [{"HostIp": "0.0.0.0", "HostPort": "7001"}],
            })
        );
    }

    #[test]
    fn allocate_reserves_chooses_and_refuses() {
        // Binds for real, in a network namespace of its own (needs root).
        let Some(()) = try_in_private_netns(|| {
            lo_up();
            let empty = Taken::default();
            // Exact ports, a range and any ports, in request order.
            let reqs = [
                req("tcp", None, None, 80),
                req("tcp", None, Some((8000, 8002)), 81),
                req("tcp", None, Some((8000, 8000)), 82),
                req("udp", Some("127.0.0.1"), Some((8000, 8000)), 83),
            ];
            let (b, held) = allocate(&reqs, &empty).unwrap();
            assert_eq!(held.len(), 4);
            assert_eq!(b.len(), 4);
            assert_eq!(b[2], bind("tcp", None, 8000, 82), "exact first");
            assert_eq!(b[1], bind("tcp", None, 8001, 81), "then one of the range");
            assert!(b[0].host_port >= 1024 && b[0].host_port != 8000 && b[0].host_port != 8001);
            assert_eq!(b[3], bind("udp", Some("127.0.0.1"), 8000, 83));
            // The reservations hold the ports against the host.
            assert_eq!(
                reserve(&Proto::Tcp, None, 8000).unwrap_err(),
                Errno::EADDRINUSE
            );
            assert_eq!(
                allocate(
                    &[req("tcp", Some("127.0.0.1"), Some((8001, 8001)), 1)],
                    &empty
                )
                .unwrap_err(),
                PortError::Conflict(
                    "failed to bind host port 127.0.0.1:8001/tcp: address already in use".into()
                )
            );
            // The model's view is checked first, with Docker's message.
            let taken = Taken::new(&b);
            assert_eq!(
                allocate(&[req("tcp", None, Some((8000, 8000)), 1)], &taken)
                    .unwrap_err()
                    .to_string(),
                "Bind for 0.0.0.0:8000 failed: port is already allocated"
            );
            assert_eq!(
                allocate(&[req("tcp", None, Some((8000, 8001)), 1)], &taken)
                    .unwrap_err()
                    .to_string(),
                "Bind for 0.0.0.0:8000-8001 failed: all ports are allocated"
            );
            // Not a local address.
            let e = allocate(
                &[req("tcp", Some("192.0.2.1"), Some((8000, 8000)), 1)],
                &empty,
            )
            .unwrap_err();
            assert_eq!(
                e,
                PortError::Invalid(
                    "failed to bind host port 192.0.2.1:8000/tcp: 192.0.2.1 is not an address of this host".into()
                )
            );
            assert_eq!(
                allocate(&[req("udp", Some("192.0.2.1"), None, 1)], &empty).unwrap_err(),
                PortError::Invalid(
                    "failed to bind a free host port on 192.0.2.1 (udp): 192.0.2.1 is not an address of this host".into()
                )
            );
            // A failed allocation releases what it had reserved.
            let reqs = [
                req("tcp", None, Some((9000, 9000)), 1),
                req("tcp", Some("192.0.2.1"), Some((9001, 9001)), 2),
            ];
            assert!(allocate(&reqs, &empty).is_err());
            drop(reserve(&Proto::Tcp, None, 9000).expect("9000 was released"));
            // Dropping reservations frees the ports.
            drop(held);
            drop(reserve(&Proto::Tcp, None, 8000).expect("8000 is free again"));
        }) else {
            eprintln!("skipped: needs root for a private network namespace");
            return;
        };
    }

    /// A listener as Go's `net.Listen` makes it (Podman's conmon holding a
    /// published port): SO_REUSEADDR, bind, listen.
    fn go_listener(port: u16) -> Result<OwnedFd, Errno> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
        let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        socket::bind(fd.as_raw_fd(), &addr)?;
        socket::listen(&fd, socket::Backlog::new(1).unwrap())?;
        Ok(fd)
    }

    #[test]
    fn a_shared_reservation_lets_the_runtime_listen_and_nobody_else_bind() {
        let Some(()) = try_in_private_netns(|| {
            lo_up();
            let (ours, _) = reserve_shared(&Proto::Tcp, None, 8300, Sharing::WithRuntime).unwrap();
            let conmon = go_listener(8300).expect("the runtime's hold succeeds");
            // A plain bind (a host process) and an exclusive reservation
            // still fail.
            assert_eq!(
                reserve(&Proto::Tcp, None, 8300).unwrap_err(),
                Errno::EADDRINUSE
            );
            drop((ours, conmon));
            // An exclusive reservation keeps the runtime out.
            let (ours, _) = reserve(&Proto::Tcp, None, 8301).unwrap();
            assert_eq!(go_listener(8301).unwrap_err(), Errno::EADDRINUSE);
            drop(ours);
            // UDP cannot be shared (Go binds it without SO_REUSEADDR): a
            // runtime's UDP port is checked free, then left to it.
            let (none, p) = hold(&Proto::Udp, None, 8302, Sharing::WithRuntime).unwrap();
            assert!(none.is_none() && p == 8302);
            let (conmon, _) = reserve(&Proto::Udp, None, 8302).expect("left to the runtime");
            assert_eq!(
                hold(&Proto::Udp, None, 8302, Sharing::WithRuntime).unwrap_err(),
                Errno::EADDRINUSE,
                "but checked free"
            );
            drop(conmon);
            let (b, held) = allocate_shared(
                &[
                    req("udp", None, Some((8303, 8303)), 53),
                    req("tcp", None, Some((8303, 8303)), 80),
                ],
                &Taken::default(),
                Sharing::WithRuntime,
            )
            .unwrap();
            assert_eq!(b.len(), 2);
            assert_eq!(held.len(), 1, "only the TCP port is held");
            assert!(go_listener(8303).is_ok());
        }) else {
            eprintln!("skipped: needs root for a private network namespace");
            return;
        };
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let soft = crate::host::raise_nofile_limit().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, soft);
    }
}

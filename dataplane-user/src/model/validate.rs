//! Checks of user input that need no state: names, hostnames, addresses.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::api::error::{bad, ApiResult};

/// A valid container or network name: letters, digits, `_`, `.`, `-`,
/// starting with a letter or digit, at most 64 characters.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && name.len() <= 64
}

/// `-e KEY=VALUE` arguments (of `run` and `service create`).
pub fn check_env(env: &[String]) -> ApiResult<()> {
    match env
        .iter()
        .find(|kv| kv.split_once('=').is_none_or(|(k, _)| k.is_empty()))
    {
        Some(kv) => Err(bad(format!("invalid -e {kv:?}: expected KEY=VALUE"))),
        None => Ok(()),
    }
}

pub fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !h.starts_with('-')
}

pub fn parse_ip(s: &str, what: &str) -> ApiResult<Ipv4Addr> {
    s.parse()
        .map_err(|_| bad(format!("invalid {what} {s:?}: not an IPv4 address")))
}

pub fn parse_cidr(s: &str, what: &str) -> ApiResult<Ipv4Network> {
    let err = || {
        bad(format!(
            "invalid {what} {s:?}: expected CIDR like 10.1.0.0/16"
        ))
    };
    if !s.contains('/') {
        return Err(err());
    }
    s.parse().map_err(|_| err())
}

pub fn check_aliases(aliases: &[String]) -> ApiResult<Vec<String>> {
    for a in aliases {
        if !valid_hostname(a) {
            return Err(bad(format!("invalid network alias {a:?}")));
        }
    }
    Ok(aliases.to_vec())
}

/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Where automatically chosen VNIs start (Docker's overlay driver starts at
/// 4096 too, leaving the low ones to be picked by hand).
pub const FIRST_AUTO_VNI: u32 = 4096;

/// The `--opt` settings of an overlay network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// `vni=N`.
    pub vni: Option<u32>,
    /// `vtep=IP[,IP...]`: hosts without our daemon that serve the network.
    pub vteps: Vec<Ipv4Addr>,
    /// `block=N` (or `/N`): the prefix length of each host's address block.
    pub block_prefix: Option<u8>,
}

/// Reads and checks the overlay options of a network create; they are
/// refused on other drivers.
pub fn overlay_options(
    opts: &std::collections::BTreeMap<String, String>,
    overlay: bool,
    subnet: Option<Ipv4Network>,
) -> ApiResult<OverlayOptions> {
    let mut o = OverlayOptions::default();
    for (k, v) in opts {
        let known = matches!(k.as_str(), "vni" | "vtep" | "block");
        if !known {
            continue;
        }
        if !overlay {
            return Err(bad(format!(
                "--opt {k} is an option of overlay networks (--driver overlay)"
            )));
        }
        match k.as_str() {
            "vni" => {
                let n: u32 = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_VNI).contains(n))
                    .ok_or_else(|| bad(format!("invalid --opt vni={v}: expected 1..={MAX_VNI}")))?;
                o.vni = Some(n);
            }
            "vtep" => {
                for a in v.split(',') {
                    let ip: Ipv4Addr = a
                        .trim()
                        .parse()
                        .map_err(|_| bad(format!("invalid --opt vtep={v}: expected IP[,IP...]")))?;
                    if ip.is_unspecified()
                        || ip.is_loopback()
                        || ip.is_multicast()
                        || ip.is_broadcast()
                    {
                        return Err(bad(format!(
                            "invalid --opt vtep={v}: {ip} is not a host's unicast address"
                        )));
                    }
                    if !o.vteps.contains(&ip) {
                        o.vteps.push(ip);
                    }
                }
                if o.vteps.len() > dataplane_common::MAX_FLOOD {
                    return Err(bad(format!(
                        "--opt vtep= takes at most {} addresses",
                        dataplane_common::MAX_FLOOD
                    )));
                }
            }
            _ => {
                let p: u8 = v
                    .trim_start_matches('/')
                    .parse()
                    .ok()
                    .filter(|p| (1..=30).contains(p))
                    .ok_or_else(|| {
                        bad(format!(
                            "invalid --opt block={v}: expected a prefix length like 26"
                        ))
                    })?;
                if let Some(s) = subnet {
                    if p < s.prefix() {
                        return Err(bad(format!(
                            "--opt block=/{p} is larger than the subnet {s}"
                        )));
                    }
                }
                o.block_prefix = Some(p);
            }
        }
    }
    Ok(o)
}

#[cfg(test)]
mod overlay_tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overlay_options_are_checked() {
        let s: Ipv4Network = "10.9.0.0/24".parse().unwrap();
        let o = overlay_options(
            &opts(&[
                ("vni", "42"),
                ("vtep", "192.168.1.5, 192.168.1.6"),
                ("block", "/28"),
            ]),
            true,
            Some(s),
        )
        .unwrap();
        assert_eq!(o.vni, Some(42));
        assert_eq!(o.vteps.len(), 2);
        assert_eq!(o.block_prefix, Some(28));
        for bad_kv in [
            ("vni", "0"),
            ("vni", "16777216"),
            ("vni", "x"),
            ("vtep", "127.0.0.1"),
            ("vtep", "1.2.3"),
            ("block", "16"),
            ("block", "31"),
        ] {
            assert!(
                overlay_options(&opts(&[bad_kv]), true, Some(s)).is_err(),
                "{bad_kv:?}"
            );
        }
        assert!(overlay_options(&opts(&[("vni", "5")]), false, None).is_err());
        // Other options pass through untouched.
        assert_eq!(
            overlay_options(&opts(&[("icc", "false")]), false, None).unwrap(),
            OverlayOptions::default()
        );
    }
}

/// Reads a service's `--publish`: swarm's long form
/// `published=P,target=T[,protocol=tcp|udp][,mode=ingress|host]` or the
/// short form `P:T[/PROTO]` (ingress).
pub fn parse_service_port(s: &str) -> ApiResult<crate::model::service::ServicePort> {
    use crate::model::{
        service::{PublishMode, ServicePort},
        Proto,
    };
    let err = |why: &str| {
        bad(format!(
            "invalid --publish {s:?}: {why} (expected published=P,target=T[,protocol=tcp|udp][,mode=ingress|host] or P:T[/PROTO])"
        ))
    };
    let port = |v: &str, what: &str| -> ApiResult<u16> {
        match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(err(&format!("{what} {v:?} is not a port number (1-65535)"))),
        }
    };
    if !s.contains('=') {
        let (ports, proto) = match s.split_once('/') {
            Some((p, proto)) => (p, proto.parse::<Proto>().map_err(|e| err(&e.to_string()))?),
            None => (s, Proto::Tcp),
        };
        let (p, t) = ports.split_once(':').ok_or_else(|| err("no target port"))?;
        return Ok(ServicePort {
            published: port(p, "published port")?,
            target: port(t, "target port")?,
            proto,
            mode: PublishMode::Ingress,
        });
    }
    let (mut published, mut target, mut proto, mut mode) = (None, None, Proto::Tcp, None);
    for kv in s.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| err(&format!("{kv:?} is not KEY=VALUE")))?;
        match k.trim() {
            "published" => published = Some(port(v, "published port")?),
            "target" => target = Some(port(v, "target port")?),
            "protocol" => proto = v.parse::<Proto>().map_err(|e| err(&e.to_string()))?,
            "mode" => {
                mode = Some(match v {
                    "ingress" => PublishMode::Ingress,
                    "host" => PublishMode::Host,
                    _ => return Err(err(&format!("unknown mode {v:?}"))),
                })
            }
            _ => return Err(err(&format!("unknown key {k:?}"))),
        }
    }
    let target = target.ok_or_else(|| err("no target"))?;
    Ok(ServicePort {
        published: published.ok_or_else(|| err("no published port"))?,
        target,
        proto,
        mode: mode.unwrap_or_default(),
    })
}

/// Reads a duration as Docker writes them: `500ms`, `5s`, `1m`, `1m30s`.
pub fn parse_duration(s: &str, what: &str) -> ApiResult<std::time::Duration> {
    let err = || {
        bad(format!(
            "invalid {what} {s:?}: expected a duration like 500ms, 5s or 1m"
        ))
    };
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => std::time::Duration::from_millis(n),
            "s" => std::time::Duration::from_secs(n),
            "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(err()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod service_tests {
    use super::*;
    use crate::model::{service::PublishMode, Proto};

    #[test]
    fn publish_long_and_short_forms() {
        let p = parse_service_port("published=8080,target=80").unwrap();
        assert_eq!(
            (p.published, p.target, p.proto, p.mode),
            (8080, 80, Proto::Tcp, PublishMode::Ingress)
        );
        let p = parse_service_port("published=53,target=5353,protocol=udp,mode=host").unwrap();
        assert_eq!(
            (p.published, p.target, p.proto, p.mode),
            (53, 5353, Proto::Udp, PublishMode::Host)
        );
        let p = parse_service_port("8080:80/udp").unwrap();
        assert_eq!((p.published, p.target, p.proto), (8080, 80, Proto::Udp));
        for bad in [
            "",
            "8080",
            "published=8080",
            "target=80",
            "published=x,target=80",
            "published=0,target=80",
            "published=8080,target=80,mode=dsr",
            "published=8080,target=80,protocol=sctp",
            "published=8080,target=80,color=red",
            "80:",
            ":80",
            "70000:80",
        ] {
            assert!(parse_service_port(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_arguments() {
        check_env(&["A=1".into(), "B=".into(), "C=x=y".into()]).unwrap();
        for bad in ["A", "=1"] {
            let err = check_env(&["OK=1".into(), bad.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("invalid -e {bad:?}")), "{err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms", "d").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("5s", "d").unwrap().as_secs(), 5);
        assert_eq!(parse_duration("1m30s", "d").unwrap().as_secs(), 90);
        for bad in ["", "5", "s", "5x", "-1s", "1.5s"] {
            assert!(parse_duration(bad, "d").is_err(), "{bad:?} accepted");
        }
    }
}

/// The kernel's macvlan modes, as `-o macvlan_mode=` names them.
pub const MACVLAN_MODES: [&str; 4] = ["bridge", "private", "vepa", "passthru"];

/// Reads and checks the macvlan options of a network create (`parent`,
/// `macvlan_mode`, `vlan`); they are refused on other drivers. `exists`
/// tells whether a host interface of that name exists: Docker's
/// `parent=eth0.100` names VLAN 100 on `eth0` unless an interface is
/// called `eth0.100` itself.
pub fn macvlan_options(
    opts: &std::collections::BTreeMap<String, String>,
    macvlan: bool,
    exists: impl Fn(&str) -> bool,
) -> ApiResult<Option<super::Macvlan>> {
    const KEYS: [&str; 3] = ["parent", "macvlan_mode", "vlan"];
    if !macvlan {
        if let Some(k) = opts.keys().find(|k| KEYS.contains(&k.as_str())) {
            return Err(bad(format!(
                "--opt {k} is an option of macvlan networks (--driver macvlan)"
            )));
        }
        return Ok(None);
    }
    let parent = opts
        .get("parent")
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| {
            bad("a macvlan network needs its parent interface: --opt parent=IFACE (or IFACE.VLAN)")
        })?;
    let parse_vid = |v: &str, what: &str| -> ApiResult<u16> {
        v.parse::<u16>()
            .ok()
            .filter(|n| (1..=4094).contains(n))
            .ok_or_else(|| bad(format!("invalid {what}: a VLAN ID is 1..=4094")))
    };
    let (name, mut vlan) = match parent.rsplit_once('.') {
        Some((base, vid))
            if !exists(parent) && !base.is_empty() && vid.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (
                base,
                Some(parse_vid(vid, &format!("--opt parent={parent}"))?),
            )
        }
        _ => (parent, None),
    };
    if !valid_ifname(name) {
        return Err(bad(format!(
            "invalid --opt parent={parent}: not an interface name"
        )));
    }
    if let Some(v) = opts.get("vlan") {
        let vid = parse_vid(v, &format!("--opt vlan={v}"))?;
        if vlan.is_some_and(|p| p != vid) {
            return Err(bad(format!(
                "--opt vlan={v} disagrees with --opt parent={parent}: give the VLAN once"
            )));
        }
        vlan = Some(vid);
    }
    let mode = opts
        .get("macvlan_mode")
        .map_or("bridge", String::as_str)
        .to_string();
    if !MACVLAN_MODES.contains(&mode.as_str()) {
        return Err(bad(format!(
            "invalid --opt macvlan_mode={mode}: expected one of {}",
            MACVLAN_MODES.join(", ")
        )));
    }
    if vlan.is_some() && mode != "bridge" {
        return Err(bad(format!(
            "--opt macvlan_mode={mode} is not offered on a VLAN network (the tags are ours, and its containers switch as in bridge mode)"
        )));
    }
    Ok(Some(super::Macvlan {
        parent: name.to_string(),
        mode,
        vlan,
    }))
}

/// Whether `name` can be a Linux interface name (IFNAMSIZ - 1 bytes, no
/// '/', whitespace or ':').
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

#[cfg(test)]
mod macvlan_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(kv: &[(&str, &str)]) -> ApiResult<Option<crate::model::Macvlan>> {
        macvlan_options(&opts(kv), true, |n| n == "eth9.5")
    }

    #[test]
    fn parents_modes_and_vlans() {
        let m = parse(&[("parent", "eth0")]).unwrap().unwrap();
        assert_eq!(
            (m.parent.as_str(), m.mode.as_str(), m.vlan),
            ("eth0", "bridge", None)
        );
        let m = parse(&[("parent", "eth0.100")]).unwrap().unwrap();
        assert_eq!((m.parent.as_str(), m.vlan), ("eth0", Some(100)));
        let m = parse(&[("parent", "eth0"), ("vlan", "200")])
            .unwrap()
            .unwrap();
        assert_eq!(m.vlan, Some(200));
        let m = parse(&[("parent", "eth0.7"), ("vlan", "7")])
            .unwrap()
            .unwrap();
        assert_eq!(m.vlan, Some(7));
        // An interface really called eth9.5 is a parent, untagged.
        let m = parse(&[("parent", "eth9.5")]).unwrap().unwrap();
        assert_eq!((m.parent.as_str(), m.vlan), ("eth9.5", None));
        let m = parse(&[("parent", "eth0"), ("macvlan_mode", "private")])
            .unwrap()
            .unwrap();
        assert_eq!(m.mode, "private");
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        for (kv, says) in [
            (&[][..], "needs its parent"),
            (&[("parent", "")][..], "needs its parent"),
            (&[("parent", "eth0.0")][..], "1..=4094"),
            (&[("parent", "eth0.4095")][..], "1..=4094"),
            (&[("parent", "eth0"), ("vlan", "x")][..], "1..=4094"),
            (&[("parent", "eth0.5"), ("vlan", "6")][..], "disagrees"),
            (
                &[("parent", "eth0"), ("macvlan_mode", "l2")][..],
                "expected one of",
            ),
            (
                &[("parent", "eth0.5"), ("macvlan_mode", "vepa")][..],
                "not offered",
            ),
            (&[("parent", "a/b")][..], "not an interface name"),
            (
                &[("parent", "averyveryverylongname")][..],
                "not an interface name",
            ),
        ] {
            let e = parse(kv).unwrap_err().to_string();
            assert!(e.contains(says), "{kv:?}: {e}");
        }
        let e = macvlan_options(&opts(&[("parent", "eth0")]), false, |_| true).unwrap_err();
        assert!(e.to_string().contains("option of macvlan networks"), "{e}");
        assert_eq!(
            macvlan_options(&opts(&[("icc", "false")]), false, |_| true).unwrap(),
            None
        );
    }
}

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

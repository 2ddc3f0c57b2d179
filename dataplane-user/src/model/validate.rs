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

//! The host's own side of translation: which interfaces carry the
//! `from_uplink` program and which addresses count as the host's.
//!
//! Every interface of the daemon's namespace that is not `lo` and not an
//! endpoint veth is an uplink: published ports answer on it and replies of
//! masqueraded flows arrive on it. Interfaces and addresses come and go
//! (a test adds a veth after the daemon started, DHCP changes an address),
//! so the daemon re-reads both every second and projects them into the
//! pinned TCX links and `LOCAL_ADDRS`.

use std::collections::HashSet;

use anyhow::Result;
use tracing::{info, warn};

use crate::{bpf::Datapath, netns};

/// Whether `name`/`ifindex` is a host interface that should carry `from_uplink`.
fn is_uplink(name: &str, ifindex: u32) -> bool {
    ifindex != 1
        && name != "lo"
        && dataplane_common::iface_slot(ifindex).is_none()
        && !is_docker_peer(name)
}

/// The sandbox end of a Docker endpoint's veth (`dpd` and 12 hex digits),
/// waiting in the daemon's namespace for Docker to move it: not an uplink.
fn is_docker_peer(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("dpd")
        && name[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Attaches `from_uplink` to uplinks that lack it, forgets pins of
/// interfaces that are gone, and makes `LOCAL_ADDRS` the namespace's
/// addresses. `attached` remembers what this daemon already attached (a
/// fresh daemon re-attaches every uplink once, swapping its program into
/// the pinned links).
pub fn sync(dp: &mut Datapath, attached: &mut HashSet<u32>) -> Result<()> {
    let links = netns::links()?;
    let present: HashSet<u32> = links.iter().map(|(_, i)| *i).collect();
    for (name, ifindex) in &links {
        if !is_uplink(name, *ifindex) || attached.contains(ifindex) {
            continue;
        }
        match dp.attach_uplink(name, *ifindex) {
            Ok(()) => {
                info!(uplink = %name, ifindex, "published ports and masquerade replies served on this interface");
                attached.insert(*ifindex);
            }
            // An interface that vanished between listing and attaching, or
            // one TCX refuses: try again next round.
            Err(e) => warn!(uplink = %name, "attaching from_uplink: {e:#}"),
        }
    }
    for ifindex in dp.pinned_uplinks() {
        if !present.contains(&ifindex) {
            dp.detach_uplink(ifindex);
            attached.remove(&ifindex);
        }
    }
    attached.retain(|i| present.contains(i));
    let addrs: Vec<u32> = netns::addresses()?
        .into_iter()
        .map(|a| dataplane_common::ipv4_wire(a.octets()))
        .collect();
    dp.sync_local_addrs(&addrs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_peers_are_not_uplinks() {
        assert!(!is_uplink("dpd8a86422c0485", 7));
        assert!(is_uplink("dpdummy", 7));
        assert!(is_uplink("eth0", 2));
    }
}

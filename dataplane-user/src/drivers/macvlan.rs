//! The `macvlan` driver: containers on a segment of a host interface (the
//! parent), each with its own MAC, reachable from the other machines on it.
//!
//! Untagged, an endpoint is the kernel's macvlan device on the parent,
//! created in the daemon's namespace and moved into the sandbox at once:
//! nothing of ours is on its path, and nothing stays on the host side.
//!
//! On a VLAN (`parent=eth0.100` or `vlan=100`) there is no sub-interface
//! (this kernel has no 8021q): an endpoint is a veth pair like the bridge
//! driver's, without a gateway on `lo` or a host route; `from_container`
//! switches its frames by MAC and pushes the VLAN's tag on the way out of
//! the parent, and `from_uplink` on the parent pops it on the way in (see
//! `dataplane_common::vlan`).

use anyhow::Result;

use super::Driver;
use crate::{model::Network, netns, netns::VethPlan};

pub struct Macvlan;

fn opts(net: &Network) -> Result<&crate::model::Macvlan> {
    net.macvlan
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("network {} has no parent interface", net.name))
}

impl Driver for Macvlan {
    fn name(&self) -> &'static str {
        "macvlan"
    }
    fn user_creatable(&self) -> bool {
        true
    }
    /// Nothing to make: the parent must be there and up, which the
    /// network's state says until it is.
    fn network_up(&self, net: &Network) -> Result<()> {
        netns::check_parent(&opts(net)?.parent).map(drop)
    }
    fn sandbox_only(&self, net: &Network) -> bool {
        net.vlan().is_none()
    }
    fn host_route(&self, _net: &Network) -> bool {
        false
    }
    fn create_link(&self, net: &Network, plan: &VethPlan) -> Result<u32> {
        let m = opts(net)?;
        match m.vlan {
            Some(_) => netns::create_endpoint(plan),
            None => netns::create_macvlan(plan, &m.parent, &m.mode).map(|()| 0),
        }
    }
}

//! The `overlay` driver: one network across the hosts of a cluster. On each
//! host its endpoints are veth pairs like the `bridge` driver's (switched in
//! eBPF, the gateway on `lo`, so containers reach the outside through their
//! own host's masquerade without Docker's second `docker_gwbridge`
//! interface), with the tunnel's MTU; endpoints on other hosts are
//! `ENDPOINTS` entries with `EP_REMOTE`, which `from_container` wraps in
//! VXLAN to their host and `from_uplink` unwraps on arrival. The network,
//! its endpoints and each host's address blocks live under `cluster/` in
//! the store, where every host's reconciler sees them.

use anyhow::Result;

use super::{Bridge, Driver};
use crate::{model::Network, netns::VethPlan};

pub struct Overlay;

/// On each host an overlay network is a bridge network with the tunnel's
/// MTU: everything but the name and that check is the bridge driver's.
impl Driver for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }
    fn user_creatable(&self) -> bool {
        true
    }
    fn network_up(&self, net: &Network) -> Result<()> {
        Bridge.network_up(net)
    }
    fn network_down(&self, net: &Network) -> Result<()> {
        Bridge.network_down(net)
    }
    fn create_link(&self, net: &Network, plan: &VethPlan) -> Result<u32> {
        anyhow::ensure!(
            plan.mtu.is_some(),
            "this host has no tunnel: it must run with --store and --advertise-addr"
        );
        Bridge.create_link(net, plan)
    }
    fn repair_routes(&self, plan: &VethPlan, host_ifindex: u32) -> Result<()> {
        Bridge.repair_routes(plan, host_ifindex)
    }
}

//! The `overlay` driver: one network across the hosts of a cluster. On each
//! host its endpoints are veth pairs like the `bridge` driver's (switched in
//! eBPF, the gateway on `lo`, so containers reach the outside through their
//! own host's masquerade without Docker's second `docker_gwbridge`
//! interface), with the tunnel's MTU; endpoints on other hosts are
//! `ENDPOINTS` entries with `EP_REMOTE`, which `from_container` wraps in
//! VXLAN to their host and `from_uplink` unwraps on arrival. The network,
//! its endpoints and each host's address blocks live under `cluster/` in
//! the store, where every host's reconciler sees them.

use std::path::Path;

use anyhow::Result;

use super::Driver;
use crate::{model::Network, netns, netns::VethPlan};

pub struct Overlay;

impl Driver for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }
    fn user_creatable(&self) -> bool {
        true
    }
    fn network_up(&self, net: &Network) -> Result<()> {
        netns::ensure_gateway(net.gateway)
    }
    fn network_down(&self, net: &Network) -> Result<()> {
        netns::remove_gateway(net.gateway)
    }
    fn create_link(&self, plan: &VethPlan) -> Result<u32> {
        anyhow::ensure!(
            plan.mtu.is_some(),
            "this host has no tunnel: it must run with --store and --advertise-addr"
        );
        netns::create_endpoint(plan)
    }
    fn repair_routes(&self, plan: &VethPlan, host_ifindex: u32) -> Result<()> {
        netns::ensure_host_route(plan.ip, host_ifindex, plan.gateway)
    }
    fn delete_link(&self, host_ifname: &str, _sandbox: &Path) -> Result<()> {
        netns::delete_link(host_ifname)
    }
}

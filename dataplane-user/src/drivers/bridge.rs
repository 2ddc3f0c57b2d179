//! The `bridge` driver, without a bridge: each endpoint is a veth pair whose
//! host side carries `from_container`, which switches between endpoints of
//! the network in eBPF; the network's gateway address sits on `lo`.

use anyhow::Result;

use super::Driver;
use crate::{model::Network, netns, netns::VethPlan};

pub struct Bridge;

impl Driver for Bridge {
    fn name(&self) -> &'static str {
        "bridge"
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
    fn create_link(&self, _net: &Network, plan: &VethPlan) -> Result<u32> {
        netns::create_endpoint(plan)
    }
    fn repair_routes(&self, plan: &VethPlan, host_ifindex: u32) -> Result<()> {
        netns::ensure_host_route(plan.ip, host_ifindex, plan.gateway)
    }
}

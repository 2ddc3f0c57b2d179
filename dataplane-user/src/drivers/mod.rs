//! Network drivers: what a network of each kind needs on this host, behind
//! one trait, so that the engine and the reconciler do not care which kind
//! a network is. `bridge` switches endpoints in eBPF over veth pairs with the
//! gateway on `lo` (no bridge device); `host` shares the daemon's network
//! namespace; `none` gives a sandbox with only `lo`; `overlay` spans the
//! hosts of a cluster (VXLAN in eBPF); `macvlan` puts containers on a LAN
//! segment of a host interface, untagged through the kernel's macvlan
//! device, or on a VLAN of it through our programs (no 8021q).

mod bridge;
mod macvlan;
mod overlay;

use anyhow::Result;
pub use bridge::Bridge;
pub use macvlan::Macvlan;
pub use overlay::Overlay;

use crate::{model::Network, netns::VethPlan};

/// Where a driver's sandboxes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxKind {
    /// A network namespace of the sandbox's own (`/var/run/netns/dp-...`).
    OwnNetns,
    /// The daemon's own network namespace (`--network host`).
    HostNetns,
}

pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    fn sandbox(&self) -> SandboxKind {
        SandboxKind::OwnNetns
    }
    /// Whether joining a network of this driver makes an endpoint (an
    /// interface with an address in the sandbox).
    fn has_endpoints(&self) -> bool {
        true
    }
    /// Whether users may create networks of this driver (`host` and `none`
    /// exist once, predefined).
    fn user_creatable(&self) -> bool {
        false
    }
    /// Makes the host side of a network present (idempotent): called for
    /// every network on every reconciler pass, so drift is repaired.
    fn network_up(&self, _net: &Network) -> Result<()> {
        Ok(())
    }
    /// Removes what `network_up` made.
    fn network_down(&self, _net: &Network) -> Result<()> {
        Ok(())
    }
    /// Whether an endpoint of `net` is one link inside the sandbox, with
    /// no host side and no program of ours (a kernel macvlan device).
    fn sandbox_only(&self, _net: &Network) -> bool {
        false
    }
    /// Whether the host routes each endpoint's address to its veth.
    fn host_route(&self, _net: &Network) -> bool {
        true
    }
    /// Creates an endpoint's link into the sandbox at `plan.netns`, with its
    /// host side at `plan.host_ifindex`; returns the host side's ifindex
    /// (0 for a [`Driver::sandbox_only`] endpoint).
    fn create_link(&self, _net: &Network, _plan: &VethPlan) -> Result<u32> {
        anyhow::bail!("driver {} makes no endpoints", self.name())
    }
    /// Repairs the host-side route of an endpoint whose link exists.
    fn repair_routes(&self, _plan: &VethPlan, _host_ifindex: u32) -> Result<()> {
        Ok(())
    }
}

/// `--network host`.
pub struct Host;

impl Driver for Host {
    fn name(&self) -> &'static str {
        "host"
    }
    fn sandbox(&self) -> SandboxKind {
        SandboxKind::HostNetns
    }
    fn has_endpoints(&self) -> bool {
        false
    }
}

/// `--network none`.
pub struct NoNetwork;

impl Driver for NoNetwork {
    fn name(&self) -> &'static str {
        "none"
    }
    fn has_endpoints(&self) -> bool {
        false
    }
}

static BRIDGE: Bridge = Bridge;
static HOST: Host = Host;
static NONE: NoNetwork = NoNetwork;
static OVERLAY: Overlay = Overlay;
static MACVLAN: Macvlan = Macvlan;

/// Every driver this daemon knows, by name.
pub const KNOWN: [&str; 5] = ["bridge", "overlay", "macvlan", "host", "none"];

/// The driver called `name`, or a refusal that lists the known ones.
pub fn get(name: &str) -> Result<&'static dyn Driver, String> {
    match name {
        "bridge" => Ok(&BRIDGE),
        "overlay" => Ok(&OVERLAY),
        "macvlan" => Ok(&MACVLAN),
        "host" => Ok(&HOST),
        "none" => Ok(&NONE),
        _ => Err(format!(
            "unknown network driver {name:?}: this daemon knows {}",
            KNOWN.join(", ")
        )),
    }
}

/// The predefined networks without stored state, named after their
/// drivers, as Docker lists them.
pub const PREDEFINED: [&str; 2] = ["host", "none"];

/// The driver of predefined network `name`, if it is one.
pub fn predefined(name: &str) -> Option<&'static str> {
    PREDEFINED.iter().copied().find(|p| *p == name)
}

/// The driver of a stored network (a record naming a driver this daemon does
/// not know falls back to `bridge`, which every stored network used so far).
pub fn of(net: &Network) -> &'static dyn Driver {
    get(&net.driver).unwrap_or(&BRIDGE)
}

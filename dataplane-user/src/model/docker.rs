//! Records of Docker's remote IPAM driver: the address pools Docker asked
//! for (`RequestPool`) before it creates the network on them, and the
//! addresses it reserved (`RequestAddress`) before an endpoint takes them.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// `docker/pools/<pool id>`.
pub const POOLS: &str = "docker/pools/";

/// The value of an address claim (`claims/ips/<network>/<ip>`) held by
/// Docker's IPAM: `ipam:<pool id>`. An endpoint created on that address
/// adopts the claim (rewrites it with its own id) instead of failing on it.
pub const HOLD_PREFIX: &str = "ipam:";

/// A pool handed to Docker. Its id is `dataplane/<subnet>`: pools never
/// overlap, so the subnet names one, and a pool asked for again (Docker
/// replaying its requests after a restart) gets the same id.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pool {
    pub id: String,
    pub subnet: Ipv4Network,
    /// `--ip-range` (Docker's SubPool).
    #[serde(default)]
    pub ip_range: Option<Ipv4Network>,
    /// The gateway handed out (`RequestAddress` with the gateway type).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Other addresses handed out before the network existed
    /// (`--aux-address`).
    #[serde(default)]
    pub aux: BTreeSet<Ipv4Addr>,
    /// Our network on the pool, once Docker created it (the network's id
    /// is Docker's NetworkID).
    #[serde(default)]
    pub network_id: Option<String>,
    /// A pool of Docker's global address space (a daemon with a cluster
    /// store): every host shares it (`cluster/docker/pools/...`), since
    /// Docker asks each host's IPAM for addresses of a pool one host got.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

impl Pool {
    pub fn id_for(subnet: Ipv4Network) -> String {
        format!("dataplane/{subnet}")
    }

    pub fn key(&self) -> String {
        let scope = if self.global { super::CLUSTER } else { "" };
        format!("{scope}{POOLS}{}", self.id)
    }

    /// The guarded set of networks and pools this pool is checked
    /// against (the cluster's for a global pool).
    pub fn networks_claim(&self) -> &'static str {
        if self.global {
            super::CLUSTER_NETWORKS_CLAIM
        } else {
            super::NETWORKS_CLAIM
        }
    }
}

/// The claim value of an address Docker's IPAM holds in pool `pool`.
pub fn hold_value(pool: &str) -> Vec<u8> {
    format!("{HOLD_PREFIX}{pool}").into_bytes()
}

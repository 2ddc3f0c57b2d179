//! Map lookups that decide where a packet or a socket call goes, shared by
//! the TC programs (NAT) and the socket hooks, so that both read the
//! published ports and the host's addresses the same way.

use dataplane_common::{Endpoint, Ipv4Wire, NatAddr, PortKey, PortWire};

use crate::maps::{ENDPOINTS, LOCAL_ADDRS, PORTS};

/// Whether `addr` is one of the daemon's own addresses (uplinks, gateways).
#[inline(always)]
pub(crate) fn is_local(addr: Ipv4Wire) -> bool {
    // SAFETY: read-only lookup.
    unsafe { LOCAL_ADDRS.get(&addr) }.is_some()
}

/// The container end of a port published on `addr` (exact binding first,
/// then one on every address).
#[inline(always)]
pub(crate) fn published(proto: u8, addr: Ipv4Wire, port: PortWire) -> Option<NatAddr> {
    // SAFETY: read-only lookups of plain data.
    unsafe {
        PORTS
            .get(&PortKey::new(proto, addr, port))
            .or_else(|| PORTS.get(&PortKey::new(proto, 0, port)))
            .copied()
    }
}

/// The endpoint (container) whose address is `addr`. The value is borrowed
/// in place, valid for this run of the program.
#[inline(always)]
pub(crate) fn endpoint(addr: Ipv4Wire) -> Option<&'static Endpoint> {
    // SAFETY: plain data; userspace replaces entries whole.
    unsafe { ENDPOINTS.get(&addr) }
}

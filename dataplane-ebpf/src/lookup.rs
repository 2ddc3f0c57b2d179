//! Map lookups that decide where a packet or a socket call goes, shared by
//! the TC programs (NAT) and the socket hooks, so that both read the
//! published ports and the host's addresses the same way.

use dataplane_common::{iface_slot, Endpoint, Ipv4Wire, NatAddr, PeerCache, PortKey, PortWire};

use crate::maps::{ENDPOINTS, IFACES, LOCAL_ADDRS, PEER_CACHE, PORTS};

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

/// The endpoint whose address is `dst`, for a frame of the sender at
/// `IFACES` slot `from`: [`endpoint`] with the sender's `PEER_CACHE` entry
/// in front, which spares the hash lookup while a container keeps talking
/// to the same peer. The entry is used only when the `IFACES` entry it
/// names is `dst`'s endpoint (the daemon writes an endpoint to both maps
/// alike), and rewritten on a miss that finds one.
#[inline(always)]
pub(crate) fn peer(from: u32, dst: Ipv4Wire) -> Option<&'static Endpoint> {
    if let Some(c) = PEER_CACHE.get(from) {
        if let Some(ep) = IFACES.get(c.slot) {
            if c.names(dst, ep) {
                return Some(ep);
            }
        }
    }
    let ep = endpoint(dst)?;
    if let (Some(slot), Some(c)) = (iface_slot(ep.ifindex), PEER_CACHE.get_ptr_mut(from)) {
        // SAFETY: a map value pointer, valid for this run. Another CPU may
        // write the same entry: a torn pair fails `names` and only misses.
        unsafe { *c = PeerCache { dst, slot } };
    }
    Some(ep)
}

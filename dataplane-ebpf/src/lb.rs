//! Service load balancing: the frontend a destination names, the replica
//! its service's Maglev table gives a new flow, and the per-service and
//! per-replica counters. Shared by the TC programs (ingress ports, and
//! per-packet VIP translation) and the socket hooks (VIPs at `connect`).
//!
//! The table and its hash are `dataplane_common::service`'s; the daemon
//! builds the tables (the same on every host) and this module only reads.

use dataplane_common::{
    drop_slot, flow_hash, maglev_index, Backend, CtKey, DropReason, Ipv4Wire, PortKey, PortWire,
    Service, BE_ACTIVE, MAX_BACKENDS, NO_REPLICA, SVC_INGRESS, SVC_VIP,
};

use crate::maps::{BACKENDS, BACKEND_STATS, MAGLEV, SERVICES, SVC_STATS};

/// The service frontend `(proto, addr, port)` names: a VIP's exact key, or
/// with `addr` 0 an ingress port.
#[inline(always)]
pub(crate) fn frontend(proto: u8, addr: Ipv4Wire, port: PortWire) -> Option<&'static Service> {
    // SAFETY: plain data; userspace replaces entries whole.
    unsafe { SERVICES.get(&PortKey::new(proto, addr, port)) }
}

/// The service whose virtual IP frontend is `(proto, vip, port)`: an exact
/// `SERVICES` entry flagged `SVC_VIP` (never an ingress port's wildcard).
#[inline(always)]
pub(crate) fn vip_frontend(proto: u8, vip: Ipv4Wire, port: PortWire) -> Option<&'static Service> {
    if vip == 0 {
        return None;
    }
    frontend(proto, vip, port).filter(|s| s.flags & SVC_VIP != 0)
}

/// The service whose ingress port is `(proto, port)` (answered on every
/// address of the host: the `SERVICES` key with address 0).
#[inline(always)]
pub(crate) fn ingress_frontend(proto: u8, port: PortWire) -> Option<&'static Service> {
    frontend(proto, 0, port).filter(|s| s.flags & SVC_INGRESS != 0)
}

/// The replica a new flow of `svc` whose hash is `hash` goes to: its id
/// and entry. A service with no live replica, or a table entry that names
/// none (being rebuilt), is `service_no_backend`.
#[inline(always)]
pub(crate) fn pick(svc: &Service, hash: u32) -> Result<(u32, &'static Backend), DropReason> {
    if svc.count == 0 {
        return Err(DropReason::ServiceNoBackend);
    }
    let id = *MAGLEV
        .get(maglev_index(svc.slot, hash))
        .ok_or(DropReason::ServiceNoBackend)?;
    if id == NO_REPLICA || id >= MAX_BACKENDS {
        return Err(DropReason::ServiceNoBackend);
    }
    let be = BACKENDS.get(id).ok_or(DropReason::ServiceNoBackend)?;
    if be.flags & BE_ACTIVE == 0 || be.slot != svc.slot {
        return Err(DropReason::ServiceNoBackend);
    }
    Ok((id, be))
}

/// [`pick`] for the flow whose original tuple is `key`.
#[inline(always)]
pub(crate) fn pick_flow(svc: &Service, key: &CtKey) -> Result<(u32, &'static Backend), DropReason> {
    pick(svc, flow_hash(key))
}

/// Counts a new connection of the service at `slot` given to replica `id`.
#[inline(always)]
pub(crate) fn count_conn(slot: u32, id: u32) {
    if let Some(c) = SVC_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).conns += 1 };
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).conns += 1 };
    }
}

/// Counts one packet of `len` bytes of a flow of replica `id` (its service
/// is the replica's slot).
#[inline(always)]
pub(crate) fn count_packet(id: u32, len: u32) {
    let Some(be) = BACKENDS.get(id) else {
        return;
    };
    if let Some(c) = SVC_STATS.get_ptr_mut(be.slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

/// Counts a dropped packet of the service at `slot`.
#[inline(always)]
pub(crate) fn count_drop(slot: u32, reason: DropReason) {
    if let Some(c) = SVC_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe { (*c).drops[drop_slot(reason)] += 1 };
    }
}

/// Counts a dropped packet of a flow of replica `id` (under its service).
#[inline(always)]
pub(crate) fn count_drop_of(id: u32, reason: DropReason) {
    if let Some(be) = BACKENDS.get(id) {
        count_drop(be.slot, reason);
    }
}

//! The dataplane control plane: model, store, IPAM, namespace plumbing, BPF
//! loading and projection, the HTTP API and its client.
//!
//! Data flows one way: a CLI call -> API -> model change committed in the
//! store -> projected into netlink objects and BPF maps. Packets never wait on
//! userspace.

pub mod api;
pub mod bpf;
pub mod cli;
pub mod cni;
pub mod dhcp;
pub mod dns;
pub mod docker;
pub mod drivers;
pub mod engine;
pub mod fault;
pub mod format;
pub mod host;
pub mod ipam;
pub mod model;
pub mod netns;
pub mod ports;
pub mod store;
#[cfg(test)]
pub(crate) mod testutil;

pub use bpf::{sockhook, uplink};

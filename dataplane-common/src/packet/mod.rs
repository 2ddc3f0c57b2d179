//! Pure packet logic: header layouts, parsing and the forwarding decision.
//!
//! The functions take fixed-size arrays (`&[u8; N]`) so that the eBPF side can
//! hand them a bounds-checked pointer into packet memory (constant offsets are
//! what the verifier likes) and the host tests can hand them a plain array.

pub mod arp;
pub mod eth;
pub mod forward;
pub mod ipv4;
pub mod load;
pub mod nat;
pub mod vxlan;

pub use forward::{decide_arp, decide_arp_vip, decide_ipv4, decide_vip, ArpVerdict, Verdict};

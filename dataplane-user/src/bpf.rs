//! Loading the eBPF object, pinning, and projecting the model into maps.

/// The eBPF object built by `build.rs` (aya-build), embedded in the binary.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));

//! Field loads from a frame.
//!
//! On the BPF target these are single 16- or 32-bit loads: header fields sit
//! at even offsets, and the kernel's verifier accepts unaligned packet loads
//! on architectures with efficient unaligned access (x86, arm64), as the C
//! datapaths of Cilium and Katran rely on. Plain `[u8; N]` accessors would
//! compile to one byte load per byte. On the host the portable byte form is
//! used, so tests exercise the same offsets without undefined behaviour.

/// The 4 bytes at `at`, as a native `u32` (the wire form of an address).
#[inline(always)]
pub fn ne32<const N: usize>(f: &[u8; N], at: usize) -> u32 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: callers pass `at + 4 <= N`; see the module comment on alignment.
        unsafe { (f.as_ptr().add(at) as *const u32).read_volatile() }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        u32::from_ne_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
    }
}

/// The 2 bytes at `at`, as a native `u16`.
#[inline(always)]
pub fn ne16<const N: usize>(f: &[u8; N], at: usize) -> u16 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: as for `ne32`.
        unsafe { (f.as_ptr().add(at) as *const u16).read_volatile() }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        u16::from_ne_bytes([f[at], f[at + 1]])
    }
}

/// The big-endian `u16` at `at`.
#[inline(always)]
pub fn be16<const N: usize>(f: &[u8; N], at: usize) -> u16 {
    u16::from_be(ne16(f, at))
}

/// Whether the 6 bytes at `at` equal `mac` (three 16-bit compares).
#[inline(always)]
pub fn mac_eq<const N: usize>(f: &[u8; N], at: usize, mac: &[u8; 6]) -> bool {
    ne16(f, at) == ne16(mac, 0)
        && ne16(f, at + 2) == ne16(mac, 2)
        && ne16(f, at + 4) == ne16(mac, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_read_wire_bytes() {
        let f = [0u8, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(ne32(&f, 2), u32::from_ne_bytes([2, 3, 4, 5]));
        assert_eq!(be16(&f, 6), 0x0607);
        assert!(mac_eq(&f, 1, &[1, 2, 3, 4, 5, 6]));
        assert!(!mac_eq(&f, 1, &[1, 2, 3, 4, 5, 7]));
    }
}

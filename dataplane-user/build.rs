use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the eBPF object (dataplane-ebpf, for bpfel-unknown-none with the
/// nightly toolchain and bpf-linker) into OUT_DIR, where `bpf.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("dataplane-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "dataplane-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

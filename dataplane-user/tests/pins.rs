//! Pinned-map safety: a daemon must never run on a pinned map whose layout
//! differs from its own (aya reuses a pin by name without checking), and must
//! reuse a matching one. Root; uses its own scratch directory on bpffs.

use std::{path::PathBuf, process::Command};

use dataplane_common::{Endpoint, LAYOUT_VERSION};
use dataplane_user::bpf::Datapath;

/// A scratch pin directory under /sys/fs/bpf, removed on drop even if the
/// test fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/dataplane-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        dataplane_user::bpf::ensure_bpffs(&p).expect("bpffs");
        Scratch(p)
    }
    fn maps(&self) -> PathBuf {
        self.0.join(format!("v{LAYOUT_VERSION}")).join("maps")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_pinned_map_of_another_layout_is_refused() {
    let s = Scratch::new("layout");
    std::fs::create_dir_all(s.maps()).unwrap();
    // An ENDPOINTS map as an older build might have left it: 8-byte values.
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(s.maps().join("ENDPOINTS"))
        .args([
            "type",
            "hash",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "16",
            "name",
            "ENDPOINTS",
        ])
        .output()
        .expect("bpftool (installed by cargo xtask setup)");
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Datapath::load(&s.0)
        .err()
        .expect("load must refuse the mismatched pin");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ENDPOINTS") && msg.contains("value 8 B"),
        "{msg}"
    );
}

#[test]
fn matching_pins_are_reused_with_their_contents() {
    let s = Scratch::new("reuse");
    let ep = Endpoint {
        ifindex: dataplane_common::IFINDEX_BASE + 7,
        network_id: 7,
        ip: dataplane_common::ipv4_wire([10, 9, 8, 7]),
        mac: [2, 0x42, 10, 9, 8, 7],
        host_mac: [0x0e, 0, 0, 0, 0, 1],
        flags: 0,
        net: dataplane_common::Network {
            subnet: dataplane_common::ipv4_wire([10, 9, 8, 0]),
            mask: dataplane_common::ipv4_wire([255, 255, 255, 0]),
            gateway: dataplane_common::ipv4_wire([10, 9, 8, 1]),
            flags: 0,
        },
    };
    {
        let mut dp = Datapath::load(&s.0).unwrap();
        dp.set_endpoint(ep).unwrap();
    }
    // A second load (a restarted daemon) reuses the map the first one wrote.
    let mut dp = Datapath::load(&s.0).unwrap();
    assert_eq!(entries(&s), 1, "the entry survives the reload");
    // Reconciling against an empty model removes the stale entry.
    dp.reconcile(&[], &[]).unwrap();
    assert_eq!(entries(&s), 0);
}

/// Number of entries in the pinned ENDPOINTS map, as bpftool sees them.
fn entries(s: &Scratch) -> usize {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(s.maps().join("ENDPOINTS"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().map_or(0, Vec::len)
}

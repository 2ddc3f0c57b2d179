//! Test helpers shared by every test of this crate: the unit tests reach them
//! as `crate::testutil` (`#[cfg(test)]`, never in the product) and the
//! integration tests compile this same file into each test binary through
//! `tests/common/mod.rs` (they link the library built without `cfg(test)`,
//! so they cannot see this module). Only dependencies of the crate (std,
//! nix, aya, dataplane-common), no `crate::` paths, so that the file builds
//! in both places.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `sizeof(struct __sk_buff)` on this kernel (BTF: 192 bytes); the kernel
/// accepts a shorter context, but a full one makes the intent plain.
pub const SK_BUFF_LEN: usize = 192;
/// Offset of `__u32 ifindex` in `struct __sk_buff` (include/uapi/linux/bpf.h).
pub const SK_BUFF_IFINDEX: usize = 40;

/// One BPF_PROG_TEST_RUN of the TC program `prog` on `frame`, as if it came
/// from device `ifindex` (honoured only for a real device of the caller's
/// namespace): the verdict and the frame as the program left it. Shared by
/// the two BPF labs (prog_test_run.rs, prog_test_nat.rs).
pub fn tc_test_run(
    prog: &aya::programs::SchedClassifier,
    ifindex: u32,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
    use aya::programs::TestRun as _;
    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    // Room to spare: the kernel fails with ENOSPC if the output is larger
    // than the buffer, and the programs never grow a frame.
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog.test_run(aya::programs::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Runs `f` on a fresh thread that first moves into a new network namespace
/// (per thread: `unshare(CLONE_NEWNET)` does not affect the rest of the test
/// binary). Everything created there dies with the thread. Panics propagate.
/// `None` if the namespace cannot be made (not root): `f` did not run.
pub fn try_in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Some(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`try_in_private_netns`] for tests that need root: no namespace panics.
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    try_in_private_netns(f).expect("unshare(CLONE_NEWNET) (tests must run as root)")
}

/// Brings `lo` up in the calling thread's network namespace (so that
/// 127.0.0.1 is a local address); panics if `ip` fails.
pub fn lo_up() {
    let ok = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip link set lo up");
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// A unique, empty scratch directory on a bpf filesystem for pins, removed
/// on drop even if the test fails (which unpins maps and links, so hooks
/// pinned there detach). It is a subdirectory of /sys/fs/bpf when that is a
/// bpffs; otherwise a private bpffs instance is mounted under the temporary
/// directory (and unmounted on drop) rather than touching /sys/fs/bpf.
pub struct Scratch {
    path: PathBuf,
    mounted: bool,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let name = format!("dataplane-test-{tag}-{}", std::process::id());
        let sys = Path::new("/sys/fs/bpf");
        let (path, mount) = if is_bpffs(sys) {
            (sys.join(name), false)
        } else {
            (std::env::temp_dir().join(name), true)
        };
        let _ = std::fs::remove_dir_all(&path); // leftovers of a killed run
        std::fs::create_dir_all(&path).expect("creating the pin directory");
        // The guard exists from here on, so a failed mount still cleans up.
        let mut dir = Scratch {
            path,
            mounted: false,
        };
        if mount {
            nix::mount::mount(
                Some("bpf"),
                &dir.path,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .expect("mounting a bpf filesystem");
            dir.mounted = true;
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<scratch>/v<LAYOUT_VERSION>/maps`: where `Datapath::load` pins maps.
    pub fn maps(&self) -> PathBuf {
        self.layout_dir().join("maps")
    }

    /// `<scratch>/v<LAYOUT_VERSION>/sock/<name>`: a socket-hook link pin.
    pub fn sock_pin(&self, name: &str) -> PathBuf {
        self.layout_dir().join("sock").join(name)
    }

    fn layout_dir(&self) -> PathBuf {
        self.path
            .join(format!("v{}", dataplane_common::LAYOUT_VERSION))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Unpin everything first (removing a pin only drops a reference; open
        // fds keep maps alive until they are closed), then the mount, then
        // the directory itself. What cannot be removed is said, not hidden.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(e) = r {
                    eprintln!("warning: could not remove {}: {e}", p.display());
                }
            }
        }
        if self.mounted {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

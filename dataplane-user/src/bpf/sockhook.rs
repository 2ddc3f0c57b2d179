//! The cgroup socket hooks: host processes reach published ports without a
//! proxy (Docker's docker-proxy replacement).
//!
//! Four `cgroup/sock_addr` programs of the eBPF object (`connect4`,
//! `sendmsg4`, `recvmsg4`, `getpeername4`, see `dataplane-ebpf/src/sock.rs`)
//! translate at the socket level: a `connect`/`sendto` of a process in the
//! daemon's network namespace to 127.0.0.0/8 or to one of the daemon's own
//! addresses on a published port goes straight to the container, and
//! `recvfrom`/`getpeername` show the address the process asked for. The
//! same hooks balance a service's VIP over its replicas, for the daemon's
//! namespace and its sandboxes (the maps `services` writes).
//!
//! They are attached to the root of the cgroup v2 hierarchy with
//! multi-attach links, so other daemons (in other namespaces, each with its
//! own maps and netns cookie) and other tools keep their own programs there.
//! The links are pinned under `<pin root>/sock/<program>`, so the hooks stay
//! while no daemon runs; a restarted daemon swaps its new program into each
//! pinned link atomically (`BPF_LINK_UPDATE`; aya 0.14 has no link update
//! for cgroup links, so this module issues the `bpf(2)` commands itself).

use std::{
    ffi::CString,
    fs::File,
    io,
    mem::size_of,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr};
use dataplane_common::CFG_NETNS_COOKIE;

use crate::bpf::Datapath;

/// Where a cgroup v2 hierarchy is mounted when the machine has none.
pub const FALLBACK_CGROUP2: &str = "/run/dataplane-cgroup2";

/// The programs and their kernel attach types (`enum bpf_attach_type`).
pub const PROGRAMS: [(&str, u32); 4] = [
    ("connect4", BPF_CGROUP_INET4_CONNECT),
    ("sendmsg4", BPF_CGROUP_UDP4_SENDMSG),
    ("recvmsg4", BPF_CGROUP_UDP4_RECVMSG),
    ("getpeername4", BPF_CGROUP_INET4_GETPEERNAME),
];

// include/uapi/linux/bpf.h
const BPF_OBJ_GET: libc::c_int = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_LINK_UPDATE: libc::c_int = 29;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// The directory holding the pinned links.
pub fn pin_dir(dp: &Datapath) -> PathBuf {
    dp.pin_root().join("sock")
}

/// The mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on a pure v2
/// machine, `/sys/fs/cgroup/unified` in the hybrid layout. If none is
/// mounted, one is mounted at [`FALLBACK_CGROUP2`].
pub fn cgroup2_root() -> Result<PathBuf> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(p) = find_cgroup2(&info) {
        return Ok(p);
    }
    let dir = Path::new(FALLBACK_CGROUP2);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {FALLBACK_CGROUP2}"))?;
    nix::mount::mount(
        Some("cgroup2"),
        dir,
        Some("cgroup2"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting cgroup2 at {FALLBACK_CGROUP2}"))?;
    Ok(dir.to_path_buf())
}

/// The first cgroup2 mount of the whole (namespace's) hierarchy in a
/// `/proc/<pid>/mountinfo` text; a bind mount of a subtree only if there is
/// nothing else.
fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    let mut subtree = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if sep < 5 || fields.get(sep + 1) != Some(&"cgroup2") {
            continue;
        }
        let mount_point = PathBuf::from(unescape_mountinfo(fields[4]));
        if fields[3] == "/" {
            return Some(mount_point);
        }
        subtree.get_or_insert(mount_point);
    }
    subtree
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> std::ffi::OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::ffi::OsStr::from_bytes(&out).to_os_string()
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`,
/// Linux 5.14+), as `bpf_get_netns_cookie` returns it.
pub fn netns_cookie() -> Result<u64> {
    // SAFETY: plain syscalls; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket(AF_UNIX)");
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let cookie = netns_cookie_of(&fd).context("getsockopt(SO_NETNS_COOKIE) (needs Linux 5.14+)")?;
    if cookie == 0 {
        bail!("the kernel returned netns cookie 0");
    }
    Ok(cookie)
}

/// The cookie of the network namespace socket `s` lives in.
pub fn netns_cookie_of(s: &impl std::os::fd::AsRawFd) -> io::Result<u64> {
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` outlive the call and match in size.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Loads the four socket programs, writes this namespace's cookie into
/// `CONFIG[CFG_NETNS_COOKIE]`, and attaches each program to the cgroup v2
/// root (multi-attach), pinning the link under `<pin root>/sock/<program>`.
/// A pinned link left by a previous daemon gets the new program swapped in
/// atomically instead of a second attachment.
pub fn attach(dp: &mut Datapath) -> Result<()> {
    let cookie = netns_cookie()?;
    dp.set_config(CFG_NETNS_COOKIE, cookie)
        .context("writing the netns cookie into CONFIG")?;
    let root = cgroup2_root()?;
    let cgroup = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    let cgroup_id = std::fs::metadata(&root)?.ino();
    let dir = pin_dir(dp);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, attach_type) in PROGRAMS {
        let prog: &mut CgroupSockAddr = dp
            .ebpf_mut()
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifying program {name}"))?;
        }
        let pin = dir.join(name);
        if pin.exists() {
            match swap_into_pinned(&pin, prog, attach_type, cgroup_id) {
                Ok(()) => continue,
                Err(e) => tracing::warn!(
                    "pinned link {} is unusable ({e:#}); attaching afresh and replacing the pin",
                    pin.display()
                ),
            }
        }
        // A link-based cgroup attachment (what aya 0.14 makes on 5.7+, and
        // this module needs 5.14+ for SO_NETNS_COOKIE anyway) is always
        // multi-attach: the kernel adds BPF_F_ALLOW_MULTI itself and refuses
        // any flag in BPF_LINK_CREATE with EINVAL. aya passes the mode's flag
        // straight through, so `AllowMultiple` fails there and `Single` (no
        // flag) is the multi-attach mode.
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", root.display()))?;
        let link: FdLink = prog.take_link(id)?.try_into()?;
        // Pin beside the old pin and rename over it: the pin path never goes
        // missing, and the old link (if any) detaches when its pin goes.
        // (bpffs refuses names with a dot: EPERM.)
        let tmp = dir.join(format!("{name}-new"));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp)
            .with_context(|| format!("pinning the link of {name}"))?;
        if let Err(e) = std::fs::rename(&tmp, &pin) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e)
                .with_context(|| format!("moving the pin of {name} to {}", pin.display()));
        }
    }
    Ok(())
}

/// Removes the pinned links: the hooks detach once nothing else holds them.
/// For a full teardown only; a daemon that merely stops leaves them. Missing
/// pins are fine.
pub fn detach(dp: &Datapath) -> Result<()> {
    let dir = pin_dir(dp);
    for (name, _) in PROGRAMS {
        for p in [dir.join(name), dir.join(format!("{name}-new"))] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("unpinning {}", p.display()))
                }
                _ => {}
            }
        }
    }
    match std::fs::remove_dir(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Swaps `prog` into the pinned link at `pin` (`BPF_LINK_UPDATE`), after
/// checking that the link is a live cgroup link of the same attach type on
/// the same cgroup.
fn swap_into_pinned(
    pin: &Path,
    prog: &CgroupSockAddr,
    attach_type: u32,
    cgroup_id: u64,
) -> Result<()> {
    let link = obj_get(pin)?;
    let info = cgroup_link_info(link.as_fd())?;
    if info.link_type != BPF_LINK_TYPE_CGROUP {
        bail!("not a cgroup link (link type {})", info.link_type);
    }
    if info.attach_type != attach_type {
        bail!(
            "attach type {} where {} was expected",
            info.attach_type,
            attach_type
        );
    }
    if info.cgroup_id != cgroup_id {
        // 0 once the link was detached (BPF_LINK_DETACH, cgroup removed).
        bail!(
            "attached to cgroup {} instead of {cgroup_id}",
            info.cgroup_id
        );
    }
    link_update(link.as_fd(), prog.fd()?.as_fd())
}

/// What `BPF_OBJ_GET_INFO_BY_FD` tells about a cgroup link.
#[derive(Debug, Clone, Copy)]
pub struct CgroupLinkInfo {
    pub link_type: u32,
    pub link_id: u32,
    pub prog_id: u32,
    pub cgroup_id: u64,
    pub attach_type: u32,
}

/// Reads the link pinned at `pin` (the test checks that a restart updates
/// the program in place).
pub fn pinned_link_info(pin: &Path) -> Result<CgroupLinkInfo> {
    let fd = obj_get(pin)?;
    cgroup_link_info(fd.as_fd())
}

fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // and its size is passed along; the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn obj_get(path: &Path) -> Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // Explicit: the kernel wants every byte past the command's fields
        // zero, and implicit padding is not guaranteed to be.
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn cgroup_link_info(link: BorrowedFd<'_>) -> Result<CgroupLinkInfo> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// `struct bpf_link_info` with its union's cgroup member, plus room.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfoRaw {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        cgroup_id: u64,
        attach_type: u32,
        _pad2: u32,
        _rest: [u64; 4],
    }
    let mut info = LinkInfoRaw::default();
    let mut attr = InfoByFd {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<LinkInfoRaw>() as u32,
        info: (&mut info as *mut LinkInfoRaw) as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(CgroupLinkInfo {
        link_type: info.type_,
        link_id: info.id,
        prog_id: info.prog_id,
        cgroup_id: info.cgroup_id,
        attach_type: info.attach_type,
    })
}

fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).context("BPF_LINK_UPDATE")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hybrid_unified_mount() {
        let info = "\
25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
35 25 0:31 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
41 35 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 35 0:39 / /sys/fs/cgroup/systemd rw,relatime shared:6 - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            find_cgroup2(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn prefers_the_whole_hierarchy_and_unescapes() {
        let info = "\
50 1 0:40 /sub /mnt/sub rw shared:9 - cgroup2 cgroup2 rw
51 1 0:40 / /mnt/my\\040cg rw shared:9 master:2 - cgroup2 none rw,nsdelegate
";
        assert_eq!(find_cgroup2(info), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            find_cgroup2(info.lines().next().unwrap()),
            Some(PathBuf::from("/mnt/sub"))
        );
        assert_eq!(find_cgroup2("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }
}

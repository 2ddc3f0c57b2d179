//! Facts about the host process the daemon runs in: open-file limits,
//! clocks, whether a process is alive, and the kind of mount namespace it was
//! started in.

/// Raises the soft limit of open files to the hard limit (each published
/// port holds a socket). Returns the new soft limit.
pub fn raise_nofile_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut want = lim.rlim_max;
    if want == libc::RLIM_INFINITY {
        // The kernel caps open files at fs.nr_open.
        want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    lim.rlim_cur = want;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(want)
}

/// (open files, soft RLIMIT_NOFILE) of this process; `None` when either
/// cannot be read.
pub fn fd_usage() -> Option<(u64, u64)> {
    // The directory's own handle is one of the entries.
    let open = std::fs::read_dir("/proc/self/fd")
        .ok()?
        .count()
        .saturating_sub(1) as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some((open, lim.rlim_cur))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Whether `pid` is alive (and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether this process runs in a private mount namespace where `/sys` was
/// remounted, as `ip netns exec` does. Pins made there die with the process.
pub fn in_ip_netns_exec_mount_ns() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let init = std::fs::read_link("/proc/1/ns/mnt").ok();
    if ours.is_none() || ours == init {
        return false;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // `ip netns exec` mounts a fresh sysfs on /sys, hiding /sys/fs/cgroup.
    !mounts.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .is_some_and(|m| m.starts_with("/sys/fs/cgroup"))
    })
}

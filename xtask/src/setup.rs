//! `cargo xtask setup`: installs what a fresh Debian machine lacks. Every
//! step checks first and says whether it was already satisfied.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    sh::{self, cmd},
    Progress,
};

/// Debian packages the daemon, tests, demo and benchmarks use.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iperf3",
    "sockperf",
    "bpftool",
    "tcpdump",
    "iptables",
    "netcat-openbsd",
    "procps",
    // etcd-client's build (the etcd store's gRPC code) needs protoc.
    "protobuf-compiler",
    // The etcd store's tests start a real etcd (3.4) of their own.
    "etcd-server",
    // Packet dissection in the labs; asks about capture permissions, which
    // DEBIAN_FRONTEND=noninteractive answers with the default (no setuid).
    "tshark",
    "util-linux",
    // The multi-host lab's etcd health probe.
    "curl",
    // The namespace tests' DNS clients and fake upstream are python3 scripts.
    "python3",
    // Real clients of the plugins, each started by the tests, the demo and
    // the bench with state of their own: a stock Docker engine (20.10) for
    // the network/IPAM driver plugin, Podman (4.3, CNI backend) and
    // containerd (`ctr run --cni`) for the CNI plugin, CNI's loopback
    // plugin they call first, and busybox-static for their image (no
    // image registry is reachable).
    "docker.io",
    "podman",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
    // The LAN's DHCP server in the DHCP client's tests (the binary only:
    // no system service).
    "dnsmasq-base",
];

/// Services of those packages that would start system-wide on install or
/// boot (a dockerd writing iptables rules and a docker0 into the host, a
/// containerd): nothing here uses them.
const SYSTEM_SERVICES: &[&str] = &["docker", "containerd"];

const MIN: Duration = Duration::from_secs(60);

fn note(msg: impl AsRef<str>) {
    eprintln!("    {}", msg.as_ref());
}

/// Runs every setup step; `p` numbers them as part of a larger command.
pub fn setup(p: &mut Progress) -> Result<()> {
    if !sh::is_root() {
        bail!("setup needs root (apt-get, mounting bpffs, loading BPF programs): run it as root");
    }
    p.step("setup: Debian packages (and no system etcd: tests start their own)");
    apt()?;
    system_etcd_off()?;
    system_services_off()?;
    p.step("setup: nightly toolchain with rust-src");
    nightly()?;
    p.step("setup: bpf-linker");
    bpf_linker()?;
    p.step("setup: bpffs at /sys/fs/bpf");
    bpffs()?;
    Ok(())
}

fn installed_packages(pkgs: &[&str]) -> Result<BTreeSet<String>> {
    if sh::which("dpkg-query").is_none() {
        bail!("dpkg-query not found: setup supports Debian/Ubuntu (apt) machines only");
    }
    // Unknown packages make dpkg-query exit 1 but still print the known ones.
    let o = sh::capture(
        cmd("dpkg-query", ["-W", "-f=${Package} ${db:Status-Status}\\n"]).args(pkgs),
        Some(MIN),
    )?;
    Ok(o.stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, st)| st.trim() == "installed")
        .map(|(p, _)| p.split(':').next().unwrap_or(p).to_string())
        .collect())
}

fn apt() -> Result<()> {
    let have = installed_packages(APT_PACKAGES)?;
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.contains(*p))
        .collect();
    if missing.is_empty() {
        note(format!(
            "already satisfied: all {} packages installed",
            APT_PACKAGES.len()
        ));
        return Ok(());
    }
    note(format!("missing: {}", missing.join(" ")));
    let mut update = cmd("apt-get", ["-q", "update"]);
    update.env("DEBIAN_FRONTEND", "noninteractive");
    sh::run(&mut update, Some(10 * MIN))?;
    let mut install = cmd("apt-get", ["-q", "install", "-y"]);
    install
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    // No package's service may start while it is installed (a system
    // dockerd would write its rules and docker0 into the host): Debian's
    // invoke-rc.d asks policy-rc.d, and 101 means "not allowed".
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# cargo xtask setup: no service starts during its apt-get install\nexit 101\n")
            .context("writing /usr/sbin/policy-rc.d")?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = sh::run(&mut install, Some(20 * MIN));
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    let have = installed_packages(&missing)?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !have.contains(*p))
        .collect();
    if !still.is_empty() {
        bail!("apt-get install did not install: {}", still.join(" "));
    }
    note(format!("installed: {}", missing.join(" ")));
    Ok(())
}

/// Debian's etcd-server starts a system etcd on 127.0.0.1:2379 (systemd
/// unit, or its init script elsewhere). Nothing here uses it: the tests
/// start their own on free ports. Stop it and keep it from starting again
/// (masked under systemd, disabled under sysvinit), through the service
/// manager only: no process is killed by name.
fn system_etcd_off() -> Result<()> {
    if std::path::Path::new("/run/systemd/system").is_dir() {
        let state = sh::first_line(&mut cmd("systemctl", ["is-enabled", "etcd.service"]));
        let active = sh::succeeds(&mut cmd(
            "systemctl",
            ["is-active", "--quiet", "etcd.service"],
        ));
        if state == "masked" && !active {
            note("already satisfied: etcd.service masked and stopped");
            return Ok(());
        }
        // `disable --now` fails for a unit that is not installed; mask works.
        let _ = sh::succeeds(&mut cmd("systemctl", ["disable", "--now", "etcd.service"]));
        sh::run(
            &mut cmd("systemctl", ["mask", "--now", "etcd.service"]),
            Some(MIN),
        )?;
        note("stopped and masked etcd.service");
        return Ok(());
    }
    let script = std::path::Path::new("/etc/init.d/etcd");
    if !script.is_file() {
        note("already satisfied: no etcd service installed");
        return Ok(());
    }
    // LSB: `status` exits 0 only while the service runs.
    if sh::succeeds(&mut cmd(script, ["status"])) {
        sh::run(&mut cmd(script, ["stop"]), Some(MIN))?;
        note("stopped the etcd service");
    } else {
        note("already satisfied: the etcd service is not running");
    }
    if sh::which("update-rc.d").is_some() {
        sh::run(&mut cmd("update-rc.d", ["etcd", "disable"]), Some(MIN))?;
        note("disabled the etcd service at boot (update-rc.d etcd disable)");
    }
    Ok(())
}

/// Stops and disables the system services in [`SYSTEM_SERVICES`] through
/// the service manager (systemd, or the init scripts), as for etcd: the
/// tests start dockerd and containerd of their own.
fn system_services_off() -> Result<()> {
    for svc in SYSTEM_SERVICES {
        if std::path::Path::new("/run/systemd/system").is_dir() {
            let unit = format!("{svc}.service");
            let active = sh::succeeds(&mut cmd("systemctl", ["is-active", "--quiet", &unit]));
            let state = sh::first_line(&mut cmd("systemctl", ["is-enabled", &unit]));
            if !active && (state == "disabled" || state == "masked" || state.is_empty()) {
                note(format!("already satisfied: {unit} stopped and not enabled"));
                continue;
            }
            let _ = sh::succeeds(&mut cmd("systemctl", ["disable", "--now", &unit]));
            let _ = sh::succeeds(&mut cmd(
                "systemctl",
                ["disable", "--now", &format!("{svc}.socket")],
            ));
            note(format!("stopped and disabled {unit}"));
            continue;
        }
        let script = std::path::Path::new("/etc/init.d").join(svc);
        if !script.is_file() {
            continue;
        }
        if sh::succeeds(&mut cmd(&script, ["status"])) {
            sh::run(&mut cmd(&script, ["stop"]), Some(MIN))?;
            note(format!("stopped the {svc} service"));
        } else {
            note(format!(
                "already satisfied: the {svc} service is not running"
            ));
        }
        if sh::which("update-rc.d").is_some() {
            let _ = sh::succeeds(&mut cmd("update-rc.d", [*svc, "disable"]));
        }
    }
    Ok(())
}

fn rustup() -> Result<PathBuf> {
    sh::which("rustup")
        .or_else(|| Some(sh::home().join(".cargo/bin/rustup")).filter(|p| p.is_file()))
        .ok_or_else(|| anyhow!("rustup not found: install it from https://rustup.rs first"))
}

fn nightly() -> Result<()> {
    let rustup = rustup()?;
    let list = sh::output(&mut cmd(&rustup, ["toolchain", "list"]), Some(MIN))?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        note("already satisfied: nightly toolchain present");
    } else {
        note("installing the nightly toolchain");
        sh::run(
            &mut cmd(
                &rustup,
                ["toolchain", "install", "nightly", "--profile", "minimal"],
            ),
            Some(30 * MIN),
        )?;
    }
    let comps = sh::output(
        &mut cmd(
            &rustup,
            ["component", "list", "--toolchain", "nightly", "--installed"],
        ),
        Some(MIN),
    )?;
    if comps.lines().any(|l| l.trim() == "rust-src") {
        note("already satisfied: rust-src installed for nightly");
    } else {
        sh::run(
            &mut cmd(
                &rustup,
                ["component", "add", "rust-src", "--toolchain", "nightly"],
            ),
            Some(20 * MIN),
        )?;
        note("installed: rust-src for nightly");
    }
    Ok(())
}

/// `bpf-linker --version` works, either as is or in the nightly's
/// environment (rustup puts the nightly's lib/, holding its libLLVM, on the
/// library path: that is how rustc +nightly runs it during the eBPF build).
fn bpf_linker_works(rustup: &PathBuf) -> bool {
    let bin = sh::which("bpf-linker").unwrap_or_else(|| sh::home().join(".cargo/bin/bpf-linker"));
    bin.is_file()
        && (sh::succeeds(&mut cmd(&bin, ["--version"]))
            || sh::succeeds(cmd(rustup, ["run", "nightly"]).arg(&bin).arg("--version")))
}

/// The LLVM major version the nightly rustc was built with.
pub fn nightly_llvm_major() -> Result<u32> {
    let vv = sh::output(
        &mut cmd(rustup()?, ["run", "nightly", "rustc", "-vV"]),
        Some(MIN),
    )?;
    let v = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .ok_or_else(|| anyhow!("`rustc +nightly -vV` printed no LLVM version"))?;
    v.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("unparsable LLVM version {v:?}"))
}

fn bpf_linker() -> Result<()> {
    let rustup = rustup()?;
    if bpf_linker_works(&rustup) {
        note("already satisfied: `bpf-linker --version` works");
        return Ok(());
    }
    // Built against the nightly's own libLLVM (../shared/TOOLCHAIN.md): the
    // default build wants a system libLLVM.so of the same major.
    let major = nightly_llvm_major()?;
    let sysroot = sh::output(
        &mut cmd(&rustup, ["run", "nightly", "rustc", "--print", "sysroot"]),
        Some(MIN),
    )?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .min()
        .ok_or_else(|| anyhow!("no libLLVM.so.*-nightly in {}", lib.display()))?;
    let prefix = sh::home().join(".local/rust-llvm");
    let plib = prefix.join("lib");
    std::fs::create_dir_all(&plib).with_context(|| format!("creating {}", plib.display()))?;
    // libLLVM.so for the build; the soname too, so the binary's RUNPATH
    // finds it outside of `rustup run nightly` as well.
    let mut links = vec![plib.join("libLLVM.so")];
    if let Some(name) = llvm.file_name() {
        links.push(plib.join(name));
    }
    for link in links {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.display()))?;
    }
    note(format!(
        "building bpf-linker against {} (feature llvm-{major}, about a minute)",
        llvm.display()
    ));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = cmd(
        cargo,
        [
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ],
    );
    c.env("LLVM_PREFIX", &prefix).current_dir(sh::home());
    sh::run(&mut c, Some(40 * MIN))?;
    if !bpf_linker_works(&rustup) {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails");
    }
    note("installed: bpf-linker");
    Ok(())
}

pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
        })
}

fn bpffs() -> Result<()> {
    if bpffs_mounted() {
        note("already satisfied: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    sh::run(
        &mut cmd("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"]),
        Some(MIN),
    )?;
    note("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

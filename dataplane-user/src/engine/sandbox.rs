//! Sandboxes: the files a sandbox sees (`/etc/netns/<sandbox>/`), the link
//! environment, and the container's process (started, signalled, reaped).

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::model::snapshot::Snapshot;
use crate::{model::Container, ports};

/// Finds `cmd` the way execvp would, so that `run` fails up front (and
/// creates nothing) for a command that does not exist.
pub fn resolve_command(cmd: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    std::env::var("PATH")
        .unwrap_or_else(|_| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| is_exec(p))
}

/// The sandbox's `resolv.conf` and `hosts`, which `ip netns exec` (and so
/// `run` and `exec`) bind-mounts over /etc. On a user-defined network the
/// resolver is the embedded one at 127.0.0.11; on the default bridge (and
/// `none`) it is the host's (or `--dns`), as with Docker. `host_conf`: the
/// host's resolv.conf.
pub fn etc_files(snap: &Snapshot, c: &Container, host_conf: &str) -> (String, String) {
    let eth0 = snap.endpoints_of_container(&c.id).into_iter().next();
    let search: Vec<&str> = host_conf
        .lines()
        .filter(|l| l.starts_with("search ") || l.starts_with("domain "))
        .collect();
    let mut conf = String::from("# written by dataplane\n");
    let user_defined = eth0
        .and_then(|e| snap.networks.get(&e.network_id))
        .is_some_and(|n| n.user_defined());
    if user_defined {
        conf.push_str("nameserver 127.0.0.11\n");
    } else if !c.dns.is_empty() {
        for ip in &c.dns {
            conf.push_str(&format!("nameserver {ip}\n"));
        }
    } else {
        for l in host_conf.lines().filter(|l| l.starts_with("nameserver")) {
            if !l
                .split_whitespace()
                .nth(1)
                .is_some_and(|ip| ip.starts_with("127."))
            {
                conf.push_str(l);
                conf.push('\n');
            }
        }
    }
    for l in search {
        conf.push_str(l);
        conf.push('\n');
    }
    conf.push_str("options ndots:0\n");
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ep) = eth0 {
        // A DHCP endpoint has its address once it has a lease.
        if ep.has_address() {
            hosts.push_str(&format!("{}\t{}\n", ep.ip, c.hostname));
        }
        for l in &c.links {
            let Some(t) = snap.containers.get(&l.container_id) else {
                continue;
            };
            if let Some(e) = snap
                .endpoints_of_container(&t.id)
                .into_iter()
                .find(|e| e.network_id == ep.network_id)
            {
                let mut names = vec![l.alias.clone()];
                for n in [&t.name, &t.hostname] {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
                hosts.push_str(&format!("{}\t{}\n", e.ip, names.join(" ")));
            }
        }
    } else {
        hosts.push_str(&format!("127.0.1.1\t{}\n", c.hostname));
    }
    (conf, hosts)
}

/// Docker's link environment for `c`: for each link ALIAS to a container
/// at IP exposing PORT/PROTO, `ALIAS_NAME=/c/alias`,
/// `ALIAS_PORT=proto://IP:port` (lowest port) and
/// `ALIAS_PORT_<port>_<PROTO>[_ADDR|_PORT|_PROTO]`, plus `-e` variables.
pub fn link_env(snap: &Snapshot, c: &Container, nid: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = c
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for l in &c.links {
        let Some(t) = snap.containers.get(&l.container_id) else {
            continue;
        };
        let Some(ip) = snap
            .endpoints_of_container(&t.id)
            .into_iter()
            .find(|e| e.network_id == nid)
            .map(|e| e.ip)
        else {
            continue;
        };
        let a = l.alias.to_uppercase().replace(['-', '.'], "_");
        env.push((format!("{a}_NAME"), format!("/{}/{}", c.name, l.alias)));
        // Published ports count as exposed, as with Docker.
        let ports = ports::exposed_ports(&t.exposed, &t.ports);
        if let Some((port, proto)) = ports.first() {
            env.push((format!("{a}_PORT"), format!("{proto}://{ip}:{port}")));
        }
        for (port, proto) in &ports {
            let p = format!("{a}_PORT_{port}_{}", proto.to_uppercase());
            env.push((p.clone(), format!("{proto}://{ip}:{port}")));
            env.push((format!("{p}_ADDR"), ip.to_string()));
            env.push((format!("{p}_PORT"), port.to_string()));
            env.push((format!("{p}_PROTO"), proto.clone()));
        }
        for kv in &t.env {
            if let Some((k, v)) = kv.split_once('=') {
                env.push((format!("{a}_ENV_{k}"), v.to_string()));
            }
        }
    }
    env
}

/// Starts the container's command in its sandbox, detached (own session),
/// with its own UTS namespace carrying the hostname, output to its log.
/// `ip netns exec` is used so that the sandbox sees `/etc/netns/<name>/`
/// files exactly as `ip netns exec` users do; a `--network host` container
/// runs in the daemon's namespace directly. The caller reaps the child.
pub fn spawn(c: &Container, env: &[(String, String)]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&c.log_path)
        .with_context(|| format!("opening {}", c.log_path))?;
    let hostname = c.hostname.clone();
    let mut cmd = if c.shares_host_netns() {
        let mut cmd = Command::new(&c.cmd[0]);
        cmd.args(&c.cmd[1..]);
        cmd
    } else {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &c.netns]).args(&c.cmd);
        cmd
    };
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env("HOSTNAME", &c.hostname)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: only async-signal-safe calls (setsid, unshare, sethostname)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)
                .map_err(std::io::Error::from)?;
            nix::unistd::sethostname(&hostname).map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().context("starting the container command")
}

/// SIGTERM to the container's process group, SIGKILL after `grace`.
pub fn kill_group(pid: u32, grace: Duration) {
    use nix::{
        sys::signal::{killpg, Signal},
        unistd::Pid,
    };
    let pg = Pid::from_raw(pid as i32);
    let _ = killpg(pg, Signal::SIGTERM);
    let t = Instant::now();
    while crate::host::process_alive(pid) && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    if crate::host::process_alive(pid) {
        let _ = killpg(pg, Signal::SIGKILL);
        let t = Instant::now();
        while crate::host::process_alive(pid) && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Children the daemon started, reaped without a thread each: the
/// reconciler's tick calls [`Children::reap`].
#[derive(Default)]
pub struct Children(std::sync::Mutex<Vec<Child>>);

impl Children {
    pub fn adopt(&self, child: Child) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(child);
    }

    /// Waits for the children that have exited (without blocking).
    pub fn reap(&self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }
}

//! A stock Docker engine (Debian's dockerd 20.10) for the Docker plugin
//! tests, started inside a [`Daemon`]'s network namespace with its own data
//! root, exec root, pidfile and socket, and an image made from
//! busybox-static (no registry is reachable).
//!
//! `nsenter --net` (not `ip netns exec`, which remounts /sys: dockerd then
//! fails with "Devices cgroup isn't mounted"). Docker's iptables rules go
//! into that namespace only. Dropping a [`Dockerd`] removes its containers
//! and networks through Docker (so that our daemon detaches them), stops
//! it by its pidfile, unmounts what it left under its roots and deletes
//! its directory; it must be dropped before the [`Daemon`] (declare it
//! after).

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{eventually, retry, run, unique, Daemon, Output, Proc};

/// Debian's client, the same version as the engine (`/usr/local/bin/docker`
/// may be a newer CLI that asks for an API 20.10 does not speak).
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The image every test imports: busybox with `httpd` and a CGI script
/// `/www/cgi-bin/ip` that answers the client's address as the server saw it.
pub const IMAGE: &str = "dpbb:latest";

/// A plugin name and socket for one test: Docker finds legacy plugins only
/// in `/run/docker/plugins`, so the name is unique per test.
pub struct PluginName {
    pub name: String,
}

impl PluginName {
    pub fn new() -> PluginName {
        PluginName {
            name: unique("dpt"),
        }
    }

    pub fn dir() -> &'static str {
        "/run/docker/plugins"
    }

    pub fn socket(&self) -> PathBuf {
        Path::new(Self::dir()).join(format!("{}.sock", self.name))
    }

    /// The daemon arguments that serve the plugin under this name, asking
    /// `dockerd` (at `docker_sock`) for network names.
    pub fn daemon_args(&self, docker_sock: &Path) -> Vec<String> {
        vec![
            "--docker-plugin".into(),
            "--docker-plugin-dir".into(),
            Self::dir().into(),
            "--docker-plugin-name".into(),
            self.name.clone(),
            "--docker-host".into(),
            format!("unix://{}", docker_sock.display()),
        ]
    }
}

impl Default for PluginName {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PluginName {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.socket());
    }
}

/// Where a [`Dockerd`] keeps its state; chosen before the daemon starts so
/// that our daemon can be told Docker's socket.
pub struct DockerDirs {
    pub dir: PathBuf,
}

impl DockerDirs {
    pub fn new() -> DockerDirs {
        let dir = std::env::temp_dir().join(unique("dockerd-test"));
        std::fs::create_dir_all(&dir).expect("creating dockerd's directory");
        DockerDirs { dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }
}

impl Default for DockerDirs {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Dockerd {
    dirs: DockerDirs,
    ns_path: PathBuf,
    child: Option<Child>,
    cluster: Option<Cluster>,
}

/// A dockerd of a multi-host lab: a cluster store, the address it
/// advertises, and a hostname and plugin directory of its own. Docker finds
/// plugins only in `/run/docker/plugins` and names its cluster members by
/// hostname, so it runs in private mount and UTS namespaces where its
/// host's plugin directory is bind-mounted there (both go when it exits).
#[derive(Clone, Debug)]
pub struct Cluster {
    /// `etcd://IP:PORT`.
    pub store: String,
    /// `IP:PORT`.
    pub advertise: String,
    pub hostname: String,
    pub plugins: PathBuf,
}

impl Dockerd {
    /// Starts dockerd in `d`'s namespace and waits until it answers.
    pub fn start(d: &Daemon, dirs: DockerDirs) -> Dockerd {
        Dockerd::start_with(d, dirs, None)
    }

    /// [`Dockerd::start`], as a member of a cluster when given.
    pub fn start_with(d: &Daemon, dirs: DockerDirs, cluster: Option<Cluster>) -> Dockerd {
        let mut k = Dockerd {
            dirs,
            ns_path: d.ns().path(),
            child: None,
            cluster,
        };
        k.spawn();
        k
    }

    fn path(&self, what: &str) -> PathBuf {
        self.dirs.dir.join(what)
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.dirs.socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .expect("dockerd log");
        let mut args: Vec<String> = vec![
            DOCKERD.into(),
            "--data-root".into(),
            self.path("data").display().to_string(),
            "--exec-root".into(),
            self.path("exec").display().to_string(),
            "--pidfile".into(),
            self.path("dockerd.pid").display().to_string(),
            "-H".into(),
            self.host(),
        ];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display()));
        match &self.cluster {
            None => {
                c.args(&args);
            }
            Some(k) => {
                std::fs::create_dir_all(&k.plugins).expect("plugin dir");
                std::fs::create_dir_all(PluginName::dir()).expect("/run/docker/plugins");
                args.extend([
                    "--cluster-store".into(),
                    k.store.clone(),
                    "--cluster-advertise".into(),
                    k.advertise.clone(),
                ]);
                c.args([
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                ])
                .arg(format!(
                    "hostname {} && mount --bind {} {} && exec {}",
                    k.hostname,
                    k.plugins.display(),
                    PluginName::dir(),
                    args.join(" ")
                ));
            }
        }
        let child = c
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        self.child = Some(child);
        retry("dockerd to answer", 300, Duration::from_millis(100), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!(
                        "dockerd exited ({st}): {}",
                        crate::tail(&self.log(), 20)
                    ));
                }
            }
            let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
            out.success().then_some(()).ok_or(out.to_string())
        });
    }

    /// A `docker` client command against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(self.host()).args(args);
        c.env_remove("DOCKER_HOST").env_remove("DOCKER_API_VERSION");
        run(c)
    }

    /// A `docker` command that must succeed (its output and dockerd's log
    /// otherwise).
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.docker(args);
        if !out.success() {
            panic!(
                "docker {args:?} failed: {out}\n--- dockerd log ---\n{}",
                crate::tail(&self.log(), 30)
            );
        }
        out
    }

    /// A `docker` command in the background (`docker run` attached).
    pub fn spawn_docker(&self, args: &[&str]) -> Proc {
        let mut c = Command::new(DOCKER);
        c.arg("-H").arg(self.host()).args(args);
        Proc::spawn(c)
    }

    /// Imports [`IMAGE`] from the host's busybox-static.
    pub fn import_busybox(&self) {
        let root = self.path("rootfs");
        for d in ["bin", "www/cgi-bin", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).expect("rootfs dirs");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copying busybox");
        for applet in [
            "sh", "ip", "ping", "nc", "httpd", "wget", "sleep", "cat", "nslookup", "echo",
            "hostname",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("www/cgi-bin/ip"),
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR $(hostname)\"\n",
        )
        .expect("cgi script");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(
            root.join("www/cgi-bin/ip"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "tar -C {} -c . | {DOCKER} -H {} import -c 'ENV PATH=/bin' - {IMAGE}",
            root.display(),
            self.host()
        ));
        let out = run(c);
        assert!(out.success(), "importing the busybox image: {out}");
    }

    /// Waits until `docker exec CTR ARGS...` succeeds; returns its output.
    #[track_caller]
    pub fn eventually_exec(&self, ctr: &str, args: &[&str]) -> Output {
        let mut full = vec!["exec", ctr];
        full.extend_from_slice(args);
        eventually(&format!("docker exec {ctr} {args:?}"), || {
            let out = self.docker(&full);
            out.success().then_some(out.clone()).ok_or(out.to_string())
        })
    }

    /// dockerd's process id, from its pidfile.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("dockerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops dockerd (SIGTERM, by its pidfile) and waits until it exited.
    /// Its containers stop with it (no live-restore).
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            crate::signal(pid, "TERM");
        }
        if let Some(mut c) = self.child.take() {
            let done = (0..300).any(|_| {
                let exited = matches!(c.try_wait(), Ok(Some(_)));
                if !exited {
                    std::thread::sleep(Duration::from_millis(100));
                }
                exited
            });
            if !done {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts it again on the same directories.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Everything still mounted under its directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let dir = self.dirs.dir.display().to_string();
        let mut m: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&dir))
            .collect();
        m.sort_by_key(|p| std::cmp::Reverse(p.len()));
        m
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in ids.stdout.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
            let nets = self.docker(&["network", "ls", "-q", "--filter", "type=custom"]);
            for id in nets.stdout.split_whitespace() {
                let _ = self.docker(&["network", "rm", id]);
            }
            self.stop();
        }
        if let Some(pid) = self.pid() {
            if crate::alive(pid) {
                crate::signal(pid, "KILL");
            }
        }
        for m in self.mounts() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}", crate::tail(&self.log(), 60));
        }
        let _ = std::fs::remove_dir_all(&self.dirs.dir);
    }
}

//! The demo's third part: real clients. A stock Docker engine uses the
//! dataplane as its network and IPAM driver (`-d dataplane`), and Podman
//! attaches its containers through the `dataplane-cni` plugin; both are
//! switched, published and translated by the eBPF programs, with no
//! docker-proxy and no iptables rule of ours.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    dockerbench::{self, Dockerd},
    lab::{self, Cleanup, Daemon},
    natbench::{self, CLIENT_IP, HOST_IP},
    sh::{self, cmd},
    Progress,
};

const PODMAN: &str = "/usr/bin/podman";

fn show(cmdline: &str, out: &str) {
    println!("$ {cmdline}");
    let out = out.trim_end();
    if !out.is_empty() {
        println!("{out}");
    }
    println!();
}

/// Fetches `url` from namespace `ns` until it answers with `want` (15 s).
fn fetch(ns: &str, url: &str, want: &str) -> Result<String> {
    let got = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut lab::in_netns(ns, &["curl", "-s", "--max-time", "3", url]),
            Some(Duration::from_secs(10)),
        )?;
        Ok(o.stdout.contains(want).then_some(o.stdout))
    })?;
    got.ok_or_else(|| anyhow::anyhow!("{url} did not answer {want:?} from {ns} within 15 s"))
}

/// `-A` rules in the namespace's iptables that mention `port`.
fn rules_for(ns: &str, port: u16) -> Result<Vec<String>> {
    let o = sh::capture(
        &mut lab::in_netns(ns, &["iptables-save"]),
        Some(Duration::from_secs(10)),
    )?;
    let p = port.to_string();
    Ok(o.stdout
        .lines()
        .filter(|l| l.starts_with("-A") && l.contains(&p))
        .map(str::to_string)
        .collect())
}

/// Processes of namespace `ns` whose program is `name`.
fn processes_named(ns: &str, name: &str) -> usize {
    let pids = sh::capture(&mut cmd("ip", ["netns", "pids", ns]), Some(lab::SHORT))
        .map(|o| o.stdout)
        .unwrap_or_default();
    pids.split_whitespace()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split('\0').next().is_some_and(|a| a.ends_with(name)))
        })
        .count()
}

pub fn real_clients(p: &mut Progress, bin: &Path, pid: u32) -> Result<()> {
    let tag = format!("dpdemo{pid}c");
    let (host, outside) = (format!("{tag}-h"), format!("{tag}-o"));
    let dir = std::env::temp_dir().join(&tag);
    let bpffs = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
    let mut cleanup = Cleanup::default();
    cleanup.dir(&dir)?;
    cleanup.path(&bpffs);
    cleanup.netns(&host)?;
    cleanup.netns(&outside)?;
    natbench::uplink(&outside, &host)?;

    p.step(
        "Docker: our daemon with --docker-plugin, and a stock dockerd (Debian's 20.10) beside it",
    );
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    let docker_dir = dir.join("docker");
    let args = [
        "--docker-plugin".to_string(),
        "--docker-plugin-dir".into(),
        plugins.display().to_string(),
        "--docker-host".into(),
        format!("unix://{}", Dockerd::socket_in(&docker_dir).display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start_with(
        bin,
        &host,
        &dir.join("daemon"),
        &bpffs,
        &args,
        Duration::from_secs(30),
    )?;
    let mut docker = Dockerd::start(&host, &docker_dir, &plugins, Duration::from_secs(60))?;
    docker.import_busybox()?;
    println!(
        "# dataplane daemon --docker-plugin ... serves {}/dataplane.sock, which dockerd sees as /run/docker/plugins/dataplane.sock\n# docker = {} -H unix://{}, image {} imported from busybox-static\n",
        plugins.display(),
        dockerbench::DOCKER,
        docker.sock.display(),
        dockerbench::IMAGE
    );

    p.step("docker network create -d dataplane --ipam-driver dataplane --subnet 10.90.0.0/24 app");
    docker.network(
        "app",
        &[
            "-d",
            "dataplane",
            "--ipam-driver",
            "dataplane",
            "--subnet",
            "10.90.0.0/24",
        ],
    )?;
    show(
        "docker network ls --filter driver=dataplane",
        &docker.cli(&["network", "ls", "--filter", "driver=dataplane"])?,
    );
    // The plugin learns Docker's name for it from Docker's API once
    // Docker has stored the network (after the driver answered).
    let ls = lab::poll(Duration::from_secs(10), Duration::from_millis(200), || {
        let ls = d.cli(&["network", "ls"])?;
        Ok(ls
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("app"))
            .then_some(ls))
    })?
    .context("our network did not take Docker's name app within 10 s")?;
    show(
        "dataplane network ls   # the same network, under Docker's name",
        &ls,
    );

    p.step("docker run web -p 8080:80 on app, and a second container fetching http://web/ by Docker's DNS");
    let web = docker.run(
        "web",
        "app",
        &["-p", "8080:80"],
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-docker-on-dataplane > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
        &format!("{tag}-web"),
    )?;
    println!("(web: {} on app)\n", web.ip);
    let by_name = lab::poll(Duration::from_secs(15), Duration::from_millis(300), || {
        let o = sh::capture(
            &mut docker.docker(&[
                "run",
                "--rm",
                "--network",
                "app",
                dockerbench::IMAGE,
                "wget",
                "-qO-",
                "http://web/",
            ]),
            Some(Duration::from_secs(30)),
        )?;
        Ok(o.stdout.contains("hello-from-docker").then_some(o.stdout))
    })?
    .context("a container on app did not fetch http://web/ within 15 s")?;
    show(
        "docker run --rm --network app IMAGE wget -qO- http://web/",
        &by_name,
    );
    show(
        "dataplane ps   # Docker's endpoints, plumbed by our engine",
        &d.cli(&["ps"])?,
    );

    p.step("web's published port from outside: our eBPF NAT, no docker-proxy, no iptables rule");
    let url = format!("http://{HOST_IP}:8080/");
    let got = fetch(&outside, &url, "hello-from-docker")?;
    show(
        &format!("curl {url}   # from {outside} ({CLIENT_IP})"),
        &got,
    );
    let rules = rules_for(&host, 8080)?;
    let proxies = processes_named(&host, "docker-proxy");
    println!(
        "iptables rules mentioning 8080: {}; docker-proxy processes: {proxies}",
        rules.len()
    );
    if !rules.is_empty() || proxies != 0 {
        bail!("port 8080 went through Docker's own path: rules {rules:?}, {proxies} docker-proxy");
    }
    drop(docker);

    p.step("Podman (4.3, CNI backend) attaching through dataplane-cni, -p 8086:80, reached from outside");
    podman(&d, bin, &dir, &host, &outside)?;
    drop(d);
    drop(cleanup);
    println!("\nreal clients OK: Docker's -d dataplane and Podman's CNI plugin put their containers on our eBPF path.");
    Ok(())
}

/// Podman with private state in the daemon's namespace, its CNI network a
/// conflist naming our plugin; one container publishing a port.
fn podman(d: &Daemon, bin: &Path, dir: &Path, host: &str, outside: &str) -> Result<()> {
    if !Path::new(PODMAN).exists() {
        println!("(skipped: {PODMAN} is not installed; `cargo xtask setup` installs it)");
        return Ok(());
    }
    let at = |s: &str| dir.join("podman").join(s);
    for sub in [
        "plugins", "netconf", "root", "runroot", "tmp", "img/bin", "img/www",
    ] {
        std::fs::create_dir_all(at(sub))?;
    }
    std::fs::copy(
        bin.with_file_name("dataplane-cni"),
        at("plugins/dataplane-cni"),
    )
    .context("copying dataplane-cni (cargo xtask build makes it)")?;
    std::fs::copy("/usr/lib/cni/loopback", at("plugins/loopback"))
        .context("copying CNI's loopback plugin (containernetworking-plugins)")?;
    let conflist = serde_json::json!({
        "cniVersion": "0.4.0", "name": "pods",
        "plugins": [{"type": "dataplane-cni", "network": "pods", "subnet": "10.91.0.0/24",
                     "socket": d.sock, "capabilities": {"portMappings": true}}],
    });
    std::fs::write(at("netconf/pods.conflist"), conflist.to_string())?;
    std::fs::write(
        at("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{}\"\n\
             tmp_dir = \"{}\"\nruntime = \"runc\"\n",
            at("plugins").display(),
            at("netconf").display(),
            at("events.log").display(),
            at("tmp").display()
        ),
    )?;
    std::fs::copy("/bin/busybox", at("img/bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", at("img/bin/sh"))?;
    std::fs::write(at("img/www/index.html"), "hello-from-podman-on-dataplane\n")?;
    sh::output(
        cmd("tar", ["-C"])
            .arg(at("img"))
            .arg("-cf")
            .arg(at("img.tar"))
            .arg("."),
        Some(lab::SHORT),
    )?;
    let podman = |args: &[&str]| {
        let mut c = cmd("nsenter", [format!("--net=/var/run/netns/{host}")]);
        c.arg(PODMAN)
            .arg("--root")
            .arg(at("root"))
            .arg("--runroot")
            .arg(at("runroot"))
            .arg("--tmpdir")
            .arg(at("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", at("containers.conf"));
        c
    };
    // Podman writes a blob-info cache under /var/lib/containers whatever
    // --root says: import in a mount namespace with an empty /var/lib.
    let import = podman(&["import", &at("img.tar").display().to_string(), "bb"]);
    let mut c = cmd(
        "unshare",
        [
            "--mount",
            "--propagation",
            "unchanged",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /var/lib && exec \"$@\"",
            "sh",
        ],
    );
    c.arg(import.get_program()).args(import.get_args()).envs(
        import
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
    );
    sh::output(&mut c, Some(Duration::from_secs(60))).context("podman import")?;
    let _guard = PodmanGuard {
        rm: podman(&["rm", "-af", "-t", "0"]),
        dir: at(""),
    };
    let run = [
        "run",
        "-d",
        "--name",
        "pweb",
        "--network",
        "pods",
        "-p",
        "8086:80",
        "bb",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ];
    sh::output(&mut podman(&run), Some(Duration::from_secs(60))).context("podman run")?;
    show(
        "podman run -d --name pweb --network pods -p 8086:80 bb httpd -f -p 80 -h /www",
        "",
    );
    show(
        "dataplane ps   # the CNI attachment beside Docker's",
        &d.cli(&["ps"])?,
    );
    let url = format!("http://{HOST_IP}:8086/");
    let got = fetch(outside, &url, "hello-from-podman")?;
    show(&format!("curl {url}   # from {outside}"), &got);
    Ok(())
}

/// Removes Podman's containers (their DEL goes through our plugin) and
/// unmounts whatever it left under its directory.
struct PodmanGuard {
    rm: std::process::Command,
    dir: PathBuf,
}

impl Drop for PodmanGuard {
    fn drop(&mut self) {
        if let Err(e) = sh::output(&mut self.rm, Some(Duration::from_secs(60))) {
            eprintln!("    cleanup: podman rm: {e:#}");
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&prefix) {
                let _ = sh::succeeds(&mut cmd("umount", ["-l", m]));
            }
        }
    }
}

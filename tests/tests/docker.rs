//! Docker's front door: a stock dockerd (20.10) and our daemon with
//! `--docker-plugin` in one namespace; networks made with `docker network
//! create -d PLUGIN --ipam-driver PLUGIN`, containers run with `docker
//! run`, traffic switched, translated and published by our eBPF path.

use std::time::Duration;

use dataplane_tests::{
    docker::{DockerDirs, Dockerd, PluginName, IMAGE},
    eventually, retry, Daemon, NetNs, Outside, HOST_IP, OUTSIDE_IP,
};
use serde_json::Value;

/// Our daemon serving the plugin under a fresh name, and dockerd beside it
/// with the busybox image. Dropped in reverse order: Docker first.
struct Setup {
    docker: Dockerd,
    plugin: PluginName,
    d: Daemon,
}

fn setup() -> Setup {
    let plugin = PluginName::new();
    let dirs = DockerDirs::new();
    let args = plugin.daemon_args(&dirs.socket());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start_in(NetNs::new(), &args);
    eventually("the plugin socket", || {
        plugin
            .socket()
            .exists()
            .then_some(())
            .ok_or_else(|| d.log())
    });
    let docker = Dockerd::start(&d, dirs);
    docker.import_busybox();
    Setup { docker, plugin, d }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Fields drop in declaration order: docker, plugin, then the daemon.
    }
}

impl Setup {
    fn net_create(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "network",
            "create",
            "-d",
            &self.plugin.name,
            "--ipam-driver",
            &self.plugin.name,
        ];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker.ok(&args).stdout.trim().to_string()
    }

    fn run(&self, name: &str, net: &str, extra: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", net];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        self.docker.ok(&args).stdout.trim().to_string()
    }

    fn sleeper(&self, name: &str, net: &str, extra: &[&str]) -> String {
        self.run(name, net, extra, &["sleep", "3600"])
    }

    fn web(&self, name: &str, net: &str, extra: &[&str]) -> String {
        self.run(name, net, extra, &["httpd", "-f", "-p", "80", "-h", "/www"])
    }

    /// The container's address on `net` as Docker shows it.
    fn ip(&self, ctr: &str, net: &str) -> String {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}");
        self.docker.ok(&["inspect", "-f", &f, ctr]).stdout.trim().to_string()
    }

    fn our_networks(&self) -> Value {
        self.d.ok(&["network", "ls", "--format", "json"]).json()
    }
}

#[test]
fn containers_on_a_dataplane_network_talk_by_docker_s_names() {
    let s = setup();
    let nid = s.net_create("app", &["--subnet", "10.91.0.0/24"]);
    s.sleeper("ca", "app", &[]);
    s.sleeper("cb", "app", &["--network-alias", "bee"]);
    let ip_a = s.ip("ca", "app");
    let ip_b = s.ip("cb", "app");
    assert!(ip_a.starts_with("10.91.0."), "{ip_a}");
    assert_ne!(ip_a, ip_b);
    // Docker's embedded DNS answers the names; our eBPF path carries it.
    for target in ["cb", "bee", &ip_b] {
        s.docker
            .eventually_exec("ca", &["ping", "-c", "1", "-W", "2", target]);
    }
    s.docker.eventually_exec("cb", &["ping", "-c", "1", "-W", "2", "ca"]);
    // The network under Docker's name (learnt from Docker's API), by its id.
    let nets = eventually("the network under Docker's name", || {
        let v = s.our_networks();
        v.as_array()
            .and_then(|a| a.iter().find(|n| n["Name"] == "app").cloned())
            .ok_or(v.to_string())
    });
    assert_eq!(nets["Id"], nid.as_str());
    assert_eq!(nets["Subnet"], "10.91.0.0/24");
    // The attachments show in our ps, by runtime.
    let ps = s.d.ok(&["ps", "--format", "json"]).json();
    let docker_rows = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Runtime"] == "docker")
        .count();
    assert_eq!(docker_rows, 2, "{ps:#}");
}

/// What the container's CGI script answers a `curl` from `ns`: the
/// client address it saw (without the `[::ffff:...]` of its IPv6 socket)
/// and its hostname; retried until it answers.
fn fetch_from(ns: &NetNs, url: &str) -> (String, String) {
    retry(&format!("{url} from {}", ns.name()), 50, Duration::from_millis(200), || {
        let out = ns.exec(&["curl", "-sS", "-m", "3", url]);
        let text = out.stdout.trim();
        match text.split_once(' ') {
            Some((addr, host)) if out.success() => Ok((
                addr.trim_start_matches("[::ffff:")
                    .trim_end_matches(']')
                    .to_string(),
                host.to_string(),
            )),
            _ => Err(out.to_string()),
        }
    })
}

/// The published ports of our attachment on the container's network, as
/// `dataplane ps` shows them (`0.0.0.0:8080->80/tcp, ...`).
fn our_ports(d: &Daemon) -> Vec<String> {
    let ps = d.ok(&["ps", "--format", "json"]).json();
    ps.as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["Runtime"] == "docker")
        .flat_map(|c| {
            c["Ports"]
                .as_str()
                .unwrap_or("")
                .split(", ")
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Processes named `name` whose network namespace is `ns`'s.
fn processes_in(ns: &NetNs, name: &str) -> Vec<u32> {
    let want = std::fs::read_link(format!("/proc/self/ns/net"))
        .ok()
        .and(std::fs::metadata(ns.path()).ok())
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let Some(want) = want else { return Vec::new() };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == format!("net:[{want}]"))
        })
        .collect()
}

#[test]
fn published_ports_in_every_form_keep_the_client_address_without_proxy_or_iptables() {
    let s = setup();
    let out = Outside::new(&s.d);
    s.net_create("pub", &["--subnet", "10.92.0.0/24"]);
    s.run(
        "web",
        "pub",
        &[
            "-p", "8080:80",
            "-p", "127.0.0.1:9090:80",
            "-p", "81",
            "-p", "8100-8102:81",
            "-p", "5353:53/udp",
        ],
        &["sh", "-c", "httpd -p 81 -h /www; exec httpd -f -p 80 -h /www"],
    );
    // Every form, as our daemon bound it.
    let ports = our_ports(&s.d);
    for want in [
        "0.0.0.0:8080->80/tcp",
        "127.0.0.1:9090->80/tcp",
        "0.0.0.0:5353->53/udp",
    ] {
        assert!(ports.iter().any(|p| p == want), "{want} not in {ports:?}");
    }
    let host_port_of = |pred: &dyn Fn(u16) -> bool| -> u16 {
        ports
            .iter()
            .filter_map(|p| p.strip_prefix("0.0.0.0:")?.strip_suffix("->81/tcp")?.parse().ok())
            .find(|p| pred(*p))
            .unwrap_or_else(|| panic!("no binding for 81/tcp in {ports:?}"))
    };
    let ranged = host_port_of(&|p| (8100..=8102).contains(&p));
    let any = host_port_of(&|p| !(8100..=8102).contains(&p));
    // From outside: the container sees the outside's own address.
    for port in [8080, ranged, any] {
        let (addr, _) = fetch_from(out.ns(), &format!("http://{HOST_IP}:{port}/cgi-bin/ip"));
        assert_eq!(addr, OUTSIDE_IP, "port {port}");
    }
    // The host itself, to the port bound to 127.0.0.1 (no proxy: the
    // socket hooks point it at the container).
    let (addr, _) = fetch_from(s.d.ns(), "http://127.0.0.1:9090/cgi-bin/ip");
    assert!(!addr.is_empty());
    // A port bound to 127.0.0.1 does not answer on the outside address.
    let refused = out.exec(&["curl", "-sS", "-m", "2", &format!("http://{HOST_IP}:9090/")]);
    assert!(!refused.success(), "{refused}");
    assert!(processes_in(s.d.ns(), "docker-proxy").is_empty(), "a docker-proxy runs");
    let rules = s.d.ns().exec(&["iptables-save"]).ok().stdout;
    for port in ["8080", "9090", "8100", "5353"] {
        assert!(!rules.contains(port), "an iptables rule for {port}:\n{rules}");
    }
}

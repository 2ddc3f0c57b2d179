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

/// Whether the pinned `ENDPOINTS` map has an entry for `ip`.
fn endpoints_has(d: &Daemon, ip: &str) -> bool {
    let pin = std::fs::read_dir(d.bpffs())
        .expect("bpffs dir")
        .filter_map(Result::ok)
        .map(|e| e.path().join("maps/ENDPOINTS"))
        .find(|p| p.exists())
        .expect("a pinned ENDPOINTS map");
    let out = dataplane_tests::sh("bpftool", &["-j", "map", "dump", "pinned", pin.to_str().unwrap()]).ok();
    let want: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    out.json().as_array().into_iter().flatten().any(|e| {
        let k: Vec<u8> = e["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        k == want
    })
}

/// Host-side veths of our endpoints and Docker peers still in the daemon's
/// namespace.
fn our_veths(d: &Daemon) -> Vec<String> {
    d.ns()
        .exec(&["ip", "-o", "link", "show"])
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("dp") && (n.len() == 14 || n.len() == 15))
        .collect()
}

#[test]
fn ipam_options_addresses_connect_and_removal_leave_nothing() {
    let s = setup();
    s.net_create(
        "ipnet",
        &[
            "--subnet", "10.93.0.0/24",
            "--gateway", "10.93.0.254",
            "--ip-range", "10.93.0.128/25",
            "--aux-address", "printer=10.93.0.129",
        ],
    );
    let ours = s.d.network_inspect("ipnet");
    assert_eq!(ours["IPAM"]["Config"][0]["Gateway"], "10.93.0.254", "{ours:#}");
    s.sleeper("c1", "ipnet", &[]);
    // The range's first address (only the subnet's own are reserved), as
    // Docker's IPAM does.
    assert_eq!(s.ip("c1", "ipnet"), "10.93.0.128");
    s.sleeper("c2", "ipnet", &["--ip", "10.93.0.50"]);
    assert_eq!(s.ip("c2", "ipnet"), "10.93.0.50");
    s.docker.eventually_exec("c1", &["ping", "-c", "1", "-W", "2", "c2"]);
    // The gateway is the default route.
    let routes = s.docker.ok(&["exec", "c1", "ip", "route"]).stdout;
    assert!(routes.contains("default via 10.93.0.254"), "{routes}");
    // An address in use, through Docker or our own CLI.
    let dup = s.docker.docker(&["run", "-d", "--name", "c3", "--network", "ipnet", "--ip", "10.93.0.50", IMAGE, "sleep", "60"]);
    assert!(!dup.success() && dup.stderr.contains("10.93.0.50"), "{dup}");
    let _ = s.docker.docker(&["rm", "-f", "c3"]);
    let ours_dup = s.d.cli(&["run", "-d", "--network", "ipnet", "--ip", "10.93.0.128", "--", "sleep", "60"]);
    assert!(!ours_dup.success() && ours_dup.stderr.contains("in use"), "{ours_dup}");
    // Our own container on Docker's network takes the next free address,
    // and Docker's next container does not get it.
    s.d.ok(&["run", "-d", "--name", "native", "--network", "ipnet", "--", "sleep", "600"]);
    assert_eq!(s.d.ip("native", "ipnet"), "10.93.0.130", "past the aux address");
    s.sleeper("c4", "ipnet", &[]);
    assert_eq!(s.ip("c4", "ipnet"), "10.93.0.131");
    assert!(s.d.pings("native", "10.93.0.131"));
    // A pool overlapping a network is refused, through Docker or our CLI.
    let over = s.docker.docker(&["network", "create", "-d", &s.plugin.name, "--ipam-driver", &s.plugin.name, "--subnet", "10.93.0.0/16", "over"]);
    assert!(!over.success() && over.stderr.contains("overlaps"), "{over}");
    let over = s.d.cli(&["network", "create", "--subnet", "10.93.0.0/25", "over"]);
    assert!(!over.success(), "{over}");
    // connect / disconnect.
    s.net_create("other", &["--subnet", "10.94.0.0/24"]);
    s.sleeper("o1", "other", &[]);
    s.docker.ok(&["network", "connect", "--alias", "one", "other", "c1"]);
    let c1_other = s.ip("c1", "other");
    assert!(c1_other.starts_with("10.94.0."), "{c1_other}");
    s.docker.eventually_exec("o1", &["ping", "-c", "1", "-W", "2", "one"]);
    s.docker.ok(&["network", "disconnect", "other", "c1"]);
    let addrs = s.docker.ok(&["exec", "c1", "ip", "-o", "addr"]).stdout;
    assert!(!addrs.contains("10.94.0."), "{addrs}");
    assert!(!endpoints_has(&s.d, &c1_other), "the disconnected endpoint is still in ENDPOINTS");
    // rm -f, network rm: nothing left (veths, map entries, claims).
    s.d.ok(&["rm", "-f", "native"]);
    let ips: Vec<String> = ["c1", "c2", "c4"].iter().map(|c| s.ip(c, "ipnet")).collect();
    s.docker.ok(&["rm", "-f", "c1", "c2", "c4", "o1"]);
    for ip in &ips {
        assert!(!endpoints_has(&s.d, ip), "{ip} still in ENDPOINTS");
    }
    s.docker.ok(&["network", "rm", "ipnet", "other"]);
    let nets = s.our_networks();
    assert!(
        nets.as_array().unwrap().iter().all(|n| n["Name"] != "ipnet" && n["Name"] != "other"),
        "{nets:#}"
    );
    assert!(our_veths(&s.d).is_empty(), "{:?}", our_veths(&s.d));
    // The pool and its addresses are free again: the same network and the
    // same fixed address work.
    s.net_create("ipnet", &["--subnet", "10.93.0.0/24", "--ip-range", "10.93.0.128/25"]);
    s.sleeper("c5", "ipnet", &["--ip", "10.93.0.50"]);
    assert_eq!(s.ip("c5", "ipnet"), "10.93.0.50");
}

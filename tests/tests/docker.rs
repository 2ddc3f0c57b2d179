//! Docker's front door: a stock dockerd (20.10) and our daemon with
//! `--docker-plugin` in one namespace; networks made with `docker network
//! create -d PLUGIN --ipam-driver PLUGIN`, containers run with `docker
//! run`, traffic switched, translated and published by our eBPF path.

use std::time::Duration;

use dataplane_tests::{
    docker::{Cluster, DockerDirs, Dockerd, PluginName, IMAGE},
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
        let id = self.docker.ok(&args).stdout.trim().to_string();
        // Our daemon learns Docker's name right after (Docker's API shows
        // the network once the driver answered).
        eventually(&format!("our network {id} named {name}"), || {
            let v = self.our_networks();
            v.as_array()
                .into_iter()
                .flatten()
                .any(|n| n["ID"] == id.as_str() && n["Name"] == name)
                .then_some(())
                .ok_or(v.to_string())
        });
        id
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
        self.docker
            .ok(&["inspect", "-f", &f, ctr])
            .stdout
            .trim()
            .to_string()
    }

    fn our_networks(&self) -> Value {
        self.d.networks()
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
    s.docker
        .eventually_exec("cb", &["ping", "-c", "1", "-W", "2", "ca"]);
    // The network under Docker's name (learnt from Docker's API), by its id.
    let nets = eventually("the network under Docker's name", || {
        let v = s.our_networks();
        v.as_array()
            .and_then(|a| a.iter().find(|n| n["Name"] == "app").cloned())
            .ok_or(v.to_string())
    });
    assert_eq!(nets["ID"], nid.as_str());
    assert_eq!(nets["Subnet"], "10.91.0.0/24");
    // The attachments show in our ps, by runtime.
    let ps = s.d.ps();
    let docker_rows = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Runtime"] == "docker")
        .count();
    assert_eq!(docker_rows, 2, "{ps:#}");
    // ... under the names of Docker's containers (learnt from its API).
    eventually("our attachments under Docker's container names", || {
        let ps = s.d.ps();
        let mut names: Vec<String> = ps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["Runtime"] == "docker")
            .filter_map(|c| c["Names"].as_str().map(str::to_string))
            .collect();
        names.sort();
        (names == ["ca", "cb"])
            .then_some(())
            .ok_or(format!("{names:?}"))
    });
    // Without --subnet our IPAM picks a free default pool: not the
    // daemon's bridge, not Docker's docker0, not app's.
    s.net_create("auto", &[]);
    s.sleeper("cc", "auto", &[]);
    let auto = eventually("the auto network under Docker's name", || {
        let v = s.our_networks();
        v.as_array()
            .and_then(|a| a.iter().find(|n| n["Name"] == "auto").cloned())
            .ok_or(v.to_string())
    });
    let subnet = auto["Subnet"].as_str().unwrap().to_string();
    let docker0 =
        s.d.ns()
            .exec(&["ip", "-4", "-o", "addr", "show", "docker0"])
            .ok()
            .stdout;
    let prefix: String = subnet.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        !docker0.contains(&format!(" {prefix}.")),
        "{subnet} vs docker0: {docker0}"
    );
    assert_ne!(subnet, "10.91.0.0/24");
    let ip_c = s.ip("cc", "auto");
    assert!(
        ip_c.starts_with(&format!("{prefix}.")),
        "{ip_c} not in {subnet}"
    );
    // Our own default bridge keeps off docker0's 172.17.0.0/16.
    let ours = s.d.network_inspect("bridge");
    let bridge = ours["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        !bridge.is_empty() && !bridge.starts_with("172.17."),
        "{ours:#}"
    );
    assert!(docker0.contains(" 172.17.0.1/16"), "{docker0}");
}

/// What the container's CGI script answers a `curl` from `ns`: the
/// client address it saw (without the `[::ffff:...]` of its IPv6 socket)
/// and its hostname; retried until it answers.
fn fetch_from(ns: &NetNs, url: &str) -> (String, String) {
    retry(
        &format!("{url} from {}", ns.name()),
        50,
        Duration::from_millis(200),
        || {
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
        },
    )
}

/// The published ports of our attachment on the container's network, as
/// `dataplane ps` shows them (`0.0.0.0:8080->80/tcp, ...`).
fn our_ports(d: &Daemon) -> Vec<String> {
    let ps = d.ps();
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
    // A netns file is the namespace's nsfs inode.
    let want = std::fs::metadata(ns.path())
        .ok()
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
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1:9090:80",
            "-p",
            "81",
            "-p",
            "8100-8102:81",
            "-p",
            "5353:53/udp",
        ],
        &[
            "sh",
            "-c",
            "httpd -p 81 -h /www; exec httpd -f -p 80 -h /www",
        ],
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
            .filter_map(|p| {
                p.strip_prefix("0.0.0.0:")?
                    .strip_suffix("->81/tcp")?
                    .parse()
                    .ok()
            })
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
    assert!(
        processes_in(s.d.ns(), "docker-proxy").is_empty(),
        "a docker-proxy runs"
    );
    let rules = s.d.ns().exec(&["iptables-save"]).ok().stdout;
    for port in ["8080", "9090", "8100", "5353"] {
        assert!(
            !rules.contains(port),
            "an iptables rule for {port}:\n{rules}"
        );
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
    let out = dataplane_tests::sh(
        "bpftool",
        &["-j", "map", "dump", "pinned", pin.to_str().unwrap()],
    )
    .ok();
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
            "--subnet",
            "10.93.0.0/24",
            "--gateway",
            "10.93.0.254",
            "--ip-range",
            "10.93.0.128/25",
            "--aux-address",
            "printer=10.93.0.129",
        ],
    );
    let ours = s.d.network_inspect("ipnet");
    assert_eq!(
        ours["IPAM"]["Config"][0]["Gateway"], "10.93.0.254",
        "{ours:#}"
    );
    s.sleeper("c1", "ipnet", &[]);
    // The range's first address (only the subnet's own are reserved), as
    // Docker's IPAM does.
    assert_eq!(s.ip("c1", "ipnet"), "10.93.0.128");
    s.sleeper("c2", "ipnet", &["--ip", "10.93.0.50"]);
    assert_eq!(s.ip("c2", "ipnet"), "10.93.0.50");
    s.docker
        .eventually_exec("c1", &["ping", "-c", "1", "-W", "2", "c2"]);
    // The gateway is the default route.
    let routes = s.docker.ok(&["exec", "c1", "ip", "route"]).stdout;
    assert!(routes.contains("default via 10.93.0.254"), "{routes}");
    // An address in use, through Docker or our own CLI.
    let dup = s.docker.docker(&[
        "run",
        "-d",
        "--name",
        "c3",
        "--network",
        "ipnet",
        "--ip",
        "10.93.0.50",
        IMAGE,
        "sleep",
        "60",
    ]);
    assert!(!dup.success() && dup.stderr.contains("10.93.0.50"), "{dup}");
    let _ = s.docker.docker(&["rm", "-f", "c3"]);
    let ours_dup = s.d.cli(&[
        "run",
        "-d",
        "--network",
        "ipnet",
        "--ip",
        "10.93.0.128",
        "--",
        "sleep",
        "60",
    ]);
    assert!(
        !ours_dup.success() && ours_dup.stderr.contains("in use"),
        "{ours_dup}"
    );
    // Our own container on Docker's network takes the next free address,
    // and Docker's next container does not get it.
    s.d.ok(&[
        "run",
        "-d",
        "--name",
        "native",
        "--network",
        "ipnet",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(
        s.d.ip("native", "ipnet"),
        "10.93.0.130",
        "past the aux address"
    );
    s.sleeper("c4", "ipnet", &[]);
    assert_eq!(s.ip("c4", "ipnet"), "10.93.0.131");
    assert!(s.d.pings("native", "10.93.0.131"));
    // A pool overlapping a network is refused, through Docker or our CLI.
    let over = s.docker.docker(&[
        "network",
        "create",
        "-d",
        &s.plugin.name,
        "--ipam-driver",
        &s.plugin.name,
        "--subnet",
        "10.93.0.0/16",
        "over",
    ]);
    assert!(
        !over.success() && over.stderr.contains("overlaps"),
        "{over}"
    );
    let over =
        s.d.cli(&["network", "create", "--subnet", "10.93.0.0/25", "over"]);
    assert!(!over.success(), "{over}");
    // connect / disconnect.
    s.net_create("other", &["--subnet", "10.94.0.0/24"]);
    s.sleeper("o1", "other", &[]);
    s.docker
        .ok(&["network", "connect", "--alias", "one", "other", "c1"]);
    let c1_other = s.ip("c1", "other");
    // A second endpoint of the container: NAME.NETWORK on our side.
    eventually("c1's second attachment named c1.other", || {
        let ps = s.d.ps().to_string();
        ps.contains("\"c1.other\"").then_some(()).ok_or(ps)
    });
    assert!(c1_other.starts_with("10.94.0."), "{c1_other}");
    s.docker
        .eventually_exec("o1", &["ping", "-c", "1", "-W", "2", "one"]);
    s.docker.ok(&["network", "disconnect", "other", "c1"]);
    let addrs = s.docker.ok(&["exec", "c1", "ip", "-o", "addr"]).stdout;
    assert!(!addrs.contains("10.94.0."), "{addrs}");
    assert!(
        !endpoints_has(&s.d, &c1_other),
        "the disconnected endpoint is still in ENDPOINTS"
    );
    // rm -f, network rm: nothing left (veths, map entries, claims).
    s.d.ok(&["rm", "-f", "native"]);
    let ips: Vec<String> = ["c1", "c2", "c4"]
        .iter()
        .map(|c| s.ip(c, "ipnet"))
        .collect();
    s.docker.ok(&["rm", "-f", "c1", "c2", "c4", "o1"]);
    for ip in &ips {
        assert!(!endpoints_has(&s.d, ip), "{ip} still in ENDPOINTS");
    }
    s.docker.ok(&["network", "rm", "ipnet", "other"]);
    let nets = s.our_networks();
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .all(|n| n["Name"] != "ipnet" && n["Name"] != "other"),
        "{nets:#}"
    );
    assert!(our_veths(&s.d).is_empty(), "{:?}", our_veths(&s.d));
    // The pool and its addresses are free again: the same network and the
    // same fixed address work.
    s.net_create(
        "ipnet",
        &["--subnet", "10.93.0.0/24", "--ip-range", "10.93.0.128/25"],
    );
    s.sleeper("c5", "ipnet", &["--ip", "10.93.0.50"]);
    assert_eq!(s.ip("c5", "ipnet"), "10.93.0.50");
}

#[test]
fn traffic_survives_restarts_of_dockerd_and_of_our_daemon() {
    let mut s = setup();
    let out = Outside::new(&s.d);
    s.net_create("rs", &["--subnet", "10.95.0.0/24"]);
    s.web("web", "rs", &["--restart", "always", "-p", "8080:80"]);
    s.sleeper("cl", "rs", &["--restart", "always"]);
    s.docker
        .eventually_exec("cl", &["ping", "-c", "1", "-W", "2", "web"]);
    assert_eq!(
        fetch_from(out.ns(), &format!("http://{HOST_IP}:8080/cgi-bin/ip")).0,
        OUTSIDE_IP
    );

    // Our daemon goes and comes back: the pinned path keeps carrying.
    s.d.stop("TERM");
    s.docker
        .ok(&["exec", "cl", "ping", "-c", "1", "-W", "2", "web"]);
    assert_eq!(
        fetch_from(out.ns(), &format!("http://{HOST_IP}:8080/cgi-bin/ip")).0,
        OUTSIDE_IP
    );
    s.d.restart();
    eventually("the plugin socket after our restart", || {
        s.plugin
            .socket()
            .exists()
            .then_some(())
            .ok_or_else(|| s.d.log())
    });
    s.docker
        .ok(&["exec", "cl", "ping", "-c", "1", "-W", "2", "web"]);
    // New containers after our restart.
    s.sleeper("late", "rs", &[]);
    s.docker
        .eventually_exec("late", &["ping", "-c", "1", "-W", "2", "web"]);
    s.docker.ok(&["rm", "-f", "late"]);

    // dockerd goes (its containers stop) and comes back (it restarts them
    // on our network, with the addresses its IPAM asks for again).
    let web_ip = s.ip("web", "rs");
    s.docker.stop();
    s.docker.restart();
    eventually("dockerd to restart web and cl", || {
        let out = s.docker.docker(&["ps", "--format", "{{.Names}}"]);
        let names = out.stdout.clone();
        (names.contains("web") && names.contains("cl"))
            .then_some(())
            .ok_or(out.to_string())
    });
    s.docker
        .eventually_exec("cl", &["ping", "-c", "1", "-W", "2", "web"]);
    assert_eq!(
        fetch_from(out.ns(), &format!("http://{HOST_IP}:8080/cgi-bin/ip")).0,
        OUTSIDE_IP
    );
    let ps = s.d.ps();
    let docker_rows = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Runtime"] == "docker")
        .count();
    assert_eq!(
        docker_rows, 2,
        "one attachment per running container, none stale: {ps:#}"
    );
    assert!(
        s.ip("web", "rs").starts_with("10.95.0."),
        "web had {web_ip}"
    );
}

/// A raw plugin call: (HTTP status, body).
fn call(s: &Setup, method: &str, body: &str) -> (u16, Value) {
    let out = dataplane_tests::sh(
        "curl",
        &[
            "-sS",
            "-m",
            "10",
            "--unix-socket",
            s.plugin.socket().to_str().unwrap(),
            "-H",
            "Content-Type: application/vnd.docker.plugins.v1.2+json",
            "-w",
            "\n%{http_code}",
            "--data-binary",
            body,
            &format!("http://plugin/{method}"),
        ],
    );
    let (json, code) = out.stdout.trim().rsplit_once('\n').unwrap_or(("", ""));
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(json).unwrap_or_else(|_| Value::String(json.into())),
    )
}

#[test]
fn the_plugin_socket_answers_bad_input_with_err_and_keeps_serving() {
    let s = setup();
    let (code, v) = call(&s, "Plugin.Activate", "");
    assert_eq!(
        (code, v),
        (
            200,
            serde_json::json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        )
    );
    let (_, v) = call(&s, "NetworkDriver.GetCapabilities", "");
    assert_eq!(v["Scope"], "local");
    for (method, body, says) in [
        ("NetworkDriver.CreateEndpoint", "{", "not valid"),
        (
            "NetworkDriver.CreateEndpoint",
            "[1,2]",
            "expected a JSON object",
        ),
        (
            "NetworkDriver.CreateNetwork",
            r#"{"NetworkID":"../../etc","IPv4Data":[{"Pool":"10.1.0.0/24"}]}"#,
            "invalid NetworkID",
        ),
        (
            "NetworkDriver.CreateNetwork",
            r#"{"NetworkID":"abc","IPv4Data":[]}"#,
            "no IPv4 pool",
        ),
        (
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"abc","EndpointID":"def","Interface":{"Address":"bogus"}}"#,
            "invalid address",
        ),
        (
            "NetworkDriver.Join",
            r#"{"NetworkID":"abc","EndpointID":"def","SandboxKey":"/nope"}"#,
            "no docker attachment",
        ),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            r#"{"EndpointID":"def","Options":{"com.docker.network.portmap":[{"Proto":132,"Port":1}]}}"#,
            "SCTP",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"10.1.0.1/16"}"#,
            "host bits",
        ),
        (
            "IpamDriver.RequestPool",
            r#"{"Pool":"fd00::/64","V6":true}"#,
            "IPv6",
        ),
        (
            "IpamDriver.RequestAddress",
            r#"{"PoolID":"dataplane/10.250.0.0/24"}"#,
            "no such address pool",
        ),
        ("IpamDriver.RequestAddress", r#"{"PoolID":5}"#, "not valid"),
        ("NetworkDriver.Frobnicate", "{}", "not a call"),
    ] {
        let (code, v) = call(&s, method, body);
        assert!(code >= 400, "{method} {body}: {code} {v}");
        let err = v["Err"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {body}: no Err in {v}"));
        assert!(err.contains(says), "{method} {body}: {err}");
    }
    // Releasing what is not there succeeds (Docker may release twice).
    for (method, body) in [
        (
            "IpamDriver.ReleasePool",
            r#"{"PoolID":"dataplane/10.250.0.0/24"}"#,
        ),
        (
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"dataplane/10.250.0.0/24","Address":"10.250.0.9"}"#,
        ),
        (
            "NetworkDriver.DeleteEndpoint",
            r#"{"NetworkID":"abc","EndpointID":"def"}"#,
        ),
        ("NetworkDriver.DeleteNetwork", r#"{"NetworkID":"abc"}"#),
        (
            "NetworkDriver.DiscoverNew",
            r#"{"DiscoveryType":1,"DiscoveryData":{"Address":"x"},"Later":null}"#,
        ),
    ] {
        let (code, v) = call(&s, method, body);
        assert_eq!((code, &v), (200, &serde_json::json!({})), "{method} {body}");
    }
    // A pool asked for twice is the same pool, released once for good.
    let (_, a) = call(&s, "IpamDriver.RequestPool", r#"{"Pool":"10.250.0.0/24"}"#);
    let (_, b) = call(
        &s,
        "IpamDriver.RequestPool",
        r#"{"Pool":"10.250.0.0/24","Options":null}"#,
    );
    assert_eq!(a, b);
    assert_eq!(a["PoolID"], "dataplane/10.250.0.0/24");
    let (_, g) = call(
        &s,
        "IpamDriver.RequestAddress",
        r#"{"PoolID":"dataplane/10.250.0.0/24","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
    );
    assert_eq!(g["Address"], "10.250.0.1/24");
    let (code, v) = call(&s, "IpamDriver.RequestPool", r#"{"Pool":"10.250.0.0/16"}"#);
    assert!(
        code >= 400 && v["Err"].as_str().unwrap_or("").contains("overlaps"),
        "{v}"
    );
    call(
        &s,
        "IpamDriver.ReleasePool",
        r#"{"PoolID":"dataplane/10.250.0.0/24"}"#,
    );
    let (code, _) = call(&s, "IpamDriver.RequestPool", r#"{"Pool":"10.250.0.0/16"}"#);
    assert_eq!(code, 200);
    // Docker's user sees the message.
    let v6 = s.docker.docker(&[
        "network",
        "create",
        "-d",
        &s.plugin.name,
        "--ipam-driver",
        &s.plugin.name,
        "--ipv6",
        "--subnet",
        "10.251.0.0/24",
        "--subnet",
        "fd00:1::/64",
        "v6",
    ]);
    assert!(!v6.success() && v6.stderr.contains("IPv6"), "{v6}");
    // Still serving, both doors.
    s.d.ok(&["network", "ls"]);
    assert_eq!(call(&s, "Plugin.Activate", "").0, 200);
}

#[test]
fn internal_icc_default_ipam_and_docker_s_own_bridge_side_by_side() {
    let s = setup();
    let out = Outside::new(&s.d);
    // Docker leaves FORWARD's policy alone when forwarding was on already
    // (our daemon turned it on); on a host where Docker turned it on it
    // is DROP. Our path must not care: forwarded frames never reach
    // netfilter's FORWARD.
    s.d.ns().exec(&["iptables", "-P", "FORWARD", "DROP"]).ok();
    let rules_before = docker_rules(&s.d);
    assert!(rules_before.contains("-P FORWARD DROP"), "{rules_before}");
    // Docker's own bridge network, its own path.
    s.docker
        .ok(&["run", "-d", "--name", "br1", IMAGE, "sleep", "3600"]);
    s.docker
        .ok(&["run", "-d", "--name", "br2", IMAGE, "sleep", "3600"]);
    let br2 = s.ip("br2", "bridge");
    s.docker
        .eventually_exec("br1", &["ping", "-c", "1", "-W", "2", &br2]);
    // Ours: outbound masquerade to the outside, internal, icc=false,
    // Docker's default IPAM.
    s.net_create("open", &["--subnet", "10.96.0.0/24"]);
    s.sleeper("o1", "open", &[]);
    s.docker
        .eventually_exec("o1", &["ping", "-c", "1", "-W", "2", OUTSIDE_IP]);
    s.net_create("inner", &["--internal", "--subnet", "10.96.1.0/24"]);
    s.sleeper("i1", "inner", &[]);
    s.sleeper("i2", "inner", &[]);
    s.docker
        .eventually_exec("i1", &["ping", "-c", "1", "-W", "2", "i2"]);
    let routes = s.docker.ok(&["exec", "i1", "ip", "route"]).stdout;
    assert!(!routes.contains("default"), "{routes}");
    assert!(!s
        .docker
        .docker(&["exec", "i1", "ping", "-c", "1", "-W", "1", OUTSIDE_IP])
        .success());
    s.net_create("noicc", &["-o", "icc=false", "--subnet", "10.96.2.0/24"]);
    s.sleeper("n1", "noicc", &[]);
    s.sleeper("n2", "noicc", &[]);
    let n2 = s.ip("n2", "noicc");
    let before = s.d.drops("icc_denied");
    assert!(!s
        .docker
        .docker(&["exec", "n1", "ping", "-c", "1", "-W", "1", &n2])
        .success());
    assert!(s.d.drops("icc_denied") > before, "icc drops not counted");
    let def = s
        .docker
        .ok(&[
            "network",
            "create",
            "-d",
            &s.plugin.name,
            "--subnet",
            "10.96.3.0/24",
            "defipam",
        ])
        .stdout;
    s.sleeper("d1", "defipam", &[]);
    s.sleeper("d2", "defipam", &["--ip", "10.96.3.77"]);
    s.docker
        .eventually_exec("d1", &["ping", "-c", "1", "-W", "2", "d2"]);
    let ours = s.d.network_inspect(def.trim());
    assert_eq!(
        ours["IPAM"]["Config"][0]["Subnet"], "10.96.3.0/24",
        "{ours:#}"
    );
    // Docker's bridge still works, and its rules are as Docker made them.
    s.docker
        .ok(&["exec", "br1", "ping", "-c", "1", "-W", "2", &br2]);
    assert_eq!(docker_rules(&s.d), rules_before);
    let _ = out;
}

/// The filter and nat rules of the daemon's namespace (`-S`: no counters).
fn docker_rules(d: &Daemon) -> String {
    let mut v: Vec<String> = Vec::new();
    for table in ["filter", "nat"] {
        let out = d.ns().exec(&["iptables", "-t", table, "-S"]).ok();
        v.extend(out.stdout.lines().map(str::to_string));
    }
    v.join("\n")
}

#[test]
fn an_overlay_network_made_through_docker_spans_the_cluster_s_hosts() {
    // Two hosts on one etcd: each runs our daemon (--store, the plugin in a
    // directory of its own) and a dockerd with the same etcd as its
    // cluster store. Docker sees the driver's global scope and shares the
    // network; our daemons share it as an overlay network.
    let mut lab = dataplane_tests::Lab::new(0, 10);
    let name = dataplane_tests::unique("dpt");
    let dirs = [DockerDirs::new(), DockerDirs::new()];
    let plugin_dirs: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.dir.join("plugins")).collect();
    for (i, d) in dirs.iter().enumerate() {
        let args = [
            "--docker-plugin".to_string(),
            "--docker-plugin-dir".into(),
            plugin_dirs[i].display().to_string(),
            "--docker-plugin-name".into(),
            name.clone(),
            "--docker-host".into(),
            format!("unix://{}", d.socket().display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.add_host_with(&args);
    }
    let store = lab.etcd().url();
    let [d0, d1] = dirs;
    let dockers: Vec<Dockerd> = [d0, d1]
        .into_iter()
        .enumerate()
        .map(|(i, dirs)| {
            let k = Dockerd::start_with(
                lab.host(i),
                dirs,
                Some(Cluster {
                    store: store.clone(),
                    advertise: format!("{}:2376", lab.host_ip(i)),
                    hostname: format!("dockerh{i}"),
                    plugins: plugin_dirs[i].clone(),
                }),
            );
            k.import_busybox();
            k
        })
        .collect();
    let (k0, k1) = (&dockers[0], &dockers[1]);
    let nid = k0
        .ok(&[
            "network",
            "create",
            "-d",
            &name,
            "--ipam-driver",
            &name,
            "-o",
            "dataplane.driver=overlay",
            "--subnet",
            "10.98.0.0/24",
            "ovl",
        ])
        .stdout
        .trim()
        .to_string();
    eventually("the second dockerd to see the network", || {
        let out = k1.docker(&["network", "ls", "--format", "{{.Name}} {{.Scope}}"]);
        out.stdout
            .contains("ovl global")
            .then_some(())
            .ok_or(out.to_string())
    });
    k0.ok(&[
        "run",
        "-d",
        "--name",
        "w0",
        "--network",
        "ovl",
        IMAGE,
        "sleep",
        "3600",
    ]);
    k1.ok(&[
        "run",
        "-d",
        "--name",
        "w1",
        "--network",
        "ovl",
        IMAGE,
        "sleep",
        "3600",
    ]);
    k0.eventually_exec("w0", &["ping", "-c", "1", "-W", "2", "w1"]);
    k1.eventually_exec("w1", &["ping", "-c", "1", "-W", "2", "w0"]);
    // Each host's addresses come from its own block of the subnet.
    let ip = |k: &Dockerd, c: &str| {
        k.ok(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"ovl\").IPAddress}}",
            c,
        ])
        .stdout
        .trim()
        .to_string()
    };
    let (a, b) = (ip(k0, "w0"), ip(k1, "w1"));
    assert_ne!(
        a.rsplit('.').next().unwrap().parse::<u8>().unwrap() / 64,
        b.rsplit('.').next().unwrap().parse::<u8>().unwrap() / 64,
        "{a} {b}"
    );
    for i in 0..2 {
        // Under Docker's name, learnt by the first host (the record is
        // the cluster's).
        let ovl = eventually(&format!("host {i} to list ovl"), || {
            let nets = lab.host(i).networks();
            let ovl = nets
                .as_array()
                .and_then(|a| a.iter().find(|n| n["Name"] == "ovl").cloned());
            ovl.ok_or(format!("{nets:#}"))
        });
        assert_eq!(
            (ovl["ID"].as_str(), ovl["Driver"].as_str()),
            (Some(nid.as_str()), Some("overlay"))
        );
        // No vxlan device: the tunnel is our eBPF path.
        let links = lab
            .host(i)
            .ns()
            .exec(&["ip", "-d", "link", "show"])
            .ok()
            .stdout;
        assert!(!links.contains("vxlan"), "{links}");
    }
    k0.ok(&["rm", "-f", "w0"]);
    k1.ok(&["rm", "-f", "w1"]);
    k0.ok(&["network", "rm", "ovl"]);
    for i in 0..2 {
        eventually("the overlay network to go everywhere", || {
            let nets = lab.host(i).networks().to_string();
            (!nets.contains(&nid)).then_some(()).ok_or(nets)
        });
    }
    // Nothing of Docker's IPAM is left in the cluster's store.
    let range = format!("{}/v3/kv/range", lab.etcd().http());
    let keys = lab.etcd().curl(&[
        "-s",
        "-X",
        "POST",
        &range,
        "-d",
        r#"{"key":"L2RhdGFwbGFuZS8=","range_end":"L2RhdGFwbGFuZTA=","keys_only":true}"#,
    ]);
    let keys: Vec<String> = keys.json()["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["key"].as_str())
        .map(b64)
        .collect();
    assert!(
        keys.iter()
            .all(|k| !k.contains("docker/pools") && !k.contains("claims/ips")),
        "{keys:#?}"
    );
    drop(dockers);
}

/// Base64 (standard alphabet, as etcd's JSON gateway writes keys).
fn b64(s: &str) -> String {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_macvlan_network_made_through_docker_puts_containers_on_the_lan() {
    let s = setup();
    let mut lan = dataplane_tests::lan::Lan::new(&s.d);
    let peer = lan.peer("10.92.0.50/24", None);
    s.net_create(
        "lanmv",
        &[
            "--subnet",
            "10.92.0.0/24",
            "--ip-range",
            "10.92.0.128/25",
            "--gateway",
            "10.92.0.1",
            "-o",
            "dataplane.driver=macvlan",
            "-o",
            "parent=lan0",
        ],
    );
    let n = s.d.network_inspect("lanmv");
    assert_eq!(
        (&n["Driver"], &n["Options"]["parent"]),
        (&Value::from("macvlan"), &Value::from("lan0")),
        "{n:#}"
    );
    s.sleeper("mv1", "lanmv", &[]);
    let ip = s.ip("mv1", "lanmv");
    assert!(
        ip.starts_with("10.92.0.1") || ip.starts_with("10.92.0.2"),
        "{ip}"
    );
    // On the LAN itself: no veth of ours carries it (only the test's lan0).
    let veths = s.d.ns().exec(&["ip", "-o", "link", "show", "type", "veth"]);
    assert_eq!(veths.stdout.lines().count(), 1, "{veths}");
    s.docker
        .eventually_exec("mv1", &["ping", "-c", "1", "-W", "2", "10.92.0.50"]);
    assert!(
        (0..5).any(|_| peer.exec(&["ping", "-c1", "-W1", &ip]).success()),
        "the LAN peer does not reach {ip}"
    );
    // VLAN 100 of the same parent, our tags, reached by a tagged peer.
    let p100 = lan.port_ns();
    let _t100 =
        dataplane_tests::lan::TaggedPeer::start(&p100, 100, "10.93.0.50", "02:00:00:00:09:30");
    s.net_create(
        "lanv100",
        &[
            "--subnet",
            "10.93.0.0/24",
            "--gateway",
            "10.93.0.1",
            "-o",
            "dataplane.driver=macvlan",
            "-o",
            "parent=lan0.100",
        ],
    );
    s.sleeper("v1", "lanv100", &[]);
    s.docker
        .eventually_exec("v1", &["ping", "-c", "1", "-W", "2", "10.93.0.50"]);
    s.docker.ok(&["rm", "-f", "v1"]);
    s.docker.ok(&["network", "rm", "lanv100"]);
    // Removal through Docker leaves no link behind on our side.
    s.docker.ok(&["rm", "-f", "mv1"]);
    s.docker.ok(&["network", "rm", "lanmv"]);
    eventually("the macvlan link to go", || {
        let links =
            s.d.ns()
                .exec(&["ip", "-o", "link", "show", "type", "macvlan"]);
        links
            .stdout
            .trim()
            .is_empty()
            .then_some(())
            .ok_or(links.to_string())
    });
}

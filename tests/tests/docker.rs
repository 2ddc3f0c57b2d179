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
    eprintln!("{}", s.d.log());
}

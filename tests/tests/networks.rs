//! The control plane as the CLI shows it: networks, containers, inspect
//! shapes, connect/disconnect and removal.

use dataplane_tests::{in_subnet, netns_exists, netns_list, only, Daemon};
use serde_json::{json, Value};

/// The `name` entry of `network ls --format json`.
fn listed_network(d: &Daemon, name: &str) -> Value {
    let ls = d.networks();
    ls.as_array()
        .and_then(|a| a.iter().find(|n| n["Name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("network {name} not listed: {ls:#}"))
}

/// `(Subnet, Gateway)` of a network's first IPAM config.
fn ipam(d: &Daemon, name: &str) -> (String, String) {
    let cfg = &d.network_inspect(name)["IPAM"]["Config"][0];
    (
        cfg["Subnet"].as_str().unwrap_or_default().to_string(),
        cfg["Gateway"].as_str().unwrap_or_default().to_string(),
    )
}

/// `ip -o -4 addr show dev IFNAME` inside the container.
fn addr_of(d: &Daemon, ctr: &str, ifname: &str) -> String {
    d.exec_in(ctr, &["ip", "-o", "-4", "addr", "show", "dev", ifname])
        .stdout
}

#[test]
fn the_bridge_network_exists_from_the_first_start() {
    let d = Daemon::start();
    listed_network(&d, "bridge");
    assert_eq!(
        ipam(&d, "bridge"),
        ("172.17.0.0/16".to_string(), "172.17.0.1".to_string())
    );
    // No --network: the container lands on bridge.
    d.run_sleeper("c", None, &[]);
    assert!(in_subnet(&d.ip("c", "bridge"), "172.17.0.0/16"));
}

#[test]
fn subnets_without_subnet_come_from_the_default_pools() {
    let d = Daemon::start();
    d.network_create(&["a"]);
    d.network_create(&["--driver", "bridge", "b"]);
    assert_eq!(ipam(&d, "a"), ("172.18.0.0/16".into(), "172.18.0.1".into()));
    assert_eq!(ipam(&d, "b"), ("172.19.0.0/16".into(), "172.19.0.1".into()));
    // A removed network's subnet is free again.
    d.ok(&["network", "rm", "a"]);
    d.network_create(&["c"]);
    assert_eq!(ipam(&d, "c"), ("172.18.0.0/16".into(), "172.18.0.1".into()));
}

#[test]
fn network_inspect_has_the_docker_shape() {
    let d = Daemon::start();
    let id = d.network_create(&[
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.254",
        "--ip-range",
        "10.10.0.128/25",
        "--aux-address",
        "router=10.10.0.128",
        "--aux-address",
        "printer=10.10.0.129",
        "--opt",
        "com.example.k=v",
        "shape",
    ]);
    let n = d.network_inspect("shape");
    assert_eq!(n["Name"], "shape");
    assert_eq!(n["Id"], id.as_str());
    assert_eq!(n["Driver"], "bridge");
    assert_eq!(n["Internal"], false);
    assert_eq!(
        n["IPAM"]["Config"],
        json!([{
            "Subnet": "10.10.0.0/24",
            "Gateway": "10.10.0.254",
            "IPRange": "10.10.0.128/25",
            "AuxiliaryAddresses": {"router": "10.10.0.128", "printer": "10.10.0.129"},
        }]),
        "{n:#}"
    );
    assert_eq!(n["Containers"], json!({}), "{n:#}");
    listed_network(&d, "shape");

    let cid = d.run_sleeper("c", Some("shape"), &[]);
    let c = d.inspect("c");
    let ep = &c["NetworkSettings"]["Networks"]["shape"];
    let ip = ep["IPAddress"].as_str().expect("IPAddress").to_string();
    // From the range, past the auxiliary addresses, never the gateway.
    assert!(in_subnet(&ip, "10.10.0.128/25"), "{ip}");
    assert!(!["10.10.0.128", "10.10.0.129", "10.10.0.254"].contains(&ip.as_str()));
    assert_eq!(ep["Gateway"], "10.10.0.254");
    assert_eq!(ep["IPPrefixLen"], 24);

    let n = d.network_inspect("shape");
    let containers = n["Containers"].as_object().expect("Containers object");
    assert_eq!(containers.len(), 1, "{n:#}");
    let entry = &containers[&cid];
    assert_eq!(entry["Name"], "c");
    assert_eq!(entry["IPv4Address"], format!("{ip}/24").as_str());
    assert_eq!(entry["EndpointID"], ep["EndpointID"]);
    assert_eq!(entry["MacAddress"], ep["MacAddress"]);
    // The MAC the API reports is eth0's.
    let mac = d.exec_in("c", &["cat", "/sys/class/net/eth0/address"]).ok();
    assert_eq!(mac.text(), ep["MacAddress"].as_str().unwrap_or_default());
}

#[test]
fn a_container_gets_a_sandbox_with_lo_eth0_and_a_default_route() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.11.0.0/24", "n"]);
    let id = d.run_sleeper("c", Some("n"), &["--ip", "10.11.0.42", "--hostname", "box"]);
    let c = d.inspect("c");
    assert_eq!(c["Id"], id.as_str());
    assert_eq!(c["Name"], "c");
    assert_eq!(c["State"]["Running"], true);
    assert!(c["State"]["Pid"].as_u64().unwrap_or(0) > 0, "{c:#}");
    let sandbox = d.sandbox("c");
    assert!(
        sandbox.starts_with("dp-") && sandbox.len() == 15,
        "{sandbox}"
    );
    assert!(
        sandbox[3..].chars().all(|ch| ch.is_ascii_hexdigit()),
        "{sandbox}"
    );
    assert!(netns_list().contains(&sandbox));

    let lo = d.exec_in("c", &["ip", "-o", "link", "show", "lo"]).ok();
    assert!(lo.stdout.contains("UP"), "{lo}");
    assert!(addr_of(&d, "c", "eth0").contains("inet 10.11.0.42/24"));
    let routes = d.exec_in("c", &["ip", "route", "show", "default"]).ok();
    assert!(
        routes.stdout.contains("default via 10.11.0.1 dev eth0"),
        "{routes}"
    );
    let hostname = d.exec_in("c", &["hostname"]).ok();
    assert_eq!(hostname.text(), "box");

    let ps = d.ps();
    let listed = only(ps);
    assert_eq!(listed["Names"], "c");
    assert_eq!(listed["ID"], id.as_str());
    assert_eq!(listed["Networks"], "n", "{listed:#}");
}

#[test]
fn exec_returns_the_exit_code_and_output_and_logs_show_the_command_output() {
    let d = Daemon::start();
    d.run_cmd(
        "c",
        None,
        &[],
        &["sh", "-c", "echo started-$HOSTNAME; exec sleep infinity"],
    );
    let out = d.exec_in("c", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(out.status, Some(3), "{out}");
    assert_eq!(out.stdout, "out\n");
    assert!(out.stderr.contains("err"), "{out}");
    d.wait_logs("c", "started-");
}

#[test]
fn connect_adds_eth1_and_disconnect_removes_it() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.12.0.0/24", "a"]);
    d.network_create(&["--subnet", "10.13.0.0/24", "b"]);
    d.run_sleeper("c", Some("a"), &[]);
    d.run_sleeper("peer", Some("b"), &[]);
    let peer = d.ip("peer", "b");
    d.assert_no_ping("c", &peer);

    d.ok(&["network", "connect", "--ip", "10.13.0.50", "b", "c"]);
    assert!(addr_of(&d, "c", "eth1").contains("inet 10.13.0.50/24"));
    assert_eq!(d.ip("c", "b"), "10.13.0.50");
    assert!(!d.ip("c", "a").is_empty());
    d.assert_pings("c", &peer);
    assert!(d.network_inspect("b")["Containers"]
        .to_string()
        .contains("10.13.0.50/24"));

    d.ok(&["network", "disconnect", "b", "c"]);
    let gone = d.exec_in("c", &["ip", "link", "show", "eth1"]);
    assert!(!gone.success(), "eth1 survived the disconnect: {gone}");
    let nets = d.inspect("c")["NetworkSettings"]["Networks"].clone();
    assert!(
        nets.get("b").is_none() && nets.get("a").is_some(),
        "{nets:#}"
    );
    assert_eq!(
        d.network_inspect("b")["Containers"]
            .as_object()
            .map(|o| o.len()),
        Some(1)
    );
    d.assert_no_ping("c", &peer);
    // Connecting again without --ip works and hands out eth1 again.
    d.ok(&["network", "connect", "b", "c"]);
    assert!(addr_of(&d, "c", "eth1").contains("inet 10.13.0."));
}

#[test]
fn rm_removes_the_sandbox_and_frees_the_address() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.14.0.0/24", "n"]);
    d.run_sleeper("c", Some("n"), &["--ip", "10.14.0.7"]);
    let sandbox = d.sandbox("c");
    let pid = d.inspect("c")["State"]["Pid"].as_u64().unwrap() as u32;
    assert!(netns_exists(&sandbox));

    d.ok(&["rm", "-f", "c"]);
    assert!(!netns_exists(&sandbox), "{sandbox} survived rm");
    assert!(!netns_list().contains(&sandbox));
    assert!(
        !dataplane_tests::alive(pid),
        "the container process survived rm"
    );
    assert_eq!(d.ps(), json!([]));
    assert_eq!(d.network_inspect("n")["Containers"], json!({}));
    // No veth of it is left in the host netns: only lo remains.
    let links = d
        .ns()
        .exec(&["ip", "-o", "link", "show", "type", "veth"])
        .ok();
    assert_eq!(links.text(), "", "veths left after rm");

    // Name and address are free again.
    d.run_sleeper("c", Some("n"), &["--ip", "10.14.0.7"]);
    assert_eq!(d.ip("c", "n"), "10.14.0.7");
    d.ok(&["rm", "-f", "c"]);
    d.ok(&["network", "rm", "n"]);
}

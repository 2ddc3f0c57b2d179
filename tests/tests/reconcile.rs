//! The control plane as a reconciler: drift is repaired without a restart,
//! reads answer while a slow write runs, racing writes have exactly one
//! winner, and the `host` and `none` drivers.

use std::{path::PathBuf, time::Duration};

use dataplane_tests::{eventually, netns_exists, retry, sh, Daemon, Output};
use serde_json::Value;

/// A pinned map of the daemon's.
fn map_pin(d: &Daemon, name: &str) -> PathBuf {
    std::fs::read_dir(d.bpffs())
        .expect("bpffs dir")
        .filter_map(Result::ok)
        .map(|e| e.path().join("maps").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned {name} map under {}", d.bpffs().display()))
}

fn link_pin(d: &Daemon, veth: &str) -> PathBuf {
    std::fs::read_dir(d.bpffs())
        .expect("bpffs dir")
        .filter_map(Result::ok)
        .map(|e| e.path().join("links").join(veth))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned link for {veth}"))
}

/// `bpftool -j map dump`: the entries, each with "key" and "value" as
/// lists of hex bytes.
fn dump(pin: &std::path::Path) -> Vec<Value> {
    let out = sh(
        "bpftool",
        &["-j", "map", "dump", "pinned", pin.to_str().unwrap()],
    )
    .ok();
    out.json().as_array().cloned().unwrap_or_default()
}

fn bytes(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap().to_string())
        .collect()
}

fn ip_key(ip: &str) -> Vec<String> {
    ip.split('.').map(str::to_string).collect()
}

fn has_ip_key(pin: &std::path::Path, ip: &str) -> bool {
    let want: Vec<u8> = ip.split('.').map(|o| o.parse().unwrap()).collect();
    dump(pin).iter().any(|e| {
        let k: Vec<u8> = bytes(&e["key"])
            .iter()
            .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap())
            .collect();
        k == want
    })
}

fn host_veth(d: &Daemon, ctr: &str, net: &str) -> String {
    d.inspect(ctr)["NetworkSettings"]["Networks"][net]["HostInterfaceName"]
        .as_str()
        .unwrap()
        .to_string()
}

fn bpftool(args: &[&str]) -> Output {
    sh("bpftool", args).ok()
}

#[test]
fn drift_is_repaired_without_a_restart() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.41.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_sleeper("c2", Some("n"), &[]);
    let ip2 = d.ip("c2", "n");
    d.assert_pings("c1", &ip2);
    let veth = host_veth(&d, "c2", "n");

    // A host-side route deleted by hand.
    d.ns()
        .exec(&["ip", "route", "del", &format!("{ip2}/32")])
        .ok();
    eventually("the host route back", || {
        let out = d
            .ns()
            .exec(&["ip", "-o", "route", "show", &format!("{ip2}/32")]);
        if out.stdout.contains(&veth) {
            Ok(())
        } else {
            Err(out.stdout.clone())
        }
    });
    assert!(
        d.ns().exec(&["ping", "-c1", "-W2", &ip2]).success(),
        "the host reaches c2 again"
    );

    // A host veth deleted by hand (its peer in the sandbox goes with it).
    d.ns().exec(&["ip", "link", "del", &veth]).ok();
    eventually("c2's eth0 back", || {
        let out = d.exec_in("c2", &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        if out.stdout.contains(&ip2) {
            Ok(())
        } else {
            Err(out.to_string())
        }
    });
    d.assert_pings("c1", &ip2);

    // An ENDPOINTS entry deleted with bpftool.
    let endpoints = map_pin(&d, "ENDPOINTS");
    let mut del = vec![
        "map",
        "delete",
        "pinned",
        endpoints.to_str().unwrap(),
        "key",
    ];
    let key = ip_key(&ip2);
    del.extend(key.iter().map(String::as_str));
    bpftool(&del);
    eventually("the ENDPOINTS entry back", || {
        has_ip_key(&endpoints, &ip2)
            .then_some(())
            .ok_or_else(|| "missing".to_string())
    });
    d.assert_pings("c1", &ip2);

    // An entry nothing in the store wants is removed: a copy of c2's under
    // an address nobody has.
    let entry = dump(&endpoints)
        .into_iter()
        .next()
        .expect("an ENDPOINTS entry");
    let value = bytes(&entry["value"]);
    let mut add = vec![
        "map",
        "update",
        "pinned",
        endpoints.to_str().unwrap(),
        "key",
        "10",
        "41",
        "0",
        "99",
        "value",
    ];
    add.extend(value.iter().map(String::as_str));
    bpftool(&add);
    eventually("the stray ENDPOINTS entry gone", || {
        (!has_ip_key(&endpoints, "10.41.0.99"))
            .then_some(())
            .ok_or_else(|| "still there".to_string())
    });

    // A detached TC link: the program is attached again, in a new link.
    let veth = host_veth(&d, "c2", "n");
    let pin = link_pin(&d, &veth);
    let link_id = |pin: &std::path::Path| {
        sh(
            "bpftool",
            &["-j", "link", "show", "pinned", pin.to_str().unwrap()],
        )
        .json()["id"]
            .as_u64()
    };
    let before = link_id(&pin).expect("a pinned link id");
    bpftool(&["link", "detach", "pinned", pin.to_str().unwrap()]);
    eventually(
        "from_container attached to c2's veth again",
        || match link_id(&pin) {
            Some(id) if id != before => Ok(()),
            other => Err(format!("pinned link {other:?}")),
        },
    );
    d.assert_pings("c1", &ip2);
    d.assert_pings("c2", &d.ip("c1", "n"));
}

#[test]
fn a_deleted_published_port_entry_is_put_back() {
    let d = Daemon::start();
    d.run_sleeper("web", None, &["-p", "18080:80"]);
    let ports = map_pin(&d, "PORTS");
    let entries = dump(&ports);
    assert_eq!(entries.len(), 1);
    let key = bytes(&entries[0]["key"]);
    let mut del = vec![
        "map",
        "delete",
        "pinned",
        ports.to_str().unwrap(),
        "key",
        "hex",
    ];
    let hex: Vec<String> = key
        .iter()
        .map(|b| b.trim_start_matches("0x").to_string())
        .collect();
    del.extend(hex.iter().map(String::as_str));
    bpftool(&del);
    eventually("the PORTS entry back", || {
        (dump(&ports).len() == 1)
            .then_some(())
            .ok_or_else(|| "missing".to_string())
    });
}

/// A container whose processes ignore SIGTERM: `rm -f` waits out its grace
/// period before SIGKILL.
const STUBBORN: &[&str] = &["sh", "-c", "trap '' TERM; sleep infinity"];

#[test]
fn reads_answer_while_an_rm_is_stuck_on_a_process_that_ignores_sigterm() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.42.0.0/24", "n"]);
    d.run_cmd("stubborn", Some("n"), &[], STUBBORN);
    d.run_sleeper("other", Some("n"), &[]);
    let mut rm = d.spawn_cli(&["rm", "-f", "stubborn"]);
    // Give the rm time to reach its grace period (bounded).
    retry("the rm to start", 50, Duration::from_millis(20), || {
        if rm.running() {
            Ok(())
        } else {
            Err("rm ended at once".into())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    for args in [
        &["ps", "--format", "json"][..],
        &["inspect", "other"],
        &["network", "ls", "--format", "json"],
        &["network", "inspect", "n"],
        &["port", "other"],
        &["stats", "--format", "json"],
    ] {
        d.ok(args);
        assert!(
            rm.running(),
            "`{}` answered only after the rm had finished",
            args.join(" ")
        );
    }
    // A name lookup answers meanwhile too.
    let out = d.exec_in("other", &["getent", "hosts", "other"]);
    assert!(out.success(), "{out}");
    assert!(rm.running(), "the resolver answered while the rm was stuck");
    let out = rm.wait(Duration::from_secs(30));
    assert!(out.success(), "{out}");
    assert!(d
        .cli(&["inspect", "stubborn"])
        .refused()
        .contains("no such container"));
}

#[test]
fn a_daemon_killed_after_rm_committed_leaves_nothing_after_restart() {
    let mut d = Daemon::start();
    d.run_sleeper("doomed", None, &[]);
    let ns = d.sandbox("doomed");
    let id = d.inspect("doomed")["Id"].as_str().unwrap().to_string();
    d.stop("TERM");
    d.restart_with_env(&[("DATAPLANE_CRASH_AT", "rm-after-commit")]);
    assert!(
        !d.cli(&["rm", "-f", "doomed"]).success(),
        "the daemon died in rm"
    );
    d.stop("KILL");
    d.restart();
    eventually("the sandbox swept", || {
        let left: Vec<String> = [
            netns_exists(&ns).then(|| format!("netns {ns}")),
            std::path::Path::new("/etc/netns")
                .join(&ns)
                .exists()
                .then(|| format!("/etc/netns/{ns}")),
            d.state_dir()
                .join("containers")
                .join(&id)
                .exists()
                .then(|| "state dir".to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join(", "))
        }
    });
    assert_eq!(d.ps(), serde_json::json!([]));
}

/// Starts `n` clients at once with the same arguments; their outputs.
fn all(outs: &[Output]) -> String {
    outs.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn race(d: &Daemon, runs: Vec<Vec<String>>) -> Vec<Output> {
    let procs: Vec<_> = runs
        .iter()
        .map(|a| {
            let args: Vec<&str> = a.iter().map(String::as_str).collect();
            d.spawn_cli(&args)
        })
        .collect();
    procs
        .into_iter()
        .map(|p| p.wait(Duration::from_secs(60)))
        .collect()
}

fn run_args(name: &str, extra: &[&str]) -> Vec<String> {
    let mut a = vec!["run", "-d", "--name", name];
    a.extend_from_slice(extra);
    a.extend(["--", "sleep", "infinity"]);
    a.into_iter().map(String::from).collect()
}

fn host_veth_count(d: &Daemon) -> usize {
    d.ns()
        .exec(&["ip", "-o", "link", "show"])
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .filter(|n| n.len() == 14 && n.starts_with("dp"))
        .count()
}

#[test]
fn racing_writes_have_exactly_one_winner_and_leave_nothing_behind() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.43.0.0/24", "n"]);
    // Six clients want the same address.
    let outs = race(
        &d,
        (0..6)
            .map(|i| run_args(&format!("ip{i}"), &["--network", "n", "--ip", "10.43.0.50"]))
            .collect(),
    );
    let won: Vec<&Output> = outs.iter().filter(|o| o.success()).collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one run gets 10.43.0.50: {}",
        all(&outs)
    );
    for o in outs.iter().filter(|o| !o.success()) {
        assert!(o.refused().contains("already in use"), "{o}");
    }
    // Six clients want the same host port.
    let outs = race(
        &d,
        (0..6)
            .map(|i| run_args(&format!("p{i}"), &["--network", "n", "-p", "18081:80"]))
            .collect(),
    );
    assert_eq!(
        outs.iter().filter(|o| o.success()).count(),
        1,
        "exactly one run gets host port 18081: {}",
        all(&outs)
    );
    let ps = d.ps();
    assert_eq!(ps.as_array().unwrap().len(), 2, "{ps:#}");
    assert_eq!(
        host_veth_count(&d),
        2,
        "one veth per container, no leftovers"
    );
    // A network removed while runs on it start: the removal and the runs
    // never both succeed.
    for round in 0..3 {
        let net = format!("r{round}");
        d.network_create(&["--subnet", &format!("10.44.{round}.0/24"), &net]);
        let mut runs: Vec<Vec<String>> = (0..3)
            .map(|i| run_args(&format!("r{round}c{i}"), &["--network", &net]))
            .collect();
        runs.insert(1, vec!["network".into(), "rm".into(), net.clone()]);
        let outs = race(&d, runs);
        let rm_ok = outs[1].success();
        let runs_ok = outs
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != 1 && o.success())
            .count();
        assert!(
            !(rm_ok && runs_ok > 0),
            "network rm and a run on it both succeeded: {}",
            all(&outs)
        );
        let listed = d.networks();
        let present = listed
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["Name"] == net.as_str());
        assert_eq!(present, !rm_ok, "network {net} is there unless removed");
    }
    // Nothing half-made: every container has its veth, nothing else has one.
    let ps = d.ps();
    let with_endpoint = ps.as_array().unwrap().len();
    assert_eq!(host_veth_count(&d), with_endpoint);
}

#[test]
fn host_and_none_sandboxes() {
    let d = Daemon::start();
    let ls = d.networks();
    for name in ["bridge", "host", "none"] {
        assert!(
            ls.as_array().unwrap().iter().any(|n| n["Name"] == name),
            "{name} listed: {ls:#}"
        );
    }
    // --network host: the daemon's namespace, no endpoint, no address.
    d.run_sleeper("h", Some("host"), &[]);
    let v = d.inspect("h");
    assert_eq!(v["NetworkSettings"]["Networks"]["host"]["IPAddress"], "");
    assert_eq!(v["HostConfig"]["NetworkMode"], "host");
    let inside = d.exec_in("h", &["ip", "-o", "link", "show"]).ok().stdout;
    let daemon = d.ns().exec(&["ip", "-o", "link", "show"]).ok().stdout;
    let names = |s: &str| -> Vec<String> {
        s.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    };
    assert_eq!(names(&inside), names(&daemon), "h sees the daemon's links");
    assert_eq!(host_veth_count(&d), 0, "no endpoint for a host container");
    // --network none: a sandbox with only lo.
    d.run_sleeper("z", Some("none"), &[]);
    let links = d.exec_in("z", &["ip", "-o", "link", "show"]).ok().stdout;
    assert_eq!(names(&links), vec!["lo".to_string()], "{links}");
    assert!(d
        .exec_in("z", &["ip", "-o", "link", "show", "lo"])
        .stdout
        .contains("UP"));
    let none = d.network_inspect("none");
    assert!(
        none["Containers"].as_object().unwrap().len() == 1,
        "{none:#}"
    );
    // What these networks refuse.
    assert!(d
        .assert_refused(&["network", "rm", "host"])
        .contains("pre-defined"));
    assert!(d
        .assert_refused(&["network", "create", "host"])
        .contains("already exists"));
    let line = d.assert_refused(&["network", "create", "-d", "nosuch", "x"]);
    assert!(
        line.contains("bridge") && line.contains("host") && line.contains("none"),
        "an unknown driver lists the known ones: {line}"
    );
    assert!(d
        .assert_refused(&["network", "connect", "bridge", "h"])
        .contains("cannot be connected"));
    assert!(d
        .assert_refused(&[
            "run",
            "-d",
            "--network",
            "host",
            "-p",
            "18082:80",
            "--",
            "sleep",
            "1"
        ])
        .contains("cannot publish"));
    d.ok(&["rm", "-f", "h", "z"]);
    assert_eq!(d.ps(), serde_json::json!([]));
}

/// Beside a Docker engine (or anything else) that routes 172.17.0.0/16, a
/// first start gives the default bridge network a free pool instead of
/// failing.
#[test]
fn the_default_bridge_takes_a_free_pool_when_the_host_routes_172_17() {
    let mut d = Daemon::start();
    d.stop("TERM");
    // As if the daemon had never run here, on a host that routes 172.17/16.
    std::fs::remove_file(d.state_dir().join("dataplane.redb")).expect("removing the store");
    d.ns()
        .exec(&[
            "ip", "link", "add", "docker0x", "type", "veth", "peer", "name", "docker0y",
        ])
        .ok();
    d.ns()
        .exec(&["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0x"])
        .ok();
    d.ns().exec(&["ip", "link", "set", "docker0x", "up"]).ok();
    d.restart();
    let bridge = d.network_inspect("bridge");
    let subnet = bridge["IPAM"]["Config"][0]["Subnet"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(subnet, "172.17.0.0/16", "{bridge:#}");
    assert!(
        subnet.starts_with("172.") || subnet.starts_with("192.168."),
        "{subnet}"
    );
    // The host's own address was not taken away.
    let addrs = d
        .ns()
        .exec(&["ip", "-o", "-4", "addr", "show", "dev", "docker0x"])
        .ok();
    assert!(addrs.stdout.contains("172.17.0.1/16"), "{addrs}");
    d.run_sleeper("c", None, &[]);
    let ip = d.ip("c", "bridge");
    assert!(!ip.starts_with("172.17."), "{ip}");
}

/// Parallel runs that do not compete for anything all succeed: a commit made
/// while the reconciler is in a pass is never reported as in place before
/// it is.
#[test]
fn parallel_runs_all_succeed() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.45.0.0/24", "n"]);
    for round in 0..3 {
        let outs = race(
            &d,
            (0..8)
                .map(|i| run_args(&format!("r{round}p{i}"), &["--network", "n"]))
                .collect(),
        );
        assert!(outs.iter().all(Output::success), "{}", all(&outs));
    }
    let ps = d.ps();
    assert_eq!(ps.as_array().unwrap().len(), 24);
    assert_eq!(host_veth_count(&d), 24);
}

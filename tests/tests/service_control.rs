//! The services control plane against one daemon (embedded store): input
//! it refuses with a clear error, the VIP's address claim released on rm,
//! a network kept while a service uses it, and a replica whose process
//! exits at once restarted with a growing delay, not every agent tick.

use std::time::{Duration, Instant};

use dataplane_tests::{eventually, require_root, retry, Daemon};
use serde_json::Value;

fn vip(d: &Daemon, name: &str) -> String {
    let v = d.ok(&["service", "inspect", name]).json();
    v[0]["Endpoint"]["VirtualIP"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn service_input_is_checked_and_rm_releases_the_vip() {
    require_root();
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.78.0.0/24", "svcnet"]);
    let create = |name: &str, extra: &[&str]| {
        let mut a = vec![
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            "0",
            "--network",
            "svcnet",
        ];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--", "sleep", "1000"]);
        d.cli(&a)
    };
    let long = "s".repeat(46);
    for (what, out, says) in [
        ("a long name", create(&long, &[]), "longer than 45"),
        (
            "health options alone",
            create("web", &["--health-interval", "1s"]),
            "need --health-cmd",
        ),
        (
            "dnsrr with an ingress port",
            create("web", &["--endpoint-mode", "dnsrr", "-p", "8080:80"]),
            "ingress-mode ports need --endpoint-mode vip",
        ),
    ] {
        let msg = out.refused().to_string();
        assert!(msg.contains(says), "{what}: {msg}");
    }
    create("web", &["-p", "8080:80"]).ok();
    let first = vip(&d, "web");
    assert!(first.starts_with("10.78.0."), "{first}");
    for (what, args, says) in [
        (
            "an empty update",
            vec!["service", "update", "web"],
            "nothing to change",
        ),
        (
            "removing a port not published",
            vec!["service", "update", "web", "--publish-rm", "9090"],
            "does not publish port 9090",
        ),
        (
            "scaling an unknown service",
            vec!["service", "scale", "nosuch=2"],
            "no such service: nosuch",
        ),
        (
            "more replicas than a service may have",
            vec!["service", "scale", "web=1001"],
            "more than 1000",
        ),
        (
            "removing the network of a service",
            vec!["network", "rm", "svcnet"],
            "used by services (web)",
        ),
    ] {
        let msg = d.cli(&args).refused().to_string();
        assert!(msg.contains(says), "{what}: {msg}");
    }
    d.ok(&["service", "rm", "web"]);
    // The address claim went with it: a new service gets the same
    // (lowest free) address, which a leaked claim would refuse.
    create("api", &[]).ok();
    assert_eq!(vip(&d, "api"), first);
    d.ok(&["service", "rm", "api"]);
    d.ok(&["network", "rm", "svcnet"]);
}

#[test]
fn a_crashing_replica_is_restarted_with_a_growing_delay() {
    require_root();
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.79.0.0/24", "crashnet"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "crash",
        "--network",
        "crashnet",
        "--",
        "false",
    ]);
    let task = |d: &Daemon| -> Value {
        d.ok(&["service", "ps", "crash", "--format", "json"]).json()[0].clone()
    };
    let started = Instant::now();
    // Restarts after 1 s, then 2 s: three take at least 3 s. Without a
    // delay the agent restarted it every 200 ms tick.
    let t = retry("three restarts", 150, Duration::from_millis(100), || {
        let t = task(&d);
        match t["Restarts"].as_u64() {
            Some(n) if n >= 3 => Ok(t),
            _ => Err(t.to_string()),
        }
    });
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "3 restarts in {took:?}: {t}"
    );
    let msg = eventually("a message that says when it starts again", || {
        let t = task(&d);
        let m = t["Message"].as_str().unwrap_or_default().to_string();
        if m.contains("restarting in") {
            Ok(m)
        } else {
            Err(t.to_string())
        }
    });
    assert!(msg.contains("exited after"), "{msg}");
    d.ok(&["service", "rm", "crash"]);
    eventually("its replica removed", || {
        let v = d.ps();
        match v.as_array().map(Vec::len) {
            Some(0) => Ok(()),
            _ => Err(v.to_string()),
        }
    });
    d.ok(&["network", "rm", "crashnet"]);
}

/// A daemon killed and started again adopts the replicas it runs: the
/// same containers, no restarts, no second container for any task.
#[test]
fn a_restarted_daemon_adopts_its_replicas() {
    require_root();
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.80.0.0/24", "adoptnet"]);
    d.ok(&[
        "service",
        "create",
        "--name",
        "keep",
        "--replicas",
        "2",
        "--network",
        "adoptnet",
        "--",
        "sleep",
        "1000",
    ]);
    let tasks = |d: &Daemon| d.ok(&["service", "ps", "keep", "--format", "json"]).json();
    let running = |d: &Daemon| {
        eventually("two running replicas", || {
            let v = tasks(d);
            let all = v.as_array().cloned().unwrap_or_default();
            if all.len() == 2 && all.iter().all(|t| t["State"] == "running") {
                Ok(all)
            } else {
                Err(v.to_string())
            }
        })
    };
    let containers = |d: &Daemon| -> Vec<String> {
        let v = d.ps();
        let mut ids: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["ID"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let before = running(&d);
    let ids = containers(&d);
    assert_eq!(ids.len(), 2, "{ids:?}");
    d.stop("KILL");
    d.restart();
    let after = running(&d);
    // Watched over a second (five ticks of the restarted agent, the
    // window in which a duplicate start would show): nothing changes.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(1) {
        let now = tasks(&d);
        for (b, a) in before.iter().zip(now.as_array().into_iter().flatten()) {
            assert_eq!(
                (&b["Container"], &b["Restarts"]),
                (&a["Container"], &a["Restarts"]),
                "{now}"
            );
        }
        assert_eq!(containers(&d), ids);
    }
    assert_eq!(after.len(), 2);
    d.ok(&["service", "rm", "keep"]);
    eventually("its replicas removed", || match containers(&d).len() {
        0 => Ok(()),
        n => Err(format!("{n} left")),
    });
    d.ok(&["network", "rm", "adoptnet"]);
}

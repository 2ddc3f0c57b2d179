//! The harness itself: its guards leave nothing behind, also on panic.

use std::{panic, path::PathBuf};

use dataplane_tests::{netns_exists, netns_list, require_root, Daemon, NetNs};

#[test]
fn netns_guard_deletes_its_namespace_on_drop() {
    require_root();
    let name = {
        let ns = NetNs::new();
        assert!(netns_list().contains(&ns.name().to_string()));
        let lo = ns.exec(&["ip", "-o", "link", "show", "lo"]).ok();
        assert!(lo.stdout.contains("UP"), "lo is not up: {lo}");
        ns.name().to_string()
    };
    assert!(!netns_exists(&name), "{name} survived its guard");
}

#[test]
fn netns_guard_deletes_its_namespace_on_panic() {
    require_root();
    let res = panic::catch_unwind(|| {
        let ns = NetNs::new();
        panic!("{}", ns.name());
    });
    let name = *res
        .expect_err("the closure panics")
        .downcast::<String>()
        .unwrap();
    assert!(name.starts_with("dpt-"), "{name}");
    assert!(!netns_exists(&name), "{name} survived a panic");
}

#[test]
fn netns_guard_names_are_unique() {
    require_root();
    let a = NetNs::new();
    let b = NetNs::new();
    assert_ne!(a.name(), b.name());
    assert!(a
        .name()
        .starts_with(&format!("dpt-{}-", std::process::id())));
}

/// What a daemon guard made, to look for after it is gone.
struct Made {
    netns: Vec<String>,
    paths: Vec<PathBuf>,
}

fn made_by(d: &Daemon) -> Made {
    let mut netns = vec![d.ns().name().to_string()];
    netns.extend(["c1", "c2"].iter().map(|c| d.sandbox(c)));
    Made {
        netns,
        paths: vec![d.bpffs().to_path_buf(), d.tempdir().to_path_buf()],
    }
}

fn assert_gone(m: &Made) {
    let listed = netns_list();
    for n in &m.netns {
        assert!(
            !listed.contains(n) && !netns_exists(n),
            "netns {n} left behind"
        );
    }
    for p in &m.paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

fn daemon_with_two_containers() -> Daemon {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.77.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_sleeper("c2", None, &[]);
    assert!(
        d.bpffs().exists(),
        "the daemon pinned nothing under its --bpffs"
    );
    d
}

#[test]
fn daemon_guard_removes_everything_on_drop() {
    let d = daemon_with_two_containers();
    let m = made_by(&d);
    drop(d);
    assert_gone(&m);
}

#[test]
fn daemon_guard_removes_everything_on_panic() {
    let mut made = None;
    let res = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let d = daemon_with_two_containers();
        made = Some(made_by(&d));
        panic!("test failure with a live daemon");
    }));
    assert!(res.is_err());
    assert_gone(&made.expect("the daemon started"));
}

#[test]
fn daemon_guard_sweeps_containers_of_a_dead_daemon() {
    let mut d = daemon_with_two_containers();
    let m = made_by(&d);
    let pid = d.inspect("c1")["State"]["Pid"].as_u64().unwrap() as u32;
    d.stop("KILL");
    assert!(
        dataplane_tests::alive(pid),
        "the container died with the daemon"
    );
    drop(d);
    assert_gone(&m);
    assert!(
        !dataplane_tests::alive(pid),
        "container process {pid} left running"
    );
}

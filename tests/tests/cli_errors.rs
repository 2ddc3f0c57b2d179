//! Bad input: one clear line on stderr, a non-zero exit, nothing changed.

use std::{os::unix::net::UnixListener, process::Command};

use dataplane_tests::{bin, run, Daemon, TempDir};

/// A client with no daemon behind `--host host` (or DATAPLANE_HOST=`env`):
/// asserts a one-line refusal and returns the line.
fn client_without_daemon(host: Option<&str>, env: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new(bin());
    c.env_remove("DATAPLANE_HOST");
    if let Some(h) = host {
        c.args(["--host", h]);
    }
    if let Some(e) = env {
        c.env("DATAPLANE_HOST", e);
    }
    c.args(args);
    run(c).refused().to_string()
}

#[test]
fn no_daemon_listening_fails_with_one_line() {
    let dir = TempDir::new();
    let missing = format!("unix://{}", dir.path().join("missing.sock").display());
    // A socket file nobody listens on, as a killed daemon leaves behind.
    let stale_path = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale_path).unwrap());
    let stale = format!("unix://{}", stale_path.display());

    let commands: &[&[&str]] = &[
        &["network", "ls"],
        &["network", "create", "n"],
        &["network", "inspect", "bridge"],
        &["ps"],
        &["run", "-d", "--name", "c", "--", "sleep", "infinity"],
        &["inspect", "c"],
        &["exec", "c", "--", "true"],
        &["logs", "c"],
        &["rm", "-f", "c"],
        &["stats", "--format", "json"],
    ];
    for args in commands {
        for host in [&missing, &stale] {
            let line = client_without_daemon(Some(host), None, args);
            assert!(
                line.contains(host.as_str()),
                "{args:?}: {line:?} does not name {host}"
            );
        }
    }
    let line = client_without_daemon(None, Some(&missing), &["network", "ls"]);
    assert!(line.contains(&missing), "{line:?} does not name {missing}");
    client_without_daemon(Some("tcp://127.0.0.1:1"), None, &["network", "ls"]);
}

#[test]
fn bad_network_create_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.2.0.0/16", "taken"]);
    let cases: &[&[&str]] = &[
        // Invalid CIDRs and addresses.
        &["--subnet", "banana", "x"],
        &["--subnet", "10.3.0.0/33", "x"],
        &["--subnet", "10.3.0.0", "x"],
        &["--subnet", "300.3.0.0/16", "x"],
        &["--subnet", "10.3.0.0/16", "--gateway", "10.3.0.300", "x"],
        &["--subnet", "10.3.0.0/16", "--ip-range", "10.3.0.0/40", "x"],
        &[
            "--subnet",
            "10.3.0.0/16",
            "--aux-address",
            "a=10.3.1.999",
            "x",
        ],
        // Overlapping subnets: the default bridge and a user network.
        &["--subnet", "172.17.5.0/24", "x"],
        &["--subnet", "10.0.0.0/8", "x"],
        &["--subnet", "10.2.128.0/17", "x"],
        // Gateway outside the subnet or taken.
        &["--subnet", "10.3.0.0/24", "--gateway", "10.4.0.1", "x"],
        &["--subnet", "10.3.0.0/24", "--gateway", "10.3.0.0", "x"],
        &["--subnet", "10.3.0.0/24", "--gateway", "10.3.0.255", "x"],
        &[
            "--subnet",
            "10.3.0.0/24",
            "--aux-address",
            "a=10.3.0.1",
            "x",
        ],
        &["--subnet", "10.3.0.0/24", "--ip-range", "10.4.0.0/25", "x"],
        // Duplicate names.
        &["--subnet", "10.3.0.0/24", "taken"],
        &["--subnet", "10.3.0.0/24", "bridge"],
        &["taken"],
    ];
    for args in cases {
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        d.assert_refused(&full);
    }
}

#[test]
fn bad_run_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.network_create(&[
        "--subnet",
        "10.5.0.0/24",
        "--aux-address",
        "router=10.5.0.9",
        "n",
    ]);
    d.run_sleeper("c1", Some("n"), &["--ip", "10.5.0.10"]);
    let cases: &[&[&str]] = &[
        // Unknown network.
        &["--name", "x", "--network", "nope"],
        // Invalid, outside or taken addresses.
        &["--name", "x", "--network", "n", "--ip", "10.5.0.300"],
        &["--name", "x", "--network", "n", "--ip", "banana"],
        &["--name", "x", "--network", "n", "--ip", "10.6.0.10"],
        &["--name", "x", "--network", "n", "--ip", "172.17.0.5"],
        &["--name", "x", "--network", "n", "--ip", "10.5.0.10"],
        &["--name", "x", "--network", "n", "--ip", "10.5.0.1"],
        &["--name", "x", "--network", "n", "--ip", "10.5.0.9"],
        &["--name", "x", "--network", "n", "--ip", "10.5.0.0"],
        &["--name", "x", "--network", "n", "--ip", "10.5.0.255"],
        // Duplicate name, on the same or another network.
        &["--name", "c1", "--network", "n"],
        &["--name", "c1"],
    ];
    for args in cases {
        let mut full = vec!["run", "-d"];
        full.extend_from_slice(args);
        full.extend(["--", "sleep", "infinity"]);
        d.assert_refused(&full);
    }
}

#[test]
fn unknown_names_are_refused() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.7.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    let cases: &[&[&str]] = &[
        &["inspect", "nope"],
        &["exec", "nope", "--", "true"],
        &["logs", "nope"],
        &["rm", "nope"],
        &["rm", "-f", "nope"],
        &["network", "inspect", "nope"],
        &["network", "rm", "nope"],
        &["network", "connect", "nope", "c1"],
        &["network", "connect", "n", "nope"],
        &["network", "disconnect", "nope", "c1"],
        &["network", "disconnect", "n", "nope"],
        // Attached already / not attached.
        &["network", "connect", "n", "c1"],
        &["network", "disconnect", "bridge", "c1"],
    ];
    for args in cases {
        d.assert_refused(args);
    }
}

#[test]
fn network_rm_is_refused_while_endpoints_are_attached() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.8.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.assert_refused(&["network", "rm", "n"]);
    d.assert_refused(&["network", "rm", "bridge"]);
    d.ok(&["rm", "-f", "c1"]);
    d.ok(&["network", "rm", "n"]);
    d.assert_refused(&["network", "inspect", "n"]);
}

#[test]
fn an_exhausted_address_pool_is_refused() {
    let d = Daemon::start();
    // A /30 holds the gateway (.1) and one container (.2).
    d.network_create(&["--subnet", "10.9.0.0/30", "tiny"]);
    d.run_sleeper("a", Some("tiny"), &[]);
    assert_eq!(d.ip("a", "tiny"), "10.9.0.2");
    d.assert_refused(&[
        "run",
        "-d",
        "--name",
        "b",
        "--network",
        "tiny",
        "--",
        "sleep",
        "infinity",
    ]);
    // An --ip-range of four addresses: .0 is the subnet's, .1 the gateway's,
    // so two containers fit and a third is refused.
    d.network_create(&[
        "--subnet",
        "10.9.1.0/29",
        "--ip-range",
        "10.9.1.0/30",
        "small",
    ]);
    d.run_sleeper("c", Some("small"), &[]);
    d.run_sleeper("e", Some("small"), &[]);
    d.assert_refused(&[
        "run",
        "-d",
        "--name",
        "f",
        "--network",
        "small",
        "--",
        "sleep",
        "infinity",
    ]);
    // Freeing an address makes room again.
    d.ok(&["rm", "-f", "a"]);
    d.run_sleeper("b", Some("tiny"), &[]);
    assert_eq!(d.ip("b", "tiny"), "10.9.0.2");
}

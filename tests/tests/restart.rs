//! The daemon is not in the packet path: stopping it (SIGTERM) or killing it
//! (SIGKILL) leaves containers and their traffic alone, and a daemon started
//! again on the same directories picks its state up.

use std::time::Duration;

use dataplane_tests::{alive, eventually, pick, Daemon, Proc};
use serde_json::{json, Value};

/// Two sleepers `c1`, `c2` on network `n` (10.30.0.0/24), c1 knowing c2's MAC.
fn pair(d: &Daemon) -> String {
    d.network_create(&["--subnet", "10.30.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_sleeper("c2", Some("n"), &[]);
    let c2 = d.ip("c2", "n");
    d.assert_pings("c1", &c2);
    c2
}

/// Waits until the background client has printed `needle`.
fn wait_output(p: &Proc, needle: &str) {
    eventually(&format!("{needle:?} from the background client"), || {
        let out = p.output_so_far();
        out.contains(needle).then_some(()).ok_or(out)
    });
}

/// Stops the daemon with `sig` and starts it again while `traffic` runs,
/// checking that the traffic outlived the restart.
fn restart_under(d: &mut Daemon, sig: &str, traffic: &mut Proc) {
    d.stop(sig);
    let out = d.cli(&["network", "ls"]);
    out.refused();
    d.restart();
    assert!(
        traffic.running(),
        "the traffic ended before the daemon was back, so it proves nothing: {}",
        traffic.output_so_far()
    );
}

/// What a restart must keep: networks, containers, their processes and
/// their endpoints (addresses, MACs, sandboxes).
fn state(d: &Daemon) -> (Value, Value, Vec<Value>) {
    let (nets, ps) = d.snapshot();
    let inspects = ["c1", "c2"]
        .iter()
        .map(|c| {
            let v = d.inspect(c);
            json!([
                pick(&v, &["Id", "Name", "NetworkSettings"]),
                v["State"]["Pid"]
            ])
        })
        .collect();
    (nets, ps, inspects)
}

#[test]
fn a_ping_stream_loses_nothing_across_a_kill_and_restart() {
    let mut d = Daemon::start();
    let c2 = pair(&d);
    let before = state(&d);
    let mut ping = d.spawn_cli(&[
        "exec", "c1", "--", "ping", "-i", "0.05", "-c", "200", "-W", "1", &c2,
    ]);
    wait_output(&ping, "icmp_seq=10 ");
    restart_under(&mut d, "KILL", &mut ping);
    let out = ping.wait(Duration::from_secs(30));
    assert!(
        out.success() && out.stdout.contains("200 received, 0% packet loss"),
        "packets lost across the restart: {out}"
    );
    assert_eq!(state(&d), before, "the restarted daemon lost state");
}

#[test]
fn a_tcp_stream_loses_nothing_across_a_stop_and_restart() {
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.31.0.0/24", "n"]);
    d.run_sleeper("c1", Some("n"), &[]);
    d.run_cmd(
        "srv",
        Some("n"),
        &[],
        &["sh", "-c", "nc -l 5000 | wc -l | sed 's/^/lines=/'"],
    );
    let srv = d.ip("srv", "n");
    eventually("the TCP listener", || {
        let ss = d.exec_in("srv", &["ss", "-Hltn", "sport = :5000"]);
        (!ss.stdout.trim().is_empty())
            .then_some(())
            .ok_or(ss.to_string())
    });
    // 200 lines over about 10 s; tee shows the progress on stderr.
    let stream = format!(
        "seq 1 200 | while read i; do echo line-$i; sleep 0.05; done | tee /dev/stderr | nc -N {srv} 5000"
    );
    let mut tcp = d.spawn_cli(&["exec", "c1", "--", "sh", "-c", &stream]);
    wait_output(&tcp, "line-10\n");
    restart_under(&mut d, "TERM", &mut tcp);
    let out = tcp.wait(Duration::from_secs(60));
    assert!(out.success(), "the TCP stream broke: {out}");
    d.wait_logs("srv", "lines=200");
}

#[test]
fn containers_keep_running_and_talking_while_the_daemon_is_stopped() {
    let mut d = Daemon::start();
    let c2 = pair(&d);
    let before = state(&d);
    let pids: Vec<u32> = ["c1", "c2"]
        .iter()
        .map(|c| d.inspect(c)["State"]["Pid"].as_u64().unwrap() as u32)
        .collect();
    let sandbox = d.sandbox("c1");
    d.stop("TERM");

    assert!(
        pids.iter().all(|p| alive(*p)),
        "containers died with the daemon"
    );
    // `exec` needs the daemon; the sandbox itself does not.
    let ping = |args: &[&str]| {
        (0..5).any(|_| {
            let mut c = std::process::Command::new("ip");
            c.args(args);
            dataplane_tests::run(c).success()
        })
    };
    assert!(
        ping(&["netns", "exec", &sandbox, "ping", "-c1", "-W1", &c2]),
        "c1 -> c2 without a daemon"
    );
    assert!(
        ping(&["netns", "exec", d.ns().name(), "ping", "-c1", "-W1", &c2]),
        "host -> c2 without a daemon"
    );

    d.restart();
    assert_eq!(state(&d), before, "the restarted daemon lost state");
    d.assert_pings("c1", &c2);
    // The restarted daemon still allocates around the existing addresses
    // and programs the new endpoint into the same datapath.
    d.run_sleeper("c3", Some("n"), &[]);
    let c3 = d.ip("c3", "n");
    assert!(
        ![d.ip("c1", "n"), c2.clone()].contains(&c3),
        "{c3} handed out twice"
    );
    d.assert_pings("c3", &c2);
    d.assert_pings("c1", &c3);
    // ...and removes what the first run made.
    d.ok(&["rm", "-f", "c1"]);
    assert!(!dataplane_tests::netns_exists(&sandbox));
}

#[test]
fn isolation_holds_and_is_counted_after_a_kill_and_restart() {
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.32.0.0/24", "a"]);
    d.network_create(&["--subnet", "10.33.0.0/24", "b"]);
    d.run_sleeper("a1", Some("a"), &[]);
    d.run_sleeper("a2", Some("a"), &[]);
    d.run_sleeper("b1", Some("b"), &[]);
    let (a2, b1) = (d.ip("a2", "a"), d.ip("b1", "b"));
    d.stop("KILL");
    d.restart();
    d.assert_pings("a1", &a2);
    let before = d.drops("cross_network");
    d.assert_no_ping("a1", &b1);
    assert!(d.drops("cross_network") > before, "{:#}", d.stats());
}

/// `ip netns exec` gives the daemon a private mount namespace whose /sys is
/// remounted, so its pins would die with it: the daemon must refuse to start
/// there, in one line, and leave no socket behind.
#[test]
fn the_daemon_refuses_to_run_under_ip_netns_exec() {
    dataplane_tests::require_root();
    let ns = dataplane_tests::NetNs::new();
    let dir = dataplane_tests::TempDir::new();
    let run_dir = dir.path().join("run");
    let bin = dataplane_tests::bin();
    let out = ns.exec(&[
        bin.to_str().unwrap(),
        "daemon",
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "--bpffs",
        &format!(
            "/sys/fs/bpf/{}",
            dataplane_tests::unique("dataplane-test-ipnetns")
        ),
    ]);
    let line = out.refused();
    assert!(
        line.contains("nsenter"),
        "the refusal names the way that works: {line}"
    );
    assert!(!run_dir.join("api.sock").exists(), "no socket left behind");
}

/// Sandbox netns names (`dp-...`) that exist now.
fn sandboxes() -> Vec<String> {
    dataplane_tests::netns_list()
        .into_iter()
        .filter(|n| n.starts_with("dp-"))
        .collect()
}

/// Host-side veths (`dp` + 12 hex) in the daemon's namespace.
fn host_veths(d: &Daemon) -> Vec<String> {
    d.ns()
        .exec(&["ip", "-o", "link", "show"])
        .stdout
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.len() == 14 && n.starts_with("dp"))
        .collect()
}

/// A daemon that dies between creating a sandbox and recording it leaves a
/// netns, a veth pair, a process and files behind; the restarted daemon
/// finds its intent record and removes all of them, and the address is free
/// again.
#[test]
fn a_daemon_dying_in_the_middle_of_run_leaves_nothing_after_restart() {
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.31.0.0/24", "n"]);
    let before = sandboxes();
    d.stop("TERM");
    d.restart_with_env(&[("DATAPLANE_CRASH_AT", "run-before-commit")]);
    let out = d.cli(&[
        "run",
        "-d",
        "--name",
        "doomed",
        "--network",
        "n",
        "--",
        "sleep",
        "infinity",
    ]);
    assert!(
        !out.success(),
        "the daemon died in the middle of run: {out}"
    );
    let leaked: Vec<String> = sandboxes()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect();
    assert_eq!(
        leaked.len(),
        1,
        "the half-made sandbox is there before the restart"
    );
    assert_eq!(host_veths(&d).len(), 1, "and so is its host veth");
    d.stop("KILL");
    d.restart();
    assert!(!sandboxes().contains(&leaked[0]), "{} removed", leaked[0]);
    assert!(host_veths(&d).is_empty(), "the host veth went with it");
    assert!(!std::path::Path::new("/etc/netns").join(&leaked[0]).exists());
    assert!(
        d.log().contains("did not finish"),
        "the restart says what it cleaned"
    );
    // Nothing was recorded, and the address is free for the next run.
    assert_eq!(d.ps(), serde_json::json!([]));
    d.run_sleeper("c1", Some("n"), &[]);
    assert_eq!(d.ip("c1", "n"), "10.31.0.2");
}

/// A `network connect` cut short leaves a veth pair; the restarted daemon
/// deletes host veths that no endpoint owns.
#[test]
fn a_daemon_dying_in_the_middle_of_connect_leaves_no_veth_after_restart() {
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.32.0.0/24", "a"]);
    d.network_create(&["--subnet", "10.33.0.0/24", "b"]);
    d.run_sleeper("c1", Some("a"), &[]);
    d.stop("TERM");
    d.restart_with_env(&[("DATAPLANE_CRASH_AT", "connect-before-commit")]);
    assert!(!d.cli(&["network", "connect", "b", "c1"]).success());
    assert_eq!(host_veths(&d).len(), 2, "c1's own veth and the orphan");
    d.stop("KILL");
    d.restart();
    assert_eq!(host_veths(&d).len(), 1, "only c1's own veth is left");
    assert!(!d.exec_in("c1", &["ip", "link", "show", "eth1"]).success());
    // c1 still works and can be connected for real now.
    d.ok(&["network", "connect", "b", "c1"]);
    assert!(d.exec_in("c1", &["ip", "link", "show", "eth1"]).success());
}

//! Bad input: one clear line on stderr, a non-zero exit, nothing changed.

use std::{os::unix::net::UnixListener, process::Command};

use dataplane_tests::{bin, eventually, netns_list, run, sh, Daemon, Proc, TempDir};
use serde_json::{json, Value};

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
        &["port", "c"],
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

// ----- published ports (-p, -P, port) ----------------------------------------

/// How many entries the pinned published-port map `PORTS` holds; `None`
/// when `bpftool` cannot tell.
fn published_entries(d: &Daemon) -> Option<usize> {
    let pin = std::fs::read_dir(d.bpffs())
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("maps/PORTS"))
        .find(|p| p.exists())?;
    let out = sh("bpftool", &["-j", "map", "dump", "pinned", pin.to_str()?]);
    if !out.success() {
        return None;
    }
    Some(out.json().as_array()?.len())
}

/// Asserts that `PORTS` holds `n` entries (when bpftool is installed).
#[track_caller]
fn assert_published_entries(d: &Daemon, n: usize) {
    match published_entries(d) {
        Some(got) => assert_eq!(got, n, "entries in the PORTS map"),
        None => assert!(
            !sh("sh", &["-c", "command -v bpftool"]).success(),
            "bpftool is installed but could not dump the PORTS map"
        ),
    }
}

/// Whether a host process (in the daemon's namespace) can bind `port`.
fn host_can_bind(d: &Daemon, proto: &str, port: u16) -> bool {
    let ty = if proto == "udp" { "DGRAM" } else { "STREAM" };
    let code = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_{ty}); s.bind(('0.0.0.0', {port}))"
    );
    d.ns().exec(&["python3", "-c", &code]).success()
}

/// A host process in the daemon's namespace listening on TCP `port` until
/// dropped.
fn hold_host_port(d: &Daemon, port: u16) -> Proc {
    let code = format!(
        "import socket, time\n\
         s = socket.socket(); s.bind(('0.0.0.0', {port})); s.listen()\n\
         print('ready', flush=True); time.sleep(120)"
    );
    let mut c = Command::new("ip");
    c.args(["netns", "exec", d.ns().name(), "python3", "-c", &code]);
    let p = Proc::spawn(c);
    eventually(&format!("a host process on port {port}"), || {
        let out = p.output_so_far();
        if out.contains("ready") {
            Ok(())
        } else {
            Err(out)
        }
    });
    p
}

/// Sandbox namespaces on the machine (of every daemon).
fn sandboxes() -> Vec<String> {
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with("dp-"))
        .collect()
}

/// Everything of this daemon a refused `run` must leave as it was.
#[derive(Debug, PartialEq)]
struct World {
    snapshot: (Value, Value),
    attachments: Vec<Value>,
    host_links: Vec<String>,
    container_dirs: Vec<String>,
    published: Option<usize>,
}

fn world(d: &Daemon) -> World {
    let nets = d.networks();
    let attachments = nets
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| d.network_inspect(n["Name"].as_str().unwrap())["Containers"].clone())
        .collect();
    let links = d.ns().exec(&["ip", "-o", "link", "show"]).ok();
    let mut container_dirs: Vec<String> = std::fs::read_dir(d.state_dir().join("containers"))
        .map(|r| {
            r.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    container_dirs.sort();
    World {
        snapshot: d.snapshot(),
        attachments,
        host_links: links
            .stdout
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect(),
        container_dirs,
        published: published_entries(d),
    }
}

/// `run -d --name x EXTRA... -- sleep infinity` must be refused with a line
/// ending in `want` and leave everything as it was.
#[track_caller]
fn assert_run_refused(d: &Daemon, extra: &[&str], want: &str) {
    let before = world(d);
    let sandboxes_before = sandboxes();
    let mut args = vec!["run", "-d", "--name", "x"];
    args.extend_from_slice(extra);
    args.extend(["--", "sleep", "infinity"]);
    let line = d.assert_refused(&args);
    // Other test runs may remove theirs meanwhile; none may appear.
    let new: Vec<String> = sandboxes()
        .into_iter()
        .filter(|n| !sandboxes_before.contains(n))
        .collect();
    assert!(new.is_empty(), "{args:?} was refused but left {new:?}");
    assert!(
        line.ends_with(want),
        "{args:?}: {line:?} does not end with {want:?}"
    );
    assert_eq!(before, world(d), "{args:?} was refused but left something");
}

/// POSTs `body` to the daemon's API at `path`: (HTTP status, JSON body).
fn post_json(d: &Daemon, path: &str, body: &Value) -> (u16, Value) {
    use std::io::{Read as _, Write as _};
    let socket = d.run_dir().join("api.sock");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: dataplane\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, payload) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"));
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

/// The `80/tcp -> 0.0.0.0:8080` lines of `port NAME`.
#[track_caller]
fn port_lines(d: &Daemon, ctr: &str) -> Vec<String> {
    d.ok(&["port", ctr])
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

/// The daemon namespace's ephemeral port range.
fn ephemeral_range(d: &Daemon) -> std::ops::RangeInclusive<u16> {
    let out = d
        .ns()
        .exec(&["cat", "/proc/sys/net/ipv4/ip_local_port_range"])
        .ok();
    let v: Vec<u16> = out
        .stdout
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    v[0]..=v[1]
}

/// The host port of `line` (`... -> IP:PORT` or `IP:PORT`).
fn host_port_of(line: &str) -> u16 {
    line.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn bad_publish_is_refused_and_changes_nothing() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.12.0.0/24", "n"]);
    d.network_create(&["--internal", "--subnet", "10.13.0.0/24", "inner"]);
    d.run_sleeper("c1", Some("n"), &["-p", "8080:80"]);
    let _holder = hold_host_port(&d, 8090);
    let cases: &[(&[&str], &str)] = &[
        (
            &["-p", ""],
            "invalid -p \"\": empty; expected [[IP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]",
        ),
        (
            &["-p", "0:80"],
            "invalid -p \"0:80\": invalid host port \"0\": ports are numbers from 1 to 65535",
        ),
        (
            &["-p", "8081:0"],
            "invalid container port \"0\": ports are numbers from 1 to 65535",
        ),
        (
            &["-p", "65536:80"],
            "invalid host port \"65536\": ports are numbers from 1 to 65535",
        ),
        (
            &["-p", "8081:70000"],
            "invalid container port \"70000\": ports are numbers from 1 to 65535",
        ),
        (
            &["-p", "web"],
            "invalid container port \"web\": ports are numbers from 1 to 65535",
        ),
        (
            &["-p", "8010-8000:80"],
            "invalid host port range \"8010-8000\": the start is above the end",
        ),
        (
            &["-p", "8000-8001:80-82"],
            "the host port range 8000-8001 and the container port range 80-82 differ in length",
        ),
        (
            &["-p", "1.2.3:8081:80"],
            "invalid host IP \"1.2.3\": not an IPv4 address",
        ),
        (
            &["-p", "127.0.0.1:80"],
            "(a host IP goes first: IP:HOSTPORT:CONTAINERPORT or IP::CONTAINERPORT)",
        ),
        (
            &["-p", "8081:80/sctp"],
            "invalid protocol \"sctp\": tcp or udp",
        ),
        (
            &["-p", "8081:"],
            "no container port; expected [[IP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]",
        ),
        (
            &["-p", "1:2:3:4"],
            "too many colons; expected [[IP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]",
        ),
        (
            &["-p", "[::1]:8081:80"],
            "IPv6 host addresses are not supported",
        ),
        // A valid form after a bad one: still nothing.
        (
            &["-p", "8081:80", "-p", "8082:0"],
            "invalid container port \"0\": ports are numbers from 1 to 65535",
        ),
        // An internal network has no way in.
        (
            &["--network", "inner", "-p", "8081:80"],
            "cannot publish ports of a container on internal network inner",
        ),
        // Not an address of this host.
        (
            &["-p", "192.0.2.1:8081:80"],
            "failed to bind host port 192.0.2.1:8081/tcp: 192.0.2.1 is not an address of this host",
        ),
        (
            &["-p", "192.0.2.1::80"],
            "failed to bind a free host port on 192.0.2.1 (tcp): 192.0.2.1 is not an address of this host",
        ),
        // Held by a host process.
        (
            &["-p", "8090:80"],
            "failed to bind host port 0.0.0.0:8090/tcp: address already in use",
        ),
        (
            &["--network", "n", "-p", "127.0.0.1:8090:80"],
            "failed to bind host port 127.0.0.1:8090/tcp: address already in use",
        ),
        // Some ports reserved before the failure: released again.
        (
            &["-p", "9100:80", "-p", "9101:81/udp", "-p", "8090:82"],
            "address already in use",
        ),
        (
            &["-p", "9102:80", "-p", "192.0.2.1:9103:81"],
            "is not an address of this host",
        ),
    ];
    for (extra, want) in cases {
        assert_run_refused(&d, extra, want);
    }
    // What the refused runs had reserved is free again.
    for (proto, port) in [("tcp", 9100), ("udp", 9101), ("tcp", 9102)] {
        assert!(
            host_can_bind(&d, proto, port),
            "{port}/{proto} was released"
        );
    }
    d.run_sleeper(
        "c2",
        None,
        &["-p", "9100:80", "-p", "9101:81/udp", "-p", "9102:82"],
    );
    assert_published_entries(&d, 4);
}

#[test]
fn a_published_port_conflict_is_refused_and_leaves_nothing_behind() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.13.0.0/24", "n"]);
    d.run_sleeper(
        "web",
        Some("n"),
        &["-p", "8080:80", "-p", "127.0.0.1:9000:90/udp"],
    );
    let taken = "Bind for 0.0.0.0:8080 failed: port is already allocated";
    let cases: &[(&[&str], &str)] = &[
        (&["-p", "8080:80"], taken),
        (&["--network", "n", "-p", "8080:81"], taken),
        (&["-p", "8080-8080:80"], taken),
        (
            &["-p", "127.0.0.1:8080:80"],
            "Bind for 127.0.0.1:8080 failed: port is already allocated",
        ),
        (
            &["-p", "9000:90/udp"],
            "Bind for 0.0.0.0:9000 failed: port is already allocated",
        ),
        (
            &["-p", "127.0.0.1:9000:91/udp"],
            "Bind for 127.0.0.1:9000 failed: port is already allocated",
        ),
        // A free port first does not help.
        (&["-p", "9301:80", "-p", "8080:81"], taken),
        // Two -p of one run.
        (
            &["-p", "9300:80", "-p", "9300:81"],
            "Bind for 0.0.0.0:9300 failed: port is already allocated",
        ),
        (
            &["-p", "127.0.0.1:9300:80", "-p", "9300:81"],
            "Bind for 0.0.0.0:9300 failed: port is already allocated",
        ),
        // A host range whose every port is taken (8079 by this run).
        (
            &["-p", "8079-8080:80", "-p", "8079:81"],
            "Bind for 0.0.0.0:8079-8080 failed: all ports are allocated",
        ),
    ];
    for (extra, want) in cases {
        assert_run_refused(&d, extra, want);
    }
    // Over the API itself: 409 Conflict with Docker's message.
    let (status, body) = post_json(
        &d,
        "/containers",
        &json!({"name": "y", "publish": ["8080:80"], "cmd": ["sleep", "infinity"]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["message"], taken);
    assert_eq!(
        port_lines(&d, "web"),
        ["80/tcp -> 0.0.0.0:8080", "90/udp -> 127.0.0.1:9000"]
    );
    // Not conflicts: another protocol, another address, the freed ports.
    d.run_sleeper(
        "other",
        None,
        &["-p", "8080:80/udp", "-p", "127.0.0.2:9000:90/udp"],
    );
    d.run_sleeper(
        "again",
        None,
        &["-p", "9300:80", "-p", "9301:81", "-p", "8079:82"],
    );
    assert_published_entries(&d, 7);
}

#[test]
fn port_prints_published_ports_like_docker() {
    let d = Daemon::start();
    d.run_sleeper(
        "web",
        None,
        &[
            "-p",
            "8080:80",
            "-p",
            "127.0.0.1::53/udp",
            "-p",
            "8000-8001:90-91",
            "-p",
            "8000-8010:70",
            "--expose",
            "99",
        ],
    );
    let lines = port_lines(&d, "web");
    assert_eq!(lines.len(), 5, "{lines:?}");
    let (udp, rest) = lines.split_first().unwrap();
    assert!(udp.starts_with("53/udp -> 127.0.0.1:"), "{lines:?}");
    let eph = host_port_of(udp);
    assert!(
        ephemeral_range(&d).contains(&eph),
        "{eph} is an ephemeral port"
    );
    assert_eq!(
        rest,
        [
            "70/tcp -> 0.0.0.0:8002",
            "80/tcp -> 0.0.0.0:8080",
            "90/tcp -> 0.0.0.0:8000",
            "91/tcp -> 0.0.0.0:8001",
        ]
    );
    assert_eq!(d.ok(&["port", "web", "80"]).stdout, "0.0.0.0:8080\n");
    assert_eq!(d.ok(&["port", "web", "80/tcp"]).stdout, "0.0.0.0:8080\n");
    assert_eq!(
        d.ok(&["port", "web", "53/udp"]).stdout,
        format!("127.0.0.1:{eph}\n")
    );
    for (args, want) in [
        (
            &["port", "web", "81"][..],
            "no public port '81/tcp' published for web",
        ),
        (
            &["port", "web", "53"],
            "no public port '53/tcp' published for web",
        ),
        (
            &["port", "web", "99"],
            "no public port '99/tcp' published for web",
        ),
        (
            &["port", "web", "80/sctp"],
            "protocol \"sctp\" is not tcp or udp",
        ),
        (&["port", "nope"], "no such container: nope"),
    ] {
        let line = d.assert_refused(args);
        assert!(line.ends_with(want), "{args:?}: {line:?}");
    }
    assert_eq!(
        d.ok(&["port", "web", "80", "--format", "json"]).json(),
        json!([{"PrivatePort": 80, "Type": "tcp", "IP": "0.0.0.0", "PublicPort": 8080}])
    );
    let all = d.ok(&["port", "web", "--format", "json"]).json();
    assert_eq!(all.as_array().map(Vec::len), Some(5), "{all:#}");
    assert_eq!(
        all[0],
        json!({"PrivatePort": 53, "Type": "udp", "IP": "127.0.0.1", "PublicPort": eph})
    );

    // ps: Docker's PORTS column, in the table and as `Ports`.
    let ports = format!(
        "99/tcp, 127.0.0.1:{eph}->53/udp, 0.0.0.0:8002->70/tcp, 0.0.0.0:8080->80/tcp, \
         0.0.0.0:8000->90/tcp, 0.0.0.0:8001->91/tcp"
    );
    let ps = d.ps();
    assert_eq!(ps[0]["Ports"], ports.as_str());
    let table = d.ok(&["ps"]).stdout;
    assert!(table.lines().next().unwrap().contains("PORTS"), "{table}");
    assert!(table.contains(&ports), "{table}");

    // inspect: NetworkSettings.Ports (resolved), HostConfig.PortBindings
    // (as asked).
    let v = d.inspect("web");
    assert_eq!(
        v["NetworkSettings"]["Ports"],
        json!({
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": eph.to_string()}],
            "70/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8002"}],
            "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}],
            "90/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8000"}],
            "91/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8001"}],
            "99/tcp": null,
        })
    );
    assert_eq!(
        v["HostConfig"]["PortBindings"],
        json!({
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": ""}],
            "70/tcp": [{"HostIp": "", "HostPort": "8000-8010"}],
            "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
            "90/tcp": [{"HostIp": "", "HostPort": "8000"}],
            "91/tcp": [{"HostIp": "", "HostPort": "8001"}],
        })
    );
    assert_eq!(v["HostConfig"]["PublishAllPorts"], false);
    assert_published_entries(&d, 5);

    // A container without published ports prints nothing.
    d.run_sleeper("plain", None, &[]);
    assert_eq!(d.ok(&["port", "plain"]).stdout, "");
}

#[test]
fn publish_all_puts_every_exposed_port_on_a_free_host_port() {
    let d = Daemon::start();
    d.run_sleeper(
        "p",
        None,
        &[
            "-P", "--expose", "80", "--expose", "53/udp", "--expose", "443", "-p", "8443:443",
        ],
    );
    let lines = port_lines(&d, "p");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("53/udp -> 0.0.0.0:"), "{lines:?}");
    assert!(lines[1].starts_with("80/tcp -> 0.0.0.0:"), "{lines:?}");
    assert_eq!(lines[2], "443/tcp -> 0.0.0.0:8443", "-p wins over -P");
    let range = ephemeral_range(&d);
    for l in &lines[..2] {
        let port = host_port_of(l);
        assert!(range.contains(&port), "{l}: an ephemeral port");
        let proto = if l.contains("/udp") { "udp" } else { "tcp" };
        assert!(!host_can_bind(&d, proto, port), "{l}: reserved on the host");
    }
    let v = d.inspect("p");
    assert_eq!(v["HostConfig"]["PublishAllPorts"], true);
    assert_eq!(
        v["HostConfig"]["PortBindings"],
        json!({"443/tcp": [{"HostIp": "", "HostPort": "8443"}]})
    );
    assert_eq!(
        v["Config"]["ExposedPorts"],
        json!({"53/udp": {}, "80/tcp": {}, "443/tcp": {}})
    );
    // -P without exposed ports publishes nothing.
    d.run_sleeper("q", None, &["-P"]);
    assert_eq!(d.ok(&["port", "q"]).stdout, "");
    assert_published_entries(&d, 3);
}

#[test]
fn published_ports_are_held_across_restarts_and_freed_by_rm() {
    let mut d = Daemon::start();
    d.run_sleeper("web", None, &["-p", "8080:80", "-p", "5353:53/udp"]);
    let before = port_lines(&d, "web");
    assert_eq!(before, ["53/udp -> 0.0.0.0:5353", "80/tcp -> 0.0.0.0:8080"]);
    assert!(!host_can_bind(&d, "tcp", 8080) && !host_can_bind(&d, "udp", 5353));
    d.stop("TERM");
    d.restart();
    assert_eq!(port_lines(&d, "web"), before);
    assert!(
        !host_can_bind(&d, "tcp", 8080),
        "reserved again after the restart"
    );
    assert!(
        !host_can_bind(&d, "udp", 5353),
        "reserved again after the restart"
    );
    assert_published_entries(&d, 2);
    // Without eth0 the ports lead nowhere; back on eth0 they lead there again.
    d.ok(&["network", "disconnect", "bridge", "web"]);
    assert_published_entries(&d, 0);
    assert!(!host_can_bind(&d, "tcp", 8080), "still the container's");
    d.ok(&["network", "connect", "bridge", "web"]);
    assert_published_entries(&d, 2);
    d.ok(&["rm", "-f", "web"]);
    assert!(host_can_bind(&d, "tcp", 8080) && host_can_bind(&d, "udp", 5353));
    assert_published_entries(&d, 0);

    // A daemon dying in the middle of a run leaves no published port once
    // it is restarted.
    d.stop("TERM");
    d.restart_with_env(&[("DATAPLANE_CRASH_AT", "run-before-commit")]);
    assert!(!d
        .cli(&["run", "-d", "--name", "x", "-p", "9200:80", "--", "sleep", "infinity"])
        .success());
    assert_published_entries(&d, 1);
    d.stop("KILL");
    d.restart();
    assert_published_entries(&d, 0);
    assert!(host_can_bind(&d, "tcp", 9200));
    d.run_sleeper("x", None, &["-p", "9200:80"]);
    assert_eq!(port_lines(&d, "x"), ["80/tcp -> 0.0.0.0:9200"]);
}

// ----- bad input that would harm the host -------------------------------------

/// `ip -4 -o addr show dev lo` in the daemon's namespace.
fn lo_addresses(d: &Daemon) -> String {
    d.ns()
        .exec(&["ip", "-4", "-o", "addr", "show", "dev", "lo"])
        .ok()
        .stdout
}

/// `network create ARGS... x` must be refused with a line containing
/// `want`, leave everything as it was, and answer the API with 400.
#[track_caller]
fn assert_create_refused(d: &Daemon, args: &[&str], want: &str) {
    let mut full = vec!["network", "create"];
    full.extend_from_slice(args);
    full.push("x");
    let line = d.assert_refused(&full);
    assert!(line.contains(want), "{args:?}: {line:?} lacks {want:?}");
    let mut body = json!({"name": "x"});
    for pair in args.chunks(2) {
        let key = pair[0].trim_start_matches("--").replace('-', "_");
        body[key] = match key.as_str() {
            "aux_address" => {
                let (k, v) = pair[1].split_once('=').unwrap();
                body["aux_addresses"] = json!({ k: v });
                continue;
            }
            _ => json!(pair[1]),
        };
    }
    let (status, answer) = post_json(d, "/networks", &body);
    assert_eq!(status, 400, "{body}: {answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| m.contains(want)),
        "{body}: {answer}"
    );
}

#[test]
fn special_subnets_and_gateways_are_refused_and_lo_keeps_localhost() {
    let d = Daemon::start();
    let lo_before = lo_addresses(&d);
    assert!(lo_before.contains("127.0.0.1/8"), "{lo_before}");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--subnet", "127.0.0.0/24"],
            "subnet 127.0.0.0/24 overlaps 127.0.0.0/8 (loopback): no network may use loopback, \
             multicast, 0.0.0.0/8 or 240.0.0.0/4 addresses",
        ),
        (
            &["--subnet", "224.0.0.0/24"],
            "subnet 224.0.0.0/24 overlaps 224.0.0.0/4 (multicast)",
        ),
        (
            &["--subnet", "0.0.0.0/8"],
            "subnet 0.0.0.0/8 overlaps 0.0.0.0/8",
        ),
        (
            &["--subnet", "0.0.0.0/0"],
            "subnet 0.0.0.0/0 overlaps 0.0.0.0/8",
        ),
        (
            &["--subnet", "240.0.0.0/24"],
            "subnet 240.0.0.0/24 overlaps 240.0.0.0/4 (reserved, class E)",
        ),
        (
            &["--subnet", "255.255.255.252/30"],
            "overlaps 255.255.255.255/32 (the limited broadcast address)",
        ),
        (
            &["--subnet", "10.3.0.0/24", "--gateway", "127.0.0.1"],
            "gateway 127.0.0.1 is a loopback address (127.0.0.0/8)",
        ),
        (
            &["--subnet", "10.3.0.0/24", "--gateway", "255.255.255.255"],
            "gateway 255.255.255.255 is the limited broadcast address",
        ),
        (
            &["--subnet", "10.3.0.0/24", "--gateway", "10.3.0.0"],
            "gateway 10.3.0.0 is the subnet's network or broadcast address",
        ),
        (
            &["--subnet", "10.3.0.0/24", "--ip-range", "127.0.0.0/25"],
            "ip range 127.0.0.0/25 overlaps 127.0.0.0/8 (loopback)",
        ),
        (
            &["--subnet", "10.3.0.0/24", "--aux-address", "m=224.0.0.5"],
            "auxiliary address 224.0.0.5 is a multicast address",
        ),
    ];
    for (args, want) in cases {
        assert_create_refused(&d, args, want);
    }
    assert_eq!(lo_addresses(&d), lo_before, "lo is as it was");
    // What used to take localhost away: create and remove a network whose
    // gateway is an address lo has. Refused now, and lo keeps it.
    d.assert_refused(&["network", "create", "--subnet", "127.0.0.0/24", "x"]);
    d.assert_refused(&["network", "rm", "x"]);
    assert!(lo_addresses(&d).contains("127.0.0.1/8"));
    assert!(d.ns().exec(&["ping", "-c1", "-W1", "127.0.0.1"]).success());
}

#[test]
fn subnets_the_host_routes_or_has_addresses_in_are_refused() {
    let d = Daemon::start();
    let ip = |args: &[&str]| {
        let mut full = vec!["ip"];
        full.extend_from_slice(args);
        d.ns().exec(&full).ok();
    };
    // A route of the host, one in a policy-routing table, an address on an
    // interface whose prefix route lives elsewhere, a /32 on lo.
    ip(&["route", "add", "unreachable", "10.71.0.0/16"]);
    ip(&["route", "add", "10.72.0.0/16", "dev", "lo", "table", "100"]);
    ip(&["addr", "add", "10.73.0.5/24", "dev", "lo", "noprefixroute"]);
    ip(&["addr", "add", "10.74.0.1/32", "dev", "lo"]);
    let cases: &[(&str, &str)] = &[
        (
            "10.71.3.0/24",
            "subnet 10.71.3.0/24 overlaps unreachable route 10.71.0.0/16 of this host: \
             choose a subnet the host does not use",
        ),
        (
            "10.72.0.0/24",
            "overlaps route 10.72.0.0/16 dev lo (table 100) of this host",
        ),
        (
            "10.73.0.0/16",
            "overlaps address 10.73.0.5/24 on lo of this host",
        ),
        (
            "10.74.0.0/24",
            "overlaps address 10.74.0.1/32 on lo of this host",
        ),
        (
            "10.0.0.0/8",
            "of this host: choose a subnet the host does not use",
        ),
    ];
    for (subnet, want) in cases {
        assert_create_refused(&d, &["--subnet", subnet], want);
    }
    // The pool skips a range the host routes (172.17 is the bridge's).
    ip(&["route", "add", "blackhole", "172.18.0.0/16"]);
    d.network_create(&["auto"]);
    assert_eq!(
        d.network_inspect("auto")["IPAM"]["Config"][0]["Subnet"],
        "172.19.0.0/16"
    );
    // The daemon's own gateways do not count against it: removing and
    // creating a network again, on the same subnet, works; and its rm
    // takes only its own gateway, not the host's /32 of the same address.
    d.network_create(&["--subnet", "10.75.0.0/24", "again"]);
    assert!(lo_addresses(&d).contains("10.75.0.1/32"));
    d.ok(&["network", "rm", "again"]);
    assert!(
        !lo_addresses(&d).contains("10.75.0.1/32"),
        "the gateway went"
    );
    d.network_create(&["--subnet", "10.75.0.0/24", "again"]);
    d.ok(&["network", "rm", "again", "auto"]);
    // Once the host gives a range up, it is accepted.
    ip(&["route", "del", "unreachable", "10.71.0.0/16"]);
    d.network_create(&["--subnet", "10.71.3.0/24", "freed"]);
    let lo = lo_addresses(&d);
    for kept in ["127.0.0.1/8", "10.73.0.5/24", "10.74.0.1/32"] {
        assert!(lo.contains(kept), "{kept} is the host's and stays: {lo}");
    }
}

// ----- too many published ports ------------------------------------------------

/// How many files the daemon holds open.
fn daemon_fds(d: &Daemon) -> usize {
    let pid = d.pid().expect("the daemon runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the daemon's fds")
        .count()
}

/// The daemon's (soft, hard) RLIMIT_NOFILE.
fn daemon_nofile(d: &Daemon) -> (String, String) {
    let pid = d.pid().expect("the daemon runs");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn too_many_published_ports_are_refused_before_anything_is_bound() {
    let d = Daemon::start();
    let fds = daemon_fds(&d);
    assert_run_refused(
        &d,
        &["-p", "1-65535:1-65535"],
        "cannot publish 65535 ports for one container: the most is 16384 (each holds a host \
         port); publish a smaller range",
    );
    let (status, answer) = post_json(
        &d,
        "/containers",
        &json!({"name": "x", "cmd": ["sleep", "infinity"], "publish": ["1-65535:1-65535"]}),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        daemon_fds(&d) < fds + 16,
        "nothing was bound: {fds} fds before, {} after",
        daemon_fds(&d)
    );
    for port in [1, 80, 30000, 65535] {
        assert!(host_can_bind(&d, "tcp", port), "{port} is free");
    }

    // Under the cap, but more than the daemon's open-files limit allows.
    let (soft, hard) = daemon_nofile(&d);
    let pid = d.pid().unwrap().to_string();
    let low = format!("--nofile={}:{hard}", fds + 2000);
    sh("prlimit", &["--pid", &pid, &low]).ok();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_run_refused(
            &d,
            &["-p", "30000-32999:30000-32999"],
            "publish fewer ports, or raise the daemon's open-files limit (ulimit -n, \
             LimitNOFILE=) and restart it",
        );
        assert!(daemon_fds(&d) < fds + 16, "nothing was bound");
        assert!(host_can_bind(&d, "tcp", 30000) && host_can_bind(&d, "tcp", 32999));
    }));
    sh(
        "prlimit",
        &["--pid", &pid, &format!("--nofile={soft}:{hard}")],
    )
    .ok();
    if let Err(e) = refused {
        std::panic::resume_unwind(e);
    }
    // With the limit back, the same range is published.
    d.run_sleeper("many", None, &["-p", "30000-32999:30000-32999"]);
    assert!(!host_can_bind(&d, "tcp", 31000));
    assert!(daemon_fds(&d) >= fds + 3000);
    d.ok(&["rm", "-f", "many"]);
    assert!(host_can_bind(&d, "tcp", 31000));
}

// ----- a daemon that does not answer ---------------------------------------------

/// SIGSTOPs the daemon; SIGCONTs it on drop, also when the test fails.
struct Stopped(u32);

impl Stopped {
    fn new(d: &Daemon) -> Stopped {
        let pid = d.pid().expect("the daemon runs");
        dataplane_tests::signal(pid, "STOP");
        eventually("the daemon to stop", || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            match stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
            {
                Some("T") => Ok(()),
                s => Err(format!("state {s:?}")),
            }
        });
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        dataplane_tests::signal(self.0, "CONT");
    }
}

#[test]
fn a_stopped_daemon_is_reported_not_waited_on() {
    let d = Daemon::start();
    let help = run({
        let mut c = Command::new(bin());
        c.arg("--help");
        c
    })
    .ok();
    assert!(
        help.stdout.contains("--timeout <SECONDS>") && help.stdout.contains("DATAPLANE_TIMEOUT"),
        "{help}"
    );
    let host = d.host();
    {
        let _stopped = Stopped::new(&d);
        for args in [
            &["--timeout", "1", "network", "ls"][..],
            &["--timeout", "0.5", "ps"],
            &["--timeout", "1", "rm", "-f", "nope"],
        ] {
            let t0 = std::time::Instant::now();
            let line = d.cli(args).refused().to_string();
            let took = t0.elapsed();
            assert!(
                line.contains(&format!(
                    "the dataplane daemon at {host} did not answer within"
                )),
                "{args:?}: {line}"
            );
            assert!(line.contains("--timeout"), "{line}");
            assert!(
                took < std::time::Duration::from_secs(10),
                "{args:?} took {took:?}"
            );
        }
        // The environment sets it too.
        let mut c = Command::new(bin());
        c.env_remove("DATAPLANE_HOST")
            .env("DATAPLANE_TIMEOUT", "0.5")
            .args(["--host", &host, "network", "ls"]);
        let line = run(c).refused().to_string();
        assert!(line.contains("did not answer within 0.5 s"), "{line}");
    }
    // Once it runs again it answers, and a bad value is refused in one line.
    d.ok(&["--timeout", "5", "network", "ls"]);
    let line = d.cli(&["--timeout", "soon", "ps"]).refused().to_string();
    assert!(line.contains("invalid timeout \"soon\""), "{line}");
}

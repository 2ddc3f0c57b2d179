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
    let nets = d.ok(&["network", "ls", "--format", "json"]).json();
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
    let ps = d.ok(&["ps", "--format", "json"]).json();
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

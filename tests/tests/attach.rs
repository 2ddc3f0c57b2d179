//! Attachments: sandboxes another runtime owns, through the API routes the
//! Docker and CNI plugins use (`/attachments`). Each test plays the runtime
//! itself with a namespace of its own.

use std::process::Command;

use dataplane_tests::{eventually, in_subnet, run, Daemon, NetNs, Outside, HOST_IP, OUTSIDE_IP};
use serde_json::{json, Value};

/// One API call over the daemon's socket: (status, body).
fn api(d: &Daemon, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(d.run_dir().join("api.sock"))
        .args(["-X", method, "-H", "content-type: application/json"])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args(["-d", &b.to_string()]);
    }
    c.arg(format!("http://dataplane{path}"));
    let out = run(c);
    let (text, code) = out
        .stdout
        .trim_end()
        .rsplit_once('\n')
        .map_or(("", out.stdout.trim()), |(t, c)| (t, c));
    let code = code
        .parse()
        .unwrap_or_else(|_| panic!("no status from curl: {out}"));
    (code, serde_json::from_str(text).unwrap_or(Value::Null))
}

fn ps(d: &Daemon) -> Vec<Value> {
    d.ps().as_array().cloned().unwrap_or_default()
}

fn link_exists(ns: &NetNs, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", "dev", name]).success()
}

#[test]
fn a_cni_attachment_lives_in_the_runtimes_namespace_and_leaves_it_whole() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.77.0.0/24", "n"]);
    let rt = NetNs::new();
    let req = json!({
        "runtime": "cni", "id": "c0ffee:eth0", "network": "n",
        "netns": rt.path(), "aliases": ["web"],
        "ports": [{"proto": "tcp", "host_port": 8080, "container_port": 80}],
    });
    let (code, a) = api(&d, "POST", "/attachments", Some(&req));
    assert_eq!(code, 201, "{a:#}\n{}", d.log());
    let ip = a["ip"].as_str().unwrap().to_string();
    assert!(in_subnet(&ip, "10.77.0.0/24"), "{a:#}");
    assert_eq!(a["gateway"], "10.77.0.1");
    assert_eq!(a["prefix"], 24);
    assert_eq!(a["ifname"], "eth0");
    assert_eq!(a["name"], "cni-c0ffee");
    assert_eq!(a["ports"][0]["host_port"], 8080);
    // Asking again returns the same attachment.
    let (code, again) = api(&d, "POST", "/attachments", Some(&req));
    assert_eq!((code, &again["endpoint_id"]), (201, &a["endpoint_id"]));

    // Configured in the runtime's namespace, as a CNI plugin must.
    let addr = rt.exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.stdout.contains(&format!("{ip}/24")), "{addr}");
    let routes = rt.exec(&["ip", "route"]);
    assert!(
        routes.stdout.contains("default via 10.77.0.1 dev eth0"),
        "{routes}"
    );
    assert_eq!(
        rt.exec(&["cat", "/sys/class/net/eth0/address"])
            .stdout
            .trim(),
        a["mac"]
    );

    // Switched like any container, both ways, and found by name and alias.
    d.run_sleeper("peer", Some("n"), &[]);
    d.assert_pings("peer", &ip);
    let peer_ip = d.ip("peer", "n");
    eventually("the attachment reaching its peer", || {
        let o = rt.exec(&["ping", "-c1", "-W1", &peer_ip]);
        o.success().then_some(()).ok_or(o.to_string())
    });
    d.assert_pings("peer", "web");

    // Its published port leads into the runtime's namespace, with the
    // client's address kept.
    let outside = Outside::new(&d);
    let server = rt.exec(&[
        "sh",
        "-c",
        "python3 -c \"import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',80))\ns.listen(1)\nc,a=s.accept()\nc.sendall(a[0].encode()+b'\\n')\nc.close()\" >/dev/null 2>&1 & echo started",
    ]);
    assert!(server.success(), "{server}");
    let seen = eventually("the published port to answer", || {
        let o = outside.exec(&["nc", "-w2", HOST_IP, "8080"]);
        let s = o.stdout.trim().to_string();
        (!s.is_empty()).then_some(s).ok_or(o.to_string())
    });
    assert_eq!(
        seen, OUTSIDE_IP,
        "the client's address as the server saw it"
    );

    // Listed with its runtime; `rm` and `connect` are the runtime's.
    let listed: Vec<Value> = ps(&d)
        .into_iter()
        .filter(|c| c["Runtime"] == "cni")
        .collect();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["State"], "running");
    let rm = d.cli(&["rm", "-f", "cni-c0ffee"]);
    assert!(
        !rm.success() && rm.stderr.contains("managed by cni"),
        "{rm}"
    );

    // Detached: twice is fine; the namespace stays, without the link.
    let host_if = a["host_ifname"].as_str().unwrap().to_string();
    let path = "/attachments/cni/c0ffee:eth0";
    assert_eq!(api(&d, "DELETE", path, None).0, 204);
    assert_eq!(api(&d, "DELETE", path, None).0, 204);
    assert_eq!(api(&d, "GET", path, None).0, 404);
    assert!(rt.path().exists());
    assert!(!link_exists(&rt, "eth0"));
    assert!(!link_exists(d.ns(), &host_if));
    assert!(ps(&d).iter().all(|c| c["Runtime"] != "cni"));
    // Its address and port are free again.
    let (code, b) = api(
        &d,
        "POST",
        "/attachments",
        Some(&json!({"runtime": "cni", "id": "beef:eth0", "network": "n",
            "netns": rt.path(), "ip": ip,
            "ports": [{"proto": "tcp", "host_port": 8080, "container_port": 80}]})),
    );
    assert_eq!(code, 201, "{b:#}");
    assert_eq!(api(&d, "DELETE", "/attachments/cni/beef:eth0", None).0, 204);
}

#[test]
fn a_docker_attachment_leaves_its_peer_for_docker_to_move_and_configure() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.78.0.0/24", "n"]);
    let (code, a) = api(
        &d,
        "POST",
        "/attachments",
        Some(&json!({"runtime": "docker", "id": "ep1", "network": "n"})),
    );
    assert_eq!(code, 201, "{a:#}\n{}", d.log());
    let peer = a["peer"].as_str().unwrap().to_string();
    let ip = a["ip"].as_str().unwrap().to_string();
    assert!(peer.starts_with("dpd") && peer.len() == 15, "{a:#}");
    assert_eq!(a["netns"], "");
    // The peer waits in the daemon's namespace with its MAC, no address.
    let show = d.ns().exec(&["ip", "-o", "addr", "show", "dev", &peer]);
    assert!(show.success() && !show.stdout.contains("inet "), "{show}");
    let mac = d
        .ns()
        .exec(&["cat", &format!("/sys/class/net/{peer}/address")]);
    assert_eq!(mac.stdout.trim(), a["mac"]);

    // What Docker does on Join: move, rename, address, route.
    let sb = NetNs::new();
    d.ns()
        .exec(&["ip", "link", "set", &peer, "netns", sb.name()])
        .ok();
    for cmd in [
        vec!["ip", "link", "set", &peer, "name", "eth0"],
        vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        vec!["ip", "link", "set", "eth0", "up"],
        vec!["ip", "route", "add", "default", "via", "10.78.0.1"],
    ] {
        sb.exec(&cmd).ok();
    }
    let (code, _) = api(
        &d,
        "POST",
        "/attachments/docker/ep1/netns",
        Some(&json!({"netns": sb.path()})),
    );
    assert_eq!(code, 204);
    d.run_sleeper("peer", Some("n"), &[]);
    d.assert_pings("peer", &ip);

    // ProgramExternalConnectivity and its revocation.
    let (code, b) = api(
        &d,
        "POST",
        "/attachments/docker/ep1/ports",
        Some(&json!([{"proto": "udp", "host_port": 0, "container_port": 53}])),
    );
    assert_eq!(code, 200, "{b:#}");
    let port = b[0]["host_port"].as_u64().unwrap();
    assert!(port > 0, "{b:#}");
    let (_, a2) = api(&d, "GET", "/attachments/docker/ep1", None);
    assert_eq!(a2["ports"][0]["host_port"], port);
    assert_eq!(a2["netns"], sb.path().display().to_string());
    let (code, b) = api(
        &d,
        "POST",
        "/attachments/docker/ep1/ports",
        Some(&json!([])),
    );
    assert_eq!((code, b), (200, json!([])));

    assert_eq!(api(&d, "DELETE", "/attachments/docker/ep1", None).0, 204);
    assert!(!link_exists(d.ns(), a["host_ifname"].as_str().unwrap()));
    assert!(!link_exists(&sb, "eth0"), "the veth goes as a pair");
}

#[test]
fn bad_attachments_are_refused_and_leave_nothing() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.79.0.0/24", "n"]);
    let rt = NetNs::new();
    let ns = rt.path().display().to_string();
    let cases = [
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n", "netns": ns, "colour": 1}),
            "unknown field",
        ),
        (
            json!({"runtime": "rkt", "id": "a:eth0", "network": "n", "netns": ns}),
            "unknown variant",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n"}),
            "needs the runtime's network namespace",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n", "netns": "/nonexistent/ns"}),
            "does not exist",
        ),
        (
            json!({"runtime": "cni", "id": "a/b", "network": "n", "netns": ns}),
            "invalid attachment id",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "host", "netns": ns}),
            "need a network with addresses",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "nope", "netns": ns}),
            "not found",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n", "netns": ns, "ip": "10.80.0.5"}),
            "",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n", "netns": ns, "ifname": "a/b"}),
            "invalid interface name",
        ),
        (
            json!({"runtime": "cni", "id": "a:eth0", "network": "n", "netns": ns,
                "ports": [{"proto": "sctp", "container_port": 80}]}),
            "",
        ),
    ];
    for (req, says) in cases {
        let (code, body) = api(&d, "POST", "/attachments", Some(&req));
        assert!((400..500).contains(&code), "{req} -> {code} {body}");
        if !says.is_empty() {
            let text = body.to_string() + &format!("{code}");
            // axum's own rejections carry plain text, not our JSON.
            assert!(
                text.contains(says) || body.is_null(),
                "{req} -> {code} {body}"
            );
        }
    }
    assert!(ps(&d).iter().all(|c| c["Runtime"] == "dataplane"));
    assert!(!link_exists(&rt, "eth0"));
    // A port taken by a container refuses the attachment whole.
    d.run_sleeper("holder", Some("n"), &["-p", "9090:80"]);
    let (code, body) = api(
        &d,
        "POST",
        "/attachments",
        Some(
            &json!({"runtime": "cni", "id": "b:eth0", "network": "n", "netns": ns,
            "ports": [{"proto": "tcp", "host_port": 9090, "container_port": 80}]}),
        ),
    );
    assert_eq!(code, 409, "{body}");
    assert!(ps(&d).iter().all(|c| c["Runtime"] == "dataplane"));
    assert!(!link_exists(&rt, "eth0"));
    let used: Vec<Value> = d.network_inspect("n")["Containers"]
        .as_object()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default();
    assert_eq!(used.len(), 1, "only holder: {used:#?}");
}

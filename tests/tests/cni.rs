//! `dataplane-cni`, the CNI plugin: called as runtimes call plugins
//! (`CNI_*` variables, the configuration on stdin, the answer on stdout)
//! against a real daemon, and driven by a real runtime (Podman with its CNI
//! backend) end to end. Each test plays or starts the runtime itself with
//! namespaces and state of its own.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use dataplane_tests::{bin, eventually, in_subnet, Daemon, NetNs, Outside, TempDir, HOST_IP};
use serde_json::{json, Value};

fn plugin() -> PathBuf {
    let p = bin().with_file_name("dataplane-cni");
    assert!(
        p.is_file(),
        "no plugin at {} (cargo build -p dataplane-user)",
        p.display()
    );
    p
}

/// What one plugin call answered.
#[derive(Debug)]
struct Answer {
    ok: bool,
    out: Value,
    raw: String,
    stderr: String,
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok={} stdout={} stderr={}",
            self.ok, self.raw, self.stderr
        )
    }
}

impl Answer {
    /// The error code of a failed call (its object on stdout).
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure: {self}");
        self.out["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error object: {self}"))
    }
}

/// Runs the plugin with `vars` (and nothing else of the test's environment,
/// as runtimes do) and `stdin`.
fn call(vars: &[(&str, &str)], stdin: &Value) -> Answer {
    let mut c = Command::new(plugin());
    c.env_clear()
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running dataplane-cni");
    let body = if stdin.is_string() {
        stdin.as_str().unwrap().to_string()
    } else {
        stdin.to_string()
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let raw = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Answer {
        ok: o.status.success(),
        out: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn socket(d: &Daemon) -> String {
    d.run_dir().join("api.sock").display().to_string()
}

fn conf(d: &Daemon, version: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": version, "name": "podnet", "type": "dataplane-cni",
        "network": "pods", "socket": socket(d),
    });
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    c
}

fn cmd<'a>(command: &'a str, id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ]
}

fn cni_attachments(d: &Daemon) -> Vec<Value> {
    d.ps()
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["Runtime"] == "cni")
        .collect()
}

fn has_link(ns: &NetNs, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", "dev", name]).success()
}

/// The keys of the daemon's pinned map `name` (bytes); `None` when
/// `bpftool` is not installed to tell.
fn map_keys(d: &Daemon, name: &str) -> Option<Vec<Vec<u8>>> {
    if !dataplane_tests::sh("sh", &["-c", "command -v bpftool"]).success() {
        return None;
    }
    let pin = std::fs::read_dir(d.bpffs())
        .expect("the daemon's bpffs directory")
        .filter_map(Result::ok)
        .map(|e| e.path().join("maps").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no pinned map {name}"));
    let out = dataplane_tests::sh("bpftool", &["-j", "map", "dump", "pinned", pin.to_str()?]);
    assert!(out.success(), "{out}");
    let entries = out.json();
    Some(
        entries
            .as_array()
            .expect("a list of entries")
            .iter()
            .map(|e| {
                e["key"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b.as_str())
                    .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                    .collect()
            })
            .collect(),
    )
}

/// Asserts that `ENDPOINTS` has no entry for any of `ips` and `PORTS` none
/// at all (when bpftool can tell).
#[track_caller]
fn assert_no_map_entries(d: &Daemon, ips: &[&str]) {
    if let Some(keys) = map_keys(d, "ENDPOINTS") {
        for ip in ips {
            let want = ip.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec();
            assert!(!keys.contains(&want), "ENDPOINTS still has {ip}");
        }
    }
    if let Some(keys) = map_keys(d, "PORTS") {
        assert!(keys.is_empty(), "PORTS still has {} entries", keys.len());
    }
}

#[test]
fn the_plugin_adds_checks_chains_collects_and_deletes_in_the_runtimes_namespaces() {
    let d = Daemon::start();
    let (rt1, rt2) = (NetNs::new(), NetNs::new());
    let (ns1, ns2) = (
        rt1.path().display().to_string(),
        rt2.path().display().to_string(),
    );

    let v = call(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.0.0"}),
    );
    assert!(v.ok, "{v}");
    let versions = v.out["supportedVersions"].as_array().unwrap();
    for want in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.iter().any(|x| x == want), "{v}");
    }

    // ADD creates the network from "subnet" and the endpoint in the
    // runtime's namespace, publishing what portMappings asks.
    let c1 = conf(
        &d,
        "1.0.0",
        json!({"subnet": "10.81.0.0/24", "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]}}),
    );
    let mut add1 = cmd("ADD", "aaaa1111", &ns1);
    add1.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web"));
    let r1 = call(&add1, &c1);
    assert!(r1.ok, "{r1}\n{}", d.log());
    assert_eq!(r1.out["cniVersion"], "1.0.0");
    assert_eq!(r1.out["interfaces"][0]["name"], "eth0");
    assert_eq!(r1.out["interfaces"][0]["sandbox"], ns1.as_str());
    assert_eq!(r1.out["ips"][0]["interface"], 0);
    assert_eq!(r1.out["ips"][0]["gateway"], "10.81.0.1");
    assert_eq!(
        r1.out["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.81.0.1"}])
    );
    let addr1 = r1.out["ips"][0]["address"].as_str().unwrap().to_string();
    let ip1 = addr1.split('/').next().unwrap().to_string();
    assert!(
        in_subnet(&ip1, "10.81.0.0/24") && addr1.ends_with("/24"),
        "{r1}"
    );
    assert!(d.network_inspect("pods")["IPAM"]
        .to_string()
        .contains("10.81.0.0/24"));
    let shown = rt1.exec(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(shown.stdout.contains(&addr1), "{shown}");
    let mac = rt1.exec(&["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(mac.stdout.trim(), r1.out["interfaces"][0]["mac"]);
    // Projected like any endpoint (and so the leak checks below can see).
    if let Some(keys) = map_keys(&d, "ENDPOINTS") {
        let want = ip1.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec();
        assert!(keys.contains(&want), "ENDPOINTS lacks {ip1}");
    }
    if let Some(keys) = map_keys(&d, "PORTS") {
        assert_eq!(keys.len(), 1, "PORTS holds the one mapping");
    }
    // ADD again (a runtime retrying) answers the same attachment.
    let again = call(&add1, &c1);
    assert!(again.ok, "{again}");
    assert_eq!(again.out, r1.out);
    // The same container and interface from another namespace is refused,
    // not answered with the first one's result.
    let elsewhere = call(&cmd("ADD", "aaaa1111", &ns2), &c1);
    assert_eq!(elsewhere.code(), 101, "{elsewhere}");
    assert!(
        elsewhere.out["msg"]
            .as_str()
            .unwrap()
            .contains("DEL it first"),
        "{elsewhere}"
    );
    assert!(!has_link(&rt2, "eth0"));

    // CHECK with ADD's result as prevResult.
    let mut chk = c1.clone();
    chk["prevResult"] = r1.out.clone();
    let ok = call(&cmd("CHECK", "aaaa1111", &ns1), &chk);
    assert!(ok.ok && ok.raw.is_empty(), "{ok}");
    // ... of a container it never saw, of another namespace, of a
    // prevResult without our address.
    assert_eq!(call(&cmd("CHECK", "bbbb", &ns1), &chk).code(), 3);
    assert_eq!(call(&cmd("CHECK", "aaaa1111", &ns2), &chk).code(), 3);
    let mut wrong = chk.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.81.0.250/24");
    assert_eq!(call(&cmd("CHECK", "aaaa1111", &ns1), &wrong).code(), 7);
    // CHECK does not exist before 0.4.0.
    let mut old = chk.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(call(&cmd("CHECK", "aaaa1111", &ns1), &old).code(), 1);

    // A second container, chained after another plugin's result, in
    // 0.4.0: its interface is appended, its address points at it.
    let prev = json!({"cniVersion": "0.4.0",
        "interfaces": [{"name": "lo0", "sandbox": ns2}],
        "ips": [{"version": "4", "address": "192.0.2.9/32", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]}});
    let c2 = conf(
        &d,
        "0.4.0",
        json!({"prevResult": prev, "runtimeConfig": {"ips": ["10.81.0.77/24"]}}),
    );
    let r2 = call(&cmd("ADD", "bbbb2222", &ns2), &c2);
    assert!(r2.ok, "{r2}\n{}", d.log());
    assert_eq!(r2.out["cniVersion"], "0.4.0");
    assert_eq!(r2.out["interfaces"][0]["name"], "lo0");
    assert_eq!(r2.out["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r2.out["ips"][1],
        json!({"version": "4", "address": "10.81.0.77/24", "gateway": "10.81.0.1", "interface": 1})
    );
    assert_eq!(r2.out["dns"]["nameservers"][0], "192.0.2.53");
    let mut chk2 = c2.clone();
    chk2["prevResult"] = r2.out.clone();
    let ok2 = call(&cmd("CHECK", "bbbb2222", &ns2), &chk2);
    assert!(ok2.ok, "{ok2}");

    // The two reach each other through the dataplane, and by name (the
    // runtime's K8S_POD_NAME is an alias).
    eventually("the second container reaching the first", || {
        let o = rt2.exec(&["ping", "-c1", "-W1", &ip1]);
        o.success().then_some(()).ok_or(o.to_string())
    });
    d.run_sleeper("probe", Some("pods"), &[]);
    d.assert_pings("probe", "web");
    d.assert_pings("probe", "10.81.0.77");
    assert_eq!(cni_attachments(&d).len(), 2);

    // The published port leads into the first container's namespace.
    let outside = Outside::new(&d);
    let server = rt1.exec(&[
        "sh",
        "-c",
        "(echo hello-from-cni | timeout 60 nc -l 80) >/dev/null 2>&1 & echo started",
    ]);
    assert!(server.success(), "{server}");
    eventually("the published port to answer", || {
        let o = outside.exec(&["nc", "-w2", HOST_IP, "8081"]);
        o.stdout
            .contains("hello-from-cni")
            .then_some(())
            .ok_or(o.to_string())
    });

    // GC without the list is refused rather than taking everything.
    let bare = call(&[("CNI_COMMAND", "GC")], &conf(&d, "1.1.0", json!({})));
    assert_eq!(bare.code(), 7, "{bare}");
    assert_eq!(cni_attachments(&d).len(), 2);
    // GC: the runtime lists only the first; the second goes.
    let gc = conf(
        &d,
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "aaaa1111", "ifname": "eth0"}]}),
    );
    let g = call(&[("CNI_COMMAND", "GC")], &gc);
    assert!(g.ok && g.raw.is_empty(), "{g}");
    let left = cni_attachments(&d);
    assert_eq!(left.len(), 1, "{left:#?}");
    assert!(!has_link(&rt2, "eth0"));
    assert!(has_link(&rt1, "eth0"));

    // STATUS: the daemon answers.
    let s = call(&[("CNI_COMMAND", "STATUS")], &conf(&d, "1.1.0", json!({})));
    assert!(s.ok, "{s}");

    // DEL twice; DEL of the one GC took; the namespaces stay, empty.
    for (id, ns) in [("aaaa1111", &ns1), ("aaaa1111", &ns1), ("bbbb2222", &ns2)] {
        let del = call(&cmd("DEL", id, ns), &c1);
        assert!(del.ok && del.raw.is_empty(), "{del}");
    }
    // DEL without a namespace (the runtime lost it) of an unknown one.
    let del = call(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "cccc"),
            ("CNI_IFNAME", "eth0"),
        ],
        &c1,
    );
    assert!(del.ok, "{del}");
    assert!(cni_attachments(&d).is_empty());
    assert_no_map_entries(&d, &[&ip1, "10.81.0.77"]);
    assert!(rt1.path().exists() && rt2.path().exists());
    assert!(!has_link(&rt1, "eth0"));
    // Its address and port are free again: another ADD takes both.
    let mut c3 = c1.clone();
    c3["runtimeConfig"]["ips"] = json!([ip1]);
    let r3 = call(&cmd("ADD", "dddd", &ns1), &c3);
    assert!(r3.ok, "{r3}");
    assert!(call(&cmd("DEL", "dddd", &ns1), &c3).ok);
}

#[test]
fn the_plugin_answers_bad_input_and_a_missing_daemon_with_the_specs_codes() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.82.0.0/24", "pods"]);
    let rt = NetNs::new();
    let ns = rt.path().display().to_string();
    let good = conf(&d, "1.0.0", json!({}));

    // Undecodable configuration: 6, in our own version.
    let a = call(&cmd("ADD", "x1", &ns), &json!("{\"cniVersion\": "));
    assert_eq!(a.code(), 6, "{a}");
    assert!(a.out["msg"].as_str().is_some() && a.out["cniVersion"] == "1.1.0");
    // An unknown version: 1.
    let a = call(&cmd("ADD", "x1", &ns), &conf(&d, "2.0.0", json!({})));
    assert_eq!(a.code(), 1, "{a}");
    // Missing variables: 4.
    let a = call(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x1"),
            ("CNI_IFNAME", "eth0"),
        ],
        &good,
    );
    assert_eq!(a.code(), 4, "{a}");
    assert_eq!(call(&[], &good).code(), 4);
    // No network of that name and no subnet to make it: 7.
    let mut nonet = good.clone();
    nonet["network"] = json!("nope");
    let a = call(&cmd("ADD", "x1", &ns), &nonet);
    assert_eq!(a.code(), 7, "{a}");
    assert!(a.out["msg"].as_str().unwrap().contains("nope"), "{a}");
    assert_eq!(
        call(&[("CNI_COMMAND", "STATUS")], &nonet).code(),
        50,
        "STATUS says ADD cannot work"
    );
    // An unsupported protocol: 2, naming it; a malformed mapping: 7; both
    // before anything is asked of the daemon.
    let mut badport = good.clone();
    badport["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]});
    let a = call(&cmd("ADD", "x1", &ns), &badport);
    assert_eq!(a.code(), 2, "{a}");
    assert!(a.out["msg"].as_str().unwrap().contains("sctp"), "{a}");
    badport["runtimeConfig"] = json!({"portMappings": [{"hostPort": "80"}]});
    assert_eq!(call(&cmd("ADD", "x1", &ns), &badport).code(), 7);

    // An ADD the daemon refuses (an address outside the subnet), then DEL
    // after it, twice: success, and nothing left.
    let mut outside = good.clone();
    outside["runtimeConfig"] = json!({"ips": ["10.99.0.5/24"]});
    let a = call(&cmd("ADD", "x2", &ns), &outside);
    assert!(!a.ok && a.code() > 100, "{a}");
    assert!(!a.out["msg"].as_str().unwrap_or_default().is_empty(), "{a}");
    for _ in 0..2 {
        let del = call(&cmd("DEL", "x2", &ns), &good);
        assert!(del.ok && del.raw.is_empty(), "{del}");
    }
    assert!(cni_attachments(&d).is_empty());
    assert!(!has_link(&rt, "eth0"));
    assert_no_map_entries(&d, &["10.99.0.5"]);
    let used = d.network_inspect("pods")["Containers"].clone();
    assert!(used.as_object().is_none_or(|m| m.is_empty()), "{used}");
    // A namespace that does not exist: the daemon refuses, nothing made.
    let a = call(&cmd("ADD", "x3", "/nonexistent/netns"), &good);
    assert!(!a.ok, "{a}");
    assert!(cni_attachments(&d).is_empty());

    // The daemon is not there: 11 for ADD and DEL (the runtime retries),
    // 50 for STATUS; VERSION needs no daemon.
    let gone = TempDir::new();
    let mut down = good.clone();
    down["socket"] = json!(gone.path().join("api.sock"));
    let a = call(&cmd("ADD", "x4", &ns), &down);
    assert_eq!(a.code(), 11, "{a}");
    assert!(
        a.out["details"].as_str().unwrap().contains("api.sock"),
        "{a}"
    );
    assert_eq!(call(&cmd("DEL", "x4", &ns), &down).code(), 11);
    assert_eq!(call(&[("CNI_COMMAND", "STATUS")], &down).code(), 50);
    assert!(call(&[("CNI_COMMAND", "VERSION")], &down).ok);
    assert!(!has_link(&rt, "eth0"));
}

/// The ENDPOINTS keys (addresses) that start with `prefix`.
fn endpoints_in(d: &Daemon, prefix: &str) -> Option<Vec<String>> {
    Some(
        map_keys(d, "ENDPOINTS")?
            .into_iter()
            .filter(|k| k.len() == 4)
            .map(|k| format!("{}.{}.{}.{}", k[0], k[1], k[2], k[3]))
            .filter(|ip| ip.starts_with(prefix))
            .collect(),
    )
}

#[test]
fn an_add_the_daemon_dies_in_is_undone_and_del_after_it_leaves_nothing() {
    let mut d = Daemon::start();
    d.network_create(&["--subnet", "10.86.0.0/24", "pods"]);
    let rt = NetNs::new();
    let ns = rt.path().display().to_string();
    let c = conf(
        &d,
        "1.0.0",
        json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8087, "containerPort": 80, "protocol": "tcp"}]}}),
    );
    // The daemon aborts after making the endpoint, before committing it.
    d.stop("TERM");
    d.restart_with_env(&[("DATAPLANE_CRASH_AT", "attach-before-commit")]);
    let a = call(&cmd("ADD", "dead1", &ns), &c);
    assert_eq!(a.code(), 11, "{a}");
    // With the daemon gone, DEL is try-again-later too (the runtime
    // retries; nothing may be forgotten).
    assert_eq!(call(&cmd("DEL", "dead1", &ns), &c).code(), 11);
    d.stop("KILL");
    d.restart();
    for _ in 0..2 {
        let del = call(&cmd("DEL", "dead1", &ns), &c);
        assert!(del.ok && del.raw.is_empty(), "{del}");
    }
    assert!(cni_attachments(&d).is_empty());
    eventually("the half-made endpoint to be gone", || {
        let left = endpoints_in(&d, "10.86.0.").unwrap_or_default();
        (left.is_empty() && !has_link(&rt, "eth0"))
            .then_some(())
            .ok_or(format!(
                "ENDPOINTS {left:?}, eth0 in the namespace: {}",
                has_link(&rt, "eth0")
            ))
    });
    assert_no_map_entries(&d, &[]);
    assert!(rt.path().exists(), "the runtime's namespace stays");
    // The same container attaches again, with its port.
    let r = call(&cmd("ADD", "dead1", &ns), &c);
    assert!(r.ok, "{r}\n{}", d.log());
    assert!(call(&cmd("DEL", "dead1", &ns), &c).ok);
}

// ----- Podman (its CNI backend) ---------------------------------------------

const PODMAN: &str = "/usr/bin/podman";

/// A Podman with private state (root, runroot, tmpdir, events, CNI config
/// and plugin directories) that runs in the daemon's network namespace, as
/// it would on a host where the daemon runs: its conmon processes hold the
/// published ports there. Dropping it removes its containers (each one's
/// DEL goes through our plugin) and then its directories.
struct Podman {
    dir: TempDir,
    netns: PathBuf,
}

impl Podman {
    /// `conflist` is written as the network configuration `pods.conflist`;
    /// the plugin and `loopback` go into the plugin directory; an image
    /// `bb` is imported from busybox-static with `/www/index.html` saying
    /// `marker`.
    fn new(d: &Daemon, conflist: &Value, marker: &str) -> Podman {
        let p = Podman {
            dir: TempDir::new(),
            netns: d.ns().path(),
        };
        let at = |s: &str| p.dir.path().join(s);
        for sub in [
            "plugins", "netconf", "root", "runroot", "tmp", "img/bin", "img/www",
        ] {
            std::fs::create_dir_all(at(sub)).unwrap();
        }
        std::fs::copy(plugin(), at("plugins/dataplane-cni")).unwrap();
        std::fs::copy("/usr/lib/cni/loopback", at("plugins/loopback")).unwrap();
        std::fs::write(at("netconf/pods.conflist"), conflist.to_string()).unwrap();
        // The limits Podman sets by default (nofile and nproc in the
        // millions) are above this machine's hard limits, which a process
        // without CAP_SYS_RESOURCE cannot raise.
        let conf = format!(
            "[containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{plugins}\"]\n\
             network_config_dir = \"{netconf}\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = \"{events}\"\n\
             tmp_dir = \"{tmp}\"\n\
             runtime = \"runc\"\n",
            plugins = at("plugins").display(),
            netconf = at("netconf").display(),
            events = at("events.log").display(),
            tmp = at("tmp").display(),
        );
        std::fs::write(at("containers.conf"), conf).unwrap();
        std::fs::copy("/bin/busybox", at("img/bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", at("img/bin/sh")).unwrap();
        std::fs::write(at("img/www/index.html"), format!("{marker}\n")).unwrap();
        let tar = dataplane_tests::sh(
            "tar",
            &[
                "-C",
                &at("img").display().to_string(),
                "-cf",
                &at("img.tar").display().to_string(),
                ".",
            ],
        );
        assert!(tar.success(), "{tar}");
        // Importing writes Podman's blob-info cache, which lives under
        // /var/lib/containers whatever --root says: import in a private
        // mount namespace with an empty /var/lib, so the host's stays as
        // it was.
        let podman = p.command(&["import", &at("img.tar").display().to_string(), "bb"]);
        let mut import = Command::new("unshare");
        import
            .args(["--mount", "--propagation", "unchanged", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /var/lib && exec \"$@\"")
            .arg("sh")
            .arg(podman.get_program())
            .args(podman.get_args())
            .envs(podman.get_envs().filter_map(|(k, v)| Some((k, v?))));
        let out = dataplane_tests::run(import);
        assert!(out.success(), "podman import: {out}");
        p
    }

    fn command(&self, args: &[&str]) -> Command {
        let at = |s: &str| self.dir.path().join(s);
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .arg(PODMAN)
            .arg("--root")
            .arg(at("root"))
            .arg("--runroot")
            .arg(at("runroot"))
            .arg("--tmpdir")
            .arg(at("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", at("containers.conf"));
        c
    }

    fn run(&self, args: &[&str]) -> dataplane_tests::Output {
        dataplane_tests::run(self.command(args))
    }

    fn ok(&self, args: &[&str]) -> dataplane_tests::Output {
        let out = self.run(args);
        assert!(out.success(), "podman {}: {out}", args.join(" "));
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let out = self.run(&["rm", "-af", "-t", "0"]);
        if !out.success() {
            eprintln!("cleanup: podman rm: {out}");
        }
        // Whatever Podman left mounted under its directories (a container's
        // shm when rm failed) must go before the directories can.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.path().display().to_string();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&prefix) {
                let _ = dataplane_tests::sh("umount", &["-l", m]);
            }
        }
    }
}

fn veths(ns: &NetNs) -> Vec<String> {
    ns.exec(&["ip", "-o", "link", "show", "type", "veth"])
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn podman_runs_containers_through_the_plugin_publishes_a_port_and_they_reach_each_other() {
    if !Path::new(PODMAN).exists() {
        eprintln!("SKIPPED: {PODMAN} is not installed");
        return;
    }
    let mut d = Daemon::start();
    let outside = Outside::new(&d);
    let before = veths(d.ns());
    // 0.4.0: the version Podman's own CNI networks were written in; our
    // results are converted down to its shape.
    let conflist = json!({
        "cniVersion": "0.4.0", "name": "pods",
        "plugins": [{"type": "dataplane-cni", "network": "pods", "subnet": "10.84.0.0/24",
                     "socket": socket(&d),
                     "capabilities": {"portMappings": true, "ips": true}}],
    });
    let marker = format!("served-through-dataplane-{}", std::process::id());
    let p = Podman::new(&d, &conflist, &marker);
    let ls = p.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(ls.stdout.contains("pods dataplane-cni"), "{ls}");

    // A container with published ports, attached through the plugin. Its
    // conmon holds them too: TCP shares our reservation, UDP is left to it.
    p.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "pods",
        "-p",
        "8086:80",
        "-p",
        "5354:53/udp",
        "bb",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    let web_ip = p
        .ok(&[
            "inspect",
            "web",
            "--format",
            "{{(index .NetworkSettings.Networks \"pods\").IPAddress}}",
        ])
        .stdout
        .trim()
        .to_string();
    assert!(in_subnet(&web_ip, "10.84.0.0/24"), "{web_ip}");
    let listed = cni_attachments(&d);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["State"], "running", "{listed:#?}");
    for want in ["8086->80/tcp", "5354->53/udp"] {
        assert!(
            listed[0]["Ports"].to_string().contains(want),
            "{want}: {listed:#?}"
        );
    }
    if let Some(keys) = map_keys(&d, "PORTS") {
        assert_eq!(keys.len(), 2, "PORTS holds both");
    }
    let full_id = p.ok(&["inspect", "web", "--format", "{{.Id}}"]).stdout;
    assert_eq!(
        listed[0]["Names"].as_str().or(listed[0]["Name"].as_str()),
        Some(format!("cni-{}", &full_id.trim()[..12]).as_str()),
        "{listed:#?}"
    );

    // Reached from outside through the published port (our eBPF NAT; the
    // port Podman's conmon holds never sees the traffic).
    let url = format!("http://{HOST_IP}:8086/index.html");
    eventually("the published port to serve from outside", || {
        let o = outside.exec(&["curl", "-s", "--max-time", "2", &url]);
        o.stdout
            .contains(&marker)
            .then_some(())
            .ok_or(o.to_string())
    });

    // A second container reaches the first by address and by name (our
    // DNS at 127.0.0.11, which the result gave Podman).
    let fetch = format!(
        "/bin/busybox wget -q -O - http://{web_ip}/index.html && \
         /bin/busybox wget -q -O - http://web/index.html && \
         /bin/busybox cat /etc/resolv.conf"
    );
    let out = p.ok(&[
        "run",
        "--rm",
        "--name",
        "client",
        "--network",
        "pods",
        "bb",
        "/bin/sh",
        "-c",
        &fetch,
    ]);
    assert_eq!(out.stdout.matches(&marker).count(), 2, "{out}");
    assert!(out.stdout.contains("nameserver 127.0.0.11"), "{out}");
    // `--rm`'s DEL detached the client.
    assert_eq!(cni_attachments(&d).len(), 1);

    // Our daemon restarts under the running container: still published,
    // still attached, and its DEL still works afterwards.
    d.stop("TERM");
    d.restart();
    eventually("the published port to serve after a daemon restart", || {
        let o = outside.exec(&["curl", "-s", "--max-time", "2", &url]);
        o.stdout
            .contains(&marker)
            .then_some(())
            .ok_or(o.to_string())
    });
    assert_eq!(cni_attachments(&d).len(), 1);

    // Removed by Podman: detached, its veth gone, its port and address free.
    p.ok(&["rm", "-f", "-t", "0", "web"]);
    assert!(cni_attachments(&d).is_empty(), "{:#?}", cni_attachments(&d));
    assert_eq!(veths(d.ns()), before);
    assert_no_map_entries(&d, &[&web_ip]);
    d.run_sleeper("again", Some("pods"), &["-p", "8086:80", "--ip", &web_ip]);
}

// ----- containerd (`ctr run --cni`) -----------------------------------------

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";

/// A containerd of its own (root, state, sockets; the CRI plugin off) in
/// the daemon's namespace, and `ctr` to drive it. `ctr run --cni` reads
/// fixed paths (/etc/cni/net.d, /opt/cni/bin), so each `ctr` runs in a
/// private mount namespace with this test's directories bound over them;
/// `/run/netns` stays shared, so the daemon sees the namespaces ctr makes.
/// Dropping it removes its tasks and containers, then stops containerd.
struct Containerd {
    dir: TempDir,
    netns: PathBuf,
    _daemon: dataplane_tests::Proc,
}

impl Containerd {
    /// `None` (with the reason) when containerd does not start here.
    fn start(d: &Daemon, conflist: &Value, marker: &str) -> Result<Containerd, String> {
        let dir = TempDir::new();
        let at = |s: &str| dir.path().join(s);
        for sub in [
            "root",
            "state",
            "conf",
            "cni-cache",
            "opt/cni/bin",
            "rootfs/bin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(at(sub)).unwrap();
        }
        std::fs::copy(plugin(), at("opt/cni/bin/dataplane-cni")).unwrap();
        std::fs::copy("/usr/lib/cni/loopback", at("opt/cni/bin/loopback")).unwrap();
        std::fs::write(at("conf/10-pods.conflist"), conflist.to_string()).unwrap();
        std::fs::copy("/bin/busybox", at("rootfs/bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", at("rootfs/bin/sh")).unwrap();
        std::fs::write(at("rootfs/www/index.html"), format!("{marker}\n")).unwrap();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = at("root").display(),
            state = at("state").display(),
            sock = at("containerd.sock").display(),
        );
        std::fs::write(at("config.toml"), config).unwrap();
        // libcni's result cache (/var/lib/cni) is private too: ctr never
        // DELs a detached container, so its cached result would outlive
        // the test.
        let script = format!(
            "#!/bin/sh\nset -e\nmount --bind {conf} /etc/cni/net.d\nmount --bind {opt} /opt\n\
             mkdir -p /var/lib/cni\nmount --bind {cache} /var/lib/cni\n\
             exec {CTR} -a {sock} \"$@\"\n",
            conf = at("conf").display(),
            opt = at("opt").display(),
            cache = at("cni-cache").display(),
            sock = at("containerd.sock").display(),
        );
        std::fs::write(at("ctr.sh"), script).unwrap();
        dataplane_tests::sh("chmod", &["+x", &at("ctr.sh").display().to_string()]).ok();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", d.ns().path().display()))
            .arg(CONTAINERD)
            .arg("--config")
            .arg(at("config.toml"));
        let daemon = dataplane_tests::Proc::spawn(c);
        let ctrd = Containerd {
            dir,
            netns: d.ns().path(),
            _daemon: daemon,
        };
        dataplane_tests::retry(
            "containerd to answer",
            100,
            std::time::Duration::from_millis(100),
            || {
                let o = ctrd.run(&["version"]);
                o.success().then_some(()).ok_or(o.to_string())
            },
        );
        if !Path::new("/etc/cni/net.d").is_dir() {
            return Err(
                "/etc/cni/net.d is missing (ctr's fixed CNI configuration directory)".into(),
            );
        }
        Ok(ctrd)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.netns.display()))
            .args(["unshare", "--mount", "--propagation", "unchanged"])
            .arg(self.dir.path().join("ctr.sh"))
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> dataplane_tests::Output {
        dataplane_tests::run(self.command(args))
    }

    fn ok(&self, args: &[&str]) -> dataplane_tests::Output {
        let out = self.run(args);
        assert!(out.success(), "ctr {}: {out}", args.join(" "));
        out
    }

    fn rootfs(&self) -> String {
        self.dir.path().join("rootfs").display().to_string()
    }

    /// Kills and deletes task and container `id` (waiting for the task to
    /// stop).
    fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "-s", "KILL", id]);
        // Bounded, and never a panic: this also runs from Drop. `task rm
        // -f` below kills what is still running.
        for _ in 0..50 {
            let ls = self.run(&["task", "ls"]);
            let running = ls
                .stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"));
            if !running {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.run(&["task", "rm", "-f", id]);
        let _ = self.run(&["container", "rm", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ls = self.run(&["container", "ls", "-q"]);
        for id in ls.stdout.split_whitespace() {
            self.remove(id);
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.path().display().to_string();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&prefix) {
                let _ = dataplane_tests::sh("umount", &["-l", m]);
            }
        }
    }
}

#[test]
fn containerd_ctr_runs_containers_through_the_plugin_and_gc_takes_what_ctr_leaves() {
    for b in [CONTAINERD, CTR] {
        if !Path::new(b).exists() {
            eprintln!("SKIPPED: {b} is not installed");
            return;
        }
    }
    let d = Daemon::start();
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "pods",
        "plugins": [{"type": "dataplane-cni", "network": "pods", "subnet": "10.85.0.0/24",
                     "socket": socket(&d)}],
    });
    let marker = format!("served-by-ctr-{}", std::process::id());
    let c = match Containerd::start(&d, &conflist, &marker) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
    let rootfs = c.rootfs();
    c.ok(&[
        "run",
        "-d",
        "--cni",
        "--rootfs",
        &rootfs,
        "web",
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    // ctr's CNI_CONTAINERID is NAMESPACE-ID.
    let web_ip = d.ip("cni-defaultweb", "pods");
    assert!(in_subnet(&web_ip, "10.85.0.0/24"), "{web_ip}");

    // A container of ours reaches it, and so does a second ctr container.
    d.run_sleeper("probe", Some("pods"), &[]);
    let url = format!("http://{web_ip}/index.html");
    eventually("our container fetching from ctr's", || {
        let o = d.exec_in("probe", &["curl", "-s", "--max-time", "2", &url]);
        o.stdout
            .contains(&marker)
            .then_some(())
            .ok_or(o.to_string())
    });
    let out = c.ok(&[
        "run",
        "--rm",
        "--cni",
        "--rootfs",
        &rootfs,
        "client",
        "/bin/busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &url,
    ]);
    assert!(out.stdout.contains(&marker), "{out}");
    // `run --rm` ran DEL for the client.
    let left = cni_attachments(&d);
    assert_eq!(left.len(), 1, "{left:#?}");

    // ctr never runs DEL for a container it ran detached: once its task
    // (whose namespace it was) is gone, the attachment is listed as exited
    // and GC, with no attachment valid any more, takes it.
    c.remove("web");
    eventually("the attachment to show exited", || {
        let l = cni_attachments(&d);
        (l.len() == 1 && l[0]["State"] == "exited")
            .then_some(())
            .ok_or(format!("{l:#?}"))
    });
    let gc = conf(&d, "1.1.0", json!({"cni.dev/valid-attachments": []}));
    let g = call(&[("CNI_COMMAND", "GC")], &gc);
    assert!(g.ok, "{g}");
    assert!(cni_attachments(&d).is_empty());
    // probe (no ports) stays; web's entry went with its namespace.
    assert_no_map_entries(&d, &[&web_ip]);
    // Its address is free again.
    d.run_sleeper("again", Some("pods"), &["--ip", &web_ip]);
}

#[test]
fn an_add_on_a_dhcp_macvlan_network_gets_a_lease_and_del_releases_it() {
    let d = Daemon::start();
    let mut lan = dataplane_tests::lan::Lan::new(&d);
    let srv = lan.peer("10.80.0.1/24", None);
    let dir = dataplane_tests::TempDir::new();
    let _server = dataplane_tests::lan::dnsmasq(&srv, dir.path(), "10.80.0.50,10.80.0.60");
    d.network_create(&[
        "-d",
        "macvlan",
        "--ipam-driver",
        "dhcp",
        "--subnet",
        "10.80.0.0/24",
        "-o",
        "parent=lan0",
        "pods",
    ]);
    let rt = NetNs::new();
    let ns = rt.path().display().to_string();
    let c = conf(&d, "1.0.0", json!({}));
    let r = call(&cmd("ADD", "dhcp0001", &ns), &c);
    assert!(r.ok, "{r}\n{}", d.log());
    let addr = r.out["ips"][0]["address"].as_str().unwrap().to_string();
    let ip = addr.split('/').next().unwrap().to_string();
    assert!(in_subnet(&ip, "10.80.0.48/28"), "{r}");
    assert_eq!(r.out["ips"][0]["gateway"], "10.80.0.1", "{r}");
    // The runtime's namespace has the macvlan with the leased address.
    let shown = rt.exec(&["ip", "-d", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(shown.stdout.contains(&addr), "{shown}");
    let link = rt.exec(&["ip", "-d", "link", "show", "eth0"]).ok();
    assert!(link.stdout.contains("macvlan"), "{link}");
    assert!(
        (0..5).any(|_| rt.exec(&["ping", "-c1", "-W1", "10.80.0.1"]).success()),
        "the runtime's namespace does not reach the DHCP server"
    );
    let mac = r.out["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert!(dataplane_tests::lan::leases(dir.path()).contains(&mac));
    // DEL releases the lease and takes the link away.
    let del = call(&cmd("DEL", "dhcp0001", &ns), &c);
    assert!(del.ok, "{del}");
    eventually("dnsmasq to drop the released lease", || {
        let l = dataplane_tests::lan::leases(dir.path());
        (!l.contains(&mac)).then_some(()).ok_or(l)
    });
    assert!(!has_link(&rt, "eth0"));
    assert!(cni_attachments(&d).is_empty());
}

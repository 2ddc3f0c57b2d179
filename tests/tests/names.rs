//! Service discovery: the embedded resolver at 127.0.0.11 in every sandbox,
//! forwarding to upstream servers, `--link` and `icc=false`.
//!
//! The upstream is a fake DNS server of the test's own ([`Upstream`]), in a
//! namespace joined to the daemon's by a veth: the daemon forwards from its
//! own netns, which has no other way out. Every container that may forward
//! a query is given `--dns` pointing at it, so that no query can ever go to
//! the resolvers of the host's resolv.conf (in a test without [`Upstream`]
//! that address has no route from the daemon's netns, so a stray forward
//! fails there).

use std::process::Command;

use dataplane_tests::{eventually, Daemon, NetNs, Proc, DNS_QUERY_PY as QUERY_PY};
use serde_json::Value;

/// The daemon's end of the veth to the upstream namespace.
const DAEMON_SIDE: &str = "10.253.0.1/29";
/// The fake upstream: A for `ext.test`, a truncated UDP answer for
/// `big.test` (complete over TCP), NXDOMAIN for everything else.
const UPSTREAM: &str = "10.253.0.2";
/// An upstream that reads the queries and never answers.
const SILENT: &str = "10.253.0.3";

const NOERROR: u64 = 0;
const FORMERR: u64 = 1;
const SERVFAIL: u64 = 2;
const NXDOMAIN: u64 = 3;

/// The fake upstream server: `python3 - ANSWERING_IP SILENT_IP`. Logs one
/// line per query: `udp|tcp NAME QTYPE` or `silent NAME`.
const UPSTREAM_PY: &str = r#"
import socket, struct, sys, threading

def parse(q):
    off, labels = 12, []
    while q[off]:
        labels.append(q[off + 1:off + 1 + q[off]].decode())
        off += q[off] + 1
    qtype = struct.unpack('>H', q[off + 1:off + 3])[0]
    return '.'.join(labels).lower(), qtype, off + 5

def answer(q, proto):
    name, qtype, end = parse(q)
    print(proto, name, qtype, flush=True)
    flags, ips = 0x8180, []
    if name == 'ext.test':
        ips = ['192.0.2.10'] if qtype == 1 else []
    elif name == 'big.test':
        if proto == 'udp':
            flags |= 0x200
        elif qtype == 1:
            ips = ['192.0.2.101', '192.0.2.102', '192.0.2.103']
    else:
        flags |= 3
    head = q[:2] + struct.pack('>HHHHH', flags, 1, len(ips), 0, 0)
    rrs = b''.join(struct.pack('>HHHIH', 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ip) for ip in ips)
    return head + q[12:end] + rrs

def udp(addr, reply):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    def loop():
        while True:
            q, peer = s.recvfrom(65535)
            if reply:
                s.sendto(answer(q, 'udp'), peer)
            else:
                print('silent', parse(q)[0], flush=True)
    threading.Thread(target=loop, daemon=True).start()

def tcp(addr):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, 53))
    l.listen()
    def serve(c):
        with c:
            f = c.makefile('rb')
            while True:
                n = f.read(2)
                if len(n) < 2:
                    return
                a = answer(f.read(struct.unpack('>H', n)[0]), 'tcp')
                c.sendall(struct.pack('>H', len(a)) + a)
    def loop():
        while True:
            c, _ = l.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

udp(sys.argv[1], True)
tcp(sys.argv[1])
udp(sys.argv[2], False)
print('ready', flush=True)
threading.Event().wait()
"#;

/// Sends malformed messages to 127.0.0.11 (UDP, then TCP) and prints one
/// line per case: `CASE none` (no answer within 1 s, or the connection
/// closed) or `CASE rcode N`.
const MALFORMED_PY: &str = r#"
import socket, struct

def hdr(qd, flags=0x0100):
    return struct.pack('>HHHHHH', 0x1234, flags, qd, 0, 0, 0)

q = b'\x03srv\x00\x00\x01\x00\x01'
udp_cases = [
    ('empty', b''),
    ('short', b'\x12\x34\x01'),
    ('no-question', hdr(0)),
    ('header-only', hdr(1)),
    ('cut-question', hdr(1) + b'\x03sr'),
    ('two-questions', hdr(2) + q + q),
    ('pointer-loop', hdr(1) + b'\xc0\x0c\x00\x01\x00\x01'),
    ('label-too-long', hdr(1) + b'\x40' + b'a' * 64 + b'\x00\x00\x01\x00\x01'),
    ('garbage', bytes(range(256)) * 2),
]
tcp_cases = [
    ('tcp-zero-length', b'\x00\x00'),
    ('tcp-garbage', b'\x00\x05' + b'\xff' * 5),
    ('tcp-pointer-loop', struct.pack('>H', 18) + hdr(1) + b'\xc0\x0c\x00\x01\x00\x01'),
    ('tcp-cut-frame', b'\x00\xff' + hdr(1)),
]

def verdict(msg):
    if len(msg) < 4:
        return 'none'
    return 'rcode %d' % (msg[3] & 15)

for case, payload in udp_cases:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect(('127.0.0.11', 53))
    s.send(payload)
    try:
        print(case, verdict(s.recv(65535)), flush=True)
    except socket.timeout:
        print(case, 'none', flush=True)

for case, payload in tcp_cases:
    s = socket.create_connection(('127.0.0.11', 53), timeout=2)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    try:
        buf = s.recv(65535)
        print(case, verdict(buf[2:]) if len(buf) > 2 else 'none', flush=True)
    except (socket.timeout, ConnectionResetError):
        print(case, 'none', flush=True)
"#;

// ----- the fake upstream ----------------------------------------------------

/// The fake upstream DNS server in a namespace of its own, reachable from
/// the daemon's netns at [`UPSTREAM`] and [`SILENT`]. Dropping it kills the
/// server, then deletes the namespace (and with it the veth).
struct Upstream {
    server: Proc,
    _ns: NetNs,
}

impl Upstream {
    fn start(d: &Daemon) -> Upstream {
        let ns = NetNs::new();
        let host = d.ns();
        host.exec(&[
            "ip",
            "link",
            "add",
            "dnsup0",
            "type",
            "veth",
            "peer",
            "name",
            "dnsup1",
            "netns",
            ns.name(),
        ])
        .ok();
        host.exec(&["ip", "addr", "add", DAEMON_SIDE, "dev", "dnsup0"])
            .ok();
        host.exec(&["ip", "link", "set", "dnsup0", "up"]).ok();
        for ip in [UPSTREAM, SILENT] {
            ns.exec(&["ip", "addr", "add", &format!("{ip}/29"), "dev", "dnsup1"])
                .ok();
        }
        ns.exec(&["ip", "link", "set", "dnsup1", "up"]).ok();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "python3", "-u", "-c"])
            .args([UPSTREAM_PY, UPSTREAM, SILENT]);
        let server = Proc::spawn(cmd);
        eventually("the fake upstream to listen", || {
            let out = server.output_so_far();
            out.contains("ready").then_some(()).ok_or(out)
        });
        Upstream { server, _ns: ns }
    }

    /// The queries it received so far, one per line.
    fn log(&self) -> String {
        self.server.output_so_far()
    }

    #[track_caller]
    fn assert_asked(&self, line: &str) {
        let log = self.log();
        assert!(
            log.lines().any(|l| l == line),
            "the upstream was not asked `{line}`; it got:\n{log}"
        );
    }
}

// ----- queries --------------------------------------------------------------

/// One reply as the query tool reports it.
#[derive(Debug)]
struct Reply {
    rcode: u64,
    tc: bool,
    answers: Vec<String>,
    ms: u64,
}

impl Reply {
    fn parse(v: &Value) -> Reply {
        Reply {
            rcode: v["rcode"].as_u64().expect("rcode"),
            tc: v["tc"].as_bool().expect("tc"),
            answers: v["answers"]
                .as_array()
                .expect("answers")
                .iter()
                .map(|a| a.as_str().expect("answer").to_string())
                .collect(),
            ms: v["ms"].as_u64().expect("ms"),
        }
    }

    /// The answers, sorted.
    fn sorted(&self) -> Vec<String> {
        let mut a = self.answers.clone();
        a.sort();
        a
    }
}

/// `count` queries of `name`/`qtype` from `ctr` to 127.0.0.11 over `proto`.
#[track_caller]
fn query_n(d: &Daemon, ctr: &str, name: &str, qtype: &str, proto: &str, count: u32) -> Vec<Reply> {
    let count = count.to_string();
    let out = d.exec_in(
        ctr,
        &[
            "python3",
            "-c",
            QUERY_PY,
            name,
            qtype,
            proto,
            "127.0.0.11",
            &count,
        ],
    );
    assert!(out.success(), "querying {name} {qtype} from {ctr}: {out}");
    out.stdout
        .lines()
        .map(|l| Reply::parse(&serde_json::from_str(l).expect("a JSON line")))
        .collect()
}

/// One UDP query of `name`/`qtype` from `ctr` to 127.0.0.11.
#[track_caller]
fn query(d: &Daemon, ctr: &str, name: &str, qtype: &str) -> Reply {
    query_n(d, ctr, name, qtype, "udp", 1).remove(0)
}

/// The addresses `name` resolves to from `ctr`, asserting NOERROR.
#[track_caller]
fn resolve(d: &Daemon, ctr: &str, name: &str) -> Vec<String> {
    let r = query(d, ctr, name, "A");
    assert_eq!(r.rcode, NOERROR, "{name} from {ctr}: {r:?}");
    r.sorted()
}

/// Asserts that `name` is unknown to `ctr`: NXDOMAIN, which only the
/// upstream gives, so the query was forwarded.
#[track_caller]
fn assert_unknown(d: &Daemon, up: &Upstream, ctr: &str, name: &str) {
    let r = query(d, ctr, name, "A");
    assert_eq!(r.rcode, NXDOMAIN, "{name} from {ctr}: {r:?}");
    up.assert_asked(&format!("udp {name} 1"));
}

/// What glibc (`getent ahostsv4`: /etc/hosts, then DNS) makes of `name`.
fn getent(d: &Daemon, ctr: &str, name: &str) -> Option<String> {
    let out = d.exec_in(ctr, &["getent", "ahostsv4", name]);
    out.success()
        .then(|| out.stdout.split_whitespace().next().map(str::to_string))
        .flatten()
}

/// `d.c.b.a.in-addr.arpa` for `a.b.c.d`.
fn reverse(ip: &str) -> String {
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets.reverse();
    format!("{}.in-addr.arpa", octets.join("."))
}

/// The `nameserver` addresses of a resolv.conf text.
fn nameservers(conf: &str) -> Vec<String> {
    conf.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|ip| ip.trim().to_string())
        .collect()
}

// ----- tests ----------------------------------------------------------------

#[test]
fn names_aliases_hostnames_and_name_dot_network_resolve() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.40.0.0/24", "n"]);
    d.run_sleeper(
        "srv",
        Some("n"),
        &["--hostname", "srvhost", "--network-alias", "api"],
    );
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);
    let srv = d.ip("srv", "n");

    for name in ["srv", "srvhost", "api", "srv.n", "api.n", "SRV"] {
        assert_eq!(resolve(&d, "client", name), [srv.as_str()], "{name}");
    }
    // The same over TCP, and through glibc as programs ask.
    let tcp = query_n(&d, "client", "api", "A", "tcp", 1).remove(0);
    assert_eq!((tcp.rcode, tcp.answers), (NOERROR, vec![srv.clone()]));
    for name in ["srv", "srvhost", "api", "srv.n"] {
        assert_eq!(getent(&d, "client", name), Some(srv.clone()), "{name}");
    }
    // And the other way round.
    assert_eq!(resolve(&d, "srv", "client"), [d.ip("client", "n")]);
    // Local answers never reach the upstream.
    assert!(!up.log().contains("srv"), "{}", up.log());
}

#[test]
fn a_shared_alias_returns_every_address_shuffled() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.41.0.0/24", "n"]);
    d.run_sleeper("p1", Some("n"), &["--network-alias", "pool"]);
    d.run_sleeper("p2", Some("n"), &["--network-alias", "pool"]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);
    let mut both = vec![d.ip("p1", "n"), d.ip("p2", "n")];
    both.sort();

    let replies = query_n(&d, "client", "pool", "A", "udp", 20);
    assert_eq!(replies.len(), 20);
    for r in &replies {
        assert_eq!((r.rcode, r.sorted()), (NOERROR, both.clone()), "{r:?}");
    }
    let firsts: Vec<&str> = replies.iter().map(|r| r.answers[0].as_str()).collect();
    for ip in &both {
        assert!(
            firsts.contains(&ip.as_str()),
            "{ip} never came first in 20 replies: {replies:?}"
        );
    }
}

#[test]
fn names_of_other_networks_are_not_visible() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.42.0.0/24", "front"]);
    d.network_create(&["--subnet", "10.43.0.0/24", "back"]);
    d.run_sleeper("web", Some("front"), &["--dns", UPSTREAM]);
    d.run_sleeper(
        "db",
        Some("back"),
        &["--dns", UPSTREAM, "--network-alias", "store"],
    );
    for name in ["db", "db.back", "store"] {
        assert_unknown(&d, &up, "web", name);
    }
    assert_unknown(&d, &up, "db", "web");
    assert_eq!(getent(&d, "web", "db"), None);
    // Nor are their addresses: the reverse lookup is forwarded.
    let db_ptr = reverse(&d.ip("db", "back"));
    assert_eq!(query(&d, "web", &db_ptr, "PTR").rcode, NXDOMAIN);
    up.assert_asked(&format!("udp {db_ptr} 12"));

    // A container on both networks sees both.
    d.run_sleeper("both", Some("front"), &["--dns", UPSTREAM]);
    d.ok(&["network", "connect", "back", "both"]);
    assert_eq!(resolve(&d, "both", "web"), [d.ip("web", "front")]);
    assert_eq!(resolve(&d, "both", "store"), [d.ip("db", "back")]);
    assert_eq!(resolve(&d, "both", "db.back"), [d.ip("db", "back")]);
    // A name of a network it is not on stays unknown even then.
    assert_unknown(&d, &up, "both", "db.front");
    // web still sees nothing of back, but sees `both` by its front address.
    assert_unknown(&d, &up, "web", "store");
    assert_eq!(resolve(&d, "web", "both"), [d.ip("both", "front")]);
}

#[test]
fn reverse_lookups_and_other_types_of_known_names() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.44.0.0/24", "n"]);
    d.run_sleeper("srv", Some("n"), &["--hostname", "srvhost"]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);
    let srv = d.ip("srv", "n");

    let ptr = query(&d, "client", &reverse(&srv), "PTR");
    assert_eq!(
        (ptr.rcode, ptr.answers),
        (NOERROR, vec!["srv.".to_string()])
    );
    // An address nobody has is the upstream's business.
    let nobody = reverse("10.44.0.200");
    let r = query(&d, "client", &nobody, "PTR");
    assert_eq!(r.rcode, NXDOMAIN, "{r:?}");
    up.assert_asked(&format!("udp {nobody} 12"));

    // AAAA of a known name: no records, no error (IPv4-only networks).
    for name in ["srv", "srvhost", "srv.n"] {
        let r = query(&d, "client", name, "AAAA");
        assert_eq!((r.rcode, r.answers.len()), (NOERROR, 0), "{name}: {r:?}");
    }
    assert!(!up.log().contains("srv"), "{}", up.log());
}

#[test]
fn other_names_are_forwarded_to_the_upstream() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.45.0.0/24", "n"]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);

    assert_eq!(resolve(&d, "client", "ext.test"), ["192.0.2.10"]);
    up.assert_asked("udp ext.test 1");
    let tcp = query_n(&d, "client", "ext.test", "A", "tcp", 1).remove(0);
    assert_eq!(
        (tcp.rcode, tcp.answers),
        (NOERROR, vec!["192.0.2.10".into()])
    );
    assert_eq!(
        getent(&d, "client", "ext.test").as_deref(),
        Some("192.0.2.10")
    );

    // NXDOMAIN comes from the upstream, and glibc gives up on it.
    assert_unknown(&d, &up, "client", "nosuch.test");
    assert_eq!(getent(&d, "client", "nosuch.test"), None);

    // A truncated UDP answer is fetched again over TCP.
    let big = query(&d, "client", "big.test", "A");
    assert_eq!(big.rcode, NOERROR, "{big:?}");
    assert!(!big.tc, "{big:?}");
    assert_eq!(
        big.sorted(),
        ["192.0.2.101", "192.0.2.102", "192.0.2.103"],
        "{big:?}"
    );
    up.assert_asked("udp big.test 1");
    up.assert_asked("tcp big.test 1");
}

#[test]
fn a_silent_upstream_gives_servfail_and_the_next_one_is_tried() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.46.0.0/24", "n"]);
    d.run_sleeper("mute", Some("n"), &["--dns", SILENT]);
    d.run_sleeper("second", Some("n"), &["--dns", SILENT, "--dns", UPSTREAM]);

    let r = query(&d, "mute", "ext.test", "A");
    println!("silent upstream: {r:?}");
    assert_eq!(r.rcode, SERVFAIL, "{r:?}");
    assert!(r.ms < 3000, "SERVFAIL took {} ms", r.ms);
    up.assert_asked("silent ext.test");

    let r = query(&d, "second", "ext.test", "A");
    println!("silent, then answering upstream: {r:?}");
    assert_eq!((r.rcode, r.sorted()), (NOERROR, vec!["192.0.2.10".into()]));
    assert!(r.ms < 3000, "the answer took {} ms", r.ms);
    up.assert_asked("udp ext.test 1");
}

#[test]
fn the_next_query_sees_runs_removals_and_disconnects() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.47.0.0/24", "n"]);
    d.network_create(&["--subnet", "10.48.0.0/24", "m"]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);

    // run, then rm.
    d.run_sleeper("a", Some("n"), &[]);
    assert_eq!(resolve(&d, "client", "a"), [d.ip("a", "n")]);
    d.ok(&["rm", "-f", "a"]);
    assert_unknown(&d, &up, "client", "a");

    // connect with an alias, then disconnect.
    d.run_sleeper("b", Some("m"), &["--dns", UPSTREAM]);
    assert_unknown(&d, &up, "client", "b");
    d.ok(&["network", "connect", "--alias", "bee", "n", "b"]);
    let b = d.ip("b", "n");
    assert_eq!(resolve(&d, "client", "b"), [b.as_str()]);
    assert_eq!(resolve(&d, "client", "bee"), [b.as_str()]);
    assert_eq!(resolve(&d, "client", "bee.n"), [b]);
    assert_eq!(resolve(&d, "b", "client"), [d.ip("client", "n")]);
    d.ok(&["network", "disconnect", "n", "b"]);
    for name in ["b", "bee"] {
        let r = query(&d, "client", name, "A");
        assert_eq!(r.rcode, NXDOMAIN, "{name} after disconnect: {r:?}");
    }
    // Nor does b see n's names any more.
    let r = query(&d, "b", "client", "A");
    assert_eq!(r.rcode, NXDOMAIN, "client from b after disconnect: {r:?}");
    // The name comes back with a new container.
    d.run_sleeper("a", Some("n"), &[]);
    assert_eq!(resolve(&d, "client", "a"), [d.ip("a", "n")]);
}

#[test]
fn resolv_conf_names_the_embedded_resolver_on_user_networks_only() {
    let d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.49.0.0/24", "n"]);
    d.run_sleeper("user", Some("n"), &["--dns", UPSTREAM]);
    d.run_sleeper("plain", None, &[]);
    d.run_sleeper("b1", None, &["--dns", UPSTREAM, "--dns", SILENT]);
    d.run_sleeper("b2", None, &["--dns", UPSTREAM]);

    let conf = |ctr: &str| -> String {
        let seen = d.exec_in(ctr, &["cat", "/etc/resolv.conf"]).ok().stdout;
        let sandbox = d.inspect(ctr)["NetworkSettings"]["SandboxID"]
            .as_str()
            .expect("SandboxID")
            .to_string();
        let by_ip = dataplane_tests::sh(
            "ip",
            &["netns", "exec", &sandbox, "cat", "/etc/resolv.conf"],
        )
        .ok();
        assert_eq!(
            seen, by_ip.stdout,
            "exec and `ip netns exec` differ for {ctr}"
        );
        seen
    };
    let user = conf("user");
    assert_eq!(nameservers(&user), ["127.0.0.11"], "{user}");
    let b1 = conf("b1");
    assert_eq!(nameservers(&b1), [UPSTREAM, SILENT], "{b1}");
    // Without --dns, the host's nameservers but its loopback ones.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let expected: Vec<String> = nameservers(&host)
        .into_iter()
        .filter(|ip| !ip.starts_with("127.") && ip != "::1")
        .collect();
    let plain = conf("plain");
    assert_eq!(nameservers(&plain), expected, "{plain}");

    // The default bridge has no names: b1 asking for b2 is forwarded.
    assert_unknown(&d, &up, "b1", "b2");
    // Its embedded resolver still forwards to its --dns servers.
    assert_eq!(resolve(&d, "b1", "ext.test"), ["192.0.2.10"]);
}

#[test]
fn links_write_hosts_entries_and_environment() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.50.0.0/24", "n"]);
    d.run_sleeper(
        "db",
        Some("n"),
        &[
            "--expose",
            "5432",
            "--expose",
            "9000/udp",
            "-e",
            "PGUSER=alice",
        ],
    );
    d.run_sleeper("cache", Some("n"), &["--hostname", "cachehost"]);
    d.run_cmd(
        "web",
        Some("n"),
        &[
            "--link",
            "db:database",
            "--link",
            "cache:kv-store.local",
            "--dns",
            UPSTREAM,
        ],
        &["sh", "-c", "env; echo env-done; sleep infinity"],
    );
    let (db, cache) = (d.ip("db", "n"), d.ip("cache", "n"));

    let hosts = d.exec_in("web", &["cat", "/etc/hosts"]).ok().stdout;
    let line_of = |ip: &str| -> Vec<String> {
        hosts
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            .find(|w| w.first().map(String::as_str) == Some(ip))
            .unwrap_or_else(|| panic!("no line for {ip} in /etc/hosts:\n{hosts}"))
    };
    let db_line = line_of(&db);
    assert!(db_line.iter().any(|w| w == "database"), "{db_line:?}");
    assert!(db_line.iter().any(|w| w == "db"), "{db_line:?}");
    let cache_line = line_of(&cache);
    for w in ["kv-store.local", "cache", "cachehost"] {
        assert!(cache_line.iter().any(|x| x == w), "{w}: {cache_line:?}");
    }
    assert_eq!(getent(&d, "web", "database"), Some(db.clone()));
    // On a user-defined network the embedded resolver answers link aliases
    // too, for the linking container only (as Docker does).
    assert_eq!(resolve(&d, "web", "database"), std::slice::from_ref(&db));
    assert!(
        query(&d, "cache", "database", "A").answers.is_empty(),
        "only web linked db as database"
    );

    let logs = d.wait_logs("web", "env-done");
    let env: Vec<&str> = logs.lines().collect();
    let expected = [
        "DATABASE_NAME=/web/database".to_string(),
        format!("DATABASE_PORT=tcp://{db}:5432"),
        format!("DATABASE_PORT_5432_TCP=tcp://{db}:5432"),
        format!("DATABASE_PORT_5432_TCP_ADDR={db}"),
        "DATABASE_PORT_5432_TCP_PORT=5432".to_string(),
        "DATABASE_PORT_5432_TCP_PROTO=tcp".to_string(),
        format!("DATABASE_PORT_9000_UDP=udp://{db}:9000"),
        format!("DATABASE_PORT_9000_UDP_ADDR={db}"),
        "DATABASE_PORT_9000_UDP_PORT=9000".to_string(),
        "DATABASE_PORT_9000_UDP_PROTO=udp".to_string(),
        "DATABASE_ENV_PGUSER=alice".to_string(),
        "KV_STORE_LOCAL_NAME=/web/kv-store.local".to_string(),
    ];
    for e in &expected {
        assert!(
            env.contains(&e.as_str()),
            "missing {e} in the environment:\n{logs}"
        );
    }
    // cache exposes nothing: no port variables for it.
    assert!(
        !env.iter().any(|l| l.starts_with("KV_STORE_LOCAL_PORT")),
        "{logs}"
    );
}

#[test]
fn links_work_on_the_default_bridge() {
    let d = Daemon::start();
    d.run_sleeper("db", None, &["--expose", "5432/tcp"]);
    d.run_cmd(
        "web",
        None,
        &["--link", "db", "--dns", UPSTREAM],
        &["sh", "-c", "env; echo env-done; sleep infinity"],
    );
    let db = d.ip("db", "bridge");
    assert_eq!(getent(&d, "web", "db"), Some(db.clone()));
    let logs = d.wait_logs("web", "env-done");
    for e in [
        "DB_NAME=/web/db".to_string(),
        format!("DB_PORT=tcp://{db}:5432"),
    ] {
        assert!(logs.lines().any(|l| l == e), "missing {e}:\n{logs}");
    }
}

#[test]
fn a_link_to_a_container_of_another_network_is_refused() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.51.0.0/24", "a"]);
    d.network_create(&["--subnet", "10.52.0.0/24", "b"]);
    d.run_sleeper("db", Some("a"), &[]);
    let line = d.assert_refused(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "b",
        "--link",
        "db:database",
        "--",
        "sleep",
        "infinity",
    ]);
    assert!(line.contains("db"), "{line}");
    // Nor to a container that does not exist.
    d.assert_refused(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "a",
        "--link",
        "nosuch:x",
        "--",
        "sleep",
        "infinity",
    ]);
}

#[test]
fn icc_false_blocks_all_but_linked_pairs_and_the_gateway() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.53.0.0/24", "--opt", "icc=false", "iso"]);
    d.run_sleeper("a", Some("iso"), &[]);
    d.run_sleeper("b", Some("iso"), &["--dns", UPSTREAM]);
    d.run_sleeper("c", Some("iso"), &["--link", "a:peer", "--dns", UPSTREAM]);
    let (a, b, c) = (d.ip("a", "iso"), d.ip("b", "iso"), d.ip("c", "iso"));

    let before = d.drops("icc_denied");
    d.assert_no_ping("b", &a);
    d.assert_no_ping("a", &b);
    d.assert_no_ping("c", &b);
    eventually("the icc_denied drop counter to rise", || {
        let now = d.drops("icc_denied");
        (now > before)
            .then_some(())
            .ok_or(format!("still {now}; stats: {:#}", d.stats()))
    });

    // The linked pair talks both ways, by the link alias too.
    d.assert_pings("c", &a);
    d.assert_pings("a", &c);
    let out = d.exec_in("c", &["ping", "-c1", "-W1", "peer"]);
    assert!(out.success(), "{out}");
    // The gateway stays reachable for everyone.
    for ctr in ["a", "b", "c"] {
        d.assert_pings(ctr, "10.53.0.1");
    }
    // Names still resolve: the resolver is not a container.
    assert_eq!(resolve(&d, "b", "a"), [a]);
}

#[test]
fn malformed_queries_get_formerr_or_nothing_and_do_not_stop_the_resolver() {
    let d = Daemon::start();
    let _up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.54.0.0/24", "n"]);
    d.run_sleeper("srv", Some("n"), &[]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);
    let srv = d.ip("srv", "n");

    let out = d.exec_in("client", &["python3", "-c", MALFORMED_PY]).ok();
    println!("{}", out.stdout);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 13, "one line per case expected: {out}");
    for l in lines {
        let (case, verdict) = l.split_once(' ').expect("CASE VERDICT");
        assert!(
            verdict == "none" || verdict == format!("rcode {FORMERR}"),
            "{case}: {verdict}"
        );
    }
    // Still answering, both ways.
    assert_eq!(resolve(&d, "client", "srv"), [srv.as_str()]);
    let tcp = query_n(&d, "client", "srv", "A", "tcp", 1).remove(0);
    assert_eq!((tcp.rcode, tcp.answers), (NOERROR, vec![srv]));
    assert!(
        d.log().lines().all(|l| !l.contains("panicked")),
        "{}",
        d.log()
    );
}

#[test]
fn the_resolver_is_back_after_a_daemon_restart() {
    let mut d = Daemon::start();
    let up = Upstream::start(&d);
    d.network_create(&["--subnet", "10.55.0.0/24", "n"]);
    d.run_sleeper("srv", Some("n"), &["--network-alias", "api"]);
    d.run_sleeper("client", Some("n"), &["--dns", UPSTREAM]);
    let srv = d.ip("srv", "n");
    assert_eq!(resolve(&d, "client", "api"), [srv.as_str()]);

    d.stop("TERM");
    d.restart();
    assert_eq!(resolve(&d, "client", "api"), [srv.as_str()]);
    assert_eq!(resolve(&d, "client", "srv.n"), [srv]);
    // The container's own upstream is still the one it was given.
    assert_eq!(resolve(&d, "client", "ext.test"), ["192.0.2.10"]);
    up.assert_asked("udp ext.test 1");
}

/// Port 53 inside a sandbox is the container's: the embedded resolver
/// listens on a port of its own and the daemon's socket hooks send
/// 127.0.0.11:53 there (Docker does this with iptables rules in the
/// sandbox), so a DNS server container can bind 0.0.0.0:53 while its
/// own lookups and everyone's still work, and the answer seems to come
/// from 127.0.0.11:53.
#[test]
fn a_container_may_serve_port_53_itself() {
    let d = Daemon::start();
    d.network_create(&["--subnet", "10.40.9.0/24", "n"]);
    let server = "import socket, time\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('0.0.0.0', 53))\n\
        t = socket.socket(); t.bind(('0.0.0.0', 53)); t.listen()\n\
        print('BOUND-53', flush=True)\n\
        time.sleep(3600)\n";
    d.run_cmd("dnsctr", Some("n"), &[], &["python3", "-c", server]);
    d.wait_logs("dnsctr", "BOUND-53");
    d.run_sleeper("client", Some("n"), &[]);
    let ip = d.ip("dnsctr", "n");
    assert_eq!(getent(&d, "client", "dnsctr"), Some(ip.clone()));
    assert_eq!(getent(&d, "dnsctr", "client"), Some(d.ip("client", "n")));
    assert_eq!(resolve(&d, "dnsctr", "dnsctr"), [ip.as_str()]);
    let tcp = query_n(&d, "dnsctr", "dnsctr", "A", "tcp", 1).remove(0);
    assert_eq!((tcp.rcode, tcp.answers), (NOERROR, vec![ip.clone()]));
    // A connected socket sees the address it asked for.
    let out = d.exec_in(
        "client",
        &[
            "python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             s.connect(('127.0.0.11', 53)); print(s.getpeername())",
        ],
    );
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("('127.0.0.11', 53)"), "{}", out.stdout);
}

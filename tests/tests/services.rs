//! Services and the routing mesh (issue 9), end to end through the CLI.
//!
//! - One host alone (embedded store, a bridge network): the life of a
//!   service (create, ls, ps, inspect, scale 3 -> 5 -> 2, rm, nothing
//!   left), bad input refused with nothing created, DNS (`NAME` in vip and
//!   dnsrr modes, `tasks.NAME`), health checks; through the datapath, an
//!   unhealthy replica leaving the VIP, and the ingress port answered from
//!   outside and from the host itself.
//! - The multi-host [`Lab`] with etcd: placement over the hosts and
//!   re-placement of a lost host's replicas, host mode; and, through the
//!   datapath, the ingress port on every host from a client on the
//!   underlay outside the cluster (spread, the client's own address,
//!   consistent hashing across scaling, a killed replica leaving the
//!   tables, a lost host's replica replaced, a source port used again
//!   through another host), a UDP service, and a VIP (and the names) from
//!   a container on another host.
//!
//! Tests that need the service datapath (the Maglev tables in BPF maps,
//! the socket-level VIP translation, ingress ports in `from_uplink`) are
//! named `datapath_*`: run them alone with
//! `cargo test -p dataplane-tests --test services -- datapath_`, or the
//! control plane without them with `-- --skip datapath_`.
//!
//! Every replica runs [`WHOAMI_PY`] tagged `HOSTNAME/PID`: the replica (its
//! hostname is its container name, `NAME-N-<task id>`, which stays the same
//! across restarts) and which start of it answered. Clients outside the
//! cluster run in a plain host of the lab (a namespace on the underlay with
//! no daemon).

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use dataplane_tests::{
    bin, in_subnet, netns_exists, retry, run, signal, Daemon, Lab, NetNs, Output, Proc,
    DNS_QUERY_PY, WHOAMI_PY,
};
use serde_json::Value;

/// The lab's lease (seconds) where no host is killed.
const TTL: u64 = 10;
/// The lease where a host is killed: short, so that it is seen down soon.
const SHORT_TTL: u64 = 3;
/// Within how much of an even share each replica's count must be.
const EVEN: f64 = 0.10;
/// How far above Maglev's minimum disruption the moved fraction may be:
/// with a 16381-entry table and up to 5 replicas, a simulation of the
/// paper's builder moves at most 0.3 % more than the minimum; the rest is
/// sampling noise over 2,000 flows (one standard deviation about 1.1 %).
const DISRUPTION_SLACK: f64 = 0.05;
/// A killed or unhealthy replica is out of every host's table within this.
const REMOVAL: Duration = Duration::from_secs(2);

// ----- scripts ----------------------------------------------------------------

/// A replica's command: [`WHOAMI_PY`] tagged `$HOSTNAME/$$` serving `spec`
/// (`tcp:80`, `udp:53`); `exec` makes `$$` the server's own pid.
fn whoami(spec: &str) -> Vec<String> {
    [
        "sh",
        "-c",
        r#"exec python3 -u -c "$1" "$HOSTNAME/$$" "$2""#,
        "sh",
        WHOAMI_PY,
        spec,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `python3 -c BURST_PY PROTO PORT COUNT FIRST_SPORT TIMEOUT MAX_FAIL
/// HOST...`: COUNT flows one after the other, round-robin over the HOSTs,
/// each from its own socket (source port FIRST_SPORT+i; [`Client::burst`]
/// picks fresh ones when given 0): one line `x` and the [`WHOAMI_PY`]
/// answer. TCP sockets close with a reset (SO_LINGER 0), so no TIME_WAIT
/// keeps a source port from being used again. Prints one JSON line per
/// flow: `host`, `sport`, `ok`, the answer's fields (`tag`, `peer`,
/// `local`), `from` (UDP: the answer's source) or `error`. Stops after
/// MAX_FAIL failures.
const BURST_PY: &str = r#"
import errno, json, socket, struct, sys
proto, port, count, first, timeout, max_fail = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
hosts = sys.argv[7:]
fails = 0
for i in range(count):
    host = hosts[i % len(hosts)]
    r = {'host': host, 'sport': first + i if first else 0, 'ok': False}
    s = None
    stage = 'socket '
    try:
        if proto == 'tcp':
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        if first:
            s.bind(('0.0.0.0', first + i))
        stage = 'connect '
        s.connect((host, port))
        stage = 'answer '
        if proto == 'tcp':
            s.sendall(b'x\n')
            line = s.makefile('rb').readline().decode()
            if not line:
                raise ConnectionResetError(errno.ECONNRESET, 'closed by the server')
        else:
            s.send(b'x')
            data, frm = s.recvfrom(65535)
            r['from'] = '%s:%d' % frm
            line = data.decode()
        for kv in line.strip().split(' ', 3):
            k, _, v = kv.partition('=')
            r[k] = v
        r['ok'] = True
    except socket.timeout:
        r['error'] = stage + 'timeout'
    except OSError as e:
        r['error'] = stage + (errno.errorcode.get(e.errno, repr(e)) if e.errno else repr(e))
    finally:
        if s is not None:
            try:
                r['sport'] = s.getsockname()[1]
            except OSError:
                pass
            s.close()
    print(json.dumps(r), flush=True)
    if not r['ok']:
        fails += 1
        if fails >= max_fail:
            break
"#;

/// `python3 -u -c HOLD_PY PORT COUNT INTERVAL HOST...`: opens COUNT TCP
/// connections round-robin over the HOSTs, prints `HOLD-READY`, then every
/// INTERVAL seconds sends a line on each live one and prints one JSON line
/// `{"round": N, "conns": [{"tag": T} | {"error": E}, ...]}`. A connection
/// that fails once stays failed (it is never reopened).
const HOLD_PY: &str = r#"
import errno, json, socket, sys, time
port, count, interval = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
hosts = sys.argv[4:]
conns = []
for i in range(count):
    s = socket.create_connection((hosts[i % len(hosts)], port), timeout=3)
    s.settimeout(2)
    conns.append({'s': s, 'f': s.makefile('rb'), 'error': None})
print('HOLD-READY', flush=True)
n = 0
while True:
    n += 1
    res = []
    for c in conns:
        if c['error'] is None:
            try:
                c['s'].sendall(b'round-%d\n' % n)
                line = c['f'].readline().decode()
                if not line:
                    raise ConnectionResetError(errno.ECONNRESET, 'closed by the server')
                tag = [kv[4:] for kv in line.split() if kv.startswith('tag=')][0]
                res.append({'tag': tag})
                continue
            except socket.timeout:
                c['error'] = 'timeout'
            except OSError as e:
                c['error'] = errno.errorcode.get(e.errno, repr(e)) if e.errno else repr(e)
        res.append({'error': c['error']})
    print(json.dumps({'round': n, 'conns': res}), flush=True)
    time.sleep(interval)
"#;

// ----- services and their tasks ----------------------------------------------

/// A CLI call against the daemon whose API is `host` (`unix://...`), for
/// cleanup that must not borrow the [`Daemon`].
fn cli_at(host: &str, args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("--host").arg(host).args(args);
    c.env_remove("DATAPLANE_HOST");
    run(c)
}

/// The services a test created, removed on drop (also when the test
/// fails): a replica's agent would otherwise start it again after the
/// harness removes its container. Declare it after the [`Daemon`] or
/// [`Lab`] so that it drops first.
struct Services {
    /// The API of every host, tried in turn (one may be down).
    hosts: Vec<String>,
    names: RefCell<Vec<String>>,
}

impl Services {
    fn new<'a>(hosts: impl IntoIterator<Item = &'a Daemon>) -> Services {
        Services {
            hosts: hosts.into_iter().map(Daemon::host).collect(),
            names: RefCell::default(),
        }
    }

    /// `service create --name NAME ARGS... -- CMD...` on `d`; returns the id.
    #[track_caller]
    fn create(&self, d: &Daemon, name: &str, args: &[&str], cmd: &[String]) -> String {
        let mut full = vec!["service", "create", "--name", name];
        full.extend_from_slice(args);
        full.push("--");
        full.extend(cmd.iter().map(String::as_str));
        let out = d.cli(&full);
        if out.success() {
            self.names.borrow_mut().push(name.to_string());
        }
        assert!(
            out.success(),
            "service create failed: {out}\n--- daemon log (end) ---\n{}",
            dataplane_tests::tail(&d.log(), 40)
        );
        out.text().to_string()
    }

    /// `service rm NAME` on `d`, which must succeed.
    #[track_caller]
    fn remove(&self, d: &Daemon, name: &str) {
        d.ok(&["service", "rm", name]);
        self.names.borrow_mut().retain(|n| n != name);
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for name in self.names.borrow().iter() {
            let removed = self.hosts.iter().any(|h| {
                let out = cli_at(h, &["service", "rm", name]);
                out.success() || out.stderr.contains("not found")
            });
            if !removed {
                eprintln!("cleanup: could not remove service {name} on any host");
            }
        }
        // Every host's agent removes its replicas: wait for it, so that the
        // harness's own sweep finds nothing that an agent starts again.
        let names = self.names.borrow().clone();
        for h in &self.hosts {
            let gone = (0..100).any(|_| {
                let out = cli_at(h, &["ps", "-a", "--format", "json"]);
                if !out.success() {
                    return true; // that daemon is down
                }
                let Ok(Value::Array(list)) = dataplane_tests::json_lines_of(&out.stdout) else {
                    return true;
                };
                let left = list.iter().any(|c| {
                    let n = c["Names"].as_str().unwrap_or("");
                    names.iter().any(|s| n.starts_with(&format!("{s}.")))
                });
                if left {
                    std::thread::sleep(Duration::from_millis(100));
                }
                !left
            });
            if !gone {
                eprintln!("cleanup: replicas still listed on {h}");
            }
        }
    }
}

/// One replica as `service ps --format json` shows it.
#[derive(Clone, Debug)]
struct Task {
    replica: u32,
    id: String,
    node: String,
    state: String,
    ip: String,
    container: String,
    restarts: u64,
    live: bool,
    message: String,
}

impl Task {
    /// Its container's hostname (the [`whoami`] tag before the `/`).
    fn hostname(&self, svc: &str) -> String {
        format!(
            "{svc}-{}-{}",
            self.replica,
            &self.id[..12.min(self.id.len())]
        )
    }
}

/// `service ps NAME --format json` on `d`.
#[track_caller]
fn tasks(d: &Daemon, svc: &str) -> Vec<Task> {
    let v = d.ok(&["service", "ps", svc, "--format", "json"]).json();
    let list = v.as_array().unwrap_or_else(|| panic!("not a list: {v:#}"));
    list.iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            Task {
                replica: s("Name")
                    .rsplit_once('.')
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap_or_else(|| panic!("a task name NAME.N: {t:#}")),
                id: s("ID"),
                node: s("Node"),
                state: s("State"),
                ip: s("IP"),
                container: s("Container"),
                restarts: t["Restarts"].as_u64().unwrap_or(0),
                live: t["Live"].as_bool().unwrap_or(false),
                message: s("Message"),
            }
        })
        .collect()
}

/// Waits until `d` shows exactly `n` tasks of `svc`, all running with an
/// address; returns them by replica number.
#[track_caller]
fn wait_running(d: &Daemon, svc: &str, n: usize) -> Vec<Task> {
    retry(
        &format!("{n} running replicas of {svc}"),
        200,
        Duration::from_millis(100),
        || {
            let mut t = tasks(d, svc);
            t.sort_by_key(|t| t.replica);
            let ready = t.len() == n
                && t.iter()
                    .all(|t| t.state == "running" && t.live && !t.ip.is_empty());
            ready.then_some(t.clone()).ok_or(format!("{t:#?}"))
        },
    )
}

/// [`wait_running`] on every host of the lab; returns host 0's view.
#[track_caller]
fn wait_running_everywhere(lab: &Lab, svc: &str, n: usize) -> Vec<Task> {
    let mine = wait_running(lab.host(0), svc, n);
    for d in &lab.hosts()[1..] {
        let theirs = wait_running(d, svc, n);
        let ids = |v: &[Task]| v.iter().map(|t| t.container.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&mine), ids(&theirs), "the hosts disagree on the tasks");
    }
    mine
}

/// The containers `d` lists (`ps --format json`): name -> id.
#[track_caller]
fn containers(d: &Daemon) -> BTreeMap<String, String> {
    let v = d.ps();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["Names"].as_str().unwrap_or_default().to_string(),
                c["ID"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `service ls --format json` on `d`.
#[track_caller]
fn services(d: &Daemon) -> Vec<Value> {
    let v = d.ok(&["service", "ls", "--format", "json"]).json();
    v.as_array()
        .unwrap_or_else(|| panic!("service ls is not a list: {v:#}"))
        .clone()
}

/// The VIP `service ls` shows for `svc`.
#[track_caller]
fn vip(d: &Daemon, svc: &str) -> String {
    let all = services(d);
    let s = all
        .iter()
        .find(|s| s["Name"] == svc)
        .unwrap_or_else(|| panic!("no service {svc}: {all:#?}"));
    s["VIP"].as_str().unwrap_or_default().to_string()
}

// ----- the lab -----------------------------------------------------------------

/// `network create --driver overlay --subnet SUBNET NAME` on host 0, then
/// waits until every host lists it.
fn overlay(lab: &Lab, name: &str, subnet: &str) {
    lab.host(0)
        .network_create(&["--driver", "overlay", "--subnet", subnet, name]);
    for (i, d) in lab.hosts().iter().enumerate() {
        retry(
            &format!("overlay {name} on host {i}"),
            100,
            Duration::from_millis(100),
            || {
                let out = d.cli(&["network", "inspect", name]);
                out.success().then_some(()).ok_or(out.to_string())
            },
        );
    }
}

/// A lab of three hosts with overlay `ov` (10.91.0.0/24) and a client on
/// the underlay outside the cluster (plain host 0).
fn mesh_lab(ttl: u64) -> Lab {
    let mut lab = Lab::new(3, ttl);
    lab.add_plain_host();
    overlay(&lab, "ov", "10.91.0.0/24");
    lab
}

fn host_ips(lab: &Lab) -> Vec<String> {
    (0..lab.hosts().len()).map(|i| lab.host_ip(i)).collect()
}

// ----- traffic -----------------------------------------------------------------

/// One flow of [`BURST_PY`].
#[derive(Clone, Debug)]
struct Flow {
    host: String,
    sport: u16,
    ok: bool,
    /// The replica's hostname (the tag before `/`).
    replica: String,
    /// The whole tag: the replica and its pid.
    instance: String,
    peer: String,
    from: String,
    error: String,
}

impl Flow {
    fn peer_ip(&self) -> &str {
        self.peer.rsplit_once(':').map_or("", |(ip, _)| ip)
    }

    fn peer_port(&self) -> u16 {
        self.peer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

fn burst_args(
    proto: &str,
    port: u16,
    count: usize,
    first_sport: u16,
    timeout: f64,
    max_fail: usize,
    hosts: &[String],
) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "python3".into(),
        "-c".into(),
        BURST_PY.into(),
        proto.into(),
        port.to_string(),
        count.to_string(),
        first_sport.to_string(),
        timeout.to_string(),
        max_fail.to_string(),
    ];
    v.extend(hosts.iter().cloned());
    v
}

fn parse_flows(out: &Output) -> Vec<Flow> {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let instance = s("tag");
            Flow {
                host: s("host"),
                sport: v["sport"].as_u64().unwrap_or(0) as u16,
                ok: v["ok"] == true,
                replica: instance.split('/').next().unwrap_or("").to_string(),
                instance,
                peer: s("peer"),
                from: s("from"),
                error: s("error"),
            }
        })
        .collect()
}

/// Where a burst of flows comes from: a namespace outside the cluster, or
/// a container of a daemon.
enum Client<'a> {
    Ns(&'a NetNs),
    Container(&'a Daemon, &'a str),
}

impl Client<'_> {
    /// Runs [`BURST_PY`] with these arguments (its own command line, one
    /// to one) and returns its flows.
    #[allow(clippy::too_many_arguments)]
    fn burst(
        &self,
        proto: &str,
        port: u16,
        count: usize,
        first_sport: u16,
        timeout: f64,
        max_fail: usize,
        hosts: &[String],
    ) -> Vec<Flow> {
        let first_sport = if first_sport == 0 {
            fresh_sports(count)
        } else {
            first_sport
        };
        let args = burst_args(proto, port, count, first_sport, timeout, max_fail, hosts);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Thousands of flows take longer than a CLI call may.
        let cmd = match self {
            Client::Ns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns.name()]).args(&args);
                c
            }
            Client::Container(d, ctr) => {
                let mut full = vec!["exec", ctr, "--"];
                full.extend_from_slice(&args);
                return parse_checked(d.spawn_cli(&full).wait(BURST_TIMEOUT));
            }
        };
        parse_checked(Proc::spawn(cmd).wait(BURST_TIMEOUT))
    }
}

/// The first of `n` source ports no burst of this test binary used lately
/// (10000-31999, below the kernel's ephemeral range, round and round).
///
/// A burst picks its own ports rather than the kernel's: the kernel may
/// hand a client the same port towards two hosts of the mesh, and two such
/// flows that land on one replica are one 4-tuple there. The datapath
/// refuses the second while the first's conntrack entry on the replica's
/// host lives, which (see [`forget_flows`]) outlasts the flow; [`datapath_a_port_used_again_through_another_host_after_close_is_answered`]
/// tests that case on its own.
fn fresh_sports(n: usize) -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const FIRST: usize = 10_000;
    const SPAN: usize = 22_000;
    assert!(n <= SPAN);
    let mut start = NEXT.fetch_add(n, Ordering::Relaxed) % SPAN;
    if start + n > SPAN {
        start = 0;
        NEXT.store(n, Ordering::Relaxed);
    }
    (FIRST + start) as u16
}

/// How long one burst may take.
const BURST_TIMEOUT: Duration = Duration::from_secs(120);

/// The flows of a burst that ran to its end.
#[track_caller]
fn parse_checked(out: Output) -> Vec<Flow> {
    let flows = parse_flows(&out);
    assert!(
        out.success() && !flows.is_empty(),
        "the burst did not run: {out}"
    );
    flows
}

impl Client<'_> {
    /// Waits until `per_host` flows to each of `hosts` all succeed, answered
    /// only by replicas in `want` and (when `cover`) by every one of them.
    #[track_caller]
    fn wait_answers(
        &self,
        proto: &str,
        port: u16,
        hosts: &[String],
        want: &BTreeSet<String>,
        cover: bool,
    ) {
        retry(
            &format!("{proto}:{port} on {hosts:?} to be answered by {want:?}"),
            60,
            Duration::from_millis(250),
            || {
                for h in hosts {
                    let flows = self.burst(proto, port, 30, 0, 0.5, 2, std::slice::from_ref(h));
                    let seen: BTreeSet<String> = flows.iter().map(|f| f.replica.clone()).collect();
                    let bad: Vec<&Flow> = flows
                        .iter()
                        .filter(|f| !f.ok || !want.contains(&f.replica))
                        .collect();
                    if !bad.is_empty() || flows.len() < 30 || (cover && &seen != want) {
                        return Err(format!("from {h}: seen {seen:?}, failed {bad:?}"));
                    }
                }
                Ok(())
            },
        );
    }
}

/// Flows per replica.
fn spread(flows: &[Flow]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in flows.iter().filter(|f| f.ok) {
        *m.entry(f.replica.clone()).or_default() += 1;
    }
    m
}

/// Asserts that each of `replicas` has within [`EVEN`] of an even share.
#[track_caller]
fn assert_even(what: &str, flows: &[Flow], replicas: &BTreeSet<String>) {
    let by = spread(flows);
    let total: usize = by.values().sum();
    let even = total as f64 / replicas.len() as f64;
    let worst = replicas
        .iter()
        .map(|r| (by.get(r).copied().unwrap_or(0) as f64 - even).abs() / even)
        .fold(0.0, f64::max);
    println!(
        "{what}: {total} flows over {} replicas, {by:?}, worst deviation {:.1} % of even",
        replicas.len(),
        worst * 100.0
    );
    assert_eq!(
        by.keys().cloned().collect::<BTreeSet<_>>(),
        *replicas,
        "{what}: answered by other replicas than expected"
    );
    assert!(
        worst <= EVEN,
        "{what}: {by:?} is more than {} % off an even share of {even:.0}",
        EVEN * 100.0
    );
}

/// Asserts that every flow succeeded.
#[track_caller]
fn assert_all_ok(what: &str, flows: &[Flow], count: usize, hosts: &[Daemon]) {
    let bad: Vec<String> = flows
        .iter()
        .filter(|f| !f.ok)
        .map(|f| format!("{}:{} {}", f.host, f.sport, f.error))
        .collect();
    assert!(
        bad.is_empty() && flows.len() == count,
        "{what}: {} of {count} flows ran, {} failed (first 5): {:?}\ndrops:\n{}",
        flows.len(),
        bad.len(),
        &bad[..bad.len().min(5)],
        drops_of(hosts)
    );
}

/// A background [`HOLD_PY`] from the client namespace.
struct Held {
    proc: Proc,
}

/// One round of [`HOLD_PY`]: each connection's whole tag, or its error.
type Round = Vec<Result<String, String>>;

impl Held {
    fn open(ns: &NetNs, port: u16, count: usize, hosts: &[String]) -> Held {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name(), "python3", "-u", "-c", HOLD_PY])
            .arg(port.to_string())
            .arg(count.to_string())
            .arg("0.2")
            .args(hosts);
        let held = Held {
            proc: Proc::spawn(c),
        };
        held.next_round();
        held
    }

    fn rounds(&self) -> Vec<(u64, Round)> {
        self.proc
            .output_so_far()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                let n = v["round"].as_u64()?;
                let conns = v["conns"]
                    .as_array()?
                    .iter()
                    .map(|c| match c["tag"].as_str() {
                        Some(t) => Ok(t.to_string()),
                        None => Err(c["error"].as_str().unwrap_or("?").to_string()),
                    })
                    .collect();
                Some((n, conns))
            })
            .collect()
    }

    /// The first round that starts after this call.
    #[track_caller]
    fn next_round(&self) -> Round {
        let after = self.rounds().last().map_or(0, |r| r.0) + 1;
        retry(
            "a round of the held connections",
            150,
            Duration::from_millis(100),
            || {
                self.rounds()
                    .into_iter()
                    .find(|(n, _)| *n > after)
                    .map(|(_, r)| r)
                    .ok_or_else(|| self.proc.output_so_far())
            },
        )
    }
}

/// Asserts that every held connection still answers, from the same
/// replica and the same start of it, except those whose replica is in
/// `gone`, which must have failed rather than moved.
#[track_caller]
fn assert_held(what: &str, before: &Round, now: &Round, gone: &BTreeSet<String>) {
    assert_eq!(before.len(), now.len());
    for (i, (b, n)) in before.iter().zip(now).enumerate() {
        let b = b
            .as_ref()
            .unwrap_or_else(|e| panic!("{what}: connection {i} was already down: {e}"));
        let replica = b.split('/').next().unwrap_or("");
        match n {
            Ok(t) => assert_eq!(t, b, "{what}: connection {i} moved from {b} to {t}"),
            Err(e) => assert!(
                gone.contains(replica),
                "{what}: connection {i} to {b} failed ({e}) though its replica is there"
            ),
        }
    }
    let kept = now.iter().filter(|r| r.is_ok()).count();
    println!("{what}: {kept} of {} held connections kept", now.len());
}

// ----- DNS ---------------------------------------------------------------------

/// The A answers for `name` from container `ctr` (NOERROR asserted).
#[track_caller]
fn resolve(d: &Daemon, ctr: &str, name: &str) -> Vec<String> {
    let out = d.exec_in(
        ctr,
        &[
            "python3",
            "-c",
            DNS_QUERY_PY,
            name,
            "A",
            "udp",
            "127.0.0.11",
            "1",
        ],
    );
    assert!(out.success(), "querying {name} from {ctr}: {out}");
    let v: Value = serde_json::from_str(out.text()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["rcode"], 0, "{name} from {ctr}: {v}");
    let mut a: Vec<String> = v["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    a.sort();
    a
}

fn sorted_ips(tasks: &[Task]) -> Vec<String> {
    let mut v: Vec<String> = tasks.iter().map(|t| t.ip.clone()).collect();
    v.sort();
    v
}

/// The non-zero drop counters of every host, `host<i>: {program: {reason: n}}`,
/// for failure messages.
fn drops_of(hosts: &[Daemon]) -> String {
    let mut out = String::new();
    for (i, d) in hosts.iter().enumerate() {
        let stats = d.cli(&["stats", "--format", "json"]);
        let Ok(v) = serde_json::from_str::<Value>(&stats.stdout) else {
            continue;
        };
        let mut mine = BTreeMap::new();
        for p in v["programs"].as_array().into_iter().flatten() {
            for (reason, n) in p["drops"].as_object().into_iter().flatten() {
                if n.as_u64().unwrap_or(0) > 0 {
                    mine.insert(
                        format!("{}.{reason}", p["name"].as_str().unwrap_or("?")),
                        n.clone(),
                    );
                }
            }
        }
        out.push_str(&format!("host{}: {mine:?}\n", i + 1));
    }
    out
}

/// Deletes, on every host, the conntrack entries (either direction) of
/// `client`'s flows from ports `first..first+n`, and checks that none is
/// left: the same tuples again then ask the Maglev table as new flows
/// would, instead of finding their old replica in conntrack. (Waiting for
/// expiry is no option: with the ingress branch of 04:00 UTC the
/// receiving host's entries of a reset flow go after 10-20 s, but the
/// `CT_TUNNEL` pair on the replica's host never sees the reset and keeps
/// the established timeout.)
fn forget_flows(lab: &Lab, client: &str, first: u16, n: usize) {
    let ip: [u8; 4] = client
        .parse::<std::net::Ipv4Addr>()
        .expect("an IPv4 address")
        .octets();
    let ours = |k: &[u8]| {
        let port = |p: &[u8]| {
            let p = u16::from_be_bytes([p[0], p[1]]);
            p >= first && usize::from(p - first) < n
        };
        k.len() >= 12 && ((k[0..4] == ip && port(&k[8..10])) || (k[4..8] == ip && port(&k[10..12])))
    };
    let left = |d: &Daemon| -> Vec<Vec<u8>> {
        d.conntrack_dump()
            .expect("the CT map, through bpftool")
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| ours(k))
            .collect()
    };
    let mut deleted = 0;
    for (i, d) in lab.hosts().iter().enumerate() {
        let pin = std::fs::read_dir(d.bpffs())
            .expect("the daemon's bpffs")
            .filter_map(Result::ok)
            .map(|e| e.path().join("maps/CT"))
            .find(|p| p.exists())
            .expect("a pinned CT map");
        let keys = left(d);
        deleted += keys.len();
        let batch: String = keys
            .iter()
            .map(|k| {
                let hex: Vec<String> = k.iter().map(|b| format!("{b:02x}")).collect();
                format!(
                    "map delete pinned {} key hex {}\n",
                    pin.display(),
                    hex.join(" ")
                )
            })
            .collect();
        let file = lab.tempdir().join(format!("forget-host{}.batch", i + 1));
        std::fs::write(&file, batch).expect("writing the bpftool batch");
        if !keys.is_empty() {
            let f = file.to_str().expect("utf-8 path");
            dataplane_tests::sh("bpftool", &["batch", "file", f]).ok();
        }
        let still = left(d).len();
        assert_eq!(still, 0, "host{}: {still} entries of the flows left", i + 1);
    }
    println!("forgot {deleted} conntrack entries of the replayed flows");
}

/// The veths in the daemon's netns (every one belongs to a sandbox).
fn veths(d: &Daemon) -> Vec<String> {
    d.ns()
        .exec(&["ip", "-o", "link", "show", "type", "veth"])
        .ok()
        .stdout
        .lines()
        .map(str::to_string)
        .collect()
}

fn sleeper() -> Vec<String> {
    vec!["sleep".into(), "infinity".into()]
}

/// Sends flows to `hosts` in rounds (10 per host, fresh source ports)
/// until two rounds in a row all succeed from replicas in `want`, for at
/// most 15 s after `since`. Returns when the last failing round and the
/// first of the clean ones started, counted from `since` (no failing
/// round: `None`): the replica left the tables in between, or (`None`)
/// before the first flows to it.
#[track_caller]
fn time_until_clean(
    client: &Client,
    proto: &str,
    port: u16,
    hosts: &[String],
    want: &BTreeSet<String>,
    since: Instant,
) -> (Option<Duration>, Duration) {
    let count = 10 * hosts.len();
    let mut last_bad = None;
    let mut clean_since: Option<Duration> = None;
    let mut last = String::new();
    while since.elapsed() < Duration::from_secs(15) {
        let start = since.elapsed();
        let flows = client.burst(proto, port, count, 0, 0.3, 2, hosts);
        let clean = flows.len() == count && flows.iter().all(|f| f.ok && want.contains(&f.replica));
        println!(
            "  round at {:.2} s: {} flows, {} failed, answered by {:?}",
            start.as_secs_f64(),
            flows.len(),
            flows.iter().filter(|f| !f.ok).count(),
            flows
                .iter()
                .filter(|f| f.ok)
                .map(|f| f.instance.as_str())
                .collect::<BTreeSet<_>>()
        );
        if clean {
            match clean_since {
                Some(first) => return (last_bad, first),
                None => clean_since = Some(start),
            }
        } else {
            last_bad = Some(start);
            clean_since = None;
            last = format!(
                "{:?}",
                flows
                    .iter()
                    .filter(|f| !f.ok || !want.contains(&f.replica))
                    .take(3)
                    .collect::<Vec<_>>()
            );
        }
    }
    panic!("{proto}:{port} never answered only by {want:?} within 15 s: {last}");
}

// ----- one host alone ----------------------------------------------------------

#[test]
fn service_life_on_one_host_create_ls_ps_inspect_scale_rm_leaves_nothing() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    d.network_create(&["--subnet", "10.92.0.0/24", "n"]);
    let id = svcs.create(
        &d,
        "web",
        &["--replicas", "3", "--network", "n"],
        &sleeper(),
    );
    assert!(!id.is_empty(), "service create printed no id");

    let t3 = wait_running(&d, "web", 3);
    assert_eq!(t3.iter().map(|t| t.replica).collect::<Vec<_>>(), [1, 2, 3]);
    let ips: BTreeSet<&str> = t3.iter().map(|t| t.ip.as_str()).collect();
    assert_eq!(ips.len(), 3, "replicas share an address: {t3:#?}");
    for t in &t3 {
        assert!(t.node.is_empty(), "one host alone has no node name: {t:?}");
        assert!(in_subnet(&t.ip, "10.92.0.0/24"), "{t:?}");
    }
    // Each replica is a container `web.N.<task id>`.
    let ctrs = containers(&d);
    for t in &t3 {
        let name = format!("web.{}.{}", t.replica, &t.id[..12]);
        let cid = ctrs
            .get(&name)
            .unwrap_or_else(|| panic!("no container {name}: {ctrs:?}"));
        assert!(
            cid.starts_with(&t.container) || t.container.starts_with(cid.as_str()),
            "{name} is {cid}, the task says {}",
            t.container
        );
    }
    assert_eq!(ctrs.len(), 3, "only the replicas run: {ctrs:?}");

    let ls = services(&d);
    assert_eq!(ls.len(), 1, "{ls:#?}");
    assert_eq!(ls[0]["Name"], "web");
    assert_eq!(ls[0]["Replicas"], "3/3");
    assert_eq!(ls[0]["Network"], "n");
    assert_eq!(ls[0]["EndpointMode"], "vip");
    let vip = vip(&d, "web");
    assert!(in_subnet(&vip, "10.92.0.0/24"), "VIP {vip:?}");
    assert!(!ips.contains(vip.as_str()), "the VIP {vip} is a replica's");

    let inspect = dataplane_tests::only(d.ok(&["service", "inspect", "web"]).json());
    assert_eq!(inspect["ID"], id.as_str());
    assert_eq!(inspect["Spec"]["Replicas"], 3);
    assert_eq!(inspect["Spec"]["Network"], "n");
    assert_eq!(inspect["Endpoint"]["VirtualIP"], vip.as_str());
    assert_eq!(inspect["Tasks"].as_array().map(Vec::len), Some(3));

    let mut sandboxes: BTreeMap<u32, String> = t3
        .iter()
        .map(|t| (t.replica, d.sandbox(&t.container)))
        .collect();

    // 3 -> 5: the first three keep their containers.
    assert!(d
        .ok(&["service", "scale", "web=5"])
        .stdout
        .contains("web scaled to 5"));
    let t5 = wait_running(&d, "web", 5);
    for (a, b) in t3.iter().zip(&t5) {
        assert_eq!((a.replica, &a.container), (b.replica, &b.container));
    }
    for t in &t5[3..] {
        sandboxes.insert(t.replica, d.sandbox(&t.container));
    }
    assert_eq!(services(&d)[0]["Replicas"], "5/5");

    // 5 -> 2: replicas 3, 4 and 5 go, with their sandboxes.
    d.ok(&["service", "scale", "web=2"]);
    let t2 = wait_running(&d, "web", 2);
    for (a, b) in t3.iter().zip(&t2) {
        assert_eq!((a.replica, &a.container), (b.replica, &b.container));
    }
    retry(
        "replicas 3-5 to go",
        100,
        Duration::from_millis(100),
        || {
            let (c, v) = (containers(&d), veths(&d));
            let left: Vec<u32> = (3..=5).filter(|r| netns_exists(&sandboxes[r])).collect();
            // The host end of a veth goes a little after its netns.
            (c.len() == 2 && left.is_empty() && v.len() == 2)
                .then_some(())
                .ok_or(format!(
                    "containers {c:?}, sandboxes of {left:?} left, veths {v:?}"
                ))
        },
    );

    // rm: nothing left, and the name is free again.
    svcs.remove(&d, "web");
    retry(
        "the service to leave nothing",
        100,
        Duration::from_millis(100),
        || {
            let (c, v) = (containers(&d), veths(&d));
            let left: Vec<&String> = sandboxes.values().filter(|n| netns_exists(n)).collect();
            (c.is_empty() && v.is_empty() && left.is_empty())
                .then_some(())
                .ok_or(format!("containers {c:?}, veths {v:?}, netns {left:?}"))
        },
    );
    assert!(services(&d).is_empty());
    let line = d.cli(&["service", "inspect", "web"]).refused().to_string();
    assert!(line.contains("web"), "{line}");
}

#[test]
fn bad_service_input_is_refused_and_creates_nothing() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    d.network_create(&["--subnet", "10.93.0.0/24", "n"]);
    d.run_sleeper("pub", Some("n"), &["-p", "8080:80"]);
    svcs.create(
        &d,
        "holder",
        &["--network", "n", "-p", "published=9090,target=80"],
        &sleeper(),
    );
    wait_running(&d, "holder", 1);
    let before = services(&d);

    let create = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["service", "create", "--name", "a"];
        v.extend_from_slice(extra);
        v.extend(["--", "sleep", "infinity"]);
        v
    };
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            create(&["--replicas", "x", "--network", "n"]),
            vec!["--replicas", "'x'"],
        ),
        (create(&["--network", "nope"]), vec!["nope"]),
        (
            create(&["--network", "n", "-p", "published=abc,target=80"]),
            vec!["--publish", "abc"],
        ),
        (
            create(&["--network", "n", "-p", "published=8080,target=80"]),
            vec!["8080", "pub"],
        ),
        (
            create(&["--network", "n", "-p", "9090:80"]),
            vec!["9090", "holder"],
        ),
        (
            vec![
                "run",
                "-d",
                "--name",
                "x",
                "--network",
                "n",
                "-p",
                "9090:80",
                "--",
                "sleep",
                "infinity",
            ],
            vec!["9090"],
        ),
    ];
    for (args, needles) in cases {
        let line = d.assert_refused(&args);
        for n in needles {
            assert!(
                line.contains(n),
                "`{}`: {line:?} does not name {n:?}",
                args.join(" ")
            );
        }
        assert_eq!(
            services(&d),
            before,
            "`{}` changed the services",
            args.join(" ")
        );
    }
    assert_eq!(
        containers(&d)
            .keys()
            .filter(|n| !n.starts_with("holder."))
            .collect::<Vec<_>>(),
        ["pub"]
    );
}

#[test]
fn service_names_resolve_to_the_vip_dnsrr_replicas_and_tasks() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    d.network_create(&["--subnet", "10.94.0.0/24", "n"]);
    d.run_sleeper("client", Some("n"), &[]);
    svcs.create(
        &d,
        "web",
        &["--replicas", "2", "--network", "n"],
        &sleeper(),
    );
    svcs.create(
        &d,
        "rr",
        &[
            "--replicas",
            "2",
            "--network",
            "n",
            "--endpoint-mode",
            "dnsrr",
        ],
        &sleeper(),
    );
    let web = wait_running(&d, "web", 2);
    let rr = wait_running(&d, "rr", 2);
    let v = vip(&d, "web");
    assert!(in_subnet(&v, "10.94.0.0/24"), "VIP {v:?}");
    assert_eq!(vip(&d, "rr"), "", "a dnsrr service has no VIP");

    assert_eq!(
        resolve(&d, "client", "web"),
        std::slice::from_ref(&v),
        "web: the VIP"
    );
    assert_eq!(resolve(&d, "client", "tasks.web"), sorted_ips(&web));
    assert_eq!(
        resolve(&d, "client", "rr"),
        sorted_ips(&rr),
        "rr: the replicas"
    );
    assert_eq!(resolve(&d, "client", "tasks.rr"), sorted_ips(&rr));

    // The next query sees a scale.
    d.ok(&["service", "scale", "web=3", "rr=1"]);
    let web = wait_running(&d, "web", 3);
    let rr = wait_running(&d, "rr", 1);
    retry(
        "the names to follow the scale",
        50,
        Duration::from_millis(100),
        || {
            let got = (
                resolve(&d, "client", "tasks.web"),
                resolve(&d, "client", "rr"),
                resolve(&d, "client", "web"),
            );
            let want = (sorted_ips(&web), sorted_ips(&rr), vec![v.clone()]);
            (got == want)
                .then_some(())
                .ok_or(format!("{got:?} != {want:?}"))
        },
    );
}

/// `a=<eth0's address>; test ! -e DIR/sick-$a`: healthy until the test
/// creates the replica's file (the check runs in the replica's netns, on
/// the host's file system).
fn health_cmd(dir: &std::path::Path) -> String {
    format!(
        "a=$(ip -4 -o addr show dev eth0 | awk '{{print $4}}'); test ! -e {}/sick-${{a%/*}}",
        dir.display()
    )
}

/// Waits until replica `replica` of `svc` is in `state` (others running).
#[track_caller]
fn wait_state(d: &Daemon, svc: &str, replica: u32, state: &str) -> Task {
    retry(
        &format!("replica {replica} of {svc} to be {state}"),
        150,
        Duration::from_millis(100),
        || {
            let t = tasks(d, svc);
            let me = t.iter().find(|t| t.replica == replica).cloned();
            let others_ok = t
                .iter()
                .filter(|t| t.replica != replica)
                .all(|t| t.state == "running");
            match me {
                Some(m) if m.state == state && others_ok => Ok(m),
                _ => Err(format!("{t:#?}")),
            }
        },
    )
}

#[test]
fn a_failing_health_check_makes_a_replica_unhealthy_and_passing_brings_it_back() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    let dir = dataplane_tests::TempDir::new();
    d.network_create(&["--subnet", "10.95.0.0/24", "n"]);
    let cmd = health_cmd(dir.path());
    svcs.create(
        &d,
        "web",
        &[
            "--replicas",
            "3",
            "--network",
            "n",
            "--health-cmd",
            &cmd,
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
        ],
        &sleeper(),
    );
    let t = wait_running(&d, "web", 3);
    let sick = t[1].clone();
    let flag = dir.path().join(format!("sick-{}", sick.ip));
    std::fs::write(&flag, b"").expect("writing the flag");
    let unhealthy = wait_state(&d, "web", sick.replica, "unhealthy");
    assert!(!unhealthy.live, "an unhealthy replica takes no connections");
    assert!(
        unhealthy.message.contains("health check failed"),
        "{unhealthy:?}"
    );
    assert_eq!(services(&d)[0]["Replicas"], "2/3");

    std::fs::remove_file(&flag).expect("removing the flag");
    let back = wait_state(&d, "web", sick.replica, "running");
    assert!(back.live);
    assert_eq!(
        (back.container.as_str(), back.restarts),
        (sick.container.as_str(), 0),
        "the same container came back (it was not restarted)"
    );
    assert_eq!(services(&d)[0]["Replicas"], "3/3");
}

#[test]
fn datapath_an_unhealthy_replica_leaves_the_vip_and_comes_back_when_healthy() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    let dir = dataplane_tests::TempDir::new();
    d.network_create(&["--subnet", "10.96.0.0/24", "n"]);
    d.run_sleeper("client", Some("n"), &[]);
    let cmd = health_cmd(dir.path());
    svcs.create(
        &d,
        "web",
        &[
            "--replicas",
            "3",
            "--network",
            "n",
            "-p",
            "published=8090,target=80",
            "--health-cmd",
            &cmd,
            "--health-interval",
            "1s",
            "--health-retries",
            "3",
        ],
        &whoami("tcp:80"),
    );
    let t = wait_running(&d, "web", 3);
    let all: BTreeSet<String> = t.iter().map(|t| t.hostname("web")).collect();
    let v = vec![vip(&d, "web")];
    let client = Client::Container(&d, "client");
    client.wait_answers("tcp", 80, &v, &all, true);

    let sick = t[1].clone();
    let flag = dir.path().join(format!("sick-{}", sick.ip));
    std::fs::write(&flag, b"").expect("writing the flag");
    wait_state(&d, "web", sick.replica, "unhealthy");
    let since = Instant::now();
    let mut rest = all.clone();
    rest.remove(&sick.hostname("web"));
    let (bad, clean) = time_until_clean(&client, "tcp", 80, &v, &rest, since);
    println!(
        "unhealthy replica out of the VIP's table by {:.2} s after ps showed it (last failed flow in the round at {})",
        clean.as_secs_f64(),
        bad.map_or("-".to_string(), |b| format!("{:.2} s", b.as_secs_f64()))
    );
    assert!(clean <= REMOVAL, "out after {clean:?}");
    let flows = client.burst("tcp", 80, 60, 0, 2.0, 2, &v);
    assert_all_ok("while unhealthy", &flows, 60, std::slice::from_ref(&d));
    assert_eq!(
        spread(&flows).keys().cloned().collect::<BTreeSet<_>>(),
        rest
    );

    std::fs::remove_file(&flag).expect("removing the flag");
    wait_state(&d, "web", sick.replica, "running");
    client.wait_answers("tcp", 80, &v, &all, true);
}

// ----- many hosts: placement ---------------------------------------------------

#[test]
fn replicas_spread_over_the_hosts_and_a_lost_hosts_replicas_are_placed_again() {
    let mut lab = Lab::new(3, SHORT_TTL);
    overlay(&lab, "ov", "10.91.0.0/24");
    let svcs = Services::new(lab.hosts());
    svcs.create(
        lab.host(0),
        "web",
        &["--replicas", "3", "--network", "ov"],
        &sleeper(),
    );
    let t = wait_running_everywhere(&lab, "web", 3);
    let nodes: BTreeSet<String> = t.iter().map(|t| t.node.clone()).collect();
    let all: BTreeSet<String> = (0..3).map(|i| lab.node_name(i)).collect();
    assert_eq!(nodes, all, "one replica per host: {t:#?}");
    // Each host runs its own replica's container.
    for (i, d) in lab.hosts().iter().enumerate() {
        let mine: Vec<&Task> = t.iter().filter(|t| t.node == lab.node_name(i)).collect();
        let ctrs = containers(d);
        assert_eq!(ctrs.len(), 1, "host {i}: {ctrs:?}");
        assert!(ctrs
            .keys()
            .all(|n| n.starts_with(&format!("web.{}.", mine[0].replica))));
    }

    let victim = lab.node_name(2);
    let lost = t
        .iter()
        .find(|t| t.node == victim)
        .cloned()
        .expect("a replica there");
    lab.host_mut(2).stop("KILL");
    let killed = Instant::now();
    let moved = retry(
        &format!("replica {} of {victim} to be placed again", lost.replica),
        300,
        Duration::from_millis(100),
        || {
            let t = tasks(lab.host(0), "web");
            let r = t.iter().find(|t| t.replica == lost.replica);
            let all_running = t.len() == 3 && t.iter().all(|t| t.state == "running" && t.live);
            match r {
                Some(r) if r.node != victim && all_running => Ok((killed.elapsed(), r.clone())),
                _ => Err(format!("{t:#?}")),
            }
        },
    );
    println!(
        "replica {} of {victim} running on {} {:.1} s after the kill (lease {SHORT_TTL} s)",
        lost.replica,
        moved.1.node,
        moved.0.as_secs_f64()
    );
    assert!(
        [lab.node_name(0), lab.node_name(1)].contains(&moved.1.node),
        "{:?}",
        moved.1
    );
    assert_ne!(moved.1.container, lost.container);
    assert!(
        moved.0 >= Duration::from_secs(1),
        "moved {:?} after the kill, before the lease could expire",
        moved.0
    );
    let on1 = wait_running(lab.host(1), "web", 3);
    assert!(on1.iter().all(|t| t.node != victim), "{on1:#?}");
    assert_eq!(services(lab.host(1))[0]["Replicas"], "3/3");
}

// ----- many hosts: the routing mesh -------------------------------------------

/// Creates `web` with `replicas` [`whoami`] replicas of `spec` publishing
/// `publish` on overlay `ov`, waits until every host runs them; returns
/// the tasks and the replicas' hostnames.
fn mesh_service(
    lab: &Lab,
    svcs: &Services,
    replicas: usize,
    publish: &str,
    spec: &str,
    extra: &[&str],
) -> (Vec<Task>, BTreeSet<String>) {
    let n = replicas.to_string();
    let mut args = vec!["--replicas", &n, "--network", "ov", "-p", publish];
    args.extend_from_slice(extra);
    svcs.create(lab.host(0), "web", &args, &whoami(spec));
    let t = wait_running_everywhere(lab, "web", replicas);
    let names = t.iter().map(|t| t.hostname("web")).collect();
    (t, names)
}

#[test]
fn datapath_every_host_answers_the_ingress_port_evenly_with_the_clients_address() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    let (t, all) = mesh_service(&lab, &svcs, 3, "published=8080,target=80", "tcp:80", &[]);
    let nodes: BTreeSet<String> = t.iter().map(|t| t.node.clone()).collect();
    assert_eq!(nodes.len(), 3, "one replica per host: {t:#?}");
    let client = Client::Ns(&lab.plain(0).ns);
    let cip = lab.plain(0).ip.clone();
    let hosts = host_ips(&lab);
    client.wait_answers("tcp", 8080, &hosts, &all, true);

    let n = 3000;
    let started = Instant::now();
    let flows = client.burst("tcp", 8080, n, 0, 2.0, 20, &hosts);
    let took = started.elapsed();
    assert_all_ok("ingress TCP", &flows, n, lab.hosts());
    for h in &hosts {
        let mine: Vec<Flow> = flows.iter().filter(|f| &f.host == h).cloned().collect();
        println!("via {h}: {:?}", spread(&mine));
        assert_eq!(mine.len(), n / hosts.len());
    }
    assert_even("ingress TCP, all hosts", &flows, &all);
    let sports: BTreeSet<u16> = flows.iter().map(|f| f.sport).collect();
    println!(
        "{n} connections from {} source ports in {:.1} s",
        sports.len(),
        took.as_secs_f64()
    );
    let wrong: Vec<&Flow> = flows
        .iter()
        .filter(|f| f.peer_ip() != cip || f.peer_port() != f.sport)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "replicas saw another address than the client's {cip}: {wrong:?}"
    );
}

#[test]
fn datapath_scaling_keeps_established_connections_and_moves_the_fewest_flows() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    let (_, all3) = mesh_service(&lab, &svcs, 3, "published=8080,target=80", "tcp:80", &[]);
    let client = Client::Ns(&lab.plain(0).ns);
    let cip = lab.plain(0).ip.clone();
    let hosts = host_ips(&lab);
    client.wait_answers("tcp", 8080, &hosts, &all3, true);

    let held = Held::open(&lab.plain(0).ns, 8080, 15, &hosts);
    let before = held.next_round();
    assert!(before.iter().all(Result::is_ok), "{before:?}");

    // The same 2,000 flows (fixed source ports) before and after each step.
    let n = 2000;
    let replay_from = fresh_sports(n);
    let replay = || -> BTreeMap<(String, u16), String> {
        let flows = client.burst("tcp", 8080, n, replay_from, 2.0, 20, &hosts);
        assert_all_ok("replayed flows", &flows, n, lab.hosts());
        flows
            .into_iter()
            .map(|f| ((f.host, f.sport), f.replica))
            .collect()
    };
    let moved = |a: &BTreeMap<(String, u16), String>, b: &BTreeMap<(String, u16), String>| {
        a.iter().filter(|(k, r)| b.get(*k) != Some(*r)).count() as f64 / a.len() as f64
    };
    let a = replay();

    // 3 -> 5: 2/5 of the flows must move to the new replicas, no more.
    lab.host(1).ok(&["service", "scale", "web=5"]);
    let t5 = wait_running_everywhere(&lab, "web", 5);
    let all5: BTreeSet<String> = t5.iter().map(|t| t.hostname("web")).collect();
    client.wait_answers("tcp", 8080, &hosts, &all5, true);
    forget_flows(&lab, &cip, replay_from, n);
    let b = replay();
    let m35 = moved(&a, &b);
    let among_old = a
        .iter()
        .filter(|(k, r)| b.get(*k).is_some_and(|x| x != *r && all3.contains(x)))
        .count() as f64
        / n as f64;
    let to_new = b.values().filter(|r| !all3.contains(*r)).count() as f64 / n as f64;
    println!(
        "3 -> 5: {:.1} % of flows moved; {:.1} % to the new replicas (their share, the least possible; 40 % expected), {:.2} % between old replicas",
        m35 * 100.0,
        to_new * 100.0,
        among_old * 100.0
    );
    assert!(m35 <= 0.4 + DISRUPTION_SLACK, "3 -> 5 moved {m35:.3}");
    assert!(
        m35 >= 0.4 - DISRUPTION_SLACK,
        "3 -> 5 moved only {m35:.3}: new replicas get too little"
    );
    assert!(
        among_old <= 0.02,
        "{among_old:.3} of flows moved between old replicas"
    );
    let after5 = held.next_round();
    assert_held("after 3 -> 5", &before, &after5, &BTreeSet::new());

    // 5 -> 2: replicas 3-5 go; only their 3/5 of the flows may move.
    lab.host(2).ok(&["service", "scale", "web=2"]);
    let t2 = wait_running_everywhere(&lab, "web", 2);
    let all2: BTreeSet<String> = t2.iter().map(|t| t.hostname("web")).collect();
    assert!(all2.is_subset(&all3));
    client.wait_answers("tcp", 8080, &hosts, &all2, true);
    forget_flows(&lab, &cip, replay_from, n);
    let c = replay();
    let m52 = moved(&b, &c);
    let survivors_moved = b
        .iter()
        .filter(|(k, r)| all2.contains(*r) && c.get(*k) != Some(*r))
        .count() as f64
        / n as f64;
    // The least any table could move: the flows whose replica went.
    let least = b.values().filter(|r| !all2.contains(*r)).count() as f64 / n as f64;
    println!(
        "5 -> 2: {:.1} % of flows moved; {:.1} % had a removed replica (the least possible; 60 % expected), {:.2} % left a surviving one",
        m52 * 100.0,
        least * 100.0,
        survivors_moved * 100.0
    );
    assert!(m52 <= 0.6 + DISRUPTION_SLACK, "5 -> 2 moved {m52:.3}");
    assert!(
        survivors_moved <= 0.02,
        "{survivors_moved:.3} of flows left surviving replicas"
    );
    let gone: BTreeSet<String> = all5.difference(&all2).cloned().collect();
    let after2 = held.next_round();
    assert_held("after 5 -> 2", &before, &after2, &gone);
    let kept_expected = before
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_ok_and(|t| all2.contains(t.split('/').next().unwrap_or("")))
        })
        .count();
    assert_eq!(after2.iter().filter(|r| r.is_ok()).count(), kept_expected);
}

#[test]
fn datapath_a_killed_replica_leaves_every_hosts_table_within_2s() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    // The health check makes a restarted replica wait outside the tables
    // until it listens, so that the only failures after the kill are flows
    // sent to the dead one.
    let (t, all) = mesh_service(
        &lab,
        &svcs,
        3,
        "published=8080,target=80",
        "tcp:80",
        &[
            "--health-cmd",
            "nc -z -w1 127.0.0.1 80",
            "--health-interval",
            "300ms",
        ],
    );
    let client = Client::Ns(&lab.plain(0).ns);
    let hosts = host_ips(&lab);
    client.wait_answers("tcp", 8080, &hosts, &all, true);
    let held = Held::open(&lab.plain(0).ns, 8080, 15, &hosts);
    let before = held.next_round();
    assert!(before.iter().all(Result::is_ok), "{before:?}");

    let victim = t[2].clone();
    let k = (0..3)
        .find(|i| lab.node_name(*i) == victim.node)
        .expect("the victim's host");
    let pid = lab.host(k).inspect(&victim.container)["State"]["Pid"]
        .as_u64()
        .expect("a running replica has a pid") as u32;
    let name = victim.hostname("web");
    signal(pid, "KILL");
    let killed = Instant::now();
    // Its restart (same task, same hostname, a new pid) may answer.
    let (bad, clean) = time_until_clean(&client, "tcp", 8080, &hosts, &all, killed);
    println!(
        "killed replica {name} out of every host's table by {:.2} s after the kill (last failed flow in the round at {})",
        clean.as_secs_f64(),
        bad.map_or("-".to_string(), |b| format!("{:.2} s", b.as_secs_f64()))
    );
    assert!(clean <= REMOVAL, "out only {clean:?} after the kill");

    let after = held.next_round();
    assert_held(
        "after the kill",
        &before,
        &after,
        &BTreeSet::from([name.clone()]),
    );
    let flows = client.burst("tcp", 8080, 300, 0, 2.0, 5, &hosts);
    assert_all_ok("after the kill", &flows, 300, lab.hosts());
    let killed_tag = format!("{name}/{pid}");
    assert!(
        flows.iter().all(|f| f.instance != killed_tag),
        "the killed process answered"
    );
    println!("spread after the kill: {:?}", spread(&flows));
    for r in all.iter().filter(|r| **r != name) {
        assert!(
            spread(&flows).get(r).copied().unwrap_or(0) > 0,
            "{r} got nothing"
        );
    }
    // It is restarted and takes connections again.
    retry(
        "the killed replica to be restarted",
        100,
        Duration::from_millis(100),
        || {
            let v = tasks(lab.host(0), "web");
            v.iter()
                .find(|t| t.replica == victim.replica && t.restarts >= 1 && t.live)
                .map(|_| ())
                .ok_or(format!("{v:#?}"))
        },
    );
    client.wait_answers("tcp", 8080, &hosts, &all, true);
}

#[test]
fn datapath_a_udp_service_answers_on_every_host_evenly_with_the_clients_address() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    let (_, all) = mesh_service(
        &lab,
        &svcs,
        3,
        "published=5353,target=53,protocol=udp",
        "udp:53",
        &[],
    );
    let client = Client::Ns(&lab.plain(0).ns);
    let cip = lab.plain(0).ip.clone();
    let hosts = host_ips(&lab);
    client.wait_answers("udp", 5353, &hosts, &all, true);
    let n = 3000;
    let flows = client.burst("udp", 5353, n, 0, 2.0, 20, &hosts);
    assert_all_ok("ingress UDP", &flows, n, lab.hosts());
    assert_even("ingress UDP", &flows, &all);
    let wrong: Vec<&Flow> = flows
        .iter()
        .filter(|f| {
            f.peer_ip() != cip || f.peer_port() != f.sport || f.from != format!("{}:5353", f.host)
        })
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "replicas saw another client than {cip}, or the answer came from elsewhere: {wrong:?}"
    );
}

#[test]
fn host_mode_answers_only_where_a_replica_runs_and_to_that_replica() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    let (t, _) = mesh_service(
        &lab,
        &svcs,
        2,
        "published=8081,target=80,mode=host",
        "tcp:80",
        &[],
    );
    let client = Client::Ns(&lab.plain(0).ns);
    let cip = lab.plain(0).ip.clone();
    let mut without = 0;
    for i in 0..3 {
        let ip = vec![lab.host_ip(i)];
        match t.iter().find(|t| t.node == lab.node_name(i)) {
            Some(local) => {
                let want = BTreeSet::from([local.hostname("web")]);
                client.wait_answers("tcp", 8081, &ip, &want, true);
                let flows = client.burst("tcp", 8081, 100, 0, 2.0, 5, &ip);
                assert_all_ok("host mode", &flows, 100, lab.hosts());
                assert_eq!(
                    spread(&flows).keys().cloned().collect::<BTreeSet<_>>(),
                    want
                );
                assert!(flows.iter().all(|f| f.peer_ip() == cip), "{:?}", flows[0]);
            }
            None => {
                without += 1;
                let flows = client.burst("tcp", 8081, 5, 0, 0.5, 5, &ip);
                assert!(
                    flows.iter().all(|f| !f.ok),
                    "host {i} has no replica but answered: {flows:?}"
                );
            }
        }
    }
    assert_eq!(without, 1, "two replicas on two of three hosts: {t:#?}");
}

#[test]
fn datapath_a_vip_is_reached_from_a_container_on_another_host() {
    let lab = Lab::new(3, TTL);
    overlay(&lab, "ov", "10.91.0.0/24");
    let svcs = Services::new(lab.hosts());
    let (t, all) = mesh_service(&lab, &svcs, 2, "published=8082,target=80", "tcp:80", &[]);
    let k = (0..3)
        .find(|i| !t.iter().any(|t| t.node == lab.node_name(*i)))
        .expect("a host without a replica");
    let d = lab.host(k);
    d.run_sleeper("client", Some("ov"), &[]);
    let cip = d.ip("client", "ov");
    let v = vip(d, "web");
    assert_eq!(resolve(d, "client", "web"), std::slice::from_ref(&v));
    assert_eq!(resolve(d, "client", "tasks.web"), sorted_ips(&t));
    // A dnsrr service's name gives its replicas, on another host too.
    svcs.create(
        lab.host(0),
        "rr",
        &[
            "--replicas",
            "2",
            "--network",
            "ov",
            "--endpoint-mode",
            "dnsrr",
        ],
        &sleeper(),
    );
    let rr = wait_running_everywhere(&lab, "rr", 2);
    retry(
        "rr in the names of every host",
        50,
        Duration::from_millis(100),
        || {
            let got = resolve(d, "client", "rr");
            (got == sorted_ips(&rr))
                .then_some(())
                .ok_or(format!("{got:?}"))
        },
    );
    let client = Client::Container(d, "client");
    client.wait_answers("tcp", 80, std::slice::from_ref(&v), &all, true);
    let flows = client.burst("tcp", 80, 200, 0, 2.0, 5, &[v.clone(), "web".to_string()]);
    assert_all_ok("VIP from another host", &flows, 200, lab.hosts());
    println!("VIP {v} from host {k}: {:?}", spread(&flows));
    assert_eq!(spread(&flows).keys().cloned().collect::<BTreeSet<_>>(), all);
    assert!(
        flows.iter().all(|f| f.peer_ip() == cip),
        "the replicas saw another address than the client's {cip}: {:?}",
        flows.iter().find(|f| f.peer_ip() != cip)
    );
}

#[test]
fn datapath_a_port_used_again_through_another_host_after_close_is_answered() {
    let lab = mesh_lab(TTL);
    let svcs = Services::new(lab.hosts());
    let (_, all) = mesh_service(&lab, &svcs, 3, "published=8080,target=80", "tcp:80", &[]);
    let client = Client::Ns(&lab.plain(0).ns);
    let hosts = host_ips(&lab);
    client.wait_answers("tcp", 8080, &hosts, &all, true);
    // The same 60 source ports through each host in turn, every flow reset
    // before the next opens: where two land on one replica, it sees one
    // 4-tuple again after it closed, as from a client that uses one source
    // port for the whole mesh (or a NAT in front of many clients).
    let n = 60;
    let first = fresh_sports(n);
    let mut flows = Vec::new();
    for h in &hosts {
        flows.extend(client.burst("tcp", 8080, n, first, 1.0, 10, std::slice::from_ref(h)));
    }
    let mut by_port: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.ok) {
        by_port.entry(f.sport).or_default().push(&f.replica);
    }
    let reused = by_port
        .values()
        .filter(|r| r.iter().collect::<BTreeSet<_>>().len() < r.len())
        .count();
    println!("{reused} of {n} source ports met one replica again through another host");
    assert_all_ok(
        "a port used again through another host",
        &flows,
        n * hosts.len(),
        lab.hosts(),
    );
    assert!(
        reused > 0,
        "no port met a replica twice: the case was not tried"
    );
}

#[test]
fn datapath_a_lost_hosts_replica_is_replaced_in_every_live_hosts_table() {
    let mut lab = Lab::new(3, SHORT_TTL);
    lab.add_plain_host();
    overlay(&lab, "ov", "10.91.0.0/24");
    let svcs = Services::new(lab.hosts());
    let (t, all) = mesh_service(&lab, &svcs, 3, "published=8080,target=80", "tcp:80", &[]);
    let client = Client::Ns(&lab.plain(0).ns);
    let hosts = host_ips(&lab);
    client.wait_answers("tcp", 8080, &hosts, &all, true);
    let victim = lab.node_name(2);
    let lost = t
        .iter()
        .find(|t| t.node == victim)
        .cloned()
        .expect("a replica there");
    let name = lost.hostname("web");
    let before = client.burst("tcp", 8080, 60, 0, 2.0, 2, &hosts);
    let old: BTreeSet<String> = before
        .iter()
        .filter(|f| f.replica == name)
        .map(|f| f.instance.clone())
        .collect();
    assert_eq!(old.len(), 1, "{before:?}");

    lab.host_mut(2).stop("KILL");
    let killed = Instant::now();
    let client = Client::Ns(&lab.plain(0).ns);
    retry(
        "the lost replica to run elsewhere",
        300,
        Duration::from_millis(100),
        || {
            let v = tasks(lab.host(0), "web");
            let ok = v.len() == 3 && v.iter().all(|t| t.live && t.node != victim);
            ok.then_some(()).ok_or(format!("{v:#?}"))
        },
    );
    // The two live hosts answer from the new start of that replica (its
    // old container still runs on the dead host, unreachable by new flows).
    let live = hosts[..2].to_vec();
    client.wait_answers("tcp", 8080, &live, &all, true);
    println!(
        "every live host's table has the replaced replica {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let flows = client.burst("tcp", 8080, 300, 0, 2.0, 5, &live);
    assert_all_ok("after the re-placement", &flows, 300, &lab.hosts()[..2]);
    println!("after the re-placement: {:?}", spread(&flows));
    assert_eq!(spread(&flows).keys().cloned().collect::<BTreeSet<_>>(), all);
    let stale: Vec<&Flow> = flows.iter().filter(|f| old.contains(&f.instance)).collect();
    assert!(
        stale.is_empty(),
        "the lost host's old replica still takes new flows: {stale:?}"
    );
}

#[test]
fn datapath_one_host_answers_its_ingress_port_from_outside_and_from_itself() {
    let d = Daemon::start();
    let svcs = Services::new([&d]);
    let outside = dataplane_tests::Outside::new(&d);
    d.network_create(&["--subnet", "10.97.0.0/24", "n"]);
    svcs.create(
        &d,
        "web",
        &[
            "--replicas",
            "2",
            "--network",
            "n",
            "-p",
            "published=8080,target=80",
        ],
        &whoami("tcp:80"),
    );
    let t = wait_running(&d, "web", 2);
    let all: BTreeSet<String> = t.iter().map(|t| t.hostname("web")).collect();
    let host = vec![dataplane_tests::HOST_IP.to_string()];

    // From outside: balanced over both, each seeing the client's address.
    let client = Client::Ns(outside.ns());
    client.wait_answers("tcp", 8080, &host, &all, true);
    let flows = client.burst("tcp", 8080, 200, 0, 2.0, 5, &host);
    assert_all_ok("from outside", &flows, 200, std::slice::from_ref(&d));
    println!("from outside: {:?}", spread(&flows));
    assert_eq!(spread(&flows).keys().cloned().collect::<BTreeSet<_>>(), all);
    assert!(
        flows
            .iter()
            .all(|f| f.peer_ip() == dataplane_tests::OUTSIDE_IP),
        "{:?}",
        flows
            .iter()
            .find(|f| f.peer_ip() != dataplane_tests::OUTSIDE_IP)
    );

    // From the host itself (no TC program sees loopback: the socket hooks).
    let local = vec!["127.0.0.1".to_string()];
    let from_host = Client::Ns(d.ns());
    from_host.wait_answers("tcp", 8080, &local, &all, true);

    // And no host process can take the port the mesh answers.
    let bind = d.ns().exec(&[
        "python3",
        "-c",
        "import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080))",
    ]);
    assert!(
        !bind.success() && bind.stderr.contains("Address already in use"),
        "a host process bound the ingress port: {bind}"
    );
}

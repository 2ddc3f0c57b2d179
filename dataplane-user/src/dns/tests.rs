//! End-to-end tests: a real server in a throwaway network namespace, queried
//! from inside it at 127.0.0.11:53, with fake upstreams on this process's
//! loopback (the daemon's side). They need root (`ip netns`, `setns`).

use std::{
    collections::HashSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, OpCode, Query, ResponseCode},
    rr::{
        rdata::{A, PTR},
        Name, RData, Record, RecordType,
    },
};
use tokio::runtime::Runtime;

use super::{in_netns, Dns, NameEntry, Names, NetworkNames, SandboxServer};

/// The container every test server belongs to (the asker).
const CLIENT: &str = "c-client";
const WEB1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 4);
/// How long a test client waits for an answer it expects.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- fixture

/// A network namespace of one test, deleted on drop (even on panic).
struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "dpdns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        // From here on the guard owns the namespace.
        let netns = Self {
            path: crate::netns::path_of(&name),
            name,
        };
        ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip");
    assert!(status.success(), "ip {args:?}: {status}");
}

fn entry(container_id: &str, names: &[&str], ip: Ipv4Addr) -> NameEntry {
    NameEntry {
        container_id: container_id.into(),
        names: names.iter().map(|name| name.to_string()).collect(),
        ip,
    }
}

/// `frontend`: the client and two web containers sharing the alias `web`;
/// `backend`: a database the client is not attached to.
fn table() -> Names {
    let mut names = Names::default();
    names.networks.insert(
        "net-front".into(),
        NetworkNames {
            name: "frontend".into(),
            entries: vec![
                entry(CLIENT, &["client", "client-host"], [10, 1, 0, 2].into()),
                entry("c-web1", &["web1", "web1-host", "web"], WEB1),
                entry("c-web2", &["web2", "web2-host", "web", "Web2-Alias."], WEB2),
            ],
        },
    );
    names.networks.insert(
        "net-back".into(),
        NetworkNames {
            name: "backend".into(),
            entries: vec![entry("c-db", &["db"], [10, 2, 0, 5].into())],
        },
    );
    names
}

/// A server for `CLIENT` in its own namespace, on its own runtime (the
/// daemon's, in miniature). Fields drop in order: server, namespace, runtime.
struct Sandbox {
    server: Option<SandboxServer>,
    /// Where the server listens (127.0.0.11 and a port of its own; no
    /// socket hooks here to send :53 there).
    addr: std::net::SocketAddr,
    dns: Dns,
    netns: TestNetns,
    _runtime: Runtime,
}

impl Sandbox {
    /// `defaults`: the daemon's upstreams; `own`: the container's `--dns`.
    fn start(defaults: &[SocketAddr], own: Option<&[SocketAddr]>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dns = {
            let _in_runtime = runtime.enter();
            Dns::new(defaults.to_vec())
        };
        dns.update(table());
        let netns = TestNetns::new();
        // Called off the runtime, as the daemon does from spawn_blocking.
        let server = dns
            .start_sandbox(&netns.path, CLIENT, own.map(<[_]>::to_vec))
            .expect("starting the server");
        Self {
            addr: server.addr(),
            server: Some(server),
            dns,
            netns,
            _runtime: runtime,
        }
    }

    /// A UDP socket in the sandbox, connected to the server.
    fn udp_client(&self, wait: Duration) -> UdpSocket {
        let addr = self.addr;
        in_netns(&self.netns.path, move || {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.connect(addr)?;
            socket.set_read_timeout(Some(wait))?;
            Ok(socket)
        })
        .expect("opening a client socket")
    }

    /// Sends `bytes` over UDP; the reply, or `None` if none came in `wait`.
    fn udp_raw(&self, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = self.udp_client(wait);
        socket.send(bytes).unwrap();
        let mut buf = vec![0; 65535];
        let len = socket.recv(&mut buf).ok()?;
        Some(buf[..len].to_vec())
    }

    fn udp(&self, query: &Message) -> Message {
        let reply = self
            .udp_raw(&query.to_vec().unwrap(), ANSWER_WAIT)
            .expect("no answer over UDP");
        parse_reply(query, &reply)
    }

    fn tcp(&self, query: &Message) -> Message {
        let addr = self.addr;
        let mut stream = in_netns(&self.netns.path, move || TcpStream::connect(addr)).unwrap();
        stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
        write_framed(&mut stream, &query.to_vec().unwrap());
        let reply = read_framed(&mut stream).expect("no answer over TCP");
        parse_reply(query, &reply)
    }

    /// The addresses of a NOERROR answer to `A name`.
    fn addresses(&self, name: &str) -> Vec<Ipv4Addr> {
        let reply = self.udp(&question(name, RecordType::A));
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        a_records(&reply)
    }

    fn rcode(&self, name: &str) -> ResponseCode {
        self.udp(&question(name, RecordType::A))
            .metadata
            .response_code
    }
}

fn question(name: &str, query_type: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), query_type));
    message
}

/// The reply, checked to answer `query` (id, question).
fn parse_reply(query: &Message, bytes: &[u8]) -> Message {
    let reply = Message::from_vec(bytes).expect("unparsable reply");
    assert_eq!(reply.metadata.id, query.metadata.id, "reply id");
    assert_eq!(reply.queries, query.queries, "reply question");
    reply
}

fn a_records(reply: &Message) -> Vec<Ipv4Addr> {
    reply
        .answers
        .iter()
        .map(|record| match record.data {
            RData::A(A(ip)) => ip,
            ref other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

fn sorted(mut ips: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    ips.sort();
    ips
}

/// One DNS message over TCP: two-byte length, then the message.
fn write_framed(stream: &mut TcpStream, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
    stream.write_all(&[&len[..], bytes].concat()).unwrap();
}

fn read_framed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0; 2];
    stream.read_exact(&mut len).ok()?;
    let mut bytes = vec![0; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut bytes).ok()?;
    Some(bytes)
}

// ---------------------------------------------------------- fake upstream

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    /// `ext.example.` → 192.0.2.1; `big.example.` → TC over UDP, three
    /// addresses over TCP; anything else → NXDOMAIN.
    Answer,
    /// Reads the queries and never answers.
    Silent,
}

/// An upstream server on this process's loopback (the daemon's side), UDP
/// and TCP on the same port; it stops on drop.
struct FakeUpstream {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How often the fake's loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

impl FakeUpstream {
    fn start(behaviour: Behaviour) -> Self {
        let (udp, tcp) = bind_same_port();
        let addr = udp.local_addr().unwrap();
        let mut fake = Self {
            addr,
            udp_queries: Arc::default(),
            tcp_queries: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let (stop, count) = (fake.stop.clone(), fake.udp_queries.clone());
        fake.threads.push(std::thread::spawn(move || {
            serve_udp(udp, behaviour, &stop, &count)
        }));
        let (stop, count) = (fake.stop.clone(), fake.tcp_queries.clone());
        fake.threads.push(std::thread::spawn(move || {
            serve_tcp(tcp, behaviour, &stop, &count)
        }));
        fake
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on one free loopback port.
fn bind_same_port() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no free port for the fake upstream");
}

fn serve_udp(socket: UdpSocket, behaviour: Behaviour, stop: &AtomicBool, count: &AtomicUsize) {
    socket.set_read_timeout(Some(POLL)).unwrap();
    let mut buf = vec![0; 65535];
    while !stop.load(Ordering::Relaxed) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        count.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = fake_reply(&buf[..len], behaviour, false) {
            socket.send_to(&reply, peer).unwrap();
        }
    }
}

fn serve_tcp(listener: TcpListener, behaviour: Behaviour, stop: &AtomicBool, count: &AtomicUsize) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(POLL);
            continue;
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(ANSWER_WAIT)).unwrap();
        while let Some(query) = read_framed(&mut stream) {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = fake_reply(&query, behaviour, true) {
                write_framed(&mut stream, &reply);
            }
        }
    }
}

fn fake_reply(query: &[u8], behaviour: Behaviour, over_tcp: bool) -> Option<Vec<u8>> {
    if behaviour == Behaviour::Silent {
        return None;
    }
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    let record = |last: u8| {
        let ip = Ipv4Addr::new(192, 0, 2, last);
        Record::from_rdata(question.name.clone(), 60, RData::A(A(ip)))
    };
    match question.name.to_ascii().as_str() {
        "ext.example." => {
            reply.add_answer(record(1));
        }
        "big.example." if over_tcp => {
            reply.add_answers([record(10), record(11), record(12)]);
        }
        "big.example." => reply.metadata.truncation = true,
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.add_query(question);
    reply.to_vec().ok()
}

/// A loopback UDP port nobody listens on (queries to it are refused).
fn closed_port() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

// ------------------------------------------------------------------ tests

#[test]
fn container_name_resolves() {
    let sandbox = Sandbox::start(&[], None);
    let reply = sandbox.udp(&question("web1.", RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&reply), [WEB1]);
    assert_eq!(reply.answers[0].ttl, 600);
    assert_eq!(reply.answers[0].name, Name::from_ascii("web1.").unwrap());
}

#[test]
fn shared_alias_returns_every_address_shuffled() {
    let sandbox = Sandbox::start(&[], None);
    let mut orders = HashSet::new();
    for _ in 0..20 {
        let ips = sandbox.addresses("web.");
        assert_eq!(sorted(ips.clone()), [WEB1, WEB2]);
        orders.insert(ips);
    }
    assert_eq!(orders.len(), 2, "20 answers, always in the same order");
}

#[test]
fn hostname_resolves() {
    let sandbox = Sandbox::start(&[], None);
    assert_eq!(sandbox.addresses("web1-host."), [WEB1]);
}

#[test]
fn name_dot_network_resolves() {
    let sandbox = Sandbox::start(&[], None);
    assert_eq!(sandbox.addresses("web2.frontend."), [WEB2]);
    assert_eq!(sorted(sandbox.addresses("web.frontend.")), [WEB1, WEB2]);
}

#[test]
fn names_match_case_insensitively() {
    let sandbox = Sandbox::start(&[], None);
    assert_eq!(sandbox.addresses("WeB1.FrontEnd."), [WEB1]);
    // Stored as `Web2-Alias.`: case and trailing dot do not matter.
    assert_eq!(sandbox.addresses("web2-alias."), [WEB2]);
}

#[test]
fn other_networks_are_invisible_and_forwarded() {
    // Docker forwards a name it does not see; the upstream says NXDOMAIN.
    let upstream = FakeUpstream::start(Behaviour::Answer);
    let sandbox = Sandbox::start(&[upstream.addr], None);
    assert_eq!(sandbox.rcode("db."), ResponseCode::NXDomain);
    assert_eq!(sandbox.rcode("db.backend."), ResponseCode::NXDomain);
    assert_eq!(upstream.udp_queries.load(Ordering::Relaxed), 2);
}

#[test]
fn other_networks_are_invisible_without_upstream() {
    // No upstream at all: SERVFAIL, and at once.
    let sandbox = Sandbox::start(&[], None);
    let started = Instant::now();
    assert_eq!(sandbox.rcode("db."), ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn reverse_lookup_names_the_container() {
    let sandbox = Sandbox::start(&[], None);
    let reply = sandbox.udp(&question("3.0.1.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(
        reply.answers[0].data,
        RData::PTR(PTR(Name::from_ascii("web1.").unwrap()))
    );
    // The database's IP is on a network the client is not attached to.
    let reply = sandbox.udp(&question("5.0.2.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn other_types_of_local_names_are_empty() {
    let sandbox = Sandbox::start(&[], None);
    for query_type in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
        let reply = sandbox.udp(&question("web1.", query_type));
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty(), "{query_type}");
    }
}

#[test]
fn update_is_seen_by_the_next_query() {
    let sandbox = Sandbox::start(&[], None);
    assert_eq!(sandbox.rcode("newcomer."), ResponseCode::ServFail);
    let mut names = table();
    let front = names.networks.get_mut("net-front").unwrap();
    front.entries.retain(|entry| entry.container_id != "c-web1");
    let newcomer = Ipv4Addr::new(10, 1, 0, 9);
    front.entries.push(entry("c-new", &["newcomer"], newcomer));
    sandbox.dns.update(names);
    assert_eq!(sandbox.addresses("newcomer."), [newcomer]);
    assert_eq!(sandbox.rcode("web1."), ResponseCode::ServFail);
    assert_eq!(sandbox.addresses("web."), [WEB2]);
}

#[test]
fn unknown_names_are_forwarded() {
    let upstream = FakeUpstream::start(Behaviour::Answer);
    let sandbox = Sandbox::start(&[upstream.addr], None);
    let reply = sandbox.udp(&question("ext.example.", RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.recursion_available);
    assert_eq!(a_records(&reply), [Ipv4Addr::new(192, 0, 2, 1)]);
    // A single label unknown here goes upstream too, as in Docker.
    assert_eq!(sandbox.rcode("nosuchhost."), ResponseCode::NXDomain);
    assert_eq!(upstream.udp_queries.load(Ordering::Relaxed), 2);
}

#[test]
fn container_upstreams_replace_the_defaults_and_are_tried_in_order() {
    let silent = FakeUpstream::start(Behaviour::Silent);
    let upstream = FakeUpstream::start(Behaviour::Answer);
    let own = [closed_port(), upstream.addr];
    let sandbox = Sandbox::start(&[silent.addr], Some(&own));
    let started = Instant::now();
    assert_eq!(
        sandbox.addresses("ext.example."),
        [Ipv4Addr::new(192, 0, 2, 1)]
    );
    // The refused first server is skipped at once, not after a timeout.
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(silent.udp_queries.load(Ordering::Relaxed), 0);
}

#[test]
fn truncated_answers_are_retried_over_tcp() {
    let upstream = FakeUpstream::start(Behaviour::Answer);
    let sandbox = Sandbox::start(&[upstream.addr], None);
    let reply = sandbox.udp(&question("big.example.", RecordType::A));
    assert!(!reply.metadata.truncation);
    assert_eq!(
        a_records(&reply),
        [10, 11, 12].map(|last| Ipv4Addr::new(192, 0, 2, last))
    );
    assert_eq!(upstream.udp_queries.load(Ordering::Relaxed), 1);
    assert_eq!(upstream.tcp_queries.load(Ordering::Relaxed), 1);
}

#[test]
fn silent_upstream_gives_servfail_in_time() {
    let upstream = FakeUpstream::start(Behaviour::Silent);
    let sandbox = Sandbox::start(&[upstream.addr], None);
    let started = Instant::now();
    assert_eq!(sandbox.rcode("ext.example."), ResponseCode::ServFail);
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(upstream.udp_queries.load(Ordering::Relaxed), 1);
}

#[test]
fn malformed_packets_do_not_stop_the_server() {
    let sandbox = Sandbox::start(&[], None);
    // Shorter than a header: nothing to answer.
    let wait = Duration::from_millis(500);
    assert_eq!(sandbox.udp_raw(b"\x12\x34\x01", wait), None);
    // A header announcing a question that is cut short: FORMERR.
    let query = question("web1.", RecordType::A);
    let mut bytes = query.to_vec().unwrap();
    bytes.truncate(15);
    let reply = sandbox.udp_raw(&bytes, ANSWER_WAIT).expect("no FORMERR");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, query.metadata.id);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Still serving.
    assert_eq!(sandbox.addresses("web1."), [WEB1]);
}

#[test]
fn local_names_resolve_over_tcp() {
    let sandbox = Sandbox::start(&[], None);
    let reply = sandbox.tcp(&question("web1.", RecordType::A));
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&reply), [WEB1]);
}

#[test]
fn other_opcodes_are_not_implemented() {
    let sandbox = Sandbox::start(&[], None);
    let mut query = question("web1.", RecordType::A);
    query.metadata.op_code = OpCode::Status;
    let reply = sandbox.udp(&query);
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let mut sandbox = Sandbox::start(&[], None);
    assert_eq!(sandbox.addresses("web1."), [WEB1]);
    drop(sandbox.server.take());
    // The tasks are aborted asynchronously; the listener closes soon after.
    let deadline = Instant::now() + Duration::from_secs(2);
    let path = sandbox.netns.path.clone();
    let addr = sandbox.addr;
    while in_netns(&path, move || TcpStream::connect(addr)).is_ok() {
        assert!(Instant::now() < deadline, "still listening");
        std::thread::sleep(POLL);
    }
    assert_eq!(
        sandbox.udp_raw(&question("web1.", RecordType::A).to_vec().unwrap(), POLL),
        None
    );
}

#[test]
fn missing_namespace_is_an_error() {
    let runtime = Runtime::new().unwrap();
    let dns = {
        let _in_runtime = runtime.enter();
        Dns::new(Vec::new())
    };
    let missing = std::path::Path::new("/var/run/netns/dpdns-no-such-namespace");
    assert!(dns.start_sandbox(missing, CLIENT, None).is_err());
}

#[test]
fn resolv_conf_nameservers_become_upstreams() {
    let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\n\
                nameserver 192.0.2.53 \n  nameserver\t2001:db8::53\nnameserver ::1\n\
                nameserver bogus\noptions edns0\n;nameserver 192.0.2.99\n";
    assert_eq!(
        Dns::upstreams_from_resolv_conf(text),
        [
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ]
    );
}

//! The DNS part of `cargo xtask bench`: how fast a sandbox resolves a local
//! name through the daemon's embedded resolver (127.0.0.11:53), against a
//! Docker `--link` style lookup answered from the sandbox's /etc/hosts.
//!
//! Everything runs from inside sandbox 1 of setup (d) (created with
//! `--link <sandbox 2>:peerlink`), as `ip netns exec <SandboxID> xtask
//! dns-client ...`, so the client sees the sandbox's bind-mounted
//! /etc/resolv.conf and /etc/hosts, exactly as a process of the container:
//!
//! - raw: sequential UDP A queries to 127.0.0.11:53 (hickory-proto builds
//!   and parses the messages), one outstanding at a time;
//! - libc: `getaddrinfo` in a loop, for a name glibc must ask the resolver
//!   about (`dns`) or one it finds in /etc/hosts (`hosts`).
//!
//! Every answer is checked against sandbox 2's address; a wrong one fails
//! the run.

use std::{
    collections::BTreeSet,
    ffi::{CStr, CString},
    fmt::Write as _,
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{rdata::A, Name, RData, RecordType},
};
use serde::{Deserialize, Serialize};

use crate::{
    cargo,
    lab::in_netns,
    sh,
    stats::{percentile, ratio, ratio_cell, spread, Spread},
    target_dir, Format,
};

// ------------------------------------------------------------------ client

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// UDP A queries built and parsed with hickory-proto.
    Raw,
    /// glibc `getaddrinfo` (AF_UNSPEC, SOCK_STREAM, as std's ToSocketAddrs).
    Libc,
}

/// Where glibc must find the name (checked before measuring, so that a
/// changed hosts file cannot silently turn one measurement into the other).
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// In /etc/hosts, with the expected address.
    Hosts,
    /// Not in /etc/hosts, and /etc/resolv.conf's first nameserver is the
    /// raw-mode server's address.
    Dns,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[arg(long, value_enum)]
    mode: ClientMode,
    /// The name to resolve.
    #[arg(long)]
    name: String,
    /// The only IPv4 address an answer may hold (anything else fails).
    #[arg(long)]
    expect: Ipv4Addr,
    /// How long to measure (after a short warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Stop after this many lookups even if time is left.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..=20_000_000))]
    max_queries: u64,
    /// raw: the server to ask.
    #[arg(long, default_value = "127.0.0.11:53")]
    server: SocketAddr,
    /// raw: how long to wait for each answer before counting a timeout.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    timeout_ms: u64,
    /// libc: where the name must come from (verified in /etc first).
    #[arg(long, value_enum)]
    source: Option<Source>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

/// What one client run prints (one JSON object with `--format json`).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ClientResult {
    pub mode: ClientMode,
    pub name: String,
    pub expect: Ipv4Addr,
    /// Lookups answered (correctly) in the measured window.
    pub answered: u64,
    /// raw: no answer within the timeout; libc: EAI_AGAIN after >= 0.5 s.
    pub timeouts: u64,
    /// raw: replies with another id (late answers to timed-out queries).
    pub stray_replies: u64,
    pub seconds: f64,
    pub qps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub avg_us: f64,
    pub max_us: f64,
    /// The `hosts:` line of /etc/nsswitch.conf as the client saw it.
    pub nsswitch_hosts: String,
    /// The nameservers of /etc/resolv.conf as the client saw it.
    pub nameservers: Vec<String>,
    /// Whether /etc/hosts (as the client saw it) names `name`.
    pub in_hosts_file: bool,
}

enum Outcome {
    Answer(Duration),
    Timeout,
}

/// The addresses /etc/hosts gives `name` (empty if it does not name it).
fn hosts_entries(hosts: &str, name: &str) -> Vec<String> {
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let ip = it.next()?;
            it.any(|n| n.eq_ignore_ascii_case(name.trim_end_matches('.')))
                .then(|| ip.to_string())
        })
        .collect()
}

fn nameservers(resolv: &str) -> Vec<String> {
    resolv
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some("nameserver"))
                .then(|| it.next().map(str::to_string))
                .flatten()
        })
        .collect()
}

/// Runs `one` for a 200 ms warm-up (not counted), then for `seconds` or
/// `max` lookups, whichever ends first; `(latencies in µs, timeouts, elapsed)`.
fn timed_loop(
    seconds: u64,
    max: u64,
    mut one: impl FnMut() -> Result<Outcome>,
) -> Result<(Vec<f64>, u64, Duration)> {
    let warm = Instant::now() + Duration::from_millis(200);
    let mut n = 0;
    while Instant::now() < warm && n < 10_000 {
        one()?;
        n += 1;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut lat = Vec::with_capacity(65_536);
    let mut timeouts = 0u64;
    let mut done = 0u64;
    while done < max && Instant::now() < end {
        match one()? {
            Outcome::Answer(d) => lat.push(d.as_secs_f64() * 1e6),
            Outcome::Timeout => timeouts += 1,
        }
        done += 1;
    }
    Ok((lat, timeouts, start.elapsed()))
}

/// The question for `name` (made absolute: the resolver gets no search list).
fn question(name: &str) -> Result<Message> {
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(&fqdn).with_context(|| format!("invalid name {name:?}"))?,
        RecordType::A,
    ));
    Ok(m)
}

/// Checks that `reply` answers `query` with exactly `expect`.
fn check_reply(query: &Message, reply: &Message, expect: Ipv4Addr) -> Result<()> {
    let name = query
        .queries
        .first()
        .map(|q| q.name.to_ascii())
        .unwrap_or_default();
    if reply.metadata.message_type != MessageType::Response {
        bail!("wrong answer for {name}: the reply is not a response");
    }
    if reply.metadata.response_code != ResponseCode::NoError {
        bail!(
            "wrong answer for {name}: {} (expected A {expect})",
            reply.metadata.response_code
        );
    }
    if reply.queries != query.queries {
        bail!(
            "wrong answer for {name}: the reply is about {:?}",
            reply.queries
        );
    }
    let got: Vec<String> = reply
        .answers
        .iter()
        .map(|r| format!("{}", r.data))
        .collect();
    let only_expected = !reply.answers.is_empty()
        && reply
            .answers
            .iter()
            .all(|r| matches!(r.data, RData::A(A(ip)) if ip == expect));
    if !only_expected {
        bail!(
            "wrong answer for {name}: [{}], expected A {expect}",
            got.join(", ")
        );
    }
    Ok(())
}

fn raw_loop(a: &ClientArgs) -> Result<(Vec<f64>, u64, Duration, u64)> {
    let timeout = Duration::from_millis(a.timeout_ms);
    let bind: SocketAddr = if a.server.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("binding a UDP socket")?;
    sock.connect(a.server)
        .with_context(|| format!("connecting to {}", a.server))?;
    sock.set_read_timeout(Some(timeout))?;
    let mut q = question(&a.name)?;
    let mut buf = vec![0u8; 4096];
    let mut strays = 0u64;
    let mut shortened = false;
    let one = || -> Result<Outcome> {
        q.metadata.id = q.metadata.id.wrapping_add(1);
        let wire = q.to_vec().context("encoding the query")?;
        if shortened {
            sock.set_read_timeout(Some(timeout))?;
            shortened = false;
        }
        let t0 = Instant::now();
        sock.send(&wire)
            .with_context(|| format!("sending to {}", a.server))?;
        loop {
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Outcome::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    bail!("nothing answers at {} (connection refused)", a.server)
                }
                Err(e) => return Err(e).with_context(|| format!("receiving from {}", a.server)),
            };
            let took = t0.elapsed();
            let reply = Message::from_vec(&buf[..n])
                .map_err(|e| anyhow!("unparsable reply from {}: {e}", a.server))?;
            if reply.metadata.id != q.metadata.id {
                // A late answer to an earlier (timed-out) query: wait on,
                // for what is left of this query's timeout.
                strays += 1;
                let left = timeout.saturating_sub(t0.elapsed());
                if left.is_zero() {
                    return Ok(Outcome::Timeout);
                }
                sock.set_read_timeout(Some(left))?;
                shortened = true;
                continue;
            }
            check_reply(&q, &reply, a.expect)?;
            return Ok(Outcome::Answer(took));
        }
    };
    let (lat, timeouts, el) = timed_loop(a.seconds, a.max_queries, one)?;
    Ok((lat, timeouts, el, strays))
}

fn gai_error(rc: libc::c_int) -> String {
    // SAFETY: gai_strerror returns a static NUL-terminated string.
    let s = unsafe { CStr::from_ptr(libc::gai_strerror(rc)) };
    let mut m = s.to_string_lossy().into_owned();
    if rc == libc::EAI_SYSTEM {
        m.push_str(&format!(": {}", std::io::Error::last_os_error()));
    }
    m
}

/// One `getaddrinfo(name, NULL, {AF_UNSPEC, SOCK_STREAM})`: its addresses,
/// or Err(rc).
fn getaddrinfo(name: &CStr) -> std::result::Result<BTreeSet<IpAddr>, libc::c_int> {
    // SAFETY: zeroed addrinfo is a valid "no hints" value; we set two fields.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string, hints and out pointer; the list is freed below.
    let rc = unsafe { libc::getaddrinfo(name.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        return Err(rc);
    }
    let mut out = BTreeSet::new();
    let mut p = res;
    while !p.is_null() {
        // SAFETY: p walks the list getaddrinfo returned; ai_addr points to a
        // sockaddr of the family it names.
        unsafe {
            let ai = &*p;
            if !ai.ai_addr.is_null() {
                match ai.ai_family {
                    libc::AF_INET => {
                        let sa = &*(ai.ai_addr as *const libc::sockaddr_in);
                        out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ai.ai_addr as *const libc::sockaddr_in6);
                        out.insert(IpAddr::V6(sa.sin6_addr.s6_addr.into()));
                    }
                    _ => {}
                }
            }
            p = ai.ai_next;
        }
    }
    // SAFETY: res came from a successful getaddrinfo and is freed once.
    unsafe { libc::freeaddrinfo(res) };
    Ok(out)
}

fn libc_loop(a: &ClientArgs) -> Result<(Vec<f64>, u64, Duration)> {
    let name = CString::new(a.name.as_str()).context("name with a NUL byte")?;
    let want: BTreeSet<IpAddr> = [IpAddr::V4(a.expect)].into();
    let one = || -> Result<Outcome> {
        let t0 = Instant::now();
        let r = getaddrinfo(&name);
        let took = t0.elapsed();
        match r {
            Ok(got) if got == want => Ok(Outcome::Answer(took)),
            Ok(got) => bail!(
                "wrong answer: getaddrinfo({}) gave {got:?}, expected only {}",
                a.name,
                a.expect
            ),
            // EAI_AGAIN is also what a SERVFAIL gives: only a slow one is
            // the resolver's timeout, a quick one is an answer (a wrong one).
            Err(libc::EAI_AGAIN) if took >= Duration::from_millis(500) => Ok(Outcome::Timeout),
            Err(rc) => bail!(
                "wrong answer: getaddrinfo({}) failed: {}",
                a.name,
                gai_error(rc)
            ),
        }
    };
    timed_loop(a.seconds, a.max_queries, one)
}

/// `cargo xtask dns-client`: measures one kind of lookup, prints the result.
pub fn client(a: &ClientArgs) -> Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let (hosts, resolv, nss) = (
        read("/etc/hosts"),
        read("/etc/resolv.conf"),
        read("/etc/nsswitch.conf"),
    );
    let nsswitch_hosts = nss
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("hosts:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "(no hosts: line; glibc default)".into());
    let ns = nameservers(&resolv);
    let in_hosts = hosts_entries(&hosts, &a.name);
    if a.mode == ClientMode::Raw && a.source.is_some() {
        bail!("--source is for --mode libc");
    }
    if a.source == Some(Source::Hosts) && !in_hosts.contains(&a.expect.to_string()) {
        bail!(
            "{} is not in /etc/hosts with {} (it has {in_hosts:?}): this would not measure a hosts-file lookup",
            a.name,
            a.expect
        );
    }
    if a.source == Some(Source::Dns) {
        if !in_hosts.is_empty() {
            bail!(
                "{} is in /etc/hosts ({in_hosts:?}): glibc would not ask the resolver",
                a.name
            );
        }
        if ns.first().map(String::as_str) != Some(&a.server.ip().to_string()) {
            bail!(
                "the first nameserver of /etc/resolv.conf is {:?}, not {}",
                ns.first(),
                a.server.ip()
            );
        }
    }
    let (mut lat, timeouts, el, strays) = match a.mode {
        ClientMode::Raw => raw_loop(a)?,
        ClientMode::Libc => {
            let (l, t, e) = libc_loop(a)?;
            (l, t, e, 0)
        }
    };
    if lat.is_empty() {
        bail!("no lookup of {} was answered ({timeouts} timeouts)", a.name);
    }
    let avg = lat.iter().sum::<f64>() / lat.len() as f64;
    lat.sort_by(f64::total_cmp);
    let r = ClientResult {
        mode: a.mode,
        name: a.name.clone(),
        expect: a.expect,
        answered: lat.len() as u64,
        timeouts,
        stray_replies: strays,
        seconds: el.as_secs_f64(),
        qps: lat.len() as f64 / el.as_secs_f64(),
        p50_us: percentile(&lat, 50.0).unwrap_or(f64::NAN),
        p99_us: percentile(&lat, 99.0).unwrap_or(f64::NAN),
        avg_us: avg,
        max_us: lat.last().copied().unwrap_or(f64::NAN),
        nsswitch_hosts,
        nameservers: ns,
        in_hosts_file: !in_hosts.is_empty(),
    };
    match a.format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        Format::Table => println!(
            "{:?} {}: {:.0} q/s, p50 {:.1} µs, p99 {:.1} µs, {} answered, {} timeouts in {:.2} s",
            r.mode, r.name, r.qps, r.p50_us, r.p99_us, r.answered, r.timeouts, r.seconds
        ),
    }
    Ok(())
}

// ------------------------------------------------------------------- bench

/// Where the DNS lookups run: sandbox 1 of setup (d), asking about sandbox 2.
#[derive(Clone, Debug)]
pub struct Target {
    /// Sandbox 1's netns (SandboxID).
    pub netns: String,
    pub client: String,
    /// Sandbox 2's container name.
    pub peer: String,
    pub peer_ip: Ipv4Addr,
    pub network: String,
    /// The `--link` alias sandbox 1 has for sandbox 2 in its /etc/hosts.
    pub alias: String,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lookup {
    EmbeddedRaw,
    EmbeddedLibc,
    HostsFile,
}

const LOOKUPS: [Lookup; 3] = [Lookup::EmbeddedRaw, Lookup::EmbeddedLibc, Lookup::HostsFile];

impl Lookup {
    fn title(self) -> &'static str {
        match self {
            Lookup::EmbeddedRaw => "embedded DNS, raw UDP",
            Lookup::EmbeddedLibc => "embedded DNS via getaddrinfo",
            Lookup::HostsFile => "hosts file via getaddrinfo (Docker --link)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Lookup::EmbeddedRaw => "raw",
            Lookup::EmbeddedLibc => "libc-dns",
            Lookup::HostsFile => "hosts",
        }
    }

    /// The name asked: sandbox 2's container name for the raw queries;
    /// `NAME.NETWORK` through glibc, because `--link` also writes the
    /// container name into /etc/hosts (glibc would never ask the resolver
    /// for it); the link alias from /etc/hosts for the hosts-file lookup.
    fn name(self, t: &Target) -> String {
        match self {
            Lookup::EmbeddedRaw => t.peer.clone(),
            Lookup::EmbeddedLibc => format!("{}.{}", t.peer, t.network),
            Lookup::HostsFile => t.alias.clone(),
        }
    }

    fn how(self) -> &'static str {
        match self {
            Lookup::EmbeddedRaw => {
                "sequential UDP A queries to 127.0.0.11:53 (hickory-proto messages, one outstanding, \
                 1 s timeout each); latency is send to matching reply"
            }
            Lookup::EmbeddedLibc => {
                "glibc `getaddrinfo(name, NULL, {AF_UNSPEC, SOCK_STREAM})` in a loop (what std's \
                 `ToSocketAddrs` does): not in /etc/hosts, so glibc asks 127.0.0.11 (A and AAAA, \
                 a new socket each call; `RES_OPTIONS=timeout:1 attempts:1`)"
            }
            Lookup::HostsFile => {
                "the same `getaddrinfo` loop for the `--link` alias, which glibc answers from the \
                 sandbox's /etc/hosts (`hosts: files dns`) without any DNS traffic"
            }
        }
    }
}

#[derive(Default, Clone)]
struct LookupSamples {
    qps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    answered: u64,
    timeouts: u64,
}

#[derive(Default)]
pub struct Samples {
    by: [LookupSamples; 3],
    errors: Vec<String>,
    /// The client's view of the sandbox's /etc (from the first run).
    nsswitch_hosts: Option<String>,
    nameservers: Option<Vec<String>>,
}

/// Builds this binary (release) for the client; returns its path.
pub fn build_client() -> Result<PathBuf> {
    sh::run(
        cargo().args(["build", "--release", "-p", "xtask"]),
        Some(Duration::from_secs(30 * 60)),
    )?;
    let bin = target_dir()?.join("release").join("xtask");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

/// One client run in sandbox 1; its parsed result.
fn run_client(t: &Target, exe: &str, l: Lookup, secs: u64) -> Result<ClientResult> {
    let name = l.name(t);
    let ip = t.peer_ip.to_string();
    let s = secs.to_string();
    let mode = if l == Lookup::EmbeddedRaw {
        "raw"
    } else {
        "libc"
    };
    let mut args = vec![
        exe,
        "dns-client",
        "--mode",
        mode,
        "--name",
        &name,
        "--expect",
        &ip,
        "--seconds",
        &s,
        "--format",
        "json",
    ];
    match l {
        Lookup::EmbeddedRaw => {}
        Lookup::EmbeddedLibc => args.extend(["--source", "dns"]),
        Lookup::HostsFile => args.extend(["--source", "hosts"]),
    }
    let mut c = in_netns(&t.netns, &args);
    // glibc's own timeout is 5 s x 2 attempts; bound it like the raw one.
    c.env("RES_OPTIONS", "timeout:1 attempts:1");
    let out = sh::output(&mut c, Some(Duration::from_secs(secs + 30)))?;
    serde_json::from_str(out.trim()).with_context(|| format!("parsing dns-client output {out:?}"))
}

/// One rep: the three lookups back to back, the order rotated every rep.
pub fn measure(t: &Target, exe: &Path, secs: u64, s: &mut Samples, rep: u32) -> Result<String> {
    let exe = exe
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", exe.display()))?;
    let mut line = Vec::new();
    for k in 0..LOOKUPS.len() {
        let i = (k + rep as usize - 1) % LOOKUPS.len();
        let l = LOOKUPS[i];
        match run_client(t, exe, l, secs) {
            Ok(r) => {
                line.push(format!(
                    "{} {:.0} q/s p50 {:.1} us p99 {:.1} us{}",
                    l.short(),
                    r.qps,
                    r.p50_us,
                    r.p99_us,
                    if r.timeouts > 0 {
                        format!(" ({} timeouts)", r.timeouts)
                    } else {
                        String::new()
                    }
                ));
                let b = &mut s.by[i];
                b.qps.push(r.qps);
                b.p50.push(r.p50_us);
                b.p99.push(r.p99_us);
                b.answered += r.answered;
                b.timeouts += r.timeouts;
                s.nsswitch_hosts.get_or_insert(r.nsswitch_hosts);
                s.nameservers.get_or_insert(r.nameservers);
            }
            Err(e) => {
                sh::check_interrupted()?;
                let m = format!("rep {rep}: {}: {e:#}", l.title());
                eprintln!("    error: {m}");
                s.errors.push(m);
            }
        }
    }
    Ok(line.join(", "))
}

#[derive(Serialize)]
pub struct LookupReport {
    lookup: Lookup,
    title: &'static str,
    how: &'static str,
    name: String,
    /// Per rep: lookups answered per second; p50 / p99 latency in µs.
    qps: Option<Spread>,
    p50_us: Option<Spread>,
    p99_us: Option<Spread>,
    answered: u64,
    timeouts: u64,
    /// This median / the hosts-file lookup's median.
    qps_vs_hosts: Option<f64>,
    p50_vs_hosts: Option<f64>,
    p99_vs_hosts: Option<f64>,
}

#[derive(Serialize)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub reps: u32,
    pub seconds: u64,
    pub kernel: String,
    pub glibc: String,
    pub loadavg: String,
    /// Sandbox 1's netns and container, the network, and sandbox 2.
    pub sandbox: Option<String>,
    pub client: Option<String>,
    pub network: Option<String>,
    pub peer: Option<String>,
    pub peer_ip: Option<Ipv4Addr>,
    pub nsswitch_hosts: Option<String>,
    pub nameservers: Option<Vec<String>>,
    /// Why setup (d) (which the lookups run in) could not be built.
    pub failed: Option<String>,
    pub lookups: Vec<LookupReport>,
    pub errors: Vec<String>,
}

pub struct Meta {
    pub command: String,
    pub date: String,
    pub reps: u32,
    pub seconds: u64,
    pub kernel: String,
    pub loadavg: String,
}

pub fn report(m: Meta, t: Option<&Target>, failed: Option<String>, s: Samples) -> Report {
    let glibc = sh::capture(
        &mut sh::cmd("ldd", ["--version"]),
        Some(Duration::from_secs(10)),
    )
    .ok()
    .and_then(|o| o.stdout.lines().next().map(str::to_string))
    .unwrap_or_else(|| "unknown".into());
    let mut lookups: Vec<LookupReport> = LOOKUPS
        .iter()
        .zip(&s.by)
        .map(|(&l, b)| LookupReport {
            lookup: l,
            title: l.title(),
            how: l.how(),
            name: t.map(|t| l.name(t)).unwrap_or_default(),
            qps: spread(&b.qps),
            p50_us: spread(&b.p50),
            p99_us: spread(&b.p99),
            answered: b.answered,
            timeouts: b.timeouts,
            qps_vs_hosts: None,
            p50_vs_hosts: None,
            p99_vs_hosts: None,
        })
        .collect();
    let base = |f: fn(&LookupReport) -> &Option<Spread>, ls: &[LookupReport]| {
        ls.iter()
            .find(|l| l.lookup == Lookup::HostsFile)
            .and_then(|l| f(l).as_ref())
            .map(|s| s.median)
            .filter(|m| *m > 0.0)
    };
    let (bq, b50, b99) = (
        base(|l| &l.qps, &lookups),
        base(|l| &l.p50_us, &lookups),
        base(|l| &l.p99_us, &lookups),
    );
    for l in &mut lookups {
        l.qps_vs_hosts = ratio(l.qps.as_ref().map(|s| s.median), bq);
        l.p50_vs_hosts = ratio(l.p50_us.as_ref().map(|s| s.median), b50);
        l.p99_vs_hosts = ratio(l.p99_us.as_ref().map(|s| s.median), b99);
    }
    Report {
        command: m.command,
        date: m.date,
        reps: m.reps,
        seconds: m.seconds,
        kernel: m.kernel,
        glibc,
        loadavg: m.loadavg,
        sandbox: t.map(|t| t.netns.clone()),
        client: t.map(|t| t.client.clone()),
        network: t.map(|t| t.network.clone()),
        peer: t.map(|t| t.peer.clone()),
        peer_ip: t.map(|t| t.peer_ip),
        nsswitch_hosts: s.nsswitch_hosts,
        nameservers: s.nameservers,
        failed,
        lookups,
        errors: s.errors,
    }
}

impl Report {
    pub fn bad(&self) -> bool {
        self.failed.is_some() || !self.errors.is_empty()
    }
}

/// The results table (and failures), for the terminal and BENCHMARKS.md.
pub fn table(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} rep(s) x {} s per lookup kind; medians over reps (spread is min–max), ratios are this median / the hosts-file lookup's median.\n",
        r.reps, r.seconds
    );
    let _ = writeln!(
        o,
        "| lookup | name | lookups/s | spread (min–max) | p50 µs | p99 µs | timeouts | lookups/s vs hosts | p50 vs hosts |"
    );
    let _ = writeln!(
        o,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let x = ratio_cell;
    for l in &r.lookups {
        match (&l.qps, &l.p50_us, &l.p99_us) {
            (Some(q), Some(p50), Some(p99)) => {
                let _ = writeln!(
                    o,
                    "| {} | `{}` | {:.0} | {:.0}–{:.0} | {:.1} | {:.1} | {} | {} | {} |",
                    l.title,
                    l.name,
                    q.median,
                    q.min,
                    q.max,
                    p50.median,
                    p99.median,
                    l.timeouts,
                    x(l.qps_vs_hosts),
                    x(l.p50_vs_hosts)
                );
            }
            _ => {
                let why = if r.failed.is_some() {
                    "not set up (see Failures)"
                } else {
                    "no sample"
                };
                let _ = writeln!(o, "| {} | `{}` | {why} | | | | | | |", l.title, l.name);
            }
        }
    }
    let _ = writeln!(o);
    let problems: Vec<String> = r
        .failed
        .iter()
        .map(|e| format!("(d) could not be set up, so no DNS lookups ran: {e}"))
        .chain(r.errors.iter().cloned())
        .collect();
    crate::md::bullets(&mut o, "DNS failures", &problems);
    o
}

/// The `## DNS` section of BENCHMARKS.md.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{DNS_HEADING}\n");
    let _ = writeln!(
        o,
        "Generated by `{}` on {} (`cargo xtask bench --setups dns` reruns only this section, \
         about a minute of measuring with `--reps 3`; it needs setup (d)'s daemon, which it builds itself). \
         Kernel `{}`, {}; load average when measuring started: {}.\n",
        r.command, r.date, r.kernel, r.glibc, r.loadavg
    );
    let q = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
    let _ = writeln!(
        o,
        "From inside sandbox 1 of setup (d) (container `{}` on network `{}`, created with \
         `--link {}:peerlink`), resolving sandbox 2 (`{}`, {}): its /etc/resolv.conf says \
         `nameserver {}` (the daemon's embedded resolver), its /etc/hosts has `{} peerlink ...` \
         from the link, and nsswitch.conf has `hosts: {}`. The client is `xtask dns-client` \
         (built in release), started with `ip netns exec <SandboxID>` so that it sees the sandbox's \
         /etc like a process of the container. Each rep runs the three lookups back to back \
         (order rotated every rep), one lookup at a time, {} s each after a 0.2 s warm-up; \
         every answer must be exactly sandbox 2's address or the run fails.\n",
        q(&r.client),
        q(&r.network),
        q(&r.peer),
        q(&r.peer),
        r.peer_ip.map_or("?".into(), |i| i.to_string()),
        r.nameservers
            .as_ref()
            .and_then(|n| n.first().cloned())
            .unwrap_or_else(|| "127.0.0.11".into()),
        r.peer_ip.map_or("?".into(), |i| i.to_string()),
        q(&r.nsswitch_hosts),
        r.seconds
    );
    for l in &r.lookups {
        let _ = writeln!(o, "- **{}** (`{}`): {}", l.title, l.name, l.how);
    }
    let _ = writeln!(
        o,
        "\nThe getaddrinfo lookup of the embedded resolver asks for `NAME.NETWORK` because \
         `--link` also writes the container name itself into /etc/hosts; the resolver answers \
         both names from the same table.\n"
    );
    o.push_str(&table(r));
    o
}

pub const DNS_HEADING: &str = "## DNS";

/// `existing` split into (before, the DNS section, after): the section runs
/// from a `## DNS` line to the next `## ` heading or the end.
fn split_dns(existing: &str) -> (&str, Option<&str>, &str) {
    let mut at = 0;
    let mut start = None;
    for line in existing.split_inclusive('\n') {
        let l = line.trim_end();
        match start {
            None if l == DNS_HEADING => start = Some(at),
            Some(s) if l.starts_with("## ") => {
                return (&existing[..s], Some(&existing[s..at]), &existing[at..]);
            }
            _ => {}
        }
        at += line.len();
    }
    match start {
        Some(s) => (&existing[..s], Some(&existing[s..]), ""),
        None => (existing, None, ""),
    }
}

/// The new BENCHMARKS.md: the freshly measured parts replace their old
/// counterparts in `existing`; what was not measured this time is kept.
pub fn splice(existing: &str, main: Option<&str>, dns: Option<&str>) -> String {
    let (before, old_dns, after) = split_dns(existing);
    let dns = dns.or(old_dns).map(|d| d.trim_end().to_string() + "\n");
    let mut out = match main {
        Some(m) => m.trim_end().to_string() + "\n",
        None if before.trim().is_empty() && after.trim().is_empty() => "# Benchmarks\n".into(),
        None => before.trim_end().to_string() + "\n",
    };
    if let Some(d) = dns {
        out.push('\n');
        out.push_str(&d);
    }
    if main.is_none() && !after.trim().is_empty() {
        out.push('\n');
        out.push_str(after.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_resolv_parsing() {
        let hosts = "127.0.0.1\tlocalhost\n10.0.0.3\tpeerlink bench-b abc # c\n# 1.2.3.4 x\n";
        assert_eq!(hosts_entries(hosts, "peerlink"), ["10.0.0.3"]);
        assert_eq!(hosts_entries(hosts, "BENCH-B."), ["10.0.0.3"]);
        assert!(hosts_entries(hosts, "bench-b.bench").is_empty());
        assert!(hosts_entries(hosts, "x").is_empty());
        let r = "# x\nnameserver 127.0.0.11\nsearch a\noptions ndots:0\nnameserver 1.1.1.1\n";
        assert_eq!(nameservers(r), ["127.0.0.11", "1.1.1.1"]);
    }

    #[test]
    fn reply_checks() {
        let q = question("web").unwrap();
        let mut ok = Message::response(q.metadata.id, hickory_proto::op::OpCode::Query);
        ok.add_query(q.queries[0].clone());
        let rec = |ip| {
            hickory_proto::rr::Record::from_rdata(q.queries[0].name.clone(), 600, RData::A(A(ip)))
        };
        ok.add_answer(rec(Ipv4Addr::new(10, 0, 0, 3)));
        let ok = Message::from_vec(&ok.to_vec().unwrap()).unwrap();
        check_reply(&q, &ok, Ipv4Addr::new(10, 0, 0, 3)).unwrap();
        let e = check_reply(&q, &ok, Ipv4Addr::new(10, 0, 0, 4)).unwrap_err();
        assert!(e.to_string().contains("wrong answer"), "{e}");
        let mut nx = Message::response(q.metadata.id, hickory_proto::op::OpCode::Query);
        nx.add_query(q.queries[0].clone());
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert!(check_reply(&q, &nx, Ipv4Addr::new(10, 0, 0, 3)).is_err());
        let mut empty = Message::response(q.metadata.id, hickory_proto::op::OpCode::Query);
        empty.add_query(q.queries[0].clone());
        assert!(check_reply(&q, &empty, Ipv4Addr::new(10, 0, 0, 3)).is_err());
    }

    #[test]
    fn splicing_the_dns_section() {
        let old = "# Benchmarks\n\nnet\n\n## DNS\n\nold dns\n";
        assert_eq!(
            splice(old, None, Some("## DNS\n\nnew\n")),
            "# Benchmarks\n\nnet\n\n## DNS\n\nnew\n"
        );
        assert_eq!(
            splice(old, Some("# Benchmarks\n\nnet2\n"), None),
            "# Benchmarks\n\nnet2\n\n## DNS\n\nold dns\n"
        );
        assert_eq!(
            splice("# Benchmarks\n\nnet\n", None, Some("## DNS\n\nd\n")),
            "# Benchmarks\n\nnet\n\n## DNS\n\nd\n"
        );
        assert_eq!(
            splice("", None, Some("## DNS\n\nd\n")),
            "# Benchmarks\n\n## DNS\n\nd\n"
        );
        let mid = "# B\n\n## DNS\n\nold\n\n## Later\n\nx\n";
        assert_eq!(
            splice(mid, None, Some("## DNS\n\nnew\n")),
            "# B\n\n## DNS\n\nnew\n\n## Later\n\nx\n"
        );
        // "### DNS failures" inside the section does not end it.
        let (b, d, a) = split_dns("# B\n## DNS\nt\n#### DNS failures\n- x\n");
        assert_eq!(
            (b, d, a),
            ("# B\n", Some("## DNS\nt\n#### DNS failures\n- x\n"), "")
        );
    }
}

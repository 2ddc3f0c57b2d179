//! Harness for the namespace integration tests: they drive the `dataplane`
//! CLI against a daemon that each test starts in a network namespace of its
//! own, and every guard here cleans up on drop, also when the test panics.
//!
//! - [`NetNs`]: a named network namespace (`ip netns add`/`del`).
//! - [`Daemon`]: the daemon in its own [`NetNs`], with per-test run, state and
//!   bpffs directories; on drop it removes every container through the API,
//!   stops the daemon, then sweeps what the daemon made in this test (sandbox
//!   netns, pins, temporary files) and fails the test if anything is left.
//! - [`Proc`] and [`Output`]: child processes with captured output and a time
//!   limit, so that a hung command fails a test instead of hanging it.
//! - [`Outside`]: for the NAT tests, "the outside world": a namespace joined
//!   to the daemon's by two veth pairs, with [`WHOAMI_PY`] servers that tell
//!   each client the address they saw and [`PROBE_PY`] clients that report
//!   it ([`Hello`]).
//! - [`Lab`]: several hosts for the overlay: an underlay namespace whose
//!   bridge is the switch, an [`Etcd`] on it, one [`Daemon`] per host
//!   namespace with `--store`, plain hosts for a [`KernelVtep`] (the
//!   kernel's own vxlan as a foreign peer), and [`Capture`]s of the
//!   underlay that [`tshark`] decodes.
//!
//! Waiting is always on a condition with bounded retries ([`retry`]), never a
//! fixed sleep. Tests only send traffic to loopback and to addresses inside
//! namespaces they made. They need root and run with `--test-threads=1`.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fmt,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod docker;
pub mod lan;

/// How long a CLI call or helper command may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Readiness: `network ls` must succeed within this many tries, 100 ms apart.
const READY_ATTEMPTS: u32 = 100;

// ----- small utilities ------------------------------------------------------

/// `<prefix>-<pid>-<n>`: unique across the test binaries running at once and
/// across the tests of one binary.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Panics unless the tests run as root (namespaces, veths and bpffs need it).
/// Parses one JSON value per non-empty line into an array.
pub fn json_lines_of(text: &str) -> Result<Value, serde_json::Error> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<Value>, _>>()
        .map(Value::Array)
}

pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    assert_eq!(euid, "0", "the dataplane integration tests need root");
}

/// The `dataplane` binary: `$DATAPLANE_BIN`, else the workspace's debug build.
pub fn bin() -> PathBuf {
    let p = std::env::var_os("DATAPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/dataplane"));
    assert!(
        p.is_file(),
        "no dataplane binary at {} (build it with `cargo build -p dataplane-user` or set DATAPLANE_BIN)",
        p.display()
    );
    p
}

/// Calls `f` up to `attempts` times, `every` apart, until it returns `Ok`.
/// Panics with `what` and the last error when it never does.
pub fn retry<T>(
    what: &str,
    attempts: u32,
    every: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let mut last = String::new();
    for i in 0..attempts {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if i + 1 < attempts {
            std::thread::sleep(every);
        }
    }
    panic!("gave up waiting for {what} after {attempts} attempts: {last}");
}

/// [`retry`] with the default budget: 100 tries, 100 ms apart.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    retry(what, 100, Duration::from_millis(100), f)
}

/// Sends `signal` (a `kill -s` name such as `TERM`) to one process id.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether a process with this id exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A directory `<tmp>/dataplane-test-<pid>-<n>`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(unique("dataplane-test"));
        std::fs::create_dir_all(&p).expect("creating a tempdir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ----- processes ------------------------------------------------------------

/// A finished command: exit code (`None` when killed by a signal or the
/// time limit), stdout and stderr.
#[derive(Debug, Clone)]
pub struct Output {
    pub cmd: String,
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` -> {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmd,
            self.status
                .map_or("killed or timed out".into(), |c| format!("exit {c}")),
            self.stdout,
            self.stderr
        )
    }
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success(), "command failed: {self}");
        self
    }

    /// stdout parsed as JSON; panics with the output when it is not.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self}"))
    }

    /// stdout as JSON lines (`ps --format json` prints one object per
    /// line, as Docker does), gathered into an array.
    #[track_caller]
    pub fn json_lines(&self) -> Value {
        json_lines_of(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON lines ({e}): {self}"))
    }

    /// stdout without surrounding whitespace.
    pub fn text(&self) -> &str {
        self.stdout.trim()
    }

    /// Asserts a clean refusal: a non-zero exit (not a crash or a timeout)
    /// and exactly one non-empty line on stderr, which it returns.
    #[track_caller]
    pub fn refused(&self) -> &str {
        assert!(
            matches!(self.status, Some(c) if c != 0),
            "expected a non-zero exit: {self}"
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && !lines[0].trim().is_empty(),
            "expected exactly one line on stderr: {self}"
        );
        lines[0]
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running child whose stdout and stderr are collected as they come (so a
/// test can wait for a line while it runs). Killed on drop if still running.
pub struct Proc {
    cmd: String,
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl std::io::Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let h = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, h)
}

fn text_of(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap()).into_owned()
}

impl Proc {
    /// Starts `cmd` with stdin closed and both outputs captured.
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_with_stdin(cmd, Stdio::null())
    }

    /// Starts `cmd` reading `stdin`, both outputs captured.
    pub fn spawn_with_stdin(mut cmd: Command, stdin: Stdio) -> Proc {
        let desc = describe(&cmd);
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{desc}`: {e}"));
        let (out, h1) = collect(child.stdout.take().expect("piped stdout"));
        let (err, h2) = collect(child.stderr.take().expect("piped stderr"));
        Proc {
            cmd: desc,
            child,
            out,
            err,
            readers: vec![h1, h2],
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the child wrote to stdout and stderr so far.
    pub fn output_so_far(&self) -> String {
        format!("{}{}", text_of(&self.out), text_of(&self.err))
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the child to exit, killing it after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
            }
        };
        // A grandchild could keep a pipe open: wait for the readers, bounded.
        let until = Instant::now() + Duration::from_secs(2);
        while self.readers.iter().any(|h| !h.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Output {
            cmd: self.cmd.clone(),
            status,
            stdout: text_of(&self.out),
            stderr: text_of(&self.err),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `sig` to `child` and waits up to `attempts` x 100 ms for it to
/// exit; whether it did.
fn signal_and_wait(child: &mut Child, sig: &str, attempts: u32) -> bool {
    signal(child.id(), sig);
    (0..attempts).any(|_| {
        let done = matches!(child.try_wait(), Ok(Some(_)));
        if !done {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    })
}

/// Runs `cmd` to completion (at most [`COMMAND_TIMEOUT`]).
pub fn run(cmd: Command) -> Output {
    Proc::spawn(cmd).wait(COMMAND_TIMEOUT)
}

/// Runs `program args...` to completion.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let mut c = Command::new(program);
    c.args(args);
    run(c)
}

// ----- network namespaces ---------------------------------------------------

/// Names in `ip netns list`.
pub fn netns_list() -> Vec<String> {
    sh("ip", &["netns", "list"])
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/var/run/netns").join(name).exists()
}

/// Kills the processes inside netns `name` (all started by this test: the
/// daemon, container commands, clients) and deletes it.
fn kill_and_delete_netns(name: &str) {
    if !netns_exists(name) {
        return;
    }
    let pids = sh("ip", &["netns", "pids", name]).stdout;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        signal(pid, "KILL");
    }
    let del = sh("ip", &["netns", "del", name]);
    if !del.success() {
        eprintln!("cleanup: {del}");
    }
}

/// A network namespace `dpt-<pid>-<n>` with `lo` up, deleted on drop
/// together with any process still inside it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        let name = unique("dpt");
        sh("ip", &["netns", "add", &name]).ok();
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]).ok();
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Runs a command inside this namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        run(c)
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_and_delete_netns(&self.name);
    }
}

// ----- the daemon -----------------------------------------------------------

/// What the harness knows of a container, kept so that it can be swept even
/// when the daemon is no longer there to remove it.
#[derive(Debug, Clone, Default)]
struct Tracked {
    name: String,
    netns: Option<String>,
}

/// A daemon in its own network namespace with its own directories, for one
/// test. Dropping it removes everything the test made (see the module doc).
pub struct Daemon {
    ns: Option<NetNs>,
    ns_name: String,
    dir: PathBuf,
    bpffs: PathBuf,
    child: Option<Child>,
    tracked: RefCell<BTreeMap<String, Tracked>>,
    /// Extra environment of the next start (e.g. `DATAPLANE_CRASH_AT`).
    env: Vec<(String, String)>,
    /// Extra `daemon` arguments of every start (e.g. `--store URL`).
    args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon and waits until it answers.
    pub fn start() -> Daemon {
        Daemon::start_in(NetNs::new(), &[])
    }

    /// Starts a daemon in `ns` (which it then owns and deletes on drop) with
    /// extra `daemon` arguments on every start, and waits until it answers.
    pub fn start_in(ns: NetNs, args: &[&str]) -> Daemon {
        require_root();
        bin();
        let dir = std::env::temp_dir().join(unique("dataplane-test"));
        std::fs::create_dir_all(&dir).expect("creating the test's tempdir");
        let mut d = Daemon {
            ns_name: ns.name().to_string(),
            ns: Some(ns),
            bpffs: PathBuf::from("/sys/fs/bpf").join(unique("dataplane-test")),
            dir,
            child: None,
            tracked: RefCell::default(),
            env: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.spawn();
        d
    }

    /// The daemon's netns: "the host" for the containers.
    pub fn ns(&self) -> &NetNs {
        self.ns
            .as_ref()
            .expect("the daemon's netns lives as long as the daemon")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    pub fn tempdir(&self) -> &Path {
        &self.dir
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.run_dir().join("api.sock").display())
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// Everything the daemon wrote so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon (again, with the same directories) through
    /// `nsenter --net`, output appended to the log, and waits until
    /// `network ls` succeeds.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the daemon log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.ns().path().display()))
            .arg(bin())
            .arg("daemon")
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting the daemon through nsenter");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Restarts a stopped daemon on the same directories.
    pub fn restart(&mut self) {
        self.env.clear();
        self.spawn();
    }

    /// Restarts a stopped daemon with extra environment variables.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
    }

    fn wait_ready(&mut self) {
        for _ in 0..READY_ATTEMPTS {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("the daemon exited during startup ({st}); its log follows");
            }
            if self.cli(&["network", "ls"]).success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the daemon did not answer `network ls` within {} s; its log follows",
            READY_ATTEMPTS / 10
        );
    }

    /// Stops the daemon with `sig` ("TERM" or "KILL") and waits for it to exit.
    /// Containers and their traffic are meant to survive this.
    pub fn stop(&mut self, sig: &str) {
        self.track();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !signal_and_wait(&mut child, sig, 100) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not exit within 10 s of SIG{sig}; its log follows");
        }
    }

    // ----- the CLI -------------------------------------------------------

    /// A client command against this daemon, e.g. `cli(&["network", "ls"])`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(self.cli_command(args))
    }

    /// A client command that must succeed; panics with its output and the
    /// end of the daemon log otherwise.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert!(
            out.success(),
            "command failed: {out}\n--- daemon log (end) ---\n{}",
            tail(&self.log(), 40)
        );
        out
    }

    /// A client command that reads `input` on its stdin (a confirmation).
    pub fn cli_input(&self, args: &[&str], input: &str) -> Output {
        let dir = TempDir::new();
        let path = dir.path().join("stdin");
        std::fs::write(&path, input).expect("writing the command's input");
        let f = std::fs::File::open(&path).expect("opening the command's input");
        Proc::spawn_with_stdin(self.cli_command(args), Stdio::from(f)).wait(COMMAND_TIMEOUT)
    }

    /// A client command started in the background.
    pub fn spawn_cli(&self, args: &[&str]) -> Proc {
        Proc::spawn(self.cli_command(args))
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--host").arg(self.host()).args(args);
        c.env_remove("DATAPLANE_HOST");
        c
    }

    // ----- networks and containers ----------------------------------------

    /// `network create ARGS...`; returns the printed id.
    #[track_caller]
    pub fn network_create(&self, args: &[&str]) -> String {
        let mut full = vec!["network", "create"];
        full.extend_from_slice(args);
        self.ok(&full).text().to_string()
    }

    /// `network inspect NAME`: the one object of the array.
    #[track_caller]
    pub fn network_inspect(&self, name: &str) -> Value {
        only(self.ok(&["network", "inspect", name]).json())
    }

    /// `run -d --name NAME [--network NET] EXTRA... -- sleep infinity`;
    /// returns the id.
    #[track_caller]
    pub fn run_sleeper(&self, name: &str, network: Option<&str>, extra: &[&str]) -> String {
        self.run_cmd(name, network, extra, &["sleep", "infinity"])
    }

    /// `run -d --name NAME [--network NET] EXTRA... -- CMD...`; returns the id.
    #[track_caller]
    pub fn run_cmd(
        &self,
        name: &str,
        network: Option<&str>,
        extra: &[&str],
        cmd: &[&str],
    ) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        if let Some(n) = network {
            args.extend(["--network", n]);
        }
        args.extend_from_slice(extra);
        args.push("--");
        args.extend_from_slice(cmd);
        let id = self.ok(&args).text().to_string();
        self.track();
        id
    }

    /// `inspect NAME`: the one object of the array.
    #[track_caller]
    pub fn inspect(&self, ctr: &str) -> Value {
        only(self.ok(&["inspect", ctr]).json())
    }

    /// The container's address on `network`.
    #[track_caller]
    pub fn ip(&self, ctr: &str, network: &str) -> String {
        let v = self.inspect(ctr);
        let ip = &v["NetworkSettings"]["Networks"][network]["IPAddress"];
        ip.as_str()
            .unwrap_or_else(|| panic!("{ctr} has no IPAddress on {network}: {v:#}"))
            .to_string()
    }

    /// The container's netns name (from its SandboxKey).
    #[track_caller]
    pub fn sandbox(&self, ctr: &str) -> String {
        let v = self.inspect(ctr);
        netns_of(&v).unwrap_or_else(|| panic!("{ctr} has no SandboxKey: {v:#}"))
    }

    /// `exec CTR -- ARGS...`.
    pub fn exec_in(&self, ctr: &str, args: &[&str]) -> Output {
        let mut full = vec!["exec", ctr, "--"];
        full.extend_from_slice(args);
        self.cli(&full)
    }

    /// Whether `ctr` gets an answer to a ping of `ip`, retried a few times
    /// (the first packet may wait for ARP).
    pub fn pings(&self, ctr: &str, ip: &str) -> bool {
        (0..5).any(|_| self.exec_in(ctr, &["ping", "-c1", "-W1", ip]).success())
    }

    /// Asserts that `ctr` reaches `ip`.
    #[track_caller]
    pub fn assert_pings(&self, ctr: &str, ip: &str) {
        if !self.pings(ctr, ip) {
            let last = self.exec_in(ctr, &["ping", "-c1", "-W1", ip]);
            panic!(
                "{ctr} cannot reach {ip}: {last}\n--- daemon log (end) ---\n{}",
                tail(&self.log(), 40)
            );
        }
    }

    /// Asserts that two pings of `ip` from `ctr` get no answer.
    #[track_caller]
    pub fn assert_no_ping(&self, ctr: &str, ip: &str) {
        let out = self.exec_in(ctr, &["ping", "-c2", "-i0.2", "-W1", ip]);
        assert!(!out.success(), "{ctr} should not reach {ip}: {out}");
    }

    /// Polls `logs CTR` until it contains `needle`; returns the logs.
    #[track_caller]
    pub fn wait_logs(&self, ctr: &str, needle: &str) -> String {
        eventually(&format!("{needle:?} in the logs of {ctr}"), || {
            let out = self.cli(&["logs", ctr]);
            if out.success() && out.stdout.contains(needle) {
                Ok(out.stdout)
            } else {
                Err(out.to_string())
            }
        })
    }

    /// `stats --format json`.
    #[track_caller]
    pub fn stats(&self) -> Value {
        self.ok(&["stats", "--format", "json"]).json()
    }

    /// A drop counter (e.g. "cross_network") summed over the programs that
    /// have it.
    #[track_caller]
    pub fn drops(&self, reason: &str) -> u64 {
        let stats = self.stats();
        let counts: Vec<u64> = stats["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["drops"][reason].as_u64())
            .collect();
        assert!(!counts.is_empty(), "no drop counter {reason:?}: {stats:#}");
        counts.iter().sum()
    }

    /// The stable part of `network ls --format json` and `ps --format json`
    /// (names, ids, subnets, attachments), to check that a refused command
    /// or a restart changed nothing.
    #[track_caller]
    pub fn snapshot(&self) -> (Value, Value) {
        let each = |v: Value, keys: &[&str]| -> Value {
            let list = v.as_array().unwrap_or_else(|| panic!("not a list: {v:#}"));
            list.iter().map(|o| pick(o, keys)).collect()
        };
        (
            each(
                self.networks(),
                &["Name", "ID", "Driver", "Internal", "Subnet"],
            ),
            each(self.ps(), &["Names", "ID", "Networks", "State"]),
        )
    }

    /// Asserts that `args` is refused with one line on stderr and that
    /// networks and containers are unchanged. Returns the stderr line.
    #[track_caller]
    pub fn assert_refused(&self, args: &[&str]) -> String {
        let before = self.snapshot();
        let out = self.cli(args);
        let line = out.refused().to_string();
        println!("refused: {} -> {line}", out.cmd);
        let after = self.snapshot();
        assert_eq!(
            before, after,
            "`{}` was refused ({line}) but changed the networks or containers",
            out.cmd
        );
        line
    }

    /// Every container as `ps -a --no-trunc --format json` lists it
    /// (Docker's fields: `ID`, `Names`, `Networks` as `a,b`, `Runtime`).
    #[track_caller]
    pub fn ps(&self) -> Value {
        self.ok(&["ps", "-a", "--no-trunc", "--format", "json"])
            .json_lines()
    }

    /// Every network as `network ls --no-trunc --format json` lists it.
    #[track_caller]
    pub fn networks(&self) -> Value {
        self.ok(&["network", "ls", "--no-trunc", "--format", "json"])
            .json_lines()
    }

    // ----- cleanup ---------------------------------------------------------

    /// Records every container the daemon lists (name, sandbox netns), so
    /// that they are swept even if the daemon is gone by the end of the test.
    pub fn track(&self) {
        if self.child.is_none() {
            return;
        }
        let ps = self.cli(&["ps", "-a", "--no-trunc", "--format", "json"]);
        let Ok(Value::Array(list)) = json_lines_of(&ps.stdout) else {
            return;
        };
        for c in list {
            let Some(id) = c["ID"].as_str() else { continue };
            // Another runtime's attachment: that runtime (or the test that
            // plays it) owns its namespace and detaches it.
            if c["Runtime"].as_str().is_some_and(|r| r != "dataplane") {
                continue;
            }
            let mut t = Tracked {
                name: c["Names"].as_str().unwrap_or(id).to_string(),
                netns: None,
            };
            let inspect = self.cli(&["inspect", id]);
            if let Ok(v) = serde_json::from_str::<Value>(&inspect.stdout) {
                t.netns = netns_of(&v[0]);
            }
            let mut tracked = self.tracked.borrow_mut();
            let entry = tracked.entry(id.to_string()).or_default();
            entry.name = t.name;
            entry.netns = t.netns.or(entry.netns.take());
        }
    }

    /// What of this test is still on the machine: netns names and paths.
    pub fn leftovers(&self) -> Vec<String> {
        let listed = netns_list();
        let mut left: Vec<String> = self
            .tracked
            .borrow()
            .values()
            .filter_map(|t| t.netns.clone())
            .chain(std::iter::once(self.ns_name.clone()))
            .filter(|n| listed.contains(n) || netns_exists(n))
            .map(|n| format!("netns {n}"))
            .collect();
        for p in [&self.bpffs, &self.dir] {
            if p.exists() {
                left.push(p.display().to_string());
            }
        }
        left
    }

    fn sweep(&mut self) {
        // 1. Through the API while the daemon runs: it knows best.
        if self.child.is_some() {
            self.track();
            let names: Vec<String> = self
                .tracked
                .borrow()
                .values()
                .map(|t| t.name.clone())
                .collect();
            for n in names {
                let out = self.cli(&["rm", "-f", &n]);
                if !out.success() && !std::thread::panicking() {
                    eprintln!("cleanup: {out}");
                }
            }
        }
        // 2. Stop the daemon.
        if let Some(mut child) = self.child.take() {
            if !signal_and_wait(&mut child, "TERM", 50) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // 3. What the daemon made and did not remove: sandboxes (with the
        //    container processes inside them) and their /etc/netns files,
        //    those tracked and those its state directory names (a container
        //    the test never listed: `dp-` and 12 characters of its id).
        let from_state: Vec<String> = std::fs::read_dir(self.state_dir().join("containers"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                id.get(..12).map(|short| format!("dp-{short}"))
            })
            .collect();
        for ns in &from_state {
            kill_and_delete_netns(ns);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        for t in self.tracked.borrow().values() {
            if let Some(ns) = &t.netns {
                kill_and_delete_netns(ns);
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
            }
        }
        // 4. The daemon's own netns (its veths go with it), pins, tempdir.
        drop(self.ns.take());
        if self.bpffs.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.bpffs) {
                eprintln!("cleanup: removing {}: {e}", self.bpffs.display());
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.sweep();
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log {} ---\n{}",
                self.log_path().display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let left = self.leftovers();
        if !left.is_empty() {
            if std::thread::panicking() {
                eprintln!("cleanup left behind: {left:?}");
            } else {
                panic!("cleanup left behind: {left:?}");
            }
        }
    }
}

/// The netns name in an inspect object's NetworkSettings.SandboxKey.
fn netns_of(inspect: &Value) -> Option<String> {
    let key = inspect["NetworkSettings"]["SandboxKey"].as_str()?;
    Path::new(key)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

/// An object with only `keys` of `v` (absent ones as null).
pub fn pick(v: &Value, keys: &[&str]) -> Value {
    keys.iter()
        .map(|k| (k.to_string(), v[*k].clone()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The single element of a one-element JSON array.
#[track_caller]
pub fn only(v: Value) -> Value {
    match v {
        Value::Array(mut a) if a.len() == 1 => a.remove(0),
        other => panic!("expected an array with one object, got {other:#}"),
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `ip` (a.b.c.d) lies in `cidr` (a.b.c.d/nn).
pub fn in_subnet(ip: &str, cidr: &str) -> bool {
    let parse = |s: &str| s.parse::<std::net::Ipv4Addr>().ok().map(u32::from);
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Some(ip), Some(net), Ok(len)) = (parse(ip), parse(net), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    len <= 32 && ip & mask == net & mask
}

// ----- NAT: the outside world, a whoami server and a probe client -----------

/// The daemon's address on the first uplink: "the host's address".
pub const HOST_IP: &str = "198.51.100.1";
/// The outside world's address on the first uplink.
pub const OUTSIDE_IP: &str = "198.51.100.2";
/// The daemon's second host address (on the second uplink), for ports
/// bound to one address.
pub const HOST_IP2: &str = "203.0.113.1";
/// The outside world's address on the second uplink.
pub const OUTSIDE_IP2: &str = "203.0.113.2";

/// A TCP/UDP "whoami" server: `python3 -u -c WHOAMI_PY TAG SPEC...` where a
/// SPEC is `tcp:PORT`, `udp:PORT` or a range `tcp:FIRST-LAST`; it binds
/// 0.0.0.0 on each and prints `WHOAMI-READY` once all are bound. Every line of a
/// TCP connection and every UDP datagram gets one line back:
/// `tag=TAG peer=IP:PORT local=IP:PORT msg=MSG`, where `peer` is the client
/// address the server saw and `local` the server's own end (for UDP the
/// datagram's destination address, from IP_PKTINFO). It logs each
/// connection or datagram on stdout as `tcp|udp PEER LOCAL`.
pub const WHOAMI_PY: &str = r#"
import socket, sys, threading

tag = sys.argv[1]
PKTINFO = getattr(socket, 'IP_PKTINFO', 8)

def fmt(a):
    return '%s:%d' % (a[0], a[1])

def answer(msg, peer, local):
    return ('tag=%s peer=%s local=%s msg=%s\n' % (tag, fmt(peer), fmt(local), msg)).encode()

def tcp(port):
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(('0.0.0.0', port))
    l.listen(128)
    def serve(c, peer):
        local = c.getsockname()
        print('tcp', fmt(peer), fmt(local), flush=True)
        with c:
            try:
                for raw in c.makefile('rb'):
                    c.sendall(answer(raw.decode(errors='replace').strip(), peer, local))
            except OSError:
                pass
    def loop():
        while True:
            c, peer = l.accept()
            threading.Thread(target=serve, args=(c, peer), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, PKTINFO, 1)
    s.bind(('0.0.0.0', port))
    def loop():
        while True:
            data, anc, _, peer = s.recvmsg(65535, socket.CMSG_SPACE(12))
            dst = '0.0.0.0'
            for level, kind, payload in anc:
                if level == socket.IPPROTO_IP and kind == PKTINFO:
                    dst = socket.inet_ntoa(payload[8:12])
            local = (dst, port)
            print('udp', fmt(peer), fmt(local), flush=True)
            s.sendto(answer(data.decode(errors='replace').strip(), peer, local), peer)
    threading.Thread(target=loop, daemon=True).start()

for spec in sys.argv[2:]:
    proto, ports = spec.split(':')
    first, _, last = ports.partition('-')
    for port in range(int(first), int(last or first) + 1):
        {'tcp': tcp, 'udp': udp}[proto](port)
print('WHOAMI-READY', flush=True)
threading.Event().wait()
"#;

/// A client for [`WHOAMI_PY`]: `python3 -c PROBE_PY PROTO HOST PORT
/// [--timeout S] [--sport PORT] [--msg M] [--count N] [--interval S]`,
/// PROTO `tcp`, `udp` (a connected socket) or `udp-unconnected`
/// (sendto/recvfrom). It sends COUNT messages over one socket, INTERVAL
/// apart, each answered within TIMEOUT, and prints one JSON line per
/// answer: `ok` true, the server's fields (`tag`, `peer`, `local`, `msg`),
/// `client` (getsockname), `sockpeer` (getpeername, connected sockets) and
/// `from` (the UDP answer's source). A failure prints `ok` false with
/// `error`: the errno name (`ECONNREFUSED`, ...) or `timeout`; exit 1.
pub const PROBE_PY: &str = r#"
import argparse, errno, json, socket, sys, time

p = argparse.ArgumentParser()
p.add_argument('proto', choices=['tcp', 'udp', 'udp-unconnected'])
p.add_argument('host')
p.add_argument('port', type=int)
p.add_argument('--timeout', type=float, default=2.0)
p.add_argument('--sport', type=int, default=0)
p.add_argument('--msg', default='hello')
p.add_argument('--count', type=int, default=1)
p.add_argument('--interval', type=float, default=0.0)
a = p.parse_args()

def fmt(x):
    return '%s:%d' % (x[0], x[1])

i = 0
try:
    kind = socket.SOCK_STREAM if a.proto == 'tcp' else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(a.timeout)
    if a.sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(('0.0.0.0', a.sport))
    if a.proto != 'udp-unconnected':
        s.connect((a.host, a.port))
    f = s.makefile('rb') if a.proto == 'tcp' else None
    for i in range(1, a.count + 1):
        if i > 1 and a.interval:
            time.sleep(a.interval)
        msg = a.msg if a.count == 1 else '%s-%d' % (a.msg, i)
        r = {'ok': True, 'i': i}
        if a.proto != 'udp-unconnected':
            r['sockpeer'] = fmt(s.getpeername())
        if a.proto == 'tcp':
            s.sendall((msg + '\n').encode())
            line = f.readline()
            if not line:
                raise ConnectionResetError(errno.ECONNRESET, 'closed by the server')
            text = line.decode()
        else:
            if a.proto == 'udp':
                s.send(msg.encode())
            else:
                s.sendto(msg.encode(), (a.host, a.port))
            data, frm = s.recvfrom(65535)
            r['from'] = fmt(frm)
            text = data.decode()
        r['client'] = fmt(s.getsockname())
        for kv in text.strip().split(' ', 3):
            k, _, v = kv.partition('=')
            r[k] = v
        print(json.dumps(r), flush=True)
except TimeoutError:
    print(json.dumps({'ok': False, 'i': i, 'error': 'timeout'}), flush=True)
    sys.exit(1)
except OSError as e:
    name = errno.errorcode.get(e.errno) if e.errno else None
    print(json.dumps({'ok': False, 'i': i, 'error': name or repr(e)}), flush=True)
    sys.exit(1)
"#;

/// A DNS client: `python3 -c DNS_QUERY_PY NAME TYPE udp|tcp SERVER COUNT`
/// prints one JSON object per query: rcode, tc, answers (A as addresses,
/// PTR as names, others as `typeN`) and the time taken in ms.
pub const DNS_QUERY_PY: &str = r#"
import json, random, socket, struct, sys, time

def name(msg, off):
    labels, end, hops = [], None, 0
    while True:
        n = msg[off]
        if n >= 0xC0:
            end = off + 2 if end is None else end
            off, hops = ((n & 0x3F) << 8) | msg[off + 1], hops + 1
            assert hops < 20, 'pointer loop'
        elif n == 0:
            return '.'.join(labels) + '.', off + 1 if end is None else end
        else:
            labels.append(msg[off + 1:off + 1 + n].decode())
            off += n + 1

def ask(qname, qtype, proto, server):
    qid = random.randrange(65536)
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    for label in qname.strip('.').split('.'):
        q += bytes([len(label)]) + label.encode()
    q += b'\0' + struct.pack('>HH', qtype, 1)
    start = time.monotonic()
    if proto == 'tcp':
        s = socket.create_connection((server, 53), timeout=5)
        s.sendall(struct.pack('>H', len(q)) + q)
        buf = b''
        while len(buf) < 2 or len(buf) < 2 + struct.unpack('>H', buf[:2])[0]:
            chunk = s.recv(65535)
            assert chunk, 'connection closed early'
            buf += chunk
        msg = buf[2:]
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.connect((server, 53))
        s.send(q)
        msg = s.recv(65535)
    ms = int((time.monotonic() - start) * 1000)
    rid, flags, qd, an = struct.unpack('>HHHH', msg[:8])
    assert rid == qid, 'wrong id'
    off = 12
    for _ in range(qd):
        off = name(msg, off)[1] + 4
    answers = []
    for _ in range(an):
        off = name(msg, off)[1]
        rtype, _, _, rdlen = struct.unpack('>HHIH', msg[off:off + 10])
        off += 10
        if rtype == 1:
            answers.append(socket.inet_ntoa(msg[off:off + 4]))
        elif rtype == 12:
            answers.append(name(msg, off)[0])
        else:
            answers.append('type%d' % rtype)
        off += rdlen
    return {'rcode': flags & 15, 'tc': bool(flags & 0x200), 'answers': answers, 'ms': ms}

qname, qtype, proto, server, count = sys.argv[1:6]
for _ in range(int(count)):
    print(json.dumps(ask(qname, {'A': 1, 'PTR': 12, 'AAAA': 28}[qtype], proto, server)), flush=True)
"#;

/// `python3 -u -c WHOAMI_PY TAG SPECS...`.
pub fn whoami_args(tag: &str, specs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["python3", "-u", "-c", WHOAMI_PY, tag]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(specs.iter().map(|s| s.to_string()));
    v
}

/// `python3 -c PROBE_PY PROTO HOST PORT OPTS...`.
pub fn probe_args(proto: &str, host: &str, port: u16, opts: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["python3", "-c", PROBE_PY, proto, host]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(port.to_string());
    v.extend(opts.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// One answer of a [`WHOAMI_PY`] server as [`PROBE_PY`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The TAG of the server that answered.
    pub tag: String,
    /// The client address the server saw, `IP:PORT`.
    pub peer: String,
    /// The server's own end of the flow, `IP:PORT`.
    pub local: String,
    pub msg: String,
    /// The client socket's own address (getsockname, after the exchange;
    /// `0.0.0.0:PORT` for an unconnected UDP socket).
    pub client: String,
    /// getpeername() of the client socket (TCP and connected UDP).
    pub sockpeer: Option<String>,
    /// The source address of the UDP answer (recvfrom).
    pub from: Option<String>,
}

impl Hello {
    fn from_json(v: &Value) -> Hello {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let o = |k: &str| v[k].as_str().map(str::to_string);
        Hello {
            tag: s("tag"),
            peer: s("peer"),
            local: s("local"),
            msg: s("msg"),
            client: s("client"),
            sockpeer: o("sockpeer"),
            from: o("from"),
        }
    }

    /// The address part of [`Hello::peer`].
    pub fn peer_ip(&self) -> &str {
        self.peer.rsplit_once(':').map_or("", |(ip, _)| ip)
    }

    /// The port part of [`Hello::peer`].
    pub fn peer_port(&self) -> u16 {
        self.peer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }

    /// The port part of [`Hello::client`].
    pub fn client_port(&self) -> u16 {
        self.client
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

/// The JSON lines [`PROBE_PY`] printed.
pub fn probe_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["ok"].is_boolean())
        .collect()
}

/// The result of a one-shot probe: the answer, or `Err` with the errno name
/// (`ECONNREFUSED`, ...) or `timeout`; `Err("probe did not run: ...")`
/// when the probe printed no result at all.
pub fn probe_result(out: &Output) -> Result<Hello, String> {
    match probe_lines(&out.stdout).last() {
        Some(v) if v["ok"] == true => Ok(Hello::from_json(v)),
        Some(v) => Err(v["error"].as_str().unwrap_or("unknown").to_string()),
        None => Err(format!("probe did not run: {out}")),
    }
}

/// "The outside world": a namespace joined to the daemon's by two veth
/// pairs, `uplink0` (daemon side, [`HOST_IP`]/24) to `out0` ([`OUTSIDE_IP`])
/// and `uplink1` ([`HOST_IP2`]/24) to `out1` ([`OUTSIDE_IP2`]). It has no
/// default route and no route to any container subnet, so an answer to a
/// container comes back only if its source was translated to a host
/// address. Dropping it kills every process inside and deletes the
/// namespace, which takes both veth pairs with it.
pub struct Outside {
    ns: NetNs,
}

impl Outside {
    /// Builds the namespace and the two links after the daemon started (it
    /// notices new host interfaces by itself), and checks that the daemon's
    /// netns reaches both outside addresses.
    pub fn new(d: &Daemon) -> Outside {
        let out = Outside { ns: NetNs::new() };
        let host = d.ns();
        for (i, (host_ip, outside_ip)) in [(HOST_IP, OUTSIDE_IP), (HOST_IP2, OUTSIDE_IP2)]
            .into_iter()
            .enumerate()
        {
            let (up, peer) = (format!("uplink{i}"), format!("out{i}"));
            host.exec(&[
                "ip",
                "link",
                "add",
                &up,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                out.ns.name(),
            ])
            .ok();
            host.exec(&["ip", "addr", "add", &format!("{host_ip}/24"), "dev", &up])
                .ok();
            out.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{outside_ip}/24"),
                "dev",
                &peer,
            ])
            .ok();
            out.exec(&["ip", "link", "set", &peer, "up"]).ok();
            host.exec(&["ip", "link", "set", &up, "up"]).ok();
        }
        for ip in [OUTSIDE_IP, OUTSIDE_IP2] {
            retry(
                &format!("the daemon's netns to reach {ip}"),
                10,
                Duration::from_millis(200),
                || {
                    let out = host.exec(&["ping", "-c1", "-W1", ip]);
                    out.success().then_some(()).ok_or(out.to_string())
                },
            );
        }
        out
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// Runs a command in the outside namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ns.exec(args)
    }

    /// `ip netns exec OUTSIDE ARGS...`, for a background [`Proc`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns.name()]).args(args);
        c
    }

    /// Starts a [`WHOAMI_PY`] server tagged `tag` in the outside namespace
    /// and waits until it listens. It dies with the returned guard (or with
    /// the namespace).
    pub fn serve(&self, tag: &str, specs: &[&str]) -> Proc {
        let server = Proc::spawn(self.command(&strs(&whoami_args(tag, specs))));
        eventually(&format!("the outside server {tag} to listen"), || {
            let out = server.output_so_far();
            out.contains("WHOAMI-READY").then_some(()).ok_or(out)
        });
        server
    }

    /// A one-shot [`PROBE_PY`] from the outside namespace.
    pub fn probe(
        &self,
        proto: &str,
        host: &str,
        port: u16,
        opts: &[&str],
    ) -> Result<Hello, String> {
        probe_result(&self.exec(&strs(&probe_args(proto, host, port, opts))))
    }

    /// A [`PROBE_PY`] from the outside namespace, in the background.
    pub fn spawn_probe(&self, proto: &str, host: &str, port: u16, opts: &[&str]) -> Proc {
        Proc::spawn(self.command(&strs(&probe_args(proto, host, port, opts))))
    }
}

impl Daemon {
    /// `run -d --name NAME [--network NET] EXTRA... -- WHOAMI_PY NAME SPECS...`
    /// (tagged with its name), waiting until the server listens.
    #[track_caller]
    pub fn run_whoami(
        &self,
        name: &str,
        network: Option<&str>,
        extra: &[&str],
        specs: &[&str],
    ) -> String {
        let id = self.run_cmd(name, network, extra, &strs(&whoami_args(name, specs)));
        // Not plain "ready": "Address already in use" must not count.
        self.wait_logs(name, "WHOAMI-READY");
        id
    }

    /// A one-shot [`PROBE_PY`] inside container `ctr` (`exec`).
    pub fn probe(
        &self,
        ctr: &str,
        proto: &str,
        host: &str,
        port: u16,
        opts: &[&str],
    ) -> Result<Hello, String> {
        probe_result(&self.exec_in(ctr, &strs(&probe_args(proto, host, port, opts))))
    }

    /// A one-shot [`PROBE_PY`] in the daemon's netns ("the host").
    pub fn probe_host(
        &self,
        proto: &str,
        host: &str,
        port: u16,
        opts: &[&str],
    ) -> Result<Hello, String> {
        probe_result(&self.ns().exec(&strs(&probe_args(proto, host, port, opts))))
    }

    /// `port CTR`: Docker-style `(container side, host side)` pairs such as
    /// `("80/tcp", "0.0.0.0:8080")`, IPv4 host sides only.
    #[track_caller]
    pub fn ports(&self, ctr: &str) -> Vec<(String, String)> {
        let out = self.ok(&["port", ctr]);
        let mut v: Vec<(String, String)> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once(" -> "))
            .map(|(c, h)| (c.trim().to_string(), h.trim().to_string()))
            .filter(|(_, h)| !h.starts_with('['))
            .collect();
        v.sort();
        v
    }

    /// The host port `port CTR` shows for `cport` (e.g. "80/tcp").
    #[track_caller]
    pub fn host_port(&self, ctr: &str, cport: &str) -> u16 {
        let ports = self.ports(ctr);
        ports
            .iter()
            .find(|(c, _)| c == cport)
            .and_then(|(_, h)| h.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no host port for {cport} of {ctr}: {ports:?}"))
    }

    /// The entry of program `name` in `stats --format json`.
    #[track_caller]
    pub fn program_stats(&self, name: &str) -> Value {
        let stats = self.stats();
        stats["programs"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no program {name:?} in the stats: {stats:#}"))
    }

    /// How many entries of the pinned conntrack map `CT` carry `ip` as
    /// source or destination, in the key or the rewrite; `None` when the
    /// map or `bpftool` is not there to tell.
    pub fn conntrack_mentions(&self, ip: &str) -> Option<usize> {
        let want: Vec<u8> = ip.parse::<std::net::Ipv4Addr>().ok()?.octets().to_vec();
        let n = self
            .conntrack_dump()?
            .iter()
            .filter(|(k, v)| {
                [k, v]
                    .iter()
                    .any(|b| b.len() >= 8 && (b[0..4] == want[..] || b[4..8] == want[..]))
            })
            .count();
        Some(n)
    }

    /// Every entry of the pinned conntrack map `CT` as (key, value) bytes
    /// (a key: source and destination address, source and destination
    /// port, all in network order, then the protocol); `None` when the map
    /// or `bpftool` is not there to tell.
    pub fn conntrack_dump(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let pin = std::fs::read_dir(&self.bpffs)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("maps/CT"))
            .find(|p| p.exists())?;
        let out = sh("bpftool", &["-j", "map", "dump", "pinned", pin.to_str()?]);
        if !out.success() {
            return None;
        }
        let bytes = |v: &Value| -> Vec<u8> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str())
                .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                .collect()
        };
        let entries: Value = serde_json::from_str(&out.stdout).ok()?;
        Some(
            entries
                .as_array()?
                .iter()
                .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
                .collect(),
        )
    }
}

// ----- multi-host: an underlay switch, etcd, one daemon per host ------------

/// Debian's etcd server (`etcd-server`, installed by `cargo xtask setup`).
pub const ETCD_BIN: &str = "/usr/bin/etcd";
/// etcd's client port on the underlay bridge. It lives in the lab's own
/// underlay namespace, so it never meets a system etcd on the same port.
pub const ETCD_PORT: u16 = 2379;
/// The IANA VXLAN port, which the overlay and the kernel's vxlan use.
pub const VXLAN_PORT: u16 = 4789;
/// The underlay's MTU minus VXLAN's 50 bytes of outer headers.
pub const OVERLAY_MTU: u32 = 1450;

/// The third octet X of a fresh underlay 192.168.X.0/24: different for
/// each lab of a run (and, through the pid, most likely across the test
/// binaries running at once). Each lab's addresses live only in its own
/// namespaces, so a clash would be harmless; the point is that a capture
/// or a log names one lab.
fn underlay_octet() -> u8 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed);
    (n % 200 + 20) as u8
}

/// An etcd server in a namespace, listening on `ip`:[`ETCD_PORT`] with its
/// own data dir. [`Etcd::stop`] and [`Etcd::start`] keep the data; drop
/// kills it (the data dir goes with the caller's tempdir).
pub struct Etcd {
    ns: String,
    ip: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd in `ns` on `ip` with its data and log under `dir`, and
    /// waits until it reports healthy.
    pub fn start_in(ns: &NetNs, ip: &str, dir: &Path) -> Etcd {
        assert!(
            Path::new(ETCD_BIN).is_file(),
            "{ETCD_BIN} is missing: run `cargo xtask setup` (Debian's etcd-server)"
        );
        let mut e = Etcd {
            ns: ns.name().to_string(),
            ip: ip.to_string(),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
        };
        e.start();
        e
    }

    /// `etcd://IP:PORT`, the daemons' `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}:{ETCD_PORT}", self.ip)
    }

    /// `http://IP:PORT`, for its HTTP API (health, the v3 JSON gateway).
    pub fn http(&self) -> String {
        format!("http://{}:{ETCD_PORT}", self.ip)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it (again, on the same data dir) and waits until healthy.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the etcd log");
        let client = self.http();
        let peer = "http://127.0.0.1:2380";
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(ETCD_BIN)
            .args(["--name", "lab", "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("lab={peer}")])
            // Docker 20.10's cluster store (libkv) speaks etcd's v2 API.
            .arg("--enable-v2=true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting etcd through nsenter");
        self.child = Some(child);
        retry(
            "etcd to report healthy",
            100,
            Duration::from_millis(100),
            || {
                if let Some(st) = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    self.child = None;
                    panic!(
                        "etcd exited during startup ({st}): {}",
                        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
                    );
                }
                self.healthy()
                    .then_some(())
                    .ok_or_else(|| "not healthy yet".to_string())
            },
        );
    }

    /// Whether `GET /health` answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        let out = self.curl(&["-s", "-m", "2", &format!("{}/health", self.http())]);
        out.success() && out.stdout.contains(r#""health":"true""#)
    }

    /// curl inside etcd's namespace.
    pub fn curl(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "curl"]).args(args);
        run(c)
    }

    /// Stops it (SIGTERM, SIGKILL after 10 s) and waits for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if !signal_and_wait(&mut child, "TERM", 100) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Everything etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- etcd log (end) ---\n{}", tail(&self.log(), 30));
        }
    }
}

/// A host of the lab without a daemon: a namespace joined to the underlay
/// bridge by `eth0` (its address `ip`/24).
pub struct PlainHost {
    pub ns: NetNs,
    pub ip: String,
    /// Its port on the underlay bridge (where a capture sees its traffic).
    pub port: String,
}

/// "The physical network": an underlay namespace whose Linux bridge `br0`
/// (192.168.X.1/24) is the switch, etcd listening on the bridge's address,
/// and hosts joined to it, each with `eth0` at 192.168.X.(10+i)/24: hosts
/// with a daemon (`--store` etcd, `--node-name host<i>`, `--advertise-addr`
/// its eth0) and plain hosts (for a foreign VTEP). Dropping it stops the
/// daemons (removing their containers while etcd still runs), then etcd,
/// then deletes the namespaces and the directories.
pub struct Lab {
    /// Dropped first: the daemons remove their containers through etcd.
    hosts: Vec<Daemon>,
    /// Each daemon's port on the underlay bridge.
    ports: Vec<String>,
    plain: Vec<PlainHost>,
    etcd: Etcd,
    underlay: NetNs,
    dir: TempDir,
    octet: u8,
    /// The next host number (1-based, for daemons and plain hosts alike).
    next: u8,
    lease_ttl: u64,
    node_grace: u64,
}

impl Lab {
    /// An underlay with etcd and `hosts` daemons, each one's lease `lease_ttl`
    /// seconds (a killed daemon is seen down that long after).
    pub fn new(hosts: usize, lease_ttl: u64) -> Lab {
        require_root();
        let dir = TempDir::new();
        let underlay = NetNs::new();
        let octet = underlay_octet();
        let bridge_ip = format!("192.168.{octet}.1");
        for args in [
            // A fixed MAC: a bridge without one takes its lowest port's, so
            // plugging in a host later would change the gateway's MAC
            // under the hosts that already resolved it (seen as etcd
            // stalls in the cluster benchmark).
            &[
                "ip",
                "link",
                "add",
                "br0",
                "address",
                "02:00:00:00:00:01",
                "type",
                "bridge",
            ][..],
            &[
                "ip",
                "addr",
                "add",
                &format!("{bridge_ip}/24"),
                "dev",
                "br0",
            ],
            &["ip", "link", "set", "br0", "up"],
        ] {
            underlay.exec(args).ok();
        }
        // A switch, not a filter: bridged frames skip iptables.
        let _ = underlay.exec(&["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"]);
        let etcd = Etcd::start_in(&underlay, &bridge_ip, dir.path());
        let mut lab = Lab {
            hosts: Vec::new(),
            ports: Vec::new(),
            plain: Vec::new(),
            etcd,
            underlay,
            dir,
            octet,
            next: 1,
            lease_ttl,
            node_grace: 300,
        };
        for _ in 0..hosts {
            lab.add_host();
        }
        lab
    }

    /// The bridge's address (etcd's).
    pub fn bridge_ip(&self) -> String {
        format!("192.168.{}.1", self.octet)
    }

    /// The underlay's /24.
    pub fn underlay_subnet(&self) -> String {
        format!("192.168.{}.0/24", self.octet)
    }

    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    pub fn etcd(&mut self) -> &mut Etcd {
        &mut self.etcd
    }

    pub fn lease_ttl(&self) -> u64 {
        self.lease_ttl
    }

    /// A fresh namespace on the underlay: `eth0` at 192.168.X.(10+n)/24
    /// (MTU 1500) on a bridge port `h<n>`, reaching the bridge. Returns it,
    /// its address and its bridge port.
    fn join(&mut self) -> (NetNs, String, String) {
        let n = self.next;
        assert!(n <= 200, "too many hosts for one /24");
        self.next += 1;
        let ns = NetNs::new();
        let ip = format!("192.168.{}.{}", self.octet, 10 + u32::from(n));
        let port = format!("h{n}");
        let u = &self.underlay;
        u.exec(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])
        .ok();
        u.exec(&["ip", "link", "set", &port, "master", "br0", "up"])
            .ok();
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .ok();
        ns.exec(&["ip", "link", "set", "eth0", "up"]).ok();
        let bridge = self.bridge_ip();
        retry(
            &format!("{ip} to reach the underlay bridge {bridge}"),
            50,
            Duration::from_millis(200),
            || {
                let out = ns.exec(&["ping", "-c1", "-W1", &bridge]);
                out.success().then_some(()).ok_or(out.to_string())
            },
        );
        (ns, ip, port)
    }

    /// Adds a host with a daemon (`host<n>`); returns its index in
    /// [`Lab::host`].
    pub fn add_host(&mut self) -> usize {
        self.add_host_with(&[])
    }

    /// [`Lab::add_host`] with extra `daemon` arguments (the Docker
    /// plugin's, say).
    pub fn add_host_with(&mut self, extra: &[&str]) -> usize {
        let (ns, ip, port) = self.join();
        let name = format!("host{}", self.hosts.len() + self.plain.len() + 1);
        let store = self.etcd.url();
        let (ttl, grace) = (self.lease_ttl.to_string(), self.node_grace.to_string());
        let d = Daemon::start_in(
            ns,
            &[
                "--store",
                &store,
                "--node-name",
                &name,
                "--advertise-addr",
                &ip,
                "--lease-ttl",
                &ttl,
                "--node-grace",
                &grace,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        );
        self.hosts.push(d);
        self.ports.push(port);
        self.hosts.len() - 1
    }

    /// Adds a host without a daemon; returns its index in [`Lab::plain`].
    pub fn add_plain_host(&mut self) -> usize {
        let (ns, ip, port) = self.join();
        self.plain.push(PlainHost { ns, ip, port });
        self.plain.len() - 1
    }

    /// The `i`th daemon (0-based).
    pub fn host(&self, i: usize) -> &Daemon {
        &self.hosts[i]
    }

    pub fn host_mut(&mut self, i: usize) -> &mut Daemon {
        &mut self.hosts[i]
    }

    pub fn hosts(&self) -> &[Daemon] {
        &self.hosts
    }

    /// The `i`th daemon's node name.
    pub fn node_name(&self, i: usize) -> String {
        self.arg_of(i, "--node-name")
    }

    /// The `i`th daemon's underlay address (its `--advertise-addr`).
    pub fn host_ip(&self, i: usize) -> String {
        self.arg_of(i, "--advertise-addr")
    }

    fn arg_of(&self, i: usize, flag: &str) -> String {
        let a = &self.hosts[i].args;
        a.iter()
            .position(|x| x == flag)
            .and_then(|p| a.get(p + 1))
            .cloned()
            .unwrap_or_else(|| panic!("host {i} has no {flag}"))
    }

    /// The `i`th daemon's port on the underlay bridge.
    pub fn host_port(&self, i: usize) -> &str {
        &self.ports[i]
    }

    pub fn plain(&self, i: usize) -> &PlainHost {
        &self.plain[i]
    }

    pub fn tempdir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `tcpdump -U -w FILE` on `port` of the underlay bridge (a
    /// capture on `br0` itself would miss the frames it forwards between
    /// ports) for `filter`, and waits until it listens. Stop it with
    /// [`Capture::finish`].
    pub fn capture(&self, port: &str, filter: &str) -> Capture {
        let file = self.dir.path().join(format!("{}.pcap", unique("cap")));
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            self.underlay.name(),
            "tcpdump",
            "-i",
            port,
            "-n",
            "-U",
        ])
        // Each packet written as it comes: a SIGINT would otherwise
        // discard what sits in the capture buffer's current block.
        .arg("--immediate-mode")
        .arg("-w")
        .arg(&file)
        .args(filter.split_whitespace());
        let p = Proc::spawn(c);
        eventually("tcpdump to listen on the underlay", || {
            let out = p.output_so_far();
            out.contains("listening on").then_some(()).ok_or(out)
        });
        Capture { proc: p, file }
    }
}

/// A running capture on the underlay.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    /// A capture already started as `proc`, writing to `file`.
    pub fn from_parts(proc: Proc, file: PathBuf) -> Capture {
        Capture { proc, file }
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the pcap's path.
    pub fn finish(self) -> PathBuf {
        signal(self.proc.pid(), "INT");
        let out = self.proc.wait(Duration::from_secs(10));
        assert!(
            out.stderr.contains("packets captured"),
            "tcpdump did not stop cleanly: {out}"
        );
        self.file
    }
}

/// tshark's verdict on a capture: `tshark -r FILE -V` (full decode, VXLAN
/// on [`VXLAN_PORT`] by default) and the lines of `-Y FILTER -T fields`.
pub fn tshark(file: &Path, filter: &str, fields: &[&str]) -> (Output, Vec<String>) {
    assert!(
        Path::new("/usr/bin/tshark").is_file(),
        "tshark is missing: run `cargo xtask setup` (Debian's tshark)"
    );
    let f = file.to_str().expect("utf-8 path");
    // IP header checksums are always computed in software: check them
    // (UDP and TCP ones may be left to an offload that veths never do).
    let check = ["-o", "ip.check_checksum:TRUE"];
    let mut full = vec!["-n", "-r", f, "-V"];
    full.extend(check);
    let full = sh("tshark", &full);
    let mut args = vec!["-n", "-r", f, "-Y", filter, "-T", "fields"];
    args.extend(check);
    for x in fields {
        args.extend(["-e", x]);
    }
    let rows = sh("tshark", &args).ok();
    let lines = rows.stdout.lines().map(str::to_string).collect();
    (full, lines)
}

/// Asserts that tshark decodes every frame of `file` without a malformed
/// packet or an expert warning.
#[track_caller]
pub fn assert_well_formed(file: &Path) {
    let (full, frames) = tshark(file, "frame", &["frame.number"]);
    let full = full.ok();
    assert!(!frames.is_empty(), "the capture is empty");
    assert!(
        !full.stdout.contains("Malformed") && !full.stdout.contains("[Expert Info (Error"),
        "tshark finds malformed packets: {}",
        full.stdout
    );
    let (_, bad) = tshark(
        file,
        "_ws.malformed || ip.checksum.status == \"Bad\"",
        &["frame.number"],
    );
    assert!(bad.is_empty(), "malformed or warned frames: {bad:?}");
}

/// A host that speaks VXLAN without our daemon: the kernel's own `vx0`
/// (`id VNI dstport 4789 local IP nolearning`) on a Linux bridge `br0`, and
/// behind it a plain namespace (`ctr`, `eth0` at `ctr_ip`, MTU
/// [`OVERLAY_MTU`]) as its container. It floods (and sends unknown
/// unicast) to every VTEP given to [`KernelVtep::add_remote`] through
/// static all-zero FDB entries.
pub struct KernelVtep {
    /// The container namespace first: deleted before the host's.
    pub ctr: NetNs,
    pub ctr_ip: String,
    pub host_ip: String,
    host: String,
}

impl KernelVtep {
    /// Builds it on the lab's plain host `plain` with container address
    /// `ctr_cidr` (e.g. `10.77.0.250/24`).
    pub fn new(lab: &Lab, plain: usize, vni: u32, ctr_cidr: &str) -> KernelVtep {
        let h = lab.plain(plain);
        let ns = &h.ns;
        let vni = vni.to_string();
        let port = VXLAN_PORT.to_string();
        let mtu = OVERLAY_MTU.to_string();
        let ctr = NetNs::new();
        for args in [
            &[
                "ip",
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                &vni,
                "dstport",
                &port,
                "local",
                &h.ip,
                "dev",
                "eth0",
                "nolearning",
            ][..],
            &["ip", "link", "add", "br0", "type", "bridge"],
            &["ip", "link", "set", "vx0", "master", "br0", "up"],
            &["ip", "link", "set", "br0", "up"],
            &[
                "ip",
                "link",
                "add",
                "c0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ctr.name(),
            ],
            &[
                "ip", "link", "set", "c0", "mtu", &mtu, "master", "br0", "up",
            ],
        ] {
            ns.exec(args).ok();
        }
        let _ = ns.exec(&["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0"]);
        ctr.exec(&["ip", "link", "set", "eth0", "mtu", &mtu, "up"])
            .ok();
        ctr.exec(&["ip", "addr", "add", ctr_cidr, "dev", "eth0"])
            .ok();
        let ctr_ip = ctr_cidr.split('/').next().unwrap_or(ctr_cidr).to_string();
        KernelVtep {
            ctr,
            ctr_ip,
            host_ip: h.ip.clone(),
            host: ns.name().to_string(),
        }
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev vx0 dst IP`: floods and
    /// unknown unicast go (also) to the VTEP at `ip`.
    pub fn add_remote(&self, ip: &str) {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host]).args([
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "vx0",
            "dst",
            ip,
        ]);
        run(c).ok();
    }

    /// Runs a command in the container namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.ctr.exec(args)
    }

    /// `ip netns exec CTR ARGS...`, for a background [`Proc`].
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ctr.name()]).args(args);
        c
    }

    /// Whether a ping from the container reaches `ip` (a few tries: the
    /// first waits for ARP across the tunnel).
    pub fn pings(&self, ip: &str) -> bool {
        (0..5).any(|_| self.exec(&["ping", "-c1", "-W1", ip]).success())
    }

    /// A [`WHOAMI_PY`] server tagged `tag` in the container, listening.
    pub fn serve(&self, tag: &str, specs: &[&str]) -> Proc {
        let server = Proc::spawn(self.command(&strs(&whoami_args(tag, specs))));
        eventually(&format!("the server {tag} to listen"), || {
            let out = server.output_so_far();
            out.contains("WHOAMI-READY").then_some(()).ok_or(out)
        });
        server
    }

    /// A one-shot [`PROBE_PY`] from the container.
    pub fn probe(
        &self,
        proto: &str,
        host: &str,
        port: u16,
        opts: &[&str],
    ) -> Result<Hello, String> {
        probe_result(&self.exec(&strs(&probe_args(proto, host, port, opts))))
    }
}

//! Running child processes: every child gets its own process group, null
//! stdin, and a bounded wait that kills the whole group on timeout or on
//! Ctrl-C (which xtask catches so that its cleanup guards can run).

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Set while cleanup guards run: Ctrl-C no longer aborts commands then
/// (their timeouts still bound them), so teardown always completes.
static CLEANING: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT/SIGTERM/SIGHUP: the flag is checked by every wait loop,
/// which then kills its child's process group and returns an error, so the
/// Drop guards (namespaces, daemons, pins) run instead of the process dying.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic; sa is zeroed and filled.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst) && CLEANING.load(Ordering::SeqCst) == 0
}

/// Cleanup mode (see CLEANING) while this guard lives.
pub struct Cleaning(());

impl Cleaning {
    pub fn enter() -> Self {
        CLEANING.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for Cleaning {
    fn drop(&mut self) {
        CLEANING.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in small slices, returning early (with an error) on Ctrl-C.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `Command::new(prog).args(args)`.
pub fn cmd<S: AsRef<OsStr>>(prog: impl AsRef<OsStr>, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// The command line, for messages.
pub fn show(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|ch: char| ch.is_whitespace() || "'\"$;&|<>*?".contains(ch)) {
            s.push_str(&format!(" '{}'", a.replace('\'', r"'\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

pub fn killpg(pgid: u32, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::kill(-(pgid as libc::pid_t), sig);
        }
    }
}

pub fn kill_pid(pid: u32, sig: libc::c_int) {
    if pid > 1 {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Spawns `c` in a new process group with stdin from /dev/null.
pub fn spawn(c: &mut Command) -> Result<Child> {
    c.stdin(Stdio::null()).process_group(0);
    c.spawn().with_context(|| format!("starting `{}`", show(c)))
}

/// Waits for `child` (the leader of its own process group). On timeout or
/// Ctrl-C: SIGTERM to the group, SIGKILL after 3 s, and an error.
pub fn wait(child: &mut Child, timeout: Option<Duration>, what: &str) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        let late = timeout.is_some_and(|t| start.elapsed() > t);
        if late || interrupted() {
            stop_group(child, Duration::from_secs(3));
            if late {
                bail!(
                    "`{what}` timed out after {} s (killed)",
                    timeout.unwrap_or_default().as_secs()
                );
            }
            bail!("interrupted while running `{what}`");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to the child's process group, SIGKILL after `grace`, reaped.
pub fn stop_group(child: &mut Child, grace: Duration) {
    let pg = child.id();
    if matches!(child.try_wait(), Ok(Some(_))) {
        killpg(pg, libc::SIGKILL); // leftovers of the group, if any
        return;
    }
    killpg(pg, libc::SIGTERM);
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            killpg(pg, libc::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    killpg(pg, libc::SIGKILL);
    let _ = child.wait();
}

/// Runs with inherited stdout/stderr; error on failure.
pub fn run(c: &mut Command, timeout: Option<Duration>) -> Result<()> {
    let what = show(c);
    let mut child = spawn(c)?;
    let st = wait(&mut child, timeout, &what)?;
    if !st.success() {
        bail!("`{what}` failed ({st})");
    }
    Ok(())
}

pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

fn reader<R: std::io::Read + Send + 'static>(r: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Runs capturing stdout and stderr (any exit status).
pub fn capture(c: &mut Command, timeout: Option<Duration>) -> Result<Out> {
    let what = show(c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(c)?;
    let (o, e) = (reader(child.stdout.take()), reader(child.stderr.take()));
    let status = wait(&mut child, timeout, &what)?;
    // A grandchild that left the group may hold the pipes: do not hang on it.
    let get = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(3)).unwrap_or_default())
            .into_owned()
    };
    Ok(Out {
        status,
        stdout: get(o),
        stderr: get(e),
    })
}

/// Runs capturing output; error (with the end of stderr) unless it succeeds.
pub fn output(c: &mut Command, timeout: Option<Duration>) -> Result<String> {
    let what = show(c);
    let o = capture(c, timeout)?;
    if !o.ok() {
        bail!("`{what}` failed ({}): {}", o.status, tail(&o.stderr, 6));
    }
    Ok(o.stdout)
}

/// Whether the command can be run and exits 0 (output discarded).
pub fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null()).stderr(Stdio::null());
    match spawn(c) {
        Ok(mut ch) => {
            matches!(wait(&mut ch, Some(Duration::from_secs(60)), "probe"), Ok(s) if s.success())
        }
        Err(_) => false,
    }
}

/// Last `n` non-empty lines, joined for a one-line message.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    let t = lines[from..].join(" | ");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

/// Runs `c`, streaming its stdout and stderr through line by line (to our
/// stdout and stderr) and handing each line to `on_line`.
pub fn stream(
    c: &mut Command,
    timeout: Option<Duration>,
    mut on_line: impl FnMut(&str),
) -> Result<ExitStatus> {
    let what = show(c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(c)?;
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let mut readers = Vec::new();
    let pipes: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
        (
            false,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
        (
            true,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ),
    ];
    for (is_err, pipe) in pipes {
        let tx = tx.clone();
        if let Some(p) = pipe {
            readers.push(std::thread::spawn(move || {
                let mut r = BufReader::new(p);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let s = String::from_utf8_lossy(&line)
                                .trim_end_matches(['\n', '\r'])
                                .to_string();
                            if tx.send((is_err, s)).is_err() {
                                break;
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(tx);
    let start = Instant::now();
    let mut status = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((is_err, line)) => {
                if is_err {
                    eprintln!("{line}");
                } else {
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                }
                on_line(&line);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if status.is_none() {
                    status = Some(wait(
                        &mut child,
                        timeout.map(|t| t.saturating_sub(start.elapsed())),
                        &what,
                    )?);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            if let Some(st) = child.try_wait()? {
                status = Some(st);
                // Drain what is left, but do not wait for escaped grandchildren.
                let end = Instant::now() + Duration::from_secs(3);
                while let Ok((is_err, line)) =
                    rx.recv_timeout(end.saturating_duration_since(Instant::now()))
                {
                    if is_err {
                        eprintln!("{line}");
                    } else {
                        println!("{line}");
                    }
                    on_line(&line);
                }
                break;
            }
            let late = timeout.is_some_and(|t| start.elapsed() > t);
            if late || interrupted() {
                stop_group(&mut child, Duration::from_secs(3));
                if late {
                    bail!(
                        "`{what}` timed out after {} s (killed)",
                        timeout.unwrap_or_default().as_secs()
                    );
                }
                bail!("interrupted while running `{what}`");
            }
        }
    }
    status.ok_or_else(|| anyhow!("`{what}`: no exit status"))
}

/// Finds `prog` on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(prog))
            .find(|f| f.is_file())
    })
}

/// `~` (root on the machines this targets).
pub fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// Removes a file or directory tree if it exists (a bpffs mount point is
/// unmounted first); returns a warning on failure.
pub fn remove_path(p: &Path) -> Option<String> {
    if !p.exists() {
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let ps = p.to_string_lossy();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*ps))
    {
        let _ = capture(
            &mut cmd("umount", ["-l", &*ps]),
            Some(Duration::from_secs(10)),
        );
    }
    let r = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
    r.err().map(|e| format!("removing {}: {e}", p.display()))
}

/// A background server process, killed (its whole group) on drop.
pub struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        stop_group(&mut self.0, Duration::from_secs(2));
    }
}

/// Spawns `c` in the background with its output discarded.
pub fn bg(c: &mut Command) -> Result<Bg> {
    c.stdout(Stdio::null()).stderr(Stdio::null());
    Ok(Bg(spawn(c)?))
}

/// A tool's JSON output, or an error if it cannot be parsed or carries an
/// `"error"` (as iperf3's does).
pub fn json_of(out: &str, what: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(out).with_context(|| format!("parsing {what} JSON"))?;
    if let Some(e) = v["error"].as_str() {
        bail!("{what}: {e}");
    }
    Ok(v)
}

/// The first line a command prints (stdout, then stderr), or `unknown`.
/// The items of a JSON listing: an array, or one object per line (as
/// `ps --format json` and `network ls --format json` print them). Empty
/// when the text is neither.
pub fn json_list(out: &str) -> Vec<serde_json::Value> {
    if let Ok(serde_json::Value::Array(a)) = serde_json::from_str(out) {
        return a;
    }
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default()
}

pub fn first_line(c: &mut Command) -> String {
    capture(c, Some(Duration::from_secs(10)))
        .ok()
        .and_then(|o| {
            format!("{}{}", o.stdout, o.stderr)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Raises the soft open-files limit to the hard one (children inherit it);
/// the limit now in force, or `None` if it could not be read or raised.
pub fn raise_nofile() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit on a zeroed, correctly typed struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return None;
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return None;
            }
        }
        Some(r.rlim_cur as u64)
    }
}

/// Runs `c` capturing its output and measures it from spawn to exit
/// precisely (a blocking wait, not `wait`'s polling); a watchdog kills its
/// group after `limit` or on Ctrl-C, which is an error.
pub fn timed(c: &mut Command, limit: Duration) -> Result<(Duration, Out)> {
    let what = show(c);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = spawn(c)?;
    let (o, e) = (reader(child.stdout.take()), reader(child.stderr.take()));
    let (done, watch) = mpsc::channel::<()>();
    let pg = child.id();
    let dog = std::thread::spawn(move || loop {
        match watch.recv_timeout(Duration::from_millis(50)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if t0.elapsed() > limit || interrupted() {
                    killpg(pg, libc::SIGKILL);
                    return true;
                }
            }
            _ => return false,
        }
    });
    let status = child.wait();
    let took = t0.elapsed();
    let _ = done.send(());
    let killed = dog.join().unwrap_or(false);
    let status = status.with_context(|| format!("waiting for `{what}`"))?;
    if killed {
        check_interrupted()?;
        bail!("`{what}` timed out after {} s (killed)", limit.as_secs());
    }
    let get = |rx: mpsc::Receiver<Vec<u8>>| {
        String::from_utf8_lossy(&rx.recv_timeout(Duration::from_secs(3)).unwrap_or_default())
            .into_owned()
    };
    Ok((
        took,
        Out {
            status,
            stdout: get(o),
            stderr: get(e),
        },
    ))
}

//! Test helpers shared by every test of this crate: the unit tests reach them
//! as `crate::testutil` (`#[cfg(test)]`, never in the product) and the
//! integration tests compile this same file into each test binary through
//! `tests/common/mod.rs` (they link the library built without `cfg(test)`,
//! so they cannot see this module). Only dependencies of the crate (std,
//! nix, aya, dataplane-common), no `crate::` paths, so that the file builds
//! in both places.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `sizeof(struct __sk_buff)` on this kernel (BTF: 192 bytes); the kernel
/// accepts a shorter context, but a full one makes the intent plain.
pub const SK_BUFF_LEN: usize = 192;
/// Offset of `__u32 ifindex` in `struct __sk_buff` (include/uapi/linux/bpf.h).
pub const SK_BUFF_IFINDEX: usize = 40;

/// One BPF_PROG_TEST_RUN of the TC program `prog` on `frame`, as if it came
/// from device `ifindex` (honoured only for a real device of the caller's
/// namespace): the verdict and the frame as the program left it. Shared by
/// the two BPF labs (prog_test_run.rs, prog_test_nat.rs).
pub fn tc_test_run(
    prog: &aya::programs::SchedClassifier,
    ifindex: u32,
    frame: &[u8],
) -> Result<(u32, Vec<u8>), aya::programs::ProgramError> {
    use aya::programs::TestRun as _;
    let mut ctx = [0u8; SK_BUFF_LEN];
    ctx[SK_BUFF_IFINDEX..SK_BUFF_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
    // Room to spare: the kernel fails with ENOSPC if the output is larger
    // than the buffer, and the programs never grow a frame.
    let mut out = vec![0u8; frame.len() + 64];
    let r = prog.test_run(aya::programs::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out))
}

/// Runs `f` on a fresh thread that first moves into a new network namespace
/// (per thread: `unshare(CLONE_NEWNET)` does not affect the rest of the test
/// binary). Everything created there dies with the thread. Panics propagate.
/// `None` if the namespace cannot be made (not root): `f` did not run.
pub fn try_in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            Some(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`try_in_private_netns`] for tests that need root: no namespace panics.
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    try_in_private_netns(f).expect("unshare(CLONE_NEWNET) (tests must run as root)")
}

/// Brings `lo` up in the calling thread's network namespace (so that
/// 127.0.0.1 is a local address); panics if `ip` fails.
pub fn lo_up() {
    let ok = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip link set lo up");
}

fn is_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// A unique, empty scratch directory on a bpf filesystem for pins, removed
/// on drop even if the test fails (which unpins maps and links, so hooks
/// pinned there detach). It is a subdirectory of /sys/fs/bpf when that is a
/// bpffs; otherwise a private bpffs instance is mounted under the temporary
/// directory (and unmounted on drop) rather than touching /sys/fs/bpf.
pub struct Scratch {
    path: PathBuf,
    mounted: bool,
}

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let name = format!("dataplane-test-{tag}-{}", std::process::id());
        let sys = Path::new("/sys/fs/bpf");
        let (path, mount) = if is_bpffs(sys) {
            (sys.join(name), false)
        } else {
            (std::env::temp_dir().join(name), true)
        };
        let _ = std::fs::remove_dir_all(&path); // leftovers of a killed run
        std::fs::create_dir_all(&path).expect("creating the pin directory");
        // The guard exists from here on, so a failed mount still cleans up.
        let mut dir = Scratch {
            path,
            mounted: false,
        };
        if mount {
            nix::mount::mount(
                Some("bpf"),
                &dir.path,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .expect("mounting a bpf filesystem");
            dir.mounted = true;
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<scratch>/v<LAYOUT_VERSION>/maps`: where `Datapath::load` pins maps.
    pub fn maps(&self) -> PathBuf {
        self.layout_dir().join("maps")
    }

    /// `<scratch>/v<LAYOUT_VERSION>/sock/<name>`: a socket-hook link pin.
    pub fn sock_pin(&self, name: &str) -> PathBuf {
        self.layout_dir().join("sock").join(name)
    }

    fn layout_dir(&self) -> PathBuf {
        self.path
            .join(format!("v{}", dataplane_common::LAYOUT_VERSION))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Unpin everything first (removing a pin only drops a reference; open
        // fds keep maps alive until they are closed), then the mount, then
        // the directory itself. What cannot be removed is said, not hidden.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(e) = r {
                    eprintln!("warning: could not remove {}: {e}", p.display());
                }
            }
        }
        if self.mounted {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// A real etcd server for one test: on 127.0.0.1 with free client and peer
/// ports (never 2379/2380, which a system etcd may hold), its own data
/// directory in a temporary directory. Stopped, killed if need be, and its
/// directory removed on drop, even if the test fails. `stop` and `start`
/// restart it on the same ports and data (an etcd outage).
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<std::process::Child>,
}

/// Where Debian's etcd-server puts the binary.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

impl EtcdServer {
    /// Starts a fresh etcd and waits (bounded) until it is healthy.
    /// Panics if etcd is not installed, naming the fix.
    pub fn start(tag: &str) -> Self {
        assert!(
            Path::new(ETCD_BIN).is_file(),
            "{ETCD_BIN} not found: the etcd tests need a real etcd server; run `cargo xtask setup` (installs Debian's etcd-server)"
        );
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("dataplane-etcd-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the etcd test directory");
        let (client_port, peer_port) = (free_port(), free_port());
        let mut s = EtcdServer {
            dir,
            client_port,
            peer_port,
            child: None,
        };
        s.resume();
        s
    }

    /// `http://127.0.0.1:PORT`, as the store's connect takes it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts etcd again on the same ports and data directory and waits
    /// until it is healthy (panics with its log if it never is).
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("creating the etcd log");
        let child = std::process::Command::new(ETCD_BIN)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        self.child = Some(child);
        // Bounded: etcd is up in about a second here.
        for _ in 0..200 {
            if self.healthy() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                panic!("etcd exited ({st}) while starting:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("etcd not healthy after 10 s:\n{}", self.log());
    }

    /// Stops etcd (SIGTERM, then SIGKILL after a bounded wait); its data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// GET /health answers `"health":"true"`.
    pub fn healthy(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let t = std::time::Duration::from_millis(500);
        let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, t) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(t));
        let _ = c.set_write_timeout(Some(t));
        if c.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = c.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the kernel's choice).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Runs `ip args...` in the calling thread's network namespace.
pub fn ip_cmd(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Dotted-quad text of four address octets.
pub fn dotted(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// `aa:bb:...` text of a MAC address.
pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub type Job = Box<dyn FnOnce(&mut Vec<Box<dyn std::any::Any>>) + Send>;

/// A thread parked in a network namespace of its own (which lives as long
/// as the thread), running jobs sent to it there; what a job keeps (a
/// loaded datapath, a pin directory) is dropped when the thread ends, on
/// drop of this handle, before the namespace goes.
pub struct NsThread {
    tid: i32,
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl NsThread {
    pub fn spawn() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let mut kept = Vec::new();
            for job in rx {
                job(&mut kept);
            }
            // Pins and datapath go before the namespace does.
            while let Some(k) = kept.pop() {
                drop(k);
            }
        });
        NsThread {
            tid: tid_rx.recv().expect("namespace thread started"),
            jobs: Some(tx),
            handle: Some(handle),
        }
    }

    /// Runs `f` in the namespace and waits for it (a panic there fails the test).
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Box<dyn std::any::Any>>) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move |k| {
                let _ = tx.send(f(k));
            }))
            .expect("namespace thread alive");
        rx.recv()
            .expect("job finished (a panic in the namespace thread?)")
    }

    /// `ip ... netns` accepts a process id; a thread id names that thread's namespace.
    pub fn id(&self) -> String {
        self.tid.to_string()
    }

    pub fn cmd(&self, prog: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net=/proc/{}/ns/net", self.tid))
            .arg(prog)
            .args(args);
        c
    }

    pub fn ip(&self, args: &[&str]) {
        let out = self.cmd("ip", args).output().expect("nsenter ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// RFC 1071 over `b` (padded with a zero byte if odd).
pub fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The big-endian u16 of a frame at `at`.
pub fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// Frames as space-separated hex, so a mismatch shows the differing bytes.
pub fn hex(f: &[u8]) -> String {
    f.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The two tc programs the BPF_PROG_TEST_RUN tests run: their names in the
/// object and their slots in `STATS`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Prog {
    Container,
    Uplink,
}

impl Prog {
    pub fn name(self) -> &'static str {
        match self {
            Prog::Container => "from_container",
            Prog::Uplink => "from_uplink",
        }
    }

    pub fn slot(self) -> usize {
        match self {
            Prog::Container => dataplane_common::PROG_FROM_CONTAINER as usize,
            Prog::Uplink => dataplane_common::PROG_FROM_UPLINK as usize,
        }
    }
}

/// An uplink in the calling thread's namespace: the veth `dev` (MAC `mac`,
/// address `addr`/24) with its peer `peer`, both up, a default route via
/// `via` if given, permanent neighbours `neigh`, and forwarding on (the FIB
/// lookup for BPF answers FWD_DISABLED on a non-forwarding device).
/// Returns the ifindex of `dev`.
pub fn uplink_veth(
    dev: &str,
    peer: &str,
    mac: [u8; 6],
    addr: [u8; 4],
    via: Option<[u8; 4]>,
    neigh: &[([u8; 4], [u8; 6])],
) -> u32 {
    ip_cmd(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
    ip_cmd(&["link", "set", dev, "address", &mac_str(mac)]);
    ip_cmd(&["link", "set", dev, "up"]);
    ip_cmd(&["link", "set", peer, "up"]);
    ip_cmd(&["addr", "add", &format!("{}/24", dotted(addr)), "dev", dev]);
    if let Some(router) = via {
        ip_cmd(&[
            "route",
            "add",
            "default",
            "via",
            &dotted(router),
            "dev",
            dev,
        ]);
    }
    for (a, m) in neigh {
        ip_cmd(&[
            "neigh",
            "add",
            &dotted(*a),
            "lladdr",
            &mac_str(*m),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").expect("forwarding");
    nix::net::if_::if_nametoindex(dev).unwrap_or_else(|e| panic!("{dev}: {e}"))
}

//! Docker's embedded DNS server: one per sandbox, listening on
//! 127.0.0.11:53 (UDP and TCP) inside the sandbox's network namespace.
//!
//! The sockets are opened inside the sandbox (a socket keeps the namespace
//! it was created in) but served by the daemon's tokio runtime, so the
//! daemon answers for every container without running anything in it.
//! Each server knows which container it belongs to: a container sees only
//! the names on the networks it is attached to (see `lookup`), and every
//! other question is forwarded to the upstream servers (see `forward`).
//!
//! The message handling is hickory's: `hickory_server::Server` reads,
//! parses and frames the requests, `handler::SandboxHandler` answers them.

mod forward;
mod handler;
mod lookup;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use hickory_server::Server;
use nix::sched::{setns, CloneFlags};
use tokio::runtime::Handle;

use handler::SandboxHandler;

/// Where the embedded server listens inside every sandbox, as in Docker.
pub const DNS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// The port of the upstream servers taken from resolv.conf.
const DNS_PORT: u16 = 53;

/// A TCP client that sends nothing for this long is disconnected, so idle
/// connections cannot pile up in the daemon.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Receive buffer of the UDP socket (the kernel doubles it for bookkeeping).
const UDP_RCVBUF: usize = 1 << 20;

/// Responses queued per TCP connection (hickory's own default).
const TCP_RESPONSE_QUEUE: usize = 32;

/// One container's entry on one network.
#[derive(Debug, Clone)]
pub struct NameEntry {
    pub container_id: String,
    /// Container name, hostname and the network-scoped aliases, in that
    /// order (the first one answers reverse lookups). Matched
    /// case-insensitively, a trailing dot ignored.
    pub names: Vec<String>,
    pub ip: Ipv4Addr,
}

/// The entries of one network.
#[derive(Debug, Clone)]
pub struct NetworkNames {
    /// The network's name (`NAME.NETWORK` resolves too).
    pub name: String,
    pub entries: Vec<NameEntry>,
}

/// The whole name table, by network id.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub networks: HashMap<String, NetworkNames>,
    /// `--link` aliases, by the id of the linking container: only that
    /// container resolves them (as Docker does on user-defined networks).
    pub links: HashMap<String, Vec<(String, Ipv4Addr)>>,
}

/// The daemon's DNS service: the shared name table, the default upstream
/// servers, and the runtime the per-sandbox servers run on.
#[derive(Clone)]
pub struct Dns {
    /// Swapped as a whole by `update`; each query takes a snapshot, so a
    /// reader never holds the lock across an await.
    names: Arc<RwLock<Arc<Names>>>,
    upstreams: Arc<[SocketAddr]>,
    runtime: Handle,
}

impl Dns {
    /// `upstreams`: default upstream servers (the nameservers of the host's
    /// resolv.conf).
    ///
    /// # Panics
    /// Outside a tokio runtime: the runtime is captured here so that
    /// `start_sandbox` can be called from blocking threads.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            names: Arc::default(),
            upstreams: upstreams.into(),
            runtime: Handle::current(),
        }
    }

    /// Replaces the whole table; the next query sees it.
    pub fn update(&self, names: Names) {
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(names);
    }

    /// The `nameserver` entries of a resolv.conf text, port 53. Loopback
    /// entries (127.0.0.0/8, ::1) are skipped: inside a sandbox they would
    /// point at the sandbox itself, not at the host's resolver.
    pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("nameserver"), Some(addr)) => addr.parse::<IpAddr>().ok(),
                    _ => None,
                }
            })
            .filter(|ip| !ip.is_loopback())
            .map(|ip| SocketAddr::new(ip, DNS_PORT))
            .collect()
    }

    /// Binds `DNS_ADDR` (UDP and TCP) inside the network namespace at
    /// `netns` and serves it for container `container_id`. `upstreams`: the
    /// container's own `--dns` servers, or `None` for the defaults. The
    /// server stops when the returned handle is dropped.
    pub fn start_sandbox(
        &self,
        netns: &Path,
        container_id: &str,
        upstreams: Option<Vec<SocketAddr>>,
    ) -> Result<SandboxServer> {
        let (udp, tcp, cookie) = in_netns(netns, bind_dns_sockets)
            .with_context(|| format!("binding 127.0.0.11 in {}", netns.display()))?;
        let addr = udp.local_addr()?;
        // Registering the sockets with the reactor and spawning the server
        // tasks both need the runtime's context; the caller may be a plain
        // (blocking) thread.
        let _runtime = self.runtime.enter();
        let handler = SandboxHandler::new(
            container_id.to_owned(),
            self.names.clone(),
            upstreams.map_or_else(|| self.upstreams.clone(), Arc::from),
        );
        let mut server = Server::new(handler);
        server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
        server.register_listener(
            tokio::net::TcpListener::from_std(tcp)?,
            TCP_IDLE_TIMEOUT,
            TCP_RESPONSE_QUEUE,
        );
        Ok(SandboxServer {
            server,
            addr,
            netns_cookie: cookie,
        })
    }
}

/// A running per-sandbox server. Dropping it stops the server: its tasks
/// are aborted, which closes the sockets.
pub struct SandboxServer {
    server: Server<SandboxHandler>,
    addr: SocketAddr,
    netns_cookie: u64,
}

impl SandboxServer {
    /// Where the server really listens (UDP and TCP) inside the sandbox:
    /// 127.0.0.11 on a port of its own. The daemon's socket hooks send the
    /// sandbox's 127.0.0.11:53 there (see `DNS_PORTS`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cookie of the sandbox's network namespace.
    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }
}

impl Drop for SandboxServer {
    fn drop(&mut self) {
        // Tell the accept loops to stop; dropping `server` right after
        // aborts whatever is still running (hickory's JoinSet).
        self.server.shutdown_token().cancel();
    }
}

/// Opens the server's sockets in the calling thread's namespace,
/// non-blocking as tokio requires: UDP and TCP on 127.0.0.11 and one port
/// the kernel picks (free for both), so that port 53 stays the container's.
/// Also returns the namespace's cookie.
fn bind_dns_sockets() -> io::Result<(UdpSocket, TcpListener, u64)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(SocketAddr::new(DNS_ADDR.ip(), 0))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(DNS_ADDR.ip(), port)) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                // A burst of queries (a container starting many lookups at
                // once) should queue, not overflow the default buffer.
                nix::sys::socket::setsockopt(&udp, nix::sys::socket::sockopt::RcvBuf, &UDP_RCVBUF)
                    .map_err(io::Error::from)?;
                tcp.set_nonblocking(true)?;
                let cookie = crate::sockhook::netns_cookie_of(&udp)?;
                return Ok((udp, tcp, cookie));
            }
            // That port is taken for TCP: try another.
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port free for UDP and TCP")))
}

/// Runs `f` on a fresh thread that first enters the network namespace at
/// `netns`. Only that thread switches namespace (never a runtime worker), and
/// sockets it creates stay in the namespace after it ends.
fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let netns = netns.to_path_buf();
    std::thread::spawn(move || -> Result<T> {
        let ns = File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
        setns(ns, CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering {}", netns.display()))?;
        Ok(f()?)
    })
    .join()
    .map_err(|_| anyhow!("netns thread panicked"))?
}

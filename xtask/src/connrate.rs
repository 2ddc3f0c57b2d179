//! New TCP connections per second, for the published-port benchmark
//! (`natbench`). Both ends are this binary, started inside namespaces with
//! `ip netns exec`:
//!
//! - `conn-server --listen ADDR`: accepts, writes one byte (`GREETING`),
//!   closes; one connection at a time.
//! - `conn-client --connect ADDR --seconds N`: single-threaded, in a loop:
//!   connect, read the byte, close with `SO_LINGER` 0 (an RST, so neither
//!   end keeps a TIME_WAIT socket and the client never runs out of ports);
//!   prints one JSON object (connections, errors, rate, connect-to-byte
//!   latency percentiles).
//!
//! Every attempt is bounded (connect and read time out after 1 s), so a
//! path that drops the traffic shows up as errors, never as a hang.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::stats::percentile;

/// The byte the server sends: a connection that got it reached our server
/// (not some other listener on the port).
pub const GREETING: u8 = b'N';

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on (e.g. 0.0.0.0:20000).
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The published address to connect to.
    #[arg(long)]
    connect: SocketAddr,
    /// How long to measure, after a 0.2 s warm-up; 0 only waits for the
    /// first good connection (see --wait) and reports it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    seconds: u64,
    /// Before measuring, retry single connections for up to this many
    /// seconds until one gets the server's byte (the path may still be
    /// coming up); fail if none does.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=120))]
    wait: u64,
    /// Stop after this many connections even if time is left.
    #[arg(long, default_value_t = 5_000_000)]
    max: u64,
}

/// What one client run prints.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ClientResult {
    pub connect: SocketAddr,
    /// Connections that got the server's byte in the measured window.
    pub connections: u64,
    /// Attempts that failed (refused, timed out, reset before the byte, wrong byte).
    pub errors: u64,
    /// The first error's text, if any.
    pub first_error: Option<String>,
    pub seconds: f64,
    /// connections / seconds.
    pub per_sec: f64,
    /// Time from connect() to the server's byte, per connection (none
    /// without a measured window).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// How long the --wait phase took until the first good connection.
    pub ready_after_s: f64,
}

pub fn server(a: &ServerArgs) -> Result<()> {
    let l = TcpListener::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                // The client resets the connection after reading; errors
                // here (EPIPE, ECONNRESET) are expected and ignored.
                let _ = s.write_all(&[GREETING]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {} // ECONNABORTED and the like: next one
        }
    }
}

/// `SO_LINGER {on, 0}`: close() sends an RST and frees the socket at once.
fn linger_zero(s: &TcpStream) -> std::io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One connection: connect, read the greeting, close with an RST.
fn one(to: &SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(to, ATTEMPT_TIMEOUT).context("connect")?;
    linger_zero(&s).context("SO_LINGER")?;
    s.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) if b[0] == GREETING => Ok(t.elapsed()),
        Ok(1) => bail!(
            "unexpected byte {:#04x} (another server on the port?)",
            b[0]
        ),
        Ok(_) => bail!("closed by the other end before the greeting byte"),
        Err(e) => Err(anyhow!(e).context("reading the greeting byte")),
    }
}

pub fn client(a: &ClientArgs) -> Result<()> {
    let start = Instant::now();
    if a.wait > 0 {
        let end = start + Duration::from_secs(a.wait);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let last = match one(&a.connect) {
                Ok(_) => break,
                Err(e) => e,
            };
            if Instant::now() >= end {
                bail!(
                    "no connection to {} got the server's byte within {} s ({tries} tries; last: {last:#})",
                    a.connect,
                    a.wait,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let ready_after_s = start.elapsed().as_secs_f64();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut lat = Vec::new();
    let mut measured = Duration::ZERO;
    if a.seconds > 0 {
        let warm = Instant::now() + Duration::from_millis(200);
        while Instant::now() < warm {
            let _ = one(&a.connect);
        }
        lat.reserve(1 << 16);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(a.seconds);
        while Instant::now() < end && (lat.len() as u64) < a.max {
            match one(&a.connect) {
                Ok(d) => lat.push(d.as_secs_f64() * 1e6),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        measured = t0.elapsed();
        if lat.is_empty() {
            bail!(
                "no connection to {} succeeded in {} s ({errors} errors; first: {})",
                a.connect,
                a.seconds,
                first_error.unwrap_or_default()
            );
        }
    }
    let n = lat.len() as u64;
    lat.sort_by(f64::total_cmp);
    let secs = measured.as_secs_f64();
    let r = ClientResult {
        connect: a.connect,
        connections: n,
        errors,
        first_error,
        seconds: secs,
        per_sec: if secs > 0.0 { n as f64 / secs } else { 0.0 },
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        ready_after_s,
    };
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        let srv = std::thread::spawn(move || {
            for _ in 0..3 {
                let (mut s, _) = l.accept().unwrap();
                let _ = s.write_all(&[GREETING]);
            }
        });
        for _ in 0..3 {
            one(&to).unwrap();
        }
        srv.join().unwrap();
    }

    #[test]
    fn refused_is_an_error_not_a_hang() {
        let to = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let t = Instant::now();
        assert!(one(&to).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}

//! Single-connection TCP throughput, for the services benchmark
//! (`servicebench`). iperf3 opens a control connection and a data
//! connection; through a load balancer the two can land on different
//! replicas, and the data connection is then refused by a server that never
//! saw its cookie. Here one connection carries everything:
//!
//! - `stream-server --listen ADDR`: per accepted connection (a thread
//!   each), writes 128 KiB buffers until the peer goes away.
//! - `stream-client --connect ADDR --seconds N`: reads for N seconds after
//!   a 0.5 s warm-up and prints `{"gbps":..,"bytes":..,"seconds":..}`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

const BUF: usize = 128 * 1024;
const WARM_UP: Duration = Duration::from_millis(500);

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Address to listen on (e.g. 0.0.0.0:8080).
    #[arg(long)]
    listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[arg(long)]
    connect: SocketAddr,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
}

/// What one client run prints.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientResult {
    pub gbps: f64,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn server(a: &ServerArgs) -> Result<()> {
    let l = TcpListener::bind(a.listen).with_context(|| format!("binding {}", a.listen))?;
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let buf = vec![0u8; BUF];
            while s.write_all(&buf).is_ok() {}
        });
    }
    Ok(())
}

/// Reads from `s` for `warm` (not counted), then for `secs`.
fn receive(s: &mut TcpStream, warm: Duration, secs: Duration) -> Result<ClientResult> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; BUF];
    let mut read = |s: &mut TcpStream| -> Result<u64> {
        match s.read(&mut buf) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(n) => Ok(n as u64),
            Err(e) => Err(e).context("reading the stream"),
        }
    };
    let warm_end = Instant::now() + warm;
    while Instant::now() < warm_end {
        read(s)?;
    }
    let t0 = Instant::now();
    let end = t0 + secs;
    let mut bytes = 0u64;
    while Instant::now() < end {
        bytes = bytes.saturating_add(read(s)?);
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(ClientResult {
        gbps: bytes as f64 * 8.0 / seconds / 1e9,
        bytes,
        seconds,
    })
}

pub fn client(a: &ClientArgs) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&a.connect, Duration::from_secs(3))
        .with_context(|| format!("connecting to {}", a.connect))?;
    let r = receive(&mut s, WARM_UP, Duration::from_secs(a.seconds))?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stream_counts_what_it_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        // A server that sends exactly 3 buffers, then closes.
        let srv = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let buf = vec![0u8; BUF];
            for _ in 0..3 {
                s.write_all(&buf).unwrap();
            }
        });
        let mut s = TcpStream::connect(to).unwrap();
        srv.join().unwrap();
        // Longer than it takes to read 384 KiB on loopback: the close ends it.
        let e = receive(&mut s, Duration::ZERO, Duration::from_secs(30)).unwrap_err();
        assert!(format!("{e:#}").contains("closed"), "{e:#}");
    }

    #[test]
    fn loopback_rate_is_positive() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let buf = vec![0u8; BUF];
            while s.write_all(&buf).is_ok() {}
        });
        let mut s = TcpStream::connect(to).unwrap();
        let r = receive(
            &mut s,
            Duration::from_millis(10),
            Duration::from_millis(200),
        )
        .unwrap();
        assert!(r.bytes > 0 && r.gbps > 0.0, "{r:?}");
        assert!(r.seconds >= 0.2, "{r:?}");
    }
}

//! A 1-byte TCP ping-pong, the latency fallback when sockperf is unusable.
//! Both ends are this binary, started inside namespaces with `ip netns exec`.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use crate::stats::percentile;

pub fn server(listen: &str) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    for s in l.incoming() {
        let mut s = s?;
        std::thread::spawn(move || {
            let _ = s.set_nodelay(true);
            let mut b = [0u8; 1];
            while matches!(s.read(&mut b), Ok(1)) {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Prints `{"p50_us":..,"p99_us":..,"avg_us":..,"samples":..}` (round trips).
pub fn client(connect: &str, seconds: u64) -> Result<()> {
    // Bounded: a path that drops the SYN is an error in 3 s, not after the
    // kernel's SYN retries.
    let to: std::net::SocketAddr = connect
        .parse()
        .with_context(|| format!("{connect:?} is not an IP:PORT"))?;
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .with_context(|| format!("connecting to {connect}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut b = [0u8; 1];
    let mut one = |s: &mut TcpStream| -> Result<()> {
        s.write_all(&[7])?;
        s.read_exact(&mut b)?;
        Ok(())
    };
    let warm = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm {
        one(&mut s)?;
    }
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut rtts = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        one(&mut s)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    if rtts.is_empty() {
        bail!("no round trips measured");
    }
    let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
    rtts.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"p50_us": percentile(&rtts, 50.0), "p99_us": percentile(&rtts, 99.0), "avg_us": avg, "samples": rtts.len()})
    );
    Ok(())
}

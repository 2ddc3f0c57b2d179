//! A small HTTP/1.1 client for the daemon's Unix socket.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::ErrorBody;

/// How long a request may take by default (`--timeout`, `DATAPLANE_TIMEOUT`):
/// far above the slowest legitimate call (an `rm -f` waits up to 3 s for
/// SIGTERM; a `run` publishing 10,000 ports takes under a second), short
/// enough that a daemon that is stopped or stuck is reported, not waited on
/// forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take (at most the request's timeout). A daemon
/// that is alive but not accepting (stopped, its backlog full) is one that
/// does not answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Client {
    socket: PathBuf,
    /// `None`: no limit.
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout: Some(DEFAULT_TIMEOUT),
        }
    }

    /// The same client with another request timeout (`None`: wait forever).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one request; a non-2xx answer becomes an error carrying the
    /// daemon's message, and no answer within the timeout an error naming
    /// the socket and what to check.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Bytes> {
        let Some(limit) = self.timeout else {
            return self.call_unbounded(method, path, body).await;
        };
        match tokio::time::timeout(limit, self.call_unbounded(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!(
                "the dataplane daemon at unix://{} did not answer within {}: check that it is \
                 running and not stopped (state T in ps) or stuck (see its log); to wait longer, \
                 set --timeout SECONDS or DATAPLANE_TIMEOUT (0: no limit)",
                self.socket.display(),
                seconds(limit)
            )),
        }
    }

    async fn call_unbounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Bytes> {
        let connect_limit = self
            .timeout
            .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
        // A full connection queue (a daemon that has stopped accepting)
        // is EAGAIN on a Unix socket: retried until the connect timeout.
        let connect = async {
            loop {
                match tokio::net::UnixStream::connect(&self.socket).await {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    r => return r,
                }
            }
        };
        let stream = match tokio::time::timeout(connect_limit, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(anyhow!(
                "cannot connect to the dataplane daemon at unix://{} ({e}): is the daemon running?",
                self.socket.display()
            ))
            }
            Err(_) => {
                return Err(anyhow!(
                    "cannot connect to the dataplane daemon at unix://{} within {}: check \
                         that it is running and not stopped (state T in ps) or overloaded",
                    self.socket.display(),
                    seconds(connect_limit)
                ))
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the daemon")?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "dataplane")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender
            .send_request(req)
            .await
            .context("talking to the daemon")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let msg = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        Err(HttpError {
            status: status.as_u16(),
            message: msg,
        }
        .into())
    }

    pub async fn json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let b = self.call(method, path, body).await?;
        if b.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&b).context("decoding the daemon's answer")
    }
}

/// The daemon answered, with an error status: callers that map errors on
/// (the CNI plugin's codes) tell it from a daemon that did not answer by
/// downcasting to this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR.as_u16() {
            write!(f, "daemon error: {}", self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl std::error::Error for HttpError {}

/// `60 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Parses a `--timeout` value: seconds, fractions allowed; 0 means no limit.
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    let secs: f64 = s.trim().parse().map_err(|_| {
        format!("invalid timeout {s:?}: expected seconds, e.g. 60 or 0.5 (0: no limit)")
    })?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!(
            "invalid timeout {s:?}: expected seconds from 0 (no limit) to 1e9"
        ));
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

/// Percent-encodes one path segment (names are restricted, but be safe).
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("60"), Ok(Some(Duration::from_secs(60))));
        assert_eq!(parse_timeout("0.5"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(parse_timeout("0"), Ok(None));
        for bad in ["", "-1", "ten", "inf", "NaN", "1e300"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds(DEFAULT_TIMEOUT), "60 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    /// A listener that accepts and never answers, as a stopped daemon's
    /// socket does (the kernel queues the connection): the client gives up
    /// at its timeout with a message naming the socket.
    #[tokio::test]
    async fn a_silent_daemon_times_out_with_a_clear_message() {
        let dir = std::env::temp_dir().join(format!("dp-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let c = Client::new(&sock).with_timeout(Some(Duration::from_millis(300)));
        let t0 = std::time::Instant::now();
        let e = c.call(Method::GET, "/networks", None).await.unwrap_err();
        let took = t0.elapsed();
        let _ = std::fs::remove_dir_all(&dir);
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!(
                "the dataplane daemon at unix://{} did not answer within 0.3 s",
                sock.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("--timeout"), "{msg}");
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }

    /// A listener whose queue is full (backlog 0, one connection waiting):
    /// connecting gives up at the timeout, naming the socket.
    #[tokio::test]
    async fn a_full_connection_queue_times_out_with_a_clear_message() {
        use nix::sys::socket::{
            bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let dir = std::env::temp_dir().join(format!("dp-client-q-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _ = std::fs::remove_file(&sock);
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(fd.as_raw_fd(), &UnixAddr::new(&sock).unwrap()).unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        // Fill the queue: connections are refused with EAGAIN once it is.
        let mut queued = Vec::new();
        while let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
            queued.push(s);
            assert!(queued.len() < 64, "the queue never filled");
        }
        let c = Client::new(&sock).with_timeout(Some(Duration::from_millis(300)));
        let e = c.call(Method::GET, "/networks", None).await.unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        let msg = format!("{e:#}");
        assert_eq!(
            msg,
            format!(
                "cannot connect to the dataplane daemon at unix://{} within 0.3 s: check that it \
                 is running and not stopped (state T in ps) or overloaded",
                sock.display()
            )
        );
    }
}

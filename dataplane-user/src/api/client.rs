//! A small HTTP/1.1 client for the daemon's Unix socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::ErrorBody;

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends one request; a non-2xx answer becomes an error carrying the
    /// daemon's message.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Bytes> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| {
                anyhow!(
                "cannot connect to the dataplane daemon at unix://{} ({e}): is the daemon running?",
                self.socket.display()
            )
            })?;
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
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            Err(anyhow!("daemon error: {msg}"))
        } else {
            Err(anyhow!("{msg}"))
        }
    }

    pub async fn json(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let b = self.call(method, path, body).await?;
        if b.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&b).context("decoding the daemon's answer")
    }
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

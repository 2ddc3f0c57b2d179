//! Forwarding of non-local questions to the upstream servers.
//!
//! The sockets are opened by the daemon's runtime threads, so they live in
//! the daemon's namespace and reach the upstreams the host itself uses.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use hickory_proto::op::{Message, MessageType};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    time::{timeout, Instant},
};
use tracing::debug;

/// Everything (all upstreams, UDP and TCP) must be done by then; the client
/// gets SERVFAIL afterwards rather than waiting for its own timeout.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `upstreams` in order and returns the first answer (with the id of
/// `query`), or `None` when none answered within `FORWARD_TIMEOUT`.
pub(super) async fn forward(query: &Message, upstreams: &[SocketAddr]) -> Option<Message> {
    let bytes = match query.to_vec() {
        Ok(bytes) => bytes,
        Err(error) => {
            debug!(%error, "cannot encode the upstream query");
            return None;
        }
    };
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    for (tried, &server) in upstreams.iter().enumerate() {
        // Share what is left between the servers still to try, so that a
        // silent first server cannot starve the others.
        let left = u32::try_from(upstreams.len() - tried).unwrap_or(u32::MAX);
        let budget = deadline.saturating_duration_since(Instant::now()) / left;
        match timeout(budget, exchange(server, query.metadata.id, &bytes)).await {
            Ok(Ok(answer)) => return Some(answer),
            Ok(Err(error)) => debug!(%server, %error, "upstream failed"),
            Err(_) => debug!(%server, "upstream timed out"),
        }
    }
    None
}

/// One server: UDP first, then TCP when the UDP answer was truncated.
async fn exchange(server: SocketAddr, id: u16, query: &[u8]) -> io::Result<Message> {
    let answer = exchange_udp(server, id, query).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    debug!(%server, "truncated UDP answer, retrying over TCP");
    exchange_tcp(server, id, query).await
}

async fn exchange_udp(server: SocketAddr, id: u16, query: &[u8]) -> io::Result<Message> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket (random port) per query, connected so that only the
    // server's datagrams arrive and an ICMP refusal fails fast.
    let socket = UdpSocket::bind(any).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0; usize::from(u16::MAX)];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Anything but the answer to this query (stale, garbled) is ignored:
        // the caller's deadline bounds the wait.
        if let Some(answer) = answer_to(id, &buf[..len]) {
            return Ok(answer);
        }
    }
}

async fn exchange_tcp(server: SocketAddr, id: u16, query: &[u8]) -> io::Result<Message> {
    let len = u16::try_from(query.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut stream = TcpStream::connect(server).await?;
    // RFC 1035 4.2.2: over TCP each message is preceded by its length.
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut buf = vec![0; usize::from(stream.read_u16().await?)];
    stream.read_exact(&mut buf).await?;
    answer_to(id, &buf).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an answer"))
}

/// `bytes` parsed, if it is a response to the query with id `id`.
fn answer_to(id: u16, bytes: &[u8]) -> Option<Message> {
    let message = Message::from_vec(bytes).ok()?;
    (message.metadata.id == id && message.metadata.message_type == MessageType::Response)
        .then_some(message)
}

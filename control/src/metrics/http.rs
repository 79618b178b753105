//! The HTTP side: a deliberately small HTTP/1.1 server for `GET|HEAD
//! /metrics`, one request per connection, the head bounded in size and
//! time, anything else a 4xx (or 505) and the connection closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{gather, render, RequestCounters};
use crate::cni::Agent;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long and how much of the client's leftover input
/// is read and discarded before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_MAX: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bind metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`, headers only).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    VersionNotSupported,
}

/// Route a request head (everything up to the blank line). Only the request
/// line matters; headers are ignored.
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Route::BadRequest;
    }
    if !target.starts_with('/') {
        return Route::BadRequest;
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Route::VersionNotSupported,
        _ => return Route::BadRequest,
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// An answer with `Connection: close`.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Complete(usize),
    TooLarge,
    Closed,
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(Head::Complete(end));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false)
}

async fn serve_one(
    mut stream: TcpStream,
    agent: &Agent,
    requests: &RequestCounters,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let answer = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Err(_) => plain(
            "408 Request Timeout",
            "no request within the time allowed\n",
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => plain(
            "431 Request Header Fields Too Large",
            "request head too large\n",
        ),
        Ok(Ok(Head::Complete(end))) => match route(&buf[..end]) {
            Route::Metrics { head } => {
                let body = render(&gather(agent, requests).await);
                response("200 OK", CONTENT_TYPE, &body, head)
            }
            Route::NotFound => plain("404 Not Found", "not found; metrics are at /metrics\n"),
            Route::MethodNotAllowed => plain("405 Method Not Allowed", "use GET /metrics\n"),
            Route::BadRequest => plain("400 Bad Request", "malformed HTTP request\n"),
            Route::VersionNotSupported => plain(
                "505 HTTP Version Not Supported",
                "only HTTP/1.0 and HTTP/1.1\n",
            ),
        },
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    // Closing with unread input makes the kernel send a reset, which can
    // destroy the answer before the client reads it (a refused oversized
    // head): read and discard what the client still sends, bounded.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = [0u8; 4096];
        let mut left = DRAIN_MAX;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Accept connections forever, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, requests: Arc<RequestCounters>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((_, peer))
                if from_a_pod(
                    peer.ip(),
                    &agent.config().pod_nets(),
                    &agent.config().gateways(),
                ) =>
            {
                // Pods reach the node's addresses through the host port
                // with their own source address: the node's counters are
                // not theirs to read, whatever metrics_listen says.
                log::debug!("metrics connection from pod address {peer} refused");
            }
            Ok((stream, peer)) => {
                let agent = Arc::clone(&agent);
                let requests = Arc::clone(&requests);
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &agent, &requests).await {
                        log::debug!("metrics connection from {peer}: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                log::warn!("accept on metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether `peer` is a pod's address: inside one of the node's pod CIDRs
/// (either family; an IPv4-mapped IPv6 peer of a dual-stack socket counts
/// as its IPv4 address), and not a gateway (the node's own addresses on
/// the host port).
pub fn from_a_pod(
    peer: std::net::IpAddr,
    pod_cidrs: &[ipnet::IpNet],
    gateways: &[std::net::IpAddr],
) -> bool {
    let peer = peer.to_canonical();
    !gateways.contains(&peer) && pod_cidrs.iter().any(|c| c.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_told_apart_from_the_node() {
        let cidrs = [
            "10.88.0.0/24".parse().unwrap(),
            "fd00:10:88::/64".parse().unwrap(),
        ];
        let gws = [
            "10.88.0.1".parse().unwrap(),
            "fd00:10:88::1".parse().unwrap(),
        ];
        for (peer, pod) in [
            ("10.88.0.7", true),
            ("10.88.0.254", true),
            ("10.88.0.1", false),
            ("127.0.0.1", false),
            ("192.168.1.5", false),
            ("::1", false),
            ("fd00:10:88::7", true),
            ("fd00:10:88::1", false),
            ("::ffff:10.88.0.7", true),
            ("fd00:99::7", false),
        ] {
            assert_eq!(
                from_a_pod(peer.parse().unwrap(), &cidrs, &gws),
                pod,
                "{peer}"
            );
        }
    }

    #[test]
    fn requests_are_routed() {
        let cases: &[(&[u8], Route)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (b"HEAD /metrics HTTP/1.1\n\n", Route::Metrics { head: true }),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Route::VersionNotSupported),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics FTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe garbage\r\n\r\n", Route::BadRequest),
            (b"\r\n\r\n", Route::BadRequest),
            (b"", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), *want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nabc\n"), "{r}");
        let h = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", true)).unwrap();
        assert!(
            h.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{h}"
        );
        let m = String::from_utf8(plain("405 Method Not Allowed", "x")).unwrap();
        assert!(m.contains("Allow: GET, HEAD\r\n"), "{m}");
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_bind_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("bind metrics listener on {addr}: ")),
            "{text}"
        );
    }
}

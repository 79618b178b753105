//! `ferry-tcpcheck`: a bounded TCP bulk transfer whose bytes are checked
//! end to end, for the integration tests (run inside namespaces with
//! `ip netns exec`).
//!
//! ```text
//! ferry-tcpcheck recv ADDR:PORT          accept one connection, read to EOF
//! ferry-tcpcheck send ADDR:PORT BYTES SEED [SECS]
//!                                    send BYTES of a seeded pattern (spread
//!                                    over at least SECS seconds, so a test
//!                                    can change things under a live flow)
//! ferry-tcpcheck peer-server ADDR:PORT SECS  answer each connection with
//!                                            the address it came from
//! ferry-tcpcheck ask ADDR:PORT               connect, print the answer
//! ferry-tcpcheck self-server ADDR:PORT SECS  answer each connection with
//!                                            `<own address> <peer address>`
//! ferry-tcpcheck udp-server ADDR:PORT SECS   answer each datagram likewise
//! ferry-tcpcheck udp-ask ADDR:PORT           one datagram, print the answer
//!                                            and the address it came from
//! ```
//!
//! `recv` and `send` print `<bytes> <fnv1a-64 hash>` of what they moved, so
//! a test compares the two lines. `peer-server` (the world outside the
//! cluster, telling whether it saw a pod or its masquerading node) prints
//! `listening`, then one line per connection, and exits after SECS. Every
//! wait is bounded: connect retries for 10 s, each read/write times out
//! after 30 s, the receiver gives up accepting after 30 s.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_FOR: Duration = Duration::from_secs(10);
const ACCEPT_FOR: Duration = Duration::from_secs(30);

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// xorshift64* bytes, 8 at a time.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let v = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn recv(addr: SocketAddr) -> Result<(u64, u64), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    // Tell the test we listen (it waits for this line before sending).
    println!("listening");
    let deadline = Instant::now() + ACCEPT_FOR;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!("no connection on {addr} within {ACCEPT_FOR:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut hash) = (0u64, Fnv::new());
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
    Ok((total, hash.0))
}

fn send(addr: SocketAddr, bytes: u64, seed: u64, secs: u64) -> Result<(u64, u64), String> {
    let deadline = Instant::now() + CONNECT_FOR;
    let mut stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    };
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut state = seed | 1;
    // Paced sends write smaller chunks so the flow never pauses for long.
    let mut buf = vec![0u8; if secs > 0 { 16 * 1024 } else { 128 * 1024 }];
    let (mut sent, mut hash) = (0u64, Fnv::new());
    let (start, span) = (Instant::now(), Duration::from_secs(secs.min(60)));
    while sent < bytes {
        let due = span.mul_f64(sent as f64 / bytes as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        fill(&mut state, &mut buf[..n]);
        stream
            .write_all(&buf[..n])
            .map_err(|e| format!("write after {sent} bytes: {e}"))?;
        hash.update(&buf[..n]);
        sent += n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    // Wait for the receiver's close so every byte is acknowledged.
    let mut rest = [0u8; 64];
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| format!("socket options: {e}"))?;
    let _ = stream.read(&mut rest);
    Ok((sent, hash.0))
}

/// Answer every connection for `secs` with its peer's address
/// (`a.b.c.d:port\n`), printing each.
fn peer_server(addr: SocketAddr, secs: u64) -> Result<(), String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    println!("listening");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, peer)) => {
                println!("{peer}");
                let _ = s
                    .set_nonblocking(false)
                    .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| s.write_all(format!("{peer}\n").as_bytes()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

/// Answer every connection (`udp`: every datagram) for `secs` with
/// `<own address> <peer address>\n`: which backend of a service answered,
/// and whom it saw.
fn self_server(addr: SocketAddr, secs: u64, udp: bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    if udp {
        let sock = std::net::UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| format!("socket options: {e}"))?;
        println!("listening");
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((_, peer)) => {
                    let _ = sock.send_to(format!("{addr} {peer}\n").as_bytes(), peer);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        return Ok(());
    }
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    println!("listening");
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let own = s
                    .local_addr()
                    .map_or_else(|_| "?".to_string(), |a| a.to_string());
                let _ = s
                    .set_nonblocking(false)
                    .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
                    .and_then(|()| s.write_all(format!("{own} {peer}\n").as_bytes()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
    Ok(())
}

/// One datagram to `addr`, the answer printed (2 s bound).
fn udp_ask(addr: SocketAddr) -> Result<String, String> {
    let any: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let sock = std::net::UdpSocket::bind(any).map_err(|e| format!("bind: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("socket options: {e}"))?;
    sock.send_to(b"who", addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("answer from {addr}: {e}"))?;
    // What was answered, and where the answer came from.
    Ok(format!(
        "{} {from}\n",
        String::from_utf8_lossy(&buf[..n]).trim()
    ))
}

/// One connection to `addr` (no retry: the test retries), read to EOF.
fn ask(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("socket options: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(answer)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse_addr = |s: &String| -> Result<SocketAddr, String> {
        s.parse().map_err(|e| format!("bad address {s:?}: {e}"))
    };
    match args.as_slice() {
        [cmd, addr, secs] if cmd == "peer-server" => {
            let r = match (parse_addr(addr), secs.parse::<u64>()) {
                (Ok(a), Ok(secs)) => peer_server(a, secs),
                _ => Err(format!("bad arguments: {args:?}")),
            };
            return exit(r.map(|()| String::new()));
        }
        [cmd, addr, secs] if cmd == "self-server" || cmd == "udp-server" => {
            let r = match (parse_addr(addr), secs.parse::<u64>()) {
                (Ok(a), Ok(secs)) => self_server(a, secs, cmd == "udp-server"),
                _ => Err(format!("bad arguments: {args:?}")),
            };
            return exit(r.map(|()| String::new()));
        }
        [cmd, addr] if cmd == "ask" => return exit(parse_addr(addr).and_then(ask)),
        [cmd, addr] if cmd == "udp-ask" => return exit(parse_addr(addr).and_then(udp_ask)),
        _ => {}
    }
    let r = match args.as_slice() {
        [cmd, addr] if cmd == "recv" => parse_addr(addr).and_then(recv),
        [cmd, addr, bytes, seed, rest @ ..] if cmd == "send" && rest.len() <= 1 => {
            let secs = rest.first().map_or(Ok(0), |s| s.parse::<u64>());
            match (
                parse_addr(addr),
                bytes.parse::<u64>(),
                seed.parse::<u64>(),
                secs,
            ) {
                (Ok(a), Ok(b), Ok(s), Ok(secs)) => send(a, b, s, secs),
                _ => Err(format!("bad arguments: {args:?}")),
            }
        }
        _ => Err(
            "usage: ferry-tcpcheck recv ADDR:PORT | send ADDR:PORT BYTES SEED [SECS] \
                  | peer-server ADDR:PORT SECS | ask ADDR:PORT"
                .into(),
        ),
    };
    exit(r.map(|(bytes, hash)| format!("{bytes} {hash:016x}\n")))
}

/// Print what a command has to say (stdout) or its error (stderr).
fn exit(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-tcpcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

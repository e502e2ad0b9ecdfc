//! Misbehaving peers and starved processes, built once for the tests of what one peer may cost
//! everyone else: an HTTP peer that stalls, a crowd of clients, a balancer short of file
//! descriptors, and a balancer caught before it accepts.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{spawn, wait_until, Proc, TestDir, START_TIMEOUT};

/// An HTTP peer that sends `head` (part of a request) and then nothing, holding the
/// connection open until dropped.
pub struct StalledHttp {
    stream: TcpStream,
}

impl StalledHttp {
    pub fn open(addr: SocketAddr, head: &str) -> StalledHttp {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        StalledHttp { stream }
    }

    /// What the server sent before closing, if it closed within `timeout`; `None` while the
    /// connection is still open. A reset counts as a close.
    pub fn closed_within(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(_) => return None,
            }
        }
        Some(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// One HTTP/1.1 request to the admin listener with every wait bounded by `timeout`; returns
/// (status, body), or the error when no whole answer came in time.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not HTTP: {answer:?}")))?;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

/// What one client of a crowd got.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A reply header (`OK ...` or `ERR ...`).
    Reply(String),
    /// The connection closed or was reset with no reply: a prompt close.
    Closed,
    /// Nothing within the patience: connect or reply timed out.
    Hung,
}

/// `n` clients connect at once, each sends `line` and reads the reply header, waiting at most
/// `patience` for each step. Their connections stay open until the returned streams drop.
pub fn crowd(
    addr: SocketAddr,
    n: usize,
    line: &str,
    patience: Duration,
) -> (Vec<Outcome>, Vec<TcpStream>) {
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let line = format!("{line}\n");
            std::thread::spawn(move || {
                let timed_out = |e: &io::Error| {
                    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
                };
                let stream = match TcpStream::connect_timeout(&addr, patience) {
                    Ok(s) => s,
                    Err(e) if timed_out(&e) => return (Outcome::Hung, None),
                    Err(_) => return (Outcome::Closed, None),
                };
                stream.set_read_timeout(Some(patience)).unwrap();
                stream.set_write_timeout(Some(patience)).unwrap();
                let mut header = String::new();
                let result = (&stream)
                    .write_all(line.as_bytes())
                    .and_then(|()| BufReader::new(&stream).read_line(&mut header));
                let outcome = match result {
                    Ok(_) if header.ends_with('\n') => Outcome::Reply(header.trim_end().into()),
                    Ok(_) => Outcome::Closed,
                    Err(e) if timed_out(&e) => Outcome::Hung,
                    Err(_) => Outcome::Closed,
                };
                (outcome, Some(stream))
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut streams = Vec::new();
    for t in threads {
        let (outcome, stream) = t.join().unwrap();
        outcomes.push(outcome);
        streams.extend(stream);
    }
    (outcomes, streams)
}

/// Starts the balancer under `prlimit --nofile=N:N` (soft and hard limit `nofile`, so it
/// cannot raise it) on the test folder's servers file, and waits for `servers` servers.
pub fn starved_balancer(dir: &TestDir, nofile: u32, servers: usize, extra: &[&str]) -> Proc {
    assert!(
        Command::new("prlimit").arg("--version").output().is_ok(),
        "these tests need prlimit (util-linux)"
    );
    let mut args =
        vec![format!("--nofile={nofile}:{nofile}"), env!("CARGO_BIN_EXE_loadbalancer").to_string()];
    args.extend(
        ["--port", "0", "--admin-port", "0", "--servers-file", "servers.json"].map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let lb = spawn("prlimit", &args, dir.path.join("loadbalancer.log"), &dir.path, 2);
    wait_until(START_TIMEOUT, || lb.log_text().matches("Connected to server").count() >= servers);
    lb
}

/// Starts the balancer and returns as soon as its log says which port it bound, before it
/// accepts (it waits for the servers listed first): clients that connect now wait in its
/// backlog. The returned `Proc` knows only the client address.
pub fn balancer_before_it_accepts(dir: &TestDir, extra: &[&str]) -> Proc {
    let log = dir.path.join("loadbalancer.log");
    let child = Command::new(env!("CARGO_BIN_EXE_loadbalancer"))
        .args(["--port", "0", "--admin-port", "0", "--servers-file", "servers.json"])
        .args(extra)
        .current_dir(&dir.path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        // Two short lines fit in the pipe unread.
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut proc = Proc { child, addr: "127.0.0.1:1".parse().unwrap(), addrs: Vec::new(), log };
    wait_until(START_TIMEOUT, || proc.log_text().contains("listening on "));
    let text = proc.log_text();
    let addr = text
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in the log:\n{text}"));
    proc.addr = addr;
    proc.addrs.push(addr);
    proc
}

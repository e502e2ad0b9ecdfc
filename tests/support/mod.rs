//! Helpers for the integration tests: temp folders with a copy of `data/`, and the real
//! binaries started on ports the OS picks, stopped when their handle drops.
#![allow(dead_code)]

pub mod certs;
pub mod fake_server;
pub mod netns;
pub mod postgres;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a process may take to say it is listening, on a busy machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a test client waits for a reply before failing. The longest a test's request may
/// take is a few seconds (a queue behind 1 s servers, a health check); a balancer that never
/// answers must fail the test in seconds, not hang it: `cargo test` runs two tests at a time
/// on this machine, so a binary of ten such tests would take five minutes at 60 s.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A temp folder holding a copy of the project's `data/`, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    /// A fresh folder with `database.json` (read-only unless `writable`), the seed CSV, an
    /// empty servers file and the files folder.
    pub fn new(writable: bool) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "minilb-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(path.join("files")).unwrap();
        fs::create_dir_all(path.join("downloads")).unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
        fs::copy(data.join("colors.csv"), path.join("colors.csv")).unwrap();
        for entry in fs::read_dir(data.join("files")).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), path.join("files").join(entry.file_name())).unwrap();
        }
        fs::write(
            path.join("database.json"),
            format!("{{\"path\": \"colors.db\", \"writable\": {writable}}}\n"),
        )
        .unwrap();
        fs::write(path.join("servers.json"), "[]\n").unwrap();
        TestDir { path }
    }

    pub fn servers_file(&self) -> PathBuf {
        self.path.join("servers.json")
    }

    pub fn downloads(&self) -> PathBuf {
        self.path.join("downloads")
    }

    pub fn data_file(name: &str) -> Vec<u8> {
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/files").join(name)).unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A running binary, killed on drop.
pub struct Proc {
    pub child: Child,
    /// Where it listens (the first `listening on` line).
    pub addr: SocketAddr,
    /// Every address it printed, in order (the balancer's second is its admin listener).
    pub addrs: Vec<SocketAddr>,
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGINT (Ctrl-C) and waits up to `timeout` for the exit; returns its status code.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<i32> {
        signal(self.child.id(), "INT");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process's log (its stderr) so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The balancer's admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.addrs[1]
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal by name with `kill(1)`.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

/// Starts `bin` with `args`, its stderr to `log`, and waits for `lines` lines of
/// `... listening on ADDR` on stdout.
pub fn spawn(bin: &str, args: &[String], log: PathBuf, cwd: &Path, lines: usize) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Forward every line; keep draining so the process never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut addrs = Vec::new();
    while addrs.len() < lines {
        let line = rx.recv_timeout(START_TIMEOUT).unwrap_or_else(|_| {
            panic!(
                "{bin} did not say it was listening; its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{bin} printed {line:?} instead of its address"));
        addrs.push(addr);
    }
    Proc { child, addr: addrs[0], addrs, log }
}

/// Starts `server <id> 0 <secs>` on the test folder's data.
pub fn start_server(dir: &TestDir, id: u32, secs: f64, extra: &[&str]) -> Proc {
    let mut args = vec![id.to_string(), "0".into(), secs.to_string()];
    args.extend(
        ["--servers-file", "servers.json", "--db", "database.json", "--files", "files"]
            .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    spawn(
        env!("CARGO_BIN_EXE_server"),
        &args,
        dir.path.join(format!("server-{id}.log")),
        &dir.path,
        1,
    )
}

/// Starts the balancer on port 0 over the test folder's servers file and waits until
/// `servers` servers are in its pool.
pub fn start_balancer(dir: &TestDir, servers: usize, extra: &[&str]) -> Proc {
    start_named_balancer(dir, "loadbalancer", "servers.json", servers, extra)
}

/// Like [`start_balancer`], for a test running more than one: the log is `<name>.log` and the
/// servers file `servers_file` (relative to the test folder).
pub fn start_named_balancer(
    dir: &TestDir,
    name: &str,
    servers_file: &str,
    servers: usize,
    extra: &[&str],
) -> Proc {
    let mut args: Vec<String> =
        ["--port", "0", "--admin-port", "0", "--servers-file", servers_file]
            .map(String::from)
            .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let lb = spawn(
        env!("CARGO_BIN_EXE_loadbalancer"),
        &args,
        dir.path.join(format!("{name}.log")),
        &dir.path,
        2,
    );
    wait_until(START_TIMEOUT, || lb.log_text().matches("Connected to server").count() >= servers);
    lb
}

/// Starts server 1 (processing time 0) and a balancer in front of it on `dir`, with a
/// [`Bystander`] on the balancer: the setting of every bad-input test.
pub fn watched_cluster(
    dir: &TestDir,
    server_args: &[&str],
    lb_args: &[&str],
) -> (Proc, Proc, Bystander) {
    let server = start_server(dir, 1, 0.0, server_args);
    let lb = start_balancer(dir, 1, lb_args);
    let bystander = Bystander::start(lb.addr);
    (server, lb, bystander)
}

/// Polls `done` until it holds, panicking after `timeout`.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw protocol connection, for asserting exact bytes.
pub struct Wire {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

/// One reply as read off the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub header: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn server(&self) -> Option<u32> {
        self.header.split(' ').find_map(|f| f.strip_prefix("server=")).and_then(|v| v.parse().ok())
    }

    pub fn is_ok(&self) -> bool {
        self.header.starts_with("OK ")
    }

    /// The code of an `ERR` reply.
    pub fn code(&self) -> Option<&str> {
        self.header.strip_prefix("ERR ")?.split(' ').next()
    }
}

impl Wire {
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        Wire { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends `line` and a `\n`, and reads the reply.
    pub fn request(&mut self, line: &str) -> Reply {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_reply()
    }

    /// Reads one reply: the header line and, for `OK`, exactly its length of body.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().unwrap()
    }

    /// Reads one reply, or says what went wrong (the connection closed, say).
    pub fn try_read_reply(&mut self) -> std::io::Result<Reply> {
        let mut header = String::new();
        self.reader.read_line(&mut header)?;
        if !header.ends_with('\n') {
            return Err(std::io::Error::other(format!("reply header {header:?} has no newline")));
        }
        let header = header.trim_end_matches('\n').to_string();
        let mut body = Vec::new();
        if let Some(rest) = header.strip_prefix("OK ") {
            let length: usize = rest.split(' ').next().unwrap().parse().unwrap();
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            assert!(header.starts_with("ERR "), "bad reply header {header:?}");
        }
        Ok(Reply { header, body })
    }

    /// Asserts that the peer closes the connection gently (a FIN) with nothing more to say.
    /// A reset does not count: it can destroy a last `ERR` line before the client reads it.
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "unexpected bytes before the close: {rest:?}"),
            Err(e) => panic!("the connection was not closed cleanly: {e}"),
        }
        // A reset right behind the FIN leaves the read clean but shows as a socket error.
        if let Some(e) = self.writer.take_error().unwrap() {
            panic!("the connection was reset after its FIN: {e}");
        }
    }

    /// Asserts that the peer hangs up, gently or with a reset: for a client that floods more
    /// than the balancer drains before it lets go.
    pub fn expect_cut_off(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "unexpected bytes before the close: {rest:?}"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "the connection did not close: {e}"
            ),
        }
    }
}

/// A well-behaved client that keeps sending requests on one connection for as long as a test
/// attacks the system, and checks every reply.
pub struct Bystander {
    stop: Arc<AtomicBool>,
    /// Replies it has got so far (checked right).
    got: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<usize>,
}

impl Bystander {
    /// Most requests a bystander sends, whatever happens.
    pub const MAX_REQUESTS: usize = 100_000;

    /// Connects to `addr` and gets a first reply before returning, so the bystander is a
    /// connected client from then on.
    pub fn start(addr: SocketAddr) -> Bystander {
        let mut wire = Wire::connect(addr);
        Bystander::check(&mut wire, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let got = Arc::new(AtomicUsize::new(1));
        let counted = Arc::clone(&got);
        let thread = std::thread::spawn(move || {
            let mut sent = 1;
            while sent < Bystander::MAX_REQUESTS && !stopping.load(Ordering::SeqCst) {
                Bystander::check(&mut wire, sent);
                sent += 1;
                counted.store(sent, Ordering::SeqCst);
                // A person's think time between requests, so the bystander leaves the CPU
                // to the test on a small machine.
                std::thread::sleep(Duration::from_millis(10));
            }
            sent
        });
        Bystander { stop, got, thread }
    }

    /// Sends request number `i` (a query, or every third time a file) and checks its reply.
    fn check(wire: &mut Wire, i: usize) {
        let reply = if i % 3 == 2 {
            let reply = wire.request("file hello.txt");
            assert!(
                reply.is_ok() && reply.body == TestDir::data_file("hello.txt"),
                "bystander request {i}: {reply:?}"
            );
            reply
        } else {
            let reply = wire.request(&format!("SELECT {i} AS n"));
            assert!(
                reply.is_ok() && reply.text() == format!("n: {i}\n"),
                "bystander request {i}: {reply:?}"
            );
            reply
        };
        assert!(reply.server().is_some(), "bystander request {i}: {reply:?}");
    }

    /// Stops the bystander and asserts that every one of its replies was right; returns how
    /// many it got.
    pub fn finish(self) -> usize {
        // A short test can end before the bystander's second request on a busy machine: it
        // must still be served after the attack, so wait (bounded) for one more reply.
        let got = Arc::clone(&self.got);
        if !self.thread.is_finished() {
            wait_until(Duration::from_secs(20), || {
                got.load(Ordering::SeqCst) >= 2 || self.thread.is_finished()
            });
        }
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(n) => {
                assert!(n >= 2, "the bystander got only {n} replies");
                n
            }
            Err(_) => panic!("the well-behaved client got a wrong reply (see its panic above)"),
        }
    }
}

/// The number of threads process `pid` runs now (Linux).
pub fn thread_count(pid: u32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// The balancer's threads (Linux) but its health checker's: every `--check-interval` that one
/// starts a short-lived thread per server (named `health` as it is), so counts taken a moment
/// apart may differ by those alone.
pub fn steady_threads(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() != "health"))
        .count()
}

/// Runs the client binary with `args` in `cwd`; returns (exit code, stdout, stderr).
pub fn run_client(cwd: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What a steady load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Replies that were correct.
    pub ok: usize,
    /// Everything that went wrong, one line each.
    pub failures: Vec<String>,
}

/// Clients sending requests in a loop on persistent connections, checking every reply, until
/// stopped (or a bound on time and count is reached).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Correct replies so far, by the server that gave them.
    pub by_server: std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<u32, usize>>>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
}

/// Longest a load runs, whatever the test does.
pub const LOAD_LIMIT: Duration = Duration::from_secs(120);

impl Load {
    /// `clients` threads against `addr`, alternating small queries and `file hello.txt`.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let by_server = Arc::new(parking_lot::Mutex::new(std::collections::HashMap::new()));
        let hello = TestDir::data_file("hello.txt");
        let threads = (0..clients)
            .map(|c| {
                let (stop, by_server, hello) =
                    (Arc::clone(&stop), Arc::clone(&by_server), hello.clone());
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut report = LoadReport::default();
                    let mut wire: Option<Wire> = None;
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst)
                        && started.elapsed() < LOAD_LIMIT
                        && i < 1_000_000
                    {
                        i += 1;
                        let w = match &mut wire {
                            Some(w) => w,
                            None => match TcpStream::connect(addr) {
                                Ok(_) => wire.insert(Wire::connect(addr)),
                                Err(e) => {
                                    report.failures.push(format!("client {c}: connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            },
                        };
                        let (line, expected) = if i.is_multiple_of(2) {
                            ("file hello.txt".to_string(), hello.clone())
                        } else {
                            let n = c * 1_000_000 + i;
                            (format!("SELECT {n} AS n"), format!("n: {n}\n").into_bytes())
                        };
                        match w.try_request(&line) {
                            Ok(reply) if reply.is_ok() && reply.body == expected => {
                                report.ok += 1;
                                *by_server
                                    .lock()
                                    .entry(reply.server().unwrap_or(0))
                                    .or_default() += 1;
                            }
                            Ok(reply) => {
                                report
                                    .failures
                                    .push(format!("client {c}: {line}: {}", reply.header));
                            }
                            Err(e) => {
                                report.failures.push(format!("client {c}: {line}: {e}"));
                                wire = None;
                            }
                        }
                    }
                    report
                })
            })
            .collect();
        Load { stop, by_server, threads }
    }

    /// Correct replies so far from server `id`.
    pub fn answered_by(&self, id: u32) -> usize {
        self.by_server.lock().get(&id).copied().unwrap_or(0)
    }

    /// Correct replies so far, from any server.
    pub fn answered(&self) -> usize {
        self.by_server.lock().values().sum()
    }

    /// Stops the clients and adds up what they saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().unwrap();
            total.ok += r.ok;
            total.failures.extend(r.failures);
        }
        total
    }
}

impl Wire {
    /// Like [`Wire::request`], but an I/O or framing failure is an `Err`, not a panic.
    pub fn try_request(&mut self, line: &str) -> std::io::Result<Reply> {
        use std::io::{Error, ErrorKind};
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut header = String::new();
        if self.reader.read_line(&mut header)? == 0 || !header.ends_with('\n') {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        let header = header.trim_end_matches('\n').to_string();
        let mut body = Vec::new();
        if let Some(rest) = header.strip_prefix("OK ") {
            let length: usize = rest
                .split(' ')
                .next()
                .and_then(|l| l.parse().ok())
                .ok_or_else(|| Error::new(ErrorKind::InvalidData, header.clone()))?;
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        } else if !header.starts_with("ERR ") {
            return Err(Error::new(ErrorKind::InvalidData, header));
        }
        Ok(Reply { header, body })
    }
}

/// One HTTP/1.1 request to the admin listener; returns (status, body).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
pub mod hostile;

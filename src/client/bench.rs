//! `client bench`: a load generator. N client threads, each with its own connection (or a new
//! connection per request), send requests as fast as the replies come back; then it reports
//! requests/s, latency percentiles, errors by code, who answered how many, and how evenly the
//! clients were served (Jain's fairness index over each client's completed requests).
//!
//! It must cost less than what it measures, so a client thread allocates nothing per request:
//! its request lines are prepared once, one read buffer is kept across reconnections, reply
//! bodies are skipped inside that buffer without a copy, and reply headers are scanned in place
//! (no `String` per field). Latencies go into a `Vec` reserved up front.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde_json::json;

use crate::error::Code;
use crate::protocol::{self, Line, MAX_HEADER_LINE};

/// Bytes read from the socket at a time; replies are skipped inside this buffer.
const READ_BUFFER: usize = 128 * 1024;
/// Stack of a client thread: it keeps its buffers on the heap, and a bench may run thousands.
const THREAD_STACK: usize = 256 * 1024;
/// How long one connection attempt may take: long enough for the kernel's SYN retries (1, 3,
/// 7, 15 s) when thousands of clients connect at once and a listen backlog overflows.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reply may stay silent before the request counts as failed (`io`).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for every client to be ready (connected, with `--connect-first`).
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// Pause after a failed connection attempt, so a client with no balancer does not spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Most latencies a client reserves room for before it starts (8 MiB).
const MAX_RESERVED: u64 = 1 << 20;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// When a bench ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many requests in all, shared evenly among the clients.
    Requests(u64),
    /// After this long; each client finishes the request in hand.
    Duration(Duration),
}

/// How many query requests a client sends for how many file requests (`--mix 3:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Query requests per round.
    pub queries: u32,
    /// File requests per round.
    pub files: u32,
}

impl Mix {
    /// Parses `queries:files`, e.g. `3:1`.
    ///
    /// # Errors
    /// A message saying what a mix looks like.
    pub fn parse(text: &str) -> Result<Mix, String> {
        let bad = || format!("{text:?} is not a mix: write queries:files, e.g. 3:1");
        let (q, f) = text.split_once(':').ok_or_else(bad)?;
        let mix = Mix {
            queries: q.trim().parse().map_err(|_| bad())?,
            files: f.trim().parse().map_err(|_| bad())?,
        };
        if mix.queries == 0 && mix.files == 0 {
            return Err(format!("{text:?}: a mix needs at least one request kind"));
        }
        Ok(mix)
    }

    /// Whether request number `n` is a file request. Files are spread evenly through each
    /// round rather than bunched at its end.
    pub fn is_file(&self, n: u64) -> bool {
        let round = u64::from(self.queries) + u64::from(self.files);
        let files = u64::from(self.files);
        (n % round + 1) * files / round > (n % round) * files / round
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// `host:port` of the balancer (or of a server, to measure it directly).
    pub addr: String,
    /// Client threads, each with its own connection.
    pub clients: usize,
    /// When to stop.
    pub stop: Stop,
    /// The query request line.
    pub query: String,
    /// The file request line (`file <name>`), sent in the share `mix` gives it.
    pub file: String,
    /// Queries for files.
    pub mix: Mix,
    /// Open a new connection for every request (like the original's client) instead of one
    /// persistent connection per client.
    pub new_connection: bool,
    /// Open every client's connection before any request is sent, so all are open at once.
    pub connect_first: bool,
    /// Redraw a progress line on stderr while it runs.
    pub progress: bool,
}

/// The numbers of one bench run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Client threads that ran.
    pub clients: usize,
    /// Whether each request had its own connection.
    pub new_connection: bool,
    /// From the moment every client was ready to the last reply.
    pub elapsed: Duration,
    /// Requests answered `OK`.
    pub ok: u64,
    /// Failed requests by `ERR` code, or `connect`, `io`, `bad_reply` for failures on our side.
    pub errors: BTreeMap<String, u64>,
    /// Reply body bytes received.
    pub bytes: u64,
    /// Latency of each `OK` request in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// `OK` replies by the `server=` field of their header (`?` when it had none).
    pub by_server: BTreeMap<String, u64>,
    /// `OK` replies each client received, in client order.
    pub per_client: Vec<u64>,
}

/// Runs the bench described by `config` and returns its numbers.
///
/// # Errors
/// A message when the address does not resolve or no client thread could start.
pub fn run(config: &BenchConfig) -> Result<Report, String> {
    let addr = config
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", config.addr))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", config.addr))?;
    let shared = Arc::new(Shared {
        addr,
        lines: [line_bytes(&config.query), line_bytes(&config.file)],
        mix: config.mix,
        stop: config.stop,
        clients: config.clients as u64,
        new_connection: config.new_connection,
        connect_first: config.connect_first,
        gate: StartGate::default(),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let mut threads = Vec::with_capacity(config.clients);
    for index in 0..config.clients {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .stack_size(THREAD_STACK)
            .spawn(move || client_thread(index as u64, &shared));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!(
                    "client bench: cannot start client thread {index}: {e}; running with {index}"
                );
                break;
            }
        }
    }
    if threads.is_empty() {
        return Err("no client thread could start".into());
    }
    let started = shared.gate.open_when_ready(threads.len(), READY_TIMEOUT);
    let progress = config
        .progress
        .then(|| spawn_progress(Arc::clone(&shared), started));

    let mut tallies = Vec::with_capacity(threads.len());
    for t in threads {
        tallies.push(t.join().unwrap_or_default());
    }
    let elapsed = started.elapsed();
    if let Some((stop, printer)) = progress {
        drop(stop);
        let _ = printer.join();
    }
    let report = Report::merge(tallies, elapsed, config.new_connection);
    if report.ok == 0
        && !report.errors.is_empty()
        && report.errors.keys().all(|code| code == "connect")
    {
        // Not one connection: nothing was measured, so there is no report to give.
        let why = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .err()
            .map_or_else(
                || "it refused every connection".to_string(),
                |e| e.to_string(),
            );
        return Err(format!(
            "cannot reach the load balancer at {}: {why} (is it running? start it with `loadbalancer`, or pass --lb host:port)",
            config.addr
        ));
    }
    Ok(report)
}

fn line_bytes(line: &str) -> Vec<u8> {
    let mut bytes = line.as_bytes().to_vec();
    bytes.push(b'\n');
    bytes
}

/// What every client thread reads, and the counters the progress line shows.
struct Shared {
    addr: SocketAddr,
    /// The query line and the file line, each with its `\n`.
    lines: [Vec<u8>; 2],
    mix: Mix,
    stop: Stop,
    clients: u64,
    new_connection: bool,
    connect_first: bool,
    gate: StartGate,
    /// Requests finished so far, and how many of them failed (for the progress line).
    done: AtomicU64,
    failed: AtomicU64,
}

/// Holds the client threads until all are ready, so the clock starts when the load does.
#[derive(Default)]
struct StartGate {
    /// How many threads are ready, and the start time once the gate opens.
    state: Mutex<(usize, Option<Instant>)>,
    changed: Condvar,
}

impl StartGate {
    /// Called by a client thread: counts it ready, then waits for the start.
    fn ready_then_wait(&self) -> Instant {
        let mut state = self.state.lock();
        state.0 += 1;
        self.changed.notify_all();
        loop {
            if let Some(start) = state.1 {
                return start;
            }
            self.changed.wait(&mut state);
        }
    }

    /// Called once: waits (up to `timeout`) for `threads` ready threads, then starts them all.
    fn open_when_ready(&self, threads: usize, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        while state.0 < threads && !self.changed.wait_until(&mut state, deadline).timed_out() {}
        let start = Instant::now();
        state.1 = Some(start);
        self.changed.notify_all();
        start
    }
}

/// One client thread's counts, merged into the [`Report`] at the end.
#[derive(Default)]
struct Tally {
    ok: u64,
    bytes: u64,
    latencies: Vec<u64>,
    by_server: HashMap<Option<u32>, u64>,
    errors: BTreeMap<&'static str, u64>,
}

/// The requests client `index` sends under `Stop::Requests(total)`: an even share.
fn quota(total: u64, clients: u64, index: u64) -> u64 {
    total / clients + u64::from(index < total % clients)
}

fn client_thread(index: u64, shared: &Shared) -> Tally {
    let mut tally = Tally::default();
    let mut link = Link::new();
    let mut header = Vec::with_capacity(256);
    if shared.connect_first {
        if let Err(e) = link.connect(shared.addr) {
            tally.fail("connect", shared);
            log::debug!("client {index}: {e}");
        }
    }
    let start = shared.gate.ready_then_wait();
    let (limit, deadline) = match shared.stop {
        Stop::Requests(total) => (quota(total, shared.clients, index), None),
        Stop::Duration(d) => (u64::MAX, Some(start + d)),
    };
    if let Stop::Requests(_) = shared.stop {
        // Room for the whole share up front (within reason), so recording never reallocates.
        tally.latencies.reserve(limit.min(MAX_RESERVED) as usize);
    }
    // Each client starts at a different place in the mix, so files are spread across clients.
    for n in index..index.saturating_add(limit) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let line = &shared.lines[usize::from(shared.mix.is_file(n))];
        let sent = Instant::now();
        if !link.is_open() {
            if let Err(e) = link.connect(shared.addr) {
                tally.fail("connect", shared);
                log::debug!("client {index}: {e}");
                std::thread::sleep(RECONNECT_PAUSE);
                continue;
            }
        }
        match link.exchange(line, &mut header) {
            Ok(Answer::Ok { length, server }) => {
                tally.ok += 1;
                tally.bytes += length;
                tally.latencies.push(sent.elapsed().as_nanos() as u64);
                *tally.by_server.entry(server).or_default() += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Answer::Err(code)) => tally.fail(code, shared),
            Err(e) => {
                let kind = if e.kind() == io::ErrorKind::InvalidData {
                    "bad_reply"
                } else {
                    "io"
                };
                tally.fail(kind, shared);
                log::debug!("client {index}: {e}");
                link.close();
            }
        }
        if shared.new_connection {
            link.close();
        }
    }
    tally
}

impl Tally {
    fn fail(&mut self, code: &'static str, shared: &Shared) {
        *self.errors.entry(code).or_default() += 1;
        shared.done.fetch_add(1, Ordering::Relaxed);
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A reply as far as the bench cares.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// `OK`: its body length and the `server=` field.
    Ok { length: u64, server: Option<u32> },
    /// `ERR`: its code.
    Err(&'static str),
}

/// Reads what the bench needs from a reply header, in place: `OK <length> ... server=<id> ...`
/// or `ERR <code> ...`. `None` when the line is neither.
fn scan_header(line: &[u8]) -> Option<Answer> {
    let text = std::str::from_utf8(line).ok()?;
    if let Some(rest) = text.strip_prefix("OK ") {
        let mut parts = rest.split(' ');
        let length = parts.next()?.parse().ok()?;
        let server = parts.find_map(|p| p.strip_prefix("server=")?.parse().ok());
        return Some(Answer::Ok { length, server });
    }
    let code = text.strip_prefix("ERR ")?.split(' ').next()?;
    // A `&'static str` from the known list, so counting errors allocates nothing.
    Some(Answer::Err(
        Code::parse(code).map_or("unknown", Code::as_str),
    ))
}

/// The socket under a client's buffer; empty between connections so the buffer outlives them.
struct Socket(Option<TcpStream>);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Some(stream) => stream.read(buf),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// One client's connection and the read buffer it keeps across reconnections.
struct Link {
    reader: BufReader<Socket>,
}

impl Link {
    fn new() -> Link {
        Link {
            reader: BufReader::with_capacity(READ_BUFFER, Socket(None)),
        }
    }

    fn is_open(&self) -> bool {
        self.reader.get_ref().0.is_some()
    }

    fn connect(&mut self, addr: SocketAddr) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(READ_TIMEOUT))?;
        self.reader.get_mut().0 = Some(stream);
        Ok(())
    }

    fn close(&mut self) {
        // Bytes left from the old connection must not be read as the new one's reply.
        let left = self.reader.buffer().len();
        self.reader.consume(left);
        self.reader.get_mut().0 = None;
    }

    /// Sends `line` (with its `\n`), reads the reply header into `header` and skips the body.
    fn exchange(&mut self, line: &[u8], header: &mut Vec<u8>) -> io::Result<Answer> {
        match &mut self.reader.get_mut().0 {
            Some(stream) => stream.write_all(line)?,
            None => return Err(io::ErrorKind::NotConnected.into()),
        }
        match protocol::read_line(&mut self.reader, header, MAX_HEADER_LINE)? {
            Line::Complete => {}
            Line::Eof | Line::Truncated => return Err(io::ErrorKind::UnexpectedEof.into()),
            Line::TooLong => return Err(bad_reply("reply header too long")),
        }
        let answer = scan_header(header).ok_or_else(|| bad_reply("not an OK or ERR header"))?;
        if let Answer::Ok { length, .. } = answer {
            self.skip(length)?;
        }
        Ok(answer)
    }

    /// Reads `length` bytes of body and throws them away, without copying them.
    fn skip(&mut self, mut length: u64) -> io::Result<()> {
        while length > 0 {
            let available = self.reader.fill_buf()?.len();
            if available == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let n = available.min(usize::try_from(length).unwrap_or(usize::MAX));
            self.reader.consume(n);
            length -= n as u64;
        }
        Ok(())
    }
}

fn bad_reply(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

/// Redraws `N requests, R/s, E errors` on stderr until the returned sender is dropped.
fn spawn_progress(
    shared: Arc<Shared>,
    started: Instant,
) -> (crossbeam_channel::Sender<()>, std::thread::JoinHandle<()>) {
    // Dropping the sender is the stop signal; the timeout is the ticker.
    let (stop, ticks) = crossbeam_channel::bounded::<()>(0);
    let printer = std::thread::spawn(move || {
        let mut err = io::stderr();
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            ticks.recv_timeout(PROGRESS_EVERY)
        {
            let done = shared.done.load(Ordering::Relaxed);
            let failed = shared.failed.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            let _ = write!(
                err,
                "\r{done} requests, {:.0}/s, {failed} errors, {secs:.1} s  ",
                done as f64 / secs.max(1e-9)
            );
            let _ = err.flush();
        }
        // Erase the line, so the report starts on a clean one.
        let _ = write!(err, "\r{:70}\r", "");
    });
    (stop, printer)
}

/// Whether a progress line makes sense: only on a terminal, so redirected output stays clean.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

/// The value at percentile `p` (0 to 100) of `sorted`, by the nearest-rank method; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Jain's fairness index of `counts`: 1 when all are equal, 1/n when one got everything.
/// 0 when nobody got anything (nothing was served, so nothing was fair).
pub fn jain_fairness(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

impl Report {
    fn merge(tallies: Vec<Tally>, elapsed: Duration, new_connection: bool) -> Report {
        let mut report = Report {
            clients: tallies.len(),
            new_connection,
            elapsed,
            ok: 0,
            errors: BTreeMap::new(),
            bytes: 0,
            latencies: Vec::new(),
            by_server: BTreeMap::new(),
            per_client: Vec::with_capacity(tallies.len()),
        };
        for t in tallies {
            report.ok += t.ok;
            report.bytes += t.bytes;
            report.per_client.push(t.ok);
            report.latencies.extend_from_slice(&t.latencies);
            for (server, n) in t.by_server {
                let name = server.map_or_else(|| "?".to_string(), |id| id.to_string());
                *report.by_server.entry(name).or_default() += n;
            }
            for (code, n) in t.errors {
                *report.errors.entry(code.to_string()).or_default() += n;
            }
        }
        report.latencies.sort_unstable();
        report
    }

    /// Failed requests, all codes together.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// `OK` replies per second.
    pub fn requests_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Body megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at percentile `p`, in milliseconds.
    pub fn latency_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p) as f64 / 1e6
    }

    /// Jain's fairness index over each client's `OK` replies.
    pub fn fairness(&self) -> f64 {
        jain_fairness(&self.per_client)
    }

    /// The report as one JSON object, for scripts.
    pub fn to_json(&self) -> serde_json::Value {
        let mean = if self.latencies.is_empty() {
            0.0
        } else {
            self.latencies.iter().sum::<u64>() as f64 / self.latencies.len() as f64 / 1e6
        };
        json!({
            "clients": self.clients,
            "connection": if self.new_connection { "per-request" } else { "persistent" },
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests": self.ok + self.error_count(),
            "ok": self.ok,
            "error_count": self.error_count(),
            "errors": self.errors,
            "requests_per_s": self.requests_per_sec(),
            "bytes": self.bytes,
            "mb_per_s": self.mb_per_sec(),
            "latency_ms": {
                "p50": self.latency_ms(50.0),
                "p90": self.latency_ms(90.0),
                "p99": self.latency_ms(99.0),
                "max": self.latency_ms(100.0),
                "mean": mean,
            },
            "servers": self.by_server,
            "per_client": self.per_client,
            "fairness": self.fairness(),
        })
    }

    /// The report for people, with a bar chart of who answered how many.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let connection = if self.new_connection {
            "a new connection per request"
        } else {
            "persistent connections"
        };
        let _ = writeln!(
            out,
            "{} clients, {connection}, {:.2} s",
            self.clients,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "requests   {} OK, {} failed: {:.1} requests/s, {:.1} MB/s",
            self.ok,
            self.error_count(),
            self.requests_per_sec(),
            self.mb_per_sec()
        );
        if self.latencies.is_empty() {
            let _ = writeln!(out, "latency    none: no request got OK");
        } else {
            let _ = writeln!(
                out,
                "latency    p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                self.latency_ms(50.0),
                self.latency_ms(90.0),
                self.latency_ms(99.0),
                self.latency_ms(100.0)
            );
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let errors = if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        };
        let _ = writeln!(out, "errors     {errors}");
        let _ = writeln!(
            out,
            "fairness   {:.3} (Jain's index over the clients' OK replies; 1 = perfectly even)",
            self.fairness()
        );
        let _ = writeln!(out, "answered by");
        let most = self.by_server.values().copied().max().unwrap_or(0).max(1);
        for (server, &n) in &self.by_server {
            let bar = "█".repeat((n * 40).div_ceil(most) as usize);
            let share = 100.0 * n as f64 / self.ok.max(1) as f64;
            let _ = writeln!(out, "  server {server:>3} {bar:<40} {n} ({share:.1}%)");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_spreads_files_evenly() {
        let mix = Mix::parse("3:1").unwrap();
        assert_eq!(
            mix,
            Mix {
                queries: 3,
                files: 1
            }
        );
        let files: Vec<bool> = (0..8).map(|n| mix.is_file(n)).collect();
        assert_eq!(files.iter().filter(|&&f| f).count(), 2);
        assert_eq!(files[..4], files[4..]);
        assert!((0..10).all(|n| !Mix::parse("1:0").unwrap().is_file(n)));
        assert!((0..10).all(|n| Mix::parse("0:1").unwrap().is_file(n)));
        let half = Mix::parse(" 1 : 1 ").unwrap();
        assert_eq!((0..4).filter(|&n| half.is_file(n)).count(), 2);
        for bad in ["", "3", "3:", "a:1", "0:0", "-1:2", "1:2:3"] {
            assert!(Mix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 90.0), 90);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[1, 2, 3], 50.0), 2);
    }

    #[test]
    fn jain_fairness_index() {
        assert_eq!(jain_fairness(&[5, 5, 5, 5]), 1.0);
        assert_eq!(jain_fairness(&[8, 0, 0, 0]), 0.25);
        assert!((jain_fairness(&[1, 2]) - 0.9).abs() < 1e-12);
        assert_eq!(jain_fairness(&[0, 0]), 0.0);
        assert_eq!(jain_fairness(&[]), 0.0);
    }

    #[test]
    fn quotas_add_up_to_the_total() {
        let shares: Vec<u64> = (0..4).map(|i| quota(10, 4, i)).collect();
        assert_eq!(shares, vec![3, 3, 2, 2]);
        assert_eq!((0..3).map(|i| quota(2, 3, i)).sum::<u64>(), 2);
    }

    #[test]
    fn headers_are_scanned_in_place() {
        assert_eq!(
            scan_header(b"OK 12 server=2 rows=3"),
            Some(Answer::Ok {
                length: 12,
                server: Some(2)
            })
        );
        assert_eq!(
            scan_header(b"OK 0"),
            Some(Answer::Ok {
                length: 0,
                server: None
            })
        );
        assert_eq!(
            scan_header(b"ERR busy every server stayed busy"),
            Some(Answer::Err("busy"))
        );
        assert_eq!(scan_header(b"ERR what"), Some(Answer::Err("unknown")));
        assert_eq!(scan_header(b"OK x"), None);
        assert_eq!(scan_header(b"HELLO"), None);
    }

    #[test]
    fn reports_merge_and_print() {
        let tally = |ok: u64, server: u32, lat: Vec<u64>| Tally {
            ok,
            bytes: ok * 10,
            latencies: lat,
            by_server: HashMap::from([(Some(server), ok)]),
            errors: BTreeMap::new(),
        };
        let mut failing = tally(1, 2, vec![3_000_000]);
        failing.errors.insert("busy", 2);
        let report = Report::merge(
            vec![tally(3, 1, vec![2_000_000, 1_000_000, 4_000_000]), failing],
            Duration::from_secs(2),
            false,
        );
        assert_eq!(report.ok, 4);
        assert_eq!(report.error_count(), 2);
        assert_eq!(report.per_client, vec![3, 1]);
        assert_eq!(
            report.latencies,
            vec![1_000_000, 2_000_000, 3_000_000, 4_000_000]
        );
        assert_eq!(report.requests_per_sec(), 2.0);
        let json = report.to_json();
        assert_eq!(json["servers"]["1"], 3);
        assert_eq!(json["errors"]["busy"], 2);
        assert_eq!(json["latency_ms"]["p50"], 2.0);
        assert_eq!(json["fairness"], 0.8);
        let text = report.to_text();
        assert!(text.contains("4 OK, 2 failed"), "{text}");
        assert!(text.contains("server   1"), "{text}");
        assert!(text.contains("busy 2"), "{text}");
    }
}

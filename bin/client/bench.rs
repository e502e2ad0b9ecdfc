//! `client bench`: a load generator. N client threads, each with its own connection (or a new
//! connection per request), send requests as fast as the replies come back; then it reports
//! requests/s, latency percentiles, errors by code, who answered how many, and how evenly the
//! clients were served (Jain's fairness index over each client's completed requests).
//! Requests go through the library's [`Connection`]; reply bodies are read and thrown away.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use minilb::client::{self, Connection, Target};
use minilb::protocol::{ReplyHeader, Request};
use minilb::tls::Connector;
use serde::Serialize;

/// Stack of a client thread: it keeps its buffers on the heap, and a bench may run thousands.
const THREAD_STACK: usize = 256 * 1024;
/// Pause after a failed connection attempt, so a client with no balancer does not spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Most latencies a client reserves room for before it starts (8 MiB), so that recording one
/// does not reallocate.
const MAX_RESERVED: u64 = 1 << 20;
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// `client bench`'s flags.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("stop").required(true).args(["requests", "duration"])))]
pub struct BenchArgs {
    /// Client threads, each with its own connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    clients: u32,
    /// Requests in all, shared evenly among the clients (or give --duration).
    // At least one, and more than no time: a bench that sends nothing measures nothing.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Seconds to run, e.g. 10 or 0.5 (or give --requests).
    #[arg(long, value_parser = minilb::cli::parse_timeout)]
    duration: Option<Duration>,
    /// The query each request sends (or any request line, e.g. `file big.bin`).
    #[arg(long, default_value = r#"SELECT "Name" FROM COLORS LIMIT 1"#)]
    request: String,
    /// The file that the file share of --mix downloads.
    #[arg(long, default_value = "hello.txt")]
    file: String,
    /// Query requests for file requests, e.g. 3:1; 1:0 sends queries only.
    #[arg(long, default_value = "1:0", value_parser = Mix::parse)]
    mix: Mix,
    /// A new connection for every request, like the original's client.
    #[arg(long)]
    new_connection: bool,
    /// Open every client's connection before the first request, so all are open at once.
    #[arg(long)]
    connect_first: bool,
    /// Print the numbers as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// How many query requests a client sends for how many file requests (`--mix 3:1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    queries: u32,
    files: u32,
}

impl Mix {
    fn parse(text: &str) -> Result<Mix, String> {
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
    fn is_file(&self, n: u64) -> bool {
        let round = u64::from(self.queries) + u64::from(self.files);
        let files = u64::from(self.files);
        (n % round + 1) * files / round > (n % round) * files / round
    }
}

/// Runs `client bench` and prints its report; the exit code is as its `--help` says.
pub fn main(args: BenchArgs) -> ExitCode {
    let json = args.json;
    let report = match run(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client bench: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if json {
        serde_json::to_string(&report).expect("a report always writes as JSON") + "\n"
    } else {
        report.to_text()
    };
    // A closed stdout (`| head`) is not worth a panic.
    let _ = io::stdout().write_all(text.as_bytes());
    ExitCode::from(u8::from(report.error_count > 0))
}

/// What every client thread reads, and the counters the progress line shows.
struct Shared {
    args: BenchArgs,
    addr: SocketAddr,
    tls: Option<Connector>,
    /// The query request and the file request.
    requests: [Request; 2],
    /// Holds the client threads (and the main one) until all are ready, so the clock starts
    /// when the load does.
    ready: Barrier,
    /// When the load started, set by the main thread just before the barrier lets it go: the
    /// one clock that both `--duration` and the report count from (each thread's own clock
    /// could start late on a busy machine, and the run then seemed shorter than asked).
    started: OnceLock<Instant>,
    /// Requests finished so far, and how many of them failed (for the progress line).
    done: AtomicU64,
    failed: AtomicU64,
}

fn run(args: BenchArgs) -> Result<Report, String> {
    let lb = &args.target.lb;
    let addr = lb
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {lb}: {e}"))?
        .next()
        .ok_or_else(|| format!("{lb} resolves to no address"))?;
    let request = |line: &str| {
        Request::parse(line.as_bytes()).map_err(|e| format!("{line:?}: {}", e.message()))
    };
    let tls = args.target.connector()?;
    // A certificate that does not verify fails every connection the same way: say so once.
    if let Some(Err(e)) = tls.as_ref().map(|tls| Connection::open(addr, Some(tls))) {
        if e.kind() == io::ErrorKind::InvalidData {
            return Err(format!("{lb}: {e}"));
        }
    }
    let shared = Arc::new(Shared {
        tls,
        requests: [request(&args.request)?, request(&format!("file {}", args.file))?],
        ready: Barrier::new(args.clients as usize + 1),
        started: OnceLock::new(),
        addr,
        args,
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });

    let mut threads = Vec::new();
    for index in 0..shared.args.clients {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .stack_size(THREAD_STACK)
            .spawn(move || client_thread(u64::from(index), &shared));
        // The others wait at the barrier for this one: a bench cut short would measure nothing.
        threads.push(spawned.map_err(|e| format!("cannot start client thread {index}: {e}"))?);
    }
    let started = *shared.started.get_or_init(Instant::now);
    shared.ready.wait();
    // Dropping `stop` ends the progress line; the timeout of `ticks` is its ticker.
    let (stop, ticks) = crossbeam_channel::bounded::<()>(0);
    let (tallies, elapsed) = std::thread::scope(|s| {
        if io::stderr().is_terminal() {
            s.spawn(|| progress(&shared, started, &ticks));
        }
        let tallies: Vec<Tally> =
            threads.into_iter().map(|t| t.join().unwrap_or_default()).collect();
        drop(stop);
        (tallies, started.elapsed())
    });
    let report = Report::new(tallies, elapsed, shared.args.new_connection);
    if report.ok == 0 && report.errors.keys().all(|c| *c == "connect") && report.error_count > 0 {
        // Not one connection: nothing was measured, so there is no report to give.
        let why = match Connection::open(addr, shared.tls.as_ref()) {
            Ok(_) => "it refused every connection".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(client::unreachable(&shared.args.target.lb, why));
    }
    Ok(report)
}

/// One client thread's counts.
#[derive(Default)]
struct Tally {
    /// Bytes of `OK` bodies.
    bytes: u64,
    /// Latency of each `OK` request in nanoseconds (one per `OK` request).
    latencies: Vec<u64>,
    /// `OK` replies by the `server=` field of their header.
    by_server: BTreeMap<String, u64>,
    /// Failed requests by `ERR` code, or `connect`, `io`, `bad_reply` for failures on our side.
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn fail(&mut self, code: &'static str, shared: &Shared) {
        *self.errors.entry(code).or_default() += 1;
        shared.done.fetch_add(1, Ordering::Relaxed);
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The requests client `index` sends under `--requests total`: an even share.
fn quota(total: u64, clients: u64, index: u64) -> u64 {
    total / clients + u64::from(index < total % clients)
}

fn client_thread(index: u64, shared: &Shared) -> Tally {
    let args = &shared.args;
    let mut tally = Tally::default();
    let connect = |tally: &mut Tally| {
        Connection::open(shared.addr, shared.tls.as_ref())
            .inspect_err(|_| tally.fail("connect", shared))
            .ok()
    };
    let mut conn = args.connect_first.then(|| connect(&mut tally)).flatten();
    shared.ready.wait();
    let limit =
        args.requests.map_or(u64::MAX, |total| quota(total, u64::from(args.clients), index));
    let started = *shared.started.get_or_init(Instant::now);
    let deadline = args.duration.map(|d| started + d);
    tally.latencies.reserve(limit.min(MAX_RESERVED) as usize);
    // Each client starts at a different place in the mix, so files are spread across clients.
    for n in index..index.saturating_add(limit) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let request = &shared.requests[usize::from(args.mix.is_file(n))];
        let sent = Instant::now();
        if conn.is_none() {
            conn = connect(&mut tally);
        }
        let Some(c) = conn.as_mut() else {
            std::thread::sleep(RECONNECT_PAUSE);
            continue;
        };
        let reply = c.send(request).and_then(|reply| {
            c.copy_body(reply.body_length(), &mut io::sink())?;
            Ok(reply)
        });
        match &reply {
            Ok(ReplyHeader::Err(e)) => tally.fail(e.code(), shared),
            Ok(reply) => {
                tally.bytes += reply.body_length();
                tally.latencies.push(sent.elapsed().as_nanos() as u64);
                let server = reply.field("server").unwrap_or("?");
                *tally.by_server.entry(server.to_string()).or_default() += 1;
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let broken = e.kind() == io::ErrorKind::InvalidData;
                tally.fail(if broken { "bad_reply" } else { "io" }, shared);
            }
        }
        if args.new_connection || reply.is_err() {
            conn = None;
        }
    }
    tally
}

/// Redraws `N requests, R/s, E errors` on stderr until the sender of `ticks` is dropped.
fn progress(shared: &Shared, started: Instant, ticks: &Receiver<()>) {
    let mut err = io::stderr();
    while let Err(RecvTimeoutError::Timeout) = ticks.recv_timeout(PROGRESS_EVERY) {
        let done = shared.done.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let _ = write!(
            err,
            "\r{done} requests, {:.0}/s, {failed} errors, {secs:.1} s  ",
            done as f64 / secs.max(1e-9)
        );
    }
    // Erase the line, so the report starts on a clean one.
    let _ = write!(err, "\r{:70}\r", "");
}

/// The value at percentile `p` (0 to 100) of `sorted`, by the nearest-rank method; 0 when empty.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied().unwrap_or(0)
}

/// Jain's fairness index of `counts`: 1 when all are equal, 1/n when one got everything.
/// 0 when nobody got anything (nothing was served, so nothing was fair).
fn jain_fairness(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64) * (c as f64)).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (counts.len() as f64 * squares)
}

/// The numbers of one bench run, as `--json` prints them.
#[derive(Serialize)]
struct Report {
    clients: usize,
    /// `persistent` or `per-request`.
    connection: &'static str,
    /// From the moment every client was ready to the last reply.
    elapsed_s: f64,
    requests: u64,
    ok: u64,
    error_count: u64,
    /// Failed requests by code (see [`Tally::errors`]).
    errors: BTreeMap<&'static str, u64>,
    requests_per_s: f64,
    /// Bytes of `OK` bodies, and megabytes (10^6 bytes) of them per second.
    bytes: u64,
    mb_per_s: f64,
    latency_ms: Latency,
    /// `OK` replies by server.
    servers: BTreeMap<String, u64>,
    /// `OK` replies each client received, in client order.
    per_client: Vec<u64>,
    /// Jain's index over `per_client`.
    fairness: f64,
}

/// Latencies of `OK` requests, in milliseconds.
#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Report {
    fn new(tallies: Vec<Tally>, elapsed: Duration, new_connection: bool) -> Report {
        let per_client: Vec<u64> = tallies.iter().map(|t| t.latencies.len() as u64).collect();
        let bytes = tallies.iter().map(|t| t.bytes).sum();
        let mut latencies: Vec<u64> = tallies.iter().flat_map(|t| &t.latencies).copied().collect();
        let (mut servers, mut errors) = (BTreeMap::new(), BTreeMap::new());
        for t in &tallies {
            for (server, n) in &t.by_server {
                *servers.entry(server.clone()).or_default() += n;
            }
            for (&code, n) in &t.errors {
                *errors.entry(code).or_default() += n;
            }
        }
        latencies.sort_unstable();
        let ok = per_client.iter().sum();
        let error_count = errors.values().sum();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |p| percentile(&latencies, p) as f64 / 1e6;
        let mean = latencies.iter().sum::<u64>() as f64 / latencies.len().max(1) as f64 / 1e6;
        Report {
            clients: tallies.len(),
            connection: if new_connection { "per-request" } else { "persistent" },
            elapsed_s: elapsed.as_secs_f64(),
            requests: ok + error_count,
            ok,
            error_count,
            errors,
            requests_per_s: ok as f64 / secs,
            bytes,
            mb_per_s: bytes as f64 / 1e6 / secs,
            latency_ms: Latency {
                p50: ms(50.0),
                p90: ms(90.0),
                p99: ms(99.0),
                max: ms(100.0),
                mean,
            },
            servers,
            fairness: jain_fairness(&per_client),
            per_client,
        }
    }

    /// The report for people, with a bar chart of who answered how many.
    fn to_text(&self) -> String {
        let connection = match self.connection {
            "persistent" => "persistent connections",
            _ => "a new connection per request",
        };
        let l = &self.latency_ms;
        let latency = if self.ok == 0 {
            "none: no request got OK".to_string()
        } else {
            format!(
                "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                l.p50, l.p90, l.p99, l.max
            )
        };
        let errors = Vec::from_iter(self.errors.iter().map(|(c, n)| format!("{c} {n}")));
        let errors = if errors.is_empty() { "none".into() } else { errors.join(", ") };
        let mut out = format!(
            "{} clients, {connection}, {:.2} s\n\
             requests   {} OK, {} failed: {:.1} requests/s, {:.1} MB/s\n\
             latency    {latency}\n\
             errors     {errors}\n\
             fairness   {:.3} (Jain's index over the clients' OK replies; 1 = perfectly even)\n\
             answered by\n",
            self.clients,
            self.elapsed_s,
            self.ok,
            self.error_count,
            self.requests_per_s,
            self.mb_per_s,
            self.fairness
        );
        let most = self.servers.values().copied().max().unwrap_or(0).max(1);
        for (server, &n) in &self.servers {
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
        assert_eq!(mix, Mix { queries: 3, files: 1 });
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
    fn reports_merge_and_print() {
        let tally = |ok: u64, server: u32, lat: Vec<u64>| Tally {
            bytes: ok * 10,
            latencies: lat,
            by_server: BTreeMap::from([(server.to_string(), ok)]),
            errors: BTreeMap::new(),
        };
        let mut failing = tally(1, 2, vec![3_000_000]);
        failing.errors.insert("busy", 2);
        let report = Report::new(
            vec![tally(3, 1, vec![2_000_000, 1_000_000, 4_000_000]), failing],
            Duration::from_secs(2),
            false,
        );
        assert_eq!(report.ok, 4);
        assert_eq!(report.error_count, 2);
        assert_eq!(report.per_client, vec![3, 1]);
        // The latencies of all clients, sorted: 1, 2, 3, 4 ms.
        assert_eq!(report.latency_ms.p50, 2.0);
        assert_eq!(report.latency_ms.max, 4.0);
        assert_eq!(report.latency_ms.mean, 2.5);
        assert_eq!(report.requests_per_s, 2.0);
        let json = serde_json::to_value(&report).unwrap();
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

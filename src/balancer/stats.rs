//! What the balancer records: counters, the listed servers, recent decisions (put into words
//! when read) and the timeline.
//!
//! Counters are atomics, bumped by request threads without a lock. Three short locks: `servers`
//! guards the listed servers (changed only when servers come and go), `decisions` the recent
//! decisions and `timeline` the recent requests (one push each per request; nothing is
//! formatted under them).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::balancer::backend::Backend;
use crate::error::{Code, Error};
use crate::policy::{Decision, Policy};

/// Upper bounds, in seconds, of the request-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How many recent decisions are kept for the dashboard.
pub const RECENT_DECISIONS: usize = 40;

/// How far back the timeline reaches.
pub const TIMELINE_WINDOW: Duration = Duration::from_secs(60);

/// At most this many requests are kept for the timeline, however fast they come: it bounds
/// the memory and the size of `/status` (a busier minute shows only its latest part).
pub const TIMELINE_CAP: usize = 1000;

/// A latency histogram with Prometheus' cumulative-bucket semantics.
#[derive(Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`LATENCY_BUCKETS`] (not cumulative here).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Cumulative counts per bucket bound, then the sum in seconds and the count. Read while
    /// requests end, a bucket may already hold an observation the count does not yet: each is
    /// capped at the count, so that no bucket exceeds `+Inf` (which Prometheus requires).
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let count = self.count.load(Relaxed);
        let mut running = 0;
        let buckets = LATENCY_BUCKETS.iter().zip(&self.buckets);
        let buckets = buckets.map(|(&bound, n)| {
            running += n.load(Relaxed);
            (bound, running.min(count))
        });
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        (buckets.collect(), sum, count)
    }
}

/// One decision, recorded on the request's path as facts: the request, when (seconds since
/// the start), and the server chosen and why or why none. Put into words when read.
type Recorded = (u64, f64, Result<(u32, Decision), String>);

/// One request on the timeline: times are seconds since the balancer started.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Span {
    pub request: u64,
    /// The client's address and port (one connection = one client).
    pub client: Option<SocketAddr>,
    /// The server that answered.
    pub server: u32,
    /// When the request arrived (it then waited in line until `taken`).
    pub arrived: f64,
    /// When the server took it.
    pub taken: f64,
    /// When the reply's last byte was sent.
    pub ended: f64,
    /// Whether the reply was `OK`.
    pub ok: bool,
}

/// Everything the balancer counts.
pub struct Stats {
    /// When the balancer started.
    pub started: Instant,
    /// The listed servers, by id.
    servers: Mutex<BTreeMap<u32, Arc<Backend>>>,
    /// Replies sent to clients.
    pub replies: AtomicU64,
    /// `ERR` replies sent to clients, indexed by [`Code`].
    pub errors: [AtomicU64; Code::ALL.len()],
    /// Latency of every request, as the client sees it (less its network).
    pub latency: Histogram,
    /// The most recent decisions, at most [`RECENT_DECISIONS`], newest last.
    decisions: Mutex<VecDeque<Recorded>>,
    /// The most recent requests, at most [`TIMELINE_CAP`], oldest first.
    timeline: Mutex<VecDeque<Span>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            servers: Mutex::default(),
            replies: AtomicU64::new(0),
            errors: Default::default(),
            latency: Histogram::default(),
            decisions: Mutex::new(VecDeque::with_capacity(RECENT_DECISIONS)),
            timeline: Mutex::new(VecDeque::with_capacity(TIMELINE_CAP)),
        }
    }
}

/// Appends `item`, dropping the oldest once `ring` holds `cap`.
fn push_capped<T>(ring: &Mutex<VecDeque<T>>, cap: usize, item: T) {
    let mut ring = ring.lock();
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(item);
}

impl Stats {
    /// Lists a server (in place of any earlier one with its id).
    pub fn list(&self, backend: Arc<Backend>) {
        self.servers.lock().insert(backend.id, backend);
    }

    /// Drops a server that left the list.
    pub fn forget(&self, id: u32) {
        self.servers.lock().remove(&id);
    }

    /// Every listed server, by id.
    pub fn servers(&self) -> Vec<Arc<Backend>> {
        self.servers.lock().values().cloned().collect()
    }

    /// Counts a reply sent to a client: `error` is its `ERR` code, if any.
    pub fn record_reply(&self, latency: Duration, error: Option<&Error>) {
        self.replies.fetch_add(1, Relaxed);
        self.latency.observe(latency);
        if let Some(e) = error {
            self.errors[e.kind() as usize].fetch_add(1, Relaxed);
        }
    }

    /// Keeps the decision that gave `server` request `request` at `taken`, and notes it on
    /// the server for the timeline's bar in progress.
    pub fn record_choice(&self, request: u64, taken: Instant, server: &Backend, d: Decision) {
        let micros = taken.saturating_duration_since(self.started).as_micros() as u64;
        server.current_request.store(request, Relaxed);
        server.current_taken_micros.store(micros, Relaxed);
        let decision = (request, self.secs(taken), Ok((server.id, d)));
        push_capped(&self.decisions, RECENT_DECISIONS, decision);
    }

    /// Keeps the reason request `request` got no server.
    pub fn record_refusal(&self, request: u64, why: String) {
        let decision = (request, self.secs(Instant::now()), Err(why));
        push_capped(&self.decisions, RECENT_DECISIONS, decision);
    }

    /// Puts request `request` on the timeline: it arrived, `server` took it and its reply
    /// ended at the three `times`.
    pub fn record_span(
        &self,
        request: u64,
        client: Option<SocketAddr>,
        server: u32,
        (arrived, taken, ended): (Instant, Instant, Instant),
        ok: bool,
    ) {
        // Whole milliseconds keep `/status` short and are finer than the page can draw.
        let ms = |at: Instant| (self.secs(at) * 1000.0).round() / 1000.0;
        let span = Span {
            request,
            client,
            server,
            arrived: ms(arrived),
            taken: ms(taken),
            ended: ms(ended),
            ok,
        };
        push_capped(&self.timeline, TIMELINE_CAP, span);
    }

    /// The requests whose reply ended within the last [`TIMELINE_WINDOW`], oldest first.
    pub fn timeline(&self) -> Vec<Span> {
        let from = self.secs(Instant::now()) - TIMELINE_WINDOW.as_secs_f64();
        let timeline = self.timeline.lock();
        timeline.iter().filter(|s| s.ended >= from).copied().collect()
    }

    /// `at` in seconds since the balancer started.
    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// The most recent decisions in words (`request`, `at`, `text`), in the order they were
    /// made.
    pub fn decisions(&self, policy: &Policy) -> Vec<Value> {
        // Copied out so that the words are made outside the lock.
        let mut decisions: Vec<Recorded> = self.decisions.lock().iter().cloned().collect();
        // Kept in the order they were recorded, which may differ by a hair from the order
        // they were made.
        decisions.sort_by(|a, b| a.1.total_cmp(&b.1));
        let words = |(request, at, chosen): Recorded| {
            let text = match chosen {
                Ok((server, d)) => format!("server {server}: {}", policy.explain(server, &d)),
                Err(why) => format!("no server: {why}"),
            };
            json!({"request": request, "at": at, "text": format!("req {request} -> {text}")})
        };
        decisions.into_iter().map(words).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{backend, by_name};

    #[test]
    fn a_bucket_read_mid_observation_does_not_exceed_the_count() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        // An observation half done: its bucket counted, the count not yet.
        h.buckets[0].fetch_add(1, Relaxed);
        let (buckets, _, count) = h.read();
        assert_eq!(count, 1);
        assert!(buckets.iter().all(|&(_, n)| n <= count), "{buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (buckets, sum, count) = h.read();
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[3], (0.005, 2));
        assert_eq!(buckets.last().unwrap().1, 2, "60 s is above every bound");
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn keeps_only_recent_decisions_and_counts_errors_by_code() {
        let stats = Stats::default();
        for i in 0..(RECENT_DECISIONS as u64 + 5) {
            stats.record_refusal(i, format!("d{i}"));
        }
        let d = stats.decisions(by_name("power").unwrap());
        assert_eq!(d.len(), RECENT_DECISIONS);
        assert_eq!(d[0]["request"], 5);
        assert_eq!(d[0]["text"], "req 5 -> no server: d5");
        stats.record_reply(Duration::ZERO, Some(&Code::Busy.msg("x")));
        assert_eq!(stats.errors[Code::Busy as usize].load(Relaxed), 1);
    }

    #[test]
    fn decisions_read_like_sentences() {
        let power = by_name("power").unwrap();
        let chosen = backend(2, 0.02, 0);
        let alone = Decision { free: 1, declared: chosen.processing_time, ..Decision::default() };
        let stats = Stats::default();
        stats.record_choice(7, Instant::now(), &chosen, alone);
        assert_eq!(
            stats.decisions(power)[0]["text"],
            "req 7 -> server 2: server 2 fastest idle (20 ms) by power"
        );
        assert_eq!(chosen.current_request.load(Relaxed), 7);
    }

    #[test]
    fn decisions_are_listed_in_the_order_they_were_made() {
        let stats = Stats::default();
        let first = Instant::now();
        let second = first + Duration::from_millis(1);
        let chosen = backend(1, 0.02, 0);
        // Request 14's decision is recorded before request 13's, made earlier.
        stats.record_choice(14, second, &chosen, Decision::default());
        stats.record_choice(13, first, &chosen, Decision::default());
        let d = stats.decisions(by_name("power").unwrap());
        assert_eq!(d.iter().map(|d| d["request"].as_u64().unwrap()).collect::<Vec<_>>(), [13, 14]);
        assert!(d[0]["at"].as_f64() < d[1]["at"].as_f64());
    }

    #[test]
    fn timeline_keeps_the_last_minute_and_at_most_its_cap() {
        let stats = Stats::default();
        let t0 = stats.started;
        let at = |s: u64| t0 + Duration::from_millis(s);
        stats.record_span(1, None, 2, (at(0), at(10), at(30)), true);
        let spans = stats.timeline();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            (spans[0].server, spans[0].arrived, spans[0].taken, spans[0].ended),
            (2, 0.0, 0.01, 0.03)
        );
        for i in 0..TIMELINE_CAP as u64 + 10 {
            stats.record_span(i + 2, None, 1, (at(0), at(0), at(1)), true);
        }
        let spans = stats.timeline();
        assert_eq!(spans.len(), TIMELINE_CAP);
        assert_eq!(spans[0].request, 12, "the oldest went first");
        // A request that ended more than the window ago is not shown.
        let old = Stats {
            started: Instant::now() - TIMELINE_WINDOW - Duration::from_secs(5),
            ..Stats::default()
        };
        let t0 = old.started;
        old.record_span(1, None, 1, (t0, t0, t0 + Duration::from_secs(1)), true);
        old.record_span(2, None, 1, (t0, t0, Instant::now()), true);
        let spans = old.timeline();
        assert_eq!(spans.iter().map(|s| s.request).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_server_listed_again_replaces_the_old_and_forget_drops_it() {
        let stats = Stats::default();
        stats.list(backend(1, 0.1, 0));
        stats.list(backend(1, 0.2, 0));
        let listed = stats.servers();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].processing_time, Duration::from_millis(200));
        stats.forget(1);
        assert!(stats.servers().is_empty());
    }
}

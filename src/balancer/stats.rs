//! What the balancer counts, for `/status`, `/metrics` and the dashboard.
//!
//! Counters are atomics, bumped by request threads without a lock. Two short locks: `servers`
//! guards the index of per-server counters (changed only when servers come and go), and
//! `decisions` guards the list of recent decisions (one push per request).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::balancer::backend::Backend;
use crate::error::Error;
use crate::idle_queue::Decision;
use crate::policy::{Candidate, Policy};

/// Upper bounds, in seconds, of the request-latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How many recent decisions are kept for the dashboard.
pub const RECENT_DECISIONS: usize = 40;

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
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket bound, then the sum in seconds and the count.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut running = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, self.count.load(Ordering::Relaxed))
    }
}

/// One server's live counters (its fixed settings are in `backend`).
pub struct ServerStats {
    /// The server's settings.
    pub backend: Arc<Backend>,
    /// Replies relayed from it (`OK` and `ERR`).
    pub requests: AtomicU64,
    /// `ERR` replies from it, and failures of it.
    pub errors: AtomicU64,
    /// Body bytes relayed from it.
    pub bytes: AtomicU64,
    /// Times it sent bytes that no request asked for (its connection was closed each time).
    pub stray: AtomicU64,
    /// Whether it is handling a request right now.
    pub busy: AtomicBool,
    /// Moving average of whole-request latency, in microseconds (0 = none yet).
    pub latency_micros: AtomicU64,
    /// Moving average of service time (request sent to first reply byte), in microseconds.
    pub service_micros: AtomicU64,
}

impl ServerStats {
    fn new(backend: Arc<Backend>) -> ServerStats {
        ServerStats {
            backend,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            latency_micros: AtomicU64::new(0),
            service_micros: AtomicU64::new(0),
        }
    }

    /// The measured service time, once there is one.
    pub fn measured(&self) -> Option<Duration> {
        match self.service_micros.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether the measured service time is off the declared one by more than half (and by
    /// more than 5 ms, so that tiny times do not flag on noise).
    pub fn declaration_off(&self) -> bool {
        let Some(measured) = self.measured() else {
            return false;
        };
        let declared = self.backend.processing_time;
        let diff = measured.abs_diff(declared);
        diff > declared / 2 && diff > Duration::from_millis(5)
    }
}

/// Folds `sample` into a moving average kept in `avg` (weight 1/5). Concurrent updates may
/// lose a sample; for a display average that is fine.
fn fold(avg: &AtomicU64, sample: Duration) {
    let sample = (sample.as_micros() as u64).max(1);
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 {
        sample
    } else {
        (old * 4 + sample) / 5
    };
    avg.store(new, Ordering::Relaxed);
}

/// One decision as recorded on the request's path: facts only, put into words when read.
enum Recorded {
    /// A server was chosen.
    Chosen {
        request: u64,
        at: f64,
        chosen: Candidate,
        decision: Decision,
    },
    /// No server could be given.
    Refused { request: u64, at: f64, why: String },
}

/// One decision, as shown on the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    /// The request's number.
    pub request: u64,
    /// Seconds since the balancer started.
    pub at: f64,
    /// What was decided and why.
    pub text: String,
}

/// Everything the balancer counts.
pub struct Stats {
    /// When the balancer started.
    pub started: Instant,
    /// Guards the index of per-server counters, by server id.
    servers: Mutex<BTreeMap<u32, Arc<ServerStats>>>,
    /// Replies sent to clients.
    pub replies: AtomicU64,
    /// `ERR` replies sent to clients, by code (in the order of [`Error::CODES`]).
    pub errors: [AtomicU64; Error::CODES.len()],
    /// Latency of every request, as the client sees it (less its network).
    pub latency: Histogram,
    /// Guards the most recent decisions, newest last.
    decisions: Mutex<VecDeque<Recorded>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            servers: Mutex::new(BTreeMap::new()),
            replies: AtomicU64::new(0),
            errors: Default::default(),
            latency: Histogram::default(),
            decisions: Mutex::new(VecDeque::with_capacity(RECENT_DECISIONS)),
        }
    }
}

impl Stats {
    /// The counters of `backend`, made on first sight (and remade if its settings changed).
    pub fn server(&self, backend: &Arc<Backend>) -> Arc<ServerStats> {
        let mut servers = self.servers.lock();
        let entry = servers
            .entry(backend.id)
            .or_insert_with(|| Arc::new(ServerStats::new(Arc::clone(backend))));
        if entry.backend != *backend {
            *entry = Arc::new(ServerStats::new(Arc::clone(backend)));
        }
        Arc::clone(entry)
    }

    /// Drops the counters of a server that left the list.
    pub fn forget(&self, id: u32) {
        self.servers.lock().remove(&id);
    }

    /// Every listed server's counters, by id.
    pub fn servers(&self) -> Vec<Arc<ServerStats>> {
        self.servers.lock().values().cloned().collect()
    }

    /// Counts a reply sent to a client: `error` is its `ERR` code, if any.
    pub fn record_reply(&self, latency: Duration, error: Option<&Error>) {
        self.replies.fetch_add(1, Ordering::Relaxed);
        self.latency.observe(latency);
        if let Some(e) = error {
            if let Some(i) = Error::CODES.iter().position(|c| *c == e.code()) {
                self.errors[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a reply relayed from `server`.
    pub fn record_server_reply(
        &self,
        server: &ServerStats,
        service: Duration,
        latency: Duration,
        bytes: u64,
        ok: bool,
    ) {
        server.requests.fetch_add(1, Ordering::Relaxed);
        server.bytes.fetch_add(bytes, Ordering::Relaxed);
        if !ok {
            server.errors.fetch_add(1, Ordering::Relaxed);
        }
        fold(&server.service_micros, service);
        fold(&server.latency_micros, latency);
    }

    /// Keeps the decision made for request `request`.
    pub fn record_choice(&self, request: u64, chosen: Candidate, decision: Decision) {
        let at = self.started.elapsed().as_secs_f64();
        self.keep(Recorded::Chosen {
            request,
            at,
            chosen,
            decision,
        });
    }

    /// Keeps the reason request `request` got no server.
    pub fn record_refusal(&self, request: u64, why: String) {
        let at = self.started.elapsed().as_secs_f64();
        self.keep(Recorded::Refused { request, at, why });
    }

    fn keep(&self, record: Recorded) {
        let mut decisions = self.decisions.lock();
        if decisions.len() == RECENT_DECISIONS {
            decisions.pop_front();
        }
        decisions.push_back(record);
    }

    /// The most recent decisions in words, oldest first.
    pub fn decisions(&self, policy: &dyn Policy) -> Vec<DecisionRecord> {
        let decisions = self.decisions.lock();
        decisions
            .iter()
            .map(|d| match d {
                Recorded::Chosen {
                    request,
                    at,
                    chosen,
                    decision,
                } => DecisionRecord {
                    request: *request,
                    at: *at,
                    text: format!(
                        "req {request} -> server {}: {}",
                        chosen.id,
                        explain(policy, chosen, decision)
                    ),
                },
                Recorded::Refused { request, at, why } => DecisionRecord {
                    request: *request,
                    at: *at,
                    text: format!("req {request} -> no server: {why}"),
                },
            })
            .collect()
    }
}

/// Why `chosen` was picked, in words: who was busy, the policy's reason, who else was idle,
/// the wait. E.g. `server 1 busy, server 2 fastest idle (20 ms) by power, queued 2nd, waited 15 ms`.
pub fn explain(policy: &dyn Policy, chosen: &Candidate, d: &Decision) -> String {
    let mut parts = Vec::new();
    if !d.busy.is_empty() {
        parts.push(format!("{} busy", servers(&d.busy)));
    }
    parts.push(format!(
        "server {} {} by {}",
        chosen.id,
        policy.reason(chosen),
        policy.name()
    ));
    let others: Vec<u32> = d.idle.iter().copied().filter(|&i| i != chosen.id).collect();
    if !others.is_empty() {
        parts.push(format!("{} idle too", servers(&others)));
    }
    if let Some(place) = d.position {
        parts.push(format!(
            "queued {}, waited {} ms",
            ordinal(place),
            d.waited.as_millis()
        ));
    }
    parts.join(", ")
}

/// `server 3` or `servers 1, 3`, sorted.
fn servers(ids: &[u32]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    match list.len() {
        1 => format!("server {}", list[0]),
        _ => format!("servers {}", list.join(", ")),
    }
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (1, 11) | (2, 12) | (3, 13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: u32, secs: f64) -> Arc<Backend> {
        Arc::new(Backend {
            id,
            addr: format!("127.0.0.1:{}", 5000 + id),
            processing_time: Duration::from_secs_f64(secs),
            writable: false,
        })
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
    fn flags_a_declaration_off_by_more_than_half() {
        let stats = Stats::default();
        let s = stats.server(&backend(1, 0.1));
        assert!(!s.declaration_off(), "nothing measured yet");
        stats.record_server_reply(&s, Duration::from_millis(140), Duration::ZERO, 0, true);
        assert!(!s.declaration_off());
        let t = stats.server(&backend(2, 0.1));
        stats.record_server_reply(&t, Duration::from_millis(400), Duration::ZERO, 0, true);
        assert!(t.declaration_off());
    }

    #[test]
    fn keeps_only_recent_decisions_and_counts_errors_by_code() {
        let stats = Stats::default();
        for i in 0..(RECENT_DECISIONS as u64 + 5) {
            stats.record_refusal(i, format!("d{i}"));
        }
        let d = stats.decisions(&crate::policy::power::Power);
        assert_eq!(d.len(), RECENT_DECISIONS);
        assert_eq!(d[0].request, 5);
        assert_eq!(d[0].text, "req 5 -> no server: d5");
        stats.record_reply(Duration::ZERO, Some(&Error::Busy("x".into())));
        let busy = Error::CODES.iter().position(|c| *c == "busy").unwrap();
        assert_eq!(stats.errors[busy].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn decisions_read_like_sentences() {
        use crate::policy::power::Power;
        let chosen = Candidate::new(2, Duration::from_millis(20));
        let d = Decision {
            idle: vec![3, 2],
            busy: vec![4, 1],
            position: Some(2),
            waited: Duration::from_millis(15),
        };
        assert_eq!(
            explain(&Power, &chosen, &d),
            "servers 1, 4 busy, server 2 fastest idle (20 ms) by power, server 3 idle too, queued 2nd, waited 15 ms"
        );
        let alone = Decision {
            idle: vec![2],
            ..Decision::default()
        };
        assert_eq!(
            explain(&Power, &chosen, &alone),
            "server 2 fastest idle (20 ms) by power"
        );
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
        );
        let stats = Stats::default();
        stats.record_choice(7, chosen, alone);
        assert_eq!(
            stats.decisions(&Power)[0].text,
            "req 7 -> server 2: server 2 fastest idle (20 ms) by power"
        );
    }

    #[test]
    fn changed_settings_make_new_counters() {
        let stats = Stats::default();
        let a = stats.server(&backend(1, 0.1));
        a.requests.fetch_add(3, Ordering::Relaxed);
        assert_eq!(
            stats
                .server(&backend(1, 0.1))
                .requests
                .load(Ordering::Relaxed),
            3
        );
        assert_eq!(
            stats
                .server(&backend(1, 0.2))
                .requests
                .load(Ordering::Relaxed),
            0
        );
        stats.forget(1);
        assert!(stats.servers().is_empty());
    }
}

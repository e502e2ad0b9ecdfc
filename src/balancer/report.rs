//! The balancer's state reported two ways: JSON for `GET /status` (and the dashboard), and
//! the Prometheus text format for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::balancer::backend::Backend;
use crate::balancer::shared::Balancer;
use crate::balancer::stats::{TIMELINE_CAP, TIMELINE_WINDOW};
use crate::error::Code;
use crate::idle_queue::{Membership, Snapshot};

/// A server's state as shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the pool, idle or busy.
    Up,
    /// Finishing its requests in flight, then leaving.
    Draining,
    /// Listed, not in the pool (being reconnected).
    Down,
}

/// One server as the status page sees it: its live state and where the queue has it.
struct Row<'a> {
    server: &'a Backend,
    state: State,
    /// Its workers handling a request (or being re-probed).
    in_flight: usize,
}

/// Every listed server, by id, with its state as `queue` saw it.
fn rows<'a>(queue: &Snapshot, servers: &'a [Arc<Backend>]) -> Vec<Row<'a>> {
    servers
        .iter()
        .map(|server| {
            let state = match queue.members.iter().find(|(id, _)| *id == server.id) {
                Some((_, Membership::Active)) => State::Up,
                Some((_, Membership::Draining)) => State::Draining,
                None => State::Down,
            };
            let in_flight = match state {
                State::Down => 0,
                _ => server.in_flight.load(Ordering::Relaxed),
            };
            Row {
                server,
                state,
                in_flight,
            }
        })
        .collect()
}

/// `GET /status`: every server, the queue, clients, totals, uptime and the policy.
pub fn status(lb: &Balancer) -> Value {
    let queue = lb.queue.snapshot();
    let listed = lb.stats.servers();
    let servers: Vec<Value> = rows(&queue, &listed)
        .iter()
        .map(
            |&Row {
                 server: s,
                 state,
                 in_flight,
             }| {
                json!({
                    "id": s.id,
                    "address": s.addr,
                    "processing_time": s.processing_time.as_secs_f64(),
                    "measured_time": s.measured().map(|m| m.as_secs_f64()),
                    "declaration_off": s.declaration_off(),
                    "state": match state {
                        State::Up => "up",
                        State::Draining => "draining",
                        State::Down => "down",
                    },
                    "workers": s.workers,
                    "in_flight": in_flight,
                    // The request it took last while busy, and when it took it (none while a
                    // re-probe holds it).
                    "current": (in_flight > 0 && s.current_request.load(Ordering::Relaxed) != 0).then(|| json!({
                        "request": s.current_request.load(Ordering::Relaxed),
                        "taken": s.current_taken_micros.load(Ordering::Relaxed) as f64 / 1e6,
                    })),
                    "requests": s.requests.load(Ordering::Relaxed),
                    "errors": s.errors.load(Ordering::Relaxed),
                    "client_errors": s.client_errors.load(Ordering::Relaxed),
                    "bytes": s.bytes.load(Ordering::Relaxed),
                    "stray": s.stray.load(Ordering::Relaxed),
                    "latency": s.latency().map(|l| l.as_secs_f64()),
                })
            },
        )
        .collect();
    let mut errors = serde_json::Map::new();
    let (mut client_errors, mut server_errors) = (0, 0);
    for (code, n) in Code::ALL.into_iter().zip(&lb.stats.errors) {
        let n = n.load(Ordering::Relaxed);
        errors.insert(code.as_str().to_string(), json!(n));
        if code.is_client_error() {
            client_errors += n;
        } else {
            server_errors += n;
        }
    }
    json!({
        "policy": lb.queue.policy().name(),
        "uptime_seconds": lb.stats.started.elapsed().as_secs_f64(),
        "clients": lb.clients.load(Ordering::Relaxed),
        "in_flight": lb.in_flight.load(Ordering::Relaxed),
        "queue": {
            "length": queue.waiting,
            "longest_wait_seconds": queue.longest_wait.as_secs_f64(),
        },
        "totals": {
            "replies": lb.stats.replies.load(Ordering::Relaxed),
            "errors": errors,
            "client_errors": client_errors,
            "server_errors": server_errors,
        },
        "servers": servers,
        "decisions": lb.stats.decisions(lb.queue.policy()),
        "timeline": {
            "window_seconds": TIMELINE_WINDOW.as_secs_f64(),
            "cap": TIMELINE_CAP,
            "requests": lb.stats.timeline(),
        },
    })
}

/// A per-server metric family: name, type, help, and how a row gives its value.
type Family = (&'static str, &'static str, &'static str, fn(&Row) -> f64);

/// Every per-server family of `/metrics`, one row each.
const PER_SERVER: [Family; 10] = [
    (
        "minilb_server_requests_total",
        "counter",
        "Replies relayed from the server.",
        |r| count(&r.server.requests),
    ),
    (
        "minilb_server_errors_total",
        "counter",
        "Failures of the server: broken connections or replies, ERR replies not caused by the request.",
        |r| count(&r.server.errors),
    ),
    (
        "minilb_server_client_errors_total",
        "counter",
        "ERR replies from the server caused by the request (bad_request, not_found, forbidden, too_large, sql).",
        |r| count(&r.server.client_errors),
    ),
    (
        "minilb_server_bytes_total",
        "counter",
        "Reply body bytes relayed from the server.",
        |r| count(&r.server.bytes),
    ),
    (
        "minilb_server_stray_total",
        "counter",
        "Times the server sent bytes no request asked for; each closed its connection.",
        |r| count(&r.server.stray),
    ),
    (
        "minilb_server_up",
        "gauge",
        "1 if the server is in the pool.",
        |r| f64::from(u8::from(r.state == State::Up)),
    ),
    (
        "minilb_server_in_flight",
        "gauge",
        "The server's workers handling a request (or being re-probed).",
        |r| r.in_flight as f64,
    ),
    (
        "minilb_server_workers",
        "gauge",
        "Requests the server processes at once.",
        |r| r.server.workers as f64,
    ),
    (
        "minilb_server_declared_seconds",
        "gauge",
        "The server's declared processing time.",
        |r| r.server.processing_time.as_secs_f64(),
    ),
    (
        "minilb_server_measured_seconds",
        "gauge",
        "Moving average of the server's measured service time.",
        |r| r.server.measured().map_or(f64::NAN, |d| d.as_secs_f64()),
    ),
];

fn count(n: &AtomicU64) -> f64 {
    n.load(Ordering::Relaxed) as f64
}

/// `GET /metrics`: the same counters in the Prometheus text format (version 0.0.4).
pub fn metrics(lb: &Balancer) -> String {
    let queue = lb.queue.snapshot();
    let listed = lb.stats.servers();
    let rows = rows(&queue, &listed);
    let mut m = Metrics(String::new());
    for (name, kind, help, value) in PER_SERVER {
        m.family(name, kind, help);
        for row in &rows {
            m.sample(name, &format!("server=\"{}\"", row.server.id), value(row));
        }
    }

    m.family(
        "minilb_replies_total",
        "counter",
        "Replies sent to clients.",
    );
    m.sample(
        "minilb_replies_total",
        "",
        lb.stats.replies.load(Ordering::Relaxed) as f64,
    );
    m.family(
        "minilb_errors_total",
        "counter",
        "ERR replies sent to clients, by code.",
    );
    for (code, n) in Code::ALL.into_iter().zip(&lb.stats.errors) {
        m.sample(
            "minilb_errors_total",
            &format!("code=\"{}\"", code.as_str()),
            n.load(Ordering::Relaxed) as f64,
        );
    }

    let name = "minilb_request_duration_seconds";
    m.family(
        name,
        "histogram",
        "Time from a request's arrival to the end of its reply.",
    );
    let (buckets, sum, count) = lb.stats.latency.read();
    for (bound, n) in buckets {
        m.sample(
            &format!("{name}_bucket"),
            &format!("le=\"{bound}\""),
            n as f64,
        );
    }
    m.sample(&format!("{name}_bucket"), "le=\"+Inf\"", count as f64);
    m.sample(&format!("{name}_sum"), "", sum);
    m.sample(&format!("{name}_count"), "", count as f64);

    let gauges = [
        (
            "minilb_queue_length",
            "Requests waiting for an idle server.",
            queue.waiting as f64,
        ),
        (
            "minilb_queue_longest_wait_seconds",
            "How long the first request in line has waited.",
            queue.longest_wait.as_secs_f64(),
        ),
        (
            "minilb_clients_connected",
            "Client connections open.",
            lb.clients.load(Ordering::Relaxed) as f64,
        ),
        (
            "minilb_requests_in_flight",
            "Requests read and not yet answered.",
            lb.in_flight.load(Ordering::Relaxed) as f64,
        ),
        (
            "minilb_uptime_seconds",
            "Seconds since the balancer started.",
            lb.stats.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, help, value) in gauges {
        m.family(name, "gauge", help);
        m.sample(name, "", value);
    }
    m.0
}

/// The Prometheus text format, written line by line.
struct Metrics(String);

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let value = if value.is_nan() {
            "NaN".to_string()
        } else {
            value.to_string()
        };
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle_queue::IdleQueue;
    use crate::policy::{backend, by_name};
    use std::time::Duration;

    #[test]
    fn state_and_in_flight_come_from_the_queue() {
        let q = IdleQueue::new(by_name("power").unwrap());
        let servers = [backend(1, 0.1, 0), backend(2, 0.2, 0), backend(3, 0.3, 0)];
        assert!(q.add(Arc::clone(&servers[0]), 1) && q.add(Arc::clone(&servers[1]), 2));
        let lease = q.acquire(Duration::ZERO).unwrap();
        let seen = |q: &IdleQueue<u32>| {
            let snapshot = q.snapshot();
            rows(&snapshot, &servers)
                .iter()
                .map(|r| (r.state, r.in_flight))
                .collect::<Vec<_>>()
        };
        let (up, down) = ((State::Up, 0), (State::Down, 0));
        assert_eq!(seen(&q), [(State::Up, 1), up, down]);
        assert!(q.retire(1));
        assert_eq!(seen(&q)[0], (State::Draining, 1));
        lease.release();
        assert_eq!(seen(&q), [down, up, down]);
    }
}

//! The balancer's state reported two ways: JSON for `GET /status` (and the dashboard), and
//! the Prometheus text format for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::balancer::backend::Backend;
use crate::balancer::shared::Balancer;
use crate::balancer::stats::{TIMELINE_CAP, TIMELINE_WINDOW};
use crate::error::Code;
use crate::idle_queue::{Membership, Snapshot};

/// A server's state as shown to people (`"up"`, `"draining"`, `"down"` in `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum State {
    /// In the pool, idle or busy.
    Up,
    /// Finishing its requests in flight, then leaving.
    Draining,
    /// Listed, not in the pool (being reconnected).
    Down,
}

/// One listed server as the status page sees it: its live state and where the queue has it.
struct Row<'a> {
    server: &'a Backend,
    state: State,
    /// Its workers handling a request (or being re-probed); none while it is out of the pool.
    in_flight: usize,
}

/// Every listed server with its state as `queue` saw it.
fn rows<'a>(queue: &Snapshot, servers: &'a [Arc<Backend>]) -> Vec<Row<'a>> {
    let row = |server: &'a Arc<Backend>| {
        let state = match queue.members.iter().find(|(id, _)| *id == server.id) {
            Some((_, Membership::Active)) => State::Up,
            Some((_, Membership::Draining)) => State::Draining,
            None => State::Down,
        };
        let in_flight = match state {
            State::Down => 0,
            _ => server.in_flight.load(Relaxed),
        };
        Row { server, state, in_flight }
    };
    servers.iter().map(row).collect()
}

/// `GET /status`: every server, the queue, clients, totals, uptime, the policy, the recent
/// decisions and the timeline.
pub fn status(lb: &Balancer) -> Value {
    let queue = lb.queue.snapshot();
    let listed = lb.stats.servers();
    let servers: Vec<Value> = rows(&queue, &listed).iter().map(server_status).collect();
    let mut errors = serde_json::Map::new();
    let (mut client_errors, mut server_errors) = (0, 0);
    for (code, n) in Code::ALL.into_iter().zip(&lb.stats.errors) {
        let n = n.load(Relaxed);
        errors.insert(code.as_str().to_string(), json!(n));
        if code.is_client_error() {
            client_errors += n;
        } else {
            server_errors += n;
        }
    }
    json!({
        "policy": lb.queue.policy.name,
        "uptime_seconds": lb.stats.started.elapsed().as_secs_f64(),
        "clients": lb.clients.load(Relaxed),
        "in_flight": lb.in_flight.load(Relaxed),
        "queue": {
            "length": queue.waiting,
            "longest_wait_seconds": queue.longest_wait.as_secs_f64(),
        },
        "totals": {
            "replies": lb.stats.replies.load(Relaxed),
            "errors": errors,
            "client_errors": client_errors,
            "server_errors": server_errors,
        },
        "servers": servers,
        "decisions": lb.stats.decisions(lb.queue.policy),
        "timeline": {
            "window_seconds": TIMELINE_WINDOW.as_secs_f64(),
            "cap": TIMELINE_CAP,
            "requests": lb.stats.timeline(),
        },
    })
}

/// One listed server: its settings, its live state, and where the queue has it.
fn server_status(row: &Row) -> Value {
    let (s, in_flight) = (row.server, row.in_flight);
    let current = s.current_request.load(Relaxed);
    json!({
        "id": s.id,
        "address": s.addr,
        "processing_time": s.processing_time.as_secs_f64(),
        "measured_time": s.measured().map(|m| m.as_secs_f64()),
        "declaration_off": s.declaration_off(),
        "state": row.state,
        "workers": s.workers,
        "in_flight": in_flight,
        // The request it took last while busy, and when (none while a re-probe holds it).
        "current": (in_flight > 0 && current != 0).then(|| json!({
            "request": current,
            "taken": s.current_taken_micros.load(Relaxed) as f64 / 1e6,
        })),
        "requests": s.requests.load(Relaxed),
        "errors": s.errors.load(Relaxed),
        "client_errors": s.client_errors.load(Relaxed),
        "bytes": s.bytes.load(Relaxed),
        "stray": s.stray.load(Relaxed),
        "latency": s.latency().map(|l| l.as_secs_f64()),
    })
}

/// A per-server family of `/metrics`: name after `minilb_` (those ending in `_total` are
/// counters, the others gauges), help, and how a row gives its value.
type Family = (&'static str, &'static str, fn(&Row) -> f64);

/// Every per-server family of `/metrics`.
const PER_SERVER: [Family; 10] = [
    ("server_requests_total", "Replies relayed from the server.", |r| {
        count(&r.server.requests)
    }),
    (
        "server_errors_total",
        "Failures of the server: broken connections or replies, ERR replies not caused by the request.",
        |r| count(&r.server.errors),
    ),
    (
        "server_client_errors_total",
        "ERR replies from the server caused by the request (bad_request, not_found, forbidden, too_large, sql).",
        |r| count(&r.server.client_errors),
    ),
    ("server_bytes_total", "Reply body bytes relayed from the server.", |r| {
        count(&r.server.bytes)
    }),
    (
        "server_stray_total",
        "Times the server sent bytes no request asked for; each closed its connection.",
        |r| count(&r.server.stray),
    ),
    ("server_up", "1 if the server is in the pool.", |r| {
        f64::from(u8::from(r.state == State::Up))
    }),
    (
        "server_in_flight",
        "The server's workers handling a request (or being re-probed).",
        |r| r.in_flight as f64,
    ),
    ("server_workers", "Requests the server processes at once.", |r| {
        r.server.workers as f64
    }),
    ("server_declared_seconds", "The server's declared processing time.", |r| {
        r.server.processing_time.as_secs_f64()
    }),
    (
        "server_measured_seconds",
        "Moving average of the server's measured service time.",
        |r| r.server.measured().map_or(f64::NAN, |d| d.as_secs_f64()),
    ),
];

fn count(n: &AtomicU64) -> f64 {
    n.load(Relaxed) as f64
}

/// `GET /metrics`: the same figures in the Prometheus text format (version 0.0.4).
pub fn metrics(lb: &Balancer) -> String {
    let queue = lb.queue.snapshot();
    let listed = lb.stats.servers();
    let rows = rows(&queue, &listed);
    let mut m = String::new();
    for (name, help, value) in PER_SERVER {
        let name = family(&mut m, name, help);
        for row in &rows {
            let series = format!("{name}{{server=\"{}\"}}", row.server.id);
            sample(&mut m, &series, value(row));
        }
    }
    let once = [
        ("replies_total", "Replies sent to clients.", count(&lb.stats.replies)),
        ("queue_length", "Requests waiting for an idle server.", queue.waiting as f64),
        (
            "queue_longest_wait_seconds",
            "How long the first request in line has waited.",
            queue.longest_wait.as_secs_f64(),
        ),
        ("clients_connected", "Client connections open.", lb.clients.load(Relaxed) as f64),
        (
            "requests_in_flight",
            "Requests read and not yet answered.",
            lb.in_flight.load(Relaxed) as f64,
        ),
        (
            "uptime_seconds",
            "Seconds since the balancer started.",
            lb.stats.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, help, value) in once {
        let name = family(&mut m, name, help);
        sample(&mut m, &name, value);
    }
    let name = family(&mut m, "errors_total", "ERR replies sent to clients, by code.");
    for (code, n) in Code::ALL.into_iter().zip(&lb.stats.errors) {
        let series = format!("{name}{{code=\"{}\"}}", code.as_str());
        sample(&mut m, &series, count(n));
    }
    let name = "minilb_request_duration_seconds";
    let help = "Time from a request's arrival to the end of its reply.";
    let _ = writeln!(m, "# HELP {name} {help}\n# TYPE {name} histogram");
    let (buckets, sum, count) = lb.stats.latency.read();
    let bounds = buckets.iter().map(|(bound, n)| (bound.to_string(), *n));
    for (le, n) in bounds.chain([("+Inf".to_string(), count)]) {
        sample(&mut m, &format!("{name}_bucket{{le=\"{le}\"}}"), n as f64);
    }
    sample(&mut m, &format!("{name}_sum"), sum);
    sample(&mut m, &format!("{name}_count"), count as f64);
    m
}

/// Writes a family's header; returns its full name.
fn family(m: &mut String, name: &str, help: &str) -> String {
    let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
    let _ = writeln!(m, "# HELP minilb_{name} {help}\n# TYPE minilb_{name} {kind}");
    format!("minilb_{name}")
}

/// Writes one sample of `series` (a name and its labels).
fn sample(m: &mut String, series: &str, value: f64) {
    // Rust writes a NaN `NaN`, as Prometheus wants; infinities do not occur.
    let _ = writeln!(m, "{series} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idle_queue::IdleQueue;
    use crate::policy::{backend, by_name};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn state_and_in_flight_come_from_the_queue() {
        let q = IdleQueue::new(by_name("power").unwrap());
        let servers = [backend(1, 0.1, 0), backend(2, 0.2, 0), backend(3, 0.3, 0)];
        assert!(q.add(Arc::clone(&servers[0]), 1) && q.add(Arc::clone(&servers[1]), 2));
        let lease = q.acquire(Duration::ZERO).unwrap();
        let seen = |q: &IdleQueue<u32>| {
            (rows(&q.snapshot(), &servers).iter().map(server_status))
                .map(|v| {
                    (v["state"].as_str().unwrap().to_string(), v["in_flight"].as_u64().unwrap())
                })
                .collect::<Vec<_>>()
        };
        let at = |state: &str, n: u64| (state.to_string(), n);
        let (up, down) = (at("up", 0), at("down", 0));
        assert_eq!(seen(&q), [at("up", 1), up.clone(), down.clone()]);
        assert!(q.retire(1));
        assert_eq!(seen(&q)[0], at("draining", 1));
        lease.release();
        assert_eq!(seen(&q), [down.clone(), up, down]);
    }
}

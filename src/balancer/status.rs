//! The balancer's state, rendered two ways: JSON for `GET /status` (and the dashboard), and
//! the Prometheus text format for `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::balancer::stats::{TIMELINE_CAP, TIMELINE_WINDOW};
use crate::balancer::Balancer;
use crate::error::Code;
use crate::idle_queue::Membership;

/// A server's state as shown to people: `up`, `draining` or `down`.
fn state(lb_members: &[(u32, Membership)], id: u32) -> &'static str {
    match lb_members.iter().find(|(m, _)| *m == id).map(|(_, s)| *s) {
        Some(Membership::Active) => "up",
        Some(Membership::Draining) => "draining",
        None => "down",
    }
}

/// `GET /status`: every server, the queue, clients, totals, uptime and the policy.
pub fn status(lb: &Balancer) -> Value {
    let queue = lb.queue.snapshot();
    let servers: Vec<Value> = lb
        .stats
        .servers()
        .iter()
        .map(|s| {
            let b = &s.backend;
            let requests = s.requests.load(Ordering::Relaxed);
            json!({
                "id": b.id,
                "address": b.addr,
                "processing_time": b.processing_time.as_secs_f64(),
                "measured_time": s.measured().map(|m| m.as_secs_f64()),
                "declaration_off": s.declaration_off(),
                "state": state(&queue.members, b.id),
                "busy": s.busy.load(Ordering::Relaxed),
                "requests": requests,
                "errors": s.errors.load(Ordering::Relaxed),
                "client_errors": s.client_errors.load(Ordering::Relaxed),
                "bytes": s.bytes.load(Ordering::Relaxed),
                "stray": s.stray.load(Ordering::Relaxed),
                "latency": match s.latency_micros.load(Ordering::Relaxed) {
                    0 => None,
                    us => Some(us as f64 / 1e6),
                },
            })
        })
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
        "policy": lb.queue.policy_name(),
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

/// `GET /metrics`: the same counters in the Prometheus text format (version 0.0.4).
pub fn metrics(lb: &Balancer) -> String {
    let queue = lb.queue.snapshot();
    let servers = lb.stats.servers();
    let mut m = Metrics(String::new());
    let per_server = [
        (
            "minilb_server_requests_total",
            "counter",
            "Replies relayed from the server.",
        ),
        (
            "minilb_server_errors_total",
            "counter",
            "Failures of the server: broken connections or replies, ERR replies not caused by the request.",
        ),
        (
            "minilb_server_client_errors_total",
            "counter",
            "ERR replies from the server caused by the request (bad_request, not_found, forbidden, too_large, sql).",
        ),
        (
            "minilb_server_bytes_total",
            "counter",
            "Reply body bytes relayed from the server.",
        ),
        (
            "minilb_server_stray_total",
            "counter",
            "Times the server sent bytes no request asked for; each closed its connection.",
        ),
        (
            "minilb_server_up",
            "gauge",
            "1 if the server is in the pool.",
        ),
        (
            "minilb_server_busy",
            "gauge",
            "1 while the server handles a request.",
        ),
        (
            "minilb_server_declared_seconds",
            "gauge",
            "The server's declared processing time.",
        ),
        (
            "minilb_server_measured_seconds",
            "gauge",
            "Moving average of the server's measured service time.",
        ),
    ];
    for (name, kind, help) in per_server {
        m.family(name, kind, help);
        for s in &servers {
            let value = match name {
                "minilb_server_requests_total" => s.requests.load(Ordering::Relaxed) as f64,
                "minilb_server_errors_total" => s.errors.load(Ordering::Relaxed) as f64,
                "minilb_server_client_errors_total" => {
                    s.client_errors.load(Ordering::Relaxed) as f64
                }
                "minilb_server_bytes_total" => s.bytes.load(Ordering::Relaxed) as f64,
                "minilb_server_stray_total" => s.stray.load(Ordering::Relaxed) as f64,
                "minilb_server_up" => {
                    f64::from(u8::from(state(&queue.members, s.backend.id) == "up"))
                }
                "minilb_server_busy" => f64::from(u8::from(s.busy.load(Ordering::Relaxed))),
                "minilb_server_declared_seconds" => s.backend.processing_time.as_secs_f64(),
                _ => s.measured().map_or(f64::NAN, |d| d.as_secs_f64()),
            };
            m.sample(name, &format!("server=\"{}\"", s.backend.id), value);
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

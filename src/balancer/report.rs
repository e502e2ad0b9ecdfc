//! The balancer's state reported two ways: JSON for `GET /status` (and the dashboard), and
//! the Prometheus text format for `GET /metrics`, which reports the same figures, read once.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use crate::balancer::backend::Backend;
use crate::balancer::stats::{TIMELINE_CAP, TIMELINE_WINDOW};
use crate::balancer::Balancer;
use crate::error::Code;
use crate::idle_queue::{Membership, Snapshot};

/// `GET /status`: every server, the queue, clients, totals, uptime, the policy, the recent
/// decisions and the timeline.
pub fn status(lb: &Balancer) -> Value {
    let mut status = figures(lb);
    status["decisions"] = json!(lb.stats.decisions(lb.queue.policy));
    status["timeline"] = json!({
        "window_seconds": TIMELINE_WINDOW.as_secs_f64(),
        "cap": TIMELINE_CAP,
        "requests": lb.stats.timeline(),
    });
    status
}

/// The figures `/status` and `/metrics` share.
fn figures(lb: &Balancer) -> Value {
    let queue = lb.queue.snapshot();
    let servers = lb.stats.servers();
    let servers: Vec<Value> = servers.iter().map(|s| server_status(s, &queue)).collect();
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
    })
}

/// One listed server: its settings, its live state, and where the queue has it.
fn server_status(s: &Backend, queue: &Snapshot) -> Value {
    let member = queue.members.iter().find(|(id, _)| *id == s.id);
    // Its workers handling a request (or being re-probed); none while it is out of the pool.
    let in_flight = member.map_or(0, |_| s.in_flight.load(Relaxed));
    let current = s.current_request.load(Relaxed);
    json!({
        "id": s.id,
        "address": s.addr,
        "processing_time": s.processing_time.as_secs_f64(),
        "measured_time": s.measured().map(|m| m.as_secs_f64()),
        "declaration_off": s.declaration_off(),
        "state": match member {
            Some((_, Membership::Active)) => "up",
            Some((_, Membership::Draining)) => "draining",
            None => "down",
        },
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

/// The families of `/metrics` reported from [`figures`], a line each: name after `minilb_`,
/// where its value is (a field of each server, or a JSON pointer for the ones reported
/// once), help. Names ending in `_total` are counters, the others gauges.
const PER_SERVER: &str = "\
server_requests_total requests Replies relayed from the server.
server_errors_total errors Failures of the server: broken connections or replies, ERR replies not caused by the request.
server_client_errors_total client_errors ERR replies from the server caused by the request (bad_request, not_found, forbidden, too_large, sql).
server_bytes_total bytes Reply body bytes relayed from the server.
server_stray_total stray Times the server sent bytes no request asked for; each closed its connection.
server_up state 1 if the server is in the pool.
server_in_flight in_flight The server's workers handling a request (or being re-probed).
server_workers workers Requests the server processes at once.
server_declared_seconds processing_time The server's declared processing time.
server_measured_seconds measured_time Moving average of the server's measured service time.";
const TOTALS: &str = "\
replies_total /totals/replies Replies sent to clients.
queue_length /queue/length Requests waiting for an idle server.
queue_longest_wait_seconds /queue/longest_wait_seconds How long the first request in line has waited.
clients_connected /clients Client connections open.
requests_in_flight /in_flight Requests read and not yet answered.
uptime_seconds /uptime_seconds Seconds since the balancer started.";

/// The lines of a table of families: name, where its value is, help.
fn families(
    table: &'static str,
) -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    table.lines().filter_map(|line| {
        let mut words = line.splitn(3, ' ');
        Some((words.next()?, words.next()?, words.next()?))
    })
}

/// A figure as a sample's value: a number, 1 for the state `up` (0 for another), NaN for none.
fn value(figure: &Value) -> f64 {
    match figure {
        Value::String(state) => f64::from(u8::from(state == "up")),
        figure => figure.as_f64().unwrap_or(f64::NAN),
    }
}

/// `GET /metrics`: the same figures in the Prometheus text format (version 0.0.4).
pub fn metrics(lb: &Balancer) -> String {
    let figures = figures(lb);
    let servers = figures["servers"].as_array().map_or(&[][..], Vec::as_slice);
    let mut m = String::new();
    for (name, field, help) in families(PER_SERVER) {
        let name = family(&mut m, name, help);
        for s in servers {
            let series = format!("{name}{{server=\"{}\"}}", s["id"]);
            sample(&mut m, &series, value(&s[field]));
        }
    }
    for (name, pointer, help) in families(TOTALS) {
        let name = family(&mut m, name, help);
        sample(
            &mut m,
            &name,
            figures.pointer(pointer).map_or(f64::NAN, value),
        );
    }
    let name = family(
        &mut m,
        "errors_total",
        "ERR replies sent to clients, by code.",
    );
    for code in Code::ALL.map(Code::as_str) {
        let n = value(&figures["totals"]["errors"][code]);
        sample(&mut m, &format!("{name}{{code=\"{code}\"}}"), n);
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
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(
        m,
        "# HELP minilb_{name} {help}\n# TYPE minilb_{name} {kind}"
    );
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
            let snapshot = q.snapshot();
            (servers.iter().map(|s| server_status(s, &snapshot)))
                .map(|v| {
                    (
                        v["state"].as_str().unwrap().to_string(),
                        v["in_flight"].as_u64().unwrap(),
                    )
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

    #[test]
    fn every_per_server_family_reads_a_field_of_the_servers_status() {
        let status = server_status(&backend(1, 0.1, 0), &Snapshot::default());
        assert_eq!(families(PER_SERVER).count(), 10);
        assert_eq!(families(TOTALS).count(), 6);
        for (name, field, _) in families(PER_SERVER) {
            assert!(
                status.get(field).is_some(),
                "{name} reads {field}, not in /status"
            );
        }
        assert_eq!(value(&status["state"]), 0.0);
        assert!(value(&status["measured_time"]).is_nan());
    }
}

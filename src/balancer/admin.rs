//! The admin listener: a small HTTP/1.1 API ([`http`]) beside the client port.
//!
//! - `POST /servers` with a JSON body `{"id", "host", "port", "processing_time", "workers"}`
//!   (`workers` optional, 1 by default) joins a server that shares no servers file with the
//!   balancer (another machine, say).
//! - `DELETE /servers/<id>` removes a joined server (it drains first).
//! - `GET /servers` lists the joined servers.
//! - `GET /` is the live dashboard; `GET /status` the state as JSON; `GET /metrics` the
//!   counters in the Prometheus text format.
//!
//! Changes need `Authorization: Bearer <token>` when the balancer has `--token-file`; without
//! one, only loopback peers may make them.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::balancer::http::{self, Request, Response};
use crate::balancer::report;
use crate::balancer::shared::Balancer;
use crate::servers_file::{self, ServerEntry};
use crate::tls::Acceptor;

/// How long an admin request may take to arrive when `--request-timeout` is 0 (no limit for
/// clients): the admin listener always has one, or a silent peer could hold a slot for ever.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// An HTTP answer: status and JSON body.
type Answer = (u16, serde_json::Value);

/// The dashboard: one page, its CSS and script inline, no build step and no CDN.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves admin requests until the balancer stops (and a connection wakes the listener).
/// Speaks HTTPS with `tls`.
pub(crate) fn serve(lb: &Arc<Balancer>, listener: TcpListener, tls: Option<Acceptor>) {
    let timeout = lb.config.request_timeout;
    let deadline = if timeout.is_zero() {
        DEFAULT_DEADLINE
    } else {
        timeout
    };
    let handler_lb = Arc::clone(lb);
    http::serve(listener, deadline, &lb.stopping, tls, move |request| {
        handle(&handler_lb, &request)
    });
}

fn handle(lb: &Balancer, request: &Request) -> Response {
    let text = |content_type, body| Response {
        code: 200,
        content_type,
        body,
    };
    let (method, path) = (request.method.as_str(), request.path.as_str());
    let (code, body) = match (method, path) {
        ("GET", "/") => return text("text/html; charset=utf-8", DASHBOARD.into()),
        ("GET", "/metrics") => {
            return text(
                "text/plain; version=0.0.4; charset=utf-8",
                report::metrics(lb),
            )
        }
        ("GET", "/status") => (200, report::status(lb)),
        ("GET", "/servers") => (200, serde_json::json!(list(lb))),
        ("POST", "/servers") => authorize(lb, request, "join").unwrap_or_else(|| join(lb, request)),
        ("DELETE", p) if p.starts_with("/servers/") => authorize(lb, request, "leave")
            .unwrap_or_else(|| leave(lb, &p["/servers/".len()..], request)),
        _ => fail(404, format!("no such endpoint: {method} {path}")),
    };
    Response::json(code, &body)
}

/// `None` when the request may change the pool; otherwise the refusal, logged.
fn authorize(lb: &Balancer, request: &Request, action: &str) -> Option<Answer> {
    let who = request.remote;
    match &lb.config.token {
        Some(token) => {
            let expected = format!("Bearer {token}");
            let given = request.header("Authorization");
            if given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
                return None;
            }
            log::warn!("refused a {action} request from {who}: wrong or missing token");
            Some(fail(
                401,
                "wrong or missing token: send Authorization: Bearer <token from --token-file>",
            ))
        }
        None if who.ip().is_loopback() => None,
        None => {
            log::warn!("refused a {action} request from {who}: not loopback and no --token-file");
            Some(fail(403, "registrations from other machines need a shared secret: start the balancer and the server with --token-file"))
        }
    }
}

/// Compares without stopping at the first difference, so timing says nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn join(lb: &Balancer, request: &Request) -> Answer {
    let Ok(body) = std::str::from_utf8(&request.body) else {
        return fail(400, "the body is not UTF-8 text");
    };
    // Every field is range-checked as it is read, as for the servers file.
    let entry: ServerEntry = match serde_json::from_str(body) {
        Ok(e) => e,
        Err(e) => {
            return fail(400, format!(
                "expected {{\"id\": 1, \"host\": \"127.0.0.2\", \"port\": 5071, \"processing_time\": 0.5}}: {e}"
            ))
        }
    };
    let in_file = servers_file::read(&lb.config.servers_file).unwrap_or_default();
    // Comparing addresses may resolve host names (DNS): done on a copy, not under the lock.
    let joined = lb.joined.lock().clone();
    // A server may join again (after a restart) unless its old self is still up elsewhere.
    let replaceable = |other: &ServerEntry| {
        other.id == entry.id
            && joined.get(&other.id) == Some(other)
            && (other.same_address(&entry) || lb.queue.membership(other.id).is_none())
    };
    let clash = in_file
        .iter()
        .chain(joined.values())
        .filter(|other| !replaceable(other))
        .find(|other| other.id == entry.id || other.same_address(&entry));
    let pool = in_file.len() + joined.len() - usize::from(joined.contains_key(&entry.id));
    let max = lb.config.max_servers;
    let refuse = |code, why: String| {
        let (id, at) = (entry.id, entry.address());
        log::warn!("refused to join server {id} at {at}: {why}");
        fail(code, why)
    };
    if let Some(other) = clash {
        let (id, at) = (other.id, other.address());
        return refuse(409, format!("server {id} at {at} is already in the pool"));
    }
    if pool >= max {
        return refuse(503, format!("the pool is full: {pool} servers, the most --max-servers {max} allows; remove one, or restart the balancer with a larger --max-servers"));
    }
    let mut now = lb.joined.lock();
    if *now != joined {
        return fail(409, "another server joined or left meanwhile: try again");
    }
    log::info!(
        "server {} at {} joined over the network (processing time {} s)",
        entry.id,
        entry.address(),
        entry.processing_time
    );
    let answer = serde_json::json!(entry);
    now.insert(entry.id, entry);
    (201, answer)
}

/// Removes a joined server. With a JSON body naming its host and port, only a server at that
/// address is removed, so an old process that exits late cannot remove its replacement.
fn leave(lb: &Balancer, id: &str, request: &Request) -> Answer {
    let Ok(id) = id.parse::<u32>() else {
        return fail(400, "the server id must be a number");
    };
    let Ok(body) = std::str::from_utf8(&request.body) else {
        return fail(400, "the body is not UTF-8 text");
    };
    let at: Option<ServerEntry> = if body.trim().is_empty() {
        None
    } else {
        match serde_json::from_str(body) {
            Ok(entry) => Some(entry),
            Err(e) => return fail(400, format!("the body is not a server entry: {e}")),
        }
    };
    let mut joined = lb.joined.lock();
    match joined.get(&id) {
        None => fail(404, format!("server {id} did not join over the network")),
        Some(entry) if at.as_ref().is_some_and(|a| a.address() != entry.address()) => fail(
            409,
            format!(
                "server {id} is now registered at {}; left it in the pool",
                entry.address()
            ),
        ),
        Some(_) => {
            let entry = joined.remove(&id).expect("present: just looked");
            log::info!("server {id} at {} left over the network", entry.address());
            (200, serde_json::json!(entry))
        }
    }
}

fn list(lb: &Balancer) -> Vec<ServerEntry> {
    let mut list: Vec<ServerEntry> = lb.joined.lock().values().cloned().collect();
    list.sort_by_key(|e| e.id);
    list
}

/// An error answer: `{"error": why}`.
fn fail(code: u16, why: impl std::fmt::Display) -> Answer {
    (code, serde_json::json!({"error": why.to_string()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"Bearer abc", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer abd", b"Bearer abc"));
        assert!(!constant_time_eq(b"Bearer ab", b"Bearer abc"));
    }
}

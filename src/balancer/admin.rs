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

/// The dashboard: one page, its CSS and script inline, no build step and no CDN.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serves admin requests until the balancer stops (and a connection wakes the listener).
/// Speaks HTTPS with `tls`.
pub(crate) fn serve(lb: &Arc<Balancer>, listener: TcpListener, tls: Option<Acceptor>) {
    let deadline = match lb.config.request_timeout {
        Duration::ZERO => DEFAULT_DEADLINE,
        timeout => timeout,
    };
    let handler_lb = Arc::clone(lb);
    http::serve(listener, deadline, &lb.stopping, tls, move |request| {
        handle(&handler_lb, &request).unwrap_or_else(|refusal| refusal)
    });
}

/// The answer to `request`, or the refusal.
fn handle(lb: &Balancer, request: &Request) -> Result<Response, Response> {
    let (method, path) = (request.method.as_str(), request.path.as_str());
    match (method, path) {
        ("GET", "/") => Ok(Response::text("text/html; charset=utf-8", DASHBOARD.into())),
        ("GET", "/metrics") => {
            let metrics = report::metrics(lb);
            Ok(Response::text("text/plain; version=0.0.4; charset=utf-8", metrics))
        }
        ("GET", "/status") => Ok(Response::json(200, &report::status(lb))),
        ("GET", "/servers") => {
            let mut joined: Vec<ServerEntry> = lb.joined.lock().values().cloned().collect();
            joined.sort_by_key(|e| e.id);
            Ok(Response::json(200, &serde_json::json!(joined)))
        }
        ("POST", "/servers") => {
            authorize(lb, request, "join")?;
            join(lb, request)
        }
        ("DELETE", p) if p.starts_with("/servers/") => {
            authorize(lb, request, "leave")?;
            leave(lb, &p["/servers/".len()..], request)
        }
        _ => Err(Response::error(404, format!("no such endpoint: {method} {path}"))),
    }
}

/// Whether the request may change the pool; if not, the refusal, logged.
fn authorize(lb: &Balancer, request: &Request, action: &str) -> Result<(), Response> {
    let who = request.remote;
    match &lb.config.token {
        Some(token) => {
            let expected = format!("Bearer {token}");
            let given = request.header("Authorization");
            if given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
                return Ok(());
            }
            log::warn!("refused a {action} request from {who}: wrong or missing token");
            Err(Response::error(
                401,
                "wrong or missing token: send Authorization: Bearer <token from --token-file>",
            ))
        }
        None if who.ip().is_loopback() => Ok(()),
        None => {
            log::warn!("refused a {action} request from {who}: not loopback and no --token-file");
            Err(Response::error(403, "registrations from other machines need a shared secret: start the balancer and the server with --token-file"))
        }
    }
}

/// Compares without stopping at the first difference, so timing says nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's body as text.
fn body(request: &Request) -> Result<&str, Response> {
    std::str::from_utf8(&request.body)
        .map_err(|_| Response::error(400, "the body is not UTF-8 text"))
}

fn join(lb: &Balancer, request: &Request) -> Result<Response, Response> {
    // Every field is range-checked as it is read, as for the servers file.
    let entry: ServerEntry = serde_json::from_str(body(request)?).map_err(|e| {
        Response::error(400, format!(
            "expected {{\"id\": 1, \"host\": \"127.0.0.2\", \"port\": 5071, \"processing_time\": 0.5}}: {e}"
        ))
    })?;
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
        Err(Response::error(code, why))
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
        return Err(Response::error(409, "another server joined or left meanwhile: try again"));
    }
    log::info!(
        "server {} at {} joined over the network (processing time {} s)",
        entry.id,
        entry.address(),
        entry.processing_time
    );
    let answer = Response::json(201, &serde_json::json!(entry));
    now.insert(entry.id, entry);
    Ok(answer)
}

/// Removes a joined server. With a JSON body naming its host and port, only a server at that
/// address is removed, so an old process that exits late cannot remove its replacement.
fn leave(lb: &Balancer, id: &str, request: &Request) -> Result<Response, Response> {
    let id: u32 = id.parse().map_err(|_| Response::error(400, "the server id must be a number"))?;
    let body = body(request)?;
    let bad = |e| Response::error(400, format!("the body is not a server entry: {e}"));
    let at: Option<ServerEntry> = match body.trim() {
        "" => None,
        _ => Some(serde_json::from_str(body).map_err(bad)?),
    };
    let mut joined = lb.joined.lock();
    let Some(entry) = joined.get(&id) else {
        return Err(Response::error(404, format!("server {id} did not join over the network")));
    };
    if at.is_some_and(|a| a.address() != entry.address()) {
        let now = entry.address();
        let why = format!("server {id} is now registered at {now}; left it in the pool");
        return Err(Response::error(409, why));
    }
    let entry = joined.remove(&id).expect("present: just looked");
    log::info!("server {id} at {} left over the network", entry.address());
    Ok(Response::json(200, &serde_json::json!(entry)))
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

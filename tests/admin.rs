//! The admin listener under hostile peers: a peer that stalls is dropped at a deadline and
//! blocks no other admin request, connections and bodies are capped.

mod support;

use std::fs;
use std::net::TcpListener;
use std::time::Duration;

use support::hostile::{try_http, StalledHttp};
use support::*;

/// How long an admin request that nothing delays may take, on a busy machine.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn a_stalled_admin_peer_is_dropped_and_blocks_no_one() {
    let dir = TestDir::new(false);
    fs::write(dir.path.join("token"), "s3cret\n").unwrap();
    let (_server, lb, bystander) =
        watched_cluster(&dir, &[], &["--token-file", "token", "--request-timeout", "2"]);
    let admin = lb.admin();
    // Before any token check: a body that never comes, headers that never end.
    let mut no_body = StalledHttp::open(
        admin,
        "POST /servers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    );
    let mut no_end = StalledHttp::open(admin, "GET /status HTTP/1.1\r\nHost: x\r\n");
    let mut too_big = StalledHttp::open(
        admin,
        "POST /servers HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
    );

    // While they stall, everything else is answered: status, metrics, the page, a join.
    for path in ["/status", "/metrics", "/"] {
        let answer = try_http(admin, "GET", path, None, "", PROMPT);
        assert_eq!(answer.as_ref().map(|a| a.0).ok(), Some(200), "{path}: {answer:?}");
    }
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let entry =
        format!(r#"{{"id": 7, "host": "127.0.0.1", "port": {port}, "processing_time": 0.1}}"#);
    let joined = try_http(admin, "POST", "/servers", Some("s3cret"), &entry, PROMPT);
    assert_eq!(joined.as_ref().map(|a| a.0).ok(), Some(201), "{joined:?}");
    let left = try_http(admin, "DELETE", "/servers/7", Some("s3cret"), "", PROMPT);
    assert_eq!(left.as_ref().map(|a| a.0).ok(), Some(200), "{left:?}");

    // A body over the cap is refused at once, unread.
    let refused = too_big.closed_within(PROMPT).expect("the oversized request was answered");
    assert!(refused.starts_with("HTTP/1.1 413 "), "{refused:?}");
    // The stalled peers are let go at the deadline (--request-timeout 2).
    for peer in [&mut no_body, &mut no_end] {
        let answer = peer
            .closed_within(Duration::from_secs(2) + PROMPT)
            .expect("a stalled peer was dropped");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    }
    bystander.finish();
}

#[test]
fn admin_connections_are_capped_and_the_listener_recovers() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &["--request-timeout", "60"]);
    let admin = lb.admin();
    let threads_before = thread_count(lb.pid());
    let mut peers: Vec<StalledHttp> =
        (0..100).map(|_| StalledHttp::open(admin, "GET /status HTTP/1.1\r\nHost: x\r\n")).collect();
    // Past the cap of 32, each further connection is told so at once and closed.
    for (i, peer) in peers.iter_mut().enumerate().skip(40) {
        let answer = peer.closed_within(PROMPT).unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 503 "), "peer {i}: {answer:?}");
    }
    let threads = thread_count(lb.pid());
    assert!(threads <= threads_before + 32 + 2, "{threads} threads, {threads_before} before");
    drop(peers);
    // Once the stalled peers leave, their slots are free again.
    wait_until(PROMPT, || {
        try_http(admin, "GET", "/status", None, "", PROMPT).is_ok_and(|a| a.0 == 200)
    });
    bystander.finish();
}

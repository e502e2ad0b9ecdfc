//! Active health checks: a server that stops answering is found down within seconds, and the
//! request waiting on it is retried on another server, whatever `--server-timeout` says.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::fake_server::{answer, Act, FakeServer};
use support::*;

#[test]
fn a_read_waiting_on_a_dead_server_is_answered_by_another_within_seconds() {
    // Server 1 takes `SELECT 7 AS hang` and never answers it (a byte a minute), then stops
    // accepting: as a server whose link was cut, seen from the balancer.
    let arrived = Arc::new(AtomicBool::new(false));
    let took = Arc::clone(&arrived);
    let dead = FakeServer::start(1, move |line| match line {
        "SELECT 7 AS hang" => {
            took.store(true, Ordering::SeqCst);
            Act::Trickle { bytes: answer(1, line), at_once: 0, gap: Duration::from_secs(60) }
        }
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    dead.register(&dir.servers_file());
    let lb = start_balancer(&dir, 1, &["--server-timeout", "60"]);
    let bystander = Bystander::start(lb.addr);
    let mut client = Wire::connect(lb.addr);
    // Without checks the balancer would wait 60 s: the test client's REPLY_TIMEOUT (20 s)
    // fails the test first.
    client.send_raw(b"SELECT 7 AS hang\n");
    wait_until(START_TIMEOUT, || arrived.load(Ordering::SeqCst));
    dead.stop_listening();
    let sent = Instant::now();
    let alive = FakeServer::start(2, |_| Act::Answer);
    alive.register(&dir.servers_file());

    let reply = client.read_reply();
    let waited = sent.elapsed();
    assert_eq!((reply.server(), reply.text()), (Some(2), "hang: 7\n".into()));
    // Three checks a second apart, and time for a busy machine.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    eprintln!("the read waiting on the dead server was answered by server 2 after {waited:.1?}");
    // The release is logged after the connection is broken, so the retried reply can come
    // first: wait (bounded) for the line.
    let released = "server 1: 1 request(s) waiting on its reply released";
    wait_until(START_TIMEOUT, || lb.log_text().contains(released));
    let log = lb.log_text();
    assert_eq!(
        log.matches("server 1 is down: 3 health checks in a row failed").count(),
        1,
        "{log}"
    );
    alive.wait_for_answers(3);
    bystander.finish();
}

#[test]
fn a_server_logs_no_line_for_a_health_check() {
    // Three connections that say nothing (health checks), then a client with a request.
    let dir = TestDir::new(false);
    let server = start_server(&dir, 1, 0.0, &[]);
    let checks: Vec<String> = (0..3)
        .map(|_| {
            let check = std::net::TcpStream::connect(server.addr).unwrap();
            check.local_addr().unwrap().to_string()
        })
        .collect();
    let mut client = Wire::connect(server.addr);
    let peer = client.writer.local_addr().unwrap().to_string();
    assert!(client.request("SELECT 1 AS n").is_ok());
    drop(client);
    // The server handles connections in order of arrival, each on its thread: once the
    // client's close is logged, the checks' closes have been seen too (or soon are).
    wait_until(START_TIMEOUT, || {
        server.log_text().contains(&format!("connection with {peer} closed"))
    });
    let log = server.log_text();
    assert!(log.contains(&format!("Connected with {peer}")), "{log}");
    for check in checks {
        assert!(!log.contains(&check), "a health check was logged: {log}");
    }
}

//! Ctrl-C answers every client that got in: those waiting in the listen backlog too.

mod support;

use std::fs;
use std::net::TcpListener;
use std::time::Duration;

use support::hostile::balancer_before_it_accepts;
use support::*;

#[test]
fn ctrl_c_during_start_up_answers_the_clients_that_got_in() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    wait_until(START_TIMEOUT, || {
        let text = fs::read_to_string(dir.servers_file()).unwrap_or_default();
        serde_json::from_str::<Vec<serde_json::Value>>(&text).is_ok_and(|list| !list.is_empty())
    });
    // A second listed server that nobody runs keeps the balancer in its start-up wait (3 s),
    // its port bound and nothing accepted.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut servers: Vec<serde_json::Value> =
        serde_json::from_str(&fs::read_to_string(dir.servers_file()).unwrap()).unwrap();
    servers.push(
        serde_json::json!({"id": 2, "host": "127.0.0.1", "port": dead, "processing_time": 0.1}),
    );
    fs::write(dir.servers_file(), serde_json::to_string(&servers).unwrap()).unwrap();

    let mut lb = balancer_before_it_accepts(&dir, &[]);
    // Five well-behaved clients connect and send a request; all wait in the backlog.
    let mut clients: Vec<Wire> = (0..5)
        .map(|i| {
            let mut wire = Wire::connect(lb.addr);
            wire.send_raw(format!("SELECT {i} AS n\n").as_bytes());
            wire
        })
        .collect();
    signal(lb.pid(), "INT");
    for (i, wire) in clients.iter_mut().enumerate() {
        let reply = wire
            .try_read_reply()
            .unwrap_or_else(|e| panic!("client {i}: {e}; log:\n{}", lb.log_text()));
        assert_eq!(reply.text(), format!("n: {i}\n"), "client {i}: {reply:?}");
        wire.expect_closed();
    }
    assert_eq!(lb.interrupt(Duration::from_secs(60)), Some(0), "{}", lb.log_text());
}

#[test]
fn ctrl_c_lets_a_connected_client_that_asks_during_the_grace_period_have_its_reply() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let mut lb = start_balancer(&dir, 1, &["--grace", "60"]);
    let mut idle = Wire::connect(lb.addr);
    assert!(idle.request("SELECT 1 AS n").is_ok());
    signal(lb.pid(), "INT");
    wait_until(START_TIMEOUT, || lb.log_text().contains("Shutting down"));
    // Connected before Ctrl-C, silent until after it: still answered, then let go.
    let reply = idle
        .try_request("SELECT 2 AS n")
        .unwrap_or_else(|e| panic!("{e}; log:\n{}", lb.log_text()));
    assert_eq!(reply.text(), "n: 2\n", "{reply:?}");
    idle.expect_closed();
    // Its last client gone, the balancer exits without waiting out the grace period.
    let started = std::time::Instant::now();
    assert_eq!(lb.interrupt(Duration::from_secs(60)), Some(0), "{}", lb.log_text());
    assert!(started.elapsed() < Duration::from_secs(30));
}

//! Running out of file descriptors is planned for: the balancer fits `--max-clients` to its
//! descriptor limit, and a client it cannot take gets `ERR busy` or a prompt close, never a
//! hang; it recovers by itself, admin listener included.

mod support;

use std::time::Duration;

use support::hostile::{self, crowd, starved_balancer, try_http, Outcome};
use support::*;

#[test]
fn a_balancer_short_of_descriptors_answers_every_client_and_recovers() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    // 128 descriptors, soft and hard: the default --max-clients 10000 cannot fit.
    let lb = starved_balancer(&dir, 128, 1, &[]);
    let bystander = Bystander::start(lb.addr);

    let (outcomes, streams) = crowd(lb.addr, 300, "SELECT 1 AS one", Duration::from_secs(10));
    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let ok = count(&|o| matches!(o, Outcome::Reply(h) if h.starts_with("OK ")));
    let busy = count(&|o| matches!(o, Outcome::Reply(h) if h.starts_with("ERR busy ")));
    let closed = count(&|o| *o == Outcome::Closed);
    let summary = format!("{ok} OK, {busy} ERR busy, {closed} closed of 300");
    eprintln!("{summary}");
    // Never a hang; and here not even a close without a word: each is served or told why not.
    assert_eq!(ok + busy, 300, "{summary}; {outcomes:?}");
    assert!(ok >= 1, "{summary}");
    drop(streams);

    // It recovers by itself: new clients are served, and the admin listener still answers.
    wait_until(Duration::from_secs(30), || {
        Wire::connect(lb.addr).try_request("SELECT 2 AS two").is_ok_and(|r| r.text() == "two: 2\n")
    });
    let status = try_http(lb.admin(), "GET", "/status", None, "", Duration::from_secs(10));
    assert_eq!(status.as_ref().map(|s| s.0).ok(), Some(200), "{status:?}");
    bystander.finish();
    // And it said why it serves fewer clients than asked.
    assert!(lb.log_text().contains("--max-clients lowered from 10000 to 32"), "{}", lb.log_text());
}

#[test]
fn when_descriptors_run_out_anyway_clients_are_told_busy_and_the_admin_listener_survives() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    // So few descriptors that stalled admin peers take the last of them, for 3 s each.
    let lb = starved_balancer(&dir, 40, 1, &["--request-timeout", "3"]);
    let bystander = Bystander::start(lb.addr);
    let admin = lb.admin();
    let peers: Vec<hostile::StalledHttp> =
        (0..32).map(|_| hostile::StalledHttp::open(admin, "GET /status HTTP/1.1\r\n")).collect();
    // Every descriptor is taken: the admin listener could not accept them all.
    wait_until(Duration::from_secs(30), || lb.log_text().contains("Too many open files"));

    // Each is told, through a descriptor that frees up, or through the spare one the accept
    // loop keeps for this. None hangs.
    let (outcomes, streams) = crowd(lb.addr, 20, "SELECT 1 AS one", Duration::from_secs(10));
    let busy = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Reply(h) if h.starts_with("ERR busy ")))
        .count();
    assert_eq!(busy, 20, "{outcomes:?}\n{}", lb.log_text());
    drop(streams);
    drop(peers);

    // Descriptors free again: the admin listener answers, and once the bystander (the one
    // client that fits) leaves, a new client is served.
    wait_until(Duration::from_secs(30), || {
        try_http(admin, "GET", "/status", None, "", Duration::from_secs(10))
            .is_ok_and(|s| s.0 == 200)
    });
    bystander.finish();
    wait_until(Duration::from_secs(30), || {
        Wire::connect(lb.addr).try_request("SELECT 2 AS two").is_ok_and(|r| r.text() == "two: 2\n")
    });
}

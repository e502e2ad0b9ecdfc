//! Servers with several workers (`server --workers N`): the balancer keeps a connection per
//! worker and hands out free workers, most powerful server first.

mod support;

use std::time::{Duration, Instant};

use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

fn status(lb: &Proc) -> serde_json::Value {
    let (code, body) = http(lb.admin(), "GET", "/status", None, "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Server `id`'s row in `/status`.
fn server_status(lb: &Proc, id: u32) -> serde_json::Value {
    let s = status(lb);
    let servers = s["servers"].as_array().unwrap();
    servers.iter().find(|r| r["id"] == id).cloned().unwrap()
}

#[test]
fn a_server_with_three_workers_answers_three_slow_requests_in_about_one_processing_time() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 1.0, &["--workers", "3"]);
    let lb = start_balancer(&dir, 1, &[]);
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let addr = lb.addr;
            std::thread::spawn(move || Wire::connect(addr).request(&format!("SELECT {i} AS n")))
        })
        .collect();
    // All three are in the server's hands at once: "3 of 3 busy".
    wait_until(PATIENCE, || server_status(&lb, 1)["in_flight"] == 3);
    let row = server_status(&lb, 1);
    assert_eq!(row["workers"], 3, "{row}");
    let (code, metrics) = http(lb.admin(), "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    for line in ["minilb_server_in_flight{server=\"1\"} 3", "minilb_server_workers{server=\"1\"} 3"]
    {
        assert!(metrics.lines().any(|l| l == line), "{line} not in {metrics}");
    }
    for (i, c) in clients.into_iter().enumerate() {
        let reply = c.join().unwrap();
        assert_eq!((reply.server(), reply.text()), (Some(1), format!("n: {i}\n")));
    }
    let took = started.elapsed();
    println!("three 1 s requests on a 3-worker server took {took:?}");
    // One after the other they would take 3 s.
    assert!(took < Duration::from_millis(1900), "took {took:?}");
    // A reply reaches its client just before its session gives the worker back.
    wait_until(PATIENCE, || server_status(&lb, 1)["in_flight"] == 0);
    // The first request found all three workers free, and the dashboard says so.
    let decisions = status(&lb)["decisions"].to_string();
    assert!(decisions.contains("by power, 2 workers free too"), "{decisions}");
}

#[test]
fn servers_with_one_and_four_workers_are_balanced_by_power() {
    let dir = TestDir::new(false);
    let _fast = start_server(&dir, 1, 0.05, &["--workers", "4"]);
    let _slow = start_server(&dir, 2, 0.2, &[]);
    let lb = start_balancer(&dir, 2, &[]);
    // Four clients never need more than the fast server's four workers.
    let load = Load::start(lb.addr, 4);
    wait_until(PATIENCE, || load.answered() >= 80);
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let slow = server_status(&lb, 2)["requests"].as_u64().unwrap();
    assert_eq!(slow, 0, "the slow server was used while the fast one had a free worker");

    // Six clients: the fast server's workers are all busy now and then; the slow one helps.
    let load = Load::start(lb.addr, 6);
    wait_until(PATIENCE, || load.answered_by(2) >= 3 && load.answered() >= 150);
    let (fast, slow) = (load.answered_by(1), load.answered_by(2));
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!("six clients: fast 4-worker server {fast}, slow 1-worker server {slow}");
    // Capacity is 80 requests/s against 5: the fast server takes by far the most.
    assert!(fast > 5 * slow, "fast {fast}, slow {slow}");
}

#[test]
fn killing_a_server_with_workers_in_flight_loses_nothing_that_could_be_retried() {
    let dir = TestDir::new(false);
    let mut s1 = start_server(&dir, 1, 0.02, &["--workers", "4"]);
    let _s2 = start_server(&dir, 2, 0.02, &["--workers", "4"]);
    let lb = start_balancer(&dir, 2, &[]);
    let bystander = Bystander::start(lb.addr);
    let load = Load::start(lb.addr, 10);
    wait_until(PATIENCE, || load.answered_by(1) >= 50);
    // Kill it while its workers are busy.
    wait_until(PATIENCE, || server_status(&lb, 1)["in_flight"].as_u64() >= Some(2));
    signal(s1.pid(), "KILL");
    let _ = s1.child.wait();
    let before = load.answered();
    wait_until(PATIENCE, || load.answered() >= before + 200);
    wait_until(PATIENCE, || server_status(&lb, 1)["state"] == "down");

    // Back with all its workers (same id, a new port).
    let served = load.answered_by(1);
    let _s1 = start_server(&dir, 1, 0.02, &["--workers", "4"]);
    wait_until(PATIENCE, || load.answered_by(1) > served + 20);
    let report = load.stop();
    bystander.finish();
    println!(
        "SIGKILL with workers in flight: {} correct replies, {} failed",
        report.ok,
        report.failures.len()
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(server_status(&lb, 1)["workers"], 4);
}

#[test]
fn a_server_refuses_zero_workers_or_more_than_64() {
    let dir = TestDir::new(false);
    for bad in ["0", "65"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["1", "0", "0", "--workers", bad])
            .current_dir(&dir.path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--workers {bad}: {stderr}");
        assert!(stderr.contains("1..=64"), "--workers {bad}: {stderr}");
    }
}

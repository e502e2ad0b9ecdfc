//! What a request costs the balancer in system calls: on a persistent connection, counted by
//! `strace` (skipped, saying so, where it is missing or cannot attach): no timeout set again,
//! one peek, no descriptor duplicated per request; with a new connection per request, no new
//! thread each time.

mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Requests counted.
const REQUESTS: u64 = 200;

/// Whether every thread of `pid` is traced.
fn traced(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        fs::read_to_string(t.path().join("status"))
            .is_ok_and(|s| s.lines().any(|l| l.starts_with("TracerPid:") && l != "TracerPid:\t0"))
    })
}

#[test]
fn a_request_costs_the_balancer_no_setsockopt_no_dup_and_one_peek() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    let mut wire = Wire::connect(lb.addr);
    // The first request sets the connection's timeouts up.
    assert!(wire.request("SELECT 1 AS n").is_ok());
    let out = dir.path.join("strace.txt");
    let spawned = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=setsockopt,recvfrom,fcntl,dup", "-o"])
        .arg(&out)
        .args(["-p", &lb.pid().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut strace) = spawned else {
        return eprintln!("skipped: strace is not installed");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced(lb.pid()) && Instant::now() < deadline && strace.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !traced(lb.pid()) {
        let _ = strace.kill();
        let _ = strace.wait();
        return eprintln!("skipped: strace cannot attach to the balancer here");
    }
    for n in 0..REQUESTS {
        let reply = wire.request(&format!("SELECT {n} AS n"));
        assert_eq!(reply.text(), format!("n: {n}\n"));
    }
    signal(strace.id(), "INT");
    wait_until(START_TIMEOUT, || strace.try_wait().unwrap().is_some());
    // Summary lines: `% time  seconds  usecs/call  calls  [errors]  syscall`.
    let summary = fs::read_to_string(&out).unwrap();
    let calls: HashMap<&str, u64> = (summary.lines())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((*f.last()?, f.get(3)?.parse().ok()?))
        })
        .collect();
    let per = |name: &str| calls.get(name).copied().unwrap_or(0);
    // Other threads (health checks, the servers file's watcher) make a few in the meantime.
    assert!(per("setsockopt") < REQUESTS / 10, "{summary}");
    assert!(per("fcntl") + per("dup") < REQUESTS / 10, "{summary}");
    // Reading the request, the peek before sending it, reading the reply.
    assert!(per("recvfrom") < 3 * REQUESTS + REQUESTS / 10, "{summary}");
}

/// The ids of `pid`'s threads.
fn thread_ids(pid: u32) -> HashSet<String> {
    (fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten())
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_new_connection_per_request_reuses_the_client_threads() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    let bystander = Bystander::start(lb.addr);
    let left = || lb.log_text().matches(" disconnected").count();
    // One client first: its thread then waits for the next.
    assert!(Wire::connect(lb.addr).request("SELECT 1").is_ok());
    wait_until(START_TIMEOUT, || left() == 1);
    let before = thread_ids(lb.pid());
    // Seen while each client is connected, so that a thread started for it is still there.
    let mut seen = HashSet::new();
    for n in 2..=21 {
        let mut wire = Wire::connect(lb.addr);
        let reply = wire.request(&format!("SELECT {n} AS n"));
        assert_eq!(reply.text(), format!("n: {n}\n"));
        seen.extend(thread_ids(lb.pid()));
        drop(wire);
        wait_until(START_TIMEOUT, || left() == n);
    }
    let started = seen.difference(&before).count();
    assert!(started <= 2, "{started} threads started for 20 clients one after another");
    bystander.finish();
}

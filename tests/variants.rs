//! Variants of the trust cases (issue 9) that its own tests do not try: the same faults,
//! reached another way; where clients are served, a bystander must get every reply right.

mod support;

use std::time::Duration;

use support::fake_server::{answer, Act, FakeServer};
use support::hostile::{crowd, starved_balancer, Outcome, StalledHttp};
use support::*;

/// Descriptors process `pid` has open now (Linux).
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// 40 descriptors fit one client (`--max-clients` is lowered to 1).
const NOFILE: usize = 40;

/// A balancer limited to [`NOFILE`] descriptors, with stalled admin peers (one descriptor
/// each, dropped after the 20 s request timeout: long enough for a test) holding all but one.
fn balancer_with_one_descriptor_left(dir: &TestDir) -> (Proc, Vec<StalledHttp>) {
    let lb = starved_balancer(dir, NOFILE as u32, 1, &["--request-timeout", "20"]);
    let mut peers = Vec::new();
    while open_descriptors(lb.pid()) < NOFILE - 1 {
        let before = open_descriptors(lb.pid());
        peers.push(StalledHttp::open(lb.admin(), "GET /status HTTP/1.1\r\n"));
        wait_until(Duration::from_secs(10), || open_descriptors(lb.pid()) > before);
    }
    assert_eq!(open_descriptors(lb.pid()), NOFILE - 1);
    (lb, peers)
}

/// Drops the stalled peers and waits until the balancer has closed their connections.
fn free_descriptors(lb: &Proc, peers: Vec<StalledHttp>) {
    drop(peers);
    wait_until(Duration::from_secs(30), || open_descriptors(lb.pid()) < NOFILE - 20);
}

#[test]
fn a_client_admitted_with_the_last_descriptor_is_told_busy() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let (lb, peers) = balancer_with_one_descriptor_left(&dir);
    // It is accepted with the last descriptor, and its session has none for a second handle.
    let (outcomes, streams) = crowd(lb.addr, 1, "SELECT 1 AS one", Duration::from_secs(10));
    assert!(
        matches!(&outcomes[0], Outcome::Reply(h) if h.starts_with("ERR busy ")),
        "{outcomes:?}\n{}",
        lb.log_text()
    );
    drop(streams);
    free_descriptors(&lb, peers);
    // The one client that fits, once descriptors are free again.
    let bystander = Bystander::start(lb.addr);
    wait_until(Duration::from_secs(30), || lb.log_text().matches("reply sent").count() >= 5);
    bystander.finish();
}

#[test]
fn the_first_client_after_descriptors_ran_out_is_served_once_they_are_free() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let (lb, peers) = balancer_with_one_descriptor_left(&dir);
    // Takes the last descriptor: the accept loop now finds the table full.
    let (_, streams) = crowd(lb.addr, 1, "SELECT 1 AS one", Duration::from_secs(10));
    drop(streams);
    free_descriptors(&lb, peers);
    // Plenty of descriptors now: the next client, a bystander, must be served, not told busy.
    let bystander = Bystander::start(lb.addr);
    wait_until(Duration::from_secs(30), || lb.log_text().matches("reply sent").count() >= 5);
    bystander.finish();
    assert!(!lb.log_text().contains("turned a client away"), "{}", lb.log_text());
}

/// A balancer whose only server is `fake` (its servers file is `fake-servers.json`).
fn balancer_of(dir: &TestDir, fake: &FakeServer, extra: &[&str]) -> Proc {
    fake.register(&dir.path.join("fake-servers.json"));
    start_named_balancer(dir, "variants", "fake-servers.json", 1, extra)
}

#[test]
#[ignore = "fault not fixed: the protocol has no request id, so an extra reply that comes a moment late cannot be told from the next one"]
fn an_extra_reply_that_comes_a_moment_late_reaches_no_one() {
    // Reply 3 is sent twice, the second time a byte every 2 ms: it is not there yet when the
    // balancer looks after reply 3, and arrives while request 4 waits for its reply.
    let fake = FakeServer::start(9, |line| {
        if line == "SELECT 3 AS n" {
            let mut twice = answer(9, line);
            let at_once = twice.len();
            twice.extend(answer(9, line));
            Act::Trickle { bytes: twice, at_once, gap: Duration::from_millis(2) }
        } else {
            Act::Answer
        }
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &[]);
    let mut wire = Wire::connect(lb.addr);
    for i in 0..8 {
        let reply = wire.request(&format!("SELECT {i} AS n"));
        assert_eq!(reply.text(), format!("n: {i}\n"), "request {i}: {reply:?}");
    }
}

#[test]
fn a_write_that_changes_no_row_does_not_report_the_previous_clients_changes() {
    let dir = TestDir::new(true);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    let bystander = Bystander::start(lb.addr);
    let mut first = Wire::connect(lb.addr);
    let reply = first.request(
        "INSERT INTO COLORS (Name, HEX, RGB) VALUES ('a', '#000001', 'rgb(0,0,1)'), ('b', '#000002', 'rgb(0,0,2)')",
    );
    assert!(reply.header.contains(" changes=2"), "{reply:?}");
    // Another client's schema change writes no row: `changes` must not be the first client's
    // count (the authorizer refuses `changes()` for that very reason).
    let mut second = Wire::connect(lb.addr);
    for sql in ["CREATE TABLE mine (a)", "DROP TABLE mine"] {
        let reply = second.request(sql);
        assert!(reply.header.contains(" changes=0"), "{sql}: {reply:?}");
    }
    // Three replies of ours, and at least three of the bystander's.
    wait_until(START_TIMEOUT, || lb.log_text().matches("reply sent").count() >= 6);
    bystander.finish();
}

#[test]
fn a_server_timeout_of_zero_is_refused_at_start() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    for zero in ["0", "1e-10"] {
        // A zero read timeout cannot be set on a socket: every server would be unreachable,
        // for ever, with "cannot set a 0 duration timeout".
        let mut lb = std::process::Command::new(env!("CARGO_BIN_EXE_loadbalancer"))
            .args(["--port", "0", "--admin-port", "0"])
            .args(["--servers-file", "servers.json", "--server-timeout", zero])
            .current_dir(&dir.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Polled with a deadline; a balancer that keeps running is killed, and fails the test.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = lb.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = lb.kill();
                let _ = lb.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(lb.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{zero}: {err}");
        assert!(err.contains("must be more than 0 seconds"), "{zero}: {err}");
    }
}

#[test]
fn a_bench_that_would_send_nothing_is_refused() {
    let dir = TestDir::new(false);
    // Nothing listens there: a bench that sent nothing would not notice, and report success.
    let nobody =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    for (flag, why) in
        [("--duration", "must be more than 0 seconds"), ("--requests", "0 is not in 1..")]
    {
        let (code, out, err) = run_client(&dir.path, &["bench", "--lb", &nobody, flag, "0"], "");
        assert_eq!(code, 2, "{flag} 0: {out}{err}");
        assert!(err.contains(why), "{flag} 0: {err}");
    }
}

#[test]
fn a_server_being_reprobed_shows_no_request_in_progress() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Server 9 sends a stray reply after its reply to `SELECT 1001 AS n`, then answers the
    // re-probe slowly: meanwhile it is busy with no request of any client.
    let strayed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&strayed);
    let fake = FakeServer::start(9, move |line| match line {
        "SELECT 1001 AS n" => {
            flag.store(true, Ordering::SeqCst);
            Act::Send([answer(9, line), answer(9, "SELECT 1 AS n")].concat())
        }
        "SELECT 1" if flag.load(Ordering::SeqCst) => {
            Act::Trickle { bytes: answer(9, line), at_once: 0, gap: Duration::from_millis(150) }
        }
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &[]);
    let reply = Wire::connect(lb.addr).request("SELECT 1001 AS n");
    assert_eq!(reply.text(), "n: 1001\n");
    assert!(strayed.load(Ordering::SeqCst));
    let server = || {
        let (code, body) = http(lb.admin(), "GET", "/status", None, "");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["servers"][0].clone()
    };
    // Request 1001 has ended (it is on the timeline): no bar in progress may claim it.
    // The session still holds the server a moment after the reply is out, with the request
    // as its current one; then the re-probe holds it (over a second), with none.
    let mut during = server();
    wait_until(START_TIMEOUT, || {
        during = server();
        during["in_flight"] == 1 && during["current"].is_null()
    });
    assert_eq!(during["state"], "up", "{during}");
    wait_until(START_TIMEOUT, || lb.log_text().contains("answered the re-probe"));
    let bystander = Bystander::start(lb.addr);
    fake.wait_for_answers(3);
    bystander.finish();
    let after = server();
    assert_eq!(after["stray"], 1, "{after}");
}

#[test]
fn a_decision_on_the_dashboard_quotes_the_figures_it_was_made_on() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &["--policy", "least-connections"]);
    let bystander = Bystander::start(lb.addr);
    wait_until(START_TIMEOUT, || lb.log_text().matches("reply sent").count() >= 3);
    bystander.finish();
    let (code, body) = http(lb.admin(), "GET", "/status", None, "");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let texts: Vec<&str> = status["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["text"].as_str().unwrap())
        .collect();
    // Request n found the server with n - 1 served, whatever it has served since.
    assert!(texts.len() >= 3, "{texts:?}");
    for (n, text) in texts.iter().enumerate() {
        let expected = format!(
            "req {} -> server 1: server 1 fewest in flight (0), then fewest requests served ({n})",
            n + 1
        );
        assert!(text.starts_with(&expected), "{text:?}, not {expected:?}\n{texts:#?}");
    }
}

//! The rough edges a new user hit in the classroom (issue 12): log lines, start-up messages,
//! exit codes and help texts that must say what happened and what to do.

mod support;

use std::time::Duration;

use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

fn status(lb: &Proc) -> serde_json::Value {
    let (code, body) = http(lb.admin(), "GET", "/status", None, "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn a_draining_server_is_logged_once_when_it_starts_and_once_when_it_has_left() {
    let dir = TestDir::new(false);
    // A request of 3 s, so that it is still in flight when the balancer notices the change
    // (two looks at the file, 200 ms apart), on a busy machine too.
    let _s2 = start_server(&dir, 2, 3.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    let addr = lb.addr;
    let in_flight = std::thread::spawn(move || Wire::connect(addr).request("SELECT 1 AS n"));
    // The timeline's bar in progress: which request, since when. Set when the server is
    // chosen, a moment after it is counted busy.
    wait_until(PATIENCE, || status(&lb)["servers"][0]["current"]["request"] == 1);
    let s = status(&lb);
    let current = &s["servers"][0]["current"];
    assert_eq!(current["request"], 1, "{s}");
    let taken = current["taken"].as_f64().unwrap();
    assert!(taken > 0.0 && taken <= s["uptime_seconds"].as_f64().unwrap(), "{s}");
    // The server leaves the list while its request is in flight.
    std::fs::write(dir.servers_file(), "[]\n").unwrap();
    wait_until(PATIENCE, || lb.log_text().contains("server 2 removed"));
    let reply = in_flight.join().unwrap();
    assert!(reply.is_ok() && reply.server() == Some(2), "{reply:?}");
    // A few more looks at the list must not repeat anything.
    std::thread::sleep(Duration::from_millis(600));
    let log = lb.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("server 2 ")).collect();
    let count = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count("draining"), 1, "{lines:#?}");
    assert_eq!(count("removed"), 1, "{lines:#?}");
    let draining = lines.iter().position(|l| l.contains("draining")).unwrap();
    let removed = lines.iter().position(|l| l.contains("removed")).unwrap();
    assert!(draining < removed, "{lines:#?}");
}

#[test]
fn a_balancer_started_from_the_wrong_folder_says_so() {
    let dir = TestDir::new(false);
    let bin = env!("CARGO_BIN_EXE_loadbalancer");
    // Bounded: a balancer that does not notice would run forever (it is killed, code None).
    let run = |args: &[&str]| {
        let log = dir.path.join("refused.log");
        let mut child = std::process::Command::new(bin)
            .args(["--port", "0", "--admin-port", "0"])
            .args(args)
            .current_dir(&dir.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, std::fs::read_to_string(&log).unwrap())
    };
    // The default, data/servers.json, from a folder without data/.
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("data/servers.json")
            && stderr.contains("run from the project folder, or pass --servers-file"),
        "{stderr}"
    );
    let (code, stderr) = run(&["--servers-file", "/nonexistent/servers.json"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("run from the project folder"), "{stderr}");

    // A missing file in a folder that exists: servers that start create it, so it runs.
    let lb = spawn(
        bin,
        &["--port", "0", "--admin-port", "0", "--servers-file", "new.json"].map(String::from),
        dir.path.join("lb.log"),
        &dir.path,
        2,
    );
    wait_until(PATIENCE, || lb.log_text().contains("new.json does not exist"));
    assert!(lb.log_text().contains("run from the project folder, or pass --servers-file"));
}

#[test]
fn client_bench_says_what_is_wrong_and_exits_2_when_it_could_not_run() {
    let dir = TestDir::new(false);
    // No balancer: nothing was measured, so no report of zeros, and the "could not run" code.
    for json in [false, true] {
        let mut args = vec!["bench", "--lb", "127.0.0.1:1", "--clients", "3", "--requests", "3"];
        if json {
            args.push("--json");
        }
        let (code, out, err) = run_client(&dir.path, &args, "");
        assert_eq!(code, 2, "{out}{err}");
        assert_eq!(out, "", "no report: {out}");
        assert!(
            err.contains("cannot reach the load balancer at 127.0.0.1:1")
                && err.contains("is it running?"),
            "{err}"
        );
    }
    // With no arguments it names both ways to say how long to run.
    let (code, _, err) = run_client(&dir.path, &["bench"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--requests") && err.contains("--duration"), "{err}");
    // One default shown for --mix.
    let (_, help, _) = run_client(&dir.path, &["bench", "--help"], "");
    let mix = help.lines().find(|l| l.contains("--mix")).unwrap();
    assert_eq!(mix.matches("default").count(), 1, "{mix}");
}

#[test]
fn a_typo_in_lb_is_named_as_a_typo() {
    let dir = TestDir::new(false);
    let (code, out, err) = run_client(&dir.path, &["1", "--lb", "nonsense", "SELECT 1"], "");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--lb nonsense: not a host:port address"), "{err}");
    assert!(!err.contains("is it running"), "{err}");
    // A balancer that is down is still called that.
    let (code, _, err) = run_client(&dir.path, &["1", "--lb", "127.0.0.1:1", "SELECT 1"], "");
    assert_eq!(code, 2);
    assert!(err.contains("is it running?"), "{err}");
}

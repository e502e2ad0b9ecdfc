//! `client bench` end to end: the real load generator against a real balancer and servers,
//! on ports the OS picks, with its `--json` report checked field by field.

mod support;

use serde_json::Value;
use support::*;

/// Runs `client bench --json` with `args` and returns its exit code and report.
fn bench(dir: &TestDir, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_client(&dir.path, &all, "");
    let report = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}\nstderr: {err}"));
    (code, report)
}

#[test]
fn bench_reports_counts_latencies_and_servers_as_json() {
    let dir = TestDir::new(false);
    let _servers = [start_server(&dir, 1, 0.0, &[]), start_server(&dir, 2, 0.0, &[])];
    let lb = start_balancer(&dir, 2, &[]);
    let lb_addr = lb.addr.to_string();
    let (code, r) =
        bench(&dir, &["--lb", &lb_addr, "--clients", "4", "--requests", "202", "--mix", "3:1"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["clients"], 4);
    assert_eq!(r["connection"], "persistent");
    assert_eq!(r["requests"], 202);
    assert_eq!(r["ok"], 202);
    assert_eq!(r["error_count"], 0);
    assert_eq!(r["errors"], serde_json::json!({}));
    // An even share per client: 51, 51, 50, 50.
    let per_client: Vec<u64> =
        r["per_client"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    assert_eq!(per_client, vec![51, 51, 50, 50]);
    assert!(r["fairness"].as_f64().unwrap() > 0.99, "{r}");
    // Every reply is counted under the server that sent it, and only ours answered.
    let servers = r["servers"].as_object().unwrap();
    let answered: u64 = servers.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(answered, 202);
    assert!(servers.keys().all(|k| k == "1" || k == "2"), "{r}");
    // A quarter of the requests downloaded hello.txt, so bytes cover at least those.
    let hello = TestDir::data_file("hello.txt").len() as u64;
    assert!(r["bytes"].as_u64().unwrap() >= 50 * hello, "{r}");
    let lat = &r["latency_ms"];
    let (p50, p90, p99, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p90"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max, "{lat}");
    assert!(r["requests_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["elapsed_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_counts_errors_by_code_and_opens_a_connection_per_request() {
    let dir = TestDir::new(false);
    let server = start_server(&dir, 7, 0.0, &[]);
    let (code, r) = bench(
        &dir,
        &[
            "--lb",
            &server.addr.to_string(),
            "--clients",
            "3",
            "--requests",
            "30",
            "--new-connection",
            "--connect-first",
            "--request",
            "file nope.txt",
        ],
    );
    assert_eq!(code, 1, "some requests failed: {r}");
    assert_eq!(r["connection"], "per-request");
    assert_eq!(r["ok"], 0);
    assert_eq!(r["errors"]["not_found"], 30, "{r}");
    assert_eq!(r["fairness"], 0.0);

    // Nothing listening: see tests/classroom.rs (`client bench` could not run: exit 2).
}

#[test]
fn bench_duration_mode_and_the_text_report() {
    let dir = TestDir::new(false);
    let server = start_server(&dir, 3, 0.0, &[]);
    let addr = server.addr.to_string();
    let (code, out, err) =
        run_client(&dir.path, &["bench", "--lb", &addr, "--clients", "2", "--duration", "0.3"], "");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("2 clients, persistent connections"), "{out}");
    // The run lasts the asked 0.3 s: not cut short, and stopped soon after.
    let (code, r) = bench(&dir, &["--lb", &addr, "--clients", "2", "--duration", "0.3"]);
    assert_eq!(code, 0, "{r}");
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((0.3..2.0).contains(&elapsed), "elapsed {elapsed} s: {r}");
    assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["requests"], r["ok"], "{r}");
    assert!(out.contains("requests/s"), "{out}");
    assert!(out.contains("p99"), "{out}");
    assert!(out.contains("errors     none"), "{out}");
    assert!(out.contains("server   3 █"), "{out}");
    // Not a terminal: no progress line mixed into the output.
    assert!(!err.contains('\r'), "{err}");
}

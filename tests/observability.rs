//! What you can watch: `/status`, `/metrics`, the dashboard page and the explained decisions,
//! read from a real balancer under load.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

fn status(lb: &Proc) -> serde_json::Value {
    let (code, body) = http(lb.admin(), "GET", "/status", None, "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Parses the Prometheus text format: `name{labels} value` lines, with `# HELP`/`# TYPE`
/// before each family. Returns samples by `name{labels}`, and the declared types.
fn parse_metrics(text: &str) -> (HashMap<String, f64>, HashMap<String, String>) {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if line.starts_with("# HELP ") {
            continue;
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let family = key.split('{').next().unwrap();
            let base = family
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                types.contains_key(family) || types.contains_key(base),
                "{family} has no # TYPE line"
            );
            assert!(samples.insert(key.to_string(), value).is_none(), "duplicate {key}");
        }
    }
    (samples, types)
}

#[test]
fn status_and_metrics_follow_the_load() {
    let dir = TestDir::new(false);
    let _s1 = start_server(&dir, 1, 0.005, &[]);
    let _s2 = start_server(&dir, 2, 0.02, &[]);
    let lb = start_balancer(&dir, 2, &[]);
    let load = Load::start(lb.addr, 4);
    wait_until(PATIENCE, || load.answered() >= 100);

    let s = status(&lb);
    assert_eq!(s["policy"], "power");
    assert!(s["clients"].as_u64().unwrap() >= 4, "{s}");
    assert!(s["uptime_seconds"].as_f64().unwrap() > 0.0);
    // Four clients, two servers: at most two requests wait, and none for long.
    assert!(s["queue"]["length"].as_u64().unwrap() <= 2, "{s}");
    let wait = s["queue"]["longest_wait_seconds"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&wait), "{s}");
    let servers = s["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    for (server, declared) in servers.iter().zip([0.005, 0.02]) {
        assert_eq!(server["state"], "up", "{server}");
        assert_eq!(server["processing_time"].as_f64().unwrap(), declared);
        assert!(server["requests"].as_u64().unwrap() > 0, "{server}");
        assert!(server["bytes"].as_u64().unwrap() > 0, "{server}");
        assert!(server["measured_time"].as_f64().unwrap() >= declared * 0.9, "{server}");
        // The latency a client saw includes the server's own time.
        let latency = server["latency"].as_f64().unwrap();
        assert!(latency >= declared * 0.9 && latency < 1.0, "{server}");
    }
    let decisions = s["decisions"].as_array().unwrap();
    assert!(!decisions.is_empty());
    let text = decisions.last().unwrap()["text"].as_str().unwrap();
    assert!(text.starts_with("req ") && text.contains(" -> server "), "{text}");
    assert!(text.contains("by power"), "{text}");

    // Counters keep rising under load.
    let (code, text) = http(lb.admin(), "GET", "/metrics", None, "");
    assert_eq!(code, 200);
    let served = parse_metrics(&text).0["minilb_server_requests_total{server=\"1\"}"];
    assert!(served > 0.0);
    wait_until(PATIENCE, || {
        let (_, text) = http(lb.admin(), "GET", "/metrics", None, "");
        parse_metrics(&text).0["minilb_server_requests_total{server=\"1\"}"] > served
    });
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // At rest (the last reply recorded), the counts agree: a reply is counted, then timed.
    let mut text = String::new();
    wait_until(PATIENCE, || {
        text = http(lb.admin(), "GET", "/metrics", None, "").1;
        let samples = parse_metrics(&text).0;
        samples["minilb_replies_total"] == samples["minilb_request_duration_seconds_count"]
    });
    let (samples, types) = parse_metrics(&text);
    assert_eq!(types["minilb_server_requests_total"], "counter");
    assert_eq!(types["minilb_request_duration_seconds"], "histogram");
    assert_eq!(samples["minilb_server_up{server=\"1\"}"], 1.0);
    assert_eq!(samples["minilb_server_declared_seconds{server=\"2\"}"], 0.02);
    let count = samples["minilb_request_duration_seconds_count"];
    assert!(count > 0.0);
    assert_eq!(samples["minilb_request_duration_seconds_bucket{le=\"+Inf\"}"], count);
    assert!(samples["minilb_request_duration_seconds_sum"] > 0.0);
    // Buckets never decrease.
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("minilb_request_duration_seconds_bucket{le=\"")?;
            Some((le.trim_end_matches("\"}").parse().ok()?, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 2, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count));
}

#[test]
fn a_server_that_left_shows_as_down_and_the_queue_is_visible() {
    let dir = TestDir::new(false);
    let mut s1 = start_server(&dir, 1, 0.5, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    // Three requests at once on a 0.5 s server: two wait in line.
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let addr = lb.addr;
            std::thread::spawn(move || Wire::connect(addr).request(&format!("SELECT {i} AS n")))
        })
        .collect();
    wait_until(PATIENCE, || status(&lb)["queue"]["length"].as_u64() == Some(2));
    // The second in line waits up to two processing times; the status page sees it growing.
    wait_until(PATIENCE, || status(&lb)["queue"]["longest_wait_seconds"].as_f64().unwrap() >= 0.1);
    let s = status(&lb);
    assert!(s["queue"]["longest_wait_seconds"].as_f64().unwrap() < 5.0, "{s}");
    assert_eq!(s["servers"][0]["in_flight"], 1, "{s}");
    for c in clients {
        assert!(c.join().unwrap().is_ok());
    }
    let decisions = status(&lb)["decisions"].clone();
    let queued = decisions
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["text"].as_str().unwrap().contains("queued"))
        .count();
    assert_eq!(queued, 2, "{decisions}");

    signal(s1.pid(), "KILL");
    let _ = s1.child.wait();
    // The next request finds the connection broken: the server is down.
    let reply = Wire::connect(lb.addr).request("SELECT 1");
    assert_eq!(reply.code(), Some("unavailable"), "{}", reply.text());
    wait_until(PATIENCE, || status(&lb)["servers"][0]["state"] == "down");
}

#[test]
fn the_dashboard_page_is_served_whole() {
    let dir = TestDir::new(false);
    let lb = start_balancer(&dir, 0, &[]);
    let (code, page) = http(lb.admin(), "GET", "/", None, "");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..50]);
    assert!(page.contains("fetch(\"/status\""));
    assert!(page.trim_end().ends_with("</html>"));
    // Nothing from another host: the page works on a closed network.
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert_eq!(http(lb.admin(), "GET", "/nope", None, "").0, 404);
}

#[test]
fn a_server_whose_declaration_is_wrong_is_flagged_and_measured_ranks_it_right() {
    let dir = TestDir::new(false);
    // Server 1 claims 5 ms but takes 300; server 2 is honest at 100 ms: long enough that a
    // busy machine's delays (30 ms seen on 20 ms) do not make it look off by half.
    let _liar = start_server(&dir, 1, 0.3, &["--declared-time", "0.005"]);
    let _honest = start_server(&dir, 2, 0.1, &[]);
    let lb = start_balancer(&dir, 2, &["--algorithm", "measured"]);
    let mut wire = Wire::connect(lb.addr);
    // One client, one request at a time: both servers always idle, so only the ranking
    // decides. Unmeasured, the liar looks fastest and is tried first.
    let first = wire.request("SELECT 1 AS one");
    assert_eq!(first.server(), Some(1));
    let mut by_server = HashMap::new();
    for _ in 0..20 {
        *by_server.entry(wire.request("SELECT 1 AS one").server().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(by_server.get(&2), Some(&20), "{by_server:?}");
    let s = status(&lb);
    let liar = &s["servers"][0];
    assert_eq!(liar["id"], 1);
    assert_eq!(liar["processing_time"].as_f64(), Some(0.005));
    assert!(liar["measured_time"].as_f64().unwrap() >= 0.25, "{liar}");
    assert_eq!(liar["declaration_off"], true);
    assert_eq!(s["servers"][1]["declaration_off"], false, "{s}");
}

#[test]
fn the_timeline_shows_each_request_on_its_server_with_its_wait() {
    let dir = TestDir::new(false);
    let _s1 = start_server(&dir, 1, 0.02, &[]);
    let _s2 = start_server(&dir, 2, 0.05, &[]);
    let lb = start_balancer(&dir, 2, &[]);
    let bystander = Bystander::start(lb.addr);
    // Four clients on two servers: some requests must wait in line.
    let load = Load::start(lb.addr, 4);
    wait_until(PATIENCE, || load.answered() >= 40);
    let mut typo = Wire::connect(lb.addr);
    assert_eq!(typo.request("SELEC 1").code(), Some("sql"));

    // The reply reaches the client just before its session records it: wait for the record.
    let mut s = status(&lb);
    wait_until(PATIENCE, || {
        s = status(&lb);
        s["timeline"]["requests"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|r| r["ok"] == false))
    });
    assert_eq!(s["timeline"]["window_seconds"], 60.0);
    let spans = s["timeline"]["requests"].as_array().unwrap().clone();
    assert!(spans.len() >= 40, "{}", spans.len());
    let mut waited = 0;
    for (server, declared) in [(1, 0.02), (2, 0.05)] {
        let mut mine: Vec<_> = spans.iter().filter(|r| r["server"] == server).collect();
        mine.sort_by(|a, b| a["taken"].as_f64().unwrap().total_cmp(&b["taken"].as_f64().unwrap()));
        assert!(!mine.is_empty(), "server {server} has no bar: {spans:?}");
        let mut previous_end = 0.0;
        for r in mine {
            let time = |k: &str| r[k].as_f64().unwrap();
            let (arrived, taken, ended) = (time("arrived"), time("taken"), time("ended"));
            assert!(arrived <= taken && taken <= ended, "{r}");
            assert!(ended - taken >= declared - 0.002, "a bar as long as the work: {r}");
            // One request at a time per server: its bars never overlap.
            assert!(taken >= previous_end - 0.002, "overlapping bars on server {server}: {r}");
            previous_end = ended;
            if taken - arrived > 0.005 {
                waited += 1;
            }
            let client = r["client"].as_str().unwrap();
            assert!(client.starts_with("127.0.0.1:"), "{r}");
            assert!(r["request"].as_u64().unwrap() > 0);
        }
    }
    assert!(waited > 0, "no request waited in line: {spans:?}");
    let failed: Vec<_> = spans.iter().filter(|r| r["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "only the typo's bar shows a failed reply: {failed:?}");

    // The typo is the user's mistake, not the server's.
    let servers = s["servers"].as_array().unwrap();
    let client_errors: u64 = servers.iter().map(|v| v["client_errors"].as_u64().unwrap()).sum();
    let server_errors: u64 = servers.iter().map(|v| v["errors"].as_u64().unwrap()).sum();
    assert_eq!((client_errors, server_errors), (1, 0), "{servers:?}");
    assert_eq!(s["totals"]["client_errors"], 1);
    assert_eq!(s["totals"]["server_errors"], 0);
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    bystander.finish();
}

#[test]
fn the_policy_is_chosen_with_policy_and_still_with_its_old_spelling_algorithm() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &["--policy", "round-robin"]);
    assert_eq!(status(&lb)["policy"], "round-robin");
    assert_eq!(Wire::connect(lb.addr).request("SELECT 1").server(), Some(1));
    // Scripts written for the old name keep working (see also the `measured` test above).
    let old = start_balancer(&dir, 1, &["--algorithm", "least-connections"]);
    assert_eq!(status(&old)["policy"], "least-connections");
}

//! Membership that cannot be abused or confused: a blank servers file, thousands of entries,
//! a second server with a running id, one address spelled two ways and numbers out of range
//! each get a clear refusal or warning, while a well-behaved client running alongside every
//! test gets every one of its replies right.

mod support;

use std::fs;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const PATIENCE: Duration = Duration::from_secs(60);

fn wait_for_log(proc: &Proc, text: &str, count: usize) {
    wait_until(PATIENCE, || proc.log_text().matches(text).count() >= count);
}

/// A servers-file or join entry for server `id` at a loopback address where nothing listens
/// (port 9 of `127.0.2.x`, `127.0.3.x`, ...: one address per entry).
fn dead_entry(id: u32) -> String {
    format!(
        r#"{{"id": {id}, "host": "127.0.{}.{}", "port": 9, "processing_time": 0}}"#,
        2 + id / 250,
        1 + id % 250
    )
}

/// A process killed on drop, for one the test expects to exit by itself.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_blank_servers_file_keeps_the_pool_and_warns_once() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    let good = fs::read_to_string(dir.servers_file()).unwrap();

    // What `>` or an editor leaves mid-save: not "no servers".
    fs::write(dir.servers_file(), " \n\t").unwrap();
    wait_for_log(&lb, "is empty", 1);
    let mut wire = Wire::connect(lb.addr);
    for i in 0..40 {
        let reply = wire.request(&format!("SELECT {i} AS n"));
        assert_eq!(reply.text(), format!("n: {i}\n"), "{reply:?}");
    }
    // A server joined while the file is blank is used: the watcher kept looking (and kept
    // the file's servers) without saying the same thing again.
    let admin = lb.admin().to_string();
    let _joined = start_server(&dir, 2, 0.0, &["--join", &admin]);
    wait_for_log(&lb, "Connected to server 2", 1);
    assert_eq!(lb.log_text().matches("is empty").count(), 1);
    assert!(lb.log_text().contains("keeping the servers already known"));

    fs::write(dir.servers_file(), good).unwrap();
    bystander.finish();
}

#[test]
fn a_long_servers_file_is_cut_at_max_servers_and_tried_by_a_few_threads() {
    let dir = TestDir::new(false);
    let dead: Vec<String> = (2..=301).map(dead_entry).collect();
    fs::write(dir.servers_file(), format!("[{}]", dead.join(",\n"))).unwrap();
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_balancer(&dir, 1, &[]);
    let bystander = Bystander::start(lb.addr);

    wait_for_log(
        &lb,
        "301 servers are listed, more than --max-servers 100: ignoring 201 of them",
        1,
    );
    // Every server kept (server 1 and the first 99 dead ones) is tried; none of the others.
    wait_for_log(&lb, "cannot reach server", 99);
    let log = lb.log_text();
    assert!(log.contains("cannot reach server 100 at 127.0.2.101:9"), "{log}");
    assert!(!log.contains("cannot reach server 101 "), "{log}");
    let threads = thread_count(lb.pid());
    println!("balancer threads with 301 servers listed, 99 of them dead: {threads}");
    assert!(threads < 64, "{threads} threads");
    // The live server serves on while the dead ones are retried.
    let mut wire = Wire::connect(lb.addr);
    for i in 0..100 {
        assert_eq!(wire.request(&format!("SELECT {i} AS n")).text(), format!("n: {i}\n"));
    }
    bystander.finish();
}

#[test]
fn joins_beyond_max_servers_are_refused_and_cost_no_thread() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    // Server 1, in the file, is one of the 100 allowed.
    let codes: Vec<u16> =
        (2..=150).map(|id| http(lb.admin(), "POST", "/servers", None, &dead_entry(id)).0).collect();
    assert!(codes[..99].iter().all(|&c| c == 201), "{codes:?}");
    assert!(codes[99..].iter().all(|&c| c == 503), "{codes:?}");
    let (code, body) = http(lb.admin(), "POST", "/servers", None, &dead_entry(151));
    assert_eq!(code, 503);
    assert!(body.contains("the pool is full: 100 servers"), "{body}");
    assert!(body.contains("--max-servers"), "{body}");
    wait_for_log(&lb, "refused to join server 151 at 127.0.2.152:9: the pool is full", 1);
    wait_for_log(&lb, "cannot reach server", 99);
    let threads = thread_count(lb.pid());
    println!("balancer threads with 99 dead servers joined: {threads}");
    assert!(threads < 64, "{threads} threads");

    // A smaller pool, set on the command line.
    let small = start_named_balancer(&dir, "small", "servers.json", 1, &["--max-servers", "1"]);
    let (code, _) = http(small.admin(), "POST", "/servers", None, &dead_entry(2));
    assert_eq!(code, 503);
    bystander.finish();
}

#[test]
fn a_second_server_with_a_running_id_is_refused_and_takes_over_once_that_one_is_gone() {
    let dir = TestDir::new(false);
    let mut first = start_server(&dir, 1, 0.0, &[]);
    let _other = start_server(&dir, 2, 0.0, &[]);
    let lb = start_balancer(&dir, 2, &[]);
    let bystander = Bystander::start(lb.addr);
    let recorded = |id: u32| -> Vec<u16> {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&fs::read_to_string(dir.servers_file()).unwrap()).unwrap();
        list.iter().filter(|e| e["id"] == id).map(|e| e["port"].as_u64().unwrap() as u16).collect()
    };

    let mut second = Started(
        Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["1", "0", "0", "--servers-file", "servers.json"])
            .args(["--db", "database.json", "--files", "files"])
            .current_dir(&dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_until(PATIENCE, || second.0.try_wait().unwrap().is_some());
    assert!(!second.0.wait().unwrap().success());
    let mut err = String::new();
    second.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let want = format!(
        "server 1 is already running at 127.0.0.1:{}: stop it first, or start this one with another id",
        first.addr.port()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(recorded(1), [first.addr.port()]);

    // Once the first is gone (killed: its entry stays), a new server 1 takes its place.
    signal(first.pid(), "KILL");
    let _ = first.child.wait();
    let replacement = start_server(&dir, 1, 0.0, &[]);
    assert_eq!(recorded(1), [replacement.addr.port()]);
    let log = fs::read_to_string(dir.path.join("server-1.log")).unwrap();
    assert!(log.contains("where nothing answers now: taking its place"), "{log}");
    wait_for_log(&lb, &format!("Connected to server 1 at {}", replacement.addr), 1);
    bystander.finish();
}

#[test]
fn a_join_of_an_address_already_listed_under_another_spelling_gets_409() {
    let dir = TestDir::new(false);
    let (server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    let port = server.addr.port();
    for (id, host) in [(5, "localhost"), (6, "127.1"), (7, "127.0.0.1")] {
        let body =
            format!(r#"{{"id": {id}, "host": "{host}", "port": {port}, "processing_time": 0}}"#);
        let (code, answer) = http(lb.admin(), "POST", "/servers", None, &body);
        assert_eq!(code, 409, "{host}: {answer}");
        assert!(
            answer.contains(&format!("server 1 at 127.0.0.1:{port} is already in the pool")),
            "{answer}"
        );
    }
    wait_for_log(&lb, "refused to join server 6 at 127.1:", 1);
    assert_eq!(http(lb.admin(), "GET", "/servers", None, "").1, "[]");
    bystander.finish();
}

#[test]
fn numbers_out_of_range_are_refused_where_they_enter() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    let entry = |id: &str, host: &str, port: &str, secs: &str| {
        format!(r#"{{"id": {id}, "host": {host}, "port": {port}, "processing_time": {secs}}}"#)
    };
    for (body, field) in [
        (entry("9", r#""127.0.0.9""#, "9", "1.8e19"), "processing_time"),
        (entry("9", r#""127.0.0.9""#, "9", "-1"), "processing_time"),
        (entry("9", r#""127.0.0.9""#, "0", "0"), "port"),
        (entry("9", r#""127.0.0.9""#, "70000", "0"), "u16"),
        (entry("-1", r#""127.0.0.9""#, "9", "0"), "u32"),
        (entry("5000000000", r#""127.0.0.9""#, "9", "0"), "u32"),
        (entry("9", r#""""#, "9", "0"), "host"),
        (entry("9", r#""a\nb""#, "9", "0"), "host"),
    ] {
        let (code, answer) = http(lb.admin(), "POST", "/servers", None, &body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(field), "{body}: {answer}");
    }
    assert_eq!(http(lb.admin(), "GET", "/servers", None, "").1, "[]");

    // The same check guards the servers file: the bad edit is refused whole, the list kept.
    let good = fs::read_to_string(dir.servers_file()).unwrap();
    let bad = good.trim().trim_end_matches(']').to_string()
        + ","
        + &entry("9", r#""127.0.0.9""#, "9", "1.8e19")
        + "]";
    fs::write(dir.servers_file(), bad).unwrap();
    wait_for_log(&lb, "processing_time must be a number of seconds from 0 to 86400", 1);
    let mut wire = Wire::connect(lb.addr);
    for i in 0..10 {
        assert_eq!(wire.request(&format!("SELECT {i} AS n")).text(), format!("n: {i}\n"));
    }
    fs::write(dir.servers_file(), good).unwrap();
    assert!(!lb.log_text().contains("panicked"), "{}", lb.log_text());
    bystander.finish();
}

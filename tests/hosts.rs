//! Servers on other machines, for real: a network of namespaces (`support/netns.rs`) with the
//! balancer, two servers that join it with a token, the database and a client each on a host
//! of its own. Needs root and iproute2; skipped with one line without them.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::netns::Network;
use support::postgres::{Postgres, OWNER};
use support::*;

/// One read as a client saw it: when it was sent, how long it took, who answered (or why not).
struct Read {
    sent: Instant,
    took: Duration,
    answer: Result<u32, String>,
}

/// Runs `command` and waits for it at most `timeout`, killing it then.
fn output_within(mut command: Command, timeout: Duration) -> Output {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// Sends one request on each wire before reading any reply, so that each keeps a server busy
/// while the next is placed: two wires reach both servers. Returns the replies.
fn side_by_side(wires: &mut [Wire], line: &str) -> Vec<Reply> {
    for wire in wires.iter_mut() {
        wire.send_raw(format!("{line}\n").as_bytes());
    }
    wires.iter_mut().map(Wire::read_reply).collect()
}

#[test]
fn servers_on_other_hosts_share_the_data_and_a_cut_link_costs_no_read() {
    let names = ["lb", "server1", "server2", "db", "client"];
    let Some(net) = Network::new("hosts", &names) else {
        return;
    };
    for name in names {
        eprintln!("host {name:8} {}", net.host(name).ip);
    }
    // A writable database shared by both servers: PostgreSQL on the database's host, or
    // without it the SQLite file, which every host of this network sees in the same folder.
    let dir = TestDir::new(true);
    let db = &net.host("db");
    let pg = Postgres::start_with(&["ip", "netns", "exec", &db.ns], &db.ip.to_string());
    match &pg {
        Some(pg) => {
            let config = format!("{{\"url\": \"{}\", \"writable\": true}}\n", pg.url(OWNER));
            std::fs::write(dir.path.join("database.json"), config).unwrap();
            eprintln!("database: PostgreSQL at {}:{}", pg.host, pg.port);
        }
        None => eprintln!("database: the SQLite file (no PostgreSQL here)"),
    }
    std::fs::write(dir.path.join("token"), "hosts-test-secret\n").unwrap();
    std::fs::write(dir.path.join("wrong-token"), "not-the-secret\n").unwrap();
    let lb_ip = net.host("lb").ip.to_string();
    let lb = net.spawn(
        "lb",
        env!("CARGO_BIN_EXE_loadbalancer"),
        &[
            "--host",
            &lb_ip,
            "--port",
            "0",
            "--admin-host",
            &lb_ip,
            "--admin-port",
            "0",
            "--token-file",
            "token",
            "--servers-file",
            "servers.json",
        ],
        &dir.path,
        "loadbalancer.log",
        2,
    );
    let admin = lb.admin().to_string();
    let server = |id: u32, host: &str, token: &str| {
        let ip = net.host(host).ip.to_string();
        let id = id.to_string();
        [
            id,
            "0".into(),
            "0.1".into(),
            "--host".into(),
            ip,
            "--join".into(),
            admin.clone(),
            "--token-file".into(),
            token.into(),
            "--db".into(),
            "database.json".into(),
            "--files".into(),
            "files".into(),
        ]
    };
    let bin = env!("CARGO_BIN_EXE_server");
    let start = |id: u32, host: &str| {
        let args = server(id, host, "token");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        net.spawn(host, bin, &args, &dir.path, &format!("server-{id}.log"), 1)
    };
    let _server1 = start(1, "server1");
    let _server2 = start(2, "server2");
    wait_until(START_TIMEOUT, || lb.log_text().matches("Connected to server").count() >= 2);

    // A server with the wrong token is refused.
    let args = server(3, "client", "wrong-token");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut intruder = net.command("client", bin, &args);
    intruder.current_dir(&dir.path).env("RUST_LOG", "info");
    let out = output_within(intruder, START_TIMEOUT);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("HTTP 401"), "{said}");
    let refusal = format!("refused a join request from {}", net.host("client").ip);
    assert!(lb.log_text().contains(&refusal), "{}", lb.log_text());
    eprintln!("server 3 with a wrong token: {}", said.trim().lines().last().unwrap_or(""));

    // The client's host reaches both servers through the balancer.
    let mut wires: Vec<Wire> =
        net.on("client", || (0..2).map(|_| Wire::connect(lb.addr)).collect());
    let mut answered = BTreeSet::new();
    for _ in 0..20 {
        let replies = side_by_side(&mut wires, "SELECT 1 AS n");
        answered.extend(replies.iter().filter_map(Reply::server));
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, BTreeSet::from([1, 2]), "not answered by both servers");
    let real_client = net.command(
        "client",
        env!("CARGO_BIN_EXE_client"),
        &["1", "--lb", &lb.addr.to_string(), "SELECT * FROM COLORS LIMIT 1"],
    );
    let out = output_within(real_client, START_TIMEOUT);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && shown.contains("Name: "), "{shown}");
    eprintln!(
        "client on {} -> balancer {}: answered by servers {answered:?}",
        net.host("client").ip,
        lb.addr
    );

    // A write through one server is read through the other.
    let wrote = wires[0].request("INSERT INTO COLORS VALUES ('Hosts', '#123456', 'rgb(18,52,86)')");
    assert!(wrote.is_ok(), "{wrote:?}");
    let writer = wrote.server().unwrap();
    let mut read_by = None;
    for _ in 0..20 {
        for reply in side_by_side(&mut wires, r#"SELECT "HEX" FROM COLORS WHERE "Name" = 'Hosts'"#)
        {
            assert_eq!(reply.text(), "HEX: #123456\n", "{reply:?}");
            read_by = read_by.or(reply.server().filter(|s| *s != writer));
        }
        if read_by.is_some() {
            break;
        }
    }
    let reader = read_by.expect("the other server never answered");
    eprintln!("written through server {writer}, read through server {reader}");

    // Two clients read files while server 2's link is cut and restored.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let readers: Vec<_> = wires
        .into_iter()
        .map(|mut wire| {
            let (stop, reads) = (Arc::clone(&stop), Arc::clone(&reads));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let answer = match wire.try_request("file hello.txt") {
                        Ok(r) if r.is_ok() && r.body == TestDir::data_file("hello.txt") => {
                            Ok(r.server().unwrap_or(0))
                        }
                        Ok(r) => Err(r.header),
                        Err(e) => Err(e.to_string()),
                    };
                    let failed = answer.is_err();
                    let took = sent.elapsed();
                    reads.lock().unwrap().push(Read { sent, took, answer });
                    if failed {
                        return;
                    }
                }
            })
        })
        .collect();
    let answered_since = |since: Instant, id: u32| {
        let reads = reads.lock().unwrap();
        reads.iter().any(|r| r.sent > since && r.answer == Ok(id))
    };
    let started = Instant::now();
    wait_until(START_TIMEOUT, || answered_since(started, 2));
    let cut = Instant::now();
    net.set_link("server2", false);
    wait_until(START_TIMEOUT, || lb.log_text().contains("server 2 is down"));
    let detected = cut.elapsed();
    // Every read after the detection goes to server 1.
    let after = Instant::now();
    wait_until(START_TIMEOUT, || answered_since(after, 1));
    let restored = Instant::now();
    net.set_link("server2", true);
    wait_until(START_TIMEOUT, || answered_since(restored, 2));
    let back = restored.elapsed();
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }

    let reads = reads.lock().unwrap();
    let failed: Vec<&String> = reads.iter().filter_map(|r| r.answer.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed reads: {failed:?}");
    let during: Vec<&Read> =
        reads.iter().filter(|r| r.sent < after && r.sent + r.took > cut).collect();
    let longest = during.iter().map(|r| r.took).max().unwrap_or_default();
    let late =
        (reads.iter()).filter(|r| r.sent > after && r.sent < restored).all(|r| r.answer == Ok(1));
    assert!(late, "server 2 answered while its link was cut");
    let by = (during.iter().max_by_key(|r| r.took)).and_then(|r| r.answer.clone().ok());
    eprintln!(
        "link of server 2 ({}) cut: down after {detected:.1?}; longest read across the cut {longest:.1?} \
         (answered by server {}); {} reads, none failed; link restored: server 2 answered again after {back:.1?}",
        net.host("server2").ip,
        by.unwrap_or(0),
        reads.len()
    );
    // Three checks a second apart, and time for a busy machine; without checks, 30 s.
    assert!(longest < Duration::from_secs(10), "a read waited {longest:?}");
}

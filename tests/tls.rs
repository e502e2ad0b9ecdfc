//! TLS: the balancer's TLS listener serves the same protocol as the plain one; peers that
//! speak the wrong one to either port are refused cleanly, a stalled handshake is dropped at
//! the deadline, and the client names what is wrong with a certificate.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::certs::{self, path, start_tls_balancer};
use support::*;

/// The client's output for `request` over the plain port and over TLS (exit code, stdout).
fn both_ways(dir: &TestDir, lb: &Proc, ca: &str, request: &[&str]) -> [(i32, String); 2] {
    let plain = lb.addr.to_string();
    let tls = lb.addrs[2].to_string();
    let mut plain_args = vec!["1", "--lb", &plain, "--download-dir", "downloads", "--force"];
    plain_args.extend(request);
    let mut tls_args = vec!["1", "--lb", &tls, "--tls", "--ca", ca];
    tls_args.extend(["--download-dir", "downloads", "--force"]);
    tls_args.extend(request);
    [plain_args, tls_args].map(|args| {
        let (code, out, err) = run_client(&dir.path, &args, "");
        assert_eq!(code, 0, "client {args:?}: {err}");
        // The timing line differs from run to run.
        let out = out.lines().filter(|l| !l.starts_with("Time taken")).collect::<Vec<_>>();
        (code, out.join("\n"))
    })
}

#[test]
fn a_query_and_a_file_over_tls_are_byte_identical_to_plain() {
    let dir = TestDir::new(false);
    // Big enough to take many TLS records and several relay buffers.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.path.join("files/big.bin"), &big).unwrap();
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_tls_balancer(&dir, 1, &c, &[]);
    let ca = path(&c.ca);

    let [plain, tls] = both_ways(&dir, &lb, &ca, &["SELECT * FROM COLORS LIMIT 5"]);
    assert_eq!(plain, tls);
    assert!(tls.1.contains("Red"), "{tls:?}");
    for name in ["big.bin", "palette.png"] {
        both_ways(&dir, &lb, &ca, &["file", name]);
        let want = fs::read(dir.path.join("files").join(name)).unwrap();
        assert!(fs::read(dir.downloads().join(name)).unwrap() == want, "{name} differs");
    }
}

#[test]
fn the_wrong_protocol_on_either_port_is_refused_cleanly() {
    let dir = TestDir::new(false);
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_tls_balancer(&dir, 1, &c, &[]);
    let bystander = Bystander::start(lb.addr);

    // Plain text to the TLS port: told so, in plain text, and closed.
    let mut wire = Wire::connect(lb.addrs[2]);
    let reply = wire.request("SELECT 1");
    assert_eq!(reply.code(), Some("bad_request"), "{reply:?}");
    assert!(reply.header.contains("TLS"), "{reply:?}");
    wire.expect_closed();

    // TLS to the plain port: the client fails at once with one line, exit code 2.
    let plain = lb.addr.to_string();
    let ca = path(&c.ca);
    let (code, _, err) =
        run_client(&dir.path, &["1", "--lb", &plain, "--tls", "--ca", &ca, "SELECT 1"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS") && err.lines().count() == 1, "{err}");

    wait_until(Duration::from_secs(10), || {
        let log = lb.log_text();
        log.contains("not a TLS handshake") && log.contains("looks like a TLS handshake")
    });
    bystander.finish();
}

#[test]
fn a_stalled_handshake_is_dropped_at_the_deadline() {
    let dir = TestDir::new(false);
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_tls_balancer(&dir, 1, &c, &["--request-timeout", "1"]);
    let bystander = Bystander::start(lb.addr);

    // The start of a ClientHello record, then nothing.
    let mut stalled = TcpStream::connect(lb.addrs[2]).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    // Closed by the balancer (an end of file or a reset), not by the read timeout.
    let mut rest = Vec::new();
    if let Err(e) = stalled.read_to_end(&mut rest) {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    let waited = started.elapsed();
    let at_deadline = Duration::from_millis(900)..Duration::from_secs(10);
    assert!(at_deadline.contains(&waited), "dropped after {waited:?}");
    // A peer that sends nothing at all is dropped the same way.
    let mut silent = TcpStream::connect(lb.addrs[2]).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let _ = silent.read_to_end(&mut rest);
    let waited = started.elapsed();
    let at_deadline = Duration::from_millis(900)..Duration::from_secs(10);
    assert!(at_deadline.contains(&waited), "dropped after {waited:?}");
    wait_until(Duration::from_secs(10), || {
        lb.log_text().matches("no TLS handshake within 1.0 s").count() == 2
    });
    bystander.finish();
}

#[test]
fn the_client_names_what_is_wrong_with_a_certificate() {
    let dir = TestDir::new(false);
    let good = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let other = certs::make(&dir.path, "other", &["127.0.0.1"], false);
    let elsewhere = certs::make(&dir.path, "elsewhere", &["example.com"], false);
    let expired = certs::make(&dir.path, "expired", &["127.0.0.1"], true);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let cases = [
        (&good, &other, "CA not trusted"),
        (&elsewhere, &elsewhere, "another host name"),
        (&expired, &expired, "expired"),
    ];
    for (lb_certs, client_ca, says) in cases {
        let lb = start_tls_balancer(&dir, 1, lb_certs, &[]);
        let tls = lb.addrs[2].to_string();
        let ca = path(&client_ca.ca);
        for args in [
            vec!["1", "--lb", &tls, "--tls", "--ca", &ca, "SELECT 1"],
            vec!["bench", "--lb", &tls, "--tls", "--ca", &ca, "--requests", "1"],
        ] {
            let (code, _, err) = run_client(&dir.path, &args, "");
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(
                err.contains("certificate not trusted") && err.contains(says),
                "{args:?}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
}

#[test]
fn a_missing_certificate_stops_the_start_naming_the_file() {
    let dir = TestDir::new(false);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadbalancer"))
        .args([
            "--port",
            "0",
            "--admin-port",
            "0",
            "--tls-port",
            "0",
            "--servers-file",
            "servers.json",
        ])
        .args(["--tls-cert", "nowhere.pem", "--tls-key", "nokey.pem"])
        .current_dir(&dir.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("nowhere.pem"), "{err}");
}

/// Starts `server <id> 0 0 --join <admin> --token-file token` with `extra`; returns whether
/// it started and its stderr (it stops at once when the join fails).
fn failed_join(dir: &TestDir, admin: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["5", "0", "0", "--join", admin, "--token-file", "token"])
        .args(["--db", "database.json", "--files", "files"])
        .args(extra)
        .current_dir(&dir.path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_join_over_https_needs_the_balancers_ca() {
    let dir = TestDir::new(false);
    fs::write(dir.path.join("token"), "s3cret\n").unwrap();
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let other = certs::make(&dir.path, "other", &["127.0.0.1"], false);
    let lb = start_tls_balancer(&dir, 0, &c, &["--token-file", "token"]);
    let admin = lb.admin().to_string();

    let err = failed_join(&dir, &admin, &["--ca", &path(&other.ca)]);
    assert!(err.contains("certificate not trusted"), "{err}");
    // Plain HTTP, which would carry the token in clear, is turned away.
    let err = failed_join(&dir, &admin, &[]);
    assert!(err.contains("HTTP 400: this admin listener speaks HTTPS"), "{err}");

    let ca = path(&c.ca);
    let args = ["--join", &admin, "--token-file", "token", "--ca", &ca];
    let mut joined = start_server(&dir, 7, 0.0, &args);
    wait_until(START_TIMEOUT, || lb.log_text().contains("Connected to server 7"));
    let reply = Wire::connect(lb.addr).request("SELECT 42 AS answer");
    assert_eq!(reply.server(), Some(7), "{reply:?}");
    // Leaving goes over HTTPS too.
    assert_eq!(joined.interrupt(Duration::from_secs(20)), Some(0));
    wait_until(Duration::from_secs(20), || {
        Wire::connect(lb.addr).request("SELECT 1").code() == Some("unavailable")
    });
}

#[test]
fn a_tls_server_is_verified_and_an_unverifiable_one_kept_out_of_the_pool() {
    let dir = TestDir::new(false);
    let good = certs::make(&dir.path, "servers", &["127.0.0.1"], false);
    let rogue = certs::make(&dir.path, "rogue", &["127.0.0.1"], false);
    let tls_args =
        |c: &certs::Certs| ["--tls-cert".into(), path(&c.cert), "--tls-key".into(), path(&c.key)];
    let good_args = tls_args(&good);
    let _server = start_server(&dir, 1, 0.0, &good_args.each_ref().map(String::as_str));
    let servers_file = fs::read_to_string(dir.servers_file()).unwrap();
    assert!(servers_file.contains("\"tls\": true"), "{servers_file}");
    let ca = path(&good.ca);
    let lb = start_balancer(&dir, 1, &["--backend-ca", &ca]);
    let bystander = Bystander::start(lb.addr);

    let rogue_args = tls_args(&rogue);
    let _rogue = start_server(&dir, 2, 0.0, &rogue_args.each_ref().map(String::as_str));
    wait_until(START_TIMEOUT, || lb.log_text().contains("cannot reach server 2 at 127.0.0.1"));
    assert!(lb.log_text().contains("certificate not trusted"), "{}", lb.log_text());
    let mut wire = Wire::connect(lb.addr);
    for i in 0..20 {
        let reply = wire.request(&format!("SELECT {i} AS n"));
        assert_eq!((reply.server(), reply.text()), (Some(1), format!("n: {i}\n")));
    }
    assert!(!lb.log_text().contains("Connected to server 2"));
    bystander.finish();
}

#[test]
fn no_plain_leaves_only_the_tls_listener() {
    let dir = TestDir::new(false);
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let args = [
        "--port",
        "0",
        "--admin-port",
        "0",
        "--tls-port",
        "0",
        "--no-plain",
        "--servers-file",
        "servers.json",
        "--tls-cert",
        &path(&c.cert),
        "--tls-key",
        &path(&c.key),
    ]
    .map(String::from);
    let log = dir.path.join("loadbalancer.log");
    let lb = spawn(env!("CARGO_BIN_EXE_loadbalancer"), &args, log, &dir.path, 2);
    wait_until(START_TIMEOUT, || lb.log_text().contains("Connected to server 1"));
    // Admin first, then TLS: no plain listener was announced.
    let tls = lb.addrs[1].to_string();
    let ca = path(&c.ca);
    let (code, out, err) =
        run_client(&dir.path, &["1", "--lb", &tls, "--tls", "--ca", &ca, "SELECT 7 AS n"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("n: 7"), "{out}");
    let only_tls = format!("listening on {tls} (TLS) (admin on https://");
    assert!(lb.log_text().contains(&only_tls), "{}", lb.log_text());
}

#[test]
fn a_tls_server_logs_no_line_for_a_health_check_nor_a_close_without_close_notify() {
    let dir = TestDir::new(false);
    let c = certs::make(&dir.path, "server", &["127.0.0.1"], false);
    let tls_args = ["--tls-cert", &path(&c.cert), "--tls-key", &path(&c.key)].map(String::from);
    let server = start_server(&dir, 1, 0.0, &tls_args.each_ref().map(String::as_str));
    // Connections that close at once, as the balancer's health checks do every second.
    let checks: Vec<String> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap().local_addr().unwrap().to_string())
        .collect();
    // A TLS client that closes without a close_notify, as most do (Python's, the balancer's).
    let config = minilb::tls::client_config(Some(&c.ca)).unwrap();
    let connector = minilb::tls::Connector::new(&config, &server.addr.to_string()).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    let peer = tcp.local_addr().unwrap().to_string();
    let mut stream = connector.connect(tcp, START_TIMEOUT).unwrap();
    stream.write_all(b"SELECT 1 AS n\n").unwrap();
    let mut reply = [0u8; 64];
    assert!(stream.read(&mut reply).unwrap() > 0);
    drop(stream);
    wait_until(START_TIMEOUT, || server.log_text().contains(&format!("connection with {peer} ")));
    let log = server.log_text();
    assert!(log.contains(&format!("connection with {peer} closed")), "{log}");
    for check in checks {
        assert!(!log.contains(&check), "a health check was logged: {log}");
    }
}

#[test]
fn one_read_of_an_openssl_client_gets_a_small_reply_whole() {
    // Python's `ssl` (OpenSSL) returns one TLS record per read, as the README's example does.
    if Command::new("python3").arg("-V").output().is_err() {
        return eprintln!("skipped: python3 is not installed");
    }
    let dir = TestDir::new(false);
    let c = certs::make(&dir.path, "lb", &["127.0.0.1"], false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    let lb = start_tls_balancer(&dir, 1, &c, &[]);
    let script = format!(
        "import socket, ssl\n\
         c = ssl.create_default_context(cafile={ca:?})\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port}), timeout=20), server_hostname='127.0.0.1')\n\
         s.sendall(b'SELECT \"Name\" FROM COLORS LIMIT 2\\n')\n\
         print(s.recv(4096).decode(), end='')\n",
        ca = path(&c.ca),
        port = lb.addrs[2].port()
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "OK 26 server=1 rows=2\nName: White\n\nName: Silver\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

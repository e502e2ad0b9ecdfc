//! Hostile and broken input from clients: every bad request gets a clear `ERR` (or its
//! connection closed), the processes keep running, and a well-behaved client running alongside
//! every test gets every one of its replies right.

mod support;

use std::fs;
use std::io::Write;
use std::net::Shutdown;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use minilb::protocol::MAX_REQUEST_LINE;
use support::*;

const TOO_LONG: &str = "ERR too_large request line is over 65536 bytes; closing the connection";
const NO_NAME: &str =
    "ERR forbidden file name contains a path separator: ask for a plain file name";

/// Sends each raw request and asserts the exact reply header, on one connection.
fn expect_replies(wire: &mut Wire, cases: &[(&[u8], &str)]) {
    for (bytes, want) in cases {
        wire.send_raw(bytes);
        let reply = wire.read_reply();
        assert_eq!(reply.header, *want, "for {:?}", String::from_utf8_lossy(bytes));
    }
}

#[test]
fn bad_request_lines_get_clear_errors_and_the_connection_goes_on() {
    let dir = TestDir::new(false);
    let (server, lb, bystander) = watched_cluster(&dir, &[], &[]);

    // The same rules hold at the balancer and at a server reached directly.
    for addr in [lb.addr, server.addr] {
        let mut wire = Wire::connect(addr);
        expect_replies(
            &mut wire,
            &[
                (b"\xff\xfe SELECT 1\n", "ERR bad_request request is not valid UTF-8"),
                (b"SELECT '\xc3\x28'\n", "ERR bad_request request is not valid UTF-8"),
                (b"\n", "ERR bad_request empty request: send `file <name>` or an SQL query"),
                (b" \t \r\n", "ERR bad_request empty request: send `file <name>` or an SQL query"),
                (b"SELECT 1\0\n", "ERR bad_request request contains a NUL byte"),
                (b"\0\n", "ERR bad_request request contains a NUL byte"),
                (
                    b"SELECT 1\rAS x\n",
                    "ERR bad_request request contains a carriage return inside the line",
                ),
                (b"file\n", "ERR bad_request missing file name: `file <name>`"),
                (b"file   \n", "ERR bad_request missing file name: `file <name>`"),
                // Valid UTF-8 that is not SQL is just a query that fails; control characters
                // in SQLite's message are folded so the reply stays one line.
                (
                    "\u{1}\u{7f}\u{202e}☃ ÿ\n".as_bytes(),
                    "ERR sql unrecognized token: \" \" in    ☃ ÿ at offset 0",
                ),
                ("☃☃☃\n".as_bytes(), "ERR sql near \"☃☃☃\": syntax error in ☃☃☃ at offset 0"),
            ],
        );
        // The connection is still good after all of that.
        assert_eq!(wire.request("SELECT 1 AS one").text(), "one: 1\n");

        // A line of exactly 64 KiB is a request like any other.
        let filler = "x".repeat(MAX_REQUEST_LINE - "SELECT '' AS v".len());
        let reply = wire.request(&format!("SELECT '{filler}' AS v"));
        assert_eq!(reply.text(), format!("v: {filler}\n"));

        // One byte more is refused, and the connection closed: its rest cannot be trusted.
        wire.send_raw(&vec![b'a'; MAX_REQUEST_LINE + 1]);
        wire.send_raw(b"\nSELECT 1\n");
        assert_eq!(wire.read_reply().header, TOO_LONG);
        wire.expect_closed();

        // Megabytes with no newline at all: refused long before they are all read.
        let mut wire = Wire::connect(addr);
        let mut flood = wire.writer.try_clone().unwrap();
        let flooder = std::thread::spawn(move || {
            let chunk = vec![b'z'; 64 * 1024];
            // Until the peer hangs up; at most 64 MiB.
            for _ in 0..1024 {
                if flood.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        assert_eq!(wire.read_reply().header, TOO_LONG);
        wire.expect_cut_off();
        flooder.join().unwrap();

        // Half a line and the client leaves: nothing to answer, nothing breaks.
        let mut wire = Wire::connect(addr);
        wire.send_raw(b"SELECT 1 AS hal");
        wire.writer.shutdown(Shutdown::Write).unwrap();
        wire.expect_closed();
    }

    assert_eq!(Wire::connect(lb.addr).request("SELECT 2 AS two").text(), "two: 2\n");
    bystander.finish();
}

#[test]
fn a_64_kib_line_may_end_in_crlf() {
    let dir = TestDir::new(false);
    let (server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    let filler = "x".repeat(MAX_REQUEST_LINE - "SELECT '' AS v".len());
    // The balancer passes the `\r` on, so the server's reader sees it too.
    for addr in [lb.addr, server.addr] {
        let mut wire = Wire::connect(addr);
        wire.send_raw(format!("SELECT '{filler}' AS v\r\n").as_bytes());
        assert_eq!(wire.read_reply().text(), format!("v: {filler}\n"));
        // One byte more is still too long, `\r\n` or not.
        wire.send_raw(format!("SELECT '{filler}x' AS v\r\n").as_bytes());
        assert_eq!(wire.read_reply().header, TOO_LONG);
        wire.expect_closed();
    }
    bystander.finish();
}

/// The deliberately slow part of a slowloris: one byte every 200 ms, never a newline, at most
/// 50 bytes (10 s). Returns a counter of the bytes sent.
fn trickle(wire: &Wire) -> (Arc<AtomicUsize>, std::thread::JoinHandle<()>) {
    let mut writer = wire.writer.try_clone().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&sent);
    let thread = std::thread::spawn(move || {
        for byte in b"SELECT 1 AS slowloris_slowloris_slowloris_slowlori" {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    (sent, thread)
}

const LINE_TIMEOUT: &str = "ERR timeout the request line did not arrive within 1 s (--request-timeout); closing the connection";

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let dir = TestDir::new(false);
    let (server, lb, bystander) = watched_cluster(
        &dir,
        &["--request-timeout", "1"],
        &["--request-timeout", "1", "--idle-timeout", "2"],
    );
    // Each kind of slow client on its own connection, all at once: the timeouts are per
    // connection, and the suite need not wait them out one after another.
    std::thread::scope(|scope| {
        for addr in [lb.addr, server.addr] {
            // Half a line, then nothing.
            scope.spawn(move || {
                let mut wire = Wire::connect(addr);
                let started = Instant::now();
                wire.send_raw(b"SELECT 1 AS st");
                assert_eq!(wire.read_reply().header, LINE_TIMEOUT);
                assert!(started.elapsed() >= Duration::from_secs(1));
                wire.expect_closed();
            });
            // A byte every 200 ms: each read is quick, but the line is cut off at its
            // deadline, long before the 50 bytes are sent.
            scope.spawn(move || {
                let mut wire = Wire::connect(addr);
                let (sent, thread) = trickle(&wire);
                assert_eq!(wire.read_reply().header, LINE_TIMEOUT);
                let when = sent.load(Ordering::SeqCst);
                assert!(when < 50, "cut off only after all {when} bytes");
                wire.expect_closed();
                thread.join().unwrap();
            });
        }

        // Twenty at once: all cut off, while the bystander carries on.
        scope.spawn(|| {
            let mut wires: Vec<Wire> = (0..20).map(|_| Wire::connect(lb.addr)).collect();
            for wire in &mut wires {
                wire.send_raw(b"file hello");
            }
            for wire in &mut wires {
                assert_eq!(wire.read_reply().header, LINE_TIMEOUT);
                wire.expect_closed();
            }
        });

        // Idle after a request: the balancer closes the connection after the idle timeout.
        scope.spawn(|| {
            let mut wire = Wire::connect(lb.addr);
            // Before the request: the balancer's idle clock starts after the reply is out,
            // and this thread may see the reply late.
            let idle_since = Instant::now();
            assert_eq!(wire.request("SELECT 1 AS one").text(), "one: 1\n");
            assert_eq!(
                wire.read_reply().header,
                "ERR timeout no request for 2 s (--idle-timeout); closing the connection"
            );
            assert!(idle_since.elapsed() >= Duration::from_secs(2));
            wire.expect_closed();
        });

        // Idle from the start.
        scope.spawn(|| {
            let mut wire = Wire::connect(lb.addr);
            let connected = Instant::now();
            assert_eq!(
                wire.read_reply().header,
                "ERR timeout no request for 2 s (--idle-timeout); closing the connection"
            );
            assert!(connected.elapsed() >= Duration::from_secs(2));
            wire.expect_closed();
        });
    });

    bystander.finish();
    assert!(lb.log_text().contains("refused: timeout"), "{}", lb.log_text());
}

#[test]
fn a_client_that_stops_reading_does_not_hold_the_server() {
    let dir = TestDir::new(false);
    // 32 MiB: far more than the socket buffers between here and the balancer hold.
    let big = fs::File::create(dir.path.join("files/big.bin")).unwrap();
    big.set_len(32 * 1024 * 1024).unwrap();
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &["--request-timeout", "1"]);

    // Asks for the big file and never reads it. The only server must not stay stuck behind
    // it: the balancer gives up on this client after the request timeout and drains the reply.
    let mut hog = Wire::connect(lb.addr);
    hog.send_raw(b"file big.bin\n");
    wait_until(START_TIMEOUT, || {
        lb.log_text()
            .contains("client left during the reply; server 1's connection drained and reused")
    });
    // The server is free again: a client connecting now is served.
    assert_eq!(Wire::connect(lb.addr).request("SELECT 3 AS three").text(), "three: 3\n");
    drop(hog);
    bystander.finish();
}

#[test]
fn more_clients_than_max_clients_get_busy_and_no_thread() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &["--max-clients", "3"]);
    let mut second = Wire::connect(lb.addr);
    assert!(second.request("SELECT 1").is_ok());
    let mut third = Wire::connect(lb.addr);
    assert!(third.request("SELECT 1").is_ok());

    let threads = steady_threads(lb.pid());
    let mut turned_away: Vec<Wire> = (0..20).map(|_| Wire::connect(lb.addr)).collect();
    for wire in &mut turned_away {
        assert_eq!(wire.read_reply().header, "ERR busy too many clients (3); try again later");
        wire.expect_closed();
    }
    assert_eq!(
        steady_threads(lb.pid()),
        threads,
        "a thread was started for a client that was turned away"
    );
    assert!(lb
        .log_text()
        .contains("refused a client: 3 clients already connected (--max-clients)"));

    // The clients already in are still served; once one leaves, a new one gets in.
    assert!(second.request("SELECT 2").is_ok());
    drop(third);
    wait_until(START_TIMEOUT, || {
        let mut wire = Wire::connect(lb.addr);
        wire.send_raw(b"SELECT 4 AS four\n");
        match wire.try_read_reply() {
            Ok(reply) if reply.is_ok() => {
                assert_eq!(reply.text(), "four: 4\n");
                true
            }
            Ok(reply) => {
                assert_eq!(reply.code(), Some("busy"), "{reply:?}");
                false
            }
            Err(_) => false,
        }
    });
    bystander.finish();
}

#[test]
fn only_allowed_networks_are_served() {
    let dir = TestDir::new(false);
    let _server = start_server(&dir, 1, 0.0, &[]);
    // We connect from 127.0.0.1: allowed by one balancer, not by the other.
    let open = start_named_balancer(
        &dir,
        "open",
        "servers.json",
        1,
        &["--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8"],
    );
    let closed = start_named_balancer(
        &dir,
        "closed",
        "servers.json",
        1,
        &["--allow", "10.0.0.0/8", "--allow", "::1"],
    );
    let bystander = Bystander::start(open.addr);

    let threads = steady_threads(closed.pid());
    for _ in 0..5 {
        let mut wire = Wire::connect(closed.addr);
        assert_eq!(
            wire.read_reply().header,
            "ERR forbidden your address may not use this load balancer"
        );
        wire.expect_closed();
    }
    assert_eq!(steady_threads(closed.pid()), threads);
    let log = closed.log_text();
    assert!(log.contains("from 10.0.0.0/8, ::1/128 (--allow)"), "{log}");
    assert!(log.contains("refused 127.0.0.1:"), "{log}");
    assert!(log.contains("not in the --allow list"), "{log}");
    assert!(open.log_text().contains("from 10.0.0.0/8, 127.0.0.0/8 (--allow)"));

    // A network that is not one is refused at start, with a hint.
    let out = Command::new(env!("CARGO_BIN_EXE_loadbalancer"))
        .args(["--port", "0", "--allow", "127.0.0.1/8"])
        .current_dir(&dir.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean 127.0.0.0/8?"), "{err}");

    // On a busy machine all this can take less than the bystander's second request.
    wait_until(START_TIMEOUT, || open.log_text().matches("reply sent").count() >= 3);
    bystander.finish();
}

#[test]
fn file_names_that_escape_the_files_folder_are_refused() {
    let dir = TestDir::new(false);
    let files = dir.path.join("files");
    fs::write(dir.path.join("secret.txt"), "secret\n").unwrap();
    fs::create_dir(files.join("sub")).unwrap();
    fs::write(files.join("sub/inner.txt"), "inner\n").unwrap();
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, files.join(name)).unwrap();
    link("../secret.txt", "relative-link.txt");
    link(dir.path.join("secret.txt").to_str().unwrap(), "absolute-link.txt");
    link("..", "up");
    link("/etc", "etc");
    link("/dev/zero", "zero");
    link("nowhere.txt", "dangling.txt");
    link("hello.txt", "inside.txt");
    let mkfifo = Command::new("mkfifo").arg(files.join("pipe")).status().unwrap();
    assert!(mkfifo.success());

    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);

    let long = "a".repeat(256);
    let longest = "a".repeat(255);
    let outside = |name: &str| format!("ERR forbidden {name} leads outside the files folder");
    let not_found = |name: &str| format!("ERR not_found no such file: {name}");
    let cases: Vec<(String, String)> = vec![
        ("../secret.txt".into(), NO_NAME.into()),
        ("..".into(), "ERR forbidden file name is a folder reference: ask for a plain file name".into()),
        (".".into(), "ERR forbidden file name is a folder reference: ask for a plain file name".into()),
        ("/etc/passwd".into(), NO_NAME.into()),
        ("....//secret.txt".into(), NO_NAME.into()),
        ("sub/../../secret.txt".into(), NO_NAME.into()),
        ("sub/inner.txt".into(), NO_NAME.into()),
        ("hello.txt/".into(), NO_NAME.into()),
        ("~/secret.txt".into(), NO_NAME.into()),
        ("..\\secret.txt".into(), NO_NAME.into()),
        ("C:\\Windows\\win.ini".into(), NO_NAME.into()),
        ("\\\\server\\share\\x".into(), NO_NAME.into()),
        ("C:secret.txt".into(), "ERR forbidden file name contains a drive or stream separator: ask for a plain file name".into()),
        ("hello.txt::$DATA".into(), "ERR forbidden file name contains a drive or stream separator: ask for a plain file name".into()),
        ("hello\u{1b}[2J.txt".into(), "ERR forbidden file name contains a control character: ask for a plain file name".into()),
        ("hello.txt\t..".into(), "ERR forbidden file name contains a control character: ask for a plain file name".into()),
        (long.clone(), "ERR forbidden file name is over 255 bytes: ask for a plain file name".into()),
        ("relative-link.txt".into(), outside("relative-link.txt")),
        ("absolute-link.txt".into(), outside("absolute-link.txt")),
        ("up".into(), outside("up")),
        ("etc".into(), outside("etc")),
        ("zero".into(), outside("zero")),
        // Names that only look like escapes are plain names that do not exist.
        ("..%2fsecret.txt".into(), not_found("..%2fsecret.txt")),
        ("%2e%2e".into(), not_found("%2e%2e")),
        ("...".into(), not_found("...")),
        ("．．／secret.txt".into(), not_found("．．／secret.txt")),
        ("~".into(), not_found("~")),
        (longest.clone(), not_found(&longest)),
        // A folder, a FIFO (opening it would block) and a dangling link are no files.
        ("sub".into(), not_found("sub")),
        ("pipe".into(), not_found("pipe")),
        ("dangling.txt".into(), not_found("dangling.txt")),
    ];
    let mut wire = Wire::connect(lb.addr);
    for (name, want) in &cases {
        let reply = wire.request(&format!("file {name}"));
        assert_eq!(&reply.header, want, "file {name:?}");
    }
    // A NUL byte never gets as far as the name: the request line itself is refused.
    wire.send_raw(b"file hello.txt\0.png\n");
    assert_eq!(wire.read_reply().header, "ERR bad_request request contains a NUL byte");
    // A link that stays inside the folder is served.
    let reply = wire.request("file inside.txt");
    assert_eq!(reply.body, TestDir::data_file("hello.txt"));
    bystander.finish();
}

#[test]
fn hostile_sql_is_refused_and_limited() {
    let dir = TestDir::new(false);
    let server_args = ["--query-timeout", "1", "--max-reply", "100000"];
    let (_server, lb, bystander) = watched_cluster(&dir, &server_args, &[]);
    let mut wire = Wire::connect(lb.addr);
    let before = wire.request("SELECT count(*) AS n FROM COLORS").text();

    let read_only = "ERR forbidden the database is read-only; set \"writable\": true in database.json to allow writes";
    let attach = "ERR forbidden ATTACH, DETACH and VACUUM (which attaches a database) are not allowed: a request uses the shared database only";
    let too_large = "ERR too_large query result is over the 100000 byte reply limit; add a LIMIT or select fewer columns";
    let copy = dir.path.join("copy.db");
    let cases: Vec<(String, &str)> = vec![
        ("INSERT INTO COLORS VALUES ('X', '#000001', 'rgb(0,0,1)')".into(), read_only),
        ("DELETE FROM COLORS".into(), read_only),
        ("DROP TABLE COLORS".into(), read_only),
        (format!("ATTACH DATABASE '{}' AS evil", copy.display()), attach),
        (format!("VACUUM INTO '{}'", copy.display()), attach),
        ("VACUUM".into(), attach),
        ("DETACH DATABASE main".into(), attach),
        (
            "SELECT load_extension('/nonexistent/evil.so')".into(),
            "ERR forbidden load_extension() is not allowed: extension loading is off",
        ),
        (
            "PRAGMA journal_mode = DELETE".into(),
            "ERR forbidden PRAGMA journal_mode = DELETE is not allowed: it may change the server's state (pragmas that only read, such as table_info, are allowed)",
        ),
        (
            "PRAGMA writable_schema = ON".into(),
            "ERR forbidden PRAGMA writable_schema = ON is not allowed: it may change the server's state (pragmas that only read, such as table_info, are allowed)",
        ),
        (
            "PRAGMA query_only = 0".into(),
            "ERR forbidden PRAGMA query_only = 0 is not allowed: it may change the server's state (pragmas that only read, such as table_info, are allowed)",
        ),
        (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c".into(),
            "ERR timeout query ran longer than 1.0 s and was stopped",
        ),
        ("SELECT * FROM COLORS a, COLORS b".into(), too_large),
        ("SELECT randomblob(200000) AS b".into(), too_large),
        ("SELECT length(zeroblob(1000000000)) AS n".into(), too_large),
        ("SELECT 1; SELECT 2".into(), "ERR sql send one SQL statement per request"),
        ("SELECT 1; DROP TABLE COLORS".into(), "ERR sql send one SQL statement per request"),
        ("-- only a comment".into(), "ERR sql the query holds no SQL statement"),
    ];
    for (sql, want) in &cases {
        let reply = wire.request(sql);
        assert_eq!(reply.header, *want, "{sql}");
    }
    assert!(!copy.exists(), "a refused statement wrote {}", copy.display());

    // Pragmas that only read are fine, and nothing changed.
    let reply = wire.request("PRAGMA table_info(COLORS)");
    assert!(reply.text().starts_with("cid: 0\nname: Name\n"), "{reply:?}");
    assert_eq!(wire.request("PRAGMA journal_mode").text(), "journal_mode: wal\n");
    assert_eq!(wire.request("SELECT count(*) AS n FROM COLORS").text(), before);
    bystander.finish();
}

#[test]
fn a_writable_database_still_refuses_attach_and_state_changing_pragmas() {
    let dir = TestDir::new(true);
    let (server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    // Straight to the server, like a client that bypasses the balancer.
    for addr in [lb.addr, server.addr] {
        let mut wire = Wire::connect(addr);
        let evil = dir.path.join("evil.db");
        let reply = wire.request(&format!("ATTACH '{}' AS evil", evil.display()));
        assert_eq!(reply.code(), Some("forbidden"), "{reply:?}");
        assert!(!evil.exists());
        let reply = wire.request("PRAGMA journal_mode = DELETE");
        assert_eq!(reply.code(), Some("forbidden"), "{reply:?}");
        // Ordinary writes are what a writable database is for.
        let reply = wire.request("CREATE TABLE IF NOT EXISTS notes (x)");
        assert!(reply.is_ok(), "{reply:?}");
    }
    bystander.finish();
}

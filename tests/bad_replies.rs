//! Broken replies: a server that breaks the protocol behind the balancer, and a balancer that
//! lies to the client. Fake peers are tiny listeners in the test process (the fake server is
//! in `support/fake_server.rs`).

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::fake_server::{answer, Act, FakeServer};
use support::*;

/// How long a fake peer waits for anything, so a broken test fails instead of hanging.
const FAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads one request line from a connection the fake peer accepted.
fn read_request(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// A balancer in `dir` whose only server is `fake` (its servers file is `fake-servers.json`).
fn balancer_of(dir: &TestDir, fake: &FakeServer, extra: &[&str]) -> Proc {
    fake.register(&dir.path.join("fake-servers.json"));
    start_named_balancer(dir, "broken", "fake-servers.json", 1, extra)
}

/// The value of the metric sample `sample` (`name{labels}`) on the balancer's `/metrics`.
fn metric(lb: &Proc, sample: &str) -> f64 {
    let (_, text) = http(lb.admin(), "GET", "/metrics", None, "");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in {text}"))
        .parse()
        .unwrap()
}

#[test]
fn a_server_that_breaks_the_protocol_costs_one_err_unavailable_each_time() {
    let long_header: Vec<u8> = vec![b'O'; 9000];
    // `bad <i>` gets broken reply `i` (and a hang-up, if asked); the rest are answered right.
    let broken_replies: Vec<(Vec<u8>, bool)> = [
        (&b"HELLO\n"[..], false),
        (b"OK abc server=9\n", false),
        (b"OK -5 server=9\n", false),
        (b"OK 5 server=9 garbage\n", false),
        (b"ERR no_such_code whatever\n", false),
        (b"\xff\xfe\n", false),
        (&long_header, false),
        (b"", true),
        (b"OK 5", true),
        // A length larger than what follows; then the server hangs up, or stalls.
        (b"OK 100 server=9\nonly ten b", true),
        (b"OK 100 server=9\nonly ten b", false),
        // Still small enough (under 64 KiB) to be read whole before any of it goes out.
        (b"OK 60000 server=9\nonly ten b", true),
        // Last, a lie too long to hold back (see below).
        (b"OK 1000000 server=9\nonly ten b", true),
    ]
    .iter()
    .map(|(reply, hang_up)| (reply.to_vec(), *hang_up))
    .collect();
    let script = broken_replies.clone();
    let fake = FakeServer::start(9, move |line| {
        match line.strip_prefix("bad ").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if script[i].1 => Act::SendAndClose(script[i].0.clone()),
            Some(i) => Act::Send(script[i].0.clone()),
            None => Act::Answer,
        }
    });
    let dir = TestDir::new(false);
    // No retries, so that each broken reply reaches the client as `ERR unavailable`.
    let broken = balancer_of(&dir, &fake, &["--retries", "0", "--server-timeout", "1"]);
    // A client of the same server, which must notice nothing: the server is re-probed after
    // each broken reply, never marked down.
    let bystander = Bystander::start(broken.addr);

    let mut client = Wire::connect(broken.addr);
    let (last, held_back) = broken_replies.split_last().unwrap();
    for (i, (reply, _)) in held_back.iter().enumerate() {
        assert_eq!(
            client.request(&format!("bad {i}")).header,
            "ERR unavailable no server could answer after 1 attempts; try again",
            "after the server sent {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(20)])
        );
    }

    // A length larger than what follows, on a reply too long to hold back: its header is
    // out before the body breaks off, so all the balancer can do is close the client's
    // connection, and the client sees the reply cut short.
    client.send_raw(format!("bad {}\n", held_back.len()).as_bytes());
    let mut header = String::new();
    client.reader.read_line(&mut header).unwrap();
    assert_eq!(header.as_bytes(), &last.0[..20]);
    let mut body = Vec::new();
    let _ = client.reader.read_to_end(&mut body);
    assert_eq!(body, b"only ten b");

    // The balancer closed every broken connection and re-probed the server on a new one.
    wait_until(START_TIMEOUT, || {
        fake.closed() >= broken_replies.len() && fake.accepted() > broken_replies.len()
    });
    let reply = Wire::connect(broken.addr).request("SELECT 7 AS n");
    assert_eq!(reply.header, "OK 5 server=9");
    assert_eq!(reply.body, b"n: 7\n");
    fake.wait_for_answers(3);
    bystander.finish();
    let log = broken.log_text();
    assert!(log.contains("server 9 failed (reply body ended after 10 of its 100 bytes)"), "{log}");
    assert!(log.contains("server 9 failed mid-reply"), "{log}");
    // With --retries 0 there is nothing to retry, and the log does not promise it.
    assert!(!log.contains("retrying"), "{log}");
    assert!(!log.contains("server 9 is down"), "{log}");
}

#[test]
fn a_reply_header_may_be_8_kib_and_one_byte_more_is_a_broken_reply() {
    // An `ERR` header (with its code and message) of exactly `len` bytes before the `\n`.
    let header = |len: usize| {
        let mut line = b"ERR not_found ".to_vec();
        line.resize(len, b'x');
        line.push(b'\n');
        line
    };
    let fake = FakeServer::start(9, move |line| match line {
        "longest" => Act::Send(header(8 * 1024)),
        "too long" => Act::Send(header(8 * 1024 + 1)),
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "0"]);
    let mut client = Wire::connect(lb.addr);
    let reply = client.request("longest");
    assert_eq!(format!("{}\n", reply.header).as_bytes(), header(8 * 1024));
    assert_eq!(
        client.request("too long").header,
        "ERR unavailable no server could answer after 1 attempts; try again"
    );
}

/// A fake balancer: for each reply, accepts a connection, reads one request, sends the reply
/// and hangs up. Returns the requests it got, once all replies are sent.
fn fake_balancer(replies: Vec<&'static [u8]>) -> (SocketAddr, JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for reply in replies {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
            requests.push(read_request(&mut BufReader::new(conn.try_clone().unwrap())));
            conn.write_all(reply).unwrap();
        }
        requests
    });
    (addr, thread)
}

/// Runs the client against `lb` with its downloads in `downloads/`.
fn client(dir: &TestDir, lb: SocketAddr, request: &[&str]) -> (i32, String, String) {
    let lb = lb.to_string();
    let mut args = vec!["1", "--lb", &lb, "--download-dir", "downloads"];
    args.extend_from_slice(request);
    run_client(&dir.path, &args, "")
}

/// Every file in `dir`, hidden ones too, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_client_refuses_replies_that_lie_and_names_that_escape() {
    let dir = TestDir::new(false);
    let (lb, fake) = fake_balancer(vec![
        b"OK 100 server=1\nonly ten b",
        b"OK 100 server=1\nonly ten b",
        b"OK 99999999999 server=1\n",
        b"HELLO\n",
        b"OK 4 server=1\nevil",
        b"OK 4 server=1\nevil",
        b"OK 4 server=1\nevil",
    ]);
    let cases: [(&[&str], &str); 7] = [
        (&["file", "hello.txt"], "client 1: the reply ended after 10 of its 100 bytes\n"),
        (&["SELECT", "1"], "client 1: the reply ended after 10 of its 100 bytes\n"),
        (&["file", "big.bin"], "client 1: the reply ended after 0 of its 99999999999 bytes\n"),
        (&["SELECT", "1"], "client 1: reply header is neither OK nor ERR: \"HELLO\"\n"),
        (
            &["file", "../evil.txt"],
            "client 1: refusing to save \"../evil.txt\": file name contains a path separator: ask for a plain file name\n",
        ),
        (
            &["file", "/tmp/evil.txt"],
            "client 1: refusing to save \"/tmp/evil.txt\": file name contains a path separator: ask for a plain file name\n",
        ),
        (
            &["file", ".."],
            "client 1: refusing to save \"..\": file name is a folder reference: ask for a plain file name\n",
        ),
    ];
    for (request, want) in cases {
        let (code, out, err) = client(&dir, lb, request);
        assert_eq!((code, err.as_str()), (2, want), "{request:?}: {out}");
    }
    // (A request typed over several lines is sent as one line: see tests/system.rs.)
    let requests = fake.join().unwrap();
    assert_eq!(requests.len(), 7);
    assert_eq!(requests[0], "file hello.txt\n");
    assert_eq!(requests[4], "file ../evil.txt\n");
    // Nothing was left behind: no partial download, no temp file, nothing outside.
    assert!(listing(&dir.downloads()).is_empty(), "{:?}", listing(&dir.downloads()));
    assert!(!dir.path.join("evil.txt").exists());
}

#[test]
fn the_client_keeps_a_file_that_is_already_there() {
    let dir = TestDir::new(false);
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    let downloads = dir.downloads();
    fs::write(downloads.join("hello.txt"), "mine\n").unwrap();
    // A link under the name the download wants, pointing outside the folder.
    fs::write(dir.path.join("outside.txt"), "keep\n").unwrap();
    std::os::unix::fs::symlink("../outside.txt", downloads.join("colors.csv")).unwrap();

    for (want, file) in [
        ("File downloads/hello (1).txt received successfully!", "hello.txt"),
        ("File downloads/hello (2).txt received successfully!", "hello.txt"),
        ("File downloads/colors (1).csv received successfully!", "colors.csv"),
    ] {
        let (code, out, err) = client(&dir, lb.addr, &["file", file]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(want), "{out}");
    }
    assert_eq!(fs::read_to_string(downloads.join("hello.txt")).unwrap(), "mine\n");
    let hello = TestDir::data_file("hello.txt");
    assert_eq!(fs::read(downloads.join("hello (1).txt")).unwrap(), hello);
    assert_eq!(fs::read(downloads.join("hello (2).txt")).unwrap(), hello);

    // --force replaces the name, and never writes through a link.
    for file in ["hello.txt", "colors.csv"] {
        let (code, out, err) = client(&dir, lb.addr, &["--force", "file", file]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(fs::read(downloads.join(file)).unwrap(), TestDir::data_file(file));
    }
    assert!(!fs::symlink_metadata(downloads.join("colors.csv")).unwrap().is_symlink());
    assert_eq!(fs::read_to_string(dir.path.join("outside.txt")).unwrap(), "keep\n");
    assert_eq!(
        listing(&downloads),
        ["colors (1).csv", "colors.csv", "hello (1).txt", "hello (2).txt", "hello.txt"]
    );
    bystander.finish();
}

#[test]
fn a_reply_never_reaches_the_wrong_client() {
    // Server 9 repeats its reply to `SELECT 1001 AS n`, sends a stray reply stuck to its reply
    // to `SELECT 1002 AS n`, and, after `SELECT 1003 AS n`, a reply while no request is out.
    let fake = FakeServer::start(9, |line| {
        let stray = answer(9, "SELECT 1 AS n");
        match line {
            "SELECT 1001 AS n" => Act::Send([answer(9, line), answer(9, line)].concat()),
            "SELECT 1002 AS n" => Act::Send([answer(9, line), stray].concat()),
            "SELECT 1003 AS n" => Act::AnswerThenWhenIdle(stray, Duration::from_millis(100)),
            _ => Act::Answer,
        }
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "0"]);
    let bystander = Bystander::start(lb.addr);
    let mut client = Wire::connect(lb.addr);
    for n in [1001, 1002, 2, 3, 4] {
        let reply = client.request(&format!("SELECT {n} AS n"));
        assert_eq!(reply.text(), format!("n: {n}\n"), "{reply:?}");
    }
    fake.wait_for_answers(3);
    bystander.finish();

    // Bytes on an idle connection: the bystander is stopped so that no request is out when
    // they come (one that is out would take them as its reply: the protocol cannot tell).
    let reply = client.request("SELECT 1003 AS n");
    assert_eq!(reply.text(), "n: 1003\n");
    wait_until(START_TIMEOUT, || fake.unsolicited() == 1);
    let bystander = Bystander::start(lb.addr);
    for n in [5, 6] {
        let reply = client.request(&format!("SELECT {n} AS n"));
        assert_eq!(reply.text(), format!("n: {n}\n"), "{reply:?}");
    }
    fake.wait_for_answers(3);
    bystander.finish();

    // Each time, the connection was closed, the server re-probed on a new one, and the event
    // logged and counted.
    wait_until(START_TIMEOUT, || fake.closed() >= 3);
    assert_eq!(fake.closed(), 3);
    assert_eq!(metric(&lb, "minilb_server_stray_total{server=\"9\"}"), 3.0);
    let log = lb.log_text();
    assert_eq!(log.matches("server 9 is out of step").count(), 3, "{log}");
    assert!(log.contains("server 9 is out of step: it sent bytes beyond its reply"));
    assert!(log.contains("server 9 is out of step: it sent bytes that no request asked for"));
    for n in 1..=3 {
        assert!(log.contains(&format!("(stray bytes #{n})")), "{log}");
    }
    assert_eq!(log.matches("it answered the re-probe").count(), 3, "{log}");
}

/// Fake server 9, which hangs up on `SELECT 5 AS n` the first time it comes and answers
/// everything else (the balancer's probe too); with the times that request came.
fn hangs_up_once() -> (FakeServer, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let fake = FakeServer::start(9, move |line| {
        if line == "SELECT 5 AS n" && seen.fetch_add(1, SeqCst) == 0 {
            Act::SendAndClose(Vec::new())
        } else {
            Act::Answer
        }
    });
    (fake, calls)
}

#[test]
fn a_request_the_server_hung_up_on_is_retried_and_the_log_says_so() {
    let (fake, _) = hangs_up_once();
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "1"]);
    let reply = Wire::connect(lb.addr).request("SELECT 5 AS n");
    assert_eq!(reply.text(), "n: 5\n", "{reply:?}");
    let log = lb.log_text();
    assert!(log.contains("req 1: server 9 failed (connection closed)"), "{log}");
    assert!(log.contains("req 1: retrying on another server (attempt 2 of 2)"), "{log}");
}

#[test]
fn with_no_retries_a_request_the_server_hung_up_on_is_sent_once() {
    // A second attempt would be answered, so an `OK` here would mean the balancer sent the
    // request twice although `--retries 0` allows one attempt.
    let (fake, calls) = hangs_up_once();
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "0"]);
    let reply = Wire::connect(lb.addr).request("SELECT 5 AS n");
    assert_eq!(reply.header, "ERR unavailable no server could answer after 1 attempts; try again");
    assert_eq!(calls.load(SeqCst), 1);
}

#[test]
fn a_server_whose_every_connection_holds_junk_costs_the_request_not_forever() {
    // Every connection's probe reply comes with junk after it, so each connection the
    // request takes is found out of step, closed, and re-probed into another such one. The
    // request must end, after its attempts' worth of junk, instead of going round for ever.
    let fake = FakeServer::start(9, |line| match line {
        "SELECT 1" => Act::Send([answer(9, line), b"junk\n".to_vec()].concat()),
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "1"]);
    // Within the test client's REPLY_TIMEOUT (20 s), or the request went round for ever.
    let mut client = Wire::connect(lb.addr);
    client.send_raw(b"SELECT 5 AS n\n");
    let reply =
        client.try_read_reply().expect("no reply within 20 s: the request went round for ever");
    assert_eq!(reply.header, "ERR unavailable no server could answer after 2 attempts; try again");
    // Three out-of-step connections: one more than the two attempts allow.
    let log = lb.log_text();
    assert_eq!(log.matches("server 9 is out of step").count(), 3, "{log}");
    assert_eq!(fake.answered(), 0, "the request must never have been sent");
}

#[test]
fn a_reply_header_must_come_whole_within_the_server_timeout() {
    // Server 9 trickles its reply to `SELECT 1001 AS n` a byte every 300 ms: each byte comes
    // well within --server-timeout, the whole header (14 bytes) does not. Its reply to
    // `SELECT 1002 AS n` has a header at once and a body that trickles: that is fine.
    let gap = Duration::from_millis(300);
    let fake = FakeServer::start(9, move |line| match line {
        "SELECT 1001 AS n" => Act::Trickle { bytes: answer(9, line), at_once: 0, gap },
        "SELECT 1002 AS n" => Act::Trickle { bytes: answer(9, line), at_once: 14, gap },
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &["--retries", "0", "--server-timeout", "1"]);
    let bystander = Bystander::start(lb.addr);
    let mut client = Wire::connect(lb.addr);
    let started = Instant::now();
    let reply = client.request("SELECT 1001 AS n");
    let took = started.elapsed();
    assert_eq!(reply.header, "ERR unavailable no server could answer after 1 attempts; try again");
    // One second, and time for a busy machine; the whole header would take 4.2 s.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(lb.log_text().contains("server 9 failed (no whole reply header within 1.0 s"));
    // A body that keeps coming is relayed, however long it takes in all.
    let reply = client.request("SELECT 1002 AS n");
    assert_eq!(reply.text(), "n: 1002\n");
    fake.wait_for_answers(3);
    bystander.finish();
}

#[test]
fn a_reply_broken_off_costs_that_request_and_the_server_is_reprobed_not_marked_down() {
    // Server 9 breaks off its reply to `file cut.bin` (as a server does when the file is
    // rewritten in place while it is read): too long to hold back, so it is passed on as it
    // comes and the client's connection is closed.
    let mut cut = b"OK 200000 server=9\n".to_vec();
    cut.resize(100_000, b'x');
    let fake = FakeServer::start(9, move |line| match line {
        "file cut.bin" => Act::SendAndClose(cut.clone()),
        _ => Act::Answer,
    });
    let dir = TestDir::new(false);
    let lb = balancer_of(&dir, &fake, &[]);
    let bystander = Bystander::start(lb.addr);
    for _ in 0..3 {
        let mut client = Wire::connect(lb.addr);
        assert!(client.try_request("file cut.bin").is_err());
        // The server is still up: the next client is served, not told `ERR unavailable`.
        let reply = Wire::connect(lb.addr).request("SELECT 1 AS n");
        assert_eq!(reply.text(), "n: 1\n", "{reply:?}");
    }
    fake.wait_for_answers(3);
    bystander.finish();
    let log = lb.log_text();
    assert_eq!(log.matches("server 9 failed mid-reply").count(), 3, "{log}");
    assert_eq!(log.matches("it answered the re-probe").count(), 3, "{log}");
    assert!(!log.contains("server 9 is down"), "{log}");

    // A server that does not answer the re-probe is down.
    fake.stop_listening();
    assert!(Wire::connect(lb.addr).try_request("file cut.bin").is_err());
    wait_until(START_TIMEOUT, || lb.log_text().contains("server 9 is down: the re-probe failed"));
    assert_eq!(Wire::connect(lb.addr).request("SELECT 1 AS n").code(), Some("unavailable"));
}

#[test]
fn a_client_that_reads_slowly_frees_its_server_within_the_request_timeout() {
    let dir = TestDir::new(false);
    // 32 MiB: far more than the socket buffers between here and the balancer hold.
    let big = fs::File::create(dir.path.join("files/big.bin")).unwrap();
    big.set_len(32 * 1024 * 1024).unwrap();
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &["--request-timeout", "2"]);

    // Asks for the big file and reads 1 MiB of it every half second: every write to it makes
    // progress, but the reply's writes share one deadline of --request-timeout, so the server
    // is free again soon after (it would take 16 s at this pace).
    let mut hog = Wire::connect(lb.addr);
    let started = Instant::now();
    hog.send_raw(b"file big.bin\n");
    let reading = std::thread::spawn(move || {
        let mut chunk = vec![0; 1024 * 1024];
        while started.elapsed() < Duration::from_secs(20)
            && hog.reader.read_exact(&mut chunk).is_ok()
        {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let freed = || lb.log_text().contains("client left during the reply");
    wait_until(Duration::from_secs(8), freed);
    let took = started.elapsed();
    println!("a client that reads slowly freed its server after {took:?}");
    assert!(freed() && took < Duration::from_millis(3500), "took {took:?}");
    reading.join().unwrap();
    bystander.finish();
}

#[test]
fn a_file_rewritten_while_downloaded_costs_that_download_not_the_server() {
    let dir = TestDir::new(false);
    // 64 MiB: far more than the socket buffers on the way hold, so the server is still
    // sending it when it is rewritten.
    let path = dir.path.join("files/big.bin");
    fs::File::create(&path).unwrap().set_len(64 * 1024 * 1024).unwrap();
    let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);

    let mut reader = Wire::connect(lb.addr);
    reader.send_raw(b"file big.bin\n");
    let mut header = String::new();
    reader.reader.read_line(&mut header).unwrap();
    assert_eq!(header, "OK 67108864 server=1\n");
    let mut start = vec![0; 1024 * 1024];
    reader.reader.read_exact(&mut start).unwrap();
    // Rewritten in place (not replaced by a rename): it shrinks under the server's feet.
    fs::write(&path, "short\n").unwrap();
    let mut rest = Vec::new();
    let _ = reader.reader.read_to_end(&mut rest);
    assert!(start.len() + rest.len() < 64 * 1024 * 1024);

    // That download is lost; the server is not: it answers the next request.
    let reply = Wire::connect(lb.addr).request("SELECT 5 AS n");
    assert_eq!(reply.text(), "n: 5\n", "{reply:?}");
    let log = lb.log_text();
    assert!(log.contains("server 1 failed mid-reply"), "{log}");
    assert!(log.contains("it answered the re-probe"), "{log}");
    assert!(!log.contains("server 1 is down"), "{log}");
    bystander.finish();
}

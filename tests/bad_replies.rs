//! Broken replies: a server that breaks the protocol behind the balancer, and a balancer that
//! lies to the client. Fake peers are tiny listeners in the test process.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use minilb::servers_file::{self, ServerEntry};
use support::*;

/// How long a fake peer waits for anything, so a broken test fails instead of hanging.
const FAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads one request line from a connection the fake peer accepted.
fn read_request(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line
}

/// How a fake server misbehaves on one connection, after reading one request.
struct Misbehaviour {
    /// What it sends back.
    reply: &'static [u8],
    /// Whether it then hangs up, or stalls with the connection open.
    hang_up: bool,
}

/// A fake server: for each misbehaviour, accepts a connection (the balancer's, or its
/// reconnection), answers the balancer's probe well (a new connection must pass one before
/// it gets requests), reads a request, misbehaves, and waits for the balancer to close the
/// connection; then sends, per misbehaviour, whether the balancer closed it. Then it accepts
/// one more connection and answers well (`OK 5`, `hello`) until the balancer leaves.
fn fake_server(listener: TcpListener, script: Vec<Misbehaviour>) -> Receiver<Vec<bool>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut closed_by_balancer = Vec::new();
        for step in script {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            assert_eq!(
                read_request(&mut reader),
                "SELECT 1\n",
                "the probe comes first"
            );
            conn.write_all(b"OK 7 server=9\none: 1\n").unwrap();
            read_request(&mut reader);
            conn.write_all(step.reply).unwrap();
            if step.hang_up {
                conn.shutdown(Shutdown::Write).unwrap();
            }
            let mut rest = Vec::new();
            closed_by_balancer.push(match reader.read_to_end(&mut rest) {
                Ok(_) => true,
                Err(e) => e.kind() == ErrorKind::ConnectionReset,
            });
        }
        tx.send(closed_by_balancer).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        for _ in 0..100 {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0
                || conn.write_all(b"OK 5 server=9\nhello").is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Records a fake server as server 9 in `file`.
fn register_fake(file: &Path, addr: SocketAddr) {
    let entry = ServerEntry {
        id: 9,
        host: "127.0.0.1".into(),
        port: addr.port(),
        processing_time: 0.0,
        writable: false,
    };
    servers_file::register(file, &entry).unwrap();
}

#[test]
fn a_server_that_breaks_the_protocol_costs_one_err_unavailable_each_time() {
    let dir = TestDir::new(false);
    // A real cluster with a bystander: nobody there notices anything.
    let (_server, _lb, bystander) = watched_cluster(&dir, &[], &[]);

    // A second balancer whose only server is the fake one, with no retries, so that each
    // broken reply reaches the client as `ERR unavailable`.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    register_fake(
        &dir.path.join("fake-servers.json"),
        fake.local_addr().unwrap(),
    );
    let long_header: &'static [u8] = Box::leak(vec![b'O'; 9000].into_boxed_slice());
    let broken_replies = [
        (&b"HELLO\n"[..], false),
        (b"OK abc server=9\n", false),
        (b"OK -5 server=9\n", false),
        (b"OK 5 server=9 garbage\n", false),
        (b"ERR no_such_code whatever\n", false),
        (b"\xff\xfe\n", false),
        (long_header, false),
        (b"", true),
        (b"OK 5", true),
        // A length larger than what follows; then the server hangs up, or stalls.
        (b"OK 100 server=9\nonly ten b", true),
        (b"OK 100 server=9\nonly ten b", false),
    ];
    let mut script: Vec<Misbehaviour> = broken_replies
        .iter()
        .map(|&(reply, hang_up)| Misbehaviour { reply, hang_up })
        .collect();
    // Last, a lie too long to hold back (see below).
    script.push(Misbehaviour {
        reply: b"OK 1000000 server=9\nonly ten b",
        hang_up: true,
    });
    let closed = fake_server(fake, script);
    let broken = start_named_balancer(
        &dir,
        "broken",
        "fake-servers.json",
        1,
        &["--retries", "0", "--server-timeout", "1"],
    );
    let connections = || broken.log_text().matches("Connected to server 9").count();

    let mut client = Wire::connect(broken.addr);
    for (step, (reply, _)) in broken_replies.iter().enumerate() {
        // The balancer reconnects after each failure; wait for it before the next request.
        wait_until(START_TIMEOUT, || connections() > step);
        assert_eq!(
            client.request("SELECT 1").header,
            "ERR unavailable no server could answer after 1 attempts; try again",
            "after the server sent {:?}",
            String::from_utf8_lossy(&reply[..reply.len().min(20)])
        );
    }

    // A length larger than what follows, on a reply too long to hold back: its header is
    // out before the body breaks off, so all the balancer can do is close the client's
    // connection, and the client sees the reply cut short.
    wait_until(START_TIMEOUT, || connections() > broken_replies.len());
    client.send_raw(b"SELECT 1\n");
    let mut header = String::new();
    client.reader.read_line(&mut header).unwrap();
    assert_eq!(header, "OK 1000000 server=9\n");
    let mut body = Vec::new();
    let _ = client.reader.read_to_end(&mut body);
    assert_eq!(body, b"only ten b");

    // The balancer closed every broken connection, reconnected, and serves again.
    let closed = closed.recv_timeout(START_TIMEOUT).unwrap();
    assert_eq!(closed, vec![true; broken_replies.len() + 1]);
    wait_until(START_TIMEOUT, || connections() > broken_replies.len() + 1);
    let reply = Wire::connect(broken.addr).request("SELECT 1");
    assert_eq!(reply.header, "OK 5 server=9");
    assert_eq!(reply.body, b"hello");
    let log = broken.log_text();
    assert!(
        log.contains("server 9 failed (reply body ended after 10 of its 100 bytes)"),
        "{log}"
    );
    assert!(log.contains("server 9 failed mid-reply"), "{log}");
    bystander.finish();
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
    assert!(
        listing(&dir.downloads()).is_empty(),
        "{:?}",
        listing(&dir.downloads())
    );
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
        (
            "File downloads/hello (1).txt received successfully!",
            "hello.txt",
        ),
        (
            "File downloads/hello (2).txt received successfully!",
            "hello.txt",
        ),
        (
            "File downloads/colors (1).csv received successfully!",
            "colors.csv",
        ),
    ] {
        let (code, out, err) = client(&dir, lb.addr, &["file", file]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(want), "{out}");
    }
    assert_eq!(
        fs::read_to_string(downloads.join("hello.txt")).unwrap(),
        "mine\n"
    );
    let hello = TestDir::data_file("hello.txt");
    assert_eq!(fs::read(downloads.join("hello (1).txt")).unwrap(), hello);
    assert_eq!(fs::read(downloads.join("hello (2).txt")).unwrap(), hello);

    // --force replaces the name, and never writes through a link.
    for file in ["hello.txt", "colors.csv"] {
        let (code, out, err) = client(&dir, lb.addr, &["--force", "file", file]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            fs::read(downloads.join(file)).unwrap(),
            TestDir::data_file(file)
        );
    }
    assert!(!fs::symlink_metadata(downloads.join("colors.csv"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        fs::read_to_string(dir.path.join("outside.txt")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        listing(&downloads),
        [
            "colors (1).csv",
            "colors.csv",
            "hello (1).txt",
            "hello (2).txt",
            "hello.txt"
        ]
    );
    bystander.finish();
}

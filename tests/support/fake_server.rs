//! A scriptable fake server, for tests of what the balancer does when a server misbehaves. It
//! answers right what a [`Bystander`](super::Bystander) and the balancer's probe send, and does
//! what the test's script says with the requests it names: an extra reply, stray bytes, a
//! trickled header, a reply cut off, bytes sent on an idle connection.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use minilb::servers_file::{self, ServerEntry};

/// How long a fake connection waits for a request, so a broken test fails instead of hanging.
const FAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the fake server does with one request.
#[derive(Debug, Clone)]
pub enum Act {
    /// Answers right (see [`answer`]).
    Answer,
    /// Sends these bytes as the reply.
    Send(Vec<u8>),
    /// Sends these bytes, then closes its side of the connection.
    SendAndClose(Vec<u8>),
    /// Sends the first `at_once` bytes, then the rest one byte at a time, `gap` apart.
    Trickle { bytes: Vec<u8>, at_once: usize, gap: Duration },
    /// Answers right; then, once no request has come for `quiet`, sends these bytes (they
    /// arrive on an idle connection).
    AnswerThenWhenIdle(Vec<u8>, Duration),
}

/// The script: what to do with each request line (without its `\n`).
pub type Script = dyn Fn(&str) -> Act + Send + Sync;

/// The right reply to `line` from server `id`: `SELECT <x> AS <name>` gives `<name>: <x>\n`
/// (as SQLite would), `file <name>` the file from `data/files`, anything else `ok\n`.
pub fn answer(id: u32, line: &str) -> Vec<u8> {
    let words: Vec<&str> = line.split(' ').collect();
    let body = match words.as_slice() {
        ["SELECT", x, "AS", name] => format!("{name}: {x}\n").into_bytes(),
        ["file", name] => super::TestDir::data_file(name),
        _ => b"ok\n".to_vec(),
    };
    let mut reply = format!("OK {} server={id}\n", body.len()).into_bytes();
    reply.extend_from_slice(&body);
    reply
}

/// A fake server listening on 127.0.0.1, one thread per connection; it stops accepting when
/// dropped (or [`FakeServer::stop_listening`]).
pub struct FakeServer {
    pub id: u32,
    pub addr: SocketAddr,
    /// Connections accepted so far (the balancer's first, and each re-probe's).
    accepted: Arc<AtomicUsize>,
    /// Connections the balancer closed.
    closed: Arc<AtomicUsize>,
    /// Requests answered right so far.
    answered: Arc<AtomicUsize>,
    /// Bytes sent on an idle connection ([`Act::AnswerThenWhenIdle`]) so far.
    unsolicited: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    /// Starts fake server `id`, acting on each request as `script` says.
    pub fn start(id: u32, script: impl Fn(&str) -> Act + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let fake = FakeServer {
            id,
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            closed: Arc::default(),
            answered: Arc::default(),
            unsolicited: Arc::default(),
            stop: Arc::default(),
        };
        let script: Arc<Script> = Arc::new(script);
        let counts = Counts {
            closed: Arc::clone(&fake.closed),
            answered: Arc::clone(&fake.answered),
            unsolicited: Arc::clone(&fake.unsolicited),
        };
        let (accepted, stop) = (Arc::clone(&fake.accepted), Arc::clone(&fake.stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (script, counts) = (Arc::clone(&script), counts.clone());
                std::thread::spawn(move || {
                    if serve(id, conn, &*script, &counts) {
                        counts.closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        fake
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections the balancer has closed so far.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Requests answered right so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests have been answered right (by a bystander, say).
    pub fn wait_for_answers(&self, n: usize) {
        let target = self.answered() + n;
        super::wait_until(super::START_TIMEOUT, || self.answered() >= target);
    }

    /// Times bytes were sent on an idle connection so far.
    pub fn unsolicited(&self) -> usize {
        self.unsolicited.load(Ordering::SeqCst)
    }

    /// Closes the listener: new connections are refused from now on (open ones go on).
    pub fn stop_listening(&self) {
        if !self.stop.swap(true, Ordering::SeqCst) {
            // Wakes the accept loop so that it sees `stop` and drops the listener.
            let _ = TcpStream::connect(self.addr);
        }
    }

    /// Lists this server in the servers file `file`.
    pub fn register(&self, file: &Path) {
        let entry = ServerEntry {
            id: self.id,
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            processing_time: 0.0,
            writable: false,
            workers: 1,
            tls: false,
        };
        servers_file::register(file, &entry).unwrap();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// What the connections of one fake server count, shared with it.
#[derive(Clone)]
struct Counts {
    closed: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    unsolicited: Arc<AtomicUsize>,
}

/// Serves one connection until the balancer closes it (returns true) or it times out or breaks.
/// A connection closed before any request is a health check: not counted.
fn serve(id: u32, conn: TcpStream, script: &Script, counts: &Counts) -> bool {
    conn.set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut requests = 0;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return requests > 0,
            Ok(_) => requests += 1,
            Err(e) => return e.kind() == ErrorKind::ConnectionReset,
        }
        let line = line.trim_end_matches('\n');
        let sent = match script(line) {
            Act::Answer => {
                counts.answered.fetch_add(1, Ordering::SeqCst);
                writer.write_all(&answer(id, line))
            }
            Act::Send(bytes) => writer.write_all(&bytes),
            Act::SendAndClose(bytes) => {
                writer.write_all(&bytes).and_then(|()| writer.shutdown(Shutdown::Write))
            }
            Act::Trickle { bytes, at_once, gap } => {
                writer.write_all(&bytes[..at_once]).and_then(|()| {
                    bytes[at_once..].iter().try_for_each(|b| {
                        std::thread::sleep(gap);
                        writer.write_all(&[*b])
                    })
                })
            }
            Act::AnswerThenWhenIdle(bytes, quiet) => {
                writer.write_all(&answer(id, line)).unwrap();
                // Quiet means no request arrived meanwhile: then none is outstanding.
                reader.get_ref().set_read_timeout(Some(quiet)).unwrap();
                let idle = matches!(
                    reader.fill_buf(),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                );
                reader.get_ref().set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
                if idle {
                    // Counted once sent: a test that waits for the count may then rely on
                    // the bytes being on their way.
                    let sent = writer.write_all(&bytes);
                    counts.unsolicited.fetch_add(1, Ordering::SeqCst);
                    sent
                } else {
                    Ok(())
                }
            }
        };
        if sent.is_err() {
            return true;
        }
    }
}

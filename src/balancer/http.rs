//! A small HTTP/1.1 server for the admin listener, with every limit in sight: at most
//! [`MAX_CONNECTIONS`] connections, each on a small-stack thread; the whole request must arrive
//! before a deadline; a head of at most [`MAX_HEAD`] bytes and a body of at most [`MAX_BODY`];
//! one request per connection. A failed accept (out of descriptors, say) pauses the loop;
//! nothing a peer does ends it. Not tiny_http: with it one peer that never sent its body froze
//! every admin request, running out of descriptors ended its accept thread, and it cannot
//! speak TLS over our `tls::Stream`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gauge::Held;
use crate::protocol::{self, Line, Timed};
use crate::tls::{self, Acceptor};

/// Most admin connections served at once; more are answered `503` and closed.
pub(crate) const MAX_CONNECTIONS: usize = 32;
/// Most bytes in a request's head (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most bytes in a request's body.
pub const MAX_BODY: usize = 64 * 1024;
/// Stack of a connection thread (the handlers keep their data on the heap).
const STACK: usize = 256 * 1024;
/// How long the accept loop rests after a failed accept, so it never spins.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// One request, read whole.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// Who sent it.
    pub remote: SocketAddr,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// An answer: status, content type and body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status code.
    pub code: u16,
    content_type: &'static str,
    body: String,
}

impl Response {
    /// A `200 OK` answer of type `content_type`.
    pub(crate) fn text(content_type: &'static str, body: String) -> Response {
        Response { code: 200, content_type, body }
    }

    /// A JSON answer.
    pub(crate) fn json(code: u16, body: &serde_json::Value) -> Response {
        Response { code, content_type: "application/json", body: body.to_string() }
    }

    /// An error answer: `{"error": why}`.
    pub(crate) fn error(code: u16, why: impl std::fmt::Display) -> Response {
        Response::json(code, &serde_json::json!({ "error": why.to_string() }))
    }
}

/// The answer to plain HTTP on an HTTPS listener.
const PLAIN_ON_HTTPS: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nthis admin listener speaks HTTPS\n";

/// Serves `listener` (HTTPS with `tls`) until `stop` is set and a connection wakes the loop.
/// `handle` answers each request that arrives whole, handshake included, within `deadline`.
pub(crate) fn serve(
    listener: TcpListener,
    deadline: Duration,
    stop: &AtomicBool,
    tls: Option<Acceptor>,
    handle: impl Fn(Request) -> Response + Send + Sync + 'static,
) {
    let handle = Arc::new(handle);
    // Connections being served now; each thread holds one unit.
    let active = Arc::new(AtomicUsize::new(0));
    // Whether the last accept failed: a run of failures is logged once, not ten times a second.
    let mut failing = false;
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                if !failing {
                    log::warn!("admin listener: accept failed: {e}; retrying every 100 ms");
                }
                failing = true;
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        };
        failing = false;
        // Counted here, in the accept thread, so that no burst slips past the limit.
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("admin listener: {MAX_CONNECTIONS} connections already; refused one");
            // A fresh connection's send buffer is empty: this short write does not block.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = write_response(&stream, &Response::error(503, "too many admin connections"));
            continue;
        }
        let (held, handle, tls) = (Arc::clone(&active), Arc::clone(&handle), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("admin-conn".into())
            .stack_size(STACK)
            .spawn(move || {
                let _held = Held::adopt(&held);
                connection(stream, Instant::now() + deadline, tls.as_ref(), &*handle);
            });
        if let Err(e) = spawned {
            // The closure, and the unit it would have adopted, never ran.
            active.fetch_sub(1, Ordering::SeqCst);
            log::error!("admin listener: cannot start a thread: {e}");
        }
    }
}

/// Reads one request, answers it, and closes.
fn connection(
    stream: TcpStream,
    deadline: Instant,
    tls: Option<&Acceptor>,
    handle: &dyn Fn(Request) -> Response,
) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    // Never 0, which would be no limit.
    let left = (deadline - Instant::now()).max(Duration::from_millis(1));
    let stream = match tls::accept(tls, stream, left, PLAIN_ON_HTTPS) {
        Ok(stream) => stream,
        Err(e) => return log::info!("admin listener: {peer}: TLS handshake failed: {e}"),
    };
    // Every read of the request shares one deadline, however it trickles in.
    let mut conn = Timed::new(stream, None);
    conn.deadline.start(Some(deadline - Instant::now()));
    // The handler's answer, or the one that refuses the request.
    let response = read_request(&mut conn, deadline).map_or_else(|refusal| refusal, handle);
    let stream = &mut conn.stream;
    let _ = stream.set_write_timeout(Some((deadline - Instant::now()).max(Duration::from_secs(1))));
    if write_response(&mut *stream, &response).is_ok() {
        stream.close_notify();
        tls::linger(stream.tcp());
    }
}

/// Reads a request's head and body, or says why not as the answer to send.
fn read_request(conn: &mut Timed, deadline: Instant) -> Result<Request, Response> {
    let remote = conn.stream.peer_addr().map_err(|_| Response::error(400, "no peer address"))?;
    let gone = |_: io::Error| {
        if Instant::now() >= deadline {
            Response::error(408, "the request did not arrive in time")
        } else {
            Response::error(400, "the request ended early")
        }
    };
    let mut reader = BufReader::with_capacity(4096, conn);
    let (mut request, length) = read_head(&mut reader, remote).map_err(gone)??;
    let expects = request.header("Expect");
    if length > 0 && expects.is_some_and(|e| e.eq_ignore_ascii_case("100-continue")) {
        let stream = &mut reader.get_mut().stream;
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(gone)?;
    }
    request.body = vec![0; length];
    reader.read_exact(&mut request.body).map_err(gone)?;
    Ok(request)
}

/// Reads a request's head (at most [`MAX_HEAD`] bytes): the request without its body and the
/// body's length (at most [`MAX_BODY`]), or the answer that refuses it.
///
/// # Errors
/// The error from reading.
pub fn read_head(
    reader: &mut impl BufRead,
    remote: SocketAddr,
) -> io::Result<Result<(Request, usize), Response>> {
    let refuse = |code, why| Ok(Err(Response::error(code, why)));
    let mut lines = Vec::new();
    let mut budget = MAX_HEAD;
    loop {
        let mut line = Vec::new();
        match protocol::read_line(reader, &mut line, budget)? {
            Line::Complete => {}
            Line::TooLong => return refuse(431, "the request head is too large"),
            Line::Eof | Line::Truncated => return refuse(400, "incomplete request"),
        }
        budget = budget.saturating_sub(line.len() + 1);
        line.pop_if(|b| *b == b'\r');
        if line.is_empty() {
            return Ok(parse_head(&lines, remote));
        }
        match String::from_utf8(line) {
            Ok(line) => lines.push(line),
            Err(_) => return refuse(400, "the head is not UTF-8"),
        }
    }
}

fn parse_head(lines: &[String], remote: SocketAddr) -> Result<(Request, usize), Response> {
    let first = lines.first().map_or("", String::as_str);
    // Printable ASCII only: a stray `\r` or other control byte is no part of a method or path.
    if !first.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Response::error(400, "bad request line"));
    }
    let parts: Vec<&str> = first.split(' ').collect();
    let [method, target, _version] = parts[..] else {
        return Err(Response::error(400, "bad request line"));
    };
    let mut request = Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        remote,
        body: Vec::new(),
        headers: Vec::new(),
    };
    for header in &lines[1..] {
        let (name, value) =
            header.split_once(':').ok_or_else(|| Response::error(400, "bad header"))?;
        request.headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    if request.header("Transfer-Encoding").is_some() {
        return Err(Response::error(411, "send the body with a Content-Length"));
    }
    let length: usize = request
        .header("Content-Length")
        .map_or(Ok(0), str::parse)
        .map_err(|_| Response::error(400, "bad Content-Length"))?;
    if length > MAX_BODY {
        return Err(Response::error(413, "the body is over 64 KiB"));
    }
    Ok((request, length))
}

fn write_response(mut stream: impl Write, response: &Response) -> io::Result<()> {
    let reason = match response.code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    // One write, not one per piece: over TLS each write is a record of its own.
    let text = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{}",
        response.code,
        response.content_type,
        response.body.len(),
        response.body
    );
    stream.write_all(text.as_bytes())
}

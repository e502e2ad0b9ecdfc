//! The client: sends requests to the balancer (or straight to a server), prints query replies,
//! saves downloads, and says how long each took and which server answered. [`Connection`]
//! also carries the requests of `client bench` (bin/client/bench.rs).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read as _, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::protocol::{self, Line, ReplyHeader, Request, MAX_HEADER_LINE};
use crate::server::file_store::check_file_name;
use crate::tls::{self, Connector, Stream};

/// How long the client waits for the next bytes of a reply before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Guards the temp file of the download in progress, if any: set and cleared by [`save`],
/// taken by the Ctrl-C/SIGTERM handler to remove it.
static PARTIAL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Runs the client: the request given (its words joined by spaces), or with none, an
/// interactive session on stdin. Returns the exit code: 0 on `OK`, 1 on `ERR`, 2 when the
/// balancer cannot be reached or the reply is broken.
pub fn run(config: &ClientConfig, request: &[String]) -> u8 {
    if !config.download_dir.is_dir() {
        eprintln!(
            "client: download folder {} does not exist; create it or pass --download-dir",
            config.download_dir.display()
        );
        return 2;
    }
    // Ctrl-C and SIGTERM remove the temp file of a download in progress, then exit with 130.
    let handler = ctrlc::set_handler(|| {
        let partial = PARTIAL.lock().take();
        if let Some(path) = partial {
            let _ = fs::remove_file(path);
        }
        std::process::exit(130);
    });
    if let Err(e) = handler {
        eprintln!("client: cannot install the Ctrl-C handler: {e}");
        return 2;
    }
    if request.is_empty() {
        interactive(config, &mut io::stdin().lock(), &mut io::stdout())
    } else {
        run_once(config, &request.join(" "))
    }
}

/// Where requests go, and how: the flags of the client and of `client bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Load balancer address (or a server's, to skip the balancer).
    #[arg(long, default_value = "127.0.0.1:5070")]
    pub lb: String,
    /// Speak TLS (to the balancer's `--tls-port`).
    #[arg(long)]
    pub tls: bool,
    /// CA certificate (PEM) that the balancer's certificate must be signed by, with `--tls`
    /// (default: the system's CAs).
    #[arg(long, requires = "tls")]
    pub ca: Option<PathBuf>,
}

impl Target {
    /// With `--tls`, how to speak TLS to `--lb`.
    ///
    /// # Errors
    /// A message naming the CA file that cannot be read, or the host that is not a name.
    pub fn connector(&self) -> Result<Option<Connector>, String> {
        if !self.tls {
            return Ok(None);
        }
        let config = tls::client_config(self.ca.as_deref())?;
        Connector::new(&config, &self.lb).map(Some)
    }
}

/// The client's settings: its command line (`#[command(flatten)]` in `bin/client.rs`).
#[derive(Debug, Clone, clap::Args)]
pub struct ClientConfig {
    /// This client's id, shown in its messages.
    // Required, but defaulted so that `client bench`, which has no id, still parses.
    #[arg(
        value_name = "CLIENT_ID",
        required = true,
        default_value_t = 0,
        hide_default_value = true
    )]
    pub id: u32,
    /// Where requests go.
    #[command(flatten)]
    pub target: Target,
    /// Folder downloads are saved in.
    #[arg(long, default_value = ".")]
    pub download_dir: PathBuf,
    /// Overwrite an existing file instead of saving as `name (1).ext`.
    #[arg(long)]
    pub force: bool,
}

/// A connection to the balancer that carries any number of requests. Requests are written
/// to the stream inside the reader (`get_mut`): one handle, one descriptor.
pub struct Connection {
    reader: BufReader<Stream>,
    header: Vec<u8>,
}

impl Connection {
    /// Connects to `addr` (`host:port`, or a resolved address), over TLS with `tls`.
    ///
    /// # Errors
    /// The connection error; `InvalidData` when the TLS handshake failed (saying why).
    pub fn open(addr: impl ToSocketAddrs, tls: Option<&Connector>) -> io::Result<Connection> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => tls.connect(tcp, READ_TIMEOUT)?,
        };
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Connection { reader: BufReader::with_capacity(64 * 1024, stream), header: Vec::new() })
    }

    /// Sends one request and reads its reply header; the body, if any, is next on the
    /// connection and must be read with [`Connection::copy_body`] before the next request.
    ///
    /// # Errors
    /// An I/O error, or `InvalidData` when the reply breaks the protocol.
    pub fn send(&mut self, request: &Request) -> io::Result<ReplyHeader> {
        self.reader.get_mut().write_all(format!("{}\n", request.line()).as_bytes())?;
        let invalid = |message| io::Error::new(io::ErrorKind::InvalidData, message);
        match protocol::read_line(&mut self.reader, &mut self.header, MAX_HEADER_LINE)? {
            Line::Complete => ReplyHeader::parse(&self.header).map_err(invalid),
            Line::TooLong => Err(invalid("reply header is too long".into())),
            Line::Eof | Line::Truncated => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed before a reply arrived",
            )),
        }
    }

    /// Copies the body of the reply just received, `length` bytes long, to `to`.
    ///
    /// # Errors
    /// An I/O error, or `UnexpectedEof` when the body ends early.
    pub fn copy_body(&mut self, length: u64, to: &mut (impl Write + ?Sized)) -> io::Result<()> {
        let got = io::copy(&mut (&mut self.reader).take(length), to)?;
        if got < length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the reply ended after {got} of its {length} bytes"),
            ));
        }
        Ok(())
    }
}

/// Streams a download into a temp file in the download folder and moves it into place only
/// once every byte has arrived; on any failure the temp file is removed.
fn save(
    conn: &mut Connection,
    config: &ClientConfig,
    name: &str,
    length: u64,
) -> io::Result<PathBuf> {
    check_file_name(name).map_err(|e| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("refusing to save {name:?}: {}", e.message()),
        )
    })?;
    let dir = &config.download_dir;
    remove_stale_parts(dir);
    let tmp = dir.join(format!(".{name}.part.{}", std::process::id()));
    *PARTIAL.lock() = Some(tmp.clone());
    let result = (|| {
        // A fresh file, never one already there: a symlink planted under the temp name
        // must not redirect the download elsewhere.
        let _ = fs::remove_file(&tmp);
        let mut file = File::create_new(&tmp)?;
        conn.copy_body(length, &mut file)?;
        file.sync_all()?;
        place(&tmp, dir, name, config.force)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    *PARTIAL.lock() = None;
    result
}

/// Removes the temp files (`.<name>.part.<pid>`) that clients killed mid-download (by SIGKILL,
/// or a crash) left in `dir`: those whose process no longer runs.
fn remove_stale_parts(dir: &Path) {
    // An unreadable folder has nothing to remove.
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let pid = file_name
            .to_str()
            .and_then(|n| n.strip_prefix('.'))
            .and_then(|n| n.rsplit_once(".part."))
            .filter(|(name, _)| !name.is_empty())
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !is_running(pid)) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` runs. Without `/proc` (not Linux) it cannot be told, so it is
/// assumed to: a stale file is kept rather than a live download removed.
fn is_running(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Moves the finished temp file to `name`, or to `name (1)`, `name (2)`... when a file of that
/// name exists and `force` is off. Linking never replaces a file that appeared meanwhile.
fn place(tmp: &Path, dir: &Path, name: &str, force: bool) -> io::Result<PathBuf> {
    let target = dir.join(name);
    if force {
        fs::rename(tmp, &target)?;
        return Ok(target);
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let numbered = (1..10_000).map(|n| dir.join(format!("{stem} ({n}){ext}")));
    for path in std::iter::once(target).chain(numbered) {
        match fs::hard_link(tmp, &path) {
            Ok(()) => {
                fs::remove_file(tmp)?;
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("too many files named like {name}; use --force to overwrite"),
    ))
}

/// Sends one request, prints the outcome, and returns the exit code (see [`run`]).
fn run_once(config: &ClientConfig, line: &str) -> u8 {
    // A query pasted over several lines is one request: the protocol's lines end at `\n`.
    let line = line.replace(['\r', '\n'], " ");
    let request = match Request::parse(line.trim().as_bytes()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("client {}: {}", config.id, e.message());
            return 1;
        }
    };
    let done = config.target.connector().and_then(|tls| {
        let mut conn = connect(&config.target, tls.as_ref())?;
        perform(&mut conn, config, &request, &mut io::stdout().lock()).map_err(|e| e.to_string())
    });
    match done {
        Ok(ok) => u8::from(!ok),
        Err(e) => {
            eprintln!("client {}: {e}", config.id);
            2
        }
    }
}

/// Prompts `Enter query: ` and answers requests until end of input or `quit`, on one
/// connection (reopened if it breaks). Returns the exit code of the last request.
fn interactive(config: &ClientConfig, input: &mut dyn BufRead, out: &mut dyn Write) -> u8 {
    let id = config.id;
    let tls = match config.target.connector() {
        Ok(tls) => tls,
        Err(e) => {
            let _ = writeln!(out, "client {id}: {e}");
            return 2;
        }
    };
    let open = || connect(&config.target, tls.as_ref());
    let mut conn: Option<Connection> = None;
    let mut code = 0;
    loop {
        let _ = write!(out, "Enter query: ");
        let _ = out.flush();
        let mut line = String::new();
        if !matches!(input.read_line(&mut line), Ok(n) if n > 0) {
            let _ = writeln!(out);
            return code;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "quit" | "exit" => return code,
            _ => {}
        }
        let request = match Request::parse(line.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(out, "{}", e.message());
                code = 1;
                continue;
            }
        };
        // The connection kept from the last request, or a new one.
        let c = match conn.take().map_or_else(open, Ok) {
            Ok(c) => conn.insert(c),
            Err(e) => {
                let _ = writeln!(out, "client {id}: {e}");
                code = 2;
                continue;
            }
        };
        code = match perform(c, config, &request, out) {
            Ok(ok) => u8::from(!ok),
            Err(e) => {
                let _ = writeln!(out, "client {id}: {e}; reconnecting for the next request");
                conn = None;
                2
            }
        };
    }
}

/// Sends one request and prints what happened, like the original client: a query's body, a
/// file saved to the download folder, or the `ERR` line. Returns whether the reply was `OK`.
///
/// # Errors
/// An I/O or protocol error; the connection should then be dropped. A partial download is
/// removed.
fn perform(
    conn: &mut Connection,
    config: &ClientConfig,
    request: &Request,
    out: &mut dyn Write,
) -> io::Result<bool> {
    writeln!(out, "Sending request from client {}", config.id)?;
    if let Request::File(name) = request {
        writeln!(out, "Preparing to receive the file: {name}")?;
    }
    let started = Instant::now();
    let reply = conn.send(request)?;
    let server = reply.field("server").unwrap_or("?");
    let length = reply.body_length();
    let outcome = match (&reply, request) {
        (ReplyHeader::Err(e), _) => format!("ERR {}: {}", e.code(), e.message()),
        (ReplyHeader::Ok { .. }, Request::Query(_)) => {
            conn.copy_body(length, out)?;
            if length > 0 {
                out.write_all(b"\n")?;
            }
            format!("Answered by server {server}")
        }
        (ReplyHeader::Ok { .. }, Request::File(name)) => {
            let path = save(conn, config, name, length)?;
            let path = path.display();
            format!("File {path} received successfully! ({length} bytes from server {server})")
        }
    };
    let secs = started.elapsed().as_secs_f64();
    writeln!(out, "{outcome}\nTime taken: {secs:.3} s")?;
    out.flush()?;
    Ok(matches!(reply, ReplyHeader::Ok { .. }))
}

/// Connects to `--lb`; the error says why in words.
fn connect(target: &Target, tls: Option<&Connector>) -> Result<Connection, String> {
    let lb = &target.lb;
    Connection::open(lb, tls).map_err(|e| {
        // A typo in --lb, or a failed TLS handshake, is not a balancer that is down.
        if lb.to_socket_addrs().is_err() {
            format!("--lb {lb}: not a host:port address, or an unknown host name ({e}); e.g. --lb 127.0.0.1:5070")
        } else if e.kind() == io::ErrorKind::InvalidData {
            format!("{lb}: {e}")
        } else {
            unreachable(lb, e)
        }
    })
}

/// Says that nothing answers at `lb` (`--lb`), and what to do about it.
pub fn unreachable(lb: &str, why: impl std::fmt::Display) -> String {
    format!("cannot reach the load balancer at {lb}: {why} (is it running? start it with `loadbalancer`, or pass --lb host:port)")
}

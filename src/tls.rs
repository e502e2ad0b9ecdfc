//! Connections: [`Stream`], plain TCP or TLS over TCP (rustls), read and written the same
//! way; loading PEM certificates and keys; handshakes with a deadline; and closing a
//! connection gently ([`linger`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::DerefMut;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ConnectionCommon, RootCertStore, ServerConfig, SideData, StreamOwned};

/// Where Debian and Ubuntu keep the system's trusted CAs, used when no `--ca` is given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The first byte of every TLS handshake record (a ClientHello starts with it).
pub(crate) const HANDSHAKE_RECORD: u8 = 0x16;
/// How long a connection being closed after an error keeps reading (and discarding) what its
/// peer still sends, so the close does not reset the connection before the peer reads the reply.
pub(crate) const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// The server side's settings: its certificate and key.
pub type Acceptor = Arc<ServerConfig>;

/// A connection: plain TCP, or TLS over TCP. [`Stream::try_clone`] gives a second handle on
/// the same connection, so that one can read while the other writes, as with a `TcpStream`.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the socket beside the session, for timeouts, peeking and shutdown.
    Tls {
        /// The socket, shared with the TLS session (no descriptor per handle).
        tcp: Arc<TcpStream>,
        /// Guards the TLS session, shared by the handles of one connection; they take turns
        /// (a request, then its reply), so it is never waited for.
        tls: Arc<Mutex<Box<dyn Io>>>,
    },
}

/// A TLS session over its socket.
pub trait Io: Read + Write + Send {
    /// Tells the peer that nothing more will be sent (a TLS `close_notify`).
    fn close_notify(&mut self);
    /// Sends `bufs` at once, together in one record when they fit: a reply's header and a
    /// small body arrive in one piece, as a client reading one record (OpenSSL's) expects.
    fn send_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
}

impl<C, S> Io for StreamOwned<C, Socket>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Send,
    S: SideData,
{
    fn close_notify(&mut self) {
        self.conn.send_close_notify();
        let _ = self.conn.complete_io(&mut self.sock);
    }

    fn send_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.conn.writer().write_vectored(bufs)?;
        self.flush()?;
        Ok(n)
    }
}

impl Stream {
    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls { tcp, .. } => tcp,
        }
    }

    /// Another handle on the same connection (a new descriptor only for plain TCP, so an
    /// error only when none is left).
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Plain(tcp) => Stream::Plain(tcp.try_clone()?),
            Stream::Tls { tcp, tls } => Stream::Tls { tcp: Arc::clone(tcp), tls: Arc::clone(tls) },
        })
    }

    /// The peer's address; an error when the connection is gone.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// Says that nothing more will be sent: a peer reading to the end sees a clean end of
    /// file, not a TLS session cut short. Nothing to do for plain TCP.
    pub fn close_notify(&mut self) {
        if let Stream::Tls { tls, .. } = self {
            tls.lock().close_notify();
        }
    }

    /// [`TcpStream::set_read_timeout`] on the socket.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    /// [`TcpStream::set_write_timeout`] on the socket.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls { tls, .. } => tls.lock().read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            // Sent at once: callers do not flush, and a write's timeout must cover its bytes.
            Stream::Tls { tls, .. } => tls.lock().send_vectored(&[io::IoSlice::new(buf)]),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write_vectored(bufs),
            Stream::Tls { tls, .. } => tls.lock().send_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket as the TLS session reads and writes it, shared with [`Stream::Tls`].
pub struct Socket(Arc<TcpStream>);

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the certificate chain in `cert` and the private key in `key_file` (PEM files); the
/// error names the file that is missing, unreadable or holds no certificate or key.
pub fn server_config(cert: &Path, key_file: &Path) -> Result<ServerConfig, String> {
    let certs = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read the private key {}: {e}", key_file.display()))?;
    // AES-128-GCM first, whatever the client prefers, as HAProxy and nginx do: as safe as
    // AES-256 here, and a third cheaper per byte (rustls would follow the client's order).
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| !format!("{:?}", s.suite()).contains("AES_128_GCM"));
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key_file.display()))?;
    config.ignore_client_order = true;
    Ok(config)
}

/// Trusts the CAs in the PEM file `ca`, or the system's when there is none; the error names
/// the file that is missing, unreadable or holds no certificate.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CAS));
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(read_certs(path)?);
    let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The server side of a connection: plain TCP without `tls`; with it, a handshake on `tcp`,
/// all of it within `limit` (0: no limit), `TimedOut` when the peer was too slow. A peer whose
/// first byte does not start a handshake (someone typing plain text) is sent `refusal`, in
/// plain text, so that it learns why.
pub fn accept(
    tls: Option<&Acceptor>,
    mut tcp: TcpStream,
    limit: Duration,
    refusal: &[u8],
) -> io::Result<Stream> {
    let Some(config) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let started = Instant::now();
    let timeout = (!limit.is_zero()).then_some(limit);
    tcp.set_read_timeout(timeout)?;
    let mut first = [0u8; 1];
    match tcp.peek(&mut first) {
        Ok(1) if first[0] != HANDSHAKE_RECORD => {
            tcp.set_write_timeout(timeout)?;
            tcp.write_all(refusal)?;
            linger(&tcp);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a TLS handshake (plain text to the TLS port?)",
            ));
        }
        // Nothing at all within the limit: the handshake's clock has run out too.
        Err(e) if timed_out(&e) => return Err(too_slow(limit)),
        // A close is the handshake's to report.
        _ => {}
    }
    let conn = rustls::ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?;
    handshake(conn, tcp, started, limit)
}

/// A TLS client's settings for one server: whom to trust, and the name (or IP address) its
/// certificate must carry.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    /// For the server at `addr` (`host:port`), trusting what `config` trusts; an error when
    /// the host is not a valid name or address.
    pub fn new(config: &Arc<ClientConfig>, addr: &str) -> Result<Connector, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host} is not a host name or IP address for TLS: {e}"))?;
        Ok(Connector { config: Arc::clone(config), name })
    }

    /// Does the client side of a handshake on `tcp`, within `limit` (0: no limit);
    /// `InvalidData` saying why when the certificate does not verify.
    pub fn connect(&self, tcp: TcpStream, limit: Duration) -> io::Result<Stream> {
        let conn = rustls::ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        handshake(conn, tcp, Instant::now(), limit).map_err(|e| match certificate_error(&e) {
            Some(why) => io::Error::new(io::ErrorKind::InvalidData, why),
            None if e.kind() == io::ErrorKind::InvalidData => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS handshake failed: {e} (is this a TLS port?)"),
            ),
            None => e,
        })
    }
}

fn too_slow(limit: Duration) -> io::Error {
    let message = format!("no TLS handshake within {:.1} s", limit.as_secs_f64());
    io::Error::new(io::ErrorKind::TimedOut, message)
}

/// Says what is wrong with the peer's certificate, when that is why `e` happened.
fn certificate_error(e: &io::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(why) = inner else {
        return None;
    };
    let hint = match why {
        C::UnknownIssuer => {
            " (signed by a CA not trusted here: pass its certificate with --ca FILE)"
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            " (it was made for another host name or address)"
        }
        C::Expired | C::ExpiredContext { .. } => " (it has expired)",
        _ => "",
    };
    Some(format!("certificate not trusted: {inner}{hint}"))
}

/// Runs a handshake on `tcp`, all of it within `limit` of `started` (0: no limit).
fn handshake<C, S>(
    mut conn: C,
    tcp: TcpStream,
    started: Instant,
    limit: Duration,
) -> io::Result<Stream>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Send + 'static,
    S: SideData + 'static,
{
    let tcp = Arc::new(tcp);
    let mut sock = Socket(Arc::clone(&tcp));
    let deadline = (!limit.is_zero()).then(|| started + limit);
    // One record at a time, each read and write waiting only for the time left, so a peer
    // that trickles its handshake is dropped at the deadline.
    while conn.is_handshaking() || conn.wants_write() {
        let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(too_slow(limit));
        }
        tcp.set_read_timeout(left)?;
        tcp.set_write_timeout(left)?;
        step(&mut conn, &mut sock).map_err(|e| if timed_out(&e) { too_slow(limit) } else { e })?;
    }
    let session: Box<dyn Io> = Box::new(StreamOwned::new(conn, sock));
    Ok(Stream::Tls { tcp, tls: Arc::new(Mutex::new(session)) })
}

/// One step of a handshake: sends what is due, or reads what came and processes it.
fn step<S: SideData>(conn: &mut ConnectionCommon<S>, sock: &mut Socket) -> io::Result<()> {
    if conn.wants_write() {
        conn.write_tls(sock)?;
    } else if conn.read_tls(sock)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed during the TLS handshake",
        ));
    } else if let Err(e) = conn.process_new_packets() {
        // Tell the peer why (an alert) before giving up.
        let _ = conn.write_tls(sock);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// Whether `e` is a socket timeout firing: Linux reports an expired `SO_RCVTIMEO` or
/// `SO_SNDTIMEO` as `WouldBlock`, other systems as `TimedOut`.
pub(crate) fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Closes a connection gently after its last reply: stop sending, then read and discard what
/// the peer still sends, for at most [`LINGER`] and [`LINGER_BYTES`], so that unread bytes do
/// not make the close a reset that could destroy the reply before the peer reads it.
pub(crate) fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut scratch = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

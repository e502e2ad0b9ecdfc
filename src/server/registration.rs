//! How a server makes itself known to balancers: by recording itself in the servers file, or
//! by joining a balancer over the network (`--join`), through the balancer's admin listener.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::servers_file::{self, ServerEntry};
use crate::tls::{Connector, Stream};

/// How long a join or leave request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where this server is registered.
pub(crate) enum Registration {
    /// In a servers file shared with the balancer.
    File(PathBuf),
    /// With a balancer's admin listener at `admin` (`host:port`), presenting `token`; with
    /// `tls` (`--ca`), over HTTPS, verifying the balancer's certificate.
    Join { admin: String, token: Option<String>, tls: Option<Connector> },
}

impl Registration {
    /// Records `entry` (`joining`) or removes it; a message saying what failed.
    pub fn update(&self, entry: &ServerEntry, joining: bool) -> Result<(), String> {
        match self {
            Registration::File(path) if joining => servers_file::register(path, entry)
                .map_err(|e| format!("cannot record this server in {}: {e}", path.display())),
            Registration::File(path) => servers_file::deregister(path, entry.id, entry.port)
                .map_err(|e| format!("cannot remove this server from {}: {e}", path.display())),
            Registration::Join { admin, token, tls } => {
                // On leaving, the entry says which process leaves, should a newer one have
                // the same id.
                let (method, path, verb) = match joining {
                    true => ("POST", "/servers".to_string(), "join"),
                    false => ("DELETE", format!("/servers/{}", entry.id), "leave"),
                };
                let body = serde_json::to_string(entry).map_err(|e| e.to_string())?;
                http(admin, tls.as_ref(), method, &path, token.as_deref(), &body)
                    .map_err(|e| format!("cannot {verb} the balancer at {admin}: {e}"))
            }
        }
    }
}

/// One HTTP/1.1 request (HTTPS with `tls`) with `Connection: close`; `Ok` on a 2xx status.
/// Small enough to read, so no HTTP client crate is needed.
fn http(
    addr: &str,
    tls: Option<&Connector>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(), String> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| format!("{addr} does not resolve"))?;
    let tcp = TcpStream::connect_timeout(&target, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => tls.connect(tcp, HTTP_TIMEOUT).map_err(|e| e.to_string())?,
    };
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .and_then(|()| (&mut stream).take(64 * 1024).read_to_end(&mut answer))
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer is not HTTP")?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    Err(format!("HTTP {status}: {message}"))
}

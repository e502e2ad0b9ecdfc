//! The servers file (`data/servers.json`): the running servers, which add themselves on start
//! and remove themselves on a clean exit, and which the balancer reads. Updates lock
//! `<file>.lock`, write a temp file and rename it over the servers file, so servers starting
//! together never lose each other's entries and a reader never sees a half-written file.
//! Every field of an entry is range-checked as it is read, so the servers file and joins over
//! the network can hand the balancer nothing it cannot use.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use crate::cli::MAX_SECONDS;

/// Longest host name accepted (a DNS name is at most 253 characters).
pub(crate) const MAX_HOST: usize = 255;
/// Most workers a server may have: the balancer keeps a connection open to each.
pub(crate) const MAX_WORKERS: usize = 64;
/// How long [`register`] waits for a server recorded under the same id to accept a connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// One running server, as recorded in the servers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server's id, as given on its command line.
    pub id: u32,
    /// Host or address it listens on.
    #[serde(deserialize_with = "host")]
    pub host: String,
    /// Port it listens on.
    #[serde(deserialize_with = "port")]
    pub port: u16,
    /// Declared seconds per request (its "power": smaller is faster).
    #[serde(deserialize_with = "seconds")]
    pub processing_time: f64,
    /// Whether its database accepts writes (then a query that may have run is never retried).
    #[serde(default)]
    pub writable: bool,
    /// Requests it processes at once (absent in older files: 1).
    #[serde(default = "one", deserialize_with = "workers")]
    pub workers: usize,
    /// Whether it speaks TLS (`server --tls-cert`); the balancer then verifies its certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl ServerEntry {
    /// `host:port`, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether `other` names the same place, however spelled (`localhost`, `127.1` and
    /// `127.0.0.1` are one address). Resolves host names, so it may wait for DNS.
    pub(crate) fn same_address(&self, other: &ServerEntry) -> bool {
        if self.port != other.port {
            return false;
        }
        // Resolved only when spelled apart; a host that does not resolve is at no address.
        let resolve = |e: &ServerEntry| e.address().to_socket_addrs().into_iter().flatten();
        self.address() == other.address() || {
            let mine: Vec<SocketAddr> = resolve(self).collect();
            resolve(other).any(|a| mine.contains(&a))
        }
    }
}

/// A TCP connection to `addr` (`host:port`), to the first of its addresses that takes one
/// within `timeout`; or the last error.
pub(crate) fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address does not resolve");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads a `T` and keeps it if `ok` says so; otherwise the error is `why`.
fn checked<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    ok: impl Fn(&T) -> bool,
    why: impl Fn() -> String,
) -> Result<T, D::Error> {
    let value = T::deserialize(d)?;
    ok(&value).then_some(value).ok_or_else(|| D::Error::custom(why()))
}

fn host<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let ok = |h: &String| {
        (1..=MAX_HOST).contains(&h.len()) && !h.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    // The host itself is not echoed: it may be long or full of control characters.
    checked(d, ok, || {
        format!("host must be 1 to {MAX_HOST} characters, with no spaces or control characters")
    })
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    checked(d, |p| *p != 0, || "port must be from 1 to 65535".into())
}

fn one() -> usize {
    1
}

fn workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let why = || format!("workers must be from 1 to {MAX_WORKERS}");
    checked(d, |n| (1..=MAX_WORKERS).contains(n), why)
}

/// Checked here so that no later sum of durations (a timeout plus this) can overflow.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let why = || format!("processing_time must be a number of seconds from 0 to {MAX_SECONDS}");
    checked(d, |s| (0.0..=MAX_SECONDS).contains(s), why)
}

/// Reads the servers file. A missing file is an empty list (no server has started yet).
///
/// # Errors
/// An I/O error, or `InvalidData` naming the file when it is not a JSON list of valid servers.
/// An empty or blank file is `InvalidData` too: it is what an editor or `>` leaves mid-write,
/// not a list, and taking it for "no servers" would drain every server at once.
pub(crate) fn read(path: &Path) -> io::Result<Vec<ServerEntry>> {
    let text = match fs::read_to_string(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        text => text?,
    };
    let invalid = |why: String| {
        let fix = "fix it or replace it with [] (the list with no server)";
        io::Error::new(io::ErrorKind::InvalidData, format!("{} {why}; {fix}", path.display()))
    };
    if text.trim().is_empty() {
        return Err(invalid("is empty".into()));
    }
    serde_json::from_str(&text)
        .map_err(|e| invalid(format!("is not a JSON list of valid servers ({e})")))
}

/// Records `entry`. An entry with the same id at another address is replaced when its server
/// no longer accepts connections (it crashed); while it does, `entry` is refused, since two
/// servers with one id would each take the other's place.
///
/// # Errors
/// `AlreadyExists` when a server with this id still answers at its recorded address, or an
/// I/O error from locking, reading or writing the file.
pub fn register(path: &Path, entry: &ServerEntry) -> io::Result<()> {
    update(path, |list| {
        // Checked under the file lock (for at most ANSWER_TIMEOUT), so two servers starting
        // with one id cannot both find the place free.
        let old = list.iter().find(|e| e.id == entry.id && e.address() != entry.address());
        if let Some(old) = old {
            let (id, at) = (old.id, old.address());
            if connect(&at, ANSWER_TIMEOUT).is_ok() {
                let why = format!("server {id} is already running at {at}: stop it first, or start this one with another id");
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, why));
            }
            log::warn!(
                "server {id} was recorded at {at}, where nothing answers now: taking its place"
            );
        }
        list.retain(|e| e.id != entry.id);
        list.push(entry.clone());
        list.sort_by_key(|e| e.id);
        Ok(())
    })
}

/// Removes the entry with this id and port (one recorded by a newer server with the same id
/// on another port is left alone).
///
/// # Errors
/// An I/O error from locking, reading or writing the file.
pub(crate) fn deregister(path: &Path, id: u32, port: u16) -> io::Result<()> {
    update(path, |list| {
        list.retain(|e| !(e.id == id && e.port == port));
        Ok(())
    })
}

/// Applies `change` to the list under the file lock and replaces the file atomically, unless
/// `change` refuses.
fn update(
    path: &Path,
    change: impl FnOnce(&mut Vec<ServerEntry>) -> io::Result<()>,
) -> io::Result<()> {
    // The lock file serialises writers across processes; it is never renamed, unlike the
    // servers file itself, so every writer locks the same inode.
    let lock =
        OpenOptions::new().create(true).truncate(false).write(true).open(sibling(path, ".lock"))?;
    lock.lock()?;
    let mut list = read(path)?;
    change(&mut list)?;
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let write = || {
        let mut f = File::create(&tmp)?;
        let text = serde_json::to_string_pretty(&list).map_err(io::Error::other)?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    // `lock` is released when dropped.
    write().inspect_err(|_| _ = fs::remove_file(&tmp))
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir::ScratchDir;
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A servers file's path in a scratch folder; the folder goes with the guard.
    fn temp_file(name: &str) -> (PathBuf, ScratchDir) {
        let dir = ScratchDir::new(&format!("servers-file-{name}"));
        (dir.join("servers.json"), dir)
    }

    fn entry(id: u32, port: u16) -> ServerEntry {
        ServerEntry {
            id,
            host: "127.0.0.1".into(),
            port,
            processing_time: 0.5,
            writable: false,
            workers: 1,
            tls: false,
        }
    }

    /// A loopback port where nothing listens (any more).
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[test]
    fn a_missing_file_is_an_empty_list_and_a_blank_one_is_an_error() {
        let (path, _dir) = temp_file("empty");
        assert!(read(&path).unwrap().is_empty());
        for blank in ["", "  \n", "\t"] {
            fs::write(&path, blank).unwrap();
            let e = read(&path).unwrap_err();
            assert!(e.to_string().contains("is empty"), "{e}");
            assert!(e.to_string().contains("replace it with []"), "{e}");
        }
        fs::write(&path, "{nope").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.to_string().contains("replace it with []"), "{e}");
    }

    #[test]
    fn every_field_is_range_checked_as_it_is_read() {
        let parse = |id: &str, host: &str, port: &str, secs: &str| {
            serde_json::from_str::<ServerEntry>(&format!(
                r#"{{"id": {id}, "host": {host}, "port": {port}, "processing_time": {secs}}}"#
            ))
        };
        let good = parse("1", r#""127.0.0.1""#, "5071", "0.5").unwrap();
        assert_eq!(good, entry(1, 5071));
        assert!(parse("4294967295", r#""h""#, "65535", "86400").is_ok());
        let long_host = format!("\"{}\"", "a".repeat(MAX_HOST + 1));
        for (id, host, port, secs, why) in [
            ("1", r#""h""#, "1", "1.8e19", "processing_time"),
            ("1", r#""h""#, "1", "-0.1", "processing_time"),
            ("1", r#""h""#, "1", "86400.5", "processing_time"),
            ("1", r#""h""#, "0", "0", "port"),
            ("1", r#""h""#, "65536", "0", ""),
            ("1", r#""h""#, "-1", "0", ""),
            ("-1", r#""h""#, "1", "0", ""),
            ("4294967296", r#""h""#, "1", "0", ""),
            ("1", r#""""#, "1", "0", "host"),
            ("1", r#""a b""#, "1", "0", "host"),
            ("1", r#""a\u0000""#, "1", "0", "host"),
            ("1", &long_host, "1", "0", "host"),
        ] {
            let e = parse(id, host, port, secs).unwrap_err().to_string();
            assert!(e.contains(why), "{id} {host} {port} {secs}: {e}");
        }
    }

    #[test]
    fn workers_default_to_one_and_are_range_checked() {
        let parse = |workers: &str| {
            serde_json::from_str::<ServerEntry>(&format!(
                r#"{{"id": 1, "host": "h", "port": 1, "processing_time": 0{workers}}}"#
            ))
            .map(|e| e.workers)
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse(""), Ok(1));
        assert_eq!(parse(r#", "workers": 64"#), Ok(64));
        for bad in ["0", "65", "-1"] {
            let e = parse(&format!(r#", "workers": {bad}"#)).unwrap_err();
            assert!(e.contains("workers") || bad == "-1", "{bad}: {e}");
        }
    }

    #[test]
    fn spellings_of_one_address_are_the_same_address() {
        let mut other = entry(2, 5071);
        for host in ["localhost", "127.1", "127.0.0.1"] {
            other.host = host.into();
            assert!(entry(1, 5071).same_address(&other), "{host}");
        }
        other.host = "127.0.0.2".into();
        assert!(!entry(1, 5071).same_address(&other));
        assert!(!entry(1, 5071).same_address(&entry(1, 5072)));
    }

    #[test]
    fn register_replaces_a_gone_server_and_deregister_checks_port() {
        let (path, _dir) = temp_file("replace");
        let (old, new, other) = (closed_port(), closed_port(), closed_port());
        register(&path, &entry(1, old)).unwrap();
        register(&path, &entry(2, other)).unwrap();
        register(&path, &entry(1, new)).unwrap();
        assert_eq!(read(&path).unwrap(), vec![entry(1, new), entry(2, other)]);
        deregister(&path, 1, old).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        deregister(&path, 1, new).unwrap();
        assert_eq!(read(&path).unwrap(), vec![entry(2, other)]);
    }

    #[test]
    fn register_refuses_an_id_whose_server_still_answers() {
        let (path, _dir) = temp_file("refuse");
        let running = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = running.local_addr().unwrap().port();
        register(&path, &entry(1, port)).unwrap();
        let e = register(&path, &entry(1, closed_port())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(e.to_string().contains("already running"), "{e}");
        assert_eq!(read(&path).unwrap(), vec![entry(1, port)]);
        // The same server registering again (same address) is no clash.
        register(&path, &entry(1, port)).unwrap();
    }

    #[test]
    fn concurrent_registrations_are_all_kept() {
        let (path, _dir) = temp_file("concurrent");
        let path = Arc::new(path);
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = Arc::clone(&path);
                std::thread::spawn(move || register(&path, &entry(i, 6000 + i as u16)).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ids: Vec<u32> = read(&path).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids, (0..16).collect::<Vec<_>>());
    }
}

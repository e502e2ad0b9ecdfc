//! The servers file (`data/servers.json`): the list of running servers that the balancer
//! reads. Servers add themselves on start and remove themselves on a clean exit.
//!
//! Updates take an exclusive lock on `<file>.lock`, write a temp file and rename it over the
//! servers file, so servers starting together never lose each other's entries and a reader
//! never sees a half-written file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One running server, as recorded in the servers file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerEntry {
    /// The server's id, as given on its command line.
    pub id: u32,
    /// Host or address it listens on.
    pub host: String,
    /// Port it listens on.
    pub port: u16,
    /// Declared seconds per request (its "power": smaller is faster).
    pub processing_time: f64,
    /// Whether its database accepts writes (then a query that may have run is never retried).
    #[serde(default)]
    pub writable: bool,
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
}

/// Reads the servers file. A missing or empty file is an empty list.
///
/// # Errors
/// An I/O error, or `InvalidData` naming the file when it is not a JSON list of servers.
pub fn read(path: &Path) -> io::Result<Vec<ServerEntry>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a JSON list of servers ({e}); fix it or replace it with []",
                path.display()
            ),
        )
    })
}

/// Records `entry`, replacing any entry with the same id (left by a server that crashed).
///
/// # Errors
/// An I/O error from locking, reading or writing the file.
pub fn register(path: &Path, entry: &ServerEntry) -> io::Result<()> {
    update(path, |list| {
        list.retain(|e| e.id != entry.id);
        list.push(entry.clone());
        list.sort_by_key(|e| e.id);
    })
}

/// Removes the entry with this id and port (one recorded by a newer server with the same id
/// on another port is left alone).
///
/// # Errors
/// An I/O error from locking, reading or writing the file.
pub fn deregister(path: &Path, id: u32, port: u16) -> io::Result<()> {
    update(path, |list| {
        list.retain(|e| !(e.id == id && e.port == port))
    })
}

/// Applies `change` to the list under the file lock and replaces the file atomically.
fn update(path: &Path, change: impl FnOnce(&mut Vec<ServerEntry>)) -> io::Result<()> {
    // The lock file serialises writers across processes; it is never renamed, unlike the
    // servers file itself, so every writer locks the same inode.
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sibling(path, ".lock"))?;
    lock.lock()?;
    let mut list = read(path)?;
    change(&mut list);
    let tmp = sibling(path, &format!(".tmp.{}", std::process::id()));
    let result = write_file(&tmp, &list).and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
    // `lock` is released when dropped.
}

fn write_file(path: &Path, list: &[ServerEntry]) -> io::Result<()> {
    let mut f = File::create(path)?;
    let mut text = serde_json::to_string_pretty(list).map_err(io::Error::other)?;
    text.push('\n');
    f.write_all(text.as_bytes())?;
    f.sync_all()
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
    use std::sync::Arc;

    fn temp_file(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("minilb-servers-file-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("servers.json")
    }

    fn entry(id: u32, port: u16) -> ServerEntry {
        ServerEntry {
            id,
            host: "127.0.0.1".into(),
            port,
            processing_time: 0.5,
            writable: false,
        }
    }

    #[test]
    fn missing_and_empty_files_are_empty_lists() {
        let path = temp_file("empty");
        assert!(read(&path).unwrap().is_empty());
        fs::write(&path, "  \n").unwrap();
        assert!(read(&path).unwrap().is_empty());
        fs::write(&path, "{nope").unwrap();
        let e = read(&path).unwrap_err();
        assert!(e.to_string().contains("replace it with []"), "{e}");
    }

    #[test]
    fn register_replaces_same_id_and_deregister_checks_port() {
        let path = temp_file("replace");
        register(&path, &entry(1, 5071)).unwrap();
        register(&path, &entry(2, 5072)).unwrap();
        register(&path, &entry(1, 6071)).unwrap();
        assert_eq!(read(&path).unwrap(), vec![entry(1, 6071), entry(2, 5072)]);
        deregister(&path, 1, 5071).unwrap();
        assert_eq!(read(&path).unwrap().len(), 2);
        deregister(&path, 1, 6071).unwrap();
        assert_eq!(read(&path).unwrap(), vec![entry(2, 5072)]);
    }

    #[test]
    fn concurrent_registrations_are_all_kept() {
        let path = Arc::new(temp_file("concurrent"));
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

//! The client's downloads leave no temp files behind: not when it is stopped by Ctrl-C or
//! SIGTERM mid-download, nor (cleaned up at the next download) when it was killed outright.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use support::*;

/// A server that answers one `file` request with the header and the first 64 KiB of a 100 MB
/// body, then stalls (up to a minute) until the client hangs up.
fn stalling_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut request = String::new();
        BufReader::new(conn.try_clone().unwrap()).read_line(&mut request).unwrap();
        assert_eq!(request, "file big.bin\n");
        conn.write_all(b"OK 100000000 server=9\n").unwrap();
        conn.write_all(&[7u8; 64 * 1024]).unwrap();
        // Until the client is gone.
        let _ = conn.read(&mut [0u8; 16]);
    });
    (addr, thread)
}

/// The download folder's temp files, `.<name>.part.<pid>`.
fn part_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part."))
        .collect();
    names.sort();
    names
}

#[test]
fn a_client_stopped_mid_download_removes_its_temp_file() {
    for signal_name in ["INT", "TERM"] {
        let dir = TestDir::new(false);
        let (addr, server) = stalling_server();
        let mut client = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["1", "--lb", &addr.to_string(), "--download-dir", "downloads"])
            .args(["file", "big.bin"])
            .current_dir(&dir.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let part = dir.downloads().join(format!(".big.bin.part.{}", client.id()));
        // Mid-download: the temp file holds part of the body.
        wait_until(START_TIMEOUT, || fs::metadata(&part).is_ok_and(|m| m.len() == 64 * 1024));
        signal(client.id(), signal_name);
        let mut status = None;
        wait_until(Duration::from_secs(30), || {
            status = client.try_wait().unwrap();
            status.is_some()
        });
        let status = status.expect("the client exited");
        assert_eq!(part_files(&dir.downloads()), Vec::<String>::new(), "SIG{signal_name}");
        assert_eq!(status.code(), Some(130), "SIG{signal_name}");
        server.join().unwrap();
    }
}

#[test]
fn a_download_removes_the_temp_files_of_dead_clients_only() {
    let dir = TestDir::new(false);
    let (server, lb, bystander) = watched_cluster(&dir, &[], &[]);
    // A pid no process has now: one that just ended.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = gone.id();
    let live = std::process::id();
    let downloads = dir.downloads();
    for name in [
        format!(".hello.txt.part.{dead}"),
        format!(".other.bin.part.{dead}"),
        format!(".hello.txt.part.{live}"),
        "notes.part.1".to_string(),
        format!(".part.{dead}"),
    ] {
        fs::write(downloads.join(name), b"partial").unwrap();
    }

    for addr in [lb.addr, server.addr] {
        let (code, out, err) = run_client(
            &dir.path,
            &["1", "--lb", &addr.to_string(), "--download-dir", "downloads", "file", "hello.txt"],
            "",
        );
        assert_eq!(code, 0, "{out}{err}");
    }
    // The dead client's files are gone; a running one's download and other files are kept.
    assert_eq!(
        part_files(&downloads),
        vec![
            format!(".hello.txt.part.{live}"),
            format!(".part.{dead}"),
            "notes.part.1".to_string(),
        ]
    );
    assert_eq!(fs::read(downloads.join("hello.txt")).unwrap(), TestDir::data_file("hello.txt"));
    bystander.finish();
}

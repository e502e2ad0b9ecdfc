//! The shared database: an `OK` for a write means the write is committed, and a request leaves
//! nothing behind on its server's one connection (shared by every client that server serves)
//! but committed data. A well-behaved client runs alongside every test.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use support::*;

const NO_TRANSACTIONS: &str = "ERR forbidden BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed: each request is its own transaction, committed before its OK";
const NO_TEMP: &str = "ERR forbidden temporary tables, views, triggers and indexes are not allowed: they would outlive the request and be seen by the server's next clients";

/// Every kind of transaction control, in several spellings.
const TRANSACTION_CONTROL: [&str; 10] = [
    "BEGIN",
    "begin transaction",
    "BeGiN ImMeDiAtE",
    "/* hidden */ BEGIN EXCLUSIVE TRANSACTION;",
    "COMMIT",
    "END",
    "ROLLBACK",
    "SAVEPOINT s",
    "RELEASE SAVEPOINT s",
    "ROLLBACK TRANSACTION TO SAVEPOINT s",
];

/// Sends each request on `wire` and asserts the reply header.
fn expect_all(wire: &mut Wire, requests: &[&str], want: &str) {
    for sql in requests {
        assert_eq!(wire.request(sql).header, want, "for {sql}");
    }
}

/// A client writing one row after another through `addr` until `stop` is set (at most 5,000),
/// checking that every write is answered `OK ... changes=1`; `done` counts them. Returns the
/// names it wrote.
fn writer(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut wire = Wire::connect(addr);
        let mut written = Vec::new();
        while written.len() < 5000 && !stop.load(Ordering::SeqCst) {
            let name = format!("written-{}", written.len());
            let reply = wire.request(&format!(
                "INSERT INTO COLORS (Name, HEX, RGB) VALUES ('{name}', '#000000', 'rgb(0,0,0)')"
            ));
            assert!(reply.is_ok() && reply.header.contains(" changes=1"), "{name}: {reply:?}");
            written.push(name);
            done.fetch_add(1, Ordering::SeqCst);
        }
        written
    })
}

/// The names in `COLORS` that a test wrote, asked of the server at `addr`.
fn written_rows(addr: std::net::SocketAddr) -> Vec<String> {
    let reply = Wire::connect(addr).request(
        "SELECT Name FROM COLORS WHERE Name LIKE 'written-%' OR Name = 'bad' ORDER BY rowid",
    );
    assert!(reply.is_ok(), "{reply:?}");
    reply.text().lines().filter_map(|l| l.strip_prefix("Name: ")).map(String::from).collect()
}

#[test]
fn transaction_control_is_refused_and_every_ok_write_survives_a_restart() {
    let dir = TestDir::new(true);
    let mut one = start_server(&dir, 1, 0.0, &[]);
    let mut two = start_server(&dir, 2, 0.0, &[]);
    let mut lb = start_balancer(&dir, 2, &[]);
    let bystander = Bystander::start(lb.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writes = writer(lb.addr, Arc::clone(&stop), Arc::clone(&done));
    wait_until(START_TIMEOUT, || done.load(Ordering::SeqCst) > 0);

    // The bad client tries to hold a transaction open on server 2, directly and through the
    // balancer, while the writer's requests land on both servers.
    for addr in [two.addr, lb.addr] {
        let mut bad = Wire::connect(addr);
        expect_all(&mut bad, &TRANSACTION_CONTROL, NO_TRANSACTIONS);
        // Its own write after the refused BEGIN is committed like any other.
        let reply = bad
            .request("INSERT INTO COLORS (Name, HEX, RGB) VALUES ('bad', '#000000', 'rgb(0,0,0)')");
        assert!(reply.header.contains(" changes=1"), "{reply:?}");
        let reply = bad.request("DELETE FROM COLORS WHERE Name = 'bad'");
        assert!(reply.header.contains(" changes=1"), "{reply:?}");
    }
    // A write OK'd just before a refused BEGIN is kept too.
    let mut bad = Wire::connect(two.addr);
    let reply =
        bad.request("INSERT INTO COLORS (Name, HEX, RGB) VALUES ('bad', '#000000', 'rgb(0,0,0)')");
    assert!(reply.header.contains(" changes=1"), "{reply:?}");
    expect_all(&mut bad, &["BEGIN"], NO_TRANSACTIONS);
    drop(bad);

    // Writes went on throughout, and go on after.
    let after = done.load(Ordering::SeqCst) + 10;
    wait_until(START_TIMEOUT, || writes.is_finished() || done.load(Ordering::SeqCst) >= after);
    stop.store(true, Ordering::SeqCst);
    let mut written = writes.join().expect("a write was not answered OK");
    bystander.finish();

    // Every write answered OK is in the database after both servers stopped.
    assert_eq!(lb.interrupt(Duration::from_secs(30)), Some(0));
    assert_eq!(one.interrupt(Duration::from_secs(30)), Some(0));
    assert_eq!(two.interrupt(Duration::from_secs(30)), Some(0));
    let three = start_server(&dir, 3, 0.0, &[]);
    written.push("bad".into());
    let mut found = written_rows(three.addr);
    found.sort();
    written.sort();
    assert_eq!(found, written);
}

#[test]
fn temp_objects_and_session_pragmas_do_not_reach_the_next_client() {
    for writable in [true, false] {
        let dir = TestDir::new(writable);
        // One server: every client through the balancer shares its database connection.
        let (_server, lb, bystander) = watched_cluster(&dir, &[], &[]);
        let mut first = Wire::connect(lb.addr);
        let foreign_keys = first.request("PRAGMA foreign_keys").text();
        expect_all(
            &mut first,
            &[
                "CREATE TEMP TABLE t(x)",
                "CREATE TEMPORARY TABLE t AS SELECT * FROM COLORS",
                "CREATE TABLE temp.t(x)",
                "CREATE TEMP VIEW v AS SELECT 1 AS x",
                "CREATE TEMP TRIGGER g AFTER INSERT ON COLORS BEGIN SELECT 1; END",
            ],
            NO_TEMP,
        );
        expect_all(&mut first, &TRANSACTION_CONTROL, NO_TRANSACTIONS);
        for sql in [
            "PRAGMA foreign_keys = OFF",
            "PRAGMA query_only = 1",
            "PRAGMA recursive_triggers = ON",
            "SELECT last_insert_rowid() AS id",
        ] {
            let reply = first.request(sql);
            assert_eq!(reply.code(), Some("forbidden"), "{sql}: {reply:?}");
            assert!(reply.header.contains("not allowed"), "{sql}: {reply:?}");
        }

        // The next client finds the session as it was.
        let mut next = Wire::connect(lb.addr);
        for table in ["t", "v"] {
            let reply = next.request(&format!("SELECT * FROM {table}"));
            assert!(
                reply.header.starts_with(&format!("ERR sql no such table: {table}")),
                "{reply:?}"
            );
        }
        assert_eq!(next.request("PRAGMA foreign_keys").text(), foreign_keys);
        if writable {
            let reply = next.request("UPDATE COLORS SET HEX = HEX WHERE Name = 'White'");
            assert!(reply.header.contains(" changes=1"), "{reply:?}");
        }
        bystander.finish();
    }
}

//! The shared database on PostgreSQL: each test starts its own throwaway cluster (see
//! `support::postgres`), and is skipped with one line when PostgreSQL is not installed.

mod support;

use std::fs;

use support::postgres::{Postgres, OWNER, READER};
use support::*;

/// A test folder whose `database.json` names `pg` as `role`.
fn pg_dir(pg: &Postgres, role: &str, writable: bool) -> TestDir {
    let dir = TestDir::new(writable);
    fs::write(
        dir.path.join("database.json"),
        format!(
            "{{\"url\": \"{}\", \"writable\": {writable}}}\n",
            pg.url(role)
        ),
    )
    .unwrap();
    dir
}

#[test]
fn a_server_serves_queries_from_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let dir = pg_dir(&pg, OWNER, true);
    let server = start_server(&dir, 1, 0.0, &[]);
    let reply = Wire::connect(server.addr).request("SELECT \"Name\" FROM COLORS LIMIT 2");
    assert_eq!(reply.text(), "Name: White\n\nName: Silver\n", "{reply:?}");
    assert_eq!(pg.psql("colors", "SELECT count(*) FROM colors"), "148");
    let _ = READER;
}

//! The database every server shares: `database.json` names an SQLite file, or a PostgreSQL
//! database ([`super::postgres`], for servers on several machines); the first server to start
//! creates the `COLORS` table from a CSV seed. Queries run here and come back as the
//! protocol's text, written for both engines by [`push_value`].
//!
//! Read-only mode is enforced by SQLite (the file is opened `SQLITE_OPEN_READ_ONLY`), never by
//! looking at the SQL text; so are the other refusals ([`super::authorizer`]) and the limits:
//! time (a progress handler), reply size (checked as rows are formatted) and the largest
//! string or blob a query may build (`SQLITE_LIMIT_LENGTH`, so memory stays bounded).
//!
//! A server has one connection, shared by every client it serves, so a request must leave
//! nothing on it but committed data: the authorizer refuses transaction control, temp objects
//! and pragmas that change the session, and after every statement a transaction still open
//! (which the authorizer should have made impossible) is rolled back and answered `ERR`, so
//! an `OK` for a write always means the write is committed.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde::Deserialize;

use crate::error::{Code, Error};
use crate::server::authorizer::Authorizer;
use crate::server::postgres::{hide_password, Postgres};

/// How long a writer waits for another server's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The contents of `database.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The SQLite file; a relative path is relative to the folder of `database.json`.
    pub path: Option<PathBuf>,
    /// A PostgreSQL database instead (`postgres://user@host:5432/colors`).
    pub url: Option<String>,
    /// Whether queries may change the database.
    #[serde(default)]
    pub writable: bool,
    /// CSV that fills the `COLORS` table when the database does not exist yet.
    #[serde(default = "default_seed")]
    pub seed: PathBuf,
}

fn default_seed() -> PathBuf {
    PathBuf::from("colors.csv")
}

impl DatabaseConfig {
    /// Reads `database.json`, resolving relative paths against its folder.
    ///
    /// # Errors
    /// A message naming the file when it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<DatabaseConfig, String> {
        let text = fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read database config {}: {e} (run from the project folder, or pass --db)",
                path.display()
            )
        })?;
        let mut config: DatabaseConfig = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a valid database config ({e}); expected {{\"path\": \"colors.db\", \"writable\": false}}",
                path.display()
            )
        })?;
        if config.path.is_some() == config.url.is_some() {
            return Err(format!(
                "{} must name exactly one database: \"path\" (an SQLite file) or \"url\" (PostgreSQL)",
                path.display()
            ));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        config.path = config.path.map(|p| dir.join(p));
        config.seed = dir.join(&config.seed);
        Ok(config)
    }

    /// The database's name for messages: its file, or its URL with the password hidden.
    pub fn name(&self) -> String {
        match (&self.path, &self.url) {
            (Some(path), _) => path.display().to_string(),
            (None, url) => hide_password(url.as_deref().unwrap_or_default()),
        }
    }
}

/// Limits applied to every query (a query running longer is interrupted: `ERR timeout`; a
/// larger reply is refused: `ERR too_large`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct QueryLimits {
    /// Seconds a query may run before it is stopped.
    #[arg(long = "query-timeout", value_name = "QUERY_TIMEOUT", default_value = "5", value_parser = crate::cli::parse_seconds)]
    pub timeout: Duration,
    /// Largest query reply, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_reply: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(5),
            max_reply: 16 * 1024 * 1024,
        }
    }
}

impl QueryLimits {
    /// The error for a reply over the limit, from either engine.
    pub(crate) fn too_large(&self) -> Error {
        Code::TooLarge.msg(format!(
            "query result is over the {} byte reply limit; add a LIMIT or select fewer columns",
            self.max_reply
        ))
    }

    /// The error for a query stopped at the time limit, from either engine.
    pub(crate) fn timed_out(&self) -> Error {
        Code::Timeout.msg(format!(
            "query ran longer than {:.1} s and was stopped",
            self.timeout.as_secs_f64()
        ))
    }
}

/// A query's answer: the reply body and what the header says about it.
#[derive(Debug)]
pub struct QueryOutput {
    /// The text body: `Column: value` lines, a blank line between rows, or `No output`.
    pub body: Vec<u8>,
    /// Rows returned.
    pub rows: usize,
    /// Rows changed, for a statement that writes.
    pub changes: Option<u64>,
}

/// One open connection to the shared database, of either engine.
pub struct Database(Engine);

enum Engine {
    Sqlite(Sqlite),
    Postgres(Box<Postgres>),
}

impl Database {
    /// Opens the database named by `config`, creating its `COLORS` table from the seed CSV
    /// first if it does not exist.
    ///
    /// # Errors
    /// A message saying what failed and what to do.
    pub fn open(config: &DatabaseConfig, limits: QueryLimits) -> Result<Database, String> {
        match (&config.path, &config.url) {
            (Some(path), _) => Sqlite::open(path, config, limits).map(Engine::Sqlite),
            (None, url) => Postgres::open(url.as_deref().unwrap_or_default(), config, limits)
                .map(|db| Engine::Postgres(Box::new(db))),
        }
        .map(Database)
    }

    /// Runs one SQL statement and formats its rows.
    ///
    /// # Errors
    /// [`Code::Sql`] when the database refuses it, [`Code::Forbidden`] for a write on a
    /// read-only database or what the authorizer refuses, [`Code::Timeout`] past the time
    /// limit, [`Code::TooLarge`] past the reply limit, [`Code::Unavailable`] while a database
    /// server cannot be reached.
    pub fn query(&mut self, sql: &str) -> Result<QueryOutput, Error> {
        match &mut self.0 {
            Engine::Sqlite(db) => db.query(sql),
            Engine::Postgres(db) => db.query(sql),
        }
    }
}

/// One open connection to an SQLite file.
struct Sqlite {
    conn: Connection,
    writable: bool,
    limits: QueryLimits,
    /// Milliseconds since `epoch` after which the running query is interrupted; read by
    /// SQLite's progress handler on the same thread, so relaxed ordering is enough.
    deadline_ms: Arc<AtomicU64>,
    epoch: Instant,
    authorizer: Authorizer,
}

impl Sqlite {
    fn open(path: &Path, config: &DatabaseConfig, limits: QueryLimits) -> Result<Sqlite, String> {
        if !path.exists() {
            create_from_seed(path, &config.seed)?;
        }
        let flags = if config.writable {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } else {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags)
            .map_err(|e| format!("cannot open database {}: {e}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
        let epoch = Instant::now();
        let deadline_ms = Arc::new(AtomicU64::new(u64::MAX));
        let deadline = Arc::clone(&deadline_ms);
        conn.progress_handler(
            10_000,
            Some(move || epoch.elapsed().as_millis() as u64 > deadline.load(Ordering::Relaxed)),
        )
        .map_err(|e| e.to_string())?;
        // No string or blob may grow past the reply limit: `randomblob(1e9)` fails at once
        // instead of taking a gigabyte.
        let longest = i32::try_from(limits.max_reply).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, longest)
            .map_err(|e| e.to_string())?;
        let authorizer = Authorizer::install(&mut conn).map_err(|e| e.to_string())?;
        Ok(Sqlite {
            conn,
            writable: config.writable,
            limits,
            deadline_ms,
            epoch,
            authorizer,
        })
    }

    fn query(&mut self, sql: &str) -> Result<QueryOutput, Error> {
        self.authorizer.take_refusal();
        let deadline = self.epoch.elapsed() + self.limits.timeout;
        self.deadline_ms
            .store(deadline.as_millis() as u64, Ordering::Relaxed);
        let result = self.run(sql);
        self.deadline_ms.store(u64::MAX, Ordering::Relaxed);
        if !self.conn.is_autocommit() {
            // Whatever the statement did is not committed: it must not be answered OK, nor
            // be carried into the next client's requests.
            // Should the rollback fail, the transaction stays open and every later request
            // lands here too: answered ERR, never OK.
            match self.authorizer.roll_back(&self.conn) {
                Ok(()) => log::error!("a statement left a transaction open: rolled back"),
                Err(e) => log::error!("a statement left a transaction open; rollback failed: {e}"),
            }
            return Err(Code::Forbidden.msg("the statement left a transaction open: it was rolled back and nothing it did was kept"));
        }
        result.map_err(|e| self.map_error(e))
    }

    fn run(&mut self, sql: &str) -> Result<QueryOutput, QueryError> {
        let mut stmt = self.conn.prepare(sql)?;
        let writes = !stmt.readonly();
        // `changes()` is left as the last INSERT, UPDATE or DELETE set it, maybe another
        // client's: a statement that changed no row (`CREATE TABLE`, say) reports 0.
        let total_before = self.conn.total_changes();
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut body = String::new();
        let mut rows = 0;
        let mut query = stmt.query([])?;
        while let Some(row) = query.next()? {
            if rows > 0 {
                body.push('\n');
            }
            for (i, name) in names.iter().enumerate() {
                if !push_value(&mut body, name, row.get_ref(i)?, self.limits.max_reply) {
                    return Err(QueryError::TooLarge);
                }
            }
            rows += 1;
        }
        drop(query);
        if rows == 0 {
            body.push_str("No output");
        }
        Ok(QueryOutput {
            body: body.into_bytes(),
            rows,
            changes: writes.then(|| {
                if self.conn.total_changes() == total_before {
                    0
                } else {
                    self.conn.changes()
                }
            }),
        })
    }

    fn map_error(&self, e: QueryError) -> Error {
        let too_large = || self.limits.too_large();
        // A refused function shows as a plain SQLite error, a refused statement as
        // `SQLITE_AUTH`: the authorizer's own record says which, and why.
        if let Some(why) = self.authorizer.take_refusal() {
            return Code::Forbidden.msg(why);
        }
        match e {
            QueryError::TooLarge => too_large(),
            QueryError::Sql(e) => match e.sqlite_error_code() {
                Some(ErrorCode::AuthorizationForStatementDenied) => {
                    Code::Forbidden.msg("the query uses a feature this server does not allow")
                }
                Some(ErrorCode::TooBig) => too_large(),
                Some(ErrorCode::ReadOnly) if !self.writable => Code::Forbidden.msg("the database is read-only; set \"writable\": true in database.json to allow writes"),
                Some(ErrorCode::OperationInterrupted) => self.limits.timed_out(),
                _ => match e {
                    rusqlite::Error::MultipleStatement => {
                        Code::Sql.msg("send one SQL statement per request")
                    }
                    rusqlite::Error::Empty => {
                        Code::Sql.msg("the query holds no SQL statement")
                    }
                    e => Code::Sql.msg(e.to_string()),
                },
            },
        }
    }
}

/// Appends `name: value` to a reply body, the one text format of both engines: integers and
/// reals as Rust prints them, text as is, blobs as `X'00FF'`, `NULL`. False (and the body
/// left short of the value) when the body would grow past `max`.
pub(crate) fn push_value(body: &mut String, name: &str, value: ValueRef, max: usize) -> bool {
    // Checked before a long value is copied in, so the body never grows far past the limit.
    let long = match value {
        ValueRef::Text(t) => t.len(),
        ValueRef::Blob(b) => 2 * b.len() + 3,
        _ => 0,
    };
    if body.len() + name.len() + long > max {
        return false;
    }
    let _ = write!(body, "{name}: ");
    match value {
        ValueRef::Null => body.push_str("NULL"),
        ValueRef::Integer(n) => {
            let _ = write!(body, "{n}");
        }
        ValueRef::Real(x) => {
            let _ = write!(body, "{x}");
        }
        ValueRef::Text(t) => body.push_str(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => {
            body.push_str("X'");
            for byte in b {
                let _ = write!(body, "{byte:02X}");
            }
            body.push('\'');
        }
    }
    body.push('\n');
    body.len() <= max
}

enum QueryError {
    Sql(rusqlite::Error),
    TooLarge,
}

impl From<rusqlite::Error> for QueryError {
    fn from(e: rusqlite::Error) -> Self {
        QueryError::Sql(e)
    }
}

/// Builds the database in a temp file and links it into place only when complete, so servers
/// starting together never see a half-built database; the loser of the race just uses the
/// winner's file.
fn create_from_seed(path: &Path, seed: &Path) -> Result<(), String> {
    let (header, rows) = read_seed(seed)
        .map_err(|e| format!("database {} does not exist, and {e}", path.display()))?;
    let (header, rows) = (&header, &rows);
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = build(&tmp, header, rows).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    });
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        log::info!(
            "created database {} from {} ({} rows)",
            path.display(),
            seed.display(),
            rows.len()
        );
    }
    result
}

fn build(path: &Path, header: &[String], rows: &[Vec<String>]) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let fail = |e: rusqlite::Error| format!("cannot build database {}: {e}", path.display());
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    tx.execute(&create_table(header), []).map_err(fail)?;
    {
        let marks = vec!["?"; header.len()].join(", ");
        let mut insert = tx
            .prepare(&format!("INSERT INTO COLORS VALUES ({marks})"))
            .map_err(fail)?;
        for row in rows {
            insert
                .execute(rusqlite::params_from_iter(row.iter()))
                .map_err(fail)?;
        }
    }
    tx.commit().map_err(fail)?;
    conn.close().map_err(|(_, e)| fail(e))
}

/// The `CREATE TABLE COLORS` both engines run: a text column per header field, named as in
/// the header (quoted, so PostgreSQL keeps its case too).
pub(crate) fn create_table(header: &[String]) -> String {
    let columns: Vec<String> = header
        .iter()
        .map(|h| format!("\"{}\" TEXT", h.replace('"', "\"\"")))
        .collect();
    format!("CREATE TABLE COLORS ({})", columns.join(", "))
}

/// Reads the seed CSV that fills a new `COLORS` table: its header, then rows as long as it.
pub(crate) fn read_seed(seed: &Path) -> Result<(Vec<String>, Vec<Vec<String>>), String> {
    let csv = fs::read_to_string(seed).map_err(|e| {
        format!(
            "the CSV to create it from, {} (\"seed\" in database.json), cannot be read: {e}",
            seed.display()
        )
    })?;
    let mut rows = parse_csv(&csv).map_err(|e| format!("{}: {e}", seed.display()))?;
    if rows.is_empty() {
        return Err(format!("{} is empty", seed.display()));
    }
    let header = rows.remove(0);
    for (n, row) in rows.iter().enumerate() {
        if row.len() != header.len() {
            return Err(format!(
                "seed row {} has {} fields, the header has {}",
                n + 2,
                row.len(),
                header.len()
            ));
        }
    }
    Ok((header, rows))
}

/// Reads the seed: comma-separated fields, optionally in double quotes (`""` is a quote).
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    // Quotes open and close in pairs (`""` too): an odd count is one left open, which the
    // csv crate would take as a field running to the end of the file.
    if text.matches('"').count() % 2 == 1 {
        return Err("a quote is never closed".into());
    }
    // `flexible`: a row of the wrong length gets `build`'s message, which names the row.
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes())
        .records()
        .map(|row| {
            Ok(row
                .map_err(|e| e.to_string())?
                .iter()
                .map(String::from)
                .collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir::ScratchDir;

    #[test]
    fn csv_handles_quotes() {
        let rows = parse_csv("Name,RGB\nWhite,\"rgb(1,2,3)\"\n\n\"a \"\"b\"\"\",x\n").unwrap();
        assert_eq!(
            rows,
            vec![
                vec!["Name".to_string(), "RGB".into()],
                vec!["White".into(), "rgb(1,2,3)".into()],
                vec!["a \"b\"".into(), "x".into()],
            ]
        );
        assert!(parse_csv("a,\"b\n").is_err());
    }

    /// A database in a scratch folder, seeded with two colours; the folder goes with the guard.
    fn temp_db(name: &str, writable: bool) -> (DatabaseConfig, ScratchDir) {
        let dir = ScratchDir::new(&format!("db-{name}"));
        fs::write(
            dir.join("colors.csv"),
            "Name,HEX,RGB\nWhite,#FFFFFF,\"rgb(255,255,255)\"\nBlack,#000000,\"rgb(0,0,0)\"\n",
        )
        .unwrap();
        let config = DatabaseConfig {
            path: Some(dir.join("colors.db")),
            url: None,
            writable,
            seed: dir.join("colors.csv"),
        };
        (config, dir)
    }

    fn open(config: &DatabaseConfig, limits: QueryLimits) -> Sqlite {
        Sqlite::open(config.path.as_ref().unwrap(), config, limits).unwrap()
    }

    #[test]
    fn formats_rows_like_the_original() {
        let (config, _dir) = temp_db("format", false);
        let mut db = Database::open(&config, QueryLimits::default()).unwrap();
        let out = db.query("SELECT * FROM COLORS").unwrap();
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            "Name: White\nHEX: #FFFFFF\nRGB: rgb(255,255,255)\n\nName: Black\nHEX: #000000\nRGB: rgb(0,0,0)\n"
        );
        assert_eq!(out.rows, 2);
        assert_eq!(out.changes, None);
        let out = db
            .query("SELECT NULL AS n, 1 AS i, 2.5 AS r, x'00ff' AS b")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            "n: NULL\ni: 1\nr: 2.5\nb: X'00FF'\n"
        );
        let out = db
            .query("SELECT * FROM COLORS WHERE Name = 'Nope'")
            .unwrap();
        assert_eq!(out.body, b"No output");
    }

    #[test]
    fn read_only_is_enforced_by_sqlite() {
        let (config, _dir) = temp_db("ro", false);
        let mut db = open(&config, QueryLimits::default());
        let e = db
            .query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')")
            .unwrap_err();
        assert_eq!(e.code(), "forbidden", "{e}");
        let out = db.query("SELECT count(*) AS n FROM COLORS").unwrap();
        assert_eq!(out.body, b"n: 2\n");
    }

    #[test]
    fn writes_and_errors() {
        let (config, _dir) = temp_db("rw", true);
        let mut db = open(&config, QueryLimits::default());
        let out = db
            .query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')")
            .unwrap();
        assert_eq!(out.changes, Some(1));
        assert_eq!(out.body, b"No output");
        assert_eq!(db.query("SELEC 1").unwrap_err().code(), "sql");
        assert_eq!(db.query("SELECT 1; SELECT 2").unwrap_err().code(), "sql");
        assert_eq!(db.query("-- nothing").unwrap_err().code(), "sql");
    }

    #[test]
    fn limits_time_and_size() {
        let limits = QueryLimits {
            timeout: Duration::from_millis(200),
            max_reply: 1000,
        };
        let (config, _dir) = temp_db("limits", false);
        let mut db = open(&config, limits);
        let e = db
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c")
            .unwrap_err();
        assert_eq!(e.code(), "timeout", "{e}");
        let e = db
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c")
            .unwrap_err();
        assert_eq!(e.code(), "too_large", "{e}");
        // The connection still works after both.
        assert_eq!(db.query("SELECT 1 AS one").unwrap().body, b"one: 1\n");
    }

    #[test]
    fn refuses_attach_vacuum_extensions_and_pragmas_that_write() {
        for writable in [false, true] {
            let (config, _dir) = temp_db(&format!("authorizer-{writable}"), writable);
            let copy = config.path.as_ref().unwrap().with_file_name("copy.db");
            let mut db = open(&config, QueryLimits::default());
            for sql in [
                format!("ATTACH '{}' AS x", copy.display()),
                format!("ATTACH DATABASE '{}' AS x", copy.display()),
                format!("VACUUM INTO '{}'", copy.display()),
                "VACUUM".into(),
                "DETACH main".into(),
                "SELECT load_extension('/nonexistent/ext.so')".into(),
                "PRAGMA journal_mode = DELETE".into(),
                "PRAGMA writable_schema = 1".into(),
                "PRAGMA optimize".into(),
                "PRAGMA user_version = 3".into(),
            ] {
                let e = db.query(&sql).unwrap_err();
                assert_eq!(e.code(), "forbidden", "{sql}: {e}");
                assert!(e.message().contains("not allowed"), "{sql}: {e}");
            }
            assert!(
                !copy.exists(),
                "a refused statement created {}",
                copy.display()
            );
            // Pragmas that only read still work, and nothing changed.
            assert_eq!(
                db.query("PRAGMA journal_mode").unwrap().body,
                b"journal_mode: wal\n"
            );
            assert_eq!(
                db.query("PRAGMA user_version").unwrap().body,
                b"user_version: 0\n"
            );
            let out = db.query("PRAGMA table_info(COLORS)").unwrap();
            assert_eq!(out.rows, 3);
        }
    }

    #[test]
    fn no_value_may_outgrow_the_reply_limit() {
        let limits = QueryLimits {
            timeout: Duration::from_secs(5),
            max_reply: 1000,
        };
        let (config, _dir) = temp_db("longest", false);
        let mut db = open(&config, limits);
        for sql in [
            "SELECT randomblob(2000) AS b",
            "SELECT length(zeroblob(5000)) AS n",
            "SELECT length(printf('%.*c', 5000, 'x')) AS n",
            "SELECT replace(hex(zeroblob(400)), '0', 'xy') AS s",
        ] {
            let e = db.query(sql).unwrap_err();
            assert_eq!(e.code(), "too_large", "{sql}: {e}");
        }
        // Short of the limit, the same functions work.
        assert_eq!(
            db.query("SELECT length(zeroblob(500)) AS n").unwrap().body,
            b"n: 500\n"
        );
    }

    /// Every kind of transaction control, in several spellings.
    const TRANSACTION_CONTROL: [&str; 12] = [
        "BEGIN",
        "begin transaction",
        "BEGIN IMMEDIATE",
        "BeGiN ExClUsIvE TrAnSaCtIoN",
        "/* x */ BEGIN DEFERRED",
        "COMMIT",
        "END TRANSACTION",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE s",
        "RELEASE SAVEPOINT s",
        "ROLLBACK TO s",
    ];

    /// What every request is refused when it would leave state on the shared connection.
    const LEAVES_STATE: [&str; 11] = [
        "CREATE TEMP TABLE t(x)",
        "CREATE TEMPORARY TABLE t AS SELECT * FROM COLORS",
        "CREATE TABLE temp.t(x)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP TRIGGER g AFTER INSERT ON COLORS BEGIN SELECT 1; END",
        "PRAGMA foreign_keys = OFF",
        "PRAGMA query_only = 1",
        "PRAGMA recursive_triggers = 1",
        "PRAGMA temp_store = MEMORY",
        "SELECT last_insert_rowid() AS id",
        "SELECT changes() AS n",
    ];

    #[test]
    fn nothing_outlives_a_request() {
        for writable in [false, true] {
            let (config, _dir) = temp_db(&format!("session-{writable}"), writable);
            let mut db = open(&config, QueryLimits::default());
            let foreign_keys = db.query("PRAGMA foreign_keys").unwrap().body;
            for sql in TRANSACTION_CONTROL.iter().chain(&LEAVES_STATE) {
                let e = db.query(sql).unwrap_err();
                assert_eq!(e.code(), "forbidden", "{sql}: {e}");
                assert!(e.message().contains("not allowed"), "{sql}: {e}");
                assert!(db.conn.is_autocommit(), "{sql}");
            }
            // The session is as it was opened.
            assert_eq!(db.query("PRAGMA foreign_keys").unwrap().body, foreign_keys);
            assert_eq!(db.query("SELECT * FROM t").unwrap_err().code(), "sql");
            assert_eq!(db.query("SELECT * FROM v").unwrap_err().code(), "sql");
        }
    }

    #[test]
    fn a_transaction_left_open_is_rolled_back_and_never_ok() {
        let (config, _dir) = temp_db("left-open", true);
        let mut db = open(&config, QueryLimits::default());
        // As if a statement had got past the authorizer.
        type NoAuthorizer = fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization;
        db.conn.authorizer(None::<NoAuthorizer>).unwrap();
        db.conn.execute_batch("BEGIN").unwrap();
        db.authorizer = Authorizer::install(&mut db.conn).unwrap();
        let e = db
            .query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')")
            .unwrap_err();
        assert_eq!(e.code(), "forbidden", "{e}");
        assert!(db.conn.is_autocommit());
        let other = Connection::open(config.path.as_ref().unwrap()).unwrap();
        let n: i64 = other
            .query_row("SELECT count(*) FROM COLORS", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        // The next request is served normally, and its write is committed.
        let out = db
            .query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')")
            .unwrap();
        assert_eq!(out.changes, Some(1));
        let n: i64 = other
            .query_row("SELECT count(*) FROM COLORS", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }
}

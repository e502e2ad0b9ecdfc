//! The shared database as an SQLite file (`"path"` in `database.json`); the first server to
//! start creates it from the CSV seed.
//!
//! Everything is enforced by SQLite, never by looking at the SQL text: read-only mode (the file
//! is opened `SQLITE_OPEN_READ_ONLY`), the time limit (a progress handler), the largest string
//! or blob a query may build (`SQLITE_LIMIT_LENGTH`, so memory stays bounded), and what the
//! authorizer ([`check`]) refuses while each statement is prepared, each refusal saying why:
//! what reaches beyond the shared database (`ATTACH`, `VACUUM INTO`, extensions, pragmas that
//! set or act), and what would outlive the request on the worker's connection, which its next
//! clients share (transaction control, the `temp` schema, functions that report earlier
//! writes). A transaction still open after a statement (which the authorizer should have made
//! impossible) is rolled back and answered `ERR`, so an `OK` for a write means it is committed.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::limits::Limit;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::database::{
    Database, DatabaseConfig, QueryLimits, QueryOutput, Seed, LEFT_OPEN, NO_STATEMENT,
};
use crate::error::{Code, Error};

/// How long a writer waits for another server's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why anything in the `temp` schema is refused.
const TEMP_REFUSED: &str = "temporary tables, views, triggers and indexes are not allowed: they would outlive the request and be seen by the server's next clients";

/// One open connection to an SQLite file.
pub(crate) struct Sqlite {
    conn: Connection,
    writable: bool,
    limits: QueryLimits,
    /// Guards what the progress handler and the authorizer share with [`Sqlite::query`];
    /// never held while SQLite runs (the callbacks run on the query's thread, inside it).
    hooks: Arc<Mutex<Hooks>>,
}

/// What SQLite's callbacks share with [`Sqlite::query`].
#[derive(Default)]
struct Hooks {
    /// When the running query is interrupted.
    deadline: Option<Instant>,
    /// Why the authorizer refused the statement being prepared.
    refusal: Option<String>,
    /// Set only while [`Sqlite::query`] prepares its own `ROLLBACK`, the one transaction
    /// control let through.
    rolling_back: bool,
}

impl Sqlite {
    /// Opens the file, creating it from the seed CSV first if it does not exist.
    pub(crate) fn open(
        path: &Path,
        config: &DatabaseConfig,
        limits: QueryLimits,
    ) -> Result<Sqlite, String> {
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
        let hooks = Arc::<Mutex<Hooks>>::default();
        let progress = Arc::clone(&hooks);
        let passed = move || progress.lock().deadline.is_some_and(|d| Instant::now() > d);
        // No string or blob may grow past the reply limit: `randomblob(1e9)` fails at once
        // instead of taking a gigabyte.
        let longest = i32::try_from(limits.max_reply).unwrap_or(i32::MAX);
        let fail = |e: rusqlite::Error| e.to_string();
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        conn.progress_handler(10_000, Some(passed)).map_err(fail)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, longest).map_err(fail)?;
        let mut db = Sqlite { conn, writable: config.writable, limits, hooks };
        db.install_authorizer().map_err(fail)?;
        Ok(db)
    }

    /// Installs [`check`] as the connection's authorizer, recording why it refuses.
    fn install_authorizer(&mut self) -> rusqlite::Result<()> {
        let hooks = Arc::clone(&self.hooks);
        self.conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let mut hooks = hooks.lock();
            let rollback = TransactionOperation::Rollback;
            let ours = matches!(ctx.action, AuthAction::Transaction { operation } if operation == rollback)
                && hooks.rolling_back;
            match check(&ctx.action, ctx.database_name) {
                Err(why) if !ours => {
                    hooks.refusal = Some(why);
                    Authorization::Deny
                }
                _ => Authorization::Allow,
            }
        }))
    }

    fn run(&self, sql: &str) -> Result<QueryOutput, Error> {
        let fail = |e| self.map_error(e);
        let mut stmt = self.conn.prepare(sql).map_err(fail)?;
        let writes = !stmt.readonly();
        // `changes()` is left as the last INSERT, UPDATE or DELETE set it, maybe another
        // client's: a statement that changed no row (`CREATE TABLE`, say) reports 0.
        let total_before = self.conn.total_changes();
        let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let mut out = QueryOutput::default();
        let mut query = stmt.query([]).map_err(fail)?;
        while let Some(row) = query.next().map_err(fail)? {
            out.row();
            for (i, name) in names.iter().enumerate() {
                out.push(name, row.get_ref(i).map_err(fail)?, &self.limits)?;
            }
        }
        drop(query);
        let changed = self.conn.total_changes() != total_before;
        Ok(out.finish(writes.then(|| if changed { self.conn.changes() } else { 0 })))
    }

    fn map_error(&self, e: rusqlite::Error) -> Error {
        // A refused function shows as a plain SQLite error, a refused statement as
        // `SQLITE_AUTH`: the authorizer's own record says which, and why.
        if let Some(why) = self.hooks.lock().refusal.take() {
            return Code::Forbidden.msg(why);
        }
        match (e.sqlite_error_code(), e) {
            (Some(ErrorCode::AuthorizationForStatementDenied), _) => {
                Code::Forbidden.msg("the query uses a feature this server does not allow")
            }
            (Some(ErrorCode::TooBig), _) => self.limits.too_large(),
            (Some(ErrorCode::ReadOnly), _) if !self.writable => Code::Forbidden.msg("the database is read-only; set \"writable\": true in database.json to allow writes"),
            (Some(ErrorCode::OperationInterrupted), _) => self.limits.timed_out(),
            (_, rusqlite::Error::MultipleStatement) => {
                Code::Sql.msg("send one SQL statement per request")
            }
            (_, rusqlite::Error::Empty) => Code::Sql.msg(NO_STATEMENT),
            (_, e) => Code::Sql.msg(e.to_string()),
        }
    }
}

impl Database for Sqlite {
    fn query(&mut self, sql: &str) -> Result<QueryOutput, Error> {
        self.hooks.lock().deadline = Some(Instant::now() + self.limits.timeout);
        let result = self.run(sql);
        *self.hooks.lock() = Hooks::default();
        if !self.conn.is_autocommit() {
            // Whatever the statement did is not committed: it must not be answered OK, nor
            // be carried into the next client's requests. Should the rollback fail, the
            // transaction stays open and every later request lands here too: never OK.
            self.hooks.lock().rolling_back = true;
            match self.conn.execute_batch("ROLLBACK") {
                Ok(()) => log::error!("a statement left a transaction open: rolled back"),
                Err(e) => log::error!("a statement left a transaction open; rollback failed: {e}"),
            }
            self.hooks.lock().rolling_back = false;
            return Err(Code::Forbidden.msg(LEFT_OPEN));
        }
        result
    }
}

/// Decides one action of a statement being prepared, on schema `database` (`main`, `temp`,
/// or none): `Err` says why it is refused, for the client.
fn check(action: &AuthAction<'_>, database: Option<&str>) -> Result<(), String> {
    match *action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(
            "BEGIN, COMMIT, ROLLBACK, SAVEPOINT and RELEASE are not allowed: each request is its own transaction, committed before its OK"
                .into(),
        ),
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempIndex { .. } => Err(TEMP_REFUSED.into()),
        _ if database.is_some_and(|d| d.eq_ignore_ascii_case("temp")) => {
            Err(TEMP_REFUSED.into())
        }
        AuthAction::Function { function_name } => {
            match function_name.to_ascii_lowercase().as_str() {
                "last_insert_rowid" | "changes" | "total_changes" => Err(format!(
                    "{function_name}() is not allowed: it reports an earlier request's write, maybe another client's (use INSERT ... RETURNING)"
                )),
                "load_extension" => {
                    Err("load_extension() is not allowed: extension loading is off".into())
                }
                _ => Ok(()),
            }
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Err(
            "ATTACH, DETACH and VACUUM (which attaches a database) are not allowed: a request uses the shared database only"
                .into(),
        ),
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let reads = match pragma_name.to_ascii_lowercase().as_str() {
                // Schema pragmas: they read, with or without an argument (a table's name).
                "table_info" | "table_xinfo" | "table_list" | "index_list" | "index_info"
                | "index_xinfo" | "foreign_key_list" => true,
                // Settings: read when given no value, changed when given one.
                "application_id" | "collation_list" | "compile_options" | "data_version"
                | "encoding" | "foreign_keys" | "freelist_count" | "function_list"
                | "journal_mode" | "module_list" | "page_count" | "page_size" | "pragma_list"
                | "schema_version" | "user_version" => pragma_value.is_none(),
                _ => false,
            };
            let what = match pragma_value {
                Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                None => format!("PRAGMA {pragma_name}"),
            };
            reads.then_some(()).ok_or_else(|| format!(
                "{what} is not allowed: it may change the server's state (pragmas that only read, such as table_info, are allowed)"
            ))
        }
        _ => Ok(()),
    }
}

/// Builds the database in a temp file and links it into place only when complete, so servers
/// starting together never see a half-built database; the loser of the race just uses the
/// winner's file.
fn create_from_seed(path: &Path, seed: &Path) -> Result<(), String> {
    let table = Seed::read(seed)
        .map_err(|e| format!("database {} does not exist, and {e}", path.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = build(&tmp, &table).and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    });
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        let (path, seed, n) = (path.display(), seed.display(), table.rows.len());
        log::info!("created database {path} from {seed} ({n} rows)");
    }
    result
}

fn build(path: &Path, seed: &Seed) -> Result<(), String> {
    let _ = fs::remove_file(path);
    let fail = |e: rusqlite::Error| format!("cannot build database {}: {e}", path.display());
    let mut conn = Connection::open(path).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    tx.execute(&seed.create, []).map_err(fail)?;
    let mut insert = tx.prepare(&seed.insert).map_err(fail)?;
    for row in &seed.rows {
        insert.execute(rusqlite::params_from_iter(row)).map_err(fail)?;
    }
    drop(insert);
    tx.commit().map_err(fail)?;
    conn.close().map_err(|(_, e)| fail(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch_dir::ScratchDir;
    use crate::server::database::DatabaseConfig;

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
        let mut db = open(&config, QueryLimits::default());
        let out = db.query("SELECT * FROM COLORS").unwrap();
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            "Name: White\nHEX: #FFFFFF\nRGB: rgb(255,255,255)\n\nName: Black\nHEX: #000000\nRGB: rgb(0,0,0)\n"
        );
        assert_eq!(out.rows, 2);
        assert_eq!(out.changes, None);
        let out = db.query("SELECT NULL AS n, 1 AS i, 2.5 AS r, x'00ff' AS b").unwrap();
        assert_eq!(String::from_utf8(out.body).unwrap(), "n: NULL\ni: 1\nr: 2.5\nb: X'00FF'\n");
        let out = db.query("SELECT * FROM COLORS WHERE Name = 'Nope'").unwrap();
        assert_eq!(out.body, b"No output");
    }

    #[test]
    fn read_only_is_enforced_by_sqlite() {
        let (config, _dir) = temp_db("ro", false);
        let mut db = open(&config, QueryLimits::default());
        let e =
            db.query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')").unwrap_err();
        assert_eq!(e.code(), "forbidden", "{e}");
        let out = db.query("SELECT count(*) AS n FROM COLORS").unwrap();
        assert_eq!(out.body, b"n: 2\n");
    }

    #[test]
    fn writes_and_errors() {
        let (config, _dir) = temp_db("rw", true);
        let mut db = open(&config, QueryLimits::default());
        let out = db.query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')").unwrap();
        assert_eq!(out.changes, Some(1));
        assert_eq!(out.body, b"No output");
        assert_eq!(db.query("SELEC 1").unwrap_err().code(), "sql");
        assert_eq!(db.query("SELECT 1; SELECT 2").unwrap_err().code(), "sql");
        assert_eq!(db.query("-- nothing").unwrap_err().code(), "sql");
    }

    #[test]
    fn limits_time_and_size() {
        let limits = QueryLimits { timeout: Duration::from_millis(200), max_reply: 1000 };
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
            assert!(!copy.exists(), "a refused statement created {}", copy.display());
            // Pragmas that only read still work, and nothing changed.
            assert_eq!(db.query("PRAGMA journal_mode").unwrap().body, b"journal_mode: wal\n");
            assert_eq!(db.query("PRAGMA user_version").unwrap().body, b"user_version: 0\n");
            let out = db.query("PRAGMA table_info(COLORS)").unwrap();
            assert_eq!(out.rows, 3);
        }
    }

    #[test]
    fn no_value_may_outgrow_the_reply_limit() {
        let limits = QueryLimits { timeout: Duration::from_secs(5), max_reply: 1000 };
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
        assert_eq!(db.query("SELECT length(zeroblob(500)) AS n").unwrap().body, b"n: 500\n");
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
        db.install_authorizer().unwrap();
        let e =
            db.query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')").unwrap_err();
        assert_eq!(e.code(), "forbidden", "{e}");
        assert!(db.conn.is_autocommit());
        let other = Connection::open(config.path.as_ref().unwrap()).unwrap();
        let n: i64 = other.query_row("SELECT count(*) FROM COLORS", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        // The next request is served normally, and its write is committed.
        let out = db.query("INSERT INTO COLORS VALUES ('Red', '#FF0000', 'rgb(255,0,0)')").unwrap();
        assert_eq!(out.changes, Some(1));
        let n: i64 = other.query_row("SELECT count(*) FROM COLORS", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 3);
    }

    fn pragma<'a>(name: &'a str, value: Option<&'a str>) -> AuthAction<'a> {
        AuthAction::Pragma { pragma_name: name, pragma_value: value }
    }

    #[test]
    fn refuses_attach_detach_and_extensions() {
        assert!(check(&AuthAction::Attach { filename: "/tmp/x" }, None).is_err());
        assert!(check(&AuthAction::Attach { filename: "" }, None).is_err());
        assert!(check(&AuthAction::Detach { database_name: "x" }, None).is_err());
        for name in ["load_extension", "LOAD_EXTENSION"] {
            let e = check(&AuthAction::Function { function_name: name }, None).unwrap_err();
            assert!(e.contains("load_extension() is not allowed"), "{e}");
        }
        assert!(check(&AuthAction::Function { function_name: "upper" }, None).is_ok());
        assert!(check(&AuthAction::Select, None).is_ok());
    }

    #[test]
    fn allows_only_pragmas_that_read() {
        for ok in [
            pragma("table_info", Some("COLORS")),
            pragma("TABLE_INFO", Some("COLORS")),
            pragma("index_list", None),
            pragma("user_version", None),
            pragma("journal_mode", None),
        ] {
            assert_eq!(check(&ok, Some("main")), Ok(()), "{ok:?}");
        }
        for bad in [
            pragma("journal_mode", Some("DELETE")),
            pragma("user_version", Some("7")),
            pragma("writable_schema", Some("1")),
            pragma("writable_schema", None),
            pragma("query_only", Some("0")),
            pragma("optimize", None),
            pragma("wal_checkpoint", None),
            pragma("incremental_vacuum", None),
            pragma("cache_size", Some("-1000000")),
            pragma("temp_store_directory", Some("'/tmp'")),
            pragma("foreign_keys", Some("ON")),
            pragma("recursive_triggers", Some("1")),
            pragma("defer_foreign_keys", Some("1")),
            pragma("query_only", None),
        ] {
            assert!(check(&bad, Some("main")).is_err(), "{bad:?}");
        }
        let e = check(&pragma("journal_mode", Some("DELETE")), None).unwrap_err();
        assert!(e.starts_with("PRAGMA journal_mode = DELETE is not allowed"), "{e}");
    }

    #[test]
    fn refuses_what_would_outlive_the_request() {
        // COMMIT and END come as `Unknown`.
        use TransactionOperation::*;
        for op in [Begin, Unknown, Rollback] {
            let e = check(&AuthAction::Transaction { operation: op }, None).unwrap_err();
            assert!(e.starts_with("BEGIN, COMMIT, ROLLBACK"), "{e}");
        }
        for op in [Begin, Release, Rollback] {
            let savepoint = AuthAction::Savepoint { operation: op, savepoint_name: "s" };
            assert!(check(&savepoint, None).is_err());
        }
        let temp_table = AuthAction::CreateTempTable { table_name: "t" };
        assert_eq!(check(&temp_table, Some("temp")), Err(TEMP_REFUSED.into()));
        let insert = AuthAction::Insert { table_name: "t" };
        assert_eq!(check(&insert, Some("temp")), Err(TEMP_REFUSED.into()));
        assert_eq!(check(&insert, Some("main")), Ok(()));
        for name in ["last_insert_rowid", "CHANGES", "total_changes"] {
            let f = AuthAction::Function { function_name: name };
            assert!(check(&f, None).is_err(), "{name}");
        }
    }
}

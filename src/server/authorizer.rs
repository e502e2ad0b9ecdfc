//! What SQL a request may do beyond what read-only mode already refuses, enforced by SQLite's
//! authorizer while each statement is prepared (never by looking at the SQL text):
//!
//! - no `ATTACH` or `DETACH`: a request sees the shared database only, and cannot create
//!   database files elsewhere. `VACUUM` attaches its target, so it is refused too (`VACUUM
//!   INTO '/any/path'` would otherwise write a file even on a read-only database);
//! - no `load_extension()`: extension loading stays off;
//! - only pragmas that read: the schema pragmas (`table_info(COLORS)`, ...) and settings read
//!   without a value (`PRAGMA user_version`). Setting one (`PRAGMA journal_mode = DELETE`,
//!   `PRAGMA foreign_keys = ON`, `PRAGMA query_only = 1`) or running one that acts (`PRAGMA
//!   optimize`) is refused;
//!
//! and nothing may outlive the request on the server's one connection, which the server's
//! next clients share (see [`super::database`]):
//!
//! - no transaction control (`BEGIN`, `COMMIT`, `END`, `ROLLBACK`, `SAVEPOINT`, `RELEASE`):
//!   each request is its own transaction, committed before its `OK`. An open `BEGIN` would
//!   hold the next clients' writes uncommitted (lost when the server stops) and lock out the
//!   other servers' writers;
//! - nothing in the `temp` schema (`CREATE TEMP TABLE/VIEW/TRIGGER`, temp indexes, `CREATE
//!   TABLE temp.x`): it lives as long as the connection, so the next client would see it;
//! - no `last_insert_rowid()`, `changes()`, `total_changes()`: they report the connection's
//!   earlier writes, another client's (`INSERT ... RETURNING` says what a write did).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};
use rusqlite::Connection;

/// Pragmas that only read, with or without an argument (a table or index name).
const SCHEMA_PRAGMAS: [&str; 7] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

/// Pragmas that read a setting when given no value (and change it when given one).
const SETTING_PRAGMAS: [&str; 15] = [
    "application_id",
    "collation_list",
    "compile_options",
    "data_version",
    "encoding",
    "foreign_keys",
    "freelist_count",
    "function_list",
    "journal_mode",
    "module_list",
    "page_count",
    "page_size",
    "pragma_list",
    "schema_version",
    "user_version",
];

/// Functions that read what the connection's earlier statements did.
const SESSION_FUNCTIONS: [&str; 3] = ["last_insert_rowid", "changes", "total_changes"];

/// Decides one action of a statement being prepared, on schema `database` (`main`, `temp`,
/// or none): `Err` says why it is refused.
///
/// # Errors
/// A message for the client naming what is not allowed.
pub fn check(action: &AuthAction<'_>, database: Option<&str>) -> Result<(), String> {
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
        AuthAction::Function { function_name }
            if SESSION_FUNCTIONS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(function_name)) =>
        {
            Err(format!(
                "{function_name}() is not allowed: it reports an earlier request's write, maybe another client's (use INSERT ... RETURNING)"
            ))
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Err(
            "ATTACH, DETACH and VACUUM (which attaches a database) are not allowed: a request uses the shared database only"
                .into(),
        ),
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Err("load_extension() is not allowed: extension loading is off".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let reads = SCHEMA_PRAGMAS.contains(&name.as_str())
                || (pragma_value.is_none() && SETTING_PRAGMAS.contains(&name.as_str()));
            if reads {
                return Ok(());
            }
            let what = match pragma_value {
                Some(v) => format!("PRAGMA {pragma_name} = {v}"),
                None => format!("PRAGMA {pragma_name}"),
            };
            Err(format!(
                "{what} is not allowed: it may change the server's state (pragmas that only read, such as table_info, are allowed)"
            ))
        }
        _ => Ok(()),
    }
}

/// Why anything in the `temp` schema is refused.
const TEMP_REFUSED: &str = "temporary tables, views, triggers and indexes are not allowed: they would outlive the request and be seen by the server's next clients";

/// The authorizer installed on a connection, and the reason for its last refusal.
pub struct Authorizer {
    /// Guards why the authorizer refused the statement being prepared; written by the
    /// authorizer callback and read after `prepare` fails, both on the query's thread.
    refusal: Arc<Mutex<Option<String>>>,
    /// Set only while [`Authorizer::roll_back`] prepares its own `ROLLBACK`, the one
    /// transaction control let through; read by the callback on the same thread.
    rolling_back: Arc<AtomicBool>,
}

impl Authorizer {
    /// Installs [`check`] as `conn`'s authorizer.
    ///
    /// # Errors
    /// The SQLite error when it cannot be installed.
    pub fn install(conn: &mut Connection) -> rusqlite::Result<Authorizer> {
        let refusal = Arc::new(Mutex::new(None));
        let record = Arc::clone(&refusal);
        let rolling_back = Arc::new(AtomicBool::new(false));
        let ours = Arc::clone(&rolling_back);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let our_rollback = matches!(
                ctx.action,
                AuthAction::Transaction {
                    operation: TransactionOperation::Rollback
                }
            ) && ours.load(Ordering::Relaxed);
            if our_rollback {
                return Authorization::Allow;
            }
            match check(&ctx.action, ctx.database_name) {
                Ok(()) => Authorization::Allow,
                Err(why) => {
                    *record.lock() = Some(why);
                    Authorization::Deny
                }
            }
        }))?;
        Ok(Authorizer {
            refusal,
            rolling_back,
        })
    }

    /// Rolls back the transaction a statement left open on `conn`, past the refusal of
    /// transaction control.
    ///
    /// # Errors
    /// The SQLite error when the rollback fails.
    pub fn roll_back(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.rolling_back.store(true, Ordering::Relaxed);
        let result = conn.execute_batch("ROLLBACK");
        self.rolling_back.store(false, Ordering::Relaxed);
        result
    }

    /// Why the last statement was refused, clearing it.
    pub fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma<'a>(name: &'a str, value: Option<&'a str>) -> AuthAction<'a> {
        AuthAction::Pragma {
            pragma_name: name,
            pragma_value: value,
        }
    }

    #[test]
    fn refuses_attach_detach_and_extensions() {
        assert!(check(&AuthAction::Attach { filename: "/tmp/x" }, None).is_err());
        assert!(check(&AuthAction::Attach { filename: "" }, None).is_err());
        assert!(check(&AuthAction::Detach { database_name: "x" }, None).is_err());
        for name in ["load_extension", "LOAD_EXTENSION"] {
            let e = check(
                &AuthAction::Function {
                    function_name: name,
                },
                None,
            )
            .unwrap_err();
            assert!(e.contains("load_extension() is not allowed"), "{e}");
        }
        assert!(check(
            &AuthAction::Function {
                function_name: "upper"
            },
            None
        )
        .is_ok());
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
        assert!(
            e.starts_with("PRAGMA journal_mode = DELETE is not allowed"),
            "{e}"
        );
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
            let savepoint = AuthAction::Savepoint {
                operation: op,
                savepoint_name: "s",
            };
            assert!(check(&savepoint, None).is_err());
        }
        let temp_table = AuthAction::CreateTempTable { table_name: "t" };
        assert_eq!(check(&temp_table, Some("temp")), Err(TEMP_REFUSED.into()));
        let insert = AuthAction::Insert { table_name: "t" };
        assert_eq!(check(&insert, Some("temp")), Err(TEMP_REFUSED.into()));
        assert_eq!(check(&insert, Some("main")), Ok(()));
        for name in ["last_insert_rowid", "CHANGES", "total_changes"] {
            let f = AuthAction::Function {
                function_name: name,
            };
            assert!(check(&f, None).is_err(), "{name}");
        }
    }
}

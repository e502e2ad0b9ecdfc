//! What SQL a request may do beyond what read-only mode already refuses, enforced by SQLite's
//! authorizer while each statement is prepared (never by looking at the SQL text):
//!
//! - no `ATTACH` or `DETACH`: a request sees the shared database only, and cannot create
//!   database files elsewhere. `VACUUM` attaches its target, so it is refused too (`VACUUM
//!   INTO '/any/path'` would otherwise write a file even on a read-only database);
//! - no `load_extension()`: extension loading stays off;
//! - only pragmas that read: the schema pragmas (`table_info(COLORS)`, ...) and settings read
//!   without a value (`PRAGMA user_version`). Setting one (`PRAGMA journal_mode = DELETE`)
//!   or running one that acts (`PRAGMA optimize`) is refused.

use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
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

/// Decides one action of a statement being prepared: `Err` says why it is refused.
///
/// # Errors
/// A message for the client naming what is not allowed.
pub fn check(action: &AuthAction<'_>) -> Result<(), String> {
    match *action {
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

/// The authorizer installed on a connection, and the reason for its last refusal.
pub struct Authorizer {
    /// Guards why the authorizer refused the statement being prepared; written by the
    /// authorizer callback and read after `prepare` fails, both on the query's thread.
    refusal: Arc<Mutex<Option<String>>>,
}

impl Authorizer {
    /// Installs [`check`] as `conn`'s authorizer.
    ///
    /// # Errors
    /// The SQLite error when it cannot be installed.
    pub fn install(conn: &mut Connection) -> rusqlite::Result<Authorizer> {
        let refusal = Arc::new(Mutex::new(None));
        let record = Arc::clone(&refusal);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| match check(&ctx.action) {
            Ok(()) => Authorization::Allow,
            Err(why) => {
                *record.lock() = Some(why);
                Authorization::Deny
            }
        }))?;
        Ok(Authorizer { refusal })
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
        assert!(check(&AuthAction::Attach { filename: "/tmp/x" }).is_err());
        assert!(check(&AuthAction::Attach { filename: "" }).is_err());
        assert!(check(&AuthAction::Detach { database_name: "x" }).is_err());
        for name in ["load_extension", "LOAD_EXTENSION"] {
            let e = check(&AuthAction::Function {
                function_name: name,
            })
            .unwrap_err();
            assert!(e.contains("load_extension() is not allowed"), "{e}");
        }
        assert!(check(&AuthAction::Function {
            function_name: "upper"
        })
        .is_ok());
        assert!(check(&AuthAction::Select).is_ok());
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
            assert_eq!(check(&ok), Ok(()), "{ok:?}");
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
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
        let e = check(&pragma("journal_mode", Some("DELETE"))).unwrap_err();
        assert!(
            e.starts_with("PRAGMA journal_mode = DELETE is not allowed"),
            "{e}"
        );
    }
}

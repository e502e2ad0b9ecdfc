//! The shared database on a PostgreSQL server (`"url"` in `database.json`), for servers on
//! several machines: same replies as SQLite (the text format is [`super::database`]'s).
//!
//! PostgreSQL enforces everything: read-only is the role's privileges (checked at start) with
//! `default_transaction_read_only` as a second belt, the time limit is `statement_timeout`;
//! both are the session's defaults (startup options), so `RESET` returns to them. The
//! extended protocol takes one statement only, so `SELECT 1; SELECT 2` is refused as in SQLite.
//! After every request `DISCARD ALL` drops what it may have left on the connection (settings,
//! temp tables, prepared statements, advisory locks, cursors); it fails inside a transaction,
//! which is how a `BEGIN` left open shows: it is rolled back and answered `ERR`.
//!
//! Each worker's connection lives on a session thread of its own, so that a database frozen
//! mid-query costs a request the time limit plus [`MARGIN`], not the worker the rest of its
//! life: the worker stops waiting, and refuses requests at once until the late reply comes.
//! A lost connection is opened again by the session thread, which refuses requests at once
//! between attempts (so a database that is down costs each request one quick refusal).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ::postgres::error::SqlState;
use ::postgres::fallible_iterator::FallibleIterator;
use ::postgres::types::{FromSql, ToSql, Type};
use ::postgres::{Client, Config, NoTls};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::types::ValueRef;

use super::database::{hide_password, Database, DatabaseConfig, QueryLimits, QueryOutput};
use super::database::{Seed, LEFT_OPEN, NO_STATEMENT};
use crate::error::{Code, Error};

/// Longest wait for a connection and its start-up, and for the session thread to take a
/// request while it connects.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait between two reconnection attempts.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// How long past the time limit (when PostgreSQL cancels the statement) a reply may take.
const MARGIN: Duration = Duration::from_secs(1);

type Reply = Result<QueryOutput, Error>;

/// A worker's end of its session thread.
pub(crate) struct Postgres {
    /// The URL with its password hidden, for messages.
    name: String,
    /// The time limit plus [`MARGIN`].
    wait: Duration,
    /// Carries each request's SQL to the session thread (rendezvous: taken only when the
    /// thread is ready for it).
    requests: Sender<String>,
    /// Carries each reply back.
    replies: Receiver<Reply>,
    /// A reply given up on has not come yet: the session thread is still on its query.
    owed: bool,
}

impl Postgres {
    /// Connects; a writable server creates and seeds `COLORS` when missing, a read-only one
    /// checks that its role cannot write.
    pub(crate) fn open(
        url: &str,
        db: &DatabaseConfig,
        limits: QueryLimits,
    ) -> Result<Postgres, String> {
        let name = hide_password(url);
        let mut config: Config =
            url.parse().map_err(|e| format!("database URL {name} is not valid: {e}"))?;
        let mut options = format!("-c statement_timeout={}", limits.timeout.as_millis());
        if !db.writable {
            options.push_str(" -c default_transaction_read_only=on");
        }
        config
            .options(&options)
            .connect_timeout(CONNECT_TIMEOUT)
            // A link cut mid-query is noticed in seconds, not after TCP's two hours.
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3);
        // The crate's timeout covers the TCP connect only: a database that accepts and then
        // says nothing (frozen, or another service on its port) would hang the start for good.
        let (tx, rx) = crossbeam_channel::bounded(1);
        let attempt = config.clone();
        spawn("db-connect", move || drop(tx.send(attempt.connect(NoTls))))?;
        let mut client = match rx.recv_timeout(CONNECT_TIMEOUT) {
            Ok(connected) => connected.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "it accepted the connection but sent no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
        }
        .map_err(|e| format!("cannot connect to database {name}: {e}"))?;
        if db.writable {
            seed(&mut client, &db.seed).map_err(|e| format!("database {name}: {e}"))?;
        } else {
            check_read_only(&mut client, &name)?;
        }
        let (requests, inbox) = crossbeam_channel::bounded(0);
        let (outbox, replies) = crossbeam_channel::bounded(1);
        let thread_name = name.clone();
        spawn("db-session", move || {
            session(&config, client, &inbox, &outbox, limits, &thread_name);
        })?;
        Ok(Postgres { name, wait: limits.timeout + MARGIN, requests, replies, owed: false })
    }
}

impl Database for Postgres {
    fn query(&mut self, sql: &str) -> Result<QueryOutput, Error> {
        let name = &self.name;
        if self.owed {
            let Ok(_late) = self.replies.try_recv() else {
                return Err(unavailable(name, "an earlier query still has no answer"));
            };
            self.owed = false;
        }
        // The thread takes it at once unless it is connecting.
        let sent = self.requests.send_timeout(sql.into(), CONNECT_TIMEOUT);
        if sent.is_err() {
            let secs = CONNECT_TIMEOUT.as_secs();
            return Err(unavailable(name, format!("not connected within {secs} s")));
        }
        let wait = self.wait.as_secs_f64();
        self.replies.recv_timeout(self.wait).unwrap_or_else(|_| {
            log::warn!("database {name} did not answer in time");
            self.owed = true;
            Err(unavailable(name, format!("no answer within {wait:.1} s")))
        })
    }
}

fn spawn(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let thread = std::thread::Builder::new().name(name.into());
    match thread.stack_size(256 * 1024).spawn(run) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot start a thread for the database: {e}")),
    }
}

/// Refuses to start read-only on a role that can write, or with no table to read.
fn check_read_only(client: &mut Client, name: &str) -> Result<(), String> {
    // `has_table_privilege` is given the table's oid: NULL (not an error) when it is missing.
    let row = client
        .query_one(
            "SELECT to_regclass('colors') IS NOT NULL, current_user::text, \
             coalesce(has_table_privilege(to_regclass('colors')::oid, 'INSERT,UPDATE,DELETE,TRUNCATE') \
             OR has_schema_privilege(current_schema(), 'CREATE') \
             OR has_database_privilege(current_database(), 'CREATE'), false)",
            &[],
        )
        .map_err(|e| format!("database {name}: {}", message(&e)))?;
    let (exists, user, can_write): (bool, String, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists {
        return Err(format!("database {name} has no COLORS table, and a read-only server cannot create it: start a writable server on it first, or create and fill the table yourself"));
    }
    if can_write {
        return Err(format!("database {name}: role {user} can write, but database.json says \"writable\": false; connect as a role with SELECT only (see the README), or set \"writable\": true"));
    }
    Ok(())
}

/// The session thread: runs each request on the connection; when it is lost, connects again,
/// refusing requests at once between attempts. Ends when the worker is gone.
fn session(
    config: &Config,
    mut client: Client,
    inbox: &Receiver<String>,
    outbox: &Sender<Reply>,
    limits: QueryLimits,
    name: &str,
) {
    loop {
        loop {
            let Ok(sql) = inbox.recv() else { return };
            let (reply, keep) = serve(&mut client, &sql, limits, name);
            if outbox.send(reply).is_err() {
                return;
            }
            if !keep {
                break;
            }
        }
        log::warn!("lost the connection to database {name}");
        let mut backoff = BACKOFF.0;
        client = loop {
            let why = match config.connect(NoTls) {
                Ok(client) => break client,
                Err(e) => unavailable(name, e),
            };
            let retry = Instant::now() + backoff;
            backoff = (backoff * 2).min(BACKOFF.1);
            loop {
                match inbox.recv_deadline(retry) {
                    Ok(_) if outbox.send(Err(why.clone())).is_ok() => {}
                    Err(RecvTimeoutError::Timeout) => break,
                    _ => return,
                }
            }
        };
        log::info!("connected to database {name} again");
    }
}

/// Runs one statement, then clears the session; also says whether the connection is still
/// good.
fn serve(
    client: &mut Client,
    sql: &str,
    limits: QueryLimits,
    name: &str,
) -> (Result<QueryOutput, Error>, bool) {
    let result = run(client, sql, limits, name);
    let cleaned = client.batch_execute("DISCARD ALL");
    if cleaned.as_ref().is_err_and(|e| e.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION)) {
        // Should the rollback fail, the connection is dropped: no transaction outlives it.
        let rolled_back = client.batch_execute("ROLLBACK; DISCARD ALL");
        if let Err(e) = &rolled_back {
            log::error!("a statement left a transaction open; rollback failed: {e}");
        }
        return (Err(Code::Forbidden.msg(LEFT_OPEN)), rolled_back.is_ok());
    }
    if let Err(e) = cleaned {
        log::warn!("database {name}: cannot reset the session ({e}); reconnecting");
        return (Err(unavailable(name, message(&e))), false);
    }
    (result, !client.is_closed())
}

/// The reply for an error from PostgreSQL.
fn pg_error(e: ::postgres::Error, limits: &QueryLimits, name: &str) -> Error {
    let lost =
        e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    match e.code() {
        Some(&SqlState::QUERY_CANCELED) => limits.timed_out(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE) | Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
            Code::Forbidden.msg(message(&e))
        }
        None if lost => unavailable(name, e),
        _ => Code::Sql.msg(message(&e)),
    }
}

/// Runs one statement and formats its rows as SQLite's are.
fn run(client: &mut Client, sql: &str, limits: QueryLimits, name: &str) -> Reply {
    let pg = |e| pg_error(e, &limits, name);
    let statement = client.prepare(sql).map_err(pg)?;
    let columns = statement.columns();
    if let Some(c) = columns.iter().find(|c| !Value::accepts(c.type_())) {
        let (name, kind) = (c.name(), c.type_());
        return Err(Code::Sql.msg(format!(
            "column {name} is of type {kind}, which this server does not show: cast it to text ({name}::text)"
        )));
    }
    let mut rows = client.query_raw(&statement, std::iter::empty::<i32>()).map_err(pg)?;
    let mut out = QueryOutput::default();
    while let Some(row) = rows.next().map_err(pg)? {
        out.row();
        for (i, column) in columns.iter().enumerate() {
            let value = row.try_get::<_, Option<Value>>(i).map_err(pg)?;
            let value = value.as_ref().map_or(ValueRef::Null, Value::get);
            if let Err(e) = out.push(column.name(), value, &limits) {
                // The rest is read and dropped, so the statement ends (or times out) before
                // the next one: a cancel request could land on the next one instead.
                while let Ok(Some(_)) = rows.next() {}
                return Err(e);
            }
        }
    }
    // A statement with no result columns is a command: INSERT, UPDATE, DELETE, CREATE...
    // Only an empty one (a comment, say) ends with no command tag at all.
    let changes = columns.is_empty().then(|| rows.rows_affected());
    if changes == Some(None) {
        return Err(Code::Sql.msg(NO_STATEMENT));
    }
    Ok(out.finish(changes.flatten()))
}

/// A value in PostgreSQL's binary format, as SQLite's would be: float4 and numeric as their
/// text (written as PostgreSQL writes them), the text types as their UTF-8 text.
enum Value<'a> {
    Ref(ValueRef<'a>),
    Text(String),
}

impl Value<'_> {
    /// The value as [`QueryOutput::push`] takes it.
    fn get(&self) -> ValueRef<'_> {
        match self {
            Value::Ref(value) => *value,
            Value::Text(text) => ValueRef::Text(text.as_bytes()),
        }
    }
}

impl<'a> FromSql<'a> for Value<'a> {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let int = |n: i64| Value::Ref(ValueRef::Integer(n));
        Ok(match *ty {
            Type::BOOL => int(bool::from_sql(ty, raw)?.into()),
            Type::INT2 => int(i16::from_sql(ty, raw)?.into()),
            Type::INT4 => int(i32::from_sql(ty, raw)?.into()),
            Type::INT8 => int(i64::from_sql(ty, raw)?),
            Type::FLOAT8 => Value::Ref(ValueRef::Real(f64::from_sql(ty, raw)?)),
            Type::FLOAT4 => Value::Text(f32::from_sql(ty, raw)?.to_string()),
            // PostgreSQL never sends one cut short.
            Type::NUMERIC => Value::Text(numeric_text(raw).unwrap_or_default()),
            Type::BYTEA => Value::Ref(ValueRef::Blob(raw)),
            // The text types: their binary form is their UTF-8 text.
            _ => Value::Ref(ValueRef::Text(raw)),
        })
    }

    /// The types shown; a column of any other is refused, asking for a cast to text.
    fn accepts(ty: &Type) -> bool {
        let numbers =
            matches!(*ty, Type::BOOL | Type::INT2 | Type::INT4 | Type::INT8 | Type::NUMERIC);
        let texts =
            matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN);
        numbers || texts || matches!(*ty, Type::FLOAT4 | Type::FLOAT8 | Type::BYTEA | Type::VOID)
    }
}

/// A `numeric` in binary format written as PostgreSQL writes it (`1.50`, `-0.001`, `NaN`):
/// base-10000 digits, the weight of the first, a sign and the digits shown after the point.
fn numeric_text(raw: &[u8]) -> Option<String> {
    let word = |i: usize| Some(u16::from_be_bytes(raw.get(2 * i..2 * i + 2)?.try_into().ok()?));
    let (ndigits, weight, sign, scale) =
        (word(0)? as i64, word(1)? as i16 as i64, word(2)?, word(3)?);
    // The digit worth 10000^p is number weight - p.
    let digit = |p: i64| match weight - p {
        k if (0..ndigits).contains(&k) => word(4 + k as usize),
        _ => Some(0),
    };
    let mut s = match sign {
        0x0000 => String::new(),
        0x4000 => "-".to_string(),
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        _ => return Some("-Infinity".into()),
    };
    if weight < 0 {
        s.push('0');
    }
    for p in (0..=weight).rev() {
        let width = if p == weight { 1 } else { 4 };
        let _ = write!(s, "{:0width$}", digit(p)?);
    }
    let scale = usize::from(scale);
    if scale > 0 {
        let groups = (1..=(scale as i64 + 3) / 4).map(|p| Some(format!("{:04}", digit(-p)?)));
        let fraction = groups.collect::<Option<String>>()?;
        s.push('.');
        s.push_str(&fraction[..scale]);
    }
    Some(s)
}

/// The reply while the database cannot be reached, saying why.
fn unavailable(name: &str, why: impl std::fmt::Display) -> Error {
    Code::Unavailable.msg(format!("database {name} cannot be reached: {why}"))
}

/// PostgreSQL's own message for a database error, else the client's, on one line.
fn message(e: &::postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |db| db.message().to_string())
}

/// Creates and fills `COLORS` when missing, under a lock so that servers starting together
/// do it once.
fn seed(client: &mut Client, seed: &std::path::Path) -> Result<(), String> {
    let fail = |e: ::postgres::Error| message(&e);
    let mut tx = client.transaction().map_err(fail)?;
    // Held until the commit; the key is arbitrary, shared by every minilb server.
    tx.execute("SELECT pg_advisory_xact_lock(7411)", &[]).map_err(fail)?;
    let missing: bool =
        tx.query_one("SELECT to_regclass('colors') IS NULL", &[]).map_err(fail)?.get(0);
    if missing {
        let table = Seed::read(seed).map_err(|e| format!("it has no COLORS table, and {e}"))?;
        tx.execute(&table.create, &[]).map_err(fail)?;
        let insert = tx.prepare(&table.insert).map_err(fail)?;
        for row in &table.rows {
            let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(|v| v as _).collect();
            tx.execute(&insert, &params).map_err(fail)?;
        }
        let (seed, n) = (seed.display(), table.rows.len());
        log::info!("created table COLORS from {seed} ({n} rows)");
    }
    tx.commit().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `numeric` in binary format: digit count, weight, sign, scale, base-10000 digits.
    fn numeric(words: &[u16]) -> Option<String> {
        let raw: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        numeric_text(&raw)
    }

    #[test]
    fn numerics_are_written_as_postgres_writes_them() {
        assert_eq!(numeric(&[0, 0, 0, 0]).unwrap(), "0");
        assert_eq!(numeric(&[1, 0, 0, 0, 7]).unwrap(), "7");
        assert_eq!(numeric(&[1, 1, 0, 0, 1]).unwrap(), "10000");
        assert_eq!(numeric(&[2, 0, 0, 2, 1, 5000]).unwrap(), "1.50");
        assert_eq!(numeric(&[3, 1, 0x4000, 6, 1, 2345, 6789]).unwrap(), "-12345.678900");
        assert_eq!(numeric(&[1, 0xFFFE, 0, 5, 1000]).unwrap(), "0.00001");
        assert_eq!(numeric(&[0, 0, 0xC000, 0]).unwrap(), "NaN");
        assert_eq!(numeric(&[0, 0, 0xF000, 0]).unwrap(), "-Infinity");
        // Cut short: no panic, no text.
        assert_eq!(numeric(&[2, 1, 0, 0, 1]), None);
        assert_eq!(numeric_text(&[0, 1]), None);
    }
}

//! What both database engines share: `database.json`, the query limits, the reply's text
//! format ([`QueryOutput`]) and the CSV seed that fills a new `COLORS` table. The engines are
//! [`super::sqlite`] (a file) and [`super::postgres`] (for servers on several machines).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use serde::Deserialize;

use crate::error::{Code, Error};

/// One connection to the shared database; each worker has its own.
pub(crate) trait Database: Send {
    /// Runs one SQL statement and formats its rows; a request leaves nothing behind on the
    /// connection but committed data.
    ///
    /// # Errors
    /// [`Code::Sql`] when the database refuses it, [`Code::Forbidden`] for a write on a
    /// read-only database or what the engine refuses, [`Code::Timeout`] past the time limit,
    /// [`Code::TooLarge`] past the reply limit, [`Code::Unavailable`] while a database server
    /// cannot be reached.
    fn query(&mut self, sql: &str) -> Result<QueryOutput, Error>;
}

/// The contents of `database.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseConfig {
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

/// `url` with its password replaced by `***`, for messages and logs.
pub(crate) fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // The `key=value` form.
        let hidden = url.split(' ').map(|w| match w.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => w,
        });
        return hidden.collect::<Vec<_>>().join(" ");
    };
    match rest.split_once('@') {
        Some((user, host)) if user.contains(':') => {
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
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

impl QueryLimits {
    pub(crate) fn too_large(&self) -> Error {
        Code::TooLarge.msg(format!(
            "query result is over the {} byte reply limit; add a LIMIT or select fewer columns",
            self.max_reply
        ))
    }

    pub(crate) fn timed_out(&self) -> Error {
        Code::Timeout.msg(format!(
            "query ran longer than {:.1} s and was stopped",
            self.timeout.as_secs_f64()
        ))
    }
}

/// Why a statement that left a transaction open is refused, in both engines: an `OK` for a
/// write means the write is committed.
pub(crate) const LEFT_OPEN: &str =
    "the statement left a transaction open: it was rolled back and nothing it did was kept";
/// Why an empty query (a comment, say) is refused, in both engines.
pub(crate) const NO_STATEMENT: &str = "the query holds no SQL statement";

/// A query's answer: the reply body and what the header says about it.
#[derive(Debug, Default)]
pub(crate) struct QueryOutput {
    /// `Column: value` lines, a blank line between rows, or `No output`.
    pub body: Vec<u8>,
    pub rows: usize,
    /// Rows changed, for a statement that writes.
    pub changes: Option<u64>,
}

impl QueryOutput {
    /// Starts a row.
    pub fn row(&mut self) {
        if self.rows > 0 {
            self.body.push(b'\n');
        }
        self.rows += 1;
    }

    /// Appends `name: value`, the one text format of both engines: integers and reals as Rust
    /// prints them, text as is, blobs as `X'00FF'`, `NULL`.
    ///
    /// # Errors
    /// [`Code::TooLarge`] when the body would grow past the reply limit.
    pub fn push(&mut self, name: &str, value: ValueRef, limits: &QueryLimits) -> Result<(), Error> {
        let body = &mut self.body;
        // Checked before a long value is copied in, so the body never grows far past the limit.
        let long = match value {
            ValueRef::Text(t) => t.len(),
            ValueRef::Blob(b) => 2 * b.len() + 3,
            _ => 0,
        };
        if body.len() + name.len() + long > limits.max_reply {
            return Err(limits.too_large());
        }
        let _ = match value {
            ValueRef::Null => write!(body, "{name}: NULL"),
            ValueRef::Integer(n) => write!(body, "{name}: {n}"),
            ValueRef::Real(x) => write!(body, "{name}: {x}"),
            ValueRef::Text(t) => write!(body, "{name}: {}", String::from_utf8_lossy(t)),
            ValueRef::Blob(b) => {
                let _ = write!(body, "{name}: X'");
                for byte in b {
                    let _ = write!(body, "{byte:02X}");
                }
                write!(body, "'")
            }
        };
        body.push(b'\n');
        if body.len() > limits.max_reply {
            return Err(limits.too_large());
        }
        Ok(())
    }

    /// The finished answer: `No output` when no row came, and the rows changed.
    pub fn finish(mut self, changes: Option<u64>) -> QueryOutput {
        if self.rows == 0 {
            self.body.extend_from_slice(b"No output");
        }
        QueryOutput { changes, ..self }
    }
}

/// What fills a new `COLORS` table, from the seed CSV.
pub(crate) struct Seed {
    /// `CREATE TABLE COLORS`: a text column per header field, named as in the header (quoted,
    /// so PostgreSQL keeps its case too).
    pub create: String,
    /// The `INSERT` of one row, its values `$1`, `$2`... (SQLite takes them too).
    pub insert: String,
    pub rows: Vec<Vec<String>>,
}

impl Seed {
    /// Reads the seed CSV: its header, then rows as long as it.
    pub fn read(seed: &Path) -> Result<Seed, String> {
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
        let columns: Vec<String> =
            header.iter().map(|h| format!("\"{}\" TEXT", h.replace('"', "\"\""))).collect();
        let values: Vec<String> = (1..=header.len()).map(|i| format!("${i}")).collect();
        Ok(Seed {
            create: format!("CREATE TABLE COLORS ({})", columns.join(", ")),
            insert: format!("INSERT INTO COLORS VALUES ({})", values.join(", ")),
            rows,
        })
    }
}

/// Comma-separated fields, optionally in double quotes (`""` is a quote), every row as long
/// as the first.
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    // Quotes open and close in pairs (`""` too): an odd count is one left open, which the
    // csv crate would take as a field running to the end of the file.
    if text.matches('"').count() % 2 == 1 {
        return Err("a quote is never closed".into());
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
    let rows = reader.records().map(|row| {
        let row = row.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths { pos, expected_len, len } => {
                let line = pos.as_ref().map_or(0, csv::Position::line);
                format!("seed row {line} has {len} fields, the header has {expected_len}")
            }
            _ => e.to_string(),
        })?;
        Ok(row.iter().map(String::from).collect())
    });
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flags' defaults, for the engines' tests.
    impl Default for QueryLimits {
        fn default() -> Self {
            QueryLimits { timeout: Duration::from_secs(5), max_reply: 16 * 1024 * 1024 }
        }
    }

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
        let short = parse_csv("Name,HEX,RGB\nWhite,#FFF,x\nBlack,#000\n").unwrap_err();
        assert_eq!(short, "seed row 3 has 2 fields, the header has 3");
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            hide_password("postgres://minilb:s3cret@db:5432/colors"),
            "postgres://minilb:***@db:5432/colors"
        );
        assert_eq!(hide_password("postgres://minilb@db/colors"), "postgres://minilb@db/colors");
        assert_eq!(hide_password("host=db user=x password=y"), "host=db user=x password=***");
    }
}

//! A throwaway PostgreSQL for tests: its own cluster (Debian's `initdb` and `pg_ctl`, run as
//! the `postgres` user) in a temp folder on a free port, never a system service; stopped and
//! removed on drop, also when a test panics. `initdb` runs once per version (see [`template`]).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The role that owns the `colors` database: it may create and write the table.
pub const OWNER: &str = "minilb";
/// A role with `SELECT` only, on every table the owner creates.
pub const READER: &str = "minilb_reader";

/// A running cluster with a `colors` database, its roles, and no table yet.
pub struct Postgres {
    /// Address it listens on.
    pub host: String,
    pub port: u16,
    /// Run before every command (`ip netns exec NS`, say).
    prefix: Vec<String>,
    bin: PathBuf,
    dir: PathBuf,
}

impl Postgres {
    /// A cluster on 127.0.0.1; `None` (after one line saying why) when PostgreSQL is missing.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(&[], "127.0.0.1")
    }

    /// A cluster listening on `host`, every command run after `prefix` (e.g.
    /// `["ip", "netns", "exec", "NS"]`); `None` (after one line saying why) when it cannot run.
    pub fn start_with(prefix: &[&str], host: &str) -> Option<Postgres> {
        let Some(bin) = newest_bin() else {
            eprintln!("skipped: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        if !Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|o| o.status.success()) {
            eprintln!("skipped: no `postgres` user to run PostgreSQL as");
            return None;
        }
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "minilb-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut pg = Postgres {
            host: host.to_string(),
            port: 0,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            bin,
            dir,
        };
        let chown = Command::new("chown")
            .args(["postgres:postgres", &pg.dir.display().to_string()])
            .status();
        if !chown.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot give a temp folder to the postgres user (not root?)");
            return None;
        }
        let copied = Command::new("cp")
            .arg("-a")
            .arg(template(&pg.bin).join("data"))
            .arg(pg.data())
            .status();
        assert!(copied.is_ok_and(|s| s.success()), "cannot copy the template");
        // The copy keeps the template's owner by number: the postgres user's, unless it changed.
        let owned = Command::new("chown").args(["-R", "postgres:postgres", &pg.data()]).status();
        assert!(owned.is_ok_and(|s| s.success()), "cannot chown {}", pg.data());
        // A port found free may be taken before the cluster binds it: try a few.
        for _ in 0..5 {
            pg.port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if pg.pg_ctl_start() {
                for sql in [
                    format!("CREATE ROLE {OWNER} LOGIN"),
                    format!("CREATE ROLE {READER} LOGIN"),
                    format!("CREATE DATABASE colors OWNER {OWNER}"),
                ] {
                    pg.psql("postgres", &sql);
                }
                pg.psql(
                    "colors",
                    &format!(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public \
                     GRANT SELECT ON TABLES TO {READER};"
                    ),
                );
                return Some(pg);
            }
        }
        panic!("PostgreSQL would not start: {}", pg.log());
    }

    /// The URL of the `colors` database for `role`.
    pub fn url(&self, role: &str) -> String {
        format!("postgres://{role}@{}:{}/colors", self.host, self.port)
    }

    /// Runs `sql` as the superuser on `database`; returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let psql = self.bin.join("psql").display().to_string();
        let port = self.port.to_string();
        let out = self.run(&[
            &psql,
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            &self.host,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ]);
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the cluster at once, as a crash would.
    pub fn stop(&self) {
        let data = self.data();
        let _ = self.as_postgres("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// Starts it again on the same port after [`Postgres::stop`].
    pub fn restart(&self) {
        assert!(self.pg_ctl_start(), "PostgreSQL would not restart: {}", self.log());
    }

    /// Freezes the cluster (SIGSTOP to the postmaster and its children), as a hung machine
    /// would, until the guard is dropped (also when a test panics).
    pub fn freeze(&self) -> Frozen<'_> {
        self.signal_all("-STOP");
        Frozen(self)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the postmaster and its children, with the shell's
    /// own `kill` (no procps needed).
    fn signal_all(&self, signal: &str) {
        let pids = fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap_or_default();
        let postmaster = pids.lines().next().unwrap_or_default().trim();
        let mut all = vec![postmaster.to_string()];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // After the command name in parentheses: the state, then the parent's pid.
            let parent = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1));
            if parent == Some(postmaster) {
                all.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        let kill = format!("kill {signal} {}", all.join(" "));
        let _ = Command::new("sh").args(["-c", &kill]).status();
    }

    /// Starts the server and waits (`pg_ctl -w` polls until it accepts connections, 60 s at
    /// most); false when it did not come up.
    fn pg_ctl_start(&self) -> bool {
        let data = self.data();
        let log = self.dir.join("log").display().to_string();
        let options = format!(
            "-p {} -k {} -c listen_addresses={} -c fsync=off",
            self.port,
            self.dir.display(),
            self.host
        );
        let out = self.as_postgres(
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-t", "60", "-w", "start"],
        );
        out.status.success()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Runs one of PostgreSQL's programs as the `postgres` user (it refuses to run as root).
    fn as_postgres(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bin.join(program).display().to_string();
        let mut all = vec!["runuser", "-u", "postgres", "--", &program];
        all.extend(args);
        self.run(&all)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        all.extend(args);
        Command::new(all[0])
            .args(&all[1..])
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", all[0]))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A frozen cluster, thawed on drop.
pub struct Frozen<'a>(&'a Postgres);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal_all("-CONT");
    }
}

/// A fresh cluster's folder (`initdb`'s output), made once per PostgreSQL version and kept in
/// cargo's temp folder for tests: each test copies it, a tenth of a second, where `initdb` takes
/// seconds of CPU. `initdb` runs in the system's temp folder (the `postgres` user may not be able
/// to reach the project's); the result is copied beside the build, then renamed, so that it is
/// whole when it exists, even with two test processes racing to make it.
fn template(bin: &Path) -> &'static Path {
    // Change when the settings below change, so that an old template is not reused.
    const SETTINGS: &str = "trust-all-v1";
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = bin.parent().and_then(Path::file_name).unwrap();
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let done = tmp.join(format!("pg-template-{}-{SETTINGS}", version.to_string_lossy()));
        if done.exists() {
            return done;
        }
        let pid = std::process::id();
        let making = std::env::temp_dir().join(format!("minilb-pg-template.{pid}"));
        let _ = fs::remove_dir_all(&making);
        fs::create_dir_all(&making).unwrap();
        let chown = Command::new("chown")
            .args(["postgres:postgres", &making.display().to_string()])
            .status();
        assert!(chown.is_ok_and(|s| s.success()), "cannot chown {making:?}");
        let data = making.join("data").display().to_string();
        let initdb = bin.join("initdb").display().to_string();
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", &initdb, "-D", &data])
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .current_dir(&making)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        // Reachable from other hosts (the namespace tests); trust, as each cluster listens on
        // one address of a test network only.
        let hba = making.join("data/pg_hba.conf");
        let mut rules = fs::read_to_string(&hba).unwrap();
        rules.push_str("host all all 0.0.0.0/0 trust\n");
        fs::write(&hba, rules).unwrap();
        let staged = tmp.join(format!("pg-template.{pid}"));
        let _ = fs::remove_dir_all(&staged);
        let copied = Command::new("cp").arg("-a").arg(&making).arg(&staged).status();
        let _ = fs::remove_dir_all(&making);
        assert!(copied.is_ok_and(|s| s.success()), "cannot copy {making:?}");
        // `--no-sync` above: on disk before it is named whole.
        let _ = Command::new("sync").arg("-f").arg(&staged).status();
        if let Err(e) = fs::rename(&staged, &done) {
            // Another test process made it first; anything else is an error.
            let _ = fs::remove_dir_all(&staged);
            assert!(done.exists(), "cannot keep the template at {done:?}: {e}");
        }
        done
    })
}

/// `bin` of the newest `/usr/lib/postgresql/<version>` that has `initdb`.
fn newest_bin() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

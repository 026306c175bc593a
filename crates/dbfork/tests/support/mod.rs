//! Test support: a real server per backend (from `DBFORK_TEST_POSTGRES_URL` /
//! `DBFORK_TEST_MYSQL_URL`, which `scripts/test` points at ephemeral servers it
//! starts with `dbfork db ephemeral`), a private maintenance database per test
//! (so each test has its own registry and can assert it is empty at the end),
//! and SQL run through the servers' own command-line clients.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use dbfork_engine::DbUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mysql,
    Sqlite,
}

/// One test's place on a server: its own maintenance database, dropped at the end.
pub struct Place {
    pub kind: Kind,
    /// The URL whose database is this test's maintenance database.
    pub url: String,
    /// Empty for an admin handle on the server's own maintenance database
    /// (it creates and drops the tests' places, and sweeps no registry).
    pub maint: String,
    pub dir: tempfile::TempDir,
}

fn server_url(kind: Kind) -> DbUrl {
    let var = match kind {
        Kind::Postgres => "DBFORK_TEST_POSTGRES_URL",
        Kind::Mysql => "DBFORK_TEST_MYSQL_URL",
        Kind::Sqlite => unreachable!(),
    };
    let text = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with `scripts/test`, which starts ephemeral servers, or point {var} at a server")
    });
    DbUrl::parse(&text).expect("a valid test server URL")
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("dft_{tag}_{}_{:x}", std::process::id(), nanos)
}

impl Place {
    pub fn new(kind: Kind, tag: &str) -> Place {
        let dir = tempfile::tempdir().unwrap();
        let maint = unique(tag);
        let url = match kind {
            Kind::Sqlite => format!("sqlite://{}/main.db", dir.path().display()),
            _ => {
                let server = server_url(kind);
                let admin = Place {
                    kind,
                    url: server.to_url_with_password(),
                    maint: String::new(),
                    dir: tempfile::tempdir().unwrap(),
                };
                admin.sql_ok(None, &format!("CREATE DATABASE {maint}"));
                server.with_database(&maint).to_url_with_password()
            }
        };
        Place {
            kind,
            url,
            maint,
            dir,
        }
    }

    pub fn db_url(&self) -> DbUrl {
        DbUrl::parse(&self.url).unwrap()
    }

    /// Runs SQL on `db` (None: the maintenance database) with the server's client; returns stdout.
    pub fn sql(&self, db: Option<&str>, sql: &str) -> Output {
        let url = self.db_url();
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
                pg_args(&mut c, &url, db);
                c.args(["-c", sql]);
                c
            }
            Kind::Mysql => {
                let mut c = Command::new("mariadb");
                c.args(["--batch", "--skip-column-names"]);
                my_args(&mut c, &url, db);
                c.args(["-e", sql]);
                c
            }
            Kind::Sqlite => {
                let path = match db {
                    Some(name) => self.dir.path().join(format!("{name}.sqlite3")),
                    None => self.dir.path().join("main.db"),
                };
                sqlite_command(&path, sql)
            }
        };
        cmd.output().expect("running the database client")
    }

    /// Runs SQL on the SQLite file `path` (e.g. the registry); returns stdout.
    pub fn sqlite_file_ok(path: &Path, sql: &str) -> String {
        let out = sqlite_command(path, sql).output().expect("running python3");
        assert!(
            out.status.success(),
            "SQL failed on {}: {sql}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn sql_ok(&self, db: Option<&str>, sql: &str) -> String {
        let out = self.sql(db, sql);
        assert!(
            out.status.success(),
            "SQL failed on {:?}: {sql}\n{}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A long-lived client session on `db`, fed SQL through its stdin.
    pub fn session(&self, db: &str) -> std::process::Child {
        let url = self.db_url();
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q"]);
                pg_args(&mut c, &url, Some(db));
                c
            }
            Kind::Mysql => {
                let mut c = Command::new("mariadb");
                c.arg("--batch");
                my_args(&mut c, &url, Some(db));
                c
            }
            Kind::Sqlite => panic!("no sessions on SQLite"),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// A shell loop that connects to `db` again and again.
    pub fn reconnect_loop(&self, db: &str) -> std::process::Child {
        let url = self.db_url();
        let mut client = match self.kind {
            Kind::Postgres => {
                let mut c = Command::new("psql");
                c.args(["-X", "-q"]);
                pg_args(&mut c, &url, Some(db));
                c.args(["-c", "select 1"]);
                c
            }
            _ => {
                let mut c = Command::new("mariadb");
                my_args(&mut c, &url, Some(db));
                c.args(["-e", "select 1"]);
                c
            }
        };
        let argv: Vec<String> = std::iter::once(client.get_program())
            .chain(client.get_args())
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect();
        let _ = &mut client;
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while true; do {} >/dev/null 2>&1; sleep 0.02; done",
                argv.join(" ")
            ))
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Whether database `name` exists on the server.
    pub fn exists(&self, name: &str) -> bool {
        match self.kind {
            Kind::Postgres => !self
                .sql_ok(
                    None,
                    &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
                )
                .is_empty(),
            Kind::Mysql => !self
                .sql_ok(
                    None,
                    &format!(
                        "SELECT 1 FROM information_schema.schemata WHERE schema_name = '{name}'"
                    ),
                )
                .is_empty(),
            Kind::Sqlite => self.dir.path().join(format!("{name}.sqlite3")).exists(),
        }
    }

    /// The registry's rows, through `dbfork db list --json`.
    pub fn registry(&self) -> Vec<serde_json::Value> {
        let out = dbfork()
            .args(["db", "list", "--json", "--db", &self.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn registry_names(&self) -> Vec<String> {
        self.registry()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The shell command that applies `sql_file` to the database dbfork hands it,
    /// using only the environment variables dbfork sets.
    pub fn apply_cmd(&self, sql_file: &Path) -> String {
        let f = sql_file.display();
        match self.kind {
            Kind::Postgres => format!("psql -X -q -v ON_ERROR_STOP=1 -f {f}"),
            Kind::Mysql => format!("mariadb --batch -u \"$MYSQL_USER\" \"$MYSQL_DATABASE\" < {f}"),
            Kind::Sqlite => format!(
                "python3 -c 'import sqlite3,os,sys; c=sqlite3.connect(os.environ[\"DBFORK_SQLITE_PATH\"]); c.executescript(open(sys.argv[1]).read()); c.commit()' {f}"
            ),
        }
    }

    /// The test schema of this backend: tables with a foreign key, an index,
    /// a view, a trigger, a function and rows.
    pub fn schema(&self) -> &'static str {
        match self.kind {
            Kind::Postgres => include_str!("schema_postgres.sql"),
            Kind::Mysql => include_str!("schema_mysql.sql"),
            Kind::Sqlite => include_str!("schema_sqlite.sql"),
        }
    }

    /// What a database holds, as text to compare: catalog objects and row counts.
    pub fn signature(&self, db: &str) -> String {
        let query = match self.kind {
            Kind::Postgres => include_str!("signature_postgres.sql"),
            Kind::Mysql => include_str!("signature_mysql.sql"),
            Kind::Sqlite => include_str!("signature_sqlite.sql"),
        };
        if self.kind == Kind::Postgres {
            // Templates refuse connections; let this test look, then close it again.
            self.sql_ok(None, &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
            let s = self.sql_ok(Some(db), query);
            if db.contains("_tpl_") {
                self.sql_ok(
                    None,
                    &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"),
                );
            }
            return s;
        }
        self.sql_ok(Some(db), query)
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.maint.is_empty() {
            // An admin handle on the server's own maintenance database (made
            // to create or drop a test's): its registry is not this test's
            // but the one runs without --db use there (a template another
            // test is building), and is never swept from here.
            return;
        }
        // Whatever a failed test left in its registry goes too, so no run leaks into the next.
        if let Ok(out) = dbfork()
            .args(["db", "list", "--json", "--db", &self.url])
            .output()
        {
            let names: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .collect();
            // One by one: the collection each command starts with may have
            // dropped some already (a killed service's clones), and a name
            // no longer registered fails its whole command.
            for name in &names {
                let _ = dbfork()
                    .args(["db", "drop", "--db", &self.url, name])
                    .output();
            }
        }
        if self.kind != Kind::Sqlite {
            let server = server_url(self.kind);
            let admin = Place {
                kind: self.kind,
                url: server.to_url_with_password(),
                maint: String::new(),
                dir: tempfile::tempdir().unwrap(),
            };
            // A test's psql session may still be connected (a killed client's
            // backend lives on in its pg_sleep): PostgreSQL ends it.
            let force = if self.kind == Kind::Postgres {
                " WITH (FORCE)"
            } else {
                ""
            };
            let _ = admin.sql(
                None,
                &format!("DROP DATABASE IF EXISTS {}{force}", self.maint),
            );
        }
    }
}

/// Where clients reach the server: its socket (directory or file) or its host.
pub fn host_or_socket(url: &DbUrl) -> String {
    url.socket
        .as_ref()
        .map(|s| s.display().to_string())
        .or(url.host.clone())
        .unwrap_or_default()
}

pub fn pg_args(c: &mut Command, url: &DbUrl, db: Option<&str>) {
    let host = host_or_socket(url);
    c.args(["-h", &host, "-p", &url.port.unwrap_or(5432).to_string()]);
    c.args(["-U", url.user.as_deref().unwrap_or("postgres")]);
    c.args(["-d", db.or(url.database.as_deref()).unwrap_or("postgres")]);
    if let Some(p) = &url.password {
        c.env("PGPASSWORD", p);
    }
}

pub fn my_args(c: &mut Command, url: &DbUrl, db: Option<&str>) {
    if let Some(socket) = &url.socket {
        c.arg(format!("--socket={}", socket.display()));
    } else {
        c.args([
            "-h",
            url.host.as_deref().unwrap(),
            "-P",
            &url.port.unwrap_or(3306).to_string(),
            "--protocol=tcp",
        ]);
    }
    c.args(["-u", url.user.as_deref().unwrap_or("root")]);
    if let Some(p) = &url.password {
        c.env("MYSQL_PWD", p);
    }
    if let Some(db) = db.or(url.database.as_deref()) {
        c.arg(db);
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

use std::os::unix::process::CommandExt;

/// SQL on a SQLite file through Python's sqlite3 (no sqlite3 binary needed):
/// rows printed `|`-separated.
fn sqlite_command(path: &Path, sql: &str) -> Command {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]).fetchall(): print('|'.join(str(x) for x in r))\nc.commit()",
    ]);
    c.arg(path).arg(sql);
    c
}

pub fn dbfork() -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("dbfork"));
    c.env_remove("DBFORK_DB").env("DBFORK_LOG", "warn");
    c
}

/// `dbfork db ephemeral KIND` started, with its standard error to `stderr`:
/// the running command and the server's URL (its first line of output).
pub fn ephemeral(kind: &str, stderr: Stdio) -> (std::process::Child, String) {
    let mut command = dbfork()
        .args(["db", "ephemeral", kind])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut url = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(command.stdout.take().unwrap()),
        &mut url,
    )
    .unwrap();
    (command, url.trim().to_string())
}

/// Runs dbfork and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = dbfork().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

pub fn kill_group(child: &mut std::process::Child) {
    // SAFETY: signalling a process group this test started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
    let _ = child.wait();
}

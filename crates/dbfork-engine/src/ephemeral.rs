//! Ephemeral servers: `--db postgres:ephemeral` and `--db mariadb:ephemeral`
//! start a private throwaway server from the installed binaries, so dbfork and
//! its own tests need no server someone else started.
//!
//! Each server lives in its own directory on tmpfs (`/dev/shm` where it is a
//! writable tmpfs), named `dbfork-ephemeral-<kind>-<pid>-<random>`, listens on
//! a Unix socket in that directory only, and runs with durability off (it is
//! thrown away anyway). The directory holds an `owner` file (this process: pid,
//! start time, host) and a `server` file (the server's pid and start time), so
//! that [`collect_stale`] can stop and remove what a killed dbfork left behind.
//!
//! The server runs in its own process group: killing it never signals dbfork,
//! and Ctrl-C in a terminal does not reach it before dbfork stops it in order.
//! As root, the server runs as the `postgres` (resp. `mysql`) system user, or
//! `nobody`, because neither server agrees to run as root.
//!
//! Its parts: `places` (the directory, the user, the programs), `stale`
//! (what a killed dbfork left) and `tests`; here the server's life.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::process::{Child, Command};

use crate::error::{Error, Result};
use crate::process::{is_alive, Liveness, Owner};
use crate::url::{DbUrl, Kind};

mod places;
mod stale;

pub(crate) use places::debian_pg_dirs;
use places::*;
pub use stale::collect_stale;
use stale::*;

/// The prefix of every ephemeral server directory.
const DIR_PREFIX: &str = "dbfork-ephemeral-";
/// The PostgreSQL port: it only names the socket file, which lives in our own directory.
const PG_PORT: u16 = 5432;
/// Longest wait for `initdb` / `mariadb-install-db`.
const INIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to shut down after the polite signal.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a process to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// Bound on one readiness probe (connect, handshake).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A directory without a readable `owner` file is stale only when older than
/// this (its creator may be about to write the file).
const OWNERLESS_GRACE: Duration = Duration::from_secs(120);
/// `sun_path` holds 108 bytes on Linux (104 on BSDs), the NUL included.
const MAX_SOCKET_PATH: usize = 103;

/// InnoDB settings shared by `mariadb-install-db` (so the files are created
/// with them) and `mariadbd`.
const MARIADB_INNODB: &[&str] = &[
    "--innodb-buffer-pool-size=256M",
    "--innodb-log-file-size=64M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-flush-method=nosync",
    "--innodb-doublewrite=0",
];

/// The two server kinds an ephemeral server can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Postgres,
    MariaDb,
}

impl Flavor {
    fn of(kind: Kind) -> Result<Flavor> {
        match kind {
            Kind::Postgres => Ok(Flavor::Postgres),
            Kind::Mysql => Ok(Flavor::MariaDb),
            Kind::Sqlite => Err(Error::Ephemeral {
                kind: "SQLite",
                cause: "SQLite needs no server: use sqlite:///path/to/file.db".to_string(),
            }),
        }
    }

    fn kind(self) -> Kind {
        match self {
            Flavor::Postgres => Kind::Postgres,
            Flavor::MariaDb => Kind::Mysql,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Flavor::Postgres => "PostgreSQL",
            Flavor::MariaDb => "MariaDB",
        }
    }

    /// The kind as it appears in directory names.
    fn slug(self) -> &'static str {
        match self {
            Flavor::Postgres => "postgres",
            Flavor::MariaDb => "mariadb",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Flavor::Postgres => "postgresql",
            Flavor::MariaDb => "mariadb-server",
        }
    }

    fn bindir_var(self) -> &'static str {
        match self {
            Flavor::Postgres => dbfork_meta::env::PG_BINDIR,
            Flavor::MariaDb => dbfork_meta::env::MARIADB_BINDIR,
        }
    }

    /// The system user the server runs as when dbfork runs as root.
    fn system_user(self) -> &'static str {
        match self {
            Flavor::Postgres => "postgres",
            Flavor::MariaDb => "mysql",
        }
    }

    /// Names of the program that creates a data directory, preferred first.
    fn init_names(self) -> &'static [&'static str] {
        match self {
            Flavor::Postgres => &["initdb"],
            Flavor::MariaDb => &["mariadb-install-db", "mysql_install_db"],
        }
    }

    /// Names of the server program, preferred first.
    fn server_names(self) -> &'static [&'static str] {
        match self {
            Flavor::Postgres => &["postgres"],
            Flavor::MariaDb => &["mariadbd", "mysqld"],
        }
    }

    /// The Unix socket the server listens on, inside its directory.
    fn socket(self, dir: &Path, port: u16) -> PathBuf {
        match self {
            Flavor::Postgres => dir.join(format!(".s.PGSQL.{port}")),
            Flavor::MariaDb => dir.join("mysqld.sock"),
        }
    }

    /// The signal that asks the server for a fast, clean shutdown.
    fn stop_signal(self) -> crate::sys::Signal {
        match self {
            Flavor::Postgres => crate::sys::SIGINT,
            Flavor::MariaDb => crate::sys::SIGTERM,
        }
    }

    fn url(self, dir: &Path, port: u16) -> DbUrl {
        match self {
            Flavor::Postgres => DbUrl {
                kind: Kind::Postgres,
                user: Some("postgres".to_string()),
                password: None,
                host: None,
                port: Some(port),
                socket: Some(dir.to_path_buf()),
                database: Some("postgres".to_string()),
                params: Vec::new(),
            },
            Flavor::MariaDb => DbUrl {
                kind: Kind::Mysql,
                user: Some("root".to_string()),
                password: None,
                host: None,
                port: None,
                socket: Some(self.socket(dir, port)),
                database: Some("mysql".to_string()),
                params: Vec::new(),
            },
        }
    }
}

/// The programs that make and run a server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Programs {
    init: PathBuf,
    server: PathBuf,
}

/// The unprivileged user a server runs as when dbfork runs as root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// A PostgreSQL that takes TCP connections on 127.0.0.1 over TLS only
/// (beside its Unix socket), for testing TLS: its certificate and key
/// (PEM), and the port.
#[derive(Debug, Clone)]
pub struct TlsOnly {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub port: u16,
}

/// A private throwaway database server. Stop it with [`EphemeralServer::stop`];
/// dropping it instead kills the server and removes its directory.
#[derive(Debug)]
pub struct EphemeralServer {
    flavor: Flavor,
    dir: PathBuf,
    url: DbUrl,
    /// PostgreSQL's port (its socket's name; on 127.0.0.1 too with `tls`).
    port: u16,
    tls: Option<TlsOnly>,
    /// The running init program or server.
    child: Option<Child>,
    /// Whether the directory is already gone.
    removed: bool,
}

impl EphemeralServer {
    /// Starts a private server of `kind` (Kind::Postgres or Kind::Mysql).
    pub async fn start(kind: Kind) -> Result<EphemeralServer> {
        EphemeralServer::start_with(kind, None, None).await
    }

    /// A private PostgreSQL that also listens on 127.0.0.1:`tls.port`, where
    /// it takes TLS connections only (for testing dbfork's `sslmode`).
    pub async fn start_postgres_tls_only(tls: TlsOnly) -> Result<EphemeralServer> {
        EphemeralServer::start_with(Kind::Postgres, None, Some(tls)).await
    }

    /// [`EphemeralServer::start`], searching only `bindirs` for the programs when given.
    async fn start_with(
        kind: Kind,
        bindirs: Option<Vec<PathBuf>>,
        tls: Option<TlsOnly>,
    ) -> Result<EphemeralServer> {
        let flavor = Flavor::of(kind)?;
        let began = Instant::now();
        match tokio::task::spawn_blocking(collect_stale).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(
                    "removed {} stale ephemeral server directories",
                    removed.len()
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("collecting stale ephemeral servers failed: {e}"),
        }
        let programs = find_programs(flavor, bindirs).await?;
        let run_as = run_as(flavor);
        let dir = make_dir(flavor, run_as.as_ref())?;
        let port = tls.as_ref().map_or(PG_PORT, |t| t.port);
        let mut server = EphemeralServer {
            flavor,
            url: flavor.url(&dir, port),
            dir,
            port,
            tls,
            child: None,
            removed: false,
        };
        write_owner(&server.dir.join("owner"), &Owner::this_process())?;
        let init_took = server.init(&programs, run_as.as_ref()).await?;
        server.tls_only(run_as.as_ref())?;
        server.serve(&programs, run_as.as_ref()).await?;
        tracing::info!(
            "started an ephemeral {} server in {} ms (data directory {} ms{}): {}",
            flavor.label(),
            began.elapsed().as_millis(),
            init_took.as_millis(),
            run_as
                .map(|r| format!(", running as {}", r.name))
                .unwrap_or_default(),
            server.url
        );
        Ok(server)
    }

    /// Its admin URL: maintenance database `postgres` (PostgreSQL, user
    /// postgres) or `mysql` (MariaDB, user root), no password.
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The directory the server lives in (its socket, data and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn kind(&self) -> Kind {
        self.flavor.kind()
    }

    /// Waits until the server ends by itself (killed, crashed, or restarted
    /// by someone: its first process then exits): the error that says so.
    /// Never returns while it runs.
    pub async fn ended_by_itself(&mut self) -> Error {
        let name = self.flavor.label();
        let Some(child) = self.child.as_mut() else {
            return std::future::pending().await;
        };
        let status = child.wait().await;
        self.child = None;
        let cause = match status {
            Ok(status) => format!(
                "it exited ({status}); the last lines of its log:\n{}",
                tail(&self.dir.join("server.log"))
            ),
            Err(e) => format!("waiting for it failed: {e}"),
        };
        Error::EphemeralEnded { kind: name, cause }
    }

    /// The server process named by the data directory's pid file, when one
    /// runs that is not the one this started (a restarted server).
    fn pidfile_server(&self) -> Option<u32> {
        let file = match self.flavor {
            Flavor::Postgres => self.dir.join("data").join("postmaster.pid"),
            Flavor::MariaDb => self.dir.join("mysqld.pid"),
        };
        let text = std::fs::read_to_string(file).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = self.dir.as_os_str().as_bytes();
        cmdline
            .windows(needle.len())
            .any(|w| w == needle)
            .then_some(pid)
    }

    /// Stops the server (fast shutdown, bounded wait then SIGKILL) and removes its directory.
    pub async fn stop(mut self) -> Result<()> {
        let began = Instant::now();
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                signal(pid, self.flavor.stop_signal());
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    "waiting for the ephemeral {} server: {e}",
                    self.flavor.label()
                ),
                Err(_) => {
                    tracing::warn!(
                        "the ephemeral {} server did not stop within {STOP_TIMEOUT:?}; killing it",
                        self.flavor.label()
                    );
                    if let Some(pid) = child.id() {
                        kill_group(pid);
                    }
                    if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                        tracing::warn!(
                            "the ephemeral {} server survived SIGKILL for {KILL_WAIT:?}",
                            self.flavor.label()
                        );
                    }
                }
            }
        }
        // A server someone restarted in this directory is not our child:
        // the pid file names it.
        if let Some(pid) = self.pidfile_server() {
            tracing::warn!(
                "the ephemeral {} server was restarted by someone else (pid {pid}); stopping that one too",
                self.flavor.label()
            );
            signal(pid, self.flavor.stop_signal());
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.pidfile_server() == Some(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.pidfile_server() == Some(pid) {
                kill_group(pid);
            }
        }
        let dir = self.dir.clone();
        let removal = tokio::task::spawn_blocking(move || remove_server_dir(&dir))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        removal.map_err(Error::io(format!(
            "removing the ephemeral server directory {}",
            self.dir.display()
        )))?;
        self.removed = true;
        tracing::info!(
            "stopped the ephemeral {} server in {} ms and removed {}",
            self.flavor.label(),
            began.elapsed().as_millis(),
            self.dir.display()
        );
        Ok(())
    }

    /// With [`TlsOnly`]: the certificate and key in the server's directory,
    /// the server's user's own (0600), and a `pg_hba.conf` that takes TCP
    /// connections over TLS only.
    fn tls_only(&self, run_as: Option<&RunAs>) -> Result<()> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let data = self.dir.join("data");
        let files = [
            (self.dir.join("tls.crt"), std::fs::read(&tls.cert)),
            (self.dir.join("tls.key"), std::fs::read(&tls.key)),
            (
                data.join("pg_hba.conf"),
                Ok(b"local all all trust\nhostssl all all 127.0.0.1/32 trust\n".to_vec()),
            ),
        ];
        for (path, bytes) in files {
            let bytes = bytes.map_err(Error::io("reading the TLS certificate or key"))?;
            let _ = std::fs::remove_file(&path);
            let mut file = crate::files::create_new_private(&path)
                .map_err(Error::io(format!("writing {}", path.display())))?;
            std::io::Write::write_all(&mut file, &bytes)
                .map_err(Error::io(format!("writing {}", path.display())))?;
            if let Some(user) = run_as {
                std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).map_err(
                    Error::io(format!("handing {} to {}", path.display(), user.name)),
                )?;
            }
        }
        Ok(())
    }

    /// Creates the data directory (`initdb` / `mariadb-install-db`); returns the time taken.
    async fn init(&mut self, programs: &Programs, run_as: Option<&RunAs>) -> Result<Duration> {
        let began = Instant::now();
        let data = self.dir.join("data");
        let log = self.dir.join("init.log");
        let mut cmd = self.command(&programs.init, &log, run_as)?;
        match self.flavor {
            Flavor::Postgres => {
                cmd.arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]);
            }
            Flavor::MariaDb => {
                // No --user: as root we already run it as the unprivileged user
                // (with --user the script would also chown system plugin files).
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .args([
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                        "--skip-name-resolve",
                        // --force: do not resolve the host name (slow or hanging without DNS).
                        "--force",
                    ])
                    .args(MARIADB_INNODB);
            }
        }
        let name = program_name(&programs.init);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {}", programs.init.display())))?;
        self.record_pid(&child)?;
        let child = self.child.insert(child);
        let status = match tokio::time::timeout(INIT_TIMEOUT, child.wait()).await {
            Ok(status) => status.map_err(Error::io(format!("waiting for {name}")))?,
            Err(_) => {
                return Err(self.failure(format!(
                    "`{name}` did not finish within {INIT_TIMEOUT:?}; the last lines of its output:\n{}",
                    tail(&log)
                )));
            }
        };
        self.child = None;
        if !status.success() {
            return Err(self.failure(format!(
                "`{name}` failed ({status}); the last lines of its output:\n{}",
                tail(&log)
            )));
        }
        Ok(began.elapsed())
    }

    /// Starts the server and waits until it accepts connections.
    async fn serve(&mut self, programs: &Programs, run_as: Option<&RunAs>) -> Result<()> {
        let log = self.dir.join("server.log");
        let data = self.dir.join("data");
        let mut cmd = self.command(&programs.server, &log, run_as)?;
        match self.flavor {
            Flavor::Postgres => {
                cmd.arg("-D")
                    .arg(&data)
                    .arg("-k")
                    .arg(&self.dir)
                    .args(["-p", &self.port.to_string()]);
                if self.tls.is_some() {
                    let (cert, key) = (self.dir.join("tls.crt"), self.dir.join("tls.key"));
                    cmd.args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"])
                        .args(["-c", &format!("ssl_cert_file={}", cert.display())])
                        .args(["-c", &format!("ssl_key_file={}", key.display())]);
                } else {
                    cmd.args(["-c", "listen_addresses="]);
                }
                for setting in [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                    "shared_buffers=128MB",
                    "max_connections=200",
                    "wal_level=minimal",
                    "max_wal_senders=0",
                ] {
                    cmd.args(["-c", setting]);
                }
                if crate::sys::is_tmpfs(&self.dir) {
                    // Dynamic shared memory as files in the data directory
                    // rather than in /dev/shm, so a killed server leaves none
                    // behind: its directory goes, and them with it.
                    cmd.args(["-c", "dynamic_shared_memory_type=mmap"]);
                }
            }
            Flavor::MariaDb => {
                let dir = self.dir.display();
                cmd.arg("--no-defaults")
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!(
                        "--socket={}",
                        self.flavor.socket(&self.dir, self.port).display()
                    ))
                    .arg(format!("--pid-file={dir}/mysqld.pid"))
                    .arg(format!("--tmpdir={dir}"))
                    .args([
                        "--skip-networking",
                        "--skip-name-resolve",
                        "--skip-log-bin",
                        "--sync-binlog=0",
                        "--skip-sync-frm",
                        "--innodb-buffer-pool-dump-at-shutdown=0",
                        "--innodb-buffer-pool-load-at-startup=0",
                        "--max-connections=200",
                        "--character-set-server=utf8mb4",
                        "--collation-server=utf8mb4_general_ci",
                    ])
                    .args(MARIADB_INNODB);
            }
        }
        let name = program_name(&programs.server);
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {}", programs.server.display())))?;
        self.record_pid(&child)?;
        self.child = Some(child);
        let socket = self.flavor.socket(&self.dir, self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = format!("its socket {} did not appear", socket.display());
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child
                    .try_wait()
                    .map_err(Error::io(format!("waiting for {name}")))?
                {
                    self.child = None;
                    return Err(self.exited(&name, status, &log));
                }
            }
            if socket.exists() {
                let (flavor, probe_socket) = (self.flavor, socket.clone());
                match tokio::task::spawn_blocking(move || probe(flavor, &probe_socket)).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => last = e,
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(self.failure(format!(
                    "`{name}` did not accept connections within {READY_TIMEOUT:?} ({last}); the last lines of its log:\n{}",
                    tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn exited(&self, name: &str, status: ExitStatus, log: &Path) -> Error {
        self.failure(format!(
            "`{name}` exited ({status}); the last lines of its log:\n{}",
            tail(log)
        ))
    }

    fn failure(&self, cause: String) -> Error {
        Error::Ephemeral {
            kind: self.flavor.label(),
            cause,
        }
    }

    /// A command run in the server directory, in its own process group, as
    /// `run_as` when given, with its output appended to `log`.
    fn command(&self, program: &Path, log: &Path, run_as: Option<&RunAs>) -> Result<Command> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io(format!("opening {}", log.display())))?;
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(user) = run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        Ok(cmd)
    }

    /// Records the pid of the process now working in the directory, for [`collect_stale`].
    fn record_pid(&self, child: &Child) -> Result<()> {
        match child.id() {
            Some(pid) => write_owner(&self.dir.join("server"), &Owner::of_pid(pid)),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    fn server_pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

impl Drop for EphemeralServer {
    /// Best effort and synchronous: SIGKILL the server's process group, wait a
    /// little for it, remove the directory.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                kill_group(pid);
            }
            let deadline = Instant::now() + KILL_WAIT;
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
        if !self.removed {
            match remove_server_dir(&self.dir) {
                Ok(()) => tracing::info!(
                    "cleaned up the ephemeral {} server (not stopped in order): removed {}",
                    self.flavor.label(),
                    self.dir.display()
                ),
                Err(e) => tracing::warn!("could not remove {}: {e}", self.dir.display()),
            }
            self.removed = true;
        }
    }
}

fn program_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The last lines of a log file, for error messages.
fn tail(log: &Path) -> String {
    const LINES: usize = 25;
    let text = match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", log.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

/// One bounded readiness check: does the server at `socket` answer?
fn probe(flavor: Flavor, socket: &Path) -> std::result::Result<(), String> {
    use std::os::unix::net::UnixStream;
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| e.to_string())?;
    match flavor {
        Flavor::Postgres => probe_postgres(&mut stream),
        Flavor::MariaDb => probe_mariadb(&mut stream),
    }
}

/// Logs in as `postgres` (trust) and waits for ReadyForQuery.
fn probe_postgres(stream: &mut std::os::unix::net::UnixStream) -> std::result::Result<(), String> {
    use std::io::{Read, Write};
    let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
    for part in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = u32::try_from(body.len() + 4)
        .map_err(|e| e.to_string())?
        .to_be_bytes()
        .to_vec();
    packet.extend(body);
    stream
        .write_all(&packet)
        .map_err(|e| format!("sending the startup packet: {e}"))?;
    for _ in 0..64 {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .map_err(|e| format!("reading the reply: {e}"))?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0u8; len.saturating_sub(4).min(1 << 16)];
        stream
            .read_exact(&mut payload)
            .map_err(|e| format!("reading the reply: {e}"))?;
        match header[0] {
            b'Z' => {
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            b'E' => {
                // Fields: a type byte and a NUL-terminated string each; `M` is the message.
                let message = payload
                    .split(|b| *b == 0)
                    .find(|f| f.first() == Some(&b'M'))
                    .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                    .unwrap_or_else(|| "an error".to_string());
                return Err(format!("the server answered: {message}"));
            }
            b'R' if payload.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(
                    "the server asks for a password although it should trust local connections"
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    Err("the server sent no ReadyForQuery".to_string())
}

/// Reads the server's greeting (protocol 10) or its error packet.
fn probe_mariadb(stream: &mut std::os::unix::net::UnixStream) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut header = [0u8; 4];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("reading the greeting: {e}"))?;
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    let mut payload = vec![0u8; len.min(1 << 16)];
    stream
        .read_exact(&mut payload)
        .map_err(|e| format!("reading the greeting: {e}"))?;
    match payload.first() {
        Some(10) => Ok(()),
        Some(0xFF) => {
            let text = payload.get(3..).unwrap_or_default();
            let text = if text.first() == Some(&b'#') {
                text.get(6..).unwrap_or_default()
            } else {
                text
            };
            Err(format!(
                "the server answered: {}",
                String::from_utf8_lossy(text)
            ))
        }
        _ => Err("the server sent an unexpected greeting".to_string()),
    }
}

#[cfg(test)]
mod tests;

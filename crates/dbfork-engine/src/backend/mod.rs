//! The backends: one trait, [`Backend`], with the same surface for every
//! server kind, one file per backend, and [`AnyBackend`] to hold whichever the
//! URL names. Everything above this module is written once, over the trait.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::registry::Entry;
use crate::url::{DbUrl, Kind};

// Every backend's cases at once: the suite opens sessions with each server's client library.
#[cfg(all(test, feature = "postgres", feature = "mysql", feature = "sqlite"))]
mod conformance;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
mod pg_tls;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// How a clone is made from its template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// PostgreSQL `CREATE DATABASE ... TEMPLATE ... STRATEGY WAL_LOG`.
    WalLog,
    /// PostgreSQL `CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY`.
    FileCopy,
    /// MySQL: `SHOW CREATE TABLE` replayed, then `INSERT ... SELECT`, tables spread over connections.
    ShowCreate,
    /// MySQL: `CREATE TABLE ... LIKE` and `INSERT ... SELECT`, foreign keys added afterwards.
    CreateLike,
    /// SQLite: a copy of the file (a reflink where the filesystem has one).
    Copy,
    /// SQLite: the online backup API.
    Backup,
}

impl CloneMethod {
    pub fn choices(kind: Kind) -> &'static str {
        match kind {
            Kind::Postgres => "file-copy, wal-log",
            Kind::Mysql => "show-create, create-like",
            Kind::Sqlite => "copy, backup",
        }
    }

    /// The default: the fastest method measured (see docs/benchmarks.md).
    pub fn default_for(kind: Kind) -> CloneMethod {
        match kind {
            Kind::Postgres => CloneMethod::FileCopy,
            Kind::Mysql => CloneMethod::ShowCreate,
            Kind::Sqlite => CloneMethod::Copy,
        }
    }

    pub fn parse(kind: Kind, text: &str) -> Result<CloneMethod> {
        let method = match (kind, text.to_ascii_lowercase().replace('_', "-").as_str()) {
            (_, "default" | "") => CloneMethod::default_for(kind),
            (Kind::Postgres, "wal-log") => CloneMethod::WalLog,
            (Kind::Postgres, "file-copy") => CloneMethod::FileCopy,
            (Kind::Mysql, "show-create") => CloneMethod::ShowCreate,
            (Kind::Mysql, "create-like") => CloneMethod::CreateLike,
            (Kind::Sqlite, "copy") => CloneMethod::Copy,
            (Kind::Sqlite, "backup") => CloneMethod::Backup,
            _ => {
                return Err(Error::BadMethod {
                    method: text.to_string(),
                    backend: kind.name(),
                    choices: CloneMethod::choices(kind),
                })
            }
        };
        Ok(method)
    }
}

/// A held lock; it is released by [`Backend::unlock`], or by the server when
/// the holder's connection (or process) goes away.
pub struct Lock {
    held: Box<dyn std::any::Any + Send + Sync>,
}

impl Lock {
    pub(crate) fn new(held: impl std::any::Any + Send + Sync) -> Lock {
        Lock {
            held: Box::new(held),
        }
    }
    /// A stand-in, replaced by a real lock before anyone unlocks it.
    pub(crate) fn none() -> Lock {
        Lock::new(())
    }
    pub(crate) fn into_inner<T: 'static>(self) -> Option<T> {
        self.held.downcast::<T>().ok().map(|b| *b)
    }
}

/// Options every backend honours when it connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// One server kind. Names passed in are always [`crate::names::is_plain`].
pub trait Backend: Send + Sync {
    fn kind(&self) -> Kind;

    /// The admin URL this backend was opened with.
    fn url(&self) -> &DbUrl;

    /// The server's version string, part of every fingerprint.
    fn server_version(&self) -> impl Future<Output = Result<String>> + Send;

    fn registry_list(&self) -> impl Future<Output = Result<Vec<Entry>>> + Send;
    /// Inserts or replaces the rows of `entries`, all in one transaction.
    fn registry_put(&self, entries: &[Entry]) -> impl Future<Output = Result<()>> + Send;
    fn registry_remove(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Drops the registry's tables when they hold no row (`dbfork clean`):
    /// whether it did. A writer that comes later makes them again.
    fn registry_drop_if_empty(&self) -> impl Future<Output = Result<bool>> + Send;

    /// Takes the server-wide lock `key`, waiting at most `wait`.
    fn lock(&self, key: &str, wait: Duration) -> impl Future<Output = Result<Lock>> + Send;
    fn unlock(&self, lock: Lock) -> impl Future<Output = Result<()>> + Send;

    /// Every database on the server whose name starts with `prefix`.
    fn databases(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;

    fn create_empty(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Makes a freshly built template ready to clone (ends its sessions, marks it a template).
    fn seal_template(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    fn clone_database(
        &self,
        template: &str,
        name: &str,
        method: CloneMethod,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Blocks new sessions, ends every session on `name` and drops it, retrying within `deadline`.
    /// Dropping a database that does not exist succeeds.
    fn drop_database(
        &self,
        name: &str,
        deadline: Duration,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes database `name` into the file `out` as this backend's own dump
    /// (the template cache's payload). On PostgreSQL `name` must accept
    /// connections: a clone, not a sealed template.
    fn export_database(
        &self,
        name: &str,
        out: &std::path::Path,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Fills database `name`, created empty, from a dump [`Backend::export_database`] wrote.
    fn import_database(
        &self,
        name: &str,
        dump: &std::path::Path,
    ) -> impl Future<Output = Result<()>> + Send;

    /// What database `name` holds, as comparable lines: every schema object's
    /// definition and every table's row count (`rows <table> <n>`), sorted.
    /// On PostgreSQL `name` must accept connections (a clone, not a sealed template).
    fn describe(&self, name: &str) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Whether database `name` carries dbfork's mark ([`crate::names::MARK`]):
    /// `None` when there is no such database, `Some(true)` also where the
    /// server has no place for a mark (MySQL, which has no schema comments).
    fn marked(&self, name: &str) -> impl Future<Output = Result<Option<bool>>> + Send;

    /// Where this backend keeps the mark (for messages).
    fn mark_place(&self) -> &'static str;

    /// How many more client connections the server takes now (`None` where
    /// there is no such limit: SQLite).
    fn connection_room(&self) -> impl Future<Output = Result<Option<Room>>> + Send;

    /// How many tables and views database `name` holds (outside the server's
    /// own schemas): a setup that left none probably wrote somewhere else.
    /// On PostgreSQL `name` must accept connections (not yet sealed).
    fn table_count(&self, name: &str) -> impl Future<Output = Result<u64>> + Send;

    /// How many bytes database `name` takes on the server, as the server
    /// tells it (PostgreSQL: `pg_database_size`; MySQL: its tables' data and
    /// indexes; SQLite: its files).
    fn database_size(&self, name: &str) -> impl Future<Output = Result<u64>> + Send;

    /// The backend's usual environment variables for a client of database `name`.
    fn client_env(&self, name: &str) -> Vec<(String, String)>;

    /// A client option file (`my.cnf`) for database `name`, where the backend's
    /// clients need one to reach the right server.
    fn client_option_file(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Whichever backend a URL names. One lives per command, so the size of its variants does not matter.
/// A server's connection limit and what is in use of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// `max_connections`.
    pub max: u64,
    /// Held back for superusers (PostgreSQL's `superuser_reserved_connections`).
    pub reserved: u64,
    /// Client connections open now.
    pub used: u64,
}

impl Room {
    /// The connections still free for new clients.
    pub fn free(&self) -> u64 {
        self.max.saturating_sub(self.reserved + self.used)
    }
}

#[allow(clippy::large_enum_variant)]
pub enum AnyBackend {
    #[cfg(feature = "postgres")]
    Postgres(postgres::Postgres),
    #[cfg(feature = "mysql")]
    Mysql(mysql::Mysql),
    #[cfg(feature = "sqlite")]
    Sqlite(sqlite::Sqlite),
    /// Keeps the enum inhabited-by-nothing-else when features are turned off.
    #[doc(hidden)]
    Never(std::convert::Infallible),
}

macro_rules! each {
    ($self:expr, $b:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            AnyBackend::Postgres($b) => $body,
            #[cfg(feature = "mysql")]
            AnyBackend::Mysql($b) => $body,
            #[cfg(feature = "sqlite")]
            AnyBackend::Sqlite($b) => $body,
            AnyBackend::Never(never) => match *never {},
        }
    };
}

impl AnyBackend {
    /// Connects to the server `url` names and makes sure its registry exists.
    pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<AnyBackend> {
        // A password from PGPASSWORD, ~/.pgpass, MYSQL_PWD or ~/.my.cnf when the
        // URL has none (children then get it through DATABASE_URL).
        let url = &crate::credentials::with_client_password(url);
        let not_built = |name: &str| Error::BadUrl {
            url: url.to_string(),
            reason: format!("this dbfork was built without the `{name}` feature"),
        };
        match url.kind {
            #[cfg(feature = "postgres")]
            Kind::Postgres => Ok(AnyBackend::Postgres(
                postgres::Postgres::connect(url, options).await?,
            )),
            #[cfg(feature = "mysql")]
            Kind::Mysql => Ok(AnyBackend::Mysql(
                mysql::Mysql::connect(url, options).await?,
            )),
            #[cfg(feature = "sqlite")]
            Kind::Sqlite => Ok(AnyBackend::Sqlite(
                sqlite::Sqlite::connect(url, options).await?,
            )),
            #[allow(unreachable_patterns)]
            kind => Err(not_built(kind.id())),
        }
    }
}

impl AnyBackend {
    /// Runs a registry operation; when the registry was dropped under this
    /// connection after it had seen it (another dbfork's `clean` while a
    /// `dbfork serve` lives on), forgets having seen it and runs it once
    /// more: a read then finds no registry, a write makes it again.
    async fn registry_again<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        match op().await {
            Err(e) if registry_gone(&e) => {
                each!(self, b => crate::registry::Store::ready(b)
                    .store(false, std::sync::atomic::Ordering::Release));
                op().await
            }
            other => other,
        }
    }
}

/// Whether a query failed because the registry's table is not there.
fn registry_gone(e: &Error) -> bool {
    matches!(e, Error::Query { cause, .. }
        if cause.contains("registry")
            && ["does not exist", "doesn't exist", "no such table"]
                .iter()
                .any(|m| cause.contains(m)))
}

impl Backend for AnyBackend {
    fn kind(&self) -> Kind {
        each!(self, b => b.kind())
    }
    fn url(&self) -> &DbUrl {
        each!(self, b => b.url())
    }
    async fn server_version(&self) -> Result<String> {
        each!(self, b => b.server_version().await)
    }
    async fn registry_list(&self) -> Result<Vec<Entry>> {
        self.registry_again(|| async { each!(self, b => b.registry_list().await) })
            .await
    }
    async fn registry_put(&self, entries: &[Entry]) -> Result<()> {
        self.registry_again(|| async { each!(self, b => b.registry_put(entries).await) })
            .await
    }
    async fn registry_remove(&self, name: &str) -> Result<()> {
        self.registry_again(|| async { each!(self, b => b.registry_remove(name).await) })
            .await
    }
    async fn registry_drop_if_empty(&self) -> Result<bool> {
        each!(self, b => b.registry_drop_if_empty().await)
    }
    async fn lock(&self, key: &str, wait: Duration) -> Result<Lock> {
        each!(self, b => b.lock(key, wait).await)
    }
    async fn unlock(&self, lock: Lock) -> Result<()> {
        each!(self, b => b.unlock(lock).await)
    }
    async fn databases(&self, prefix: &str) -> Result<Vec<String>> {
        each!(self, b => b.databases(prefix).await)
    }
    async fn create_empty(&self, name: &str) -> Result<()> {
        each!(self, b => b.create_empty(name).await)
    }
    async fn seal_template(&self, name: &str) -> Result<()> {
        each!(self, b => b.seal_template(name).await)
    }
    async fn clone_database(&self, template: &str, name: &str, method: CloneMethod) -> Result<()> {
        each!(self, b => b.clone_database(template, name, method).await)
    }
    async fn drop_database(&self, name: &str, deadline: Duration) -> Result<()> {
        // Every drop passes here: only names of the shapes dbfork makes, whatever
        // a registry row says (and on SQLite never a path outside its directory).
        if !crate::names::is_dbfork_shape(name) {
            return Err(Error::NotDbforkName {
                name: name.to_string(),
            });
        }
        // And only a database dbfork itself made: a forged row naming a
        // user's database of that shape is not enough.
        if self.marked(name).await? == Some(false) {
            return Err(Error::NotMarked {
                name: name.to_string(),
                mark: self.mark_place(),
            });
        }
        each!(self, b => b.drop_database(name, deadline).await)
    }
    async fn export_database(&self, name: &str, out: &std::path::Path) -> Result<()> {
        each!(self, b => b.export_database(name, out).await)
    }
    async fn import_database(&self, name: &str, dump: &std::path::Path) -> Result<()> {
        each!(self, b => b.import_database(name, dump).await)
    }
    async fn describe(&self, name: &str) -> Result<Vec<String>> {
        each!(self, b => b.describe(name).await)
    }
    async fn marked(&self, name: &str) -> Result<Option<bool>> {
        each!(self, b => b.marked(name).await)
    }
    fn mark_place(&self) -> &'static str {
        each!(self, b => b.mark_place())
    }
    async fn connection_room(&self) -> Result<Option<Room>> {
        each!(self, b => b.connection_room().await)
    }
    async fn table_count(&self, name: &str) -> Result<u64> {
        each!(self, b => b.table_count(name).await)
    }
    async fn database_size(&self, name: &str) -> Result<u64> {
        each!(self, b => b.database_size(name).await)
    }
    fn client_env(&self, name: &str) -> Vec<(String, String)> {
        each!(self, b => b.client_env(name))
    }
    fn client_option_file(&self, name: &str) -> Option<String> {
        each!(self, b => b.client_option_file(name))
    }
}

/// Polls `attempt` until it yields `Some`, or `wait` has passed.
pub(crate) async fn poll_until<T, F, Fut>(wait: Duration, mut attempt: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = attempt().await? {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Runs a client program (pg_dump, pg_restore) to its end; its process group
/// dies with dbfork. A failure names `what`, the exit status and the end of
/// its error output.
#[allow(dead_code)]
pub(crate) async fn run_tool(
    what: &str,
    program: &std::path::Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<()> {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    crate::reaper::arm();
    let child = command.spawn().map_err(|e| Error::Transfer {
        what: what.to_string(),
        cause: format!("{} could not be started: {e}", program.display()),
    })?;
    let pid = child.id();
    if let Some(pid) = pid {
        crate::reaper::register(pid);
    }
    let output = child.wait_with_output().await;
    if let Some(pid) = pid {
        crate::reaper::unregister(pid);
    }
    let output = output.map_err(Error::io(format!("waiting for {}", program.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(12)..].join("\n");
    Err(Error::Transfer {
        what: what.to_string(),
        cause: format!(
            "{} ended with {}: {}",
            program.display(),
            output.status,
            if tail.trim().is_empty() {
                "(no output)"
            } else {
                tail.trim()
            }
        ),
    })
}

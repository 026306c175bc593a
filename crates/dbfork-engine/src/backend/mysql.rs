//! MySQL and MariaDB: the server has no template clone, so a clone is rebuilt
//! server-side from a description of the template read once and cached: every
//! table created empty (from its `SHOW CREATE TABLE`, or by `CREATE TABLE ...
//! LIKE` plus its foreign keys), then filled by `INSERT ... SELECT` in a few
//! transactions, the tables spread over a few connections with constraint
//! checks off; then the AUTO_INCREMENT counters matched, and the routines,
//! views, triggers and events recreated, rewritten from the template's schema
//! to the clone's. Teardown kills every session on the database (and any
//! statement still filling it) and drops it with a short metadata-lock wait,
//! retrying until the deadline. Locks are `GET_LOCK` on a connection of their
//! own; the registry is the table `dbfork_registry` in the maintenance database.
//!
//! Its parts: `catalog` (the template's description), `clone` (a clone
//! rebuilt from it), `dump` (the template cache's payload), `sessions`
//! (ending sessions, the drop), `sql` (quoting, rewriting, columns); here
//! the connection pool, the registry and the [`Backend`] itself.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use mysql_async::prelude::{FromValue, Queryable};
use mysql_async::{Conn, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, Row};
use tokio::sync::{watch, OnceCell, Semaphore};
use tokio::time::Instant;

use super::{poll_until, Backend, CloneMethod, ConnectOptions, Lock};
use crate::error::{Error, Result};
use crate::registry::{
    self, ColumnType, Entry, Store, Value as Stored, COLUMNS, SCHEMA_VERSION, VERSION_KEY,
};
use crate::url::{DbUrl, Kind};

mod catalog;
mod clone;
mod dump;
mod sessions;
mod sql;
#[cfg(test)]
mod tests;

use catalog::Template;
use clone::{CloneJob, Step};
use sql::*;

const NAME: &str = "MySQL";
/// The maintenance schema when the URL names no database.
const DEFAULT_MAINTENANCE: &str = "_dbfork";
const REGISTRY_TABLE: &str = "dbfork_registry";
/// The registry's version row lives here.
const REGISTRY_META_TABLE: &str = "dbfork_registry_meta";
/// Connections of the pool: enough for a few clones at once, each over several connections.
const POOL_MAX: usize = 8;
/// How many connections one clone spreads its tables over at most (measured with the
/// benchmark among the tests: on 2 cores, K = 2..4 make one clone 1.5-2x faster than K = 1).
pub const DEFAULT_CLONE_CONNECTIONS: usize = 4;
/// How many connections fill clones at once in one process, when several clones are made
/// together; each clone's first connection works even beyond it.
const FILLING_BUDGET: usize = 4;
/// How long any statement of ours waits for a metadata lock (the server's default is a year).
const LOCK_WAIT_SECS: u64 = 30;
/// How long an operation waits for a free connection of the pool.
const POOL_WAIT: Duration = Duration::from_secs(120);
/// The longest a single statement of the lock and unlock round trips may take.
const STATEMENT_WAIT: Duration = Duration::from_secs(30);
/// The sql_mode of the sessions that read and copy a template: no strictness, and an explicit
/// 0 in an AUTO_INCREMENT column stays 0.
const COPY_SQL_MODE: &str = "NO_AUTO_VALUE_ON_ZERO";
/// How much template data (bytes of tables and indexes) a filling connection copies per transaction.
const COMMIT_BYTES: u64 = 64 << 20;
/// The MySQL limit on `GET_LOCK` names.
const MAX_LOCK_NAME: usize = 64;

pub struct Mysql {
    url: DbUrl,
    options: ConnectOptions,
    /// Connection options without a default database (for dedicated connections).
    opts: Opts,
    /// The schema that holds the registry.
    maintenance: String,
    pool: Pool,
    mariadb: bool,
    /// Whether the server keeps schema comments (MariaDB 10.5 and later):
    /// dbfork's mark ([`crate::names::MARK`]) goes there.
    marks: bool,
    clone_connections: usize,
    /// The connections filling clones at once in this process, beyond each clone's first.
    filling: Semaphore,
    /// The description of each template cloned so far, read once.
    templates: Mutex<HashMap<String, Arc<OnceCell<Arc<Template>>>>>,
    /// The registry exists at the current schema (see [`registry::open`]).
    registry_ready: AtomicBool,
}

/// A `GET_LOCK` held by a connection of its own.
struct HeldLock {
    conn: Mutex<Conn>,
    name: String,
}

impl Mysql {
    pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<Mysql> {
        refuse_tls(url)?;
        let user = url.user.clone().unwrap_or_else(|| "root".to_string());
        let mut builder = OptsBuilder::default()
            .user(Some(user))
            .pass(url.password.clone())
            .prefer_socket(false)
            .tcp_port(url.port.unwrap_or(3306))
            .setup(vec![format!(
                "SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"
            )])
            .pool_opts(
                PoolOpts::default()
                    .with_constraints(PoolConstraints::new(1, POOL_MAX).unwrap_or_default())
                    .with_inactive_connection_ttl(Duration::from_secs(60)),
            );
        builder =
            builder.ip_or_hostname(url.host.clone().unwrap_or_else(|| "localhost".to_string()));
        if let Some(socket) = &url.socket {
            builder = builder.socket(Some(socket.display().to_string()));
        }
        let maintenance = url
            .database
            .clone()
            .unwrap_or_else(|| DEFAULT_MAINTENANCE.to_string());
        let opts = Opts::from(builder.clone());
        let pool = Pool::new(builder.db_name(Some(maintenance.clone())));
        let connect_error = |e: mysql_async::Error| Error::Connect {
            url: url.to_string(),
            cause: cause(&e),
        };

        let handshake = async {
            if url.database.is_none() {
                let mut conn = Conn::new(opts.clone()).await.map_err(connect_error)?;
                conn.query_drop(format!(
                    "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
                    ident(DEFAULT_MAINTENANCE)
                ))
                .await
                .map_err(q(format!(
                    "creating the maintenance schema {DEFAULT_MAINTENANCE}"
                )))?;
                conn.disconnect().await.map_err(connect_error)?;
            }
            pool.get_conn().await.map_err(connect_error)
        };
        let mut conn = match tokio::time::timeout(options.connect_timeout, handshake).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    url: url.to_string(),
                    timeout: options.connect_timeout,
                })
            }
        };
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(q("reading the server version"))?;
        let version = version.unwrap_or_default().to_ascii_lowercase();
        let mariadb = version.contains("mariadb");
        let marks = mariadb && schema_comments(&version);
        drop(conn);
        let mysql = Mysql {
            url: url.clone(),
            options: options.clone(),
            opts,
            maintenance,
            pool,
            mariadb,
            marks,
            clone_connections: DEFAULT_CLONE_CONNECTIONS,
            filling: Semaphore::new(FILLING_BUDGET),
            templates: Mutex::new(HashMap::new()),
            registry_ready: AtomicBool::new(false),
        };
        // A registry of a newer dbfork is refused now; none yet is made at the first write.
        registry::open(&mysql, false).await?;
        Ok(mysql)
    }

    /// How many connections one clone spreads its tables over (1 to 8).
    pub fn set_clone_connections(&mut self, connections: usize) {
        self.clone_connections = connections.clamp(1, POOL_MAX);
    }

    /// Closes the pool's connections, waiting at most `wait`.
    pub async fn disconnect(self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.pool.disconnect()).await;
    }

    fn registry(&self) -> String {
        format!("{}.{}", ident(&self.maintenance), ident(REGISTRY_TABLE))
    }

    fn connect_error(&self, e: mysql_async::Error) -> Error {
        Error::Connect {
            url: self.url.to_string(),
            cause: cause(&e),
        }
    }

    /// A connection of the pool; it goes back when dropped.
    async fn take(&self) -> Result<Conn> {
        match tokio::time::timeout(POOL_WAIT, self.pool.get_conn()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(Error::query(
                NAME,
                "waiting for a connection",
                format!(
                    "none of the pool's {POOL_MAX} connections became free within {POOL_WAIT:?}"
                ),
            )),
        }
    }

    /// A connection of its own, outside the pool.
    async fn open_dedicated(&self) -> Result<Conn> {
        match tokio::time::timeout(self.options.connect_timeout, Conn::new(self.opts.clone())).await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(Error::ConnectTimeout {
                url: self.url.to_string(),
                timeout: self.options.connect_timeout,
            }),
        }
    }

    /// Points a pooled connection back at the maintenance schema, so that it is
    /// not counted as a session of a clone it worked on.
    async fn leave(&self, conn: &mut Conn) {
        let _ = conn
            .query_drop(format!("USE {}", ident(&self.maintenance)))
            .await;
    }

    fn forget_template(&self, name: &str) {
        self.templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

impl Store for Mysql {
    fn location(&self) -> String {
        format!("{}.{REGISTRY_TABLE} at {}", self.maintenance, self.url)
    }

    fn ready(&self) -> &AtomicBool {
        &self.registry_ready
    }

    async fn version(&self) -> Result<Option<i64>> {
        let mut conn = self.take().await?;
        let tables: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN (?, ?)",
                (&self.maintenance, REGISTRY_TABLE, REGISTRY_META_TABLE),
            )
            .await
            .map_err(q("looking for the registry"))?;
        if !tables.iter().any(|t| t == REGISTRY_TABLE) {
            return Ok(None);
        }
        if !tables.iter().any(|t| t == REGISTRY_META_TABLE) {
            return Ok(Some(1));
        }
        let value: Option<String> = conn
            .exec_first(
                format!(
                    "SELECT value FROM {}.{} WHERE `key` = ?",
                    ident(&self.maintenance),
                    ident(REGISTRY_META_TABLE)
                ),
                (VERSION_KEY,),
            )
            .await
            .map_err(q("reading the registry's version"))?;
        registry::parse_version(value, &self.location()).map(Some)
    }

    async fn migrate(&self, from: Option<i64>) -> Result<()> {
        let mut statements = match from {
            None => vec![format!(
                "CREATE TABLE IF NOT EXISTS {} ({}) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin \
                 COMMENT = 'Every database dbfork created on this server; dbfork drops nothing that is not here.'",
                self.registry(),
                registry::column_definitions(spell)
            )],
            Some(v) => {
                let clauses = registry::upgrade_clauses(v, spell);
                if clauses.is_empty() {
                    Vec::new()
                } else {
                    vec![format!("ALTER TABLE {} {}", self.registry(), clauses.join(", "))]
                }
            }
        };
        let meta = format!(
            "{}.{}",
            ident(&self.maintenance),
            ident(REGISTRY_META_TABLE)
        );
        statements.push(format!(
            "CREATE TABLE IF NOT EXISTS {meta} (`key` VARCHAR(64) NOT NULL PRIMARY KEY, value VARCHAR(255) NOT NULL) \
             ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"
        ));
        statements.push(format!(
            "REPLACE INTO {meta} (`key`, value) VALUES ('{VERSION_KEY}', '{SCHEMA_VERSION}')"
        ));
        // DDL commits implicitly in MySQL: the version row is written last, so a
        // failure half way leaves the old version, upgraded again next time.
        let mut conn = self.take().await?;
        for statement in statements {
            conn.query_drop(statement).await.map_err(q(format!(
                "creating or upgrading the registry {}",
                self.location()
            )))?;
        }
        Ok(())
    }
}

impl Backend for Mysql {
    fn kind(&self) -> Kind {
        Kind::Mysql
    }

    fn url(&self) -> &DbUrl {
        &self.url
    }

    async fn server_version(&self) -> Result<String> {
        let mut conn = self.take().await?;
        let version: Option<String> = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(q("reading the server version"))?;
        Ok(version.unwrap_or_default())
    }

    async fn registry_list(&self) -> Result<Vec<Entry>> {
        if !registry::open(self, false).await? {
            return Ok(Vec::new());
        }
        let mut conn = self.take().await?;
        let rows: Vec<Row> = conn
            .query(format!(
                "SELECT {} FROM {} ORDER BY created_at, name",
                registry::column_list(),
                self.registry()
            ))
            .await
            .map_err(q("reading the registry"))?;
        let ctx = "reading the registry";
        let values = rows
            .iter()
            .map(|r| {
                COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c.ty {
                        ColumnType::Text(_) => col(r, i, ctx).map(Stored::Text),
                        ColumnType::Int => col(r, i, ctx).map(Stored::Int),
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        registry::decode_rows(values, &self.location())
    }

    async fn registry_put(&self, entries: &[Entry]) -> Result<()> {
        registry::open(self, true).await?;
        let mut conn = self.take().await?;
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .map_err(q("writing to the registry"))?;
        let rows = entries.iter().map(|e| -> Vec<mysql_async::Value> {
            e.to_row()
                .into_iter()
                .map(|v| match v {
                    Stored::Text(s) => s.into(),
                    Stored::Int(i) => i.into(),
                })
                .collect()
        });
        tx.exec_batch(
            format!(
                "REPLACE INTO {} ({}) VALUES ({})",
                self.registry(),
                registry::column_list(),
                vec!["?"; COLUMNS.len()].join(", ")
            ),
            rows,
        )
        .await
        .map_err(q("writing to the registry"))?;
        tx.commit().await.map_err(q("writing to the registry"))
    }

    async fn registry_remove(&self, name: &str) -> Result<()> {
        if !registry::open(self, false).await? {
            return Ok(());
        }
        let mut conn = self.take().await?;
        conn.exec_drop(
            format!("DELETE FROM {} WHERE name = ?", self.registry()),
            (name,),
        )
        .await
        .map_err(q("removing a registry row"))
    }

    async fn registry_drop_if_empty(&self) -> Result<bool> {
        if !registry::open(self, false).await? {
            return Ok(false);
        }
        // A connection of its own: LOCK TABLES must not outlive this.
        let mut conn = self.open_dedicated().await?;
        let meta = format!(
            "{}.{}",
            ident(&self.maintenance),
            ident(REGISTRY_META_TABLE)
        );
        let dropped = async {
            // The write lock keeps out a writer between the count and the drop.
            conn.query_drop(format!(
                "LOCK TABLES {} WRITE, {meta} WRITE",
                self.registry()
            ))
            .await
            .map_err(q("locking the registry"))?;
            let rows: Option<u64> = conn
                .query_first(format!("SELECT COUNT(*) FROM {}", self.registry()))
                .await
                .map_err(q("counting the registry's rows"))?;
            if rows.unwrap_or(0) > 0 {
                return Ok(false);
            }
            conn.query_drop(format!("DROP TABLE {}, {meta}", self.registry()))
                .await
                .map_err(q("dropping the empty registry"))?;
            Ok::<_, Error>(true)
        }
        .await;
        let _ = conn.query_drop("UNLOCK TABLES").await;
        let _ = conn.disconnect().await;
        if let Ok(true) = dropped {
            self.registry_ready
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        dropped
    }

    async fn lock(&self, key: &str, wait: Duration) -> Result<Lock> {
        // A connection of its own: the lock lives exactly as long as it.
        let mut conn = self.open_dedicated().await?;
        let name = lock_name(key);
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The server waits up to a second per call; whole seconds work on every version.
            let secs = left.as_secs().min(1);
            let got: Option<Option<i64>> = tokio::time::timeout(
                STATEMENT_WAIT + Duration::from_secs(secs),
                conn.exec_first("SELECT GET_LOCK(?, ?)", (&name, secs)),
            )
            .await
            .map_err(|_| Error::query(NAME, "taking a lock", "the server did not answer GET_LOCK"))?
            .map_err(q("taking a lock"))?;
            if got.flatten() == Some(1) {
                return Ok(Lock::new(HeldLock {
                    conn: Mutex::new(conn),
                    name,
                }));
            }
            if Instant::now() >= deadline {
                let _ = tokio::time::timeout(STATEMENT_WAIT, conn.disconnect()).await;
                return Err(Error::LockTimeout {
                    key: key.to_string(),
                    waited: wait,
                });
            }
            if secs == 0 {
                tokio::time::sleep(Duration::from_millis(50).min(left)).await;
            }
        }
    }

    async fn unlock(&self, lock: Lock) -> Result<()> {
        let Some(held) = lock.into_inner::<HeldLock>() else {
            return Ok(());
        };
        let mut conn = held.conn.into_inner().unwrap_or_else(|p| p.into_inner());
        let released = tokio::time::timeout(
            STATEMENT_WAIT,
            conn.exec_drop("SELECT RELEASE_LOCK(?)", (&held.name,)),
        )
        .await;
        // Closing the session releases the lock in any case.
        let _ = tokio::time::timeout(STATEMENT_WAIT, conn.disconnect()).await;
        match released {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::query(NAME, "releasing a lock", e)),
            Err(_) => Err(Error::query(
                NAME,
                "releasing a lock",
                "the server did not answer RELEASE_LOCK",
            )),
        }
    }

    async fn databases(&self, prefix: &str) -> Result<Vec<String>> {
        let mut conn = self.take().await?;
        // Filtered here: `_` is a LIKE wildcard and the catalog's collation ignores case.
        let mut names: Vec<String> = conn
            .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            .await
            .map_err(q("listing databases"))?;
        names.retain(|n| n.starts_with(prefix));
        names.sort();
        Ok(names)
    }

    async fn create_empty(&self, name: &str) -> Result<()> {
        self.forget_template(name);
        let mut conn = self.take().await?;
        conn.query_drop(format!(
            "CREATE DATABASE {} CHARACTER SET utf8mb4{}",
            ident(name),
            self.mark_clause()
        ))
        .await
        .map_err(q(format!("creating database {name}")))
    }

    async fn seal_template(&self, name: &str) -> Result<()> {
        // Sessions the setup left open could still change it; nothing else marks a template here.
        let wait = Duration::from_secs(10);
        let gone = poll_until(wait, || async {
            let mut conn = self.take().await?;
            self.kill_sessions(&mut conn, name, false).await?;
            let left: Option<u64> = conn
                .exec_first(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                    (name,),
                )
                .await
                .map_err(q(format!("counting the sessions on {name}")))?;
            Ok((left == Some(0)).then_some(()))
        })
        .await?;
        if gone.is_none() {
            let mut conn = self.take().await?;
            return Err(Error::DropTimeout {
                name: name.to_string(),
                waited: wait,
                holders: self.holders(&mut conn, name).await,
            });
        }
        // Read (and cache) what its clones are made from now, while nothing else is running.
        self.forget_template(name);
        self.template(name).await.map(|_| ())
    }

    async fn clone_database(&self, template: &str, name: &str, method: CloneMethod) -> Result<()> {
        if !matches!(method, CloneMethod::ShowCreate | CloneMethod::CreateLike) {
            return Err(Error::BadMethod {
                method: format!("{method:?}"),
                backend: NAME,
                choices: CloneMethod::choices(Kind::Mysql),
            });
        }
        let started = Instant::now();
        let tpl = self.template(template).await?;
        {
            let mut conn = self.take().await?;
            conn.query_drop(format!(
                "CREATE DATABASE {} CHARACTER SET {} COLLATE {}{}",
                ident(name),
                tpl.charset,
                tpl.collation,
                self.mark_clause()
            ))
            .await
            .map_err(q(format!("creating database {name}")))?;
        }
        let job = CloneJob {
            template,
            clone: name,
            method,
            tpl: &tpl,
            dump: &[],
        };
        // Every table first, then the rows: the copies then commit a few times per connection
        // instead of once per table (each commit waits for a disk flush).
        let tables = 0..tpl.tables.len();
        self.run_steps(&job, tables.clone().map(Step::Create).collect())
            .await?;
        self.run_steps(&job, tables.map(Step::Copy).collect())
            .await?;
        self.finish_clone(&job).await?;
        tracing::debug!(
            "cloned {template} into {name} ({method:?}) in {:?}",
            started.elapsed()
        );
        Ok(())
    }

    async fn drop_database(&self, name: &str, deadline: Duration) -> Result<()> {
        self.forget_template(name);
        let end = Instant::now() + deadline;
        let mut conn = self.take().await?;
        let mut pause = Duration::from_millis(20);
        let mut last_error = None;
        loop {
            let killed = self.kill_sessions(&mut conn, name, true).await?;
            if self.schema_exists(&mut conn, name).await? {
                match self.try_drop(&mut conn, name).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        tracing::debug!("dropping {name} failed, retrying: {e}");
                        last_error = Some(e.to_string());
                    }
                }
            } else if killed == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if now >= end {
                break;
            }
            tokio::time::sleep(pause.min(end - now)).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
        let holders = self.holders(&mut conn, name).await;
        Err(Error::DropTimeout {
            name: name.to_string(),
            waited: deadline,
            holders: match last_error {
                Some(e) => format!("{e}; {holders}"),
                None => holders,
            },
        })
    }

    async fn export_database(&self, name: &str, out: &std::path::Path) -> Result<()> {
        self.write_dump(name, out).await
    }

    async fn import_database(&self, name: &str, dump: &std::path::Path) -> Result<()> {
        self.read_dump(name, dump).await
    }

    async fn connection_room(&self) -> Result<Option<super::Room>> {
        let mut conn = self.take().await?;
        let row: Option<(u64, u64)> = conn
            .query_first(
                "SELECT @@max_connections, \
                 (SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Daemon')",
            )
            .await
            .map_err(q("reading the server's connection limit"))?;
        Ok(row.map(|(max, used)| super::Room {
            max,
            reserved: 0,
            used,
        }))
    }

    async fn marked(&self, name: &str) -> Result<Option<bool>> {
        let mut conn = self.take().await?;
        if !self.marks {
            return Ok(self.schema_exists(&mut conn, name).await?.then_some(true));
        }
        let comment: Option<Option<String>> = conn
            .exec_first(
                "SELECT SCHEMA_COMMENT FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(q(format!("reading the mark of {name}")))?;
        Ok(comment.map(|c| c.as_deref() == Some(crate::names::MARK)))
    }

    fn mark_place(&self) -> &'static str {
        "MariaDB: the schema's comment"
    }

    async fn table_count(&self, name: &str) -> Result<u64> {
        let mut conn = self.take().await?;
        let count: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                (name,),
            )
            .await
            .map_err(q(format!("counting the tables of {name}")))?;
        Ok(count.unwrap_or(0))
    }

    async fn database_size(&self, name: &str) -> Result<u64> {
        let mut conn = self.take().await?;
        let bytes: Option<Option<u64>> = conn
            .exec_first(
                "SELECT CAST(SUM(DATA_LENGTH + INDEX_LENGTH) AS UNSIGNED) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
                (name,),
            )
            .await
            .map_err(q(format!("measuring {name}")))?;
        Ok(bytes.flatten().unwrap_or(0))
    }

    async fn describe(&self, name: &str) -> Result<Vec<String>> {
        let mut conn = self.take().await?;
        let result = async {
            let tpl = self.read_template(&mut conn, name).await?;
            let mut lines = Vec::new();
            for table in &tpl.tables {
                // The AUTO_INCREMENT counter is where the rows left it, not schema.
                let create = String::from_utf8_lossy(&table.create);
                let create: Vec<&str> = create
                    .split(' ')
                    .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                    .collect();
                lines.push(format!("table {}: {}", table.name, create.join(" ")));
                let count: Option<u64> = conn
                    .query_first(format!(
                        "SELECT COUNT(*) FROM {}.{}",
                        ident(name),
                        ident(&table.name)
                    ))
                    .await
                    .map_err(q(format!("counting the rows of {} in {name}", table.name)))?;
                lines.push(format!("rows {} {}", table.name, count.unwrap_or(0)));
            }
            for object in tpl
                .routines
                .iter()
                .chain(&tpl.views)
                .chain(&tpl.triggers)
                .chain(&tpl.events)
            {
                let create = requalify(&object.create, name, "DB");
                lines.push(format!(
                    "{} {}: {}",
                    object.what.to_lowercase(),
                    object.name,
                    String::from_utf8_lossy(&create)
                ));
            }
            lines.push(format!("charset {} {}", tpl.charset, tpl.collation));
            lines.sort();
            Ok(lines)
        }
        .await;
        self.leave(&mut conn).await;
        result
    }

    fn client_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "MYSQL_HOST".to_string(),
                self.url
                    .host
                    .clone()
                    .unwrap_or_else(|| "localhost".to_string()),
            ),
            (
                "MYSQL_TCP_PORT".to_string(),
                self.url.port.unwrap_or(3306).to_string(),
            ),
            (
                "MYSQL_USER".to_string(),
                self.url.user.clone().unwrap_or_else(|| "root".to_string()),
            ),
            ("MYSQL_DATABASE".to_string(), name.to_string()),
        ];
        if let Some(socket) = &self.url.socket {
            env.push(("MYSQL_UNIX_PORT".to_string(), socket.display().to_string()));
        }
        if let Some(p) = &self.url.password {
            env.push(("MYSQL_PWD".to_string(), p.clone()));
        }
        env
    }

    fn client_option_file(&self, name: &str) -> Option<String> {
        let mut text = String::from("[client]\n");
        let user = self.url.user.as_deref().unwrap_or("root");
        text.push_str(&format!("user={}\n", option_value(user)));
        if let Some(p) = &self.url.password {
            text.push_str(&format!("password={}\n", option_value(p)));
        }
        match &self.url.socket {
            Some(socket) => {
                text.push_str("host=localhost\nprotocol=socket\n");
                text.push_str(&format!(
                    "socket={}\n",
                    option_value(&socket.display().to_string())
                ));
            }
            None => {
                let host = self.url.host.as_deref().unwrap_or("localhost");
                text.push_str(&format!("host={}\nprotocol=tcp\n", option_value(host)));
                text.push_str(&format!("port={}\n", self.url.port.unwrap_or(3306)));
            }
        }
        // `database` is an option of the interactive client only; mysqldump would reject it.
        text.push_str(&format!("[mysql]\ndatabase={}\n", option_value(name)));
        Some(text)
    }
}

//! PostgreSQL: clones by `CREATE DATABASE ... TEMPLATE` (file copy or WAL log
//! strategy), teardown by blocking new connections and `DROP DATABASE ... WITH
//! (FORCE)`, locks by session-level advisory locks, and the registry as the
//! table `dbfork.registry` in the maintenance database.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use super::{poll_until, Backend, CloneMethod, ConnectOptions, Lock};
use crate::error::{Error, Result};
use crate::registry::{
    self, ColumnType, Entry, Store, Value, COLUMNS, SCHEMA_VERSION, VERSION_KEY,
};
use crate::url::{DbUrl, Kind};

const NAME: &str = "PostgreSQL";

pub struct Postgres {
    url: DbUrl,
    config: Config,
    /// The URL's `sslmode` (see [`super::pg_tls`]); `None`: plain connections.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    options: ConnectOptions,
    /// `server_version_num`, e.g. 150004.
    version_num: i32,
    /// Idle connections to the maintenance database, reused by parallel work.
    idle: Mutex<Vec<Client>>,
    /// The registry exists at the current schema (see [`registry::open`]).
    registry_ready: AtomicBool,
}

/// A connection taken from the pool; it goes back when the work is done.
struct Pooled<'a> {
    pg: &'a Postgres,
    client: Option<Client>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled client is present until dropped")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled client is present until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                if let Ok(mut idle) = self.pg.idle.lock() {
                    idle.push(client);
                }
            }
        }
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `pg_database.datconnlimit` of an invalid database (PostgreSQL 15.4 and later).
const INVALID_DATABASE: i32 = -2;

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn q(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::query(NAME, context, pg_error(&e))
}

impl Postgres {
    /// A PostgreSQL client program: the one of the server's major version
    /// (Debian's /usr/lib/postgresql/<major>/bin), else the newest there, else PATH's.
    fn tool(&self, program: &str) -> Result<std::path::PathBuf> {
        let major = (self.version_num / 10000).to_string();
        let root = std::path::Path::new("/usr/lib/postgresql");
        let mut dirs = vec![root.join(&major).join("bin")];
        dirs.extend(crate::ephemeral::debian_pg_dirs(root));
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        dirs.into_iter()
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::MissingBinary {
                what: "exporting or restoring a PostgreSQL template (the template cache)".into(),
                program: program.to_string(),
                searched: "/usr/lib/postgresql/*/bin".into(),
                package: "postgresql-client".into(),
            })
    }

    pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<Postgres> {
        let mut config = Config::new();
        config
            .user(url.user.as_deref().unwrap_or("postgres"))
            .dbname(url.database.as_deref().unwrap_or("postgres"))
            .application_name("dbfork")
            .connect_timeout(options.connect_timeout);
        if let Some(p) = &url.password {
            config.password(p.as_str());
        }
        if let Some(socket) = &url.socket {
            config.host_path(socket);
        }
        if let Some(host) = &url.host {
            config.host(host);
        }
        config.port(url.port.unwrap_or(5432));
        let tls = match super::pg_tls::from_url(url)? {
            Some((mode, connector)) => {
                config.ssl_mode(mode);
                Some(connector)
            }
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        let mut pg = Postgres {
            url: url.clone(),
            config,
            tls,
            options: options.clone(),
            version_num: 0,
            idle: Mutex::new(Vec::new()),
            registry_ready: AtomicBool::new(false),
        };
        let client = pg.open().await?;
        let row = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .map_err(q("reading the server version"))?;
        pg.version_num = row.get(0);
        pg.give_back(client);
        // A registry of a newer dbfork is refused now; none yet is made at the first write.
        registry::open(&pg, false).await?;
        Ok(pg)
    }

    async fn open(&self) -> Result<Client> {
        self.open_with(&self.config).await
    }

    async fn open_with(&self, config: &Config) -> Result<Client> {
        match &self.tls {
            Some(tls) => self.connect_through(config.connect(tls.clone())).await,
            None => self.connect_through(config.connect(NoTls)).await,
        }
    }

    /// Finishes `connect` (within the connect timeout) and drives its connection.
    async fn connect_through<S, T>(
        &self,
        connect: impl std::future::Future<
            Output = std::result::Result<
                (Client, tokio_postgres::Connection<S, T>),
                tokio_postgres::Error,
            >,
        >,
    ) -> Result<Client>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (client, connection) =
            match tokio::time::timeout(self.options.connect_timeout, connect).await {
                Err(_) => {
                    return Err(Error::ConnectTimeout {
                        url: self.url.to_string(),
                        timeout: self.options.connect_timeout,
                    })
                }
                Ok(Err(e)) => {
                    return Err(Error::Connect {
                        url: self.url.to_string(),
                        cause: pg_error(&e),
                    })
                }
                Ok(Ok(pair)) => pair,
            };
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection closed: {}", pg_error(&e));
            }
        });
        Ok(client)
    }

    async fn take(&self) -> Result<Pooled<'_>> {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let client = match reused {
            Some(c) if !c.is_closed() => c,
            _ => self.open().await?,
        };
        Ok(Pooled {
            pg: self,
            client: Some(client),
        })
    }

    fn give_back(&self, client: Client) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(client);
        }
    }

    /// Ends every other session on `name`, and any statement still creating it
    /// (a clone in flight from a dbfork that was killed).
    /// Ends exactly the sessions on database `name` and a statement still
    /// creating it (`CREATE DATABASE "name"`, from a killed dbfork): matched by
    /// the session's database and by the exact quoted identifier, never by a
    /// substring (dropping `dbfork_x_1` must not end the drop of `dbfork_x_10`,
    /// nor a bystander whose query mentions it).
    async fn terminate_sessions(&self, client: &Client, name: &str) -> Result<u64> {
        let creating = format!("CREATE DATABASE {}", ident(name));
        let rows = client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE pid <> pg_backend_pid() AND (datname = $1 \
                   OR (state = 'active' AND (query = $2 OR starts_with(query, $2 || ' '))))",
                &[&name, &creating],
            )
            .await
            .map_err(q("ending sessions"))?;
        Ok(rows.len() as u64)
    }

    /// Who keeps `name` from being dropped: sessions on it, sessions holding a
    /// lock on it from elsewhere, and open transactions that changed
    /// `pg_database` or whose statement names it exactly (an uncommitted
    /// `ALTER DATABASE "name"`). Only to name them: none of these is ended.
    async fn holders(&self, client: &Client, name: &str) -> String {
        let rows = client
            .query(
                "SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), \
                 coalesce(client_addr::text, 'local'), coalesce(state, '') \
                 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (datname = $1 \
                   OR pid IN (SELECT l.pid FROM pg_locks l JOIN pg_database d ON l.objid = d.oid \
                              WHERE l.locktype = 'object' AND l.granted \
                                AND l.classid = 'pg_database'::regclass AND d.datname = $1) \
                   OR (xact_start IS NOT NULL AND strpos(query, $2) > 0) \
                   OR pid IN (SELECT pid FROM pg_locks WHERE locktype = 'relation' AND granted \
                              AND relation = 'pg_database'::regclass AND mode = 'RowExclusiveLock'))",
                &[&name, &ident(name)],
            )
            .await;
        match rows {
            Ok(rows) if rows.is_empty() => "no session holds it any more".to_string(),
            Ok(rows) => {
                let list: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "pid {} (user {}, application '{}', from {}, {})",
                            r.get::<_, i32>(0),
                            r.get::<_, String>(1),
                            r.get::<_, String>(2),
                            r.get::<_, String>(3),
                            r.get::<_, String>(4)
                        )
                    })
                    .collect();
                format!("still held by {}", list.join(", "))
            }
            Err(e) => format!("and the sessions could not be listed: {}", pg_error(&e)),
        }
    }
}

fn spell(ty: ColumnType) -> String {
    match ty {
        ColumnType::Text(_) => "text".to_string(),
        ColumnType::Int => "bigint".to_string(),
    }
}

impl Store for Postgres {
    fn location(&self) -> String {
        format!(
            "dbfork.registry (database {} at {})",
            self.url.database.as_deref().unwrap_or("postgres"),
            self.url
        )
    }

    fn ready(&self) -> &AtomicBool {
        &self.registry_ready
    }

    async fn version(&self) -> Result<Option<i64>> {
        let c = self.take().await?;
        let row = c
            .query_one(
                "SELECT to_regclass('dbfork.registry') IS NOT NULL, to_regclass('dbfork.registry_meta') IS NOT NULL",
                &[],
            )
            .await
            .map_err(q("looking for the registry"))?;
        let (table, meta): (bool, bool) = (row.get(0), row.get(1));
        if !table {
            return Ok(None);
        }
        if !meta {
            return Ok(Some(1));
        }
        let value = c
            .query_opt(
                "SELECT value FROM dbfork.registry_meta WHERE key = $1",
                &[&VERSION_KEY],
            )
            .await
            .map_err(q("reading the registry's version"))?
            .map(|r| r.get::<_, String>(0));
        registry::parse_version(value, &self.location()).map(Some)
    }

    async fn migrate(&self, from: Option<i64>) -> Result<()> {
        let change = match from {
            None => format!(
                "CREATE TABLE IF NOT EXISTS dbfork.registry ({});
                 COMMENT ON TABLE dbfork.registry IS 'Every database dbfork created on this server; dbfork drops nothing that is not here.';",
                registry::column_definitions(spell)
            ),
            Some(v) => registry::upgrade_clauses(v, spell)
                .iter()
                .map(|c| format!("ALTER TABLE dbfork.registry {c};"))
                .collect(),
        };
        let c = self.take().await?;
        c.batch_execute(&format!(
            "BEGIN;
             CREATE SCHEMA IF NOT EXISTS dbfork;
             {change}
             CREATE TABLE IF NOT EXISTS dbfork.registry_meta (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO dbfork.registry_meta VALUES ('{VERSION_KEY}', '{SCHEMA_VERSION}')
               ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;
             COMMIT;"
        ))
        .await
        .map_err(q("creating or upgrading the registry dbfork.registry"))
    }
}

fn lock_id(key: &str) -> i64 {
    let hash = blake3::hash(key.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    i64::from_le_bytes(bytes)
}

impl Backend for Postgres {
    fn kind(&self) -> Kind {
        Kind::Postgres
    }

    fn url(&self) -> &DbUrl {
        &self.url
    }

    async fn server_version(&self) -> Result<String> {
        let c = self.take().await?;
        let row = c
            .query_one("SELECT version()", &[])
            .await
            .map_err(q("reading the server version"))?;
        Ok(row.get(0))
    }

    async fn registry_list(&self) -> Result<Vec<Entry>> {
        if !registry::open(self, false).await? {
            return Ok(Vec::new());
        }
        let c = self.take().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT {} FROM dbfork.registry ORDER BY created_at, name",
                    registry::column_list()
                ),
                &[],
            )
            .await
            .map_err(q("reading the registry"))?;
        let values = rows
            .iter()
            .map(|r| {
                COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c.ty {
                        ColumnType::Text(_) => r.try_get(i).map(Value::Text),
                        ColumnType::Int => r.try_get(i).map(Value::Int),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(q("reading the registry"))?;
        registry::decode_rows(values, &self.location())
    }

    async fn registry_put(&self, entries: &[Entry]) -> Result<()> {
        registry::open(self, true).await?;
        let mut c = self.take().await?;
        let tx = c
            .transaction()
            .await
            .map_err(q("writing to the registry"))?;
        let placeholders: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("${i}")).collect();
        let updates: Vec<String> = COLUMNS[1..]
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", c.name))
            .collect();
        let statement = tx
            .prepare(&format!(
                "INSERT INTO dbfork.registry ({}) VALUES ({}) ON CONFLICT (name) DO UPDATE SET {}",
                registry::column_list(),
                placeholders.join(","),
                updates.join(", ")
            ))
            .await
            .map_err(q("writing to the registry"))?;
        for e in entries {
            let row = e.to_row();
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                .iter()
                .map(|v| match v {
                    Value::Text(s) => s as &(dyn tokio_postgres::types::ToSql + Sync),
                    Value::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                })
                .collect();
            tx.execute(&statement, &params)
                .await
                .map_err(q("writing to the registry"))?;
        }
        tx.commit().await.map_err(q("writing to the registry"))
    }

    async fn registry_remove(&self, name: &str) -> Result<()> {
        if !registry::open(self, false).await? {
            return Ok(());
        }
        let c = self.take().await?;
        c.execute("DELETE FROM dbfork.registry WHERE name = $1", &[&name])
            .await
            .map_err(q("removing a registry row"))?;
        Ok(())
    }

    async fn registry_drop_if_empty(&self) -> Result<bool> {
        if !registry::open(self, false).await? {
            return Ok(false);
        }
        let mut c = self.take().await?;
        // The table lock keeps out a writer between the count and the drop.
        let tx = c
            .transaction()
            .await
            .map_err(q("dropping the empty registry"))?;
        tx.batch_execute("LOCK TABLE dbfork.registry IN ACCESS EXCLUSIVE MODE")
            .await
            .map_err(q("locking the registry"))?;
        let rows: i64 = tx
            .query_one("SELECT count(*) FROM dbfork.registry", &[])
            .await
            .map_err(q("counting the registry's rows"))?
            .get(0);
        if rows > 0 {
            return Ok(false);
        }
        tx.batch_execute("DROP TABLE dbfork.registry, dbfork.registry_meta")
            .await
            .map_err(q("dropping the empty registry"))?;
        tx.commit()
            .await
            .map_err(q("dropping the empty registry"))?;
        self.registry_ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // The schema goes too when nothing else is in it (never CASCADE).
        if let Err(e) = c.batch_execute("DROP SCHEMA IF EXISTS dbfork").await {
            tracing::debug!("kept the schema dbfork: {}", pg_error(&e));
        }
        Ok(true)
    }

    async fn lock(&self, key: &str, wait: Duration) -> Result<Lock> {
        // A connection of its own: the lock lives exactly as long as it.
        let client = self.open().await?;
        let id = lock_id(key);
        let got = poll_until(wait, || async {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&id])
                .await
                .map_err(q("taking an advisory lock"))?;
            Ok(row.get::<_, bool>(0).then_some(()))
        })
        .await?;
        match got {
            Some(()) => Ok(Lock::new((client, id))),
            None => Err(Error::LockTimeout {
                key: key.to_string(),
                waited: wait,
            }),
        }
    }

    async fn unlock(&self, lock: Lock) -> Result<()> {
        // Released before this returns: the next taker must find it free (a
        // closed session releases its locks too, but only once the server
        // has noticed the close).
        if let Some((client, id)) = lock.into_inner::<(Client, i64)>() {
            // A session that failed is gone, and its lock with it.
            if let Err(e) = client
                .query_one("SELECT pg_advisory_unlock($1)", &[&id])
                .await
            {
                tracing::debug!("releasing an advisory lock: {e}; the session's end releases it");
            }
        }
        Ok(())
    }

    async fn databases(&self, prefix: &str) -> Result<Vec<String>> {
        let c = self.take().await?;
        let rows = c
            .query(
                "SELECT datname::text FROM pg_database WHERE left(datname, length($1)) = $1 ORDER BY 1",
                &[&prefix],
            )
            .await
            .map_err(q("listing databases"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn create_empty(&self, name: &str) -> Result<()> {
        let c = self.take().await?;
        c.batch_execute(&format!(
            "CREATE DATABASE {} CONNECTION LIMIT {}",
            ident(name),
            crate::names::PG_CONNECTION_LIMIT_MARK
        ))
        .await
        .map_err(q(&format!("creating database {name}")))
    }

    async fn seal_template(&self, name: &str) -> Result<()> {
        let c = self.take().await?;
        c.batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true",
            ident(name)
        ))
        .await
        .map_err(q(&format!("marking {name} as a template")))?;
        // Sessions the setup left open would make every clone fail with "being accessed by other users".
        let gone = poll_until(Duration::from_secs(10), || async {
            self.terminate_sessions(&c, name).await?;
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&name],
                )
                .await
                .map_err(q("counting sessions"))?;
            Ok((row.get::<_, i64>(0) == 0).then_some(()))
        })
        .await?;
        if gone.is_none() {
            return Err(Error::DropTimeout {
                name: name.to_string(),
                waited: Duration::from_secs(10),
                holders: self.holders(&c, name).await,
            });
        }
        Ok(())
    }

    async fn clone_database(&self, template: &str, name: &str, method: CloneMethod) -> Result<()> {
        let strategy = match (method, self.version_num >= 150000) {
            (CloneMethod::WalLog, true) => " STRATEGY wal_log",
            (CloneMethod::FileCopy, true) => " STRATEGY file_copy",
            (CloneMethod::WalLog | CloneMethod::FileCopy, false) => "",
            (other, _) => {
                return Err(Error::BadMethod {
                    method: format!("{other:?}"),
                    backend: NAME,
                    choices: CloneMethod::choices(Kind::Postgres),
                })
            }
        };
        let c = self.take().await?;
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE {}{strategy} CONNECTION LIMIT {}",
            ident(name),
            ident(template),
            crate::names::PG_CONNECTION_LIMIT_MARK
        );
        // "source database is being accessed by other users" (55006) is transient: end them and retry.
        let mut last = None;
        for _ in 0..20 {
            match c.batch_execute(&sql).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code().map(|c| c.code()) == Some("55006") => {
                    self.terminate_sessions(&c, template).await?;
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Error::query(
                        NAME,
                        format!("cloning {template} into {name}"),
                        pg_error(&e),
                    ))
                }
            }
        }
        let cause = last.map(|e| pg_error(&e)).unwrap_or_default();
        Err(Error::query(
            NAME,
            format!("cloning {template} into {name}"),
            cause,
        ))
    }

    async fn drop_database(&self, name: &str, deadline: Duration) -> Result<()> {
        let c = self.take().await?;
        let force = if self.version_num >= 130000 {
            " WITH (FORCE)"
        } else {
            ""
        };
        let last_error = Mutex::new(String::new());
        let until = tokio::time::Instant::now() + deadline;
        let done = poll_until(deadline, || {
            let c = &c;
            let last_error = &last_error;
            async move {
                // datconnlimit -2: an invalid database (a CREATE or DROP interrupted
                // midway), which ALTER DATABASE refuses; it is dropped directly.
                let found: Option<i32> = c
                    .query_opt(
                        "SELECT datconnlimit FROM pg_database WHERE datname = $1",
                        &[&name],
                    )
                    .await
                    .map_err(q("looking for a database"))?
                    .map(|r| r.get(0));
                // A statement still creating it (from a killed dbfork) must end first, or it would
                // commit after our drop.
                self.terminate_sessions(c, name).await?;
                let Some(connlimit) = found else {
                    return Ok(Some(()));
                };
                // The deadline bounds every statement, also one waiting on a lock.
                let left = until
                    .saturating_duration_since(tokio::time::Instant::now())
                    .as_millis()
                    .max(100);
                c.batch_execute(&format!(
                    "SET lock_timeout = {left}; SET statement_timeout = {left}"
                ))
                .await
                .map_err(q("setting the drop's timeouts"))?;
                let id = ident(name);
                let block =
                    format!("ALTER DATABASE {id} WITH ALLOW_CONNECTIONS false IS_TEMPLATE false");
                // Separate statements: DROP DATABASE refuses to run inside the implicit transaction of a batch.
                let blocked = if connlimit == INVALID_DATABASE {
                    Ok(())
                } else {
                    c.batch_execute(&block).await
                };
                let dropped = match blocked {
                    Ok(()) => {
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {id}{force}"))
                            .await
                    }
                    Err(e) => Err(e),
                };
                // The next attempt's lookups run without them.
                let _ = c
                    .batch_execute("RESET lock_timeout; RESET statement_timeout")
                    .await;
                match dropped {
                    Ok(()) => Ok(Some(())),
                    Err(e) if e.code().map(|c| c.code()) == Some("3D000") => Ok(Some(())),
                    Err(e) => {
                        if let Ok(mut last) = last_error.lock() {
                            *last = pg_error(&e);
                        }
                        Ok(None)
                    }
                }
            }
        })
        .await;
        // The pooled connection goes back without the drop's timeouts.
        let reset = c
            .batch_execute("RESET lock_timeout; RESET statement_timeout")
            .await;
        let done = done?;
        reset.map_err(q("resetting the drop's timeouts"))?;
        match done {
            Some(()) => Ok(()),
            None => Err(Error::DropTimeout {
                name: name.to_string(),
                waited: deadline,
                holders: format!(
                    "{}; {}",
                    last_error.lock().map(|l| l.clone()).unwrap_or_default(),
                    self.holders(&c, name).await
                ),
            }),
        }
    }

    async fn export_database(&self, name: &str, out: &std::path::Path) -> Result<()> {
        // Custom format, uncompressed (the cache compresses), without owners
        // and grants: the restoring user owns what it restores, on any server.
        let args = [
            "--format=custom",
            "--compress=0",
            "--no-owner",
            "--no-privileges",
            "--file",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([out.display().to_string()])
        .collect::<Vec<_>>();
        let program = self.tool("pg_dump")?;
        super::run_tool(
            &format!("exporting {name} with pg_dump"),
            &program,
            &args,
            &self.client_env(name),
        )
        .await
    }

    async fn describe(&self, name: &str) -> Result<Vec<String>> {
        // pg_dump's view of it: the schema as text, and the rows as one
        // INSERT each, counted per table.
        // Private and new: it holds the rows.
        let dir = crate::files::create_temp_dir(&std::env::temp_dir(), "dbfork-describe-", "")
            .map_err(Error::io("making a private directory for pg_dump's output"))?;
        let program = self.tool("pg_dump")?;
        let env = self.client_env(name);
        let (schema, data) = (dir.join("schema.sql"), dir.join("data.sql"));
        let dumped = async {
            for (what, args, file) in [
                ("the schema", vec!["--schema-only"], &schema),
                (
                    "the rows",
                    vec!["--data-only", "--inserts", "--rows-per-insert=1"],
                    &data,
                ),
            ] {
                let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                args.extend(["--no-owner", "--no-privileges", "--file"].map(String::from));
                args.push(file.display().to_string());
                super::run_tool(
                    &format!("describing {what} of {name} with pg_dump"),
                    &program,
                    &args,
                    &env,
                )
                .await?;
            }
            let read = |path: &std::path::Path| {
                std::fs::read_to_string(path)
                    .map_err(Error::io(format!("reading {}", path.display())))
            };
            Ok::<_, Error>((read(&schema)?, read(&data)?))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let (schema, data) = dumped?;
        let mut lines: Vec<String> = schema
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty()
                    && !l.starts_with("--")
                    && !l.starts_with('\\')
                    && !l.starts_with("SET ")
                    && !l.starts_with("SELECT pg_catalog.set_config")
            })
            .map(str::to_string)
            .collect();
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for line in data.lines() {
            if let Some(rest) = line.strip_prefix("INSERT INTO ") {
                let table = rest.split(' ').next().unwrap_or_default().to_string();
                *counts.entry(table).or_default() += 1;
            }
        }
        lines.extend(counts.into_iter().map(|(t, n)| format!("rows {t} {n}")));
        lines.sort();
        Ok(lines)
    }

    async fn connection_room(&self) -> Result<Option<super::Room>> {
        let c = self.take().await?;
        let row = c
            .query_one(
                "SELECT current_setting('max_connections')::bigint, \
                 current_setting('superuser_reserved_connections')::bigint, \
                 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
                &[],
            )
            .await
            .map_err(q("reading the server's connection limit"))?;
        let get = |i: usize| row.get::<_, i64>(i).max(0) as u64;
        Ok(Some(super::Room {
            max: get(0),
            reserved: get(1),
            used: get(2),
        }))
    }

    async fn marked(&self, name: &str) -> Result<Option<bool>> {
        let c = self.take().await?;
        let limit: Option<i32> = c
            .query_opt(
                "SELECT datconnlimit FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .map_err(q(&format!("reading the mark of {name}")))?
            .map(|r| r.get(0));
        // -2: an invalid database, a CREATE interrupted midway (nothing in it
        // to lose; PostgreSQL itself only lets it be dropped).
        Ok(limit.map(|l| l == crate::names::PG_CONNECTION_LIMIT_MARK || l == -2))
    }

    fn mark_place(&self) -> &'static str {
        "PostgreSQL: its connection limit, 6578790"
    }

    async fn table_count(&self, name: &str) -> Result<u64> {
        let mut config = self.config.clone();
        config.dbname(name);
        let client = self.open_with(&config).await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
                 AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
                &[],
            )
            .await
            .map_err(q(&format!("counting the tables of {name}")))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn database_size(&self, name: &str) -> Result<u64> {
        let c = self.take().await?;
        let row = c
            .query_one("SELECT pg_catalog.pg_database_size($1::text)", &[&name])
            .await
            .map_err(q("measuring a database"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn import_database(&self, name: &str, dump: &std::path::Path) -> Result<()> {
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        let args = vec![
            "--no-owner".to_string(),
            "--no-privileges".to_string(),
            "--exit-on-error".to_string(),
            format!("--jobs={jobs}"),
            "--dbname".to_string(),
            name.to_string(),
            dump.display().to_string(),
        ];
        let program = self.tool("pg_restore")?;
        super::run_tool(
            &format!("restoring {name} with pg_restore"),
            &program,
            &args,
            &self.client_env(name),
        )
        .await
    }

    fn client_env(&self, name: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGDATABASE".to_string(), name.to_string()),
            (
                "PGUSER".to_string(),
                self.url.user.clone().unwrap_or_else(|| "postgres".into()),
            ),
            (
                "PGPORT".to_string(),
                self.url.port.unwrap_or(5432).to_string(),
            ),
        ];
        let host = match (&self.url.socket, &self.url.host) {
            (Some(socket), _) => socket.display().to_string(),
            (None, Some(host)) => host.clone(),
            (None, None) => "localhost".to_string(),
        };
        env.push(("PGHOST".to_string(), host));
        if let Some(p) = &self.url.password {
            env.push(("PGPASSWORD".to_string(), p.clone()));
        }
        env.extend(super::pg_tls::client_env(&self.url));
        env
    }
}

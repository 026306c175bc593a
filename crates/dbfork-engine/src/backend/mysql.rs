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

/// What a clone is rebuilt from: the template's catalog, read once (and,
/// in a template cache file, the head of the dump).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Template {
    charset: String,
    collation: String,
    /// Largest first, so that the slowest copies start first.
    tables: Vec<Table>,
    routines: Vec<Object>,
    views: Vec<Object>,
    triggers: Vec<Object>,
    events: Vec<Object>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Table {
    name: String,
    /// `SHOW CREATE TABLE`, unqualified: run with the clone as the default database.
    create: Vec<u8>,
    /// The columns `INSERT ... SELECT` copies (all but generated ones), quoted and joined.
    copy_columns: String,
    /// `CONSTRAINT ... FOREIGN KEY ...` clauses, for `CREATE TABLE ... LIKE`, which drops them.
    foreign_keys: Vec<String>,
    auto_increment: Option<u64>,
    size: u64,
}

/// A view, trigger, routine or event: its `SHOW CREATE` text and the session settings it was made with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Object {
    what: String,
    name: String,
    sql_mode: Option<String>,
    time_zone: Option<String>,
    create: Vec<u8>,
}

/// The head of a dump: the template's catalog and the name it had.
#[derive(serde::Serialize, serde::Deserialize)]
struct DumpHead {
    source: String,
    template: Template,
}

/// The first bytes of a dump file.
const DUMP_MAGIC: &[u8] = b"DBFORKMY1\n";
/// The largest INSERT statement a dump holds (the server's max_allowed_packet is 16 MiB by default).
const DUMP_STATEMENT: usize = 1 << 20;

/// Appends the SQL literal of `value`: hex for strings and bytes (text
/// columns as utf8mb4, the connection's character set), exact numbers, and
/// dates and times with their microseconds.
fn push_literal(out: &mut Vec<u8>, value: &mysql_async::Value, text: bool) {
    use mysql_async::Value as V;
    use std::io::Write as _;
    let _ = match value {
        V::NULL => write!(out, "NULL"),
        V::Bytes(bytes) => {
            out.extend_from_slice(if text { b"_utf8mb4 X'" } else { b"X'" });
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            write!(out, "'")
        }
        V::Int(i) => write!(out, "{i}"),
        V::UInt(u) => write!(out, "{u}"),
        // Rust prints the shortest decimal that reads back as the same number.
        V::Float(f) => write!(out, "{f}"),
        V::Double(d) => write!(out, "{d}"),
        V::Date(y, mo, d, h, mi, s, us) => {
            write!(out, "'{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'")
        }
        V::Time(neg, days, h, mi, s, us) => {
            let sign = if *neg { "-" } else { "" };
            let hours = *days * 24 + u32::from(*h);
            write!(out, "'{sign}{hours}:{mi:02}:{s:02}.{us:06}'")
        }
    };
}

/// One framed record of a dump: a table index and its bytes.
fn push_record(out: &mut impl std::io::Write, table: u32, bytes: &[u8]) -> std::io::Result<()> {
    out.write_all(&table.to_le_bytes())?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// A dump read back: its head and each table's INSERT statements.
/// Each table's INSERT statements, by the table's index in the catalog.
type TableRows = Vec<Vec<Vec<u8>>>;

fn parse_dump(bytes: &[u8]) -> std::result::Result<(DumpHead, TableRows), String> {
    let rest = bytes
        .strip_prefix(DUMP_MAGIC)
        .ok_or("it is not a dbfork MySQL dump")?;
    let mut cursor = std::io::Cursor::new(rest);
    let mut records = Vec::new();
    let mut head = None;
    while (cursor.position() as usize) < rest.len() {
        let mut frame = [0u8; 8];
        std::io::Read::read_exact(&mut cursor, &mut frame).map_err(|_| "it ends early")?;
        let table = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes")) as usize;
        let mut bytes = vec![0u8; len];
        std::io::Read::read_exact(&mut cursor, &mut bytes).map_err(|_| "it ends early")?;
        let bytes = bytes.as_slice();
        if head.is_none() {
            head = Some(serde_json::from_slice::<DumpHead>(bytes).map_err(|e| e.to_string())?);
        } else {
            records.push((table as usize, bytes.to_vec()));
        }
    }
    let head = head.ok_or("it has no catalog")?;
    let mut tables = vec![Vec::new(); head.template.tables.len()];
    for (table, statement) in records {
        tables
            .get_mut(table)
            .ok_or("a record names a table the catalog lacks")?
            .push(statement);
    }
    Ok((head, tables))
}

/// A `GET_LOCK` held by a connection of its own.
struct HeldLock {
    conn: Mutex<Conn>,
    name: String,
}

/// One clone being made.
struct CloneJob<'a> {
    template: &'a str,
    clone: &'a str,
    method: CloneMethod,
    tpl: &'a Template,
    /// Restoring a dump: each table's INSERT statements.
    dump: &'a [Vec<Vec<u8>>],
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Create one table, empty (`CreateLike`: with its foreign keys added).
    Create(usize),
    /// Copy one table's rows.
    Copy(usize),
    /// Run one INSERT statement of a dump: table, statement.
    Insert(usize, usize),
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Whether a MariaDB of `version` (`10.11.6-mariadb-...`) keeps schema
/// comments (10.5 and later).
fn schema_comments(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (10, 5)
}

/// Whether `statement` is dbfork's `CREATE DATABASE` of the database
/// `quoted` (backquoted), and not merely a statement naming it.
fn creates(statement: &[u8], quoted: &str) -> bool {
    let head = format!("CREATE DATABASE {quoted}");
    statement.starts_with(head.as_bytes())
        && matches!(statement.get(head.len()), None | Some(b' ' | b';'))
}

fn q(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> Error {
    let context = context.into();
    move |e| Error::query(NAME, context, cause(&e))
}

/// A driver error as a sentence: the driver wraps an I/O error twice, each
/// time behind "Input/output error: ", before the system's own words.
fn cause(e: &mysql_async::Error) -> String {
    let text = e.to_string();
    let mut rest = text.as_str();
    while let Some(inner) = rest.strip_prefix("Input/output error: ") {
        rest = inner;
    }
    rest.to_string()
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Column `index` of `row`, converted.
fn col<T: FromValue>(row: &Row, index: usize, context: &str) -> Result<T> {
    match row.get_opt::<T, usize>(index) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Error::query(
            NAME,
            context,
            format!("unexpected value in column {index}: {e}"),
        )),
        None => Err(Error::query(
            NAME,
            context,
            format!("the result has no column {index}"),
        )),
    }
}

/// A `SHOW CREATE ...` text column, which is NULL when the user may not see the definition.
fn text_col(row: &Row, index: usize, context: &str) -> Result<Vec<u8>> {
    col::<Option<Vec<u8>>>(row, index, context)?.ok_or_else(|| {
        Error::query(
            NAME,
            context,
            "the server shows no definition (the user lacks a privilege such as SHOW VIEW or SELECT on mysql.proc)",
        )
    })
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Rewrites the references to schema `from` in `text` into references to `to`:
/// `` `from`. `` and a bare `from.` that does not continue another name.
fn requalify(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    let quoted = format!("{}.", ident(from));
    let bare = format!("{from}.");
    let replacement = format!("{}.", ident(to));
    let mut out = Vec::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(quoted.as_bytes()) {
            out.extend_from_slice(replacement.as_bytes());
            i += quoted.len();
            continue;
        }
        let after_boundary =
            i == 0 || !(is_ident_byte(text[i - 1]) || text[i - 1] == b'`' || text[i - 1] == b'.');
        if after_boundary && rest.starts_with(bare.as_bytes()) {
            out.extend_from_slice(replacement.as_bytes());
            i += bare.len();
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// The `CONSTRAINT ... FOREIGN KEY ...` clauses of a `SHOW CREATE TABLE` text (one definition a line).
fn foreign_key_clauses(create: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(create)
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("CONSTRAINT ") && line.contains(" FOREIGN KEY "))
        .map(|line| line.trim_end_matches(',').to_string())
        .collect()
}

/// Whether an `information_schema.COLUMNS.EXTRA` marks a generated column
/// (`VIRTUAL GENERATED`, `STORED GENERATED`, `PERSISTENT GENERATED`; not MySQL's `DEFAULT_GENERATED`).
fn is_generated(extra: &str) -> bool {
    extra
        .split_whitespace()
        .any(|word| word.eq_ignore_ascii_case("GENERATED"))
}

/// A `GET_LOCK` name: the key itself, or a hash of it when it is longer than the server allows.
fn lock_name(key: &str) -> String {
    if key.chars().count() <= MAX_LOCK_NAME {
        key.to_string()
    } else {
        format!("dbfork_{}", &blake3::hash(key.as_bytes()).to_hex()[..48])
    }
}

/// Refuses a URL that asks for TLS (`ssl-mode=REQUIRED`, `VERIFY_CA`,
/// `VERIFY_IDENTITY`, `require_ssl=true`, `ssl=true`): dbfork's own
/// connections to MySQL and MariaDB do not speak it yet, and connecting
/// without it would send the password in the clear where the user asked
/// otherwise.
fn refuse_tls(url: &DbUrl) -> Result<()> {
    for (key, value) in &url.params {
        let key = key.to_ascii_lowercase().replace('-', "_");
        let value = value.to_ascii_lowercase();
        let asks = match key.as_str() {
            "ssl_mode" | "sslmode" => !matches!(
                value.as_str(),
                "disabled" | "disable" | "preferred" | "prefer"
            ),
            "require_ssl" | "ssl" | "verify_ca" | "verify_identity" => {
                matches!(value.as_str(), "true" | "1" | "yes" | "on")
            }
            _ => false,
        };
        if asks {
            return Err(Error::BadUrl {
                url: url.to_string(),
                reason: format!(
                    "`{key}={value}` asks for TLS, which dbfork's own connections to MySQL and MariaDB do not use yet (PostgreSQL's do). Connect over the server's Unix socket (`?socket=PATH`) or a trusted network without it"
                ),
            });
        }
    }
    Ok(())
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

    /// Writes `name` as a dump: its catalog, then every table's rows as
    /// INSERT statements of literals read with the binary protocol (exact
    /// numbers and times), in UTC.
    async fn write_dump(&self, name: &str, out: &std::path::Path) -> Result<()> {
        let ctx = format!("exporting {name}");
        let io = |e: std::io::Error| Error::io(format!("writing {}", out.display()))(e);
        let mut conn = self.take().await?;
        let result = async {
            let template = self.read_template(&mut conn, name).await?;
            conn.query_drop("SET SESSION time_zone = '+00:00'")
                .await
                .map_err(q(&ctx))?;
            let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
            std::io::Write::write_all(&mut file, DUMP_MAGIC).map_err(io)?;
            let head = DumpHead {
                source: name.to_string(),
                template,
            };
            let head_json = serde_json::to_vec(&head).map_err(|e| Error::query(NAME, &ctx, e))?;
            push_record(&mut file, 0, &head_json).map_err(io)?;
            for (index, table) in head.template.tables.iter().enumerate() {
                if table.copy_columns.is_empty() {
                    continue;
                }
                let prefix = format!(
                    "INSERT INTO {} ({}) VALUES ",
                    ident(&table.name),
                    table.copy_columns
                );
                let mut statement = prefix.clone().into_bytes();
                let mut result = conn
                    .exec_iter(
                        format!(
                            "SELECT {} FROM {}.{}",
                            table.copy_columns,
                            ident(name),
                            ident(&table.name)
                        ),
                        (),
                    )
                    .await
                    .map_err(q(&ctx))?;
                let text: Vec<bool> = result
                    .columns_ref()
                    .iter()
                    .map(|c| {
                        c.character_set() != 63
                            || c.column_type() == mysql_async::consts::ColumnType::MYSQL_TYPE_JSON
                    })
                    .collect();
                while let Some(row) = result.next().await.map_err(q(&ctx))? {
                    if statement.len() > prefix.len() {
                        statement.push(b',');
                    }
                    statement.push(b'(');
                    for i in 0..row.len() {
                        if i > 0 {
                            statement.push(b',');
                        }
                        let value = row.as_ref(i).unwrap_or(&mysql_async::Value::NULL);
                        push_literal(&mut statement, value, text.get(i) == Some(&true));
                    }
                    statement.push(b')');
                    if statement.len() >= DUMP_STATEMENT {
                        push_record(&mut file, index as u32, &statement).map_err(io)?;
                        statement.truncate(prefix.len());
                    }
                }
                if statement.len() > prefix.len() {
                    push_record(&mut file, index as u32, &statement).map_err(io)?;
                }
            }
            std::io::Write::flush(&mut file).map_err(io)
        }
        .await;
        self.leave(&mut conn).await;
        result
    }

    /// Fills the empty `name` from a dump: the tables created, the rows
    /// inserted over several connections, then counters and objects, as a clone.
    async fn read_dump(&self, name: &str, dump: &std::path::Path) -> Result<()> {
        let bytes =
            std::fs::read(dump).map_err(Error::io(format!("reading {}", dump.display())))?;
        let (head, rows) = parse_dump(&bytes).map_err(|problem| Error::Transfer {
            what: format!("restoring {name}"),
            cause: format!("the dump {} is damaged: {problem}", dump.display()),
        })?;
        drop(bytes);
        let tpl = &head.template;
        {
            let mut conn = self.take().await?;
            conn.query_drop(format!(
                "ALTER DATABASE {} CHARACTER SET {} COLLATE {}",
                ident(name),
                tpl.charset,
                tpl.collation
            ))
            .await
            .map_err(q(format!("restoring {name}")))?;
        }
        let job = CloneJob {
            template: &head.source,
            clone: name,
            method: CloneMethod::ShowCreate,
            tpl,
            dump: &rows,
        };
        self.run_steps(&job, (0..tpl.tables.len()).map(Step::Create).collect())
            .await?;
        // Largest tables first, as clones copy them.
        let inserts = rows
            .iter()
            .enumerate()
            .flat_map(|(t, statements)| (0..statements.len()).map(move |i| Step::Insert(t, i)))
            .collect();
        self.run_steps(&job, inserts).await?;
        self.finish_clone(&job).await?;
        self.forget_template(name);
        Ok(())
    }

    /// The description of template `name`, read on first use.
    async fn template(&self, name: &str) -> Result<Arc<Template>> {
        let cell = self
            .templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.load_template(name))
            .await
            .cloned()
    }

    async fn load_template(&self, name: &str) -> Result<Arc<Template>> {
        let started = Instant::now();
        let mut conn = self.take().await?;
        let tpl = self.read_template(&mut conn, name).await;
        self.leave(&mut conn).await;
        let tpl = tpl?;
        tracing::debug!(
            "read template {name} ({} tables, {} views, {} routines, {} triggers, {} events) in {:?}",
            tpl.tables.len(),
            tpl.views.len(),
            tpl.routines.len(),
            tpl.triggers.len(),
            tpl.events.len(),
            started.elapsed()
        );
        Ok(Arc::new(tpl))
    }

    async fn read_template(&self, conn: &mut Conn, name: &str) -> Result<Template> {
        let ctx = format!("reading the template {name}");
        conn.query_drop(format!(
            "SET SESSION sql_mode = '{COPY_SQL_MODE}', sql_quote_show_create = 1"
        ))
        .await
        .map_err(q(&ctx))?;
        if !self.mariadb {
            // MySQL 8 caches information_schema.TABLES figures (AUTO_INCREMENT among them) for a day.
            let _ = conn
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
        }
        let schema: Option<Row> = conn
            .exec_first(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let Some(schema) = schema else {
            return Err(Error::query(
                NAME,
                ctx,
                "the template database does not exist",
            ));
        };
        let charset: String = col(&schema, 0, &ctx)?;
        let collation: String = col(&schema, 1, &ctx)?;

        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, TABLE_TYPE, AUTO_INCREMENT, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut table_rows = Vec::new();
        let mut view_names = Vec::new();
        for row in &rows {
            let table: String = col(row, 0, &ctx)?;
            let kind: String = col(row, 1, &ctx)?;
            match kind.as_str() {
                "VIEW" => view_names.push(table),
                "BASE TABLE" | "SEQUENCE" | "SYSTEM VERSIONED" => table_rows.push((
                    table,
                    col::<Option<u64>>(row, 2, &ctx)?,
                    col::<Option<u64>>(row, 3, &ctx)?,
                )),
                _ => {}
            }
        }

        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, COALESCE(EXTRA, '') FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut columns: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let extra: String = col(row, 2, &ctx)?;
            let list = columns.entry(col(row, 0, &ctx)?).or_default();
            if !is_generated(&extra) {
                list.push(ident(&col::<String>(row, 1, &ctx)?));
            }
        }

        let mut tables = Vec::with_capacity(table_rows.len());
        for (table, auto_increment, size) in table_rows {
            let row: Option<Row> = conn
                .query_first(format!(
                    "SHOW CREATE TABLE {}.{}",
                    ident(name),
                    ident(&table)
                ))
                .await
                .map_err(q(format!("{ctx}: SHOW CREATE TABLE {table}")))?;
            let create = match row {
                Some(row) => text_col(&row, 1, &ctx)?,
                None => {
                    return Err(Error::query(
                        NAME,
                        ctx,
                        format!("SHOW CREATE TABLE {table} returned nothing"),
                    ))
                }
            };
            tables.push(Table {
                foreign_keys: foreign_key_clauses(&create),
                copy_columns: columns.remove(&table).unwrap_or_default().join(", "),
                name: table,
                create,
                auto_increment,
                size: size.unwrap_or(0),
            });
        }
        tables.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));

        let mut views = Vec::new();
        for view in view_names {
            views.push(
                self.show_create(conn, name, "VIEW", view, None, None, 1)
                    .await?,
            );
        }

        let rows: Vec<Row> = conn
            .exec(
                "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES \
                 WHERE ROUTINE_SCHEMA = ? AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut routines = Vec::new();
        for row in &rows {
            let what = if col::<String>(row, 1, &ctx)? == "FUNCTION" {
                "FUNCTION"
            } else {
                "PROCEDURE"
            };
            routines.push(
                self.show_create(conn, name, what, col(row, 0, &ctx)?, Some(1), None, 2)
                    .await?,
            );
        }

        let rows: Vec<Row> = conn
            .exec(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? \
                 ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut triggers = Vec::new();
        for row in &rows {
            triggers.push(
                self.show_create(conn, name, "TRIGGER", col(row, 0, &ctx)?, Some(1), None, 2)
                    .await?,
            );
        }

        let rows: Vec<Row> = conn
            .exec(
                "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut events = Vec::new();
        for row in &rows {
            events.push(
                self.show_create(conn, name, "EVENT", col(row, 0, &ctx)?, Some(1), Some(2), 3)
                    .await?,
            );
        }

        Ok(Template {
            charset,
            collation,
            tables,
            routines,
            views,
            triggers,
            events,
        })
    }

    /// `SHOW CREATE <what> schema.name`, keeping the columns at the given positions.
    #[allow(clippy::too_many_arguments)]
    async fn show_create(
        &self,
        conn: &mut Conn,
        schema: &str,
        what: &'static str,
        name: String,
        sql_mode: Option<usize>,
        time_zone: Option<usize>,
        create: usize,
    ) -> Result<Object> {
        let ctx = format!(
            "reading the definition of {} {name} in {schema}",
            what.to_lowercase()
        );
        let row: Option<Row> = conn
            .query_first(format!(
                "SHOW CREATE {what} {}.{}",
                ident(schema),
                ident(&name)
            ))
            .await
            .map_err(q(&ctx))?;
        let Some(row) = row else {
            return Err(Error::query(NAME, ctx, "the server returned nothing"));
        };
        Ok(Object {
            what: what.to_string(),
            sql_mode: sql_mode
                .map(|i| col::<Option<String>>(&row, i, &ctx))
                .transpose()?
                .flatten(),
            time_zone: time_zone
                .map(|i| col::<Option<String>>(&row, i, &ctx))
                .transpose()?
                .flatten(),
            create: text_col(&row, create, &ctx)?,
            name,
        })
    }

    /// Prepares a connection to fill `clone`: no constraint checks, the clone as default database.
    async fn enter(&self, conn: &mut Conn, clone: &str) -> Result<()> {
        conn.query_drop(format!(
            "SET SESSION foreign_key_checks = 0, unique_checks = 0, sql_mode = '{COPY_SQL_MODE}', time_zone = '+00:00'"
        ))
        .await
        .map_err(q(format!("preparing a session to fill {clone}")))?;
        // Keeps the copy out of the binary log where the user may do so; elsewhere it stays logged.
        let _ = conn.query_drop("SET SESSION sql_log_bin = 0").await;
        conn.query_drop(format!("USE {}", ident(clone)))
            .await
            .map_err(q(format!("preparing a session to fill {clone}")))
    }

    /// Runs `steps` over up to `clone_connections` connections; stops at the first failure.
    async fn run_steps(&self, job: &CloneJob<'_>, steps: Vec<Step>) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let workers = self.clone_connections.clamp(1, POOL_MAX).min(steps.len());
        let queue = Mutex::new(VecDeque::from(steps));
        let failed = AtomicBool::new(false);
        let (drained_tx, drained_rx) = watch::channel(false);
        let results = join_all((0..workers).map(|i| {
            self.worker(
                job,
                i == 0,
                &queue,
                &failed,
                &drained_tx,
                drained_rx.clone(),
            )
        }))
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    async fn worker(
        &self,
        job: &CloneJob<'_>,
        first: bool,
        queue: &Mutex<VecDeque<Step>>,
        failed: &AtomicBool,
        drained_tx: &watch::Sender<bool>,
        mut drained: watch::Receiver<bool>,
    ) -> Result<()> {
        // The first connection of a clone always works; helpers only within the process-wide
        // budget, so that many clones at once do not crowd the server with connections.
        let permit = self.filling.try_acquire();
        if !first && permit.is_err() {
            return Ok(());
        }
        // A helper that gets no connection before the others have taken all the work just ends:
        // several clones at once never wait on each other's connections.
        let mut conn = tokio::select! {
            conn = self.take() => conn?,
            _ = drained.wait_for(|d| *d) => return Ok(()),
        };
        // Copies share a transaction until about COMMIT_BYTES of the template were copied.
        let mut in_transaction: Option<u64> = None;
        let result = async {
            self.enter(&mut conn, job.clone).await?;
            let ctx = || format!("filling {}", job.clone);
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let step = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(step) = step else {
                    drained_tx.send_replace(true);
                    break;
                };
                let copied = match step {
                    Step::Copy(i) => job.tpl.tables[i].size,
                    Step::Insert(t, i) => job.dump[t][i].len() as u64,
                    Step::Create(_) => {
                        if in_transaction.take().is_some() {
                            conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
                        }
                        self.run_step(&mut conn, job, step).await?;
                        continue;
                    }
                };
                if in_transaction.is_none() {
                    conn.query_drop("START TRANSACTION")
                        .await
                        .map_err(q(ctx()))?;
                }
                self.run_step(&mut conn, job, step).await?;
                let batch = in_transaction.unwrap_or(0) + copied;
                in_transaction = Some(batch);
                if batch >= COMMIT_BYTES {
                    conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
                    in_transaction = None;
                }
            }
            if in_transaction.take().is_some() {
                conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            if in_transaction.is_some() {
                let _ = conn.query_drop("ROLLBACK").await;
            }
            failed.store(true, Ordering::Relaxed);
            drained_tx.send_replace(true);
        }
        self.leave(&mut conn).await;
        result
    }

    async fn run_step(&self, conn: &mut Conn, job: &CloneJob<'_>, step: Step) -> Result<()> {
        let clone = ident(job.clone);
        let template = ident(job.template);
        match step {
            Step::Create(i) => {
                let t = &job.tpl.tables[i];
                let table = ident(&t.name);
                let ctx = || format!("creating table {} in {}", t.name, job.clone);
                if job.method != CloneMethod::CreateLike {
                    return conn.query_drop(&t.create).await.map_err(q(ctx()));
                }
                conn.query_drop(format!(
                    "CREATE TABLE {clone}.{table} LIKE {template}.{table}"
                ))
                .await
                .map_err(q(ctx()))?;
                // LIKE leaves the foreign keys out. With foreign_key_checks off, the tables they
                // reference need not exist yet.
                if !t.foreign_keys.is_empty() {
                    let adds: Vec<String> = t
                        .foreign_keys
                        .iter()
                        .map(|fk| format!("ADD {fk}"))
                        .collect();
                    conn.query_drop(format!("ALTER TABLE {clone}.{table} {}", adds.join(", ")))
                        .await
                        .map_err(q(format!(
                            "adding the foreign keys of {} in {}",
                            t.name, job.clone
                        )))?;
                }
                Ok(())
            }
            Step::Insert(t, i) => conn.query_drop(&job.dump[t][i]).await.map_err(q(format!(
                "restoring the rows of {} into {}",
                job.tpl.tables[t].name, job.clone
            ))),
            Step::Copy(i) => {
                let t = &job.tpl.tables[i];
                if t.copy_columns.is_empty() {
                    return Ok(());
                }
                conn.query_drop(format!(
                    "INSERT INTO {clone}.{table} ({cols}) SELECT {cols} FROM {template}.{table}",
                    table = ident(&t.name),
                    cols = t.copy_columns
                ))
                .await
                .map_err(q(format!(
                    "copying the rows of {} into {}",
                    t.name, job.clone
                )))
            }
        }
    }

    /// What every method does once the tables are filled: the AUTO_INCREMENT counters, then the
    /// routines, views (in dependency order), triggers (after the data, so they never fire on
    /// it) and events, all rewritten from the template's schema to the clone's.
    async fn finish_clone(&self, job: &CloneJob<'_>) -> Result<()> {
        let mut conn = self.take().await?;
        let result = async {
            self.enter(&mut conn, job.clone).await?;
            self.match_auto_increments(&mut conn, job).await?;
            for routine in &job.tpl.routines {
                self.create_object(&mut conn, job, routine).await?;
            }
            let mut pending: Vec<&Object> = job.tpl.views.iter().collect();
            while !pending.is_empty() {
                let mut failed = Vec::new();
                let mut last_error = None;
                for view in &pending {
                    if let Err(e) = self.create_object(&mut conn, job, view).await {
                        failed.push(*view);
                        last_error = Some(e);
                    }
                }
                if failed.len() == pending.len() {
                    if let Some(e) = last_error {
                        return Err(e);
                    }
                }
                pending = failed;
            }
            for object in job.tpl.triggers.iter().chain(&job.tpl.events) {
                self.create_object(&mut conn, job, object).await?;
            }
            Ok(())
        }
        .await;
        self.leave(&mut conn).await;
        result
    }

    async fn match_auto_increments(&self, conn: &mut Conn, job: &CloneJob<'_>) -> Result<()> {
        if job.tpl.tables.iter().all(|t| t.auto_increment.is_none()) {
            return Ok(());
        }
        let ctx = format!("reading the AUTO_INCREMENT counters of {}", job.clone);
        if !self.mariadb {
            let _ = conn
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
        }
        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND AUTO_INCREMENT IS NOT NULL",
                (job.clone,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut now = HashMap::new();
        for row in &rows {
            now.insert(col::<String>(row, 0, &ctx)?, col::<u64>(row, 1, &ctx)?);
        }
        for t in &job.tpl.tables {
            let Some(want) = t.auto_increment else {
                continue;
            };
            if now.get(&t.name) != Some(&want) {
                conn.query_drop(format!(
                    "ALTER TABLE {}.{} AUTO_INCREMENT = {want}",
                    ident(job.clone),
                    ident(&t.name)
                ))
                .await
                .map_err(q(format!(
                    "setting the AUTO_INCREMENT counter of {} in {}",
                    t.name, job.clone
                )))?;
            }
        }
        Ok(())
    }

    async fn create_object(
        &self,
        conn: &mut Conn,
        job: &CloneJob<'_>,
        object: &Object,
    ) -> Result<()> {
        let ctx = || {
            format!(
                "creating {} {} in {}",
                object.what.to_lowercase(),
                object.name,
                job.clone
            )
        };
        // Each with the sql_mode it was made with; views, which keep none, with ours.
        let mode = object.sql_mode.as_deref().unwrap_or(COPY_SQL_MODE);
        conn.exec_drop("SET SESSION sql_mode = ?", (mode,))
            .await
            .map_err(q(ctx()))?;
        if let Some(zone) = &object.time_zone {
            conn.exec_drop("SET SESSION time_zone = ?", (zone,))
                .await
                .map_err(q(ctx()))?;
        }
        conn.query_drop(requalify(&object.create, job.template, job.clone))
            .await
            .map_err(q(ctx()))
    }

    /// Kills every other session whose default database is `name`, and, with
    /// `statements`, what a dbfork that was killed may have left running on
    /// it: its `CREATE DATABASE` of exactly `name`, and a statement naming
    /// `name` from a session whose default database is one of dbfork's (the
    /// sessions filling a clone use the clone as theirs, and read the
    /// template). A session on any other database whose statement merely
    /// mentions the name is a bystander and is left alone.
    async fn kill_sessions(&self, conn: &mut Conn, name: &str, statements: bool) -> Result<usize> {
        let rows: Vec<Row> = conn
            .exec(
                "SELECT ID, DB, INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND (DB = ? OR (? AND LOCATE(CONCAT(CHAR(96), ?, CHAR(96)), INFO) > 0))",
                (name, statements, name),
            )
            .await
            .map_err(q(format!("listing the sessions on {name}")))?;
        let quoted = ident(name);
        let mut killed = 0;
        for row in &rows {
            let id: u64 = col(row, 0, "listing sessions")?;
            let db: Option<String> = col(row, 1, "listing sessions")?;
            let info: Option<Vec<u8>> = col(row, 2, "listing sessions")?;
            let uses = db.as_deref() == Some(name);
            let ours = db
                .as_deref()
                .is_some_and(|d| d.starts_with(crate::names::PREFIX));
            let names = statements
                && info.is_some_and(|i| {
                    creates(&i, &quoted)
                        || (ours && i.windows(quoted.len()).any(|w| w == quoted.as_bytes()))
                });
            if !(uses || names) {
                continue;
            }
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                // ER_NO_SUCH_THREAD: it ended on its own.
                Err(e) if server_code(&e) == Some(1094) => {}
                Err(e) => tracing::debug!("could not kill session {id} on {name}: {e}"),
            }
        }
        Ok(killed)
    }

    async fn holders(&self, conn: &mut Conn, name: &str) -> String {
        let rows: std::result::Result<Vec<Row>, _> = conn
            .exec(
                "SELECT ID, COALESCE(USER, ''), COALESCE(HOST, ''), COALESCE(COMMAND, ''), COALESCE(STATE, '') \
                 FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                (name,),
            )
            .await;
        match rows {
            Ok(rows) if rows.is_empty() => "no session uses it any more".to_string(),
            Ok(rows) => {
                let list: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let s = |i| col::<String>(r, i, "").unwrap_or_default();
                        format!(
                            "session {} (user {}, host {}, command {}, state '{}')",
                            col::<u64>(r, 0, "").unwrap_or_default(),
                            s(1),
                            s(2),
                            s(3),
                            s(4)
                        )
                    })
                    .collect();
                format!("still used by {}", list.join(", "))
            }
            Err(e) => format!("and its sessions could not be listed: {e}"),
        }
    }

    /// The clause that marks a database as dbfork's in the statement that
    /// creates it (so that no moment exists when it is there unmarked).
    fn mark_clause(&self) -> String {
        if self.marks {
            format!(" COMMENT '{}'", crate::names::MARK)
        } else {
            String::new()
        }
    }

    async fn schema_exists(&self, conn: &mut Conn, name: &str) -> Result<bool> {
        let found: Vec<String> = conn
            .exec(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(q(format!("looking for the database {name}")))?;
        Ok(found.iter().any(|n| n == name))
    }

    /// One `DROP DATABASE`, waiting at most a second for the metadata locks of other sessions.
    async fn try_drop(
        &self,
        conn: &mut Conn,
        name: &str,
    ) -> std::result::Result<(), mysql_async::Error> {
        conn.query_drop("SET SESSION lock_wait_timeout = 1").await?;
        let dropped = conn
            .query_drop(format!("DROP DATABASE IF EXISTS {}", ident(name)))
            .await;
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"))
            .await?;
        dropped
    }
}

fn spell(ty: ColumnType) -> String {
    match ty {
        ColumnType::Text(width) => format!("VARCHAR({width})"),
        ColumnType::Int => "BIGINT".to_string(),
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

/// A value for an option file: quoted, with `\\` and `"` escaped.
fn option_value(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use crate::registry::{EntryKind, State};
    use std::future::Future;
    use std::panic::AssertUnwindSafe;

    use futures_util::FutureExt;

    use super::*;
    use crate::process::Owner;

    fn test_url() -> DbUrl {
        let text = std::env::var("DBFORK_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into());
        DbUrl::parse(&text).unwrap()
    }

    async fn backend() -> Mysql {
        Mysql::connect(&test_url(), &ConnectOptions::default())
            .await
            .unwrap()
    }

    fn unique(tag: &str) -> String {
        format!("dbfork_test_{tag}_{}", crate::names::new_run_id())
    }

    /// A connection outside the backend's pool, on `schema`.
    async fn raw(db: &Mysql, schema: Option<&str>) -> Conn {
        let opts = OptsBuilder::from_opts(db.opts.clone()).db_name(schema.map(str::to_string));
        Conn::new(opts).await.unwrap()
    }

    async fn run(conn: &mut Conn, statements: &[&str]) {
        for s in statements {
            conn.query_drop(*s)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    /// Runs `body`, then drops `names` whatever happened, then passes a failure on.
    async fn with_cleanup(db: &Mysql, names: &[&str], body: impl Future<Output = ()>) {
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        for name in names {
            if let Err(e) = db.drop_database(name, Duration::from_secs(10)).await {
                dbfork_meta::say!("cleanup of {name} failed: {e}");
            }
        }
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    const TEMPLATE_SQL: &[&str] = &[
        "CREATE TABLE parent (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
         created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, UNIQUE KEY uq_parent_name (name)) COMMENT 'parents'",
        "CREATE TABLE child (id BIGINT AUTO_INCREMENT PRIMARY KEY, parent_id INT NOT NULL, qty INT NOT NULL DEFAULT 0, \
         total INT AS (qty * 2) STORED, half INT AS (qty DIV 2) VIRTUAL, note TEXT, \
         KEY idx_qty_parent (qty, parent_id), FULLTEXT KEY ft_note (note), \
         CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE ON UPDATE RESTRICT, \
         CONSTRAINT chk_qty CHECK (qty >= 0))",
        "CREATE TABLE grandchild (id INT PRIMARY KEY, child_id BIGINT, parent_id INT, \
         CONSTRAINT fk_gc_child FOREIGN KEY (child_id) REFERENCES child (id) ON DELETE SET NULL, \
         CONSTRAINT fk_gc_parent FOREIGN KEY (parent_id) REFERENCES parent (id))",
        "CREATE TABLE node (id INT PRIMARY KEY, up INT NULL, CONSTRAINT fk_node_up FOREIGN KEY (up) REFERENCES node (id))",
        "CREATE TABLE gap (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB",
        "CREATE TABLE zero (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10)) ROW_FORMAT=DYNAMIC",
        "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(100) CHARACTER SET latin1 COLLATE latin1_bin)",
        "CREATE TABLE empty_one (id INT PRIMARY KEY, b BLOB, d DECIMAL(12, 3) DEFAULT 1.5)",
        "CREATE TRIGGER trg_child_ai AFTER INSERT ON child FOR EACH ROW INSERT INTO log (msg) VALUES (CONCAT('child ', NEW.id))",
        "CREATE TRIGGER trg_child_ai2 AFTER INSERT ON child FOR EACH ROW FOLLOWS trg_child_ai \
         INSERT INTO log (msg) VALUES (CONCAT('again ', NEW.id))",
        "INSERT INTO parent (name) VALUES ('a'), ('b'), ('c')",
        "INSERT INTO child (parent_id, qty, note) VALUES (1, 1, 'one'), (1, 2, 'two'), (2, 3, 'three'), (2, 4, NULL), (3, 5, 'five'), (3, 6, 'six')",
        "INSERT INTO grandchild VALUES (1, 1, 1), (2, 3, 2), (3, NULL, 3)",
        "INSERT INTO node VALUES (1, NULL), (2, 1), (3, 2)",
        "INSERT INTO gap (v) VALUES (1), (2), (3), (4), (5)",
        "DELETE FROM gap WHERE id >= 4",
        "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')",
        "INSERT INTO zero VALUES (0, 'zero'), (1, 'one')",
        "SET SESSION sql_mode = DEFAULT",
        "CREATE VIEW v_counts AS SELECT p.id, p.name, COUNT(c.id) AS n FROM parent p LEFT JOIN child c ON c.parent_id = p.id GROUP BY p.id, p.name",
        // Sorts before the view it reads, so the clone must retry it.
        "CREATE VIEW a_busy AS SELECT id, name FROM v_counts WHERE n > 1",
        "CREATE FUNCTION child_count(pid INT) RETURNS INT READS SQL DATA RETURN (SELECT COUNT(*) FROM child WHERE parent_id = pid)",
        "CREATE VIEW v_fn AS SELECT id, child_count(id) AS n FROM parent",
        "CREATE PROCEDURE add_parent(IN n VARCHAR(50)) MODIFIES SQL DATA BEGIN INSERT INTO parent (name) VALUES (n); END",
        "CREATE EVENT ev_trim ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM log WHERE id < 0",
    ];

    const MARIADB_SQL: &[&str] = &[
        "CREATE SEQUENCE seq_orders START WITH 100 INCREMENT BY 5",
        "CREATE TABLE versioned (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING",
        "INSERT INTO versioned VALUES (1, 1), (2, 2)",
        "UPDATE versioned SET v = 3 WHERE id = 1",
    ];

    const CATALOG: &[&str] = &[
        "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, ROW_FORMAT, TABLE_COLLATION, AUTO_INCREMENT, CREATE_OPTIONS, TABLE_COMMENT \
         FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1",
        "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, IS_NULLABLE, COLUMN_TYPE, CHARACTER_SET_NAME, \
         COLLATION_NAME, COLUMN_KEY, EXTRA, GENERATION_EXPRESSION, COLUMN_COMMENT \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY 1, 3",
        "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, INDEX_TYPE, NULLABLE \
         FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? ORDER BY 1, 2, 4",
        "SELECT CONSTRAINT_NAME, TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, POSITION_IN_UNIQUE_CONSTRAINT, \
         REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME \
         FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = ? ORDER BY 2, 1, 4",
        "SELECT CONSTRAINT_NAME, TABLE_NAME, UNIQUE_CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE, REFERENCED_TABLE_NAME \
         FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? ORDER BY 2, 1",
        "SELECT CONSTRAINT_NAME, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
         WHERE CONSTRAINT_SCHEMA = ? ORDER BY 2, 1",
        "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION, IS_UPDATABLE, DEFINER, SECURITY_TYPE, ALGORITHM \
         FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY 1",
        "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_ORDER, ACTION_TIMING, ACTION_STATEMENT, \
         SQL_MODE, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY 1",
        "SELECT ROUTINE_NAME, ROUTINE_TYPE, DATA_TYPE, ROUTINE_DEFINITION, IS_DETERMINISTIC, SQL_DATA_ACCESS, \
         SECURITY_TYPE, SQL_MODE, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY 1",
        "SELECT EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, INTERVAL_FIELD, STARTS, STATUS, ON_COMPLETION, \
         SQL_MODE, TIME_ZONE, DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY 1",
    ];

    /// The catalog of `schema` with its name replaced by `SELF`, and each table's row count.
    async fn snapshot(conn: &mut Conn, schema: &str) -> Vec<String> {
        let mut out = Vec::new();
        for sql in CATALOG {
            let rows: Vec<Row> = conn
                .exec(*sql, (schema,))
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for row in rows {
                let values: Vec<String> =
                    row.unwrap().into_iter().map(|v| v.as_sql(false)).collect();
                let what = sql
                    .split("information_schema.")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("");
                out.push(format!(
                    "{what}: {}",
                    values.join(" | ").replace(schema, "SELF")
                ));
            }
        }
        let tables: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW' ORDER BY 1",
                (schema,),
            )
            .await
            .unwrap();
        for t in tables {
            let n: Option<u64> = conn
                .query_first(format!(
                    "SELECT COUNT(*) FROM {}.{}",
                    ident(schema),
                    ident(&t)
                ))
                .await
                .unwrap();
            out.push(format!("rows {t}: {}", n.unwrap()));
        }
        out
    }

    fn assert_same(template: &[String], clone: &[String], label: &str) {
        let missing: Vec<&String> = template.iter().filter(|l| !clone.contains(l)).collect();
        let extra: Vec<&String> = clone.iter().filter(|l| !template.contains(l)).collect();
        assert!(
            missing.is_empty() && extra.is_empty() && template.len() == clone.len(),
            "{label}: the clone differs from the template\nonly in the template:\n{missing:#?}\nonly in the clone:\n{extra:#?}"
        );
    }

    async fn build_test_template(db: &Mysql, name: &str) {
        db.create_empty(name).await.unwrap();
        let mut conn = raw(db, Some(name)).await;
        run(&mut conn, TEMPLATE_SQL).await;
        if db.mariadb {
            run(&mut conn, MARIADB_SQL).await;
            let _: Option<i64> = conn
                .query_first("SELECT NEXTVAL(seq_orders)")
                .await
                .unwrap();
        }
        // Left open on purpose: sealing must end it.
        db.seal_template(name).await.unwrap();
        assert!(
            conn.query_drop("SELECT 1").await.is_err(),
            "sealing must end the setup's sessions"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_clones_match_the_template() {
        let mut db = backend().await;
        let tpl = unique("tpl");
        let by_show = unique("show");
        let by_like = unique("like");
        let by_show_1 = unique("show1");
        let names = [
            tpl.as_str(),
            by_show.as_str(),
            by_like.as_str(),
            by_show_1.as_str(),
        ];
        let cleanup = backend().await;
        with_cleanup(&cleanup, &names, async {
            build_test_template(&db, &tpl).await;
            let mut conn = raw(&db, None).await;
            let expected = snapshot(&mut conn, &tpl).await;
            assert!(expected.iter().any(|l| l.contains("VIEWS: 'a_busy'")), "{expected:#?}");
            assert!(expected.iter().any(|l| l.starts_with("TABLES: 'gap'") && l.contains("| 6 |")), "{expected:#?}");

            for (clone, method, k) in [
                (&by_show, CloneMethod::ShowCreate, 3),
                (&by_like, CloneMethod::CreateLike, 2),
                (&by_show_1, CloneMethod::ShowCreate, 1),
            ] {
                db.set_clone_connections(k);
                db.clone_database(&tpl, clone, method).await.unwrap();
                let got = snapshot(&mut conn, clone).await;
                assert_same(&expected, &got, &format!("{method:?} with {k} connections"));
            }

            // The clone works on its own objects: routines, triggers and counters act on it, not the template.
            let clone = ident(&by_like);
            run(
                &mut conn,
                &[
                    &format!("CALL {clone}.add_parent('d')"),
                    &format!("INSERT INTO {clone}.child (parent_id, qty) VALUES (4, 7)"),
                    &format!("INSERT INTO {clone}.gap (v) VALUES (9)"),
                ],
            )
            .await;
            let row: Option<(i64, i64, i64, i64)> = conn
                .query_first(format!(
                    "SELECT (SELECT MAX(id) FROM {clone}.parent), {clone}.child_count(4), \
                     (SELECT COUNT(*) FROM {clone}.log WHERE msg LIKE '%7'), (SELECT MAX(id) FROM {clone}.gap)"
                ))
                .await
                .unwrap();
            assert_eq!(row, Some((4, 1, 2, 6)));
            for fk_clone in [&by_show, &by_like] {
                let orphan = conn
                    .query_drop(format!("INSERT INTO {}.child (parent_id, qty) VALUES (99, 1)", ident(fk_clone)))
                    .await;
                assert!(orphan.is_err(), "{fk_clone}: the foreign key must be enforced");
            }
            let zero: Option<String> = conn.query_first(format!("SELECT v FROM {clone}.zero WHERE id = 0")).await.unwrap();
            assert_eq!(zero.as_deref(), Some("zero"));
            assert_eq!(snapshot(&mut conn, &tpl).await, expected, "the template must not change");
            conn.disconnect().await.unwrap();
        })
        .await;
        for name in names {
            assert!(
                cleanup.databases(name).await.unwrap().is_empty(),
                "{name} was left behind"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_drop_ends_sessions_and_transactions() {
        let db = backend().await;
        let name = unique("drop");
        let filling = unique("filling");
        with_cleanup(&db, &[&name, &filling], async {
            db.create_empty(&name).await.unwrap();
            let mut setup = raw(&db, Some(&name)).await;
            run(
                &mut setup,
                &[
                    "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
                    "INSERT INTO t VALUES (1, 1), (2, 2)",
                ],
            )
            .await;
            setup.disconnect().await.unwrap();

            let mut idle = raw(&db, Some(&name)).await;
            run(&mut idle, &["SELECT 1"]).await;
            let mut busy = raw(&db, Some(&name)).await;
            run(
                &mut busy,
                &["START TRANSACTION", "UPDATE t SET v = v + 1 WHERE id = 1"],
            )
            .await;

            // Another client that keeps coming back, each time inside a transaction for a while.
            let stop = Arc::new(AtomicBool::new(false));
            let opts = OptsBuilder::from_opts(db.opts.clone()).db_name(Some(name.clone()));
            let stopper = stop.clone();
            let pest = tokio::spawn(async move {
                let mut rounds = 0u32;
                while !stopper.load(Ordering::Relaxed) {
                    if let Ok(Ok(mut c)) =
                        tokio::time::timeout(Duration::from_secs(1), Conn::new(opts.clone())).await
                    {
                        let _ = c.query_drop("START TRANSACTION").await;
                        let _ = c.query_drop("SELECT * FROM t FOR UPDATE").await;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let _ = c.query_drop("COMMIT").await;
                        rounds += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                rounds
            });
            // A statement from another of dbfork's databases that reads it, like
            // the INSERT ... SELECT of a clone in flight (its session uses the clone).
            db.create_empty(&filling).await.unwrap();
            let mut reader = raw(&db, Some(&filling)).await;
            let quoted = ident(&name);
            let reading = tokio::spawn(async move {
                let r = reader
                    .query_drop(format!("SELECT SLEEP(20), COUNT(*) FROM {quoted}.t"))
                    .await;
                (r, reader)
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut admin = db.take().await.unwrap();
            let holders = db.holders(&mut admin, &name).await;
            drop(admin);
            assert!(
                holders.contains(&format!("session {} (user ", idle.id())),
                "{holders}"
            );
            assert!(
                holders.contains(&format!("session {} (user ", busy.id())),
                "{holders}"
            );

            let started = Instant::now();
            db.drop_database(&name, Duration::from_secs(10))
                .await
                .unwrap();
            let took = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(5), pest).await;
            assert!(took < Duration::from_secs(5), "the drop took {took:?}");
            assert!(db.databases(&name).await.unwrap().is_empty());
            assert!(
                idle.query_drop("SELECT 1").await.is_err(),
                "the idle session must be gone"
            );
            let (_, mut reader) = tokio::time::timeout(Duration::from_secs(5), reading)
                .await
                .unwrap()
                .unwrap();
            assert!(
                reader.query_drop("SELECT 1").await.is_err(),
                "the reading statement must be gone"
            );
            assert!(
                busy.query_drop("COMMIT").await.is_err(),
                "the open transaction must be gone"
            );
            // Dropping what does not exist succeeds at once.
            let started = Instant::now();
            db.drop_database(&name, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(started.elapsed() < Duration::from_secs(1));
        })
        .await;
    }

    #[tokio::test]
    async fn mysql_registry_roundtrip() {
        let base = backend().await;
        let schema = format!("dbfork_test_reg_{}", crate::names::new_run_id());
        base.create_empty(&schema).await.unwrap();
        with_cleanup(&base, &[&schema], async {
            let db = Mysql::connect(
                &test_url().with_database(&schema),
                &ConnectOptions::default(),
            )
            .await
            .unwrap();
            assert!(db.registry_list().await.unwrap().is_empty());
            let mut owner = Owner::this_process();
            // Clock ticks since boot: large, never beyond a signed 64-bit column.
            owner.start = i64::MAX as u64 - 7;
            let mut a = Entry::new(
                "dbfork_tpl_x".into(),
                EntryKind::Template,
                &"f".repeat(64),
                "setupkey",
                "",
                &owner,
            );
            a.created_at -= 10;
            let b = Entry::new(
                "dbfork_run_0".into(),
                EntryKind::Clone,
                &"f".repeat(64),
                "setupkey",
                "run",
                &Owner::nobody(),
            );
            db.registry_put(&[a.clone(), b.clone()]).await.unwrap();
            assert_eq!(
                db.registry_list().await.unwrap(),
                vec![a.clone(), b.clone()]
            );
            a.state = State::Ready;
            a.last_used_at += 5;
            db.registry_put(std::slice::from_ref(&a)).await.unwrap();
            assert_eq!(
                db.registry_list().await.unwrap(),
                vec![a.clone(), b.clone()]
            );
            db.registry_remove(&a.name).await.unwrap();
            db.registry_remove("not_there").await.unwrap();
            assert_eq!(db.registry_list().await.unwrap(), vec![b]);
            // Connecting again finds the table that is there.
            let again = Mysql::connect(
                &test_url().with_database(&schema),
                &ConnectOptions::default(),
            )
            .await
            .unwrap();
            assert_eq!(again.registry_list().await.unwrap().len(), 1);
            db.disconnect(Duration::from_secs(5)).await;
            again.disconnect(Duration::from_secs(5)).await;
        })
        .await;
    }

    #[tokio::test]
    async fn mysql_locks_exclude_and_time_out() {
        let a = backend().await;
        let b = backend().await;
        for key in [
            format!("dbfork-test-lock-{}", crate::names::new_run_id()),
            format!("dbfork-test-{}", "k".repeat(100)),
        ] {
            let held = a.lock(&key, Duration::from_secs(1)).await.unwrap();
            let started = Instant::now();
            match b.lock(&key, Duration::from_millis(1500)).await {
                Err(Error::LockTimeout { .. }) => {}
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("the lock {key} was taken twice"),
            }
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
                "{took:?}"
            );
            a.unlock(held).await.unwrap();
            let second = b.lock(&key, Duration::from_secs(2)).await.unwrap();
            // A lock whose holder goes away without unlocking is released by the server.
            drop(second);
            let third = a.lock(&key, Duration::from_secs(5)).await.unwrap();
            a.unlock(third).await.unwrap();
        }
        let held = a
            .lock("dbfork-test-zero-wait", Duration::ZERO)
            .await
            .unwrap();
        assert!(b
            .lock("dbfork-test-zero-wait", Duration::ZERO)
            .await
            .is_err());
        a.unlock(held).await.unwrap();
    }

    #[tokio::test]
    async fn mysql_connect_errors_hide_the_password() {
        let mut url = test_url();
        url.password = Some("hunter2-secret".into());
        url.user = Some("dbfork_no_such_user".into());
        match Mysql::connect(&url, &ConnectOptions::default()).await {
            Err(e @ Error::Connect { .. }) => {
                let text = e.to_string();
                assert!(!text.contains("hunter2"), "{text}");
            }
            Err(e) => panic!("expected a connect error, got {e}"),
            Ok(_) => panic!("an unknown user connected"),
        }
        let refused = DbUrl::parse("mysql://root:hunter2@127.0.0.1:1/mysql").unwrap();
        let err = Mysql::connect(&refused, &ConnectOptions::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        // A server that never answers: a listener that accepts and stays silent.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = DbUrl::parse(&format!("mysql://root:hunter2@127.0.0.1:{port}/mysql")).unwrap();
        let options = ConnectOptions {
            connect_timeout: Duration::from_millis(300),
        };
        let started = Instant::now();
        let err = Mysql::connect(&silent, &options).await.err().unwrap();
        assert!(matches!(err, Error::ConnectTimeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!err.to_string().contains("hunter2"));
        drop(listener);
    }

    /// Ignored by default: it creates the schema `_dbfork` on the server (and drops it if it made it).
    #[tokio::test]
    #[ignore]
    async fn mysql_default_maintenance_schema_and_version() {
        let mut url = test_url();
        let existed = backend()
            .await
            .databases(DEFAULT_MAINTENANCE)
            .await
            .unwrap()
            .len()
            == 1;
        url.database = None;
        let db = Mysql::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(db.maintenance, DEFAULT_MAINTENANCE);
        assert!(db
            .databases("_dbfor")
            .await
            .unwrap()
            .contains(&DEFAULT_MAINTENANCE.to_string()));
        let version = db.server_version().await.unwrap();
        assert!(
            version.chars().next().is_some_and(|c| c.is_ascii_digit()),
            "{version}"
        );
        db.registry_list().await.unwrap();
        if !existed {
            let mut conn = db.take().await.unwrap();
            conn.query_drop(format!("DROP DATABASE {}", ident(DEFAULT_MAINTENANCE)))
                .await
                .unwrap();
        }
    }

    #[test]
    fn mysql_client_env() {
        let url = DbUrl::parse("mysql://app:s3cret@db.local:3307/mysql").unwrap();
        // The env itself needs no server: build a backend value by hand.
        let backend = Mysql {
            url: url.clone(),
            options: ConnectOptions::default(),
            opts: Opts::from(OptsBuilder::default()),
            maintenance: "mysql".into(),
            pool: Pool::new(OptsBuilder::default()),
            mariadb: true,
            marks: true,
            clone_connections: 2,
            filling: Semaphore::new(FILLING_BUDGET),
            templates: Mutex::new(HashMap::new()),
            registry_ready: AtomicBool::new(false),
        };
        let env: HashMap<String, String> = backend.client_env("dbfork_x_0").into_iter().collect();
        assert_eq!(env["MYSQL_HOST"], "db.local");
        assert_eq!(env["MYSQL_TCP_PORT"], "3307");
        assert_eq!(env["MYSQL_USER"], "app");
        assert_eq!(env["MYSQL_PWD"], "s3cret");
        assert_eq!(env["MYSQL_DATABASE"], "dbfork_x_0");
        assert!(!env.contains_key("MYSQL_UNIX_PORT"));
        let socket = DbUrl::parse("mysql://root@/mysql?socket=/run/mysqld/mysqld.sock").unwrap();
        let backend = Mysql {
            url: socket,
            ..backend
        };
        let env: HashMap<String, String> = backend.client_env("d").into_iter().collect();
        assert_eq!(env["MYSQL_UNIX_PORT"], "/run/mysqld/mysqld.sock");
        assert_eq!(env["MYSQL_HOST"], "localhost");
        assert!(!env.contains_key("MYSQL_PWD"));
    }

    #[test]
    fn mysql_text_helpers() {
        let text = b"select `tpl`.`t`.`a` AS `a` from `tpl`.`t` join tpl.u join xtpl.v join `tpl_2`.w where s = '`tpl`'";
        assert_eq!(
            String::from_utf8(requalify(text, "tpl", "cl")).unwrap(),
            "select `cl`.`t`.`a` AS `a` from `cl`.`t` join `cl`.u join xtpl.v join `tpl_2`.w where s = '`tpl`'"
        );
        let create = b"CREATE TABLE `b` (\n  `id` int(11) NOT NULL,\n  KEY `fk` (`a`),\n  CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `a` (`id`) ON DELETE CASCADE,\n  CONSTRAINT `chk` CHECK (`id` > 0)\n) ENGINE=InnoDB";
        assert_eq!(
            foreign_key_clauses(create),
            vec!["CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `a` (`id`) ON DELETE CASCADE"]
        );
        assert!(is_generated("VIRTUAL GENERATED") && is_generated("STORED GENERATED"));
        assert!(
            !is_generated("DEFAULT_GENERATED on update CURRENT_TIMESTAMP")
                && !is_generated("auto_increment")
        );
        assert_eq!(lock_name("short"), "short");
        let long = lock_name(&"x".repeat(200));
        assert!(long.len() <= MAX_LOCK_NAME && long != lock_name(&"y".repeat(200)));
        assert_eq!(ident("a`b"), "`a``b`");
    }
    /// A template of 160 tables (foreign keys, secondary indexes, about 10,000 rows), then the
    /// time of one clone for each method and number of connections, and of 4 clones at once.
    /// `cargo test -p dbfork-engine --no-default-features --features mysql mysql_bench -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn mysql_bench_clone_methods() {
        const TABLES: usize = 160;
        const ROWS: usize = 63;
        let mut db = backend().await;
        let tpl = unique("benchtpl");
        let cleanup = backend().await;
        let clones: Vec<String> = (0..4).map(|i| format!("{tpl}_c{i}")).collect();
        let mut names: Vec<&str> = vec![&tpl];
        names.extend(clones.iter().map(String::as_str));
        with_cleanup(&cleanup, &names, async {
            db.create_empty(&tpl).await.unwrap();
            let mut conn = raw(&db, Some(&tpl)).await;
            let started = Instant::now();
            for i in 0..TABLES {
                let fk = if i == 0 {
                    String::new()
                } else {
                    format!(", CONSTRAINT fk_t{i:03}_parent FOREIGN KEY (parent_id) REFERENCES t{:03} (id)", (i - 1) / 2)
                };
                conn.query_drop(format!(
                    "CREATE TABLE t{i:03} (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT NULL, \
                     code VARCHAR(32) NOT NULL, name VARCHAR(100) NOT NULL DEFAULT '', amount DECIMAL(10, 2), \
                     created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, flag TINYINT NOT NULL DEFAULT 0, \
                     UNIQUE KEY uq_t{i:03}_code (code), KEY ix_t{i:03}_name_created (name, created){fk})"
                ))
                .await
                .unwrap();
                let values: Vec<String> = (1..=ROWS)
                    .map(|r| {
                        let parent = if i == 0 { "NULL".to_string() } else { (r % ROWS + 1).to_string() };
                        format!("({parent}, 'c{i}_{r}', 'name {r}', {r}.25, {})", r % 2)
                    })
                    .collect();
                conn.query_drop(format!(
                    "INSERT INTO t{i:03} (parent_id, code, name, amount, flag) VALUES {}",
                    values.join(", ")
                ))
                .await
                .unwrap();
            }
            conn.disconnect().await.unwrap();
            let build = started.elapsed();
            let started = Instant::now();
            db.seal_template(&tpl).await.unwrap();
            dbfork_meta::out!(
                "template: {TABLES} tables, {} rows, built in {build:.2?}, read (seal) in {:.2?}",
                TABLES * ROWS,
                started.elapsed()
            );
            let rounds: usize = std::env::var("DBFORK_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
            let mut scenarios: Vec<(CloneMethod, usize, usize, bool)> = Vec::new();
            for method in [CloneMethod::ShowCreate, CloneMethod::CreateLike] {
                for k in [1, 2, 3, 4] {
                    scenarios.push((method, k, 1, false));
                }
            }
            for k in [1, 2, 4] {
                scenarios.push((CloneMethod::ShowCreate, k, 4, true));
            }
            for k in [2, 4] {
                scenarios.push((CloneMethod::ShowCreate, k, 4, false));
            }
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); scenarios.len()];
            let mut drops = Vec::new();
            for _ in 0..rounds {
                for (i, (method, k, count, together)) in scenarios.iter().enumerate() {
                    db.set_clone_connections(*k);
                    let started = Instant::now();
                    if *together {
                        let made = join_all(clones[..*count].iter().map(|c| db.clone_database(&tpl, c, *method))).await;
                        made.into_iter().for_each(|r| r.unwrap());
                    } else {
                        for c in &clones[..*count] {
                            db.clone_database(&tpl, c, *method).await.unwrap();
                        }
                    }
                    times[i].push(started.elapsed());
                    for c in &clones[..*count] {
                        let started = Instant::now();
                        db.drop_database(c, Duration::from_secs(30)).await.unwrap();
                        drops.push(started.elapsed());
                    }
                }
            }
            let mut report = Vec::new();
            for (i, (method, k, count, together)) in scenarios.iter().enumerate() {
                let t = &mut times[i];
                t.sort();
                let how = match (count, together) {
                    (1, _) => "one clone".to_string(),
                    (n, true) => format!("{n} clones at once"),
                    (n, false) => format!("{n} clones one after another"),
                };
                report.push(format!(
                    "{method:?} K={k}, {how}: median {:.2?} (min {:.2?}, max {:.2?})",
                    t[t.len() / 2],
                    t[0],
                    t[t.len() - 1]
                ));
            }
            drops.sort();
            report.push(format!("drop of one clone: median {:.2?}, max {:.2?}", drops[drops.len() / 2], drops[drops.len() - 1]));
            // For scale: what dbfork replaces, `mysqldump | mysql`, when the clients are installed.
            let env: Vec<(String, String)> = db.client_env(&clones[0]);
            let dump = format!(
                "mysqldump --single-transaction --routines --triggers --events {tpl} | mysql {}",
                clones[0]
            );
            if std::process::Command::new("mysqldump").arg("--version").output().is_ok() {
                let mut dumped = Vec::new();
                for _ in 0..rounds.min(3) {
                    db.create_empty(&clones[0]).await.unwrap();
                    let started = Instant::now();
                    let status = std::process::Command::new("sh").arg("-c").arg(&dump).envs(env.clone()).status().unwrap();
                    dumped.push(started.elapsed());
                    assert!(status.success(), "{dump}");
                    db.drop_database(&clones[0], Duration::from_secs(30)).await.unwrap();
                }
                dumped.sort();
                report.push(format!("mysqldump | mysql, one clone: median {:.2?}", dumped[dumped.len() / 2]));
            }
            dbfork_meta::out!("\n{}", report.join("\n"));
        })
        .await;
    }
}

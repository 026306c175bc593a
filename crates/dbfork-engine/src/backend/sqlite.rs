//! SQLite: a "server" is a directory. Databases are `<dir>/<name>.sqlite3`,
//! the registry is `<dir>/.dbfork/registry.sqlite3`, and locks are `flock`s on
//! files under `<dir>/.dbfork/locks/`. A clone is a copy of the checkpointed
//! template file (a reflink where the filesystem has one), or a copy by the
//! online backup API.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rusqlite::Connection;

use super::{poll_until, Backend, CloneMethod, ConnectOptions, Lock};
use crate::error::{Error, Result};
use crate::registry::{
    self, ColumnType, Entry, Store, Value, COLUMNS, SCHEMA_VERSION, VERSION_KEY,
};
use crate::url::{DbUrl, Kind};

const NAME: &str = "SQLite";
/// The files SQLite may keep beside a database, and our partial copy.
const SIDE_FILES: [&str; 4] = ["-wal", "-shm", "-journal", ".part"];

pub struct Sqlite {
    url: DbUrl,
    dir: PathBuf,
    busy_timeout: Duration,
    /// The registry exists at the current schema (see [`registry::open`]).
    registry_ready: AtomicBool,
}

fn sq(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
    let context = context.into();
    move |e| Error::query(NAME, context, e)
}

impl Sqlite {
    pub async fn connect(url: &DbUrl, options: &ConnectOptions) -> Result<Sqlite> {
        let dir = url.sqlite_dir();
        let meta = dir.join(".dbfork");
        std::fs::create_dir_all(meta.join("locks")).map_err(|e| Error::Connect {
            url: url.to_string(),
            cause: format!("cannot create {}: {e}", meta.display()),
        })?;
        let dir = dir
            .canonicalize()
            .map_err(Error::io(format!("resolving {}", dir.display())))?;
        let sqlite = Sqlite {
            url: url.clone(),
            dir,
            busy_timeout: options.connect_timeout,
            registry_ready: AtomicBool::new(false),
        };
        // A registry of a newer dbfork is refused now; none yet is made at the first write.
        registry::open(&sqlite, false).await?;
        Ok(sqlite)
    }

    fn registry_path(&self) -> PathBuf {
        self.dir.join(".dbfork").join("registry.sqlite3")
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sqlite3"))
    }

    fn registry(&self) -> Result<Connection> {
        let path = self.registry_path();
        let conn = Connection::open(&path)
            .map_err(sq(format!("opening the registry {}", path.display())))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(sq("setting a busy timeout"))?;
        // WAL with NORMAL sync survives any crash of a process (what the registry
        // guards against) and costs one fsync per checkpoint instead of three per write.
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .and_then(|()| conn.execute_batch("PRAGMA synchronous = NORMAL"))
            .map_err(sq(format!("setting up the registry {}", path.display())))?;
        Ok(conn)
    }
}

fn spell(ty: ColumnType) -> String {
    match ty {
        ColumnType::Text(_) => "TEXT".to_string(),
        ColumnType::Int => "INTEGER".to_string(),
    }
}

impl Store for Sqlite {
    fn location(&self) -> String {
        self.registry_path().display().to_string()
    }

    fn ready(&self) -> &AtomicBool {
        &self.registry_ready
    }

    async fn version(&self) -> Result<Option<i64>> {
        if !self.registry_path().exists() {
            return Ok(None);
        }
        let conn = self.registry()?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('registry', 'registry_meta')")
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .map_err(sq("looking for the registry"))?;
        if !tables.iter().any(|t| t == "registry") {
            return Ok(None);
        }
        if !tables.iter().any(|t| t == "registry_meta") {
            return Ok(Some(1));
        }
        let value: Option<String> = conn
            .query_row(
                "SELECT value FROM registry_meta WHERE key = ?1",
                [VERSION_KEY],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(sq("reading the registry's version"))?;
        registry::parse_version(value, &self.location()).map(Some)
    }

    async fn migrate(&self, from: Option<i64>) -> Result<()> {
        let change: String = match from {
            None => format!(
                "CREATE TABLE IF NOT EXISTS registry ({});",
                registry::column_definitions(spell)
            ),
            Some(v) => registry::upgrade_clauses(v, spell)
                .iter()
                .map(|c| format!("ALTER TABLE registry {c};"))
                .collect(),
        };
        self.registry()?
            .execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 {change}
                 CREATE TABLE IF NOT EXISTS registry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT OR REPLACE INTO registry_meta VALUES ('{VERSION_KEY}', '{SCHEMA_VERSION}');
                 COMMIT;"
            ))
            .map_err(sq(format!(
                "creating or upgrading the registry {}",
                self.location()
            )))
    }
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Copies `src` to `dst`: a reflink (FICLONE) where the filesystem shares
/// blocks, else `std::fs::copy` (which uses `copy_file_range`).
fn copy_file(src: &Path, dst: &Path) -> std::io::Result<()> {
    let from = File::open(src)?;
    let to = crate::files::create_new_private(dst)?;
    if crate::sys::reflink(&from, &to) {
        return Ok(());
    }
    drop(to);
    std::fs::copy(src, dst).map(|_| ())
}

impl Backend for Sqlite {
    fn kind(&self) -> Kind {
        Kind::Sqlite
    }

    fn url(&self) -> &DbUrl {
        &self.url
    }

    async fn server_version(&self) -> Result<String> {
        Ok(format!("SQLite {}", rusqlite::version()))
    }

    async fn registry_list(&self) -> Result<Vec<Entry>> {
        if !registry::open(self, false).await? {
            return Ok(Vec::new());
        }
        let conn = self.registry()?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM registry ORDER BY created_at, name",
                registry::column_list()
            ))
            .map_err(sq("reading the registry"))?;
        let rows = stmt
            .query_map([], |r| {
                COLUMNS
                    .iter()
                    .enumerate()
                    .map(|(i, c)| match c.ty {
                        ColumnType::Text(_) => r.get(i).map(Value::Text),
                        ColumnType::Int => r.get(i).map(Value::Int),
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(sq("reading the registry"))?;
        registry::decode_rows(rows, &self.location())
    }

    async fn registry_drop_if_empty(&self) -> Result<bool> {
        if !registry::open(self, false).await? {
            return Ok(false);
        }
        let mut conn = self.registry()?;
        // IMMEDIATE: no writer between the count and the drop.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq("locking the registry"))?;
        let rows: i64 = tx
            .query_row("SELECT COUNT(*) FROM registry", [], |r| r.get(0))
            .map_err(sq("counting the registry's rows"))?;
        if rows > 0 {
            return Ok(false);
        }
        tx.execute_batch("DROP TABLE registry; DROP TABLE IF EXISTS registry_meta;")
            .map_err(sq("dropping the empty registry"))?;
        tx.commit().map_err(sq("dropping the empty registry"))?;
        self.registry_ready
            .store(false, std::sync::atomic::Ordering::SeqCst);
        Ok(true)
    }

    async fn registry_put(&self, entries: &[Entry]) -> Result<()> {
        registry::open(self, true).await?;
        let mut conn = self.registry()?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sq("writing to the registry"))?;
        let placeholders: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("?{i}")).collect();
        let statement = format!(
            "INSERT OR REPLACE INTO registry ({}) VALUES ({})",
            registry::column_list(),
            placeholders.join(",")
        );
        for e in entries {
            let row: Vec<rusqlite::types::Value> = e
                .to_row()
                .into_iter()
                .map(|v| match v {
                    Value::Text(s) => rusqlite::types::Value::Text(s),
                    Value::Int(i) => rusqlite::types::Value::Integer(i),
                })
                .collect();
            tx.execute(&statement, rusqlite::params_from_iter(row))
                .map_err(sq("writing to the registry"))?;
        }
        tx.commit().map_err(sq("writing to the registry"))
    }

    async fn registry_remove(&self, name: &str) -> Result<()> {
        if !registry::open(self, false).await? {
            return Ok(());
        }
        self.registry()?
            .execute("DELETE FROM registry WHERE name = ?1", [name])
            .map_err(sq("removing a registry row"))?;
        Ok(())
    }

    async fn lock(&self, key: &str, wait: Duration) -> Result<Lock> {
        let hash = blake3::hash(key.as_bytes()).to_hex();
        let path = self
            .dir
            .join(".dbfork")
            .join("locks")
            .join(format!("{}.lock", &hash[..16]));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(&path)
            .map_err(Error::io(format!(
                "opening the lock file {}",
                path.display()
            )))?;
        let got = poll_until(wait, || async {
            Ok(crate::sys::try_lock_exclusive(&file).then_some(()))
        })
        .await?;
        match got {
            Some(()) => Ok(Lock::new(file)),
            None => Err(Error::LockTimeout {
                key: key.to_string(),
                waited: wait,
            }),
        }
    }

    async fn unlock(&self, lock: Lock) -> Result<()> {
        drop(lock.into_inner::<File>());
        Ok(())
    }

    async fn databases(&self, prefix: &str) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(Error::io(format!("listing {}", self.dir.display())))?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".sqlite3"))
                    .map(str::to_string)
            })
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn create_empty(&self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(&format!(
                    "PRAGMA user_version = 0; PRAGMA application_id = {};",
                    crate::names::SQLITE_APPLICATION_ID
                ))
            })
            .map_err(sq(format!("creating {}", path.display())))
    }

    async fn seal_template(&self, name: &str) -> Result<()> {
        let path = self.path_of(name);
        let conn = Connection::open(&path).map_err(sq(format!("opening {}", path.display())))?;
        conn.busy_timeout(self.busy_timeout)
            .map_err(sq("setting a busy timeout"))?;
        // dbfork's mark again: a setup (or Django) may have replaced the file.
        conn.execute_batch(&format!(
            "PRAGMA application_id = {}",
            crate::names::SQLITE_APPLICATION_ID
        ))
        .map_err(sq(format!("marking {} as dbfork's", path.display())))?;
        // Everything in the main file, so that a plain file copy is a whole database.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(sq(format!("checkpointing {}", path.display())))?;
        conn.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .map_err(sq(format!("leaving WAL mode on {}", path.display())))?;
        Ok(())
    }

    async fn clone_database(&self, template: &str, name: &str, method: CloneMethod) -> Result<()> {
        let src = self.path_of(template);
        let dst = self.path_of(name);
        let part = side_file(&dst, ".part");
        let result = tokio::task::spawn_blocking(move || -> Result<()> {
            match method {
                CloneMethod::Copy => copy_file(&src, &part).map_err(Error::io(format!(
                    "copying {} to {}",
                    src.display(),
                    part.display()
                )))?,
                CloneMethod::Backup => {
                    let from =
                        Connection::open(&src).map_err(sq(format!("opening {}", src.display())))?;
                    from.backup(rusqlite::MAIN_DB, &part, None)
                        .map_err(sq(format!(
                            "backing up {} to {}",
                            src.display(),
                            part.display()
                        )))?;
                }
                other => {
                    return Err(Error::BadMethod {
                        method: format!("{other:?}"),
                        backend: NAME,
                        choices: CloneMethod::choices(Kind::Sqlite),
                    })
                }
            }
            // Whole or not at all: a crash mid-copy leaves only the `.part` file.
            std::fs::rename(&part, &dst).map_err(Error::io(format!(
                "renaming {} to {}",
                part.display(),
                dst.display()
            )))
        })
        .await;
        result.map_err(|e| Error::query(NAME, "copying a template", e))?
    }

    async fn drop_database(&self, name: &str, _deadline: Duration) -> Result<()> {
        // Open handles do not stop an unlink on Unix; the space is freed when they close.
        let path = self.path_of(name);
        let mut files = vec![path.clone()];
        files.extend(SIDE_FILES.iter().map(|s| side_file(&path, s)));
        for file in files {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", file.display()))(e)),
            }
        }
        Ok(())
    }

    async fn export_database(&self, name: &str, out: &Path) -> Result<()> {
        // The online backup API: a consistent copy even if someone has it open.
        let (src, out) = (self.path_of(name), out.to_path_buf());
        tokio::task::spawn_blocking(move || {
            Connection::open(&src)
                .and_then(|from| from.backup(rusqlite::MAIN_DB, &out, None))
                .map_err(sq(format!("exporting {}", src.display())))
        })
        .await
        .map_err(|e| Error::query(NAME, "exporting a template", e))?
    }

    async fn connection_room(&self) -> Result<Option<super::Room>> {
        Ok(None)
    }

    async fn marked(&self, name: &str) -> Result<Option<bool>> {
        use std::io::Read;
        let path = self.path_of(name);
        let mut header = Vec::with_capacity(100);
        match File::open(&path) {
            Ok(file) => file
                .take(100)
                .read_to_end(&mut header)
                .map_err(Error::io(format!("reading {}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        // An empty file (a create interrupted before its first page) holds nothing.
        if header.is_empty() {
            return Ok(Some(true));
        }
        let id = header
            .get(68..72)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        Ok(Some(id == Some(crate::names::SQLITE_APPLICATION_ID)))
    }

    fn mark_place(&self) -> &'static str {
        "SQLite: the file's application id"
    }

    async fn table_count(&self, name: &str) -> Result<u64> {
        let path = self.path_of(name);
        tokio::task::spawn_blocking(move || {
            let ctx = format!("counting the tables of {}", path.display());
            let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(sq(&ctx))?;
            conn.query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(sq(&ctx))
        })
        .await
        .map_err(|e| Error::query(NAME, "counting tables", e))?
    }

    async fn database_size(&self, name: &str) -> Result<u64> {
        let path = self.path_of(name);
        let size = |path: &std::path::Path| std::fs::symlink_metadata(path).map(|m| m.len());
        let mut bytes = size(&path)
            .map_err(|e| Error::query(NAME, format!("measuring {}", path.display()), e))?;
        for side in ["-wal", "-journal"] {
            let mut file = path.clone().into_os_string();
            file.push(side);
            bytes += size(std::path::Path::new(&file)).unwrap_or(0);
        }
        Ok(bytes)
    }

    async fn describe(&self, name: &str) -> Result<Vec<String>> {
        let path = self.path_of(name);
        tokio::task::spawn_blocking(move || {
            let ctx = format!("describing {}", path.display());
            let conn = Connection::open(&path).map_err(sq(&ctx))?;
            let mut lines = Vec::new();
            let mut tables = Vec::new();
            let mut stmt = conn
                .prepare("SELECT type, name, COALESCE(sql, '') FROM sqlite_master")
                .map_err(sq(&ctx))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sq(&ctx))?;
            for row in rows {
                let (kind, object, sql) = row.map_err(sq(&ctx))?;
                if kind == "table" {
                    tables.push(object.clone());
                }
                lines.push(format!("{kind} {object}: {sql}"));
            }
            for table in tables {
                let count: i64 = conn
                    .query_row(
                        &format!("SELECT COUNT(*) FROM \"{}\"", table.replace('"', "\"\"")),
                        [],
                        |r| r.get(0),
                    )
                    .map_err(sq(&ctx))?;
                lines.push(format!("rows {table} {count}"));
            }
            lines.sort();
            Ok(lines)
        })
        .await
        .map_err(|e| Error::query(NAME, "describing a database", e))?
    }

    async fn import_database(&self, name: &str, dump: &Path) -> Result<()> {
        let dst = self.path_of(name);
        let part = side_file(&dst, ".part");
        copy_file(dump, &part)
            .and_then(|()| std::fs::rename(&part, &dst))
            .map_err(Error::io(format!(
                "restoring {} from {}",
                dst.display(),
                dump.display()
            )))
    }

    fn client_env(&self, name: &str) -> Vec<(String, String)> {
        vec![(
            dbfork_protocol::env::SQLITE_PATH.to_string(),
            self.path_of(name).display().to_string(),
        )]
    }
}

//! The registry: one row per database dbfork created, kept in the server
//! itself (PostgreSQL: `dbfork.registry` in the maintenance database; MySQL:
//! `dbfork_registry` in the maintenance database; SQLite: a registry file
//! beside the databases). A row is written *before* its database is created
//! and removed only after it is dropped, so a crash at any point leaves a row
//! that garbage collection can follow. Nothing without a row is ever dropped.
//!
//! Every backend stores the same columns ([`COLUMNS`]) through one codec
//! ([`Entry::to_row`], [`Entry::from_row`]), and a version row beside the
//! table ([`SCHEMA_VERSION`]). Reading is strict: a row with an unknown kind or
//! state, or a registry of a newer schema, is an error naming the registry,
//! never guessed at (a guess of `clone` or `building` is what gc collects).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::process::{self, Liveness, Owner};

/// The registry's schema version, kept in its version row. 1: the first
/// twelve columns (no version row); 2: `machine` (the owner's boot and PID
/// namespace).
pub const SCHEMA_VERSION: i64 = 2;

/// The key of the version row in the registry's metadata table.
pub const VERSION_KEY: &str = "schema_version";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Template,
    Clone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being made: the database may be missing or half-built.
    Building,
    /// Complete and usable.
    Ready,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Template => "template",
            EntryKind::Clone => "clone",
        }
    }
    pub fn parse(s: &str) -> Option<EntryKind> {
        match s {
            "template" => Some(EntryKind::Template),
            "clone" => Some(EntryKind::Clone),
            _ => None,
        }
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Building => "building",
            State::Ready => "ready",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "building" => Some(State::Building),
            "ready" => Some(State::Ready),
            _ => None,
        }
    }
}

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Text of at most this many characters (MySQL needs a width for keys).
    Text(u16),
    /// A 64-bit integer.
    Int,
}

/// One column of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    /// The schema version that added it (later ones have a default, so an
    /// older dbfork's insert still works).
    pub since: i64,
}

const fn column(name: &'static str, ty: ColumnType, since: i64) -> Column {
    Column { name, ty, since }
}

/// The columns of the registry, in the order of [`Entry::to_row`]; `name` is the key.
pub const COLUMNS: [Column; 13] = [
    column("name", ColumnType::Text(64), 1),
    column("kind", ColumnType::Text(16), 1),
    column("state", ColumnType::Text(16), 1),
    column("fingerprint", ColumnType::Text(128), 1),
    column("setup_key", ColumnType::Text(128), 1),
    column("run_id", ColumnType::Text(64), 1),
    column("owner_pid", ColumnType::Int, 1),
    column("owner_start", ColumnType::Int, 1),
    column("host", ColumnType::Text(255), 1),
    column("created_at", ColumnType::Int, 1),
    column("heartbeat_at", ColumnType::Int, 1),
    column("last_used_at", ColumnType::Int, 1),
    column("machine", ColumnType::Text(128), 2),
];

/// `name, kind, ...`: the column list of every statement.
pub fn column_list() -> String {
    COLUMNS.map(|c| c.name).join(", ")
}

/// The column definitions of `CREATE TABLE`, given the backend's spelling of
/// each type; `name` is the primary key, columns of later versions default.
pub fn column_definitions(spell: impl Fn(ColumnType) -> String) -> String {
    COLUMNS
        .iter()
        .map(|c| {
            let mut definition = format!("{} {} NOT NULL", c.name, spell(c.ty));
            if c.name == "name" {
                definition.push_str(" PRIMARY KEY");
            } else if c.since > 1 {
                definition.push_str(&default_clause(c.ty));
            }
            definition
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn default_clause(ty: ColumnType) -> String {
    match ty {
        ColumnType::Text(_) => " DEFAULT ''".to_string(),
        ColumnType::Int => " DEFAULT 0".to_string(),
    }
}

/// The `ALTER TABLE ... ADD COLUMN` clauses that bring a registry of version
/// `from` to [`SCHEMA_VERSION`].
pub fn upgrade_clauses(from: i64, spell: impl Fn(ColumnType) -> String) -> Vec<String> {
    COLUMNS
        .iter()
        .filter(|c| c.since > from)
        .map(|c| {
            format!(
                "ADD COLUMN {} {} NOT NULL{}",
                c.name,
                spell(c.ty),
                default_clause(c.ty)
            )
        })
        .collect()
}

/// The version a version row holds (`None`: a metadata table without it).
pub fn parse_version(value: Option<String>, registry: &str) -> Result<i64> {
    let value = value.ok_or_else(|| Error::Registry {
        registry: registry.to_string(),
        problem: format!("its metadata has no {VERSION_KEY} row, so dbfork cannot tell how to read it; it was changed by hand or by another program. Restore the row (version {SCHEMA_VERSION} for this dbfork)"),
    })?;
    value.trim().parse().map_err(|_| Error::Registry {
        registry: registry.to_string(),
        problem: format!("its {VERSION_KEY} row says {value:?}, not a number; it was changed by hand or by another program. Restore the row (version {SCHEMA_VERSION} for this dbfork)"),
    })
}

/// What to do with the registry a backend found, by its version row: `None`
/// for no registry yet (made at the first write). A newer schema than this
/// dbfork knows is an error: it could misread what the rows say.
pub fn check_version(found: Option<i64>, registry: &str) -> Result<Option<i64>> {
    match found {
        Some(v) if v > SCHEMA_VERSION => Err(Error::Registry {
            registry: registry.to_string(),
            problem: format!(
                "its schema is version {v}, written by a newer dbfork; this dbfork knows up to version {SCHEMA_VERSION} and would misread it. Use the newer dbfork (or upgrade this one)"
            ),
        }),
        Some(v) if v < 1 => Err(Error::Registry {
            registry: registry.to_string(),
            problem: format!("its version row says {v}, which no dbfork writes; it was changed by hand or by another program. Fix or remove the version row"),
        }),
        other => Ok(other),
    }
}

/// What a backend provides for its registry's schema; [`open`] does the rest,
/// the same for every backend.
pub(crate) trait Store: Backend {
    /// Where the registry is, for messages.
    fn location(&self) -> String;
    /// Set once the registry is known to exist at [`SCHEMA_VERSION`].
    fn ready(&self) -> &AtomicBool;
    /// The version of the registry on the server: `None` when there is none
    /// (a registry without a version row is version 1).
    async fn version(&self) -> Result<Option<i64>>;
    /// Creates the registry (`from` is `None`) or upgrades it from version
    /// `from`, and writes the version row.
    async fn migrate(&self, from: Option<i64>) -> Result<()>;
}

/// Makes sure the registry can be used: `Ok(false)` when there is none and
/// `create` is false (nothing to read: reading never creates it). An older
/// schema is upgraded (columns added, nothing removed), a newer one is an
/// error. Creating and upgrading happen under a server lock, so two first
/// commands do not race.
pub(crate) async fn open(store: &impl Store, create: bool) -> Result<bool> {
    if store.ready().load(Ordering::Acquire) {
        return Ok(true);
    }
    let registry = store.location();
    match check_version(store.version().await?, &registry)? {
        Some(SCHEMA_VERSION) => {}
        None if !create => return Ok(false),
        _ => {
            let lock = store
                .lock("dbfork-registry-schema", Duration::from_secs(60))
                .await?;
            let migrated = async {
                let found = check_version(store.version().await?, &registry)?;
                if found != Some(SCHEMA_VERSION) {
                    store.migrate(found).await?;
                }
                Ok::<_, Error>(())
            }
            .await;
            store.unlock(lock).await?;
            migrated?;
        }
    }
    store.ready().store(true, Ordering::Release);
    Ok(true)
}

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
    pub state: State,
    /// The template's fingerprint (a clone carries its template's).
    pub fingerprint: String,
    /// A hash of the setup command alone: templates of one setup are versions of each other.
    pub setup_key: String,
    pub run_id: String,
    pub owner_pid: u32,
    pub owner_start: u64,
    pub host: String,
    /// The owner's boot and PID namespace ([`process::machine_id`]).
    pub machine: String,
    /// Seconds since the Unix epoch.
    pub created_at: i64,
    pub heartbeat_at: i64,
    pub last_used_at: i64,
}

impl Entry {
    pub fn new(
        name: String,
        kind: EntryKind,
        fingerprint: &str,
        setup_key: &str,
        run_id: &str,
        owner: &Owner,
    ) -> Entry {
        let now = process::now();
        Entry {
            name,
            kind,
            state: State::Building,
            fingerprint: fingerprint.to_string(),
            setup_key: setup_key.to_string(),
            run_id: run_id.to_string(),
            owner_pid: owner.pid,
            owner_start: owner.start,
            host: owner.host.clone(),
            machine: owner.machine.clone(),
            created_at: now,
            heartbeat_at: now,
            last_used_at: now,
        }
    }

    pub fn set_owner(&mut self, owner: &Owner) {
        self.owner_pid = owner.pid;
        self.owner_start = owner.start;
        self.host = owner.host.clone();
        self.machine = owner.machine.clone();
        self.heartbeat_at = process::now();
    }

    pub fn owner(&self) -> Owner {
        Owner {
            pid: self.owner_pid,
            start: self.owner_start,
            host: self.host.clone(),
            machine: self.machine.clone(),
        }
    }

    /// Whether the entry's owner is gone: its process is known dead, or (where
    /// dbfork cannot see it: another host, container or boot, or no owner
    /// process) its heartbeat is older than `ttl_secs`.
    pub fn owner_gone(&self, now: i64, ttl_secs: i64) -> bool {
        match self.owner().liveness() {
            Liveness::Dead => true,
            Liveness::Alive => false,
            Liveness::Unknown => now - self.heartbeat_at > ttl_secs,
        }
    }

    pub fn owned_by(&self, owner: &Owner) -> bool {
        self.owner() == *owner
    }

    /// The row, in the order of [`COLUMNS`].
    pub fn to_row(&self) -> Vec<Value> {
        let text = |s: &str| Value::Text(s.to_string());
        vec![
            text(&self.name),
            text(self.kind.as_str()),
            text(self.state.as_str()),
            text(&self.fingerprint),
            text(&self.setup_key),
            text(&self.run_id),
            Value::Int(i64::from(self.owner_pid)),
            Value::Int(self.owner_start as i64),
            text(&self.host),
            Value::Int(self.created_at),
            Value::Int(self.heartbeat_at),
            Value::Int(self.last_used_at),
            text(&self.machine),
        ]
    }

    /// Reads a row in the order of [`COLUMNS`]; `Err` says what is wrong with
    /// it (the caller names the registry).
    pub fn from_row(row: Vec<Value>) -> std::result::Result<Entry, RowError> {
        let name = match row.first() {
            Some(Value::Text(name)) => Some(name.clone()),
            _ => None,
        };
        Entry::decode(row).map_err(|problem| RowError { name, problem })
    }

    fn decode(row: Vec<Value>) -> std::result::Result<Entry, String> {
        if row.len() != COLUMNS.len() {
            return Err(format!(
                "it has {} columns, not {}",
                row.len(),
                COLUMNS.len()
            ));
        }
        let mut cells = Cells(row.into_iter().zip(COLUMNS.iter()));
        let name = cells.text()?;
        let kind = cells.text()?;
        let kind = EntryKind::parse(&kind)
            .ok_or_else(|| format!("its kind is {kind:?}, not template or clone"))?;
        let state = cells.text()?;
        let state = State::parse(&state)
            .ok_or_else(|| format!("its state is {state:?}, not building or ready"))?;
        let fingerprint = cells.text()?;
        let setup_key = cells.text()?;
        let run_id = cells.text()?;
        let pid = cells.int()?;
        let owner_pid =
            u32::try_from(pid).map_err(|_| format!("its owner_pid {pid} is no process id"))?;
        let start = cells.int()?;
        let owner_start =
            u64::try_from(start).map_err(|_| format!("its owner_start {start} is negative"))?;
        Ok(Entry {
            name,
            kind,
            state,
            fingerprint,
            setup_key,
            run_id,
            owner_pid,
            owner_start,
            host: cells.text()?,
            created_at: cells.int()?,
            heartbeat_at: cells.int()?,
            last_used_at: cells.int()?,
            machine: cells.text()?,
        })
    }
}

/// The cells of a row, read in column order.
struct Cells<I>(I);

impl<'a, I: Iterator<Item = (Value, &'a Column)>> Cells<I> {
    fn text(&mut self) -> std::result::Result<String, String> {
        match self.0.next() {
            Some((Value::Text(s), _)) => Ok(s),
            Some((other, c)) => Err(format!("column {} holds {other:?}, not text", c.name)),
            None => Err("a column is missing".to_string()),
        }
    }

    fn int(&mut self) -> std::result::Result<i64, String> {
        match self.0.next() {
            Some((Value::Int(i), _)) => Ok(i),
            Some((other, c)) => Err(format!("column {} holds {other:?}, not a number", c.name)),
            None => Err("a column is missing".to_string()),
        }
    }
}

/// The entries of rows read in the order of [`COLUMNS`]; the first row that
/// cannot be read is an error naming `registry`.
pub fn decode_rows(rows: Vec<Vec<Value>>, registry: &str) -> Result<Vec<Entry>> {
    rows.into_iter()
        .map(|row| Entry::from_row(row).map_err(|e| e.into_error(registry)))
        .collect()
}

/// A registry row dbfork cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// The row's name, when that much could be read.
    pub name: Option<String>,
    pub problem: String,
}

impl RowError {
    /// The error for the user, naming the registry the row is in.
    pub fn into_error(self, registry: &str) -> Error {
        let row = match &self.name {
            Some(name) => format!("the row for {name:?}"),
            None => "a row".to_string(),
        };
        Error::Registry {
            registry: registry.to_string(),
            problem: format!(
                "{row} cannot be read: {}. It was written by another program, by hand or by a newer dbfork; dbfork acts on no row of this registry until the row is fixed or removed (check by hand what it names first)",
                self.problem
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry::new(
            "dbfork_tpl_abc".into(),
            EntryKind::Template,
            "fp",
            "setup",
            "run",
            &Owner::this_process(),
        )
    }

    #[test]
    fn rows_round_trip() {
        let e = sample();
        assert_eq!(Entry::from_row(e.to_row()).unwrap(), e);
        assert_eq!(e.to_row().len(), COLUMNS.len());
    }

    #[test]
    fn unknown_kinds_states_and_values_are_errors() {
        let set = |i: usize, v: Value| {
            let mut row = sample().to_row();
            row[i] = v;
            Entry::from_row(row).unwrap_err()
        };
        let err = set(1, Value::Text("snapshot".into()));
        assert_eq!(err.name.as_deref(), Some("dbfork_tpl_abc"));
        assert!(err.problem.contains("\"snapshot\""), "{err:?}");
        assert!(set(2, Value::Text("Ready".into()))
            .problem
            .contains("state"));
        assert!(set(6, Value::Int(-1)).problem.contains("owner_pid"));
        assert!(set(7, Value::Int(-5)).problem.contains("owner_start"));
        assert!(set(3, Value::Int(1)).problem.contains("fingerprint"));
        let short = Entry::from_row(vec![Value::Text("x".into())]).unwrap_err();
        assert!(short.problem.contains("columns"));
        let message = set(1, Value::Text("x".into()))
            .into_error("dbfork.registry on db:5432")
            .to_string();
        assert!(message.contains("dbfork.registry on db:5432"), "{message}");
    }

    #[test]
    fn versions() {
        assert_eq!(check_version(None, "r").unwrap(), None);
        assert_eq!(check_version(Some(1), "r").unwrap(), Some(1));
        assert_eq!(check_version(Some(SCHEMA_VERSION), "r").unwrap(), Some(2));
        let newer = check_version(Some(SCHEMA_VERSION + 1), "the registry")
            .unwrap_err()
            .to_string();
        assert!(newer.contains("newer dbfork"), "{newer}");
        assert!(check_version(Some(0), "r").is_err());
        assert_eq!(
            upgrade_clauses(1, |_| "T".into()),
            vec!["ADD COLUMN machine T NOT NULL DEFAULT ''"]
        );
        assert!(upgrade_clauses(SCHEMA_VERSION, |_| "T".into()).is_empty());
        let ddl = column_definitions(|_| "T".into());
        assert!(ddl.starts_with("name T NOT NULL PRIMARY KEY, kind T NOT NULL"));
        assert!(ddl.ends_with("machine T NOT NULL DEFAULT ''"));
    }
}

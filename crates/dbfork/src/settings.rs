//! The settings of every verb, resolved into one [`Settings`] (and for
//! `dbfork run`, one [`RunConfig`]). Each setting comes from the first of:
//! its flag or `DBFORK_*` variable (clap has already chosen between those),
//! the configuration file, the default of the table
//! (`dbfork_meta::settings`). A value is parsed by its kind, in one place
//! ([`parse`]).
//!
//! The configuration file is `--config FILE`, or else the first `dbfork.toml`
//! (the whole file) or `pyproject.toml` with a `[tool.dbfork]` table found in
//! the working directory or one of its parents. Its directory is the project
//! root: relative paths in the file, and the default SQLite database and
//! state directory, are taken from there, so every command means the same
//! from any subdirectory. Relative paths given by flags or variables are
//! taken from the working directory, as a shell user expects. The file is
//! one for every verb: each takes the keys of its settings and passes over
//! the others' (an unknown key is an error everywhere).
//!
//! Every value is checked here, before anything starts, and a mistake names
//! where it came from (`--dist / DBFORK_DIST`, or the key and the file).

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfork_runner::shard::Shard;
use dbfork_runner::{Adapter, Dist, Order, RunConfig};

use dbfork_meta::settings::{Kind, Setting, Span, Verb, SERVE_TABLE, SETTINGS};

use crate::cli::{parse_duration, Given, RunArgs, VerbOf};
use crate::errors::UsageError;

const CONFIG_FILE: &str = "dbfork.toml";
const PYPROJECT: &str = "pyproject.toml";
const DEFAULT_DB: &str = "sqlite://.dbfork/sqlite/main.sqlite3";
const STATE_DIR: &str = ".dbfork";
const DURATION_EXAMPLES: &str = "a number of seconds or a duration such as 90s, 250ms or 10m";

/// One checked value, of its setting's kind.
#[derive(Debug, Clone)]
enum Value {
    /// Url, Command, Method, Template, Owner (empty: none).
    Text(String),
    /// Globs, Aliases.
    List(Vec<String>),
    Switch(bool),
    /// `None`: `auto`.
    Jobs(Option<usize>),
    Dist(Dist),
    Order(Order),
    Shard(Shard),
    Adapter(Adapter),
    /// `None`: turned off.
    Duration(Option<Duration>),
    Count(usize),
    /// `None`: turned off.
    Path(Option<PathBuf>),
    Size(u64),
    Secret(Secret),
}

/// A secret's text: never in a Debug.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The settings of one verb: every one it takes that a flag, a variable,
/// the file or the table's default gives.
#[derive(Debug)]
pub struct Settings {
    verb: Verb,
    values: BTreeMap<&'static str, Value>,
    /// The keys a flag or variable gave.
    flagged: Vec<&'static str>,
    /// The keys the configuration file gave (and no flag or variable).
    filed: Vec<&'static str>,
    /// The project root: the configuration file's directory, else the
    /// nearest directory with a project's marks.
    root: PathBuf,
    config_file: Option<PathBuf>,
}

macro_rules! getters {
    ($($(#[$doc:meta])* $name:ident: $variant:ident($value:ident) -> $ty:ty = $out:expr;)*) => {$(
        $(#[$doc])*
        pub fn $name(&self, key: &str) -> anyhow::Result<Option<$ty>> {
            match self.get(key)? {
                None => Ok(None),
                Some(Value::$variant($value)) => Ok($out),
                Some(other) => Err(internal(format!("the setting `{key}` is {other:?}, read as {}", stringify!($variant)))),
            }
        }
    )*};
}

impl Settings {
    /// Resolves the settings of `given`'s verb. `cwd` is the (absolute)
    /// directory dbfork was started in.
    pub fn of<V: VerbOf>(given: &Given<V>, cwd: &Path) -> anyhow::Result<Settings> {
        Settings::load(given.verb(), &given.given, given.config.as_deref(), cwd)
    }

    fn load(
        verb: Verb,
        given: &[(&'static Setting, Vec<String>)],
        config: Option<&Path>,
        cwd: &Path,
    ) -> anyhow::Result<Settings> {
        let file = find_config(config, cwd)?;
        let root = file
            .as_ref()
            .map_or_else(|| project_root(cwd), |f| f.dir.clone());
        let mut values = BTreeMap::new();
        for setting in SETTINGS.iter().filter(|s| s.of(verb)) {
            if let Some(default) = setting.value {
                let value = parse(setting, Raw::Text(default), &Origin::Default(setting), cwd)?;
                values.insert(setting.key, value);
            }
        }
        let mut filed = Vec::new();
        if let Some(file) = &file {
            for (key, value) in file_values(file, verb)? {
                filed.push(key);
                values.insert(key, value);
            }
        }
        // clap has split lists already; `parse` splits text at commas again.
        for (setting, texts) in given {
            let text = texts.join(",");
            let value = parse(setting, Raw::Text(&text), &Origin::Flag(setting), cwd)?;
            values.insert(setting.key, value);
        }
        Ok(Settings {
            verb,
            values,
            flagged: given.iter().map(|(s, _)| s.key).collect(),
            filed: filed
                .into_iter()
                .filter(|key| !given.iter().any(|(s, _)| s.key == *key))
                .collect(),
            root,
            config_file: file.map(|f| f.path),
        })
    }

    fn get(&self, key: &str) -> anyhow::Result<Option<&Value>> {
        match dbfork_meta::settings::by_key(key) {
            Some(setting) if setting.of(self.verb) => Ok(self.values.get(key)),
            _ => Err(internal(format!(
                "the verb {:?} reads the setting `{key}`, which is not one of its",
                self.verb
            ))),
        }
    }

    getters! {
        /// A text; an empty one is none.
        text: Text(text) -> String = Some(text.clone()).filter(|t| !t.is_empty());
        list: List(items) -> Vec<String> = Some(items.clone());
        switch: Switch(on) -> bool = Some(*on);
        /// `Some(None)`: `auto`.
        jobs: Jobs(jobs) -> Option<usize> = Some(*jobs);
        dist: Dist(dist) -> Dist = Some(*dist);
        order: Order(order) -> Order = Some(*order);
        shard: Shard(shard) -> Shard = Some(*shard);
        adapter: Adapter(adapter) -> Adapter = Some(*adapter);
        duration: Duration(duration) -> Duration = *duration;
        count: Count(n) -> usize = Some(*n);
        path: Path(path) -> PathBuf = path.clone();
        size: Size(bytes) -> u64 = Some(*bytes);
        /// A secret; an empty one is none.
        secret: Secret(secret) -> String = Some(secret.0.clone()).filter(|t| !t.is_empty());
    }

    /// A setting the table gives a default for: its value.
    fn required<T>(&self, key: &str, value: anyhow::Result<Option<T>>) -> anyhow::Result<T> {
        value?.ok_or_else(|| internal(format!("the setting `{key}` has no default")))
    }

    pub fn duration_or_default(&self, key: &str) -> anyhow::Result<Duration> {
        self.required(key, self.duration(key))
    }

    pub fn count_or_default(&self, key: &str) -> anyhow::Result<usize> {
        self.required(key, self.count(key))
    }

    /// The directory of the project's state (`.dbfork/`).
    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    /// The database `db` names, else the embedded SQLite default in the
    /// project's state directory.
    pub fn database(&self) -> anyhow::Result<String> {
        Ok(self
            .text("db")?
            .unwrap_or_else(|| absolute_sqlite(DEFAULT_DB, &self.root)))
    }

    /// Whether a flag or variable gave the setting `key`.
    pub fn flagged(&self, key: &str) -> bool {
        self.flagged.contains(&key)
    }

    /// The input patterns and the directory they are relative to, which
    /// the setup command runs in: the project root when the configuration
    /// file gives `setup` or `inputs` (they mean the same from any
    /// subdirectory), with patterns given by a flag made absolute from the
    /// working directory; else `None`, the working directory.
    pub fn recipe_inputs(&self, cwd: &Path) -> anyhow::Result<(Option<PathBuf>, Vec<String>)> {
        let inputs = self.list("inputs")?.unwrap_or_default();
        if !(self.filed.contains(&"setup") || self.filed.contains(&"inputs")) {
            return Ok((None, inputs));
        }
        let inputs = if self.flagged("inputs") && cwd != self.root {
            inputs
                .into_iter()
                .map(|p| cwd.join(p).to_string_lossy().into_owned())
                .collect()
        } else {
            inputs
        };
        Ok((Some(self.root.clone()), inputs))
    }

    /// The connection settings every verb has.
    pub fn connection(&self) -> anyhow::Result<crate::target::Connection> {
        Ok(crate::target::Connection {
            connect_timeout: self.duration_or_default("connect_timeout")?,
            drop_timeout: self.duration_or_default("drop_timeout")?,
            heartbeat_ttl: self.duration_or_default("heartbeat_ttl")?,
        })
    }
}

/// Resolves `dbfork run`'s settings into its configuration. `cwd` is the
/// (absolute) directory dbfork was started in.
pub fn resolve(args: &RunArgs, verbose: u8, cwd: &Path) -> anyhow::Result<RunConfig> {
    let s = Settings::of(&args.settings, cwd)?;
    let (jobs, jobs_auto) = match s.jobs("jobs")?.flatten() {
        Some(jobs) => (jobs, false),
        None => (auto_jobs(), true),
    };
    let adapter = s.adapter("adapter")?.unwrap_or_default();
    let (recipe_dir, inputs) = s.recipe_inputs(cwd)?;
    let dist = match s.dist("dist")? {
        Some(dist) => dist,
        None => adapter.resolve(&args.command).default_dist(),
    };
    Ok(RunConfig {
        command: args.command.clone(),
        db: s.text("db")?,
        setup: s.text("setup")?,
        inputs,
        recipe_dir,
        aliases: s.list("aliases")?.unwrap_or_default(),
        fresh_transactional: s.required("fresh_transactional", s.switch("fresh_transactional"))?,
        serve_url: s.text("serve_url")?,
        keep_ready: s.count("keep_ready")?,
        fork: s.required("fork", s.switch("fork"))?,
        jobs,
        jobs_auto,
        dist,
        order: s.required("order", s.order("order"))?,
        only: args.only.clone(),
        shard: s.shard("shard")?,
        retries: s.count_or_default("retries")?,
        classify: s.count_or_default("classify")?,
        flaky_fails: s.required("flaky_result", s.text("flaky_result"))? == "fail",
        bisect: args.bisect.clone(),
        trace: s.path("trace")?,
        cov: s.required("cov", s.switch("cov"))?,
        pinned: None,
        bisect_failures: s.required("bisect", s.switch("bisect"))?,
        adapter,
        timeout: s.duration("timeout")?,
        // Enough for every slot to lose a few workers to crashes or timeouts,
        // not so many that a suite that kills every worker loops for long.
        max_worker_restarts: s.count("max_worker_restarts")?.unwrap_or(4 * jobs),
        grace: s.duration_or_default("grace")?,
        junit: s.path("junit")?,
        json: s.path("json")?,
        state_dir: s.state_dir(),
        clone_method: s.required("clone_method", s.text("clone_method"))?,
        connect_timeout: s.duration_or_default("connect_timeout")?,
        drop_timeout: s.duration_or_default("drop_timeout")?,
        build_timeout: s.duration_or_default("build_timeout")?,
        start_timeout: s.duration("start_timeout")?,
        heartbeat_ttl: s.duration_or_default("heartbeat_ttl")?,
        template_cache: s.path("template_cache")?,
        template_cache_size: s.required("template_cache_size", s.size("template_cache_size"))?,
        incremental: s.switch("incremental")?,
        keep_runs: s.count_or_default("keep_runs")?,
        keep_templates: s.count_or_default("keep_templates")?,
        lock_timeout: s.duration_or_default("lock_timeout")?,
        verbose,
        // CI logs are not terminals, but some CI systems fake one; CI=... is
        // the common signal that nobody watches a live display.
        live: std::io::stderr().is_terminal()
            && !matches!(std::env::var_os(dbfork_meta::env::CI), Some(ci) if !ci.is_empty()),
        config_file: s.config_file,
    })
}

/// The files that mark a project's root, as pytest finds its rootdir (its
/// configuration files) and Django's `manage.py`.
const ROOT_MARKERS: &[&str] = &[
    "pytest.ini",
    ".pytest.ini",
    "pyproject.toml",
    "tox.ini",
    "setup.cfg",
    "manage.py",
];

/// Where the project `cwd` is in keeps dbfork's state (`.dbfork/`), without a
/// configuration file: the nearest directory, from `cwd` up, that already has
/// a `.dbfork/` or one of [`ROOT_MARKERS`]; `cwd` when there is none. So a
/// run from a subdirectory uses the project's one `.dbfork/`.
/// The state directory (`.dbfork/`) of the project `cwd` is in.
pub fn state_dir_of(cwd: &Path) -> PathBuf {
    project_root(cwd).join(STATE_DIR)
}

fn project_root(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| {
            dir.join(STATE_DIR).is_dir() || ROOT_MARKERS.iter().any(|m| dir.join(m).is_file())
        })
        .unwrap_or(cwd)
        .to_path_buf()
}

/// The known name nearest to `given` (at most two edits away, or one that
/// contains it or is contained in it), if any.
fn closest<'a>(given: &str, names: &[&'a str]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut previous = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let substituted = previous + usize::from(ca != *cb);
                previous = row[j + 1];
                row[j + 1] = substituted.min(row[j] + 1).min(previous + 1);
            }
        }
        row[b.len()]
    };
    names
        .iter()
        .map(|name| (distance(given, name), *name))
        .filter(|(d, name)| {
            *d <= 2 || (given.len() > 3 && (name.contains(given) || given.contains(name)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Whether `db` is a SQLite database that was never made: its directory,
/// where SQLite's databases and registry live, does not exist (opening it
/// would make it).
pub fn unmade_sqlite(db: &str) -> bool {
    db.strip_prefix("sqlite://")
        .and_then(|f| Path::new(f).parent())
        .is_some_and(|dir| !dir.exists())
}

/// The database of a run that names none and whose tests' settings name no
/// server: the embedded SQLite in the project's state directory.
pub fn default_db(config: &RunConfig) -> String {
    let root = config
        .state_dir
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    absolute_sqlite(DEFAULT_DB, &root)
}

/// `auto`: one slot per usable core.
fn auto_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The configuration file in use: where it is and its settings table.
struct ConfigFile {
    path: PathBuf,
    /// The project root: the file's directory.
    dir: PathBuf,
    /// Whether the table is `[tool.dbfork]` of a pyproject.toml (for messages).
    pyproject: bool,
    table: toml::Table,
}

fn find_config(explicit: Option<&Path>, cwd: &Path) -> anyhow::Result<Option<ConfigFile>> {
    if let Some(path) = explicit {
        let path = cwd.join(path);
        if !path.exists() {
            return Err(usage(format!(
                "the configuration file {} (from --config / DBFORK_CONFIG) does not exist; check the path, or leave --config out to use dbfork.toml or pyproject.toml of this project.",
                path.display()
            )));
        }
        let is_pyproject = path.file_name().is_some_and(|n| n == PYPROJECT);
        let document = read_toml(&path)?;
        let table = if is_pyproject {
            tool_dbfork(&document, &path)?.ok_or_else(|| {
                usage(format!(
                    "the configuration file {} (from --config / DBFORK_CONFIG) has no [tool.dbfork] table; add one, or point --config at another file.",
                    path.display()
                ))
            })?
        } else {
            document
        };
        return Ok(Some(ConfigFile::new(path, is_pyproject, table)));
    }
    for dir in cwd.ancestors() {
        let path = dir.join(CONFIG_FILE);
        if path.is_file() {
            let table = read_toml(&path)?;
            return Ok(Some(ConfigFile::new(path, false, table)));
        }
        let path = dir.join(PYPROJECT);
        if path.is_file() {
            // A pyproject.toml without [tool.dbfork] belongs to a project
            // that does not configure dbfork; keep looking further up.
            if let Some(table) = tool_dbfork(&read_toml(&path)?, &path)? {
                return Ok(Some(ConfigFile::new(path, true, table)));
            }
        }
    }
    Ok(None)
}

impl ConfigFile {
    fn new(path: PathBuf, pyproject: bool, table: toml::Table) -> ConfigFile {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        ConfigFile {
            path,
            dir,
            pyproject,
            table,
        }
    }
}

fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        usage(format!(
            "cannot read the configuration file {}: {e}",
            path.display()
        ))
    })?;
    text.parse::<toml::Table>().map_err(|e| {
        usage(format!(
            "the configuration file {} is not valid TOML; fix it, or point --config at another file:\n{e}",
            path.display()
        ))
    })
}

/// The `[tool.dbfork]` table of a pyproject.toml, if it has one.
fn tool_dbfork(document: &toml::Table, path: &Path) -> anyhow::Result<Option<toml::Table>> {
    let Some(tool) = document.get("tool") else {
        return Ok(None);
    };
    match tool.get("dbfork") {
        None => Ok(None),
        Some(toml::Value::Table(table)) => Ok(Some(table.clone())),
        Some(other) => Err(usage(format!(
            "`tool.dbfork` in {} is {}; it must be a table: write the settings under a [tool.dbfork] header.",
            path.display(),
            type_name(other)
        ))),
    }
}

/// Where a value came from, as messages name it.
enum Origin<'a> {
    Flag(&'a Setting),
    /// The table's default (a bad one is a bug).
    Default(&'a Setting),
    File {
        /// The key as the file spells it.
        spelled: &'a str,
        file: &'a ConfigFile,
    },
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(setting) => f.write_str(&setting.flag_and_env()),
            Origin::Default(setting) => write!(f, "default of {}", setting.flag_and_env()),
            Origin::File { spelled, file } if file.pyproject => {
                write!(f, "`{spelled}` in [tool.dbfork] of {}", file.path.display())
            }
            Origin::File { spelled, file } => {
                write!(f, "`{spelled}` in {}", file.path.display())
            }
        }
    }
}

/// A value as given: text from a flag or variable, or a TOML value.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Text(&'a str),
    Toml(&'a toml::Value),
}

/// The values the file gives for `verb`'s settings. Every key must be one
/// of the table's; those of other verbs are passed over.
fn file_values(file: &ConfigFile, verb: Verb) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let mut values = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    let mut serve = Vec::new();
    for (spelled, value) in &file.table {
        let normalized = spelled.replace('-', "_");
        if normalized == SERVE_TABLE {
            serve = serve_values(file, value, verb)?;
            continue;
        }
        let Some(setting) = dbfork_meta::settings::by_key(&normalized) else {
            return Err(unknown_key(file, spelled));
        };
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == setting.key) {
            return Err(usage(format!(
                "`{}` is set twice in {} (as `{first}` and as `{spelled}`); keep one.",
                setting.key,
                file.path.display()
            )));
        }
        seen.push((setting.key, spelled));
        if setting.of(verb) {
            let origin = Origin::File { spelled, file };
            values.push((
                setting.key,
                parse(setting, Raw::Toml(value), &origin, &file.dir)?,
            ));
        }
    }
    // The service's own table overrides the top for the service.
    values.extend(serve);
    Ok(values)
}

/// The values of the file's `serve` table, for `dbfork serve` (checked for
/// unknown keys by every verb, parsed by the service only).
fn serve_values(
    file: &ConfigFile,
    table: &toml::Value,
    verb: Verb,
) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let toml::Value::Table(table) = table else {
        return Err(usage(format!(
            "`{SERVE_TABLE}` in {} is {}; it must be a table of the service's settings ([tool.dbfork.serve] in pyproject.toml, [serve] in dbfork.toml).",
            file.path.display(),
            type_name(table)
        )));
    };
    let mut values = Vec::new();
    for (spelled, value) in table {
        let Some(setting) = dbfork_meta::settings::by_key(&spelled.replace('-', "_")) else {
            return Err(unknown_key(file, &format!("{SERVE_TABLE}.{spelled}")));
        };
        if verb == Verb::Serve && setting.of(verb) {
            let spelled = format!("{SERVE_TABLE}.{spelled}");
            let origin = Origin::File {
                spelled: &spelled,
                file,
            };
            values.push((
                setting.key,
                parse(setting, Raw::Toml(value), &origin, &file.dir)?,
            ));
        }
    }
    Ok(values)
}

/// A key of the file that no setting has.
fn unknown_key(file: &ConfigFile, spelled: &str) -> anyhow::Error {
    let names: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    let place = if file.pyproject {
        format!("[tool.dbfork] of {}", file.path.display())
    } else {
        file.path.display().to_string()
    };
    let bare = spelled.rsplit('.').next().unwrap_or(spelled);
    let guess = closest(&bare.replace('-', "_"), &names)
        .map(|name| format!(" Did you mean `{name}`?"))
        .unwrap_or_default();
    usage(format!(
        "unknown key `{spelled}` in {place}; check its spelling.{guess} The known keys are: {}.",
        names.join(", ")
    ))
}

/// Checks one value of `setting`, by its kind. `base` is the directory
/// relative paths are taken from.
fn parse(
    setting: &Setting,
    raw: Raw<'_>,
    origin: &Origin<'_>,
    base: &Path,
) -> anyhow::Result<Value> {
    Ok(match setting.kind {
        Kind::Url => {
            let url = string(raw, origin)?;
            if url.trim().is_empty() {
                return Err(invalid(origin, "it is empty; give a database URL such as postgres://user@host:5432/postgres or sqlite:///abs/path.db"));
            }
            Value::Text(absolute_sqlite(url.trim(), base))
        }
        Kind::Command => Value::Text(
            Some(string(raw, origin)?)
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_default(),
        ),
        Kind::Globs => Value::List(string_list(raw, origin)?),
        Kind::Addresses => Value::List(service::addresses(string_list(raw, origin)?, origin)?),
        Kind::Aliases => Value::List(aliases(string_list(raw, origin)?, origin)?),
        Kind::Switch => Value::Switch(boolean(raw, origin)?),
        Kind::Jobs => Value::Jobs(jobs(raw, origin)?),
        Kind::Dist => {
            let text = string(raw, origin)?;
            Value::Dist(
                Dist::parse(&text.trim().to_ascii_lowercase()).ok_or_else(|| {
                    invalid(origin, format!("`{text}` is not one of {}", Dist::CHOICES))
                })?,
            )
        }
        Kind::Order => {
            let text = string(raw, origin)?;
            Value::Order(
                Order::parse(&text.trim().to_ascii_lowercase()).ok_or_else(|| {
                    invalid(origin, format!("`{text}` is not one of {}", Order::CHOICES))
                })?,
            )
        }
        Kind::Shard => {
            let text = string(raw, origin)?;
            Value::Shard(
                Shard::parse(&text, |name| std::env::var(name).ok())
                    .map_err(|why| invalid(origin, why))?,
            )
        }
        Kind::Adapter => {
            let text = string(raw, origin)?;
            Value::Adapter(
                Adapter::parse(&text.trim().to_ascii_lowercase()).ok_or_else(|| {
                    invalid(
                        origin,
                        format!("`{text}` is not one of {}", Adapter::CHOICES),
                    )
                })?,
            )
        }
        Kind::Duration(Span::OrNone) => {
            let off = match raw {
                Raw::Text(t) => Some(t),
                Raw::Toml(toml::Value::String(t)) => Some(t.as_str()),
                Raw::Toml(_) => None,
            }
            .is_some_and(|t| t.trim().is_empty() || t.trim().eq_ignore_ascii_case("none"));
            Value::Duration(if off {
                None
            } else {
                Some(duration(raw, origin, false)?)
            })
        }
        Kind::Duration(span) => Value::Duration(Some(duration(raw, origin, span == Span::OrZero)?)),
        Kind::HeartbeatTtl => {
            let ttl = duration(raw, origin, false)?;
            dbfork_engine::ops::check_heartbeat_ttl(ttl).map_err(|why| invalid(origin, why))?;
            Value::Duration(Some(ttl))
        }
        Kind::Count { min } => Value::Count(count(raw, origin, min)?),
        Kind::Budget => Value::Count(budget(raw, origin)?),
        Kind::Choice(words) => Value::Text(choice(words, raw, origin)?),
        Kind::Path => Value::Path(optional_path(Path::new(&string(raw, origin)?), base)),
        Kind::Size => {
            let text = match raw {
                Raw::Toml(toml::Value::Integer(n)) => n.to_string(),
                _ => string(raw, origin)?,
            };
            Value::Size(
                dbfork_engine::cache::parse_size(&text).map_err(|why| invalid(origin, why))?,
            )
        }
        Kind::Service => Value::Text(service::url(&string(raw, origin)?, origin)?),
        Kind::Secret => Value::Secret(Secret(service::secret(&string(raw, origin)?, origin)?)),
        Kind::Method | Kind::Template | Kind::Owner => {
            Value::Text(word(setting.kind, raw, origin)?)
        }
    })
}

/// A whole number, or `off` (0).
fn budget(raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<usize> {
    let off = |t: &str| t.trim().eq_ignore_ascii_case("off");
    match raw {
        Raw::Text(t) if off(t) => Ok(0),
        Raw::Toml(toml::Value::String(t)) if off(t) => Ok(0),
        _ => count(raw, origin, 0)
            .map_err(|_| invalid(origin, "it is not a whole number (0 or more) or `off`")),
    }
}

/// One of `words`.
fn choice(words: &[&str], raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<String> {
    let text = string(raw, origin)?.trim().to_ascii_lowercase();
    if !words.contains(&text.as_str()) {
        return Err(invalid(
            origin,
            format!("`{text}` is not one of {}", words.join(", ")),
        ));
    }
    Ok(text)
}

/// A one-word text setting: a clone method, a template, an owner.
fn word(kind: Kind, raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<String> {
    let text = string(raw, origin)?;
    let text = text.trim();
    let wrong = match kind {
        Kind::Method if text.is_empty() => "it is empty; give `default` or a method of the backend (PostgreSQL file-copy or wal-log, MySQL show-create or create-like, SQLite copy or backup)".to_string(),
        Kind::Template if text.is_empty() => "it is empty; give the fingerprint `dbfork db template` printed (or 6 or more of its first characters), or the template's name".to_string(),
        Kind::Owner if !(text == "parent" || text == "none" || text.parse::<u32>().is_ok()) => {
            format!("`{text}` is not `parent`, `none` or a process id")
        }
        _ => return Ok(text.to_string()),
    };
    Err(invalid(origin, wrong))
}

fn string(raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<String> {
    match raw {
        Raw::Text(text) => Ok(text.to_string()),
        Raw::Toml(toml::Value::String(text)) => Ok(text.clone()),
        Raw::Toml(other) => Err(invalid(
            origin,
            format!("it is {}, expected a string", type_name(other)),
        )),
    }
}

/// `true` / `false` (also `1`, `0`, `yes`, `no`, `on`, `off` as text).
fn boolean(raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<bool> {
    let text = match raw {
        Raw::Toml(toml::Value::Boolean(b)) => return Ok(*b),
        Raw::Text(t) => t.trim().to_ascii_lowercase(),
        Raw::Toml(toml::Value::String(t)) => t.trim().to_ascii_lowercase(),
        Raw::Toml(other) => {
            return Err(invalid(
                origin,
                format!("it is {}, expected true or false", type_name(other)),
            ))
        }
    };
    match text.as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(invalid(origin, format!("`{text}` is not true or false"))),
    }
}

/// Extra database aliases: names (letters, digits, `_`), not `default`, each once.
fn aliases(names: Vec<String>, origin: &Origin<'_>) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                origin,
                format!("`{name}` is not a database alias (letters, digits and `_`)"),
            ));
        }
        if name == "default" {
            return Err(invalid(
                origin,
                "`default` always gets the worker's clone; name only the other aliases",
            ));
        }
        if seen.iter().any(|s| s == name) {
            return Err(invalid(
                origin,
                format!("`{name}` is named twice; name each alias once"),
            ));
        }
        seen.push(name.to_string());
    }
    Ok(seen)
}

fn string_list(raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<Vec<String>> {
    let expected =
        "expected a list of glob patterns, e.g. [\"migrations/**\", \"tests/fixtures/*.sql\"]";
    match raw {
        Raw::Text(text) => Ok(text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()),
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(text) => Ok(text.clone()),
                other => Err(invalid(
                    origin,
                    format!("it contains {}, {expected}", type_name(other)),
                )),
            })
            .collect(),
        Raw::Toml(other) => Err(invalid(
            origin,
            format!("it is {}, {expected}", type_name(other)),
        )),
    }
}

/// A number of workers, or `None` for `auto`.
fn jobs(raw: Raw<'_>, origin: &Origin<'_>) -> anyhow::Result<Option<usize>> {
    let allowed = "a number of worker slots (1 or more) or \"auto\"";
    let number;
    let text = match raw {
        Raw::Toml(toml::Value::Integer(n)) => {
            number = n.to_string();
            number.as_str()
        }
        Raw::Toml(toml::Value::String(text)) => text.as_str(),
        Raw::Text(text) => text,
        Raw::Toml(other) => {
            return Err(invalid(
                origin,
                format!("it is {}, expected {allowed}", type_name(other)),
            ))
        }
    };
    let text = text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(n) if n > MAX_JOBS as u64 => Err(invalid(
            origin,
            format!("`{text}` workers is more than dbfork runs ({MAX_JOBS} at most: each is a process with its own database and connections); give fewer, or `auto`"),
        )),
        Ok(n) if n >= 1 => Ok(Some(n as usize)),
        _ => Err(invalid(origin, format!("`{text}` is not {allowed}"))),
    }
}

/// The most workers a run takes: each is a process and a database with its
/// own connections; past this a machine or server runs out of something.
const MAX_JOBS: usize = 1024;

/// A whole number of at least `min`.
fn count(raw: Raw<'_>, origin: &Origin<'_>, min: usize) -> anyhow::Result<usize> {
    let allowed = format!("a whole number, {min} or more");
    let n = match raw {
        Raw::Toml(toml::Value::Integer(n)) => usize::try_from(*n).ok(),
        Raw::Text(text) => text.trim().parse::<usize>().ok(),
        Raw::Toml(toml::Value::String(text)) => text.trim().parse::<usize>().ok(),
        Raw::Toml(other) => {
            return Err(invalid(
                origin,
                format!("it is {}, expected {allowed}", type_name(other)),
            ))
        }
    };
    match n {
        Some(n) if n >= min => Ok(n),
        _ => {
            let shown = match raw {
                Raw::Text(text) => text.to_string(),
                Raw::Toml(toml::Value::String(text)) => text.clone(),
                Raw::Toml(toml::Value::Integer(n)) => n.to_string(),
                Raw::Toml(other) => type_name(other).to_string(),
            };
            Err(invalid(origin, format!("`{shown}` is not {allowed}")))
        }
    }
}

/// A duration: a number of seconds (a TOML number, or text) or text with a
/// unit. Zero only where `zero_ok` (a zero connect timeout could never succeed).
fn duration(raw: Raw<'_>, origin: &Origin<'_>, zero_ok: bool) -> anyhow::Result<Duration> {
    let value = match raw {
        Raw::Text(text) => parse_duration(text).map_err(|why| invalid(origin, why))?,
        Raw::Toml(toml::Value::String(text)) => {
            parse_duration(text).map_err(|why| invalid(origin, why))?
        }
        Raw::Toml(toml::Value::Integer(n)) => {
            u64::try_from(*n).map(Duration::from_secs).map_err(|_| {
                invalid(
                    origin,
                    format!("`{n}` is negative; expected {DURATION_EXAMPLES}"),
                )
            })?
        }
        Raw::Toml(toml::Value::Float(x)) => Duration::try_from_secs_f64(*x)
            .map_err(|_| invalid(origin, format!("`{x}` is not {DURATION_EXAMPLES}")))?,
        Raw::Toml(other) => {
            return Err(invalid(
                origin,
                format!("it is {}, expected {DURATION_EXAMPLES}", type_name(other)),
            ))
        }
    };
    if value > Duration::from_secs(365 * 86_400) {
        return Err(invalid(
            origin,
            "it is too long: a duration here is at most 365d",
        ));
    }
    if value.is_zero() && !zero_ok {
        return Err(invalid(
            origin,
            format!("it is zero; expected {DURATION_EXAMPLES}, more than 0"),
        ));
    }
    Ok(value)
}

/// A report path taken from `base`; empty means no report.
fn optional_path(path: &Path, base: &Path) -> Option<PathBuf> {
    if path.as_os_str().is_empty() {
        None
    } else {
        Some(base.join(path))
    }
}

/// A relative SQLite URL (`sqlite://rel/main.db`) made absolute against
/// `base`, because the database must be the same file whoever runs dbfork from
/// wherever; every other URL unchanged.
fn absolute_sqlite(url: &str, base: &Path) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let is_sqlite = matches!(scheme.to_ascii_lowercase().as_str(), "sqlite" | "sqlite3");
    if !is_sqlite || rest.is_empty() || rest.starts_with('/') {
        return url.to_string();
    }
    let mut relative = rest;
    while let Some(stripped) = relative.strip_prefix("./") {
        relative = stripped;
    }
    // The URL's path is percent-decoded and cut at `?`; the base directory's
    // own `%` and `?` must survive that.
    let base = base
        .to_string_lossy()
        .replace('%', "%25")
        .replace('?', "%3F");
    let base = base.trim_end_matches('/');
    format!("{scheme}://{base}/{relative}")
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}

fn invalid(origin: &Origin<'_>, why: impl fmt::Display) -> anyhow::Error {
    usage(format!("invalid {origin}: {why}."))
}

fn usage(message: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(message))
}

/// A mistake of dbfork's own (a table and its use disagree).
fn internal(what: String) -> anyhow::Error {
    anyhow::anyhow!("internal error: {what}; please report this bug")
}

mod service;
#[cfg(test)]
mod tests;

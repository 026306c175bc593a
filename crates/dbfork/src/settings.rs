//! The settings of `dbfork run`, resolved into one [`RunConfig`]. Each setting
//! comes from the first of: its flag or `DBFORK_*` variable (clap has already
//! chosen between those), the configuration file, the default.
//!
//! The configuration file is `--config FILE`, or else the first `dbfork.toml`
//! (the whole file) or `pyproject.toml` with a `[tool.dbfork]` table found in
//! the working directory or one of its parents. Its directory is the project
//! root: relative paths in the file, and the default SQLite database and
//! state directory, are taken from there, so `dbfork run` means the same from
//! any subdirectory. Relative paths given by flags or variables are taken from
//! the working directory, as a shell user expects.
//!
//! Every value is checked here, before anything starts, and a mistake names
//! where it came from (`--dist / DBFORK_DIST`, or the key and the file).

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dbfork_runner::shard::Shard;
use dbfork_runner::{Adapter, Dist, RunConfig};

use dbfork_meta::settings::{Setting, SETTINGS};

use crate::cli::{parse_duration, RunArgs};
use crate::errors::UsageError;

const CONFIG_FILE: &str = "dbfork.toml";
const PYPROJECT: &str = "pyproject.toml";
const DEFAULT_DB: &str = "sqlite://.dbfork/sqlite/main.sqlite3";
const STATE_DIR: &str = ".dbfork";
const DURATION_EXAMPLES: &str = "a number of seconds or a duration such as 90s, 250ms or 10m";

/// Resolves `dbfork run`'s settings: flag or variable, then configuration
/// file, then default. `cwd` is the (absolute) directory dbfork was started in.
pub fn resolve(args: &RunArgs, verbose: u8, cwd: &Path) -> anyhow::Result<RunConfig> {
    let file = find_config(args.config.as_deref(), cwd)?;
    let root = file
        .as_ref()
        .map_or_else(|| project_root(cwd), |f| f.dir.clone());
    let from_file = match &file {
        Some(file) => Layer::from_file(file)?,
        None => Layer::default(),
    };
    let from_flags = Layer::from_args(args, cwd)?;

    let (jobs, jobs_auto) = match from_flags.jobs.or(from_file.jobs) {
        Some(Some(jobs)) => (jobs, false),
        _ => (auto_jobs(), true),
    };
    let adapter = from_flags.adapter.or(from_file.adapter).unwrap_or_default();
    Ok(RunConfig {
        command: args.command.clone(),
        db: from_flags.db.or(from_file.db),
        setup: from_flags.setup.or(from_file.setup).flatten(),
        inputs: from_flags.inputs.or(from_file.inputs).unwrap_or_default(),
        aliases: from_flags.aliases.or(from_file.aliases).unwrap_or_default(),
        fresh_transactional: from_flags
            .fresh_transactional
            .or(from_file.fresh_transactional)
            .unwrap_or(false),
        fork: from_flags.fork.or(from_file.fork).unwrap_or(true),
        jobs,
        jobs_auto,
        dist: from_flags
            .dist
            .or(from_file.dist)
            .unwrap_or_else(|| adapter.resolve(&args.command).default_dist()),
        shard: from_flags.shard.or(from_file.shard),
        adapter,
        timeout: from_flags.timeout.or(from_file.timeout).flatten(),
        // Enough for every slot to lose a few workers to crashes or timeouts,
        // not so many that a suite that kills every worker loops for long.
        max_worker_restarts: from_flags
            .max_worker_restarts
            .or(from_file.max_worker_restarts)
            .unwrap_or(4 * jobs),
        grace: from_flags
            .grace
            .or(from_file.grace)
            .unwrap_or(Duration::from_secs(10)),
        junit: from_flags.junit.or(from_file.junit).flatten(),
        json: from_flags.json.or(from_file.json).flatten(),
        state_dir: root.join(STATE_DIR),
        clone_method: from_flags
            .clone_method
            .or(from_file.clone_method)
            .unwrap_or_else(|| "default".to_string()),
        connect_timeout: from_flags
            .connect_timeout
            .or(from_file.connect_timeout)
            .unwrap_or(Duration::from_secs(10)),
        drop_timeout: from_flags
            .drop_timeout
            .or(from_file.drop_timeout)
            .unwrap_or(Duration::from_secs(30)),
        build_timeout: from_flags
            .build_timeout
            .or(from_file.build_timeout)
            .unwrap_or(Duration::from_secs(30 * 60)),
        start_timeout: from_flags.start_timeout.or(from_file.start_timeout),
        heartbeat_ttl: from_flags
            .heartbeat_ttl
            .or(from_file.heartbeat_ttl)
            .unwrap_or(Duration::from_secs(3600)),
        template_cache: from_flags
            .template_cache
            .or(from_file.template_cache)
            .flatten(),
        template_cache_size: from_flags
            .template_cache_size
            .or(from_file.template_cache_size)
            .unwrap_or(dbfork_engine::cache::DEFAULT_MAX_BYTES),
        incremental: from_flags.incremental.or(from_file.incremental),
        keep_templates: from_flags
            .keep_templates
            .or(from_file.keep_templates)
            .unwrap_or(3),
        lock_timeout: Duration::from_secs(30 * 60),
        verbose,
        // CI logs are not terminals, but some CI systems fake one; CI=... is
        // the common signal that nobody watches a live display.
        live: std::io::stderr().is_terminal()
            && !matches!(std::env::var_os(dbfork_meta::env::CI), Some(ci) if !ci.is_empty()),
        config_file: file.map(|f| f.path),
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

/// The project's database for the commands that take `--db` and were not
/// given one: `db` of the project's configuration (or `DBFORK_DB`), else the
/// embedded SQLite default in its `.dbfork/`, as `dbfork run` finds it
/// without a Django project.
pub fn project_db(cwd: &Path) -> anyhow::Result<String> {
    Ok(database_of(&resolve(&RunArgs::default(), 0, cwd)?))
}

/// The database `config` names, else the embedded SQLite default.
pub fn database_of(config: &RunConfig) -> String {
    config.db.clone().unwrap_or_else(|| default_db(config))
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

/// The settings one source gives (`None`: this source does not set it).
/// Optional settings are `Some(None)` when the source explicitly turns them
/// off, so a flag can switch off what the file sets.
#[derive(Default)]
struct Layer {
    db: Option<String>,
    setup: Option<Option<String>>,
    inputs: Option<Vec<String>>,
    aliases: Option<Vec<String>>,
    fresh_transactional: Option<bool>,
    fork: Option<bool>,
    /// `Some(None)`: `auto`.
    jobs: Option<Option<usize>>,
    dist: Option<Dist>,
    shard: Option<Shard>,
    adapter: Option<Adapter>,
    timeout: Option<Option<Duration>>,
    max_worker_restarts: Option<usize>,
    grace: Option<Duration>,
    junit: Option<Option<PathBuf>>,
    json: Option<Option<PathBuf>>,
    clone_method: Option<String>,
    connect_timeout: Option<Duration>,
    drop_timeout: Option<Duration>,
    build_timeout: Option<Duration>,
    start_timeout: Option<Duration>,
    heartbeat_ttl: Option<Duration>,
    template_cache: Option<Option<PathBuf>>,
    template_cache_size: Option<u64>,
    incremental: Option<bool>,
    keep_templates: Option<usize>,
}

impl Layer {
    fn from_args(args: &RunArgs, cwd: &Path) -> anyhow::Result<Layer> {
        let mut layer = Layer::default();
        // clap has split lists already; `set` splits text at commas again.
        for (setting, values) in &args.given {
            let text = values.join(",");
            layer.set(setting.key, Raw::Text(&text), &Origin::Flag(setting), cwd)?;
        }
        Ok(layer)
    }

    fn from_file(file: &ConfigFile) -> anyhow::Result<Layer> {
        let mut layer = Layer::default();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (spelled, value) in &file.table {
            let normalized = spelled.replace('-', "_");
            let Some(key) = dbfork_meta::settings::by_key(&normalized) else {
                let names: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
                let place = if file.pyproject {
                    format!("[tool.dbfork] of {}", file.path.display())
                } else {
                    file.path.display().to_string()
                };
                let guess = closest(&normalized, &names)
                    .map(|name| format!(" Did you mean `{name}`?"))
                    .unwrap_or_default();
                return Err(usage(format!(
                    "unknown key `{spelled}` in {place}; check its spelling.{guess} The known keys are: {}.",
                    names.join(", ")
                )));
            };
            if let Some((_, first)) = seen.iter().find(|(name, _)| *name == key.key) {
                return Err(usage(format!(
                    "`{}` is set twice in {} (as `{first}` and as `{spelled}`); keep one.",
                    key.key,
                    file.path.display()
                )));
            }
            seen.push((key.key, spelled));
            let origin = Origin::File { spelled, file };
            layer.set(key.key, Raw::Toml(value), &origin, &file.dir)?;
        }
        Ok(layer)
    }

    /// Checks one value and stores it. `base` is the directory relative
    /// paths are taken from.
    fn set(
        &mut self,
        name: &str,
        raw: Raw<'_>,
        origin: &Origin<'_>,
        base: &Path,
    ) -> anyhow::Result<()> {
        match name {
            "db" => {
                let url = string(raw, origin)?;
                if url.trim().is_empty() {
                    return Err(invalid(origin, "it is empty; give a database URL such as postgres://user@host:5432/postgres or sqlite:///abs/path.db"));
                }
                self.db = Some(absolute_sqlite(url.trim(), base));
            }
            "setup" => {
                let command = string(raw, origin)?;
                self.setup = Some(Some(command).filter(|c| !c.trim().is_empty()));
            }
            "inputs" => self.inputs = Some(string_list(raw, origin)?),
            "aliases" => self.aliases = Some(aliases(string_list(raw, origin)?, origin)?),
            "fresh_transactional" => self.fresh_transactional = Some(boolean(raw, origin)?),
            "fork" => self.fork = Some(boolean(raw, origin)?),
            "jobs" => self.jobs = Some(jobs(raw, origin)?),
            "dist" => {
                let text = string(raw, origin)?;
                let dist = Dist::parse(&text.trim().to_ascii_lowercase()).ok_or_else(|| {
                    invalid(origin, format!("`{text}` is not one of {}", Dist::CHOICES))
                })?;
                self.dist = Some(dist);
            }
            "shard" => {
                let text = string(raw, origin)?;
                let shard = Shard::parse(&text, |name| std::env::var(name).ok())
                    .map_err(|why| invalid(origin, why))?;
                self.shard = Some(shard);
            }
            "adapter" => {
                let text = string(raw, origin)?;
                let adapter =
                    Adapter::parse(&text.trim().to_ascii_lowercase()).ok_or_else(|| {
                        invalid(
                            origin,
                            format!("`{text}` is not one of {}", Adapter::CHOICES),
                        )
                    })?;
                self.adapter = Some(adapter);
            }
            "timeout" => {
                let off = match raw {
                    Raw::Text(t) => Some(t),
                    Raw::Toml(toml::Value::String(t)) => Some(t.as_str()),
                    Raw::Toml(_) => None,
                }
                .is_some_and(|t| t.trim().is_empty() || t.trim().eq_ignore_ascii_case("none"));
                self.timeout = Some(if off {
                    None
                } else {
                    Some(duration(raw, origin, false)?)
                });
            }
            "max_worker_restarts" => {
                self.max_worker_restarts = Some(count(raw, origin, 0)?);
            }
            "grace" => self.grace = Some(duration(raw, origin, true)?),
            "junit" => self.junit = Some(optional_path(Path::new(&string(raw, origin)?), base)),
            "json" => self.json = Some(optional_path(Path::new(&string(raw, origin)?), base)),
            "clone_method" => {
                let method = string(raw, origin)?;
                let method = method.trim();
                if method.is_empty() {
                    return Err(invalid(origin, "it is empty; give `default` or a method of the backend (PostgreSQL file-copy or wal-log, MySQL show-create or create-like, SQLite copy or backup)"));
                }
                self.clone_method = Some(method.to_string());
            }
            "connect_timeout" => self.connect_timeout = Some(duration(raw, origin, false)?),
            "drop_timeout" => self.drop_timeout = Some(duration(raw, origin, false)?),
            "heartbeat_ttl" => {
                let ttl = duration(raw, origin, false)?;
                dbfork_engine::ops::check_heartbeat_ttl(ttl).map_err(|why| invalid(origin, why))?;
                self.heartbeat_ttl = Some(ttl);
            }
            "build_timeout" => self.build_timeout = Some(duration(raw, origin, false)?),
            "start_timeout" => self.start_timeout = Some(duration(raw, origin, false)?),
            "template_cache" => {
                self.template_cache = Some(optional_path(Path::new(&string(raw, origin)?), base))
            }
            "template_cache_size" => {
                let text = match raw {
                    Raw::Toml(toml::Value::Integer(n)) => n.to_string(),
                    _ => string(raw, origin)?,
                };
                let bytes =
                    dbfork_engine::cache::parse_size(&text).map_err(|why| invalid(origin, why))?;
                self.template_cache_size = Some(bytes);
            }
            "incremental" => self.incremental = Some(boolean(raw, origin)?),
            "keep_templates" => self.keep_templates = Some(count(raw, origin, 0)?),
            // SETTINGS and this match list the same keys; a key missing here is a bug
            // (a test sets every key).
            other => {
                return Err(anyhow::anyhow!(
                    "internal error: the setting `{other}` has no parser; please report this bug"
                ))
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests;

//! The command line's shape. Every flag also reads a `DBFORK_*` environment variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dbfork",
    version,
    about = "Run database-backed test suites in parallel on clones of one migrated template, and leave nothing behind."
)]
pub struct Cli {
    /// More output (-v: progress details, -vv: debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test command in parallel, each worker on its own clone of the migrated template.
    Run(Box<RunArgs>),
    /// Templates, clones and teardown, one step at a time.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// The database server: postgres://user@host:5432/postgres, mysql://root@host:3306/mysql,
    /// sqlite:///abs/dir/main.db, or postgres:ephemeral / mariadb:ephemeral for a private throwaway server.
    /// The URL's database is the maintenance database dbfork uses for its admin work and registry.
    #[arg(long, env = "DBFORK_DB", value_name = "URL")]
    pub db: String,
    /// How long connecting may take.
    #[arg(long, env = "DBFORK_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// How long dropping one database may take (sessions are ended and the drop retried within it).
    #[arg(long, env = "DBFORK_DROP_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drop_timeout: Duration,
    /// A registry entry whose owner cannot be seen from here (another host, container or boot),
    /// or with no owner process, is garbage once its heartbeat is this old
    /// (for `gc` and for the collection every command but `list` and `gc --dry-run` starts with).
    #[arg(long, env = "DBFORK_HEARTBEAT_TTL", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub heartbeat_ttl: Duration,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Build the template of a setup command, or reuse the ready one with the same fingerprint; prints the fingerprint.
    Template(TemplateArgs),
    /// Print the fingerprint the template of `dbfork run` with the same options would have,
    /// without building anything (a CI cache key). Takes every option of `dbfork run`.
    Fingerprint(Box<FingerprintArgs>),
    /// Make N clones of a template at once; prints one URL per clone (passwords left out).
    Clone(CloneArgs),
    /// Drop databases dbfork created (refuses any other), ending their sessions first.
    Drop(DropArgs),
    /// Show the registry: every database dbfork created on the server.
    List(ListArgs),
    /// Drop clones whose owner is gone, abandoned builds, and old templates.
    Gc(GcArgs),
    /// Renew the heartbeat of databases dbfork created, so that no gc (from another host or
    /// container, which cannot see their owner) takes them while they are in use.
    Touch(TouchArgs),
    /// Start a private throwaway server, print its URL, and keep it until Ctrl-C or SIGTERM.
    Ephemeral(EphemeralArgs),
}

/// `dbfork run`. Every option is also a `DBFORK_*` variable and a key of
/// `[tool.dbfork]` in pyproject.toml or of dbfork.toml; a flag beats the
/// variable, which beats the file, which beats the default.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Worker slots: a number, or `auto` (the usable cores). [default: auto]
    #[arg(short = 'j', long, env = "DBFORK_JOBS", value_name = "N|auto")]
    pub jobs: Option<String>,
    /// The database server (see `dbfork db template --help`). [default: sqlite://.dbfork/sqlite/main.sqlite3]
    #[arg(long, env = "DBFORK_DB", value_name = "URL")]
    pub db: Option<String>,
    /// The command that migrates the template, run by `sh -c` with DATABASE_URL set. [default: none, an empty database]
    #[arg(long, env = "DBFORK_SETUP", value_name = "CMD")]
    pub setup: Option<String>,
    /// Files whose contents decide the template (migrations, fixtures): glob patterns, repeatable.
    #[arg(
        long = "input",
        env = "DBFORK_INPUTS",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub inputs: Option<Vec<String>>,
    /// Extra database aliases (Django's DATABASES keys besides `default`) that get their own clone per worker, repeatable.
    #[arg(
        long = "alias",
        env = "DBFORK_ALIASES",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub aliases: Option<Vec<String>>,
    /// Give each transactional test (TransactionTestCase, transactional_db, live_server) a fresh clone made ahead in the background, instead of emptying every table after it.
    #[arg(long, env = "DBFORK_FRESH_TRANSACTIONAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub fresh_transactional: Option<String>,
    /// How tests are grouped when handed to workers: test, class, module or file. [default: test]
    #[arg(long, env = "DBFORK_DIST", value_name = "UNIT")]
    pub dist: Option<String>,
    /// How dbfork drives the command: auto, pytest, django (`manage.py test`) or none (run it once per worker). [default: auto]
    #[arg(long, env = "DBFORK_ADAPTER", value_name = "ADAPTER")]
    pub adapter: Option<String>,
    /// Kill a worker whose test runs longer than this and report the test as timed out. [default: none]
    #[arg(long, env = "DBFORK_TIMEOUT", value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Replacement workers allowed after crashes and timeouts, in all. [default: 4 x N]
    #[arg(long, env = "DBFORK_MAX_WORKER_RESTARTS", value_name = "N")]
    pub max_worker_restarts: Option<usize>,
    /// How long workers get to stop after Ctrl-C or SIGTERM before they are killed. [default: 10s]
    #[arg(long, env = "DBFORK_GRACE", value_name = "DURATION")]
    pub grace: Option<String>,
    /// Write a JUnit XML report here.
    #[arg(long, env = "DBFORK_JUNIT", value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
    /// Write a JSON report here.
    #[arg(long, env = "DBFORK_JSON", value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// How to clone: PostgreSQL file-copy|wal-log, MySQL show-create|create-like, SQLite copy|backup. [default: the backend's fastest]
    #[arg(long, env = "DBFORK_CLONE_METHOD", value_name = "METHOD")]
    pub clone_method: Option<String>,
    /// How long connecting may take. [default: 10s]
    #[arg(long, env = "DBFORK_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// How long dropping one database may take. [default: 30s]
    #[arg(long, env = "DBFORK_DROP_TIMEOUT", value_name = "DURATION")]
    pub drop_timeout: Option<String>,
    /// How long the setup command may run. [default: 30m]
    #[arg(long, env = "DBFORK_BUILD_TIMEOUT", value_name = "DURATION")]
    pub build_timeout: Option<String>,
    /// How long the test command may take to configure itself and each worker to connect and
    /// collect (a conftest.py or import that hangs). [default: the larger of --timeout and 2m;
    /// 10m without --timeout]
    #[arg(long, env = "DBFORK_START_TIMEOUT", value_name = "DURATION")]
    pub start_timeout: Option<String>,
    /// A registry entry of another host, or with no owner process, counts as left behind (and the
    /// collection at the start drops it) once its heartbeat is this old. [default: 1h]
    #[arg(long, env = "DBFORK_HEARTBEAT_TTL", value_name = "DURATION")]
    pub heartbeat_ttl: Option<String>,
    /// A directory of exported templates (a CI cache): restored instead of running the setup
    /// when the fingerprint matches, written after each build. Empty: off.
    #[arg(long, env = "DBFORK_TEMPLATE_CACHE", value_name = "DIR")]
    pub template_cache: Option<std::path::PathBuf>,
    /// The most the template cache directory may hold; least recently used files go first. [default: 2GiB]
    #[arg(long, env = "DBFORK_TEMPLATE_CACHE_SIZE", value_name = "SIZE")]
    pub template_cache_size: Option<String>,
    /// Grow a new template from the nearest earlier one when only input files were added
    /// (new migrations): clone it and run the setup again on the clone. [default: on for the
    /// Django setup dbfork runs itself, off for a --setup command (it must be safe to rerun)]
    #[arg(long, env = "DBFORK_INCREMENTAL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub incremental: Option<String>,
    /// Read settings from this file instead of looking for dbfork.toml / pyproject.toml.
    #[arg(long, env = "DBFORK_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The test command, after `--`: e.g. `-- pytest -q tests/`.
    #[arg(required = true, value_name = "COMMAND", allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// Print a JSON object: the fingerprint and every input it covers.
    #[arg(long = "print-json")]
    pub print_json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The command that migrates and loads the template, run by `sh -c` with DATABASE_URL pointing at it.
    #[arg(long, env = "DBFORK_SETUP", value_name = "CMD")]
    pub setup: String,
    /// Files whose contents decide the template (migrations, fixtures): glob patterns, repeatable.
    #[arg(
        long = "input",
        env = "DBFORK_INPUTS",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub inputs: Vec<String>,
    /// How long the setup command may run.
    #[arg(long, env = "DBFORK_BUILD_TIMEOUT", value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub build_timeout: Duration,
    /// How long to wait for another dbfork building the same template.
    #[arg(long, env = "DBFORK_LOCK_TIMEOUT", value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub lock_timeout: Duration,
    /// A directory of exported templates: restored instead of running the setup when the
    /// fingerprint matches, written after each build.
    #[arg(long, env = "DBFORK_TEMPLATE_CACHE", value_name = "DIR")]
    pub template_cache: Option<std::path::PathBuf>,
    /// The most the template cache directory may hold; least recently used files go first.
    #[arg(long, env = "DBFORK_TEMPLATE_CACHE_SIZE", value_name = "SIZE", default_value = "2GiB", value_parser = parse_size)]
    pub template_cache_size: u64,
    /// Grow the template from the nearest earlier one of the same setup when only input files
    /// were added (the setup must be safe to run again on its own result).
    #[arg(long, env = "DBFORK_INCREMENTAL")]
    pub incremental: bool,
    /// Then build it a second time from nothing into a scratch database and compare the two
    /// (every object's definition and every table's row count); exit 1 when they differ.
    #[arg(long)]
    pub verify: bool,
    /// Print a JSON object instead of the fingerprint.
    #[arg(long)]
    pub json: bool,
    /// Do not echo the setup command's output (it is still shown if it fails).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The template: its fingerprint (or a prefix of at least 6 characters) or its name.
    #[arg(long, env = "DBFORK_TEMPLATE", value_name = "FINGERPRINT")]
    pub template: String,
    /// How many clones.
    #[arg(short = 'n', long = "count", default_value_t = 1, value_name = "N")]
    pub count: usize,
    /// How to clone: PostgreSQL file-copy|wal-log, MySQL show-create|create-like, SQLite copy|backup.
    #[arg(
        long,
        env = "DBFORK_CLONE_METHOD",
        value_name = "METHOD",
        default_value = "default"
    )]
    pub method: String,
    /// How many clones are made at the same time.
    #[arg(
        long,
        env = "DBFORK_CLONE_CONCURRENCY",
        value_name = "K",
        default_value_t = 4
    )]
    pub concurrency: usize,
    /// Who owns the clones once made: `parent` (the calling process, or the one behind a
    /// wrapper like `timeout` or a `$(...)` subshell; garbage once it exits), a PID, or `none`
    /// (kept until dropped, or until its heartbeat is older than `--heartbeat-ttl`; see `db touch`).
    #[arg(long, env = "DBFORK_OWNER", default_value = "parent")]
    pub owner: String,
    /// Print JSON instead of one URL per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TouchArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The databases whose heartbeat to renew.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// The databases to drop.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Only say what would be dropped.
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop ready templates unused for longer than this (the most recently used of each setup is kept).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EphemeralArgs {
    /// postgres or mariadb.
    #[arg(value_name = "KIND")]
    pub kind: String,
}

/// `90`, `90s`, `250ms`, `10m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (examples: 90s, 250ms, 10m, 2h, 7d)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// A size: bytes, or with a unit (`500MB`, `2GiB`, `1g`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    dbfork_engine::cache::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

//! `dbfork run`: builds or reuses the template, gives each worker slot its own
//! clone, drives the test command's workers (through the pytest adapter, or
//! once per slot for any other command), and tears everything down on every
//! way out.
//!
//! - [`protocol`](dbfork_protocol): what workers and the runner say.
//! - [`schedule`]: which tests go to which worker, and when to steal.
//! - [`controller`]: the test command configured once, before the workers:
//!   their environment, and for a Django project the template's build.
//! - [`template`], [`django`]: the run's template, and what dbfork knows of Django.
//! - [`machine`]: the dispatcher's decisions, a state machine (events in, commands out, no I/O).
//! - [`run`]: the executor, one `select!` loop that carries the machine's
//!   commands out (its parts in `run/`: prepare, workers, signals, teardown, rundir).
//! - [`error`]: why a run fails, and its exit code (one classification).
//! - [`worker`]: starting and killing worker processes; [`packages`]: the
//!   Python packages written for them.
//! - [`sinks`], [`report`], [`timings`], [`progress`]: the run's event stream and
//!   what it leaves for people and the next run (the report types are
//!   `dbfork_meta::report`'s).

use std::path::PathBuf;
use std::time::Duration;

pub mod adapters;
pub mod controller;
pub mod coverage;
pub mod decide;
pub mod django;
pub mod error;
pub mod html;
pub mod machine;
pub mod packages;
pub mod progress;
pub mod recording;
pub mod report;
pub mod run;
pub mod schedule;
pub mod shard;
pub mod sinks;
#[cfg(test)]
mod snapshots;
pub mod template;
pub mod timeline;
pub mod timings;
pub mod worker;

/// How tests are grouped into the units handed to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dist {
    /// Each test on its own (the default): the best balance.
    #[default]
    Test,
    /// All tests of a class go to one worker (class-scoped fixtures set up once).
    Class,
    /// All tests of a module go to one worker (module-scoped fixtures set up once).
    Module,
    /// All tests of a file go to one worker (for pytest the same as `module`).
    File,
}

impl Dist {
    pub const CHOICES: &'static str = "test, class, module or file";

    pub fn parse(text: &str) -> Option<Dist> {
        match text {
            "test" => Some(Dist::Test),
            "class" => Some(Dist::Class),
            "module" => Some(Dist::Module),
            "file" => Some(Dist::File),
            _ => None,
        }
    }
}

/// In which order the units of work are handed out (within each order
/// group: a worker never goes back to a lower one), independent of `--dist`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// The longest first by the recorded timings (the default): the best
    /// balance.
    #[default]
    Longest,
    /// Collection order.
    File,
    /// Collection order reversed.
    Reverse,
    /// A shuffle by this seed; `None`: a new seed, printed, so that the
    /// order can be repeated.
    Shuffle(Option<u64>),
    /// The seed of the last shuffled run (in the state directory).
    ShuffleLast,
    /// As in the latest recorded run: each worker its recorded tests, in
    /// their order (resolved before the run to the lists, `RunConfig::pinned`).
    Recorded,
}

impl Order {
    pub const CHOICES: &'static str =
        "recorded, longest, file, reverse, shuffle, shuffle:SEED or shuffle:last";

    pub fn parse(text: &str) -> Option<Order> {
        match text {
            "longest" => Some(Order::Longest),
            "file" => Some(Order::File),
            "reverse" => Some(Order::Reverse),
            "shuffle" => Some(Order::Shuffle(None)),
            "shuffle:last" => Some(Order::ShuffleLast),
            "recorded" => Some(Order::Recorded),
            _ => text
                .strip_prefix("shuffle:")?
                .parse()
                .ok()
                .map(|seed| Order::Shuffle(Some(seed))),
        }
    }
}

/// How dbfork talks to the test command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Adapter {
    /// pytest when the command is pytest, django when it is `manage.py
    /// test`, else none.
    #[default]
    Auto,
    /// The pytest plugin: dbfork collects once and hands tests out.
    Pytest,
    /// Django's test runner with dbfork's mixin (`--testrunner
    /// dbfork_django.Runner`): the same, for `manage.py test`.
    Django,
    /// The command speaks dbfork's worker protocol itself (an adapter of
    /// another language, or a tool with one built in; see
    /// `dbfork_protocol` and conformance/): dbfork hands tests out as with
    /// pytest, with no controller and no Python packages of its own.
    Protocol,
    /// None: the command runs once per slot and splits its own work.
    None,
}

impl Adapter {
    pub const CHOICES: &'static str = "auto, pytest, django, protocol or none";

    pub fn parse(text: &str) -> Option<Adapter> {
        match text {
            "auto" => Some(Adapter::Auto),
            "pytest" => Some(Adapter::Pytest),
            "django" => Some(Adapter::Django),
            "protocol" => Some(Adapter::Protocol),
            "none" => Some(Adapter::None),
            _ => None,
        }
    }

    /// What `Auto` means for `command`; the others stay as they are.
    pub fn resolve(self, command: &[String]) -> Adapter {
        match self {
            Adapter::Auto => adapters::recognise(command),
            other => other,
        }
    }

    /// Whether the workers speak dbfork's protocol (through an adapter).
    pub fn speaks_protocol(self) -> bool {
        adapters::tool(self).speaks_protocol()
    }

    /// Whether the tool is configured once in a controller process first
    /// (pytest and Django's runner, through dbfork's Python packages).
    pub fn has_controller(self) -> bool {
        adapters::tool(self).has_controller()
    }

    /// The dist a run gets when none is configured (see each tool's).
    pub fn default_dist(self) -> Dist {
        adapters::tool(self).default_dist()
    }
}

/// Everything a run needs to know, resolved from flags, environment,
/// configuration file and defaults.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The test command and its arguments.
    pub command: Vec<String>,
    /// `--db`: a URL or `postgres:ephemeral` / `mariadb:ephemeral`; `None`
    /// when not given: the server the tests' settings name, or the embedded
    /// SQLite default.
    pub db: Option<String>,
    /// The setup command that builds the template (`None`: an empty database).
    pub setup: Option<String>,
    /// Glob patterns of the files that decide the template.
    pub inputs: Vec<String>,
    /// The directory the setup command runs in and the input patterns are
    /// relative to (the project root when the configuration file gives
    /// them); `None`: the working directory.
    pub recipe_dir: Option<std::path::PathBuf>,
    /// Extra database aliases (`--alias`): each worker gets one more clone of
    /// the template per alias, named for it in `DBFORK_DATABASES`.
    pub aliases: Vec<String>,
    /// `--fresh-transactional`: transactional tests get a fresh clone each,
    /// made ahead in the background, instead of a flush after them.
    pub fresh_transactional: bool,
    /// `--serve-url`: a running `dbfork serve` to lease the clones from.
    pub serve_url: Option<String>,
    /// `--keep-ready`: clones the service keeps made for the next run
    /// (`None`: as many as this run used).
    pub keep_ready: Option<usize>,
    /// `--fork`: pytest's workers are forked from the controller (Linux).
    pub fork: bool,
    /// Number of worker slots (already resolved from `auto`).
    pub jobs: usize,
    /// Whether `jobs` came from `auto` (the run may then take fewer, to fit
    /// the server's free connections).
    pub jobs_auto: bool,
    pub dist: Dist,
    /// Only these tests, by id (`dbfork rerun --failed`); `None`: every
    /// test the command collects.
    pub only: Option<Vec<String>>,
    /// `--order`: resolved to a seed before the run (never `Shuffle(None)`
    /// nor `ShuffleLast` once the run starts).
    pub order: Order,
    /// `--shard K/N`: only this part of the suite.
    pub shard: Option<shard::Shard>,
    /// `--retries`: how many times a failed test runs again, each in a
    /// fresh worker on a fresh clone.
    pub retries: usize,
    /// `--classify`: how many failed tests are classified (0: none).
    pub classify: usize,
    /// `--flaky-result fail`: a test that passed on a retry fails the run.
    pub flaky_fails: bool,
    /// `dbfork bisect`: no test of the run's own, only the probes that find
    /// what makes this one fail.
    pub bisect: Option<machine::BisectSpec>,
    /// `--trace FILE`: the run's timeline for Perfetto.
    pub trace: Option<PathBuf>,
    /// `--cov`: every process measures coverage; combined at the end.
    pub cov: bool,
    /// `--bisect`: each order-dependent failure is bisected before it is reported.
    pub bisect_failures: bool,
    /// `--order recorded`: per slot, the tests of the recorded run's worker,
    /// in order (filled in before the run).
    pub pinned: Option<Vec<Vec<String>>>,
    pub adapter: Adapter,
    /// Per-test limit (per-worker for commands without an adapter).
    pub timeout: Option<Duration>,
    /// How many replacement workers may be started in all.
    pub max_worker_restarts: usize,
    /// How long workers get to stop after the first Ctrl-C / SIGTERM.
    pub grace: Duration,
    pub junit: Option<PathBuf>,
    pub json: Option<PathBuf>,
    /// Where the timings store and other run state live (`.dbfork/`).
    pub state_dir: PathBuf,
    /// `default` or a backend's method name.
    pub clone_method: String,
    pub connect_timeout: Duration,
    pub drop_timeout: Duration,
    pub build_timeout: Duration,
    /// How long configuring the test command, and each worker's start up to
    /// its collection, may take (`None`: see [`RunConfig::start_limit`]).
    pub start_timeout: Option<Duration>,
    /// Entries of other hosts, or without an owner process, count as left
    /// behind once their heartbeat is this old (the collection at the start).
    pub heartbeat_ttl: Duration,
    pub lock_timeout: Duration,
    /// Where templates are exported after a build and restored from before one.
    pub template_cache: Option<PathBuf>,
    pub template_cache_size: u64,
    /// How many recorded runs stay in `.dbfork/runs/` (0: none recorded).
    pub keep_runs: usize,
    /// After a build, how many templates of its setup stay (0: all).
    pub keep_templates: usize,
    /// Grow a template from its nearest ancestor (`None`: on for the Django
    /// setup dbfork runs itself, off for a `--setup` command).
    pub incremental: Option<bool>,
    /// 0: normal; 1: one line per test; 2: also worker output.
    pub verbose: u8,
    /// Whether to draw live progress (a terminal) or print plain lines.
    pub live: bool,
    /// The configuration file the settings came from, if any (for messages).
    pub config_file: Option<PathBuf>,
}

/// A worker's start without `--timeout` or `--start-timeout`.
const START_LIMIT: Duration = Duration::from_secs(600);
/// The least a start gets by default: `--timeout` is meant for a test, and a
/// start on a loaded machine (16 workers importing a project on 2 cores)
/// takes longer than a test may.
const START_FLOOR: Duration = Duration::from_secs(120);

impl RunConfig {
    /// How long configuring the test command, and a worker's start up to its
    /// collection, may take: `--start-timeout`, else the larger of `--timeout`
    /// and two minutes, else ten minutes. A conftest.py that hangs is a hang
    /// like any other.
    pub fn start_limit(&self) -> Duration {
        match (self.start_timeout, self.timeout) {
            (Some(limit), _) => limit,
            (None, Some(timeout)) => timeout.max(START_FLOOR),
            (None, None) => START_LIMIT,
        }
    }
}

/// Makes the state directory (`.dbfork/`) with a `.gitignore` that ignores
/// all of it, as `.pytest_cache` does, so it never shows in `git status`.
pub fn prepare_state_dir(dir: &std::path::Path) {
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Made new or left as it is: never written through a link.
    if let Ok(mut file) = dbfork_engine::files::create_new_private(&dir.join(".gitignore")) {
        let _ = std::io::Write::write_all(
            &mut file,
            b"# Created by dbfork: its state (timings, logs, the embedded SQLite databases).\n*\n",
        );
    }
}

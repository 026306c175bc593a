//! The settings of every verb, one entry each. From this table come the
//! command line's flags and their `DBFORK_*` variables for each verb that
//! takes the setting (`dbfork`'s cli), the keys the configuration file
//! accepts, how a value is checked (its [`Kind`]; `dbfork`'s settings parse
//! each kind), the default, and the settings table of
//! `docs/configuration.md` ([`markdown`]; a test checks the file is
//! current). A new setting is one entry here and its use.

/// The commands that take settings. `dbfork db fingerprint` takes those of
/// `run` (it says what `run` with the same settings would build).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Run,
    Template,
    Clone,
    Drop,
    List,
    Gc,
    Touch,
    Clean,
    Serve,
}

impl Verb {
    pub const ALL: &'static [Verb] = &[
        Verb::Run,
        Verb::Template,
        Verb::Clone,
        Verb::Drop,
        Verb::List,
        Verb::Gc,
        Verb::Touch,
        Verb::Clean,
        Verb::Serve,
    ];

    /// The command lines that take this verb's settings.
    pub fn commands(self) -> &'static [&'static str] {
        match self {
            Verb::Run => &["run", "db fingerprint"],
            Verb::Template => &["db template"],
            Verb::Clone => &["db clone"],
            Verb::Drop => &["db drop"],
            Verb::List => &["db list"],
            Verb::Gc => &["db gc"],
            Verb::Touch => &["db touch"],
            Verb::Clean => &["clean"],
            Verb::Serve => &["serve"],
        }
    }
}

/// Every verb that talks to a server.
const EVERY: &[Verb] = Verb::ALL;
/// The verbs of a run.
const RUN: &[Verb] = &[Verb::Run];
/// The verbs that build a template.
const BUILD: &[Verb] = &[Verb::Run, Verb::Template];
/// The verbs that build a template or remove the template cache.
const CACHE: &[Verb] = &[Verb::Run, Verb::Template, Verb::Clean];
/// The verbs that clone.
const CLONING: &[Verb] = &[Verb::Run, Verb::Clone];
/// The verbs that build templates or wait for another's build.
const LOCKING: &[Verb] = &[Verb::Run, Verb::Template, Verb::Serve];
/// `dbfork db clone` alone.
const CLONE: &[Verb] = &[Verb::Clone];
/// `dbfork serve` alone.
const SERVE: &[Verb] = &[Verb::Serve];

/// What a duration may be besides positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// More than zero (a zero connect timeout could never succeed).
    Positive,
    /// Zero allowed (`grace = 0`: kill at once).
    OrZero,
    /// Empty or `none` turns it off.
    OrNone,
}

/// What kind of value a setting takes: how it is given and checked. Each
/// kind has one parser (`dbfork`'s settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A database URL (a relative SQLite path is taken from where it was given).
    Url,
    /// A shell command; empty means none.
    Command,
    /// Glob patterns.
    Globs,
    /// Database aliases.
    Aliases,
    /// Yes or no.
    Switch,
    /// A number of workers or `auto`.
    Jobs,
    /// `test`, `class`, `module` or `file`.
    Dist,
    /// `longest`, `file`, `reverse`, `shuffle`, `shuffle:SEED` or `shuffle:last`.
    Order,
    /// `K/N` or `auto`.
    Shard,
    /// `auto`, `pytest`, `django`, `protocol` or `none`.
    Adapter,
    Duration(Span),
    /// A duration of at least three heartbeats.
    HeartbeatTtl,
    /// A whole number of at least `min`.
    Count {
        min: usize,
    },
    /// A whole number, or `off` (0).
    Budget,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A path (from where it was given); empty means none.
    Path,
    /// Bytes, or with a unit.
    Size,
    /// A clone method's name (checked against the backend once connected).
    Method,
    /// A template's fingerprint, prefix or name.
    Template,
    /// `parent`, `none` or a process id.
    Owner,
    /// Where a service listens: `tcp:HOST:PORT` (loopback) or `unix:PATH`.
    Addresses,
    /// A secret text (at least 16 characters), never shown; empty means none.
    Secret,
    /// A running `dbfork serve`: `http://HOST:PORT` or `unix:PATH`; empty
    /// means none.
    Service,
}

/// How a setting takes its value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    Value,
    /// Several: the flag is repeatable, the variable comma-separated, the
    /// file's value a list.
    List,
    /// A yes/no: the flag alone means true, or `--flag=false`.
    Switch,
}

impl Kind {
    pub fn shape(self) -> Shape {
        match self {
            Kind::Globs | Kind::Aliases | Kind::Addresses => Shape::List,
            Kind::Switch => Shape::Switch,
            _ => Shape::Value,
        }
    }
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// The configuration file's key (snake_case; kebab-case is accepted too).
    pub key: &'static str,
    /// The long flag, without its dashes.
    pub flag: &'static str,
    pub short: Option<char>,
    /// Another long flag that means the same (what `db clone` called it first).
    pub alias: Option<&'static str>,
    /// The environment variable.
    pub env: &'static str,
    /// The value's placeholder in `--help`.
    pub value_name: &'static str,
    pub kind: Kind,
    /// The verbs that take it.
    pub verbs: &'static [Verb],
    /// The default, as a value of its kind; `None` when there is none or it
    /// depends on other settings (the docs' `default` says how).
    pub value: Option<&'static str>,
    /// `--help`'s text (plain text, with the default in brackets).
    pub help: &'static str,
    /// The default, in the docs (markdown).
    pub default: &'static str,
    /// What it does, in the docs (markdown).
    pub doc: &'static str,
}

impl Setting {
    /// How messages name the flag and variable: `--dist / DBFORK_DIST`.
    pub fn flag_and_env(&self) -> String {
        format!("--{} / {}", self.flag, self.env)
    }

    pub fn shape(&self) -> Shape {
        self.kind.shape()
    }

    /// Whether `verb` takes it.
    pub fn of(&self, verb: Verb) -> bool {
        self.verbs.contains(&verb)
    }
}

/// Every setting, in the order `--help` and the docs list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "db",
        flag: "db",
        short: None,
        alias: None,
        env: "DBFORK_DB",
        value_name: "URL",
        kind: Kind::Url,
        verbs: EVERY,
        value: None,
        help: "The database server: postgres://user@host:5432/postgres, mysql://root@host:3306/mysql, sqlite:///abs/dir/main.db, or postgres:ephemeral / mariadb:ephemeral for a private throwaway server. Its database is the maintenance database dbfork does its admin work in. [default: `db` of the configuration file; for `run`, else the server a Django project's test settings name; else sqlite://.dbfork/sqlite/main.sqlite3 in the project root]",
        default: "the server a Django project's test settings name for `default`; else `sqlite://.dbfork/sqlite/main.sqlite3` in the project root",
        doc: "The database server: `postgres://user@host:5432/postgres`, `mysql://root@host:3306/mysql`, `sqlite:///abs/dir/main.db` or `sqlite://rel/main.db`, `postgres:ephemeral` / `mariadb:ephemeral`. Its database is the maintenance database dbfork does its admin work in.",
    },
    Setting {
        key: "setup",
        flag: "setup",
        short: None,
        alias: None,
        env: "DBFORK_SETUP",
        value_name: "CMD",
        kind: Kind::Command,
        verbs: BUILD,
        value: None,
        help: "The command that migrates the template, run by `sh -c` with DATABASE_URL set. [default: none, an empty database]",
        default: "for a Django project, its tests' own database setup, run by the controller (see [django.md](django.md#no-setup-to-write-the-tests-own-database-setup-makes-the-template)); else none (an empty template)",
        doc: "The command that migrates and loads the template, run by `sh -c` with `DATABASE_URL` pointing at it.",
    },
    Setting {
        key: "inputs",
        flag: "input",
        short: None,
        alias: None,
        env: "DBFORK_INPUTS",
        value_name: "GLOB",
        kind: Kind::Globs,
        verbs: BUILD,
        value: Some(""),
        help: "Files whose contents decide the template (migrations, fixtures): glob patterns, repeatable.",
        default: "`[]`",
        doc: "Glob patterns of the files whose contents decide the template (migrations, fixtures); when they change, the template is rebuilt. A list of strings in the file.",
    },
    Setting {
        key: "aliases",
        flag: "alias",
        short: None,
        alias: None,
        env: "DBFORK_ALIASES",
        value_name: "NAME",
        kind: Kind::Aliases,
        verbs: RUN,
        value: None,
        help: "Extra database aliases (Django's DATABASES keys besides `default`) that get their own clone per worker, repeatable.",
        default: "`[]`, plus every alias of a Django project's `DATABASES` that is a database of its own",
        doc: "Extra database aliases (Django's `DATABASES` keys besides `default`): every worker gets one more clone of the template per alias, named for it in `DBFORK_DATABASES` (JSON, alias to database name; SQLite: path). See [django.md](django.md#several-databases).",
    },
    Setting {
        key: "fresh_transactional",
        flag: "fresh-transactional",
        short: None,
        alias: None,
        env: "DBFORK_FRESH_TRANSACTIONAL",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: RUN,
        value: Some("false"),
        help: "Give each transactional test (TransactionTestCase, transactional_db, live_server) a fresh clone made ahead in the background, instead of emptying every table after it.",
        default: "`false`",
        doc: "Transactional tests (`TransactionTestCase`, `transactional_db`, `live_server`) run on a fresh clone each, made ahead in the background, instead of emptying every table after each. See [django.md](django.md#fresh-clones-for-transactional-tests).",
    },
    Setting {
        key: "fork",
        flag: "fork",
        short: None,
        alias: None,
        env: "DBFORK_FORK",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: RUN,
        value: Some("true"),
        help: "pytest on Linux: fork the workers from the controller once it has configured and collected the suite (false: start each worker as a process of its own, which imports and collects again). [default: true]",
        default: "`true` (pytest on Linux)",
        doc: "With pytest on Linux, the workers are forked from the controller after it configured itself, collected the suite and built the template, as Django's own `--parallel` forks its workers: every worker has exactly the controller's settings and collected tests, and starting one costs milliseconds instead of an import and a collection. When the session cannot be forked (its configuration read a variable that differs per worker, such as `PYTEST_XDIST_WORKER`; it runs threads; the template is a `setup` command's), the workers are started as processes of their own, and `-v` says why. `false` always starts them so.",
    },
    Setting {
        key: "jobs",
        flag: "jobs",
        short: Some('j'),
        alias: None,
        env: "DBFORK_JOBS",
        value_name: "N|auto",
        kind: Kind::Jobs,
        verbs: RUN,
        value: Some("auto"),
        help: "Worker slots: a number, or `auto` (the usable cores). [default: auto]",
        default: "`auto`",
        doc: "Worker slots, each with its own clone: a whole number (1 or more) or `\"auto\"` (the usable cores).",
    },
    Setting {
        key: "dist",
        flag: "dist",
        short: None,
        alias: None,
        env: "DBFORK_DIST",
        value_name: "UNIT",
        kind: Kind::Dist,
        verbs: RUN,
        value: None,
        help: "How tests are grouped when handed to workers: test, class, module or file. [default: test]",
        default: "`test`; `class` for `manage.py test`",
        doc: "How tests are grouped when handed to workers: `test`, `class` (a class's tests on one worker, so class-scoped fixtures are set up once), `module` or `file`.",
    },
    Setting {
        key: "order",
        flag: "order",
        short: None,
        alias: None,
        env: "DBFORK_ORDER",
        value_name: "ORDER",
        kind: Kind::Order,
        verbs: RUN,
        value: Some("longest"),
        help: "The order tests are handed out in, within --dist's units: longest (first, by the recorded timings), file (collection order), reverse, shuffle (a new seed, printed), shuffle:SEED, shuffle:last, or recorded (each worker the tests of the same worker in the latest recorded run, in their order). [default: longest]",
        default: "`longest`",
        doc: "The order the units of tests (see `dist`) are handed out in: `longest` first by the recorded timings (the best balance), `file` (collection order), `reverse`, `shuffle` (a new seed, printed and kept in `.dbfork/order-seed`), `shuffle:SEED` (that order again), `shuffle:last` (the last shuffled run's), or `recorded`: each worker runs the tests the same worker ran in the latest recorded run (`.dbfork/runs/`), in their order, and nothing is stolen between workers (the tests that run did not run come after, in collection order; with the same `jobs` the run's order is repeated exactly). Transactional tests still come after the others. An order-dependent failure shows up under `reverse` or `shuffle`, and comes back under `recorded`.",
    },
    Setting {
        key: "shard",
        flag: "shard",
        short: None,
        alias: None,
        env: "DBFORK_SHARD",
        value_name: "K/N",
        kind: Kind::Shard,
        verbs: RUN,
        value: None,
        help: "Run only shard K of N of the suite (CI jobs in parallel; `dbfork report merge` joins their --json reports), split by the recorded test durations; `auto` reads the job's index from GitLab, CircleCI or Buildkite. [default: the whole suite]",
        default: "the whole suite",
        doc: "Run only shard K of N (`2/4`): every shard collects the whole suite and takes its part of a split by the recorded durations (units of work as `dist` groups them, longest first, each to the least loaded shard), so shards finish together; merge their `--json` reports with `dbfork report merge`. Every shard must see the same `.dbfork/timings.json` (commit it, or restore it from one cache key for all shards): each report carries the split's fingerprint and `merge` refuses reports split differently. `auto` takes K and N from `CI_NODE_INDEX`/`CI_NODE_TOTAL` (GitLab `parallel:`), `CIRCLE_NODE_INDEX`/`CIRCLE_NODE_TOTAL` (CircleCI) or `BUILDKITE_PARALLEL_JOB`/`BUILDKITE_PARALLEL_JOB_COUNT` (Buildkite). A shard with no tests passes.",
    },
    Setting {
        key: "adapter",
        flag: "adapter",
        short: None,
        alias: None,
        env: "DBFORK_ADAPTER",
        value_name: "ADAPTER",
        kind: Kind::Adapter,
        verbs: RUN,
        value: Some("auto"),
        help: "How dbfork drives the command: auto, pytest, django (`manage.py test`), protocol (the command speaks dbfork's worker protocol itself) or none (run it once per worker). [default: auto]",
        default: "`auto`",
        doc: "How dbfork drives the command: `pytest` (dbfork collects once and hands out tests), `django` (the same for `manage.py test`, through `dbfork_django`), `protocol` (the same for a command that speaks dbfork's worker protocol itself, e.g. an adapter for another language: no controller, no Python packages; see [conformance/README.md](../conformance/README.md)), `none` (the command runs once per slot and splits its own work), `auto` (pytest when the command is pytest, django when it is `manage.py test`, `django-admin test`, `python -m django test` or a `runtests.py` or `run_tests.py` script).",
    },
    Setting {
        key: "timeout",
        flag: "timeout",
        short: None,
        alias: None,
        env: "DBFORK_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::OrNone),
        verbs: RUN,
        value: None,
        help: "Kill a worker whose test runs longer than this and report the test as timed out. [default: none]",
        default: "none",
        doc: "A test that runs longer is reported as timed out and its worker is killed and replaced (without an adapter: the limit for each worker's whole command).",
    },
    Setting {
        key: "max_worker_restarts",
        flag: "max-worker-restarts",
        short: None,
        alias: None,
        env: "DBFORK_MAX_WORKER_RESTARTS",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: RUN,
        value: None,
        help: "Replacement workers allowed after crashes and timeouts, in all. [default: 4 x N]",
        default: "4 × jobs",
        doc: "How many replacement workers may be started in all, after crashes and timeouts.",
    },
    Setting {
        key: "retries",
        flag: "retries",
        short: None,
        alias: None,
        env: "DBFORK_RETRIES",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: RUN,
        value: Some("0"),
        help: "Run a failed test again up to N times, each alone in a fresh worker on a fresh clone; one that then passes is reported flaky. [default: 0]",
        default: "`0`",
        doc: "A failed test runs again up to N times, each time alone in a fresh worker on a fresh clone (never in the state the failure left). One that then passes counts as passed and is reported *flaky* (`TRY 2 PASSED`, `1 passed (1 flaky)`, JUnit `<flakyFailure>`, every try in the JSON report); see `flaky_result`. The retries run in workers that are through with the run's own tests, never beside more than `jobs` workers.",
    },
    Setting {
        key: "flaky_result",
        flag: "flaky-result",
        short: None,
        alias: None,
        env: "DBFORK_FLAKY_RESULT",
        value_name: "RESULT",
        kind: Kind::Choice(&["pass", "fail"]),
        verbs: RUN,
        value: Some("pass"),
        help: "What a test that passed on a retry makes of the run's exit code: pass or fail. [default: pass]",
        default: "`pass`",
        doc: "What a flaky test (failed, then passed on a retry; see `retries`) makes of the run's exit code: `pass`, or `fail` (exit code 1, as a failed test).",
    },
    Setting {
        key: "classify",
        flag: "classify",
        short: None,
        alias: None,
        env: "DBFORK_CLASSIFY",
        value_name: "N",
        kind: Kind::Budget,
        verbs: RUN,
        value: Some("10"),
        help: "Classify up to N failed tests (broken, order-dependent or flaky) by running each again alone on a fresh clone, and after its worker's earlier tests; off: none. [default: 10]",
        default: "`10`",
        doc: "Up to N failed tests of a run are classified, and the summary and both reports say so: each runs again alone in a fresh worker on a fresh clone; one that fails there too is *broken*; one that passes alone runs again after the tests its worker ran before it, in their order, in a fresh worker on a fresh clone (one such replay per worker): failing again it is *order-dependent* (reported with the tests it fails after), passing it is *flaky*. The probes run in workers that are through with the run's own tests. The outcome stays the run's (`retries` may make it pass). `off` (or `0`): none.",
    },
    Setting {
        key: "bisect",
        flag: "bisect",
        short: None,
        alias: None,
        env: "DBFORK_BISECT",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: RUN,
        value: Some("false"),
        help: "Bisect each order-dependent failure before it is reported: the tests that make it fail when they run before it are named in the summary and the reports (probes in fresh workers on fresh clones, as dbfork bisect). [default: false]",
        default: "`false`",
        doc: "Each failure classified order-dependent (see `classify`) is bisected before it is reported, as `dbfork bisect` would: probes of some of the tests its worker ran before it, then it, each in a fresh worker on a fresh clone, as many at once as `jobs`, until the tests that make it fail are found; they are named under its line in the summary (`fails after: ...`), in the JSON report (`diagnosis.culprits`) and in JUnit (`fails_after`). One failure at a time, after the run's own tests and the other probes.",
    },
    Setting {
        key: "grace",
        flag: "grace",
        short: None,
        alias: None,
        env: "DBFORK_GRACE",
        value_name: "DURATION",
        kind: Kind::Duration(Span::OrZero),
        verbs: RUN,
        value: Some("10s"),
        help: "How long workers get to stop after Ctrl-C or SIGTERM before they are killed. [default: 10s]",
        default: "`10s`",
        doc: "How long workers get to stop after Ctrl-C or SIGTERM before they are killed. `0` kills them at once.",
    },
    Setting {
        key: "junit",
        flag: "junit",
        short: None,
        alias: None,
        env: "DBFORK_JUNIT",
        value_name: "FILE",
        kind: Kind::Path,
        verbs: RUN,
        value: None,
        help: "Write a JUnit XML report here.",
        default: "none",
        doc: "Write a JUnit XML report to this file.",
    },
    Setting {
        key: "json",
        flag: "json",
        short: None,
        alias: None,
        env: "DBFORK_JSON",
        value_name: "FILE",
        kind: Kind::Path,
        verbs: RUN,
        value: None,
        help: "Write a JSON report here.",
        default: "none",
        doc: "Write a JSON report to this file.",
    },
    Setting {
        key: "cov",
        flag: "cov",
        short: None,
        alias: None,
        env: "DBFORK_COV",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: RUN,
        value: Some("false"),
        help: "Measure coverage with coverage.py in every process (the project's own configuration) and combine it into one data file at the end, as a serial `coverage run` leaves it. [default: false]",
        default: "`false`",
        doc: "Every process of the run (the controller and each worker, forked or not) measures coverage with coverage.py from its start, with the project's own coverage configuration, and saves it when it exits (on SIGTERM too); the data of earlier runs is erased first, and at the end the files are combined into one data file (`coverage combine`), which `coverage report` and `coverage html` read as after a serial `coverage run -m pytest`. Needs coverage.py in the test command's environment, and pytest or Django's runner. Do not pass pytest-cov's `--cov` to pytest as well.",
    },
    Setting {
        key: "trace",
        flag: "trace",
        short: None,
        alias: None,
        env: "DBFORK_TRACE",
        value_name: "FILE",
        kind: Kind::Path,
        verbs: RUN,
        value: None,
        help: "Write the run's timeline here in the Chrome trace format (open it in Perfetto or chrome://tracing): a track per worker and one for the database.",
        default: "none",
        doc: "Write the run's timeline to this file in the Chrome trace event format, which [Perfetto](https://ui.perfetto.dev) and `chrome://tracing` open: a track per worker (its start and collection, each test, each try of a failed test) and one for the database (the template, each clone made and dropped, the teardown). `dbfork report html` shows the same timeline.",
    },
    Setting {
        key: "clone_method",
        flag: "clone-method",
        short: None,
        alias: Some("method"),
        env: "DBFORK_CLONE_METHOD",
        value_name: "METHOD",
        kind: Kind::Method,
        verbs: CLONING,
        value: Some("default"),
        help: "How to clone: PostgreSQL file-copy|wal-log, MySQL show-create|create-like, SQLite copy|backup. [default: the backend's fastest]",
        default: "`default` (the backend's fastest)",
        doc: "How clones are made: PostgreSQL `file-copy` or `wal-log`, MySQL `show-create` or `create-like`, SQLite `copy` or `backup`.",
    },
    Setting {
        key: "connect_timeout",
        flag: "connect-timeout",
        short: None,
        alias: None,
        env: "DBFORK_CONNECT_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: EVERY,
        value: Some("10s"),
        help: "How long connecting may take. [default: 10s]",
        default: "`10s`",
        doc: "How long connecting to the server may take.",
    },
    Setting {
        key: "drop_timeout",
        flag: "drop-timeout",
        short: None,
        alias: None,
        env: "DBFORK_DROP_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: EVERY,
        value: Some("30s"),
        help: "How long dropping one database may take. [default: 30s]",
        default: "`30s`",
        doc: "How long dropping one database may take (its sessions are ended and the drop retried within it).",
    },
    Setting {
        key: "build_timeout",
        flag: "build-timeout",
        short: None,
        alias: None,
        env: "DBFORK_BUILD_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: BUILD,
        value: Some("30m"),
        help: "How long the setup command may run. [default: 30m]",
        default: "`30m`",
        doc: "How long the setup command may run.",
    },
    Setting {
        key: "lock_timeout",
        flag: "lock-timeout",
        short: None,
        alias: None,
        env: "DBFORK_LOCK_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: LOCKING,
        value: Some("30m"),
        help: "How long to wait for another dbfork building the same template. [default: 30m]",
        default: "`30m`",
        doc: "How long to wait for another dbfork (another run, CI job or `db template`) that is building the same template; it is then used, not built twice.",
    },
    Setting {
        key: "start_timeout",
        flag: "start-timeout",
        short: None,
        alias: None,
        env: "DBFORK_START_TIMEOUT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: RUN,
        value: None,
        help: "How long the test command may take to configure itself and each worker to connect and collect (a conftest.py or import that hangs). [default: the larger of --timeout and 2m; 10m without --timeout]",
        default: "the larger of `timeout` and `2m`; `10m` without `timeout`",
        doc: "How long the test command may take to configure itself (the controller) and each worker to connect and report its collection. A `conftest.py`, import or plugin that hangs ends the run with an error naming the worker and its last output. Separate from `timeout`, which is per test: a start on a loaded machine takes longer than a test may.",
    },
    Setting {
        key: "heartbeat_ttl",
        flag: "heartbeat-ttl",
        short: None,
        alias: None,
        env: "DBFORK_HEARTBEAT_TTL",
        value_name: "DURATION",
        kind: Kind::HeartbeatTtl,
        verbs: EVERY,
        value: Some("1h"),
        help: "A registry entry of another host, or with no owner process, counts as left behind (and the collection at the start drops it) once its heartbeat is this old; at least 6m (three heartbeats). [default: 1h]",
        default: "`1h`",
        doc: "A registry entry whose owner this dbfork cannot see (another host, container/PID namespace or boot) or without an owner process (`db clone --owner none`) counts as left behind once its heartbeat is this old; the collection at the start of every command that makes or drops something (not `db list`, not `db gc --dry-run`) then drops it and says so. At least `6m`: a run renews its clones' heartbeat every 2 minutes, and a shorter TTL would drop a live run's clones.",
    },
    Setting {
        key: "template_cache",
        flag: "template-cache",
        short: None,
        alias: None,
        env: "DBFORK_TEMPLATE_CACHE",
        value_name: "DIR",
        kind: Kind::Path,
        verbs: CACHE,
        value: None,
        help: "A directory of exported templates (a CI cache): restored instead of running the setup when the fingerprint matches, written after each build. Empty: off.",
        default: "none (off)",
        doc: "A directory of exported templates, one file per fingerprint and backend (`<fingerprint>.<backend>.dbfork-template`). When no template with the fingerprint is on the server, a sound file there is restored instead of running the setup; after every build the new template is written there. Meant for CI caches: see [ci.md](ci.md). An empty value turns it off.",
    },
    Setting {
        key: "template_cache_size",
        flag: "template-cache-size",
        short: None,
        alias: None,
        env: "DBFORK_TEMPLATE_CACHE_SIZE",
        value_name: "SIZE",
        kind: Kind::Size,
        verbs: BUILD,
        value: Some("2GiB"),
        help: "The most the template cache directory may hold; least recently used files go first. [default: 2GiB]",
        default: "`2GiB`",
        doc: "The most the cache directory may hold; after a write, the least recently used files (a restore counts as a use) are removed until it fits. Bytes, or `500MB`, `2GiB`.",
    },
    Setting {
        key: "serve_url",
        flag: "serve-url",
        short: None,
        alias: None,
        env: "DBFORK_SERVE_URL",
        value_name: "URL",
        kind: Kind::Service,
        verbs: &[Verb::Run, Verb::List],
        value: None,
        help: "A running `dbfork serve` on the same server (http://HOST:PORT or unix:PATH): `run` leases its workers' clones and fresh clones from it (a warm run starts on clones made ahead); `db list` shows its clones' states (ready, leased). [default: none: the run makes its clones]",
        default: "none",
        doc: "A running `dbfork serve` on the run's server (`http://HOST:PORT`, or `unix:PATH` for its socket, where a run that dies gives its clones back at once). The run builds or reuses its template as always, has the service serve it, and leases its workers' clones and its fresh clones from the service's pool instead of making them; at the end it returns them (the service makes fresh ones in the background) and leaves `keep_ready` made for the next run. `dbfork db list` shows the service's clones as `ready`, `leased`, `making` or `dropping`. `dbfork-client` reads the same variable.",
    },
    Setting {
        key: "keep_ready",
        flag: "keep-ready",
        short: None,
        alias: None,
        env: "DBFORK_KEEP_READY",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: RUN,
        value: None,
        help: "With --serve-url: how many clones of the run's template the service keeps made for the next run. [default: as many as this run used]",
        default: "as many clones as the run used",
        doc: "With `serve_url`: how many clones of the run's template the service keeps made ahead once the run ends, for the next run to start on (0: none). By default as many as the run used (its workers' clones).",
    },
    Setting {
        key: "keep_runs",
        flag: "keep-runs",
        short: None,
        alias: None,
        env: "DBFORK_KEEP_RUNS",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: RUN,
        value: Some("20"),
        help: "How many recorded runs stay in .dbfork/runs/ (their events, each worker's order, the report; see `dbfork report show`); 0 records none. [default: 20]",
        default: "`20`",
        doc: "How many recorded runs stay in `.dbfork/runs/` (the newest; none older than 14 days): each run's events, each worker's order and its report, which `dbfork report show` reads. `0` records nothing.",
    },
    Setting {
        key: "keep_templates",
        flag: "keep-templates",
        short: None,
        alias: None,
        env: "DBFORK_KEEP_TEMPLATES",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: RUN,
        value: Some("3"),
        help: "After a build, keep the N most recently used templates of the same setup on the server and drop the older ones (not one a running run still clones from); 0 keeps all. [default: 3]",
        default: "`3`",
        doc: "After every build, the templates of the same setup (the project's Django setup, or the same `setup` command) beyond the N most recently used are dropped, so trying other label sets, branches or settings does not pile templates up on a server; one that a run still alive clones from is kept. `0` keeps every template (`dbfork db gc --older-than` still removes unused ones).",
    },
    Setting {
        key: "incremental",
        flag: "incremental",
        short: None,
        alias: None,
        env: "DBFORK_INCREMENTAL",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: BUILD,
        value: None,
        help: "Grow a new template from the nearest earlier one when only input files were added (new migrations): clone it and run the setup again on the clone. [default: on for the Django setup dbfork runs itself, off for a --setup command (it must be safe to rerun)]",
        default: "on for the Django setup dbfork runs itself; off for `setup`",
        doc: "When no template matches but an earlier template of the same setup was built from a subset of today's inputs with the same contents (only new files, e.g. new migrations), clone it (or restore it from the cache) and run the setup on the clone: Django's `migrate` then applies only the new migrations. A changed or removed input, or a changed setup or setting, always means a full build. Turn it on for a `setup` command only if running it again on its own result is correct.",
    },
    Setting {
        key: "template",
        flag: "template",
        short: None,
        alias: None,
        env: "DBFORK_TEMPLATE",
        value_name: "FINGERPRINT",
        kind: Kind::Template,
        verbs: CLONE,
        value: None,
        help: "The template: its fingerprint (or a prefix of at least 6 characters) or its name.",
        default: "none (required)",
        doc: "For `db clone`: the template to clone, by fingerprint (or a prefix of at least 6 characters, as `db template` prints it) or name.",
    },
    Setting {
        key: "clone_concurrency",
        flag: "concurrency",
        short: None,
        alias: None,
        env: "DBFORK_CLONE_CONCURRENCY",
        value_name: "K",
        kind: Kind::Count { min: 1 },
        verbs: CLONE,
        value: Some("4"),
        help: "How many clones are made at the same time. [default: 4]",
        default: "`4`",
        doc: "For `db clone`: how many clones are made at the same time.",
    },
    Setting {
        key: "owner",
        flag: "owner",
        short: None,
        alias: None,
        env: "DBFORK_OWNER",
        value_name: "parent|PID|none",
        kind: Kind::Owner,
        verbs: CLONE,
        value: Some("parent"),
        help: "Who owns the clones once made: `parent` (the calling process, or the one behind a wrapper like `timeout` or a `$(...)` subshell; garbage once it exits), a PID, or `none` (kept until dropped, or until its heartbeat is older than --heartbeat-ttl; see `db touch`). [default: parent]",
        default: "`parent`",
        doc: "For `db clone`: who owns the clones. `parent`: the calling process (or the one behind a wrapper such as `timeout` or a `$(...)` subshell); they are garbage once it exits. A process id. `none`: kept until dropped, or until their heartbeat is older than `heartbeat_ttl` (renew it with `db touch`).",
    },
    Setting {
        key: "listen",
        flag: "listen",
        short: None,
        alias: None,
        env: "DBFORK_LISTEN",
        value_name: "ADDRESS",
        kind: Kind::Addresses,
        verbs: SERVE,
        value: Some("tcp:127.0.0.1:5000"),
        help: "Where the service listens, repeatable: tcp:HOST:PORT (a loopback address unless --token is set) or unix:PATH. [default: tcp:127.0.0.1:5000, IntegreSQL's port]",
        default: "`tcp:127.0.0.1:5000`",
        doc: "For `serve`: where the service listens: `tcp:HOST:PORT` (on a loopback address unless a `token` is set), or `unix:PATH` (the socket is made 0600 in a directory only this user can enter). A list in the file. Port 5000 is IntegreSQL's, so its clients find the service where they look.",
    },
    Setting {
        key: "token",
        flag: "token",
        short: None,
        alias: None,
        env: "DBFORK_TOKEN",
        value_name: "TOKEN",
        kind: Kind::Secret,
        verbs: SERVE,
        value: None,
        help: "A secret every request must carry (Authorization: Bearer TOKEN), at least 16 characters; needed to listen on an address that is not loopback. A flag shows in `ps`: prefer DBFORK_TOKEN or --token-file. [default: none]",
        default: "none",
        doc: "For `serve`: a secret of at least 16 characters that every request must carry as `Authorization: Bearer TOKEN` (401 without it); required to listen on a TCP address that is not loopback, since the answers hold database URLs with passwords. `dbfork-client` sends `DBFORK_TOKEN`. A flag shows in `ps`: prefer the variable or `token_file`.",
    },
    Setting {
        key: "token_file",
        flag: "token-file",
        short: None,
        alias: None,
        env: "DBFORK_TOKEN_FILE",
        value_name: "PATH",
        kind: Kind::Path,
        verbs: SERVE,
        value: None,
        help: "A file holding the token (--token); it must be yours and readable by you alone (chmod 600). [default: none]",
        default: "none",
        doc: "For `serve`: a file holding the token (see `token`), its surrounding whitespace ignored; it must belong to the user running the service and be readable by no one else (`chmod 600`).",
    },
    Setting {
        key: "pool_size",
        flag: "pool-size",
        short: None,
        alias: None,
        env: "DBFORK_POOL_SIZE",
        value_name: "N",
        kind: Kind::Count { min: 0 },
        verbs: SERVE,
        value: Some("4"),
        help: "Clones of each template kept ready ahead of the requests. [default: 4]",
        default: "`4`",
        doc: "For `serve`: how many clones of each template are kept ready (made in the background) so that a request never waits for one while the pool is below its maximum.",
    },
    Setting {
        key: "pool_max",
        flag: "pool-max",
        short: None,
        alias: None,
        env: "DBFORK_POOL_MAX",
        value_name: "N",
        kind: Kind::Count { min: 1 },
        verbs: SERVE,
        value: Some("32"),
        help: "The most clones of one template on the server at once (ready, leased and being dropped); a request beyond it waits. [default: 32]",
        default: "`32`",
        doc: "For `serve`: the most clones of one template that exist at once, ready, leased or being dropped; a request for one more waits until one is returned.",
    },
    Setting {
        key: "max_databases",
        flag: "max-databases",
        short: None,
        alias: None,
        env: "DBFORK_MAX_DATABASES",
        value_name: "N",
        kind: Kind::Count { min: 1 },
        verbs: SERVE,
        value: Some("256"),
        help: "The most clones of all templates at once; past it the least recently used template's ready clones are dropped for the one a test waits for. [default: 256]",
        default: "`256`",
        doc: "For `serve`: the most clones of all templates on the server at once (templates not counted). When a test waits for a clone and there is no room, the ready clones of the least recently used other template are dropped; that template makes none ahead until a test asks for it again.",
    },
    Setting {
        key: "max_bytes",
        flag: "max-bytes",
        short: None,
        alias: None,
        env: "DBFORK_MAX_BYTES",
        value_name: "SIZE",
        kind: Kind::Size,
        verbs: SERVE,
        value: None,
        help: "The most bytes all clones may take on the server (each counted as its template's size, as the server tells it), e.g. 20GiB; past it, as past --max-databases. [default: none]",
        default: "none",
        doc: "For `serve`: the most bytes the clones of all templates may take on the server, each counted as its template's size as the server tells it (PostgreSQL `pg_database_size`, MySQL/MariaDB the tables' data and indexes, SQLite the files); past it the service makes no more clones and frees room as past `max_databases`. A template whose one clone is over it is refused (507).",
    },
    Setting {
        key: "lease_ttl",
        flag: "lease-ttl",
        short: None,
        alias: None,
        env: "DBFORK_LEASE_TTL",
        value_name: "DURATION",
        kind: Kind::Duration(Span::OrNone),
        verbs: SERVE,
        value: None,
        help: "Take back a leased clone (and drop it) when it was neither returned nor renewed (POST .../tests/ID/renew) for this long. [default: none: a lease lasts until returned, as with IntegreSQL]",
        default: "none",
        doc: "For `serve`: a clone leased and neither returned nor renewed (`POST /api/v1/templates/HASH/tests/ID/renew`) for this long is taken back and dropped, so a test process that died does not hold it for ever. Off by default: IntegreSQL's clients never renew.",
    },
    Setting {
        key: "lease_wait",
        flag: "lease-wait",
        short: None,
        alias: None,
        env: "DBFORK_LEASE_WAIT",
        value_name: "DURATION",
        kind: Kind::Duration(Span::Positive),
        verbs: SERVE,
        value: Some("60s"),
        help: "How long a request for a test database waits for its template to be finalized and for a ready clone before it is answered 503. [default: 60s, IntegreSQL's]",
        default: "`60s`",
        doc: "For `serve`: how long a request for a test database waits for its template to be finalized and for a clone to be ready (the pool at its maximum) before the answer is 503.",
    },
    Setting {
        key: "exit_with_stdin",
        flag: "exit-with-stdin",
        short: None,
        alias: None,
        env: "DBFORK_EXIT_WITH_STDIN",
        value_name: "BOOL",
        kind: Kind::Switch,
        verbs: SERVE,
        value: Some("false"),
        help: "Drain and exit when standard input closes: for a service a test binary starts for itself (dbfork-client does), which ends with it however it ends.",
        default: "`false`",
        doc: "For `serve`: drain and exit when standard input closes, as when the process that started the service with a pipe on its input ends, however it ends (`dbfork-client` starts a service so when none is named).",
    },
];

/// The table of the configuration file that holds settings for `dbfork
/// serve` alone (`[tool.dbfork.serve]`, or `[serve]` of dbfork.toml); they
/// override the same keys at the top for the service.
pub const SERVE_TABLE: &str = "serve";

/// The setting with this configuration key.
pub fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The settings table of `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "| key | flag | variable | default | commands | meaning |\n|---|---|---|---|---|---|\n",
    );
    for s in SETTINGS {
        let mut flag = format!("`--{}`", s.flag);
        if let Some(short) = s.short {
            flag = format!("`-{short}`, {flag}");
        }
        let mut env = format!("`{}`", s.env);
        if s.shape() == Shape::List {
            flag.push_str(" (repeatable)");
            env.push_str(" (comma-separated)");
        }
        out.push_str(&format!(
            "| `{}` | {flag} | {env} | {} | {} | {} |\n",
            s.key,
            s.default,
            commands(s),
            s.doc
        ));
    }
    out
}

/// The commands that take `setting`, as the docs' table lists them.
pub fn commands(setting: &Setting) -> String {
    if setting.verbs == EVERY {
        return "every command".to_string();
    }
    let names: Vec<String> = setting
        .verbs
        .iter()
        .flat_map(|v| v.commands())
        .map(|c| format!("`{c}`"))
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_flags_and_variables_are_unique_and_consistent() {
        use std::collections::BTreeSet;
        for name in [
            |s: &Setting| s.key,
            |s: &Setting| s.flag,
            |s: &Setting| s.env,
        ] {
            let unique: BTreeSet<&str> = SETTINGS.iter().map(name).collect();
            assert_eq!(unique.len(), SETTINGS.len());
        }
        for s in SETTINGS {
            assert_eq!(
                s.env,
                format!("DBFORK_{}", s.key.to_uppercase()),
                "{}",
                s.key
            );
            if let Some(value) = s.value {
                assert!(
                    s.help.contains("[default: ") || value.is_empty() || s.kind == Kind::Switch,
                    "{}: --help does not give the default {value}",
                    s.key
                );
            }
            assert!(!s.help.is_empty() && !s.doc.is_empty(), "{}", s.key);
            assert!(!s.verbs.is_empty(), "{}", s.key);
            assert!(s.key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}

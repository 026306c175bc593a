//! The settings of `dbfork run`, one entry each. From this table come the
//! command line's flags and their `DBFORK_*` variables (`dbfork`'s cli), the
//! keys the configuration file accepts, and the settings table of
//! `docs/configuration.md` ([`markdown`]; a test checks the file is
//! current). A new setting is one entry here, plus how its value is checked
//! (`dbfork`'s settings) and used (`RunConfig`).

/// How a setting takes its value.
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

/// One setting.
#[derive(Debug)]
pub struct Setting {
    /// The configuration file's key (snake_case; kebab-case is accepted too).
    pub key: &'static str,
    /// The long flag, without its dashes.
    pub flag: &'static str,
    pub short: Option<char>,
    /// The environment variable.
    pub env: &'static str,
    /// The value's placeholder in `--help`.
    pub value_name: &'static str,
    pub shape: Shape,
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
}

/// Every setting, in the order `--help` and the docs list them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "db",
        flag: "db",
        short: None,
        env: "DBFORK_DB",
        value_name: "URL",
        shape: Shape::Value,
        help: "The database server (see `dbfork db template --help`). [default: sqlite://.dbfork/sqlite/main.sqlite3]",
        default: "the server a Django project's test settings name for `default`; else `sqlite://.dbfork/sqlite/main.sqlite3` in the project root",
        doc: "The database server: `postgres://user@host:5432/postgres`, `mysql://root@host:3306/mysql`, `sqlite:///abs/dir/main.db` or `sqlite://rel/main.db`, `postgres:ephemeral` / `mariadb:ephemeral`. Its database is the maintenance database dbfork does its admin work in.",
    },
    Setting {
        key: "setup",
        flag: "setup",
        short: None,
        env: "DBFORK_SETUP",
        value_name: "CMD",
        shape: Shape::Value,
        help: "The command that migrates the template, run by `sh -c` with DATABASE_URL set. [default: none, an empty database]",
        default: "for a Django project, its tests' own database setup, run by the controller (see [django.md](django.md#no-setup-to-write-the-tests-own-database-setup-makes-the-template)); else none (an empty template)",
        doc: "The command that migrates and loads the template, run by `sh -c` with `DATABASE_URL` pointing at it.",
    },
    Setting {
        key: "inputs",
        flag: "input",
        short: None,
        env: "DBFORK_INPUTS",
        value_name: "GLOB",
        shape: Shape::List,
        help: "Files whose contents decide the template (migrations, fixtures): glob patterns, repeatable.",
        default: "`[]`",
        doc: "Glob patterns of the files whose contents decide the template (migrations, fixtures); when they change, the template is rebuilt. A list of strings in the file.",
    },
    Setting {
        key: "aliases",
        flag: "alias",
        short: None,
        env: "DBFORK_ALIASES",
        value_name: "NAME",
        shape: Shape::List,
        help: "Extra database aliases (Django's DATABASES keys besides `default`) that get their own clone per worker, repeatable.",
        default: "`[]`, plus every alias of a Django project's `DATABASES` that is a database of its own",
        doc: "Extra database aliases (Django's `DATABASES` keys besides `default`): every worker gets one more clone of the template per alias, named for it in `DBFORK_DATABASES` (JSON, alias to database name; SQLite: path). See [django.md](django.md#several-databases).",
    },
    Setting {
        key: "fresh_transactional",
        flag: "fresh-transactional",
        short: None,
        env: "DBFORK_FRESH_TRANSACTIONAL",
        value_name: "BOOL",
        shape: Shape::Switch,
        help: "Give each transactional test (TransactionTestCase, transactional_db, live_server) a fresh clone made ahead in the background, instead of emptying every table after it.",
        default: "`false`",
        doc: "Transactional tests (`TransactionTestCase`, `transactional_db`, `live_server`) run on a fresh clone each, made ahead in the background, instead of emptying every table after each. See [django.md](django.md#fresh-clones-for-transactional-tests).",
    },
    Setting {
        key: "fork",
        flag: "fork",
        short: None,
        env: "DBFORK_FORK",
        value_name: "BOOL",
        shape: Shape::Switch,
        help: "pytest on Linux: fork the workers from the controller once it has configured and collected the suite (false: start each worker as a process of its own, which imports and collects again). [default: true]",
        default: "`true` (pytest on Linux)",
        doc: "With pytest on Linux, the workers are forked from the controller after it configured itself, collected the suite and built the template, as Django's own `--parallel` forks its workers: every worker has exactly the controller's settings and collected tests, and starting one costs milliseconds instead of an import and a collection. When the session cannot be forked (its configuration read a variable that differs per worker, such as `PYTEST_XDIST_WORKER`; it runs threads; the template is a `setup` command's), the workers are started as processes of their own, and `-v` says why. `false` always starts them so.",
    },
    Setting {
        key: "jobs",
        flag: "jobs",
        short: Some('j'),
        env: "DBFORK_JOBS",
        value_name: "N|auto",
        shape: Shape::Value,
        help: "Worker slots: a number, or `auto` (the usable cores). [default: auto]",
        default: "`auto`",
        doc: "Worker slots, each with its own clone: a whole number (1 or more) or `\"auto\"` (the usable cores).",
    },
    Setting {
        key: "dist",
        flag: "dist",
        short: None,
        env: "DBFORK_DIST",
        value_name: "UNIT",
        shape: Shape::Value,
        help: "How tests are grouped when handed to workers: test, class, module or file. [default: test]",
        default: "`test`; `class` for `manage.py test`",
        doc: "How tests are grouped when handed to workers: `test`, `class` (a class's tests on one worker, so class-scoped fixtures are set up once), `module` or `file`.",
    },
    Setting {
        key: "shard",
        flag: "shard",
        short: None,
        env: "DBFORK_SHARD",
        value_name: "K/N",
        shape: Shape::Value,
        help: "Run only shard K of N of the suite (CI jobs in parallel; `dbfork report merge` joins their --json reports), split by the recorded test durations; `auto` reads the job's index from GitLab, CircleCI or Buildkite. [default: the whole suite]",
        default: "the whole suite",
        doc: "Run only shard K of N (`2/4`): every shard collects the whole suite and takes its part of a split by the recorded durations (units of work as `dist` groups them, longest first, each to the least loaded shard), so shards finish together; merge their `--json` reports with `dbfork report merge`. Every shard must see the same `.dbfork/timings.json` (commit it, or restore it from one cache key for all shards): each report carries the split's fingerprint and `merge` refuses reports split differently. `auto` takes K and N from `CI_NODE_INDEX`/`CI_NODE_TOTAL` (GitLab `parallel:`), `CIRCLE_NODE_INDEX`/`CIRCLE_NODE_TOTAL` (CircleCI) or `BUILDKITE_PARALLEL_JOB`/`BUILDKITE_PARALLEL_JOB_COUNT` (Buildkite). A shard with no tests passes.",
    },
    Setting {
        key: "adapter",
        flag: "adapter",
        short: None,
        env: "DBFORK_ADAPTER",
        value_name: "ADAPTER",
        shape: Shape::Value,
        help: "How dbfork drives the command: auto, pytest, django (`manage.py test`), protocol (the command speaks dbfork's worker protocol itself) or none (run it once per worker). [default: auto]",
        default: "`auto`",
        doc: "How dbfork drives the command: `pytest` (dbfork collects once and hands out tests), `django` (the same for `manage.py test`, through `dbfork_django`), `protocol` (the same for a command that speaks dbfork's worker protocol itself, e.g. an adapter for another language: no controller, no Python packages; see [conformance/README.md](../conformance/README.md)), `none` (the command runs once per slot and splits its own work), `auto` (pytest when the command is pytest, django when it is `manage.py test`, `django-admin test`, `python -m django test` or a `runtests.py` or `run_tests.py` script).",
    },
    Setting {
        key: "timeout",
        flag: "timeout",
        short: None,
        env: "DBFORK_TIMEOUT",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "Kill a worker whose test runs longer than this and report the test as timed out. [default: none]",
        default: "none",
        doc: "A test that runs longer is reported as timed out and its worker is killed and replaced (without an adapter: the limit for each worker's whole command).",
    },
    Setting {
        key: "max_worker_restarts",
        flag: "max-worker-restarts",
        short: None,
        env: "DBFORK_MAX_WORKER_RESTARTS",
        value_name: "N",
        shape: Shape::Value,
        help: "Replacement workers allowed after crashes and timeouts, in all. [default: 4 x N]",
        default: "4 × jobs",
        doc: "How many replacement workers may be started in all, after crashes and timeouts.",
    },
    Setting {
        key: "grace",
        flag: "grace",
        short: None,
        env: "DBFORK_GRACE",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "How long workers get to stop after Ctrl-C or SIGTERM before they are killed. [default: 10s]",
        default: "`10s`",
        doc: "How long workers get to stop after Ctrl-C or SIGTERM before they are killed. `0` kills them at once.",
    },
    Setting {
        key: "junit",
        flag: "junit",
        short: None,
        env: "DBFORK_JUNIT",
        value_name: "FILE",
        shape: Shape::Value,
        help: "Write a JUnit XML report here.",
        default: "none",
        doc: "Write a JUnit XML report to this file.",
    },
    Setting {
        key: "json",
        flag: "json",
        short: None,
        env: "DBFORK_JSON",
        value_name: "FILE",
        shape: Shape::Value,
        help: "Write a JSON report here.",
        default: "none",
        doc: "Write a JSON report to this file.",
    },
    Setting {
        key: "clone_method",
        flag: "clone-method",
        short: None,
        env: "DBFORK_CLONE_METHOD",
        value_name: "METHOD",
        shape: Shape::Value,
        help: "How to clone: PostgreSQL file-copy|wal-log, MySQL show-create|create-like, SQLite copy|backup. [default: the backend's fastest]",
        default: "`default` (the backend's fastest)",
        doc: "How clones are made: PostgreSQL `file-copy` or `wal-log`, MySQL `show-create` or `create-like`, SQLite `copy` or `backup`.",
    },
    Setting {
        key: "connect_timeout",
        flag: "connect-timeout",
        short: None,
        env: "DBFORK_CONNECT_TIMEOUT",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "How long connecting may take. [default: 10s]",
        default: "`10s`",
        doc: "How long connecting to the server may take.",
    },
    Setting {
        key: "drop_timeout",
        flag: "drop-timeout",
        short: None,
        env: "DBFORK_DROP_TIMEOUT",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "How long dropping one database may take. [default: 30s]",
        default: "`30s`",
        doc: "How long dropping one database may take (its sessions are ended and the drop retried within it).",
    },
    Setting {
        key: "build_timeout",
        flag: "build-timeout",
        short: None,
        env: "DBFORK_BUILD_TIMEOUT",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "How long the setup command may run. [default: 30m]",
        default: "`30m`",
        doc: "How long the setup command may run.",
    },
    Setting {
        key: "start_timeout",
        flag: "start-timeout",
        short: None,
        env: "DBFORK_START_TIMEOUT",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "How long the test command may take to configure itself and each worker to connect and collect (a conftest.py or import that hangs). [default: the larger of --timeout and 2m; 10m without --timeout]",
        default: "the larger of `timeout` and `2m`; `10m` without `timeout`",
        doc: "How long the test command may take to configure itself (the controller) and each worker to connect and report its collection. A `conftest.py`, import or plugin that hangs ends the run with an error naming the worker and its last output. Separate from `timeout`, which is per test: a start on a loaded machine takes longer than a test may.",
    },
    Setting {
        key: "heartbeat_ttl",
        flag: "heartbeat-ttl",
        short: None,
        env: "DBFORK_HEARTBEAT_TTL",
        value_name: "DURATION",
        shape: Shape::Value,
        help: "A registry entry of another host, or with no owner process, counts as left behind (and the collection at the start drops it) once its heartbeat is this old; at least 6m (three heartbeats). [default: 1h]",
        default: "`1h`",
        doc: "A registry entry whose owner this dbfork cannot see (another host, container/PID namespace or boot) or without an owner process (`db clone --owner none`) counts as left behind once its heartbeat is this old; the collection at the start of every command that makes or drops something (not `db list`, not `db gc --dry-run`) then drops it and says so. At least `6m`: a run renews its clones' heartbeat every 2 minutes, and a shorter TTL would drop a live run's clones.",
    },
    Setting {
        key: "template_cache",
        flag: "template-cache",
        short: None,
        env: "DBFORK_TEMPLATE_CACHE",
        value_name: "DIR",
        shape: Shape::Value,
        help: "A directory of exported templates (a CI cache): restored instead of running the setup when the fingerprint matches, written after each build. Empty: off.",
        default: "none (off)",
        doc: "A directory of exported templates, one file per fingerprint and backend (`<fingerprint>.<backend>.dbfork-template`). When no template with the fingerprint is on the server, a sound file there is restored instead of running the setup; after every build the new template is written there. Meant for CI caches: see [ci.md](ci.md). An empty value turns it off.",
    },
    Setting {
        key: "template_cache_size",
        flag: "template-cache-size",
        short: None,
        env: "DBFORK_TEMPLATE_CACHE_SIZE",
        value_name: "SIZE",
        shape: Shape::Value,
        help: "The most the template cache directory may hold; least recently used files go first. [default: 2GiB]",
        default: "`2GiB`",
        doc: "The most the cache directory may hold; after a write, the least recently used files (a restore counts as a use) are removed until it fits. Bytes, or `500MB`, `2GiB`.",
    },
    Setting {
        key: "keep_templates",
        flag: "keep-templates",
        short: None,
        env: "DBFORK_KEEP_TEMPLATES",
        value_name: "N",
        shape: Shape::Value,
        help: "After a build, keep the N most recently used templates of the same setup on the server and drop the older ones (not one a running run still clones from); 0 keeps all. [default: 3]",
        default: "`3`",
        doc: "After every build, the templates of the same setup (the project's Django setup, or the same `setup` command) beyond the N most recently used are dropped, so trying other label sets, branches or settings does not pile templates up on a server; one that a run still alive clones from is kept. `0` keeps every template (`dbfork db gc --older-than` still removes unused ones).",
    },
    Setting {
        key: "incremental",
        flag: "incremental",
        short: None,
        env: "DBFORK_INCREMENTAL",
        value_name: "BOOL",
        shape: Shape::Switch,
        help: "Grow a new template from the nearest earlier one when only input files were added (new migrations): clone it and run the setup again on the clone. [default: on for the Django setup dbfork runs itself, off for a --setup command (it must be safe to rerun)]",
        default: "on for the Django setup dbfork runs itself; off for `setup`",
        doc: "When no template matches but an earlier template of the same setup was built from a subset of today's inputs with the same contents (only new files, e.g. new migrations), clone it (or restore it from the cache) and run the setup on the clone: Django's `migrate` then applies only the new migrations. A changed or removed input, or a changed setup or setting, always means a full build. Turn it on for a `setup` command only if running it again on its own result is correct.",
    },
];

/// The setting with this configuration key.
pub fn by_key(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

/// The settings table of `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out =
        String::from("| key | flag | variable | default | meaning |\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let mut flag = format!("`--{}`", s.flag);
        if let Some(short) = s.short {
            flag = format!("`-{short}`, {flag}");
        }
        let mut env = format!("`{}`", s.env);
        if s.shape == Shape::List {
            flag.push_str(" (repeatable)");
            env.push_str(" (comma-separated)");
        }
        out.push_str(&format!(
            "| `{}` | {flag} | {env} | {} | {} |\n",
            s.key, s.default, s.doc
        ));
    }
    out
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
            assert!(!s.help.is_empty() && !s.doc.is_empty(), "{}", s.key);
            assert!(s.key.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }
}

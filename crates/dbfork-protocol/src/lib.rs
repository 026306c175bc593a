//! The worker protocol: how a test process (through an adapter such as the
//! pytest plugin in `python/dbfork_pytest`) and `dbfork run` talk. This crate is
//! the one place it is defined; adapters and clients in any language follow it.
//!
//! # Transport
//!
//! `dbfork run` listens on a Unix stream socket whose path it puts in the
//! worker's environment as `DBFORK_SOCKET`. Each worker process opens one
//! connection and keeps it for its whole life. Every message is one JSON object
//! on one line (UTF-8, `\n`-terminated), with `"v": 1` (this [`VERSION`]) and a
//! `"type"`. A worker's lease on its slot lives exactly as long as its
//! connection: when it closes without a `bye`, dbfork treats the worker as
//! crashed at once (the test it had started is reported as crashed, the tests
//! it had not started go back to the queue, its clone is remade). When dbfork's
//! end closes, the worker must exit.
//!
//! # Environment of a worker
//!
//! | variable | meaning |
//! |---|---|
//! | `DBFORK_SOCKET` | the socket to connect to (absent: no adapter is wanted) |
//! | `DBFORK_WORKER_ID` | this process's id for `hello` (slot and generation, e.g. `1.0`) |
//! | `DBFORK_WORKER` / `DBFORK_WORKERS` | the slot (0-based) and the number of slots |
//! | `PYTEST_XDIST_WORKER` / `PYTEST_XDIST_WORKER_COUNT` | `gw<slot>` and the count, as pytest-xdist sets them |
//! | `DATABASE_URL`, `DBFORK_DATABASE_URL`, `DBFORK_DATABASE_NAME`, backend variables | the slot's clone |
//! | `DBFORK_DATABASES` | extra aliases' clones (`--alias`): JSON, alias to name (SQLite: path) |
//! | `DBFORK_FRESH` | `1` with `--fresh-transactional`: transactional tests may ask for a fresh clone |
//! | `DBFORK_ROLE` | `controller` in the run's controller process; absent in workers |
//! | `DBFORK_DJANGO` | `1` when the template is the Django project's: workers point Django at their clones |
//! | `DBFORK_FORKING` | `1` in the controller when dbfork forks the workers from it (see below) |
//!
//! # Conversation
//!
//! ```text
//! worker                                   dbfork
//!   hello {worker_id, pid, adapter}   ->
//!   collected {tests, errors}         ->   (the first worker's list is the run's;
//!                                           every other worker's must equal it;
//!                                           it also counts as the first `want`)
//!                                     <-   run {tests: [indices]}
//!   started {index}                   ->
//!   result {index, phases | outcome}  ->
//!   want                              ->   (at most one outstanding)
//!                                     <-   run {...} | stop
//!                                     <-   steal {tests}
//!   released {tests}                  ->
//!   fresh                             ->   (only with DBFORK_FRESH=1)
//!                                     <-   fresh {database}
//!   bye                               ->   (then the process exits)
//! ```
//!
//! A worker that exits with [`EXIT_RUN_AGAIN`] after `bye` started a second
//! test run in its process, which dbfork does not run: the run fails once the
//! other workers are through.
//!
//! # The controller
//!
//! Before any worker starts, dbfork starts the test command once more as the
//! run's *controller* (`DBFORK_ROLE=controller`, its own socket), as
//! pytest-xdist's controller process: the tool configures itself once there
//! (conftest files, plugins, Django's settings), and the controller says what
//! it found. dbfork passes the controller's environment on to every worker
//! (values made during configuration, such as a per-run data directory, are
//! shared as with pytest-xdist), and, for a Django project, fingerprints the
//! template by what the controller reports and has the controller build it
//! with the project's own test database setup. The controller runs no test; it
//! stays until the run ends, then gets `stop`.
//!
//! ```text
//! controller                               dbfork
//!   hello {worker_id, pid, adapter}   ->
//!   configured {env, django, note}    ->   (fingerprint; the template exists?)
//!                                     <-   build {database: {url, name}}   (only if not)
//!   built {tables, seconds, error}    ->
//!                                     <-   fork {slot, generation, env, unset, output}
//!   forked {slot, generation, pid | error} ->
//!   exited {slot, generation, status} ->   (when a forked worker ends)
//!                                     <-   stop   (when the run ends)
//!   bye                               ->   (once every forked worker exited)
//! ```
//!
//! With `DBFORK_FORKING=1` in its environment (pytest on Linux, unless `--fork=false`),
//! the controller is where the workers come from: for each `fork` it forks its
//! configured, collected session into a worker (its own process group, killed
//! if the controller dies), which then says `hello` on its own connection like
//! any worker. Every worker thus has exactly the controller's settings and
//! collected tests, and N workers cost one start instead of N. A controller that
//! cannot fork its session (its configuration read a variable that differs per
//! worker, it runs threads, the template is not Django's) answers `forked` with
//! the reason, and dbfork starts the workers as processes of their own.
//!
//! Indices refer to the `collected` list. A worker runs what it is given in
//! the order given; it keeps the first test of its queue as the `nextitem` of
//! the test it is running, so it asks for more work (`want`) while it still
//! holds one test it has not started, and runs that last test only once it
//! knows what follows it (more work, or `stop`). On `steal` it gives back
//! those of the named tests it has neither started nor committed to as the
//! next one, and says which in `released` (possibly none). On `stop` it runs
//! what it holds, finishes the session, sends `bye` and exits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version every message carries in `"v"`.
pub const VERSION: u32 = 1;

/// The exit status of a worker that, after `bye`, started a second test run
/// in the same process (a script that runs Django's `run_tests()` once per
/// label set): dbfork runs one test run per process, so that run's tests were
/// not run; the worker's last output says which. dbfork fails the run with a
/// usage error once the other workers are through.
pub const EXIT_RUN_AGAIN: i32 = 71;

/// Environment variables of a worker (see the module docs).
pub mod env {
    pub const SOCKET: &str = "DBFORK_SOCKET";
    pub const WORKER_ID: &str = "DBFORK_WORKER_ID";
    pub const WORKER: &str = "DBFORK_WORKER";
    pub const WORKERS: &str = "DBFORK_WORKERS";
    pub const RUN_ID: &str = "DBFORK_RUN_ID";
    pub const FRESH: &str = "DBFORK_FRESH";
    pub const ROLE: &str = "DBFORK_ROLE";
    pub const DJANGO: &str = "DBFORK_DJANGO";
    pub const FORKING: &str = "DBFORK_FORKING";
    /// `dbfork run --cov`: every process measures coverage (coverage.py).
    pub const COV: &str = "DBFORK_COV";
    /// The database a process is given, also as `DATABASE_URL`.
    pub const DATABASE_URL: &str = "DBFORK_DATABASE_URL";
    /// Its name on the server (SQLite: the clone's name; its path is
    /// [`SQLITE_PATH`]).
    pub const DATABASE_NAME: &str = "DBFORK_DATABASE_NAME";
    /// `postgres`, `mysql` or `sqlite`.
    pub const BACKEND: &str = "DBFORK_BACKEND";
    /// JSON: each extra database alias to its clone's name (SQLite: path).
    pub const DATABASES: &str = "DBFORK_DATABASES";
    /// SQLite: the database file's path.
    pub const SQLITE_PATH: &str = "DBFORK_SQLITE_PATH";
    pub const XDIST_WORKER: &str = "PYTEST_XDIST_WORKER";
    pub const XDIST_WORKER_COUNT: &str = "PYTEST_XDIST_WORKER_COUNT";
}

/// One collected test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestItem {
    /// The test's id as the test tool prints it (pytest's node id).
    pub id: String,
    /// The file it lives in, relative to the tool's root directory.
    pub file: String,
    /// The class it belongs to, if any (for `--dist class`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// The order group: on each worker, tests of a lower group run before
    /// tests of a higher one, as the tool orders them in a serial run
    /// (pytest-django: database tests 0, transactional ones 1, the rest 2;
    /// a transactional test empties the tables, so data from migrations is
    /// gone for every database test after it). 0 when the tool has no such order.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A file or module that failed to collect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectError {
    pub id: String,
    pub longrepr: String,
}

/// One phase of a test (pytest: setup, call, teardown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// `setup`, `call` or `teardown`.
    pub when: String,
    /// `passed`, `failed` or `skipped`.
    pub outcome: String,
    /// What the tool counts this phase as in its summary (pytest's
    /// `pytest_report_teststatus` category: `passed`, `failed`, `error`,
    /// `skipped`, `xfailed`, `xpassed`, ...); empty when it does not count.
    #[serde(default)]
    pub category: String,
    /// Seconds.
    #[serde(default)]
    pub duration: f64,
    /// The failure text or skip reason, as the tool would print it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longrepr: Option<String>,
}

/// A finished test. A tool with pytest's phases sends them (dbfork derives
/// the outcome, duration and failure text from them); any other tool sends
/// `outcome` (with `duration` and `longrepr`) and no phases. When both are
/// given, `outcome` decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub index: usize,
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// The outcome in the tool's neutral words: `passed`, `failed`, `error`
    /// (failed outside the test body: set-up or tear-down), `skipped`,
    /// `xfailed` (an expected failure), `xpassed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Seconds; without phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// The failure text or skip reason; without phases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longrepr: Option<String>,
    /// Output the test wrote while it ran (captured by the tool).
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
}

/// What a controller found of a Django project, configured as its tests are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DjangoReport {
    /// `DJANGO_SETTINGS_MODULE` as Django loaded it (empty for `settings.configure()`).
    #[serde(default)]
    pub settings_module: String,
    /// What decides the template's schema, by name (Django version, apps,
    /// migration modules, models without migrations, each alias's engine and
    /// `TEST` settings, ...): part of the fingerprint, and what workers are
    /// checked against.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// The files the template depends on (every migration file of every
    /// installed app, fixtures, settings, conftest and pytest configuration).
    #[serde(default)]
    pub inputs: Vec<InputFile>,
    /// Each alias's effective settings.
    #[serde(default)]
    pub databases: BTreeMap<String, AliasSettings>,
}

/// An input file: its name (relative to the project or to the import path
/// entry it lives in: the same on every machine) and where it is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    pub name: String,
    pub path: String,
}

/// One alias of Django's `DATABASES`, as the tests would connect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AliasSettings {
    /// `connection.vendor`: `postgresql`, `mysql`, `sqlite`, ...
    pub vendor: String,
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// `TEST['MIRROR']`: the alias this one mirrors.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Django's `test_db_signature()`: aliases with equal signatures share one database.
    #[serde(default)]
    pub signature: String,
}

/// The database a controller builds the template into: dbfork created it
/// empty and registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildTarget {
    /// Its URL, password included (the controller's connection settings).
    pub url: String,
    /// Its name on the server; the file's path on SQLite.
    pub name: String,
}

/// What a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Hello {
        worker_id: String,
        pid: u32,
        /// e.g. `pytest`.
        adapter: String,
        #[serde(default)]
        adapter_version: String,
        /// The tool's "stop after N failures" (pytest's `-x`/`--maxfail`
        /// wherever it was given, Django's `--failfast`) as the tool itself
        /// resolved it; 0: never. Absent: dbfork reads the command line.
        /// With 1, a worker whose test failed may end after that test's
        /// `result` without running what it holds (the committed next test
        /// included): it says `bye`, and dbfork takes those tests back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maxfail: Option<usize>,
    },
    Collected {
        tests: Vec<TestItem>,
        #[serde(default)]
        errors: Vec<CollectError>,
        /// Files or modules skipped whole while collecting (pytest's
        /// module-level skip); each counts as one skipped in the summary.
        #[serde(default)]
        skipped: Vec<CollectError>,
        /// The tool goes on despite collection errors (pytest
        /// `--continue-on-collection-errors`).
        #[serde(default)]
        continue_on_errors: bool,
        /// What this worker's Django settings say the template is (the
        /// facts of [`DjangoReport`]), when the template is Django's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        django_facts: Option<BTreeMap<String, String>>,
    },
    /// The controller's report, once it configured itself.
    Configured {
        /// The controller's whole environment after configuring.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// The Django project, if the tool configured one.
        #[serde(default)]
        django: Option<DjangoReport>,
        /// Why no Django project was found, where one might be expected.
        #[serde(default)]
        note: Option<String>,
        /// The controller's Python interpreter (`sys.executable`).
        #[serde(default)]
        python: Option<String>,
    },
    /// The controller's answer to `build`.
    Built {
        /// The failure, exception first, then its traceback.
        #[serde(default)]
        error: Option<String>,
        /// Tables in the template afterwards.
        #[serde(default)]
        tables: Option<u64>,
        #[serde(default)]
        seconds: f64,
    },
    Started {
        index: usize,
    },
    Result(TestResult),
    Want,
    Released {
        tests: Vec<usize>,
    },
    /// The next test wants a fresh clone of its own (`dbfork run
    /// --fresh-transactional`, announced by `DBFORK_FRESH=1`): dbfork answers
    /// with [`RunnerMessage::Fresh`] and drops the worker's previous fresh
    /// clone. The worker's own clone stays as it is.
    Fresh,
    Bye,
    /// The controller's answer to [`RunnerMessage::Fork`]: the worker's pid,
    /// or why this session cannot be forked (dbfork then starts that worker,
    /// and every later one, as a process of its own).
    Forked {
        slot: usize,
        generation: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// From the controller: a worker forked from it exited, with this raw
    /// wait status (as `waitpid` returns it; absent: unknown).
    Exited {
        slot: usize,
        generation: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<i32>,
    },
}

/// What dbfork sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerMessage {
    Run {
        tests: Vec<usize>,
    },
    Steal {
        tests: Vec<usize>,
    },
    /// The answer to a worker's `fresh`: a clone of the template made ahead
    /// for it alone (its name on the server; SQLite: the file's path).
    Fresh {
        database: String,
    },
    /// To the controller: build the template into this empty database.
    Build {
        database: BuildTarget,
    },
    /// To the controller (with `DBFORK_FORKING=1`): fork worker `slot`.`generation`
    /// from the configured, collected session. The child takes `env` (after
    /// removing `unset`), writes its stdout and stderr to the FIFO `output`,
    /// connects to `DBFORK_SOCKET` from `env` and is a worker from then on.
    Fork {
        slot: usize,
        generation: usize,
        env: BTreeMap<String, String>,
        unset: Vec<String>,
        output: String,
    },
    Stop,
}

/// A message with its version, as it travels.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    message: T,
}

/// Why a line could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("protocol version {found} is not the {expected} this dbfork speaks; install matching versions of dbfork and its adapter")]
    Version { found: u32, expected: u32 },
    #[error("not a valid protocol message: {0}")]
    Json(#[from] serde_json::Error),
}

/// One line (without the newline) for a message.
pub fn encode<T: Serialize>(message: &T) -> String {
    let envelope = Envelope {
        v: VERSION,
        message,
    };
    // Serializing these types cannot fail: no maps with non-string keys.
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// Reads one line.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &str) -> Result<T, DecodeError> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let Version { v } = serde_json::from_str(line)?;
    if v != VERSION {
        return Err(DecodeError::Version {
            found: v,
            expected: VERSION,
        });
    }
    let envelope: Envelope<T> = serde_json::from_str(line)?;
    Ok(envelope.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shape() {
        let m = WorkerMessage::Started { index: 3 };
        let line = encode(&m);
        assert_eq!(line, r#"{"v":1,"type":"started","index":3}"#);
        assert_eq!(decode::<WorkerMessage>(&line).unwrap(), m);
        let r = RunnerMessage::Run { tests: vec![1, 2] };
        assert_eq!(encode(&r), r#"{"v":1,"type":"run","tests":[1,2]}"#);
        assert_eq!(
            encode(&RunnerMessage::Stop),
            r#"{"v":1,"type":"stop"}"#.to_string()
        );
        let result = r#"{"v":1,"type":"result","index":0,"phases":[{"when":"call","outcome":"passed","category":"passed","duration":0.5}]}"#;
        match decode::<WorkerMessage>(result).unwrap() {
            WorkerMessage::Result(r) => assert_eq!(r.phases[0].duration, 0.5),
            other => panic!("{other:?}"),
        }
        // A tool without pytest's phases: the outcome in neutral words.
        let neutral = r#"{"v":1,"type":"result","index":2,"outcome":"failed","duration":0.25,"longrepr":"expected 1, got 2"}"#;
        match decode::<WorkerMessage>(neutral).unwrap() {
            WorkerMessage::Result(r) => {
                assert!(r.phases.is_empty());
                assert_eq!(r.outcome.as_deref(), Some("failed"));
                assert_eq!(r.duration, Some(0.25));
                assert_eq!(r.longrepr.as_deref(), Some("expected 1, got 2"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let err = decode::<WorkerMessage>(r#"{"v":2,"type":"want"}"#).unwrap_err();
        assert!(err.to_string().contains("protocol version 2"), "{err}");
        assert!(decode::<WorkerMessage>("not json").is_err());
    }
}

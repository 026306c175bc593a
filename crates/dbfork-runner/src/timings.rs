//! How long each test took in earlier runs, so the scheduler can hand out the
//! slow tests first and balance the workers. Kept in `<state_dir>/timings.json`:
//!
//! ```json
//! {"version": 1, "tests": {"tests/test_a.py::test_x": {"seconds": 0.42, "runs": 3, "updated": 1700000000}}}
//! ```
//!
//! The store is a cache: a missing, unreadable or corrupt file means "no
//! history" (with a warning), never a failed run.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use dbfork_meta::report::{Outcome, RunReport};

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "timings.json";

/// The layout version this code reads and writes.
const VERSION: u32 = 1;

/// Entries of tests that have not run for this long are dropped, so renamed
/// and deleted tests do not pile up forever.
const MAX_AGE_SECS: u64 = 30 * 86_400;

/// How much a new measurement counts against the history: enough to follow a
/// test that got slower within a couple of runs, not so much that one noisy
/// run (a cold cache, a busy machine) decides the estimate alone.
const NEW_WEIGHT: f64 = 0.5;

/// The estimate for a test when nothing at all is known. Any positive constant
/// works: with every test equal, the scheduler balances by count.
const DEFAULT_ESTIMATE: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Entry {
    /// The estimate in seconds.
    seconds: f64,
    /// How many runs the estimate is made of.
    runs: u32,
    /// Unix time (seconds) of the last run that measured the test.
    updated: u64,
}

#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    tests: &'a BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct FileOwned {
    tests: BTreeMap<String, Entry>,
}

/// Estimated durations of tests, from earlier runs.
#[derive(Debug, Clone)]
pub struct Timings {
    tests: BTreeMap<String, Entry>,
    /// The estimate for tests without history (see [`Timings::estimate`]),
    /// kept up to date on every change so `estimate` stays cheap for
    /// schedulers that ask once per test.
    fallback: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            tests: BTreeMap::new(),
            fallback: DEFAULT_ESTIMATE,
        }
    }
}

impl Timings {
    /// Reads the store in `state_dir`. A missing file gives an empty store;
    /// an unreadable or corrupt one, or one of another version, gives an empty
    /// store and a warning.
    pub fn load(state_dir: &Path) -> Timings {
        let path = state_dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Timings::default(),
            Err(e) => {
                tracing::warn!(
                    "cannot read the timings store {}: {e}; scheduling without earlier durations this run",
                    path.display()
                );
                return Timings::default();
            }
        };
        match parse(&text) {
            Ok(tests) => {
                let mut timings = Timings {
                    tests,
                    fallback: DEFAULT_ESTIMATE,
                };
                timings.update_fallback();
                timings
            }
            Err(why) => {
                tracing::warn!(
                    "ignoring the timings store {}: {why}; scheduling without earlier durations, and the file is rewritten after this run",
                    path.display()
                );
                Timings::default()
            }
        }
    }

    /// The recorded estimate of a test, in seconds.
    pub fn get(&self, id: &str) -> Option<f64> {
        self.tests.get(id).map(|e| e.seconds)
    }

    /// How many tests have an estimate.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The expected duration of a test in seconds: its recorded estimate; for
    /// a test without history (new, or renamed) the median of the known
    /// tests, because a new test is most likely a typical one and the median,
    /// unlike the mean, is not pulled up by a few slow tests; with no history
    /// at all, 1 second (every test equal, so the workers balance by count).
    pub fn estimate(&self, id: &str) -> f64 {
        self.get(id).unwrap_or(self.fallback)
    }

    /// Folds the durations of a finished run into the store: each test that
    /// ran (crashed and timed-out tests too: how long a test hangs matters
    /// to the scheduler as much as how long it passes) moves its estimate
    /// halfway to the new duration. Tests that did not run keep theirs;
    /// entries not updated for 30 days are dropped.
    pub fn record(&mut self, report: &RunReport) {
        self.record_at(report, unix_now());
    }

    fn record_at(&mut self, report: &RunReport, now: u64) {
        for test in &report.tests {
            if test.outcome == Outcome::NotRun || !test.duration.is_finite() || test.duration < 0.0
            {
                continue;
            }
            self.tests
                .entry(test.id.clone())
                .and_modify(|e| {
                    e.seconds = (1.0 - NEW_WEIGHT) * e.seconds + NEW_WEIGHT * test.duration;
                    e.runs = e.runs.saturating_add(1);
                    e.updated = now;
                })
                .or_insert(Entry {
                    seconds: test.duration,
                    runs: 1,
                    updated: now,
                });
        }
        self.tests
            .retain(|_, e| now.saturating_sub(e.updated) <= MAX_AGE_SECS);
        self.update_fallback();
    }

    /// Writes the store to `state_dir` (created if missing), atomically so a
    /// run killed while saving leaves the previous store intact.
    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        let path: PathBuf = state_dir.join(FILE_NAME);
        let file = FileRef {
            version: VERSION,
            tests: &self.tests,
        };
        let mut bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        bytes.push(b'\n');
        crate::report::write_atomic(&path, &bytes)
    }

    fn update_fallback(&mut self) {
        let mut known: Vec<f64> = self.tests.values().map(|e| e.seconds).collect();
        self.fallback = if known.is_empty() {
            DEFAULT_ESTIMATE
        } else {
            known.sort_by(f64::total_cmp);
            let mid = known.len() / 2;
            if known.len() % 2 == 1 {
                known[mid]
            } else {
                (known[mid - 1] + known[mid]) / 2.0
            }
        };
    }
}

/// The entries of a store file, or why it cannot be used.
fn parse(text: &str) -> Result<BTreeMap<String, Entry>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("it is not valid JSON ({e})"))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "it has version {v}, this dbfork reads version {VERSION}"
            ))
        }
        None => return Err("it has no version".to_string()),
    }
    let file: FileOwned = serde_json::from_value(value)
        .map_err(|e| format!("it does not have the expected layout ({e})"))?;
    let mut tests = file.tests;
    // Hand edits or a bug must not hand the scheduler nonsense.
    tests.retain(|_, e| e.seconds.is_finite() && e.seconds >= 0.0);
    Ok(tests)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfork_meta::report::TestRecord;

    fn test(id: &str, outcome: Outcome, duration: f64) -> TestRecord {
        TestRecord {
            index: 0,
            id: id.into(),
            file: "tests/test_a.py".into(),
            class: None,
            outcome,
            duration,
            slot: Some(0),
            worker_id: Some("0.0".into()),
            phases: vec![],
            longrepr: None,
            stdout: String::new(),
            stderr: String::new(),
            tries: Vec::new(),
            diagnosis: None,
        }
    }

    fn run(tests: Vec<TestRecord>) -> RunReport {
        RunReport {
            command: vec!["pytest".into()],
            run_id: "r".into(),
            duration: 1.0,
            started_at: 0.0,
            exit_code: 0,
            interrupted: false,
            slots: vec![],
            tests,
            collect_errors: vec![],
            collect_skipped: vec![],
            shard: None,
            bisect: None,
        }
    }

    #[test]
    fn missing_store_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let timings = Timings::load(dir.path());
        assert!(timings.is_empty());
        assert_eq!(timings.estimate("anything"), 1.0);
    }

    #[test]
    fn corrupt_or_foreign_store_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        for text in [
            "{not json",
            r#"{"version": 2, "tests": {}}"#,
            r#"{"tests": {}}"#,
            r#"{"version": 1, "tests": {"a": {"seconds": "fast"}}}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(Timings::load(dir.path()).is_empty(), "{text}");
        }
        // A directory where the file should be: unreadable.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(Timings::load(dir.path()).is_empty());
    }

    #[test]
    fn record_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".dbfork");
        let mut timings = Timings::load(&state);
        timings.record_at(
            &run(vec![
                test("a", Outcome::Passed, 2.0),
                test("b", Outcome::Failed, 4.0),
                test("hang", Outcome::TimedOut, 30.0),
                test("boom", Outcome::Crashed, 0.5),
                test("never", Outcome::NotRun, 0.0),
            ]),
            1_000,
        );
        assert_eq!(timings.len(), 4);
        assert_eq!(timings.get("never"), None);
        assert_eq!(timings.get("hang"), Some(30.0));
        timings.save(&state).unwrap();

        let mut again = Timings::load(&state);
        assert_eq!(again.len(), 4);
        assert_eq!(again.get("a"), Some(2.0));
        // Weighted: halfway between old and new; tests not in the run are kept.
        again.record_at(&run(vec![test("a", Outcome::Passed, 4.0)]), 2_000);
        assert_eq!(again.get("a"), Some(3.0));
        assert_eq!(again.get("b"), Some(4.0));
        again.save(&state).unwrap();

        let text = std::fs::read_to_string(state.join(FILE_NAME)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["tests"]["a"]["runs"], 2);
        assert_eq!(value["tests"]["a"]["updated"], 2_000);
        assert_eq!(value["tests"]["b"]["runs"], 1);
        // Only the store is left in the directory (no temporary files).
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
    }

    #[test]
    fn old_entries_are_dropped() {
        let mut timings = Timings::default();
        timings.record_at(&run(vec![test("old", Outcome::Passed, 1.0)]), 0);
        timings.record_at(&run(vec![test("new", Outcome::Passed, 1.0)]), MAX_AGE_SECS);
        assert_eq!(timings.get("old"), Some(1.0));
        timings.record_at(
            &run(vec![test("new", Outcome::Passed, 1.0)]),
            MAX_AGE_SECS + 1,
        );
        assert_eq!(timings.get("old"), None);
        assert_eq!(timings.get("new"), Some(1.0));
    }

    #[test]
    fn estimate_falls_back_to_the_median() {
        let mut timings = Timings::default();
        assert_eq!(timings.estimate("x"), 1.0);
        timings.record_at(
            &run(vec![
                test("a", Outcome::Passed, 0.1),
                test("b", Outcome::Passed, 0.3),
                test("c", Outcome::Passed, 100.0),
            ]),
            10,
        );
        assert_eq!(timings.estimate("c"), 100.0);
        assert_eq!(timings.estimate("new"), 0.3);
        timings.record_at(&run(vec![test("d", Outcome::Passed, 0.5)]), 10);
        assert_eq!(timings.estimate("new"), 0.4);
    }
}

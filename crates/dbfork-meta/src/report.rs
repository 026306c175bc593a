//! What a run produced, in the terms reports and the terminal use: one
//! [`TestRecord`] per collected test and a [`RunReport`] around them; the
//! JSON report's layout ([`ReportFile`], versioned by [`JSON_VERSION`]),
//! read back by [`read_json`] and merged across runs (CI shards) by
//! [`merge`].

use std::collections::BTreeMap;

use dbfork_protocol::Phase;
use serde::{Deserialize, Serialize};

/// The outcome of one test, worst phase first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    /// Failed in setup or teardown.
    Error,
    Skipped,
    XFailed,
    XPassed,
    /// The worker died while running it.
    Crashed,
    /// It ran longer than `--timeout`; its worker was killed.
    TimedOut,
    /// Never run: the run was interrupted or every worker was lost.
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Skipped => "skipped",
            Outcome::XFailed => "xfailed",
            Outcome::XPassed => "xpassed",
            Outcome::Crashed => "crashed",
            Outcome::TimedOut => "timed_out",
            Outcome::NotRun => "not_run",
        }
    }

    /// An outcome a worker may report (`result.outcome`); dbfork's own
    /// (crashed, timed out, not run) are not among them.
    pub fn parse(word: &str) -> Option<Outcome> {
        Some(match word {
            "passed" => Outcome::Passed,
            "failed" => Outcome::Failed,
            "error" => Outcome::Error,
            "skipped" => Outcome::Skipped,
            "xfailed" => Outcome::XFailed,
            "xpassed" => Outcome::XPassed,
            _ => return None,
        })
    }

    /// Whether this outcome makes the run fail.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::Error | Outcome::Crashed | Outcome::TimedOut
        )
    }

    /// The outcome of a test from its phases (pytest's categories).
    pub fn from_phases(phases: &[Phase]) -> Outcome {
        let failed_in = |when: &str| {
            phases
                .iter()
                .any(|p| p.when == when && p.outcome == "failed")
        };
        if failed_in("call") {
            // A strict xpass is reported by pytest as a failed call.
            return Outcome::Failed;
        }
        if failed_in("setup") || failed_in("teardown") {
            return Outcome::Error;
        }
        let main = phases
            .iter()
            .find(|p| p.when == "call")
            .or_else(|| phases.iter().find(|p| p.when == "setup"));
        match main.map(|p| p.category.as_str()) {
            Some("xfailed") => Outcome::XFailed,
            Some("xpassed") => Outcome::XPassed,
            Some("skipped") => Outcome::Skipped,
            Some("failed") => Outcome::Failed,
            Some("error") => Outcome::Error,
            _ if main.is_some_and(|p| p.outcome == "skipped") => Outcome::Skipped,
            _ => Outcome::Passed,
        }
    }
}

/// One test of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestRecord {
    /// Position in the collected list.
    pub index: usize,
    /// The tool's test id (pytest node id).
    pub id: String,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub outcome: Outcome,
    /// Seconds, all phases.
    pub duration: f64,
    /// The slot (0-based) whose worker ran it, `None` if it never ran.
    pub slot: Option<usize>,
    /// The worker process's id (`<slot>.<generation>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub phases: Vec<Phase>,
    /// The failure text (all failed phases, or what dbfork saw for crashes and timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longrepr: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// Every time it ran, when it ran more than once (`--retries`, and the
    /// probes that classify a failure), in order: the run's own try first.
    /// Empty when it ran once; the record's own fields are its final try's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tries: Vec<Try>,
    /// What kind of failure it is, when dbfork classified it (`--classify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// Why a test ran again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TryKind {
    /// Its place in the run.
    Run,
    /// `--retries`: alone, in a fresh worker on a fresh clone.
    Retry,
    /// Classifying a failure: alone, in a fresh worker on a fresh clone.
    Alone,
    /// Classifying a failure: after the tests its worker ran before it, in
    /// their order, in a fresh worker on a fresh clone.
    Replay,
}

impl TryKind {
    /// Whether the try counts as one of the test's runs (JUnit's reruns,
    /// flakiness); the others are probes that only classify.
    pub fn counts(self) -> bool {
        matches!(self, TryKind::Run | TryKind::Retry)
    }
}

/// One run of a test among several.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Try {
    pub kind: TryKind,
    pub outcome: Outcome,
    pub duration: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longrepr: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

impl Try {
    pub fn of(kind: TryKind, record: &TestRecord) -> Try {
        Try {
            kind,
            outcome: record.outcome,
            duration: record.duration,
            worker_id: record.worker_id.clone(),
            longrepr: record.longrepr.clone(),
            stdout: record.stdout.clone(),
            stderr: record.stderr.clone(),
        }
    }
}

/// What kind of failure a failed test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// It fails alone on a fresh clone too.
    Broken,
    /// It passes alone on a fresh clone and fails again after the tests its
    /// worker ran before it: one of them leaves state it depends on.
    OrderDependent,
    /// It fails and passes in the same conditions.
    Flaky,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Broken => "broken",
            FailureClass::OrderDependent => "order-dependent",
            FailureClass::Flaky => "flaky",
        }
    }
}

/// A failure's class and what shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub class: FailureClass,
    /// What the probes showed, in words.
    pub why: String,
    /// Order-dependent: the tests its worker ran before it, in their order
    /// (the last [`Diagnosis::AFTER_KEPT`]), and how many ran before those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub earlier: usize,
    /// Order-dependent, with `--bisect`: the tests that make it fail when
    /// they run before it (what `dbfork bisect` would name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Diagnosis {
    /// How many of the tests before an order-dependent failure it keeps.
    pub const AFTER_KEPT: usize = 50;
}

impl TestRecord {
    /// It failed, then passed on a retry (`--retries`).
    pub fn is_flaky(&self) -> bool {
        !self.outcome.is_failure()
            && self
                .tries
                .iter()
                .any(|t| t.kind.counts() && t.outcome.is_failure())
    }

    /// What the summary line counts for this test: pytest's categories of
    /// its phases (a test that passed and then failed in teardown counts as
    /// `passed` and `error`), and `failed` for crashes and timeouts.
    pub fn categories(&self) -> Vec<String> {
        match self.outcome {
            Outcome::Crashed | Outcome::TimedOut => vec!["failed".to_string()],
            Outcome::NotRun => vec![],
            _ => {
                let counted: Vec<String> = self
                    .phases
                    .iter()
                    .filter(|p| !p.category.is_empty())
                    .map(|p| p.category.clone())
                    .collect();
                if counted.is_empty() {
                    vec![self.outcome.as_str().to_string()]
                } else {
                    counted
                }
            }
        }
    }
}

/// One slot of the run: its clone and the workers that held it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotReport {
    pub slot: usize,
    /// The clone's database name (the last one, when the slot was restarted).
    pub database: String,
    /// Worker processes started for the slot (1 + restarts).
    pub workers_started: usize,
    pub tests_run: usize,
    /// Seconds spent running tests.
    pub busy: f64,
}

/// A whole run, for the reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// The command that ran, as given.
    pub command: Vec<String>,
    pub run_id: String,
    /// Seconds from the start of `dbfork run` to the end of the last test.
    pub duration: f64,
    /// Unix time (seconds) the run started.
    pub started_at: f64,
    /// dbfork's exit code for the run.
    pub exit_code: i32,
    pub interrupted: bool,
    pub slots: Vec<SlotReport>,
    pub tests: Vec<TestRecord>,
    /// Collection errors: (id, text).
    pub collect_errors: Vec<(String, String)>,
    /// Modules skipped whole at collection: (id, reason).
    pub collect_skipped: Vec<(String, String)>,
    /// The part of the suite this run was (`--shard K/N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardReport>,
    /// What `dbfork bisect` found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bisect: Option<BisectReport>,
}

/// How a bisection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BisectVerdict {
    /// The culprits: no one of them can be left out.
    Found,
    /// The test fails alone on a fresh clone: nothing before it is needed.
    FailsAlone,
    /// The test passes after all the suspects too.
    NotReproduced,
    /// The run was stopped first.
    Stopped,
}

/// What `dbfork bisect` found: the tests that make `test` fail when they
/// run before it (in this order), and how many probes it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BisectReport {
    pub test: String,
    pub verdict: BisectVerdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<String>,
    pub probes: usize,
}

/// A shard's place in its suite: which of how many, the fingerprint of the
/// split it took its tests from, and how many tests the whole suite has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    /// 1-based.
    pub index: usize,
    pub total: usize,
    pub split: String,
    pub collected: usize,
}

/// Why `reports` are not the shards of one split of one suite, if they are
/// not: reports of shards split differently (they saw different timings or
/// collected different tests), a shard given twice or missing. Reports
/// without a shard pass (runs of their own, merged as they are).
pub fn check_shards(reports: &[RunReport]) -> Result<(), String> {
    let shards: Vec<&ShardReport> = reports.iter().filter_map(|r| r.shard.as_ref()).collect();
    let Some(first) = shards.first() else {
        return Ok(());
    };
    if shards.len() != reports.len() {
        return Err(
            "some reports are shards (--shard) and some are not; merge the shards of one run"
                .to_string(),
        );
    }
    if let Some(other) = shards
        .iter()
        .find(|s| (s.total, &s.split, s.collected) != (first.total, &first.split, first.collected))
    {
        return Err(format!(
            "shard {}/{} and shard {}/{} split the suite differently ({} tests, split {} against {} tests, split {}): every shard must collect the same tests and read the same timings (commit .dbfork/timings.json, or restore it from one cache key for every shard), or tests are run twice or not at all",
            first.index, first.total, other.index, other.total, first.collected, first.split, other.collected, other.split
        ));
    }
    let mut seen = vec![false; first.total];
    for shard in &shards {
        let slot = &mut seen[shard.index.clamp(1, first.total) - 1];
        if *slot {
            return Err(format!(
                "shard {}/{} is given twice",
                shard.index, shard.total
            ));
        }
        *slot = true;
    }
    let missing: Vec<String> = (1..=first.total)
        .filter(|k| !seen[k - 1])
        .map(|k| format!("{k}/{}", first.total))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the report of shard {} is missing: the merged report would leave its tests out",
            missing.join(", ")
        ));
    }
    Ok(())
}

impl RunReport {
    /// Count per summary category (`passed`, `failed`, `error`, ...).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for test in &self.tests {
            for category in test.categories() {
                *counts.entry(category).or_insert(0) += 1;
            }
        }
        if !self.collect_skipped.is_empty() {
            *counts.entry("skipped".to_string()).or_insert(0) += self.collect_skipped.len();
        }
        if !self.collect_errors.is_empty() {
            *counts.entry("error".to_string()).or_insert(0) += self.collect_errors.len();
        }
        let flaky = self.tests.iter().filter(|t| t.is_flaky()).count();
        if flaky > 0 {
            counts.insert(FLAKY.to_string(), flaky);
        }
        counts
    }

    /// pytest's closing line without the `=` rule: `1 failed, 12 passed, 3 skipped in 4.20s`,
    /// with the tests that did not run (an interrupted run, `-x`, workers lost)
    /// counted too: `3 passed, 23 not run in 5.09s`.
    pub fn summary_line(&self) -> String {
        let mut counts = self.counts();
        let not_run = self.not_run();
        if not_run > 0 {
            counts.insert("not run".to_string(), not_run);
        }
        summary_line(&counts, self.duration)
    }

    /// How many tests did not run.
    pub fn not_run(&self) -> usize {
        self.tests
            .iter()
            .filter(|t| t.outcome == Outcome::NotRun)
            .count()
    }
}

/// The version of the JSON report's layout; raised when a field changes
/// meaning or goes away (new fields do not raise it).
pub const JSON_VERSION: u32 = 1;

/// The JSON report's `summary`: what the closing line says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub counts: BTreeMap<String, usize>,
    pub line: String,
    pub exit_code: i32,
    pub duration: f64,
}

impl Summary {
    pub fn of(report: &RunReport) -> Summary {
        Summary {
            counts: report.counts(),
            line: report.summary_line(),
            exit_code: report.exit_code,
            duration: report.duration,
        }
    }
}

/// The JSON report as written: `{"version": 1, "summary": {...}}` followed
/// by the fields of [`RunReport`].
#[derive(Debug, Serialize)]
pub struct ReportFile<'a> {
    pub version: u32,
    pub summary: Summary,
    #[serde(flatten)]
    pub report: &'a RunReport,
}

impl<'a> ReportFile<'a> {
    pub fn new(report: &'a RunReport) -> Self {
        ReportFile {
            version: JSON_VERSION,
            summary: Summary::of(report),
            report,
        }
    }
}

/// Why a JSON report could not be read back.
#[derive(Debug)]
pub enum ReadError {
    /// Written by a dbfork whose layout this one does not know.
    Version(u32),
    Json(serde_json::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Version(found) => write!(
                f,
                "it is a dbfork JSON report of layout version {found}, and this dbfork reads version {JSON_VERSION}; read it with the dbfork that wrote it"
            ),
            ReadError::Json(e) => write!(f, "it is not a dbfork JSON report ({e})"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a JSON report written by `dbfork run --json`.
pub fn read_json(text: &str) -> Result<RunReport, ReadError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    #[derive(Deserialize)]
    struct Owned {
        #[serde(flatten)]
        report: RunReport,
    }
    let Version { version } = serde_json::from_str(text).map_err(ReadError::Json)?;
    if version != JSON_VERSION {
        return Err(ReadError::Version(version));
    }
    let owned: Owned = serde_json::from_str(text).map_err(ReadError::Json)?;
    Ok(owned.report)
}

/// One report of several runs of one suite split into shards (each run
/// given part of the tests, on its own machine): the tests of all, their
/// slots numbered on (shard 2's slot 0 follows shard 1's last), collection
/// errors and skips once each. The exit code is the worst: a usage error,
/// then a setup or database error, an interruption, failed tests, success;
/// "no tests" only when no shard ran any. The duration is the longest
/// shard's, the start the earliest.
pub fn merge(reports: Vec<RunReport>) -> RunReport {
    let mut merged = RunReport {
        command: reports
            .first()
            .map(|r| r.command.clone())
            .unwrap_or_default(),
        run_id: reports
            .iter()
            .map(|r| r.run_id.as_str())
            .collect::<Vec<_>>()
            .join("+"),
        duration: reports.iter().map(|r| r.duration).fold(0.0, f64::max),
        started_at: reports
            .iter()
            .map(|r| r.started_at)
            .reduce(f64::min)
            .unwrap_or_default(),
        exit_code: worst_exit_code(reports.iter().map(|r| r.exit_code)),
        interrupted: reports.iter().any(|r| r.interrupted),
        slots: Vec::new(),
        tests: Vec::new(),
        collect_errors: Vec::new(),
        collect_skipped: Vec::new(),
        shard: None,
        bisect: None,
    };
    for report in reports {
        let base = merged.slots.len();
        merged.slots.extend(report.slots.into_iter().map(|mut s| {
            s.slot += base;
            s
        }));
        for mut test in report.tests {
            test.index = merged.tests.len();
            test.slot = test.slot.map(|s| s + base);
            merged.tests.push(test);
        }
        for error in report.collect_errors {
            if !merged.collect_errors.contains(&error) {
                merged.collect_errors.push(error);
            }
        }
        for skip in report.collect_skipped {
            if !merged.collect_skipped.contains(&skip) {
                merged.collect_skipped.push(skip);
            }
        }
    }
    merged
}

fn worst_exit_code(codes: impl Iterator<Item = i32>) -> i32 {
    use crate::exit;
    let rank = |code: i32| match code {
        exit::USAGE => 5,
        exit::SETUP_OR_DATABASE => 4,
        exit::INTERRUPTED => 3,
        exit::TESTS_FAILED => 2,
        exit::OK => 1,
        exit::NO_TESTS => 0,
        _ => 6, // a code of a newer dbfork: keep it
    };
    let codes: Vec<i32> = codes.collect();
    let worst = codes.iter().copied().max_by_key(|c| rank(*c));
    match worst {
        // Some shard ran no tests while another passed: the whole passed.
        Some(exit::NO_TESTS) | None => exit::NO_TESTS,
        Some(code) => code,
    }
}

/// pytest's order of the known categories, then any others alphabetically.
const KNOWN: [&str; 8] = [
    "failed",
    "passed",
    "skipped",
    "deselected",
    "xfailed",
    "xpassed",
    "warnings",
    "error",
];

/// The count of tests that passed on a retry: said with `passed`, as
/// nextest does (`3 passed (1 flaky)`), not as a category of its own.
const FLAKY: &str = "flaky";

pub fn summary_line(counts: &BTreeMap<String, usize>, seconds: f64) -> String {
    let mut parts = Vec::new();
    for key in KNOWN {
        if let Some(n) = counts.get(key).filter(|n| **n > 0) {
            let mut part = plural(*n, key);
            if let Some(flaky) = counts.get(FLAKY).filter(|_| key == "passed") {
                part.push_str(&format!(" ({flaky} flaky)"));
            }
            parts.push(part);
        }
    }
    for (key, n) in counts {
        if !KNOWN.contains(&key.as_str()) && key != FLAKY && *n > 0 {
            parts.push(plural(*n, key));
        }
    }
    if parts.is_empty() {
        parts.push("no tests ran".to_string());
    }
    format!("{} in {seconds:.2}s", parts.join(", "))
}

fn plural(n: usize, key: &str) -> String {
    let word = match (key, n) {
        ("error", n) if n != 1 => "errors",
        ("warnings", 1) => "warning",
        _ => key,
    };
    format!("{n} {word}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(when: &str, outcome: &str, category: &str) -> Phase {
        Phase {
            when: when.into(),
            outcome: outcome.into(),
            category: category.into(),
            duration: 0.0,
            longrepr: None,
        }
    }

    #[test]
    fn outcomes_from_phases() {
        let passed = [
            phase("setup", "passed", ""),
            phase("call", "passed", "passed"),
            phase("teardown", "passed", ""),
        ];
        assert_eq!(Outcome::from_phases(&passed), Outcome::Passed);
        let teardown_error = [
            phase("setup", "passed", ""),
            phase("call", "passed", "passed"),
            phase("teardown", "failed", "error"),
        ];
        assert_eq!(Outcome::from_phases(&teardown_error), Outcome::Error);
        let skipped = [
            phase("setup", "skipped", "skipped"),
            phase("teardown", "passed", ""),
        ];
        assert_eq!(Outcome::from_phases(&skipped), Outcome::Skipped);
        let xfailed = [
            phase("setup", "passed", ""),
            phase("call", "skipped", "xfailed"),
        ];
        assert_eq!(Outcome::from_phases(&xfailed), Outcome::XFailed);
    }

    fn report(run_id: &str, exit_code: i32, outcomes: &[(&str, Outcome)]) -> RunReport {
        RunReport {
            command: vec!["pytest".into()],
            run_id: run_id.into(),
            duration: 2.0,
            started_at: 100.0,
            exit_code,
            interrupted: false,
            slots: (0..2)
                .map(|slot| SlotReport {
                    slot,
                    database: format!("dbfork_{run_id}_{slot}"),
                    workers_started: 1,
                    tests_run: 1,
                    busy: 1.0,
                })
                .collect(),
            tests: outcomes
                .iter()
                .enumerate()
                .map(|(index, (id, outcome))| TestRecord {
                    index,
                    id: id.to_string(),
                    file: "t.py".into(),
                    class: None,
                    outcome: *outcome,
                    duration: 0.5,
                    slot: Some(index % 2),
                    worker_id: Some(format!("{}.0", index % 2)),
                    phases: vec![phase("call", outcome.as_str(), outcome.as_str())],
                    longrepr: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    tries: Vec::new(),
                    diagnosis: None,
                })
                .collect(),
            collect_errors: vec![("broken.py".into(), "SyntaxError".into())],
            collect_skipped: Vec::new(),
            shard: None,
            bisect: None,
        }
    }

    #[test]
    fn shards_of_different_splits_or_missing_ones_are_refused() {
        let shard = |index, split: &str| {
            let mut r = report("r", 0, &[("t.py::a", Outcome::Passed)]);
            r.shard = Some(ShardReport {
                index,
                total: 3,
                split: split.into(),
                collected: 7,
            });
            r
        };
        assert_eq!(
            check_shards(&[shard(1, "s"), shard(3, "s"), shard(2, "s")]),
            Ok(())
        );
        assert_eq!(
            check_shards(&[report("a", 0, &[]), report("b", 0, &[])]),
            Ok(())
        );
        let why = check_shards(&[shard(1, "s"), shard(2, "x"), shard(3, "s")]).unwrap_err();
        assert!(
            why.contains("split the suite differently") && why.contains("timings.json"),
            "{why}"
        );
        let why = check_shards(&[shard(1, "s"), shard(3, "s")]).unwrap_err();
        assert!(why.contains("shard 2/3 is missing"), "{why}");
        let why = check_shards(&[shard(1, "s"), shard(1, "s"), shard(3, "s")]).unwrap_err();
        assert!(why.contains("shard 1/3 is given twice"), "{why}");
        let why = check_shards(&[shard(1, "s"), report("b", 0, &[])]).unwrap_err();
        assert!(why.contains("some reports are shards"), "{why}");
    }

    #[test]
    fn a_written_report_reads_back() {
        let original = report(
            "a1",
            1,
            &[("t.py::a", Outcome::Passed), ("t.py::b", Outcome::Failed)],
        );
        let text = serde_json::to_string(&ReportFile::new(&original)).unwrap();
        let read = read_json(&text).unwrap();
        assert_eq!(
            serde_json::to_string(&read).unwrap(),
            serde_json::to_string(&original).unwrap()
        );
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        assert!(read_json(&newer)
            .unwrap_err()
            .to_string()
            .contains("layout version 2"));
        assert!(read_json("{\"version\":1}")
            .unwrap_err()
            .to_string()
            .contains("not a dbfork JSON report"));
    }

    #[test]
    fn shards_merge_into_one_run() {
        let one = report(
            "a1",
            1,
            &[("t.py::a", Outcome::Passed), ("t.py::b", Outcome::Failed)],
        );
        let two = report("b2", 0, &[("u.py::c", Outcome::Passed)]);
        let merged = merge(vec![one, two]);
        assert_eq!(merged.run_id, "a1+b2");
        assert_eq!(merged.exit_code, 1);
        assert_eq!(
            merged.slots.iter().map(|s| s.slot).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let tests: Vec<_> = merged
            .tests
            .iter()
            .map(|t| (t.index, t.id.as_str(), t.slot))
            .collect();
        assert_eq!(
            tests,
            [
                (0, "t.py::a", Some(0)),
                (1, "t.py::b", Some(1)),
                (2, "u.py::c", Some(2))
            ]
        );
        assert_eq!(
            merged.collect_errors.len(),
            1,
            "the same error of both shards is one"
        );
        assert_eq!(
            merged.summary_line(),
            "1 failed, 2 passed, 1 error in 2.00s"
        );
        // The worst code wins; "no tests" only when no shard ran any.
        assert_eq!(worst_exit_code([0, 5].into_iter()), 0);
        assert_eq!(worst_exit_code([5, 5].into_iter()), 5);
        assert_eq!(worst_exit_code([1, 2, 0].into_iter()), 2);
        assert_eq!(worst_exit_code([1, 3, 4].into_iter()), 4);
    }

    #[test]
    fn summary_in_pytest_order() {
        let mut counts = BTreeMap::new();
        counts.insert("passed".to_string(), 12);
        counts.insert("failed".to_string(), 1);
        counts.insert("skipped".to_string(), 3);
        counts.insert("error".to_string(), 2);
        assert_eq!(
            summary_line(&counts, 4.2),
            "1 failed, 12 passed, 3 skipped, 2 errors in 4.20s"
        );
        assert_eq!(summary_line(&BTreeMap::new(), 0.5), "no tests ran in 0.50s");
        counts.insert("flaky".to_string(), 1);
        assert_eq!(
            summary_line(&counts, 4.2),
            "1 failed, 12 passed (1 flaky), 3 skipped, 2 errors in 4.20s"
        );
    }
}

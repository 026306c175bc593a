//! What a run produced, in the terms reports and the terminal use: one
//! [`TestRecord`] per collected test and a [`RunReport`] around them.

use std::collections::BTreeMap;

use dbfork_protocol::Phase;
use serde::Serialize;

/// The outcome of one test, worst phase first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct TestRecord {
    /// Position in the collected list.
    pub index: usize,
    /// The tool's test id (pytest node id).
    pub id: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    pub outcome: Outcome,
    /// Seconds, all phases.
    pub duration: f64,
    /// The slot (0-based) whose worker ran it, `None` if it never ran.
    pub slot: Option<usize>,
    /// The worker process's id (`<slot>.<generation>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub phases: Vec<Phase>,
    /// The failure text (all failed phases, or what dbfork saw for crashes and timeouts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longrepr: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl TestRecord {
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
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
        counts
    }

    /// pytest's closing line without the `=` rule: `1 failed, 12 passed, 3 skipped in 4.20s`.
    pub fn summary_line(&self) -> String {
        summary_line(&self.counts(), self.duration)
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

pub fn summary_line(counts: &BTreeMap<String, usize>, seconds: f64) -> String {
    let mut parts = Vec::new();
    for key in KNOWN {
        if let Some(n) = counts.get(key).filter(|n| **n > 0) {
            parts.push(plural(*n, key));
        }
    }
    for (key, n) in counts {
        if !KNOWN.contains(&key.as_str()) && *n > 0 {
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
    }
}

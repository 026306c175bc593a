//! The dispatcher's rules, as pure functions: what a worker's result says
//! of its test, what a crash, a timeout or a protocol fault means for the
//! test that was running, and what the run does next (go on with the others,
//! replace the worker, or give the slot up). No I/O and no state of their
//! own: the state machine (`machine.rs`) gathers the facts, asks, and acts
//! on the answer; the tests below state the rules.

use std::collections::BTreeMap;
use std::time::Duration;

use dbfork_protocol::TestResult;

use dbfork_meta::report::Outcome;

/// What a result says of its test.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Seconds.
    pub duration: f64,
    /// The failure text (or skip reason), if any.
    pub longrepr: Option<String>,
}

/// A worker's result, read: the tool-neutral `outcome` when given (an
/// unknown word is an error, saying so), else pytest's phases; the failure
/// text of the failed phases (the skip reason of a skipped test) and of
/// `longrepr`; the duration given, else the phases' sum.
pub fn result_verdict(result: &TestResult) -> Verdict {
    let (outcome, mut failure) = match result.outcome.as_deref() {
        None => (Outcome::from_phases(&result.phases), Vec::new()),
        Some(word) => match Outcome::parse(word) {
            Some(outcome) => (outcome, Vec::new()),
            None => (
                Outcome::Error,
                vec![format!("dbfork: the worker reported the outcome `{word}`, which is not one of passed, failed, error, skipped, xfailed, xpassed")],
            ),
        },
    };
    failure.extend(
        result
            .phases
            .iter()
            .filter(|p| {
                p.outcome == "failed" || (outcome == Outcome::Skipped && p.outcome == "skipped")
            })
            .filter_map(|p| p.longrepr.clone()),
    );
    if outcome != Outcome::Passed {
        failure.extend(result.longrepr.clone());
    }
    Verdict {
        outcome,
        duration: result
            .duration
            .unwrap_or_else(|| result.phases.iter().map(|p| p.duration).sum()),
        longrepr: (!failure.is_empty()).then(|| failure.join("\n")),
    }
}

/// Why a worker was lost.
#[derive(Debug, Clone, PartialEq)]
pub enum LossCause {
    /// It exited without `bye` (how, in words: "exit code 3", "signal 9").
    Exited(String),
    /// Its connection closed without `bye`.
    Disconnected,
    /// Its test ran past `--timeout`: dbfork killed it.
    Timeout(Duration),
    /// It sent something dbfork cannot read.
    Protocol(String),
}

impl LossCause {
    /// How the progress line says it: "crashed (exit code 3)", "timed out".
    pub fn summary(&self) -> String {
        match self {
            LossCause::Timeout(_) => "timed out".to_string(),
            LossCause::Exited(how) => format!("crashed ({how})"),
            LossCause::Disconnected => "crashed".to_string(),
            LossCause::Protocol(_) => "broke the protocol".to_string(),
        }
    }
}

/// The state of the run when a worker is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Going,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// dbfork stopped the run on an error of its own (the test is not to blame).
    Failed,
}

/// The outcome and failure text of the test a lost worker was running.
pub fn lost_test(cause: &LossCause, run: RunState, worker: &str) -> (Outcome, String) {
    match run {
        RunState::Interrupted => (
            Outcome::NotRun,
            "the run was interrupted while it ran".to_string(),
        ),
        RunState::Failed => (
            Outcome::NotRun,
            "not finished: the run stopped on an error".to_string(),
        ),
        RunState::Going => match cause {
            LossCause::Timeout(limit) => (
                Outcome::TimedOut,
                format!("timed out after {limit:.0?}: worker {worker} was killed"),
            ),
            LossCause::Exited(how) => (
                Outcome::Crashed,
                format!("worker {worker} crashed while running this test ({how})"),
            ),
            LossCause::Disconnected => (
                Outcome::Crashed,
                format!(
                    "worker {worker} crashed while running this test (its connection closed)"
                ),
            ),
            LossCause::Protocol(why) => (
                Outcome::Crashed,
                format!(
                    "worker {worker} sent something dbfork cannot read while running this test ({}), and was stopped",
                    truncate(why, 300)
                ),
            ),
        },
    }
}

/// What the run does after losing a worker (and recording its test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterLoss {
    /// Nothing: the run is stopping anyway.
    Nothing,
    /// No new worker: what is left is already running elsewhere; the others
    /// are fed (the lost worker's unstarted tests went back to the queue).
    FeedTheOthers,
    /// The slot is given up (the restarts are used up); `all_lost` when no
    /// slot has a worker any more, which ends the run.
    Retire { all_lost: bool },
    /// A new worker on a fresh clone takes the slot.
    Replace,
}

/// The facts [`after_loss`] decides on.
#[derive(Debug, Clone, Copy)]
pub struct LossFacts {
    pub stopping: bool,
    /// The tests are known (a worker reported its collection).
    pub collected: bool,
    /// Tests without an outcome yet.
    pub unfinished: usize,
    /// Other workers running a test now.
    pub running_elsewhere: usize,
    pub restarts_used: usize,
    pub max_restarts: usize,
    /// Every other slot is retired or has no live worker.
    pub others_gone: bool,
}

pub fn after_loss(facts: LossFacts) -> AfterLoss {
    if facts.stopping {
        return AfterLoss::Nothing;
    }
    if facts.collected && facts.unfinished <= facts.running_elsewhere {
        return AfterLoss::FeedTheOthers;
    }
    if facts.restarts_used >= facts.max_restarts {
        return AfterLoss::Retire {
            all_lost: facts.others_gone,
        };
    }
    AfterLoss::Replace
}

/// The exit code of a run: dbfork's own error first, then an interruption,
/// then failed (or not run, or uncollectable) tests, then "no tests".
pub fn run_exit_code(
    fatal: Option<i32>,
    interrupted: bool,
    tests_failed: bool,
    no_tests: bool,
) -> i32 {
    use crate::error::exit;
    match fatal {
        Some(code) => code,
        None if interrupted => exit::INTERRUPTED,
        None if tests_failed => exit::TESTS_FAILED,
        None if no_tests => exit::NO_TESTS,
        None => exit::OK,
    }
}

/// Where a worker's Django facts differ from the controller's, in words: the
/// names that differ, the first differing entry of the first of them whole on
/// both sides (facts are lists of lines: the first line that only one side
/// has), and the likely cause. None when they agree.
pub fn facts_difference(
    expected: &BTreeMap<String, String>,
    found: &BTreeMap<String, String>,
) -> Option<String> {
    let differing: Vec<&str> = expected
        .iter()
        .filter(|(name, _)| name.as_str() != "template setup")
        .filter(|(name, value)| found.get(*name) != Some(*value))
        .map(|(name, _)| name.as_str())
        .collect();
    let first = *differing.first()?;
    let ours = expected.get(first).map(String::as_str).unwrap_or_default();
    let theirs = found.get(first).map(String::as_str);
    let only_in = |a: &str, b: &str| -> Option<String> {
        let others: std::collections::BTreeSet<&str> = b.lines().collect();
        a.lines()
            .find(|line| !others.contains(line))
            .map(|line| truncate(line, 2000).to_string())
    };
    let detail = match theirs {
        None => format!("the worker has no {first} at all"),
        Some(theirs) => match (only_in(ours, theirs), only_in(theirs, ours)) {
            (Some(a), Some(b)) => format!("the controller has `{a}` where the worker has `{b}`"),
            (Some(a), None) => format!("only the controller has `{a}`"),
            (None, Some(b)) => format!("only the worker has `{b}`"),
            (None, None) => "the same entries in another order".to_string(),
        },
    };
    let cause = match first {
        "models without migrations" => "models that only some processes define or that differ between them: a test module that defines models (imported when tests are collected: do the worker and the controller collect the same files?), or a field argument made anew in each process",
        "INSTALLED_APPS" | "migrations" => "apps installed at run time: a runtests.py that installs the apps of the labels it is given, a conftest.py that changes INSTALLED_APPS in pytest_configure, or a DJANGO_SETTINGS_MODULE that only some processes see",
        _ => "settings that depend on something that differs between processes (the process id, a random value, a variable that only some processes set)",
    };
    Some(format!(
        "{} differ{}; in {first}, {detail}. The workers must see the settings and models the template was made with; the likely cause: {cause}",
        differing.join(", "),
        if differing.len() == 1 { "s" } else { "" },
    ))
}

/// The first `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(json: &str) -> TestResult {
        serde_json::from_str(json).unwrap()
    }

    fn facts(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_facts_difference_names_the_whole_first_differing_entry_and_the_likely_cause() {
        let long = format!(
            "tests.Photo(file=('django.db.models.FileField', [], {{'max_length': {}}}))",
            "9".repeat(150)
        );
        let controller = facts(&[
            ("Django version", "5.2"),
            ("template setup", "create_test_db"),
            (
                "models without migrations",
                &format!("tests.Book(...)\n{long}"),
            ),
        ]);
        let worker = facts(&[
            ("Django version", "5.2"),
            ("template setup", "create_test_db via x"),
            ("models without migrations", "tests.Book(...)"),
        ]);
        let text = facts_difference(&controller, &worker).unwrap();
        assert!(text.starts_with("models without migrations differs; in models without migrations, only the controller has `"), "{text}");
        assert!(text.contains(&long), "{text}");
        assert!(text.contains("a test module that defines models"), "{text}");
        assert_eq!(facts_difference(&controller, &controller), None);
        // The way the template is made may differ (a worker never makes it).
        let mut same = controller.clone();
        same.insert("template setup".into(), "other".into());
        assert_eq!(facts_difference(&controller, &same), None);

        let apps = facts_difference(
            &facts(&[("INSTALLED_APPS", "auth=django.contrib.auth\nshop=shop")]),
            &facts(&[("INSTALLED_APPS", "auth=django.contrib.auth\nextra=extra")]),
        )
        .unwrap();
        assert!(
            apps.contains("the controller has `shop=shop` where the worker has `extra=extra`"),
            "{apps}"
        );
        assert!(
            apps.contains("a runtests.py that installs the apps"),
            "{apps}"
        );
    }

    #[test]
    fn results_read_from_phases_or_a_neutral_outcome() {
        let phases = result(
            r#"{"index":0,"phases":[{"when":"setup","outcome":"passed","duration":0.25},{"when":"call","outcome":"failed","category":"failed","duration":0.5,"longrepr":"assert 1 == 2"}]}"#,
        );
        assert_eq!(
            result_verdict(&phases),
            Verdict {
                outcome: Outcome::Failed,
                duration: 0.75,
                longrepr: Some("assert 1 == 2".into())
            }
        );
        let neutral =
            result(r#"{"index":1,"outcome":"skipped","duration":0.1,"longrepr":"no network"}"#);
        assert_eq!(
            result_verdict(&neutral),
            Verdict {
                outcome: Outcome::Skipped,
                duration: 0.1,
                longrepr: Some("no network".into())
            }
        );
        let passed = result(r#"{"index":2,"outcome":"passed","longrepr":"ignored"}"#);
        assert_eq!(result_verdict(&passed).longrepr, None);
        let unknown = result(r#"{"index":3,"outcome":"flaky"}"#);
        let verdict = result_verdict(&unknown);
        assert_eq!(verdict.outcome, Outcome::Error);
        assert!(verdict.longrepr.unwrap().contains("the outcome `flaky`"));
    }

    #[test]
    fn the_exit_code_names_the_worst_that_happened() {
        assert_eq!(run_exit_code(Some(3), true, true, false), 3);
        assert_eq!(run_exit_code(None, true, true, false), 2);
        assert_eq!(run_exit_code(None, false, true, true), 1);
        assert_eq!(run_exit_code(None, false, false, true), 5);
        assert_eq!(run_exit_code(None, false, false, false), 0);
    }

    #[test]
    fn a_lost_test_is_blamed_only_while_the_run_goes_on() {
        let crash = LossCause::Exited("exit code 3".into());
        assert_eq!(
            lost_test(&crash, RunState::Going, "gw1"),
            (
                Outcome::Crashed,
                "worker gw1 crashed while running this test (exit code 3)".into()
            )
        );
        let timeout = LossCause::Timeout(Duration::from_secs(5));
        assert_eq!(
            lost_test(&timeout, RunState::Going, "gw0").0,
            Outcome::TimedOut
        );
        assert!(lost_test(&timeout, RunState::Going, "gw0")
            .1
            .starts_with("timed out after 5s"));
        for cause in [
            crash,
            timeout,
            LossCause::Disconnected,
            LossCause::Protocol("x".into()),
        ] {
            assert_eq!(
                lost_test(&cause, RunState::Interrupted, "gw0").0,
                Outcome::NotRun
            );
            assert_eq!(
                lost_test(&cause, RunState::Failed, "gw0").0,
                Outcome::NotRun
            );
        }
        let long = "y".repeat(1000);
        let (_, text) = lost_test(&LossCause::Protocol(long), RunState::Going, "gw2");
        assert!(text.len() < 450, "{text}");
    }

    #[test]
    fn after_a_loss_the_run_replaces_retires_or_goes_on() {
        let facts = LossFacts {
            stopping: false,
            collected: true,
            unfinished: 5,
            running_elsewhere: 1,
            restarts_used: 0,
            max_restarts: 8,
            others_gone: false,
        };
        assert_eq!(after_loss(facts), AfterLoss::Replace);
        assert_eq!(
            after_loss(LossFacts {
                stopping: true,
                ..facts
            }),
            AfterLoss::Nothing
        );
        // What is left runs elsewhere already: no new worker.
        assert_eq!(
            after_loss(LossFacts {
                unfinished: 1,
                ..facts
            }),
            AfterLoss::FeedTheOthers
        );
        // Before collection nothing is known to be left: replace.
        assert_eq!(
            after_loss(LossFacts {
                collected: false,
                unfinished: 0,
                ..facts
            }),
            AfterLoss::Replace
        );
        assert_eq!(
            after_loss(LossFacts {
                restarts_used: 8,
                ..facts
            }),
            AfterLoss::Retire { all_lost: false }
        );
        assert_eq!(
            after_loss(LossFacts {
                restarts_used: 8,
                others_gone: true,
                ..facts
            }),
            AfterLoss::Retire { all_lost: true }
        );
        assert_eq!(
            LossCause::Exited("signal 9".into()).summary(),
            "crashed (signal 9)"
        );
    }
}

//! Snapshot tests (insta) of what people and CI tools read of a run: the
//! final report on stdout, the plain progress lines of a CI log, and the
//! JUnit and JSON reports, all of one run with every kind of outcome. A
//! change to any of them shows as a diff of `src/snapshots/*.snap`: review it
//! with `cargo insta review` (or `INSTA_UPDATE=always cargo test` and read
//! the diff) and commit the snapshot with the change.

use dbfork_meta::report::{Outcome, ReportFile, RunReport, SlotReport, TestRecord};
use dbfork_protocol::Phase;

use crate::progress::{final_text, Progress};

fn phase(when: &str, outcome: &str, category: &str, longrepr: Option<&str>) -> Phase {
    Phase {
        when: when.to_string(),
        outcome: outcome.to_string(),
        category: category.to_string(),
        duration: 0.01,
        longrepr: longrepr.map(str::to_string),
    }
}

fn test(index: usize, id: &str, outcome: Outcome, slot: Option<usize>) -> TestRecord {
    let (file, rest) = id.split_once("::").unwrap_or((id, ""));
    let class = rest.split_once("::").map(|(class, _)| class.to_string());
    TestRecord {
        index,
        id: id.to_string(),
        file: file.to_string(),
        class,
        outcome,
        duration: 0.25 * (index + 1) as f64,
        slot,
        worker_id: slot.map(|s| format!("{s}.0")),
        phases: Vec::new(),
        longrepr: None,
        stdout: String::new(),
        stderr: String::new(),
        tries: Vec::new(),
        diagnosis: None,
    }
}

const ASSERTION: &str = "def test_total():\n        order = make_order(3)\n>       assert order.total == 30\nE       assert 27 == 30\nE        +  where 27 = <Order 1>.total\n\ntests/test_orders.py:14: AssertionError";

/// A run of two workers with one test of every outcome, a module that
/// failed to import and one skipped whole.
fn run() -> RunReport {
    let passed = |i, id| {
        let mut t = test(i, id, Outcome::Passed, Some(i % 2));
        t.phases = vec![
            phase("setup", "passed", "", None),
            phase("call", "passed", "passed", None),
            phase("teardown", "passed", "", None),
        ];
        t
    };
    let mut failed = test(
        2,
        "tests/test_orders.py::test_total",
        Outcome::Failed,
        Some(0),
    );
    failed.phases = vec![
        phase("setup", "passed", "", None),
        phase("call", "failed", "failed", Some(ASSERTION)),
        phase("teardown", "passed", "", None),
    ];
    failed.longrepr = Some(ASSERTION.to_string());
    failed.stdout = "made order 1\n".to_string();
    failed.stderr = "warning: slow query\n".to_string();
    let mut error = test(
        3,
        "tests/test_orders.py::OrderTests::test_refund",
        Outcome::Error,
        Some(1),
    );
    let setup_error = "fixture 'payment_gateway' not found\n>       available fixtures: db, client\n\ntests/test_orders.py:30";
    error.phases = vec![phase("setup", "failed", "error", Some(setup_error))];
    error.longrepr = Some(setup_error.to_string());
    let mut skipped = test(
        4,
        "tests/test_users.py::test_ldap",
        Outcome::Skipped,
        Some(0),
    );
    skipped.phases = vec![phase(
        "setup",
        "skipped",
        "skipped",
        Some("('tests/test_users.py', 8, 'Skipped: no LDAP server')"),
    )];
    let mut xfailed = test(
        5,
        "tests/test_users.py::test_unicode_names",
        Outcome::XFailed,
        Some(1),
    );
    xfailed.phases = vec![phase("call", "skipped", "xfailed", Some("bug #12"))];
    let mut crashed = test(
        6,
        "tests/test_users.py::test_segfault",
        Outcome::Crashed,
        Some(0),
    );
    crashed.longrepr = Some(
        "the worker gw0 (pid 4242) died while running this test: killed by signal 11 (SIGSEGV)"
            .to_string(),
    );
    let mut timed_out = test(
        7,
        "tests/test_users.py::test_hangs",
        Outcome::TimedOut,
        Some(1),
    );
    timed_out.longrepr =
        Some("the test ran longer than --timeout 30s; its worker gw1 was killed".to_string());
    let tests = vec![
        passed(0, "tests/test_orders.py::test_create"),
        passed(1, "tests/test_orders.py::OrderTests::test_cancel"),
        failed,
        error,
        skipped,
        xfailed,
        crashed,
        timed_out,
    ];
    RunReport {
        command: ["pytest", "-q", "tests"].map(String::from).into(),
        run_id: "3f2a9c1b7d".to_string(),
        duration: 12.5,
        started_at: 1_790_000_000.0,
        exit_code: 1,
        interrupted: false,
        slots: (0..2)
            .map(|slot| SlotReport {
                slot,
                database: format!("dbfork_3f2a9c1b7d_{slot}"),
                workers_started: 1 + slot,
                tests_run: 4,
                busy: 5.0 + slot as f64,
            })
            .collect(),
        tests,
        collect_errors: vec![(
            "tests/test_reports.py".to_string(),
            "ImportError while importing test module 'tests/test_reports.py'.\nE   ModuleNotFoundError: No module named 'reportlab'".to_string(),
        )],
        collect_skipped: vec![(
            "tests/test_windows.py".to_string(),
            "Skipped: Windows only".to_string(),
        )],
        shard: None,
        bisect: None,
    }
}

/// The same run stopped by Ctrl-C after three tests.
fn interrupted() -> RunReport {
    let mut report = run();
    report.interrupted = true;
    report.exit_code = 2;
    report.collect_errors.clear();
    for t in report.tests.iter_mut().skip(3) {
        t.outcome = Outcome::NotRun;
        t.slot = None;
        t.worker_id = None;
        t.phases.clear();
        t.longrepr = None;
        t.duration = 0.0;
    }
    report
}

#[test]
fn final_report() {
    insta::assert_snapshot!(final_text(&run()));
}

#[test]
fn final_report_of_an_interrupted_run() {
    insta::assert_snapshot!(final_text(&interrupted()));
}

#[test]
fn plain_progress_lines() {
    let report = run();
    let mut progress = Progress::new(false, 0, 2);
    progress.collected(report.tests.len());
    let mut lines = Vec::new();
    for test in &report.tests {
        let (line, failed) = progress.count(test);
        lines.extend(progress.plain_lines(line, failed));
    }
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn junit_report() {
    let xml = crate::report::junit(&run()).to_string().unwrap();
    insta::assert_snapshot!(xml);
}

#[test]
fn json_report() {
    let report = run();
    let json = serde_json::to_string_pretty(&ReportFile::new(&report)).unwrap();
    insta::assert_snapshot!(json);
}

//! The files a run leaves for CI and other programs: a JUnit XML report (one
//! `<testsuite>` per test file, test cases named the way pytest's own
//! `--junitxml` names them, so CI history carries over from a plain pytest run)
//! and a JSON report (the whole [`RunReport`] plus its summary).
//!
//! Both are written atomically: a reader (a CI upload step, a dashboard
//! polling the file) sees the old file or the new one, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite, XmlString,
};

use dbfork_meta::report::{Outcome, ReportFile, RunReport, TestRecord, Try};

/// A report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the {kind} report {}: {source}. Check that the directory is writable, or choose another path.", path.display())]
    Write {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot produce the JUnit report {}: {source}. This is a bug in dbfork; please report it.", path.display())]
    Junit {
        path: PathBuf,
        #[source]
        source: quick_junit::SerializeError,
    },

    #[error("cannot produce the JSON report {}: {source}. This is a bug in dbfork; please report it.", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `report` as JUnit XML to `path`, creating its directory.
pub fn write_junit(report: &RunReport, path: &Path) -> Result<(), ReportError> {
    let xml = junit(report)
        .to_string()
        .map_err(|source| ReportError::Junit {
            path: path.to_path_buf(),
            source,
        })?;
    write_atomic(path, xml.as_bytes()).map_err(|source| ReportError::Write {
        kind: "JUnit",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `report` as JSON to `path`, creating its directory: `{"version": 1,
/// "summary": {...}}` followed by the fields of [`RunReport`].
pub fn write_json(report: &RunReport, path: &Path) -> Result<(), ReportError> {
    let mut json = serde_json::to_vec_pretty(&ReportFile::new(report)).map_err(|source| {
        ReportError::Json {
            path: path.to_path_buf(),
            source,
        }
    })?;
    json.push(b'\n');
    write_atomic(path, &json).map_err(|source| ReportError::Write {
        kind: "JSON",
        path: path.to_path_buf(),
        source,
    })
}

/// The JUnit document of a run.
pub(crate) fn junit(report: &RunReport) -> Report {
    // Suites in the order their files were collected, tests in collection order.
    let mut tests: Vec<&TestRecord> = report.tests.iter().collect();
    tests.sort_by_key(|t| t.index);
    let mut files = Suites::default();
    let collected = report
        .collect_errors
        .iter()
        .map(|e| (e, false))
        .chain(report.collect_skipped.iter().map(|e| (e, true)));
    for ((id, longrepr), skipped) in collected {
        let file = id.split("::").next().unwrap_or(id);
        files.of(file).1.push(collect_case(id, longrepr, skipped));
    }
    for test in tests {
        let suite = files.of(&test.file);
        suite.1.push(test_case(test));
        suite.2 += test.duration;
    }

    let mut run_properties = vec![
        Property::new("run_id", report.run_id.as_str()),
        Property::new("workers", report.slots.len().to_string()),
    ];
    for slot in &report.slots {
        run_properties.push(Property::new(
            format!("database.gw{}", slot.slot),
            slot.database.as_str(),
        ));
    }

    let mut junit = Report::new("dbfork");
    junit.set_time(seconds(report.duration));
    for (file, cases, time) in files.suites {
        let mut suite = TestSuite::new(file);
        suite.set_time(seconds(time));
        // Suite-level: quick-junit's <testsuites> has no properties, and CI
        // tools that read properties read them per suite.
        suite.add_properties(run_properties.iter().cloned());
        suite.add_test_cases(cases);
        // pytest's attribute for skips; quick-junit writes only `disabled`.
        let skipped = suite.disabled.to_string();
        suite
            .extra
            .insert(XmlString::new("skipped"), XmlString::new(skipped));
        junit.add_test_suite(suite);
    }
    junit
}

/// The test cases of each file with their total seconds, in the order the
/// files first appear.
#[derive(Default)]
struct Suites {
    suites: Vec<(String, Vec<TestCase>, f64)>,
    position: BTreeMap<String, usize>,
}

impl Suites {
    fn of(&mut self, file: &str) -> &mut (String, Vec<TestCase>, f64) {
        let next = self.suites.len();
        let i = *self.position.entry(file.to_string()).or_insert(next);
        if i == next {
            self.suites.push((file.to_string(), Vec::new(), 0.0));
        }
        &mut self.suites[i]
    }
}

fn test_case(test: &TestRecord) -> TestCase {
    let (classname, name) = pytest_names(&test.id);
    let mut status = status(test);
    status.add_reruns(reruns(test));
    let mut case = TestCase::new(name, status);
    if !classname.is_empty() {
        case.set_classname(classname);
    }
    case.set_time(seconds(test.duration));
    if let Some(slot) = test.slot {
        case.add_property(Property::new("worker", format!("gw{slot}")));
        if let Some(worker_id) = &test.worker_id {
            case.add_property(Property::new("worker_id", worker_id.as_str()));
        }
        case.add_property(Property::new("slot", slot.to_string()));
    }
    if let Some(diagnosis) = &test.diagnosis {
        case.add_property(Property::new("failure_class", diagnosis.class.as_str()));
        if !diagnosis.culprits.is_empty() {
            let culprits = diagnosis.culprits.join(" ");
            case.add_property(Property::new("fails_after", culprits.as_str()));
        }
    }
    if !test.stdout.is_empty() {
        case.set_system_out(test.stdout.as_str());
    }
    if !test.stderr.is_empty() {
        case.set_system_err(test.stderr.as_str());
    }
    case
}

fn status(test: &TestRecord) -> TestCaseStatus {
    let longrepr = test.longrepr.as_deref().unwrap_or("");
    match test.outcome {
        // An xpass that is not strict passes for pytest too.
        Outcome::Passed | Outcome::XPassed => TestCaseStatus::success(),
        Outcome::Failed | Outcome::Crashed | Outcome::TimedOut => {
            let fallback = match test.outcome {
                Outcome::Crashed => "the worker died while running this test",
                Outcome::TimedOut => "the test ran longer than --timeout",
                _ => "failed",
            };
            non_success(NonSuccessKind::Failure, test.outcome, longrepr, fallback)
        }
        Outcome::Error => non_success(
            NonSuccessKind::Error,
            test.outcome,
            longrepr,
            "error in setup or teardown",
        ),
        Outcome::Skipped | Outcome::XFailed => {
            let reason = skip_reason(test);
            let mut status = TestCaseStatus::skipped();
            let ty = if test.outcome == Outcome::XFailed {
                "pytest.xfail"
            } else {
                "pytest.skip"
            };
            status.set_type(ty);
            match reason {
                Some(text) => {
                    status.set_message(first_line(text).trim_start_matches("Skipped: "));
                    status.set_description(text);
                }
                None if test.outcome == Outcome::XFailed => {
                    status.set_message("expected failure");
                }
                None => {}
            }
            status
        }
        Outcome::NotRun => {
            let mut status = TestCaseStatus::skipped();
            status.set_message("not run");
            status
        }
    }
}

/// The test's other runs (its failed tries besides the one the test case
/// is, the Surefire convention): `flakyFailure` under a test that passed on
/// a retry, `rerunFailure` under one that failed every time. Probes that
/// only classify are not runs of the test (they are in the JSON report).
fn reruns(test: &TestRecord) -> Vec<TestRerun> {
    let counted: Vec<&Try> = test.tries.iter().filter(|t| t.kind.counts()).collect();
    // The test case is its passing try, or (failed every time) its first.
    let own = counted
        .iter()
        .position(|t| !t.outcome.is_failure())
        .unwrap_or(0);
    (counted.iter().enumerate())
        .filter(|(i, t)| *i != own && t.outcome.is_failure())
        .map(|(_, t)| {
            let kind = match t.outcome {
                Outcome::Error => NonSuccessKind::Error,
                _ => NonSuccessKind::Failure,
            };
            let mut rerun = TestRerun::new(kind);
            rerun.set_time(seconds(t.duration));
            rerun.set_type(t.outcome.as_str());
            let longrepr = t.longrepr.as_deref().unwrap_or("");
            if !longrepr.trim().is_empty() {
                rerun.set_message(headline(longrepr));
                rerun.set_description(longrepr);
            }
            if !t.stdout.is_empty() {
                rerun.set_system_out(t.stdout.as_str());
            }
            if !t.stderr.is_empty() {
                rerun.set_system_err(t.stderr.as_str());
            }
            rerun
        })
        .collect()
}

fn non_success(
    kind: NonSuccessKind,
    outcome: Outcome,
    longrepr: &str,
    fallback: &str,
) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(kind);
    status.set_type(outcome.as_str());
    if longrepr.trim().is_empty() {
        status.set_message(fallback);
    } else {
        status.set_message(headline(longrepr));
        status.set_description(longrepr);
    }
    status
}

/// A module that failed to collect (an error) or was skipped as a whole at
/// collection (`allow_module_level`, an ignored import error), as pytest's
/// own JUnit report has them.
fn collect_case(id: &str, longrepr: &str, skipped: bool) -> TestCase {
    let (classname, name) = pytest_names(id);
    let mut status = if skipped {
        TestCaseStatus::skipped()
    } else {
        TestCaseStatus::non_success(NonSuccessKind::Error)
    };
    // pytest's own wording for these in its JUnit report.
    status.set_message(if skipped {
        "collection skipped"
    } else {
        "collection failure"
    });
    status.set_description(longrepr);
    let mut case = TestCase::new(name, status);
    if !classname.is_empty() {
        case.set_classname(classname);
    }
    case
}

/// The skip reason a skipped or xfailed test's phases carry.
fn skip_reason(test: &TestRecord) -> Option<&str> {
    test.phases
        .iter()
        .filter(|p| p.outcome == "skipped")
        .find_map(|p| p.longrepr.as_deref())
        .or(test.longrepr.as_deref())
        .filter(|text| !text.trim().is_empty())
}

/// pytest's `(classname, name)` for a node id (its junitxml
/// `mangle_test_address`): `tests/test_a.py::TestX::test_y[p::q]` gives
/// `("tests.test_a.TestX", "test_y[p::q]")`. Parameters are split off first
/// so a `::` inside them does not count.
fn pytest_names(id: &str) -> (String, String) {
    let (path, params) = match id.find('[') {
        Some(i) => id.split_at(i),
        None => (id, ""),
    };
    let mut names: Vec<String> = path.split("::").map(str::to_string).collect();
    if let Some(module) = names.first_mut() {
        let dotted = module.replace('/', ".");
        *module = dotted.strip_suffix(".py").unwrap_or(&dotted).to_string();
    }
    match names.split_last() {
        Some((last, classes)) => (classes.join("."), format!("{last}{params}")),
        None => (String::new(), id.to_string()),
    }
}

/// The line of a failure text that says what went wrong: pytest marks the
/// assertion or exception with `E   ` lines, which say more than the first
/// line (usually the test's `def` line); otherwise the first non-empty line.
fn headline(longrepr: &str) -> &str {
    longrepr
        .lines()
        .find_map(|line| line.strip_prefix("E ").map(str::trim))
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| first_line(longrepr))
}

fn first_line(text: &str) -> &str {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("")
}

/// Seconds as a `Duration`; negative or non-finite values (a clock step) become 0.
pub(crate) fn seconds(value: f64) -> Duration {
    Duration::try_from_secs_f64(value.max(0.0)).unwrap_or_default()
}

/// Writes `bytes` to `path` so that readers see the old contents or the new,
/// never a part: a temporary file in the same directory (a rename is atomic
/// only within one file system), synced, then renamed over `path`. Creates
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    if path.file_name().is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    }
    dbfork_engine::files::write_replacing(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbfork_meta::report::SlotReport;
    use dbfork_protocol::Phase;

    fn phase(when: &str, outcome: &str, category: &str, longrepr: Option<&str>) -> Phase {
        Phase {
            when: when.into(),
            outcome: outcome.into(),
            category: category.into(),
            duration: 0.1,
            longrepr: longrepr.map(str::to_string),
        }
    }

    fn record(index: usize, id: &str, outcome: Outcome, phases: Vec<Phase>) -> TestRecord {
        let file = id.split("::").next().unwrap().to_string();
        TestRecord {
            index,
            id: id.into(),
            file,
            class: None,
            outcome,
            duration: 0.25,
            slot: Some(index % 2),
            worker_id: Some(format!("{}.0", index % 2)),
            phases,
            longrepr: None,
            stdout: String::new(),
            stderr: String::new(),
            tries: Vec::new(),
            diagnosis: None,
        }
    }

    fn sample() -> RunReport {
        let passed = {
            let mut t = record(
                0,
                "tests/test_a.py::test_ok",
                Outcome::Passed,
                vec![phase("call", "passed", "passed", None)],
            );
            t.stdout = "hello from the test".into();
            t
        };
        let failed = {
            let text = "def test_bad():\n>       assert 1 == 2\nE       assert 1 == 2\n\ntests/test_a.py:7: AssertionError";
            let mut t = record(
                1,
                "tests/test_a.py::TestThing::test_bad[x::y]",
                Outcome::Failed,
                vec![phase("call", "failed", "failed", Some(text))],
            );
            t.class = Some("TestThing".into());
            t.longrepr = Some(text.into());
            t.stderr = "oops <&>".into();
            t
        };
        let skipped = record(
            2,
            "tests/test_b.py::test_later",
            Outcome::Skipped,
            vec![phase(
                "setup",
                "skipped",
                "skipped",
                Some("Skipped: needs the network"),
            )],
        );
        let crashed = {
            let mut t = record(
                3,
                "tests/test_b.py::test_segfault",
                Outcome::Crashed,
                vec![],
            );
            t.longrepr = Some("worker 1.0 died (signal 11) while running this test".into());
            t
        };
        let error = {
            let mut t = record(
                4,
                "tests/test_b.py::test_fixture_breaks",
                Outcome::Error,
                vec![phase(
                    "setup",
                    "failed",
                    "error",
                    Some("E   RuntimeError: no db"),
                )],
            );
            t.longrepr = Some("E   RuntimeError: no db".into());
            t
        };
        let not_run = {
            let mut t = record(5, "tests/test_c.py::test_never", Outcome::NotRun, vec![]);
            t.slot = None;
            t.worker_id = None;
            t
        };
        RunReport {
            command: vec!["pytest".into(), "-q".into()],
            run_id: "r1234".into(),
            duration: 3.5,
            started_at: 1_700_000_000.0,
            exit_code: 1,
            interrupted: false,
            slots: vec![
                SlotReport {
                    slot: 0,
                    database: "dbfork_c_aaa_0".into(),
                    workers_started: 1,
                    tests_run: 3,
                    busy: 1.0,
                },
                SlotReport {
                    slot: 1,
                    database: "dbfork_c_aaa_1".into(),
                    workers_started: 2,
                    tests_run: 2,
                    busy: 1.0,
                },
            ],
            tests: vec![passed, failed, skipped, crashed, error, not_run],
            collect_errors: vec![],
            collect_skipped: vec![],
            shard: None,
            bisect: None,
        }
    }

    #[test]
    fn pytest_style_names() {
        assert_eq!(
            pytest_names("tests/test_a.py::test_ok"),
            ("tests.test_a".to_string(), "test_ok".to_string())
        );
        assert_eq!(
            pytest_names("tests/test_a.py::TestX::test_y[a::b]"),
            ("tests.test_a.TestX".to_string(), "test_y[a::b]".to_string())
        );
        assert_eq!(
            pytest_names("tests/test_a.py"),
            (String::new(), "tests.test_a".to_string())
        );
    }

    #[test]
    fn junit_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/nested/junit.xml");
        write_junit(&sample(), &path).unwrap();
        let xml = fs::read_to_string(&path).unwrap();

        assert!(
            xml.contains(r#"<testsuites name="dbfork" tests="6" failures="2" errors="1""#),
            "{xml}"
        );
        assert!(xml.contains(r#"<testsuite name="tests/test_a.py" tests="2" disabled="0" errors="0" failures="1""#), "{xml}");
        assert!(xml.contains(r#"<testsuite name="tests/test_b.py" tests="3" disabled="1" errors="1" failures="1""#), "{xml}");
        assert!(xml.contains(r#"skipped="1""#), "{xml}");
        assert!(
            xml.contains(r#"<testcase name="test_bad[x::y]" classname="tests.test_a.TestThing""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="assert 1 == 2" type="failed">"#),
            "{xml}"
        );
        assert!(
            xml.contains("tests/test_a.py:7: AssertionError</failure>"),
            "{xml}"
        );
        assert!(xml.contains(r#"<failure message="worker 1.0 died (signal 11) while running this test" type="crashed""#), "{xml}");
        assert!(
            xml.contains(r#"<error message="RuntimeError: no db" type="error">"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<skipped message="needs the network" type="pytest.skip">"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="not run"/>"#), "{xml}");
        assert!(
            xml.contains("<system-out>hello from the test</system-out>"),
            "{xml}"
        );
        assert!(
            xml.contains("<system-err>oops &lt;&amp;&gt;</system-err>"),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="worker" value="gw1"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="worker_id" value="1.0"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="slot" value="1"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="run_id" value="r1234"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="workers" value="2"/>"#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<property name="database.gw1" value="dbfork_c_aaa_1"/>"#),
            "{xml}"
        );
        // Nothing left behind but the report.
        let left: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn junit_collect_errors() {
        let mut report = sample();
        report.tests.clear();
        report.collect_errors = vec![("tests/test_d.py".into(), "ImportError: nope".into())];
        let xml = junit(&report).to_string().unwrap();
        assert!(
            xml.contains(r#"<testsuite name="tests/test_d.py" tests="1" disabled="0" errors="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<error message="collection failure">ImportError: nope</error>"#),
            "{xml}"
        );
    }

    #[test]
    fn junit_collect_skips() {
        let mut report = sample();
        report.tests.clear();
        report.collect_skipped = vec![(
            "tests/test_e.py".into(),
            "tests/test_e.py:3: no numpy".into(),
        )];
        let xml = junit(&report).to_string().unwrap();
        assert!(xml.contains(r#"skipped="1""#), "{xml}");
        assert!(
            xml.contains(
                r#"<skipped message="collection skipped">tests/test_e.py:3: no numpy</skipped>"#
            ),
            "{xml}"
        );
    }

    #[test]
    fn json_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let report = sample();
        write_json(&report, &path).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["summary"]["line"], report.summary_line());
        assert_eq!(value["summary"]["exit_code"], 1);
        assert_eq!(value["summary"]["duration"], 3.5);
        let counts = &value["summary"]["counts"];
        assert_eq!(counts["passed"], 1);
        assert_eq!(counts["failed"], 2);
        assert_eq!(counts["skipped"], 1);
        assert_eq!(counts["error"], 1);
        assert_eq!(value["run_id"], "r1234");
        assert_eq!(value["slots"][1]["database"], "dbfork_c_aaa_1");
        assert_eq!(value["tests"].as_array().unwrap().len(), 6);
        assert_eq!(value["tests"][1]["outcome"], "failed");
        assert_eq!(value["tests"][3]["outcome"], "crashed");
        assert_eq!(value["tests"][5]["outcome"], "not_run");
        assert_eq!(value["tests"][1]["class"], "TestThing");
        assert!(value["tests"][0].get("class").is_none());
    }

    #[test]
    fn write_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a directory should be.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "").unwrap();
        let path = blocker.join("junit.xml");
        let err = write_junit(&sample(), &path).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cannot write the JUnit report"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

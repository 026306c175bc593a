//! `dbfork run`: the fixture pytest project (tests/fixtures/pytest_suite) run by
//! real pytest workers, compared with a serial pytest run, and every way a run
//! can end checked for leftovers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{dbfork, Kind, Place};

/// The Python with pytest: `DBFORK_TEST_PYTHON`, else the repository's `.venv`
/// (`scripts/test` creates it). Missing is a failure, not a skip.
pub(crate) fn python() -> String {
    if let Ok(p) = std::env::var("DBFORK_TEST_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with pytest: run the tests with scripts/test (it makes .venv) or set DBFORK_TEST_PYTHON"
    );
    // Not canonicalized: the venv's python is a symlink, and its path is what selects the venv.
    venv.display().to_string()
}

/// A copy of the pytest fixture project in the place's directory (timings and caches stay there).
pub(crate) fn suite(place: &Place) -> PathBuf {
    let dst = fixture_copy(place, "pytest_suite");
    let _ = std::fs::remove_dir_all(dst.join(".pytest_cache"));
    dst
}

/// A copy of fixture project `name` (tests/fixtures/NAME) in the place's directory.
pub(crate) fn fixture_copy(place: &Place, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = place.dir.path().join(name);
    let ok = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(ok.success());
    dst
}

pub(crate) struct Outcome {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) report: serde_json::Value,
}

fn run_args(place: &Place, dir: &Path, extra: &[&str], command: &[&str]) -> Command {
    let mut c = dbfork();
    c.current_dir(dir)
        .env_remove("CI")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["run", "--db", &place.url])
        .args([
            "--setup",
            &format!("{} setup_db.py", python()),
            "--input",
            "setup_db.py",
        ])
        .args(["--json", "report.json"])
        .args(extra)
        .arg("--")
        .args(command);
    c
}

fn pytest_command(args: &[&str]) -> Vec<String> {
    let mut v = vec![
        python(),
        "-m".into(),
        "pytest".into(),
        "-p".into(),
        "no:cacheprovider".into(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

/// The `dbfork run` command of [`dbfork_run`], to start by hand.
pub(crate) fn run_command(
    place: &Place,
    dir: &Path,
    extra: &[&str],
    pytest_args: &[&str],
) -> Command {
    let command = pytest_command(pytest_args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    run_args(place, dir, extra, &command)
}

pub(crate) fn dbfork_run(
    place: &Place,
    dir: &Path,
    extra: &[&str],
    pytest_args: &[&str],
    envs: &[(&str, &str)],
) -> Outcome {
    let command = pytest_command(pytest_args);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let out = run_args(place, dir, extra, &command)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let report = std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let _ = std::fs::remove_file(dir.join("report.json"));
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        report,
    }
}

/// The closing line without its time: `1 failed, 12 passed, 3 skipped`.
pub(crate) fn summary(stdout: &str) -> String {
    let line = stdout
        .lines()
        .rev()
        .find(|l| {
            l.contains(" in ")
                && (l.starts_with('=') || l.contains("passed") || l.contains("failed"))
        })
        .unwrap_or("");
    let line = line.trim_matches(|c| c == '=' || c == ' ');
    line.rsplit_once(" in ")
        .map(|(s, _)| s.to_string())
        .unwrap_or_default()
}

/// No clone of any run is left: only templates in the registry, only template files on disk.
pub(crate) fn assert_no_clones(place: &Place) {
    let registry = place.registry();
    let clones: Vec<_> = registry
        .iter()
        .filter(|e| e["kind"] != "template")
        .collect();
    assert!(clones.is_empty(), "clones left in the registry: {clones:?}");
    if place.kind == Kind::Sqlite {
        let files: Vec<String> = std::fs::read_dir(place.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("dbfork_") && !n.starts_with("dbfork_tpl_"))
            .collect();
        assert!(files.is_empty(), "clone files left: {files:?}");
    }
}

pub(crate) fn test_ids(report: &serde_json::Value) -> Vec<(String, String)> {
    report["tests"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["id"].as_str().unwrap_or("").to_string(),
                        t["outcome"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn run_matches_a_serial_pytest_run() {
    let place = Place::new(Kind::Sqlite, "run_serial");
    let dir = suite(&place);
    // Serial pytest on its own database built by the same setup.
    let serial_db = place.dir.path().join("serial.sqlite3");
    let url = format!("sqlite:///{}", serial_db.display());
    let py = python();
    let ok = Command::new(&py)
        .arg("setup_db.py")
        .current_dir(&dir)
        .env("DATABASE_URL", &url)
        .status()
        .unwrap();
    assert!(ok.success());
    let serial = Command::new(&py)
        .args(["-m", "pytest", "-p", "no:cacheprovider"])
        .current_dir(&dir)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let serial_out = String::from_utf8_lossy(&serial.stdout).to_string();
    let collected = Command::new(&py)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "-q",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let mut expected_ids: Vec<String> = String::from_utf8_lossy(&collected.stdout)
        .lines()
        .filter(|l| l.contains("::"))
        .map(String::from)
        .collect();
    expected_ids.sort();
    assert!(expected_ids.len() > 50, "{expected_ids:?}");

    let marks = place.dir.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let marks_env = marks.display().to_string();
    let junit = place.dir.path().join("junit.xml").display().to_string();
    let out = dbfork_run(
        &place,
        &dir,
        &["-j", "2", "--junit", &junit],
        &[],
        &[("FIXTURE_MARKS_DIR", &marks_env)],
    );

    assert_eq!(
        out.code,
        serial.status.code().unwrap(),
        "exit code differs from serial pytest's\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        summary(&out.stdout),
        summary(&serial_out),
        "dbfork:\n{}\nserial:\n{serial_out}",
        out.stdout
    );
    assert!(!summary(&out.stdout).is_empty());
    // Every test ran exactly once, on a worker.
    let mut ids: Vec<String> = test_ids(&out.report)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    assert_eq!(ids, expected_ids);
    let slots: std::collections::BTreeSet<u64> = out.report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["slot"].as_u64())
        .collect();
    assert_eq!(slots.len(), 2, "both workers ran tests");
    assert!(
        out.stdout.contains("FAILURES") && out.stdout.contains("[gw"),
        "{}",
        out.stdout
    );
    // Failures show their captured output.
    assert!(out.stdout.contains("Captured stdout"), "{}", out.stdout);
    // Module- and class-scoped fixtures: every setup has its teardown, in the same process.
    for entry in std::fs::read_dir(&marks).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let setups = text.lines().filter(|l| l.starts_with("setup")).count();
        let teardowns = text.lines().filter(|l| l.starts_with("teardown")).count();
        assert!(setups > 0 && setups == teardowns, "{text}");
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuites") && xml.contains("worker"),
        "{xml}"
    );
    assert!(dir.join(".dbfork/timings.json").exists());
    assert_no_clones(&place);

    // A second run reuses the template (the setup is not run again) and uses the timings.
    let again = dbfork_run(&place, &dir, &["-j", "2"], &[], &[]);
    assert_eq!(summary(&again.stdout), summary(&serial_out));
    assert!(
        again.stderr.contains("reusing template"),
        "{}",
        again.stderr
    );
    assert_no_clones(&place);
}

/// pytest's workers are forked from the controller once it configured and
/// collected the suite: each has its own variables, clone and captured
/// output, and the exit handlers the configuration registered run once, in
/// the controller (a directory it cleans up at exit outlives every worker).
/// A configuration that read a variable that differs per worker is not
/// forked (`-v` says why): each worker then reads its own value, as in the
/// serial run. `--fork=false` starts every worker afresh.
#[test]
fn workers_are_forked_from_the_controller_unless_the_configuration_reads_theirs() {
    let place = Place::new(Kind::Sqlite, "run_fork");
    let dir = suite(&place);
    let exits = place.dir.path().join("exits.log");
    let exit_log = exits.display().to_string();
    let run = |extra: &[&str], envs: &[(&str, &str)]| {
        let _ = std::fs::remove_file(&exits);
        let mut envs = envs.to_vec();
        envs.push(("DBFORK_FIXTURE_EXITLOG", &exit_log));
        let mut extra = extra.to_vec();
        extra.extend(["-j", "2", "-v"]);
        let out = dbfork_run(&place, &dir, &extra, &["forking"], &envs);
        let exited = std::fs::read_to_string(&exits).unwrap_or_default();
        (out, exited.lines().count())
    };
    let forked_note = "the workers are forked from the controller";
    let read_note = "not forked from the controller: the configuration read PYTEST_XDIST_WORKER, which differs per worker";

    let (out, exit_handlers) = run(&[], &[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{all}");
    assert_eq!(summary(&out.stdout), "1 failed, 7 passed", "{all}");
    assert!(all.contains(forked_note), "{all}");
    assert!(
        all.contains("captured by this worker") && all.contains("and its stderr"),
        "the failing test's own output is in its report: {all}"
    );
    assert_eq!(
        exit_handlers, 1,
        "the controller's exit handler ran once: {all}"
    );
    assert_no_clones(&place);

    let (out, exit_handlers) = run(&[], &[("DBFORK_FIXTURE_READ_WORKER", "1")]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(summary(&out.stdout), "1 failed, 7 passed", "{all}");
    assert!(
        all.contains(read_note) && !all.contains(forked_note),
        "{all}"
    );
    // The controller, the two workers and the worker that ran the failed
    // test again alone (it is classified broken).
    assert!(all.contains("broken: it fails alone"), "{all}");
    assert_eq!(exit_handlers, 4, "each process runs its own: {all}");

    let (out, exit_handlers) = run(&["--fork=false"], &[]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(summary(&out.stdout), "1 failed, 7 passed", "{all}");
    assert!(!all.contains("forked from the controller"), "{all}");
    assert_eq!(exit_handlers, 4, "{all}");
    assert_no_clones(&place);
}

#[test]
fn exitfirst_stops_the_whole_run() {
    let place = Place::new(Kind::Sqlite, "run_x");
    let dir = suite(&place);
    let ini = std::fs::read_to_string(dir.join("pytest.ini")).unwrap();
    // Wherever pytest finds the option, and however it is spelled, it is
    // pytest's own reading that counts (the worker reports it).
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (
            "-x on the command line",
            &["-x"],
            &[],
            "stopping after 1 failure",
        ),
        (
            "-xq (combined short flags)",
            &["-xq"],
            &[],
            "stopping after 1 failure",
        ),
        (
            "--maxfail=2 in PYTEST_ADDOPTS",
            &[],
            &[("PYTEST_ADDOPTS", "--maxfail=2")],
            "stopping after 2 failures",
        ),
        (
            "-x in pytest.ini's addopts",
            &[],
            &[],
            "stopping after 1 failure",
        ),
    ];
    for (case, args, envs, said) in cases {
        if case.contains("pytest.ini") {
            std::fs::write(dir.join("pytest.ini"), format!("{ini}  -x\n")).unwrap();
        }
        let out = dbfork_run(&place, &dir, &["-j", "2"], args, envs);
        assert_eq!(out.code, 1, "{case}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(said), "{case}: {}", out.stderr);
        let tests = test_ids(&out.report);
        let not_run = tests.iter().filter(|(_, o)| o == "not_run").count();
        assert!(not_run > 0, "{case}: every test ran: {tests:?}");
        assert_no_clones(&place);
    }
    // Every test fails: with -x each worker stops after its own failure and
    // does not run the test it had committed to next (pytest-xdist stops
    // after at most one failure per worker too).
    let failing: String = (0..30)
        .map(|i| format!("def test_fails_{i}():\n    time.sleep(0.2)\n    assert False\n\n\n"))
        .collect();
    std::fs::write(
        dir.join("tests/test_all_fail.py"),
        format!("import time\n\n\n{failing}"),
    )
    .unwrap();
    let out = dbfork_run(
        &place,
        &dir,
        &["-j", "2"],
        &["-x", "tests/test_all_fail.py"],
        &[],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let tests = test_ids(&out.report);
    let failed = tests.iter().filter(|(_, o)| o == "failed").count();
    let not_run = tests.iter().filter(|(_, o)| o == "not_run").count();
    assert!(
        (1..=2).contains(&failed) && failed + not_run == 30,
        "-x with 2 workers: {failed} failed, {not_run} not run: {tests:?}"
    );
    assert_no_clones(&place);
}

/// A suite run in three shards (`--shard K/N`, one of them `auto` from
/// GitLab's variables), each on the timings the whole run left (as CI
/// shards restore one cache), then `dbfork report merge`: every test ran in
/// exactly one shard, and the merged report counts what one run of the whole
/// suite counts, exits as it does, and makes a JUnit file. A missing shard,
/// or a run that is not a shard, cannot be merged with them.
#[test]
fn shards_merge_into_the_report_of_one_run() {
    let place = Place::new(Kind::Sqlite, "run_shards");
    let dir = suite(&place);
    let whole = dbfork_run(&place, &dir, &["-j", "2"], &["tests"], &[]);
    let timings = dir.join(".dbfork/timings.json");
    let recorded = std::fs::read(&timings).unwrap();
    let mut files = Vec::new();
    let mut ran = 0;
    for k in 1..=3 {
        std::fs::write(&timings, &recorded).unwrap();
        let (shard, vars) = match k {
            2 => (
                "auto".to_string(),
                vec![("CI_NODE_INDEX", "2"), ("CI_NODE_TOTAL", "3")],
            ),
            _ => (format!("{k}/3"), vec![]),
        };
        let out = dbfork_run(
            &place,
            &dir,
            &["-j", "2", "--shard", &shard],
            &["tests"],
            &vars,
        );
        assert!(
            out.stderr.contains(&format!("shard {k}/3: ")),
            "{}",
            out.stderr
        );
        assert_eq!(out.report["shard"]["index"], k, "{}", out.report);
        ran += test_ids(&out.report).len();
        let file = dir.join(format!("shard{k}.json"));
        std::fs::write(&file, out.report.to_string()).unwrap();
        files.push(file);
    }
    assert_eq!(ran, test_ids(&whole.report).len(), "each test in one shard");
    let out = dbfork()
        .current_dir(&dir)
        .args(["report", "merge"])
        .args(&files)
        .args(["--json", "merged.json", "--junit", "merged.xml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(whole.code), "{stdout}");
    assert_eq!(
        summary(&stdout.replace(" (3 reports merged)", "")),
        summary(&whole.stdout),
        "{stdout}"
    );
    let merged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("merged.json")).unwrap()).unwrap();
    let mut ids = test_ids(&merged);
    let mut expected = test_ids(&whole.report);
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(merged["slots"].as_array().unwrap().len(), 6);
    let junit = std::fs::read_to_string(dir.join("merged.xml")).unwrap();
    assert!(
        junit.contains("<testsuites") && junit.contains("test_fail"),
        "{junit}"
    );

    // Without shard 3, or with a run of the whole suite: refused.
    let whole_file = dir.join("whole.json");
    std::fs::write(&whole_file, whole.report.to_string()).unwrap();
    for (others, wanted) in [
        (&files[..2], "the report of shard 3/3 is missing"),
        (
            &[files[0].clone(), whole_file][..],
            "some reports are shards",
        ),
    ] {
        let out = dbfork()
            .current_dir(&dir)
            .args(["report", "merge"])
            .args(others)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains(wanted), "{err}");
    }

    // A file that is not a report: a usage error naming it.
    std::fs::write(dir.join("junk.json"), "{}").unwrap();
    let out = dbfork()
        .current_dir(&dir)
        .args(["report", "merge", "junk.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("junk.json") && err.contains("not a dbfork JSON report"),
        "{err}"
    );
    assert_no_clones(&place);
}

// The runner's fault tests on every backend.
per_backend!(
    crashes_and_hangs_are_reported_and_the_run_goes_on,
    sigint_at_many_moments_and_sigterm_leave_nothing,
    sigkill_of_a_worker_then_of_dbfork,
);
per_server!(more_workers_than_the_server_takes_is_a_clear_error);

/// `-j` above what the server's `max_connections` leaves free is refused
/// before anything is made, naming both numbers and the `-j` that fits.
fn more_workers_than_the_server_takes_is_a_clear_error(kind: Kind) {
    let place = Place::new(kind, "run_room");
    let dir = suite(&place);
    let out = dbfork_run(&place, &dir, &["-j", "1000"], &["tests/test_pass.py"], &[]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("1000 workers do not fit on the database server")
            && out.stderr.contains("max_connections")
            && out.stderr.contains("or fewer"),
        "{}",
        out.stderr
    );
    assert!(place.registry().is_empty(), "{}", out.stderr);
}

/// Sixteen workers, so that the first crashes come while the other clones
/// are still being made, and their replacements are made beside them. By
/// module, so that a replacement is always needed: the tests after the
/// crashing one in its file wait for its worker (by test, on a loaded
/// machine the crashes could come last, with nothing left to replace for).
fn crashes_and_hangs_are_reported_and_the_run_goes_on(kind: Kind) {
    let place = Place::new(kind, "run_crash");
    let dir = suite(&place);
    let out = dbfork_run(
        &place,
        &dir,
        &["-j", "16", "--timeout", "5", "--dist", "module"],
        &["crashy"],
        &[("DBFORK_FIXTURE_CRASH", "1")],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let tests = test_ids(&out.report);
    let outcome = |name: &str| {
        let found: Vec<_> = tests.iter().filter(|(id, _)| id.contains(name)).collect();
        assert!(!found.is_empty(), "no test matching {name} in {tests:?}");
        found.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>()
    };
    assert!(
        outcome("test_exit.py").contains(&"crashed".to_string()),
        "{tests:?}"
    );
    assert!(
        outcome("test_segv.py").contains(&"crashed".to_string()),
        "{tests:?}"
    );
    assert!(
        outcome("test_hang.py").contains(&"timed_out".to_string()),
        "{tests:?}"
    );
    // Everything else in those files passed, each test exactly once.
    let ids: std::collections::BTreeSet<&String> = tests.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), tests.len());
    let passed = tests.iter().filter(|(_, o)| o == "passed").count();
    // test_protocol.py's garbage test is skipped without DBFORK_FIXTURE_GARBAGE.
    assert_eq!(outcome("test_sends_garbage"), ["skipped"]);
    assert_eq!(passed + 3 + 1, tests.len(), "{tests:?}");
    assert!(out.stdout.contains("SIGSEGV"), "{}", out.stdout);
    assert!(out.stdout.contains("exit code 3"), "{}", out.stdout);
    // pytest's faulthandler writes the crashing traceback: the report shows the worker's last output.
    assert!(out.stdout.contains("Segmentation fault"), "{}", out.stdout);
    assert!(
        out.stderr.contains("replacing it on a fresh clone"),
        "{}",
        out.stderr
    );
    assert_no_clones(&place);
}

/// `--max-worker-restarts`: within the limit a crashed worker is replaced
/// and the rest of the suite runs; past it the slot is given up, the tests
/// nobody can run are reported as not run, and dbfork says why.
#[test]
fn worker_restarts_are_limited() {
    for (restarts, wanted) in [
        ("1", ["passed", "crashed", "passed", "passed"]),
        ("0", ["passed", "crashed", "not_run", "not_run"]),
    ] {
        // A place of its own each: no timings, the tests run in their order.
        let place = Place::new(Kind::Sqlite, &format!("run_restarts_{restarts}"));
        let dir = suite(&place);
        let out = dbfork_run(
            &place,
            &dir,
            &["-j", "1", "--max-worker-restarts", restarts],
            &["crashy/test_exit.py"],
            &[("DBFORK_FIXTURE_CRASH", "1")],
        );
        let context = format!("restarts {restarts}\n{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.code, 1, "{context}");
        let outcomes: Vec<String> = test_ids(&out.report).into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes, wanted, "{context}");
        if restarts == "0" {
            assert!(
                out.stderr.contains(
                    "gw0 is gone and the 0 worker restarts (--max-worker-restarts) are used up"
                ),
                "{context}"
            );
            assert!(
                out.stderr.contains("2 tests did not run (reported as not run): every worker was lost, and the 0 worker restarts (--max-worker-restarts) are used up"),
                "{context}"
            );
        } else {
            assert!(
                out.stderr.contains("replacing it on a fresh clone"),
                "{context}"
            );
            assert!(!out.stderr.contains("did not run"), "{context}");
        }
        assert_no_clones(&place);
    }
}

/// Every wait is bounded, and one worker's fault is that worker's: a line
/// that is not a message, or a 200 MiB one, stops that worker and reports its
/// test while the others finish; a conftest.py that hangs (in the controller,
/// or only in the workers) ends the run within --start-timeout, naming where.
#[test]
fn protocol_faults_and_hanging_starts_are_bounded() {
    let place = Place::new(Kind::Sqlite, "run_faults");
    let dir = suite(&place);
    for garbage in ["junk", "huge"] {
        let out = dbfork_run(
            &place,
            &dir,
            &["-j", "2"],
            &["crashy/test_protocol.py"],
            &[("DBFORK_FIXTURE_GARBAGE", garbage)],
        );
        assert_eq!(out.code, 1, "{garbage}\n{}\n{}", out.stdout, out.stderr);
        let mut tests = test_ids(&out.report);
        tests.sort();
        let outcomes: Vec<&str> = tests.iter().map(|(_, o)| o.as_str()).collect();
        assert_eq!(outcomes, ["passed", "passed", "crashed"], "{tests:?}");
        assert!(
            out.stderr.contains("sent something dbfork cannot read"),
            "{garbage}: {}",
            out.stderr
        );
        assert_no_clones(&place);
    }
    for (hang, wanted) in [
        ("conftest", "did not finish configuring itself within 3s"),
        ("worker", "did not connect to dbfork within 3s"),
    ] {
        let started = Instant::now();
        let out = dbfork_run(
            &place,
            &dir,
            &["-j", "2", "--start-timeout", "3"],
            &["tests/test_pass.py"],
            &[("DBFORK_FIXTURE_HANG", hang)],
        );
        assert_eq!(out.code, 3, "{hang}\n{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(wanted), "{hang}: {}", out.stderr);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{hang}: {:?}",
            started.elapsed()
        );
        assert_no_clones(&place);
    }
}

fn spawn_run(place: &Place, dir: &Path, extra: &[&str]) -> Child {
    let command = pytest_command(&[]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    run_args(place, dir, extra, &command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// [`spawn_run`] with standard error written to `err`.
fn spawn_run_to(place: &Place, dir: &Path, extra: &[&str], err: &Path) -> Child {
    let command = pytest_command(&[]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    run_args(place, dir, extra, &command)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap()
}

/// The processes (pid and command line) that still have `file` open once
/// `grace` has passed.
fn holders_after(file: &Path, grace: Duration) -> Vec<String> {
    let deadline = Instant::now() + grace;
    loop {
        let mut holders = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            if fds
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file))
            {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                holders.push(format!(
                    "{}: {}",
                    entry.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
        if holders.is_empty() || Instant::now() > deadline {
            return holders;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbfork run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(pid as i32, sig) };
}

/// SIGINT at many moments of a run (21 on SQLite, 8 on a server, where each
/// round costs more), then SIGTERM: every run ends, and leaves no clone.
fn sigint_at_many_moments_and_sigterm_leave_nothing(kind: Kind) {
    let rounds: u64 = if kind == Kind::Sqlite { 21 } else { 8 };
    let place = Place::new(kind, "run_sigint");
    let dir = suite(&place);
    // Build the template first, so the moments spread over the run itself.
    let first = dbfork_run(&place, &dir, &["-j", "2"], &["tests/test_pass.py"], &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut interrupted = 0;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 2500);
        // Standard error goes to a file: a process that outlived dbfork and
        // holds it is then a failure that names it, not a hung read.
        let err_file = dir.join(format!("stderr-{round}"));
        let mut child = spawn_run_to(&place, &dir, &["-j", "2", "--grace", "2s"], &err_file);
        std::thread::sleep(delay);
        // The last round SIGTERM, the one before SIGHUP (a closed terminal).
        let sig = match rounds - round {
            1 => libc::SIGTERM,
            2 => libc::SIGHUP,
            _ => libc::SIGINT,
        };
        signal(child.id(), sig);
        let code = wait_with_deadline(&mut child, Duration::from_secs(60));
        let err = std::fs::read_to_string(&err_file).unwrap_or_default();
        let holders = holders_after(&err_file, Duration::from_secs(5));
        assert!(
            holders.is_empty(),
            "round {round} after {delay:?}: processes outlived dbfork (exit {code}) holding its standard error: {holders:?}\n{err}"
        );
        // 130: the signal's default action, before dbfork's `main` could
        // take it (a loaded machine may not run a new process within
        // milliseconds): then dbfork printed and made nothing.
        let before_main = code == 128 + sig && err.is_empty();
        assert!(
            matches!(code, 0..=2) || before_main,
            "round {round} after {delay:?}: exit {code}\n{err}"
        );
        if code == 2 {
            interrupted += 1;
        }
        assert_no_clones(&place);
    }
    assert!(
        interrupted >= rounds / 2,
        "only {interrupted} of {rounds} runs were interrupted: the moments are too late"
    );
}

/// A database server that goes away mid-run (here: the ephemeral MariaDB
/// stopped under it, while a test waits to use its clone) is a server error
/// (exit 3) that says so, not "tests failed" (exit 1): the failures that
/// follow are the server's doing.
#[test]
fn a_server_that_goes_away_mid_run_is_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = crate::support::ephemeral("mariadb", Stdio::null());
    assert!(url.starts_with("mysql://"), "{url:?}");
    let project = dir.path().join("pytest_suite");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytest_suite"))
        .arg(&project)
        .status()
        .unwrap();
    assert!(copied.success());
    let (started, go, err_file) = (
        dir.path().join("started"),
        dir.path().join("go"),
        dir.path().join("stderr"),
    );
    let python = python();
    let mut run = dbfork()
        .current_dir(&project)
        .env_remove("CI")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("DBFORK_FIXTURE_STARTED", &started)
        .env("DBFORK_FIXTURE_GO", &go)
        .args(["run", "--db", &url, "-j", "1"])
        .args([
            "--setup",
            &format!("{python} setup_db.py"),
            "--input",
            "setup_db.py",
        ])
        .args([
            "--",
            &python,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "servergone",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started.exists() && Instant::now() < deadline && run.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = || std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(started.exists(), "the test never started: {}", err());
    signal(server.id(), libc::SIGTERM);
    assert_eq!(
        wait_with_deadline(&mut server, Duration::from_secs(60)),
        0,
        "the ephemeral server did not stop"
    );
    std::fs::write(&go, "").unwrap();
    let code = wait_with_deadline(&mut run, Duration::from_secs(120));
    let err = err();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("the database server went away during the run"),
        "{err}"
    );
}

/// A worker's clone dropped under the run by someone else (here: `DROP
/// DATABASE ... WITH (FORCE)` while a test waits to use it) is named at the
/// end, and the run is a database error (exit 3), not "tests failed": the
/// test's failure is not its own.
#[test]
fn a_clone_dropped_under_the_run_is_named() {
    let place = Place::new(Kind::Postgres, "run_vanished");
    let dir = suite(&place);
    let (started, go, err_file) = (dir.join("started"), dir.join("go"), dir.join("stderr"));
    let command = pytest_command(&["servergone"]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut child = run_args(&place, &dir, &["-j", "1"], &command)
        .env("DBFORK_FIXTURE_STARTED", &started)
        .env("DBFORK_FIXTURE_GO", &go)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !started.exists() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = || std::fs::read_to_string(&err_file).unwrap_or_default();
    assert!(started.exists(), "the test never started: {}", err());
    let clone = place
        .registry()
        .iter()
        .find(|e| e["kind"] == "clone")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .expect("the worker's clone is registered");
    place.sql_ok(None, &format!("DROP DATABASE \"{clone}\" WITH (FORCE)"));
    std::fs::write(&go, "").unwrap();
    let code = wait_with_deadline(&mut child, Duration::from_secs(120));
    let err = err();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("{clone} vanished during the run")),
        "{err}"
    );
    assert_no_clones(&place);
}

/// A closed standard output (`dbfork run ... | head -1`, a log collector
/// that died) stops nothing: the run goes on, drops every clone, and exits
/// with its own status (here: the suite's failure), not a panic's.
#[test]
fn a_closed_stdout_stops_no_teardown_and_keeps_the_exit_status() {
    let place = Place::new(Kind::Sqlite, "run_closed_stdout");
    let dir = suite(&place);
    let command = pytest_command(&[
        "-s",
        "tests/test_output.py",
        "tests/test_pass.py",
        "tests/test_slow.py",
    ]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let err_file = dir.join("stderr");
    // -vv echoes the workers' output (pytest -s: the tests' prints) to
    // dbfork's standard output while the run goes on.
    let mut child = run_args(&place, &dir, &["-j", "2", "-vv"], &command)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    // `head -1`: one line read, then the pipe closed.
    let mut first = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _ = std::io::BufRead::read_line(&mut stdout, &mut first);
    drop(stdout);
    let code = wait_with_deadline(&mut child, Duration::from_secs(120));
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert_eq!(code, 1, "first line {first:?}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["exit_code"], 1, "{report}");
    assert_no_clones(&place);
}

/// The worker processes of dbfork `pid`: its children but the controller
/// (the test command started once more to configure itself,
/// `DBFORK_ROLE=controller`), and the controller's children (workers forked
/// from it).
fn children_of(pid: u32) -> Vec<u32> {
    let direct = |pid: u32| -> Vec<u32> {
        let out = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    let is_controller = |child: u32| {
        let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap_or_default();
        environ
            .split(|b| *b == 0)
            .any(|var| var == b"DBFORK_ROLE=controller")
    };
    let mut workers = Vec::new();
    for child in direct(pid) {
        if is_controller(child) {
            workers.extend(direct(child));
        } else {
            workers.push(child);
        }
    }
    workers
}

fn wait_for_children(pid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = children_of(pid);
        if kids.len() >= n {
            return kids;
        }
        assert!(
            Instant::now() < deadline,
            "dbfork {pid} did not start {n} workers"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigkill_of_a_worker_then_of_dbfork(kind: Kind) {
    let place = Place::new(kind, "run_kill");
    let dir = suite(&place);
    // A worker killed with SIGKILL while it runs a test: the test is
    // reported, a new worker takes the slot.
    let pidfile = place.dir.path().join("hanging.pid");
    let command = pytest_command(&["tests", "crashy/test_hang.py"]);
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    let mut child = run_args(&place, &dir, &["-j", "2"], &command)
        .env("DBFORK_FIXTURE_CRASH", "1")
        .env("DBFORK_FIXTURE_PIDFILE", &pidfile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let hanging = loop {
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            break pid.trim().parse::<u32>().unwrap();
        }
        assert!(Instant::now() < deadline, "test_hang never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(hanging, libc::SIGKILL);
    let code = wait_with_deadline(&mut child, Duration::from_secs(90));
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        (err.contains("crashed") || err.contains("CRASHED")) && err.contains("test_hang"),
        "{err}"
    );
    assert_no_clones(&place);

    // dbfork itself killed with SIGKILL: its workers die with it, and the next
    // command collects its clones.
    let mut child = spawn_run(&place, &dir, &["-j", "2"]);
    let workers = wait_for_children(child.id(), 2);
    std::thread::sleep(Duration::from_millis(800));
    // Its private directory (socket, plugin copy) cannot be removed by it.
    let pid = child.id();
    let run_dirs = || -> Vec<String> {
        let prefix = format!("dbfork-run-{pid}-");
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect()
    };
    assert_eq!(run_dirs().len(), 1, "the run's directory exists");
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    std::thread::sleep(Duration::from_millis(300));
    for w in workers {
        // SAFETY: probing with signal 0.
        let alive = unsafe { libc::kill(w as i32, 0) } == 0 && !is_zombie(w);
        assert!(!alive, "worker {w} outlived dbfork");
    }
    // Reading never writes: a list shows the dead run's clones and leaves them.
    let (code, table, err) = crate::support::run(&["db", "list", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    // (A dead dbfork's private client option file, with the password, goes at once.)
    assert!(
        table.contains(" clone ") && !err.contains("removed clone"),
        "{table}\n{err}"
    );
    // The next command that makes or drops something collects them, one line each.
    let (code, _, err) = crate::support::run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("removed clone dbfork_") && err.contains("left behind: process"),
        "the next command says what it collected: {err}"
    );
    assert_no_clones(&place);
    assert!(run_dirs().is_empty(), "left: {:?}", run_dirs());
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

#[test]
fn bad_inputs_get_clear_errors_and_leave_nothing() {
    let place = Place::new(Kind::Sqlite, "run_bad");
    let dir = suite(&place);
    // No tests collected: pytest's 5.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let out = dbfork_run(&place, &dir, &["-j", "2"], &["empty"], &[]);
    assert_eq!(out.code, 5, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("no tests ran"), "{}", out.stdout);
    // A pytest usage error: pytest's 4, with pytest's own message.
    let out = dbfork_run(&place, &dir, &["-j", "2"], &["--no-such-option"], &[]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("no-such-option"), "{}", out.stderr);
    // pytest-xdist's -n: dbfork runs the workers.
    let out = dbfork_run(&place, &dir, &[], &["-n", "2"], &[]);
    assert_eq!(out.code, 4);
    assert!(out.stderr.contains("dbfork run -j N"), "{}", out.stderr);
    assert_no_clones(&place);

    // A failing setup command: 3, its output shown, nothing left.
    let place = Place::new(Kind::Sqlite, "run_bad_setup");
    let out = dbfork()
        .current_dir(&dir)
        .args([
            "run",
            "--db",
            &place.url,
            "--setup",
            "echo broken migration >&2; exit 7",
            "--",
        ])
        .args(pytest_command(&[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("broken migration") && err.contains('7'),
        "{err}"
    );
    assert!(place.registry().is_empty(), "{:?}", place.registry());

    // An unreachable database: 3, naming the server.
    let out = dbfork()
        .current_dir(&dir)
        .args([
            "run",
            "--db",
            "postgres://nobody@127.0.0.1:9/x",
            "--connect-timeout",
            "3s",
            "--",
        ])
        .args(pytest_command(&[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("127.0.0.1:9"), "{err}");

    // A bad configuration key: 4, naming the key and the file.
    std::fs::write(dir.join("dbfork.toml"), "jobz = 2\n").unwrap();
    let out = dbfork()
        .current_dir(&dir)
        .args(["run", "--"])
        .args(pytest_command(&[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("jobz") && err.contains("dbfork.toml"), "{err}");
    std::fs::remove_file(dir.join("dbfork.toml")).unwrap();

    // An unknown option before the test command: 4, naming it and the close
    // one, and nothing started (it is not taken for the test command).
    for args in [
        &["run", "-j", "2", "--jobz", "3", "--", "pytest"][..],
        &["run", "--jobz", "3", "pytest"][..],
    ] {
        let out = dbfork().current_dir(&dir).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {err}");
        assert!(err.contains("'--jobz'") && err.contains("--jobs"), "{err}");
        assert!(!err.contains("cannot start"), "{err}");
    }
    assert!(place.registry().is_empty(), "{:?}", place.registry());
    // The command may also start at its first word; what follows is its own.
    let out = dbfork()
        .current_dir(&dir)
        .env_remove("CI")
        .args(["run", "--db", &place.url, "-j", "1"])
        .args(pytest_command(&["-q", "-k", "nothing_matches"]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert_no_clones(&place);
}

/// `--adapter protocol`: a tool that speaks the worker protocol itself (here
/// conformance/minimal_adapter.py, which reports tool-neutral outcomes, not
/// pytest's phases) gets its tests handed out over two workers, its failures
/// reported with its own text, and a crash in a test reported as one.
#[test]
fn a_tool_speaking_the_protocol_itself_runs_without_python_packages() {
    let place = Place::new(Kind::Sqlite, "run_protocol");
    let adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/minimal_adapter.py");
    let adapter = adapter.to_str().unwrap();
    let run = |envs: &[(&str, &str)]| {
        let out = dbfork()
            .current_dir(place.dir.path())
            .env_remove("CI")
            .envs(envs.iter().copied())
            .args([
                "run",
                "--db",
                &place.url,
                "-j",
                "2",
                "--adapter",
                "protocol",
            ])
            .args(["--json", "report.json", "--", &python(), adapter])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(place.dir.path().join("report.json")).unwrap(),
        )
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code(), stdout, report)
    };
    let (code, stdout, report) = run(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    let mut outcomes = test_ids(&report);
    outcomes.sort();
    let expected = [
        ("minimal::test_crashes", "passed"),
        ("minimal::test_fails", "failed"),
        ("minimal::test_passes", "passed"),
        ("minimal::test_skipped", "skipped"),
        ("minimal::test_slow", "passed"),
    ]
    .map(|(id, outcome)| (id.to_string(), outcome.to_string()));
    assert_eq!(outcomes, expected, "{stdout}");
    assert!(
        stdout.contains("FAILED minimal::test_fails - expected 1, got 2"),
        "{stdout}"
    );
    assert!(stdout.contains("1 failed, 3 passed, 1 skipped"), "{stdout}");
    // Two workers, each on its own clone (which one runs what is up to timing).
    let slots = report["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{report}");
    assert!(slots.iter().all(|s| s["workers_started"] == 1), "{report}");

    // A worker that breaks the protocol (a result without `started`) is
    // stopped and replaced, as one that crashed; none of its results count.
    let (code, stdout, report) = run(&[("MINIMAL_ADAPTER_BUG", "skip-start")]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        test_ids(&report)
            .iter()
            .all(|(_, outcome)| outcome == "not_run"),
        "{report}"
    );
    assert_no_clones(&place);

    let (code, stdout, report) = run(&[("DBFORK_CONFORMANCE_CRASH", "1")]);
    assert_eq!(code, Some(1), "{stdout}");
    let crashed: Vec<_> = test_ids(&report)
        .into_iter()
        .filter(|(_, outcome)| outcome != "passed" && outcome != "skipped")
        .collect();
    assert_eq!(
        crashed,
        [
            ("minimal::test_fails".to_string(), "failed".to_string()),
            ("minimal::test_crashes".to_string(), "crashed".to_string())
        ],
        "{stdout}"
    );
    assert_no_clones(&place);
}

/// Without an adapter the command runs once per worker, each on its own clone
/// (the table each creates would collide on a shared database).
fn any_command_runs_once_per_worker(kind: Kind) {
    let place = Place::new(kind, "run_any");
    let create = match kind {
        Kind::Postgres => "psql -X -q -v ON_ERROR_STOP=1 -c 'CREATE TABLE only_mine (x int)'",
        Kind::Mysql => "mariadb --batch -u \"$MYSQL_USER\" \"$MYSQL_DATABASE\" -e 'CREATE TABLE only_mine (x int)'",
        Kind::Sqlite => "python3 -c 'import os,sqlite3; sqlite3.connect(os.environ[\"DBFORK_SQLITE_PATH\"]).execute(\"CREATE TABLE only_mine (x int)\")'",
    };
    let script = format!(
        "{create} && echo \"worker $DBFORK_WORKER of $DBFORK_WORKERS on $DBFORK_DATABASE_NAME\""
    );
    let out = dbfork()
        .current_dir(place.dir.path())
        .env_remove("CI")
        .args(["run", "-j", "2", "--db", &place.url, "--"])
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[gw0] worker 0 of 2 on dbfork_")
            && stdout.contains("[gw1] worker 1 of 2 on dbfork_"),
        "{stdout}"
    );
    assert!(stdout.contains("2 passed"), "{stdout}");
    assert_no_clones(&place);
    // A failing worker fails the run.
    let out = dbfork()
        .current_dir(place.dir.path())
        .args([
            "run",
            "-j",
            "2",
            "--db",
            &place.url,
            "--",
            "sh",
            "-c",
            "test \"$DBFORK_WORKER\" = 0",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_no_clones(&place);
}

mod any_command {
    #[test]
    fn sqlite() {
        super::any_command_runs_once_per_worker(super::Kind::Sqlite)
    }
    #[test]
    fn postgres() {
        super::any_command_runs_once_per_worker(super::Kind::Postgres)
    }
    #[test]
    fn mysql() {
        super::any_command_runs_once_per_worker(super::Kind::Mysql)
    }
}

/// What a command printed: exit code, stdout, stderr.
type Printed = (Option<i32>, String, String);

/// `dbfork run -j 2 --db <place> <extra> -- <python> <args>` in the Django
/// project `dir`, without the test's own DJANGO_SETTINGS_MODULE (dbfork and
/// the project find the settings); then no clone may be left.
fn django_run(
    place: &Place,
    dir: &Path,
    extra: &[&str],
    args: &[&str],
    envs: &[(&str, &str)],
) -> Printed {
    let out = dbfork()
        .current_dir(dir)
        .envs(envs.iter().copied())
        .env_remove("CI")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["run", "-j", "2", "--db", &place.url])
        .args(extra)
        .arg("--")
        .arg(python())
        .args(args)
        .output()
        .unwrap();
    assert_no_clones(place);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The README's old Django example in a project whose settings ignore
/// DATABASE_URL (they always name the developer's own `dev.sqlite3`): a
/// `--setup` that migrates would migrate that database and leave the
/// template empty, so it is refused before it runs, with or without --db,
/// and the error says to leave --setup out; without it the run works and the
/// project's own database is still untouched.
#[test]
fn a_django_setup_that_would_miss_the_template_is_refused_before_it_runs() {
    let place = Place::new(Kind::Sqlite, "run_own_db");
    let dir = fixture_copy(&place, "django_suite");
    let own = dir.join("dev.sqlite3");
    let setup = format!("{} manage.py migrate -v 0", python());
    let env = [("DJSUITE_OWN_DATABASE", "1")];
    let pytest = ["-m", "pytest", "-p", "no:cacheprovider"];
    let (code, stdout, stderr) = django_run(&place, &dir, &["--setup", &setup], &pytest, &env);
    assert_eq!(code, Some(4), "a usage error: {stdout}\n{stderr}");
    for wanted in [
        "may not build the template",
        "do not take their `default` database from DATABASE_URL",
        "dev.sqlite3",
        "Leave --setup out",
        "Nothing was run",
    ] {
        assert!(stderr.contains(wanted), "{wanted}: {stderr}");
    }
    assert!(!own.exists(), "the project's own database was touched");
    // Without --db (the README's shape), dbfork cannot check the settings:
    // the same refusal.
    let out = dbfork()
        .current_dir(&dir)
        .envs(env)
        .env_remove("CI")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env_remove("DATABASE_URL")
        .args(["run", "-j", "2", "--setup", &setup, "--"])
        .arg(python())
        .args(pytest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("without --db dbfork cannot check") && stderr.contains("Leave --setup out"),
        "{stderr}"
    );
    assert!(!own.exists(), "the project's own database was touched");
    // Left out, the tests' own setup builds the template.
    let (code, stdout, stderr) = django_run(&place, &dir, &[], &pytest, &env);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("13 passed"), "{stdout}");
    assert!(!own.exists(), "the project's own database was touched");
}

/// A settings module that does not import: the error leads with the
/// exception, dbfork exits as the serial run does (1), and the hints fit the
/// tool (no pytest option for `manage.py test`).
#[test]
fn a_settings_module_that_does_not_import_fails_as_the_serial_run() {
    let place = Place::new(Kind::Sqlite, "run_bad_settings");
    let dir = fixture_copy(&place, "django_suite");
    std::fs::write(
        dir.join("proj/bad_settings.py"),
        "import no_such_module_here\n",
    )
    .unwrap();
    for args in [
        &[
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--ds",
            "proj.bad_settings",
        ][..],
        &["manage.py", "test", "--settings", "proj.bad_settings"][..],
    ] {
        let serial = Command::new(python())
            .args(args)
            .current_dir(&dir)
            .env_remove("DJANGO_SETTINGS_MODULE")
            .output()
            .unwrap();
        let (code, stdout, stderr) = django_run(&place, &dir, &[], args, &[]);
        assert_eq!(code, serial.status.code(), "{args:?}: {stdout}\n{stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("dbfork: error: the test command failed while it configured itself")
                && first.contains("No module named 'no_such_module_here'"),
            "{args:?}: the exception first: {stderr}"
        );
        assert!(!stderr.contains("-p no:dbfork"), "{args:?}: {stderr}");
    }
}

/// pytest, then `manage.py test`, in a new project: each builds a template
/// of its own (pytest's has pytest.ini and conftest.py among its inputs), and
/// the second says nothing changed: the first was a build for another tool.
#[test]
fn switching_test_tools_names_no_false_change() {
    let place = Place::new(Kind::Sqlite, "run_switch");
    let dir = fixture_copy(&place, "django_suite");
    let pytest = ["-m", "pytest", "-p", "no:cacheprovider"];
    let (code, stdout, stderr) = django_run(&place, &dir, &[], &pytest, &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("built template"), "{stderr}");
    let (_, stdout, stderr) = django_run(&place, &dir, &[], &["manage.py", "test", "djtests"], &[]);
    assert!(stderr.contains("built template"), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("changed since the last build"),
        "no false change: {stderr}"
    );
}

/// pytest-django under dbfork: every test on the worker's clone (no test
/// database created, no migrations in the workers), and a thread still holding a
/// connection at the end does not break the teardown.
fn pytest_django_runs_on_the_clones(kind: Kind) {
    let place = Place::new(kind, "run_django");
    let dir = fixture_copy(&place, "django_suite");
    let py = python();
    // The second round with --fresh-transactional: the fixture's transactional
    // test checks that it runs on a clone of its own.
    let setup = format!("{py} manage.py migrate -v 0");
    let pytest = ["-m", "pytest", "-p", "no:cacheprovider"];
    for round in 0..2 {
        let (code, stdout, stderr) = django_run(
            &place,
            &dir,
            &["--setup", &setup, "--input", "app/migrations/*.py"],
            &[&pytest[..], &["--reuse-db"]].concat(),
            &[(
                "DBFORK_FRESH_TRANSACTIONAL",
                if round == 1 { "true" } else { "false" },
            )],
        );
        assert_eq!(code, Some(0), "round {round}\n{stdout}\n{stderr}");
        assert!(stdout.contains("13 passed"), "{stdout}");
        assert!(
            stderr.contains("--reuse-db"),
            "the note explains --reuse-db: {stderr}"
        );
        if round == 1 {
            assert!(stderr.contains("reusing template"), "{stderr}");
        }
    }
    manage_py_test_runs_on_the_clones(&place, &dir);
    multi_database_settings(&place, &dir);
    // No setup to write: the migrations are found, and they decide the template.
    let auto = || django_run(&place, &dir, &[], &pytest, &[]);
    let expect = |(code, stdout, stderr): Printed, template: &str| {
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("Django project (proj.settings)"),
            "{stderr}"
        );
        assert!(
            stderr.contains(template),
            "expected `{template}`:\n{stderr}"
        );
    };
    // Not the template `manage.py test` built above: pytest's configuration
    // files (pytest.ini, conftest.py) are inputs of pytest's.
    expect(auto(), "built template");
    // -vv lists what the template depends on, each fact whole.
    let verbose = django_run(&place, &dir, &["-vv"], &pytest, &[]);
    assert!(
        verbose.2.contains(
            "template input: setting INSTALLED_APPS (3 entries):\n    contenttypes=django.contrib.contenttypes\n    auth=django.contrib.auth\n    app=app\n"
        ),
        "{}",
        verbose.2
    );
    expect(verbose, "reusing template");
    let extra = dir.join("app/migrations/0002_noop.py");
    std::fs::write(
        &extra,
        "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"app\", \"0001_initial\")]\n    operations = [migrations.RunPython(migrations.RunPython.noop)]\n",
    )
    .unwrap();
    expect(auto(), "built template");
    std::fs::remove_file(&extra).unwrap();
    expect(auto(), "reusing template");
    if kind == Kind::Postgres {
        // pytest-django's own test database was never made.
        assert!(!place.exists(&format!("test_{}", place.maint)));
    }
}

/// `manage.py test` under dbfork (the fixture's `djtests`, unittest only):
/// each test's outcome as unittest decides it, counted as pytest counts,
/// Django's flags kept, and nothing left behind.
fn manage_py_test_runs_on_the_clones(place: &Place, dir: &Path) {
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let (code, stdout, stderr) = django_run(
            place,
            dir,
            &["--json", "report.json"],
            &[&["manage.py", "test", "djtests"][..], args].concat(),
            envs,
        );
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        (code, stdout, stderr, report)
    };
    let (code, stdout, stderr, report) = run(&["--keepdb"], &[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Django project (proj.settings)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Django's --keepdb does nothing"),
        "{stderr}"
    );
    let mut outcomes = test_ids(&report);
    outcomes.sort();
    let prefix = "djtests.test_runner.";
    let expected = [
        ("BrokenSetUpClass.test_one", "error"),
        ("BrokenSetUpClass.test_two", "error"),
        ("NoDatabase.test_simple", "passed"),
        ("Outcomes.test_errors", "failed"),
        ("Outcomes.test_expected_failure", "x_failed"),
        ("Outcomes.test_fails", "failed"),
        ("Outcomes.test_skipped", "skipped"),
        ("Outcomes.test_unexpected_success", "failed"),
        ("Transactional.test_commits", "passed"),
        (
            "Transactional.test_fresh_clone_with_fresh_transactional",
            "passed",
        ),
        (
            "Transactional.test_leaves_a_thread_holding_a_connection",
            "passed",
        ),
        ("WithTestData.test_is_on_the_clone", "passed"),
        ("WithTestData.test_rolls_back", "passed"),
        ("WithTestData.test_sees_its_data", "passed"),
        ("WithTestData.test_tagged_slow", "passed"),
    ]
    .map(|(id, outcome)| (format!("{prefix}{id}"), outcome.to_string()));
    assert_eq!(outcomes, expected, "{stdout}");
    assert_eq!(
        summary(&stdout),
        "3 failed, 8 passed, 1 skipped, 1 xfailed, 2 errors",
        "{stdout}"
    );
    assert!(
        stdout.contains("RuntimeError: deliberate setUpClass error"),
        "{stdout}"
    );
    // A class stays on one worker: its tests share the class's fixtures.
    let slots: std::collections::BTreeSet<_> = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"].as_str().unwrap().contains(".WithTestData."))
        .map(|t| t["slot"].to_string())
        .collect();
    assert_eq!(slots.len(), 1, "{report}");

    // --fresh-transactional: the same outcomes, the transactional tests on
    // fresh clones of their own (the fixture checks the name it runs on).
    let (code, stdout, _, fresh_report) = run(&[], &[("DBFORK_FRESH_TRANSACTIONAL", "true")]);
    assert_eq!(code, Some(1), "{stdout}");
    let mut fresh_outcomes = test_ids(&fresh_report);
    fresh_outcomes.sort();
    assert_eq!(fresh_outcomes, expected, "{stdout}");

    let (code, stdout, stderr, _) = run(&["--tag", "slow", "-v", "2"], &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout), "1 passed", "{stdout}");
    let (code, stdout, stderr, _) = run(
        &[
            "-k",
            "Outcomes",
            "--failfast",
            "--reverse",
            "--shuffle",
            "--buffer",
            "--debug-sql",
            "--parallel",
            "4",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("stopping after 1 failure"), "{stderr}");
    assert!(
        stderr.contains("Django's --parallel does nothing"),
        "{stderr}"
    );
    // The failure's text is unittest's (which of the three failing tests
    // comes first depends on the shuffle's seed, new in every run).
    assert!(
        stdout.contains("AssertionError")
            || stdout.contains("RuntimeError")
            || stdout.contains("unexpected success"),
        "{stdout}"
    );
}

/// A settings variant with two more aliases (`other`, its own database;
/// `replica`, a TEST MIRROR of default): with `--alias other` every worker
/// gets a clone for each, through `manage.py test` and pytest-django; without
/// it the run stops before any test with an error naming the fix.
fn multi_database_settings(place: &Place, dir: &Path) {
    let run = |extra: &[&str], command: &[&str]| django_run(place, dir, extra, command, &[]);
    let django = [
        "manage.py",
        "test",
        "multitests",
        "--settings",
        "proj.settings_multi",
    ];
    let pytest = [
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "multitests",
        "--ds",
        "proj.settings_multi",
    ];
    for command in [&django[..], &pytest[..]] {
        let (code, stdout, stderr) = run(&["--alias", "other"], command);
        assert_eq!(code, Some(0), "{command:?}\n{stdout}\n{stderr}");
        assert_eq!(summary(&stdout), "2 passed", "{stdout}");
        assert!(
            stderr.contains("Django project (proj.settings_multi)"),
            "{stderr}"
        );
    }
    // Without --alias: `other` is a database of its own in the settings, so
    // it gets a clone of its own, as Django makes a test database for it.
    for command in [&django[..], &pytest[..]] {
        let (code, stdout, stderr) = run(&[], command);
        assert_eq!(code, Some(0), "{command:?}\n{stdout}\n{stderr}");
        assert_eq!(summary(&stdout), "2 passed", "{stdout}");
        assert!(
            stderr.contains("the database alias other gets a clone of its own"),
            "{stderr}"
        );
    }
}

mod pytest_django {
    #[test]
    fn sqlite() {
        super::pytest_django_runs_on_the_clones(super::Kind::Sqlite)
    }
    #[test]
    fn postgres() {
        super::pytest_django_runs_on_the_clones(super::Kind::Postgres)
    }
}

/// The example Django project (examples/shop): `dbfork run -j 2` with no setup
/// written gives the outcome of a serial run, through pytest-django and through
/// `manage.py test`, and leaves no clone.
fn example_project_matches_serial_pytest(kind: Kind) {
    let place = Place::new(kind, "run_shop");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let dir = place.dir.path().join("shop");
    assert!(Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let _ = std::fs::remove_dir_all(dir.join(".dbfork"));
    let py = python();
    // Serial: pytest-django makes its own test database next to this one.
    let serial_url = match kind {
        Kind::Sqlite => format!(
            "sqlite:///{}",
            place.dir.path().join("serial.sqlite3").display()
        ),
        _ => place.url.clone(),
    };
    let serial = Command::new(&py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(&dir)
        .env("DATABASE_URL", &serial_url)
        .env_remove("DJANGO_SETTINGS_MODULE")
        .output()
        .unwrap();
    // The suite's hanging-thread test makes pytest-django's own teardown fail
    // on PostgreSQL ("being accessed by other users"): remove what it left.
    drop_serial_test_database(&place);
    let serial_out = String::from_utf8_lossy(&serial.stdout).to_string();
    assert_eq!(serial.status.code(), Some(0), "{serial_out}");
    let (code, stdout, stderr) = django_run(
        &place,
        &dir,
        &[],
        &["-m", "pytest", "-q", "-p", "no:cacheprovider"],
        &[],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // Same outcomes; on PostgreSQL the serial run also warns that pytest-django
    // could not drop its test database (the suite's thread still holds a
    // connection): the teardown failure dbfork exists to remove.
    assert_eq!(summary(&stdout), "726 passed", "{stdout}");
    assert!(
        summary(&serial_out).starts_with("726 passed"),
        "{serial_out}"
    );
    if kind == Kind::Postgres {
        assert!(
            serial_out.contains("is being accessed by other users"),
            "{serial_out}"
        );
    }
    assert!(
        stderr.contains("Django project (shop.settings)"),
        "{stderr}"
    );
    assert_no_clones(&place);

    // The same project through `manage.py test`: Django's runner finds the
    // unittest classes (not pytest's function tests), serially and under dbfork.
    let serial = Command::new(&py)
        .args(["manage.py", "test", "--noinput"])
        .current_dir(&dir)
        .env("DATABASE_URL", &serial_url)
        .env_remove("DJANGO_SETTINGS_MODULE")
        .output()
        .unwrap();
    drop_serial_test_database(&place);
    let serial_err = String::from_utf8_lossy(&serial.stderr).to_string();
    assert_eq!(serial.status.code(), Some(0), "{serial_err}");
    let ran = serial_err
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_once(' ')?
                .0
                .parse::<usize>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `Ran N tests` line: {serial_err}"));
    let (code, stdout, stderr) = django_run(&place, &dir, &[], &["manage.py", "test"], &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary(&stdout), format!("{ran} passed"), "{stdout}");
    // Not pytest's template: pytest's configuration files are among its inputs.
    assert!(stderr.contains("built template"), "{stderr}");
    assert_no_clones(&place);
}

/// The test database a serial Django run makes beside the maintenance one,
/// if its teardown left it.
pub(crate) fn drop_serial_test_database(place: &Place) {
    drop_test_databases(place, &[""]);
}

/// Drops `test_<maintenance database><suffix>` for each suffix: what Django
/// and pytest-django runs (serial, xdist's `_gw0`, `--parallel`'s `_1`) left
/// when their teardown failed.
pub(crate) fn drop_test_databases(place: &Place, suffixes: &[&str]) {
    for suffix in suffixes {
        let name = format!("test_{}{suffix}", place.maint);
        let sql = match place.kind {
            Kind::Sqlite => return,
            Kind::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            Kind::Mysql => format!("DROP DATABASE IF EXISTS {name}"),
        };
        place.sql_ok(None, &sql);
    }
}

mod example_project {
    #[test]
    fn sqlite() {
        super::example_project_matches_serial_pytest(super::Kind::Sqlite)
    }
    #[test]
    fn postgres() {
        super::example_project_matches_serial_pytest(super::Kind::Postgres)
    }
    #[test]
    fn mariadb() {
        super::example_project_matches_serial_pytest(super::Kind::Mysql)
    }
}

/// `--order`: collection order, reversed (which exposes an order-dependent
/// pair that passes in collection order), shuffled by a printed seed that
/// `shuffle:SEED` and `shuffle:last` repeat; a bad order is a usage error.
#[test]
fn the_order_is_chosen_and_a_shuffle_repeats() {
    let place = Place::new(Kind::Sqlite, "order");
    let dir = suite(&place);
    let run = |order: &str| {
        dbfork_run(
            &place,
            &dir,
            &["-j", "1", "-v", "--classify", "off", "--order", order],
            &["orderdep"],
            &[],
        )
    };
    // The test ids in the order the one worker ran them.
    let sequence = |out: &Outcome| -> Vec<String> {
        format!("{}\n{}", out.stdout, out.stderr)
            .lines()
            // dbfork's line per test (`-v`): `PASSED <id> [gw0] 0.01s`.
            .filter(|l| l.contains(" [gw"))
            .filter_map(|l| {
                l.strip_prefix("PASSED ")
                    .or_else(|| l.strip_prefix("FAILED "))
            })
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    let file = run("file");
    assert_eq!(file.code, 0, "{}\n{}", file.stdout, file.stderr);
    let ran = sequence(&file);
    assert_eq!(ran.len(), 10, "{ran:?}");
    assert!(
        ran[0].ends_with("test_reader") && ran[9].ends_with("test_polluter"),
        "{ran:?}"
    );
    let reverse = run("reverse");
    assert_eq!(reverse.code, 1, "{}", reverse.stderr);
    let ran = sequence(&reverse);
    assert!(
        ran[0].ends_with("test_polluter") && ran[9].ends_with("test_reader"),
        "{ran:?}"
    );
    assert!(
        reverse.stdout.contains("1 failed, 9 passed"),
        "{}",
        reverse.stdout
    );

    let shuffled = run("shuffle");
    let said = shuffled
        .stderr
        .lines()
        .find_map(|l| l.split("seed ").nth(1))
        .unwrap_or_else(|| panic!("no seed said: {}", shuffled.stderr));
    let seed: String = said.chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!seed.is_empty(), "{said}");
    let first = sequence(&shuffled);
    assert_eq!(first.len(), 10, "{}", shuffled.stderr);
    assert_eq!(sequence(&run(&format!("shuffle:{seed}"))), first);
    assert_eq!(sequence(&run("shuffle:last")), first);

    let bad = run("sideways");
    assert_eq!(bad.code, 4, "{}", bad.stderr);
    assert!(bad.stderr.contains("shuffle:SEED"), "{}", bad.stderr);
    assert_no_clones(&place);
}

/// Every run is recorded in `.dbfork/runs/<run-id>/`: its events (a line
/// per test with its worker), each worker's order, its report; `dbfork
/// report show [RUN]` prints the order and the summary.
#[test]
fn a_run_is_recorded_and_shown() {
    let place = Place::new(Kind::Sqlite, "record");
    let dir = suite(&place);
    let out = dbfork_run(
        &place,
        &dir,
        &["-j", "1", "--order", "reverse"],
        &["orderdep"],
        &[],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run_id = out.report["run_id"].as_str().unwrap().to_string();
    let recorded = dir.join(".dbfork/runs").join(&run_id);
    let events = std::fs::read_to_string(recorded.join("events.jsonl")).unwrap();
    let tests: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "test")
        .collect();
    assert_eq!(tests.len(), 10, "{events}");
    assert!(
        events.lines().last().unwrap().contains("\"finished\""),
        "{events}"
    );
    let order: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(recorded.join("order.json")).unwrap())
            .unwrap();
    let slot = order["0"].as_array().unwrap();
    assert!(
        slot[0].as_str().unwrap().ends_with("test_polluter"),
        "{order}"
    );
    assert!(
        slot[9].as_str().unwrap().ends_with("test_reader"),
        "{order}"
    );
    assert!(recorded.join("report.json").is_file());

    let show = |args: &[&str]| {
        dbfork()
            .current_dir(&dir)
            .args(["report", "show"])
            .args(args)
            .output()
            .unwrap()
    };
    for args in [&[][..], &[&run_id[..4]][..]] {
        let shown = show(args);
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.status.success(), "{text}");
        assert!(text.contains(&format!("run {run_id}")), "{text}");
        assert!(text.contains("worker gw0, 10 test(s)"), "{text}");
        assert!(text.contains("1 failed, 9 passed"), "{text}");
        // The failure, with what ran before it: the polluter first of all.
        let failed = text
            .lines()
            .find(|l| l.starts_with("FAILED orderdep/test_order.py::test_reader [gw0], test 10 of its worker, after "))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            !failed.contains("test_polluter")
                && failed.ends_with("(and 4 earlier: --full lists them)"),
            "the 5 before it: {failed}"
        );
    }
    let full = show(&["--full"]);
    let text = String::from_utf8_lossy(&full.stdout);
    assert!(
        text.contains("  orderdep/test_order.py::test_polluter"),
        "{text}"
    );
    let none = show(&["nope"]);
    assert_eq!(none.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no run `nope`"));

    // `dbfork rerun --failed`: the failed test alone, with the recorded
    // command, on a fresh clone: it passes (it failed after the polluter).
    let rerun = dbfork()
        .current_dir(&dir)
        .env_remove("CI")
        .args(["rerun", "--failed", "--db", &place.url])
        .args([
            "--setup",
            &format!("{} setup_db.py", python()),
            "--input",
            "setup_db.py",
        ])
        .args(["--json", "rerun.json"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&rerun.stdout),
        String::from_utf8_lossy(&rerun.stderr),
    );
    assert_eq!(rerun.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "running again the 1 failed test(s) of run {run_id}"
        )),
        "{stderr}"
    );
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rerun.json")).unwrap()).unwrap();
    assert_eq!(
        test_ids(&again),
        vec![(
            "orderdep/test_order.py::test_reader".to_string(),
            "passed".to_string()
        )]
    );
    // The rerun is recorded too, and had nothing failed: nothing to run again.
    let nothing = dbfork()
        .current_dir(&dir)
        .args(["rerun", "--failed", "--db", &place.url])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("had no failed test"));
    assert_no_clones(&place);
}

mod outcomes;

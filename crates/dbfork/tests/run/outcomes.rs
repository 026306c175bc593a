//! Failures classified and retried: the `classify/` fixture's planted
//! broken test, flaky test (fails on its first try only) and order-dependent
//! pair (a polluter that leaves a row in its worker's database, a reader in
//! another module that fails after it), under `dbfork run` with real pytest
//! workers, on fresh clones.

use super::*;

/// `dbfork run -j 1 --order file` of `classify/` (the polluter runs before
/// the reader in the one worker; `extra` may give another `-j`), the tries
/// counted in a fresh directory.
fn run_classify(place: &Place, dir: &Path, extra: &[&str]) -> Outcome {
    let marks = place.dir.path().join(format!("marks-{}", extra.join("-")));
    std::fs::create_dir_all(&marks).unwrap();
    let mut flags = vec!["--order", "file", "--junit", "junit.xml"];
    if !extra.contains(&"-j") {
        flags.extend(["-j", "1"]);
    }
    flags.extend(extra);
    dbfork_run(
        place,
        dir,
        &flags,
        &["classify"],
        &[("DBFORK_FIXTURE_MARKS", marks.to_str().unwrap())],
    )
}

/// The JSON report's record of the test whose id ends with `name`.
fn test_of<'a>(out: &'a Outcome, name: &str) -> &'a serde_json::Value {
    let tests = out.report["tests"].as_array().expect("a JSON report");
    tests
        .iter()
        .find(|t| t["id"].as_str().unwrap().ends_with(name))
        .unwrap_or_else(|| panic!("no {name} in {}", out.report))
}

fn tries(test: &serde_json::Value) -> Vec<(String, String)> {
    test["tries"]
        .as_array()
        .map(|tries| {
            tries
                .iter()
                .map(|t| {
                    (
                        t["kind"].as_str().unwrap().to_string(),
                        t["outcome"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pair(kind: &str, outcome: &str) -> (String, String) {
    (kind.to_string(), outcome.to_string())
}

fn classifies_failures(kind: Kind) {
    let place = Place::new(kind, "classify");
    let dir = suite(&place);
    let out = run_classify(&place, &dir, &[]);
    let said = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{said}");
    // The outcomes are the run's: three failures, classified.
    assert_eq!(summary(&out.stdout), "3 failed, 7 passed", "{said}");
    let class = |name: &str| test_of(&out, name)["diagnosis"]["class"].clone();
    assert_eq!(class("test_broken"), "broken", "{said}");
    assert_eq!(class("test_flaky"), "flaky", "{said}");
    assert_eq!(class("test_reader"), "order_dependent", "{said}");
    assert_eq!(
        test_of(&out, "test_polluter")["diagnosis"],
        serde_json::Value::Null
    );
    // What each probe showed.
    let broken = test_of(&out, "test_broken");
    assert_eq!(
        tries(broken),
        [pair("run", "failed"), pair("alone", "failed")],
        "{broken}"
    );
    let reader = test_of(&out, "test_reader");
    assert_eq!(
        tries(reader),
        [
            pair("run", "failed"),
            pair("alone", "passed"),
            pair("replay", "failed")
        ],
        "{reader}"
    );
    let after: Vec<&str> = reader["diagnosis"]["after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        after.contains(&"classify/test_c_polluter.py::test_polluter") && after.len() == 9,
        "{reader}"
    );
    let flaky = test_of(&out, "test_flaky");
    assert_eq!(
        tries(flaky),
        [
            pair("run", "failed"),
            pair("alone", "passed"),
            pair("replay", "passed")
        ],
        "{flaky}"
    );
    // The summary says so, with the tests the order-dependent one fails after.
    for line in [
        "FAILED classify/test_d_reader.py::test_reader - ",
        "  order-dependent: it passes alone in a fresh worker on a fresh clone, and fails again after the 9 tests gw0 ran before it",
        "    classify/test_c_polluter.py::test_polluter",
        "  broken: it fails alone in a fresh worker on a fresh clone too",
        "  flaky: it passes alone in a fresh worker on a fresh clone, and after the 1 test gw0 ran before it too",
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(line)),
            "no line `{line}`:\n{said}"
        );
    }
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(
        junit.contains(r#"<property name="failure_class" value="order-dependent"/>"#),
        "{junit}"
    );
    assert_no_clones(&place);

    // Off: nothing runs again.
    let off = run_classify(&place, &dir, &["--classify", "off"]);
    assert_eq!(summary(&off.stdout), "3 failed, 7 passed", "{}", off.stderr);
    assert!(
        off.report["tests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["tries"].is_null() && t["diagnosis"].is_null()),
        "{}",
        off.report
    );
    assert_no_clones(&place);
}

mod classify {
    #[test]
    fn sqlite() {
        super::classifies_failures(super::Kind::Sqlite)
    }
    #[test]
    fn postgres() {
        super::classifies_failures(super::Kind::Postgres)
    }
}

/// `--retries 2`: the flaky test passes on its first retry (reported flaky
/// in the summary, JUnit and JSON); the broken one fails all three tries;
/// `--flaky-result fail` makes the flaky pass fail the run.
#[test]
fn retries_report_flaky_tests() {
    let place = Place::new(Kind::Sqlite, "retries");
    let dir = suite(&place);
    let out = run_classify(&place, &dir, &["--retries", "2", "--classify", "off"]);
    let said = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{said}");
    // The order-dependent reader passes alone too: flaky, as far as retries go.
    assert_eq!(
        summary(&out.stdout),
        "1 failed, 9 passed (2 flaky)",
        "{said}"
    );
    let flaky = test_of(&out, "test_flaky");
    assert_eq!(flaky["outcome"], "passed");
    assert_eq!(
        tries(flaky),
        [pair("run", "failed"), pair("retry", "passed")],
        "{flaky}"
    );
    assert_eq!(
        tries(test_of(&out, "test_broken")),
        [
            pair("run", "failed"),
            pair("retry", "failed"),
            pair("retry", "failed")
        ]
    );
    // nextest's words for the tries, as they happen.
    for line in [
        "TRY 2 PASSED classify/test_b_flaky.py::test_flaky [gw0]",
        "TRY 3 FAILED classify/test_a_broken.py::test_broken [gw0]",
        "FLAKY classify/test_b_flaky.py::test_flaky - passed on try 2 of 2",
    ] {
        assert!(
            said.lines().any(|l| l.starts_with(line)),
            "no `{line}`:\n{said}"
        );
    }
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    let case = |name: &str| {
        let start = junit
            .find(&format!("name=\"{name}\""))
            .unwrap_or_else(|| panic!("{junit}"));
        let end = start + junit[start..].find("</testcase>").unwrap();
        junit[start..end].to_string()
    };
    let flaky_case = case("test_flaky");
    assert!(
        flaky_case.contains("<flakyFailure") && !flaky_case.contains("<failure"),
        "{flaky_case}"
    );
    let broken_case = case("test_broken");
    assert_eq!(
        broken_case.matches("<rerunFailure").count(),
        2,
        "{broken_case}"
    );
    assert!(broken_case.contains("<failure"), "{broken_case}");
    assert_no_clones(&place);

    // Only the flaky test fails, and the run fails for it when asked to.
    let flaky_only = |result: &str| {
        let marks = place.dir.path().join(format!("marks-only-{result}"));
        std::fs::create_dir_all(&marks).unwrap();
        dbfork_run(
            &place,
            &dir,
            &["-j", "1", "--retries", "1", "--flaky-result", result],
            &["classify/test_b_flaky.py"],
            &[("DBFORK_FIXTURE_MARKS", marks.to_str().unwrap())],
        )
    };
    let pass = flaky_only("pass");
    assert_eq!(pass.code, 0, "{}\n{}", pass.stdout, pass.stderr);
    assert_eq!(summary(&pass.stdout), "1 passed (1 flaky)");
    let fail = flaky_only("fail");
    assert_eq!(fail.code, 1, "{}\n{}", fail.stdout, fail.stderr);
    assert_eq!(summary(&fail.stdout), "1 passed (1 flaky)");
    assert_no_clones(&place);
}

/// `dbfork bisect TEST -- command` in `dir`.
fn bisect(place: &Place, dir: &Path, extra: &[&str], test: &str, args: &[&str]) -> Outcome {
    let mut c = dbfork();
    c.current_dir(dir)
        .env_remove("CI")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["bisect", "--db", &place.url])
        .args(["--setup", &format!("{} setup_db.py", python())])
        .args(["--input", "setup_db.py"])
        .args(extra)
        .arg(test);
    if !args.is_empty() {
        c.arg("--").args(pytest_command(args));
    }
    let out = c.output().unwrap();
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
        report: serde_json::Value::Null,
    }
}

/// The polluter is in another module, among 200 other tests: `dbfork
/// bisect` names it with 2 workers, prints a command that reproduces the
/// failure, and leaves nothing behind; a test that fails alone is said to.
fn bisects_to_the_polluter(kind: Kind) {
    let place = Place::new(kind, "bisect");
    let dir = suite(&place);
    let reader = "pollution/test_c_reader.py::test_reader";
    let out = bisect(&place, &dir, &["-j", "2"], reader, &["pollution"]);
    let said = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{said}");
    assert!(
        out.stderr.contains("the suspects are every other test")
            && out.stderr.contains("bisecting 200 tests"),
        "{said}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{reader} fails after other tests (")),
        "{said}"
    );
    assert_eq!(
        lines[1], "  pollution/test_b_polluter.py::test_polluter",
        "{said}"
    );
    let probes: usize = lines[0]
        .split('(')
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(probes <= 20, "{said}");
    assert_no_clones(&place);

    // The command it prints fails the reader again, after the polluter alone.
    let again = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("dbfork run -j 1 --order file -- "))
        .unwrap_or_else(|| panic!("{said}"));
    let words: Vec<&str> = again.split(' ').collect();
    assert!(
        words.ends_with(&["pollution/test_b_polluter.py::test_polluter", reader]),
        "{again}"
    );
    let reproduced = dbfork_run(
        &place,
        &dir,
        &["-j", "1", "--order", "file", "--classify", "off"],
        &words[words.len() - 2..],
        &[],
    );
    assert_eq!(
        summary(&reproduced.stdout),
        "1 failed, 1 passed",
        "{}",
        reproduced.stderr
    );

    // A test that fails alone: nothing before it to find.
    let broken = bisect(
        &place,
        &dir,
        &["-j", "2"],
        "classify/test_a_broken.py::test_broken",
        &["classify"],
    );
    assert_eq!(broken.code, 1, "{}\n{}", broken.stdout, broken.stderr);
    assert!(broken.stdout.contains("fails alone"), "{}", broken.stdout);
    let missing = bisect(
        &place,
        &dir,
        &[],
        "classify/test_nope.py::test_nope",
        &["classify"],
    );
    assert_eq!(missing.code, 4, "{}", missing.stderr);
    assert!(
        missing
            .stderr
            .contains("collected no test `classify/test_nope.py::test_nope`"),
        "{}",
        missing.stderr
    );
    assert_no_clones(&place);
}

mod bisect {
    #[test]
    fn sqlite() {
        super::bisects_to_the_polluter(super::Kind::Sqlite)
    }
    #[test]
    fn postgres() {
        super::bisects_to_the_polluter(super::Kind::Postgres)
    }
}

/// The suspects come from the newest recorded run where the test failed
/// (its worker's order), and so does the command when none is given.
#[test]
fn bisect_reads_the_recorded_run() {
    let place = Place::new(Kind::Sqlite, "bisect_recorded");
    let dir = suite(&place);
    let out = run_classify(&place, &dir, &["--classify", "off"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let reader = "classify/test_d_reader.py::test_reader";
    let found = bisect(&place, &dir, &["-j", "2"], reader, &[]);
    let said = format!("{}\n{}", found.stdout, found.stderr);
    assert_eq!(found.code, 0, "{said}");
    assert!(
        found.stderr.contains(&format!(
            "the suspects: the 9 test(s) its worker ran before {reader} in run "
        )),
        "{said}"
    );
    assert!(
        found
            .stdout
            .contains("\n  classify/test_c_polluter.py::test_polluter\n"),
        "{said}"
    );
    assert_no_clones(&place);
}

/// Headless Chromium (the `chromium` package) renders `page` at
/// `#fragment`: the DOM after its scripts ran, and what it logged.
fn chromium(page: &Path, fragment: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}#{fragment}", page.display()))
        .output()
        .expect("chromium (Debian's `chromium` package, scripts/system-packages installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A 2-worker run with failures (classified), its `--trace` file and `dbfork report html`: the page opens in
/// headless Chromium without an error, its timeline draws every worker and
/// the database, and `#find=` finds a failure and opens it with its class
/// and output. The trace is the Chrome format with a track per worker.
#[test]
fn the_html_report_and_the_trace_show_the_run() {
    let place = Place::new(Kind::Sqlite, "html");
    let dir = suite(&place);
    let out = run_classify(&place, &dir, &["-j", "2", "--trace", "trace.json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run_id = out.report["run_id"].as_str().unwrap().to_string();

    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trace.json")).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let threads: Vec<&str> = events
        .iter()
        .filter(|e| e["name"] == "thread_name")
        .map(|e| e["args"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(threads, ["gw0", "gw1", "database"], "{trace}");
    let spans = |cat: &str| {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .count()
    };
    // The broken and the flaky test fail wherever they run (the reader only
    // when it runs after the polluter in one worker).
    assert!(spans("passed") >= 7 && spans("failed") >= 2, "{trace}");
    assert!(spans("clone") >= 2 && spans("teardown") == 1, "{trace}");

    let html = dbfork()
        .current_dir(&dir)
        .args(["report", "html", &run_id[..6], "-o", "run.html"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&html.stdout);
    assert!(html.status.success(), "{said}");
    assert!(said.starts_with("run.html: run "), "{said}");
    let page = dir.join("run.html");
    let text = std::fs::read_to_string(&page).unwrap();
    assert!(
        !text.contains("http://") && !text.contains("https://"),
        "no network"
    );

    let (dom, log) = chromium(&page, "find=test_broken");
    assert!(
        dom.contains(r#"data-ready="yes""#),
        "the script ran to its end:\n{log}\n{dom}"
    );
    assert!(!dom.contains("data-errors"), "{dom}");
    assert!(!log.contains("Uncaught"), "{log}");
    for track in ["gw0", "gw1", "database"] {
        assert!(dom.contains(&format!(r#"data-track="{track}""#)), "{dom}");
    }
    let drawn = dom
        .split(r#"data-drawn=""#)
        .nth(1)
        .and_then(|d| d.split('"').next())
        .unwrap_or_else(|| panic!("{dom}"));
    for part in drawn.split(',') {
        let (track, n) = part.split_once(':').unwrap();
        assert!(
            n.parse::<usize>().unwrap() > 0,
            "nothing drawn for {track}: {drawn}"
        );
    }
    // Found and opened: the broken test's failure, its class and its output.
    let opened = dom
        .split("<details")
        .find(|d| d.contains(r#"open="""#))
        .unwrap_or_else(|| panic!("nothing opened: {dom}"));
    assert!(opened.contains("test_broken"), "{opened}");
    assert!(opened.contains("broken everywhere"), "{opened}");
    assert!(
        opened.contains("broken: it fails alone in a fresh worker"),
        "{opened}"
    );
    assert_no_clones(&place);
}

/// The lines each file ran, from `coverage json` of the data in `dir`.
fn covered_lines(dir: &Path) -> std::collections::BTreeMap<String, Vec<u64>> {
    let out = Command::new(python())
        .current_dir(dir)
        .args(["-m", "coverage", "json", "-q", "-o", "coverage.json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("coverage.json")).unwrap()).unwrap();
    let files = json["files"].as_object().unwrap();
    files
        .iter()
        .map(|(file, data)| {
            let lines = data["executed_lines"].as_array().unwrap();
            (
                file.clone(),
                lines.iter().map(|l| l.as_u64().unwrap()).collect(),
            )
        })
        .collect()
}

/// `--cov` with 2 workers (forked from the controller, and started afresh)
/// gives the lines a serial `coverage run -m pytest` gives, file by file:
/// the lines the controller ran before forking (imports, the conftest)
/// included, and no data of an earlier run.
#[test]
fn coverage_of_a_parallel_run_equals_the_serial_runs() {
    let place = Place::new(Kind::Sqlite, "cov");
    let dir = suite(&place);
    std::fs::write(
        dir.join(".coveragerc"),
        "[run]\nsource = .\nomit = setup_db.py\n",
    )
    .unwrap();
    // A script no test runs (its data is left from "an earlier run" below).
    std::fs::write(dir.join("stale.py"), "print('stale')\n").unwrap();
    // Serial: the suite's own way, on a database of its own.
    let serial_db = place.dir.path().join("serial.db");
    let url = format!("sqlite://{}", serial_db.display());
    let setup = Command::new(python())
        .current_dir(&dir)
        .arg("setup_db.py")
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(setup.status.success());
    let serial = Command::new(python())
        .current_dir(&dir)
        .args([
            "-m",
            "coverage",
            "run",
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
        ])
        .env("DATABASE_URL", &url)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert_eq!(
        serial.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&serial.stdout)
    );
    let expected = covered_lines(&dir);
    assert!(
        expected.contains_key("conftest.py") && expected.len() > 10,
        "{expected:?}"
    );
    for fork in ["true", "false"] {
        // Data left from before (a parallel file of a script no test runs)
        // is erased first.
        let stale = Command::new(python())
            .current_dir(&dir)
            .args(["-m", "coverage", "run", "--parallel-mode", "stale.py"])
            .output()
            .unwrap();
        assert!(stale.status.success());
        let out = dbfork_run(
            &place,
            &dir,
            &["-j", "2", "--cov", "--classify", "off", "--fork", fork],
            &["tests"],
            &[],
        );
        let said = format!("{}\n{}", out.stdout, out.stderr);
        assert_eq!(out.code, 1, "{said}");
        assert!(
            said.contains("coverage of every process combined into one data file (total "),
            "{said}"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".coverage."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(covered_lines(&dir), expected, "--fork {fork}: {said}");
    }
    assert_no_clones(&place);
}

/// `--cov` with Django's runner (`manage.py test`, workers forked from the
/// controller that built the template): the lines equal a serial `coverage
/// run manage.py test`'s, but for the fixture's helper that checks which
/// database it is on (its branches differ under dbfork by design).
#[test]
fn coverage_under_djangos_runner_equals_the_serial_runs() {
    let place = Place::new(Kind::Sqlite, "cov_django");
    let dir = fixture_copy(&place, "django_suite");
    std::fs::write(dir.join(".coveragerc"), "[run]\nsource = .\n").unwrap();
    let url = format!(
        "sqlite://{}",
        place.dir.path().join("serial.sqlite3").display()
    );
    let serial = Command::new(python())
        .current_dir(&dir)
        .args(["-m", "coverage", "run", "manage.py", "test", "djtests"])
        .env("DATABASE_URL", &url)
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert_eq!(
        serial.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&serial.stderr)
    );
    let mut expected = covered_lines(&dir);
    let (code, stdout, stderr) = django_run(
        &place,
        &dir,
        &["--cov", "--classify", "off"],
        &["manage.py", "test", "djtests"],
        &[],
    );
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("coverage of every process combined"),
        "{stderr}"
    );
    let mut got = covered_lines(&dir);
    for lines in [&mut expected, &mut got] {
        lines.remove("app/testing.py");
    }
    assert!(expected.len() > 5, "{expected:?}");
    assert_eq!(got, expected);
}

/// `--order recorded` hands each worker the tests of the same worker in the
/// latest recorded run, in their order: a reversed run's order-dependent
/// failure comes back, also with more workers than were recorded.
#[test]
fn the_recorded_order_repeats_a_runs_failure() {
    let place = Place::new(Kind::Sqlite, "recorded_order");
    let dir = suite(&place);
    let run = |flags: &[&str]| {
        let mut all = vec!["-v", "--classify", "off"];
        all.extend(flags);
        dbfork_run(&place, &dir, &all, &["orderdep"], &[])
    };
    let none = run(&["-j", "1", "--order", "recorded"]);
    assert_eq!(none.code, 4, "{}", none.stderr);
    assert!(
        none.stderr.contains("--order recorded: no recorded run"),
        "{}",
        none.stderr
    );
    // The order one worker ran the tests in, from its `-v` lines.
    let sequence = |out: &Outcome| -> Vec<String> {
        out.stderr
            .lines()
            .chain(out.stdout.lines())
            .filter(|l| l.contains(" [gw0] "))
            .filter_map(|l| {
                (l.strip_prefix("PASSED ")
                    .or_else(|| l.strip_prefix("FAILED ")))?
                .split_whitespace()
                .next()
            })
            .map(str::to_string)
            .collect()
    };
    let reversed = run(&["-j", "1", "--order", "reverse"]);
    assert_eq!(reversed.code, 1, "{}", reversed.stderr);
    let first = sequence(&reversed);
    assert_eq!(first.len(), 10, "{first:?}");
    let again = run(&["-j", "1", "--order", "recorded"]);
    assert_eq!(again.code, 1, "{}", again.stderr);
    assert!(
        again.stderr.contains("the tests go out as in run "),
        "{}",
        again.stderr
    );
    assert_eq!(sequence(&again), first);
    let wider = run(&["-j", "2", "--order", "recorded"]);
    assert_eq!(wider.code, 1, "{}", wider.stderr);
    assert!(
        wider
            .stderr
            .contains("(it had 1 worker, this run 2: -j 1 repeats it exactly)"),
        "{}",
        wider.stderr
    );
    assert_eq!(sequence(&wider), first, "gw0 ran its recorded tests");
}

/// `--bisect`: the run's order-dependent failure is reported with the test
/// it fails after, found before the report (summary, JSON, JUnit); the
/// other classes as without it.
#[test]
fn the_bisect_flag_names_what_a_failure_depends_on() {
    let place = Place::new(Kind::Sqlite, "bisect_flag");
    let dir = suite(&place);
    let out = run_classify(&place, &dir, &["--bisect"]);
    let said = format!("{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{said}");
    assert_eq!(summary(&out.stdout), "3 failed, 7 passed", "{said}");
    let polluter = "classify/test_c_polluter.py::test_polluter";
    let reader = test_of(&out, "test_reader");
    assert_eq!(reader["diagnosis"]["class"], "order_dependent", "{reader}");
    assert_eq!(
        reader["diagnosis"]["culprits"],
        serde_json::json!([polluter]),
        "{reader}"
    );
    assert_eq!(test_of(&out, "test_flaky")["diagnosis"]["class"], "flaky");
    assert!(
        out.stdout.contains(&format!(
            "  it fails when these run before it (--bisect):\n    {polluter}\n"
        )),
        "{said}"
    );
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(
        junit.contains(&format!(
            r#"<property name="fails_after" value="{polluter}"/>"#
        )),
        "{junit}"
    );
    assert_no_clones(&place);
}

//! Failures classified and retried: the `classify/` fixture's planted
//! broken test, flaky test (fails on its first try only) and order-dependent
//! pair (a polluter that leaves a row in its worker's database, a reader in
//! another module that fails after it), under `dbfork run` with real pytest
//! workers, on fresh clones.

use super::*;

/// `dbfork run -j 1 --order file` of `classify/` (the polluter runs before
/// the reader in the one worker), the tries counted in a fresh directory.
fn run_classify(place: &Place, dir: &Path, extra: &[&str]) -> Outcome {
    let marks = place.dir.path().join(format!("marks-{}", extra.join("-")));
    std::fs::create_dir_all(&marks).unwrap();
    let mut flags = vec!["-j", "1", "--order", "file", "--junit", "junit.xml"];
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

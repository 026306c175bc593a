//! Zero-config on projects shaped like the ones dbfork met in the wild
//! (tests/fixtures/shoplike, tests/fixtures/runnerlike): no `--setup`, no
//! `--input`. Every test's outcome under `dbfork run -j 2` must equal serial
//! pytest's and `pytest -n 2`'s (Django's runner: serially and with
//! `--parallel 2`), the template must be rebuilt exactly when what it depends
//! on changes, and no clone may be left.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run_tests::{assert_no_clones, drop_test_databases, python};
use crate::support::{dbfork, host_or_socket, Kind, Place};

/// Test id -> outcome, as dbfork's JSON report names outcomes.
type Outcomes = BTreeMap<String, String>;

/// A copy of fixture `name` in the place's directory.
fn fixture(place: &Place, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = place.dir.path().join(name);
    assert!(Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap()
        .success());
    dst
}

/// The project's own database variables (`<prefix>_ENGINE`, `_NAME`,
/// `_HOST`, ...) naming database `name` on the place's server; none for
/// SQLite (the projects default to `:memory:`).
fn settings_env(place: &Place, prefix: &str, name: &str) -> Vec<(String, String)> {
    let url = place.db_url();
    let engine = match place.kind {
        Kind::Sqlite => return Vec::new(),
        Kind::Postgres => "django.db.backends.postgresql",
        Kind::Mysql => "django.db.backends.mysql",
    };
    [
        ("ENGINE", engine.to_string()),
        ("NAME", name.to_string()),
        ("HOST", host_or_socket(&url)),
        ("PORT", url.port.map(|p| p.to_string()).unwrap_or_default()),
        ("USER", url.user.clone().unwrap_or_default()),
        ("PASSWORD", url.password.clone().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{prefix}_{k}"), v))
    .collect()
}

/// The per-run secret is in one test's id: the same within a run, not across runs.
fn normalize(id: &str) -> String {
    match id.split_once("run_secret[") {
        Some((head, _)) => format!("{head}run_secret[secret]"),
        None => id.to_string(),
    }
}

fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A reference run of pytest (serial, or `-n 2`), its outcomes written by
/// tests/support/outcomes_plugin.py.
fn pytest_outcomes(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcomes {
    let file = dir.join("outcomes.json");
    let _ = std::fs::remove_file(&file);
    let support = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support");
    let pythonpath = std::env::join_paths(
        env.iter()
            .filter(|(k, _)| *k == "PYTHONPATH")
            .map(|(_, v)| PathBuf::from(v))
            .chain([support]),
    )
    .unwrap();
    let out = Command::new(python())
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "outcomes_plugin",
        ])
        .args(args)
        .current_dir(dir)
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .env("PYTHONPATH", pythonpath)
        .env("OUTCOMES_FILE", &file)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "pytest {args:?} wrote no outcomes:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let map: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    if map.values().any(|o| o == "error") {
        eprintln!(
            "pytest {args:?} with {env:?} had errors:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    map.into_iter().map(|(k, v)| (normalize(&k), v)).collect()
}

/// A reference run of Django's runner (`-v 2` prints every test's outcome).
fn runner_outcomes(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Outcomes {
    let out = Command::new(python())
        .args(args)
        .current_dir(dir)
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let outcomes = unittest_outcomes(&text);
    assert!(!outcomes.is_empty(), "no outcomes from {args:?}:\n{text}");
    outcomes
}

/// `test_x (module.Class.test_x) ... ok` lines, counted as dbfork counts
/// (an exception in a test is a failure, an expected failure is x_failed).
pub(crate) fn unittest_outcomes(text: &str) -> Outcomes {
    // A test id is dotted and has no spaces: a docstring's "(#9749)" is none.
    let id_of = |test: &str| {
        test.rsplit_once(" (")
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .filter(|id| id.contains('.') && !id.contains(char::is_whitespace))
            .map(str::to_string)
    };
    let mut outcomes = Outcomes::new();
    let mut previous = "";
    for line in text.lines() {
        let before = std::mem::replace(&mut previous, line);
        let Some((test, status)) = line.split_once(" ... ") else {
            continue;
        };
        // A test with a docstring: `test_x (id)` on one line, then the
        // docstring's first line and the status.
        let Some(id) = id_of(test).or_else(|| id_of(before)) else {
            continue;
        };
        let outcome = match status.trim() {
            "ok" => "passed",
            "FAIL" | "ERROR" | "unexpected success" => "failed",
            "expected failure" => "x_failed",
            s if s.starts_with("skipped") => "skipped",
            _ => continue,
        };
        outcomes.insert(id.to_string(), outcome.to_string());
    }
    outcomes
}

/// A reference run gave the fixture's tests the outcomes they are written
/// to have: `count` tests, those in `special` as named, every other passed
/// (so that two broken runs cannot agree by accident).
fn assert_reference(outcomes: &Outcomes, count: usize, special: &[(&str, &str)]) {
    assert_eq!(outcomes.len(), count, "{outcomes:?}");
    for (id, outcome) in outcomes {
        let wanted = special
            .iter()
            .find(|(s, _)| s == id)
            .map_or("passed", |(_, o)| o);
        assert_eq!(outcome, wanted, "{id} in {outcomes:?}");
    }
}

struct Dbforked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    outcomes: Outcomes,
    report: serde_json::Value,
}

/// `dbfork run -j 2 [--db place] --json report.json -- python <args>`.
fn dbfork_outcomes(
    place: &Place,
    dir: &Path,
    with_db: bool,
    args: &[&str],
    env: &[(&str, &str)],
) -> Dbforked {
    let report = dir.join("report.json");
    let _ = std::fs::remove_file(&report);
    let mut command = dbfork();
    command
        .current_dir(dir)
        .env_remove("CI")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .args(["run", "-j", "2", "--json"])
        .arg(&report);
    if with_db {
        command.args(["--db", &place.url]);
    }
    let out = command.arg("--").arg(python()).args(args).output().unwrap();
    let report: serde_json::Value = std::fs::read_to_string(&report)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let outcomes = crate::run_tests::test_ids(&report)
        .into_iter()
        .map(|(id, outcome)| (normalize(&id), outcome))
        .collect();
    Dbforked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        outcomes,
        report,
    }
}

impl Dbforked {
    fn expect(&self, code: i32, outcomes: &Outcomes, what: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "{what}\n{}\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(&self.outcomes, outcomes, "{what}\n{}", self.stderr);
    }
}

/// Drops what serial and pytest-xdist runs of pytest-django left on the
/// server (a failed teardown), by their names.
fn drop_reference_databases(place: &Place) {
    drop_test_databases(place, &["", "_gw0", "_gw1"]);
}

/// The pytest-django project whose settings come from conftest.py.
fn shoplike(kind: Kind) {
    let place = Place::new(kind, "shoplike");
    let root = fixture(&place, "shoplike");
    let project = root.join("project");
    let vendor = root.join("vendor");
    let vendor_path = ("PYTHONPATH".to_string(), vendor.display().to_string());
    let mut reference_env = settings_env(&place, "DATABASE", &place.maint);
    reference_env.push(vendor_path.clone());
    let serial = pytest_outcomes(&project, &[], &env_refs(&reference_env));
    let xdist = pytest_outcomes(&project, &["-n", "2"], &env_refs(&reference_env));
    drop_reference_databases(&place);
    assert_eq!(serial, xdist, "serial pytest and pytest -n 2 disagree");
    assert_reference(
        &serial,
        16,
        &[
            ("tests/test_shop.py::test_fails_on_purpose", "failed"),
            ("tests/test_shop.py::test_skipped_on_purpose", "skipped"),
        ],
    );

    // The settings name a database that does not exist, on a host that does
    // not exist: dbfork makes the template and the clones on --db's server.
    let mut elsewhere = settings_env(&place, "DATABASE", "no_such_database");
    for (name, value) in &mut elsewhere {
        if name == "DATABASE_HOST" {
            *value = "no-such-host.invalid".to_string();
        }
    }
    elsewhere.push(vendor_path.clone());
    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&elsewhere));
    run.expect(1, &serial, "dbfork run, zero config");
    assert!(
        run.stderr
            .contains("Django project (settings configured in code)")
            && run.stderr.contains("built template"),
        "{}",
        run.stderr
    );
    assert_no_clones(&place);

    // The variable that switches the real migrations on makes another
    // template, and dbfork says why; without it the first one is reused.
    let mut migrations = elsewhere.clone();
    migrations.push(("SHOPLIKE_MIGRATIONS".into(), "1".into()));
    let mut reference_migrations = reference_env.clone();
    reference_migrations.push(("SHOPLIKE_MIGRATIONS".into(), "1".into()));
    let serial_migrations = pytest_outcomes(&project, &[], &env_refs(&reference_migrations));
    drop_reference_databases(&place);
    assert_eq!(serial_migrations, serial);
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&migrations));
    run.expect(1, &serial_migrations, "with SHOPLIKE_MIGRATIONS=1");
    for change in [
        "setting migrations (changed)",
        "shoplike/catalog/migrations/0002_seed.py (new)",
    ] {
        assert!(run.stderr.contains(change), "{change}:\n{}", run.stderr);
    }
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&elsewhere));
    run.expect(1, &serial, "back without the variable");
    assert!(run.stderr.contains("reusing template"), "{}", run.stderr);
    if kind != Kind::Sqlite {
        return;
    }

    // pytest-django's --nomigrations turns the real migrations off again:
    // another template, made from the models.
    let nomigrations = [&pytest[..], &["--nomigrations"]].concat();
    let serial_nomigrations = pytest_outcomes(
        &project,
        &["--nomigrations"],
        &env_refs(&reference_migrations),
    );
    assert_eq!(
        serial_nomigrations["tests/test_shop.py::test_seeded_rows_follow_the_migrations"], "failed",
        "no seeded rows without the migrations"
    );
    let run = dbfork_outcomes(
        &place,
        &project,
        true,
        &nomigrations,
        &env_refs(&migrations),
    );
    run.expect(1, &serial_nomigrations, "with --nomigrations");
    assert!(
        run.stderr.contains("built template")
            && run.stderr.contains("setting migrations (changed)"),
        "{}",
        run.stderr
    );

    // A new migration of the third-party app outside the project (site-packages).
    std::fs::write(
        vendor.join("shoplike_tags/migrations/0002_index.py"),
        "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"shoplike_tags\", \"0001_initial\")]\n    operations = [migrations.AddIndex(\"tag\", models.Index(fields=[\"label\"], name=\"tag_label_idx\"))]\n",
    )
    .unwrap();
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&migrations));
    run.expect(1, &serial_migrations, "a new site-packages migration");
    assert!(
        run.stderr.contains(
            "(incremental: only input files were added: shoplike_tags/migrations/0002_index.py)"
        ),
        "the template grows from the previous one by the new migration:\n{}",
        run.stderr
    );

    // Test ids that differ between processes (here the process id): workers
    // forked from the controller share its collection, so the run works;
    // workers started afresh (--fork=false) each collect their own, and the
    // error names the first differing ids and their likely cause, and no
    // test is blamed for it.
    let mut per_process = elsewhere.clone();
    per_process.push(("SHOPLIKE_PID_IDS".into(), "1".into()));
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&per_process));
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.outcomes.len(), serial.len(), "{}", run.stderr);
    per_process.push(("DBFORK_FORK".into(), "false".into()));
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&per_process));
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    for wanted in [
        "collected different tests than the first worker",
        "test_process_id[",
        "no test ran on a wrong list",
        "a value that differs between processes",
    ] {
        assert!(run.stderr.contains(wanted), "{wanted}:\n{}", run.stderr);
    }
    assert!(
        !run.outcomes.values().any(|o| o == "crashed"),
        "a test was blamed: {:?}",
        run.outcomes
    );
    assert_no_clones(&place);
}

/// Without `--db` the template and the clones go to the server the tests'
/// settings name (the project's own variables), not to dbfork's default.
fn server_from_the_settings(kind: Kind) {
    let place = Place::new(kind, "fromsettings");
    let root = fixture(&place, "shoplike");
    let project = root.join("project");
    let mut env = settings_env(&place, "DATABASE", &place.maint);
    env.push((
        "PYTHONPATH".into(),
        root.join("vendor").display().to_string(),
    ));
    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let run = dbfork_outcomes(&place, &project, false, &pytest, &env_refs(&env));
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "the tests' settings use {}",
            if kind == Kind::Postgres {
                "PostgreSQL"
            } else {
                "MySQL/MariaDB"
            }
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.outcomes.len(), 16, "{}", run.stderr);
    // The registry is on the server (PostgreSQL: in `postgres`; MySQL: in
    // dbfork's own schema): the template is there, the clones are not.
    let registry_url = match kind {
        Kind::Postgres => place.db_url().with_database("postgres"),
        _ => {
            let mut url = place.db_url();
            url.database = None;
            url
        }
    }
    .to_url_with_password();
    let slots: Vec<String> = run.report["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["database"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slots.len(), 2);
    for clone in &slots {
        assert!(!place.exists(clone), "{clone} was left");
    }
    let template = run
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("dbfork_tpl_"))
        .expect("the template's name")
        .to_string();
    assert!(
        place.exists(&template),
        "{template} is on the tests' server: {}\n{}",
        place.sql_ok(None, "SELECT string_agg(datname, ' ') FROM pg_database"),
        run.stderr
    );
    let dropped = dbfork()
        .args(["db", "drop", "--db", &registry_url, &template])
        .output()
        .unwrap();
    assert!(
        dropped.status.success(),
        "{}",
        String::from_utf8_lossy(&dropped.stderr)
    );
}

/// The Django runner project: `manage.py test` with a custom TEST_RUNNER and
/// `runtests.py`, against serial and `--parallel 2` runs of the same.
fn runnerlike(kind: Kind) {
    let place = Place::new(kind, "runnerlike");
    let dir = fixture(&place, "runnerlike");
    let reference_env = settings_env(&place, "RUNNERLIKE_DB", &place.maint);
    let reference_env = env_refs(&reference_env);
    let serial = runner_outcomes(&dir, &["manage.py", "test", "-v", "2"], &reference_env);
    drop_reference_databases(&place);
    let parallel = runner_outcomes(
        &dir,
        &["manage.py", "test", "-v", "2", "--parallel", "2"],
        &reference_env,
    );
    drop_reference_databases(&place);
    drop_clones_of_parallel_runs(&place);
    // On a server, Django's --parallel clones the test database inside
    // DiscoverRunner.setup_databases, before the project's override seeds
    // its row: the clones miss it and the test fails, unlike a serial run.
    // dbfork's template holds what the whole override made, as serially.
    let seeded = "inventory.tests.SeededTests.test_seeded_once_by_the_runner";
    let mut parallel_expected = serial.clone();
    if kind != Kind::Sqlite {
        parallel_expected.insert(seeded.to_string(), "failed".to_string());
    }
    assert_eq!(parallel, parallel_expected, "serial and --parallel 2");
    assert_reference(
        &serial,
        8,
        &[
            ("inventory.tests.ItemTests.test_fails_on_purpose", "failed"),
            ("inventory.tests.ItemTests.test_skipped", "skipped"),
            (
                "inventory.tests.ItemTests.test_expected_failure",
                "x_failed",
            ),
        ],
    );

    // The settings name a database that does not exist: dbfork uses --db.
    let elsewhere = settings_env(&place, "RUNNERLIKE_DB", "no_such_database");
    let elsewhere = env_refs(&elsewhere);
    let run = dbfork_outcomes(&place, &dir, true, &["manage.py", "test"], &elsewhere);
    run.expect(1, &serial, "manage.py test under dbfork");
    assert!(
        run.stderr
            .contains("create_test_db via runnerlike.runner.SeedingRunner.setup_databases"),
        "{}",
        run.stderr
    );
    assert_no_clones(&place);

    let script = runner_outcomes(&dir, &["runtests.py", "--parallel", "2"], &reference_env);
    drop_reference_databases(&place);
    drop_clones_of_parallel_runs(&place);
    assert_eq!(script, parallel_expected);
    let run = dbfork_outcomes(&place, &dir, true, &["runtests.py"], &elsewhere);
    run.expect(1, &serial, "runtests.py under dbfork");
    assert_no_clones(&place);

    // A script that makes DiscoverRunner itself (not the project's
    // TEST_RUNNER: nothing seeds the row).
    let direct = runner_outcomes(&dir, &["run_tests.py"], &reference_env);
    drop_reference_databases(&place);
    assert_eq!(direct.get(seeded).map(String::as_str), Some("failed"));
    let run = dbfork_outcomes(&place, &dir, true, &["run_tests.py"], &elsewhere);
    run.expect(
        1,
        &direct,
        "DiscoverRunner made by the script, under dbfork",
    );
    assert_no_clones(&place);
    // A second label set run after the first in the same process: dbfork
    // runs the first and says the second was not run.
    let twice = ["run_tests.py", "--then", "inventory.tests.PlainTests"];
    let run = dbfork_outcomes(&place, &dir, true, &twice, &elsewhere);
    run.expect(4, &direct, "a script that runs its runner twice");
    assert!(
        run.stderr.contains("second test run") && run.stderr.contains("inventory.tests.PlainTests"),
        "{}",
        run.stderr
    );
    assert_no_clones(&place);
}

/// Django's `--parallel` clones are `test_<name>_1`, `_2`; a failed
/// teardown leaves them.
fn drop_clones_of_parallel_runs(place: &Place) {
    drop_test_databases(place, &["_1", "_2"]);
}

/// What the serial run has when pytest-django makes its test database, in
/// the setup of the first database test after collection
/// (tests/fixtures/serialshapes): models defined in a test module, warnings
/// that depend on being inside a test's setup and on the ini file's filters,
/// a conftest that chooses the settings and adds an app in
/// `pytest_configure`, and a field holding a per-process temporary storage.
/// `dbfork run -j 2` gives serial pytest's outcomes (pytest -n 2 does not:
/// its workers inherit DJANGO_SETTINGS_MODULE and lose the app), and the
/// next run reuses the template.
fn serialshapes(kind: Kind) {
    let place = Place::new(kind, "serialshapes");
    let project = fixture(&place, "serialshapes");
    let env = settings_env(&place, "SHAPES", &place.maint);
    let serial = pytest_outcomes(&project, &[], &env_refs(&env));
    drop_reference_databases(&place);
    assert_reference(&serial, 11, &[]);
    let xdist = pytest_outcomes(&project, &["-n", "2"], &env_refs(&env));
    drop_reference_databases(&place);
    assert_ne!(xdist, serial, "pytest -n 2 was expected to lose the app");

    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&env));
    run.expect(0, &serial, "dbfork run, zero config");
    assert!(run.stderr.contains("built template"), "{}", run.stderr);
    let run = dbfork_outcomes(&place, &project, true, &pytest, &env_refs(&env));
    run.expect(0, &serial, "the next run");
    assert!(
        run.stderr.contains("reusing template"),
        "the per-process storage must not change the fingerprint:\n{}",
        run.stderr
    );

    // pytest-django's --nomigrations: the tests see no migrations either.
    let serial = pytest_outcomes(&project, &["--nomigrations"], &env_refs(&env));
    drop_reference_databases(&place);
    assert_eq!(
        serial["tests/test_library.py::test_migrations_as_the_serial_run_sees_them"],
        "passed"
    );
    let nomigrations = [&pytest[..], &["--nomigrations"]].concat();
    let run = dbfork_outcomes(&place, &project, true, &nomigrations, &env_refs(&env));
    run.expect(1, &serial, "dbfork run --nomigrations");
    assert_no_clones(&place);
}

per_backend!(shoplike, runnerlike, serialshapes, incremental_templates);

#[test]
fn server_from_the_settings_postgres() {
    server_from_the_settings(Kind::Postgres)
}

/// Django's own test suite (the sdist of the installed Django, which
/// `scripts/test` fetches): a dozen apps on PostgreSQL, zero config, the same
/// outcomes as `runtests.py --parallel 2`, including the test Django skips on
/// PostgreSQL (`mark_expected_failures_and_skips`), the `other` alias, and
/// `admin_views`, whose apps runtests.py installs for its label and whose
/// test models keep files on a storage in a per-process temporary directory
/// (the next run reuses the template all the same).
#[test]
fn djangos_own_suite_on_postgres() {
    let tests = std::env::var("DBFORK_TEST_DJANGO_TESTS").expect(
        "DBFORK_TEST_DJANGO_TESTS is not set: run the tests with scripts/test, which fetches Django's sdist, or point it at the tests/ directory of one",
    );
    let runtests = Path::new(&tests).join("runtests.py");
    assert!(runtests.is_file(), "no {}", runtests.display());
    let place = Place::new(Kind::Postgres, "djsuite");
    // Settings that read the server from variables, as Django's own
    // test_sqlite.py names its databases: `default` and `other`.
    let settings = "import os\n\
         _common = {k: os.environ['DJSUITE_' + k] for k in ('ENGINE', 'HOST', 'PORT', 'USER', 'PASSWORD')}\n\
         DATABASES = {'default': dict(_common, NAME=os.environ['DJSUITE_NAME']), 'other': dict(_common, NAME=os.environ['DJSUITE_NAME'] + '_other')}\n\
         SECRET_KEY = 'django_tests_secret_key'\n\
         PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']\n\
         DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'\n\
         USE_TZ = False\n";
    std::fs::write(place.dir.path().join("dbfork_pg_settings.py"), settings).unwrap();
    let apps = [
        "basic",
        "transactions",
        "multiple_database",
        "get_or_create",
        "select_for_update",
        "lookup",
        "admin_views",
        "model_forms",
        "aggregation",
        "fixtures",
        "many_to_one",
        "m2m_through",
    ];
    let mut env = settings_env(&place, "DJSUITE", &place.maint);
    env.push(("PYTHONPATH".into(), place.dir.path().display().to_string()));
    let env = env_refs(&env);
    let runtests = runtests.display().to_string();
    let mut args = vec![
        runtests.as_str(),
        "--settings=dbfork_pg_settings",
        "--noinput",
    ];
    args.extend(apps);
    let reference = runner_outcomes(
        place.dir.path(),
        &[&args[..], &["--parallel", "2", "-v", "2"]].concat(),
        &env,
    );
    drop_test_databases(&place, &["", "_other", "_1", "_2", "_other_1", "_other_2"]);
    assert!(reference.len() > 400, "{reference:?}");
    let skipped_on_postgres = "lookup.tests.LookupTests.test_textfield_exact_null";
    assert_eq!(reference[skipped_on_postgres], "skipped");
    let run = dbfork_outcomes(&place, place.dir.path(), true, &args, &env);
    run.expect(0, &reference, "Django's own suite under dbfork");
    assert!(
        run.stderr
            .contains("the database alias other gets a clone of its own"),
        "{}",
        run.stderr
    );
    assert!(reference.keys().any(|id| id.starts_with("admin_views.")));
    // Another process computes the same fingerprint: the next run would
    // reuse the template (the storages' temporary directories are not in it).
    let out = dbfork()
        .current_dir(place.dir.path())
        .env_remove("DJANGO_SETTINGS_MODULE")
        .envs(env.iter().copied())
        .args(["db", "fingerprint", "--db", &place.url, "--"])
        .arg(python())
        .args(&args)
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let template = template_named_in(&run.stderr);
    assert!(
        fingerprint.len() >= 16 && template.contains(&fingerprint[..16]),
        "{template} is not the template of fingerprint {fingerprint}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_clones(&place);
}

/// Never silently wrong: a failing migration shows its exception first and
/// keeps the whole output; a template without the project's tables is an
/// error; workers configured unlike the controller are named; a project
/// without Django settings leaves pytest-django alone and says so; and
/// `.dbfork/` keeps itself out of git.
#[test]
fn errors_name_their_cause() {
    let place = Place::new(Kind::Sqlite, "zcerrors");
    let runner = fixture(&place, "runnerlike");
    let run = dbfork_outcomes(
        &place,
        &runner,
        true,
        &["manage.py", "test"],
        &[("RUNNERLIKE_MIGRATE", "1")],
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    let raised = run
        .stderr
        .find("It raised:\nRuntimeError: inventory's migrations must not run")
        .unwrap_or_else(|| panic!("the exception first:\n{}", run.stderr));
    let traceback = run
        .stderr
        .find("Traceback (most recent call last)")
        .unwrap();
    assert!(raised < traceback, "{}", run.stderr);
    let log = run
        .stderr
        .split("whole output is in ")
        .nth(1)
        .and_then(|rest| rest.split_once(".log"))
        .map(|(path, _)| format!("{path}.log"))
        .unwrap_or_else(|| panic!("no log named:\n{}", run.stderr));
    assert!(Path::new(&log).is_file(), "{log}");
    assert!(
        run.stderr.contains("the suite did not run (exit code 3)"),
        "{}",
        run.stderr
    );
    assert!(place.registry().is_empty(), "{:?}", place.registry());

    let shop = fixture(&place, "shoplike");
    let project = shop.join("project");
    let vendor = shop.join("vendor").display().to_string();
    let pytest = ["-m", "pytest", "-q", "-p", "no:cacheprovider"];
    let run = dbfork_outcomes(
        &place,
        &project,
        true,
        &pytest,
        &[("PYTHONPATH", &vendor), ("SHOPLIKE_NO_TABLES", "1")],
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the template has none of the project's 8 model tables"),
        "{}",
        run.stderr
    );
    assert!(place.registry().is_empty(), "{:?}", place.registry());

    let run = dbfork_outcomes(
        &place,
        &project,
        true,
        &pytest,
        &[
            ("PYTHONPATH", &vendor),
            ("SHOPLIKE_CONTROLLER_ONLY_APP", "1"),
        ],
    );
    assert_eq!(run.code, Some(3), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("configured Django differently from the controller that made the template: INSTALLED_APPS"),
        "{}",
        run.stderr
    );
    assert!(
        !run.outcomes.values().any(|o| o == "crashed"),
        "{:?}",
        run.outcomes
    );
    assert_no_clones(&place);
    let ignore = std::fs::read_to_string(project.join(".dbfork/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*"), "{ignore}");

    // No Django settings anywhere: pytest-django is left alone, and dbfork says so.
    let plain = place.dir.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        plain.join("test_plain.py"),
        "def test_one():\n    assert True\n\n\ndef test_two():\n    assert True\n",
    )
    .unwrap();
    let run = dbfork_outcomes(&place, &plain, true, &pytest, &[]);
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("no Django project found: pytest-django is installed, but no Django settings are configured"),
        "{}",
        run.stderr
    );
    assert_eq!(run.outcomes.len(), 2);
}

/// A new migration of the project's app: a new model and a data migration
/// that fills it and changes rows an older migration made.
const NEW_MIGRATION: &str = r#"from django.db import migrations, models


def fill(apps, schema_editor):
    Supplier = apps.get_model("catalog", "Supplier")
    for name in ("acme", "globex"):
        Supplier.objects.create(name=name)
    Category = apps.get_model("catalog", "Category")
    Category.objects.filter(name="tools").update(name="hardware")


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_seed")]
    operations = [
        migrations.CreateModel(
            "Supplier",
            [
                ("id", models.AutoField(primary_key=True)),
                ("name", models.CharField(max_length=50, unique=True)),
            ],
        ),
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
"#;

/// Incremental templates on the shoplike project (real migrations on): a new
/// migration grows the template from the previous one, and the result equals
/// a build from nothing (every object and row, by the backend's own dump); a
/// changed old migration and a removed migration each force a full build.
fn incremental_templates(kind: Kind) {
    let place = Place::new(kind, "incr");
    let root = fixture(&place, "shoplike");
    let project = root.join("project");
    let migrations = project.join("shoplike/catalog/migrations");
    let mut env = settings_env(&place, "DATABASE", &place.maint);
    env.push((
        "PYTHONPATH".into(),
        root.join("vendor").display().to_string(),
    ));
    env.push(("SHOPLIKE_MIGRATIONS".into(), "1".into()));
    let pytest = [
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "seeded",
    ];
    let run = |extra: &[(&str, &str)]| {
        let mut all = env_refs(&env);
        all.extend_from_slice(extra);
        let run = dbfork_outcomes(&place, &project, true, &pytest, &all);
        assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
        run.stderr
    };
    let full_build = |err: &str, why: &str| {
        assert!(
            err.contains("built template") && !err.contains("(incremental"),
            "{why}: expected a build from nothing:\n{err}"
        );
    };

    let err = run(&[]);
    full_build(&err, "the first build");

    std::fs::write(migrations.join("0003_suppliers.py"), NEW_MIGRATION).unwrap();
    let err = run(&[]);
    assert!(
        err.contains("(incremental: only input files were added: shoplike/catalog/migrations/0003_suppliers.py)"),
        "{err}"
    );
    let grown = template_named_in(&err);
    let grown_contents = template_contents(&place, &grown);
    assert!(
        grown_contents.iter().any(|l| l.contains("globex"))
            && grown_contents.iter().any(|l| l.contains("hardware")),
        "the new migration's rows are missing: {grown_contents:?}"
    );

    // The same inputs built from nothing hold the same.
    drop_databases(&place, std::slice::from_ref(&grown));
    let err = run(&[("DBFORK_INCREMENTAL", "0")]);
    full_build(&err, "--incremental off");
    let full = template_named_in(&err);
    assert_eq!(full, grown, "the same inputs, another template name");
    // The schema and every table's row count; not every row's values:
    // what Django's post_migrate adds (content types, permissions) is
    // numbered in the order it is added, as in a database migrated step by step.
    crate::cache_tests::assert_same(
        &schema_and_counts(&template_contents(&place, &full)),
        &schema_and_counts(&grown_contents),
        "the grown template differs from the one built from nothing",
    );

    // A changed old migration: from nothing.
    let seed = migrations.join("0002_seed.py");
    let text = std::fs::read_to_string(&seed).unwrap();
    std::fs::write(&seed, format!("{text}\n# edited\n")).unwrap();
    let err = run(&[]);
    full_build(&err, "an old migration changed");
    assert!(err.contains("0002_seed.py (changed)"), "{err}");

    // A removed migration: from nothing, although its parent exists.
    std::fs::remove_file(migrations.join("0003_suppliers.py")).unwrap();
    let err = run(&[]);
    full_build(&err, "a migration was removed");
    assert_no_clones(&place);
}

/// A dump's schema lines as they are, and its INSERT lines as one
/// `rows <table> <count>` line per table.
fn schema_and_counts(dump: &[String]) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in dump {
        match line.strip_prefix("INSERT INTO ") {
            Some(rest) => {
                let table = rest
                    .split([' ', '('])
                    .next()
                    .unwrap_or_default()
                    .trim_matches(['`', '"'])
                    .trim_start_matches("public.")
                    .to_string();
                *counts.entry(table).or_default() += 1;
            }
            None => out.push(line.clone()),
        }
    }
    out.extend(counts.iter().map(|(t, n)| format!("rows {t} {n}")));
    out
}

/// The template a run's output names (`built template NAME ...`).
fn template_named_in(stderr: &str) -> String {
    stderr
        .split("built template ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no template named in:\n{stderr}"))
        .to_string()
}

fn drop_databases(place: &Place, names: &[String]) {
    let mut args = vec!["db", "drop", "--db", &place.url];
    args.extend(names.iter().map(String::as_str));
    let (code, _, err) = crate::support::run(&args);
    assert_eq!(code, 0, "{err}");
}

/// What template `name` holds, as the backend's dump program shows a clone
/// of it: sorted lines, the clone's name replaced by `DB`.
fn template_contents(place: &Place, name: &str) -> Vec<String> {
    let out = dbfork()
        .args(["db", "clone", "--db", &place.url, "--template", name])
        .args(["--owner", "none", "--json"])
        .output()
        .unwrap();
    let made: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    let clone = made["clones"][0]["name"].as_str().unwrap().to_string();
    let url = place.db_url();
    let mut dump = match place.kind {
        Kind::Postgres => {
            let mut c = Command::new("pg_dump");
            c.args([
                "--no-owner",
                "--no-privileges",
                "--inserts",
                "--rows-per-insert=1",
            ]);
            crate::support::pg_args(&mut c, &url, Some(&clone));
            c
        }
        Kind::Mysql => {
            let mut c = Command::new("mariadb-dump");
            c.args([
                "--skip-comments",
                "--skip-extended-insert",
                "--routines",
                "--triggers",
                "--hex-blob",
            ]);
            crate::support::my_args(&mut c, &url, Some(&clone));
            c
        }
        Kind::Sqlite => {
            let mut c = Command::new("python3");
            c.args([
                "-c",
                "import sqlite3,sys; print('\\n'.join(sqlite3.connect(sys.argv[1]).iterdump()))",
            ]);
            c.arg(place.dir.path().join(format!("{clone}.sqlite3")));
            c
        }
    };
    let out = dump.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_databases(place, std::slice::from_ref(&clone));
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--") && !l.contains("restrict "))
        .map(|l| l.replace(&clone, "DB"))
        .collect();
    lines.sort();
    lines
}

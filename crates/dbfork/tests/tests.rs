//! dbfork's integration tests: the real binary against real PostgreSQL,
//! MariaDB and SQLite. Each test has its own maintenance database (and so its
//! own registry) and asserts what a user would see: exit codes, output, and
//! what exists on the server afterwards.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use run_tests::assert_no_clones;
use support::{dbfork, run, Kind, Place};

macro_rules! per_backend {
    ($($test:ident),* $(,)?) => {
        mod postgres { $( #[test] fn $test() { super::$test(super::Kind::Postgres) } )* }
        mod mysql { $( #[test] fn $test() { super::$test(super::Kind::Mysql) } )* }
        mod sqlite { $( #[test] fn $test() { super::$test(super::Kind::Sqlite) } )* }
    };
}

macro_rules! per_server {
    ($($test:ident),* $(,)?) => {
        mod postgres_server { $( #[test] fn $test() { super::$test(super::Kind::Postgres) } )* }
        mod mysql_server { $( #[test] fn $test() { super::$test(super::Kind::Mysql) } )* }
    };
}

// After the macros, which they use too.
#[path = "cache/mod.rs"]
mod cache_tests;
#[path = "messages/mod.rs"]
mod messages;
#[path = "run/mod.rs"]
mod run_tests;
#[path = "serve/mod.rs"]
mod serve;
#[path = "zero_config/mod.rs"]
mod zero_config;

per_backend!(
    spoofed_registry_rows_touch_nothing,
    registry_is_versioned_and_strict,
    owners_are_judged_only_where_their_pids_mean_something,
    kill_9_during_setup_leaves_no_process_and_no_secret,
    template_build_reuse_rebuild_clone_drop,
    failing_setup_leaves_nothing,
    kill_9_mid_clone_then_gc,
    decoys_survive_every_command,
    concurrent_builds_of_one_fingerprint_build_once,
    sigint_during_setup_drops_the_half_built_template,
    a_template_build_can_span_two_calls,
    older_templates_of_a_setup_are_pruned,
    clean_removes_what_dbfork_made_for_the_project,
);
per_server!(
    drop_ends_open_sessions,
    two_registries_on_one_server_do_not_collide
);

/// Every backend marks the databases dbfork creates (MySQL proper, which has
/// no schema comments, is not among the tested servers).
mod marked {
    #[test]
    fn postgres() {
        super::a_forged_row_naming_a_user_database_of_dbforks_shape_drops_nothing(
            super::Kind::Postgres,
        )
    }
    #[test]
    fn sqlite() {
        super::a_forged_row_naming_a_user_database_of_dbforks_shape_drops_nothing(
            super::Kind::Sqlite,
        )
    }
    #[test]
    fn mysql() {
        super::a_forged_row_naming_a_user_database_of_dbforks_shape_drops_nothing(
            super::Kind::Mysql,
        )
    }
}

/// A user's database whose name has exactly dbfork's shape, and a forged
/// registry row naming it (a clone of a dead owner, collectable): neither
/// `db gc`, nor `db drop`, nor the collection at a command's start drops
/// it, because it lacks the mark dbfork puts on every database it creates.
fn a_forged_row_naming_a_user_database_of_dbforks_shape_drops_nothing(kind: Kind) {
    let place = Place::new(kind, "mark");
    let runs = place.dir.path().join("runs");
    let (code, _, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(code, 0, "{err}");
    let victim = "dbfork_0a1b2c3d4e_7".to_string();
    let victim_file = place.dir.path().join(format!("{victim}.sqlite3"));
    let rows = || match kind {
        Kind::Sqlite => Place::sqlite_file_ok(&victim_file, "SELECT COUNT(*) FROM precious"),
        _ => place.sql_ok(Some(&victim), "SELECT COUNT(*) FROM precious"),
    };
    match kind {
        Kind::Sqlite => {
            Place::sqlite_file_ok(&victim_file, "CREATE TABLE precious (x INT)");
            Place::sqlite_file_ok(&victim_file, "INSERT INTO precious VALUES (1)");
        }
        _ => {
            place.sql_ok(None, &format!("CREATE DATABASE {victim}"));
            place.sql_ok(
                Some(&victim),
                "CREATE TABLE precious (x INT); INSERT INTO precious VALUES (1)",
            );
        }
    }
    insert_registry_rows(&place, std::slice::from_ref(&victim));
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("not the mark dbfork puts"), "{err}");
    assert_eq!(rows(), "1", "{err}");
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &victim]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("refusing to drop"), "{err}");
    assert_eq!(rows(), "1", "{err}");
    let (code, _, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(
        code, 0,
        "the collection at the start reports and goes on: {err}"
    );
    assert_eq!(rows(), "1", "{err}");
    // The user's database is the test's to remove.
    let table = registry_tables(kind).0;
    registry_sql(
        &place,
        &format!("DELETE FROM {table} WHERE name = '{victim}'"),
    );
    match kind {
        Kind::Sqlite => std::fs::remove_file(&victim_file).unwrap(),
        _ => {
            place.sql_ok(None, &format!("DROP DATABASE {victim}"));
        }
    }
}

/// A template's setup for `place`: applies the schema and counts its runs in `runs`.
fn setup_for(place: &Place, runs: &std::path::Path) -> String {
    let schema = place.file("schema.sql", place.schema());
    format!(
        "echo run >> {} && {}",
        runs.display(),
        place.apply_cmd(&schema)
    )
}

fn template(place: &Place, setup: &str, inputs: &[&str]) -> (i32, String, String) {
    let mut args = vec!["db", "template", "--db", &place.url, "--setup", setup];
    for i in inputs {
        args.push("--input");
        args.push(i);
    }
    run(&args)
}

/// The `db` verbs without `--db` work on the project's database, as `dbfork
/// run` finds it (here the embedded SQLite default in the project root's
/// `.dbfork/`, from a subdirectory); a read before it exists makes nothing.
#[test]
fn db_verbs_default_to_the_projects_database() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::write(root.join("pytest.ini"), "[pytest]\n").unwrap();
    let sub = root.join("tests");
    std::fs::create_dir_all(&sub).unwrap();
    let db = |args: &[&str]| {
        let out = dbfork().current_dir(&sub).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, _, err) = db(&["db", "list"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("this project has no dbfork database yet"),
        "{err}"
    );
    assert!(!root.join(".dbfork").exists(), "a read made the database");
    let (code, fp, err) = db(&["db", "template", "--setup", "true"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("the project's database: sqlite://"), "{err}");
    assert!(root.join(".dbfork/sqlite").is_dir(), "{err}");
    let (code, list, err) = db(&["db", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(list.contains(&fp.trim()[..12]), "{list}\n{err}");
    let (code, _, err) = db(&["clean"]);
    assert_eq!(code, 0, "{err}");
    assert!(!root.join(".dbfork").exists(), "{err}");
}

/// The `db` verbs read the project's configuration file as `dbfork run`
/// does: `db template` builds what `setup` and `inputs` of `[tool.dbfork]`
/// say, on the file's `db` (relative to the file), passing over the keys of
/// `run` alone; `db clone` takes its template from DBFORK_TEMPLATE; an
/// unknown key stops every verb.
#[test]
fn db_verbs_read_the_projects_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let sub = root.join("tests");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::create_dir_all(root.join("schema")).unwrap();
    std::fs::write(root.join("schema/a.sql"), "one").unwrap();
    let pyproject = "[tool.dbfork]\ndb = \"sqlite://var/main.db\"\nsetup = \"true\"\ninputs = [\"schema/*.sql\"]\ndist = \"class\"\nclone-concurrency = 2\n";
    std::fs::write(root.join("pyproject.toml"), pyproject).unwrap();
    let db = |cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]| {
        let out = dbfork()
            .current_dir(cwd)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, fp, err) = db(&sub, &["db", "template"], &[]);
    assert_eq!(code, 0, "{err}");
    let url = format!("sqlite://{}/var/main.db", root.display());
    assert!(
        err.contains(&format!("the project's database: {url}")),
        "{err}"
    );
    let flags = [
        "db",
        "template",
        "--db",
        &url,
        "--setup",
        "true",
        "--input",
        "schema/*.sql",
    ];
    let (code, same, err) = db(&root, &flags, &[]);
    assert_eq!((code, &same), (0, &fp), "{err}");
    assert!(err.contains("reusing template"), "{err}");
    std::fs::write(root.join("schema/a.sql"), "two").unwrap();
    let (code, other, err) = db(&sub, &["db", "template"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(
        other, fp,
        "a changed input of the file's `inputs` must change the template"
    );
    let (code, clone, err) = db(
        &sub,
        &["db", "clone", "--owner", "none"],
        &[("DBFORK_TEMPLATE", &other)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        clone.starts_with(&format!("sqlite://{}/var/", root.display())),
        "{clone}"
    );
    std::fs::write(
        root.join("pyproject.toml"),
        format!("{pyproject}setpu = \"x\"\n"),
    )
    .unwrap();
    let (code, _, err) = db(&sub, &["db", "list"], &[]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("unknown key `setpu`") && err.contains("Did you mean `setup`?"),
        "{err}"
    );
    std::fs::write(root.join("pyproject.toml"), pyproject).unwrap();
    let name = clone
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".sqlite3");
    let (code, _, err) = db(&sub, &["db", "drop", name], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = db(&sub, &["clean"], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("dropped template").count(), 2, "{err}");
}

/// `dbfork clean --dry-run` names the project's templates and its `.dbfork/`
/// and removes nothing; `dbfork clean` (from a subdirectory of the project)
/// drops them, then the registry they leave empty, and removes the directory,
/// leaving the server's other databases alone; a second clean has nothing
/// left to do.
fn clean_removes_what_dbfork_made_for_the_project(kind: Kind) {
    let place = Place::new(kind, "clean");
    let project = place.dir.path().join("proj");
    std::fs::create_dir_all(project.join("tests")).unwrap();
    std::fs::write(project.join("pytest.ini"), "[pytest]\n").unwrap();
    std::fs::create_dir_all(project.join(".dbfork")).unwrap();
    std::fs::write(project.join(".dbfork/timings.json"), "{}").unwrap();
    let runs_file = place.dir.path().join("runs");
    let setup = setup_for(&place, &runs_file);
    let (code, fp, err) = template(&place, &setup, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("without a single table"), "{err}");
    let fp = fp.trim().to_string();
    // A setup that wrote somewhere else (here: nowhere) is told so.
    let (code, _, err) = template(&place, "echo migrated elsewhere", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("left the template without a single table") && err.contains("DATABASE_URL"),
        "{err}"
    );
    let templates = || {
        place
            .registry()
            .iter()
            .filter(|e| e["kind"] == "template")
            .count()
    };
    assert_eq!(templates(), 2);
    let clean = |extra: &[&str]| {
        let out = dbfork()
            .current_dir(project.join("tests"))
            .args(["clean", "--db", &place.url])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = clean(&["--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("would drop template dbfork_tpl_")
            && err.contains(&format!(
                "would remove {}",
                project.join(".dbfork").display()
            )),
        "{err}"
    );
    assert!(
        err.contains("would remove dbfork's registry (empty)"),
        "{err}"
    );
    assert_eq!(templates(), 2, "a dry run removes nothing");
    assert!(project.join(".dbfork").is_dir());
    let registry_tables = || {
        match kind {
        Kind::Postgres => place.sql_ok(
            None,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'dbfork'",
        ),
        Kind::Mysql => place.sql_ok(
            None,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'dbfork%'",
        ),
        Kind::Sqlite => Place::sqlite_file_ok(
            &place.dir.path().join(".dbfork/registry.sqlite3"),
            "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'registry%'",
        ),
    }
    };
    assert_ne!(registry_tables(), "0");
    let (code, err) = clean(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("dropped template dbfork_tpl_"), "{err}");
    assert!(err.contains("removed dbfork's registry (empty)"), "{err}");
    assert_eq!(registry_tables(), "0", "{err}");
    assert_eq!(templates(), 0, "{err}");
    assert!(!project.join(".dbfork").exists(), "{err}");
    let (code, list, err) = run(&["db", "list", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert!(!list.contains(&fp[..12]), "{list}");
    let (code, err) = clean(&[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to remove"), "{err}");
}

fn runs(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// `dbfork db clone --json` of `template` with `extra` options: the clones' names.
fn clone_names(place: &Place, template: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "db",
        "clone",
        "--db",
        &place.url,
        "--template",
        template,
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["clones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn assert_nothing_left(place: &Place, names: &[String]) {
    assert!(
        place.registry().is_empty(),
        "registry not empty: {:?}",
        place.registry()
    );
    for name in names {
        assert!(!place.exists(name), "{name} still exists");
    }
}

/// Templates of one setup do not pile up on a server: after each build of
/// `dbfork run` the two most recently used stay (`--keep-templates 2`), the
/// older one is dropped and said so; nothing of another setup is touched.
fn older_templates_of_a_setup_are_pruned(kind: Kind) {
    let place = Place::new(kind, "prune");
    let schema = place.file("schema.sql", place.schema());
    let setup = place.apply_cmd(&schema);
    // Another setup's template, older than all of them: not this setup's to prune.
    let other_runs = place.dir.path().join("other-runs");
    let other = setup_for(&place, &other_runs);
    let (code, _, err) = template(&place, &other, &[]);
    assert_eq!(code, 0, "{err}");
    let templates = |place: &Place| {
        place
            .registry()
            .iter()
            .filter(|e| e["kind"] == "template")
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let mut built = Vec::new();
    for round in 0..3 {
        // Each round changes an input: a new fingerprint of the same setup.
        // The registry counts uses in seconds: one round a second.
        std::thread::sleep(Duration::from_millis(1100));
        place.file("input.txt", &format!("round {round}"));
        let out = dbfork()
            .current_dir(place.dir.path())
            .env_remove("CI")
            .args(["run", "-j", "1", "--db", &place.url, "--setup", &setup])
            .args([
                "--input",
                "input.txt",
                "--keep-templates",
                "2",
                "--",
                "true",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let name = stderr
            .split("built template ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{stderr}"))
            .to_string();
        if round == 2 {
            assert!(
                stderr.contains(&format!(
                    "dropped 1 older template of this setup ({})",
                    built[0]
                )) && stderr.contains("the 2 most recently used are kept"),
                "{built:?}\n{stderr}"
            );
        } else {
            assert!(!stderr.contains("older template"), "{stderr}");
        }
        built.push(name);
    }
    let left = templates(&place);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(!left.contains(&built[0]), "{left:?}");
    assert!(
        left.contains(&built[1]) && left.contains(&built[2]),
        "{left:?}"
    );
    assert_no_clones(&place);
}

fn template_build_reuse_rebuild_clone_drop(kind: Kind) {
    let place = Place::new(kind, "life");
    let runs_file = place.dir.path().join("runs");
    let migrations = place.dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(migrations.join("0001_initial.py"), "one").unwrap();
    let pattern = format!("{}/*.py", migrations.display());
    let setup = setup_for(&place, &runs_file);

    // Build.
    let (code, fp, err) = template(&place, &setup, &[&pattern]);
    assert_eq!(code, 0, "{err}");
    let fp = fp.trim().to_string();
    assert_eq!(fp.len(), 64, "{fp}");
    assert!(err.contains("built template"), "{err}");
    assert_eq!(runs(&runs_file), 1);
    let tpl = place
        .registry()
        .iter()
        .find(|e| e["fingerprint"] == fp.as_str())
        .map(|e| e["name"].as_str().unwrap().to_string())
        .expect("the template is in the registry");
    assert!(
        tpl.starts_with(&format!("dbfork_tpl_{}_", &fp[..16])),
        "{tpl}"
    );
    assert!(place.exists(&tpl));

    // Reuse: same inputs, the setup does not run again.
    let (code, fp2, err) = template(&place, &setup, &[&pattern]);
    assert_eq!((code, fp2.trim()), (0, fp.as_str()), "{err}");
    assert!(err.contains("reusing template"), "{err}");
    assert_eq!(
        runs(&runs_file),
        1,
        "the setup command ran again on unchanged inputs"
    );

    // Clones: identical to the template.
    let clones = clone_names(&place, &fp[..12], &["-n", "3"]);
    assert_eq!(clones.len(), 3);
    let expected = place.signature(&tpl);
    assert!(expected.contains("rows orders"), "{expected}");
    for clone in &clones {
        assert_eq!(
            place.signature(clone),
            expected,
            "clone {clone} differs from its template"
        );
    }
    // Each clone is its own database.
    place.sql_ok(Some(&clones[0]), "DELETE FROM orders WHERE customer_id = 1");
    assert_ne!(place.signature(&clones[0]), place.signature(&clones[1]));

    // List shows them all.
    let listed = place.registry();
    assert_eq!(listed.len(), 4, "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .filter(|e| e["kind"] == "clone" && e["state"] == "ready")
            .count(),
        3
    );
    assert!(listed.iter().all(|e| e["exists"] == true));
    let (code, table, _) = run(&["db", "list", "--db", &place.url]);
    assert_eq!(code, 0);
    assert!(
        table.contains(&clones[2]) && table.contains(&tpl),
        "{table}"
    );

    // Drop the clones.
    let mut args = vec!["db", "drop", "--db", &place.url];
    args.extend(clones.iter().map(String::as_str));
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    for clone in &clones {
        assert!(!place.exists(clone), "{clone} survived its drop");
    }

    // A changed input makes a new template; the old input brings the old one back without a build.
    std::fs::write(migrations.join("0002_more.py"), "two").unwrap();
    let (code, fp3, err) = template(&place, &setup, &[&pattern]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(fp3.trim(), fp);
    assert_eq!(runs(&runs_file), 2);
    std::fs::remove_file(migrations.join("0002_more.py")).unwrap();
    let (code, fp4, _) = template(&place, &setup, &[&pattern]);
    assert_eq!((code, fp4.trim()), (0, fp.as_str()));
    assert_eq!(runs(&runs_file), 2);

    // gc keeps the newest template of the setup, drops the older one when asked.
    let names = place.registry_names();
    assert_eq!(names.len(), 2);
    let (code, _, err) = run(&["db", "gc", "--db", &place.url, "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(place.registry_names().len(), 1, "{err}");
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &place.registry_names()[0]]);
    assert_eq!(code, 0, "{err}");
    let mut all = names;
    all.extend(clones);
    assert_nothing_left(&place, &all);
}

/// The engine's build in steps, as a client that migrates the template
/// itself uses it (IntegreSQL's way): begin, fill with its own tools,
/// finalize; a second begin of the same recipe reuses it, and a begun build
/// that is discarded leaves nothing.
fn a_template_build_can_span_two_calls(kind: Kind) {
    use dbfork_engine::backend::ConnectOptions;
    use dbfork_engine::fingerprint::Recipe;
    use dbfork_engine::ops::{
        begin_template, discard_template, finalize_template, Begun, Cancel, TemplateOptions,
    };
    let place = Place::new(kind, "steps");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend = runtime
        .block_on(dbfork_engine::AnyBackend::connect(
            &place.db_url(),
            &ConnectOptions::default(),
        ))
        .unwrap();
    let options = TemplateOptions::default();
    let (_canceller, cancel) = Cancel::new();
    let recipe = |setup: &str| Recipe {
        setup: setup.into(),
        ..Recipe::default()
    };
    let begin = |setup: &str| {
        runtime
            .block_on(begin_template(&backend, &recipe(setup), &options, &cancel))
            .unwrap()
    };

    let Begun::Build(building) = begin("the client migrates") else {
        panic!("a new recipe had a template already");
    };
    assert!(building.needs_build);
    let name = building.name.clone();
    let state = |name: &str| {
        place
            .registry()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["state"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(state(&name).as_deref(), Some("building"));
    place.sql_ok(
        Some(&name),
        "CREATE TABLE filled_by_the_client (id INTEGER PRIMARY KEY)",
    );
    place.sql_ok(Some(&name), "INSERT INTO filled_by_the_client VALUES (7)");
    let template = runtime
        .block_on(finalize_template(&backend, building, &options, &cancel))
        .unwrap();
    assert_eq!(
        (template.name.as_str(), template.reused),
        (name.as_str(), false)
    );
    assert_eq!(state(&name).as_deref(), Some("ready"));
    match begin("the client migrates") {
        Begun::Ready(again) => assert!(again.reused && again.name == name),
        Begun::Build(_) => panic!("the finalized template was not reused"),
    }
    // Its clones have what the client put in.
    let clone = clone_names(&place, &template.fingerprint, &[]).remove(0);
    assert_eq!(
        place.sql_ok(Some(&clone), "SELECT id FROM filled_by_the_client"),
        "7"
    );

    let Begun::Build(given_up) = begin("the client gives up") else {
        panic!("a new recipe had a template already");
    };
    let gone = given_up.name.clone();
    assert!(place.exists(&gone));
    runtime.block_on(discard_template(&backend, given_up, &options));
    assert!(!place.exists(&gone), "{gone} survived its discard");
    assert_eq!(state(&gone), None);

    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &clone, &name]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&place, &[name, clone]);
}

fn failing_setup_leaves_nothing(kind: Kind) {
    let place = Place::new(kind, "fail");
    let (code, out, err) = template(
        &place,
        "echo first line; echo 'migration 0003 exploded' >&2; exit 7",
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("exit status 7"), "{err}");
    assert!(
        err.contains("migration 0003 exploded"),
        "the last output is shown: {err}"
    );
    assert!(err.contains("was dropped"), "{err}");
    assert!(place.registry().is_empty());
    let mut wild = place.db_url();
    wild.database = None;
    let listed = String::from_utf8_lossy(&place.sql(None, "SELECT 1").stdout).to_string();
    assert!(!listed.is_empty());
    // The template name is derived from the fingerprint; nothing with the test's setup exists.
    let (code, _, err) = run(&["db", "gc", "--db", &place.url, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to collect"), "{err}");
}

fn kill_9_mid_clone_then_gc(kind: Kind) {
    let place = Place::new(kind, "kill");
    let runs_file = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs_file), &[]);
    assert_eq!(code, 0, "{err}");
    // Until the last clone is made the clones are the command's own; then
    // they pass to its parent (this test, alive), and are nobody's garbage.
    // SQLite makes a clone in about a millisecond: 200 of them could all be
    // made and handed over before this test, polling `db list` on a loaded
    // machine, sees the second (found once in CI: "nothing to collect").
    let count = if kind == Kind::Sqlite { "2000" } else { "200" };
    let mut child = dbfork()
        .args([
            "db",
            "clone",
            "--db",
            &place.url,
            "--template",
            fp.trim(),
            "-n",
            count,
            "--concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Half-way: once some clones exist.
    let started = Instant::now();
    let mut names: Vec<String>;
    loop {
        let registry = place.registry();
        names = registry
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        let made = registry
            .iter()
            .filter(|e| e["kind"] == "clone" && e["exists"] == true)
            .count();
        if made >= 2 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "dbfork finished all clones before the test could kill it"
    );
    assert!(
        names.len() > 3,
        "the clone rows are written before the clones: {names:?}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The next command that makes or drops something collects what the
    // killed one left, one line per database.
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left behind: process"), "{err}");
    let left = place.registry_names();
    assert_eq!(left.len(), 1, "only the template stays: {left:?}");
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &left[0]]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&place, &names);
}

fn decoys_survive_every_command(kind: Kind) {
    let place = Place::new(kind, "decoy");
    let decoy = format!(
        "dbfork_decoy_{}",
        support::unique("x").trim_start_matches("dft_")
    );
    let user_db = support::unique("user");
    for db in [&decoy, &user_db] {
        match kind {
            Kind::Sqlite => {
                place.sql_ok(Some(db), "CREATE TABLE precious (x int)");
            }
            _ => {
                place.sql_ok(None, &format!("CREATE DATABASE {db}"));
            }
        }
        assert!(place.exists(db));
    }
    let runs_file = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs_file), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&[
        "db",
        "clone",
        "--db",
        &place.url,
        "--template",
        fp.trim(),
        "-n",
        "2",
        "--owner",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    for db in [&decoy, &user_db] {
        let (code, _, err) = run(&["db", "drop", "--db", &place.url, db]);
        assert_eq!(code, 4, "{err}");
        assert!(
            err.contains("refusing to drop") && err.contains(db.as_str()),
            "{err}"
        );
    }
    age_heartbeats(&place, &[], 86_400);
    let (code, _, err) = run(&[
        "db",
        "gc",
        "--db",
        &place.url,
        "--older-than",
        "0s",
        "--heartbeat-ttl",
        "6m",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("removed clone") || err.contains("dropped clone"),
        "the ownerless clones go: {err}"
    );
    for db in [&decoy, &user_db] {
        assert!(place.exists(db), "{db} was touched by dbfork");
    }
    let names = place.registry_names();
    let mut args = vec!["db", "drop", "--db", &place.url];
    args.extend(names.iter().map(String::as_str));
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&place, &names);
    for db in [&decoy, &user_db] {
        assert!(place.exists(db));
        if kind != Kind::Sqlite {
            place.sql_ok(None, &format!("DROP DATABASE {db}"));
        }
    }
}

fn concurrent_builds_of_one_fingerprint_build_once(kind: Kind) {
    let place = Place::new(kind, "race");
    let runs_file = place.dir.path().join("runs");
    let setup = format!("sleep 1 && {}", setup_for(&place, &runs_file));
    let spawn = || {
        dbfork()
            .args(["db", "template", "--db", &place.url, "--setup", &setup])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(a.stdout, b.stdout, "both get the same fingerprint");
    assert_eq!(runs(&runs_file), 1, "the setup ran once");
    let names = place.registry_names();
    assert_eq!(names.len(), 1);
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &names[0]]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&place, &names);
}

/// A drop ends the sessions on the clone (idle, in a transaction, reconnecting)
/// and no other: a session elsewhere whose statement names the clone survives.
fn drop_ends_open_sessions(kind: Kind) {
    use std::io::Write;
    let place = Place::new(kind, "sess");
    let runs_file = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs_file), &[]);
    assert_eq!(code, 0, "{err}");
    let clone = clone_names(&place, fp.trim(), &[]).remove(0);

    let mut idle = place.session(&clone);
    idle.stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 1;\n")
        .unwrap();
    let mut in_tx = place.session(&clone);
    in_tx
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"BEGIN;\nUPDATE orders SET total = total + 1 WHERE id < 10;\n")
        .unwrap();
    let mut looping = place.reconnect_loop(&clone);
    // A bystander on another database whose statement names the clone.
    let maintenance = place.db_url().database.unwrap();
    let mut bystander = place.session(&maintenance);
    let naming = match kind {
        Kind::Postgres => format!("SELECT pg_sleep(30), 'DROP DATABASE \"{clone}\"';\n"),
        _ => format!("SELECT SLEEP(30), 'CREATE DATABASE `{clone}`';\n"),
    };
    bystander
        .stdin
        .as_mut()
        .unwrap()
        .write_all(naming.as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let started = Instant::now();
    let (code, _, err) = run(&[
        "db",
        "drop",
        "--db",
        &place.url,
        "--drop-timeout",
        "5s",
        &clone,
    ]);
    let took = started.elapsed();
    support::kill_group(&mut looping);
    let _ = idle.kill();
    let _ = in_tx.kill();
    let _ = (idle.wait(), in_tx.wait());
    let survived = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(survived, "the bystander's session was killed: {err}");
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(5), "the drop took {took:?}");
    assert!(!place.exists(&clone));
    let names = place.registry_names();
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &names[0]]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&place, &[clone]);
}

/// Starts `db template` with `setup`, and waits until the setup has touched `marker`.
fn start_template_build(
    place: &Place,
    setup: &str,
    marker: &std::path::Path,
    stderr: std::process::Stdio,
) -> (std::process::Child, Instant) {
    let child = dbfork()
        .args(["db", "template", "--db", &place.url, "--setup", setup])
        .stderr(stderr)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(marker.exists(), "the setup command never started");
    (child, started)
}

fn sigint_during_setup_drops_the_half_built_template(kind: Kind) {
    let place = Place::new(kind, "int");
    let marker = place.dir.path().join("started");
    let setup = format!("touch {} && sleep 60", marker.display());
    let (child, started) =
        start_template_build(&place, &setup, &marker, std::process::Stdio::piped());
    let names = place.registry_names();
    assert_eq!(
        names.len(),
        1,
        "the template is registered while it is built"
    );
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the sleeping setup was not killed"
    );
    assert!(err.contains("interrupted"), "{err}");
    assert_nothing_left(&place, &names);
}

/// `kill -9` of dbfork while its setup command runs, with a background child
/// of the setup (which `PR_SET_PDEATHSIG` alone would not reach): no process
/// of the setup is left, the next command removes the half-built template and
/// the private client option file (MySQL: it holds the password); and a setup
/// whose shell exits while a background child still holds its output ends
/// when the shell does, not at the build timeout.
fn kill_9_during_setup_leaves_no_process_and_no_secret(kind: Kind) {
    let place = Place::new(kind, "k9setup");
    let marker = place.dir.path().join("started");
    // A sleep no other test runs, to find this setup's processes by.
    let nap = format!("{}.{}", 4000 + std::process::id() % 1000, place.maint.len());
    let setup = format!("sleep {nap} & touch {} && sleep {nap}", marker.display());
    let (mut child, _) = start_template_build(&place, &setup, &marker, std::process::Stdio::null());
    let pid = child.id();
    let client_dirs = || {
        let prefix = format!("dbfork-client-{pid}-");
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };
    if kind == Kind::Mysql {
        assert_eq!(
            client_dirs(),
            1,
            "the setup's my.cnf is there while it runs"
        );
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let sleeping = || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("sleep {nap}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sleeping().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sleeping(), "", "processes of the setup outlived dbfork");
    let names = place.registry_names();
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        client_dirs(),
        0,
        "the my.cnf of the killed dbfork is still there: {err}"
    );
    assert_nothing_left(&place, &names);

    let took = Instant::now();
    let (code, _, err) = run(&[
        "db",
        "template",
        "--db",
        &place.url,
        "--setup",
        &format!("sleep {nap} & echo built"),
        "--build-timeout",
        "20s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(took.elapsed() < Duration::from_secs(15), "{err}");
    assert_eq!(sleeping(), "", "the background child was left running");
    // The template goes with the place's registry.
}

// ---- Bad input -------------------------------------------------------------

/// pytest-xdist's `-n` given to dbfork itself says what to type instead
/// (clap's own tip, "use '-- -n'", would be wrong).
#[test]
fn xdist_jobs_before_the_command_suggest_dbforks_own() {
    for (args, jobs) in [
        (&["run", "-n", "2", "--", "pytest"][..], "2"),
        (&["run", "-n2", "--", "pytest"][..], "2"),
        (&["run", "--numprocesses=auto", "--", "pytest"][..], "auto"),
        (&["run", "-n", "--", "pytest"][..], "N"),
    ] {
        let (code, _, err) = run(args);
        assert_eq!(code, 4, "{args:?}: {err}");
        assert!(
            err.contains("pytest-xdist's option")
                && err.contains(&format!("`dbfork run -j {jobs} -- <test command>`"))
                && !err.contains("tip:"),
            "{args:?}: {err}"
        );
    }
}

/// Absurd numbers are usage errors, not a panic or a full disk: more
/// workers than dbfork runs, a duration past any deadline, in a flag, a
/// variable or the configuration file.
#[test]
fn absurd_numbers_are_usage_errors() {
    let (code, _, err) = run(&["run", "-j", "100000", "--", "true"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("1024 at most"), "{err}");
    let (code, _, err) = run(&["db", "list", "--connect-timeout", "99999999d"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("at most 365d"), "{err}");
    // A TTL shorter than three heartbeats would drop a live run's clones.
    let (code, _, err) = run(&["db", "gc", "--heartbeat-ttl", "2s"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("shorter than three heartbeats"), "{err}");
    for (toml, says) in [
        ("jobs = 100000000000\n", "1024 at most"),
        ("build_timeout = \"99999999d\"\n", "at most 365d"),
        ("build_timeout = 1e300\n", "build_timeout"),
        ("heartbeat_ttl = \"1s\"\n", "shorter than three heartbeats"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dbfork.toml"), toml).unwrap();
        let out = dbfork()
            .current_dir(dir.path())
            .args(["run", "--", "true"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{toml}: {err}");
        assert!(err.contains(says), "{toml}: {err}");
        assert!(!dir.path().join(".dbfork").exists(), "{toml}: {err}");
    }
}

/// `dbfork completions bash` prints a script that bash really completes
/// with: the verbs, and `run`'s flags, which come from the settings table.
#[test]
fn completions_complete_verbs_and_run_flags_in_bash() {
    let (code, script, err) = run(&["completions", "bash"]);
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dbfork.bash");
    std::fs::write(&path, script).unwrap();
    let complete = |words: &str| {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                r#"source "$1"; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ));
                _dbfork dbfork "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}";
                echo "${{COMPREPLY[@]}}""#
            ))
            .arg("bash")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(complete("dbfork c"), "clean completions");
    assert_eq!(complete("dbfork run --jo"), "--jobs");
    assert_eq!(complete("dbfork run --for"), "--fork");
    let (code, _, err) = run(&["completions", "tcsh"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("bash, elvish, fish, powershell, zsh"), "{err}");
}

#[test]
fn malformed_url_is_a_usage_error_with_the_password_masked() {
    let (code, _, err) = run(&["db", "list", "--db", "postgres://me:hunter2@db:99999/x"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("me:***@db"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let (code, _, err) = run(&["db", "list", "--db", "oracle://x"]);
    assert_eq!(code, 4);
    assert!(err.contains("not supported"), "{err}");
    // Passwords with unencoded `/`, `?`, `@`, and libpq's `?password=`: never shown.
    for (url, secret) in [
        ("postgres://me:hun/ter2@db:99999/x", "ter2"),
        ("postgres://me:hun?ter2@db:99999/x", "ter2"),
        ("mysql://root:hu@n/ter2@127.0.0.1:99999/x", "ter2"),
        ("postgres://me@127.0.0.1:1/x?password=hunter2", "hunter2"),
    ] {
        let (code, out, err) = run(&["db", "list", "--db", url, "--connect-timeout", "2s"]);
        assert_ne!(code, 0, "{url}");
        assert!(
            !err.contains(secret) && !out.contains(secret),
            "{url}: {err}"
        );
        assert!(err.contains("***"), "{url}: {err}");
    }
}

#[test]
fn connection_refused_names_the_server() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://u:topsecret@127.0.0.1:{port}/x");
        let (code, _, err) = run(&["db", "list", "--db", &url, "--connect-timeout", "3s"]);
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("cannot connect to") && err.contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
        assert!(!err.contains("topsecret"), "{err}");
        // Said once, in the system's words (the MySQL driver wraps it twice).
        assert!(
            err.contains("Connection refused") && !err.contains("Input/output error"),
            "{err}"
        );
    }
}

#[test]
fn a_server_that_never_answers_times_out() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for scheme in ["postgres", "mysql"] {
        let url = format!("{scheme}://u@127.0.0.1:{port}/x");
        let started = Instant::now();
        let (code, _, err) = run(&["db", "list", "--db", &url, "--connect-timeout", "1s"]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("did not finish within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    drop(listener);
}

#[test]
fn wrong_password_is_refused_without_showing_it() {
    let place = Place::new(Kind::Mysql, "pw");
    let mut url = place.db_url();
    url.user = Some("dbfork_nobody".into());
    url.password = Some("wrongpass".into());
    let (code, _, err) = run(&["db", "list", "--db", &url.to_url_with_password()]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot connect") && err.contains("Access denied"),
        "{err}"
    );
    assert!(!err.contains("wrongpass"), "{err}");
}

#[test]
fn missing_ephemeral_binaries_name_the_package() {
    let empty = tempfile::tempdir().unwrap();
    for (db, var, package) in [
        ("postgres:ephemeral", "DBFORK_PG_BINDIR", "postgresql"),
        (
            "mariadb:ephemeral",
            "DBFORK_MARIADB_BINDIR",
            "mariadb-server",
        ),
    ] {
        let out = dbfork()
            .args(["db", "list", "--db", db])
            .env(var, empty.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(err.contains(&format!("apt-get install {package}")), "{err}");
    }
}

#[test]
fn ephemeral_postgres_serves_one_command_and_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let runs_file = dir.path().join("runs");
    let setup = format!(
        "echo run >> {} && psql -X -q -c 'create table t (x int)'",
        runs_file.display()
    );
    let (code, out, err) = run(&[
        "db",
        "template",
        "--db",
        "postgres:ephemeral",
        "--setup",
        &setup,
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["reused"], false);
    assert_eq!(runs(&runs_file), 1);
    let url = json["url"].as_str().unwrap();
    let socket_dir = url
        .split("host=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    assert!(
        !std::path::Path::new(socket_dir).exists(),
        "the ephemeral server's directory {socket_dir} is gone"
    );
}

/// Runs `script` with `sh -c` in `dir`; it must succeed.
fn shell(dir: &std::path::Path, script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL that takes TCP connections over TLS only (an ephemeral one
/// with a certificate made here): `sslmode=require` works (dbfork's own
/// connections and the setup's psql), `sslmode=disable` is refused with the
/// server's reason; `verify-full` checks the certificate against
/// `sslrootcert` and refuses one from another CA; MySQL URLs that ask for
/// TLS, which dbfork cannot honour there, are refused before connecting.
#[test]
fn sslmode_is_honoured_for_a_tls_only_postgres() {
    use dbfork_engine::ephemeral::{EphemeralServer, TlsOnly};
    let dir = tempfile::tempdir().unwrap();
    // A CA of the test's own and a server certificate it signed (for
    // 127.0.0.1 and localhost); a second CA that signed nothing.
    let make_ca = |name: &str| {
        let script = format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={name} -keyout {name}.key -out {name}.crt"
        );
        shell(dir.path(), &script);
        dir.path().join(format!("{name}.crt"))
    };
    let ca = make_ca("ca");
    let other_ca = make_ca("other");
    shell(
        dir.path(),
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext &&
         openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr &&
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.crt",
    );
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt
        .block_on(EphemeralServer::start_postgres_tls_only(TlsOnly {
            cert: cert.clone(),
            key,
            port,
        }))
        .unwrap();
    let url = |params: &str| format!("postgres://postgres@127.0.0.1:{port}/postgres?{params}");
    let template = |url: &str| {
        run(&[
            "db",
            "template",
            "--db",
            url,
            "--setup",
            "psql -X -q -v ON_ERROR_STOP=1 -c 'create table t (x int)'",
        ])
    };
    let (code, _, err) = template(&url("sslmode=require"));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("without a single table"), "{err}");
    let (code, _, err) = template(&url("sslmode=disable"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no encryption"), "{err}");
    let verified = url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let (code, _, err) = run(&["db", "list", "--db", &verified]);
    assert_eq!(code, 0, "{err}");
    let forged = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    ));
    let (code, _, err) = run(&["db", "list", "--db", &forged]);
    assert_eq!(code, 3, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let (code, _, err) = run(&["db", "list", "--db", &url("sslmode=verify-ca")]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("give sslrootcert=PATH"), "{err}");
    let (code, _, err) = run(&["clean", "--db", &url("sslmode=require")]);
    assert_eq!(code, 0, "{err}");
    rt.block_on(server.stop()).unwrap();
    let (code, _, err) = run(&[
        "db",
        "list",
        "--db",
        "mysql://root@127.0.0.1:3306/mysql?ssl-mode=REQUIRED",
    ]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("asks for TLS"), "{err}");
}

/// `dbfork db ephemeral` whose server is killed under it (SIGKILL of the
/// postmaster) says so and exits 3 at once, its directory removed, instead
/// of waiting for a signal as if the server ran.
#[test]
fn an_ephemeral_server_killed_under_its_command_is_an_error() {
    let (mut command, url) = support::ephemeral("postgres", std::process::Stdio::piped());
    let dir = url
        .split("host=")
        .nth(1)
        .and_then(|rest| rest.split('&').next())
        .unwrap_or_else(|| panic!("no socket directory in {url:?}"))
        .trim()
        .to_string();
    let pidfile = std::path::Path::new(&dir).join("data/postmaster.pid");
    let postmaster: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the server this test's command started.
    unsafe { libc::kill(postmaster, libc::SIGKILL) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = command.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "dbfork db ephemeral did not notice its server was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut command.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("ended by itself while in use"), "{err}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} is left: {err}");
}

/// Registries are per maintenance database but database names are server-wide:
/// the same setup recorded in two registries must give two templates, not a
/// "database already exists" (found when two projects shared a server).
fn two_registries_on_one_server_do_not_collide(kind: Kind) {
    let a = Place::new(kind, "reg_a");
    let b = Place::new(kind, "reg_b");
    let setup = "true";
    let (code_a, fp_a, err_a) = template(&a, setup, &[]);
    let (code_b, fp_b, err_b) = template(&b, setup, &[]);
    assert_eq!((code_a, code_b), (0, 0), "{err_a}\n{err_b}");
    assert_eq!(fp_a, fp_b, "same recipe, same fingerprint");
    let (na, nb) = (a.registry_names(), b.registry_names());
    assert_eq!((na.len(), nb.len()), (1, 1));
    assert_ne!(na[0], nb[0]);
    for (place, names) in [(&a, &na), (&b, &nb)] {
        let (code, _, err) = run(&["db", "drop", "--db", &place.url, &names[0]]);
        assert_eq!(code, 0, "{err}");
    }
}

/// A registry row dbfork did not write (another database, quotes, a name
/// with dbfork's prefix but not its shape; on SQLite `../x` and an absolute
/// path) is shown, reported and never acted on: `list`, `gc --dry-run`, `gc`,
/// `drop` and the collection at the start of other commands leave every
/// victim in place. Reading commands drop nothing; the collection honours
/// `--heartbeat-ttl`.
fn spoofed_registry_rows_touch_nothing(kind: Kind) {
    let place = Place::new(kind, "spoof");
    let tag = support::unique("v").trim_start_matches("dft_").to_string();
    let outside = place.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    // The victims, and the names registry rows give them.
    let mut rows: Vec<String> = Vec::new();
    let mut victims: Vec<std::path::PathBuf> = Vec::new();
    let victim_db = format!("relrev_victim_{tag}");
    let shaped_like = format!("dbfork_victim_{tag}");
    match kind {
        Kind::Sqlite => {
            for (name, file) in [
                (
                    victim_db.clone(),
                    place.dir.path().join(format!("{victim_db}.sqlite3")),
                ),
                (
                    format!("../victim_{tag}"),
                    place
                        .dir
                        .path()
                        .parent()
                        .unwrap()
                        .join(format!("victim_{tag}.sqlite3")),
                ),
                (
                    outside.join("abs").display().to_string(),
                    outside.join("abs.sqlite3"),
                ),
            ] {
                std::fs::write(&file, "precious").unwrap();
                std::fs::write(format!("{}-wal", file.display()), "precious").unwrap();
                rows.push(name);
                victims.push(file);
            }
        }
        _ => {
            for db in [&victim_db, &shaped_like] {
                place.sql_ok(None, &format!("CREATE DATABASE {db}"));
            }
            rows.extend([victim_db.clone(), shaped_like.clone()]);
        }
    }
    rows.extend([
        format!("x\"; DROP DATABASE {victim_db}; --"),
        format!("y`{tag}"),
    ]);
    // dbfork makes its registry when it first writes to it.
    let runs = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(code, 0, "{err}");
    insert_registry_rows(&place, &rows);
    let intact = || match kind {
        Kind::Sqlite => {
            for file in &victims {
                assert_eq!(
                    std::fs::read_to_string(file).unwrap(),
                    "precious",
                    "{}",
                    file.display()
                );
                assert!(std::path::Path::new(&format!("{}-wal", file.display())).exists());
            }
        }
        _ => {
            for db in [&victim_db, &shaped_like] {
                assert!(place.exists(db), "{db} was dropped");
            }
        }
    };
    let (code, table, err) = run(&["db", "list", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("FOREIGN"), "{table}");
    assert!(err.contains("not written by dbfork, left alone"), "{err}");
    intact();
    age_heartbeats(&place, &[], 86_400);
    let (code, _, err) = run(&[
        "db",
        "gc",
        "--dry-run",
        "--db",
        &place.url,
        "--heartbeat-ttl",
        "6m",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("would drop"), "{err}");
    intact();
    let (code, _, err) = run(&[
        "db",
        "gc",
        "--db",
        &place.url,
        "--heartbeat-ttl",
        "6m",
        "--older-than",
        "0s",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("left alone"), "{err}");
    intact();
    for name in &rows {
        let (code, _, err) = run(&["db", "drop", "--db", &place.url, name]);
        assert_eq!(code, 4, "{name}: {err}");
        assert!(err.contains("refusing to drop"), "{err}");
    }
    intact();

    // A clone with no owner process is kept while its heartbeat is younger
    // than --heartbeat-ttl, by a list (never) and by the next command's
    // collection (until the TTL passes), which then names it.
    let (code, _, err) = run(&[
        "db",
        "clone",
        "--db",
        &place.url,
        "--template",
        fp.trim(),
        "--owner",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    let clones = || {
        place
            .registry()
            .iter()
            .filter(|e| e["kind"] == "clone" && e["exists"] == true)
            .filter(|e| !rows.iter().any(|r| e["name"] == r.as_str()))
            .count()
    };
    assert_eq!(clones(), 1);
    age_heartbeats(&place, &[], 1800);
    let (code, _, err) = run(&["db", "list", "--db", &place.url, "--heartbeat-ttl", "10m"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(clones(), 1, "the default TTL (1h) keeps it: {err}");
    let out = support::dbfork()
        .env("DBFORK_HEARTBEAT_TTL", "10m")
        .args([
            "db",
            "template",
            "--db",
            &place.url,
            "--setup",
            &setup_for(&place, &runs),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("removed clone dbfork_"),
        "one line per database: {err}"
    );
    assert_eq!(clones(), 0);
    intact();
    // The victims are not dbfork's: the test removes them itself.
    match kind {
        Kind::Sqlite => {
            for file in &victims {
                let _ = std::fs::remove_file(file);
                let _ = std::fs::remove_file(format!("{}-wal", file.display()));
            }
        }
        _ => {
            for db in [&victim_db, &shaped_like] {
                place.sql_ok(None, &format!("DROP DATABASE {db}"));
            }
        }
    }
}

/// The registry table and its metadata table, as `place`'s SQL names them.
fn registry_tables(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Postgres => ("dbfork.registry", "dbfork.registry_meta"),
        Kind::Mysql => ("dbfork_registry", "dbfork_registry_meta"),
        Kind::Sqlite => ("registry", "registry_meta"),
    }
}

/// Makes the heartbeats of `place`'s registry rows (those of `names`, or
/// all) `secs` older, as if their owners had been silent that long: the
/// shortest TTL a command takes is minutes.
fn age_heartbeats(place: &Place, names: &[&str], secs: u64) {
    let table = registry_tables(place.kind).0;
    let which = if names.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!(" WHERE name IN ({})", quoted.join(", "))
    };
    registry_sql(
        place,
        &format!("UPDATE {table} SET heartbeat_at = heartbeat_at - {secs}{which}"),
    );
}

/// Runs SQL on `place`'s registry (for SQLite, its registry file); returns stdout.
fn registry_sql(place: &Place, sql: &str) -> String {
    match place.kind {
        Kind::Sqlite => {
            Place::sqlite_file_ok(&place.dir.path().join(".dbfork/registry.sqlite3"), sql)
        }
        Kind::Mysql => place.sql_ok(None, &sql.replace('\\', "\\\\")),
        Kind::Postgres => place.sql_ok(None, sql),
    }
}

/// Writes registry rows (a dead owner on this host, an old heartbeat) as
/// something other than dbfork could: straight into the registry table, as
/// the first dbfork's twelve columns.
fn insert_registry_rows(place: &Place, names: &[String]) {
    insert_registry_rows_of_kind(place, names, "clone");
}

fn insert_registry_rows_of_kind(place: &Place, names: &[String], kind: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let values: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                "({}, {}, 'ready', 'f', 'k', 'r', 999999, 0, {}, 0, 0, 0)",
                quote(n),
                quote(kind),
                quote(host)
            )
        })
        .collect();
    let columns = "name, kind, state, fingerprint, setup_key, run_id, owner_pid, owner_start, host, created_at, heartbeat_at, last_used_at";
    registry_sql(
        place,
        &format!(
            "INSERT INTO {} ({columns}) VALUES {}",
            registry_tables(place.kind).0,
            values.join(", ")
        ),
    );
}

/// Whether `place`'s server (or directory) has a registry at all.
fn has_registry(place: &Place) -> bool {
    match place.kind {
        Kind::Sqlite => place.dir.path().join(".dbfork/registry.sqlite3").exists(),
        Kind::Postgres => place.sql_ok(None, "SELECT to_regclass('dbfork.registry') IS NOT NULL") == "t",
        Kind::Mysql => {
            place.sql_ok(
                None,
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'dbfork_registry'",
            ) == "1"
        }
    }
}

/// The registry is versioned and strict. Reading a server without a registry
/// creates none. A registry of the first dbfork (twelve columns, no version
/// row) is upgraded in place with its rows kept. A newer version, or a row of
/// an unknown kind, stops `db list` and `db gc` with an error naming the
/// registry, and the database such a row names is not dropped (it used to be
/// read as a clone, and collected).
fn registry_is_versioned_and_strict(kind: Kind) {
    let place = Place::new(kind, "regver");
    let (table, meta) = registry_tables(kind);
    let list = |extra: &[&str]| {
        let mut args = vec!["db", "list", "--db", &place.url, "--json"];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (code, out, err) = list(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[]", "{out}");
    assert!(!has_registry(&place), "db list created a registry");

    // The first dbfork's registry, by hand, with one clone row.
    let ddl = match kind {
        Kind::Postgres => "CREATE SCHEMA dbfork; CREATE TABLE dbfork.registry (name text PRIMARY KEY, kind text NOT NULL, state text NOT NULL, fingerprint text NOT NULL, setup_key text NOT NULL, run_id text NOT NULL, owner_pid bigint NOT NULL, owner_start bigint NOT NULL, host text NOT NULL, created_at bigint NOT NULL, heartbeat_at bigint NOT NULL, last_used_at bigint NOT NULL)",
        Kind::Mysql => "CREATE TABLE dbfork_registry (name VARCHAR(64) NOT NULL PRIMARY KEY, kind VARCHAR(16) NOT NULL, state VARCHAR(16) NOT NULL, fingerprint VARCHAR(128) NOT NULL, setup_key VARCHAR(128) NOT NULL, run_id VARCHAR(64) NOT NULL, owner_pid BIGINT NOT NULL, owner_start BIGINT UNSIGNED NOT NULL, host VARCHAR(255) NOT NULL, created_at BIGINT NOT NULL, heartbeat_at BIGINT NOT NULL, last_used_at BIGINT NOT NULL)",
        Kind::Sqlite => "CREATE TABLE registry (name TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, fingerprint TEXT NOT NULL, setup_key TEXT NOT NULL, run_id TEXT NOT NULL, owner_pid INTEGER NOT NULL, owner_start INTEGER NOT NULL, host TEXT NOT NULL, created_at INTEGER NOT NULL, heartbeat_at INTEGER NOT NULL, last_used_at INTEGER NOT NULL)",
    };
    if kind == Kind::Sqlite {
        std::fs::create_dir_all(place.dir.path().join(".dbfork")).unwrap();
    }
    registry_sql(&place, ddl);
    let old = "dbfork_0123456789_0".to_string();
    insert_registry_rows(&place, std::slice::from_ref(&old));
    let (code, out, err) = list(&[]);
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["name"], old.as_str(), "{out}");
    assert_eq!(rows[0]["machine"], "", "{out}");
    assert_eq!(
        registry_sql(&place, &format!("SELECT value FROM {meta}")),
        "2",
        "upgraded to version 2"
    );
    assert_eq!(
        registry_sql(&place, &format!("SELECT COUNT(*) FROM {table}")),
        "1"
    );

    // A database a bad row names, old enough to be collected were it read as a clone.
    let victim = "dbfork_0123456789_1".to_string();
    match kind {
        Kind::Sqlite => {
            std::fs::write(place.dir.path().join(format!("{victim}.sqlite3")), b"").unwrap()
        }
        _ => {
            place.sql_ok(None, &format!("CREATE DATABASE {victim}"));
        }
    }
    let victim_exists = || match kind {
        Kind::Sqlite => place.dir.path().join(format!("{victim}.sqlite3")).exists(),
        _ => place.sql(Some(&victim), "SELECT 1").status.success(),
    };
    let refused = |what: &str, needle: &str| {
        for args in [
            vec!["db", "list", "--db", &place.url],
            vec!["db", "gc", "--db", &place.url, "--heartbeat-ttl", "6m"],
        ] {
            let (code, _, err) = run(&args);
            assert_eq!(code, 3, "{what}: {args:?} {err}");
            assert!(err.contains(needle), "{what}: {err}");
            assert!(
                err.contains("registry"),
                "{what}: names the registry: {err}"
            );
            assert!(victim_exists(), "{what}: {victim} was dropped");
        }
    };
    registry_sql(&place, &format!("UPDATE {meta} SET value = '3'"));
    refused("a newer version", "newer dbfork");
    registry_sql(&place, &format!("UPDATE {meta} SET value = '2'"));
    insert_registry_rows_of_kind(&place, std::slice::from_ref(&victim), "snapshot");
    refused("an unknown kind", "\"snapshot\"");
    registry_sql(
        &place,
        &format!("UPDATE {table} SET kind = 'clone', state = 'half' WHERE name = '{victim}'"),
    );
    refused("an unknown state", "\"half\"");

    // Fixed by hand, the registry works again, and the old row is collected.
    registry_sql(
        &place,
        &format!("DELETE FROM {table} WHERE name = '{victim}'"),
    );
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&old), "{err}");
    assert!(victim_exists(), "a database without a row is never dropped");
    match kind {
        Kind::Sqlite => {}
        _ => {
            place.sql_ok(None, &format!("DROP DATABASE {victim}"));
        }
    }
}

/// An owner is alive or dead only where its pid means something. Clones owned
/// by a live process survive a gc from another PID namespace (`unshare
/// --pid`, as a container sharing the host name would run it); one whose
/// recorded owner is a reused pid (same pid, another start time) is
/// collected here, but not from the other namespace, which cannot tell;
/// there the heartbeat decides, and `db touch` renews it. `--owner parent`
/// under `timeout` or in a `$(...)` subshell belongs to the shell behind
/// them, so the clones live as long as the script that made them.
fn owners_are_judged_only_where_their_pids_mean_something(kind: Kind) {
    let place = Place::new(kind, "owners");
    let runs = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(code, 0, "{err}");
    let fp = fp.trim().to_string();
    let mut owner = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = owner.id().to_string();
    let clone_for = |owner: &str| clone_names(&place, &fp, &["--owner", owner]).remove(0);
    let live = clone_for(&pid);
    let reused = clone_for(&pid);
    let table = registry_tables(kind).0;
    registry_sql(
        &place,
        &format!("UPDATE {table} SET owner_start = owner_start + 1 WHERE name = '{reused}'"),
    );
    let elsewhere = |ttl: &str| {
        let out = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(assert_cmd::cargo::cargo_bin("dbfork"))
            .args(["db", "gc", "--db", &place.url, "--heartbeat-ttl", ttl])
            .env("DBFORK_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "gc in another PID namespace: {err}");
        err
    };
    let registered = |name: &str| place.registry_names().contains(&name.to_string());
    let err = elsewhere("1h");
    assert!(registered(&live) && place.exists(&live), "{err}");
    assert!(registered(&reused), "another namespace cannot tell: {err}");
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    // Named by the collection at the command's start, or by gc itself.
    let collected = |err: &str, name: &str| {
        err.contains(&format!("removed clone {name}"))
            || err.contains(&format!("dropped clone {name}"))
    };
    assert!(collected(&err, &reused), "{err}");
    assert!(!place.exists(&reused));
    assert!(registered(&live) && place.exists(&live), "{err}");

    // Where the owner cannot be seen, the heartbeat decides; `db touch` renews it.
    age_heartbeats(&place, &[&live], 7200);
    let (code, _, err) = run(&["db", "touch", "--db", &place.url, &live]);
    assert_eq!(code, 0, "{err}");
    let err = elsewhere("1h");
    assert!(registered(&live), "touched just now: {err}");
    age_heartbeats(&place, &[&live], 7200);
    let err = elsewhere("1h");
    assert!(collected(&err, &live), "{err}");
    assert!(!place.exists(&live));
    let (code, _, err) = run(&["db", "touch", "--db", &place.url, &live]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not in dbfork's registry"), "{err}");
    let _ = owner.kill();
    let _ = owner.wait();

    // `--owner parent` (the default) behind `timeout` and in a `$(...)` subshell.
    let bin = assert_cmd::cargo::cargo_bin("dbfork");
    let bin = bin.display();
    let url = &place.url;
    let script = format!(
        "timeout 60 {bin} db clone --db '{url}' --template {fp} >/dev/null
         u=$({bin} db clone --db '{url}' --template {fp}; true)
         {bin} db gc --db '{url}'
         {bin} db list --db '{url}' --json"
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("DBFORK_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("not to timeout (pid"), "{err}");
    assert!(err.contains("not to sh (pid"), "{err}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clones = |rows: &serde_json::Value| {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "clone")
            .count()
    };
    assert_eq!(clones(&rows), 2, "the script still runs: {err}");
    // The script has ended: its clones go with the next command's collection.
    let (code, _, err) = run(&["db", "gc", "--db", &place.url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err.matches("dropped clone").count() + err.matches("removed clone").count(),
        2,
        "{err}"
    );
}

/// PostgreSQL ends exactly the right sessions and never strands an invalid
/// database: dropping `_10 _11 _1 ...` of 12 clones at once (before, dropping
/// `_1` ended the concurrent drop of `_10` and left it invalid), one of them
/// invalid already; a bystander whose query names a clone lives on; and a
/// lock held elsewhere makes `--drop-timeout 3s` a bound, naming the holder.
#[test]
fn postgres_drops_exactly_and_within_the_deadline() {
    use std::io::Write;
    let place = Place::new(Kind::Postgres, "pgdrop");
    let runs = place.dir.path().join("runs");
    let (code, fp, err) = template(&place, &setup_for(&place, &runs), &[]);
    assert_eq!(code, 0, "{err}");
    let clone_n = |n: &str| clone_names(&place, fp.trim(), &["-n", n, "--owner", "none"]);
    let clones = clone_n("12");
    let run_prefix = clones[0].rsplit_once('_').unwrap().0.to_string();
    let mut bystander = place.session(&place.maint);
    writeln!(
        bystander.stdin.as_mut().unwrap(),
        "SET application_name = 'bystander';\nSELECT pg_sleep(60) /* \"{run_prefix}_10\" {run_prefix}_1 */;"
    )
    .unwrap();
    place.sql_ok(
        None,
        &format!("UPDATE pg_database SET datconnlimit = -2 WHERE datname = '{run_prefix}_5'"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut order: Vec<String> = ["10", "11", "1"]
        .iter()
        .map(|n| format!("{run_prefix}_{n}"))
        .collect();
    let rest: Vec<String> = clones
        .iter()
        .filter(|c| !order.contains(c))
        .cloned()
        .collect();
    order.extend(rest);
    let mut args = vec!["db", "drop", "--db", &place.url];
    args.extend(order.iter().map(String::as_str));
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    for c in &clones {
        assert!(!place.exists(c), "{c} is left");
    }
    assert_eq!(
        place.sql_ok(
            None,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bystander'"
        ),
        "1",
        "the bystander's session was ended"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();

    let held = clone_n("1").remove(0);
    let mut locker = place.session(&place.maint);
    writeln!(
        locker.stdin.as_mut().unwrap(),
        "SET application_name = 'locker';\nBEGIN;\nALTER DATABASE \"{held}\" WITH CONNECTION LIMIT 5;\nSELECT pg_sleep(60);"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, _, err) = run(&[
        "db",
        "drop",
        "--db",
        &place.url,
        "--drop-timeout",
        "3s",
        &held,
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}: {err}",
        started.elapsed()
    );
    assert!(
        err.contains("within 3s") && err.contains("application 'locker'"),
        "{err}"
    );
    place.sql_ok(
        None,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'locker'",
    );
    let _ = locker.kill();
    let _ = locker.wait();
    let (code, _, err) = run(&["db", "drop", "--db", &place.url, &held]);
    assert_eq!(code, 0, "{err}");
}

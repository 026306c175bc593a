//! The template cache (`--template-cache`): a template built on one server is
//! exported, restored on a fresh one without running the setup, and its
//! clones hold exactly what the original's clones hold (every object and every
//! row, compared through the backends' own dump programs); a damaged cache
//! file is refused and the setup runs.

use std::path::{Path, PathBuf};

use crate::support::{dbfork, Kind, Place};

per_backend!(
    template_cache_travels_to_a_fresh_server,
    incremental_setup_is_verified_against_a_build_from_nothing
);

/// A fresh server for one command: an ephemeral one (SQLite: a new directory).
fn fresh_server(kind: Kind, dir: &Path, tag: &str) -> String {
    match kind {
        Kind::Postgres => "postgres:ephemeral".to_string(),
        Kind::Mysql => "mariadb:ephemeral".to_string(),
        Kind::Sqlite => format!("sqlite://{}/{tag}/main.db", dir.display()),
    }
}

/// A worker command that writes its clone, as the backend's own dump
/// program sees it (objects and every row), to `out`, with the clone's name
/// replaced by `DB`.
fn dump_command(kind: Kind, out: &Path) -> String {
    let out = out.display();
    let dump = match kind {
        Kind::Postgres => "pg_dump --no-owner --no-privileges --inserts --rows-per-insert=1".to_string(),
        Kind::Mysql => "mariadb-dump --skip-comments --skip-extended-insert --routines --triggers --events --hex-blob \"$DBFORK_DATABASE_NAME\"".to_string(),
        Kind::Sqlite => "python3 -c 'import sqlite3,os; print(\"\\n\".join(sqlite3.connect(os.environ[\"DBFORK_SQLITE_PATH\"]).iterdump()))'".to_string(),
    };
    format!("{dump} | sed \"s/$DBFORK_DATABASE_NAME/DB/g\" > {out}")
}

/// A dump's lines that say what the database holds, sorted (the order of
/// rows is not part of a database's contents).
fn contents(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text
        .lines()
        // pg_dump's `\restrict KEY` lines carry a random key.
        .filter(|l| !l.trim().is_empty() && !l.starts_with("--") && !l.contains("restrict "))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

fn run_once(place_url: &str, setup: &str, cache: &Path, out: &Path, kind: Kind) -> String {
    let cwd = cache
        .parent()
        .expect("the cache is in the test's directory");
    let output = dbfork()
        .current_dir(cwd)
        .args([
            "run",
            "-j",
            "1",
            "--db",
            place_url,
            "--setup",
            setup,
            "--template-cache",
            &cache.display().to_string(),
            "--",
            "sh",
            "-c",
            &dump_command(kind, out),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(0), "{err}");
    assert!(out.is_file(), "the worker wrote no dump: {err}");
    err
}

fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn template_cache_travels_to_a_fresh_server(kind: Kind) {
    let place = Place::new(kind, "cache");
    let dir = place.dir.path().to_path_buf();
    let runs_file = dir.join("runs");
    let schema = place.file("schema.sql", place.schema());
    let kinds = place.file(
        "kinds.sql",
        match kind {
            Kind::Postgres => include_str!("../support/kinds_postgres.sql"),
            Kind::Mysql => include_str!("../support/kinds_mysql.sql"),
            Kind::Sqlite => include_str!("../support/kinds_sqlite.sql"),
        },
    );
    let setup = format!(
        "echo run >> {} && {} && {}",
        runs_file.display(),
        place.apply_cmd(&schema),
        place.apply_cmd(&kinds)
    );
    let runs = || {
        std::fs::read_to_string(&runs_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let cache = dir.join("cache");

    // CI, first job: a fresh server, an empty cache. The setup runs, the
    // template goes into the cache.
    let first = dir.join("first.dump");
    let err = run_once(&fresh_server(kind, &dir, "a"), &setup, &cache, &first, kind);
    assert_eq!(runs(), 1, "{err}");
    assert!(err.contains("built template"), "{err}");
    assert!(err.contains("wrote the template to the cache"), "{err}");
    let files = cache_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].to_string_lossy().ends_with(".dbfork-template"),
        "{files:?}"
    );

    // CI, next job: another fresh server, the filled cache. The setup does
    // not run, and the clone holds what the first one held.
    let second = dir.join("second.dump");
    let err = run_once(
        &fresh_server(kind, &dir, "b"),
        &setup,
        &cache,
        &second,
        kind,
    );
    assert_eq!(
        runs(),
        1,
        "the setup ran although the cache had the template: {err}"
    );
    assert!(err.contains("restored template"), "{err}");
    let (a, b) = (contents(&first), contents(&second));
    assert!(
        a.len() > 20,
        "the dump is too small to mean anything: {a:?}"
    );
    assert!(
        a.iter().any(|l| l.contains("kinds")),
        "the dump lacks the table of every type: {a:?}"
    );
    assert_same(
        &a,
        &b,
        "the restored template's clone differs from the original's",
    );

    // A damaged file (truncated, then one byte flipped) is refused with a
    // warning, and the setup runs; the rebuilt template replaces the file.
    let file = files[0].clone();
    let whole = std::fs::read(&file).unwrap();
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    for (round, damaged) in [whole[..whole.len() * 2 / 3].to_vec(), flipped]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&file, &damaged).unwrap();
        let out = dir.join(format!("damaged{round}.dump"));
        // The test server itself, with one more fresh registry (its Drop
        // removes the template built there).
        let other = Place::new(kind, &format!("cache{round}"));
        let server = match kind {
            Kind::Sqlite => fresh_server(kind, &dir, &format!("c{round}")),
            _ => other.url.clone(),
        };
        let err = run_once(&server, &setup, &cache, &out, kind);
        assert_eq!(runs(), 2 + round, "the setup did not run: {err}");
        assert!(err.contains("cannot be used"), "{err}");
        assert!(
            err.contains("checksum does not match") || err.contains("truncated"),
            "{err}"
        );
        assert!(err.contains("built template"), "{err}");
        assert_ne!(
            std::fs::read(&file).unwrap(),
            damaged,
            "the rebuilt template did not replace the damaged file"
        );
    }
    // The replaced file is sound: the next fresh server restores from it.
    let last = dir.join("last.dump");
    let err = run_once(&fresh_server(kind, &dir, "d"), &setup, &cache, &last, kind);
    assert_eq!(runs(), 3, "{err}");
    assert!(err.contains("restored template"), "{err}");
}

/// Fails with the lines only one side has (not both whole dumps).
pub(crate) fn assert_same(a: &[String], b: &[String], what: &str) {
    if a == b {
        return;
    }
    let only_a: Vec<&String> = a.iter().filter(|l| !b.contains(l)).take(15).collect();
    let only_b: Vec<&String> = b.iter().filter(|l| !a.contains(l)).take(15).collect();
    panic!(
        "{what} ({} against {} lines)\nonly in the first:\n{only_a:#?}\nonly in the second:\n{only_b:#?}",
        a.len(),
        b.len()
    );
}

/// Idempotent migrations of the test's own: a table, its rows (inserted
/// only when missing) and a view; `runs` adds a row every time it runs,
/// which a setup that is not safe to rerun does.
fn migration(kind: Kind, table: &str, rerun_safe: bool) -> String {
    let (create, insert) = match kind {
        Kind::Postgres => (
            format!("CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, name text)"),
            format!("INSERT INTO {table} VALUES (1, 'a'), (2, 'b') ON CONFLICT DO NOTHING"),
        ),
        Kind::Mysql => (
            format!("CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, name varchar(20))"),
            format!("INSERT IGNORE INTO {table} VALUES (1, 'a'), (2, 'b')"),
        ),
        Kind::Sqlite => (
            format!("CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, name TEXT)"),
            format!("INSERT OR IGNORE INTO {table} VALUES (1, 'a'), (2, 'b')"),
        ),
    };
    let view = match kind {
        Kind::Sqlite => {
            format!("CREATE VIEW IF NOT EXISTS {table}_names AS SELECT name FROM {table}")
        }
        _ => format!("CREATE OR REPLACE VIEW {table}_names AS SELECT name FROM {table}"),
    };
    let mut sql = format!("{create};\n{insert};\n{view};\n");
    if !rerun_safe {
        sql.push_str("CREATE TABLE IF NOT EXISTS runs (x int);\nINSERT INTO runs VALUES (1);\n");
    }
    sql
}

fn incremental_setup_is_verified_against_a_build_from_nothing(kind: Kind) {
    let place = Place::new(kind, "verify");
    let dir = place.dir.path().to_path_buf();
    let cache = dir.join("cache");
    for (tag, rerun_safe) in [("safe", true), ("unsafe", false)] {
        let migrations = dir.join(tag);
        std::fs::create_dir(&migrations).unwrap();
        std::fs::write(
            migrations.join("0001.sql"),
            migration(kind, "item", rerun_safe),
        )
        .unwrap();
        let setup = format!(
            "for f in {}/*.sql; do {} || exit 1; done",
            migrations.display(),
            place.apply_cmd(Path::new("\"$f\""))
        );
        let pattern = format!("{}/*.sql", migrations.display());
        let template = |extra: &[&str]| {
            let mut args = vec!["db", "template", "--db", &place.url, "--setup", &setup];
            let cache = cache.display().to_string();
            args.extend([
                "--input",
                &pattern,
                "--template-cache",
                &cache,
                "--incremental",
            ]);
            args.extend_from_slice(extra);
            let out = dbfork().args(&args).output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let (code, err) = template(&[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            err.contains("built template") && !err.contains("incremental"),
            "{err}"
        );

        std::fs::write(migrations.join("0002.sql"), migration(kind, "tag", true)).unwrap();
        let (code, err) = template(&["--verify"]);
        assert!(
            err.contains("(incremental: 1 new input file)") && err.contains(".dbfork-template"),
            "{tag}: the template grows from the cached one:\n{err}"
        );
        if rerun_safe {
            assert_eq!(code, Some(0), "{err}");
            assert!(err.contains("verified: the template"), "{err}");
        } else {
            assert_eq!(code, Some(1), "{err}");
            assert!(
                err.contains("differs from a build of the same setup from nothing")
                    && err.contains("only in the template: rows ")
                    && err.contains("runs 2\n")
                    && err.contains("only in the build from nothing: rows ")
                    && err.contains("runs 1\n"),
                "{err}"
            );
        }
        // The scratch build and the clones it was described from are gone.
        let left: Vec<serde_json::Value> = place
            .registry()
            .into_iter()
            .filter(|e| e["kind"] != "template")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `dbfork db fingerprint` prints the key a run's template will have, with
/// the same options, and builds nothing.
#[test]
fn fingerprint_is_the_templates_key_and_builds_nothing() {
    let place = Place::new(Kind::Sqlite, "fingerprint");
    let schema = place.file("schema.sql", place.schema());
    let setup = place.apply_cmd(&schema);
    let input = schema.display().to_string();
    let args = ["--db", &place.url, "--setup", &setup, "--input", &input];
    let out = dbfork()
        .args(["db", "fingerprint"])
        .args(args)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let key = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(key.len(), 64, "{key:?} {err}");
    assert!(
        place.registry().is_empty(),
        "db fingerprint built something"
    );

    let (code, out, err) = crate::support::run(&[["db", "template"].as_slice(), &args].concat());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), key);

    let out = dbfork()
        .args(["db", "fingerprint", "--print-json"])
        .args(args)
        .args(["--", "true"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["fingerprint"], key.as_str());
    assert_eq!(json["inputs"]["server version"], "SQLite 3");
    assert!(
        json["inputs"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.ends_with("schema.sql")),
        "{json}"
    );
}

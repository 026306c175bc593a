//! Snapshot tests (insta) of what dbfork says to the people who run it: the
//! main error messages, and the notes of a template's build, reuse and
//! rebuild in a run. Paths, names with random parts and times are masked.
//! A change shows as a diff of `messages/snapshots/*.snap`: review it with
//! `cargo insta review` and commit the snapshot with the change.

use std::path::Path;

use crate::support::dbfork;

/// `text` with `dir` as `<dir>`, every word of 6 or more hex digits (with a
/// digit among them: fingerprints, run ids) as `<hex>`, and seconds
/// (`0.05s`) as `<secs>`.
fn mask(text: &str, dir: &Path) -> String {
    let text = text.replace(&dir.display().to_string(), "<dir>");
    let mut out = String::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_alphanumeric() || c == '.' {
            word.push(c);
            continue;
        }
        out.push_str(&mask_word(&word));
        word.clear();
        out.push(c);
    }
    out.pop();
    out
}

fn mask_word(word: &str) -> String {
    let core = word.trim_end_matches('.');
    let tail = &word[core.len()..];
    let seconds = core
        .strip_suffix('s')
        .is_some_and(|n| n.contains('.') && n.parse::<f64>().is_ok());
    let hex = core.len() >= 6
        && core
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && core.chars().any(|c| c.is_ascii_digit());
    match (seconds, hex) {
        (true, _) => format!("<secs>{tail}"),
        (_, true) => format!("<hex>{tail}"),
        _ => word.to_string(),
    }
}

/// Runs dbfork in `dir`; what a terminal shows: the command, its exit code
/// and its standard error, masked.
fn transcript(dir: &Path, args: &[&str]) -> String {
    let out = dbfork().current_dir(dir).args(args).output().unwrap();
    format!(
        "$ dbfork {}\n[exit {}]\n{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The errors a new user meets first: each names the cause and the fix.
#[test]
fn main_error_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let sqlite = format!("sqlite://{}/db/main.sqlite3", dir.display());
    let mut out = Vec::new();
    let cases: &[&[&str]] = &[
        &["run", "--timeout", "soon", "--", "pytest"],
        &["run", "-n", "4", "--", "pytest"],
        &["run", "--dist", "suite", "--", "pytest"],
        &[
            "db",
            "list",
            "--db",
            "postgres://u:secret@127.0.0.1:1/postgres",
            "--connect-timeout",
            "2s",
        ],
        &["db", "list", "--db", "postgres://u:secret@[bad/postgres"],
        &["db", "list", "--db", "oracle://scott@db/orcl"],
        &["db", "template", "--db", &sqlite],
        &[
            "db",
            "template",
            "--db",
            &sqlite,
            "--setup",
            "echo the migration failed >&2; exit 3",
        ],
        &[
            "db",
            "template",
            "--db",
            &sqlite,
            "--setup",
            "true",
            "--input",
            "migrations/*.py",
        ],
        &["db", "clone", "--db", &sqlite, "--template", "abcdef"],
        &["db", "drop", "--db", &sqlite, "users"],
        &["db", "ephemeral", "oracle"],
    ];
    for args in cases {
        out.push(transcript(&dir, args));
    }
    std::fs::write(dir.join("dbfork.toml"), "setpu = \"make db\"\n").unwrap();
    out.push(transcript(&dir, &["db", "list"]));
    std::fs::write(dir.join("dbfork.toml"), "jobs = \"many\"\n").unwrap();
    out.push(transcript(&dir, &["run", "--", "pytest"]));
    insta::assert_snapshot!(mask(&out.join("\n"), &dir));
}

/// The notes of a run's template: built, reused, rebuilt with what changed,
/// as a CI log shows them (plain lines).
#[test]
fn template_notes_of_build_reuse_and_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("schema")).unwrap();
    std::fs::write(
        dir.join("schema/0001_initial.sql"),
        "create table a (id int);",
    )
    .unwrap();
    // The setup applies every schema file to the database dbfork names.
    std::fs::write(
        dir.join("migrate.py"),
        "import glob, os, sqlite3\ndb = sqlite3.connect(os.environ['DBFORK_SQLITE_PATH'])\nfor f in sorted(glob.glob('schema/*.sql')):\n    db.executescript(open(f).read())\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("dbfork.toml"),
        "db = \"sqlite://db/main.sqlite3\"\nsetup = \"python3 migrate.py\"\ninputs = [\"schema/*.sql\"]\njobs = 1\nadapter = \"none\"\n",
    )
    .unwrap();
    let run = || {
        let out = dbfork()
            .current_dir(&dir)
            .env("CI", "true")
            .args(["run", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let mut out = vec![run(), run()];
    std::fs::write(dir.join("schema/0002_more.sql"), "create table b (id int);").unwrap();
    out.push(run());
    std::fs::write(
        dir.join("schema/0001_initial.sql"),
        "create table a (id bigint);",
    )
    .unwrap();
    out.push(run());
    let out: Vec<String> = out.iter().map(|run| mask(run, &dir)).collect();
    insta::assert_snapshot!(out.join("--- next run ---\n"));
}

#[test]
fn masking() {
    let dir = Path::new("/tmp/x");
    assert_eq!(
        mask(
            "built dbfork_tpl_48a2a076965048b6_8a0ff3 in 0.05s. /tmp/x/db sqlite3 abcdef",
            dir
        ),
        "built dbfork_tpl_<hex>_<hex> in <secs>. <dir>/db sqlite3 abcdef"
    );
}

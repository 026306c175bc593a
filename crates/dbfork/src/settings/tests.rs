//! The settings' tests: flags, variables and file keys resolved together,
//! and every bad value's message.

use super::*;

/// `dbfork run FLAGS -- pytest -q`, as the command line parses it.
fn flags(flags: &[&str]) -> RunArgs {
    use clap::{Args, FromArgMatches};
    let command = RunArgs::augment_args(clap::Command::new("run"));
    let argv = ["run"].iter().chain(flags).chain(&["--", "pytest", "-q"]);
    let matches = command.try_get_matches_from(argv).unwrap();
    RunArgs::from_arg_matches(&matches).unwrap()
}

fn args() -> RunArgs {
    flags(&[])
}

/// A project directory with a subdirectory to run from.
fn project() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("proj");
    let sub = root.join("tests/unit");
    std::fs::create_dir_all(&sub).unwrap();
    (dir, root, sub)
}

fn error_text(result: anyhow::Result<RunConfig>) -> String {
    let err = result.unwrap_err();
    assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
    format!("{err:#}")
}

#[test]
fn defaults_without_a_file() {
    let (_dir, root, _) = project();
    let config = resolve(&args(), 1, &root).unwrap();
    assert_eq!(config.command, vec!["pytest", "-q"]);
    assert!(config.jobs >= 1);
    assert_eq!(config.max_worker_restarts, 4 * config.jobs);
    assert_eq!(config.db, None);
    assert_eq!(
        default_db(&config),
        format!("sqlite://{}/.dbfork/sqlite/main.sqlite3", root.display())
    );
    assert_eq!(config.state_dir, root.join(".dbfork"));
    assert_eq!(config.dist, Dist::Test);
    assert_eq!(config.adapter, Adapter::Auto);
    assert_eq!(config.timeout, None);
    assert_eq!(config.grace, Duration::from_secs(10));
    assert_eq!(config.clone_method, "default");
    assert_eq!(config.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.drop_timeout, Duration::from_secs(30));
    assert_eq!(config.heartbeat_ttl, Duration::from_secs(3600));
    assert_eq!(config.build_timeout, Duration::from_secs(1800));
    assert_eq!(config.lock_timeout, Duration::from_secs(1800));
    assert_eq!(config.verbose, 1);
    assert!(config.setup.is_none() && config.inputs.is_empty());
    assert!(config.junit.is_none() && config.config_file.is_none());
}

/// Without a configuration file, a run from a subdirectory keeps its
/// state in the project root's `.dbfork/` (the directory of pytest.ini,
/// pyproject.toml or manage.py, or one that has a `.dbfork/` already).
#[test]
fn the_state_lives_at_the_project_root() {
    for marker in ["pytest.ini", "manage.py", "pyproject.toml"] {
        let (_dir, root, sub) = project();
        std::fs::write(root.join(marker), "").unwrap();
        let config = resolve(&args(), 0, &sub).unwrap();
        assert_eq!(config.state_dir, root.join(".dbfork"), "{marker}");
        assert_eq!(
            default_db(&config),
            format!("sqlite://{}/.dbfork/sqlite/main.sqlite3", root.display())
        );
    }
    let (_dir, root, sub) = project();
    std::fs::create_dir_all(root.join(".dbfork")).unwrap();
    assert_eq!(
        resolve(&args(), 0, &sub).unwrap().state_dir,
        root.join(".dbfork")
    );
    // Nothing marks a root: the directory it runs in.
    let (_dir, _root, sub) = project();
    assert_eq!(
        resolve(&args(), 0, &sub).unwrap().state_dir,
        sub.join(".dbfork")
    );
}

#[test]
fn flag_beats_file_beats_default() {
    let (_dir, root, sub) = project();
    std::fs::write(
        root.join("dbfork.toml"),
        "dist = \"module\"\njobs = 3\ntimeout = 90\nsetup = \"alembic upgrade head\"\ninputs = [\"migrations/**\"]\n",
    )
    .unwrap();
    let config = resolve(&args(), 0, &sub).unwrap();
    assert_eq!(config.config_file, Some(root.join("dbfork.toml")));
    assert_eq!(config.dist, Dist::Module);
    assert_eq!(config.jobs, 3);
    assert_eq!(config.max_worker_restarts, 12);
    assert_eq!(config.timeout, Some(Duration::from_secs(90)));
    assert_eq!(config.setup.as_deref(), Some("alembic upgrade head"));
    assert_eq!(config.inputs, vec!["migrations/**"]);
    // Not in the file: the default.
    assert_eq!(config.adapter, Adapter::Auto);
    // The state and default database belong to the project root, not the cwd.
    assert_eq!(config.state_dir, root.join(".dbfork"));

    let given = flags(&[
        "--dist",
        "class",
        "--jobs",
        "2",
        "--timeout",
        "none",
        "--setup",
        "",
        "--input",
        "schema.sql",
    ]);
    let config = resolve(&given, 0, &sub).unwrap();
    assert_eq!(config.dist, Dist::Class);
    assert_eq!(config.jobs, 2);
    assert_eq!(config.max_worker_restarts, 8);
    assert_eq!(config.timeout, None);
    assert_eq!(config.setup, None);
    assert_eq!(config.inputs, vec!["schema.sql"]);
}

#[test]
fn unknown_key_names_key_file_and_known_keys() {
    let (_dir, root, _) = project();
    std::fs::write(root.join("dbfork.toml"), "dbb = \"postgres://x/y\"\n").unwrap();
    let text = error_text(resolve(&args(), 0, &root));
    assert!(text.contains("unknown key `dbb`"), "{text}");
    assert!(text.contains("Did you mean `db`?"), "{text}");
    assert!(
        text.contains(&root.join("dbfork.toml").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("db, setup, inputs, aliases, fresh_transactional, fork, jobs, dist"),
        "{text}"
    );
    assert!(text.contains("build_timeout"), "{text}");
}

#[test]
fn wrong_values_say_what_is_allowed() {
    let (_dir, root, _) = project();
    let file = root.join("dbfork.toml");
    for (toml, wanted) in [
        ("dist = \"row\"", "invalid `dist` in"),
        ("dist = \"row\"", "test, class, module or file"),
        (
            "jobs = 0",
            "is not a number of worker slots (1 or more) or \"auto\"",
        ),
        ("jobs = \"many\"", "`many` is not a number of worker slots"),
        ("jobs = 1.5", "it is a float"),
        ("timeout = \"soon\"", "`soon` is not a duration"),
        ("timeout = 0", "it is zero"),
        (
            "inputs = \"migrations\"",
            "expected a list of glob patterns",
        ),
        (
            "adapter = \"nose\"",
            "auto, pytest, django, protocol or none",
        ),
        (
            "max-worker-restarts = -1",
            "`-1` is not a whole number, 0 or more",
        ),
        ("db = \"\"", "it is empty"),
        (
            "aliases = [\"default\"]",
            "`default` always gets the worker's clone",
        ),
        ("aliases = [\"a-b\"]", "`a-b` is not a database alias"),
        ("aliases = [\"a\", \"a\"]", "`a` is named twice"),
        (
            "fresh_transactional = \"maybe\"",
            "`maybe` is not true or false",
        ),
        (
            "fresh_transactional = 1",
            "it is an integer, expected true or false",
        ),
    ] {
        std::fs::write(&file, toml).unwrap();
        let text = error_text(resolve(&args(), 0, &root));
        assert!(text.contains(wanted), "{toml}: {text}");
        assert!(text.contains(&file.display().to_string()), "{toml}: {text}");
    }
    std::fs::write(&file, "dist = \"module\"\ndist-x = 1").unwrap();
    assert!(error_text(resolve(&args(), 0, &root)).contains("unknown key `dist-x`"));
}

#[test]
fn django_settings() {
    let (_dir, root, _) = project();
    std::fs::write(
        root.join("dbfork.toml"),
        "aliases = [\"other\", \"replica2\"]\nfresh-transactional = true\n",
    )
    .unwrap();
    let mut django = args();
    django.command = ["python", "manage.py", "test"].map(String::from).into();
    let config = resolve(&django, 0, &root).unwrap();
    assert_eq!(config.aliases, ["other", "replica2"]);
    assert!(config.fresh_transactional);
    // manage.py test hands out whole classes unless told otherwise.
    assert_eq!(config.dist, Dist::Class);
    assert_eq!(resolve(&args(), 0, &root).unwrap().dist, Dist::Test);
    let given = RunArgs {
        command: django.command,
        ..flags(&[
            "--alias",
            "third",
            "--fresh-transactional=false",
            "--dist",
            "test",
        ])
    };
    let config = resolve(&given, 0, &root).unwrap();
    assert_eq!(config.aliases, ["third"]);
    assert!(!config.fresh_transactional);
    assert_eq!(config.dist, Dist::Test);
}

/// Every setting's default parses, and every bad value's message names
/// the flag and variable it came from.
#[test]
fn every_setting_of_the_table_is_checked() {
    let base = Path::new("/");
    for setting in SETTINGS {
        if let Some(default) = setting.value {
            parse(setting, Raw::Text(default), &Origin::Default(setting), base)
                .unwrap_or_else(|e| panic!("{}: its default: {e:#}", setting.key));
        }
        for text in ["", "1", "x"] {
            if let Err(err) = parse(setting, Raw::Text(text), &Origin::Flag(setting), base) {
                let text = format!("{err:#}");
                assert!(
                    text.contains(&setting.flag_and_env()),
                    "{}: {text}",
                    setting.key
                );
            }
        }
    }
}

/// A good value of each kind, as a configuration file writes it.
fn example(kind: Kind) -> &'static str {
    match kind {
        Kind::Url => "\"sqlite:///tmp/dbfork-example/main.db\"",
        Kind::Command => "\"true\"",
        Kind::Globs => "[\"migrations/*\"]",
        Kind::Aliases => "[\"other\"]",
        Kind::Switch => "true",
        Kind::Jobs => "2",
        Kind::Dist => "\"class\"",
        Kind::Order => "\"shuffle:7\"",
        Kind::Shard => "\"1/2\"",
        Kind::Adapter => "\"pytest\"",
        Kind::Duration(_) => "\"7m\"",
        Kind::HeartbeatTtl => "\"2h\"",
        Kind::Count { .. } => "3",
        Kind::Budget => "\"off\"",
        Kind::Choice(words) => match words.first() {
            Some(&"pass") => "\"pass\"",
            _ => "unknown choice: add its example",
        },
        Kind::Path => "\"out/file\"",
        Kind::Size => "\"1GiB\"",
        Kind::Method => "\"default\"",
        Kind::Template => "\"abcdef12\"",
        Kind::Owner => "\"none\"",
        Kind::Addresses => "[\"tcp:127.0.0.1:5999\"]",
        Kind::Secret => "\"0123456789abcdef0123\"",
        Kind::Service => "\"unix:/tmp/dbfork-example.sock\"",
    }
}

/// Reads `key` with the getter of its kind; whether it is set.
fn read(settings: &Settings, setting: &Setting) -> anyhow::Result<bool> {
    let key = setting.key;
    Ok(match setting.kind {
        Kind::Url | Kind::Command | Kind::Method | Kind::Template | Kind::Owner | Kind::Service => {
            settings.text(key)?.is_some()
        }
        Kind::Globs | Kind::Aliases | Kind::Addresses => {
            settings.list(key)?.is_some_and(|l| !l.is_empty())
        }
        Kind::Secret => settings.secret(key)?.is_some(),
        Kind::Switch => settings.switch(key)?.is_some(),
        Kind::Jobs => settings.jobs(key)?.is_some(),
        Kind::Dist => settings.dist(key)?.is_some(),
        Kind::Order => settings.order(key)?.is_some(),
        Kind::Shard => settings.shard(key)?.is_some(),
        Kind::Adapter => settings.adapter(key)?.is_some(),
        Kind::Duration(_) | Kind::HeartbeatTtl => settings.duration(key)?.is_some(),
        Kind::Count { .. } | Kind::Budget => settings.count(key)?.is_some(),
        Kind::Choice(_) => settings.text(key)?.is_some(),
        Kind::Path => settings.path(key)?.is_some(),
        Kind::Size => settings.size(key)?.is_some(),
    })
}

/// Every verb takes each of its settings as a flag with its variable, as a
/// key of the configuration file and with a row in the docs, and nothing
/// else through a `DBFORK_*` variable; another verb's key in the file is
/// passed over.
#[test]
fn every_verb_takes_its_settings_from_flag_variable_file_and_docs() {
    use clap::CommandFactory;
    let cli = crate::cli::Cli::command();
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    let (_dir, root, _) = project();
    let file: String = SETTINGS
        .iter()
        .map(|s| format!("{} = {}\n", s.key, example(s.kind)))
        .collect();
    std::fs::write(root.join("dbfork.toml"), file).unwrap();
    for &verb in Verb::ALL {
        for line in verb.commands() {
            let mut command = &cli;
            for word in line.split(' ') {
                command = command
                    .find_subcommand(word)
                    .unwrap_or_else(|| panic!("no `dbfork {line}`"));
            }
            for setting in SETTINGS {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_long() == Some(setting.flag));
                let takes =
                    arg.is_some_and(|a| a.get_env() == Some(std::ffi::OsStr::new(setting.env)));
                assert_eq!(
                    takes,
                    setting.of(verb),
                    "`dbfork {line}` --{}",
                    setting.flag
                );
            }
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    let ours = env == dbfork_meta::env::CONFIG
                        || SETTINGS.iter().any(|s| s.of(verb) && env == s.env);
                    assert!(
                        ours,
                        "`dbfork {line}` reads {env:?}, which is no setting of it"
                    );
                }
            }
        }
        let settings = Settings::load(verb, &[], None, &root).unwrap();
        for setting in SETTINGS {
            if setting.of(verb) {
                assert!(
                    read(&settings, setting).unwrap(),
                    "{verb:?}: `{}` from the file",
                    setting.key
                );
                let row = format!("| `{}` | ", setting.key);
                let line = docs.lines().find(|l| l.starts_with(&row));
                let line = line.unwrap_or_else(|| panic!("no docs row for `{}`", setting.key));
                assert!(
                    line.contains(&dbfork_meta::settings::commands(setting)),
                    "{line}"
                );
            } else {
                assert!(
                    read(&settings, setting).is_err(),
                    "{verb:?} reads `{}`",
                    setting.key
                );
            }
        }
    }
}

#[test]
fn wrong_flag_values_name_flag_and_variable() {
    let (_dir, root, _) = project();
    let cases = [
        (
            flags(&["--dist", "row"]),
            "invalid --dist / DBFORK_DIST: `row` is not one of test, class, module or file.",
        ),
        (
            flags(&["--jobs", "0"]),
            "invalid --jobs / DBFORK_JOBS: `0` is not a number",
        ),
        (
            flags(&["--grace", "5y"]),
            "invalid --grace / DBFORK_GRACE: unknown unit",
        ),
        (
            flags(&["--connect-timeout", "0s"]),
            "invalid --connect-timeout / DBFORK_CONNECT_TIMEOUT: it is zero",
        ),
    ];
    for (given, wanted) in cases {
        let text = error_text(resolve(&given, 0, &root));
        assert!(text.contains(wanted), "{text}");
    }
}

#[test]
fn kebab_case_keys() {
    let (_dir, root, _) = project();
    std::fs::write(
        root.join("dbfork.toml"),
        "max-worker-restarts = 7\nclone-method = \"copy\"\nconnect-timeout = \"250ms\"\ndrop_timeout = 5\nbuild-timeout = \"10m\"\ngrace = 0.5\n",
    )
    .unwrap();
    let config = resolve(&args(), 0, &root).unwrap();
    assert_eq!(config.max_worker_restarts, 7);
    assert_eq!(config.clone_method, "copy");
    assert_eq!(config.connect_timeout, Duration::from_millis(250));
    assert_eq!(config.drop_timeout, Duration::from_secs(5));
    assert_eq!(config.build_timeout, Duration::from_secs(600));
    assert_eq!(config.grace, Duration::from_millis(500));

    std::fs::write(
        root.join("dbfork.toml"),
        "clone-method = \"copy\"\nclone_method = \"backup\"\n",
    )
    .unwrap();
    let text = error_text(resolve(&args(), 0, &root));
    assert!(text.contains("`clone_method` is set twice"), "{text}");
}

#[test]
fn pyproject_without_tool_dbfork_is_skipped() {
    let (_dir, root, sub) = project();
    std::fs::write(
        root.join("pyproject.toml"),
        "[project]\nname = \"app\"\n\n[tool.dbfork]\njobs = 5\n",
    )
    .unwrap();
    // A nested package's pyproject.toml that does not configure dbfork.
    std::fs::write(
        root.join("tests/pyproject.toml"),
        "[tool.pytest.ini_options]\naddopts = \"-q\"\n",
    )
    .unwrap();
    let config = resolve(&args(), 0, &sub).unwrap();
    assert_eq!(config.jobs, 5);
    assert_eq!(config.config_file, Some(root.join("pyproject.toml")));

    // dbfork.toml wins over pyproject.toml in the same directory.
    std::fs::write(root.join("dbfork.toml"), "jobs = 6\n").unwrap();
    assert_eq!(resolve(&args(), 0, &sub).unwrap().jobs, 6);

    // Unknown keys in [tool.dbfork] say so.
    std::fs::remove_file(root.join("dbfork.toml")).unwrap();
    std::fs::write(root.join("pyproject.toml"), "[tool.dbfork]\nworkers = 2\n").unwrap();
    let text = error_text(resolve(&args(), 0, &sub));
    assert!(
        text.contains("unknown key `workers` in [tool.dbfork] of"),
        "{text}"
    );
}

#[test]
fn relative_paths_in_the_file_are_from_its_directory() {
    let (_dir, root, sub) = project();
    std::fs::write(
        root.join("dbfork.toml"),
        "db = \"sqlite://./var/test.db?mode=rwc\"\njunit = \"reports/junit.xml\"\njson = \"\"\n",
    )
    .unwrap();
    let config = resolve(&args(), 0, &sub).unwrap();
    assert_eq!(
        config.db.as_deref(),
        Some(format!("sqlite://{}/var/test.db?mode=rwc", root.display()).as_str())
    );
    assert_eq!(config.junit, Some(root.join("reports/junit.xml")));
    assert_eq!(config.json, None);

    // From flags: relative to the working directory.
    let given = flags(&["--db", "sqlite://local.db", "--junit", "out.xml"]);
    let config = resolve(&given, 0, &sub).unwrap();
    assert_eq!(
        config.db.as_deref(),
        Some(format!("sqlite://{}/local.db", sub.display()).as_str())
    );
    assert_eq!(config.junit, Some(sub.join("out.xml")));

    // Other URLs are left alone.
    let given = flags(&["--db", "postgres://u@h:5432/postgres"]);
    assert_eq!(
        resolve(&given, 0, &sub).unwrap().db.as_deref(),
        Some("postgres://u@h:5432/postgres")
    );
    assert_eq!(config.recipe_dir, None);
}

/// The file's `setup` and `inputs` mean the same from any subdirectory: the
/// setup runs in the project root and the patterns are taken from there; a
/// pattern given by a flag beside them is the working directory's.
#[test]
fn the_files_setup_and_inputs_are_the_project_roots() {
    let (_dir, root, sub) = project();
    std::fs::write(
        root.join("dbfork.toml"),
        "setup = \"./migrate.sh\"\ninputs = [\"schema/*.sql\"]\n",
    )
    .unwrap();
    let config = resolve(&args(), 0, &sub).unwrap();
    assert_eq!(config.recipe_dir.as_deref(), Some(root.as_path()));
    assert_eq!(config.inputs, ["schema/*.sql"]);
    let config = resolve(&flags(&["--input", "local/*.sql"]), 0, &sub).unwrap();
    assert_eq!(config.recipe_dir.as_deref(), Some(root.as_path()));
    assert_eq!(config.inputs, [format!("{}/local/*.sql", sub.display())]);
    let config = resolve(&flags(&["--setup", "make db", "--input", "x"]), 0, &sub).unwrap();
    assert_eq!(
        (config.recipe_dir, config.inputs),
        (None, vec!["x".to_string()])
    );
}

#[test]
fn explicit_config_file() {
    let (_dir, root, sub) = project();
    let missing = flags(&["--config", "nope.toml"]);
    let text = error_text(resolve(&missing, 0, &sub));
    assert!(
        text.contains("nope.toml") && text.contains("does not exist"),
        "{text}"
    );

    std::fs::write(root.join("ci.toml"), "dist = \"file\"\n").unwrap();
    // Ignored: --config names the file.
    std::fs::write(sub.join("dbfork.toml"), "dist = \"class\"\n").unwrap();
    let explicit = flags(&["--config", "../../ci.toml"]);
    let config = resolve(&explicit, 0, &sub).unwrap();
    assert_eq!(config.dist, Dist::File);

    std::fs::write(root.join("bad.toml"), "dist = \n").unwrap();
    let bad = root.join("bad.toml");
    let broken = flags(&["--config", bad.to_str().unwrap()]);
    let text = error_text(resolve(&broken, 0, &sub));
    assert!(text.contains("is not valid TOML"), "{text}");
}

#[test]
fn sqlite_urls() {
    let base = Path::new("/srv/app 1%");
    assert_eq!(
        absolute_sqlite("sqlite://x.db", base),
        "sqlite:///srv/app 1%25/x.db"
    );
    assert_eq!(
        absolute_sqlite("sqlite:///abs.db", base),
        "sqlite:///abs.db"
    );
    assert_eq!(
        absolute_sqlite("sqlite3://./a/b.db", base),
        "sqlite3:///srv/app 1%25/a/b.db"
    );
    assert_eq!(
        absolute_sqlite("mysql://root@h/mysql", base),
        "mysql://root@h/mysql"
    );
    assert_eq!(
        absolute_sqlite("postgres:ephemeral", base),
        "postgres:ephemeral"
    );
}

/// The service's own table (`[serve]` of dbfork.toml, `[tool.dbfork.serve]`
/// of pyproject.toml) overrides the top for `dbfork serve` alone; its keys
/// are checked by every verb; the service listens on loopback or a socket.
#[test]
fn the_serve_table_is_the_services() {
    let (_dir, root, _) = project();
    std::fs::write(
        root.join("pyproject.toml"),
        "[tool.dbfork]\npool_size = 2\ndb = \"sqlite://x.db\"\n[tool.dbfork.serve]\npool-size = 7\nlisten = [\"unix:/tmp/dbfork-test.sock\", \"tcp:[::1]:6000\"]\n",
    )
    .unwrap();
    let serve = Settings::load(Verb::Serve, &[], None, &root).unwrap();
    assert_eq!(serve.count("pool_size").unwrap(), Some(7));
    assert_eq!(
        serve.list("listen").unwrap().unwrap(),
        ["unix:/tmp/dbfork-test.sock", "tcp:[::1]:6000"]
    );
    assert!(serve.database().unwrap().ends_with("/x.db"));
    assert!(Settings::load(Verb::List, &[], None, &root).is_ok());
    std::fs::write(
        root.join("pyproject.toml"),
        "[tool.dbfork.serve]\npool_sise = 7\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        Settings::load(Verb::List, &[], None, &root).unwrap_err()
    );
    assert!(
        err.contains("unknown key `serve.pool_sise`") && err.contains("`pool_size`"),
        "{err}"
    );
    for (address, why) in [
        ("tcp:localhost:5000", "not an IP address"),
        (
            "http://127.0.0.1:5000",
            "neither tcp:HOST:PORT nor unix:PATH",
        ),
    ] {
        std::fs::write(
            root.join("pyproject.toml"),
            format!("[tool.dbfork.serve]\nlisten = [\"{address}\"]\n"),
        )
        .unwrap();
        let err = format!(
            "{:#}",
            Settings::load(Verb::Serve, &[], None, &root).unwrap_err()
        );
        assert!(err.contains(why) && err.contains("`serve.listen`"), "{err}");
    }
}

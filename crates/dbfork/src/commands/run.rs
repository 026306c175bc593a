//! `dbfork run`: settings resolved, the run prepared (the test command
//! configured once, as the tests are), the database opened (the one `--db`
//! names, else the server the tests' settings name, else the embedded
//! SQLite), and the runner library does the rest; here only what the user
//! reads at the very end.

use anyhow::Result;
use dbfork_engine::{Backend, Target};
use dbfork_meta::exit::{Failure, Family};
use dbfork_runner::error::{exit, RunError};
use dbfork_runner::run::{self as runner, Prepared};

use crate::cli::{BisectArgs, RerunArgs, RunArgs};
use crate::errors::UsageError;
use crate::settings;
use crate::target::{Collect, Opened};
use dbfork_meta::report::{BisectReport, BisectVerdict, RunReport};
use dbfork_runner::machine as runner_machine;

/// Returns the run's exit code (pytest's: 0 passed, 1 failed, 2 interrupted,
/// 3 setup or database error, 4 usage error, 5 no tests).
pub async fn run(args: RunArgs, verbose: u8) -> Result<i32> {
    // The runner printed the summary as soon as the last result was in.
    Ok(match run_report(args, verbose).await {
        Ok(report) => report.exit_code,
        Err(code) => code,
    })
}

/// The run's report; `Err`: the exit code of a failure already reported.
async fn run_report(args: RunArgs, verbose: u8) -> Result<RunReport, i32> {
    let (prepared, opened) = start(&args, verbose, Collect::Leftovers).await?;
    let Opened {
        backend, server, ..
    } = opened;
    let result = runner::run(prepared, backend).await;
    if let Some(server) = server {
        if let Err(e) = server.stop().await {
            dbfork_meta::say!("dbfork: warning: could not stop the ephemeral server: {e}");
        }
    }
    result.map_err(|e| failed(&e))
}

/// `dbfork bisect TEST [-- command]`: a run of probes only (see the
/// runner's `machine::bisect`), the suspects from the newest recording
/// where TEST failed; prints the culprits and how to reproduce.
pub async fn bisect(args: BisectArgs, verbose: u8) -> Result<i32> {
    let BisectArgs {
        mut run,
        test,
        from,
    } = args;
    let found = super::report::before_failure(from.as_deref(), &test)?;
    let before = match &found {
        Some(found) => {
            dbfork_meta::say!(
                "dbfork: the suspects: the {} test(s) its worker ran before {test} in run {}",
                found.before.len(),
                found.run
            );
            Some(found.before.clone())
        }
        None => {
            dbfork_meta::say!("dbfork: no recorded run where {test} failed: the suspects are every other test the command collects");
            None
        }
    };
    if run.command.is_empty() {
        match &found {
            Some(found) => run.command = found.command.clone(),
            None => {
                return Err(UsageError(format!(
                    "no test command given, and no recorded run where {test} failed to take one from: give it after the test, `dbfork bisect {test} -- python -m pytest`"
                ))
                .into())
            }
        }
    }
    let command = run.command.clone();
    run.bisect = Some(runner_machine::BisectSpec {
        target: test,
        before,
    });
    let report = match run_report(run, verbose).await {
        Ok(report) => report,
        Err(code) => return Ok(code),
    };
    if let Some(bisect) = &report.bisect {
        dbfork_meta::out!("{}", bisect_text(bisect, &command));
    }
    Ok(report.exit_code)
}

/// What `dbfork bisect` found, in words, with the command that reproduces it.
fn bisect_text(bisect: &BisectReport, command: &[String]) -> String {
    let test = &bisect.test;
    let probes = bisect.probes;
    match bisect.verdict {
        BisectVerdict::Found => {
            let mut ids = bisect.culprits.clone();
            ids.push(test.clone());
            let what = match bisect.culprits.len() {
                1 => "this test makes it fail when it runs before it".to_string(),
                n => format!("these {n} tests make it fail when they all run before it, in this order (no one of them alone)"),
            };
            let culprits: String = bisect.culprits.iter().map(|c| format!("  {c}\n")).collect();
            format!(
                "{test} fails after other tests ({probes} probes): {what}:\n{culprits}Reproduce (one worker, in this order):\n  {}",
                reproduce(command, &ids)
            )
        }
        BisectVerdict::FailsAlone => format!(
            "{test} fails alone in a fresh worker on a fresh clone: no test before it is needed (it is broken, not order-dependent)"
        ),
        BisectVerdict::NotReproduced => format!(
            "{test} passes after all the suspects too, in a fresh worker on a fresh clone: the failure did not come back (a flaky test, or it depends on something else: time, the environment, another worker)"
        ),
        BisectVerdict::Stopped => format!("the bisection of {test} was stopped after {probes} probes"),
    }
}

/// `dbfork run -j 1 --order file -- COMMAND IDS`: the command without the
/// tests it selected (trailing arguments that are paths or a prefix of one
/// of the ids), then the ids.
fn reproduce(command: &[String], ids: &[String]) -> String {
    let selects = |arg: &str| {
        !arg.starts_with('-')
            && (std::path::Path::new(arg).exists()
                || ids.iter().any(|id| {
                    id.strip_prefix(arg)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '.', ':']))
                }))
    };
    let mut base: Vec<&str> = command.iter().map(String::as_str).collect();
    // The tool itself (`python -m pytest`, `manage.py test`) stays.
    while base.len() > 3 && base.last().is_some_and(|a| selects(a)) {
        base.pop();
    }
    let words: Vec<String> = base
        .iter()
        .map(|w| w.to_string())
        .chain(ids.iter().cloned())
        .map(|w| dbfork_runner::progress::shell_word(&w))
        .collect();
    format!("dbfork run -j 1 --order file -- {}", words.join(" "))
}

/// `dbfork rerun --failed [RUN]`: the failed tests of a recorded run, run
/// again with its command (or the one given) and the settings given now.
pub async fn rerun(args: RerunArgs, verbose: u8) -> Result<i32> {
    let wanted = Some(args.failed.as_str()).filter(|r| !r.is_empty());
    let (name, _, report) = super::report::recorded(wanted)?;
    let failed: Vec<String> = report
        .tests
        .iter()
        .filter(|t| t.outcome.is_failure())
        .map(|t| t.id.clone())
        .collect();
    if failed.is_empty() {
        dbfork_meta::say!("dbfork: run {name} had no failed test: nothing to run again");
        return Ok(exit::OK);
    }
    let mut run_args = args.run;
    if run_args.command.is_empty() {
        run_args.command = report.command.clone();
    }
    dbfork_meta::say!(
        "dbfork: running again the {} failed test(s) of run {name}",
        failed.len()
    );
    run_args.only = Some(failed);
    run(run_args, verbose).await
}

/// Resolves the settings, opens the database and prepares the run (the
/// controller configured); an `Err` is the exit code of a failure already reported.
async fn start(args: &RunArgs, verbose: u8, collect: Collect) -> Result<(Prepared, Opened), i32> {
    // First of all: a Ctrl-C from now on is the run's to handle, not a kill.
    let signals = runner::Signals::listen().with_early(crate::signals::early_signals());
    let cwd = std::env::current_dir().map_err(|e| {
        dbfork_meta::say!("dbfork: error: the working directory: {e}");
        exit::USAGE
    })?;
    let config = match settings::resolve(args, verbose, &cwd) {
        Ok(config) => config,
        Err(e) => {
            dbfork_meta::say!("dbfork: error: {e:#}");
            return Err(exit::USAGE);
        }
    };
    let connection = crate::target::Connection {
        connect_timeout: config.connect_timeout,
        drop_timeout: config.drop_timeout,
        heartbeat_ttl: config.heartbeat_ttl,
    };
    // A database named by the user is opened first: the test command's
    // controller then sees it in DATABASE_URL, as the workers do.
    let mut opened = match &config.db {
        Some(db) => match Opened::open(db, &connection, collect).await {
            Ok(opened) => Some(opened),
            Err(e) => return Err(open_failed(&e)),
        },
        None => None,
    };
    let server = opened.as_ref().map(|o| o.backend.url().clone());
    let default_db = settings::default_db(&config);
    let prepared = match runner::prepare(config, server.as_ref(), signals).await {
        Ok(prepared) => prepared,
        Err(e) => {
            if let Some(opened) = opened {
                close(opened).await;
            }
            return Err(failed(&e));
        }
    };
    let opened = match opened.take() {
        Some(opened) => opened,
        None => {
            let db = match found_server(&prepared) {
                Ok(Some(url)) => url,
                Ok(None) => default_db,
                Err(e) => {
                    prepared.abandon().await;
                    return Err(failed(&e));
                }
            };
            match Opened::open(&db, &connection, collect).await {
                Ok(opened) => opened,
                Err(e) => {
                    prepared.abandon().await;
                    return Err(open_failed(&e));
                }
            }
        }
    };
    Ok((prepared, opened))
}

/// `dbfork db fingerprint`: the fingerprint the run's template would have
/// with the same options (for a CI cache key), without building anything.
pub async fn fingerprint(args: RunArgs, verbose: u8, json: bool) -> Result<i32> {
    let (prepared, opened) = match start(&args, verbose, Collect::Nothing).await {
        Ok(started) => started,
        Err(code) => return Ok(code),
    };
    let result = runner::fingerprint(prepared, &opened.backend).await;
    close(opened).await;
    match result {
        Ok(manifest) if json => {
            let value = serde_json::json!({
                "fingerprint": manifest.fingerprint,
                "inputs": manifest.entries,
            });
            dbfork_meta::out!("{value}");
            Ok(exit::OK)
        }
        Ok(manifest) => {
            dbfork_meta::out!("{}", manifest.fingerprint);
            Ok(exit::OK)
        }
        Err(e) => Ok(failed(&e)),
    }
}

/// The server the tests' Django settings name for `default`, as a URL, when
/// `--db` is not given (`None`: no Django project, or SQLite).
fn found_server(prepared: &Prepared) -> Result<Option<String>, RunError> {
    let Some(django) = prepared.django() else {
        return Ok(None);
    };
    let Some(url) = dbfork_runner::django::server_url(django)? else {
        return Ok(None);
    };
    dbfork_meta::say!(
        "dbfork: the tests' settings use {} at {url}: the template and the clones are made there (--db chooses another server)",
        url.kind.name()
    );
    // Validated by a round trip, as a URL typed by the user would be.
    Target::parse(&url.to_url_with_password())
        .map(|_| Some(url.to_url_with_password()))
        .map_err(RunError::Engine)
}

fn open_failed(e: &anyhow::Error) -> i32 {
    dbfork_meta::say!("dbfork: error: {e:#}");
    crate::errors::kind_of(e).code(Family::Run)
}

fn failed(e: &RunError) -> i32 {
    dbfork_meta::say!("dbfork: error: {e}");
    if e.kind() == Some(Failure::SetupFailed) {
        dbfork_meta::say!(
            "dbfork: the suite did not run (exit code {})",
            exit::SETUP_OR_DATABASE
        );
    }
    e.exit_code()
}

async fn close(opened: Opened) {
    if let Err(e) = opened.close().await {
        dbfork_meta::say!("dbfork: warning: could not stop the ephemeral server: {e}");
    }
}

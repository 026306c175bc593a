//! `dbfork run`: settings resolved, the database opened, and the runner
//! library does the rest; here only what the user reads at the very end.

use anyhow::Result;
use dbfork_runner::run::{self as runner, exit, RunError};

use crate::cli::{DbArgs, RunArgs};
use crate::settings;
use crate::target::Opened;

/// Returns the run's exit code (pytest's: 0 passed, 1 failed, 2 interrupted,
/// 3 setup or database error, 4 usage error, 5 no tests).
pub async fn run(args: RunArgs, verbose: u8) -> Result<i32> {
    let cwd = std::env::current_dir()?;
    let mut config = match settings::resolve(&args, verbose, &cwd) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dbfork: error: {e:#}");
            return Ok(exit::USAGE);
        }
    };
    django_defaults(&mut config, &cwd);
    let db = DbArgs {
        db: config.db.clone(),
        connect_timeout: config.connect_timeout,
        drop_timeout: config.drop_timeout,
    };
    let opened = match Opened::open(&db).await {
        Ok(opened) => opened,
        Err(e) => {
            eprintln!("dbfork: error: {e:#}");
            return Ok(match crate::errors::exit_code(&e) {
                crate::errors::USAGE => exit::USAGE,
                crate::errors::INTERRUPTED => exit::INTERRUPTED,
                _ => exit::SETUP_OR_DATABASE,
            });
        }
    };
    let Opened { backend, server } = opened;
    let result = runner::run(config, backend).await;
    if let Some(server) = server {
        if let Err(e) = server.stop().await {
            eprintln!("dbfork: warning: could not stop the ephemeral server: {e}");
        }
    }
    match result {
        Ok(report) => {
            if !report.tests.is_empty()
                || !report.collect_errors.is_empty()
                || report.exit_code == exit::NO_TESTS
            {
                dbfork_runner::progress::print_final(&report);
            }
            Ok(report.exit_code)
        }
        Err(e) => {
            eprintln!("dbfork: error: {e}");
            if let RunError::Engine(dbfork_engine::Error::SetupFailed { .. }) = &e {
                eprintln!(
                    "dbfork: the suite did not run (exit code {})",
                    exit::SETUP_OR_DATABASE
                );
            }
            Ok(e.exit_code())
        }
    }
}

/// A Django project (pytest-django or `manage.py test`) without `--setup`
/// gets its migrations as the setup and its migration, fixture and settings
/// files as the inputs.
fn django_defaults(config: &mut dbfork_runner::RunConfig, cwd: &std::path::Path) {
    if config.setup.is_some() || !config.adapter.resolve(&config.command).speaks_protocol() {
        return;
    }
    let Some(found) = crate::django::detect(cwd, &config.command) else {
        return;
    };
    eprintln!(
        "dbfork: Django project ({}): the template is built by `{}`; it is rebuilt when any of {} migration file{}, {} fixture file{} or the settings change",
        found.settings_module,
        found.setup,
        found.migrations,
        if found.migrations == 1 { "" } else { "s" },
        found.fixtures,
        if found.fixtures == 1 { "" } else { "s" },
    );
    config.setup = Some(found.setup);
    if config.inputs.is_empty() {
        config.inputs = found.inputs;
    }
}

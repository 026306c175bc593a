//! Dispatch from the parsed command line to each verb, and the one place
//! where errors become messages and exit codes.

use clap::Parser;

use crate::cli::{Cli, Command, DbCommand, FingerprintArgs, ReportCommand};
use crate::errors;

pub mod clean;
pub mod db;
pub mod report;
pub mod run;
pub mod serve;

/// pytest-xdist's `-n N` given to `dbfork run` itself (before `--`): what
/// to type instead. clap's own tip (`use '-- -n'`) would be wrong.
fn xdist_jobs(args: &[String]) -> Option<String> {
    let run = args.iter().position(|a| a == "run")?;
    let ours = &args[run + 1..];
    let ours = &ours[..ours.iter().position(|a| a == "--").unwrap_or(ours.len())];
    for (i, arg) in ours.iter().enumerate() {
        let value = match arg.as_str() {
            "-n" | "--numprocesses" => ours.get(i + 1).cloned(),
            a if a.starts_with("--numprocesses=") => Some(a["--numprocesses=".len()..].to_string()),
            a if a.starts_with("-n") && a.len() > 2 => Some(a[2..].to_string()),
            _ => continue,
        };
        let jobs = value
            .filter(|v| v == "auto" || v.parse::<usize>().is_ok())
            .unwrap_or_else(|| "N".to_string());
        return Some(format!(
            "`{arg}` is pytest-xdist's option; dbfork's is -j (--jobs): `dbfork run -j {jobs} -- <test command>` runs {jobs} workers, each on its own clone of the template database"
        ));
    }
    None
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and succeed; a mistake is a
        // usage error, with dbfork's code for it rather than clap's 2
        // (which means "interrupted" here).
        Err(err) => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            if let Some(hint) = err.use_stderr().then(|| xdist_jobs(&args)).flatten() {
                dbfork_meta::say!("dbfork: error: {hint}");
                return errors::USAGE;
            }
            let _ = err.print();
            return if err.use_stderr() {
                errors::USAGE
            } else {
                errors::OK
            };
        }
    };
    init_tracing(cli.verbose);
    if let Command::Completions { shell } = cli.command {
        restore_sigpipe();
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "dbfork", &mut std::io::stdout());
        return errors::OK;
    }
    if matches!(cli.command, Command::Db(_)) {
        restore_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            dbfork_meta::say!("dbfork: error: cannot start the async runtime: {e}");
            return dbfork_meta::exit::SETUP_OR_DATABASE;
        }
    };
    let verbose = cli.verbose;
    let result = runtime.block_on(async {
        match cli.command {
            // The runner handles its own signals: it forwards them to the workers.
            Command::Run(args) => run::run(*args, verbose).await,
            Command::Rerun(args) => run::rerun(*args, verbose).await,
            Command::Bisect(args) => run::bisect(*args, verbose).await,
            Command::Db(DbCommand::Fingerprint(args)) => {
                let FingerprintArgs { print_json, run } = *args;
                run::fingerprint(run, verbose, print_json).await
            }
            Command::Report(ReportCommand::Merge(args)) => report::merge(args),
            Command::Report(ReportCommand::Show(args)) => report::show(args),
            Command::Report(ReportCommand::Html(args)) => report::html(args),
            Command::Clean(args) => clean::run(args).await,
            Command::Serve(args) => {
                let cancel = crate::signals::install();
                serve::run(args, cancel).await.map(|()| errors::OK)
            }
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
            Command::Db(command) => {
                let cancel = crate::signals::install();
                db::run(command, cancel).await.map(|()| errors::OK)
            }
        }
    });
    // Connection tasks may linger; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(err) => {
            dbfork_meta::say!("dbfork: error: {err:#}");
            errors::exit_code(&err)
        }
    }
}

/// `dbfork db list | head` should end quietly like any Unix filter, not panic
/// on a closed stdout. (Rust ignores SIGPIPE; the db verbs print only after
/// their work is recorded, so the default action loses nothing.)
fn restore_sigpipe() {
    // Called before any thread is started.
    dbfork_engine::sys::default_sigpipe();
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env(dbfork_meta::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal: never in a CI log or a file.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}

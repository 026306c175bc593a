//! The command line's shape. Every flag also reads a `DBFORK_*` environment variable.

use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use dbfork_meta::settings::{Setting, Shape, Verb, SETTINGS};

#[derive(Debug, Parser)]
#[command(
    name = "dbfork",
    version,
    about = "Run database-backed test suites in parallel on clones of one migrated template, and leave nothing behind."
)]
pub struct Cli {
    /// More output (-v: progress details, -vv: debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test command in parallel, each worker on its own clone of the migrated template.
    Run(Box<RunArgs>),
    /// Run the failed tests of a recorded run again (`--failed`, the latest run's; `--failed
    /// RUN`, that one's), each worker on a fresh clone, with the recorded test command unless
    /// one is given; every option of `dbfork run` applies.
    Rerun(Box<RerunArgs>),
    /// Find the tests that make a test fail when they run before it (state one of them leaves
    /// behind): each probe runs some of them and then the test in a fresh worker on a fresh
    /// clone, the probes of a step at once, one per worker; prints the culprits and a command
    /// that reproduces the failure. The suspects are the tests its worker ran before it in the
    /// newest recorded run where it failed (`--from RUN`: that run), else every other test.
    /// Every option of `dbfork run` applies.
    Bisect(Box<BisectArgs>),
    /// Templates, clones and teardown, one step at a time.
    #[command(subcommand)]
    Db(DbCommand),
    /// The reports of finished runs.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Remove everything dbfork made for this project: the templates and left clones in the
    /// registry of the project's database (not those of a run still going; on a server that
    /// other projects share through the same maintenance database, theirs too: see
    /// --dry-run first), its state directory `.dbfork/` and its template cache.
    Clean(CleanArgs),
    /// Serve clones of templates to tests over HTTP, IntegreSQL's API: each test gets its own
    /// database from a pool made ahead; runs until Ctrl-C, SIGTERM or SIGHUP, then drops every
    /// clone it made.
    Serve(ServeArgs),
    /// Print a completion script for a shell, to be sourced by it: for example
    /// `dbfork completions bash > ~/.local/share/bash-completion/completions/dbfork`,
    /// `dbfork completions zsh > "${fpath[1]}/_dbfork"`, or
    /// `dbfork completions fish > ~/.config/fish/completions/dbfork.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: Given<OfServe>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub settings: Given<OfClean>,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Merge the JSON reports (`dbfork run --json`) of runs that each ran part of one suite
    /// (CI shards) into one: prints its closing line and exits with its exit code (the worst of
    /// the runs': a usage error, a setup or database error, an interruption, failed tests).
    Merge(MergeArgs),
    /// Show a recorded run (`.dbfork/runs/`, the newest 20 kept): for each failed test the
    /// tests its worker ran before it (what an order-dependent failure depends on), and the
    /// summary as it ended. Without RUN, the latest run.
    Show(ShowArgs),
    /// Write a recorded run as one self-contained HTML page (it needs no network to open):
    /// a timeline per worker and of the database, the failures with their output and
    /// class, flaky tests, setup against test time, the slowest tests, and a search that
    /// finds and opens any test. Without RUN, the latest run.
    Html(HtmlArgs),
}

#[derive(Debug, Args)]
pub struct HtmlArgs {
    /// The run's id (as `dbfork run` said it, or a prefix of it); the latest run when left out.
    #[arg(value_name = "RUN")]
    pub run: Option<String>,
    /// Where to write the page. [default: dbfork-run-RUN.html]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run's id (as `dbfork run` said it, or a prefix of it); the latest run when left out.
    #[arg(value_name = "RUN")]
    pub run: Option<String>,
    /// Every worker's tests in the order it ran them (else the tests before each failure).
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The JSON reports to merge, in order.
    #[arg(required = true, value_name = "REPORT.json")]
    pub reports: Vec<std::path::PathBuf>,
    /// Write the merged JSON report here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,
    /// Write the merged JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Build the template of a setup command, or reuse the ready one with the same fingerprint; prints the fingerprint.
    Template(TemplateArgs),
    /// Print the fingerprint the template of `dbfork run` with the same options would have,
    /// without building anything (a CI cache key). Takes every option of `dbfork run`.
    Fingerprint(Box<FingerprintArgs>),
    /// Make N clones of a template at once; prints one URL per clone (passwords left out).
    Clone(CloneArgs),
    /// Drop databases dbfork created (refuses any other), ending their sessions first.
    Drop(DropArgs),
    /// Show the registry: every database dbfork created on the server.
    List(ListArgs),
    /// Drop clones whose owner is gone, abandoned builds, and old templates.
    Gc(GcArgs),
    /// Renew the heartbeat of databases dbfork created, so that no gc (from another host or
    /// container, which cannot see their owner) takes them while they are in use.
    Touch(TouchArgs),
    /// Start a private throwaway server, print its URL, and keep it until Ctrl-C or SIGTERM.
    Ephemeral(EphemeralArgs),
}

/// The verb a [`Given`] takes the settings of.
pub trait VerbOf {
    const VERB: Verb;
}

macro_rules! verbs {
    ($($marker:ident => $verb:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, Default)]
        pub struct $marker;
        impl VerbOf for $marker {
            const VERB: Verb = Verb::$verb;
        }
    )*};
}

verbs!(
    OfRun => Run,
    OfTemplate => Template,
    OfClone => Clone,
    OfDrop => Drop,
    OfList => List,
    OfGc => Gc,
    OfTouch => Touch,
    OfClean => Clean,
    OfServe => Serve,
);

/// The settings of one verb as the command line gave them. Every setting is
/// a flag, a `DBFORK_*` variable and a key of `[tool.dbfork]` in
/// pyproject.toml or of dbfork.toml (a flag beats the variable, which beats
/// the file, which beats the default): the flags come from the table of
/// settings in `dbfork_meta::settings`, those of the verb `V`, and each
/// keeps the text it was given, checked later by `settings::Settings::load`.
#[derive(Debug, Clone)]
pub struct Given<V> {
    /// The settings given by a flag or variable, in the table's order: the
    /// setting and its values (several for a list).
    pub given: Vec<(&'static Setting, Vec<String>)>,
    /// `--config FILE`: read settings from this file.
    pub config: Option<std::path::PathBuf>,
    verb: std::marker::PhantomData<V>,
}

impl<V> Default for Given<V> {
    fn default() -> Self {
        Given {
            given: Vec::new(),
            config: None,
            verb: std::marker::PhantomData,
        }
    }
}

impl<V: VerbOf> Given<V> {
    pub fn verb(&self) -> Verb {
        V::VERB
    }
}

/// `dbfork run`: its settings and the test command.
#[derive(Debug, Clone, Default)]
pub struct RunArgs {
    pub settings: Given<OfRun>,
    /// The test command.
    pub command: Vec<String>,
    /// Only these tests, by id (`dbfork rerun`); never from the command line.
    pub only: Option<Vec<String>>,
    /// `dbfork bisect`'s search; never from `dbfork run`'s command line.
    pub bisect: Option<dbfork_runner::machine::BisectSpec>,
}

/// `dbfork rerun`: the run's settings, the recorded run and the command.
#[derive(Debug, Clone, Default)]
pub struct RerunArgs {
    /// The settings, and the command if one is given (else the recorded one).
    pub run: RunArgs,
    /// `--failed [RUN]`: the run (an id or a prefix); empty: the latest.
    pub failed: String,
}

/// `dbfork bisect`: the run's settings, the test, the recorded run and the command.
#[derive(Debug, Clone, Default)]
pub struct BisectArgs {
    /// The settings, and the command if one is given (else the recorded one).
    pub run: RunArgs,
    /// The test that fails after others.
    pub test: String,
    /// `--from RUN`: the recorded run to take the tests before it from.
    pub from: Option<String>,
}

const FROM: &str = "from";
const TEST: &str = "test";

impl Args for BisectArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Given::<OfRun>::augment_args(cmd)
            .arg(
                Arg::new(FROM)
                    .long(FROM)
                    .value_name("RUN")
                    .help("The recorded run (its id or a prefix, see `dbfork report show`) whose worker's order gives the suspects: the tests that ran before TEST. [default: the newest recorded run where TEST failed, else every other test]"),
            )
            .arg(
                Arg::new(TEST)
                    .value_name("TEST")
                    .required(true)
                    .help("The test that fails after others, by id as the test tool prints it (pytest's `path/test_x.py::test_y`, Django's `app.tests.Class.test_y`)."),
            )
            .arg(
                Arg::new(COMMAND)
                    .value_name("COMMAND")
                    .num_args(0..)
                    .trailing_var_arg(true)
                    .help("The test command, after TEST; the recorded run's when left out."),
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for BisectArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = BisectArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.run.settings.update_from_arg_matches(matches)?;
        self.run.command = strings(matches, COMMAND).unwrap_or_default();
        self.test = matches.get_one::<String>(TEST).cloned().unwrap_or_default();
        self.from = matches.get_one::<String>(FROM).cloned();
        Ok(())
    }
}

const FAILED: &str = "failed";

impl Args for RerunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Given::<OfRun>::augment_args(cmd)
            .arg(
                Arg::new(FAILED)
                    .long(FAILED)
                    .value_name("RUN")
                    .required(true)
                    .num_args(0..=1)
                    .default_missing_value("")
                    .help("Run again the tests that failed (or errored, crashed, timed out) in the recorded run RUN (its id or a prefix, see `dbfork report show`); without RUN, the latest run's."),
            )
            .arg(
                Arg::new(COMMAND)
                    .value_name("COMMAND")
                    .num_args(0..)
                    .trailing_var_arg(true)
                    .help("The test command, after `--`; the recorded run's when left out."),
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for RerunArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = RerunArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.run.settings.update_from_arg_matches(matches)?;
        self.run.command = strings(matches, COMMAND).unwrap_or_default();
        self.failed = matches
            .get_one::<String>(FAILED)
            .cloned()
            .unwrap_or_default();
        Ok(())
    }
}

const COMMAND: &str = "command";
const CONFIG: &str = "config";

fn setting_arg(s: &'static Setting) -> Arg {
    // A variable's value is not shown in --help: it may hold a password.
    let mut arg = Arg::new(s.key)
        .long(s.flag)
        .env(s.env)
        .hide_env_values(true)
        .value_name(s.value_name)
        .help(s.help);
    if let Some(short) = s.short {
        arg = arg.short(short);
    }
    if let Some(alias) = s.alias {
        arg = arg.alias(alias);
    }
    match s.shape() {
        Shape::Value => arg.action(ArgAction::Set),
        Shape::List => arg.action(ArgAction::Append).value_delimiter(','),
        Shape::Switch => arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value("true"),
    }
}

impl<V: VerbOf> Args for Given<V> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(SETTINGS.iter().filter(|s| s.of(V::VERB)).map(setting_arg))
            .arg(
                Arg::new(CONFIG)
                    .long("config")
                    .env(dbfork_meta::env::CONFIG)
                    .hide_env_values(true)
                    .value_name("FILE")
                    .value_parser(clap::value_parser!(std::path::PathBuf))
                    .help("Read settings from this file instead of looking for dbfork.toml / pyproject.toml's [tool.dbfork] from the working directory up."),
            )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn strings(matches: &ArgMatches, id: &str) -> Option<Vec<String>> {
    matches
        .get_many::<String>(id)
        .map(|values| values.cloned().collect())
}

impl<V: VerbOf> FromArgMatches for Given<V> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Given::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.given = SETTINGS
            .iter()
            .filter(|s| s.of(V::VERB))
            .filter_map(|s| strings(matches, s.key).map(|values| (s, values)))
            .collect();
        self.config = matches.get_one(CONFIG).cloned();
        Ok(())
    }
}

impl Args for RunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        Given::<OfRun>::augment_args(cmd).arg(
            Arg::new(COMMAND)
                .value_name("COMMAND")
                .required(true)
                .num_args(1..)
                .trailing_var_arg(true)
                .help("The test command: after `--` (`-- pytest -q tests/`), or from the first word that is not an option of dbfork's (`dbfork run -j 4 pytest -q`). An unknown option before it is a usage error, not the start of the command."),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for RunArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = RunArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.settings.update_from_arg_matches(matches)?;
        self.command = strings(matches, COMMAND).unwrap_or_default();
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// Print a JSON object: the fingerprint and every input it covers.
    #[arg(long = "print-json")]
    pub print_json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct TemplateArgs {
    #[command(flatten)]
    pub settings: Given<OfTemplate>,
    /// Then build it a second time from nothing into a scratch database and compare the two
    /// (every object's definition and every table's row count); exit 1 when they differ.
    #[arg(long)]
    pub verify: bool,
    /// Print a JSON object instead of the fingerprint.
    #[arg(long)]
    pub json: bool,
    /// Do not echo the setup command's output (it is still shown if it fails).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    #[command(flatten)]
    pub settings: Given<OfClone>,
    /// How many clones.
    #[arg(short = 'n', long = "count", default_value_t = 1, value_name = "N")]
    pub count: usize,
    /// Print JSON instead of one URL per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TouchArgs {
    #[command(flatten)]
    pub settings: Given<OfTouch>,
    /// The databases whose heartbeat to renew.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub settings: Given<OfDrop>,
    /// The databases to drop.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub settings: Given<OfList>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub settings: Given<OfGc>,
    /// Only say what would be dropped.
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop ready templates unused for longer than this (the most recently used of each setup is kept).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EphemeralArgs {
    /// postgres or mariadb.
    #[arg(value_name = "KIND")]
    pub kind: String,
}

/// `90`, `90s`, `250ms`, `10m`, `2h`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (examples: 90s, 250ms, 10m, 2h, 7d)"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ))
        }
    };
    // Beyond a year is a typo (and past what a deadline can be added to).
    if !(0.0..=MAX_DURATION_SECS).contains(&seconds) {
        return Err(format!(
            "`{text}` is too long: a duration here is at most 365d"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The longest duration any flag or key takes: a year.
const MAX_DURATION_SECS: f64 = 365.0 * 86_400.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    /// `--help` of every command, as users read it (insta snapshots in
    /// `src/snapshots/`; review a change with `cargo insta review`).
    #[test]
    fn help_of_every_command() {
        use clap::CommandFactory;
        fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
            let help = command.clone().render_long_help().to_string();
            out.push((path.to_string(), help));
            // clap's own `help` subcommands say nothing of dbfork's.
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, &format!("{path} {}", sub.get_name()), out);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut helps = Vec::new();
        walk(&cli, "dbfork", &mut helps);
        assert!(helps.len() > 12, "{}", helps.len());
        for (path, help) in helps {
            insta::assert_snapshot!(path.replace(' ', "_"), help, &path);
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

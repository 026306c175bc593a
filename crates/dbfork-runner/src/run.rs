//! The executor of a run: one task and one `select!` loop that owns the
//! run's I/O (worker processes, socket connections, clone making, timers,
//! the sinks) and a [`Machine`], which holds the run's state and makes every
//! decision: the loop tells it what happened and carries out its commands.
//! Everything else runs in small tasks that only send the loop events.
//!
//! A run: build or reuse the template; make every slot's clone at once and
//! start the slot's worker as soon as its clone exists; hand out tests as
//! workers ask; on a crash or a timeout report the test, drop the slot's clone,
//! make a fresh one and start a replacement; on Ctrl-C or SIGTERM forward the
//! signal to the workers' process groups, wait the grace period, kill what is
//! left; and in every case drop every clone the run made.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbfork_engine::fingerprint::Manifest;
use dbfork_engine::names;
use dbfork_engine::ops::{self, Cancel, Canceller, CloneOptions, DatabaseEnv, MadeClone};
use dbfork_engine::process::Owner;
use dbfork_engine::{AnyBackend, Backend, CloneMethod, DbUrl, Kind};
use dbfork_protocol::{self as protocol, env, DjangoReport, RunnerMessage, WorkerMessage};
use futures_util::stream::{self, StreamExt};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

use crate::controller::{Configured, Controller};
use crate::decide::{self, truncate};
use crate::machine::{indent, CloneFailure, Command, Ending, Exit, Input, Machine, Setup, Sig};
use crate::model::{Outcome, RunReport, TestRecord};
use crate::progress::{label, Progress};
use crate::sinks::{ReportFiles, RunEvent, Sink, TimingsFile};
use crate::timings::Timings;
use crate::worker::{self, Echo, Environment, Tail};
use crate::{adapters, template, Adapter, RunConfig};

/// Exit codes of `dbfork run`, pytest's where they overlap (one table for
/// every command, in `dbfork_meta`).
pub use dbfork_meta::exit;

// How often the run renews its clones' heartbeat (other hosts' gc waits an hour).
use dbfork_engine::ops::HEARTBEAT_EVERY;

/// How many clones are made at the same time.
const CLONE_CONCURRENCY: usize = 4;

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] dbfork_engine::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot prepare the run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The controller (the test command configuring itself) failed.
    #[error("{message}")]
    Controller { code: i32, message: String },
}

impl RunError {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Engine(dbfork_engine::Error::Interrupted) => exit::INTERRUPTED,
            RunError::Engine(
                dbfork_engine::Error::BadUrl { .. }
                | dbfork_engine::Error::BadInput { .. }
                | dbfork_engine::Error::InputMatchesNothing { .. }
                | dbfork_engine::Error::BadMethod { .. }
                | dbfork_engine::Error::MissingBinary { .. },
            )
            | RunError::Usage(_) => exit::USAGE,
            RunError::Controller { code, .. } => *code,
            _ => exit::SETUP_OR_DATABASE,
        }
    }
}

/// What the loop receives: something for the machine, or I/O the executor
/// turns into that first.
enum Event {
    Input(Input),
    Accepted(UnixStream),
    Line {
        conn: usize,
        line: String,
    },
    Exited {
        slot: usize,
        generation: usize,
        status: Option<ExitStatus>,
    },
    /// From the controller that workers are forked from (`None`: it ended).
    Controller(Option<Result<WorkerMessage, String>>),
}

/// A worker process as the executor knows it.
struct Process {
    /// 0 while a fork is asked for and not answered.
    pid: u32,
    tail: Tail,
    exited: bool,
    /// A forked worker's output, read until it exits.
    fifo: Option<worker::Fifo>,
}

/// Workers forked from the controller (pytest on Linux, `--fork`).
struct Forks {
    /// Lines to the controller.
    orders: mpsc::UnboundedSender<String>,
    /// Why the controller cannot fork: workers are started as processes of
    /// their own from then on.
    refused: Option<String>,
    /// Forks asked for and not answered: each worker's id and clones, for
    /// starting it the other way if the controller refuses.
    asked: HashMap<(usize, usize), (String, Vec<String>)>,
    /// `-v` said that the workers are forked.
    noted: bool,
}

/// The executor of a run: owns the processes, sockets, clones, timers and
/// sinks, tells the [`Machine`] what happened and carries out its commands.
struct Executor {
    machine: Machine,
    config: RunConfig,
    backend: Arc<AnyBackend>,
    /// The template once it is ready (pytest's workers start while it is built).
    template: Option<dbfork_engine::registry::Entry>,
    run_id: String,
    method: CloneMethod,
    /// How dbfork talks to the workers (resolved: never `Auto`).
    adapter: Adapter,
    socket: PathBuf,
    pythonpath: Option<String>,
    /// What the workers inherit from the controller's configuration.
    base_env: Environment,
    django: bool,
    controller: Option<Controller>,
    /// `Some` once the template is ready, when the workers are forked.
    forks: Option<Forks>,
    events: mpsc::UnboundedSender<Event>,
    clone_permits: Arc<Semaphore>,
    cancel: Cancel,
    /// Per slot: its worker's database environment (its files live as long).
    envs: HashMap<usize, DatabaseEnv>,
    processes: HashMap<(usize, usize), Process>,
    /// The connections' writers.
    conns: HashMap<usize, mpsc::UnboundedSender<String>>,
    next_conn: usize,
    /// Per test (per slot without the protocol): its record once reported.
    records: Vec<Option<TestRecord>>,
    progress: Progress,
    /// Besides the terminal: the report files (and, at the end, the timings file).
    sinks: Vec<Box<dyn Sink>>,
    /// The controller's end, under way once every worker is done with its tests.
    controller_stop: Option<tokio::task::JoinHandle<()>>,
    started: Instant,
    started_at: f64,
}

/// A run that has started: its private directory, signal handling and, for
/// a test tool dbfork talks to, its controller, configured as the tests are.
/// What the controller found decides the database server (when `--db` is not
/// given) and the template; [`run`] does the rest.
pub struct Prepared {
    config: RunConfig,
    adapter: Adapter,
    run_id: String,
    run_dir: RunDir,
    pythonpath: Option<String>,
    events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    cancel: Cancel,
    controller: Option<Controller>,
    configured: Configured,
    started: Instant,
    started_at: f64,
}

impl Prepared {
    /// The Django project the controller found, if any.
    pub fn django(&self) -> Option<&DjangoReport> {
        self.configured.django.as_ref()
    }

    /// Ends the run before it started (the database could not be opened):
    /// the controller goes, and the run directory with it.
    pub async fn abandon(self) {
        if let Some(controller) = self.controller {
            controller.stop(Duration::from_secs(2)).await;
        }
    }
}

/// Starts a run: checks the command, makes the run directory, and for a test
/// tool dbfork talks to (pytest, Django's runner) starts the controller and
/// waits until it has configured itself. `server` is the database server when
/// it is already known (`--db`); the controller's `DATABASE_URL` names it.
pub async fn prepare(
    config: RunConfig,
    server: Option<&DbUrl>,
    signals: Signals,
) -> Result<Prepared, RunError> {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let adapter = config.adapter.resolve(&config.command);
    let tool = adapters::tool(adapter);
    if let Some(why) = tool.refuse(&config.command) {
        return Err(RunError::Usage(why));
    }
    if config.shard.is_some() && !adapter.speaks_protocol() {
        return Err(RunError::Usage(
            "--shard needs a test tool dbfork hands the tests to (pytest, Django's manage.py test, or a command speaking the protocol: --adapter protocol); without an adapter each worker runs the whole command, so there is nothing to split. Split such a command's tests yourself".to_string(),
        ));
    }
    for option in tool.ignored(&config.command) {
        dbfork_meta::say!(
            "dbfork: note: {option} does nothing under dbfork: every worker runs on its own clone of the template, which is rebuilt only when the setup or its inputs change"
        );
    }
    crate::prepare_state_dir(&config.state_dir);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (canceller, cancel) = Cancel::new();
    tokio::spawn(watch_signals(signals, canceller, events_tx.clone()));

    let run_id = names::new_run_id();
    let run_dir = std::env::temp_dir().join(format!(
        "{RUN_DIR_PREFIX}{}-{run_id}",
        dbfork_engine::process::private_dir_owner()
    ));
    let run_dir = RunDir::create(&run_dir)?;
    let mut prepared = Prepared {
        config,
        adapter,
        run_id,
        pythonpath: None,
        events: (events_tx, events_rx),
        cancel,
        controller: None,
        configured: Configured::default(),
        started,
        started_at,
        run_dir,
    };
    if !adapter.has_controller() {
        return Ok(prepared);
    }
    let dir = tool
        .support_files(&prepared.run_dir.0)
        .map_err(|source| RunError::RunDir {
            path: prepared.run_dir.0.clone(),
            source,
        })?
        .unwrap_or_else(|| prepared.run_dir.0.clone());
    let mut path = dir.display().to_string();
    if let Some(existing) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        path.push(':');
        path.push_str(&existing.to_string_lossy());
    }
    prepared.pythonpath = Some(path.clone());
    let mut vars = vec![
        ("PYTHONPATH".to_string(), path),
        (env::RUN_ID.to_string(), prepared.run_id.clone()),
    ];
    if forks(&prepared.config, adapter) {
        vars.push((env::FORKING.to_string(), "1".to_string()));
    }
    if let Some(server) = server {
        // Settings that read DATABASE_URL see the server the run uses (on
        // SQLite a file of the run's own: the controller builds nothing there).
        let url = match server.kind {
            Kind::Sqlite => format!(
                "sqlite://{}",
                prepared.run_dir.0.join("controller.sqlite3").display()
            ),
            _ => server.to_url_with_password(),
        };
        vars.push(("DATABASE_URL".to_string(), url.clone()));
        vars.push(("DBFORK_DATABASE_URL".to_string(), url));
    }
    let mut command = prepared.config.command.clone();
    command.extend(tool.extra_args());
    let progress = Progress::new(false, 0, 1);
    if prepared.config.verbose > 0 {
        progress.note("configuring the test command once (the controller, as pytest-xdist's)");
    }
    // Configuring is a start like a worker's.
    let configure_limit = prepared
        .config
        .start_limit()
        .min(prepared.config.build_timeout);
    let (controller, configured) = Controller::start(
        &command,
        vars,
        &prepared.run_dir.0,
        configure_limit,
        &prepared.cancel,
        adapter == Adapter::Pytest,
    )
    .await?;
    prepared.controller = Some(controller);
    prepared.configured = configured;
    Ok(prepared)
}

/// Runs the suite prepared in `prepared` on `backend` and returns its report
/// (also written to the report files and the timings store).
/// What the run's template would be, without building anything: its
/// manifest (fingerprint and inputs) on `backend`'s server. The controller,
/// if one was started to learn the recipe, is stopped.
pub async fn fingerprint(prepared: Prepared, backend: &AnyBackend) -> Result<Manifest, RunError> {
    let recipe = template::recipe_of(&prepared.config, &prepared.configured);
    let result = async {
        let version = dbfork_engine::fingerprint::server_series(&backend.server_version().await?);
        Ok::<_, RunError>(recipe.manifest(&version)?)
    }
    .await;
    prepared.abandon().await;
    result
}

/// Whether the run's workers are forked from its controller: pytest's, on
/// Linux, unless `--fork=false`.
fn forks(config: &RunConfig, adapter: Adapter) -> bool {
    config.fork && adapter == Adapter::Pytest && cfg!(target_os = "linux")
}

pub async fn run(prepared: Prepared, backend: AnyBackend) -> Result<RunReport, RunError> {
    let Prepared {
        mut config,
        adapter,
        run_id,
        run_dir: _run_dir_guard,
        pythonpath,
        events: (events_tx, events),
        cancel,
        mut controller,
        configured,
        started,
        started_at,
    } = prepared;
    let backend = Arc::new(backend);
    let method = match CloneMethod::parse(backend.kind(), &config.clone_method) {
        Ok(method) => method,
        Err(e) => {
            if let Some(controller) = controller.take() {
                controller.stop(config.grace).await;
            }
            return Err(e.into());
        }
    };
    if config.fresh_transactional && backend.kind() == dbfork_engine::url::Kind::Mysql {
        dbfork_meta::say!(
            "dbfork: note: --fresh-transactional on MySQL/MariaDB copies every table for each transactional test, which measured about 2x slower than Django's flush on the example project (docs/benchmarks.md); it pays off on PostgreSQL and SQLite"
        );
    }
    let fitted = match fit_jobs(&backend, &mut config, configured.django.as_ref()).await {
        Ok(fitted) => fitted,
        Err(e) => {
            if let Some(controller) = controller.take() {
                controller.stop(config.grace).await;
            }
            return Err(e);
        }
    };
    let progress = Progress::new(config.live, config.verbose, config.jobs);
    if let Some(note) = fitted {
        progress.note(&note);
    }
    note_inherited(&configured, &progress, config.verbose);
    template::add_aliases(&mut config, configured.django.as_ref(), &progress.notes());
    // The template is built, restored or reused by this future; pytest's
    // workers start beside it (interpreter, imports, collection) and each
    // waits for its clone. (Django's runner connects to its databases
    // before its first test, so its workers start on their clones.)
    let build = {
        let (build_config, backend, cancel) = (config.clone(), backend.clone(), cancel.clone());
        let (notes, configured) = (progress.notes(), &configured);
        let mut controller = controller.take();
        async move {
            let result = template::prepare(
                &build_config,
                &backend,
                configured,
                controller.as_mut(),
                &cancel,
                &notes,
            )
            .await;
            (result, controller)
        }
    };
    // Forked workers start from the controller once the template is ready.
    let early = adapters::tool(adapter).starts_early() && !forks(&config, adapter);
    let mut build = std::pin::pin!(build);
    let ready = if early {
        None
    } else {
        match (&mut build).await {
            (Ok(template), controller) => Some((template, controller)),
            (Err(e), controller) => {
                if let Some(controller) = controller {
                    controller.stop(config.grace).await;
                }
                return Err(e);
            }
        }
    };
    let socket = _run_dir_guard.0.join("socket");
    let timings = Timings::load(&config.state_dir);
    if adapter.speaks_protocol() {
        listen(&socket, events_tx.clone())?;
    }

    let mut d = Executor::new(
        config,
        backend,
        &configured,
        Parts {
            run_id,
            method,
            adapter,
            socket,
            pythonpath,
            events: events_tx,
            cancel,
            timings,
            progress,
            started,
            started_at,
        },
    );
    match ready {
        Some((template, controller)) => {
            if let Err(e) = d.template_ready(template, controller).await {
                d.abandon(None).await;
                return Err(e);
            }
        }
        None => d.input(Input::Prestart),
    }
    let heartbeat = spawn_heartbeat(d.backend.clone(), d.run_id.clone());
    let result = d.drive(early.then_some(build), events).await;
    heartbeat.abort();
    result
}

/// With `-v`: what the workers inherit from the controller's configuration.
fn note_inherited(configured: &Configured, progress: &Progress, verbose: u8) {
    if verbose == 0 || (configured.env_set.is_empty() && configured.env_unset.is_empty()) {
        return;
    }
    let names: Vec<&str> = configured
        .env_set
        .keys()
        .map(String::as_str)
        .chain(configured.env_unset.iter().map(String::as_str))
        .collect();
    progress.note(&format!(
        "the workers inherit the environment the test command's configuration set up ({}), as pytest-xdist's workers do",
        names.join(", ")
    ));
}

/// Accepts the workers' connections on `socket`, each an event of the loop.
fn listen(socket: &std::path::Path, events: mpsc::UnboundedSender<Event>) -> Result<(), RunError> {
    let listener = UnixListener::bind(socket).map_err(|source| RunError::RunDir {
        path: socket.to_path_buf(),
        source,
    })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if events.send(Event::Accepted(stream)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Renews the heartbeat of the run's clones until aborted (another host's
/// collection takes clones whose heartbeat is old).
fn spawn_heartbeat(backend: Arc<AnyBackend>, run_id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            if let Err(e) = ops::heartbeat_run(&backend, &run_id).await {
                tracing::warn!("could not renew the clones' heartbeat: {e}");
            }
        }
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal), listened to from the
/// start of `dbfork run` (before the database is opened and the run
/// prepared): one that comes that early is kept until the run's watcher
/// takes it, instead of killing dbfork.
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    /// Signals that came before even this listened (the program's own early handler).
    early: usize,
}

impl Signals {
    /// Starts listening (within the async runtime).
    pub fn listen() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
            early: 0,
        }
    }

    /// Counts `early` signals as received.
    pub fn with_early(mut self, early: usize) -> Signals {
        self.early = early;
        self
    }
}

/// The first Ctrl-C or SIGTERM cancels clone making and template builds and
/// tells the run; the third exits at once (what is left is collected by
/// the next dbfork command, and the workers die with dbfork).
async fn watch_signals(
    signals: Signals,
    canceller: Canceller,
    events: mpsc::UnboundedSender<Event>,
) {
    let (Some(mut int), Some(mut term), Some(mut hup)) = (signals.int, signals.term, signals.hup)
    else {
        return;
    };
    let mut seen = 0;
    let mut early = signals.early;
    loop {
        if early > 0 {
            early -= 1;
        } else {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        }
        seen += 1;
        canceller.cancel();
        if seen >= 3 {
            dbfork_meta::say!(
                "dbfork: exiting at once; the next dbfork command removes what is left"
            );
            std::process::exit(exit::INTERRUPTED);
        }
        if events.send(Event::Input(Input::Signal)).is_err() {
            return;
        }
    }
}

/// How a run's teardown found the server.
enum Teardown {
    Clean,
    /// It does not answer any more: why.
    ServerGone(String),
    /// These clones of the workers were gone before the teardown dropped them.
    Vanished(Vec<String>),
}

/// The connections a run holds besides one per worker and database alias:
/// the clone makers' and dbfork's own.
const CONNECTIONS_OF_DBFORK: u64 = CLONE_CONCURRENCY as u64 + 2;

/// Fits the number of workers to the server's free connections (each
/// worker holds one per database alias): `-j auto` takes fewer (and says
/// so), a `-j` given that does not fit is an error naming both numbers. A
/// server whose limit cannot be read is not held to it.
async fn fit_jobs(
    backend: &AnyBackend,
    config: &mut RunConfig,
    django: Option<&DjangoReport>,
) -> Result<Option<String>, RunError> {
    let Ok(Some(room)) = backend.connection_room().await else {
        return Ok(None);
    };
    let aliases = config.aliases.len()
        + django.map_or(0, |r| {
            crate::django::other_aliases(r, &config.aliases).len()
        });
    let per_worker = 1 + aliases as u64;
    let free = room.free();
    let fits = free.saturating_sub(CONNECTIONS_OF_DBFORK) / per_worker;
    let jobs = config.jobs as u64;
    if jobs <= fits {
        return Ok(None);
    }
    let why = format!(
        "the server takes {free} more connections (max_connections {}, {} in use{}), and a run of N workers holds about {per_worker} per worker{} plus {CONNECTIONS_OF_DBFORK} of dbfork's own",
        room.max,
        room.used,
        if room.reserved > 0 {
            format!(", {} reserved for superusers", room.reserved)
        } else {
            String::new()
        },
        if aliases > 0 { " (one per database alias)" } else { "" },
    );
    if config.jobs_auto && fits >= 1 {
        config.jobs = fits as usize;
        return Ok(Some(format!("-j auto: {fits} workers, not {jobs}: {why}")));
    }
    let fix = if fits >= 1 {
        format!("give -j {fits} or fewer, or raise max_connections on the server")
    } else {
        "end some of the server's other sessions, or raise its max_connections".to_string()
    };
    Err(RunError::Usage(format!(
        "{jobs} workers do not fit on the database server: {why}. To run: {fix}."
    )))
}

/// The prefix of a run's private directory in the temporary directory:
/// `dbfork-run-<pid>-<pid namespace>-<run id>`.
const RUN_DIR_PREFIX: &str = "dbfork-run-";

/// Removes the private directories of runs whose dbfork is gone (killed with
/// SIGKILL: its `RunDir` was never dropped); returns them.
pub fn collect_stale_run_dirs() -> Vec<PathBuf> {
    dbfork_engine::process::collect_stale_dirs(RUN_DIR_PREFIX)
}

/// The run's private directory (socket, plugin), removed at the end.
struct RunDir(PathBuf);

impl RunDir {
    fn create(path: &std::path::Path) -> Result<RunDir, RunError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(path)
            .map_err(|source| RunError::RunDir {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RunDir(path.to_path_buf()))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What an [`Executor`] starts from besides its configuration and backend.
struct Parts {
    run_id: String,
    method: CloneMethod,
    adapter: Adapter,
    socket: PathBuf,
    pythonpath: Option<String>,
    events: mpsc::UnboundedSender<Event>,
    cancel: Cancel,
    timings: Timings,
    progress: Progress,
    started: Instant,
    started_at: f64,
}

impl Executor {
    fn new(
        config: RunConfig,
        backend: Arc<AnyBackend>,
        configured: &Configured,
        parts: Parts,
    ) -> Executor {
        let slots = config.jobs.max(1);
        let protocol = parts.adapter.speaks_protocol();
        let setup = Setup {
            run_id: parts.run_id.clone(),
            slots,
            protocol,
            aliases: config.aliases.len(),
            fresh_transactional: config.fresh_transactional,
            dist: config.dist,
            shard: config.shard,
            max_worker_restarts: config.max_worker_restarts,
            timeout: config.timeout,
            start_limit: config.start_limit(),
            grace: config.grace,
            maxfail: if protocol {
                adapters::tool(parts.adapter).maxfail(&config.command)
            } else {
                0
            },
            django_facts: configured.django.as_ref().map(|d| d.facts.clone()),
        };
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ReportFiles {
            junit: config.junit.clone(),
            json: config.json.clone(),
        })];
        Executor {
            machine: Machine::new(setup, parts.timings, parts.started),
            // Without an adapter each slot's command is one unit of the report.
            records: if protocol {
                Vec::new()
            } else {
                vec![None; slots]
            },
            base_env: Environment {
                set: configured.env_set.clone().into_iter().collect(),
                unset: configured.env_unset.clone(),
            },
            django: configured.django.is_some(),
            config,
            backend,
            template: None,
            run_id: parts.run_id,
            method: parts.method,
            adapter: parts.adapter,
            socket: parts.socket,
            pythonpath: parts.pythonpath,
            controller: None,
            forks: None,
            events: parts.events,
            clone_permits: Arc::new(Semaphore::new(CLONE_CONCURRENCY)),
            cancel: parts.cancel,
            envs: HashMap::new(),
            processes: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 0,
            sinks,
            progress: parts.progress,
            controller_stop: None,
            started: parts.started,
            started_at: parts.started_at,
        }
    }

    /// Whether the workers speak the protocol (through an adapter).
    fn protocol(&self) -> bool {
        self.adapter.speaks_protocol()
    }

    /// Tells the machine `input` and carries out what it says.
    fn input(&mut self, input: Input) {
        // A connection that closed or sent junk is done with: its writer
        // goes (closing dbfork's side of the socket).
        let ended = match &input {
            Input::Closed { conn } | Input::Unreadable { conn, .. } => Some(*conn),
            _ => None,
        };
        let commands = self.machine.handle(input, Instant::now());
        for command in commands {
            self.carry_out(command);
        }
        if let Some(conn) = ended {
            self.conns.remove(&conn);
        }
    }

    fn carry_out(&mut self, command: Command) {
        match command {
            Command::StartWorker {
                slot,
                generation,
                id,
                clones,
            } => self.start_worker(slot, generation, &id, &clones),
            Command::MakeClones {
                slot,
                generation,
                names,
            } => self.spawn_clones(names, move |result| Input::CloneMade {
                slot,
                generation,
                result: result.map(|made| made.into_iter().map(|m| m.name).collect()),
            }),
            Command::MakeFresh { name } => {
                let made = name.clone();
                self.spawn_clones(vec![name], move |result| Input::FreshMade {
                    name: made,
                    result: result.map(|_| ()),
                })
            }
            Command::DropClone { name } => self.drop_in_background(name),
            Command::Send { conn, message } => self.send(conn, &message),
            Command::GrantFresh { conn, name } => {
                let database = ops::database_reference(&self.backend, &name);
                self.send(conn, &RunnerMessage::Fresh { database });
            }
            Command::Signal {
                slot,
                generation,
                signal,
            } => {
                if let Some(p) = self.processes.get(&(slot, generation)) {
                    if !p.exited {
                        worker::signal_group(p.pid, signal_number(signal));
                    }
                }
            }
            Command::After { delay, input } => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::Input(input));
                });
            }
            Command::StopController => self.stop_controller(),
            Command::Note(message) => self.emit(RunEvent::Note(&message)),
            Command::Error { message, output_of } => {
                let output = self.output_of(output_of);
                self.emit(RunEvent::Note(&format!("error: {message}{output}")));
            }
            Command::Collected { all, mine } => {
                self.records = vec![None; all];
                self.emit(RunEvent::Collected(mine));
            }
            Command::Status { slot, status } => self.emit(RunEvent::Worker {
                slot,
                status: &status,
            }),
            Command::Report {
                mut record,
                output_of,
            } => {
                if output_of.is_some() {
                    // Let the output pumps catch the last lines.
                    std::thread::sleep(Duration::from_millis(20));
                    let output = self.output_of(output_of);
                    record.longrepr.get_or_insert_default().push_str(&output);
                }
                self.emit(RunEvent::TestFinished(&record));
                if let Some(place) = self.records.get_mut(record.index) {
                    *place = Some(record);
                }
            }
        }
    }

    /// The last output of a worker, indented.
    fn output_of(&self, worker: Option<(usize, usize)>) -> String {
        worker
            .and_then(|key| self.processes.get(&key))
            .map(|p| indent(&p.tail.text()))
            .unwrap_or_default()
    }

    /// The template is ready: the machine has the clones made.
    async fn template_ready(
        &mut self,
        template: ops::Template,
        controller: Option<Controller>,
    ) -> Result<(), RunError> {
        // Kept first: on an error here `abandon` stops it.
        self.controller = controller;
        if forks(&self.config, self.adapter) {
            if let Some(controller) = self.controller.as_mut() {
                let line = controller.fork_line();
                let mut messages = line.messages;
                let events = self.events.clone();
                tokio::spawn(async move {
                    while let Some(message) = messages.recv().await {
                        let _ = events.send(Event::Controller(Some(message)));
                    }
                    let _ = events.send(Event::Controller(None));
                });
                self.forks = Some(Forks {
                    orders: line.orders,
                    refused: None,
                    asked: HashMap::new(),
                    noted: false,
                });
            }
        }
        let entry = ops::find_template(&self.backend, &template.fingerprint).await?;
        let name = entry.name.clone();
        self.template = Some(entry);
        self.input(Input::TemplateReady {
            name,
            controller: self.controller.is_some(),
        });
        Ok(())
    }

    /// The template could not be made: the workers started beside its build
    /// are ended (they ran nothing), the controller too.
    async fn abandon(mut self, controller: Option<Controller>) {
        self.kill_all();
        self.emit(RunEvent::Ending);
        if let Some(controller) = controller.or_else(|| self.controller.take()) {
            controller.stop(self.config.grace).await;
        }
        self.envs.clear();
    }

    /// The loop: the template's build (if it is still under way), the
    /// events of the run's tasks and the machine's deadlines, until the
    /// machine says the run is over.
    async fn drive(
        mut self,
        build: Option<
            impl std::future::Future<Output = (Result<ops::Template, RunError>, Option<Controller>)>,
        >,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> Result<RunReport, RunError> {
        let mut building = build.is_some();
        let mut build = std::pin::pin!(async move {
            match build {
                Some(build) => build.await,
                None => std::future::pending().await,
            }
        });
        while !self.machine.finished() {
            let deadline = self.machine.next_deadline();
            tokio::select! {
                (result, controller) = &mut build, if building => {
                    building = false;
                    let ready = match result {
                        Ok(template) => self.template_ready(template, controller).await,
                        Err(e) => {
                            self.abandon(controller).await;
                            return Err(e);
                        }
                    };
                    if let Err(e) = ready {
                        self.abandon(None).await;
                        return Err(e);
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => break,
                },
                _ = sleep_until(deadline) => self.input(Input::Deadline),
            }
        }
        Ok(self.finish().await)
    }

    fn kill_all(&self) {
        for p in self.processes.values().filter(|p| !p.exited) {
            worker::signal_group(p.pid, libc::SIGKILL);
        }
    }

    /// Makes clones of the template named `wanted` in the background; `done`
    /// turns the outcome into what the machine is told.
    fn spawn_clones(
        &mut self,
        wanted: Vec<String>,
        done: impl FnOnce(Result<Vec<MadeClone>, CloneFailure>) -> Input + Send + 'static,
    ) {
        let Some(template) = self.template.clone() else {
            let failure = CloneFailure::Error("the template is not ready".into());
            return self.input(done(Err(failure)));
        };
        let (backend, run_id) = (self.backend.clone(), self.run_id.clone());
        let (events, permits, cancel) = (
            self.events.clone(),
            self.clone_permits.clone(),
            self.cancel.clone(),
        );
        let options = CloneOptions {
            method: self.method,
            concurrency: 1,
            drop_deadline: self.config.drop_timeout,
        };
        tokio::spawn(async move {
            let _permit = permits.acquire().await;
            let owner = Owner::this_process();
            let result = ops::make_named_clones(
                &backend, &template, &run_id, wanted, &owner, &options, &cancel,
            )
            .await
            .map_err(|e| match e {
                dbfork_engine::Error::Interrupted => CloneFailure::Interrupted,
                e => CloneFailure::Error(e.to_string()),
            });
            let _ = events.send(Event::Input(done(result)));
        });
    }

    /// Drops clone `name` in the background (what is left is dropped at the end).
    fn drop_in_background(&mut self, name: String) {
        let (backend, events, deadline) = (
            self.backend.clone(),
            self.events.clone(),
            self.config.drop_timeout,
        );
        tokio::spawn(async move {
            if let Err(e) = ops::drop_entry(&backend, &name, deadline).await {
                tracing::warn!(
                    "could not drop {name} yet ({e}); it is dropped at the end of the run"
                );
            }
            let _ = events.send(Event::Input(Input::CloneDropped));
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Controller(message) => self.controller_said(message),
            Event::Input(input) => self.input(input),
            Event::Accepted(stream) => self.accept(stream),
            Event::Line { conn, line } => match protocol::decode::<WorkerMessage>(&line) {
                Ok(message) => self.input(Input::Message { conn, message }),
                Err(e) => self.input(Input::Unreadable {
                    conn,
                    why: format!("{e}: `{}`", truncate(&line, 200)),
                }),
            },
            Event::Exited {
                slot,
                generation,
                status,
            } => {
                let tail = match self.processes.get_mut(&(slot, generation)) {
                    Some(p) => {
                        p.exited = true;
                        p.tail.text()
                    }
                    None => String::new(),
                };
                let exit = Exit {
                    code: status.and_then(|s| s.code()),
                    success: status.is_some_and(|s| s.success()),
                    how: status
                        .as_ref()
                        .map(worker::describe_exit)
                        .unwrap_or_else(|| "an unknown status".into()),
                    tail,
                };
                self.input(Input::Exited {
                    slot,
                    generation,
                    exit,
                });
            }
        }
    }

    /// A worker's environment: what the controller's configuration set, its
    /// clones, who it is (slot, id, run, as pytest-xdist names them too),
    /// and with an adapter the socket and the Python packages.
    fn worker_vars(&self, slot: usize, id: &str, db_env: &DatabaseEnv) -> Vec<(String, String)> {
        let mut vars = self.base_env.set.clone();
        vars.extend(db_env.vars.iter().cloned());
        let slots = self.config.jobs.max(1).to_string();
        if self.django {
            vars.push((env::DJANGO.to_string(), "1".to_string()));
        }
        let fresh = if self.config.fresh_transactional {
            "1"
        } else {
            "0"
        };
        vars.extend([
            (env::WORKER.to_string(), slot.to_string()),
            (env::WORKERS.to_string(), slots.clone()),
            (env::WORKER_ID.to_string(), id.to_string()),
            (env::RUN_ID.to_string(), self.run_id.clone()),
            (env::FRESH.to_string(), fresh.to_string()),
            (env::XDIST_WORKER.to_string(), label(slot)),
            (env::XDIST_WORKER_COUNT.to_string(), slots),
        ]);
        if self.protocol() {
            vars.push((env::SOCKET.to_string(), self.socket.display().to_string()));
            if let Some(path) = &self.pythonpath {
                vars.push(("PYTHONPATH".to_string(), path.clone()));
            }
        }
        vars
    }

    /// Starts worker `id` of `slot` on the clones named `clones`; the
    /// machine is told if it cannot be started.
    fn start_worker(&mut self, slot: usize, generation: usize, id: &str, clones: &[String]) {
        let made: Vec<MadeClone> = clones
            .iter()
            .map(|name| MadeClone {
                url: self.backend.url().with_database(name),
                name: name.clone(),
            })
            .collect();
        let failed = |code, message| Input::SpawnFailed {
            slot,
            generation,
            code,
            message,
        };
        let db_env = match DatabaseEnv::for_aliases(&self.backend, &made, &self.config.aliases) {
            Ok(env) => env,
            Err(e) => {
                let why = format!("cannot prepare the environment of {}: {e}", label(slot));
                return self.input(failed(exit::SETUP_OR_DATABASE, why));
            }
        };
        let vars = self.worker_vars(slot, id, &db_env);
        let mut command = self.config.command.clone();
        if self.protocol() {
            command.extend(adapters::tool(self.adapter).extra_args());
        }
        let echo = if !self.protocol() {
            Echo::Prefixed(format!("[{}] ", label(slot)))
        } else if self.config.verbose >= 2 {
            Echo::Prefixed(format!("[{} output] ", label(slot)))
        } else {
            Echo::Quiet
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let environment = Environment {
            set: vars,
            unset: self.base_env.unset.clone(),
        };
        self.envs.insert(slot, db_env);
        if let Some(forks) = self.forks.as_mut().filter(|f| f.refused.is_none()) {
            let output = self
                .socket
                .with_file_name(format!("output-{slot}.{generation}"));
            let tail = Tail::default();
            let fifo = match worker::Fifo::open(&output, tail.clone(), echo) {
                Ok(fifo) => fifo,
                Err(e) => {
                    let why = format!(
                        "cannot make the output FIFO {} of {}: {e}",
                        output.display(),
                        label(slot)
                    );
                    return self.input(failed(exit::SETUP_OR_DATABASE, why));
                }
            };
            let order = RunnerMessage::Fork {
                slot,
                generation,
                env: environment.set.into_iter().collect(),
                unset: environment.unset,
                output: output.display().to_string(),
            };
            let _ = forks.orders.send(protocol::encode(&order));
            forks
                .asked
                .insert((slot, generation), (id.to_string(), clones.to_vec()));
            self.processes.insert(
                (slot, generation),
                Process {
                    pid: 0,
                    tail,
                    exited: false,
                    fifo: Some(fifo),
                },
            );
            return;
        }
        let spawned = match worker::spawn(&command, &environment, &cwd, echo, Tail::default()) {
            Ok(s) => s,
            Err(e) => {
                let program = command.first().cloned().unwrap_or_default();
                let why = format!("cannot start the test command `{program}`: {e}. Check that it is installed and on PATH (or give its path), e.g. `dbfork run -- .venv/bin/python -m pytest`.");
                return self.input(failed(exit::USAGE, why));
            }
        };
        let events = self.events.clone();
        let mut child = spawned.child;
        let pid = spawned.pid;
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            worker::reap(pid);
            let _ = events.send(Event::Exited {
                slot,
                generation,
                status,
            });
        });
        self.processes.insert(
            (slot, generation),
            Process {
                pid,
                tail: spawned.tail,
                exited: false,
                fifo: None,
            },
        );
    }

    /// What the controller that the workers are forked from says.
    fn controller_said(&mut self, message: Option<Result<WorkerMessage, String>>) {
        let Some(forks) = self.forks.as_mut() else {
            return;
        };
        match message {
            Some(Ok(WorkerMessage::Forked {
                slot,
                generation,
                pid,
                error,
            })) => {
                let asked = forks.asked.remove(&(slot, generation));
                match (pid, error) {
                    (Some(pid), None) => {
                        if self.config.verbose > 0 && !forks.noted {
                            forks.noted = true;
                            self.progress.note("the workers are forked from the controller: each has its configured, collected session (--fork=false starts each afresh)");
                        }
                        dbfork_engine::reaper::register(pid);
                        if let Some(p) = self.processes.get_mut(&(slot, generation)) {
                            p.pid = pid;
                        }
                    }
                    (_, error) => {
                        let why = error.unwrap_or_else(|| "it did not say why".to_string());
                        if self.config.verbose > 0 {
                            self.progress.note(&format!(
                                "the workers are started as processes of their own, not forked from the controller: {why}"
                            ));
                        }
                        forks.refused = Some(why);
                        // Its output FIFO goes; the worker starts afresh.
                        if let Some(p) = self.processes.remove(&(slot, generation)) {
                            if let Some(fifo) = p.fifo {
                                tokio::spawn(fifo.drain());
                            }
                        }
                        if let Some((id, clones)) = asked {
                            // Its environment is made again (its files go first).
                            self.envs.remove(&slot);
                            self.start_worker(slot, generation, &id, &clones);
                        }
                    }
                }
            }
            Some(Ok(WorkerMessage::Exited {
                slot,
                generation,
                status,
            })) => {
                use std::os::unix::process::ExitStatusExt;
                self.forked_exited(slot, generation, status.map(ExitStatus::from_raw));
            }
            Some(Ok(WorkerMessage::Bye | WorkerMessage::Hello { .. })) => {}
            Some(Ok(other)) => {
                tracing::warn!("the controller sent {other:?} while forking workers; ignored");
            }
            Some(Err(why)) => {
                tracing::warn!("the controller sent something dbfork cannot read: {why}");
            }
            None => {
                // The controller is gone, and with it (killed by the kernel)
                // every worker forked from it.
                let forked: Vec<(usize, usize)> = self
                    .processes
                    .iter()
                    .filter(|(_, p)| p.fifo.is_some() && !p.exited)
                    .map(|(key, _)| *key)
                    .collect();
                for (slot, generation) in forked {
                    self.forked_exited(slot, generation, None);
                }
            }
        }
    }

    /// A forked worker ended: once its last output is read, the machine is
    /// told as of a worker dbfork started.
    fn forked_exited(&mut self, slot: usize, generation: usize, status: Option<ExitStatus>) {
        let Some(p) = self.processes.get_mut(&(slot, generation)) else {
            return;
        };
        let (pid, fifo) = (p.pid, p.fifo.take());
        let events = self.events.clone();
        tokio::spawn(async move {
            if let Some(fifo) = fifo {
                fifo.drain().await;
            }
            worker::reap(pid);
            let _ = events.send(Event::Exited {
                slot,
                generation,
                status,
            });
        });
    }

    fn accept(&mut self, stream: UnixStream) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (read, write) = stream.into_split();
        let tx = worker::line_writer(write);
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            loop {
                let event = match worker::read_line(&mut reader).await {
                    Ok(Some(line)) => Event::Line { conn, line },
                    Ok(None) => break,
                    Err(why) => {
                        // Nothing more is read from it: the worker is rejected.
                        let _ = events.send(Event::Input(Input::Unreadable { conn, why }));
                        return;
                    }
                };
                if events.send(event).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Input(Input::Closed { conn }));
        });
        self.conns.insert(conn, tx);
        self.input(Input::Connected { conn });
    }

    fn send(&self, conn: usize, message: &RunnerMessage) {
        if let Some(tx) = self.conns.get(&conn) {
            let _ = tx.send(protocol::encode(message));
        }
    }

    /// Ends the controller in the background (its configuration's cleanup
    /// overlaps the workers' exits and the clones' drop).
    fn stop_controller(&mut self) {
        if self.controller_stop.is_some() {
            return;
        }
        let grace = self.config.grace;
        let controller = self.controller.take();
        self.controller_stop = Some(tokio::spawn(async move {
            if let Some(controller) = controller {
                controller.stop(grace).await;
            }
        }));
    }

    async fn finish(mut self) -> RunReport {
        self.kill_all();
        self.emit(RunEvent::Ending);
        self.stop_controller();
        let teardown = self.drop_clones().await;
        let tests = self.final_records();
        let (ending, timings) = self.machine.end();
        let failed = tests.iter().any(|t: &TestRecord| t.outcome.is_failure());
        let not_run = tests.iter().any(|t| t.outcome == Outcome::NotRun);
        // A shard of a suite that has tests may be left none by the split:
        // nothing to do is fine there.
        let suite_has_tests = ending.shard.as_ref().is_some_and(|s| s.collected > 0);
        let mut exit_code = decide::run_exit_code(
            ending.fatal,
            ending.interrupted,
            failed || not_run || !ending.collect_errors.is_empty(),
            tests.is_empty() && !suite_has_tests,
        );
        // The tests' outcomes are then not (only) their own.
        let database_error = match teardown {
            Teardown::Clean => None,
            Teardown::ServerGone(cause) => Some(format!(
                "the database server went away during the run ({cause}); failures after that are its doing, not the tests'. Clones that could not be dropped are removed by the next dbfork command once the server is back."
            )),
            Teardown::Vanished(names) => Some(format!(
                "{} vanished during the run: something other than this run dropped {} (a `dbfork db gc` or `dbfork clean` from another host or container, or a person). Tests that ran on {} after that failed for that reason, not their own.",
                names.join(", "),
                if names.len() == 1 { "it" } else { "them" },
                if names.len() == 1 { "it" } else { "them" },
            )),
        };
        if let Some(why) = database_error {
            dbfork_meta::say!("dbfork: error: {why}");
            if exit_code == exit::TESTS_FAILED || exit_code == exit::OK {
                exit_code = exit::SETUP_OR_DATABASE;
            }
        }
        if let Some(why) = self.why_not_run(&ending, &tests) {
            dbfork_meta::say!("dbfork: {why}");
        }
        let report = RunReport {
            command: self.config.command.clone(),
            run_id: self.run_id.clone(),
            duration: self.started.elapsed().as_secs_f64(),
            started_at: self.started_at,
            exit_code,
            interrupted: ending.interrupted,
            slots: ending.slots,
            tests,
            collect_errors: ending.collect_errors,
            collect_skipped: ending.collect_skipped,
            shard: ending.shard,
        };
        // The files, the timings and the summary, while the controller may
        // still be ending. The timings the schedule was made from, with this
        // run's added.
        let timed = self.protocol() && ending.fatal.is_none();
        self.sinks.push(Box::new(TimingsFile {
            timings,
            state_dir: self.config.state_dir.clone(),
        }));
        self.emit(RunEvent::Finished {
            report: &report,
            timed,
        });
        if let Some(stop) = self.controller_stop.take() {
            let _ = stop.await;
        }
        report
    }

    /// Why tests were not run when workers were lost for good (the restarts
    /// used up): otherwise the summary's "not run" would be all the user sees.
    fn why_not_run(&self, ending: &Ending, tests: &[TestRecord]) -> Option<String> {
        if !ending.out_of_restarts || ending.interrupted || ending.fatal.is_some() {
            return None;
        }
        let max = self.config.max_worker_restarts;
        let restarts = format!(
            "the {max} worker restart{} (--max-worker-restarts) {} used up",
            if max == 1 { "" } else { "s" },
            if max == 1 { "is" } else { "are" }
        );
        let lost = if ending.lost_all {
            "every worker was lost"
        } else {
            "a worker was lost with tests it held, no other was left to run them"
        };
        let n = tests
            .iter()
            .filter(|t| t.outcome == Outcome::NotRun)
            .count();
        if n == 0 {
            return ending.lost_all.then(|| format!("{lost} and {restarts}"));
        }
        Some(format!(
            "{n} test{} did not run (reported as not run): {lost}, and {restarts}. Fix what crashed (the crashed test's report shows the worker's last output), or allow more restarts",
            if n == 1 { "" } else { "s" }
        ))
    }

    /// Teardown: every clone of this run, then anything else this process
    /// registered. Says whether the server went away during the run, or a
    /// worker's clone was dropped under it by someone else.
    async fn drop_clones(&mut self) -> Teardown {
        let names = self.machine.databases();
        let backend = self.backend.clone();
        let ours = format!("{}{}_", names::PREFIX, self.run_id);
        let vanished: Vec<String> = match backend.databases(&ours).await {
            Ok(existing) => names
                .iter()
                .filter(|n| !existing.contains(n))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        let deadline = self.config.drop_timeout;
        let failures: Vec<String> = stream::iter(names)
            .map(|name| {
                let backend = backend.clone();
                async move {
                    ops::drop_entry(&backend, &name, deadline)
                        .await
                        .err()
                        .map(|e| format!("{name}: {e}"))
                }
            })
            .buffer_unordered(8)
            .filter_map(|r| async move { r })
            .collect()
            .await;
        if let Err(e) = ops::drop_run_clones(&backend, &self.run_id, deadline).await {
            tracing::warn!("could not drop what is left of this run: {e}");
        }
        for failure in &failures {
            dbfork_meta::say!(
                "dbfork: warning: could not drop {failure}; `dbfork db gc` removes it later"
            );
        }
        self.envs.clear();
        if !failures.is_empty() {
            if let Err(e) = backend.server_version().await {
                return Teardown::ServerGone(e.to_string());
            }
        }
        if vanished.is_empty() {
            Teardown::Clean
        } else {
            Teardown::Vanished(vanished)
        }
    }

    /// One record per collected test: its outcome, or "not run".
    fn final_records(&self) -> Vec<TestRecord> {
        match self.machine.tests() {
            Some(items) if self.protocol() => items
                .iter()
                .enumerate()
                .filter(|(index, _)| self.machine.selected(*index))
                .map(|(index, item)| {
                    self.records
                        .get(index)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| TestRecord {
                            index,
                            id: item.id.clone(),
                            file: item.file.clone(),
                            class: item.class.clone(),
                            outcome: Outcome::NotRun,
                            duration: 0.0,
                            slot: None,
                            worker_id: None,
                            phases: Vec::new(),
                            longrepr: None,
                            stdout: String::new(),
                            stderr: String::new(),
                        })
                })
                .collect(),
            _ => self.records.iter().flatten().cloned().collect(),
        }
    }

    /// Tells every sink (the terminal, the report files, the timings).
    fn emit(&mut self, event: RunEvent) {
        self.progress.event(&event);
        for sink in &mut self.sinks {
            sink.event(&event);
        }
    }
}

fn signal_number(signal: Sig) -> i32 {
    match signal {
        Sig::Interrupt => libc::SIGINT,
        Sig::Kill => libc::SIGKILL,
    }
}

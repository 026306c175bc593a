//! The dispatcher: one task and one `select!` loop that owns the whole run's
//! state (slots, workers, the scheduler, results). Everything else (clone
//! making, worker processes, socket connections, signals) runs in small tasks
//! that only send it events.
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
use dbfork_engine::pool::Pool;
use dbfork_engine::process::Owner;
use dbfork_engine::{AnyBackend, Backend, CloneMethod, DbUrl, Kind};
use dbfork_protocol::{
    self as protocol, env, DjangoReport, RunnerMessage, TestItem, TestResult, WorkerMessage,
};
use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};

use crate::controller::{Configured, Controller};
use crate::decide::{self, truncate, AfterLoss, LossCause, LossFacts, RunState};
use crate::model::{Outcome, RunReport, SlotReport, TestRecord};
use crate::progress::{label, Progress};
use crate::schedule::Scheduler;
use crate::sinks::{ReportFiles, RunEvent, Sink, TimingsFile};
use crate::timings::Timings;
use crate::worker::{self, Echo, Environment, Tail};
use crate::{adapters, template, Adapter, RunConfig};

/// Exit codes of `dbfork run`, pytest's where they overlap (one table for
/// every command, in `dbfork_meta`).
pub use dbfork_meta::exit;

/// How often the run renews its clones' heartbeat (other hosts' gc waits an hour).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(120);

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

enum Event {
    CloneMade {
        slot: usize,
        generation: usize,
        /// The slot's clone, then one per extra alias.
        result: dbfork_engine::Result<Vec<MadeClone>>,
    },
    CloneDropped,
    /// A fresh clone for `--fresh-transactional` was made (or not).
    FreshMade {
        name: String,
        result: dbfork_engine::Result<Vec<MadeClone>>,
    },
    Accepted(UnixStream),
    Line {
        conn: usize,
        line: String,
    },
    /// A worker sent a line dbfork cannot take (oversized, unreadable).
    BadLine {
        conn: usize,
        why: String,
    },
    Closed {
        conn: usize,
    },
    /// A worker closed its connection without `bye` a while ago.
    /// A worker exited two seconds ago and its connection is still open (a
    /// forked child holds it): its exit is taken as it is.
    ExitedLongAgo {
        slot: usize,
        generation: usize,
    },
    ClosedLongAgo {
        slot: usize,
        generation: usize,
    },
    Exited {
        slot: usize,
        generation: usize,
        status: Option<ExitStatus>,
    },
    Signal,
}

/// Where a worker is in its conversation with dbfork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Started; it has not said hello (nor has a command without an adapter).
    Starting,
    /// Said hello; collecting.
    Collecting,
    /// Reported its collection (its start is over): running tests or
    /// waiting for some.
    Working,
    /// Said bye: finishing its session, then it exits.
    Finishing,
    /// Done with: exited after its bye, or lost (crash, timeout, a protocol
    /// fault) and being replaced; with how far it had got.
    Gone { said_hello: bool, said_bye: bool },
}

struct Worker {
    id: String,
    generation: usize,
    pid: u32,
    tail: Tail,
    conn: Option<usize>,
    life: Life,
    /// The process was reaped (a lost worker may not have exited yet).
    exited: bool,
    /// It exited while its connection was still open: the exit waits until
    /// every line it sent has been read (a result sent just before a crash
    /// is a result, not part of the crash).
    pending_exit: Option<Option<ExitStatus>>,
    running: Option<(usize, Instant)>,
    hungry: bool,
    stopped: bool,
    started: Instant,
}

#[derive(Default)]
struct Slot {
    generation: usize,
    env: Option<DatabaseEnv>,
    database: Option<String>,
    /// The clones of the extra aliases (`--alias`), in their order.
    extra: Vec<String>,
    /// The fresh clone its worker's current transactional test runs on.
    fresh: Option<String>,
    worker: Option<Worker>,
    /// A clone is being made or dropped for this slot.
    busy_with_clone: bool,
    /// Not needed: fewer units of work than slots, or out of restarts.
    retired: bool,
    workers_started: usize,
    tests_run: usize,
    busy: f64,
}

struct Conn {
    tx: mpsc::UnboundedSender<String>,
    slot: Option<(usize, usize)>,
}

struct Dispatcher {
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
    /// The controller's Django facts, which every worker's must equal.
    django_facts: Option<std::collections::BTreeMap<String, String>>,
    controller: Option<Controller>,
    events: mpsc::UnboundedSender<Event>,
    clone_permits: Arc<Semaphore>,
    cancel: Cancel,
    slots: Vec<Slot>,
    /// `--fresh-transactional`: clones made ahead, leased to workers (slot,
    /// generation) that ask, each used once.
    fresh: Pool<(usize, usize)>,
    conns: HashMap<usize, Conn>,
    next_conn: usize,
    tests: Option<Vec<TestItem>>,
    records: Vec<Option<TestRecord>>,
    collect_errors: Vec<(String, String)>,
    collect_skipped: Vec<(String, String)>,
    scheduler: Option<Scheduler>,
    timings: Timings,
    progress: Progress,
    /// Besides the terminal: the report files (and, at the end, the timings file).
    sinks: Vec<Box<dyn Sink>>,
    restarts_used: usize,
    clone_tasks: usize,
    /// Set once the run is winding down: no more work, no restarts.
    stopping: bool,
    interrupted: bool,
    signals: usize,
    grace_until: Option<Instant>,
    fatal: Option<(i32, String)>,
    /// The controller's end, under way once every worker is done with its tests.
    controller_stop: Option<tokio::task::JoinHandle<()>>,
    lost_all: bool,
    /// pytest's `-x` / `--maxfail N`: stop the run after this many failures (0: never).
    maxfail: usize,
    failures: usize,
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
    for option in tool.ignored(&config.command) {
        eprintln!(
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

pub async fn run(prepared: Prepared, backend: AnyBackend) -> Result<RunReport, RunError> {
    let Prepared {
        mut config,
        adapter,
        run_id,
        run_dir: _run_dir_guard,
        pythonpath,
        events: (events_tx, mut events),
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
        eprintln!(
            "dbfork: note: --fresh-transactional on MySQL/MariaDB copies every table for each transactional test, which measured about 2x slower than Django's flush on the example project (docs/benchmarks.md); it pays off on PostgreSQL and SQLite"
        );
    }
    let progress = Progress::new(config.live, config.verbose, config.jobs);
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
    let early = adapters::tool(adapter).starts_early();
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

    let mut d = Dispatcher::new(
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
        Some((template, controller)) => d.template_ready(template, controller).await?,
        None => d.prestart_all(),
    }
    let heartbeat = spawn_heartbeat(d.backend.clone(), d.run_id.clone());
    let mut building = early;
    while building || !d.finished() {
        let deadline = d.next_deadline();
        tokio::select! {
            (result, controller) = &mut build, if building => {
                building = false;
                let ready = match result {
                    Ok(template) => d.template_ready(template, controller).await,
                    Err(e) => {
                        heartbeat.abort();
                        d.abandon(controller).await;
                        return Err(e);
                    }
                };
                if let Err(e) = ready {
                    heartbeat.abort();
                    d.abandon(None).await;
                    return Err(e);
                }
            }
            event = events.recv() => match event {
                Some(event) => d.handle(event),
                None => break,
            },
            _ = sleep_until(deadline) => d.on_deadline(),
        }
    }
    heartbeat.abort();
    Ok(d.finish().await)
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

/// Ctrl-C and SIGTERM, listened to from the start of `dbfork run` (before
/// the database is opened and the run prepared): one that comes that early is
/// kept until the run's watcher takes it, instead of killing dbfork.
pub struct Signals {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    /// Signals that came before even this listened (the program's own early handler).
    early: usize,
}

impl Signals {
    /// Starts listening (within the async runtime).
    pub fn listen() -> Signals {
        Signals {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
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
/// tells the dispatcher; the third exits at once (what is left is collected by
/// the next dbfork command, and the workers die with dbfork).
async fn watch_signals(
    signals: Signals,
    canceller: Canceller,
    events: mpsc::UnboundedSender<Event>,
) {
    let (Some(mut int), Some(mut term)) = (signals.int, signals.term) else {
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
            }
        }
        seen += 1;
        canceller.cancel();
        if seen >= 3 {
            eprintln!("dbfork: exiting at once; the next dbfork command removes what is left");
            std::process::exit(exit::INTERRUPTED);
        }
        if events.send(Event::Signal).is_err() {
            return;
        }
    }
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

/// What a [`Dispatcher`] starts from besides its configuration and backend.
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

impl Dispatcher {
    fn new(
        config: RunConfig,
        backend: Arc<AnyBackend>,
        configured: &Configured,
        parts: Parts,
    ) -> Dispatcher {
        let slots = config.jobs.max(1);
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(ReportFiles {
            junit: config.junit.clone(),
            json: config.json.clone(),
        })];
        let base_env = Environment {
            set: configured.env_set.clone().into_iter().collect(),
            unset: configured.env_unset.clone(),
        };
        let mut d = Dispatcher {
            records: Vec::new(),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            config,
            backend,
            template: None,
            run_id: parts.run_id,
            method: parts.method,
            adapter: parts.adapter,
            socket: parts.socket,
            pythonpath: parts.pythonpath,
            base_env,
            django_facts: configured.django.as_ref().map(|d| d.facts.clone()),
            controller: None,
            events: parts.events,
            clone_permits: Arc::new(Semaphore::new(CLONE_CONCURRENCY)),
            // Per slot: one leased, one ready, one for a worker waiting.
            fresh: Pool::new(0, 3 * slots + 1),
            cancel: parts.cancel,
            conns: HashMap::new(),
            next_conn: 0,
            tests: None,
            collect_errors: Vec::new(),
            collect_skipped: Vec::new(),
            scheduler: None,
            sinks,
            timings: parts.timings,
            progress: parts.progress,
            restarts_used: 0,
            clone_tasks: 0,
            stopping: false,
            interrupted: false,
            signals: 0,
            grace_until: None,
            fatal: None,
            controller_stop: None,
            lost_all: false,
            maxfail: 0,
            failures: 0,
            started: parts.started,
            started_at: parts.started_at,
        };
        if d.protocol() {
            d.maxfail = adapters::tool(d.adapter).maxfail(&d.config.command);
        }
        if !d.protocol() {
            // Without an adapter each slot's command is one unit of the report.
            d.records = vec![None; slots];
        }
        d
    }
}

impl Worker {
    fn gone(&self) -> bool {
        matches!(self.life, Life::Gone { .. })
    }

    fn said_hello(&self) -> bool {
        match self.life {
            Life::Starting => false,
            Life::Gone { said_hello, .. } => said_hello,
            _ => true,
        }
    }

    fn said_bye(&self) -> bool {
        match self.life {
            Life::Finishing => true,
            Life::Gone { said_bye, .. } => said_bye,
            _ => false,
        }
    }

    /// Still starting: connecting or collecting.
    fn starting(&self) -> bool {
        matches!(self.life, Life::Starting | Life::Collecting)
    }

    fn set_gone(&mut self) {
        self.life = Life::Gone {
            said_hello: self.said_hello(),
            said_bye: self.said_bye(),
        };
    }
}

impl Dispatcher {
    /// Whether the workers speak the protocol (through an adapter).
    fn protocol(&self) -> bool {
        self.adapter.speaks_protocol()
    }

    /// Starts `slot`'s first worker before its clone exists (the template is
    /// still being built): its environment names the clone it will get, and
    /// it is fed once the clone is made.
    /// pytest's workers start while the template is prepared.
    fn prestart_all(&mut self) {
        let slots = self.slots.len();
        self.note(&format!(
            "starting {slots} worker{} while the template is prepared; each waits for its clone",
            if slots == 1 { "" } else { "s" }
        ));
        for slot in 0..slots {
            self.prestart(slot);
        }
    }

    fn prestart(&mut self, slot: usize) {
        let name = names::slot_clone_name(&self.run_id, slot, self.slots[slot].generation);
        let made: Vec<MadeClone> = std::iter::once(name.clone())
            .chain((0..self.config.aliases.len()).map(|i| names::alias_clone_name(&name, i)))
            .map(|name| MadeClone {
                url: self.backend.url().with_database(&name),
                name,
            })
            .collect();
        self.start_worker(slot, &made);
        self.worker_status(slot, "starting while the template is prepared");
    }

    /// The template is ready: the clones of every slot are made (workers
    /// already started get theirs, the others start on theirs).
    async fn template_ready(
        &mut self,
        template: ops::Template,
        controller: Option<Controller>,
    ) -> Result<(), RunError> {
        self.controller = controller;
        let entry = ops::find_template(&self.backend, &template.fingerprint).await?;
        let slots = self.slots.len();
        self.note(&format!(
            "{slots} worker{} on clones of {}",
            if slots == 1 { "" } else { "s" },
            entry.name
        ));
        self.template = Some(entry);
        if self.stopping {
            return Ok(());
        }
        for slot in 0..slots {
            let s = &self.slots[slot];
            if !s.retired && !s.busy_with_clone && s.database.is_none() {
                self.make_clone(slot);
            }
        }
        self.top_up_fresh();
        Ok(())
    }

    /// The template could not be made: the workers started beside its build
    /// are ended (they ran nothing), the controller too.
    async fn abandon(mut self, controller: Option<Controller>) {
        for s in &self.slots {
            if let Some(w) = s.worker.as_ref().filter(|w| !w.exited) {
                worker::signal_group(w.pid, libc::SIGKILL);
            }
        }
        self.emit(RunEvent::Ending);
        if let Some(controller) = controller.or_else(|| self.controller.take()) {
            controller.stop(self.config.grace).await;
        }
        for s in &mut self.slots {
            s.env = None;
        }
    }

    fn make_clone(&mut self, slot: usize) {
        if self.template.is_none() {
            // Made when the template is ready (see `template_ready`).
            return;
        }
        let generation = self.slots[slot].generation;
        let name = names::slot_clone_name(&self.run_id, slot, generation);
        let mut wanted = vec![name.clone()];
        wanted.extend((0..self.config.aliases.len()).map(|i| names::alias_clone_name(&name, i)));
        self.slots[slot].busy_with_clone = true;
        self.spawn_clones(wanted, move |result| Event::CloneMade {
            slot,
            generation,
            result,
        });
    }

    /// Makes clones of the template named `wanted` in the background; `done`
    /// turns the outcome into the event the loop receives.
    fn spawn_clones(
        &mut self,
        wanted: Vec<String>,
        done: impl FnOnce(dbfork_engine::Result<Vec<MadeClone>>) -> Event + Send + 'static,
    ) {
        let Some(template) = self.template.clone() else {
            return;
        };
        self.clone_tasks += 1;
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
            .await;
            let _ = events.send(done(result));
        });
    }

    /// Drops clone `name` in the background (what is left is dropped at the end).
    fn drop_in_background(&mut self, name: String) {
        self.clone_tasks += 1;
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
            let _ = events.send(Event::CloneDropped);
        });
    }

    /// A worker's `fresh`: its previous fresh clone goes, the next is handed
    /// out as soon as one is ready.
    fn on_fresh(&mut self, slot: usize, generation: usize) {
        if !self.config.fresh_transactional {
            return self.fail(
                exit::USAGE,
                format!("{} asked for a fresh clone, but this run does not make them (DBFORK_FRESH is not set by dbfork without --fresh-transactional): the adapter and dbfork disagree; install matching versions", label(slot)),
            );
        }
        if let Some(old) = self.slots[slot].fresh.take() {
            self.fresh.release(&old);
        }
        if let Some(name) = self.fresh.acquire((slot, generation), Instant::now()) {
            self.grant_fresh(slot, generation, name);
        }
        self.top_up_fresh();
    }

    /// Sends a leased fresh clone to its worker (if it is still there).
    fn grant_fresh(&mut self, slot: usize, generation: usize, name: String) {
        if self.worker(slot, generation).is_none_or(|w| w.gone()) {
            self.fresh.release(&name);
            return;
        }
        let database = ops::database_reference(&self.backend, &name);
        self.send(slot, &RunnerMessage::Fresh { database });
        self.slots[slot].fresh = Some(name);
    }

    /// Keeps one fresh clone ready (or in the making) per worker, plus one
    /// for every worker waiting; drops the used ones.
    fn top_up_fresh(&mut self) {
        for name in self.fresh.to_drop() {
            self.fresh.dropped(&name);
            self.drop_in_background(name);
        }
        if !self.config.fresh_transactional || self.stopping || self.template.is_none() {
            return;
        }
        self.fresh.set_target(self.slots.len());
        let run_id = self.run_id.clone();
        for name in self.fresh.to_make(|n| names::fresh_clone_name(&run_id, n)) {
            let made = name.clone();
            self.spawn_clones(vec![name], move |result| Event::FreshMade {
                name: made,
                result,
            });
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::CloneMade {
                slot,
                generation,
                result,
            } => self.on_clone_made(slot, generation, result),
            Event::CloneDropped => {
                self.clone_tasks -= 1;
            }
            Event::FreshMade { name, result } => self.on_fresh_made(name, result),
            Event::Accepted(stream) => self.accept(stream),
            Event::Line { conn, line } => match protocol::decode::<WorkerMessage>(&line) {
                Ok(message) => self.on_message(conn, message),
                Err(e) => self.reject(conn, format!("{e}: `{}`", truncate(&line, 200))),
            },
            Event::BadLine { conn, why } => self.reject(conn, why),
            Event::Closed { conn } => self.on_closed(conn),
            Event::ClosedLongAgo { slot, generation } => {
                self.lose(slot, generation, LossCause::Disconnected)
            }
            Event::Exited {
                slot,
                generation,
                status,
            } => {
                let connected = self
                    .conns
                    .values()
                    .any(|c| c.slot == Some((slot, generation)));
                match self.worker_mut(slot, generation) {
                    // Its last lines may still be on their way: read them first.
                    Some(w) if connected && !w.gone() => {
                        w.pending_exit = Some(status);
                        self.after(
                            Duration::from_secs(2),
                            Event::ExitedLongAgo { slot, generation },
                        );
                    }
                    _ => self.on_exit(slot, generation, status),
                }
            }
            Event::ExitedLongAgo { slot, generation } => {
                let pending = self
                    .worker_mut(slot, generation)
                    .and_then(|w| w.pending_exit.take());
                if let Some(status) = pending {
                    self.on_exit(slot, generation, status);
                }
            }
            Event::Signal => self.on_signal(),
        }
    }

    /// Sends `event` to the loop after `delay`.
    fn after(&self, delay: Duration, event: Event) {
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(event);
        });
    }

    fn on_clone_made(
        &mut self,
        slot: usize,
        generation: usize,
        result: dbfork_engine::Result<Vec<MadeClone>>,
    ) {
        self.clone_tasks -= 1;
        self.slots[slot].busy_with_clone = false;
        match result {
            Ok(made) => {
                let mut names = made.iter().map(|m| m.name.clone());
                self.slots[slot].database = names.next();
                self.slots[slot].extra = names.collect();
                if self.stopping
                    || self.slots[slot].retired
                    || generation != self.slots[slot].generation
                {
                    return;
                }
                // A worker started while the template was built waits for this clone.
                if self.worker(slot, generation).is_some() {
                    self.worker_status(slot, "ready");
                    return self.feed(slot);
                }
                self.start_worker(slot, &made);
            }
            Err(dbfork_engine::Error::Interrupted) => {}
            Err(e) => self.fail(
                exit::SETUP_OR_DATABASE,
                format!("could not make the clone of worker {}: {e}", label(slot)),
            ),
        }
    }

    fn on_fresh_made(&mut self, name: String, result: dbfork_engine::Result<Vec<MadeClone>>) {
        self.clone_tasks -= 1;
        if self.stopping {
            self.fresh.drain();
        }
        for grant in self.fresh.made(&name, result.is_ok()) {
            let (slot, generation) = grant.holder;
            self.grant_fresh(slot, generation, grant.name);
        }
        self.top_up_fresh();
        match result {
            Ok(_) | Err(dbfork_engine::Error::Interrupted) => {}
            Err(e) => self.fail(
                exit::SETUP_OR_DATABASE,
                format!("could not make a fresh clone for a transactional test: {e}"),
            ),
        }
    }

    /// A connection closed: a worker's exit that waited for its last lines
    /// is taken now; a close without bye waits a little for the exit status
    /// (a crash report names the signal), but not forever: a worker that
    /// hangs after closing is lost too.
    fn on_closed(&mut self, conn: usize) {
        let Some(Conn {
            slot: Some((slot, generation)),
            ..
        }) = self.conns.remove(&conn)
        else {
            return;
        };
        let pending = self
            .worker_mut(slot, generation)
            .and_then(|w| w.pending_exit.take());
        if let Some(status) = pending {
            return self.on_exit(slot, generation, status);
        }
        let clean = self
            .worker(slot, generation)
            .is_none_or(|w| w.said_bye() || w.exited);
        if !clean {
            self.after(
                Duration::from_secs(2),
                Event::ClosedLongAgo { slot, generation },
            );
        }
    }

    /// A worker sent something dbfork cannot read: its connection ends and it
    /// is lost (its test reported, a replacement on a fresh clone); the other
    /// workers go on.
    fn reject(&mut self, conn: usize, why: String) {
        let Some(Conn { slot, .. }) = self.conns.remove(&conn) else {
            return;
        };
        match slot {
            Some((slot, generation)) => {
                self.note(&format!(
                    "{} sent something dbfork cannot read ({}); it is stopped",
                    label(slot),
                    truncate(&why, 300)
                ));
                self.lose(slot, generation, LossCause::Protocol(why));
            }
            None => tracing::warn!("a connection that never said hello sent {why}; closed"),
        }
    }

    fn worker(&self, slot: usize, generation: usize) -> Option<&Worker> {
        self.slots[slot]
            .worker
            .as_ref()
            .filter(|w| w.generation == generation)
    }

    fn worker_mut(&mut self, slot: usize, generation: usize) -> Option<&mut Worker> {
        self.slots[slot]
            .worker
            .as_mut()
            .filter(|w| w.generation == generation)
    }

    /// A worker's environment: what the controller's configuration set, its
    /// clones, who it is (slot, id, run, as pytest-xdist names them too),
    /// and with an adapter the socket and the Python packages.
    fn worker_vars(&self, slot: usize, id: &str, db_env: &DatabaseEnv) -> Vec<(String, String)> {
        let mut vars = self.base_env.set.clone();
        vars.extend(db_env.vars.iter().cloned());
        let slots = self.slots.len().to_string();
        if self.django_facts.is_some() {
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

    fn start_worker(&mut self, slot: usize, made: &[MadeClone]) {
        let generation = self.slots[slot].generation;
        let db_env = match DatabaseEnv::for_aliases(&self.backend, made, &self.config.aliases) {
            Ok(env) => env,
            Err(e) => {
                return self.fail(
                    exit::SETUP_OR_DATABASE,
                    format!("cannot prepare the environment of {}: {e}", label(slot)),
                )
            }
        };
        let id = format!("{slot}.{generation}");
        let vars = self.worker_vars(slot, &id, &db_env);
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
        let spawned = match worker::spawn(&command, &environment, &cwd, echo, Tail::default()) {
            Ok(s) => s,
            Err(e) => {
                let program = command.first().cloned().unwrap_or_default();
                return self.fail(
                    exit::USAGE,
                    format!("cannot start the test command `{program}`: {e}. Check that it is installed and on PATH (or give its path), e.g. `dbfork run -- .venv/bin/python -m pytest`."),
                );
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
        let s = &mut self.slots[slot];
        s.env = Some(db_env);
        s.workers_started += 1;
        s.worker = Some(Worker {
            id,
            generation,
            pid: spawned.pid,
            tail: spawned.tail,
            conn: None,
            life: Life::Starting,
            exited: false,
            pending_exit: None,
            running: None,
            hungry: false,
            stopped: false,
            started: Instant::now(),
        });
        self.worker_status(
            slot,
            if self.protocol() {
                "starting"
            } else {
                "running"
            },
        );
    }

    fn accept(&mut self, stream: UnixStream) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(mut line) = rx.recv().await {
                line.push('\n');
                if write.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(read);
            loop {
                let event = match worker::read_line(&mut reader).await {
                    Ok(Some(line)) => Event::Line { conn, line },
                    Ok(None) => break,
                    Err(why) => {
                        // Nothing more is read from it: the worker is rejected.
                        let _ = events.send(Event::BadLine { conn, why });
                        return;
                    }
                };
                if events.send(event).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Closed { conn });
        });
        self.conns.insert(conn, Conn { tx, slot: None });
    }

    /// Sends to `slot`'s worker; false when it has no connection (yet).
    fn send(&self, slot: usize, message: &RunnerMessage) -> bool {
        let conn = self.slots[slot].worker.as_ref().and_then(|w| w.conn);
        match conn.and_then(|c| self.conns.get(&c)) {
            Some(c) => c.tx.send(protocol::encode(message)).is_ok(),
            None => false,
        }
    }

    fn on_message(&mut self, conn: usize, message: WorkerMessage) {
        let (slot, generation) = match (self.conns.get(&conn).and_then(|c| c.slot), &message) {
            (
                _,
                WorkerMessage::Hello {
                    worker_id, maxfail, ..
                },
            ) => return self.on_hello(conn, worker_id, *maxfail),
            (Some(owner), _) => owner,
            (None, _) => return,
        };
        if self.worker(slot, generation).is_none_or(|w| w.gone()) {
            return;
        }
        match message {
            WorkerMessage::Hello { .. } => {}
            WorkerMessage::Collected {
                tests,
                errors,
                skipped,
                continue_on_errors,
                django_facts,
            } => {
                if let Some(message) = self.facts_differ(slot, django_facts.as_ref()) {
                    return self.fail(exit::SETUP_OR_DATABASE, message);
                }
                if self.tests.is_none() {
                    self.collect_skipped =
                        skipped.into_iter().map(|e| (e.id, e.longrepr)).collect();
                }
                // `collected` is also the worker's first `want`.
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.hungry = true;
                    w.life = Life::Working;
                }
                self.on_collected(slot, tests, errors, continue_on_errors);
                // Everyone, not only this worker: one that waited because a
                // replacement was coming (holding just its committed last
                // test) learns now that there is nothing more, or is stolen from.
                self.feed_all();
                self.top_up_fresh();
            }
            WorkerMessage::Want => {
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.hungry = true;
                }
                self.feed(slot);
            }
            WorkerMessage::Started { index } => {
                if let Some(s) = self.scheduler.as_mut() {
                    s.started(slot, index);
                }
                let id = self
                    .tests
                    .as_ref()
                    .and_then(|t| t.get(index))
                    .map(|t| t.id.clone())
                    .unwrap_or_default();
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.running = Some((index, Instant::now()));
                }
                self.worker_status(slot, &id);
            }
            WorkerMessage::Result(result) => self.on_result(slot, generation, result),
            WorkerMessage::Released { tests } => {
                if let Some(s) = self.scheduler.as_mut() {
                    s.released(slot, &tests);
                }
                self.feed_all();
            }
            WorkerMessage::Fresh => self.on_fresh(slot, generation),
            WorkerMessage::Configured { .. } | WorkerMessage::Built { .. } => self.fail(
                exit::USAGE,
                format!("{} sent a controller's message; install matching versions of dbfork and its adapter", label(slot)),
            ),
            WorkerMessage::Bye => {
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.life = Life::Finishing;
                }
                self.worker_status(slot, "done");
                self.stop_controller_when_done();
            }
        }
    }

    /// A worker's hello: the connection becomes its slot's, or, from a stray
    /// process (an old generation), gets `stop` and nothing to do.
    fn on_hello(&mut self, conn: usize, worker_id: &str, maxfail: Option<usize>) {
        // The tool's own reading of its options beats dbfork's parse of the
        // command line (addopts, PYTEST_ADDOPTS, `-xq`).
        if let Some(maxfail) = maxfail {
            self.maxfail = maxfail;
        }
        let found = self.slots.iter().enumerate().find_map(|(slot, s)| {
            s.worker
                .as_ref()
                .filter(|w| w.id == worker_id && !w.gone())
                .map(|w| (slot, w.generation))
        });
        let Some((slot, generation)) = found else {
            if let Some(c) = self.conns.get(&conn) {
                let _ = c.tx.send(protocol::encode(&RunnerMessage::Stop));
            }
            return;
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.slot = Some((slot, generation));
        }
        if let Some(w) = self.worker_mut(slot, generation) {
            w.conn = Some(conn);
            w.life = Life::Collecting;
        }
        self.worker_status(slot, "collecting");
        if self.stopping || self.slots[slot].retired {
            self.stop_worker(slot);
        }
    }

    fn on_result(&mut self, slot: usize, generation: usize, result: TestResult) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        // A result is for the test the worker said it started, once.
        if w.running.is_none_or(|(i, _)| i != result.index) {
            let why = format!(
                "a result for test {} without starting it (the protocol is: started, then result)",
                result.index
            );
            if let Some(conn) = w.conn {
                return self.reject(conn, why);
            }
            return self.lose(slot, generation, LossCause::Protocol(why));
        }
        w.running = None;
        let worker_id = Some(w.id.clone());
        let Some(item) = self
            .tests
            .as_ref()
            .and_then(|t| t.get(result.index))
            .cloned()
        else {
            return;
        };
        let verdict = decide::result_verdict(&result);
        self.record(TestRecord {
            index: result.index,
            id: item.id,
            file: item.file,
            class: item.class,
            outcome: verdict.outcome,
            duration: verdict.duration,
            slot: Some(slot),
            worker_id,
            phases: result.phases,
            longrepr: verdict.longrepr,
            stdout: result.stdout,
            stderr: result.stderr,
        });
    }

    /// Why a worker's Django configuration is not the one the template was
    /// made with (the controller's), if it is not.
    fn facts_differ(
        &self,
        slot: usize,
        facts: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Option<String> {
        let (expected, found) = (self.django_facts.as_ref()?, facts?);
        let differing: Vec<&str> = expected
            .iter()
            .filter(|(name, _)| name.as_str() != "template setup")
            .filter(|(name, value)| found.get(*name) != Some(*value))
            .map(|(name, _)| name.as_str())
            .collect();
        let first = differing.first()?;
        Some(format!(
            "{} configured Django differently from the controller that made the template: {} differ{} ({first} is `{}` in the controller and `{}` in the worker). The workers must see the settings the template was made with; look for settings that depend on something that differs between processes (the process id, a random value, a variable that only some processes set)",
            label(slot),
            differing.join(", "),
            if differing.len() == 1 { "s" } else { "" },
            truncate(expected.get(*first).map(String::as_str).unwrap_or(""), 120),
            truncate(found.get(*first).map(String::as_str).unwrap_or("(missing)"), 120),
        ))
    }

    fn record(&mut self, record: TestRecord) {
        let index = record.index;
        if record.outcome.is_failure() {
            self.failures += 1;
            if self.maxfail > 0 && self.failures >= self.maxfail && !self.stopping {
                self.note(&format!(
                    "stopping after {} failure{} (-x / --maxfail / --failfast); tests not started are not run",
                    self.failures,
                    if self.failures == 1 { "" } else { "s" }
                ));
                self.take_back_everything();
                self.stop_everything();
            }
        }
        if let Some(slot) = record.slot {
            self.slots[slot].tests_run += 1;
            self.slots[slot].busy += record.duration;
        }
        self.emit(RunEvent::TestFinished(&record));
        if let Some(place) = self.records.get_mut(index) {
            *place = Some(record);
        }
    }

    fn on_collected(
        &mut self,
        slot: usize,
        tests: Vec<TestItem>,
        errors: Vec<protocol::CollectError>,
        continue_on_errors: bool,
    ) {
        if let Some(known) = &self.tests {
            if *known != tests {
                let first = known
                    .iter()
                    .zip(&tests)
                    .position(|(a, b)| a != b)
                    .unwrap_or(known.len().min(tests.len()));
                let detail = match (known.get(first), tests.get(first)) {
                    (Some(a), Some(b)) => format!(
                        "test {first} is `{}` in one and `{}` in the other",
                        a.id, b.id
                    ),
                    _ => format!("one has {} tests, the other {}", known.len(), tests.len()),
                };
                return self.fail(
                    exit::INTERRUPTED,
                    format!("{} collected different tests than the first worker ({detail}); no test ran on a wrong list. Test ids and their order must be the same in every process: a value that differs between processes (a random number, a temporary path, a secret made at import time) in a parametrize id or a test name makes them differ. pytest-xdist makes such values once in its controller when they go into the environment while pytest configures, and dbfork passes that environment on too; values made at import time in each process cannot be shared. Randomized order: pass `-p no:randomly` or a fixed seed.", label(slot)),
                );
            }
            return;
        }
        self.emit(RunEvent::Collected(tests.len()));
        self.records = vec![None; tests.len()];
        self.collect_errors = errors.into_iter().map(|e| (e.id, e.longrepr)).collect();
        let timings = &self.timings;
        let scheduler = Scheduler::new(&tests, self.config.dist, self.slots.len(), |id| {
            timings.estimate(id)
        });
        let units = scheduler.units();
        self.tests = Some(tests);
        self.scheduler = Some(scheduler);
        if !self.collect_errors.is_empty() && !continue_on_errors {
            let n = self.collect_errors.len();
            self.note(&format!(
                "Interrupted: {n} error{} during collection",
                if n == 1 { "" } else { "s" }
            ));
            self.fatal = Some((exit::INTERRUPTED, String::new()));
            self.stop_everything();
            return;
        }
        if units == 0 {
            self.stop_everything();
            return;
        }
        // Never more workers than units of work.
        for extra in units..self.slots.len() {
            self.slots[extra].retired = true;
            if let Some(s) = self.scheduler.as_mut() {
                s.retire(extra);
            }
            if self.slots[extra].worker.is_some() {
                self.stop_worker(extra);
            }
        }
        self.feed_all();
    }

    /// Gives `slot` work if it asked: a batch, or a steal on its behalf, or `stop`.
    fn feed(&mut self, slot: usize) {
        let Some(w) = self.slots[slot].worker.as_ref() else {
            return;
        };
        if !w.hungry || w.stopped || w.gone() {
            return;
        }
        if self.stopping || self.slots[slot].retired {
            return self.stop_worker(slot);
        }
        if self.slots[slot].database.is_none() {
            // Started before its clone existed: its first test waits for it.
            return;
        }
        let Some(scheduler) = self.scheduler.as_mut() else {
            return;
        };
        if let Some(batch) = scheduler.next_batch(slot) {
            if let Some(w) = self.slots[slot].worker.as_mut() {
                w.hungry = false;
            }
            self.send(slot, &RunnerMessage::Run { tests: batch });
            return;
        }
        if let Some((victim, tests)) = scheduler.pick_steal(slot) {
            self.send(victim, &RunnerMessage::Steal { tests });
            return;
        }
        if scheduler.steal_pending() || self.replacement_coming() {
            return;
        }
        self.stop_worker(slot);
    }

    fn feed_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.feed(slot);
        }
    }

    /// Whether a slot is getting a new worker (whose work may need sharing).
    fn replacement_coming(&self) -> bool {
        self.slots.iter().any(|s| s.busy_with_clone && !s.retired)
    }

    /// Tells `slot`'s worker to finish. One that has not connected yet is told
    /// when it says hello.
    fn stop_worker(&mut self, slot: usize) {
        let sent = self.send(slot, &RunnerMessage::Stop);
        if let Some(w) = self.slots[slot].worker.as_mut() {
            w.stopped = sent;
            w.hungry = false;
        }
    }

    /// Asks every worker to give back the tests it has not started.
    fn take_back_everything(&mut self) {
        for slot in 0..self.slots.len() {
            let held = self
                .scheduler
                .as_ref()
                .map(|s| s.held(slot).to_vec())
                .unwrap_or_default();
            if !held.is_empty() {
                self.send(slot, &RunnerMessage::Steal { tests: held });
            }
        }
    }

    fn stop_everything(&mut self) {
        self.stopping = true;
        for slot in 0..self.slots.len() {
            if self.slots[slot].worker.as_ref().is_some_and(|w| !w.gone()) {
                self.stop_worker(slot);
            }
        }
    }

    /// Ends the run with an error that is not about one test.
    fn fail(&mut self, code: i32, message: String) {
        if self.fatal.is_none() {
            self.note(&format!("error: {message}"));
            self.fatal = Some((code, message));
        }
        self.stopping = true;
        for s in &self.slots {
            if let Some(w) = s.worker.as_ref().filter(|w| !w.exited) {
                worker::signal_group(w.pid, libc::SIGKILL);
            }
        }
    }

    fn on_exit(&mut self, slot: usize, generation: usize, status: Option<ExitStatus>) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        w.exited = true;
        let (hello, bye, gone) = (w.said_hello(), w.said_bye(), w.gone());
        let tail = w.tail.text();
        let how = status
            .as_ref()
            .map(worker::describe_exit)
            .unwrap_or_else(|| "an unknown status".into());
        if gone {
            return;
        }
        if !self.protocol() {
            return self.generic_exit(slot, status, tail);
        }
        if !hello && !self.stopping {
            // pytest ended before its plugin connected: a usage error, a broken
            // conftest, or the plugin is not loaded.
            let code = status.and_then(|s| s.code());
            let (exit_code, why) = match code {
                Some(4) => (exit::USAGE, "pytest refused its arguments (usage error)".to_string()),
                Some(0 | 1) => (
                    exit::USAGE,
                    "the test command ended before it connected to dbfork: it could not start (see its output), or pytest ran without dbfork's plugin (`-p no:dbfork` in PYTEST_ADDOPTS or the config; use `--adapter none` to run the command once per worker instead)".to_string(),
                ),
                Some(5) => (exit::NO_TESTS, "pytest collected no tests".to_string()),
                _ => (exit::SETUP_OR_DATABASE, format!("the test command ended ({how}) before it started running tests")),
            };
            return self.fail(exit_code, format!("{why}. Its output:\n{}", indent(&tail)));
        }
        if !bye {
            return self.lose(slot, generation, LossCause::Exited(how));
        }
        if let Some(w) = self.worker_mut(slot, generation) {
            w.set_gone();
        }
        self.worker_status(slot, "finished");
    }

    fn generic_exit(&mut self, slot: usize, status: Option<ExitStatus>, tail: String) {
        let generation = self.slots[slot].generation;
        let elapsed = self
            .worker(slot, generation)
            .map(|w| w.started.elapsed().as_secs_f64())
            .unwrap_or_default();
        if let Some(w) = self.worker_mut(slot, generation) {
            w.set_gone();
        }
        let timed_out = self
            .records
            .get(slot)
            .is_some_and(|r| r.as_ref().is_some_and(|r| r.outcome == Outcome::TimedOut));
        if timed_out {
            return;
        }
        let success = status.is_some_and(|s| s.success());
        let how = status
            .as_ref()
            .map(worker::describe_exit)
            .unwrap_or_default();
        let outcome = match (success, self.interrupted) {
            (true, _) => Outcome::Passed,
            (false, true) => Outcome::NotRun,
            (false, false) => Outcome::Failed,
        };
        self.record(TestRecord {
            index: slot,
            id: format!("worker {}", label(slot)),
            file: String::new(),
            class: None,
            outcome,
            duration: elapsed,
            slot: Some(slot),
            worker_id: Some(format!("{slot}.{generation}")),
            phases: Vec::new(),
            longrepr: (!success)
                .then(|| format!("the command ended with {how}; its last output:\n{tail}")),
            stdout: String::new(),
            stderr: String::new(),
        });
    }

    /// A worker is gone without saying bye (crash, kill, timeout): report its
    /// test, requeue what it held, and give the slot a fresh clone and worker.
    fn lose(&mut self, slot: usize, generation: usize, cause: LossCause) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        if w.gone() {
            return;
        }
        w.set_gone();
        let (running, pid, tail, exited) = (w.running.take(), w.pid, w.tail.clone(), w.exited);
        if !exited {
            worker::signal_group(pid, libc::SIGKILL);
        }
        if let Some(s) = self.scheduler.as_mut() {
            s.lost(slot);
        }
        if let Some((index, since)) = running {
            let run = if self.interrupted {
                RunState::Interrupted
            } else if self.fatal.is_some() {
                RunState::Failed
            } else {
                RunState::Going
            };
            let (outcome, what) = decide::lost_test(&cause, run, &label(slot));
            if let Some(item) = self.tests.as_ref().and_then(|t| t.get(index)).cloned() {
                // Let the output pumps catch the last lines.
                std::thread::sleep(Duration::from_millis(20));
                self.record(TestRecord {
                    index,
                    id: item.id,
                    file: item.file,
                    class: item.class,
                    outcome,
                    duration: since.elapsed().as_secs_f64(),
                    slot: Some(slot),
                    worker_id: Some(format!("{slot}.{generation}")),
                    phases: Vec::new(),
                    longrepr: Some(format!(
                        "{what}; its last output:\n{}",
                        indent(&tail.text())
                    )),
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
        }
        let running_elsewhere = self
            .slots
            .iter()
            .filter(|s| {
                s.worker
                    .as_ref()
                    .is_some_and(|w| !w.gone() && w.running.is_some())
            })
            .count();
        let others_gone = self
            .slots
            .iter()
            .enumerate()
            .all(|(i, s)| i == slot || s.retired || s.worker.as_ref().is_none_or(|w| w.gone()));
        let max = self.config.max_worker_restarts;
        let next = decide::after_loss(LossFacts {
            stopping: self.stopping,
            collected: self.tests.is_some(),
            unfinished: self.records.iter().filter(|r| r.is_none()).count(),
            running_elsewhere,
            restarts_used: self.restarts_used,
            max_restarts: max,
            others_gone,
        });
        match next {
            AfterLoss::Nothing => return,
            AfterLoss::FeedTheOthers => return self.feed_all(),
            AfterLoss::Retire { all_lost } => {
                self.note(&format!(
                    "{} is gone and the {max} worker restarts (--max-worker-restarts) are used up",
                    label(slot)
                ));
                self.slots[slot].retired = true;
                if all_lost {
                    self.lost_all = true;
                    self.stopping = true;
                }
                return self.feed_all();
            }
            AfterLoss::Replace => {}
        }
        self.restarts_used += 1;
        self.note(&format!(
            "{} {}; replacing it on a fresh clone",
            label(slot),
            cause.summary()
        ));
        self.worker_status(slot, "making a fresh clone");
        self.replace_clone(slot);
        self.feed_all();
    }

    /// Drops the slot's clone (the crashed test may have left it in any state)
    /// and makes the next generation's.
    fn replace_clone(&mut self, slot: usize) {
        let old = self.slots[slot].database.take();
        let extra = std::mem::take(&mut self.slots[slot].extra);
        self.slots[slot].fresh = None;
        self.fresh.forget(&(slot, self.slots[slot].generation));
        self.slots[slot].env = None;
        self.slots[slot].generation += 1;
        for name in old.into_iter().chain(extra) {
            self.drop_in_background(name);
        }
        self.top_up_fresh();
        self.make_clone(slot);
    }

    fn on_signal(&mut self) {
        self.signals += 1;
        self.interrupted = true;
        self.stopping = true;
        let signal = if self.signals == 1 {
            self.grace_until = Some(Instant::now() + self.config.grace);
            self.note(&format!(
                "interrupted: stopping the workers (they get {:.0?}; press Ctrl-C again to kill them at once), then dropping the clones",
                self.config.grace
            ));
            libc::SIGINT
        } else {
            self.note("killing the workers");
            libc::SIGKILL
        };
        for s in &self.slots {
            if let Some(w) = s.worker.as_ref().filter(|w| !w.exited) {
                worker::signal_group(w.pid, signal);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let timeouts = self.config.timeout.into_iter().flat_map(|limit| {
            self.slots.iter().filter_map(move |s| {
                let w = s.worker.as_ref().filter(|w| !w.gone())?;
                if self.protocol() {
                    w.running.map(|(_, since)| since + limit)
                } else {
                    Some(w.started + limit)
                }
            })
        });
        let startups = self.slots.iter().filter_map(|s| {
            let w = s.worker.as_ref().filter(|w| w.starting())?;
            self.protocol().then(|| w.started + self.startup_limit())
        });
        timeouts.chain(startups).chain(self.grace_until).min()
    }

    fn startup_limit(&self) -> Duration {
        self.config.start_limit()
    }

    /// Ends the run when a worker did not finish starting in time: the same
    /// code runs in every worker, so a replacement would hang the same way.
    fn check_startups(&mut self, now: Instant) {
        let limit = self.startup_limit();
        let late = self.slots.iter().enumerate().find_map(|(slot, s)| {
            let w = s.worker.as_ref().filter(|w| w.starting())?;
            (w.started + limit <= now).then(|| (slot, w.said_hello(), w.tail.text()))
        });
        let Some((slot, hello, tail)) = late else {
            return;
        };
        let stage = if hello {
            "connected, but did not report what it collected"
        } else {
            "did not connect to dbfork"
        };
        self.fail(
            exit::SETUP_OR_DATABASE,
            format!(
                "{} {stage} within {limit:.0?} of its start: a conftest.py, an import or a plugin that hangs? (--start-timeout sets the limit, if the start really needs longer). Its last output:\n{}",
                label(slot),
                indent(&tail)
            ),
        );
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.protocol() && self.fatal.is_none() {
            self.check_startups(now);
        }
        if self.grace_until.is_some_and(|g| g <= now) {
            self.grace_until = None;
            for s in &self.slots {
                if let Some(w) = s.worker.as_ref().filter(|w| !w.exited) {
                    worker::signal_group(w.pid, libc::SIGKILL);
                }
            }
        }
        let Some(limit) = self.config.timeout else {
            return;
        };
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_ref().filter(|w| !w.gone()) else {
                continue;
            };
            let since = if self.protocol() {
                w.running.map(|(_, s)| s)
            } else {
                Some(w.started)
            };
            if since.is_none_or(|s| s + limit > now) {
                continue;
            }
            let generation = w.generation;
            if self.protocol() {
                self.lose(slot, generation, LossCause::Timeout(limit));
            } else {
                let (pid, tail) = (w.pid, w.tail.text());
                worker::signal_group(pid, libc::SIGKILL);
                self.record(TestRecord {
                    index: slot,
                    id: format!("worker {}", label(slot)),
                    file: String::new(),
                    class: None,
                    outcome: Outcome::TimedOut,
                    duration: limit.as_secs_f64(),
                    slot: Some(slot),
                    worker_id: Some(format!("{slot}.{generation}")),
                    phases: Vec::new(),
                    longrepr: Some(format!("timed out after {limit:.0?}: the command was killed; its last output:\n{tail}")),
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
        }
    }

    /// Once every worker is through with its tests (said bye, or is gone),
    /// the controller is told to end, so that its teardown and the workers'
    /// exits overlap instead of following each other.
    fn stop_controller_when_done(&mut self) {
        if self.controller.is_none() || self.clone_tasks > 0 {
            return;
        }
        let done = self.slots.iter().all(|s| {
            s.retired
                || s.worker
                    .as_ref()
                    .is_some_and(|w| w.said_bye() || w.exited || w.gone())
        });
        if done {
            let grace = self.config.grace;
            let controller = self.controller.take();
            self.controller_stop = Some(tokio::spawn(async move {
                if let Some(controller) = controller {
                    controller.stop(grace).await;
                }
            }));
        }
    }

    /// The loop ends when no worker is alive and no clone is being made.
    fn finished(&self) -> bool {
        if self.clone_tasks > 0 {
            return false;
        }
        let alive = self
            .slots
            .iter()
            .any(|s| s.worker.as_ref().is_some_and(|w| !w.exited));
        if alive {
            return false;
        }
        // Every slot either has no worker coming or is done.
        self.stopping
            || self.fatal.is_some()
            || self
                .slots
                .iter()
                .all(|s| s.retired || s.worker.as_ref().is_some_and(|w| w.gone()))
            || !self.protocol() && self.slots.iter().all(|s| s.worker.is_some())
    }

    async fn finish(mut self) -> RunReport {
        for s in &self.slots {
            if let Some(w) = s.worker.as_ref().filter(|w| !w.exited) {
                worker::signal_group(w.pid, libc::SIGKILL);
            }
        }
        self.emit(RunEvent::Ending);
        // The controller ends (its configuration's cleanup runs) while the
        // clones are dropped and the summary is printed.
        if self.controller_stop.is_none() {
            let grace = self.config.grace;
            let controller = self.controller.take();
            self.controller_stop = Some(tokio::spawn(async move {
                if let Some(controller) = controller {
                    controller.stop(grace).await;
                }
            }));
        }
        self.drop_clones().await;
        let tests = self.final_records();
        let failed = tests.iter().any(|t: &TestRecord| t.outcome.is_failure());
        let not_run = tests.iter().any(|t| t.outcome == Outcome::NotRun);
        let exit_code = decide::run_exit_code(
            self.fatal.as_ref().map(|(code, _)| *code),
            self.interrupted,
            failed || not_run || !self.collect_errors.is_empty(),
            tests.is_empty(),
        );
        if self.lost_all {
            eprintln!(
                "dbfork: every worker was lost; tests that did not run are reported as not run"
            );
        }
        let report = RunReport {
            command: self.config.command.clone(),
            run_id: self.run_id.clone(),
            duration: self.started.elapsed().as_secs_f64(),
            started_at: self.started_at,
            exit_code,
            interrupted: self.interrupted,
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(slot, s)| SlotReport {
                    slot,
                    database: names::slot_clone_name(&self.run_id, slot, s.generation),
                    workers_started: s.workers_started,
                    tests_run: s.tests_run,
                    busy: s.busy,
                })
                .collect(),
            tests,
            collect_errors: self.collect_errors.clone(),
            collect_skipped: self.collect_skipped.clone(),
        };
        // The files, the timings and the summary, while the controller may
        // still be ending.
        let timed = self.protocol() && self.fatal.is_none();
        // The timings the schedule was made from, with this run's added.
        self.sinks.push(Box::new(TimingsFile {
            timings: std::mem::take(&mut self.timings),
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

    /// Teardown: every clone of this run, then anything else this process registered.
    async fn drop_clones(&mut self) {
        let names: Vec<String> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.database.clone())
            .collect();
        let backend = self.backend.clone();
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
        for failure in failures {
            eprintln!("dbfork: warning: could not drop {failure}; `dbfork db gc` removes it later");
        }
        for s in &mut self.slots {
            s.env = None;
        }
    }

    /// One record per collected test: its outcome, or "not run".
    fn final_records(&self) -> Vec<TestRecord> {
        match &self.tests {
            Some(items) if self.protocol() => items
                .iter()
                .enumerate()
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

    fn note(&mut self, message: &str) {
        self.emit(RunEvent::Note(message));
    }

    fn worker_status(&mut self, slot: usize, status: &str) {
        self.emit(RunEvent::Worker { slot, status });
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

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
use crate::error::{exit, RunError};
use crate::machine::{indent, CloneFailure, Command, Ending, Exit, Input, Machine, Params, Sig};
use crate::progress::{label, Progress};
use crate::sinks::{ReportFiles, RunEvent, Sink, TimingsFile, TraceFile};
use crate::timings::Timings;
use crate::worker::{self, Echo, Environment, Tail};
use crate::{adapters, template, Adapter, Order, RunConfig};
use dbfork_meta::report::{Outcome, RunReport, TestRecord, Try, TryKind};

// How often the run renews its clones' heartbeat (other hosts' gc waits an hour).
use dbfork_engine::ops::HEARTBEAT_EVERY;

/// How many clones are made at the same time.
const CLONE_CONCURRENCY: usize = 4;

mod leasing;
mod prepare;
mod rundir;
mod signals;
mod teardown;
mod workers;

pub use prepare::{fingerprint, prepare, Prepared};
use prepare::{fit_jobs, forks};
pub use rundir::collect_stale_run_dirs;
use rundir::{RunDir, RUN_DIR_PREFIX};
pub use signals::Signals;
use signals::{signal_number, watch_signals};

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
    /// A clone dropped during the run was not there any more: something
    /// else dropped it (the teardown names it).
    Vanished(String),
    /// A clone could not be dropped during the run: the teardown tries
    /// again, and asks whether the server is still there.
    NotDropped(String),
    /// The database did something for the run (for the timeline).
    Database {
        what: &'static str,
        name: String,
        seconds: f64,
    },
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
    /// Per test that runs more than once: its tries so far, until it is reported.
    tries: HashMap<usize, Vec<(TryKind, TestRecord)>>,
    /// `dbfork bisect`'s finding, once made.
    bisect: Option<dbfork_meta::report::BisectReport>,
    /// The test command's Python interpreter, as its controller said.
    python: Option<String>,
    /// Clones found gone when dropped during the run, and those that could
    /// not be dropped then.
    vanished: Vec<String>,
    not_dropped: Vec<String>,
    progress: Progress,
    /// Besides the terminal: the report files (and, at the end, the timings file).
    sinks: Vec<Box<dyn Sink>>,
    /// The controller's end, under way once every worker is done with its tests.
    controller_stop: Option<tokio::task::JoinHandle<()>>,
    /// `--serve-url`: the clones come from a running `dbfork serve`.
    leasing: Option<leasing::Leasing>,
    started: Instant,
    started_at: f64,
}

/// Runs the suite prepared in `prepared` on `backend` and returns its report
/// (also written to the report files and the timings store).
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
    let (method, fitted, leasing) = match admit(&backend, &mut config, &configured).await {
        Ok(admitted) => admitted,
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
    let build = build_template(
        config.clone(),
        backend.clone(),
        cancel.clone(),
        progress.notes(),
        &configured,
        controller.take(),
    );
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
        Launch {
            run_id,
            method,
            adapter,
            socket,
            pythonpath,
            events: events_tx,
            cancel,
            timings,
            progress,
            leasing,
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

/// What the run checks on the server before anything is made: the clone
/// method exists there, and the workers fit its free connections (with a
/// note when `-j auto` was fitted); and the service it leases from, if any.
async fn admit(
    backend: &AnyBackend,
    config: &mut RunConfig,
    configured: &Configured,
) -> Result<(CloneMethod, Option<String>, Option<leasing::Leasing>), RunError> {
    let method = CloneMethod::parse(backend.kind(), &config.clone_method)?;
    if config.fresh_transactional && backend.kind() == dbfork_engine::url::Kind::Mysql {
        dbfork_meta::say!(
            "dbfork: note: --fresh-transactional on MySQL/MariaDB copies every table for each transactional test, which measured about 2x slower than Django's flush on the example project (docs/benchmarks.md); it pays off on PostgreSQL and SQLite"
        );
    }
    let fitted = fit_jobs(backend, config, configured.django.as_ref()).await?;
    let leasing = match config.serve_url.as_deref() {
        Some(url) => Some(leasing::Leasing::new(url)?),
        None => None,
    };
    Ok((method, fitted, leasing))
}

/// Builds, restores or reuses the run's template; gives the controller back
/// (the workers may be forked from it).
async fn build_template(
    config: RunConfig,
    backend: Arc<AnyBackend>,
    cancel: Cancel,
    notes: crate::progress::Notes,
    configured: &Configured,
    mut controller: Option<Controller>,
) -> (Result<ops::Template, RunError>, Option<Controller>) {
    let result = template::prepare(
        &config,
        &backend,
        configured,
        controller.as_mut(),
        &cancel,
        &notes,
    )
    .await;
    (result, controller)
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

/// What an [`Executor`] is launched with besides its configuration and backend.
struct Launch {
    run_id: String,
    method: CloneMethod,
    adapter: Adapter,
    socket: PathBuf,
    pythonpath: Option<String>,
    events: mpsc::UnboundedSender<Event>,
    cancel: Cancel,
    timings: Timings,
    progress: Progress,
    leasing: Option<leasing::Leasing>,
    started: Instant,
    started_at: f64,
}

impl Executor {
    fn new(
        config: RunConfig,
        backend: Arc<AnyBackend>,
        configured: &Configured,
        parts: Launch,
    ) -> Executor {
        let slots = config.jobs.max(1);
        let protocol = parts.adapter.speaks_protocol();
        let params = Params {
            run_id: parts.run_id.clone(),
            slots,
            protocol,
            aliases: config.aliases.len(),
            fresh_transactional: config.fresh_transactional,
            dist: config.dist,
            order: config.order,
            only: config
                .only
                .as_ref()
                .map(|ids| std::sync::Arc::new(ids.iter().cloned().collect())),
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
            retries: config.retries,
            classify: config.classify,
            bisect: config.bisect.clone(),
            pinned: config.pinned.clone().map(std::sync::Arc::new),
            bisect_failures: config.bisect_failures,
        };
        let sinks = sinks(&config, &parts);
        Executor {
            machine: Machine::new(params, parts.timings, parts.started),
            // Without an adapter each slot's command is one unit of the report.
            tries: HashMap::new(),
            bisect: None,
            python: configured.python.clone(),
            vanished: Vec::new(),
            not_dropped: Vec::new(),
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
            leasing: parts.leasing,
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
            Command::DropClone { name, replaced } => self.drop_in_background(name, replaced),
            Command::Send { conn, message } => self.send(conn, &message),
            Command::GrantFresh { conn, name } => {
                let name = self.database_of(&name);
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
                self.append_output(&mut record, output_of);
                self.finished_test(record);
            }
            Command::Tried {
                record,
                kind,
                output_of,
            } => self.tried(record, kind, output_of),
            Command::Bisected(report) => self.bisect = Some(report),
            Command::Concluded {
                index,
                pick,
                diagnosis,
            } => self.concluded(index, pick, diagnosis),
        }
    }

    /// One try of a test that runs more than once: shown, and kept until
    /// the test is reported.
    fn tried(&mut self, mut record: TestRecord, kind: TryKind, output_of: Option<(usize, usize)>) {
        self.append_output(&mut record, output_of);
        self.emit(RunEvent::Tried {
            record: &record,
            kind,
        });
        let tries = self.tries.entry(record.index).or_default();
        tries.push((kind, record));
    }

    /// A test that ran more than once is reported: its try `pick` with
    /// every try, and its class.
    fn concluded(
        &mut self,
        index: usize,
        pick: usize,
        diagnosis: Option<dbfork_meta::report::Diagnosis>,
    ) {
        let tries = self.tries.remove(&index).unwrap_or_default();
        let Some((_, picked)) = tries.get(pick).or(tries.first()) else {
            return;
        };
        let mut record = picked.clone();
        record.tries = tries.iter().map(|(kind, r)| Try::of(*kind, r)).collect();
        record.diagnosis = diagnosis;
        self.finished_test(record);
    }

    /// A crash's or timeout's record gets the last output of its worker.
    fn append_output(&self, record: &mut TestRecord, output_of: Option<(usize, usize)>) {
        if output_of.is_some() {
            // Let the output pumps catch the last lines.
            std::thread::sleep(Duration::from_millis(20));
            let output = self.output_of(output_of);
            record.longrepr.get_or_insert_default().push_str(&output);
        }
    }

    /// A test is reported: shown, and kept for the report.
    fn finished_test(&mut self, record: TestRecord) {
        self.emit(RunEvent::TestFinished(&record));
        if let Some(place) = self.records.get_mut(record.index) {
            *place = Some(record);
        }
    }

    /// The database behind the machine's clone `name`: a leased one's
    /// (`--serve-url`), else the name itself.
    fn database_of(&self, name: &str) -> String {
        match &self.leasing {
            Some(leasing) => leasing.database(name),
            None => name.to_string(),
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
        if let Some(leasing) = &self.leasing {
            leasing.adopt(&self.backend, &entry.name).await?;
        }
        let name = entry.name.clone();
        self.template = Some(entry);
        self.emit(RunEvent::Database {
            what: "template",
            name: &name,
            seconds: self.started.elapsed().as_secs_f64(),
        });
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
            worker::signal_group(p.pid, dbfork_engine::sys::SIGKILL);
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
        if let Some(leasing) = self.leasing.clone() {
            let backend = self.backend.clone();
            tokio::spawn(async move {
                let result = leasing.lease(&backend, wanted).await;
                let _ = events.send(Event::Input(done(result)));
            });
            return;
        }
        tokio::spawn(async move {
            let _permit = permits.acquire().await;
            let owner = Owner::this_process();
            let started = Instant::now();
            let name = wanted.join(", ");
            let result = ops::make_named_clones(
                &backend, &template, &run_id, wanted, &owner, &options, &cancel,
            )
            .await;
            if result.is_ok() {
                let seconds = started.elapsed().as_secs_f64();
                let what = "clone";
                let _ = events.send(Event::Database {
                    what,
                    name,
                    seconds,
                });
            }
            let result = result.map_err(|e| match e {
                dbfork_engine::Error::Interrupted => CloneFailure::Interrupted,
                e => CloneFailure::Error(e.to_string()),
            });
            let _ = events.send(Event::Input(done(result)));
        });
    }

    /// Drops clone `name` in the background (what is left is dropped at the
    /// end); a leased one is returned, to be recreated by the service. A
    /// `replaced` worker's clone is first looked for (did it vanish?).
    fn drop_in_background(&mut self, name: String, replaced: bool) {
        if let Some(leasing) = self.leasing.clone().filter(|l| l.holds(&name)) {
            let events = self.events.clone();
            tokio::spawn(async move {
                leasing.give_back(&name).await;
                let _ = events.send(Event::Input(Input::CloneDropped));
            });
            return;
        }
        let (backend, events, deadline) = (
            self.backend.clone(),
            self.events.clone(),
            self.config.drop_timeout,
        );
        tokio::spawn(async move {
            // A worker's clone replaced after a failure may be gone already:
            // not by this run's doing, which the teardown must say. (Not
            // asked of the fresh clones of transactional tests: one per test.)
            if replaced {
                if let Ok(existing) = backend.databases(&name).await {
                    if !existing.contains(&name) {
                        let _ = events.send(Event::Vanished(name.clone()));
                    }
                }
            }
            let started = Instant::now();
            match ops::drop_entry(&backend, &name, deadline).await {
                Ok(()) => {
                    let seconds = started.elapsed().as_secs_f64();
                    let what = "drop";
                    let _ = events.send(Event::Database {
                        what,
                        name,
                        seconds,
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        "could not drop {name} yet ({e}); it is dropped at the end of the run"
                    );
                    let _ = events.send(Event::NotDropped(name));
                }
            }
            let _ = events.send(Event::Input(Input::CloneDropped));
        });
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Controller(message) => self.controller_said(message),
            Event::Vanished(name) => self.vanished.push(name),
            Event::NotDropped(name) => self.not_dropped.push(name),
            Event::Database {
                what,
                name,
                seconds,
            } => self.emit(RunEvent::Database {
                what,
                name: &name,
                seconds,
            }),
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

    /// Tells every sink (the terminal, the report files, the timings).
    fn emit(&mut self, event: RunEvent) {
        self.progress.event(&event);
        for sink in &mut self.sinks {
            sink.event(&event);
        }
    }
}

/// The run's sinks besides the terminal: the report files, the recording
/// (not of a bisection: the runs kept are what it reads its suspects from)
/// and the trace.
fn sinks(config: &RunConfig, parts: &Launch) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = vec![Box::new(ReportFiles {
        junit: config.junit.clone(),
        json: config.json.clone(),
    })];
    // A bisection's probes are not a run of the suite to keep (the runs
    // kept are what it reads its suspects from).
    let keep_runs = if config.bisect.is_some() {
        0
    } else {
        config.keep_runs
    };
    if let Some(recording) = crate::recording::Recording::start(
        &config.state_dir,
        &parts.run_id,
        keep_runs,
        parts.started,
    ) {
        sinks.push(Box::new(recording));
    }
    if let Some(path) = &config.trace {
        sinks.push(Box::new(TraceFile {
            path: path.clone(),
            started: parts.started,
            lines: Vec::new(),
        }));
    }
    sinks
}

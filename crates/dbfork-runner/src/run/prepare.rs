//! Before the run: the command checked, the run's private directory made,
//! the controller started and configured as the tests are ([`prepare`]);
//! what the template would be ([`fingerprint`]); the workers fitted to the
//! server's free connections ([`fit_jobs`]).

use super::*;

/// A run that has started: its private directory, signal handling and, for
/// a test tool dbfork talks to, its controller, configured as the tests are.
/// What the controller found decides the database server (when `--db` is not
/// given) and the template; [`run`] does the rest.
pub struct Prepared {
    pub(super) config: RunConfig,
    pub(super) adapter: Adapter,
    pub(super) run_id: String,
    pub(super) run_dir: RunDir,
    pub(super) pythonpath: Option<String>,
    pub(super) events: (mpsc::UnboundedSender<Event>, mpsc::UnboundedReceiver<Event>),
    pub(super) cancel: Cancel,
    pub(super) controller: Option<Controller>,
    pub(super) configured: Configured,
    pub(super) started: Instant,
    pub(super) started_at: f64,
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
    mut config: RunConfig,
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
    if config.cov && !adapter.has_controller() {
        return Err(RunError::Usage(
            "--cov needs a Python test command dbfork configures once (pytest, or Django's manage.py test); another command can measure its own coverage in each worker".to_string(),
        ));
    }
    crate::prepare_state_dir(&config.state_dir);
    resolve_order(&mut config, adapter.speaks_protocol())?;
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
    let vars = controller_vars(&mut prepared, tool, server)?;
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
    if prepared.config.cov {
        // Before any worker starts: the data of earlier runs goes.
        if let Err(why) = crate::coverage::erase(configured.python.as_deref()) {
            controller.stop(prepared.config.grace).await;
            return Err(RunError::Usage(why));
        }
    }
    prepared.controller = Some(controller);
    prepared.configured = configured;
    Ok(prepared)
}

/// The controller's environment: the support files on PYTHONPATH (kept
/// for the workers too), the run's id, whether it forks the workers, and
/// the server when it is known already.
fn controller_vars(
    prepared: &mut Prepared,
    tool: &dyn adapters::Tool,
    server: Option<&DbUrl>,
) -> Result<Vec<(String, String)>, RunError> {
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
    if forks(&prepared.config, prepared.adapter) {
        vars.push((env::FORKING.to_string(), "1".to_string()));
    }
    if prepared.config.cov {
        vars.push((env::COV.to_string(), "1".to_string()));
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
        vars.push((env::DATABASE_URL.to_string(), url));
    }
    Ok(vars)
}

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
pub(super) fn forks(config: &RunConfig, adapter: Adapter) -> bool {
    config.fork && adapter == Adapter::Pytest && cfg!(target_os = "linux")
}

/// The connections a run holds besides one per worker and database alias:
/// the clone makers' and dbfork's own.
pub(super) const CONNECTIONS_OF_DBFORK: u64 = CLONE_CONCURRENCY as u64 + 2;

/// Fits the number of workers to the server's free connections (each
/// worker holds one per database alias): `-j auto` takes fewer (and says
/// so), a `-j` given that does not fit is an error naming both numbers. A
/// server whose limit cannot be read is not held to it.
pub(super) async fn fit_jobs(
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

/// Where the seed of the last shuffled run is kept (`--order shuffle:last`).
const ORDER_SEED_FILE: &str = "order-seed";

/// `--order shuffle` gets a new seed, `shuffle:last` the last shuffled
/// run's; a shuffled run says its seed and keeps it for `shuffle:last`.
fn resolve_order(config: &mut RunConfig, handed_out: bool) -> Result<(), RunError> {
    if config.order == Order::Recorded {
        return recorded_order(config, handed_out);
    }
    let path = config.state_dir.join(ORDER_SEED_FILE);
    let seed = match config.order {
        Order::Shuffle(Some(seed)) => seed,
        Order::Shuffle(None) => u64::from_str_radix(&dbfork_engine::files::random_hex(), 16).unwrap_or(1),
        Order::ShuffleLast => last_seed(&path).ok_or_else(|| {
            RunError::Usage(format!(
                "--order shuffle:last: no shuffled run left its seed in {}; run with --order shuffle (or shuffle:SEED) first",
                path.display()
            ))
        })?,
        Order::Longest | Order::File | Order::Reverse | Order::Recorded => return Ok(()),
    };
    config.order = Order::Shuffle(Some(seed));
    if !handed_out {
        dbfork_meta::say!("dbfork: note: --order changes nothing without an adapter (each worker runs the whole command in its own order)");
        return Ok(());
    }
    if let Err(e) = dbfork_engine::files::write_replacing(&path, seed.to_string().as_bytes()) {
        tracing::warn!("could not keep the order's seed in {}: {e}", path.display());
    }
    dbfork_meta::say!(
        "dbfork: the tests go out in a shuffled order, seed {seed}: --order shuffle:{seed} (or shuffle:last) hands them out in this order again"
    );
    Ok(())
}

/// `--order recorded`: the latest recorded run's order, each worker's
/// tests for the same slot; what it did not run, in collection order after.
fn recorded_order(config: &mut RunConfig, handed_out: bool) -> Result<(), RunError> {
    let runs = config.state_dir.join(crate::recording::RUNS_DIR);
    let latest = crate::recording::recordings(&runs)
        .into_iter()
        .map(|(name, _)| (crate::recording::read_order(&runs.join(&name)), name))
        .find(|(order, _)| !order.is_empty());
    let Some((order, name)) = latest else {
        return Err(RunError::Usage(format!(
            "--order recorded: no recorded run in {} to take the order from; `dbfork run` records each run there",
            runs.display()
        )));
    };
    config.order = Order::File;
    if !handed_out {
        dbfork_meta::say!("dbfork: note: --order changes nothing without an adapter (each worker runs the whole command in its own order)");
        return Ok(());
    }
    let workers = order.keys().max().map_or(0, |k| k + 1);
    let mut lists = vec![Vec::new(); workers];
    for (slot, tests) in order {
        lists[slot] = tests;
    }
    let exactly = if workers == config.jobs {
        String::new()
    } else {
        format!(
            " (it had {workers} worker{}, this run {}: -j {workers} repeats it exactly)",
            if workers == 1 { "" } else { "s" },
            config.jobs
        )
    };
    dbfork_meta::say!(
        "dbfork: the tests go out as in run {name}: each worker the tests of the same worker there, in their order{exactly}"
    );
    config.pinned = Some(lists);
    Ok(())
}

/// The seed in `path`, a regular file holding a number.
fn last_seed(path: &std::path::Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() > 64 {
        return None;
    }
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

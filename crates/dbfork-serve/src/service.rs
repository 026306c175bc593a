//! The service's state and what each request does to it: templates by the
//! client's hash, each with its phase and, once ready, a pool of clones made
//! ahead ([`dbfork_engine::pool::Pool`]); leases of clones; the background
//! task that makes and drops the pools' clones. The state sits behind one
//! mutex that is never held across an await: every database operation runs
//! outside it and reports back.
//!
//! A template's phases:
//!
//! ```text
//!  init ──> Starting ──> Building (the client fills it) ──finalize──> Ready (pool)
//!              │ the registry has it ready ─────────────────────────────^
//!  discard ──> Discarded (from any phase; init starts it again)
//! ```
//!
//! A clone's IntegreSQL id is its number in its template's pool: the clone
//! is `dbfork_<pool run id>_<id>`, registered, owned by the service.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dbfork_engine::fingerprint::Recipe;
use dbfork_engine::ops::{self, Begun, Building, Cancel, CloneOptions, TemplateOptions};
use dbfork_engine::pool::{Grant, Pool};
use dbfork_engine::registry::Entry;
use dbfork_engine::{names, AnyBackend, Backend, CloneMethod};
use tokio::sync::Notify;

mod filler;
mod leases;
pub use leases::LeaseView;

/// A pool's clones: (making, ready, leased, dropping).
pub type Counts = (usize, usize, usize, usize);

/// How the service runs, from the settings of `dbfork serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Clones of each template kept ready ahead.
    pub pool_size: usize,
    /// The most clones of one template at once.
    pub pool_max: usize,
    /// The most clones of all templates at once: past it, the least recently
    /// used templates' ready clones are dropped for the one asked for.
    pub max_databases: usize,
    /// A lease not returned nor renewed within this is taken back (its
    /// clone dropped); `None`: a lease lasts until returned (IntegreSQL's way).
    pub lease_ttl: Option<Duration>,
    /// How long a request waits for a template to be finalized or for a
    /// clone (IntegreSQL's 60 s).
    pub wait: Duration,
    pub drop_timeout: Duration,
    pub lock_timeout: Duration,
    /// Clones made at the same time, over all templates.
    pub clone_concurrency: usize,
    /// A secret every request must carry (`Authorization: Bearer ...`).
    pub token: Option<String>,
    /// The most bytes all clones may take (each counted as its template's
    /// size, as the server tells it); `None`: no such cap.
    pub max_bytes: Option<u64>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            pool_size: 4,
            pool_max: 32,
            max_databases: 256,
            lease_ttl: None,
            wait: Duration::from_secs(60),
            drop_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(30 * 60),
            clone_concurrency: 4,
            token: None,
            max_bytes: None,
        }
    }
}

/// Why a request was refused: its HTTP status and a message that says what
/// to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn engine(e: dbfork_engine::Error) -> Refusal {
        Refusal::new(500, e.to_string())
    }

    fn unknown(hash: &str) -> Refusal {
        Refusal::new(
            404,
            format!("template not found: no template with the hash `{hash}` was initialized (POST /api/v1/templates first)"),
        )
    }
}

/// A database handed to a client: its name as the client names it (SQLite:
/// the file's path) and, for a clone, its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub database: String,
    /// Its URL, password included (dbfork's addition to IntegreSQL's config).
    pub url: String,
    pub id: Option<usize>,
    /// The lease's number (unique in the service), for a clone.
    pub lease: Option<u64>,
}

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// A new template for the client to fill, then finalize.
    Fill(Handed),
    /// The hash is known already (being filled, or ready): IntegreSQL's 423.
    Known,
}

enum Phase {
    /// `init` is registering it.
    Starting,
    /// The client fills it; `None` while `finalize` seals it.
    Building {
        name: String,
        building: Option<Box<Building>>,
    },
    Ready {
        template: Entry,
    },
    Discarded,
}

struct Slot {
    phase: Phase,
    pool: Pool<u64>,
    /// Names the pool's clones: `dbfork_<run_id>_<n>`, `n` the id.
    run_id: String,
    /// Clones granted to leases whose request waits for them.
    granted: HashMap<u64, String>,
    /// Clones the filler is making or dropping now.
    busy: HashSet<String>,
    /// When a test last asked for one of its clones.
    last_used: Instant,
    /// Its ready clones were dropped for another template's: it makes none
    /// ahead until a test asks again.
    evicted: bool,
    /// A template another dbfork made (`dbfork run`'s): a discard drops its
    /// clones and forgets it, and leaves it to its maker.
    adopted: bool,
    /// What one of its clones takes: its template's size (0: not known).
    clone_bytes: u64,
}

impl Slot {
    fn new(phase: Phase, config: &ServeConfig) -> Slot {
        let pool = Pool::new(config.pool_size, config.pool_max);
        Slot {
            phase,
            pool: match config.lease_ttl {
                Some(ttl) => pool.with_lease_expiry(ttl),
                None => pool,
            },
            run_id: names::new_run_id(),
            granted: HashMap::new(),
            busy: HashSet::new(),
            last_used: Instant::now(),
            evicted: false,
            adopted: false,
            clone_bytes: 0,
        }
    }

    fn clone_name(&self, id: usize) -> String {
        names::clone_name(&self.run_id, id)
    }

    fn grant(&mut self, grants: Vec<Grant<u64>>) {
        for g in grants {
            self.granted.insert(g.holder, g.name);
        }
    }

    /// The id of one of the pool's clones: `n` of `dbfork_<run_id>_<n>`.
    fn id_of(&self, name: &str) -> Option<usize> {
        let stem = names::clone_name(&self.run_id, 0);
        let stem = stem.strip_suffix('0')?;
        name.strip_prefix(stem)?.parse().ok()
    }
}

#[derive(Default)]
struct State {
    templates: HashMap<String, Slot>,
    next_lease: u64,
    draining: bool,
    /// Leases bound to a connection (by the connection's number): taken
    /// back when it closes.
    bound: HashMap<u64, Vec<(String, u64)>>,
}

/// The running service: its backend, its state, and the signals between the
/// requests and the filler.
pub struct Service {
    backend: Arc<AnyBackend>,
    config: ServeConfig,
    state: Mutex<State>,
    /// Something a waiting request may care about changed.
    changed: Notify,
    /// The filler has something to make or drop.
    work: Notify,
    cancel: Cancel,
    clone_options: CloneOptions,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl Service {
    pub fn new(backend: AnyBackend, config: ServeConfig, cancel: Cancel) -> Arc<Service> {
        let clone_options = CloneOptions {
            method: CloneMethod::default_for(backend.kind()),
            concurrency: 1,
            drop_deadline: config.drop_timeout,
        };
        Arc::new(Service {
            backend: Arc::new(backend),
            config,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            work: Notify::new(),
            cancel,
            clone_options,
            metrics: crate::metrics::Metrics::default(),
        })
    }

    pub fn backend(&self) -> &AnyBackend {
        &self.backend
    }

    /// Whether a request's `Authorization` header is the one asked for: any
    /// without a token; else `Bearer TOKEN`, compared in constant time.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(token) = &self.config.token else {
            return true;
        };
        let expected = format!("Bearer {token}");
        let given = authorization.unwrap_or_default();
        given.len() == expected.len()
            && given
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }

    /// Tells the filler and every waiting request that the state changed.
    fn wake(&self) {
        self.work.notify_one();
        self.changed.notify_waiters();
    }

    /// How long a lease lasts without a renewal (`--lease-ttl`), if it ends so.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.config.lease_ttl
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves consistent bookkeeping (every
        // change is one assignment); go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn template_options(&self) -> TemplateOptions {
        TemplateOptions {
            echo_setup: false,
            lock_wait: self.config.lock_timeout,
            drop_deadline: self.config.drop_timeout,
            ..TemplateOptions::default()
        }
    }

    /// How a client names database `name`.
    pub fn handed(&self, name: &str, id: Option<usize>, lease: Option<u64>) -> Handed {
        Handed {
            database: ops::database_reference(&self.backend, name),
            url: self
                .backend
                .url()
                .with_database(name)
                .to_url_with_password(),
            id,
            lease,
        }
    }

    /// IntegreSQL's `POST /templates`: a new template for the client to fill
    /// (`Fill`), or `Known` when the hash is being filled or is ready (on
    /// this server: also after a restart of the service).
    pub async fn init(&self, hash: &str) -> Result<Init, Refusal> {
        {
            let mut state = self.state();
            if state.draining {
                return Err(draining());
            }
            match state.templates.get(hash).map(|s| &s.phase) {
                Some(Phase::Discarded) | None => {}
                Some(_) => return Ok(Init::Known),
            }
            state
                .templates
                .insert(hash.to_string(), Slot::new(Phase::Starting, &self.config));
        }
        let begun = ops::begin_template(
            &self.backend,
            &recipe(hash),
            &self.template_options(),
            &self.cancel,
        )
        .await;
        let phase = match begun {
            Ok(Begun::Build(building)) => Phase::Building {
                name: building.name.clone(),
                building: Some(Box::new(building)),
            },
            Ok(Begun::Ready(template)) => {
                match ops::find_template(&self.backend, &template.name).await {
                    Ok(entry) => {
                        let bytes = self.measure(&entry.name).await;
                        if let Some(slot) = self.state().templates.get_mut(hash) {
                            slot.clone_bytes = bytes;
                        }
                        Phase::Ready { template: entry }
                    }
                    Err(e) => return Err(self.forget_start(hash, Refusal::engine(e))),
                }
            }
            Err(e) => return Err(self.forget_start(hash, Refusal::engine(e))),
        };
        let reply = match &phase {
            Phase::Building { name, .. } => Init::Fill(self.handed(name, None, None)),
            _ => Init::Known,
        };
        let ready = matches!(phase, Phase::Ready { .. });
        if let Some(slot) = self.state().templates.get_mut(hash) {
            slot.phase = phase;
        }
        if ready {
            self.work.notify_one();
        }
        self.changed.notify_waiters();
        Ok(reply)
    }

    fn forget_start(&self, hash: &str, refusal: Refusal) -> Refusal {
        self.state().templates.remove(hash);
        self.changed.notify_waiters();
        refusal
    }

    /// dbfork's `adopt`: serves clones of the template `name` that another
    /// dbfork (`dbfork run`) made and registered on this server, keeping
    /// `ready` of them made ahead (the pool size when `None`). Again: only
    /// the number changes.
    pub async fn adopt(&self, name: &str, ready: Option<usize>) -> Result<(), Refusal> {
        if self.retarget(name, ready)? {
            return Ok(());
        }
        let entry = ops::find_template(&self.backend, name)
            .await
            .ok()
            .filter(|entry| entry.name == name)
            .ok_or_else(|| {
                Refusal::new(
                    404,
                    format!("no ready template named `{name}` is registered on this service's server ({}): dbfork run and dbfork serve must use the same server (--db)", dbfork_engine::url::mask_raw(&self.backend.url().to_url_with_password())),
                )
            })?;
        let bytes = self.measure(name).await;
        {
            let mut state = self.state();
            if state.draining {
                return Err(draining());
            }
            // Another adopt of the same name while this one looked.
            if !state.templates.contains_key(name) {
                let mut slot = Slot::new(Phase::Ready { template: entry }, &self.config);
                slot.adopted = true;
                slot.clone_bytes = bytes;
                state.templates.insert(name.to_string(), slot);
            }
        }
        self.retarget(name, ready)?;
        Ok(())
    }

    /// Sets the number of ready clones of the known, ready template `name`:
    /// whether it is known.
    fn retarget(&self, name: &str, ready: Option<usize>) -> Result<bool, Refusal> {
        let mut state = self.state();
        if state.draining {
            return Err(draining());
        }
        let Some(slot) = state.templates.get_mut(name) else {
            return Ok(false);
        };
        match slot.phase {
            Phase::Ready { .. } => {}
            Phase::Discarded => {
                state.templates.remove(name);
                return Ok(false);
            }
            Phase::Starting | Phase::Building { .. } => {
                return Err(Refusal::new(
                    409,
                    format!("`{name}` is a template a client is building through the service: wait for its finalize"),
                ))
            }
        }
        slot.pool.set_target(
            ready
                .unwrap_or(self.config.pool_size)
                .min(self.config.pool_max),
        );
        slot.evicted = false;
        slot.last_used = Instant::now();
        drop(state);
        self.work.notify_one();
        Ok(true)
    }

    /// The size of template `name`, which each of its clones takes too
    /// (0 when the server does not tell: no bytes cap for it then).
    async fn measure(&self, name: &str) -> u64 {
        if self.config.max_bytes.is_none() {
            return 0;
        }
        match self.backend.database_size(name).await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!("cannot measure {name} for --max-bytes: {e}");
                0
            }
        }
    }

    /// IntegreSQL's `PUT /templates/{hash}`: the client filled it; seal it
    /// and start its pool. A ready one stays ready.
    pub async fn finalize(&self, hash: &str) -> Result<(), Refusal> {
        let building = loop {
            let notified = self.changed.notified();
            {
                let mut state = self.state();
                let Some(slot) = state.templates.get_mut(hash) else {
                    return Err(Refusal::unknown(hash));
                };
                match &mut slot.phase {
                    Phase::Ready { .. } => return Ok(()),
                    Phase::Discarded => return Err(discarded(hash)),
                    Phase::Building { building, .. } if building.is_some() => {
                        break building.take();
                    }
                    // Another finalize seals it, or init is still registering it.
                    Phase::Building { .. } | Phase::Starting => {}
                }
            }
            self.wait(notified).await?;
        };
        let Some(building) = building else {
            return Err(Refusal::unknown(hash));
        };
        let finalized = async {
            let template = ops::finalize_template(
                &self.backend,
                *building,
                &self.template_options(),
                &self.cancel,
            )
            .await?;
            let entry = ops::find_template(&self.backend, &template.name).await?;
            Ok::<_, dbfork_engine::Error>((self.measure(&entry.name).await, entry))
        }
        .await;
        let mut state = self.state();
        let result = match (finalized, state.templates.get_mut(hash)) {
            (Ok((bytes, entry)), Some(slot)) => {
                slot.phase = Phase::Ready { template: entry };
                slot.clone_bytes = bytes;
                Ok(())
            }
            (Ok(_), None) => Err(Refusal::unknown(hash)),
            (Err(e), slot) => {
                if let Some(slot) = slot {
                    slot.phase = Phase::Discarded;
                }
                Err(Refusal::engine(e))
            }
        };
        drop(state);
        self.wake();
        result
    }

    /// IntegreSQL's `DELETE /templates/{hash}`: a template being filled is
    /// dropped; a ready one's clones are dropped and so is the template.
    pub async fn discard(&self, hash: &str) -> Result<(), Refusal> {
        let (building, template) = {
            let mut state = self.state();
            let Some(slot) = state.templates.get_mut(hash) else {
                return Err(Refusal::unknown(hash));
            };
            let phase = std::mem::replace(&mut slot.phase, Phase::Discarded);
            self.reclaim_for_discard(&slot.pool);
            slot.pool.drain_all();
            slot.granted.clear();
            match phase {
                Phase::Building { building, .. } => (building, None),
                Phase::Ready { template } if !slot.adopted => (None, Some(template)),
                Phase::Ready { .. } | Phase::Starting | Phase::Discarded => (None, None),
            }
        };
        self.wake();
        if let Some(building) = building {
            ops::discard_template(&self.backend, *building, &self.template_options()).await;
        }
        self.until_pool_empty(hash).await;
        if let Some(template) = template {
            ops::drop_entry(&self.backend, &template.name, self.config.drop_timeout)
                .await
                .map_err(Refusal::engine)?;
        }
        Ok(())
    }

    /// Counts the leases a discard (or reset, or drain) ends.
    fn reclaim_for_discard(&self, pool: &Pool<u64>) {
        let leased = pool.counts().2 as u64;
        if leased > 0 {
            self.metrics
                .reclaimed
                .get_or_create(&crate::metrics::Reason { reason: "discard" })
                .inc_by(leased);
        }
    }

    /// The text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode(&self.counts())
    }

    /// Waits until the filler has dropped every clone of `hash`'s pool.
    async fn until_pool_empty(&self, hash: &str) {
        loop {
            let notified = self.changed.notified();
            {
                let state = self.state();
                let empty = state.templates.get(hash).is_none_or(|slot| {
                    let (making, ready, leased, recycling) = slot.pool.counts();
                    making + ready + leased + recycling == 0
                });
                if empty {
                    return;
                }
            }
            self.work.notify_one();
            if tokio::time::timeout(self.config.drop_timeout, notified)
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// IntegreSQL's `GET /templates/{hash}/tests`: a clone for one test.
    /// Waits (up to the configured wait) for the template to be finalized
    /// and for a clone to be ready.
    pub async fn lease(&self, hash: &str) -> Result<Handed, Refusal> {
        let asked_at = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.wait;
        let lease = {
            let mut state = self.state();
            state.next_lease += 1;
            state.next_lease
        };
        // A request dropped while it waits (its client went away) waits no
        // more, and a clone granted to it meanwhile goes back.
        let mut waiting = Waiting {
            service: self,
            hash,
            lease,
            asked: false,
        };
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.state();
                if state.draining {
                    return Err(draining());
                }
                let Some(slot) = state.templates.get_mut(hash) else {
                    return Err(Refusal::unknown(hash));
                };
                match &slot.phase {
                    Phase::Discarded => return Err(discarded(hash)),
                    Phase::Starting | Phase::Building { .. } => {}
                    Phase::Ready { .. } => {
                        if let Some(max) =
                            self.config.max_bytes.filter(|max| slot.clone_bytes > *max)
                        {
                            return Err(Refusal::new(
                                507,
                                format!("one clone of `{hash}` takes {} bytes, more than --max-bytes ({max}): raise it", slot.clone_bytes),
                            ));
                        }
                        slot.last_used = Instant::now();
                        if slot.evicted {
                            slot.evicted = false;
                            slot.pool.set_target(self.config.pool_size);
                        }
                        let got = if waiting.asked {
                            slot.granted.remove(&lease)
                        } else {
                            waiting.asked = true;
                            self.work.notify_one();
                            slot.pool.acquire(lease, Instant::now())
                        };
                        if let Some(name) = got {
                            waiting.asked = false;
                            self.metrics.leases.inc();
                            self.metrics
                                .lease_wait
                                .observe(asked_at.elapsed().as_secs_f64());
                            return Ok(self.handed(&name, slot.id_of(&name), Some(lease)));
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                drop(waiting);
                return Err(Refusal::new(
                    503,
                    format!("no clone of `{hash}` became ready within {:?}: the template is not finalized, or every clone is leased and the pool is at its maximum (--pool-max); return clones (unlock) or raise the maximum", self.config.wait),
                ));
            }
        }
    }

    /// A lease whose request stopped waiting: it waits no more, and a clone
    /// granted to it meanwhile goes back clean.
    fn give_up(&self, hash: &str, lease: u64) {
        let mut state = self.state();
        if let Some(slot) = state.templates.get_mut(hash) {
            slot.pool.forget(&lease);
            if let Some(name) = slot.granted.remove(&lease) {
                let grants = slot
                    .pool
                    .give_back(&name, Instant::now())
                    .unwrap_or_default();
                slot.grant(grants);
            }
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// IntegreSQL's `POST .../tests/{id}/unlock`: the client is done and the
    /// clone is clean: it is handed out again as it is.
    pub fn unlock(&self, hash: &str, id: usize) -> Result<(), Refusal> {
        self.with_clone(hash, id, |slot, name| {
            if let Some(grants) = slot.pool.give_back(name, Instant::now()) {
                slot.grant(grants);
            }
        })
    }

    /// `POST .../tests/{id}/renew` (dbfork's): the test still uses its
    /// clone; with `--lease-ttl` its lease starts again now.
    pub fn renew(&self, hash: &str, id: usize) -> Result<(), Refusal> {
        let mut renewed = true;
        self.with_clone(hash, id, |slot, name| {
            renewed = slot.pool.renew(name, Instant::now());
        })?;
        if renewed {
            Ok(())
        } else {
            Err(Refusal::new(
                409,
                format!("test database {id} of `{hash}` is not leased (returned, or taken back after --lease-ttl): ask for another"),
            ))
        }
    }

    /// IntegreSQL's `POST .../tests/{id}/recreate`: the client is done and
    /// the clone is dirty: it is dropped and a fresh one made.
    pub fn recreate(&self, hash: &str, id: usize) -> Result<(), Refusal> {
        self.with_clone(hash, id, |slot, name| {
            slot.pool.release(name);
        })
    }

    fn with_clone(
        &self,
        hash: &str,
        id: usize,
        change: impl FnOnce(&mut Slot, &str),
    ) -> Result<(), Refusal> {
        let mut state = self.state();
        let Some(slot) = state.templates.get_mut(hash) else {
            return Err(Refusal::unknown(hash));
        };
        let name = slot.clone_name(id);
        if slot.pool.state(&name).is_none() {
            return Err(Refusal::new(
                404,
                format!("template `{hash}` has no test database {id}: use the id GET /api/v1/templates/{hash}/tests returned"),
            ));
        }
        change(slot, &name);
        drop(state);
        self.wake();
        Ok(())
    }

    /// IntegreSQL's `DELETE /admin/templates`: every template is forgotten
    /// and every clone dropped (the templates stay on the server: an init
    /// of the same hash finds them ready).
    pub async fn reset(&self) -> Result<(), Refusal> {
        let hashes: Vec<String> = self.state().templates.keys().cloned().collect();
        for hash in &hashes {
            let building = {
                let mut state = self.state();
                let Some(slot) = state.templates.get_mut(hash) else {
                    continue;
                };
                self.reclaim_for_discard(&slot.pool);
                slot.pool.drain_all();
                slot.granted.clear();
                match std::mem::replace(&mut slot.phase, Phase::Discarded) {
                    Phase::Building { building, .. } => building,
                    _ => None,
                }
            };
            if let Some(building) = building {
                ops::discard_template(&self.backend, *building, &self.template_options()).await;
            }
        }
        self.work.notify_one();
        for hash in &hashes {
            self.until_pool_empty(hash).await;
        }
        let mut state = self.state();
        state
            .templates
            .retain(|_, slot| slot.pool.counts() != (0, 0, 0, 0));
        Ok(())
    }

    /// The end (SIGTERM, SIGINT, SIGHUP): no new leases, every clone
    /// dropped, templates being filled dropped, ready templates kept.
    pub async fn drain(&self) {
        self.state().draining = true;
        self.changed.notify_waiters();
        let _ = self.reset().await;
    }

    /// Each template's hash, its phase (`starting`, `building`, `finalizing`
    /// while it is sealed, `ready`, `discarded`) and its clones by state
    /// (making, ready, leased, dropping), in hash order: `/healthz`.
    pub fn overview(&self) -> Vec<(String, &'static str, Counts)> {
        let state = self.state();
        let mut overview: Vec<_> = state
            .templates
            .iter()
            .map(|(hash, slot)| {
                let phase = match &slot.phase {
                    Phase::Starting => "starting",
                    Phase::Building { building: None, .. } => "finalizing",
                    Phase::Building { .. } => "building",
                    Phase::Ready { .. } => "ready",
                    Phase::Discarded => "discarded",
                };
                (hash.clone(), phase, slot.pool.counts())
            })
            .collect();
        overview.sort();
        overview
    }

    /// Each template's clones by state, for `/metrics`.
    pub fn counts(&self) -> Vec<crate::metrics::TemplateCounts> {
        self.overview()
            .into_iter()
            .map(|(hash, _, counts)| (hash, counts))
            .collect()
    }

    async fn wait(&self, notified: tokio::sync::futures::Notified<'_>) -> Result<(), Refusal> {
        tokio::time::timeout(self.config.wait, notified)
            .await
            .map_err(|_| {
                Refusal::new(
                    503,
                    format!("the template was not ready within {:?}", self.config.wait),
                )
            })
    }
}

/// A lease request between asking the pool and getting a clone: dropped
/// then (a timeout, or the client gone and the request with it), it gives
/// up its place.
struct Waiting<'a> {
    service: &'a Service,
    hash: &'a str,
    lease: u64,
    asked: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.asked {
            self.service.give_up(self.hash, self.lease);
        }
    }
}

/// The recipe of a client's template: its hash says what it holds.
fn recipe(hash: &str) -> Recipe {
    Recipe {
        setup: format!("integresql template {hash}"),
        ..Recipe::default()
    }
}

fn draining() -> Refusal {
    Refusal::new(
        503,
        "the service is shutting down: it hands out no more databases",
    )
}

fn discarded(hash: &str) -> Refusal {
    Refusal::new(
        410,
        format!(
            "the template `{hash}` was discarded; initialize it again (POST /api/v1/templates)"
        ),
    )
}

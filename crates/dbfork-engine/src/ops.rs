//! The operations users see, written once over [`Backend`]: build or reuse a
//! template, make clones, drop, and collect garbage. Each writes the registry
//! row before it creates anything and removes it only after the drop, so that
//! whatever happens in between, garbage collection can finish the job.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use crate::backend::{AnyBackend, Backend, CloneMethod};
use crate::cache::{self, TemplateCache};
use crate::error::{Error, Result};
use crate::fingerprint::{self, Manifest, Recipe};
use crate::names;
use crate::process::{self, Liveness, Owner};
use crate::registry::{Entry, EntryKind, State};
use crate::url::DbUrl;

/// How many lines of a failing setup command's output the error shows.
const TAIL_LINES: usize = 25;

/// Tells long operations to stop (Ctrl-C, SIGTERM). Cloned freely.
#[derive(Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The sending side of [`Cancel`].
pub struct Canceller(watch::Sender<bool>);

impl Cancel {
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    /// A token that is never cancelled.
    pub fn never() -> Cancel {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Cancel(rx)
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

#[derive(Debug, Clone)]
pub struct TemplateOptions {
    /// How long the setup command may run.
    pub build_timeout: Duration,
    /// How long to wait for another process building the same template.
    pub lock_wait: Duration,
    /// Copy the setup command's output to stderr as it comes.
    pub echo_setup: bool,
    pub drop_deadline: Duration,
    /// Where the setup command's whole output is kept (`None`: nowhere).
    pub log_dir: Option<std::path::PathBuf>,
    /// Where templates are exported after a build and restored from before one.
    pub cache: Option<TemplateCache>,
    /// Grow the template from its nearest ancestor (see [`Manifest::grows_into`])
    /// instead of building it from nothing.
    pub incremental: bool,
    /// The manifests of earlier builds of this setup: what the templates on
    /// the server were built from (the cache's files say it themselves).
    pub ancestors: Vec<Manifest>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            build_timeout: Duration::from_secs(30 * 60),
            lock_wait: Duration::from_secs(30 * 60),
            echo_setup: true,
            drop_deadline: Duration::from_secs(30),
            log_dir: None,
            cache: None,
            incremental: false,
            ancestors: Vec::new(),
        }
    }
}

/// A ready template.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Template {
    pub fingerprint: String,
    pub name: String,
    /// Whether an existing template was reused (the setup command did not run).
    pub reused: bool,
    /// Seconds spent building it (0 when reused).
    pub build_seconds: f64,
    /// What its fingerprint covers.
    #[serde(skip)]
    pub manifest: Manifest,
    /// The template cache file it was restored from (the setup did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<std::path::PathBuf>,
    /// The cache file it was exported to after this build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exported_to: Option<std::path::PathBuf>,
    /// Seconds the export took.
    #[serde(skip)]
    pub export_seconds: f64,
    /// What the caller should pass on: a damaged cache file ignored, an export that failed.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The template (or cache file) this one grew from, the setup then run on
    /// its copy; `None` for a build from nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grown_from: Option<String>,
    /// The input files added since that ancestor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_inputs: Vec<String>,
}

/// What a process needs to use one database: its environment variables and, where
/// the backend's clients need one, a client option file. MySQL and MariaDB clients
/// read `/etc/mysql/my.cnf` (whose `socket` names the system server) after their
/// `MYSQL_*` variables, so the variables alone would send `mariadb` or `mysqldump`
/// to the wrong server; a `my.cnf` in `MYSQL_HOME` is read after it and wins. The
/// file (it may hold the password) lives in a private directory removed on drop.
pub struct DatabaseEnv {
    pub vars: Vec<(String, String)>,
    dir: Option<std::path::PathBuf>,
}

/// How a client names database `name`: its name on a server, its file's path on SQLite.
pub fn database_reference(backend: &AnyBackend, name: &str) -> String {
    match backend
        .client_env(name)
        .into_iter()
        .find(|(k, _)| k == "DBFORK_SQLITE_PATH")
    {
        Some((_, path)) => path,
        None => name.to_string(),
    }
}

impl DatabaseEnv {
    /// The environment for database `name` on `backend`'s server.
    pub fn new(backend: &AnyBackend, name: &str) -> Result<DatabaseEnv> {
        let url = backend.url().with_database(name).to_url_with_password();
        let mut vars = vec![
            ("DATABASE_URL".to_string(), url.clone()),
            ("DBFORK_DATABASE_URL".to_string(), url),
            ("DBFORK_DATABASE_NAME".to_string(), name.to_string()),
            (
                "DBFORK_BACKEND".to_string(),
                backend.kind().id().to_string(),
            ),
        ];
        vars.extend(backend.client_env(name));
        let Some(options) = backend.client_option_file(name) else {
            return Ok(DatabaseEnv { vars, dir: None });
        };
        let dir = std::env::temp_dir().join(format!(
            "{CLIENT_DIR_PREFIX}{}-{}-{name}",
            process::private_dir_owner(),
            process::now()
        ));
        write_private(&dir, &options).map_err(Error::io(format!(
            "writing the client option file in {}",
            dir.display()
        )))?;
        for var in ["MYSQL_HOME", "MARIADB_HOME"] {
            vars.push((var.to_string(), dir.display().to_string()));
        }
        Ok(DatabaseEnv {
            vars,
            dir: Some(dir),
        })
    }

    /// The environment for `made[0]` (as [`DatabaseEnv::new`]) with the
    /// clones after it named for `aliases`, in order, in `DBFORK_DATABASES`:
    /// a JSON object from alias to database name (SQLite: file path).
    pub fn for_aliases(
        backend: &AnyBackend,
        made: &[MadeClone],
        aliases: &[String],
    ) -> Result<DatabaseEnv> {
        let Some(first) = made.first() else {
            return Err(Error::Interrupted);
        };
        let mut env = DatabaseEnv::new(backend, &first.name)?;
        if aliases.is_empty() {
            return Ok(env);
        }
        let mut map = serde_json::Map::new();
        for (alias, clone) in aliases.iter().zip(&made[1..]) {
            let name = database_reference(backend, &clone.name);
            map.insert(alias.clone(), serde_json::Value::String(name));
        }
        env.vars.push((
            "DBFORK_DATABASES".to_string(),
            serde_json::Value::Object(map).to_string(),
        ));
        Ok(env)
    }
}

impl Drop for DatabaseEnv {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The prefix of a client option file's private directory:
/// `<prefix><pid>-<pid namespace>-...` ([`process::private_dir_owner`]).
const CLIENT_DIR_PREFIX: &str = "dbfork-client-";

/// Removes the client option directories (a `my.cnf` with the password) of
/// dbfork processes that are gone; returns them.
pub fn collect_stale_client_dirs() -> Vec<std::path::PathBuf> {
    process::collect_stale_dirs(CLIENT_DIR_PREFIX)
}

/// Writes `dir/my.cnf`, readable by this user only.
fn write_private(dir: &std::path::Path, options: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("my.cnf"))?;
    std::io::Write::write_all(&mut file, options.as_bytes())
}

/// Builds the template of `recipe` with its setup command, or reuses the
/// ready one with its fingerprint. Two processes asking for one fingerprint
/// build it once: the other waits on the server-side lock, which the server
/// releases if the builder dies.
pub async fn ensure_template(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<Template> {
    let empty = std::sync::atomic::AtomicBool::new(false);
    let mut template = ensure_template_with(backend, recipe, options, cancel, |name| {
        let empty = &empty;
        async move {
            run_setup(backend, recipe, options, cancel, &name).await?;
            // A setup that wrote somewhere else (settings that ignore
            // DATABASE_URL) succeeds and leaves the template as it was made.
            match backend.table_count(&name).await {
                Ok(0) => empty.store(true, std::sync::atomic::Ordering::Relaxed),
                Ok(_) => {}
                Err(e) => tracing::debug!("could not count the tables of {name}: {e}"),
            }
            Ok(())
        }
    })
    .await?;
    if empty.load(std::sync::atomic::Ordering::Relaxed) {
        template
            .warnings
            .push(empty_template_warning(backend, recipe));
    }
    Ok(template)
}

/// What to say of a template the setup command left without a table.
fn empty_template_warning(backend: &AnyBackend, recipe: &Recipe) -> String {
    let variables = match backend.kind() {
        crate::url::Kind::Postgres => "DATABASE_URL (or PGDATABASE with PGHOST and PGPORT)",
        crate::url::Kind::Mysql => {
            "DATABASE_URL (or DBFORK_DATABASE_NAME with the my.cnf in MYSQL_HOME)"
        }
        crate::url::Kind::Sqlite => "DATABASE_URL (or DBFORK_SQLITE_PATH)",
    };
    format!(
        "the setup command `{}` succeeded but left the template without a single table: it \
         probably wrote to another database (its own settings' rather than the one dbfork \
         gives it). The setup must write to the database that {variables} names in its \
         environment; if the tests make their own tables, ignore this.",
        recipe.setup
    )
}

/// [`ensure_template`] where `build` fills the new template (created empty
/// and registered; given its name) instead of the setup command: a test
/// framework that builds it in its own process. An error from `build` drops
/// the half-built template.
pub async fn ensure_template_with<B, F>(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    cancel: &Cancel,
    build: B,
) -> Result<Template>
where
    B: FnOnce(String) -> F,
    F: std::future::Future<Output = Result<()>>,
{
    let building = match begin_template(backend, recipe, options, cancel).await? {
        Begun::Ready(template) => return Ok(template),
        Begun::Build(building) => building,
    };
    if building.needs_build {
        if let Err(e) = build(building.name.clone()).await {
            discard_template(backend, building, options).await;
            return Err(e);
        }
    }
    finalize_template(backend, building, options, cancel).await
}

/// What [`begin_template`] found.
pub enum Begun {
    /// A ready template with the recipe's fingerprint: nothing to build.
    Ready(Template),
    /// A new template, registered and held (locked) until
    /// [`finalize_template`] or [`discard_template`].
    Build(Building),
}

/// A template being built, possibly across several calls (a client that
/// migrates the template itself, then says it is done): [`begin_template`]
/// made it, the caller fills the database `name` when `needs_build`, then
/// [`finalize_template`] seals it or [`discard_template`] drops it. While
/// it exists, another builder of the same fingerprint waits for it.
pub struct Building {
    /// The database to fill.
    pub name: String,
    /// Whether the caller still has to fill it: false when it was restored
    /// whole from the template cache.
    pub needs_build: bool,
    /// Grown from this earlier template (a copy of it), when not `None`: the
    /// setup then only has to add what is new.
    pub grown_from: Option<String>,
    manifest: Manifest,
    entry: Entry,
    lock: crate::backend::Lock,
    started: Instant,
    warnings: Vec<String>,
    added_inputs: Vec<String>,
    restored_from: Option<std::path::PathBuf>,
}

/// The first step of building the template of `recipe`: reuses a ready one,
/// or registers a new one and prepares it: restored from the cache, grown
/// from its nearest ancestor (with `options.incremental`), or empty. Waits
/// (up to `options.lock_wait`) while another process builds the same one.
pub async fn begin_template(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<Begun> {
    let version = fingerprint::server_series(&backend.server_version().await?);
    let manifest = recipe.manifest(&version)?;
    let scope = backend.url().database.clone().unwrap_or_default();
    let name = names::template_name(&manifest.fingerprint, &scope);
    if let Some(t) = reuse(backend, &name, &manifest).await? {
        return Ok(Begun::Ready(t));
    }
    let key = format!("dbfork-template-{name}");
    let lock = tokio::select! {
        lock = backend.lock(&key, options.lock_wait) => lock?,
        _ = cancel.cancelled() => return Err(Error::Interrupted),
    };
    match begin_locked(backend, recipe, options, manifest, name).await {
        Ok(Ok(template)) => {
            backend.unlock(lock).await?;
            Ok(Begun::Ready(template))
        }
        Ok(Err(mut building)) => {
            building.lock = lock;
            Ok(Begun::Build(building))
        }
        Err(e) => {
            let _ = backend.unlock(lock).await;
            Err(e)
        }
    }
}

/// The last step of a build: seals the template, marks it ready, writes it
/// to the cache (when one is configured and it was not restored from there).
/// On an error the half-built template is dropped.
pub async fn finalize_template(
    backend: &AnyBackend,
    building: Building,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<Template> {
    let Building {
        name,
        grown_from,
        manifest,
        mut entry,
        lock,
        started,
        warnings,
        added_inputs,
        restored_from,
        ..
    } = building;
    let sealed = async {
        backend.seal_template(&name).await?;
        entry.state = State::Ready;
        entry.last_used_at = process::now();
        backend.registry_put(std::slice::from_ref(&entry)).await
    }
    .await;
    if let Err(e) = sealed {
        if let Err(cleanup) = drop_entry(backend, &name, options.drop_deadline).await {
            tracing::error!("could not drop the half-built template {name}: {cleanup}");
        }
        let _ = backend.unlock(lock).await;
        return Err(e);
    }
    backend.unlock(lock).await?;
    let mut template = Template {
        fingerprint: manifest.fingerprint.clone(),
        name,
        reused: false,
        build_seconds: started.elapsed().as_secs_f64(),
        manifest,
        restored_from,
        exported_to: None,
        export_seconds: 0.0,
        warnings,
        grown_from,
        added_inputs,
    };
    // A template built here goes into the cache (replacing a file that
    // could not be restored); one restored is there already.
    if let (Some(cache), None) = (&options.cache, &template.restored_from) {
        let started = Instant::now();
        match export_template(backend, &template, cache, options, cancel).await {
            Ok(path) => {
                template.exported_to = Some(path);
                template.export_seconds = started.elapsed().as_secs_f64();
            }
            Err(e) => template.warnings.push(format!(
                "the template was not written to the cache {}: {e}",
                cache.dir.display()
            )),
        }
    }
    Ok(template)
}

/// Gives a build up: the half-built template is dropped and unregistered
/// (an error doing so is logged: the next collection takes it).
pub async fn discard_template(backend: &AnyBackend, building: Building, options: &TemplateOptions) {
    if let Err(cleanup) = drop_entry(backend, &building.name, options.drop_deadline).await {
        tracing::error!(
            "could not drop the half-built template {}: {cleanup}",
            building.name
        );
    }
    let _ = backend.unlock(building.lock).await;
}

/// Writes ready template `template` into `cache`. PostgreSQL's sealed
/// template takes no connections, so there a registered clone of it is
/// exported, and dropped after.
pub async fn export_template(
    backend: &AnyBackend,
    template: &Template,
    cache: &TemplateCache,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<std::path::PathBuf> {
    let entry = find_template(backend, &template.name).await?;
    let staging = Staging::new(&cache.dir)?;
    let clone = if backend.kind() == crate::Kind::Postgres {
        let clone_options = CloneOptions {
            method: CloneMethod::default_for(backend.kind()),
            concurrency: 1,
            drop_deadline: options.drop_deadline,
        };
        let owner = Owner::this_process();
        let made = make_clones(backend, &entry, 1, &owner, &clone_options, cancel).await?;
        made.into_iter().next().map(|c| c.name)
    } else {
        None
    };
    let exported = backend
        .export_database(clone.as_deref().unwrap_or(&template.name), &staging.path)
        .await;
    if let Some(clone) = &clone {
        if let Err(e) = drop_entry(backend, clone, options.drop_deadline).await {
            tracing::error!("could not drop the export clone {clone}: {e}");
        }
    }
    exported?;
    let header = cache::Header {
        backend: backend.kind().id().to_string(),
        fingerprint: template.fingerprint.clone(),
        manifest: template.manifest.clone(),
        source_name: template.name.clone(),
        exported_at: process::now(),
        payload_bytes: 0,
        dbfork_version: env!("CARGO_PKG_VERSION").to_string(),
        keyed: false,
    };
    let path = staging.path.clone();
    let cache = cache.clone();
    let kind = backend.kind();
    tokio::task::spawn_blocking(move || cache.store(kind, header, &path))
        .await
        .map_err(|e| Error::Transfer {
            what: "writing the cache file".into(),
            cause: e.to_string(),
        })?
}

/// `dbfork db template --verify`: builds the template of `recipe` a second
/// time, from nothing, into a scratch database (registered, dropped after),
/// and compares what the two hold ([`Backend::describe`]: every object's
/// definition and every table's row count). Returns the lines only one of
/// them has: empty when they agree.
pub async fn verify_template(
    backend: &AnyBackend,
    recipe: &Recipe,
    template: &Template,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<Vec<String>> {
    let run_id = names::new_run_id();
    let scratch = names::clone_name(&run_id, 0);
    let me = Owner::this_process();
    let entry = Entry::new(
        scratch.clone(),
        EntryKind::Clone,
        &template.fingerprint,
        &recipe.setup_key(),
        &run_id,
        &me,
    );
    backend.registry_put(std::slice::from_ref(&entry)).await?;
    let built = async {
        backend.create_empty(&scratch).await?;
        run_setup(backend, recipe, options, cancel, &scratch).await?;
        backend.describe(&scratch).await
    }
    .await;
    let described = describe_template(backend, template, options, cancel).await;
    drop_entry(backend, &scratch, options.drop_deadline).await?;
    let (fresh, kept) = (built?, described?);
    let mut differences: Vec<String> = kept
        .iter()
        .filter(|l| !fresh.contains(l))
        .map(|l| format!("only in the template: {l}"))
        .collect();
    differences.extend(
        fresh
            .iter()
            .filter(|l| !kept.contains(l))
            .map(|l| format!("only in the build from nothing: {l}")),
    );
    Ok(differences)
}

/// [`Backend::describe`] of a ready template (on PostgreSQL, of a clone of
/// it: a sealed template takes no connections).
async fn describe_template(
    backend: &AnyBackend,
    template: &Template,
    options: &TemplateOptions,
    cancel: &Cancel,
) -> Result<Vec<String>> {
    if backend.kind() != crate::Kind::Postgres {
        return backend.describe(&template.name).await;
    }
    let entry = find_template(backend, &template.name).await?;
    let clone_options = CloneOptions {
        method: CloneMethod::default_for(backend.kind()),
        concurrency: 1,
        drop_deadline: options.drop_deadline,
    };
    let made = make_clones(
        backend,
        &entry,
        1,
        &Owner::this_process(),
        &clone_options,
        cancel,
    )
    .await?;
    let clone = &made[0].name;
    let described = backend.describe(clone).await;
    drop_entry(backend, clone, options.drop_deadline).await?;
    described
}

/// A dump file beside the cache (same filesystem), in a new private
/// directory of its own (the dump tools open their output with a plain
/// create: nothing can be planted there), removed when dropped.
struct Staging {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Staging {
    fn new(cache: &std::path::Path) -> Result<Staging> {
        let made = crate::files::ensure_own_dir(cache)
            // `.tmp`: the cache's trim removes a killed writer's leftovers.
            .and_then(|()| crate::files::create_temp_dir(cache, ".dump-", ".tmp"));
        let dir = made.map_err(Error::io(format!(
            "making a private directory in the template cache {}",
            cache.display()
        )))?;
        Ok(Staging {
            path: dir.join("dump"),
            dir,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fills the empty template `name` from the cache file of its fingerprint,
/// if there is a sound one. A damaged file or a failed restore is a warning
/// (pushed to `warnings`), and leaves `name` empty again for the setup.
async fn restore_from_cache(
    backend: &AnyBackend,
    cache: &TemplateCache,
    fingerprint: &str,
    name: &str,
    options: &TemplateOptions,
    warnings: &mut Vec<String>,
) -> Result<Option<std::path::PathBuf>> {
    let kind = backend.kind();
    let lookup = {
        let cache = cache.clone();
        let fingerprint = fingerprint.to_string();
        tokio::task::spawn_blocking(move || cache.lookup(&fingerprint, kind))
            .await
            .map_err(|e| Error::Transfer {
                what: "reading the template cache".into(),
                cause: e.to_string(),
            })?
    };
    let entry = match lookup {
        Ok(Some(entry)) => entry,
        Ok(None) => return Ok(None),
        Err(e) => {
            warnings.push(format!("{e}; the setup runs instead"));
            return Ok(None);
        }
    };
    let staging = Staging::new(&cache.dir)?;
    let unpacked = {
        let (cache, path) = (cache.clone(), staging.path.clone());
        tokio::task::spawn_blocking(move || cache.unpack(&entry, &path).map(|()| entry.path))
            .await
            .map_err(|e| Error::Transfer {
                what: "unpacking a cache file".into(),
                cause: e.to_string(),
            })?
    };
    let restored = match unpacked {
        Ok(path) => backend
            .import_database(name, &staging.path)
            .await
            .map(|()| path),
        Err(e) => Err(e),
    };
    match restored {
        Ok(path) => Ok(Some(path)),
        Err(e) => {
            warnings.push(format!(
                "restoring the template from the cache failed ({e}); the setup runs instead"
            ));
            backend.drop_database(name, options.drop_deadline).await?;
            backend.create_empty(name).await?;
            Ok(None)
        }
    }
}

async fn reuse(backend: &AnyBackend, name: &str, manifest: &Manifest) -> Result<Option<Template>> {
    let Some(mut entry) = backend
        .registry_list()
        .await?
        .into_iter()
        .find(|e| e.name == name)
    else {
        return Ok(None);
    };
    if entry.state != State::Ready || !backend.databases(name).await?.iter().any(|n| n == name) {
        return Ok(None);
    }
    entry.last_used_at = process::now();
    backend.registry_put(std::slice::from_ref(&entry)).await?;
    Ok(Some(Template {
        fingerprint: manifest.fingerprint.clone(),
        name: name.to_string(),
        reused: true,
        build_seconds: 0.0,
        manifest: manifest.clone(),
        restored_from: None,
        exported_to: None,
        export_seconds: 0.0,
        warnings: Vec::new(),
        grown_from: None,
        added_inputs: Vec::new(),
    }))
}

/// [`begin_template`] once it holds the lock: the ready template (built by
/// another process while this one waited), or the new one, registered and
/// prepared (its `lock` a placeholder the caller replaces).
async fn begin_locked(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    manifest: Manifest,
    name: String,
) -> Result<std::result::Result<Template, Building>> {
    let fingerprint = manifest.fingerprint.clone();
    // Someone may have built it while we waited.
    if let Some(t) = reuse(backend, &name, &manifest).await? {
        return Ok(Ok(t));
    }
    // A leftover of an abandoned build (its builder died, or its database vanished).
    if backend
        .registry_list()
        .await?
        .iter()
        .any(|e| e.name == name)
    {
        tracing::info!("removing the abandoned build of {name}");
        backend.drop_database(&name, options.drop_deadline).await?;
        backend.registry_remove(&name).await?;
    }
    let started = Instant::now();
    let owner = Owner::this_process();
    let entry = Entry::new(
        name.clone(),
        EntryKind::Template,
        &fingerprint,
        &recipe.setup_key(),
        "",
        &owner,
    );
    backend.registry_put(std::slice::from_ref(&entry)).await?;
    let mut warnings = Vec::new();
    let mut grown = None;
    let prepared = async {
        // The exact template from the cache; else grown from the nearest
        // ancestor; else empty, to be built from nothing.
        let exact = match &options.cache {
            Some(cache) if cache.has(&fingerprint, backend.kind()) => {
                backend.create_empty(&name).await?;
                let restored =
                    restore_from_cache(backend, cache, &fingerprint, &name, options, &mut warnings)
                        .await?;
                if restored.is_none() {
                    backend.drop_database(&name, options.drop_deadline).await?;
                }
                restored
            }
            _ => None,
        };
        if exact.is_none() {
            let ancestor = match options.incremental {
                true => find_ancestor(backend, recipe, &manifest, options).await?,
                false => None,
            };
            match ancestor {
                Some(ancestor) => {
                    grown = grow_from(backend, ancestor, &name, options, &mut warnings).await?;
                }
                None => backend.create_empty(&name).await?,
            }
        }
        Ok(exact)
    }
    .await;
    let restored_from = match prepared {
        Ok(restored) => restored,
        Err(e) => {
            if let Err(cleanup) = drop_entry(backend, &name, options.drop_deadline).await {
                tracing::error!("could not drop the half-built template {name}: {cleanup}");
            }
            return Err(e);
        }
    };
    Ok(Err(Building {
        name,
        needs_build: restored_from.is_none(),
        grown_from: grown.as_ref().map(|g| g.from.clone()),
        manifest,
        entry,
        lock: crate::backend::Lock::none(),
        started,
        warnings,
        added_inputs: grown.map(|g| g.added).unwrap_or_default(),
        restored_from,
    }))
}

/// The nearest ancestor of a template: the source and the files it lacks.
struct Ancestor {
    source: AncestorSource,
    added: Vec<String>,
    files: usize,
}

enum AncestorSource {
    /// A ready template on the server, cloned.
    Template(String),
    /// A cache file of this fingerprint, restored.
    Cached(String),
}

/// What a template grew from, for the caller.
struct Grown {
    from: String,
    added: Vec<String>,
}

/// The nearest ancestor of `manifest` on the server or in the cache: the
/// one with the most input files among those that grow into it.
async fn find_ancestor(
    backend: &AnyBackend,
    recipe: &Recipe,
    manifest: &Manifest,
    options: &TemplateOptions,
) -> Result<Option<Ancestor>> {
    let mut best: Option<Ancestor> = None;
    let mut consider = |source: AncestorSource, earlier: &Manifest| {
        if let Some(added) = earlier.grows_into(manifest) {
            let files = earlier.files().count();
            if best.as_ref().is_none_or(|b| files > b.files) {
                best = Some(Ancestor {
                    source,
                    added,
                    files,
                });
            }
        }
    };
    let existing = backend.databases(names::PREFIX).await?;
    for entry in backend.registry_list().await? {
        let usable = entry.kind == EntryKind::Template
            && entry.state == State::Ready
            && entry.setup_key == recipe.setup_key()
            && names::is_dbfork_shape(&entry.name)
            && existing.contains(&entry.name);
        if !usable {
            continue;
        }
        if let Some(earlier) = options
            .ancestors
            .iter()
            .find(|m| m.fingerprint == entry.fingerprint)
        {
            consider(AncestorSource::Template(entry.name.clone()), earlier);
        }
    }
    if let Some(cache) = &options.cache {
        let headers = {
            let (cache, kind) = (cache.clone(), backend.kind());
            tokio::task::spawn_blocking(move || cache.headers(kind))
                .await
                .unwrap_or_default()
        };
        // After the server's: a template there beats a file with as many
        // inputs (a clone is cheaper than a restore).
        for (_, header) in headers {
            consider(
                AncestorSource::Cached(header.fingerprint.clone()),
                &header.manifest,
            );
        }
    }
    Ok(best)
}

/// Makes `name` a copy of `ancestor` to run the setup on; `None` (with a
/// warning, and `name` empty) when that fails, and the setup builds from nothing.
async fn grow_from(
    backend: &AnyBackend,
    ancestor: Ancestor,
    name: &str,
    options: &TemplateOptions,
    warnings: &mut Vec<String>,
) -> Result<Option<Grown>> {
    let from = match &ancestor.source {
        AncestorSource::Template(template) => {
            let method = CloneMethod::default_for(backend.kind());
            match backend.clone_database(template, name, method).await {
                Ok(()) => Some(template.clone()),
                Err(e) => {
                    warnings.push(format!(
                        "could not copy the earlier template {template} to grow this one from ({e}); building from nothing"
                    ));
                    backend.drop_database(name, options.drop_deadline).await?;
                    backend.create_empty(name).await?;
                    None
                }
            }
        }
        AncestorSource::Cached(fingerprint) => {
            backend.create_empty(name).await?;
            let cache = options
                .cache
                .as_ref()
                .expect("a cached ancestor comes from the cache");
            restore_from_cache(backend, cache, fingerprint, name, options, warnings)
                .await?
                .map(|path| path.display().to_string())
        }
    };
    Ok(from.map(|from| Grown {
        from,
        added: ancestor.added,
    }))
}

/// Runs the setup command against the new template, streaming its output.
async fn run_setup(
    backend: &AnyBackend,
    recipe: &Recipe,
    options: &TemplateOptions,
    cancel: &Cancel,
    name: &str,
) -> Result<()> {
    let env = DatabaseEnv::new(backend, name)?;
    crate::reaper::arm();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&recipe.setup)
        .envs(env.vars.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::SetupSpawn {
            command: recipe.setup.clone(),
            cause: e.to_string(),
        })?;
    let pid = child.id();
    if let Some(pid) = pid {
        // Its group dies with dbfork, even when dbfork is killed with SIGKILL.
        crate::reaper::register(pid);
    }
    let output = std::sync::Mutex::new(VecDeque::new());
    let echo = options.echo_setup;
    // A background child of the setup may hold its output open after the
    // setup itself ended: reading stops a moment after the setup's exit.
    let (exited_tx, exited_rx) = watch::channel(false);
    let pump = |stream: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
        let output = &output;
        let mut exited = exited_rx.clone();
        async move {
            let Some(stream) = stream else { return };
            let mut lines = BufReader::new(stream).lines();
            let drained = async {
                while !*exited.borrow_and_update() {
                    if exited.changed().await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(OUTPUT_AFTER_EXIT).await;
            };
            tokio::pin!(drained);
            loop {
                let line = tokio::select! {
                    line = lines.next_line() => line,
                    () = &mut drained => return,
                };
                let Ok(Some(line)) = line else { return };
                if echo {
                    dbfork_meta::say!("  setup | {line}");
                }
                if let Ok(mut output) = output.lock() {
                    if output.len() == KEPT_LINES {
                        output.pop_front();
                    }
                    output.push_back(line);
                }
            }
        }
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let stderr = child
        .stderr
        .take()
        .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
    let outcome = async {
        let waited = async {
            let status = child.wait().await;
            let _ = exited_tx.send(true);
            status
        };
        let (status, _, _) = tokio::join!(waited, pump(stdout), pump(stderr));
        status
    };
    let kill_group = || {
        if let Some(pid) = pid {
            // SAFETY: signalling a process group we created; no memory is touched.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            crate::reaper::unregister(pid);
        }
    };
    let status = tokio::select! {
        status = outcome => status.map_err(Error::io("waiting for the setup command"))?,
        _ = tokio::time::sleep(options.build_timeout) => {
            kill_group();
            return Err(Error::SetupTimeout { command: recipe.setup.clone(), timeout: options.build_timeout, template: name.to_string() });
        }
        _ = cancel.cancelled() => {
            kill_group();
            return Err(Error::Interrupted);
        }
    };
    // Whatever the setup left running in its group must not hold the template open.
    kill_group();
    if status.success() {
        return Ok(());
    }
    let status = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    };
    // A setup that printed its database URL (or the password) must not
    // leave it in a log file or on the screen.
    let secret = backend.url().password.clone().filter(|p| !p.is_empty());
    let lines: Vec<String> = output
        .lock()
        .map(|o| {
            o.iter()
                .map(|line| match &secret {
                    Some(secret) => line.replace(secret.as_str(), "***"),
                    None => line.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let log = options
        .log_dir
        .as_deref()
        .and_then(|dir| keep_log(dir, &format!("setup-{name}.log"), &lines));
    Err(Error::SetupFailed {
        command: recipe.setup.clone(),
        status,
        template: name.to_string(),
        output: failure_excerpt(&lines),
        log: log
            .map(|p| format!("\nThe whole output is in {}.", p.display()))
            .unwrap_or_default(),
    })
}

/// How long a setup's output is still read after the setup exited (what a
/// background child it left writes later is not waited for).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// How many lines of a setup's output are kept (for its log file).
const KEPT_LINES: usize = 100_000;

/// Writes `lines` to `dir/file` and returns its path (`None` if it cannot).
pub fn keep_log(dir: &std::path::Path, file: &str, lines: &[String]) -> Option<std::path::PathBuf> {
    let path = dir.join(file);
    crate::files::ensure_own_dir(dir).ok()?;
    let mut text = lines.join("\n");
    text.push('\n');
    crate::files::write_replacing(&path, text.as_bytes()).ok()?;
    Some(path)
}

/// What of a failed command's output a person needs first: a Python
/// traceback's exception, then the traceback (the last one: chained ones end
/// there); without one, the last lines. Warnings printed before the failure
/// (system checks, deprecations) do not push the cause off the screen.
pub fn failure_excerpt(lines: &[String]) -> String {
    let Some(start) = lines
        .iter()
        .rposition(|l| l.starts_with("Traceback (most recent call last):"))
    else {
        let from = lines.len().saturating_sub(TAIL_LINES);
        let tail = lines[from..].join("\n");
        return if tail.trim().is_empty() {
            "Its output: (none)".to_string()
        } else {
            format!("Its last output:\n{tail}")
        };
    };
    let block = &lines[start..];
    let exception = block
        .iter()
        .skip(1)
        .position(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .map(|p| p + 1);
    match exception {
        Some(at) => {
            let raised = &block[at..block.len().min(at + TAIL_LINES)];
            format!(
                "It raised:\n{}\n\n{}",
                raised.join("\n"),
                block[..at].join("\n")
            )
        }
        None => format!("Its output ends with:\n{}", block.join("\n")),
    }
}

/// The ready template whose fingerprint starts with `wanted` (or whose name is `wanted`).
pub async fn find_template(backend: &AnyBackend, wanted: &str) -> Result<Entry> {
    let wanted = wanted.trim();
    let matches: Vec<Entry> = backend
        .registry_list()
        .await?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Template && e.state == State::Ready)
        .filter(|e| e.name == wanted || (wanted.len() >= 6 && e.fingerprint.starts_with(wanted)))
        .collect();
    match matches.len() {
        0 => Err(Error::NoTemplate {
            wanted: wanted.to_string(),
        }),
        1 => Ok(matches.into_iter().next().expect("one match")),
        count => Err(Error::AmbiguousTemplate {
            wanted: wanted.to_string(),
            count,
        }),
    }
}

#[derive(Debug, Clone)]
pub struct CloneOptions {
    pub method: CloneMethod,
    /// How many clones are made at the same time.
    pub concurrency: usize,
    pub drop_deadline: Duration,
}

/// A clone that exists.
#[derive(Debug, Clone)]
pub struct MadeClone {
    pub name: String,
    pub url: DbUrl,
}

/// Makes `count` clones of `template` at once, owned by this process while
/// they are made and by `owner` once all exist. All or nothing: on an error
/// or a cancel every clone of the batch is dropped.
pub async fn make_clones(
    backend: &AnyBackend,
    template: &Entry,
    count: usize,
    owner: &Owner,
    options: &CloneOptions,
    cancel: &Cancel,
) -> Result<Vec<MadeClone>> {
    let run_id = names::new_run_id();
    let wanted = (0..count).map(|i| names::clone_name(&run_id, i)).collect();
    make_named_clones(backend, template, &run_id, wanted, owner, options, cancel).await
}

/// [`make_clones`] with the run id and names chosen by the caller (`dbfork run`
/// names each slot's clone); every name must come from [`names`].
pub async fn make_named_clones(
    backend: &AnyBackend,
    template: &Entry,
    run_id: &str,
    wanted: Vec<String>,
    owner: &Owner,
    options: &CloneOptions,
    cancel: &Cancel,
) -> Result<Vec<MadeClone>> {
    let me = Owner::this_process();
    let mut entries: Vec<Entry> = wanted
        .into_iter()
        .map(|name| {
            Entry::new(
                name,
                EntryKind::Clone,
                &template.fingerprint,
                &template.setup_key,
                run_id,
                &me,
            )
        })
        .collect();
    backend.registry_put(&entries).await?;
    // Owned names: a stream over borrowed entries makes the future not
    // provably `Send` for every lifetime, and `dbfork run` spawns it.
    let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let made = stream::iter(names)
        .map(|name| async move {
            if cancel.is_cancelled() {
                return Err(Error::Interrupted);
            }
            backend
                .clone_database(&template.name, &name, options.method)
                .await
        })
        .buffer_unordered(options.concurrency.max(1))
        .collect::<Vec<Result<()>>>()
        .await;
    let failed = made.into_iter().find_map(|r| r.err());
    let failed = failed.or_else(|| cancel.is_cancelled().then_some(Error::Interrupted));
    if let Some(err) = failed {
        drop_entries(
            backend,
            entries.iter().map(|e| e.name.clone()).collect(),
            options.drop_deadline,
        )
        .await;
        return Err(err);
    }
    for entry in &mut entries {
        entry.state = State::Ready;
        entry.set_owner(owner);
    }
    let mut used = template.clone();
    used.last_used_at = process::now();
    entries.push(used);
    backend.registry_put(&entries).await?;
    entries.pop();
    Ok(entries
        .into_iter()
        .map(|e| MadeClone {
            url: backend.url().with_database(&e.name),
            name: e.name,
        })
        .collect())
}

/// Drops one database dbfork made and then its registry row.
pub async fn drop_entry(backend: &AnyBackend, name: &str, deadline: Duration) -> Result<()> {
    backend.drop_database(name, deadline).await?;
    backend.registry_remove(name).await
}

/// Drops many at once; failures are logged, and the names that failed returned.
async fn drop_entries(
    backend: &AnyBackend,
    names: Vec<String>,
    deadline: Duration,
) -> Vec<(String, Error)> {
    let results = stream::iter(names)
        .map(|name| async move {
            let r = drop_entry(backend, &name, deadline).await;
            (name, r)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    results
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| (name, e)))
        .inspect(|(name, e)| tracing::error!("could not drop {name}: {e}"))
        .collect()
}

/// `dbfork db drop`: refuses the whole call if any name is not in the
/// registry, then drops them all.
pub async fn drop_registered(
    backend: &AnyBackend,
    names: &[String],
    deadline: Duration,
) -> Result<()> {
    let known: Vec<String> = backend
        .registry_list()
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    if let Some(stranger) = names.iter().find(|n| !known.contains(n)) {
        return Err(Error::NotOurs {
            name: stranger.clone(),
        });
    }
    match drop_entries(backend, names.to_vec(), deadline)
        .await
        .into_iter()
        .next()
    {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// `dbfork db touch`: renews the heartbeat (and last use) of the named
/// registry entries, so that a gc which cannot see their owner (another host
/// or container) keeps them; refuses the whole call if a name is not in the
/// registry.
pub async fn touch_registered(backend: &AnyBackend, names: &[String]) -> Result<()> {
    let mut entries: Vec<Entry> = backend
        .registry_list()
        .await?
        .into_iter()
        .filter(|e| names.contains(&e.name) && names::is_dbfork_shape(&e.name))
        .collect();
    if let Some(stranger) = names
        .iter()
        .find(|n| !entries.iter().any(|e| &e.name == *n))
    {
        return Err(Error::NotRegistered {
            name: stranger.clone(),
        });
    }
    let now = process::now();
    for entry in &mut entries {
        entry.heartbeat_at = now;
        entry.last_used_at = now;
    }
    backend.registry_put(&entries).await
}

/// Drops everything `owner` holds (an interrupted or failed command's leftovers).
pub async fn drop_owned(backend: &AnyBackend, owner: &Owner, deadline: Duration) -> Result<usize> {
    let mine: Vec<String> = backend
        .registry_list()
        .await?
        .into_iter()
        .filter(|e| e.owned_by(owner))
        .map(|e| e.name)
        .collect();
    let count = mine.len();
    match drop_entries(backend, mine, deadline)
        .await
        .into_iter()
        .next()
    {
        Some((_, e)) => Err(e),
        None => Ok(count),
    }
}

/// Renews the heartbeat of every clone of run `run_id`, so that garbage
/// collection on another host (which cannot see our pid) keeps them.
pub async fn heartbeat_run(backend: &AnyBackend, run_id: &str) -> Result<()> {
    let now = process::now();
    let mut mine: Vec<Entry> = backend
        .registry_list()
        .await?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Clone && e.run_id == run_id)
        .collect();
    for entry in &mut mine {
        entry.heartbeat_at = now;
    }
    backend.registry_put(&mine).await
}

/// Drops every clone of run `run_id` (what a `dbfork run` made); its templates stay.
pub async fn drop_run_clones(
    backend: &AnyBackend,
    run_id: &str,
    deadline: Duration,
) -> Result<usize> {
    let clones: Vec<String> = backend
        .registry_list()
        .await?
        .into_iter()
        .filter(|e| e.kind == EntryKind::Clone && e.run_id == run_id)
        .map(|e| e.name)
        .collect();
    let count = clones.len();
    match drop_entries(backend, clones, deadline)
        .await
        .into_iter()
        .next()
    {
        Some((_, e)) => Err(e),
        None => Ok(count),
    }
}

/// How often a run renews its clones' heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(120);

/// The shortest heartbeat TTL a command takes: three renewals, so that a
/// live run on another host or in another container, one renewal late on a
/// loaded machine, never looks left behind.
pub const MIN_HEARTBEAT_TTL: Duration = Duration::from_secs(3 * 120);

/// `ttl` if it is a safe heartbeat TTL, else why not (to show as an error).
pub fn check_heartbeat_ttl(ttl: Duration) -> std::result::Result<Duration, String> {
    if ttl < MIN_HEARTBEAT_TTL {
        return Err(format!(
            "a heartbeat TTL of {}s is shorter than three heartbeats (a run renews its clones' every {}s): the clones of a live run on another host or in another container would be taken for left behind and dropped under it. Give {}m or more (the default is 1h)",
            ttl.as_secs_f64(),
            HEARTBEAT_EVERY.as_secs(),
            MIN_HEARTBEAT_TTL.as_secs() / 60
        ));
    }
    Ok(ttl)
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    pub dry_run: bool,
    /// Ready templates unused for longer than this go, except the newest of each setup.
    pub older_than: Option<Duration>,
    /// An entry from another host, or without an owner process, is gone once
    /// its heartbeat is older than this.
    pub heartbeat_ttl: Duration,
    pub drop_deadline: Duration,
    /// `dbfork clean`: every ready template goes too, except one a clone of
    /// a live run was made from.
    pub every_template: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Collected {
    pub name: String,
    pub kind: EntryKind,
    pub reason: String,
    /// Whether it was dropped (false on a dry run or a failure).
    pub dropped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What garbage collection would remove, and why. Only registry entries are
/// ever considered, so nothing dbfork did not create is touched.
pub async fn gc_plan(backend: &AnyBackend, options: &GcOptions) -> Result<Vec<(Entry, String)>> {
    let entries = backend.registry_list().await?;
    let existing = backend.databases(names::PREFIX).await?;
    let now = process::now();
    let ttl = options.heartbeat_ttl.as_secs() as i64;
    // The most recently used ready template of each setup is kept whatever its age.
    let mut newest: HashMap<&str, &Entry> = HashMap::new();
    for e in entries
        .iter()
        .filter(|e| e.kind == EntryKind::Template && e.state == State::Ready)
    {
        let slot = newest.entry(e.setup_key.as_str()).or_insert(e);
        if (e.last_used_at, e.created_at) > (slot.last_used_at, slot.created_at) {
            *slot = e;
        }
    }
    let mut plan = Vec::new();
    // A row naming something dbfork would not make was not written by dbfork:
    // never a candidate, whatever it says (see `foreign_rows`).
    for e in entries.iter().filter(|e| names::is_dbfork_shape(&e.name)) {
        let reason = if e.state == State::Building || e.kind == EntryKind::Clone {
            e.owner_gone(now, ttl).then(|| owner_gone_reason(e))
        } else if !existing.contains(&e.name) {
            Some("its database no longer exists".to_string())
        } else if options.every_template {
            let in_use = entries.iter().any(|c| {
                c.kind == EntryKind::Clone
                    && c.fingerprint == e.fingerprint
                    && !c.owner_gone(now, ttl)
            });
            (!in_use).then(|| "dbfork clean removes every template".to_string())
        } else {
            match options.older_than {
                Some(age) if now - e.last_used_at >= age.as_secs() as i64 => {
                    let is_newest = newest
                        .get(e.setup_key.as_str())
                        .is_some_and(|n| n.name == e.name);
                    (!is_newest).then(|| {
                        format!(
                            "unused for {}, and a more recently used template of its setup exists",
                            human_age(now - e.last_used_at)
                        )
                    })
                }
                _ => None,
            }
        };
        if let Some(reason) = reason {
            plan.push((e.clone(), reason));
        }
    }
    Ok(plan)
}

/// The registry rows that name something dbfork would not make (another
/// database, a path, a name with quotes): not written by dbfork, reported and
/// never acted on.
pub fn foreign_rows(entries: &[Entry]) -> Vec<&Entry> {
    entries
        .iter()
        .filter(|e| !names::is_dbfork_shape(&e.name))
        .collect()
}

/// One warning line for foreign rows, or `None` without any.
pub fn foreign_rows_warning(entries: &[Entry]) -> Option<String> {
    let foreign = foreign_rows(entries);
    if foreign.is_empty() {
        return None;
    }
    let names: Vec<String> = foreign.iter().map(|e| format!("{:?}", e.name)).collect();
    Some(format!(
        "{} registry row{} name{} what dbfork would not make ({}): not written by dbfork, left alone; remove {} from the registry by hand",
        foreign.len(),
        if foreign.len() == 1 { "" } else { "s" },
        if foreign.len() == 1 { "s" } else { "" },
        names.join(", "),
        if foreign.len() == 1 { "it" } else { "them" },
    ))
}

fn owner_gone_reason(e: &Entry) -> String {
    let what = if e.state == State::Building {
        "building it"
    } else {
        "owning it"
    };
    if e.owner().liveness() == Liveness::Dead {
        format!("process {} {what} is gone", e.owner_pid)
    } else {
        format!(
            "no heartbeat from its owner (pid {} on {}) for {}",
            e.owner_pid,
            e.host,
            human_age(process::now() - e.heartbeat_at)
        )
    }
}

fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Collects garbage: drops what [`gc_plan`] names (unless a dry run).
pub async fn gc(backend: &AnyBackend, options: &GcOptions) -> Result<Vec<Collected>> {
    let plan = gc_plan(backend, options).await?;
    let mut out = Vec::new();
    for (entry, reason) in plan {
        let mut collected = Collected {
            name: entry.name.clone(),
            kind: entry.kind,
            reason,
            dropped: false,
            error: None,
        };
        if !options.dry_run {
            let dropped = if entry.kind == EntryKind::Template {
                drop_template(backend, &entry.name, options.drop_deadline).await
            } else {
                drop_entry(backend, &entry.name, options.drop_deadline).await
            };
            match dropped {
                Ok(()) => collected.dropped = true,
                Err(e) => collected.error = Some(e.to_string()),
            }
        }
        out.push(collected);
    }
    Ok(out)
}

/// Drops a template under its build lock (waiting 2 s at most), so never
/// under a running build or clone of it.
async fn drop_template(backend: &AnyBackend, name: &str, deadline: Duration) -> Result<()> {
    let lock = backend
        .lock(&format!("dbfork-template-{name}"), Duration::from_secs(2))
        .await?;
    let dropped = drop_entry(backend, name, deadline).await;
    backend.unlock(lock).await?;
    dropped
}

/// After `current` was built: the ready templates of its setup beyond the
/// `keep` most recently used (`current` among them) are dropped, oldest use
/// first, except one that a clone of a live run was made from (that run may
/// still need a replacement clone). Returns the names dropped; one that could
/// not be dropped is logged and left to `db gc`. `keep` 0 keeps all.
pub async fn prune_templates(
    backend: &AnyBackend,
    current: &str,
    keep: usize,
    heartbeat_ttl: Duration,
    deadline: Duration,
) -> Result<Vec<String>> {
    let entries = backend.registry_list().await?;
    let Some(current) = entries.iter().find(|e| e.name == current) else {
        return Ok(Vec::new());
    };
    if keep == 0 {
        return Ok(Vec::new());
    }
    let now = process::now();
    let ttl = heartbeat_ttl.as_secs() as i64;
    let in_use = |fingerprint: &str| {
        entries.iter().any(|e| {
            e.kind == EntryKind::Clone && e.fingerprint == fingerprint && !e.owner_gone(now, ttl)
        })
    };
    let mut others: Vec<&Entry> = entries
        .iter()
        .filter(|e| {
            e.kind == EntryKind::Template
                && e.state == State::Ready
                && e.setup_key == current.setup_key
                && e.name != current.name
                && names::is_dbfork_shape(&e.name)
        })
        .collect();
    others.sort_by_key(|e| std::cmp::Reverse((e.last_used_at, e.created_at)));
    let mut dropped = Vec::new();
    for old in others.into_iter().skip(keep - 1) {
        if in_use(&old.fingerprint) {
            continue;
        }
        match drop_template(backend, &old.name, deadline).await {
            Ok(()) => dropped.push(old.name.clone()),
            Err(e) => tracing::warn!("could not drop the older template {}: {e}", old.name),
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::failure_excerpt;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_exception_comes_before_warnings_and_frames() {
        let mut output = lines(
            "System check identified some issues:\nWARNINGS:\nshop.Order: (models.W042) Auto-created primary key\nTraceback (most recent call last):\n  File \"manage.py\", line 22, in <module>\n    main()\nValueError: first\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"manage.py\", line 9, in main\n    migrate()\ndjango.core.management.base.SystemCheckError: SystemCheckError: System check identified some issues:\n\nERRORS:\nshop.E001: broken",
        );
        for n in 0..50 {
            output.insert(0, format!("noise {n}"));
        }
        let excerpt = failure_excerpt(&output);
        assert!(
            excerpt.starts_with(
                "It raised:\ndjango.core.management.base.SystemCheckError: SystemCheckError"
            ),
            "{excerpt}"
        );
        assert!(excerpt.contains("shop.E001: broken"), "{excerpt}");
        assert!(
            excerpt.contains("File \"manage.py\", line 9, in main"),
            "{excerpt}"
        );
        assert!(!excerpt.contains("noise"), "{excerpt}");
    }

    #[test]
    fn without_a_traceback_the_last_lines() {
        let output: Vec<String> = (0..100).map(|n| format!("line {n}")).collect();
        let excerpt = failure_excerpt(&output);
        assert!(
            excerpt.starts_with("Its last output:\nline 75\n"),
            "{excerpt}"
        );
        assert!(excerpt.ends_with("line 99"), "{excerpt}");
        assert_eq!(failure_excerpt(&[]), "Its output: (none)");
    }
}

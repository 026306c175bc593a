//! Building a template, or reusing the ready one: begin (reuse, restore,
//! grow from an ancestor, or start empty), fill, finalize or discard.

use super::*;

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
pub(super) fn empty_template_warning(backend: &AnyBackend, recipe: &Recipe) -> String {
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

pub(super) async fn reuse(
    backend: &AnyBackend,
    name: &str,
    manifest: &Manifest,
) -> Result<Option<Template>> {
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
pub(super) async fn begin_locked(
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
pub(super) struct Ancestor {
    source: AncestorSource,
    added: Vec<String>,
    files: usize,
}

pub(super) enum AncestorSource {
    /// A ready template on the server, cloned.
    Template(String),
    /// A cache file of this fingerprint, restored.
    Cached(String),
}

/// What a template grew from, for the caller.
pub(super) struct Grown {
    from: String,
    added: Vec<String>,
}

/// The nearest ancestor of `manifest` on the server or in the cache: the
/// one with the most input files among those that grow into it.
pub(super) async fn find_ancestor(
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
pub(super) async fn grow_from(
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

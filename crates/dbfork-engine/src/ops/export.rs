//! Templates to and from the template cache, and `--verify`'s comparison
//! with a build from nothing.

use super::*;

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
pub(super) async fn describe_template(
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
pub(super) struct Staging {
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
pub(super) async fn restore_from_cache(
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

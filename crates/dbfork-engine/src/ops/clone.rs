//! Clones of a ready template.

use super::*;

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

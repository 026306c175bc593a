//! Drops, heartbeats and garbage collection: only what the registry
//! records, and only once its owner is gone.

use super::*;

/// Drops one database dbfork made and then its registry row.
pub async fn drop_entry(backend: &AnyBackend, name: &str, deadline: Duration) -> Result<()> {
    backend.drop_database(name, deadline).await?;
    backend.registry_remove(name).await
}

/// Drops many at once; failures are logged, and the names that failed returned.
pub(super) async fn drop_entries(
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

pub(super) fn owner_gone_reason(e: &Entry) -> String {
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

pub(super) fn human_age(secs: i64) -> String {
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
pub(super) async fn drop_template(
    backend: &AnyBackend,
    name: &str,
    deadline: Duration,
) -> Result<()> {
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

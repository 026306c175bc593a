//! `dbfork clean`: remove everything dbfork made for a project.

use std::path::Path;

use anyhow::{bail, Result};
use dbfork_engine::ops::{self, GcOptions};
use dbfork_engine::Backend;

use crate::cli::CleanArgs;
use crate::settings::Settings;
use crate::target::{Collect, Opened};

/// Drops the project's templates and left clones (not a live run's), then
/// removes its state directory and template cache; with `--dry-run` only
/// says what it would remove.
pub async fn run(args: CleanArgs) -> Result<i32> {
    let cwd = std::env::current_dir()?;
    let settings = Settings::of(&args.settings, &cwd)?;
    let db = settings.database()?;
    let state_dir = settings.state_dir();
    let would = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    // A SQLite database that was never made has nothing on it.
    let (said, kept) = if crate::settings::unmade_sqlite(&db) {
        (false, 0)
    } else {
        clean_server(&db, &settings, &state_dir, args.dry_run).await?
    };
    let mut said = said;
    let mut dirs = vec![state_dir.clone()];
    dirs.extend(settings.path("template_cache")?);
    for dir in dirs {
        if kept > 0 && dir == state_dir {
            continue;
        }
        said |= remove_dir(&dir, args.dry_run, would)?;
    }
    if !said {
        dbfork_meta::say!("dbfork: nothing to remove");
    }
    Ok(crate::errors::OK)
}

/// Drops what the registry of `db` holds (every template; clones and builds
/// whose owner is gone) and the registry if that leaves it empty. Whether
/// it said anything, and how many databases of a live run it kept.
async fn clean_server(
    db: &str,
    settings: &Settings,
    state_dir: &Path,
    dry_run: bool,
) -> Result<(bool, usize)> {
    let (would, did) = if dry_run {
        ("would remove", "would drop")
    } else {
        ("removed", "dropped")
    };
    let connection = settings.connection()?;
    let collect = if dry_run {
        Collect::Nothing
    } else {
        Collect::Leftovers
    };
    let opened = Opened::open(db, &connection, collect).await?;
    let options = GcOptions {
        dry_run,
        older_than: None,
        heartbeat_ttl: connection.heartbeat_ttl,
        drop_deadline: connection.drop_timeout,
        every_template: true,
    };
    let result = ops::gc(&opened.backend, &options).await;
    let (left, rows) = match opened.backend.registry_list().await {
        Ok(entries) => (
            entries.len() - ops::foreign_rows(&entries).len(),
            entries.len(),
        ),
        Err(_) => (0, 1),
    };
    // An empty registry goes too, unless it goes with `.dbfork/`.
    let in_state_dir = db
        .strip_prefix("sqlite://")
        .is_some_and(|path| Path::new(path).starts_with(state_dir));
    let registry = match (&result, dry_run, in_state_dir) {
        (Ok(collected), true, false) => Ok(rows == collected.len() && rows > 0),
        (Ok(_), false, false) if rows == 0 => opened.backend.registry_drop_if_empty().await,
        _ => Ok(false),
    };
    let closed = opened.close().await;
    let collected = result?;
    let registry = registry?;
    closed?;
    for c in &collected {
        match &c.error {
            Some(e) => {
                dbfork_meta::say!("dbfork: could not drop {} {}: {e}", c.kind.as_str(), c.name)
            }
            None => dbfork_meta::say!(
                "dbfork: {did} {} {} ({})",
                c.kind.as_str(),
                c.name,
                c.reason
            ),
        }
    }
    if registry {
        dbfork_meta::say!(
            "dbfork: {would} dbfork's registry (empty) from {}",
            dbfork_engine::url::mask_raw(db)
        );
    }
    let failed = collected.iter().filter(|c| c.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} database(s) could not be dropped; see above");
    }
    let kept = left.saturating_sub(if dry_run { collected.len() } else { 0 });
    if kept > 0 {
        dbfork_meta::say!(
            "dbfork: kept {kept} database(s) of a run still going on {}; run `dbfork clean` again once it has ended",
            dbfork_engine::url::mask_raw(db)
        );
    }
    Ok((!collected.is_empty() || registry, kept))
}

/// Removes dbfork's directory `dir` (never through a link: a link is only
/// named); says so. Whether there was one.
fn remove_dir(dir: &Path, dry_run: bool, verb: &str) -> Result<bool> {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return Ok(false);
    };
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (a link or a file); dbfork removes only the directory it made: remove it by hand if it is yours to remove",
            dir.display()
        );
    }
    if !dry_run {
        std::fs::remove_dir_all(dir)?;
    }
    dbfork_meta::say!("dbfork: {verb} {}", dir.display());
    Ok(true)
}

//! `dbfork clean`: remove everything dbfork made for a project.

use std::path::Path;

use anyhow::{bail, Result};
use dbfork_engine::ops::{self, GcOptions};
use dbfork_engine::Backend;

use crate::cli::{CleanArgs, DbArgs, RunArgs};
use crate::settings;
use crate::target::{Collect, Opened};

/// Drops the project's templates and left clones (not a live run's), then
/// removes its state directory and template cache; with `--dry-run` only
/// says what it would remove.
pub async fn run(args: CleanArgs) -> Result<i32> {
    let cwd = std::env::current_dir()?;
    let project = RunArgs {
        config: args.config.clone(),
        ..RunArgs::default()
    };
    let config = settings::resolve(&project, 0, &cwd)?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| settings::database_of(&config));
    let (would, did) = if args.dry_run {
        ("would remove", "would drop")
    } else {
        ("removed", "dropped")
    };
    let mut kept = 0;
    let mut said = false;
    // A SQLite database that was never made has nothing on it.
    if !settings::unmade_sqlite(&db) {
        let db_args = DbArgs {
            db: Some(db.clone()),
            connect_timeout: config.connect_timeout,
            drop_timeout: config.drop_timeout,
            heartbeat_ttl: config.heartbeat_ttl,
        };
        let collect = if args.dry_run {
            Collect::Nothing
        } else {
            Collect::Leftovers
        };
        let opened = Opened::open(&db_args, collect).await?;
        let options = GcOptions {
            dry_run: args.dry_run,
            older_than: None,
            heartbeat_ttl: config.heartbeat_ttl,
            drop_deadline: config.drop_timeout,
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
        // An empty registry goes too, unless it goes with `.dbfork/` below.
        let in_state_dir = db
            .strip_prefix("sqlite://")
            .is_some_and(|path| Path::new(path).starts_with(&config.state_dir));
        let registry = match (&result, args.dry_run, in_state_dir) {
            (Ok(collected), true, false) => Ok(rows == collected.len() && rows > 0),
            (Ok(_), false, false) if rows == 0 => opened.backend.registry_drop_if_empty().await,
            _ => Ok(false),
        };
        let closed = opened.close().await;
        let collected = result?;
        let registry = registry?;
        closed?;
        said |= !collected.is_empty();
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
            said = true;
            dbfork_meta::say!(
                "dbfork: {would} dbfork's registry (empty) from {}",
                dbfork_engine::url::mask_raw(&db)
            );
        }
        let failed = collected.iter().filter(|c| c.error.is_some()).count();
        if failed > 0 {
            bail!("{failed} database(s) could not be dropped; see above");
        }
        kept = left.saturating_sub(if args.dry_run { collected.len() } else { 0 });
        if kept > 0 {
            dbfork_meta::say!(
                "dbfork: kept {kept} database(s) of a run still going on {}; run `dbfork clean` again once it has ended",
                dbfork_engine::url::mask_raw(&db)
            );
        }
    }
    let mut dirs = vec![config.state_dir.clone()];
    dirs.extend(config.template_cache.clone());
    for dir in dirs {
        if kept > 0 && dir == config.state_dir {
            continue;
        }
        said |= remove_dir(&dir, args.dry_run, would)?;
    }
    if !said {
        dbfork_meta::say!("dbfork: nothing to remove");
    }
    Ok(crate::errors::OK)
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

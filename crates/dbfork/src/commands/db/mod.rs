//! `dbfork db ...`: the engine's operations one step at a time. Each verb
//! reads its settings as `dbfork run` does (flag, variable, the project's
//! configuration file, default).

use anyhow::Result;
use dbfork_engine::ops::Cancel;

use crate::cli::DbCommand;
use crate::settings::{self, Settings};
use crate::target::{Collect, Opened};

mod clone;
mod drop;
mod ephemeral;
mod gc;
mod list;
mod template;
mod touch;

pub async fn run(command: DbCommand, cancel: Cancel) -> Result<()> {
    let cwd = std::env::current_dir()?;
    match command {
        DbCommand::Template(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            with_db(&s, Collect::Leftovers, async |o| {
                template::run(o, &a, &s, &cancel).await
            })
            .await
        }
        DbCommand::Clone(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            with_db(&s, Collect::Leftovers, async |o| {
                clone::run(o, &a, &s, &cancel).await
            })
            .await
        }
        DbCommand::Drop(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            with_db(&s, Collect::Leftovers, async |o| drop::run(o, &a, &s).await).await
        }
        // Reading never writes: no collection before a list or a dry run.
        DbCommand::List(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            with_db(&s, Collect::Nothing, async |o| list::run(o, &a, &s).await).await
        }
        DbCommand::Gc(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            let collect = if a.dry_run {
                Collect::Nothing
            } else {
                Collect::Leftovers
            };
            with_db(&s, collect, async |o| gc::run(o, &a, &s).await).await
        }
        // Nothing collected first: what is touched may be a clone gc would take.
        DbCommand::Touch(a) => {
            let s = Settings::of(&a.settings, &cwd)?;
            with_db(&s, Collect::Nothing, async |o| touch::run(o, &a).await).await
        }
        DbCommand::Ephemeral(a) => ephemeral::run(&a, &cancel).await,
        DbCommand::Fingerprint(_) => unreachable!("dispatched with `dbfork run`'s flow"),
    }
}

/// Opens the verb's database (saying whether what dead processes left is
/// collected first), runs the verb, and stops the ephemeral server if there
/// is one, whatever the verb's outcome.
async fn with_db<T>(
    settings: &Settings,
    collect: Collect,
    verb: impl AsyncFnOnce(&Opened) -> Result<T>,
) -> Result<T> {
    let db = database(settings, collect)?;
    let opened = Opened::open(&db, &settings.connection()?, collect).await?;
    let result = verb(&opened).await;
    let closed = opened.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

/// The database a verb works on: `--db`, else the project's (`db` in its
/// configuration file, else the embedded SQLite database in its `.dbfork/`),
/// which is named.
fn database(settings: &Settings, collect: Collect) -> Result<String> {
    let db = settings.database()?;
    if settings.flagged("db") {
        return Ok(db);
    }
    if collect == Collect::Nothing && settings::unmade_sqlite(&db) {
        // Reading never writes: opening it would make it.
        anyhow::bail!(
            "this project has no dbfork database yet ({db} does not exist; `dbfork run` makes it): nothing to show. Give --db to look at a server"
        );
    }
    dbfork_meta::say!(
        "dbfork: the project's database: {} (give --db for another)",
        dbfork_engine::url::mask_raw(&db)
    );
    Ok(db)
}

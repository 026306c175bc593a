//! `dbfork db ...`: the engine's operations one step at a time.

use anyhow::Result;
use dbfork_engine::ops::Cancel;

use crate::cli::{DbArgs, DbCommand};
use crate::target::{Collect, Opened};

mod clone;
mod drop;
mod ephemeral;
mod gc;
mod list;
mod template;
mod touch;

pub async fn run(command: DbCommand, cancel: Cancel) -> Result<()> {
    match command {
        DbCommand::Template(a) => {
            with_db(&a.db, async |o| template::run(o, &a, &cancel).await).await
        }
        DbCommand::Clone(a) => with_db(&a.db, async |o| clone::run(o, &a, &cancel).await).await,
        DbCommand::Drop(a) => with_db(&a.db, async |o| drop::run(o, &a).await).await,
        // Reading never writes: no collection before a list or a dry run.
        DbCommand::List(a) => {
            with_db_as(&a.db, Collect::Nothing, async |o| list::run(o, &a).await).await
        }
        DbCommand::Gc(a) if a.dry_run => {
            with_db_as(&a.db, Collect::Nothing, async |o| gc::run(o, &a).await).await
        }
        DbCommand::Gc(a) => with_db(&a.db, async |o| gc::run(o, &a).await).await,
        // Nothing collected first: what is touched may be a clone gc would take.
        DbCommand::Touch(a) => {
            with_db_as(&a.db, Collect::Nothing, async |o| touch::run(o, &a).await).await
        }
        DbCommand::Ephemeral(a) => ephemeral::run(&a, &cancel).await,
        DbCommand::Fingerprint(_) => unreachable!("dispatched with `dbfork run`'s flow"),
    }
}

/// Opens `--db`, runs the verb, and stops the ephemeral server if there is one,
/// whatever the verb's outcome.
async fn with_db<T>(args: &DbArgs, verb: impl AsyncFnOnce(&Opened) -> Result<T>) -> Result<T> {
    with_db_as(args, Collect::Leftovers, verb).await
}

/// [`with_db`], saying whether what dead processes left is collected first.
async fn with_db_as<T>(
    args: &DbArgs,
    collect: Collect,
    verb: impl AsyncFnOnce(&Opened) -> Result<T>,
) -> Result<T> {
    let opened = Opened::open(args, collect).await?;
    let result = verb(&opened).await;
    let closed = opened.close().await;
    let value = result?;
    closed?;
    Ok(value)
}

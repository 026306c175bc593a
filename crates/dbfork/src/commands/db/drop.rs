//! `dbfork db drop`: drop databases dbfork created, and nothing else.

use anyhow::Result;
use dbfork_engine::ops;

use crate::cli::DropArgs;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &DropArgs, settings: &Settings) -> Result<()> {
    ops::drop_registered(
        &opened.backend,
        &args.names,
        settings.connection()?.drop_timeout,
    )
    .await?;
    for name in &args.names {
        dbfork_meta::say!("dbfork: dropped {name}");
    }
    Ok(())
}

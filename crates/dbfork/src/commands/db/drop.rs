//! `dbfork db drop`: drop databases dbfork created, and nothing else.

use anyhow::Result;
use dbfork_engine::ops;

use crate::cli::DropArgs;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &DropArgs, settings: &Settings) -> Result<()> {
    // The collection this command started with may have dropped some of
    // them already (their owner is gone): done, not refused.
    let (gone, names): (Vec<String>, Vec<String>) = args
        .names
        .iter()
        .cloned()
        .partition(|name| opened.collected.contains(name));
    ops::drop_registered(&opened.backend, &names, settings.connection()?.drop_timeout).await?;
    for name in &gone {
        dbfork_meta::say!("dbfork: {name} was already removed (left behind, see above)");
    }
    for name in &names {
        dbfork_meta::say!("dbfork: dropped {name}");
    }
    Ok(())
}

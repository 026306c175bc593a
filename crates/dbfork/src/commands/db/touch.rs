//! `dbfork db touch`: renew the heartbeat of databases dbfork created.

use anyhow::Result;
use dbfork_engine::ops;

use crate::cli::TouchArgs;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &TouchArgs) -> Result<()> {
    ops::touch_registered(&opened.backend, &args.names).await?;
    for name in &args.names {
        dbfork_meta::say!("dbfork: renewed the heartbeat of {name}");
    }
    Ok(())
}

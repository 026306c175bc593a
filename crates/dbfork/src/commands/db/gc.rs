//! `dbfork db gc`: collect what owners left behind.

use anyhow::{bail, Result};
use dbfork_engine::ops::{self, GcOptions};
use dbfork_engine::Backend;

use crate::cli::GcArgs;
use crate::settings::Settings;
use crate::target::Opened;

pub async fn run(opened: &Opened, args: &GcArgs, settings: &Settings) -> Result<()> {
    let connection = settings.connection()?;
    let options = GcOptions {
        dry_run: args.dry_run,
        older_than: args.older_than,
        heartbeat_ttl: connection.heartbeat_ttl,
        drop_deadline: connection.drop_timeout,
        every_template: false,
    };
    let collected = ops::gc(&opened.backend, &options).await?;
    if let Some(warning) = ops::foreign_rows_warning(&opened.backend.registry_list().await?) {
        dbfork_meta::say!("dbfork: warning: {warning}");
    }
    if args.json {
        dbfork_meta::out!("{}", serde_json::to_value(&collected)?);
    } else {
        for c in &collected {
            let verb = match (&c.error, args.dry_run) {
                (Some(_), _) => "could not drop",
                (None, true) => "would drop",
                (None, false) => "dropped",
            };
            dbfork_meta::say!(
                "dbfork: {verb} {} {}: {}",
                c.kind.as_str(),
                c.name,
                c.reason
            );
            if let Some(e) = &c.error {
                dbfork_meta::say!("  {e}");
            }
        }
        if collected.is_empty() {
            dbfork_meta::say!("dbfork: nothing to collect");
        }
    }
    let failed = collected.iter().filter(|c| c.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} database(s) could not be dropped; see above");
    }
    Ok(())
}

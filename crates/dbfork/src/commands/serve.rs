//! `dbfork serve`: the pool service on the project's database server, until
//! Ctrl-C, SIGTERM or SIGHUP; then every clone it made is dropped (its
//! templates stay).

use anyhow::Result;
use dbfork_engine::ops::Cancel;
use dbfork_serve::{Listen, ServeConfig};

use crate::cli::ServeArgs;
use crate::settings::Settings;
use crate::target::{Collect, Opened};

pub async fn run(args: ServeArgs, cancel: Cancel) -> Result<()> {
    let settings = Settings::of(&args.settings, &std::env::current_dir()?)?;
    let addresses = settings.list("listen")?.unwrap_or_default();
    let token = settings.service_token(&addresses)?;
    let listen: Vec<Listen> = addresses
        .iter()
        .filter_map(|address| Listen::parse(address))
        .collect();
    let connection = settings.connection()?;
    let config = ServeConfig {
        pool_size: settings.count_or_default("pool_size")?,
        pool_max: settings.count_or_default("pool_max")?,
        max_databases: settings.count_or_default("max_databases")?,
        lease_ttl: settings.duration("lease_ttl")?,
        wait: settings.duration_or_default("lease_wait")?,
        drop_timeout: connection.drop_timeout,
        lock_timeout: settings.duration_or_default("lock_timeout")?,
        clone_concurrency: 4,
        token,
        max_bytes: settings.size("max_bytes")?,
    };
    let db = settings.database()?;
    let bound = dbfork_serve::bind(&listen).await?;
    let opened = Opened::open(&db, &connection, Collect::Leftovers).await?;
    let addresses: Vec<String> = bound.iter().map(|b| b.address()).collect();
    // Where to reach it, for scripts: one address per line on stdout.
    for address in &addresses {
        dbfork_meta::out!("{address}");
    }
    dbfork_meta::say!(
        "dbfork: serving clones of templates on {} at {} (dbfork's API under /api/dbfork/v1, IntegreSQL's under /api/v1; {} ready per template, at most {}, {} in all); Ctrl-C, SIGTERM or SIGHUP drains it",
        dbfork_engine::url::mask_raw(&db),
        addresses.join(" and "),
        config.pool_size,
        config.pool_max,
        config.max_databases
    );
    let Opened {
        backend, server, ..
    } = opened;
    let cancel = if settings.switch("exit_with_stdin")?.unwrap_or(false) {
        until_stdin_closes(cancel)
    } else {
        cancel
    };
    dbfork_serve::serve(backend, config, bound, cancel).await;
    dbfork_meta::say!(
        "dbfork: drained: every clone the service made is dropped; its templates stay"
    );
    if let Some(server) = server {
        server.stop().await?;
    }
    Ok(())
}

/// A cancel that comes with `signals` or when standard input closes (the
/// process that started the service with a pipe on it has ended).
fn until_stdin_closes(signals: Cancel) -> Cancel {
    let (canceller, cancel) = Cancel::new();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        let closed = async {
            loop {
                match tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::select! {
            () = closed => dbfork_meta::say!("dbfork: standard input closed: draining"),
            () = signals.cancelled() => {}
        }
        canceller.cancel();
    });
    cancel
}

//! Opens what `--db` names: a server by URL, or a private ephemeral server
//! that lives as long as the command.

use anyhow::Result;
use dbfork_engine::backend::ConnectOptions;
use dbfork_engine::ephemeral::{self, EphemeralServer};
use dbfork_engine::ops;
use dbfork_engine::{AnyBackend, Target};

use crate::cli::DbArgs;

/// A connected backend, and the ephemeral server behind it if there is one.
pub struct Opened {
    pub backend: AnyBackend,
    pub server: Option<EphemeralServer>,
}

impl Opened {
    pub async fn open(args: &DbArgs) -> Result<Opened> {
        let removed = ephemeral::collect_stale();
        for dir in removed {
            tracing::info!(
                "removed the ephemeral server {} left by a dbfork that is gone",
                dir.display()
            );
        }
        for dir in dbfork_runner::run::collect_stale_run_dirs() {
            tracing::info!(
                "removed {}, left by a dbfork run that is gone",
                dir.display()
            );
        }
        let options = ConnectOptions {
            connect_timeout: args.connect_timeout,
        };
        let (url, server) = match Target::parse(&args.db)? {
            Target::Url(url) => (url, None),
            Target::Ephemeral(kind) => {
                let server = EphemeralServer::start(kind).await?;
                eprintln!(
                    "dbfork: started an ephemeral {} server at {}; it is removed when this command ends",
                    kind.name(),
                    server.url()
                );
                (server.url().clone(), Some(server))
            }
        };
        match AnyBackend::connect(&url, &options).await {
            Ok(backend) => {
                collect_leftovers(&backend, args).await;
                Ok(Opened { backend, server })
            }
            Err(e) => {
                if let Some(server) = server {
                    let _ = server.stop().await;
                }
                Err(e.into())
            }
        }
    }

    /// Stops the ephemeral server, if any.
    pub async fn close(self) -> Result<()> {
        drop(self.backend);
        if let Some(server) = self.server {
            server.stop().await?;
        }
        Ok(())
    }
}

/// Every command first removes what dead dbfork processes left on this server
/// (a `kill -9` leaves no chance to clean up): clones whose owner is gone and
/// abandoned template builds. Templates are kept. A failure here is only a warning.
async fn collect_leftovers(backend: &AnyBackend, args: &DbArgs) {
    let options = ops::GcOptions {
        dry_run: false,
        older_than: None,
        heartbeat_ttl: LEFTOVER_HEARTBEAT_TTL,
        drop_deadline: args.drop_timeout,
    };
    match ops::gc(backend, &options).await {
        Ok(collected) => {
            for c in collected.iter().filter(|c| c.dropped) {
                tracing::info!("removed {} ({})", c.name, c.reason);
            }
            let n = collected.iter().filter(|c| c.dropped).count();
            if n > 0 {
                eprintln!(
                    "dbfork: removed {n} database{} left by dbfork processes that are gone",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
        Err(e) => tracing::warn!("could not collect leftovers: {e}"),
    }
}

/// Entries of other hosts count as abandoned only after this long without a heartbeat.
const LEFTOVER_HEARTBEAT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

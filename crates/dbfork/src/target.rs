//! Opens what `--db` names: a server by URL, or a private ephemeral server
//! that lives as long as the command.

use anyhow::Result;
use dbfork_engine::backend::ConnectOptions;
use dbfork_engine::ephemeral::{self, EphemeralServer};
use dbfork_engine::ops;
use dbfork_engine::{AnyBackend, Target};

/// How a command talks to its server: the settings every verb has.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub connect_timeout: std::time::Duration,
    pub drop_timeout: std::time::Duration,
    pub heartbeat_ttl: std::time::Duration,
}

/// A connected backend, and the ephemeral server behind it if there is one.
pub struct Opened {
    pub backend: AnyBackend,
    pub server: Option<EphemeralServer>,
    /// What the collection at the start dropped (left by dead processes).
    pub collected: Vec<String>,
}

/// Whether opening a server first collects what dead dbfork processes left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    /// Every command that makes or drops something.
    Leftovers,
    /// Reading (`db list`, `db gc --dry-run`): nothing is dropped.
    Nothing,
}

impl Opened {
    /// Opens `db` (a URL, or an ephemeral server's name).
    pub async fn open(db: &str, connection: &Connection, collect: Collect) -> Result<Opened> {
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
        for dir in ops::collect_stale_client_dirs() {
            dbfork_meta::say!(
                "dbfork: removed {}, a client option file left by a dbfork that is gone",
                dir.display()
            );
        }
        let options = ConnectOptions {
            connect_timeout: connection.connect_timeout,
        };
        let (url, server) = match Target::parse(db)? {
            Target::Url(url) => (url, None),
            Target::Ephemeral(kind) => {
                let server = EphemeralServer::start(kind).await?;
                dbfork_meta::say!(
                    "dbfork: started an ephemeral {} server at {}; it is removed when this command ends",
                    kind.name(),
                    server.url()
                );
                (server.url().clone(), Some(server))
            }
        };
        match AnyBackend::connect(&url, &options).await {
            Ok(backend) => {
                let collected = if collect == Collect::Leftovers {
                    collect_leftovers(&backend, connection).await
                } else {
                    Vec::new()
                };
                Ok(Opened {
                    backend,
                    server,
                    collected,
                })
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

/// Every command that makes or drops something first removes what dead dbfork
/// processes left on this server (a `kill -9` leaves no chance to clean up):
/// clones whose owner is gone and abandoned template builds, one line each.
/// Templates are kept. A failure here is only a warning.
async fn collect_leftovers(backend: &AnyBackend, connection: &Connection) -> Vec<String> {
    let options = ops::GcOptions {
        dry_run: false,
        older_than: None,
        heartbeat_ttl: connection.heartbeat_ttl,
        drop_deadline: connection.drop_timeout,
        every_template: false,
    };
    let mut dropped = Vec::new();
    match ops::gc(backend, &options).await {
        Ok(collected) => {
            dropped.extend(
                collected
                    .iter()
                    .filter(|c| c.dropped && c.error.is_none())
                    .map(|c| c.name.clone()),
            );
            for c in &collected {
                match &c.error {
                    None if c.dropped => dbfork_meta::say!(
                        "dbfork: removed {} {}, left behind: {}",
                        c.kind.as_str(),
                        c.name,
                        c.reason
                    ),
                    None => {}
                    Some(e) => dbfork_meta::say!(
                        "dbfork: warning: could not remove {} {} ({}): {e}",
                        c.kind.as_str(),
                        c.name,
                        c.reason
                    ),
                }
            }
        }
        Err(e) => tracing::warn!("could not collect leftovers: {e}"),
    }
    dropped
}

//! `dbfork db ephemeral`: a private server for as long as this command runs.

use anyhow::Result;
use dbfork_engine::ephemeral::{self, EphemeralServer};
use dbfork_engine::ops::Cancel;
use dbfork_engine::Kind;

use crate::cli::EphemeralArgs;
use crate::errors::UsageError;

pub async fn run(args: &EphemeralArgs, cancel: &Cancel) -> Result<()> {
    let kind = match args.kind.as_str() {
        "postgres" | "postgresql" => Kind::Postgres,
        "mariadb" | "mysql" => Kind::Mysql,
        other => {
            return Err(UsageError(format!(
                "no ephemeral server of kind `{other}`: choose postgres or mariadb"
            ))
            .into())
        }
    };
    ephemeral::collect_stale();
    let mut server = EphemeralServer::start(kind).await?;
    dbfork_meta::out!("{}", server.url().to_url_without_password());
    dbfork_meta::say!(
        "dbfork: ephemeral {} server running; Ctrl-C, SIGTERM or SIGHUP stops it",
        kind.name()
    );
    // A server that ends by itself (killed, crashed, restarted by someone)
    // is an error, not a quiet wait for a signal.
    let ended = tokio::select! {
        () = cancel.cancelled() => None,
        e = server.ended_by_itself() => Some(e),
    };
    server.stop().await?;
    match ended {
        None => {
            dbfork_meta::say!("dbfork: ephemeral server stopped and removed");
            Ok(())
        }
        Some(e) => Err(e.into()),
    }
}

//! Sessions on a database dbfork drops: which to end (exactly), who holds it,
//! and the drop itself.

use super::*;

impl Mysql {
    /// Kills every other session whose default database is `name`, and, with
    /// `statements`, what a dbfork that was killed may have left running on
    /// it: its `CREATE DATABASE` of exactly `name`, and a statement naming
    /// `name` from a session whose default database is one of dbfork's (the
    /// sessions filling a clone use the clone as theirs, and read the
    /// template). A session on any other database whose statement merely
    /// mentions the name is a bystander and is left alone.
    pub(super) async fn kill_sessions(
        &self,
        conn: &mut Conn,
        name: &str,
        statements: bool,
    ) -> Result<usize> {
        let rows: Vec<Row> = conn
            .exec(
                "SELECT ID, DB, INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                 AND (DB = ? OR (? AND LOCATE(CONCAT(CHAR(96), ?, CHAR(96)), INFO) > 0))",
                (name, statements, name),
            )
            .await
            .map_err(q(format!("listing the sessions on {name}")))?;
        let quoted = ident(name);
        let mut killed = 0;
        for row in &rows {
            let id: u64 = col(row, 0, "listing sessions")?;
            let db: Option<String> = col(row, 1, "listing sessions")?;
            let info: Option<Vec<u8>> = col(row, 2, "listing sessions")?;
            let uses = db.as_deref() == Some(name);
            let ours = db
                .as_deref()
                .is_some_and(|d| d.starts_with(crate::names::PREFIX));
            let names = statements
                && info.is_some_and(|i| {
                    creates(&i, &quoted)
                        || (ours && i.windows(quoted.len()).any(|w| w == quoted.as_bytes()))
                });
            if !(uses || names) {
                continue;
            }
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                // ER_NO_SUCH_THREAD: it ended on its own.
                Err(e) if server_code(&e) == Some(1094) => {}
                Err(e) => tracing::debug!("could not kill session {id} on {name}: {e}"),
            }
        }
        Ok(killed)
    }

    pub(super) async fn holders(&self, conn: &mut Conn, name: &str) -> String {
        let rows: std::result::Result<Vec<Row>, _> = conn
            .exec(
                "SELECT ID, COALESCE(USER, ''), COALESCE(HOST, ''), COALESCE(COMMAND, ''), COALESCE(STATE, '') \
                 FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()",
                (name,),
            )
            .await;
        match rows {
            Ok(rows) if rows.is_empty() => "no session uses it any more".to_string(),
            Ok(rows) => {
                let list: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        let s = |i| col::<String>(r, i, "").unwrap_or_default();
                        format!(
                            "session {} (user {}, host {}, command {}, state '{}')",
                            col::<u64>(r, 0, "").unwrap_or_default(),
                            s(1),
                            s(2),
                            s(3),
                            s(4)
                        )
                    })
                    .collect();
                format!("still used by {}", list.join(", "))
            }
            Err(e) => format!("and its sessions could not be listed: {e}"),
        }
    }

    /// The clause that marks a database as dbfork's in the statement that
    /// creates it (so that no moment exists when it is there unmarked).
    pub(super) fn mark_clause(&self) -> String {
        if self.marks {
            format!(" COMMENT '{}'", crate::names::MARK)
        } else {
            String::new()
        }
    }

    pub(super) async fn schema_exists(&self, conn: &mut Conn, name: &str) -> Result<bool> {
        let found: Vec<String> = conn
            .exec(
                "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(q(format!("looking for the database {name}")))?;
        Ok(found.iter().any(|n| n == name))
    }

    /// One `DROP DATABASE`, waiting at most a second for the metadata locks of other sessions.
    pub(super) async fn try_drop(
        &self,
        conn: &mut Conn,
        name: &str,
    ) -> std::result::Result<(), mysql_async::Error> {
        conn.query_drop("SET SESSION lock_wait_timeout = 1").await?;
        let dropped = conn
            .query_drop(format!("DROP DATABASE IF EXISTS {}", ident(name)))
            .await;
        conn.query_drop(format!("SET SESSION lock_wait_timeout = {LOCK_WAIT_SECS}"))
            .await?;
        dropped
    }
}

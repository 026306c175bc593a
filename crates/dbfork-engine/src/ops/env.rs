//! The environment a child gets for a database: `DATABASE_URL`, the
//! backend's client variables, and a private `my.cnf` where MySQL needs one.

use super::*;

/// What a process needs to use one database: its environment variables and, where
/// the backend's clients need one, a client option file. MySQL and MariaDB clients
/// read `/etc/mysql/my.cnf` (whose `socket` names the system server) after their
/// `MYSQL_*` variables, so the variables alone would send `mariadb` or `mysqldump`
/// to the wrong server; a `my.cnf` in `MYSQL_HOME` is read after it and wins. The
/// file (it may hold the password) lives in a private directory removed on drop.
pub struct DatabaseEnv {
    pub vars: Vec<(String, String)>,
    dir: Option<std::path::PathBuf>,
}

/// How a client names database `name`: its name on a server, its file's path on SQLite.
pub fn database_reference(backend: &AnyBackend, name: &str) -> String {
    match backend
        .client_env(name)
        .into_iter()
        .find(|(k, _)| k == dbfork_protocol::env::SQLITE_PATH)
    {
        Some((_, path)) => path,
        None => name.to_string(),
    }
}

impl DatabaseEnv {
    /// The environment for database `name` on `backend`'s server.
    pub fn new(backend: &AnyBackend, name: &str) -> Result<DatabaseEnv> {
        let url = backend.url().with_database(name).to_url_with_password();
        let mut vars = vec![
            ("DATABASE_URL".to_string(), url.clone()),
            (dbfork_protocol::env::DATABASE_URL.to_string(), url),
            (
                dbfork_protocol::env::DATABASE_NAME.to_string(),
                name.to_string(),
            ),
            (
                dbfork_protocol::env::BACKEND.to_string(),
                backend.kind().id().to_string(),
            ),
        ];
        vars.extend(backend.client_env(name));
        let Some(options) = backend.client_option_file(name) else {
            return Ok(DatabaseEnv { vars, dir: None });
        };
        let dir = std::env::temp_dir().join(format!(
            "{CLIENT_DIR_PREFIX}{}-{}-{name}",
            process::private_dir_owner(),
            process::now()
        ));
        write_private(&dir, &options).map_err(Error::io(format!(
            "writing the client option file in {}",
            dir.display()
        )))?;
        for var in ["MYSQL_HOME", "MARIADB_HOME"] {
            vars.push((var.to_string(), dir.display().to_string()));
        }
        Ok(DatabaseEnv {
            vars,
            dir: Some(dir),
        })
    }

    /// The environment for `made[0]` (as [`DatabaseEnv::new`]) with the
    /// clones after it named for `aliases`, in order, in `DBFORK_DATABASES`:
    /// a JSON object from alias to database name (SQLite: file path).
    pub fn for_aliases(
        backend: &AnyBackend,
        made: &[MadeClone],
        aliases: &[String],
    ) -> Result<DatabaseEnv> {
        let Some(first) = made.first() else {
            return Err(Error::Interrupted);
        };
        let mut env = DatabaseEnv::new(backend, &first.name)?;
        if aliases.is_empty() {
            return Ok(env);
        }
        let mut map = serde_json::Map::new();
        for (alias, clone) in aliases.iter().zip(&made[1..]) {
            let name = database_reference(backend, &clone.name);
            map.insert(alias.clone(), serde_json::Value::String(name));
        }
        env.vars.push((
            dbfork_protocol::env::DATABASES.to_string(),
            serde_json::Value::Object(map).to_string(),
        ));
        Ok(env)
    }
}

impl Drop for DatabaseEnv {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The prefix of a client option file's private directory:
/// `<prefix><pid>-<pid namespace>-...` ([`process::private_dir_owner`]).
pub(super) const CLIENT_DIR_PREFIX: &str = "dbfork-client-";

/// Removes the client option directories (a `my.cnf` with the password) of
/// dbfork processes that are gone; returns them.
pub fn collect_stale_client_dirs() -> Vec<std::path::PathBuf> {
    process::collect_stale_dirs(CLIENT_DIR_PREFIX)
}

/// Writes `dir/my.cnf`, readable by this user only.
pub(super) fn write_private(dir: &std::path::Path, options: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("my.cnf"))?;
    std::io::Write::write_all(&mut file, options.as_bytes())
}

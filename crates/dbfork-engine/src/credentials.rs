//! Passwords from where the servers' own clients look for them, so that a
//! password never has to be on dbfork's command line (where any user can read
//! it in `/proc/PID/cmdline`): PostgreSQL's `PGPASSWORD` and password file
//! (`PGPASSFILE`, else `~/.pgpass`), MySQL's `MYSQL_PWD` and the `[client]`
//! section of `~/.my.cnf`. A password in the URL wins.

use std::path::PathBuf;

use crate::url::{DbUrl, Kind};

/// `url` with the password its server's clients would use, when it has none.
pub fn with_client_password(url: &DbUrl) -> DbUrl {
    let mut url = url.clone();
    if url.password.is_none() {
        url.password = match url.kind {
            Kind::Postgres => postgres_password(&url),
            Kind::Mysql => mysql_password(),
            Kind::Sqlite => None,
        };
    }
    url
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn postgres_password(url: &DbUrl) -> Option<String> {
    if let Some(p) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".pgpass")))?;
    if !file.exists() {
        return None;
    }
    if !private(&file) {
        tracing::warn!(
            "{} is readable by others; ignored, as libpq ignores it (chmod 0600 it)",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let host = match (&url.host, &url.socket) {
        (Some(h), _) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = url.port.unwrap_or(5432).to_string();
    let database = url.database.clone().unwrap_or_else(|| "postgres".into());
    let user = url.user.clone().unwrap_or_else(|| "postgres".into());
    pgpass_lookup(&text, &[&host, &port, &database, &user])
}

/// The password of the first line of a `.pgpass` text whose four fields match
/// `wanted` (host, port, database, user); `*` matches anything, `\:` and `\\`
/// are a literal `:` and `\`.
fn pgpass_lookup(text: &str, wanted: &[&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, want)| field == "*" || field == want);
        if matches {
            return Some(fields[4..].join(":"));
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let literal = match c {
            '\\' => chars.next(),
            ':' if fields.len() < 5 => {
                fields.push(String::new());
                None
            }
            c => Some(c),
        };
        if let (Some(c), Some(field)) = (literal, fields.last_mut()) {
            field.push(c);
        }
    }
    fields
}

fn mysql_password() -> Option<String> {
    if let Some(p) = std::env::var("MYSQL_PWD").ok().filter(|p| !p.is_empty()) {
        return Some(p);
    }
    let text = std::fs::read_to_string(home()?.join(".my.cnf")).ok()?;
    option_file_password(&text)
}

/// `password` of the `[client]` section of a MySQL option file.
fn option_file_password(text: &str) -> Option<String> {
    let mut in_client = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_client = line.eq_ignore_ascii_case("[client]");
            continue;
        }
        if !in_client || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim().eq_ignore_ascii_case("password") {
                let value = value.trim();
                let unquoted = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(value);
                return Some(unquoted.to_string());
            }
        }
    }
    None
}

/// Whether `file` is readable by its owner only (libpq's rule for `.pgpass`).
fn private(file: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let text = "# comment\n\
                    db.local:5432:app:alice:first\n\
                    *:5432:*:bob:pa\\:ss\\\\word\n\
                    localhost:*:*:*:socket:pw\n";
        assert_eq!(
            pgpass_lookup(text, &["db.local", "5432", "app", "alice"]).as_deref(),
            Some("first")
        );
        assert_eq!(
            pgpass_lookup(text, &["other", "5432", "postgres", "bob"]).as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            pgpass_lookup(text, &["localhost", "6432", "x", "carol"]).as_deref(),
            Some("socket:pw")
        );
        assert_eq!(
            pgpass_lookup(text, &["db.local", "5433", "app", "alice"]),
            None
        );
    }

    #[test]
    fn my_cnf_client_section() {
        let text = "[mysqld]\npassword=server\n[client]\nuser=root\npassword = \"se cret\"\n";
        assert_eq!(option_file_password(text).as_deref(), Some("se cret"));
        assert_eq!(option_file_password("[mysql]\npassword=x\n"), None);
    }

    #[test]
    fn environment_and_files() {
        // nextest runs each test in a process of its own: the variables are ours.
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(&pgpass, "h:5432:postgres:u:from-file\n").unwrap();
        std::env::set_var("PGPASSFILE", &pgpass);
        std::env::remove_var("PGPASSWORD");
        let url = DbUrl::parse("postgres://u@h:5432/postgres").unwrap();
        // Readable by others: ignored, as libpq does.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(with_client_password(&url).password, None);
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            with_client_password(&url).password.as_deref(),
            Some("from-file")
        );
        std::env::set_var("PGPASSWORD", "from-env");
        assert_eq!(
            with_client_password(&url).password.as_deref(),
            Some("from-env")
        );
        let given = DbUrl::parse("postgres://u:given@h:5432/postgres").unwrap();
        assert_eq!(
            with_client_password(&given).password.as_deref(),
            Some("given")
        );
        std::env::set_var("MYSQL_PWD", "my-env");
        let my = DbUrl::parse("mysql://root@h:3306/mysql").unwrap();
        assert_eq!(
            with_client_password(&my).password.as_deref(),
            Some("my-env")
        );
    }
}

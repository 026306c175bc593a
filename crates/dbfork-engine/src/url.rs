//! Database URLs: `postgres://`, `mysql://`/`mariadb://`, `sqlite://`, and the
//! ephemeral servers `postgres:ephemeral` / `mariadb:ephemeral`.
//!
//! A server URL names the server and the maintenance database dbfork may use
//! for its admin work (default `postgres` on PostgreSQL, `mysql` on MySQL).
//! `Display` masks the password; only [`DbUrl::to_url_with_password`] reveals it,
//! for the environment of child processes.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Mysql,
    Sqlite,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL",
            Kind::Mysql => "MySQL/MariaDB",
            Kind::Sqlite => "SQLite",
        }
    }

    /// The value of `DBFORK_BACKEND` in child processes.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
            Kind::Sqlite => "sqlite",
        }
    }
}

/// What `--db` names: a server by URL, or a private throwaway server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Url(DbUrl),
    Ephemeral(Kind),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target> {
        match text.trim() {
            "postgres:ephemeral" | "postgresql:ephemeral" => Ok(Target::Ephemeral(Kind::Postgres)),
            "mariadb:ephemeral" | "mysql:ephemeral" => Ok(Target::Ephemeral(Kind::Mysql)),
            _ => DbUrl::parse(text).map(Target::Url),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub kind: Kind,
    pub user: Option<String>,
    pub password: Option<String>,
    /// TCP host name or address.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Unix socket directory (PostgreSQL) or socket file (MySQL).
    pub socket: Option<PathBuf>,
    /// The database on a server; for SQLite the file path.
    pub database: Option<String>,
    /// Query parameters dbfork does not interpret, kept for the URLs it hands out.
    pub params: Vec<(String, String)>,
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({self})")
    }
}

/// A URL's query (`sslmode=require&connect_timeout=5`), decoded.
fn query_params(query: &str) -> std::result::Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `user:password` (or `user`), decoded.
fn user_and_password(
    userinfo: &str,
) -> std::result::Result<(Option<String>, Option<String>), String> {
    Ok(match userinfo.split_once(':') {
        Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?)),
        None => (Some(percent_decode(userinfo)?), None),
    })
}

impl DbUrl {
    pub fn parse(text: &str) -> Result<DbUrl> {
        let bad = |reason: &str| Error::BadUrl {
            url: mask_raw(text),
            reason: reason.to_string(),
        };
        let text = text.trim();
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("it has no scheme (`postgres://`, `mysql://`, `sqlite://`)"))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Kind::Postgres,
            "mysql" | "mariadb" => Kind::Mysql,
            "sqlite" | "sqlite3" => Kind::Sqlite,
            other => return Err(bad(&format!("the scheme `{other}` is not supported"))),
        };
        // A password may hold an unencoded `/`, `?` or `@`: with `user:` before
        // the last `@`, everything up to that `@` is the user and password.
        let (userinfo_lenient, rest) = match rest.rfind('@') {
            Some(at)
                if kind != Kind::Sqlite
                    && rest[..at].contains(':')
                    && rest[..at].contains(['/', '?', '@']) =>
            {
                (Some(&rest[..at]), &rest[at + 1..])
            }
            _ => (None, rest),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let params = query_params(query.unwrap_or("")).map_err(|e| bad(&e))?;
        if kind == Kind::Sqlite {
            if rest.is_empty() {
                return Err(bad(
                    "it names no file: use sqlite:///abs/path.db or sqlite://rel.db",
                ));
            }
            let path = percent_decode(rest).map_err(|e| bad(&e))?;
            return Ok(DbUrl {
                kind,
                user: None,
                password: None,
                host: None,
                port: None,
                socket: None,
                database: Some(path),
                params,
            });
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match (userinfo_lenient, authority.rsplit_once('@')) {
            (Some(u), _) => (Some(u), authority),
            (None, Some((u, h))) => (Some(u), h),
            (None, None) => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => user_and_password(u).map_err(|e| bad(&e))?,
        };
        let (host, port) = split_host_port(hostport).map_err(|e| bad(&e))?;
        let host = match host {
            Some(h) => Some(percent_decode(&h).map_err(|e| bad(&e))?),
            None => None,
        };
        let database = match percent_decode(path).map_err(|e| bad(&e))? {
            p if p.is_empty() => None,
            p if p.contains('/') => return Err(bad("the database name contains `/`")),
            p => Some(p),
        };
        let mut url = DbUrl {
            kind,
            user,
            password,
            host,
            port,
            socket: None,
            database,
            params: Vec::new(),
        };
        for (k, v) in params {
            url.apply_param(k, v).map_err(|e| bad(&e))?;
        }
        if let Some(h) = url.host.take() {
            if h.starts_with('/') {
                url.socket = Some(PathBuf::from(h));
            } else {
                url.host = Some(h);
            }
        }
        if url.host.is_none() && url.socket.is_none() {
            return Err(bad("it names no host: add one (e.g. 127.0.0.1) or a socket (`?host=/run/postgresql` on PostgreSQL, `?socket=/run/mysqld/mysqld.sock` on MySQL)"));
        }
        Ok(url)
    }

    /// A parameter of the URL's query: where the server is (a socket, a
    /// host, a port), the password, or one kept for the connection.
    fn apply_param(&mut self, k: String, v: String) -> std::result::Result<(), String> {
        match (self.kind, k.as_str()) {
            (Kind::Postgres, "host") if v.starts_with('/') => self.socket = Some(PathBuf::from(v)),
            (Kind::Postgres, "host") => self.host = Some(v),
            (Kind::Mysql, "socket") => self.socket = Some(PathBuf::from(v)),
            // libpq's `?password=`: a password like any other (masked when shown).
            (_, "password") => self.password = Some(v),
            (_, "port") => {
                self.port = Some(
                    v.parse()
                        .map_err(|_| format!("port `{v}` is not a number from 1 to 65535"))?,
                )
            }
            _ => self.params.push((k, v)),
        }
        Ok(())
    }

    /// The same server with another database.
    pub fn with_database(&self, name: &str) -> DbUrl {
        let mut url = self.clone();
        if self.kind == Kind::Sqlite {
            url.database = Some(
                self.sqlite_dir()
                    .join(format!("{name}.sqlite3"))
                    .display()
                    .to_string(),
            );
        } else {
            url.database = Some(name.to_string());
        }
        url
    }

    /// The directory an SQLite URL's databases live in.
    pub fn sqlite_dir(&self) -> PathBuf {
        let path = Path::new(self.database.as_deref().unwrap_or("."));
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The full URL, password included: only for the environment of child processes.
    pub fn to_url_with_password(&self) -> String {
        self.render(self.password.as_deref().map(|p| percent_encode(p, false)))
    }

    /// The URL without its password, for output: usable where the password
    /// comes from elsewhere (`PGPASSWORD`, `.pgpass`, `MYSQL_PWD`, trust auth).
    pub fn to_url_without_password(&self) -> String {
        self.render(None)
    }

    /// `password` is pushed as given: the caller encodes it (or masks it).
    fn render(&self, password: Option<String>) -> String {
        let scheme = match self.kind {
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
            Kind::Sqlite => "sqlite",
        };
        if self.kind == Kind::Sqlite {
            let path = self.database.as_deref().unwrap_or("");
            let mut out = format!("{scheme}://{}", percent_encode(path, true));
            push_params(&mut out, &self.params);
            return out;
        }
        let mut out = format!("{scheme}://");
        if let Some(user) = &self.user {
            out.push_str(&percent_encode(user, false));
            if let Some(p) = password {
                out.push(':');
                out.push_str(&p);
            }
            out.push('@');
        }
        if let Some(host) = &self.host {
            if host.contains(':') {
                out.push_str(&format!("[{host}]"));
            } else {
                out.push_str(host);
            }
            if let Some(port) = self.port {
                out.push_str(&format!(":{port}"));
            }
        }
        out.push('/');
        if let Some(db) = &self.database {
            out.push_str(&percent_encode(db, false));
        }
        let mut params = Vec::new();
        if let Some(socket) = &self.socket {
            let key = if self.kind == Kind::Postgres {
                "host"
            } else {
                "socket"
            };
            params.push((key.to_string(), socket.display().to_string()));
            if self.host.is_none() {
                if let Some(port) = self.port {
                    params.push(("port".to_string(), port.to_string()));
                }
            }
        }
        params.extend(self.params.iter().cloned());
        push_params(&mut out, &params);
        out
    }
}

impl fmt::Display for DbUrl {
    /// The URL with its password masked as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(self.password.as_ref().map(|_| "***".to_string())))
    }
}

fn push_params(out: &mut String, params: &[(String, String)]) {
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(&percent_encode(k, false));
        out.push('=');
        out.push_str(&percent_encode(v, true));
    }
}

fn split_host_port(hostport: &str) -> Result<(Option<String>, Option<u16>), String> {
    if hostport.is_empty() {
        return Ok((None, None));
    }
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or("an IPv6 host misses its closing `]`")?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port `{p}` is not a number from 1 to 65535"))?,
        ),
    };
    Ok(((!host.is_empty()).then_some(host), port))
}

/// `%2F` -> `/`; an error names a bad escape or text that is not UTF-8.
pub fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded part is not UTF-8".to_string())
}

fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Masks the password of a URL that may not parse, for error messages.
pub fn mask_raw(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_string();
    };
    // The last `@` ends the user and password, even one with an unencoded
    // `/`, `?` or `@` in it; the user is what comes before its first `:`.
    let masked = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{}", &rest[at + 1..]),
            None => text.to_string(),
        },
        None => text.to_string(),
    };
    mask_password_params(&masked)
}

/// `password=...` in a query string, masked.
fn mask_password_params(text: &str) -> String {
    let Some((head, query)) = text.split_once('?') else {
        return text.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        for (raw, password) in [
            ("postgres://me:pa/ss@db:5432/x", "pa/ss"),
            ("postgres://me:pa?ss@db:5432/x", "pa?ss"),
            ("mysql://root:a@b/c?d@127.0.0.1:3306/mysql", "a@b/c?d"),
            (
                "postgres://me@db:5432/x?password=hunter2&sslmode=disable",
                "hunter2",
            ),
        ] {
            let url = DbUrl::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.password.as_deref(), Some(password), "{raw}");
            assert!(!url.to_string().contains(password), "{url}");
            assert!(!url.to_url_without_password().contains(password));
            assert!(!mask_raw(raw).contains(password), "{}", mask_raw(raw));
            // The password survives a round trip through the URL children get.
            let again = DbUrl::parse(&url.to_url_with_password()).unwrap();
            assert_eq!(again.password.as_deref(), Some(password), "{raw}");
            assert_eq!(again.host.as_deref(), url.host.as_deref());
        }
        // Malformed: the error shows the URL masked, never the password.
        for raw in [
            "postgres://me:sec/ret@db:99999/x",
            "postgres://me:p?w@db:0/x?password=p2",
        ] {
            let err = DbUrl::parse(raw).unwrap_err().to_string();
            assert!(
                !err.contains("sec/ret") && !err.contains("p?w") && !err.contains("p2"),
                "{err}"
            );
        }
    }

    #[test]
    fn postgres_tcp() {
        let u =
            DbUrl::parse("postgres://bob:s%40cret@db.local:6543/maint?sslmode=disable").unwrap();
        assert_eq!(u.kind, Kind::Postgres);
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.host.as_deref(), Some("db.local"));
        assert_eq!(u.port, Some(6543));
        assert_eq!(u.database.as_deref(), Some("maint"));
        assert_eq!(
            u.to_string(),
            "postgres://bob:***@db.local:6543/maint?sslmode=disable"
        );
        assert_eq!(
            u.with_database("dbfork_x").to_url_with_password(),
            "postgres://bob:s%40cret@db.local:6543/dbfork_x?sslmode=disable"
        );
    }

    #[test]
    fn postgres_socket() {
        let u = DbUrl::parse("postgresql://postgres@/postgres?host=/var/run/postgresql&port=5433")
            .unwrap();
        assert_eq!(u.socket.as_deref(), Some(Path::new("/var/run/postgresql")));
        assert_eq!(u.host, None);
        assert_eq!(u.port, Some(5433));
        let again = DbUrl::parse(&u.to_url_with_password()).unwrap();
        assert_eq!(again, u);
        let enc = DbUrl::parse("postgres://postgres@%2Ftmp%2Fsock/db").unwrap();
        assert_eq!(enc.socket.as_deref(), Some(Path::new("/tmp/sock")));
    }

    #[test]
    fn mysql_and_sqlite() {
        let u = DbUrl::parse("mariadb://root@127.0.0.1:3306").unwrap();
        assert_eq!(
            (u.kind, u.port, u.database.clone()),
            (Kind::Mysql, Some(3306), None)
        );
        let s = DbUrl::parse("mysql://root@/x?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(
            s.socket.as_deref(),
            Some(Path::new("/run/mysqld/mysqld.sock"))
        );
        let abs = DbUrl::parse("sqlite:///tmp/a/b.db").unwrap();
        assert_eq!(abs.database.as_deref(), Some("/tmp/a/b.db"));
        assert_eq!(
            abs.with_database("dbfork_c").database.as_deref(),
            Some("/tmp/a/dbfork_c.sqlite3")
        );
        let rel = DbUrl::parse("sqlite://rel.db").unwrap();
        assert_eq!(rel.sqlite_dir(), PathBuf::from("."));
    }

    #[test]
    fn errors_mask_the_password() {
        let err = DbUrl::parse("postgres://u:hunter2@host:99999/db")
            .unwrap_err()
            .to_string();
        assert!(err.contains("u:***@host"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("99999"), "{err}");
        for bad in [
            "localhost/db",
            "oracle://x/y",
            "postgres:///db",
            "sqlite://",
        ] {
            assert!(DbUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ephemeral_targets() {
        assert_eq!(
            Target::parse("postgres:ephemeral").unwrap(),
            Target::Ephemeral(Kind::Postgres)
        );
        assert_eq!(
            Target::parse("mariadb:ephemeral").unwrap(),
            Target::Ephemeral(Kind::Mysql)
        );
    }
}

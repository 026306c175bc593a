//! SQL text and values: quoting, rewriting a template's statements for a
//! clone, reading columns, error causes and codes.

use super::*;

/// A quoted identifier.
pub(super) fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Whether a MariaDB of `version` (`10.11.6-mariadb-...`) keeps schema
/// comments (10.5 and later).
pub(super) fn schema_comments(version: &str) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (10, 5)
}

/// Whether `statement` is dbfork's `CREATE DATABASE` of the database
/// `quoted` (backquoted), and not merely a statement naming it.
pub(super) fn creates(statement: &[u8], quoted: &str) -> bool {
    let head = format!("CREATE DATABASE {quoted}");
    statement.starts_with(head.as_bytes())
        && matches!(statement.get(head.len()), None | Some(b' ' | b';'))
}

pub(super) fn q(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> Error {
    let context = context.into();
    move |e| Error::query(NAME, context, cause(&e))
}

/// A driver error as a sentence: the driver wraps an I/O error twice, each
/// time behind "Input/output error: ", before the system's own words.
pub(super) fn cause(e: &mysql_async::Error) -> String {
    let text = e.to_string();
    let mut rest = text.as_str();
    while let Some(inner) = rest.strip_prefix("Input/output error: ") {
        rest = inner;
    }
    rest.to_string()
}

pub(super) fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Column `index` of `row`, converted.
pub(super) fn col<T: FromValue>(row: &Row, index: usize, context: &str) -> Result<T> {
    match row.get_opt::<T, usize>(index) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(Error::query(
            NAME,
            context,
            format!("unexpected value in column {index}: {e}"),
        )),
        None => Err(Error::query(
            NAME,
            context,
            format!("the result has no column {index}"),
        )),
    }
}

/// A `SHOW CREATE ...` text column, which is NULL when the user may not see the definition.
pub(super) fn text_col(row: &Row, index: usize, context: &str) -> Result<Vec<u8>> {
    col::<Option<Vec<u8>>>(row, index, context)?.ok_or_else(|| {
        Error::query(
            NAME,
            context,
            "the server shows no definition (the user lacks a privilege such as SHOW VIEW or SELECT on mysql.proc)",
        )
    })
}

pub(super) fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Rewrites the references to schema `from` in `text` into references to `to`:
/// `` `from`. `` and a bare `from.` that does not continue another name.
pub(super) fn requalify(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    let quoted = format!("{}.", ident(from));
    let bare = format!("{from}.");
    let replacement = format!("{}.", ident(to));
    let mut out = Vec::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if rest.starts_with(quoted.as_bytes()) {
            out.extend_from_slice(replacement.as_bytes());
            i += quoted.len();
            continue;
        }
        let after_boundary =
            i == 0 || !(is_ident_byte(text[i - 1]) || text[i - 1] == b'`' || text[i - 1] == b'.');
        if after_boundary && rest.starts_with(bare.as_bytes()) {
            out.extend_from_slice(replacement.as_bytes());
            i += bare.len();
            continue;
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// The `CONSTRAINT ... FOREIGN KEY ...` clauses of a `SHOW CREATE TABLE` text (one definition a line).
pub(super) fn foreign_key_clauses(create: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(create)
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("CONSTRAINT ") && line.contains(" FOREIGN KEY "))
        .map(|line| line.trim_end_matches(',').to_string())
        .collect()
}

/// Whether an `information_schema.COLUMNS.EXTRA` marks a generated column
/// (`VIRTUAL GENERATED`, `STORED GENERATED`, `PERSISTENT GENERATED`; not MySQL's `DEFAULT_GENERATED`).
pub(super) fn is_generated(extra: &str) -> bool {
    extra
        .split_whitespace()
        .any(|word| word.eq_ignore_ascii_case("GENERATED"))
}

/// A `GET_LOCK` name: the key itself, or a hash of it when it is longer than the server allows.
pub(super) fn lock_name(key: &str) -> String {
    if key.chars().count() <= MAX_LOCK_NAME {
        key.to_string()
    } else {
        format!("dbfork_{}", &blake3::hash(key.as_bytes()).to_hex()[..48])
    }
}

/// Refuses a URL that asks for TLS (`ssl-mode=REQUIRED`, `VERIFY_CA`,
/// `VERIFY_IDENTITY`, `require_ssl=true`, `ssl=true`): dbfork's own
/// connections to MySQL and MariaDB do not speak it yet, and connecting
/// without it would send the password in the clear where the user asked
/// otherwise.
pub(super) fn refuse_tls(url: &DbUrl) -> Result<()> {
    for (key, value) in &url.params {
        let key = key.to_ascii_lowercase().replace('-', "_");
        let value = value.to_ascii_lowercase();
        let asks = match key.as_str() {
            "ssl_mode" | "sslmode" => !matches!(
                value.as_str(),
                "disabled" | "disable" | "preferred" | "prefer"
            ),
            "require_ssl" | "ssl" | "verify_ca" | "verify_identity" => {
                matches!(value.as_str(), "true" | "1" | "yes" | "on")
            }
            _ => false,
        };
        if asks {
            return Err(Error::BadUrl {
                url: url.to_string(),
                reason: format!(
                    "`{key}={value}` asks for TLS, which dbfork's own connections to MySQL and MariaDB do not use yet (PostgreSQL's do). Connect over the server's Unix socket (`?socket=PATH`) or a trusted network without it"
                ),
            });
        }
    }
    Ok(())
}

pub(super) fn spell(ty: ColumnType) -> String {
    match ty {
        ColumnType::Text(width) => format!("VARCHAR({width})"),
        ColumnType::Int => "BIGINT".to_string(),
    }
}

/// A value for an option file: quoted, with `\\` and `"` escaped.
pub(super) fn option_value(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

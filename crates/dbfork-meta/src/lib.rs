//! What other programs (CI scripts, wrappers, a future client or service)
//! read of dbfork, in one place: the exit codes and the one classification
//! of failures that chooses them ([`exit`]), the names of the environment
//! variables dbfork reads ([`env`]), the run report ([`report`]: written as
//! JSON, read back, merged across shards), and the table of every verb's
//! settings ([`settings::SETTINGS`]), from which the command line's flags and
//! variables, the configuration file's keys, each value's parser and default,
//! and the settings table of `docs/configuration.md` are all produced. It
//! depends on serde and the protocol's types only.

pub mod exit;
pub mod report;
pub mod settings;

/// Environment variables dbfork itself reads (besides one per setting, in
/// [`settings::SETTINGS`]). The variables dbfork sets for the test processes
/// are in `dbfork_protocol::env`.
pub mod env {
    /// The configuration file to read (`--config`).
    pub const CONFIG: &str = "DBFORK_CONFIG";
    /// The log filter (tracing's `EnvFilter` syntax).
    pub const LOG: &str = "DBFORK_LOG";
    /// Where the ephemeral servers' binaries are.
    pub const PG_BINDIR: &str = "DBFORK_PG_BINDIR";
    pub const MARIADB_BINDIR: &str = "DBFORK_MARIADB_BINDIR";
    /// Non-empty: nobody watches a live display (plain lines instead).
    pub const CI: &str = "CI";
    /// The secret the template cache's files are tagged with (read once at
    /// start, then removed from the environment: no child sees it).
    pub const CACHE_KEY: &str = "DBFORK_CACHE_KEY";
}

/// `eprintln!` that never panics: a closed or broken stderr (the terminal
/// gone, `2>&1 | head`) must not stop dbfork mid-teardown. Use it for every
/// message.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics: `dbfork run ... | head` closes stdout
/// while the run goes on, and teardown must still happen.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout(), $($arg)*);
    }};
}

/// The parts of the docs made from this crate's tables, each between an
/// opening and a closing marker in its file: `(file from the repository's
/// root, marker name, contents)`.
pub fn generated_docs() -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("docs/configuration.md", "settings", settings::markdown()),
        (
            "README.md",
            "exit codes of dbfork run",
            exit::markdown("run"),
        ),
        ("README.md", "exit codes of dbfork db", exit::markdown("db")),
    ]
}

/// `text` with the part between the markers of `name` replaced by
/// `contents`; `None` when the markers are missing.
pub fn replace_generated(text: &str, name: &str, contents: &str) -> Option<String> {
    let open = format!("<!-- generated: {name} (crates/dbfork-meta) -->\n");
    let close = format!("<!-- end: {name} -->");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(format!("{}{contents}{}", &text[..start], &text[end..]))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The docs say what the tables say. `DBFORK_BLESS=1 cargo test -p
    /// dbfork-meta` rewrites them after a change to a table.
    #[test]
    fn generated_docs_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let bless = std::env::var_os("DBFORK_BLESS").is_some();
        for (file, name, contents) in super::generated_docs() {
            let path = root.join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            let Some(fresh) = super::replace_generated(&text, name, &contents) else {
                panic!("{file} lacks the markers of `{name}`");
            };
            if bless {
                std::fs::write(&path, &fresh).unwrap();
            } else {
                assert!(
                    fresh == text,
                    "{file}: the part `{name}` is out of date; run DBFORK_BLESS=1 cargo test -p dbfork-meta"
                );
            }
        }
    }
}

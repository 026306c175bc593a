//! The engine's errors. Each message says what failed, why, and what to do,
//! and never shows a password (URLs are shown through [`crate::DbUrl`]'s
//! masking `Display`).

use std::time::Duration;

pub use dbfork_meta::exit::Failure;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid database URL `{url}`: {reason}. Expected one of postgres://user@host:5432/postgres, mysql://root@127.0.0.1:3306/mysql, sqlite:///abs/path.db, postgres:ephemeral or mariadb:ephemeral.")]
    BadUrl { url: String, reason: String },

    #[error("cannot connect to {url}: {cause}. Check that the server is running and reachable, and that the URL's user, password and database are right.")]
    Connect { url: String, cause: String },

    #[error("connecting to {url} did not finish within {timeout:?}: the server does not answer. Check the host and port, or raise --connect-timeout.")]
    ConnectTimeout { url: String, timeout: Duration },

    #[error("{backend} query failed ({context}): {cause}")]
    Query {
        backend: &'static str,
        context: String,
        cause: String,
    },

    #[error("the setup command `{command}` failed ({status}); the half-built template {template} was dropped. {output}{log}")]
    SetupFailed {
        command: String,
        status: String,
        template: String,
        /// The exception and its traceback first, or the last lines.
        output: String,
        /// Where the whole output is kept, as a sentence (or empty).
        log: String,
    },

    #[error(
        "building the template {template} in the test process failed; it was dropped. {cause}"
    )]
    TemplateBuild { template: String, cause: String },

    #[error("the setup command `{command}` could not be started: {cause}")]
    SetupSpawn { command: String, cause: String },

    #[error("the setup command `{command}` ran longer than {timeout:?} and was killed; the half-built template {template} was dropped. Raise --build-timeout if the setup really needs longer.")]
    SetupTimeout {
        command: String,
        timeout: Duration,
        template: String,
    },

    #[error("waited {waited:?} for another dbfork process that holds the lock `{key}` (it is building the same template); giving up. If no other dbfork is running, the lock is held by a stale session on the server.")]
    LockTimeout { key: String, waited: Duration },

    #[error("refusing to drop `{name}`: dbfork's registry on this server does not record it as a database dbfork created. dbfork only ever drops its own databases; drop it yourself if it really should go.")]
    NotOurs { name: String },

    #[error("refusing to drop {name:?}: it is not a name dbfork makes (dbfork_tpl_<hex>_<hex>, dbfork_<run id>_<n>), so a registry row naming it was not written by dbfork. dbfork never acts on such a row; look at who wrote it, and remove it from the registry by hand.")]
    NotDbforkName { name: String },

    #[error("refusing to drop {name:?}: it has the shape of a name dbfork makes and a registry row, but not the mark dbfork puts on every database it creates ({mark}), so dbfork did not make it: a registry row naming it was written by someone else. Look at who wrote it and remove the row by hand; if it is a leftover of a dbfork from before the mark (December 2026), drop it by hand.")]
    NotMarked { name: String, mark: &'static str },

    #[error("`{name}` is not in dbfork's registry on this server (or names nothing dbfork makes), so there is nothing to renew; `dbfork db list` shows what is there.")]
    NotRegistered { name: String },

    #[error("the registry {registry}: {problem}.")]
    Registry { registry: String, problem: String },

    #[error("could not drop `{name}` within {waited:?}: {holders}")]
    DropTimeout {
        name: String,
        waited: Duration,
        holders: String,
    },

    #[error("no ready template matches `{wanted}` on this server. Build one first with `dbfork db template --db URL --setup CMD` and pass the fingerprint it prints; `dbfork db list` shows the templates there are.")]
    NoTemplate { wanted: String },

    #[error("`{wanted}` matches {count} templates; give more characters of the fingerprint.")]
    AmbiguousTemplate { wanted: String, count: usize },

    #[error("the input pattern `{pattern}` is not valid: {cause}")]
    BadInput { pattern: String, cause: String },

    #[error("the input pattern `{pattern}` matches no file; check the path (patterns are relative to {base}).")]
    InputMatchesNothing { pattern: String, base: String },

    #[error("clone method `{method}` does not exist for {backend}; choose one of: {choices}.")]
    BadMethod {
        method: String,
        backend: &'static str,
        choices: &'static str,
    },

    #[error("{what}: the program `{program}` was not found on PATH or in {searched}. Install it, e.g. `apt-get install {package}`.")]
    MissingBinary {
        what: String,
        program: String,
        searched: String,
        package: String,
    },

    #[error("the ephemeral {kind} server did not start: {cause}")]
    Ephemeral { kind: &'static str, cause: String },

    #[error("the ephemeral {kind} server ended by itself while in use (killed, crashed, or restarted by someone): {cause}. Its databases are gone with it, and it was stopped and removed; start a new one.")]
    EphemeralEnded { kind: &'static str, cause: String },

    #[error("the template cache file {path} cannot be used: {problem}; it is ignored (delete it, or let the next build replace it)")]
    CacheFile { path: String, problem: String },

    #[error("{what} failed: {cause}")]
    Transfer { what: String, cause: String },

    #[error("interrupted; everything this process had created was dropped")]
    Interrupted,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// What kind of failure this is, which decides the exit code (through
    /// `dbfork_meta::exit::Failure::code`, the one table of codes). Every
    /// variant is named: a new one must be classified.
    pub fn kind(&self) -> Failure {
        match self {
            Error::SetupFailed { .. }
            | Error::SetupSpawn { .. }
            | Error::SetupTimeout { .. }
            | Error::TemplateBuild { .. } => Failure::SetupFailed,
            Error::Interrupted => Failure::Interrupted,
            Error::BadUrl { .. }
            | Error::NotOurs { .. }
            | Error::NotDbforkName { .. }
            | Error::NotMarked { .. }
            | Error::NotRegistered { .. }
            | Error::NoTemplate { .. }
            | Error::AmbiguousTemplate { .. }
            | Error::BadInput { .. }
            | Error::InputMatchesNothing { .. }
            | Error::BadMethod { .. }
            | Error::MissingBinary { .. } => Failure::Usage,
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Query { .. }
            | Error::LockTimeout { .. }
            | Error::Registry { .. }
            | Error::DropTimeout { .. }
            | Error::Ephemeral { .. }
            | Error::EphemeralEnded { .. }
            | Error::CacheFile { .. }
            | Error::Transfer { .. }
            | Error::Io { .. } => Failure::Database,
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn query(backend: &'static str, context: impl Into<String>, cause: impl ToString) -> Error {
        Error::Query {
            backend,
            context: context.into(),
            cause: cause.to_string(),
        }
    }
}

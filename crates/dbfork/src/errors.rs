//! The errors of the command line itself, and how any error that reaches
//! the top becomes an exit code: by its kind (`dbfork_meta::exit::Failure`),
//! through the one table of codes in `dbfork_meta::exit`.

use dbfork_engine::Error;
use dbfork_meta::exit::{Failure, Family};

pub use dbfork_meta::exit::{OK, USAGE};

/// What kind of failure an error that reached the top is: the engine's and
/// the runner's errors say it themselves; a usage mistake found here is
/// [`UsageError`], a failed `--verify` is [`VerifyFailed`]; anything else is
/// counted as a database or server error.
pub fn kind_of(err: &anyhow::Error) -> Failure {
    if let Some(e) = err.downcast_ref::<Error>() {
        e.kind()
    } else if let Some(kind) = err
        .downcast_ref::<dbfork_runner::error::RunError>()
        .and_then(|e| e.kind())
    {
        kind
    } else if err.downcast_ref::<UsageError>().is_some() {
        Failure::Usage
    } else if err.downcast_ref::<VerifyFailed>().is_some() {
        Failure::SetupFailed
    } else {
        Failure::Database
    }
}

/// The exit code of a `dbfork db`, `clean` or `report` error.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    kind_of(err).code(Family::Db)
}

/// A mistake in how dbfork was called.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `dbfork db template --verify` found that the template differs from a
/// build from nothing: exit 1, as a failed check.
#[derive(Debug)]
pub struct VerifyFailed(pub String);

impl std::fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyFailed {}

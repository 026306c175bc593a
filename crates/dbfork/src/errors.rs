//! Exit codes, following pytest's where they overlap (documented in the README):
//! 0 success, 1 the setup command failed (or `--verify` found a difference), 2 interrupted, 3 a database or
//! server error, 4 a usage error. The numbers are `dbfork_meta::exit`'s, the
//! one table of every command's codes.

use dbfork_engine::Error;

pub use dbfork_meta::exit::{
    INTERRUPTED, OK, SETUP_FAILED, SETUP_OR_DATABASE as DATABASE_ERROR, USAGE,
};

/// The exit code of an error that reached the top.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<Error>() {
        Some(Error::SetupFailed { .. } | Error::SetupSpawn { .. } | Error::SetupTimeout { .. }) => {
            SETUP_FAILED
        }
        Some(Error::Interrupted) => INTERRUPTED,
        Some(
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
            | Error::MissingBinary { .. },
        ) => USAGE,
        Some(_) => DATABASE_ERROR,
        None if err.downcast_ref::<UsageError>().is_some() => USAGE,
        None if err.downcast_ref::<VerifyFailed>().is_some() => SETUP_FAILED,
        None => DATABASE_ERROR,
    }
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

//! Why a run could not start or go on ([`RunError`]), and its exit codes:
//! one classification ([`RunError::kind`], the engine's `Error::kind`) and
//! one table of numbers (`dbfork_meta::exit`).

use std::path::PathBuf;

/// Exit codes of `dbfork run`, pytest's where they overlap (one table for
/// every command, in `dbfork_meta`).
pub use dbfork_meta::exit;
use dbfork_meta::exit::{Failure, Family};

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Engine(#[from] dbfork_engine::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot prepare the run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The `dbfork serve` the run leases its clones from (`--serve-url`).
    #[error("{0}")]
    Service(String),
    /// The controller (the test command configuring itself) failed.
    #[error("{message}")]
    Controller { code: i32, message: String },
}

impl RunError {
    /// What kind of failure this is; `None` for the controller's, whose
    /// exit code is the test command's own.
    pub fn kind(&self) -> Option<Failure> {
        match self {
            RunError::Engine(e) => Some(e.kind()),
            RunError::Usage(_) => Some(Failure::Usage),
            RunError::RunDir { .. } | RunError::Service(_) => Some(Failure::Database),
            RunError::Controller { .. } => None,
        }
    }

    /// The run's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match (self, self.kind()) {
            (RunError::Controller { code, .. }, _) => *code,
            (_, Some(kind)) => kind.code(Family::Run),
            (_, None) => exit::SETUP_OR_DATABASE,
        }
    }
}

//! The run's private directory in the temporary directory (its socket,
//! the worker plugin, output FIFOs), and the collection of those whose
//! dbfork was killed.

use super::*;

/// The prefix of a run's private directory in the temporary directory:
/// `dbfork-run-<pid>-<pid namespace>-<run id>`.
pub(super) const RUN_DIR_PREFIX: &str = "dbfork-run-";

/// Removes the private directories of runs whose dbfork is gone (killed with
/// SIGKILL: its `RunDir` was never dropped); returns them.
pub fn collect_stale_run_dirs() -> Vec<PathBuf> {
    dbfork_engine::process::collect_stale_dirs(RUN_DIR_PREFIX)
}

/// The run's private directory (socket, plugin), removed at the end.
pub(super) struct RunDir(pub(super) PathBuf);

impl RunDir {
    pub(super) fn create(path: &std::path::Path) -> Result<RunDir, RunError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(path)
            .map_err(|source| RunError::RunDir {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RunDir(path.to_path_buf()))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

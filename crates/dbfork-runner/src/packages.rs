//! The pytest plugin, shipped inside the dbfork binary: each run writes it to
//! its private directory as an importable module with a `dist-info` that
//! declares the `pytest11` entry point `dbfork`, and puts that directory first
//! on the workers' `PYTHONPATH`. pytest then loads it like any installed plugin
//! (and `-p no:dbfork` disables it), with nothing to install in the project.

use std::io;
use std::path::{Path, PathBuf};

/// The Python packages: the protocol's worker side and the two adapters.
const PACKAGES: [(&str, &str); 3] = [
    (
        "dbfork_worker",
        include_str!("../../../python/dbfork_worker/__init__.py"),
    ),
    (
        "dbfork_pytest",
        include_str!("../../../python/dbfork_pytest/__init__.py"),
    ),
    (
        "dbfork_django",
        include_str!("../../../python/dbfork_django/__init__.py"),
    ),
];
/// The `sitecustomize` that gives Django's `get_runner` dbfork's mixin, so
/// `manage.py test` and scripts like Django's `runtests.py` become workers
/// without a `--testrunner` option.
const SITECUSTOMIZE: &str = include_str!("../../../python/dbfork_django/_sitecustomize.py");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Writes the adapters under `dir` and returns the directory for `PYTHONPATH`.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    let root = dir.join("python");
    let dist = root.join(format!("dbfork_pytest-{VERSION}.dist-info"));
    for (name, source) in PACKAGES {
        let package = root.join(name);
        std::fs::create_dir_all(&package)?;
        std::fs::write(package.join("__init__.py"), source)?;
    }
    std::fs::write(root.join("sitecustomize.py"), SITECUSTOMIZE)?;
    std::fs::create_dir_all(&dist)?;
    std::fs::write(
        dist.join("METADATA"),
        format!("Metadata-Version: 2.1\nName: dbfork-pytest\nVersion: {VERSION}\n"),
    )?;
    std::fs::write(
        dist.join("entry_points.txt"),
        "[pytest11]\ndbfork = dbfork_pytest\n",
    )?;
    Ok(root)
}

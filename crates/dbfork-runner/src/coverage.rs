//! `dbfork run --cov`: every process of the run (the controller and each
//! worker, forked or started afresh) measures coverage with coverage.py from
//! its start (dbfork's `sitecustomize` starts it, as `coverage run
//! --parallel-mode` would), and saves it to a data file of its own when it
//! exits, on SIGTERM too. Before the workers start, the data of earlier runs
//! is erased (`coverage erase`, as pytest-cov does); once every process has
//! ended, the files are combined into one (`coverage combine`), which
//! `coverage report` and `coverage html` read as after a serial `coverage run`.
//! The project's own coverage configuration applies throughout.

use std::process::{Command, Stdio};

/// Erases the data file and the parallel ones (the CLI's `erase` leaves
/// those unless the configuration says `parallel`).
const ERASE: &str = "import coverage\ncov = coverage.Coverage(config_file=True)\ncov.set_option('run:parallel', True)\ncov.erase()\n";

/// Runs `python ARGS` in the working directory: its output, or why it failed.
fn run(python: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() {
        return Ok(said);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!("{said}{}", err.trim()).trim().to_string())
}

/// Erases the coverage data of earlier runs; `python` is the test
/// command's interpreter (as its controller reported it).
pub fn erase(python: Option<&str>) -> Result<(), String> {
    let Some(python) = python else {
        return Err("--cov needs a Python test command dbfork configures once (pytest, or Django's manage.py test): its interpreter measures the coverage".to_string());
    };
    run(python, &["-c", ERASE]).map(|_| ()).map_err(|why| {
        if why.contains("No module named") {
            format!("--cov needs coverage.py in the test command's Python ({python}): install it there (pip install coverage)")
        } else {
            format!("--cov: the coverage data of earlier runs could not be erased: {why}")
        }
    })
}

/// Combines the data files of every process; what to tell the user.
pub fn combine(python: &str) -> Result<String, String> {
    run(python, &["-m", "coverage", "combine", "-q"])
        .map_err(|why| format!("--cov: the coverage data could not be combined ({why}); `coverage combine` combines the `.coverage.*` files left"))?;
    let total = run(python, &["-m", "coverage", "report", "--format=total"])
        .map(|t| format!(" (total {t}%)"))
        .unwrap_or_default();
    Ok(format!(
        "coverage of every process combined into one data file{total}: `coverage report` or `coverage html` show it"
    ))
}

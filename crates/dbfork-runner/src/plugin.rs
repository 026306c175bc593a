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

/// The file name of a command's word (`/venv/bin/pytest` -> `pytest`).
fn base(word: &String) -> String {
    Path::new(word)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether `command` runs pytest: `pytest`, `py.test`, `python -m pytest`.
pub fn is_pytest(command: &[String]) -> bool {
    match command {
        [first, ..] if matches!(base(first).as_str(), "pytest" | "py.test") => true,
        [first, m, module, ..] => {
            base(first).starts_with("python") && m == "-m" && module == "pytest"
        }
        _ => false,
    }
}

/// Whether `command` runs Django's test runner: `manage.py test`,
/// `django-admin test`, `python -m django test`, or a `runtests.py` script
/// (Django's own, and many reusable apps', which take the runner from
/// `get_runner(settings)`).
pub fn is_django_test(command: &[String]) -> bool {
    let script = match command {
        [first, ..] if base(first) == "runtests.py" => true,
        [first, second, ..] => base(first).starts_with("python") && base(second) == "runtests.py",
        _ => false,
    };
    script
        || command.windows(2).any(|pair| {
            pair[1] == "test" && (base(&pair[0]) == "manage.py" || base(&pair[0]) == "django-admin")
        })
        || command
            .windows(3)
            .any(|w| w[0] == "-m" && w[1] == "django" && w[2] == "test")
}

/// Whether the command's own arguments turn the plugin off (`-p no:dbfork`).
pub fn disabled_in(command: &[String]) -> bool {
    command
        .iter()
        .any(|a| a == "no:dbfork" || a == "-pno:dbfork")
}

/// pytest's `-x` / `--exitfirst` and Django's `--failfast` (1) or pytest's
/// `--maxfail N`: after how many failures
/// the run stops (0: it does not). Workers leave it to dbfork.
pub fn maxfail(command: &[String]) -> usize {
    let mut n = 0;
    for (i, arg) in command.iter().enumerate() {
        if arg == "-x" || arg == "--exitfirst" || arg == "--failfast" {
            n = 1;
        } else if let Some(v) = arg.strip_prefix("--maxfail=") {
            n = v.parse().unwrap_or(n);
        } else if arg == "--maxfail" {
            n = command.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(n);
        }
    }
    n
}

/// The pytest-xdist option in the command, if any: dbfork runs the workers itself.
pub fn xdist_option(command: &[String]) -> Option<&str> {
    command.iter().map(String::as_str).find(|a| {
        *a == "-n"
            || a.starts_with("--numprocesses")
            || (a.starts_with("-n") && a[2..].chars().all(|c| c.is_ascii_digit()) && a.len() > 2)
            || *a == "--dist"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pytest_commands() {
        assert!(is_pytest(&v(&["pytest", "-q"])));
        assert!(is_pytest(&v(&["/venv/bin/py.test"])));
        assert!(is_pytest(&v(&[
            ".venv/bin/python3",
            "-m",
            "pytest",
            "tests"
        ])));
        assert!(!is_pytest(&v(&["cargo", "nextest", "run"])));
        assert!(!is_pytest(&v(&["python", "manage.py", "test"])));
        assert!(is_django_test(&v(&["python", "manage.py", "test"])));
        assert!(is_django_test(&v(&["./manage.py", "test", "shop"])));
        assert!(is_django_test(&v(&["python3", "-m", "django", "test"])));
        assert!(is_django_test(&v(&["django-admin", "test", "--failfast"])));
        assert!(!is_django_test(&v(&["python", "manage.py", "migrate"])));
        assert!(!is_django_test(&v(&["pytest", "test"])));
        assert!(is_django_test(&v(&[
            "python3",
            "tests/runtests.py",
            "basic"
        ])));
        assert!(is_django_test(&v(&["./runtests.py"])));
        assert!(!is_django_test(&v(&["python", "tests/other.py"])));
        assert_eq!(maxfail(&v(&["manage.py", "test", "--failfast"])), 1);
        assert!(disabled_in(&v(&["pytest", "-p", "no:dbfork"])));
        assert_eq!(xdist_option(&v(&["pytest", "-n", "4"])), Some("-n"));
        assert_eq!(xdist_option(&v(&["pytest", "-n4"])), Some("-n4"));
        assert_eq!(xdist_option(&v(&["pytest", "-nope"])), None);
        assert_eq!(maxfail(&v(&["pytest", "-x"])), 1);
        assert_eq!(maxfail(&v(&["pytest", "--maxfail=3"])), 3);
        assert_eq!(maxfail(&v(&["pytest", "--maxfail", "2", "tests"])), 2);
        assert_eq!(maxfail(&v(&["pytest", "tests"])), 0);
    }
}

//! pytest, through dbfork's plugin (`python/dbfork_pytest`): dbfork collects
//! once and hands tests out; pytest-django's database setup is replaced by
//! the worker's clone.

use std::io;
use std::path::{Path, PathBuf};

use super::{base, given, Tool};
use crate::packages;

pub struct Pytest;

impl Tool for Pytest {
    /// `pytest`, `py.test`, `python -m pytest`, unless `-p no:dbfork`.
    fn recognises(&self, command: &[String]) -> bool {
        let runs_pytest = match command {
            [first, ..] if matches!(base(first).as_str(), "pytest" | "py.test") => true,
            [first, m, module, ..] => {
                base(first).starts_with("python") && m == "-m" && module == "pytest"
            }
            _ => false,
        };
        runs_pytest
            && !command
                .iter()
                .any(|a| a == "no:dbfork" || a == "-pno:dbfork")
    }

    fn refuse(&self, command: &[String]) -> Option<String> {
        // pytest would register the module twice (as `dbfork_pytest` and as
        // the entry point `dbfork` dbfork puts beside it) and stop.
        let by_module = command
            .windows(2)
            .any(|w| w[0] == "-p" && w[1] == "dbfork_pytest")
            || command.iter().any(|a| a == "-pdbfork_pytest");
        if by_module {
            return Some("the pytest command loads dbfork's plugin as `-p dbfork_pytest`, but dbfork loads it itself (as the plugin `dbfork`): remove the option, or write `-p dbfork` where plugins are not autoloaded".to_string());
        }
        let option = command.iter().map(String::as_str).find(|a| {
            *a == "-n"
                || a.starts_with("--numprocesses")
                || (a.starts_with("-n")
                    && a.len() > 2
                    && a[2..].chars().all(|c| c.is_ascii_digit()))
                || *a == "--dist"
        })?;
        Some(format!(
            "the pytest command has the pytest-xdist option `{option}`, but dbfork runs the workers itself: remove it and use `dbfork run -j N`"
        ))
    }

    fn ignored(&self, command: &[String]) -> Vec<String> {
        given(command, &["--reuse-db", "--create-db"])
            .map(|flag| vec![format!("pytest-django's {flag}")])
            .unwrap_or_default()
    }

    fn speaks_protocol(&self) -> bool {
        true
    }

    fn has_controller(&self) -> bool {
        true
    }

    /// pytest's workers import and collect while the template is built.
    fn starts_early(&self) -> bool {
        true
    }

    /// `-x` / `--exitfirst` (1), `--maxfail N`.
    fn maxfail(&self, command: &[String]) -> usize {
        let mut n = 0;
        for (i, arg) in command.iter().enumerate() {
            if arg == "-x" || arg == "--exitfirst" {
                n = 1;
            } else if let Some(v) = arg.strip_prefix("--maxfail=") {
                n = v.parse().unwrap_or(n);
            } else if arg == "--maxfail" {
                n = command.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(n);
            }
        }
        n
    }

    /// `-p dbfork` when pytest autoloads no plugins: the entry point of the
    /// dist-info written beside the plugin is then found by name.
    fn extra_args(&self) -> Vec<String> {
        match std::env::var_os("PYTEST_DISABLE_PLUGIN_AUTOLOAD") {
            Some(_) => vec!["-p".to_string(), "dbfork".to_string()],
            None => Vec::new(),
        }
    }

    fn support_files(&self, dir: &Path) -> io::Result<Option<PathBuf>> {
        packages::install(dir).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::v;
    use super::*;

    #[test]
    fn pytest_commands_and_options() {
        assert!(Pytest.recognises(&v(&["pytest", "-q"])));
        assert!(Pytest.recognises(&v(&["/venv/bin/py.test"])));
        assert!(Pytest.recognises(&v(&[".venv/bin/python3", "-m", "pytest", "tests"])));
        assert!(!Pytest.recognises(&v(&["cargo", "nextest", "run"])));
        assert!(!Pytest.recognises(&v(&["python", "manage.py", "test"])));
        assert!(!Pytest.recognises(&v(&["pytest", "-p", "no:dbfork"])));
        assert!(Pytest
            .refuse(&v(&["pytest", "-n", "4"]))
            .unwrap()
            .contains("`-n`"));
        assert!(Pytest
            .refuse(&v(&["pytest", "-n4"]))
            .unwrap()
            .contains("`-n4`"));
        assert_eq!(Pytest.refuse(&v(&["pytest", "-nope"])), None);
        assert!(Pytest
            .refuse(&v(&["pytest", "-p", "dbfork_pytest"]))
            .unwrap()
            .contains("`-p dbfork`"));
        assert_eq!(Pytest.refuse(&v(&["pytest", "-p", "dbfork"])), None);
        assert_eq!(Pytest.maxfail(&v(&["pytest", "-x"])), 1);
        assert_eq!(Pytest.maxfail(&v(&["pytest", "--maxfail=3"])), 3);
        assert_eq!(
            Pytest.maxfail(&v(&["pytest", "--maxfail", "2", "tests"])),
            2
        );
        assert_eq!(Pytest.maxfail(&v(&["pytest", "tests"])), 0);
        assert_eq!(
            Pytest.ignored(&v(&["pytest", "--reuse-db"])),
            ["pytest-django's --reuse-db"]
        );
    }
}

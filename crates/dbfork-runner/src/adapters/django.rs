//! Django's test runner (`manage.py test` and the like), through dbfork's
//! mixin (`python/dbfork_django`, installed by the `sitecustomize` dbfork
//! puts on `PYTHONPATH`): dbfork collects once and hands classes out.

use std::io;
use std::path::{Path, PathBuf};

use super::{base, given, Tool};
use crate::{packages, Dist};

pub struct Django;

impl Tool for Django {
    /// `manage.py test`, `django-admin test`, `python -m django test`, or a
    /// `runtests.py` / `run_tests.py` script (Django's own, and many reusable
    /// apps', which take the runner from `get_runner(settings)` or make a
    /// `DiscoverRunner` themselves).
    fn recognises(&self, command: &[String]) -> bool {
        let is_script = |word: &str| matches!(base(word).as_str(), "runtests.py" | "run_tests.py");
        let script = match command {
            [first, ..] if is_script(first) => true,
            [first, second, ..] => base(first).starts_with("python") && is_script(second),
            _ => false,
        };
        script
            || command.windows(2).any(|pair| {
                pair[1] == "test"
                    && (base(&pair[0]) == "manage.py" || base(&pair[0]) == "django-admin")
            })
            || command
                .windows(3)
                .any(|w| w[0] == "-m" && w[1] == "django" && w[2] == "test")
    }

    fn ignored(&self, command: &[String]) -> Vec<String> {
        given(command, &["--keepdb", "--parallel"])
            .map(|flag| vec![format!("Django's {flag}")])
            .unwrap_or_default()
    }

    fn speaks_protocol(&self) -> bool {
        true
    }

    fn has_controller(&self) -> bool {
        true
    }

    /// A `TestCase` class stays on one worker (its `setUpTestData` and class
    /// transaction are set up once per class), as `manage.py test --parallel`
    /// does.
    fn default_dist(&self) -> Dist {
        Dist::Class
    }

    /// `--failfast`.
    fn maxfail(&self, command: &[String]) -> usize {
        usize::from(command.iter().any(|a| a == "--failfast"))
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
    fn django_commands_and_options() {
        assert!(Django.recognises(&v(&["python", "manage.py", "test"])));
        assert!(Django.recognises(&v(&["./manage.py", "test", "shop"])));
        assert!(Django.recognises(&v(&["python3", "-m", "django", "test"])));
        assert!(Django.recognises(&v(&["django-admin", "test", "--failfast"])));
        assert!(!Django.recognises(&v(&["python", "manage.py", "migrate"])));
        assert!(!Django.recognises(&v(&["pytest", "test"])));
        assert!(Django.recognises(&v(&["python3", "tests/runtests.py", "basic"])));
        assert!(Django.recognises(&v(&["./runtests.py"])));
        assert!(Django.recognises(&v(&["python", "run_tests.py"])));
        assert!(!Django.recognises(&v(&["python", "tests/other.py"])));
        assert_eq!(Django.maxfail(&v(&["manage.py", "test", "--failfast"])), 1);
        assert_eq!(Django.maxfail(&v(&["manage.py", "test"])), 0);
        assert_eq!(
            Django.ignored(&v(&["manage.py", "test", "--parallel=4"])),
            ["Django's --parallel=4"]
        );
    }
}

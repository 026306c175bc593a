//! No setup to write for a Django project: when `dbfork run` has no `--setup`
//! and the test command (pytest or `manage.py test`) is a Django project's (its
//! settings module named by `DJANGO_SETTINGS_MODULE`, `--ds`, `--settings`,
//! pytest's ini options, or the default `manage.py` sets), the
//! template is built by the project's own migrations, and its fingerprint
//! covers every migration file, every fixture file and the settings module:
//! a new migration makes a new template, and nothing stale is reused.

use std::path::{Path, PathBuf};

/// What dbfork found and will use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DjangoDefaults {
    pub settings_module: String,
    pub setup: String,
    pub inputs: Vec<String>,
    pub migrations: usize,
    pub fixtures: usize,
}

/// The Django settings module of the test `command` run in `root`, and the setup and
/// inputs that follow from it; `None` when this is not a Django project.
pub fn detect(root: &Path, command: &[String]) -> Option<DjangoDefaults> {
    let settings_module = option(command, "--settings")
        .or_else(|| option(command, "--ds"))
        .or_else(|| {
            std::env::var("DJANGO_SETTINGS_MODULE")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .or_else(|| from_ini_files(root))
        .or_else(|| from_manage_py(root))?;
    let python = python_of(command);
    let setup = if root.join("manage.py").is_file() {
        format!("DJANGO_SETTINGS_MODULE={settings_module} {python} manage.py migrate --noinput")
    } else {
        format!("DJANGO_SETTINGS_MODULE={settings_module} {python} -m django migrate --noinput")
    };
    let mut migrations = Vec::new();
    let mut fixtures = Vec::new();
    walk(root, root, &mut migrations, &mut fixtures);
    let mut inputs: Vec<PathBuf> = migrations.iter().chain(&fixtures).cloned().collect();
    if let Some(file) = module_file(root, &settings_module) {
        inputs.push(file);
    }
    inputs.sort();
    Some(DjangoDefaults {
        settings_module,
        setup,
        inputs: inputs
            .iter()
            .map(|p| glob::Pattern::escape(&p.to_string_lossy()))
            .collect(),
        migrations: migrations.len(),
        fixtures: fixtures.len(),
    })
}

/// `--name=value` or `--name value` in the command's arguments (`--ds` for
/// pytest-django, `--settings` for Django's commands).
fn option(command: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    command.iter().enumerate().find_map(|(i, arg)| {
        if let Some(value) = arg.strip_prefix(&prefix) {
            Some(value.to_string())
        } else if arg == name {
            command.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// pytest-django's ini option, in the files pytest reads, in pytest's order.
fn from_ini_files(root: &Path) -> Option<String> {
    let candidates = [
        ("pytest.ini", "[pytest]"),
        ("pyproject.toml", "[tool.pytest.ini_options]"),
        ("tox.ini", "[pytest]"),
        ("setup.cfg", "[tool:pytest]"),
    ];
    candidates.iter().find_map(|(file, section)| {
        let text = std::fs::read_to_string(root.join(file)).ok()?;
        ini_value(&text, section, "DJANGO_SETTINGS_MODULE")
    })
}

/// The module `manage.py` defaults to:
/// `os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")`.
fn from_manage_py(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("manage.py")).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("setdefault") && l.contains("DJANGO_SETTINGS_MODULE"))?;
    let after = &line[line.find("DJANGO_SETTINGS_MODULE")? + "DJANGO_SETTINGS_MODULE".len()..];
    let value = after.split(['"', '\'']).nth(2)?;
    Some(value.to_string()).filter(|v| !v.is_empty() && !v.contains(' '))
}

/// `key = value` (or `key = "value"`) inside `[section]` of an ini or TOML text.
fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((k, v)) = line.split_once(['=', ':']) else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case(key) {
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
            return Some(v.to_string()).filter(|v| !v.is_empty());
        }
    }
    None
}

/// The Python that runs the command: the command itself if it is a Python,
/// the `python` beside a `pytest` script (its virtualenv's), else `python3`.
fn python_of(command: &[String]) -> String {
    let Some(first) = command.first() else {
        return "python3".to_string();
    };
    let path = Path::new(first);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("python") {
        return shell_word(first);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let beside = dir.join("python");
        if beside.exists() {
            return shell_word(&beside.to_string_lossy());
        }
    }
    "python3".to_string()
}

fn shell_word(text: &str) -> String {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// `a.b.settings` -> `a/b/settings.py` or `a/b/settings/__init__.py`, if it is there.
fn module_file(root: &Path, module: &str) -> Option<PathBuf> {
    let rel: PathBuf = module.split('.').collect();
    let file = rel.with_extension("py");
    let package = rel.join("__init__.py");
    [file, package].into_iter().find(|p| root.join(p).is_file())
}

/// Every `migrations/*.py` and `fixtures/*` file under `dir`, relative to
/// `root`, skipping hidden directories, virtualenvs and caches.
fn walk(root: &Path, dir: &Path, migrations: &mut Vec<PathBuf>, fixtures: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            let skip = name.starts_with('.')
                || matches!(
                    name.as_str(),
                    "__pycache__" | "node_modules" | "site-packages" | "build" | "dist"
                )
                || path.join("pyvenv.cfg").exists();
            if !skip {
                walk(root, &path, migrations, fixtures);
            }
            continue;
        }
        let parent = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if parent == "migrations" && name.ends_with(".py") {
            migrations.push(rel);
        } else if parent == "fixtures" && kind.is_file() {
            fixtures.push(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_settings_migrations_and_fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for file in [
            "manage.py",
            "shop/__init__.py",
            "shop/settings.py",
            "app/migrations/__init__.py",
            "app/migrations/0001_initial.py",
            "app/fixtures/things.json",
            ".venv/lib/django/contrib/auth/migrations/0001_initial.py",
            "app/migrations/__pycache__/x.pyc",
        ] {
            let path = root.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        std::fs::write(root.join(".venv/pyvenv.cfg"), "").unwrap();
        std::fs::write(
            root.join("pyproject.toml"),
            "[tool.black]\nx = 1\n[tool.pytest.ini_options]\nDJANGO_SETTINGS_MODULE = \"shop.settings\"\n",
        )
        .unwrap();
        let command = vec![".venv/bin/python".to_string(), "-m".into(), "pytest".into()];
        let found = detect(root, &command).unwrap();
        assert_eq!(found.settings_module, "shop.settings");
        assert_eq!(found.migrations, 2);
        assert_eq!(found.fixtures, 1);
        assert_eq!(
            found.inputs,
            [
                "app/fixtures/things.json",
                "app/migrations/0001_initial.py",
                "app/migrations/__init__.py",
                "shop/settings.py"
            ]
        );
        assert!(
            found
                .setup
                .ends_with(".venv/bin/python manage.py migrate --noinput"),
            "{}",
            found.setup
        );
        // `--ds` beats the ini file.
        let mut with_ds = command.clone();
        with_ds.push("--ds=other.settings".into());
        assert_eq!(
            detect(root, &with_ds).unwrap().settings_module,
            "other.settings"
        );
    }

    #[test]
    fn manage_py_test_finds_its_settings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("manage.py"),
            "import os\ndef main():\n    os.environ.setdefault(\"DJANGO_SETTINGS_MODULE\", 'shop.settings')\n",
        )
        .unwrap();
        let command: Vec<String> = ["python", "manage.py", "test"].map(String::from).into();
        if std::env::var_os("DJANGO_SETTINGS_MODULE").is_none() {
            assert_eq!(
                detect(root, &command).unwrap().settings_module,
                "shop.settings"
            );
        }
        let mut with_settings = command.clone();
        with_settings.extend(["--settings".to_string(), "shop.ci".to_string()]);
        let found = detect(root, &with_settings).unwrap();
        assert_eq!(found.settings_module, "shop.ci");
        assert!(
            found
                .setup
                .starts_with("DJANGO_SETTINGS_MODULE=shop.ci python manage.py migrate"),
            "{}",
            found.setup
        );
    }

    #[test]
    fn no_settings_no_django() {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("DJANGO_SETTINGS_MODULE").is_none() {
            assert!(detect(dir.path(), &["pytest".to_string()]).is_none());
        }
    }
}

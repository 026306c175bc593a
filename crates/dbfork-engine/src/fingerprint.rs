//! Template fingerprints: blake3 over everything that decides a template's
//! contents, so the same fingerprint means "reuse" and never "stale".
//!
//! What goes in is a [`Manifest`]: named entries (the server version, the
//! setup, facts a test framework reported, each input file's hash). Kept
//! beside the project, the manifest of the last build lets dbfork say which
//! input changed when it builds a new template.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a template is built from.
#[derive(Debug, Clone, Default)]
pub struct Recipe {
    /// The setup command, run by `sh -c`; for a template that a test
    /// framework builds itself, a description of how.
    pub setup: String,
    /// Glob patterns of input files (migrations, fixtures), relative to `dir`.
    pub inputs: Vec<String>,
    /// The directory the input patterns are relative to, input files are
    /// named from (so a fingerprint does not depend on where the project is
    /// checked out) and the setup command runs in; `None`: the working
    /// directory.
    pub dir: Option<PathBuf>,
    /// Input files known by name (a test framework's report): name and path.
    pub files: Vec<(String, PathBuf)>,
    /// Facts that decide the template besides files, by name (settings, versions).
    pub facts: BTreeMap<String, String>,
}

/// The named parts of a fingerprint, in a fixed order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub fingerprint: String,
    /// Entry name -> its value, or a file's content hash (`file:` names).
    pub entries: BTreeMap<String, String>,
}

const FILE: &str = "file:";
const FACT: &str = "fact:";

impl Recipe {
    /// The sorted input files the patterns match. A pattern that matches
    /// nothing is an error: a typo would otherwise silently freeze a template.
    pub fn input_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for pattern in &self.inputs {
            let full = match &self.dir {
                Some(dir) if Path::new(pattern).is_relative() => {
                    let dir = glob::Pattern::escape(&dir.to_string_lossy());
                    format!("{}/{pattern}", dir.trim_end_matches('/'))
                }
                _ => pattern.clone(),
            };
            let paths = glob::glob(&full).map_err(|e| Error::BadInput {
                pattern: pattern.clone(),
                cause: e.to_string(),
            })?;
            let before = files.len();
            for path in paths {
                let path = path.map_err(|e| Error::BadInput {
                    pattern: pattern.clone(),
                    cause: e.to_string(),
                })?;
                if path.is_file() {
                    files.push(path);
                }
            }
            if files.len() == before {
                return Err(Error::InputMatchesNothing {
                    pattern: pattern.clone(),
                    base: match &self.dir {
                        Some(dir) => dir.display().to_string(),
                        None => "the directory dbfork runs in".to_string(),
                    },
                });
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// Everything the fingerprint covers on a server of `server_version`.
    pub fn manifest(&self, server_version: &str) -> Result<Manifest> {
        let mut entries = BTreeMap::new();
        entries.insert(
            "dbfork template format".to_string(),
            crate::TEMPLATE_FORMAT_VERSION.to_string(),
        );
        entries.insert("server version".to_string(), server_version.to_string());
        entries.insert("setup".to_string(), setup_identity(&self.setup));
        for (name, value) in &self.facts {
            entries.insert(format!("{FACT}{name}"), value.clone());
        }
        let named = self
            .input_files()?
            .into_iter()
            .map(|p| (self.name_of(&p), p))
            .chain(self.files.iter().cloned());
        for (name, path) in named {
            entries.insert(format!("{FILE}{name}"), file_hash(&path)?);
        }
        let mut h = blake3::Hasher::new();
        field(&mut h, b"dbfork-template");
        for (name, value) in &entries {
            field(&mut h, name.as_bytes());
            field(&mut h, value.as_bytes());
        }
        Ok(Manifest {
            fingerprint: h.finalize().to_hex().to_string(),
            entries,
        })
    }

    /// The fingerprint of this recipe on a server of `server_version`.
    pub fn fingerprint(&self, server_version: &str) -> Result<String> {
        Ok(self.manifest(server_version)?.fingerprint)
    }

    /// A key shared by every version of this setup in this project (its
    /// templates age out together): the setup command and the project's
    /// directory (the working directory), so two projects with the same
    /// command (`python manage.py migrate`) on one server are not versions
    /// of each other.
    pub fn setup_key(&self) -> String {
        let mut h = blake3::Hasher::new();
        field(&mut h, setup_identity(&self.setup).as_bytes());
        let project = self
            .dir
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
        field(&mut h, project.as_os_str().as_encoded_bytes());
        h.finalize().to_hex()[..16].to_string()
    }

    /// How the manifest names an input file: from `dir`.
    fn name_of(&self, path: &Path) -> String {
        let name = match &self.dir {
            Some(dir) => path.strip_prefix(dir).unwrap_or(path),
            None => path,
        };
        name.to_string_lossy().into_owned()
    }

    /// How many input files the fingerprint covers.
    pub fn input_count(&self) -> Result<usize> {
        Ok(self.input_files()?.len() + self.files.len())
    }
}

impl Manifest {
    /// What differs from `before` (the manifest of an earlier build of the
    /// same setup), in words: `app/migrations/0002_x.py (new)`,
    /// `setting INSTALLED_APPS (changed)`. Empty when nothing differs.
    pub fn changes_since(&self, before: &Manifest) -> Vec<String> {
        let describe = |name: &str| match (name.strip_prefix(FILE), name.strip_prefix(FACT)) {
            (Some(file), _) => file.to_string(),
            (None, Some(fact)) => format!("setting {fact}"),
            _ => name.to_string(),
        };
        let mut changes = Vec::new();
        for (name, value) in &self.entries {
            match before.entries.get(name) {
                None => changes.push(format!("{} (new)", describe(name))),
                Some(old) if old != value => changes.push(format!("{} (changed)", describe(name))),
                _ => {}
            }
        }
        for name in before.entries.keys() {
            if !self.entries.contains_key(name) {
                changes.push(format!("{} (removed)", describe(name)));
            }
        }
        changes
    }

    /// Whether both were built on the same kind of server (PostgreSQL,
    /// MariaDB, SQLite...), whatever its version: a project's history mixes
    /// backends, and a build on another one says nothing of this one's.
    pub fn same_server_kind(&self, other: &Manifest) -> bool {
        let kind = |m: &Manifest| {
            m.entries
                .get("server version")
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        };
        kind(self) == kind(other)
    }

    /// Whether a template of `self` can grow into one of `newer` by running
    /// the same setup again on it: every entry but the input files is the
    /// same (setup, settings, server series, format), every input file of
    /// `self` is in `newer` with the same contents, and `newer` only adds
    /// files. Returns the added files' names, or `None`.
    pub fn grows_into(&self, newer: &Manifest) -> Option<Vec<String>> {
        let others = |m: &Manifest| -> Vec<(String, String)> {
            m.entries
                .iter()
                .filter(|(n, _)| !n.starts_with(FILE))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        if self.fingerprint == newer.fingerprint || others(self) != others(newer) {
            return None;
        }
        for (name, hash) in self.entries.iter().filter(|(n, _)| n.starts_with(FILE)) {
            if newer.entries.get(name) != Some(hash) {
                return None;
            }
        }
        let added: Vec<String> = newer
            .files()
            .filter(|f| !self.entries.contains_key(&format!("{FILE}{f}")))
            .map(str::to_string)
            .collect();
        (!added.is_empty()).then_some(added)
    }

    /// The input files, by name.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().filter_map(|n| n.strip_prefix(FILE))
    }

    /// The facts, by name.
    pub fn facts(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|(n, v)| Some((n.strip_prefix(FACT)?, v.as_str())))
    }
}

/// The part of a server's version a template depends on, for fingerprints:
/// two servers of one series make the same template from the same setup, so
/// a CI machine with the next patch release still finds its cached template.
///
/// - PostgreSQL: the major version (`PostgreSQL 15`). Minor releases are
///   bug fixes that keep the catalog and dump format (a major release may
///   change both, and pg_restore into an older major is not supported).
/// - MariaDB and MySQL: the release series (`MariaDB 10.11`, `MySQL 8.0`):
///   defaults that shape a schema (collations, reserved words, SHOW CREATE
///   text) change between series, not between patch releases of one.
/// - SQLite: `SQLite 3`: the file format is the same across 3.x.
///
/// Anything unrecognised is kept whole (never a false match).
pub fn server_series(version: &str) -> String {
    let numbers = |text: &str, parts: usize| -> Option<String> {
        let digits: Vec<&str> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .take(parts)
            .collect();
        (digits.len() == parts).then(|| digits.join("."))
    };
    let v = version.trim();
    if let Some(rest) = v.strip_prefix("PostgreSQL ") {
        let word = rest.split_whitespace().next().unwrap_or_default();
        if let Some(major) = numbers(word, 1) {
            // 9.6 and older: the major version is the first two numbers.
            let major = match major.parse::<u32>() {
                Ok(m) if m < 10 => numbers(word, 2).unwrap_or(major),
                _ => major,
            };
            return format!("PostgreSQL {major}");
        }
    } else if let Some(rest) = v.strip_prefix("SQLite ") {
        if let Some(major) = numbers(rest, 1) {
            return format!("SQLite {major}");
        }
    } else if let Some(series) = numbers(v.split(['-', ' ']).next().unwrap_or_default(), 2) {
        let flavour = if v.to_ascii_lowercase().contains("mariadb") {
            "MariaDB"
        } else {
            "MySQL"
        };
        return format!("{flavour} {series}");
    }
    v.to_string()
}

fn file_hash(path: &Path) -> Result<String> {
    let contents =
        std::fs::read(path).map_err(Error::io(format!("reading input file {}", path.display())))?;
    Ok(blake3::hash(&contents).to_hex().to_string())
}

/// The setup command as the fingerprint knows it: each word that is a path
/// (absolute, or starting with `./` or `../`) is resolved by name against the
/// working directory, without following links (a venv's `python` is a link,
/// and which venv it is matters) and without looking at the disk (a setup may
/// create what it names), then written relative to the working directory
/// when it lies inside it and absolute otherwise; so `../../.venv/bin/python`
/// and the absolute path of the same venv make one template. Everything else
/// is kept as written.
pub fn setup_identity(setup: &str) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    setup
        .split(' ')
        .map(|word| {
            let is_path = word.starts_with('/')
                || word.starts_with("./")
                || word.starts_with("../")
                || word == "."
                || word == "..";
            if !is_path {
                return word.to_string();
            }
            let path = lexical(&cwd.join(word));
            match path.strip_prefix(&cwd) {
                Ok(inside) if inside.as_os_str().is_empty() => ".".to_string(),
                Ok(inside) => inside.to_string_lossy().into_owned(),
                Err(_) => path.to_string_lossy().into_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `path` with `.` and `..` resolved by name alone.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Length-prefixed, so that no two different field lists hash alike.
fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_setup_spelled_two_ways_is_one_setup() {
        let cwd = std::env::current_dir().unwrap();
        let absolute = format!("{}/sub/../bin/python migrate --noinput", cwd.display());
        assert_eq!(setup_identity(&absolute), "bin/python migrate --noinput");
        assert_eq!(
            setup_identity("./bin/python migrate --noinput"),
            "bin/python migrate --noinput"
        );
        // Outside the project: absolute, however it was spelled.
        let parent = cwd.parent().unwrap().join(".venv/bin/python");
        assert_eq!(
            setup_identity("../.venv/bin/python x"),
            format!("{} x", parent.display())
        );
        assert_eq!(
            setup_identity(&format!("{} x", parent.display())),
            format!("{} x", parent.display())
        );
        // Options, URLs and plain words: as written.
        assert_eq!(
            setup_identity("python manage.py  migrate --settings=a/b postgres://h/db"),
            "python manage.py  migrate --settings=a/b postgres://h/db"
        );
        let recipe = |setup: &str| Recipe {
            setup: setup.into(),
            ..Recipe::default()
        };
        assert_eq!(
            recipe(&absolute).setup_key(),
            recipe("bin/python migrate --noinput").setup_key()
        );
        assert_eq!(
            recipe(&absolute).fingerprint("15").unwrap(),
            recipe("./bin/python migrate --noinput")
                .fingerprint("15")
                .unwrap()
        );
    }

    #[test]
    fn fingerprint_follows_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("0001_a.py");
        std::fs::write(&a, "one").unwrap();
        let recipe = Recipe {
            setup: "migrate".into(),
            inputs: vec![format!("{}/*.py", dir.path().display())],
            ..Recipe::default()
        };
        let first = recipe.fingerprint("15.2").unwrap();
        assert_eq!(first, recipe.fingerprint("15.2").unwrap());
        assert_ne!(first, recipe.fingerprint("16.0").unwrap());
        std::fs::write(&a, "two").unwrap();
        let second = recipe.fingerprint("15.2").unwrap();
        assert_ne!(first, second);
        std::fs::write(dir.path().join("0002_b.py"), "").unwrap();
        assert_ne!(second, recipe.fingerprint("15.2").unwrap());
        let other = Recipe {
            setup: "migrate --other".into(),
            ..recipe.clone()
        };
        assert_ne!(other.setup_key(), recipe.setup_key());
    }

    #[test]
    fn named_files_and_facts_count_and_changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let migration = dir.path().join("0001_initial.py");
        std::fs::write(&migration, "ops = []").unwrap();
        let mut recipe = Recipe {
            setup: "django".into(),
            files: vec![("auth/migrations/0001_initial.py".into(), migration.clone())],
            facts: BTreeMap::from([("INSTALLED_APPS".to_string(), "auth".to_string())]),
            ..Recipe::default()
        };
        let before = recipe.manifest("16").unwrap();
        assert_eq!(before.changes_since(&before), Vec::<String>::new());
        assert_eq!(
            before.files().collect::<Vec<_>>(),
            ["auth/migrations/0001_initial.py"]
        );

        let second = dir.path().join("0002_more.py");
        std::fs::write(&second, "ops = [1]").unwrap();
        recipe
            .files
            .push(("auth/migrations/0002_more.py".into(), second));
        recipe
            .facts
            .insert("INSTALLED_APPS".into(), "auth\nshop".into());
        let after = recipe.manifest("16").unwrap();
        assert_ne!(after.fingerprint, before.fingerprint);
        assert_eq!(
            after.changes_since(&before),
            [
                "setting INSTALLED_APPS (changed)",
                "auth/migrations/0002_more.py (new)"
            ]
        );
        // The same file under another path (another machine) is the same input.
        let elsewhere = tempfile::tempdir().unwrap();
        let moved = elsewhere.path().join("0001_initial.py");
        std::fs::copy(&migration, &moved).unwrap();
        let mut moved_recipe = recipe.clone();
        moved_recipe.files[0].1 = moved;
        assert_eq!(moved_recipe.fingerprint("16").unwrap(), after.fingerprint);
    }

    #[test]
    fn the_server_kind_ignores_the_version() {
        let recipe = Recipe {
            setup: "django".into(),
            ..Recipe::default()
        };
        let pg15 = recipe.manifest("PostgreSQL 15").unwrap();
        assert!(pg15.same_server_kind(&recipe.manifest("PostgreSQL 16").unwrap()));
        assert!(!pg15.same_server_kind(&recipe.manifest("SQLite 3").unwrap()));
        assert!(!pg15.same_server_kind(&recipe.manifest("MariaDB 10.11").unwrap()));
    }

    #[test]
    fn only_added_files_make_an_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            (format!("app/migrations/{name}"), path)
        };
        let recipe = |files: Vec<(String, PathBuf)>, apps: &str| Recipe {
            setup: "django".into(),
            files,
            facts: BTreeMap::from([("INSTALLED_APPS".to_string(), apps.to_string())]),
            ..Recipe::default()
        };
        let one = file("0001_initial.py", "a");
        let two = file("0002_more.py", "b");
        let parent = recipe(vec![one.clone()], "app").manifest("15").unwrap();
        let child = recipe(vec![one.clone(), two.clone()], "app")
            .manifest("15")
            .unwrap();
        assert_eq!(
            parent.grows_into(&child),
            Some(vec!["app/migrations/0002_more.py".to_string()])
        );
        assert_eq!(child.grows_into(&parent), None, "a removed file");
        assert_eq!(parent.grows_into(&parent), None, "the same template");
        let other_setting = recipe(vec![one.clone(), two.clone()], "app\nshop")
            .manifest("15")
            .unwrap();
        assert_eq!(parent.grows_into(&other_setting), None, "a setting changed");
        let other_server = recipe(vec![one.clone(), two.clone()], "app")
            .manifest("16")
            .unwrap();
        assert_eq!(parent.grows_into(&other_server), None, "another server");
        let changed = file("0001_initial.py", "changed");
        let edited = recipe(vec![changed, two], "app").manifest("15").unwrap();
        assert_eq!(parent.grows_into(&edited), None, "an old file changed");
    }

    #[test]
    fn server_series_keeps_what_shapes_a_template() {
        for (version, series) in [
            (
                "PostgreSQL 15.19 (Debian 15.19-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc",
                "PostgreSQL 15",
            ),
            (
                "PostgreSQL 16.4 on aarch64-unknown-linux-musl",
                "PostgreSQL 16",
            ),
            ("PostgreSQL 9.6.24 on x86_64-pc-linux-gnu", "PostgreSQL 9.6"),
            ("10.11.19-MariaDB-0+deb12u1", "MariaDB 10.11"),
            ("11.4.2-MariaDB-ubu2404-log", "MariaDB 11.4"),
            ("8.0.36", "MySQL 8.0"),
            ("8.4.2-0ubuntu0.24.04.1", "MySQL 8.4"),
            ("SQLite 3.46.0", "SQLite 3"),
            ("something else", "something else"),
        ] {
            assert_eq!(server_series(version), series, "{version}");
        }
    }

    /// Patterns relative to the recipe's directory name their files from
    /// it: the same project checked out in two places (one of them with a
    /// glob character in its path) has one fingerprint.
    #[test]
    fn inputs_are_named_from_the_recipes_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let checkout = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(dir.join("schema")).unwrap();
            std::fs::write(dir.join("schema/a.sql"), "create table a (id int)").unwrap();
            Recipe {
                setup: "psql -f schema/a.sql".into(),
                inputs: vec!["schema/*.sql".into()],
                dir: Some(dir),
                ..Recipe::default()
            }
        };
        let (one, two) = (checkout("one"), checkout("two [copy]"));
        let manifest = one.manifest("1").unwrap();
        assert!(
            manifest.entries.contains_key("file:schema/a.sql"),
            "{manifest:?}"
        );
        assert_eq!(manifest.fingerprint, two.fingerprint("1").unwrap());
        let elsewhere = Recipe {
            dir: Some(tmp.path().join("three")),
            ..one
        };
        let err = elsewhere.fingerprint("1").unwrap_err().to_string();
        assert!(
            err.contains("relative to") && err.contains("three"),
            "{err}"
        );
    }

    #[test]
    fn a_pattern_that_matches_nothing_is_an_error() {
        let recipe = Recipe {
            setup: "x".into(),
            inputs: vec!["/nonexistent/dbfork/*.py".into()],
            ..Recipe::default()
        };
        assert!(matches!(
            recipe.fingerprint("1"),
            Err(Error::InputMatchesNothing { .. })
        ));
    }
}

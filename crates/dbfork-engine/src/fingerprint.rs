//! Template fingerprints: blake3 over everything that decides a template's
//! contents, so the same fingerprint means "reuse" and never "stale".

use std::path::PathBuf;

use crate::error::{Error, Result};

/// What a template is built from.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The setup command, run by `sh -c`.
    pub setup: String,
    /// Glob patterns of input files (migrations, fixtures), relative to the working directory.
    pub inputs: Vec<String>,
}

impl Recipe {
    /// The sorted input files the patterns match. A pattern that matches
    /// nothing is an error: a typo would otherwise silently freeze a template.
    pub fn input_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for pattern in &self.inputs {
            let paths = glob::glob(pattern).map_err(|e| Error::BadInput {
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
                });
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// The fingerprint of this recipe on a server of `server_version`.
    pub fn fingerprint(&self, server_version: &str) -> Result<String> {
        let mut h = blake3::Hasher::new();
        field(&mut h, b"dbfork-template");
        field(&mut h, &crate::TEMPLATE_FORMAT_VERSION.to_le_bytes());
        field(&mut h, server_version.as_bytes());
        field(&mut h, self.setup.as_bytes());
        for path in self.input_files()? {
            let contents = std::fs::read(&path)
                .map_err(Error::io(format!("reading input file {}", path.display())))?;
            field(&mut h, path.to_string_lossy().as_bytes());
            field(&mut h, &contents);
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// A key shared by every version of this setup (its templates age out together).
    pub fn setup_key(&self) -> String {
        blake3::hash(self.setup.as_bytes()).to_hex()[..16].to_string()
    }
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
    fn fingerprint_follows_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("0001_a.py");
        std::fs::write(&a, "one").unwrap();
        let recipe = Recipe {
            setup: "migrate".into(),
            inputs: vec![format!("{}/*.py", dir.path().display())],
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
    fn a_pattern_that_matches_nothing_is_an_error() {
        let recipe = Recipe {
            setup: "x".into(),
            inputs: vec!["/nonexistent/dbfork/*.py".into()],
        };
        assert!(matches!(
            recipe.fingerprint("1"),
            Err(Error::InputMatchesNothing { .. })
        ));
    }
}

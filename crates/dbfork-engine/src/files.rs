//! Files and directories dbfork writes: under names nobody can guess ahead,
//! created new (never over a file or through a link someone planted), and
//! private (0600 / 0700) where they can hold rows or secrets. CI machines run
//! dbfork as root beside jobs of others: a predictable temporary name opened
//! with a plain create would let a planted symlink make dbfork overwrite any
//! file.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// 16 hex digits from the kernel's random source.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    if !crate::sys::random_bytes(&mut bytes) {
        // No getrandom (very old kernels): a hash of what differs between calls.
        let mut h = blake3::Hasher::new();
        h.update(&std::process::id().to_le_bytes());
        h.update(&format!("{:?}", std::time::SystemTime::now()).into_bytes());
        h.update(&format!("{:p}", &bytes).into_bytes());
        bytes.copy_from_slice(&h.finalize().as_bytes()[..8]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the new file `path`, readable by this user only: fails when
/// anything (a file, a link) is already there.
pub fn create_new_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::sys::O_NOFOLLOW | crate::sys::O_CLOEXEC)
        .open(path)
}

/// A new private file in `dir` named `<prefix><random><suffix>`.
pub fn create_temp(dir: &Path, prefix: &str, suffix: &str) -> std::io::Result<(File, PathBuf)> {
    loop {
        let path = dir.join(format!("{prefix}{}{suffix}", random_hex()));
        match create_new_private(&path) {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Replaces `path` with `bytes` at once (a new private file renamed over
/// it: a link at `path` is replaced, never followed).
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut file, temp) = create_temp(dir, &format!(".{name}."), ".tmp")?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A new directory in `parent` named `<prefix><random><suffix>`, this user's only.
pub fn create_temp_dir(parent: &Path, prefix: &str, suffix: &str) -> std::io::Result<PathBuf> {
    loop {
        let path = parent.join(format!("{prefix}{}{suffix}", random_hex()));
        match DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Makes `dir` (and its missing parents) for dbfork's own files, the last
/// one 0700 when made here; an existing one must be a directory (not a
/// link to one) owned by this user, or root for shared parents.
pub fn ensure_own_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.is_dir() {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory (a link or a file) and dbfork does not write through one",
                    dir.display()
                )));
            }
            let me = crate::sys::euid();
            if meta.uid() != me {
                return Err(std::io::Error::other(format!(
                    "{} belongs to another user (uid {}) and dbfork does not write its files into it",
                    dir.display(),
                    meta.uid()
                )));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("out.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(create_new_private(&link).is_err());
        write_replacing(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let mode = std::fs::metadata(&link).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let linked_dir = dir.path().join("logs");
        std::os::unix::fs::symlink(dir.path(), &linked_dir).unwrap();
        let err = ensure_own_dir(&linked_dir).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let fresh = create_temp_dir(dir.path(), "x-", "").unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        assert_ne!(random_hex(), random_hex());
    }
}

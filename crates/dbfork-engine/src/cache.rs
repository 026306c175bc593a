//! The template cache: a directory of exported templates, one file per
//! fingerprint and backend, that travels between machines (a CI cache) so
//! that a fresh server restores the template instead of running the setup.
//!
//! A file is `<fingerprint>.<backend>.dbfork-template`:
//!
//! ```text
//! "DBFORKT2" | header length (u32 LE) | header (JSON) | zstd payload | tag of all before (32 bytes)
//! ```
//!
//! The header says what the payload is (backend, fingerprint, the manifest of
//! the template's inputs, sizes); the payload is the backend's own dump
//! ([`crate::Backend::export_database`]). Files are written to a new private
//! temporary file and renamed, so a reader sees a whole file or none. The
//! directory is kept under a size cap, least recently used first out (a
//! restore renews a file's modification time).
//!
//! A restore runs what the file holds on the database server (a dump can
//! hold functions, and on PostgreSQL a function can run a program on the
//! server's host), so a file is trusted only when nobody else could have
//! made it. With a key (`DBFORK_CACHE_KEY`, a secret shared by the machines
//! that share the cache) the tag is a keyed blake3 MAC of the whole file:
//! a file whose tag does not match the key is refused, whoever wrote it.
//! Without a key the tag is a plain blake3 hash (it catches damage only),
//! and a file is used only when this user owns it and its directory, and no
//! one else can write either, as ssh treats its keys. The tag is checked
//! in the same pass that unpacks the payload, from one open file, and the
//! payload is restored only after it matched.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::fingerprint::Manifest;
use crate::url::Kind;

const MAGIC: &[u8; 8] = b"DBFORKT2";
/// Files of older dbforks (no key possible): refused, and rebuilt.
const OLD_MAGIC: &[u8; 8] = b"DBFORKT1";
/// The environment variable holding the cache key.
pub const KEY_ENV: &str = dbfork_meta::env::CACHE_KEY;

/// A key for the cache files' tags. Never printed.
#[derive(Clone, Copy)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key from a secret of any length (derived with blake3's KDF).
    pub fn from_secret(secret: &str) -> CacheKey {
        CacheKey(blake3::derive_key(
            "dbfork 2026-12 template cache file tag",
            secret.as_bytes(),
        ))
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(***)")
    }
}

static KEY: std::sync::OnceLock<Option<CacheKey>> = std::sync::OnceLock::new();

/// Reads the cache key from `DBFORK_CACHE_KEY` and removes the variable
/// from this process's environment, so that no child (the setup command,
/// the test workers: the code under test) can read it. Call it first thing
/// in `main`, before any thread starts.
pub fn take_key_from_env() {
    env_key();
    // SAFETY (for editions where this is unsafe): called before any other
    // thread exists, as documented.
    std::env::remove_var(KEY_ENV);
}

/// The key taken by [`take_key_from_env`] (or, where it was not called,
/// read from the environment), read once.
fn env_key() -> Option<CacheKey> {
    *KEY.get_or_init(|| {
        std::env::var(KEY_ENV)
            .ok()
            .filter(|k| !k.is_empty())
            .map(|k| CacheKey::from_secret(&k))
    })
}

const SUFFIX: &str = ".dbfork-template";
const HASH_LEN: u64 = 32;
/// The largest header a reader accepts (a manifest of many thousand files fits).
const MAX_HEADER: u32 = 64 << 20;
/// zstd's level: level 3 (its default) compresses a dump about 5-10x at
/// several hundred MB/s, far faster than any restore.
const LEVEL: i32 = 3;

/// The default size cap of a cache directory.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

/// A size in bytes from `500MB`, `2GiB`, `1g` or a plain number of bytes
/// (units are powers of 1024 whether written KB or KiB).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size; give bytes or e.g. 500MB, 2GiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "`{other}` is not a size unit; use B, KB, MB, GB or TB"
            ))
        }
    };
    Ok((value * scale as f64) as u64)
}

/// A template cache directory.
#[derive(Debug, Clone)]
pub struct TemplateCache {
    pub dir: PathBuf,
    /// The most the directory's template files may take together.
    pub max_bytes: u64,
    /// The key files are tagged and checked with (`DBFORK_CACHE_KEY`).
    pub key: Option<CacheKey>,
}

/// What a cache file holds, besides the payload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Header {
    pub backend: String,
    pub fingerprint: String,
    /// The inputs the template was built from (for incremental builds).
    pub manifest: Manifest,
    /// The database name the template had where it was exported.
    pub source_name: String,
    /// Unix seconds.
    pub exported_at: i64,
    /// Bytes of the uncompressed payload.
    pub payload_bytes: u64,
    pub dbfork_version: String,
    /// Whether the tag is a keyed MAC (written with a cache key).
    #[serde(default)]
    pub keyed: bool,
}

/// A cache file that passed its checks.
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub header: Header,
    /// The size of the file.
    pub bytes: u64,
}

impl TemplateCache {
    /// The cache in `dir`, with the key of `DBFORK_CACHE_KEY` if there is one.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> TemplateCache {
        TemplateCache {
            dir: dir.into(),
            max_bytes,
            key: env_key(),
        }
    }

    /// This cache with another key (or none).
    pub fn with_key(self, key: Option<CacheKey>) -> TemplateCache {
        TemplateCache { key, ..self }
    }

    fn hasher(&self) -> blake3::Hasher {
        match &self.key {
            Some(key) => blake3::Hasher::new_keyed(&key.0),
            None => blake3::Hasher::new(),
        }
    }

    /// The file a template of `fingerprint` on `kind` lives in.
    pub fn path_of(&self, fingerprint: &str, kind: Kind) -> PathBuf {
        self.dir
            .join(format!("{fingerprint}.{}{SUFFIX}", kind.id()))
    }

    /// Whether the file of `fingerprint` exists (unchecked).
    pub fn has(&self, fingerprint: &str, kind: Kind) -> bool {
        self.path_of(fingerprint, kind).is_file()
    }

    /// The entry of `fingerprint` on `kind`: `Ok(None)` when there is no
    /// file, an error (to warn about) when the file cannot be trusted or its
    /// header is damaged. Its tag is checked by [`TemplateCache::unpack`].
    pub fn lookup(&self, fingerprint: &str, kind: Kind) -> Result<Option<Entry>> {
        let path = self.path_of(fingerprint, kind);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let (header, _) = read_header(&path)?;
        if header.fingerprint != fingerprint || header.backend != kind.id() {
            return Err(damaged(&path, "its header names another template"));
        }
        match (&self.key, header.keyed) {
            (Some(_), false) => {
                return Err(damaged(
                    &path,
                    &format!("it was written without a cache key, and {KEY_ENV} is set: only files tagged with that key are restored (it is rebuilt and replaced)"),
                ))
            }
            (None, true) => {
                return Err(damaged(
                    &path,
                    &format!("it was written with a cache key: set {KEY_ENV} to the same secret to restore it"),
                ))
            }
            (None, false) => untrusted(&path)?,
            (Some(_), true) => {}
        }
        let bytes = std::fs::metadata(&path)
            .map_err(Error::io(format!(
                "reading the cache file {}",
                path.display()
            )))?
            .len();
        Ok(Some(Entry {
            path,
            header,
            bytes,
        }))
    }

    /// The headers of every file for `kind` (unchecked past the header: an
    /// ancestor is verified when it is chosen).
    pub fn headers(&self, kind: Kind) -> Vec<(PathBuf, Header)> {
        let wanted = format!(".{}{SUFFIX}", kind.id());
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(&wanted))
            .filter_map(|p| read_header(&p).ok().map(|(h, _)| (p, h)))
            .collect()
    }

    /// Writes `payload` (a dump file) compressed under `header`'s name,
    /// atomically, then trims the directory to its cap. Returns the file.
    pub fn store(&self, kind: Kind, mut header: Header, payload: &Path) -> Result<PathBuf> {
        crate::files::ensure_own_dir(&self.dir).map_err(Error::io(format!(
            "creating the template cache directory {}",
            self.dir.display()
        )))?;
        header.backend = kind.id().to_string();
        let path = self.path_of(&header.fingerprint, kind);
        header.payload_bytes = std::fs::metadata(payload)
            .map_err(Error::io(format!("reading {}", payload.display())))?
            .len();
        let (file, temp) =
            crate::files::create_temp(&self.dir, &format!(".{}.", header.fingerprint), ".tmp")
                .map_err(Error::io(format!(
                    "creating a cache file in {}",
                    self.dir.display()
                )))?;
        header.keyed = self.key.is_some();
        let written = write_file(file, &temp, &header, payload, self.hasher());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        std::fs::rename(&temp, &path).map_err(Error::io(format!(
            "moving the new cache file into place at {}",
            path.display()
        )))?;
        self.trim(&path);
        Ok(path)
    }

    /// Decompresses `entry`'s payload into `out` while checking the whole
    /// file's tag, in one pass over one open file (what is checked is what
    /// is unpacked), and marks the file used. On an error `out` holds
    /// nothing to restore.
    pub fn unpack(&self, entry: &Entry, out: &Path) -> Result<()> {
        let unpacked = self.unpack_checked(entry, out);
        if unpacked.is_err() {
            let _ = std::fs::remove_file(out);
        }
        unpacked
    }

    fn unpack_checked(&self, entry: &Entry, out: &Path) -> Result<()> {
        let ctx = || format!("unpacking {}", entry.path.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(crate::sys::O_NOFOLLOW)
            .open(&entry.path)
            .map_err(Error::io(ctx()))?;
        let bytes = file.metadata().map_err(Error::io(ctx()))?.len();
        let mut tagged = Hashing {
            inner: BufReader::new(file),
            hasher: self.hasher(),
        };
        let (_, start) = parse_header(&mut tagged, &entry.path)?;
        if bytes < start + HASH_LEN {
            return Err(damaged(&entry.path, "it is truncated"));
        }
        let mut compressed = (&mut tagged).take(bytes - start - HASH_LEN);
        let mut decoder =
            zstd::stream::read::Decoder::new(&mut compressed).map_err(Error::io(ctx()))?;
        let mut sink =
            BufWriter::new(crate::files::create_new_private(out).map_err(Error::io(ctx()))?);
        let copied = std::io::copy(&mut decoder, &mut sink);
        drop(decoder);
        // The rest of the payload (zstd may stop before its end), then the tag.
        let rest = std::io::copy(&mut compressed, &mut std::io::sink());
        let mut stored = [0u8; HASH_LEN as usize];
        let tag_read = tagged.inner.read_exact(&mut stored);
        let matches = tag_read.is_ok()
            && rest.is_ok()
            && tagged.hasher.finalize() == blake3::Hash::from_bytes(stored);
        if !matches {
            let problem = if self.key.is_some() {
                format!("its tag does not match {KEY_ENV}: it was written with another key, damaged, or forged; it is not restored")
            } else {
                "its checksum does not match (truncated or damaged)".to_string()
            };
            return Err(damaged(&entry.path, &problem));
        }
        let copied = copied.map_err(Error::io(ctx()))?;
        sink.flush().map_err(Error::io(ctx()))?;
        if copied != entry.header.payload_bytes {
            return Err(damaged(
                &entry.path,
                &format!(
                    "its payload unpacks to {copied} bytes, not the {} its header says",
                    entry.header.payload_bytes
                ),
            ));
        }
        touch(&entry.path);
        Ok(())
    }

    /// Removes the least recently used template files until the directory
    /// is within its cap; `keep` (the file just written) stays whatever its
    /// size. Leftover temporary files of dead writers go too.
    fn trim(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for entry in dir.filter_map(|e| e.ok()) {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let old = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if old && meta.is_dir() {
                    let _ = std::fs::remove_dir_all(&path);
                } else if old {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if name.ends_with(SUFFIX) {
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((used, meta.len(), path));
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::info!("template cache: removed {} (over the cap)", path.display());
                total -= size;
            }
        }
    }
}

fn damaged(path: &Path, problem: &str) -> Error {
    Error::CacheFile {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Renews a file's modification time (the cache's "last used").
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn write_file(
    file: std::fs::File,
    temp: &Path,
    header: &Header,
    payload: &Path,
    hasher: blake3::Hasher,
) -> Result<()> {
    let ctx = || format!("writing the cache file {}", temp.display());
    let mut out = Hashing {
        inner: BufWriter::new(file),
        hasher,
    };
    let header_json = serde_json::to_vec(header).map_err(|e| damaged(temp, &e.to_string()))?;
    out.write_all(MAGIC).map_err(Error::io(ctx()))?;
    out.write_all(&(header_json.len() as u32).to_le_bytes())
        .map_err(Error::io(ctx()))?;
    out.write_all(&header_json).map_err(Error::io(ctx()))?;
    let source = std::fs::File::open(payload).map_err(Error::io(ctx()))?;
    let mut encoder = zstd::stream::write::Encoder::new(out, LEVEL).map_err(Error::io(ctx()))?;
    std::io::copy(&mut BufReader::new(source), &mut encoder).map_err(Error::io(ctx()))?;
    let mut out = encoder.finish().map_err(Error::io(ctx()))?;
    let hash = out.hasher.finalize();
    out.inner
        .write_all(hash.as_bytes())
        .map_err(Error::io(ctx()))?;
    let file = out.inner.into_inner().map_err(|e| Error::Io {
        context: ctx(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(Error::io(ctx()))
}

/// A writer or reader that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The header of a cache file and where its payload starts.
fn read_header(path: &Path) -> Result<(Header, u64)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(crate::sys::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(crate::sys::ELOOP) => damaged(path, "it is a symbolic link"),
            _ => Error::Io {
                context: format!("reading the cache file {}", path.display()),
                source: e,
            },
        })?;
    parse_header(&mut BufReader::new(file), path)
}

/// Reads the magic and the header from the start of `file` (the file at `path`).
fn parse_header(file: &mut impl Read, path: &Path) -> Result<(Header, u64)> {
    let mut fixed = [0u8; 12];
    if file.read_exact(&mut fixed).is_err() {
        return Err(damaged(path, "it is not a dbfork template file"));
    }
    if &fixed[..8] == OLD_MAGIC {
        return Err(damaged(
            path,
            "it was written by an older dbfork (it is rebuilt and replaced)",
        ));
    }
    if &fixed[..8] != MAGIC {
        return Err(damaged(path, "it is not a dbfork template file"));
    }
    let len = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]);
    if len > MAX_HEADER {
        return Err(damaged(path, "its header is damaged"));
    }
    let mut json = vec![0u8; len as usize];
    if file.read_exact(&mut json).is_err() {
        return Err(damaged(path, "it ends inside its header (truncated)"));
    }
    let header: Header =
        serde_json::from_slice(&json).map_err(|_| damaged(path, "its header is damaged"))?;
    Ok((header, 12 + len as u64))
}

/// Why a file of a cache without a key cannot be trusted, as an error:
/// anyone else who can write the file, or its directory, could have made
/// it. `Ok` when only this user (and root) can.
fn untrusted(path: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = crate::sys::euid();
    let dir = path.parent().unwrap_or(Path::new("."));
    let problem = |what: String| {
        damaged(
            path,
            &format!(
                "{what}, so someone else could have written it, and a restore runs what it holds on the database server. \
                 It is not restored. Set {KEY_ENV} (a secret, the same on every machine sharing the cache) to authenticate \
                 the files, or keep the cache in a directory only you can write (`chmod go-w {}`)",
                dir.display()
            ),
        )
    };
    let file = std::fs::symlink_metadata(path).map_err(Error::io(format!(
        "reading the cache file {}",
        path.display()
    )))?;
    if file.file_type().is_symlink() {
        return Err(problem("it is a symbolic link".into()));
    }
    if file.uid() != me {
        return Err(problem(format!(
            "it belongs to another user (uid {})",
            file.uid()
        )));
    }
    if file.mode() & 0o022 != 0 {
        return Err(problem(format!(
            "others can write it (mode {:o})",
            file.mode() & 0o777
        )));
    }
    let folder = std::fs::metadata(dir).map_err(Error::io(format!(
        "reading the cache directory {}",
        dir.display()
    )))?;
    if folder.uid() != me && folder.uid() != 0 {
        return Err(problem(format!(
            "its directory belongs to another user (uid {})",
            folder.uid()
        )));
    }
    // A sticky directory (like /tmp) lets others add files, not replace this user's.
    if folder.mode() & 0o022 != 0 && folder.mode() & 0o1000 == 0 {
        return Err(problem(format!(
            "others can write its directory (mode {:o})",
            folder.mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn header(fingerprint: &str) -> Header {
        Header {
            backend: "sqlite".into(),
            fingerprint: fingerprint.into(),
            manifest: Manifest::default(),
            source_name: "dbfork_tpl_x".into(),
            exported_at: 0,
            payload_bytes: 0,
            dbfork_version: "test".into(),
            keyed: false,
        }
    }

    fn unpacked(cache: &TemplateCache, fingerprint: &str, out: &Path) -> Result<Vec<u8>> {
        let entry = cache
            .lookup(fingerprint, Kind::Sqlite)?
            .expect("the file is there");
        let _ = std::fs::remove_file(out);
        cache.unpack(&entry, out)?;
        Ok(std::fs::read(out).unwrap())
    }

    #[test]
    fn a_stored_file_unpacks_to_its_payload_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path().join("cache"), DEFAULT_MAX_BYTES).with_key(None);
        let payload = dir.path().join("dump");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        std::fs::write(&payload, &data).unwrap();
        let path = cache.store(Kind::Sqlite, header("aa"), &payload).unwrap();
        assert_eq!(path, cache.path_of("aa", Kind::Sqlite));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let out = dir.path().join("out");
        assert_eq!(unpacked(&cache, "aa", &out).unwrap(), data);
        assert!(cache.lookup("bb", Kind::Sqlite).unwrap().is_none());

        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 100]).unwrap();
        let err = unpacked(&cache, "aa", &out).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
        assert!(!out.exists(), "nothing is left to restore");
        std::fs::write(&path, &whole[..20]).unwrap();
        let err = unpacked(&cache, "aa", &out).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut flipped = whole.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = unpacked(&cache, "aa", &out).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
    }

    /// A file whose plain checksum the forger recomputed passes without a
    /// key (the forger then needs write access: see the next test); with a
    /// key only the key's holder can make a file that is restored.
    #[test]
    fn with_a_key_only_files_tagged_with_it_are_restored() {
        let dir = tempfile::tempdir().unwrap();
        let secret = |s: &str| Some(CacheKey::from_secret(s));
        let keyed = TemplateCache::new(dir.path().join("cache"), DEFAULT_MAX_BYTES)
            .with_key(secret("ci secret"));
        let payload = dir.path().join("dump");
        std::fs::write(&payload, b"CREATE TABLE genuine (id int);").unwrap();
        let path = keyed.store(Kind::Sqlite, header("aa"), &payload).unwrap();
        let out = dir.path().join("out");
        // Another machine with the same key restores it.
        let elsewhere = keyed.clone().with_key(secret("ci secret"));
        assert_eq!(
            unpacked(&elsewhere, "aa", &out).unwrap(),
            b"CREATE TABLE genuine (id int);"
        );
        // A forgery: the file rebuilt with a recomputed plain checksum, or
        // with a guessed key, is refused by the key's holder.
        std::fs::write(&payload, b"CREATE FUNCTION evil() ...;").unwrap();
        for forger in [
            keyed.clone().with_key(None),
            keyed.clone().with_key(secret("guess")),
        ] {
            let plain = forger.key.is_none();
            let mut h = header("aa");
            h.keyed = true;
            forger.store(Kind::Sqlite, h, &payload).unwrap();
            if plain {
                // store() marks an unkeyed file as such: forge the flag too.
                let mut forged = std::fs::read(&path).unwrap();
                let (from, to) = (b"\"keyed\":false", b"\"keyed\":true ");
                let at = forged.windows(from.len()).position(|w| w == from).unwrap();
                forged[at..at + from.len()].copy_from_slice(to);
                let body = forged.len() - HASH_LEN as usize;
                let tag = blake3::hash(&forged[..body]);
                forged[body..].copy_from_slice(tag.as_bytes());
                std::fs::write(&path, forged).unwrap();
            }
            let err = unpacked(&keyed, "aa", &out).unwrap_err().to_string();
            assert!(
                err.contains("its tag does not match DBFORK_CACHE_KEY"),
                "{err}"
            );
            assert!(!out.exists());
        }
        // Unkeyed files are refused with a key; keyed ones without one.
        keyed
            .clone()
            .with_key(None)
            .store(Kind::Sqlite, header("bb"), &payload)
            .unwrap();
        let err = keyed.lookup("bb", Kind::Sqlite).unwrap_err().to_string();
        assert!(err.contains("written without a cache key"), "{err}");
        let err = keyed
            .clone()
            .with_key(None)
            .lookup("aa", Kind::Sqlite)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("set DBFORK_CACHE_KEY to the same secret"),
            "{err}"
        );
    }

    /// Without a key, a file others could have written is refused, as ssh
    /// refuses a key file others can write.
    #[test]
    fn without_a_key_files_others_could_write_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path().join("cache"), DEFAULT_MAX_BYTES).with_key(None);
        let payload = dir.path().join("dump");
        std::fs::write(&payload, b"rows").unwrap();
        let path = cache.store(Kind::Sqlite, header("aa"), &payload).unwrap();
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        chmod(&path, 0o666);
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(
            err.contains("others can write it") && err.contains("DBFORK_CACHE_KEY"),
            "{err}"
        );
        chmod(&path, 0o600);
        chmod(&cache.dir, 0o777);
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(
            err.contains("others can write its directory") && err.contains("chmod go-w"),
            "{err}"
        );
        chmod(&cache.dir, 0o1777);
        assert!(
            cache.lookup("aa", Kind::Sqlite).unwrap().is_some(),
            "sticky, like /tmp"
        );
        chmod(&cache.dir, 0o755);
        // A link planted in place of a file.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::rename(&path, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        // And the writer replaces the link, never writing through it.
        cache.store(Kind::Sqlite, header("aa"), &payload).unwrap();
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert!(cache.lookup("aa", Kind::Sqlite).unwrap().is_some());
    }

    #[test]
    fn the_directory_keeps_to_its_cap_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("dump");
        // Incompressible, so that each file's size is about the payload's.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&payload, &data).unwrap();
        let cache = TemplateCache::new(dir.path().join("c"), 250_000);
        let first = cache.store(Kind::Sqlite, header("01"), &payload).unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(600);
        std::fs::File::options()
            .append(true)
            .open(&first)
            .unwrap()
            .set_modified(old)
            .unwrap();
        cache.store(Kind::Sqlite, header("02"), &payload).unwrap();
        assert!(first.exists());
        cache.store(Kind::Sqlite, header("03"), &payload).unwrap();
        assert!(!first.exists(), "the least recently used file goes first");
        assert!(cache.has("02", Kind::Sqlite) && cache.has("03", Kind::Sqlite));
        let small = TemplateCache::new(dir.path().join("c"), 10);
        small.store(Kind::Sqlite, header("04"), &payload).unwrap();
        assert!(
            small.has("04", Kind::Sqlite),
            "the new file stays over the cap"
        );
        assert_eq!(small.headers(Kind::Sqlite).len(), 1);
    }
}

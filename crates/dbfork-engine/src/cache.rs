//! The template cache: a directory of exported templates, one file per
//! fingerprint and backend, that travels between machines (a CI cache) so
//! that a fresh server restores the template instead of running the setup.
//!
//! A file is `<fingerprint>.<backend>.dbfork-template`:
//!
//! ```text
//! "DBFORKT1" | header length (u32 LE) | header (JSON) | zstd payload | blake3 of all before (32 bytes)
//! ```
//!
//! The header says what the payload is (backend, fingerprint, the manifest of
//! the template's inputs, sizes); the payload is the backend's own dump
//! ([`crate::Backend::export_database`]). Files are written to a temporary
//! name and renamed, so a reader sees a whole file or none; the trailing hash
//! catches a truncated or damaged one, which is then ignored (the caller
//! warns and builds). The directory is kept under a size cap, least recently
//! used first out (a restore renews a file's modification time).

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::fingerprint::Manifest;
use crate::url::Kind;

const MAGIC: &[u8; 8] = b"DBFORKT1";
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
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> TemplateCache {
        TemplateCache {
            dir: dir.into(),
            max_bytes,
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

    /// The checked entry of `fingerprint` on `kind`: `Ok(None)` when there is
    /// no file, an error (to warn about) when the file is damaged.
    pub fn lookup(&self, fingerprint: &str, kind: Kind) -> Result<Option<Entry>> {
        let path = self.path_of(fingerprint, kind);
        if !path.is_file() {
            return Ok(None);
        }
        let entry = verify(&path)?;
        if entry.header.fingerprint != fingerprint || entry.header.backend != kind.id() {
            return Err(damaged(&path, "its header names another template"));
        }
        Ok(Some(entry))
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
        std::fs::create_dir_all(&self.dir).map_err(Error::io(format!(
            "creating the template cache directory {}",
            self.dir.display()
        )))?;
        header.backend = kind.id().to_string();
        let path = self.path_of(&header.fingerprint, kind);
        let temp = self.dir.join(format!(
            ".{}.{}.tmp",
            header.fingerprint,
            crate::process::private_dir_owner()
        ));
        header.payload_bytes = std::fs::metadata(payload)
            .map_err(Error::io(format!("reading {}", payload.display())))?
            .len();
        let written = write_file(&temp, &header, payload);
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

    /// Decompresses `entry`'s payload into `out`, and marks the file used.
    pub fn unpack(&self, entry: &Entry, out: &Path) -> Result<()> {
        let ctx = || format!("unpacking {}", entry.path.display());
        let mut file = std::fs::File::open(&entry.path).map_err(Error::io(ctx()))?;
        let (_, start) = read_header(&entry.path)?;
        file.seek(SeekFrom::Start(start))
            .map_err(Error::io(ctx()))?;
        let compressed = file.take(entry.bytes - start - HASH_LEN);
        let mut decoder = zstd::stream::read::Decoder::new(compressed).map_err(Error::io(ctx()))?;
        let mut sink = BufWriter::new(std::fs::File::create(out).map_err(Error::io(ctx()))?);
        let copied = std::io::copy(&mut decoder, &mut sink).map_err(Error::io(ctx()))?;
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
                if old {
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

fn write_file(temp: &Path, header: &Header, payload: &Path) -> Result<()> {
    let ctx = || format!("writing the cache file {}", temp.display());
    let file = std::fs::File::create(temp).map_err(Error::io(ctx()))?;
    let mut out = Hashing {
        inner: BufWriter::new(file),
        hasher: blake3::Hasher::new(),
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

/// A writer that hashes what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
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
    let ctx = || format!("reading the cache file {}", path.display());
    let mut file = std::fs::File::open(path).map_err(Error::io(ctx()))?;
    let mut fixed = [0u8; 12];
    if file.read_exact(&mut fixed).is_err() || &fixed[..8] != MAGIC {
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

/// Checks a whole file against its trailing hash.
fn verify(path: &Path) -> Result<Entry> {
    let ctx = || format!("reading the cache file {}", path.display());
    let (header, start) = read_header(path)?;
    let bytes = std::fs::metadata(path).map_err(Error::io(ctx()))?.len();
    if bytes < start + HASH_LEN {
        return Err(damaged(path, "it is truncated"));
    }
    let mut file = std::fs::File::open(path).map_err(Error::io(ctx()))?;
    let mut hasher = blake3::Hasher::new();
    let mut body = (&mut file).take(bytes - HASH_LEN);
    std::io::copy(&mut body, &mut hasher).map_err(Error::io(ctx()))?;
    let mut stored = [0u8; HASH_LEN as usize];
    file.read_exact(&mut stored).map_err(Error::io(ctx()))?;
    if hasher.finalize().as_bytes() != &stored {
        return Err(damaged(
            path,
            "its checksum does not match (truncated or damaged)",
        ));
    }
    Ok(Entry {
        path: path.to_path_buf(),
        header,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(fingerprint: &str) -> Header {
        Header {
            backend: "sqlite".into(),
            fingerprint: fingerprint.into(),
            manifest: Manifest::default(),
            source_name: "dbfork_tpl_x".into(),
            exported_at: 0,
            payload_bytes: 0,
            dbfork_version: "test".into(),
        }
    }

    #[test]
    fn a_stored_file_unpacks_to_its_payload_and_damage_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TemplateCache::new(dir.path().join("cache"), DEFAULT_MAX_BYTES);
        let payload = dir.path().join("dump");
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        std::fs::write(&payload, &data).unwrap();
        let path = cache.store(Kind::Sqlite, header("aa"), &payload).unwrap();
        assert_eq!(path, cache.path_of("aa", Kind::Sqlite));
        let entry = cache.lookup("aa", Kind::Sqlite).unwrap().unwrap();
        assert_eq!(entry.header.payload_bytes, data.len() as u64);
        let out = dir.path().join("out");
        cache.unpack(&entry, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        assert!(cache.lookup("bb", Kind::Sqlite).unwrap().is_none());

        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 100]).unwrap();
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
        std::fs::write(&path, &whole[..20]).unwrap();
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut flipped = whole.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = cache.lookup("aa", Kind::Sqlite).unwrap_err().to_string();
        assert!(err.contains("checksum does not match"), "{err}");
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

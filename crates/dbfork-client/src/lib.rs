//! A database per test from `dbfork serve`, for Rust test suites (sqlx,
//! diesel, tokio-postgres, rusqlite: anything that takes a URL). Blocking,
//! with no dependency on an async runtime:
//!
//! ```no_run
//! # fn migrate(_url: &str) -> Result<(), std::io::Error> { Ok(()) }
//! let client = dbfork_client::Client::from_env()?;
//! let hash = dbfork_client::hash_files(&["migrations"])?;
//! // Once per test binary (and once per hash on the service): fill the template.
//! client.template(&hash, |template| migrate(&template.url))?;
//! // Per test: a fresh clone; it goes back when the lease is dropped.
//! let db = client.lease(&hash)?;
//! println!("{}", db.url());
//! # Ok::<(), dbfork_client::Error>(())
//! ```
//!
//! The service is the one `DBFORK_SERVE_URL` names; without it,
//! [`Client::from_env`] starts `dbfork serve` for this process (the `dbfork`
//! on PATH, or `DBFORK_BIN`), on the database the project names
//! (`DBFORK_DB`, or `db` of its dbfork.toml / `[tool.dbfork]`), on a port
//! of its own, shared by every test of the process and ended with it
//! however it ends (the service drains when its standard input closes), so
//! `cargo test` needs nothing set up. A lease dropped sends the clone to be
//! recreated (a test's changes never reach the next test);
//! [`Lease::give_back_clean`] returns it to be handed out again as it is,
//! for a test that changed nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Where the service is, unless given.
pub const ENV_URL: &str = "DBFORK_SERVE_URL";
/// The dbfork binary to start a service with (default: `dbfork` on PATH).
pub const ENV_BIN: &str = "DBFORK_BIN";

/// The service this process started, if it did: its address and the
/// process, whose standard input (held open here) ends it when it closes.
static SPAWNED: std::sync::Mutex<Option<(String, std::process::Child)>> =
    std::sync::Mutex::new(None);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach dbfork serve at {address}: {source}. Start it (`dbfork serve --db URL`) or point {ENV_URL} at it")]
    Unreachable {
        address: String,
        source: std::io::Error,
    },
    #[error("dbfork serve answered {status} to {what}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    #[error("dbfork serve's answer to {what} is not what it should be: {why}")]
    Protocol { what: String, why: String },
    #[error("filling the template failed (it was discarded): {0}")]
    Fill(String),
    #[error("{ENV_URL} is `{0}`: expected http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot start `{bin} serve` ({ENV_URL} is not set, so a service is started for this process): {why}. Install dbfork (or set {ENV_BIN} to its path), or start `dbfork serve` yourself and set {ENV_URL}")]
    Spawn { bin: String, why: String },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// A database the service handed out: its URL (with the password: keep it
/// out of logs) and its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// A URL the backend's drivers take: `postgres://...`, `mysql://...`,
    /// `sqlite:///path`.
    pub url: String,
    /// Its name on the server (SQLite: the file's path).
    pub name: String,
    /// The clone's id (`None` for a template).
    pub id: Option<u64>,
}

/// A connection to `dbfork serve`.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`.
    address: String,
    timeout: Duration,
}

impl Client {
    /// The service at `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> Result<Client, Error> {
        let address = url
            .trim_end_matches('/')
            .strip_prefix("http://")
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| Error::BadUrl(url.to_string()))?;
        Ok(Client {
            address: address.to_string(),
            // The service waits up to 60 s for a template or a clone.
            timeout: Duration::from_secs(90),
        })
    }

    /// The service `DBFORK_SERVE_URL` names, else one started for this
    /// process (once; every client of the process shares it).
    pub fn from_env() -> Result<Client, Error> {
        match std::env::var(ENV_URL) {
            Ok(url) if !url.is_empty() => Client::new(&url),
            _ => Client::new(&spawned()?),
        }
    }

    /// Makes sure the template of `hash` exists: when the service has none,
    /// `fill` gets the new, empty database to migrate and load, and the
    /// template is finalized (or discarded when `fill` fails). When another
    /// process fills it or filled it, returns at once (asking for a clone
    /// waits for it).
    pub fn template<E: std::fmt::Display>(
        &self,
        hash: &str,
        fill: impl FnOnce(&Database) -> Result<(), E>,
    ) -> Result<(), Error> {
        let Some(template) = self.init(hash)? else {
            return Ok(());
        };
        if let Err(e) = fill(&template) {
            self.discard(hash);
            return Err(Error::Fill(e.to_string()));
        }
        self.finalize(hash)
    }

    /// The template to fill, or `None` when the service has it or another
    /// process fills it.
    fn init(&self, hash: &str) -> Result<Option<Database>, Error> {
        let what = format!("initializing the template {hash}");
        let body = serde_json::json!({ "hash": hash }).to_string();
        let (status, answer) = self.call("POST", "/api/v1/templates", Some(&body), &what)?;
        match status {
            423 => Ok(None),
            200 => database(&answer, &what).map(Some),
            _ => Err(refused(what, status, &answer)),
        }
    }

    fn finalize(&self, hash: &str) -> Result<(), Error> {
        let what = format!("finalizing the template {hash}");
        match self.call("PUT", &format!("/api/v1/templates/{hash}"), None, &what)? {
            (204, _) => Ok(()),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }

    /// Gives a template up (a failed fill); an error here leaves it to the
    /// service's drain.
    fn discard(&self, hash: &str) {
        let path = format!("/api/v1/templates/{hash}");
        let _ = self.call("DELETE", &path, None, "discarding the template");
    }

    /// A clone of the template of `hash` for one test; it goes back when
    /// the lease is dropped.
    pub fn lease(&self, hash: &str) -> Result<Lease, Error> {
        let what = format!("a test database of {hash}");
        let path = format!("/api/v1/templates/{hash}/tests");
        let (status, answer) = self.call("GET", &path, None, &what)?;
        if status != 200 {
            return Err(refused(what, status, &answer));
        }
        let database = database(&answer, &what)?;
        if database.id.is_none() {
            return Err(Error::Protocol {
                what,
                why: "no `id`".to_string(),
            });
        }
        Ok(Lease {
            client: self.clone(),
            hash: hash.to_string(),
            database,
            returned: false,
        })
    }

    /// One HTTP/1.1 request, the connection closed after it: (status, body).
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        what: &str,
    ) -> Result<(u16, String), Error> {
        let unreachable = |source| Error::Unreachable {
            address: self.address.clone(),
            source,
        };
        let mut stream = TcpStream::connect(&self.address).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        )
        .map_err(unreachable)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(unreachable)?;
        let answer = String::from_utf8_lossy(&answer);
        let protocol = |why: &str| Error::Protocol {
            what: what.to_string(),
            why: why.to_string(),
        };
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| protocol("not an HTTP answer"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("no status"))?;
        Ok((status, body.to_string()))
    }
}

/// For async tests (`features = ["async"]`): the same calls, run off the
/// async runtime's threads; the fill is async.
#[cfg(feature = "async")]
impl Client {
    /// [`Client::template`] with an async fill.
    pub async fn template_async<E, F, Fut>(&self, hash: &str, fill: F) -> Result<(), Error>
    where
        E: std::fmt::Display,
        F: FnOnce(Database) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let template = self
            .blocking(hash, |client, hash| client.init(hash))
            .await?;
        let Some(template) = template else {
            return Ok(());
        };
        if let Err(e) = fill(template).await {
            self.blocking(hash, |client, hash| {
                client.discard(hash);
                Ok(())
            })
            .await?;
            return Err(Error::Fill(e.to_string()));
        }
        self.blocking(hash, |client, hash| client.finalize(hash))
            .await
    }

    /// [`Client::lease`], waiting without blocking the runtime. (The lease
    /// goes back on drop with a short blocking call.)
    pub async fn lease_async(&self, hash: &str) -> Result<Lease, Error> {
        self.blocking(hash, |client, hash| client.lease(hash)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        hash: &str,
        call: impl FnOnce(&Client, &str) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (client, hash) = (self.clone(), hash.to_string());
        tokio::task::spawn_blocking(move || call(&client, &hash))
            .await
            .map_err(|e| Error::Protocol {
                what: "a call to dbfork serve".to_string(),
                why: e.to_string(),
            })?
    }
}

/// The address of the service this process started, starting it the first
/// time: `dbfork serve --listen tcp:127.0.0.1:0 --exit-with-stdin`.
fn spawned() -> Result<String, Error> {
    let mut spawned = SPAWNED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((address, _)) = spawned.as_ref() {
        return Ok(address.clone());
    }
    let bin = std::env::var(ENV_BIN).unwrap_or_else(|_| "dbfork".to_string());
    let failed = |why: String| Error::Spawn {
        bin: bin.clone(),
        why,
    };
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--listen", "tcp:127.0.0.1:0", "--exit-with-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        // Read only when it fails to start: a test harness must not see the
        // service's output (nor wait for it, holding its pipes).
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| failed("no stdout".into()))?;
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .map_err(|e| failed(e.to_string()))?;
    let address = line.trim().to_string();
    let stderr = child.stderr.take();
    if !address.starts_with("http://") {
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        let mut said = String::new();
        if let Some(mut stderr) = stderr {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
        }
        return Err(failed(format!(
            "it ended ({status}) without listening: {}",
            said.trim()
        )));
    }
    *spawned = Some((address.clone(), child));
    Ok(address)
}

/// Ends the service this process started (it drains: every clone dropped,
/// the templates kept) and waits for it; nothing when it started none. It
/// ends with the process anyway; this is for a harness that wants it done.
pub fn stop_spawned() {
    let taken = SPAWNED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some((_, mut child)) = taken {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

/// A clone leased for one test. Dropped, it is sent to be recreated.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    hash: String,
    database: Database,
    returned: bool,
}

impl Lease {
    /// The clone's URL (with the password).
    pub fn url(&self) -> &str {
        &self.database.url
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// The test changed nothing: the clone is handed out again as it is.
    pub fn give_back_clean(mut self) -> Result<(), Error> {
        self.returned = true;
        self.end("unlock")
    }

    fn end(&self, how: &str) -> Result<(), Error> {
        let id = self.database.id.unwrap_or_default();
        let path = format!("/api/v1/templates/{}/tests/{id}/{how}", self.hash);
        let what = format!("returning test database {id} ({how})");
        match self.client.call("POST", &path, None, &what)? {
            (204, _) => Ok(()),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned {
            // Nothing to do with an error here: the service takes it back
            // at its drain, or after --lease-ttl.
            let _ = self.end("recreate");
        }
    }
}

/// A hash of the files at `paths` (directories walked), for a template's
/// identity: their paths as given and their contents, in a stable order.
pub fn hash_files(paths: &[impl AsRef<Path>]) -> Result<String, Error> {
    let mut files = Vec::new();
    for path in paths {
        walk(path.as_ref(), &mut files)?;
    }
    files.sort();
    let mut hasher = blake3::Hasher::new();
    for file in &files {
        let read = |source| Error::Read {
            path: file.display().to_string(),
            source,
        };
        let contents = std::fs::read(file).map_err(read)?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update(&[0]);
        hasher.update(&(contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    Ok(hasher.finalize().to_hex()[..32].to_string())
}

fn walk(path: &Path, files: &mut Vec<std::path::PathBuf>) -> Result<(), Error> {
    let read = |source| Error::Read {
        path: path.display().to_string(),
        source,
    };
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(read)? {
            walk(&entry.map_err(read)?.path(), files)?;
        }
    } else {
        std::fs::metadata(path).map_err(read)?;
        files.push(path.to_path_buf());
    }
    Ok(())
}

fn refused(what: String, status: u16, answer: &str) -> Error {
    let message = serde_json::from_str::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| answer.trim().to_string());
    Error::Refused {
        what,
        status,
        message,
    }
}

/// The database of an answer: dbfork's `url` beside IntegreSQL's config.
fn database(answer: &str, what: &str) -> Result<Database, Error> {
    let protocol = |why: String| Error::Protocol {
        what: what.to_string(),
        why,
    };
    let value: serde_json::Value =
        serde_json::from_str(answer).map_err(|e| protocol(format!("not JSON ({e})")))?;
    let field = |name: &str| {
        value["database"][name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| protocol(format!("no database.{name}")))
    };
    Ok(Database {
        url: field("url")?,
        name: value["database"]["config"]["database"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| protocol("no database.config.database".to_string()))?,
        id: value["id"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hashes() {
        assert!(Client::new("http://127.0.0.1:5000/").is_ok());
        assert!(matches!(
            Client::new("127.0.0.1:5000"),
            Err(Error::BadUrl(_))
        ));
        assert!(matches!(
            Client::new("http://h:1/api"),
            Err(Error::BadUrl(_))
        ));
        let dir = std::env::temp_dir().join(format!("dbfork-client-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.sql"), "one").unwrap();
        std::fs::write(dir.join("sub/b.sql"), "two").unwrap();
        let first = hash_files(&[&dir]).unwrap();
        assert_eq!(first, hash_files(&[&dir]).unwrap());
        std::fs::write(dir.join("sub/b.sql"), "three").unwrap();
        assert_ne!(first, hash_files(&[&dir]).unwrap());
        assert!(hash_files(&[dir.join("missing")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

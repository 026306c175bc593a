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
//! or, per test, with the attribute:
//!
//! ```ignore
//! #[dbfork_client::test(inputs = "migrations", fill = migrate)]
//! fn an_item_is_added(db: dbfork_client::Lease) {
//!     // db.url(): this test's own database
//! }
//! ```
//!
//! The service is the one `DBFORK_SERVE_URL` names (`http://HOST:PORT` or
//! `unix:PATH`); without it, [`Client::from_env`] starts `dbfork serve` for
//! this process (`DBFORK_BIN`, else the `dbfork` on PATH, else the one built
//! beside the test binary), on the database the project names
//! (`DBFORK_DB`, or `db` of its dbfork.toml / `[tool.dbfork]`), on a port
//! of its own, shared by every test of the process and ended with it
//! however it ends (the service drains when its standard input closes), so
//! `cargo test` needs nothing set up. A lease dropped sends the clone to be
//! recreated (a test's changes never reach the next test);
//! [`Lease::give_back_clean`] returns it to be handed out again as it is,
//! for a test that changed nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `#[dbfork_client::test(inputs = ..., fill = ...)]`: a test that takes a
/// [`Lease`] gets its own database ([`test_database`]; an `async fn`, a
/// `#[tokio::test]`, [`test_database_async`]).
pub use dbfork_client_macros::test;

/// dbfork's own API.
const API: &str = "/api/dbfork/v1";

/// Where the service is, unless given.
pub const ENV_URL: &str = "DBFORK_SERVE_URL";
/// The token the service asks for, if it asks for one (`dbfork serve --token`).
pub const ENV_TOKEN: &str = "DBFORK_TOKEN";
/// The dbfork binary to start a service with (default: `dbfork` on PATH).
pub const ENV_BIN: &str = "DBFORK_BIN";

/// The service this process started, if it did: its address and the
/// process, whose standard input (held open here) ends it when it closes.
static SPAWNED: std::sync::Mutex<Option<(String, std::process::Child)>> =
    std::sync::Mutex::new(None);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach dbfork serve at {address}: {source}. Start it (`dbfork serve --db URL`) or point {ENV_URL} at it (http://HOST:PORT or unix:PATH)")]
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
    #[error("{ENV_URL} is `{0}`: expected http://HOST:PORT or unix:PATH")]
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

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    /// `host:port`.
    Tcp(String),
    Unix(PathBuf),
}

/// A connection to the service: TCP or the Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Tcp(_) => "tcp",
            Stream::Unix(_) => "unix",
        })
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A client of `dbfork serve`.
#[derive(Clone)]
pub struct Client {
    address: Address,
    timeout: Duration,
    token: Option<String>,
}

impl Client {
    /// The service at `url`: `http://HOST:PORT`, or `unix:PATH` for its Unix
    /// socket (where a lease lives as long as the process holding it: one
    /// that crashes gives its clones back at once).
    pub fn new(url: &str) -> Result<Client, Error> {
        let address = if let Some(path) = url.strip_prefix("unix:") {
            Address::Unix(PathBuf::from(path))
        } else {
            let address = url
                .trim_end_matches('/')
                .strip_prefix("http://")
                .filter(|a| !a.is_empty() && !a.contains('/'))
                .ok_or_else(|| Error::BadUrl(url.to_string()))?;
            Address::Tcp(address.to_string())
        };
        Ok(Client {
            address,
            // The service waits up to 60 s for a template or a clone.
            timeout: Duration::from_secs(90),
            token: None,
        })
    }

    /// Sends `token` with every request (a service started with `--token`).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_string());
        self
    }

    /// The service `DBFORK_SERVE_URL` names, else one started for this
    /// process (once; every client of the process shares it); with the
    /// token `DBFORK_TOKEN` holds, if any.
    pub fn from_env() -> Result<Client, Error> {
        let client = match std::env::var(ENV_URL) {
            Ok(url) if !url.is_empty() => Client::new(&url)?,
            _ => Client::new(&spawned()?)?,
        };
        Ok(client.with_env_token())
    }

    /// Sends the token `DBFORK_TOKEN` holds, if it holds one.
    pub fn with_env_token(self) -> Client {
        match std::env::var(ENV_TOKEN) {
            Ok(token) if !token.trim().is_empty() => self.with_token(token.trim()),
            _ => self,
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
        let Some(template) = self.begin(hash)? else {
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
    fn begin(&self, hash: &str) -> Result<Option<Database>, Error> {
        let what = format!("beginning the template {hash}");
        let path = format!("{API}/templates/{hash}/begin");
        match self.call("POST", &path, &what)? {
            (200, _) => Ok(None),
            (201, answer) => database(&answer, &what).map(Some),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }

    fn finalize(&self, hash: &str) -> Result<(), Error> {
        let what = format!("finalizing the template {hash}");
        let path = format!("{API}/templates/{hash}/finalize");
        match self.call("POST", &path, &what)? {
            (200, _) => Ok(()),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }

    /// Gives a template up (a failed fill); an error here leaves it to the
    /// service's drain.
    fn discard(&self, hash: &str) {
        let path = format!("{API}/templates/{hash}");
        let _ = self.call("DELETE", &path, "discarding the template");
    }

    /// Has the service serve clones of `template`, a ready template another
    /// dbfork registered on the service's server (`dbfork run --serve-url`
    /// does this with its own), keeping `ready` of them made ahead (`None`:
    /// the service's pool size); then `lease(template)` leases them. Returns
    /// the template's database, to check that the service's server is the
    /// caller's.
    pub fn adopt(&self, template: &str, ready: Option<usize>) -> Result<Database, Error> {
        let what = format!("serving the template {template}");
        let query = ready.map(|n| format!("?ready={n}")).unwrap_or_default();
        let path = format!("{API}/templates/{template}/adopt{query}");
        match self.call("POST", &path, &what)? {
            (200, answer) => database(&answer, &what),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }

    /// The state of every clone of the service's pools, by registry name:
    /// `making`, `ready`, `leased` or `dropping`.
    pub fn states(&self) -> Result<std::collections::BTreeMap<String, String>, Error> {
        let what = "the service's databases";
        let (status, answer) = self.call("GET", &format!("{API}/databases"), what)?;
        if status != 200 {
            return Err(refused(what.to_string(), status, &answer));
        }
        let value: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| Error::Protocol {
                what: what.to_string(),
                why: e.to_string(),
            })?;
        Ok(value["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d["name"].as_str()?.to_string(),
                    d["state"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// A clone of the template of `hash` for one test; it goes back when
    /// the lease is dropped. The lease holds its connection to the service
    /// open: over the Unix socket, the service takes the clone back when it
    /// closes (the test process ended without returning it).
    pub fn lease(&self, hash: &str) -> Result<Lease, Error> {
        let what = format!("a test database of {hash}");
        let path = format!("{API}/templates/{hash}/leases");
        let mut stream = self.connect()?;
        let (status, answer) = self.exchange(&mut stream, "POST", &path, true, &what)?;
        if status != 201 {
            return Err(refused(what, status, &answer));
        }
        let database = database(&answer, &what)?;
        let value = serde_json::from_str::<serde_json::Value>(&answer).unwrap_or_default();
        let number = value["lease"].as_u64().ok_or_else(|| Error::Protocol {
            what,
            why: "no `lease`".to_string(),
        })?;
        // Only a lease that ends by its time to live needs renewing.
        let ttl = (value["ends"] == "ttl")
            .then(|| value["ttl_seconds"].as_f64())
            .flatten()
            .map(Duration::from_secs_f64);
        Ok(Lease {
            client: self.clone(),
            number,
            database,
            ttl,
            stream: Some(stream),
            returned: false,
        })
    }

    fn connect(&self) -> Result<Stream, Error> {
        let unreachable = |source| Error::Unreachable {
            address: self.to_string(),
            source,
        };
        let stream = match &self.address {
            Address::Tcp(address) => TcpStream::connect(address).map(Stream::Tcp),
            Address::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
        }
        .map_err(unreachable)?;
        let timeout = Some(self.timeout);
        match &stream {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
        }
        .map_err(unreachable)?;
        Ok(stream)
    }

    /// One request on a connection of its own, closed after it: (status, body).
    fn call(&self, method: &str, path: &str, what: &str) -> Result<(u16, String), Error> {
        let mut stream = self.connect()?;
        self.exchange(&mut stream, method, path, false, what)
    }

    /// One HTTP/1.1 request on `stream`, kept open after it when `keep`:
    /// (status, body).
    fn exchange(
        &self,
        stream: &mut Stream,
        method: &str,
        path: &str,
        keep: bool,
        what: &str,
    ) -> Result<(u16, String), Error> {
        let unreachable = |source| Error::Unreachable {
            address: self.to_string(),
            source,
        };
        let protocol = |why: &str| Error::Protocol {
            what: what.to_string(),
            why: why.to_string(),
        };
        let connection = if keep { "keep-alive" } else { "close" };
        let authorization = match &self.token {
            Some(token) => format!("Authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: dbfork\r\nConnection: {connection}\r\n{authorization}Content-Length: 0\r\n\r\n"
        )
        .map_err(unreachable)?;
        // The head, byte by byte (the body's length is in it), then the body.
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).map_err(unreachable)? {
                0 => return Err(protocol("the connection closed before the answer")),
                _ => head.push(byte[0]),
            }
            if head.len() > 64 * 1024 {
                return Err(protocol("an answer's head over 64 KiB"));
            }
        }
        let head = String::from_utf8_lossy(&head);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol("no status"))?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        stream.read_exact(&mut body).map_err(unreachable)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The address, never the token.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({self})")
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Address::Tcp(address) => write!(f, "http://{address}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
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
            .blocking(hash, |client, hash| client.begin(hash))
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
    let bin = std::env::var(ENV_BIN).unwrap_or_else(|_| default_bin());
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

/// `dbfork` on PATH; else the one built beside this test binary (a
/// workspace that builds dbfork: `target/<profile>/dbfork` for
/// `target/<profile>/deps/<test>`); else `dbfork` (the error says to install it).
fn default_bin() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("dbfork").is_file()));
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let bin = exe.parent()?.parent()?.join("dbfork");
        bin.is_file().then_some(bin)
    });
    match (on_path, beside) {
        (false, Some(bin)) => bin.display().to_string(),
        _ => "dbfork".to_string(),
    }
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
    number: u64,
    database: Database,
    /// When it ends unless renewed (a service with `--lease-ttl`, over TCP).
    ttl: Option<Duration>,
    /// The connection it was leased on, kept open while it is held.
    stream: Option<Stream>,
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

    /// How long the lease lasts unless renewed ([`Lease::renew`]): `Some`
    /// from a service with `--lease-ttl` over TCP; over the Unix socket the
    /// open connection keeps it.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The test still uses the clone: its time to live starts again.
    pub fn renew(&self) -> Result<(), Error> {
        let what = format!("renewing lease {}", self.number);
        let path = format!("{API}/leases/{}/renew", self.number);
        match self.client.call("POST", &path, &what)? {
            (204, _) => Ok(()),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }

    /// The test changed nothing: the clone is handed out again as it is.
    pub fn give_back_clean(mut self) -> Result<(), Error> {
        self.returned = true;
        self.end(true)
    }

    /// Returns the clone on the lease's connection (on a new one when that
    /// one broke), and closes it.
    fn end(&mut self, clean: bool) -> Result<(), Error> {
        let number = self.number;
        let path = format!("{API}/leases/{number}?clean={clean}");
        let what = format!("returning lease {number}");
        let answer = match self.stream.take() {
            Some(mut stream) => self
                .client
                .exchange(&mut stream, "DELETE", &path, false, &what)
                .or_else(|_| self.client.call("DELETE", &path, &what)),
            None => self.client.call("DELETE", &path, &what),
        };
        match answer? {
            (204, _) => Ok(()),
            (status, answer) => Err(refused(what, status, &answer)),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned {
            // Nothing to do with an error here: the service takes it back
            // when the connection closes (Unix socket), at its drain, or
            // after --lease-ttl.
            let _ = self.end(false);
        }
    }
}

/// The files a template is made from: a path, or several.
pub trait Inputs {
    fn paths(&self) -> Vec<&str>;
}

impl Inputs for &str {
    fn paths(&self) -> Vec<&str> {
        vec![self]
    }
}

impl<const N: usize> Inputs for [&str; N] {
    fn paths(&self) -> Vec<&str> {
        self.to_vec()
    }
}

impl Inputs for &[&str] {
    fn paths(&self) -> Vec<&str> {
        self.to_vec()
    }
}

/// The hashes whose template this process made sure of already.
/// The templates this process made sure of: the inputs they were made
/// from and their hash (the files are hashed once per process, not per test).
static TEMPLATES: std::sync::Mutex<Vec<(Vec<String>, String)>> = std::sync::Mutex::new(Vec::new());

/// For a test: a clone of the template made from the files at `inputs`
/// (paths from the package's directory, where `cargo test` runs tests),
/// `fill` migrating it the first time. The service is [`Client::from_env`]'s.
/// Panics, with what to do, when there is no clone to give: a test cannot go
/// on without its database. What `#[dbfork_client::test]` calls.
pub fn test_database<E: std::fmt::Display>(
    inputs: impl Inputs,
    fill: impl FnOnce(&Database) -> Result<(), E>,
) -> Lease {
    let (client, hash, made) = test_start(&inputs);
    if !made {
        checked(client.template(&hash, fill), &inputs, &hash);
    }
    client
        .lease(&hash)
        .unwrap_or_else(|e| panic!("dbfork-client: no test database: {e}"))
}

/// [`test_database`] for async tests (`features = ["async"]`), the fill async.
#[cfg(feature = "async")]
pub async fn test_database_async<E, F, Fut>(inputs: impl Inputs, fill: F) -> Lease
where
    E: std::fmt::Display,
    F: FnOnce(Database) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let (client, hash, made) = test_start(&inputs);
    if !made {
        checked(client.template_async(&hash, fill).await, &inputs, &hash);
    }
    client
        .lease_async(&hash)
        .await
        .unwrap_or_else(|e| panic!("dbfork-client: no test database: {e}"))
}

/// The process's client, the hash of `inputs`, and whether this process
/// made sure of its template already.
fn test_start(inputs: &impl Inputs) -> (Client, String, bool) {
    let client = Client::from_env().unwrap_or_else(|e| panic!("dbfork-client: {e}"));
    let paths = inputs.paths();
    let known = lock_templates()
        .iter()
        .find(|(made_from, _)| *made_from == paths)
        .map(|(_, hash)| hash.clone());
    match known {
        Some(hash) => (client, hash, true),
        None => {
            let hash = hash_files(&paths).unwrap_or_else(|e| panic!("dbfork-client: {e}"));
            (client, hash, false)
        }
    }
}

/// The template of `hash`, made from `inputs`, is there (else the test
/// cannot go on).
fn checked(made: Result<(), Error>, inputs: &impl Inputs, hash: &str) {
    made.unwrap_or_else(|e| panic!("dbfork-client: the template: {e}"));
    let paths = inputs.paths().into_iter().map(str::to_string).collect();
    lock_templates().push((paths, hash.to_string()));
}

fn lock_templates() -> std::sync::MutexGuard<'static, Vec<(Vec<String>, String)>> {
    TEMPLATES.lock().unwrap_or_else(|p| p.into_inner())
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

/// The database of an answer of dbfork's API: `{"database": {"name", "url"}}`.
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
        name: field("name")?,
        id: value["id"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::{hash_files, Client, Error};

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
        assert_eq!(
            Client::new("unix:/run/dbfork/serve.sock")
                .unwrap()
                .to_string(),
            "unix:/run/dbfork/serve.sock"
        );
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

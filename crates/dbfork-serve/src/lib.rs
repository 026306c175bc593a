//! `dbfork serve`: a long-running service that keeps, per template, a pool
//! of clones made ahead, and hands one to each test that asks, over an HTTP
//! API that IntegreSQL's clients speak unchanged ([`http`]). Templates are
//! named by the client's hash and filled by the client (init, migrate,
//! finalize), as with IntegreSQL; everything the service makes is named
//! with dbfork's prefix, recorded in the registry and owned by the service
//! process, so a service killed with SIGKILL leaves nothing the next dbfork
//! command does not collect, and a restarted service finds its templates
//! ready. SIGTERM, SIGINT and SIGHUP drain it: no more leases, every clone
//! dropped, the templates kept.
//!
//! - [`service`]: the state (templates, pools, leases) and the filler.
//! - [`http`]: the routes.
//! - [`metrics`]: what `/metrics` says.

pub mod api;
pub mod http;
pub mod metrics;
pub mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dbfork_engine::ops::Cancel;
use dbfork_engine::AnyBackend;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

pub use service::{ServeConfig, Service};

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    /// `tcp:HOST:PORT` or `unix:PATH` (checked by the settings already).
    pub fn parse(text: &str) -> Option<Listen> {
        if let Some(path) = text.strip_prefix("unix:") {
            return Some(Listen::Unix(PathBuf::from(path)));
        }
        text.strip_prefix("tcp:")?.parse().ok().map(Listen::Tcp)
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(address) => write!(f, "http://{address}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}. Choose another address with --listen (another port, or a unix: socket)")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// A listener bound (before the service says it is up).
pub enum Bound {
    Tcp(TcpListener),
    /// The socket and the private directory made for it.
    Unix(UnixListener, PathBuf),
}

impl Bound {
    /// Where clients reach it: `http://IP:PORT` (the port the system chose
    /// for port 0), or `unix:PATH`.
    pub fn address(&self) -> String {
        match self {
            Bound::Tcp(listener) => match listener.local_addr() {
                Ok(address) => format!("http://{address}"),
                Err(_) => "http://?".to_string(),
            },
            Bound::Unix(_, path) => format!("unix:{}", path.display()),
        }
    }
}

/// Binds every address: TCP as given; a Unix socket in its directory
/// (made 0700 when it does not exist), mode 0600.
pub async fn bind(addresses: &[Listen]) -> Result<Vec<Bound>, ServeError> {
    let mut bound = Vec::new();
    for address in addresses {
        let failed = |source| ServeError::Listen {
            address: address.to_string(),
            source,
        };
        match address {
            Listen::Tcp(socket) => {
                bound.push(Bound::Tcp(TcpListener::bind(socket).await.map_err(failed)?))
            }
            Listen::Unix(path) => {
                let listener = bind_unix(path).map_err(failed)?;
                bound.push(Bound::Unix(listener, path.clone()));
            }
        }
    }
    Ok(bound)
}

fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)?;
        }
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A socket left at `path` by a service killed with SIGKILL is removed: a
/// socket of this user that nobody listens on. Anything else there (a file,
/// a link, a live service's socket) stays, and the bind fails on it.
fn remove_stale_socket(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let ours = meta.file_type().is_socket() && meta.uid() == dbfork_engine::sys::euid();
    let dead = matches!(
        std::os::unix::net::UnixStream::connect(path),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    );
    if ours && dead {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Serves on `bound` until `cancel`, then drains: every clone dropped.
pub async fn serve(backend: AnyBackend, config: ServeConfig, bound: Vec<Bound>, cancel: Cancel) {
    let service = Service::new(backend, config, cancel.clone());
    let filler = tokio::spawn(service.clone().fill());
    let mut accepting = Vec::new();
    let mut sockets = Vec::new();
    for listener in bound {
        let service = service.clone();
        accepting.push(match listener {
            Bound::Tcp(listener) => tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    connection(service.clone(), stream, false);
                }
            }),
            Bound::Unix(listener, path) => {
                sockets.push(path);
                tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        connection(service.clone(), stream, true);
                    }
                })
            }
        });
    }
    cancel.cancelled().await;
    for task in &accepting {
        task.abort();
    }
    for path in &sockets {
        let _ = std::fs::remove_file(path);
    }
    service.drain().await;
    filler.abort();
}

/// Serves one connection's requests; when it closes, the leases bound to
/// it are taken back.
fn connection<S>(service: Arc<Service>, stream: S, unix: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let peer = http::Peer {
        connection: CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        unix,
    };
    tokio::spawn(async move {
        let serving = service.clone();
        let answer = service_fn(move |request| http::handle(serving.clone(), peer, request));
        if let Err(e) = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), answer)
            .await
        {
            tracing::debug!("a connection ended: {e}");
        }
        service.disconnected(peer.connection);
    });
}

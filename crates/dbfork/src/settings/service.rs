//! The settings of `dbfork serve` and of the runs that lease from it that
//! need more than their kind's parser: where it listens, its token (and
//! when one is needed), a service's URL.

use std::path::Path;

use super::{invalid, usage, Origin, Settings};

impl Settings {
    /// The token of `dbfork serve` (`token`, else the file `token_file`
    /// names: the user's, readable by no one else), and whether the
    /// addresses it listens on are allowed: one that is not loopback needs it.
    pub fn service_token(&self, listen: &[String]) -> anyhow::Result<Option<String>> {
        let token = match (self.secret("token")?, self.path("token_file")?) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_token(&path)?),
            (None, None) => None,
        };
        let open = listen.iter().find(|address| {
            address
                .strip_prefix("tcp:")
                .and_then(|tcp| tcp.parse::<std::net::SocketAddr>().ok())
                .is_some_and(|socket| !socket.ip().is_loopback())
        });
        if let (Some(open), None) = (open, &token) {
            return Err(usage(format!("--listen {open} is not a loopback address, and the service answers with database URLs that hold the server's password: set a token every request must carry (DBFORK_TOKEN, or --token-file PATH, a file readable by you alone), or listen on 127.0.0.1, ::1 or a unix: socket.")));
        }
        Ok(token)
    }
}

/// Where a service listens: `tcp:HOST:PORT` on a loopback address, or
/// `unix:PATH` (an absolute path, or one taken from the working directory).
pub(super) fn addresses(given: Vec<String>, origin: &Origin<'_>) -> anyhow::Result<Vec<String>> {
    if given.is_empty() {
        return Err(invalid(
            origin,
            "it names no address; give tcp:127.0.0.1:PORT or unix:PATH",
        ));
    }
    given
        .into_iter()
        .map(|address| {
            if let Some(path) = address.strip_prefix("unix:") {
                if path.is_empty() {
                    return Err(invalid(origin, "`unix:` names no path"));
                }
                return Ok(address);
            }
            let Some(tcp) = address.strip_prefix("tcp:") else {
                return Err(invalid(
                    origin,
                    format!("`{address}` is neither tcp:HOST:PORT nor unix:PATH"),
                ));
            };
            // Not loopback: allowed with a token (`Settings::service_token`).
            tcp.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid(
                    origin,
                    format!(
                        "`{tcp}` is not an IP address and port, e.g. 127.0.0.1:5000 or [::1]:5000"
                    ),
                )
            })?;
            Ok(address)
        })
        .collect()
}

/// The token in the file at `path`: it must be a regular file of this
/// user that no one else can read.
fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| usage(format!("the token file {}: {why}.", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(|e| refused(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(refused(
            "is not a regular file (a link is not followed)".to_string(),
        ));
    }
    if meta.uid() != dbfork_engine::sys::euid() || meta.mode() & 0o077 != 0 {
        return Err(refused(format!(
            "others can read or change it (mode {:o}, owner {}); it must be yours and private: chmod 600",
            meta.mode() & 0o777,
            meta.uid()
        )));
    }
    let token = std::fs::read_to_string(path).map_err(|e| refused(e.to_string()))?;
    let token = token.trim().to_string();
    if token.chars().count() < 16 {
        return Err(refused("holds fewer than 16 characters, which is guessable; write a long random one (e.g. `openssl rand -hex 32`)".to_string()));
    }
    Ok(token)
}

/// A running service's URL: `http://HOST:PORT` or `unix:PATH` (empty: none).
pub(super) fn url(given: &str, origin: &Origin<'_>) -> anyhow::Result<String> {
    let url = given.trim().to_string();
    let address = |a: &str| {
        let a = a.trim_end_matches('/');
        !a.is_empty() && !a.contains('/')
    };
    let ok = url.is_empty()
        || url.strip_prefix("unix:").is_some_and(|p| !p.is_empty())
        || url.strip_prefix("http://").is_some_and(address);
    if !ok {
        return Err(invalid(
            origin,
            format!(
                "`{url}` is neither http://HOST:PORT nor unix:PATH (where `dbfork serve` listens)"
            ),
        ));
    }
    Ok(url)
}

/// A secret: empty (none), or 16 characters at least.
pub(super) fn secret(given: &str, origin: &Origin<'_>) -> anyhow::Result<String> {
    let secret = given.trim().to_string();
    if !secret.is_empty() && secret.chars().count() < 16 {
        return Err(invalid(
            origin,
            "it is shorter than 16 characters, which is guessable; use a long random one (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(secret)
}

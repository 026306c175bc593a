//! The HTTP API: dbfork's own under `/api/dbfork/v1` ([`crate::api`]), and
//! IntegreSQL's routes with IntegreSQL's semantics as its code implements
//! them (v1.1.0), so its published clients work unchanged:
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/templates` `{"hash": ...}` (JSON, or a form) | 200 + the template's connection config; 423 when the hash is being filled or is ready |
//! | `PUT /api/v1/templates/{hash}` | 204 (finalized; again: 204); 404 |
//! | `DELETE /api/v1/templates/{hash}` | 204; 404 |
//! | `GET /api/v1/templates/{hash}/tests` | 200 + a clone's config and `id`, waiting for the template and a ready clone; 404, 410 after a discard, 503 after the wait |
//! | `POST /api/v1/templates/{hash}/tests/{id}/unlock` (and `DELETE .../tests/{id}`) | 204: the clone is clean, handed out again as it is |
//! | `POST /api/v1/templates/{hash}/tests/{id}/recreate` | 204: dropped and made afresh |
//! | `POST /api/v1/templates/{hash}/tests/{id}/renew` (dbfork's) | 204: the lease starts again (`--lease-ttl`); 409 when it is not leased |
//! | `DELETE /api/v1/admin/templates` | 204: every clone dropped, every hash forgotten |
//! | `GET /healthz` | 200 + the pools' counts |
//! | `GET /metrics` | 200 + the service's metrics, OpenMetrics text ([`crate::metrics`]) |
//! | `GET /openapi.json` | 200 + this API's OpenAPI 3.0 document ([`OPENAPI`]) |
//!
//! Errors are `{"message": "..."}` with a message that says what to do; a
//! trailing slash is ignored, as IntegreSQL ignores it. The connection
//! config is the server's host, port, user and password with the clone's
//! database: on MySQL/MariaDB the database name, on SQLite the file's path
//! (host empty, port 0). Beside IntegreSQL's fields, `database.url` is the
//! database's URL as the backend's drivers take it (password included) and
//! `database.backend` is `postgres`, `mysql` or `sqlite`; IntegreSQL's
//! clients read only the fields they know.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use dbfork_engine::Backend;

use crate::service::{Handed, Init, Refusal, Service};

/// The largest request body read (a hash is tens of bytes).
const MAX_BODY: usize = 64 * 1024;

/// Who asks: the connection (numbered by the service) and whether it came
/// over the Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub connection: u64,
    pub unix: bool,
}

/// Answers one request.
pub async fn handle(
    service: Arc<Service>,
    peer: Peer,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if !service.authorized(authorization) {
        let mut response = error(Refusal {
            status: 401,
            message: "this service asks for a token: send `Authorization: Bearer <token>` (dbfork-client sends DBFORK_TOKEN)".to_string(),
        });
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(response);
    }
    let form = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return Ok(error(Refusal {
                status: 413,
                message: format!(
                    "the request body is over {MAX_BODY} bytes; send {{\"hash\": \"...\"}}"
                ),
            }))
        }
    };
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    if let ["api", "dbfork", "v1", rest @ ..] = parts.as_slice() {
        if let Some(answer) = crate::api::route(&service, peer, &method, rest, &query).await {
            return Ok(answer.unwrap_or_else(error));
        }
    }
    let answer = match (&method, parts.as_slice()) {
        (&Method::POST, ["api", "v1", "templates"]) => match hash_of(&body, form) {
            Ok(hash) => service.init(&hash).await.map(|init| match init {
                Init::Fill(handed) => config(&service, &hash, &handed, false),
                Init::Known => error(Refusal {
                    status: 423,
                    message: format!("template is already initialized: `{hash}` is being filled or is ready; get test databases with GET /api/v1/templates/{hash}/tests"),
                }),
            }),
            Err(refusal) => Err(refusal),
        },
        (&Method::PUT, ["api", "v1", "templates", hash]) => {
            service.finalize(hash).await.map(|()| no_content())
        }
        (&Method::DELETE, ["api", "v1", "templates", hash]) => {
            service.discard(hash).await.map(|()| no_content())
        }
        (&Method::GET, ["api", "v1", "templates", hash, "tests"]) => service
            .lease(hash)
            .await
            .map(|handed| config(&service, hash, &handed, true)),
        (&Method::POST, ["api", "v1", "templates", hash, "tests", id, "unlock"])
        | (&Method::DELETE, ["api", "v1", "templates", hash, "tests", id]) => {
            id_of(id).and_then(|id| service.unlock(hash, id).map(|()| no_content()))
        }
        (&Method::POST, ["api", "v1", "templates", hash, "tests", id, "renew"]) => {
            id_of(id).and_then(|id| service.renew(hash, id).map(|()| no_content()))
        }
        (&Method::POST, ["api", "v1", "templates", hash, "tests", id, "recreate"]) => {
            id_of(id).and_then(|id| service.recreate(hash, id).map(|()| no_content()))
        }
        (&Method::DELETE, ["api", "v1", "admin", "templates"]) => {
            service.reset().await.map(|()| no_content())
        }
        (&Method::GET, ["healthz"]) => Ok(health(&service)),
        (&Method::GET, ["metrics"]) => Ok(metrics(&service)),
        (&Method::GET, ["openapi.json"]) => Ok(openapi()),
        (_, ["api", "v1", "templates", ..] | ["api", "v1", "admin", ..] | ["healthz" | "metrics" | "openapi.json"]) => {
            Err(Refusal {
                status: 405,
                message: format!("{method} is not a method of {path}; see the routes in dbfork serve --help"),
            })
        }
        _ => Err(Refusal {
            status: 404,
            message: format!("no route {path}: the APIs are dbfork's, under /api/dbfork/v1, and IntegreSQL's, under /api/v1/templates (see /openapi.json)"),
        }),
    };
    Ok(answer.unwrap_or_else(error))
}

/// The `hash` of an init request: `{"hash": "..."}`, or a form `hash=...`
/// (what older IntegreSQL clients send).
fn hash_of(body: &[u8], form: bool) -> Result<String, Refusal> {
    let bad = |why: String| Refusal {
        status: 400,
        message: format!("{why}; send {{\"hash\": \"<the hash of your migrations>\"}}"),
    };
    // `curl -d '{"hash": ...}'` says it sends a form: a body that looks like
    // JSON is read as JSON whatever its content type.
    let form = form && !body.trim_ascii_start().starts_with(b"{");
    let hash = if form {
        // A form value: `+` is a space, then percent escapes.
        let value = String::from_utf8_lossy(body)
            .split('&')
            .find_map(|pair| pair.strip_prefix("hash="))
            .map(|v| v.replace('+', " "))
            .unwrap_or_default();
        dbfork_engine::url::percent_decode(&value).map_err(bad)?
    } else {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
        match value.get("hash") {
            Some(serde_json::Value::String(hash)) => hash.clone(),
            Some(other) => return Err(bad(format!("`hash` is {other}, not a string"))),
            None => String::new(),
        }
    };
    check_hash(hash.trim())
}

/// A template's hash: 1 to 128 letters, digits, `-`, `_` or `.`.
pub(crate) fn check_hash(hash: &str) -> Result<String, Refusal> {
    let bad = |why: String| Refusal {
        status: 400,
        message: format!("{why}; send {{\"hash\": \"<the hash of your migrations>\"}}"),
    };
    if hash.is_empty() {
        return Err(bad("hash is required".to_string()));
    }
    if hash.len() > 128
        || !hash
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(bad(format!(
            "the hash `{}` is not 1 to 128 letters, digits, `-`, `_` or `.`",
            hash.chars().take(140).collect::<String>()
        )));
    }
    Ok(hash.to_string())
}

fn id_of(text: &str) -> Result<usize, Refusal> {
    text.parse().map_err(|_| Refusal {
        status: 400,
        message: format!("invalid test database ID `{text}`: use the `id` GET /api/v1/templates/<hash>/tests returned"),
    })
}

/// IntegreSQL's database JSON: `{"database": {"templateHash", "config":
/// {host, port, username, password, database}}}`, with `"id"` for a clone.
fn config(service: &Service, hash: &str, handed: &Handed, with_id: bool) -> Response<Full<Bytes>> {
    let url = service.backend().url();
    let (host, port) = match url.kind {
        dbfork_engine::Kind::Sqlite => (String::new(), 0),
        kind => (
            url.host
                .clone()
                .or_else(|| url.socket.as_ref().map(|s| s.display().to_string()))
                .unwrap_or_default(),
            url.port.unwrap_or(match kind {
                dbfork_engine::Kind::Postgres => 5432,
                _ => 3306,
            }),
        ),
    };
    let mut value = json!({
        "database": {
            "templateHash": hash,
            "url": handed.url,
            "backend": url.kind.id(),
            "config": {
                "host": host,
                "port": port,
                "username": url.user.clone().unwrap_or_default(),
                "password": url.password.clone().unwrap_or_default(),
                "database": handed.database,
            }
        }
    });
    if with_id {
        value["id"] = json!(handed.id.unwrap_or_default());
    }
    json_response(StatusCode::OK, &value)
}

fn health(service: &Service) -> Response<Full<Bytes>> {
    let templates: Vec<serde_json::Value> = service
        .overview()
        .into_iter()
        .map(|(hash, phase, (making, ready, leased, dropping))| {
            json!({"hash": hash, "phase": phase, "making": making, "ready": ready, "leased": leased, "dropping": dropping})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"status": "ok", "templates": templates}),
    )
}

/// The API's description, OpenAPI 3.0 (the file beside this crate's sources).
pub const OPENAPI: &str = include_str!("../openapi.json");

fn openapi() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn metrics(service: &Service) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(service.metrics_text())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

pub(crate) fn json_response(
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<Full<Bytes>> {
    let mut body = value.to_string();
    body.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

pub(crate) fn no_content() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn error(refusal: Refusal) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({"message": refusal.message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_comes_as_json_or_as_a_form() {
        assert_eq!(hash_of(br#"{"hash": "abc123"}"#, false).unwrap(), "abc123");
        assert_eq!(hash_of(b"hash=abc%2D1+", true).unwrap(), "abc-1");
        assert_eq!(hash_of(br#" {"hash": "j"}"#, true).unwrap(), "j", "curl -d");
        for (body, form) in [
            (&br#"{"hash": ""}"#[..], false),
            (&b"{}"[..], false),
            (&b"not json"[..], false),
            (&br#"{"hash": 3}"#[..], false),
            (&b"other=1"[..], true),
            (&br#"{"hash": "a/b"}"#[..], false),
        ] {
            let refusal = hash_of(body, form).unwrap_err();
            assert_eq!(refusal.status, 400, "{body:?}");
            assert!(refusal.message.contains("hash"), "{}", refusal.message);
        }
    }
}

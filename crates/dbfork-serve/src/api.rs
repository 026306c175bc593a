//! dbfork's own JSON API, beside IntegreSQL's (`/api/dbfork/v1`): templates
//! found or made by hash and built in three steps, leases by number that
//! end clean or dirty, are renewed, listed, and live as long as the
//! connection they were asked on when it is the Unix socket.
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/dbfork/v1/templates` | 200 + every template: hash, phase, clones by state |
//! | `GET /api/dbfork/v1/templates/{hash}` | 200 + one; 404 |
//! | `POST /api/dbfork/v1/templates/{hash}/begin` | 201 + the empty database to fill (the caller builds it); 200 + the template when it is known (built, or being built by another caller: leases wait for it) |
//! | `POST /api/dbfork/v1/templates/{name}/adopt` (`?ready=N`) | 200 + the template: the service serves clones of a template `dbfork run` made on its server, `N` kept ready (default: the pool size); 404 when the server has no such template |
//! | `POST /api/dbfork/v1/templates/{hash}/finalize` | 200 + the template, ready |
//! | `DELETE /api/dbfork/v1/templates/{hash}` | 204: discarded (its clones dropped) |
//! | `POST /api/dbfork/v1/templates/{hash}/leases` | 201 + a lease: a clone for one test (waits for the template and a ready clone; 503 after the wait) |
//! | `GET /api/dbfork/v1/leases` | 200 + every lease out |
//! | `GET /api/dbfork/v1/databases` | 200 + every clone of every pool: its registry name, template hash, state (`making`, `ready`, `leased`, `dropping`) and lease (what `dbfork db list --serve-url` shows) |
//! | `DELETE /api/dbfork/v1/leases/{lease}` (`?clean=true`) | 204: the clone is recreated (clean: handed out again as it is); 409 when the lease is not out |
//! | `POST /api/dbfork/v1/leases/{lease}/renew` | 204: with `--lease-ttl`, the lease starts again; 409 |
//!
//! A database is `{"name", "url", "backend"}`: its name on the server (on
//! SQLite the file's path), a URL the backend's drivers take (password
//! included) and `postgres`, `mysql` or `sqlite`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Value};

use dbfork_engine::Backend;

use crate::http::{check_hash, json_response, no_content, Peer};
use crate::service::{Handed, Init, Refusal, Service};

/// Answers a request under `/api/dbfork/v1` (`parts` are the path's parts
/// after it), or `None` when no route of this API has that path.
pub async fn route(
    service: &Service,
    peer: Peer,
    method: &Method,
    parts: &[&str],
    query: &str,
) -> Option<Result<Response<Full<Bytes>>, Refusal>> {
    Some(match (method, parts) {
        (&Method::GET, ["templates"]) => {
            let templates: Vec<Value> = service
                .overview()
                .into_iter()
                .map(|(hash, phase, counts)| template(&hash, phase, counts))
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"templates": templates}),
            ))
        }
        (&Method::GET, ["templates", hash]) => {
            known(service, hash).map(|view| json_response(StatusCode::OK, &view))
        }
        (&Method::POST, ["templates", hash, "begin"]) => match check_hash(hash) {
            Ok(hash) => begin(service, &hash).await,
            Err(refusal) => Err(refusal),
        },
        (&Method::POST, ["templates", name, "adopt"]) => match ready_of(query) {
            Ok(ready) => match service.adopt(name, ready).await {
                Ok(()) => known(service, name).map(|mut view| {
                    let handed = service.handed(name, None, None);
                    view["database"] = database(service, &handed);
                    json_response(StatusCode::OK, &view)
                }),
                Err(refusal) => Err(refusal),
            },
            Err(refusal) => Err(refusal),
        },
        (&Method::POST, ["templates", hash, "finalize"]) => match service.finalize(hash).await {
            Ok(()) => known(service, hash).map(|view| json_response(StatusCode::OK, &view)),
            Err(refusal) => Err(refusal),
        },
        (&Method::DELETE, ["templates", hash]) => {
            service.discard(hash).await.map(|()| no_content())
        }
        (&Method::POST, ["templates", hash, "leases"]) => match service.lease(hash).await {
            Ok(handed) => Ok(lease(service, peer, hash, &handed)),
            Err(refusal) => Err(refusal),
        },
        (&Method::GET, ["leases"]) => {
            let leases: Vec<Value> = service
                .leases()
                .into_iter()
                .map(|l| {
                    json!({"lease": l.lease, "hash": l.hash, "id": l.id, "database": l.database, "seconds": l.seconds})
                })
                .collect();
            Ok(json_response(StatusCode::OK, &json!({"leases": leases})))
        }
        (&Method::GET, ["databases"]) => {
            let databases: Vec<Value> = service
                .databases()
                .into_iter()
                .map(|(name, hash, state, lease)| {
                    json!({"name": name, "hash": hash, "state": state, "lease": lease})
                })
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({"databases": databases}),
            ))
        }
        (&Method::DELETE, ["leases", number]) => lease_number(number).and_then(|number| {
            let clean = query.split('&').any(|pair| pair == "clean=true");
            service.end_lease(number, clean).map(|()| no_content())
        }),
        (&Method::POST, ["leases", number, "renew"]) => {
            lease_number(number).and_then(|n| service.renew_lease(n).map(|()| no_content()))
        }
        (_, ["templates" | "leases" | "databases", ..]) => Err(Refusal {
            status: 405,
            message: format!(
                "{method} is not a method of /api/dbfork/v1/{}; see /openapi.json",
                parts.join("/")
            ),
        }),
        _ => return None,
    })
}

async fn begin(service: &Service, hash: &str) -> Result<Response<Full<Bytes>>, Refusal> {
    match service.init(hash).await? {
        Init::Fill(handed) => Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "hash": hash,
                "phase": "building",
                "database": database(service, &handed),
            }),
        )),
        Init::Known => known(service, hash).map(|view| json_response(StatusCode::OK, &view)),
    }
}

/// The template of `hash` as the API shows it; 404 when there is none.
fn known(service: &Service, hash: &str) -> Result<Value, Refusal> {
    service
        .overview()
        .into_iter()
        .find(|(h, _, _)| h == hash)
        .map(|(hash, phase, counts)| template(&hash, phase, counts))
        .ok_or_else(|| Refusal {
            status: 404,
            message: format!("no template with the hash `{hash}`: begin it (POST /api/dbfork/v1/templates/{hash}/begin)"),
        })
}

fn template(hash: &str, phase: &str, counts: crate::service::Counts) -> Value {
    let (making, ready, leased, dropping) = counts;
    json!({
        "hash": hash,
        "phase": phase,
        "clones": {"making": making, "ready": ready, "leased": leased, "dropping": dropping},
    })
}

fn database(service: &Service, handed: &Handed) -> Value {
    json!({
        "name": handed.database,
        "url": handed.url,
        "backend": service.backend().kind().id(),
    })
}

/// A lease's answer. Over the Unix socket the lease is bound to the
/// connection it was asked on.
fn lease(service: &Service, peer: Peer, hash: &str, handed: &Handed) -> Response<Full<Bytes>> {
    let number = handed.lease.unwrap_or_default();
    let ends = if peer.unix {
        service.bind(peer.connection, hash, number);
        "connection"
    } else if service.lease_ttl().is_some() {
        "ttl"
    } else {
        "return"
    };
    json_response(
        StatusCode::CREATED,
        &json!({
            "lease": number,
            "hash": hash,
            "id": handed.id,
            "database": database(service, handed),
            "ends": ends,
            "ttl_seconds": service.lease_ttl().map(|ttl| ttl.as_secs_f64()),
        }),
    )
}

/// `ready=N` of a query, if given.
fn ready_of(query: &str) -> Result<Option<usize>, Refusal> {
    match query
        .split('&')
        .find_map(|pair| pair.strip_prefix("ready="))
    {
        None => Ok(None),
        Some(n) => n.parse().map(Some).map_err(|_| Refusal {
            status: 400,
            message: format!("ready=`{n}` is not a number of clones: give ready=N"),
        }),
    }
}

fn lease_number(text: &str) -> Result<u64, Refusal> {
    text.parse().map_err(|_| Refusal {
        status: 400,
        message: format!(
            "`{text}` is not a lease number: use the `lease` that POST .../leases answered"
        ),
    })
}

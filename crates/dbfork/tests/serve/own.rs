//! dbfork's own API (`/api/dbfork/v1`) on all three backends: templates by
//! hash built in three steps, leases by number returned dirty or clean,
//! renewed, listed, bound to their Unix-socket connection, and what it
//! refuses.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use super::{eventually, json, Service};
use crate::support::{Kind, Place};

per_backend!(serves_its_own_flow);

/// One request on a connection kept open (HTTP/1.1 keep-alive): (status, body).
pub(super) fn exchange(stream: &mut UnixStream, method: &str, path: &str) -> (u16, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: dbfork\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = 0;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
            status = code[..3].parse().unwrap();
        } else if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// A database of the API's answers as `Place::sql` names it (SQLite: the
/// file's stem).
fn name(database: &serde_json::Value) -> String {
    let name = database["name"].as_str().unwrap();
    match name.rsplit_once('/') {
        Some((_, file)) => file.trim_end_matches(".sqlite3").to_string(),
        None => name.to_string(),
    }
}

fn serves_its_own_flow(kind: Kind) {
    let place = Place::new(kind, "own");
    let socket = place.dir.path().join("run/serve.sock");
    let service = Service::start_with(
        &place,
        &[
            "--pool-size",
            "2",
            "--listen",
            &format!("unix:{}", socket.display()),
        ],
    );
    let hash = "own-flow.1";
    let template = format!("/api/dbfork/v1/templates/{hash}");
    let (status, body) = service.call("POST", &format!("{template}/begin"), None);
    assert_eq!(status, 201, "{body}");
    let begun = json(&body);
    assert_eq!(begun["phase"], "building");
    let backend = match kind {
        Kind::Postgres => "postgres",
        Kind::Mysql => "mysql",
        Kind::Sqlite => "sqlite",
    };
    assert_eq!(begun["database"]["backend"], backend);
    let filled = name(&begun["database"]);
    let (status, body) = service.call("POST", &format!("{template}/begin"), None);
    assert_eq!(
        (status, json(&body)["phase"].clone()),
        (200, "building".into()),
        "{body}"
    );
    place.sql_ok(Some(&filled), "CREATE TABLE item (id INT PRIMARY KEY)");
    place.sql_ok(Some(&filled), "INSERT INTO item VALUES (1), (2)");
    let (status, body) = service.call("POST", &format!("{template}/finalize"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["phase"], "ready");

    // Over TCP a lease ends when it is returned (no --lease-ttl).
    let leases = format!("{template}/leases");
    let (status, body) = service.call("POST", &leases, None);
    assert_eq!(status, 201, "{body}");
    let lease = json(&body);
    assert_eq!(lease["ends"], "return", "{body}");
    let number = lease["lease"].as_u64().unwrap();
    let dirty = name(&lease["database"]);
    assert_eq!(place.sql_ok(Some(&dirty), "SELECT COUNT(*) FROM item"), "2");
    let (_, body) = service.call("GET", "/api/dbfork/v1/leases", None);
    let listed = json(&body)["leases"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(listed[0]["lease"], number);
    assert_eq!(listed[0]["hash"], hash);
    place.sql_ok(Some(&dirty), "DELETE FROM item");
    let returned = format!("/api/dbfork/v1/leases/{number}");
    assert_eq!(service.call("DELETE", &returned, None).0, 204);
    let (status, body) = service.call("DELETE", &returned, None);
    assert_eq!(status, 409, "returned twice: {body}");
    assert!(json(&body)["message"].as_str().unwrap().contains("not out"));
    assert_eq!(
        service.call("POST", &format!("{returned}/renew"), None).0,
        409
    );
    eventually("the dirty clone is dropped", || !place.exists(&dirty));
    // Clean: handed out again as it is; every clone handed out holds the rows.
    let (_, body) = service.call("POST", &leases, None);
    let clean = json(&body);
    let number = clean["lease"].as_u64().unwrap();
    assert_eq!(
        service
            .call(
                "POST",
                &format!("/api/dbfork/v1/leases/{number}/renew"),
                None
            )
            .0,
        204
    );
    assert_eq!(
        service
            .call(
                "DELETE",
                &format!("/api/dbfork/v1/leases/{number}?clean=true"),
                None
            )
            .0,
        204
    );
    assert!(
        place.exists(&name(&clean["database"])),
        "a clean clone is kept"
    );

    // Over the Unix socket a lease lives as long as its connection.
    let mut held = UnixStream::connect(&socket).unwrap();
    let (status, body) = exchange(&mut held, "POST", &leases);
    assert_eq!(status, 201, "{body}");
    let bound = json(&body);
    assert_eq!(bound["ends"], "connection", "{body}");
    let bound_db = name(&bound["database"]);
    assert_eq!(
        place.sql_ok(Some(&bound_db), "SELECT COUNT(*) FROM item"),
        "2"
    );
    let (status, body) = exchange(&mut held, "GET", "/api/dbfork/v1/leases");
    assert_eq!(status, 200);
    assert_eq!(json(&body)["leases"][0]["lease"], bound["lease"], "{body}");
    drop(held);
    eventually("the closed connection's lease is taken back", || {
        let (_, body) = service.call("GET", "/api/dbfork/v1/leases", None);
        json(&body)["leases"].as_array().unwrap().is_empty()
    });
    eventually("its clone is dropped", || !place.exists(&bound_db));
    let (_, metrics) = service.call("GET", "/metrics", None);
    assert!(
        metrics.contains("dbfork_serve_leases_reclaimed_total{reason=\"disconnect\"} 1"),
        "{metrics}"
    );
    // A lease returned on its connection before it closes is not taken back.
    let mut held = UnixStream::connect(&socket).unwrap();
    let (_, body) = exchange(&mut held, "POST", &leases);
    let number = json(&body)["lease"].as_u64().unwrap();
    let path = format!("/api/dbfork/v1/leases/{number}?clean=true");
    assert_eq!(exchange(&mut held, "DELETE", &path).0, 204);
    drop(held);

    // Refusals change nothing.
    for (method, path, status) in [
        (
            "POST",
            "/api/dbfork/v1/templates/bad%20hash/begin".to_string(),
            400,
        ),
        ("GET", "/api/dbfork/v1/templates/unknown".to_string(), 404),
        (
            "POST",
            "/api/dbfork/v1/templates/unknown/leases".to_string(),
            404,
        ),
        ("DELETE", "/api/dbfork/v1/leases/x".to_string(), 400),
        (
            "POST",
            "/api/dbfork/v1/leases/999999/renew".to_string(),
            409,
        ),
        ("PATCH", template.clone(), 405),
        ("GET", "/api/dbfork/v2".to_string(), 404),
    ] {
        let (got, answer) = service.call(method, &path, None);
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(json(&answer)["message"].is_string(), "{answer}");
    }
    let (_, body) = service.call("GET", "/api/dbfork/v1/templates", None);
    let templates = json(&body)["templates"].clone();
    assert_eq!(templates[0]["hash"], hash, "{body}");
    assert_eq!(templates[0]["clones"]["leased"], 0, "{body}");

    // Discard: the clones and the template go; a lease is then 410.
    assert_eq!(service.call("DELETE", &template, None).0, 204);
    assert_eq!(service.call("POST", &leases, None).0, 410);
    assert!(!place.exists(&filled));
    assert!(place.registry().is_empty(), "{:?}", place.registry());
    assert_eq!(service.stop(), 0);
}

/// A service on an address that is not loopback needs a token (a file of
/// the user's that no one else reads, or DBFORK_TOKEN, 16 characters at
/// least); then every request without it is 401 and changes nothing, and
/// the Rust client sends it.
#[test]
fn a_token_guards_a_service_on_an_open_address() {
    use std::os::unix::fs::PermissionsExt;
    let place = Place::new(Kind::Sqlite, "token");
    let serve = |extra: &[&str]| {
        let mut command = crate::support::dbfork();
        command
            .args(["serve", "--db", &place.url, "--listen", "tcp:0.0.0.0:0"])
            .args(extra)
            .env_remove("DBFORK_TOKEN");
        command
    };
    let refused = |mut command: std::process::Command, says: &[&str]| {
        let out = command.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "a usage error: {err}");
        for words in says {
            assert!(err.contains(words), "{words:?} not in {err}");
        }
    };
    refused(
        serve(&[]),
        &["not a loopback address", "DBFORK_TOKEN", "--token-file"],
    );
    let file = place.dir.path().join("token");
    let token = "5f1c0e8a2b7d4c3e9a6f0b1d2c3e4f5a";
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with_file = ["--token-file", file.to_str().unwrap()];
    refused(serve(&with_file), &["chmod 600", "token file"]);
    let mut short = serve(&[]);
    short.env("DBFORK_TOKEN", "short");
    refused(short, &["DBFORK_TOKEN", "16 characters"]);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut child = serve(&with_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = super::first_line(&mut child);
    let port = line.rsplit(':').next().unwrap().to_string();
    let base = format!("127.0.0.1:{port}");
    let ask = |method: &str, path: &str, authorization: Option<&str>| {
        let mut stream = std::net::TcpStream::connect(&base).unwrap();
        let header = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}Content-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    for authorization in [None, Some("Bearer wrong"), Some(token)] {
        let answer = ask("POST", "/api/dbfork/v1/templates/t/begin", authorization);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("www-authenticate: Bearer"), "{answer}");
        assert!(answer.contains("Authorization: Bearer"), "{answer}");
    }
    let bearer = format!("Bearer {token}");
    let answer = ask("GET", "/api/dbfork/v1/templates", Some(&bearer));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(r#"{"templates":[]}"#),
        "a refused request changed something: {answer}"
    );

    let url = format!("http://{base}");
    let without = dbfork_client::Client::new(&url).unwrap();
    let err = without.lease("t").unwrap_err().to_string();
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let client = dbfork_client::Client::new(&url).unwrap().with_token(token);
    assert!(!format!("{client:?}").contains(token), "the token in Debug");
    client.template("t", |_| Ok::<(), String>(())).unwrap();
    drop(client.lease("t").unwrap());
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// `--max-bytes`: clones counted at their template's size as the server
/// tells it (SQLite: its file). A 100 kB template under a 350 kB cap gets
/// 3 clones although its pool wants 5; a 4th lease waits (503 after the
/// wait); a template whose one clone is over the cap is refused (507).
#[test]
fn the_bytes_cap_holds() {
    let place = Place::new(Kind::Sqlite, "bytes");
    let service = Service::start_with(
        &place,
        &[
            "--pool-size",
            "5",
            "--max-bytes",
            "350000",
            "--lease-wait",
            "1s",
        ],
    );
    let fill = |hash: &str, blob: usize| {
        let (status, body) = service.call(
            "POST",
            &format!("/api/dbfork/v1/templates/{hash}/begin"),
            None,
        );
        assert_eq!(status, 201, "{body}");
        let filled = name(&json(&body)["database"]);
        place.sql_ok(Some(&filled), "CREATE TABLE t (b BLOB)");
        place.sql_ok(
            Some(&filled),
            &format!("INSERT INTO t VALUES (randomblob({blob}))"),
        );
        let finalize = format!("/api/dbfork/v1/templates/{hash}/finalize");
        assert_eq!(service.call("POST", &finalize, None).0, 200);
    };
    fill("small", 100_000);
    let clones = || {
        let (_, body) = service.call("GET", "/api/dbfork/v1/templates/small", None);
        let c = json(&body)["clones"].clone();
        (
            c["making"].as_u64().unwrap()
                + c["ready"].as_u64().unwrap()
                + c["leased"].as_u64().unwrap()
                + c["dropping"].as_u64().unwrap(),
            c["ready"].as_u64().unwrap(),
        )
    };
    eventually("three clones made", || clones().1 == 3);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(clones().0, 3, "the pool grew past --max-bytes");
    let leases = "/api/dbfork/v1/templates/small/leases";
    for _ in 0..3 {
        assert_eq!(service.call("POST", leases, None).0, 201);
    }
    let (status, body) = service.call("POST", leases, None);
    assert_eq!(status, 503, "a 4th clone over --max-bytes: {body}");
    fill("big", 400_000);
    let (status, body) = service.call("POST", "/api/dbfork/v1/templates/big/leases", None);
    assert_eq!(status, 507, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("--max-bytes"),
        "{body}"
    );
    assert_eq!(service.stop(), 0);
}

/// With `--lease-ttl`, a lease asked over the Unix socket lives as long as
/// its connection (the open connection is its heartbeat): past the TTL it
/// is still out, while one asked over TCP and left alone is taken back.
#[test]
fn a_lease_on_its_connection_outlives_the_ttl() {
    let place = Place::new(Kind::Sqlite, "bound");
    let socket = place.dir.path().join("run/serve.sock");
    let service = Service::start_with(
        &place,
        &[
            "--lease-ttl",
            "1s",
            "--listen",
            &format!("unix:{}", socket.display()),
        ],
    );
    let template = "/api/dbfork/v1/templates/bound";
    assert_eq!(
        service.call("POST", &format!("{template}/begin"), None).0,
        201
    );
    assert_eq!(
        service
            .call("POST", &format!("{template}/finalize"), None)
            .0,
        200
    );
    let mut held = UnixStream::connect(&socket).unwrap();
    let (status, body) = exchange(&mut held, "POST", &format!("{template}/leases"));
    assert_eq!(status, 201, "{body}");
    let bound = json(&body)["lease"].clone();
    // Over TCP, left alone.
    let (status, body) = service.call("POST", &format!("{template}/leases"), None);
    assert_eq!(status, 201, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (_, body) = service.call("GET", "/api/dbfork/v1/leases", None);
    let out: Vec<serde_json::Value> = json(&body)["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lease"].clone())
        .collect();
    assert_eq!(
        out,
        vec![bound.clone()],
        "only the bound lease is out: {body}"
    );
    let path = format!("/api/dbfork/v1/leases/{bound}");
    assert_eq!(exchange(&mut held, "DELETE", &path).0, 204);
    assert_eq!(service.stop(), 0);
}

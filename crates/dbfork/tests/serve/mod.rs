//! `dbfork serve`: IntegreSQL's flow over HTTP against a real service on a
//! real server (all three backends), what it refuses, SIGTERM's drain, and
//! a restart that finds its templates.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::{dbfork, Kind, Place};

mod leasing;
mod own;

per_backend!(
    serves_integresqls_flow,
    a_service_killed_with_leases_out_recovers,
    the_cap_evicts_the_least_recently_used_and_leases_expire,
    the_rust_client_leases_a_database_per_test
);
#[test]
fn a_storm_on_sqlite() {
    a_storm_of_clients_never_shares_a_clone(Kind::Sqlite)
}

#[test]
fn a_storm_on_postgres() {
    a_storm_of_clients_never_shares_a_clone(Kind::Postgres)
}

/// A running `dbfork serve` and where it listens.
struct Service {
    child: Child,
    base: String,
}

impl Service {
    /// Starts the service on `place`'s server on a port the system picks;
    /// returns once it listens (its first line of stdout is its address).
    fn start(place: &Place) -> Service {
        Service::start_with(place, &["--pool-size", "2"])
    }

    fn start_with(place: &Place, settings: &[&str]) -> Service {
        let mut child = dbfork()
            .args(["serve", "--db", &place.url, "--listen", "tcp:127.0.0.1:0"])
            .args(settings)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = address(&mut child);
        Service { child, base }
    }

    /// One request; (status, body).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        call(&self.base, method, path, body)
    }

    /// SIGKILL: no drain.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit code.
    fn stop(mut self) -> i32 {
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line a service prints on stdout: where it listens.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// The `host:port` of a service listening on TCP.
fn address(child: &mut Child) -> String {
    let line = first_line(child);
    line.strip_prefix("http://")
        .unwrap_or_else(|| panic!("no address: {line:?}"))
        .to_string()
}

/// A plain HTTP/1.1 request, the connection closed after it.
fn call(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(base).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {base}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The database a config names, as `Place::sql` names it (SQLite: the file's stem).
fn database(value: &serde_json::Value) -> String {
    let name = value["database"]["config"]["database"].as_str().unwrap();
    match name.rsplit_once('/') {
        Some((_, file)) => file.trim_end_matches(".sqlite3").to_string(),
        None => name.to_string(),
    }
}

/// IntegreSQL's flow as its clients drive it, with the answers its code
/// gives: init (200, then 423), a test database asked for before the
/// template is finalized waits for it, finalize (204, again 204), test
/// databases that hold what the template holds and never go to two holders
/// at once, unlock and recreate, the refusals, discard (then 410), SIGTERM
/// (every clone dropped, the template kept), and a restarted service that
/// finds the template ready.
fn serves_integresqls_flow(kind: Kind) {
    let place = Place::new(kind, "serve");
    let service = Service::start(&place);
    let hash = "0cc175b9c0f1b6a831c399e269772661";
    let init = format!(r#"{{"hash": "{hash}"}}"#);
    let (status, body) = service.call("POST", "/api/v1/templates", Some(&init));
    assert_eq!(status, 200, "{body}");
    let template = json(&body);
    assert_eq!(template["database"]["templateHash"], hash);
    let template_db = database(&template);
    assert!(template_db.starts_with("dbfork_tpl_"), "{body}");
    let (status, body) = service.call("POST", "/api/v1/templates/", Some(&init));
    assert_eq!(status, 423, "{body}");
    assert!(json(&body)["message"]
        .as_str()
        .unwrap()
        .contains("already initialized"));

    // A test database asked for now waits for the finalize.
    let base = service.base.clone();
    let path = format!("/api/v1/templates/{hash}/tests");
    let early = std::thread::spawn(move || call(&base, "GET", &path, None));
    place.sql_ok(Some(&template_db), "CREATE TABLE item (id INT PRIMARY KEY)");
    place.sql_ok(Some(&template_db), "INSERT INTO item VALUES (1), (2)");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !early.is_finished(),
        "the test database came before the template was finalized"
    );
    let finalize = format!("/api/v1/templates/{hash}");
    assert_eq!(service.call("PUT", &finalize, None).0, 204);
    assert_eq!(
        service.call("PUT", &finalize, None).0,
        204,
        "finalized again"
    );
    let (status, body) = early.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let first = json(&body);
    let (status, body) = service.call("GET", &format!("/api/v1/templates/{hash}/tests"), None);
    assert_eq!(status, 200, "{body}");
    let second = json(&body);
    assert_ne!(first["id"], second["id"]);
    assert_ne!(database(&first), database(&second));
    for clone in [&first, &second] {
        assert_eq!(
            place.sql_ok(Some(&database(clone)), "SELECT COUNT(*) FROM item"),
            "2"
        );
    }
    // A clean one given back is handed out again as it is; a dirty one is remade.
    let tests = format!("/api/v1/templates/{hash}/tests");
    let id = first["id"].as_u64().unwrap();
    assert_eq!(
        service
            .call("POST", &format!("{tests}/{id}/unlock"), None)
            .0,
        204
    );
    let id = second["id"].as_u64().unwrap();
    place.sql_ok(Some(&database(&second)), "DELETE FROM item");
    assert_eq!(
        service
            .call("POST", &format!("{tests}/{id}/recreate"), None)
            .0,
        204
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (status, body) = service.call("GET", &tests, None);
        assert_eq!(status, 200, "{body}");
        let clone = json(&body);
        assert_eq!(
            place.sql_ok(Some(&database(&clone)), "SELECT COUNT(*) FROM item"),
            "2",
            "a dirty clone was handed out again"
        );
        assert!(
            !seen.contains(&clone["id"]),
            "one clone to two holders: {body}"
        );
        seen.push(clone["id"].clone());
    }

    // Refusals change nothing.
    for (method, path, body, status) in [
        ("POST", "/api/v1/templates".to_string(), Some("{"), 400),
        (
            "POST",
            "/api/v1/templates".to_string(),
            Some(r#"{"hash": ""}"#),
            400,
        ),
        (
            "GET",
            "/api/v1/templates/unknown/tests".to_string(),
            None,
            404,
        ),
        ("POST", format!("{tests}/x/unlock"), None, 400),
        ("POST", format!("{tests}/999/unlock"), None, 404),
        ("PATCH", finalize.clone(), None, 405),
        ("GET", "/nothing".to_string(), None, 404),
    ] {
        let (got, answer) = service.call(method, &path, body);
        assert_eq!(got, status, "{method} {path}: {answer}");
        assert!(json(&answer)["message"].is_string(), "{answer}");
    }
    let (status, body) = service.call("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["templates"][0]["leased"], 3, "{body}");
    assert_eq!(json(&body)["templates"][0]["phase"], "ready", "{body}");

    // Discard: the clones and the template go; asking again is 410.
    assert_eq!(service.call("DELETE", &finalize, None).0, 204);
    assert_eq!(service.call("GET", &tests, None).0, 410);
    assert!(!place.exists(&template_db));
    assert!(place.registry().is_empty(), "{:?}", place.registry());

    // Again, then SIGTERM with a lease out: every clone goes, the template stays.
    let (status, body) = service.call("POST", "/api/v1/templates", Some(&init));
    assert_eq!(status, 200, "{body}");
    let again = database(&json(&body));
    place.sql_ok(Some(&again), "CREATE TABLE item (id INT PRIMARY KEY)");
    place.sql_ok(Some(&again), "INSERT INTO item VALUES (3)");
    assert_eq!(service.call("PUT", &finalize, None).0, 204);
    let (status, body) = service.call("GET", &tests, None);
    assert_eq!(status, 200, "{body}");
    let held = database(&json(&body));
    assert_eq!(service.stop(), 0);
    assert!(!place.exists(&held));
    only_the_template_left(&place);

    // A restarted service finds the template: init is 423, tests are served.
    let service = Service::start(&place);
    assert_eq!(
        service.call("POST", "/api/v1/templates", Some(&init)).0,
        423
    );
    let (status, body) = service.call("GET", &tests, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        place.sql_ok(Some(&database(&json(&body))), "SELECT id FROM item"),
        "3"
    );
    assert_eq!(service.stop(), 0);
}

/// The published IntegreSQL clients, unchanged, drive the service on
/// PostgreSQL: the npm package `@devoxa/integresql-client` (its whole flow:
/// init and fill, init again answered 423, test databases, reuse,
/// recreate, discard) and the PyPI package `integresql-client-python` (its
/// flow: init and fill with a form-encoded hash, init again, test
/// databases, mark unmodified, discard then 410).
#[test]
fn published_integresql_clients_work_unchanged() {
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/integresql");
    let node_modules = node_client().join("node_modules");
    let clients: [(&str, std::process::Command); 2] = [
        ("npm @devoxa/integresql-client", {
            let mut c = std::process::Command::new("node");
            c.arg(fixtures.join("devoxa.js"))
                .current_dir(&fixtures)
                .env("NODE_PATH", &node_modules);
            c
        }),
        ("PyPI integresql-client-python", {
            let mut c = std::process::Command::new(crate::run_tests::python());
            c.arg(fixtures.join("client.py"));
            c
        }),
    ];
    for (name, mut command) in clients {
        let place = Place::new(Kind::Postgres, "iclient");
        let service = Service::start(&place);
        let mut client = command
            .arg(format!("http://{}", service.base))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut out = BufReader::new(client.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let template = json(&line)["fill"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {line}"))
            .to_string();
        place.sql_ok(
            Some(&template),
            "CREATE TABLE item (id INT PRIMARY KEY); INSERT INTO item VALUES (1), (2)",
        );
        writeln!(client.stdin.as_mut().unwrap()).unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        let got = json(&line);
        let tests = got["tests"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {line}"));
        for test in tests {
            let db = test.get("database").unwrap_or(test).as_str().unwrap();
            assert_eq!(
                place.sql_ok(Some(db), "SELECT COUNT(*) FROM item"),
                "2",
                "{name}: {db}"
            );
        }
        assert!(
            got["url"].as_str().unwrap().starts_with("postgresql://"),
            "{name}: {line}"
        );
        writeln!(client.stdin.as_mut().unwrap()).unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(json(&line)["gone"], 410, "{name}: {line}");
        assert!(client.wait().unwrap().success(), "{name} failed");
        assert!(
            place.registry().is_empty(),
            "{name}: {:?}",
            place.registry()
        );
        assert_eq!(service.stop(), 0);
    }
}

/// The npm client, installed once under target/ (npm's registry).
fn node_client() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("integresql-node");
    if !dir
        .join("node_modules/@devoxa/integresql-client/package.json")
        .exists()
    {
        let out = std::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg("@devoxa/integresql-client@2.1.1")
            .output()
            .expect("npm (Node.js) is needed for this test");
        assert!(
            out.status.success(),
            "npm install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// A service killed with SIGKILL while clones are leased and ready: the
/// next one collects them (their owner is gone) as it starts, finds the
/// template, and serves again; nothing is left after its drain.
fn a_service_killed_with_leases_out_recovers(kind: Kind) {
    let place = Place::new(kind, "servekill");
    let service = Service::start(&place);
    let init = r#"{"hash": "killed"}"#;
    let (status, body) = service.call("POST", "/api/v1/templates", Some(init));
    assert_eq!(status, 200, "{body}");
    let template = database(&json(&body));
    place.sql_ok(Some(&template), "CREATE TABLE item (id INT PRIMARY KEY)");
    assert_eq!(service.call("PUT", "/api/v1/templates/killed", None).0, 204);
    let (status, body) = service.call("GET", "/api/v1/templates/killed/tests", None);
    assert_eq!(status, 200, "{body}");
    let leased = database(&json(&body));
    // The pool fills in the background: wait until clones are ready too.
    for _ in 0..100 {
        let (_, health) = service.call("GET", "/healthz", None);
        if json(&health)["templates"][0]["ready"].as_u64() >= Some(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    service.kill();
    let clones = place
        .registry()
        .iter()
        .filter(|e| e["kind"] == "clone")
        .count();
    assert!(clones >= 3, "{:?}", place.registry());
    assert!(place.exists(&leased));

    let service = Service::start(&place);
    assert!(
        !place.exists(&leased),
        "the killed service's clones were not collected"
    );
    let kinds: Vec<String> = place
        .registry()
        .iter()
        .map(|e| e["kind"].to_string())
        .collect();
    assert!(kinds
        .iter()
        .all(|k| k == r#""template""# || k == r#""clone""#));
    assert_eq!(service.call("POST", "/api/v1/templates", Some(init)).0, 423);
    let (status, body) = service.call("GET", "/api/v1/templates/killed/tests", None);
    assert_eq!(status, 200, "{body}");
    place.sql_ok(Some(&database(&json(&body))), "SELECT COUNT(*) FROM item");
    assert_eq!(service.stop(), 0);
    only_the_template_left(&place);
}

/// A template filled with one table and finalized; its name.
fn ready_template(place: &Place, service: &Service, hash: &str) -> String {
    let init = format!(r#"{{"hash": "{hash}"}}"#);
    let (status, body) = service.call("POST", "/api/v1/templates", Some(&init));
    assert_eq!(status, 200, "{body}");
    let template = database(&json(&body));
    place.sql_ok(Some(&template), "CREATE TABLE item (id INT PRIMARY KEY)");
    let finalize = format!("/api/v1/templates/{hash}");
    assert_eq!(service.call("PUT", &finalize, None).0, 204);
    template
}

/// The pools of every template as /healthz says: hash -> its clones by state.
fn health(service: &Service) -> Vec<serde_json::Value> {
    let (status, body) = service.call("GET", "/healthz", None);
    assert_eq!(status, 200, "{body}");
    json(&body)["templates"].as_array().unwrap().clone()
}

fn pool_of(service: &Service, hash: &str) -> serde_json::Value {
    health(service)
        .into_iter()
        .find(|t| t["hash"] == hash)
        .unwrap_or_default()
}

/// Every clone the service has, in any state.
fn clones(service: &Service) -> u64 {
    health(service)
        .iter()
        .flat_map(|t| ["making", "ready", "leased", "dropping"].map(|k| t[k].as_u64().unwrap()))
        .sum()
}

/// Polls `done` for up to 10 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not happen within 10 s");
}

/// `--max-databases 3`: the clones of all templates stay within it, and a
/// test waiting for one of a template with no room gets one made from the
/// room the least recently used template's ready clones leave. `--lease-ttl
/// 2s`: a lease renewed every 0.3 s stays, one left alone is taken back and
/// dropped, and renewing it then is refused.
fn the_cap_evicts_the_least_recently_used_and_leases_expire(kind: Kind) {
    let place = Place::new(kind, "servecap");
    let service = Service::start_with(
        &place,
        &[
            "--pool-size",
            "2",
            "--max-databases",
            "3",
            "--lease-ttl",
            "2s",
        ],
    );
    ready_template(&place, &service, "first");
    eventually("two ready clones of the first", || {
        pool_of(&service, "first")["ready"] == 2
    });
    ready_template(&place, &service, "second");
    eventually("one ready clone of the second", || {
        pool_of(&service, "second")["ready"] == 1
    });
    assert!(clones(&service) <= 3);
    let lease = |hash: &str| {
        let path = format!("/api/v1/templates/{hash}/tests");
        let (status, body) = service.call("GET", &path, None);
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    let kept = lease("second");
    let dropped = lease("second");
    assert!(clones(&service) <= 3, "{:?}", health(&service));
    let first = pool_of(&service, "first");
    assert!(
        first["ready"].as_u64().unwrap() < 2,
        "the first kept its clones: {first}"
    );

    let renew = |clone: &serde_json::Value| {
        let path = format!("/api/v1/templates/second/tests/{}/renew", clone["id"]);
        service.call("POST", &path, None)
    };
    for _ in 0..12 {
        assert_eq!(renew(&kept).0, 204);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        place.exists(&database(&kept)),
        "a renewed lease was taken back"
    );
    eventually("the lease left alone taken back", || {
        !place.exists(&database(&dropped))
    });
    // Left alone now (asking would renew it): taken back, then refused.
    eventually("the renewed lease taken back once left alone", || {
        !place.exists(&database(&kept))
    });
    let (status, body) = renew(&kept);
    assert!(status == 409 || status == 404, "{status} {body}");
    // What happened is in /metrics (OpenMetrics text).
    let (status, metrics) = service.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{metrics}");
    for line in [
        "dbfork_serve_evictions_total 1",
        "dbfork_serve_leases_total 2",
        r#"dbfork_serve_leases_reclaimed_total{reason="expiry"} 2"#,
        r#"dbfork_serve_clones{template="second",state="leased"} 0"#,
        "# EOF",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    assert_eq!(service.stop(), 0);
}

/// The name `Place::sql` takes for a database the client got (SQLite: the file's stem).
fn place_name(database: &dbfork_client::Database) -> String {
    let name = database.name.rsplit('/').next().unwrap_or(&database.name);
    name.trim_end_matches(".sqlite3").to_string()
}

/// The Rust client (`dbfork-client`): the template filled once (a second
/// fill is not asked for), a lease per test with a URL of the backend, a
/// dropped lease's changes never reach another lease, a clean one comes
/// back as it is, a failed fill discards the template, and a service that
/// is not there is an error naming what to do. Over the Unix socket (a
/// lease held on its connection); TCP is the spawned service's.
fn the_rust_client_leases_a_database_per_test(kind: Kind) {
    let place = Place::new(kind, "client");
    let socket = format!("unix:{}", place.dir.path().join("run/serve.sock").display());
    let service = Service::start_with(&place, &["--pool-size", "2", "--listen", &socket]);
    let client = dbfork_client::Client::new(&socket).unwrap();
    let mut fills = 0;
    client
        .template("rust", |template| {
            fills += 1;
            let name = place_name(template);
            place.sql_ok(Some(&name), "CREATE TABLE item (id INT PRIMARY KEY)");
            Ok::<(), String>(())
        })
        .unwrap();
    client.template("rust", |_| Err("filled twice")).unwrap();
    assert_eq!(fills, 1);
    let scheme = match kind {
        Kind::Postgres => "postgres://",
        Kind::Mysql => "mysql://",
        Kind::Sqlite => "sqlite://",
    };
    let dirty = client.lease("rust").unwrap();
    assert!(dirty.url().starts_with(scheme), "{}", dirty.url());
    dbfork_engine::DbUrl::parse(dirty.url()).unwrap();
    let dirty_name = place_name(dirty.database());
    place.sql_ok(Some(&dirty_name), "INSERT INTO item VALUES (1)");
    drop(dirty);
    let clean = client.lease("rust").unwrap();
    let clean_name = place_name(clean.database());
    clean.give_back_clean().unwrap();
    let mut names = Vec::new();
    let leases: Vec<_> = (0..3).map(|_| client.lease("rust").unwrap()).collect();
    for lease in &leases {
        let name = place_name(lease.database());
        assert_eq!(
            place.sql_ok(Some(&name), "SELECT COUNT(*) FROM item"),
            "0",
            "a dropped lease's row reached {name}"
        );
        names.push(name);
    }
    assert!(
        names.contains(&clean_name),
        "the clean clone was not handed out again: {names:?}"
    );
    drop(leases);
    // Dropped in the background.
    eventually("the dirty clone dropped", || !place.exists(&dirty_name));

    let failed = client.template("broken", |_| Err("the migration failed"));
    assert!(
        matches!(&failed, Err(dbfork_client::Error::Fill(why)) if why.contains("the migration failed")),
        "{failed:?}"
    );
    let gone = client.lease("broken").unwrap_err().to_string();
    assert!(gone.contains("410") && gone.contains("discarded"), "{gone}");
    assert_eq!(service.stop(), 0);

    let nowhere = dbfork_client::Client::new("http://127.0.0.1:1").unwrap();
    let err = nowhere.lease("rust").unwrap_err().to_string();
    assert!(
        err.contains("cannot reach dbfork serve") && err.contains("DBFORK_SERVE_URL"),
        "{err}"
    );
}

/// The OpenAPI document the service serves holds for the service:
/// schemathesis (PyPI) sends requests made from the document, valid and not,
/// to every operation, and checks that each answer's status, content type
/// and body are the document's and that no answer is a server error but
/// the documented wait timeout. Its wait is cut to 1 s so that a template
/// it initialized and never finalized answers 503 at once.
#[test]
fn the_openapi_document_holds_for_the_running_service() {
    let place = Place::new(Kind::Sqlite, "openapi");
    let service = Service::start_with(&place, &["--pool-size", "1", "--lease-wait", "1s"]);
    let (status, body) = service.call("GET", "/openapi.json", None);
    assert_eq!(status, 200, "{body}");
    let document = json(&body);
    assert_eq!(document["openapi"], "3.0.3");
    // Its caches (.schemathesis/, .hypothesis/) go to the place, not the tree.
    let out = std::process::Command::new(crate::run_tests::python())
        .current_dir(place.dir.path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("http://{}/openapi.json", service.base))
        .args([
            "--checks",
            "status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "25",
            "--request-timeout",
            "20",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .expect("schemathesis (python/requirements-test.txt)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert_eq!(service.stop(), 0);
}

/// A storm: 32 client processes lease, check, hold and give back (clean or
/// to be recreated) for 30 s, half over the Unix socket and half over TCP,
/// six of them killed with SIGKILL on the way (their leases taken back when
/// their connection closes, or after `--lease-ttl 10s`: long beside a hold,
/// even on a loaded machine). No clone is ever held
/// by two clients at once or handed out dirty; the caps hold throughout;
/// every lease ends; the registry and the server agree; the drain leaves
/// only the template.
fn a_storm_of_clients_never_shares_a_clone(kind: Kind) {
    let place = Place::new(kind, "storm");
    let socket = format!("unix:{}", place.dir.path().join("run/serve.sock").display());
    let service = Service::start_with(
        &place,
        &[
            "--pool-size",
            "3",
            "--pool-max",
            "8",
            "--max-databases",
            "8",
            "--lease-ttl",
            "10s",
            "--listen",
            &socket,
        ],
    );
    let (status, body) = service.call("POST", "/api/v1/templates", Some(r#"{"hash": "storm"}"#));
    assert_eq!(status, 200, "{body}");
    let template = database(&json(&body));
    place.sql_ok(Some(&template), "CREATE TABLE holder (pid INT)");
    assert_eq!(service.call("PUT", "/api/v1/templates/storm", None).0, 204);

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/integresql/storm.py");
    // 32 clients for 30 s, every other one over the Unix socket (dbfork's
    // API, a lease held on its connection), the rest over TCP (IntegreSQL's
    // routes, --lease-ttl); the first 6 (3 of each) killed with SIGKILL.
    const CLIENTS: usize = 32;
    const KILLED: usize = 6;
    const SECONDS: u64 = 30;
    let tcp = format!("http://{}", service.base);
    let mut clients: Vec<Child> = (0..CLIENTS)
        .map(|i| {
            std::process::Command::new(crate::run_tests::python())
                .arg(&script)
                .args([
                    if i % 2 == 0 { &socket } else { &tcp },
                    "storm",
                    &SECONDS.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    let mut most = 0;
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(SECONDS) {
        most = most.max(clones(&service));
        if !killed && started.elapsed() > Duration::from_secs(SECONDS / 3) {
            for client in &mut clients[..KILLED] {
                let _ = client.kill();
            }
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(most <= 8, "{most} clones at once, over --max-databases 8");
    let mut leases = 0;
    for (i, mut client) in clients.into_iter().enumerate() {
        let status = client.wait().unwrap();
        let mut out = String::new();
        client
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        if i < KILLED {
            continue;
        }
        assert!(status.success(), "client {i}: {status:?} {out}");
        leases += json(out.trim())["leases"].as_u64().unwrap();
    }
    assert!(leases > 100, "only {leases} leases in the storm");
    // Every lease ends, and the pool settles (nothing being made or dropped:
    // a clone is registered before it is made and unregistered after it is
    // dropped).
    eventually("every lease ended and the pool settled", || {
        let pool = pool_of(&service, "storm");
        pool["leased"] == 0 && pool["making"] == 0 && pool["dropping"] == 0
    });
    for entry in place.registry() {
        let name = entry["name"].as_str().unwrap();
        assert!(
            place.exists(name),
            "{name} is registered but not on the server"
        );
    }
    if kind == Kind::Sqlite {
        let registered: Vec<String> = place
            .registry()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        for file in std::fs::read_dir(place.dir.path()).unwrap() {
            let name = file.unwrap().file_name().to_string_lossy().to_string();
            let db = name
                .strip_suffix(".sqlite3")
                .filter(|n| n.starts_with("dbfork_"));
            if let Some(db) = db {
                assert!(
                    registered.iter().any(|r| r == db),
                    "{db} is on the server but not registered"
                );
            }
        }
    }
    assert_eq!(service.stop(), 0);
    only_the_template_left(&place);
}

/// `--listen unix:PATH`: the socket is this user's only (0600 in a 0700
/// directory), answers HTTP, is removed by the drain; one left by a service
/// killed with SIGKILL is replaced by the next service; a file that is not
/// a socket is never removed, and the service says why it cannot listen.
#[test]
fn the_unix_socket_is_private_and_outlives_no_service() {
    use std::os::unix::fs::PermissionsExt;
    let place = Place::new(Kind::Sqlite, "unix");
    let socket = place.dir.path().join("run/dbfork.sock");
    let listen = format!("unix:{}", socket.display());
    let start = || {
        dbfork()
            .args(["serve", "--db", &place.url, "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let ask = || {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let mut service = start();
    assert_eq!(first_line(&mut service), listen);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert!(ask().starts_with("HTTP/1.1 200"));
    service.kill().unwrap();
    service.wait().unwrap();
    assert!(socket.exists(), "SIGKILL leaves the socket");
    let mut service = start();
    assert_eq!(first_line(&mut service), listen);
    assert!(ask().starts_with("HTTP/1.1 200"));
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    assert!(service.wait().unwrap().success());
    assert!(!socket.exists(), "the drain leaves the socket");
    std::fs::write(&socket, "not a socket").unwrap();
    let out = dbfork()
        .args(["serve", "--db", &place.url, "--listen", &listen])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot listen on unix:"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "not a socket");
}

/// Without DBFORK_SERVE_URL, `Client::from_env` starts `dbfork serve` for
/// the process (DBFORK_BIN; the database of DBFORK_DB), shared by every
/// client of the process; `stop_spawned` drains it (as the end of the
/// process does, by closing its standard input).
#[test]
fn the_rust_client_starts_a_service_when_none_is_named() {
    let place = Place::new(Kind::Sqlite, "spawn");
    // nextest runs each test in a process of its own.
    std::env::set_var("DBFORK_BIN", assert_cmd::cargo::cargo_bin("dbfork"));
    std::env::remove_var(dbfork_client::ENV_URL);
    // A service that cannot start: its own words in the error.
    std::env::set_var("DBFORK_DB", "oracle://scott@db/orcl");
    let err = dbfork_client::Client::from_env().unwrap_err().to_string();
    assert!(
        err.contains("cannot start") && err.contains("the scheme `oracle` is not supported"),
        "{err}"
    );
    std::env::set_var("DBFORK_DB", &place.url);
    let client = dbfork_client::Client::from_env().unwrap();
    client
        .template("spawned", |template| {
            place.sql_ok(
                Some(&place_name(template)),
                "CREATE TABLE item (id INT PRIMARY KEY)",
            );
            Ok::<(), String>(())
        })
        .unwrap();
    let lease = dbfork_client::Client::from_env()
        .unwrap()
        .lease("spawned")
        .unwrap();
    let name = place_name(lease.database());
    assert_eq!(place.sql_ok(Some(&name), "SELECT COUNT(*) FROM item"), "0");
    drop(lease);
    dbfork_client::stop_spawned();
    only_the_template_left(&place);
}

/// `--exit-with-stdin`: the service drains and exits when the process that
/// started it is gone (its pipe closed), dropping the clones it made.
#[test]
fn a_service_tied_to_its_stdin_drains_when_it_closes() {
    let place = Place::new(Kind::Sqlite, "stdin");
    let mut child = dbfork()
        .args([
            "serve",
            "--db",
            &place.url,
            "--listen",
            "tcp:127.0.0.1:0",
            "--exit-with-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = address(&mut child);
    let (status, body) = call(
        &base,
        "POST",
        "/api/v1/templates",
        Some(r#"{"hash": "stdin"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(call(&base, "PUT", "/api/v1/templates/stdin", None).0, 204);
    let (status, body) = call(&base, "GET", "/api/v1/templates/stdin/tests", None);
    assert_eq!(status, 200, "{body}");
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("standard input closed: draining"), "{err}");
    only_the_template_left(&place);
}

/// `dbfork db drop` of a killed service's clone and template: the clone,
/// already removed by the collection the command starts with, is said so
/// (not refused), and the template is dropped too.
#[test]
fn dropping_what_the_collection_removed_is_not_refused() {
    let place = Place::new(Kind::Sqlite, "dropkilled");
    let service = Service::start(&place);
    let template = ready_template(&place, &service, "dropkilled");
    let (status, body) = service.call("GET", "/api/v1/templates/dropkilled/tests", None);
    assert_eq!(status, 200, "{body}");
    let clone = database(&json(&body));
    service.kill();
    let out = dbfork()
        .args(["db", "drop", "--db", &place.url, &clone, &template])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{clone} was already removed")),
        "{err}"
    );
    assert!(err.contains(&format!("dropped {template}")), "{err}");
    assert!(place.registry().is_empty(), "{:?}", place.registry());
}

/// After a drain: the registry holds the ready template alone.
fn only_the_template_left(place: &Place) {
    let left: Vec<String> = place
        .registry()
        .iter()
        .map(|e| format!("{} {}", e["kind"], e["state"]))
        .collect();
    assert_eq!(left, [r#""template" "ready""#], "after the drain");
}

/// `dbfork-client`'s async calls (`features = ["async"]`) in a tokio
/// runtime: the template filled by an async fill, a failing async fill
/// discards, clones leased without blocking the runtime.
#[test]
fn the_rust_client_works_from_async_tests() {
    let place = Place::new(Kind::Sqlite, "async");
    let service = Service::start(&place);
    let client = dbfork_client::Client::new(&format!("http://{}", service.base)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let place = &place;
    runtime.block_on(async {
        client
            .template_async("async", |template| async move {
                place.sql_ok(
                    Some(&place_name(&template)),
                    "CREATE TABLE item (id INT PRIMARY KEY)",
                );
                Ok::<(), String>(())
            })
            .await
            .unwrap();
        let failed = client
            .template_async("async-broken", |_| async { Err("no migrations") })
            .await;
        assert!(
            matches!(failed, Err(dbfork_client::Error::Fill(_))),
            "{failed:?}"
        );
        let leases = futures_join(&client).await;
        assert_ne!(leases.0.database().name, leases.1.database().name);
        for lease in [&leases.0, &leases.1] {
            assert_eq!(
                place.sql_ok(
                    Some(&place_name(lease.database())),
                    "SELECT COUNT(*) FROM item"
                ),
                "0"
            );
        }
    });
    assert_eq!(service.stop(), 0);
}

/// Two leases at once, as two async tests ask.
async fn futures_join(
    client: &dbfork_client::Client,
) -> (dbfork_client::Lease, dbfork_client::Lease) {
    let (a, b) = tokio::join!(client.lease_async("async"), client.lease_async("async"));
    (a.unwrap(), b.unwrap())
}

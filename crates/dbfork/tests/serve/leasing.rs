//! `dbfork run --serve-url`: a run leases its workers' clones from a running
//! `dbfork serve` on its server, returns them at the end, and leaves
//! `--keep-ready` made for the next run; a run killed with SIGKILL gives
//! them back at once (its leases lived on its Unix-socket connections).

use std::path::Path;

use super::{eventually, json, Service};
use crate::run_tests::{assert_no_clones, dbfork_run, suite, summary};
use crate::support::{Kind, Place};

per_backend!(
    a_run_leases_its_clones_from_a_running_service,
    the_rust_example_passes_with_and_without_a_running_service
);

fn templates(service: &Service) -> serde_json::Value {
    let (status, body) = service.call("GET", "/api/dbfork/v1/templates", None);
    assert_eq!(status, 200, "{body}");
    json(&body)["templates"].clone()
}

fn a_run_leases_its_clones_from_a_running_service(kind: Kind) {
    let place = Place::new(kind, "runlease");
    let dir = suite(&place);
    let socket = format!("unix:{}", place.dir.path().join("run/serve.sock").display());
    let service = Service::start_with(&place, &["--pool-size", "1", "--listen", &socket]);
    let tests = ["tests/test_db.py", "tests/test_pass.py"];
    let leased = ["-j", "2", "--serve-url", &socket, "--keep-ready", "3"];
    let first = dbfork_run(&place, &dir, &leased, &tests, &[]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    assert!(
        first
            .stderr
            .contains(&format!("the clones come from dbfork serve at {socket}")),
        "{}",
        first.stderr
    );
    assert_eq!(summary(&first.stdout), "56 passed", "{}", first.stdout);
    // The workers ran on the service's clones, not clones of the run's own.
    let run_id = first.report["run_id"].as_str().unwrap().to_string();
    for slot in first.report["slots"].as_array().unwrap() {
        let database = slot["database"].as_str().unwrap();
        assert!(
            database.starts_with("dbfork_") && !database.contains(&run_id),
            "{slot}"
        );
    }
    // Returned, recreated, and three kept made for the next run.
    eventually("three clones kept ready", || {
        let t = templates(&service);
        t.as_array().unwrap().len() == 1
            && t[0]["clones"]["ready"] == 3
            && t[0]["clones"]["leased"] == 0
            && t[0]["clones"]["making"] == 0
    });
    let template = templates(&service)[0]["hash"].as_str().unwrap().to_string();
    assert!(template.starts_with("dbfork_tpl_"), "{template}");
    let ready: Vec<String> = place
        .registry()
        .iter()
        .filter(|e| e["kind"] == "clone")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ready.len(), 3, "{:?}", place.registry());

    // The next run starts on those.
    let second = dbfork_run(&place, &dir, &leased, &tests, &[]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let used: Vec<String> = second.report["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["database"].as_str().unwrap().to_string())
        .collect();
    assert!(
        used.iter().all(|name| ready.contains(name)),
        "the run did not start on the ready clones {ready:?}: {used:?}"
    );

    // Killed with SIGKILL mid-run: its leases end with its connections.
    let mut command = crate::run_tests::run_command(
        &place,
        &dir,
        &["-j", "2", "--serve-url", &socket],
        &["tests/test_slow.py"],
    );
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("the killed run's leases are out", || {
        templates(&service)[0]["clones"]["leased"] == 2
    });
    // `db list --serve-url` shows the service's clones' states.
    let listed = crate::support::dbfork()
        .args([
            "db",
            "list",
            "--json",
            "--db",
            &place.url,
            "--serve-url",
            &socket,
        ])
        .output()
        .unwrap();
    let listed = json(&String::from_utf8_lossy(&listed.stdout));
    let served: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["served"].as_str())
        .collect();
    assert_eq!(
        served.iter().filter(|s| **s == "leased").count(),
        2,
        "{listed}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    eventually("the killed run's leases are taken back", || {
        templates(&service)[0]["clones"]["leased"] == 0
    });

    // A service of another server is refused before anything is leased.
    let other = Place::new(kind, "runlease_other");
    let elsewhere = Service::start(&other);
    let wrong = format!("http://{}", elsewhere.base);
    let refused = dbfork_run(
        &place,
        &dir,
        &["-j", "2", "--serve-url", &wrong],
        &tests,
        &[],
    );
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not the run's server")
            || refused
                .stderr
                .contains("dbfork run and dbfork serve must use the same server"),
        "{}",
        refused.stderr
    );
    assert_eq!(elsewhere.stop(), 0);
    assert_no_clones(&other);

    assert_eq!(service.stop(), 0);
    assert_no_clones(&place);
}

/// The test binary of `examples/rust-client` (built with the workspace's
/// tests, beside this one): the newest `inventory-<hash>`.
fn rust_example() -> std::path::PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("inventory-") && !name.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| panic!("no inventory-* test binary in {}: build the workspace's tests (cargo nextest run builds them)", deps.display()))
}

/// `examples/rust-client`'s tests (the attribute, the helper, an async test)
/// pass against a service that runs (DBFORK_SERVE_URL, its Unix socket),
/// and with none (the client starts one for the binary, on DBFORK_DB); both
/// leave no clone.
fn the_rust_example_passes_with_and_without_a_running_service(kind: Kind) {
    let place = Place::new(kind, "rustex");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rust-client");
    let run = |envs: &[(&str, &str)]| {
        let out = std::process::Command::new(rust_example())
            .current_dir(&example)
            .env_remove("DBFORK_SERVE_URL")
            .env("DBFORK_BIN", assert_cmd::cargo::cargo_bin("dbfork"))
            .env("DBFORK_DB", &place.url)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("test result: ok. 4 passed"), "{text}");
    };
    let socket = format!("unix:{}", place.dir.path().join("run/serve.sock").display());
    let service = Service::start_with(&place, &["--pool-size", "2", "--listen", &socket]);
    run(&[("DBFORK_SERVE_URL", &socket)]);
    let served = templates(&service);
    assert_eq!(served.as_array().unwrap().len(), 1, "{served}");
    eventually("every lease returned", || {
        templates(&service)[0]["clones"]["leased"] == 0
    });
    assert_eq!(service.stop(), 0);
    assert_no_clones(&place);
    run(&[]);
    // The service the binary started drains once the binary has exited.
    eventually("the binary's own service drained", || {
        place.registry().iter().all(|e| e["kind"] == "template")
    });
    assert_no_clones(&place);
}

/// Over TCP from a service with `--lease-ttl`, the run renews its leases:
/// a run longer than the TTL loses none of its clones.
#[test]
fn a_run_renews_leases_that_end_by_their_ttl() {
    let place = Place::new(Kind::Sqlite, "runttl");
    let dir = suite(&place);
    let service = Service::start_with(&place, &["--lease-ttl", "1s"]);
    let url = format!("http://{}", service.base);
    let slow = ["tests/test_slow.py", "tests/test_db.py"];
    let out = dbfork_run(&place, &dir, &["-j", "2", "--serve-url", &url], &slow, &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let (_, metrics) = service.call("GET", "/metrics", None);
    assert!(
        !metrics.contains("reason=\"expiry\""),
        "a lease of the run expired: {metrics}"
    );
    assert_eq!(service.stop(), 0);
    assert_no_clones(&place);
}

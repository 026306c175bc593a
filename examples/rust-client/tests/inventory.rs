//! Each test gets its own database, a clone of the migrated template, from
//! `dbfork serve` (`dbfork-client` starts one for this test binary when
//! `DBFORK_SERVE_URL` names none; `DBFORK_DB` chooses the server: SQLite in
//! the project's `.dbfork/` by default). No test sees another's changes.

use std::path::Path;

use dbfork_example_rust_client::{add, migrate, names, Db};

/// A clone of the template the migrations make, for one test.
fn database() -> dbfork_client::Lease {
    // The dbfork this repository builds, when none is on PATH.
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/dbfork");
    if std::env::var_os(dbfork_client::ENV_BIN).is_none() && built.exists() {
        std::env::set_var(dbfork_client::ENV_BIN, built);
    }
    let client = dbfork_client::Client::from_env().unwrap();
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let hash = dbfork_client::hash_files(&[&migrations]).unwrap();
    client
        .template(&hash, |template| migrate(&template.url, &migrations))
        .unwrap();
    client.lease(&hash).unwrap()
}

#[test]
fn the_seed_is_there() {
    let lease = database();
    let mut db = Db::connect(lease.url()).unwrap();
    assert_eq!(names(&mut db).unwrap(), ["hammer", "saw"]);
}

#[test]
fn an_item_added_is_listed() {
    let lease = database();
    let mut db = Db::connect(lease.url()).unwrap();
    add(&mut db, 3, "drill").unwrap();
    assert_eq!(names(&mut db).unwrap(), ["hammer", "saw", "drill"]);
}

#[test]
fn another_tests_item_is_not_here() {
    let lease = database();
    let mut db = Db::connect(lease.url()).unwrap();
    add(&mut db, 3, "level").unwrap();
    // Whatever order the tests ran in, this database holds the seed and this
    // test's item only.
    assert_eq!(names(&mut db).unwrap(), ["hammer", "saw", "level"]);
}

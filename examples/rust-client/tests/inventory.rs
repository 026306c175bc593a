//! Each test gets its own database, a clone of the migrated template, from
//! `dbfork serve` (`dbfork-client` starts one for this test binary when
//! `DBFORK_SERVE_URL` names none; `DBFORK_DB` chooses the server: SQLite in
//! the project's `.dbfork/` by default). No test sees another's changes.
//! The attribute `#[dbfork_client::test]` gives a test its database; a test
//! can also ask for one with `dbfork_client::test_database` or a `Client`.

use std::path::Path;

use dbfork_client::{Database, Lease};
use dbfork_example_rust_client::{add, migrate, names, Db, Error};

/// What makes the template: the migrations, applied once per test binary
/// (and once per server, while they do not change).
fn fill(template: &Database) -> Result<(), Error> {
    migrate(&template.url, Path::new("migrations"))
}

#[dbfork_client::test(inputs = "migrations", fill = fill)]
fn the_seed_is_there(db: Lease) {
    let mut db = Db::connect(db.url()).unwrap();
    assert_eq!(names(&mut db).unwrap(), ["hammer", "saw"]);
}

#[dbfork_client::test(inputs = "migrations", fill = fill)]
fn an_item_added_is_listed(lease: Lease) -> Result<(), Error> {
    let mut db = Db::connect(lease.url())?;
    add(&mut db, 3, "drill")?;
    assert_eq!(names(&mut db)?, ["hammer", "saw", "drill"]);
    Ok(())
}

#[test]
fn another_tests_item_is_not_here() {
    let lease = dbfork_client::test_database("migrations", fill);
    let mut db = Db::connect(lease.url()).unwrap();
    add(&mut db, 3, "level").unwrap();
    // Whatever order the tests ran in, this database holds the seed and this
    // test's item only.
    assert_eq!(names(&mut db).unwrap(), ["hammer", "saw", "level"]);
}

/// An async test: the attribute makes it a `#[tokio::test]`; the fill is
/// async too (this crate's driver blocks, so it runs off the runtime).
#[dbfork_client::test(inputs = ["migrations"], fill = |t: Database| async move {
    tokio::task::spawn_blocking(move || fill(&t)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
})]
async fn an_async_test_has_its_own_database(db: Lease) {
    let url = db.url().to_string();
    let listed = tokio::task::spawn_blocking(move || {
        let mut db = Db::connect(&url)?;
        add(&mut db, 4, "chisel")?;
        names(&mut db)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(listed, ["hammer", "saw", "chisel"]);
}

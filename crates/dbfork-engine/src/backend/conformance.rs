//! One suite over the [`Backend`] trait, run against every backend: each case
//! is written once, over [`AnyBackend`], and [`backend_cases!`] makes one test
//! per case per backend (`conformance::<backend>::<case>`). SQLite runs in a
//! temporary directory; PostgreSQL and MySQL/MariaDB on the servers
//! `DBFORK_TEST_POSTGRES_URL` and `DBFORK_TEST_MYSQL_URL` name (`scripts/test`
//! starts ephemeral ones), else on the usual local ones. A server that is not
//! there fails its tests: nothing is skipped.
//!
//! Every case asserts on what the server holds afterwards, and drops what it
//! made whatever happens. Its databases have the shape of a clone's name
//! (`AnyBackend::drop_database` refuses any other) with a run id that starts
//! with [`TAG`], so a leftover is easy to find: `dbfork_7e57…`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::{AnyBackend, Backend, CloneMethod, ConnectOptions};
use crate::error::Error;
use crate::process::Owner;
use crate::registry::{Entry, EntryKind, State};
use crate::url::{DbUrl, Kind};

/// The start of the run id of every database these tests make ("test").
const TAG: &str = "7e57";

/// How long a drop may take here.
const DROP_WAIT: Duration = Duration::from_secs(10);

/// The table every case fills, and its rows, in SQL every backend takes.
const TABLE_SQL: &[&str] = &[
    "CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(20) NOT NULL)",
    "INSERT INTO items VALUES (1, 'one'), (2, 'two'), (3, 'three')",
];

/// A backend under test: the URL it was opened with, the backend, and for
/// SQLite the directory that is its "server".
struct Server {
    url: DbUrl,
    db: AnyBackend,
    _dir: Option<tempfile::TempDir>,
}

/// The URL of the test server of `kind`: its variable, else the local default.
fn server_url(kind: Kind) -> DbUrl {
    let (var, default) = match kind {
        Kind::Postgres => (
            "DBFORK_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        ),
        Kind::Mysql => ("DBFORK_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
        Kind::Sqlite => unreachable!("SQLite runs in a temporary directory"),
    };
    let text = std::env::var(var).unwrap_or_else(|_| default.into());
    DbUrl::parse(&text).unwrap()
}

impl Server {
    /// A backend of `kind`: on the test server, or in a new temporary directory.
    async fn new(kind: Kind) -> Server {
        let (url, dir) = match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/main.db", dir.path().display());
                (DbUrl::parse(&url).unwrap(), Some(dir))
            }
            _ => (server_url(kind), None),
        };
        let db = AnyBackend::connect(&url, &ConnectOptions::default())
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Server { url, db, _dir: dir }
    }

    fn kind(&self) -> Kind {
        self.url.kind
    }

    /// Another backend on the same server (another dbfork, as it were).
    async fn connect_again(&self) -> AnyBackend {
        AnyBackend::connect(&self.url, &ConnectOptions::default())
            .await
            .unwrap()
    }

    /// The file of SQLite database `name`.
    fn sqlite_path(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.url.with_database(name).database.unwrap()).to_path_buf()
    }

    /// A session on database `name` outside the backend, by the server's own client library.
    async fn session(&self, name: &str) -> Session {
        match self.kind() {
            Kind::Postgres => {
                let mut config = tokio_postgres::Config::new();
                config
                    .user(self.url.user.as_deref().unwrap_or("postgres"))
                    .dbname(name)
                    .port(self.url.port.unwrap_or(5432));
                if let Some(p) = &self.url.password {
                    config.password(p.as_str());
                }
                match &self.url.socket {
                    Some(socket) => config.host_path(socket),
                    None => config.host(self.url.host.as_deref().unwrap_or("localhost")),
                };
                let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                Session::Postgres(client)
            }
            Kind::Mysql => {
                let mut opts = mysql_async::OptsBuilder::default()
                    .user(Some(self.url.user.as_deref().unwrap_or("root")))
                    .pass(self.url.password.clone())
                    .prefer_socket(false)
                    .tcp_port(self.url.port.unwrap_or(3306))
                    .ip_or_hostname(self.url.host.as_deref().unwrap_or("localhost"))
                    .db_name(Some(name));
                if let Some(socket) = &self.url.socket {
                    opts = opts.socket(Some(socket.display().to_string()));
                }
                Session::Mysql(mysql_async::Conn::new(opts).await.unwrap())
            }
            Kind::Sqlite => {
                Session::Sqlite(rusqlite::Connection::open(self.sqlite_path(name)).unwrap())
            }
        }
    }

    /// Runs `statements` on database `name`, on a session of their own.
    async fn run_sql(&self, name: &str, statements: &[&str]) {
        let mut session = self.session(name).await;
        for s in statements {
            session
                .run(s)
                .await
                .unwrap_or_else(|e| panic!("{s} on {name}: {e}"));
        }
        session.close().await;
    }

    /// The first column of the first row of `query` on database `name`, a count.
    async fn count(&self, name: &str, query: &str) -> i64 {
        let mut session = self.session(name).await;
        let n = match &mut session {
            Session::Postgres(c) => c.query_one(query, &[]).await.unwrap().get::<_, i64>(0),
            Session::Mysql(c) => {
                use mysql_async::prelude::Queryable;
                c.query_first::<i64, _>(query).await.unwrap().unwrap()
            }
            Session::Sqlite(c) => c.query_row(query, [], |r| r.get(0)).unwrap(),
        };
        session.close().await;
        n
    }

    /// Creates database `name` by plain SQL, without dbfork's mark, with one table in it.
    async fn create_unmarked(&self, name: &str) {
        match self.kind() {
            Kind::Sqlite => {}
            _ => {
                let admin = self.admin_database();
                self.run_sql(&admin, &[&format!("CREATE DATABASE {name}")])
                    .await
            }
        }
        self.run_sql(name, TABLE_SQL).await;
    }

    /// Drops database `name` by plain SQL (what no dbfork would drop).
    async fn drop_by_hand(&self, name: &str) {
        match self.kind() {
            Kind::Sqlite => match std::fs::remove_file(self.sqlite_path(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{name}: {e}"),
                _ => {}
            },
            kind => {
                let force = if kind == Kind::Postgres {
                    " WITH (FORCE)"
                } else {
                    ""
                };
                let admin = self.admin_database();
                self.run_sql(&admin, &[&format!("DROP DATABASE IF EXISTS {name}{force}")])
                    .await
            }
        }
    }

    /// The database of the URL, where plain SQL creates and drops others.
    fn admin_database(&self) -> String {
        let default = match self.kind() {
            Kind::Postgres => "postgres",
            _ => "mysql",
        };
        self.url.database.clone().unwrap_or_else(|| default.into())
    }

    /// Whether `name` is among the databases of the server (through the trait).
    async fn exists(&self, name: &str) -> bool {
        let found = self.db.databases(name).await.unwrap();
        found.iter().any(|n| n == name)
    }
}

/// A session on a database, outside every backend.
enum Session {
    Postgres(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
    Sqlite(rusqlite::Connection),
}

impl Session {
    async fn run(&mut self, statement: &str) -> Result<(), String> {
        match self {
            Session::Postgres(c) => c.batch_execute(statement).await.map_err(|e| e.to_string()),
            Session::Mysql(c) => {
                use mysql_async::prelude::Queryable;
                c.query_drop(statement).await.map_err(|e| e.to_string())
            }
            Session::Sqlite(c) => c.execute_batch(statement).map_err(|e| e.to_string()),
        }
    }

    async fn close(self) {
        match self {
            Session::Postgres(c) => drop(c),
            Session::Mysql(c) => {
                let _ = c.disconnect().await;
            }
            Session::Sqlite(c) => drop(c),
        }
    }
}

/// A run id of these tests: [`TAG`] and 6 hex digits, unique per call.
fn test_run_id() -> String {
    format!("{TAG}{}", &crate::names::new_run_id()[..6])
}

/// `count` new database names of one run, `dbfork_7e57xxxxxx_<i>`.
fn unique_names(count: usize) -> Vec<String> {
    let run = test_run_id();
    (0..count)
        .map(|i| crate::names::clone_name(&run, i))
        .collect()
}

/// Runs `body`, then drops `names` whatever happened, then passes a failure
/// on. A database that carries no mark (made by plain SQL) is dropped by
/// plain SQL; the names are this test's own.
async fn with_cleanup(server: &Server, names: &[&str], body: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for name in names {
        match server.db.drop_database(name, DROP_WAIT).await {
            Ok(()) => {}
            Err(Error::NotMarked { .. }) => server.drop_by_hand(name).await,
            Err(e) => dbfork_meta::say!("cleanup of {name} failed: {e}"),
        }
        if server.exists(name).await {
            dbfork_meta::say!("cleanup of {name} left it behind");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Makes template `name`: created empty, given [`TABLE_SQL`], then
/// described (before sealing: PostgreSQL describes only what accepts
/// connections), then sealed. Returns the description.
async fn build_template(server: &Server, name: &str) -> Vec<String> {
    server.db.create_empty(name).await.unwrap();
    server.run_sql(name, TABLE_SQL).await;
    let described = server.db.describe(name).await.unwrap();
    server.db.seal_template(name).await.unwrap();
    described
}

async fn create_empty_is_listed_marked_counted_and_measured(kind: Kind) {
    let server = Server::new(kind).await;
    let names = unique_names(2);
    let (name, absent) = (&names[0], &names[1]);
    with_cleanup(&server, &[name], async {
        assert!(!server.exists(name).await);
        server.db.create_empty(name).await.unwrap();
        assert_eq!(server.db.databases(name).await.unwrap(), vec![name.clone()]);
        assert!(server
            .db
            .databases(crate::names::PREFIX)
            .await
            .unwrap()
            .contains(name));
        assert_eq!(server.db.marked(name).await.unwrap(), Some(true));
        assert_eq!(server.db.marked(absent).await.unwrap(), None);
        assert_eq!(server.db.table_count(name).await.unwrap(), 0);
        server.run_sql(name, TABLE_SQL).await;
        assert_eq!(server.db.table_count(name).await.unwrap(), 1);
        assert_eq!(server.count(name, "SELECT COUNT(*) FROM items").await, 3);
        let bytes = server.db.database_size(name).await.unwrap();
        assert!(bytes > 0, "{name} with a table measures {bytes} bytes");
        if kind == Kind::Sqlite {
            assert!(server.db.database_size(absent).await.is_err());
        }
    })
    .await;
    assert!(!server.exists(name).await, "{name} was left behind");
}

async fn clone_has_the_templates_rows_and_mark(kind: Kind) {
    let server = Server::new(kind).await;
    let names = unique_names(2);
    let (tpl, clone) = (&names[0], &names[1]);
    with_cleanup(&server, &[clone, tpl], async {
        build_template(&server, tpl).await;
        server
            .db
            .clone_database(tpl, clone, CloneMethod::default_for(kind))
            .await
            .unwrap();
        let listed = server
            .db
            .databases(&format!("{}_", tpl.rsplit_once('_').unwrap().0))
            .await
            .unwrap();
        assert_eq!(listed, vec![tpl.clone(), clone.clone()]);
        assert_eq!(server.db.marked(clone).await.unwrap(), Some(true));
        assert_eq!(server.db.marked(tpl).await.unwrap(), Some(true));
        assert_eq!(server.db.table_count(clone).await.unwrap(), 1);
        assert_eq!(
            server
                .count(
                    clone,
                    "SELECT COUNT(*) FROM items WHERE label IN ('one', 'two', 'three')"
                )
                .await,
            3
        );
        // The clone is its own: a change to it leaves the template alone.
        server
            .run_sql(clone, &["INSERT INTO items VALUES (4, 'four')"])
            .await;
        assert_eq!(server.count(clone, "SELECT COUNT(*) FROM items").await, 4);
        let again = unique_names(1).remove(0);
        with_cleanup(&server, &[&again], async {
            server
                .db
                .clone_database(tpl, &again, CloneMethod::default_for(kind))
                .await
                .unwrap();
            assert_eq!(server.count(&again, "SELECT COUNT(*) FROM items").await, 3);
        })
        .await;
    })
    .await;
    for name in &names {
        assert!(!server.exists(name).await, "{name} was left behind");
    }
}

async fn drop_removes_it_and_ends_its_sessions(kind: Kind) {
    let server = Server::new(kind).await;
    let names = unique_names(1);
    let name = &names[0];
    with_cleanup(&server, &[name], async {
        server.db.create_empty(name).await.unwrap();
        server.run_sql(name, TABLE_SQL).await;
        // One session idle, one inside a transaction (SQLite: an open connection to the file).
        let mut idle = server.session(name).await;
        idle.run("SELECT 1").await.unwrap();
        let mut busy = server.session(name).await;
        let begin = match kind {
            Kind::Mysql => "START TRANSACTION",
            _ => "BEGIN",
        };
        busy.run(begin).await.unwrap();
        busy.run("UPDATE items SET label = 'uno' WHERE id = 1")
            .await
            .unwrap();

        let started = Instant::now();
        server.db.drop_database(name, DROP_WAIT).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(!server.exists(name).await);
        assert_eq!(server.db.marked(name).await.unwrap(), None);
        if kind != Kind::Sqlite {
            assert!(
                idle.run("SELECT 1").await.is_err(),
                "the idle session must be gone"
            );
            assert!(
                busy.run("COMMIT").await.is_err(),
                "the transaction must be gone"
            );
        }
        idle.close().await;
        busy.close().await;
        // Dropping what does not exist succeeds.
        server.db.drop_database(name, DROP_WAIT).await.unwrap();
    })
    .await;
    assert!(!server.exists(name).await, "{name} was left behind");
}

async fn drop_refuses_a_database_without_the_mark(kind: Kind) {
    let server = Server::new(kind).await;
    let names = unique_names(1);
    let name = &names[0];
    with_cleanup(&server, &[name], async {
        server.create_unmarked(name).await;
        assert!(server.exists(name).await);
        // MySQL proper (not MariaDB) keeps no schema comment: no mark to miss there.
        let version = server.db.server_version().await.unwrap();
        if kind == Kind::Mysql && !version.to_ascii_lowercase().contains("mariadb") {
            assert_eq!(server.db.marked(name).await.unwrap(), Some(true));
            return;
        }
        assert_eq!(server.db.marked(name).await.unwrap(), Some(false));
        match server.db.drop_database(name, DROP_WAIT).await {
            Err(Error::NotMarked { name: refused, .. }) => assert_eq!(&refused, name),
            Err(e) => panic!("expected NotMarked, got {e}"),
            Ok(()) => panic!("{name} was dropped without dbfork's mark"),
        }
        assert!(server.exists(name).await, "{name} must still be there");
        assert_eq!(server.count(name, "SELECT COUNT(*) FROM items").await, 3);
        // Nor is any name of another shape dropped, whatever it is.
        let foreign = format!("dbfork_test_{}", &name["dbfork_".len()..]);
        assert!(matches!(
            server.db.drop_database(&foreign, DROP_WAIT).await,
            Err(Error::NotDbforkName { .. })
        ));
    })
    .await;
    assert!(!server.exists(name).await, "{name} was left behind");
}

async fn registry_round_trip(kind: Kind) {
    let server = Server::new(kind).await;
    // A registry of its own: a private maintenance database (SQLite: the private directory).
    let names = unique_names(1);
    let maint = &names[0];
    let url = match kind {
        Kind::Sqlite => server.url.clone(),
        _ => {
            server.db.create_empty(maint).await.unwrap();
            server.url.with_database(maint)
        }
    };
    with_cleanup(&server, &[maint], async {
        let db = AnyBackend::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(db.registry_list().await.unwrap().is_empty());
        assert!(
            !db.registry_drop_if_empty().await.unwrap(),
            "there is no registry yet"
        );
        let mut owner = Owner::this_process();
        // Clock ticks since boot: large, never beyond a signed 64-bit column.
        owner.start = i64::MAX as u64 - 7;
        let mut a = Entry::new(
            "dbfork_tpl_x".into(),
            EntryKind::Template,
            &"f".repeat(64),
            "setupkey",
            "",
            &owner,
        );
        a.created_at -= 10;
        let b = Entry::new(
            "dbfork_run_0".into(),
            EntryKind::Clone,
            &"f".repeat(64),
            "setupkey",
            "run",
            &Owner::nobody(),
        );
        db.registry_put(&[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(
            db.registry_list().await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        // A put of a name that is there replaces its row.
        a.state = State::Ready;
        a.last_used_at += 5;
        db.registry_put(std::slice::from_ref(&a)).await.unwrap();
        assert_eq!(
            db.registry_list().await.unwrap(),
            vec![a.clone(), b.clone()]
        );
        assert!(!db.registry_drop_if_empty().await.unwrap(), "it holds rows");
        db.registry_remove(&a.name).await.unwrap();
        db.registry_remove("not_there").await.unwrap();
        assert_eq!(db.registry_list().await.unwrap(), vec![b.clone()]);
        // Another backend finds the rows that are there.
        let again = AnyBackend::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(again.registry_list().await.unwrap(), vec![b.clone()]);
        drop(again);
        db.registry_remove(&b.name).await.unwrap();
        assert!(db.registry_drop_if_empty().await.unwrap());
        // Gone, for a backend connected afterwards (and, below, for one
        // connected before).
        let later = AnyBackend::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        assert!(later.registry_list().await.unwrap().is_empty());
        assert!(!later.registry_drop_if_empty().await.unwrap(), "it is gone");
        // A writer that comes later makes it again.
        later.registry_put(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(db.registry_list().await.unwrap(), vec![b.clone()]);
        later.registry_remove(&b.name).await.unwrap();
        assert!(later.registry_drop_if_empty().await.unwrap());
        // One connected before the registry went (a long-lived dbfork serve)
        // reads it as empty and makes it again, instead of failing.
        assert!(db.registry_list().await.unwrap().is_empty());
        db.registry_put(std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(later.registry_list().await.unwrap(), vec![b.clone()]);
        later.registry_remove(&b.name).await.unwrap();
        assert!(later.registry_drop_if_empty().await.unwrap());
        db.registry_remove(&b.name).await.unwrap();
    })
    .await;
    assert!(!server.exists(maint).await, "{maint} was left behind");
}

async fn locks_exclude_and_time_out(kind: Kind) {
    let server = Server::new(kind).await;
    let (a, b) = (&server.db, &server.connect_again().await);
    let run = test_run_id();
    // A long key too: MySQL's lock names have a limit.
    for key in [
        format!("dbfork-test-lock-{run}"),
        format!("dbfork-test-{run}-{}", "k".repeat(100)),
    ] {
        let held = a.lock(&key, Duration::from_secs(1)).await.unwrap();
        let started = Instant::now();
        match b.lock(&key, Duration::from_millis(1500)).await {
            Err(Error::LockTimeout { key: k, .. }) => assert_eq!(k, key),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("the lock {key} was taken twice"),
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
            "{took:?}"
        );
        a.unlock(held).await.unwrap();
        let second = b.lock(&key, Duration::from_secs(2)).await.unwrap();
        // A lock whose holder goes away without unlocking is released.
        drop(second);
        let third = a.lock(&key, Duration::from_secs(5)).await.unwrap();
        a.unlock(third).await.unwrap();
    }
    // No wait at all: one try.
    let key = format!("dbfork-test-zero-wait-{run}");
    let held = a.lock(&key, Duration::ZERO).await.unwrap();
    assert!(matches!(
        b.lock(&key, Duration::ZERO).await,
        Err(Error::LockTimeout { .. })
    ));
    a.unlock(held).await.unwrap();
    let again = b.lock(&key, Duration::ZERO).await.unwrap();
    b.unlock(again).await.unwrap();
}

/// Every clone method of `kind`, the default first.
fn methods(kind: Kind) -> Vec<CloneMethod> {
    let mut all = vec![CloneMethod::default_for(kind)];
    for choice in CloneMethod::choices(kind).split(", ") {
        let method = CloneMethod::parse(kind, choice).unwrap();
        if !all.contains(&method) {
            all.push(method);
        }
    }
    all
}

async fn describe_of_template_and_clones_agree(kind: Kind) {
    let server = Server::new(kind).await;
    let names = unique_names(3);
    let (tpl, clones) = (&names[0], &names[1..]);
    let methods = methods(kind);
    assert_eq!(methods.len(), clones.len(), "{methods:?}");
    with_cleanup(&server, &[&names[2], &names[1], tpl], async {
        let template = build_template(&server, tpl).await;
        assert!(
            template
                .iter()
                .any(|l| l.starts_with("rows ") && l.ends_with(" 3")),
            "{template:#?}"
        );
        if kind != Kind::Postgres {
            // Sealing changes nothing in it (PostgreSQL: a sealed template takes no connection).
            assert_eq!(server.db.describe(tpl).await.unwrap(), template);
        }
        for (method, clone) in methods.iter().zip(clones) {
            server.db.clone_database(tpl, clone, *method).await.unwrap();
            assert_eq!(
                server.db.describe(clone).await.unwrap(),
                template,
                "{method:?}"
            );
        }
        // A change shows.
        let clone = &clones[0];
        server
            .run_sql(clone, &["INSERT INTO items VALUES (4, 'four')"])
            .await;
        assert_ne!(server.db.describe(clone).await.unwrap(), template);
    })
    .await;
    for name in &names {
        assert!(!server.exists(name).await, "{name} was left behind");
    }
}

/// The cases, each an `async fn(Kind)` above, as tests of one backend.
macro_rules! cases {
    ($kind:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case($kind).await
            }
        )*
    };
}

/// A module of every case per backend: `backend_cases!(sqlite: Sqlite)` makes
/// `conformance::sqlite::<case>` for each case, run on [`Kind::Sqlite`].
macro_rules! backend_cases {
    ($($backend:ident: $kind:ident),* $(,)?) => {
        $(
            mod $backend {
                use crate::url::Kind;

                cases!(
                    Kind::$kind;
                    create_empty_is_listed_marked_counted_and_measured,
                    clone_has_the_templates_rows_and_mark,
                    drop_removes_it_and_ends_its_sessions,
                    drop_refuses_a_database_without_the_mark,
                    registry_round_trip,
                    locks_exclude_and_time_out,
                    describe_of_template_and_clones_agree,
                );
            }
        )*
    };
}

backend_cases!(sqlite: Sqlite, postgres: Postgres, mysql: Mysql);

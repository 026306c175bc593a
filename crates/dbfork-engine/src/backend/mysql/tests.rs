//! The MySQL backend's tests, against the server DBFORK_TEST_MYSQL_URL names
//! (`scripts/test` starts an ephemeral MariaDB for them): what only MySQL has.
//! The cases every backend shares (registry, locks, marks, drops) are in
//! `backend/conformance.rs`.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use super::*;

fn test_url() -> DbUrl {
    let text = std::env::var("DBFORK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/mysql".into());
    DbUrl::parse(&text).unwrap()
}

async fn backend() -> Mysql {
    Mysql::connect(&test_url(), &ConnectOptions::default())
        .await
        .unwrap()
}

fn unique(tag: &str) -> String {
    format!("dbfork_test_{tag}_{}", crate::names::new_run_id())
}

/// A connection outside the backend's pool, on `schema`.
async fn raw(db: &Mysql, schema: Option<&str>) -> Conn {
    let opts = OptsBuilder::from_opts(db.opts.clone()).db_name(schema.map(str::to_string));
    Conn::new(opts).await.unwrap()
}

async fn run(conn: &mut Conn, statements: &[&str]) {
    for s in statements {
        conn.query_drop(*s)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// Runs `body`, then drops `names` whatever happened, then passes a failure on.
async fn with_cleanup(db: &Mysql, names: &[&str], body: impl Future<Output = ()>) {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    for name in names {
        if let Err(e) = db.drop_database(name, Duration::from_secs(10)).await {
            dbfork_meta::say!("cleanup of {name} failed: {e}");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

const TEMPLATE_SQL: &[&str] = &[
    "CREATE TABLE parent (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL, \
     created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, UNIQUE KEY uq_parent_name (name)) COMMENT 'parents'",
    "CREATE TABLE child (id BIGINT AUTO_INCREMENT PRIMARY KEY, parent_id INT NOT NULL, qty INT NOT NULL DEFAULT 0, \
     total INT AS (qty * 2) STORED, half INT AS (qty DIV 2) VIRTUAL, note TEXT, \
     KEY idx_qty_parent (qty, parent_id), FULLTEXT KEY ft_note (note), \
     CONSTRAINT fk_child_parent FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE ON UPDATE RESTRICT, \
     CONSTRAINT chk_qty CHECK (qty >= 0))",
    "CREATE TABLE grandchild (id INT PRIMARY KEY, child_id BIGINT, parent_id INT, \
     CONSTRAINT fk_gc_child FOREIGN KEY (child_id) REFERENCES child (id) ON DELETE SET NULL, \
     CONSTRAINT fk_gc_parent FOREIGN KEY (parent_id) REFERENCES parent (id))",
    "CREATE TABLE node (id INT PRIMARY KEY, up INT NULL, CONSTRAINT fk_node_up FOREIGN KEY (up) REFERENCES node (id))",
    "CREATE TABLE gap (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB",
    "CREATE TABLE zero (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(10)) ROW_FORMAT=DYNAMIC",
    "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(100) CHARACTER SET latin1 COLLATE latin1_bin)",
    "CREATE TABLE empty_one (id INT PRIMARY KEY, b BLOB, d DECIMAL(12, 3) DEFAULT 1.5)",
    "CREATE TRIGGER trg_child_ai AFTER INSERT ON child FOR EACH ROW INSERT INTO log (msg) VALUES (CONCAT('child ', NEW.id))",
    "CREATE TRIGGER trg_child_ai2 AFTER INSERT ON child FOR EACH ROW FOLLOWS trg_child_ai \
     INSERT INTO log (msg) VALUES (CONCAT('again ', NEW.id))",
    "INSERT INTO parent (name) VALUES ('a'), ('b'), ('c')",
    "INSERT INTO child (parent_id, qty, note) VALUES (1, 1, 'one'), (1, 2, 'two'), (2, 3, 'three'), (2, 4, NULL), (3, 5, 'five'), (3, 6, 'six')",
    "INSERT INTO grandchild VALUES (1, 1, 1), (2, 3, 2), (3, NULL, 3)",
    "INSERT INTO node VALUES (1, NULL), (2, 1), (3, 2)",
    "INSERT INTO gap (v) VALUES (1), (2), (3), (4), (5)",
    "DELETE FROM gap WHERE id >= 4",
    "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO')",
    "INSERT INTO zero VALUES (0, 'zero'), (1, 'one')",
    "SET SESSION sql_mode = DEFAULT",
    "CREATE VIEW v_counts AS SELECT p.id, p.name, COUNT(c.id) AS n FROM parent p LEFT JOIN child c ON c.parent_id = p.id GROUP BY p.id, p.name",
    // Sorts before the view it reads, so the clone must retry it.
    "CREATE VIEW a_busy AS SELECT id, name FROM v_counts WHERE n > 1",
    "CREATE FUNCTION child_count(pid INT) RETURNS INT READS SQL DATA RETURN (SELECT COUNT(*) FROM child WHERE parent_id = pid)",
    "CREATE VIEW v_fn AS SELECT id, child_count(id) AS n FROM parent",
    "CREATE PROCEDURE add_parent(IN n VARCHAR(50)) MODIFIES SQL DATA BEGIN INSERT INTO parent (name) VALUES (n); END",
    "CREATE EVENT ev_trim ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' DISABLE DO DELETE FROM log WHERE id < 0",
];

const MARIADB_SQL: &[&str] = &[
    "CREATE SEQUENCE seq_orders START WITH 100 INCREMENT BY 5",
    "CREATE TABLE versioned (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING",
    "INSERT INTO versioned VALUES (1, 1), (2, 2)",
    "UPDATE versioned SET v = 3 WHERE id = 1",
];

const CATALOG: &[&str] = &[
    "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, ROW_FORMAT, TABLE_COLLATION, AUTO_INCREMENT, CREATE_OPTIONS, TABLE_COMMENT \
     FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY 1",
    "SELECT TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, IS_NULLABLE, COLUMN_TYPE, CHARACTER_SET_NAME, \
     COLLATION_NAME, COLUMN_KEY, EXTRA, GENERATION_EXPRESSION, COLUMN_COMMENT \
     FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? ORDER BY 1, 3",
    "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COLUMN_NAME, SUB_PART, INDEX_TYPE, NULLABLE \
     FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? ORDER BY 1, 2, 4",
    "SELECT CONSTRAINT_NAME, TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, POSITION_IN_UNIQUE_CONSTRAINT, \
     REFERENCED_TABLE_SCHEMA, REFERENCED_TABLE_NAME, REFERENCED_COLUMN_NAME \
     FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = ? ORDER BY 2, 1, 4",
    "SELECT CONSTRAINT_NAME, TABLE_NAME, UNIQUE_CONSTRAINT_NAME, UPDATE_RULE, DELETE_RULE, REFERENCED_TABLE_NAME \
     FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = ? ORDER BY 2, 1",
    "SELECT CONSTRAINT_NAME, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
     WHERE CONSTRAINT_SCHEMA = ? ORDER BY 2, 1",
    "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION, IS_UPDATABLE, DEFINER, SECURITY_TYPE, ALGORITHM \
     FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ? ORDER BY 1",
    "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_ORDER, ACTION_TIMING, ACTION_STATEMENT, \
     SQL_MODE, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? ORDER BY 1",
    "SELECT ROUTINE_NAME, ROUTINE_TYPE, DATA_TYPE, ROUTINE_DEFINITION, IS_DETERMINISTIC, SQL_DATA_ACCESS, \
     SECURITY_TYPE, SQL_MODE, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? ORDER BY 1",
    "SELECT EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, INTERVAL_FIELD, STARTS, STATUS, ON_COMPLETION, \
     SQL_MODE, TIME_ZONE, DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY 1",
];

/// The catalog of `schema` with its name replaced by `SELF`, and each table's row count.
async fn snapshot(conn: &mut Conn, schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sql in CATALOG {
        let rows: Vec<Row> = conn
            .exec(*sql, (schema,))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for row in rows {
            let values: Vec<String> = row.unwrap().into_iter().map(|v| v.as_sql(false)).collect();
            let what = sql
                .split("information_schema.")
                .nth(1)
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("");
            out.push(format!(
                "{what}: {}",
                values.join(" | ").replace(schema, "SELF")
            ));
        }
    }
    let tables: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW' ORDER BY 1",
            (schema,),
        )
        .await
        .unwrap();
    for t in tables {
        let n: Option<u64> = conn
            .query_first(format!(
                "SELECT COUNT(*) FROM {}.{}",
                ident(schema),
                ident(&t)
            ))
            .await
            .unwrap();
        out.push(format!("rows {t}: {}", n.unwrap()));
    }
    out
}

fn assert_same(template: &[String], clone: &[String], label: &str) {
    let missing: Vec<&String> = template.iter().filter(|l| !clone.contains(l)).collect();
    let extra: Vec<&String> = clone.iter().filter(|l| !template.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && template.len() == clone.len(),
        "{label}: the clone differs from the template\nonly in the template:\n{missing:#?}\nonly in the clone:\n{extra:#?}"
    );
}

async fn build_test_template(db: &Mysql, name: &str) {
    db.create_empty(name).await.unwrap();
    let mut conn = raw(db, Some(name)).await;
    run(&mut conn, TEMPLATE_SQL).await;
    if db.mariadb {
        run(&mut conn, MARIADB_SQL).await;
        let _: Option<i64> = conn
            .query_first("SELECT NEXTVAL(seq_orders)")
            .await
            .unwrap();
    }
    // Left open on purpose: sealing must end it.
    db.seal_template(name).await.unwrap();
    assert!(
        conn.query_drop("SELECT 1").await.is_err(),
        "sealing must end the setup's sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_clones_match_the_template() {
    let mut db = backend().await;
    let tpl = unique("tpl");
    let by_show = unique("show");
    let by_like = unique("like");
    let by_show_1 = unique("show1");
    let names = [
        tpl.as_str(),
        by_show.as_str(),
        by_like.as_str(),
        by_show_1.as_str(),
    ];
    let cleanup = backend().await;
    with_cleanup(&cleanup, &names, async {
        build_test_template(&db, &tpl).await;
        let mut conn = raw(&db, None).await;
        let expected = snapshot(&mut conn, &tpl).await;
        assert!(expected.iter().any(|l| l.contains("VIEWS: 'a_busy'")), "{expected:#?}");
        assert!(expected.iter().any(|l| l.starts_with("TABLES: 'gap'") && l.contains("| 6 |")), "{expected:#?}");

        for (clone, method, k) in [
            (&by_show, CloneMethod::ShowCreate, 3),
            (&by_like, CloneMethod::CreateLike, 2),
            (&by_show_1, CloneMethod::ShowCreate, 1),
        ] {
            db.set_clone_connections(k);
            db.clone_database(&tpl, clone, method).await.unwrap();
            let got = snapshot(&mut conn, clone).await;
            assert_same(&expected, &got, &format!("{method:?} with {k} connections"));
        }

        // The clone works on its own objects: routines, triggers and counters act on it, not the template.
        let clone = ident(&by_like);
        run(
            &mut conn,
            &[
                &format!("CALL {clone}.add_parent('d')"),
                &format!("INSERT INTO {clone}.child (parent_id, qty) VALUES (4, 7)"),
                &format!("INSERT INTO {clone}.gap (v) VALUES (9)"),
            ],
        )
        .await;
        let row: Option<(i64, i64, i64, i64)> = conn
            .query_first(format!(
                "SELECT (SELECT MAX(id) FROM {clone}.parent), {clone}.child_count(4), \
                 (SELECT COUNT(*) FROM {clone}.log WHERE msg LIKE '%7'), (SELECT MAX(id) FROM {clone}.gap)"
            ))
            .await
            .unwrap();
        assert_eq!(row, Some((4, 1, 2, 6)));
        for fk_clone in [&by_show, &by_like] {
            let orphan = conn
                .query_drop(format!("INSERT INTO {}.child (parent_id, qty) VALUES (99, 1)", ident(fk_clone)))
                .await;
            assert!(orphan.is_err(), "{fk_clone}: the foreign key must be enforced");
        }
        let zero: Option<String> = conn.query_first(format!("SELECT v FROM {clone}.zero WHERE id = 0")).await.unwrap();
        assert_eq!(zero.as_deref(), Some("zero"));
        assert_eq!(snapshot(&mut conn, &tpl).await, expected, "the template must not change");
        conn.disconnect().await.unwrap();
    })
    .await;
    for name in names {
        assert!(
            cleanup.databases(name).await.unwrap().is_empty(),
            "{name} was left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_drop_ends_sessions_and_transactions() {
    let db = backend().await;
    let name = unique("drop");
    let filling = unique("filling");
    with_cleanup(&db, &[&name, &filling], async {
        db.create_empty(&name).await.unwrap();
        let mut setup = raw(&db, Some(&name)).await;
        run(
            &mut setup,
            &[
                "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
                "INSERT INTO t VALUES (1, 1), (2, 2)",
            ],
        )
        .await;
        setup.disconnect().await.unwrap();

        let mut idle = raw(&db, Some(&name)).await;
        run(&mut idle, &["SELECT 1"]).await;
        let mut busy = raw(&db, Some(&name)).await;
        run(
            &mut busy,
            &["START TRANSACTION", "UPDATE t SET v = v + 1 WHERE id = 1"],
        )
        .await;

        // Another client that keeps coming back, each time inside a transaction for a while.
        let stop = Arc::new(AtomicBool::new(false));
        let opts = OptsBuilder::from_opts(db.opts.clone()).db_name(Some(name.clone()));
        let stopper = stop.clone();
        let pest = tokio::spawn(async move {
            let mut rounds = 0u32;
            while !stopper.load(Ordering::Relaxed) {
                if let Ok(Ok(mut c)) =
                    tokio::time::timeout(Duration::from_secs(1), Conn::new(opts.clone())).await
                {
                    let _ = c.query_drop("START TRANSACTION").await;
                    let _ = c.query_drop("SELECT * FROM t FOR UPDATE").await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = c.query_drop("COMMIT").await;
                    rounds += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            rounds
        });
        // A statement from another of dbfork's databases that reads it, like
        // the INSERT ... SELECT of a clone in flight (its session uses the clone).
        db.create_empty(&filling).await.unwrap();
        let mut reader = raw(&db, Some(&filling)).await;
        let quoted = ident(&name);
        let reading = tokio::spawn(async move {
            let r = reader
                .query_drop(format!("SELECT SLEEP(20), COUNT(*) FROM {quoted}.t"))
                .await;
            (r, reader)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut admin = db.take().await.unwrap();
        let holders = db.holders(&mut admin, &name).await;
        drop(admin);
        assert!(
            holders.contains(&format!("session {} (user ", idle.id())),
            "{holders}"
        );
        assert!(
            holders.contains(&format!("session {} (user ", busy.id())),
            "{holders}"
        );

        let started = Instant::now();
        db.drop_database(&name, Duration::from_secs(10))
            .await
            .unwrap();
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), pest).await;
        assert!(took < Duration::from_secs(5), "the drop took {took:?}");
        assert!(db.databases(&name).await.unwrap().is_empty());
        assert!(
            idle.query_drop("SELECT 1").await.is_err(),
            "the idle session must be gone"
        );
        let (_, mut reader) = tokio::time::timeout(Duration::from_secs(5), reading)
            .await
            .unwrap()
            .unwrap();
        assert!(
            reader.query_drop("SELECT 1").await.is_err(),
            "the reading statement must be gone"
        );
        assert!(
            busy.query_drop("COMMIT").await.is_err(),
            "the open transaction must be gone"
        );
        // Dropping what does not exist succeeds at once.
        let started = Instant::now();
        db.drop_database(&name, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}

#[tokio::test]
async fn mysql_connect_errors_hide_the_password() {
    let mut url = test_url();
    url.password = Some("hunter2-secret".into());
    url.user = Some("dbfork_no_such_user".into());
    match Mysql::connect(&url, &ConnectOptions::default()).await {
        Err(e @ Error::Connect { .. }) => {
            let text = e.to_string();
            assert!(!text.contains("hunter2"), "{text}");
        }
        Err(e) => panic!("expected a connect error, got {e}"),
        Ok(_) => panic!("an unknown user connected"),
    }
    let refused = DbUrl::parse("mysql://root:hunter2@127.0.0.1:1/mysql").unwrap();
    let err = Mysql::connect(&refused, &ConnectOptions::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"));
    // A server that never answers: a listener that accepts and stays silent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = DbUrl::parse(&format!("mysql://root:hunter2@127.0.0.1:{port}/mysql")).unwrap();
    let options = ConnectOptions {
        connect_timeout: Duration::from_millis(300),
    };
    let started = Instant::now();
    let err = Mysql::connect(&silent, &options).await.err().unwrap();
    assert!(matches!(err, Error::ConnectTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!err.to_string().contains("hunter2"));
    drop(listener);
}

/// Ignored by default: it creates the schema `_dbfork` on the server (and drops it if it made it).
#[tokio::test]
#[ignore]
async fn mysql_default_maintenance_schema_and_version() {
    let mut url = test_url();
    let existed = backend()
        .await
        .databases(DEFAULT_MAINTENANCE)
        .await
        .unwrap()
        .len()
        == 1;
    url.database = None;
    let db = Mysql::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(db.maintenance, DEFAULT_MAINTENANCE);
    assert!(db
        .databases("_dbfor")
        .await
        .unwrap()
        .contains(&DEFAULT_MAINTENANCE.to_string()));
    let version = db.server_version().await.unwrap();
    assert!(
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{version}"
    );
    db.registry_list().await.unwrap();
    if !existed {
        let mut conn = db.take().await.unwrap();
        conn.query_drop(format!("DROP DATABASE {}", ident(DEFAULT_MAINTENANCE)))
            .await
            .unwrap();
    }
}

#[test]
fn mysql_client_env() {
    let url = DbUrl::parse("mysql://app:s3cret@db.local:3307/mysql").unwrap();
    // The env itself needs no server: build a backend value by hand.
    let backend = Mysql {
        url: url.clone(),
        options: ConnectOptions::default(),
        opts: Opts::from(OptsBuilder::default()),
        maintenance: "mysql".into(),
        pool: Pool::new(OptsBuilder::default()),
        mariadb: true,
        marks: true,
        clone_connections: 2,
        filling: Semaphore::new(FILLING_BUDGET),
        templates: Mutex::new(HashMap::new()),
        registry_ready: AtomicBool::new(false),
    };
    let env: HashMap<String, String> = backend.client_env("dbfork_x_0").into_iter().collect();
    assert_eq!(env["MYSQL_HOST"], "db.local");
    assert_eq!(env["MYSQL_TCP_PORT"], "3307");
    assert_eq!(env["MYSQL_USER"], "app");
    assert_eq!(env["MYSQL_PWD"], "s3cret");
    assert_eq!(env["MYSQL_DATABASE"], "dbfork_x_0");
    assert!(!env.contains_key("MYSQL_UNIX_PORT"));
    let socket = DbUrl::parse("mysql://root@/mysql?socket=/run/mysqld/mysqld.sock").unwrap();
    let backend = Mysql {
        url: socket,
        ..backend
    };
    let env: HashMap<String, String> = backend.client_env("d").into_iter().collect();
    assert_eq!(env["MYSQL_UNIX_PORT"], "/run/mysqld/mysqld.sock");
    assert_eq!(env["MYSQL_HOST"], "localhost");
    assert!(!env.contains_key("MYSQL_PWD"));
}

#[test]
fn mysql_text_helpers() {
    let text = b"select `tpl`.`t`.`a` AS `a` from `tpl`.`t` join tpl.u join xtpl.v join `tpl_2`.w where s = '`tpl`'";
    assert_eq!(
        String::from_utf8(requalify(text, "tpl", "cl")).unwrap(),
        "select `cl`.`t`.`a` AS `a` from `cl`.`t` join `cl`.u join xtpl.v join `tpl_2`.w where s = '`tpl`'"
    );
    let create = b"CREATE TABLE `b` (\n  `id` int(11) NOT NULL,\n  KEY `fk` (`a`),\n  CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `a` (`id`) ON DELETE CASCADE,\n  CONSTRAINT `chk` CHECK (`id` > 0)\n) ENGINE=InnoDB";
    assert_eq!(
        foreign_key_clauses(create),
        vec!["CONSTRAINT `fk` FOREIGN KEY (`a`) REFERENCES `a` (`id`) ON DELETE CASCADE"]
    );
    assert!(is_generated("VIRTUAL GENERATED") && is_generated("STORED GENERATED"));
    assert!(
        !is_generated("DEFAULT_GENERATED on update CURRENT_TIMESTAMP")
            && !is_generated("auto_increment")
    );
    assert_eq!(lock_name("short"), "short");
    let long = lock_name(&"x".repeat(200));
    assert!(long.len() <= MAX_LOCK_NAME && long != lock_name(&"y".repeat(200)));
    assert_eq!(ident("a`b"), "`a``b`");
}
/// A template of 160 tables (foreign keys, secondary indexes, about 10,000 rows), then the
/// time of one clone for each method and number of connections, and of 4 clones at once.
/// `cargo test -p dbfork-engine --no-default-features --features mysql mysql_bench -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn mysql_bench_clone_methods() {
    const TABLES: usize = 160;
    const ROWS: usize = 63;
    let mut db = backend().await;
    let tpl = unique("benchtpl");
    let cleanup = backend().await;
    let clones: Vec<String> = (0..4).map(|i| format!("{tpl}_c{i}")).collect();
    let mut names: Vec<&str> = vec![&tpl];
    names.extend(clones.iter().map(String::as_str));
    with_cleanup(&cleanup, &names, async {
        db.create_empty(&tpl).await.unwrap();
        let mut conn = raw(&db, Some(&tpl)).await;
        let started = Instant::now();
        for i in 0..TABLES {
            let fk = if i == 0 {
                String::new()
            } else {
                format!(", CONSTRAINT fk_t{i:03}_parent FOREIGN KEY (parent_id) REFERENCES t{:03} (id)", (i - 1) / 2)
            };
            conn.query_drop(format!(
                "CREATE TABLE t{i:03} (id INT AUTO_INCREMENT PRIMARY KEY, parent_id INT NULL, \
                 code VARCHAR(32) NOT NULL, name VARCHAR(100) NOT NULL DEFAULT '', amount DECIMAL(10, 2), \
                 created DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, flag TINYINT NOT NULL DEFAULT 0, \
                 UNIQUE KEY uq_t{i:03}_code (code), KEY ix_t{i:03}_name_created (name, created){fk})"
            ))
            .await
            .unwrap();
            let values: Vec<String> = (1..=ROWS)
                .map(|r| {
                    let parent = if i == 0 { "NULL".to_string() } else { (r % ROWS + 1).to_string() };
                    format!("({parent}, 'c{i}_{r}', 'name {r}', {r}.25, {})", r % 2)
                })
                .collect();
            conn.query_drop(format!(
                "INSERT INTO t{i:03} (parent_id, code, name, amount, flag) VALUES {}",
                values.join(", ")
            ))
            .await
            .unwrap();
        }
        conn.disconnect().await.unwrap();
        let build = started.elapsed();
        let started = Instant::now();
        db.seal_template(&tpl).await.unwrap();
        dbfork_meta::out!(
            "template: {TABLES} tables, {} rows, built in {build:.2?}, read (seal) in {:.2?}",
            TABLES * ROWS,
            started.elapsed()
        );
        let rounds: usize = std::env::var("DBFORK_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
        let mut scenarios: Vec<(CloneMethod, usize, usize, bool)> = Vec::new();
        for method in [CloneMethod::ShowCreate, CloneMethod::CreateLike] {
            for k in [1, 2, 3, 4] {
                scenarios.push((method, k, 1, false));
            }
        }
        for k in [1, 2, 4] {
            scenarios.push((CloneMethod::ShowCreate, k, 4, true));
        }
        for k in [2, 4] {
            scenarios.push((CloneMethod::ShowCreate, k, 4, false));
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); scenarios.len()];
        let mut drops = Vec::new();
        for _ in 0..rounds {
            for (i, (method, k, count, together)) in scenarios.iter().enumerate() {
                db.set_clone_connections(*k);
                let started = Instant::now();
                if *together {
                    let made = join_all(clones[..*count].iter().map(|c| db.clone_database(&tpl, c, *method))).await;
                    made.into_iter().for_each(|r| r.unwrap());
                } else {
                    for c in &clones[..*count] {
                        db.clone_database(&tpl, c, *method).await.unwrap();
                    }
                }
                times[i].push(started.elapsed());
                for c in &clones[..*count] {
                    let started = Instant::now();
                    db.drop_database(c, Duration::from_secs(30)).await.unwrap();
                    drops.push(started.elapsed());
                }
            }
        }
        let mut report = Vec::new();
        for (i, (method, k, count, together)) in scenarios.iter().enumerate() {
            let t = &mut times[i];
            t.sort();
            let how = match (count, together) {
                (1, _) => "one clone".to_string(),
                (n, true) => format!("{n} clones at once"),
                (n, false) => format!("{n} clones one after another"),
            };
            report.push(format!(
                "{method:?} K={k}, {how}: median {:.2?} (min {:.2?}, max {:.2?})",
                t[t.len() / 2],
                t[0],
                t[t.len() - 1]
            ));
        }
        drops.sort();
        report.push(format!("drop of one clone: median {:.2?}, max {:.2?}", drops[drops.len() / 2], drops[drops.len() - 1]));
        // For scale: what dbfork replaces, `mysqldump | mysql`, when the clients are installed.
        let env: Vec<(String, String)> = db.client_env(&clones[0]);
        let dump = format!(
            "mysqldump --single-transaction --routines --triggers --events {tpl} | mysql {}",
            clones[0]
        );
        if std::process::Command::new("mysqldump").arg("--version").output().is_ok() {
            let mut dumped = Vec::new();
            for _ in 0..rounds.min(3) {
                db.create_empty(&clones[0]).await.unwrap();
                let started = Instant::now();
                let status = std::process::Command::new("sh").arg("-c").arg(&dump).envs(env.clone()).status().unwrap();
                dumped.push(started.elapsed());
                assert!(status.success(), "{dump}");
                db.drop_database(&clones[0], Duration::from_secs(30)).await.unwrap();
            }
            dumped.sort();
            report.push(format!("mysqldump | mysql, one clone: median {:.2?}", dumped[dumped.len() / 2]));
        }
        dbfork_meta::out!("\n{}", report.join("\n"));
    })
    .await;
}

//! A tiny inventory over PostgreSQL, MySQL/MariaDB or SQLite, chosen by the
//! URL: what an application under test looks like to `dbfork serve`. Its
//! tests (`tests/inventory.rs`) each get a clone of the migrated template.

use std::path::Path;

/// A connection to the database a URL names.
pub enum Db {
    Postgres(tokio_postgres::Client, tokio::runtime::Runtime),
    Mysql(mysql_async::Conn, tokio::runtime::Runtime),
    Sqlite(rusqlite::Connection),
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Db {
    /// `postgres://...`, `mysql://...` or `sqlite:///path`.
    pub fn connect(url: &str) -> Result<Db, Error> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            return Ok(Db::Sqlite(rusqlite::Connection::open(path)?));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        if url.starts_with("postgres") {
            let (client, connection) =
                runtime.block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))?;
            runtime.spawn(connection);
            return Ok(Db::Postgres(client, runtime));
        }
        // mysql_async wants a host even beside `?socket=` (dbfork's URL of a
        // server reached by its socket has none): `localhost`, as usual.
        let url = match url.split_once("@/") {
            Some((user, rest)) if url.contains("socket=") => format!("{user}@localhost/{rest}"),
            _ => url.to_string(),
        };
        let conn = runtime.block_on(mysql_async::Conn::from_url(url))?;
        Ok(Db::Mysql(conn, runtime))
    }

    /// Runs statements that return nothing.
    pub fn execute(&mut self, sql: &str) -> Result<(), Error> {
        match self {
            Db::Postgres(client, rt) => rt.block_on(client.batch_execute(sql))?,
            Db::Mysql(conn, rt) => {
                use mysql_async::prelude::Queryable;
                rt.block_on(conn.query_drop(sql))?
            }
            Db::Sqlite(conn) => conn.execute_batch(sql)?,
        }
        Ok(())
    }

    /// The first column of a query's rows, as text.
    pub fn strings(&mut self, sql: &str) -> Result<Vec<String>, Error> {
        Ok(match self {
            Db::Postgres(client, rt) => rt
                .block_on(client.query(sql, &[]))?
                .iter()
                .map(|row| row.get::<_, String>(0))
                .collect(),
            Db::Mysql(conn, rt) => {
                use mysql_async::prelude::Queryable;
                rt.block_on(conn.query::<String, _>(sql))?
            }
            Db::Sqlite(conn) => {
                let mut statement = conn.prepare(sql)?;
                let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                rows.collect::<Result<_, _>>()?
            }
        })
    }
}

/// Applies the migrations in `dir` (`*.sql`, in name order) to the database.
pub fn migrate(url: &str, dir: &Path) -> Result<(), Error> {
    let mut db = Db::connect(url)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sql"))
    {
        db.execute(&std::fs::read_to_string(file)?)?;
    }
    Ok(())
}

/// The items' names, in id order.
pub fn names(db: &mut Db) -> Result<Vec<String>, Error> {
    db.strings("SELECT name FROM item ORDER BY id")
}

/// Adds an item.
pub fn add(db: &mut Db, id: i64, name: &str) -> Result<(), Error> {
    db.execute(&format!(
        "INSERT INTO item (id, name) VALUES ({id}, '{}')",
        name.replace('\'', "''")
    ))
}

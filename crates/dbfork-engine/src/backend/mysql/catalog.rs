//! The template's catalog, read once and cached: what a clone is rebuilt from.

use super::*;

/// The routines, triggers and events of a schema, in a stable order.
const ROUTINES: &str = "SELECT ROUTINE_NAME, ROUTINE_TYPE FROM information_schema.ROUTINES \
     WHERE ROUTINE_SCHEMA = ? AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') ORDER BY ROUTINE_TYPE, ROUTINE_NAME";
const TRIGGERS: &str =
    "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? \
     ORDER BY EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER";
const EVENTS: &str =
    "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ? ORDER BY EVENT_NAME";

/// What a clone is rebuilt from: the template's catalog, read once (and,
/// in a template cache file, the head of the dump).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Template {
    pub(super) charset: String,
    pub(super) collation: String,
    /// Largest first, so that the slowest copies start first.
    pub(super) tables: Vec<Table>,
    pub(super) routines: Vec<Object>,
    pub(super) views: Vec<Object>,
    pub(super) triggers: Vec<Object>,
    pub(super) events: Vec<Object>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Table {
    pub(super) name: String,
    /// `SHOW CREATE TABLE`, unqualified: run with the clone as the default database.
    pub(super) create: Vec<u8>,
    /// The columns `INSERT ... SELECT` copies (all but generated ones), quoted and joined.
    pub(super) copy_columns: String,
    /// `CONSTRAINT ... FOREIGN KEY ...` clauses, for `CREATE TABLE ... LIKE`, which drops them.
    pub(super) foreign_keys: Vec<String>,
    pub(super) auto_increment: Option<u64>,
    pub(super) size: u64,
}

/// A view, trigger, routine or event: its `SHOW CREATE` text and the session settings it was made with.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Object {
    pub(super) what: String,
    pub(super) name: String,
    pub(super) sql_mode: Option<String>,
    pub(super) time_zone: Option<String>,
    pub(super) create: Vec<u8>,
}

impl Mysql {
    /// The description of template `name`, read on first use.
    pub(super) async fn template(&self, name: &str) -> Result<Arc<Template>> {
        let cell = self
            .templates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.load_template(name))
            .await
            .cloned()
    }

    pub(super) async fn load_template(&self, name: &str) -> Result<Arc<Template>> {
        let started = Instant::now();
        let mut conn = self.take().await?;
        let tpl = self.read_template(&mut conn, name).await;
        self.leave(&mut conn).await;
        let tpl = tpl?;
        tracing::debug!(
            "read template {name} ({} tables, {} views, {} routines, {} triggers, {} events) in {:?}",
            tpl.tables.len(),
            tpl.views.len(),
            tpl.routines.len(),
            tpl.triggers.len(),
            tpl.events.len(),
            started.elapsed()
        );
        Ok(Arc::new(tpl))
    }

    pub(super) async fn read_template(&self, conn: &mut Conn, name: &str) -> Result<Template> {
        let ctx = format!("reading the template {name}");
        conn.query_drop(format!(
            "SET SESSION sql_mode = '{COPY_SQL_MODE}', sql_quote_show_create = 1"
        ))
        .await
        .map_err(q(&ctx))?;
        if !self.mariadb {
            // MySQL 8 caches information_schema.TABLES figures (AUTO_INCREMENT among them) for a day.
            let _ = conn
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
        }
        let schema: Option<Row> = conn
            .exec_first(
                "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
                (name,),
            )
            .await
            .map_err(q(&ctx))?;
        let Some(schema) = schema else {
            return Err(Error::query(
                NAME,
                ctx,
                "the template database does not exist",
            ));
        };
        let charset: String = col(&schema, 0, &ctx)?;
        let collation: String = col(&schema, 1, &ctx)?;

        let (tables, view_names) = self.read_tables(conn, name, &ctx).await?;
        let mut views = Vec::new();
        for view in view_names {
            views.push(
                self.show_create(conn, name, "VIEW", view, None, None, 1)
                    .await?,
            );
        }

        let routines = self
            .read_objects(conn, name, &ctx, ROUTINES, None, None, 2)
            .await?;
        let triggers = self
            .read_objects(conn, name, &ctx, TRIGGERS, Some("TRIGGER"), None, 2)
            .await?;
        let events = self
            .read_objects(conn, name, &ctx, EVENTS, Some("EVENT"), Some(2), 3)
            .await?;
        Ok(Template {
            charset,
            collation,
            tables,
            routines,
            views,
            triggers,
            events,
        })
    }

    /// The template's tables (with their definition, copyable columns,
    /// AUTO_INCREMENT and size; largest first) and the names of its views.
    async fn read_tables(
        &self,
        conn: &mut Conn,
        name: &str,
        ctx: &str,
    ) -> Result<(Vec<Table>, Vec<String>)> {
        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, TABLE_TYPE, AUTO_INCREMENT, COALESCE(DATA_LENGTH, 0) + COALESCE(INDEX_LENGTH, 0) \
                 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME",
                (name,),
            )
            .await
            .map_err(q(ctx))?;
        let mut table_rows = Vec::new();
        let mut view_names = Vec::new();
        for row in &rows {
            let table: String = col(row, 0, ctx)?;
            let kind: String = col(row, 1, ctx)?;
            match kind.as_str() {
                "VIEW" => view_names.push(table),
                "BASE TABLE" | "SEQUENCE" | "SYSTEM VERSIONED" => table_rows.push((
                    table,
                    col::<Option<u64>>(row, 2, ctx)?,
                    col::<Option<u64>>(row, 3, ctx)?,
                )),
                _ => {}
            }
        }

        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, COALESCE(EXTRA, '') FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (name,),
            )
            .await
            .map_err(q(ctx))?;
        let mut columns: HashMap<String, Vec<String>> = HashMap::new();
        for row in &rows {
            let extra: String = col(row, 2, ctx)?;
            let list = columns.entry(col(row, 0, ctx)?).or_default();
            if !is_generated(&extra) {
                list.push(ident(&col::<String>(row, 1, ctx)?));
            }
        }

        let mut tables = Vec::with_capacity(table_rows.len());
        for (table, auto_increment, size) in table_rows {
            let row: Option<Row> = conn
                .query_first(format!(
                    "SHOW CREATE TABLE {}.{}",
                    ident(name),
                    ident(&table)
                ))
                .await
                .map_err(q(format!("{ctx}: SHOW CREATE TABLE {table}")))?;
            let create = match row {
                Some(row) => text_col(&row, 1, ctx)?,
                None => {
                    return Err(Error::query(
                        NAME,
                        ctx.to_string(),
                        format!("SHOW CREATE TABLE {table} returned nothing"),
                    ))
                }
            };
            tables.push(Table {
                foreign_keys: foreign_key_clauses(&create),
                copy_columns: columns.remove(&table).unwrap_or_default().join(", "),
                name: table,
                create,
                auto_increment,
                size: size.unwrap_or(0),
            });
        }
        tables.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));

        Ok((tables, view_names))
    }

    /// The definitions of the objects the query `list` names (its first
    /// column; for routines, `what` is `None` and the second column says
    /// FUNCTION or PROCEDURE), with the columns of `show_create`.
    #[allow(clippy::too_many_arguments)]
    async fn read_objects(
        &self,
        conn: &mut Conn,
        name: &str,
        ctx: &str,
        list: &str,
        what: Option<&'static str>,
        time_zone: Option<usize>,
        create: usize,
    ) -> Result<Vec<Object>> {
        let rows: Vec<Row> = conn.exec(list, (name,)).await.map_err(q(ctx))?;
        let mut objects = Vec::new();
        for row in &rows {
            let what = match what {
                Some(what) => what,
                None if col::<String>(row, 1, ctx)? == "FUNCTION" => "FUNCTION",
                None => "PROCEDURE",
            };
            objects.push(
                self.show_create(
                    conn,
                    name,
                    what,
                    col(row, 0, ctx)?,
                    Some(1),
                    time_zone,
                    create,
                )
                .await?,
            );
        }
        Ok(objects)
    }

    /// `SHOW CREATE <what> schema.name`, keeping the columns at the given positions.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn show_create(
        &self,
        conn: &mut Conn,
        schema: &str,
        what: &'static str,
        name: String,
        sql_mode: Option<usize>,
        time_zone: Option<usize>,
        create: usize,
    ) -> Result<Object> {
        let ctx = format!(
            "reading the definition of {} {name} in {schema}",
            what.to_lowercase()
        );
        let row: Option<Row> = conn
            .query_first(format!(
                "SHOW CREATE {what} {}.{}",
                ident(schema),
                ident(&name)
            ))
            .await
            .map_err(q(&ctx))?;
        let Some(row) = row else {
            return Err(Error::query(NAME, ctx, "the server returned nothing"));
        };
        Ok(Object {
            what: what.to_string(),
            sql_mode: sql_mode
                .map(|i| col::<Option<String>>(&row, i, &ctx))
                .transpose()?
                .flatten(),
            time_zone: time_zone
                .map(|i| col::<Option<String>>(&row, i, &ctx))
                .transpose()?
                .flatten(),
            create: text_col(&row, create, &ctx)?,
            name,
        })
    }
}

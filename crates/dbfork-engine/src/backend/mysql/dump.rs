//! The template cache's MySQL payload: dbfork's own dump (the catalog and each
//! table's rows as INSERT statements of exact literals), written and read.

use super::*;

/// The head of a dump: the template's catalog and the name it had.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct DumpHead {
    source: String,
    template: Template,
}

/// The first bytes of a dump file.
pub(super) const DUMP_MAGIC: &[u8] = b"DBFORKMY1\n";
/// The largest INSERT statement a dump holds (the server's max_allowed_packet is 16 MiB by default).
pub(super) const DUMP_STATEMENT: usize = 1 << 20;

/// Appends the SQL literal of `value`: hex for strings and bytes (text
/// columns as utf8mb4, the connection's character set), exact numbers, and
/// dates and times with their microseconds.
pub(super) fn push_literal(out: &mut Vec<u8>, value: &mysql_async::Value, text: bool) {
    use mysql_async::Value as V;
    use std::io::Write as _;
    let _ = match value {
        V::NULL => write!(out, "NULL"),
        V::Bytes(bytes) => {
            out.extend_from_slice(if text { b"_utf8mb4 X'" } else { b"X'" });
            for b in bytes {
                let _ = write!(out, "{b:02x}");
            }
            write!(out, "'")
        }
        V::Int(i) => write!(out, "{i}"),
        V::UInt(u) => write!(out, "{u}"),
        // Rust prints the shortest decimal that reads back as the same number.
        V::Float(f) => write!(out, "{f}"),
        V::Double(d) => write!(out, "{d}"),
        V::Date(y, mo, d, h, mi, s, us) => {
            write!(out, "'{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}'")
        }
        V::Time(neg, days, h, mi, s, us) => {
            let sign = if *neg { "-" } else { "" };
            let hours = *days * 24 + u32::from(*h);
            write!(out, "'{sign}{hours}:{mi:02}:{s:02}.{us:06}'")
        }
    };
}

/// One framed record of a dump: a table index and its bytes.
pub(super) fn push_record(
    out: &mut impl std::io::Write,
    table: u32,
    bytes: &[u8],
) -> std::io::Result<()> {
    out.write_all(&table.to_le_bytes())?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(bytes)
}

/// A dump read back: its head and each table's INSERT statements.
/// Each table's INSERT statements, by the table's index in the catalog.
pub(super) type TableRows = Vec<Vec<Vec<u8>>>;

pub(super) fn parse_dump(bytes: &[u8]) -> std::result::Result<(DumpHead, TableRows), String> {
    let rest = bytes
        .strip_prefix(DUMP_MAGIC)
        .ok_or("it is not a dbfork MySQL dump")?;
    let mut cursor = std::io::Cursor::new(rest);
    let mut records = Vec::new();
    let mut head = None;
    while (cursor.position() as usize) < rest.len() {
        let mut frame = [0u8; 8];
        std::io::Read::read_exact(&mut cursor, &mut frame).map_err(|_| "it ends early")?;
        let table = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(frame[4..].try_into().expect("4 bytes")) as usize;
        let mut bytes = vec![0u8; len];
        std::io::Read::read_exact(&mut cursor, &mut bytes).map_err(|_| "it ends early")?;
        let bytes = bytes.as_slice();
        if head.is_none() {
            head = Some(serde_json::from_slice::<DumpHead>(bytes).map_err(|e| e.to_string())?);
        } else {
            records.push((table as usize, bytes.to_vec()));
        }
    }
    let head = head.ok_or("it has no catalog")?;
    let mut tables = vec![Vec::new(); head.template.tables.len()];
    for (table, statement) in records {
        tables
            .get_mut(table)
            .ok_or("a record names a table the catalog lacks")?
            .push(statement);
    }
    Ok((head, tables))
}

impl Mysql {
    /// Writes `name` as a dump: its catalog, then every table's rows as
    /// INSERT statements of literals read with the binary protocol (exact
    /// numbers and times), in UTC.
    pub(super) async fn write_dump(&self, name: &str, out: &std::path::Path) -> Result<()> {
        let ctx = format!("exporting {name}");
        let io = |e: std::io::Error| Error::io(format!("writing {}", out.display()))(e);
        let mut conn = self.take().await?;
        let result = async {
            let template = self.read_template(&mut conn, name).await?;
            conn.query_drop("SET SESSION time_zone = '+00:00'")
                .await
                .map_err(q(&ctx))?;
            let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
            std::io::Write::write_all(&mut file, DUMP_MAGIC).map_err(io)?;
            let head = DumpHead {
                source: name.to_string(),
                template,
            };
            let head_json = serde_json::to_vec(&head).map_err(|e| Error::query(NAME, &ctx, e))?;
            push_record(&mut file, 0, &head_json).map_err(io)?;
            for (index, table) in head.template.tables.iter().enumerate() {
                if table.copy_columns.is_empty() {
                    continue;
                }
                let prefix = format!(
                    "INSERT INTO {} ({}) VALUES ",
                    ident(&table.name),
                    table.copy_columns
                );
                let mut statement = prefix.clone().into_bytes();
                let mut result = conn
                    .exec_iter(
                        format!(
                            "SELECT {} FROM {}.{}",
                            table.copy_columns,
                            ident(name),
                            ident(&table.name)
                        ),
                        (),
                    )
                    .await
                    .map_err(q(&ctx))?;
                let text: Vec<bool> = result
                    .columns_ref()
                    .iter()
                    .map(|c| {
                        c.character_set() != 63
                            || c.column_type() == mysql_async::consts::ColumnType::MYSQL_TYPE_JSON
                    })
                    .collect();
                while let Some(row) = result.next().await.map_err(q(&ctx))? {
                    if statement.len() > prefix.len() {
                        statement.push(b',');
                    }
                    statement.push(b'(');
                    for i in 0..row.len() {
                        if i > 0 {
                            statement.push(b',');
                        }
                        let value = row.as_ref(i).unwrap_or(&mysql_async::Value::NULL);
                        push_literal(&mut statement, value, text.get(i) == Some(&true));
                    }
                    statement.push(b')');
                    if statement.len() >= DUMP_STATEMENT {
                        push_record(&mut file, index as u32, &statement).map_err(io)?;
                        statement.truncate(prefix.len());
                    }
                }
                if statement.len() > prefix.len() {
                    push_record(&mut file, index as u32, &statement).map_err(io)?;
                }
            }
            std::io::Write::flush(&mut file).map_err(io)
        }
        .await;
        self.leave(&mut conn).await;
        result
    }

    /// Fills the empty `name` from a dump: the tables created, the rows
    /// inserted over several connections, then counters and objects, as a clone.
    pub(super) async fn read_dump(&self, name: &str, dump: &std::path::Path) -> Result<()> {
        let bytes =
            std::fs::read(dump).map_err(Error::io(format!("reading {}", dump.display())))?;
        let (head, rows) = parse_dump(&bytes).map_err(|problem| Error::Transfer {
            what: format!("restoring {name}"),
            cause: format!("the dump {} is damaged: {problem}", dump.display()),
        })?;
        drop(bytes);
        let tpl = &head.template;
        {
            let mut conn = self.take().await?;
            conn.query_drop(format!(
                "ALTER DATABASE {} CHARACTER SET {} COLLATE {}",
                ident(name),
                tpl.charset,
                tpl.collation
            ))
            .await
            .map_err(q(format!("restoring {name}")))?;
        }
        let job = CloneJob {
            template: &head.source,
            clone: name,
            method: CloneMethod::ShowCreate,
            tpl,
            dump: &rows,
        };
        self.run_steps(&job, (0..tpl.tables.len()).map(Step::Create).collect())
            .await?;
        // Largest tables first, as clones copy them.
        let inserts = rows
            .iter()
            .enumerate()
            .flat_map(|(t, statements)| (0..statements.len()).map(move |i| Step::Insert(t, i)))
            .collect();
        self.run_steps(&job, inserts).await?;
        self.finish_clone(&job).await?;
        self.forget_template(name);
        Ok(())
    }
}

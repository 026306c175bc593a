//! Rebuilding a clone from the template's catalog: tables created, rows copied
//! over a few connections, counters matched, routines, views, triggers and
//! events recreated.

use super::catalog::Object;
use super::*;

/// One clone being made.
pub(super) struct CloneJob<'a> {
    pub(super) template: &'a str,
    pub(super) clone: &'a str,
    pub(super) method: CloneMethod,
    pub(super) tpl: &'a Template,
    /// Restoring a dump: each table's INSERT statements.
    pub(super) dump: &'a [Vec<Vec<u8>>],
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// Create one table, empty (`CreateLike`: with its foreign keys added).
    Create(usize),
    /// Copy one table's rows.
    Copy(usize),
    /// Run one INSERT statement of a dump: table, statement.
    Insert(usize, usize),
}

impl Mysql {
    /// Prepares a connection to fill `clone`: no constraint checks, the clone as default database.
    pub(super) async fn enter(&self, conn: &mut Conn, clone: &str) -> Result<()> {
        conn.query_drop(format!(
            "SET SESSION foreign_key_checks = 0, unique_checks = 0, sql_mode = '{COPY_SQL_MODE}', time_zone = '+00:00'"
        ))
        .await
        .map_err(q(format!("preparing a session to fill {clone}")))?;
        // Keeps the copy out of the binary log where the user may do so; elsewhere it stays logged.
        let _ = conn.query_drop("SET SESSION sql_log_bin = 0").await;
        conn.query_drop(format!("USE {}", ident(clone)))
            .await
            .map_err(q(format!("preparing a session to fill {clone}")))
    }

    /// Runs `steps` over up to `clone_connections` connections; stops at the first failure.
    pub(super) async fn run_steps(&self, job: &CloneJob<'_>, steps: Vec<Step>) -> Result<()> {
        if steps.is_empty() {
            return Ok(());
        }
        let workers = self.clone_connections.clamp(1, POOL_MAX).min(steps.len());
        let queue = Mutex::new(VecDeque::from(steps));
        let failed = AtomicBool::new(false);
        let (drained_tx, drained_rx) = watch::channel(false);
        let results = join_all((0..workers).map(|i| {
            self.worker(
                job,
                i == 0,
                &queue,
                &failed,
                &drained_tx,
                drained_rx.clone(),
            )
        }))
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    pub(super) async fn worker(
        &self,
        job: &CloneJob<'_>,
        first: bool,
        queue: &Mutex<VecDeque<Step>>,
        failed: &AtomicBool,
        drained_tx: &watch::Sender<bool>,
        mut drained: watch::Receiver<bool>,
    ) -> Result<()> {
        // The first connection of a clone always works; helpers only within the process-wide
        // budget, so that many clones at once do not crowd the server with connections.
        let permit = self.filling.try_acquire();
        if !first && permit.is_err() {
            return Ok(());
        }
        // A helper that gets no connection before the others have taken all the work just ends:
        // several clones at once never wait on each other's connections.
        let mut conn = tokio::select! {
            conn = self.take() => conn?,
            _ = drained.wait_for(|d| *d) => return Ok(()),
        };
        // Copies share a transaction until about COMMIT_BYTES of the template were copied.
        let mut in_transaction: Option<u64> = None;
        let result = async {
            self.enter(&mut conn, job.clone).await?;
            let ctx = || format!("filling {}", job.clone);
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let step = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(step) = step else {
                    drained_tx.send_replace(true);
                    break;
                };
                let copied = match step {
                    Step::Copy(i) => job.tpl.tables[i].size,
                    Step::Insert(t, i) => job.dump[t][i].len() as u64,
                    Step::Create(_) => {
                        if in_transaction.take().is_some() {
                            conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
                        }
                        self.run_step(&mut conn, job, step).await?;
                        continue;
                    }
                };
                if in_transaction.is_none() {
                    conn.query_drop("START TRANSACTION")
                        .await
                        .map_err(q(ctx()))?;
                }
                self.run_step(&mut conn, job, step).await?;
                let batch = in_transaction.unwrap_or(0) + copied;
                in_transaction = Some(batch);
                if batch >= COMMIT_BYTES {
                    conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
                    in_transaction = None;
                }
            }
            if in_transaction.take().is_some() {
                conn.query_drop("COMMIT").await.map_err(q(ctx()))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            if in_transaction.is_some() {
                let _ = conn.query_drop("ROLLBACK").await;
            }
            failed.store(true, Ordering::Relaxed);
            drained_tx.send_replace(true);
        }
        self.leave(&mut conn).await;
        result
    }

    pub(super) async fn run_step(
        &self,
        conn: &mut Conn,
        job: &CloneJob<'_>,
        step: Step,
    ) -> Result<()> {
        let clone = ident(job.clone);
        let template = ident(job.template);
        match step {
            Step::Create(i) => {
                let t = &job.tpl.tables[i];
                let table = ident(&t.name);
                let ctx = || format!("creating table {} in {}", t.name, job.clone);
                if job.method != CloneMethod::CreateLike {
                    return conn.query_drop(&t.create).await.map_err(q(ctx()));
                }
                conn.query_drop(format!(
                    "CREATE TABLE {clone}.{table} LIKE {template}.{table}"
                ))
                .await
                .map_err(q(ctx()))?;
                // LIKE leaves the foreign keys out. With foreign_key_checks off, the tables they
                // reference need not exist yet.
                if !t.foreign_keys.is_empty() {
                    let adds: Vec<String> = t
                        .foreign_keys
                        .iter()
                        .map(|fk| format!("ADD {fk}"))
                        .collect();
                    conn.query_drop(format!("ALTER TABLE {clone}.{table} {}", adds.join(", ")))
                        .await
                        .map_err(q(format!(
                            "adding the foreign keys of {} in {}",
                            t.name, job.clone
                        )))?;
                }
                Ok(())
            }
            Step::Insert(t, i) => conn.query_drop(&job.dump[t][i]).await.map_err(q(format!(
                "restoring the rows of {} into {}",
                job.tpl.tables[t].name, job.clone
            ))),
            Step::Copy(i) => {
                let t = &job.tpl.tables[i];
                if t.copy_columns.is_empty() {
                    return Ok(());
                }
                conn.query_drop(format!(
                    "INSERT INTO {clone}.{table} ({cols}) SELECT {cols} FROM {template}.{table}",
                    table = ident(&t.name),
                    cols = t.copy_columns
                ))
                .await
                .map_err(q(format!(
                    "copying the rows of {} into {}",
                    t.name, job.clone
                )))
            }
        }
    }

    /// What every method does once the tables are filled: the AUTO_INCREMENT counters, then the
    /// routines, views (in dependency order), triggers (after the data, so they never fire on
    /// it) and events, all rewritten from the template's schema to the clone's.
    pub(super) async fn finish_clone(&self, job: &CloneJob<'_>) -> Result<()> {
        let mut conn = self.take().await?;
        let result = async {
            self.enter(&mut conn, job.clone).await?;
            self.match_auto_increments(&mut conn, job).await?;
            for routine in &job.tpl.routines {
                self.create_object(&mut conn, job, routine).await?;
            }
            let mut pending: Vec<&Object> = job.tpl.views.iter().collect();
            while !pending.is_empty() {
                let mut failed = Vec::new();
                let mut last_error = None;
                for view in &pending {
                    if let Err(e) = self.create_object(&mut conn, job, view).await {
                        failed.push(*view);
                        last_error = Some(e);
                    }
                }
                if failed.len() == pending.len() {
                    if let Some(e) = last_error {
                        return Err(e);
                    }
                }
                pending = failed;
            }
            for object in job.tpl.triggers.iter().chain(&job.tpl.events) {
                self.create_object(&mut conn, job, object).await?;
            }
            Ok(())
        }
        .await;
        self.leave(&mut conn).await;
        result
    }

    pub(super) async fn match_auto_increments(
        &self,
        conn: &mut Conn,
        job: &CloneJob<'_>,
    ) -> Result<()> {
        if job.tpl.tables.iter().all(|t| t.auto_increment.is_none()) {
            return Ok(());
        }
        let ctx = format!("reading the AUTO_INCREMENT counters of {}", job.clone);
        if !self.mariadb {
            let _ = conn
                .query_drop("SET SESSION information_schema_stats_expiry = 0")
                .await;
        }
        let rows: Vec<Row> = conn
            .exec(
                "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND AUTO_INCREMENT IS NOT NULL",
                (job.clone,),
            )
            .await
            .map_err(q(&ctx))?;
        let mut now = HashMap::new();
        for row in &rows {
            now.insert(col::<String>(row, 0, &ctx)?, col::<u64>(row, 1, &ctx)?);
        }
        for t in &job.tpl.tables {
            let Some(want) = t.auto_increment else {
                continue;
            };
            if now.get(&t.name) != Some(&want) {
                conn.query_drop(format!(
                    "ALTER TABLE {}.{} AUTO_INCREMENT = {want}",
                    ident(job.clone),
                    ident(&t.name)
                ))
                .await
                .map_err(q(format!(
                    "setting the AUTO_INCREMENT counter of {} in {}",
                    t.name, job.clone
                )))?;
            }
        }
        Ok(())
    }

    pub(super) async fn create_object(
        &self,
        conn: &mut Conn,
        job: &CloneJob<'_>,
        object: &Object,
    ) -> Result<()> {
        let ctx = || {
            format!(
                "creating {} {} in {}",
                object.what.to_lowercase(),
                object.name,
                job.clone
            )
        };
        // Each with the sql_mode it was made with; views, which keep none, with ours.
        let mode = object.sql_mode.as_deref().unwrap_or(COPY_SQL_MODE);
        conn.exec_drop("SET SESSION sql_mode = ?", (mode,))
            .await
            .map_err(q(ctx()))?;
        if let Some(zone) = &object.time_zone {
            conn.exec_drop("SET SESSION time_zone = ?", (zone,))
                .await
                .map_err(q(ctx()))?;
        }
        conn.query_drop(requalify(&object.create, job.template, job.clone))
            .await
            .map_err(q(ctx()))
    }
}

//! Clones leased from a running `dbfork serve` (`--serve-url`) instead of
//! made by the run. The run builds or reuses its template as always, has the
//! service serve it (`adopt`), and leases a clone wherever the machine says
//! to make one: the machine keeps its own names for them, and the executor
//! gives the workers the leased databases. A clone the machine drops, and
//! every one at the end, is returned to be recreated in the service's
//! background; at the end the service is told how many to keep made for
//! the next run (`--keep-ready`), which then starts on ready clones.

use std::sync::Mutex;

use dbfork_client::{Client, Lease};

use super::*;

/// The run's leases, shared with the tasks that take them.
#[derive(Clone)]
pub(super) struct Leasing {
    client: Client,
    /// The run's template as the service serves it (its registry name).
    template: Arc<Mutex<Option<String>>>,
    /// The machine's name of each clone leased and not returned.
    held: Arc<Mutex<HashMap<String, Lease>>>,
    /// The machine's name of each clone ever leased: its database's name
    /// (for the report, after the return).
    names: Arc<Mutex<HashMap<String, String>>>,
    /// The task that renews leases that end by their time to live (a
    /// service with `--lease-ttl`, over TCP), once one is taken.
    renewing: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Leasing {
    pub(super) fn new(url: &str) -> Result<Leasing, RunError> {
        let client = Client::new(url).map_err(|e| RunError::Usage(e.to_string()))?;
        Ok(Leasing {
            client: client.with_env_token(),
            template: Arc::default(),
            held: Arc::default(),
            names: Arc::default(),
            renewing: Arc::default(),
        })
    }

    /// Has the service serve `template` (none kept ready while the run
    /// holds its leases), after checking that it serves the run's server.
    pub(super) async fn adopt(&self, backend: &AnyBackend, template: &str) -> Result<(), RunError> {
        let (client, name) = (self.client.clone(), template.to_string());
        let served = blocking(move || client.adopt(&name, Some(0)))
            .await
            .map_err(|e| RunError::Service(format!("{e}. Start `dbfork serve` on the run's server, or run without --serve-url (DBFORK_SERVE_URL) to make the clones here")))?;
        let theirs = DbUrl::parse(&served.url).map_err(|e| RunError::Service(e.to_string()))?;
        if !same_server(backend.url(), &theirs) {
            return Err(RunError::Service(format!(
                "the service at {} serves {}, not the run's server {}: start it with the run's --db, or run without --serve-url",
                self.client,
                dbfork_engine::url::mask_raw(&served.url),
                dbfork_engine::url::mask_raw(&backend.url().to_url_with_password()),
            )));
        }
        *lock(&self.template) = Some(template.to_string());
        dbfork_meta::say!(
            "dbfork: the clones come from dbfork serve at {}",
            self.client
        );
        Ok(())
    }

    /// Leases a clone for each of the machine's `wanted` names.
    pub(super) async fn lease(
        &self,
        backend: &AnyBackend,
        wanted: Vec<String>,
    ) -> Result<Vec<MadeClone>, CloneFailure> {
        let template = lock(&self.template)
            .clone()
            .ok_or_else(|| CloneFailure::Error("the service serves no template yet".into()))?;
        let mut made = Vec::new();
        for name in wanted {
            let (client, hash) = (self.client.clone(), template.clone());
            let lease = blocking(move || client.lease(&hash)).await.map_err(|e| {
                CloneFailure::Error(format!(
                    "{e} (the clone was to come from the service at {})",
                    self.client
                ))
            })?;
            let database = registry_name(&lease.database().name);
            made.push(MadeClone {
                url: backend.url().with_database(&database),
                name: name.clone(),
            });
            lock(&self.names).insert(name.clone(), database);
            if let Some(ttl) = lease.ttl() {
                self.renew_every(ttl / 3);
            }
            lock(&self.held).insert(name, lease);
        }
        Ok(made)
    }

    /// Renews every lease held each `period` from now on (once started,
    /// again: nothing).
    fn renew_every(&self, period: Duration) {
        let mut renewing = lock(&self.renewing);
        if renewing.is_some() {
            return;
        }
        let held = self.held.clone();
        let period = period.max(Duration::from_millis(100));
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let held = held.clone();
                // Each lease on its own: one refused (returned meanwhile)
                // does not leave the others to expire.
                let _ = tokio::task::spawn_blocking(move || {
                    for lease in lock(&held).values() {
                        if let Err(e) = lease.renew() {
                            tracing::warn!("could not renew a lease: {e}");
                        }
                    }
                })
                .await;
            }
        });
        *renewing = Some(task.abort_handle());
    }

    /// The database behind the machine's clone `name` (itself when it was
    /// not leased).
    pub(super) fn database(&self, name: &str) -> String {
        lock(&self.names)
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// Whether `name` was ever leased (returned or not).
    pub(super) fn leased(&self, name: &str) -> bool {
        lock(&self.names).contains_key(name)
    }

    /// Whether `name` is a clone leased and not returned.
    pub(super) fn holds(&self, name: &str) -> bool {
        lock(&self.held).contains_key(name)
    }

    /// Returns the clone `name` (to be recreated).
    pub(super) async fn give_back(&self, name: &str) {
        let lease = lock(&self.held).remove(name);
        if let Some(lease) = lease {
            blocking(move || {
                drop(lease);
                Ok(())
            })
            .await
            .ok();
        }
    }

    /// The end: every clone returned, and `keep` of the template kept made
    /// for the next run.
    pub(super) async fn end(&self, keep: usize) {
        if let Some(task) = lock(&self.renewing).take() {
            task.abort();
        }
        let held: Vec<Lease> = lock(&self.held).drain().map(|(_, l)| l).collect();
        let template = lock(&self.template).clone();
        let client = self.client.clone();
        let kept = blocking(move || {
            drop(held);
            match template {
                Some(template) => client.adopt(&template, Some(keep)).map(|_| ()),
                None => Ok(()),
            }
        })
        .await;
        if let Err(e) = kept {
            dbfork_meta::say!(
                "dbfork: warning: the service did not take the clones back for the next run: {e}"
            );
        }
    }
}

/// Whether two URLs name the same server: the same kind and address (for
/// SQLite, the same directory).
fn same_server(ours: &DbUrl, theirs: &DbUrl) -> bool {
    if ours.kind != theirs.kind {
        return false;
    }
    if ours.kind == Kind::Sqlite {
        return ours.sqlite_dir() == theirs.sqlite_dir();
    }
    let host = |url: &DbUrl| {
        let host = url.host.clone().unwrap_or_default();
        match host.as_str() {
            "localhost" | "::1" | "[::1]" => "127.0.0.1".to_string(),
            _ => host,
        }
    };
    let port = |url: &DbUrl| {
        url.port.unwrap_or(match url.kind {
            Kind::Postgres => 5432,
            _ => 3306,
        })
    };
    host(ours) == host(theirs) && port(ours) == port(theirs) && ours.socket == theirs.socket
}

/// A database's registry name from the service's name for it (on SQLite,
/// its file's path).
fn registry_name(database: &str) -> String {
    match database.rsplit_once('/') {
        Some((_, file)) => file.trim_end_matches(".sqlite3").to_string(),
        None => database.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call of the blocking client, off the runtime's threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, dbfork_client::Error> + Send + 'static,
) -> Result<T, dbfork_client::Error> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result,
        Err(e) => Err(dbfork_client::Error::Protocol {
            what: "a call to dbfork serve".to_string(),
            why: e.to_string(),
        }),
    }
}

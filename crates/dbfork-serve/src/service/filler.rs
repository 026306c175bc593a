//! The filler: the background task that makes what the pools want and
//! drops what they give up, within `--max-databases` and `--max-bytes`,
//! the least recently used template's ready clones evicted for one a test
//! waits for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbfork_engine::names;
use dbfork_engine::ops;
use dbfork_engine::process::Owner;
use dbfork_engine::registry::Entry;
use tokio::sync::Semaphore;

use super::{Phase, Service, Slot};

impl Service {
    /// The filler: makes what the pools want and drops what they give up,
    /// at most `clone_concurrency` at a time, until the service ends.
    pub async fn fill(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.config.clone_concurrency.max(1)));
        loop {
            let notified = self.work.notified();
            for job in self.jobs() {
                let service = self.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let Ok(_permit) = permits.acquire_owned().await else {
                        return;
                    };
                    service.run(job).await;
                });
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// What the pools want done now; each name is marked busy until done.
    /// Leases past `--lease-ttl` are taken back; the clones of all pools
    /// stay within `--max-databases`, pools with a test waiting served
    /// first, and when a test waits with no room left the least recently
    /// used other template's ready clones make room.
    fn jobs(&self) -> Vec<Job> {
        let mut state = self.state();
        let now = Instant::now();
        // A lease bound to its connection lives as long as it: the open
        // connection is its heartbeat, --lease-ttl is for the others.
        let state = &mut *state;
        for (hash, lease) in state.bound.values().flatten() {
            if let Some(slot) = state.templates.get_mut(hash) {
                if let Some(name) = slot.pool.held_by(lease).map(str::to_string) {
                    slot.pool.renew(&name, now);
                }
            }
        }
        for slot in state.templates.values_mut() {
            for taken in slot.pool.expire(now) {
                self.metrics
                    .reclaimed
                    .get_or_create(&crate::metrics::Reason { reason: "expiry" })
                    .inc();
                tracing::info!(
                    "took back {} (leased longer than --lease-ttl without a renewal)",
                    taken.name
                );
            }
        }
        let total: usize = state.templates.values().map(|s| s.pool.len()).sum();
        let mut room = self.config.max_databases.saturating_sub(total);
        let used: u64 = state
            .templates
            .values()
            .map(|s| s.pool.len() as u64 * s.clone_bytes)
            .sum();
        let mut bytes_left = self.config.max_bytes.map(|max| max.saturating_sub(used));
        let starving = state
            .templates
            .iter()
            .find(|(_, s)| s.pool.waiting() > 0 && s.pool.counts().1 == 0)
            .filter(|(_, s)| fits(room, bytes_left, s.clone_bytes) == 0)
            .map(|(hash, _)| hash.clone());
        if let Some(starving) = starving {
            let victim = state
                .templates
                .iter_mut()
                .filter(|(hash, s)| **hash != starving && s.pool.counts().1 > 0)
                .min_by_key(|(_, s)| s.last_used);
            if let Some((hash, slot)) = victim {
                slot.pool.set_target(0);
                slot.evicted = true;
                let shed = slot.pool.shed_ready();
                self.metrics.evictions.inc();
                tracing::info!("dropping {shed} ready clone(s) of the least recently used template `{hash}` to make room (--max-databases, --max-bytes)");
            }
        }
        let mut order: Vec<&mut Slot> = state.templates.values_mut().collect();
        order.sort_by_key(|s| std::cmp::Reverse(s.pool.waiting()));
        let mut jobs = Vec::new();
        for slot in order {
            if let Phase::Ready { template } = &slot.phase {
                let run_id = slot.run_id.clone();
                let names = slot
                    .pool
                    .to_make_within(fits(room, bytes_left, slot.clone_bytes), |n| {
                        names::clone_name(&run_id, n)
                    });
                room -= names.len();
                if let Some(left) = bytes_left.as_mut() {
                    *left = left.saturating_sub(names.len() as u64 * slot.clone_bytes);
                }
                for name in names {
                    slot.busy.insert(name.clone());
                    jobs.push(Job::Make {
                        template: template.clone(),
                        run_id: run_id.clone(),
                        name,
                    });
                }
            }
            for name in slot.pool.to_drop() {
                if slot.busy.insert(name.clone()) {
                    jobs.push(Job::Drop {
                        run_id: slot.run_id.clone(),
                        name,
                    });
                }
            }
        }
        jobs
    }

    async fn run(&self, job: Job) {
        match job {
            Job::Make {
                template,
                run_id,
                name,
            } => {
                let started = Instant::now();
                let made = ops::make_named_clones(
                    &self.backend,
                    &template,
                    &run_id,
                    vec![name.clone()],
                    &Owner::this_process(),
                    &self.clone_options,
                    &self.cancel,
                )
                .await;
                match &made {
                    Ok(_) => self
                        .metrics
                        .clone_seconds
                        .observe(started.elapsed().as_secs_f64()),
                    // The service is shutting down: the clone was dropped.
                    Err(dbfork_engine::Error::Interrupted) => {}
                    Err(e) => tracing::warn!("could not make the clone {name}: {e}"),
                }
                self.done(&run_id, &name, |slot| {
                    let grants = slot.pool.made(&name, made.is_ok());
                    slot.grant(grants);
                });
            }
            Job::Drop { run_id, name } => {
                let dropped = ops::drop_entry(&self.backend, &name, self.config.drop_timeout).await;
                if let Err(e) = &dropped {
                    tracing::warn!("could not drop the clone {name}: {e}");
                }
                self.done(&run_id, &name, |slot| {
                    if dropped.is_ok() {
                        slot.pool.dropped(&name);
                    }
                });
            }
        }
        self.wake();
    }

    fn done(&self, run_id: &str, name: &str, change: impl FnOnce(&mut Slot)) {
        let mut state = self.state();
        if let Some(slot) = state.templates.values_mut().find(|s| s.run_id == run_id) {
            slot.busy.remove(name);
            change(slot);
        }
    }
}

enum Job {
    Make {
        template: Entry,
        run_id: String,
        name: String,
    },
    Drop {
        run_id: String,
        name: String,
    },
}

/// How many clones of `bytes` each fit in `room` databases and `bytes_left`
/// bytes (`None`: no bytes cap).
fn fits(room: usize, bytes_left: Option<u64>, bytes: u64) -> usize {
    match bytes_left {
        Some(left) if bytes > 0 => room.min((left / bytes).try_into().unwrap_or(usize::MAX)),
        _ => room,
    }
}

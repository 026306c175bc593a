//! Leases by their number, as dbfork's own API names them: returned clean
//! or to be recreated, renewed, listed, and bound to the connection they
//! were asked on (over the Unix socket: the client's process ending closes
//! it, and its clones are taken back at once).

use std::time::Instant;

use super::{Refusal, Service, Slot};

/// One lease out: its number, its template's hash, its clone's id and
/// database, and how long ago it was taken or renewed.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub lease: u64,
    pub hash: String,
    pub id: Option<usize>,
    pub database: String,
    pub seconds: f64,
}

impl Service {
    /// Lease `lease` of `hash` lives as long as `connection`.
    pub fn bind(&self, connection: u64, hash: &str, lease: u64) {
        let mut state = self.state();
        let state = &mut *state;
        let bound = state.bound.entry(connection).or_default();
        // A connection kept open for many leases holds only those still out.
        bound.retain(|(hash, lease)| {
            state
                .templates
                .get(hash)
                .is_some_and(|slot| slot.pool.held_by(lease).is_some())
        });
        bound.push((hash.to_string(), lease));
    }

    /// `connection` closed: every lease bound to it that is still out is
    /// taken back (its clone dropped and made again).
    pub fn disconnected(&self, connection: u64) {
        let mut state = self.state();
        let Some(bound) = state.bound.remove(&connection) else {
            return;
        };
        let mut taken = 0;
        for (hash, lease) in bound {
            if let Some(slot) = state.templates.get_mut(&hash) {
                taken += slot.pool.forget(&lease).len();
            }
        }
        drop(state);
        if taken > 0 {
            tracing::info!("took back {taken} clone(s) whose client's connection closed");
            self.metrics
                .reclaimed
                .get_or_create(&crate::metrics::Reason {
                    reason: "disconnect",
                })
                .inc_by(taken as u64);
            self.wake();
        }
    }

    /// The holder of `lease` is done with its clone: `clean`, it is handed
    /// out again as it is; else dropped and made afresh.
    pub fn end_lease(&self, lease: u64, clean: bool) -> Result<(), Refusal> {
        self.with_lease(lease, |slot, name| {
            if clean {
                if let Some(grants) = slot.pool.give_back(name, Instant::now()) {
                    slot.grant(grants);
                }
            } else {
                slot.pool.release(name);
            }
        })
    }

    /// The holder of `lease` still uses its clone: with `--lease-ttl`, the
    /// lease starts again now.
    pub fn renew_lease(&self, lease: u64) -> Result<(), Refusal> {
        self.with_lease(lease, |slot, name| {
            slot.pool.renew(name, Instant::now());
        })
    }

    fn with_lease(&self, lease: u64, change: impl FnOnce(&mut Slot, &str)) -> Result<(), Refusal> {
        let mut state = self.state();
        let held = state.templates.values_mut().find_map(|slot| {
            let name = slot.pool.held_by(&lease)?.to_string();
            Some((slot, name))
        });
        let Some((slot, name)) = held else {
            return Err(Refusal::new(
                409,
                format!("lease {lease} is not out: it was returned, taken back (--lease-ttl, its connection closed, a discard) or never given; lease another database"),
            ));
        };
        change(slot, &name);
        drop(state);
        self.wake();
        Ok(())
    }

    /// Every clone of every pool: (its registry name, its template's hash,
    /// its state: `making`, `ready`, `leased` or `dropping`, its lease), by
    /// name.
    pub fn databases(&self) -> Vec<(String, String, &'static str, Option<u64>)> {
        use dbfork_engine::pool::State;
        let state = self.state();
        let mut all: Vec<_> = state
            .templates
            .iter()
            .flat_map(|(hash, slot)| {
                slot.pool.clones().map(move |(name, clone)| {
                    let (word, lease) = match clone {
                        State::Making => ("making", None),
                        State::Ready => ("ready", None),
                        State::Leased { holder, .. } => ("leased", Some(*holder)),
                        State::Recycling => ("dropping", None),
                    };
                    (name.to_string(), hash.clone(), word, lease)
                })
            })
            .collect();
        all.sort();
        all
    }

    /// Every lease out, by template hash and lease number.
    pub fn leases(&self) -> Vec<LeaseView> {
        let state = self.state();
        let now = Instant::now();
        let mut leases: Vec<LeaseView> = state
            .templates
            .iter()
            .flat_map(|(hash, slot)| {
                slot.pool
                    .leases()
                    .map(move |(name, lease, since)| LeaseView {
                        lease: *lease,
                        hash: hash.clone(),
                        id: slot.id_of(name),
                        database: name.to_string(),
                        seconds: now.saturating_duration_since(since).as_secs_f64(),
                    })
            })
            .collect();
        leases.sort_by_key(|l| l.lease);
        leases
    }
}

//! The machine's clones: one per worker slot when the template is ready,
//! fresh ones for transactional tests, replacements for lost workers.

use super::*;

impl Machine {
    pub(super) fn clone_names(&self, slot: usize) -> Vec<String> {
        let name = names::slot_clone_name(&self.params.run_id, slot, self.slots[slot].generation);
        let extra = (0..self.params.aliases).map(|i| names::alias_clone_name(&name, i));
        std::iter::once(name.clone()).chain(extra).collect()
    }

    pub(super) fn prestart_all(&mut self) {
        self.template = TemplatePhase::Building;
        let slots = self.slots.len();
        self.note(format!(
            "starting {slots} worker{} while the template is prepared; each waits for its clone",
            if slots == 1 { "" } else { "s" }
        ));
        for slot in 0..slots {
            let clones = self.clone_names(slot);
            self.start_worker(slot, clones);
            self.status(slot, "starting while the template is prepared");
        }
    }

    /// The template is ready: the clones of every slot are made (workers
    /// already started get theirs, the others start on theirs).
    pub(super) fn template_ready(&mut self, name: &str, controller: bool) {
        self.controller = controller;
        let slots = self.slots.len();
        self.note(format!(
            "{slots} worker{} on clones of {name}",
            if slots == 1 { "" } else { "s" },
        ));
        self.template = TemplatePhase::Ready;
        if self.stopping {
            return;
        }
        for slot in 0..slots {
            let s = &self.slots[slot];
            if !s.retired && !s.busy_with_clone && s.database.is_none() {
                self.make_clone(slot);
            }
        }
        self.top_up_fresh();
    }

    pub(super) fn make_clone(&mut self, slot: usize) {
        if self.template != TemplatePhase::Ready {
            // Made when the template is ready (see `template_ready`).
            return;
        }
        let names = self.clone_names(slot);
        self.slots[slot].busy_with_clone = true;
        self.clone_tasks += 1;
        self.out.push(Command::MakeClones {
            slot,
            generation: self.slots[slot].generation,
            names,
        });
    }

    pub(super) fn drop_clone(&mut self, name: String, replaced: bool) {
        self.clone_tasks += 1;
        self.out.push(Command::DropClone { name, replaced });
    }

    pub(super) fn on_clone_made(
        &mut self,
        slot: usize,
        generation: usize,
        result: Result<Vec<String>, CloneFailure>,
    ) {
        self.clone_tasks -= 1;
        self.slots[slot].busy_with_clone = false;
        match result {
            Ok(made) => {
                let mut names = made.iter().cloned();
                self.slots[slot].database = names.next();
                self.slots[slot].extra = names.collect();
                if self.stopping
                    || self.slots[slot].unneeded()
                    || generation != self.slots[slot].generation
                {
                    return;
                }
                // A worker started while the template was built waits for this
                // clone. The others too, if they asked while it was coming:
                // there may be nothing left for them now.
                if self.worker(slot, generation).is_some() {
                    self.status(slot, "ready");
                    return self.feed_all();
                }
                self.start_worker(slot, made);
            }
            Err(CloneFailure::Interrupted) => {}
            Err(CloneFailure::Error(e)) if self.slots[slot].probe.is_some() => {
                // The run's own tests are done: its failures are reported as
                // they are, and the teardown says what became of the server.
                self.note(format!(
                    "could not make a fresh clone to run failed tests again ({e}); they are reported as they ran"
                ));
                self.probes_failed = true;
                self.probe_done(slot);
            }
            Err(CloneFailure::Error(e)) => self.fail(
                exit::SETUP_OR_DATABASE,
                format!("could not make the clone of worker {}: {e}", label(slot)),
                None,
            ),
        }
    }

    pub(super) fn start_worker(&mut self, slot: usize, clones: Vec<String>) {
        let generation = self.slots[slot].generation;
        let id = format!("{slot}.{generation}");
        self.out.push(Command::StartWorker {
            slot,
            generation,
            id: id.clone(),
            clones,
        });
        let s = &mut self.slots[slot];
        // A probe's worker is not one of the slot's (nor a restart).
        s.workers_started += usize::from(s.probe.is_none());
        s.worker = Some(SlotWorker {
            id,
            generation,
            conn: None,
            life: Life::Starting,
            exited: false,
            pending_exit: None,
            running: None,
            ran: Vec::new(),
            hungry: false,
            stopped: false,
            started: self.now,
        });
        let status = if self.params.protocol {
            "starting"
        } else {
            "running"
        };
        self.status(slot, status);
    }

    /// A worker's `fresh`: its previous fresh clone goes, the next is handed
    /// out as soon as one is ready.
    pub(super) fn on_fresh(&mut self, slot: usize, generation: usize) {
        if !self.params.fresh_transactional {
            return self.fail(
                exit::USAGE,
                format!("{} asked for a fresh clone, but this run does not make them (DBFORK_FRESH is not set by dbfork without --fresh-transactional): the adapter and dbfork disagree; install matching versions", label(slot)),
                None,
            );
        }
        if let Some(old) = self.slots[slot].fresh.take() {
            self.fresh.release(&old);
        }
        if let Some(name) = self.fresh.acquire((slot, generation), self.now) {
            self.grant_fresh(slot, generation, name);
        }
        self.top_up_fresh();
    }

    /// Sends a leased fresh clone to its worker (if it is still there).
    pub(super) fn grant_fresh(&mut self, slot: usize, generation: usize, name: String) {
        let conn = self
            .worker(slot, generation)
            .filter(|w| !w.gone())
            .and_then(|w| w.conn);
        match conn {
            Some(conn) if self.conns.contains_key(&conn) => {
                self.out.push(Command::GrantFresh {
                    conn,
                    name: name.clone(),
                });
                self.slots[slot].fresh = Some(name);
            }
            _ => {
                self.fresh.release(&name);
            }
        }
    }

    /// Keeps one fresh clone ready (or in the making) per worker, plus one
    /// for every worker waiting; drops the used ones.
    pub(super) fn top_up_fresh(&mut self) {
        for name in self.fresh.to_drop() {
            self.fresh.dropped(&name);
            self.drop_clone(name, false);
        }
        if !self.params.fresh_transactional || self.template != TemplatePhase::Ready {
            return;
        }
        // Winding down, none are made ahead; but a test that is running
        // still gets the fresh clone it asks for (a worker runs out what it
        // holds after `stop`).
        let ahead = if self.stopping { 0 } else { self.slots.len() };
        self.fresh.set_target(ahead);
        let run_id = self.params.run_id.clone();
        for name in self.fresh.to_make(|n| names::fresh_clone_name(&run_id, n)) {
            self.clone_tasks += 1;
            self.out.push(Command::MakeFresh { name });
        }
    }

    pub(super) fn on_fresh_made(&mut self, name: &str, result: Result<(), CloneFailure>) {
        self.clone_tasks -= 1;
        for grant in self.fresh.made(name, result.is_ok()) {
            let (slot, generation) = grant.holder;
            self.grant_fresh(slot, generation, grant.name);
        }
        self.top_up_fresh();
        if let Err(CloneFailure::Error(e)) = result {
            self.fail(
                exit::SETUP_OR_DATABASE,
                format!("could not make a fresh clone for a transactional test: {e}"),
                None,
            );
        }
    }

    /// Drops the slot's clone (the crashed test may have left it in any state)
    /// and makes the next generation's.
    pub(super) fn replace_clone(&mut self, slot: usize) {
        let old = self.slots[slot].database.take();
        let extra = std::mem::take(&mut self.slots[slot].extra);
        self.slots[slot].fresh = None;
        self.fresh.forget(&(slot, self.slots[slot].generation));
        self.slots[slot].generation += 1;
        for name in old.into_iter().chain(extra) {
            self.drop_clone(name, true);
        }
        self.top_up_fresh();
        self.make_clone(slot);
    }
}

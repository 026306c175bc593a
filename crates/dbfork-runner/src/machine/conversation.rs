//! The machine's side of the worker protocol: hello, collection, each test
//! started and its result, and feeding each worker its next tests.

use super::*;

impl Machine {
    /// A connection closed: a worker's exit that waited for its last lines
    /// is taken now; a close without bye waits a little for the exit status
    /// (a crash report names the signal), but not forever: a worker that
    /// hangs after closing is lost too.
    pub(super) fn on_closed(&mut self, conn: usize) {
        let Some(Some((slot, generation))) = self.conns.remove(&conn) else {
            return;
        };
        let pending = self
            .worker_mut(slot, generation)
            .and_then(|w| w.pending_exit.take());
        if let Some(exit) = pending {
            return self.on_exit(slot, generation, exit);
        }
        let clean = self
            .worker(slot, generation)
            .is_none_or(|w| w.said_bye() || w.exited);
        if !clean {
            self.out.push(Command::After {
                delay: Duration::from_secs(2),
                input: Input::ClosedLongAgo { slot, generation },
            });
        }
    }

    /// A worker sent something dbfork cannot read: its connection ends and it
    /// is lost (its test reported, a replacement on a fresh clone); the other
    /// workers go on.
    pub(super) fn reject(&mut self, conn: usize, why: String) {
        let Some(owner) = self.conns.remove(&conn) else {
            return;
        };
        match owner {
            Some((slot, generation)) => {
                self.note(format!(
                    "{} sent something dbfork cannot read ({}); it is stopped",
                    label(slot),
                    truncate(&why, 300)
                ));
                self.lose(slot, generation, LossCause::Protocol(why));
            }
            None => tracing::warn!("a connection that never said hello sent {why}; closed"),
        }
    }

    pub(super) fn worker(&self, slot: usize, generation: usize) -> Option<&SlotWorker> {
        self.slots[slot]
            .worker
            .as_ref()
            .filter(|w| w.generation == generation)
    }

    pub(super) fn worker_mut(&mut self, slot: usize, generation: usize) -> Option<&mut SlotWorker> {
        self.slots[slot]
            .worker
            .as_mut()
            .filter(|w| w.generation == generation)
    }

    /// Sends to `slot`'s worker; false when it has no connection (yet).
    pub(super) fn send(&mut self, slot: usize, message: RunnerMessage) -> bool {
        let conn = self.slots[slot].worker.as_ref().and_then(|w| w.conn);
        match conn.filter(|c| self.conns.contains_key(c)) {
            Some(conn) => {
                self.out.push(Command::Send { conn, message });
                true
            }
            None => false,
        }
    }

    pub(super) fn on_message(&mut self, conn: usize, message: WorkerMessage) {
        let (slot, generation) = match (self.conns.get(&conn).copied().flatten(), &message) {
            (
                _,
                WorkerMessage::Hello {
                    worker_id, maxfail, ..
                },
            ) => return self.on_hello(conn, worker_id, *maxfail),
            (Some(owner), _) => owner,
            (None, _) => return,
        };
        if self.worker(slot, generation).is_none_or(|w| w.gone()) {
            return;
        }
        match message {
            WorkerMessage::Hello { .. } => {}
            WorkerMessage::Collected {
                tests,
                errors,
                skipped,
                continue_on_errors,
                django_facts,
            } => {
                if let Some(message) = self.facts_differ(slot, django_facts.as_ref()) {
                    return self.fail(exit::SETUP_OR_DATABASE, message, None);
                }
                if self.tests.is_none() {
                    self.collect_skipped =
                        skipped.into_iter().map(|e| (e.id, e.longrepr)).collect();
                }
                // `collected` is also the worker's first `want`.
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.hungry = true;
                    w.life = Life::Working;
                }
                self.on_collected(slot, tests, errors, continue_on_errors);
                // Everyone, not only this worker: one that waited because a
                // replacement was coming (holding just its committed last
                // test) learns now that there is nothing more, or is stolen from.
                self.feed_all();
                self.top_up_fresh();
            }
            WorkerMessage::Want => {
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.hungry = true;
                }
                self.feed(slot);
            }
            WorkerMessage::Started { index } => self.on_started(slot, generation, index),
            WorkerMessage::Result(result) => self.on_result(slot, generation, result),
            WorkerMessage::Released { tests } => {
                if let Some(s) = self.scheduler.as_mut() {
                    s.released(slot, &tests);
                }
                self.feed_all();
            }
            WorkerMessage::Fresh => self.on_fresh(slot, generation),
            WorkerMessage::Configured { .. }
            | WorkerMessage::Built { .. }
            | WorkerMessage::Forked { .. }
            | WorkerMessage::Exited { .. } => self.fail(
                exit::USAGE,
                format!("{} sent a controller's message; install matching versions of dbfork and its adapter", label(slot)),
                None,
            ),
            WorkerMessage::Bye => {
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.life = Life::Finishing;
                }
                // A steal sent to it may cross its bye and stay unanswered:
                // it holds nothing now (anything it did hold goes back to the
                // queue), and a worker waiting on that steal is fed.
                if let Some(s) = self.scheduler.as_mut() {
                    s.lost(slot);
                }
                self.status(slot, "done");
                self.feed_all();
                self.stop_controller_when_done();
            }
        }
    }

    /// A worker's hello: the connection becomes its slot's, or, from a stray
    /// process (an old generation), gets `stop` and nothing to do.
    pub(super) fn on_hello(&mut self, conn: usize, worker_id: &str, maxfail: Option<usize>) {
        // The tool's own reading of its options beats dbfork's parse of the
        // command line (addopts, PYTEST_ADDOPTS, `-xq`).
        if let Some(maxfail) = maxfail {
            self.maxfail = maxfail;
        }
        let found = self.slots.iter().enumerate().find_map(|(slot, s)| {
            s.worker
                .as_ref()
                .filter(|w| w.id == worker_id && !w.gone())
                .map(|w| (slot, w.generation))
        });
        let Some((slot, generation)) = found else {
            if self.conns.contains_key(&conn) {
                self.out.push(Command::Send {
                    conn,
                    message: RunnerMessage::Stop,
                });
            }
            return;
        };
        if let Some(owner) = self.conns.get_mut(&conn) {
            *owner = Some((slot, generation));
        }
        if let Some(w) = self.worker_mut(slot, generation) {
            w.conn = Some(conn);
            w.life = Life::Collecting;
        }
        self.status(slot, "collecting");
        if self.stopping || self.slots[slot].unneeded() {
            self.stop_worker(slot);
        }
    }

    pub(super) fn on_started(&mut self, slot: usize, generation: usize, index: usize) {
        if let Some(s) = self.scheduler.as_mut() {
            s.started(slot, index);
        }
        let id = self
            .tests
            .as_ref()
            .and_then(|t| t.get(index))
            .map(|t| t.id.clone())
            .unwrap_or_default();
        let now = self.now;
        if let Some(w) = self.worker_mut(slot, generation) {
            w.running = Some((index, now));
            w.ran.push(index);
        }
        self.status(slot, &id);
    }

    pub(super) fn on_result(&mut self, slot: usize, generation: usize, result: TestResult) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        // A result is for the test the worker said it started, once.
        if w.running.is_none_or(|(i, _)| i != result.index) {
            let why = format!(
                "a result for test {} without starting it (the protocol is: started, then result)",
                result.index
            );
            if let Some(conn) = w.conn {
                return self.reject(conn, why);
            }
            return self.lose(slot, generation, LossCause::Protocol(why));
        }
        w.running = None;
        let worker_id = Some(w.id.clone());
        let Some(item) = self
            .tests
            .as_ref()
            .and_then(|t| t.get(result.index))
            .cloned()
        else {
            return;
        };
        let verdict = decide::result_verdict(&result);
        self.record_of(
            slot,
            TestRecord {
                index: result.index,
                id: item.id,
                file: item.file,
                class: item.class,
                outcome: verdict.outcome,
                duration: verdict.duration,
                slot: Some(slot),
                worker_id,
                phases: result.phases,
                longrepr: verdict.longrepr,
                stdout: result.stdout,
                stderr: result.stderr,
                tries: Vec::new(),
                diagnosis: None,
            },
            None,
        );
    }

    /// Why a worker's Django configuration is not the one the template was
    /// made with (the controller's), if it is not.
    pub(super) fn facts_differ(
        &self,
        slot: usize,
        facts: Option<&BTreeMap<String, String>>,
    ) -> Option<String> {
        let (expected, found) = (self.params.django_facts.as_ref()?, facts?);
        Some(format!(
            "{} configured Django differently from the controller that made the template: {}",
            label(slot),
            decide::facts_difference(expected, found)?
        ))
    }

    /// A test's result from `slot`'s worker: a probe's, or the run's.
    pub(super) fn record_of(
        &mut self,
        slot: usize,
        record: TestRecord,
        output_of: Option<(usize, usize)>,
    ) {
        match self.slots[slot].probe {
            Some(_) => self.probe_result(slot, record, output_of),
            None => self.record(record, output_of),
        }
    }

    pub(super) fn record(&mut self, record: TestRecord, output_of: Option<(usize, usize)>) {
        if record.outcome.is_failure() {
            self.failures += 1;
            if self.maxfail > 0 && self.failures >= self.maxfail && !self.stopping {
                self.note(format!(
                    "stopping after {} failure{} (-x / --maxfail / --failfast); tests not started are not run",
                    self.failures,
                    if self.failures == 1 { "" } else { "s" }
                ));
                self.take_back_everything();
                self.stop_everything();
            }
        }
        if let Some(slot) = record.slot {
            self.slots[slot].tests_run += 1;
            self.slots[slot].busy += record.duration;
        }
        if let Some(place) = self.outcomes.get_mut(record.index) {
            *place = Some(record.outcome);
        }
        if let Some(record) = self.hold_for_probes(record, output_of) {
            self.out.push(Command::Report { record, output_of });
        }
    }

    pub(super) fn on_collected(
        &mut self,
        slot: usize,
        tests: Vec<TestItem>,
        errors: Vec<protocol::CollectError>,
        continue_on_errors: bool,
    ) {
        if let Some(known) = &self.tests {
            if *known != tests {
                let detail = first_difference(known, &tests);
                return self.fail(
                    exit::INTERRUPTED,
                    format!("{} collected different tests than the first worker ({detail}); no test ran on a wrong list. Test ids and their order must be the same in every process: a value that differs between processes (a random number, a temporary path, a secret made at import time) in a parametrize id or a test name makes them differ. pytest-xdist makes such values once in its controller when they go into the environment while pytest configures, and dbfork passes that environment on too; values made at import time in each process cannot be shared. Randomized order: pass `-p no:randomly` or a fixed seed.", label(slot)),
                    None,
                );
            }
            return;
        }
        self.outcomes = vec![None; tests.len()];
        self.collect_errors = errors.into_iter().map(|e| (e.id, e.longrepr)).collect();
        self.selected = self.params.shard.map(|shard| self.select(&tests, shard));
        self.only = self
            .params
            .only
            .as_ref()
            .map(|ids| tests.iter().map(|t| ids.contains(&t.id)).collect());
        if self.params.bisect.is_some() {
            // None of the run's own: its slots go to the probes.
            self.only = Some(vec![false; tests.len()]);
            if let Err(why) = self.start_bisection(&tests) {
                return self.fail(exit::USAGE, why, None);
            }
        }
        let keep: Vec<bool> = (0..tests.len()).map(|i| self.selected(i)).collect();
        let mine = keep.iter().filter(|k| **k).count();
        if self.bisection.is_none() {
            self.out.push(Command::Collected {
                all: tests.len(),
                mine,
            });
        }
        let timings = &self.timings;
        let mut scheduler = Scheduler::new_for(
            &tests,
            self.params.dist,
            self.params.order,
            self.slots.len(),
            |id| timings.estimate(id),
            |i| keep[i],
        );
        if let Some(lists) = &self.params.pinned {
            let index: HashMap<&str, usize> = (tests.iter().enumerate())
                .map(|(i, t)| (t.id.as_str(), i))
                .collect();
            let lists = lists.iter().map(|ids| {
                let found = ids.iter().filter_map(|id| index.get(id.as_str()).copied());
                found.filter(|&i| keep[i]).collect()
            });
            scheduler.pin(lists.collect());
        }
        let units = scheduler.units();
        self.tests = Some(tests);
        self.scheduler = Some(scheduler);
        if !self.collect_errors.is_empty() && !continue_on_errors {
            let n = self.collect_errors.len();
            self.note(format!(
                "Interrupted: {n} error{} during collection",
                if n == 1 { "" } else { "s" }
            ));
            self.fatal = Some(exit::INTERRUPTED);
            self.stop_everything();
            return;
        }
        if units == 0 && self.bisection.is_none() {
            self.stop_everything();
            return;
        }
        // Never more workers than units of work.
        for extra in units..self.slots.len() {
            self.slots[extra].retired = true;
            if let Some(s) = self.scheduler.as_mut() {
                s.retire(extra);
            }
            if self.slots[extra].worker.is_some() {
                self.stop_worker(extra);
            }
        }
        self.feed_all();
    }

    /// This shard's tests of the split every shard computes alike.
    pub(super) fn select(&mut self, tests: &[TestItem], shard: Shard) -> (Vec<bool>, ShardReport) {
        let timings = &self.timings;
        let shard_of = crate::shard::split(tests, self.params.dist, shard.total, |id| {
            timings.estimate(id)
        });
        let selected: Vec<bool> = shard_of.iter().map(|s| *s + 1 == shard.index).collect();
        let mine = selected.iter().filter(|s| **s).count();
        let report = ShardReport {
            index: shard.index,
            total: shard.total,
            split: crate::shard::fingerprint(tests, &shard_of, shard.total),
            collected: tests.len(),
        };
        self.note(format!(
            "shard {}: {mine} of the {} tests (split {}, by {})",
            shard.label(),
            tests.len(),
            report.split,
            if self.timings.is_empty() {
                "count: no recorded durations yet"
            } else {
                "the recorded durations"
            }
        ));
        (selected, report)
    }

    /// Gives `slot` work if it asked: a batch, or a steal on its behalf, or `stop`.
    pub(super) fn feed(&mut self, slot: usize) {
        let Some(w) = self.slots[slot].worker.as_ref() else {
            return;
        };
        if !w.hungry || w.stopped || w.gone() {
            return;
        }
        if self.stopping || self.slots[slot].unneeded() {
            return self.stop_worker(slot);
        }
        if let Some(assignment) = self.slots[slot].probe.as_mut() {
            // A probe's worker: its tests, then it is done.
            return match assignment.take_tests() {
                Some(tests) => {
                    if let Some(w) = self.slots[slot].worker.as_mut() {
                        w.hungry = false;
                    }
                    self.send(slot, RunnerMessage::Run { tests });
                }
                None => self.stop_worker(slot),
            };
        }
        if self.slots[slot].database.is_none() {
            // Started before its clone existed: its first test waits for it.
            return;
        }
        let Some(scheduler) = self.scheduler.as_mut() else {
            return;
        };
        if let Some(batch) = scheduler.next_batch(slot) {
            if let Some(w) = self.slots[slot].worker.as_mut() {
                w.hungry = false;
            }
            self.send(slot, RunnerMessage::Run { tests: batch });
            return;
        }
        if let Some((victim, tests)) = scheduler.pick_steal(slot) {
            self.send(victim, RunnerMessage::Steal { tests });
            return;
        }
        if scheduler.steal_pending() || self.replacement_coming() {
            return;
        }
        self.stop_worker(slot);
    }

    pub(super) fn feed_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.feed(slot);
        }
    }
}

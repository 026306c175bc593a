//! How workers and the run end: exits, losses and their replacements,
//! signals, deadlines, stopping everything.

use super::*;

impl Machine {
    pub(super) fn on_exited(&mut self, slot: usize, generation: usize, exit: Exit) {
        let connected = self.conns.values().any(|c| *c == Some((slot, generation)));
        match self.worker_mut(slot, generation) {
            // Its last lines may still be on their way: read them first.
            Some(w) if connected && !w.gone() => {
                w.pending_exit = Some(exit);
                self.out.push(Command::After {
                    delay: Duration::from_secs(2),
                    input: Input::ExitedLongAgo { slot, generation },
                });
            }
            _ => self.on_exit(slot, generation, exit),
        }
    }

    /// Whether a slot is getting a new worker (whose work may need sharing).
    pub(super) fn replacement_coming(&self) -> bool {
        (self.slots.iter()).any(|s| s.busy_with_clone && !s.retired && s.probe.is_none())
    }

    /// Tells `slot`'s worker to finish. One that has not connected yet is told
    /// when it says hello.
    pub(super) fn stop_worker(&mut self, slot: usize) {
        let sent = self.send(slot, RunnerMessage::Stop);
        if let Some(w) = self.slots[slot].worker.as_mut() {
            w.stopped = sent;
            w.hungry = false;
        }
    }

    /// Asks every worker to give back the tests it has not started.
    pub(super) fn take_back_everything(&mut self) {
        for slot in 0..self.slots.len() {
            let held = self
                .scheduler
                .as_ref()
                .map(|s| s.held(slot).to_vec())
                .unwrap_or_default();
            if !held.is_empty() {
                self.send(slot, RunnerMessage::Steal { tests: held });
            }
        }
    }

    pub(super) fn stop_everything(&mut self) {
        self.stopping = true;
        for slot in 0..self.slots.len() {
            if self.slots[slot].worker.as_ref().is_some_and(|w| !w.gone()) {
                self.stop_worker(slot);
            }
        }
    }

    /// Signals every worker that has not exited.
    pub(super) fn signal_all(&mut self, signal: Sig) {
        let live: Vec<(usize, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let w = s.worker.as_ref().filter(|w| !w.exited)?;
                Some((slot, w.generation))
            })
            .collect();
        for (slot, generation) in live {
            self.out.push(Command::Signal {
                slot,
                generation,
                signal,
            });
        }
    }

    /// Ends the run with an error that is not about one test.
    pub(super) fn fail(&mut self, code: i32, message: String, output_of: Option<(usize, usize)>) {
        if self.fatal.is_none() {
            self.out.push(Command::Error { message, output_of });
            self.fatal = Some(code);
        }
        self.stopping = true;
        self.signal_all(Sig::Kill);
    }

    pub(super) fn on_exit(&mut self, slot: usize, generation: usize, exit: Exit) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        w.exited = true;
        let (hello, bye, gone) = (w.said_hello(), w.said_bye(), w.gone());
        if gone {
            return;
        }
        if !self.params.protocol {
            return self.generic_exit(slot, generation, exit);
        }
        if !hello && !self.stopping {
            // pytest ended before its plugin connected: a usage error, a broken
            // conftest, or the plugin is not loaded.
            let (code, why) = match exit.code {
                Some(4) => (exit::USAGE, "pytest refused its arguments (usage error)".to_string()),
                Some(0 | 1) => (
                    exit::USAGE,
                    "the test command ended before it connected to dbfork: it could not start (see its output), or pytest ran without dbfork's plugin (`-p no:dbfork` in PYTEST_ADDOPTS or the config; use `--adapter none` to run the command once per worker instead)".to_string(),
                ),
                Some(5) => (exit::NO_TESTS, "pytest collected no tests".to_string()),
                _ => (exit::SETUP_OR_DATABASE, format!("the test command ended ({}) before it started running tests", exit.how)),
            };
            return self.fail(
                code,
                format!("{why}. Its output:\n{}", indent(&exit.tail)),
                None,
            );
        }
        if !bye {
            return self.lose(slot, generation, LossCause::Exited(exit.how));
        }
        if let Some(w) = self.worker_mut(slot, generation) {
            w.set_gone();
        }
        self.probe_done(slot);
        if exit.code == Some(protocol::EXIT_RUN_AGAIN) && !self.ran_again {
            // Its tests ran and are reported; the tests of the run it started
            // after them were not run. The other workers finish theirs.
            self.ran_again = true;
            // The adapter says which tests those were, on its last line.
            let said = exit
                .tail
                .lines()
                .rev()
                .find(|l| l.starts_with("dbfork: "))
                .map(indent)
                .unwrap_or_else(|| indent(&exit.tail));
            self.out.push(Command::Error {
                message: format!(
                    "{} started a second test run in its process after its tests (a script that runs its test runner twice, e.g. one label set after another), which dbfork does not run. It said:\n{said}",
                    label(slot),
                ),
                output_of: None,
            });
        }
        self.status(slot, "finished");
    }

    /// A command run once per slot (no adapter) ended: that is its slot's result.
    pub(super) fn generic_exit(&mut self, slot: usize, generation: usize, exit: Exit) {
        let now = self.now;
        let elapsed = self
            .worker(slot, generation)
            .map(|w| now.saturating_duration_since(w.started).as_secs_f64())
            .unwrap_or_default();
        if let Some(w) = self.worker_mut(slot, generation) {
            w.set_gone();
        }
        if self.outcomes.get(slot) == Some(&Some(Outcome::TimedOut)) {
            return;
        }
        let outcome = match (exit.success, self.interrupted()) {
            (true, _) => Outcome::Passed,
            (false, true) => Outcome::NotRun,
            (false, false) => Outcome::Failed,
        };
        let longrepr = (!exit.success).then(|| {
            format!(
                "the command ended with {}; its last output:\n{}",
                exit.how, exit.tail
            )
        });
        self.record(
            slot_record(slot, generation, outcome, elapsed, longrepr),
            None,
        );
    }

    /// A worker is gone without saying bye (crash, kill, timeout): report its
    /// test, requeue what it held, and give the slot a fresh clone and worker.
    pub(super) fn lose(&mut self, slot: usize, generation: usize, cause: LossCause) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        if w.gone() {
            return;
        }
        w.set_gone();
        let (running, exited) = (w.running.take(), w.exited);
        if !exited {
            self.out.push(Command::Signal {
                slot,
                generation,
                signal: Sig::Kill,
            });
        }
        if let Some(s) = self.scheduler.as_mut() {
            s.lost(slot);
        }
        if let Some((index, since)) = running {
            self.report_lost_test(slot, generation, index, since, &cause);
        }
        if self.slots[slot].probe.is_some() {
            // A probe's worker is not replaced: the next probe gets a fresh one.
            return self.probe_done(slot);
        }
        let running_elsewhere = self
            .slots
            .iter()
            .filter(|s| {
                s.worker
                    .as_ref()
                    .is_some_and(|w| !w.gone() && w.running.is_some())
            })
            .count();
        let others_gone = self
            .slots
            .iter()
            .enumerate()
            .all(|(i, s)| i == slot || s.retired || s.worker.as_ref().is_none_or(|w| w.gone()));
        let max = self.params.max_worker_restarts;
        let next = decide::after_loss(LossFacts {
            stopping: self.stopping,
            collected: self.tests.is_some(),
            unfinished: self.unfinished(),
            running_elsewhere,
            restarts_used: self.restarts_used,
            max_restarts: max,
            others_gone,
        });
        match next {
            AfterLoss::Nothing => return,
            AfterLoss::FeedTheOthers => return self.feed_all(),
            AfterLoss::Retire { all_lost } => {
                self.note(format!(
                    "{} is gone and the {max} worker restarts (--max-worker-restarts) are used up",
                    label(slot)
                ));
                self.slots[slot].retired = true;
                self.slots[slot].given_up = true;
                self.out_of_restarts = true;
                if all_lost {
                    self.lost_all = true;
                    self.stopping = true;
                }
                return self.feed_all();
            }
            AfterLoss::Replace => {}
        }
        self.restarts_used += 1;
        self.note(format!(
            "{} {}; replacing it on a fresh clone",
            label(slot),
            cause.summary()
        ));
        self.status(slot, "making a fresh clone");
        self.replace_clone(slot);
        self.feed_all();
    }

    /// The test a lost worker was running: crashed, timed out, or not run.
    pub(super) fn report_lost_test(
        &mut self,
        slot: usize,
        generation: usize,
        index: usize,
        since: Instant,
        cause: &LossCause,
    ) {
        let run = if self.interrupted() {
            RunState::Interrupted
        } else if self.fatal.is_some() {
            RunState::Failed
        } else {
            RunState::Going
        };
        let (outcome, what) = decide::lost_test(cause, run, &label(slot));
        let Some(item) = self.tests.as_ref().and_then(|t| t.get(index)).cloned() else {
            return;
        };
        self.record_of(
            slot,
            TestRecord {
                index,
                id: item.id,
                file: item.file,
                class: item.class,
                outcome,
                duration: self.now.saturating_duration_since(since).as_secs_f64(),
                slot: Some(slot),
                worker_id: Some(format!("{slot}.{generation}")),
                phases: Vec::new(),
                longrepr: Some(format!("{what}; its last output:\n")),
                stdout: String::new(),
                stderr: String::new(),
                tries: Vec::new(),
                diagnosis: None,
            },
            Some((slot, generation)),
        );
    }

    pub(super) fn on_signal(&mut self) {
        self.signals += 1;
        self.stopping = true;
        let signal = if self.signals == 1 {
            self.grace_until = Some(self.now + self.params.grace);
            self.note(format!(
                "interrupted: stopping the workers (they get {:.0?}; press Ctrl-C again to kill them at once), then dropping the clones",
                self.params.grace
            ));
            Sig::Interrupt
        } else {
            self.note("killing the workers".to_string());
            Sig::Kill
        };
        self.signal_all(signal);
    }

    /// Ends the run when a worker did not finish starting in time: the same
    /// code runs in every worker, so a replacement would hang the same way.
    pub(super) fn check_startups(&mut self) {
        let limit = self.params.start_limit;
        let now = self.now;
        let late = self.slots.iter().enumerate().find_map(|(slot, s)| {
            let w = s.worker.as_ref().filter(|w| w.starting())?;
            (w.started + limit <= now).then_some((slot, w.generation, w.said_hello()))
        });
        let Some((slot, generation, hello)) = late else {
            return;
        };
        let stage = if hello {
            "connected, but did not report what it collected"
        } else {
            "did not connect to dbfork"
        };
        self.fail(
            exit::SETUP_OR_DATABASE,
            format!(
                "{} {stage} within {limit:.0?} of its start: a conftest.py, an import or a plugin that hangs? (--start-timeout sets the limit, if the start really needs longer). Its last output:\n",
                label(slot),
            ),
            Some((slot, generation)),
        );
    }

    pub(super) fn on_deadline(&mut self) {
        let now = self.now;
        if self.params.protocol && self.fatal.is_none() {
            self.check_startups();
        }
        if self.grace_until.is_some_and(|g| g <= now) {
            self.grace_until = None;
            self.signal_all(Sig::Kill);
        }
        let Some(limit) = self.params.timeout else {
            return;
        };
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_ref().filter(|w| !w.gone()) else {
                continue;
            };
            let since = if self.params.protocol {
                w.running.map(|(_, s)| s)
            } else {
                Some(w.started)
            };
            if since.is_none_or(|s| s + limit > now) {
                continue;
            }
            let generation = w.generation;
            if self.params.protocol {
                self.lose(slot, generation, LossCause::Timeout(limit));
                continue;
            }
            self.out.push(Command::Signal {
                slot,
                generation,
                signal: Sig::Kill,
            });
            let why =
                format!("timed out after {limit:.0?}: the command was killed; its last output:\n");
            let record = slot_record(
                slot,
                generation,
                Outcome::TimedOut,
                limit.as_secs_f64(),
                Some(why),
            );
            self.record(record, Some((slot, generation)));
        }
    }

    /// Once every worker is through with its tests (said bye, or is gone),
    /// the controller is told to end, so that its teardown and the workers'
    /// exits overlap instead of following each other.
    pub(super) fn stop_controller_when_done(&mut self) {
        if !self.controller || self.clone_tasks > 0 || self.probing() {
            return;
        }
        // A slot given up may still have a worker starting: the controller's
        // cleanup (a temporary directory its configuration made, say) must
        // wait for it too, or that worker fails to start.
        let done = self.slots.iter().all(|s| match &s.worker {
            Some(w) => w.said_bye() || w.exited || w.gone(),
            None => s.retired,
        });
        if done {
            self.controller = false;
            self.out.push(Command::StopController);
        }
    }

    pub(super) fn interrupted(&self) -> bool {
        self.signals > 0
    }

    pub(super) fn note(&mut self, message: String) {
        self.out.push(Command::Note(message));
    }

    pub(super) fn status(&mut self, slot: usize, status: &str) {
        self.out.push(Command::Status {
            slot,
            status: status.to_string(),
        });
    }
}

//! The dispatcher's decisions as one state machine: [`Input`]s in (a clone
//! was made, a worker said something, exited, a deadline passed, a signal),
//! [`Command`]s out (start a worker, send it a message, make or drop a
//! clone, report a test, signal a process). No I/O and no clock of its own:
//! the executor in `run.rs` owns the processes, sockets, clones and timers,
//! tells the machine what happened and at what time, and carries out what it
//! says. What a run decides (whom to feed, what to clone, what a crash or a
//! timeout means, when the run is over) lives here and is tested here, down
//! to the property that every test is reported exactly once whatever the
//! interleaving of crashes, steals and stops.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dbfork_engine::names;
use dbfork_engine::pool::Pool;
use dbfork_protocol::{self as protocol, RunnerMessage, TestItem, TestResult, WorkerMessage};

use crate::decide::{self, truncate, AfterLoss, LossCause, LossFacts, RunState};
use crate::model::{Outcome, ShardReport, SlotReport, TestRecord};
use crate::progress::label;
use crate::run::exit;
use crate::schedule::Scheduler;
use crate::shard::Shard;
use crate::timings::Timings;
use crate::Dist;

/// What the machine is told.
#[derive(Debug)]
pub enum Input {
    /// The template is being built: every slot's first worker starts now,
    /// each waiting for its clone (pytest's workers start beside the build).
    Prestart,
    /// The template is ready (named `name`); `controller`: a controller process
    /// is running and must be told to end once the workers are done.
    TemplateReady {
        name: String,
        controller: bool,
    },
    /// A slot's clones (its own, then one per extra alias) were made, or not.
    CloneMade {
        slot: usize,
        generation: usize,
        result: Result<Vec<String>, CloneFailure>,
    },
    CloneDropped,
    /// A fresh clone for `--fresh-transactional` was made (or not).
    FreshMade {
        name: String,
        result: Result<(), CloneFailure>,
    },
    /// A worker connected to the socket (it has not said who it is yet).
    Connected {
        conn: usize,
    },
    Message {
        conn: usize,
        message: WorkerMessage,
    },
    /// A worker sent a line dbfork cannot take (oversized, unreadable, not the protocol).
    Unreadable {
        conn: usize,
        why: String,
    },
    Closed {
        conn: usize,
    },
    /// A worker closed its connection without `bye` a while ago.
    ClosedLongAgo {
        slot: usize,
        generation: usize,
    },
    Exited {
        slot: usize,
        generation: usize,
        exit: Exit,
    },
    /// A worker exited two seconds ago and its connection is still open (a
    /// forked child holds it): its exit is taken as it is.
    ExitedLongAgo {
        slot: usize,
        generation: usize,
    },
    /// A worker's process could not be started (or its environment made).
    SpawnFailed {
        slot: usize,
        generation: usize,
        code: i32,
        message: String,
    },
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The time [`Machine::next_deadline`] named has come.
    Deadline,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CloneFailure {
    /// The run was cancelled while the clone was made.
    Interrupted,
    Error(String),
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Its exit code, if it exited (not killed by a signal).
    pub code: Option<i32>,
    pub success: bool,
    /// In words: "exit code 3", "signal 9 (SIGKILL)".
    pub how: String,
    /// Its last output.
    pub tail: String,
}

/// A signal for a worker's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Interrupt,
    Kill,
}

/// What the machine asks the executor to do, in order.
#[derive(Debug)]
pub enum Command {
    /// Start `slot`'s worker `id` on the clones named (they may not exist
    /// yet: a prestarted worker waits for them).
    StartWorker {
        slot: usize,
        generation: usize,
        id: String,
        clones: Vec<String>,
    },
    /// Make clones of the template with these names; answer [`Input::CloneMade`].
    MakeClones {
        slot: usize,
        generation: usize,
        names: Vec<String>,
    },
    /// Make one fresh clone; answer [`Input::FreshMade`].
    MakeFresh {
        name: String,
    },
    /// Drop a clone in the background; answer [`Input::CloneDropped`].
    DropClone {
        name: String,
    },
    Send {
        conn: usize,
        message: RunnerMessage,
    },
    /// Send the worker on `conn` its fresh clone `name` (as the worker names databases).
    GrantFresh {
        conn: usize,
        name: String,
    },
    /// Signal the process group of a worker that has not exited.
    Signal {
        slot: usize,
        generation: usize,
        signal: Sig,
    },
    /// Give the machine `input` after `delay`.
    After {
        delay: Duration,
        input: Input,
    },
    /// The workers are done: the controller may end now.
    StopController,
    Note(String),
    /// An error that ends the run; with the last output of a worker appended.
    Error {
        message: String,
        output_of: Option<(usize, usize)>,
    },
    /// The tests are known: how many were collected, and how many of them
    /// this run runs (fewer with `--shard`).
    Collected {
        all: usize,
        mine: usize,
    },
    Status {
        slot: usize,
        status: String,
    },
    /// A test's outcome, once per test; with the last output of a worker
    /// appended to its failure text (a crash, a timeout).
    Report {
        record: TestRecord,
        output_of: Option<(usize, usize)>,
    },
}

/// What the machine needs to know of the run, fixed at its start.
#[derive(Debug, Clone)]
pub struct Setup {
    pub run_id: String,
    pub slots: usize,
    /// The workers speak the protocol (else each slot's command is one unit).
    pub protocol: bool,
    /// Extra aliases (`--alias`): one more clone per slot each.
    pub aliases: usize,
    pub fresh_transactional: bool,
    pub dist: Dist,
    /// `--shard K/N`: only this part of the suite runs.
    pub shard: Option<Shard>,
    pub max_worker_restarts: usize,
    pub timeout: Option<Duration>,
    pub start_limit: Duration,
    pub grace: Duration,
    /// Failures after which the run stops (0: never), as the command line says.
    pub maxfail: usize,
    /// The controller's Django facts, which every worker's must equal.
    pub django_facts: Option<BTreeMap<String, String>>,
}

/// Where a worker is in its conversation with dbfork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Started; it has not said hello (nor has a command without an adapter).
    Starting,
    /// Said hello; collecting.
    Collecting,
    /// Reported its collection (its start is over): running tests or
    /// waiting for some.
    Working,
    /// Said bye: finishing its session, then it exits.
    Finishing,
    /// Done with: exited after its bye, or lost (crash, timeout, a protocol
    /// fault) and being replaced; with how far it had got.
    Gone { said_hello: bool, said_bye: bool },
}

#[derive(Debug)]
struct Worker {
    id: String,
    generation: usize,
    conn: Option<usize>,
    life: Life,
    /// The process was reaped (a lost worker may not have exited yet).
    exited: bool,
    /// It exited while its connection was still open: the exit waits until
    /// every line it sent has been read (a result sent just before a crash
    /// is a result, not part of the crash).
    pending_exit: Option<Exit>,
    running: Option<(usize, Instant)>,
    hungry: bool,
    stopped: bool,
    started: Instant,
}

impl Worker {
    fn gone(&self) -> bool {
        matches!(self.life, Life::Gone { .. })
    }

    fn said_hello(&self) -> bool {
        match self.life {
            Life::Starting => false,
            Life::Gone { said_hello, .. } => said_hello,
            _ => true,
        }
    }

    fn said_bye(&self) -> bool {
        match self.life {
            Life::Finishing => true,
            Life::Gone { said_bye, .. } => said_bye,
            _ => false,
        }
    }

    /// Still starting: connecting or collecting.
    fn starting(&self) -> bool {
        matches!(self.life, Life::Starting | Life::Collecting)
    }

    fn set_gone(&mut self) {
        self.life = Life::Gone {
            said_hello: self.said_hello(),
            said_bye: self.said_bye(),
        };
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: usize,
    database: Option<String>,
    /// The clones of the extra aliases (`--alias`), in their order.
    extra: Vec<String>,
    /// The fresh clone its worker's current transactional test runs on.
    fresh: Option<String>,
    worker: Option<Worker>,
    /// A clone is being made or dropped for this slot.
    busy_with_clone: bool,
    /// Not needed: fewer units of work than slots, or out of restarts.
    retired: bool,
    workers_started: usize,
    tests_run: usize,
    busy: f64,
}

/// How a run ended, for its report.
#[derive(Debug)]
pub struct Ending {
    /// dbfork's own error, if one ended the run.
    pub fatal: Option<i32>,
    pub interrupted: bool,
    /// Every worker was lost (the restarts used up).
    pub lost_all: bool,
    /// A slot was given up after a loss (the restarts used up): tests it
    /// gave back may have found no worker left to run them.
    pub out_of_restarts: bool,
    pub slots: Vec<SlotReport>,
    pub collect_errors: Vec<(String, String)>,
    pub collect_skipped: Vec<(String, String)>,
    /// With `--shard`, once the tests are known: this part of the suite.
    pub shard: Option<ShardReport>,
}

pub struct Machine {
    setup: Setup,
    now: Instant,
    template_ready: bool,
    /// Workers were started before the template: it is being built.
    building: bool,
    /// A controller is running and has not been told to end.
    controller: bool,
    slots: Vec<Slot>,
    /// `--fresh-transactional`: clones made ahead, leased to workers (slot,
    /// generation) that ask, each used once.
    fresh: Pool<(usize, usize)>,
    /// Open connections, and whose they are once the worker said hello.
    conns: HashMap<usize, Option<(usize, usize)>>,
    tests: Option<Vec<TestItem>>,
    /// Per test (per slot without the protocol): its outcome once reported.
    outcomes: Vec<Option<Outcome>>,
    /// With `--shard`: per test, whether it is this shard's; and the split.
    selected: Option<(Vec<bool>, ShardReport)>,
    collect_errors: Vec<(String, String)>,
    collect_skipped: Vec<(String, String)>,
    scheduler: Option<Scheduler>,
    timings: Timings,
    restarts_used: usize,
    clone_tasks: usize,
    /// Set once the run is winding down: no more work, no restarts.
    stopping: bool,
    /// Ctrl-C / SIGTERM received so far (one or more: the run is interrupted).
    signals: usize,
    grace_until: Option<Instant>,
    fatal: Option<i32>,
    /// A worker started a second test run after its own (`EXIT_RUN_AGAIN`):
    /// the run fails as a usage error once it is over.
    ran_again: bool,
    lost_all: bool,
    out_of_restarts: bool,
    maxfail: usize,
    failures: usize,
    out: Vec<Command>,
}

impl Machine {
    /// `timings` are what the schedule estimates test durations by.
    pub fn new(setup: Setup, timings: Timings, now: Instant) -> Machine {
        let slots = setup.slots.max(1);
        Machine {
            // Without an adapter each slot's command is one unit of the report.
            outcomes: if setup.protocol {
                Vec::new()
            } else {
                vec![None; slots]
            },
            maxfail: setup.maxfail,
            setup,
            now,
            template_ready: false,
            building: false,
            controller: false,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            // Per slot: one leased, one ready, one for a worker waiting.
            fresh: Pool::new(0, 3 * slots + 1),
            conns: HashMap::new(),
            tests: None,
            selected: None,
            collect_errors: Vec::new(),
            collect_skipped: Vec::new(),
            scheduler: None,
            timings,
            restarts_used: 0,
            clone_tasks: 0,
            stopping: false,
            signals: 0,
            grace_until: None,
            fatal: None,
            ran_again: false,
            lost_all: false,
            out_of_restarts: false,
            failures: 0,
            out: Vec::new(),
        }
    }

    /// Takes `input`, which happened at `now`; returns what to do, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Command> {
        self.now = now;
        match input {
            Input::Prestart => self.prestart_all(),
            Input::TemplateReady { name, controller } => self.template_ready(&name, controller),
            Input::CloneMade {
                slot,
                generation,
                result,
            } => self.on_clone_made(slot, generation, result),
            Input::CloneDropped => self.clone_tasks -= 1,
            Input::FreshMade { name, result } => self.on_fresh_made(&name, result),
            Input::Connected { conn } => {
                self.conns.insert(conn, None);
            }
            Input::Message { conn, message } => self.on_message(conn, message),
            Input::Unreadable { conn, why } => self.reject(conn, why),
            Input::Closed { conn } => self.on_closed(conn),
            Input::ClosedLongAgo { slot, generation } => {
                self.lose(slot, generation, LossCause::Disconnected)
            }
            Input::Exited {
                slot,
                generation,
                exit,
            } => self.on_exited(slot, generation, exit),
            Input::ExitedLongAgo { slot, generation } => {
                let pending = self
                    .worker_mut(slot, generation)
                    .and_then(|w| w.pending_exit.take());
                if let Some(exit) = pending {
                    self.on_exit(slot, generation, exit);
                }
            }
            Input::SpawnFailed {
                slot,
                generation,
                code,
                message,
            } => {
                if let Some(w) = self.worker_mut(slot, generation) {
                    w.exited = true;
                    w.set_gone();
                }
                self.fail(code, message, None);
            }
            Input::Signal => self.on_signal(),
            Input::Deadline => self.on_deadline(),
        }
        std::mem::take(&mut self.out)
    }

    /// The next time something is due (a test's or a start's limit, the end
    /// of the grace period): the executor sends [`Input::Deadline`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let protocol = self.setup.protocol;
        let timeouts = self.setup.timeout.into_iter().flat_map(|limit| {
            self.slots.iter().filter_map(move |s| {
                let w = s.worker.as_ref().filter(|w| !w.gone())?;
                if protocol {
                    w.running.map(|(_, since)| since + limit)
                } else {
                    Some(w.started + limit)
                }
            })
        });
        let startups = self.slots.iter().filter_map(|s| {
            let w = s.worker.as_ref().filter(|w| w.starting())?;
            protocol.then(|| w.started + self.setup.start_limit)
        });
        timeouts.chain(startups).chain(self.grace_until).min()
    }

    /// The run is over: no worker is alive, no clone is being made and the
    /// template is not being built.
    pub fn finished(&self) -> bool {
        if self.clone_tasks > 0 || self.building {
            return false;
        }
        let alive = self
            .slots
            .iter()
            .any(|s| s.worker.as_ref().is_some_and(|w| !w.exited));
        if alive {
            return false;
        }
        // Every slot either has no worker coming or is done.
        self.stopping
            || self.fatal.is_some()
            || self
                .slots
                .iter()
                .all(|s| s.retired || s.worker.as_ref().is_some_and(|w| w.gone()))
            || !self.setup.protocol && self.slots.iter().all(|s| s.worker.is_some())
    }

    /// The tests the workers collected, once known.
    pub fn tests(&self) -> Option<&[TestItem]> {
        self.tests.as_deref()
    }

    /// Whether test `index` is this run's to run (all are, but with `--shard`).
    pub fn selected(&self, index: usize) -> bool {
        self.selected
            .as_ref()
            .is_none_or(|(selected, _)| selected.get(index).copied().unwrap_or(false))
    }

    /// This run's tests without an outcome yet.
    fn unfinished(&self) -> usize {
        (0..self.outcomes.len())
            .filter(|&i| self.outcomes[i].is_none() && self.selected(i))
            .count()
    }

    /// The slots' clones as they stand (dropped at the end of the run).
    pub fn databases(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter_map(|s| s.database.clone())
            .collect()
    }

    /// The run's end, for its report; and the timings the schedule was made from.
    pub fn end(&mut self) -> (Ending, Timings) {
        let run_id = &self.setup.run_id;
        let ending = Ending {
            fatal: self.fatal.or(self.ran_again.then_some(exit::USAGE)),
            interrupted: self.interrupted(),
            lost_all: self.lost_all,
            out_of_restarts: self.out_of_restarts,
            slots: self
                .slots
                .iter()
                .enumerate()
                .map(|(slot, s)| SlotReport {
                    slot,
                    database: names::slot_clone_name(run_id, slot, s.generation),
                    workers_started: s.workers_started,
                    tests_run: s.tests_run,
                    busy: s.busy,
                })
                .collect(),
            collect_errors: std::mem::take(&mut self.collect_errors),
            collect_skipped: std::mem::take(&mut self.collect_skipped),
            shard: self.selected.as_ref().map(|(_, shard)| shard.clone()),
        };
        (ending, std::mem::take(&mut self.timings))
    }

    fn clone_names(&self, slot: usize) -> Vec<String> {
        let name = names::slot_clone_name(&self.setup.run_id, slot, self.slots[slot].generation);
        let extra = (0..self.setup.aliases).map(|i| names::alias_clone_name(&name, i));
        std::iter::once(name.clone()).chain(extra).collect()
    }

    fn prestart_all(&mut self) {
        self.building = true;
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
    fn template_ready(&mut self, name: &str, controller: bool) {
        self.controller = controller;
        self.building = false;
        let slots = self.slots.len();
        self.note(format!(
            "{slots} worker{} on clones of {name}",
            if slots == 1 { "" } else { "s" },
        ));
        self.template_ready = true;
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

    fn make_clone(&mut self, slot: usize) {
        if !self.template_ready {
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

    fn drop_clone(&mut self, name: String) {
        self.clone_tasks += 1;
        self.out.push(Command::DropClone { name });
    }

    fn on_clone_made(
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
                    || self.slots[slot].retired
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
            Err(CloneFailure::Error(e)) => self.fail(
                exit::SETUP_OR_DATABASE,
                format!("could not make the clone of worker {}: {e}", label(slot)),
                None,
            ),
        }
    }

    fn start_worker(&mut self, slot: usize, clones: Vec<String>) {
        let generation = self.slots[slot].generation;
        let id = format!("{slot}.{generation}");
        self.out.push(Command::StartWorker {
            slot,
            generation,
            id: id.clone(),
            clones,
        });
        let s = &mut self.slots[slot];
        s.workers_started += 1;
        s.worker = Some(Worker {
            id,
            generation,
            conn: None,
            life: Life::Starting,
            exited: false,
            pending_exit: None,
            running: None,
            hungry: false,
            stopped: false,
            started: self.now,
        });
        let status = if self.setup.protocol {
            "starting"
        } else {
            "running"
        };
        self.status(slot, status);
    }

    /// A worker's `fresh`: its previous fresh clone goes, the next is handed
    /// out as soon as one is ready.
    fn on_fresh(&mut self, slot: usize, generation: usize) {
        if !self.setup.fresh_transactional {
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
    fn grant_fresh(&mut self, slot: usize, generation: usize, name: String) {
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
    fn top_up_fresh(&mut self) {
        for name in self.fresh.to_drop() {
            self.fresh.dropped(&name);
            self.drop_clone(name);
        }
        if !self.setup.fresh_transactional || !self.template_ready {
            return;
        }
        // Winding down, none are made ahead; but a test that is running
        // still gets the fresh clone it asks for (a worker runs out what it
        // holds after `stop`).
        let ahead = if self.stopping { 0 } else { self.slots.len() };
        self.fresh.set_target(ahead);
        let run_id = self.setup.run_id.clone();
        for name in self.fresh.to_make(|n| names::fresh_clone_name(&run_id, n)) {
            self.clone_tasks += 1;
            self.out.push(Command::MakeFresh { name });
        }
    }

    fn on_fresh_made(&mut self, name: &str, result: Result<(), CloneFailure>) {
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

    fn on_exited(&mut self, slot: usize, generation: usize, exit: Exit) {
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

    /// A connection closed: a worker's exit that waited for its last lines
    /// is taken now; a close without bye waits a little for the exit status
    /// (a crash report names the signal), but not forever: a worker that
    /// hangs after closing is lost too.
    fn on_closed(&mut self, conn: usize) {
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
    fn reject(&mut self, conn: usize, why: String) {
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

    fn worker(&self, slot: usize, generation: usize) -> Option<&Worker> {
        self.slots[slot]
            .worker
            .as_ref()
            .filter(|w| w.generation == generation)
    }

    fn worker_mut(&mut self, slot: usize, generation: usize) -> Option<&mut Worker> {
        self.slots[slot]
            .worker
            .as_mut()
            .filter(|w| w.generation == generation)
    }

    /// Sends to `slot`'s worker; false when it has no connection (yet).
    fn send(&mut self, slot: usize, message: RunnerMessage) -> bool {
        let conn = self.slots[slot].worker.as_ref().and_then(|w| w.conn);
        match conn.filter(|c| self.conns.contains_key(c)) {
            Some(conn) => {
                self.out.push(Command::Send { conn, message });
                true
            }
            None => false,
        }
    }

    fn on_message(&mut self, conn: usize, message: WorkerMessage) {
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
    fn on_hello(&mut self, conn: usize, worker_id: &str, maxfail: Option<usize>) {
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
        if self.stopping || self.slots[slot].retired {
            self.stop_worker(slot);
        }
    }

    fn on_started(&mut self, slot: usize, generation: usize, index: usize) {
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
        }
        self.status(slot, &id);
    }

    fn on_result(&mut self, slot: usize, generation: usize, result: TestResult) {
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
        self.record(
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
            },
            None,
        );
    }

    /// Why a worker's Django configuration is not the one the template was
    /// made with (the controller's), if it is not.
    fn facts_differ(
        &self,
        slot: usize,
        facts: Option<&BTreeMap<String, String>>,
    ) -> Option<String> {
        let (expected, found) = (self.setup.django_facts.as_ref()?, facts?);
        Some(format!(
            "{} configured Django differently from the controller that made the template: {}",
            label(slot),
            decide::facts_difference(expected, found)?
        ))
    }

    fn record(&mut self, record: TestRecord, output_of: Option<(usize, usize)>) {
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
        self.out.push(Command::Report { record, output_of });
    }

    fn on_collected(
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
        self.selected = self.setup.shard.map(|shard| self.select(&tests, shard));
        let mine = match &self.selected {
            Some((selected, _)) => selected.iter().filter(|s| **s).count(),
            None => tests.len(),
        };
        self.out.push(Command::Collected {
            all: tests.len(),
            mine,
        });
        let timings = &self.timings;
        let selected = self.selected.as_ref().map(|(s, _)| s);
        let scheduler = Scheduler::new_for(
            &tests,
            self.setup.dist,
            self.slots.len(),
            |id| timings.estimate(id),
            |i| selected.is_none_or(|s| s[i]),
        );
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
        if units == 0 {
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
    fn select(&mut self, tests: &[TestItem], shard: Shard) -> (Vec<bool>, ShardReport) {
        let timings = &self.timings;
        let shard_of = crate::shard::split(tests, self.setup.dist, shard.total, |id| {
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
    fn feed(&mut self, slot: usize) {
        let Some(w) = self.slots[slot].worker.as_ref() else {
            return;
        };
        if !w.hungry || w.stopped || w.gone() {
            return;
        }
        if self.stopping || self.slots[slot].retired {
            return self.stop_worker(slot);
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

    fn feed_all(&mut self) {
        for slot in 0..self.slots.len() {
            self.feed(slot);
        }
    }

    /// Whether a slot is getting a new worker (whose work may need sharing).
    fn replacement_coming(&self) -> bool {
        self.slots.iter().any(|s| s.busy_with_clone && !s.retired)
    }

    /// Tells `slot`'s worker to finish. One that has not connected yet is told
    /// when it says hello.
    fn stop_worker(&mut self, slot: usize) {
        let sent = self.send(slot, RunnerMessage::Stop);
        if let Some(w) = self.slots[slot].worker.as_mut() {
            w.stopped = sent;
            w.hungry = false;
        }
    }

    /// Asks every worker to give back the tests it has not started.
    fn take_back_everything(&mut self) {
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

    fn stop_everything(&mut self) {
        self.stopping = true;
        for slot in 0..self.slots.len() {
            if self.slots[slot].worker.as_ref().is_some_and(|w| !w.gone()) {
                self.stop_worker(slot);
            }
        }
    }

    /// Signals every worker that has not exited.
    fn signal_all(&mut self, signal: Sig) {
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
    fn fail(&mut self, code: i32, message: String, output_of: Option<(usize, usize)>) {
        if self.fatal.is_none() {
            self.out.push(Command::Error { message, output_of });
            self.fatal = Some(code);
        }
        self.stopping = true;
        self.signal_all(Sig::Kill);
    }

    fn on_exit(&mut self, slot: usize, generation: usize, exit: Exit) {
        let Some(w) = self.worker_mut(slot, generation) else {
            return;
        };
        w.exited = true;
        let (hello, bye, gone) = (w.said_hello(), w.said_bye(), w.gone());
        if gone {
            return;
        }
        if !self.setup.protocol {
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
    fn generic_exit(&mut self, slot: usize, generation: usize, exit: Exit) {
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
    fn lose(&mut self, slot: usize, generation: usize, cause: LossCause) {
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
        let max = self.setup.max_worker_restarts;
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
    fn report_lost_test(
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
        self.record(
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
            },
            Some((slot, generation)),
        );
    }

    /// Drops the slot's clone (the crashed test may have left it in any state)
    /// and makes the next generation's.
    fn replace_clone(&mut self, slot: usize) {
        let old = self.slots[slot].database.take();
        let extra = std::mem::take(&mut self.slots[slot].extra);
        self.slots[slot].fresh = None;
        self.fresh.forget(&(slot, self.slots[slot].generation));
        self.slots[slot].generation += 1;
        for name in old.into_iter().chain(extra) {
            self.drop_clone(name);
        }
        self.top_up_fresh();
        self.make_clone(slot);
    }

    fn on_signal(&mut self) {
        self.signals += 1;
        self.stopping = true;
        let signal = if self.signals == 1 {
            self.grace_until = Some(self.now + self.setup.grace);
            self.note(format!(
                "interrupted: stopping the workers (they get {:.0?}; press Ctrl-C again to kill them at once), then dropping the clones",
                self.setup.grace
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
    fn check_startups(&mut self) {
        let limit = self.setup.start_limit;
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

    fn on_deadline(&mut self) {
        let now = self.now;
        if self.setup.protocol && self.fatal.is_none() {
            self.check_startups();
        }
        if self.grace_until.is_some_and(|g| g <= now) {
            self.grace_until = None;
            self.signal_all(Sig::Kill);
        }
        let Some(limit) = self.setup.timeout else {
            return;
        };
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_ref().filter(|w| !w.gone()) else {
                continue;
            };
            let since = if self.setup.protocol {
                w.running.map(|(_, s)| s)
            } else {
                Some(w.started)
            };
            if since.is_none_or(|s| s + limit > now) {
                continue;
            }
            let generation = w.generation;
            if self.setup.protocol {
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
    fn stop_controller_when_done(&mut self) {
        if !self.controller || self.clone_tasks > 0 {
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

    fn interrupted(&self) -> bool {
        self.signals > 0
    }

    fn note(&mut self, message: String) {
        self.out.push(Command::Note(message));
    }

    fn status(&mut self, slot: usize, status: &str) {
        self.out.push(Command::Status {
            slot,
            status: status.to_string(),
        });
    }
}

/// The record of a slot's whole command (no adapter: one unit per slot).
fn slot_record(
    slot: usize,
    generation: usize,
    outcome: Outcome,
    duration: f64,
    longrepr: Option<String>,
) -> TestRecord {
    TestRecord {
        index: slot,
        id: format!("worker {}", label(slot)),
        file: String::new(),
        class: None,
        outcome,
        duration,
        slot: Some(slot),
        worker_id: Some(format!("{slot}.{generation}")),
        phases: Vec::new(),
        longrepr,
        stdout: String::new(),
        stderr: String::new(),
    }
}

/// Where two collections first differ, in words.
fn first_difference(known: &[TestItem], tests: &[TestItem]) -> String {
    let first = known
        .iter()
        .zip(tests)
        .position(|(a, b)| a != b)
        .unwrap_or(known.len().min(tests.len()));
    match (known.get(first), tests.get(first)) {
        (Some(a), Some(b)) => format!(
            "test {first} is `{}` in one and `{}` in the other",
            a.id, b.id
        ),
        _ => format!("one has {} tests, the other {}", known.len(), tests.len()),
    }
}

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    //! The machine driven by a simulated world: workers that follow the
    //! protocol as the Python adapter does (a queue, `want` when low, `steal`
    //! answered at once, `stop` runs out the queue, then `bye`), clones made
    //! and dropped whenever the world likes, timers firing early or late, and
    //! faults: crashes, Ctrl-C, tests that run past their timeout.

    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    const WANT_THRESHOLD: usize = 2;

    fn setup(slots: usize, restarts: usize, timeout: bool, maxfail: usize) -> Setup {
        fresh_setup(slots, restarts, timeout, maxfail, false)
    }

    fn fresh_setup(
        slots: usize,
        restarts: usize,
        timeout: bool,
        maxfail: usize,
        fresh: bool,
    ) -> Setup {
        Setup {
            run_id: "r1".into(),
            slots,
            protocol: true,
            aliases: 0,
            fresh_transactional: fresh,
            dist: Dist::Test,
            shard: None,
            max_worker_restarts: restarts,
            timeout: timeout.then_some(Duration::from_secs(10)),
            start_limit: Duration::from_secs(600),
            grace: Duration::from_secs(5),
            maxfail,
            django_facts: None,
        }
    }

    fn items(n: usize) -> Vec<TestItem> {
        (0..n)
            .map(|i| TestItem {
                id: format!("t.py::test_{i}"),
                file: "t.py".into(),
                class: None,
                group: 0,
            })
            .collect()
    }

    fn result(index: usize, outcome: &str) -> WorkerMessage {
        WorkerMessage::Result(TestResult {
            index,
            phases: Vec::new(),
            outcome: Some(outcome.into()),
            duration: Some(0.1),
            longrepr: None,
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    #[derive(Debug, Default)]
    struct SimWorker {
        slot: usize,
        generation: usize,
        id: String,
        conn: Option<usize>,
        /// Lines written and not yet read by dbfork, in order.
        outbox: VecDeque<WorkerMessage>,
        queue: VecDeque<usize>,
        running: Option<usize>,
        want_outstanding: bool,
        stopped: bool,
        said_bye: bool,
        dead: bool,
        /// `--fresh-transactional`: every test asks for a fresh clone first.
        fresh: bool,
        /// Asked for a fresh clone, not granted yet.
        awaiting_fresh: bool,
        /// A fresh clone granted for the next test.
        granted: bool,
        /// Got Ctrl-C and is ending its session.
        interrupted: bool,
    }

    /// What the world can do next.
    #[derive(Debug, Clone, Copy)]
    enum Action {
        Deliver(usize),
        Pending(usize),
        Connect(usize),
        Work(usize),
        Crash(usize),
        Signal,
        Deadline,
    }

    struct World {
        machine: Machine,
        now: Instant,
        tests: usize,
        workers: Vec<SimWorker>,
        /// What the machine will be told when the world gets to it.
        pending: Vec<Input>,
        next_conn: usize,
        reports: Vec<usize>,
        signals: usize,
        outcome_of: fn(usize) -> &'static str,
        fresh: bool,
        controller_stops: usize,
        /// Workers end gracefully on Ctrl-C (else they die at once).
        graceful: bool,
        /// This worker starts a second test run after its bye (exits with
        /// `EXIT_RUN_AGAIN`).
        runs_again: Option<usize>,
        /// The errors the machine said, in order.
        errors: Vec<String>,
    }

    impl World {
        fn new(
            setup: Setup,
            tests: usize,
            prestart: bool,
            outcome_of: fn(usize) -> &'static str,
        ) -> World {
            let now = Instant::now();
            let fresh = setup.fresh_transactional;
            let mut world = World {
                fresh,
                controller_stops: 0,
                graceful: false,
                runs_again: None,
                errors: Vec::new(),
                machine: Machine::new(setup, Timings::default(), now),
                now,
                tests,
                workers: Vec::new(),
                pending: Vec::new(),
                next_conn: 0,
                reports: vec![0; tests],
                signals: 0,
                outcome_of,
            };
            let ready = Input::TemplateReady {
                name: "dbfork_tpl".into(),
                controller: true,
            };
            if prestart {
                world.tell(Input::Prestart);
                world.pending.push(ready);
            } else {
                world.tell(ready);
            }
            world
        }

        fn tell(&mut self, input: Input) {
            if std::env::var_os("DBFORK_SIM_TRACE").is_some() {
                dbfork_meta::say!("-> {input:?}");
            }
            self.now += Duration::from_millis(1);
            let commands = self.machine.handle(input, self.now);
            for command in commands {
                self.carry_out(command);
            }
        }

        fn worker_on(&mut self, conn: usize) -> Option<&mut SimWorker> {
            self.workers
                .iter_mut()
                .find(|w| w.conn == Some(conn) && !w.dead)
        }

        fn carry_out(&mut self, command: Command) {
            if std::env::var_os("DBFORK_SIM_TRACE").is_some() {
                dbfork_meta::say!("   <- {command:?}");
            }
            match command {
                Command::StartWorker {
                    slot,
                    generation,
                    id,
                    ..
                } => self.workers.push(SimWorker {
                    slot,
                    generation,
                    id,
                    fresh: self.fresh,
                    ..SimWorker::default()
                }),
                Command::MakeClones {
                    slot,
                    generation,
                    names,
                } => self.pending.push(Input::CloneMade {
                    slot,
                    generation,
                    result: Ok(names),
                }),
                Command::MakeFresh { name } => self.pending.push(Input::FreshMade {
                    name,
                    result: Ok(()),
                }),
                Command::DropClone { .. } => self.pending.push(Input::CloneDropped),
                Command::Send { conn, message } => {
                    if let Some(w) = self.worker_on(conn) {
                        w.receive(message);
                    }
                }
                Command::GrantFresh { conn, .. } => {
                    // (A worker that died meanwhile never reads it.)
                    // (Nor does one that stopped waiting on Ctrl-C.)
                    if let Some(w) = self.worker_on(conn).filter(|w| !w.interrupted) {
                        assert!(w.awaiting_fresh, "a fresh clone nobody asked for");
                        w.awaiting_fresh = false;
                        w.granted = true;
                    }
                }
                Command::Signal {
                    slot,
                    generation,
                    signal,
                } => {
                    let Some(i) = self
                        .workers
                        .iter()
                        .position(|w| w.slot == slot && w.generation == generation && !w.dead)
                    else {
                        return;
                    };
                    let w = &mut self.workers[i];
                    if signal == Sig::Interrupt && self.graceful && w.conn.is_some() && !w.said_bye
                    {
                        // As pytest on Ctrl-C: the running test ends (failed),
                        // the rest is dropped, the session ends with bye.
                        w.interrupted = true;
                        w.stopped = true;
                        w.queue.clear();
                    } else {
                        let code = if signal == Sig::Kill { None } else { Some(2) };
                        self.kill(i, code);
                    }
                }
                Command::After { input, .. } => self.pending.push(input),
                Command::Error { message, .. } => self.errors.push(message),
                Command::Report { record, .. } => {
                    assert!(
                        self.machine.selected(record.index),
                        "a report for another shard's test: {record:?}"
                    );
                    assert!(
                        record.index < self.tests,
                        "a report for no test: {record:?}"
                    );
                    self.reports[record.index] += 1;
                    assert_eq!(
                        self.reports[record.index], 1,
                        "test {} reported twice (now as {:?})",
                        record.index, record.outcome
                    );
                }
                Command::StopController => self.controller_stops += 1,
                Command::Note(_) | Command::Collected { .. } | Command::Status { .. } => {}
            }
        }

        /// The process dies: unread lines are lost; its connection closes and
        /// it exits, in whichever order the world picks.
        fn kill(&mut self, i: usize, code: Option<i32>) {
            let w = &mut self.workers[i];
            w.dead = true;
            w.outbox.clear();
            let (slot, generation) = (w.slot, w.generation);
            if let Some(conn) = w.conn {
                self.pending.push(Input::Closed { conn });
            }
            self.pending.push(Input::Exited {
                slot,
                generation,
                exit: Exit {
                    code,
                    success: code == Some(0),
                    how: format!("{code:?}"),
                    tail: String::new(),
                },
            });
        }

        fn actions(&self, faults: bool) -> Vec<Action> {
            let mut actions = Vec::new();
            for (i, w) in self.workers.iter().enumerate() {
                if w.dead {
                    continue;
                }
                if !w.outbox.is_empty() {
                    actions.push(Action::Deliver(i));
                }
                if w.conn.is_none() {
                    actions.push(Action::Connect(i));
                } else if w.can_work() {
                    actions.push(Action::Work(i));
                }
            }
            actions.extend((0..self.pending.len()).map(Action::Pending));
            if self.machine.next_deadline().is_some() && (faults || actions.is_empty()) {
                actions.push(Action::Deadline);
            }
            if faults {
                let live = self.workers.iter().enumerate().filter(|(_, w)| !w.dead);
                actions.extend(live.map(|(i, _)| Action::Crash(i)));
                if self.signals < 2 {
                    actions.push(Action::Signal);
                }
            }
            actions
        }

        fn act(&mut self, action: Action) {
            match action {
                Action::Deliver(i) => {
                    let w = &mut self.workers[i];
                    let (conn, message) = (w.conn.unwrap(), w.outbox.pop_front().unwrap());
                    let bye = message == WorkerMessage::Bye;
                    self.tell(Input::Message { conn, message });
                    if bye && !self.workers[i].dead {
                        let code = if self.workers[i].interrupted {
                            2
                        } else if self.runs_again == Some(i) {
                            protocol::EXIT_RUN_AGAIN
                        } else {
                            0
                        };
                        self.kill(i, Some(code));
                    }
                }
                Action::Pending(k) => {
                    let input = self.pending.remove(k);
                    self.tell(input);
                }
                Action::Connect(i) => {
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    let w = &mut self.workers[i];
                    w.conn = Some(conn);
                    w.outbox.push_back(WorkerMessage::Hello {
                        worker_id: w.id.clone(),
                        pid: 1,
                        adapter: "sim".into(),
                        adapter_version: String::new(),
                        maxfail: None,
                    });
                    w.outbox.push_back(WorkerMessage::Collected {
                        tests: items(self.tests),
                        errors: Vec::new(),
                        skipped: Vec::new(),
                        continue_on_errors: false,
                        django_facts: None,
                    });
                    w.want_outstanding = true;
                    self.tell(Input::Connected { conn });
                }
                Action::Work(i) => {
                    let outcome = self.workers[i].running.map(self.outcome_of);
                    self.workers[i].work(outcome);
                }
                Action::Crash(i) => self.kill(i, Some(1)),
                Action::Signal => {
                    self.signals += 1;
                    self.tell(Input::Signal);
                }
                Action::Deadline => {
                    let at = self.machine.next_deadline().unwrap();
                    self.now = self.now.max(at);
                    self.tell(Input::Deadline);
                }
            }
        }

        /// Runs the world: `choices` pick the first steps (faults among
        /// them), then it goes on without faults until the run is over.
        fn run(&mut self, choices: &[u16]) {
            for step in 0..20_000 {
                if self.machine.finished() {
                    return;
                }
                let choice = choices.get(step).copied();
                let faults = choice.is_some_and(|c| c % 10 == 0);
                let actions = self.actions(faults);
                assert!(
                    !actions.is_empty(),
                    "the run hangs: nothing can happen and it is not finished"
                );
                let pick = match choice {
                    Some(c) => actions[(c as usize / 10) % actions.len()],
                    None => actions[0],
                };
                if std::env::var_os("DBFORK_SIM_TRACE").is_some() {
                    dbfork_meta::say!("* {pick:?}");
                }
                self.act(pick);
            }
            panic!("the run did not end within 20000 steps");
        }
    }

    impl SimWorker {
        fn receive(&mut self, message: RunnerMessage) {
            match message {
                RunnerMessage::Run { tests } => {
                    self.queue.extend(tests);
                    self.want_outstanding = false;
                }
                RunnerMessage::Steal { tests } => {
                    let (released, kept): (Vec<usize>, Vec<usize>) =
                        self.queue.iter().partition(|i| tests.contains(i));
                    self.queue = kept.into();
                    self.outbox
                        .push_back(WorkerMessage::Released { tests: released });
                }
                RunnerMessage::Stop => self.stopped = true,
                RunnerMessage::Fresh { .. }
                | RunnerMessage::Build { .. }
                | RunnerMessage::Fork { .. } => {
                    panic!("unexpected {message:?}")
                }
            }
        }

        fn can_work(&self) -> bool {
            !self.said_bye
                && (self.interrupted || !self.awaiting_fresh)
                && (self.running.is_some()
                    || !self.queue.is_empty()
                    || self.stopped
                    || (!self.want_outstanding && self.queue.len() <= WANT_THRESHOLD))
        }

        /// One step of the worker's own loop: finish its test, start the
        /// next, ask for more, or say bye once stopped with nothing left.
        fn work(&mut self, outcome: Option<&str>) {
            if self.interrupted {
                // KeyboardInterrupt: the running test fails (a wait for a
                // fresh clone included), then the session ends.
                self.awaiting_fresh = false;
                match self.running.take() {
                    Some(index) => self.outbox.push_back(result(index, "failed")),
                    None => {
                        self.said_bye = true;
                        self.outbox.push_back(WorkerMessage::Bye);
                    }
                }
                return;
            }
            if self.running.is_some() && self.fresh && !self.granted {
                // A transactional test asks for its fresh clone once started.
                self.awaiting_fresh = true;
                self.outbox.push_back(WorkerMessage::Fresh);
                return;
            } else if let Some(index) = self.running.take() {
                self.granted = false;
                self.outbox.push_back(result(index, outcome.unwrap()));
            } else if let Some(index) = self.queue.pop_front() {
                self.running = Some(index);
                self.outbox.push_back(WorkerMessage::Started { index });
            } else if self.stopped {
                self.said_bye = true;
                self.outbox.push_back(WorkerMessage::Bye);
                return;
            }
            if !self.stopped && !self.want_outstanding && self.queue.len() <= WANT_THRESHOLD {
                self.want_outstanding = true;
                self.outbox.push_back(WorkerMessage::Want);
            }
        }
    }

    /// Stopping after a failure, the tests still running ask for their
    /// fresh clones and get them (once, the run hung waiting for them).
    #[test]
    fn after_maxfail_running_tests_still_get_fresh_clones() {
        let setup = fresh_setup(2, 0, false, 1, true);
        let mut world = World::new(setup, 6, false, every_third_fails);
        world.run(&[]);
        let (ending, _) = world.machine.end();
        assert_eq!((ending.fatal, ending.interrupted), (None, false));
        assert_eq!(world.reports[2], 1, "the failure is reported");
        assert!(world
            .workers
            .iter()
            .all(|w| w.said_bye && !w.awaiting_fresh));
    }

    fn passing(_: usize) -> &'static str {
        "passed"
    }

    fn every_third_fails(i: usize) -> &'static str {
        if i % 3 == 2 {
            "failed"
        } else {
            "passed"
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the interleaving of clones, messages, steals, crashes,
        /// timeouts and signals: no test is reported twice, the run ends, and
        /// a run that was neither interrupted nor stopped on an error nor out
        /// of workers reports every test.
        #[test]
        fn every_test_is_reported_exactly_once(
            slots in 1usize..4,
            tests in 0usize..14,
            restarts in 0usize..4,
            timeout in any::<bool>(),
            prestart in any::<bool>(),
            maxfail in prop_oneof![Just(0usize), 1usize..3],
            fresh in any::<bool>(),
            shard in prop_oneof![
                Just(None),
                (1usize..4).prop_flat_map(|total| (1..=total).prop_map(move |index| Some(Shard { index, total }))),
            ],
            graceful in any::<bool>(),
            choices in proptest::collection::vec(any::<u16>(), 0..300),
        ) {
            let outcome_of = if maxfail > 0 { every_third_fails } else { passing };
            let mut setup = fresh_setup(slots, restarts, timeout, maxfail, fresh);
            setup.shard = shard;
            let mut world = World::new(setup, tests, prestart, outcome_of);
            world.graceful = graceful;
            world.run(&choices);
            let (ending, _) = world.machine.end();
            if ending.fatal.is_none() && !ending.interrupted && !ending.out_of_restarts && maxfail == 0 {
                let wanted: Vec<usize> = (0..tests).map(|i| usize::from(world.machine.selected(i))).collect();
                prop_assert_eq!(&world.reports, &wanted, "tests reported (1) or not (0), against this shard's");
            }
            // Clones being made or dropped keep the run going (their names
            // must be known when it drops what is left).
            let clone_work = world.pending.iter().filter(|i| matches!(i, Input::CloneMade { .. } | Input::FreshMade { .. } | Input::CloneDropped)).count();
            prop_assert_eq!(clone_work, 0, "the run ended with clones in the making: {:?}", world.pending);
        }
    }

    #[test]
    fn a_quiet_run_reports_every_test_once_and_stops_each_worker() {
        let mut world = World::new(setup(2, 1, false, 0), 9, false, passing);
        world.run(&[]);
        assert_eq!(world.reports, vec![1; 9]);
        let (ending, _) = world.machine.end();
        assert_eq!(
            (ending.fatal, ending.interrupted, ending.lost_all),
            (None, false, false)
        );
        assert_eq!(ending.slots.iter().map(|s| s.tests_run).sum::<usize>(), 9);
        assert!(world.workers.iter().all(|w| w.said_bye));
    }

    /// A worker whose script starts a second test run after its bye: the
    /// run says so and fails as a usage error, and the other worker still
    /// runs its tests (every test reported once).
    #[test]
    fn a_second_test_run_in_a_worker_fails_the_run_without_stopping_the_others() {
        let mut world = World::new(setup(2, 1, false, 0), 9, false, passing);
        world.runs_again = Some(0);
        world.run(&[]);
        assert_eq!(world.reports, vec![1; 9]);
        let (ending, _) = world.machine.end();
        assert_eq!(
            (ending.fatal, ending.interrupted),
            (Some(exit::USAGE), false)
        );
        assert!(world.workers.iter().all(|w| w.said_bye));
        let said = &world.errors;
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("second test run"), "{said:?}");
    }

    /// The controller ends once every worker is through, including one
    /// still starting in a slot that turned out not to be needed (its
    /// configuration's cleanup would pull the rug from under it).
    #[test]
    fn the_controller_waits_for_a_retired_slots_starting_worker() {
        let mut world = World::new(setup(2, 0, false, 0), 1, true, passing);
        world.act(Action::Pending(0)); // the template is ready
        while let Some(k) = world
            .pending
            .iter()
            .position(|i| matches!(i, Input::CloneMade { .. }))
        {
            world.act(Action::Pending(k));
        }
        // Worker 0 connects, collects (one test: slot 1 is given up), runs it and says bye.
        world.act(Action::Connect(0));
        for _ in 0..2 {
            world.act(Action::Deliver(0));
        }
        let stops = |world: &World| world.controller_stops;
        while world.workers[0].can_work() || !world.workers[0].outbox.is_empty() {
            if world.workers[0].outbox.is_empty() {
                world.act(Action::Work(0));
            } else {
                world.act(Action::Deliver(0));
            }
        }
        assert!(world.workers[0].said_bye);
        assert_eq!(stops(&world), 0, "worker 1 is still starting");
        world.run(&[]);
        assert_eq!(stops(&world), 1);
        assert!(
            world.workers[1].said_bye,
            "worker 1 was told to stop at its hello"
        );
    }

    /// Drives one worker by hand: hello, collected, a batch, a crash.
    #[test]
    fn a_crash_reports_the_running_test_as_crashed_and_replaces_the_worker() {
        let now = Instant::now();
        let mut m = Machine::new(setup(1, 1, false, 0), Timings::default(), now);
        let made = m.handle(
            Input::TemplateReady {
                name: "tpl".into(),
                controller: false,
            },
            now,
        );
        let names = made
            .into_iter()
            .find_map(|c| match c {
                Command::MakeClones { names, .. } => Some(names),
                _ => None,
            })
            .expect("the slot's clone is asked for");
        let started = m.handle(
            Input::CloneMade {
                slot: 0,
                generation: 0,
                result: Ok(names),
            },
            now,
        );
        assert!(matches!(&started[0], Command::StartWorker { id, .. } if id == "0.0"));
        m.handle(Input::Connected { conn: 7 }, now);
        let hello = WorkerMessage::Hello {
            worker_id: "0.0".into(),
            pid: 1,
            adapter: "sim".into(),
            adapter_version: String::new(),
            maxfail: None,
        };
        m.handle(
            Input::Message {
                conn: 7,
                message: hello,
            },
            now,
        );
        let collected = WorkerMessage::Collected {
            tests: items(3),
            errors: Vec::new(),
            skipped: Vec::new(),
            continue_on_errors: false,
            django_facts: None,
        };
        let fed = m.handle(
            Input::Message {
                conn: 7,
                message: collected,
            },
            now,
        );
        let batch = fed.iter().find_map(|c| match c {
            Command::Send {
                conn: 7,
                message: RunnerMessage::Run { tests },
            } => Some(tests[0]),
            _ => None,
        });
        let first = batch.expect("a batch for the worker");
        m.handle(
            Input::Message {
                conn: 7,
                message: WorkerMessage::Started { index: first },
            },
            now,
        );
        let crash = Exit {
            code: None,
            success: false,
            how: "signal 11 (SIGSEGV)".into(),
            tail: "Fatal Python error".into(),
        };
        // The connection is still open: the exit waits for its last lines.
        let later = m.handle(
            Input::Exited {
                slot: 0,
                generation: 0,
                exit: crash,
            },
            now,
        );
        assert!(
            matches!(
                &later[..],
                [Command::After {
                    input: Input::ExitedLongAgo { .. },
                    ..
                }]
            ),
            "{later:?}"
        );
        let lost = m.handle(Input::Closed { conn: 7 }, now + Duration::from_secs(3));
        let report = lost.iter().find_map(|c| match c {
            Command::Report { record, output_of } => Some((record, output_of)),
            _ => None,
        });
        let (record, output_of) = report.expect("the running test is reported");
        assert_eq!((record.index, record.outcome), (first, Outcome::Crashed));
        assert_eq!(record.duration, 3.0);
        assert_eq!(*output_of, Some((0, 0)));
        assert!(record
            .longrepr
            .as_deref()
            .unwrap()
            .contains("signal 11 (SIGSEGV)"));
        // Its clone goes, the next generation's is made.
        assert!(lost
            .iter()
            .any(|c| matches!(c, Command::DropClone { name } if name.contains("r1"))));
        assert!(lost
            .iter()
            .any(|c| matches!(c, Command::MakeClones { generation: 1, .. })));
        assert!(!m.finished());
    }

    /// Without an adapter each slot's command is one unit: its exit is its
    /// result, and one killed for its timeout is reported once, as timed out.
    #[test]
    fn commands_without_an_adapter_are_one_unit_per_slot() {
        let start = Instant::now();
        let mut generic = setup(2, 0, true, 0);
        generic.protocol = false;
        let mut m = Machine::new(generic, Timings::default(), start);
        let mut commands = m.handle(
            Input::TemplateReady {
                name: "tpl".into(),
                controller: false,
            },
            start,
        );
        for slot in 0..2 {
            let made = Input::CloneMade {
                slot,
                generation: 0,
                result: Ok(vec![format!("c{slot}")]),
            };
            commands.extend(m.handle(made, start));
        }
        let started = commands
            .iter()
            .filter(|c| matches!(c, Command::StartWorker { .. }))
            .count();
        assert_eq!(started, 2);
        let exit = |code: Option<i32>| Exit {
            code,
            success: code == Some(0),
            how: format!("{code:?}"),
            tail: "last words".into(),
        };
        let reports = |commands: Vec<Command>| -> Vec<(usize, Outcome)> {
            commands
                .into_iter()
                .filter_map(|c| match c {
                    Command::Report { record, .. } => Some((record.index, record.outcome)),
                    _ => None,
                })
                .collect()
        };
        let done = m.handle(
            Input::Exited {
                slot: 0,
                generation: 0,
                exit: exit(Some(0)),
            },
            start + Duration::from_secs(2),
        );
        assert_eq!(reports(done), vec![(0, Outcome::Passed)]);
        assert_eq!(m.next_deadline(), Some(start + Duration::from_secs(10)));
        let late = m.handle(Input::Deadline, start + Duration::from_secs(10));
        assert!(late.iter().any(|c| matches!(
            c,
            Command::Signal {
                slot: 1,
                signal: Sig::Kill,
                ..
            }
        )));
        assert_eq!(reports(late), vec![(1, Outcome::TimedOut)]);
        let killed = m.handle(
            Input::Exited {
                slot: 1,
                generation: 0,
                exit: exit(None),
            },
            start + Duration::from_secs(11),
        );
        assert_eq!(reports(killed), vec![]);
        assert!(m.finished());
    }

    #[test]
    fn ctrl_c_interrupts_then_kills_after_the_grace_period() {
        let mut world = World::new(setup(2, 0, false, 0), 4, true, passing);
        world.tell(Input::Signal);
        let deadline = world
            .machine
            .next_deadline()
            .expect("the grace period ends");
        assert_eq!(deadline, world.now + Duration::from_secs(5));
        world.run(&[]);
        let (ending, _) = world.machine.end();
        assert!(ending.interrupted);
        assert_eq!(world.reports, vec![0; 4]);
    }
}

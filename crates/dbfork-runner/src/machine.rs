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
//!
//! Its parts: `clones` (a clone per slot, fresh ones, replacements),
//! `conversation` (the worker protocol and feeding), `endings` (exits,
//! losses, signals, deadlines) and `tests` (the property test's simulated
//! world); here the types, the dispatch of inputs and the run's end.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dbfork_engine::names;
use dbfork_engine::pool::Pool;
use dbfork_protocol::{self as protocol, RunnerMessage, TestItem, TestResult, WorkerMessage};

use crate::decide::{self, truncate, AfterLoss, LossCause, LossFacts, RunState};
use crate::error::exit;
use crate::progress::label;
use crate::schedule::Scheduler;
use crate::shard::Shard;
use crate::timings::Timings;
use crate::Dist;
use dbfork_meta::report::{Outcome, ShardReport, SlotReport, TestRecord};

mod bisect;
mod clones;
mod conversation;
mod endings;
mod probes;
#[cfg(test)]
mod tests;

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
    /// `replaced`: a worker's clone, replaced (after a crash, for a probe):
    /// found gone, something else dropped it, which the teardown says.
    DropClone {
        name: String,
        replaced: bool,
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
    /// One try of a test that runs more than once (a failure held for
    /// `--retries` or `--classify`, and each of its probes): kept until
    /// [`Command::Concluded`] reports the test.
    Tried {
        record: TestRecord,
        kind: dbfork_meta::report::TryKind,
        output_of: Option<(usize, usize)>,
    },
    /// The bisection is over (`dbfork bisect`): what it found.
    Bisected(dbfork_meta::report::BisectReport),
    /// A test that ran more than once is reported, once: its try `pick`
    /// (counting from its first, the run's) is its record, with every try
    /// and its class.
    Concluded {
        index: usize,
        pick: usize,
        diagnosis: Option<dbfork_meta::report::Diagnosis>,
    },
}

/// What the machine needs to know of the run, fixed at its start.
#[derive(Debug, Clone)]
pub struct Params {
    pub run_id: String,
    pub slots: usize,
    /// The workers speak the protocol (else each slot's command is one unit).
    pub protocol: bool,
    /// Extra aliases (`--alias`): one more clone per slot each.
    pub aliases: usize,
    pub fresh_transactional: bool,
    pub dist: Dist,
    /// `--order`, its seed resolved.
    pub order: crate::Order,
    /// Only these tests, by id (`dbfork rerun --failed`); `None`: all.
    pub only: Option<std::sync::Arc<std::collections::HashSet<String>>>,
    /// `--shard K/N`: only this part of the suite runs.
    pub shard: Option<Shard>,
    pub max_worker_restarts: usize,
    pub timeout: Option<Duration>,
    pub start_limit: Duration,
    pub grace: Duration,
    /// Failures after which the run stops (0: never), as the command line says.
    pub maxfail: usize,
    /// `--retries`: a failed test runs again up to this many times, each in
    /// a fresh worker on a fresh clone.
    pub retries: usize,
    /// `--classify`: at most this many failed tests are classified.
    pub classify: usize,
    /// `dbfork bisect`: the run runs none of its tests, only the probes
    /// that find what makes this one fail.
    pub bisect: Option<BisectSpec>,
    /// `--order recorded`: per slot, the ids its worker runs first, in order.
    pub pinned: Option<std::sync::Arc<Vec<Vec<String>>>>,
    /// `--bisect`: each order-dependent failure's culprits are searched for
    /// before it is reported.
    pub bisect_failures: bool,
    /// The controller's Django facts, which every worker's must equal.
    pub django_facts: Option<BTreeMap<String, String>>,
}

/// What `dbfork bisect` looks for: the tests that make `target` fail when
/// they run before it, among `before` (in this order; `None`: every other
/// test, in collection order).
#[derive(Debug, Clone, PartialEq)]
pub struct BisectSpec {
    pub target: String,
    pub before: Option<Vec<String>>,
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

/// The worker process in a slot, as the machine knows it: who it is, its
/// connection, how far its conversation got, what it runs.
#[derive(Debug)]
struct SlotWorker {
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
    /// The tests it started, in order.
    ran: Vec<usize>,
    hungry: bool,
    stopped: bool,
    started: Instant,
}

impl SlotWorker {
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
    worker: Option<SlotWorker>,
    /// A clone is being made or dropped for this slot.
    busy_with_clone: bool,
    /// Not needed: fewer units of work than slots, or out of restarts.
    retired: bool,
    /// Out of restarts: not used again, for probes neither.
    given_up: bool,
    /// The probe its worker runs (a failed test again, in a fresh worker).
    probe: Option<probes::Assignment>,
    workers_started: usize,
    tests_run: usize,
    busy: f64,
}

impl Slot {
    /// Not needed: retired, and not given a probe.
    fn unneeded(&self) -> bool {
        self.retired && self.probe.is_none()
    }
}

/// Where the run's template is, as the machine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TemplatePhase {
    /// Not ready, and no worker was started before it.
    Awaited,
    /// Being built, with the workers started beside it (they wait for their
    /// clones): the run cannot be over.
    Building,
    /// Ready: clones are made from it.
    Ready,
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
    params: Params,
    now: Instant,
    template: TemplatePhase,
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
    /// With a list of tests to run (`dbfork rerun --failed`): per test,
    /// whether it is one of them.
    only: Option<Vec<bool>>,
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
    /// Failed tests run again (`--retries`, `--classify`).
    probes: probes::Probes,
    /// A search for what makes a test fail (`dbfork bisect`, `--bisect`)
    /// while it goes: taken once its end is reported.
    bisection: Option<bisect::Bisection>,
    /// The held test (case, its record's try) the bisection is for (`--bisect`).
    bisect_case: Option<(usize, usize)>,
    /// A probe's clone could not be made: no more probes.
    probes_failed: bool,
    out: Vec<Command>,
}

impl Machine {
    /// `timings` are what the schedule estimates test durations by.
    pub fn new(params: Params, timings: Timings, now: Instant) -> Machine {
        let slots = params.slots.max(1);
        Machine {
            // Without an adapter each slot's command is one unit of the report.
            outcomes: if params.protocol {
                Vec::new()
            } else {
                vec![None; slots]
            },
            maxfail: params.maxfail,
            probes: probes::Probes::new(params.classify),
            bisection: None,
            bisect_case: None,
            probes_failed: false,
            params,
            now,
            template: TemplatePhase::Awaited,
            controller: false,
            slots: (0..slots).map(|_| Slot::default()).collect(),
            // Per slot: one leased, one ready, one for a worker waiting.
            fresh: Pool::new(0, 3 * slots + 1),
            conns: HashMap::new(),
            tests: None,
            selected: None,
            only: None,
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
        self.settle_probes();
        std::mem::take(&mut self.out)
    }

    /// The next time something is due (a test's or a start's limit, the end
    /// of the grace period): the executor sends [`Input::Deadline`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        let protocol = self.params.protocol;
        let timeouts = self.params.timeout.into_iter().flat_map(|limit| {
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
            protocol.then(|| w.started + self.params.start_limit)
        });
        timeouts.chain(startups).chain(self.grace_until).min()
    }

    /// The run is over: no worker is alive, no clone is being made and the
    /// template is not being built.
    pub fn finished(&self) -> bool {
        if self.clone_tasks > 0 || self.template == TemplatePhase::Building {
            return false;
        }
        let alive = self
            .slots
            .iter()
            .any(|s| s.worker.as_ref().is_some_and(|w| !w.exited));
        if alive {
            return false;
        }
        if !(self.stopping || self.fatal.is_some() || !self.probing()) {
            // Failed tests wait for their probes.
            return false;
        }
        // Every slot either has no worker coming or is done.
        self.stopping
            || self.fatal.is_some()
            || self
                .slots
                .iter()
                .all(|s| s.retired || s.worker.as_ref().is_some_and(|w| w.gone()))
            || !self.params.protocol && self.slots.iter().all(|s| s.worker.is_some())
    }

    /// Failed tests wait for their probes, or a bisection for its own.
    fn probing(&self) -> bool {
        !self.probes.idle() || self.bisecting()
    }

    /// The tests the workers collected, once known.
    pub fn tests(&self) -> Option<&[TestItem]> {
        self.tests.as_deref()
    }

    /// Whether test `index` is this run's to run (all are, but with `--shard`).
    pub fn selected(&self, index: usize) -> bool {
        let picked = |mask: &Vec<bool>| mask.get(index).copied().unwrap_or(false);
        self.selected.as_ref().is_none_or(|(mask, _)| picked(mask))
            && self.only.as_ref().is_none_or(picked)
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
        let run_id = &self.params.run_id;
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
        tries: Vec::new(),
        diagnosis: None,
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

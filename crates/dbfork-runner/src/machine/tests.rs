//! The machine's property test: a simulated world of workers, clones and
//! signals, driven by random inputs; and its unit tests.

//! The machine driven by a simulated world: workers that follow the
//! protocol as the Python adapter does (a queue, `want` when low, `steal`
//! answered at once, `stop` runs out the queue, then `bye`), clones made
//! and dropped whenever the world likes, timers firing early or late, and
//! faults: crashes, Ctrl-C, tests that run past their timeout.

use std::collections::VecDeque;

use dbfork_meta::report::FailureClass;
use proptest::prelude::*;

use super::*;

const WANT_THRESHOLD: usize = 2;

fn params(slots: usize, restarts: usize, timeout: bool, maxfail: usize) -> Params {
    fresh_params(slots, restarts, timeout, maxfail, false)
}

fn fresh_params(
    slots: usize,
    restarts: usize,
    timeout: bool,
    maxfail: usize,
    fresh: bool,
) -> Params {
    Params {
        run_id: "r1".into(),
        slots,
        protocol: true,
        aliases: 0,
        fresh_transactional: fresh,
        dist: Dist::Test,
        order: crate::Order::Longest,
        only: None,
        shard: None,
        max_worker_restarts: restarts,
        timeout: timeout.then_some(Duration::from_secs(10)),
        start_limit: Duration::from_secs(600),
        grace: Duration::from_secs(5),
        maxfail,
        django_facts: None,
        retries: 0,
        classify: 0,
        bisect: None,
        pinned: None,
        bisect_failures: false,
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
    /// The tests it started, in order.
    ran: Vec<usize>,
}

/// A test's outcome from its index, the tests its worker ran before it
/// and how many times it ran before.
type OutcomeIn = fn(usize, &[usize], usize) -> &'static str;

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
    /// Per test: its tries told (a held failure and its probes).
    tries: Vec<usize>,
    /// Per test: the class it was reported with, and its culprits (`--bisect`).
    classes: Vec<Option<FailureClass>>,
    culprits: Vec<Vec<String>>,
    /// Per test: how many times a worker ran it.
    attempts: Vec<usize>,
    /// What a bisection found.
    bisected: Option<dbfork_meta::report::BisectReport>,
    /// A worker crashed or a deadline passed (a test may have timed out):
    /// a probe's outcome is then not the planted one.
    faulted: bool,
    signals: usize,
    outcome_of: fn(usize) -> &'static str,
    /// When set, a test's outcome from the tests its worker ran before it
    /// and how many times it ran before (else `outcome_of`).
    outcome_in: Option<OutcomeIn>,
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
        params: Params,
        tests: usize,
        prestart: bool,
        outcome_of: fn(usize) -> &'static str,
    ) -> World {
        let now = Instant::now();
        let fresh = params.fresh_transactional;
        let mut world = World {
            fresh,
            controller_stops: 0,
            graceful: false,
            runs_again: None,
            errors: Vec::new(),
            machine: Machine::new(params, Timings::default(), now),
            now,
            tests,
            workers: Vec::new(),
            pending: Vec::new(),
            next_conn: 0,
            reports: vec![0; tests],
            tries: vec![0; tests],
            classes: vec![None; tests],
            culprits: vec![Vec::new(); tests],
            attempts: vec![0; tests],
            bisected: None,
            faulted: false,
            signals: 0,
            outcome_of,
            outcome_in: None,
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
                if signal == Sig::Interrupt && self.graceful && w.conn.is_some() && !w.said_bye {
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
            Command::Tried { record, .. } => {
                assert_eq!(
                    self.reports[record.index], 0,
                    "a try of test {} after its report",
                    record.index
                );
                self.tries[record.index] += 1;
            }
            Command::Concluded {
                index, diagnosis, ..
            } => {
                assert!(
                    self.tries[index] > 0,
                    "test {index} concluded without a try"
                );
                self.reports[index] += 1;
                assert_eq!(self.reports[index], 1, "test {index} reported twice");
                self.culprits[index] = diagnosis
                    .as_ref()
                    .map(|d| d.culprits.clone())
                    .unwrap_or_default();
                self.classes[index] = diagnosis.map(|d| d.class);
            }
            Command::Bisected(report) => {
                assert!(self.bisected.is_none(), "bisected twice");
                self.bisected = Some(report);
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
                let w = &self.workers[i];
                let outcome = w.running.map(|index| match self.outcome_in {
                    Some(outcome_in) => {
                        let before = &w.ran[..w.ran.len() - 1];
                        outcome_in(index, before, self.attempts[index])
                    }
                    None => (self.outcome_of)(index),
                });
                self.workers[i].work(outcome);
                if let Some(WorkerMessage::Result(r)) = self.workers[i].outbox.back() {
                    if outcome.is_some() && self.workers[i].running.is_none() {
                        self.attempts[r.index] += 1;
                    }
                }
            }
            Action::Crash(i) => {
                self.faulted = true;
                self.kill(i, Some(1));
            }
            Action::Signal => {
                self.signals += 1;
                self.tell(Input::Signal);
            }
            Action::Deadline => {
                self.faulted = true;
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
            self.ran.push(index);
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
    let params = fresh_params(2, 0, false, 1, true);
    let mut world = World::new(params, 6, false, every_third_fails);
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

/// A test's outcome as a worker says it.
fn outcome(failed: bool) -> &'static str {
    if failed {
        "failed"
    } else {
        "passed"
    }
}

fn every_third_fails(i: usize) -> &'static str {
    outcome(i % 3 == 2)
}

/// Test 1 fails after test 0 in its worker (order-dependent), test 2 on
/// its first try only (flaky), test 3 always (broken); the others pass.
fn planted(index: usize, before: &[usize], attempts: usize) -> &'static str {
    outcome(match index {
        1 => before.contains(&0),
        2 => attempts == 0,
        3 => true,
        _ => false,
    })
}

/// One worker runs the planted tests in order: each failure is classified
/// (alone on a fresh clone, then replayed after its worker's tests), every
/// test is reported once, and each probe got a fresh worker.
#[test]
fn failures_are_classified_by_probes_in_fresh_workers() {
    let mut p = params(1, 0, false, 0);
    p.order = crate::Order::File;
    p.classify = 10;
    let mut world = World::new(p, 6, false, passing);
    world.outcome_in = Some(planted);
    world.run(&[]);
    assert_eq!(world.reports, vec![1; 6]);
    assert_eq!(
        world.classes,
        [
            None,
            Some(FailureClass::OrderDependent),
            Some(FailureClass::Flaky),
            Some(FailureClass::Broken),
            None,
            None
        ]
    );
    // The run's worker, three alone, and one replay of tests 0-2 (test 3
    // failed alone: nothing to replay).
    assert_eq!(world.workers.len(), 5);
    assert_eq!(world.workers[4].ran, [0, 1, 2]);
    assert!(world.workers[1..4].iter().all(|w| w.ran.len() == 1));
    let (ending, _) = world.machine.end();
    assert_eq!((ending.fatal, ending.interrupted), (None, false));
    assert_eq!(world.controller_stops, 1);
}

/// A bisection runs none of the run's tests, only its probes (each a
/// fresh worker), and names the test that makes test 1 fail, among 40.
#[test]
fn a_bisection_finds_the_polluter_with_probes_only() {
    let mut p = params(2, 0, false, 0);
    p.bisect = Some(BisectSpec {
        target: "t.py::test_1".into(),
        before: None,
    });
    let mut world = World::new(p, 40, true, passing);
    world.outcome_in = Some(planted);
    world.run(&[]);
    let found = world.bisected.take().expect("a finding");
    assert_eq!(found.verdict, dbfork_meta::report::BisectVerdict::Found);
    assert_eq!(found.culprits, ["t.py::test_0"]);
    assert!(found.probes < 20, "{found:?}");
    assert_eq!(world.reports, vec![0; 40], "no test of the run's own");
    // The two run workers ran nothing; every probe ends with the target.
    assert!(world.workers[..2].iter().all(|w| w.ran.is_empty()));
    assert!(world.workers[2..].iter().all(|w| w.ran.last() == Some(&1)));
    assert_eq!(world.controller_stops, 1);
    let (ending, _) = world.machine.end();
    assert_eq!(ending.fatal, None);
}

/// `--bisect`: the order-dependent failure is reported with the test it
/// fails after (test 4, among the 8 its worker ran before it), found by
/// probes after the run's own tests and its classification.
#[test]
fn order_dependent_failures_are_bisected_before_they_are_reported() {
    let mut one = params(1, 0, false, 0);
    one.order = crate::Order::File;
    one.classify = 10;
    one.bisect_failures = true;
    let mut world = World::new(one, 10, false, passing);
    world.outcome_in = Some(|index, before, _| outcome(index == 8 && before.contains(&4)));
    world.run(&[]);
    assert_eq!(world.reports, vec![1; 10]);
    assert_eq!(world.classes[8], Some(FailureClass::OrderDependent));
    assert_eq!(world.culprits[8], ["t.py::test_4"]);
    assert_eq!(world.controller_stops, 1);
}

/// `--retries 2`: the flaky test passes on its first retry, the broken
/// one fails all three tries; without classifying, nothing is replayed.
#[test]
fn retries_run_in_fresh_workers_until_a_pass() {
    let mut p = params(2, 0, false, 0);
    p.order = crate::Order::File;
    p.retries = 2;
    let mut world = World::new(p, 6, false, passing);
    world.outcome_in = Some(planted);
    world.run(&[]);
    assert_eq!(world.reports, vec![1; 6]);
    assert_eq!(world.classes, vec![None; 6]);
    // The broken test: the run's try and two retries.
    assert_eq!(world.tries[3], 3);
    assert_eq!(world.tries[2], 2);
    assert_eq!(world.attempts[3], 3);
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
        retries in prop_oneof![Just(0usize), 1usize..3],
        classify in prop_oneof![Just(0usize), 1usize..4],
        choices in proptest::collection::vec(any::<u16>(), 0..300),
    ) {
        let outcome_of = if maxfail > 0 { every_third_fails } else { passing };
        let mut params = fresh_params(slots, restarts, timeout, maxfail, fresh);
        params.shard = shard;
        params.retries = retries;
        params.classify = classify;
        params.bisect_failures = classify == 2;
        if classify == 3 && tests > 2 {
            params.bisect = Some(BisectSpec { target: "t.py::test_1".into(), before: None });
        }
        let mut world = World::new(params, tests, prestart, outcome_of);
        world.graceful = graceful;
        if retries + classify > 0 {
            world.outcome_in = Some(planted);
        }
        world.run(&choices);
        let (ending, _) = world.machine.end();
        if let Some(found) = world.bisected.as_ref().filter(|_| ending.fatal.is_none()) {
            prop_assert!(world.reports.iter().all(|r| *r == 0), "a bisection reports no test");
            // (A crash or timeout in a probe is an outcome the search takes as it is.)
            if found.verdict == dbfork_meta::report::BisectVerdict::Found && !world.faulted {
                prop_assert_eq!(&found.culprits, &["t.py::test_0".to_string()]);
            }
        } else if ending.fatal.is_none() && !ending.interrupted && !ending.out_of_restarts && maxfail == 0 {
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
    let mut world = World::new(params(2, 1, false, 0), 9, false, passing);
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
    let mut world = World::new(params(2, 1, false, 0), 9, false, passing);
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
    let mut world = World::new(params(2, 0, false, 0), 1, true, passing);
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
    let mut m = Machine::new(params(1, 1, false, 0), Timings::default(), now);
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
        .any(|c| matches!(c, Command::DropClone { name, .. } if name.contains("r1"))));
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
    let mut generic = params(2, 0, true, 0);
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
    let mut world = World::new(params(2, 0, false, 0), 4, true, passing);
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

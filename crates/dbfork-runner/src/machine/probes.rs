//! Failed tests run again, each in a fresh worker on a fresh clone: the
//! retries of `--retries` and the probes that classify a failure
//! (`--classify`). A test that fails in the run is held (its try is told
//! at once, its report waits); a probe runs it alone, and when it passes
//! alone, a replay runs the tests its worker ran before it, in their
//! order, and then it. What they show makes the class:
//!
//! - fails alone too (every retry): *broken*;
//! - passes alone, fails again after its worker's tests: *order-dependent*;
//! - passes alone and after them too, or fails and passes alone: *flaky*.
//!
//! Probes run in slots whose workers are through with the run's own tests
//! (never beside more workers than `-j`); replays wait until the run's own
//! tests are done (each covers every failure of one worker). The run ends
//! once every held test is reported; a stopped run reports them as they
//! are.

use std::collections::VecDeque;

use dbfork_meta::report::{Diagnosis, FailureClass, Outcome, TryKind};

use super::*;

/// Failed tests held for probes, and the probes to run.
#[derive(Debug, Default)]
pub(super) struct Probes {
    cases: Vec<Case>,
    queue: VecDeque<Probe>,
    /// Failures that may still be classified (`--classify`).
    classify_left: usize,
    /// Said once: probes started; the budget ran out.
    said_start: bool,
    said_budget: bool,
    /// `--bisect`: order-dependent failures waiting for their bisection
    /// (case, the try that is its record).
    to_bisect: VecDeque<(usize, usize)>,
}

/// One held test: what its tries showed, and what it waits for.
#[derive(Debug)]
struct Case {
    index: usize,
    /// The slot and worker generation that ran it in the run.
    worker: (usize, usize),
    /// The tests that worker ran before it, in order.
    before: Vec<usize>,
    /// Each try's kind and whether it failed; the run's own first.
    tries: Vec<(TryKind, bool)>,
    retries_left: usize,
    classify: bool,
    state: CaseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseState {
    /// A probe of it is queued or running.
    Probing,
    /// It passed alone: it waits for its worker's replay.
    AwaitingReplay,
    /// Order-dependent: it waits for `--bisect` to find its culprits.
    AwaitingBisect,
    Reported,
}

/// A fresh worker's work: `tests` in this order, of which the results of
/// `cases`' tests count (the others set the stage).
#[derive(Debug, Clone)]
pub(super) struct Probe {
    kind: TryKind,
    tests: Vec<usize>,
    cases: Vec<usize>,
    /// A bisection's probe: its part of the step (the result of its last
    /// test, the bisection's target, counts).
    part: Option<usize>,
}

impl Probe {
    pub(super) fn bisect(tests: Vec<usize>, part: usize) -> Probe {
        Probe {
            kind: TryKind::Replay,
            tests,
            cases: Vec::new(),
            part: Some(part),
        }
    }
}

/// A slot's probe, once given to it.
#[derive(Debug)]
pub(super) struct Assignment {
    probe: Probe,
    /// Its tests were sent to the worker.
    sent: bool,
    /// Its cases that got a result.
    answered: Vec<usize>,
}

/// What a case does next, from its tries.
#[derive(Debug, PartialEq)]
enum Step {
    Retry,
    Alone,
    Replay,
    /// Reported: the try whose record is the test's, and its class.
    Conclude(usize, Option<FailureClass>),
}

impl Case {
    /// The try that is the test's outcome: the first that passed (a
    /// retry), else the run's.
    fn pick(&self) -> usize {
        (self.tries.iter())
            .position(|(kind, failed)| kind.counts() && !failed)
            .unwrap_or(0)
    }

    fn next(&self) -> Step {
        let pick = self.pick();
        let passed = pick > 0;
        let alone: Vec<bool> = (self.tries.iter())
            .filter(|(kind, _)| matches!(kind, TryKind::Retry | TryKind::Alone))
            .map(|(_, failed)| *failed)
            .collect();
        let replay = self
            .tries
            .iter()
            .find(|(kind, _)| *kind == TryKind::Replay)
            .map(|(_, failed)| *failed);
        if !passed && self.retries_left > 0 {
            return Step::Retry;
        }
        if !self.classify {
            return Step::Conclude(pick, None);
        }
        let (Some(&first), Some(&last)) = (alone.first(), alone.last()) else {
            return Step::Alone;
        };
        let class = match (replay, first, last) {
            (Some(true), ..) => FailureClass::OrderDependent,
            (Some(false), ..) => FailureClass::Flaky,
            (None, true, true) => FailureClass::Broken,
            (None, true, false) => FailureClass::Flaky,
            (None, false, _) if self.before.is_empty() => FailureClass::Flaky,
            (None, false, _) => return Step::Replay,
        };
        Step::Conclude(pick, Some(class))
    }
}

impl Probes {
    pub(super) fn new(classify: usize) -> Probes {
        Probes {
            classify_left: classify,
            ..Probes::default()
        }
    }

    /// Every held test is reported.
    pub(super) fn idle(&self) -> bool {
        self.cases.iter().all(|c| c.state == CaseState::Reported)
    }

    pub(super) fn queue(&mut self, probe: Probe) {
        self.queue.push_back(probe);
    }

    fn case_of(&self, index: usize) -> Option<usize> {
        self.cases.iter().position(|c| c.index == index)
    }
}

impl Assignment {
    /// The tests to send the worker, once.
    pub(super) fn take_tests(&mut self) -> Option<Vec<usize>> {
        (!std::mem::replace(&mut self.sent, true)).then(|| self.probe.tests.clone())
    }
}

impl Machine {
    /// A test failed in the run: held for its probes, when it gets any (its
    /// try is told now, its report when they are done). Returns the record
    /// when it is reported as it is.
    pub(super) fn hold_for_probes(
        &mut self,
        record: TestRecord,
        output_of: Option<(usize, usize)>,
    ) -> Option<TestRecord> {
        let retries = self.params.retries;
        // A crash or a timeout is not classified: run again, it may crash
        // or hang again (or have been killed from outside); `--retries`,
        // asked for, runs it again all the same.
        let classifiable = matches!(record.outcome, Outcome::Failed | Outcome::Error);
        let held = self.params.protocol
            && !self.stopping
            && record.outcome.is_failure()
            && (retries > 0 || classifiable && self.probes.classify_left > 0);
        let Some(slot) = record.slot.filter(|_| held) else {
            return Some(record);
        };
        let index = record.index;
        let generation = self.slots[slot].worker.as_ref().map_or(0, |w| w.generation);
        let before = self.slots[slot]
            .worker
            .as_ref()
            .map(|w| w.ran.iter().copied().take_while(|&i| i != index).collect())
            .unwrap_or_default();
        let classify = classifiable && self.probes.classify_left > 0;
        if classify {
            self.probes.classify_left -= 1;
        } else if classifiable
            && self.params.classify > 0
            && !std::mem::replace(&mut self.probes.said_budget, true)
        {
            self.note(format!(
                "more than {} tests failed: the others are not classified (--classify sets how many are)",
                self.params.classify
            ));
        }
        self.out.push(Command::Tried {
            record,
            kind: TryKind::Run,
            output_of,
        });
        self.probes.cases.push(Case {
            index,
            worker: (slot, generation),
            before,
            tries: vec![(TryKind::Run, true)],
            retries_left: retries,
            classify,
            state: CaseState::Probing,
        });
        self.advance_case(self.probes.cases.len() - 1);
        None
    }

    /// A probe worker's result (or the crash or timeout of its test).
    pub(super) fn probe_result(
        &mut self,
        slot: usize,
        record: TestRecord,
        output_of: Option<(usize, usize)>,
    ) {
        let Some(assignment) = self.slots[slot].probe.as_mut() else {
            return;
        };
        if let Some(part) = assignment.probe.part {
            let target = assignment.probe.tests.last() == Some(&record.index);
            if target && assignment.answered.is_empty() {
                assignment.answered.push(part);
                self.bisect_result(part, record.outcome.is_failure());
            }
            return;
        }
        let kind = assignment.probe.kind;
        let counts = assignment.probe.cases.iter().any(|&c| {
            self.probes.cases[c].index == record.index && !assignment.answered.contains(&c)
        });
        let Some(case) = self.probes.case_of(record.index).filter(|_| counts) else {
            return;
        };
        assignment.answered.push(case);
        if self.probes.cases[case].state == CaseState::Reported {
            return;
        }
        let failed = record.outcome.is_failure();
        self.probes.cases[case].tries.push((kind, failed));
        if kind == TryKind::Retry {
            self.probes.cases[case].retries_left -= 1;
        }
        self.out.push(Command::Tried {
            record,
            kind,
            output_of,
        });
        self.advance_case(case);
    }

    /// A probe worker is gone (it said bye, crashed or was stopped): its
    /// cases that got no result are reported as they stand (the worker
    /// never got to them: there is nothing more to learn from it).
    pub(super) fn probe_done(&mut self, slot: usize) {
        let Some(assignment) = self.slots[slot].probe.take() else {
            return;
        };
        if let Some(part) = assignment
            .probe
            .part
            .filter(|_| assignment.answered.is_empty())
        {
            // It never got to the target (it crashed before): not a failure of it.
            self.bisect_result(part, false);
        }
        for case in assignment.probe.cases {
            let unanswered = !assignment.answered.contains(&case);
            if unanswered && self.probes.cases[case].state != CaseState::Reported {
                let pick = self.probes.cases[case].pick();
                self.conclude(case, pick, None);
            }
        }
    }

    /// Queues a case's next probe, or reports it.
    fn advance_case(&mut self, case: usize) {
        let c = &self.probes.cases[case];
        let kind = match c.next() {
            Step::Conclude(pick, class) => return self.conclude(case, pick, class),
            Step::Replay => {
                self.probes.cases[case].state = CaseState::AwaitingReplay;
                return;
            }
            Step::Retry => TryKind::Retry,
            Step::Alone => TryKind::Alone,
        };
        let probe = Probe {
            kind,
            tests: vec![c.index],
            cases: vec![case],
            part: None,
        };
        self.probes.cases[case].state = CaseState::Probing;
        self.probes.queue.push_back(probe);
    }

    /// Reports a held test: its try `pick` is its record.
    fn conclude(&mut self, case: usize, pick: usize, class: Option<FailureClass>) {
        let order_dependent = class == Some(FailureClass::OrderDependent);
        if order_dependent && self.params.bisect_failures && !self.stopping {
            // Reported once `--bisect` found what it fails after.
            self.probes.cases[case].state = CaseState::AwaitingBisect;
            self.probes.to_bisect.push_back((case, pick));
            return;
        }
        self.report_case(case, pick, class, Vec::new());
    }

    /// Reports a held test, with its class and (bisected) culprits.
    pub(super) fn report_case(
        &mut self,
        case: usize,
        pick: usize,
        class: Option<FailureClass>,
        culprits: Vec<String>,
    ) {
        let c = &self.probes.cases[case];
        let diagnosis = class.map(|class| Diagnosis {
            culprits,
            ..self.diagnosis(c, class)
        });
        let index = c.index;
        self.probes.cases[case].state = CaseState::Reported;
        self.out.push(Command::Concluded {
            index,
            pick,
            diagnosis,
        });
    }

    /// `--bisect`: once nothing else is probed, the next order-dependent
    /// failure's bisection starts (its check is known: it passes alone and
    /// fails after its worker's tests).
    fn start_next_bisection(&mut self) {
        if self.bisection.is_some() || !self.probes.queue.is_empty() {
            return;
        }
        let Some((case, pick)) = self.probes.to_bisect.pop_front() else {
            return;
        };
        let c = &self.probes.cases[case];
        let (target, suspects) = (c.index, c.before.clone());
        self.bisect_case = Some((case, pick));
        self.bisection = Some(bisect::Bisection::known(target, suspects, self.slots.len()));
        self.queue_bisect_probes();
        if !self.bisecting() {
            // One suspect: it is the culprit, without a probe.
            self.report_bisection();
        }
    }

    fn diagnosis(&self, case: &Case, class: FailureClass) -> Diagnosis {
        let worker = label(case.worker.0);
        let n = case.before.len();
        let tests = |n: usize| format!("{n} test{}", if n == 1 { "" } else { "s" });
        let retries = case
            .tries
            .iter()
            .filter(|(k, _)| *k == TryKind::Retry)
            .count();
        let why = match class {
            FailureClass::Broken if retries > 1 => format!(
                "it fails alone in a fresh worker on a fresh clone too (each of {retries} retries)"
            ),
            FailureClass::Broken => {
                "it fails alone in a fresh worker on a fresh clone too".to_string()
            }
            FailureClass::OrderDependent => format!(
                "it passes alone in a fresh worker on a fresh clone, and fails again after the {} {worker} ran before it, in their order: one of them leaves something it depends on",
                tests(n)
            ),
            FailureClass::Flaky if case.tries.iter().any(|(k, _)| *k == TryKind::Replay) => format!(
                "it passes alone in a fresh worker on a fresh clone, and after the {} {worker} ran before it too: it fails only some of the time",
                tests(n)
            ),
            FailureClass::Flaky if n == 0 => format!(
                "it was the first test {worker} ran, and passed when run again alone in a fresh worker on a fresh clone: it fails only some of the time"
            ),
            FailureClass::Flaky => "it failed and passed alone in fresh workers on fresh clones: it fails only some of the time".to_string(),
        };
        let (after, earlier) = match class {
            FailureClass::OrderDependent => {
                let kept = n.saturating_sub(Diagnosis::AFTER_KEPT);
                let ids = self.tests.as_deref().unwrap_or_default();
                let after = case.before[kept..]
                    .iter()
                    .filter_map(|&i| ids.get(i).map(|t| t.id.clone()))
                    .collect();
                (after, kept)
            }
            _ => (Vec::new(), 0),
        };
        Diagnosis {
            class,
            why,
            after,
            earlier,
            culprits: Vec::new(),
        }
    }

    /// Moves the probes on, after every input: a stopped run reports its
    /// held tests as they are; once the run's own tests are done, each
    /// worker's failures that passed alone get their replay; queued probes
    /// go to the slots that are free.
    pub(super) fn settle_probes(&mut self) {
        if !self.probing() {
            return;
        }
        let usable = self.slots.iter().any(|s| !s.given_up);
        if self.stopping || self.fatal.is_some() || self.probes_failed || !usable {
            if let Some(b) = self.bisection.as_mut() {
                b.stop();
                self.report_bisection();
            }
            while let Some((case, pick)) = self.probes.to_bisect.pop_front() {
                let class = Some(FailureClass::OrderDependent);
                self.report_case(case, pick, class, Vec::new());
            }
            for case in 0..self.probes.cases.len() {
                if self.probes.cases[case].state != CaseState::Reported {
                    let pick = self.probes.cases[case].pick();
                    self.conclude(case, pick, None);
                }
            }
            self.probes.queue.clear();
            return;
        }
        self.plan_replays();
        if self.unfinished() == 0 {
            self.start_next_bisection();
        }
        for slot in 0..self.slots.len() {
            if self.probes.queue.is_empty() {
                break;
            }
            if !self.free_for_probe(slot) {
                continue;
            }
            let Some(probe) = self.probes.queue.pop_front() else {
                break;
            };
            if probe.part.is_none() && !std::mem::replace(&mut self.probes.said_start, true) {
                self.note(format!(
                    "running failed tests again, each in a fresh worker on a fresh clone ({}--classify {})",
                    match self.params.retries {
                        0 => String::new(),
                        n => format!("--retries {n}, "),
                    },
                    self.params.classify
                ));
            }
            let what = match probe.kind {
                TryKind::Replay if probe.part.is_some() => {
                    format!("probing {} tests", probe.tests.len())
                }
                TryKind::Replay => format!("replaying {} tests", probe.tests.len()),
                _ => format!(
                    "{} {}",
                    if probe.kind == TryKind::Retry {
                        "retrying"
                    } else {
                        "alone:"
                    },
                    self.tests
                        .as_deref()
                        .and_then(|t| t.get(probe.tests[0]))
                        .map_or("", |t| t.id.as_str())
                ),
            };
            self.slots[slot].probe = Some(Assignment {
                probe,
                sent: false,
                answered: Vec::new(),
            });
            self.status(slot, &what);
            self.replace_clone(slot);
        }
        self.stop_controller_when_done();
    }

    /// Once the run's own tests are done and no retry or alone probe is
    /// left: one replay per worker whose failures passed alone, its tests up
    /// to its last such failure.
    fn plan_replays(&mut self) {
        let probing = self.slots.iter().any(|s| s.probe.is_some());
        if probing || !self.probes.queue.is_empty() || self.unfinished() > 0 {
            return;
        }
        let mut waiting: Vec<usize> = (0..self.probes.cases.len())
            .filter(|&c| self.probes.cases[c].state == CaseState::AwaitingReplay)
            .collect();
        // The longest first: each replay takes in its worker's earlier failures.
        waiting.sort_by_key(|&c| std::cmp::Reverse(self.probes.cases[c].before.len()));
        while let Some(last) = waiting.first().copied() {
            let worker = self.probes.cases[last].worker;
            let mut tests = self.probes.cases[last].before.clone();
            tests.push(self.probes.cases[last].index);
            let (mine, rest): (Vec<usize>, Vec<usize>) = waiting
                .iter()
                .partition(|&&c| self.probes.cases[c].worker == worker);
            waiting = rest;
            for &case in &mine {
                self.probes.cases[case].state = CaseState::Probing;
            }
            self.probes.queue.push_back(Probe {
                kind: TryKind::Replay,
                tests,
                cases: mine,
                part: None,
            });
        }
    }

    /// A slot whose worker is through with the run's own tests, that can
    /// take a probe.
    fn free_for_probe(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        self.template == TemplatePhase::Ready
            && self.tests.is_some()
            && !s.given_up
            && !s.busy_with_clone
            && s.probe.is_none()
            && s.worker.as_ref().is_none_or(|w| w.gone())
            && (s.worker.is_some() || s.retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(tries: &[(TryKind, bool)], retries_left: usize, before: usize) -> Case {
        Case {
            index: 0,
            worker: (0, 0),
            before: (1..=before).collect(),
            tries: tries.to_vec(),
            retries_left,
            classify: true,
            state: CaseState::Probing,
        }
    }

    use TryKind::{Alone, Replay, Retry, Run};

    #[test]
    fn the_tries_make_the_class() {
        let next = |tries: &[(TryKind, bool)], left, before| case(tries, left, before).next();
        // Without retries: alone, then (passing alone) the replay.
        assert_eq!(next(&[(Run, true)], 0, 3), Step::Alone);
        let broken = Step::Conclude(0, Some(FailureClass::Broken));
        assert_eq!(next(&[(Run, true), (Alone, true)], 0, 3), broken);
        assert_eq!(next(&[(Run, true), (Alone, false)], 0, 3), Step::Replay);
        let order = Step::Conclude(0, Some(FailureClass::OrderDependent));
        let tries = [(Run, true), (Alone, false), (Replay, true)];
        assert_eq!(next(&tries, 0, 3), order);
        let tries = [(Run, true), (Alone, false), (Replay, false)];
        assert_eq!(
            next(&tries, 0, 3),
            Step::Conclude(0, Some(FailureClass::Flaky))
        );
        // The first test of its worker: alone is its conditions.
        let flaky = Step::Conclude(0, Some(FailureClass::Flaky));
        assert_eq!(next(&[(Run, true), (Alone, false)], 0, 0), flaky);
        // Retries are the alone tries; a pass is the test's outcome.
        assert_eq!(next(&[(Run, true)], 2, 3), Step::Retry);
        assert_eq!(next(&[(Run, true), (Retry, true)], 1, 3), Step::Retry);
        let all_failed = [(Run, true), (Retry, true), (Retry, true)];
        assert_eq!(next(&all_failed, 0, 3), broken);
        let then_passed = [(Run, true), (Retry, true), (Retry, false)];
        assert_eq!(
            next(&then_passed, 0, 3),
            Step::Conclude(2, Some(FailureClass::Flaky))
        );
        assert_eq!(next(&[(Run, true), (Retry, false)], 1, 3), Step::Replay);
        let replayed = [(Run, true), (Retry, false), (Replay, true)];
        assert_eq!(
            next(&replayed, 1, 3),
            Step::Conclude(1, Some(FailureClass::OrderDependent))
        );
        // Not classified: the retries alone decide.
        let mut unclassified = case(&[(Run, true), (Retry, false)], 0, 3);
        unclassified.classify = false;
        assert_eq!(unclassified.next(), Step::Conclude(1, None));
    }
}

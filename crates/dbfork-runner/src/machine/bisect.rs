//! `dbfork bisect`: which of the tests run before a test make it fail.
//! Every probe is a fresh worker on a fresh clone that runs a subset of the
//! suspects, in their order, then the test; the probes of one step run at
//! once, one per slot. First the suspects are checked (the test alone must
//! pass, after all of them it must fail), then delta debugging (Zeller's
//! ddmin) narrows them: a part that makes the test fail alone becomes the
//! suspects; else a complement that does (the part left out was not
//! needed); else finer parts; until no part can be left out. One polluter
//! among N suspects takes about log2(N) steps with 2 workers, fewer with
//! more; polluters that only fail the test together are found too.

use dbfork_meta::report::{BisectReport, BisectVerdict};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The test alone, and after every suspect.
    Check,
    Parts,
    Complements,
}

/// The search, as a pure state: probes out, their results in.
#[derive(Debug)]
pub(super) struct Bisection {
    pub(super) target: usize,
    suspects: Vec<usize>,
    /// How many parts the suspects are cut into.
    parts: usize,
    /// Probes run at once (the slots).
    width: usize,
    stage: Stage,
    /// This step's probes: the tests before the target, and whether the
    /// target failed after them (once known).
    step: Vec<(Vec<usize>, Option<bool>)>,
    /// Probes handed out so far.
    pub(super) probes: usize,
    pub(super) verdict: Option<BisectVerdict>,
}

impl Bisection {
    pub(super) fn new(target: usize, suspects: Vec<usize>, width: usize) -> Bisection {
        let mut b = Bisection {
            target,
            suspects,
            parts: 2,
            width: width.max(2),
            stage: Stage::Check,
            step: Vec::new(),
            probes: 0,
            verdict: None,
        };
        b.step = vec![(Vec::new(), None), (b.suspects.clone(), None)];
        b
    }

    /// A search whose check is known (the target passes alone and fails
    /// after every suspect): it starts cutting the suspects at once.
    pub(super) fn known(target: usize, suspects: Vec<usize>, width: usize) -> Bisection {
        let mut b = Bisection::new(target, suspects, width);
        b.parts = b.width;
        b.next_step(Stage::Parts);
        b
    }

    /// This step's probes as (part, tests before the target); once each.
    pub(super) fn probes(&mut self) -> Vec<(usize, Vec<usize>)> {
        self.probes += self.step.len();
        self.step
            .iter()
            .enumerate()
            .map(|(part, (tests, _))| (part, tests.clone()))
            .collect()
    }

    /// The suspects as they stand (all of them, once the search is over).
    pub(super) fn suspects(&self) -> &[usize] {
        &self.suspects
    }

    /// Probe `part`'s outcome: whether the target failed after its tests
    /// (a probe that never got to the target counts as passed). Returns
    /// whether a new step begins (its probes to hand out).
    pub(super) fn result(&mut self, part: usize, failed: bool) -> bool {
        match self.step.get_mut(part) {
            Some((_, outcome @ None)) => *outcome = Some(failed),
            _ => return false,
        }
        if self.verdict.is_some() || self.step.iter().any(|(_, o)| o.is_none()) {
            return false;
        }
        let failing = self
            .step
            .iter()
            .position(|(_, outcome)| *outcome == Some(true));
        match self.stage {
            Stage::Check => {
                if self.step[0].1 == Some(true) {
                    return self.end(BisectVerdict::FailsAlone);
                }
                if self.step[1].1 == Some(false) {
                    return self.end(BisectVerdict::NotReproduced);
                }
                self.parts = self.width;
            }
            Stage::Parts => match failing {
                Some(part) => {
                    self.suspects = std::mem::take(&mut self.step[part].0);
                    self.parts = self.width;
                }
                None if self.parts > 2 => return self.next_step(Stage::Complements),
                None => return self.refine(),
            },
            Stage::Complements => match failing {
                Some(part) => {
                    self.suspects = std::mem::take(&mut self.step[part].0);
                    self.parts = (self.parts - 1).max(2);
                }
                None => return self.refine(),
            },
        }
        self.next_step(Stage::Parts)
    }

    /// No part and no complement alone makes the target fail: finer parts,
    /// unless every part is one test already (the suspects are minimal).
    fn refine(&mut self) -> bool {
        if self.parts >= self.suspects.len() {
            return self.end(BisectVerdict::Found);
        }
        self.parts = (self.parts * 2).min(self.suspects.len());
        self.next_step(Stage::Parts)
    }

    fn next_step(&mut self, stage: Stage) -> bool {
        if self.suspects.len() <= 1 {
            return self.end(BisectVerdict::Found);
        }
        self.parts = self.parts.clamp(2, self.suspects.len());
        let cuts = split(&self.suspects, self.parts);
        self.stage = stage;
        self.step = match stage {
            Stage::Complements => (0..cuts.len())
                .map(|skip| {
                    let rest = cuts.iter().enumerate().filter(|(i, _)| *i != skip);
                    (rest.flat_map(|(_, c)| c.iter().copied()).collect(), None)
                })
                .collect(),
            _ => cuts.into_iter().map(|c| (c, None)).collect(),
        };
        true
    }

    fn end(&mut self, verdict: BisectVerdict) -> bool {
        self.verdict = Some(verdict);
        self.step.clear();
        false
    }

    /// Stopped before the end (Ctrl-C, an error).
    pub(super) fn stop(&mut self) {
        if self.verdict.is_none() {
            self.end(BisectVerdict::Stopped);
        }
    }
}

/// `items` in `n` contiguous parts of (nearly) equal size, in order.
fn split(items: &[usize], n: usize) -> Vec<Vec<usize>> {
    let n = n.clamp(1, items.len().max(1));
    (0..n)
        .map(|i| items[i * items.len() / n..(i + 1) * items.len() / n].to_vec())
        .filter(|p| !p.is_empty())
        .collect()
}

impl Machine {
    /// The tests are known: the bisection's target and suspects by index
    /// (every other test in collection order when none were given), and no
    /// test of the run's own: its slots go to the probes.
    pub(super) fn start_bisection(&mut self, tests: &[TestItem]) -> Result<(), String> {
        let Some(spec) = self.params.bisect.clone() else {
            return Ok(());
        };
        let index_of = |id: &str| tests.iter().position(|t| t.id == id);
        let Some(target) = index_of(&spec.target) else {
            return Err(format!(
                "the test command collected no test `{}` (of {} tests): give its id as the tool prints it (pytest's node id `path/test_file.py::test_name`, Django's `app.tests.Class.test_name`), with the arguments that collect it",
                spec.target,
                tests.len()
            ));
        };
        let suspects: Vec<usize> = match &spec.before {
            Some(ids) => ids
                .iter()
                .filter_map(|id| index_of(id))
                .filter(|&i| i != target)
                .collect(),
            None => (0..tests.len()).filter(|&i| i != target).collect(),
        };
        if let Some(ids) = &spec.before {
            let missing = ids.len() - suspects.len();
            if missing > 0 {
                self.note(format!(
                    "{missing} of the {} tests that ran before it were not collected now; bisecting the {} that were",
                    ids.len(),
                    suspects.len()
                ));
            }
        }
        self.note(format!(
            "bisecting {} tests that may make {} fail: each probe runs some of them, then it, in a fresh worker on a fresh clone, {} at once",
            suspects.len(),
            spec.target,
            self.slots.len()
        ));
        self.bisection = Some(Bisection::new(target, suspects, self.slots.len()));
        self.queue_bisect_probes();
        Ok(())
    }

    /// The bisection's current step, as probes for the free slots.
    pub(super) fn queue_bisect_probes(&mut self) {
        let Some(b) = self.bisection.as_mut() else {
            return;
        };
        let target = b.target;
        for (part, mut tests) in b.probes() {
            tests.push(target);
            self.probes.queue(probes::Probe::bisect(tests, part));
        }
    }

    /// A bisection probe's end: whether the target failed after its tests.
    pub(super) fn bisect_result(&mut self, part: usize, failed: bool) {
        let Some(b) = self.bisection.as_mut() else {
            return;
        };
        if b.result(part, failed) {
            self.queue_bisect_probes();
        } else {
            self.report_bisection();
        }
    }

    /// The bisection is over: what it found, once.
    pub(super) fn report_bisection(&mut self) {
        let Some(verdict) = self.bisection.as_ref().and_then(|b| b.verdict) else {
            return;
        };
        let Some(b) = self.bisection.take() else {
            return;
        };
        let ids = self.tests.as_deref().unwrap_or_default();
        let id = |i: usize| ids.get(i).map(|t| t.id.clone()).unwrap_or_default();
        let culprits = match verdict {
            BisectVerdict::Found => b.suspects().iter().map(|&i| id(i)).collect(),
            _ => Vec::new(),
        };
        if let Some((case, pick)) = self.bisect_case.take() {
            // `--bisect` of a run's order-dependent failure: reported now,
            // with what it fails after; the next one's search may start.
            let class = Some(dbfork_meta::report::FailureClass::OrderDependent);
            return self.report_case(case, pick, class, culprits);
        }
        let report = BisectReport {
            test: id(b.target),
            verdict,
            culprits,
            probes: b.probes,
        };
        self.out.push(Command::Bisected(report));
    }

    /// The bisection has probes to run or results to wait for.
    pub(super) fn bisecting(&self) -> bool {
        self.bisection.as_ref().is_some_and(|b| b.verdict.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a bisection against `fails` (whether the target fails after
    /// these tests), `width` probes at a time; its verdict, suspects, probes.
    fn search(
        n: usize,
        width: usize,
        fails: impl Fn(&[usize]) -> bool,
    ) -> (BisectVerdict, Vec<usize>, usize) {
        let mut b = Bisection::new(n, (0..n).collect(), width);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 200, "no end");
            let probes = b.probes();
            let mut more = false;
            for (part, tests) in probes {
                more |= b.result(part, fails(&tests));
            }
            if !more {
                break;
            }
        }
        (b.verdict.unwrap(), b.suspects().to_vec(), b.probes)
    }

    #[test]
    fn one_polluter_among_many() {
        for width in [2, 3, 4] {
            let (verdict, found, probes) = search(200, width, |t| t.contains(&137));
            assert_eq!(
                (verdict, found.as_slice()),
                (BisectVerdict::Found, &[137][..])
            );
            assert!(probes <= 2 + width * 12, "{probes} probes with {width}");
        }
    }

    #[test]
    fn two_polluters_that_only_fail_it_together() {
        let (verdict, found, _) = search(50, 2, |t| t.contains(&3) && t.contains(&41));
        assert_eq!((verdict, found), (BisectVerdict::Found, vec![3, 41]));
    }

    #[test]
    fn a_test_that_fails_alone_or_never() {
        assert_eq!(search(10, 2, |_| true).0, BisectVerdict::FailsAlone);
        assert_eq!(search(10, 2, |_| false).0, BisectVerdict::NotReproduced);
    }

    #[test]
    fn parts_keep_the_order_and_every_item() {
        assert_eq!(split(&[1, 2, 3, 4, 5], 2), [vec![1, 2], vec![3, 4, 5]]);
        assert_eq!(split(&[1, 2], 5), [vec![1], vec![2]]);
    }
}

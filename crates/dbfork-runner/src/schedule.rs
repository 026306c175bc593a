//! Which tests go to which worker, and when. Pure bookkeeping, no I/O: the
//! machine asks it for a batch when a worker wants work, tells it what
//! started, and asks it whom to steal from when the queue runs dry.
//!
//! Tests are grouped into units (`--dist`), the units ordered longest first by
//! the recorded timings, so the long tests start early and the short ones fill
//! the gaps at the end. A batch is a slice of the queue worth about
//! 1/(2N) of what is left, so workers come back often enough to stay balanced
//! without a round trip per test; within a batch tests keep their collection
//! order, so a module's tests run together and its fixtures are set up once.
//! When the queue is empty, an idle worker takes the back half of the busiest
//! worker's unstarted tests. Another `--order` (collection order, reversed,
//! shuffled by a seed) hands the units out in that order instead, batches
//! cut from the front and kept in it.

use std::collections::VecDeque;

use dbfork_protocol::TestItem;

use crate::{Dist, Order};

/// Most tests in one batch: bounds what one worker holds if the estimates are wrong.
const MAX_BATCH: usize = 128;

#[derive(Debug, Clone)]
pub(crate) struct Unit {
    pub(crate) tests: Vec<usize>,
    pub(crate) seconds: f64,
    /// The tests' order group: a worker never runs a lower group after a higher one.
    pub(crate) group: u32,
}

#[derive(Debug)]
pub struct Scheduler {
    estimates: Vec<f64>,
    queue: VecDeque<Unit>,
    /// Per slot: tests handed over and not yet started, in the worker's order.
    held: Vec<Vec<usize>>,
    /// Per slot: whether a steal from it awaits its answer.
    stealing: Vec<bool>,
    /// Per slot: the estimate of the test it runs now.
    running: Vec<f64>,
    /// Per slot: whether a worker holds it (or will: slots count from the start).
    active: Vec<bool>,
    /// Per slot: the highest order group handed to its worker so far.
    floor: Vec<u32>,
    /// Per test: its order group.
    groups: Vec<u32>,
    slots: usize,
    /// Longest first (batches in collection order) or the order given.
    longest: bool,
    /// `--order recorded`: per slot, the tests its worker ran in the
    /// recorded run, in that order (handed out before any other, never
    /// stolen).
    pinned: Option<Vec<VecDeque<usize>>>,
}

/// How many pinned tests go to a worker at once (few: a lost worker's go
/// back to its slot's list for its replacement).
const PINNED_BATCH: usize = 16;

/// The units of work of `tests` (those `keep` picks) under `dist`, in
/// collection order: one per test, or per class, module or file (within one
/// order group), with their estimated seconds.
pub(crate) fn group_units(
    tests: &[TestItem],
    dist: Dist,
    estimates: &[f64],
    keep: impl Fn(usize) -> bool,
) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    let mut unit_of_key: std::collections::HashMap<(u32, String), usize> = Default::default();
    for (index, test) in tests.iter().enumerate().filter(|(i, _)| keep(*i)) {
        let key = match dist {
            Dist::Test => None,
            Dist::Class => Some(match &test.class {
                Some(class) => format!("{}::{class}", test.file),
                None => test.id.clone(),
            }),
            Dist::Module | Dist::File => Some(test.file.clone()),
        };
        let key = key.map(|k| (test.group, k));
        match key.as_ref().and_then(|k| unit_of_key.get(k)) {
            Some(&u) => {
                units[u].tests.push(index);
                units[u].seconds += estimates[index];
            }
            None => {
                if let Some(k) = key {
                    unit_of_key.insert(k, units.len());
                }
                units.push(Unit {
                    tests: vec![index],
                    seconds: estimates[index],
                    group: test.group,
                });
            }
        }
    }
    units
}

impl Scheduler {
    /// `estimate` gives each test's expected seconds.
    pub fn new(
        tests: &[TestItem],
        dist: Dist,
        slots: usize,
        estimate: impl Fn(&str) -> f64,
    ) -> Self {
        Scheduler::new_for(tests, dist, Order::Longest, slots, estimate, |_| true)
    }

    /// A scheduler of the tests `keep` picks (this machine's shard); the
    /// others are never handed out.
    pub fn new_for(
        tests: &[TestItem],
        dist: Dist,
        order: Order,
        slots: usize,
        estimate: impl Fn(&str) -> f64,
        keep: impl Fn(usize) -> bool,
    ) -> Self {
        let estimates: Vec<f64> = tests.iter().map(|t| estimate(&t.id).max(0.0)).collect();
        let mut units = group_units(tests, dist, &estimates, keep);
        match order {
            Order::Reverse => units.reverse(),
            Order::Shuffle(Some(seed)) => shuffle(&mut units, seed),
            _ => {}
        }
        // By order group (the sort is stable: the order above stays within
        // each), then for `longest` longest first, ties in collection order.
        let longest = order == Order::Longest;
        units.sort_by(|a, b| {
            let by_length = if longest {
                b.seconds.total_cmp(&a.seconds)
            } else {
                std::cmp::Ordering::Equal
            };
            a.group.cmp(&b.group).then(by_length)
        });
        Scheduler {
            estimates,
            queue: units.into(),
            held: vec![Vec::new(); slots],
            stealing: vec![false; slots],
            running: vec![0.0; slots],
            active: vec![true; slots],
            floor: vec![0; slots],
            groups: tests.iter().map(|t| t.group).collect(),
            slots,
            longest,
            pinned: None,
        }
    }

    /// `--order recorded`: each slot's worker gets `lists[slot]` in its
    /// order, before anything else (a list of a slot this run does not have
    /// goes after the list of `slot % slots`); the tests in no list are
    /// handed out after, as the order given says; nothing is stolen.
    pub fn pin(&mut self, lists: Vec<Vec<usize>>) {
        let mut own = vec![VecDeque::new(); self.slots.max(1)];
        let mut taken = std::collections::HashSet::new();
        for (slot, list) in lists.into_iter().enumerate() {
            for index in list {
                if taken.insert(index) {
                    own[slot % self.slots.max(1)].push_back(index);
                }
            }
        }
        for unit in &mut self.queue {
            unit.tests.retain(|i| !taken.contains(i));
        }
        self.queue.retain(|u| !u.tests.is_empty());
        self.pinned = Some(own);
    }

    /// Number of units of work: no more workers than this are useful.
    pub fn units(&self) -> usize {
        let pinned = (self.pinned.as_deref().unwrap_or_default().iter())
            .rposition(|list| !list.is_empty())
            .map_or(0, |slot| slot + 1);
        self.queue.len().max(pinned)
    }

    /// The next batch for `slot`, or `None` when the queue is empty.
    ///
    /// Longest first, as LPT scheduling does: the unit at the front goes to the
    /// least loaded worker. A worker that asks ahead while another is less
    /// loaded (workers ask before they run dry) gets the shortest unit from
    /// the back instead, one at a time, when it is much shorter than the
    /// front; otherwise the first worker to ask would take the long tests one
    /// after another and the short ones would not be left to fill the end.
    /// A single long test goes with one short unit behind it: a worker commits
    /// to the test after the one it runs (pytest's `nextitem`), so that one
    /// must be short, or it could not be given to an idle worker.
    pub fn next_batch(&mut self, slot: usize) -> Option<Vec<usize>> {
        if let Some(own) = self.pinned.as_mut().and_then(|p| p.get_mut(slot)) {
            if !own.is_empty() {
                let n = own.len().min(PINNED_BATCH);
                let batch: Vec<usize> = own.drain(..n).collect();
                self.active[slot] = true;
                self.held[slot].extend(&batch);
                return Some(batch);
            }
        }
        // Only the lowest order group this worker may still run is considered;
        // if nothing is left for it (tests given back after it moved on), it
        // takes the lowest group anyway: running out of order beats not running.
        let group = self
            .queue
            .iter()
            .map(|u| u.group)
            .find(|&g| g >= self.floor[slot])
            .or_else(|| self.queue.front().map(|u| u.group))?;
        let first = self.queue.iter().position(|u| u.group == group)?;
        let last = self.queue.iter().rposition(|u| u.group == group)?;
        let left: f64 = self.queue.iter().map(|u| u.seconds).sum();
        let target = left / (2 * self.slots.max(1)) as f64;
        let front = self.queue[first].seconds;
        let back = self.queue[last].seconds;
        let less_loaded_elsewhere = (0..self.slots)
            .filter(|&s| s != slot && self.active[s])
            .any(|s| self.load(s) < self.load(slot));
        let mut batch = Vec::new();
        let mut in_collection_order = self.longest;
        if !self.longest {
            // The order given: the front units, about a target's worth.
            let mut seconds = 0.0;
            while let Some(unit) = self.queue.get(first).filter(|u| u.group == group) {
                let full =
                    seconds + unit.seconds > target || batch.len() + unit.tests.len() > MAX_BATCH;
                if full && !batch.is_empty() {
                    break;
                }
                let unit = self.take(first);
                seconds += unit.seconds;
                batch.extend(unit.tests);
            }
        } else if less_loaded_elsewhere && back * 2.0 < front {
            // One short unit: enough to keep the worker going, and it will ask
            // again; taking more would leave only long units for the end.
            batch.extend(self.take(last).tests);
        } else {
            let unit = self.take(first);
            let mut seconds = unit.seconds;
            let single_long = unit.seconds > target && unit.tests.len() == 1 && self.slots > 1;
            batch.extend(unit.tests);
            if single_long {
                // The long test first, so that the short one is what the worker commits to.
                in_collection_order = false;
                let last = self.queue.iter().rposition(|u| u.group == group);
                if let Some(last) = last.filter(|&l| self.queue[l].seconds <= target) {
                    batch.extend(self.take(last).tests);
                }
            } else {
                while let Some(unit) = self.queue.get(first).filter(|u| u.group == group) {
                    if seconds + unit.seconds > target || batch.len() + unit.tests.len() > MAX_BATCH
                    {
                        break;
                    }
                    let unit = self.take(first);
                    seconds += unit.seconds;
                    batch.extend(unit.tests);
                }
            }
        }
        if in_collection_order {
            batch.sort_unstable();
        }
        self.active[slot] = true;
        self.floor[slot] = self.floor[slot].max(group);
        self.held[slot].extend(&batch);
        Some(batch)
    }

    fn take(&mut self, position: usize) -> Unit {
        self.queue.remove(position).unwrap_or(Unit {
            tests: Vec::new(),
            seconds: 0.0,
            group: 0,
        })
    }

    /// What `slot` has to do before it is free: its running test and what it holds.
    fn load(&self, slot: usize) -> f64 {
        self.running[slot] + self.held_seconds(slot)
    }

    /// `slot` will get no worker (more slots than units, or out of restarts).
    pub fn retire(&mut self, slot: usize) {
        self.active[slot] = false;
    }

    /// `slot`'s worker started `index`.
    pub fn started(&mut self, slot: usize, index: usize) {
        self.held[slot].retain(|&i| i != index);
        self.running[slot] = self.estimates.get(index).copied().unwrap_or(0.0);
    }

    /// Tests `slot` holds and has not started.
    pub fn held(&self, slot: usize) -> &[usize] {
        &self.held[slot]
    }

    /// Whom `thief` should steal from and which tests to ask for: the back half
    /// (by estimated time) of the unstarted tests of the worker holding the
    /// most, never its first one (the worker may have committed to it as the
    /// next test). `None` when nobody holds enough to share.
    pub fn pick_steal(&mut self, thief: usize) -> Option<(usize, Vec<usize>)> {
        if self.pinned.is_some() {
            // Each worker runs its own recorded order.
            return None;
        }
        let floor = self.floor[thief];
        let stealable = |s: &Scheduler, slot: usize| -> Vec<usize> {
            s.held[slot]
                .iter()
                .skip(1)
                .copied()
                .filter(|&i| s.groups[i] >= floor)
                .collect()
        };
        let victim = (0..self.slots)
            .filter(|&s| s != thief && !self.stealing[s] && !stealable(self, s).is_empty())
            .max_by(|&a, &b| self.held_seconds(a).total_cmp(&self.held_seconds(b)))?;
        let candidates = stealable(self, victim);
        let total: f64 = candidates.iter().map(|&i| self.estimates[i]).sum();
        let mut taken = Vec::new();
        let mut seconds = 0.0;
        for &index in candidates.iter().rev() {
            if !taken.is_empty() && seconds >= total / 2.0 {
                break;
            }
            seconds += self.estimates[index];
            taken.push(index);
        }
        taken.reverse();
        self.stealing[victim] = true;
        Some((victim, taken))
    }

    /// Whether a steal from `slot` awaits its answer.
    pub fn steal_pending(&self) -> bool {
        self.stealing.iter().any(|s| *s)
    }

    /// `victim` gave back `tests` (an answer to a steal): they go to the front
    /// of the queue as one unit.
    pub fn released(&mut self, victim: usize, tests: &[usize]) {
        self.stealing[victim] = false;
        let tests: Vec<usize> = tests
            .iter()
            .copied()
            .filter(|i| self.held[victim].contains(i))
            .collect();
        self.requeue(victim, tests);
    }

    /// `slot`'s worker is gone: what it held and had not started goes back to
    /// the queue. Returns those tests.
    pub fn lost(&mut self, slot: usize) -> Vec<usize> {
        self.stealing[slot] = false;
        self.running[slot] = 0.0;
        self.active[slot] = false;
        // The replacement starts on a fresh clone: any group is fine again.
        self.floor[slot] = 0;
        let tests = self.held[slot].clone();
        self.requeue(slot, tests.clone());
        tests
    }

    fn requeue(&mut self, slot: usize, tests: Vec<usize>) {
        if tests.is_empty() {
            return;
        }
        if let Some(own) = self.pinned.as_mut().and_then(|p| p.get_mut(slot)) {
            // Back to the front of its slot's list, for its replacement.
            self.held[slot].retain(|i| !tests.contains(i));
            for &index in tests.iter().rev() {
                own.push_front(index);
            }
            return;
        }
        self.held[slot].retain(|i| !tests.contains(i));
        // One unit per group, each at the front of its group in the queue.
        let mut groups: Vec<u32> = tests.iter().map(|&i| self.groups[i]).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups.into_iter().rev() {
            let mine: Vec<usize> = tests
                .iter()
                .copied()
                .filter(|&i| self.groups[i] == group)
                .collect();
            let seconds = mine.iter().map(|&i| self.estimates[i]).sum();
            let at = self
                .queue
                .iter()
                .position(|u| u.group >= group)
                .unwrap_or(self.queue.len());
            self.queue.insert(
                at,
                Unit {
                    tests: mine,
                    seconds,
                    group,
                },
            );
        }
    }

    fn held_seconds(&self, slot: usize) -> f64 {
        self.held[slot].iter().map(|&i| self.estimates[i]).sum()
    }
}

/// Shuffles `units` by `seed` (Fisher-Yates with splitmix64: the same seed,
/// the same order, on every machine).
fn shuffle(units: &mut [Unit], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..units.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        units.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The order one worker gets every test in under `order`.
    fn handed_out(order: Order, tests: &[TestItem]) -> Vec<usize> {
        let mut s = Scheduler::new_for(tests, Dist::Test, order, 1, |_| 1.0, |_| true);
        let mut seen = Vec::new();
        while let Some(batch) = s.next_batch(0) {
            for i in batch {
                s.started(0, i);
                seen.push(i);
            }
        }
        seen
    }

    /// `--order recorded`: each worker gets its recorded list in order
    /// (a third slot's list after the first's), then the rest; no steals;
    /// a lost worker's tests go back to its slot.
    #[test]
    fn recorded_lists_are_pinned_to_their_slots() {
        let tests = items(10);
        let mut s = Scheduler::new_for(&tests, Dist::Test, Order::File, 2, |_| 1.0, |_| true);
        s.pin(vec![vec![5, 1, 3], vec![0, 2], vec![9]]);
        assert_eq!(
            s.units(),
            4,
            "the 4 tests in no list are units of their own"
        );
        assert_eq!(s.next_batch(1), Some(vec![0, 2]));
        assert_eq!(s.next_batch(0), Some(vec![5, 1, 3, 9]));
        assert_eq!(s.pick_steal(1), None);
        s.started(0, 5);
        assert_eq!(s.lost(0), vec![1, 3, 9]);
        assert_eq!(s.next_batch(0), Some(vec![1, 3, 9]), "for the replacement");
        let mut rest = Vec::new();
        while let Some(batch) = s.next_batch(1) {
            rest.extend(batch);
        }
        assert_eq!(rest, [4, 6, 7, 8]);
    }

    #[test]
    fn the_orders_hand_out_in_their_order_within_each_group() {
        let mut tests = items(30);
        // The last ten are transactional (a later group): they stay last.
        for t in &mut tests[20..] {
            t.group = 1;
        }
        let file = handed_out(Order::File, &tests);
        assert_eq!(file, (0..30).collect::<Vec<_>>());
        let reverse = handed_out(Order::Reverse, &tests);
        let expected: Vec<usize> = (0..20).rev().chain((20..30).rev()).collect();
        assert_eq!(reverse, expected);
        let shuffled = handed_out(Order::Shuffle(Some(42)), &tests);
        assert_eq!(
            shuffled,
            handed_out(Order::Shuffle(Some(42)), &tests),
            "a seed, one order"
        );
        assert_ne!(shuffled, handed_out(Order::Shuffle(Some(43)), &tests));
        assert_ne!(shuffled, file);
        let mut sorted = shuffled.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, file, "every test once");
        assert!(
            shuffled[..20].iter().all(|&i| i < 20),
            "groups hold: {shuffled:?}"
        );
    }

    fn items(n: usize) -> Vec<TestItem> {
        (0..n)
            .map(|i| TestItem {
                id: format!(
                    "tests/test_{}.py::{}test_{i}",
                    i / 5,
                    if i % 2 == 0 { "C::" } else { "" }
                ),
                file: format!("tests/test_{}.py", i / 5),
                class: (i % 2 == 0).then(|| "C".to_string()),
                group: 0,
            })
            .collect()
    }

    #[test]
    fn a_worker_never_goes_back_to_a_lower_group() {
        // Transactional tests (group 1) are the long ones: longest-first alone
        // would hand them out first.
        let mut tests = items(30);
        for t in tests.iter_mut().skip(20) {
            t.group = 1;
        }
        let mut s = Scheduler::new(&tests, Dist::Test, 2, |id| {
            let i: usize = id.rsplit('_').next().unwrap().parse().unwrap();
            if i >= 20 {
                5.0
            } else {
                0.1
            }
        });
        let mut seen: Vec<Vec<u32>> = vec![Vec::new(); 2];
        for _ in 0..40 {
            for (slot, groups) in seen.iter_mut().enumerate() {
                if let Some(batch) = s.next_batch(slot) {
                    for i in batch {
                        s.started(slot, i);
                        groups.push(tests[i].group);
                    }
                }
            }
        }
        assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 30);
        for groups in &seen {
            assert!(groups.windows(2).all(|w| w[0] <= w[1]), "{groups:?}");
        }
        assert_eq!(seen[0][0], 0, "group 0 first, though group 1 is longer");
    }

    #[test]
    fn longest_first_and_batches_in_collection_order() {
        let tests = items(10);
        let mut s = Scheduler::new(&tests, Dist::Test, 2, |id| {
            if id.ends_with("_7") {
                50.0
            } else {
                1.0
            }
        });
        assert_eq!(
            s.next_batch(0),
            Some(vec![7, 9]),
            "the long test comes first, with one short test to commit to after it"
        );
        let b = s.next_batch(1).unwrap();
        assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?}");
    }

    #[test]
    fn a_loaded_worker_asking_ahead_gets_short_tests() {
        let tests = items(200);
        let long = |id: &str| {
            ["::test_1", "::test_2", "::test_3"]
                .iter()
                .any(|end| id.ends_with(end))
        };
        let mut s = Scheduler::new(
            &tests,
            Dist::Test,
            4,
            |id| if long(id) { 20.0 } else { 0.1 },
        );
        let first = s.next_batch(0).unwrap();
        s.started(0, first[0]);
        assert!(long(&tests[first[0]].id));
        // Slot 0 asks again while running its long test; slots 1-3 have not asked yet.
        let ahead = s.next_batch(0).unwrap();
        assert!(ahead.iter().all(|&i| !long(&tests[i].id)), "{ahead:?}");
        // The idle slots get the other long tests.
        for slot in 1..3 {
            let b = s.next_batch(slot).unwrap();
            assert!(long(&tests[b[0]].id), "{b:?}");
        }
    }

    #[test]
    fn module_units_stay_together() {
        let tests = items(10);
        let mut s = Scheduler::new(&tests, Dist::Module, 2, |_| 1.0);
        assert_eq!(s.units(), 2);
        let b = s.next_batch(0).unwrap();
        assert!(
            b == vec![0, 1, 2, 3, 4] || b == vec![5, 6, 7, 8, 9],
            "{b:?}"
        );
    }

    #[test]
    fn steal_takes_the_back_half_but_never_the_first() {
        let tests = items(8);
        let mut s = Scheduler::new(&tests, Dist::Test, 2, |_| 1.0);
        let mut given = Vec::new();
        while let Some(b) = s.next_batch(0) {
            given.extend(b);
        }
        let (victim, asked) = s.pick_steal(1).unwrap();
        assert_eq!(victim, 0);
        assert!(!asked.contains(&s.held(0)[0]));
        assert!(asked.len() >= 3, "{asked:?}");
        assert!(s.pick_steal(1).is_none(), "one steal at a time per victim");
        s.released(0, &asked);
        assert_eq!(s.next_batch(1).map(|b| b.len()), Some(asked.len()));
    }

    proptest! {
        /// However batches, starts, steals and losses interleave, every test is
        /// handed out and started exactly once.
        #[test]
        fn every_test_runs_exactly_once(
            n in 1usize..60,
            slots in 1usize..5,
            dist in 0usize..3,
            order in 0usize..4,
            seed in 0u64..1000,
            ops in proptest::collection::vec((0usize..5, 0usize..4, 0usize..100), 1..400),
        ) {
            let tests = items(n);
            let dist = [Dist::Test, Dist::Class, Dist::Module][dist];
            let order = [Order::Longest, Order::File, Order::Reverse, Order::Shuffle(Some(seed))][order];
            let mut s = Scheduler::new_for(&tests, dist, order, slots, |id| (id.len() % 7) as f64, |_| true);
            let mut started = vec![0usize; n];
            let mut pending_steal: Vec<(usize, Vec<usize>)> = Vec::new();
            let step = |s: &mut Scheduler, op: usize, slot: usize, pick: usize, started: &mut Vec<usize>, pending_steal: &mut Vec<(usize, Vec<usize>)>| {
                let slot = slot % slots;
                match op {
                    0 => { s.next_batch(slot); }
                    1 | 2 => {
                        if let Some(&i) = s.held(slot).first() {
                            s.started(slot, i);
                            started[i] += 1;
                        }
                    }
                    3 => {
                        if let Some(x) = s.pick_steal(slot) { pending_steal.push(x); }
                    }
                    _ => {
                        if let Some((victim, asked)) = pending_steal.pop() {
                            // The worker gives back only a part, as a real one may.
                            let keep = pick % (asked.len() + 1);
                            s.released(victim, &asked[keep..]);
                        } else {
                            s.lost(slot);
                        }
                    }
                }
            };
            for (op, slot, pick) in ops {
                step(&mut s, op, slot, pick, &mut started, &mut pending_steal);
            }
            for (victim, _) in pending_steal.drain(..) {
                s.released(victim, &[]);
            }
            // Drain: keep giving and starting until nothing is left.
            loop {
                let mut progressed = false;
                for slot in 0..slots {
                    if s.next_batch(slot).is_some() { progressed = true; }
                    while let Some(&i) = s.held(slot).first() {
                        s.started(slot, i);
                        started[i] += 1;
                        progressed = true;
                    }
                }
                if !progressed { break; }
            }
            prop_assert!(started.iter().all(|&c| c == 1), "{started:?}");
        }
    }
}

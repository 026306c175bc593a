//! A pool of fresh clones of one template, made ahead so that whoever needs a
//! clean database (a transactional test under `dbfork run
//! --fresh-transactional`; a client of the pool service) gets one without
//! waiting for a clone. Pure bookkeeping, no I/O: the owner makes and drops
//! the databases the pool names, and tells it when that is done.
//!
//! Every clone is in one state:
//!
//! ```text
//!   to_make()          made(ok)           acquire()           release() / expire()
//!  ----------> Making ----------> Ready ------------> Leased --------------------> Recycling
//!                 |  made(failed)   |  drain()                                       | dropped()
//!                 +--> (gone)        +--------------------------------------------->  +--> (gone)
//! ```
//!
//! A clone is used once unless its holder says it is clean: a released
//! lease is dropped (recycled); one given back clean ([`Pool::give_back`],
//! IntegreSQL's "unlock") is `Ready` again for the next holder. The pool keeps `target` clones ready or in the making, plus one
//! for each holder waiting, and never has more than `max` clones on the
//! server in all (recycling ones included: they still exist until dropped).
//! Holders wait first come, first served. A lease older than its expiry is
//! taken back by [`Pool::expire`] (a client that died without releasing).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Where one clone of the pool is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State<H> {
    /// Being made; not usable yet.
    Making,
    Ready,
    /// Handed to `holder` at `since`.
    Leased {
        holder: H,
        since: Instant,
    },
    /// Released or expired, or left over: to be dropped.
    Recycling,
}

/// A clone handed to a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<H> {
    pub holder: H,
    pub name: String,
}

#[derive(Debug)]
pub struct Pool<H> {
    clones: BTreeMap<String, State<H>>,
    waiting: VecDeque<H>,
    target: usize,
    max: usize,
    lease_expiry: Option<Duration>,
    /// How many names were handed out by `to_make` (the next name's number).
    made_names: usize,
    /// No more clones are made or handed out (the run is ending).
    drained: bool,
}

impl<H: Clone + PartialEq> Pool<H> {
    /// A pool keeping `target` clones ready ahead, with at most `max` on the
    /// server; leases never expire unless [`Pool::with_lease_expiry`].
    pub fn new(target: usize, max: usize) -> Self {
        Pool {
            clones: BTreeMap::new(),
            waiting: VecDeque::new(),
            target,
            max: max.max(1),
            lease_expiry: None,
            made_names: 0,
            drained: false,
        }
    }

    pub fn with_lease_expiry(mut self, expiry: Duration) -> Self {
        self.lease_expiry = Some(expiry);
        self
    }

    pub fn set_target(&mut self, target: usize) {
        self.target = target;
    }

    /// The state of one clone.
    pub fn state(&self, name: &str) -> Option<&State<H>> {
        self.clones.get(name)
    }

    /// How many clones are in each state: (making, ready, leased, recycling).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for state in self.clones.values() {
            match state {
                State::Making => counts.0 += 1,
                State::Ready => counts.1 += 1,
                State::Leased { .. } => counts.2 += 1,
                State::Recycling => counts.3 += 1,
            }
        }
        counts
    }

    /// Holders waiting for a clone.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The names of the clones to start making now (`name(n)` names the
    /// n-th clone the pool ever asked for); each becomes `Making` until
    /// [`Pool::made`].
    pub fn to_make(&mut self, name: impl Fn(usize) -> String) -> Vec<String> {
        self.to_make_within(usize::MAX, name)
    }

    /// [`Pool::to_make`], at most `room` of them (what a budget shared with
    /// other pools leaves).
    pub fn to_make_within(&mut self, room: usize, name: impl Fn(usize) -> String) -> Vec<String> {
        if self.drained {
            return Vec::new();
        }
        let (making, ready, _, _) = self.counts();
        let wanted = (self.target + self.waiting.len()).saturating_sub(making + ready);
        let room = self.max.saturating_sub(self.clones.len()).min(room);
        let mut names = Vec::new();
        for _ in 0..wanted.min(room) {
            let next = name(self.made_names);
            self.made_names += 1;
            self.clones.insert(next.clone(), State::Making);
            names.push(next);
        }
        names
    }

    /// A clone asked for by [`Pool::to_make`] was made (`ok`) or could not
    /// be. Returns the grants to waiting holders it allows.
    pub fn made(&mut self, name: &str, ok: bool) -> Vec<Grant<H>> {
        match self.clones.get_mut(name) {
            Some(state @ State::Making) if ok && !self.drained => *state = State::Ready,
            // Made after the pool was drained: it goes at once.
            Some(state @ State::Making) if ok => *state = State::Recycling,
            Some(State::Making) => {
                self.clones.remove(name);
            }
            _ => {}
        }
        self.hand_out(Instant::now())
    }

    /// `holder` wants a clone: it gets one now, or waits (and the next
    /// [`Pool::made`] or [`Pool::acquire`] grants it in turn).
    pub fn acquire(&mut self, holder: H, now: Instant) -> Option<String> {
        if self.drained {
            return None;
        }
        self.waiting.push_back(holder.clone());
        let grants = self.hand_out(now);
        grants
            .into_iter()
            .find(|g| g.holder == holder)
            .map(|g| g.name)
    }

    fn hand_out(&mut self, now: Instant) -> Vec<Grant<H>> {
        let mut grants = Vec::new();
        while !self.waiting.is_empty() {
            let Some(name) = self
                .clones
                .iter()
                .find(|(_, s)| matches!(s, State::Ready))
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            let Some(holder) = self.waiting.pop_front() else {
                break;
            };
            self.clones.insert(
                name.clone(),
                State::Leased {
                    holder: holder.clone(),
                    since: now,
                },
            );
            grants.push(Grant { holder, name });
        }
        grants
    }

    /// The holder is done with its clone: it is to be dropped. False when
    /// the name was not leased.
    pub fn release(&mut self, name: &str) -> bool {
        match self.clones.get_mut(name) {
            Some(state @ State::Leased { .. }) => {
                *state = State::Recycling;
                true
            }
            _ => false,
        }
    }

    /// The holder is done with its clone and says it is clean (unchanged,
    /// or restored by itself): it is ready for the next holder as it is.
    /// Returns the grants to waiting holders it allows; `None` when the name
    /// was not leased.
    pub fn give_back(&mut self, name: &str, now: Instant) -> Option<Vec<Grant<H>>> {
        match self.clones.get_mut(name) {
            Some(state @ State::Leased { .. }) if !self.drained => *state = State::Ready,
            Some(state @ State::Leased { .. }) => *state = State::Recycling,
            _ => return None,
        }
        Some(self.hand_out(now))
    }

    /// The ready clones are to be dropped (room for another pool); how many.
    pub fn shed_ready(&mut self) -> usize {
        let mut shed = 0;
        for state in self.clones.values_mut() {
            if matches!(state, State::Ready) {
                *state = State::Recycling;
                shed += 1;
            }
        }
        shed
    }

    /// The holder of `name` is still at it: its lease starts again now (it
    /// expires one expiry from now). False when the name is not leased.
    pub fn renew(&mut self, name: &str, now: Instant) -> bool {
        match self.clones.get_mut(name) {
            Some(State::Leased { since, .. }) => {
                *since = now;
                true
            }
            _ => false,
        }
    }

    /// Every clone and its state, by name.
    pub fn clones(&self) -> impl Iterator<Item = (&str, &State<H>)> {
        self.clones
            .iter()
            .map(|(name, state)| (name.as_str(), state))
    }

    /// The leased clones: (name, holder, leased or last renewed at).
    pub fn leases(&self) -> impl Iterator<Item = (&str, &H, Instant)> {
        self.clones.iter().filter_map(|(name, state)| match state {
            State::Leased { holder, since } => Some((name.as_str(), holder, *since)),
            _ => None,
        })
    }

    /// The clone `holder` holds, if it holds one.
    pub fn held_by(&self, holder: &H) -> Option<&str> {
        self.leases()
            .find(|(_, h, _)| *h == holder)
            .map(|(n, _, _)| n)
    }

    /// How many clones exist or are being made, whatever their state.
    pub fn len(&self) -> usize {
        self.clones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clones.is_empty()
    }

    /// The holder is gone (a worker that crashed): it waits no more, and
    /// its leases are to be dropped. Returns those clones' names.
    pub fn forget(&mut self, holder: &H) -> Vec<String> {
        self.waiting.retain(|h| h != holder);
        let mut names = Vec::new();
        for (name, state) in self.clones.iter_mut() {
            if matches!(state, State::Leased { holder: h, .. } if h == holder) {
                *state = State::Recycling;
                names.push(name.clone());
            }
        }
        names
    }

    /// Leases older than the expiry, taken back (to be dropped).
    pub fn expire(&mut self, now: Instant) -> Vec<Grant<H>> {
        let Some(expiry) = self.lease_expiry else {
            return Vec::new();
        };
        let mut expired = Vec::new();
        for (name, state) in self.clones.iter_mut() {
            if let State::Leased { holder, since } = state {
                if now.saturating_duration_since(*since) >= expiry {
                    expired.push(Grant {
                        holder: holder.clone(),
                        name: name.clone(),
                    });
                    *state = State::Recycling;
                }
            }
        }
        expired
    }

    /// The clones to drop now: every `Recycling` one. They stay counted
    /// (against `max`) until [`Pool::dropped`].
    pub fn to_drop(&self) -> Vec<String> {
        self.clones
            .iter()
            .filter(|(_, s)| matches!(s, State::Recycling))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A clone named by [`Pool::to_drop`] is gone from the server.
    pub fn dropped(&mut self, name: &str) {
        if matches!(self.clones.get(name), Some(State::Recycling)) {
            self.clones.remove(name);
        }
    }

    /// [`Pool::drain`], and the leases end too: every clone is to be dropped
    /// (a template discarded, a service shutting down).
    pub fn drain_all(&mut self) {
        self.drain();
        for state in self.clones.values_mut() {
            if matches!(state, State::Leased { .. }) {
                *state = State::Recycling;
            }
        }
    }

    /// The end: nothing more is made or handed out; the ready clones are to
    /// be dropped, and so will each one still in the making once made.
    pub fn drain(&mut self) {
        self.drained = true;
        self.waiting.clear();
        for state in self.clones.values_mut() {
            if matches!(state, State::Ready) {
                *state = State::Recycling;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name(n: usize) -> String {
        format!("fresh_{n}")
    }

    #[test]
    fn clones_are_made_ahead_handed_out_once_and_recycled() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(2, 3);
        assert_eq!(pool.to_make(name), ["fresh_0", "fresh_1"]);
        assert!(pool.to_make(name).is_empty(), "two are in the making");
        assert_eq!(pool.acquire(7, now), None, "nothing ready yet");
        // A waiter raises what is wanted, within the maximum.
        assert_eq!(pool.to_make(name), ["fresh_2"]);
        assert!(pool.to_make(name).is_empty(), "at the maximum");
        assert_eq!(
            pool.made("fresh_1", true),
            [Grant {
                holder: 7,
                name: "fresh_1".into()
            }]
        );
        assert_eq!(pool.acquire(8, now), None);
        assert!(pool.made("fresh_0", false).is_empty(), "failed: gone");
        assert_eq!(pool.state("fresh_0"), None);
        assert_eq!(pool.made("fresh_2", true)[0].holder, 8);
        assert!(pool.release("fresh_1"));
        assert!(!pool.release("fresh_1"), "released once");
        assert_eq!(pool.to_drop(), ["fresh_1"]);
        // A recycling clone still counts against the maximum until dropped.
        assert_eq!(pool.to_make(name), ["fresh_3"]);
        assert!(pool.to_make(name).is_empty());
        pool.dropped("fresh_1");
        assert_eq!(pool.to_make(name), ["fresh_4"]);
        assert_eq!(pool.counts(), (2, 0, 1, 0));
    }

    #[test]
    fn a_clone_given_back_clean_is_handed_out_again() {
        let now = Instant::now();
        let mut pool: Pool<u32> = Pool::new(1, 1);
        pool.to_make(name);
        pool.made("fresh_0", true);
        assert_eq!(pool.acquire(1, now).as_deref(), Some("fresh_0"));
        assert_eq!(pool.acquire(2, now), None, "the only clone is out");
        let grants = pool.give_back("fresh_0", now).unwrap();
        assert_eq!(
            grants,
            [Grant {
                holder: 2,
                name: "fresh_0".into()
            }]
        );
        assert_eq!(pool.give_back("fresh_1", now), None, "never leased");
        pool.drain();
        assert_eq!(pool.give_back("fresh_0", now), Some(Vec::new()));
        assert_eq!(
            pool.to_drop(),
            ["fresh_0"],
            "given back after the drain: dropped"
        );
        let mut pool: Pool<u32> = Pool::new(1, 2);
        pool.to_make(name);
        pool.made("fresh_0", true);
        pool.acquire(1, now);
        pool.drain_all();
        assert_eq!(pool.to_drop(), ["fresh_0"], "a leased clone goes too");
    }

    #[test]
    fn a_shared_budget_sheds_and_renews() {
        let start = Instant::now();
        let mut pool: Pool<u32> = Pool::new(3, 8).with_lease_expiry(Duration::from_secs(10));
        assert_eq!(pool.to_make_within(2, name), ["fresh_0", "fresh_1"]);
        assert!(pool.to_make_within(0, name).is_empty());
        pool.made("fresh_0", true);
        pool.made("fresh_1", true);
        assert_eq!(pool.acquire(1, start).as_deref(), Some("fresh_0"));
        assert_eq!(pool.shed_ready(), 1);
        assert_eq!(pool.to_drop(), ["fresh_1"]);
        assert!(pool.renew("fresh_0", start + Duration::from_secs(8)));
        assert!(!pool.renew("fresh_1", start), "not leased");
        assert!(
            pool.expire(start + Duration::from_secs(12)).is_empty(),
            "renewed at 8s"
        );
        assert_eq!(
            pool.expire(start + Duration::from_secs(18))[0].name,
            "fresh_0"
        );
        assert_eq!(pool.len(), 2);
    }

    #[test]
    fn forgotten_holders_and_expired_leases_give_their_clones_back() {
        let start = Instant::now();
        let mut pool: Pool<&str> = Pool::new(1, 4).with_lease_expiry(Duration::from_secs(60));
        pool.to_make(name);
        pool.made("fresh_0", true);
        assert_eq!(pool.acquire("a", start).as_deref(), Some("fresh_0"));
        assert_eq!(pool.acquire("b", start), None);
        assert_eq!(pool.forget(&"b"), Vec::<String>::new());
        assert_eq!(pool.waiting(), 0);
        assert!(pool.expire(start + Duration::from_secs(59)).is_empty());
        let expired = pool.expire(start + Duration::from_secs(60));
        assert_eq!(expired[0].name, "fresh_0");
        assert_eq!(pool.state("fresh_0"), Some(&State::Recycling));
        pool.to_make(name);
        pool.made("fresh_1", true);
        pool.acquire("c", start);
        assert_eq!(pool.forget(&"c"), ["fresh_1"]);
    }

    #[test]
    fn a_drained_pool_makes_and_hands_out_nothing() {
        let now = Instant::now();
        let mut pool: Pool<u8> = Pool::new(2, 2);
        pool.to_make(name);
        pool.made("fresh_0", true);
        pool.drain();
        assert_eq!(pool.to_drop(), ["fresh_0"]);
        assert!(pool.made("fresh_1", true).is_empty());
        assert_eq!(pool.state("fresh_1"), Some(&State::Recycling));
        assert_eq!(pool.acquire(1, now), None);
        assert!(pool.to_make(name).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Step {
        Make,
        Made(usize, bool),
        Acquire(u8),
        Release(usize),
        GiveBack(usize),
        Forget(u8),
        Expire(u64),
        Drop(usize),
        Drain,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Make),
            (0..12usize, any::<bool>()).prop_map(|(i, ok)| Step::Made(i, ok)),
            (0..4u8).prop_map(Step::Acquire),
            (0..12usize).prop_map(Step::Release),
            (0..12usize).prop_map(Step::GiveBack),
            (0..4u8).prop_map(Step::Forget),
            (0..120u64).prop_map(Step::Expire),
            (0..12usize).prop_map(Step::Drop),
            Just(Step::Drain),
        ]
    }

    proptest! {
        /// Whatever happens in whatever order: never more than `max` clones,
        /// a clone is leased to one holder at a time and again only after it
        /// was given back clean (never after a release, a forget or an
        /// expiry), and a grant always names a clone that was made.
        #[test]
        fn the_pool_keeps_its_promises(target in 0..4usize, max in 1..5usize, steps in proptest::collection::vec(step(), 1..80)) {
            let start = Instant::now();
            let mut pool: Pool<u8> = Pool::new(target, max).with_lease_expiry(Duration::from_secs(60));
            // Clones leased now, and clones that may never be leased again.
            let mut held = std::collections::BTreeSet::new();
            let mut spent = std::collections::BTreeSet::new();
            let mut made_ok = std::collections::BTreeSet::new();
            let mut grants = Vec::new();
            for step in steps {
                match step {
                    Step::Make => { pool.to_make(name); }
                    Step::Made(i, ok) => {
                        let was_making = pool.state(&name(i)) == Some(&State::Making);
                        if was_making && ok { made_ok.insert(name(i)); }
                        grants.extend(pool.made(&name(i), ok));
                    }
                    Step::Acquire(h) => {
                        if let Some(n) = pool.acquire(h, start) {
                            grants.push(Grant { holder: h, name: n });
                        }
                    }
                    Step::Release(i) => {
                        if pool.release(&name(i)) {
                            held.remove(&name(i));
                            spent.insert(name(i));
                        }
                    }
                    Step::GiveBack(i) => {
                        if let Some(given) = pool.give_back(&name(i), start) {
                            held.remove(&name(i));
                            grants.extend(given);
                        }
                    }
                    Step::Forget(h) => {
                        for n in pool.forget(&h) {
                            held.remove(&n);
                            spent.insert(n);
                        }
                    }
                    Step::Expire(s) => {
                        for g in pool.expire(start + Duration::from_secs(s)) {
                            held.remove(&g.name);
                            spent.insert(g.name);
                        }
                    }
                    Step::Drop(i) => { pool.dropped(&name(i)); }
                    Step::Drain => pool.drain(),
                }
                let (making, ready, leased, recycling) = pool.counts();
                prop_assert!(making + ready + leased + recycling <= max);
                for grant in grants.drain(..) {
                    prop_assert!(made_ok.contains(&grant.name), "{} granted, never made", grant.name);
                    prop_assert!(held.insert(grant.name.clone()), "{} leased to two holders", grant.name);
                    prop_assert!(!spent.contains(&grant.name), "{} leased after it was released", grant.name);
                    let leased_to_holder = matches!(pool.state(&grant.name), Some(State::Leased { holder, .. }) if *holder == grant.holder);
                    prop_assert!(leased_to_holder);
                }
            }
        }
    }
}

//! Pairs for `nic: {target: peer}`: the collector matches the nodes that reached such a step
//! so each pair measures its two NICs against each other at line rate — no collector link in
//! the way. Pure (time is passed in), so every rule is tested over random racks and arrival
//! orders, and the agent-facing routes only call it.
//!
//! The rules:
//! - a node is in at most one pair at a time;
//! - a waiting node is paired first come, first served, with a node that was not measured
//!   yet and fits the policy (same rack, or another rack to load the uplinks);
//! - a node measured once lingers as a *helper*: a node left without an unmeasured partner
//!   (the odd one of a rack) pairs with the least-used idle helper once it has waited
//!   [`Settings::grace`] — so late and odd nodes are measured in a later round;
//! - a node nobody fits within [`Settings::pair_timeout`] times out (never a pass);
//! - a pair whose figures missed the step's thresholds is judged by the shared rule
//!   ([`kiln_protocol::verdict::pairs::blame`]): a member that missed with its only partner
//!   is retested against a third node at once; one that missed with two carries the fault
//!   and helps nobody; only a member that met them helps others;
//! - the end done first serves its partner until the partner is done too, or for
//!   [`Settings::stale_ms`] — then the partner is gone (its measurement a miss for the
//!   survivor, who is retested) and never paired again;
//! - a retest with no third node left to come is released: inconclusive, never a pass;
//! - a helper is released after [`Settings::linger`] idle, or at once when no node can still
//!   come, none waits and no pair measures (a pair that misses wants a third node).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

/// What the pairing routes keep between requests: a scheduler per (suite digest, step), and
/// where each node's bandwidth server listens.
#[derive(Default)]
pub struct Pairs {
    inner: Mutex<Kept>,
}

/// [`Pairs`]' contents.
#[derive(Default)]
pub struct Kept {
    /// The schedulers.
    pub schedulers: HashMap<(String, u32), Scheduler>,
    /// `IP:PORT` of each node's bandwidth server.
    pub addrs: HashMap<NodeId, String>,
}

impl Kept {
    /// The scheduler of `key`, made with `settings` if there is none; each numbers its pairs
    /// in a range of its own, so a pair's number names one pair of one step.
    pub fn scheduler(&mut self, key: (String, u32), settings: Settings) -> &mut Scheduler {
        let made = self.schedulers.len() as u64;
        self.schedulers.entry(key).or_insert_with(|| {
            let mut s = Scheduler::new(settings);
            s.next_pair = (made + 1) << 32 | 1;
            s
        })
    }

    /// The step (suite digest, index) whose scheduler has pair `pair` with `node` in it.
    pub fn step_of(&self, pair: u64, node: NodeId) -> Option<(String, u32)> {
        self.schedulers
            .iter()
            .find(|(_, s)| s.pair(pair).is_some_and(|(a, b)| a == node || b == node))
            .map(|(key, _)| key.clone())
    }
}

impl Pairs {
    /// The contents, locked.
    pub fn lock(&self) -> MutexGuard<'_, Kept> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A node, by its id.
pub type NodeId = i64;

/// Whom a node may pair with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// A node of its own rack (the rack's switch, at line rate).
    #[default]
    SameRack,
    /// A node of another rack (the uplinks under load).
    OtherRack,
}

/// Times, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Whom to pair with.
    pub policy: Policy,
    /// How long an unmeasured node waits for another unmeasured one before taking a helper.
    pub grace_ms: u64,
    /// How long a node may wait for any partner before it times out.
    pub pair_timeout_ms: u64,
    /// How long a measured node stays available as a helper.
    pub linger_ms: u64,
    /// How long the end of a pair done first waits for its partner to say so too.
    pub stale_ms: u64,
}

/// What a pair is for the node told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Its first measurement.
    First,
    /// Measured again, against a third node, after its pair missed.
    Retest,
    /// Measured and cleared: it loads the link for a partner's sake.
    Helper,
}

/// What a node is told when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Ask again shortly.
    Wait,
    /// Measure against `partner` now (pair `pair`); both are told the same pair.
    Pair { pair: u64, partner: NodeId },
    /// Measured, and no one needs it as a helper any more: go on with the suite.
    Released,
    /// No partner fits within the step's `pair_timeout`.
    TimedOut,
}

#[derive(Debug, Clone)]
struct Member {
    rack: Option<String>,
    since_ms: u64,
    measured: bool,
    pairs: u32,
    in_pair: Option<u64>,
    released: bool,
    /// Partners it must not be paired with again (a retest wants a third node).
    exclude: Vec<NodeId>,
    /// Each pair it finished: the partner, and whether its own figures met the thresholds.
    results: Vec<(NodeId, bool)>,
}

impl Member {
    /// What its measurements prove, by the rule both sides share.
    fn standing(&self) -> kiln_protocol::verdict::pairs::Blame {
        let measured: Vec<kiln_protocol::verdict::pairs::Measured> = self
            .results
            .iter()
            .map(|(partner, met)| kiln_protocol::verdict::pairs::Measured {
                partner: partner.to_string(),
                met: *met,
            })
            .collect();
        kiln_protocol::verdict::pairs::blame(&measured)
    }

    fn cleared(&self) -> bool {
        self.results.iter().any(|(_, met)| *met)
    }
}

/// The pairs of one step of one suite.
#[derive(Debug, Clone)]
pub struct Scheduler {
    settings: Settings,
    members: BTreeMap<NodeId, Member>,
    /// Arrival order of nodes not yet measured (first come, first served).
    queue: Vec<NodeId>,
    pairs: HashMap<u64, (NodeId, NodeId)>,
    /// The end of a pair that said it is done while the other still measures: whether its
    /// figures met the thresholds, and when.
    done_first: HashMap<u64, (NodeId, bool, u64)>,
    next_pair: u64,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(settings: Settings) -> Scheduler {
        Scheduler {
            settings,
            members: BTreeMap::new(),
            queue: Vec::new(),
            pairs: HashMap::new(),
            done_first: HashMap::new(),
            next_pair: 1,
        }
    }

    fn fits(&self, a: (NodeId, &Member), b: (NodeId, &Member)) -> bool {
        let rack = match self.settings.policy {
            Policy::SameRack => a.1.rack == b.1.rack,
            Policy::OtherRack => a.1.rack != b.1.rack,
        };
        rack && !a.1.exclude.contains(&b.0) && !b.1.exclude.contains(&a.0)
    }

    /// `node`'s pair missed its thresholds: it is measured again, against a third node —
    /// never `partner` again, and a helper at once rather than after the grace.
    pub fn retest(&mut self, node: NodeId, partner: NodeId, now_ms: u64) {
        let Some(m) = self.members.get_mut(&node) else {
            return;
        };
        if m.in_pair.is_some() {
            return;
        }
        m.exclude.push(partner);
        m.measured = false;
        m.released = false;
        m.since_ms = now_ms;
        if !self.queue.contains(&node) {
            self.queue.push(node);
        }
    }

    /// Node `node` of `rack` asks at `now_ms` (its first ask enters it); what to do. Helpers
    /// linger for late nodes.
    pub fn ask(&mut self, node: NodeId, rack: Option<&str>, now_ms: u64) -> Answer {
        self.ask_with(node, rack, now_ms, true)
    }

    /// Whether `node` has asked already.
    pub fn knows(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// [`Scheduler::ask`], told whether more nodes may still come: when none can and nobody
    /// unmeasured waits, a measured node is released at once instead of lingering.
    pub fn ask_with(
        &mut self,
        node: NodeId,
        rack: Option<&str>,
        now_ms: u64,
        more_coming: bool,
    ) -> Answer {
        if let Some(pair) = self.members.get(&node).and_then(|m| m.in_pair) {
            if let Some(&(first, met, at)) = self.done_first.get(&pair) {
                if first == node {
                    // Done on this side: its server stays up until the partner is done too.
                    if now_ms.saturating_sub(at) < self.settings.stale_ms {
                        return Answer::Wait;
                    }
                    self.done_first.remove(&pair);
                    let (a, b) = self.pairs[&pair];
                    let gone = if a == node { b } else { a };
                    self.close(pair, &[(node, gone, met)], Some(gone), now_ms);
                }
            }
        }
        // Nobody waits, and no pair measures that may miss and want a third node.
        let nobody_waits = self.queue.iter().all(|id| *id == node) && self.pairs.is_empty();
        let me = self.members.entry(node).or_insert_with(|| Member {
            rack: rack.map(str::to_owned),
            since_ms: now_ms,
            measured: false,
            pairs: 0,
            in_pair: None,
            released: false,
            exclude: Vec::new(),
            results: Vec::new(),
        });
        if let Some(pair) = me.in_pair {
            let (a, b) = self.pairs[&pair];
            return Answer::Pair {
                pair,
                partner: if a == node { b } else { a },
            };
        }
        if me.released {
            return Answer::Released;
        }
        if me.measured {
            if (!more_coming && nobody_waits)
                || now_ms.saturating_sub(me.since_ms) >= self.settings.linger_ms
            {
                me.released = true;
                return Answer::Released;
            }
            return Answer::Wait;
        }
        if !self.queue.contains(&node) {
            self.queue.push(node);
        }
        let waited = now_ms.saturating_sub(me.since_ms);
        let me = me.clone();
        // Another unmeasured node, first come first served.
        let unmeasured = self.queue.iter().copied().find(|&other| {
            other != node
                && self.members[&other].in_pair.is_none()
                && self.fits((node, &me), (other, &self.members[&other]))
        });
        // Else, after the grace, the least-used idle helper.
        let helper = || {
            self.members
                .iter()
                .filter(|(id, m)| {
                    **id != node
                        && m.measured
                        && m.cleared()
                        && !m.released
                        && m.in_pair.is_none()
                        && self.fits((node, &me), (**id, m))
                })
                .min_by_key(|(id, m)| (m.pairs, **id))
                .map(|(id, _)| *id)
        };
        // A retest takes a helper at once: it wants a third node, not another newcomer.
        let retesting = !me.exclude.is_empty();
        let partner = unmeasured.or_else(|| {
            (retesting || waited >= self.settings.grace_ms)
                .then(helper)
                .flatten()
        });
        match partner {
            Some(partner) => {
                let pair = self.next_pair;
                self.next_pair += 1;
                self.pairs.insert(pair, (node, partner));
                for id in [node, partner] {
                    let m = self.members.get_mut(&id).expect("a member");
                    m.in_pair = Some(pair);
                    m.pairs += 1;
                }
                self.queue.retain(|id| *id != node && *id != partner);
                Answer::Pair { pair, partner }
            }
            None if waited >= self.settings.pair_timeout_ms => {
                self.queue.retain(|id| *id != node);
                let m = self.members.get_mut(&node).expect("a member");
                m.released = true;
                Answer::TimedOut
            }
            // A retest nobody can still answer: inconclusive, and waiting changes nothing.
            None if retesting
                && !more_coming
                && !self.members.iter().any(|(id, m)| {
                    *id != node && !m.released && self.fits((node, &me), (*id, m))
                }) =>
            {
                self.queue.retain(|id| *id != node);
                let m = self.members.get_mut(&node).expect("a member");
                m.released = true;
                Answer::Released
            }
            None => Answer::Wait,
        }
    }

    /// Pair `pair` ended with `results` (node, partner, whether the node's figures met the
    /// thresholds); `gone` is an end that never said it was done. Each end is judged by its
    /// measurements so far: a member that only missed with one partner is retested, one that
    /// missed with two goes on carrying the fault, a cleared one lingers as a helper.
    fn close(
        &mut self,
        pair: u64,
        results: &[(NodeId, NodeId, bool)],
        gone: Option<NodeId>,
        now_ms: u64,
    ) {
        use kiln_protocol::verdict::pairs::Blame;
        self.pairs.remove(&pair);
        if let Some(m) = gone.and_then(|id| self.members.get_mut(&id)) {
            m.in_pair = None;
            m.released = true;
        }
        for &(node, partner, met) in results {
            let Some(m) = self.members.get_mut(&node) else {
                continue;
            };
            m.in_pair = None;
            m.measured = true;
            m.since_ms = now_ms;
            m.results.push((partner, met));
            match m.standing() {
                Blame::Inconclusive { .. } => self.retest(node, partner, now_ms),
                Blame::Fault { .. } => m.released = true,
                Blame::Cleared | Blame::Unmeasured => {}
            }
        }
    }

    /// `node` of pair `pair` measured at `now_ms`, its figures meeting the step's thresholds
    /// or not (`met`). Once both ends have said so the pair is judged ([`Scheduler::close`]);
    /// until then the one done waits, serving its partner. A second word from the same end
    /// changes nothing. False when `node` is in no such pair.
    pub fn finished(&mut self, pair: u64, node: NodeId, met: bool, now_ms: u64) -> bool {
        let Some(&(a, b)) = self.pairs.get(&pair) else {
            return false;
        };
        if node != a && node != b {
            return false;
        }
        let (first, first_met) = match self.done_first.get(&pair) {
            Some(&(first, first_met, _)) if first != node => (first, first_met),
            Some(_) => return true,
            None => {
                self.done_first.insert(pair, (node, met, now_ms));
                return true;
            }
        };
        self.done_first.remove(&pair);
        self.close(
            pair,
            &[(first, node, first_met), (node, first, met)],
            None,
            now_ms,
        );
        true
    }

    /// What the pair `node` is in now is for it.
    pub fn role(&self, node: NodeId) -> Role {
        match self.members.get(&node) {
            Some(m) if m.cleared() => Role::Helper,
            Some(m) if !m.results.is_empty() => Role::Retest,
            _ => Role::First,
        }
    }

    /// The nodes of pair `pair`, while it measures.
    pub fn pair(&self, pair: u64) -> Option<(NodeId, NodeId)> {
        self.pairs.get(&pair).copied()
    }

    /// How long `node` has waited since it came or was last measured.
    pub fn waited_ms(&self, node: NodeId, now_ms: u64) -> u64 {
        self.members
            .get(&node)
            .map_or(0, |m| now_ms.saturating_sub(m.since_ms))
    }

    /// How many pairs `node` took part in.
    pub fn pairs_of(&self, node: NodeId) -> u32 {
        self.members.get(&node).map_or(0, |m| m.pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings(policy: Policy) -> Settings {
        Settings {
            policy,
            grace_ms: 2_000,
            pair_timeout_ms: 600_000,
            // As long as anyone may wait: a late node always finds a helper.
            linger_ms: 600_000,
            stale_ms: 120_000,
        }
    }

    #[test]
    fn two_nodes_of_a_rack_pair_and_an_odd_third_takes_a_helper_after_the_grace() {
        let mut s = Scheduler::new(settings(Policy::SameRack));
        assert_eq!(s.ask(1, Some("R1"), 0), Answer::Wait);
        let Answer::Pair { pair, partner } = s.ask(2, Some("R1"), 10) else {
            panic!()
        };
        assert_eq!(partner, 1);
        assert_eq!(s.ask(1, Some("R1"), 20), Answer::Pair { pair, partner: 2 });
        // The third waits for an unmeasured partner; the first two are busy.
        assert_eq!(s.ask(3, Some("R1"), 30), Answer::Wait);
        assert!(s.finished(pair, 1, true, 900));
        // Node 1 is done; node 2 still measures against it: node 1 waits, serving.
        assert_eq!(s.ask(1, Some("R1"), 950), Answer::Wait);
        assert!(!s.finished(pair, 3, true, 960), "not its pair");
        assert!(s.finished(pair, 2, true, 1_000));
        assert_eq!(
            s.ask(3, Some("R1"), 1_500),
            Answer::Wait,
            "still in its grace"
        );
        let Answer::Pair { partner, .. } = s.ask(3, Some("R1"), 2_100) else {
            panic!()
        };
        assert_eq!(partner, 1, "the least-used helper, lowest id first");
        // A node of another rack never pairs with R1 under same-rack.
        assert_eq!(s.ask(9, Some("R2"), 0), Answer::Wait);
        assert_eq!(s.ask(9, Some("R2"), 700_000), Answer::TimedOut);
        assert_eq!(s.ask(9, Some("R2"), 700_001), Answer::Released);
        // The idle helper is released after its linger.
        assert_eq!(s.ask(2, Some("R1"), 1_000 + 599_000), Answer::Wait);
        assert_eq!(s.ask(2, Some("R1"), 1_000 + 600_000), Answer::Released);
    }

    /// Runs a whole step: nodes of `racks` arrive at `arrivals` (ms), each pair measures for
    /// `measure_ms`, every node asks every 500 ms. Checks no node is ever in two pairs; returns
    /// each node's answer at the end and the most pairs any node was in.
    fn simulate(
        policy: Policy,
        racks: &[usize],
        arrivals: &[u64],
        measure_ms: u64,
    ) -> (Vec<Answer>, u32, u64) {
        simulate_with(policy, racks, arrivals, measure_ms, &|_, _| false)
    }

    /// [`simulate`], where a first pair of `a` and `b` for which `missed(a, b)` holds missed
    /// its thresholds: both are retested, each against a third node.
    fn simulate_with(
        policy: Policy,
        racks: &[usize],
        arrivals: &[u64],
        measure_ms: u64,
        missed: &dyn Fn(NodeId, NodeId) -> bool,
    ) -> (Vec<Answer>, u32, u64) {
        let mut s = Scheduler::new(settings(policy));
        let n = racks.len();
        let mut last: Vec<Option<Answer>> = vec![None; n];
        let mut running: Vec<(u64, u64)> = Vec::new(); // (pair, ends)
        let mut t = 0u64;
        let mut rounds_end = 0u64;
        while t < 3_600_000 {
            for (pair, end) in running.clone() {
                if end <= t {
                    let (a, b) = s.pair(pair).unwrap();
                    let met = !(s.pairs_of(a) == 1 && s.pairs_of(b) == 1 && missed(a, b));
                    s.finished(pair, a, met, t);
                    s.finished(pair, b, met, t);
                    running.retain(|(p, _)| *p != pair);
                }
            }
            let mut busy: HashMap<NodeId, u64> = HashMap::new();
            for i in 0..n {
                if arrivals[i] > t || matches!(last[i], Some(Answer::Released | Answer::TimedOut)) {
                    continue;
                }
                let rack = format!("R{}", racks[i]);
                let a = s.ask(i as NodeId, Some(&rack), t);
                if let Answer::Pair { pair, partner } = &a {
                    // Never two pairs at once, and both ends agree.
                    assert_eq!(
                        s.pair(*pair).map(|(x, y)| x == *partner || y == *partner),
                        Some(true)
                    );
                    if let Some(other) = busy.insert(i as NodeId, *pair) {
                        assert_eq!(other, *pair, "node {i} in two pairs");
                    }
                    if !running.iter().any(|(p, _)| p == pair) {
                        running.push((*pair, t + measure_ms));
                        rounds_end = rounds_end.max(t + measure_ms);
                    }
                }
                last[i] = Some(a);
            }
            // Every pair measuring now is disjoint from every other.
            let mut seen = std::collections::HashSet::new();
            for (a, b) in s.pairs.values() {
                assert!(
                    a != b && seen.insert(*a) && seen.insert(*b),
                    "a node in two pairs at once"
                );
            }
            if last
                .iter()
                .all(|a| matches!(a, Some(Answer::Released | Answer::TimedOut)))
            {
                break;
            }
            t += 500;
        }
        let most = (0..n).map(|i| s.pairs_of(i as NodeId)).max().unwrap_or(0);
        (
            last.into_iter()
                .map(|a| a.unwrap_or(Answer::Wait))
                .collect(),
            most,
            rounds_end,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any rack layout (2 to 1,000 nodes, racks of 2 or more), any order, all at once:
        /// every node measured, no node in more than 3 pairs, done within 3 rounds.
        #[test]
        fn everyone_is_measured_within_three_rounds(
            sizes in proptest::collection::vec(2usize..40, 1..25),
            order in any::<u64>(),
        ) {
            let mut racks: Vec<usize> = sizes.iter().enumerate().flat_map(|(r, k)| std::iter::repeat_n(r, *k)).collect();
            racks.truncate(1_000);
            // A random arrival order within the first second.
            let arrivals: Vec<u64> = (0..racks.len()).map(|i| (order.wrapping_mul(i as u64 + 1) >> 7) % 1_000).collect();
            let measure = 30_000;
            let (answers, most, end) = simulate(Policy::SameRack, &racks, &arrivals, measure);
            prop_assert!(answers.iter().all(|a| *a == Answer::Released), "{answers:?}");
            prop_assert!(most <= 3, "a node in {most} pairs");
            // Three measurement rounds, each with its grace and the polling step.
            prop_assert!(end <= 1_000 + 3 * (measure + 2_000 + 1_000), "ended at {end}");
        }

        /// Pairs that miss are retested each against a third node (racks of 3 or more): still
        /// every node measured, at most 3 pairs each, within three rounds.
        #[test]
        fn retests_fit_in_the_three_rounds(
            sizes in proptest::collection::vec(3usize..40, 1..25),
            order in any::<u64>(),
            every in 2i64..9,
        ) {
            let racks: Vec<usize> = sizes.iter().enumerate().flat_map(|(r, k)| std::iter::repeat_n(r, *k)).collect();
            let arrivals: Vec<u64> = (0..racks.len()).map(|i| (order.wrapping_mul(i as u64 + 1) >> 7) % 1_000).collect();
            let measure = 30_000;
            let (answers, most, end) = simulate_with(Policy::SameRack, &racks, &arrivals, measure, &|a, b| (a + b) % every == 0);
            prop_assert!(answers.iter().all(|a| *a == Answer::Released), "{answers:?}");
            prop_assert!(most <= 3, "a node in {most} pairs");
            prop_assert!(end <= 1_000 + 3 * (measure + 2_000 + 1_000), "ended at {end}");
        }

        /// Arrivals spread over ten minutes, other-rack policy: every node measured, none in
        /// two pairs at once (checked as it runs), none left waiting.
        #[test]
        fn spread_arrivals_across_racks_are_all_measured(
            racks in proptest::collection::vec(0usize..6, 2..300),
            seed in any::<u64>(),
        ) {
            prop_assume!(racks.iter().any(|r| *r != racks[0]));
            let arrivals: Vec<u64> = (0..racks.len()).map(|i| seed.wrapping_mul(2 * i as u64 + 1).rotate_left(17) % 600_000).collect();
            let (answers, _, _) = simulate(Policy::OtherRack, &racks, &arrivals, 20_000);
            prop_assert!(answers.iter().all(|a| *a == Answer::Released), "{answers:?}");
        }
    }

    #[test]
    fn a_pair_that_missed_is_retested_each_against_a_third_node() {
        let mut s = Scheduler::new(settings(Policy::SameRack));
        let pair_of = |s: &mut Scheduler, a: NodeId, b: NodeId, t: u64| {
            s.ask(a, None, t);
            let Answer::Pair { pair, partner } = s.ask(b, None, t) else {
                panic!("{a} and {b} were not paired")
            };
            assert_eq!(partner, a);
            for n in [a, b] {
                s.finished(pair, n, a != 1, t + 10);
            }
        };
        pair_of(&mut s, 3, 4, 0);
        // 1-2 missed: each is measured again, never against the other, and at once.
        pair_of(&mut s, 1, 2, 100);
        assert_eq!(s.role(1), Role::Retest);
        assert_eq!(s.role(3), Role::Helper);
        let Answer::Pair { partner: a, .. } = s.ask(1, None, 110) else {
            panic!()
        };
        let Answer::Pair { partner: b, .. } = s.ask(2, None, 110) else {
            panic!()
        };
        assert!(
            [3, 4].contains(&a) && [3, 4].contains(&b) && a != b,
            "{a} {b}"
        );
        assert_eq!(s.pairs_of(1), 2);
        // A node whose only possible partner is excluded waits while others may come, then
        // times out; when none can come it goes at once.
        let mut s = Scheduler::new(settings(Policy::SameRack));
        pair_of(&mut s, 1, 2, 0);
        assert_eq!(s.ask(1, None, 200), Answer::Wait);
        assert_eq!(s.ask_with(2, None, 300, false), Answer::Released);
        assert_eq!(s.ask(1, None, 700_000), Answer::TimedOut);
    }

    /// Node 2 is slow: it misses with 1, and with 3 on its retest; 1 meets with 4.
    #[test]
    fn the_slow_node_misses_twice_and_carries_it_and_its_partner_is_cleared() {
        let mut s = Scheduler::new(settings(Policy::SameRack));
        let paired = |s: &mut Scheduler, a: NodeId, b: NodeId, t: u64| {
            let Answer::Pair { pair, partner } = s.ask(b, None, t) else {
                panic!("{b} was not paired")
            };
            assert_eq!(partner, a, "{b} paired with {partner}, not {a}");
            assert_eq!(s.ask(a, None, t), Answer::Pair { pair, partner: b });
            pair
        };
        s.ask(3, None, 0);
        let p34 = paired(&mut s, 3, 4, 0);
        s.ask(1, None, 0);
        let p12 = paired(&mut s, 1, 2, 0);
        for (pair, node, met) in [
            (p34, 3, true),
            (p34, 4, true),
            (p12, 1, false),
            (p12, 2, false),
        ] {
            assert!(s.finished(pair, node, met, 1_000));
        }
        // A retest takes a helper at once, the least-used with the lowest id.
        let p13 = paired(&mut s, 3, 1, 1_100);
        let p24 = paired(&mut s, 4, 2, 1_100);
        assert_eq!(s.role(1), Role::Retest);
        for (pair, node, met) in [
            (p13, 1, true),
            (p13, 3, true),
            (p24, 2, false),
            (p24, 4, false),
        ] {
            assert!(s.finished(pair, node, met, 2_000));
        }
        use kiln_protocol::verdict::pairs::Blame;
        assert_eq!(s.members[&1].standing(), Blame::Cleared);
        assert_eq!(
            s.members[&2].standing(),
            Blame::Fault {
                partners: vec!["1".into(), "4".into()]
            }
        );
        // 4 missed with the slow node but met with 3 before: cleared, and never retested.
        assert_eq!(s.members[&4].standing(), Blame::Cleared);
        assert_eq!(s.ask_with(2, None, 2_100, false), Answer::Released);
        // The faulty node helps nobody: a late node of the rack gets a cleared helper.
        s.ask(5, None, 2_200);
        let Answer::Pair { partner, .. } = s.ask(5, None, 4_300) else {
            panic!()
        };
        assert_ne!(partner, 2);
    }

    #[test]
    fn a_partner_that_never_says_it_is_done_is_gone_after_the_stale_time() {
        let mut s = Scheduler::new(settings(Policy::SameRack));
        for n in [1, 2, 3, 4] {
            s.ask(n, None, 0);
        }
        for n in [1, 2, 3, 4] {
            s.ask(n, None, 0);
        }
        let (pair, partner) = match s.ask(1, None, 0) {
            Answer::Pair { pair, partner } => (pair, partner),
            other => panic!("{other:?}"),
        };
        // 1 broke off (its partner died) and says so; the partner never does.
        assert!(s.finished(pair, 1, false, 1_000));
        assert_eq!(
            s.ask(1, None, 100_000),
            Answer::Wait,
            "serving, within the stale time"
        );
        // Past it, the partner is gone and 1 is retested against a third node.
        let helper_pair = [2, 3, 4]
            .into_iter()
            .filter(|n| *n != partner)
            .find_map(|n| match s.ask(n, None, 1_000) {
                Answer::Pair { pair, .. } => Some(pair),
                _ => None,
            })
            .expect("the other pair");
        let (x, y) = s.pair(helper_pair).unwrap();
        s.finished(helper_pair, x, true, 1_000);
        s.finished(helper_pair, y, true, 1_000);
        let Answer::Pair { partner: third, .. } = s.ask(1, None, 121_001) else {
            panic!("not retested")
        };
        assert!(third != partner && third != 1);
        assert!(
            !s.finished(pair, partner, true, 121_002),
            "the gone partner's pair is over"
        );
        assert_eq!(s.ask(partner, None, 121_003), Answer::Released);
    }

    #[test]
    fn helpers_go_at_once_when_nobody_else_can_come() {
        let mut s = Scheduler::new(settings(Policy::SameRack));
        s.ask(1, None, 0);
        let Answer::Pair { pair, .. } = s.ask(2, None, 0) else {
            panic!()
        };
        s.finished(pair, 1, true, 100);
        s.finished(pair, 2, true, 100);
        assert_eq!(
            s.ask_with(1, None, 200, true),
            Answer::Wait,
            "another may come"
        );
        // One unmeasured node waits: the helper stays for it.
        assert_eq!(s.ask(3, None, 300), Answer::Wait);
        assert_eq!(s.ask_with(2, None, 400, false), Answer::Wait);
        let Answer::Pair { pair, partner: 1 } = s.ask(3, None, 2_400) else {
            panic!("3 took no helper")
        };
        // While 3 measures, 2 stays: if that pair misses, 3 wants a third node.
        assert_eq!(s.ask_with(2, None, 2_500, false), Answer::Wait);
        s.finished(pair, 1, true, 3_000);
        s.finished(pair, 3, true, 3_000);
        assert_eq!(s.ask_with(2, None, 3_100, false), Answer::Released);
        assert!(s.knows(3) && !s.knows(4));
    }

    #[test]
    fn a_rack_of_one_times_out_and_is_never_measured() {
        let (answers, most, _) = simulate(Policy::SameRack, &[0, 1, 1], &[0, 0, 0], 10_000);
        assert_eq!(answers[0], Answer::TimedOut);
        assert_eq!(answers[1..], [Answer::Released, Answer::Released]);
        assert_eq!(most, 1);
    }
}

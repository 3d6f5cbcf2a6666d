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

use serde::{Deserialize, Serialize};

/// A node, by its id.
pub type NodeId = i64;

/// Whom a node may pair with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Policy {
    /// A node of its own rack (the rack's switch, at line rate).
    #[default]
    SameRack,
    /// A node of another rack (the uplinks under load).
    OtherRack,
}

/// Times, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The pairs of one step of one suite. Kept in the database between requests (every
/// collector asks the same one: [`crate::store::queries::ask_pair`]), hence serializable.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

    /// An empty scheduler whose pairs are numbered in a range of `id`'s own (`id << 32` up),
    /// so that a pair's number names one pair of one step, and the step by its number.
    pub fn numbered(settings: Settings, id: i64) -> Scheduler {
        let mut s = Scheduler::new(settings);
        s.next_pair = (id as u64) << 32 | 1;
        s
    }

    /// The `id` of the scheduler [`Scheduler::numbered`] gave pair `pair`.
    pub fn id_of(pair: u64) -> i64 {
        (pair >> 32) as i64
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
        let retesting = !me.results.is_empty();
        let partner = self.partner_for(node, &me, waited);
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
            // A retest no node proven good (or still to be measured) can answer: inconclusive,
            // and waiting changes nothing.
            None if retesting
                && !more_coming
                && !self.members.iter().any(|(id, m)| {
                    *id != node
                        && !m.released
                        && (m.cleared() || m.results.is_empty())
                        && self.fits((node, &me), (*id, m))
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

    /// Whom `node` (`me`, waiting `waited` ms) pairs with now, if anyone: another node not
    /// measured yet, first come first served; after the grace, the least-used helper proven
    /// good, else a node still to be retested; for a retest, a proven helper at once.
    fn partner_for(&self, node: NodeId, me: &Member, waited: u64) -> Option<NodeId> {
        // A retest wants a node proven good, at once: never another unproven one, whose miss
        // with it would prove nothing about either.
        let retesting = !me.results.is_empty();
        let unmeasured = if retesting {
            None
        } else {
            self.queue.iter().copied().find(|&other| {
                let m = &self.members[&other];
                other != node
                    && m.results.is_empty()
                    && m.in_pair.is_none()
                    && self.fits((node, me), (other, m))
            })
        };
        // Else the least-used idle node that passes `idle`.
        let least_used = |idle: &dyn Fn(&Member) -> bool| {
            self.members
                .iter()
                .filter(|(id, m)| {
                    **id != node
                        && idle(m)
                        && !m.released
                        && m.in_pair.is_none()
                        && self.fits((node, me), (**id, m))
                })
                .min_by_key(|(id, m)| (m.pairs, **id))
                .map(|(id, _)| *id)
        };
        let helper = || least_used(&|m: &Member| m.measured && m.cleared());
        // A newcomer with no proven helper may load a node still to be retested: for that
        // node only a met result counts ([`Scheduler::close`]).
        let unproven = || least_used(&|m: &Member| !m.results.is_empty() && !m.cleared());
        unmeasured.or_else(|| {
            if retesting {
                helper()
            } else if waited >= self.settings.grace_ms {
                helper().or_else(unproven)
            } else {
                None
            }
        })
    }

    /// Pair `pair` ended with `results` (node, partner, whether the node's figures met the
    /// thresholds); `gone` is an end that never said it was done. Each end is judged by its
    /// measurements so far: a member that only missed with one partner is retested, one that
    /// missed with two goes on carrying the fault, a cleared one lingers as a helper. A miss
    /// counts for a node being retested only against a partner proven good before the pair.
    fn close(
        &mut self,
        pair: u64,
        results: &[(NodeId, NodeId, bool)],
        gone: Option<NodeId>,
        now_ms: u64,
    ) {
        use kiln_protocol::verdict::pairs::Blame;
        let proven: Vec<(NodeId, bool)> = results
            .iter()
            .map(|(_, partner, _)| {
                let ok = self.members.get(partner).is_some_and(Member::cleared);
                (*partner, ok)
            })
            .collect();
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
            let partner_proven = proven.iter().any(|(id, ok)| *id == partner && *ok);
            if !met && !m.results.is_empty() && !m.cleared() && !partner_proven {
                // It loaded the link for a newcomer's sake: still to be retested.
                if !self.queue.contains(&node) {
                    self.queue.push(node);
                }
                continue;
            }
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

    /// What the pair `node` is in now is for it: a node being retested against a partner
    /// not proven good only helps it (its own miss there would not count).
    pub fn role(&self, node: NodeId) -> Role {
        match self.members.get(&node) {
            Some(m) if m.cleared() => Role::Helper,
            Some(m) if !m.results.is_empty() => {
                let partner = m
                    .in_pair
                    .and_then(|p| self.pairs.get(&p))
                    .map(|(a, b)| if *a == node { *b } else { *a });
                match partner.and_then(|p| self.members.get(&p)) {
                    Some(p) if !p.cleared() => Role::Helper,
                    _ => Role::Retest,
                }
            }
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
mod tests;

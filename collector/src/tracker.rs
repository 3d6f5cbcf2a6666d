//! The collector as the tracker of peer-assisted boot: it knows every node in its Linux stage
//! that holds (part of) a payload, where it sits and what it holds, and grants each fetch a
//! source — a peer of the same rack first, then one of another rack, the collector last —
//! counting every peer's transfers (at most [`Settings::per_peer`] at once) and the
//! collector's. A peer that is failing, or that served a piece which failed its hash, is
//! never granted again. Pure: no I/O and no clock, so the collector's routes and the
//! boot-storm simulator (`benches/boot_storm.rs`) drive the same code.

use std::collections::HashMap;

use kiln_protocol::payload::Pieces;

/// A node, by its id in the collector's store.
pub type NodeId = i64;

/// Where a piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// The collector itself (the origin; always there, counted too).
    Collector,
    /// A node that holds the piece.
    Peer(NodeId),
}

/// One fetch the tracker allowed: which piece, from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The piece.
    pub piece: usize,
    /// Its source.
    pub source: Source,
}

/// How a granted fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The piece arrived and matched its hash: the node holds it now.
    Verified,
    /// The transfer broke off (the source went away, a deadline passed): try again; a peer
    /// that breaks off [`STRIKES`] times is not granted again.
    Broken,
    /// The bytes failed the piece's hash: the source is never granted again.
    Corrupt,
}

/// Broken transfers after which a peer is never granted again.
pub const STRIKES: u32 = 3;

/// How generous the tracker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Transfers one peer serves at once (0: no peer serves; everything from the collector).
    pub per_peer: usize,
    /// Transfers the collector serves at once.
    pub collector: usize,
    /// Pieces one node fetches at once.
    pub per_node: usize,
    /// Nodes of other racks looked at for one grant, when none of the node's rack can help.
    pub other_racks: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            per_peer: 4,
            collector: 16,
            per_node: 4,
            other_racks: 16,
        }
    }
}

/// What the tracker refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The node is in no swarm.
    #[error("node {0} is fetching no payload")]
    Unknown(NodeId),
    /// The grant is not one this node holds.
    #[error("node {node} holds no grant for piece {piece}")]
    NotGranted {
        /// The node.
        node: NodeId,
        /// The piece.
        piece: usize,
    },
}

struct Member {
    rack: usize,
    have: Pieces,
    pending: Pieces,
    fetching: usize,
    /// The grants it holds: piece, source, and when (the tracker's clock) it was given.
    granted: Vec<(usize, Source, u64)>,
    serving: usize,
    excluded: bool,
    /// Transfers from it that broke off or stalled.
    strikes: u32,
}

/// Every node fetching or serving one payload.
struct Swarm {
    count: usize,
    members: HashMap<NodeId, Member>,
    /// Members by rack, and every member, for choosing peers.
    racks: Vec<Vec<NodeId>>,
    rack_names: HashMap<String, usize>,
    all: Vec<NodeId>,
    /// How many members hold each piece (rarest first).
    holders: Vec<u32>,
    collector_serving: usize,
    /// Every piece: what the collector holds.
    full: Pieces,
    /// Pieces each source served: for the report.
    served: HashMap<Source, u64>,
}

/// The tracker: one swarm per payload.
pub struct Tracker {
    settings: Settings,
    swarms: HashMap<String, Swarm>,
    node_swarm: HashMap<NodeId, String>,
    seed: u64,
    /// The time, in ms, as [`Tracker::expire`] last said it.
    now_ms: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(settings: Settings) -> Tracker {
        Tracker {
            settings,
            swarms: HashMap::new(),
            node_swarm: HashMap::new(),
            seed: 0x9e37_79b9_7f4a_7c15,
            now_ms: 0,
        }
    }

    /// `node` (in rack `rack`, when known) fetches payload `image` of `pieces` pieces; with
    /// `have`, it holds those already (a node that booted with the whole payload serves it).
    pub fn join(
        &mut self,
        node: NodeId,
        image: &str,
        pieces: usize,
        rack: Option<&str>,
        have: Option<Pieces>,
    ) {
        self.leave(node);
        let swarm = self
            .swarms
            .entry(image.to_owned())
            .or_insert_with(|| Swarm {
                count: pieces,
                members: HashMap::new(),
                racks: Vec::new(),
                rack_names: HashMap::new(),
                all: Vec::new(),
                holders: vec![0; pieces],
                collector_serving: 0,
                full: Pieces::all(pieces),
                served: HashMap::new(),
            });
        // A node without a rack is a rack of its own: nobody's neighbour.
        let key = rack.map_or_else(|| format!("\0node {node}"), str::to_owned);
        let next = swarm.racks.len();
        let rack = *swarm.rack_names.entry(key).or_insert(next);
        if rack == swarm.racks.len() {
            swarm.racks.push(Vec::new());
        }
        let have = have
            .filter(|h| h.check(swarm.count).is_ok())
            .unwrap_or_else(|| Pieces::none(swarm.count));
        for (i, holders) in swarm.holders.iter_mut().enumerate() {
            if have.has(i) {
                *holders += 1;
            }
        }
        swarm.racks[rack].push(node);
        swarm.all.push(node);
        swarm.members.insert(
            node,
            Member {
                rack,
                pending: Pieces::none(swarm.count),
                have,
                fetching: 0,
                granted: Vec::new(),
                serving: 0,
                excluded: false,
                strikes: 0,
            },
        );
        self.node_swarm.insert(node, image.to_owned());
    }

    /// Whether `node` is in a swarm.
    pub fn joined(&self, node: NodeId) -> bool {
        self.node_swarm.contains_key(&node)
    }

    /// `node` is gone (its run closed): it neither fetches nor serves any more.
    pub fn leave(&mut self, node: NodeId) {
        let Some(image) = self.node_swarm.remove(&node) else {
            return;
        };
        let Some(swarm) = self.swarms.get_mut(&image) else {
            return;
        };
        if let Some(m) = swarm.members.remove(&node) {
            for (i, holders) in swarm.holders.iter_mut().enumerate() {
                if m.have.has(i) {
                    *holders = holders.saturating_sub(1);
                }
            }
            swarm.racks[m.rack].retain(|n| *n != node);
            swarm.all.retain(|n| *n != node);
        }
    }

    /// `node` is never granted as a source again (its run is failing, or it served a piece
    /// that failed its hash); it may still fetch.
    pub fn exclude(&mut self, node: NodeId) {
        if let Some(m) = self.member(node) {
            m.excluded = true;
        }
    }

    fn member(&mut self, node: NodeId) -> Option<&mut Member> {
        let image = self.node_swarm.get(&node)?;
        self.swarms.get_mut(image)?.members.get_mut(&node)
    }

    /// The next fetch for `node`: a piece it lacks and is not fetching, from a peer of its
    /// rack if one can give it, else from a peer of another rack, else from the collector;
    /// `None` when it fetches all it may at once, holds everything, or every source that
    /// could help is busy (ask again when a fetch ends).
    pub fn next(&mut self, node: NodeId) -> Result<Option<Grant>, TrackerError> {
        let settings = self.settings;
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let (seed, now_ms) = (self.seed, self.now_ms);
        let image = self
            .node_swarm
            .get(&node)
            .ok_or(TrackerError::Unknown(node))?;
        let swarm = self
            .swarms
            .get_mut(image)
            .ok_or(TrackerError::Unknown(node))?;
        let me = swarm
            .members
            .get(&node)
            .ok_or(TrackerError::Unknown(node))?;
        if me.fetching >= settings.per_node || me.have.held() + me.fetching >= swarm.count {
            return Ok(None);
        }
        let (rack, have, pending) = (me.rack, me.have.clone(), me.pending.clone());
        let rarest = |swarm: &Swarm, pieces: &mut dyn Iterator<Item = usize>| {
            pieces.min_by_key(|i| (swarm.holders[*i], (*i as u64) ^ (seed >> 7)))
        };
        let can_serve = |m: &Member| !m.excluded && m.serving < settings.per_peer;
        // The node's rack, from a rotating start so that no one neighbour serves them all;
        // then a sample of the other racks.
        let neighbours = &swarm.racks[rack];
        let start = (seed as usize) % neighbours.len().max(1);
        let all = &swarm.all;
        let others = (0..settings.other_racks).filter_map(|k| {
            let at = seed.wrapping_add(k as u64 * 0x9e37_79b9) as usize;
            all.get(at % all.len().max(1)).copied()
        });
        let candidates = neighbours[start..]
            .iter()
            .chain(&neighbours[..start])
            .copied()
            .chain(others);
        for peer in candidates {
            if peer == node {
                continue;
            }
            let Some(m) = swarm.members.get(&peer) else {
                continue;
            };
            if !can_serve(m) {
                continue;
            }
            let found = rarest(swarm, &mut m.have.could_give(&have, &pending));
            if let Some(piece) = found {
                return Ok(Some(grant(swarm, node, piece, Source::Peer(peer), now_ms)));
            }
        }
        if swarm.collector_serving >= settings.collector {
            return Ok(None);
        }
        let Some(piece) = rarest(swarm, &mut swarm.full.could_give(&have, &pending)) else {
            return Ok(None);
        };
        Ok(Some(grant(swarm, node, piece, Source::Collector, now_ms)))
    }

    /// How `node`'s granted fetch ended; `Ok(true)` once the node holds every piece.
    pub fn done(&mut self, node: NodeId, grant: Grant, how: Fetched) -> Result<bool, TrackerError> {
        let image = self
            .node_swarm
            .get(&node)
            .ok_or(TrackerError::Unknown(node))?
            .clone();
        let swarm = self
            .swarms
            .get_mut(&image)
            .ok_or(TrackerError::Unknown(node))?;
        let not_granted = TrackerError::NotGranted {
            node,
            piece: grant.piece,
        };
        let me = swarm.members.get_mut(&node).ok_or(not_granted.clone())?;
        // Only a grant it holds, from the source it was given: a node cannot blame a peer it
        // never fetched from, nor free a slot it never took.
        let Some(at) = me
            .granted
            .iter()
            .position(|(piece, source, _)| *piece == grant.piece && *source == grant.source)
        else {
            return Err(not_granted);
        };
        me.granted.swap_remove(at);
        release(me, grant.piece);
        if how == Fetched::Verified && !me.have.has(grant.piece) {
            me.have.set(grant.piece);
            swarm.holders[grant.piece] += 1;
        }
        let complete = me.have.complete();
        match grant.source {
            Source::Collector => {
                swarm.collector_serving = swarm.collector_serving.saturating_sub(1)
            }
            Source::Peer(peer) => {
                if let Some(p) = swarm.members.get_mut(&peer) {
                    p.serving = p.serving.saturating_sub(1);
                    match how {
                        Fetched::Corrupt => p.excluded = true,
                        // A peer that keeps breaking off (killed, stalled, its link gone) is
                        // dropped as a source; one failure may be the fetcher's own.
                        Fetched::Broken => {
                            p.strikes += 1;
                            p.excluded |= p.strikes >= STRIKES;
                        }
                        Fetched::Verified => {}
                    }
                }
            }
        }
        if how == Fetched::Verified {
            *swarm.served.entry(grant.source).or_default() += 1;
        }
        Ok(complete)
    }

    /// Sets the tracker's clock to `now_ms` and takes back every grant older than
    /// `lifetime_ms`: a fetcher that crashed, or never says how its fetches ended, holds no
    /// peer's slot (nor the collector's) for longer than that. Its late word is refused.
    pub fn expire(&mut self, now_ms: u64, lifetime_ms: u64) {
        self.now_ms = now_ms;
        for swarm in self.swarms.values_mut() {
            let mut freed: Vec<Source> = Vec::new();
            for m in swarm.members.values_mut() {
                let (old, kept): (Vec<_>, Vec<_>) = m
                    .granted
                    .drain(..)
                    .partition(|(_, _, at)| now_ms.saturating_sub(*at) > lifetime_ms);
                m.granted = kept;
                for (piece, source, _) in old {
                    release(m, piece);
                    freed.push(source);
                }
            }
            for source in freed {
                match source {
                    Source::Collector => {
                        swarm.collector_serving = swarm.collector_serving.saturating_sub(1)
                    }
                    Source::Peer(peer) => {
                        if let Some(p) = swarm.members.get_mut(&peer) {
                            p.serving = p.serving.saturating_sub(1);
                        }
                    }
                }
            }
        }
    }

    /// Pieces each source served in `image`'s swarm (verified ones only).
    pub fn served(&self, image: &str) -> HashMap<Source, u64> {
        self.swarms
            .get(image)
            .map(|s| s.served.clone())
            .unwrap_or_default()
    }
}

/// A grant of `piece` to `me` ended (or expired): it may be asked for again.
fn release(me: &mut Member, piece: usize) {
    me.pending.words[piece / 64] &= !(1 << (piece % 64));
    me.fetching = me.fetching.saturating_sub(1);
}

/// Records `grant` (given at `now_ms`) in the swarm's counts.
fn grant(swarm: &mut Swarm, node: NodeId, piece: usize, source: Source, now_ms: u64) -> Grant {
    if let Some(me) = swarm.members.get_mut(&node) {
        me.pending.set(piece);
        me.fetching += 1;
        me.granted.push((piece, source, now_ms));
    }
    match source {
        Source::Collector => swarm.collector_serving += 1,
        Source::Peer(peer) => {
            if let Some(p) = swarm.members.get_mut(&peer) {
                p.serving += 1;
            }
        }
    }
    Grant { piece, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "payload";

    fn tracker(per_peer: usize) -> Tracker {
        Tracker::new(Settings {
            per_peer,
            collector: 1,
            per_node: 2,
            other_racks: 4,
        })
    }

    #[test]
    fn the_collector_seeds_then_a_neighbour_serves_and_counts_hold() {
        let mut t = tracker(1);
        t.join(1, IMAGE, 4, Some("R1"), None);
        t.join(2, IMAGE, 4, Some("R1"), None);
        t.join(3, IMAGE, 4, Some("R2"), Some(Pieces::all(4)));
        // Node 3 of another rack holds everything: node 1 gets it from there, within its one
        // transfer at a time; node 2 then from the collector (one at a time too).
        let a = t.next(1).unwrap().unwrap();
        assert_eq!(a.source, Source::Peer(3));
        let b = t.next(2).unwrap().unwrap();
        assert_eq!(b.source, Source::Collector);
        assert_eq!(
            t.next(2).unwrap(),
            None,
            "the collector and node 3 are busy"
        );
        assert!(!t.done(1, a, Fetched::Verified).unwrap());
        // Node 1 now holds a piece node 2 lacks: its neighbour serves it first.
        let c = t.next(2).unwrap().unwrap();
        assert_eq!(
            c,
            Grant {
                piece: a.piece,
                source: Source::Peer(1)
            }
        );
        // A piece that fails its hash: the peer is never granted again.
        t.done(2, c, Fetched::Corrupt).unwrap();
        t.done(2, b, Fetched::Verified).unwrap();
        let d = t.next(2).unwrap().unwrap();
        assert_ne!(d.source, Source::Peer(1));
        // A grant ended twice, nodes that are not there: refused.
        t.done(2, d, Fetched::Verified).unwrap();
        assert_eq!(
            t.done(2, d, Fetched::Verified),
            Err(TrackerError::NotGranted {
                node: 2,
                piece: d.piece
            })
        );
        assert_eq!(t.next(99), Err(TrackerError::Unknown(99)));
        t.leave(3);
        assert_eq!(t.next(3), Err(TrackerError::Unknown(3)));
    }

    #[test]
    fn every_node_completes_and_a_failing_peer_serves_nobody() {
        let mut t = tracker(2);
        for n in 0..6 {
            t.join(n, IMAGE, 8, Some(if n < 3 { "R1" } else { "R2" }), None);
        }
        t.exclude(0);
        let mut done = [false; 6];
        for _ in 0..1000 {
            for n in 0..6 {
                while let Some(g) = t.next(n).unwrap() {
                    assert_ne!(g.source, Source::Peer(0), "an excluded node serves");
                    done[n as usize] |= t.done(n, g, Fetched::Verified).unwrap();
                }
            }
            if done.iter().all(|d| *d) {
                break;
            }
        }
        assert!(done.iter().all(|d| *d), "{done:?}");
        let served = t.served(IMAGE);
        let from_collector = served.get(&Source::Collector).copied().unwrap_or(0);
        assert!(from_collector < 6 * 8, "peers served some: {served:?}");
    }

    #[test]
    fn a_node_cannot_blame_a_peer_it_never_fetched_from_and_a_silent_one_loses_its_grants() {
        let mut t = tracker(1);
        t.join(1, IMAGE, 4, Some("R1"), None);
        t.join(2, IMAGE, 4, Some("R1"), None);
        t.join(3, IMAGE, 4, Some("R1"), Some(Pieces::all(4)));
        t.expire(1_000, 60_000);
        let g = t.next(1).unwrap().unwrap();
        assert_eq!(g.source, Source::Peer(3));
        // The right piece from another source (a peer it would frame, or the collector): refused,
        // and the peer stays a source.
        for source in [Source::Peer(2), Source::Collector] {
            let forged = Grant { source, ..g };
            assert_eq!(
                t.done(1, forged, Fetched::Corrupt),
                Err(TrackerError::NotGranted {
                    node: 1,
                    piece: g.piece
                })
            );
        }
        // Node 1 goes silent: peer 3's one slot stays taken until the grant's lifetime ends.
        assert_ne!(t.next(2).unwrap().unwrap().source, Source::Peer(3));
        t.expire(1_000 + 60_001, 60_000);
        // Its late word is refused, and peer 3 serves the next node that asks.
        assert_eq!(
            t.done(1, g, Fetched::Verified),
            Err(TrackerError::NotGranted {
                node: 1,
                piece: g.piece
            })
        );
        assert_eq!(t.next(2).unwrap().unwrap().source, Source::Peer(3));
    }

    #[test]
    fn a_bitfield_that_is_not_the_payloads_is_taken_as_nothing_held() {
        let mut t = tracker(1);
        let mut wrong = Pieces::none(9);
        wrong.set(8);
        t.join(1, IMAGE, 4, None, Some(wrong));
        t.join(2, IMAGE, 4, None, None);
        assert_eq!(t.next(2).unwrap().unwrap().source, Source::Collector);
    }
}

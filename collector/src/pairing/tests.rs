//! The scheduler's rules, one by one and over random racks and arrival orders.

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
    let (answers, most, end, _) = simulate_with(policy, racks, arrivals, measure_ms, &|_, _| false);
    (answers, most, end)
}

/// [`simulate`], where a first pair of `a` and `b` for which `missed(a, b)` holds missed
/// its thresholds: both are retested, each against a third node.
fn simulate_with(
    policy: Policy,
    racks: &[usize],
    arrivals: &[u64],
    measure_ms: u64,
    missed: &dyn Fn(NodeId, NodeId) -> bool,
) -> (Vec<Answer>, u32, u64, (usize, usize)) {
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
        let mut unknown = (0..n).filter(|j| !s.knows(*j as NodeId)).count();
        for i in 0..n {
            if arrivals[i] > t || matches!(last[i], Some(Answer::Released | Answer::TimedOut)) {
                continue;
            }
            let rack = format!("R{}", racks[i]);
            // Nodes that have not asked yet may still come (as the route tells it).
            let new = !s.knows(i as NodeId);
            let a = s.ask_with(i as NodeId, Some(&rack), t, unknown > usize::from(new));
            unknown -= usize::from(new);
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
    // Per rack, nodes retested (a miss among their results) and nodes proven by their first
    // pair: the rack whose retests take the most waves.
    let mut per_rack: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (id, m) in &s.members {
        let r = per_rack.entry(racks[*id as usize]).or_default();
        r.0 += usize::from(m.results.iter().any(|x| !x.1));
        r.1 += usize::from(m.results.first().is_some_and(|x| x.1));
    }
    let (retested, first_proven) = per_rack
        .into_values()
        .max_by_key(|(r, p)| retest_waves(*r, *p))
        .unwrap_or_default();
    (
        last.into_iter()
            .map(|a| a.unwrap_or(Answer::Wait))
            .collect(),
        most,
        rounds_end,
        (retested, first_proven),
    )
}

/// How many waves `retested` retests take when `proven` nodes were proven by their first
/// pair: each wave, every proven node serves one retest, and each node a retest proves serves
/// from the next wave on. With none proven, the first helper is a rack's odd node, proven in
/// the round after the first.
fn retest_waves(retested: usize, proven: usize) -> u64 {
    let (mut helpers, mut left, mut waves) = (proven.max(1), retested, 0);
    while left > 0 {
        let served = helpers.min(left);
        left -= served;
        helpers += served;
        waves += 1;
    }
    waves + u64::from(proven == 0 && retested > 0)
}

#[test]
fn retest_waves_grow_with_the_helpers_they_prove() {
    assert_eq!(retest_waves(0, 10), 0);
    assert_eq!(retest_waves(10, 10), 1);
    assert_eq!(retest_waves(20, 10), 2);
    assert_eq!(retest_waves(30, 10), 2);
    assert_eq!(retest_waves(31, 10), 3);
    // A rack whose every first pair missed: one helper, doubling each wave.
    assert_eq!(retest_waves(36, 0), 7);
    assert_eq!(retest_waves(1, 0), 2);
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

    /// Pairs that miss are retested each against a third node proven good (racks of 3 or
    /// more): still every node measured and released, none in two pairs at once; the
    /// retests add two rounds per wave the proven nodes of a rack need to serve them all
    /// (a wave may wait for the one before to prove its helpers), and one.
    #[test]
    fn retests_fit_in_the_three_rounds(
        sizes in proptest::collection::vec(3usize..40, 1..25),
        order in any::<u64>(),
        every in 2i64..9,
    ) {
        let racks: Vec<usize> = sizes.iter().enumerate().flat_map(|(r, k)| std::iter::repeat_n(r, *k)).collect();
        let arrivals: Vec<u64> = (0..racks.len()).map(|i| (order.wrapping_mul(i as u64 + 1) >> 7) % 1_000).collect();
        let measure = 30_000;
        let (answers, _, end, (retested, proven)) = simulate_with(Policy::SameRack, &racks, &arrivals, measure, &|a, b| (a + b) % every == 0);
        prop_assert!(answers.iter().all(|a| *a == Answer::Released), "{answers:?}");
        // Each wave of retests may wait for the wave before to prove its helpers; the
        // helpers grow by the nodes each wave proves.
        let rounds = 4 + 2 * retest_waves(retested, proven);
        prop_assert!(end <= 1_000 + rounds * (measure + 2_000 + 1_000), "ended at {end}, {retested} retested, {proven} proven by their first pair");
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

/// Nodes 1 and 4 are slow, in different pairs: the four retested nodes are paired only
/// with the two proven helpers, never with each other — a fine node missing with a slow
/// one being retested too would otherwise carry a fault it does not have.
#[test]
fn retests_take_only_nodes_proven_good_and_a_newcomer_cannot_blame_one() {
    let mut s = Scheduler::new(settings(Policy::SameRack));
    let pair_up = |s: &mut Scheduler, a: NodeId, b: NodeId, t: u64| {
        s.ask(a, None, t);
        match s.ask(b, None, t) {
            Answer::Pair { pair, partner } if partner == a => pair,
            other => panic!("{b}: {other:?}"),
        }
    };
    let p56 = pair_up(&mut s, 5, 6, 0);
    let p12 = pair_up(&mut s, 1, 2, 0);
    let p34 = pair_up(&mut s, 3, 4, 0);
    for (pair, a, b) in [(p56, 5, 6), (p12, 1, 2), (p34, 3, 4)] {
        let met = pair == p56;
        s.finished(pair, a, met, 100);
        s.finished(pair, b, met, 100);
    }
    let mut partners = Vec::new();
    for n in [1, 2, 3, 4] {
        match s.ask(n, None, 200) {
            Answer::Pair { partner, .. } => {
                assert!([5, 6].contains(&partner), "{n} retested with {partner}");
                partners.push((n, partner));
            }
            Answer::Wait => {}
            other => panic!("{n}: {other:?}"),
        }
    }
    assert_eq!(
        partners.len(),
        2,
        "two helpers, two retests at a time: {partners:?}"
    );
    // A newcomer with no proven helper free loads a node still to be retested after the
    // grace; its miss there counts for the newcomer, not against the retested node.
    s.ask(7, None, 300);
    let waiting: Vec<NodeId> = [1, 2, 3, 4]
        .into_iter()
        .filter(|n| !partners.iter().any(|(m, _)| m == n))
        .collect();
    let Answer::Pair { pair, partner } = s.ask(7, None, 2_400) else {
        panic!("the newcomer took nobody")
    };
    assert!(waiting.contains(&partner), "{partner}");
    assert_eq!(s.role(partner), Role::Helper);
    assert_eq!(s.role(7), Role::First);
    s.finished(pair, 7, false, 3_000);
    s.finished(pair, partner, false, 3_000);
    assert_eq!(
        s.members[&partner].results.len(),
        1,
        "the miss did not count"
    );
    assert_eq!(s.members[&7].results.len(), 1);
    assert_eq!(s.role(partner), Role::Retest);
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

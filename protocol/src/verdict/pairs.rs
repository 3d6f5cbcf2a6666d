//! Blame for a NIC measured against a peer: a pair that misses its thresholds says only that
//! one of two NICs (or the cable between) is slow. The member retested against a third node
//! and missing again carries the fault; the one that meets its thresholds with another
//! partner is cleared; a node that could be paired with only one partner is inconclusive —
//! `degraded`, never a pass and never blamed without proof.

/// One measurement of a node against a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// The partner's name.
    pub partner: String,
    /// Whether this node's figures met the step's thresholds.
    pub met: bool,
}

/// What a node's measurements against its partners prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blame {
    /// It met its thresholds with a partner: its NIC is good (a miss with another partner was
    /// that partner's).
    Cleared,
    /// It missed with two partners or more: its NIC carries the fault.
    Fault {
        /// The partners it missed with.
        partners: Vec<String>,
    },
    /// It missed with one partner and no third node was there to tell which end is slow.
    Inconclusive {
        /// The one partner.
        partner: String,
    },
    /// Never measured.
    Unmeasured,
}

impl Blame {
    /// The line reports show for it (none when cleared).
    pub fn reason(&self) -> Option<String> {
        match self {
            Blame::Cleared => None,
            Blame::Fault { partners } => Some(format!(
                "missed its thresholds with {} partners ({}): this node's NIC or cable",
                partners.len(),
                partners.join(", ")
            )),
            Blame::Inconclusive { partner } => Some(format!(
                "inconclusive: paired only with {partner}, and the pair missed its thresholds"
            )),
            Blame::Unmeasured => Some("never measured against a partner".into()),
        }
    }
}

/// Whether a node's figures against one partner met `step`'s pass thresholds on throughput:
/// measured at all (`mbps`, the slower direction), and within every pass limit on it.
pub fn met(step: &crate::PlannedStep, mbps: Option<f64>) -> bool {
    let Some(mbps) = mbps else {
        return false;
    };
    step.check
        .pass_limits()
        .iter()
        .filter(|(_, limit)| limit.metric == "mbps")
        .all(|(_, limit)| limit.holds(mbps))
}

/// A step of an inconclusive node (`note` says why) whose only faults are missed thresholds:
/// `degraded` with the note and the figures — never a pass, and never blamed without proof.
/// Any other fault, a threshold not measured, or a harness error stands.
pub fn excuse(outcome: crate::wire::Outcome, note: &str) -> crate::wire::Outcome {
    use crate::wire::Outcome;
    match outcome {
        Outcome::Fail { faults }
            if faults
                .iter()
                .all(|f| f.code.starts_with("threshold.") && !f.code.ends_with(".unmeasured")) =>
        {
            let mut reasons = vec![note.to_owned()];
            reasons.extend(faults.into_iter().map(|f| f.message));
            Outcome::Degraded { reasons }
        }
        Outcome::Pass => Outcome::Degraded {
            reasons: vec![note.to_owned()],
        },
        Outcome::Degraded { mut reasons } => {
            reasons.insert(0, note.to_owned());
            Outcome::Degraded { reasons }
        }
        other => other,
    }
}

/// What the collector stored of one `target: peer` step of a run: each pair's judgement, and
/// whether the node waited out its `pair_timeout` with no partner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The node's measurements, in order.
    pub measured: Vec<Measured>,
    /// No partner came in time.
    pub timed_out: bool,
}

/// Whether the collector's own records bear out a good outcome of a `target: peer` step
/// `step` (with `fallback`, the suite's fallback target): a pass needs a stored measurement
/// that met its thresholds (or a wait timed out into the fallback); a degraded step may also
/// be inconclusive. The line that says why not, when they do not.
pub fn unsupported(
    step: &str,
    outcome: &crate::wire::Outcome,
    stored: &Stored,
    fallback: bool,
) -> Option<String> {
    use crate::wire::Outcome;
    let degraded = matches!(outcome, Outcome::Degraded { .. });
    if !matches!(outcome, Outcome::Pass) && !degraded {
        return None;
    }
    match blame(&stored.measured) {
        Blame::Cleared => None,
        Blame::Unmeasured if stored.timed_out && fallback => None,
        Blame::Inconclusive { .. } if degraded => None,
        other => Some(format!(
            "step '{step}' reported {}, but the collector's records of its pairs say: {}",
            outcome.name(),
            other.reason().unwrap_or_default()
        )),
    }
}

/// What `measured` (in order) proves about the node.
pub fn blame(measured: &[Measured]) -> Blame {
    if measured.iter().any(|m| m.met) {
        return Blame::Cleared;
    }
    let mut partners: Vec<String> = Vec::new();
    for m in measured {
        if !partners.contains(&m.partner) {
            partners.push(m.partner.clone());
        }
    }
    match partners.len() {
        0 => Blame::Unmeasured,
        1 => Blame::Inconclusive {
            partner: partners.remove(0),
        },
        _ => Blame::Fault { partners },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(partner: &str, met: bool) -> Measured {
        Measured {
            partner: partner.into(),
            met,
        }
    }

    #[test]
    fn the_node_that_misses_with_two_partners_carries_the_fault_and_the_other_is_cleared() {
        // n2 is slow: n1 misses with n2 and meets with n3; n2 misses with n1 and with n4.
        assert_eq!(blame(&[m("n2", false), m("n3", true)]), Blame::Cleared);
        let n2 = blame(&[m("n1", false), m("n4", false)]);
        assert_eq!(
            n2,
            Blame::Fault {
                partners: vec!["n1".into(), "n4".into()]
            }
        );
        assert_eq!(
            n2.reason().unwrap(),
            "missed its thresholds with 2 partners (n1, n4): this node's NIC or cable"
        );
        assert_eq!(blame(&[m("n2", true)]), Blame::Cleared);
        assert_eq!(Blame::Cleared.reason(), None);
    }

    fn step(yaml: &str) -> crate::PlannedStep {
        let plan = crate::load("suite", yaml.as_bytes()).expect("a suite");
        plan.steps[0].clone()
    }

    #[test]
    fn a_pair_meets_the_step_only_with_a_figure_within_its_pass_limit() {
        let bounded = step(
            "suite: t\ndescription: d\nsteps:\n  - name: net\n    nic: {target: peer, min_mbps: 100}\n",
        );
        assert!(met(&bounded, Some(100.0)));
        assert!(!met(&bounded, Some(99.9)));
        assert!(
            !met(&bounded, None),
            "a measurement that broke off is a miss"
        );
        let open =
            step("suite: t\ndescription: d\nsteps:\n  - name: net\n    nic: {target: peer}\n");
        assert!(met(&open, Some(1.0)));
        assert!(!met(&open, None));
    }

    #[test]
    fn only_missed_thresholds_are_excused_and_never_into_a_pass() {
        use crate::wire::{Fault, Outcome};
        let missed = Outcome::Fail {
            faults: vec![Fault::new(
                "threshold.min_mbps",
                "mbps 40 Mb/s is below the minimum 100 (min_mbps)",
            )],
        };
        let Outcome::Degraded { reasons } = excuse(missed, "inconclusive: paired only with n2")
        else {
            panic!("a missed threshold of an inconclusive node degrades")
        };
        assert_eq!(reasons[0], "inconclusive: paired only with n2");
        assert!(reasons[1].contains("below the minimum"));
        for stands in [
            Outcome::Fail {
                faults: vec![Fault::new("nic.link_down", "eth0 has no link")],
            },
            Outcome::Fail {
                faults: vec![Fault::new("threshold.min_mbps.unmeasured", "not measured")],
            },
            Outcome::Error {
                message: "broken".into(),
            },
        ] {
            assert_eq!(excuse(stands.clone(), "inconclusive"), stands);
        }
        assert!(matches!(
            excuse(Outcome::Pass, "x"),
            Outcome::Degraded { .. }
        ));
    }

    #[test]
    fn a_good_step_must_be_borne_out_by_the_stored_pairs() {
        use crate::wire::Outcome;
        let pass = Outcome::Pass;
        let degraded = Outcome::Degraded {
            reasons: vec!["inconclusive".into()],
        };
        let stored = |measured: Vec<Measured>, timed_out| Stored {
            measured,
            timed_out,
        };
        assert_eq!(
            unsupported("net", &pass, &stored(vec![m("n2", true)], false), false),
            None
        );
        let nothing = unsupported("net", &pass, &stored(vec![], false), false).unwrap();
        assert_eq!(
            nothing,
            "step 'net' reported pass, but the collector's records of its pairs say: never measured against a partner"
        );
        assert_eq!(
            unsupported("net", &pass, &stored(vec![], true), true),
            None,
            "the fallback"
        );
        assert!(unsupported("net", &pass, &stored(vec![], true), false).is_some());
        let alone = stored(vec![m("n2", false)], false);
        assert!(unsupported("net", &pass, &alone, false).is_some());
        assert_eq!(unsupported("net", &degraded, &alone, false), None);
        let twice = stored(vec![m("n2", false), m("n3", false)], false);
        assert!(unsupported("net", &degraded, &twice, false).is_some());
        let failed = Outcome::Fail { faults: vec![] };
        assert_eq!(
            unsupported("net", &failed, &stored(vec![], false), false),
            None
        );
    }

    #[test]
    fn one_partner_proves_nothing_and_the_same_partner_twice_is_still_one() {
        let alone = blame(&[m("n2", false)]);
        assert_eq!(
            alone,
            Blame::Inconclusive {
                partner: "n2".into()
            }
        );
        assert_eq!(
            alone.reason().unwrap(),
            "inconclusive: paired only with n2, and the pair missed its thresholds"
        );
        assert_eq!(
            blame(&[m("n2", false), m("n2", false)]),
            Blame::Inconclusive {
                partner: "n2".into()
            }
        );
        assert_eq!(blame(&[]), Blame::Unmeasured);
    }
}

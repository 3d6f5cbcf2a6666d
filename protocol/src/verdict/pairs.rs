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

//! What an agent and the collector say to pair nodes for `nic: {target: peer}`: the agent
//! asks with the step it is at and the port its bandwidth server listens on, and is told to
//! wait, to measure against a partner, that it may go on, or that no partner came.

use serde::{Deserialize, Serialize};

/// Body of `POST /api/v1/runs/{id}/pair`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRequest {
    /// The step (by index) whose NIC check asks.
    pub step: u32,
    /// The port this node's bandwidth server listens on.
    pub port: u16,
}

/// The collector's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum PairAnswer {
    /// Ask again shortly.
    Wait,
    /// Measure against the partner now, both ways; say when done.
    Pair {
        /// The pair.
        pair: u64,
        /// The partner, by node id.
        node: i64,
        /// Its name (host name, else `node N`).
        name: String,
        /// Where its bandwidth server listens (`IP:PORT`).
        addr: String,
        /// What this pair is for this node.
        role: PairRole,
    },
    /// Measured, and no one needs this node any more: go on.
    Released,
    /// No partner (or, for a retest, no third node) came within the step's `pair_timeout`.
    TimedOut {
        /// How long it waited, in seconds.
        waited_s: u64,
    },
}

/// What a pair is for the node told of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairRole {
    /// Its first measurement.
    First,
    /// Measured again against a third node: its first pair missed the step's thresholds.
    Retest,
    /// It loads the link for its partner's sake: measured and cleared already, or being
    /// retested while its partner is not proven good (then only a met result counts for it).
    Helper,
}

/// Body of `POST /api/v1/runs/{id}/pair/done`: the pair, and what this end measured against
/// its partner (none of it when the measurement broke off: a miss).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairDone {
    /// The pair that finished measuring.
    pub pair: u64,
    /// From the partner's server to this node, in Mb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_mbps: Option<f64>,
    /// From this node to the partner's server, in Mb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_mbps: Option<f64>,
    /// The slower direction measured (what `min_mbps` bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mbps: Option<f64>,
}

/// The most a figure may say: 10 Tb/s, beyond any NIC made.
pub const MAX_MBPS: f64 = 1.0e7;

impl PairDone {
    /// Why the figures cannot be real (negative, past [`MAX_MBPS`], or `mbps` faster than a
    /// direction it is the slower of), if they cannot.
    pub fn implausible(&self) -> Option<String> {
        for (name, value) in [
            ("download_mbps", self.download_mbps),
            ("upload_mbps", self.upload_mbps),
            ("mbps", self.mbps),
        ] {
            if let Some(v) = value {
                if !v.is_finite() || !(0.0..=MAX_MBPS).contains(&v) {
                    return Some(format!(
                        "{name} {v} is no throughput; expected 0 to {MAX_MBPS} Mb/s"
                    ));
                }
            }
        }
        let slowest = [self.download_mbps, self.upload_mbps]
            .into_iter()
            .flatten()
            .reduce(f64::min);
        match (self.mbps, slowest) {
            (Some(m), Some(s)) if m > s => Some(format!(
                "mbps {m} is faster than the slower direction measured ({s})"
            )),
            (Some(_), None) => Some("mbps without a direction measured".into()),
            _ => None,
        }
    }
}

/// The collector's answer to [`PairDone`]: whether this end's figures met the step's
/// thresholds (the collector judges them against the run's stored suite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairDoneReply {
    /// The pair.
    pub done: u64,
    /// Whether the figures met the step's thresholds.
    pub met: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(download: Option<f64>, upload: Option<f64>, mbps: Option<f64>) -> PairDone {
        PairDone {
            pair: 1,
            download_mbps: download,
            upload_mbps: upload,
            mbps,
        }
    }

    #[test]
    fn figures_no_nic_could_measure_are_refused() {
        assert_eq!(
            done(Some(900.0), Some(800.0), Some(800.0)).implausible(),
            None
        );
        assert_eq!(done(None, None, None).implausible(), None, "a miss");
        for hostile in [
            done(Some(-1.0), None, None),
            done(Some(f64::INFINITY), None, None),
            done(Some(2.0e7), Some(1.0), Some(1.0)),
            done(Some(100.0), Some(50.0), Some(90.0)),
            done(None, None, Some(5.0)),
        ] {
            assert!(hostile.implausible().is_some(), "{hostile:?}");
        }
    }

    #[test]
    fn a_done_with_unknown_fields_or_a_string_figure_does_not_parse() {
        assert!(serde_json::from_str::<PairDone>(r#"{"pair":1,"met":true}"#).is_err());
        assert!(serde_json::from_str::<PairDone>(r#"{"pair":1,"mbps":"fast"}"#).is_err());
        let old: PairDone = serde_json::from_str(r#"{"pair":3}"#).unwrap();
        assert_eq!(old, done(None, None, None).with_pair(3));
    }

    impl PairDone {
        fn with_pair(mut self, pair: u64) -> PairDone {
            self.pair = pair;
            self
        }
    }
}

//! The bodies operators send and get back on the collector's `/api/v1/nodes/*` routes, and
//! the rows of its report: typed once for the collector (which reads the requests and writes
//! the rows) and `kiln nodes` / `kiln report` (which write the requests and read the rows).
//! With them, the words that name a node's mode and a run's stage ([`Word`]: the same word on
//! the wire, in the database and on the screen).

use serde::{Deserialize, Serialize};

use crate::wire::Verdict;

/// An enum whose variants are words: one name each, the same in JSON, in the collector's
/// database and on the screen.
pub trait Word: Copy + Sized + 'static {
    /// Every variant, in order.
    const ALL: &'static [Self];
    /// What the words name, for errors (`mode`).
    const WHAT: &'static str;
    /// This variant's word.
    fn word(self) -> &'static str;
    /// The variant a word names, or what was expected instead.
    fn from_word(word: &str) -> Result<Self, UnknownWord> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.word() == word)
            .ok_or_else(|| UnknownWord {
                what: Self::WHAT,
                found: word.to_owned(),
                expected: Self::ALL
                    .iter()
                    .map(|v| v.word())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A word that is none of its type's variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?}; expected one of {expected}")]
pub struct UnknownWord {
    /// What the words name.
    pub what: &'static str,
    /// What was found.
    pub found: String,
    /// The words allowed, comma-separated.
    pub expected: String,
}

impl Word for Verdict {
    const ALL: &'static [Verdict] = &Verdict::ALL;
    const WHAT: &'static str = "verdict";
    fn word(self) -> &'static str {
        self.name()
    }
}

/// Declares an enum of words: serde's names, [`Word`], `name()`, `Display` and `FromStr`.
/// The one way kiln writes a closed set of words (modes, stages, settings, formats); the
/// collector adds SQL to the ones it stores.
#[macro_export]
macro_rules! words {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ::serde::Serialize, ::serde::Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $crate::api::Word for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            const WHAT: &'static str = $what;
            fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl $name {
            /// Every variant, in order.
            pub const ALL: &'static [$name] = <$name as $crate::api::Word>::ALL;

            /// The word.
            pub fn name(self) -> &'static str {
                $crate::api::Word::word(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::api::Word::word(*self))
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::api::UnknownWord;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <Self as $crate::api::Word>::from_word(s)
            }
        }
    };
}

words!(
    /// What a node does when it network-boots.
    Mode, "mode", {
        /// Run the verification cycle (a new run once armed).
        Verify => "verify",
        /// Boot its local disk.
        Local => "local",
        /// Wait at the boot prompt.
        Hold => "hold",
    }
);

words!(
    /// A report's encoding, as `?format=` asks for it and `kiln report --format` fetches it.
    ReportFormat, "report format", {
        /// One JSON array of rows.
        Json => "json",
        /// One line per node, spreadsheet-safe.
        Csv => "csv",
    }
);

words!(
    /// Where a run is: in one of its stages, or done with its verdict.
    RunStage, "run stage", {
        /// In memtest86+.
        Memtest => "memtest",
        /// In Linux (booting or running the suite).
        Linux => "linux",
        /// Power cycles after the suite's steps.
        Cycles => "cycles",
        /// Finished.
        Done => "done",
    }
);

/// A running step's progress, as the dashboard and the report show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Step index.
    pub step: u32,
    /// Step name.
    pub name: String,
    /// Done fraction.
    pub fraction: f64,
    /// Live metric.
    pub status: Option<String>,
}

/// One row of `GET /api/v1/report` (and `/api/v1/nodes`): a node with its latest run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Node id.
    pub node_id: i64,
    /// Host name.
    pub hostname: Option<String>,
    /// Rack label.
    pub rack: Option<String>,
    /// Slot label.
    pub slot: Option<String>,
    /// Serial.
    pub serial: Option<String>,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// MACs, comma-separated.
    pub macs: String,
    /// Batch (purchase order, delivery).
    #[serde(default)]
    pub batch: Option<String>,
    /// Mode.
    pub mode: Mode,
    /// Registered without the admin token: a node of its own, never one of the known ones.
    pub ad_hoc: bool,
    /// The operator allowed destructive disk steps on it.
    pub allow_destructive: bool,
    /// Latest run.
    pub run_id: Option<i64>,
    /// Its suite.
    pub suite: Option<String>,
    /// Its stage.
    pub stage: Option<RunStage>,
    /// Its verdict (none while running).
    pub verdict: Option<Verdict>,
    /// Why, for a verdict set by the collector (lost contact).
    pub verdict_reason: Option<String>,
    /// Faults of the run, one line each.
    pub faults: Vec<String>,
    /// Run start.
    pub started_ms: Option<i64>,
    /// Run end.
    pub finished_ms: Option<i64>,
    /// Fault codes of the latest run an operator waived for this node, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiver: Option<Waived>,
    /// The latest run was started under `attestation: optional`: `unattested` may ship.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attestation_optional: bool,
    /// Where the latest run's payload came from, once it held all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<crate::payload::Tally>,
    /// Live progress of the running step.
    pub progress: Option<Progress>,
}

/// The waived part of a failed run: which of its fault codes have an active waiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waived {
    /// The run's fault codes that are waived.
    pub codes: Vec<String>,
    /// Every fault code of the run is waived: the node may ship, as `pass (N waived)`.
    pub all: bool,
}

impl ReportRow {
    /// Node `node_id` in `mode`, with no run and nothing else known: what tests start from
    /// (`ReportRow { verdict: …, ..ReportRow::new(1, Mode::Verify) }`), so a new field is
    /// added here and where rows are read, and nowhere else.
    pub fn new(node_id: i64, mode: Mode) -> ReportRow {
        ReportRow {
            node_id,
            hostname: None,
            rack: None,
            slot: None,
            serial: None,
            uuid: None,
            macs: String::new(),
            batch: None,
            mode,
            ad_hoc: false,
            allow_destructive: false,
            run_id: None,
            suite: None,
            stage: None,
            verdict: None,
            verdict_reason: None,
            faults: Vec::new(),
            started_ms: None,
            finished_ms: None,
            waiver: None,
            attestation_optional: false,
            payload: None,
            progress: None,
        }
    }

    /// The state of the latest run: the verdict, `running` while a run has none, `not run`
    /// for a node that never ran (the raw verdict: waivers do not change it).
    pub fn state(&self) -> &'static str {
        match (self.verdict, self.run_id) {
            (Some(v), _) => v.name(),
            (None, Some(_)) => "running",
            (None, None) => "not run",
        }
    }

    /// What reports show as the verdict: [`Self::state`], or `pass (N waived)` when waivers
    /// cover every fault of a failed run (never plain `pass`), or `fail (N waived)` when they
    /// cover some.
    pub fn verdict_text(&self) -> String {
        match &self.waiver {
            Some(w) if w.all => format!("pass ({} waived)", w.codes.len()),
            Some(w) => format!("{} ({} waived)", self.state(), w.codes.len()),
            None => self.state().to_owned(),
        }
    }

    /// Whether the node failed: its latest run has a verdict it may not ship on (`unattested`
    /// only under `attestation: optional`), and waivers do not cover all of its faults.
    pub fn failed(&self) -> bool {
        let rule = if self.attestation_optional {
            crate::attest::Attestation::Optional
        } else {
            crate::attest::Attestation::Required
        };
        let waived_all = self.waiver.as_ref().is_some_and(|w| w.all);
        self.verdict
            .is_some_and(|v| !crate::verdict::ships(v, rule, waived_all))
    }
}

/// Body of `POST /api/v1/nodes/verify` (admin): arm the nodes and power-cycle each through
/// its configured driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The nodes.
    pub select: Selector,
}

/// One node of a `verify`: armed, and what its power driver did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyNode {
    /// Node id.
    pub node_id: i64,
    /// Host name.
    pub hostname: Option<String>,
    /// Its latest run before arming (the verdict to wait for is a later run's).
    pub run_before: Option<i64>,
    /// The node was reset by its driver.
    pub reset: bool,
    /// What happened, or what the technician must do (`manual` power, no driver, a failure).
    pub power: String,
}

/// Answer of `POST /api/v1/nodes/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyStarted {
    /// The nodes selected, in rack and slot order.
    pub nodes: Vec<VerifyNode>,
}

/// Body of `POST /api/v1/waivers` (admin): a fault code of one node that may ship anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaiveRequest {
    /// The node.
    pub node: i64,
    /// The fault code waived (`fan.speed`, `expect.memory.dimms`).
    pub code: String,
    /// Why: required, kept with the waiver.
    pub reason: String,
    /// A ticket in the operator's tracker.
    #[serde(default)]
    pub ticket: Option<String>,
    /// How long it holds (`30d`, at most [`MAX_WAIVER`]); [`DEFAULT_WAIVER`] when left out.
    #[serde(default)]
    pub expires: Option<String>,
    /// The run whose fault it waives; the node's latest finished run when left out. A waiver
    /// belongs to that run: the node's next run is judged afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<i64>,
}

/// How long a waiver holds when its request does not say.
pub const DEFAULT_WAIVER: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The longest a waiver may hold.
pub const MAX_WAIVER: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// A collector as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorState {
    /// Its id (host and boot port).
    pub id: String,
    /// Its boot-network URL.
    pub url: String,
    /// When it first registered.
    pub started_ms: i64,
    /// Its last heartbeat.
    pub heartbeat_ms: i64,
    /// Whether that heartbeat is younger than a lease.
    pub live: bool,
    /// The leases it holds: resource, epoch, expiry.
    pub leases: Vec<(String, i64, i64)>,
}

/// A waiver as kept: never deleted, revoked at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiver {
    /// Its id.
    pub id: i64,
    /// The node.
    pub node_id: i64,
    /// The fault code.
    pub code: String,
    /// Why.
    pub reason: String,
    /// The ticket.
    pub ticket: Option<String>,
    /// When it was given.
    pub created_ms: i64,
    /// By whom (the admin token's id).
    pub created_by: String,
    /// The run it was granted on (none for a waiver kept from before waivers named runs).
    #[serde(default)]
    pub run_id: Option<i64>,
    /// When it ends, if it does.
    pub expires_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
    /// By whom.
    pub revoked_by: Option<String>,
    /// Neither revoked nor expired now.
    pub active: bool,
}

/// Which nodes an operator command addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Selector {
    /// Every node in a rack.
    Rack(String),
    /// The node with this MAC.
    Mac(String),
    /// One node by id.
    Node(i64),
    /// Every node of a batch (a purchase order, a delivery).
    Batch(String),
    /// Every node (`false` selects none: an empty selection is refused).
    All(bool),
}

/// Body of `POST /api/v1/nodes/batch`: the nodes join batch `batch` (a purchase order, a
/// delivery), or leave theirs when it is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The nodes.
    pub select: Selector,
    /// The batch's name.
    pub batch: Option<String>,
}

/// Nodes of a batch by the state of their latest run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Yield {
    /// Nodes in the batch.
    pub nodes: usize,
    /// Latest run passed.
    pub pass: usize,
    /// Latest run passed short of a `degraded:` target.
    pub degraded: usize,
    /// Latest run failed, and waivers cover every one of its faults (shown `pass (N
    /// waived)`, never counted as passed).
    #[serde(default)]
    pub waived: usize,
    /// Latest run passed every step with no console to vouch for it, under `attestation:
    /// optional` (under `required` such a node counts as failed).
    #[serde(default)]
    pub unattested: usize,
    /// Latest run failed, errored or was incomplete.
    pub fail: usize,
    /// Latest run still open.
    pub running: usize,
    /// Never ran.
    pub not_started: usize,
}

impl Yield {
    /// Passed (degraded included, waived not) as a share of the nodes that have a verdict,
    /// in percent; `None` before any has one.
    pub fn pass_pct(&self) -> Option<f64> {
        let done = self.pass + self.degraded + self.waived + self.unattested + self.fail;
        (done > 0).then(|| 100.0 * (self.pass + self.degraded) as f64 / done as f64)
    }
}

/// One bar of a failure pareto: a fault code (or a component) and the failed nodes showing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParetoBar {
    /// The fault code (`memory.mismatch`) or component (`memory`).
    pub key: String,
    /// Failed nodes whose latest run shows it.
    pub nodes: usize,
}

/// How long a stage took across the batch's finished runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    /// `memtest` or `linux`.
    pub stage: String,
    /// Runs that finished the stage.
    pub runs: usize,
    /// Mean duration in seconds.
    pub mean_s: f64,
    /// Longest, in seconds.
    pub max_s: f64,
}

/// A failed node of a batch, with one line on why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedNode {
    /// Node id.
    pub node_id: i64,
    /// Host name.
    pub hostname: Option<String>,
    /// Rack.
    pub rack: Option<String>,
    /// Slot.
    pub slot: Option<String>,
    /// Serial.
    pub serial: Option<String>,
    /// Its latest run.
    pub run_id: i64,
    /// Its verdict (fail, error or incomplete).
    pub verdict: Verdict,
    /// The first fault line.
    pub reason: String,
}

/// Answer of `GET /api/v1/batches/{name}`: how a delivery is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    /// The batch.
    pub batch: String,
    /// Nodes by the state of their latest run.
    #[serde(rename = "yield")]
    pub yield_: Yield,
    /// Failed nodes by fault code, most first.
    pub pareto_codes: Vec<ParetoBar>,
    /// Failed nodes by component (the code's first part: `memory`, `disk`, `expect`), most
    /// first.
    pub pareto_components: Vec<ParetoBar>,
    /// Stage durations, slowest mean first.
    pub stages: Vec<StageTime>,
    /// The failed nodes, in rack and slot order.
    pub failed: Vec<FailedNode>,
    /// Where the nodes' payload came from, per rack (nodes that fetched one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payload: Vec<crate::payload::RackPayload>,
}

/// Body of `POST /api/v1/nodes/mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    /// The nodes.
    pub select: Selector,
    /// What the nodes do on their next network boot.
    pub mode: Mode,
}

/// Body of `POST /api/v1/nodes/destructive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestructiveRequest {
    /// The nodes.
    pub select: Selector,
    /// Consent given (`true`) or revoked.
    pub allow: bool,
}

/// Body of `POST /api/v1/nodes/suite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRequest {
    /// The nodes.
    pub select: Selector,
    /// The suite's name (a file in the collector's `DATA/suites/`).
    pub suite: String,
}

/// Answer of the mode, destructive and suite calls: how many nodes changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesChanged {
    /// Nodes selected and changed.
    pub nodes: usize,
}

/// Answer of `POST /api/v1/nodes/import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// Known nodes whose labels changed.
    pub updated: usize,
    /// Nodes created from the file.
    pub created: usize,
}

/// One cable of the site's map, as `GET /api/v1/cabling` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CableLine {
    /// The node (host name, else `node N`).
    pub node: String,
    /// Its interface (kernel name, MAC or PCI address).
    pub interface: String,
    /// The switch, by system name.
    pub switch: String,
    /// The switch's port.
    pub port: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_operators_wrote_them() {
        let r: ModeRequest =
            serde_json::from_str(r#"{"select":{"rack":"R12"},"mode":"hold"}"#).unwrap();
        assert_eq!(r.select, Selector::Rack("R12".into()));
        let d: DestructiveRequest =
            serde_json::from_str(r#"{"select":{"mac":"52:54:00:aa:00:01"},"allow":false}"#)
                .unwrap();
        assert_eq!(d.select, Selector::Mac("52:54:00:aa:00:01".into()));
        let s = SuiteRequest {
            select: Selector::All(true),
            suite: "burn-in".into(),
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"select":{"all":true},"suite":"burn-in"}"#
        );
        // Unknown fields and two selectors at once are refused.
        assert!(
            serde_json::from_str::<ModeRequest>(r#"{"select":{"all":true},"mode":"hold","x":1}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Selector>(r#"{"rack":"R1","node":2}"#).is_err());
        // A mode that is no mode is refused when read.
        assert!(
            serde_json::from_str::<ModeRequest>(r#"{"select":{"all":true},"mode":"reboot"}"#)
                .is_err()
        );
    }

    #[test]
    fn words_round_trip_through_serde_and_strings_and_strangers_are_named() {
        for m in Mode::ALL {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
            assert_eq!(m.to_string().parse::<Mode>(), Ok(*m));
        }
        for s in RunStage::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
        for v in <Verdict as Word>::ALL {
            assert_eq!(Verdict::from_word(v.word()), Ok(*v));
        }
        assert_eq!(
            "Verify".parse::<Mode>().unwrap_err().to_string(),
            "unknown mode \"Verify\"; expected one of verify, local, hold"
        );
    }

    #[test]
    fn a_report_row_reads_back_typed() {
        let json = r#"{"node_id":3,"hostname":"n3","rack":"R1","slot":"U2","serial":null,"uuid":null,"macs":"52:54:00:00:00:03","batch":"PO-1187","mode":"verify","ad_hoc":false,"allow_destructive":true,"run_id":9,"suite":"burn-in","stage":"linux","verdict":null,"verdict_reason":null,"progress":{"step":1,"name":"memory","fraction":0.5,"status":"7.9 GB/s"},"faults":[],"started_ms":1,"finished_ms":null}"#;
        let row: ReportRow = serde_json::from_str(json).unwrap();
        assert_eq!(row.mode, Mode::Verify);
        assert_eq!(row.stage, Some(RunStage::Linux));
        assert_eq!(row.state(), "running");
        assert_eq!(row.progress.as_ref().unwrap().fraction, 0.5);
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }
}

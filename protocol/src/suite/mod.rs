//! The YAML suite language as QA engineers write it: the typed model serde reads.
//!
//! Every struct refuses unknown keys; the doc comments here are the field reference (they
//! become the JSON Schema descriptions and the field reference in `docs/suites.md`).
//! Cross-field rules live in [`crate::plan`], which turns a parsed [`Suite`] into a checked
//! [`crate::plan::Plan`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{HumanDuration, Size, SizeSpec};

mod checks;
mod cycles;
mod expect;
mod problems;
mod sensors;

pub use checks::{
    CHECK_KINDS, Check, CheckSpec, CpuCheck, CpuThresholds, DiskCheck, DiskThresholds, ExecCheck,
    MemoryCheck, MemoryThresholds, NicCheck, NicThresholds, Step, Thresholds, WatchCheck,
    WatchThresholds,
};
pub use cycles::{CycleKind, Cycles, MAX_CYCLES};
pub use expect::{
    Expect, ExpectCpu, ExpectDisks, ExpectLldp, ExpectMemory, ExpectNics, ExpectPcie, ExpectSystem,
};
pub use problems::{Problem, Problems};
pub use sensors::Sensors;

/// A kiln suite: what a node must be (`expect`), whether memtest86+ runs before Linux
/// (`memtest`), and the ordered checks the agent runs in the RAM image (`steps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "kiln suite")]
pub struct Suite {
    /// Name of the suite: letters, digits, `.`, `_` and `-`, at most 64 characters.
    pub suite: String,
    /// What the suite is for, in a sentence or two; shown in reports.
    pub description: String,
    /// Free-form version of the suite, e.g. `"2024.3"`; recorded with every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The bill of materials the node must match; checked against its inventory before the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// The pre-boot memtest86+ stage, run from the network before Linux loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memtest: Option<Memtest>,
    /// Run a failing step again, for every step that does not say otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retest: Option<Retest>,
    /// Compare every step's throughput with the node's peers, unless a step says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare_peers: Option<ComparePeers>,
    /// The BMC's sensors, read while every step runs, and limits on them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<Sensors>,
    /// Power cycles after the steps, each boot checked against the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles: Option<Cycles>,
    /// The checks, run in order. Each step names exactly one check kind.
    pub steps: Vec<Step>,
}

// `parallel:` groups: steps run at the same time, so the whole machine is under load at
// once — what a burn-in exists for: a PSU or VRM that sags only at full draw, a fan that
// cannot hold the CPUs with the DIMMs hot, a PCIe link that errs only once the board is warm.

/// Steps run at the same time for `duration`, each with its own thresholds and outcome; the
/// group fails when any of them does. A member whose kind has a duration (memory, cpu, watch)
/// runs for the group's; the others (disk, nic, exec) run again, back to back, until it has
/// passed. The machine's watchers (kernel log, machine checks, AER, the BMC's event log and
/// sensors) watch the whole group and report through its first member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    /// How long the members run together.
    pub duration: HumanDuration,
    /// How the CPUs are shared between a memory and a cpu member: `split` (the default) or
    /// `shared`.
    #[serde(default)]
    pub cpus: CpuShare,
    /// The members: two or more steps, none of them a group.
    pub steps: Vec<Step>,
}

/// How a group's memory and cpu members share the CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuShare {
    /// Memory workers on one half of the CPUs, CPU workers on the other, swapped at half
    /// time: neither preempts the other, and every CPU runs both loads in turn.
    #[default]
    Split,
    /// Both on every CPU, as each would alone: the scheduler shares them.
    Shared,
}

/// Run a failing step again, to tell an intermittent fault (failed 1 of 3) from a hard one
/// (3 of 3). Both fail the step unless `intermittent: degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retest {
    /// Attempts in all when the first fails (2 to 10): every one runs, so the count says how
    /// often the fault shows.
    pub attempts: u32,
    /// What an intermittent fault makes the step: `fail` (the default) or `degraded`.
    #[serde(default)]
    pub intermittent: Intermittent,
}

/// A node's measurements against its peers — the nodes of its batch with the same product
/// and CPU model, as their latest finished runs measured them: a node more than
/// `max_below_median_pct` worse than the peers' median is `degraded`, the fault saying by how
/// much — below it in throughput (GB/s, MB/s, Mb/s, it/s), above it in latency and
/// temperature (ms, °C). With fewer than `min_peers` peers there is nothing to compare
/// against yet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComparePeers {
    /// Fewest peers a median is taken of (2 or more).
    pub min_peers: u32,
    /// How far below the median, in percent, a node may be and still pass.
    pub max_below_median_pct: f64,
}

/// What an intermittent fault makes a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Intermittent {
    /// The step fails, as for a hard fault.
    #[default]
    Fail,
    /// The step is degraded: shippable, worth a look.
    Degraded,
}

/// The memtest86+ stage that runs before Linux; its verdict comes from the serial console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Memtest {
    /// Run the stage at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Complete passes of the selected tests that must finish with zero errors.
    #[serde(default = "one")]
    pub passes: u32,
    /// Longest the whole stage may take before it fails.
    #[serde(default = "memtest_timeout")]
    pub timeout: HumanDuration,
    /// Longest the screen may go without progress before the stage fails as stalled.
    #[serde(default = "memtest_stall")]
    pub stall_timeout: HumanDuration,
    /// How memtest86+ lists errors on its screen (its `reportmode=` option).
    #[serde(default)]
    pub report_mode: ReportMode,
    /// Test numbers (0-10) to deselect in memtest86+'s configuration menu before it runs,
    /// e.g. `[10]` to skip the long bit-fade test in a lab.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_tests: Vec<u8>,
}

/// How memtest86+ reports errors on its screen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReportMode {
    /// One row per error: CPU, pass, test, failing address, expected and found values.
    #[default]
    Address,
    /// Error counts and the address range only.
    Summary,
    /// Rows in the kernel's `memmap=`/GRUB `badram` format.
    Badram,
}

impl ReportMode {
    /// The name memtest86+'s `reportmode=` option and the suite both use.
    pub fn name(self) -> &'static str {
        match self {
            ReportMode::Address => "address",
            ReportMode::Summary => "summary",
            ReportMode::Badram => "badram",
        }
    }
}

/// Whether a threshold bounds its metric from below (`min_…`) or above (`max_…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// The metric must be at least the value.
    Min,
    /// The metric must be at most the value.
    Max,
}

/// One threshold: the metric it bounds, which way, and the value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// Metric name, e.g. `read_mbps`.
    pub metric: String,
    /// Direction.
    pub bound: Bound,
    /// The bound itself.
    pub value: f64,
}

impl Limit {
    /// Builds a limit from a threshold field name: `min_read_mbps` bounds `read_mbps` from below.
    pub fn from_field(field: &str, value: f64) -> Option<Limit> {
        let (bound, metric) = if let Some(metric) = field.strip_prefix("min_") {
            (Bound::Min, metric)
        } else if let Some(metric) = field.strip_prefix("max_") {
            (Bound::Max, metric)
        } else {
            return None;
        };
        Some(Limit {
            metric: metric.to_owned(),
            bound,
            value,
        })
    }

    /// Whether a measured value meets this limit.
    pub fn holds(&self, measured: f64) -> bool {
        match self.bound {
            Bound::Min => measured >= self.value,
            Bound::Max => measured <= self.value,
        }
    }

    /// The field name as written in a suite (`min_read_mbps`).
    pub fn field(&self) -> String {
        match self.bound {
            Bound::Min => format!("min_{}", self.metric),
            Bound::Max => format!("max_{}", self.metric),
        }
    }
}

/// A memory test pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Pattern {
    /// Each word holds its own address; catches address-line faults.
    OwnAddress,
    /// A single 1 bit walks through every position.
    WalkingOnes,
    /// A single 0 bit walks through every position.
    WalkingZeros,
    /// Alternating 0101…/1010… words, then inverted.
    Checkerboard,
    /// All zeros, then all ones.
    SolidBits,
    /// Pseudo-random words from a printed seed, so a failure can be replayed.
    Random,
    /// Fill, then walk up and down flipping each word and checking its neighbours' values.
    MovingInversions,
}

impl Pattern {
    /// Every pattern, in the order they run by default.
    pub const ALL: [Pattern; 7] = [
        Pattern::OwnAddress,
        Pattern::WalkingOnes,
        Pattern::WalkingZeros,
        Pattern::Checkerboard,
        Pattern::SolidBits,
        Pattern::Random,
        Pattern::MovingInversions,
    ];

    /// Its name in suites (what serde reads and writes; a test keeps the two the same).
    pub fn name(self) -> &'static str {
        match self {
            Pattern::OwnAddress => "own-address",
            Pattern::WalkingOnes => "walking-ones",
            Pattern::WalkingZeros => "walking-zeros",
            Pattern::Checkerboard => "checkerboard",
            Pattern::SolidBits => "solid-bits",
            Pattern::Random => "random",
            Pattern::MovingInversions => "moving-inversions",
        }
    }
}

/// A CPU known-answer workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Integer multiply, add, shift and divide chains.
    Integer,
    /// Floating-point arithmetic and transcendental functions.
    Float,
    /// Wide vector arithmetic (whatever SIMD the CPU has).
    Vector,
    /// A cryptographic hash over a fixed buffer.
    Hash,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 4] = [
        Workload::Integer,
        Workload::Float,
        Workload::Vector,
        Workload::Hash,
    ];

    /// Its name in suites (what serde reads and writes; a test keeps the two the same).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Integer => "integer",
            Workload::Float => "float",
            Workload::Vector => "vector",
            Workload::Hash => "hash",
        }
    }
}

// serde_yaml 0.9 reads externally tagged enums only from YAML tags (`!path /dev/sdb`), which
// QA engineers do not write; the hand-written Deserialize below reads the mapping form.
/// Which raw block devices a destructive disk check writes: `all`, or a mapping with one key.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskTarget {
    /// Every whole disk that is safe to overwrite.
    All,
    /// One device by path, e.g. `/dev/sdb`.
    Path(String),
    /// Devices matching a shell glob, e.g. `/dev/nvme*n1`.
    Glob(String),
    /// Devices whose model matches a regular expression.
    Model(String),
}

const DISK_TARGET_EXPECTED: &str =
    "`all`, or a mapping with one of `path`, `glob` or `model` and a string value";

impl<'de> Deserialize<'de> for DiskTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TargetVisitor;
        impl<'de> serde::de::Visitor<'de> for TargetVisitor {
            type Value = DiskTarget;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(DISK_TARGET_EXPECTED)
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DiskTarget, E> {
                if v == "all" {
                    Ok(DiskTarget::All)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<DiskTarget, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::invalid_length(0, &self));
                };
                let value: String = map.next_value()?;
                let target = match key.as_str() {
                    "path" => DiskTarget::Path(value),
                    "glob" => DiskTarget::Glob(value),
                    "model" => DiskTarget::Model(value),
                    other => {
                        return Err(A::Error::unknown_field(other, &["path", "glob", "model"]));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!(
                        "a second key `{extra}`; expected {DISK_TARGET_EXPECTED}"
                    )));
                }
                Ok(target)
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

impl Serialize for DiskTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (key, value) = match self {
            DiskTarget::All => return serializer.serialize_str("all"),
            DiskTarget::Path(v) => ("path", v),
            DiskTarget::Glob(v) => ("glob", v),
            DiskTarget::Model(v) => ("model", v),
        };
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(key, value)?;
        map.end()
    }
}

/// Throughput directions, seen from the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Node receives.
    Download,
    /// Node sends.
    Upload,
    /// Download, then upload.
    #[default]
    Both,
}

/// Whom a node is paired with for `nic: {target: peer}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeerPolicy {
    /// A node of its own rack: the rack's switch at line rate.
    #[default]
    SameRack,
    /// A node of another rack: the rack's uplinks under load.
    OtherRack,
}

/// Bounds for one metric an exec step reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricRange {
    /// Least acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Greatest acceptable value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

impl MetricRange {
    /// The bounds as limits on `metric`.
    pub fn limits(&self, metric: &str) -> Vec<Limit> {
        let mut out = Vec::new();
        if let Some(value) = self.min {
            out.push(Limit {
                metric: metric.to_owned(),
                bound: Bound::Min,
                value,
            });
        }
        if let Some(value) = self.max {
            out.push(Limit {
                metric: metric.to_owned(),
                bound: Bound::Max,
                value,
            });
        }
        out
    }
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn zero_exit() -> Vec<i32> {
    vec![0]
}
fn memtest_timeout() -> HumanDuration {
    HumanDuration::from_secs(4 * 3600)
}
fn memtest_stall() -> HumanDuration {
    HumanDuration::from_secs(10 * 60)
}
fn default_memory_size() -> SizeSpec {
    SizeSpec::Percent(10.0)
}
fn all_patterns() -> Vec<Pattern> {
    Pattern::ALL.to_vec()
}
fn default_cpu_duration() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn all_workloads() -> Vec<Workload> {
    Workload::ALL.to_vec()
}
fn default_disk_size() -> SizeSpec {
    SizeSpec::Fixed(Size(1 << 30))
}
fn default_block_size() -> Size {
    Size(1 << 20)
}
fn default_nic_duration() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max_output() -> Size {
    Size(1 << 20)
}

#[cfg(test)]
mod tests;

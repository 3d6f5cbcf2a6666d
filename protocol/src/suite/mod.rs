//! The YAML suite language as QA engineers write it: the typed model serde reads.
//!
//! Every struct refuses unknown keys; the doc comments here are the field reference (they
//! become the JSON Schema descriptions and the "Writing suites" section of the README).
//! Cross-field rules live in [`crate::plan`], which turns a parsed [`Suite`] into a checked
//! [`crate::plan::Plan`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{HumanDuration, Size, SizeSpec};

mod expect;

pub use expect::*;

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
    /// The checks, run in order. Each step names exactly one check kind.
    pub steps: Vec<Step>,
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

/// One check, run in order. Write `name`, optionally `timeout`, and exactly one of
/// `memory`, `cpu`, `disk`, `nic` or `exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Name of the step, unique in the suite; shown in progress, logs and reports.
    pub name: String,
    /// Longest the step may run; the step is stopped and reported as an error past it.
    /// Defaults to the step's own duration plus a margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// Memory patterns on locked memory across all CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryCheck>,
    /// Known-answer CPU loads per logical CPU with temperature and throttle watch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuCheck>,
    /// Write-verify-read of a file or raw devices, with SMART health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskCheck>,
    /// Link, speed, MTU, error counters and HTTP throughput of network interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic: Option<NicCheck>,
    /// A vendor tool run as a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecCheck>,
    /// Thresholds of this step a node may be unable to measure (`[max_temp_c]` on VMs
    /// without sensors): such a threshold is then logged as not checked. Any other threshold
    /// the node cannot measure fails the step (a degraded-tier one degrades it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub optional: Vec<String>,
}

impl Step {
    /// The check kinds this step names, by their YAML keys (a valid step names exactly one).
    pub fn kinds(&self) -> Vec<&'static str> {
        let present = [
            ("memory", self.memory.is_some()),
            ("cpu", self.cpu.is_some()),
            ("disk", self.disk.is_some()),
            ("nic", self.nic.is_some()),
            ("exec", self.exec.is_some()),
        ];
        present
            .iter()
            .filter(|(_, on)| *on)
            .map(|(kind, _)| *kind)
            .collect()
    }
}

/// The YAML keys of the check kinds, in the order the reference lists them.
pub const CHECK_KINDS: [&str; 5] = ["memory", "cpu", "disk", "nic", "exec"];

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

/// Declares a check kind: its parameters, its pass thresholds (flat on the check, so a suite
/// reads `min_read_mbps: 400`) and the same thresholds again as the `degraded:` tier.
macro_rules! check_kind {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$pmeta:meta])* pub $pfield:ident : $pty:ty, )*
        }
        $(#[$tmeta:meta])*
        thresholds $tname:ident {
            $( $(#[$tfmeta:meta])* $tfield:ident, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$pmeta])* pub $pfield: $pty, )*
            $(
                $(#[$tfmeta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $tfield: Option<f64>,
            )*
            /// Stricter targets: a metric that meets the pass thresholds but misses one of
            /// these makes the step `degraded` instead of `pass`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub degraded: Option<$tname>,
        }

        $(#[$tmeta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $tname {
            $(
                $(#[$tfmeta])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $tfield: Option<f64>,
            )*
        }

        impl $name {
            /// The pass thresholds written on the check, with their field names.
            pub fn pass_limits(&self) -> Vec<(&'static str, Limit)> {
                collect_limits(&[$((stringify!($tfield), self.$tfield)),*])
            }

            /// The `degraded:` tier, with field names; empty when there is none.
            pub fn degraded_limits(&self) -> Vec<(&'static str, Limit)> {
                self.degraded.as_ref().map(|d| d.limits()).unwrap_or_default()
            }
        }

        impl $tname {
            /// The thresholds in this tier, with their field names.
            pub fn limits(&self) -> Vec<(&'static str, Limit)> {
                collect_limits(&[$((stringify!($tfield), self.$tfield)),*])
            }
        }
    };
}

fn collect_limits(fields: &[(&'static str, Option<f64>)]) -> Vec<(&'static str, Limit)> {
    fields
        .iter()
        .filter_map(|(field, value)| Some((*field, Limit::from_field(field, (*value)?)?)))
        .collect()
}

check_kind! {
    /// Memory patterns on locked (`mlock`) memory, one pinned worker thread per CPU. Every
    /// word written is read back and compared; a mismatch is a fault with its address and
    /// flipped bits. EDAC counters are read before and after.
    pub struct MemoryCheck {
        /// How much memory to test: a size or a share of available memory.
        #[serde(default = "default_memory_size")]
        pub size: SizeSpec,
        /// Complete passes over all patterns.
        #[serde(default = "one")]
        pub passes: u32,
        /// Keep repeating passes until this much time has gone by (at least `passes` passes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub duration: Option<HumanDuration>,
        /// Patterns to run, in order; all of them when left out.
        #[serde(default = "all_patterns")]
        pub patterns: Vec<Pattern>,
        /// Worker threads; one per logical CPU when left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub threads: Option<u32>,
        /// Seed for the `random` pattern; a fresh one is drawn and printed when left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub seed: Option<u64>,
    }
    /// Thresholds of a memory check.
    thresholds MemoryThresholds {
        /// Least verified throughput in GB/s (bytes written plus bytes read and compared).
        min_gbps,
        /// Most EDAC corrected errors the step may add.
        max_edac_corrected,
        /// Most EDAC uncorrected errors the step may add.
        max_edac_uncorrected,
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

check_kind! {
    /// Known-answer workloads on every logical CPU: reference results are computed once and
    /// compared on every iteration, so a wrong answer is a fault naming the CPU. Temperature,
    /// frequency and throttling are sampled during the run.
    pub struct CpuCheck {
        /// How long the load runs.
        #[serde(default = "default_cpu_duration")]
        pub duration: HumanDuration,
        /// Workloads to rotate through; all of them when left out.
        #[serde(default = "all_workloads")]
        pub workloads: Vec<Workload>,
        /// Logical CPU numbers to load; all of them when left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cpus: Option<Vec<u32>>,
    }
    /// Thresholds of a CPU check.
    thresholds CpuThresholds {
        /// Hottest any sensor may read during the run, in °C.
        max_temp_c,
        /// Most thermal-throttle events the kernel may count during the run.
        max_throttle_events,
        /// Most a core's throughput may fall below the median core's, in percent.
        max_core_spread_pct,
        /// Least average frequency in MHz, over all loaded CPUs.
        min_freq_mhz,
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

check_kind! {
    /// Write-verify-read with O_DIRECT: every block carries a pattern of its index and a seed
    /// and is read back and checked. Either a file in a directory (`dir`, non-destructive) or
    /// raw block devices (`target`, needs `destructive: true` and the operator's consent).
    pub struct DiskCheck {
        /// Directory on a mounted filesystem where a scratch file is written, then removed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub dir: Option<String>,
        /// Raw block devices to overwrite: `all`, `{path: /dev/sdb}`, `{glob: "/dev/nvme*n1"}`
        /// or `{model: "regex"}`. Mounted, root, partitioned, LVM and RAID devices are refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target: Option<DiskTarget>,
        /// Must be `true` for `target`: the device's contents are destroyed.
        #[serde(default)]
        pub destructive: bool,
        /// Overwrite a device even though its first or last MiB holds a known signature (a
        /// partition table, filesystem, swap, LVM, RAID, ZFS, bcache or LUKS header). Without
        /// it such a device is refused, naming what was found.
        #[serde(default)]
        pub wipe_signatures: bool,
        /// How much to write and verify: a size, or a share of the device (or of the free space
        /// for `dir`).
        #[serde(default = "default_disk_size")]
        pub size: SizeSpec,
        /// I/O size; a multiple of 4KiB, at most 64MiB.
        #[serde(default = "default_block_size")]
        pub block_size: Size,
        /// Read the disk's health: the NVMe health log, or SATA SMART (attributes and the
        /// drive's own verdict), natively; `smartctl --json` when the device has neither.
        #[serde(default = "yes")]
        pub smart: bool,
    }
    /// Thresholds of a disk check.
    thresholds DiskThresholds {
        /// Least sequential write throughput in MB/s.
        min_write_mbps,
        /// Least sequential read throughput in MB/s.
        min_read_mbps,
        /// Slowest the 99th-percentile I/O may be, in milliseconds.
        max_latency_p99_ms,
        /// Slowest any single I/O may be, in milliseconds.
        max_latency_max_ms,
        /// Most reallocated sectors SMART may report.
        max_reallocated_sectors,
        /// Most pending sectors SMART may report.
        max_pending_sectors,
        /// Most media errors an NVMe device may report.
        max_media_errors,
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

check_kind! {
    /// Network interfaces: link, speed, duplex, MTU, driver, kernel error counters over the
    /// step, and HTTP throughput against a target.
    pub struct NicCheck {
        /// Interface names to check; every physical interface when left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub interfaces: Option<Vec<String>>,
        /// Require the link to be up.
        #[serde(default = "yes")]
        pub link: bool,
        /// Exact MTU each interface must have.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mtu: Option<u32>,
        /// Where to measure throughput: `collector` (its bandwidth endpoints) or an
        /// `http://` URL of `kiln-agent serve-bandwidth`. No throughput test when left out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target: Option<String>,
        /// How long each throughput direction runs.
        #[serde(default = "default_nic_duration")]
        pub duration: HumanDuration,
        /// Which directions to measure.
        #[serde(default)]
        pub direction: Direction,
    }
    /// Thresholds of a NIC check.
    thresholds NicThresholds {
        /// Least link speed in Mb/s each interface must report.
        min_speed_mbps,
        /// Least HTTP throughput in Mb/s, each direction.
        min_mbps,
        /// Most receive/transmit errors the kernel may count during the step.
        max_errors,
        /// Most dropped packets the kernel may count during the step.
        max_drops,
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

/// A vendor tool run as a check: it passes when its exit code is listed, and metrics it writes
/// as a JSON object to the file named by `$KILN_METRICS` are checked against `metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecCheck {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Exit codes that mean pass.
    #[serde(default = "zero_exit")]
    pub pass_codes: Vec<i32>,
    /// Most output kept from stdout and from stderr each; the rest is dropped with a marker.
    #[serde(default = "default_max_output")]
    pub max_output: Size,
    /// Pass thresholds on metrics the tool writes, by metric name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricRange>,
    /// Degraded thresholds on the same metrics.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub degraded: BTreeMap<String, MetricRange>,
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
mod tests {
    use super::*;

    #[test]
    fn pattern_and_workload_names_are_serdes() {
        for p in Pattern::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "{p:?}");
        }
        for w in Workload::ALL {
            assert_eq!(serde_json::to_value(w).unwrap(), w.name(), "{w:?}");
        }
    }
}

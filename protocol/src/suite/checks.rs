//! The check kinds, in one room: each kind's suite parameters, what a plan needs to know of
//! it ([`CheckSpec`]: how long it runs, its timeout allowance, its rules, its thresholds) and
//! its line in the [`check_kinds!`] list, from which the step's key, the plan's [`Check`]
//! variant, the kind's name and [`CHECK_KINDS`] all follow.
//!
//! A new kind touches three files: this one (its parameters, their `CheckSpec`, its line in the
//! list), its module in `agent/src/checks/` (a `CheckKind` that runs it) and its line in the
//! agent's registry (`agent/src/checks/mod.rs`). The schema, the suite reference, `suite
//! check` and the collector follow from these; the README's Architecture section walks
//! through it.

use std::time::Duration;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::problems::Problems;
use super::{
    Bound, ComparePeers, Direction, DiskTarget, Limit, MetricRange, Pattern, PeerPolicy, Retest,
    Workload, all_patterns, all_workloads, default_block_size, default_cpu_duration,
    default_disk_size, default_max_output, default_memory_size, default_nic_duration, one, yes,
    zero_exit,
};
use crate::units::{HumanDuration, Size, SizeSpec};

/// The thresholds of a kind, pass tier and `degraded:` tier, by the field names a suite
/// writes.
pub trait Thresholds {
    /// The pass thresholds, with their field names.
    fn pass_limits(&self) -> Vec<(String, Limit)>;
    /// The `degraded:` thresholds, with their field names; empty when there are none.
    fn degraded_limits(&self) -> Vec<(String, Limit)>;
    /// Where the pass thresholds sit under the kind's key, when not flat on it (`metrics` for
    /// `exec`), so that a problem names the path the suite wrote.
    fn pass_limits_under(&self) -> Option<&'static str> {
        None
    }
}

/// What a plan needs to know of a check kind beyond its thresholds.
pub trait CheckSpec: Thresholds {
    /// How long the check runs by its own parameters, when they fix it.
    fn own_duration(&self) -> Option<Duration> {
        None
    }
    /// The timeout when the suite gives none and the check's length depends on the node.
    fn allowance(&self) -> Duration {
        Duration::from_secs(60 * 60)
    }
    /// Adds a problem for each rule serde cannot express that the parameters break; `at` is
    /// the kind's document path (`steps[2].disk`). None by default.
    fn validate(&self, at: &str, problems: &mut Problems) {
        let _ = (at, problems);
    }
}

/// Declares the check kinds, one line each: the step's key, the plan's variant (the key is its
/// name in lowercase) and the parameters' type. The doc comment is the step field's and the
/// variant's.
macro_rules! check_kinds {
    ($( $(#[$doc:meta])* $key:ident: $variant:ident($ty:ty), )+) => {
        #[doc = concat!("One check, run in order. Write `name`, optionally `timeout`, and exactly one check kind:", $(" `", stringify!($key), "`",)+ ".")]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct Step {
            /// Name of the step, unique in the suite; shown in progress, logs and reports.
            pub name: String,
            /// Longest the step may run; the step is stopped and reported as an error past it.
            /// Defaults to the step's own duration plus a margin.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub timeout: Option<HumanDuration>,
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $key: Option<$ty>,
            )+
            /// Steps run at the same time, in place of a check kind.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub parallel: Option<Box<super::Parallel>>,
            /// Run the step again when it fails (overrides the suite's `retest:`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub retest: Option<Retest>,
            /// Compare the step's throughput with the node's peers (overrides the suite's).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub compare_peers: Option<ComparePeers>,
            /// Thresholds of this step a node may be unable to measure (`[max_temp_c]` on VMs
            /// without sensors): such a threshold is then logged as not checked. Any other threshold
            /// the node cannot measure fails the step (a degraded-tier one degrades it).
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub optional: Vec<String>,
        }

        impl Step {
            /// The check kinds this step names, by their keys (a valid step names exactly one).
            pub fn kinds(&self) -> Vec<&'static str> {
                let mut kinds = Vec::new();
                $(
                    if self.$key.is_some() {
                        kinds.push(stringify!($key));
                    }
                )+
                kinds
            }

            /// The step's check, when it names exactly one kind.
            pub fn check(&self) -> Option<Check> {
                if self.kinds().len() != 1 {
                    return None;
                }
                $(
                    if let Some(c) = &self.$key {
                        return Some(Check::$variant(c.clone()));
                    }
                )+
                None
            }
        }

        /// The keys of the check kinds, in the order the reference lists them.
        pub const CHECK_KINDS: &[&str] = &[$(stringify!($key)),+];

        /// One check of a plan, by kind.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum Check {
            $(
                $(#[$doc])*
                $variant($ty),
            )+
        }

        impl Check {
            /// The key of this kind.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Check::$variant(_) => stringify!($key),)+
                }
            }

            /// What the plan needs to know of it.
            pub fn spec(&self) -> &dyn CheckSpec {
                match self {
                    $(Check::$variant(c) => c,)+
                }
            }
        }
    };
}

check_kinds! {
    /// Memory patterns on locked memory across all CPUs.
    memory: Memory(MemoryCheck),
    /// Known-answer CPU loads per logical CPU with temperature and throttle watch.
    cpu: Cpu(CpuCheck),
    /// Write-verify-read of a file or raw devices, with SMART health.
    disk: Disk(DiskCheck),
    /// Link, speed, MTU, error counters and HTTP throughput of network interfaces.
    nic: Nic(NicCheck),
    /// A vendor tool run as a check.
    exec: Exec(ExecCheck),
    /// The node left idle for a while with every watcher on and its temperatures sampled.
    watch: Watch(WatchCheck),
}

impl Check {
    /// How long the check runs by its own parameters, when they fix it.
    pub fn own_duration(&self) -> Option<Duration> {
        self.spec().own_duration()
    }

    /// Whether the kind runs for a duration it is given (memory, cpu, watch): in a group it
    /// runs once for the group's; the others are repeated.
    pub fn stretches(&self) -> bool {
        matches!(self, Check::Memory(_) | Check::Cpu(_) | Check::Watch(_))
    }

    /// The check as a member of a `parallel:` group lasting `d`: a kind with a duration of
    /// its own runs for `d` (memory keeps repeating passes, cpu and watch keep going); the
    /// others are unchanged (the runner repeats them until `d` has passed).
    pub fn lasting(self, d: Duration) -> Check {
        let d = HumanDuration(d);
        match self {
            Check::Memory(m) => Check::Memory(MemoryCheck {
                duration: Some(d),
                ..m
            }),
            Check::Cpu(c) => Check::Cpu(CpuCheck { duration: d, ..c }),
            Check::Watch(w) => Check::Watch(WatchCheck { duration: d, ..w }),
            other => other,
        }
    }

    /// The timeout when the suite gives none: the own duration plus half again (at least a
    /// minute) of margin, or the kind's allowance when the check's length depends on the node.
    pub fn default_timeout(&self) -> Duration {
        match self.own_duration() {
            Some(own) => own + (own / 2).max(Duration::from_secs(60)),
            None => self.spec().allowance(),
        }
    }

    /// The pass thresholds, with their field names.
    pub fn pass_limits(&self) -> Vec<(String, Limit)> {
        self.spec().pass_limits()
    }

    /// The `degraded:` thresholds, with their field names.
    pub fn degraded_limits(&self) -> Vec<(String, Limit)> {
        self.spec().degraded_limits()
    }
}

fn named(limits: Vec<(&'static str, Limit)>) -> Vec<(String, Limit)> {
    limits
        .into_iter()
        .map(|(field, limit)| (field.to_owned(), limit))
        .collect()
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

        impl Thresholds for $name {
            fn pass_limits(&self) -> Vec<(String, Limit)> {
                named(collect_limits(&[$((stringify!($tfield), self.$tfield)),*]))
            }

            fn degraded_limits(&self) -> Vec<(String, Limit)> {
                named(self.degraded.as_ref().map(|d| d.limits()).unwrap_or_default())
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

impl CheckSpec for MemoryCheck {
    fn own_duration(&self) -> Option<Duration> {
        self.duration.map(HumanDuration::get)
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        if self.passes == 0 {
            problems.problem(format!("{at}.passes"), "0 passes; expected at least 1");
        }
        if self.patterns.is_empty() {
            problems.problem(
                format!("{at}.patterns"),
                "no patterns; expected at least one, or leave the key out for all",
            );
        }
        problems.no_duplicates(&format!("{at}.patterns"), &self.patterns, "pattern");
        if self.threads == Some(0) {
            problems.problem(
                format!("{at}.threads"),
                "0 threads; expected at least 1, or leave the key out for one per CPU",
            );
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

impl CheckSpec for CpuCheck {
    fn own_duration(&self) -> Option<Duration> {
        Some(self.duration.get())
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        if self.workloads.is_empty() {
            problems.problem(
                format!("{at}.workloads"),
                "no workloads; expected at least one, or leave the key out for all",
            );
        }
        problems.no_duplicates(&format!("{at}.workloads"), &self.workloads, "workload");
        if let Some(cpus) = &self.cpus {
            if cpus.is_empty() {
                problems.problem(
                    format!("{at}.cpus"),
                    "an empty CPU list; expected CPU numbers, or leave the key out for all",
                );
            }
            problems.no_duplicates(&format!("{at}.cpus"), cpus, "CPU");
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
        /// I/Os in flight, 1 to 256. Left out: chosen by the device — up to 32 as its queue
        /// takes for solid-state devices, 4 for spinning disks, and no more than 16 MiB of
        /// blocks in flight (16 of 1 MiB).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub queue_depth: Option<u32>,
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

impl CheckSpec for DiskCheck {
    fn validate(&self, at: &str, problems: &mut Problems) {
        match (&self.dir, &self.target) {
            (None, None) => problems.problem(at, "neither `dir` nor `target`; expected `dir` (a scratch file on a mounted filesystem) or `target` (raw devices, destructive)"),
            (Some(_), Some(_)) => problems.problem(format!("{at}.target"), "both `dir` and `target`; expected one of them per step"),
            (Some(dir), None) => {
                if !dir.starts_with('/') {
                    problems.problem(format!("{at}.dir"), format!("{dir:?} is not an absolute path; expected a directory like /var/tmp"));
                }
                if self.destructive {
                    problems.problem(format!("{at}.destructive"), "`destructive: true` with `dir`; a scratch file is not destructive, expected `target` for raw devices");
                }
            }
            (None, Some(target)) => {
                if !self.destructive {
                    problems.problem(format!("{at}.target"), "raw devices are overwritten and their data lost; expected `destructive: true` beside `target`");
                }
                match target {
                    DiskTarget::All => {}
                    DiskTarget::Path(path) | DiskTarget::Glob(path) => {
                        if !path.starts_with("/dev/") {
                            problems.problem(format!("{at}.target"), format!("{path:?} is not under /dev/; expected a block device like /dev/sdb"));
                        }
                    }
                    DiskTarget::Model(pattern) => problems.regex(format!("{at}.target.model"), pattern),
                }
            }
        }
        if let Some(depth) = self.queue_depth {
            if !(1..=256).contains(&depth) {
                problems.problem(
                    format!("{at}.queue_depth"),
                    format!(
                        "queue depth {depth} is out of range; expected 1 to 256 I/Os in flight"
                    ),
                );
            }
        }
        let block = self.block_size.bytes();
        if !block.is_multiple_of(4096) || block > 64 << 20 {
            problems.problem(format!("{at}.block_size"), format!("block size {} is not a multiple of 4KiB up to 64MiB; O_DIRECT needs aligned I/O", self.block_size));
        }
        if let SizeSpec::Fixed(size) = self.size {
            if size.bytes() < block {
                problems.problem(
                    format!("{at}.size"),
                    format!(
                        "size {size} is smaller than one block ({}); expected at least one block",
                        self.block_size
                    ),
                );
            }
        }
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
        /// Where to measure throughput: `collector` (its bandwidth endpoints), `peer` (another
        /// node the collector pairs this one with: both measure against each other at once),
        /// or an `http://` URL of `kiln-agent serve-bandwidth`. No throughput test when left
        /// out.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub target: Option<String>,
        /// With `target: peer`: a partner of the same rack (`same-rack`, the default) or of
        /// another rack (`other-rack`, to load the uplinks).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub peer: Option<PeerPolicy>,
        /// With `target: peer`: how long the node waits for a partner before the step fails
        /// with that reason (default 10m).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub pair_timeout: Option<HumanDuration>,
        /// With `target: peer`: where to measure instead when no partner comes within
        /// `pair_timeout` (`collector` or an `http://` URL). Left out, no partner is a fault.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub fallback: Option<String>,
        /// How long each throughput direction runs.
        #[serde(default = "default_nic_duration")]
        pub duration: HumanDuration,
        /// Which directions to measure.
        #[serde(default)]
        pub direction: Direction,
        /// Parallel TCP streams for the throughput test, 1 to 64 (one stream cannot fill a fast
        /// link). Left out: one per 10 Gb/s of the fastest link checked, at most one per CPU.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub streams: Option<u32>,
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

impl CheckSpec for NicCheck {
    fn own_duration(&self) -> Option<Duration> {
        self.target.as_ref().map(|_| {
            let one = self.duration.get();
            if self.direction == Direction::Both {
                one * 2
            } else {
                one
            }
        })
    }

    fn allowance(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        if let Some(names) = &self.interfaces {
            if names.is_empty() {
                problems.problem(format!("{at}.interfaces"), "an empty interface list; expected names, or leave the key out for every physical interface");
            }
            for (i, name) in names.iter().enumerate() {
                // Linux interface names are at most 15 bytes (IFNAMSIZ - 1) without '/' or spaces.
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                    problems.problem(format!("{at}.interfaces[{i}]"), format!("{name:?} is not an interface name; expected up to 15 characters without '/' or spaces"));
                }
            }
        }
        if let Some(streams) = self.streams {
            if !(1..=64).contains(&streams) {
                problems.problem(
                    format!("{at}.streams"),
                    format!("{streams} streams; expected 1 to 64"),
                );
            } else if self.target.is_none() {
                problems.problem(format!("{at}.streams"), "streams without a `target` to measure against; expected `target: collector` or a URL");
            }
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                problems.problem(
                    format!("{at}.mtu"),
                    format!("MTU {mtu}; expected 68 to 65535"),
                );
            }
        }
        if self.target.as_deref() != Some("peer") {
            for (field, set) in [
                ("peer", self.peer.is_some()),
                ("pair_timeout", self.pair_timeout.is_some()),
                ("fallback", self.fallback.is_some()),
            ] {
                if set {
                    problems.problem(
                        format!("{at}.{field}"),
                        format!("{field} without `target: peer`; it says how this node is paired"),
                    );
                }
            }
        }
        if let Some(fallback) = &self.fallback {
            if fallback != "collector"
                && !fallback.starts_with("http://")
                && !fallback.starts_with("https://")
            {
                problems.problem(
                    format!("{at}.fallback"),
                    format!("{fallback:?}; expected `collector` or an http:// URL (a node with no partner cannot fall back on a peer)"),
                );
            }
        }
        if let Some(target) = &self.target {
            if target != "collector"
                && target != "peer"
                && !target.starts_with("http://")
                && !target.starts_with("https://")
            {
                problems.problem(
                    format!("{at}.target"),
                    format!("{target:?}; expected `collector`, `peer` or an http:// URL"),
                );
            }
        } else if self.min_mbps.is_some() {
            problems.problem(format!("{at}.min_mbps"), "a throughput threshold without a `target` to measure against; expected `target: collector` or a URL");
        }
    }
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

impl Thresholds for ExecCheck {
    fn pass_limits(&self) -> Vec<(String, Limit)> {
        metric_limits(&self.metrics)
    }

    fn degraded_limits(&self) -> Vec<(String, Limit)> {
        metric_limits(&self.degraded)
    }

    fn pass_limits_under(&self) -> Option<&'static str> {
        Some("metrics")
    }
}

/// An exec step's ranges as limits named `metric.min` / `metric.max`.
fn metric_limits(ranges: &BTreeMap<String, MetricRange>) -> Vec<(String, Limit)> {
    ranges
        .iter()
        .flat_map(|(metric, range)| {
            range.limits(metric).into_iter().map(move |limit| {
                let field = match limit.bound {
                    Bound::Min => format!("{metric}.min"),
                    Bound::Max => format!("{metric}.max"),
                };
                (field, limit)
            })
        })
        .collect()
}

impl CheckSpec for ExecCheck {
    fn allowance(&self) -> Duration {
        Duration::from_secs(30 * 60)
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        match self.argv.first() {
            None => problems.problem(
                format!("{at}.argv"),
                "an empty command; expected the program and its arguments",
            ),
            Some(program) if program.is_empty() => problems.problem(
                format!("{at}.argv[0]"),
                "an empty program name; expected a path or a name on PATH",
            ),
            Some(_) => {}
        }
        if self.pass_codes.is_empty() {
            problems.problem(
                format!("{at}.pass_codes"),
                "no passing exit codes; expected at least one, usually [0]",
            );
        }
        for (tier, ranges) in [("metrics", &self.metrics), ("degraded", &self.degraded)] {
            for (metric, range) in ranges {
                if range.min.is_none() && range.max.is_none() {
                    problems.problem(
                        format!("{at}.{tier}.{metric}"),
                        "neither `min` nor `max`; expected at least one bound",
                    );
                }
                if let (Some(min), Some(max)) = (range.min, range.max) {
                    if min > max {
                        problems.problem(
                            format!("{at}.{tier}.{metric}"),
                            format!("min {min} is above max {max}; expected min ≤ max"),
                        );
                    }
                }
            }
        }
    }
}

check_kind! {
    /// The node left idle for `duration` while the watchers every step has stay on — machine
    /// checks, the BMC's event log, PCIe AER, the kernel log — and its temperature sensors are
    /// sampled each second: catches what shows once a load stops (a DIMM cooling down, a fan or
    /// PSU event, a sensor that never settles).
    pub struct WatchCheck {
        /// How long to watch.
        pub duration: HumanDuration,
    }
    /// Thresholds of a watch step.
    thresholds WatchThresholds {
        /// Highest temperature in °C any sensor may read during the step.
        max_temp_c,
    }
}

impl CheckSpec for WatchCheck {
    fn own_duration(&self) -> Option<Duration> {
        Some(self.duration.get())
    }
}

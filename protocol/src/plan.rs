//! From a parsed [`Suite`] to a checked [`Plan`]: the rules serde cannot express (one check
//! kind per step, unique names, timeouts that fit, sane thresholds, compilable regexes).
//!
//! Validation collects every problem with its document path, so a QA engineer sees them all
//! at once; a suite with any problem yields no plan at all.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::suite::{CHECK_KINDS, Expect, Memtest, Problems, Step, Suite};
pub use crate::suite::{Check, Problem};
use crate::units::HumanDuration;

/// Highest memtest86+ test number (6.10 numbers its tests 0 to 10).
pub const MEMTEST_MAX_TEST: u8 = 10;
/// Longest a step or suite name may be.
pub const MAX_NAME_LEN: usize = 64;

/// A step ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Position in the suite, from 0.
    pub index: usize,
    /// Unique name.
    pub name: String,
    /// Hard limit on the step's run time.
    pub timeout: Duration,
    /// What to run.
    pub check: Check,
    /// Thresholds the node may be unable to measure.
    pub optional: Vec<String>,
    /// Run again when it fails: the step's own, or the suite's.
    pub retest: Option<crate::suite::Retest>,
    /// Compare with peers: the step's own, or the suite's.
    pub compare_peers: Option<crate::suite::ComparePeers>,
    /// The `parallel:` group it runs in, when it is a member of one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// A `parallel:` group as its members carry it: its members are consecutive steps of the
/// plan, from `first`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The group's name (the written step's).
    pub name: String,
    /// Index of its first member.
    pub first: usize,
    /// How many members it has.
    pub members: usize,
    /// How long the members run together.
    pub duration: Duration,
    /// How a memory and a cpu member share the CPUs.
    pub cpus: crate::suite::CpuShare,
}

/// A suite that passed every rule: what the agent runs and the collector records.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The suite as written (defaults filled in).
    pub suite: Suite,
    /// The memtest86+ stage, when enabled.
    pub memtest: Option<Memtest>,
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Suite name.
    pub fn name(&self) -> &str {
        &self.suite.suite
    }

    /// What the bill of materials asks, if anything.
    pub fn expect(&self) -> Option<&Expect> {
        self.suite.expect.as_ref()
    }

    /// How long the plan's agent may stream to and from the collector's bandwidth endpoints:
    /// the longest timeout of a NIC step whose target is the collector. `None` when no step
    /// measures against the collector (its agent has no business there).
    pub fn collector_bandwidth(&self) -> Option<Duration> {
        self.steps
            .iter()
            .filter(
                |s| matches!(&s.check, Check::Nic(n) if n.target.as_deref() == Some("collector")),
            )
            .map(|s| s.timeout)
            .max()
    }

    /// Sum of the step timeouts, a `parallel:` group's counted once (its longest member's):
    /// the longest the Linux stage may take.
    pub fn steps_budget(&self) -> Duration {
        let mut groups: std::collections::BTreeMap<usize, Duration> = Default::default();
        let mut alone = Duration::ZERO;
        for s in &self.steps {
            match &s.group {
                Some(g) => {
                    let longest = groups.entry(g.first).or_default();
                    *longest = (*longest).max(s.timeout);
                }
                None => alone += s.timeout,
            }
        }
        alone + groups.values().sum::<Duration>()
    }

    /// Longest the whole verify cycle may take: steps, the memtest stage and every power
    /// cycle.
    pub fn budget(&self) -> Duration {
        self.steps_budget()
            + self
                .memtest
                .as_ref()
                .map_or(Duration::ZERO, |m| m.timeout.get())
            + self
                .suite
                .cycles
                .as_ref()
                .map_or(Duration::ZERO, |c| c.boot_timeout.get() * c.count)
    }
}

/// Checks every rule and builds the plan, or returns every problem found.
pub fn validate(suite: Suite) -> Result<Plan, Vec<Problem>> {
    let mut v = Problems::default();
    v.name("suite", &suite.suite);
    if suite.description.trim().is_empty() {
        v.problem(
            "description",
            "the description is empty; expected a sentence on what the suite is for",
        );
    }
    if let Some(expect) = &suite.expect {
        v.expect(expect);
    }
    if let Some(memtest) = &suite.memtest {
        v.memtest(memtest);
    }
    if let Some(sensors) = &suite.sensors {
        v.sensors(sensors);
    }
    if let Some(cycles) = &suite.cycles {
        v.cycles(cycles);
    }
    let retests = std::iter::once(("retest".to_owned(), suite.retest)).chain(
        suite
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("steps[{i}].retest"), s.retest)),
    );
    let peers = std::iter::once(("compare_peers".to_owned(), suite.compare_peers)).chain(
        suite
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("steps[{i}].compare_peers"), s.compare_peers)),
    );
    for (path, peers) in peers {
        let Some(p) = peers else { continue };
        if p.min_peers < 2 {
            v.problem(
                format!("{path}.min_peers"),
                format!("{} peers; expected at least 2 for a median", p.min_peers),
            );
        }
        if !(p.max_below_median_pct > 0.0 && p.max_below_median_pct < 100.0) {
            v.problem(
                format!("{path}.max_below_median_pct"),
                format!(
                    "{}%; expected a percentage above 0 and below 100",
                    p.max_below_median_pct
                ),
            );
        }
    }
    for (path, retest) in retests {
        if let Some(r) = retest {
            if !(2..=10).contains(&r.attempts) {
                v.problem(
                    format!("{path}.attempts"),
                    format!(
                        "{} attempts; expected 2 to 10 (the first and its retests)",
                        r.attempts
                    ),
                );
            }
        }
    }
    if suite.steps.is_empty() {
        v.problem("steps", "no steps; expected at least one step");
    }
    let mut planner = Planner {
        suite: &suite,
        names: HashMap::new(),
        steps: Vec::new(),
    };
    for (index, step) in suite.steps.iter().enumerate() {
        let at = format!("steps[{index}]");
        match &step.parallel {
            None => planner.step(&mut v, &at, step, None),
            Some(group) => planner.group(&mut v, &at, step, group),
        }
    }
    let steps = planner.steps;
    if !v.is_empty() {
        return Err(v.into_list());
    }
    let memtest = suite.memtest.clone().filter(|m| m.enabled);
    Ok(Plan {
        suite,
        memtest,
        steps,
    })
}

/// The plan's steps as they are checked: a group's members flattened into consecutive steps.
struct Planner<'a> {
    suite: &'a Suite,
    /// Every name taken, with where.
    names: HashMap<String, String>,
    steps: Vec<PlannedStep>,
}

impl Planner<'_> {
    /// Checks a step's name is well formed and not taken.
    fn name(&mut self, v: &mut Problems, at: &str, name: &str) {
        v.name(&format!("{at}.name"), name);
        match self.names.get(name) {
            Some(first) => v.problem(
                format!("{at}.name"),
                format!("duplicate step name {name:?} ({first} has it); expected unique names"),
            ),
            None => {
                self.names.insert(name.to_owned(), at.to_owned());
            }
        }
    }

    /// Checks one written step and plans it, as a member of `group` when given.
    fn step(&mut self, v: &mut Problems, at: &str, step: &Step, group: Option<&Group>) {
        self.name(v, at, &step.name);
        let Some(check) = v.step(at, step) else {
            return;
        };
        v.optional(at, &step.optional, &check);
        let single = step
            .timeout
            .map_or_else(|| check.default_timeout(), HumanDuration::get);
        let (check, timeout) = match group {
            // Its own run stretched to the group's, or runs repeated until then: either way
            // the group's time plus one run's margin.
            Some(g) => (check.lasting(g.duration), g.duration + single),
            None => (check, single),
        };
        self.steps.push(PlannedStep {
            index: self.steps.len(),
            name: step.name.clone(),
            timeout,
            check,
            optional: step.optional.clone(),
            retest: if group.is_some() {
                None
            } else {
                step.retest.or(self.suite.retest)
            },
            compare_peers: step.compare_peers.or(self.suite.compare_peers),
            group: group.cloned(),
        });
    }

    /// Checks a `parallel:` group and plans its members.
    fn group(&mut self, v: &mut Problems, at: &str, step: &Step, p: &crate::suite::Parallel) {
        self.name(v, at, &step.name);
        if let Some(kind) = step.kinds().first() {
            v.problem(
                format!("{at}.{kind}"),
                "a parallel group with a check kind; a step is one or the other",
            );
        }
        for (key, set, why) in [
            (
                "timeout",
                step.timeout.is_some(),
                "each member times out on its own (the group's duration plus its margin)",
            ),
            (
                "retest",
                step.retest.is_some(),
                "a group is not retested; its members run for the whole duration",
            ),
            (
                "optional",
                !step.optional.is_empty(),
                "a group has no thresholds; say it on the member",
            ),
        ] {
            if set {
                v.problem(
                    format!("{at}.{key}"),
                    format!("{key} on a parallel group: {why}; leave it out"),
                );
            }
        }
        let steps_at = format!("{at}.parallel.steps");
        if p.steps.len() < 2 {
            v.problem(
                &steps_at,
                format!(
                    "{} step(s); expected at least 2 (one step needs no group)",
                    p.steps.len()
                ),
            );
        }
        let group = Group {
            name: step.name.clone(),
            first: self.steps.len(),
            members: p.steps.len(),
            duration: p.duration.get(),
            cpus: p.cpus,
        };
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for (j, member) in p.steps.iter().enumerate() {
            let m_at = format!("{steps_at}[{j}]");
            if member.parallel.is_some() {
                v.problem(
                    format!("{m_at}.parallel"),
                    "a group inside a group; expected a step with one check kind",
                );
                continue;
            }
            if member.retest.is_some() {
                v.problem(
                    format!("{m_at}.retest"),
                    "a member of a group is not retested on its own; leave it out",
                );
            }
            for kind in member.kinds() {
                if ["memory", "cpu"].contains(&kind) {
                    if let Some(first) = kinds.insert(kind, j) {
                        v.problem(
                            format!("{m_at}.{kind}"),
                            format!("a second {kind} member ({steps_at}[{first}] is one); a group has at most one, its workers take the CPUs it is given"),
                        );
                    }
                }
            }
            self.step(v, &m_at, member, Some(&group));
        }
    }
}

impl Problems {
    fn sensors(&mut self, s: &crate::suite::Sensors) {
        let interval = s.interval.get();
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&interval) {
            self.problem(
                "sensors.interval",
                format!("{}; expected 1s to 60s", s.interval),
            );
        }
        for (key, value, range) in [
            ("max_inlet_c", s.max_inlet_c, -40.0..=150.0),
            ("max_cpu_c", s.max_cpu_c, -40.0..=150.0),
            ("max_dimm_c", s.max_dimm_c, -40.0..=150.0),
            ("min_fan_rpm", s.min_fan_rpm, 0.0..=100_000.0),
            ("max_psu_watts", s.max_psu_watts, 0.0..=100_000.0),
        ] {
            if let Some(v) = value.filter(|v| !range.contains(v)) {
                self.problem(
                    format!("sensors.{key}"),
                    format!("{v}; expected {} to {}", range.start(), range.end()),
                );
            }
        }
    }

    fn cycles(&mut self, c: &crate::suite::Cycles) {
        if !(1..=crate::suite::MAX_CYCLES).contains(&c.count) {
            self.problem(
                "cycles.count",
                format!(
                    "{} cycles; expected 1 to {}",
                    c.count,
                    crate::suite::MAX_CYCLES
                ),
            );
        }
        let timeout = c.boot_timeout.get();
        if !(Duration::from_secs(60)..=Duration::from_secs(2 * 3600)).contains(&timeout) {
            self.problem(
                "cycles.boot_timeout",
                format!("{}; expected 1m to 2h", c.boot_timeout),
            );
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._- ".contains(c));
        if name.trim().is_empty() {
            self.problem(path, "the name is empty; expected a short name");
        } else if name.len() > MAX_NAME_LEN {
            self.problem(
                path,
                format!(
                    "the name is {} characters long; expected at most {MAX_NAME_LEN}",
                    name.len()
                ),
            );
        } else if !ok_chars {
            self.problem(
                path,
                format!("{name:?} has characters outside letters, digits, space, '.', '_' and '-'"),
            );
        }
    }

    fn expect(&mut self, expect: &Expect) {
        if let Some(system) = &expect.system {
            for (field, value) in [("vendor", &system.vendor), ("product", &system.product)] {
                if let Some(pattern) = value {
                    self.regex(format!("expect.system.{field}"), pattern);
                }
            }
        }
        if let Some(cpu) = &expect.cpu {
            if let Some(model) = &cpu.model {
                self.regex("expect.cpu.model".into(), model);
            }
            if cpu.min_logical == Some(0) {
                self.problem(
                    "expect.cpu.min_logical",
                    "0 logical CPUs; expected at least 1",
                );
            }
            for (i, flag) in cpu.flags.iter().enumerate() {
                if flag.is_empty() || !flag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.problem(format!("expect.cpu.flags[{i}]"), format!("{flag:?} is not a CPU flag name; expected a /proc/cpuinfo flag like avx2"));
                }
            }
        }
        if let Some(part) = expect.memory.as_ref().and_then(|m| m.dimm_part.as_ref()) {
            self.regex("expect.memory.dimm_part".into(), part);
        }
        for (i, pcie) in expect.pcie.iter().enumerate() {
            let at = format!("expect.pcie[{i}]");
            if let Some(driver) = &pcie.driver {
                self.regex(format!("{at}.driver"), driver);
            }
            if let Some(class) = &pcie.class {
                if class.is_empty()
                    || class.len() > 6
                    || !class.chars().all(|c| c.is_ascii_hexdigit())
                {
                    self.problem(
                        format!("{at}.class"),
                        format!("{class:?} is not a class code prefix; expected hex digits like 02, 0200 or 0302"),
                    );
                }
            }
            if pcie.class.is_none() && pcie.driver.is_none() {
                self.problem(
                    at.clone(),
                    "selects no devices; expected `class`, `driver` or both",
                );
            }
            if pcie.count.is_none() && pcie.min_width.is_none() && pcie.min_speed_gts.is_none() {
                self.problem(
                    at,
                    "checks nothing; expected `count`, `min_width` or `min_speed_gts`",
                );
            }
        }
        for (i, disks) in expect.disks.iter().enumerate() {
            if let Some(model) = &disks.model {
                self.regex(format!("expect.disks[{i}].model"), model);
            }
        }
        for (i, nics) in expect.nics.iter().enumerate() {
            if let Some(driver) = &nics.driver {
                self.regex(format!("expect.nics[{i}].driver"), driver);
            }
        }
    }

    fn memtest(&mut self, memtest: &Memtest) {
        if memtest.passes == 0 || memtest.passes > 100 {
            self.problem(
                "memtest.passes",
                format!("{} passes; expected 1 to 100", memtest.passes),
            );
        }
        if memtest.stall_timeout > memtest.timeout {
            self.problem(
                "memtest.stall_timeout",
                format!(
                    "stall timeout {} is longer than the stage timeout {}; expected at most {}",
                    memtest.stall_timeout, memtest.timeout, memtest.timeout
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, test) in memtest.skip_tests.iter().enumerate() {
            if *test > MEMTEST_MAX_TEST {
                self.problem(format!("memtest.skip_tests[{i}]"), format!("test #{test} does not exist; expected a test number from 0 to {MEMTEST_MAX_TEST}"));
            } else if !seen.insert(*test) {
                self.problem(
                    format!("memtest.skip_tests[{i}]"),
                    format!("test #{test} is listed twice"),
                );
            }
        }
        if seen.len() > usize::from(MEMTEST_MAX_TEST) {
            self.problem(
                "memtest.skip_tests",
                "every test is skipped; expected at least one test to run",
            );
        }
    }

    fn step(&mut self, at: &str, step: &Step) -> Option<Check> {
        let kinds = step.kinds();
        let check = match kinds.as_slice() {
            [] => {
                self.problem(
                    at,
                    format!(
                        "no check kind; expected exactly one of {}",
                        CHECK_KINDS.join(", ")
                    ),
                );
                return None;
            }
            [_] => step.check()?,
            several => {
                self.problem(
                    format!("{at}.{}", several[1]),
                    format!(
                        "a step with {} check kinds ({}); expected exactly one per step",
                        several.len(),
                        several.join(", ")
                    ),
                );
                return None;
            }
        };
        let kind_path = format!("{at}.{}", check.kind());
        check.spec().validate(&kind_path, self);
        self.thresholds(&kind_path, &check);
        if let (Some(timeout), Some(own)) = (step.timeout, check.own_duration()) {
            if timeout.get() < own {
                let own = HumanDuration(own);
                self.problem(
                    format!("{at}.timeout"),
                    format!("timeout {timeout} is shorter than the step's own duration {own}; expected at least {own}"),
                );
            }
        }
        Some(check)
    }

    /// Each optional entry names a threshold the step sets, once.
    fn optional(&mut self, at: &str, optional: &[String], check: &Check) {
        let mut set: Vec<String> = check
            .pass_limits()
            .into_iter()
            .chain(check.degraded_limits())
            .map(|(field, _)| field)
            .collect();
        set.sort();
        set.dedup();
        for (i, name) in optional.iter().enumerate() {
            if !set.contains(name) {
                let expected = if set.is_empty() {
                    "this step sets no threshold".to_owned()
                } else {
                    format!(
                        "expected one of the thresholds this step sets: {}",
                        set.join(", ")
                    )
                };
                self.problem(
                    format!("{at}.optional[{i}]"),
                    format!("{name:?} is not a threshold of this step; {expected}"),
                );
            }
        }
        self.no_duplicates(&format!("{at}.optional"), optional, "threshold");
    }

    fn thresholds(&mut self, kind_path: &str, check: &Check) {
        let pass = check.pass_limits();
        let degraded = check.degraded_limits();
        let under = check.spec().pass_limits_under();
        for (tier, limits) in [(None, &pass), (Some("degraded"), &degraded)] {
            for (field, limit) in limits.iter() {
                let path = match (tier, under) {
                    (None, None) => format!("{kind_path}.{field}"),
                    (None, Some(under)) => format!("{kind_path}.{under}.{field}"),
                    (Some(tier), _) => format!("{kind_path}.{tier}.{field}"),
                };
                if !limit.value.is_finite() || limit.value < 0.0 {
                    self.problem(
                        path,
                        format!("threshold {} is not a number of zero or more", limit.value),
                    );
                } else if limit.metric.ends_with("_pct") && limit.value > 100.0 {
                    self.problem(
                        path,
                        format!(
                            "{}% is over 100%; expected a percentage from 0 to 100",
                            limit.value
                        ),
                    );
                }
            }
        }
        // A degraded tier only makes sense stricter than the pass tier.
        for (field, strict) in &degraded {
            let Some((_, loose)) = pass
                .iter()
                .find(|(_, l)| l.metric == strict.metric && l.bound == strict.bound)
            else {
                continue;
            };
            let weaker = match strict.bound {
                crate::suite::Bound::Min => strict.value < loose.value,
                crate::suite::Bound::Max => strict.value > loose.value,
            };
            if weaker {
                let word = match strict.bound {
                    crate::suite::Bound::Min => "at least",
                    crate::suite::Bound::Max => "at most",
                };
                self.problem(
                    format!("{kind_path}.degraded.{field}"),
                    format!(
                        "degraded threshold {} is looser than the pass threshold {}; expected {word} {}, since degraded is the stricter target",
                        strict.value, loose.value, loose.value
                    ),
                );
            }
        }
    }

    /// A problem at each item of `items` (the list at `at`) that repeats an earlier one.
    pub fn no_duplicates<T: PartialEq + std::fmt::Debug>(
        &mut self,
        at: &str,
        items: &[T],
        what: &str,
    ) {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                self.problem(
                    format!("{at}[{i}]"),
                    format!("{what} {item:?} is listed twice"),
                );
            }
        }
    }
}

impl Plan {
    /// One line for `suite check`: name, steps by kind, and the time budget.
    pub fn summary(&self) -> String {
        // A group's members as one entry: `combined: memory+cpu+disk`.
        let mut kinds: Vec<String> = Vec::new();
        for s in &self.steps {
            match &s.group {
                Some(g) if g.first != s.index => {
                    if let Some(last) = kinds.last_mut() {
                        *last = format!("{last}+{}", s.check.kind());
                    }
                }
                Some(g) => kinds.push(format!("{}: {}", g.name, s.check.kind())),
                None => kinds.push(s.check.kind().to_owned()),
            }
        }
        let version = self
            .suite
            .version
            .as_deref()
            .map(|v| format!(" v{v}"))
            .unwrap_or_default();
        let memtest = match &self.memtest {
            Some(m) => format!(
                "memtest {} pass{} ≤ {}",
                m.passes,
                if m.passes == 1 { "" } else { "es" },
                m.timeout
            ),
            None => "memtest off".to_owned(),
        };
        let cycles = self
            .suite
            .cycles
            .map(|c| format!(", {} {} power cycle(s)", c.count, c.kind.name()))
            .unwrap_or_default();
        format!(
            "suite {:?}{version}: {} step{} ({}), budget {} (steps {}, {memtest}{cycles})",
            self.name(),
            self.steps.len(),
            if self.steps.len() == 1 { "" } else { "s" },
            kinds.join(", "),
            HumanDuration(self.budget()),
            HumanDuration(self.steps_budget()),
        )
    }
}

//! The CPU check: known-answer workloads on every logical CPU, compared against reference
//! results computed once before the load starts, so a CPU that computes a wrong answer is
//! named (silent-data-corruption screening). Temperature, frequency and throttling are sampled
//! while it runs; per-core throughput shows a core much slower than its peers.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::suite::Workload;
use kiln_protocol::wire::{Fault, LogLevel};
use sha2::{Digest, Sha256};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{affinity, read_u64};
use crate::stop::Stop;

/// The CPU check kind.
pub struct Cpu;

/// Spread between the median and the slowest core that marks a step degraded when the suite
/// sets no `max_core_spread_pct` of its own.
const DEFAULT_DEGRADED_SPREAD_PCT: f64 = 25.0;
/// Mismatches described one by one.
const MAX_DETAILED: usize = 32;

impl CheckKind for Cpu {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Cpu(spec) = check else {
            return Err(wrong_kind("cpu", check));
        };
        let allowed = affinity::allowed_cpus();
        let cpus: Vec<usize> = match &spec.cpus {
            Some(list) => {
                let missing: Vec<String> = list
                    .iter()
                    .filter(|c| !allowed.contains(&(**c as usize)))
                    .map(u32::to_string)
                    .collect();
                if !missing.is_empty() {
                    anyhow::bail!(
                        "CPUs {} are not online or not allowed for this process",
                        missing.join(", ")
                    );
                }
                list.iter().map(|c| *c as usize).collect()
            }
            None => ctx.options.cpus.clone().unwrap_or(allowed),
        };
        let duration = spec.duration.get();
        ctx.observer.log(
            LogLevel::Info,
            &format!(
                "loading {} CPU(s) for {} with {}",
                cpus.len(),
                spec.duration,
                spec.workloads
                    .iter()
                    .map(|w| w.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let throttle_before = throttle_count(&cpus);
        let mut sampler = Sampler::new(&cpus);
        let engine = Engine::new(&spec.workloads);
        let run = engine.run(
            &cpus,
            duration,
            &ctx.stop,
            &NoInjection,
            &mut |elapsed, ops| {
                sampler.sample();
                let status = match sampler.max_temp {
                    Some(t) => format!("{ops:.0} it/s, {t:.0} °C"),
                    None => format!("{ops:.0} it/s"),
                };
                ctx.observer.progress(
                    (elapsed.as_secs_f64() / duration.as_secs_f64()).min(1.0),
                    &status,
                );
            },
        );
        let mut out = CheckOutput {
            faults: run.faults(),
            ..Default::default()
        };
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        out.metric(
            "ops_per_sec",
            run.per_cpu.iter().map(|c| c.iterations as f64).sum::<f64>() / secs,
            "it/s",
        );
        out.metric("mismatches", run.mismatch_count as f64, "");
        if let Some(spread) = run.spread_pct() {
            out.metric("core_spread_pct", spread, "%");
            let suite_sets_spread = spec.max_core_spread_pct.is_some()
                || spec
                    .degraded
                    .as_ref()
                    .is_some_and(|d| d.max_core_spread_pct.is_some());
            if !suite_sets_spread && spread > DEFAULT_DEGRADED_SPREAD_PCT {
                out.degraded.push(format!(
                    "slowest core is {spread:.0}% below the median (built-in target {DEFAULT_DEGRADED_SPREAD_PCT}%)"
                ));
            }
            if let Some(slow) = run.slowest() {
                ctx.observer.log(
                    LogLevel::Info,
                    &format!(
                        "slowest CPU {}: {:.1} it/s of its CPU time",
                        slow.cpu,
                        slow.rate()
                    ),
                );
            }
        }
        if let Some(t) = sampler.max_temp {
            out.metric("temp_c", t, "°C");
        } else {
            ctx.observer.log(
                LogLevel::Info,
                "no temperature sensors: temperature not measured",
            );
        }
        if let Some(mhz) = sampler.mean_freq_mhz() {
            out.metric("freq_mhz", mhz, "MHz");
        }
        if let (Some(before), Some(after)) = (throttle_before, throttle_count(&cpus)) {
            out.metric("throttle_events", after.saturating_sub(before) as f64, "");
        }
        Ok(out)
    }
}

/// A hook that may alter a workload's result before it is compared, for tests only.
pub trait Injection: Sync {
    /// Called with each result; may change it.
    fn corrupt(&self, cpu: usize, workload: Workload, iteration: u64, result: &mut [u8; 32]);
}

/// No corruption.
pub struct NoInjection;

impl Injection for NoInjection {
    fn corrupt(&self, _: usize, _: Workload, _: u64, _: &mut [u8; 32]) {}
}

/// A wrong answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuMismatch {
    /// Logical CPU that computed it.
    pub cpu: usize,
    /// Workload.
    pub workload: Workload,
    /// Iteration on that CPU.
    pub iteration: u64,
    /// Reference digest (hex).
    pub expected: String,
    /// Digest computed (hex).
    pub actual: String,
}

/// What one CPU's worker did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreLoad {
    /// Logical CPU.
    pub cpu: usize,
    /// Iterations completed.
    pub iterations: u64,
    /// CPU time the worker thread got, in seconds.
    pub cpu_secs: f64,
}

impl CoreLoad {
    /// Iterations per second of CPU time: the core's own speed, unaffected by other
    /// processes taking turns on it (wall-clock rates would blame the core for them).
    pub fn rate(&self) -> f64 {
        if self.cpu_secs > 0.0 {
            self.iterations as f64 / self.cpu_secs
        } else {
            0.0
        }
    }
}

/// What a CPU run did.
#[derive(Debug, Default)]
pub struct CpuRun {
    /// Per CPU: its number, iterations completed, and the CPU time its worker got.
    pub per_cpu: Vec<CoreLoad>,
    /// Wrong answers seen.
    pub mismatch_count: u64,
    /// The first wrong answers.
    pub mismatches: Vec<CpuMismatch>,
    /// Wall time.
    pub elapsed: Duration,
}

impl CpuRun {
    /// How far the slowest CPU falls below the median, in percent (two CPUs or more).
    pub fn spread_pct(&self) -> Option<f64> {
        if self.per_cpu.len() < 2 {
            return None;
        }
        let mut rates: Vec<f64> = self.per_cpu.iter().map(CoreLoad::rate).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        (median > 0.0).then(|| (median - rates[0]) / median * 100.0)
    }

    /// The CPU with the lowest rate.
    pub fn slowest(&self) -> Option<CoreLoad> {
        self.per_cpu
            .iter()
            .copied()
            .min_by(|a, b| a.rate().total_cmp(&b.rate()))
    }

    /// One fault per detailed mismatch, plus one counting the rest.
    pub fn faults(&self) -> Vec<Fault> {
        let mut faults: Vec<Fault> = self
            .mismatches
            .iter()
            .map(|m| {
                Fault::new(
                    "cpu.mismatch",
                    format!(
                        "CPU {} computed a wrong {} result on iteration {}: {} instead of {}",
                        m.cpu,
                        m.workload.name(),
                        m.iteration,
                        &m.actual[..16],
                        &m.expected[..16]
                    ),
                )
                .with("cpu", m.cpu)
                .with("workload", m.workload.name())
                .with("iteration", m.iteration)
                .with("expected", &m.expected)
                .with("actual", &m.actual)
            })
            .collect();
        let more = self
            .mismatch_count
            .saturating_sub(self.mismatches.len() as u64);
        if more > 0 {
            faults.push(
                Fault::new("cpu.mismatch", format!("… and {more} more wrong results"))
                    .with("count", more),
            );
        }
        faults
    }
}

/// Workloads with their reference results.
pub struct Engine {
    references: Vec<(Workload, [u8; 32])>,
}

impl Engine {
    /// Computes every workload's reference result once, on the calling thread.
    pub fn new(workloads: &[Workload]) -> Self {
        Self {
            references: workloads.iter().map(|w| (*w, compute(*w))).collect(),
        }
    }

    /// Loads every CPU in `cpus` for `duration` (or until stopped); `tick` is called about
    /// once a second with the elapsed time and the iterations per second so far.
    pub fn run(
        &self,
        cpus: &[usize],
        duration: Duration,
        stop: &Stop,
        injection: &dyn Injection,
        tick: &mut dyn FnMut(Duration, f64),
    ) -> CpuRun {
        let started = Instant::now();
        let counts: Vec<AtomicU64> = cpus.iter().map(|_| AtomicU64::new(0)).collect();
        let mismatch_count = AtomicU64::new(0);
        let mismatches = Mutex::new(Vec::new());
        let mut per_cpu = Vec::new();
        std::thread::scope(|scope| {
            let workers: Vec<_> = cpus
                .iter()
                .zip(&counts)
                .map(|(cpu, count)| {
                    let (mismatch_count, mismatches) = (&mismatch_count, &mismatches);
                    scope.spawn(move || {
                        let _ = affinity::pin_current_thread(*cpu);
                        let mut iteration = 0u64;
                        while started.elapsed() < duration && !stop.should_stop() {
                            for (workload, reference) in &self.references {
                                let mut result = compute(*workload);
                                injection.corrupt(*cpu, *workload, iteration, &mut result);
                                if result != *reference {
                                    mismatch_count.fetch_add(1, Ordering::Relaxed);
                                    let mut list =
                                        mismatches.lock().unwrap_or_else(|e| e.into_inner());
                                    if list.len() < MAX_DETAILED {
                                        list.push(CpuMismatch {
                                            cpu: *cpu,
                                            workload: *workload,
                                            iteration,
                                            expected: hex(reference),
                                            actual: hex(&result),
                                        });
                                    }
                                }
                                iteration += 1;
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        thread_cpu_secs()
                    })
                })
                .collect();
            while workers.iter().any(|w| !w.is_finished()) {
                std::thread::sleep(Duration::from_millis(500));
                let elapsed = started.elapsed();
                let total: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                tick(elapsed, total as f64 / elapsed.as_secs_f64().max(1e-9));
            }
            let secs: Vec<f64> = workers
                .into_iter()
                .map(|w| w.join().unwrap_or(0.0))
                .collect();
            per_cpu = cpus
                .iter()
                .zip(&counts)
                .zip(secs)
                .map(|((cpu, count), cpu_secs)| CoreLoad {
                    cpu: *cpu,
                    iterations: count.load(Ordering::Relaxed),
                    cpu_secs,
                })
                .collect();
        });
        CpuRun {
            per_cpu,
            mismatch_count: mismatch_count.into_inner(),
            mismatches: mismatches.into_inner().unwrap_or_default(),
            elapsed: started.elapsed(),
        }
    }
}

/// Runs one workload once (a few milliseconds) and digests its result.
pub fn compute(workload: Workload) -> [u8; 32] {
    let mut digest = Sha256::new();
    match workload {
        Workload::Integer => {
            // Multiply, add, rotate, divide and remainder chains; black_box keeps the
            // optimizer from folding the loop into a constant at build time.
            let mut x = std::hint::black_box(0x2545_F491_4F6C_DD1Du64);
            let mut acc = 0u64;
            for i in 1..=200_000u64 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                acc ^= x.rotate_left((i % 63) as u32);
                acc = acc.wrapping_add(x / (i | 1)).wrapping_add(x % (i + 7));
            }
            digest.update(acc.to_le_bytes());
        }
        Workload::Float => {
            let mut v = std::hint::black_box(0.5f64);
            let mut acc = 0.0f64;
            for i in 1..=100_000u32 {
                let f = f64::from(i);
                v = (v * 1.000_000_1 + f.sqrt()).sin() + (f * 1e-5).exp().ln_1p();
                acc += v * v / (1.0 + f.cbrt());
            }
            digest.update(acc.to_bits().to_le_bytes());
            digest.update(v.to_bits().to_le_bytes());
        }
        Workload::Vector => {
            // Loops the compiler turns into SIMD: lane-wise integer and float arithmetic.
            let mut a: Vec<u32> = (0..4096u32)
                .map(|i| std::hint::black_box(i.wrapping_mul(2_654_435_761)))
                .collect();
            let b: Vec<u32> = (0..4096u32).map(|i| i ^ 0x9E37_79B9).collect();
            let mut fa: Vec<f32> = (0..4096u32).map(|i| i as f32 * 0.25).collect();
            let fb: Vec<f32> = (0..4096u32).map(|i| 1.0 / (1.0 + i as f32)).collect();
            for round in 0..64u32 {
                for (x, y) in a.iter_mut().zip(&b) {
                    *x = x.wrapping_mul(*y | 1).wrapping_add(round) ^ (*x >> 7);
                }
                for (x, y) in fa.iter_mut().zip(&fb) {
                    *x = x.mul_add(0.999, *y) - (*x * 1e-3);
                }
            }
            for x in &a {
                digest.update(x.to_le_bytes());
            }
            for x in &fa {
                digest.update(x.to_bits().to_le_bytes());
            }
        }
        Workload::Hash => {
            let block: Vec<u8> = (0..65_536u32)
                .map(|i| (i.wrapping_mul(31) >> 3) as u8)
                .collect();
            let mut chained = [0u8; 32];
            for _ in 0..16 {
                let mut h = Sha256::new();
                h.update(chained);
                h.update(std::hint::black_box(&block));
                chained = h.finalize().into();
            }
            digest.update(chained);
        }
    }
    digest.finalize().into()
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    // SAFETY: timespec is plain data; zeroed is valid.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` outlives the call; the clock id is a constant the kernel knows.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sum of the kernel's thermal-throttle counters over `cpus`; `None` when the CPU has none.
fn throttle_count(cpus: &[usize]) -> Option<u64> {
    let mut any = false;
    let mut sum = 0;
    for cpu in cpus {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/thermal_throttle");
        for file in ["core_throttle_count", "package_throttle_count"] {
            if let Some(n) = read_u64(format!("{dir}/{file}")) {
                any = true;
                sum += n;
            }
        }
    }
    any.then_some(sum)
}

/// Samples temperatures (hwmon through sysinfo) and frequencies (cpufreq) while the load runs.
struct Sampler {
    cpus: Vec<usize>,
    components: Option<sysinfo::Components>,
    max_temp: Option<f64>,
    freq_sum: f64,
    freq_samples: u64,
}

impl Sampler {
    fn new(cpus: &[usize]) -> Self {
        Self {
            cpus: cpus.to_vec(),
            components: sysinfo::Components::new_with_refreshed_list().ok(),
            max_temp: None,
            freq_sum: 0.0,
            freq_samples: 0,
        }
    }

    fn sample(&mut self) {
        let Some(components) = self.components.as_mut() else {
            return self.sample_freq();
        };
        components.refresh(false);
        for c in components.iter() {
            if let Some(t) = c.temperature() {
                let t = f64::from(t);
                if t.is_finite() && t > 0.0 {
                    self.max_temp = Some(self.max_temp.map_or(t, |m| m.max(t)));
                }
            }
        }
        self.sample_freq();
    }

    fn sample_freq(&mut self) {
        for cpu in &self.cpus {
            if let Some(khz) = read_u64(format!(
                "/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"
            )) {
                self.freq_sum += khz as f64 / 1000.0;
                self.freq_samples += 1;
            }
        }
    }

    fn mean_freq_mhz(&self) -> Option<f64> {
        (self.freq_samples > 0).then(|| self.freq_sum / self.freq_samples as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::Interrupt;

    #[test]
    fn workloads_match_independent_references() {
        // Integer and Hash: the same computations written again in Python (arbitrary-precision
        // integers masked to 64 bits; hashlib), run once, their digests pinned here. Vector:
        // wrapping integer arithmetic and IEEE fused multiply-add are exactly specified, so its
        // digest is pinned too. Float goes through libm's sin/exp/cbrt, which may differ in the
        // last bit between C libraries: the check compares it only with a reference computed
        // on the same node, so here it must repeat and differ from the others.
        assert_eq!(
            hex(&compute(Workload::Integer)),
            "a08604f396cc1ce3bf9c3f177f673a19dca166b26999cde46842ff6f7282e165"
        );
        assert_eq!(
            hex(&compute(Workload::Hash)),
            "bd0e15bab5b84a39c8608c4a1f128546b3be2f88783bcd929c11fcafb44a901a"
        );
        assert_eq!(
            hex(&compute(Workload::Vector)),
            "beda9c55a381423d3d8db566eb5399a82ce1167b5412f94d8bfe06cf2b16e369"
        );
        let float = compute(Workload::Float);
        assert_eq!(float, compute(Workload::Float));
        for w in [Workload::Integer, Workload::Vector, Workload::Hash] {
            assert_ne!(float, compute(w), "{w:?}");
        }
    }

    struct FlipOnCpu(usize);

    impl Injection for FlipOnCpu {
        fn corrupt(&self, cpu: usize, workload: Workload, iteration: u64, result: &mut [u8; 32]) {
            if cpu == self.0 && workload == Workload::Integer && iteration == 0 {
                result[0] ^= 1;
            }
        }
    }

    #[test]
    fn a_wrong_answer_is_a_fault_naming_the_cpu() {
        let cpus = affinity::allowed_cpus();
        let target = *cpus.last().unwrap();
        let engine = Engine::new(&[Workload::Integer, Workload::Hash]);
        let stop = Stop::new(Duration::from_secs(30), Interrupt::new());
        let run = engine.run(
            &cpus,
            Duration::from_millis(300),
            &stop,
            &FlipOnCpu(target),
            &mut |_, _| {},
        );
        assert_eq!(run.mismatch_count, 1);
        let faults = run.faults();
        assert_eq!(faults.len(), 1);
        assert_eq!(faults[0].code, "cpu.mismatch");
        assert_eq!(faults[0].details["cpu"], target.to_string());
        assert!(faults[0].message.starts_with(&format!(
            "CPU {target} computed a wrong integer result on iteration 0"
        )));
    }

    #[test]
    fn a_clean_run_counts_iterations_on_every_cpu() {
        let cpus = affinity::allowed_cpus();
        let engine = Engine::new(&[Workload::Integer]);
        let stop = Stop::new(Duration::from_secs(30), Interrupt::new());
        let run = engine.run(
            &cpus,
            Duration::from_millis(200),
            &stop,
            &NoInjection,
            &mut |_, _| {},
        );
        assert_eq!(run.mismatch_count, 0);
        assert_eq!(run.per_cpu.len(), cpus.len());
        assert!(
            run.per_cpu
                .iter()
                .all(|c| c.iterations > 0 && c.cpu_secs > 0.0)
        );
    }

    #[test]
    fn spread_is_measured_against_the_median() {
        let run = CpuRun {
            per_cpu: [(0, 100), (1, 100), (2, 50)]
                .map(|(cpu, iterations)| CoreLoad {
                    cpu,
                    iterations,
                    cpu_secs: 1.0,
                })
                .to_vec(),
            ..Default::default()
        };
        assert_eq!(run.spread_pct(), Some(50.0));
        assert_eq!(run.slowest().map(|c| c.cpu), Some(2));
    }
}

//! The memory check: verified patterns over locked memory, one pinned worker per CPU.
//!
//! Each pattern is a function from word index to expected value. A *fill* sweep writes it with
//! non-temporal stores (so the traffic goes to DRAM, not just the cache); a *check* sweep reads
//! every word back and compares it, folding differences 64 words at a time and looking closer
//! only when a block differs. Every word written is read back and compared.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::suite::{MemoryCheck, Pattern};
use kiln_protocol::units::Size;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{affinity, locked::LockedRegion, pagemap::Pagemap};
use crate::stop::Stop;

/// The memory check kind.
pub struct Memory;

/// Words per unit of work between stop polls and progress updates (512 KiB).
const BLOCK_WORDS: usize = 1 << 16;
/// Mismatches described one by one; past this they are only counted.
const MAX_DETAILED: usize = 64;
/// Memory left to the kernel and the agent when a suite asks for all that is available.
const RESERVE_BYTES: u64 = 64 << 20;

impl CheckKind for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Memory(spec) = check else {
            return Err(wrong_kind("memory", check));
        };
        let available = mem_available()
            .ok_or_else(|| anyhow::anyhow!("cannot read MemAvailable from /proc/meminfo"))?;
        let usable = available.saturating_sub(RESERVE_BYTES);
        let wanted = spec.size.resolve(available);
        let bytes = wanted.min(usable);
        if bytes < wanted {
            ctx.observer.log(
                LogLevel::Warn,
                &format!(
                    "asked for {}, only {} can be spared; testing that",
                    Size(wanted),
                    Size(bytes)
                ),
            );
        }
        let mut region = LockedRegion::new(bytes as usize)
            .map_err(|err| anyhow::anyhow!("cannot map {} of memory: {err}", Size(bytes)))?;
        if !region.locked() {
            ctx.observer.log(
                LogLevel::Warn,
                &format!("could not lock {} (RLIMIT_MEMLOCK or no CAP_IPC_LOCK): testing unlocked memory, which the kernel may swap or move", Size(region.bytes() as u64)),
            );
        }
        let cpus = affinity::allowed_cpus();
        let threads = spec.threads.map_or(cpus.len(), |t| t as usize).max(1);
        let seed = spec.seed.unwrap_or_else(fresh_seed);
        ctx.observer.log(
            LogLevel::Info,
            &format!("testing {} on {threads} thread(s), random seed {seed:#018x} (replay with `seed: {seed}`)", Size(region.bytes() as u64)),
        );
        let edac_before = edac_counts();
        let run = Engine::new(spec, seed).run(
            &mut region,
            threads,
            &cpus,
            &ctx.stop,
            &|fraction, gbps| {
                ctx.observer.progress(fraction, &format!("{gbps:.1} GB/s"));
            },
            &NoInjection,
        );
        let mut out = CheckOutput {
            faults: run.faults(&Pagemap::open()),
            ..Default::default()
        };
        let secs = run.elapsed.as_secs_f64().max(1e-9);
        out.metric("gbps", run.traffic_bytes as f64 / secs / 1e9, "GB/s");
        out.metric("bytes_verified", run.verified_bytes as f64, "B");
        out.metric("mismatches", run.mismatch_count as f64, "");
        out.metric("passes", run.passes_done as f64, "");
        match (edac_before, edac_counts()) {
            (Some(before), Some(after)) => {
                out.metric("edac_corrected", after.ce.saturating_sub(before.ce) as f64, "");
                out.metric("edac_uncorrected", after.ue.saturating_sub(before.ue) as f64, "");
                for (dimm, ce, ue) in crate::hw::edac::grew(&before, &after) {
                    ctx.observer.log(
                        LogLevel::Warn,
                        &format!(
                            "EDAC: {} ({}): {ce} corrected, {ue} uncorrected errors during the step",
                            dimm.label, dimm.location
                        ),
                    );
                    if ue > 0 {
                        // An uncorrected memory error is a fault whatever the thresholds say.
                        out.faults.push(
                            Fault::new(
                                "memory.edac_uncorrected",
                                format!(
                                    "EDAC: {ue} uncorrected memory errors on {} ({}) during the step",
                                    dimm.label, dimm.location
                                ),
                            )
                            .with("dimm", &dimm.label),
                        );
                    }
                }
                if after.ue > before.ue && !out.faults.iter().any(|f| f.code == "memory.edac_uncorrected") {
                    out.faults.push(Fault::new(
                        "memory.edac_uncorrected",
                        format!(
                            "EDAC: {} uncorrected memory errors during the step (the driver names no DIMM)",
                            after.ue - before.ue
                        ),
                    ));
                }
            }
            _ => ctx.observer.log(
                LogLevel::Warn,
                "no EDAC memory controllers in sysfs (no EDAC driver for this platform): corrected/uncorrected counts not measured",
            ),
        }
        Ok(out)
    }
}

/// A hook between a fill and its check, for tests to corrupt memory on purpose. Production
/// code passes [`NoInjection`]; no suite field or flag reaches it.
pub trait Injection: Sync {
    /// Called after `pattern`'s fill sweep `sweep` wrote `words` (a worker's share).
    fn after_fill(&self, words: &mut [u64], pattern: Pattern, sweep: usize);
}

/// No corruption.
pub struct NoInjection;

impl Injection for NoInjection {
    fn after_fill(&self, _: &mut [u64], _: Pattern, _: usize) {}
}

/// One word that read back wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Virtual address of the word.
    pub address: u64,
    /// What was written.
    pub expected: u64,
    /// What was read.
    pub actual: u64,
    /// Pattern that found it.
    pub pattern: Pattern,
    /// Pass number, from 0.
    pub pass: u32,
    /// CPU the worker was pinned to.
    pub cpu: usize,
}

impl Mismatch {
    /// Bit positions that differ, ascending.
    pub fn flipped_bits(&self) -> Vec<u32> {
        let diff = self.expected ^ self.actual;
        (0..64).filter(|b| diff >> b & 1 == 1).collect()
    }
}

/// What a run of the engine did.
#[derive(Debug, Default)]
pub struct EngineRun {
    /// Bytes written plus bytes read and compared.
    pub traffic_bytes: u64,
    /// Bytes read and compared.
    pub verified_bytes: u64,
    /// Every mismatch seen.
    pub mismatch_count: u64,
    /// The first mismatches, in detail.
    pub mismatches: Vec<Mismatch>,
    /// Complete passes (the slowest worker's count).
    pub passes_done: u32,
    /// Wall time.
    pub elapsed: Duration,
}

impl EngineRun {
    /// One fault per detailed mismatch, plus one counting the rest.
    pub fn faults(&self, pagemap: &Pagemap) -> Vec<Fault> {
        let mut faults: Vec<Fault> = self
            .mismatches
            .iter()
            .map(|m| {
                let physical = pagemap.physical(m.address).map_or_else(|| "unknown".to_owned(), |p| format!("{p:#x}"));
                let bits: Vec<String> = m.flipped_bits().iter().map(u32::to_string).collect();
                Fault::new(
                    "memory.mismatch",
                    format!(
                        "{} pass {}: word at {:#x} (physical {physical}) read {:#018x}, expected {:#018x}; bit{} {} flipped",
                        pattern_name(m.pattern),
                        m.pass,
                        m.address,
                        m.actual,
                        m.expected,
                        if bits.len() == 1 { "" } else { "s" },
                        bits.join(", ")
                    ),
                )
                .with("virtual_address", format!("{:#x}", m.address))
                .with("physical_address", physical)
                .with("expected", format!("{:#018x}", m.expected))
                .with("actual", format!("{:#018x}", m.actual))
                .with("flipped_bits", bits.join(","))
                .with("pattern", pattern_name(m.pattern))
                .with("pass", m.pass)
                .with("cpu", m.cpu)
            })
            .collect();
        let more = self
            .mismatch_count
            .saturating_sub(self.mismatches.len() as u64);
        if more > 0 {
            faults.push(
                Fault::new(
                    "memory.mismatch",
                    format!("… and {more} more mismatched words"),
                )
                .with("count", more),
            );
        }
        faults
    }
}

/// Runs the patterns of a memory check over a region.
pub struct Engine {
    patterns: Vec<Pattern>,
    passes: u32,
    duration: Option<Duration>,
    seed: u64,
}

struct Shared<'a> {
    traffic: AtomicU64,
    verified: AtomicU64,
    mismatch_count: AtomicU64,
    mismatches: Mutex<Vec<Mismatch>>,
    stop: &'a Stop,
    started: Instant,
}

impl Engine {
    /// An engine for a check, with the seed for the random pattern.
    pub fn new(spec: &MemoryCheck, seed: u64) -> Self {
        Self {
            patterns: spec.patterns.clone(),
            passes: spec.passes.max(1),
            duration: spec.duration.map(|d| d.get()),
            seed,
        }
    }

    /// Bytes of traffic one pass moves over `bytes` of memory (for progress).
    fn traffic_per_pass(&self, bytes: u64) -> u64 {
        self.patterns
            .iter()
            .map(|p| sweeps_traffic(*p) * bytes)
            .sum()
    }

    /// Splits the region across `threads` workers pinned round-robin to `cpus` and runs every
    /// pattern, `passes` times or until the duration is up. `progress` gets (fraction, GB/s).
    pub fn run(
        &self,
        region: &mut LockedRegion,
        threads: usize,
        cpus: &[usize],
        stop: &Stop,
        progress: &(dyn Fn(f64, f64) + Sync),
        injection: &dyn Injection,
    ) -> EngineRun {
        let words = region.as_mut_slice();
        let total_bytes = (words.len() * 8) as u64;
        // Page-sized shares keep every worker's slice 16-byte aligned for streaming stores.
        let page_words = 512;
        let share = words.len().div_ceil(threads).div_ceil(page_words) * page_words;
        let shared = Shared {
            traffic: AtomicU64::new(0),
            verified: AtomicU64::new(0),
            mismatch_count: AtomicU64::new(0),
            mismatches: Mutex::new(Vec::new()),
            stop,
            started: Instant::now(),
        };
        let planned = self.traffic_per_pass(total_bytes) * u64::from(self.passes);
        let mut passes_done = u32::MAX;
        // The slowest worker's finish, not the poll loop's, so short runs are timed fairly.
        let mut elapsed = Duration::ZERO;
        std::thread::scope(|scope| {
            let workers: Vec<_> = words
                .chunks_mut(share.max(page_words))
                .enumerate()
                .map(|(i, chunk)| {
                    let cpu = cpus[i % cpus.len()];
                    let shared = &shared;
                    scope.spawn(move || {
                        // Unpinned work still tests memory; pinning only spreads the load.
                        let _ = affinity::pin_current_thread(cpu);
                        let passes = self.worker(chunk, cpu, shared, injection);
                        (passes, shared.started.elapsed())
                    })
                })
                .collect();
            while workers.iter().any(|w| !w.is_finished()) {
                std::thread::park_timeout(Duration::from_millis(200));
                let traffic = shared.traffic.load(Ordering::Relaxed);
                let elapsed = shared.started.elapsed();
                progress(
                    done_fraction(self.duration, elapsed, traffic, planned),
                    traffic as f64 / elapsed.as_secs_f64().max(1e-9) / 1e9,
                );
            }
            for worker in workers {
                let (done, finished) = worker.join().unwrap_or((0, shared.started.elapsed()));
                passes_done = passes_done.min(done);
                elapsed = elapsed.max(finished);
            }
        });
        EngineRun {
            traffic_bytes: shared.traffic.into_inner(),
            verified_bytes: shared.verified.into_inner(),
            mismatch_count: shared.mismatch_count.into_inner(),
            mismatches: shared.mismatches.into_inner().unwrap_or_default(),
            passes_done: if passes_done == u32::MAX {
                0
            } else {
                passes_done
            },
            elapsed,
        }
    }

    /// One worker's loop over its share; returns the passes it completed.
    fn worker(
        &self,
        words: &mut [u64],
        cpu: usize,
        shared: &Shared<'_>,
        injection: &dyn Injection,
    ) -> u32 {
        let mut pass = 0u32;
        loop {
            let more_passes = pass < self.passes;
            let more_time = self.duration.is_some_and(|d| shared.started.elapsed() < d);
            if !(more_passes || more_time) || shared.stop.should_stop() {
                return pass;
            }
            for pattern in &self.patterns {
                let mut sweep = Sweeper {
                    words: &mut *words,
                    cpu,
                    pass,
                    pattern: *pattern,
                    shared,
                    injection,
                };
                if !sweep.run(self.seed) {
                    return pass;
                }
            }
            pass += 1;
        }
    }
}

/// How far a run is, in [0, 1]. It ends when its passes are done *and* its duration is up, so
/// the fraction is the lesser of the two: a step with `duration: 150s` whose first pass took
/// ten seconds is at 7 %, not at 100 % for two minutes.
fn done_fraction(duration: Option<Duration>, elapsed: Duration, traffic: u64, planned: u64) -> f64 {
    let work = traffic as f64 / planned.max(1) as f64;
    let fraction = match duration {
        Some(d) if !d.is_zero() => work.min(elapsed.as_secs_f64() / d.as_secs_f64()),
        _ => work,
    };
    fraction.clamp(0.0, 1.0)
}

/// Traffic one run of a pattern moves, in multiples of the region size.
fn sweeps_traffic(pattern: Pattern) -> u64 {
    match pattern {
        Pattern::OwnAddress | Pattern::Checkerboard | Pattern::SolidBits => 4,
        Pattern::WalkingOnes | Pattern::WalkingZeros => 2 * WALK_SWEEPS as u64,
        Pattern::Random => 2,
        Pattern::MovingInversions => 6,
    }
}

/// Walking patterns run this many sweeps per pass, each shifting the walk by 64/WALK_SWEEPS
/// bits; successive passes shift it by one more, so every bit position is walked over passes.
const WALK_SWEEPS: usize = 4;

/// The YAML name of a pattern.
pub fn pattern_name(pattern: Pattern) -> &'static str {
    match pattern {
        Pattern::OwnAddress => "own-address",
        Pattern::WalkingOnes => "walking-ones",
        Pattern::WalkingZeros => "walking-zeros",
        Pattern::Checkerboard => "checkerboard",
        Pattern::SolidBits => "solid-bits",
        Pattern::Random => "random",
        Pattern::MovingInversions => "moving-inversions",
    }
}

/// SplitMix64: a counter-based generator, so the checker recomputes any word from its index.
#[inline(always)]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Sweeper<'a, 's> {
    words: &'a mut [u64],
    cpu: usize,
    pass: u32,
    pattern: Pattern,
    shared: &'a Shared<'s>,
    injection: &'a dyn Injection,
}

impl Sweeper<'_, '_> {
    /// Runs one pattern; false when stopped.
    fn run(&mut self, seed: u64) -> bool {
        let base = self.words.as_ptr() as u64;
        let pass = u64::from(self.pass);
        match self.pattern {
            Pattern::OwnAddress => {
                self.fill_check(0, &Func(move |i| base + 8 * i as u64))
                    && self.fill_check(1, &Func(move |i| !(base + 8 * i as u64)))
            }
            Pattern::WalkingOnes | Pattern::WalkingZeros => {
                let invert = if self.pattern == Pattern::WalkingZeros {
                    u64::MAX
                } else {
                    0
                };
                (0..WALK_SWEEPS).all(|sweep| {
                    let shift = (sweep * 64 / WALK_SWEEPS) as u64 + pass;
                    let table = Table::from_fn(|j| (1u64 << ((j as u64 + shift) % 64)) ^ invert);
                    self.fill_check(sweep, &table)
                })
            }
            Pattern::Checkerboard => {
                const A: u64 = 0x5555_5555_5555_5555;
                self.fill_check(0, &Table::from_fn(|j| if j % 2 == 0 { A } else { !A }))
                    && self.fill_check(1, &Table::from_fn(|j| if j % 2 == 0 { !A } else { A }))
            }
            Pattern::SolidBits => {
                self.fill_check(0, &Table::from_fn(|_| 0))
                    && self.fill_check(1, &Table::from_fn(|_| u64::MAX))
            }
            Pattern::Random => {
                let key = splitmix64(seed ^ (pass << 40)) ^ base;
                self.fill_check(0, &Func(move |i| mix64(key ^ i as u64)))
            }
            Pattern::MovingInversions => self.moving_inversions(
                1u64.rotate_left(self.pass % 64) | 0x8000_0000_0000_0000 >> (self.pass % 64),
            ),
        }
    }

    fn fill_check(&mut self, sweep: usize, source: &impl Words) -> bool {
        if !self.fill(source) {
            return false;
        }
        self.injection.after_fill(self.words, self.pattern, sweep);
        self.check(source)
    }

    /// Writes the pattern with streaming stores, a block at a time.
    fn fill(&mut self, source: &impl Words) -> bool {
        let len = self.words.len();
        let mut start = 0;
        while start < len {
            if self.shared.stop.should_stop() {
                return false;
            }
            let end = (start + BLOCK_WORDS).min(len);
            fill_block(source, &mut self.words[start..end], start);
            self.shared
                .traffic
                .fetch_add(((end - start) * 8) as u64, Ordering::Relaxed);
            start = end;
        }
        stream_fence();
        // The compiler must not assume it knows what memory holds now: the check reads it back.
        std::hint::black_box(self.words.as_mut_ptr());
        true
    }

    /// Reads every word back and compares it with the pattern.
    fn check(&mut self, source: &impl Words) -> bool {
        let len = self.words.len();
        let mut start = 0;
        while start < len {
            if self.shared.stop.should_stop() {
                return false;
            }
            let end = (start + BLOCK_WORDS).min(len);
            let block = &self.words[start..end];
            for first in scan(source, block, start) {
                let chunk = &self.words[first..(first + 64).min(end)];
                for (j, w) in chunk.iter().enumerate() {
                    let expected = source.at(first + j);
                    if *w != expected {
                        self.record(first + j, expected, *w);
                    }
                }
            }
            let bytes = ((end - start) * 8) as u64;
            self.shared.traffic.fetch_add(bytes, Ordering::Relaxed);
            self.shared.verified.fetch_add(bytes, Ordering::Relaxed);
            start = end;
        }
        true
    }

    /// memtest86's moving inversions: fill with p; ascending, check p and write !p; descending,
    /// check !p and write p; then check p once more.
    fn moving_inversions(&mut self, p: u64) -> bool {
        let solid = Table::from_fn(|_| p);
        if !self.fill(&solid) {
            return false;
        }
        self.injection.after_fill(self.words, self.pattern, 0);
        let len = self.words.len();
        for (want, write, ascending) in [(p, !p, true), (!p, p, false)] {
            let mut done = 0;
            while done < len {
                if self.shared.stop.should_stop() {
                    return false;
                }
                let n = BLOCK_WORDS.min(len - done);
                let range = if ascending {
                    done..done + n
                } else {
                    len - done - n..len - done
                };
                let offset = range.start;
                let bad = invert_block(&mut self.words[range], offset, want, write, ascending);
                for (i, seen) in bad {
                    self.record(i, want, seen);
                }
                let bytes = (n * 8) as u64;
                self.shared.traffic.fetch_add(2 * bytes, Ordering::Relaxed);
                self.shared.verified.fetch_add(bytes, Ordering::Relaxed);
                done += n;
            }
        }
        std::hint::black_box(self.words.as_mut_ptr());
        self.check(&solid)
    }

    #[cold]
    fn record(&self, index: usize, expected: u64, actual: u64) {
        self.shared.mismatch_count.fetch_add(1, Ordering::Relaxed);
        let mut list = self
            .shared
            .mismatches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if list.len() < MAX_DETAILED {
            list.push(Mismatch {
                address: self.words.as_ptr() as u64 + 8 * index as u64,
                expected,
                actual,
                pattern: self.pattern,
                pass: self.pass,
                cpu: self.cpu,
            });
        }
    }
}

/// Where a sweep's expected words come from. Blocks handed to it start at word indexes that
/// are multiples of 64, so periodic patterns can be a 64-word table the CPU streams from.
trait Words {
    /// The expected word at index `i` of the worker's share.
    fn at(&self, i: usize) -> u64;
    /// Writes the expected words of `block`, which starts at index `first`.
    fn fill(&self, block: &mut [u64], first: usize);
    /// OR of (read XOR expected) over `chunk`, which starts at `first`: zero when it matches.
    fn diff(&self, chunk: &[u64], first: usize) -> u64;
}

/// A pattern that repeats every 64 words.
struct Table([u64; 64]);

impl Table {
    fn from_fn(f: impl Fn(usize) -> u64) -> Self {
        Self(std::array::from_fn(f))
    }
}

impl Words for Table {
    fn at(&self, i: usize) -> u64 {
        self.0[i % 64]
    }

    #[inline(always)]
    fn fill(&self, block: &mut [u64], first: usize) {
        debug_assert_eq!(first % 64, 0);
        let mut groups = block.chunks_exact_mut(64);
        for group in &mut groups {
            stream_copy64(group, &self.0);
        }
        for (j, w) in groups.into_remainder().iter_mut().enumerate() {
            *w = self.0[j];
        }
    }

    #[inline(always)]
    fn diff(&self, chunk: &[u64], _first: usize) -> u64 {
        chunk
            .iter()
            .zip(&self.0)
            .fold(0, |acc, (w, t)| acc | (w ^ t))
    }
}

/// A pattern computed from the word index.
struct Func<F>(F);

impl<F: Fn(usize) -> u64> Words for Func<F> {
    fn at(&self, i: usize) -> u64 {
        (self.0)(i)
    }

    #[inline(always)]
    fn fill(&self, block: &mut [u64], first: usize) {
        // Compute a group into a small buffer (a loop the compiler vectorizes), then stream it.
        for (g, group) in block.chunks_mut(64).enumerate() {
            let at = first + g * 64;
            let values: [u64; 64] = std::array::from_fn(|j| (self.0)(at + j));
            stream_copy64(group, &values);
        }
    }

    #[inline(always)]
    fn diff(&self, chunk: &[u64], first: usize) -> u64 {
        chunk
            .iter()
            .enumerate()
            .fold(0, |acc, (j, w)| acc | (w ^ (self.0)(first + j)))
    }
}

/// A cheap, well-mixed hash of a word index. It multiplies 32-bit halves only, which SIMD
/// units do lane by lane, so generating the random pattern keeps up with memory.
#[inline(always)]
fn mix64(x: u64) -> u64 {
    let a = (x & 0xFFFF_FFFF).wrapping_mul(0x9E37_79B1);
    let b = (x >> 32).wrapping_mul(0x85EB_CA77);
    let y = a ^ b.rotate_left(32) ^ x;
    y ^ (y >> 29)
}

/// Writes the pattern into `block` (which starts at `first`), with AVX2 where present.
fn fill_block(source: &impl Words, block: &mut [u64], first: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of fill_avx2.
        return unsafe { fill_avx2(source, block, first) };
    }
    source.fill(block, first);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_avx2(source: &impl Words, block: &mut [u64], first: usize) {
    source.fill(block, first);
}

/// One moving-inversions step over a block: check each word holds `want` and write `write`,
/// walking up or down, 64 words at a time. Returns the (index, value) of words that differed.
fn invert_block(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of invert_avx2.
        return unsafe { invert_avx2(block, offset, want, write, ascending) };
    }
    invert_portable(block, offset, want, write, ascending)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn invert_avx2(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    invert_portable(block, offset, want, write, ascending)
}

#[inline(always)]
fn invert_portable(
    block: &mut [u64],
    offset: usize,
    want: u64,
    write: u64,
    ascending: bool,
) -> Vec<(usize, u64)> {
    let mut bad = Vec::new();
    let len = block.len();
    let groups = len.div_ceil(64);
    for g in 0..groups {
        let g = if ascending { g } else { groups - 1 - g };
        let start = g * 64;
        let group = &mut block[start..(start + 64).min(len)];
        let diff = group.iter().fold(0, |acc, w| acc | (w ^ want));
        if diff != 0 {
            bad.extend(
                group
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| **w != want)
                    .map(|(j, w)| (offset + start + j, *w)),
            );
        }
        if ascending {
            group.iter_mut().for_each(|w| *w = write);
        } else {
            group.iter_mut().rev().for_each(|w| *w = write);
        }
    }
    bad
}

/// Start indexes of the 64-word chunks of `block` (which starts at `first`) that differ from
/// the pattern. Reading is the slow half of a sweep, so this uses the widest loads the CPU has.
fn scan(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU was just seen to support AVX2, the only requirement of scan_avx2.
        return unsafe { scan_avx2(source, block, first) };
    }
    scan_portable(source, block, first)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    scan_portable(source, block, first)
}

#[inline(always)]
fn scan_portable(source: &impl Words, block: &[u64], first: usize) -> Vec<usize> {
    let mut bad = Vec::new();
    for (c, chunk) in block.chunks(64).enumerate() {
        let at = first + c * 64;
        if source.diff(chunk, at) != 0 {
            bad.push(at);
        }
    }
    bad
}

/// Copies a 64-word group from `table` with streaming stores where the CPU has them.
#[inline(always)]
fn stream_copy64(group: &mut [u64], table: &[u64; 64]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let dst = group.as_mut_ptr();
        if (dst as usize) % 16 == 0 && group.len() == 64 {
            for k in (0..64).step_by(2) {
                // SAFETY: SSE2 is part of x86_64; k + 1 < 64 keeps both pointers in bounds and
                // `dst + k` is 16-byte aligned because `dst` is and k is even.
                unsafe {
                    let v = _mm_loadu_si128(table.as_ptr().add(k).cast::<__m128i>());
                    _mm_stream_si128(dst.add(k).cast::<__m128i>(), v);
                }
            }
            return;
        }
    }
    group.copy_from_slice(&table[..group.len()]);
}

/// Orders streaming stores before the reads that check them.
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 (sfence) is part of x86_64 and the fence has no operands.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every EDAC memory controller's and DIMM's error counters.
fn edac_counts() -> Option<crate::hw::edac::Edac> {
    crate::hw::edac::read(std::path::Path::new("/sys/devices/system/edac/mc"))
}

/// A seed from the kernel's random pool, or the clock if that is unreadable.
pub fn fresh_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return u64::from_le_bytes(bytes);
    }
    splitmix64(crate::os::now_ms() ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::Interrupt;

    #[test]
    fn progress_of_a_step_with_a_duration_follows_the_clock_after_the_first_pass() {
        let secs = Duration::from_secs;
        // First pass done after 10 s of a 150 s step: 7 %, not 100 %.
        let f = done_fraction(Some(secs(150)), secs(10), 100, 100);
        assert!((f - 10.0 / 150.0).abs() < 1e-9, "{f}");
        // Time is up but the first pass is half done: the pass is what is left.
        assert_eq!(done_fraction(Some(secs(150)), secs(200), 50, 100), 0.5);
        assert_eq!(done_fraction(Some(secs(150)), secs(150), 300, 100), 1.0);
        // Without a duration: by work.
        assert_eq!(done_fraction(None, secs(999), 25, 100), 0.25);
        assert_eq!(done_fraction(Some(Duration::ZERO), secs(1), 25, 100), 0.25);
    }

    fn spec(patterns: &[Pattern]) -> MemoryCheck {
        let yaml = "{}";
        let mut spec: MemoryCheck = serde_yaml::from_str(yaml).unwrap();
        spec.patterns = patterns.to_vec();
        spec
    }

    fn run_with(
        patterns: &[Pattern],
        bytes: usize,
        threads: usize,
        injection: &dyn Injection,
    ) -> EngineRun {
        let mut region = LockedRegion::new(bytes).unwrap();
        let stop = Stop::new(Duration::from_secs(60), Interrupt::new());
        Engine::new(&spec(patterns), 42).run(
            &mut region,
            threads,
            &affinity::allowed_cpus(),
            &stop,
            &|_, _| {},
            injection,
        )
    }

    #[test]
    fn clean_memory_passes_every_pattern_and_counts_traffic() {
        let bytes = 4 << 20;
        let run = run_with(&Pattern::ALL, bytes, 2, &NoInjection);
        assert_eq!(run.mismatch_count, 0);
        assert_eq!(run.passes_done, 1);
        let per_pass: u64 = Pattern::ALL.iter().map(|p| sweeps_traffic(*p)).sum();
        assert_eq!(run.traffic_bytes, per_pass * bytes as u64);
    }

    /// Flips one bit of one word after the fill of the first sweep of `target`.
    struct FlipBit {
        target: Pattern,
        word: usize,
        bit: u32,
        done: Mutex<bool>,
    }

    impl Injection for FlipBit {
        fn after_fill(&self, words: &mut [u64], pattern: Pattern, sweep: usize) {
            let mut done = self.done.lock().unwrap();
            if pattern == self.target && sweep == 0 && !*done && self.word < words.len() {
                words[self.word] ^= 1 << self.bit;
                *done = true;
            }
        }
    }

    #[test]
    fn a_flipped_bit_is_found_by_every_pattern_with_its_address_and_bit() {
        for pattern in Pattern::ALL {
            let flip = FlipBit {
                target: pattern,
                word: 1000,
                bit: 13,
                done: Mutex::new(false),
            };
            let run = run_with(&[pattern], 1 << 20, 1, &flip);
            assert_eq!(run.mismatch_count, 1, "{pattern:?}");
            let m = &run.mismatches[0];
            assert_eq!(m.flipped_bits(), vec![13], "{pattern:?}");
            assert_eq!(m.pattern, pattern);
            assert_eq!(m.address % 8, 0);
            let faults = run.faults(&Pagemap::open());
            assert_eq!(faults.len(), 1);
            assert!(
                faults[0].message.contains("bit 13 flipped"),
                "{}",
                faults[0].message
            );
            assert_eq!(
                faults[0].details["virtual_address"],
                format!("{:#x}", m.address)
            );
            assert!(faults[0].details.contains_key("physical_address"));
        }
    }

    #[test]
    fn the_address_of_a_fault_is_the_corrupted_word() {
        struct Mark;
        impl Injection for Mark {
            fn after_fill(&self, words: &mut [u64], _: Pattern, sweep: usize) {
                if sweep == 0 {
                    words[77] ^= 0b101;
                }
            }
        }
        let mut region = LockedRegion::new(1 << 20).unwrap();
        let base = region.as_mut_slice().as_ptr() as u64;
        let stop = Stop::new(Duration::from_secs(60), Interrupt::new());
        let run = Engine::new(&spec(&[Pattern::SolidBits]), 1).run(
            &mut region,
            1,
            &[0],
            &stop,
            &|_, _| {},
            &Mark,
        );
        assert_eq!(run.mismatches[0].address, base + 77 * 8);
        assert_eq!(run.mismatches[0].flipped_bits(), vec![0, 2]);
    }

    #[test]
    fn a_stop_ends_the_run_early() {
        let interrupt = Interrupt::new();
        interrupt.trigger();
        let mut region = LockedRegion::new(1 << 20).unwrap();
        let stop = Stop::new(Duration::from_secs(60), interrupt);
        let run = Engine::new(&spec(&Pattern::ALL), 1).run(
            &mut region,
            1,
            &[0],
            &stop,
            &|_, _| {},
            &NoInjection,
        );
        assert_eq!(run.passes_done, 0);
        assert_eq!(run.traffic_bytes, 0);
    }

    #[test]
    fn splitmix_is_a_bijection_on_a_sample() {
        let mut seen: Vec<u64> = (0..10_000).map(splitmix64).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }
}

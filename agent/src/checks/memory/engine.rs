//! The memory test engine: the region split across pinned worker threads, each pattern swept
//! block by block (write, then read back and compare), every mismatch kept with its address,
//! expected and actual word.

use super::simd::{Func, Isa, Table, Words, fill_block, invert_block, mix64, scan, stream_fence};
use super::{
    AtomicU64, BLOCK_WORDS, Duration, Fault, Instant, LockedRegion, MAX_DETAILED, MemoryCheck,
    Mutex, Ordering, Pagemap, Pattern, Stop, WALK_SWEEPS, done_fraction, splitmix64,
    sweeps_traffic,
};
use crate::os::affinity;

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
                        m.pattern.name(),
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
                .with("pattern", m.pattern.name())
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
    isa: Isa,
}

pub(super) struct Shared<'a> {
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
            isa: Isa::detect(),
        }
    }

    /// The same engine on a narrower instruction set than the CPU's best (tests run every
    /// pattern on each one the CPU has; the benchmark compares them). A wider one than the CPU
    /// has is refused: `None`.
    pub fn with_isa(mut self, isa: Isa) -> Option<Self> {
        let rank = |i: Isa| match i {
            Isa::Baseline => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        };
        (rank(isa) <= rank(Isa::detect())).then(|| {
            self.isa = isa;
            self
        })
    }

    /// The instruction set the hot loops use.
    pub fn isa(&self) -> Isa {
        self.isa
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
        // Workers count themselves done and wake the progress loop, so a short run is not held
        // for the rest of a poll interval (`is_finished` lags the closure's return).
        let poller = std::thread::current();
        let finished_workers = AtomicU64::new(0);
        std::thread::scope(|scope| {
            let workers: Vec<_> = words
                .chunks_mut(share.max(page_words))
                .enumerate()
                .map(|(i, chunk)| {
                    let cpu = cpus[i % cpus.len()];
                    let shared = &shared;
                    let poller = poller.clone();
                    let finished_workers = &finished_workers;
                    scope.spawn(move || {
                        // Counted done even if the worker panics, so the loop below ends.
                        let _done = Finished(finished_workers, poller);
                        // Unpinned work still tests memory; pinning only spreads the load.
                        let _ = affinity::pin_current_thread(cpu);
                        let passes = self.worker(chunk, cpu, shared, injection);
                        (passes, shared.started.elapsed())
                    })
                })
                .collect();
            while finished_workers.load(Ordering::Acquire) < workers.len() as u64 {
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
                    isa: self.isa,
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

/// Counts a worker done and wakes the progress loop when dropped — on return or on panic.
struct Finished<'a>(&'a AtomicU64, std::thread::Thread);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
        self.1.unpark();
    }
}

pub(super) struct Sweeper<'a, 's> {
    isa: Isa,
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
                self.fill_check(0, &Func(move |i: u64| base + 8 * i))
                    && self.fill_check(1, &Func(move |i: u64| !(base + 8 * i)))
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
                self.fill_check(0, &Func(move |i| mix64(key ^ i)))
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
            fill_block(self.isa, source, &mut self.words[start..end], start);
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
            for first in scan(self.isa, source, block, start) {
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
                let bad = invert_block(
                    self.isa,
                    &mut self.words[range],
                    offset,
                    want,
                    write,
                    ascending,
                );
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

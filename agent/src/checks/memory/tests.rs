//! The memory engine and its patterns, with faults injected to prove each one is caught.

use super::simd::{Func, Table, Words, mix64};
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

/// Every instruction set this CPU can run the hot loops on, the best first.
fn isas() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2, Isa::Baseline]
        .into_iter()
        .filter(|isa| Engine::new(&spec(&[]), 0).with_isa(*isa).is_some())
        .collect()
}

fn run_on(
    isa: Isa,
    patterns: &[Pattern],
    bytes: usize,
    threads: usize,
    injection: &dyn Injection,
) -> (EngineRun, u64) {
    let mut region = LockedRegion::new(bytes).unwrap();
    let base = region.as_mut_slice().as_ptr() as u64;
    let stop = Stop::new(Duration::from_secs(60), Interrupt::new());
    let engine = Engine::new(&spec(patterns), 42).with_isa(isa).unwrap();
    let run = engine.run(
        &mut region,
        threads,
        &affinity::allowed_cpus(),
        &stop,
        &|_, _| {},
        injection,
    );
    (run, base)
}

#[test]
fn clean_memory_passes_every_pattern_on_every_instruction_set_and_counts_traffic() {
    assert_eq!(isas()[0], Isa::detect());
    assert_eq!(isas().last(), Some(&Isa::Baseline));
    let bytes = 4 << 20;
    for isa in isas() {
        let (run, _) = run_on(isa, &Pattern::ALL, bytes, 2, &NoInjection);
        assert_eq!(run.mismatch_count, 0, "{isa:?}");
        assert_eq!(run.passes_done, 1);
        let per_pass: u64 = Pattern::ALL.iter().map(|p| sweeps_traffic(*p)).sum();
        assert_eq!(run.traffic_bytes, per_pass * bytes as u64);
    }
}

#[test]
fn a_line_of_a_pattern_is_its_eight_words() {
    // The vector loops write and compare lines; faults are described word by word with `at`.
    // Both must be the same pattern.
    let table = Table::from_fn(|j| (j as u64).wrapping_mul(0x0101_0101_0101_0101));
    let random = Func(|i| mix64(0xDEAD_BEEF ^ i));
    let address = Func(|i| 0x7F00_0000_0000 + 8 * i);
    for i in (0..4096).step_by(8) {
        for (name, words) in [
            ("table", &table as &dyn Words),
            ("random", &random),
            ("address", &address),
        ] {
            let line = words.line(&std::array::from_fn(|j| (i + j) as u64));
            for (j, w) in line.iter().enumerate() {
                assert_eq!(*w, words.at(i + j), "{name} word {}", i + j);
            }
        }
    }
    // The random pattern's words differ from their neighbours and across the key.
    let mut seen: Vec<u64> = (0..4096).map(|i| random.at(i)).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 4096);
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
fn a_flipped_bit_is_found_by_every_pattern_on_every_instruction_set_with_its_address_and_bit() {
    // Small, so 63 runs stay quick in a debug build; still many lines and groups.
    let bytes = 64 << 10;
    let words = bytes / 8;
    // A word inside, the first and the last: the vector loops' edges are where a word is lost.
    for (isa, pattern, word) in isas().into_iter().flat_map(|isa| {
        Pattern::ALL
            .into_iter()
            .flat_map(move |p| [(isa, p, 1000), (isa, p, 0), (isa, p, words - 1)])
    }) {
        let flip = FlipBit {
            target: pattern,
            word,
            bit: 13,
            done: Mutex::new(false),
        };
        let (run, base) = run_on(isa, &[pattern], bytes, 1, &flip);
        assert_eq!(run.mismatch_count, 1, "{isa:?} {pattern:?} word {word}");
        let m = &run.mismatches[0];
        assert_eq!(m.flipped_bits(), vec![13], "{pattern:?}");
        assert_eq!(
            m.address,
            base + 8 * word as u64,
            "{isa:?} {pattern:?} word {word}"
        );
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

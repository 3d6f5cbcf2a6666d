//! Memory check throughput against the machine's ceiling and against memtester, side by side
//! in one run, on one region.
//!
//! Counting, the same for all: bytes written plus bytes read (and, for the checkers,
//! compared).
//! - **Ceiling probe**: the simplest write-then-verify loop there is — each thread streams its
//!   share's own addresses with the widest non-temporal store the CPU has (AVX-512, AVX2 or
//!   SSE2, chosen at run time), then reads the share back with the widest loads and compares.
//! - **kiln**: every pattern alone, then all patterns in one run, as a suite runs them.
//! - **memtester**: its Stuck Address test (always on, 16 × write+read of the region) plus
//!   Solid Bits and Checkerboard (MEMTESTER_TEST_MASK; each 64 × write+read): 288 × the
//!   region. memtester is single-threaded, so its best configuration on N CPUs is N processes
//!   side by side, each on 1/N of the region; both that and one process are measured.
//!
//! KILN_BENCH_ISA=avx2 or sse2 runs probe and kiln on that narrower instruction set.
//! Each figure is the median of three rounds; a round runs the probe and every kiln run in turn. Run: `cargo bench -p kiln-agent --bench memory`
//! (KILN_BENCH_MIB sets the size, default 512).

use std::time::{Duration, Instant};

use kiln_agent::checks::memory::{Engine, Isa, NoInjection};
use kiln_agent::os::{affinity, locked::LockedRegion};
use kiln_agent::stop::{Interrupt, Stop};
use kiln_protocol::suite::{MemoryCheck, Pattern};

const ROUNDS: usize = 3;

fn main() {
    let mib: usize = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = mib << 20;
    let cpus = affinity::allowed_cpus();
    let threads = cpus.len();
    // KILN_BENCH_ISA=avx2|sse2 measures a narrower machine on this one (probe and kiln alike).
    let isa = match std::env::var("KILN_BENCH_ISA").as_deref() {
        Ok("avx2") => Isa::Avx2,
        Ok("sse2") => Isa::Baseline,
        _ => Isa::detect(),
    };
    let mut region = LockedRegion::new(bytes).expect("map the region");
    println!(
        "region {mib} MiB ({} MiB on huge pages), {threads} thread(s), {} stores",
        region.huge_bytes().unwrap_or(0) >> 20,
        isa.name()
    );

    // Rounds interleave the probe and every kiln run, so a change in what the host's memory
    // gives (a neighbour's load on a shared machine) touches all figures alike.
    let stop = Stop::new(Duration::from_secs(3600), Interrupt::new());
    let mut spec: MemoryCheck = serde_yaml::from_str("{}").expect("default memory check");
    let mut probes = Vec::new();
    let mut patterns = vec![Vec::new(); Pattern::ALL.len()];
    let mut alls = Vec::new();
    for _ in 0..ROUNDS {
        probes.push(probe(isa, region.as_mut_slice(), &cpus));
        for (pattern, rates) in Pattern::ALL.iter().zip(&mut patterns) {
            spec.patterns = vec![*pattern];
            rates.push(kiln(isa, &spec, &mut region, &cpus, &stop));
        }
        spec.patterns = Pattern::ALL.to_vec();
        alls.push(kiln(isa, &spec, &mut region, &cpus, &stop));
    }
    let ceiling = median(&mut probes);
    println!(
        "ceiling probe (write-then-verify, {}):  {ceiling:>6.1} GB/s",
        isa.name()
    );
    let mut lowest = f64::MAX;
    for (pattern, rates) in Pattern::ALL.iter().zip(&mut patterns) {
        let rate = median(rates);
        lowest = lowest.min(rate / ceiling);
        println!(
            "  kiln {:<18} {rate:>6.1} GB/s  {:.2} of the ceiling",
            pattern.name(),
            rate / ceiling
        );
    }
    let all = median(&mut alls);
    println!(
        "kiln memory check, all patterns:        {all:>6.1} GB/s  {:.2} of the ceiling",
        all / ceiling
    );
    drop(region);

    let one = memtester(mib, 1);
    let per_cpu = memtester(mib, threads);
    for (label, rate) in [
        ("memtester, 1 process".to_owned(), one),
        (format!("memtester, {threads} processes"), per_cpu),
    ] {
        match rate {
            Some(mt) => println!("{label:<39} {mt:>6.1} GB/s"),
            None => println!("{label:<39}    n/a"),
        }
    }
    println!(
        "ratio kiln / ceiling probe: {:.2} all patterns (target >= 0.85), lowest pattern {lowest:.2} (target >= 0.70)",
        all / ceiling
    );
    match one.into_iter().chain(per_cpu).reduce(f64::max) {
        Some(best) => println!(
            "ratio kiln / memtester at its best: {:.2}x (target >= 3x; against one process {:.2}x)",
            all / best,
            one.map_or(f64::NAN, |mt| all / mt)
        ),
        None => {
            println!("memtester not installed: `apt-get install memtester` for the peer comparison")
        }
    }
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

fn median(runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn kiln(
    isa: Isa,
    spec: &MemoryCheck,
    region: &mut LockedRegion,
    cpus: &[usize],
    stop: &Stop,
) -> f64 {
    let engine = Engine::new(spec, 1)
        .with_isa(isa)
        .expect("this CPU runs the instruction set asked for");
    let run = engine.run(region, cpus.len(), cpus, stop, &|_, _| {}, &NoInjection);
    assert_eq!(run.mismatch_count, 0, "clean memory must verify");
    gbps(run.traffic_bytes, run.elapsed)
}

/// The ceiling: every thread writes its share's addresses with non-temporal stores, then reads
/// them back and compares. Bytes written plus bytes read per second.
fn probe(isa: Isa, words: &mut [u64], cpus: &[usize]) -> f64 {
    // Page-sized shares, as the engine's, so every share is 64-byte aligned.
    let share = words.len().div_ceil(cpus.len()).div_ceil(512) * 512;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, chunk) in words.chunks_mut(share).enumerate() {
            let cpu = cpus[i % cpus.len()];
            scope.spawn(move || {
                let _ = affinity::pin_current_thread(cpu);
                // SAFETY: each function's instruction set was detected on this CPU by
                // `Isa::detect`; the chunk is 64-byte aligned and a whole number of lines.
                let bad = unsafe {
                    match isa {
                        Isa::Avx512 => probe_avx512(chunk),
                        Isa::Avx2 => probe_avx2(chunk),
                        Isa::Baseline => probe_sse2(chunk),
                    }
                };
                assert!(!bad, "the ceiling probe read back a wrong word");
            });
        }
    });
    gbps(2 * (words.len() * 8) as u64, started.elapsed())
}

#[target_feature(enable = "avx512f")]
unsafe fn probe_avx512(share: &mut [u64]) -> bool {
    use std::arch::x86_64::*;
    let first = _mm512_add_epi64(
        _mm512_set1_epi64(share.as_ptr() as i64),
        _mm512_setr_epi64(0, 8, 16, 24, 32, 40, 48, 56),
    );
    let step = _mm512_set1_epi64(64);
    let mut v = first;
    for line in share.chunks_exact_mut(8) {
        // SAFETY: a 64-byte-aligned line of 8 writable words.
        unsafe { _mm512_stream_si512(line.as_mut_ptr().cast(), v) };
        v = _mm512_add_epi64(v, step);
    }
    _mm_sfence();
    let mut v = first;
    let mut bad = 0u8;
    for line in share.chunks_exact(8) {
        // SAFETY: a 64-byte-aligned line of 8 readable words.
        let got = unsafe { _mm512_load_si512(line.as_ptr().cast()) };
        bad |= _mm512_cmpneq_epi64_mask(got, v);
        v = _mm512_add_epi64(v, step);
    }
    bad != 0
}

#[target_feature(enable = "avx2")]
unsafe fn probe_avx2(share: &mut [u64]) -> bool {
    use std::arch::x86_64::*;
    let first = _mm256_add_epi64(
        _mm256_set1_epi64x(share.as_ptr() as i64),
        _mm256_setr_epi64x(0, 8, 16, 24),
    );
    let step = _mm256_set1_epi64x(32);
    let mut v = first;
    for half in share.chunks_exact_mut(4) {
        // SAFETY: a 32-byte-aligned run of 4 writable words.
        unsafe { _mm256_stream_si256(half.as_mut_ptr().cast(), v) };
        v = _mm256_add_epi64(v, step);
    }
    _mm_sfence();
    let mut v = first;
    let mut bad = _mm256_setzero_si256();
    for half in share.chunks_exact(4) {
        // SAFETY: a 32-byte-aligned run of 4 readable words.
        let got = unsafe { _mm256_load_si256(half.as_ptr().cast()) };
        bad = _mm256_or_si256(bad, _mm256_xor_si256(got, v));
        v = _mm256_add_epi64(v, step);
    }
    _mm256_testz_si256(bad, bad) == 0
}

#[target_feature(enable = "sse2")]
unsafe fn probe_sse2(share: &mut [u64]) -> bool {
    use std::arch::x86_64::*;
    let first = _mm_add_epi64(_mm_set1_epi64x(share.as_ptr() as i64), _mm_set_epi64x(8, 0));
    let step = _mm_set1_epi64x(16);
    let mut v = first;
    for pair in share.chunks_exact_mut(2) {
        // SAFETY: a 16-byte-aligned pair of writable words.
        unsafe { _mm_stream_si128(pair.as_mut_ptr().cast(), v) };
        v = _mm_add_epi64(v, step);
    }
    _mm_sfence();
    let mut v = first;
    let mut bad = _mm_setzero_si128();
    for pair in share.chunks_exact(2) {
        // SAFETY: a 16-byte-aligned pair of readable words.
        let got = unsafe { _mm_load_si128(pair.as_ptr().cast()) };
        bad = _mm_or_si128(bad, _mm_xor_si128(got, v));
        v = _mm_add_epi64(v, step);
    }
    _mm_movemask_epi8(_mm_cmpeq_epi8(bad, _mm_setzero_si128())) != 0xFFFF
}

/// memtester on `mib` MiB split over `processes` processes running side by side; the traffic
/// of all of them over the wall time of the slowest. `None` when it is not installed or fails.
fn memtester(mib: usize, processes: usize) -> Option<f64> {
    let each = mib / processes;
    let mut runs = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let children: Vec<_> = (0..processes)
            .map(|_| {
                std::process::Command::new("memtester")
                    .env("MEMTESTER_TEST_MASK", ((1u32 << 8) | (1 << 10)).to_string())
                    .args([format!("{each}M"), "1".to_owned()])
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .ok()
            })
            .collect::<Option<_>>()?;
        for child in children {
            let out = child.wait_with_output().ok()?;
            if !out.status.success() {
                eprintln!("memtester failed: {}", String::from_utf8_lossy(&out.stdout));
                return None;
            }
        }
        runs.push(gbps(
            288 * (((each * processes) as u64) << 20),
            started.elapsed(),
        ));
    }
    Some(median(&mut runs))
}

//! Memory check throughput vs memtester and a STREAM-like copy, side by side in one run.
//!
//! Counting, the same for all three: bytes written plus bytes read (and, for the checkers,
//! compared). memtester runs its Stuck Address test (always on, 16 × write+read of the
//! region) plus Solid Bits and Checkerboard (MEMTESTER_TEST_MASK; each 64 × write+read):
//! 288 × the region. Run: `cargo bench -p kiln-agent --bench memory` (KILN_BENCH_MIB sets
//! the size, default 512).

use std::time::{Duration, Instant};

use kiln_agent::checks::memory::{Engine, NoInjection};
use kiln_agent::os::{affinity, locked::LockedRegion};
use kiln_agent::stop::{Interrupt, Stop};
use kiln_protocol::suite::{MemoryCheck, Pattern};

fn main() {
    let mib: usize = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let bytes = mib << 20;
    let cpus = affinity::allowed_cpus();
    let threads = cpus.len();
    println!(
        "region {mib} MiB, {threads} thread(s) for kiln and the copy loop; memtester is single-threaded"
    );

    let mut region = LockedRegion::new(bytes).expect("map the region");
    let stop = Stop::new(Duration::from_secs(3600), Interrupt::new());
    let mut spec: MemoryCheck = serde_yaml::from_str("{}").expect("default memory check");
    for pattern in Pattern::ALL {
        spec.patterns = vec![pattern];
        let run =
            Engine::new(&spec, 1).run(&mut region, threads, &cpus, &stop, &|_, _| {}, &NoInjection);
        println!(
            "  kiln {:<18} {:>6.1} GB/s",
            pattern.name(),
            gbps(run.traffic_bytes, run.elapsed)
        );
    }
    spec.patterns = Pattern::ALL.to_vec();
    let run =
        Engine::new(&spec, 1).run(&mut region, threads, &cpus, &stop, &|_, _| {}, &NoInjection);
    let kiln = gbps(run.traffic_bytes, run.elapsed);
    assert_eq!(run.mismatch_count, 0, "clean memory must verify");
    println!("kiln memory check, all patterns:   {kiln:>6.1} GB/s");

    let copy = stream_copy(region.as_mut_slice(), threads, &cpus);
    println!("STREAM-like copy:                  {copy:>6.1} GB/s");
    drop(region);

    match memtester(mib) {
        Some(mt) => {
            println!("memtester (stuck addr + solid + checkerboard): {mt:>6.1} GB/s");
            println!("ratio kiln / memtester: {:.2}x (target >= 3x)", kiln / mt);
        }
        None => {
            println!("memtester not installed: `apt-get install memtester` for the peer comparison")
        }
    }
    println!("ratio kiln / copy loop: {:.2}x (target >= 1x)", kiln / copy);
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// Copies the first half of each thread's share onto its second half, five times; counts
/// bytes read plus bytes written.
fn stream_copy(words: &mut [u64], threads: usize, cpus: &[usize]) -> f64 {
    let share = words.len().div_ceil(threads);
    let rounds = 5;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, chunk) in words.chunks_mut(share).enumerate() {
            let cpu = cpus[i % cpus.len()];
            scope.spawn(move || {
                let _ = affinity::pin_current_thread(cpu);
                let half = chunk.len() / 2;
                let (a, b) = chunk.split_at_mut(half);
                for _ in 0..rounds {
                    b[..half].copy_from_slice(a);
                    std::hint::black_box(&mut *b);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    gbps((words.len() / 2 * 8 * 2 * rounds) as u64, elapsed)
}

fn memtester(mib: usize) -> Option<f64> {
    let started = Instant::now();
    let out = std::process::Command::new("memtester")
        .env("MEMTESTER_TEST_MASK", ((1u32 << 8) | (1 << 10)).to_string())
        .args([format!("{mib}M"), "1".to_owned()])
        .output()
        .ok()?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        eprintln!("memtester failed: {}", String::from_utf8_lossy(&out.stdout));
        return None;
    }
    Some(gbps(288 * ((mib as u64) << 20), elapsed))
}

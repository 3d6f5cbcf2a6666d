//! Disk check throughput against fio at its best, on the same file, size, block size and
//! direct I/O, in one run.
//!
//! Both write every block sequentially, flush, then read every block back and verify it.
//! fio (`--rw=write --verify=crc32c --do_verify=1 --direct=1 --end_fsync=1`) runs with libaio
//! and io_uring at queue depths 1, 8, 16 and 32; the best of those is the peer's figure. kiln
//! runs at the queue depth it chooses for the device (as a suite without `queue_depth` would),
//! and at each fixed depth for reference. The figure is bytes written plus bytes read, over
//! the time spent writing (flush included) and reading. Runs alternate between the tools,
//! twice over, and each figure is the better of its two runs.
//! Run: `cargo bench -p kiln-agent --bench disk` (KILN_BENCH_DIR, KILN_BENCH_MIB to change the
//! place and the size; default: target/, 1024 MiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_agent::checks::disk::{Job, NoInjection, default_queue_depth, disk_of_path};
use kiln_agent::stop::{Interrupt, Stop};

const BLOCK: usize = 1 << 20;
const DEPTHS: [usize; 4] = [1, 8, 16, 32];

fn main() {
    let mib: u64 = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::var("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let path = dir.join("kiln-disk-bench.bin");
    let device = disk_of_path(&dir);
    let (chosen, why) = default_queue_depth("/sys", device.as_deref(), BLOCK);
    println!(
        "file {}, {mib} MiB, 1 MiB blocks, O_DIRECT; device {}; kiln's queue depth {chosen} ({why})",
        path.display(),
        device
            .as_deref()
            .map_or("unknown".to_owned(), |d| d.display().to_string())
    );
    if fio_version().is_none() {
        println!("fio not installed: `apt-get install fio` for the peer comparison");
        return;
    }

    let mut kiln_rates: Vec<(usize, f64)> = Vec::new();
    let mut fio_rates: Vec<(String, f64)> = Vec::new();
    let mut kiln_depths = vec![chosen];
    kiln_depths.extend(DEPTHS.iter().filter(|d| **d != chosen));
    for _ in 0..2 {
        for (i, depth) in DEPTHS.iter().enumerate() {
            for engine in ["libaio", "io_uring"] {
                if let Some(rate) = fio(&path, mib, engine, *depth) {
                    fio_rates.push((format!("{engine} QD{depth}"), rate));
                }
            }
            // kiln's own choice between every fio depth, so it sees the device as fio does.
            kiln_rates.push((chosen, kiln(&path, mib, chosen)));
            if let Some(other) = kiln_depths.get(i + 1) {
                kiln_rates.push((*other, kiln(&path, mib, *other)));
            }
        }
    }
    let best_of = |rates: &[(String, f64)], key: &str| {
        rates
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, r)| *r)
            .fold(f64::NAN, f64::max)
    };
    let mut fio_best = ("none".to_owned(), f64::NAN);
    for depth in DEPTHS {
        for engine in ["libaio", "io_uring"] {
            let key = format!("{engine} QD{depth}");
            let rate = best_of(&fio_rates, &key);
            println!("  fio  {key:<14} {rate:>7.0} MB/s");
            if fio_best.1.is_nan() || rate > fio_best.1 {
                fio_best = (key, rate);
            }
        }
    }
    let kiln_at = |depth: usize| {
        kiln_rates
            .iter()
            .filter(|(d, _)| *d == depth)
            .map(|(_, r)| *r)
            .fold(f64::NAN, f64::max)
    };
    for depth in &kiln_depths {
        println!(
            "  kiln QD{depth:<11} {:>7.0} MB/s{}",
            kiln_at(*depth),
            if *depth == chosen {
                "  (its choice)"
            } else {
                ""
            }
        );
    }
    let kiln = kiln_at(chosen);
    println!(
        "kiln {kiln:.0} MB/s at QD{chosen}, fio at its best ({}) {:.0} MB/s: ratio kiln / fio {:.2} (target >= 0.95)",
        fio_best.0,
        fio_best.1,
        kiln / fio_best.1
    );
}

/// kiln's write-then-verify at `depth`; combined MB/s.
fn kiln(path: &Path, mib: u64, depth: usize) -> f64 {
    let job = Job {
        path: path.to_path_buf(),
        bytes: mib << 20,
        scratch: true,
        smart_device: None,
        queue_depth: depth,
    };
    let stop = Stop::new(Duration::from_secs(3600), Interrupt::new());
    let run = job
        .run(BLOCK, 1, &stop, &NoInjection, &|_| {})
        .expect("kiln disk run");
    assert_eq!(run.mismatch_count, 0);
    assert!(
        !run.buffered,
        "O_DIRECT refused: benchmark a directory on a disk"
    );
    2.0 * run.bytes as f64 / (run.write_time + run.read_time).as_secs_f64() / 1e6
}

fn fio_version() -> Option<String> {
    let out = std::process::Command::new("fio")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// fio's write-then-verify job; combined MB/s, or `None` when the engine is refused.
fn fio(path: &Path, mib: u64, engine: &str, depth: usize) -> Option<f64> {
    let out = std::process::Command::new("fio")
        .args([
            "--name=kiln-peer",
            &format!("--filename={}", path.display()),
            &format!("--size={mib}M"),
            "--bs=1M",
            "--direct=1",
            &format!("--ioengine={engine}"),
            &format!("--iodepth={depth}"),
            "--rw=write",
            "--end_fsync=1",
            "--verify=crc32c",
            "--do_verify=1",
            // fio would leave a verify-state file in the working directory.
            "--verify_state_save=0",
            "--output-format=json",
        ])
        .output()
        .ok()?;
    let _ = std::fs::remove_file(path);
    if !out.status.success() {
        eprintln!(
            "fio {engine} QD{depth} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &json["jobs"][0];
    let bytes = (mib << 20) as f64;
    let write_s = job["write"]["runtime"].as_f64()? / 1000.0;
    let read_s = job["read"]["runtime"].as_f64()? / 1000.0;
    Some(2.0 * bytes / (write_s + read_s) / 1e6)
}

//! Disk check throughput vs fio on the same file, size, block size and direct I/O, in one run.
//!
//! Both do a sequential write, flush, then read every block back and verify it (fio:
//! `--rw=write --verify=crc32c --direct=1 --ioengine=psync --end_fsync=1`). The figure is
//! bytes written plus bytes read, over the time spent writing and reading.
//! Run: `cargo bench -p kiln-agent --bench disk` (KILN_BENCH_DIR, KILN_BENCH_MIB to change the
//! place and the size; default: target/, 1024 MiB).

use std::path::PathBuf;
use std::time::Duration;

use kiln_agent::checks::disk::{Job, NoInjection};
use kiln_agent::stop::{Interrupt, Stop};

fn main() {
    let mib: u64 = std::env::var("KILN_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::var("KILN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let block = 1 << 20;
    let path = dir.join("kiln-disk-bench.bin");
    println!("file {}, {mib} MiB, 1 MiB blocks, O_DIRECT", path.display());

    let mut kiln_rates = Vec::new();
    let mut fio_rates = Vec::new();
    // Alternate the two, twice, so neither always runs on a warmer or cooler device.
    for _ in 0..2 {
        let job = Job {
            path: path.clone(),
            bytes: mib << 20,
            scratch: true,
            smart_device: None,
        };
        let stop = Stop::new(Duration::from_secs(3600), Interrupt::new());
        let run = job
            .run(block, 1, &stop, &NoInjection, &|_| {})
            .expect("kiln disk run");
        assert_eq!(run.mismatch_count, 0);
        let rate = 2.0 * run.bytes as f64 / (run.write_time + run.read_time).as_secs_f64() / 1e6;
        println!(
            "  kiln: write {:.0} MB/s, verify-read {:.0} MB/s, combined {rate:.0} MB/s",
            run.write_mbps(),
            run.read_mbps()
        );
        kiln_rates.push(rate);
        match fio(&path, mib) {
            Some((w, r, combined)) => {
                println!(
                    "  fio:  write {w:.0} MB/s, verify-read {r:.0} MB/s, combined {combined:.0} MB/s"
                );
                fio_rates.push(combined);
            }
            None => {
                println!("fio not installed: `apt-get install fio` for the peer comparison");
                return;
            }
        }
    }
    let kiln = kiln_rates.iter().sum::<f64>() / kiln_rates.len() as f64;
    let fio = fio_rates.iter().sum::<f64>() / fio_rates.len() as f64;
    println!(
        "kiln {kiln:.0} MB/s, fio {fio:.0} MB/s: ratio kiln / fio {:.2} (target >= 0.90)",
        kiln / fio
    );
}

/// Runs fio's write-then-verify job; returns (write MB/s, read MB/s, combined MB/s).
fn fio(path: &std::path::Path, mib: u64) -> Option<(f64, f64, f64)> {
    let out = std::process::Command::new("fio")
        .args([
            "--name=kiln-peer",
            &format!("--filename={}", path.display()),
            &format!("--size={mib}M"),
            "--bs=1M",
            "--direct=1",
            "--ioengine=psync",
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
        eprintln!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let job = &json["jobs"][0];
    let bytes = (mib << 20) as f64;
    let write_s = job["write"]["runtime"].as_f64()? / 1000.0;
    let read_s = job["read"]["runtime"].as_f64()? / 1000.0;
    Some((
        bytes / write_s / 1e6,
        bytes / read_s / 1e6,
        2.0 * bytes / (write_s + read_s) / 1e6,
    ))
}

//! Disk check throughput against fio at its best, on the same file, size, block size and
//! direct I/O, in one run.
//!
//! Both write every block sequentially, flush, then read every block back and verify it.
//! fio (`--rw=write --verify=crc32c --do_verify=1 --direct=1 --end_fsync=1`) runs with libaio
//! and io_uring at queue depths 1, 8, 16 and 32, each with its buffers from malloc (its
//! default) and on huge pages (`--mem=shmhuge`: a 1 MiB buffer on 4 KiB pages is more pieces
//! than a virtio disk takes in one request, so each block goes to the device as two; kiln's
//! buffers are on huge pages). Huge pages for fio must be reserved: the bench reserves what it
//! needs (`vm.nr_hugepages`) when it may and gives them back at the end, or says that fio ran
//! without them. The best of all those is the peer's figure. kiln
//! runs at the queue depth it chooses for the device (as a suite without `queue_depth` would),
//! and at each fixed depth for reference. The figure is bytes written plus bytes read, over
//! the time spent writing (flush included) and reading. First a sweep, two rounds of every
//! configuration in turn, each figure the median of its runs: fio's best is the configuration
//! with the best median. Then the head to head: fio at that configuration and kiln at its own
//! choice, five runs each in turns, medians compared (a shared machine's disk drifts by tens of
//! percent over a minute; turns give both the same drift, and the second phase keeps the pick
//! of the best from favouring fio's luckiest configuration).
//! Run: `cargo bench -p kiln-agent --bench disk` (KILN_BENCH_DIR, KILN_BENCH_MIB to change the
//! place and the size; default: target/, 1024 MiB).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_agent::checks::disk::{Job, NoInjection, default_queue_depth, disk_of_path};
use kiln_agent::stop::{Interrupt, Stop};

const BLOCK: usize = 1 << 20;
const DEPTHS: [usize; 4] = [1, 8, 16, 32];
/// Rounds of the sweep over every configuration.
const SWEEP_ROUNDS: usize = 2;
/// Runs each of the head-to-head between fio's best configuration and kiln.
const DUEL_ROUNDS: usize = 5;

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

    // fio's huge-page buffers: its deepest queue of 1 MiB blocks, on 2 MiB pages, and slack.
    let huge = HugePages::reserve(DEPTHS[DEPTHS.len() - 1] / 2 + 8);
    let mems: &[Mem] = match &huge {
        Ok(_) => &[Mem::Malloc, Mem::Huge],
        Err(why) => {
            println!("  fio runs without huge-page buffers: {why}");
            &[Mem::Malloc]
        }
    };
    let configs: Vec<Fio> = DEPTHS
        .iter()
        .flat_map(|&depth| {
            ["libaio", "io_uring"]
                .into_iter()
                .flat_map(move |engine| mems.iter().map(move |&mem| Fio { engine, depth, mem }))
        })
        .collect();

    // The sweep: every fio configuration and kiln at every depth, alternating, to find fio's
    // best configuration on this device.
    let mut kiln_depths = vec![chosen];
    kiln_depths.extend(DEPTHS.iter().filter(|d| **d != chosen));
    let mut fio_rates: Vec<(Fio, f64)> = Vec::new();
    let mut kiln_rates: Vec<(usize, f64)> = Vec::new();
    for _ in 0..SWEEP_ROUNDS {
        for (i, depth) in DEPTHS.iter().enumerate() {
            for config in configs.iter().filter(|c| c.depth == *depth) {
                if let Some(rate) = fio(&path, mib, *config) {
                    fio_rates.push((*config, rate));
                }
            }
            for d in kiln_depths
                .iter()
                .skip(i)
                .take(if i + 1 == DEPTHS.len() { 2 } else { 1 })
            {
                kiln_rates.push((*d, kiln(&path, mib, *d)));
            }
        }
    }
    let mut fio_best: Option<(Fio, f64)> = None;
    for config in &configs {
        let rate = median_of(&fio_rates, config);
        println!("  fio  {:<26} {rate:>7.0} MB/s", config.to_string());
        if fio_best.is_none_or(|(_, best)| rate > best) {
            fio_best = Some((*config, rate));
        }
    }
    let Some((fio_best, _)) = fio_best else {
        println!("fio ran in no configuration");
        return;
    };
    for depth in &kiln_depths {
        let rate = median_of(&kiln_rates, depth);
        let note = if *depth == chosen {
            "  (its choice)"
        } else {
            ""
        };
        println!("  kiln QD{depth:<23} {rate:>7.0} MB/s{note}");
    }

    // Head to head: fio at its best configuration against kiln at its own choice, in turns.
    let mut fio_runs = Vec::new();
    let mut kiln_runs = Vec::new();
    for _ in 0..DUEL_ROUNDS {
        fio_runs.extend(fio(&path, mib, fio_best));
        kiln_runs.push(kiln(&path, mib, chosen));
    }
    drop(huge);
    let (fio, kiln) = (median(fio_runs.into_iter()), median(kiln_runs.into_iter()));
    println!(
        "head to head, {DUEL_ROUNDS} runs each in turns: kiln {kiln:.0} MB/s at QD{chosen}, fio at its best ({fio_best}) {fio:.0} MB/s: ratio kiln / fio {:.2} (target >= 0.95)",
        kiln / fio
    );
}

/// Where fio's I/O buffers come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mem {
    /// malloc, fio's default.
    Malloc,
    /// System V shared memory on huge pages (`--mem=shmhuge`).
    Huge,
}

/// One fio configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fio {
    engine: &'static str,
    depth: usize,
    mem: Mem,
}

impl std::fmt::Display for Fio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} QD{}", self.engine, self.depth)?;
        if self.mem == Mem::Huge {
            write!(f, " huge pages")?;
        }
        Ok(())
    }
}

/// Huge pages reserved for fio's buffers, given back on drop.
struct HugePages {
    /// `vm.nr_hugepages` before, when the bench raised it.
    restore: Option<u64>,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePages {
    /// Makes sure `pages` huge pages are free, raising `vm.nr_hugepages` if it must (root);
    /// why not, when it cannot.
    fn reserve(pages: usize) -> Result<HugePages, String> {
        let free = || -> Option<usize> {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))?
                .trim()
                .parse()
                .ok()
        };
        let have = free().ok_or("the kernel reports no huge pages (/proc/meminfo)")?;
        if have >= pages {
            return Ok(HugePages { restore: None });
        }
        let before: u64 = std::fs::read_to_string(NR_HUGEPAGES)
            .map_err(|e| format!("cannot read {NR_HUGEPAGES}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{NR_HUGEPAGES}: {e}"))?;
        let wanted = before + (pages - have) as u64;
        std::fs::write(NR_HUGEPAGES, wanted.to_string()).map_err(|e| {
            format!("cannot reserve {pages} huge pages ({e}): `sysctl vm.nr_hugepages={wanted}` as root first")
        })?;
        let reserved = HugePages {
            restore: Some(before),
        };
        match free() {
            Some(n) if n >= pages => Ok(reserved),
            n => Err(format!(
                "asked the kernel for {pages} huge pages, it has {} free (memory too fragmented)",
                n.unwrap_or(0)
            )),
        }
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(before) = self.restore {
            if let Err(e) = std::fs::write(NR_HUGEPAGES, before.to_string()) {
                eprintln!("could not give back the huge pages ({NR_HUGEPAGES} = {before}): {e}");
            }
        }
    }
}

/// The median of the runs of `key` among `rates`.
fn median_of<K: PartialEq>(rates: &[(K, f64)], key: &K) -> f64 {
    median(rates.iter().filter(|(k, _)| k == key).map(|(_, r)| *r))
}

/// The median of some runs (NaN for none).
fn median(rates: impl Iterator<Item = f64>) -> f64 {
    let mut rates: Vec<f64> = rates.collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(f64::NAN)
}

/// kiln's write-then-verify at `depth`; combined MB/s.
fn kiln(path: &Path, mib: u64, depth: usize) -> f64 {
    let job = Job {
        path: path.to_path_buf(),
        bytes: mib << 20,
        scratch: true,
        smart_device: None,
        queue_depth: depth,
        engine: kiln_agent::checks::disk::IoEngine::Uring,
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
fn fio(path: &Path, mib: u64, config: Fio) -> Option<f64> {
    let Fio { engine, depth, mem } = config;
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
            match mem {
                Mem::Malloc => "--mem=malloc",
                Mem::Huge => "--mem=shmhuge",
            },
            "--output-format=json",
        ])
        .output()
        .ok()?;
    let _ = std::fs::remove_file(path);
    if !out.status.success() {
        eprintln!(
            "fio {config} failed: {}",
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

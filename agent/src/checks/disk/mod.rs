//! The disk check: sequential write, then read-back and verify, with O_DIRECT aligned I/O.
//! Every block carries its index and the run's seed and a pattern derived from both, so a
//! block that reads back wrong — or holds another block's data — is named with its offset.
//!
//! Non-destructive mode writes a scratch file in a directory; destructive mode overwrites
//! whole raw devices, and only after every safety rule in [`refusal`] passes.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::suite::{DiskCheck, DiskTarget};
use kiln_protocol::units::Size;
use kiln_protocol::wire::{Fault, LogLevel};

use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{read_trimmed, read_u64};
use crate::rng::{fresh_seed, splitmix64};
use crate::stop::Stop;

mod io;
mod pass;
mod pattern;
mod safety;
mod smart;
mod uring;

pub use io::{DiskRun, Injection, NoInjection, default_queue_depth};
pub use pass::BlockMismatch;
#[cfg(test)]
use pattern::expected_word;
pub use pattern::{fill_block, verify_block};
pub use safety::{System, refusal, resolve_target};
use smart::smart;
pub use smart::{read_ata, read_nvme, read_smart};

/// The disk check kind.
pub struct Disk;

/// Space a scratch file leaves free on its filesystem, as a share of its size.
const FREE_RESERVE_PCT: f64 = 10.0;
/// Block mismatches described one by one.
const MAX_DETAILED: usize = 32;
/// Most I/O threads (and so I/Os in flight) one job runs, whatever the suite says.
const MAX_QUEUE_DEPTH: usize = 256;
/// Most block bytes one job keeps in flight when the depth is chosen for the device: 16
/// blocks of 1 MiB. That covers a device's parallelism for sequential I/O — each block is a
/// request or a few (`max_sectors_kb`) — and a deeper queue of large blocks only waits in line:
/// on a virtio disk (2026-12-01, buffers on huge pages) kiln and fio were both faster at 16
/// than at 32 (kiln 3,251 vs 2,904 MB/s, fio 3,234 vs 3,025 at its best).
const MAX_IN_FLIGHT: usize = 16 << 20;

impl CheckKind for Disk {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn run(&self, check: &Check, ctx: &StepContext<'_>) -> anyhow::Result<CheckOutput> {
        let Check::Disk(spec) = check else {
            return Err(wrong_kind("disk", check));
        };
        let seed = fresh_seed();
        let jobs = match (&spec.dir, &spec.target) {
            (Some(dir), _) => vec![scratch_job(spec, Path::new(dir))?],
            (None, Some(target)) => device_jobs(spec, target, ctx)?,
            (None, None) => anyhow::bail!("the disk step names neither `dir` nor `target`"),
        };
        let jobs: Vec<Job> = jobs
            .into_iter()
            .map(|job| {
                let (job, why) = job.with_queue_depth(spec);
                ctx.observer.log(
                    LogLevel::Info,
                    &format!(
                        "{}: {} I/Os in flight ({why})",
                        job.path.display(),
                        job.queue_depth,
                    ),
                );
                job
            })
            .collect();
        let total: u64 = jobs.iter().map(|j| j.bytes).sum();
        ctx.observer.log(
            LogLevel::Info,
            &format!(
                "write-verify-read of {} in {} blocks on {}; seed {seed:#018x}",
                Size(total),
                spec.block_size,
                jobs.iter()
                    .map(|j| j.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let done = std::sync::atomic::AtomicU64::new(0);
        let runs: Vec<anyhow::Result<DiskRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| {
                    let done = &done;
                    scope.spawn(move || {
                        job.run(
                            spec.block_size.bytes() as usize,
                            seed,
                            &ctx.stop,
                            &NoInjection,
                            &|bytes| {
                                let sum = done
                                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed)
                                    + bytes;
                                // Each byte is written once and read once.
                                ctx.observer
                                    .progress(sum as f64 / (2 * total).max(1) as f64, "");
                            },
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("disk worker panicked")))
                })
                .collect()
        });
        let mut out = CheckOutput::default();
        let mut write_mbps = f64::INFINITY;
        let mut read_mbps = f64::INFINITY;
        let mut latencies = Vec::new();
        for (job, run) in jobs.iter().zip(runs) {
            let run = run?;
            ctx.observer.log(
                LogLevel::Info,
                &format!(
                    "{}: write {:.0} MB/s, read {:.0} MB/s ({} I/Os in flight through {})",
                    job.path.display(),
                    run.write_mbps(),
                    run.read_mbps(),
                    job.queue_depth,
                    run.engine.name()
                ),
            );
            write_mbps = write_mbps.min(run.write_mbps());
            read_mbps = read_mbps.min(run.read_mbps());
            latencies.extend_from_slice(&run.latencies);
            out.faults.extend(run.faults(&job.path));
            if spec.smart {
                smart(job.smart_device.as_deref(), &mut out, ctx);
            }
        }
        if let Some(reason) = ctx.stop.reason() {
            anyhow::bail!("stopped ({reason:?}) before every block was written and verified");
        }
        out.metric("write_mbps", write_mbps, "MB/s");
        out.metric("read_mbps", read_mbps, "MB/s");
        out.metric("bytes", total as f64, "B");
        latencies.sort_unstable();
        for (name, q) in [
            ("latency_p50_ms", 0.50),
            ("latency_p99_ms", 0.99),
            ("latency_max_ms", 1.0),
        ] {
            if let Some(v) = quantile(&latencies, q) {
                out.metric(name, v.as_secs_f64() * 1000.0, "ms");
            }
        }
        Ok(out)
    }
}

/// A file or device to write and verify.
pub struct Job {
    /// What is written.
    pub path: PathBuf,
    /// How much.
    pub bytes: u64,
    /// Remove the file afterwards (scratch files).
    pub scratch: bool,
    /// The whole-disk device to ask SMART about.
    pub smart_device: Option<PathBuf>,
    /// I/Os in flight.
    pub queue_depth: usize,
    /// How they are kept in flight.
    pub engine: IoEngine,
}

/// How a job keeps its I/Os in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoEngine {
    /// io_uring from one thread, submitted in block order; threads where the kernel has no
    /// io_uring.
    #[default]
    Uring,
    /// One thread per I/O in flight, each doing plain pread/pwrite.
    Threads,
}

impl IoEngine {
    /// Its name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            IoEngine::Uring => "io_uring",
            IoEngine::Threads => "threads",
        }
    }
}

impl Job {
    /// The job's queue depth: the suite's, or the one its device takes (see
    /// [`default_queue_depth`]), with the reason for the log.
    fn with_queue_depth(mut self, spec: &DiskCheck) -> (Self, String) {
        let block = spec.block_size.bytes() as usize;
        let (depth, why) = match spec.queue_depth {
            Some(depth) => (depth as usize, "set by the suite".to_owned()),
            None => default_queue_depth("/sys", self.smart_device.as_deref(), block),
        };
        self.queue_depth = depth;
        (self, why)
    }
}

fn scratch_job(spec: &DiskCheck, dir: &Path) -> anyhow::Result<Job> {
    let free =
        free_bytes(dir).map_err(|err| anyhow::anyhow!("cannot use {}: {err}", dir.display()))?;
    let usable = (free as f64 * (1.0 - FREE_RESERVE_PCT / 100.0)) as u64;
    let bytes = round_down(spec.size.resolve(usable), spec.block_size.bytes());
    if bytes == 0 {
        anyhow::bail!(
            "{} has {} free: not enough for one {} block",
            dir.display(),
            Size(free.max(1)),
            spec.block_size
        );
    }
    let name = format!(
        ".kiln-disk-{}-{:08x}",
        std::process::id(),
        fresh_seed() as u32
    );
    Ok(Job {
        path: dir.join(name),
        bytes,
        scratch: true,
        smart_device: disk_of_path(dir),
        queue_depth: 1,
        engine: IoEngine::Uring,
    })
}

fn device_jobs(
    spec: &DiskCheck,
    target: &DiskTarget,
    ctx: &StepContext<'_>,
) -> anyhow::Result<Vec<Job>> {
    if !spec.destructive {
        anyhow::bail!("refused: the suite does not say `destructive: true`; nothing was written");
    }
    if !ctx.options.allow_destructive {
        anyhow::bail!(
            "refused: destructive disk steps need the operator's consent (`kiln nodes allow-destructive` for this node, or --allow-destructive on a host); nothing was written"
        );
    }
    let system = System::live();
    let candidates = resolve_target(target, &system)?;
    let mut jobs = Vec::new();
    let mut refused = Vec::new();
    for disk in candidates {
        let reason = refusal(&disk, &system).or_else(|| {
            if spec.wipe_signatures {
                return None;
            }
            match crate::os::signatures::probe_device(Path::new(&format!("/dev/{disk}"))) {
                Ok(None) => None,
                Ok(Some(found)) => Some(format!(
                    "holds {} (signature at byte {}); set `wipe_signatures: true` to overwrite it",
                    found.what, found.offset
                )),
                Err(err) => Some(format!("cannot be read to check it is blank: {err}")),
            }
        });
        match reason {
            Some(reason) => refused.push(format!("/dev/{disk}: {reason}")),
            None => {
                let size =
                    read_u64(format!("{}/class/block/{disk}/size", system.sys)).unwrap_or(0) * 512;
                let bytes = round_down(spec.size.resolve(size), spec.block_size.bytes());
                let path = PathBuf::from(format!("/dev/{disk}"));
                jobs.push(Job {
                    path: path.clone(),
                    bytes,
                    scratch: false,
                    smart_device: Some(path),
                    queue_depth: 1,
                    engine: IoEngine::Uring,
                });
            }
        }
    }
    if matches!(target, DiskTarget::All) {
        for line in &refused {
            ctx.observer
                .log(LogLevel::Info, &format!("not touching {line}"));
        }
        if jobs.is_empty() {
            anyhow::bail!(
                "refused: no whole disk is safe to overwrite ({}); nothing was written",
                if refused.is_empty() {
                    "none found".to_owned()
                } else {
                    refused.join("; ")
                }
            );
        }
    } else if !refused.is_empty() {
        anyhow::bail!("refused: {}; nothing was written", refused.join("; "));
    }
    Ok(jobs)
}

fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn round_down(bytes: u64, block: u64) -> u64 {
    bytes / block * block
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: statvfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` outlives the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The whole-disk device under a directory (for SMART and the queue depth).
pub fn disk_of_path(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    // A partition's sysfs directory sits inside its disk's.
    let disk = if link.join("partition").exists() {
        link.parent()?.to_path_buf()
    } else {
        link
    };
    Some(PathBuf::from("/dev").join(disk.file_name()?))
}

#[cfg(test)]
mod tests;

//! The disk check: sequential write, then read-back and verify, with O_DIRECT aligned I/O.
//! Every block carries its index and the run's seed and a pattern derived from both, so a
//! block that reads back wrong — or holds another block's data — is named with its offset.
//!
//! Non-destructive mode writes a scratch file in a directory; destructive mode overwrites
//! whole raw devices, and only after every safety rule in [`refusal`] passes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use kiln_protocol::Check;
use kiln_protocol::suite::{DiskCheck, DiskTarget};
use kiln_protocol::units::Size;
use kiln_protocol::wire::{Fault, LogLevel};

use super::memory::{fresh_seed, splitmix64};
use super::{CheckKind, CheckOutput, StepContext, wrong_kind};
use crate::os::{read_trimmed, read_u64};
use crate::stop::Stop;

/// The disk check kind.
pub struct Disk;

/// Space a scratch file leaves free on its filesystem, as a share of its size.
const FREE_RESERVE_PCT: f64 = 10.0;
/// Block mismatches described one by one.
const MAX_DETAILED: usize = 32;
/// I/O buffers in flight between the I/O thread and its helper.
const BUFFERS: usize = 3;

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
                    "{}: write {:.0} MB/s, read {:.0} MB/s",
                    job.path.display(),
                    run.write_mbps(),
                    run.read_mbps()
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

/// Where the kernel's views of disks live; tests point it at a fake tree.
pub struct System {
    /// sysfs mount point.
    pub sys: String,
    /// Contents of /proc/self/mountinfo.
    pub mountinfo: String,
    /// Contents of /proc/swaps.
    pub swaps: String,
}

impl System {
    /// This host.
    pub fn live() -> Self {
        Self {
            sys: "/sys".into(),
            mountinfo: std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            swaps: std::fs::read_to_string("/proc/swaps").unwrap_or_default(),
        }
    }

    fn block(&self, name: &str) -> String {
        format!("{}/class/block/{name}", self.sys)
    }

    /// Whole disks that can hold data (not loop, RAM, optical, or stacked devices).
    pub fn whole_disks(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(format!("{}/block", self.sys))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| {
            !["loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd"]
                .iter()
                .any(|p| n.starts_with(p))
        });
        names.sort();
        names
    }

    fn partitions(&self, disk: &str) -> Vec<String> {
        let mut parts: Vec<String> = std::fs::read_dir(self.block(disk))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("partition").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        parts.sort();
        parts
    }

    fn holders(&self, name: &str) -> Vec<String> {
        std::fs::read_dir(format!("{}/holders", self.block(name)))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points whose device is `major:minor`.
    fn mounts_of(&self, dev: &str) -> Vec<String> {
        self.mountinfo
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&dev))
                    .then(|| fields.get(4).map(|m| m.to_string()))
                    .flatten()
            })
            .collect()
    }
}

/// The whole disks a target names.
pub fn resolve_target(target: &DiskTarget, system: &System) -> anyhow::Result<Vec<String>> {
    let disks = system.whole_disks();
    let named = |path: &str| -> anyhow::Result<String> {
        let name = path.strip_prefix("/dev/").unwrap_or(path).to_owned();
        if !Path::new(&system.block(&name)).exists() {
            anyhow::bail!(
                "refused: {path} is not a block device on this node; nothing was written"
            );
        }
        Ok(name)
    };
    let found = match target {
        DiskTarget::All => disks,
        DiskTarget::Path(path) => vec![named(path)?],
        DiskTarget::Glob(pattern) => {
            let pattern = glob::Pattern::new(pattern)
                .map_err(|err| anyhow::anyhow!("bad glob {pattern:?}: {err}"))?;
            disks
                .into_iter()
                .filter(|d| pattern.matches(&format!("/dev/{d}")))
                .collect()
        }
        DiskTarget::Model(regex) => {
            let re = regex_lite::Regex::new(regex)
                .map_err(|err| anyhow::anyhow!("bad model pattern {regex:?}: {err}"))?;
            disks
                .into_iter()
                .filter(|d| {
                    read_trimmed(format!("{}/device/model", system.block(d)))
                        .is_some_and(|m| re.is_match(&m))
                })
                .collect()
        }
    };
    if found.is_empty() && !matches!(target, DiskTarget::All) {
        anyhow::bail!("refused: no disk matches {target:?}; nothing was written");
    }
    Ok(found)
}

/// Why `disk` must not be overwritten, or `None` when it is safe: a partition rather than a
/// whole disk, mounted (itself or any partition), swap, the root device, holding partitions,
/// or used by device-mapper (LVM) or md (RAID).
pub fn refusal(disk: &str, system: &System) -> Option<String> {
    let base = system.block(disk);
    if !Path::new(&base).exists() {
        return Some("no such block device".into());
    }
    if Path::new(&base).join("partition").exists() {
        return Some("is a partition; expected a whole disk".into());
    }
    let parts = system.partitions(disk);
    let mut devices = vec![disk.to_owned()];
    devices.extend(parts.iter().cloned());
    for dev in &devices {
        if let Some(majmin) = read_trimmed(format!("{}/dev", system.block(dev))) {
            let mounts = system.mounts_of(&majmin);
            if mounts.iter().any(|m| m == "/") {
                return Some(format!(
                    "holds the root filesystem (/dev/{dev} is mounted at /)"
                ));
            }
            if let Some(m) = mounts.first() {
                return Some(format!("is mounted (/dev/{dev} at {m})"));
            }
        }
        if system
            .swaps
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(&format!("/dev/{dev}")))
        {
            return Some(format!("is in use as swap (/dev/{dev})"));
        }
        let holders = system.holders(dev);
        if let Some(h) = holders.first() {
            let what = if h.starts_with("md") {
                "a RAID member"
            } else {
                "used by device-mapper (LVM or crypt)"
            };
            return Some(format!("is {what}: /dev/{dev} is held by {h}"));
        }
    }
    if !parts.is_empty() {
        return Some(format!(
            "holds partitions ({}); expected a blank disk",
            parts.join(", ")
        ));
    }
    None
}

/// What writing and verifying one job found.
#[derive(Debug, Default)]
pub struct DiskRun {
    /// Bytes written (and read).
    pub bytes: u64,
    /// Time spent writing, including the final flush.
    pub write_time: Duration,
    /// Time spent reading.
    pub read_time: Duration,
    /// Every I/O's latency.
    pub latencies: Vec<Duration>,
    /// Blocks that read back wrong.
    pub mismatches: Vec<BlockMismatch>,
    /// How many blocks read back wrong.
    pub mismatch_count: u64,
    /// Set when O_DIRECT was refused and page-cache I/O was used.
    pub buffered: bool,
}

impl DiskRun {
    /// Write throughput in MB/s.
    pub fn write_mbps(&self) -> f64 {
        self.bytes as f64 / self.write_time.as_secs_f64().max(1e-9) / 1e6
    }

    /// Read throughput in MB/s.
    pub fn read_mbps(&self) -> f64 {
        self.bytes as f64 / self.read_time.as_secs_f64().max(1e-9) / 1e6
    }

    /// A fault per detailed bad block, plus one counting the rest.
    pub fn faults(&self, path: &Path) -> Vec<Fault> {
        let mut faults: Vec<Fault> = self
            .mismatches
            .iter()
            .map(|m| {
                let mut text = format!(
                    "{}: block {} (offset {}) read back wrong: {} of {} words differ, first at byte +{}: read {:#018x}, expected {:#018x}",
                    path.display(),
                    m.block,
                    m.offset,
                    m.bad_words,
                    m.words,
                    m.first_bad_word * 8,
                    m.actual,
                    m.expected
                );
                if let Some(other) = m.holds_block {
                    text.push_str(&format!("; it holds block {other}'s data (misdirected I/O)"));
                }
                Fault::new("disk.mismatch", text)
                    .with("path", path.display())
                    .with("block", m.block)
                    .with("offset", m.offset)
                    .with("bad_words", m.bad_words)
                    .with("expected", format!("{:#018x}", m.expected))
                    .with("actual", format!("{:#018x}", m.actual))
            })
            .collect();
        let more = self
            .mismatch_count
            .saturating_sub(self.mismatches.len() as u64);
        if more > 0 {
            faults.push(Fault::new(
                "disk.mismatch",
                format!("{}: … and {more} more bad blocks", path.display()),
            ));
        }
        faults
    }
}

/// A block that read back wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMismatch {
    /// Block index.
    pub block: u64,
    /// Byte offset of the block.
    pub offset: u64,
    /// Words in a block.
    pub words: usize,
    /// Words that differ.
    pub bad_words: usize,
    /// Index of the first differing word.
    pub first_bad_word: usize,
    /// Expected value of that word.
    pub expected: u64,
    /// Value read.
    pub actual: u64,
    /// When the block's header names another block: that block's index.
    pub holds_block: Option<u64>,
}

/// A hook between the write and the read-back, for tests to corrupt the medium on purpose.
pub trait Injection: Sync {
    /// Called once all blocks are written and flushed.
    fn after_write(&self, path: &Path, block_size: usize);
}

/// No corruption.
pub struct NoInjection;

impl Injection for NoInjection {
    fn after_write(&self, _: &Path, _: usize) {}
}

/// The expected content of word `k` of block `b`: the block index, the seed, then a pattern of
/// both.
#[inline(always)]
fn expected_word(seed: u64, block: u64, k: usize, words: usize) -> u64 {
    match k {
        0 => block,
        1 => seed,
        _ => splitmix64(seed ^ (block.wrapping_mul(words as u64) + k as u64)),
    }
}

/// A heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> anyhow::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)?;
        // SAFETY: the layout has a non-zero size (block sizes are at least 4 KiB).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            anyhow::bail!("cannot allocate a {len}-byte I/O buffer");
        }
        Ok(Self { ptr, layout })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `layout.size()` initialized bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: as above; the 4096 alignment satisfies u64's and the size is a multiple of 8.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u64>(), self.layout.size() / 8) }
    }
}

// SAFETY: the buffer is owned memory reached only through `&mut self`; moving the owner to
// another thread moves the only access with it.
unsafe impl Send for AlignedBuf {}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed only here.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

impl Job {
    /// Writes every block, flushes, then reads each back and verifies it. `progress` gets the
    /// bytes moved since its last call.
    pub fn run(
        &self,
        block_size: usize,
        seed: u64,
        stop: &Stop,
        injection: &dyn Injection,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<DiskRun> {
        let result = self.write_and_verify(block_size, seed, stop, injection, progress);
        if self.scratch {
            // The scratch file goes whatever happened; a failure to remove it is worth saying.
            if let Err(err) = std::fs::remove_file(&self.path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    return Err(anyhow::anyhow!(
                        "cannot remove scratch file {}: {err}",
                        self.path.display()
                    ));
                }
            }
        }
        result
    }

    fn open(&self) -> anyhow::Result<(File, bool)> {
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if self.scratch {
            options.create_new(true);
        }
        // O_EXCL on a block device asks the kernel for exclusive use: it fails if the device
        // is mounted or claimed, a last guard behind the sysfs checks.
        let excl = if self.scratch { 0 } else { libc::O_EXCL };
        match options
            .clone()
            .custom_flags(libc::O_DIRECT | excl)
            .open(&self.path)
        {
            Ok(file) => Ok((file, false)),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                // tmpfs and some filesystems refuse O_DIRECT: use the page cache and drop it
                // before reading back, and say so.
                if self.scratch {
                    let _ = std::fs::remove_file(&self.path);
                }
                let file = options
                    .custom_flags(excl)
                    .open(&self.path)
                    .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.path.display()))?;
                Ok((file, true))
            }
            Err(err) => Err(anyhow::anyhow!(
                "cannot open {}: {err}",
                self.path.display()
            )),
        }
    }

    /// The I/O runs on this thread while a helper thread generates the next blocks (writing)
    /// or verifies the last ones (reading), so pattern work overlaps the device's.
    fn write_and_verify(
        &self,
        block_size: usize,
        seed: u64,
        stop: &Stop,
        injection: &dyn Injection,
        progress: &(dyn Fn(u64) + Sync),
    ) -> anyhow::Result<DiskRun> {
        let (file, buffered) = self.open()?;
        let blocks = self.bytes / block_size as u64;
        let words = block_size / 8;
        let mut run = DiskRun {
            bytes: blocks * block_size as u64,
            buffered,
            ..Default::default()
        };
        run.latencies.reserve((2 * blocks) as usize);
        let (free_tx, free_rx) = buffer_pool(block_size)?;

        let started = Instant::now();
        let written = std::thread::scope(|scope| -> anyhow::Result<bool> {
            let (full_tx, full_rx) = sync_channel::<(u64, AlignedBuf)>(BUFFERS);
            scope.spawn(move || {
                for block in 0..blocks {
                    let Ok(mut buf) = free_rx.recv() else { break };
                    for (k, w) in buf.words().iter_mut().enumerate() {
                        *w = expected_word(seed, block, k, words);
                    }
                    if full_tx.send((block, buf)).is_err() {
                        break;
                    }
                }
            });
            for (block, mut buf) in full_rx {
                if stop.should_stop() {
                    return Ok(false);
                }
                let t = Instant::now();
                file.write_all_at(buf.bytes(), block * block_size as u64)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "write of block {block} to {} failed: {e}",
                            self.path.display()
                        )
                    })?;
                run.latencies.push(t.elapsed());
                progress(block_size as u64);
                let _ = free_tx.send(buf);
            }
            Ok(true)
        })?;
        if !written {
            return Ok(run);
        }
        file.sync_data()
            .map_err(|e| anyhow::anyhow!("flushing {} failed: {e}", self.path.display()))?;
        run.write_time = started.elapsed();
        if buffered {
            // SAFETY: a valid descriptor; the advice only drops clean cached pages.
            unsafe {
                libc::posix_fadvise(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    0,
                    libc::POSIX_FADV_DONTNEED,
                )
            };
        }
        injection.after_write(&self.path, block_size);

        // Reading: fresh buffers, since the generator thread took the first pool's receiver.
        let (free_tx, free_rx) = buffer_pool(block_size)?;
        let started = Instant::now();
        let (read_all, count, detailed) =
            std::thread::scope(|scope| -> anyhow::Result<(bool, u64, Vec<BlockMismatch>)> {
                let (full_tx, full_rx) = sync_channel::<(u64, AlignedBuf)>(BUFFERS);
                let verifier = scope.spawn(move || {
                    let mut count = 0u64;
                    let mut detailed = Vec::new();
                    for (block, mut buf) in full_rx {
                        if let Some(m) = verify_block(buf.words(), seed, block, block_size) {
                            count += 1;
                            if detailed.len() < MAX_DETAILED {
                                detailed.push(m);
                            }
                        }
                        progress(block_size as u64);
                        let _ = free_tx.send(buf);
                    }
                    (count, detailed)
                });
                let mut read_all = true;
                for block in 0..blocks {
                    if stop.should_stop() {
                        read_all = false;
                        break;
                    }
                    let mut buf = free_rx
                        .recv()
                        .map_err(|_| anyhow::anyhow!("the verifier thread ended early"))?;
                    let t = Instant::now();
                    file.read_exact_at(buf.bytes(), block * block_size as u64)
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "read of block {block} from {} failed: {e}",
                                self.path.display()
                            )
                        })?;
                    run.latencies.push(t.elapsed());
                    full_tx
                        .send((block, buf))
                        .map_err(|_| anyhow::anyhow!("the verifier thread ended early"))?;
                }
                drop(full_tx);
                let (count, detailed) = verifier
                    .join()
                    .map_err(|_| anyhow::anyhow!("the verifier thread panicked"))?;
                Ok((read_all, count, detailed))
            })?;
        run.read_time = started.elapsed();
        run.mismatch_count = count;
        run.mismatches = detailed;
        if !read_all {
            // Stopped part-way: the runner reports the step as stopped; say how far it got.
            run.bytes = run
                .bytes
                .min(run.latencies.len() as u64 / 2 * block_size as u64);
        }
        Ok(run)
    }
}

type Pool = (
    std::sync::mpsc::SyncSender<AlignedBuf>,
    std::sync::mpsc::Receiver<AlignedBuf>,
);

/// `BUFFERS` aligned buffers circulating between the I/O thread and its helper.
fn buffer_pool(block_size: usize) -> anyhow::Result<Pool> {
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(BUFFERS);
    for _ in 0..BUFFERS {
        free_tx
            .send(AlignedBuf::new(block_size)?)
            .map_err(|_| anyhow::anyhow!("buffer pool closed"))?;
    }
    Ok((free_tx, free_rx))
}

/// Compares a block read back with what was written; `None` when it matches.
pub fn verify_block(
    words: &[u64],
    seed: u64,
    block: u64,
    block_size: usize,
) -> Option<BlockMismatch> {
    let n = words.len();
    let diff = words.iter().enumerate().fold(0u64, |acc, (k, w)| {
        acc | (w ^ expected_word(seed, block, k, n))
    });
    if diff == 0 {
        return None;
    }
    let bad: Vec<usize> = (0..n)
        .filter(|k| words[*k] != expected_word(seed, block, *k, n))
        .collect();
    let first = bad[0];
    let holds_block = (words[1] == seed && words[0] != block).then_some(words[0]);
    Some(BlockMismatch {
        block,
        offset: block * block_size as u64,
        words: n,
        bad_words: bad.len(),
        first_bad_word: first,
        expected: expected_word(seed, block, first, n),
        actual: words[first],
        holds_block,
    })
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

/// The whole-disk device under a directory, for SMART.
fn disk_of_path(dir: &Path) -> Option<PathBuf> {
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

/// SMART / NVMe health, read natively (the NVMe health log by admin ioctl, SATA SMART by
/// ATA PASS-THROUGH), else through `smartctl --json` when it is installed. What could not be
/// read is logged with why; a threshold on a SMART metric then fails the step as unmeasured.
fn smart(device: Option<&Path>, out: &mut CheckOutput, ctx: &StepContext<'_>) {
    let Some(device) = device else {
        ctx.observer.log(
            LogLevel::Warn,
            "SMART not read: the device under the scratch directory is unknown",
        );
        return;
    };
    let name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let native = if name.starts_with("nvme") {
        crate::hw::nvme::read(device).map(|h| read_nvme(&h, device, out))
    } else if name.starts_with("sd") {
        crate::hw::ata::read(device).map(|s| read_ata(&s, device, out))
    } else {
        Err(format!(
            "{}: no native SMART reader for this kind of device",
            device.display()
        ))
    };
    let Err(native) = native else {
        return;
    };
    let output = match std::process::Command::new("smartctl")
        .args(["--json", "-a"])
        .arg(device)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            ctx.observer.log(
                LogLevel::Warn,
                &format!("SMART not available: {native} (and smartctl is not installed)"),
            );
            return;
        }
    };
    // smartctl's exit status is a bit mask; bits 0-1 mean it could not talk to the device.
    let status = output.status.code().unwrap_or(2);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
        ctx.observer.log(
            LogLevel::Warn,
            &format!(
                "SMART not available: {native}; smartctl gave no JSON for {}",
                device.display()
            ),
        );
        return;
    };
    if status & 0b11 != 0 {
        let why = json["smartctl"]["messages"][0]["string"]
            .as_str()
            .unwrap_or("device not supported");
        ctx.observer.log(
            LogLevel::Warn,
            &format!("SMART not available: {native}; smartctl: {why}"),
        );
        return;
    }
    read_smart(&json, device, out);
}

/// Faults and metrics from an NVMe health log.
pub fn read_nvme(h: &crate::hw::nvme::Health, device: &Path, out: &mut CheckOutput) {
    let warnings = h.warnings();
    if !warnings.is_empty() {
        out.faults.push(
            Fault::new(
                "disk.nvme_critical_warning",
                format!(
                    "{}: NVMe critical warning {:#04x}: {}",
                    device.display(),
                    h.critical_warning,
                    warnings.join(", ")
                ),
            )
            .with("device", device.display().to_string())
            .with("critical_warning", h.critical_warning),
        );
    }
    out.metric("media_errors", h.media_errors as f64, "");
    out.metric("percentage_used", f64::from(h.percentage_used), "%");
    out.metric("available_spare", f64::from(h.available_spare_pct), "%");
    out.metric("unsafe_shutdowns", h.unsafe_shutdowns as f64, "");
    if let Some(t) = h.temperature_c() {
        out.metric("temp_c", (t * 10.0).round() / 10.0, "°C");
    }
}

/// Faults and metrics from SATA SMART.
pub fn read_ata(s: &crate::hw::ata::Smart, device: &Path, out: &mut CheckOutput) {
    if s.passed == Some(false) {
        out.faults.push(Fault::new(
            "disk.smart_failed",
            format!(
                "{}: SMART overall health self-assessment failed",
                device.display()
            ),
        ));
    }
    for a in s.attributes.iter().filter(|a| a.failing()) {
        out.faults.push(
            Fault::new(
                "disk.smart_attribute_failing",
                format!(
                    "{}: SMART attribute {} ({}) is at {}, at or below its threshold {}",
                    device.display(),
                    a.id,
                    crate::hw::ata::attribute_name(a.id),
                    a.value,
                    a.threshold.unwrap_or(0)
                ),
            )
            .with("attribute", a.id)
            .with("raw", a.raw),
        );
    }
    for (id, metric) in [
        (5, "reallocated_sectors"),
        (197, "pending_sectors"),
        (198, "offline_uncorrectable"),
        (199, "udma_crc_errors"),
    ] {
        if let Some(raw) = s.raw(id) {
            // The low 32 bits: vendors pack other counters into the upper raw bytes.
            out.metric(metric, (raw & 0xFFFF_FFFF) as f64, "");
        }
    }
}

/// Reads health, reallocated and pending sectors (ATA) and media errors (NVMe) from
/// `smartctl --json -a` output.
pub fn read_smart(json: &serde_json::Value, device: &Path, out: &mut CheckOutput) {
    if json["smart_status"]["passed"].as_bool() == Some(false) {
        out.faults.push(Fault::new(
            "disk.smart_failed",
            format!(
                "{}: SMART overall health self-assessment failed",
                device.display()
            ),
        ));
    }
    if let Some(table) = json["ata_smart_attributes"]["table"].as_array() {
        for (id, metric) in [(5, "reallocated_sectors"), (197, "pending_sectors")] {
            if let Some(raw) = table
                .iter()
                .find(|a| a["id"].as_u64() == Some(id))
                .and_then(|a| a["raw"]["value"].as_f64())
            {
                out.metric(metric, raw, "");
            }
        }
    }
    if let Some(errors) = json["nvme_smart_health_information_log"]["media_errors"].as_f64() {
        out.metric("media_errors", errors, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::Interrupt;

    fn stop() -> Stop {
        Stop::new(Duration::from_secs(60), Interrupt::new())
    }

    fn scratch(dir: &Path, bytes: u64) -> Job {
        Job {
            path: dir.join("scratch.bin"),
            bytes,
            scratch: true,
            smart_device: None,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        // Under the target directory, on a real disk filesystem (tmpfs refuses O_DIRECT).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-scratch")
            .join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_clean_file_verifies_and_is_removed() {
        let dir = tempdir("clean");
        let job = scratch(&dir, 8 << 20);
        let run = job.run(1 << 20, 7, &stop(), &NoInjection, &|_| {}).unwrap();
        assert_eq!(run.mismatch_count, 0);
        assert_eq!(run.latencies.len(), 16);
        assert!(run.write_mbps() > 0.0 && run.read_mbps() > 0.0);
        assert!(!job.path.exists(), "scratch file left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    struct CorruptBlock(u64);

    impl Injection for CorruptBlock {
        fn after_write(&self, path: &Path, block_size: usize) {
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[0xff; 16], self.0 * block_size as u64 + 4096)
                .unwrap();
            file.sync_data().unwrap();
        }
    }

    #[test]
    fn a_corrupted_block_is_reported_with_its_offset() {
        let dir = tempdir("corrupt");
        let job = scratch(&dir, 4 << 20);
        let run = job
            .run(1 << 20, 9, &stop(), &CorruptBlock(2), &|_| {})
            .unwrap();
        assert_eq!(run.mismatch_count, 1);
        let m = &run.mismatches[0];
        assert_eq!(
            (m.block, m.offset, m.first_bad_word, m.bad_words),
            (2, 2 << 20, 512, 2)
        );
        assert_eq!(m.actual, u64::MAX);
        let faults = run.faults(&job.path);
        assert!(faults[0].message.contains("block 2 (offset 2097152) read back wrong: 2 of 131072 words differ, first at byte +4096"), "{}", faults[0].message);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_misdirected_block_names_the_block_it_holds() {
        let seed = 5;
        let n = 512;
        let mut words: Vec<u64> = (0..n).map(|k| expected_word(seed, 3, k, n)).collect();
        assert!(verify_block(&words, seed, 3, 4096).is_none());
        let m = verify_block(&words, seed, 4, 4096).unwrap();
        assert_eq!(m.holds_block, Some(3));
        words[0] = 4;
        assert_eq!(
            verify_block(&words, seed, 4, 4096).unwrap().holds_block,
            None
        );
    }

    /// A fake sysfs with a disk `sdb` (partition `sdb1`) and a blank disk `sdc`.
    fn fake_system(mountinfo: &str) -> (System, PathBuf) {
        let root = tempdir("sysfs");
        for (name, dev) in [("sdb", "8:16"), ("sdc", "8:32")] {
            let dir = root.join("class/block").join(name);
            std::fs::create_dir_all(dir.join("holders")).unwrap();
            std::fs::write(dir.join("dev"), dev).unwrap();
            std::fs::write(dir.join("size"), "2097152").unwrap();
            std::fs::create_dir_all(root.join("block").join(name)).unwrap();
        }
        let part = root.join("class/block/sdb/sdb1");
        std::fs::create_dir_all(part.join("holders")).unwrap();
        std::fs::write(part.join("partition"), "1").unwrap();
        std::fs::write(part.join("dev"), "8:17").unwrap();
        // As in sysfs, the partition is also listed at class/block/ through a link.
        std::os::unix::fs::symlink(&part, root.join("class/block/sdb1")).unwrap();
        let system = System {
            sys: root.display().to_string(),
            mountinfo: mountinfo.to_owned(),
            swaps: "Filename Type Size Used Priority\n".into(),
        };
        (system, root)
    }

    #[test]
    fn mounted_root_partitioned_and_held_disks_are_refused() {
        let (system, root) = fake_system("22 1 8:17 / /data rw,relatime - ext4 /dev/sdb1 rw\n");
        assert_eq!(
            refusal("sdb", &system).unwrap(),
            "is mounted (/dev/sdb1 at /data)"
        );
        assert_eq!(
            refusal("sdb1", &system).unwrap(),
            "is a partition; expected a whole disk"
        );
        assert_eq!(refusal("sdc", &system), None);

        let system = System {
            mountinfo: "22 1 8:32 / / rw - ext4 /dev/sdc rw\n".into(),
            ..system
        };
        assert_eq!(
            refusal("sdc", &system).unwrap(),
            "holds the root filesystem (/dev/sdc is mounted at /)"
        );

        let system = System {
            mountinfo: String::new(),
            ..system
        };
        assert_eq!(
            refusal("sdb", &system).unwrap(),
            "holds partitions (sdb1); expected a blank disk"
        );
        std::fs::create_dir_all(root.join("class/block/sdc/holders/md0")).unwrap();
        assert_eq!(
            refusal("sdc", &system).unwrap(),
            "is a RAID member: /dev/sdc is held by md0"
        );
        std::fs::remove_dir_all(root.join("class/block/sdc/holders/md0")).unwrap();
        std::fs::create_dir_all(root.join("class/block/sdc/holders/dm-0")).unwrap();
        assert!(refusal("sdc", &system).unwrap().contains("device-mapper"));
        let system = System {
            swaps: "Filename Type\n/dev/sdc partition 1 0 -2\n".into(),
            ..system
        };
        assert_eq!(
            refusal("sdc", &system).unwrap(),
            "is in use as swap (/dev/sdc)"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn targets_resolve_by_path_glob_and_all() {
        let (system, root) = fake_system("");
        assert_eq!(
            resolve_target(&DiskTarget::All, &system).unwrap(),
            ["sdb", "sdc"]
        );
        assert_eq!(
            resolve_target(&DiskTarget::Glob("/dev/sd[c-z]".into()), &system).unwrap(),
            ["sdc"]
        );
        assert_eq!(
            resolve_target(&DiskTarget::Path("/dev/sdc".into()), &system).unwrap(),
            ["sdc"]
        );
        let err = resolve_target(&DiskTarget::Path("/dev/sdz".into()), &system)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/dev/sdz is not a block device"), "{err}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn smart_json_yields_health_and_counters() {
        let json: serde_json::Value = serde_json::from_str(
            r#"{"smart_status":{"passed":false},"ata_smart_attributes":{"table":[{"id":5,"raw":{"value":12}},{"id":197,"raw":{"value":3}}]}}"#,
        )
        .unwrap();
        let mut out = CheckOutput::default();
        read_smart(&json, Path::new("/dev/sdb"), &mut out);
        assert_eq!(out.faults[0].code, "disk.smart_failed");
        let m: Vec<(&str, f64)> = out
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.value))
            .collect();
        assert_eq!(m, [("reallocated_sectors", 12.0), ("pending_sectors", 3.0)]);
    }

    #[test]
    fn native_nvme_health_names_the_warning_and_counts_media_errors() {
        let h = crate::hw::nvme::Health {
            critical_warning: 0b100,
            temperature_k: 320,
            available_spare_pct: 90,
            percentage_used: 3,
            media_errors: 2,
            ..Default::default()
        };
        let mut out = CheckOutput::default();
        read_nvme(&h, Path::new("/dev/nvme0n1"), &mut out);
        assert_eq!(out.faults[0].code, "disk.nvme_critical_warning");
        assert_eq!(
            out.faults[0].message,
            "/dev/nvme0n1: NVMe critical warning 0x04: reliability degraded by media or internal errors"
        );
        let get = |n: &str| out.metrics.iter().find(|m| m.name == n).map(|m| m.value);
        assert_eq!(get("media_errors"), Some(2.0));
        assert_eq!(get("temp_c"), Some(46.9));
        assert_eq!(get("available_spare"), Some(90.0));
    }

    #[test]
    fn native_ata_smart_fails_on_the_drives_verdict_and_a_failing_attribute() {
        use crate::hw::ata::{Attribute, Smart};
        let attr = |id, value, threshold, raw| Attribute {
            id,
            value,
            worst: value,
            threshold: Some(threshold),
            prefail: true,
            raw,
        };
        let s = Smart {
            passed: Some(false),
            attributes: vec![attr(5, 30, 36, 0x0001_0000_0007), attr(197, 100, 0, 4)],
        };
        let mut out = CheckOutput::default();
        read_ata(&s, Path::new("/dev/sda"), &mut out);
        let codes: Vec<&str> = out.faults.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["disk.smart_failed", "disk.smart_attribute_failing"]);
        assert!(
            out.faults[1]
                .message
                .contains("attribute 5 (reallocated sectors) is at 30")
        );
        let get = |n: &str| out.metrics.iter().find(|m| m.name == n).map(|m| m.value);
        // Only the low 32 bits of a raw counter count.
        assert_eq!(get("reallocated_sectors"), Some(7.0));
        assert_eq!(get("pending_sectors"), Some(4.0));
        assert_eq!(get("udma_crc_errors"), None);
    }
}

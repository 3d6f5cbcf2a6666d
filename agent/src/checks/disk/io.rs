//! The disk check's I/O engine: aligned O_DIRECT writes and read-backs through a small pool
//! of buffers, every block verified against its seed-and-index pattern, mismatches named
//! with their offsets.

use std::os::unix::fs::{FileExt, OpenOptionsExt};

use super::pass::{BlockMismatch, Buffers, Direction, Pass, PassRun, bytes};
use super::{
    AtomicBool, AtomicU64, Duration, Fault, File, Instant, IoEngine, Job, MAX_DETAILED,
    MAX_IN_FLIGHT, MAX_QUEUE_DEPTH, OpenOptions, Ordering, Path, Size, Stop, fill_block, read_u64,
    verify_block,
};

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
    /// The engine that did the I/O (threads when io_uring was asked for but is not there).
    pub engine: IoEngine,
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

    /// Reserves the scratch file's blocks before the first write. An O_DIRECT write into a
    /// hole has the filesystem allocate under it, one write at a time: on ext4 it took the
    /// write pass 2.4× as long as into reserved blocks (fio reserves its file the same way
    /// before it starts its clock). It also finds a full disk before anything is written,
    /// rather than half-way. A filesystem that cannot reserve (EOPNOTSUPP) is written as
    /// before.
    fn preallocate(&self, file: &File, bytes: u64) -> anyhow::Result<()> {
        let len = libc::off_t::try_from(bytes)?;
        // SAFETY: a valid descriptor; mode 0 only allocates blocks and sets the size.
        if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, len) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(()),
            Some(libc::ENOSPC) => Err(anyhow::anyhow!(
                "cannot reserve {} for the scratch file {}: the filesystem is full",
                Size(bytes),
                self.path.display()
            )),
            _ => Err(anyhow::anyhow!(
                "cannot reserve {} for the scratch file {}: {err}",
                Size(bytes),
                self.path.display()
            )),
        }
    }

    /// Writes every block from `queue_depth` threads, flushes, then reads each back and
    /// verifies it the same way. Each thread takes the next block, builds or checks its
    /// pattern and does the I/O, so `queue_depth` I/Os are in flight and the pattern work of
    /// one overlaps the device's work on the others.
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
        let mut run = DiskRun {
            bytes: blocks * block_size as u64,
            buffered,
            engine: self.engine,
            ..Default::default()
        };
        let pass = Pass {
            job: self,
            file: &file,
            blocks,
            block_size,
            seed,
            stop,
            progress,
        };
        let started = Instant::now();
        if self.scratch {
            // Timed with the writes, as it is part of their cost.
            self.preallocate(&file, run.bytes)?;
        }
        let written = pass.run(Direction::Write, &mut run.engine)?;
        run.latencies = written.latencies;
        if !written.complete {
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

        let started = Instant::now();
        let read = pass.run(Direction::Read, &mut run.engine)?;
        run.read_time = started.elapsed();
        run.latencies.extend(read.latencies);
        run.mismatch_count = read.mismatch_count;
        run.mismatches = read.mismatches;
        if !read.complete {
            // Stopped part-way: the runner reports the step as stopped; say how far it got.
            run.bytes = run.bytes.min(read.blocks_done * block_size as u64);
        }
        Ok(run)
    }
}

impl Pass<'_> {
    /// Every block once, `queue_depth` I/Os in flight: through io_uring, submitted in block
    /// order from one thread as fio does, or — where the kernel offers no io_uring (before 5.6,
    /// or turned off) — from that many threads. The first I/O error ends the pass and is
    /// returned naming block and path.
    /// `engine` says which engine did it.
    fn run(&self, direction: Direction, engine: &mut IoEngine) -> anyhow::Result<PassRun> {
        let ring = match self.job.engine {
            IoEngine::Uring => {
                super::uring::Ring::new(self.job.queue_depth.clamp(1, MAX_QUEUE_DEPTH))
            }
            IoEngine::Threads => None,
        };
        match ring {
            Some(ring) => ring.pass(self, direction),
            None => {
                *engine = IoEngine::Threads;
                self.threads(direction)
            }
        }
    }

    /// The pass from `queue_depth` threads, each taking the next block; the others stop at
    /// their next block once one fails.
    fn threads(&self, direction: Direction) -> anyhow::Result<PassRun> {
        let next = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let depth = self.job.queue_depth.clamp(1, MAX_QUEUE_DEPTH);
        let mut buffers = Buffers::new(depth, self.block_size)?;
        let lanes: Vec<anyhow::Result<PassRun>> = std::thread::scope(|scope| {
            let workers: Vec<_> = buffers
                .each()
                .map(|buf| scope.spawn(|| self.lane(direction, buf, &next, &failed)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a disk I/O thread panicked")))
                })
                .collect()
        });
        let mut total = PassRun {
            complete: true,
            ..Default::default()
        };
        for lane in lanes {
            let lane = lane?;
            total.complete &= lane.complete;
            total.blocks_done += lane.blocks_done;
            total.latencies.extend(lane.latencies);
            total.mismatch_count += lane.mismatch_count;
            total.mismatches.extend(lane.mismatches);
        }
        total.mismatches.sort_by_key(|m| m.block);
        total.mismatches.truncate(MAX_DETAILED);
        Ok(total)
    }

    /// One thread of a pass: takes block after block until none is left, the step is
    /// stopped or another thread failed.
    fn lane(
        &self,
        direction: Direction,
        buf: &mut [u64],
        next: &AtomicU64,
        failed: &AtomicBool,
    ) -> anyhow::Result<PassRun> {
        let path = self.job.path.display();
        let mut lane = PassRun {
            complete: true,
            ..Default::default()
        };
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(lane);
            }
            if self.stop.should_stop() {
                lane.complete = false;
                return Ok(lane);
            }
            let block = next.fetch_add(1, Ordering::Relaxed);
            if block >= self.blocks {
                return Ok(lane);
            }
            let offset = block * self.block_size as u64;
            let io = match direction {
                Direction::Write => {
                    fill_block(buf, self.seed, block);
                    let t = Instant::now();
                    let io = self.file.write_all_at(bytes(buf), offset);
                    lane.latencies.push(t.elapsed());
                    io.map_err(|e| anyhow::anyhow!("write of block {block} to {path} failed: {e}"))
                }
                Direction::Read => {
                    let t = Instant::now();
                    let io = self.file.read_exact_at(bytes(buf), offset);
                    lane.latencies.push(t.elapsed());
                    io.map_err(|e| anyhow::anyhow!("read of block {block} from {path} failed: {e}"))
                }
            };
            if let Err(err) = io {
                failed.store(true, Ordering::Relaxed);
                return Err(err);
            }
            if direction == Direction::Read {
                lane.verified(verify_block(buf, self.seed, block, self.block_size));
            } else {
                lane.blocks_done += 1;
            }
            (self.progress)(self.block_size as u64);
        }
    }
}

/// Block drivers of virtual disks. Their `rotational` flag is the guest kernel's default
/// (virtio-blk and Xen's front end never clear it), not a property of the medium, which is
/// the host's file or volume — usually flash that wants a deep queue.
const VIRTUAL_DISK_DRIVERS: &[&str] = &["virtio_blk", "vbd"];

/// The queue depth for a device when the suite sets none: what its block queue takes
/// (`nr_requests`), up to 32 for solid-state devices and virtual disks — fio's best on NVMe,
/// SATA SSDs and virtio disks sits between 16 and 32 — and 4 for spinning disks, where deeper
/// queues only reorder seeks. Bounded so no more than `MAX_IN_FLIGHT` bytes of blocks are in
/// flight (16 for 1 MiB blocks, 1 for 16 MiB and over).
/// Returns the depth and why.
pub fn default_queue_depth(sys: &str, device: Option<&Path>, block_size: usize) -> (usize, String) {
    let name = device
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let queue = |file: &str| {
        name.as_ref()
            .and_then(|n| read_u64(format!("{sys}/block/{n}/queue/{file}")))
    };
    let driver = name
        .as_ref()
        .and_then(|n| crate::os::link_name(format!("{sys}/block/{n}/device/driver")))
        .filter(|d| VIRTUAL_DISK_DRIVERS.contains(&d.as_str()));
    let by_memory = (MAX_IN_FLIGHT / block_size.max(1)).max(1);
    let (depth, why) = match (queue("rotational"), queue("nr_requests"), driver) {
        (Some(_), Some(nr), Some(driver)) => (
            (nr as usize).min(32),
            format!(
                "a virtual disk ({driver}, its rotational flag says nothing of the medium) whose queue takes {nr} requests"
            ),
        ),
        (Some(1), _, _) => (4, "a rotational disk".to_owned()),
        (Some(_), Some(nr), None) => (
            (nr as usize).min(32),
            format!("a solid-state device whose queue takes {nr} requests"),
        ),
        _ => (
            16,
            "the device's queue is not in sysfs (a file system over something else)".to_owned(),
        ),
    };
    if by_memory < depth {
        return (
            by_memory,
            format!(
                "{why}, limited so {} of blocks at most are in flight",
                Size(MAX_IN_FLIGHT as u64)
            ),
        );
    }
    (depth, why)
}

//! The disk check's I/O engine: aligned O_DIRECT writes and read-backs through a small pool
//! of buffers, every block verified against its seed-and-index pattern, mismatches named
//! with their offsets.

use super::*;

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
pub(super) fn expected_word(seed: u64, block: u64, k: usize, words: usize) -> u64 {
    match k {
        0 => block,
        1 => seed,
        _ => splitmix64(seed ^ (block.wrapping_mul(words as u64) + k as u64)),
    }
}

/// A heap buffer aligned for O_DIRECT.
pub(super) struct AlignedBuf {
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
        let mut run = DiskRun {
            bytes: blocks * block_size as u64,
            buffered,
            ..Default::default()
        };
        run.latencies.reserve((2 * blocks) as usize);
        let pass = Pass {
            file: &file,
            blocks,
            block_size,
            seed,
            stop,
            progress,
        };
        let started = Instant::now();
        let written = self.write_blocks(&pass, &mut run)?;
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

        let started = Instant::now();
        let (read_all, count, detailed) = self.read_and_verify(&pass, &mut run)?;
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

    /// Writes every block (a generator thread fills buffers while this one writes them);
    /// `false` when stopped part-way.
    fn write_blocks(&self, pass: &Pass<'_>, run: &mut DiskRun) -> anyhow::Result<bool> {
        let Pass {
            file,
            blocks,
            block_size,
            seed,
            stop,
            progress,
        } = *pass;
        let (free_tx, free_rx) = buffer_pool(block_size)?;
        let words = block_size / 8;
        std::thread::scope(|scope| -> anyhow::Result<bool> {
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
        })
    }

    /// Reads every block back (a verifier thread checks each while this one reads the next);
    /// returns whether all were read, the mismatch count and the first mismatches in detail.
    fn read_and_verify(
        &self,
        pass: &Pass<'_>,
        run: &mut DiskRun,
    ) -> anyhow::Result<(bool, u64, Vec<BlockMismatch>)> {
        let Pass {
            file,
            blocks,
            block_size,
            seed,
            stop,
            progress,
        } = *pass;
        // Fresh buffers: the generator thread took the write pool's receiver.
        let (free_tx, free_rx) = buffer_pool(block_size)?;
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
        })
    }
}

/// What the write pass and the read-and-verify pass over one job share.
#[derive(Clone, Copy)]
struct Pass<'a> {
    file: &'a File,
    blocks: u64,
    block_size: usize,
    seed: u64,
    stop: &'a Stop,
    progress: &'a (dyn Fn(u64) + Sync),
}

type Pool = (
    std::sync::mpsc::SyncSender<AlignedBuf>,
    std::sync::mpsc::Receiver<AlignedBuf>,
);

/// `BUFFERS` aligned buffers circulating between the I/O thread and its helper.
pub(super) fn buffer_pool(block_size: usize) -> anyhow::Result<Pool> {
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

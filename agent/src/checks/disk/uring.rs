//! The disk check's io_uring engine: one thread keeps `queue_depth` I/Os in flight, submitted
//! in block order (as fio's best configurations do), building each block's pattern while the
//! device works on the others and verifying each block as it completes. Every buffer the
//! kernel may still be using stays alive until its completion is reaped, on every path out.

use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

use super::pass::{Buffers, Direction, Pass, PassRun};
use super::{Instant, fill_block, verify_block};

/// A ring sized for one job's queue depth.
pub(super) struct Ring {
    ring: IoUring,
    depth: usize,
}

/// The ring's buffers and which of them the kernel has: slot `i` is buffer `i`.
struct Slots {
    buffers: Buffers,
    taken: Vec<Option<InFlight>>,
}

/// One buffer's I/O in flight.
struct InFlight {
    block: u64,
    started: Instant,
}

impl Ring {
    /// A ring for `depth` I/Os, or `None` when the kernel has no io_uring for this process
    /// (ENOSYS before 5.1, EPERM when an administrator or a sandbox turned it off).
    pub(super) fn new(depth: usize) -> Option<Self> {
        let entries = u32::try_from(depth.next_power_of_two()).ok()?;
        // IORING_OP_READ/WRITE came in 5.6: probe for them, or fall back.
        let ring = IoUring::new(entries).ok()?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe).ok()?;
        (probe.is_supported(opcode::Read::CODE) && probe.is_supported(opcode::Write::CODE))
            .then_some(Self { ring, depth })
    }

    /// Every block of `pass` once, written or read back and verified.
    pub(super) fn pass(mut self, pass: &Pass<'_>, direction: Direction) -> anyhow::Result<PassRun> {
        let mut slots = Slots {
            buffers: Buffers::new(self.depth, pass.block_size)?,
            taken: (0..self.depth).map(|_| None).collect(),
        };
        let mut run = PassRun {
            complete: true,
            ..Default::default()
        };
        let result = self.drive(pass, direction, &mut slots, &mut run);
        // Whatever happened, no buffer is freed while the kernel may still touch it: when the
        // ring cannot even be waited on any more, the buffers are leaked rather than freed.
        if let Err(err) = self.drain(&mut slots.taken) {
            std::mem::forget(slots.buffers);
            return Err(err.context("waiting for the I/Os still in flight"));
        }
        result?;
        Ok(run)
    }

    fn drive(
        &mut self,
        pass: &Pass<'_>,
        direction: Direction,
        slots: &mut Slots,
        run: &mut PassRun,
    ) -> anyhow::Result<()> {
        let mut next = 0u64;
        for slot in 0..slots.taken.len() {
            if !self.issue(pass, direction, slots, slot, &mut next, run)? {
                break;
            }
        }
        let path = pass.job.path.display();
        let len = u32::try_from(pass.block_size)?;
        loop {
            if slots.taken.iter().all(Option::is_none) {
                return Ok(());
            }
            self.wait_one()?;
            let done: Vec<(usize, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            // Every reaped completion frees its slot before any error is returned: a slot left
            // taken would have `drain` wait for a completion already reaped. Each slot is given
            // its next block as soon as its own block is dealt with, not after the whole
            // batch: the device is kept as busy as the queue allows while blocks are built or
            // checked.
            let mut failure = None;
            for (slot, result) in done {
                let Some(io) = slots.taken.get_mut(slot).and_then(Option::take) else {
                    failure.get_or_insert_with(|| {
                        anyhow::anyhow!("io_uring completed an I/O kiln did not submit ({slot})")
                    });
                    continue;
                };
                run.latencies.push(io.started.elapsed());
                let block = io.block;
                let verb = match direction {
                    Direction::Write => "write of",
                    Direction::Read => "read of",
                };
                if result < 0 {
                    let err = std::io::Error::from_raw_os_error(-result);
                    failure.get_or_insert_with(|| {
                        anyhow::anyhow!("{verb} block {block} on {path} failed: {err}")
                    });
                    continue;
                }
                if result as u32 != len {
                    failure.get_or_insert_with(|| {
                        anyhow::anyhow!(
                            "{verb} block {block} on {path} moved {result} of {len} bytes"
                        )
                    });
                    continue;
                }
                match direction {
                    Direction::Write => run.blocks_done += 1,
                    Direction::Read => run.verified(verify_block(
                        slots.buffers.words(slot),
                        pass.seed,
                        block,
                        pass.block_size,
                    )),
                }
                (pass.progress)(pass.block_size as u64);
                if failure.is_none() {
                    // Not returned at once: the rest of the reaped completions free their
                    // slots first.
                    if let Err(err) = self.issue(pass, direction, slots, slot, &mut next, run) {
                        failure = Some(err);
                    }
                }
            }
            if let Some(err) = failure {
                return Err(err);
            }
        }
    }

    /// Starts the I/O of block `next` in `slot` (building its pattern first for a write),
    /// marks the slot taken and submits the I/O at once, then moves `next` on; `false` when
    /// every block has been started or the step is stopped.
    fn issue(
        &mut self,
        pass: &Pass<'_>,
        direction: Direction,
        slots: &mut Slots,
        slot: usize,
        next: &mut u64,
        run: &mut PassRun,
    ) -> anyhow::Result<bool> {
        if *next >= pass.blocks {
            return Ok(false);
        }
        if pass.stop.should_stop() {
            run.complete = false;
            return Ok(false);
        }
        if direction == Direction::Write {
            fill_block(slots.buffers.words(slot), pass.seed, *next);
        }
        let fd = types::Fd(pass.file.as_raw_fd());
        let len = u32::try_from(pass.block_size)?;
        let offset = *next * pass.block_size as u64;
        let ptr = slots.buffers.words(slot).as_mut_ptr().cast::<u8>();
        let entry = match direction {
            Direction::Write => opcode::Write::new(fd, ptr, len).offset(offset).build(),
            Direction::Read => opcode::Read::new(fd, ptr, len).offset(offset).build(),
        }
        .user_data(slot as u64);
        // SAFETY: the buffer is `len` bytes of the pass's `buffers`, which outlive the
        // I/O: `pass` reaps every completion (`drain`) before the buffers are dropped, and the
        // slot is not reused until its completion is reaped.
        unsafe { self.ring.submission().push(&entry) }
            .map_err(|_| anyhow::anyhow!("the io_uring submission queue is full"))?;
        // Taken before the submission, which may fail after the kernel took the entry: `drain`
        // then still waits for it.
        slots.taken[slot] = Some(InFlight {
            block: *next,
            started: Instant::now(),
        });
        *next += 1;
        // Submitted now rather than with the rest of a batch: the device starts on this block
        // while the next one is built (fio submits each I/O as it is ready, too).
        loop {
            match self.ring.submit() {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(anyhow::anyhow!("io_uring submit failed: {err}")),
                Ok(_) => break,
            }
        }
        Ok(true)
    }

    /// Submits what is queued and waits for a completion; a signal's interruption is retried.
    fn wait_one(&mut self) -> anyhow::Result<()> {
        loop {
            match self.ring.submit_and_wait(1) {
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(anyhow::anyhow!("io_uring wait failed: {err}")),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// Waits for every I/O still in flight.
    fn drain(&mut self, slots: &mut [Option<InFlight>]) -> anyhow::Result<()> {
        while slots.iter().any(Option::is_some) {
            self.wait_one()?;
            for c in self.ring.completion() {
                if let Some(slot) = slots.get_mut(c.user_data() as usize) {
                    *slot = None;
                }
            }
        }
        Ok(())
    }
}

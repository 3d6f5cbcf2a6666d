//! The disk check's io_uring engine: one thread keeps `queue_depth` I/Os in flight, submitted
//! in block order (as fio's best configurations do), building each block's pattern while the
//! device works on the others and verifying each block as it completes. Every buffer the
//! kernel may still be using stays alive until its completion is reaped, on every path out.

use std::os::fd::AsRawFd;

use io_uring::{IoUring, opcode, types};

use super::io::{AlignedBuf, Direction, Pass, PassRun};
use super::*;

/// A ring sized for one job's queue depth.
pub(super) struct Ring {
    ring: IoUring,
    depth: usize,
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
        let mut buffers = (0..self.depth)
            .map(|_| AlignedBuf::new(pass.block_size))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut slots: Vec<Option<InFlight>> = (0..self.depth).map(|_| None).collect();
        let mut run = PassRun {
            complete: true,
            ..Default::default()
        };
        let result = self.drive(pass, direction, &mut buffers, &mut slots, &mut run);
        // Whatever happened, no buffer is freed while the kernel may still touch it: when the
        // ring cannot even be waited on any more, the buffers are leaked rather than freed.
        if let Err(err) = self.drain(&mut slots) {
            std::mem::forget(buffers);
            return Err(err.context("waiting for the I/Os still in flight"));
        }
        result?;
        Ok(run)
    }

    fn drive(
        &mut self,
        pass: &Pass<'_>,
        direction: Direction,
        buffers: &mut [AlignedBuf],
        slots: &mut [Option<InFlight>],
        run: &mut PassRun,
    ) -> anyhow::Result<()> {
        let path = pass.job.path.display();
        let fd = types::Fd(pass.file.as_raw_fd());
        let len = u32::try_from(pass.block_size)?;
        let mut next = 0u64;
        loop {
            // Fill the queue in block order.
            while next < pass.blocks {
                let Some(slot) = slots.iter().position(Option::is_none) else {
                    break;
                };
                if pass.stop.should_stop() {
                    run.complete = false;
                    break;
                }
                let buf = &mut buffers[slot];
                if direction == Direction::Write {
                    fill_block(buf.words(), pass.seed, next);
                }
                let offset = next * pass.block_size as u64;
                let ptr = buf.bytes().as_mut_ptr();
                let entry = match direction {
                    Direction::Write => opcode::Write::new(fd, ptr, len).offset(offset).build(),
                    Direction::Read => opcode::Read::new(fd, ptr, len).offset(offset).build(),
                }
                .user_data(slot as u64);
                // SAFETY: the buffer is `len` bytes, owned by `buffers`, which outlives the I/O:
                // `pass` reaps every completion (`drain`) before the buffers are dropped, and
                // the slot is not reused until its completion is reaped.
                unsafe { self.ring.submission().push(&entry) }
                    .map_err(|_| anyhow::anyhow!("the io_uring submission queue is full"))?;
                slots[slot] = Some(InFlight {
                    block: next,
                    started: Instant::now(),
                });
                next += 1;
            }
            if slots.iter().all(Option::is_none) {
                return Ok(());
            }
            // Submits what was queued and waits for at least one completion.
            self.wait_one()?;
            let done: Vec<(usize, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            // Every reaped completion frees its slot before any error is returned: a slot left
            // taken would have `drain` wait for a completion already reaped.
            let mut failure = None;
            for (slot, result) in done {
                let Some(io) = slots.get_mut(slot).and_then(Option::take) else {
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
                        buffers[slot].words(),
                        pass.seed,
                        block,
                        pass.block_size,
                    )),
                }
                (pass.progress)(pass.block_size as u64);
            }
            if let Some(err) = failure {
                return Err(err);
            }
        }
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

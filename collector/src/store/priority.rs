//! Scheduling priority of the database's reader threads. A reader starts every job at idle
//! priority (`SCHED_IDLE`), where any other thread of the machine that wakes takes the CPU
//! from it at once — an agent's acknowledgement never waits for a page being built. A job
//! still running after [`PROMOTE_AFTER`] is raised to ordinary priority at nice
//! [`READER_NICE`] by a watcher thread, so a page under a busy ingest still finishes in time;
//! the next job starts idle again. The raise also bounds how long a starved read can hold its
//! snapshot of the WAL, which keeps the checkpointer from starting the WAL over.
//!
//! Measured with the load bench on 2 CPUs (five paced rounds each way, pooled): readers at
//! nice 10 throughout, the agents' ack p99 with managers' pages was 1.28× of it without (pages
//! back to back 2.16×), at nice 19 1.38× (3.35×); idle throughout 0.99× (0.77×) but the
//! report's p99 reached 201–268 ms, over its 200 ms budget — with a report that took twice
//! the CPU it takes now (see [`PROMOTE_AFTER`]).
//!
//! Leaving `SCHED_IDLE` takes `CAP_SYS_NICE` (or a `RLIMIT_NICE` above the default): a reader
//! that cannot come back from idle runs at nice [`READER_NICE`] throughout instead.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The readers' nice value when not idle: below the rest of the collector (0).
pub(super) const READER_NICE: i32 = 10;

/// How long a job runs at idle priority before it is raised: the pages' budget (p99 200 ms).
/// A read still running then has spent it and is raised to finish; any earlier, and a report
/// over 10,000 nodes would be raised whenever ingest leaves it little CPU — raised, it is what
/// cost the acks (with the report's body kept, as `api::report_cache` now does while what it
/// shows stands still, the pages cost them nothing measurable). On a 2-vCPU EPYC, with a report back to back on an idle collector 15–16 ms, six
/// paced rounds each way alternating twice: ack p99 with pages against without (paired
/// windows) 1.10× and 0.95× idle throughout, report p99 100–155 ms; 1.29× and 1.14× raised
/// after 150 ms, report p99 62–213 ms. Earlier, with a report of 22 ms: 1.10× after 150 ms,
/// 1.38× after 50.
pub(super) const PROMOTE_AFTER: Duration = Duration::from_millis(200);

/// How often the watcher looks at the readers.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// One reader thread's job clock, shared with the watcher.
#[derive(Default)]
pub(super) struct Clock {
    /// The reader's thread id, once it has started.
    tid: AtomicI32,
    /// When its current job started (nanoseconds since [`epoch`], plus one); 0 between jobs.
    started: AtomicU64,
    /// Raised by the watcher during the current or the last job.
    promoted: AtomicBool,
    /// The thread can leave idle priority: jobs start idle.
    idle_jobs: AtomicBool,
}

/// The instant job clocks count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now() -> u64 {
    epoch().elapsed().as_nanos() as u64 + 1
}

impl Clock {
    /// Called once on the reader thread: records it and finds out whether its jobs can start
    /// idle (it must be able to come back), else lowers it to nice [`READER_NICE`].
    pub(super) fn enter(&self) {
        // SAFETY: gettid takes no arguments.
        let tid = unsafe { libc::gettid() };
        self.tid.store(tid, Ordering::Relaxed);
        if let Err(err) = set_normal(0) {
            tracing::debug!(error = %err, "a database reader's priority could not be lowered");
        }
        let idle = can_leave_idle();
        if !idle {
            tracing::debug!(
                "database readers cannot leave idle priority (no CAP_SYS_NICE): they run at nice {READER_NICE}"
            );
        }
        self.idle_jobs.store(idle, Ordering::Relaxed);
    }

    /// Runs `job` on the reader thread, starting at idle priority.
    pub(super) fn job<R>(&self, job: impl FnOnce() -> R) -> R {
        if self.idle_jobs.load(Ordering::Relaxed) {
            self.promoted.store(false, Ordering::Relaxed);
            if let Err(err) = set_idle(0) {
                tracing::debug!(error = %err, "a database reader could not go idle");
            }
            self.started.store(now(), Ordering::Release);
        }
        let answer = job();
        self.started.store(0, Ordering::Release);
        answer
    }
}

/// Raises every reader whose job has run past [`PROMOTE_AFTER`], until the readers are gone.
fn watch(clocks: Vec<Weak<Clock>>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let mut alive = false;
        for clock in clocks.iter().filter_map(Weak::upgrade) {
            alive = true;
            let started = clock.started.load(Ordering::Acquire);
            let due = started != 0
                && now().saturating_sub(started) > PROMOTE_AFTER.as_nanos() as u64
                && !clock.promoted.swap(true, Ordering::Relaxed);
            if due {
                if let Err(err) = set_normal(clock.tid.load(Ordering::Relaxed)) {
                    tracing::debug!(error = %err, "a long database read could not be raised");
                }
            }
        }
        if !alive {
            return;
        }
    }
}

/// The job clocks for `n` readers, and the watcher's thread over them.
pub(super) fn clocks(n: usize) -> std::io::Result<Vec<Arc<Clock>>> {
    let clocks: Vec<Arc<Clock>> = (0..n).map(|_| Arc::default()).collect();
    let weak = clocks.iter().map(Arc::downgrade).collect();
    std::thread::Builder::new()
        .name("sqlite-reader-watch".into())
        .spawn(move || watch(weak))?;
    Ok(clocks)
}

/// Whether this process may move a thread from idle priority back to nice [`READER_NICE`]:
/// with `CAP_SYS_NICE`, or a `RLIMIT_NICE` that allows that nice value.
pub(super) fn can_leave_idle() -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for writes for the call.
    let by_limit = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0
        && limit.rlim_cur >= (20 - READER_NICE) as libc::rlim_t;
    // Bit 23 of the effective capabilities is CAP_SYS_NICE.
    let by_capability = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 23) != 0);
    by_limit || by_capability
}

/// Puts thread `tid` (0: the calling thread) at idle priority.
fn set_idle(tid: libc::pid_t) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is valid for the call; a thread id only selects whose policy changes.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Puts thread `tid` (0: the calling thread) at ordinary priority, nice [`READER_NICE`].
fn set_normal(tid: libc::pid_t) -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `set_idle`; setpriority takes no pointers, and PRIO_PROCESS with a thread
    // id changes only that thread.
    unsafe {
        if libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let who = if tid == 0 { libc::gettid() } else { tid };
        if libc::setpriority(libc::PRIO_PROCESS, who as libc::id_t, READER_NICE) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

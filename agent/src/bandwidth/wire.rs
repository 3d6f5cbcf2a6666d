//! The bytes of a bandwidth stream on a socket, once the HTTP upgrade has handed it over:
//! sent by `splice(2)` from a pipe that `tee(2)` fills with references to the pattern's
//! pages, so the kernel neither copies the bytes nor looks them up in a file for every call,
//! and received with `recv(MSG_TRUNC)`, which on TCP counts the bytes and drops them in the
//! kernel instead of copying them out — kiln never looks at them, TCP has checked them. The
//! calls are non-blocking, driven by the runtime's readiness, so a process's streams share its
//! few runtime threads (half the CPUs, [`super::stream_threads`]) the way iperf3's streams
//! share its one select loop: a thread per stream on each side left the kernel's network work
//! (softirq) too little CPU. Every wait is bounded by [`IO_TIMEOUT`], so a stream whose peer
//! goes silent ends by itself.
//!
//! Measured over a veth pair on 2 vCPUs, two streams each way: `sendfile(2)` from a memfd
//! holding the pattern (iperf3 `-Z`'s zero copy) spent ≈12 % of the sending CPU finding each
//! 4 KiB page in the memfd (`shmem_file_splice_read`, `filemap_get_entry`); `tee` only takes
//! another reference to pages already in a pipe. A minimal C-style poll loop moved 37–45 Gb/s
//! with sendfile from a memfd and 48–65 Gb/s with tee + splice of 128 KiB (64 KiB a call:
//! 42–53; 1 MiB: 27–34, a long call holds the socket while the ACKs that would open the
//! window wait behind it). Without `TCP_NODELAY` the kernel holds partial segments back
//! between calls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Longest a stream waits for its socket before it is given up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of the pattern's period: every stream sends these bytes over and over, and one
/// splice sends at most this much (see the module's measurements).
const CYCLE: usize = 128 << 10;
/// Bytes of the pattern kept in memory (whole periods): the plain HTTP bodies send chunks of
/// up to this, and sends by write(2) cycle through it.
const PATTERN: usize = 1 << 20;
/// Bytes one write(2) sends at most, where splice is not available.
const WRITE: usize = 64 << 10;
/// Bytes one receive takes at most: fewer calls per byte, nothing copied (`MSG_TRUNC`). On a
/// 2-vCPU Xeon over veth (2026-12-01, short runs alternating with iperf3) 1 MiB rather than
/// 256 KiB took one stream from 0.80 to 0.93 of iperf3's best and two from 0.96 to 1.04.
const RECEIVE: usize = 1 << 20;

/// The pattern, in memory and (where the kernel lets a pipe hold a whole period) in a pipe
/// the streams `tee` from.
struct Pattern {
    bytes: Vec<u8>,
    /// Read end of a pipe holding one period, never read, only teed; its write end is closed.
    pipe: Option<OwnedFd>,
}

/// The pattern shared by every stream of the process: incompressible bytes, written once.
fn pattern() -> &'static Pattern {
    static PATTERN_PIPE: OnceLock<Pattern> = OnceLock::new();
    PATTERN_PIPE.get_or_init(|| {
        let period: Vec<u8> = (0..CYCLE / 8)
            .flat_map(|i| crate::rng::splitmix64(i as u64).to_le_bytes())
            .collect();
        let bytes = period.repeat(PATTERN / CYCLE);
        let pipe = pattern_pipe(&period)
            .inspect_err(|err| {
                tracing::debug!(error = %err, "no pipe for the bandwidth pattern: sending with write(2)")
            })
            .ok();
        Pattern { bytes, pipe }
    })
}

/// The first `len` bytes of the pattern (at most [`PATTERN`]).
pub fn pattern_bytes(len: usize) -> &'static [u8] {
    let bytes = &pattern().bytes;
    &bytes[..len.min(bytes.len())]
}

/// A pipe of [`CYCLE`] bytes' capacity: `(read end, write end)`.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just returned by pipe2 and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A pipe holds 64 KiB unless asked; an unprivileged process may ask up to
    // /proc/sys/fs/pipe-max-size (1 MiB by default) while its user's pipe quota lasts.
    // SAFETY: F_SETPIPE_SZ takes an int and no pointer.
    let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CYCLE as libc::c_int) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    if (size as usize) < CYCLE {
        return Err(io::Error::other(format!(
            "the kernel gave the pipe {size} bytes, not {CYCLE}"
        )));
    }
    Ok((read, write))
}

/// A pipe holding `period`, its write end closed.
fn pattern_pipe(period: &[u8]) -> io::Result<OwnedFd> {
    let (read, write) = pipe()?;
    // SAFETY: `period` is valid for reads of its length for the call.
    let written =
        counted(unsafe { libc::write(write.as_raw_fd(), period.as_ptr().cast(), period.len()) })?;
    if written != period.len() {
        return Err(io::Error::other(format!(
            "the pattern pipe took {written} of {} bytes",
            period.len()
        )));
    }
    Ok(read)
}

/// Readies `socket` for a stream: segments go out as soon as a call hands them over
/// (`TCP_NODELAY`).
pub fn ready(socket: &TcpStream) -> io::Result<()> {
    socket.set_nodelay(true)
}

/// Runs `call` on `socket` when it is ready for `interest`, waiting at most [`IO_TIMEOUT`] for
/// readiness; a call interrupted by a signal is made again. Gives the runtime its turn before
/// every call: the streams on one runtime thread take turns call by call, as iperf3's take
/// turns in its select loop (measured over veth, two streams on one thread: 3–16 % more than
/// a turn every 128 calls), and a stream that never has to wait cannot hold the thread from
/// the other streams and requests.
async fn when_ready<R>(
    socket: &TcpStream,
    interest: Interest,
    mut call: impl FnMut(RawFd) -> io::Result<R>,
) -> io::Result<R> {
    tokio::task::yield_now().await;
    loop {
        match socket.try_io(interest, || call(socket.as_raw_fd())) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(IO_TIMEOUT, socket.ready(interest))
                    .await
                    .map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer moved nothing for {}s", IO_TIMEOUT.as_secs()),
                        )
                    })??;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// The result of a system call that returns a count or −1.
fn counted(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One stream's pipe: references to the pattern's pages, teed from the pattern pipe a period
/// at a time, spliced into the socket.
struct Spliced {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe not yet spliced.
    queued: usize,
}

impl Spliced {
    fn new() -> io::Result<Spliced> {
        let (read, write) = pipe()?;
        Ok(Spliced {
            read,
            write,
            queued: 0,
        })
    }

    /// Splices up to `budget` bytes of the pattern into `socket`, teeing the next period
    /// when the pipe is empty; the bytes sent.
    async fn send(
        &mut self,
        pattern: &OwnedFd,
        socket: &TcpStream,
        budget: u64,
    ) -> io::Result<usize> {
        if self.queued == 0 {
            // SAFETY: both descriptors are open pipes; tee only duplicates buffer references.
            self.queued = counted(unsafe {
                libc::tee(
                    pattern.as_raw_fd(),
                    self.write.as_raw_fd(),
                    CYCLE,
                    libc::SPLICE_F_NONBLOCK,
                )
            })?;
            if self.queued == 0 {
                return Err(io::Error::other("the pattern pipe is empty"));
            }
        }
        let want = self
            .queued
            .min(usize::try_from(budget).unwrap_or(usize::MAX));
        let moved = when_ready(socket, Interest::WRITABLE, |fd| {
            // SAFETY: both descriptors are open for the call; null offsets are required
            // for pipes and sockets.
            counted(unsafe {
                libc::splice(
                    self.read.as_raw_fd(),
                    std::ptr::null_mut(),
                    fd,
                    std::ptr::null_mut(),
                    want,
                    libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
                )
            })
        })
        .await?;
        self.queued -= moved;
        Ok(moved)
    }
}

/// Sends the pattern on `socket` until `limit` bytes have gone or `until` has passed,
/// whichever comes first; the bytes sent. A peer that closes ends the stream with the error
/// (`BrokenPipe`, `ConnectionReset`): for a server that is the normal end of a download.
pub async fn send(socket: &TcpStream, limit: u64, until: Option<Instant>) -> io::Result<u64> {
    send_by(socket, limit, until, true).await
}

/// [`send`], by splice where the kernel allows and `splice` is set, else by write(2): the
/// same bytes either way.
async fn send_by(
    socket: &TcpStream,
    limit: u64,
    until: Option<Instant>,
    splice: bool,
) -> io::Result<u64> {
    let pattern = pattern();
    let mut spliced = match &pattern.pipe {
        Some(_) if splice => Spliced::new()
            .inspect_err(|err| {
                tracing::debug!(error = %err, "no pipe for a bandwidth stream: sending with write(2)")
            })
            .ok(),
        _ => None,
    };
    let mut sent = 0u64;
    let mut offset = 0usize;
    while sent < limit && until.is_none_or(|until| Instant::now() < until) {
        let moved = match (&pattern.pipe, &mut spliced) {
            (Some(from), Some(pipe)) => match pipe.send(from, socket, limit - sent).await {
                // A socket that cannot take spliced pages: the same bytes by write.
                Err(err)
                    if sent == 0
                        && matches!(
                            err.raw_os_error(),
                            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        ) =>
                {
                    spliced = None;
                    continue;
                }
                other => other?,
            },
            _ => {
                let want = (PATTERN - offset)
                    .min(WRITE)
                    .min(usize::try_from(limit - sent).unwrap_or(usize::MAX));
                let bytes = &pattern.bytes[offset..offset + want];
                let moved =
                    when_ready(socket, Interest::WRITABLE, |_| socket.try_write(bytes)).await?;
                offset = (offset + moved) % PATTERN;
                moved
            }
        };
        if moved == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket took no bytes",
            ));
        }
        sent += moved as u64;
    }
    Ok(sent)
}

/// Takes from `socket` until the peer shuts its side, `limit` bytes have come, or `until` has
/// passed; the bytes taken (counted by the kernel, not copied: `MSG_TRUNC`).
pub async fn receive(socket: &TcpStream, limit: u64, until: Option<Instant>) -> io::Result<u64> {
    // The kernel does not write into it under MSG_TRUNC; it is there should a kernel ignore
    // the flag and copy after all.
    let mut buffer = vec![0u8; RECEIVE];
    let mut received = 0u64;
    while received < limit && until.is_none_or(|until| Instant::now() < until) {
        let n = when_ready(socket, Interest::READABLE, |fd| {
            // SAFETY: the buffer is valid for writes of its length for the call.
            counted(unsafe {
                libc::recv(
                    fd,
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            })
        })
        .await?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair on loopback, both ends ready.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        ready(&client).unwrap();
        ready(&server).unwrap();
        (client, server)
    }

    /// Sends more than [`PATTERN`] and not a multiple of it, by splice or by write, and
    /// checks every byte that arrives.
    async fn send_exactly_the_limit(splice: bool) {
        let (mut client, server) = pair().await;
        // More than the pattern file, not a multiple of it: the offset wraps.
        let limit = (PATTERN * 2 + 12_345) as u64;
        let sender = tokio::spawn(async move {
            let sent = send_by(&server, limit, None, splice).await.unwrap();
            drop(server);
            sent
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(sender.await.unwrap(), limit);
        assert_eq!(got.len() as u64, limit);
        let bytes = &pattern().bytes;
        assert_eq!(&got[..PATTERN], &bytes[..]);
        assert_eq!(&got[PATTERN..2 * PATTERN], &bytes[..]);
        assert_eq!(&got[2 * PATTERN..], &bytes[..12_345]);
    }

    #[tokio::test]
    async fn sends_exactly_the_limit_of_the_pattern_across_its_wrap_point_by_splice() {
        assert!(
            pattern().pipe.is_some(),
            "this kernel has pipes of a period"
        );
        send_exactly_the_limit(true).await;
    }

    #[tokio::test]
    async fn sends_the_same_bytes_by_write_where_there_is_no_splice() {
        send_exactly_the_limit(false).await;
    }

    #[test]
    fn the_pattern_repeats_a_period_of_distinct_words() {
        let bytes = &pattern().bytes;
        assert_eq!(bytes.len(), PATTERN);
        assert_eq!(&bytes[..CYCLE], &bytes[PATTERN - CYCLE..]);
        let words: std::collections::HashSet<&[u8]> = bytes[..CYCLE].chunks(8).collect();
        assert_eq!(words.len(), CYCLE / 8, "incompressible within a period");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receive_counts_to_the_peers_shutdown_and_send_stops_at_its_deadline() {
        let (client, server) = pair().await;
        let receiver = tokio::spawn(async move { receive(&server, u64::MAX, None).await.unwrap() });
        let started = Instant::now();
        let sent = send(
            &client,
            u64::MAX,
            Some(started + Duration::from_millis(200)),
        )
        .await
        .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let mut client = client;
        tokio::io::AsyncWriteExt::shutdown(&mut client)
            .await
            .unwrap();
        assert!(sent > 0);
        assert_eq!(receiver.await.unwrap(), sent);
    }

    #[tokio::test]
    async fn a_peer_that_closes_ends_the_send_with_an_error() {
        let (client, server) = pair().await;
        drop(client);
        let err = send(&server, u64::MAX, None).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }
}

//! The bytes of a bandwidth stream on a socket, once the HTTP upgrade has handed it over:
//! sent with `sendfile(2)` from a memfd holding the pattern, so the kernel takes the pages by
//! reference instead of copying them from user memory (what `iperf3 -Z` does), and received
//! with `recv(MSG_TRUNC)`, which on TCP counts the bytes and drops them in the kernel instead
//! of copying them out — kiln never looks at them, TCP has checked them. The calls are
//! non-blocking, driven by the runtime's readiness, so a process's streams share its few
//! runtime threads (half the CPUs, [`super::stream_threads`]) the way iperf3's streams share
//! its one select loop: a thread per stream on each side left the kernel's network work
//! (softirq) too little CPU. Every wait is bounded by [`IO_TIMEOUT`], so a stream whose peer
//! goes silent ends by itself.
//!
//! Measured over a veth pair on 2 vCPUs (one stream, the same code otherwise): sendfile calls
//! of 64 KiB with `TCP_NODELAY` moved 37–45 Gb/s, 128 KiB 16–23, 4 MiB 13–19 — a long call
//! holds the socket, and the ACKs that would open the window wait behind it; without
//! `TCP_NODELAY` the kernel holds partial segments back between calls.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Longest a stream waits for its socket before it is given up.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Size of the pattern file the sends cycle through.
const PATTERN: usize = 4 << 20;
/// Bytes one `sendfile` call sends at most (see the module's measurements).
const SEND: usize = 64 << 10;
/// Bytes one receive takes at most: fewer calls per byte, nothing copied (`MSG_TRUNC`).
const RECEIVE: usize = 256 << 10;

/// The pattern, in memory and (where the kernel has memfd) as a file `sendfile` reads.
struct Pattern {
    bytes: Vec<u8>,
    file: Option<OwnedFd>,
}

/// The pattern shared by every stream of the process: incompressible bytes, written once.
fn pattern() -> &'static Pattern {
    static PATTERN_FILE: OnceLock<Pattern> = OnceLock::new();
    PATTERN_FILE.get_or_init(|| {
        let bytes: Vec<u8> = (0..PATTERN / 8)
            .flat_map(|i| crate::rng::splitmix64(i as u64).to_le_bytes())
            .collect();
        let file = memfd(&bytes)
            .inspect_err(|err| {
                tracing::debug!(error = %err, "no memfd for the bandwidth pattern: sending with write(2)")
            })
            .ok();
        Pattern { bytes, file }
    })
}

/// The first `len` bytes of the pattern (at most its size).
pub fn pattern_bytes(len: usize) -> &'static [u8] {
    let bytes = &pattern().bytes;
    &bytes[..len.min(bytes.len())]
}

/// A memfd holding `bytes`.
fn memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::memfd_create(c"kiln-bandwidth".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(OwnedFd::from(file))
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

/// Sends the pattern on `socket` until `limit` bytes have gone or `until` has passed,
/// whichever comes first; the bytes sent. A peer that closes ends the stream with the error
/// (`BrokenPipe`, `ConnectionReset`): for a server that is the normal end of a download.
pub async fn send(socket: &TcpStream, limit: u64, until: Option<Instant>) -> io::Result<u64> {
    let pattern = pattern();
    let mut sent = 0u64;
    let mut offset = 0usize;
    let mut by_sendfile = pattern.file.is_some();
    while sent < limit && until.is_none_or(|until| Instant::now() < until) {
        let want = (PATTERN - offset)
            .min(SEND)
            .min(usize::try_from(limit - sent).unwrap_or(usize::MAX));
        let moved = match (&pattern.file, by_sendfile) {
            (Some(file), true) => {
                let result = when_ready(socket, Interest::WRITABLE, |fd| {
                    let mut at = offset as libc::off_t;
                    // SAFETY: both descriptors are open for the call; `at` is a valid offset
                    // inside the pattern file and sendfile only reads and advances it.
                    counted(unsafe { libc::sendfile(fd, file.as_raw_fd(), &mut at, want) })
                })
                .await;
                match result {
                    // A socket or kernel that cannot sendfile: the same bytes by send.
                    Err(err)
                        if sent == 0
                            && matches!(
                                err.raw_os_error(),
                                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                            ) =>
                    {
                        by_sendfile = false;
                        continue;
                    }
                    other => other?,
                }
            }
            _ => {
                let bytes = &pattern.bytes[offset..offset + want];
                when_ready(socket, Interest::WRITABLE, |_| socket.try_write(bytes)).await?
            }
        };
        if moved == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the socket took no bytes",
            ));
        }
        sent += moved as u64;
        offset = (offset + moved) % PATTERN;
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

    #[tokio::test]
    async fn sends_exactly_the_limit_of_the_pattern_across_its_wrap_point() {
        let (mut client, server) = pair().await;
        // More than the pattern file, not a multiple of it: the offset wraps.
        let limit = (PATTERN * 2 + 12_345) as u64;
        let sender = tokio::spawn(async move {
            let sent = send(&server, limit, None).await.unwrap();
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

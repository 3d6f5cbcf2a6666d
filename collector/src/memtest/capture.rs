//! Watching a node's memtest86+ console until there is a verdict: pass once the asked passes
//! complete with zero errors; fail on any error, on a stall (no progress on screen within the
//! stall timeout), on the stage timeout, and on lost capture. Raw bytes are kept (bounded)
//! for the node's page.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::power::{Power, deselect_keys};
use super::screen::{MemtestScreen, Reading, Status};
use crate::config::Source;
use kiln_protocol::verdict::Verdict;

/// Most raw console bytes kept per run; past this the oldest are dropped.
pub const MAX_RAW: usize = 16 << 20;

/// The stage's rules, from the suite.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Passes that must complete.
    pub passes: u32,
    /// Whole-stage limit.
    pub timeout: Duration,
    /// Longest without progress on screen.
    pub stall: Duration,
    /// Tests to deselect through the F1 menu (needs a QMP power driver).
    pub skip_tests: Vec<u8>,
    /// Where each new reading goes while the stage runs (the dashboard's live progress).
    pub live: Option<tokio::sync::watch::Sender<Option<Reading>>>,
}

/// How the stage ended.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Passed?
    pub pass: bool,
    /// One line: why.
    pub detail: String,
    /// The last reading.
    pub reading: Option<Reading>,
    /// The final screen.
    pub screen: String,
    /// Raw console bytes (the last `MAX_RAW`).
    pub raw: Vec<u8>,
    /// Seconds from start to verdict.
    pub secs: u64,
}

/// A connected console.
enum Stream {
    Tcp(tokio::net::TcpStream),
    /// The child is kept so dropping the stream kills it (`kill_on_drop`).
    Child {
        _child: tokio::process::Child,
        out: tokio::process::ChildStdout,
    },
    File(tokio::fs::File),
}

impl Stream {
    async fn open(source: &Source) -> anyhow::Result<Stream> {
        match source {
            Source::Tcp(addr) => Ok(Stream::Tcp(tokio::net::TcpStream::connect(addr).await?)),
            Source::File(path) => {
                use tokio::io::AsyncSeekExt;
                let mut f = tokio::fs::File::open(path).await?;
                f.seek(std::io::SeekFrom::End(0)).await?;
                Ok(Stream::File(f))
            }
            Source::Command { argv, env_file } => {
                let (program, args) = argv
                    .split_first()
                    .ok_or_else(|| anyhow::anyhow!("empty console command"))?;
                let mut cmd = tokio::process::Command::new(program);
                cmd.args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true);
                if let Some(file) = env_file {
                    for line in tokio::fs::read_to_string(file).await?.lines() {
                        if let Some((k, v)) = line.split_once('=') {
                            cmd.env(k.trim(), v.trim());
                        }
                    }
                }
                let mut child = cmd.spawn()?;
                let out = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
                Ok(Stream::Child { _child: child, out })
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf).await,
            Stream::Child { out, .. } => out.read(buf).await,
            Stream::File(f) => {
                let n = f.read(buf).await?;
                if n == 0 {
                    // A followed file: wait for more rather than treating the end as a drop.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(usize::MAX);
                }
                Ok(n)
            }
        }
    }
}

/// A console being followed: opened when first read, opened again after a drop.
struct Follower {
    source: Source,
    stream: Option<Stream>,
    retry: Duration,
}

/// What one read of a [`Follower`] gave.
enum Chunk {
    /// This many bytes, at the start of the buffer.
    Data(usize),
    /// Nothing within a second; the console is open.
    Quiet,
    /// The console is not open (yet, or again), it dropped, or `cancel` changed.
    Gone,
}

impl Follower {
    fn new(source: Source, retry: Duration) -> Follower {
        Follower {
            source,
            stream: None,
            retry,
        }
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Reads what the console has, waiting about a second at most (or `retry` after a failed
    /// open), and less when `cancel` changes.
    async fn next(
        &mut self,
        buf: &mut [u8],
        cancel: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Chunk {
        let Some(s) = self.stream.as_mut() else {
            match tokio::time::timeout(Duration::from_secs(5), Stream::open(&self.source)).await {
                Ok(Ok(s)) => self.stream = Some(s),
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry) => {}
                        _ = cancel.changed() => {}
                    }
                }
            }
            return Chunk::Gone;
        };
        let n = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(1), s.read(buf)) => r,
            _ = cancel.changed() => return Chunk::Gone,
        };
        match n {
            Err(_) | Ok(Ok(usize::MAX)) => Chunk::Quiet,
            Ok(Ok(0)) | Ok(Err(_)) => {
                // Dropped: opened again on the next read.
                self.stream = None;
                Chunk::Gone
            }
            Ok(Ok(n)) => Chunk::Data(n),
        }
    }
}

/// Follows the console through the node's Linux boot and run until `cancel` turns (the
/// Linux stage ended) or `limit` passes, keeping the last [`crate::console::MAX_TAIL`] bytes
/// and storing them as the run's console tail every 2 s while they change. A console that
/// cannot be opened is retried. One thing here decides a verdict: a kernel panic is final,
/// so the run fails at once with what the console shows, instead of waiting out the
/// heartbeat to call it lost contact.
pub async fn follow_tail(
    source: Source,
    mut cancel: tokio::sync::watch::Receiver<bool>,
    db: crate::store::Db,
    captures: std::sync::Arc<crate::lifecycle::captures::Captures>,
    run_id: i64,
    limit: Duration,
) {
    let started = Instant::now();
    let mut console = Follower::new(source, Duration::from_secs(1));
    let mut tail = Vec::new();
    let mut stored_len = 0usize;
    let mut stored_at = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    let mut changed = false;
    let mut panicked_at: Option<Instant> = None;
    let mut lines = AttestLines::default();
    while !*cancel.borrow() && started.elapsed() < limit {
        if changed && stored_at.elapsed() >= Duration::from_secs(2) {
            let bytes = tail.clone();
            let _ = db
                .call(move |c| crate::lifecycle::console_tail(c, run_id, &bytes))
                .await;
            stored_at = Instant::now();
            stored_len = tail.len();
            changed = false;
        }
        if let Chunk::Data(n) = console.next(&mut buf, &mut cancel).await {
            for claim in lines.feed(&buf[..n]) {
                let (what, run) = (claim.clone(), claim.run);
                match db
                    .call(move |c| crate::lifecycle::attest::attestation(c, run_id, &what))
                    .await
                {
                    Ok((outcome, ended)) => {
                        tracing::info!(
                            run_id,
                            claimed = run,
                            ?outcome,
                            "attestation line on the console"
                        );
                        captures.stop(&ended);
                    }
                    Err(err) => {
                        tracing::error!(run_id, error = %err, "cannot record the console's attestation")
                    }
                }
            }
            crate::console::keep_tail(&mut tail, &buf[..n]);
            changed = true;
            // The panic line may straddle two reads: look a little before the new bytes.
            let from = tail.len().saturating_sub(n + PANIC.len());
            if panicked_at.is_none() && contains(&tail[from..], PANIC.as_bytes()) {
                panicked_at = Some(Instant::now());
            }
        }
        // A moment after the panic line, for the rest of its report to arrive.
        if panicked_at.is_some_and(|at| at.elapsed() >= PANIC_SETTLE) {
            let bytes = tail.clone();
            match db
                .call(move |c| crate::lifecycle::kernel_panicked(c, run_id, &bytes))
                .await
            {
                Ok(ended) => captures.stop(&ended),
                Err(err) => {
                    tracing::error!(run_id, error = %err, "cannot fail the run for its panic")
                }
            }
            return;
        }
    }
    if changed || tail.len() != stored_len {
        let _ = db
            .call(move |c| crate::lifecycle::console_tail(c, run_id, &tail))
            .await;
    }
}

/// Cuts a console stream into lines and picks out the attestation lines
/// ([`kiln_protocol::attest`]), holding at most one line's worth between reads.
#[derive(Default)]
pub struct AttestLines {
    line: Vec<u8>,
    /// The current line grew past any attestation's length: skipped to its end.
    overlong: bool,
}

impl AttestLines {
    /// The attestation claims on the lines `bytes` completes.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<kiln_protocol::attest::Claim> {
        let mut claims = Vec::new();
        for &b in bytes {
            if b == b'\n' || b == b'\r' {
                if !self.overlong && contains(&self.line, kiln_protocol::attest::PREFIX.as_bytes())
                {
                    claims.extend(kiln_protocol::attest::parse(&String::from_utf8_lossy(
                        &self.line,
                    )));
                }
                self.line.clear();
                self.overlong = false;
            } else if self.line.len() < kiln_protocol::attest::MAX_LINE {
                self.line.push(b);
            } else {
                self.overlong = true;
            }
        }
        claims
    }
}

/// Why the watch must end without a verdict from the screen, if it must: the stage ended
/// elsewhere, memtest86+ ran past its timeout, or the screen stopped moving (or could not be
/// read) for the stall limit.
fn given_up(
    cancelled: bool,
    started: Instant,
    last_progress: Instant,
    console_open: bool,
    rules: &Rules,
) -> Option<String> {
    if cancelled {
        return Some("the stage ended before memtest86+ finished".into());
    }
    if started.elapsed() > rules.timeout {
        return Some(format!(
            "timed out: memtest86+ did not finish within {}s",
            rules.timeout.as_secs()
        ));
    }
    if last_progress.elapsed() > rules.stall {
        let what = if console_open {
            "stalled: no progress on the memtest86+ screen"
        } else {
            "lost capture: the console could not be read"
        };
        return Some(format!("{what} for {}s", rules.stall.as_secs()));
    }
    None
}

/// Deselects `tests` in memtest86+'s F1 menu through the power driver's keyboard, after a
/// moment for memtest86+ to take input; a test that cannot be deselected runs (and is logged).
async fn deselect(power: &Power, tests: &[u8], node: &str) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for test in tests {
        let keys = deselect_keys(*test);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Err(err) = power.send_keys(&keys).await {
            tracing::warn!(node, error = %err, "could not deselect memtest86+ test {test}; it will run");
        }
    }
}

/// The failing verdict's detail: the error count and the first row memtest86+ drew.
fn errors_found(reading: &super::screen::Reading, errors: u64) -> String {
    let first = reading
        .error_rows
        .first()
        .map(|r| {
            format!(
                "; first at 0x{} ({}): expected {} found {} (test {})",
                r.address, r.address_human, r.expected, r.found, r.test
            )
        })
        .unwrap_or_default();
    format!("memtest86+ found {errors} error(s){first}")
}

/// What Linux prints when it panics.
const PANIC: &str = "Kernel panic - not syncing";

/// How long after the panic line the rest of the report is awaited.
const PANIC_SETTLE: Duration = Duration::from_secs(2);

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Longest wait, once errors show, for memtest86+ to draw their rows.
const ERROR_ROWS_WAIT: Duration = Duration::from_secs(6);

/// Watches until a verdict, or until `cancel` fires (the stage ended elsewhere, e.g. the node
/// rebooted unexpectedly).
pub async fn watch(
    source: Source,
    rules: Rules,
    power: Option<Power>,
    node: String,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Finding {
    let started = Instant::now();
    let mut screen = MemtestScreen::default();
    let mut raw: Vec<u8> = Vec::new();
    let mut last_progress = Instant::now();
    let mut signature = None;
    let mut keys_sent = rules.skip_tests.is_empty();
    let mut console = Follower::new(source, Duration::from_millis(500));
    let mut buf = vec![0u8; 16 * 1024];
    let mut errors_seen: Option<Instant> = None;
    let finish = |pass: bool, detail: String, screen: &MemtestScreen, raw: Vec<u8>| Finding {
        pass,
        detail,
        reading: Some(screen.read()).filter(|r| r.started),
        screen: screen.text(),
        raw,
        secs: started.elapsed().as_secs(),
    };
    loop {
        if let Some(why) = given_up(
            *cancel.borrow(),
            started,
            last_progress,
            console.is_open(),
            &rules,
        ) {
            return finish(false, why, &screen, raw);
        }
        match console.next(&mut buf, &mut cancel).await {
            // Not open or dropped: try again (the stall timer keeps running meanwhile).
            Chunk::Gone => continue,
            Chunk::Quiet => {}
            Chunk::Data(n) => {
                screen.feed(&buf[..n]);
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RAW {
                    raw.drain(..raw.len() - MAX_RAW);
                }
            }
        }
        let reading = screen.read();
        if !reading.started {
            // Firmware and iPXE output: the node is alive and on its way.
            continue;
        }
        let sig = (
            reading.passes,
            reading.pass_pct,
            reading.test_pct,
            reading.test_number,
            reading.elapsed_secs,
        );
        if signature != Some(sig) {
            signature = Some(sig);
            last_progress = Instant::now();
            if let Some(live) = &rules.live {
                let _ = live.send(Some(reading.clone()));
            }
        }
        if !keys_sent {
            keys_sent = true;
            if let Some(power) = &power {
                deselect(power, &rules.skip_tests, &node).await;
            }
        }
        let errors = reading.errors.unwrap_or(0);
        let seen_so_far = kiln_protocol::verdict::MemtestScreen {
            errors,
            failed: reading.status == Some(Status::Failed),
            passes: reading.passes.unwrap_or(0),
            passed: reading.status == Some(Status::Pass),
        };
        let verdict = kiln_protocol::verdict::memtest(seen_so_far, rules.passes);
        if verdict == Some(Verdict::Fail) {
            // The verdict is certain now, but memtest86+ draws the error rows a moment after
            // the counter: wait (briefly) for them, so the fault names its address.
            let drawn = !reading.error_rows.is_empty()
                || !reading.summary.is_empty()
                || !reading.badram.is_empty();
            let seen = *errors_seen.get_or_insert_with(Instant::now);
            if !drawn && seen.elapsed() < ERROR_ROWS_WAIT {
                continue;
            }
            return finish(false, errors_found(&reading, errors), &screen, raw);
        }
        if verdict == Some(Verdict::Pass) {
            return finish(
                true,
                format!(
                    "{} pass(es) completed with 0 errors",
                    reading.passes.unwrap_or(0)
                ),
                &screen,
                raw,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_lines_are_found_across_reads_and_overlong_or_damaged_lines_are_not() {
        let line = kiln_protocol::attest::line("k", 12, 3);
        let mut lines = AttestLines::default();
        // Split across reads, after boot noise, ended by CR LF.
        let (a, b) = line.split_at(20);
        assert!(
            lines
                .feed(format!("noise\r\n[ 3.1] {a}").as_bytes())
                .is_empty()
        );
        let claims = lines.feed(format!("{b}\r\n").as_bytes());
        assert_eq!(claims.len(), 1);
        assert_eq!((claims[0].run, claims[0].node), (12, 3));
        // A line longer than any attestation is skipped whole, even if one follows inside it.
        let long = format!("{}{line}\n", "x".repeat(4096));
        assert!(lines.feed(long.as_bytes()).is_empty());
        // Bytes that are not UTF-8, and a damaged line, are noise.
        assert!(
            lines
                .feed(b"kiln-attest run=\xff\xfe node=3 proof=zz\n")
                .is_empty()
        );
        // The next good line is still found.
        assert_eq!(lines.feed(format!("{line}\n").as_bytes()).len(), 1);
    }
    use crate::memtest::fixture;

    /// Serves `bytes` on a local TCP port, in chunks, then holds the connection open.
    async fn console(bytes: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut s, _) = listener.accept().await.unwrap();
            for chunk in bytes.chunks(4096) {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        addr
    }

    fn rules(passes: u32, stall: u64) -> Rules {
        Rules {
            passes,
            timeout: Duration::from_secs(60),
            stall: Duration::from_secs(stall),
            skip_tests: vec![],
            live: None,
        }
    }

    #[tokio::test]
    async fn a_clean_transcript_passes_and_errors_fail_with_the_address() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let addr = console(fixture("pass-64M-default-tests.serial")).await;
        let f = watch(
            Source::Tcp(addr),
            rules(1, 10),
            None,
            "n".into(),
            rx.clone(),
        )
        .await;
        assert!(f.pass, "{}", f.detail);
        assert_eq!(f.detail, "1 pass(es) completed with 0 errors");
        let addr = console(fixture("errors-reportmode-address.serial")).await;
        let f = watch(Source::Tcp(addr), rules(1, 10), None, "n".into(), rx).await;
        assert!(!f.pass);
        assert!(f.detail.starts_with("memtest86+ found"), "{}", f.detail);
        assert!(f.detail.contains("first at 0x"), "{}", f.detail);
        assert!(f.screen.contains("Failed!"));
    }

    #[tokio::test]
    async fn a_screen_without_progress_stalls_and_no_console_is_lost_capture() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        // Only the first third of a run: memtest is drawn, then nothing moves.
        let bytes = fixture("pass-64M-default-tests.serial");
        let addr = console(bytes[..bytes.len() / 3].to_vec()).await;
        let f = watch(Source::Tcp(addr), rules(1, 2), None, "n".into(), rx.clone()).await;
        assert!(!f.pass);
        assert!(f.detail.starts_with("stalled"), "{}", f.detail);
        let f = watch(
            Source::Tcp("127.0.0.1:1".into()),
            rules(1, 2),
            None,
            "n".into(),
            rx,
        )
        .await;
        assert!(f.detail.starts_with("lost capture"), "{}", f.detail);
    }

    #[tokio::test]
    async fn a_cancelled_watch_ends_without_a_pass() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(watch(
            Source::Tcp("127.0.0.1:1".into()),
            rules(1, 60),
            None,
            "n".into(),
            rx,
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        // Ended by the cancel itself: at once and saying so — not by the 60 s stall rule
        // ("lost capture"), which would also make it a non-pass.
        let f = tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the cancelled watch did not end within 5 s")
            .unwrap();
        assert!(!f.pass);
        assert_eq!(f.detail, "the stage ended before memtest86+ finished");
    }
}

//! Streams a run's events to the collector (the spool and the send loop; the rest of what the
//! agent says to the collector is [`crate::collector`]'s): spooled in memory (bounded — under pressure the
//! oldest log lines go first, replaced by a counted marker; outcomes are never dropped), sent
//! in numbered batches, retried with backoff and jitter until acknowledged, and flushed before
//! the agent exits. A collector restart mid-run loses nothing: unacknowledged batches are
//! resent, and the collector stores each sequence number once.
//!
//! Events are numbered when they leave the spool, so dropping spooled lines never leaves a
//! gap the collector would wait on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kiln_protocol::routes;
use kiln_protocol::wire::{BatchAck, Event, EventBatch, EventBody};

use crate::runner::EventSink;

/// Events held before log lines start being dropped.
pub const SPOOL_LIMIT: usize = 20_000;
/// Most events per batch.
const BATCH_EVENTS: usize = 500;
/// Rough byte budget per batch (the collector accepts 4 MiB).
const BATCH_BYTES: usize = 1 << 20;
/// Backoff bounds between retries (the collector client's too).
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The collectors a run may talk to, in order, and the one in use. Shared by every request
/// of the run and its event stream, so a collector found gone is skipped by all of them.
#[derive(Debug)]
pub struct Bases {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Bases {
    /// The collectors of `list` (`kiln.url=`: one base URL, or several separated by commas).
    pub fn new(list: &str) -> anyhow::Result<Arc<Bases>> {
        let urls = kiln_protocol::cmdline::urls(list).map_err(|e| anyhow::anyhow!(e))?;
        Ok(Arc::new(Bases {
            urls,
            current: AtomicUsize::new(0),
        }))
    }

    /// The collector in use, and its place (for [`Bases::failed`]).
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Acquire) % self.urls.len();
        (i, &self.urls[i])
    }

    /// The collector at `place` failed a request: the next one is used from now on (unless
    /// another request moved on already).
    pub fn failed(&self, place: usize) {
        if self.urls.len() > 1 {
            let next = (place + 1) % self.urls.len();
            let _ = self
                .current
                .compare_exchange(place, next, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// `route` for `run_id` at the collector in use, with its place.
    pub fn url(&self, route: &str, run_id: i64) -> (usize, String) {
        let (i, base) = self.current();
        (i, routes::url(base, route, run_id))
    }

    /// The collector at `place`.
    pub fn at(&self, place: usize) -> &str {
        &self.urls[place % self.urls.len()]
    }

    /// How many collectors there are.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }
}

/// Where and as what to report.
#[derive(Debug, Clone)]
pub struct Target {
    /// The collectors, and the one in use.
    pub bases: Arc<Bases>,
    /// Run id.
    pub run_id: i64,
    /// The run's bearer token.
    pub token: String,
    /// Heartbeat timeout the collector applies.
    pub heartbeat: Duration,
}

#[derive(Default)]
struct Spool {
    pending: VecDeque<(u64, EventBody)>,
    dropped: u64,
    finishing: bool,
    done: bool,
    acked: u64,
    sent: u64,
}

struct Shared {
    spool: Mutex<Spool>,
    wake: Condvar,
}

/// The reporter; an [`EventSink`].
pub struct Reporter {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Reporter {
    /// Starts sending for `target` on `runtime` (the collector client's).
    pub fn start_on(target: Target, runtime: &tokio::runtime::Handle) -> Reporter {
        let shared = Arc::new(Shared {
            spool: Mutex::new(Spool::default()),
            wake: Condvar::new(),
        });
        runtime.spawn(send_loop(target, shared.clone()));
        Reporter {
            shared,
            thread: Mutex::new(None),
        }
    }

    /// Starts a sender thread of its own for `target`.
    pub fn start(target: Target) -> anyhow::Result<Reporter> {
        let shared = Arc::new(Shared {
            spool: Mutex::new(Spool::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("reporter".into())
            .spawn(move || {
                runtime.block_on(send_loop(target, thread_shared));
            })?;
        Ok(Reporter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks the sender to deliver everything and waits up to `timeout` for the collector to
    /// acknowledge it; returns how many events were left unacknowledged.
    pub fn flush(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        {
            let mut spool = self.shared.spool.lock().unwrap_or_else(|e| e.into_inner());
            spool.finishing = true;
            self.shared.wake.notify_all();
            while !spool.done && Instant::now() < deadline {
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(200));
                spool = self
                    .shared
                    .wake
                    .wait_timeout(spool, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let spool = self.shared.spool.lock().unwrap_or_else(|e| e.into_inner());
        let left = spool.pending.len() as u64 + spool.sent.saturating_sub(spool.acked);
        if spool.done {
            drop(spool);
            let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = thread {
                let _ = t.join();
            }
        }
        left
    }
}

impl EventSink for Reporter {
    fn emit(&self, body: EventBody) {
        // Within the protocol's bounds before it is queued: an over-long line or a hostile
        // string from a tool is cut here, not refused by the collector later.
        let mut body = body;
        body.clamp();
        let mut spool = self.shared.spool.lock().unwrap_or_else(|e| e.into_inner());
        spool.pending.push_back((crate::os::now_ms(), body));
        if spool.pending.len() > SPOOL_LIMIT {
            drop_oldest_logs(&mut spool);
        }
        self.shared.wake.notify_all();
    }
}

/// Drops droppable events from the front until the spool is back under its limit, leaving
/// one counted marker where they were.
fn drop_oldest_logs(spool: &mut Spool) {
    let excess = spool.pending.len().saturating_sub(SPOOL_LIMIT * 9 / 10);
    let mut removed = 0u64;
    let mut kept = VecDeque::with_capacity(spool.pending.len());
    let mut marker_at = None;
    for (at, body) in spool.pending.drain(..) {
        if (removed as usize) < excess && body.droppable() {
            removed += 1;
            marker_at.get_or_insert(kept.len());
            continue;
        }
        kept.push_back((at, body));
    }
    if let Some(index) = marker_at {
        spool.dropped += removed;
        kept.insert(
            index,
            (
                crate::os::now_ms(),
                EventBody::LogsDropped { count: removed },
            ),
        );
    }
    spool.pending = kept;
}

async fn send_loop(target: Target, shared: Arc<Shared>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let heartbeat = (target.heartbeat / 3).max(Duration::from_secs(1));
    let mut next_seq = 1u64;
    let mut inflight: Vec<Event> = Vec::new();
    let mut backoff = BACKOFF_MIN;
    let mut last_contact = Instant::now();
    // Events per POST: all that are in flight, or one at a time while finding a refused one.
    let mut batch_limit = usize::MAX;
    // The sequence number whose refused event was replaced by a marker (a marker refused in
    // turn means something else is wrong: stop).
    let mut replaced: Option<u64> = None;
    loop {
        if inflight.is_empty() {
            match fill_batch(&shared, &mut next_seq, &mut inflight) {
                Fill::Finished => return,
                Fill::Ready => {}
                Fill::Idle => {
                    if last_contact.elapsed() >= heartbeat {
                        // Nothing to say, but the collector must know the agent is alive.
                        let (_, ping) = target.bases.url(routes::PLAN, target.run_id);
                        let alive = client.get(&ping).bearer_auth(&target.token).send().await;
                        if alive.is_ok_and(|r| r.status().is_success()) {
                            last_contact = Instant::now();
                        }
                    }
                    wait_for_events(&shared);
                    continue;
                }
            }
        }
        let batch = EventBatch {
            events: inflight.iter().take(batch_limit).cloned().collect(),
        };
        let (place, url) = target.bases.url(routes::EVENTS, target.run_id);
        let posted = post_batch(&client, &url, &target.token, &batch).await;
        if matches!(posted, Err(Failure::Retry)) {
            // Unacknowledged batches go to the next collector; each stores a sequence number
            // once, whichever collector it came through.
            target.bases.failed(place);
        }
        match posted {
            Ok(ack) => {
                inflight.retain(|e| e.seq > ack.acked);
                if inflight.is_empty() {
                    batch_limit = usize::MAX;
                }
                last_contact = Instant::now();
                backoff = BACKOFF_MIN;
                let mut spool = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
                spool.acked = spool.acked.max(ack.acked);
                shared.wake.notify_all();
            }
            Err(Failure::Refused {
                status: 400,
                message,
            }) if batch.events.len() > 1 => {
                // One event in the batch is refused: find it by sending one at a time.
                tracing::warn!(
                    %message,
                    "the collector refused a batch; resending one event at a time"
                );
                batch_limit = 1;
            }
            Err(Failure::Refused {
                status: 400,
                message,
            }) if replaced != Some(batch.events[0].seq) => {
                // This one event is refused: keep its place in the sequence with a line that
                // says so, and go on with the rest.
                let seq = batch.events[0].seq;
                tracing::error!(seq, %message, "the collector refused an event; dropped");
                let mut marker = EventBody::Log {
                    step: None,
                    level: kiln_protocol::wire::LogLevel::Error,
                    line: format!(
                        "kiln-agent: event {seq} was refused by the collector and dropped: {message}"
                    ),
                };
                marker.clamp();
                inflight[0].body = marker;
                replaced = Some(seq);
            }
            Err(Failure::Refused { message, .. }) => {
                // The collector will never take this (the run is closed, the token refused):
                // say so once and stop sending rather than retrying forever.
                tracing::error!(%message, "the collector refused a batch; no more will be sent");
                let mut spool = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
                spool.done = true;
                shared.wake.notify_all();
                return;
            }
            Err(Failure::Retry) => {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

enum Fill {
    /// A batch is in flight.
    Ready,
    /// Nothing to send now.
    Idle,
    /// Everything was sent and the agent is finishing.
    Finished,
}

/// Moves the next batch out of the spool, numbering its events.
fn fill_batch(shared: &Shared, next_seq: &mut u64, inflight: &mut Vec<Event>) -> Fill {
    let mut spool = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
    let mut bytes = 0;
    while inflight.len() < BATCH_EVENTS && bytes < BATCH_BYTES {
        let Some((at_ms, body)) = spool.pending.pop_front() else {
            break;
        };
        bytes += approx_size(&body);
        inflight.push(Event {
            seq: *next_seq,
            at_ms,
            body,
        });
        *next_seq += 1;
    }
    spool.sent = *next_seq - 1;
    if !inflight.is_empty() {
        Fill::Ready
    } else if spool.finishing {
        spool.done = true;
        shared.wake.notify_all();
        Fill::Finished
    } else {
        Fill::Idle
    }
}

/// Sleeps until an event arrives, the agent finishes, or a quarter second passes.
fn wait_for_events(shared: &Shared) {
    let spool = shared.spool.lock().unwrap_or_else(|e| e.into_inner());
    if spool.pending.is_empty() && !spool.finishing {
        let _ = shared.wake.wait_timeout(spool, Duration::from_millis(250));
    }
}

enum Failure {
    Retry,
    Refused { status: u16, message: String },
}

async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    batch: &EventBatch,
) -> Result<BatchAck, Failure> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(batch)
        .send()
        .await
        .map_err(|_| Failure::Retry)?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<BatchAck>()
            .await
            .map_err(|_| Failure::Retry);
    }
    // 4xx other than 408/429 will not improve with retries; 5xx and the rest might.
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        let text = response.text().await.unwrap_or_default();
        return Err(Failure::Refused {
            status: status.as_u16(),
            message: format!("{status}: {text}"),
        });
    }
    Err(Failure::Retry)
}

fn approx_size(body: &EventBody) -> usize {
    match body {
        EventBody::Log { line, .. } => line.len() + 64,
        EventBody::StepFinished { report } => 512 + report.metrics.len() * 64,
        EventBody::Sensors { readings, .. } => 64 + readings.len() * 96,
        _ => 128,
    }
}

/// `base` ± 50 %, so agents that lost the collector together do not come back in lockstep.
pub(crate) fn jitter(base: Duration) -> Duration {
    let r = (crate::rng::fresh_seed() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::wire::LogLevel;

    fn log(i: usize) -> (u64, EventBody) {
        (
            0,
            EventBody::Log {
                step: Some(0),
                level: LogLevel::Info,
                line: format!("line {i}"),
            },
        )
    }

    #[test]
    fn the_oldest_log_lines_go_first_and_outcomes_stay() {
        let mut spool = Spool::default();
        spool.pending.push_back((
            0,
            EventBody::RunStarted {
                suite: "s".into(),
                steps: 1,
                agent: "t".into(),
            },
        ));
        for i in 0..SPOOL_LIMIT + 1 {
            spool.pending.push_back(log(i));
        }
        spool.pending.push_back((
            0,
            EventBody::RunFinished {
                verdict: kiln_protocol::verdict::Verdict::Pass,
            },
        ));
        drop_oldest_logs(&mut spool);
        assert!(spool.pending.len() <= SPOOL_LIMIT * 9 / 10 + 2);
        assert!(matches!(spool.pending[0].1, EventBody::RunStarted { .. }));
        let EventBody::LogsDropped { count } = spool.pending[1].1 else {
            panic!("no marker: {:?}", spool.pending[1].1)
        };
        assert_eq!(count, spool.dropped);
        assert!(count > 0);
        assert!(matches!(
            spool.pending.back().unwrap().1,
            EventBody::RunFinished { .. }
        ));
        // The newest lines survive.
        assert!(
            matches!(&spool.pending[spool.pending.len() - 2].1, EventBody::Log { line, .. } if line == &format!("line {SPOOL_LIMIT}"))
        );
    }
}

#[cfg(test)]
mod refused {
    use super::*;
    use kiln_protocol::wire::LogLevel;
    use std::sync::Mutex as StdMutex;

    /// A collector that refuses any batch holding the line "poison" and keeps the rest.
    async fn picky_collector(stored: Arc<StdMutex<Vec<Event>>>) -> String {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().route(
            routes::EVENTS,
            post(move |axum::Json(batch): axum::Json<EventBatch>| {
                let stored = stored.clone();
                async move {
                    let poisoned = batch.events.iter().any(
                        |e| matches!(&e.body, EventBody::Log { line, .. } if line == "poison"),
                    );
                    if poisoned {
                        return Err((axum::http::StatusCode::BAD_REQUEST, "poison refused"));
                    }
                    let mut stored = stored.lock().unwrap();
                    for e in batch.events {
                        if !stored.iter().any(|s| s.seq == e.seq) {
                            stored.push(e);
                        }
                    }
                    stored.sort_by_key(|e| e.seq);
                    let mut acked = 0;
                    for e in stored.iter() {
                        if e.seq == acked + 1 {
                            acked = e.seq;
                        }
                    }
                    Ok(axum::Json(BatchAck { acked }))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    #[test]
    fn one_refused_event_is_replaced_by_a_marker_and_the_rest_go_on() {
        let stored = Arc::new(StdMutex::new(Vec::new()));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let base = rt.block_on(picky_collector(stored.clone()));
        let reporter = Reporter::start(Target {
            bases: Bases::new(&base).unwrap(),
            run_id: 1,
            token: "t".into(),
            heartbeat: Duration::from_secs(60),
        })
        .unwrap();
        for line in ["one", "poison", "three"] {
            reporter.emit(EventBody::Log {
                step: None,
                level: LogLevel::Info,
                line: line.into(),
            });
        }
        reporter.emit(EventBody::RunFinished {
            verdict: kiln_protocol::verdict::Verdict::Pass,
        });
        assert_eq!(reporter.flush(Duration::from_secs(30)), 0);
        let stored = stored.lock().unwrap();
        let lines: Vec<String> = stored
            .iter()
            .map(|e| match &e.body {
                EventBody::Log { line, .. } => line.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(stored.len(), 4, "{lines:?}");
        assert_eq!(lines[0], "one");
        assert!(
            lines[1]
                .starts_with("kiln-agent: event 2 was refused by the collector and dropped: 400"),
            "{lines:?}"
        );
        assert_eq!(lines[2], "three");
        assert!(matches!(stored[3].body, EventBody::RunFinished { .. }));
    }

    /// A collector that answers every request 503 (its database is gone).
    async fn unavailable_collector() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "the database is unreachable",
            )
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    }

    /// An address nothing listens on (bound, then let go).
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    #[test]
    fn events_go_on_to_the_next_collector_when_one_is_gone_or_unavailable() {
        let stored = Arc::new(StdMutex::new(Vec::new()));
        let rt = tokio::runtime::Runtime::new().unwrap();
        let live = rt.block_on(picky_collector(stored.clone()));
        let unavailable = rt.block_on(unavailable_collector());
        let bases = Bases::new(&format!("{},{unavailable},{live}", dead_address())).unwrap();
        let reporter = Reporter::start(Target {
            bases: bases.clone(),
            run_id: 1,
            token: "t".into(),
            heartbeat: Duration::from_secs(60),
        })
        .unwrap();
        for n in 0..50 {
            reporter.emit(EventBody::Log {
                step: None,
                level: LogLevel::Info,
                line: format!("line {n}"),
            });
        }
        assert_eq!(reporter.flush(Duration::from_secs(60)), 0);
        let stored = stored.lock().unwrap();
        assert_eq!(stored.len(), 50);
        assert!(
            stored
                .iter()
                .enumerate()
                .all(|(i, e)| e.seq == i as u64 + 1)
        );
        // The stream settled on the live one.
        assert_eq!(bases.current().1, live);
    }
}

//! What an operator's Prometheus scrapes from `/metrics`, encoded by `prometheus-client` in
//! the OpenMetrics text format (`# HELP`, `# TYPE`, counters ending in `_total`). One
//! process-wide set: the parts of the collector that count something (the HTTP layer, the
//! database writer, the lifecycle monitor, the power drivers) add to it where it happens; what
//! the database or the capture registry already knows (nodes, runs by stage and verdict,
//! captures running, the writer's queue) is read when the scrape comes.
//!
//! This module sits at the bottom: it imports nothing of the collector.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The content type of OpenMetrics text, which Prometheus asks for.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of the classic Prometheus text format, for every other client (`curl`,
/// `promtool check metrics`, older scrapers).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An HTTP request, by the route it matched (`/api/v1/runs/{run}/events`, never the client's
/// path: that would let any client mint series), its method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, or `unmatched`.
    pub route: String,
    /// GET, POST, …
    pub method: String,
    /// The status code.
    pub status: String,
}

/// A route, for the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template, or `unmatched`.
    pub route: String,
}

/// A power-driver call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PowerLabels {
    /// `qmp`, `ipmitool`, `redfish` or `manual`.
    pub driver: String,
    /// `reset` or `off`.
    pub action: String,
}

/// Runs, by stage and verdict (`running` while they have none).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// The run's stage.
    pub stage: String,
    /// Its verdict.
    pub verdict: String,
}

/// Console captures, by what they follow.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaptureLabels {
    /// `memtest` (a memtest86+ stage) or `console` (a Linux stage's console tail).
    pub kind: String,
}

/// The collector's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every series the collector exports.
pub struct Metrics {
    registry: Registry,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to answer, per route.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// From an agent's event batch arriving to its acknowledgement (stored and committed).
    pub event_ack_seconds: Histogram,
    /// Events stored (a resent event is stored once).
    pub events_stored: Counter,
    /// Jobs waiting for the database writer (read at scrape).
    pub writer_queue: Gauge,
    /// Groups of agents' batches the collector writes at once: its share of the database's.
    pub ingest_groups: Gauge,
    /// Time of one group commit (`BEGIN` to `COMMIT`, jobs included).
    pub commit_seconds: Histogram,
    /// Jobs committed together in one group.
    pub commit_jobs: Histogram,
    /// Groups that could not be committed (nothing of them stored).
    pub commit_failures: Counter,
    /// Write jobs PostgreSQL aborted for a deadlock or a serialization failure (each ran again).
    pub write_conflicts: Counter,
    /// Runs failed because their agent went silent.
    pub lost_contacts: Counter,
    /// Power-driver calls.
    pub power_calls: Family<PowerLabels, Counter>,
    /// Power-driver calls that failed.
    pub power_failures: Family<PowerLabels, Counter>,
    /// Nodes known (read at scrape).
    pub nodes: Gauge,
    /// Runs by stage and verdict (read at scrape).
    pub runs: Family<RunLabels, Gauge>,
    /// Console captures running (read at scrape).
    pub captures: Family<CaptureLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            event_ack_seconds: latency_histogram(),
            events_stored: Counter::default(),
            writer_queue: Gauge::default(),
            ingest_groups: Gauge::default(),
            commit_seconds: latency_histogram(),
            commit_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            commit_failures: Counter::default(),
            write_conflicts: Counter::default(),
            lost_contacts: Counter::default(),
            power_calls: Family::default(),
            power_failures: Family::default(),
            nodes: Gauge::default(),
            runs: Family::default(),
            captures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            m.requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer, by route template",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        registry.register_with_unit(
            "event_ack_duration",
            "Time from an agent's event batch arriving to its acknowledgement, after the commit",
            Unit::Seconds,
            m.event_ack_seconds.clone(),
        );
        registry.register(
            "events_stored",
            "Agent events stored (a resent event counts once)",
            m.events_stored.clone(),
        );
        registry.register(
            "db_writer_queue_jobs",
            "Write jobs waiting for the database writer thread",
            m.writer_queue.clone(),
        );
        registry.register(
            "db_ingest_groups",
            "Groups of agents' event batches this collector writes at once: on PostgreSQL its share of what the database runs well at once, split among the live collectors",
            m.ingest_groups.clone(),
        );
        registry.register_with_unit(
            "db_commit_duration",
            "Time of one group commit of the database writer, its jobs included",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register(
            "db_commit_jobs",
            "Write jobs committed together in one transaction",
            m.commit_jobs.clone(),
        );
        registry.register(
            "db_commit_failures",
            "Groups of writes the database could not commit (nothing of them was stored)",
            m.commit_failures.clone(),
        );
        registry.register(
            "db_write_conflicts",
            "Write jobs PostgreSQL aborted for a deadlock with another writer; each ran again",
            m.write_conflicts.clone(),
        );
        registry.register(
            "lost_contacts",
            "Runs failed because their agent sent nothing for longer than the heartbeat timeout",
            m.lost_contacts.clone(),
        );
        registry.register(
            "power_calls",
            "Power-driver calls (reset or off), by driver and action",
            m.power_calls.clone(),
        );
        registry.register(
            "power_failures",
            "Power-driver calls that failed, by driver and action",
            m.power_failures.clone(),
        );
        registry.register("nodes", "Nodes known to the collector", m.nodes.clone());
        registry.register(
            "runs",
            "Runs stored, by stage and verdict (running while there is none)",
            m.runs.clone(),
        );
        registry.register(
            "captures_running",
            "Console captures running: memtest86+ stages and Linux console tails",
            m.captures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a request answered after `took`.
    pub fn request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a power-driver call and whether it failed.
    pub fn power(&self, driver: &str, action: &str, ok: bool) {
        let labels = PowerLabels {
            driver: driver.to_owned(),
            action: action.to_owned(),
        };
        self.power_calls.get_or_create(&labels).inc();
        if !ok {
            self.power_failures.get_or_create(&labels).inc();
        }
    }

    /// Sets what is read at scrape: nodes, runs by (stage, verdict), captures (memtest
    /// stages, console tails), the writer's queue and the ingest groups written at once.
    pub fn set_state(
        &self,
        nodes: i64,
        runs: &[(String, String, i64)],
        captures: (usize, usize),
        queued: usize,
        ingest_groups: usize,
    ) {
        self.nodes.set(nodes);
        // Cleared first: a (stage, verdict) pair with no run left must not stay at its last
        // count.
        self.runs.clear();
        for (stage, verdict, n) in runs {
            self.runs
                .get_or_create(&RunLabels {
                    stage: stage.clone(),
                    verdict: verdict.clone(),
                })
                .set(*n);
        }
        for (kind, n) in [("memtest", captures.0), ("console", captures.1)] {
            self.captures
                .get_or_create(&CaptureLabels {
                    kind: kind.to_owned(),
                })
                .set(n as i64);
        }
        self.writer_queue.set(queued as i64);
        self.ingest_groups.set(ingest_groups as i64);
    }

    /// The exposition text and its content type: OpenMetrics when the scraper's `Accept`
    /// names it (as Prometheus's does), the classic text format otherwise.
    pub fn encode(&self, accept: Option<&str>) -> (&'static str, String) {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            (OPENMETRICS, text)
        } else {
            (PROMETHEUS_TEXT, classic(&text))
        }
    }
}

/// OpenMetrics text as the classic Prometheus text format (0.0.4), for the metrics this
/// module defines: a counter family is named with its `_total` there (its samples already
/// are), and the `# UNIT` and `# EOF` lines have no equivalent. Histograms and gauges read
/// the same in both.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match family {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counter_families_with_their_total_and_drops_openmetrics_lines() {
        let m = Metrics::new();
        m.events_stored.inc_by(3);
        m.request("/healthz", "GET", 200, Duration::from_millis(2));
        let (kind, open) = m.encode(Some("application/openmetrics-text;version=1.0.0"));
        assert_eq!(kind, OPENMETRICS);
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(
            open.contains("# TYPE kiln_events_stored counter\n"),
            "{open}"
        );
        let (kind, text) = m.encode(Some("text/plain"));
        assert_eq!(kind, PROMETHEUS_TEXT);
        assert!(
            text.contains("# TYPE kiln_events_stored_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kiln_events_stored_total Agent events"),
            "{text}"
        );
        assert!(text.contains("\nkiln_events_stored_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE kiln_http_request_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "kiln_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}

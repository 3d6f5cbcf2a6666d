//! The agent's one client of the collector, on one runtime: a host's registration or a
//! booted node's bootstrap exchange, the plan, the inventory, then the run's events (the
//! [`reporter`](crate::reporter) streams them) until the session closes with every event
//! acknowledged. Requests are retried with backoff and jitter within the caller's patience;
//! a 4xx is final and its message is returned. Several collectors may serve the run (they
//! share one database): a request that does not reach one, or that it answers with a 5xx
//! (say, its database is gone), goes to the next ([`Bases`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_protocol::routes;
use kiln_protocol::wire::{Inventory, RegisterRequest, RegisterResponse, RunPlan, SessionResponse};

pub use crate::reporter::Bases;
use crate::reporter::{BACKOFF_MAX, BACKOFF_MIN, Reporter, Target, jitter};
use crate::runner::{EventSink, Tee};

/// The collectors at `bases`, reached through one HTTP client on one runtime.
pub struct Collector {
    bases: Arc<Bases>,
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
}

impl Collector {
    /// The client for the collectors of `base` (one base URL, or several separated by
    /// commas; nothing is sent yet).
    pub fn new(base: &str) -> anyhow::Result<Collector> {
        Collector::with_timeout(base, Duration::from_secs(30))
    }

    /// [`Collector::new`] with requests given up after `timeout`.
    fn with_timeout(base: &str, timeout: Duration) -> anyhow::Result<Collector> {
        // One worker: the reporter's send loop runs on it while the steps run on threads of
        // their own; the one-off calls block on it from the caller's thread.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("collector")
            .enable_all()
            .build()?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .build()?;
        Ok(Collector {
            bases: Bases::new(base)?,
            runtime,
            http,
        })
    }

    /// The base URL of the collector in use.
    pub fn base(&self) -> &str {
        self.bases.current().1
    }

    /// Every collector, and which is in use.
    pub fn bases(&self) -> &Arc<Bases> {
        &self.bases
    }

    /// Registers an ad-hoc run for this host (`kiln-agent run --collector`), retrying for up
    /// to `patience`; returns the run and its token.
    pub fn register(
        &self,
        inventory: &Inventory,
        suite_text: &str,
        patience: Duration,
    ) -> anyhow::Result<RegisterResponse> {
        let mut inventory = inventory.clone();
        inventory.clamp();
        let request = RegisterRequest {
            identity: crate::inventory::identity(&inventory),
            hostname: crate::os::read_trimmed("/proc/sys/kernel/hostname").map(|h| {
                kiln_protocol::bounds::clamp(&h, kiln_protocol::wire::MAX_FIELD_LEN, false)
            }),
            suite_text: suite_text.to_owned(),
        };
        self.runtime.block_on(async {
            let r = self
                .until_answered("registration", patience, routes::REGISTER, 0, |url| {
                    self.http.post(url).json(&request).send()
                })
                .await?;
            Ok(r.json().await?)
        })
    }

    /// Exchanges a booted node's bootstrap token (from the kernel command line) for the run's
    /// session token and attestation key. The collector honours one exchange per boot, and a
    /// second one fails the run; a collector that cannot be reached, that cannot serve (5xx:
    /// its database is gone, nothing was done) or that does not answer in time (hung: the
    /// kernel queues the connection all the same) gets no second try, the next one does.
    /// Where the first had in fact exchanged before going silent, that second exchange fails
    /// the run and says why — never a pass; giving up would fail it too, without trying.
    pub fn exchange(
        &self,
        run_id: i64,
        bootstrap: &str,
        patience: Duration,
    ) -> anyhow::Result<SessionResponse> {
        self.runtime.block_on(async {
            let started = Instant::now();
            let mut backoff = BACKOFF_MIN;
            loop {
                let (place, url) = self.bases.url(routes::SESSION, run_id);
                let why = match self.http.post(&url).bearer_auth(bootstrap).send().await {
                    Ok(r) if r.status().is_success() => return Ok(r.json().await?),
                    Ok(r) if r.status().is_server_error() => format!("answered {}", r.status()),
                    Ok(r) => {
                        let status = r.status();
                        anyhow::bail!(
                            "the collector refused the session exchange ({status}): {}",
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(e) => e.to_string(),
                };
                self.bases.failed(place);
                if started.elapsed() > patience {
                    anyhow::bail!(
                        "no collector gave the session within {} s; the last, {}: {why}",
                        patience.as_secs(),
                        self.bases.at(place)
                    );
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        })
    }

    /// A booted run's plan, retrying for up to `patience`.
    pub fn plan(&self, run_id: i64, token: &str, patience: Duration) -> anyhow::Result<RunPlan> {
        self.runtime.block_on(async {
            let r = self
                .until_answered("plan request", patience, routes::PLAN, run_id, |url| {
                    self.http.get(url).bearer_auth(token).send()
                })
                .await?;
            Ok(r.json().await?)
        })
    }

    /// Reports a power cycle's boot: the node's inventory, taken again.
    pub fn report_cycle(
        &self,
        run_id: i64,
        token: &str,
        cycle: u32,
        inventory: &Inventory,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let route = routes::CYCLE.replace("{cycle}", &cycle.to_string());
        self.put_inventory("cycle report", &route, run_id, token, inventory, patience)
    }

    /// PUTs `inventory` to `url`, within the protocol's bounds: odd firmware strings are cut,
    /// not refused.
    fn put_inventory(
        &self,
        what: &str,
        route: &str,
        run_id: i64,
        token: &str,
        inventory: &Inventory,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let mut inventory = inventory.clone();
        inventory.clamp();
        self.runtime.block_on(async {
            self.until_answered(what, patience, route, run_id, |url| {
                self.http
                    .put(url)
                    .bearer_auth(token)
                    .json(&inventory)
                    .send()
            })
            .await
        })?;
        Ok(())
    }

    /// Delivers the run's inventory and starts streaming its events: the session.
    pub fn open(
        self,
        run_id: i64,
        token: &str,
        heartbeat: Duration,
        inventory: &Inventory,
        patience: Duration,
    ) -> anyhow::Result<Session> {
        self.put_inventory(
            "inventory",
            routes::INVENTORY,
            run_id,
            token,
            inventory,
            patience,
        )?;
        let target = Target {
            bases: self.bases.clone(),
            run_id,
            token: token.to_owned(),
            heartbeat,
        };
        let reporter = Arc::new(Reporter::start_on(target, self.runtime.handle()));
        Ok(Session {
            reporter,
            run_id,
            token: token.to_owned(),
            _collector: self,
        })
    }

    /// Sends a request until the collector answers with success, for up to `patience`:
    /// network errors and 5xx are retried with backoff and jitter; a 4xx is final and its
    /// message is returned. `what` names the request in errors.
    async fn until_answered<F, Fut>(
        &self,
        what: &str,
        patience: Duration,
        route: &str,
        run_id: i64,
        mut send: F,
    ) -> anyhow::Result<reqwest::Response>
    where
        F: FnMut(&str) -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::Response, reqwest::Error>>,
    {
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            let (place, url) = self.bases.url(route, run_id);
            let answer = send(&url).await;
            // Not reached, or a collector that cannot serve (5xx): the next one gets the retry.
            if answer
                .as_ref()
                .map_or(true, |r| r.status().is_server_error())
            {
                self.bases.failed(place);
            }
            match answer {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status();
                    anyhow::bail!(
                        "the collector refused the {what} ({status}): {}",
                        r.text().await.unwrap_or_default()
                    );
                }
                Ok(r) if started.elapsed() > patience => {
                    anyhow::bail!("the collector keeps answering {} to the {what}", r.status())
                }
                Err(e) if started.elapsed() > patience => anyhow::bail!(
                    "cannot reach the collector at {} for the {what}: {e}",
                    self.bases.at(place)
                ),
                _ => {}
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// A run reported to a collector: its inventory delivered, its events streaming, and at the
/// end every event acknowledged (or the shortfall said).
pub struct Session {
    reporter: Arc<Reporter>,
    run_id: i64,
    token: String,
    // Keeps the runtime the reporter sends on.
    _collector: Collector,
}

impl Session {
    /// The run's id.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// The run's session token (the bandwidth endpoints ask for it).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where the run's events go: `console` and the collector.
    pub fn sink(&self, console: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
        Arc::new(Tee(vec![console, self.reporter.clone()]))
    }

    /// Waits up to `patience` for every event to be acknowledged; false (and says how many
    /// were not) otherwise.
    pub fn close(self, patience: Duration) -> bool {
        let left = self.reporter.flush(patience);
        if left > 0 {
            eprintln!(
                "kiln-agent: {left} event(s) of run {} were not acknowledged by the collector",
                self.run_id
            );
            return false;
        }
        println!("kiln-agent: reported run {}", self.run_id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_goes_on_to_the_next_collector_and_a_4xx_is_final() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let live = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let plan = RunPlan {
                run_id: 7,
                node_id: 1,
                suite_text: "suite".into(),
                allow_destructive: false,
                heartbeat_secs: 60,
                after: kiln_protocol::wire::After::Poweroff,
                lldp_secs: None,
                cycle: None,
            };
            let app = axum::Router::new()
                .route(
                    routes::PLAN,
                    axum::routing::get(move || async move { axum::Json(plan) }),
                )
                .route(
                    routes::CYCLE,
                    axum::routing::put(|| async {
                        (axum::http::StatusCode::CONFLICT, "run 7 is finished")
                    }),
                );
            tokio::spawn(async move { axum::serve(listener, app).await });
            base
        });
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let collector = Collector::new(&format!("{dead},{live}/")).unwrap();
        assert_eq!(collector.bases().len(), 2);
        let plan = collector.plan(7, "token", Duration::from_secs(30)).unwrap();
        assert_eq!(plan.run_id, 7);
        assert_eq!(collector.base(), live);
        // A refusal is the answer, from whichever collector: no other is asked.
        let err = collector
            .report_cycle(
                7,
                "token",
                1,
                &Inventory::default(),
                Duration::from_secs(30),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("409") && err.contains("run 7 is finished"),
            "{err}"
        );
        assert_eq!(collector.base(), live);
        // A list the command line could not have come from is refused before anything is sent.
        assert!(Collector::new("http://a,,http://b").is_err());
        drop(rt);
    }

    /// The bootstrap exchange goes past a collector that hangs (its connection queued by the
    /// kernel, never answered) and one that answers 503, to one that serves; a refusal (4xx)
    /// is final; and with none to serve it gives up within its patience, naming the last.
    #[test]
    fn the_exchange_goes_past_a_hung_and_an_unavailable_collector() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let serve = |status: u16| {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                let app = axum::Router::new().route(
                    routes::SESSION,
                    axum::routing::post(move || async move {
                        match status {
                            200 => axum::Json(SessionResponse {
                                token: "session".into(),
                                heartbeat_secs: 60,
                                attest_key: "key".into(),
                            })
                            .into_response(),
                            s => (
                                axum::http::StatusCode::from_u16(s).unwrap(),
                                "the collector cannot reach its database now",
                            )
                                .into_response(),
                        }
                    }),
                );
                tokio::spawn(async move { axum::serve(listener, app).await });
                base
            })
        };
        use axum::response::IntoResponse;
        // Bound, never accepted: connecting succeeds, no answer ever comes.
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let hung = format!("http://{}", hung.local_addr().unwrap());
        let (unavailable, live, refusing) = (serve(503), serve(200), serve(403));
        let collector = Collector::with_timeout(
            &format!("{hung},{unavailable},{live}"),
            Duration::from_secs(1),
        )
        .unwrap();
        let session = collector
            .exchange(7, "bootstrap", Duration::from_secs(30))
            .unwrap();
        assert_eq!(session.token, "session");
        assert_eq!(collector.base(), live);
        let refused =
            Collector::with_timeout(&format!("{refusing},{live}"), Duration::from_secs(1))
                .unwrap()
                .exchange(7, "bootstrap", Duration::from_secs(30))
                .unwrap_err()
                .to_string();
        assert!(refused.contains("403"), "{refused}");
        let none =
            Collector::with_timeout(&format!("{hung},{unavailable}"), Duration::from_secs(1))
                .unwrap()
                .exchange(7, "bootstrap", Duration::from_secs(2))
                .unwrap_err()
                .to_string();
        assert!(none.contains("no collector gave the session"), "{none}");
        drop(rt);
    }
}

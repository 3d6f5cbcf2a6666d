//! The memtest stage as the collector runs it: when a node is handed memtest86+, capture of
//! its console starts; the verdict is stored with the final screen and raw bytes; then the
//! node's power driver resets it into its next stage (Linux after a pass, the verdict after a
//! fail).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_protocol::suite::Memtest;

use super::capture::{Rules, watch};
use super::power::Action;
use crate::api::AppState;
use crate::store::boot as store;

/// Running captures, by run, so an unexpected reboot can stop its capture.
#[derive(Default)]
pub struct Watchers {
    running: Mutex<HashMap<i64, tokio::sync::watch::Sender<bool>>>,
}

impl Watchers {
    /// Stops the capture of `run_id`, if one runs.
    pub fn cancel(&self, run_id: i64) {
        if let Some(tx) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id)
        {
            let _ = tx.send(true);
        }
    }
}

/// Starts watching `run_id`'s memtest stage on `node_id`'s console; `Err` says why it cannot
/// be watched (then the stage fails at once: a result that cannot be read is never a pass).
pub async fn start(
    state: &AppState,
    node_id: i64,
    run_id: i64,
    memtest: &Memtest,
) -> Result<(), String> {
    let keys = state
        .db
        .call(move |c| store::node_access_keys(c, node_id))
        .await
        .map_err(|e| format!("cannot read node {node_id}: {e}"))?;
    let access = state.config.access_for(&keys.0, keys.1.as_deref()).cloned();
    let Some(console) = access.as_ref().and_then(|a| a.console.clone()) else {
        return Err(format!(
            "no serial console is configured for node {node_id} (kiln.yaml `nodes:`): memtest86+ results cannot be read"
        ));
    };
    let power = access.and_then(|a| a.power);
    // Readings as they change, written (at most every 2 s) as the run's live progress.
    let (live_tx, mut live_rx) =
        tokio::sync::watch::channel::<Option<super::screen::Reading>>(None);
    let progress_db = state.db.clone();
    tokio::spawn(async move {
        while live_rx.changed().await.is_ok() {
            let reading = live_rx.borrow_and_update().clone();
            if let Some(r) = reading {
                let progress = crate::store::queries::Progress {
                    step: 0,
                    name: "memtest86+".into(),
                    fraction: f64::from(r.pass_pct.unwrap_or(0)) / 100.0,
                    status: Some(format!(
                        "pass {} test #{} {} · {} error(s)",
                        r.passes.unwrap_or(0) + 1,
                        r.test_number.map_or("?".into(), |t| t.to_string()),
                        r.test_name.unwrap_or_default(),
                        r.errors.unwrap_or(0)
                    )),
                };
                let _ = progress_db
                    .call(move |c| store::memtest_progress(c, run_id, &progress))
                    .await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    });
    let rules = Rules {
        passes: memtest.passes,
        timeout: memtest.timeout.get(),
        stall: memtest.stall_timeout.get(),
        skip_tests: memtest.skip_tests.clone(),
        live: Some(live_tx),
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    state
        .watchers
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run_id, tx);
    let db = state.db.clone();
    let watchers: Arc<Watchers> = state.watchers.clone();
    let node = format!("node {node_id}");
    tokio::spawn(async move {
        let finding = watch(console, rules, power.clone(), node.clone(), rx).await;
        watchers
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        tracing::info!(run_id, pass = finding.pass, detail = %finding.detail, "memtest86+ verdict");
        let stored = finding.clone();
        if let Err(err) = db
            .call(move |c| store::finish_memtest(c, run_id, &stored))
            .await
        {
            tracing::error!(run_id, error = %err, "cannot store the memtest86+ verdict");
            return;
        }
        match power {
            Some(power) => {
                if let Err(err) = power.act(&node, Action::Reset).await {
                    tracing::error!(run_id, error = %format!("{err:#}"), "power driver failed; the node must be reset by hand");
                    let note = format!("power driver failed: {err:#}");
                    let _ = db
                        .call(move |c| store::note_stage(c, run_id, "memtest", &note))
                        .await;
                }
            }
            None => tracing::warn!(
                run_id,
                "no power driver configured: reset the node by hand to move it on"
            ),
        }
    });
    Ok(())
}

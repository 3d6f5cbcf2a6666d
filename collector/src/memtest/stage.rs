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
    let rules = Rules {
        passes: memtest.passes,
        timeout: memtest.timeout.get(),
        stall: memtest.stall_timeout.get(),
        skip_tests: memtest.skip_tests.clone(),
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

//! The memtest stage as the collector runs it: when a node is handed memtest86+, capture of
//! its console starts; the verdict is stored with the final screen and raw bytes — only while
//! that run's memtest stage is still the running one — and only then does the node's power
//! driver reset it into its next stage (Linux after a pass, the verdict after a fail).

use kiln_protocol::suite::Memtest;

use super::capture::{Rules, follow_tail, watch};

/// Longest a console tail is followed (the run's end stops it long before on any sane suite).
const TAIL_LIMIT: std::time::Duration = std::time::Duration::from_secs(48 * 3600);
use super::power::Action;
use crate::lifecycle::{self, Applied, Stage};
use crate::store::queries;

pub use super::leases::Deps;

/// Follows the console of `node_id` through `run_id`'s Linux stage when no memtest86+ stage
/// started that already (a suite without one): a run that dies in Linux then fails with
/// what its console showed, and the agent's attestation is read there. A node without a
/// configured console has nothing to follow. Returns whether the node's console is followed
/// (by this collector, or by the one that holds its lease).
pub async fn follow_linux(state: &Deps, node_id: i64, run_id: i64) -> bool {
    let keys = match state
        .db
        .read(move |c| queries::node_access_keys(c, node_id))
        .await
    {
        Ok(keys) => keys,
        Err(err) => {
            tracing::warn!(node_id, error = %err, "console tail not followed: node unreadable");
            return false;
        }
    };
    let configured = state
        .config
        .access_for(&keys.0, keys.1.as_deref())
        .is_some_and(|a| a.console.is_some());
    if !configured {
        return false;
    }
    match super::leases::take(state, node_id).await {
        Ok(epoch) => {
            state.captures.lease(run_id, node_id, epoch);
            follow_tail_on(state, node_id, run_id).await;
        }
        // Its reader follows it; if that one dies, a lease round moves it.
        Err(why) => tracing::info!(run_id, "{why}"),
    }
    true
}

/// Follows `node_id`'s console tail for `run_id` (under the lease this collector holds) unless
/// it is followed here already; the lease is given up when the tail ends with the run.
pub async fn follow_tail_on(state: &Deps, node_id: i64, run_id: i64) {
    let keys = state
        .db
        .read(move |c| queries::node_access_keys(c, node_id))
        .await;
    let Some(console) = keys.ok().and_then(|keys| {
        state
            .config
            .access_for(&keys.0, keys.1.as_deref())
            .and_then(|a| a.console.clone())
    }) else {
        return;
    };
    if let Some(stop) = state.captures.register_tail_once(run_id) {
        spawn_tail(state, console, stop, run_id);
    }
}

/// Follows a console tail, then gives up the lease it was read under.
fn spawn_tail(
    state: &Deps,
    console: crate::config::Source,
    stop: tokio::sync::watch::Receiver<bool>,
    run_id: i64,
) {
    let deps = state.clone();
    tokio::spawn(async move {
        follow_tail(
            console,
            stop,
            deps.db.clone(),
            deps.captures.clone(),
            run_id,
            TAIL_LIMIT,
        )
        .await;
        super::leases::give_up(&deps, run_id).await;
    });
}

/// Writes memtest86+'s readings as they change (at most every 2 s) as `run_id`'s live
/// progress; the capture sends them.
fn spawn_progress(
    db: &crate::store::Db,
    run_id: i64,
) -> tokio::sync::watch::Sender<Option<super::screen::Reading>> {
    let (live_tx, mut live_rx) =
        tokio::sync::watch::channel::<Option<super::screen::Reading>>(None);
    let progress_db = db.clone();
    tokio::spawn(async move {
        while live_rx.changed().await.is_ok() {
            let reading = live_rx.borrow_and_update().clone();
            if let Some(r) = reading {
                let progress = queries::Progress {
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
                    .call(move |c| lifecycle::memtest_progress(c, run_id, &progress))
                    .await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
    });
    live_tx
}

/// Starts watching `run_id`'s memtest stage on `node_id`'s console; `Err` says why it cannot
/// be watched (then the stage fails at once: a result that cannot be read is never a pass).
pub async fn start(
    state: &Deps,
    node_id: i64,
    run_id: i64,
    memtest: &Memtest,
) -> Result<(), String> {
    let keys = state
        .db
        .read(move |c| queries::node_access_keys(c, node_id))
        .await
        .map_err(|e| format!("cannot read node {node_id}: {e}"))?;
    let access = state.config.access_for(&keys.0, keys.1.as_deref()).cloned();
    let Some(console) = access.as_ref().and_then(|a| a.console.clone()) else {
        return Err(format!(
            "no serial console is configured for node {node_id} (kiln.yaml `nodes:`): memtest86+ results cannot be read"
        ));
    };
    let power = access.and_then(|a| a.power);
    // Read only under the lease on the node's console: two collectors never read one.
    let epoch = super::leases::take(state, node_id).await?;
    state.captures.lease(run_id, node_id, epoch);
    let live_tx = spawn_progress(&state.db, run_id);
    let rules = Rules {
        passes: memtest.passes,
        timeout: memtest.timeout.get(),
        stall: memtest.stall_timeout.get(),
        skip_tests: memtest.skip_tests.clone(),
        live: Some(live_tx),
    };
    let stop = state.captures.register(run_id);
    let deps = state.clone();
    let (db, captures, me) = (state.db.clone(), state.captures.clone(), state.me.clone());
    let node = format!("node {node_id}");
    let tail_source = console.clone();
    tokio::spawn(async move {
        let finding = watch(console, rules, power.clone(), node.clone(), stop).await;
        captures.finished(run_id);
        tracing::info!(run_id, pass = finding.pass, detail = %finding.detail, "memtest86+ verdict");
        let stored = finding.clone();
        let applied = db
            .call(move |c| {
                // Stored only while the console is still this collector's, under the lease it
                // was read under: a reader presumed dead never writes a verdict.
                if !super::leases::still_holds(c, &me, node_id, epoch)? {
                    return Ok((Applied::Stale, lifecycle::Ended::default()));
                }
                lifecycle::memtest_finished(c, run_id, &stored)
            })
            .await;
        match applied {
            Ok((Applied::Yes, ended)) => {
                captures.stop(&ended);
                if finding.pass {
                    // Linux comes next: keep the last of its console, so a run that dies
                    // there fails with what the console showed (under the same lease).
                    let stop = captures.register_tail(run_id);
                    spawn_tail(&deps, tail_source, stop, run_id);
                } else {
                    super::leases::give_up(&deps, run_id).await;
                }
            }
            Ok((Applied::Stale, _)) => {
                // The stage ended some other way (reboot, timeout, operator, its console
                // taken over): this finding belongs to nothing running now, and must not
                // reset the node.
                tracing::warn!(
                    run_id,
                    "memtest86+ finding dropped: its stage is no longer running, or its console is no longer this collector's"
                );
                super::leases::give_up(&deps, run_id).await;
                return;
            }
            Err(err) => {
                tracing::error!(run_id, error = %err, "cannot store the memtest86+ verdict");
                return;
            }
        }
        match power {
            Some(power) => {
                if let Err(err) = power.act(&node, Action::Reset).await {
                    tracing::error!(run_id, error = %format!("{err:#}"), "power driver failed; the node must be reset by hand");
                    let note = format!("power driver failed: {err:#}");
                    let _ = db
                        .call(move |c| lifecycle::note_stage(c, run_id, Stage::Memtest, &note))
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

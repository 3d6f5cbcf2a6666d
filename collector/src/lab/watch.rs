//! The lab's wait: live progress per node (bars on a terminal, a line every 10 s
//! otherwise) until every node has a verdict and its VM is gone, injecting each fault when
//! its step shows; bounded by the lab's timeout and stopped by Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::collector::LabCollector;
use super::inject::{self, Fault, Injection, When};
use super::vm::Rack;
use super::{LabOptions, NodePlan, server};
use crate::lifecycle::RunStage;
use crate::store::queries::{self, Filter};

/// Waits for every node; returns how the wait ended and, per node, what was injected.
pub(super) fn until_done(
    opts: &LabOptions,
    plans: &[NodePlan],
    rack: &mut Rack,
    lab: &LabCollector,
    interrupted: &Arc<AtomicBool>,
    started: Instant,
) -> (anyhow::Result<()>, Vec<Vec<String>>) {
    let rt = &lab.rt;
    let db = &lab.db;
    let Rack { vms, bmcs, held } = rack;
    // Live progress until every node has a verdict and its VM is gone.
    let (_multi, bars) = progress_bars(opts.bars, plans);
    let mut last_plain = Instant::now() - Duration::from_secs(60);
    let mut injector = Injector::new(&opts.inject, plans.len(), !opts.bars);
    let result = (|| loop {
        std::thread::sleep(Duration::from_millis(500));
        let (rows, rearmed) = rt.block_on(db.read(rows_and_rearmed))?;
        let pieces = rt.block_on(db.read(payload_pieces))?;
        let ready = victims_ready(plans, opts.payload_mib, &injector.to_kill, &rows, &pieces);
        release_held(rt, plans, held, ready, started)?;
        kill_collector(opts, plans, lab, &rows, &mut injector, started);
        let mut lines = Vec::new();
        let mut all_done = true;
        for (n, ((p, bar), vm)) in plans.iter().zip(&bars).zip(vms.iter_mut()).enumerate() {
            let row = rows.iter().find(|r| r.macs.contains(&p.mac));
            let exited = vm.child.try_wait().ok().flatten().is_some();
            let verdict = row
                .filter(|r| !rearmed.contains(&r.node_id))
                .and_then(|r| r.verdict);
            injector.watch(rt, n, p, row, vm.started, bmcs[n].as_mut());
            let fetched = row.and_then(|r| pieces.get(&r.run_id?).copied());
            let (pos, msg) = progress(verdict, row, vm.started, fetched);
            bar.set_position(pos);
            bar.set_message(msg.clone());
            lines.push(format!("{}: {msg}", p.name));
            if verdict.is_some() {
                let done_at = *vm.done_at.get_or_insert_with(Instant::now);
                // A node that passed powers itself off; one that failed holds in iPXE.
                if !exited && done_at.elapsed() > Duration::from_secs(20) {
                    let _ = vm.child.kill();
                    let _ = vm.child.wait();
                }
            }
            // A node killed on purpose never has a verdict: its run stays open until its
            // heartbeat window ends, and the lab does not wait for that.
            let killed = injector.kill_if_serving(rt, db, n, p, row.map(|r| r.node_id), vm)?;
            let vm_gone = vm.child.try_wait().ok().flatten().is_some();
            all_done &= (verdict.is_some() || killed) && vm_gone;
            if exited && verdict.is_none() && vm.done_at.is_none() {
                vm.done_at = Some(Instant::now());
            }
            // A run that ended and a repeat that started since: the node is busy again.
            if !exited && verdict.is_none() {
                vm.done_at = None;
            }
        }
        if !opts.bars && last_plain.elapsed() > Duration::from_secs(10) {
            last_plain = Instant::now();
            println!(
                "[{:>4}s] {}",
                started.elapsed().as_secs(),
                lines.join(" | ")
            );
        }
        if all_done {
            break Ok(());
        }
        if interrupted.load(Ordering::SeqCst) {
            break Err(anyhow::anyhow!(
                "interrupted: stopping every VM the lab started"
            ));
        }
        if started.elapsed() > opts.timeout {
            break Err(anyhow::anyhow!(
                "the lab did not finish within {}s",
                opts.timeout.as_secs()
            ));
        }
        // A VM that died before its node got a verdict will not get one: at once when the
        // node never even reached the collector (QEMU did not start), after a grace period
        // otherwise (the collector may still be closing its run from the console).
        let dead = vms.iter_mut().zip(plans).find_map(|(vm, p)| {
            let row = rows.iter().find(|r| r.macs.contains(&p.mac));
            let gone_for = vm.done_at.map(|d| d.elapsed())?;
            if row.is_some_and(|r| r.verdict.is_some()) {
                return None;
            }
            let never_seen = row.is_none_or(|r| r.stage.is_none());
            (never_seen || gone_for > Duration::from_secs(90)).then(|| {
                let status = vm
                    .child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map_or("killed".to_owned(), |s| s.to_string());
                format!(
                    "{}'s VM stopped ({status}) without a verdict{}; QEMU said: {}",
                    p.name,
                    if never_seen {
                        " and before it reached the collector"
                    } else {
                        "; see the collector's run pages"
                    },
                    vm.log_tail()
                )
            })
        });
        if let Some(why) = dead {
            break Err(anyhow::anyhow!(why));
        }
    })();
    for bar in &bars {
        bar.finish();
    }
    (result, injector.injected)
}

/// A bar per node (drawn only on a terminal).
fn progress_bars(draw: bool, plans: &[NodePlan]) -> (MultiProgress, Vec<ProgressBar>) {
    let multi = MultiProgress::new();
    if !draw {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template(
        "{prefix:<12} [{bar:25.cyan/blue}] {pos:>3}% {elapsed:>4} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars = plans
        .iter()
        .map(|p| {
            let b = multi.add(ProgressBar::new(100));
            b.set_style(style.clone());
            b.set_prefix(p.name.clone());
            b
        })
        .collect();
    (multi, bars)
}

/// Verified payload pieces so far, by run.
fn payload_pieces(
    c: &crate::store::sql::Connection,
) -> Result<std::collections::HashMap<i64, i64>, crate::store::StoreError> {
    let mut stmt =
        c.prepare_cached("SELECT run_id, sum(pieces) FROM payload_sources GROUP BY run_id")?;
    let by_run = stmt
        .query_map([], |r| Ok((r.get::<i64>(0)?, r.get::<i64>(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(by_run)
}

/// Every node's row, and the nodes re-armed after their memtest stage lost its reader: those
/// run again, so a failed run of theirs is not their last word. One snapshot, so a repeat
/// starting between the two reads cannot show the failed run as final.
fn rows_and_rearmed(
    c: &crate::store::Connection<'_>,
) -> Result<(Vec<queries::NodeRow>, Vec<i64>), crate::store::StoreError> {
    let snapshot = c.snapshot()?;
    let rows = queries::node_rows(&snapshot, &Filter::default())?;
    let rearmed: Vec<i64> =
        snapshot.query_map("SELECT id FROM nodes WHERE rearm_of IS NOT NULL", [], |r| {
            r.get(0)
        })?;
    Ok((rows, rearmed))
}

/// Kills another collector with SIGKILL (once) when every node has reached the stage the
/// lab was asked to kill one in (in Linux, once every agent reports a step's progress: the
/// stage is under way, its kernel loaded); each node's injections say so.
fn kill_collector(
    opts: &LabOptions,
    plans: &[NodePlan],
    lab: &LabCollector,
    rows: &[queries::NodeRow],
    injector: &mut Injector,
    started: Instant,
) {
    let Some(stage) = opts.collectors.kill_at else {
        return;
    };
    let all_there = plans.iter().all(|p| {
        rows.iter()
            .find(|r| r.macs.contains(&p.mac))
            .is_some_and(|r| {
                r.stage == Some(stage)
                    && r.verdict.is_none()
                    && (stage != RunStage::Linux || r.progress.is_some())
            })
    });
    if !all_there || injector.collector_killed {
        return;
    }
    injector.collector_killed = true;
    let Some(what) = lab.kill_other() else {
        return;
    };
    let line = format!(
        "collector-kill: {what} at {:.0}s, every node in its {} stage",
        started.elapsed().as_secs_f64(),
        stage.name()
    );
    if injector.print {
        println!("kiln lab: {line}");
    }
    for node in &mut injector.injected {
        node.push(line.clone());
    }
}

/// Whether every node due to be killed serving has verified half the payload's pieces.
fn victims_ready(
    plans: &[NodePlan],
    payload_mib: u32,
    victims: &[usize],
    rows: &[queries::NodeRow],
    pieces: &std::collections::HashMap<i64, i64>,
) -> bool {
    let half = ((u64::from(payload_mib) << 20) / kiln_protocol::payload::PIECE_SIZE / 2).max(1);
    victims.iter().all(|&v| {
        rows.iter()
            .find(|r| r.macs.contains(&plans[v].mac))
            .and_then(|r| pieces.get(&r.run_id?))
            .is_some_and(|&n| n >= half as i64)
    })
}

/// Lets the paused nodes go once the nodes due to be killed serving are `ready` (or after
/// three minutes, so a victim that never fetches cannot hold the rack forever).
fn release_held(
    rt: &tokio::runtime::Runtime,
    plans: &[NodePlan],
    held: &mut Vec<usize>,
    ready: bool,
    started: Instant,
) -> anyhow::Result<()> {
    if held.is_empty() || (!ready && started.elapsed() < Duration::from_secs(180)) {
        return Ok(());
    }
    for n in held.drain(..) {
        rt.block_on(crate::memtest::power::qmp(
            &plans[n].qmp,
            &[serde_json::json!({ "execute": "cont" })],
        ))
        .map_err(|e| anyhow::anyhow!("cannot start the paused {}: {e}", plans[n].name))?;
    }
    Ok(())
}

/// Where a node is, as a bar position (memtest86+ 0–19 %, Linux 20–99 %) and a message.
fn progress(
    verdict: Option<kiln_protocol::verdict::Verdict>,
    row: Option<&queries::NodeRow>,
    vm_started: Instant,
    payload_pieces: Option<i64>,
) -> (u64, String) {
    match (&verdict, row) {
        (Some(v), _) => (100, format!("done: {v}")),
        (None, Some(r)) if r.stage == Some(RunStage::Memtest) => match &r.progress {
            Some(pr) => (
                (pr.fraction * 19.0) as u64,
                format!(
                    "memtest86+ {:.0}%: {}",
                    pr.fraction * 100.0,
                    pr.status.clone().unwrap_or_default()
                ),
            ),
            None => (
                0,
                format!("memtest86+ starting ({}s)", vm_started.elapsed().as_secs()),
            ),
        },
        (None, Some(r)) if r.stage == Some(RunStage::Cycles) => match &r.progress {
            Some(pr) => (
                99,
                format!("{}: {}", pr.name, pr.status.clone().unwrap_or_default()),
            ),
            None => (99, "power cycles".into()),
        },
        (None, Some(r)) if r.stage == Some(RunStage::Linux) => match &r.progress {
            Some(pr) => (
                20 + (pr.fraction * 79.0) as u64,
                format!(
                    "linux: {} {:.0}% {}",
                    pr.name,
                    pr.fraction * 100.0,
                    pr.status.clone().unwrap_or_default()
                ),
            ),
            None => match payload_pieces {
                Some(n) => (20, format!("linux: payload, {n} piece(s) verified")),
                None => (20, "linux: booting the RAM image".into()),
            },
        },
        _ => (0, "booting (iPXE)".into()),
    }
}

/// The injections still to fire, and what each node has had done to it.
struct Injector {
    pending: Vec<Injection>,
    /// Nodes (from 0) to kill once they serve the payload, and those killed.
    to_kill: Vec<usize>,
    killed: Vec<bool>,
    injected: Vec<Vec<String>>,
    print: bool,
    /// Whether another collector was killed (`LabOptions::collectors`).
    collector_killed: bool,
}

impl Injector {
    fn new(all: &[Injection], nodes: usize, print: bool) -> Injector {
        let mut injected = vec![Vec::new(); nodes];
        for j in all.iter().filter(|j| j.fault.when() == When::PowerOn) {
            injected[j.node - 1].push(format!("{j}: at power-on"));
            if let Some(m) = j.partner {
                injected[m - 1].push(format!("{j}: at power-on"));
            }
        }
        Injector {
            pending: all
                .iter()
                .filter(|j| matches!(j.fault.when(), When::Step | When::Cycle))
                .cloned()
                .collect(),
            to_kill: all
                .iter()
                .filter(|j| j.fault.when() == When::Serving)
                .map(|j| j.node - 1)
                .collect(),
            killed: vec![false; nodes],
            injected,
            print,
            collector_killed: false,
        }
    }

    /// Kills node `n`'s VM (from 0) when it is due to die serving and has served a piece:
    /// the fetches from it still under way break off. Returns whether it was killed (now or
    /// before).
    fn kill_if_serving(
        &mut self,
        rt: &tokio::runtime::Runtime,
        db: &crate::store::Db,
        n: usize,
        plan: &NodePlan,
        node_id: Option<i64>,
        vm: &mut super::vm::Vm,
    ) -> anyhow::Result<bool> {
        if self.killed[n] {
            return Ok(true);
        }
        let (Some(node), true) = (node_id, self.to_kill.contains(&n)) else {
            return Ok(false);
        };
        let served: i64 = rt.block_on(db.read(move |c| {
            Ok(c.query_row(
                "SELECT coalesce(sum(pieces), 0) FROM payload_sources WHERE source_node = ?1",
                [node],
                |r| r.get(0),
            )?)
        }))?;
        if served == 0 {
            return Ok(false);
        }
        let _ = vm.child.kill();
        let _ = vm.child.wait();
        let line = format!(
            "kill-peer: killed at {:.0}s, once it had served {served} piece(s)",
            vm.started.elapsed().as_secs_f64()
        );
        if self.print {
            println!("kiln lab: {}: {line}", plan.name);
        }
        self.injected[n].push(line);
        self.killed[n] = true;
        Ok(true)
    }

    /// What node `n` (from 0) shows now: a fault due while a step runs goes in once the step
    /// shows progress (its check is running then, after the agent took its before-the-step
    /// readings: kernel log, AER counters, BMC event log, so the fault is the step's); one due
    /// before a power cycle once that cycle is owed (the node still holds in the last boot,
    /// or is already rebooting).
    fn watch(
        &mut self,
        rt: &tokio::runtime::Runtime,
        n: usize,
        plan: &NodePlan,
        row: Option<&queries::NodeRow>,
        vm_started: Instant,
        bmc: Option<&mut server::Bmc>,
    ) {
        let Some(r) = row.filter(|r| r.verdict.is_none()) else {
            return;
        };
        let Some(pr) = r.progress.as_ref() else {
            return;
        };
        match r.stage {
            Some(RunStage::Linux) if pr.fraction > 0.0 => {
                self.step_shows(rt, n, plan, &pr.name, vm_started, bmc);
            }
            Some(RunStage::Cycles) => {
                if let Some(k) = pr
                    .name
                    .strip_prefix("power cycle ")
                    .and_then(|rest| rest.split(' ').next())
                {
                    self.step_shows(rt, n, plan, &format!("cycle{k}"), vm_started, None);
                }
            }
            _ => {}
        }
    }

    /// Node `n` (from 0) shows `step` running: whatever is due during it goes in now.
    fn step_shows(
        &mut self,
        rt: &tokio::runtime::Runtime,
        n: usize,
        plan: &NodePlan,
        step: &str,
        vm_started: Instant,
        bmc: Option<&mut server::Bmc>,
    ) {
        let (due, rest): (Vec<Injection>, Vec<Injection>) = self
            .pending
            .drain(..)
            .partition(|j| j.node == n + 1 && j.during.as_deref() == Some(step));
        self.pending = rest;
        let mut bmc = bmc;
        for j in due {
            let outcome = match fire(rt, &j, &plan.qmp, bmc.as_deref_mut()) {
                Ok(answer) => answer,
                Err(err) => format!("FAILED: {err:#}"),
            };
            let line = format!(
                "{} during {step} at {:.0}s: {outcome}",
                j.fault.name(),
                vm_started.elapsed().as_secs_f64()
            );
            if self.print {
                println!("kiln lab: {}: injected {line}", plan.name);
            }
            self.injected[n].push(line);
        }
    }
}

/// Injects `fault` now: through the node's QMP socket, or its BMC's console. Returns what
/// the emulator answered.
fn fire(
    rt: &tokio::runtime::Runtime,
    injection: &Injection,
    qmp: &Path,
    bmc: Option<&mut server::Bmc>,
) -> anyhow::Result<String> {
    let fault = injection.fault;
    if matches!(
        fault,
        Fault::SelEntry | Fault::FanFail | Fault::PsuWatts | Fault::PsuRedundancyLost
    ) {
        let bmc = bmc.ok_or_else(|| anyhow::anyhow!("the node has no BMC"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let watts = injection.watts.unwrap_or(0);
        let (line, said) = match fault {
            Fault::FanFail => (
                server::sensor_set_line(server::FAN1, 0),
                "FAN1 set to 0 RPM".to_owned(),
            ),
            Fault::PsuWatts => (
                server::sensor_set_line(
                    server::PSU1,
                    (watts / server::PSU_WATTS_STEP).min(255) as u8,
                ),
                format!("PSU1 input power set to {watts} W"),
            ),
            Fault::PsuRedundancyLost => (
                server::sensor_state_line(server::PSU_REDUNDANCY, 1),
                "PS Redundancy set to redundancy lost".to_owned(),
            ),
            _ => (
                inject::sel_add_line(now),
                "added to the BMC's event log".to_owned(),
            ),
        };
        bmc.command(&line)?;
        return Ok(said);
    }
    let answers = rt.block_on(crate::memtest::power::qmp(
        qmp,
        &inject::qmp_commands(fault),
    ))?;
    // HMP answers in text: nothing, or "OK …", on success; anything else is its complaint.
    let text = answers
        .iter()
        .filter_map(|a| a["return"].as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim();
    anyhow::ensure!(
        text.is_empty() || text.starts_with("OK"),
        "QEMU refused: {text}"
    );
    Ok(if text.is_empty() {
        "done".into()
    } else {
        text.to_owned()
    })
}

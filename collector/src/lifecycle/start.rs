//! How runs start: a node's boot (what `/ipxe` hands it, in one transaction with what
//! the boot means for its runs) and an agent's ad-hoc registration.

use super::{
    Connection, Ended, Memtest, Mode, NewRunOwned, NodeIdentity, RunStage, Sql, Stage, StageState,
    StoreError, Verdict, close_run, conclude, exec, fail_stage, lookup, now_ms, params, put_suite,
    row, stages, start_stage, with_console,
};
use crate::store::sql::OptionalExtension;

/// A suite the caller read from `DATA/suites/` for a run about to start.
#[derive(Debug, Clone)]
pub struct SuiteFile {
    /// Its name (the file's stem).
    pub name: String,
    /// Its text, or why it cannot be used (unreadable, refused).
    pub text: Result<String, String>,
}

/// What a boot request carries beside the node's identity.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The node as iPXE describes it (checked values only).
    pub identity: NodeIdentity,
    /// Mode of a node seen for the first time.
    pub unknown_mode: Mode,
    /// Suite for nodes with none assigned.
    pub default_suite: String,
    /// The suite file, once the decision asked for it.
    pub suite: Option<SuiteFile>,
    /// Hash of a freshly minted bootstrap token, used when the Linux stage is handed out.
    pub bootstrap_hash: String,
    /// Heartbeat the agent must keep.
    pub heartbeat_secs: u64,
    /// Digest of the RAM image nodes boot now.
    pub image_digest: Option<String>,
    /// The boot artifacts' digests by file name (JSON), for the run's provenance.
    pub artifacts: Option<String>,
    /// Most unlabelled nodes to create (see [`room_for_unknown`]).
    pub max_unknown_nodes: u64,
    /// The address the request came from: the Linux stage is handed out once, to one source.
    pub source: Option<String>,
    /// What a run started now may send.
    pub bounds: crate::config::RunBounds,
    /// The site's attestation rule, recorded on a run started now.
    pub attestation: kiln_protocol::attest::Attestation,
    /// Most runs a node may start in 24 hours.
    pub runs_per_day: u64,
}

/// Whether another node may be created for a machine no operator labelled: past `cap` such
/// nodes, a flood of invented MACs would only fill the database.
pub fn room_for_unknown(conn: &Connection, cap: u64) -> Result<bool, StoreError> {
    // Ad-hoc nodes have a quota of their own: registrations never crowd out a machine booting.
    let n: i64 = row(
        conn,
        "SELECT count(*) FROM nodes WHERE rack IS NULL AND ad_hoc = 0",
        [],
        |r| r.get(0),
    )?;
    Ok((n as u64) < cap)
}

/// What the node boots next.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// Its local disk.
    Local,
    /// The hold prompt, with why.
    Hold(String),
    /// The verdict screen of a finished run (`None` while it is still open).
    Done {
        /// Run.
        run_id: i64,
        /// Verdict.
        verdict: Option<Verdict>,
    },
    /// memtest86+ (its capture must start now).
    Memtest {
        /// Run.
        run_id: i64,
        /// The suite's memtest settings.
        memtest: Memtest,
    },
    /// The RAM image; the bootstrap token whose hash was in the request is now the run's.
    Linux {
        /// Run.
        run_id: i64,
    },
}

/// The answer to a boot request.
#[derive(Debug, Clone, PartialEq)]
pub enum BootDecision {
    /// A run must start with this suite: read `DATA/suites/NAME.yaml` and ask again.
    NeedSuite(String),
    /// An unknown machine, and no room for more of them: nothing was created.
    TooManyUnknown,
    /// The request's identifiers name different nodes (say which): refused, nothing changed.
    Conflict(String),
    /// The script to render.
    Script {
        /// The node.
        node_id: i64,
        /// Its serial, for the script's banner.
        serial: Option<String>,
        /// What it boots.
        script: Script,
    },
}

/// A node network-boots and asks for its script: finds or registers it by the lookup rule,
/// starts a run when it is armed, hands out the next pending stage, and fails a stage that
/// was still running (the node rebooted unexpectedly). One transaction.
pub fn boot(conn: &Connection, req: &BootRequest) -> Result<(BootDecision, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let mut ended = Ended::default();
    let now = now_ms();
    let named = lookup::named(&tx, &req.identity)?;
    if named.len() > 1 {
        let nodes: Vec<String> = named.iter().map(i64::to_string).collect();
        return Ok((
            BootDecision::Conflict(format!(
                "this request's MAC, UUID and serial name different nodes ({}): refused; only an operator changes which identifiers belong to a node (kiln nodes import)",
                nodes.join(", ")
            )),
            ended,
        ));
    }
    if lookup::find(&tx, &req.identity)?.is_none() && !room_for_unknown(&tx, req.max_unknown_nodes)?
    {
        return Ok((BootDecision::TooManyUnknown, ended));
    }
    let (node_id, new) = lookup::find_or_register(&tx, &req.identity, None, lookup::Claim::Boot)?;
    if new {
        exec(
            &tx,
            "UPDATE nodes SET mode = ?2, armed_ms = CASE WHEN ?2 = ?4 THEN CAST(?3 AS BIGINT) END WHERE id = ?1",
            params![node_id, Sql(req.unknown_mode), now, Sql(Mode::Verify)],
        )?;
    }
    let (mode, suite, rack_suite, armed_ms, serial): (
        Mode,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
    ) = row(
        &tx,
        "SELECT n.mode, n.suite, rs.suite, n.armed_ms, n.serial FROM nodes n LEFT JOIN rack_suites rs ON rs.rack = n.rack WHERE n.id = ?1",
        [node_id],
        |r| {
            Ok((
                r.get::<Sql<Mode>>(0)?.0,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
            ))
        },
    )?;
    let decided = |script| BootDecision::Script {
        node_id,
        serial: serial.clone(),
        script,
    };
    let script = match mode {
        Mode::Local => Script::Local,
        Mode::Hold => Script::Hold("mode hold".into()),
        Mode::Verify => {
            let open: Option<i64> = tx
                .query_row(
                    "SELECT id FROM runs WHERE node_id = ?1 AND verdict IS NULL ORDER BY id DESC LIMIT 1",
                    [node_id],
                    |r| r.get(0),
                )
                .optional()?;
            let run_id = match open {
                Some(run_id) => run_id,
                None => {
                    let last: Option<(i64, Verdict)> = tx
                        .query_row(
                            "SELECT id, verdict FROM runs WHERE node_id = ?1 AND verdict IS NOT NULL ORDER BY id DESC LIMIT 1",
                            [node_id],
                            |r| Ok((r.get(0)?, r.get::<Sql<Verdict>>(1)?.0)),
                        )
                        .optional()?;
                    // Armed = an operator (or the unknown-node policy) asked for a new run,
                    // and no run has started since: starting one consumes it.
                    let armed = armed_ms.is_some();
                    if !armed {
                        let script = match last {
                            Some((run_id, verdict)) => Script::Done {
                                run_id,
                                verdict: Some(verdict),
                            },
                            None => Script::Hold(
                                "not armed for verification; set its mode to verify".into(),
                            ),
                        };
                        tx.commit()?;
                        return Ok((decided(script), ended));
                    }
                    let name = suite
                        .or(rack_suite)
                        .unwrap_or_else(|| req.default_suite.clone());
                    let Some(file) = req.suite.as_ref().filter(|f| f.name == name) else {
                        // Reading the file is the caller's (no file I/O on the database
                        // thread); nothing was changed yet.
                        tx.commit()?;
                        return Ok((BootDecision::NeedSuite(name), ended));
                    };
                    match start_run(&tx, node_id, file, req)? {
                        Ok(run_id) => run_id,
                        Err(reason) => {
                            tx.commit()?;
                            return Ok((decided(Script::Hold(reason)), ended));
                        }
                    }
                }
            };
            next_stage(&tx, run_id, req, &mut ended)?
        }
    };
    if !matches!(script, Script::Linux { .. } | Script::Memtest { .. }) {
        exec(
            &tx,
            "UPDATE nodes SET last_seen_ms = ?2 WHERE id = ?1",
            params![node_id, now],
        )?;
    }
    tx.commit()?;
    Ok((decided(script), ended))
}

/// Creates the run for an armed node from the suite file; `Err` holds the node with why.
pub(super) fn start_run(
    tx: &Connection,
    node_id: i64,
    file: &SuiteFile,
    req: &BootRequest,
) -> Result<Result<i64, String>, StoreError> {
    let text = match &file.text {
        Ok(text) => text,
        Err(reason) => return Ok(Err(reason.clone())),
    };
    let plan = match kiln_protocol::load(&format!("{}.yaml", file.name), text.as_bytes()) {
        Ok(plan) => plan,
        Err(e) => {
            return Ok(Err(format!(
                "suite {} is refused: {}",
                file.name,
                e.to_string().lines().next().unwrap_or("")
            )));
        }
    };
    let stages: &[Stage] = match (plan.memtest.is_some(), plan.suite.cycles.is_some()) {
        (true, true) => &[Stage::Memtest, Stage::Linux, Stage::Cycles],
        (true, false) => &[Stage::Memtest, Stage::Linux],
        (false, true) => &[Stage::Linux, Stage::Cycles],
        (false, false) => &[Stage::Linux],
    };
    // The suite's `destructive: true` says a step may destroy data; only the operator's
    // consent for this node (`kiln nodes allow-destructive`) lets it.
    let wants_destructive = plan
        .steps
        .iter()
        .any(|s| matches!(&s.check, kiln_protocol::Check::Disk(d) if d.destructive));
    let consent: bool = row(
        tx,
        "SELECT allow_destructive FROM nodes WHERE id = ?1",
        [node_id],
        |r| r.get(0),
    )?;
    if let Some(why) = too_many_runs(tx, node_id, req.runs_per_day)? {
        tracing::warn!(node_id, "{why}");
        return Ok(Err(why));
    }
    let allow_destructive = wants_destructive && consent;
    if wants_destructive && !consent {
        tracing::warn!(
            node_id,
            suite = %file.name,
            "the suite has destructive disk steps but the node has no operator consent: they will be refused"
        );
    }
    exec(
        tx,
        "UPDATE nodes SET armed_ms = NULL WHERE id = ?1",
        [node_id],
    )?;
    let run_id = create_run(
        tx,
        &NewRun {
            node_id,
            suite_name: plan.name(),
            suite_text: text,
            // No session until the Linux stage's bootstrap token is exchanged.
            token_hash: "",
            stages,
            allow_destructive,
            heartbeat_secs: req.heartbeat_secs,
            image_digest: req.image_digest.as_deref(),
            artifacts: req.artifacts.as_deref(),
            bounds: req.bounds,
            attestation: req.attestation,
        },
    )?;
    // A repeat kiln armed itself (a memtest stage lost its reader) says which run it repeats.
    exec(
        tx,
        "UPDATE runs SET rearm_of = (SELECT rearm_of FROM nodes WHERE id = ?2) WHERE id = ?1",
        params![run_id, node_id],
    )?;
    exec(
        tx,
        "UPDATE nodes SET rearm_of = NULL WHERE id = ?1",
        [node_id],
    )?;
    tracing::info!(node_id, run_id, suite = %file.name, "started a verify run");
    Ok(Ok(run_id))
}

/// Hands out the run's next pending stage, or fails the one still running (an unexpected
/// reboot).
pub(super) fn next_stage(
    tx: &Connection,
    run_id: i64,
    req: &BootRequest,
    ended: &mut Ended,
) -> Result<Script, StoreError> {
    for (stage, state) in stages(tx, run_id)? {
        match (stage, state) {
            (_, StageState::Done) => continue,
            (Stage::Linux, StageState::Running) => {
                return linux_asked_again(tx, run_id, req, ended, Stage::Linux);
            }
            (Stage::Cycles, StageState::Running) => {
                use super::cycles::{Asked, asked};
                return match asked(
                    tx,
                    run_id,
                    &req.bootstrap_hash,
                    req.source.as_deref(),
                    ended,
                )? {
                    Asked::Linux => Ok(Script::Linux { run_id }),
                    Asked::Again => linux_asked_again(tx, run_id, req, ended, Stage::Cycles),
                    Asked::Failed => Ok(Script::Done {
                        run_id,
                        verdict: Some(Verdict::Fail),
                    }),
                };
            }
            (Stage::Cycles, StageState::Pending) => {
                // The Linux stage is done but its verdict never started the cycles: a boot
                // now is none kiln asked for.
                ended.extend(fail_stage(
                    tx,
                    run_id,
                    Stage::Cycles,
                    "unexpected reboot: the node asked for its boot script before its power cycles began",
                )?);
                return Ok(Script::Done {
                    run_id,
                    verdict: Some(Verdict::Fail),
                });
            }
            (stage, StageState::Running) => {
                // The node asked for its script while a stage was still running: it rebooted
                // unexpectedly. That is a fail, never a pass.
                let detail = with_console(
                    tx,
                    run_id,
                    format!(
                        "unexpected reboot: the node asked for its boot script while the {stage} stage was running"
                    ),
                )?;
                ended.extend(fail_stage(tx, run_id, stage, &detail)?);
                return Ok(Script::Done {
                    run_id,
                    verdict: Some(Verdict::Fail),
                });
            }
            (Stage::Memtest, StageState::Pending) => {
                let memtest = super::stored_plan(tx, run_id)?.and_then(|plan| plan.memtest);
                let Some(memtest) = memtest else {
                    ended.extend(fail_stage(
                        tx,
                        run_id,
                        Stage::Memtest,
                        "the run's stored suite has no memtest settings (it no longer loads)",
                    )?);
                    return Ok(Script::Done {
                        run_id,
                        verdict: Some(Verdict::Fail),
                    });
                };
                start_stage(tx, run_id, Stage::Memtest)?;
                return Ok(Script::Memtest { run_id, memtest });
            }
            (Stage::Linux, StageState::Pending) => {
                start_stage(tx, run_id, Stage::Linux)?;
                // A fresh bootstrap token for this boot, and no session yet: only its hash is
                // kept, and every older token of this node is dead from now on.
                exec(
                    tx,
                    "UPDATE runs SET bootstrap_hash = ?2, bootstrap_used_ms = NULL, token_hash = '', linux_served_ms = ?3, linux_source = ?4 WHERE id = ?1",
                    params![run_id, req.bootstrap_hash, now_ms(), req.source],
                )?;
                supersede_other_runs(tx, run_id, ended)?;
                return Ok(Script::Linux { run_id });
            }
        }
    }
    // Every stage done but no verdict: conclude now.
    conclude(tx, run_id)?;
    let verdict: Option<Sql<Verdict>> = row(
        tx,
        "SELECT verdict FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    Ok(Script::Done {
        run_id,
        verdict: verdict.map(|v| v.0),
    })
}

/// How soon after the Linux stage was handed out the same address may ask again as iPXE
/// retrying a request whose answer it lost; later, the node has rebooted (a server's POST
/// alone takes longer).
const RETRY_WINDOW_MS: i64 = 10_000;

/// The Linux stage was handed out in this boot and the node's identity asks for it again.
/// Moments later, before the bootstrap exchange, from the same address, it is iPXE retrying
/// the same request (its answer was lost): the stage is handed out again with the new token, and the old one
/// is dead. From another address it is a second party asking for the same stage, and after
/// the exchange it is a reboot at best: either fails the run, the sources named, so the real
/// node can be failed by an attacker but never silently skipped.
fn linux_asked_again(
    tx: &Connection,
    run_id: i64,
    req: &BootRequest,
    ended: &mut Ended,
    stage: Stage,
) -> Result<Script, StoreError> {
    let (first, exchanged, served): (Option<String>, Option<i64>, Option<i64>) = row(
        tx,
        "SELECT linux_source, bootstrap_used_ms, linux_served_ms FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let same_source = first == req.source;
    let moments_ago = served.is_some_and(|at| now_ms() - at < RETRY_WINDOW_MS);
    if same_source && exchanged.is_none() && moments_ago {
        exec(
            tx,
            "UPDATE runs SET bootstrap_hash = ?2 WHERE id = ?1",
            params![run_id, req.bootstrap_hash],
        )?;
        return Ok(Script::Linux { run_id });
    }
    let detail = if same_source {
        with_console(
            tx,
            run_id,
            format!(
                "unexpected reboot: the node asked for its boot script while the {stage} stage was running"
            ),
        )?
    } else {
        format!(
            "security: the {stage} stage was asked for a second time in this boot: handed out to {}, asked again from {}{}",
            super::agent::source_name(first.as_deref()),
            super::agent::source_name(req.source.as_deref()),
            if exchanged.is_some() {
                " after its token was exchanged"
            } else {
                ""
            }
        )
    };
    ended.extend(fail_stage(tx, run_id, stage, &detail)?);
    Ok(Script::Done {
        run_id,
        verdict: Some(Verdict::Fail),
    })
}

/// Other open runs of the run's node (an earlier ad-hoc run an operator registered) end:
/// the node booted again, so whatever they were running is gone.
pub(super) fn supersede_other_runs(
    tx: &Connection,
    run_id: i64,
    ended: &mut Ended,
) -> Result<(), StoreError> {
    let others: Vec<i64> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM runs WHERE node_id = (SELECT node_id FROM runs WHERE id = ?1) AND id <> ?1 AND verdict IS NULL",
        )?;
        stmt.query_map([run_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for other in others {
        ended.extend(close_run(
            tx,
            other,
            Verdict::Incomplete,
            &format!("the node booted again (run {run_id}) before this run finished"),
        )?);
    }
    Ok(())
}

/// What a new run is.
pub struct NewRun<'a> {
    /// Node.
    pub node_id: i64,
    /// Suite name.
    pub suite_name: &'a str,
    /// Suite text.
    pub suite_text: &'a str,
    /// Hash of the run's token.
    pub token_hash: &'a str,
    /// Stages, in order.
    pub stages: &'a [Stage],
    /// Destructive disk steps allowed.
    pub allow_destructive: bool,
    /// Heartbeat the agent must keep.
    pub heartbeat_secs: u64,
    /// Digest of the RAM image the node boots, when network-booted.
    pub image_digest: Option<&'a str>,
    /// The boot artifacts' digests by file name (JSON), when network-booted.
    pub artifacts: Option<&'a str>,
    /// What the run may send.
    pub bounds: crate::config::RunBounds,
    /// The site's attestation rule.
    pub attestation: kiln_protocol::attest::Attestation,
}

/// Creates a run with its stages pending; returns its id.
pub(super) fn create_run(tx: &Connection, run: &NewRun<'_>) -> Result<i64, StoreError> {
    let sha = put_suite(tx, run.suite_name, run.suite_text)?;
    let now = now_ms();
    let first = run.stages.first().copied().unwrap_or(Stage::Linux);
    let id: i64 = row(tx,
        "INSERT INTO runs (node_id, suite_sha256, suite_name, image_digest, token_hash, stage, allow_destructive, heartbeat_secs, started_ms, last_seen_ms, collector_version, artifacts, max_events, max_log_bytes, attestation_optional)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14) RETURNING id",
        params![run.node_id, sha, run.suite_name, run.image_digest, run.token_hash, Sql(RunStage::from(first)), run.allow_destructive, run.heartbeat_secs as i64, now, env!("CARGO_PKG_VERSION"), run.artifacts, run.bounds.events as i64, run.bounds.log_bytes.0 as i64, run.attestation == kiln_protocol::attest::Attestation::Optional],
        |r| r.get(0),
    )?;
    for stage in run.stages {
        exec(
            tx,
            "INSERT INTO stages (run_id, name, state) VALUES (?1, ?2, ?3)",
            params![id, stage, StageState::Pending],
        )?;
    }
    Ok(id)
}

/// An agent registers an ad-hoc run (`kiln-agent run --collector`). Without the admin token it
/// gets a new ad-hoc node that never takes over an existing one; with it, the node is found
/// by the lookup rule (or registered). Returns (node, run), or `None` when a new node would be
/// one unknown node too many.
pub fn register(
    conn: &Connection,
    identity: &NodeIdentity,
    hostname: Option<&str>,
    admin: bool,
    caps: Caps,
    run: impl FnOnce(i64) -> NewRunOwned,
) -> Result<Registered, StoreError> {
    let tx = conn.savepoint()?;
    let known = admin && lookup::find(&tx, identity)?.is_some();
    // An operator's registration of a new machine counts as one booting; anyone else's as
    // ad hoc, against a quota of its own.
    let room = match (known, admin) {
        (true, _) => true,
        (false, true) => room_for_unknown(&tx, caps.unknown)?,
        (false, false) => room_for_ad_hoc(&tx, caps.ad_hoc)?,
    };
    if !room {
        return Ok(Registered::NoRoom);
    }
    let node_id = if admin {
        lookup::find_or_register(&tx, identity, hostname, lookup::Claim::Admin)?.0
    } else {
        lookup::register_ad_hoc(&tx, identity, hostname)?
    };
    if let Some(why) = too_many_runs(&tx, node_id, caps.runs_per_day)? {
        return Ok(Registered::TooManyRuns(why));
    }
    let owned = run(node_id);
    let run_id = create_run(
        &tx,
        &NewRun {
            node_id,
            suite_name: &owned.suite_name,
            suite_text: &owned.suite_text,
            token_hash: &owned.token_hash,
            stages: &[Stage::Linux],
            allow_destructive: false,
            heartbeat_secs: owned.heartbeat_secs,
            image_digest: None,
            artifacts: None,
            bounds: owned.bounds,
            attestation: owned.attestation,
        },
    )?;
    tx.commit()?;
    Ok(Registered::Run { node_id, run_id })
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A run started.
    Run {
        /// Its node.
        node_id: i64,
        /// The run.
        run_id: i64,
    },
    /// A new node would pass its quota: nothing was created.
    NoRoom,
    /// The node started too many runs today (why): nothing was created.
    TooManyRuns(String),
}

/// The node quotas a registration counts against.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Most unlabelled nodes of machines booting (or an operator registering).
    pub unknown: u64,
    /// Most ad-hoc nodes.
    pub ad_hoc: u64,
    /// Most runs one node may start in 24 hours.
    pub runs_per_day: u64,
}

/// Why `node_id` may not start another run now: it started `cap` in the last 24 hours.
pub fn too_many_runs(
    conn: &Connection,
    node_id: i64,
    cap: u64,
) -> Result<Option<String>, StoreError> {
    let day_ago = now_ms() - 24 * 3600 * 1000;
    let n: i64 = row(
        conn,
        "SELECT count(*) FROM runs WHERE node_id = ?1 AND started_ms > ?2",
        params![node_id, day_ago],
        |r| r.get(0),
    )?;
    Ok(((n as u64) >= cap).then(|| {
        format!(
            "node {node_id} started {n} runs in the last 24 hours (runs_per_node_per_day is {cap}): no more until the oldest is a day old"
        )
    }))
}

/// Whether another ad-hoc node may be created: past `cap`, a flood of registrations would
/// only fill the database.
pub fn room_for_ad_hoc(conn: &Connection, cap: u64) -> Result<bool, StoreError> {
    let n: i64 = row(
        conn,
        "SELECT count(*) FROM nodes WHERE ad_hoc = 1",
        [],
        |r| r.get(0),
    )?;
    Ok((n as u64) < cap)
}

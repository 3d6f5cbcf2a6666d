//! The run lifecycle: every change of a node's mode, a run's stage and a stage's state, each
//! one SQLite transaction, and nowhere else.
//!
//! ```text
//! node (mode verify, armed) ──boot──▶ run: [memtest] ─▶ linux ─▶ done (verdict)
//!   memtest: pending ─boot─▶ running ─capture verdict─▶ done(pass|fail)
//!   linux:   pending ─boot (or agent start)─▶ running ─agent's final event, contiguous─▶ done
//!   any running stage ─unexpected reboot | lost contact | operator─▶ done(fail|incomplete)
//! ```
//!
//! The collector computes each verdict from what it stored ([`verdict`]); the agent's verdict
//! is only compared. A finished run is closed: nothing more is accepted for it. Transitions
//! return the stages they ended ([`Ended`]) so their console captures stop
//! ([`captures::Captures`]); a capture's finding is applied only while its run and stage are
//! still the running ones.

pub mod captures;
pub mod lookup;
pub mod states;
pub mod verdict;

use kiln_protocol::suite::Memtest;
use kiln_protocol::verdict::Verdict;
use kiln_protocol::wire::{EventBatch, EventBody, Inventory, NodeIdentity};
use rusqlite::{Connection, OptionalExtension, params};

pub use states::{Mode, RunStage, SqlVerdict, Stage, StageState};

use crate::store::queries::{Progress, Selector, put_suite, select_sql};
use crate::store::{StoreError, now_ms};

/// Runs a statement through the connection's statement cache (transitions run thousands of
/// times a second under load; parsing their SQL each time is most of the cost).
fn exec<P: rusqlite::Params>(conn: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// One row of a cached statement.
fn row<T, P, F>(conn: &Connection, sql: &str, params: P, f: F) -> rusqlite::Result<T>
where
    P: rusqlite::Params,
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// Stages a transition ended, so their console captures can be stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use = "ended stages must stop their captures (Captures::stop)"]
pub struct Ended(pub Vec<(i64, Stage)>);

impl Ended {
    fn add(&mut self, run_id: i64, stage: Stage) {
        self.0.push((run_id, stage));
    }

    fn extend(&mut self, other: Ended) {
        self.0.extend(other.0);
    }
}

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
    /// Most unlabelled nodes to create (see [`room_for_unknown`]).
    pub max_unknown_nodes: u64,
}

/// Whether another node may be created for a machine no operator labelled: past `cap` such
/// nodes, a flood of invented MACs would only fill the database.
pub fn room_for_unknown(conn: &Connection, cap: u64) -> Result<bool, StoreError> {
    let n: i64 = row(
        conn,
        "SELECT count(*) FROM nodes WHERE rack IS NULL",
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
pub fn boot(conn: &mut Connection, req: &BootRequest) -> Result<(BootDecision, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let mut ended = Ended::default();
    let now = now_ms();
    if lookup::find(&tx, &req.identity)?.is_none() && !room_for_unknown(&tx, req.max_unknown_nodes)?
    {
        return Ok((BootDecision::TooManyUnknown, ended));
    }
    let (node_id, new) = lookup::find_or_register(&tx, &req.identity, None, lookup::Claim::Boot)?;
    if new {
        exec(
            &tx,
            "UPDATE nodes SET mode = ?2, armed_ms = CASE WHEN ?2 = ?4 THEN ?3 END WHERE id = ?1",
            params![node_id, req.unknown_mode, now, Mode::Verify],
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
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
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
                            |r| Ok((r.get(0)?, r.get::<_, SqlVerdict>(1)?.0)),
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
fn start_run(
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
    let stages: &[Stage] = if plan.memtest.is_some() {
        &[Stage::Memtest, Stage::Linux]
    } else {
        &[Stage::Linux]
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
        },
    )?;
    tracing::info!(node_id, run_id, suite = %file.name, "started a verify run");
    Ok(Ok(run_id))
}

/// Hands out the run's next pending stage, or fails the one still running (an unexpected
/// reboot).
fn next_stage(
    tx: &Connection,
    run_id: i64,
    req: &BootRequest,
    ended: &mut Ended,
) -> Result<Script, StoreError> {
    for (stage, state) in stages(tx, run_id)? {
        match (stage, state) {
            (_, StageState::Done) => continue,
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
                let text: String = row(
                    tx,
                    "SELECT s.text FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1",
                    [run_id],
                    |r| r.get(0),
                )?;
                let memtest = kiln_protocol::load("suite", text.as_bytes())
                    .ok()
                    .and_then(|plan| plan.memtest);
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
                    "UPDATE runs SET bootstrap_hash = ?2, bootstrap_used_ms = NULL, token_hash = '' WHERE id = ?1",
                    params![run_id, req.bootstrap_hash],
                )?;
                supersede_other_runs(tx, run_id, ended)?;
                return Ok(Script::Linux { run_id });
            }
        }
    }
    // Every stage done but no verdict: conclude now.
    conclude(tx, run_id)?;
    let verdict: Option<SqlVerdict> = row(
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

/// Other open runs of the run's node (an earlier ad-hoc run an operator registered) end:
/// the node booted again, so whatever they were running is gone.
fn supersede_other_runs(tx: &Connection, run_id: i64, ended: &mut Ended) -> Result<(), StoreError> {
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

/// The stages of a run, in order, with their states.
fn stages(tx: &Connection, run_id: i64) -> Result<Vec<(Stage, StageState)>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT name, state FROM stages WHERE run_id = ?1")?;
    let mut stages: Vec<(Stage, StageState)> = stmt
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    stages.sort_by_key(|(stage, _)| Stage::ALL.iter().position(|s| s == stage));
    Ok(stages)
}

/// Marks a pending stage running and makes it the run's stage; the previous stage's live
/// progress is cleared, so the new stage shows its own.
fn start_stage(tx: &Connection, run_id: i64, stage: Stage) -> Result<(), StoreError> {
    let now = now_ms();
    exec(
        tx,
        "UPDATE stages SET state = ?3, started_ms = ?4 WHERE run_id = ?1 AND name = ?2 AND state = ?5",
        params![run_id, stage, StageState::Running, now, StageState::Pending],
    )?;
    exec(
        tx,
        "UPDATE runs SET stage = ?2, progress = NULL, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, RunStage::from(stage), now],
    )?;
    Ok(())
}

/// Ends a stage with a verdict and detail (only if it was not done) and clears the run's live
/// progress, which belonged to that stage.
fn end_stage(
    tx: &Connection,
    run_id: i64,
    stage: Stage,
    verdict: Verdict,
    detail: Option<&str>,
) -> Result<bool, StoreError> {
    let changed = exec(
        tx,
        "UPDATE stages SET state = ?3, verdict = ?4, detail = ?5, finished_ms = ?6 WHERE run_id = ?1 AND name = ?2 AND state <> ?3",
        params![
            run_id,
            stage,
            StageState::Done,
            SqlVerdict(verdict),
            detail,
            now_ms()
        ],
    )?;
    exec(
        tx,
        "UPDATE runs SET progress = NULL WHERE id = ?1",
        [run_id],
    )?;
    Ok(changed > 0)
}

/// Fails a stage (`detail` says why), marks later stages as not run, and concludes the run.
fn fail_stage(
    tx: &Connection,
    run_id: i64,
    stage: Stage,
    detail: &str,
) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    if end_stage(tx, run_id, stage, Verdict::Fail, Some(detail))? {
        ended.add(run_id, stage);
    }
    for (other, state) in stages(tx, run_id)? {
        if state != StageState::Done {
            end_stage(
                tx,
                run_id,
                other,
                Verdict::Incomplete,
                Some("not run: an earlier stage failed"),
            )?;
            ended.add(run_id, other);
        }
    }
    conclude(tx, run_id)?;
    Ok(ended)
}

/// Ends every open stage of a run with `verdict` and closes the run with `reason`.
fn close_run(
    tx: &Connection,
    run_id: i64,
    verdict: Verdict,
    reason: &str,
) -> Result<Ended, StoreError> {
    let mut ended = Ended::default();
    for (stage, state) in stages(tx, run_id)? {
        if state != StageState::Done {
            end_stage(tx, run_id, stage, verdict, Some(reason))?;
            ended.add(run_id, stage);
        }
    }
    exec(
        tx,
        "UPDATE runs SET verdict_reason = COALESCE(verdict_reason, ?2) WHERE id = ?1",
        params![run_id, reason],
    )?;
    conclude(tx, run_id)?;
    Ok(ended)
}

/// Sets a run's verdict once every stage is done: the worst stage verdict. A stage without a
/// verdict counts as incomplete, never as a pass.
fn conclude(tx: &Connection, run_id: i64) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached("SELECT state, verdict FROM stages WHERE run_id = ?1")?;
    let stages: Vec<(StageState, Option<SqlVerdict>)> = stmt
        .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    if stages.iter().any(|(state, _)| *state != StageState::Done) {
        return Ok(());
    }
    let verdict = stages
        .iter()
        .map(|(_, v)| v.map_or(Verdict::Incomplete, |v| v.0))
        .fold(
            if stages.is_empty() {
                Verdict::Incomplete
            } else {
                Verdict::Pass
            },
            Verdict::worst,
        );
    exec(
        tx,
        "UPDATE runs SET verdict = ?2, finished_ms = ?3, stage = ?4, progress = NULL WHERE id = ?1 AND verdict IS NULL",
        params![run_id, SqlVerdict(verdict), now_ms(), RunStage::Done],
    )?;
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
}

/// Creates a run with its stages pending; returns its id.
fn create_run(tx: &Connection, run: &NewRun<'_>) -> Result<i64, StoreError> {
    let sha = put_suite(tx, run.suite_name, run.suite_text)?;
    let now = now_ms();
    let first = run.stages.first().copied().unwrap_or(Stage::Linux);
    exec(tx,
        "INSERT INTO runs (node_id, suite_sha256, suite_name, image_digest, token_hash, stage, allow_destructive, heartbeat_secs, started_ms, last_seen_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![run.node_id, sha, run.suite_name, run.image_digest, run.token_hash, RunStage::from(first), run.allow_destructive, run.heartbeat_secs as i64, now],
    )?;
    let id = tx.last_insert_rowid();
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
    conn: &mut Connection,
    identity: &NodeIdentity,
    hostname: Option<&str>,
    admin: bool,
    max_unknown_nodes: u64,
    run: impl FnOnce(i64) -> NewRunOwned,
) -> Result<Option<(i64, i64)>, StoreError> {
    let tx = conn.savepoint()?;
    let known = admin && lookup::find(&tx, identity)?.is_some();
    if !known && !room_for_unknown(&tx, max_unknown_nodes)? {
        return Ok(None);
    }
    let node_id = if admin {
        lookup::find_or_register(&tx, identity, hostname, lookup::Claim::Admin)?.0
    } else {
        lookup::register_ad_hoc(&tx, identity, hostname)?
    };
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
        },
    )?;
    tx.commit()?;
    Ok(Some((node_id, run_id)))
}

/// The owned parts of an ad-hoc run.
#[derive(Debug, Clone)]
pub struct NewRunOwned {
    /// Suite name.
    pub suite_name: String,
    /// Suite text.
    pub suite_text: String,
    /// Hash of the run's token.
    pub token_hash: String,
    /// Heartbeat the agent must keep.
    pub heartbeat_secs: u64,
}

/// Whether a run accepts posts from its agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAccess {
    /// No such run, or another run's token: the same answer either way.
    Denied,
    /// The token is the run's and the run is open.
    Open,
    /// The token is the run's, but the run has its verdict: nothing more is accepted.
    Closed(Verdict),
}

/// Checks an agent's token against run `run_id`.
pub fn access(conn: &Connection, run_id: i64, token_hash: &str) -> Result<RunAccess, StoreError> {
    let row: Option<(String, Option<SqlVerdict>)> = conn
        .query_row(
            "SELECT token_hash, verdict FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        Some((stored, verdict)) if crate::tokens::equal(&stored, token_hash) => match verdict {
            Some(v) => RunAccess::Closed(v.0),
            None => RunAccess::Open,
        },
        _ => RunAccess::Denied,
    })
}

/// The open run whose session token has this hash, if any.
pub fn open_run_with_session(
    conn: &Connection,
    token_hash: &str,
) -> Result<Option<i64>, StoreError> {
    if token_hash.is_empty() {
        return Ok(None);
    }
    Ok(conn
        .query_row(
            "SELECT id FROM runs WHERE token_hash = ?1 AND verdict IS NULL",
            [token_hash],
            |r| r.get(0),
        )
        .optional()?)
}

/// What a bootstrap exchange did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The session token whose hash was given is now the run's.
    Issued,
    /// Not this run's bootstrap token (or no such run).
    Denied,
    /// The run is closed.
    Closed(Verdict),
    /// The bootstrap token was used before: someone else has it too. The run failed.
    Reused,
}

/// The agent exchanges the bootstrap token from its kernel command line for the run's session
/// token. Once: a second exchange means another process (or machine) holds the bootstrap
/// token, which fails the run as a security event — never a silent pass.
pub fn exchange(
    conn: &mut Connection,
    run_id: i64,
    bootstrap_hash: &str,
    session_hash: &str,
) -> Result<(Exchange, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let row: Option<(Option<String>, Option<i64>, Option<SqlVerdict>)> = tx
        .query_row(
            "SELECT bootstrap_hash, bootstrap_used_ms, verdict FROM runs WHERE id = ?1",
            [run_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((Some(stored), used, verdict)) = row else {
        return Ok((Exchange::Denied, Ended::default()));
    };
    if !crate::tokens::equal(&stored, bootstrap_hash) {
        return Ok((Exchange::Denied, Ended::default()));
    }
    if let Some(v) = verdict {
        return Ok((Exchange::Closed(v.0), Ended::default()));
    }
    if used.is_some() {
        let ended = close_run(
            &tx,
            run_id,
            Verdict::Fail,
            "security: the bootstrap token was used twice (another process or machine has it)",
        )?;
        tx.commit()?;
        return Ok((Exchange::Reused, ended));
    }
    exec(
        &tx,
        "UPDATE runs SET token_hash = ?2, bootstrap_used_ms = ?3, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, session_hash, now_ms()],
    )?;
    tx.commit()?;
    Ok((Exchange::Issued, Ended::default()))
}

/// The agent fetched its plan (or pinged): it is alive. `None` when the run is closed.
pub fn plan(
    conn: &mut Connection,
    run_id: i64,
) -> Result<Option<kiln_protocol::wire::RunPlan>, StoreError> {
    let tx = conn.savepoint()?;
    let plan = tx
        .query_row(
            "SELECT r.node_id, s.text, r.allow_destructive, r.heartbeat_secs FROM runs r JOIN suites s ON s.sha256 = r.suite_sha256 WHERE r.id = ?1 AND r.verdict IS NULL",
            [run_id],
            |r| {
                Ok(kiln_protocol::wire::RunPlan {
                    run_id,
                    node_id: r.get(0)?,
                    suite_text: r.get(1)?,
                    allow_destructive: r.get(2)?,
                    heartbeat_secs: r.get::<_, i64>(3)? as u64,
                    after: "poweroff".into(),
                })
            },
        )
        .optional()?;
    if plan.is_some() {
        exec(
            &tx,
            "UPDATE runs SET last_seen_ms = ?2 WHERE id = ?1",
            params![run_id, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(plan)
}

/// Stores the inventory an agent posted; `false` when the run is closed (nothing changed).
pub fn put_inventory(
    conn: &Connection,
    run_id: i64,
    inventory: &Inventory,
) -> Result<bool, StoreError> {
    let json = serde_json::to_string(inventory).map_err(|source| StoreError::Corrupt {
        what: "inventory",
        source,
    })?;
    Ok(exec(
        conn,
        "UPDATE runs SET inventory = ?2, last_seen_ms = ?3 WHERE id = ?1 AND verdict IS NULL",
        params![run_id, json, now_ms()],
    )? > 0)
}

/// What ingesting a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored; the highest contiguous sequence number now stored.
    Acked(u64),
    /// The run is closed: nothing was stored.
    Closed(Verdict),
    /// Not the run's token (or no such run): nothing was stored.
    Denied,
}

/// Stores a batch, once per sequence number, applies what each new event means (agent start,
/// step results, live progress), and once the agent's final event and everything before it
/// are stored, computes the verdict. One transaction.
pub fn ingest(
    conn: &mut Connection,
    run_id: i64,
    token_hash: &str,
    batch: &EventBatch,
) -> Result<(Ingested, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let now = now_ms();
    let mut ended = Ended::default();
    let run: Option<(i64, Option<String>, Option<SqlVerdict>, String)> = row(
        &tx,
        "SELECT acked_seq, progress, verdict, token_hash FROM runs WHERE id = ?1",
        [run_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()?;
    let Some((mut acked, progress, verdict, stored_hash)) = run else {
        return Ok((Ingested::Denied, ended));
    };
    if stored_hash.is_empty() || !crate::tokens::equal(&stored_hash, token_hash) {
        return Ok((Ingested::Denied, ended));
    }
    if let Some(v) = verdict {
        return Ok((Ingested::Closed(v.0), ended));
    }
    let mut current: Option<Progress> = progress
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok());
    let mut progress_changed = false;
    for event in &batch.events {
        let body = serde_json::to_string(&event.body).map_err(|source| StoreError::Corrupt {
            what: "event",
            source,
        })?;
        let inserted = exec(
            &tx,
            "INSERT OR IGNORE INTO events (run_id, seq, at_ms, kind, step, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run_id,
                event.seq as i64,
                event.at_ms as i64,
                event_kind(&event.body),
                event_step(&event.body),
                body
            ],
        )?;
        if inserted == 0 {
            continue; // a resent event: stored already, its effects applied already
        }
        match &event.body {
            EventBody::RunStarted { .. } => {
                // A memtest stage not done by now never finished cleanly.
                for (stage, state) in stages(&tx, run_id)? {
                    if stage == Stage::Memtest && state != StageState::Done {
                        end_stage(
                            &tx,
                            run_id,
                            stage,
                            Verdict::Incomplete,
                            Some("the agent started before memtest86+ had a verdict"),
                        )?;
                        ended.add(run_id, stage);
                    }
                }
                start_stage(&tx, run_id, Stage::Linux)?;
                exec(
                    &tx,
                    "UPDATE runs SET agent_started_ms = COALESCE(agent_started_ms, ?2) WHERE id = ?1",
                    params![run_id, now],
                )?;
                current = None;
                progress_changed = true;
            }
            EventBody::ExpectChecked { outcome } => {
                let json =
                    serde_json::to_string(outcome).map_err(|source| StoreError::Corrupt {
                        what: "outcome",
                        source,
                    })?;
                exec(
                    &tx,
                    "UPDATE runs SET expect = ?2 WHERE id = ?1",
                    params![run_id, json],
                )?;
            }
            EventBody::StepStarted { step, name, .. } => {
                current = Some(Progress {
                    step: *step,
                    name: name.clone(),
                    fraction: 0.0,
                    status: None,
                });
                progress_changed = true;
            }
            EventBody::Progress {
                step,
                fraction,
                status,
            } => {
                if let Some(current) = current.as_mut().filter(|c| c.step == *step) {
                    current.fraction = *fraction;
                    current.status = status.clone();
                    progress_changed = true;
                }
            }
            EventBody::StepFinished { report } => {
                let json = serde_json::to_string(report).map_err(|source| StoreError::Corrupt {
                    what: "step",
                    source,
                })?;
                // The first result of a step is the one kept; a repeat is itself a finding
                // when the verdict is computed.
                exec(
                    &tx,
                    "INSERT OR IGNORE INTO steps (run_id, step, name, kind, outcome, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        run_id,
                        report.step,
                        report.name,
                        report.kind,
                        report.outcome.name(),
                        json
                    ],
                )?;
                if let Some(current) = current.as_mut().filter(|c| c.step == report.step) {
                    current.fraction = 1.0;
                    progress_changed = true;
                }
            }
            EventBody::RunFinished { verdict } => {
                exec(
                    &tx,
                    "UPDATE runs SET agent_verdict = ?2, final_seq = min(COALESCE(final_seq, ?3), ?3) WHERE id = ?1",
                    params![run_id, SqlVerdict(*verdict), event.seq as i64],
                )?;
            }
            EventBody::Log { .. } | EventBody::LogsDropped { .. } => {}
        }
    }
    if progress_changed {
        let json = current
            .map(|c| serde_json::to_string(&c))
            .transpose()
            .map_err(|source| StoreError::Corrupt {
                what: "progress",
                source,
            })?;
        exec(
            &tx,
            "UPDATE runs SET progress = ?2 WHERE id = ?1",
            params![run_id, json],
        )?;
    }
    // Advance the acknowledgement over every contiguous stored sequence number.
    {
        let mut stmt = tx
            .prepare_cached("SELECT seq FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq")?;
        let mut rows = stmt.query(params![run_id, acked])?;
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            if seq != acked + 1 {
                break;
            }
            acked = seq;
        }
    }
    exec(
        &tx,
        "UPDATE runs SET acked_seq = ?2, last_seen_ms = ?3 WHERE id = ?1",
        params![run_id, acked, now],
    )?;
    // The verdict waits until the agent's final event and every event before it are stored.
    let final_seq: Option<i64> = row(
        &tx,
        "SELECT final_seq FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )?;
    if final_seq.is_some_and(|f| f <= acked) {
        ended.extend(finish_linux(&tx, run_id)?);
    }
    tx.commit()?;
    Ok((Ingested::Acked(acked as u64), ended))
}

/// Computes the Linux stage's verdict from what is stored, records the findings, and
/// concludes the run.
fn finish_linux(tx: &Connection, run_id: i64) -> Result<Ended, StoreError> {
    let stored = verdict::read(tx, run_id)?;
    let computed = verdict::compute(&stored);
    let findings =
        serde_json::to_string(&computed.findings).map_err(|source| StoreError::Corrupt {
            what: "findings",
            source,
        })?;
    let expect = computed
        .expect
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|source| StoreError::Corrupt {
            what: "outcome",
            source,
        })?;
    exec(
        tx,
        "UPDATE runs SET findings = ?2, expect = COALESCE(?3, expect) WHERE id = ?1",
        params![run_id, findings, expect],
    )?;
    let mut ended = Ended::default();
    let detail = computed.findings.first().map(String::as_str);
    if end_stage(tx, run_id, Stage::Linux, computed.verdict, detail)? {
        ended.add(run_id, Stage::Linux);
    }
    conclude(tx, run_id)?;
    Ok(ended)
}

/// memtest86+'s finding for a run, from its console capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored: the stage ended with it.
    Yes,
    /// The run or its memtest stage is no longer the running one: dropped.
    Stale,
}

/// Records memtest86+'s finding, if the run is open and its memtest stage still running: a
/// pass moves the run on to Linux; a fail ends the run.
pub fn memtest_finished(
    conn: &mut Connection,
    run_id: i64,
    finding: &crate::memtest::capture::Finding,
) -> Result<(Applied, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let running: Option<StageState> = tx
        .query_row(
            "SELECT s.state FROM stages s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ?1 AND s.name = ?2 AND r.verdict IS NULL",
            params![run_id, Stage::Memtest],
            |r| r.get(0),
        )
        .optional()?;
    if running != Some(StageState::Running) {
        return Ok((Applied::Stale, Ended::default()));
    }
    let reading = finding
        .reading
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|source| StoreError::Corrupt {
            what: "reading",
            source,
        })?;
    exec(
        &tx,
        "INSERT OR REPLACE INTO memtest_results (run_id, pass, detail, reading, screen, raw, secs, finished_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            run_id,
            finding.pass,
            finding.detail,
            reading,
            finding.screen,
            finding.raw,
            finding.secs as i64,
            now_ms()
        ],
    )?;
    let ended = if finding.pass {
        end_stage(
            &tx,
            run_id,
            Stage::Memtest,
            Verdict::Pass,
            Some(&finding.detail),
        )?;
        // The node now reboots into Linux; until the image asks for its script, the run shows
        // the Linux stage as booting (no progress of its own yet).
        exec(
            &tx,
            "UPDATE runs SET stage = ?2, last_seen_ms = ?3 WHERE id = ?1",
            params![run_id, RunStage::Linux, now_ms()],
        )?;
        let mut ended = Ended::default();
        ended.add(run_id, Stage::Memtest);
        ended
    } else {
        fail_stage(&tx, run_id, Stage::Memtest, &finding.detail)?
    };
    tx.commit()?;
    Ok((Applied::Yes, ended))
}

/// The memtest stage cannot be watched (no console): it fails at once, since a result that
/// cannot be read is never a pass.
pub fn memtest_unwatchable(
    conn: &mut Connection,
    run_id: i64,
    reason: &str,
) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let ended = fail_stage(&tx, run_id, Stage::Memtest, reason)?;
    tx.commit()?;
    Ok(ended)
}

/// Shows a memtest reading as the run's live progress, while its memtest stage runs.
pub fn memtest_progress(
    conn: &Connection,
    run_id: i64,
    progress: &Progress,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(progress).map_err(|source| StoreError::Corrupt {
        what: "progress",
        source,
    })?;
    exec(
        conn,
        "UPDATE runs SET progress = ?2 WHERE id = ?1 AND stage = ?3 AND verdict IS NULL
           AND EXISTS (SELECT 1 FROM stages WHERE run_id = ?1 AND name = ?4 AND state = ?5)",
        params![
            run_id,
            json,
            RunStage::Memtest,
            Stage::Memtest,
            StageState::Running
        ],
    )?;
    Ok(())
}

/// Appends a note to a stage's detail (a power driver failure after the verdict).
pub fn note_stage(
    conn: &Connection,
    run_id: i64,
    stage: Stage,
    note: &str,
) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE stages SET detail = COALESCE(detail || '; ', '') || ?3 WHERE run_id = ?1 AND name = ?2",
        params![run_id, stage, note],
    )?;
    Ok(())
}

/// Fails every open Linux stage whose agent has been silent longer than its heartbeat
/// timeout; returns the runs with the stages it ended.
pub fn lost_contact(conn: &mut Connection, now: i64) -> Result<(Vec<i64>, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let lost: Vec<(i64, i64)> = {
        let mut stmt = tx.prepare(
            "SELECT id, heartbeat_secs FROM runs WHERE verdict IS NULL AND stage = ?2 AND last_seen_ms < ?1 - heartbeat_secs * 1000",
        )?;
        stmt.query_map(params![now, RunStage::Linux], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?
    };
    let mut ended = Ended::default();
    for (id, secs) in &lost {
        let reason = with_console(
            &tx,
            *id,
            format!("lost contact: no word from the agent for over {secs}s"),
        )?;
        ended.extend(close_run(&tx, *id, Verdict::Fail, &reason)?);
    }
    tx.commit()?;
    Ok((lost.into_iter().map(|(id, _)| id).collect(), ended))
}

/// The node's kernel panicked (its console says so): the run, if still open in its Linux
/// stage, fails now with what the console shows — the panic and what led to it. The tail is
/// stored with it.
pub fn kernel_panicked(
    conn: &mut Connection,
    run_id: i64,
    tail: &[u8],
) -> Result<Ended, StoreError> {
    let tx = conn.savepoint()?;
    let open: Option<RunStage> = row(
        &tx,
        "SELECT stage FROM runs WHERE id = ?1 AND verdict IS NULL",
        [run_id],
        |r| r.get(0),
    )
    .optional()?;
    if open != Some(RunStage::Linux) {
        return Ok(Ended::default());
    }
    exec(
        &tx,
        "UPDATE runs SET console_tail = ?2 WHERE id = ?1",
        params![run_id, tail],
    )?;
    let shown = crate::console::explain(tail).unwrap_or_else(|| "nothing more".to_owned());
    let ended = close_run(
        &tx,
        run_id,
        Verdict::Fail,
        &format!("the node's kernel panicked; {shown}"),
    )?;
    tx.commit()?;
    Ok(ended)
}

/// `reason`, with what the run's console tail shows when it shows a cause (a panic, a fatal
/// machine check, a hung task, the OOM killer).
fn with_console(tx: &Connection, run_id: i64, reason: String) -> Result<String, StoreError> {
    let tail: Option<Vec<u8>> = row(
        tx,
        "SELECT console_tail FROM runs WHERE id = ?1",
        [run_id],
        |r| r.get(0),
    )
    .optional()?
    .flatten();
    Ok(match tail.as_deref().and_then(crate::console::explain) {
        Some(shown) => format!("{reason}; {shown}"),
        None => reason,
    })
}

/// Stores the last of `run_id`'s console (bounded by the caller), while the run is open.
pub fn console_tail(conn: &mut Connection, run_id: i64, tail: &[u8]) -> Result<(), StoreError> {
    exec(
        conn,
        "UPDATE runs SET console_tail = ?2 WHERE id = ?1 AND verdict IS NULL",
        params![run_id, tail],
    )?;
    Ok(())
}

/// The collector (re)started: open runs get a fresh heartbeat window (the collector's own
/// downtime is not the agents' silence), and memtest stages that were running fail — their
/// consoles were not captured throughout, so their result cannot be trusted.
pub fn collector_started(conn: &mut Connection) -> Result<(usize, Vec<i64>), StoreError> {
    let tx = conn.savepoint()?;
    let reopened = exec(
        &tx,
        "UPDATE runs SET last_seen_ms = ?1 WHERE verdict IS NULL",
        [now_ms()],
    )?;
    let running: Vec<i64> = {
        let mut stmt = tx.prepare(
            "SELECT s.run_id FROM stages s JOIN runs r ON r.id = s.run_id WHERE r.verdict IS NULL AND s.name = ?1 AND s.state = ?2",
        )?;
        stmt.query_map(params![Stage::Memtest, StageState::Running], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for run_id in &running {
        let _ = fail_stage(
            &tx,
            *run_id,
            Stage::Memtest,
            "the collector restarted while memtest86+ ran: its console was not read throughout",
        )?;
    }
    tx.commit()?;
    Ok((reopened, running))
}

/// An operator sets the mode of the selected nodes. A node's open run ends as incomplete (the
/// operator interrupted it); setting `verify` arms the nodes for a new run at their next boot.
/// Returns how many nodes, and the stages it ended.
pub fn set_mode(
    conn: &mut Connection,
    selector: &Selector,
    mode: Mode,
) -> Result<(usize, Ended), StoreError> {
    let tx = conn.savepoint()?;
    let (clause, value) = select_sql(selector);
    let nodes: Vec<i64> = {
        let mut stmt = tx.prepare(&format!("SELECT id FROM nodes WHERE {clause}"))?;
        stmt.query_map(params![value], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let mut ended = Ended::default();
    let now = now_ms();
    for node_id in &nodes {
        let open: Vec<i64> = {
            let mut stmt =
                tx.prepare_cached("SELECT id FROM runs WHERE node_id = ?1 AND verdict IS NULL")?;
            stmt.query_map([node_id], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for run_id in open {
            ended.extend(close_run(
                &tx,
                run_id,
                Verdict::Incomplete,
                &format!("the operator set the node's mode to {mode} before the run finished"),
            )?);
        }
        exec(
            &tx,
            "UPDATE nodes SET mode = ?2, armed_ms = CASE WHEN ?2 = ?4 THEN ?3 ELSE armed_ms END WHERE id = ?1",
            params![node_id, mode, now, Mode::Verify],
        )?;
    }
    tx.commit()?;
    Ok((nodes.len(), ended))
}

/// An operator allows (or revokes) destructive disk steps on the selected nodes; each change is
/// written to the node's history with when and `who`. Returns how many nodes.
pub fn set_destructive(
    conn: &mut Connection,
    selector: &Selector,
    allow: bool,
    who: &str,
) -> Result<usize, StoreError> {
    let tx = conn.savepoint()?;
    let (clause, value) = select_sql(selector);
    let nodes: Vec<i64> = {
        let mut stmt = tx.prepare(&format!("SELECT id FROM nodes WHERE {clause}"))?;
        stmt.query_map(params![value], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    let what = if allow {
        "destructive disk steps allowed"
    } else {
        "destructive disk steps revoked"
    };
    let now = now_ms();
    for node_id in &nodes {
        exec(
            &tx,
            "UPDATE nodes SET allow_destructive = ?2 WHERE id = ?1",
            params![node_id, allow],
        )?;
        exec(
            &tx,
            "INSERT INTO node_history (node_id, at_ms, what, who) VALUES (?1, ?2, ?3, ?4)",
            params![node_id, now, what, who],
        )?;
    }
    tx.commit()?;
    Ok(nodes.len())
}

fn event_kind(body: &EventBody) -> &'static str {
    match body {
        EventBody::RunStarted { .. } => "run_started",
        EventBody::ExpectChecked { .. } => "expect_checked",
        EventBody::StepStarted { .. } => "step_started",
        EventBody::Progress { .. } => "progress",
        EventBody::Log { .. } => "log",
        EventBody::LogsDropped { .. } => "logs_dropped",
        EventBody::StepFinished { .. } => "step_finished",
        EventBody::RunFinished { .. } => "run_finished",
    }
}

fn event_step(body: &EventBody) -> Option<u32> {
    match body {
        EventBody::StepStarted { step, .. } | EventBody::Progress { step, .. } => Some(*step),
        EventBody::Log { step, .. } => *step,
        EventBody::StepFinished { report } => Some(report.step),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memtest::capture::Finding;
    use crate::store::test_connection;

    const MEMTEST_SUITE: &str = "suite: m\ndescription: d\nmemtest: {passes: 1}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";

    fn identity(mac: Option<&str>, serial: Option<&str>) -> NodeIdentity {
        NodeIdentity {
            macs: mac.map(str::to_owned).into_iter().collect(),
            uuid: None,
            serial: serial.map(str::to_owned),
        }
    }

    fn request(identity: NodeIdentity) -> BootRequest {
        BootRequest {
            identity,
            unknown_mode: Mode::Verify,
            default_suite: "m".into(),
            suite: Some(SuiteFile {
                name: "m".into(),
                text: Ok(MEMTEST_SUITE.into()),
            }),
            bootstrap_hash: "h1".into(),
            heartbeat_secs: 60,
            image_digest: None,
            max_unknown_nodes: 100,
        }
    }

    /// A suite without memtest: the first boot hands out Linux.
    fn linux_only() -> SuiteFile {
        SuiteFile {
            name: "m".into(),
            text: Ok(
                "suite: m\ndescription: d\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n"
                    .into(),
            ),
        }
    }

    fn script(conn: &mut Connection, req: &BootRequest) -> (Script, Ended) {
        match boot(conn, req).unwrap() {
            (BootDecision::Script { script, .. }, ended) => (script, ended),
            (other, _) => panic!("{other:?}"),
        }
    }

    /// Boots the node into a new run's memtest stage; returns the run.
    fn start_memtest(conn: &mut Connection, req: &BootRequest) -> i64 {
        match script(conn, req).0 {
            Script::Memtest { run_id, .. } => run_id,
            other => panic!("expected memtest, got {other:?}"),
        }
    }

    fn finding(pass: bool) -> Finding {
        Finding {
            pass,
            detail: if pass { "1 pass, 0 errors" } else { "errors" }.into(),
            reading: None,
            screen: String::new(),
            raw: Vec::new(),
            secs: 1,
        }
    }

    fn run_state(conn: &Connection, run_id: i64) -> (RunStage, Option<Verdict>, Option<String>) {
        row(
            conn,
            "SELECT stage, verdict, progress FROM runs WHERE id = ?1",
            [run_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<SqlVerdict>>(1)?.map(|v| v.0),
                    r.get(2)?,
                ))
            },
        )
        .unwrap()
    }

    #[test]
    fn a_kernel_panic_on_the_console_fails_the_run_at_once_and_only_once() {
        let mce = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/console/qemu-7.2-fatal-mce.log"),
        )
        .unwrap();
        let mut conn = test_connection();
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = Some(linux_only());
        let (Script::Linux { run_id }, _) = script(&mut conn, &req) else {
            panic!("expected linux")
        };
        let ended = kernel_panicked(&mut conn, run_id, &mce).unwrap();
        assert_eq!(ended.0, vec![(run_id, Stage::Linux)]);
        let (_, verdict, _) = run_state(&conn, run_id);
        assert_eq!(verdict, Some(Verdict::Fail));
        let (reason, tail): (String, Vec<u8>) = conn
            .query_row(
                "SELECT verdict_reason, console_tail FROM runs WHERE id = ?1",
                [run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(
            reason,
            "the node's kernel panicked; the console shows machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery); kernel panic: Fatal local machine check"
        );
        assert_eq!(tail, mce);
        // A closed run is not closed again, nor its reason rewritten.
        assert!(
            kernel_panicked(&mut conn, run_id, b"Kernel panic - not syncing: other")
                .unwrap()
                .0
                .is_empty()
        );
        let again: String = conn
            .query_row(
                "SELECT verdict_reason FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(again, reason);
    }

    #[test]
    fn lost_contact_and_an_unexpected_reboot_say_what_the_console_showed() {
        let mce = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/console/qemu-7.2-fatal-mce.log"),
        )
        .unwrap();
        let mut conn = test_connection();
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = Some(linux_only());
        let (Script::Linux { run_id }, _) = script(&mut conn, &req) else {
            panic!("expected linux")
        };
        console_tail(&mut conn, run_id, &mce).unwrap();
        let (lost, _) = lost_contact(&mut conn, now_ms() + 3_600_000).unwrap();
        assert_eq!(lost, vec![run_id]);
        let (_, verdict, _) = run_state(&conn, run_id);
        assert_eq!(verdict, Some(Verdict::Fail));
        let reason: String = conn
            .query_row(
                "SELECT verdict_reason FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            reason,
            "lost contact: no word from the agent for over 60s; the console shows machine check on CPU 0, bank 9, status 0xbd000000000000c0, address 0x2000000 (Uncorrected error without MCA Recovery); kernel panic: Fatal local machine check"
        );
        // A closed run's tail is not written over.
        console_tail(&mut conn, run_id, b"later").unwrap();
        let kept: Vec<u8> = conn
            .query_row(
                "SELECT console_tail FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kept, mce);

        // The node's next run dies mid-stage and the node reboots.
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = Some(linux_only());
        req.bootstrap_hash = "h2".into();
        let _ = set_mode(&mut conn, &Selector::All(true), Mode::Verify).unwrap();
        let (Script::Linux { run_id: second }, _) = script(&mut conn, &req) else {
            panic!("expected a second linux run")
        };
        console_tail(
            &mut conn,
            second,
            b"[ 5.0] Kernel panic - not syncing: VFS: Unable to mount root fs\r\n",
        )
        .unwrap();
        let _ = script(&mut conn, &req);
        let reason: String = conn
            .query_row(
                "SELECT detail FROM stages WHERE run_id = ?1 AND name = 'linux'",
                [second],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            reason.starts_with("unexpected reboot")
                && reason.ends_with("the console shows kernel panic: VFS: Unable to mount root fs"),
            "{reason}"
        );
    }

    #[test]
    fn a_boot_asks_for_the_suite_file_before_it_changes_anything() {
        let mut conn = test_connection();
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = None;
        let (decision, _) = boot(&mut conn, &req).unwrap();
        assert_eq!(decision, BootDecision::NeedSuite("m".into()));
        let runs: i64 = conn
            .query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(runs, 0);
    }

    #[test]
    fn a_bootstrap_token_used_twice_fails_the_run() {
        let mut conn = test_connection();
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = Some(linux_only());
        let (Script::Linux { run_id }, _) = script(&mut conn, &req) else {
            panic!("expected linux")
        };
        assert_eq!(
            exchange(&mut conn, run_id, "h1", "s1").unwrap().0,
            Exchange::Issued
        );
        assert_eq!(
            exchange(&mut conn, run_id, "h1", "s2").unwrap().0,
            Exchange::Reused
        );
        assert_eq!(
            access(&conn, run_id, "s1").unwrap(),
            RunAccess::Closed(Verdict::Fail)
        );
        assert_eq!(access(&conn, run_id, "s2").unwrap(), RunAccess::Denied);
        let reason: String = conn
            .query_row(
                "SELECT verdict_reason FROM runs WHERE id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            reason.contains("bootstrap token was used twice"),
            "{reason}"
        );
    }

    #[test]
    fn a_stale_capture_finding_is_dropped_and_ends_nothing() {
        let mut conn = test_connection();
        let req = request(identity(Some("52:54:00:00:00:01"), None));
        let run_id = start_memtest(&mut conn, &req);
        // The node reboots in the middle of memtest86+: the stage fails and its capture stops.
        let (done, ended) = script(&mut conn, &req);
        assert_eq!(
            done,
            Script::Done {
                run_id,
                verdict: Some(Verdict::Fail)
            }
        );
        assert!(ended.0.contains(&(run_id, Stage::Memtest)));
        // The old capture's late "pass" changes nothing and may not reset the node.
        let (applied, ended) = memtest_finished(&mut conn, run_id, &finding(true)).unwrap();
        assert_eq!(applied, Applied::Stale);
        assert!(ended.0.is_empty());
        assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Fail));
        let stored: i64 = conn
            .query_row("SELECT count(*) FROM memtest_results", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 0);
    }

    #[test]
    fn progress_belongs_to_its_stage() {
        let mut conn = test_connection();
        let req = request(identity(Some("52:54:00:00:00:01"), None));
        let run_id = start_memtest(&mut conn, &req);
        let reading = Progress {
            step: 0,
            name: "memtest86+".into(),
            fraction: 0.99,
            status: Some("pass 1 test #9".into()),
        };
        memtest_progress(&conn, run_id, &reading).unwrap();
        assert!(run_state(&conn, run_id).2.unwrap().contains("test #9"));
        let (applied, _) = memtest_finished(&mut conn, run_id, &finding(true)).unwrap();
        assert_eq!(applied, Applied::Yes);
        // Linux is booting: memtest's reading is gone, and a late one is not written.
        assert_eq!(run_state(&conn, run_id), (RunStage::Linux, None, None));
        memtest_progress(&conn, run_id, &reading).unwrap();
        assert_eq!(run_state(&conn, run_id).2, None);
        // The node reboots into Linux and gets the image with this boot's token.
        assert_eq!(script(&mut conn, &req).0, Script::Linux { run_id });
    }

    #[test]
    fn a_node_known_only_by_its_serial_keeps_its_mode() {
        let mut conn = test_connection();
        let req = request(identity(None, Some("SN-9")));
        let (decision, _) = boot(&mut conn, &req).unwrap();
        let BootDecision::Script { node_id, .. } = decision else {
            panic!()
        };
        let (_, ended) = set_mode(&mut conn, &Selector::Node(node_id), Mode::Hold).unwrap();
        // The open run ended with the operator's reason.
        assert!(ended.0.contains(&(1, Stage::Memtest)), "{ended:?}");
        let reason: String = conn
            .query_row("SELECT verdict_reason FROM runs WHERE id = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(
            reason,
            "the operator set the node's mode to hold before the run finished"
        );
        let (decision, _) = boot(&mut conn, &req).unwrap();
        assert_eq!(
            decision,
            BootDecision::Script {
                node_id,
                serial: Some("SN-9".into()),
                script: Script::Hold("mode hold".into())
            }
        );
        let nodes: i64 = conn
            .query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(nodes, 1);
    }

    #[test]
    fn an_operator_re_arm_ends_the_open_run_as_incomplete() {
        let mut conn = test_connection();
        let req = request(identity(Some("52:54:00:00:00:01"), None));
        let run_id = start_memtest(&mut conn, &req);
        let (n, ended) = set_mode(&mut conn, &Selector::All(true), Mode::Verify).unwrap();
        assert_eq!(n, 1);
        assert!(ended.0.contains(&(run_id, Stage::Memtest)));
        assert_eq!(run_state(&conn, run_id).1, Some(Verdict::Incomplete));
        // `all: false` selects nothing.
        let (n, _) = set_mode(&mut conn, &Selector::All(false), Mode::Hold).unwrap();
        assert_eq!(n, 0);
        // The next boot starts a new run.
        let next = start_memtest(&mut conn, &req);
        assert_ne!(next, run_id);
    }

    #[test]
    fn the_linux_stage_is_handed_out_once_per_boot() {
        let mut conn = test_connection();
        let mut req = request(identity(Some("52:54:00:00:00:01"), None));
        req.suite = Some(linux_only());
        let (Script::Linux { run_id }, _) = script(&mut conn, &req) else {
            panic!("expected linux")
        };
        // The bootstrap token is no session token, and is good for one exchange.
        assert_eq!(access(&conn, run_id, "h1").unwrap(), RunAccess::Denied);
        assert_eq!(
            exchange(&mut conn, run_id, "h2", "s1").unwrap().0,
            Exchange::Denied
        );
        assert_eq!(
            exchange(&mut conn, run_id, "h1", "s1").unwrap().0,
            Exchange::Issued
        );
        assert_eq!(access(&conn, run_id, "s1").unwrap(), RunAccess::Open);
        req.bootstrap_hash = "h2".into();
        let (again, _) = script(&mut conn, &req);
        assert_eq!(
            again,
            Script::Done {
                run_id,
                verdict: Some(Verdict::Fail)
            }
        );
        assert_eq!(access(&conn, run_id, "h2").unwrap(), RunAccess::Denied);
        assert_eq!(
            access(&conn, run_id, "s1").unwrap(),
            RunAccess::Closed(Verdict::Fail)
        );
    }
}

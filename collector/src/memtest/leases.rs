//! Console leases: which collector reads each node's serial console. A collector reads a
//! console — memtest86+'s capture, then the console tail through Linux — only under the lease
//! `console:NODE` ([`crate::store::leases`]), taken when it hands the node its stage and
//! renewed by its heartbeat; a memtest86+ verdict is stored only while that lease is still
//! its reader's, under the epoch it was read under. Every lease round each collector stops
//! what it reads under a lease it lost, and the live collectors share out the consoles whose
//! reader died: a memtest stage taken over was not read throughout, so it fails and its node
//! is re-armed once through its power driver (a restart of the stage, never a false pass); a
//! Linux stage's console tail is simply followed on by the new reader.

use std::collections::BTreeMap;

use crate::lifecycle;
use crate::store::leases::{self, Acquired};
use crate::store::{StoreError, queries};

/// What the stage needs from the collector (not its HTTP layer): the database, the
/// configuration (each node's console and power driver) and the capture registry.
#[derive(Clone)]
pub struct Deps {
    /// The database.
    pub db: crate::store::Db,
    /// The configuration.
    pub config: std::sync::Arc<crate::config::Config>,
    /// Running console captures.
    pub captures: std::sync::Arc<crate::lifecycle::captures::Captures>,
    /// This collector's id among those sharing the database: the owner of its leases.
    pub me: String,
}

/// The lease on `node_id`'s console.
pub fn resource(node_id: i64) -> String {
    format!("console:{node_id}")
}

/// Takes (or keeps) the lease on `node_id`'s console for collector `me`; its epoch, or why
/// another collector holds it.
pub async fn take(deps: &Deps, node_id: i64) -> Result<i64, String> {
    let me = deps.me.clone();
    let acquired = deps
        .db
        .call(move |c| {
            let now = leases::clock(c)?;
            Ok(leases::acquire(c, &resource(node_id), &me, now)?)
        })
        .await
        .map_err(|e| format!("cannot take the lease on node {node_id}'s console: {e}"))?;
    match acquired {
        Acquired::New(epoch) | Acquired::Held(epoch) => Ok(epoch),
        Acquired::Taken { owner, expires_ms } => Err(format!(
            "node {node_id}'s console is read by collector {owner} (its lease runs until {expires_ms} ms): two collectors never read one console"
        )),
    }
}

/// Gives up the lease `run_id` was read under, if this collector still holds it.
pub async fn give_up(deps: &Deps, run_id: i64) {
    let Some((node_id, epoch)) = deps.captures.unlease(run_id) else {
        return;
    };
    // The node's next run may read its console under the same lease already (this collector
    // handed it the next stage): the lease stays while any run of ours is read under it.
    if deps
        .captures
        .leased()
        .iter()
        .any(|(_, node, e)| *node == node_id && *e == epoch)
    {
        return;
    }
    let me = deps.me.clone();
    let released = deps
        .db
        .call(move |c| {
            let now = leases::clock(c)?;
            Ok(leases::release(c, &resource(node_id), &me, epoch, now)?)
        })
        .await;
    if let Err(err) = released {
        tracing::warn!(run_id, node_id, error = %err, "a console lease was not given up; it expires by itself");
    }
}

/// Whether collector `me` still holds `node_id`'s console under `epoch`: asked inside the
/// transaction that stores what was read under it.
pub fn still_holds(
    c: &crate::store::Connection<'_>,
    me: &str,
    node_id: i64,
    epoch: i64,
) -> Result<bool, StoreError> {
    let now = leases::clock(c)?;
    Ok(leases::holds(c, &resource(node_id), me, epoch, now)?)
}

/// An open run whose console should be read, and whose reader may be gone.
struct Watched {
    run_id: i64,
    node_id: i64,
    memtest: bool,
}

/// What the database says this round: the live collectors, each unexpired lease's owner,
/// the leases this collector holds, and the runs whose stage has run past the grace.
struct Round {
    live: Vec<String>,
    owners: BTreeMap<String, String>,
    mine: Vec<(String, i64)>,
    watched: Vec<Watched>,
}

fn read_round(c: &crate::store::Connection<'_>, me: &str) -> Result<Round, StoreError> {
    use crate::lifecycle::{Stage, StageState};
    let now = leases::clock(c)?;
    let live = leases::live(c, now)?;
    let mut owners = BTreeMap::new();
    let mut mine = Vec::new();
    for (resource, owner, epoch, expires) in leases::held(c)? {
        if expires < now {
            continue;
        }
        if owner == me {
            mine.push((resource.clone(), epoch));
        }
        owners.insert(resource, owner);
    }
    let watched = c.query_map(
        "SELECT r.id, r.node_id, s.name FROM stages s JOIN runs r ON r.id = s.run_id
          WHERE r.verdict IS NULL AND s.state = ?1 AND s.started_ms < ?2",
        crate::store::sql::params![StageState::Running, now - leases::UNLEASED_GRACE_MS],
        |r| {
            Ok(Watched {
                run_id: r.get(0)?,
                node_id: r.get(1)?,
                memtest: r.get::<Stage>(2)? == Stage::Memtest,
            })
        },
    )?;
    Ok(Round {
        live,
        owners,
        mine,
        watched,
    })
}

/// What a lease round leaves its caller to do.
#[derive(Debug, Default)]
pub struct Taken {
    /// Nodes re-armed after their memtest stage lost its reader: their power driver must
    /// reset them.
    pub rearmed: Vec<i64>,
    /// Consoles (node, run) whose tail this collector now follows under a lease it took.
    pub tails: Vec<(i64, i64)>,
}

/// One lease round of collector `deps.me`: what it reads under a lease it lost stops; the
/// consoles whose reader is gone are shared out over the live collectors, and this one takes
/// over its share.
pub async fn round(deps: &Deps) -> Result<Taken, StoreError> {
    // What this collector reads before the database is asked: a lease taken since is not in
    // what the read returns, and must not count as lost.
    let reading = deps.captures.leased();
    let me = deps.me.clone();
    let state = deps.db.read(move |c| read_round(c, &me)).await?;
    for (run_id, node_id, epoch) in reading {
        if !state.mine.contains(&(resource(node_id), epoch)) {
            tracing::warn!(
                run_id,
                node_id,
                epoch,
                "the lease on this node's console was lost: this collector stops reading it"
            );
            deps.captures.drop_run(run_id);
            deps.captures.unlease(run_id);
        }
    }
    // The consoles someone should read and nobody live does.
    let mut orphans = Vec::new();
    for w in state.watched {
        let res = resource(w.node_id);
        let read = state
            .owners
            .get(&res)
            .is_some_and(|o| state.live.contains(o));
        if !read && has_console(deps, w.node_id).await {
            orphans.push((res, w));
        }
    }
    let wanted: Vec<String> = orphans.iter().map(|(r, _)| r.clone()).collect();
    let (take_now, _) = leases::rebalance(&deps.me, &state.live, &wanted, &state.owners);
    let mut taken = Taken::default();
    for (res, w) in orphans.into_iter().filter(|(r, _)| take_now.contains(r)) {
        let Ok(epoch) = take(deps, w.node_id).await else {
            continue;
        };
        tracing::warn!(run_id = w.run_id, node_id = w.node_id, lease = %res, epoch, "took over a console whose reader is gone");
        if w.memtest {
            if let Some(node) = take_over_memtest(deps, &w, epoch).await? {
                taken.rearmed.push(node);
            }
        } else {
            deps.captures.lease(w.run_id, w.node_id, epoch);
            taken.tails.push((w.node_id, w.run_id));
        }
    }
    Ok(taken)
}

/// Fails the memtest stage of `w`, whose reader died, and re-arms its node once, while the
/// lease taken for it (`epoch`) is still this collector's; then gives the lease up.
async fn take_over_memtest(
    deps: &Deps,
    w: &Watched,
    epoch: i64,
) -> Result<Option<i64>, StoreError> {
    let (me, run_id, node_id) = (deps.me.clone(), w.run_id, w.node_id);
    let (rearmed, ended) = deps
        .db
        .call(move |c| {
            if !still_holds(c, &me, node_id, epoch)? {
                return Ok((None, lifecycle::Ended::default()));
            }
            let cause = "the collector reading its console stopped renewing its lease";
            let rearmed = lifecycle::reader_lost(c, run_id, cause)?;
            let now = leases::clock(c)?;
            leases::release(c, &resource(node_id), &me, epoch, now)?;
            Ok((
                rearmed,
                lifecycle::Ended(vec![(run_id, lifecycle::Stage::Memtest)]),
            ))
        })
        .await?;
    deps.captures.stop(&ended);
    Ok(rearmed)
}

/// Whether `node_id` has a serial console in this collector's configuration.
async fn has_console(deps: &Deps, node_id: i64) -> bool {
    match deps
        .db
        .read(move |c| queries::node_access_keys(c, node_id))
        .await
    {
        Ok(keys) => deps
            .config
            .access_for(&keys.0, keys.1.as_deref())
            .is_some_and(|a| a.console.is_some()),
        Err(_) => false,
    }
}

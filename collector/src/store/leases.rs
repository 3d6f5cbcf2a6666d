//! Leases: work that belongs to one collector at a time — a node's console capture, its power
//! actions — held in the database by one owner until an expiry its heartbeat keeps moving.
//! Every change of owner bumps the lease's epoch, a fencing token: a finding is applied only
//! while the lease it was made under is still its maker's ([`holds`]), so a collector that
//! lost a lease (paused, partitioned, presumed dead) can never write under it. Each epoch is
//! kept in `lease_history`, so a test (or an operator) can check that no resource ever had
//! two owners at once.
//!
//! Engine-neutral ([`super::sql`]): the same statements on SQLite (one collector, which holds
//! everything) and PostgreSQL (several, sharing the work). Acquiring is one upsert whose
//! condition the engine evaluates under the row's lock, so two collectors racing for a lease
//! get one winner. Times are the database's clock ([`clock`]), never each collector's own.

use super::sql::{Connection, EngineKind, SqlError, params};

/// How long a lease outlives its owner's last renewal: a dead collector's work is taken over
/// within this and one [`ROUND`].
pub const TTL_MS: i64 = 25_000;

/// How long a stage runs before a console nobody leased counts as orphaned: the collector
/// that handed the node its stage takes the lease within moments of doing so, and until
/// then neither another collector's lease round nor a collector starting up may call it lost.
pub const UNLEASED_GRACE_MS: i64 = 10_000;

/// How often a collector renews its leases, heartbeats and rebalances.
pub const ROUND: std::time::Duration = std::time::Duration::from_secs(2);

/// The tables, in the subset of SQL both engines speak.
pub const SCHEMA: &str = "
    CREATE TABLE collectors (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        started_ms BIGINT NOT NULL,
        heartbeat_ms BIGINT NOT NULL
    );
    CREATE TABLE leases (
        resource TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        acquired_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL
    );
    CREATE INDEX leases_owner ON leases(owner);
    CREATE TABLE lease_history (
        resource TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        owner TEXT NOT NULL,
        acquired_ms BIGINT NOT NULL,
        ended_ms BIGINT,
        PRIMARY KEY (resource, epoch)
    );";

/// The database's clock, in ms since the epoch: PostgreSQL's own (collectors' clocks may
/// disagree; the database's is the one all of them share), else this machine's.
pub fn clock(conn: &Connection) -> Result<i64, SqlError> {
    match conn.kind() {
        EngineKind::Sqlite => Ok(super::now_ms()),
        EngineKind::Postgres => conn.query_row(
            "SELECT CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS BIGINT)",
            params![],
            |r| r.get(0),
        ),
    }
}

/// What asking for a lease gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Ours now, under this epoch.
    New(i64),
    /// Ours already, under this epoch (renewed).
    Held(i64),
    /// Another collector's until `expires_ms`.
    Taken {
        /// Its owner.
        owner: String,
        /// Until when.
        expires_ms: i64,
    },
}

/// Records that collector `me` (reachable at `url`) is alive, and renews every lease it still
/// holds. A lease already expired is not renewed: another collector may have taken it.
pub fn heartbeat(conn: &Connection, me: &str, url: &str, now: i64) -> Result<u64, SqlError> {
    let tx = conn.savepoint()?;
    tx.execute(
        "INSERT INTO collectors (id, url, started_ms, heartbeat_ms) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (id) DO UPDATE SET url = excluded.url, heartbeat_ms = excluded.heartbeat_ms",
        params![me, url, now],
    )?;
    let renewed = tx.execute(
        "UPDATE leases SET expires_ms = ?2 WHERE owner = ?1 AND expires_ms >= ?3",
        params![me, now + TTL_MS, now],
    )?;
    tx.commit()?;
    Ok(renewed as u64)
}

/// Asks for `resource` for collector `me`: free or expired, it is ours under a new epoch (the
/// previous owner's epoch ends in the history); ours already, it is renewed.
pub fn acquire(
    conn: &Connection,
    resource: &str,
    me: &str,
    now: i64,
) -> Result<Acquired, SqlError> {
    let tx = conn.savepoint()?;
    let won: Option<i64> = tx.query_opt(
        "INSERT INTO leases (resource, owner, epoch, acquired_ms, expires_ms) VALUES (?1, ?2, 1, ?3, ?4)
         ON CONFLICT (resource) DO UPDATE SET owner = excluded.owner, epoch = leases.epoch + 1,
           acquired_ms = excluded.acquired_ms, expires_ms = excluded.expires_ms
         WHERE leases.expires_ms < ?3
         RETURNING epoch",
        params![resource, me, now, now + TTL_MS],
        |r| r.get(0),
    )?;
    let result = match won {
        Some(epoch) => {
            tx.execute(
                "UPDATE lease_history SET ended_ms = ?3 WHERE resource = ?1 AND epoch < ?2 AND ended_ms IS NULL",
                params![resource, epoch, now],
            )?;
            tx.execute(
                "INSERT INTO lease_history (resource, epoch, owner, acquired_ms) VALUES (?1, ?2, ?3, ?4)",
                params![resource, epoch, me, now],
            )?;
            Acquired::New(epoch)
        }
        None => {
            let (owner, epoch, expires_ms): (String, i64, i64) = tx.query_row(
                "SELECT owner, epoch, expires_ms FROM leases WHERE resource = ?1",
                params![resource],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            if owner == me {
                tx.execute(
                    "UPDATE leases SET expires_ms = ?3 WHERE resource = ?1 AND owner = ?2",
                    params![resource, me, now + TTL_MS],
                )?;
                Acquired::Held(epoch)
            } else {
                Acquired::Taken { owner, expires_ms }
            }
        }
    };
    tx.commit()?;
    Ok(result)
}

/// Gives `resource` up, if `me` holds it under `epoch`; returns whether it did. The row stays,
/// expired, so that the next owner's epoch follows this one's.
pub fn release(
    conn: &Connection,
    resource: &str,
    me: &str,
    epoch: i64,
    now: i64,
) -> Result<bool, SqlError> {
    let tx = conn.savepoint()?;
    let gone = tx.execute(
        "UPDATE leases SET expires_ms = 0 WHERE resource = ?1 AND owner = ?2 AND epoch = ?3 AND expires_ms > 0",
        params![resource, me, epoch],
    )? > 0;
    if gone {
        tx.execute(
            "UPDATE lease_history SET ended_ms = ?3 WHERE resource = ?1 AND epoch = ?2 AND ended_ms IS NULL",
            params![resource, epoch, now],
        )?;
    }
    tx.commit()?;
    Ok(gone)
}

/// Whether `me` still holds `resource` under `epoch`, unexpired: asked inside the transaction
/// that applies what was done under the lease, so a lost lease writes nothing. On PostgreSQL
/// the lease's row stays locked until that transaction ends: a takeover (which updates the
/// row) waits for it, or it for the takeover and then finds the lease gone — never both
/// writing at once.
pub fn holds(
    conn: &Connection,
    resource: &str,
    me: &str,
    epoch: i64,
    now: i64,
) -> Result<bool, SqlError> {
    Ok(conn
        .query_opt(
            &format!(
                "SELECT 1 FROM leases WHERE resource = ?1 AND owner = ?2 AND epoch = ?3 AND expires_ms >= ?4{}",
                conn.for_update()
            ),
            params![resource, me, epoch, now],
            |_| Ok(()),
        )?
        .is_some())
}

/// Every collector the database knows, newest heartbeat first, with its leases.
pub fn collectors(
    conn: &Connection,
    now: i64,
) -> Result<Vec<kiln_protocol::api::CollectorState>, SqlError> {
    let leases = held(conn)?;
    conn.query_map(
        "SELECT id, url, started_ms, heartbeat_ms FROM collectors ORDER BY heartbeat_ms DESC, id",
        params![],
        |r| {
            let id: String = r.get(0)?;
            let heartbeat_ms: i64 = r.get(3)?;
            Ok(kiln_protocol::api::CollectorState {
                leases: leases
                    .iter()
                    .filter(|(_, owner, _, _)| *owner == id)
                    .map(|(resource, _, epoch, expires)| (resource.clone(), *epoch, *expires))
                    .collect(),
                url: r.get(1)?,
                started_ms: r.get(2)?,
                live: heartbeat_ms >= now - TTL_MS,
                heartbeat_ms,
                id,
            })
        },
    )
}

/// The collectors whose heartbeat is younger than a lease, by id.
pub fn live(conn: &Connection, now: i64) -> Result<Vec<String>, SqlError> {
    conn.query_map(
        "SELECT id FROM collectors WHERE heartbeat_ms >= ?1 ORDER BY id",
        params![now - TTL_MS],
        |r| r.get(0),
    )
}

/// The leases as they stand, released ones left out: resource, owner, epoch, expiry.
pub fn held(conn: &Connection) -> Result<Vec<(String, String, i64, i64)>, SqlError> {
    conn.query_map(
        "SELECT resource, owner, epoch, expires_ms FROM leases WHERE expires_ms > 0 ORDER BY resource",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
}

/// What collector `me` should do this round so that the `wanted` resources are spread over
/// the `live` collectors: take free ones (or ones whose owner is gone) up to its share, and
/// give up what it holds past its share while another live collector has room. `owners`
/// holds each leased resource's unexpired owner. Returns (to take, to give up), each sorted.
pub fn rebalance(
    me: &str,
    live: &[String],
    wanted: &[String],
    owners: &std::collections::BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let collectors = live.len().max(1);
    // Shares differ by one at most; the lowest ids take the larger ones, so every collector
    // computes the same split.
    let mut ids: Vec<&String> = live.iter().collect();
    ids.sort();
    let base = wanted.len() / collectors;
    let extra = wanted.len() % collectors;
    let share =
        |id: &str| base + usize::from(ids.iter().position(|i| *i == id).is_some_and(|p| p < extra));
    let mine: Vec<&String> = wanted
        .iter()
        .filter(|r| owners.get(*r).is_some_and(|o| o == me))
        .collect();
    let my_share = if live.iter().any(|l| l == me) {
        share(me)
    } else {
        // Not counted live yet (its first heartbeat): take nothing, give nothing up.
        return (Vec::new(), Vec::new());
    };
    let free: Vec<&String> = wanted
        .iter()
        .filter(|r| owners.get(*r).is_none_or(|o| !live.contains(o)))
        .collect();
    let take: Vec<String> = free
        .iter()
        .take(my_share.saturating_sub(mine.len()))
        .map(|r| (*r).clone())
        .collect();
    let someone_has_room = ids.iter().any(|id| {
        id.as_str() != me
            && wanted
                .iter()
                .filter(|r| owners.get(*r) == Some(*id))
                .count()
                < share(id)
    });
    let give: Vec<String> = if someone_has_room && mine.len() > my_share {
        let mut give: Vec<String> = mine[my_share..].iter().map(|r| (*r).clone()).collect();
        give.sort();
        give
    } else {
        Vec::new()
    };
    (take, give)
}

#[cfg(test)]
mod tests;

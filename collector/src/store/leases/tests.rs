//! Leases on both engines: one owner at a time, epochs that fence a lost owner out, a race
//! with one winner per lease; and the share each collector takes, over random deaths and
//! joins.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::lab::postgres::{Cluster, USER};

/// SQLite in memory and a throwaway PostgreSQL database, each with the lease tables.
fn engines(dir: &std::path::Path) -> (Cluster, Vec<Connection<'static>>) {
    let cluster = Cluster::start(dir).unwrap();
    let sqlite = Connection::sqlite(rusqlite::Connection::open_in_memory().unwrap());
    let pg = Connection::postgres(&cluster.url(USER)).unwrap();
    pg.execute_batch("DROP TABLE IF EXISTS collectors, leases, lease_history")
        .unwrap();
    for c in [&sqlite, &pg] {
        c.execute_batch(SCHEMA).unwrap();
    }
    (cluster, vec![sqlite, pg])
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("kiln-leases-{name}-{}", std::process::id()))
}

#[test]
fn a_lease_has_one_owner_and_a_lost_one_is_fenced_out() {
    let dir = scratch("owner");
    let (cluster, conns) = engines(&dir);
    for c in &conns {
        let now = 1_000_000;
        assert_eq!(acquire(c, "console:7", "a", now).unwrap(), Acquired::New(1));
        assert_eq!(
            acquire(c, "console:7", "a", now + 10).unwrap(),
            Acquired::Held(1)
        );
        assert_eq!(
            acquire(c, "console:7", "b", now + 20).unwrap(),
            Acquired::Taken {
                owner: "a".into(),
                expires_ms: now + 10 + TTL_MS
            }
        );
        assert!(holds(c, "console:7", "a", 1, now + 20).unwrap());
        // a's heartbeat keeps it; then a goes silent past the lease, and b takes it over.
        assert_eq!(heartbeat(c, "a", "http://a", now + 5_000).unwrap(), 1);
        let later = now + 5_000 + TTL_MS + 1;
        assert!(!holds(c, "console:7", "a", 1, later).unwrap());
        // A late heartbeat renews nothing expired: b may be taking it right now.
        assert_eq!(heartbeat(c, "a", "http://a", later).unwrap(), 0);
        assert_eq!(
            acquire(c, "console:7", "b", later).unwrap(),
            Acquired::New(2)
        );
        // a's finding, made under epoch 1, is fenced out; a cannot release b's lease.
        assert!(!holds(c, "console:7", "a", 1, later).unwrap());
        assert!(!release(c, "console:7", "a", 1, later).unwrap());
        assert!(holds(c, "console:7", "b", 2, later).unwrap());
        let history: Vec<(i64, String, Option<i64>)> = c
            .query_map(
                "SELECT epoch, owner, ended_ms FROM lease_history WHERE resource = ?1 ORDER BY epoch",
                params!["console:7"],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            history,
            [(1, "a".into(), Some(later)), (2, "b".into(), None)],
            "{:?}",
            c.kind()
        );
        assert!(release(c, "console:7", "b", 2, later + 1).unwrap());
        assert!(!release(c, "console:7", "b", 2, later + 1).unwrap());
        assert_eq!(held(c).unwrap(), []);
        // Taken again after a release: the next epoch, a new line in the history.
        assert_eq!(
            acquire(c, "console:7", "a", later + 2).unwrap(),
            Acquired::New(3)
        );
        assert!(release(c, "console:7", "a", 3, later + 3).unwrap());
        assert_eq!(live(c, later).unwrap(), ["a"]);
    }
    drop(conns);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn collectors_racing_for_the_same_leases_get_one_winner_each() {
    let dir = scratch("race");
    let (cluster, conns) = engines(&dir);
    drop(conns);
    let url = cluster.url(USER);
    let resources: Vec<String> = (0..60).map(|n| format!("console:{n}")).collect();
    let now = 5_000_000;
    let won: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|me| {
                let (url, resources) = (&url, &resources);
                s.spawn(move || {
                    let c = Connection::postgres(url).unwrap();
                    resources
                        .iter()
                        .filter(|r| matches!(acquire(&c, r, me, now).unwrap(), Acquired::New(_)))
                        .cloned()
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<&String> = won.iter().flatten().collect();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "a lease won twice: {won:?}");
    assert_eq!(all.len(), resources.len());
    let c = Connection::postgres(&url).unwrap();
    let epochs: i64 = c
        .query_row("SELECT count(*) FROM lease_history", params![], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(epochs, 60);
    drop(c);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Applies one round: each live collector in turn takes and gives up what [`rebalance`] says.
fn round(live: &[String], wanted: &[String], owners: &mut BTreeMap<String, String>) {
    for me in live {
        let (take, give) = rebalance(me, live, wanted, owners);
        for r in give {
            assert_eq!(owners.remove(&r).as_deref(), Some(me.as_str()));
        }
        for r in take {
            let prior = owners.insert(r.clone(), me.clone());
            assert!(
                prior.as_ref().is_none_or(|o| !live.contains(o)),
                "{me} took {r} from live {prior:?}"
            );
        }
    }
}

#[test]
fn a_joining_collector_takes_its_share_and_a_dead_ones_work_is_spread() {
    let wanted: Vec<String> = (0..10).map(|n| format!("console:{n}")).collect();
    let mut owners = BTreeMap::new();
    let one = vec!["a".to_owned()];
    round(&one, &wanted, &mut owners);
    assert_eq!(owners.values().filter(|o| *o == "a").count(), 10);
    let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    round(&three, &wanted, &mut owners);
    round(&three, &wanted, &mut owners);
    let count =
        |owners: &BTreeMap<String, String>, id: &str| owners.values().filter(|o| *o == id).count();
    assert_eq!(
        [
            count(&owners, "a"),
            count(&owners, "b"),
            count(&owners, "c")
        ],
        [4, 3, 3]
    );
    // b dies: its three go to a and c.
    let two: Vec<String> = ["a", "c"].map(String::from).to_vec();
    round(&two, &wanted, &mut owners);
    assert_eq!([count(&owners, "a"), count(&owners, "c")], [5, 5]);
}

proptest! {
    /// Any number of resources and collectors, any deaths and joins between rounds: no lease
    /// is ever taken from a live owner, and two rounds after the last change every resource
    /// has a live owner and the shares differ by one at most.
    #[test]
    fn shares_converge_whatever_dies_or_joins(
        n in 0usize..80,
        changes in proptest::collection::vec(proptest::collection::btree_set(0u8..6, 1..6), 1..6),
    ) {
        let wanted: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        let mut owners = BTreeMap::new();
        for alive in &changes {
            let live: Vec<String> = alive.iter().map(|i| format!("c{i}")).collect();
            round(&live, &wanted, &mut owners);
        }
        let live: Vec<String> = changes.last().unwrap().iter().map(|i| format!("c{i}")).collect();
        round(&live, &wanted, &mut owners);
        round(&live, &wanted, &mut owners);
        prop_assert!(wanted.iter().all(|r| owners.get(r).is_some_and(|o| live.contains(o))), "{owners:?}");
        let counts: Vec<usize> = live.iter().map(|id| owners.values().filter(|o| *o == id).count()).collect();
        let (lo, hi) = (counts.iter().min().copied().unwrap_or(0), counts.iter().max().copied().unwrap_or(0));
        prop_assert!(hi - lo <= 1, "{counts:?}");
    }
}

//! Two collectors sharing one PostgreSQL, as `kiln serve` processes: the one reading a node's
//! memtest86+ console is killed with SIGKILL; the other takes the console's lease over within
//! a lease's life, fails the stage that was not read throughout (never a pass), re-arms the
//! node once, and reads the repeat's console itself. The leases' history shows one reader
//! of the console at a time.

use std::time::{Duration, Instant};

use kiln_collector::lab::postgres::{Cluster, USER};
use kiln_collector::store::Connection;

use crate::common::{ConsoleServer, Ops, free_port, get_text, scratch, spawn_kiln_with};

/// Runs `f` on a connection of the test's own, off the runtime's threads.
fn with_pg<T: Send>(url: &str, f: impl FnOnce(&Connection<'_>) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| f(&Connection::postgres(url).unwrap()))
            .join()
            .unwrap()
    })
}

/// Polls `f` every 200 ms until it gives something, for up to `limit`.
async fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits up to 10 s for a collector's `/metrics` to give `want` as its share of the groups
/// of agents' batches the database writes at once.
async fn ingest_groups(ops: &Ops, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = ops.text("/metrics").await;
        let groups = metrics
            .lines()
            .find_map(|l| l.strip_prefix("kiln_db_ingest_groups "))
            .and_then(|v| v.trim().parse::<i64>().ok());
        if groups == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ingest groups {groups:?}, not {want}, within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_killed_while_it_reads_memtest_is_taken_over_and_the_node_runs_again() {
    let dir = scratch("failover");
    let pg = dir.join("pg");
    let cluster = std::thread::spawn(move || Cluster::start(&pg).unwrap())
        .join()
        .unwrap();
    let url = cluster.url(USER);
    let console = ConsoleServer::start().await;
    let config = dir.join("kiln.yaml");
    std::fs::write(
        &config,
        format!(
            "database: \"{url}\"\ndefault_suite: m\nnodes:\n- mac: \"52:54:00:00:00:01\"\n  console: {{tcp: \"{}\"}}\n",
            console.addr
        ),
    )
    .unwrap();
    let suite = "suite: m\ndescription: d\nmemtest: {passes: 1}\nsteps:\n  - name: tool\n    exec: {argv: [true]}\n";
    let (port_a, port_b) = (free_port(), free_port());
    let mut started = Vec::new();
    for (name, port) in [("a", port_a), ("b", port_b)] {
        let data = dir.join(name);
        std::fs::create_dir_all(data.join("suites")).unwrap();
        std::fs::write(data.join("suites/m.yaml"), suite).unwrap();
        started.push(spawn_kiln_with(&data, port, Some(&config)));
    }
    let mut b = started.pop().unwrap();
    let mut a = started.pop().unwrap();
    let client = reqwest::Client::new();
    let ipxe = |port: u16| {
        let client = client.clone();
        async move {
            get_text(
                &client,
                &format!("http://127.0.0.1:{port}/ipxe?mac=52-54-00-00-00-01"),
            )
            .await
        }
    };
    // The node boots from A, which reads its console under the lease.
    let script = ipxe(port_a).await;
    assert!(script.contains("run 1: memtest86+"), "{script}");
    let owner = |url: &str| {
        with_pg(url, |c| {
            c.query_opt(
                "SELECT owner FROM leases WHERE resource = 'console:1' AND expires_ms > 0",
                [],
                |r| r.get::<String>(0),
            )
            .unwrap()
        })
    };
    let a_id = wait_for("A's lease on the console", Duration::from_secs(10), || {
        owner(&url)
    })
    .await;
    assert!(a_id.ends_with(&format!(":{port_a}")), "{a_id}");
    // Each sees the other live and keeps half of what the database writes well at once.
    ingest_groups(&a.ops, 2).await;
    ingest_groups(&b.ops, 2).await;
    // A dies outright: no shutdown, no release.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    // B sees the lease run out, takes the console over, and fails the stage.
    let detail = wait_for(
        "the memtest stage failed by B",
        Duration::from_secs(60),
        || {
            with_pg(&url, |c| {
                c.query_opt(
                    "SELECT detail FROM stages WHERE run_id = 1 AND name = 'memtest' AND verdict = 'fail'",
                    [],
                    |r| r.get::<String>(0),
                )
                .unwrap()
            })
        },
    )
    .await;
    let took = killed.elapsed();
    assert!(
        detail.starts_with("the collector reading its console stopped renewing its lease")
            && detail.ends_with("the node is re-armed once and runs again"),
        "{detail}"
    );
    // Within a lease's life, a round, and the stage's grace.
    assert!(took < Duration::from_secs(40), "taken over after {took:?}");
    // A's heartbeat is as old as its lease: B, alone now, takes all of it.
    ingest_groups(&b.ops, 4).await;
    let verdict: Option<String> = with_pg(&url, |c| {
        c.query_row("SELECT verdict FROM runs WHERE id = 1", [], |r| r.get(0))
            .unwrap()
    });
    assert_eq!(verdict.as_deref(), Some("fail"));
    // The node's next boot, from B, is the repeat; B reads its console.
    let script = ipxe(port_b).await;
    assert!(script.contains("run 2: memtest86+"), "{script}");
    let repeats: Option<i64> = with_pg(&url, |c| {
        c.query_row("SELECT rearm_of FROM runs WHERE id = 2", [], |r| r.get(0))
            .unwrap()
    });
    assert_eq!(repeats, Some(1));
    let b_id = wait_for("B's lease on the console", Duration::from_secs(10), || {
        owner(&url).filter(|o| *o != a_id)
    })
    .await;
    assert!(b_id.ends_with(&format!(":{port_b}")), "{b_id}");
    // One reader at a time: each epoch began after the one before it ended, A's first.
    let history: Vec<(i64, String, i64, Option<i64>)> = with_pg(&url, |c| {
        c.query_map(
            "SELECT epoch, owner, acquired_ms, ended_ms FROM lease_history WHERE resource = 'console:1' ORDER BY epoch",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    });
    assert_eq!(history[0].1, a_id, "{history:?}");
    assert!(history[1..].iter().all(|h| h.1 == b_id), "{history:?}");
    for pair in history.windows(2) {
        let ended = pair[0].3.expect("an earlier epoch that never ended");
        assert!(pair[1].2 >= ended, "two readers at once: {history:?}");
    }
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

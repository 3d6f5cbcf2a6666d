//! The lab with two collectors on the PostgreSQL it starts, behind one boot address, four
//! nodes under TCG: one collector is killed with SIGKILL while every node runs memtest86+, and
//! in another run while every node's agent runs its steps in Linux. Every node must end with
//! a verdict and pass; a memtest stage whose reader died is failed, re-run once and passes;
//! no acknowledged event is missing; and the leases' history shows that no console ever had
//! two readers at once. On the bridge network, two collectors serve a rack whose nodes share
//! the payload, have their cables checked and pair their NICs, whichever collector each asks.

use kiln_collector::lab::postgres::{Cluster, USER};
use kiln_collector::lab::{Collectors, LabOptions, LabReport, Network, Profile, up};
use kiln_collector::lifecycle::RunStage;
use kiln_collector::store::Connection;
use kiln_tests::{repo, scratch};

fn two_collectors(
    dir: &std::path::Path,
    suite: std::path::PathBuf,
    kill_at: RunStage,
) -> LabOptions {
    let kiln = repo().join("target/debug/kiln");
    assert!(
        kiln.exists(),
        "no {}: `cargo build --bin kiln` (.ci/test does)",
        kiln.display()
    );
    LabOptions {
        collectors: Collectors {
            count: 2,
            kill_at: Some(kill_at),
            kiln: Some(kiln),
        },
        ..kiln_tests::lab_options(dir, 4, suite)
    }
}

/// What the lab's database kept, read from its cluster started again on the same files:
/// (the runs that repeat another and their verdicts, the runs whose events have a hole).
struct Kept {
    repeats: Vec<(i64, i64, Option<String>)>,
    holes: Vec<i64>,
    readers: Vec<(String, i64, String, i64, Option<i64>)>,
}

fn kept(dir: &std::path::Path) -> Kept {
    let mut cluster = Cluster::start(&dir.join("pg")).unwrap();
    let c = Connection::postgres(&cluster.url(USER)).unwrap();
    let kept = Kept {
        repeats: c
            .query_map(
                "SELECT id, rearm_of, verdict FROM runs WHERE rearm_of IS NOT NULL ORDER BY id",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap(),
        // Agents acknowledge a contiguous prefix of their events: a run whose stored
        // sequence numbers skip one lost an acknowledged event.
        holes: c
            .query_map(
                "SELECT run_id FROM events GROUP BY run_id HAVING count(*) <> max(seq)",
                [],
                |r| r.get(0),
            )
            .unwrap(),
        readers: c
            .query_map(
                "SELECT resource, epoch, owner, acquired_ms, ended_ms FROM lease_history
                  WHERE resource LIKE 'console:%' ORDER BY resource, epoch",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap(),
    };
    drop(c);
    cluster.stop().unwrap();
    kept
}

/// Every node passed and was told of the kill; no event is missing; one reader per console
/// at a time, and more than one collector read consoles.
fn every_node_passed_and_nothing_was_read_twice(report: &LabReport, kept: &Kept) {
    for node in &report.nodes {
        assert_eq!(node.verdict, "pass", "{node:?}");
        assert!(
            node.injected
                .iter()
                .any(|i| i.starts_with("collector-kill: killed the collector")),
            "{node:?}"
        );
    }
    assert!(
        kept.holes.is_empty(),
        "runs missing events: {:?}",
        kept.holes
    );
    let owners: std::collections::BTreeSet<&String> = kept.readers.iter().map(|r| &r.2).collect();
    assert!(
        owners.len() >= 2,
        "one collector read every console: {:?}",
        kept.readers
    );
    for pair in kept.readers.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.0 == b.0 {
            let ended =
                a.4.unwrap_or_else(|| panic!("{a:?} never ended before {b:?}"));
            assert!(
                b.3 >= ended,
                "two readers of {} at once: {a:?} and {b:?}",
                a.0
            );
        }
    }
}

#[test]
fn a_collector_killed_during_memtest_costs_its_stages_one_rerun_and_no_verdict() {
    let dir = scratch("lab-kill-memtest");
    let opts = two_collectors(&dir, repo().join("suites/lab.yaml"), RunStage::Memtest);
    let report = up(&opts).unwrap();
    let kept = kept(&dir);
    every_node_passed_and_nothing_was_read_twice(&report, &kept);
    // The nodes whose console the dead collector read ran memtest86+ again, once, and passed.
    assert!(!kept.repeats.is_empty(), "no memtest stage was re-run");
    for (run, of, verdict) in &kept.repeats {
        assert_eq!(
            verdict.as_deref(),
            Some("pass"),
            "run {run}, repeating {of}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_collector_killed_during_the_linux_stage_loses_no_event_and_no_verdict() {
    let dir = scratch("lab-kill-linux");
    std::fs::create_dir_all(&dir).unwrap();
    // The lab's suite without its memtest86+ stage: every node is in Linux at once, its
    // agent streaming to whichever collector the proxy gives it, when one is killed.
    let lab = std::fs::read_to_string(repo().join("suites/lab.yaml")).unwrap();
    let at = lab
        .find("\nmemtest:\n")
        .expect("suites/lab.yaml has a memtest stage");
    let end = lab[at + 1..].find("\n\n").map_or(lab.len(), |e| at + 1 + e);
    let suite = dir.join("lab-linux.yaml");
    std::fs::write(
        &suite,
        format!("{}\nmemtest: {{enabled: false}}{}", &lab[..at], &lab[end..]),
    )
    .unwrap();
    let opts = two_collectors(&dir, suite, RunStage::Linux);
    let report = up(&opts).unwrap();
    let kept = kept(&dir);
    every_node_passed_and_nothing_was_read_twice(&report, &kept);
    // No memtest stage ran, so none lost its reader: nothing was re-armed.
    assert!(kept.repeats.is_empty(), "{:?}", kept.repeats);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Four nodes of a rack on the bridge network, two collectors behind its boot address (the
/// proxy hands each connection to the next): the payload reaches every node, every cable is
/// where the map says, and every node's NIC is measured against another node's — the pairing
/// is the database's, so nodes that asked different collectors are paired all the same.
#[test]
fn two_collectors_on_the_bridge_serve_a_rack_that_pairs_its_nodes() {
    let dir = scratch("lab-bridge-collectors");
    let payload_mib = 64;
    let opts = LabOptions {
        collectors: Collectors {
            kill_at: None,
            ..two_collectors(&dir, repo().join("suites/lab-rack.yaml"), RunStage::Linux).collectors
        },
        mem_mib: 256 + 2 * payload_mib,
        profile: Profile::Basic,
        network: Network::Bridge,
        payload_mib,
        ..kiln_tests::lab_options(&dir, 4, repo().join("suites/lab-rack.yaml"))
    };
    let report = up(&opts).unwrap();
    for node in &report.nodes {
        assert_eq!(node.verdict, "pass", "{node:?}");
        assert!(
            !node.pairs.is_empty() && node.pairs.iter().all(|l| l.ends_with("met")),
            "{node:?}"
        );
    }
    let payload = report.payload.as_ref().expect("the lab served a payload");
    for p in &payload.nodes {
        let got = p.collector_bytes + p.peers.iter().map(|(_, b)| b).sum::<u64>();
        assert_eq!(got, payload.bytes, "{p:?}");
    }
    let kept = kept(&dir);
    assert!(
        kept.holes.is_empty(),
        "runs missing events: {:?}",
        kept.holes
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

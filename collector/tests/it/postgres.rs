//! The throwaway PostgreSQL cluster the lab and the tests start: Debian's server as our own
//! child on a private socket, every commit durable across an immediate (crash) restart, and
//! nothing left running or on disk once it stops.

use kiln_collector::lab::postgres::{Cluster, USER};

use crate::common::scratch;

#[test]
fn a_throwaway_cluster_keeps_commits_across_a_crash_and_leaves_nothing_behind() {
    let dir = scratch("pg-cluster");
    let mut cluster = Cluster::start(&dir).unwrap();
    let pid = cluster.pid().unwrap();
    let url = cluster.url(USER);
    // Only a socket: the URL names its directory, and no TCP port is opened.
    assert!(url.starts_with("postgresql://kiln@%2F"), "{url}");
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    c.batch_execute("CREATE TABLE t (n BIGINT PRIMARY KEY); INSERT INTO t VALUES (1), (2);")
        .unwrap();
    let listen: String = c.query_one("SHOW listen_addresses", &[]).unwrap().get(0);
    assert_eq!(listen, "");
    drop(c);
    // A crash: what was committed is there after recovery.
    cluster.restart_immediate().unwrap();
    assert_ne!(cluster.pid(), Some(pid));
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n: i64 = c
        .query_one("SELECT sum(n)::bigint FROM t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    drop(c);
    // Started again on the same data directory, it finds the data (no second initdb).
    let second = cluster.pid().unwrap();
    cluster.stop().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{second}")).exists());
    drop(cluster);
    let mut again = Cluster::start(&dir).unwrap();
    let mut c = postgres::Client::connect(&again.url(USER), postgres::NoTls).unwrap();
    let rows = c.query("SELECT n FROM t", &[]).unwrap().len();
    assert_eq!(rows, 2);
    drop(c);
    again.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_directory_in_use_is_refused_with_the_servers_reason() {
    let dir = scratch("pg-cluster-busy");
    let first = Cluster::start(&dir).unwrap();
    // A second postmaster on the same data: PostgreSQL's lock file says no, and so do we.
    let err = match Cluster::start(&dir) {
        Ok(_) => panic!("two postmasters on one data directory"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("exited") && err.contains("postmaster.pid"),
        "{err}"
    );
    drop(first);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kiln lab down` stops the cluster a lab killed outright left running, by its
/// `postmaster.pid` and only when that PID is a postgres on that data directory.
#[test]
fn a_cluster_left_running_is_stopped_by_its_recorded_pid_and_nothing_else_is() {
    let dir = scratch("pg-left");
    // Nothing recorded, or a PID that is not that cluster's postmaster: nothing is stopped.
    assert_eq!(kiln_collector::lab::postgres::down(&dir), 0);
    std::fs::create_dir_all(dir.join("pgdata")).unwrap();
    std::fs::write(
        dir.join("pgdata/postmaster.pid"),
        format!("{}\n", std::process::id()),
    )
    .unwrap();
    assert_eq!(kiln_collector::lab::postgres::down(&dir), 0);
    std::fs::remove_dir_all(&dir).unwrap();
    let cluster = Cluster::start(&dir).unwrap();
    let pid = cluster.pid().unwrap();
    // The lab died without stopping it.
    std::mem::forget(cluster);
    assert_eq!(kiln_collector::lab::postgres::down(&dir), 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Gone, or a zombie of this process (a zombie's command line is empty).
    while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "postgres {pid} still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // The socket directory the forgotten cluster would have removed (this process's own).
    let mine = format!("kiln-pg-{}-", std::process::id());
    for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&mine) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

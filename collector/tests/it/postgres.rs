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

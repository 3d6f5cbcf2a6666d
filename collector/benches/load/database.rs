//! Where the load bench's collector keeps its runs: SQLite (the default) or, with
//! `KILN_BENCH_DATABASE=postgres`, a throwaway PostgreSQL cluster with a database per round,
//! crashed (restarted `-m immediate`) in the killed rounds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The PostgreSQL cluster the rounds keep their runs in (`KILN_BENCH_DATABASE=postgres`), one
/// database per round; none for SQLite.
pub static CLUSTER: std::sync::OnceLock<std::sync::Mutex<kiln_collector::lab::postgres::Cluster>> =
    std::sync::OnceLock::new();

/// Set while a round runs on SQLite beside the PostgreSQL ones, for the ratio in one run.
static ON_SQLITE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the bench runs on PostgreSQL.
pub fn on_postgres() -> bool {
    CLUSTER.get().is_some()
}

/// Runs `round` with its runs on SQLite, though the bench runs on PostgreSQL.
pub fn on_sqlite<R>(round: impl FnOnce() -> R) -> R {
    ON_SQLITE.store(true, Ordering::SeqCst);
    let r = round();
    ON_SQLITE.store(false, Ordering::SeqCst);
    r
}

/// A fresh database for the round kept in `data`, when the bench runs on PostgreSQL.
pub fn database_for(data: &Path) -> Option<String> {
    if ON_SQLITE.load(Ordering::SeqCst) {
        return None;
    }
    let cluster = CLUSTER.get()?.lock().expect("cluster");
    let name: String = data
        .file_name()
        .map(|n| n.to_string_lossy().replace('-', "_"))
        .unwrap_or_default();
    let mut admin = postgres::Client::connect(&cluster.url("postgres"), postgres::NoTls)
        .expect("connect to the cluster");
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .expect("the round's old database dropped");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("a database for the round");
    Some(cluster.url(&name))
}

/// Picks the engine from `KILN_BENCH_DATABASE` and starts PostgreSQL's cluster when asked.
pub fn choose() {
    match std::env::var("KILN_BENCH_DATABASE").as_deref() {
        Ok("postgres") => {
            let dir = PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/bench-load-pg"
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let cluster = kiln_collector::lab::postgres::Cluster::start_sized(
                &dir,
                kiln_collector::lab::postgres::Sizing::Site,
            )
            .expect("PostgreSQL");
            println!(
                "on PostgreSQL (a cluster of its own, fsync and synchronous_commit on, {})",
                cluster.settings().join(" ")
            );
            let _ = CLUSTER.set(std::sync::Mutex::new(cluster));
        }
        Ok("sqlite") | Err(_) => println!("on SQLite (synchronous=FULL)"),
        Ok(other) => panic!("KILN_BENCH_DATABASE={other}: expected sqlite or postgres"),
    }
}

/// Stops PostgreSQL's cluster, when the bench started one: it lives in a static, which is
/// never dropped, and would outlive the bench.
pub fn stop() {
    if let Some(cluster) = CLUSTER.get() {
        let mut cluster = cluster.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = cluster.stop() {
            eprintln!("stopping the bench's PostgreSQL: {err:#}");
        }
    }
}

/// On PostgreSQL, once `done` reaches `at` batches (of `total`), restarts the cluster as after
/// a crash; on SQLite, nothing.
pub fn crash_at(done: &AtomicU64, at: u64, total: u64) {
    let Some(cluster) = CLUSTER.get() else {
        return;
    };
    while done.load(Ordering::Relaxed) < at {
        std::thread::sleep(Duration::from_millis(5));
    }
    let when = done.load(Ordering::Relaxed);
    cluster
        .lock()
        .expect("cluster")
        .restart_immediate()
        .expect("restart PostgreSQL");
    println!("  restarted PostgreSQL as after a crash (immediate) after {when} of {total} batches");
}

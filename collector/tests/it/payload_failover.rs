//! The payload when a collector goes away: two collectors on one PostgreSQL, a node fetching
//! its payload from the first, which stops mid-way; the node goes on with the second (its
//! tracker takes the node with what it holds) and the payload arrives whole, every piece
//! verified. Collectors that serve different payloads are refused by name, not by a stream of
//! pieces failing their hash.

use kiln_collector::config::{Config, Database};
use kiln_collector::lab::postgres::{Cluster, USER};
use kiln_protocol::wire::{RegisterRequest, RegisterResponse};

use crate::common::*;
use crate::payload::{manifest_of, stalling_peer};

/// `mib` MiB of bytes that differ with `seed`.
fn payload(mib: u32, seed: u32) -> Vec<u8> {
    (0..mib << 20)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A collector on the shared database serving `bytes` as its payload, its own sends capped
/// at `mbps` when set.
async fn collector(name: &str, url: &str, bytes: &[u8], mbps: Option<f64>) -> Server {
    let server = Server::start(
        name,
        Config {
            database: Database::Postgres(url.to_owned()),
            payload_mbps: mbps,
            ..Config::default()
        },
    )
    .await;
    std::fs::create_dir_all(server.data.join("artifacts")).unwrap();
    std::fs::write(server.data.join("artifacts/payload.img"), bytes).unwrap();
    server
}

/// Node n1's run, registered through `server`'s operator API.
async fn run_on(server: &Server) -> RegisterResponse {
    import_nodes(
        server,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R1,U1,n1\n",
    )
    .await;
    let req = RegisterRequest {
        identity: identity(1),
        hostname: None,
        suite_text: SUITE.into(),
    };
    register_admin(&server.ops, &req, &server.admin_token()).await
}

/// Run `run`'s way to the collectors of `bases`, a piece given up after `deadline`.
fn agent<'a>(
    http: &'a reqwest::Client,
    bases: &'a kiln_agent::reporter::Bases,
    run: &'a RegisterResponse,
    deadline: std::time::Duration,
) -> kiln_agent::payload::Run<'a> {
    kiln_agent::payload::Run {
        http,
        bases,
        run_id: run.run_id,
        token: &run.token,
        port: None,
        deadline,
        down: None,
    }
}

fn cluster(name: &str) -> (Cluster, std::path::PathBuf) {
    let pg = scratch(name);
    let dir = pg.clone();
    let cluster = std::thread::spawn(move || Cluster::start(&dir).unwrap())
        .join()
        .unwrap();
    (cluster, pg)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collector_gone_mid_payload_leaves_the_node_to_the_next_which_finishes_it() {
    let (cluster, pg) = cluster("payload-failover-pg");
    let url = cluster.url(USER);
    let bytes = payload(24, 0);
    // A sends slowly, so that it goes away with pieces still to come.
    let a = collector("payload-failover-a", &url, &bytes, Some(64.0)).await;
    let b = collector("payload-failover-b", &url, &bytes, None).await;
    let run = run_on(&a).await;
    let store = kiln_agent::payload::Store::new(manifest_of(&a, &run).await).unwrap();
    let bases = kiln_agent::reporter::Bases::new(&format!("{},{}", a.base, b.base)).unwrap();
    let http = reqwest::Client::new();
    let agent = agent(&http, &bases, &run, std::time::Duration::from_secs(30));
    let mut a = Some(a);
    let stop_a = async {
        while store.have().held() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The first piece is in: A goes away with the rest still to come.
        assert!(
            !store.have().complete(),
            "A served it all before it stopped"
        );
        drop(a.take());
    };
    let patience = std::time::Duration::from_secs(60);
    let (got, ()) = tokio::join!(kiln_agent::payload::fetch(&agent, &store, patience), stop_a);
    let got = got.expect("the payload after A went away");
    assert_eq!(store.bytes().unwrap(), bytes, "the payload arrived whole");
    assert_eq!(got.from_collector, bytes.len() as u64, "{got:?}");
    assert_eq!(bases.current().1, b.base, "the node went on with B");
    // B's tracker took the node with what it held, and counted what B served (the ends of
    // A's last fetches were heard by nobody: A was gone, and B had not granted them).
    let row = b.ops.run(run.run_id).await;
    let counted: u64 = row["payload"]
        .as_array()
        .unwrap_or_else(|| panic!("{row}"))
        .iter()
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert!(counted > 0 && counted <= bytes.len() as u64, "{row}");
    drop(b);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&pg);
}

#[tokio::test(flavor = "multi_thread")]
async fn collectors_serving_different_payloads_are_refused_by_name() {
    let (cluster, pg) = cluster("payload-differ-pg");
    let url = cluster.url(USER);
    let ours = payload(6, 0);
    let a = collector("payload-differ-a", &url, &ours, None).await;
    let b = collector("payload-differ-b", &url, &payload(6, 7), None).await;
    let run = run_on(&a).await;
    let store = kiln_agent::payload::Store::new(manifest_of(&a, &run).await).unwrap();
    let bases = kiln_agent::reporter::Bases::new(&format!("{},{}", a.base, b.base)).unwrap();
    let b_base = b.base.clone();
    // A is gone before the first grant: B is asked, and serves another payload.
    drop(a);
    let http = reqwest::Client::new();
    let agent = agent(&http, &bases, &run, std::time::Duration::from_secs(10));
    let err = kiln_agent::payload::fetch(&agent, &store, std::time::Duration::from_secs(20))
        .await
        .expect_err("a payload from two different files");
    let said = format!("{err:#}");
    assert!(
        said.contains(&format!("collector {b_base} serves another payload")),
        "{said}"
    );
    assert_eq!(store.have().held(), 0, "{said}");
    drop(b);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&pg);
}

/// A collector that takes the connection and never answers holds the payload no longer than
/// the deadline: the node goes on with the next.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_collector_is_left_after_the_deadline() {
    let bytes = payload(6, 0);
    let live = Server::start("payload-hung", Config::default()).await;
    std::fs::create_dir_all(live.data.join("artifacts")).unwrap();
    std::fs::write(live.data.join("artifacts/payload.img"), &bytes).unwrap();
    let run = run_on(&live).await;
    let store = kiln_agent::payload::Store::new(manifest_of(&live, &run).await).unwrap();
    let hung = format!("http://127.0.0.1:{}", stalling_peer().await);
    let bases = kiln_agent::reporter::Bases::new(&format!("{hung},{}", live.base)).unwrap();
    let http = reqwest::Client::new();
    let agent = agent(&http, &bases, &run, std::time::Duration::from_secs(2));
    let fetch = kiln_agent::payload::fetch(&agent, &store, std::time::Duration::from_secs(20));
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), fetch)
        .await
        .expect("the fetch hung on the collector that never answers")
        .expect("the payload from the live collector");
    assert_eq!(store.bytes().unwrap(), bytes);
    assert_eq!(got.from_collector, bytes.len() as u64, "{got:?}");
    assert_eq!(bases.current().1, live.base);
}

//! The payload when a collector goes away: two collectors on one PostgreSQL, a node fetching
//! its payload from the first, which stops mid-way; the node goes on with the second (its
//! tracker takes the node with what it holds) and the payload arrives whole, every piece
//! verified. A collector that hangs or answers 5xx is left for the next the same way; one that
//! refuses the node (4xx) is an answer, and the node does not shop for another. Collectors
//! that serve different payloads are refused by name, not by a stream of pieces failing their
//! hash.

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

/// What node n1's payload fetch came to with `first` ahead of a live collector on its list.
struct Behind {
    fetched: anyhow::Result<kiln_agent::payload::Fetched>,
    sent: Vec<u8>,
    stored: Option<Vec<u8>>,
    /// The collector the node uses at the end, and the live one.
    used: String,
    live: String,
}

/// Node n1 fetches its payload (6 MiB) with `first` ahead of a live collector named `name`.
async fn fetch_behind(name: &str, first: &str) -> Behind {
    let sent = payload(6, 0);
    let live = Server::start(name, Config::default()).await;
    std::fs::create_dir_all(live.data.join("artifacts")).unwrap();
    std::fs::write(live.data.join("artifacts/payload.img"), &sent).unwrap();
    let run = run_on(&live).await;
    let store = kiln_agent::payload::Store::new(manifest_of(&live, &run).await).unwrap();
    let bases = kiln_agent::reporter::Bases::new(&format!("{first},{}", live.base)).unwrap();
    let http = reqwest::Client::new();
    let agent = agent(&http, &bases, &run, std::time::Duration::from_secs(2));
    let fetch = kiln_agent::payload::fetch(&agent, &store, std::time::Duration::from_secs(20));
    let fetched = tokio::time::timeout(std::time::Duration::from_secs(60), fetch)
        .await
        .expect("the fetch hung on the first collector");
    Behind {
        fetched,
        sent,
        stored: store.bytes(),
        used: bases.current().1.to_owned(),
        live: live.base.clone(),
    }
}

/// The live collector served the whole payload, and the node uses it from now on.
fn served_by_the_live_one(b: Behind) {
    let got = b.fetched.expect("the payload from the live collector");
    assert_eq!(b.stored.as_ref(), Some(&b.sent));
    assert_eq!(got.from_collector, b.sent.len() as u64, "{got:?}");
    assert_eq!(b.used, b.live);
}

/// A collector on 127.0.0.1 that answers every request with `status` and a reason.
async fn answering(status: axum::http::StatusCode) -> String {
    let app = axum::Router::new()
        .fallback(move || async move { (status, "the database is unreachable") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A collector that takes the connection and never answers holds the payload no longer than
/// the deadline: the node goes on with the next.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_collector_is_left_after_the_deadline() {
    let hung = format!("http://127.0.0.1:{}", stalling_peer().await);
    let b = fetch_behind("payload-hung", &hung).await;
    served_by_the_live_one(b);
}

/// A collector answering 503 (its database gone) is left for the next, which serves the
/// whole payload.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_answering_503_is_left_for_the_next() {
    let down = answering(axum::http::StatusCode::SERVICE_UNAVAILABLE).await;
    let b = fetch_behind("payload-503", &down).await;
    served_by_the_live_one(b);
}

/// A refusal (403: this token is not welcome there) is an answer, not a failure of the
/// collector: the node does not shop for a collector that would take it, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_collector_refusing_the_node_is_not_left_for_the_next() {
    let refusing = answering(axum::http::StatusCode::FORBIDDEN).await;
    let b = fetch_behind("payload-403", &refusing).await;
    let err = format!("{:#}", b.fetched.expect_err("a refused fetch"));
    assert!(err.contains("403"), "{err}");
    assert_eq!(b.used, refusing);
    assert_eq!(b.stored, None);
}

//! Peer-assisted boot through the real server: the manifest, grants from the tracker (the
//! collector first, then a neighbour that holds the pieces), pieces checked against their
//! SHA-256, a corrupt peer never granted again — and every hostile request refused.

use kiln_collector::config::Config;
use kiln_protocol::payload::{
    DoneRequest, Grant, GrantsRequest, Manifest, Outcome, Pieces, Source,
};
use kiln_protocol::wire::{RegisterRequest, RegisterResponse};

use crate::common::*;

/// Two nodes of rack R1, registered by the operator, with a 10 MiB payload (3 pieces).
async fn swarm(name: &str) -> (Server, Vec<u8>, RegisterResponse, RegisterResponse) {
    let server = Server::start(name, Config::default()).await;
    let payload: Vec<u8> = (0..10u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(server.data.join("artifacts")).unwrap();
    std::fs::write(server.data.join("artifacts/payload.img"), &payload).unwrap();
    import_nodes(
        &server,
        "mac,rack,slot,hostname,batch\n52:54:00:00:00:01,R1,U1,n1,B1\n52:54:00:00:00:02,R1,U2,n2,B1\n",
    )
    .await;
    let admin = server.admin_token();
    let mut runs = Vec::new();
    for n in 1..=2 {
        let req = RegisterRequest {
            identity: identity(n),
            hostname: None,
            suite_text: SUITE.into(),
        };
        runs.push(register_admin(&server.ops, &req, &admin).await);
    }
    let two = runs.pop().unwrap();
    let one = runs.pop().unwrap();
    (server, payload, one, two)
}

fn url(server: &Server, run: &RegisterResponse, rest: &str) -> String {
    format!("{}/api/v1/runs/{}/payload{rest}", server.base, run.run_id)
}

async fn grants(server: &Server, run: &RegisterResponse, have: &Pieces, port: u16) -> Vec<Grant> {
    let r = reqwest::Client::new()
        .post(url(server, run, "/grants"))
        .bearer_auth(&run.token)
        .json(&GrantsRequest {
            have: have.clone(),
            port: Some(port),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn done(
    server: &Server,
    run: &RegisterResponse,
    grant: &Grant,
    outcome: Outcome,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(url(server, run, "/done"))
        .bearer_auth(&run.token)
        .json(&DoneRequest {
            grant: grant.clone(),
            outcome,
        })
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_gets_the_payload_from_the_collector_then_its_neighbour_from_it() {
    let (server, payload, one, two) = swarm("payload-swarm").await;
    let client = reqwest::Client::new();
    let manifest = manifest_of(&server, &one).await;
    assert_eq!(manifest, Manifest::of(&payload, 4 << 20));
    // The first node: nothing anywhere but on the collector.
    let mut have = Pieces::none(3);
    let first = grants(&server, &one, &have, 9001).await;
    assert_eq!(first.len(), 3, "{first:?}");
    for g in &first {
        assert_eq!(g.from, Source::Collector);
        let bytes = client
            .get(url(&server, &one, &format!("/pieces/{}", g.piece)))
            .bearer_auth(&one.token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        manifest.verify(g.piece, &bytes).unwrap();
        have.set(g.piece);
        let r = done(&server, &one, g, Outcome::Verified).await;
        assert_eq!(r.status(), 200);
    }
    assert!(have.complete());
    // Its neighbour: from it, at the address its session comes from.
    let from_peer = grants(&server, &two, &Pieces::none(3), 9002).await;
    assert!(!from_peer.is_empty());
    let peer = Source::Peer {
        node: one.node_id,
        addr: "127.0.0.1:9001".into(),
    };
    assert!(from_peer.iter().all(|g| g.from == peer), "{from_peer:?}");
    // A piece that failed its hash: that peer serves nobody any more.
    assert_eq!(
        done(&server, &two, &from_peer[0], Outcome::Corrupt)
            .await
            .status(),
        200
    );
    for g in &from_peer[1..] {
        done(&server, &two, g, Outcome::Broken).await;
    }
    let again = grants(&server, &two, &Pieces::none(3), 9002).await;
    assert!(
        !again.is_empty() && again.iter().all(|g| g.from == Source::Collector),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_tokens_pieces_beyond_and_grants_never_given_are_refused() {
    let (server, _, one, two) = swarm("payload-hostile").await;
    let client = reqwest::Client::new();
    // Another run's manifest, grants or piece with this run's token: refused.
    for (method, rest) in [("GET", ""), ("POST", "/grants"), ("GET", "/pieces/0")] {
        let r = client
            .request(method.parse().unwrap(), url(&server, &two, rest))
            .bearer_auth(&one.token)
            .json(&GrantsRequest {
                have: Pieces::none(3),
                port: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {rest}");
    }
    // A piece beyond the payload.
    let r = client
        .get(url(&server, &one, "/pieces/3"))
        .bearer_auth(&one.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("piece 3 is beyond the payload's 3 pieces")
    );
    // A bitfield of another payload's size.
    let r = client
        .post(url(&server, &one, "/grants"))
        .bearer_auth(&one.token)
        .json(&GrantsRequest {
            have: Pieces::none(9),
            port: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("the payload has 3"));
    // A grant never given, and one claimed from a peer that gave nothing.
    grants(&server, &one, &Pieces::none(3), 9001).await;
    let never = Grant {
        piece: 2,
        from: Source::Peer {
            node: two.node_id,
            addr: "127.0.0.1:1".into(),
        },
    };
    let r = done(&server, &two, &never, Outcome::Verified).await;
    assert_eq!(r.status(), 409, "{}", r.text().await.unwrap());
    // A collector without a payload says so.
    let bare = Server::start("payload-none", Config::default()).await;
    let run = register(&client, &bare.base, 1, SUITE).await;
    let r = client
        .get(format!("{}/api/v1/runs/{}/payload", bare.base, run.run_id))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("serves no payload"));
}

/// A piece server for `store` on 127.0.0.1: its port.
async fn serve(store: std::sync::Arc<kiln_agent::payload::Store>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        async move { axum::serve(listener, kiln_agent::payload::router(store, None)).await },
    );
    port
}

/// A peer that answers every piece with bytes that are not it.
async fn corrupt_peer() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route(
        kiln_agent::payload::PIECE_ROUTE,
        axum::routing::get(|| async { vec![0xA5u8; 4 << 20] }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// A peer that accepts and never answers.
pub(crate) async fn stalling_peer() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    port
}

/// Node `run` fetches the payload through the real routes, serving on `port` meanwhile; a
/// piece may take 10 s (a loaded CI host moves 4 MiB slowly in a debug build).
async fn fetch(
    server: &Server,
    run: &RegisterResponse,
    port: Option<u16>,
    store: std::sync::Arc<kiln_agent::payload::Store>,
) -> kiln_agent::payload::Fetched {
    fetch_within(server, run, port, store, std::time::Duration::from_secs(10)).await
}

/// [`fetch`], a piece given up after `deadline`.
async fn fetch_within(
    server: &Server,
    run: &RegisterResponse,
    port: Option<u16>,
    store: std::sync::Arc<kiln_agent::payload::Store>,
    deadline: std::time::Duration,
) -> kiln_agent::payload::Fetched {
    let http = reqwest::Client::new();
    let bases = kiln_agent::reporter::Bases::new(&server.base).unwrap();
    let run = kiln_agent::payload::Run {
        http: &http,
        bases: &bases,
        run_id: run.run_id,
        token: &run.token,
        port,
        deadline,
        down: None,
    };
    kiln_agent::payload::fetch(&run, &store, std::time::Duration::from_secs(20))
        .await
        .unwrap()
}

pub(crate) async fn manifest_of(server: &Server, run: &RegisterResponse) -> Manifest {
    reqwest::Client::new()
        .get(url(server, run, ""))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_fetch_verified_pieces_from_each_other_and_the_collector_serves_once() {
    let (server, payload, one, two) = swarm("payload-agents").await;
    let manifest = manifest_of(&server, &one).await;
    let first = std::sync::Arc::new(kiln_agent::payload::Store::new(manifest.clone()).unwrap());
    let port = serve(first.clone()).await;
    let got = fetch(&server, &one, Some(port), first.clone()).await;
    assert_eq!(got.from_collector, payload.len() as u64);
    assert_eq!(first.bytes().unwrap(), payload);
    // The second node of the rack: every byte from its neighbour, none from the collector.
    let second = std::sync::Arc::new(kiln_agent::payload::Store::new(manifest.clone()).unwrap());
    let got = fetch(&server, &two, None, second.clone()).await;
    assert_eq!(got.from_collector, 0, "{got:?}");
    assert_eq!(
        got.from_peers.get(&one.node_id),
        Some(&(payload.len() as u64))
    );
    assert_eq!(second.bytes().unwrap(), payload);
    // The operators see where each node's payload came from: in the run's JSON and on its page.
    let first_run = server.ops.run(one.run_id).await;
    assert_eq!(
        first_run["payload"][0]["node"],
        serde_json::Value::Null,
        "{first_run}"
    );
    assert_eq!(first_run["payload"][0]["bytes"], payload.len() as u64);
    let second_run = server.ops.run(two.run_id).await;
    assert_eq!(
        second_run["payload"][0]["node"], one.node_id,
        "{second_run}"
    );
    assert_eq!(second_run["payload"][0]["pieces"], 3);
    let page = server.ops.text(&format!("/runs/{}", two.run_id)).await;
    assert!(
        page.contains("Where its payload came from")
            && page.contains(&format!("node {}", one.node_id)),
        "{page}"
    );
    // Per rack: the collector served one copy, the peer the other; in the report rows, the
    // batch's JSON and its page.
    let rows: Vec<serde_json::Value> = server.ops.json("/api/v1/report").await;
    let len = payload.len() as u64;
    let tallies: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            let p = &r["payload"];
            (
                p["collector_bytes"].as_u64().unwrap(),
                p["peer_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(tallies, [(len, 0), (0, len)], "{rows:?}");
    let batch: serde_json::Value = server.ops.json("/api/v1/batches/B1").await;
    assert_eq!(
        batch["payload"],
        serde_json::json!([{ "rack": "R1", "nodes": 2, "collector_bytes": len, "peer_bytes": len, "corrupt": 0 }]),
        "{batch}"
    );
    let page = server.ops.text("/batches/B1").await;
    assert!(
        page.contains("Payload by rack") && page.contains("10.0 MiB"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_peer_is_caught_by_the_hash_and_a_stalling_one_by_the_deadline() {
    for (name, corrupt) in [("payload-corrupt", true), ("payload-stall", false)] {
        let (server, payload, bad, good) = swarm(name).await;
        let manifest = manifest_of(&server, &bad).await;
        // The bad node claims every piece and serves from a port of its own making.
        let port = if corrupt {
            corrupt_peer().await
        } else {
            stalling_peer().await
        };
        grants(&server, &bad, &Pieces::all(3), port).await;
        let store = std::sync::Arc::new(kiln_agent::payload::Store::new(manifest.clone()).unwrap());
        // The stalling peer is caught by a short deadline; the corrupt one by the hash alone,
        // so its pieces get all the time a loaded host needs (a timed-out one is "broken").
        let deadline = std::time::Duration::from_millis(if corrupt { 10_000 } else { 500 });
        let got = fetch_within(&server, &good, None, store.clone(), deadline).await;
        // No byte of it kept: every piece came, verified, from the collector.
        assert_eq!(store.bytes().unwrap(), payload, "{name}");
        assert_eq!(got.from_collector, payload.len() as u64, "{name}: {got:?}");
        if corrupt {
            assert_eq!(got.corrupt.first(), Some(&bad.node_id), "{got:?}");
        } else {
            assert!(got.broken >= 1, "{got:?}");
        }
        // The collector stored it against the bad peer, and the good run's tally once whole.
        let run: serde_json::Value = server
            .ops
            .json(&format!("/api/v1/runs/{}", good.run_id))
            .await;
        let from_bad = run["payload"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node"] == bad.node_id)
            .cloned()
            .unwrap_or_default();
        let (count, other) = if corrupt {
            ("corrupt", "broken")
        } else {
            ("broken", "corrupt")
        };
        assert!(from_bad[count].as_i64() >= Some(1), "{name}: {run}");
        assert_eq!(from_bad[other], 0, "{name}: {run}");
        assert_eq!(from_bad["bytes"], 0, "{name}: {run}");
        let rows: Vec<serde_json::Value> = server.ops.json("/api/v1/report").await;
        let row = rows.iter().find(|r| r["run_id"] == good.run_id).unwrap();
        assert_eq!(
            row["payload"]["collector_bytes"],
            payload.len() as u64,
            "{name}: {row}"
        );
        assert_eq!(row["payload"]["peer_bytes"], 0, "{name}: {row}");
        assert_eq!(
            row["payload"]["corrupt"],
            u64::from(corrupt) * from_bad["corrupt"].as_u64().unwrap(),
            "{name}: {row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_run_is_failing_serves_nobody() {
    let (server, payload, one, two) = swarm("payload-failing").await;
    let manifest = manifest_of(&server, &one).await;
    let first = std::sync::Arc::new(kiln_agent::payload::Store::new(manifest.clone()).unwrap());
    let port = serve(first.clone()).await;
    fetch(&server, &one, Some(port), first.clone()).await;
    // Its step fails; the run goes on (no final event yet).
    let events = failed_run("memory.mismatch", "bit 3 flipped")[..4].to_vec();
    let r = post_events(&reqwest::Client::new(), &server.base, &one, events).await;
    assert_eq!(r.status(), 200);
    assert!(server.ops.run(one.run_id).await["verdict"].is_null());
    let second = std::sync::Arc::new(kiln_agent::payload::Store::new(manifest).unwrap());
    let got = fetch(&server, &two, None, second.clone()).await;
    assert!(got.from_peers.is_empty(), "{got:?}");
    assert_eq!(got.from_collector, payload.len() as u64, "{got:?}");
    assert_eq!(second.bytes().unwrap(), payload);
}

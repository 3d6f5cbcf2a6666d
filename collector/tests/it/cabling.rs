//! The site's cabling map through the real server: imported whole or not at all, listed,
//! handed to the agents of mapped nodes as "listen for LLDP", and checked at each verdict —
//! the cable in the wrong port named with both ports, two crossed cables named as a swap.

use kiln_collector::config::Config;
use kiln_protocol::lldp::Neighbor;
use kiln_protocol::wire::{Inventory, NicInfo, RegisterRequest, RegisterResponse};

use crate::common::*;

const MAP: &str = "node,interface,switch,port\nR12U08,eth1,leaf-r12-a,Ethernet1/7\n52:54:00:00:00:02,eth1,leaf-r12-a,Ethernet1/8\n";

async fn post_map(server: &Server, csv: &str) -> (u16, String) {
    let r = server
        .ops
        .post("/api/v1/cabling")
        .bearer_auth(server.admin_token())
        .header("content-type", "text/csv")
        .body(csv.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A node whose eth1 heard `port` of leaf-r12-a.
fn heard(n: u8, port: Option<&str>) -> Inventory {
    Inventory {
        nics: vec![NicInfo {
            name: "eth1".into(),
            mac: format!("52:54:00:00:00:{n:02x}"),
            link_up: true,
            lldp: port.map(|p| Neighbor {
                chassis_id: "aa:bb:cc:00:12:01".into(),
                port_id: p.into(),
                ttl_s: 120,
                system_name: Some("leaf-r12-a".into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        lldp_listened_s: Some(35),
        ..Default::default()
    }
}

async fn run_of(server: &Server, n: u8) -> RegisterResponse {
    let req = RegisterRequest {
        identity: identity(n),
        hostname: None,
        suite_text: SUITE.into(),
    };
    register_admin(&server.ops, &req, &server.admin_token()).await
}

async fn put_inventory(server: &Server, run: &RegisterResponse, inv: &Inventory) {
    let r = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/runs/{}/inventory",
            server.base, run.run_id
        ))
        .bearer_auth(&run.token)
        .json(inv)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// The plan the run's agent is handed.
async fn plan_of(server: &Server, run: &RegisterResponse) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/runs/{}/plan", server.base, run.run_id))
        .bearer_auth(&run.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn setup(name: &str) -> Server {
    let server = Server::start(name, Config::default()).await;
    import_nodes(
        &server,
        "mac,rack,slot,hostname\n52:54:00:00:00:01,R12,U08,R12U08\n52:54:00:00:00:02,R12,U09,R12U09\n52:54:00:00:00:03,R12,U10,R12U10\n",
    )
    .await;
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn a_map_is_imported_whole_or_not_at_all() {
    let server = setup("cabling-import").await;
    assert_eq!(post_map(&server, MAP).await, (200, "{\"cables\":2}".into()));
    let list: serde_json::Value = server.ops.json("/api/v1/cabling").await;
    assert_eq!(list[1]["node"], "R12U09");
    assert_eq!(list[1]["port"], "Ethernet1/8");
    for (csv, says) in [
        (
            "R12U10,eth1,leaf-r12-a,Ethernet1/7\nR12U08,eth1,leaf-r12-a,ethernet1/7\n",
            "line 2: leaf-r12-a ethernet1/7 is cabled on line 1 already",
        ),
        (
            "R12U10,eth1,leaf-r12-a,Ethernet1/9\nR12U10,eth1,leaf-r12-a,Ethernet1/10\n",
            "line 2: R12U10 eth1 is mapped on line 1 already",
        ),
        (
            "R99U01,eth1,leaf-r12-a,Ethernet1/9\n",
            "line 1: no node is called R99U01",
        ),
        ("R12U10,eth1,leaf\u{1b}[2J,Ethernet1/9\n", "line 1:"),
        (
            "R12U10,eth1,leaf-r12-a\n",
            "line 1: 3 fields; expected node,interface,switch,port",
        ),
    ] {
        let (status, body) = post_map(&server, csv).await;
        assert_eq!(status, 400, "{csv:?}: {body}");
        assert!(
            body.contains("nothing imported") && body.contains(says),
            "{csv:?}: {body}"
        );
    }
    // Not a line of the good map was lost, and nobody without the admin token changes it.
    let after: serde_json::Value = server.ops.json("/api/v1/cabling").await;
    assert_eq!(after, list);
    let r = server
        .ops
        .post("/api/v1/cabling")
        .body("R12U10,eth1,leaf-r12-a,Ethernet1/9\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn crossed_cables_fail_both_nodes_each_naming_the_other() {
    let server = setup("cabling-swap").await;
    post_map(
        &server,
        &format!("{MAP}R12U10,eth1,leaf-r12-a,Ethernet1/9\n"),
    )
    .await;
    let (a, b, c) = (
        run_of(&server, 1).await,
        run_of(&server, 2).await,
        run_of(&server, 3).await,
    );
    // A mapped node's agent is told to listen for LLDP.
    let plan = plan_of(&server, &a).await;
    assert_eq!(plan["lldp_secs"], 35, "{plan}");
    put_inventory(&server, &a, &heard(1, Some("Ethernet1/8"))).await;
    put_inventory(&server, &b, &heard(2, Some("Ethernet1/7"))).await;
    put_inventory(&server, &c, &heard(3, None)).await;
    let client = reqwest::Client::new();
    for run in [&a, &b, &c] {
        post_events(&client, &server.base, run, full_run()).await;
    }
    let rows: Vec<serde_json::Value> = server.ops.json("/api/v1/report").await;
    let faults = |run: &RegisterResponse| {
        let row = rows.iter().find(|r| r["run_id"] == run.run_id).unwrap();
        assert_eq!(row["verdict"], "fail", "{row}");
        row["faults"].clone()
    };
    assert_eq!(
        faults(&a),
        serde_json::json!([
            "cabling: eth1 is swapped with R12U09 eth1: it is cabled to leaf-r12-a Ethernet1/8; the map says Ethernet1/7"
        ])
    );
    assert_eq!(
        faults(&b),
        serde_json::json!([
            "cabling: eth1 is swapped with R12U08 eth1: it is cabled to leaf-r12-a Ethernet1/7; the map says Ethernet1/8"
        ])
    );
    assert_eq!(
        faults(&c),
        serde_json::json!([
            "cabling: eth1: no LLDP heard in 35 s, so its cable is unverified; the map says leaf-r12-a Ethernet1/9"
        ])
    );
    // A node the map does not name is not asked to listen.
    let d = run_of(&server, 4).await;
    let plan = plan_of(&server, &d).await;
    assert!(plan.get("lldp_secs").is_none(), "{plan}");
}

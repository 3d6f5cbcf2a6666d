//! The collector's HTTP routes, written once: the patterns the server routes on and the paths
//! clients build from them, so the two can never drift apart.

/// `POST`: an agent that was not network-booted asks for a run (`RegisterRequest`).
pub const REGISTER: &str = "/api/v1/register";
/// `POST` with the bootstrap token from the kernel command line: the run's session token
/// (`SessionResponse`). Once per boot.
pub const SESSION: &str = "/api/v1/runs/{id}/session";
/// `GET`: the run's plan (`RunPlan`); also the agent's heartbeat when it has nothing to say.
pub const PLAN: &str = "/api/v1/runs/{id}/plan";
/// `PUT`: the node's inventory (`Inventory`).
pub const INVENTORY: &str = "/api/v1/runs/{id}/inventory";
/// `PUT`: the inventory of a power cycle's boot (`Inventory`), once per cycle, with that
/// boot's session token.
pub const CYCLE: &str = "/api/v1/runs/{id}/cycles/{cycle}";
/// `POST`: a batch of events (`EventBatch`), answered with a `BatchAck`.
pub const EVENTS: &str = "/api/v1/runs/{id}/events";
/// The run's payload manifest (`GET`, session token).
pub const PAYLOAD: &str = "/api/v1/runs/{id}/payload";
/// Pieces the node may fetch now, and their sources (`POST`, session token).
pub const PAYLOAD_GRANTS: &str = "/api/v1/runs/{id}/payload/grants";
/// How a granted fetch ended (`POST`, session token).
pub const PAYLOAD_DONE: &str = "/api/v1/runs/{id}/payload/done";
/// One piece of the payload from the collector (`GET`, session token).
pub const PAYLOAD_PIECE: &str = "/api/v1/runs/{id}/payload/pieces/{piece}";
/// `POST` (session token): a NIC step with `target: peer` asks for its partner.
pub const PAIR: &str = "/api/v1/runs/{id}/pair";
/// `POST` (session token): a pair finished measuring.
pub const PAIR_DONE: &str = "/api/v1/runs/{id}/pair/done";
/// `GET`: N bytes for the NIC check (`?bytes=N`).
pub const BANDWIDTH_DOWNLOAD: &str = "/bandwidth/download";
/// `POST`: a body the NIC check uploads.
pub const BANDWIDTH_UPLOAD: &str = "/bandwidth/upload";
/// The `Upgrade:` protocol a NIC check asks both bandwidth routes for: after `101 Switching
/// Protocols` the connection carries the bytes raw (download: the server sends `bytes`, then
/// closes; upload: the client sends until it shuts its side, then the server answers one line,
/// an `UploadReceipt` as JSON), so neither side pays for HTTP framing or copies it needs not make.
pub const BANDWIDTH_UPGRADE: &str = "kiln-bandwidth";
/// `POST` (admin): label nodes from CSV.
pub const NODES_IMPORT: &str = "/api/v1/nodes/import";
/// `POST` (admin): set nodes' mode.
pub const NODES_MODE: &str = "/api/v1/nodes/mode";
/// `POST` (admin): allow or revoke destructive disk steps on nodes.
pub const NODES_DESTRUCTIVE: &str = "/api/v1/nodes/destructive";
/// `POST` (admin): assign a suite.
pub const NODES_SUITE: &str = "/api/v1/nodes/suite";
/// `POST` (admin): arm nodes and power-cycle each through its driver (`VerifyRequest`),
/// answered with `VerifyStarted`.
pub const NODES_VERIFY: &str = "/api/v1/nodes/verify";
/// `POST` (admin): put nodes in a batch, or take them out (`BatchRequest`).
pub const NODES_BATCH: &str = "/api/v1/nodes/batch";
/// `GET`: a batch's yield, failure pareto, stage times and failed nodes (`BatchSummary`).
pub const BATCH: &str = "/api/v1/batches/{name}";
/// `GET`: the same as an XLSX workbook (summary, nodes, faults).
pub const BATCH_WORKBOOK: &str = "/api/v1/batches/{name}/workbook.xlsx";
/// `POST` (admin): waive a fault code of a node (`WaiveRequest`), answered with the `Waiver`;
/// `GET` (reader): the waiver log, `?node=N` for one node's.
pub const WAIVERS: &str = "/api/v1/waivers";
/// `GET` (read token): the collectors sharing the database, their heartbeats and leases
/// (`Vec<CollectorState>`).
pub const COLLECTORS: &str = "/api/v1/collectors";
/// `GET`: the site's cabling map; `POST` (admin, CSV `node,interface,switch,port`): replace it.
pub const CABLING: &str = "/api/v1/cabling";
/// `POST` (admin): revoke a waiver (kept, marked revoked with when and by whom).
pub const WAIVER_REVOKE: &str = "/api/v1/waivers/{id}/revoke";
/// `GET` (reader): a node's RMA evidence for its latest run, as a ZIP.
pub const EVIDENCE: &str = "/nodes/{id}/evidence.zip";
/// `GET`: every node with its latest run (`?format=json|csv&rack=&verdict=&since=`).
pub const REPORT: &str = "/api/v1/report";

/// `base` + `route` with a run's id in place of `{id}`.
pub fn url(base: &str, route: &str, run_id: i64) -> String {
    format!(
        "{}{}",
        base.trim_end_matches('/'),
        route.replace("{id}", &run_id.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_fill_in_the_run_and_never_double_a_slash() {
        assert_eq!(
            url("http://c:8080/", EVENTS, 7),
            "http://c:8080/api/v1/runs/7/events"
        );
        assert_eq!(url("http://c", REGISTER, 0), "http://c/api/v1/register");
    }
}

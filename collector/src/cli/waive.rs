//! `kiln waive`: an operator's word that a node may ship with a fault code (admin token), kept
//! with why, who and until when; `kiln waive --revoke ID` takes it back; `kiln waivers` lists
//! the log. Reports then show the node as `pass (1 waived)`, never plain `pass`.

use clap::Args;
use kiln_protocol::api::{WaiveRequest, Waiver};
use kiln_protocol::bounds::visible;
use kiln_protocol::routes;

use super::client::ServerArgs;

#[derive(Debug, Args)]
pub(super) struct WaiveArgs {
    /// The node.
    #[arg(long, required_unless_present = "revoke")]
    node: Option<i64>,
    /// The fault code to waive, as reports show it (e.g. fan.speed).
    #[arg(long, required_unless_present = "revoke")]
    fault: Option<String>,
    /// Why the node may ship with it (kept with the waiver).
    #[arg(long, required_unless_present = "revoke")]
    reason: Option<String>,
    /// A ticket in your tracker.
    #[arg(long)]
    ticket: Option<String>,
    /// How long the waiver holds, e.g. 90d (at most 366d); 30d when left out.
    #[arg(long)]
    expires: Option<String>,
    /// The run whose fault is waived; the node's latest finished run when left out.
    #[arg(long)]
    run: Option<i64>,
    /// Revoke waiver ID instead.
    #[arg(long, conflicts_with_all = ["node", "fault", "reason", "ticket", "expires", "run"])]
    revoke: Option<i64>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
pub(super) struct WaiversArgs {
    /// Only this node's.
    #[arg(long)]
    node: Option<i64>,
    #[command(flatten)]
    server: ServerArgs,
}

pub(super) fn waive(args: WaiveArgs) -> anyhow::Result<u8> {
    if let Some(id) = args.revoke {
        let path = routes::WAIVER_REVOKE.replace("{id}", &id.to_string());
        args.server
            .send(true, |c, base| c.post(format!("{base}{path}")))?;
        println!("waiver {id} revoked (kept in the log)");
        return Ok(super::EXIT_OK);
    }
    let (Some(node), Some(code), Some(reason)) = (args.node, args.fault, args.reason) else {
        anyhow::bail!("--node, --fault and --reason are needed");
    };
    // The same rule the collector applies, said before anything is sent.
    if let Err(why) = kiln_protocol::verdict::waivable(&code) {
        anyhow::bail!("{why}");
    }
    let payload = WaiveRequest {
        node,
        code,
        reason,
        ticket: args.ticket,
        expires: args.expires,
        run: args.run,
    };
    let body = args.server.send(true, |c, base| {
        c.post(format!("{base}{}", routes::WAIVERS)).json(&payload)
    })?;
    let w: Waiver = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
    })?;
    println!(
        "waiver {}: node {} may ship with {}{}{}",
        w.id,
        w.node_id,
        visible(&w.code),
        w.run_id
            .map(|r| format!(" found by run {r}"))
            .unwrap_or_default(),
        w.expires_ms
            .map(|e| format!(" until {}", kiln_protocol::junit::rfc3339(e.max(0) as u64)))
            .unwrap_or_default()
    );
    Ok(super::EXIT_OK)
}

pub(super) fn list(args: WaiversArgs) -> anyhow::Result<u8> {
    let node = args.node;
    let body = args.server.send(false, |c, base| {
        let url = format!("{base}{}", routes::WAIVERS);
        match node {
            Some(n) => c.get(format!("{url}?node={n}")),
            None => c.get(url),
        }
    })?;
    let waivers: Vec<Waiver> = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
    })?;
    let rows: Vec<Vec<String>> = waivers
        .iter()
        .map(|w| {
            let state = match (w.active, w.revoked_ms) {
                (true, _) => "active",
                (false, Some(_)) => "revoked",
                (false, None) => "expired",
            };
            let ticket = w.ticket.as_deref().map(|t| format!(" (ticket {t})"));
            vec![
                w.id.to_string(),
                w.node_id.to_string(),
                w.code.clone(),
                state.to_owned(),
                kiln_protocol::junit::rfc3339(w.created_ms.max(0) as u64),
                w.created_by.clone(),
                w.reason.clone() + &ticket.unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        kiln_protocol::text::table(
            &["id", "node", "code", "state", "given", "by", "reason"],
            &rows,
            40,
            usize::MAX,
        )
    );
    Ok(super::EXIT_OK)
}

//! `kiln nodes …`: label nodes from a CSV, set their mode, assign suites (admin token).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::client::ServerArgs;

#[derive(Debug, Subcommand)]
pub(super) enum NodesCommand {
    /// Label nodes from a CSV of `mac,rack,slot,hostname` (unknown MACs become new nodes).
    Import {
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set the boot mode of nodes: verify (run the suite), local (boot the disk) or hold.
    Mode {
        /// verify, local or hold.
        #[arg(value_parser = ["verify", "local", "hold"])]
        mode: String,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Allow destructive disk steps on nodes (recorded with time and who), or revoke it.
    AllowDestructive {
        /// Take the consent back.
        #[arg(long)]
        revoke: bool,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Assign a suite (a file in the collector's DATA/suites/) to nodes.
    Suite {
        /// Suite name.
        suite: String,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Which nodes: exactly one of these.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(super) struct Select {
    /// Every node in this rack.
    #[arg(long)]
    rack: Option<String>,
    /// The node with this MAC.
    #[arg(long)]
    mac: Option<String>,
    /// The node with this id.
    #[arg(long)]
    node: Option<i64>,
    /// Every node.
    #[arg(long)]
    all: bool,
}

impl Select {
    fn json(&self) -> serde_json::Value {
        match (&self.rack, &self.mac, self.node) {
            (Some(r), _, _) => serde_json::json!({ "rack": r }),
            (_, Some(m), _) => serde_json::json!({ "mac": m.to_lowercase() }),
            (_, _, Some(n)) => serde_json::json!({ "node": n }),
            _ => serde_json::json!({ "all": true }),
        }
    }
}

pub(super) fn run(cmd: NodesCommand) -> anyhow::Result<u8> {
    match cmd {
        NodesCommand::Import { file, server } => {
            let csv = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
            let body = server.send(true, |c, base| {
                c.post(format!("{base}/api/v1/nodes/import"))
                    .header("content-type", "text/csv")
                    .body(csv)
            })?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            println!(
                "{}: {} node(s) labelled, {} new",
                file.display(),
                v["updated"],
                v["created"]
            );
        }
        NodesCommand::Mode {
            mode,
            select,
            server,
        } => {
            let payload = serde_json::json!({ "select": select.json(), "mode": mode });
            let body = server.send(true, |c, base| {
                c.post(format!("{base}/api/v1/nodes/mode")).json(&payload)
            })?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            println!("{} node(s) set to {mode}", v["nodes"]);
        }
        NodesCommand::AllowDestructive {
            revoke,
            select,
            server,
        } => {
            let payload = serde_json::json!({ "select": select.json(), "allow": !revoke });
            let body = server.send(true, |c, base| {
                c.post(format!(
                    "{base}{}",
                    kiln_protocol::routes::NODES_DESTRUCTIVE
                ))
                .json(&payload)
            })?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            if revoke {
                println!("{} node(s): destructive disk steps revoked", v["nodes"]);
            } else {
                println!("{} node(s): destructive disk steps allowed", v["nodes"]);
            }
        }
        NodesCommand::Suite {
            suite,
            select,
            server,
        } => {
            let payload = serde_json::json!({ "select": select.json(), "suite": suite });
            let body = server.send(true, |c, base| {
                c.post(format!("{base}/api/v1/nodes/suite")).json(&payload)
            })?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            println!("{} node(s) assigned suite {suite}", v["nodes"]);
        }
    }
    Ok(super::EXIT_OK)
}

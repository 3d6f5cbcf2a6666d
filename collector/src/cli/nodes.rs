//! `kiln nodes …`: label nodes from a CSV, set their mode, assign suites and batches (admin
//! token).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kiln_protocol::api::{
    BatchRequest, DestructiveRequest, Imported, ModeRequest, NodesChanged, Selector, SuiteRequest,
};
use kiln_protocol::routes;

use super::client::ServerArgs;

#[derive(Debug, Subcommand)]
pub(super) enum NodesCommand {
    /// Label nodes from a CSV of `mac,rack,slot,hostname[,batch]` (unknown MACs become new
    /// nodes).
    Import {
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set the boot mode of nodes: verify (run the suite), local (boot the disk) or hold.
    Mode {
        /// verify, local or hold.
        #[arg(value_parser = str::parse::<kiln_protocol::api::Mode>)]
        mode: kiln_protocol::api::Mode,
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
    /// Put nodes in a batch (a purchase order, a delivery): `kiln report --batch NAME` then
    /// tells how it is doing.
    Batch {
        /// Batch name.
        #[arg(required_unless_present = "clear")]
        name: Option<String>,
        /// Take the nodes out of their batch instead.
        #[arg(long, conflicts_with = "name")]
        clear: bool,
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
    /// Every node of this batch.
    #[arg(long)]
    batch: Option<String>,
    /// Every node.
    #[arg(long)]
    all: bool,
}

impl Select {
    /// Whether a report row is one of the selected nodes.
    pub(super) fn matches(&self, row: &kiln_protocol::api::ReportRow) -> bool {
        match (&self.rack, &self.mac, self.node, &self.batch) {
            (Some(r), ..) => row.rack.as_deref() == Some(r.as_str()),
            (_, Some(m), ..) => row
                .macs
                .split(',')
                .any(|x| x.eq_ignore_ascii_case(m.trim())),
            (_, _, Some(n), _) => row.node_id == n,
            (.., Some(b)) => row.batch.as_deref() == Some(b.as_str()),
            _ => self.all,
        }
    }

    /// The selection as the `kiln watch` arguments that repeat it.
    pub(super) fn args(&self) -> String {
        match (&self.rack, &self.mac, self.node, &self.batch) {
            (Some(r), ..) => format!("--rack {r}"),
            (_, Some(m), ..) => format!("--mac {m}"),
            (_, _, Some(n), _) => format!("--node {n}"),
            (.., Some(b)) => format!("--batch {b}"),
            _ => "--all".to_owned(),
        }
    }

    pub(super) fn selector(&self) -> Selector {
        match (&self.rack, &self.mac, self.node, &self.batch) {
            (Some(r), ..) => Selector::Rack(r.clone()),
            (_, Some(m), ..) => Selector::Mac(m.to_lowercase()),
            (_, _, Some(n), _) => Selector::Node(n),
            (.., Some(b)) => Selector::Batch(b.clone()),
            _ => Selector::All(true),
        }
    }
}

/// The collector's answer, typed, or what it said when it is not.
fn answer<T: serde::de::DeserializeOwned>(body: &str) -> anyhow::Result<T> {
    serde_json::from_str(body)
        .map_err(|e| anyhow::anyhow!("the collector answered something unexpected ({e}): {body}"))
}

pub(super) fn run(cmd: NodesCommand) -> anyhow::Result<u8> {
    match cmd {
        NodesCommand::Import { file, server } => {
            let csv = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::NODES_IMPORT))
                    .header("content-type", "text/csv")
                    .body(csv)
            })?;
            let done: Imported = answer(&body)?;
            println!(
                "{}: {} node(s) labelled, {} new",
                file.display(),
                done.updated,
                done.created
            );
        }
        NodesCommand::Mode {
            mode,
            select,
            server,
        } => {
            let payload = ModeRequest {
                select: select.selector(),
                mode,
            };
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::NODES_MODE))
                    .json(&payload)
            })?;
            let done: NodesChanged = answer(&body)?;
            println!("{} node(s) set to {mode}", done.nodes);
        }
        NodesCommand::AllowDestructive {
            revoke,
            select,
            server,
        } => {
            let payload = DestructiveRequest {
                select: select.selector(),
                allow: !revoke,
            };
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::NODES_DESTRUCTIVE))
                    .json(&payload)
            })?;
            let done: NodesChanged = answer(&body)?;
            if revoke {
                println!("{} node(s): destructive disk steps revoked", done.nodes);
            } else {
                println!("{} node(s): destructive disk steps allowed", done.nodes);
            }
        }
        NodesCommand::Suite {
            suite,
            select,
            server,
        } => {
            let payload = SuiteRequest {
                select: select.selector(),
                suite: suite.clone(),
            };
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::NODES_SUITE))
                    .json(&payload)
            })?;
            let done: NodesChanged = answer(&body)?;
            println!("{} node(s) assigned suite {suite}", done.nodes);
        }
        NodesCommand::Batch {
            name,
            clear: _,
            select,
            server,
        } => {
            let payload = BatchRequest {
                select: select.selector(),
                batch: name.clone(),
            };
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::NODES_BATCH))
                    .json(&payload)
            })?;
            let done: NodesChanged = answer(&body)?;
            match name {
                Some(name) => println!("{} node(s) put in batch {name}", done.nodes),
                None => println!("{} node(s) taken out of their batch", done.nodes),
            }
        }
    }
    Ok(super::EXIT_OK)
}

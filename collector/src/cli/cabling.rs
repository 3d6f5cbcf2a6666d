//! `kiln cabling import|list`: the site's cabling map, each node's interface and the switch
//! port it goes to, against which every run's LLDP is checked.

use std::path::PathBuf;

use clap::Subcommand;
use kiln_protocol::api::CableLine;
use kiln_protocol::routes;

use super::client::ServerArgs;

#[derive(Debug, Subcommand)]
pub(super) enum CablingCommand {
    /// Replace the map with a CSV of `node,interface,switch,port` (node: its host name or a
    /// MAC; interface: kernel name, MAC or PCI address; switch: its LLDP system name; port:
    /// its LLDP port ID). A bad line keeps the old map and is named.
    Import {
        /// The CSV file.
        file: PathBuf,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the map.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub(super) fn run(cmd: CablingCommand) -> anyhow::Result<u8> {
    match cmd {
        CablingCommand::Import { file, server } => {
            let csv = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", file.display()))?;
            let body = server.send(true, |c, base| {
                c.post(format!("{base}{}", routes::CABLING))
                    .header("content-type", "text/csv")
                    .body(csv)
            })?;
            let done: serde_json::Value = serde_json::from_str(&body).map_err(|e| {
                anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
            })?;
            println!(
                "{}: the map holds {} cable(s)",
                file.display(),
                done["cables"]
            );
        }
        CablingCommand::List { server } => {
            let body = server.send(false, |c, base| c.get(format!("{base}{}", routes::CABLING)))?;
            let map: Vec<CableLine> = serde_json::from_str(&body).map_err(|e| {
                anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
            })?;
            let rows: Vec<Vec<String>> = map
                .into_iter()
                .map(|c| vec![c.node, c.interface, c.switch, c.port])
                .collect();
            print!(
                "{}",
                kiln_protocol::text::table(
                    &["node", "interface", "switch", "port"],
                    &rows,
                    40,
                    usize::MAX
                )
            );
        }
    }
    Ok(super::EXIT_OK)
}

//! `kiln collectors`: the collectors sharing the database, whether each is live, its last
//! heartbeat and the leases it holds (a node's console, its power).

use clap::Args;
use kiln_protocol::api::CollectorState;
use kiln_protocol::routes;

use super::client::ServerArgs;

#[derive(Debug, Args)]
pub(super) struct CollectorsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

/// Prints the collectors; exits 1 when one the database knows is not live.
pub(super) fn list(args: CollectorsArgs) -> anyhow::Result<u8> {
    let body = args.server.send(false, |c, base| {
        c.get(format!("{base}{}", routes::COLLECTORS))
    })?;
    let collectors: Vec<CollectorState> = serde_json::from_str(&body).map_err(|e| {
        anyhow::anyhow!("the collector answered something unexpected ({e}): {body}")
    })?;
    print!("{}", table(&collectors));
    Ok(if collectors.iter().all(|c| c.live) {
        super::EXIT_OK
    } else {
        super::EXIT_FAILURE_FOUND
    })
}

/// The table `kiln collectors` prints.
fn table(collectors: &[CollectorState]) -> String {
    let rows: Vec<Vec<String>> = collectors
        .iter()
        .map(|c| {
            let leases = match c.leases.len() {
                0 => "none".to_owned(),
                n => format!(
                    "{n}: {}",
                    c.leases
                        .iter()
                        .take(4)
                        .map(|(resource, epoch, _)| format!("{resource} (epoch {epoch})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                        + if n > 4 { ", …" } else { "" }
                ),
            };
            vec![
                c.id.clone(),
                c.url.clone(),
                if c.live { "live" } else { "gone" }.to_owned(),
                kiln_protocol::junit::rfc3339(c.heartbeat_ms.max(0) as u64),
                leases,
            ]
        })
        .collect();
    kiln_protocol::text::table(
        &["collector", "url", "state", "last heartbeat", "leases"],
        &rows,
        60,
        usize::MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_collector_its_state_and_leases_escaped() {
        let c = |id: &str, live: bool, leases: usize| CollectorState {
            id: id.into(),
            url: "http://10.0.0.1:8080".into(),
            started_ms: 0,
            heartbeat_ms: 1_796_538_120_956,
            live,
            leases: (0..leases)
                .map(|n| (format!("console:{n}"), 1, 0))
                .collect(),
        };
        let text = table(&[c("a:8080", true, 6), c("b\u{1b}[2J:8080", false, 0)]);
        assert!(text.contains("live"), "{text}");
        assert!(text.contains("6: console:0 (epoch 1), console:1 (epoch 1), console:2 (epoch 1), console:3 (epoch 1), …"), "{text}");
        assert!(text.contains("gone") && text.contains("none"), "{text}");
        assert!(
            !text.contains('\u{1b}'),
            "a control character reached the terminal: {text}"
        );
    }
}

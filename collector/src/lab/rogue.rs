//! `--rogue-peer`: an attacker on the lab's boot network, doing what any host there can. It
//! asks the collector for a boot script as a node would (an unknown MAC and serial), takes
//! the run and the bootstrap token the script hands out, exchanges the token for a session,
//! claims to hold every piece of the payload, and serves bytes of the right length that are
//! not the payload. The nodes it is granted to must catch every such piece by its hash,
//! fetch it again elsewhere and name it — and none may boot on its bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kiln_protocol::payload::{GrantsRequest, Manifest, Pieces};
use kiln_protocol::routes;

/// Its MAC and serial on the boot network.
pub const MAC: &str = "52:54:00:6b:00:ee";
/// Its serial.
pub const SERIAL: &str = "KILNROGUE";

/// The running rogue; stops serving when dropped.
pub struct Rogue {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its run, once it has one (for the report).
    pub run_id: i64,
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The value of `name=` in a kernel command line inside an iPXE script.
fn arg<'a>(script: &'a str, name: &str) -> Option<&'a str> {
    let at = script.find(&format!(" {name}="))? + name.len() + 2;
    script[at..].split_whitespace().next()
}

/// Starts the rogue against the collector's boot listener at `base`: it has joined the
/// payload's swarm, claiming every piece, when this returns.
pub fn start(base: &str) -> anyhow::Result<Rogue> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let (run_id, token, manifest) = runtime.block_on(async {
        let script = http
            .get(format!(
                "{base}/ipxe?mac={}&serial={SERIAL}&platform=pcbios",
                MAC.replace(':', "-")
            ))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let (Some(run), Some(bootstrap)) = (arg(&script, "kiln.run"), arg(&script, "kiln.token"))
        else {
            anyhow::bail!("the rogue was not handed a Linux stage: {script}");
        };
        let run_id: i64 = run.parse()?;
        let session: kiln_protocol::wire::SessionResponse = http
            .post(routes::url(base, routes::SESSION, run_id))
            .bearer_auth(bootstrap)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let manifest: Manifest = http
            .get(routes::url(base, routes::PAYLOAD, run_id))
            .bearer_auth(&session.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        anyhow::Ok((run_id, session.token, manifest))
    })?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("0.0.0.0:0"))?;
    let port = listener.local_addr()?.port();
    let sizes: Vec<u64> = (0..manifest.pieces.len())
        .map(|i| manifest.piece_len(i).unwrap_or(0))
        .collect();
    let app = axum::Router::new().route(
        kiln_agent::payload::PIECE_ROUTE,
        axum::routing::get(
            move |axum::extract::Path(index): axum::extract::Path<usize>| {
                let len = sizes.get(index).copied().unwrap_or(0) as usize;
                // The right length, the wrong bytes.
                async move { vec![0xa5u8; len] }
            },
        ),
    );
    runtime.spawn(axum::serve(listener, app).into_future());
    let all = Pieces::all(manifest.pieces.len());
    runtime.block_on(async {
        http.post(routes::url(base, routes::PAYLOAD_GRANTS, run_id))
            .bearer_auth(&token)
            .json(&GrantsRequest {
                have: all,
                port: Some(port),
            })
            .send()
            .await?
            .error_for_status()?;
        anyhow::Ok(())
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        runtime.shutdown_background();
    });
    Ok(Rogue {
        stop,
        thread: Some(thread),
        run_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_and_token_are_read_off_the_script_as_the_kernel_would() {
        let script = "kernel http://c/artifacts/vmlinuz console=ttyS0 kiln.run=12 kiln.token=abc kiln.node=3 || goto failed";
        assert_eq!(arg(script, "kiln.run"), Some("12"));
        assert_eq!(arg(script, "kiln.token"), Some("abc"));
        assert_eq!(arg(script, "kiln.url"), None);
    }
}

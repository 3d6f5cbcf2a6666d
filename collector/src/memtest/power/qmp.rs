//! QEMU's monitor protocol: a reset is `system_reset`, an off is `quit`; key presses for
//! memtest86+'s menu go the same way. QEMU has no power-off that keeps the machine, so a cold
//! cycle stops the vCPUs, pauses, resets and resumes them.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Action;

/// How long a cold cycle keeps the vCPUs stopped.
const COLD_PAUSE: Duration = Duration::from_secs(3);

/// Resets or stops the VM behind the QMP socket `path`.
pub(super) async fn act(path: &std::path::Path, action: Action) -> anyhow::Result<()> {
    let command = match action {
        Action::Reset | Action::Warm => "system_reset",
        Action::Off => "quit",
        Action::Cold => {
            qmp(path, &[serde_json::json!({ "execute": "stop" })]).await?;
            tokio::time::sleep(COLD_PAUSE).await;
            let reset = serde_json::json!({ "execute": "system_reset" });
            let cont = serde_json::json!({ "execute": "cont" });
            return qmp(path, &[reset, cont]).await.map(|_| ());
        }
    };
    qmp(path, &[serde_json::json!({ "execute": command })])
        .await
        .map(|_| ())
}

/// Runs QMP commands on a fresh connection; returns their answers.
pub async fn qmp(
    path: &std::path::Path,
    commands: &[serde_json::Value],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let work =
        async {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| anyhow::anyhow!("QMP {}: {e}", path.display()))?;
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let greeting = lines.next_line().await?.ok_or_else(|| {
                anyhow::anyhow!("QMP {}: closed before its greeting", path.display())
            })?;
            anyhow::ensure!(
                greeting.contains("QMP"),
                "QMP {}: unexpected greeting {greeting}",
                path.display()
            );
            let mut answers = Vec::new();
            for command in std::iter::once(&serde_json::json!({ "execute": "qmp_capabilities" }))
                .chain(commands)
            {
                write.write_all(format!("{command}\n").as_bytes()).await?;
                loop {
                    let line = lines.next_line().await?.ok_or_else(|| {
                        anyhow::anyhow!("QMP {}: closed mid-command", path.display())
                    })?;
                    let value: serde_json::Value = serde_json::from_str(&line)?;
                    if value.get("event").is_some() {
                        continue;
                    }
                    if let Some(err) = value.get("error") {
                        anyhow::bail!("QMP {}: {command} failed: {err}", path.display());
                    }
                    answers.push(value);
                    break;
                }
            }
            Ok(answers.split_off(1))
        };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow::anyhow!("QMP {}: no answer within 10 s", path.display()))?
}

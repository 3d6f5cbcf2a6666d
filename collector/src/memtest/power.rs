//! Power drivers: what moves a node to its next stage once memtest86+ has a verdict. `qmp`
//! speaks QEMU's monitor protocol; `ipmitool` runs the BMC's chassis commands; `manual` says
//! what an operator must do. A driver failure is reported, never ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How a node's power is controlled. In YAML: `{qmp: SOCKET}`, `{ipmitool: {host, user,
/// password_file}}` or `{manual: true}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPower")]
pub enum Power {
    /// QEMU's QMP socket (a Unix socket path).
    Qmp(PathBuf),
    /// `ipmitool -I lanplus -H HOST -U USER -E chassis power …` with the password in a file
    /// (passed as IPMI_PASSWORD, never on the command line or in logs).
    Ipmitool {
        /// BMC address.
        host: String,
        /// BMC user.
        user: String,
        /// File holding the password.
        password_file: PathBuf,
    },
    /// Nothing automatic: the collector logs what to do.
    Manual,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPower {
    qmp: Option<PathBuf>,
    ipmitool: Option<RawIpmi>,
    manual: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpmi {
    host: String,
    user: String,
    password_file: PathBuf,
}

impl TryFrom<RawPower> for Power {
    type Error = String;

    fn try_from(raw: RawPower) -> Result<Self, String> {
        match (raw.qmp, raw.ipmitool, raw.manual) {
            (Some(path), None, None) => Ok(Power::Qmp(path)),
            (None, Some(i), None) => Ok(Power::Ipmitool { host: i.host, user: i.user, password_file: i.password_file }),
            (None, None, Some(true)) => Ok(Power::Manual),
            _ => Err("expected exactly one of `qmp: SOCKET`, `ipmitool: {host, user, password_file}` or `manual: true`".into()),
        }
    }
}

/// What to do to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hard reset (power cycle).
    Reset,
    /// Power off.
    Off,
}

impl Power {
    /// Performs `action`; errors say which driver failed and why.
    pub async fn act(&self, node: &str, action: Action) -> anyhow::Result<()> {
        match self {
            Power::Qmp(path) => {
                let command = match action {
                    Action::Reset => "system_reset",
                    Action::Off => "quit",
                };
                qmp(path, &[serde_json::json!({ "execute": command })])
                    .await
                    .map(|_| ())
            }
            Power::Ipmitool {
                host,
                user,
                password_file,
            } => {
                let password = tokio::fs::read_to_string(password_file)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "ipmitool for {node}: cannot read {}: {e}",
                            password_file.display()
                        )
                    })?;
                let verb = match action {
                    Action::Reset => "cycle",
                    Action::Off => "off",
                };
                let out = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::process::Command::new("ipmitool")
                        .args([
                            "-I", "lanplus", "-H", host, "-U", user, "-E", "chassis", "power", verb,
                        ])
                        .env("IPMI_PASSWORD", password.trim())
                        .output(),
                )
                .await
                .map_err(|_| {
                    anyhow::anyhow!("ipmitool for {node}: no answer from {host} within 30 s")
                })?
                .map_err(|e| anyhow::anyhow!("ipmitool for {node}: cannot run ipmitool: {e}"))?;
                anyhow::ensure!(
                    out.status.success(),
                    "ipmitool for {node}: chassis power {verb} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                Ok(())
            }
            Power::Manual => {
                tracing::warn!(
                    node,
                    ?action,
                    "manual power: an operator must {} this node now",
                    if action == Action::Reset {
                        "reset"
                    } else {
                        "power off"
                    }
                );
                Ok(())
            }
        }
    }

    /// Sends key presses (QMP only), e.g. to deselect memtest86+ tests in its F1 menu.
    pub async fn send_keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let Power::Qmp(path) = self else {
            anyhow::bail!("only the qmp power driver can send keys")
        };
        for key in keys {
            qmp(path, &[serde_json::json!({ "execute": "send-key", "arguments": { "keys": [{ "type": "qcode", "data": key }] } })]).await?;
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        Ok(())
    }
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

/// The F1-menu keys that deselect memtest86+ (6.x) test `n`.
pub fn deselect_keys(n: u8) -> Vec<String> {
    let mut keys = vec!["f1".to_owned(), "f1".to_owned(), "f2".to_owned()];
    keys.extend(n.to_string().chars().map(|c| c.to_string()));
    keys.push("ret".to_owned());
    keys.push("f10".to_owned());
    keys.push("f10".to_owned());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_10_is_deselected_with_the_known_key_sequence() {
        assert_eq!(
            deselect_keys(10),
            ["f1", "f1", "f2", "1", "0", "ret", "f10", "f10"]
        );
    }

    #[tokio::test]
    async fn qmp_speaks_the_protocol_and_reports_errors() {
        let dir = std::env::temp_dir().join(format!("kiln-qmp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write
                .write_all(b"{\"QMP\": {\"version\": {}}}\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push(line.clone());
                let reply = if line.contains("bogus") {
                    "{\"error\": {\"class\": \"CommandNotFound\"}}\n"
                } else {
                    "{\"event\": \"RESET\"}\n{\"return\": {}}\n"
                };
                write.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        Power::Qmp(path.clone())
            .act("n1", Action::Reset)
            .await
            .unwrap();
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            [
                "{\"execute\":\"qmp_capabilities\"}",
                "{\"execute\":\"system_reset\"}"
            ]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! `ipmitool -I lanplus … chassis power cycle|off`, the password passed as `IPMI_PASSWORD`
//! (never on the command line or in logs), bounded at 30 s.

use std::path::Path;
use std::time::Duration;

use super::Action;

/// Power-cycles or powers off `node` through its BMC at `host`.
pub(super) async fn act(
    node: &str,
    host: &str,
    user: &str,
    password_file: &Path,
    action: Action,
) -> anyhow::Result<()> {
    let password = tokio::fs::read_to_string(password_file)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "ipmitool for {node}: cannot read {}: {e}",
                password_file.display()
            )
        })?;
    let verb = match action {
        Action::Reset | Action::Cold => "cycle",
        Action::Off => "off",
        Action::Warm => "reset",
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
    .map_err(|_| anyhow::anyhow!("ipmitool for {node}: no answer from {host} within 30 s"))?
    .map_err(|e| anyhow::anyhow!("ipmitool for {node}: cannot run ipmitool: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "ipmitool for {node}: chassis power {verb} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

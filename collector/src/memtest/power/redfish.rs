//! Redfish: `ComputerSystem.Reset` (`ForceRestart`, `ForceOff`) posted to the BMC over HTTPS,
//! the certificate always checked, the password read from its file.

use std::path::Path;

use super::Action;
use super::https;

/// A BMC as the configuration names it.
pub(super) struct Bmc<'a> {
    /// Base URL, `https://…`.
    pub url: &'a str,
    /// System id under `/redfish/v1/Systems/`.
    pub system: &'a str,
    /// BMC user.
    pub user: &'a str,
    /// File holding the password.
    pub password_file: &'a Path,
    /// PEM file of the CA the BMC's certificate chains to.
    pub ca_file: Option<&'a Path>,
}

/// Restarts or powers off `node` through its BMC.
pub(super) async fn act(node: &str, bmc: Bmc<'_>, action: Action) -> anyhow::Result<()> {
    let password = tokio::fs::read_to_string(bmc.password_file)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "redfish for {node}: cannot read {}: {e}",
                bmc.password_file.display()
            )
        })?;
    let kind = match action {
        Action::Reset | Action::Warm => "ForceRestart",
        Action::Off => "ForceOff",
        Action::Cold => "PowerCycle",
    };
    redfish_reset(
        bmc.url,
        bmc.system,
        bmc.user,
        password.trim(),
        bmc.ca_file,
        kind,
    )
    .await
    .map_err(|e| anyhow::anyhow!("redfish for {node}: {e:#}"))
}

/// POSTs `ComputerSystem.Reset` with `ResetType: kind` to the BMC at `url` (under
/// `/redfish/v1/Systems/{system}/Actions/`). Certificates are always checked: against the
/// system roots, or against `ca_file` alone when given.
pub async fn redfish_reset(
    url: &str,
    system: &str,
    user: &str,
    password: &str,
    ca_file: Option<&Path>,
    kind: &str,
) -> anyhow::Result<()> {
    let endpoint = format!(
        "{}/redfish/v1/Systems/{system}/Actions/ComputerSystem.Reset",
        url.trim_end_matches('/')
    );
    let body = serde_json::json!({ "ResetType": kind }).to_string();
    let answer = https::post_json(&endpoint, (user, password), ca_file, &body).await?;
    if !(200..300).contains(&answer.status) {
        anyhow::bail!(
            "POST {endpoint} answered {}: {}",
            answer.status,
            answer.body.chars().take(300).collect::<String>()
        );
    }
    Ok(())
}

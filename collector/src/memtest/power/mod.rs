//! Power drivers: what moves a node to its next stage once memtest86+ has a verdict, one
//! room each — `qmp` speaks QEMU's monitor protocol, `ipmitool` runs the BMC's chassis
//! commands, `redfish` posts `ComputerSystem.Reset` over HTTPS (through the small TLS client in
//! `https`), `manual` says what an operator must do. A driver failure is reported, never
//! ignored, and every call is counted in the metrics.

mod https;
mod ipmitool;
mod manual;
mod qmp;
mod redfish;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use qmp::qmp;
pub use redfish::redfish_reset;

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
    /// Redfish `ComputerSystem.Reset` over HTTPS, certificate checked (system roots, or
    /// `ca_file`); the password comes from a file.
    Redfish {
        /// BMC base URL, `https://…`.
        url: String,
        /// System id under `/redfish/v1/Systems/`.
        system: String,
        /// BMC user.
        user: String,
        /// File holding the password.
        password_file: PathBuf,
        /// PEM file of the CA (or self-signed certificate) the BMC's certificate chains to.
        ca_file: Option<PathBuf>,
    },
    /// Nothing automatic: the collector logs what to do.
    Manual,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPower {
    qmp: Option<PathBuf>,
    ipmitool: Option<RawIpmi>,
    redfish: Option<RawRedfish>,
    manual: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedfish {
    url: String,
    #[serde(default = "default_system")]
    system: String,
    user: String,
    password_file: PathBuf,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

fn default_system() -> String {
    "1".into()
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
        match (raw.qmp, raw.ipmitool, raw.redfish, raw.manual) {
            (Some(path), None, None, None) => Ok(Power::Qmp(path)),
            (None, Some(i), None, None) => Ok(Power::Ipmitool { host: i.host, user: i.user, password_file: i.password_file }),
            (None, None, Some(r), None) => {
                if !r.url.starts_with("https://") {
                    return Err(format!("redfish url {:?}: expected https:// (the BMC password travels with it)", r.url));
                }
                if r.system.is_empty() || !r.system.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                    return Err(format!("redfish system {:?}: expected an id like 1 or System.Embedded.1", r.system));
                }
                Ok(Power::Redfish { url: r.url, system: r.system, user: r.user, password_file: r.password_file, ca_file: r.ca_file })
            }
            (None, None, None, Some(true)) => Ok(Power::Manual),
            _ => Err("expected exactly one of `qmp: SOCKET`, `ipmitool: {host, user, password_file}`, `redfish: {url, user, password_file[, system, ca_file]}` or `manual: true`".into()),
        }
    }
}

/// What to do to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Move the node to its next boot (each driver's strongest reset).
    Reset,
    /// Power off.
    Off,
    /// A warm power cycle: a reset with the power kept.
    Warm,
    /// A cold power cycle: power off, a pause, power on.
    Cold,
}

impl Action {
    /// The action's name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::Off => "off",
            Action::Warm => "warm",
            Action::Cold => "cold",
        }
    }
}

impl Power {
    /// The driver's name.
    pub fn driver(&self) -> &'static str {
        match self {
            Power::Qmp(_) => "qmp",
            Power::Ipmitool { .. } => "ipmitool",
            Power::Redfish { .. } => "redfish",
            Power::Manual => "manual",
        }
    }

    /// Performs `action`; errors say which driver failed and why. Every call is counted in
    /// the metrics, by driver and action, and so is every failure.
    pub async fn act(&self, node: &str, action: Action) -> anyhow::Result<()> {
        let result = match self {
            Power::Qmp(path) => qmp::act(path, action).await,
            Power::Ipmitool {
                host,
                user,
                password_file,
            } => ipmitool::act(node, host, user, password_file, action).await,
            Power::Redfish {
                url,
                system,
                user,
                password_file,
                ca_file,
            } => {
                redfish::act(
                    node,
                    redfish::Bmc {
                        url,
                        system,
                        user,
                        password_file,
                        ca_file: ca_file.as_deref(),
                    },
                    action,
                )
                .await
            }
            Power::Manual => {
                manual::act(node, action);
                Ok(())
            }
        };
        crate::metrics::METRICS.power(self.driver(), action.name(), result.is_ok());
        result
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
mod tests;

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
    /// Hard reset (power cycle).
    Reset,
    /// Power off.
    Off,
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
        let result = self.drive(node, action).await;
        let name = match action {
            Action::Reset => "reset",
            Action::Off => "off",
        };
        crate::metrics::METRICS.power(self.driver(), name, result.is_ok());
        result
    }

    async fn drive(&self, node: &str, action: Action) -> anyhow::Result<()> {
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
            Power::Redfish {
                url,
                system,
                user,
                password_file,
                ca_file,
            } => {
                let password = tokio::fs::read_to_string(password_file)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "redfish for {node}: cannot read {}: {e}",
                            password_file.display()
                        )
                    })?;
                let kind = match action {
                    Action::Reset => "ForceRestart",
                    Action::Off => "ForceOff",
                };
                redfish_reset(url, system, user, password.trim(), ca_file.as_deref(), kind)
                    .await
                    .map_err(|e| anyhow::anyhow!("redfish for {node}: {e:#}"))
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

/// POSTs `ComputerSystem.Reset` to a BMC over HTTPS. Certificates are always checked:
/// against the system roots, or against `ca_file` alone when given. (A small HTTP/1.1 client
/// on rustls: one request, `Connection: close`; it keeps TLS out of every other HTTP client.)
pub async fn redfish_reset(
    url: &str,
    system: &str,
    user: &str,
    password: &str,
    ca_file: Option<&std::path::Path>,
    kind: &str,
) -> anyhow::Result<()> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("{url}: expected https://"))?;
    let (authority, base_path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
            h.trim_matches(['[', ']']),
            p.parse::<u16>()
                .map_err(|_| anyhow::anyhow!("{url}: bad port"))?,
        ),
        _ => (authority.trim_matches(['[', ']']), 443),
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?
            {
                roots.add(cert.map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let path = format!(
        "/{}{}redfish/v1/Systems/{system}/Actions/ComputerSystem.Reset",
        base_path.trim_matches('/'),
        if base_path.trim_matches('/').is_empty() {
            ""
        } else {
            "/"
        }
    );
    let endpoint = format!("https://{authority}{path}");
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host, port)).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let body = serde_json::json!({ "ResetType": kind }).to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            base64(format!("{user}:{password}").as_bytes()),
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // Bounded: the status line and a little of the body are all that matter.
        let _ = (&mut tls).take(64 * 1024).read_to_end(&mut response).await;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("POST {endpoint}: no answer within 30 s"))?
        .map_err(|e| anyhow::anyhow!("POST {endpoint}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("POST {endpoint}: no HTTP answer"))?;
    if !(200..300).contains(&status) {
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        anyhow::bail!(
            "POST {endpoint} answered {status}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    Ok(())
}

/// Standard base64 (for the Basic authorization header).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    /// A one-connection-at-a-time HTTPS server with an openssl-made self-signed certificate,
    /// answering `status` and recording each request it could read.
    async fn tls_bmc(
        dir: &std::path::Path,
        status: &'static str,
    ) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use rustls::pki_types::pem::PemObject;
        use tokio::io::AsyncReadExt;
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is installed by .ci/setup");
        assert!(ok.success());
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("cert.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("ResetType") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&got).into_owned());
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = tls.write_all(reply.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn redfish_checks_certificates_and_posts_the_reset() {
        let dir = std::env::temp_dir().join(format!("kiln-redfish-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (port, seen) = tls_bmc(&dir, "204 No Content").await;
        std::fs::write(dir.join("pw"), "s3cret\n").unwrap();
        let power = |ca: Option<PathBuf>| Power::Redfish {
            url: format!("https://127.0.0.1:{port}"),
            system: "1".into(),
            user: "admin".into(),
            password_file: dir.join("pw"),
            ca_file: ca,
        };
        // Checking is on by default: a self-signed BMC is refused and hears nothing.
        let err = power(None)
            .act("n1", Action::Reset)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificate") || err.contains("UnknownIssuer"),
            "{err}"
        );
        assert!(seen.lock().unwrap().is_empty());
        // Trusting that certificate explicitly: the reset is posted with the credentials.
        power(Some(dir.join("cert.pem")))
            .act("n1", Action::Reset)
            .await
            .unwrap();
        let request = seen.lock().unwrap()[0].clone();
        assert!(
            request.starts_with("POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset HTTP/1.1"),
            "{request}"
        );
        assert!(
            request
                .to_lowercase()
                .contains("authorization: basic ywrtaw46cznjcmv0"),
            "{request}"
        );
        assert!(
            request.contains(r#"{"ResetType":"ForceRestart"}"#),
            "{request}"
        );
        // A BMC that says no is a reported failure.
        let (port, _) = tls_bmc(&dir, "401 Unauthorized").await;
        let refused = Power::Redfish {
            url: format!("https://127.0.0.1:{port}"),
            system: "1".into(),
            user: "admin".into(),
            password_file: dir.join("pw"),
            ca_file: Some(dir.join("cert.pem")),
        };
        let err = refused
            .act("n1", Action::Off)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("401"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("admin:s3cret", "YWRtaW46czNjcmV0"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn redfish_needs_https() {
        let err =
            serde_yaml::from_str::<Power>("redfish: {url: http://bmc, user: a, password_file: /p}")
                .unwrap_err()
                .to_string();
        assert!(err.contains("expected https://"), "{err}");
    }
}

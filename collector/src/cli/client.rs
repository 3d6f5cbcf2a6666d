//! How the operator commands reach a running collector: its management URL and tokens from
//! flags or the environment, over HTTPS with the collector's certificate pinned on first use
//! (as SSH pins host keys), and requests whose errors carry the server's message.

use std::path::PathBuf;

use clap::Args;

/// Where the collector is and how to authenticate.
#[derive(Debug, Args, Clone)]
pub(super) struct ServerArgs {
    /// The collector's management URL [env: KILN_URL] [default: https://127.0.0.1:8443].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The certificate fingerprint to expect (`sha256:…`, as `kiln serve` prints it)
    /// [env: KILN_FINGERPRINT]; otherwise the one pinned in ~/.config/kiln/known_collectors
    /// ($KILN_KNOWN_COLLECTORS), or, on first use, the one shown, which is then pinned.
    #[arg(long, value_name = "SHA256")]
    fingerprint: Option<String>,
    /// File holding the admin or read token (default: $KILN_ADMIN_TOKEN, $KILN_READ_TOKEN, or
    /// ./kiln-data/admin.token when present).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl ServerArgs {
    fn base(&self) -> String {
        self.server
            .clone()
            .or_else(|| std::env::var("KILN_URL").ok())
            .unwrap_or_else(|| "https://127.0.0.1:8443".into())
            .trim_end_matches('/')
            .to_owned()
    }

    fn token(&self, admin: bool) -> anyhow::Result<Option<String>> {
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .map_err(|e| anyhow::anyhow!("{}: cannot read the token: {e}", file.display()))?;
            return Ok(Some(text.trim().to_owned()));
        }
        let env = if admin {
            "KILN_ADMIN_TOKEN"
        } else {
            "KILN_READ_TOKEN"
        };
        if let Ok(token) = std::env::var(env).or_else(|_| std::env::var("KILN_ADMIN_TOKEN")) {
            return Ok(Some(token));
        }
        Ok(std::fs::read_to_string("kiln-data/admin.token")
            .ok()
            .map(|t| t.trim().to_owned()))
    }

    /// Sends a request built by `build` (given the client and base URL) and returns the body.
    pub(super) fn send(
        &self,
        admin: bool,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<String> {
        let bytes = self.send_bytes(admin, build)?;
        String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("the collector answered something that is not text"))
    }

    /// [`Self::send`], the answer as bytes (a workbook).
    pub(super) fn send_bytes(
        &self,
        admin: bool,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Vec<u8>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let base = self.base();
        let token = self.token(admin)?;
        let timeout = std::time::Duration::from_secs(60);
        let known = crate::tls::KnownCollectors::default_place();
        let authority = base
            .strip_prefix("https://")
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_owned());
        let pin = self
            .fingerprint
            .clone()
            .or_else(|| std::env::var("KILN_FINGERPRINT").ok())
            .or_else(|| authority.as_deref().and_then(|a| known.pin(a)));
        runtime.block_on(async {
            let client = reqwest::Client::builder().timeout(timeout).build()?;
            let mut request = build(&client, &base);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (status, body) = match &authority {
                None => {
                    let response = request
                        .send()
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot reach the collector at {base}: {e}"))?;
                    (response.status().as_u16(), response.bytes().await?.to_vec())
                }
                Some(authority) => {
                    let seen = crate::tls::Seen::default();
                    let answer = crate::tls::send_pinned(request.build()?, pin.clone(), &seen, timeout).await;
                    let shown = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(e) => match (&pin, shown) {
                            (Some(pin), Some(shown)) if *pin != shown => anyhow::bail!(
                                "the collector at {base} shows the certificate {shown}, not {pin} as pinned{}: if the certificate was replaced on purpose, remove that line (or pass --fingerprint)",
                                if self.fingerprint.is_some() || std::env::var("KILN_FINGERPRINT").is_ok() {
                                    String::from(" by --fingerprint / KILN_FINGERPRINT")
                                } else {
                                    format!(" in {}", known.path().display())
                                }
                            ),
                            _ => anyhow::bail!("cannot reach the collector at {base}: {e:#}"),
                        },
                    };
                    if let (None, Some(shown)) = (&pin, shown) {
                        known.add(authority, &shown)?;
                        eprintln!(
                            "kiln: pinned the collector at {authority} to its certificate {shown} (first use; kept in {})",
                            known.path().display()
                        );
                    }
                    (answer.status, answer.body)
                }
            };
            if !(200..300).contains(&status) {
                let body = String::from_utf8_lossy(&body).into_owned();
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(body);
                anyhow::bail!("the collector answered {status}: {message}");
            }
            Ok(body)
        })
    }
}

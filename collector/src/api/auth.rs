//! Who may call: the extractors that check a request's bearer token before its handler runs
//! (an agent's run token, an open run's session token, the admin token, the read token).

use axum::extract::Request;
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;
use crate::tokens;

/// A run id and the hash of the bearer token that came with it, not checked yet (the call
/// checks it where it touches the run).
pub struct RunToken {
    /// The run in the path.
    pub run_id: i64,
    /// Hash of the bearer token.
    pub hash: String,
}

impl axum::extract::FromRequestParts<AppState> for RunToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(run_id) =
            axum::extract::Path::<i64>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let token = tokens::bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "agent calls need their run's token (Authorization: Bearer …)".into(),
            )
        })?;
        Ok(RunToken {
            run_id,
            hash: tokens::hash(token),
        })
    }
}

/// The address a request came from (the peer's IP), when the server knows it: a run's Linux
/// stage and its session each belong to one source.
pub struct Source(pub Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Source(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|axum::extract::ConnectInfo(addr)| addr.ip().to_string()),
        ))
    }
}

/// The caller holds run `.0`'s token. Checked before the body is read, so a caller without
/// the right token learns nothing from validation messages.
pub struct RunAuth(pub i64);

impl axum::extract::FromRequestParts<AppState> for RunAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let RunToken { run_id, hash } = RunToken::from_request_parts(parts, state).await?;
        state.require_run_hash(run_id, hash).await?;
        Ok(RunAuth(run_id))
    }
}

/// Lets a request through only when it holds an open run's session token.
pub(super) async fn open_run_only(
    _run: OpenRunSession,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    next.run(req).await
}

/// The caller holds the session token of some open run (which run does not matter).
pub struct OpenRunSession;

impl axum::extract::FromRequestParts<AppState> for OpenRunSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = tokens::bearer(&parts.headers).ok_or_else(|| {
            ApiError::Unauthorized(
                "the bandwidth endpoints need a run's session token (Authorization: Bearer …)"
                    .into(),
            )
        })?;
        let hash = tokens::hash(token);
        let open = state
            .db
            .read(move |c| crate::lifecycle::open_run_with_session(c, &hash))
            .await?;
        match open {
            Some(_) => Ok(OpenRunSession),
            None => Err(ApiError::Forbidden(
                "the token is not the session token of an open run".into(),
            )),
        }
    }
}

/// The caller holds the admin token.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.require_admin(&parts.headers)?;
        Ok(Admin)
    }
}

/// The caller may read reports (always, when no read token is configured).
pub struct Reader;

impl axum::extract::FromRequestParts<AppState> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.require_reader(&parts.headers)?;
        Ok(Reader)
    }
}

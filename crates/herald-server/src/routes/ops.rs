//! Health, readiness, metrics and the audit check.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::audit::{VerifyReport, verify};

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let head = state
        .store
        .head()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the event store is not reachable: {e}")))?;
    Ok(Json(serde_json::json!({ "status": "ready", "head": head.position })))
}

pub async fn metrics() -> Response {
    let mut r = crate::metrics::render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub async fn audit_verify(State(state): State<AppState>, Viewer(_): Viewer) -> Result<Response, ApiError> {
    let report: VerifyReport = verify(&*state.store, |_, _| {}).await?;
    if let (false, Some(position), Some(problem)) = (report.ok, report.first_bad_position, &report.problem) {
        tracing::error!(position, %problem, "hash chain verification failed");
    }
    Ok((StatusCode::OK, Json(report)).into_response())
}

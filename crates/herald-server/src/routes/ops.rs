//! Health, readiness, metrics and the audit check.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use herald_core::audit::{Expect, VerifyReport};
use herald_core::envelope::GENESIS_HASH;
use herald_core::store::{Filter, WriteHealth};
use serde_json::{Value, json};

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the write path works (the writer runs and its last batch
/// committed) and the store answers a read. Cheap: two atomic loads and one
/// indexed read.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.store.write_health() {
        WriteHealth::Ok => {}
        WriteHealth::Failing(cause) => {
            return Err(ApiError::Unavailable(format!(
                "the event store cannot write: {cause} (ready again after the next commit succeeds)"
            )));
        }
        WriteHealth::Down(cause) => {
            return Err(ApiError::Unavailable(format!(
                "the event store writer is down: {cause}"
            )));
        }
    }
    let head = state
        .store
        .head()
        .await
        .map_err(|e| ApiError::Unavailable(format!("the event store is not reachable: {e}")))?;
    let failing = state.consumer_health.failing();
    if !failing.is_empty() {
        // Every part that is down, so one look says all that is wrong.
        let parts: Vec<String> = failing
            .iter()
            .map(|(name, cause)| {
                if *name == crate::broker_config::RELAY {
                    format!(
                        "the event relay to NATS is not working: {cause} (retried every second from its checkpoint)"
                    )
                } else if state.models.consumer(name).is_some() {
                    format!("the {name} read model cannot keep up with the log: {cause} (retried every second)")
                } else {
                    // The revocation follower, a broker's command consumer.
                    format!("the {name} is not working: {cause} (retried)")
                }
            })
            .collect();
        return Err(ApiError::Unavailable(parts.join("; ")));
    }
    let projections = positions(state.models.consumers(), head.position, "read model").await?;
    // The relay to a broker, when there is one: how far it is.
    let sinks = positions(state.models.sinks(), head.position, "checkpoint").await?;
    Ok(Json(serde_json::json!({
        "status": "ready",
        "head": head.position,
        "projections": projections,
        "relays": sinks,
    })))
}

/// Each consumer's checkpoint and lag behind `head`, by name.
async fn positions(
    consumers: &[std::sync::Arc<dyn herald_store::projection::Consumer>],
    head: u64,
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let mut out = serde_json::Map::new();
    for consumer in consumers {
        let checkpoint = consumer
            .checkpoint()
            .await
            .map_err(|e| ApiError::Unavailable(format!("the {} {what} is not reachable: {e}", consumer.name())))?;
        out.insert(
            consumer.name().to_owned(),
            serde_json::json!({ "position": checkpoint, "lag": head.saturating_sub(checkpoint) }),
        );
    }
    Ok(out)
}

pub async fn metrics() -> Response {
    let mut r = crate::metrics::render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub use crate::limits::{AuditLimits, VERIFY_INTERVAL};

/// `?expect=POSITION:HASH` (the only parameter).
fn parse_expect(query: Option<&str>) -> Result<Option<Expect>, ApiError> {
    let mut expect = None;
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "expect" if expect.is_none() => {
                expect = Some(
                    value
                        .parse::<Expect>()
                        .map_err(|e| ApiError::BadRequest(format!("expect: {e}")))?,
                );
            }
            "expect" => return Err(ApiError::BadRequest("expect: give it once".into())),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown parameter (only expect=POSITION:HASH is accepted)"
                )));
            }
        }
    }
    Ok(expect)
}

pub async fn audit_verify(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    uri: Uri,
) -> Result<Response, ApiError> {
    let expect = parse_expect(uri.query())?;
    let permit = state.audit.begin(&principal.credential_id)?;
    let store = state.store.clone();
    // On a task of its own holding the permit: a client that goes away does
    // not free the slot while the verification still runs.
    let report: VerifyReport = tokio::spawn(async move {
        let _permit = permit;
        store.verify(expect).await
    })
    .await
    .map_err(|e| ApiError::internal(format!("the verification task failed: {e}")))??;
    if let (false, Some(problem)) = (report.ok, &report.problem) {
        tracing::error!(position = report.first_bad_position, %problem, "log verification failed");
    }
    Ok((StatusCode::OK, Json(report)).into_response())
}

/// The head of the log, for a monitor to record and later pass as
/// `?expect=POSITION:HASH` (a removed tail shows only against such an anchor).
pub async fn audit_head(State(state): State<AppState>, Viewer(_): Viewer) -> Result<Json<Value>, ApiError> {
    let head = state.store.head().await?;
    if head.position == 0 {
        return Ok(Json(
            json!({ "position": 0, "hash": GENESIS_HASH, "recorded_at": null }),
        ));
    }
    let page = state.store.read_all(head.position - 1, &Filter::default(), 1).await?;
    let event = page
        .events
        .first()
        .filter(|e| e.position() == head.position)
        .ok_or_else(|| ApiError::internal(format!("the head event {} could not be read", head.position)))?;
    let recorded_at = event
        .envelope()
        .map_err(|e| ApiError::internal(format!("the head event {}: {e}", head.position)))?
        .recorded_at;
    Ok(Json(json!({
        "position": head.position,
        "hash": head.hash,
        "recorded_at": recorded_at,
    })))
}

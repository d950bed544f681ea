//! Admin: API tokens (API.md §7).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::auth::Role;
use serde::Deserialize;

use crate::auth::{Admin, RevokeError, check_token_name, create_token, require_step_up, revoke_token};
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{PathParam, read_json_body};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: Role,
}

pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: CreateToken = read_json_body(&headers, body, 4096).await?;
    check_token_name(&body.name).map_err(ApiError::BadRequest)?;
    require_step_up(&state, &admin, "minting an API token")?;
    let minted = create_token(&*state.store, &*state.credentials, &admin.actor, &body.name, body.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": minted.record.id,
            "token": minted.secret,
            "name": minted.record.name,
            "role": minted.record.role,
            "created_at": minted.record.created_at,
        })),
    )
        .into_response())
}

pub async fn list(State(state): State<AppState>, Admin(_): Admin) -> Result<Response, ApiError> {
    let tokens = state.credentials.list_tokens().await?;
    Ok(Json(serde_json::json!({ "tokens": tokens })).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    match revoke_token(&state, &admin.actor, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::NotFound(format!("there is no live token {id}"))),
        Err(RevokeError::NotRevoked(e)) => Err(e.into()),
        // The revocation stands; the missing audit record is the server's fault.
        Err(e @ RevokeError::NotRecorded(_)) => {
            tracing::error!(token_id = %id, error = %e, "a token revocation was not recorded in the log");
            Err(ApiError::Internal(e.to_string()))
        }
    }
}

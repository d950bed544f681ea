//! `GET /api/deployments[/{id}]` (API.md §5), read from the deployments read model.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use herald_core::names::AggregateId;

use super::aggregate::DeploymentStatus;
use super::projection::{self, Deployments};
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::state::AppState;
use crate::state::model_at;
use crate::wire::{PathParam, json_response, parse_number};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub fn routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    router
        .route("/api/deployments", get(list))
        .route("/api/deployments/{id}", get(one))
}

/// The query of the list and of its resource stream.
pub struct ListQuery {
    pub status: Option<DeploymentStatus>,
    pub limit: usize,
    pub min_position: u64,
}

pub fn list_query(uri: &Uri) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        status: None,
        limit: DEFAULT_LIMIT,
        min_position: 0,
    };
    for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "status" => {
                q.status = Some(DeploymentStatus::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "status: {value:?} is not one of in_progress, succeeded, failed, cancelled"
                    ))
                })?)
            }
            "limit" => {
                let n: usize = parse_number("limit", &value)?;
                if n == 0 {
                    return Err(ApiError::BadRequest("limit: must be at least 1".into()));
                }
                q.limit = n.min(MAX_LIMIT);
            }
            "min_position" => q.min_position = parse_number("min_position", &value)?,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "{other}: unknown query parameter (known: status, limit, min_position)"
                )));
            }
        }
    }
    Ok(q)
}

/// `{"deployments":[…],"position":P}` and `P`, the stored views spliced in as they are.
pub async fn list_json(state: &AppState, q: &ListQuery) -> Result<(Vec<u8>, u64), ApiError> {
    let model = model_at::<Deployments>(state, q.min_position).await?;
    let (status, limit) = (q.status, q.limit);
    let (views, position) = model
        .read(move |conn, checkpoint| Ok((projection::list(conn, status, limit)?, checkpoint)))
        .await?;
    let mut out = Vec::with_capacity(views.iter().map(|v| v.len() + 1).sum::<usize>() + 48);
    out.extend_from_slice(b"{\"deployments\":[");
    for (i, view) in views.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(view.as_bytes());
    }
    out.extend_from_slice(format!("],\"position\":{position}}}").as_bytes());
    Ok((out, position))
}

async fn list(State(state): State<AppState>, Viewer(_): Viewer, uri: Uri) -> Result<Response, ApiError> {
    let q = list_query(&uri)?;
    let (out, _) = list_json(&state, &q).await?;
    Ok(json_response(StatusCode::OK, out))
}

/// One deployment's view as stored, the position of its last change, and the
/// model's checkpoint; 404 when there is none.
pub async fn one_json(state: &AppState, id: &str, min_position: u64) -> Result<(String, u64, u64), ApiError> {
    let id = AggregateId::parse(id).map_err(|e| ApiError::BadRequest(format!("id: {e}")))?;
    let model = model_at::<Deployments>(state, min_position).await?;
    let key = id.as_str().to_owned();
    let found = model
        .read(move |conn, checkpoint| Ok(projection::get(conn, &key)?.map(|(v, changed)| (v, changed, checkpoint))))
        .await?;
    found.ok_or_else(|| ApiError::NotFound(format!("there is no deployment {id}")))
}

async fn one(
    State(state): State<AppState>,
    Viewer(_): Viewer,
    PathParam(id): PathParam<String>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let min_position = crate::wire::min_position_query(&uri)?;
    let (view, _, _) = one_json(&state, &id, min_position).await?;
    Ok(json_response(StatusCode::OK, view.into_bytes()))
}

//! herald's server: the HTTP API (API.md), authentication, the deployments
//! projector and live Server-Sent Events.
//!
//! `app(state)` builds the router (tests drive it in process); `run` serves it
//! on a listener the caller bound, until `shutdown` resolves.

pub mod auth;
pub mod error;
pub mod live;
pub mod metrics;
pub mod projector;
pub mod routes;
pub mod state;
pub mod wire;

use std::future::Future;

use axum::Router;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use state::{AppState, ServerConfig};

use crate::error::ApiError;

pub fn app(state: AppState) -> Router {
    metrics::install();
    Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/api/commands", post(routes::commands::post_command))
        .route("/api/events", get(routes::read::list_events))
        .route("/api/events/live", get(live::live_events))
        .route("/api/streams/{stream}", get(routes::read::read_stream))
        .route("/api/deployments", get(routes::deployments::list))
        .route("/api/deployments/live", get(routes::deployments::live))
        .route("/api/deployments/{id}", get(routes::deployments::get))
        .route("/api/audit/verify", get(routes::ops::audit_verify))
        .route("/api/tokens", post(routes::tokens::create).get(routes::tokens::list))
        .route("/api/tokens/{id}", delete(routes::tokens::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        .layer(
            // Only the path: a query string never reaches the logs.
            TraceLayer::new_for_http().make_span_with(
                |req: &Request<_>| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()),
            ),
        )
        .with_state(state)
}

async fn not_found(req: Request<axum::body::Body>) -> Response {
    ApiError::NotFound(format!("no route for {}", req.uri().path())).into_response()
}

async fn method_not_allowed(req: Request<axum::body::Body>) -> Response {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path())).into_response()
}

/// Serves herald on `listener` until `shutdown` resolves, then ends every live
/// stream, stops the projector and waits for open requests to finish.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let projector = tokio::spawn(projector::run(state.clone()));
    let live = state.live.clone();
    let result = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            live.shutdown.cancel();
        })
        .await;
    let _ = projector.await;
    result
}

//! herald's server: the HTTP API (API.md), authentication, the deployments
//! projector and live Server-Sent Events.
//!
//! `app(state)` builds the router (tests drive it in process); `run` serves it
//! on a listener the caller bound, until `shutdown` resolves.

pub mod auth;
pub mod broker_config;
pub mod brokers;
pub mod changes;
pub mod clock;
pub mod console;
pub mod consumers;
pub mod domain;
pub mod domains;
pub mod error;
pub mod health;
pub mod hosts;
pub mod limits;
pub mod live;
pub mod metrics;
pub mod passkeys;
pub mod principal;
pub mod resources;
pub mod revocations;
pub mod routes;
pub mod secrets;
pub mod serve;
pub mod sessions;
pub mod sse;
pub mod state;
pub mod wire;

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use state::{AppState, ServerConfig};

use std::path::Path;
use std::sync::Arc;

use herald_core::accounts::AccountStore;
use herald_core::auth::CredentialStore;
use herald_core::store::EventStore;
use herald_store::accounts::SqliteAccounts;
use herald_store::credentials::SqliteCredentials;
use herald_store::sqlite::SqliteStore;

use crate::state::ConfigError;

/// Here, at the root, the state meets the domains (`state.rs` knows none).
impl AppState {
    /// The embedded store: everything in `dir`; the event store frames each
    /// event as an SSE message ([`sse::Sse`]).
    pub fn open_sqlite(dir: &Path, config: ServerConfig) -> Result<AppState, ConfigError> {
        remove_old_read_models(dir);
        AppState::new(
            SqliteStore::open(dir, Arc::new(sse::Sse))?,
            SqliteCredentials::open(dir)?,
            SqliteAccounts::open(dir)?,
            dir,
            config,
        )
    }

    /// PostgreSQL: the log, accounts, sessions, tokens and every read model
    /// (each in its own schema) in the database `pg` names, shared with any
    /// other herald instance on it; the event store frames each event as an
    /// SSE message ([`sse::Sse`]).
    pub async fn open_postgres(
        pg: tokio_postgres::Config,
        store_config: herald_postgres::PgConfig,
        config: ServerConfig,
    ) -> Result<AppState, ConfigError> {
        // One pool, migrated once, for the log and the accounts.
        let size = store_config.pool_size + herald_postgres::ACCOUNTS_POOL_SIZE;
        let database = herald_postgres::Database::connect(pg.clone(), size).await?;
        let store = herald_postgres::PgStore::with_database(&database, Arc::new(sse::Sse), store_config).await?;
        let accounts = herald_postgres::PgAccounts::with_database(&database);
        let registry = domains::registry();
        let at = herald_postgres::PgModels::new(pg);
        let mut models = registry.open_models_postgres(&at).await?;
        if let Some(nats) = &config.nats {
            models.add_sink(brokers::relay::open_postgres(&at, nats.clone()).await?);
        }
        AppState::with_models(store, accounts.clone(), accounts, models, registry, config)
    }

    /// State around stores opened by the caller; every domain's read models
    /// are opened in `models_dir` (the data directory). The event store must
    /// have been opened with [`sse::Sse`]: live streams send its frames as they are.
    pub fn new(
        store: Arc<dyn EventStore>,
        credentials: Arc<dyn CredentialStore>,
        accounts: Arc<dyn AccountStore>,
        models_dir: &Path,
        config: ServerConfig,
    ) -> Result<AppState, ConfigError> {
        let registry = domains::registry();
        let mut models = registry.open_models(models_dir)?;
        if let Some(nats) = &config.nats {
            models.add_sink(brokers::relay::open_sqlite(models_dir, nats.clone())?);
        }
        AppState::with_models(store, credentials, accounts, models, registry, config)
    }
}

/// Before issue 10 every read model shared `readmodels.db`; each now has its
/// own file under `readmodels/`, built from the log. The old file is derived
/// data nothing reads any more.
fn remove_old_read_models(dir: &Path) {
    let old = dir.join("readmodels.db");
    if !old.exists() {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("readmodels.db{suffix}"));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the old read models' file");
            return;
        }
    }
    tracing::info!(
        "removed the old readmodels.db: each read model now has its own file in readmodels/, rebuilt from the log"
    );
}

use crate::auth::Viewer;
use crate::error::ApiError;

pub fn app(state: AppState) -> Router {
    metrics::install();
    let router = Router::new()
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .route("/api/commands", post(routes::commands::post_command))
        .route("/api/events", get(routes::read::list_events))
        .route("/api/streams/{stream}", get(routes::read::read_stream))
        .route("/api/audit/verify", get(routes::ops::audit_verify))
        .route("/api/audit/head", get(routes::ops::audit_head))
        .route("/api/tokens", post(routes::tokens::create).get(routes::tokens::list))
        .route("/api/tokens/{id}", delete(routes::tokens::revoke))
        .route("/api/auth/setup", get(passkeys::setup_status))
        .route("/api/auth/register/start", post(passkeys::register_start))
        .route("/api/auth/register/finish", post(passkeys::register_finish))
        .route("/api/auth/login/start", post(passkeys::login_start))
        .route("/api/auth/login/finish", post(passkeys::login_finish))
        .route("/api/auth/logout", post(passkeys::logout))
        .route("/api/me", get(passkeys::me))
        .route("/api/users", get(routes::admin::list_users))
        .route("/api/users/{id}/roles", put(routes::admin::set_roles))
        .route("/api/users/{id}/disable", post(routes::admin::disable_user))
        .route("/api/users/{id}/enable", post(routes::admin::enable_user))
        .route(
            "/api/users/{id}/passkeys/{credential_id}",
            delete(routes::admin::remove_passkey),
        )
        .route(
            "/api/invites",
            post(routes::admin::create_invite_route).get(routes::admin::list_invites),
        )
        .route("/api/sessions", get(routes::admin::list_sessions))
        .route("/api/sessions/{id}", delete(routes::admin::revoke_session));
    let router = state
        .registry
        .route_adders()
        .iter()
        .fold(router, |router, add| add(router));
    let router = router
        .fallback(console::serve_method)
        // Every request but the live streams (added below) has a deadline.
        .layer(axum::middleware::from_fn_with_state(
            state.config.request_timeout,
            request_timeout,
        ))
        .layer(
            // Only the path: a query string never reaches the logs.
            TraceLayer::new_for_http().make_span_with(
                |req: &Request<_>| tracing::info_span!("http", method = %req.method(), path = %req.uri().path()),
            ),
        )
        // Live streams are added after the trace layer: it would time every
        // chunk of every subscriber (and enter its span) for nothing; they log
        // what matters themselves.
        .route("/api/events/live", get(live::live_events));
    // Every domain's resource streams, outside the trace layer and the request
    // timeout like `/api/events/live`.
    let router = state.registry.live_routes().iter().fold(router, |router, route| {
        let route = *route;
        router.route(
            route.pattern,
            get(
                move |state: State<AppState>, viewer: Viewer, headers: HeaderMap, uri: Uri| {
                    resources::serve_route(route, state, viewer, headers, uri)
                },
            ),
        )
    });
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::Internal("a request handler panicked".into()).into_response()
        }))
        // Outermost: a request to a name that is not herald's gets nothing else.
        .layer(axum::middleware::from_fn_with_state(
            state.hosts.clone(),
            hosts::check_host,
        ))
        .with_state(state)
}

/// 503 when a request takes longer than `--request-timeout` (its handler is
/// dropped; a command that was already queued may still be committed: retry
/// with the same `command_id`).
async fn request_timeout(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    req: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            ::metrics::counter!("herald_request_timeouts_total").increment(1);
            ApiError::Unavailable(format!(
                "the request took longer than {limit:?} and was abandoned; try again (a command may still \
                 have been recorded: retry it with the same command_id)"
            ))
            .into_response()
        }
    }
}

async fn method_not_allowed(req: Request<axum::body::Body>) -> Response {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.uri().path())).into_response()
}

/// Serves herald on `listener` until `shutdown` resolves, then ends every live
/// stream, stops the projector and waits for open requests to finish. Runs the
/// read models' tasks, the revocation follower (`revocations.rs`) and the
/// session purge alongside.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Access taken away on any instance sharing the store ends here too
    // (followed from the head now: before anything is served).
    let from = revocations::start_position(&state).await;
    tokio::spawn(revocations::run(state.clone(), from));
    // Serve once every read model's task knows where it publishes from (a
    // resource stream opened earlier could miss a change), or after 5 s (a
    // database that does not answer yet: /readyz says so).
    let models = state.models.consumers().len() + state.models.sinks().len();
    let (started, mut told) = tokio::sync::mpsc::channel(models.max(1));
    let projector = tokio::spawn(consumers::run_telling(state.clone(), started));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for _ in 0..models {
            if told.recv().await.is_none() {
                break;
            }
        }
    })
    .await;
    tokio::spawn(sessions::purge_loop(state.clone()));
    if let Some(nats) = &state.config.nats {
        tokio::spawn(brokers::nats::run(state.clone(), std::sync::Arc::new(nats.clone())));
    }
    if let Some(redis) = &state.config.redis {
        tokio::spawn(brokers::redis::run(state.clone(), std::sync::Arc::new(redis.clone())));
    }
    if let Ok(addr) = listener.local_addr() {
        state.hosts.add_listen_addr(addr);
    }
    let live = state.live.clone();
    let router = app(state.clone());
    let result = serve::serve(state, router, listener, async move {
        shutdown.await;
        live.shutdown.cancel();
    })
    .await;
    let _ = projector.await;
    result
}

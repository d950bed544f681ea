//! The seam every domain plugs into. A domain is one folder under
//! `src/domains/` with a `register` function, listed once in
//! [`crate::domains::ALL`]; it registers:
//!
//! - its aggregates ([`Registry::aggregate`]): their commands become
//!   `POST /api/commands` types (and every other transport's), and which of them
//!   need step-up is the aggregate's own `needs_step_up`;
//! - its read models ([`Registry::projection`]): opened in the data directory,
//!   kept up to date by the one consumer runner (`consumers.rs`), rebuilt by
//!   `herald projections rebuild NAME`; its handlers reach one with
//!   [`AppState::model`];
//! - its routes ([`Registry::routes`]) and its resource streams
//!   ([`Registry::live`]), which are served on the router and on the fast live
//!   path alike.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, Uri};
use herald_core::aggregate::Aggregate;
use herald_core::command::Commands;
use herald_core::store::StoreError;
use herald_store::projection::{Consumer, ReadModel, RowProjection};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::live::Opened;
use crate::state::AppState;

/// What a resource stream's opener gets: the request, already authenticated
/// as a viewer, and its path parameters in the order of the pattern.
pub struct LiveRequest<'a> {
    pub state: &'a AppState,
    pub principal: &'a Principal,
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    pub params: Vec<String>,
}

pub type LiveFuture<'a> = Pin<Box<dyn Future<Output = Result<Opened, ApiError>> + Send + 'a>>;

/// A resource stream: `GET {pattern}` (axum syntax, `/api/posts/{id}/live`).
#[derive(Clone, Copy)]
pub struct LiveRoute {
    pub pattern: &'static str,
    pub open: for<'a> fn(LiveRequest<'a>) -> LiveFuture<'a>,
}

/// Adds a domain's routes to the router.
pub type RouteAdder = fn(Router<AppState>) -> Router<AppState>;

/// How a registered read model is opened.
struct ProjectionSpec {
    name: &'static str,
    type_id: TypeId,
    open: fn(&Path) -> Result<ModelHandles, StoreError>,
}

/// An opened read model: typed (for its domain's handlers) and as a consumer
/// (for the runner).
struct ModelHandles {
    typed: Arc<dyn Any + Send + Sync>,
    consumer: Arc<dyn Consumer>,
}

/// What the domains registered.
#[derive(Default)]
pub struct Registry {
    commands: Commands,
    projections: Vec<ProjectionSpec>,
    routes: Vec<RouteAdder>,
    live: Vec<LiveRoute>,
}

impl Registry {
    /// Every domain of [`crate::domains::ALL`], registered.
    pub fn all() -> Registry {
        let mut registry = Registry::default();
        for register in crate::domains::ALL {
            register(&mut registry);
        }
        registry
    }

    /// `A`'s commands become command types herald accepts.
    pub fn aggregate<A: Aggregate>(&mut self) -> &mut Self {
        self.commands.register::<A>();
        self
    }

    /// `P`'s read model is opened, kept and rebuilt with every other.
    pub fn projection<P: RowProjection>(&mut self) -> &mut Self {
        assert!(
            !self.projections.iter().any(|p| p.name == P::NAME),
            "two projections are named {:?}",
            P::NAME
        );
        self.projections.push(ProjectionSpec {
            name: P::NAME,
            type_id: TypeId::of::<ReadModel<P>>(),
            open: |dir| {
                let model = ReadModel::<P>::open(dir)?;
                Ok(ModelHandles {
                    typed: model.clone(),
                    consumer: model,
                })
            },
        });
        self
    }

    /// Adds routes (they run behind the request timeout and the trace layer).
    pub fn routes(&mut self, add: RouteAdder) -> &mut Self {
        self.routes.push(add);
        self
    }

    /// Adds a resource stream.
    pub fn live(&mut self, route: LiveRoute) -> &mut Self {
        self.live.push(route);
        self
    }

    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    pub fn live_routes(&self) -> &[LiveRoute] {
        &self.live
    }

    pub fn route_adders(&self) -> &[RouteAdder] {
        &self.routes
    }

    /// The names of the registered projections, in registration order.
    pub fn projection_names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name).collect()
    }

    /// Opens every registered read model in `dir`.
    pub fn open_models(&self, dir: &Path) -> Result<Models, StoreError> {
        let mut models = Models::default();
        for spec in &self.projections {
            let opened = (spec.open)(dir)?;
            models.typed.insert(spec.type_id, opened.typed);
            models.consumers.push(opened.consumer);
        }
        Ok(models)
    }
}

/// The opened read models.
#[derive(Default, Clone)]
pub struct Models {
    typed: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    consumers: Vec<Arc<dyn Consumer>>,
}

impl Models {
    /// The read model of `P`, when it is registered.
    pub fn get<P: RowProjection>(&self) -> Option<Arc<ReadModel<P>>> {
        self.typed
            .get(&TypeId::of::<ReadModel<P>>())
            .cloned()
            .and_then(|m| m.downcast::<ReadModel<P>>().ok())
    }

    /// Every read model, as the runner sees them.
    pub fn consumers(&self) -> &[Arc<dyn Consumer>] {
        &self.consumers
    }

    /// The read model named `name`.
    pub fn consumer(&self, name: &str) -> Option<&Arc<dyn Consumer>> {
        self.consumers.iter().find(|c| c.name() == name)
    }
}

impl AppState {
    /// The read model of `P`. A handler of an unregistered projection is a
    /// programming error: 500, not a panic.
    pub fn model<P: RowProjection>(&self) -> Result<Arc<ReadModel<P>>, ApiError> {
        self.models
            .get::<P>()
            .ok_or_else(|| ApiError::Internal(format!("the read model {} is not registered", P::NAME)))
    }
}

/// The read model of `P` once it has reached `min_position` (a read of one's
/// own write), waiting at most [`herald_store::projection::MAX_WAIT`]; after
/// that the caller answers with what it has (its `position` says how far it is).
pub async fn model_at<P: RowProjection>(state: &AppState, min_position: u64) -> Result<Arc<ReadModel<P>>, ApiError> {
    let model = state.model::<P>()?;
    if min_position > 0 {
        model.wait_for(min_position, herald_store::projection::MAX_WAIT).await?;
    }
    Ok(model)
}

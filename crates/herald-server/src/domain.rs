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
use herald_store::projection::{Consumer, Model, ReadModel, RowProjection};

use crate::error::ApiError;
use crate::principal::Principal;
use crate::sse::Opened;

/// What a resource stream's opener gets: the request, already authenticated
/// as a viewer, and its path parameters in the order of the pattern.
pub struct LiveRequest<'a, S> {
    pub state: &'a S,
    pub principal: &'a Principal,
    pub headers: &'a HeaderMap,
    pub uri: &'a Uri,
    pub params: Vec<String>,
}

pub type LiveFuture<'a> = Pin<Box<dyn Future<Output = Result<Opened, ApiError>> + Send + 'a>>;

/// A resource stream: `GET {pattern}` (axum syntax, `/api/posts/{id}/live`).
pub struct LiveRoute<S> {
    pub pattern: &'static str,
    pub open: for<'a> fn(LiveRequest<'a, S>) -> LiveFuture<'a>,
}

impl<S> Clone for LiveRoute<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for LiveRoute<S> {}

/// Adds a domain's routes to the router.
pub type RouteAdder<S> = fn(Router<S>) -> Router<S>;

/// How a registered read model is opened.
struct ProjectionSpec {
    name: &'static str,
    type_id: TypeId,
    open: fn(&Path) -> Result<ModelHandles, StoreError>,
    open_postgres: OpenPostgres,
}

/// How a registered read model is opened on PostgreSQL.
type OpenPostgres =
    for<'a> fn(&'a herald_postgres::PgModels) -> futures_util::future::BoxFuture<'a, Result<ModelHandles, StoreError>>;

/// An opened read model: typed (for its domain's handlers) and as a consumer
/// (for the runner).
struct ModelHandles {
    typed: Arc<dyn Any + Send + Sync>,
    consumer: Arc<dyn Consumer>,
}

impl ModelHandles {
    fn of<P: RowProjection>(model: Model<P>) -> ModelHandles {
        ModelHandles {
            consumer: model.consumer(),
            typed: Arc::new(model),
        }
    }
}

/// What the domains registered (`S`: the state handlers receive; the
/// application's is `crate::state::Registry`, built by
/// `crate::domains::registry()`).
pub struct Registry<S> {
    commands: Commands,
    projections: Vec<ProjectionSpec>,
    routes: Vec<RouteAdder<S>>,
    live: Vec<LiveRoute<S>>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            commands: Commands::default(),
            projections: Vec::new(),
            routes: Vec::new(),
            live: Vec::new(),
        }
    }
}

impl<S> Registry<S> {
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
            type_id: TypeId::of::<P>(),
            open: |dir| Ok(ModelHandles::of(Model::<P>::new(ReadModel::<P>::open(dir)?))),
            open_postgres: |models| {
                Box::pin(async move { Ok(ModelHandles::of(Model::<P>::new(Arc::new(models.open::<P>().await?)))) })
            },
        });
        self
    }

    /// Adds routes (they run behind the request timeout and the trace layer).
    pub fn routes(&mut self, add: RouteAdder<S>) -> &mut Self {
        self.routes.push(add);
        self
    }

    /// Adds a resource stream.
    pub fn live(&mut self, route: LiveRoute<S>) -> &mut Self {
        self.live.push(route);
        self
    }

    pub fn commands(&self) -> &Commands {
        &self.commands
    }

    pub fn live_routes(&self) -> &[LiveRoute<S>] {
        &self.live
    }

    pub fn route_adders(&self) -> &[RouteAdder<S>] {
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
            models.add(spec.type_id, (spec.open)(dir)?);
        }
        Ok(models)
    }

    /// Opens every registered read model on PostgreSQL (each in its schema).
    pub async fn open_models_postgres(&self, at: &herald_postgres::PgModels) -> Result<Models, StoreError> {
        let mut models = Models::default();
        for spec in &self.projections {
            models.add(spec.type_id, (spec.open_postgres)(at).await?);
        }
        Ok(models)
    }
}

/// The opened read models.
#[derive(Default, Clone)]
pub struct Models {
    typed: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    consumers: Vec<Arc<dyn Consumer>>,
    /// Consumers that keep a checkpoint like a read model but serve no reads
    /// and are not rebuilt (the event relay to a broker).
    sinks: Vec<Arc<dyn Consumer>>,
}

impl Models {
    fn add(&mut self, type_id: TypeId, opened: ModelHandles) {
        self.typed.insert(type_id, opened.typed);
        self.consumers.push(opened.consumer);
    }

    /// The read model of `P`, when it is registered.
    pub fn get<P: RowProjection>(&self) -> Option<Model<P>> {
        self.typed
            .get(&TypeId::of::<P>())
            .and_then(|m| m.downcast_ref::<Model<P>>())
            .cloned()
    }

    /// Every read model, as the runner sees them.
    pub fn consumers(&self) -> &[Arc<dyn Consumer>] {
        &self.consumers
    }

    /// Runs `sink` on the consumer runner beside the read models.
    pub fn add_sink(&mut self, sink: Arc<dyn Consumer>) {
        self.sinks.push(sink);
    }

    /// The sinks: [`Self::add_sink`].
    pub fn sinks(&self) -> &[Arc<dyn Consumer>] {
        &self.sinks
    }

    /// The read model named `name`.
    pub fn consumer(&self, name: &str) -> Option<&Arc<dyn Consumer>> {
        self.consumers.iter().find(|c| c.name() == name)
    }
}

//! herald's domain core: the event envelope and its hash chain, the event store
//! contract, catch-up subscriptions, aggregates and command handling.
//!
//! Nothing here does I/O of its own; storage backends implement
//! [`store::EventStore`] in `herald-store`.

pub mod accounts;
pub mod aggregate;
pub mod audit;
pub mod auth;
pub mod command;
pub mod envelope;
pub mod event_ref;
pub mod framing;
pub mod import;
pub mod jcs;
pub mod names;
pub mod store;
pub mod subscription;
pub mod supervise;

pub use envelope::{Actor, ActorKind, Envelope, RecordedEvent};
pub use framing::{Framing, JsonLines};
pub use store::{EventStore, ExpectedVersion, Filter, StoreError};

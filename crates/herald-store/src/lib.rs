//! Storage backends for herald: the event store (one module per backend), and
//! the conformance suite every backend passes (feature `conformance`).

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod accounts;
pub mod credentials;
pub mod readmodel;
pub mod sqlite;

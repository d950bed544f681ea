//! Storage backends for herald: the event store (one module per backend), and
//! the conformance suite every backend passes (feature `conformance`).

pub mod accounts;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod credentials;
pub mod projection;
pub mod rebuild;
pub mod scan;
pub mod sqlite;

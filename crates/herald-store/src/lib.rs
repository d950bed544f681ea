//! herald's embedded SQLite backend: the event store, read models and
//! credentials. Its tests run the suites of `herald-conformance`.

pub mod accounts;
pub mod credentials;
pub mod import;
pub mod projection;
pub mod rebuild;
pub mod scan;
pub mod sql;
pub mod sqlite;

//! The PostgreSQL backend of herald's event store, and of its accounts and
//! API tokens ([`PgAccounts`]: users, passkeys, sessions, invites, passkey
//! ceremonies, login attempt windows; the same semantics as the embedded store).
//!
//! Several herald processes may share one database: positions and the hash
//! chain are assigned under one row lock per commit batch (the `sequencer`
//! row), so every snapshot sees a gapless prefix of the log; each process
//! commits its queued appends in groups (one writer task, one transaction, one
//! lock hold per batch) and follows the others' commits through LISTEN/NOTIFY,
//! with a poll of the table as the fallback. See
//! docs/adr/0009-postgres-sequencer.md.
//!
//! [`Database`] is one pool on a migrated database that the store and the
//! accounts can share; [`verify_read_only`] checks a log without migrating
//! or changing anything; [`import()`] loads an export into an empty log.

mod accounts;
mod import;
mod migrations;
mod readmodel;
mod store;
pub mod testing;
mod verify;

pub use accounts::{ACCOUNTS_POOL_SIZE, PgAccounts};
pub use import::import;
pub use migrations::{MIGRATIONS, Migration};
pub use readmodel::{LEAD_RETRY, MODEL_POOL_SIZE, PgModel, PgModels};
pub use store::{Database, LISTENER_NAME, NOTIFY_CHANNEL, PgConfig, PgStore, describe_config, with_causes};
pub use verify::{Verified, verify_read_only};

//! The event store conformance suite on SQLite, one temporary directory per test.

use std::sync::Arc;

use herald_core::EventStore;
use herald_store::conformance::TempDirHarness;
use herald_store::sqlite::SqliteStore;

herald_store::conformance_tests!(TempDirHarness::new(|dir| {
    SqliteStore::open(dir).map(|store| store as Arc<dyn EventStore>)
}));

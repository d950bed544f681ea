//! The event store conformance suite on SQLite, one temporary directory per
//! test: once with the neutral framing, once with a framing that puts bytes
//! before and after the JSON (so that a frame or JSON range taken from the
//! wrong offset of a batch shows).

use std::sync::Arc;

use herald_conformance::TempDirHarness;
use herald_conformance::event_store::Bracketed;
use herald_core::{EventStore, JsonLines};
use herald_store::sqlite::SqliteStore;

mod json_lines {
    use super::*;

    herald_conformance::conformance_tests!(TempDirHarness::new(Arc::new(JsonLines), |dir, framing| {
        SqliteStore::open(dir, framing).map(|store| store as Arc<dyn EventStore>)
    }));
}

mod bracketed {
    use super::*;

    herald_conformance::conformance_tests!(TempDirHarness::new(Arc::new(Bracketed), |dir, framing| {
        SqliteStore::open(dir, framing).map(|store| store as Arc<dyn EventStore>)
    }));
}

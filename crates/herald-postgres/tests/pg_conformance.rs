//! The event store conformance suite on PostgreSQL, a fresh database per
//! test: once with the neutral framing, once with a framing that puts bytes
//! before and after the JSON.

mod common;

use std::sync::Arc;

use common::PgHarness;
use herald_conformance::event_store::Bracketed;
use herald_core::JsonLines;

mod json_lines {
    use super::*;

    herald_conformance::conformance_tests!(match PgHarness::new(Arc::new(JsonLines)).await {
        Some(harness) => harness,
        None => return,
    });
}

mod bracketed {
    use super::*;

    herald_conformance::conformance_tests!(match PgHarness::new(Arc::new(Bracketed)).await {
        Some(harness) => harness,
        None => return,
    });
}

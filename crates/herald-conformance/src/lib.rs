//! The conformance suites every herald storage backend passes (STYLE.md §8):
//! each property of a contract of `herald_core` is one public
//! `async fn(&dyn Harness)`, and one macro expands them into one
//! `#[tokio::test]` each in a backend's test file.
//!
//! A backend depends on this crate as a dev-dependency only; the suites know
//! no backend.

pub mod accounts;
pub mod checkpoints;
pub mod event_store;

pub use accounts::{AccountsHarness, AccountsTempDirHarness};
pub use checkpoints::CheckpointsHarness;
pub use event_store::{Harness, TempDirHarness};

//! The conformance [`Harness`] on PostgreSQL: a fresh database per harness;
//! every store it opens is a separate [`PgStore`] (its own pool, writer and
//! listener: another process, as far as the database can tell).

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use herald_conformance::Harness;
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, ExpectedVersion, NewEvent};
use herald_core::{EventStore, Framing};
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgConfig, PgStore};

pub struct PgHarness {
    db: TestDatabase,
    framing: Arc<dyn Framing>,
    config: PgConfig,
}

impl PgHarness {
    /// `None` when there is no PostgreSQL and this is not CI (a "skipped" line was printed).
    pub async fn new(framing: Arc<dyn Framing>) -> Option<PgHarness> {
        Self::with_config(framing, PgConfig::default()).await
    }

    pub async fn with_config(framing: Arc<dyn Framing>, config: PgConfig) -> Option<PgHarness> {
        Some(PgHarness {
            db: TestDatabase::create().await?,
            framing,
            config,
        })
    }

    pub fn url(&self) -> &str {
        self.db.url()
    }

    pub async fn open_with(&self, config: PgConfig) -> Arc<PgStore> {
        PgStore::open(self.db.url(), self.framing.clone(), config)
            .await
            .unwrap_or_else(|e| panic!("opening the store on {} failed: {e}", self.db.name()))
    }
}

#[async_trait]
impl Harness for PgHarness {
    async fn open(&self) -> Arc<dyn EventStore> {
        self.open_with(self.config.clone()).await
    }

    fn framing(&self) -> &dyn Framing {
        &*self.framing
    }
}

/// An append of `n` `Noted` events (`{"text": "note <i>"}`) to `stream`, at
/// any version, with a fresh command id and no idempotency record.
pub fn request(stream: &str, n: usize) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        expected: ExpectedVersion::Any,
        events: (0..n)
            .map(|i| NewEvent {
                event_type: "Noted".into(),
                schema: 1,
                data: serde_json::json!({ "text": format!("note {i}") }),
            })
            .collect(),
        actor: Actor::system("test"),
        command_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: "c".into(),
        idempotency_fingerprint: None,
    }
}

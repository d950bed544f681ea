//! The conformance [`Harness`] on PostgreSQL: a fresh database per harness;
//! every store it opens is a separate [`PgStore`] (its own pool, writer and
//! listener: another process, as far as the database can tell).

#![allow(dead_code)]

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use herald_conformance::Harness;
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

/// `<position type>json;` — position and type first, a byte after (as the
/// SQLite conformance run has it).
pub struct Bracketed;

impl Framing for Bracketed {
    fn max_len(&self, event_type: &str, json: &str) -> usize {
        1 + 20 + 1 + event_type.len() + 1 + json.len() + 1
    }

    fn encode(&self, buf: &mut BytesMut, position: u64, event_type: &str, json: &str) -> Range<usize> {
        buf.put_u8(b'<');
        buf.put_slice(position.to_string().as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(event_type.as_bytes());
        buf.put_u8(b'>');
        let start = buf.len();
        buf.put_slice(json.as_bytes());
        let end = buf.len();
        buf.put_u8(b';');
        start..end
    }
}

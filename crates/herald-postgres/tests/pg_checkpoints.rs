//! The read-model checkpoint conformance suite on PostgreSQL, a fresh
//! database per test; every open is a separate `PgModel` with its own pool
//! (another instance, as far as the database can tell).

use async_trait::async_trait;
use herald_conformance::CheckpointsHarness;
use herald_core::store::StoreError;
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgModel, PgModels};
use herald_store::projection::{ReadModel, RowProjection};

struct PgCheckpoints {
    db: TestDatabase,
}

#[async_trait]
impl CheckpointsHarness for PgCheckpoints {
    type Storage = PgModel;

    async fn open<P: RowProjection>(&self) -> Result<ReadModel<P, PgModel>, StoreError> {
        let config = self
            .db
            .url()
            .parse()
            .map_err(|e| StoreError::Backend(format!("test database URL: {e}")))?;
        PgModels::new(config).open::<P>().await
    }

    fn exclusive_lead(&self) -> bool {
        true
    }
}

herald_conformance::checkpoint_conformance_tests!(match TestDatabase::create().await {
    Some(db) => PgCheckpoints { db },
    None => return,
});

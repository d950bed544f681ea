//! The read-model checkpoint conformance suite on the embedded store, one
//! temporary directory per test (every open is another `SqliteModel` on the
//! same file: another process, as far as SQLite can tell).

use async_trait::async_trait;
use herald_conformance::CheckpointsHarness;
use herald_core::store::StoreError;
use herald_store::projection::{ReadModel, RowProjection, SqliteModel};

struct SqliteModels {
    dir: tempfile::TempDir,
}

#[async_trait]
impl CheckpointsHarness for SqliteModels {
    type Storage = SqliteModel;

    async fn open<P: RowProjection>(&self) -> Result<ReadModel<P, SqliteModel>, StoreError> {
        Ok(ReadModel::new(SqliteModel::open::<P>(self.dir.path())?))
    }

    fn exclusive_lead(&self) -> bool {
        false
    }
}

herald_conformance::checkpoint_conformance_tests!(SqliteModels {
    dir: tempfile::tempdir().expect("a temporary directory"),
});

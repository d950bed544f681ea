//! The log on PostgreSQL is append-only (triggers refuse UPDATE, DELETE and
//! TRUNCATE), and `verify` finds an edit made by someone who disabled them —
//! and says the trigger is disabled.

mod common;

use std::sync::Arc;

use common::{PgHarness, request};
use herald_conformance::Harness as _;
use herald_core::JsonLines;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_are_refused_and_found() {
    let Some(h) = PgHarness::new(Arc::new(JsonLines)).await else {
        return;
    };
    let store = h.open().await;
    store.append(request("post-a", 3)).await.expect("append");
    store.append(request("post-b", 2)).await.expect("append");
    let report = store.verify(None).await.expect("verify");
    assert!(report.ok && report.checked == 5, "{report:?}");

    let (admin, connection) = tokio_postgres::connect(h.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    for statement in [
        "UPDATE events SET envelope = replace(envelope, 'note 1', 'note 9') WHERE position = 2",
        "DELETE FROM events WHERE position = 5",
        "TRUNCATE events",
    ] {
        let err = admin.batch_execute(statement).await.expect_err(statement);
        assert!(
            format!("{err:?}").contains("append-only"),
            "{statement}: refused, but not by the trigger: {err:?}"
        );
    }

    admin
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER events_append_only;
             UPDATE events SET envelope = replace(envelope, 'note 1', 'note 9') WHERE position = 2;",
        )
        .await
        .expect("edit with the trigger disabled");
    let report = store.verify(None).await.expect("verify");
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_position, Some(2), "{report:?}");
    let problem = report.problem.unwrap_or_default();
    assert!(problem.contains("events_append_only"), "{problem}");

    // A column that disagrees with its envelope is found too.
    admin
        .batch_execute(
            "UPDATE events SET envelope = replace(envelope, 'note 9', 'note 1') WHERE position = 2;
             UPDATE events SET category = 'user' WHERE position = 4;
             ALTER TABLE events ENABLE TRIGGER events_append_only;",
        )
        .await
        .expect("restore, then edit a column");
    let report = store.verify(None).await.expect("verify");
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_bad_position, Some(4), "{report:?}");
}

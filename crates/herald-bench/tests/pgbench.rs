//! The pgbench reference on a fresh database: a scratch table, a short run of
//! the real `pgbench`, the table dropped after.

use std::time::Duration;

use herald_bench::pgbench::{ROW_BYTES, Reference, find_pgbench};
use herald_postgres::testing::TestDatabase;
use tokio_postgres::NoTls;

#[tokio::test]
async fn pgbench_inserts_500_byte_rows_into_a_table_it_drops() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let Some(exe) = find_pgbench() else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI=true and no pgbench binary (apt-get install postgresql-client)");
        }
        println!("skipped: no pgbench binary");
        return;
    };
    let reference = Reference::open(db.url(), &exe, "t0a1b2c3").await.expect("open");
    assert_eq!(reference.table, "herald_bench_t0a1b2c3");
    assert!(["on", "off"].contains(&reference.fsync.as_str()), "{}", reference.fsync);
    assert!(!reference.synchronous_commit.is_empty());
    assert!(
        reference.server.ends_with(&format!("/{}", db.name())),
        "{}",
        reference.server
    );
    assert!(
        reference.pgbench_version.contains("pgbench"),
        "{}",
        reference.pgbench_version
    );

    let r = reference
        .run(2, Duration::from_millis(500))
        .await
        .expect("pgbench runs");
    assert_eq!((r.clients, r.threads, r.seconds, r.row_bytes), (2, 2, 1, ROW_BYTES));
    assert!(r.output.transactions > 0, "{r:?}");
    assert_eq!(r.output.failed, 0);
    assert!(r.output.tps > 0.0);
    // Every counted transaction inserted its row (one more per client may
    // have committed as the run ended).
    let rows = r.rows_inserted as u64;
    assert!(
        rows >= r.output.transactions && rows <= r.output.transactions + 2,
        "{rows} rows for {} transactions",
        r.output.transactions
    );
    // More clients than the server admits: refused before pgbench starts.
    let err = reference
        .run(100_000, Duration::from_millis(500))
        .await
        .expect_err("100,000 connections");
    assert!(format!("{err:#}").contains("needs 100000 connections"), "{err:#}");
    reference.close().await.expect("drop");

    let (client, connection) = tokio_postgres::connect(db.url(), NoTls).await.expect("connect");
    let driver = tokio::spawn(connection);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'herald_bench_%'",
            &[],
        )
        .await
        .expect("query")
        .try_get(0)
        .expect("count");
    assert_eq!(left, 0, "the scratch table is dropped");
    drop(client);
    let _ = driver.await;
}

#[tokio::test]
async fn a_bad_url_is_refused_without_its_password() {
    let exe = std::path::Path::new("pgbench");
    let err = Reference::open("postgres://u:hunter2@127.0.0.1:1/db", exe, "t1")
        .await
        .err()
        .expect("nothing listens on port 1");
    let text = format!("{err:#}");
    assert!(text.contains("127.0.0.1:1/db"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    let err = Reference::open("postgres://u:hunter2@127.0.0.1:5432/db", exe, "Bad-Id")
        .await
        .err()
        .expect("a bad run id");
    assert!(format!("{err:#}").contains("not a plain"), "{err:#}");
}

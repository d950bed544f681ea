//! The conformance suite every read-model storage passes: a
//! [`ReadModel`] over the backend's [`Storage`] keeps its rows and its
//! checkpoint together — an apply writes both or neither, only from the
//! checkpoint it expects, one winner among concurrent appliers (in one
//! process or two), reads see both from one moment, and the model survives a
//! reopen and starts over on a format change.
//!
//! Each property is one public `async fn(&H)` for any [`CheckpointsHarness`];
//! a backend's test file is a harness and one call of
//! [`checkpoint_conformance_tests!`](crate::checkpoint_conformance_tests).
//! The log the models read is an embedded store in a temporary directory
//! (the log is not what is under test here).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::JsonLines;
use herald_core::envelope::{Actor, RecordedEvent};
use herald_core::event_ref::EventRef;
use herald_core::store::{AppendOutcome, AppendRequest, EventStore, ExpectedVersion, NewEvent, StoreError};
use herald_store::projection::{Changed, ChangedResource, Consumer, Db, ReadModel, RowProjection, Storage};
use herald_store::sqlite::SqliteStore;
use serde_json::json;

pub use crate::accounts::run;

/// Opens read models of the suite's projections in one place (a temporary
/// directory, a fresh database): every call reaches the same data, and two
/// models opened by two calls may be alive at once (two processes).
#[async_trait]
pub trait CheckpointsHarness: Send + Sync {
    type Storage: Storage;

    /// Opens (or re-opens) the model of `P`.
    async fn open<P: RowProjection>(&self) -> Result<ReadModel<P, Self::Storage>, StoreError>;

    /// Whether one model opened twice lets only one of them lead at a time
    /// (a store several instances share), or each (one process owns it).
    fn exclusive_lead(&self) -> bool;
}

/// Expands to one `#[tokio::test]` per checkpoint conformance property, each
/// running on a fresh harness made by the given expression (evaluated inside
/// the async test body: it may `.await` or `return`).
#[macro_export]
macro_rules! checkpoint_conformance_tests {
    ($harness:expr) => {
        $crate::checkpoint_conformance_tests!(@tests $harness;
            a_new_model_is_empty_at_checkpoint_zero,
            an_apply_writes_its_rows_with_the_checkpoint,
            an_apply_from_another_checkpoint_changes_nothing,
            a_failed_write_leaves_rows_and_checkpoint_as_they_were,
            concurrent_applies_from_one_checkpoint_have_one_winner,
            rows_and_checkpoint_survive_a_reopen,
            a_format_change_empties_the_model,
            a_reset_empties_the_model,
            reads_see_rows_and_checkpoint_of_one_moment,
            the_log_is_applied_in_pages_and_changes_are_reported,
            an_observer_applies_nothing_and_a_rebuild_replays_everything,
            one_instance_leads_and_another_takes_over,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::checkpoints::run(stringify!($name), $crate::checkpoints::$name(&harness)).await;
            }
        )*
    };
}

/// The suite's projection: per stream of category `tally`, how many events
/// it has and the position of the last. A stream named `tally-poison` cannot
/// be written (to see a failed write roll back).
pub struct Tally;

/// [`Tally`] in a later format (same name, same tables).
pub struct TallyV2;

pub const CATEGORY: &str = "tally";

const TALLY_SQLITE: &str = "CREATE TABLE IF NOT EXISTS tallies (
    id       TEXT PRIMARY KEY,
    events   INTEGER NOT NULL,
    position INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS tallies_position ON tallies (position);";

const TALLY_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS tallies (
    id       TEXT COLLATE \"C\" PRIMARY KEY,
    events   BIGINT NOT NULL,
    position BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS tallies_position ON tallies (position);";

/// A tally's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TallyRow {
    pub events: i64,
    pub position: u64,
}

fn tally_key(stream: &str) -> Option<&str> {
    stream.strip_prefix("tally-")
}

fn tally_fold(row: &mut Option<TallyRow>, event: &EventRef<'_>) -> bool {
    let r = row.get_or_insert(TallyRow { events: 0, position: 0 });
    if event.position <= r.position {
        return false; // folded already
    }
    r.events += 1;
    r.position = event.position;
    true
}

fn tally_load(db: &dyn Db, key: &str) -> Result<Option<TallyRow>, StoreError> {
    db.query_opt(
        "SELECT events, position FROM tallies WHERE id = ?1",
        &[key.into()],
        |r| {
            Ok(TallyRow {
                events: r.int(0)?,
                position: r.position(1)?,
            })
        },
    )
}

fn tally_write(db: &dyn Db, key: &str, row: &TallyRow) -> Result<(), StoreError> {
    if key == "poison" {
        return Err(StoreError::Backend("the tally of poison cannot be written".into()));
    }
    db.execute(
        "INSERT INTO tallies (id, events, position) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET events = excluded.events, position = excluded.position",
        &[key.into(), row.events.into(), row.position.into()],
    )?;
    Ok(())
}

fn tally_changed(db: &dyn Db, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError> {
    let rows = db.query_vec(
        "SELECT id, events, position FROM tallies WHERE position > ?1 AND position <= ?2
         ORDER BY position LIMIT ?3",
        &[after.into(), until.into(), limit.into()],
        |r| Ok((r.text(0)?, r.int(1)?, r.position(2)?)),
    )?;
    let position = match rows.last() {
        Some((_, _, last)) if rows.len() >= limit => *last,
        _ => until,
    };
    Ok(Changed {
        resources: rows
            .into_iter()
            .map(|(key, events, at)| ChangedResource {
                kind: "tally",
                json: format!("{{\"id\":{},\"events\":{events}}}", json!(key)),
                key,
                changed_at: at,
                event: "tally",
                class: None,
            })
            .collect(),
        position,
    })
}

macro_rules! tally_projection {
    ($ty:ty, $version:expr) => {
        impl RowProjection for $ty {
            const NAME: &'static str = "conformance_tally";
            const CATEGORIES: &'static [&'static str] = &[CATEGORY];
            const VERSION: i64 = $version;
            const SCHEMA: &'static str = TALLY_SQLITE;
            const POSTGRES_SCHEMA: &'static str = TALLY_POSTGRES;
            const TABLES: &'static [&'static str] = &["tallies"];
            type Row = TallyRow;
            type Write = TallyRow;

            fn key(stream: &str) -> Option<&str> {
                tally_key(stream)
            }
            fn fold(row: &mut Option<TallyRow>, event: &EventRef<'_>) -> bool {
                tally_fold(row, event)
            }
            fn load(db: &dyn Db, key: &str) -> Result<Option<TallyRow>, StoreError> {
                tally_load(db, key)
            }
            fn prepare(_key: &str, row: &mut TallyRow) -> Result<TallyRow, StoreError> {
                Ok(*row)
            }
            fn write(db: &dyn Db, key: &str, row: &TallyRow) -> Result<(), StoreError> {
                tally_write(db, key, row)
            }
            fn changed(db: &dyn Db, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError> {
                tally_changed(db, after, until, limit)
            }
        }
    };
}

tally_projection!(Tally, 1);
tally_projection!(TallyV2, 2);

/// A log in a temporary directory (the embedded store).
pub struct Log {
    _dir: tempfile::TempDir,
    pub store: Arc<dyn EventStore>,
}

impl Log {
    pub fn new() -> Log {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let store =
            SqliteStore::open(dir.path(), Arc::new(JsonLines)).unwrap_or_else(|e| panic!("cannot open the log: {e:?}"));
        Log { _dir: dir, store }
    }

    /// Appends `n` events to `tally-<key>`; returns the events as recorded.
    pub async fn append(&self, key: &str, n: usize) -> Vec<Arc<RecordedEvent>> {
        let stream = format!("tally-{key}");
        let request = AppendRequest {
            stream: stream.clone(),
            expected: ExpectedVersion::Any,
            events: (0..n)
                .map(|i| NewEvent {
                    event_type: "Counted".into(),
                    schema: 1,
                    data: json!({ "i": i }),
                })
                .collect(),
            actor: Actor::system("conformance"),
            command_id: uuid_like(),
            correlation_id: uuid_like(),
            idempotency_fingerprint: None,
        };
        match self.store.append(request).await {
            Ok(AppendOutcome::Appended(c)) => {
                assert_eq!(c.events.len(), n, "appended to {stream}");
                c.events
            }
            other => panic!("append to {stream}: {other:?}"),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log::new()
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "conformance-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `expect` with the error's debug form.
fn must<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

async fn open<H: CheckpointsHarness, P: RowProjection>(h: &H) -> Arc<ReadModel<P, H::Storage>> {
    Arc::new(must(h.open::<P>().await, "open the read model"))
}

/// Every tally, by key.
async fn tallies<S: Storage>(model: &ReadModel<Tally, S>) -> Vec<(String, TallyRow)> {
    must(
        model
            .read(|db, _| {
                db.query_vec("SELECT id, events, position FROM tallies ORDER BY id", &[], |r| {
                    Ok((
                        r.text(0)?,
                        TallyRow {
                            events: r.int(1)?,
                            position: r.position(2)?,
                        },
                    ))
                })
            })
            .await,
        "read the tallies",
    )
}

fn row(events: i64, position: u64) -> TallyRow {
    TallyRow { events, position }
}

pub async fn a_new_model_is_empty_at_checkpoint_zero<H: CheckpointsHarness>(h: &H) {
    let model = open::<H, Tally>(h).await;
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 0);
    assert!(tallies(&model).await.is_empty());
    let changed = must(Consumer::changed(&*model, 0, 10).await, "changed");
    assert_eq!((changed.resources.len(), changed.checkpoint), (0, 0));
}

pub async fn an_apply_writes_its_rows_with_the_checkpoint<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    let mut events = log.append("a", 2).await;
    events.extend(log.append("b", 1).await);
    assert!(must(model.apply(0, 3, events).await, "apply"));
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 3);
    assert_eq!(
        tallies(&model).await,
        vec![("a".into(), row(2, 2)), ("b".into(), row(1, 3))]
    );
    // Rows already there are loaded and folded on.
    let more = log.append("a", 1).await;
    assert!(must(model.apply(3, 4, more).await, "second apply"));
    assert_eq!(
        tallies(&model).await,
        vec![("a".into(), row(3, 4)), ("b".into(), row(1, 3))]
    );
    let changed = must(Consumer::changed(&*model, 3, 10).await, "changed");
    assert_eq!(changed.checkpoint, 4);
    let keys: Vec<_> = changed
        .resources
        .iter()
        .map(|r| (r.key.as_str(), r.changed_at))
        .collect();
    assert_eq!(keys, vec![("a", 4)], "only what changed after 3");
}

pub async fn an_apply_from_another_checkpoint_changes_nothing<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    let first = log.append("a", 1).await;
    assert!(must(model.apply(0, 1, first).await, "apply"));
    let second = log.append("a", 1).await;
    for wrong in [0, 2, 7] {
        assert!(
            !must(
                model.apply(wrong, 2, second.clone()).await,
                "apply from a wrong checkpoint"
            ),
            "an apply expecting checkpoint {wrong} when it is 1 must be refused"
        );
    }
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 1);
    assert_eq!(tallies(&model).await, vec![("a".into(), row(1, 1))]);
}

pub async fn a_failed_write_leaves_rows_and_checkpoint_as_they_were<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    let first = log.append("a", 1).await;
    assert!(must(model.apply(0, 1, first).await, "apply"));
    // One batch: a good row, then one that cannot be written.
    let mut batch = log.append("a", 1).await;
    batch.extend(log.append("b", 1).await);
    batch.extend(log.append("poison", 1).await);
    let failed = model.apply(1, 4, batch).await;
    assert!(
        failed.is_err(),
        "writing the poison tally must fail the apply: {failed:?}"
    );
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 1, "the checkpoint stays");
    assert_eq!(
        tallies(&model).await,
        vec![("a".into(), row(1, 1))],
        "no row of the failed apply is written"
    );
    // And the model goes on.
    let next = log.append("b", 1).await;
    assert!(must(model.apply(1, 5, next).await, "an apply after the failure"));
    assert_eq!(
        tallies(&model).await,
        vec![("a".into(), row(1, 1)), ("b".into(), row(1, 5))]
    );
}

pub async fn concurrent_applies_from_one_checkpoint_have_one_winner<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    // Two opens: two processes sharing the model.
    let models = [open::<H, Tally>(h).await, open::<H, Tally>(h).await];
    for round in 0..3u64 {
        // Fresh events each round: whichever batch wins adds one event.
        let mut events = Vec::new();
        for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            events.push(log.append(key, 1).await);
        }
        let base = must(models[0].checkpoint().await, "checkpoint");
        let mut tasks = Vec::new();
        for (i, batch) in events.into_iter().enumerate() {
            let model = models[i % 2].clone();
            tasks.push(tokio::spawn(
                async move { (i, model.apply(base, base + 1, batch).await) },
            ));
        }
        let mut winners = Vec::new();
        for task in tasks {
            let (i, won) = must(task.await, "an apply task");
            if must(won, "a concurrent apply") {
                winners.push(i);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of the appliers wins: {winners:?}"
        );
        assert_eq!(must(models[1].checkpoint().await, "checkpoint"), base + 1);
    }
    // Three winners, each event written once.
    let rows = tallies(&models[0]).await;
    let events: i64 = rows.iter().map(|(_, r)| r.events).sum();
    assert_eq!(events, 3, "one event per round: {rows:?}");
}

pub async fn rows_and_checkpoint_survive_a_reopen<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    {
        let model = open::<H, Tally>(h).await;
        let events = log.append("a", 3).await;
        assert!(must(model.apply(0, 3, events).await, "apply"));
    }
    let again = open::<H, Tally>(h).await;
    assert_eq!(must(again.checkpoint().await, "checkpoint after a reopen"), 3);
    assert_eq!(tallies(&again).await, vec![("a".into(), row(3, 3))]);
}

pub async fn a_format_change_empties_the_model<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    {
        let model = open::<H, Tally>(h).await;
        let events = log.append("a", 2).await;
        assert!(must(model.apply(0, 2, events).await, "apply"));
    }
    let v2 = open::<H, TallyV2>(h).await;
    assert_eq!(must(v2.checkpoint().await, "checkpoint in the new format"), 0);
    let count = must(
        v2.read(|db, _| db.query_opt("SELECT count(*) FROM tallies", &[], |r| r.int(0)))
            .await,
        "count",
    );
    assert_eq!(count, Some(0), "the new format starts empty");
    // Reopening the new format keeps it.
    let events = log.append("b", 1).await;
    assert!(must(v2.apply(0, 3, events).await, "apply in the new format"));
    drop(v2);
    let again = open::<H, TallyV2>(h).await;
    assert_eq!(must(again.checkpoint().await, "checkpoint"), 3);
}

pub async fn a_reset_empties_the_model<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    let events = log.append("a", 2).await;
    assert!(must(model.apply(0, 2, events).await, "apply"));
    must(model.reset().await, "reset");
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 0);
    assert!(tallies(&model).await.is_empty());
}

pub async fn reads_see_rows_and_checkpoint_of_one_moment<H: CheckpointsHarness>(h: &H) {
    const APPLIES: u64 = 40;
    let log = Log::new();
    let writer = open::<H, Tally>(h).await;
    let reader = open::<H, Tally>(h).await;
    let mut batches = Vec::new();
    for _ in 0..APPLIES {
        batches.push(log.append("a", 1).await);
    }
    let done = Arc::new(AtomicBool::new(false));
    let reading = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !done.load(Ordering::Acquire) || reads == 0 {
                let (events, checkpoint) = must(
                    reader
                        .read(|db, checkpoint| {
                            let events = db
                                .query_opt("SELECT events FROM tallies WHERE id = 'a'", &[], |r| r.int(0))?
                                .unwrap_or(0);
                            Ok((events, checkpoint))
                        })
                        .await,
                    "a read",
                );
                // Every event of the log is one of `a`'s: the count is the checkpoint.
                assert_eq!(
                    events as u64, checkpoint,
                    "a read saw rows and checkpoint of different moments"
                );
                reads += 1;
            }
            reads
        })
    };
    for (i, batch) in batches.into_iter().enumerate() {
        let i = i as u64;
        assert!(must(writer.apply(i, i + 1, batch).await, "apply"));
    }
    done.store(true, Ordering::Release);
    let reads = must(reading.await, "the reader");
    assert!(reads > 0);
}

pub async fn the_log_is_applied_in_pages_and_changes_are_reported<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    for key in ["a", "b", "a", "c", "a"] {
        log.append(key, 2).await;
    }
    let mut steps = 0;
    loop {
        let step = must(model.process_next(&log.store, 3).await, "a step");
        steps += 1;
        if step.caught_up() {
            assert_eq!(step.checkpoint, 10);
            break;
        }
        assert!(steps < 20, "never caught up");
    }
    assert!(steps >= 4, "pages of 3 of 10 events take 4 steps: {steps}");
    assert_eq!(
        tallies(&model).await,
        vec![
            ("a".into(), row(6, 10)),
            ("b".into(), row(2, 4)),
            ("c".into(), row(2, 8))
        ]
    );
    // Changes in (4, 10], at most 2 per page: the page says how far it covers.
    let page = must(Consumer::changed(&*model, 4, 2).await, "changed");
    let keys: Vec<_> = page.resources.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec!["c", "a"]);
    assert_eq!((page.position, page.checkpoint), (10, 10));
    let page = must(Consumer::changed(&*model, 0, 1).await, "changed, one at a time");
    assert_eq!(page.resources.len(), 1);
    assert_eq!(page.position, 4, "a full page covers up to its last change");
}

pub async fn an_observer_applies_nothing_and_a_rebuild_replays_everything<H: CheckpointsHarness>(h: &H) {
    let log = Log::new();
    let model = open::<H, Tally>(h).await;
    log.append("a", 3).await;
    let step = must(model.observe(&log.store, 100).await, "observe");
    assert_eq!(
        (step.read, step.checkpoint, step.head),
        (0, 0, 3),
        "an observer applies nothing"
    );
    assert!(tallies(&model).await.is_empty());
    // Events of another category only: an observer notes the model reflects them.
    let other = AppendRequest {
        stream: "elsewhere-1".into(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: "Other".into(),
            schema: 1,
            data: json!({}),
        }],
        actor: Actor::system("conformance"),
        command_id: uuid_like(),
        correlation_id: uuid_like(),
        idempotency_fingerprint: None,
    };
    must(log.store.append(other).await, "append elsewhere");
    let applied = must(
        model
            .rebuild(
                Arc::new(herald_store::projection::AnyStore(log.store.clone())),
                &mut |_, _| {},
            )
            .await,
        "rebuild",
    );
    assert_eq!(applied, 3);
    assert_eq!(must(model.checkpoint().await, "checkpoint"), 4);
    assert_eq!(tallies(&model).await, vec![("a".into(), row(3, 3))]);
    // A rebuild starts over: the same rows again, not twice the counts.
    must(
        model
            .rebuild(
                Arc::new(herald_store::projection::AnyStore(log.store.clone())),
                &mut |_, _| {},
            )
            .await,
        "second rebuild",
    );
    assert_eq!(tallies(&model).await, vec![("a".into(), row(3, 3))]);
}

pub async fn one_instance_leads_and_another_takes_over<H: CheckpointsHarness>(h: &H) {
    let a = open::<H, Tally>(h).await;
    let b = open::<H, Tally>(h).await;
    let (la, lb) = (must(a.lead().await, "lead a"), must(b.lead().await, "lead b"));
    if !h.exclusive_lead() {
        assert!(la && lb, "a store one process owns: every open leads");
        return;
    }
    assert!(la, "the first to ask leads");
    assert!(!lb, "only one instance leads a model at a time");
    // Asked again, the same answers.
    assert!(must(a.lead().await, "lead a again"));
    drop(a); // the leader goes away
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if must(b.lead().await, "lead b") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other instance must take over within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The conformance suite every [`EventStore`] backend passes.
//!
//! Each property of the contract in `herald_core::store` is one public
//! `async fn(&dyn Harness)`. A backend's test file is a [`Harness`] and one call
//! of [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[tokio::test]` per property (the calling crate needs `tokio` with the
//! `macros` and `rt-multi-thread` features):
//!
//! ```ignore
//! use std::sync::Arc;
//! use herald_core::{EventStore, JsonLines};
//! use herald_conformance::TempDirHarness;
//! use herald_store::sqlite::SqliteStore;
//!
//! herald_conformance::conformance_tests!(TempDirHarness::new(Arc::new(JsonLines), |dir, framing| {
//!     SqliteStore::open(dir, framing).map(|store| store as Arc<dyn EventStore>)
//! }));
//! ```
//!
//! The harness expression is evaluated once per test inside the async test
//! body, so it may `.await` (e.g. to create a fresh PostgreSQL database).
//!
//! Every stream name used is a valid `<category>-<id>` (API.md §3), so a
//! backend may refuse other names.
//!
//! Frames are checked against the [`Framing`] the harness opened its store
//! with ([`Harness::framing`]), whatever it is: the suite knows no wire format.
//!
//! The tests never sleep for correctness and never assert on timing: timeouts
//! ([`WAIT`] per awaited event, [`TEST_TIMEOUT`] per test) only turn a hang into
//! a failure that says what was being waited for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::audit::verify;
use herald_core::envelope::{Actor, ActorKind, Envelope, GENESIS_HASH, RecordedEvent, chain_hash, recompute_hash};
use herald_core::framing::Framing;
use herald_core::store::{
    AppendOutcome, AppendRequest, Committed, CommittedBatch, EventStore, ExpectedVersion, Filter, Head, LiveReceiver,
    NewEvent, Page, StoreError, StreamSlice,
};
use herald_core::subscription::{LagPolicy, Subscription};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for one conformance test (a deadlock fails instead of hanging).
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for one awaited event (a live batch, a subscription chunk).
pub const WAIT: Duration = Duration::from_secs(10);

/// Opens the store under test.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Opens (or re-opens) this harness's store: every call on one harness opens
    /// the same underlying data (one temp dir, one database), and two stores
    /// opened from one harness may be alive at once (two processes on one
    /// store). A store shuts down when its last `Arc` is dropped.
    async fn open(&self) -> Arc<dyn EventStore>;

    /// The framing every store this harness opens was given: each event's
    /// frame must be exactly what it encodes.
    fn framing(&self) -> &dyn Framing;
}

/// A framing for running the suite a second time: `<position type>json;`,
/// position and type first, a byte after — a frame or JSON range taken from
/// the wrong offset of a batch shows.
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

/// A [`Harness`] over a fresh temporary directory, for file-based backends.
pub struct TempDirHarness<F> {
    dir: tempfile::TempDir,
    framing: Arc<dyn Framing>,
    open: F,
}

impl<F> TempDirHarness<F>
where
    F: Fn(&Path, Arc<dyn Framing>) -> Result<Arc<dyn EventStore>, StoreError> + Send + Sync,
{
    /// `open` opens the backend's store in the given directory, with `framing`.
    pub fn new(framing: Arc<dyn Framing>, open: F) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        TempDirHarness { dir, framing, open }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[async_trait]
impl<F> Harness for TempDirHarness<F>
where
    F: Fn(&Path, Arc<dyn Framing>) -> Result<Arc<dyn EventStore>, StoreError> + Send + Sync,
{
    async fn open(&self) -> Arc<dyn EventStore> {
        (self.open)(self.dir.path(), self.framing.clone())
            .unwrap_or_else(|e| panic!("opening the store in {} failed: {e:?}", self.dir.path().display()))
    }

    fn framing(&self) -> &dyn Framing {
        &*self.framing
    }
}

/// Expands to one `#[tokio::test]` per conformance property, each running on a
/// fresh harness made by the given expression.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@tests $harness;
            empty_store,
            append_assigns_positions_and_envelope,
            hash_chain_links_every_event,
            expected_version_is_enforced,
            multi_event_append_is_atomic,
            empty_append_is_rejected,
            idempotent_retry_returns_first_result,
            idempotency_holds_under_concurrency,
            read_stream_ranges,
            read_all_filters_and_paging,
            concurrent_exact_zero_has_one_winner,
            concurrent_appends_leave_no_gaps,
            live_delivers_each_committed_batch,
            live_batches_arrive_in_position_order,
            subscription_catches_up_then_follows_live,
            subscription_with_category_filter,
            subscription_from_middle_position,
            reopen_preserves_everything,
            two_stores_interleave_appends,
            two_stores_share_live_events,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::event_store::run(stringify!($name), $crate::event_store::$name(&harness)).await;
            }
        )*
    };
}

/// Runs one property with [`TEST_TIMEOUT`] as an upper bound.
#[doc(hidden)]
pub async fn run(name: &str, test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("conformance test {name} did not finish within {TEST_TIMEOUT:?} (deadlock or lost wake-up?)");
    }
}

// ---------------------------------------------------------------------------
// 1. The empty store
// ---------------------------------------------------------------------------

/// An empty store: head 0 with the genesis hash, nothing to read, nothing remembered.
pub async fn empty_store(h: &dyn Harness) {
    let s = h.open().await;
    assert_eq!(
        head(&*s).await,
        Head {
            position: 0,
            hash: GENESIS_HASH.to_owned()
        },
        "head of an empty store"
    );
    for filter in [
        Filter::default(),
        filter(&["deployment-1"], &["deployment"], &["DeploymentStarted"]),
    ] {
        for limit in [1, 100] {
            let page = read_all(&*s, 0, &filter, limit).await;
            assert!(
                page.events.is_empty(),
                "read_all on an empty store returned {:?}",
                page.events
            );
            assert_eq!(
                page.next_after, 0,
                "next_after of read_all on an empty store ({filter:?})"
            );
            assert_eq!(page.head, 0, "head of read_all on an empty store");
        }
    }
    for from_version in [0, 1, 5] {
        let slice = read_stream(&*s, "deployment-unknown", from_version, 100).await;
        assert_eq!(
            slice.version, 0,
            "version of an unknown stream (from_version {from_version})"
        );
        assert!(
            slice.events.is_empty(),
            "events of an unknown stream: {:?}",
            slice.events
        );
    }
    assert!(
        find_command(&*s, "cmd-unknown").await.is_none(),
        "find_command on an empty store"
    );
    let report = verify(&*s, None, |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("verify failed: {e:?}"));
    assert!(report.ok, "verify on an empty store: {report:?}");
    let backend = s
        .verify(None)
        .await
        .unwrap_or_else(|e| panic!("the backend's verify failed: {e:?}"));
    assert!(backend.ok, "the backend's verify on an empty store: {backend:?}");
    assert_eq!(backend.head_hash, GENESIS_HASH);
    assert_eq!(report.checked, 0);
    assert_eq!(report.head_position, 0);
    assert_eq!(report.head_hash, GENESIS_HASH);
}

// ---------------------------------------------------------------------------
// 2. Appending: positions, versions, the envelope, the frame
// ---------------------------------------------------------------------------

/// Positions and versions start at 1 and are contiguous; the envelope carries
/// what was given; `recorded_at`, `id`, the stored JSON and the frame are well formed.
pub async fn append_assigns_positions_and_envelope(h: &dyn Harness) {
    let s = h.open().await;
    let stream = "deployment-7f3a";
    let given = vec![
        ev(
            "DeploymentStarted",
            json!({
                "service": "user-service",
                "version": "1.4.2",
                "environment": "prod",
                "nested": {"zeta": [3, 1, 2], "alpha": null, "flag": true, "n": -17},
                "path": "a/b\\c",
                "text": "héllo \"wörld\"\nsecond line\t🚀 <&>",
            }),
        ),
        NewEvent {
            event_type: "DeploymentProgressed".to_owned(),
            schema: 2,
            data: json!({"percent": 50, "message": "half way"}),
        },
        ev("DeploymentSucceeded", json!({})),
    ];
    let user = Actor {
        kind: ActorKind::User,
        id: "0193a5c2-0000-7000-8000-00000000a11c".to_owned(),
        name: "alice".to_owned(),
    };
    let request = AppendRequest {
        stream: stream.to_owned(),
        expected: ExpectedVersion::NoStream,
        events: given.clone(),
        actor: user.clone(),
        command_id: "cmd-append-1".to_owned(),
        correlation_id: "corr-append-1".to_owned(),
        idempotency_fingerprint: None,
    };
    let earliest = utc_millis(SystemTime::now() - Duration::from_secs(5));
    let first = append(&*s, request).await;
    let latest = utc_millis(SystemTime::now() + Duration::from_secs(5));
    assert_eq!(first.stream, stream, "Committed.stream");
    assert_eq!(first.version, 3, "Committed.version after 3 events on a new stream");
    assert_eq!(positions(&first.events), [1, 2, 3], "positions of the first append");
    assert_eq!(versions(&first.events), [1, 2, 3], "versions of the first append");
    assert_eq!((first.first_position(), first.last_position()), (1, 3));
    for (e, new) in first.events.iter().zip(&given) {
        let env = check_event(h.framing(), e);
        let p = e.position();
        assert_eq!(env.stream, stream, "position {p}: stream");
        assert_eq!(env.event_type, new.event_type, "position {p}: type");
        assert_eq!(env.schema, new.schema, "position {p}: schema");
        assert_eq!(env.data, new.data, "position {p}: data");
        assert_eq!(env.actor, user, "position {p}: actor");
        assert_eq!(env.command_id, "cmd-append-1", "position {p}: command_id");
        assert_eq!(env.correlation_id, "corr-append-1", "position {p}: correlation_id");
        assert!(
            earliest <= env.recorded_at && env.recorded_at <= latest,
            "position {p}: recorded_at {} is not the time of the append (between {earliest} and {latest}, UTC)",
            env.recorded_at
        );
        assert!(!env.id.is_nil(), "position {p}: nil id");
    }

    // The next append to the stream continues its versions; a big payload and a
    // system actor round-trip too.
    let big = "x/y".repeat(30_000);
    let system = Actor::system("scheduler");
    let second = append(
        &*s,
        AppendRequest {
            actor: system.clone(),
            ..req(
                stream,
                ExpectedVersion::Exact(3),
                vec![ev("DeploymentNoted", json!({"big": big}))],
            )
        },
    )
    .await;
    assert_eq!(
        (positions(&second.events), versions(&second.events)),
        (vec![4], vec![4])
    );
    assert_eq!(second.version, 4);
    let env = check_event(h.framing(), &second.events[0]);
    assert_eq!(env.data, json!({"big": big}), "a 90 KB payload round-trips");
    assert_eq!(env.actor, system);

    // A new stream starts at version 1, at the next global position.
    let token = Actor {
        kind: ActorKind::Token,
        id: "tok-1".to_owned(),
        name: "ci".to_owned(),
    };
    let third = append(
        &*s,
        AppendRequest {
            actor: token.clone(),
            ..req("post-1", ExpectedVersion::NoStream, events(2, "PostCreated", "third"))
        },
    )
    .await;
    assert_eq!(
        positions(&third.events),
        [5, 6],
        "positions of an append to a second stream"
    );
    assert_eq!(
        versions(&third.events),
        [1, 2],
        "versions of an append to a second stream"
    );
    assert_eq!(check_event(h.framing(), &third.events[1]).actor, token);

    // What the append returned is what is stored, byte for byte.
    let committed: Vec<_> = [&first, &second, &third]
        .iter()
        .flat_map(|c| c.events.clone())
        .collect();
    let all = read_everything(&*s).await;
    assert_eq!(jsons(&all), jsons(&committed), "read_all vs what append returned");
    for e in &all {
        check_event(h.framing(), e);
    }
    let slice = read_stream(&*s, stream, 1, 100).await;
    assert_eq!(slice.version, 4);
    assert_eq!(
        jsons(&slice.events),
        jsons(&committed[..4]),
        "read_stream vs what append returned"
    );
    let ids: HashSet<_> = all.iter().map(|e| envelope(e).id).collect();
    assert_eq!(ids.len(), all.len(), "event ids are not unique");
    let last_hash = envelope(&all[5]).hash;
    assert_eq!(
        head(&*s).await,
        Head {
            position: 6,
            hash: last_hash
        }
    );
}

// ---------------------------------------------------------------------------
// 3. The hash chain
// ---------------------------------------------------------------------------

/// Every hash is `chain_hash(previous hash, canonical envelope without hash)`,
/// starting from the genesis hash; the head carries the last hash; `verify` agrees.
pub async fn hash_chain_links_every_event(h: &dyn Harness) {
    let s = h.open().await;
    let mut committed = Vec::new();
    for (stream, n) in [
        ("deployment-h1", 1),
        ("post-h2", 3),
        ("deployment-h1", 2),
        ("user-h3", 1),
        ("post-h2", 5),
    ] {
        committed.extend(
            append(&*s, req(stream, ExpectedVersion::Any, events(n, "Chained", stream)))
                .await
                .events,
        );
    }
    let all = read_everything(&*s).await;
    assert_eq!(positions(&all), (1..=12).collect::<Vec<_>>());
    assert_eq!(jsons(&all), jsons(&committed), "read_all vs what append returned");
    let mut prev = GENESIS_HASH.to_owned();
    for e in &all {
        let env = check_event(h.framing(), e);
        let expected = chain_hash(&prev, &env.canonical_without_hash());
        assert_eq!(
            env.hash,
            expected,
            "position {}: hash is not chain_hash(previous hash, canonical envelope without hash)",
            e.position()
        );
        let (recomputed, claimed) = recompute_hash(&prev, e.json())
            .unwrap_or_else(|err| panic!("position {}: stored JSON: {err}", e.position()));
        assert_eq!(
            recomputed,
            claimed,
            "position {}: hash recomputed from the stored JSON",
            e.position()
        );
        prev = env.hash;
    }
    assert_eq!(
        head(&*s).await,
        Head {
            position: 12,
            hash: prev.clone()
        },
        "head after 12 events"
    );
    let report = assert_chain_verifies(&*s, 12).await;
    assert_eq!(report.head_hash, prev);
}

// ---------------------------------------------------------------------------
// 4. Expected versions
// ---------------------------------------------------------------------------

/// `NoStream`, `StreamExists`, `Exact(n)` and `Any` admit exactly what they say;
/// a refused append writes nothing.
pub async fn expected_version_is_enforced(h: &dyn Harness) {
    use ExpectedVersion::{Any, Exact, NoStream, StreamExists};
    let s = h.open().await;
    let a = "deployment-ev-a";
    append(&*s, req(a, NoStream, events(1, "Created", a))).await;
    let mut appended = 1u64;

    let refused = |expected: ExpectedVersion, actual: u64, stream: &'static str, s: Arc<dyn EventStore>| async move {
        let before = head(&*s).await;
        let version_before = read_stream(&*s, stream, 1, 100).await.version;
        let result = s.append(req(stream, expected, events(2, "Refused", stream))).await;
        assert_conflict(
            result,
            stream,
            expected,
            actual,
            &format!("{expected:?} on {stream} at version {actual}"),
        );
        assert_eq!(
            head(&*s).await,
            before,
            "a refused append ({expected:?}) moved the head"
        );
        let slice = read_stream(&*s, stream, 1, 100).await;
        assert_eq!(
            slice.version, version_before,
            "a refused append ({expected:?}) changed the stream's version"
        );
        assert!(
            slice.events.iter().all(|e| e.event_type() != "Refused"),
            "a refused append wrote events"
        );
    };

    refused(NoStream, 1, a, s.clone()).await;
    refused(StreamExists, 0, "deployment-ev-new", s.clone()).await;
    refused(Exact(5), 1, a, s.clone()).await;
    refused(Exact(0), 1, a, s.clone()).await;
    refused(Exact(1), 0, "deployment-ev-new", s.clone()).await;

    let c = append(&*s, req(a, StreamExists, events(1, "Exists", a))).await;
    assert_eq!(
        (c.version, positions(&c.events)),
        (2, vec![2]),
        "StreamExists on an existing stream"
    );
    appended += 1;
    refused(Exact(1), 2, a, s.clone()).await;
    refused(Exact(3), 2, a, s.clone()).await;
    let c = append(&*s, req(a, Exact(2), events(2, "Exact", a))).await;
    assert_eq!(
        (c.version, positions(&c.events)),
        (4, vec![3, 4]),
        "Exact(2) at version 2"
    );
    appended += 2;
    let c = append(&*s, req("deployment-ev-b", Exact(0), events(1, "Exact0", "b"))).await;
    assert_eq!(
        (c.version, positions(&c.events)),
        (1, vec![5]),
        "Exact(0) on a new stream"
    );
    appended += 1;
    let c = append(&*s, req(a, Any, events(1, "Any", a))).await;
    assert_eq!(
        (c.version, positions(&c.events)),
        (5, vec![6]),
        "Any on an existing stream"
    );
    appended += 1;
    let c = append(&*s, req("deployment-ev-c", Any, events(1, "Any", "c"))).await;
    assert_eq!((c.version, positions(&c.events)), (1, vec![7]), "Any on a new stream");
    appended += 1;
    refused(NoStream, 1, "deployment-ev-c", s.clone()).await;
    refused(Exact(4), 5, a, s.clone()).await;

    let all = read_everything(&*s).await;
    assert_eq!(
        positions(&all),
        (1..=appended).collect::<Vec<_>>(),
        "positions after refused appends"
    );
    assert!(
        all.iter().all(|e| e.event_type() != "Refused"),
        "a refused append was stored"
    );
    let slice = read_stream(&*s, a, 1, 100).await;
    assert_eq!((slice.version, versions(&slice.events)), (5, vec![1, 2, 3, 4, 5]));
    assert_chain_verifies(&*s, appended).await;
}

// ---------------------------------------------------------------------------
// 5. Atomic, contiguous multi-event appends; empty appends
// ---------------------------------------------------------------------------

/// The events of one append get contiguous positions and versions, even while
/// other appends run; a refused multi-event append writes none of its events.
pub async fn multi_event_append_is_atomic(h: &dyn Harness) {
    let s = h.open().await;
    let c = append(
        &*s,
        req("deployment-m", ExpectedVersion::NoStream, events(10, "Many", "m")),
    )
    .await;
    assert_eq!(positions(&c.events), (1..=10).collect::<Vec<_>>());
    assert_eq!(versions(&c.events), (1..=10).collect::<Vec<_>>());
    assert_eq!(c.version, 10);

    let barrier = Arc::new(Barrier::new(6));
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                for i in 0..3 {
                    let stream = if i % 2 == 0 {
                        "deployment-shared".to_owned()
                    } else {
                        format!("post-m{t}")
                    };
                    out.push(append(&*s, req(&stream, ExpectedVersion::Any, events(4, "Batch", &stream))).await);
                }
                out
            })
        })
        .collect();
    let mut total = 10;
    for task in tasks {
        for c in join(task).await {
            assert_eq!(c.events.len(), 4);
            assert_contiguous(&c);
            total += 4;
        }
    }
    let before = head(&*s).await;
    assert_eq!(before.position, total);
    let result = s
        .append(req(
            "deployment-m",
            ExpectedVersion::Exact(3),
            events(5, "Refused", "m"),
        ))
        .await;
    assert_conflict(
        result,
        "deployment-m",
        ExpectedVersion::Exact(3),
        10,
        "multi-event append at a stale version",
    );
    assert_eq!(head(&*s).await, before, "a refused multi-event append moved the head");
    assert_eq!(read_stream(&*s, "deployment-m", 1, 100).await.version, 10);
    let all = read_everything(&*s).await;
    assert_eq!(positions(&all), (1..=total).collect::<Vec<_>>());
    assert_chain_verifies(&*s, total).await;
}

/// An append with no events is `InvalidAppend` and writes (and remembers) nothing.
pub async fn empty_append_is_rejected(h: &dyn Harness) {
    let s = h.open().await;
    let empty = idem(
        req("deployment-empty", ExpectedVersion::Any, Vec::new()),
        "cmd-empty",
        "fp-empty",
    );
    match s.append(empty.clone()).await {
        Err(StoreError::InvalidAppend(_)) => {}
        other => panic!("an append with no events: expected InvalidAppend, got {other:?}"),
    }
    assert_eq!(head(&*s).await.position, 0, "an empty append moved the head");
    assert_eq!(read_stream(&*s, "deployment-empty", 0, 100).await.version, 0);
    assert!(
        find_command(&*s, "cmd-empty").await.is_none(),
        "an invalid append was remembered"
    );

    append(&*s, req("deployment-e", ExpectedVersion::Any, events(1, "One", "e"))).await;
    match s.append(req("deployment-e", ExpectedVersion::Any, Vec::new())).await {
        Err(StoreError::InvalidAppend(_)) => {}
        other => panic!("an append with no events to an existing stream: expected InvalidAppend, got {other:?}"),
    }
    assert_eq!(head(&*s).await.position, 1, "an empty append moved the head");
    assert_eq!(read_stream(&*s, "deployment-e", 0, 100).await.version, 1);
    assert_chain_verifies(&*s, 1).await;
}

// ---------------------------------------------------------------------------
// 6. Idempotency
// ---------------------------------------------------------------------------

/// Same `command_id` and fingerprint: `Duplicate` with the first result; a
/// different fingerprint: `CommandIdReused`; refused appends and appends
/// without a fingerprint are not remembered.
pub async fn idempotent_retry_returns_first_result(h: &dyn Harness) {
    let s = h.open().await;
    append(&*s, req("post-0", ExpectedVersion::Any, events(1, "Noise", "0"))).await;
    let stream = "deployment-idem";
    let request = idem(
        req(stream, ExpectedVersion::NoStream, events(2, "Started", "idem")),
        "cmd-idem-1",
        "fp-1",
    );
    let first = match s.append(request.clone()).await {
        Ok(AppendOutcome::Appended(c)) => c,
        other => panic!("first append with a new command_id: expected Appended, got {other:?}"),
    };
    assert_eq!(positions(&first.events), [2, 3]);
    let head1 = head(&*s).await;
    let assert_same = |c: &Committed, what: &str| {
        assert_eq!(c.stream, first.stream, "{what}: stream");
        assert_eq!(
            c.version, first.version,
            "{what}: version (the stream's version after the first append)"
        );
        assert_eq!(positions(&c.events), positions(&first.events), "{what}: positions");
        assert_eq!(jsons(&c.events), jsons(&first.events), "{what}: events");
    };
    match find_command(&*s, "cmd-idem-1").await {
        Some((fingerprint, c)) => {
            assert_eq!(fingerprint, "fp-1", "find_command: fingerprint");
            assert_same(&c, "find_command");
        }
        None => panic!("find_command does not know an append made with a fingerprint"),
    }

    // The retry carries NoStream, which no longer holds: the first result still wins.
    match s.append(request.clone()).await {
        Ok(AppendOutcome::Duplicate(c)) => assert_same(&c, "retry"),
        other => panic!("retry with the same command_id and fingerprint: expected Duplicate, got {other:?}"),
    }
    assert_eq!(head(&*s).await, head1, "a duplicate moved the head");

    // Later appends do not change what the retry returns.
    append(&*s, req(stream, ExpectedVersion::Any, events(1, "Later", "idem"))).await;
    let head2 = head(&*s).await;
    let mut retry_any = request.clone();
    retry_any.expected = ExpectedVersion::Any;
    match s.append(retry_any).await {
        Ok(AppendOutcome::Duplicate(c)) => assert_same(&c, "retry after later appends"),
        other => panic!("retry after later appends: expected Duplicate, got {other:?}"),
    }
    assert_eq!(head(&*s).await, head2, "a duplicate moved the head");

    // A different command under the same command_id.
    for (other_stream, what) in [(stream, "same stream"), ("post-elsewhere", "another stream")] {
        let reused = idem(
            req(other_stream, ExpectedVersion::Any, events(1, "Other", "reused")),
            "cmd-idem-1",
            "fp-2",
        );
        match s.append(reused).await {
            Err(StoreError::CommandIdReused { command_id }) => {
                assert_eq!(command_id, "cmd-idem-1", "CommandIdReused.command_id ({what})")
            }
            other => panic!("same command_id, different fingerprint ({what}): expected CommandIdReused, got {other:?}"),
        }
        assert_eq!(head(&*s).await, head2, "a reused command_id moved the head ({what})");
    }
    match find_command(&*s, "cmd-idem-1").await {
        Some((fingerprint, c)) => {
            assert_eq!(fingerprint, "fp-1", "find_command after a refused reuse: fingerprint");
            assert_same(&c, "find_command after a refused reuse");
        }
        None => panic!("find_command forgot cmd-idem-1"),
    }

    // A refused append is not remembered: the retry is decided afresh.
    let refused = idem(
        req(stream, ExpectedVersion::Exact(99), events(1, "Retried", "r")),
        "cmd-idem-2",
        "fp-r",
    );
    assert_conflict(
        s.append(refused.clone()).await,
        stream,
        ExpectedVersion::Exact(99),
        3,
        "refused idempotent append",
    );
    assert!(
        find_command(&*s, "cmd-idem-2").await.is_none(),
        "a refused append was remembered by find_command"
    );
    let fixed = AppendRequest {
        expected: ExpectedVersion::Exact(3),
        ..refused
    };
    match s.append(fixed).await {
        Ok(AppendOutcome::Appended(c)) => assert_eq!(positions(&c.events), [5], "retry of a refused append"),
        other => panic!("retry of a refused append: expected Appended (decided afresh), got {other:?}"),
    }
    match find_command(&*s, "cmd-idem-2").await {
        Some((fingerprint, c)) => assert_eq!((fingerprint.as_str(), positions(&c.events)), ("fp-r", vec![5])),
        None => panic!("find_command does not know the successful retry"),
    }

    // Without a fingerprint, command_id is only written into the envelopes.
    let mut plain = req("post-plain", ExpectedVersion::Any, events(1, "Plain", "p"));
    plain.command_id = "cmd-plain".to_owned();
    let p1 = append(&*s, plain.clone()).await;
    let p2 = append(&*s, plain).await;
    assert_eq!(
        (positions(&p1.events), positions(&p2.events)),
        (vec![6], vec![7]),
        "two appends with the same command_id and no fingerprint both append"
    );
    assert_eq!(envelope(&p2.events[0]).command_id, "cmd-plain");
    assert!(
        find_command(&*s, "cmd-plain").await.is_none(),
        "find_command knows a command_id appended without a fingerprint"
    );
    assert_chain_verifies(&*s, 7).await;
}

/// Racing retries of one command append it once; racing different commands
/// under one `command_id` append one of them.
pub async fn idempotency_holds_under_concurrency(h: &dyn Harness) {
    let s = h.open().await;
    let request = idem(
        req("deployment-race-idem", ExpectedVersion::Any, events(2, "Once", "race")),
        "cmd-race",
        "fp-race",
    );
    let outcomes = race(&s, (0..20).map(|_| request.clone()).collect()).await;
    let mut appended = Vec::new();
    let mut duplicates = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(AppendOutcome::Appended(c)) => appended.push(c),
            Ok(AppendOutcome::Duplicate(c)) => duplicates.push(c),
            Err(e) => panic!("racing retries of one command: unexpected error {e:?}"),
        }
    }
    assert_eq!(
        (appended.len(), duplicates.len()),
        (1, 19),
        "20 racing retries of one command: (Appended, Duplicate)"
    );
    for d in &duplicates {
        assert_eq!(
            positions(&d.events),
            positions(&appended[0].events),
            "a racing duplicate's positions"
        );
        assert_eq!(
            jsons(&d.events),
            jsons(&appended[0].events),
            "a racing duplicate's events"
        );
    }
    assert_eq!(
        head(&*s).await.position,
        2,
        "head after 20 racing retries of one 2-event command"
    );

    let requests = (0..10)
        .map(|i| {
            idem(
                req(
                    "deployment-race-reuse",
                    ExpectedVersion::Any,
                    events(1, "Reuse", &i.to_string()),
                ),
                "cmd-race-reuse",
                &format!("fp-{i}"),
            )
        })
        .collect();
    let mut appended = 0;
    let mut reused = 0;
    for outcome in race(&s, requests).await {
        match outcome {
            Ok(AppendOutcome::Appended(_)) => appended += 1,
            Err(StoreError::CommandIdReused { .. }) => reused += 1,
            other => panic!("racing commands under one command_id: unexpected {other:?}"),
        }
    }
    assert_eq!(
        (appended, reused),
        (1, 9),
        "10 different commands racing under one command_id: (Appended, CommandIdReused)"
    );
    assert_eq!(head(&*s).await.position, 3);
    assert_chain_verifies(&*s, 3).await;
}

// ---------------------------------------------------------------------------
// 7. Reading
// ---------------------------------------------------------------------------

/// `read_stream` honours `from_version` and `limit`, reports the stream's
/// current version, and matches stream names exactly.
pub async fn read_stream_ranges(h: &dyn Harness) {
    let s = h.open().await;
    let r = "deployment-r";
    let mut committed = Vec::new();
    for n in [2, 1, 3] {
        committed.extend(
            append(&*s, req(r, ExpectedVersion::Any, events(n, "R", r)))
                .await
                .events,
        );
        append(&*s, req("post-noise", ExpectedVersion::Any, events(1, "Noise", "n"))).await;
        append(
            &*s,
            req("deployment-rr", ExpectedVersion::Any, events(1, "Prefix", "rr")),
        )
        .await;
    }
    for (from_version, limit, expected) in [
        (0, 100, vec![1, 2, 3, 4, 5, 6]),
        (1, 100, vec![1, 2, 3, 4, 5, 6]),
        (1, 1, vec![1]),
        (3, 2, vec![3, 4]),
        (5, 10, vec![5, 6]),
        (6, 1, vec![6]),
        (7, 10, vec![]),
        (100, 10, vec![]),
    ] {
        let slice = read_stream(&*s, r, from_version, limit).await;
        let what = format!("read_stream({r}, from_version {from_version}, limit {limit})");
        assert_eq!(slice.version, 6, "{what}: version");
        assert_eq!(versions(&slice.events), expected, "{what}: versions");
        assert!(
            slice.events.iter().all(|e| e.stream() == r),
            "{what}: events of another stream"
        );
        let want: Vec<_> = committed
            .iter()
            .filter(|e| expected.contains(&e.version()))
            .cloned()
            .collect();
        assert_eq!(jsons(&slice.events), jsons(&want), "{what}: events");
    }
    let rr = read_stream(&*s, "deployment-rr", 1, 100).await;
    assert_eq!(
        (rr.version, versions(&rr.events)),
        (3, vec![1, 2, 3]),
        "read_stream(deployment-rr)"
    );
    for missing in ["deployment-r_", "deployment-R", "deployment-r-", "post-r"] {
        let slice = read_stream(&*s, missing, 0, 100).await;
        assert_eq!(
            (slice.version, slice.events.len()),
            (0, 0),
            "read_stream({missing:?}) must match stream names exactly"
        );
    }
}

/// `read_all` honours `after`, `limit` and filters (OR within a field, AND
/// across fields); `next_after` is the last position examined; paging with it
/// visits every matching event exactly once.
pub async fn read_all_filters_and_paging(h: &dyn Harness) {
    let s = h.open().await;
    // Stream names chosen to catch prefix, substring and LIKE-wildcard matching.
    let streams = [
        "deployment-a",
        "deployment-ab",
        "deployment-x-y",
        "deploymentx-1",
        "post-1",
        "post-deployment",
        "post-a_1",
        "post-ax1",
        "user-9",
    ];
    let types = ["Started", "StartedLate", "Progressed", "Finished"];
    let mut committed = Vec::new();
    for i in 0..40 {
        let stream = streams[(i * 7) % streams.len()];
        let n = 1 + i % 3;
        let batch = (0..n)
            .map(|j| ev(types[(i + j) % types.len()], json!({"i": i, "j": j})))
            .collect();
        committed.extend(append(&*s, req(stream, ExpectedVersion::Any, batch)).await.events);
    }
    let total = committed.len() as u64;
    let all = read_everything(&*s).await;
    assert_eq!(positions(&all), (1..=total).collect::<Vec<_>>());
    assert_eq!(jsons(&all), jsons(&committed));

    // `after` and `limit` without a filter.
    let none = Filter::default();
    for (after, limit, expected, next_after) in [
        (0, 5, (1..=5).collect::<Vec<_>>(), 5),
        (10, 5, (11..=15).collect(), 15),
        (total - 2, 10, vec![total - 1, total], total),
        (total, 10, vec![], total),
    ] {
        let page = read_all(&*s, after, &none, limit).await;
        let what = format!("read_all(after {after}, no filter, limit {limit})");
        assert_eq!(positions(&page.events), expected, "{what}: positions");
        assert_eq!(page.next_after, next_after, "{what}: next_after");
        assert_eq!(page.head, total, "{what}: head");
    }

    let filters = [
        Filter::default(),
        filter(&["deployment-a"], &[], &[]),
        filter(&["deployment-a", "post-1"], &[], &[]),
        filter(&[], &["deployment"], &[]),
        filter(&["post-a_1"], &[], &[]),
        filter(&[], &["post", "user"], &[]),
        filter(&[], &["deploymentx"], &[]),
        filter(&[], &[], &["Started"]),
        filter(&[], &[], &["Started", "Finished"]),
        filter(&[], &["deployment"], &["Started"]),
        filter(&["deployment-a", "post-1"], &["post"], &[]),
        filter(
            &["deployment-ab", "post-deployment", "user-9"],
            &["deployment", "user"],
            &["Progressed", "Finished"],
        ),
        filter(&[], &[], &["Nope"]),
        filter(&["deployment-a"], &["post"], &[]),
    ];
    for f in &filters {
        let expected: Vec<u64> = all.iter().filter(|e| f.matches(e)).map(|e| e.position()).collect();
        for limit in [1, 2, 5, 1000] {
            let mut got = Vec::new();
            let mut after = 0;
            let mut pages = 0;
            loop {
                pages += 1;
                assert!(pages <= total + 2, "paging {f:?} with limit {limit} does not end");
                let page = read_all(&*s, after, f, limit).await;
                let what = format!("read_all(after {after}, {f:?}, limit {limit})");
                check_page(&page, after, f, limit, total, &what);
                got.extend(positions(&page.events));
                if page.events.is_empty() && page.next_after == after {
                    assert_eq!(after, total, "{what}: no events and no progress before the head");
                    break;
                }
                after = page.next_after;
                if after >= page.head {
                    break;
                }
            }
            assert_same_positions(&got, &expected, &format!("paging {f:?} with limit {limit}"));
        }
    }
}

fn check_page(page: &Page, after: u64, f: &Filter, limit: usize, head: u64, what: &str) {
    let got = positions(&page.events);
    assert!(got.len() <= limit, "{what}: {} events, more than the limit", got.len());
    assert!(
        got.iter().all(|&p| p > after),
        "{what}: positions {got:?} not after {after}"
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "{what}: positions {got:?} not increasing"
    );
    assert!(
        page.events.iter().all(|e| f.matches(e)),
        "{what}: an event does not match the filter: {:?}",
        page.events
    );
    assert_eq!(page.head, head, "{what}: head");
    assert!(
        page.next_after <= head,
        "{what}: next_after {} beyond the head",
        page.next_after
    );
    if got.len() == limit {
        assert_eq!(
            Some(&page.next_after),
            got.last(),
            "{what}: a full page's next_after must be its last position"
        );
    } else {
        assert_eq!(
            page.next_after,
            head,
            "{what}: fewer matches ({}) than the limit, so every position up to the head was examined",
            got.len()
        );
    }
}

// ---------------------------------------------------------------------------
// 8. Concurrency
// ---------------------------------------------------------------------------

/// 50 racing `Exact(0)` appends to one stream: one wins, 49 conflict at version 1.
pub async fn concurrent_exact_zero_has_one_winner(h: &dyn Harness) {
    let s = h.open().await;
    let stream = "deployment-race";
    let requests = (0..50)
        .map(|i| req(stream, ExpectedVersion::Exact(0), vec![ev("Raced", json!({"task": i}))]))
        .collect();
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for outcome in race(&s, requests).await {
        match outcome {
            Ok(AppendOutcome::Appended(c)) => winners.push(c),
            Err(StoreError::Conflict { actual, expected, .. }) => {
                assert_eq!((expected, actual), (ExpectedVersion::Exact(0), 1), "a loser's Conflict");
                conflicts += 1;
            }
            other => panic!("racing Exact(0) appends: unexpected {other:?}"),
        }
    }
    assert_eq!(
        (winners.len(), conflicts),
        (1, 49),
        "50 racing Exact(0) appends: (winners, conflicts)"
    );
    let slice = read_stream(&*s, stream, 1, 100).await;
    assert_eq!((slice.version, positions(&slice.events)), (1, vec![1]));
    assert_eq!(
        jsons(&slice.events),
        jsons(&winners[0].events),
        "the stored event is the winner's"
    );
    assert_eq!(head(&*s).await.position, 1);
    assert_chain_verifies(&*s, 1).await;
}

/// 20 tasks × 25 appends with `Any` to shared streams: positions 1..=N with no
/// gap or duplicate, each stream's versions 1..=k, nothing lost, the chain
/// verifies; a concurrent reader never sees a position before the previous one.
pub async fn concurrent_appends_leave_no_gaps(h: &dyn Harness) {
    let s = h.open().await;
    let streams = [
        "deployment-c0",
        "deployment-c1",
        "deployment-c2",
        "post-c0",
        "post-c1",
        "user-c0",
        "user-c1",
        "user-c2",
    ];
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        tokio::spawn(async move {
            let all = Filter::default();
            let mut after = 0;
            let mut reads = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let page = read_all(&*s, after, &all, 1000).await;
                reads += 1;
                for (k, e) in page.events.iter().enumerate() {
                    assert_eq!(
                        e.position(),
                        after + 1 + k as u64,
                        "a concurrent reader (after {after}) got positions {:?}: a gap was visible",
                        positions(&page.events)
                    );
                }
                let last = page.events.last().map_or(after, |e| e.position());
                assert_eq!(
                    page.next_after, last,
                    "a concurrent reader (after {after}, no filter) got events up to {last} but next_after {} (head {}): \
                     paging on would skip or repeat events",
                    page.next_after, page.head
                );
                assert!(page.head >= last, "page head {} below its last event {last}", page.head);
                after = last;
                if finished && page.events.is_empty() {
                    return (after, reads);
                }
                tokio::task::yield_now().await;
            }
        })
    };

    let barrier = Arc::new(Barrier::new(20));
    let writers: Vec<_> = (0..20usize)
        .map(|t| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                for i in 0..25usize {
                    let stream = streams[(t * 3 + i * 5) % streams.len()];
                    let batch = (0..1 + (t + i) % 3)
                        .map(|j| ev("Concurrent", json!({"t": t, "i": i, "j": j})))
                        .collect();
                    out.push(append(&*s, req(stream, ExpectedVersion::Any, batch)).await);
                }
                out
            })
        })
        .collect();
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(join(w).await);
    }
    done.store(true, Ordering::Release);
    let total: u64 = committed.iter().map(|c| c.events.len() as u64).sum();
    assert_eq!(committed.len(), 500);

    let mut from_appends: Vec<u64> = committed.iter().flat_map(|c| positions(&c.events)).collect();
    from_appends.sort_unstable();
    assert_same_positions(
        &from_appends,
        &(1..=total).collect::<Vec<_>>(),
        "positions returned by 500 concurrent appends",
    );
    for c in &committed {
        assert_contiguous(c);
    }
    assert_eq!(head(&*s).await.position, total);

    let all = read_everything(&*s).await;
    assert_same_positions(
        &positions(&all),
        &(1..=total).collect::<Vec<_>>(),
        "positions read back",
    );
    let by_position: HashMap<u64, &Arc<RecordedEvent>> = committed
        .iter()
        .flat_map(|c| c.events.iter())
        .map(|e| (e.position(), e))
        .collect();
    let mut ids = HashSet::new();
    let mut stream_versions: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &all {
        let mine = by_position[&e.position()];
        assert_eq!(
            e.json(),
            mine.json(),
            "position {}: stored event differs from the append's",
            e.position()
        );
        assert!(ids.insert(envelope(e).id), "position {}: duplicate id", e.position());
        stream_versions.entry(e.stream()).or_default().push(e.version());
    }
    for (stream, vs) in &stream_versions {
        let k = vs.len() as u64;
        assert_eq!(
            vs,
            &(1..=k).collect::<Vec<_>>(),
            "versions of {stream} in position order"
        );
        let slice = read_stream(&*s, stream, 1, 10_000).await;
        assert_eq!(slice.version, k, "read_stream({stream}).version");
        assert_eq!(versions(&slice.events), *vs, "read_stream({stream}) versions");
    }
    assert_chain_verifies(&*s, total).await;
    let (reader_reached, _reads) = join(reader).await;
    assert_eq!(reader_reached, total, "the concurrent reader's last position");
}

// ---------------------------------------------------------------------------
// 9. Live
// ---------------------------------------------------------------------------

/// Every committed batch reaches every live receiver, once, with its frames;
/// refused appends and duplicates publish nothing.
pub async fn live_delivers_each_committed_batch(h: &dyn Harness) {
    let s = h.open().await;
    append(
        &*s,
        req("deployment-before", ExpectedVersion::Any, events(2, "Before", "b")),
    )
    .await;
    let floor = 2; // batches up to here were committed before subscribing
    let mut rx = s.live();
    let mut rx2 = s.live();
    let mut committed: Vec<Committed> = Vec::new();

    // 1. a plain append
    let c = append(&*s, req("deployment-l1", ExpectedVersion::Any, events(1, "L", "1"))).await;
    assert_next_batch(h.framing(), &mut rx, floor, &c, "the first append after live()").await;
    committed.push(c);
    // 2. refused and invalid appends publish nothing
    let refused = s
        .append(req("deployment-l1", ExpectedVersion::Exact(99), events(1, "L", "x")))
        .await;
    assert_conflict(
        refused,
        "deployment-l1",
        ExpectedVersion::Exact(99),
        1,
        "refused append",
    );
    assert!(matches!(
        s.append(req("deployment-l1", ExpectedVersion::Any, Vec::new())).await,
        Err(StoreError::InvalidAppend(_))
    ));
    // 3. an idempotent append, then its duplicate (which publishes nothing)
    let request = idem(
        req("post-l2", ExpectedVersion::Any, events(3, "L", "2")),
        "cmd-live",
        "fp-live",
    );
    let c = append(&*s, request.clone()).await;
    assert_next_batch(h.framing(), &mut rx, floor, &c, "the append after a refused one").await;
    committed.push(c);
    assert!(matches!(s.append(request).await, Ok(AppendOutcome::Duplicate(_))));
    // 4. more appends
    for (stream, n) in [("deployment-l1", 2), ("user-l3", 1)] {
        let c = append(&*s, req(stream, ExpectedVersion::Any, events(n, "L", stream))).await;
        assert_next_batch(h.framing(), &mut rx, floor, &c, "an append after a duplicate").await;
        committed.push(c);
    }
    // A second receiver got the same batches.
    for c in &committed {
        assert_next_batch(h.framing(), &mut rx2, floor, c, "second receiver").await;
    }
}

/// Batches of concurrent appends arrive in position order, each exactly once,
/// each append whole inside one batch.
pub async fn live_batches_arrive_in_position_order(h: &dyn Harness) {
    let s = h.open().await;
    let plan: Vec<(usize, usize)> = (0..8).flat_map(|t| (0..4).map(move |i| (t, i))).collect();
    let total: u64 = plan.iter().map(|&(t, i)| (1 + (t + i) % 3) as u64).sum();
    let mut rx = s.live();
    let collector = tokio::spawn(async move {
        let mut batches = Vec::new();
        let mut received = 0;
        while received < total {
            let b = recv_batch(&mut rx, "collecting live batches of concurrent appends").await;
            received += b.events.len() as u64;
            batches.push(b);
        }
        batches
    });
    let barrier = Arc::new(Barrier::new(8));
    let writers: Vec<_> = (0..8usize)
        .map(|t| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                for i in 0..4usize {
                    let stream = format!("{}-lo{}", ["deployment", "post"][(t + i) % 2], i % 3);
                    out.push(
                        append(
                            &*s,
                            req(&stream, ExpectedVersion::Any, events(1 + (t + i) % 3, "Ordered", "o")),
                        )
                        .await,
                    );
                }
                out
            })
        })
        .collect();
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(join(w).await);
    }
    let batches = join(collector).await;
    let mut expected_first = 1;
    let mut batch_of = HashMap::new();
    let mut json_of = HashMap::new();
    for (k, b) in batches.iter().enumerate() {
        check_batch(h.framing(), b, "live batch of a concurrent append");
        assert_eq!(
            b.first_position(),
            expected_first,
            "live batch {k} starts at {} but the previous ended at {} (batches: {:?})",
            b.first_position(),
            expected_first - 1,
            batches.iter().map(|b| positions(&b.events)).collect::<Vec<_>>()
        );
        expected_first = b.last_position() + 1;
        for e in &b.events {
            batch_of.insert(e.position(), k);
            json_of.insert(e.position(), e.json().to_vec());
        }
    }
    assert_eq!(expected_first - 1, total, "live batches end at the head");
    for c in &committed {
        let ks: HashSet<_> = c.events.iter().map(|e| batch_of[&e.position()]).collect();
        assert_eq!(
            ks.len(),
            1,
            "append at {:?} was split across live batches",
            positions(&c.events)
        );
        for e in &c.events {
            assert_eq!(
                json_of[&e.position()],
                e.json(),
                "position {}: live event vs appended",
                e.position()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// 10. Catch-up subscriptions
// ---------------------------------------------------------------------------

/// A subscription from 0 over 30 events while 200 more are appended: every
/// position exactly once, in order.
pub async fn subscription_catches_up_then_follows_live(h: &dyn Harness) {
    subscription_scenario(h, 0, Filter::default()).await;
}

/// The same with a category filter: every matching event exactly once, in order.
pub async fn subscription_with_category_filter(h: &dyn Harness) {
    subscription_scenario(h, 0, filter(&[], &["post"], &[])).await;
}

/// The same, resuming after a middle position.
pub async fn subscription_from_middle_position(h: &dyn Harness) {
    subscription_scenario(h, 17, Filter::default()).await;
}

const SEEDED: u64 = 30;
const APPENDED: u64 = 200;

fn sub_stream(i: usize) -> String {
    format!("{}-s{}", ["deployment", "post", "user"][i % 3], i % 7)
}

async fn subscription_scenario(h: &dyn Harness, after: u64, filter: Filter) {
    let s = h.open().await;
    let last = SEEDED + APPENDED;
    for i in 0..SEEDED as usize {
        append(
            &*s,
            req(
                &sub_stream(i),
                ExpectedVersion::Any,
                vec![ev("Seeded", json!({"i": i}))],
            ),
        )
        .await;
    }
    // The writer appends 50 events, waits until the subscriber has its first
    // chunk, then appends the rest (so both catch-up and live are exercised).
    // The last event is in category `post`, so every scenario's filter matches it.
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut started_rx = Some(started_rx);
            let mut written = 0u64;
            let mut i = 0usize;
            while written < APPENDED {
                if written >= 50
                    && let Some(rx) = started_rx.take()
                {
                    let _ = rx.await;
                }
                let n = (1 + (i * 5) % 3).min((APPENDED - written) as usize);
                let stream = if written + n as u64 == APPENDED {
                    "post-final".to_owned()
                } else {
                    sub_stream(i + 1)
                };
                let batch = (0..n).map(|j| ev("Appended", json!({"i": i, "j": j}))).collect();
                append(&*s, req(&stream, ExpectedVersion::Any, batch)).await;
                written += n as u64;
                i += 1;
            }
        })
    };
    let mut sub = Subscription::new(s.clone(), after, filter.clone(), LagPolicy::CatchUp);
    let mut started_tx = Some(started_tx);
    let mut got: Vec<Arc<RecordedEvent>> = Vec::new();
    while got.last().is_none_or(|e| e.position() < last) {
        let chunk = match tokio::time::timeout(WAIT, sub.next_chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => panic!("subscription ended at position {}", sub.position()),
            Ok(Err(e)) => panic!("subscription failed at position {}: {e:?}", sub.position()),
            Err(_) => panic!(
                "subscription ({filter:?}, after {after}): no chunk within {WAIT:?}; at position {}, got {:?}",
                sub.position(),
                positions(&got)
            ),
        };
        if let Some(frames) = &chunk.frames {
            assert_eq!(
                frames,
                &frames_of(&chunk.events),
                "a chunk's frames vs its events' frames"
            );
        }
        if let Some(e) = chunk.events.last() {
            assert!(
                chunk.examined >= e.position(),
                "chunk examined {} < its last event",
                chunk.examined
            );
        }
        got.extend(chunk.events);
        if let Some(tx) = started_tx.take() {
            let _ = tx.send(());
        }
    }
    join(writer).await;
    let expected: Vec<_> = read_everything(&*s)
        .await
        .into_iter()
        .filter(|e| e.position() > after && filter.matches(e))
        .collect();
    assert_eq!(expected.last().map(|e| e.position()), Some(last));
    assert_same_positions(
        &positions(&got),
        &positions(&expected),
        &format!("subscription after {after} with {filter:?}"),
    );
    assert_eq!(
        jsons(&got),
        jsons(&expected),
        "events delivered by the subscription vs stored"
    );
}

// ---------------------------------------------------------------------------
// 11. Durability across reopen
// ---------------------------------------------------------------------------

/// Everything survives dropping and reopening the store: events byte for
/// byte, the head, idempotency records; appends continue the chain.
pub async fn reopen_preserves_everything(h: &dyn Harness) {
    let s = h.open().await;
    for (stream, n) in [("deployment-d1", 2), ("post-d2", 1), ("deployment-d1", 3)] {
        append(&*s, req(stream, ExpectedVersion::Any, events(n, "Durable", stream))).await;
    }
    let remembered = idem(
        req("user-d3", ExpectedVersion::NoStream, events(2, "Remembered", "d3")),
        "cmd-durable",
        "fp-durable",
    );
    let first = append(&*s, remembered.clone()).await;
    let before = read_everything(&*s).await;
    let head_before = head(&*s).await;
    assert_eq!(head_before.position, 8);
    drop(s);

    let s = h.open().await;
    let after = read_everything(&*s).await;
    assert_eq!(positions(&after), positions(&before), "positions after reopening");
    assert_eq!(jsons(&after), jsons(&before), "events after reopening (byte for byte)");
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.frame(), b.frame(), "position {}: frame after reopening", a.position());
        assert_eq!(
            (a.stream(), a.version(), a.event_type()),
            (b.stream(), b.version(), b.event_type()),
            "position {}: stream, version, type after reopening",
            a.position()
        );
    }
    assert_eq!(head(&*s).await, head_before, "head after reopening");
    assert_eq!(read_stream(&*s, "deployment-d1", 1, 100).await.version, 5);
    match find_command(&*s, "cmd-durable").await {
        Some((fingerprint, c)) => {
            assert_eq!(fingerprint, "fp-durable");
            assert_eq!(jsons(&c.events), jsons(&first.events), "find_command after reopening");
        }
        None => panic!("the idempotency record did not survive reopening"),
    }
    match s.append(remembered.clone()).await {
        Ok(AppendOutcome::Duplicate(c)) => {
            assert_eq!(
                positions(&c.events),
                positions(&first.events),
                "duplicate after reopening"
            )
        }
        other => panic!("retry after reopening: expected Duplicate, got {other:?}"),
    }
    let reused = idem(remembered, "cmd-durable", "fp-other");
    assert!(
        matches!(s.append(reused).await, Err(StoreError::CommandIdReused { .. })),
        "a different fingerprint after reopening must be CommandIdReused"
    );

    let next = append(
        &*s,
        req(
            "deployment-d1",
            ExpectedVersion::Exact(5),
            events(2, "AfterReopen", "d1"),
        ),
    )
    .await;
    assert_eq!(
        (positions(&next.events), versions(&next.events)),
        (vec![9, 10], vec![6, 7])
    );
    let env = envelope(&next.events[0]);
    assert_eq!(
        env.hash,
        chain_hash(&head_before.hash, &env.canonical_without_hash()),
        "the first event after reopening chains on the old head"
    );
    assert_chain_verifies(&*s, 10).await;
    let head_now = head(&*s).await;
    drop(s);

    let s = h.open().await;
    assert_eq!(head(&*s).await, head_now, "head after the second reopening");
    assert_chain_verifies(&*s, 10).await;
}

// ---------------------------------------------------------------------------
// 12. Two stores on one harness (two processes on one store)
// ---------------------------------------------------------------------------

/// Appends through two stores open at once interleave without duplicate
/// positions; each store sees the other's writes for versions and idempotency.
pub async fn two_stores_interleave_appends(h: &dyn Harness) {
    let a = h.open().await;
    let b = h.open().await;
    let tasks: Vec<_> = (0..4usize)
        .map(|t| {
            let s = if t % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..15usize {
                    let stream = if i % 2 == 0 {
                        "deployment-shared".to_owned()
                    } else {
                        format!("post-two{t}")
                    };
                    out.push(append(&*s, req(&stream, ExpectedVersion::Any, events(1 + i % 2, "Two", "two"))).await);
                }
                out
            })
        })
        .collect();
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(join(t).await);
    }
    let total: u64 = committed.iter().map(|c| c.events.len() as u64).sum();
    let mut from_appends: Vec<u64> = committed.iter().flat_map(|c| positions(&c.events)).collect();
    from_appends.sort_unstable();
    assert_same_positions(
        &from_appends,
        &(1..=total).collect::<Vec<_>>(),
        "positions returned by appends through two stores",
    );
    for c in &committed {
        assert_contiguous(c);
    }
    let through_a = read_everything(&*a).await;
    let through_b = read_everything(&*b).await;
    assert_same_positions(
        &positions(&through_a),
        &(1..=total).collect::<Vec<_>>(),
        "read through store A",
    );
    assert_eq!(
        jsons(&through_a),
        jsons(&through_b),
        "stores A and B read different logs"
    );
    let mut shared_versions = Vec::new();
    for e in through_a.iter().filter(|e| e.stream() == "deployment-shared") {
        shared_versions.push(e.version());
    }
    let k = shared_versions.len() as u64;
    assert_eq!(
        shared_versions,
        (1..=k).collect::<Vec<_>>(),
        "versions of the shared stream"
    );
    assert_chain_verifies(&*a, total).await;
    assert_chain_verifies(&*b, total).await;

    // Each store sees the other's writes: versions ...
    let v = read_stream(&*a, "deployment-shared", 1, 1).await.version;
    assert_eq!(v, k);
    append(
        &*b,
        req("deployment-shared", ExpectedVersion::Exact(v), events(1, "ViaB", "b")),
    )
    .await;
    let result = a
        .append(req(
            "deployment-shared",
            ExpectedVersion::Exact(v),
            events(1, "ViaA", "a"),
        ))
        .await;
    assert_conflict(
        result,
        "deployment-shared",
        ExpectedVersion::Exact(v),
        v + 1,
        "store A after store B appended",
    );
    // ... idempotency records ...
    let request = idem(
        req("user-two", ExpectedVersion::Any, events(1, "Once", "two")),
        "cmd-two",
        "fp-two",
    );
    let first = append(&*a, request.clone()).await;
    match b.append(request.clone()).await {
        Ok(AppendOutcome::Duplicate(c)) => assert_eq!(positions(&c.events), positions(&first.events)),
        other => panic!("retry through the other store: expected Duplicate, got {other:?}"),
    }
    let reused = idem(request, "cmd-two", "fp-other");
    assert!(
        matches!(b.append(reused).await, Err(StoreError::CommandIdReused { .. })),
        "a different fingerprint through the other store must be CommandIdReused"
    );
    // ... and the head.
    let head_a = head(&*a).await;
    assert_eq!(head_a.position, total + 2);
    assert_eq!(head(&*b).await, head_a, "the two stores disagree on the head");
    assert_chain_verifies(&*b, total + 2).await;
}

/// A live receiver on one store gets the batches appended through the other,
/// in position order, each once — also when one store appends right after the
/// other's append returned (while the other's writer may still be finishing).
pub async fn two_stores_share_live_events(h: &dyn Harness) {
    let a = h.open().await;
    let b = h.open().await;
    append(
        &*a,
        req("deployment-seed", ExpectedVersion::Any, events(1, "Seed", "a")),
    )
    .await;
    append(
        &*b,
        req("deployment-seed", ExpectedVersion::Any, events(1, "Seed", "b")),
    )
    .await;
    let floor = 2; // committed before live() was called
    let mut rx_a = a.live();
    let mut rx_b = b.live();
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let mut committed = Vec::new();
    for (via_b, stream, n) in [
        (true, "post-x1", 1),
        (true, "post-x1", 2),
        (true, "deployment-x2", 1),
        (false, "deployment-x2", 2),
        (true, "user-x3", 1),
    ] {
        let s = if via_b { &b } else { &a };
        committed.extend(
            append(&**s, req(stream, ExpectedVersion::Any, events(n, "Shared", stream)))
                .await
                .events,
        );
    }
    let last = committed.last().map_or(0, |e| e.position());
    assert_eq!(last, 9);
    follow_live(h.framing(), &mut rx_a, &mut got_a, floor, last, "store A").await;
    follow_live(h.framing(), &mut rx_b, &mut got_b, floor, last, "store B").await;

    for round in 0..10 {
        let via_a = append(&*a, req("post-alt", ExpectedVersion::Any, events(1, "ViaA", "alt"))).await;
        let via_b = append(&*b, req("post-alt", ExpectedVersion::Any, events(1, "ViaB", "alt"))).await;
        let last = via_b.last_position();
        committed.extend(via_a.events);
        committed.extend(via_b.events);
        follow_live(
            h.framing(),
            &mut rx_a,
            &mut got_a,
            floor,
            last,
            &format!("store A, round {round} of A-then-B"),
        )
        .await;
        follow_live(
            h.framing(),
            &mut rx_b,
            &mut got_b,
            floor,
            last,
            &format!("store B, round {round} of A-then-B"),
        )
        .await;
    }
    for (got, name) in [(&got_a, "store A"), (&got_b, "store B")] {
        assert_same_positions(
            &positions(got),
            &positions(&committed),
            &format!("{name}'s live events"),
        );
        assert_eq!(jsons(got), jsons(&committed), "{name}'s live events vs appended");
    }
}

/// Receives live batches into `got` until it reaches position `until`.
async fn follow_live(
    framing: &dyn Framing,
    rx: &mut LiveReceiver,
    got: &mut Vec<Arc<RecordedEvent>>,
    floor: u64,
    until: u64,
    name: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.last().map_or(floor, |e| e.position()) < until {
        let batch = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => panic!("{name}: live receiver: {e:?}"),
            Err(_) => panic!(
                "{name}: waited {WAIT:?} for live position {until} but the last received is {:?} \
                 (an append through the other store was not published)",
                got.last().map(|e| e.position())
            ),
        };
        check_batch(framing, &batch, name);
        // Events committed before live() was called may arrive (another
        // process's commits are found by polling, possibly in one batch with
        // later ones): only what came after is asserted on.
        got.extend(batch.events.iter().filter(|e| e.position() > floor).cloned());
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

static NEXT_COMMAND: AtomicU64 = AtomicU64::new(1);

fn ev(event_type: &str, data: Value) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema: 1,
        data,
    }
}

fn events(n: usize, event_type: &str, tag: &str) -> Vec<NewEvent> {
    (0..n).map(|i| ev(event_type, json!({"tag": tag, "i": i}))).collect()
}

/// A request with a fresh `command_id` and no fingerprint.
fn req(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    let command_id = format!("cmd-{}", NEXT_COMMAND.fetch_add(1, Ordering::Relaxed));
    AppendRequest {
        stream: stream.to_owned(),
        expected,
        events,
        actor: Actor::system("conformance"),
        correlation_id: format!("corr-{command_id}"),
        command_id,
        idempotency_fingerprint: None,
    }
}

fn idem(request: AppendRequest, command_id: &str, fingerprint: &str) -> AppendRequest {
    AppendRequest {
        command_id: command_id.to_owned(),
        idempotency_fingerprint: Some(fingerprint.to_owned()),
        ..request
    }
}

fn filter(streams: &[&str], categories: &[&str], types: &[&str]) -> Filter {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
    Filter {
        streams: owned(streams),
        categories: owned(categories),
        types: owned(types),
    }
}

/// Appends and expects `Appended`.
async fn append(s: &dyn EventStore, request: AppendRequest) -> Committed {
    let what = format!(
        "append of {} event(s) to {} with {:?}",
        request.events.len(),
        request.stream,
        request.expected
    );
    match s.append(request).await {
        Ok(AppendOutcome::Appended(c)) => c,
        Ok(AppendOutcome::Duplicate(c)) => panic!("{what}: got Duplicate({c:?}), expected Appended"),
        Err(e) => panic!("{what}: failed: {e:?}"),
    }
}

/// Runs the requests concurrently, released together by a barrier.
async fn race(s: &Arc<dyn EventStore>, requests: Vec<AppendRequest>) -> Vec<Result<AppendOutcome, StoreError>> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                s.append(r).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(join(t).await);
    }
    out
}

fn assert_conflict(
    result: Result<AppendOutcome, StoreError>,
    stream: &str,
    expected: ExpectedVersion,
    actual: u64,
    what: &str,
) {
    match result {
        Err(StoreError::Conflict {
            stream: s,
            expected: e,
            actual: a,
        }) => assert_eq!(
            (s.as_str(), e, a),
            (stream, expected, actual),
            "{what}: Conflict (stream, expected, actual)"
        ),
        other => panic!("{what}: expected Conflict {{ actual: {actual} }}, got {other:?}"),
    }
}

fn assert_contiguous(c: &Committed) {
    let ps = positions(&c.events);
    let vs = versions(&c.events);
    let n = c.events.len() as u64;
    assert!(n > 0, "an Appended with no events");
    assert_eq!(
        ps,
        (ps[0]..ps[0] + n).collect::<Vec<_>>(),
        "positions of one append are not contiguous"
    );
    assert_eq!(
        vs,
        (c.version + 1 - n..=c.version).collect::<Vec<_>>(),
        "versions of one append to {} are not contiguous up to Committed.version {}",
        c.stream,
        c.version
    );
    assert!(
        c.events.iter().all(|e| e.stream() == c.stream),
        "an append's events in another stream"
    );
}

/// Says what is missing, duplicated or out of order, rather than dumping two lists.
fn assert_same_positions(got: &[u64], expected: &[u64], what: &str) {
    if got == expected {
        return;
    }
    let mut seen = HashSet::new();
    let duplicates: Vec<_> = got.iter().filter(|p| !seen.insert(**p)).collect();
    let wanted: HashSet<_> = expected.iter().collect();
    let missing: Vec<_> = expected.iter().filter(|p| !seen.contains(*p)).collect();
    let unexpected: Vec<_> = got.iter().filter(|p| !wanted.contains(p)).collect();
    let out_of_order: Vec<_> = got.windows(2).filter(|w| w[0] >= w[1]).map(|w| (w[0], w[1])).collect();
    panic!(
        "{what}: got {} positions, expected {}; missing {missing:?}; duplicated {duplicates:?}; \
         unexpected {unexpected:?}; out of order (a, b) {out_of_order:?}",
        got.len(),
        expected.len()
    );
}

async fn head(s: &dyn EventStore) -> Head {
    s.head().await.unwrap_or_else(|e| panic!("head() failed: {e:?}"))
}

async fn read_stream(s: &dyn EventStore, stream: &str, from_version: u64, limit: usize) -> StreamSlice {
    s.read_stream(stream, from_version, limit)
        .await
        .unwrap_or_else(|e| panic!("read_stream({stream}, {from_version}, {limit}) failed: {e:?}"))
}

async fn read_all(s: &dyn EventStore, after: u64, filter: &Filter, limit: usize) -> Page {
    s.read_all(after, filter, limit)
        .await
        .unwrap_or_else(|e| panic!("read_all({after}, {filter:?}, {limit}) failed: {e:?}"))
}

async fn find_command(s: &dyn EventStore, command_id: &str) -> Option<(String, Committed)> {
    s.find_command(command_id)
        .await
        .unwrap_or_else(|e| panic!("find_command({command_id}) failed: {e:?}"))
}

/// The whole log, paged with `next_after`.
async fn read_everything(s: &dyn EventStore) -> Vec<Arc<RecordedEvent>> {
    let all = Filter::default();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = read_all(s, after, &all, 1000).await;
        if page.events.is_empty() {
            assert!(
                page.next_after >= page.head,
                "read_all(after {after}) returned nothing before the head {}",
                page.head
            );
            break;
        }
        assert!(
            page.next_after > after,
            "read_all(after {after}): next_after did not advance"
        );
        after = page.next_after;
        out.extend(page.events);
        if after >= page.head {
            break;
        }
    }
    out
}

async fn assert_chain_verifies(s: &dyn EventStore, events: u64) -> herald_core::audit::VerifyReport {
    let backend = s
        .verify(None)
        .await
        .unwrap_or_else(|e| panic!("the backend's verify failed: {e:?}"));
    assert!(backend.ok, "the backend's verify: {backend:?}");
    assert_eq!(backend.checked, events, "events checked by the backend's verify");
    let report = verify(s, None, |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("verify failed: {e:?}"));
    assert!(
        report.ok,
        "the hash chain does not verify: first bad position {:?}: {:?}",
        report.first_bad_position, report.problem
    );
    assert_eq!(report.checked, events, "events checked by verify");
    assert_eq!(report.head_position, events, "verify's head position");
    report
}

async fn join<T>(handle: JoinHandle<T>) -> T {
    match handle.await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("a test task failed: {e}"),
        },
    }
}

async fn recv_batch(rx: &mut LiveReceiver, what: &str) -> Arc<CommittedBatch> {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Ok(batch)) => batch,
        Ok(Err(RecvError::Lagged(n))) => {
            panic!("{what}: the live receiver lagged by {n} batches (the test sends only a few dozen)")
        }
        Ok(Err(RecvError::Closed)) => panic!("{what}: the live channel closed"),
        Err(_) => panic!("{what}: no live batch within {WAIT:?}"),
    }
}

/// The next live batch past `floor` must be exactly what `c` committed.
async fn assert_next_batch(framing: &dyn Framing, rx: &mut LiveReceiver, floor: u64, c: &Committed, what: &str) {
    let batch = loop {
        let batch = recv_batch(rx, what).await;
        if batch.last_position() > floor {
            break batch;
        }
    };
    check_batch(framing, &batch, what);
    assert_eq!(
        positions(&batch.events),
        positions(&c.events),
        "{what}: the next live batch is not the append's"
    );
    assert_eq!(
        jsons(&batch.events),
        jsons(&c.events),
        "{what}: live events vs appended"
    );
}

fn check_batch(framing: &dyn Framing, b: &CommittedBatch, what: &str) {
    assert!(!b.events.is_empty(), "{what}: an empty live batch");
    let ps = positions(&b.events);
    assert_eq!(
        ps,
        (ps[0]..ps[0] + ps.len() as u64).collect::<Vec<_>>(),
        "{what}: a live batch's positions are not contiguous"
    );
    for e in &b.events {
        check_event(framing, e);
    }
    assert_eq!(
        b.frames,
        frames_of(&b.events),
        "{what}: the batch's frames are not its events' frames back to back"
    );
}

fn positions(events: &[Arc<RecordedEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.position()).collect()
}

fn versions(events: &[Arc<RecordedEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.version()).collect()
}

fn jsons(events: &[Arc<RecordedEvent>]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(e.json()).into_owned())
        .collect()
}

fn frames_of(events: &[Arc<RecordedEvent>]) -> Bytes {
    let mut buf = BytesMut::new();
    for e in events {
        buf.extend_from_slice(e.frame());
    }
    buf.freeze()
}

fn envelope(e: &RecordedEvent) -> Envelope {
    e.envelope()
        .unwrap_or_else(|err| panic!("position {}: stored JSON is not an envelope: {err}", e.position()))
}

/// Checks what every stored event must satisfy and returns its envelope.
fn check_event(framing: &dyn Framing, e: &RecordedEvent) -> Envelope {
    let env = envelope(e);
    let p = e.position();
    assert_eq!(
        (env.position, env.stream.as_str(), env.version, env.event_type.as_str()),
        (p, e.stream(), e.version(), e.event_type()),
        "position {p}: the envelope's (position, stream, version, type) vs the RecordedEvent's"
    );
    let json = std::str::from_utf8(e.json()).unwrap_or_else(|err| panic!("position {p}: JSON is not UTF-8: {err}"));
    assert_eq!(
        json,
        env.to_canonical_json(),
        "position {p}: the stored JSON is not the envelope's canonical form"
    );
    let mut framed = BytesMut::new();
    let inner = framing.encode(&mut framed, p, &env.event_type, json);
    assert_eq!(
        &framed[inner],
        json.as_bytes(),
        "position {p}: the framing's JSON range (a bug of the framing)"
    );
    assert_eq!(
        e.frame().as_ref(),
        &framed[..],
        "position {p}: the frame is not the store's framing of (position, type, JSON)"
    );
    assert!(
        e.frame().len() <= framing.max_len(&env.event_type, json),
        "position {p}: the frame is longer than the framing's bound"
    );
    assert!(
        is_utc_millis(&env.recorded_at),
        "position {p}: recorded_at {:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ",
        env.recorded_at
    );
    assert!(
        env.hash.len() == 64
            && env
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "position {p}: hash {:?} is not 64 lowercase hex digits",
        env.hash
    );
    env
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` with plausible field values.
fn is_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let shape = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(u32::MAX);
    shape
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        && num(17..19) <= 60
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.mmmZ` (so times compare as strings).
fn utc_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_millis_formats_like_recorded_at() {
        let at = |secs: u64, millis: u64| utc_millis(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_795_318_374, 527), "2026-11-22T03:32:54.527Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
        assert!(is_utc_millis(&at(1_795_318_374, 527)));
        assert!(!is_utc_millis("2026-11-22T03:32:54Z"));
        assert!(!is_utc_millis("2026-11-22T03:32:54.527+00:00"));
        assert!(!is_utc_millis("2026-13-22T03:32:54.527Z"));
    }
}

//! The `feeds` read model (posts, their tags, a feed per tag) projected from
//! the real SQLite event store: views and feeds after creates, edits and tag
//! removals; `changed()`; rebuild equality; the checkpoint guard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use herald_core::command::{CommandRequest, Commands, StreamLocks};
use herald_core::envelope::{Actor, ActorKind, Envelope};
use herald_core::names::AggregateId;
use herald_core::store::{AppendRequest, Committed, EventStore, ExpectedVersion, Filter, NewEvent};
use herald_server::domains::posts::aggregate::Post;
use herald_server::domains::posts::projection::{self, FeedRow, Feeds};
use herald_server::domains::posts::tags::sanitize;
use herald_server::sse::Sse;
use herald_store::projection::{AnyStore, Changed, Consumer, ReadModel, RebuildSource, RowProjection};
use herald_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn alice() -> Actor {
    Actor {
        kind: ActorKind::User,
        id: "u-alice".into(),
        name: "alice".into(),
    }
}

fn bot() -> Actor {
    Actor {
        kind: ActorKind::Token,
        id: "t-bot".into(),
        name: "bot".into(),
    }
}

struct Fixture {
    dir: TempDir,
    store: Arc<SqliteStore>,
    model: Arc<ReadModel<Feeds>>,
    commands: Commands,
    locks: StreamLocks,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path(), Arc::new(Sse)).expect("open event store");
        let model = ReadModel::<Feeds>::open(dir.path()).expect("open read model");
        let mut commands = Commands::default();
        commands.register::<Post>();
        Fixture {
            dir,
            store,
            model,
            commands,
            locks: StreamLocks::default(),
        }
    }

    fn dyn_store(&self) -> Arc<dyn EventStore> {
        self.store.clone()
    }

    /// Runs a command as `actor`; `Err(detail)` when it is refused.
    async fn try_command(&self, actor: &Actor, command_type: &str, id: &str, data: Value) -> Result<Committed, String> {
        self.commands
            .handle(
                &*self.store,
                &self.locks,
                actor,
                CommandRequest {
                    command_type: command_type.into(),
                    aggregate_id: AggregateId::parse(id).expect("an id"),
                    expected_version: None,
                    command_id: None,
                    correlation_id: None,
                    data,
                    presence_verified: false,
                },
            )
            .await
            .map(|outcome| outcome.into_committed())
            .map_err(|e| e.to_string())
    }

    /// Runs a command that must be accepted; returns its one event.
    async fn command(&self, actor: &Actor, command_type: &str, id: &str, data: Value) -> Envelope {
        let committed = self
            .try_command(actor, command_type, id, data.clone())
            .await
            .unwrap_or_else(|e| panic!("{command_type} {id} {data}: {e}"));
        assert_eq!(committed.events.len(), 1);
        committed.events[0].envelope().expect("an envelope")
    }

    async fn create(&self, id: &str, title: &str, tags: &[&str]) -> Envelope {
        self.command(
            &alice(),
            "CreatePost",
            id,
            json!({"title": title, "content": format!("About {title}."), "tags": tags}),
        )
        .await
    }

    async fn update(&self, id: &str, data: Value) -> Envelope {
        self.command(&bot(), "UpdatePost", id, data).await
    }

    /// Appends raw events (what the aggregate would never write, too).
    async fn append_raw(&self, stream: &str, event_type: &str, data: Value) -> Committed {
        self.store
            .append(AppendRequest {
                stream: stream.into(),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent {
                    event_type: event_type.into(),
                    schema: 1,
                    data,
                }],
                actor: alice(),
                command_id: uuid::Uuid::new_v4().to_string(),
                correlation_id: uuid::Uuid::new_v4().to_string(),
                idempotency_fingerprint: None,
            })
            .await
            .expect("append")
            .into_committed()
    }

    async fn head(&self) -> u64 {
        self.store.head().await.expect("head").position
    }

    async fn catch_up(&self, page: usize) {
        catch_up(&self.model, &self.dyn_store(), page).await;
    }
}

/// `process_next` until caught up.
async fn catch_up(model: &ReadModel<Feeds>, store: &Arc<dyn EventStore>, page: usize) {
    for _ in 0..100_000 {
        let step = model.process_next(store, page).await.expect("process_next");
        if step.caught_up() {
            return;
        }
    }
    panic!("the model does not catch up");
}

/// The stored post view (without position), as JSON.
async fn post(model: &ReadModel<Feeds>, id: &str) -> Option<(Value, u64)> {
    let id = id.to_owned();
    model
        .read(move |conn, _| projection::post(conn, &id))
        .await
        .expect("read")
        .map(|(json, changed)| (serde_json::from_str(&json).expect("JSON"), changed))
}

async fn feed_row(model: &ReadModel<Feeds>, tag: &str) -> Option<FeedRow> {
    let tag = tag.to_owned();
    model
        .read(move |conn, _| projection::feed(conn, &tag))
        .await
        .expect("read")
}

/// `GET /api/feeds/{tag}`'s body as the model renders it (any count), and the checkpoint.
async fn feed_body(model: &ReadModel<Feeds>, tag: &str, limit: usize) -> Option<Value> {
    let tag = tag.to_owned();
    model
        .read(move |conn, checkpoint| {
            projection::feed(conn, &tag)?
                .map(|row| projection::feed_json(conn, &tag, &row, limit, checkpoint))
                .transpose()
        })
        .await
        .expect("read")
        .map(|json| serde_json::from_str(&json).expect("JSON"))
}

async fn feeds_body(model: &ReadModel<Feeds>) -> (Value, u64) {
    let (json, latest) = model.read(projection::feeds_json).await.expect("read");
    (serde_json::from_str(&json).expect("JSON"), latest)
}

/// `Feeds::changed` in one read transaction (`until` = the checkpoint).
async fn changed(model: &ReadModel<Feeds>, after: u64, limit: usize) -> Changed {
    model
        .read(move |conn, checkpoint| Feeds::changed(conn, after, checkpoint, limit))
        .await
        .expect("changed")
}

/// Every row of the model's tables and its checkpoint, as text.
async fn dump(model: &ReadModel<Feeds>) -> String {
    model
        .read(|conn, checkpoint| {
            let mut out = format!("checkpoint {checkpoint}\n");
            // Each table's columns, `i` an integer, `t` text.
            for (table, columns, kinds, order) in [
                (
                    "posts",
                    "created_position, id, view, updated_position",
                    "itti",
                    "created_position",
                ),
                ("post_tags", "tag, created_position, post_id", "tit", "tag, post_id"),
                ("feeds", "tag, post_count, updated_at, updated_position", "titi", "tag"),
            ] {
                conn.query(
                    &format!("SELECT {columns} FROM {table} ORDER BY {order}"),
                    &[],
                    &mut |row| {
                        out.push_str(table);
                        for (i, kind) in kinds.chars().enumerate() {
                            match kind {
                                'i' => out.push_str(&format!(" | {}", row.int(i)?)),
                                _ => out.push_str(&format!(" | {:?}", row.text(i)?)),
                            }
                        }
                        out.push('\n');
                        Ok(())
                    },
                )
                .expect("query");
            }
            Ok(out)
        })
        .await
        .expect("dump")
}

fn titles(feed: &Value) -> Vec<&str> {
    feed["posts"]
        .as_array()
        .expect("posts")
        .iter()
        .map(|p| p["title"].as_str().expect("title"))
        .collect()
}

fn tags_of(feeds: &Value) -> Vec<(&str, u64)> {
    feeds["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .map(|f| {
            (
                f["tag"].as_str().expect("tag"),
                f["post_count"].as_u64().expect("count"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Views and feeds
// ---------------------------------------------------------------------------

#[tokio::test]
async fn views_and_feeds_after_creates_edits_and_tag_removal() {
    let f = Fixture::new();
    let p1 = f.create("p1", "One", &["rust", "ops"]).await;
    let p2 = f.create("p2", "Two", &["Rust"]).await;
    f.catch_up(1000).await;

    let (view, changed_at) = post(&f.model, "p1").await.expect("p1");
    assert_eq!(
        view,
        json!({
            "id": "p1", "title": "One", "content": "About One.", "tags": ["rust", "ops"],
            "author": {"kind": "user", "id": "u-alice", "name": "alice"},
            "created_at": p1.recorded_at, "updated_at": p1.recorded_at, "stream_version": 1
        })
    );
    assert_eq!(changed_at, p1.position);
    let rust = feed_row(&f.model, "rust").await.expect("rust");
    assert_eq!(
        rust,
        FeedRow {
            post_count: 2,
            updated_at: p2.recorded_at.clone(),
            updated_position: p2.position
        }
    );
    let ops = feed_row(&f.model, "ops").await.expect("ops");
    assert_eq!((ops.post_count, ops.updated_position), (1, p1.position));

    // Editing the title of p1 touches both of its feeds (they show whole posts), not p2's.
    let edit = f.update("p1", json!({"title": "One!"})).await;
    f.catch_up(1000).await;
    for tag in ["rust", "ops"] {
        let row = feed_row(&f.model, tag).await.expect("feed");
        assert_eq!(row.updated_position, edit.position, "{tag}");
        assert_eq!(row.updated_at, edit.recorded_at, "{tag}");
    }
    assert_eq!(feed_row(&f.model, "rust").await.expect("rust").post_count, 2);
    let body = feed_body(&f.model, "rust", 50).await.expect("rust");
    assert_eq!(
        titles(&body),
        ["Two", "One!"],
        "newest first by creation, edits do not reorder"
    );

    // Tags [rust, ops] → [ops, infra]: rust loses p1, infra gains it; all three are touched.
    let retag = f.update("p1", json!({"tags": ["OPS", "infra"]})).await;
    f.catch_up(1000).await;
    let (view, changed_at) = post(&f.model, "p1").await.expect("p1");
    assert_eq!(view["tags"], json!(["ops", "infra"]));
    assert_eq!(view["title"], "One!");
    assert_eq!(view["author"]["name"], "alice", "the author is who created it");
    assert_eq!(view["created_at"], json!(p1.recorded_at));
    assert_eq!(view["updated_at"], json!(retag.recorded_at));
    assert_eq!(view["stream_version"], 3);
    assert_eq!(changed_at, retag.position);
    for (tag, count) in [("rust", 1), ("ops", 1), ("infra", 1)] {
        let row = feed_row(&f.model, tag).await.expect("feed");
        assert_eq!(
            (row.post_count, row.updated_position, row.updated_at.as_str()),
            (count, retag.position, retag.recorded_at.as_str()),
            "{tag}"
        );
    }
    assert_eq!(titles(&feed_body(&f.model, "rust", 50).await.expect("rust")), ["Two"]);
    assert_eq!(
        titles(&feed_body(&f.model, "infra", 50).await.expect("infra")),
        ["One!"]
    );

    // Editing p2 only touches rust, which becomes the most recently updated.
    let e = f.update("p2", json!({"content": "Edited."})).await;
    let p3 = f.create("p3", "Three", &["ops"]).await;
    f.catch_up(1000).await;
    assert_eq!(
        feed_row(&f.model, "rust").await.expect("rust").updated_position,
        e.position
    );
    assert_eq!(
        feed_row(&f.model, "infra").await.expect("infra").updated_position,
        retag.position
    );
    let (list, latest) = feeds_body(&f.model).await;
    assert_eq!(tags_of(&list), [("ops", 2), ("rust", 1), ("infra", 1)]);
    assert_eq!(latest, p3.position);
    assert_eq!(list["position"], f.head().await);
    assert_eq!(
        list["feeds"][0],
        json!({"tag": "ops", "post_count": 2, "updated_at": p3.recorded_at})
    );
    let ops = feed_body(&f.model, "ops", 50).await.expect("ops");
    assert_eq!(titles(&ops), ["Three", "One!"]);
    assert_eq!(titles(&feed_body(&f.model, "ops", 1).await.expect("ops")), ["Three"]);
    let mut keys: Vec<&str> = ops.as_object().expect("object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["position", "post_count", "posts", "tag", "updated_at"]);
    // Each post of a feed is the post's view, without a position.
    assert_eq!(ops["posts"][1], post(&f.model, "p1").await.expect("p1").0);
    assert!(ops["posts"][1].get("position").is_none());
}

#[tokio::test]
async fn a_feed_whose_last_post_left_keeps_a_row_at_count_0_and_leaves_the_list() {
    let f = Fixture::new();
    f.create("p1", "One", &["solo", "keep"]).await;
    f.catch_up(1000).await;
    let left = f.update("p1", json!({"tags": ["keep"]})).await;
    f.catch_up(1000).await;
    let solo = feed_row(&f.model, "solo").await.expect("the row stays");
    assert_eq!(
        solo,
        FeedRow {
            post_count: 0,
            updated_at: left.recorded_at.clone(),
            updated_position: left.position
        }
    );
    let body = feed_body(&f.model, "solo", 50).await.expect("renders");
    assert_eq!(body["post_count"], 0);
    assert_eq!(body["posts"], json!([]));
    let (list, latest) = feeds_body(&f.model).await;
    assert_eq!(tags_of(&list), [("keep", 1)]);
    assert_eq!(latest, left.position, "the removal is the latest change to any feed");

    // Back again: count 1, the post listed.
    f.update("p1", json!({"tags": ["solo"]})).await;
    f.catch_up(1000).await;
    assert_eq!(feed_row(&f.model, "solo").await.expect("solo").post_count, 1);
    assert_eq!(feed_row(&f.model, "keep").await.expect("keep").post_count, 0);
    let (list, _) = feeds_body(&f.model).await;
    assert_eq!(tags_of(&list), [("solo", 1)]);
    assert!(feed_row(&f.model, "never").await.is_none());
}

#[tokio::test]
async fn stored_events_the_aggregate_would_not_write_leave_consistent_feeds() {
    let f = Fixture::new();
    // Tags not normalised, repeated, and not tags at all.
    f.append_raw(
        "post-raw",
        "PostCreated",
        json!({"title": "t", "content": "c", "tags": ["Rust", " rust", "no spaces", "ops", "ops"]}),
    )
    .await;
    // Data of another shape, an unknown type, an update of no post: nothing.
    f.append_raw("post-raw", "PostUpdated", json!({"title": "not a change"}))
        .await;
    f.append_raw("post-raw", "PostDeleted", json!({})).await;
    f.append_raw("post-ghost", "PostUpdated", json!({"title": {"old": "a", "new": "b"}}))
        .await;
    f.append_raw(
        "post-raw",
        "PostCreated",
        json!({"title": "again", "content": "c", "tags": ["x"]}),
    )
    .await;
    f.catch_up(1000).await;
    let (view, _) = post(&f.model, "raw").await.expect("raw");
    assert_eq!(view["tags"], json!(["rust", "ops"]));
    assert_eq!(view["title"], "t");
    assert_eq!(view["stream_version"], 1);
    assert!(post(&f.model, "ghost").await.is_none());
    assert!(feed_row(&f.model, "x").await.is_none());
    let (list, _) = feeds_body(&f.model).await;
    assert_eq!(tags_of(&list), [("ops", 1), ("rust", 1)]);
    assert_eq!(f.model.checkpoint().await.expect("checkpoint"), f.head().await);
}

// ---------------------------------------------------------------------------
// changed()
// ---------------------------------------------------------------------------

fn kinds(changed: &Changed) -> Vec<(&str, &str, u64)> {
    changed
        .resources
        .iter()
        .map(|r| (r.kind, r.key.as_str(), r.changed_at))
        .collect()
}

#[tokio::test]
async fn changed_returns_the_posts_feeds_and_list_changed_in_a_range() {
    let f = Fixture::new();
    let a = f.create("a", "A", &["rust"]).await;
    let b = f.create("b", "B", &["ops"]).await;
    // A deployment event in between: not a post's.
    f.append_raw("deployment-d", "DeploymentStarted", json!({"service": "api"}))
        .await;
    let c = f.update("a", json!({"tags": []})).await;
    f.catch_up(1000).await;
    let head = f.head().await;

    // Everything after b's creation: post a (its last change), feed rust (emptied), the list.
    let all = changed(&f.model, b.position, 100).await;
    assert_eq!(all.position, head);
    assert_eq!(
        kinds(&all),
        [
            ("post", "a", c.position),
            ("feed", "rust", c.position),
            ("feeds", "", c.position)
        ]
    );
    let [post_a, feed_rust, list] = &all.resources[..] else {
        panic!("three resources");
    };
    assert_eq!((post_a.event, feed_rust.event, list.event), ("post", "feed", "feeds"));
    let post_a: Value = serde_json::from_str(&post_a.json).expect("JSON");
    assert_eq!(post_a["position"], head);
    assert_eq!(post_a["tags"], json!([]));
    let feed_rust: Value = serde_json::from_str(&feed_rust.json).expect("JSON");
    assert_eq!(
        feed_rust,
        json!({"tag": "rust", "post_count": 0, "updated_at": c.recorded_at, "posts": [], "position": head})
    );
    let list: Value = serde_json::from_str(&list.json).expect("JSON");
    assert_eq!(
        list,
        json!({"feeds": [{"tag": "ops", "post_count": 1, "updated_at": b.recorded_at}], "position": head})
    );

    // From the start: both posts and both feeds.
    let from_start = changed(&f.model, 0, 100).await;
    assert_eq!(
        kinds(&from_start),
        [
            ("post", "b", b.position),
            ("post", "a", c.position),
            ("feed", "ops", b.position),
            ("feed", "rust", c.position),
            ("feeds", "", c.position)
        ]
    );
    // A page of one post: up to its position, the feeds it covers, no more.
    let one = changed(&f.model, 0, 1).await;
    assert_eq!(one.position, b.position);
    assert_eq!(
        kinds(&one),
        [
            ("post", "b", b.position),
            ("feed", "ops", b.position),
            ("feeds", "", b.position)
        ]
    );
    let feed_ops: Value = serde_json::from_str(&one.resources[1].json).expect("JSON");
    assert_eq!(feed_ops["position"], b.position);
    assert_eq!(titles(&feed_ops), ["B"]);
    let next = changed(&f.model, one.position, 1).await;
    assert_eq!(next.position, c.position);
    assert_eq!(
        kinds(&next)[..2],
        [("post", "a", c.position), ("feed", "rust", c.position)]
    );
    // Nothing after the last change; a range ending before anything changed.
    let none = changed(&f.model, c.position, 100).await;
    assert_eq!((none.resources.len(), none.position), (0, head));
    let early = f
        .model
        .read(move |conn, _| Feeds::changed(conn, 0, a.position - 1, 10))
        .await
        .expect("changed");
    assert!(early.resources.is_empty());

    // Through the consumer API: the same, with the checkpoint.
    let page = Consumer::changed(&*f.model, b.position, 100).await.expect("changed");
    assert_eq!(page.checkpoint, head);
    assert_eq!(page.resources, all.resources);
}

#[tokio::test]
async fn changed_pages_hold_about_limit_feeds_and_cover_every_change_once() {
    let f = Fixture::new();
    let mut positions = Vec::new();
    for i in 0..6 {
        let tags = [format!("t{i}a"), format!("t{i}b"), format!("t{i}c")];
        let e = f
            .command(
                &alice(),
                "CreatePost",
                &format!("p{i}"),
                json!({"title": format!("post {i}"), "content": "c", "tags": tags}),
            )
            .await;
        positions.push(e.position);
    }
    f.catch_up(1000).await;
    let head = f.head().await;

    // Four posts fit, but their twelve feeds do not: the page ends after the
    // second post, with the six feeds the first two touched.
    let first = changed(&f.model, 0, 4).await;
    assert_eq!(first.position, positions[1]);
    let keys: Vec<(&str, &str)> = first.resources.iter().map(|r| (r.kind, r.key.as_str())).collect();
    assert_eq!(
        keys,
        [
            ("post", "p0"),
            ("post", "p1"),
            ("feed", "t0a"),
            ("feed", "t0b"),
            ("feed", "t0c"),
            ("feed", "t1a"),
            ("feed", "t1b"),
            ("feed", "t1c"),
            ("feeds", "")
        ]
    );
    for r in &first.resources {
        let json: Value = serde_json::from_str(&r.json).expect("JSON");
        assert_eq!(json["position"], positions[1], "{}", r.key);
    }

    // Page after page: every post and feed once, each page about the limit.
    let mut seen = BTreeSet::new();
    let mut after = 0;
    let mut pages = 0;
    while after < head {
        let page = changed(&f.model, after, 4).await;
        assert!(page.position > after, "no progress after {after}");
        let feeds = page.resources.iter().filter(|r| r.kind == "feed").count();
        assert!(feeds <= 4 + 2, "{feeds} feeds in a page of 4");
        for r in page.resources.iter().filter(|r| r.kind != "feeds") {
            assert!(r.changed_at > after && r.changed_at <= page.position);
            assert!(seen.insert((r.kind, r.key.clone())), "{} {} twice", r.kind, r.key);
        }
        after = page.position;
        pages += 1;
    }
    assert_eq!(seen.len(), 6 + 18);
    assert!(pages >= 3, "{pages}");
}

// ---------------------------------------------------------------------------
// Rebuild equality, the checkpoint guard
// ---------------------------------------------------------------------------

/// A deterministic pseudo-random sequence (no wall clock, no seed from outside).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const VOCABULARY: &[&str] = &[
    "rust", "ops", "release", "incident", "database", "frontend", "security", "infra",
];

/// A log of creates and edits of `posts` posts, with other categories and
/// stored oddities in between.
async fn write_log(f: &Fixture, posts: usize, commands: usize) {
    let mut rng = Lcg(42);
    for i in 0..commands {
        let id = format!("p{}", rng.next(posts));
        let mut tags: Vec<&str> = (0..rng.next(4))
            .map(|_| VOCABULARY[rng.next(VOCABULARY.len())])
            .collect();
        if rng.next(5) == 0 {
            tags.push("Rust ");
        }
        let data = match rng.next(4) {
            0 => json!({"title": format!("title {i}")}),
            1 => json!({"content": format!("content {i}\n\"quoted\"")}),
            2 => json!({"tags": tags}),
            _ => json!({"title": format!("t{i}"), "tags": tags}),
        };
        let created = f
            .try_command(
                &alice(),
                "CreatePost",
                &id,
                json!({"title": format!("post {id}"), "content": "c", "tags": tags}),
            )
            .await;
        if created.is_err() {
            let _ = f.try_command(&bot(), "UpdatePost", &id, data).await;
        }
        match rng.next(20) {
            0 => {
                f.append_raw("deployment-d", "DeploymentStarted", json!({"service": "api"}))
                    .await;
            }
            1 => {
                f.append_raw(&format!("post-{id}"), "PostUpdated", json!([1, 2])).await;
            }
            _ => {}
        }
    }
}

/// What the feeds must say, worked out from the log itself: each post's tags,
/// and for each feed the last event that touched it (an event touches the
/// feeds of its post's tags before and after it).
async fn expected_feeds(store: &SqliteStore) -> BTreeMap<String, (i64, u64, String)> {
    let page = store
        .read_all(0, &Filter::default(), 1_000_000)
        .await
        .expect("read the log");
    let mut tags_by_post: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut touched: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for e in &page.events {
        let e = e.envelope().expect("envelope");
        let Some(id) = e.stream.strip_prefix("post-") else {
            continue;
        };
        let new: Option<Vec<String>> = match (e.event_type.as_str(), tags_by_post.contains_key(id)) {
            ("PostCreated", false) => Some(
                e.data["tags"]
                    .as_array()
                    .expect("tags")
                    .iter()
                    .map(|t| t.as_str().expect("tag").to_owned())
                    .collect(),
            ),
            ("PostUpdated", true) if e.data.is_object() => match e.data.get("tags") {
                Some(t) => Some(
                    t["new"]
                        .as_array()
                        .expect("new")
                        .iter()
                        .map(|t| t.as_str().expect("tag").to_owned())
                        .collect(),
                ),
                None => Some(tags_by_post[id].clone()),
            },
            _ => None,
        };
        let Some(new) = new else {
            continue;
        };
        let mut clean = Vec::new();
        sanitize(new.iter().map(String::as_str), &mut clean);
        let old = tags_by_post.insert(id.to_owned(), clean.clone()).unwrap_or_default();
        for tag in old.iter().chain(&clean) {
            touched.insert(tag.clone(), (e.position, e.recorded_at.clone()));
        }
    }
    touched
        .into_iter()
        .map(|(tag, (position, at))| {
            let count = tags_by_post.values().filter(|tags| tags.contains(&tag)).count() as i64;
            (tag, (count, position, at))
        })
        .collect()
}

async fn all_feeds(model: &ReadModel<Feeds>) -> BTreeMap<String, (i64, u64, String)> {
    model
        .read(|conn, _| {
            let rows = conn
                .query_vec(
                    "SELECT tag, post_count, updated_position, updated_at FROM feeds",
                    &[],
                    |r| Ok((r.text(0)?, (r.int(1)?, r.position(2)?, r.text(3)?))),
                )
                .expect("query")
                .into_iter()
                .collect();
            Ok(rows)
        })
        .await
        .expect("read")
}

/// `post_tags` agrees with the views, and each feed's count with `post_tags`.
async fn assert_consistent(model: &ReadModel<Feeds>) {
    model
        .read(|conn, _| {
            let mut from_views = BTreeSet::new();
            for (id, view) in conn
                .query_vec("SELECT id, view FROM posts", &[], |r| Ok((r.text(0)?, r.text(1)?)))
                .expect("query")
            {
                let view: Value = serde_json::from_str(&view).expect("JSON");
                for tag in view["tags"].as_array().expect("tags") {
                    from_views.insert((tag.as_str().expect("tag").to_owned(), id.clone()));
                }
            }
            let from_table: BTreeSet<(String, String)> = conn
                .query_vec("SELECT tag, post_id FROM post_tags", &[], |r| {
                    Ok((r.text(0)?, r.text(1)?))
                })
                .expect("query")
                .into_iter()
                .collect();
            assert_eq!(from_table, from_views);
            let bad = conn
                .query_opt(
                    "SELECT count(*) FROM feeds f WHERE post_count !=
                         (SELECT count(*) FROM post_tags t WHERE t.tag = f.tag)",
                    &[],
                    |r| r.int(0),
                )
                .expect("count")
                .unwrap_or(0);
            assert_eq!(bad, 0, "feeds whose count is not their posts'");
            Ok(())
        })
        .await
        .expect("read");
}

#[tokio::test]
async fn incremental_and_rebuilt_models_are_byte_identical_whatever_the_pages() {
    let f = Fixture::new();
    write_log(&f, 40, 400).await;
    let head = f.head().await;
    let store = f.dyn_store();
    let post_events = f
        .store
        .read_all(
            0,
            &Filter {
                categories: vec!["post".into()],
                ..Filter::default()
            },
            1_000_000,
        )
        .await
        .expect("read")
        .events
        .len() as u64;
    assert!(post_events > 300, "{post_events}");

    // Incremental, pages of 1000 (the runner's) in the store's own directory.
    f.catch_up(1000).await;
    let reference = dump(&f.model).await;
    assert!(
        reference.starts_with(&format!("checkpoint {head}\n")),
        "{}",
        &reference[..40]
    );
    assert!(reference.matches("\nposts |").count() >= 30, "{reference}");
    assert_consistent(&f.model).await;
    let expected = expected_feeds(&f.store).await;
    assert!(expected.len() >= VOCABULARY.len());
    assert_eq!(all_feeds(&f.model).await, expected, "feeds worked out from the log");

    // Incremental, pages of 7.
    let other = tempfile::tempdir().expect("temp dir");
    let seven = ReadModel::<Feeds>::open(other.path()).expect("open");
    catch_up(&seven, &store, 7).await;
    assert_eq!(dump(&seven).await, reference, "incremental pages of 7");

    // Rebuilt by the fast path (a scan of the log's file) in chunks of 5 and 10,000,
    // and by the generic path (any event store) in pages of 5.
    for page in [5, 10_000] {
        let source: Arc<dyn RebuildSource> = f.store.clone();
        let mut calls = Vec::new();
        let applied = seven
            .rebuild_with_page(source, page, &mut |checkpoint, head| calls.push((checkpoint, head)))
            .await
            .expect("rebuild");
        assert_eq!(applied, post_events, "page {page}");
        assert_eq!(calls.last(), Some(&(head, head)), "page {page}");
        assert_eq!(dump(&seven).await, reference, "rebuilt in chunks of {page}");
    }
    let source: Arc<dyn RebuildSource> = Arc::new(AnyStore(store.clone()));
    seven
        .rebuild_with_page(source, 5, &mut |_, _| {})
        .await
        .expect("rebuild");
    assert_eq!(dump(&seven).await, reference, "rebuilt through read_all in pages of 5");

    // And the model of the runner, rebuilt in place with the default page.
    let source: Arc<dyn RebuildSource> = f.store.clone();
    Consumer::rebuild(&*f.model, source, &mut |_, _| {})
        .await
        .expect("rebuild");
    assert_eq!(dump(&f.model).await, reference, "rebuilt in place");
}

#[tokio::test]
async fn an_apply_after_another_moved_the_checkpoint_changes_nothing() {
    let f = Fixture::new();
    f.create("p1", "One", &["rust"]).await;
    f.create("p2", "Two", &["rust", "ops"]).await;
    f.update("p1", json!({"tags": ["ops"]})).await;
    let page = f.store.read_all(0, &Filter::default(), 100).await.expect("read");
    assert_eq!(page.events.len(), 3);

    // Another process (a second handle on the same file) applies first.
    let other = ReadModel::<Feeds>::open(f.dir.path()).expect("open");
    assert!(
        other
            .apply(0, page.next_after, page.events.clone())
            .await
            .expect("apply")
    );
    let after_other = dump(&f.model).await;
    assert!(after_other.contains("feeds | \"ops\" | 2 |"), "{after_other}");

    // This one still expects checkpoint 0: it changes nothing (no count twice).
    assert!(
        !f.model
            .apply(0, page.next_after, page.events.clone())
            .await
            .expect("apply")
    );
    assert_eq!(dump(&f.model).await, after_other);
    // process_next reads again from the moved checkpoint: nothing left to do.
    let step = f.model.process_next(&f.dyn_store(), 100).await.expect("step");
    assert_eq!((step.read, step.checkpoint), (0, page.next_after));
    assert_eq!(dump(&f.model).await, after_other);
    assert_consistent(&f.model).await;
}

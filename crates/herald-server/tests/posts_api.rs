//! The posts domain over HTTP (issue 10): `POST /api/commands` with
//! `CreatePost` / `UpdatePost`, and `GET /api/posts/{id}`, `/api/feeds`,
//! `/api/feeds/{tag}` read from the `feeds` read model that herald keeps up
//! to date while it runs.

mod support;

use std::collections::BTreeSet;

use herald_core::auth::Role;
use herald_server::auth::MintedToken;
use reqwest::StatusCode;
use serde_json::{Value, json};

struct App {
    server: support::Server,
    operator: MintedToken,
    viewer: MintedToken,
}

async fn app() -> App {
    let server = support::start(support::config()).await;
    let operator = support::mint(&server.state, "root", "writer", Role::Operator).await;
    let viewer = support::mint(&server.state, "root", "reader", Role::Viewer).await;
    App {
        server,
        operator,
        viewer,
    }
}

struct Reply {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl App {
    async fn command(&self, command_type: &str, id: &str, data: Value) -> Reply {
        let r = self
            .server
            .client
            .post(self.server.url("/api/commands"))
            .bearer_auth(&self.operator.secret)
            .json(&json!({"type": command_type, "aggregate_id": id, "data": data}))
            .send()
            .await
            .expect("POST /api/commands");
        reply(r).await
    }

    /// A command that must be accepted: its position.
    async fn command_ok(&self, command_type: &str, id: &str, data: Value) -> u64 {
        let r = self.command(command_type, id, data.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{command_type} {id} {data}: {}", r.body);
        r.body["position"].as_u64().expect("position")
    }

    async fn get_as(&self, token: Option<&str>, path: &str) -> Reply {
        let mut rb = self.server.client.get(self.server.url(path));
        if let Some(token) = token {
            rb = rb.bearer_auth(token);
        }
        reply(rb.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.get_as(Some(&self.viewer.secret), path).await
    }

    /// A GET that must answer 200 with JSON.
    async fn get_ok(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.body);
        assert_eq!(r.content_type, "application/json", "GET {path}");
        r.body
    }

    /// A refusal: asserts the status and the problem+json shape; returns its detail.
    #[track_caller]
    fn problem(&self, r: &Reply, status: StatusCode) -> String {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(r.body["status"], status.as_u16());
        r.body["detail"].as_str().expect("detail").to_owned()
    }
}

async fn reply(r: reqwest::Response) -> Reply {
    let status = r.status();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        content_type,
        body,
    }
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().expect("an object").keys().map(String::as_str).collect()
}

fn titles(feed: &Value) -> Vec<&str> {
    feed["posts"]
        .as_array()
        .expect("posts")
        .iter()
        .map(|p| p["title"].as_str().expect("title"))
        .collect()
}

const POST_FIELDS: &[&str] = &[
    "id",
    "title",
    "content",
    "tags",
    "author",
    "created_at",
    "updated_at",
    "stream_version",
];

#[tokio::test]
async fn create_and_update_then_read_ones_own_write() {
    let app = app().await;
    let r = app
        .command(
            "CreatePost",
            "p1",
            json!({"title": "Hello", "content": "First\npost.", "tags": [" Rust", "ops", "RUST"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["stream"], "post-p1");
    assert_eq!(r.body["version"], 1);
    let event = &r.body["events"][0];
    assert_eq!(event["type"], "PostCreated");
    assert_eq!(
        event["data"],
        json!({"title": "Hello", "content": "First\npost.", "tags": ["rust", "ops"]})
    );
    let created_at = event["recorded_at"].clone();
    let created = r.body["position"].as_u64().expect("position");

    // Read at the command's position: the post is there.
    let view = app.get_ok(&format!("/api/posts/p1?min_position={created}")).await;
    let mut fields: BTreeSet<&str> = POST_FIELDS.iter().copied().collect();
    fields.insert("position");
    assert_eq!(keys(&view), fields);
    assert_eq!(view["id"], "p1");
    assert_eq!(view["title"], "Hello");
    assert_eq!(view["content"], "First\npost.");
    assert_eq!(view["tags"], json!(["rust", "ops"]));
    assert_eq!(
        view["author"],
        json!({"kind": "token", "id": app.operator.record.id, "name": "writer"})
    );
    assert_eq!(view["created_at"], created_at);
    assert_eq!(view["updated_at"], created_at);
    assert_eq!(view["stream_version"], 1);
    assert!(view["position"].as_u64().expect("position") >= created);

    // Only what changed, old and new.
    let r = app
        .command(
            "UpdatePost",
            "p1",
            json!({"title": "Hello again", "content": "First\npost.", "tags": ["ops", "infra"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let event = &r.body["events"][0];
    assert_eq!(event["type"], "PostUpdated");
    assert_eq!(
        event["data"],
        json!({"title": {"old": "Hello", "new": "Hello again"}, "tags": {"old": ["rust", "ops"], "new": ["ops", "infra"]}})
    );
    let updated = r.body["position"].as_u64().expect("position");
    let view = app.get_ok(&format!("/api/posts/p1?min_position={updated}")).await;
    assert_eq!(view["title"], "Hello again");
    assert_eq!(view["tags"], json!(["ops", "infra"]));
    assert_eq!(view["stream_version"], 2);
    assert_eq!(view["updated_at"], event["recorded_at"]);
    assert_eq!(view["created_at"], created_at);
    assert!(view["position"].as_u64().expect("position") >= updated);
}

#[tokio::test]
async fn refused_commands_have_the_problem_shapes() {
    let app = app().await;
    let detail = app.problem(
        &app.command(
            "CreatePost",
            "p1",
            json!({"title": "t", "content": "c", "tags": ["ok", "x", "no spaces"]}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(
        detail,
        "data.tags[2]: \"no spaces\" is not a tag (1–32 characters of a–z, 0–9 and -)"
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let detail = app.problem(
        &app.command(
            "CreatePost",
            "p1",
            json!({"title": "t", "content": "c", "tags": eleven}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(detail, "data.tags: at most 10 tags (got 11)");
    let detail = app.problem(
        &app.command("CreatePost", "p1", json!({"title": "x".repeat(201), "content": "c"}))
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert!(detail.starts_with("data.title:"), "{detail}");
    let detail = app.problem(
        &app.command("CreatePost", "p1", json!({"title": "t", "content": "x".repeat(20_001)}))
            .await,
        StatusCode::BAD_REQUEST,
    );
    assert!(detail.starts_with("data.content:"), "{detail}");
    let detail = app.problem(
        &app.command("UpdatePost", "p1", json!({})).await,
        StatusCode::BAD_REQUEST,
    );
    assert_eq!(detail, "data: at least one of title, content, tags");

    // The rules: 422, the rule as the title.
    let r = app.command("UpdatePost", "p1", json!({"title": "t"})).await;
    app.problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["title"], "post_not_found");
    assert_eq!(r.body["type"], "/problems/rule-violated");
    app.command_ok("CreatePost", "p1", json!({"title": "t", "content": "c", "tags": ["a"]}))
        .await;
    let r = app
        .command("CreatePost", "p1", json!({"title": "t", "content": "c"}))
        .await;
    app.problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["title"], "post_exists");
    let r = app
        .command("UpdatePost", "p1", json!({"title": "t", "tags": ["A", "a"]}))
        .await;
    app.problem(&r, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["title"], "nothing_changed");
    // Nothing of that was written: one event in the stream.
    assert_eq!(app.server.count_events("PostCreated").await, 1);
    assert_eq!(app.server.count_events("PostUpdated").await, 0);
}

#[tokio::test]
async fn feeds_list_and_one_feed_newest_first() {
    let app = app().await;
    app.command_ok(
        "CreatePost",
        "p1",
        json!({"title": "One", "content": "c", "tags": ["rust", "ops"]}),
    )
    .await;
    app.command_ok(
        "CreatePost",
        "p2",
        json!({"title": "Two", "content": "c", "tags": ["rust"]}),
    )
    .await;
    let last = app
        .command_ok(
            "CreatePost",
            "p3",
            json!({"title": "Three", "content": "c", "tags": ["Infra"]}),
        )
        .await;

    let list = app.get_ok(&format!("/api/feeds?min_position={last}")).await;
    assert_eq!(keys(&list), BTreeSet::from(["feeds", "position"]));
    assert!(list["position"].as_u64().expect("position") >= last);
    let feeds = list["feeds"].as_array().expect("feeds");
    let tags: Vec<(&str, u64)> = feeds
        .iter()
        .map(|f| {
            (
                f["tag"].as_str().expect("tag"),
                f["post_count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [("infra", 1), ("rust", 2), ("ops", 1)],
        "most recently updated first"
    );
    for f in feeds {
        assert_eq!(keys(f), BTreeSet::from(["tag", "post_count", "updated_at"]));
    }

    // `/api/feeds/Rust` is rust; its posts newest first, each without a position.
    for path in ["/api/feeds/Rust", "/api/feeds/rust", "/api/feeds/%20RUST%20"] {
        let feed = app.get_ok(&format!("{path}?min_position={last}")).await;
        assert_eq!(
            keys(&feed),
            BTreeSet::from(["tag", "post_count", "updated_at", "posts", "position"]),
            "{path}"
        );
        assert_eq!(feed["tag"], "rust", "{path}");
        assert_eq!(feed["post_count"], 2);
        assert_eq!(titles(&feed), ["Two", "One"]);
        assert_eq!(keys(&feed["posts"][0]), POST_FIELDS.iter().copied().collect());
        assert_eq!(feed["updated_at"], feeds[1]["updated_at"]);
    }
    let feed = app.get_ok("/api/feeds/rust?limit=1").await;
    assert_eq!(titles(&feed), ["Two"]);
    assert_eq!(feed["post_count"], 2, "the count is every post's, whatever the limit");
    let feed = app.get_ok("/api/feeds/rust?limit=5000").await;
    assert_eq!(titles(&feed), ["Two", "One"]);

    // The last post leaves a feed: 404 and out of the list.
    let left = app.command_ok("UpdatePost", "p3", json!({"tags": ["rust"]})).await;
    let r = app.get(&format!("/api/feeds/infra?min_position={left}")).await;
    app.problem(&r, StatusCode::NOT_FOUND);
    let list = app.get_ok(&format!("/api/feeds?min_position={left}")).await;
    let tags: Vec<&str> = list["feeds"]
        .as_array()
        .expect("feeds")
        .iter()
        .map(|f| f["tag"].as_str().expect("tag"))
        .collect();
    assert_eq!(tags, ["rust", "ops"]);
    let feed = app.get_ok("/api/feeds/rust").await;
    assert_eq!(titles(&feed), ["Three", "Two", "One"]);
}

#[tokio::test]
async fn bad_queries_unknown_resources_and_no_credentials() {
    let app = app().await;
    let p = app
        .command_ok(
            "CreatePost",
            "p1",
            json!({"title": "One", "content": "c", "tags": ["rust"]}),
        )
        .await;
    app.get_ok(&format!("/api/posts/p1?min_position={p}")).await;

    for (path, field) in [
        ("/api/feeds/rust?limit=0", "limit"),
        ("/api/feeds/rust?limit=ten", "limit"),
        ("/api/feeds/rust?limit=-1", "limit"),
        ("/api/feeds/rust?min_position=x", "min_position"),
        ("/api/feeds/rust?order=asc", "order"),
        ("/api/feeds?limit=1", "limit"),
        ("/api/feeds?tag=rust", "tag"),
        ("/api/posts/p1?fields=title", "fields"),
        ("/api/posts/p1?min_position=", "min_position"),
    ] {
        let detail = app.problem(&app.get(path).await, StatusCode::BAD_REQUEST);
        assert!(detail.starts_with(&format!("{field}:")), "{path}: {detail}");
    }
    let detail = app.problem(&app.get("/api/feeds/no%20spaces").await, StatusCode::BAD_REQUEST);
    assert_eq!(
        detail,
        "tag: \"no spaces\" is not a tag (1–32 characters of a–z, 0–9 and -)"
    );
    app.problem(
        &app.get(&format!("/api/feeds/{}", "x".repeat(33))).await,
        StatusCode::BAD_REQUEST,
    );
    app.problem(&app.get("/api/posts/not%20an%20id").await, StatusCode::BAD_REQUEST);

    app.problem(&app.get("/api/posts/p2").await, StatusCode::NOT_FOUND);
    app.problem(&app.get("/api/feeds/ops").await, StatusCode::NOT_FOUND);

    for path in ["/api/posts/p1", "/api/feeds", "/api/feeds/rust"] {
        let r = app.get_as(None, path).await;
        app.problem(&r, StatusCode::UNAUTHORIZED);
    }
    // Viewers read; they do not write.
    let r = app
        .server
        .client
        .post(app.server.url("/api/commands"))
        .bearer_auth(&app.viewer.secret)
        .json(&json!({"type": "CreatePost", "aggregate_id": "p9", "data": {"title": "t", "content": "c"}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_min_position_the_model_does_not_reach_answers_with_what_it_has() {
    let app = app().await;
    let p = app
        .command_ok(
            "CreatePost",
            "p1",
            json!({"title": "One", "content": "c", "tags": ["rust"]}),
        )
        .await;
    let ahead = p + 1_000;
    // It waits (at most 5 s) and then answers; its position tells how far it got.
    let list = app.get_ok(&format!("/api/feeds?min_position={ahead}")).await;
    let position = list["position"].as_u64().expect("position");
    assert!(position >= p && position < ahead, "{position}");
    assert_eq!(list["feeds"][0]["tag"], "rust");
}

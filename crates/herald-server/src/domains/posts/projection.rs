//! The `feeds` read model: one row per post (its [`PostView`] as JSON), which
//! tags it has (`post_tags`, newest first per tag), and one row per tag ever
//! used (`feeds`: how many posts have it, and when the feed last changed).
//!
//! A feed changes whenever one of its posts is added, removed or edited: an
//! event on a post touches every feed in its old and new tags. A post's row in
//! memory keeps what it needs to write a diff — the tags last written, and the
//! tags taken away since (with the event that took each) — and writes its
//! share of each feed commutatively (`post_count += delta`, `updated_*` from
//! whichever touch has the larger position), so the rows of a page can be
//! written in any order and the tables come out the same whatever the pages.

use std::collections::HashMap;
use std::fmt::Write as _;

use herald_core::event_ref::EventRef;
use herald_core::store::StoreError;
use herald_store::projection::{Changed, ChangedResource, Db, Param, RowProjection, SqlRow, insert_rows};

use super::aggregate::CATEGORY;
use super::view::{PostView, post_id};

/// The resource kind (and SSE event) of one post.
pub const POST: &str = "post";
/// The resource kind (and SSE event) of one feed.
pub const FEED: &str = "feed";
/// The resource kind (and SSE event) of the list of feeds.
pub const FEEDS: &str = "feeds";

/// Posts a feed resource (and the stream of one feed) carries.
pub const FEED_POSTS: usize = 50;

pub struct Feeds;

/// A tag that left the post since the row was last written, and the event
/// that took it away last.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Removal {
    tag: String,
    position: u64,
    recorded_at: String,
}

/// A post's row in memory.
#[derive(Debug)]
pub struct Row {
    pub view: PostView,
    /// The position of its `PostCreated` (a feed's order).
    pub created_position: u64,
    /// The position of the last event that changed it.
    pub updated_position: u64,
    /// The tags `post_tags` holds for it.
    written: Vec<String>,
    removed: Vec<Removal>,
}

/// A post's share of the feed of a tag it lost: the event that took it
/// touched it last.
#[derive(Debug)]
struct Lost {
    tag: String,
    /// -1 when `post_tags` held it, else 0.
    delta: i64,
    position: u64,
    recorded_at: String,
}

/// What writing a post takes. Its share of each feed: every event that
/// changed it touched the feeds of the tags it had after it — the last one,
/// those it has now (at `updated_position`, +1 for those new to
/// `post_tags`); the tags it lost were touched last by the event that took
/// them (`lost`); a tag `post_tags` held that it lost with no such event
/// still comes off the count (at `updated_position`).
pub struct Write {
    view: String,
    created_position: u64,
    updated_position: u64,
    /// The `recorded_at` of the event at `updated_position`.
    updated_at: String,
    /// Its tags, each with whether `post_tags` lacks it yet.
    tags: Vec<(String, bool)>,
    /// The tags `post_tags` holds for it no longer.
    dropped: Vec<String>,
    lost: Vec<Lost>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn parse_view(id: &str, json: &str) -> Result<PostView, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("read model row for post {id}: {e}")))
}

const UPSERT_POSTS: &str = "INSERT INTO posts (created_position, id, view, updated_position) VALUES";
const UPSERT_POSTS_TAIL: &str =
    "ON CONFLICT (id) DO UPDATE SET view = excluded.view, updated_position = excluded.updated_position";

// A post's `created_position` is its own (the posts' key) and never changes:
// `(tag, created_position)` is a post's tag, and a feed's order too.
const ADD_TAGS: &str = "INSERT INTO post_tags (tag, created_position, post_id) VALUES";
const ADD_TAGS_TAIL: &str = "ON CONFLICT (tag, created_position) DO UPDATE SET post_id = excluded.post_id";

const DROP_TAG: &str = "DELETE FROM post_tags WHERE tag = ?1 AND created_position = ?2";

/// A post's share of a feed, commutative with every other post's.
const TOUCH_FEED: &str = "INSERT INTO feeds (tag, post_count, updated_at, updated_position) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (tag) DO UPDATE SET
         post_count = feeds.post_count + excluded.post_count,
         updated_at = CASE WHEN excluded.updated_position > feeds.updated_position
                           THEN excluded.updated_at ELSE feeds.updated_at END,
         updated_position = CASE WHEN excluded.updated_position > feeds.updated_position
                                 THEN excluded.updated_position ELSE feeds.updated_position END";

impl RowProjection for Feeds {
    const NAME: &'static str = "feeds";
    const CATEGORIES: &'static [&'static str] = &[CATEGORY];
    // 2: `post_tags` keyed by `(tag, created_position)`, without an index.
    const VERSION: i64 = 2;
    const SCHEMA: &'static str = "
        CREATE TABLE IF NOT EXISTS posts (
            created_position INTEGER PRIMARY KEY,
            id               TEXT NOT NULL UNIQUE,
            view             TEXT NOT NULL,
            updated_position INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX IF NOT EXISTS posts_updated ON posts (updated_position);
        CREATE TABLE IF NOT EXISTS post_tags (
            tag              TEXT NOT NULL,
            created_position INTEGER NOT NULL,
            post_id          TEXT NOT NULL,
            PRIMARY KEY (tag, created_position)
        ) STRICT, WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS feeds (
            tag              TEXT PRIMARY KEY,
            post_count       INTEGER NOT NULL,
            updated_at       TEXT NOT NULL,
            updated_position INTEGER NOT NULL
        ) STRICT, WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS feeds_updated ON feeds (updated_position);";
    // Tags in byte order, as SQLite compares them (`feeds`' order).
    const POSTGRES_SCHEMA: &'static str = "
        CREATE TABLE IF NOT EXISTS posts (
            created_position BIGINT PRIMARY KEY,
            id               TEXT NOT NULL UNIQUE,
            view             TEXT NOT NULL,
            updated_position BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS posts_updated ON posts (updated_position);
        CREATE TABLE IF NOT EXISTS post_tags (
            tag              TEXT COLLATE \"C\" NOT NULL,
            created_position BIGINT NOT NULL,
            post_id          TEXT NOT NULL,
            PRIMARY KEY (tag, created_position)
        );
        CREATE TABLE IF NOT EXISTS feeds (
            tag              TEXT COLLATE \"C\" PRIMARY KEY,
            post_count       BIGINT NOT NULL,
            updated_at       TEXT NOT NULL,
            updated_position BIGINT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS feeds_updated ON feeds (updated_position);";
    const TABLES: &'static [&'static str] = &["posts", "post_tags", "feeds"];

    type Row = Row;
    type Write = Write;

    fn key(stream: &str) -> Option<&str> {
        post_id(stream)
    }

    fn fold(row: &mut Option<Row>, event: &EventRef<'_>) -> bool {
        let Some(r) = row else {
            let Some(view) = PostView::create(event) else {
                return false;
            };
            *row = Some(Row {
                view,
                created_position: event.position,
                updated_position: event.position,
                written: Vec::new(),
                removed: Vec::new(),
            });
            return true;
        };
        let mut removed = Vec::new();
        if !r.view.apply(event, &mut removed) {
            return false;
        }
        r.updated_position = event.position;
        for tag in removed {
            match r.removed.iter_mut().find(|m| m.tag == tag) {
                Some(m) => {
                    m.position = event.position;
                    m.recorded_at.clear();
                    m.recorded_at.push_str(&event.recorded_at);
                }
                None => r.removed.push(Removal {
                    tag,
                    position: event.position,
                    recorded_at: event.recorded_at.clone().into_owned(),
                }),
            }
        }
        true
    }

    fn load(db: &dyn Db, key: &str) -> Result<Option<Row>, StoreError> {
        db.query_opt(
            "SELECT created_position, updated_position, view FROM posts WHERE id = ?1",
            &[key.into()],
            |r| {
                let view = parse_view(key, &r.text(2)?)?;
                Ok(Row {
                    written: view.tags.clone(),
                    view,
                    created_position: r.position(0)?,
                    updated_position: r.position(1)?,
                    removed: Vec::new(),
                })
            },
        )
    }

    fn prepare(_key: &str, row: &mut Row) -> Result<Write, StoreError> {
        let current = &row.view.tags;
        let tags: Vec<(String, bool)> = current
            .iter()
            .map(|tag| (tag.clone(), !row.written.contains(tag)))
            .collect();
        let mut lost = Vec::new();
        for removal in row.removed.drain(..) {
            if current.contains(&removal.tag) {
                continue;
            }
            lost.push(Lost {
                delta: if row.written.contains(&removal.tag) { -1 } else { 0 },
                tag: removal.tag,
                position: removal.position,
                recorded_at: removal.recorded_at,
            });
        }
        let dropped: Vec<String> = row.written.iter().filter(|t| !current.contains(t)).cloned().collect();
        row.written.clone_from(current);
        // (Sized for the whole view: it is written once, never grown.)
        let view = &row.view;
        let mut json =
            Vec::with_capacity(256 + view.id.len() + view.title.len() + view.content.len() + 40 * view.tags.len());
        serde_json::to_writer(&mut json, view).map_err(backend)?;
        Ok(Write {
            view: String::from_utf8(json).map_err(backend)?,
            created_position: row.created_position,
            updated_position: row.updated_position,
            updated_at: view.updated_at.clone(),
            tags,
            dropped,
            lost,
        })
    }

    fn write(db: &dyn Db, key: &str, w: &Write) -> Result<(), StoreError> {
        write_rows(db, std::iter::once((key, w)))
    }

    fn write_all(db: &dyn Db, rows: &[(Box<str>, Write)]) -> Result<(), StoreError> {
        write_rows(db, rows.iter().map(|(key, w)| (&**key, w)))
    }

    fn changed(db: &dyn Db, after: u64, until: u64, limit: usize) -> Result<Changed, StoreError> {
        let posts = db.query_vec(
            "SELECT id, updated_position, view FROM posts
             WHERE updated_position > ?1 AND updated_position <= ?2
             ORDER BY updated_position LIMIT ?3",
            &[after.into(), until.into(), limit.into()],
            |r| Ok((r.text(0)?, r.position(1)?, r.text(2)?)),
        )?;
        // An event changes one post: positions are unique per post, and a
        // full page covers everything up to its last row, feeds included
        // (every feed change is a post's).
        let mut position = match posts.last() {
            Some((_, last, _)) if posts.len() >= limit => *last,
            _ => until,
        };
        let mut feeds = db.query_vec(
            "SELECT tag, post_count, updated_at, updated_position FROM feeds
             WHERE updated_position > ?1 AND updated_position <= ?2
             ORDER BY updated_position, tag",
            &[after.into(), position.into()],
            |r| Ok((r.text(0)?, FeedRow::from_sql(r, 1)?)),
        )?;
        // Each feed carries its newest posts: a page holds about `limit` of
        // them too, ending after the last change of the limit-th one (the
        // feeds one event touched all come together).
        if feeds.len() > limit.max(1) {
            let cut = feeds[limit.max(1) - 1].1.updated_position;
            if cut < position {
                position = cut;
                feeds.retain(|(_, f)| f.updated_position <= cut);
            }
        }
        let mut resources: Vec<ChangedResource> = posts
            .into_iter()
            .filter(|(_, updated, _)| *updated <= position)
            .map(|(id, updated, view)| ChangedResource {
                kind: POST,
                key: id,
                changed_at: updated,
                event: POST,
                json: with_position(&view, position),
                class: None,
            })
            .collect();
        if let Some(last) = feeds.iter().map(|(_, f)| f.updated_position).max() {
            for (tag, feed) in &feeds {
                resources.push(ChangedResource {
                    kind: FEED,
                    key: tag.clone(),
                    changed_at: feed.updated_position,
                    event: FEED,
                    json: feed_json(db, tag, feed, FEED_POSTS, position)?,
                    class: None,
                });
            }
            resources.push(ChangedResource {
                kind: FEEDS,
                key: String::new(),
                changed_at: last,
                event: FEEDS,
                json: feeds_json(db, position)?.0,
                class: None,
            });
        }
        Ok(Changed { resources, position })
    }
}

/// The feed shares of several posts merged: what writing each in turn does.
struct Share<'a> {
    delta: i64,
    position: u64,
    recorded_at: &'a str,
}

/// Adds a post's share of the feed of `tag` to `shares`: the deltas summed,
/// `updated_*` from the touch with the larger position (as [`TOUCH_FEED`]
/// does, one after another).
fn share<'a>(shares: &mut HashMap<&'a str, Share<'a>>, tag: &'a str, delta: i64, position: u64, recorded_at: &'a str) {
    let share = shares.entry(tag).or_insert(Share {
        delta: 0,
        position,
        recorded_at,
    });
    share.delta += delta;
    if position > share.position {
        share.position = position;
        share.recorded_at = recorded_at;
    }
}

/// Writes posts' rows, then each feed they touch once, their shares merged.
fn write_rows<'a>(db: &dyn Db, rows: impl Iterator<Item = (&'a str, &'a Write)>) -> Result<(), StoreError> {
    let mut shares: HashMap<&'a str, Share<'a>> = HashMap::new();
    let mut posts: Vec<(&'a str, &'a Write)> = Vec::new();
    // (tag, created_position, post id), in the order of `post_tags`' key.
    let mut added: Vec<(&'a str, u64, &'a str)> = Vec::new();
    for (key, w) in rows {
        posts.push((key, w));
        for tag in &w.dropped {
            db.execute(DROP_TAG, &[tag.into(), w.created_position.into()])?;
            if !w.lost.iter().any(|l| &l.tag == tag) {
                share(&mut shares, tag, -1, w.updated_position, &w.updated_at);
            }
        }
        for (tag, new) in &w.tags {
            if *new {
                added.push((tag, w.created_position, key));
            }
            share(&mut shares, tag, i64::from(*new), w.updated_position, &w.updated_at);
        }
        for l in &w.lost {
            share(&mut shares, &l.tag, l.delta, l.position, &l.recorded_at);
        }
    }
    insert_rows(db, UPSERT_POSTS, 4, UPSERT_POSTS_TAIL, &posts, |(key, w), params| {
        params.extend([
            Param::from(w.created_position),
            Param::from(*key),
            Param::from(&w.view),
            Param::from(w.updated_position),
        ])
    })?;
    added.sort_unstable();
    insert_rows(db, ADD_TAGS, 3, ADD_TAGS_TAIL, &added, |(tag, created, key), params| {
        params.extend([Param::from(*tag), Param::from(*created), Param::from(*key)])
    })?;
    for (tag, share) in shares {
        db.execute(
            TOUCH_FEED,
            &[
                tag.into(),
                share.delta.into(),
                share.recorded_at.into(),
                share.position.into(),
            ],
        )?;
    }
    Ok(())
}

/// A stored view (`{…}`) with `"position":P` added at its end.
pub fn with_position(view: &str, position: u64) -> String {
    let body = view.strip_suffix('}').unwrap_or(view);
    let mut out = String::with_capacity(body.len() + 32);
    out.push_str(body);
    if body.len() > 1 {
        out.push(',');
    }
    let _ = write!(out, "\"position\":{position}}}");
    out
}

/// A feed's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub post_count: i64,
    pub updated_at: String,
    pub updated_position: u64,
}

impl FeedRow {
    fn from_sql(r: &dyn SqlRow, first: usize) -> Result<FeedRow, StoreError> {
        Ok(FeedRow {
            post_count: r.int(first)?,
            updated_at: r.text(first + 1)?,
            updated_position: r.position(first + 2)?,
        })
    }
}

/// `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    // Strings always serialize.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// One stored post view as JSON text, and the position of its last change.
pub fn post(db: &dyn Db, id: &str) -> Result<Option<(String, u64)>, StoreError> {
    db.query_opt(
        "SELECT view, updated_position FROM posts WHERE id = ?1",
        &[id.into()],
        |r| Ok((r.text(0)?, r.position(1)?)),
    )
}

/// The row of the feed `tag` (a count of 0 included), if any post ever had it.
pub fn feed(db: &dyn Db, tag: &str) -> Result<Option<FeedRow>, StoreError> {
    db.query_opt(
        "SELECT post_count, updated_at, updated_position FROM feeds WHERE tag = ?1",
        &[tag.into()],
        |r| FeedRow::from_sql(r, 0),
    )
}

/// The views of the newest `limit` posts tagged `tag`, newest first.
pub fn feed_posts(db: &dyn Db, tag: &str, limit: usize) -> Result<Vec<String>, StoreError> {
    db.query_vec(
        "SELECT p.view FROM post_tags t JOIN posts p ON p.created_position = t.created_position
         WHERE t.tag = ?1 ORDER BY t.created_position DESC LIMIT ?2",
        &[tag.into(), limit.into()],
        |r| r.text(0),
    )
}

/// `GET /api/feeds/{tag}`'s body: `{tag, post_count, updated_at, posts, position}`
/// with the newest `limit` posts (none when the count is 0), the stored views spliced in.
pub fn feed_json(db: &dyn Db, tag: &str, feed: &FeedRow, limit: usize, position: u64) -> Result<String, StoreError> {
    let posts = if feed.post_count > 0 {
        feed_posts(db, tag, limit)?
    } else {
        Vec::new()
    };
    let mut out = String::with_capacity(posts.iter().map(|p| p.len() + 1).sum::<usize>() + 128);
    out.push_str("{\"tag\":");
    json_string(&mut out, tag);
    let _ = write!(out, ",\"post_count\":{},\"updated_at\":", feed.post_count.max(0));
    json_string(&mut out, &feed.updated_at);
    out.push_str(",\"posts\":[");
    for (i, view) in posts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(view);
    }
    let _ = write!(out, "],\"position\":{position}}}");
    Ok(out)
}

/// `GET /api/feeds`'s body — the feeds with posts, most recently updated
/// first — and the position of the latest change to any feed (0: none).
pub fn feeds_json(db: &dyn Db, position: u64) -> Result<(String, u64), StoreError> {
    let mut out = String::from("{\"feeds\":[");
    let mut latest = 0;
    let mut first = true;
    db.query(
        "SELECT tag, post_count, updated_at, updated_position FROM feeds
         ORDER BY updated_position DESC, tag",
        &[],
        &mut |r| {
            let feed = FeedRow::from_sql(r, 1)?;
            latest = latest.max(feed.updated_position);
            if feed.post_count <= 0 {
                return Ok(());
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str("{\"tag\":");
            json_string(&mut out, &r.text(0)?);
            let _ = write!(out, ",\"post_count\":{},\"updated_at\":", feed.post_count);
            json_string(&mut out, &feed.updated_at);
            out.push('}');
            Ok(())
        },
    )?;
    let _ = write!(out, "],\"position\":{position}}}");
    Ok((out, latest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_position_appends_the_field() {
        assert_eq!(with_position(r#"{"id":"a"}"#, 7), r#"{"id":"a","position":7}"#);
        assert_eq!(with_position("{}", 7), r#"{"position":7}"#);
    }
}

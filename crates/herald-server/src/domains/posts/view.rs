//! One post as clients see it (`GET /api/posts/{id}`, and each post of a
//! feed), folded from its stream's events through the borrowed [`EventRef`].
//! Pure: the storage is in `projection.rs`.

use std::borrow::Cow;

use herald_core::envelope::Actor;
use herald_core::event_ref::{EventRef, Str};
use serde::{Deserialize, Serialize};

use super::aggregate::CATEGORY;
use super::tags::sanitize;

/// One post. Serialized as stored (and served, with `"position"` added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostView {
    /// The aggregate id: the stream name without `post-`.
    pub id: String,
    pub title: String,
    pub content: String,
    /// Normalised, each once, in the order given.
    pub tags: Vec<String>,
    /// The actor of `PostCreated`.
    pub author: Actor,
    pub created_at: String,
    /// The `recorded_at` of the last event that changed the post.
    pub updated_at: String,
    /// The version of the last event folded in.
    pub stream_version: u64,
}

// The events' data, borrowed: decoded as the aggregate's own `PostEvent`
// decodes it (same fields, same types, unknown fields ignored), without
// keeping (or copying) the `old` values nobody needs here.
#[derive(Deserialize)]
struct Created<'a> {
    #[serde(borrow)]
    title: Str<'a>,
    #[serde(borrow)]
    content: Str<'a>,
    #[serde(borrow)]
    tags: Vec<Str<'a>>,
}

#[derive(Deserialize)]
struct Updated<'a> {
    #[serde(borrow, default)]
    title: Option<Change<Str<'a>, AnyStr>>,
    #[serde(borrow, default)]
    content: Option<Change<Str<'a>, AnyStr>>,
    #[serde(borrow, default)]
    tags: Option<Change<Vec<Str<'a>>, AnyStrs>>,
}

#[derive(Deserialize)]
struct Change<N, O> {
    #[serde(rename = "old")]
    _old: O,
    new: N,
}

/// A JSON string, read and forgotten.
struct AnyStr;

impl<'de> Deserialize<'de> for AnyStr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = AnyStr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyStr, E> {
                Ok(AnyStr)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A JSON array of strings, read and forgotten.
struct AnyStrs;

impl<'de> Deserialize<'de> for AnyStrs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AnyStrs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyStrs, A::Error> {
                while seq.next_element::<AnyStr>()?.is_some() {}
                Ok(AnyStrs)
            }
        }
        deserializer.deserialize_seq(V)
    }
}

/// Whether the event's data is a JSON object: the aggregate's events decode
/// from nothing else (serde would take an array for a struct, positionally).
fn is_object(event: &EventRef<'_>) -> bool {
    event.data.get().starts_with('{')
}

/// `*to = from`, moving an owned string, reusing `to`'s buffer for a borrowed one.
fn set(to: &mut String, from: Str<'_>) {
    match from.0 {
        Cow::Owned(s) => *to = s,
        Cow::Borrowed(s) => {
            to.clear();
            to.push_str(s);
        }
    }
}

impl PostView {
    /// The view a `PostCreated` starts; `None` for any other event (another
    /// category or type, data that does not parse).
    pub fn create(event: &EventRef<'_>) -> Option<PostView> {
        let id = event.aggregate_id(CATEGORY)?;
        if event.event_type != "PostCreated" || !is_object(event) {
            return None;
        }
        let data = event.decode::<Created<'_>>().ok()?;
        let mut tags = Vec::with_capacity(data.tags.len());
        sanitize(data.tags.iter().map(|t| &**t), &mut tags);
        Some(PostView {
            id: id.to_owned(),
            title: data.title.0.into_owned(),
            content: data.content.0.into_owned(),
            tags,
            author: event.actor.to_owned(),
            created_at: event.recorded_at.clone().into_owned(),
            updated_at: event.recorded_at.clone().into_owned(),
            stream_version: event.version,
        })
    }

    /// Folds a later event of this post in; returns whether it changed. The
    /// tags it took away are pushed onto `removed`.
    ///
    /// Leaves the view unchanged for an event of another post or category, an
    /// unknown type, data that does not parse, a second `PostCreated`, and an
    /// event already folded in (`version <= stream_version`), so applying an
    /// event twice is harmless.
    pub fn apply(&mut self, event: &EventRef<'_>, removed: &mut Vec<String>) -> bool {
        if event.aggregate_id(CATEGORY) != Some(self.id.as_str()) || event.version <= self.stream_version {
            return false;
        }
        if event.event_type != "PostUpdated" || !is_object(event) {
            return false;
        }
        let Ok(data) = event.decode::<Updated<'_>>() else {
            return false;
        };
        if let Some(title) = data.title {
            set(&mut self.title, title.new);
        }
        if let Some(content) = data.content {
            set(&mut self.content, content.new);
        }
        if let Some(tags) = data.tags {
            let mut new = Vec::with_capacity(tags.new.len());
            sanitize(tags.new.iter().map(|t| &**t), &mut new);
            let old = std::mem::replace(&mut self.tags, new);
            removed.extend(old.into_iter().filter(|t| !self.tags.contains(t)));
        }
        self.updated_at.clear();
        self.updated_at.push_str(&event.recorded_at);
        self.stream_version = event.version;
        true
    }

    /// [`Self::create`] or [`Self::apply`], whichever fits.
    pub fn fold(view: &mut Option<PostView>, event: &EventRef<'_>, removed: &mut Vec<String>) -> bool {
        match view {
            Some(v) => v.apply(event, removed),
            None => {
                *view = PostView::create(event);
                view.is_some()
            }
        }
    }
}

/// The aggregate id of a `post-…` stream; `None` for any other category.
pub fn post_id(stream: &str) -> Option<&str> {
    let (category, id) = stream.split_once('-')?;
    (category == CATEGORY).then_some(id)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use uuid::Uuid;

    use herald_core::aggregate::{from_stored, to_new_event};
    use herald_core::envelope::{ActorKind, Envelope};

    use super::*;
    use crate::domains::posts::aggregate::PostEvent;

    fn alice() -> Actor {
        Actor {
            kind: ActorKind::User,
            id: "u1".into(),
            name: "alice".into(),
        }
    }

    fn envelope(stream: &str, version: u64, event_type: &str, data: Value) -> Envelope {
        Envelope {
            position: version + 100,
            id: Uuid::nil(),
            stream: stream.into(),
            version,
            event_type: event_type.into(),
            schema: 1,
            data,
            actor: if version == 1 { alice() } else { Actor::system("bot") },
            command_id: "c".into(),
            correlation_id: "c".into(),
            recorded_at: format!("2026-12-01T00:00:{:02}.000Z", version),
            hash: String::new(),
        }
    }

    fn fold(current: Option<PostView>, e: &Envelope) -> (Option<PostView>, Vec<String>) {
        let json = e.to_canonical_json();
        let event = EventRef::parse(&json).expect("an envelope");
        let mut view = current;
        let mut removed = Vec::new();
        PostView::fold(&mut view, &event, &mut removed);
        (view, removed)
    }

    /// The fold written on the aggregate's owned `PostEvent`: what the borrowed one must agree with.
    fn reference(current: Option<PostView>, e: &Envelope) -> Option<PostView> {
        let Some(id) = post_id(&e.stream) else {
            return current;
        };
        if let Some(view) = &current
            && (view.id != id || e.version <= view.stream_version)
        {
            return current;
        }
        let Ok(event) = from_stored::<PostEvent>(&e.event_type, e.data.clone()) else {
            return current;
        };
        let clean = |tags: Vec<String>| {
            let mut out = Vec::new();
            sanitize(tags.iter().map(String::as_str), &mut out);
            out
        };
        match (current, event) {
            (None, PostEvent::PostCreated { title, content, tags }) => Some(PostView {
                id: id.to_owned(),
                title,
                content,
                tags: clean(tags),
                author: e.actor.clone(),
                created_at: e.recorded_at.clone(),
                updated_at: e.recorded_at.clone(),
                stream_version: e.version,
            }),
            (current, PostEvent::PostCreated { .. }) => current,
            (None, PostEvent::PostUpdated { .. }) => None,
            (Some(mut view), PostEvent::PostUpdated { title, content, tags }) => {
                if let Some(c) = title {
                    view.title = c.new;
                }
                if let Some(c) = content {
                    view.content = c.new;
                }
                if let Some(c) = tags {
                    view.tags = clean(c.new);
                }
                view.updated_at.clone_from(&e.recorded_at);
                view.stream_version = e.version;
                Some(view)
            }
        }
    }

    fn created() -> Envelope {
        let new = to_new_event(&PostEvent::PostCreated {
            title: "Hello".into(),
            content: "line one\nline \"two\"".into(),
            tags: vec!["rust".into(), "ops".into()],
        });
        envelope("post-p1", 1, &new.event_type, new.data)
    }

    #[test]
    fn created_then_updated() {
        let (view, removed) = fold(None, &created());
        assert!(removed.is_empty());
        let view = view.expect("a view");
        assert_eq!(
            serde_json::to_value(&view).expect("serializes"),
            json!({
                "id": "p1", "title": "Hello", "content": "line one\nline \"two\"", "tags": ["rust", "ops"],
                "author": {"kind": "user", "id": "u1", "name": "alice"},
                "created_at": "2026-12-01T00:00:01.000Z", "updated_at": "2026-12-01T00:00:01.000Z",
                "stream_version": 1
            })
        );
        let update = envelope(
            "post-p1",
            2,
            "PostUpdated",
            json!({"tags": {"old": ["rust", "ops"], "new": ["ops", "infra"]}, "title": {"old": "Hello", "new": "Hi\u{e9}"}}),
        );
        let (view, removed) = fold(Some(view), &update);
        let view = view.expect("a view");
        assert_eq!(removed, vec!["rust".to_owned()]);
        assert_eq!(view.tags, vec!["ops".to_owned(), "infra".to_owned()]);
        assert_eq!(view.title, "Hi\u{e9}");
        assert_eq!(view.content, "line one\nline \"two\"");
        assert_eq!(view.author, alice(), "the author stays the creator");
        assert_eq!(view.created_at, "2026-12-01T00:00:01.000Z");
        assert_eq!(view.updated_at, "2026-12-01T00:00:02.000Z");
        assert_eq!(view.stream_version, 2);
        // Applied again: nothing.
        let (again, removed) = fold(Some(view.clone()), &update);
        assert_eq!(again, Some(view));
        assert!(removed.is_empty());
    }

    /// The borrowed fold gives what the fold on the aggregate's owned events gives.
    #[test]
    fn the_borrowed_fold_agrees_with_the_owned_events() {
        let datas = [
            json!({"title": "t", "content": "c", "tags": ["a", "B ", "a", "no spaces"]}),
            json!({"title": "t", "content": "c\n\"x\"", "tags": []}),
            json!({"title": "t", "content": "c"}),
            json!({"title": "t", "content": 3, "tags": []}),
            json!({"title": "t", "content": "c", "tags": "a"}),
            json!({"title": "t", "content": "c", "tags": [1]}),
            json!({"title": {"old": "a", "new": "b"}}),
            json!({"title": {"old": "a\n", "new": "b\"\\"}, "extra": 1}),
            json!({"title": {"new": "b"}}),
            json!({"title": {"old": 1, "new": "b"}}),
            json!({"title": {"old": "a", "new": null}}),
            json!({"title": null, "content": {"old": "x", "new": "y"}}),
            json!({"tags": {"old": ["x"], "new": ["x", "Y", "y"]}}),
            json!({"tags": {"old": "x", "new": ["x"]}}),
            json!({"tags": {"old": [1], "new": ["x"]}}),
            json!({"tags": {"old": [], "new": [null]}}),
            json!({}),
            json!(null),
            json!([]),
            json!(["t", "c", ["a"]]),
            json!([{"old": "a", "new": "b"}]),
            json!(7),
        ];
        let types = ["PostCreated", "PostUpdated", "SomethingElse"];
        let starts = [None, fold(None, &created()).0];
        let mut cases = 0;
        for stream in ["post-p1", "post-p2", "deployment-p1"] {
            for version in [1, 2] {
                for event_type in types {
                    for data in &datas {
                        let e = envelope(stream, version, event_type, data.clone());
                        for current in &starts {
                            let expected = reference(current.clone(), &e);
                            let (got, _) = fold(current.clone(), &e);
                            assert_eq!(got, expected, "{stream} v{version} {event_type} {data} on {current:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 500);
    }

    #[test]
    fn post_id_only_for_the_post_category() {
        assert_eq!(post_id("post-a-b"), Some("a-b"));
        assert_eq!(post_id("posts-a"), None);
        assert_eq!(post_id("deployment-a"), None);
        assert_eq!(post_id("post"), None);
    }
}

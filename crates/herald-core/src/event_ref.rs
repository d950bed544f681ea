//! The borrowed-event interface every projection folds through: an event's
//! envelope read from its stored JSON without copying its strings, and its
//! `data` left as raw JSON for the domain to decode into borrowed fields of its
//! own (`serde(borrow)`), so a replay allocates next to nothing per event.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::envelope::{Actor, ActorKind, category_of};

/// One stored event, borrowed from its envelope's JSON. Parses exactly when an
/// [`Envelope`](crate::Envelope) parses (every field required, with the same
/// types; unknown fields ignored).
#[derive(Debug, Deserialize)]
pub struct EventRef<'a> {
    pub position: u64,
    #[serde(rename = "id")]
    _id: uuid::Uuid,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub version: u64,
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
    pub schema: u32,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(borrow)]
    pub actor: ActorRef<'a>,
    #[serde(rename = "command_id", borrow)]
    _command_id: Cow<'a, str>,
    #[serde(rename = "correlation_id", borrow)]
    _correlation_id: Cow<'a, str>,
    #[serde(borrow)]
    pub recorded_at: Cow<'a, str>,
    #[serde(rename = "hash", borrow)]
    _hash: Cow<'a, str>,
}

/// [`Actor`], borrowed.
#[derive(Debug, Clone, Deserialize)]
pub struct ActorRef<'a> {
    pub kind: ActorKind,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

impl ActorRef<'_> {
    pub fn to_owned(&self) -> Actor {
        Actor {
            kind: self.kind,
            id: self.id.clone().into_owned(),
            name: self.name.clone().into_owned(),
        }
    }
}

impl<'a> EventRef<'a> {
    /// Reads an envelope's stored JSON.
    pub fn parse(json: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The stream's category (`deployment` of `deployment-7f3a`).
    pub fn category(&self) -> &str {
        category_of(&self.stream)
    }

    /// The aggregate id of a stream of `category`; `None` for any other category.
    pub fn aggregate_id(&self, category: &str) -> Option<&str> {
        let (c, id) = self.stream.split_once('-')?;
        (c == category).then_some(id)
    }

    /// Decodes `data` as `T` (borrowing from it where `T` borrows). Event
    /// data is always an object: anything else is refused, as the domains'
    /// owned events refuse it (serde would read an array into a struct's
    /// fields by position).
    pub fn decode<T: Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        let raw = self.data.get();
        if !raw.trim_start().starts_with('{') {
            return Err(serde::de::Error::custom("event data must be a JSON object"));
        }
        serde_json::from_str(raw)
    }
}

/// A string in event data, borrowed when it has no escapes: use it (or
/// `Option<Str>`) for the text fields of a domain's borrowed events —
/// `Cow<str>` borrows only as a bare field, not inside an `Option`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Str<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;

    fn sample() -> Envelope {
        Envelope {
            position: 7,
            id: uuid::Uuid::nil(),
            stream: "post-p1".into(),
            version: 2,
            event_type: "PostUpdated".into(),
            schema: 1,
            data: serde_json::json!({"title": {"old": "a", "new": "b\"c"}}),
            actor: Actor {
                kind: ActorKind::User,
                id: "u1".into(),
                name: "alice".into(),
            },
            command_id: "c".into(),
            correlation_id: "c".into(),
            recorded_at: "2026-12-01T00:00:00.000Z".into(),
            hash: "00".into(),
        }
    }

    #[derive(Deserialize)]
    struct Title<'a> {
        #[serde(borrow)]
        title: Change<'a>,
    }
    #[derive(Deserialize)]
    struct Change<'a> {
        #[serde(borrow)]
        old: Cow<'a, str>,
        #[serde(borrow)]
        new: Cow<'a, str>,
    }

    #[test]
    fn reads_a_stored_envelope_borrowing_its_strings() {
        let json = serde_json::to_string(&sample()).expect("serializes");
        let event = EventRef::parse(&json).expect("parses");
        assert_eq!(event.position, 7);
        assert_eq!(event.version, 2);
        assert!(matches!(event.stream, Cow::Borrowed("post-p1")));
        assert_eq!(event.category(), "post");
        assert_eq!(event.aggregate_id("post"), Some("p1"));
        assert_eq!(event.aggregate_id("deployment"), None);
        assert_eq!(event.actor.to_owned().name, "alice");
        let data: Title<'_> = event.decode().expect("decodes");
        assert!(matches!(data.title.old, Cow::Borrowed("a")));
        assert_eq!(data.title.new, "b\"c");
    }

    #[test]
    fn refuses_what_an_envelope_refuses() {
        let mut value = serde_json::to_value(sample()).expect("serializes");
        value.as_object_mut().expect("object").remove("hash");
        assert!(EventRef::parse(&value.to_string()).is_err());
        assert!(serde_json::from_value::<Envelope>(value).is_err());
    }
}

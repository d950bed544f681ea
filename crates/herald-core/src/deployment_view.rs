//! The deployments read model's row (API.md §5 `GET /api/deployments`): one
//! deployment as clients see it, folded from its stream's events. Pure: the
//! storage lives in `herald-store` (`readmodel`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::aggregate::from_stored;
use crate::deployment::{DeploymentEvent, DeploymentStatus};
use crate::envelope::{Actor, ActorKind, Envelope, category_of};

/// The stream category this view is folded from.
pub const CATEGORY: &str = "deployment";

/// One deployment as served by `GET /api/deployments` and `GET /api/deployments/{id}`.
/// Optional fields serialize as `null`, never omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    /// The aggregate id: the stream name without `deployment-`.
    pub id: String,
    pub service: String,
    pub version: Option<String>,
    pub environment: Option<String>,
    pub status: DeploymentStatus,
    /// 0–100.
    pub progress: u8,
    /// The latest progress report's message (a report without one clears it).
    pub message: Option<String>,
    /// Why the deployment failed or was cancelled.
    pub reason: Option<String>,
    pub started_by: Actor,
    pub started_at: String,
    pub updated_at: String,
    /// The version of the last event folded in.
    pub stream_version: u64,
}

impl DeploymentView {
    /// Folds one event into the view of its deployment.
    ///
    /// Returns `current` unchanged for an event that is not a deployment event
    /// (another category, an unknown type, data that does not parse), for an
    /// event other than `DeploymentStarted` when there is no view yet, for an
    /// event of another deployment than `current`'s, and for an event already
    /// folded in (`envelope.version <= current.stream_version`), so applying an
    /// event twice is harmless. Never panics and logs nothing.
    pub fn fold(current: Option<DeploymentView>, envelope: &Envelope) -> Option<DeploymentView> {
        let Some(id) = deployment_id(&envelope.stream) else {
            return current;
        };
        if let Some(view) = &current
            && (view.id != id || envelope.version <= view.stream_version)
        {
            return current;
        }
        match from_stored::<DeploymentEvent>(&envelope.event_type, envelope.data.clone()) {
            Ok(event) => Self::fold_event(current, id, envelope, event),
            Err(_) => current,
        }
    }

    /// Applies an already parsed event (`id` is the stream's aggregate id; the
    /// checks of [`fold`](Self::fold) on `current` have been done).
    fn fold_event(
        current: Option<DeploymentView>,
        id: &str,
        envelope: &Envelope,
        event: DeploymentEvent,
    ) -> Option<DeploymentView> {
        let mut view = match (current, event) {
            (
                None,
                DeploymentEvent::DeploymentStarted {
                    service,
                    version,
                    environment,
                },
            ) => DeploymentView {
                id: id.to_owned(),
                service,
                version,
                environment,
                status: DeploymentStatus::InProgress,
                progress: 0,
                message: None,
                reason: None,
                started_by: envelope.actor.clone(),
                started_at: envelope.recorded_at.clone(),
                updated_at: String::new(),
                stream_version: 0,
            },
            // A deployment starts once; a second start is not a fact the log can hold.
            (current @ Some(_), DeploymentEvent::DeploymentStarted { .. }) => return current,
            (None, _) => return None,
            (Some(mut view), DeploymentEvent::DeploymentProgressed { percent, message }) => {
                view.progress = percent.min(100);
                view.message = message;
                view
            }
            (Some(mut view), DeploymentEvent::DeploymentSucceeded {}) => {
                view.status = DeploymentStatus::Succeeded;
                view.progress = 100;
                view
            }
            (Some(mut view), DeploymentEvent::DeploymentFailed { reason }) => {
                view.status = DeploymentStatus::Failed;
                view.reason = Some(reason);
                view
            }
            (Some(mut view), DeploymentEvent::DeploymentCancelled { reason }) => {
                view.status = DeploymentStatus::Cancelled;
                view.reason = reason;
                view
            }
        };
        view.updated_at.clone_from(&envelope.recorded_at);
        view.stream_version = envelope.version;
        Some(view)
    }
}

impl DeploymentView {
    /// [`fold`](Self::fold) of an event given as its stored envelope JSON, in place.
    ///
    /// The same result as parsing an [`Envelope`] and folding it, without building
    /// one: the envelope is read borrowing its strings and the data is decoded
    /// straight into the event's fields (rare shapes — data that is not an
    /// object, a repeated field — take the [`Envelope`] path). `Err` when the
    /// envelope does not parse as an [`Envelope`]; `view` is then unchanged.
    pub fn fold_json(view: &mut Option<DeploymentView>, json: &str) -> Result<(), serde_json::Error> {
        match serde_json::from_str::<EnvelopeRef<'_>>(json) {
            Ok(event) if event.data.object && !event.data.duplicate => {
                fold_ref(view, &event);
                Ok(())
            }
            _ => {
                let envelope: Envelope = serde_json::from_str(json)?;
                *view = Self::fold(view.take(), &envelope);
                Ok(())
            }
        }
    }
}

/// [`DeploymentView::fold`] of a borrowed envelope whose data is an object.
fn fold_ref(current: &mut Option<DeploymentView>, event: &EnvelopeRef<'_>) {
    let Some(id) = deployment_id(&event.stream) else {
        return;
    };
    if let Some(view) = current.as_ref()
        && (view.id != id || event.version <= view.stream_version)
    {
        return;
    }
    let Some(change) = event.data.decode(&event.event_type) else {
        return; // another type, or data that is not this type's
    };
    let view = match (current.as_mut(), change) {
        (
            None,
            Change::Started {
                service,
                version,
                environment,
            },
        ) => current.insert(DeploymentView {
            id: id.to_owned(),
            service: service.to_owned(),
            version: version.map(str::to_owned),
            environment: environment.map(str::to_owned),
            status: DeploymentStatus::InProgress,
            progress: 0,
            message: None,
            reason: None,
            started_by: Actor {
                kind: event.actor.kind,
                id: event.actor.id.clone().into_owned(),
                name: event.actor.name.clone().into_owned(),
            },
            started_at: event.recorded_at.clone().into_owned(),
            updated_at: String::new(),
            stream_version: 0,
        }),
        // A deployment starts once; a second start is not a fact the log can hold.
        (Some(_), Change::Started { .. }) | (None, _) => return,
        (Some(view), Change::Progressed { percent, message }) => {
            view.progress = percent.min(100);
            set_text(&mut view.message, message);
            view
        }
        (Some(view), Change::Succeeded) => {
            view.status = DeploymentStatus::Succeeded;
            view.progress = 100;
            view
        }
        (Some(view), Change::Failed { reason }) => {
            view.status = DeploymentStatus::Failed;
            set_text(&mut view.reason, Some(reason));
            view
        }
        (Some(view), Change::Cancelled { reason }) => {
            view.status = DeploymentStatus::Cancelled;
            set_text(&mut view.reason, reason);
            view
        }
    };
    view.updated_at.clear();
    view.updated_at.push_str(&event.recorded_at);
    view.stream_version = event.version;
}

/// `*to = from.map(str::to_owned)`, reusing the string already there.
fn set_text(to: &mut Option<String>, from: Option<&str>) {
    match (to.as_mut(), from) {
        (Some(to), Some(from)) => {
            to.clear();
            to.push_str(from);
        }
        (_, from) => *to = from.map(str::to_owned),
    }
}

/// A [`DeploymentEvent`] decoded from borrowed data.
enum Change<'a> {
    Started {
        service: &'a str,
        version: Option<&'a str>,
        environment: Option<&'a str>,
    },
    Progressed {
        percent: u8,
        message: Option<&'a str>,
    },
    Succeeded,
    Failed {
        reason: &'a str,
    },
    Cancelled {
        reason: Option<&'a str>,
    },
}

/// The fields of an [`Envelope`], strings borrowed from its JSON where they
/// have no escapes. Parses exactly when an [`Envelope`] parses (every field
/// required, with the same types; unknown fields ignored).
#[derive(Deserialize)]
struct EnvelopeRef<'a> {
    #[serde(rename = "position")]
    _position: u64,
    #[serde(rename = "id")]
    _id: uuid::Uuid,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    version: u64,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(rename = "schema")]
    _schema: u32,
    #[serde(borrow)]
    data: DataRef<'a>,
    #[serde(borrow)]
    actor: ActorRef<'a>,
    #[serde(rename = "command_id", borrow)]
    _command_id: Cow<'a, str>,
    #[serde(rename = "correlation_id", borrow)]
    _correlation_id: Cow<'a, str>,
    #[serde(borrow)]
    recorded_at: Cow<'a, str>,
    #[serde(rename = "hash", borrow)]
    _hash: Cow<'a, str>,
}

/// [`Actor`], borrowed.
#[derive(Deserialize)]
struct ActorRef<'a> {
    kind: ActorKind,
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// One data field, as much as the event types need to know of it.
#[derive(Default)]
enum Field<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    /// A non-negative integer.
    Int(u64),
    /// Anything else (negative or fractional number, boolean, array, object).
    Other,
}

impl Field<'_> {
    /// A required `String`.
    fn text(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
    /// An `Option<String>` (missing or `null`: `None`); `Err` for another type.
    fn optional_text(&self) -> Result<Option<&str>, ()> {
        match self {
            Field::Absent | Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            _ => Err(()),
        }
    }
    /// A required `u8`.
    fn byte(&self) -> Option<u8> {
        match self {
            Field::Int(n) => u8::try_from(*n).ok(),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Field::Int(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(n).map_or(Field::Other, Field::Int))
            }
            fn visit_u128<E>(self, _: u128) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_i128<E>(self, _: i128) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field::Other)
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An envelope's `data`: the fields any deployment event has, when it is an object.
#[derive(Default)]
struct DataRef<'a> {
    /// `data` is a JSON object (otherwise nothing else is set).
    object: bool,
    /// A field appeared twice.
    duplicate: bool,
    service: Field<'a>,
    version: Field<'a>,
    environment: Field<'a>,
    percent: Field<'a>,
    message: Field<'a>,
    reason: Field<'a>,
}

impl DataRef<'_> {
    /// The event of type `event_type` with this data, as
    /// [`from_stored`]`::<DeploymentEvent>` decodes it; `None` where it fails.
    fn decode(&self, event_type: &str) -> Option<Change<'_>> {
        Some(match event_type {
            "DeploymentStarted" => Change::Started {
                service: self.service.text()?,
                version: self.version.optional_text().ok()?,
                environment: self.environment.optional_text().ok()?,
            },
            "DeploymentProgressed" => Change::Progressed {
                percent: self.percent.byte()?,
                message: self.message.optional_text().ok()?,
            },
            "DeploymentSucceeded" => Change::Succeeded,
            "DeploymentFailed" => Change::Failed {
                reason: self.reason.text()?,
            },
            "DeploymentCancelled" => Change::Cancelled {
                reason: self.reason.optional_text().ok()?,
            },
            _ => return None,
        })
    }
}

/// A key of `data`, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for DataRef<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = DataRef<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut data = DataRef {
                    object: true,
                    ..DataRef::default()
                };
                while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
                    let slot = match &*key {
                        "service" => &mut data.service,
                        "version" => &mut data.version,
                        "environment" => &mut data.environment,
                        "percent" => &mut data.percent,
                        "message" => &mut data.message,
                        "reason" => &mut data.reason,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if !matches!(slot, Field::Absent) {
                        data.duplicate = true;
                    }
                    *slot = map.next_value()?;
                }
                Ok(data)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(DataRef::default())
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_u128<E>(self, _: u128) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_i128<E>(self, _: i128) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(DataRef::default())
            }
        }
        deserializer.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The aggregate id of a `deployment-…` stream; `None` for any other category.
pub fn deployment_id(stream: &str) -> Option<&str> {
    if category_of(stream) != CATEGORY {
        return None;
    }
    stream.split_once('-').map(|(_, id)| id)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use uuid::Uuid;

    use super::*;
    use crate::aggregate::to_new_event;
    use crate::envelope::ActorKind;

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
            recorded_at: format!("2026-11-22T03:32:{:02}.000Z", version),
            hash: String::new(),
        }
    }

    fn event(stream: &str, version: u64, e: DeploymentEvent) -> Envelope {
        let new = to_new_event(&e);
        envelope(stream, version, &new.event_type, new.data)
    }

    fn started() -> DeploymentEvent {
        DeploymentEvent::DeploymentStarted {
            service: "user-service".into(),
            version: Some("1.4.2".into()),
            environment: Some("prod".into()),
        }
    }

    fn fold_all(events: &[Envelope]) -> Option<DeploymentView> {
        events.iter().fold(None, DeploymentView::fold)
    }

    #[test]
    fn started_creates_the_view() {
        let view = fold_all(&[event("deployment-d1", 1, started())]).expect("a view");
        assert_eq!(
            view,
            DeploymentView {
                id: "d1".into(),
                service: "user-service".into(),
                version: Some("1.4.2".into()),
                environment: Some("prod".into()),
                status: DeploymentStatus::InProgress,
                progress: 0,
                message: None,
                reason: None,
                started_by: alice(),
                started_at: "2026-11-22T03:32:01.000Z".into(),
                updated_at: "2026-11-22T03:32:01.000Z".into(),
                stream_version: 1,
            }
        );
    }

    #[test]
    fn id_keeps_every_dash_after_the_category() {
        let view = fold_all(&[event("deployment-7f3a-b2-c", 1, started())]).expect("a view");
        assert_eq!(view.id, "7f3a-b2-c");
    }

    #[test]
    fn progress_sets_percent_and_message_and_updated_at() {
        let view = fold_all(&[
            event("deployment-d1", 1, started()),
            event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentProgressed {
                    percent: 40,
                    message: Some("canary".into()),
                },
            ),
        ])
        .expect("a view");
        assert_eq!(view.progress, 40);
        assert_eq!(view.message.as_deref(), Some("canary"));
        assert_eq!(view.status, DeploymentStatus::InProgress);
        assert_eq!(view.started_at, "2026-11-22T03:32:01.000Z");
        assert_eq!(view.updated_at, "2026-11-22T03:32:02.000Z");
        assert_eq!(view.stream_version, 2);
        // The starter stays the starter, whoever reports progress.
        assert_eq!(view.started_by, alice());

        let view = DeploymentView::fold(
            Some(view),
            &event(
                "deployment-d1",
                3,
                DeploymentEvent::DeploymentProgressed {
                    percent: 60,
                    message: None,
                },
            ),
        )
        .expect("a view");
        assert_eq!(view.progress, 60);
        assert_eq!(view.message, None);
        assert_eq!(view.stream_version, 3);
    }

    #[test]
    fn succeeded_sets_status_and_full_progress() {
        let view = fold_all(&[
            event("deployment-d1", 1, started()),
            event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentProgressed {
                    percent: 30,
                    message: Some("half".into()),
                },
            ),
            event("deployment-d1", 3, DeploymentEvent::DeploymentSucceeded {}),
        ])
        .expect("a view");
        assert_eq!(view.status, DeploymentStatus::Succeeded);
        assert_eq!(view.progress, 100);
        assert_eq!(view.message.as_deref(), Some("half"));
        assert_eq!(view.reason, None);
        assert_eq!(view.updated_at, "2026-11-22T03:32:03.000Z");
        assert_eq!(view.stream_version, 3);
    }

    #[test]
    fn failed_sets_status_and_reason() {
        let view = fold_all(&[
            event("deployment-d1", 1, started()),
            event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentProgressed {
                    percent: 30,
                    message: None,
                },
            ),
            event(
                "deployment-d1",
                3,
                DeploymentEvent::DeploymentFailed {
                    reason: "health check".into(),
                },
            ),
        ])
        .expect("a view");
        assert_eq!(view.status, DeploymentStatus::Failed);
        assert_eq!(view.reason.as_deref(), Some("health check"));
        assert_eq!(view.progress, 30);
        assert_eq!(view.stream_version, 3);
    }

    #[test]
    fn cancelled_sets_status_and_optional_reason() {
        let view = fold_all(&[
            event("deployment-d1", 1, started()),
            event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentCancelled {
                    reason: Some("freeze".into()),
                },
            ),
        ])
        .expect("a view");
        assert_eq!(view.status, DeploymentStatus::Cancelled);
        assert_eq!(view.reason.as_deref(), Some("freeze"));
        assert_eq!(view.stream_version, 2);

        let view = fold_all(&[
            event("deployment-d1", 1, started()),
            event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentCancelled { reason: None },
            ),
        ])
        .expect("a view");
        assert_eq!(view.status, DeploymentStatus::Cancelled);
        assert_eq!(view.reason, None);
    }

    #[test]
    fn events_before_a_start_are_ignored() {
        assert_eq!(
            fold_all(&[event("deployment-d1", 1, DeploymentEvent::DeploymentSucceeded {})]),
            None
        );
        assert_eq!(
            fold_all(&[event(
                "deployment-d1",
                1,
                DeploymentEvent::DeploymentProgressed {
                    percent: 5,
                    message: None
                }
            )]),
            None
        );
    }

    #[test]
    fn other_categories_and_types_leave_the_view_unchanged() {
        let view = fold_all(&[event("deployment-d1", 1, started())]);
        assert!(view.is_some());
        let others = [
            // Another category, even with a deployment event type.
            event("post-d1", 2, DeploymentEvent::DeploymentSucceeded {}),
            envelope("post-d1", 2, "PostCreated", json!({"title": "t", "content": "c"})),
            // An unknown type in the right category.
            envelope("deployment-d1", 2, "DeploymentPaused", json!({})),
            // A known type whose data does not parse.
            envelope("deployment-d1", 2, "DeploymentFailed", json!({"reason": 7})),
            envelope("deployment-d1", 2, "DeploymentProgressed", json!("nonsense")),
        ];
        for other in &others {
            assert_eq!(DeploymentView::fold(view.clone(), other), view, "{other:?}");
        }
        // And none of them creates a view.
        for other in &others {
            assert_eq!(DeploymentView::fold(None, other), None, "{other:?}");
        }
        assert_eq!(
            DeploymentView::fold(None, &event("post-d1", 1, started())),
            None,
            "a start in another category"
        );
    }

    #[test]
    fn an_event_already_folded_in_or_of_another_deployment_changes_nothing() {
        let two = fold_all(&[
            event("deployment-d1", 1, started()),
            event("deployment-d1", 2, DeploymentEvent::DeploymentSucceeded {}),
        ]);
        assert_eq!(two.as_ref().map(|v| v.stream_version), Some(2));
        // Replaying versions 1 and 2 again.
        let again = DeploymentView::fold(two.clone(), &event("deployment-d1", 1, started()));
        assert_eq!(again, two);
        let again = DeploymentView::fold(
            two.clone(),
            &event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentFailed { reason: "x".into() },
            ),
        );
        assert_eq!(again, two);
        // Another deployment's event.
        let other = DeploymentView::fold(
            two.clone(),
            &event(
                "deployment-d2",
                3,
                DeploymentEvent::DeploymentFailed { reason: "x".into() },
            ),
        );
        assert_eq!(other, two);
    }

    #[test]
    fn optional_fields_serialize_as_null_and_round_trip() {
        let view = fold_all(&[event(
            "deployment-d1",
            1,
            DeploymentEvent::DeploymentStarted {
                service: "api".into(),
                version: None,
                environment: None,
            },
        )])
        .expect("a view");
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(
            json,
            json!({
                "id": "d1",
                "service": "api",
                "version": null,
                "environment": null,
                "status": "in_progress",
                "progress": 0,
                "message": null,
                "reason": null,
                "started_by": {"kind": "user", "id": "u1", "name": "alice"},
                "started_at": "2026-11-22T03:32:01.000Z",
                "updated_at": "2026-11-22T03:32:01.000Z",
                "stream_version": 1
            })
        );
        let back: DeploymentView = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, view);
    }

    #[test]
    fn deployment_id_only_for_the_deployment_category() {
        assert_eq!(deployment_id("deployment-abc"), Some("abc"));
        assert_eq!(deployment_id("deployment-a-b"), Some("a-b"));
        assert_eq!(deployment_id("deployments-abc"), None);
        assert_eq!(deployment_id("post-abc"), None);
        assert_eq!(deployment_id("deployment"), None);
    }

    /// `fold_json` on an envelope's stored JSON gives what `fold` gives on the parsed envelope.
    #[test]
    fn fold_json_agrees_with_fold() {
        let datas = [
            json!({"service": "api", "version": "1.0", "environment": "prod"}),
            json!({"service": "api"}),
            json!({"service": "a\"p\\i\n", "version": null, "environment": "st\u{e9}ge", "extra": [1, {"x": 2}]}),
            json!({"service": 5}),
            json!({"service": null}),
            json!({"version": "1"}),
            json!({"service": "api", "version": 3}),
            json!({"percent": 40, "message": "canary"}),
            json!({"percent": 40}),
            json!({"percent": 40, "message": null}),
            json!({"percent": 255, "message": "é\t"}),
            json!({"percent": 256}),
            json!({"percent": -1}),
            json!({"percent": 4.5}),
            json!({"percent": "40"}),
            json!({"percent": 40, "message": 1}),
            json!({}),
            json!({"reason": "probe"}),
            json!({"reason": null}),
            json!({"reason": true}),
            json!({"reason": ["x"]}),
            json!(null),
            json!([]),
            json!(["api"]),
            json!(["api", "1.0"]),
            json!([40]),
            json!(["probe"]),
            json!(7),
            json!("text"),
        ];
        let types = [
            "DeploymentStarted",
            "DeploymentProgressed",
            "DeploymentSucceeded",
            "DeploymentFailed",
            "DeploymentCancelled",
            "SomethingElse",
        ];
        let start = event("deployment-d1", 1, started());
        let starts: [Option<DeploymentView>; 3] = [
            None,
            fold_all(std::slice::from_ref(&start)),
            fold_all(&[
                start.clone(),
                event("deployment-d1", 2, DeploymentEvent::DeploymentSucceeded {}),
            ]),
        ];
        let mut cases = 0;
        for stream in ["deployment-d1", "deployment-d2", "post-d1"] {
            for version in [1, 2, 3] {
                for event_type in types {
                    for data in &datas {
                        let mut e = envelope(stream, version, event_type, data.clone());
                        e.recorded_at = "2026-11-22T03:32:09.000Z".into();
                        let json = e.to_canonical_json();
                        for current in &starts {
                            let expected = DeploymentView::fold(current.clone(), &e);
                            let mut got = current.clone();
                            DeploymentView::fold_json(&mut got, &json).expect("parses");
                            assert_eq!(got, expected, "{stream} v{version} {event_type} {data} on {current:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert!(cases > 1000);
        // Escaped strings in the envelope itself.
        let mut e = envelope("deployment-d\"1", 1, "DeploymentStarted", json!({"service": "x"}));
        e.actor.name = "al\"ice\u{1}".into();
        e.recorded_at = "2026\\11".into();
        let mut got = None;
        DeploymentView::fold_json(&mut got, &e.to_canonical_json()).unwrap();
        assert_eq!(got, DeploymentView::fold(None, &e));
        assert_eq!(got.unwrap().started_by.name, "al\"ice\u{1}");
        // A repeated data field takes the envelope path (the last one wins).
        let dup = e
            .to_canonical_json()
            .replace(r#""data":{"service":"x"}"#, r#""data":{"service":"x","service":"y"}"#);
        let mut got = None;
        DeploymentView::fold_json(&mut got, &dup).unwrap();
        assert_eq!(got.unwrap().service, "y");
        // What does not parse as an envelope is an error, and leaves the view alone.
        let mut view = starts[1].clone();
        for bad in [
            "{}".to_owned(),
            "not json".to_owned(),
            e.to_canonical_json().replace(r#""schema":1"#, r#""schema":-1"#),
            e.to_canonical_json().replace(r#""id":"00000000"#, r#""id":"x0000000"#),
            e.to_canonical_json().replace(r#""kind":"user""#, r#""kind":"robot""#),
            format!("{} x", e.to_canonical_json()),
        ] {
            assert!(serde_json::from_str::<Envelope>(&bad).is_err(), "{bad}");
            assert!(DeploymentView::fold_json(&mut view, &bad).is_err(), "{bad}");
            assert_eq!(view, starts[1]);
        }
    }
}

//! The deployments read model's row (API.md §5 `GET /api/deployments`): one
//! deployment as clients see it, folded from its stream's events through the
//! borrowed [`EventRef`]. Pure: the storage is in `projection.rs`.

use herald_core::envelope::Actor;
use herald_core::event_ref::{EventRef, Str};
use serde::{Deserialize, Serialize};

use super::aggregate::DeploymentStatus;

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

// The events' data, borrowed: decoded exactly as the aggregate's own
// `DeploymentEvent` decodes it (same fields, same types, unknown fields ignored).
#[derive(Deserialize)]
struct Started<'a> {
    #[serde(borrow)]
    service: Str<'a>,
    #[serde(borrow, default)]
    version: Option<Str<'a>>,
    #[serde(borrow, default)]
    environment: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Progressed<'a> {
    percent: u8,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Succeeded {}

#[derive(Deserialize)]
struct Failed<'a> {
    #[serde(borrow)]
    reason: Str<'a>,
}

#[derive(Deserialize)]
struct Cancelled<'a> {
    #[serde(borrow, default)]
    reason: Option<Str<'a>>,
}

impl DeploymentView {
    /// Folds one event into the view of its deployment; returns whether it changed.
    ///
    /// Leaves `view` unchanged for an event that is not a deployment event
    /// (another category, an unknown type, data that does not parse), for an
    /// event other than `DeploymentStarted` when there is no view yet, for an
    /// event of another deployment than the view's, and for an event already
    /// folded in (`version <= stream_version`), so applying an event twice is
    /// harmless. Never panics and logs nothing.
    pub fn fold(view: &mut Option<DeploymentView>, event: &EventRef<'_>) -> bool {
        let Some(id) = event.aggregate_id(CATEGORY) else {
            return false;
        };
        if let Some(v) = view.as_ref()
            && (v.id != id || event.version <= v.stream_version)
        {
            return false;
        }
        let v = match (view.as_mut(), &*event.event_type) {
            (None, "DeploymentStarted") => {
                let Ok(data) = event.decode::<Started<'_>>() else {
                    return false;
                };
                view.insert(DeploymentView {
                    id: id.to_owned(),
                    service: data.service.0.into_owned(),
                    version: data.version.map(|s| s.0.into_owned()),
                    environment: data.environment.map(|s| s.0.into_owned()),
                    status: DeploymentStatus::InProgress,
                    progress: 0,
                    message: None,
                    reason: None,
                    started_by: event.actor.to_owned(),
                    started_at: event.recorded_at.clone().into_owned(),
                    updated_at: String::new(),
                    stream_version: 0,
                })
            }
            // A deployment starts once; a second start is not a fact the log can hold.
            (Some(_), "DeploymentStarted") | (None, _) => return false,
            (Some(v), "DeploymentProgressed") => {
                let Ok(data) = event.decode::<Progressed<'_>>() else {
                    return false;
                };
                v.progress = data.percent.min(100);
                set_text(&mut v.message, data.message.as_deref());
                v
            }
            (Some(v), "DeploymentSucceeded") => {
                if event.decode::<Succeeded>().is_err() {
                    return false;
                }
                v.status = DeploymentStatus::Succeeded;
                v.progress = 100;
                v
            }
            (Some(v), "DeploymentFailed") => {
                let Ok(data) = event.decode::<Failed<'_>>() else {
                    return false;
                };
                v.status = DeploymentStatus::Failed;
                set_text(&mut v.reason, Some(&data.reason));
                v
            }
            (Some(v), "DeploymentCancelled") => {
                let Ok(data) = event.decode::<Cancelled<'_>>() else {
                    return false;
                };
                v.status = DeploymentStatus::Cancelled;
                set_text(&mut v.reason, data.reason.as_deref());
                v
            }
            (Some(_), _) => return false,
        };
        v.updated_at.clear();
        v.updated_at.push_str(&event.recorded_at);
        v.stream_version = event.version;
        true
    }
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

/// The aggregate id of a `deployment-…` stream; `None` for any other category.
pub fn deployment_id(stream: &str) -> Option<&str> {
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
    use crate::domains::deployments::aggregate::DeploymentEvent;

    /// [`DeploymentView::fold`] of an envelope, through its stored JSON.
    fn fold(current: Option<DeploymentView>, e: &Envelope) -> Option<DeploymentView> {
        let json = e.to_canonical_json();
        let event = EventRef::parse(&json).expect("an envelope");
        let mut view = current;
        DeploymentView::fold(&mut view, &event);
        view
    }

    /// The fold written on the aggregate's owned `DeploymentEvent`: what the
    /// borrowed one must agree with.
    fn reference(current: Option<DeploymentView>, envelope: &Envelope) -> Option<DeploymentView> {
        let Some(id) = deployment_id(&envelope.stream) else {
            return current;
        };
        if let Some(view) = &current
            && (view.id != id || envelope.version <= view.stream_version)
        {
            return current;
        }
        let Ok(event) = from_stored::<DeploymentEvent>(&envelope.event_type, envelope.data.clone()) else {
            return current;
        };
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
        events.iter().fold(None, fold)
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

        let view = fold(
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
            assert_eq!(fold(view.clone(), other), view, "{other:?}");
        }
        // And none of them creates a view.
        for other in &others {
            assert_eq!(fold(None, other), None, "{other:?}");
        }
        assert_eq!(
            fold(None, &event("post-d1", 1, started())),
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
        let again = fold(two.clone(), &event("deployment-d1", 1, started()));
        assert_eq!(again, two);
        let again = fold(
            two.clone(),
            &event(
                "deployment-d1",
                2,
                DeploymentEvent::DeploymentFailed { reason: "x".into() },
            ),
        );
        assert_eq!(again, two);
        // Another deployment's event.
        let other = fold(
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

    /// The borrowed fold gives what the fold on the aggregate's owned events gives.
    #[test]
    fn the_borrowed_fold_agrees_with_the_owned_events() {
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
                            let expected = reference(current.clone(), &e);
                            let event = EventRef::parse(&json).expect("parses");
                            let mut got = current.clone();
                            DeploymentView::fold(&mut got, &event);
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
        let got = fold(None, &e);
        assert_eq!(got, reference(None, &e));
        assert_eq!(got.unwrap().started_by.name, "al\"ice\u{1}");
        // What does not parse as an envelope is an error, and leaves the view alone.
        for bad in [
            "{}".to_owned(),
            "not json".to_owned(),
            e.to_canonical_json().replace(r#""schema":1"#, r#""schema":-1"#),
            e.to_canonical_json().replace(r#""id":"00000000"#, r#""id":"x0000000"#),
            e.to_canonical_json().replace(r#""kind":"user""#, r#""kind":"robot""#),
            format!("{} x", e.to_canonical_json()),
        ] {
            assert!(serde_json::from_str::<Envelope>(&bad).is_err(), "{bad}");
            assert!(EventRef::parse(&bad).is_err(), "{bad}");
        }
    }
}

//! The deployments read model's row (API.md §5 `GET /api/deployments`): one
//! deployment as clients see it, folded from its stream's events. Pure: the
//! storage lives in `herald-store` (`readmodel`).

use serde::{Deserialize, Serialize};

use crate::aggregate::from_stored;
use crate::deployment::{DeploymentEvent, DeploymentStatus};
use crate::envelope::{Actor, Envelope, category_of};

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
}

//! Administration (API.md §7): users and roles, invites, sessions. Every change
//! is an event with the admin as its actor.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_core::accounts::AccessChangeRefused;
use herald_core::auth::Role;
use herald_core::store::ExpectedVersion;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Admin, Viewer, now_rfc3339, require_step_up};
use crate::error::ApiError;
use crate::passkeys::{create_invite, end_session, record, user_json};
use crate::revocations::Ending;
use crate::sessions::{millis_rfc3339, now_millis};
use crate::state::AppState;
use crate::wire::{PathParam, read_json_body};

const ADMIN_BODY_LIMIT: usize = 4096;

/// Every user, with their passkeys (never the keys themselves).
pub async fn list_users(State(state): State<AppState>, Admin(_): Admin) -> Result<Response, ApiError> {
    let passkeys = state.accounts.list_passkeys().await?;
    let users: Vec<_> = state
        .accounts
        .list_users()
        .await?
        .iter()
        .map(|user| {
            let mut body = user_json(user);
            body["passkeys"] = passkeys
                .iter()
                .filter(|p| p.user_id == user.id)
                .map(|p| {
                    json!({
                        "credential_id": p.credential_id,
                        "created_at": p.created_at,
                        "last_used_at": p.last_used_at,
                    })
                })
                .collect();
            body
        })
        .collect();
    Ok(Json(json!({ "users": users })).into_response())
}

async fn user_or_404(state: &AppState, id: &str) -> Result<herald_core::accounts::User, ApiError> {
    state
        .accounts
        .find_user(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no user {id}")))
}

/// The 404 or 422 of a refused [`AccountStore`](herald_core::accounts::AccountStore)
/// access change (the last-admin rule is the database's, decided in the
/// change's own transaction: two admins demoting each other at once leave one).
/// The answer to a refused access change; for the last-admin rule it names
/// the person ("{name} is the only {what}; make someone else admin first").
async fn refused(state: &AppState, e: AccessChangeRefused, id: &str, what: &str) -> ApiError {
    match e {
        AccessChangeRefused::NoSuchUser => ApiError::NotFound(format!("there is no user {id}")),
        AccessChangeRefused::LastAdmin => {
            let name = match state.accounts.find_user(id).await {
                Ok(Some(user)) => user.username,
                Ok(None) => id.to_owned(),
                Err(e) => return e.into(),
            };
            ApiError::Unprocessable {
                title: "last admin",
                detail: format!("{name} is the only {what}; make someone else admin first"),
            }
        }
    }
}

/// Ends, in this process, the streams of every session of `user_id` (their
/// roles changed, or they were disabled); every other instance does the same
/// when it reads the event (`revocations.rs`).
fn end_user_streams(state: &AppState, user_id: &str) {
    crate::revocations::apply(state, &Ending::User(user_id.to_owned()));
}

/// Takes a person's access away: they cannot log in, their sessions are
/// deleted and their live streams end at once. Like a token revocation it
/// takes effect first (the database refuses it for the last enabled admin)
/// and is recorded right after (`UserDisabled`), so it holds even if
/// recording fails. Disabling an already disabled user changes nothing.
pub async fn disable_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    require_step_up(&state, &admin, "disabling a person")?;
    if id == admin.actor.id {
        return Err(ApiError::Unprocessable {
            title: "cannot disable yourself",
            detail: "an admin cannot disable their own account; ask another admin".into(),
        });
    }
    let at = now_rfc3339();
    let mut user = match state.accounts.set_disabled(&id, Some(&at)).await? {
        Ok(before) => before,
        Err(e) => return Err(refused(&state, e, &id, "enabled admin").await),
    };
    let newly = !user.is_disabled();
    // Also when already disabled: a session another process let in is ended.
    state.accounts.delete_sessions_of(&user.id).await?;
    end_user_streams(&state, &user.id);
    if newly {
        user.disabled_at = Some(at);
        record(
            &state,
            format!("user-{}", user.id),
            ExpectedVersion::Any,
            "UserDisabled",
            json!({ "user_id": user.id, "username": user.username }),
            &admin.actor,
        )
        .await?;
    }
    Ok(Json(json!({ "user": user_json(&user) })).into_response())
}

/// Gives a disabled person their access back (recorded first, `UserEnabled`).
/// Enabling an enabled user changes nothing.
pub async fn enable_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    require_step_up(&state, &admin, "enabling a person")?;
    let mut user = user_or_404(&state, &id).await?;
    if user.is_disabled() {
        record(
            &state,
            format!("user-{}", user.id),
            ExpectedVersion::Any,
            "UserEnabled",
            json!({ "user_id": user.id, "username": user.username }),
            &admin.actor,
        )
        .await?;
        // Enabling never leaves fewer admins: refused only for a user gone since.
        if let Err(e) = state.accounts.set_disabled(&user.id, None).await? {
            return Err(refused(&state, e, &id, "enabled admin").await);
        }
        user.disabled_at = None;
    }
    Ok(Json(json!({ "user": user_json(&user) })).into_response())
}

/// Removes one passkey of a user: it no longer logs in (takes effect first,
/// then `PasskeyRemoved` is recorded). Sessions it opened are not ended (disable
/// the user, or end them, for that).
pub async fn remove_passkey(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathParam((id, credential_id)): PathParam<(String, String)>,
) -> Result<StatusCode, ApiError> {
    require_step_up(&state, &admin, "removing a passkey")?;
    let user = user_or_404(&state, &id).await?;
    if !state.accounts.remove_passkey(&user.id, &credential_id).await? {
        return Err(ApiError::NotFound(format!(
            "{} has no passkey {credential_id}",
            user.username
        )));
    }
    record(
        &state,
        format!("user-{}", user.id),
        ExpectedVersion::Any,
        "PasskeyRemoved",
        json!({ "user_id": user.id, "username": user.username, "credential_id": credential_id }),
        &admin.actor,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRoles {
    roles: Vec<Role>,
}

pub async fn set_roles(
    State(state): State<AppState>,
    Admin(admin): Admin,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: SetRoles = read_json_body(&headers, body, ADMIN_BODY_LIMIT).await?;
    require_step_up(&state, &admin, "changing roles")?;
    let mut roles = body.roles;
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(ApiError::BadRequest(
            "roles: give at least one of viewer, operator, admin".into(),
        ));
    }
    // Decided and changed in one transaction (the last-admin rule), then
    // recorded; a grant whose record fails is undone (nobody gains access
    // without its record), a loss stands, like a revocation.
    let mut user = match state.accounts.set_roles(&id, &roles).await? {
        Ok(before) => before,
        Err(e) => return Err(refused(&state, e, &id, "admin").await),
    };
    if user.roles != roles {
        let previous = std::mem::replace(&mut user.roles, roles);
        // Streams opened with the old role end (the console opens them again),
        // whether or not the record below is written.
        end_user_streams(&state, &user.id);
        let recorded = record(
            &state,
            format!("user-{}", user.id),
            ExpectedVersion::Any,
            "RolesChanged",
            json!({ "user_id": user.id, "username": user.username, "roles": user.roles, "previous": previous }),
            &admin.actor,
        )
        .await;
        if let Err(e) = recorded {
            if user.role() > previous.iter().copied().max().unwrap_or(Role::Viewer) {
                let undone = state.accounts.set_roles(&user.id, &previous).await;
                if !matches!(undone, Ok(Ok(_))) {
                    let outcome = undone.map(|r| r.map(drop));
                    tracing::error!(user_id = %user.id, ?outcome, "a role grant was not recorded and cannot be undone");
                }
            }
            return Err(e);
        }
    }
    Ok(Json(json!({ "user": user_json(&user) })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvite {
    role: Role,
}

pub async fn create_invite_route(
    State(state): State<AppState>,
    Admin(admin): Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body: NewInvite = read_json_body(&headers, body, ADMIN_BODY_LIMIT).await?;
    if body.role == Role::Admin {
        require_step_up(&state, &admin, "creating an admin invite")?;
    }
    let minted = create_invite(&state, &admin.actor, body.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": minted.record.id,
            "code": minted.code,
            "role": minted.record.role,
            "expires_at": millis_rfc3339(minted.record.expires_at),
            "url": format!("{}/register?invite={}", state.config.public_origin, minted.code),
        })),
    )
        .into_response())
}

pub async fn list_invites(State(state): State<AppState>, Admin(_): Admin) -> Result<Response, ApiError> {
    let invites: Vec<_> = state
        .accounts
        .list_invites()
        .await?
        .into_iter()
        .map(|i| {
            json!({
                "id": i.id,
                "role": i.role,
                "created_at": i.created_at,
                "created_by": i.created_by,
                "expires_at": millis_rfc3339(i.expires_at),
                "used_by": i.used_by,
            })
        })
        .collect();
    Ok(Json(json!({ "invites": invites })).into_response())
}

/// Admins see every session; anyone else sees their own.
pub async fn list_sessions(State(state): State<AppState>, Viewer(principal): Viewer) -> Result<Response, ApiError> {
    let own = match (&principal.session, principal.role) {
        (_, Role::Admin) => None,
        (Some(s), _) => Some(s.user_id.clone()),
        (None, _) => {
            return Err(ApiError::Forbidden(
                "listing sessions needs the admin role or a session of your own".into(),
            ));
        }
    };
    let users = state.accounts.list_users().await?;
    let now = now_millis();
    let idle_ms = crate::sessions::millis(state.config.session_idle);
    let sessions: Vec<_> = state
        .accounts
        .list_sessions(own.as_deref(), now)
        .await?
        .into_iter()
        // Idle past the limit: over, whether or not the purge has removed it yet.
        .filter(|s| now - s.last_seen_at <= idle_ms)
        .map(|s| {
            let username = users.iter().find(|u| u.id == s.user_id).map(|u| u.username.clone());
            json!({
                "id": s.id,
                "user_id": s.user_id,
                "username": username,
                "created_at": millis_rfc3339(s.created_at),
                "last_seen_at": millis_rfc3339(s.last_seen_at),
                "expires_at": millis_rfc3339(s.expires_at),
                "verified_at": millis_rfc3339(s.verified_at),
                "user_agent": s.user_agent,
                "current": principal.session.as_ref().is_some_and(|c| c.id == s.id),
            })
        })
        .collect();
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

/// Ends a session at once, with its live streams. Admins may end anyone's; a
/// user may end their own.
pub async fn revoke_session(
    State(state): State<AppState>,
    Viewer(principal): Viewer,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let session = state
        .accounts
        .list_sessions(None, now_millis())
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::NotFound(format!("there is no live session {id}")))?;
    let own = principal.session.as_ref().is_some_and(|s| s.user_id == session.user_id);
    if principal.role != Role::Admin && !own {
        return Err(ApiError::Forbidden(
            "ending another person's session needs the admin role".into(),
        ));
    }
    if !own {
        require_step_up(&state, &principal, "ending another person's session")?;
    }
    if end_session(&state, &session, Some(&principal.actor)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("there is no live session {id}")))
    }
}

//! Who is calling: the `Principal` extractors. A handler that takes
//! `Operator(principal)` cannot run for a viewer or an anonymous caller.
//!
//! Credentials come from the `Authorization: Bearer` header (API tokens) or the
//! `herald_session` cookie (people, after a passkey login); never from a query
//! string. Cookie-authenticated writes must pass the CSRF rule.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use herald_core::auth::{CredentialStore, Role, TokenRecord};
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use herald_core::{ActorKind, StoreError};
use rand::RngCore;

use crate::error::ApiError;
use crate::sessions;
use crate::state::AppState;

pub use crate::principal::Principal;

/// Step-up: a risky action (minting a token, an admin invite, a role change,
/// ending someone else's session, disabling a person, removing a passkey, a
/// command its domain marks risky) from a browser session needs a passkey
/// verification within `--step-up-minutes`; otherwise 403 `reauth_required`,
/// and the console asks for the passkey and sends the request again. A stolen
/// cookie alone is then not enough to widen anyone's access.
pub fn require_step_up(state: &AppState, principal: &Principal, action: &str) -> Result<(), ApiError> {
    if principal.presence_verified(state.config.step_up) {
        return Ok(());
    }
    Err(step_up_error(state, principal, action))
}

/// The 403 `reauth_required` for `action`, saying how old the last verification is.
pub fn step_up_error(state: &AppState, principal: &Principal, action: &str) -> ApiError {
    let age = principal
        .session
        .as_ref()
        .map_or(0, |s| crate::sessions::now_millis() - s.verified_at);
    let window = crate::sessions::millis(state.config.step_up);
    ApiError::ReauthRequired(format!(
        "{action} needs a passkey verification in the last {} minutes; the last was {} minutes ago. \
         Verify with your passkey (POST /api/auth/login/start and /finish) and send the request again",
        window / 60_000,
        age / 60_000
    ))
}

/// Query parameters that look like credentials: refused outright so a secret
/// in a URL (and so in logs and browser history) never works.
const CREDENTIAL_PARAMS: [&str; 6] = ["token", "access_token", "api_key", "apikey", "auth", "session"];

pub fn reject_query_credentials(parts: &Parts) -> Result<(), ApiError> {
    if let Some(query) = parts.uri.query() {
        for (key, _) in form_urlencoded::parse(query.as_bytes()) {
            if CREDENTIAL_PARAMS.iter().any(|p| key.eq_ignore_ascii_case(p)) {
                return Err(ApiError::BadRequest(format!(
                    "{key}: credentials are never accepted in a query string; send Authorization: Bearer <token> \
                     or log in (session cookie)"
                )));
            }
        }
    }
    Ok(())
}

/// The `Authorization: Bearer` token, if the request has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not valid text"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthorized(
        "the Authorization header must be `Bearer <token>`",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    Ok(Some(token.trim()))
}

/// The name live-stream and rate limits count a token's use under.
pub fn token_credential(token_id: &str) -> String {
    format!("token:{token_id}")
}

/// The name live-stream and rate limits count a person's use under (across
/// all their sessions).
pub fn user_credential(user_id: &str) -> String {
    format!("user:{user_id}")
}

pub use crate::secrets::{TokenCache, hash_secret};

async fn find_token(state: &AppState, hash: &str) -> Result<Option<TokenRecord>, ApiError> {
    if let Some(record) = state.token_cache.get(hash) {
        return Ok(Some(record));
    }
    let generation = state.token_cache.generation();
    let found = state.credentials.find_token(hash).await?;
    if let Some(record) = &found {
        state.token_cache.put(hash, record, generation);
    }
    Ok(found)
}

/// Resolves the caller, or 401 (403 for a cross-site cookie write).
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    reject_query_credentials(parts)?;
    let Some(token) = bearer(&parts.headers)? else {
        let Some(secret) = sessions::cookie_secret(state, &parts.headers) else {
            return Err(ApiError::Unauthorized(
                "log in with a passkey, or send Authorization: Bearer <token>",
            ));
        };
        let session = sessions::resume(state, secret)
            .await?
            .ok_or(ApiError::Unauthorized("the session has ended; log in again"))?;
        sessions::check_same_origin(state, &parts.method, &parts.headers)?;
        let user = state
            .accounts
            .find_user(&session.user_id)
            .await?
            .ok_or(ApiError::Unauthorized("the session's user no longer exists"))?;
        if user.is_disabled() {
            return Err(ApiError::Unauthorized("this account is disabled"));
        }
        return Ok(Principal {
            actor: user.actor(),
            role: user.role(),
            credential_id: user_credential(&user.id),
            ends_with: sessions::session_credential(&session.id),
            session: Some(session),
        });
    };
    token_principal(state, token).await
}

/// The caller an API token's secret names, or 401 (unknown or revoked). The
/// brokers' messages are authenticated by it too.
pub async fn token_principal(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let record = find_token(state, &hash_secret(token))
        .await?
        .ok_or(ApiError::Unauthorized("the token is unknown or revoked"))?;
    Ok(Principal {
        actor: Actor {
            kind: ActorKind::Token,
            id: record.id.clone(),
            name: record.name,
        },
        role: record.role,
        credential_id: token_credential(&record.id),
        ends_with: token_credential(&record.id),
        session: None,
    })
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
                let principal = authenticate(state, parts).await?;
                if principal.role < $role {
                    return Err(ApiError::Forbidden(format!(
                        "this needs the {} role; {} has {}",
                        $role, principal.actor.name, principal.role
                    )));
                }
                Ok($name(principal))
            }
        }
    };
}

role_extractor!(Viewer, Role::Viewer, "Any authenticated caller (read, subscribe).");
role_extractor!(Operator, Role::Operator, "An operator or admin (domain commands).");
role_extractor!(Admin, Role::Admin, "An admin (users, invites, tokens).");

/// A freshly minted token: the secret is shown once and never stored.
pub struct MintedToken {
    pub record: TokenRecord,
    pub secret: String,
}

/// Token names: 1–64 characters of letters, digits, `_ - . @ :` and spaces.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > 64 || name.trim() != name {
        return Err("name: 1 to 64 characters, no leading or trailing spaces".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '@' | ':' | ' ')))
    {
        return Err(format!(
            "name: {c:?} is not allowed (letters, digits, _ - . @ : and spaces)"
        ));
    }
    Ok(())
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Appends one event that herald records on its own behalf (a token, a login,
/// an invite…): a fresh command id, correlated with itself.
pub async fn append_one(
    store: &dyn EventStore,
    stream: String,
    expected: ExpectedVersion,
    event_type: &str,
    data: serde_json::Value,
    actor: &Actor,
) -> Result<(), StoreError> {
    let command_id = uuid::Uuid::now_v7().to_string();
    store
        .append(AppendRequest {
            stream,
            expected,
            events: vec![NewEvent {
                event_type: event_type.into(),
                schema: 1,
                data,
            }],
            actor: actor.clone(),
            command_id: command_id.clone(),
            correlation_id: command_id,
            idempotency_fingerprint: None,
        })
        .await
        .map(drop)
}

/// Mints a token: records `TokenCreated` in the log first (so no token ever works
/// without its audit record), then stores the secret's hash.
pub async fn create_token(
    store: &dyn EventStore,
    credentials: &dyn CredentialStore,
    by: &Actor,
    name: &str,
    role: Role,
) -> Result<MintedToken, StoreError> {
    check_token_name(name).map_err(StoreError::InvalidAppend)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let secret = format!("hrld_{}", hex::encode(raw));
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        role,
        created_at: now_rfc3339(),
        created_by: by.clone(),
        revoked_at: None,
    };
    append_one(
        store,
        format!("token-{id}"),
        ExpectedVersion::NoStream,
        "TokenCreated",
        serde_json::json!({ "token_id": id, "name": name, "role": role }),
        by,
    )
    .await?;
    credentials.insert_token(&record, &hash_secret(&secret)).await?;
    Ok(MintedToken { record, secret })
}

/// Revokes a token: takes effect first — the row, the token cache, and every
/// live stream it opened end — then is recorded (every other instance forgets
/// it and ends its streams when it reads `TokenRevoked`: `revocations.rs`). `Ok(false)` when there is no
/// such live token. An error after the row changed (recording `TokenRevoked`
/// failed) leaves the token revoked: [`RevokeError::NotRecorded`].
pub async fn revoke_token(state: &AppState, by: &Actor, id: &str) -> Result<bool, RevokeError> {
    let revoked = state.credentials.revoke_token(id, &now_rfc3339()).await;
    // Forget it whatever the store said: the row may have changed.
    state.token_cache.forget(id);
    if !revoked.map_err(RevokeError::NotRevoked)? {
        return Ok(false);
    }
    state.live.end_credential(&token_credential(id));
    append_one(
        &*state.store,
        format!("token-{id}"),
        ExpectedVersion::StreamExists,
        "TokenRevoked",
        serde_json::json!({ "token_id": id }),
        by,
    )
    .await
    .map_err(RevokeError::NotRecorded)?;
    Ok(true)
}

/// Why [`revoke_token`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The token could not be revoked; it still works.
    #[error("the token could not be revoked: {0}")]
    NotRevoked(StoreError),
    /// The token is revoked (and its streams ended), but `TokenRevoked` is not in the log.
    #[error("the token is revoked, but recording TokenRevoked failed: {0}")]
    NotRecorded(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: id.into(),
            role: Role::Viewer,
            created_at: String::new(),
            created_by: Actor::system("test"),
            revoked_at: None,
        }
    }

    #[test]
    fn a_revocation_forgets_the_token_and_spoils_lookups_in_flight() {
        let cache = TokenCache::default();
        let g = cache.generation();
        cache.put("h1", &record("t1"), g);
        cache.put("h2", &record("t2"), g);
        assert_eq!(cache.get("h1").map(|r| r.id), Some("t1".into()));
        // A lookup of t2 starts, t2 is revoked, the lookup ends: not cached.
        let in_flight = cache.generation();
        cache.forget("t2");
        cache.put("h2", &record("t2"), in_flight);
        assert!(cache.get("h2").is_none());
        assert!(cache.get("h1").is_some(), "other tokens stay");
    }
}

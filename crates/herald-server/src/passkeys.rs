//! Passkey registration and login (API.md §7) with `webauthn-rs`, user
//! verification required.
//!
//! A ceremony's server-side state is stored under a random id for 5 minutes and
//! taken out (deleted) before it is verified, so it works once. Every
//! registration, login (success and failure) and logout is an event in the log.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::accounts::{
    FailureRecord, InviteRecord, Millis, RegistrationRefused, SessionRecord, StoredPasskey, User, check_display_name,
    check_username,
};
use herald_core::auth::Role;
use herald_core::envelope::Actor;
use herald_core::store::{ExpectedVersion, StoreError};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Uuid,
};

use crate::auth::{Viewer, append_one, hash_secret, now_rfc3339};
use crate::error::ApiError;
use crate::sessions::{
    self, check_same_origin, clear_cookie, cookie_secret, millis, new_session, now_millis, session_credential,
    set_cookie,
};
use crate::state::AppState;
use crate::wire::read_json_body;

/// How long a ceremony may take (API.md §7).
pub const CEREMONY_TTL_MS: Millis = 5 * 60 * 1000;
/// How long an invite code stays usable.
pub const INVITE_TTL_MS: Millis = 7 * 24 * 3600 * 1000;
const AUTH_BODY_LIMIT: usize = 16 * 1024;

/// The client address the auth rate limit counts against: the peer's address,
/// or, when the peer is a `--trusted-proxy`, the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy (see [`client_addr`]).
/// "unknown" when the server was not started with connection info, as in tests
/// that drive the router in process.
pub struct ClientAddr(pub String);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientAddr(client_addr(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

pub use crate::hosts::TrustedProxy;

/// Who the client is for rate limits: `peer` unless it is a trusted proxy, then
/// the right-most `X-Forwarded-For` address that is not a trusted proxy (each
/// trusted proxy appends the address it was reached from; anything to the left
/// of the first untrusted one may be made up by the client). When every hop is
/// trusted, the left-most; when an entry is not an address, the last trusted
/// hop before it (a misconfigured proxy is not believed further).
pub fn client_addr(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[TrustedProxy]) -> String {
    let Some(peer) = peer.map(|p| p.to_canonical()) else {
        return "unknown".to_owned();
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|t| t.contains(ip));
    if !is_trusted(peer) {
        return peer.to_string();
    }
    let mut hops: Vec<&str> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer.to_string();
        };
        hops.extend(value.split(','));
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        let hop = hop.trim();
        let parsed = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()));
        let Ok(ip) = parsed.map(|ip| ip.to_canonical()) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client.to_string()
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Appends one account event (`UserRegistered`, `LoginSucceeded`, …).
pub async fn record(
    state: &AppState,
    stream: String,
    expected: ExpectedVersion,
    event_type: &str,
    data: Value,
    actor: &Actor,
) -> Result<(), ApiError> {
    append_one(&*state.store, stream, expected, event_type, data, actor).await?;
    Ok(())
}

/// `{user}` as the API shows it.
pub fn user_json(user: &User) -> Value {
    json!({
        "id": user.id,
        "username": user.username,
        "display_name": user.display_name,
        "roles": user.roles,
        "created_at": user.created_at,
        "disabled_at": user.disabled_at,
    })
}

fn parse_field<T: serde::de::DeserializeOwned>(field: &str, value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            field.to_owned()
        } else {
            format!("{field}.{path}")
        };
        ApiError::BadRequest(format!("{at}: {}", e.into_inner()))
    })
}

/// The relying party, or 503 when passkeys are off (an IP public origin).
fn relying_party(state: &AppState) -> Result<&webauthn_rs::Webauthn, ApiError> {
    state.webauthn.as_deref().ok_or_else(|| {
        ApiError::Unavailable(format!(
            "passkey login is off: --public-origin {} is not a host name; serve herald under a host name \
             (e.g. http://localhost:8080) to use passkeys",
            state.config.public_origin
        ))
    })
}

fn credential_key(raw_id: &[u8]) -> String {
    hex::encode(raw_id)
}

// ---------------------------------------------------------------------------
// Registration

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterStart {
    username: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    invite: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct RegisterCeremony {
    user_id: Uuid,
    username: String,
    display_name: String,
    invite_hash: Option<String>,
    state: PasskeyRegistration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finish {
    ceremony: String,
    credential: Value,
}

/// Who may register: the holder of a live invite, with its role — and nobody
/// else, not even on an empty store. The first admin's invite is the one-time
/// setup code `herald serve` prints while no admin exists (or one from
/// `herald invite create --role admin`): whoever reaches herald first over the
/// network must not become its admin.
async fn registration_invite(state: &AppState, invite_hash: Option<&str>) -> Result<InviteRecord, ApiError> {
    let Some(hash) = invite_hash else {
        return Err(ApiError::BadRequest(
            "invite: registering needs an invite code from an admin; the first admin uses the setup code \
             `herald serve` printed, or one from `herald invite create --role admin`"
                .into(),
        ));
    };
    // A setup code makes the first admin and no other: every setup code still
    // open expires when an admin registers (`register_finish`).
    state
        .accounts
        .find_invite(hash, now_millis())
        .await?
        .ok_or_else(|| ApiError::Forbidden("the invite code is unknown, already used or expired".into()))
}

/// Whether herald still needs its first admin.
pub async fn needs_setup(accounts: &dyn herald_core::accounts::AccountStore) -> Result<bool, StoreError> {
    Ok(!accounts.list_users().await?.iter().any(|u| u.role() == Role::Admin))
}

/// `GET /api/auth/setup` (no credential): `{"setup_required"}`, true while no
/// admin account exists — the console then asks for the setup code.
pub async fn setup_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let required = needs_setup(&*state.accounts).await?;
    Ok(Json(json!({ "setup_required": required })).into_response())
}

/// The id prefix of setup-code invites.
const SETUP_INVITE: &str = herald_core::accounts::SETUP_INVITE_PREFIX;

/// While no admin exists: a fresh one-time setup code (an admin invite; the
/// codes printed by earlier starts stop working), for `herald serve` to print.
/// `None` once herald has an admin.
pub async fn issue_setup_code(
    store: &dyn herald_core::store::EventStore,
    accounts: &dyn herald_core::accounts::AccountStore,
) -> Result<Option<MintedInvite>, ApiError> {
    if !needs_setup(accounts).await? {
        return Ok(None);
    }
    accounts.expire_unused_invites(SETUP_INVITE, now_millis()).await?;
    mint_invite(
        store,
        accounts,
        &Actor::system("herald-setup"),
        Role::Admin,
        SETUP_INVITE,
    )
    .await
    .map(Some)
}

pub async fn register_start(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.limits.auth(&client)?;
    let body: RegisterStart = read_json_body(&headers, body, AUTH_BODY_LIMIT).await?;
    check_username(&body.username).map_err(ApiError::BadRequest)?;
    let display_name = body.display_name.unwrap_or_else(|| body.username.clone());
    check_display_name(&display_name).map_err(ApiError::BadRequest)?;
    let invite_hash = body.invite.as_deref().map(|c| hash_secret(c.trim()));
    registration_invite(&state, invite_hash.as_deref()).await?;
    if state.accounts.find_user_by_name(&body.username).await?.is_some() {
        return Err(username_taken(&body.username));
    }
    let user_id = Uuid::new_v4();
    let (options, registration) = relying_party(&state)?
        .start_passkey_registration(user_id, &body.username, &display_name, None)
        .map_err(ApiError::internal)?;
    let ceremony = random_hex(16);
    let saved = RegisterCeremony {
        user_id,
        username: body.username,
        display_name,
        invite_hash,
        state: registration,
    };
    state
        .accounts
        .put_ceremony(
            &ceremony,
            "register",
            &serde_json::to_string(&saved).map_err(ApiError::internal)?,
            now_millis() + CEREMONY_TTL_MS,
        )
        .await?;
    let mut options = serde_json::to_value(options).map_err(ApiError::internal)?;
    // Ask for a discoverable credential (a passkey proper) where the
    // authenticator can, so login can work without typing the username.
    if let Some(selection) = options
        .pointer_mut("/publicKey/authenticatorSelection")
        .and_then(Value::as_object_mut)
    {
        selection.insert("residentKey".into(), json!("preferred"));
    }
    Ok(Json(json!({ "ceremony": ceremony, "options": options })).into_response())
}

fn username_taken(username: &str) -> ApiError {
    ApiError::Unprocessable {
        title: "username taken",
        detail: format!("the username {username:?} is taken; choose another"),
    }
}

pub async fn register_finish(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.limits.auth(&client)?;
    let body: Finish = read_json_body(&headers, body, AUTH_BODY_LIMIT).await?;
    let credential: RegisterPublicKeyCredential = parse_field("credential", body.credential)?;
    let saved = state
        .accounts
        .take_ceremony(&body.ceremony, "register", now_millis())
        .await?
        .ok_or_else(|| {
            ApiError::BadRequest(
                "ceremony: unknown, already used or expired (a ceremony lasts 5 minutes); start again".into(),
            )
        })?;
    let saved: RegisterCeremony =
        serde_json::from_str(&saved).map_err(|e| ApiError::internal(format!("stored ceremony: {e}")))?;
    let passkey = relying_party(&state)?
        .finish_passkey_registration(&credential, &saved.state)
        .map_err(|e| ApiError::BadRequest(format!("credential: the passkey could not be verified ({e})")))?;

    // Checked here to refuse early; decided by the store, atomically with the
    // insert (the invite unused, the name free, a setup code only while no
    // admin exists: every instance sharing the store takes its turn there).
    let invite = registration_invite(&state, saved.invite_hash.as_deref()).await?;
    if state.accounts.find_user_by_name(&saved.username).await?.is_some() {
        return Err(username_taken(&saved.username));
    }
    let now = now_millis();
    let user = User {
        id: saved.user_id.simple().to_string(),
        username: saved.username,
        display_name: saved.display_name,
        roles: vec![invite.role],
        created_at: now_rfc3339(),
        disabled_at: None,
    };
    let stored = StoredPasskey {
        credential_id: credential_key(passkey.cred_id()),
        user_id: user.id.clone(),
        passkey: serde_json::to_string(&passkey).map_err(ApiError::internal)?,
        created_at: user.created_at.clone(),
    };
    let (session, secret) = new_session(&user.id, now, millis(state.config.session_max), &headers);
    // The log first: nobody exists without the record of how they came to.
    record(
        &state,
        format!("user-{}", user.id),
        ExpectedVersion::NoStream,
        "UserRegistered",
        json!({
            "user_id": user.id,
            "username": user.username,
            "display_name": user.display_name,
            "roles": user.roles,
            "invite_id": invite.id,
            "credential_id": stored.credential_id,
            "session_id": session.id,
        }),
        &user.actor(),
    )
    .await?;
    // An admin's registration also makes the open setup codes expire (shown
    // as expired, not as open invites), in the same transaction.
    if let Err(refused) = state
        .accounts
        .insert_user(&user, &stored, saved.invite_hash.as_deref(), now)
        .await?
    {
        // Lost a race since the checks above (another registration, perhaps on
        // another instance): the log says this one did not happen after all.
        record(
            &state,
            format!("user-{}", user.id),
            ExpectedVersion::Any,
            "RegistrationRefused",
            json!({ "user_id": user.id, "username": user.username, "reason": refused.to_string() }),
            &user.actor(),
        )
        .await?;
        return Err(match refused {
            RegistrationRefused::UsernameTaken(name) => username_taken(&name),
            e => ApiError::Forbidden(e.to_string()),
        });
    }
    state.accounts.insert_session(&session, &hash_secret(&secret)).await?;
    let mut response = (StatusCode::CREATED, Json(json!({ "user": user_json(&user) }))).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, &secret, &session));
    Ok(response)
}

// ---------------------------------------------------------------------------
// Login

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginStart {
    #[serde(default)]
    username: Option<String>,
}

pub async fn login_start(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.limits.auth(&client)?;
    let body: LoginStart = read_json_body(&headers, body, AUTH_BODY_LIMIT).await?;
    if let Some(username) = &body.username {
        check_username(username).map_err(ApiError::BadRequest)?;
        count_account_attempt(&state, username).await?;
    }
    // Always a discoverable-credential challenge, with no allowCredentials:
    // listing a named user's passkeys would tell anyone which usernames exist
    // (and which credential ids they hold). The authenticator says who it is
    // for; `login/finish` finds the user from the credential.
    let (mut options, auth) = relying_party(&state)?
        .start_discoverable_authentication()
        .map_err(ApiError::internal)?;
    // A modal prompt, not autofill-only (the console asks on a click).
    options.mediation = None;
    let ceremony = random_hex(16);
    state
        .accounts
        .put_ceremony(
            &ceremony,
            "login",
            &serde_json::to_string(&auth).map_err(ApiError::internal)?,
            now_millis() + CEREMONY_TTL_MS,
        )
        .await?;
    Ok(Json(json!({ "ceremony": ceremony, "options": options })).into_response())
}

/// Counts one login attempt against `username` (login/start naming it, or
/// login/finish with a passkey of theirs): beyond `login_limit` per
/// `login_window`, 429 until the window is over. The counts live in herald.db
/// (`login_attempts`), so several herald processes on one database share them.
async fn count_account_attempt(state: &AppState, username: &str) -> Result<(), ApiError> {
    let limit = u64::from(state.config.login_limit);
    if limit == 0 {
        return Ok(());
    }
    let now = now_millis();
    let window_ms = millis(state.config.login_window);
    let window = state.accounts.count_login_attempt(username, now, window_ms).await?;
    if window.attempts <= limit {
        return Ok(());
    }
    metrics::counter!("herald_logins_total", "outcome" => "limited").increment(1);
    let left_ms = (window.started_at.saturating_add(window_ms) - now).max(0);
    Err(ApiError::TooManyRequests {
        detail: format!(
            "too many login attempts for this account ({limit} per {} minutes); wait and try again",
            state.config.login_window.as_secs() / 60
        ),
        retry_after_secs: left_ms.unsigned_abs().div_ceil(1000).max(1),
    })
}

/// A refused login, then 401. The log is append-only and anyone can fail a
/// login, so failures do not each become an event: per account (the user the
/// passkey belongs to), and once more for failures that name no account, only
/// the first failure of each `login_window` is recorded as `LoginFailed` (with
/// its window and reason, and how many failures since the previous event no
/// event recorded); the others are counted in herald.db (`login_attempts`,
/// shared by every herald process on the database) and in
/// `herald_logins_total{outcome="failed"}`. Log growth from unauthenticated
/// clients is so bounded by (accounts + 1) events per window.
async fn login_failed(state: &AppState, user: Option<&User>, reason: String) -> ApiError {
    metrics::counter!("herald_logins_total", "outcome" => "failed").increment(1);
    let window_ms = millis(state.config.login_window);
    let counted = state
        .accounts
        .count_login_failure(user.map(|u| u.username.as_str()), now_millis(), window_ms)
        .await;
    match counted {
        Ok(FailureRecord::Counted) => {
            metrics::counter!("herald_login_failures_unrecorded_total").increment(1);
        }
        Ok(FailureRecord::Record {
            window_start,
            unrecorded,
        }) => {
            let mut data = json!({
                "reason": reason,
                "window_start": sessions::millis_rfc3339(window_start),
                "window_end": sessions::millis_rfc3339(window_start.saturating_add(window_ms)),
                "unrecorded_failures": unrecorded,
            });
            let stream = match user {
                Some(u) => {
                    data["user_id"] = json!(u.id);
                    data["username"] = json!(u.username);
                    format!("user-{}", u.id)
                }
                None => "login-failures".to_owned(),
            };
            let outcome = record(
                state,
                stream,
                ExpectedVersion::Any,
                "LoginFailed",
                data,
                &Actor::system("passkey-login"),
            )
            .await;
            if let Err(e) = outcome {
                tracing::warn!(error = %e, "cannot record a failed login");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count a failed login"),
    }
    ApiError::AuthFailed(format!("login refused: {reason}"))
}

pub async fn login_finish(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.limits.auth(&client)?;
    let body: Finish = read_json_body(&headers, body, AUTH_BODY_LIMIT).await?;
    let credential: PublicKeyCredential = parse_field("credential", body.credential)?;
    let now = now_millis();
    let Some(saved) = state.accounts.take_ceremony(&body.ceremony, "login", now).await? else {
        return Err(login_failed(&state, None, "the ceremony is unknown, already used or expired".into()).await);
    };
    // A ceremony stored by an older herald (another shape) is as good as unknown.
    let Ok(auth) = serde_json::from_str::<DiscoverableAuthentication>(&saved) else {
        return Err(login_failed(&state, None, "the ceremony is unknown, already used or expired".into()).await);
    };
    let key = credential_key(&credential.raw_id);
    let Some(stored) = state.accounts.find_passkey(&key).await? else {
        return Err(login_failed(&state, None, "the passkey is not registered here".into()).await);
    };
    let user = state
        .accounts
        .find_user(&stored.user_id)
        .await?
        .ok_or_else(|| ApiError::internal(format!("passkey {key} belongs to no user")))?;
    count_account_attempt(&state, &user.username).await?;
    let mut passkey: Passkey =
        serde_json::from_str(&stored.passkey).map_err(|e| ApiError::internal(format!("stored passkey: {e}")))?;
    // The authenticator named the user (its user handle): it must be the one
    // the passkey belongs to.
    let verified = match relying_party(&state)?.identify_discoverable_authentication(&credential) {
        Ok((handle, _)) if handle.simple().to_string() == user.id => {
            relying_party(&state)?.finish_discoverable_authentication_v2(&credential, auth, &passkey)
        }
        Ok(_) => {
            return Err(login_failed(&state, Some(&user), "the passkey's user handle does not match".into()).await);
        }
        Err(e) => Err(e),
    };
    let result = match verified {
        Ok(r) => r,
        Err(e) => {
            return Err(login_failed(&state, Some(&user), format!("the passkey could not be verified ({e})")).await);
        }
    };
    // Checked once the passkey is proven, so only its holder learns it.
    if user.is_disabled() {
        return Err(login_failed(&state, Some(&user), "this account is disabled".into()).await);
    }
    if let Err(e) = state.accounts.clear_login_attempts(&user.username).await {
        tracing::warn!(error = %e, "cannot reset the login attempts of an account");
    }
    passkey.update_credential(&result);
    state
        .accounts
        .update_passkey(
            &key,
            &serde_json::to_string(&passkey).map_err(ApiError::internal)?,
            &now_rfc3339(),
        )
        .await?;

    // Every login gets a new session id, a step-up too (OWASP ASVS v5 7.2.4:
    // a new session token on re-authentication), so a session id seen before
    // the verification is worth nothing after it. A step-up (this browser was
    // already logged in as this user) ends the session it replaces, with its
    // live streams; the console's streams resume on the new cookie.
    let replaced = match cookie_secret(&state, &headers) {
        Some(secret) => sessions::resume(&state, secret).await?.filter(|s| s.user_id == user.id),
        None => None,
    };
    let (session, secret) = new_session(&user.id, now, millis(state.config.session_max), &headers);
    record(
        &state,
        format!("user-{}", user.id),
        ExpectedVersion::Any,
        "LoginSucceeded",
        json!({
            "user_id": user.id,
            "credential_id": key,
            "session_id": session.id,
            "step_up": replaced.is_some(),
            "replaces_session_id": replaced.as_ref().map(|s| &s.id),
        }),
        &user.actor(),
    )
    .await?;
    metrics::counter!("herald_logins_total", "outcome" => "ok").increment(1);
    state.accounts.insert_session(&session, &hash_secret(&secret)).await?;
    if let Some(old) = &replaced
        && state.accounts.delete_session(&old.id).await?.is_some()
    {
        state.live.end_credential(&session_credential(&old.id));
    }
    let mut response = Json(json!({ "user": user_json(&user) })).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&state, &secret, &session));
    Ok(response)
}

// ---------------------------------------------------------------------------
// Logout, me

/// Ends the caller's session (and its live streams). Without a live session
/// there is nothing to end: 204 all the same, and the cookie is cleared.
pub async fn logout(State(state): State<AppState>, method: Method, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(secret) = cookie_secret(&state, &headers)
        && let Some(session) = sessions::resume(&state, secret).await?
    {
        check_same_origin(&state, &method, &headers)?;
        end_session(&state, &session, None).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, clear_cookie(&state));
    Ok(response)
}

/// Deletes a session, ends its streams and records it: `LoggedOut` by its own
/// user, `SessionRevoked` when `by` someone else (an admin).
pub async fn end_session(state: &AppState, session: &SessionRecord, by: Option<&Actor>) -> Result<bool, ApiError> {
    let Some(session) = state.accounts.delete_session(&session.id).await? else {
        return Ok(false);
    };
    state.live.end_credential(&session_credential(&session.id));
    let user = state.accounts.find_user(&session.user_id).await?;
    let own_actor = user.as_ref().map(User::actor);
    let (event_type, actor) = match (by, &own_actor) {
        (Some(by), Some(own)) if by.id == own.id => ("LoggedOut", by),
        (Some(by), _) => ("SessionRevoked", by),
        (None, Some(own)) => ("LoggedOut", own),
        (None, None) => return Ok(true),
    };
    record(
        state,
        format!("user-{}", session.user_id),
        ExpectedVersion::Any,
        event_type,
        json!({ "user_id": session.user_id, "session_id": session.id }),
        actor,
    )
    .await?;
    Ok(true)
}

pub async fn me(State(state): State<AppState>, Viewer(principal): Viewer) -> Result<Response, ApiError> {
    let user = match &principal.session {
        Some(session) => {
            let user = state
                .accounts
                .find_user(&session.user_id)
                .await?
                .ok_or(ApiError::Unauthorized("the session's user no longer exists"))?;
            user_json(&user)
        }
        None => json!({
            "id": principal.actor.id,
            "username": principal.actor.name,
            "display_name": principal.actor.name,
            "roles": [principal.role],
        }),
    };
    let mut body = json!({ "user": user, "via": principal.via() });
    if let Some(session) = &principal.session {
        body["session"] = json!({
            "id": session.id,
            "expires_at": sessions::millis_rfc3339(session.expires_at),
            "verified_at": sessions::millis_rfc3339(session.verified_at),
        });
    }
    Ok(Json(body).into_response())
}

// ---------------------------------------------------------------------------
// Invites (also used by `herald invite create`)

pub struct MintedInvite {
    pub record: InviteRecord,
    pub code: String,
}

/// Mints an invite: `InviteCreated` in the log first, then the code's hash.
pub async fn create_invite(state: &AppState, by: &Actor, role: Role) -> Result<MintedInvite, ApiError> {
    create_invite_in(&*state.store, &*state.accounts, by, role).await
}

pub async fn create_invite_in(
    store: &dyn herald_core::store::EventStore,
    accounts: &dyn herald_core::accounts::AccountStore,
    by: &Actor,
    role: Role,
) -> Result<MintedInvite, ApiError> {
    mint_invite(store, accounts, by, role, "").await
}

async fn mint_invite(
    store: &dyn herald_core::store::EventStore,
    accounts: &dyn herald_core::accounts::AccountStore,
    by: &Actor,
    role: Role,
    id_prefix: &str,
) -> Result<MintedInvite, ApiError> {
    let id = format!("{id_prefix}{}", uuid::Uuid::now_v7().simple());
    let code = format!("hinv_{}", random_hex(16));
    let record = InviteRecord {
        id: id.clone(),
        role,
        created_at: now_rfc3339(),
        created_by: by.clone(),
        expires_at: now_millis() + INVITE_TTL_MS,
        used_by: None,
    };
    // A setup code is not recorded when issued (each start of an empty herald
    // issues one; the log would grow with restarts): it can only ever be used
    // for the one registration that makes the first admin, and that
    // `UserRegistered` names it (`invite_id` "setup-…").
    if id_prefix.is_empty() {
        append_one(
            store,
            format!("invite-{id}"),
            ExpectedVersion::NoStream,
            "InviteCreated",
            json!({
                "invite_id": id,
                "role": role,
                "expires_at": sessions::millis_rfc3339(record.expires_at),
            }),
            by,
        )
        .await?;
    }
    accounts.insert_invite(&record, &hash_secret(&code)).await?;
    Ok(MintedInvite { record, code })
}

#[cfg(test)]
mod client_addr_tests {
    use super::*;

    fn proxies(list: &[&str]) -> Vec<TrustedProxy> {
        list.iter().map(|p| p.parse().expect("proxy")).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    #[test]
    fn trusted_proxies_parse_as_addresses_or_networks() {
        let net: TrustedProxy = "10.1.2.3/8".parse().expect("cidr");
        assert!(net.contains("10.200.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("mapped ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one: TrustedProxy = " 192.168.0.7 ".parse().expect("address");
        assert_eq!(one.to_string(), "192.168.0.7/32");
        assert!(!one.contains("192.168.0.8".parse().expect("ip")));
        let v6: TrustedProxy = "fd00::/8".parse().expect("v6");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        let all: TrustedProxy = "0.0.0.0/0".parse().expect("any");
        assert!(all.contains("1.2.3.4".parse().expect("ip")));
        for bad in ["", "localhost", "10.0.0.0/33", "::/129", "10.0.0.0/x", "10.0.0.1:80"] {
            let e = bad.parse::<TrustedProxy>().expect_err(bad);
            assert!(e.contains("not an IP address or network"), "{e}");
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_peer() {
        let trusted = proxies(&["10.0.0.0/8"]);
        // An untrusted peer: its header is ignored.
        assert_eq!(
            client_addr(ip("203.0.113.9"), &xff(&["1.1.1.1"]), &trusted),
            "203.0.113.9"
        );
        // A trusted peer: the right-most address that is not a trusted proxy.
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff(&["6.6.6.6, 198.51.100.4, 10.0.0.9"]), &trusted),
            "198.51.100.4",
            "the left part may be made up by the client"
        );
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff(&["6.6.6.6", "198.51.100.4 , 10.0.0.9"]), &trusted),
            "198.51.100.4",
            "several headers are one list"
        );
        // No header, or all hops trusted.
        assert_eq!(client_addr(ip("10.0.0.2"), &HeaderMap::new(), &trusted), "10.0.0.2");
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff(&["10.0.0.5, 10.0.0.9"]), &trusted),
            "10.0.0.5"
        );
        // Garbage: not believed past the last trusted hop.
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff(&["1.2.3.4, not-an-ip, 10.0.0.9"]), &trusted),
            "10.0.0.9"
        );
        assert_eq!(
            client_addr(ip("10.0.0.2"), &xff(&["[2001:db8::1]:443"]), &trusted),
            "2001:db8::1"
        );
        assert_eq!(
            client_addr(ip("::ffff:10.0.0.2"), &xff(&["192.0.2.1"]), &trusted),
            "192.0.2.1"
        );
        // No proxies configured: the peer, whatever the header says.
        assert_eq!(client_addr(ip("10.0.0.2"), &xff(&["1.1.1.1"]), &[]), "10.0.0.2");
        assert_eq!(client_addr(None, &xff(&["1.1.1.1"]), &trusted), "unknown");
    }
}

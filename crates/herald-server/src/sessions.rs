//! Browser sessions (API.md §2): the `herald_session` cookie, its server-side
//! record, expiry, and the CSRF rule for cookie-authenticated writes.
//!
//! The cookie carries 256 random bits; the store keeps only their SHA-256, so a
//! copy of the database does not let anyone act as a logged-in user. A session
//! also has a public id (listed and revoked by admins), which is no secret.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use herald_core::accounts::{Millis, SessionRecord};
use rand::RngCore;

pub use crate::clock::{millis, millis_rfc3339, now_millis};
use crate::error::ApiError;
use crate::secrets::hash_secret;
use crate::state::AppState;

/// The session cookie's name on http origins.
pub const COOKIE: &str = "herald_session";
/// Its name on https origins: the `__Host-` prefix makes the browser refuse it
/// unless it is `Secure`, `Path=/` and has no `Domain`, so a sibling subdomain
/// cannot plant or shadow a session cookie (cookie tossing).
pub const HOST_COOKIE: &str = "__Host-herald_session";

/// The session cookie's name for this public origin.
pub fn cookie_name(public_origin: &str) -> &'static str {
    if public_origin.starts_with("https://") {
        HOST_COOKIE
    } else {
        COOKIE
    }
}

/// Refresh `last_seen_at` at most this often (one write a minute, not per request).
const TOUCH_EVERY_MS: Millis = 60_000;

/// The live-stream/rate-limit key of a session's streams.
pub fn session_credential(session_id: &str) -> String {
    format!("session:{session_id}")
}

/// The session cookie's value, if the request has one (only under the name of
/// this origin: on https, a plain `herald_session` is ignored).
pub fn cookie_secret<'h>(state: &AppState, headers: &'h HeaderMap) -> Option<&'h str> {
    find_cookie(headers, cookie_name(&state.config.public_origin))
}

fn find_cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// A new session for `user_id`: its record, and the secret for the cookie.
pub fn new_session(user_id: &str, now: Millis, max_age_ms: Millis, headers: &HeaderMap) -> (SessionRecord, String) {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect());
    (
        SessionRecord {
            id: uuid::Uuid::now_v7().simple().to_string(),
            user_id: user_id.to_owned(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + max_age_ms,
            verified_at: now,
            user_agent,
        },
        hex::encode(raw),
    )
}

fn secure(state: &AppState) -> &'static str {
    if state.config.public_origin.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a session that lasts until its absolute expiry.
pub fn set_cookie(state: &AppState, secret: &str, session: &SessionRecord) -> HeaderValue {
    let max_age = ((session.expires_at - now_millis()) / 1000).max(0);
    HeaderValue::from_str(&format!(
        "{}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        cookie_name(&state.config.public_origin),
        secure(state)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("herald_session=; Path=/; Max-Age=0"))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(state: &AppState) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        cookie_name(&state.config.public_origin),
        secure(state)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("herald_session=; Path=/; Max-Age=0"))
}

/// CSRF: a cookie-authenticated request other than GET/HEAD must come from
/// the console's own origin. OPTIONS is not exempt: herald answers no CORS
/// preflight, so a cookie-carrying OPTIONS is no preflight but a request like
/// any other (and a route may one day act on it).
pub fn check_same_origin(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site == Some("same-origin") {
        return Ok(());
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if origin == Some(state.config.public_origin.as_str()) {
        return Ok(());
    }
    Err(ApiError::Forbidden(format!(
        "cross-site request refused: a request authenticated by the session cookie must carry \
         Sec-Fetch-Site: same-origin or Origin: {}",
        state.config.public_origin
    )))
}

/// The live session the cookie names, refreshing its activity; `None` when the
/// cookie is unknown, or the session expired (idle or absolute) — an expired
/// one is removed and its streams end.
pub async fn resume(state: &AppState, secret: &str) -> Result<Option<SessionRecord>, ApiError> {
    let now = now_millis();
    let Some(mut session) = state.accounts.find_session(&hash_secret(secret), now).await? else {
        return Ok(None);
    };
    let idle_ms = millis(state.config.session_idle);
    if now - session.last_seen_at > idle_ms {
        if state.accounts.delete_session(&session.id).await?.is_some() {
            state.live.end_credential(&session_credential(&session.id));
        }
        return Ok(None);
    }
    if now - session.last_seen_at > TOUCH_EVERY_MS {
        touch_soon(state, &session.id, now);
        session.last_seen_at = now;
    }
    Ok(Some(session))
}

/// How long a session touch waits for the database's write lock.
const TOUCH_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Sessions with a touch in flight (one at a time per session).
static TOUCHING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
/// When a failed touch was last logged (at most one warning a minute).
static TOUCH_WARNED_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Refreshes a session's activity in the background, best effort: the request
/// does not wait for it, and a busy database (another process writing) is
/// waited for `TOUCH_WAIT` at most. A touch that fails is tried again by the
/// next request (`last_seen_at` stayed old); the idle limit is hours, a
/// missed touch costs nothing.
fn touch_soon(state: &AppState, session_id: &str, now: Millis) {
    {
        let mut touching = TOUCHING.lock().unwrap_or_else(|p| p.into_inner());
        if !touching.insert(session_id.to_owned()) {
            return;
        }
    }
    let accounts = state.accounts.clone();
    let id = session_id.to_owned();
    tokio::spawn(async move {
        let outcome = accounts.try_touch_session(&id, now, TOUCH_WAIT).await;
        TOUCHING.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Err(e) = outcome {
            metrics::counter!("herald_session_touch_failures_total").increment(1);
            let last = TOUCH_WARNED_AT.load(std::sync::atomic::Ordering::Relaxed);
            let at = now_millis();
            if at - last >= 60_000
                && TOUCH_WARNED_AT
                    .compare_exchange(
                        last,
                        at,
                        std::sync::atomic::Ordering::Relaxed,
                        std::sync::atomic::Ordering::Relaxed,
                    )
                    .is_ok()
            {
                tracing::warn!(error = %e, "cannot record session activity (best effort; retried later)");
            }
        }
    });
}

/// Removes expired sessions now and then, ending their streams.
pub async fn purge_loop(state: AppState) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.live.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = now_millis();
        match state
            .accounts
            .purge_sessions(now, now - millis(state.config.session_idle))
            .await
        {
            Ok(gone) => {
                for s in gone {
                    state.live.end_credential(&session_credential(&s.id));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge expired sessions"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_are_exempt_from_the_same_origin_rule() {
        let dir = tempfile::tempdir().expect("dir");
        let state = AppState::open_sqlite(dir.path(), crate::ServerConfig::default()).expect("state");
        let cross_site = HeaderMap::new();
        for ok in [Method::GET, Method::HEAD] {
            assert!(check_same_origin(&state, &ok, &cross_site).is_ok(), "{ok}");
        }
        for refused in [
            Method::OPTIONS,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            assert!(
                matches!(
                    check_same_origin(&state, &refused, &cross_site),
                    Err(ApiError::Forbidden(_))
                ),
                "{refused}"
            );
        }
        let mut same = HeaderMap::new();
        same.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(check_same_origin(&state, &Method::OPTIONS, &same).is_ok());
    }

    #[test]
    fn https_origins_use_the_host_prefixed_cookie_and_ignore_the_plain_one() {
        assert_eq!(cookie_name("http://localhost:8080"), COOKIE);
        assert_eq!(cookie_name("https://herald.example.com"), HOST_COOKIE);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("herald_session=planted; __Host-herald_session=real"),
        );
        assert_eq!(find_cookie(&h, HOST_COOKIE), Some("real"));
        assert_eq!(find_cookie(&h, COOKIE), Some("planted"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_session=abc ; b=2"),
        );
        assert_eq!(find_cookie(&h, COOKIE), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("herald_session=xyz"));
        assert_eq!(find_cookie(&h, COOKIE), Some("xyz"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("herald_sessionx=1; herald_session="),
        );
        assert_eq!(find_cookie(&h, COOKIE), None);
    }
}

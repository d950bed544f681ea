//! Who is calling, once authenticated (`auth.rs` resolves it). A leaf.

use herald_core::accounts::SessionRecord;
use herald_core::auth::Role;
use herald_core::envelope::Actor;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub actor: Actor,
    pub role: Role,
    /// What live-stream limits and rate limits count against: the token, or the
    /// user (across all their sessions).
    pub credential_id: String,
    /// What ends this caller's live streams: the token or the session.
    pub ends_with: String,
    /// The browser session, when the caller came with the cookie.
    pub session: Option<SessionRecord>,
}

impl Principal {
    /// `"session"` or `"token"` (as `GET /api/me` says).
    pub fn via(&self) -> &'static str {
        if self.session.is_some() { "session" } else { "token" }
    }

    /// Whether this caller proved presence recently enough for a risky action:
    /// always for a token (machines have no step-up), for a person when their
    /// session's last passkey verification is within `--step-up-minutes`.
    pub fn presence_verified(&self, window: std::time::Duration) -> bool {
        match &self.session {
            None => true,
            Some(session) => crate::clock::now_millis() - session.verified_at <= crate::clock::millis(window),
        }
    }

    /// When a live stream of this caller must end at the latest.
    pub fn stream_deadline(&self) -> Option<tokio::time::Instant> {
        let session = self.session.as_ref()?;
        let left = (session.expires_at - crate::clock::now_millis()).max(0);
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(left.unsigned_abs()))
    }
}

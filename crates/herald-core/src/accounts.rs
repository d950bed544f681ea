//! People: users, their passkeys, browser sessions, invitations and the passkey
//! ceremonies in flight. The store keeps them; the log records every change to
//! them (who registered, logged in, was given a role, …).
//!
//! Secrets are stored only as SHA-256 hashes (session cookies, invite codes);
//! passkeys are stored as the public-key credential JSON the WebAuthn library
//! produced (opaque here: this crate does not depend on WebAuthn).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::envelope::Actor;
use crate::store::StoreError;

/// Milliseconds since the Unix epoch (what expiry is computed in).
pub type Millis = i64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub roles: Vec<Role>,
    pub created_at: String,
    /// When an admin disabled the account (RFC 3339); a disabled user cannot log
    /// in and none of their sessions works.
    #[serde(default)]
    pub disabled_at: Option<String>,
}

impl User {
    /// The strongest role held (roles are cumulative: admin ⊃ operator ⊃ viewer).
    pub fn role(&self) -> Role {
        self.roles.iter().copied().max().unwrap_or(Role::Viewer)
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }

    pub fn actor(&self) -> Actor {
        Actor {
            kind: crate::ActorKind::User,
            id: self.id.clone(),
            name: self.username.clone(),
        }
    }
}

/// Usernames: 1–64 characters of lowercase letters, digits and `. _ -`, starting
/// with a letter or digit (so they are safe in URLs, logs and stream data).
pub fn check_username(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > 64 {
        return Err(format!("username: 1 to 64 characters (got {len})"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err("username: must start with a lowercase letter or a digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "username: {c:?} is not allowed (lowercase letters, digits, '.', '_' and '-')"
        ));
    }
    Ok(())
}

/// Display names: 1–100 characters, no control characters.
pub fn check_display_name(name: &str) -> Result<(), String> {
    let len = name.chars().count();
    if len == 0 || len > 100 || name.trim() != name {
        return Err("display_name: 1 to 100 characters, no leading or trailing spaces".into());
    }
    if name.chars().any(char::is_control) {
        return Err("display_name: control characters are not allowed".into());
    }
    Ok(())
}

/// One registered passkey of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPasskey {
    /// The credential id (the WebAuthn raw id, hex-encoded).
    pub credential_id: String,
    pub user_id: String,
    /// The WebAuthn library's serialized credential (public key, counter, flags).
    pub passkey: String,
    pub created_at: String,
}

/// What an admin sees of a passkey (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyInfo {
    pub credential_id: String,
    pub user_id: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

/// The login-attempt counters of one account in the current window (see
/// [`AccountStore::count_login_attempt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginWindow {
    /// When the current window began.
    pub started_at: Millis,
    /// Attempts counted in it, this one included.
    pub attempts: u64,
}

/// What to do with one failed login (see [`AccountStore::count_login_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRecord {
    /// The first failure of its window: record a `LoginFailed` event, with the
    /// failures since the last such event that no event recorded.
    Record { window_start: Millis, unrecorded: u64 },
    /// Counted only (a `LoginFailed` for this window is in the log already).
    Counted,
}

/// One account's login-attempt row: `(window_start, attempts, failures, unrecorded)`.
pub type AttemptRow = (Millis, i64, i64, i64);

/// The rule of [`AccountStore::count_login_failure`], the same on every
/// backend: given the account's row (if any), what to answer and the row to
/// store. A window older than `window_ms` starts over, carrying the failures
/// no event recorded; the first failure of a window is to be recorded.
pub fn count_failure(row: Option<AttemptRow>, now: Millis, window_ms: Millis) -> (FailureRecord, AttemptRow) {
    let (window_start, attempts, failures, unrecorded) = match row {
        Some((start, attempts, failures, unrecorded)) if start > now.saturating_sub(window_ms) => {
            (start, attempts, failures, unrecorded)
        }
        Some((_, _, _, unrecorded)) => (now, 0, 0, unrecorded),
        None => (now, 0, 0, 0),
    };
    let (outcome, unrecorded) = if failures == 0 {
        (
            FailureRecord::Record {
                window_start,
                unrecorded: u64::try_from(unrecorded).unwrap_or(0),
            },
            0,
        )
    } else {
        (FailureRecord::Counted, unrecorded.saturating_add(1))
    };
    (
        outcome,
        (window_start, attempts, failures.saturating_add(1), unrecorded),
    )
}

/// A browser session. The cookie carries a secret; the store keeps its hash and
/// this record. `id` is a separate, non-secret handle for listing and revoking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    /// Absolute expiry: the session ends then however active it is.
    pub expires_at: Millis,
    /// When the user last proved presence with a passkey (login or step-up).
    pub verified_at: Millis,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub id: String,
    pub role: Role,
    pub created_at: String,
    pub created_by: Actor,
    pub expires_at: Millis,
    pub used_by: Option<String>,
}

/// Why a registration could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationRefused {
    #[error("the username {0:?} is taken")]
    UsernameTaken(String),
    #[error("registration needs an invite")]
    InviteRequired,
    #[error("the invite code is unknown, used or expired")]
    InviteUnusable,
}

#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    async fn count_users(&self) -> Result<u64, StoreError>;
    async fn find_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn find_user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Stores a user with their first passkey, atomically consuming the invite
    /// whose code hashes to `invite_hash` (without one: refused, every
    /// registration needs an invite).
    async fn insert_user(
        &self,
        user: &User,
        passkey: &StoredPasskey,
        invite_hash: Option<&str>,
        now: Millis,
    ) -> Result<Result<(), RegistrationRefused>, StoreError>;
    /// Replaces a user's roles; false when there is no such user.
    async fn set_roles(&self, user_id: &str, roles: &[Role]) -> Result<bool, StoreError>;
    /// Disables a user as of `at` (RFC 3339), or enables them (`None`); false
    /// when there is no such user.
    async fn set_disabled(&self, user_id: &str, at: Option<&str>) -> Result<bool, StoreError>;

    async fn passkeys_of(&self, user_id: &str) -> Result<Vec<StoredPasskey>, StoreError>;
    async fn find_passkey(&self, credential_id: &str) -> Result<Option<StoredPasskey>, StoreError>;
    async fn update_passkey(&self, credential_id: &str, passkey: &str, used_at: &str) -> Result<(), StoreError>;
    /// Every passkey of every user (for the admin's user list), oldest first.
    async fn list_passkeys(&self) -> Result<Vec<PasskeyInfo>, StoreError>;
    /// Removes one passkey of `user_id`; false when that user has no such passkey.
    async fn remove_passkey(&self, user_id: &str, credential_id: &str) -> Result<bool, StoreError>;

    async fn insert_session(&self, session: &SessionRecord, secret_hash: &str) -> Result<(), StoreError>;
    /// The unexpired session whose secret hashes to `secret_hash`.
    async fn find_session(&self, secret_hash: &str, now: Millis) -> Result<Option<SessionRecord>, StoreError>;
    /// Records activity (and, with `verified`, a fresh passkey verification).
    async fn touch_session(&self, id: &str, now: Millis, verified: bool) -> Result<(), StoreError>;
    /// Records activity if the database lets it within `wait` (best effort: a
    /// busy database is not waited for longer; the error says so).
    async fn try_touch_session(&self, id: &str, now: Millis, wait: std::time::Duration) -> Result<(), StoreError>;
    /// Deletes a session; returns it when it existed.
    async fn delete_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes every session of a user; returns them.
    async fn delete_sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, StoreError>;
    /// Live sessions, newest first (of one user, or all).
    async fn list_sessions(&self, user_id: Option<&str>, now: Millis) -> Result<Vec<SessionRecord>, StoreError>;
    /// Deletes sessions idle since before `idle_before` or past their absolute expiry.
    async fn purge_sessions(&self, now: Millis, idle_before: Millis) -> Result<Vec<SessionRecord>, StoreError>;

    async fn insert_invite(&self, invite: &InviteRecord, code_hash: &str) -> Result<(), StoreError>;
    /// The unused, unexpired invite whose code hashes to `code_hash`.
    async fn find_invite(&self, code_hash: &str, now: Millis) -> Result<Option<InviteRecord>, StoreError>;
    async fn list_invites(&self) -> Result<Vec<InviteRecord>, StoreError>;
    /// Makes the unused invites whose id starts with `id_prefix` expire now
    /// (superseded setup codes); returns how many.
    async fn expire_unused_invites(&self, id_prefix: &str, now: Millis) -> Result<u64, StoreError>;

    /// Counts one login attempt against `account` (a username) in fixed windows
    /// of `window_ms`: a window older than that starts over. Windows long over
    /// with nothing left to record are deleted (the table stays bounded).
    async fn count_login_attempt(
        &self,
        account: &str,
        now: Millis,
        window_ms: Millis,
    ) -> Result<LoginWindow, StoreError>;
    /// Forgets the attempts counted against `account` (after a successful login).
    async fn clear_login_attempts(&self, account: &str) -> Result<(), StoreError>;
    /// Counts one failed login of `account` (a username; `None` when the attempt
    /// named no account) and says whether it is the one of its window to record.
    async fn count_login_failure(
        &self,
        account: Option<&str>,
        now: Millis,
        window_ms: Millis,
    ) -> Result<FailureRecord, StoreError>;

    /// Keeps a ceremony's server-side state until `expires_at`.
    async fn put_ceremony(&self, id: &str, kind: &str, state: &str, expires_at: Millis) -> Result<(), StoreError>;
    /// Takes a ceremony out (single use): its state when it exists, is of `kind`
    /// and has not expired. It is gone afterwards whatever the answer.
    async fn take_ceremony(&self, id: &str, kind: &str, now: Millis) -> Result<Option<String>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_checked() {
        for ok in ["alice", "a", "bob.smith", "ops_1", "9lives", "x-y"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "-bob", ".x", "a b", "é", "a/b", &"a".repeat(65)] {
            assert!(check_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn display_names_are_checked() {
        assert!(check_display_name("Alice Smith").is_ok());
        assert!(check_display_name("Zoë 🚀").is_ok());
        for bad in ["", " a", "a ", "a\nb", &"a".repeat(101)] {
            assert!(check_display_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_strongest_role_counts() {
        let mut u = User {
            id: "u".into(),
            username: "u".into(),
            display_name: "U".into(),
            roles: vec![Role::Viewer, Role::Admin, Role::Operator],
            created_at: String::new(),
            disabled_at: None,
        };
        assert_eq!(u.role(), Role::Admin);
        u.roles.clear();
        assert_eq!(u.role(), Role::Viewer);
    }
}

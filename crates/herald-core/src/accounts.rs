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
    /// A setup code (an invite whose id starts with [`SETUP_INVITE_PREFIX`])
    /// used once an admin exists.
    #[error("herald has an admin already: setup codes no longer work; ask an admin for an invite")]
    SetupDone,
}

/// The id prefix of setup-code invites: the first admin's, usable only while
/// no user holds the admin role (see [`AccountStore::insert_user`]).
pub const SETUP_INVITE_PREFIX: &str = "setup-";

/// Why a change to a user's roles or access was refused (see
/// [`AccountStore::set_roles`], [`AccountStore::set_disabled`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessChangeRefused {
    #[error("there is no such user")]
    NoSuchUser,
    /// The user is the only enabled admin, and the change would leave none.
    #[error("the user is the only enabled admin")]
    LastAdmin,
}

/// Whether a user counts for the last-admin rule: an admin who can act (a
/// disabled admin cannot).
pub fn is_enabled_admin(user: &User) -> bool {
    !user.is_disabled() && user.roles.contains(&Role::Admin)
}

/// A change [`decide_access_change`] decides.
#[derive(Debug, Clone, Copy)]
pub enum AccessChange<'a> {
    /// New roles (sorted and deduplicated in the result).
    Roles(&'a [Role]),
    /// Disabled as of this RFC 3339 time (a disabled user keeps the first
    /// one), or enabled (`None`).
    Disabled(Option<&'a str>),
}

/// The rule of [`AccountStore::set_roles`] and [`AccountStore::set_disabled`],
/// the same on every backend, applied to every user as read inside the
/// transaction that writes the result: the user `(before, after)`, or why
/// not. Refused when the user is an enabled admin who would no longer be one
/// and no other enabled admin exists.
pub fn decide_access_change(
    users: &[User],
    user_id: &str,
    change: AccessChange<'_>,
) -> Result<(User, User), AccessChangeRefused> {
    let before = users
        .iter()
        .find(|u| u.id == user_id)
        .ok_or(AccessChangeRefused::NoSuchUser)?;
    let mut after = before.clone();
    match change {
        AccessChange::Roles(roles) => {
            after.roles = roles.to_vec();
            after.roles.sort();
            after.roles.dedup();
        }
        AccessChange::Disabled(Some(at)) => {
            if after.disabled_at.is_none() {
                after.disabled_at = Some(at.to_owned());
            }
        }
        AccessChange::Disabled(None) => after.disabled_at = None,
    }
    if is_enabled_admin(before) && !is_enabled_admin(&after) {
        let others = users.iter().filter(|u| u.id != user_id && is_enabled_admin(u)).count();
        if others == 0 {
            return Err(AccessChangeRefused::LastAdmin);
        }
    }
    Ok((before.clone(), after))
}

#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    async fn count_users(&self) -> Result<u64, StoreError>;
    async fn find_user(&self, id: &str) -> Result<Option<User>, StoreError>;
    async fn find_user_by_name(&self, username: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Stores a user with their first passkey, atomically consuming the invite
    /// whose code hashes to `invite_hash` (without one: refused, every
    /// registration needs an invite). In the same transaction, serialized
    /// with every other registration and with [`Self::set_roles`] /
    /// [`Self::set_disabled`] (also across processes sharing the store): a
    /// setup invite ([`SETUP_INVITE_PREFIX`]) is refused
    /// ([`RegistrationRefused::SetupDone`]) once any user holds the admin
    /// role, and storing a user with the admin role makes every unused setup
    /// invite expire at `now`.
    async fn insert_user(
        &self,
        user: &User,
        passkey: &StoredPasskey,
        invite_hash: Option<&str>,
        now: Millis,
    ) -> Result<Result<(), RegistrationRefused>, StoreError>;
    /// Replaces a user's roles, unless that would leave no enabled admin
    /// ([`decide_access_change`]), deciding and changing in one transaction
    /// serialized with every other such decision (two admins demoting each
    /// other at once leave one admin). Returns the user as they were before.
    async fn set_roles(&self, user_id: &str, roles: &[Role]) -> Result<Result<User, AccessChangeRefused>, StoreError>;
    /// Disables a user as of `at` (RFC 3339), or enables them (`None`), unless
    /// that would leave no enabled admin (as [`Self::set_roles`]). A user
    /// disabled already keeps their first `disabled_at`. Returns the user as
    /// they were before.
    async fn set_disabled(
        &self,
        user_id: &str,
        at: Option<&str>,
    ) -> Result<Result<User, AccessChangeRefused>, StoreError>;

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

    fn person(id: &str, role: Role, disabled: bool) -> User {
        User {
            id: id.into(),
            username: id.into(),
            display_name: id.into(),
            roles: vec![role],
            created_at: String::new(),
            disabled_at: disabled.then(|| "2026-12-01T00:00:00.000Z".into()),
        }
    }

    #[test]
    fn the_last_enabled_admin_is_neither_demoted_nor_disabled() {
        let users = [
            person("a", Role::Admin, false),
            person("b", Role::Admin, true),
            person("c", Role::Viewer, false),
        ];
        for change in [
            AccessChange::Roles(&[Role::Operator]),
            AccessChange::Disabled(Some("t")),
        ] {
            assert_eq!(
                decide_access_change(&users, "a", change).err(),
                Some(AccessChangeRefused::LastAdmin),
                "{change:?}: a disabled admin does not count"
            );
        }
        // Keeping admin among other roles, or enabling, is no loss.
        let (_, after) = decide_access_change(
            &users,
            "a",
            AccessChange::Roles(&[Role::Viewer, Role::Admin, Role::Admin]),
        )
        .expect("still admin");
        assert_eq!(after.roles, vec![Role::Viewer, Role::Admin]);
        let (before, after) = decide_access_change(&users, "b", AccessChange::Disabled(None)).expect("enable");
        assert!(before.is_disabled() && !after.is_disabled());
        // A disabled admin may lose the role; a viewer may be disabled.
        assert!(decide_access_change(&users, "b", AccessChange::Roles(&[Role::Viewer])).is_ok());
        assert!(decide_access_change(&users, "c", AccessChange::Disabled(Some("t"))).is_ok());
        assert_eq!(
            decide_access_change(&users, "nobody", AccessChange::Disabled(None)).err(),
            Some(AccessChangeRefused::NoSuchUser)
        );
        // With a second enabled admin, either may go; disabling twice keeps the first time.
        let two = [person("a", Role::Admin, false), person("d", Role::Admin, false)];
        assert!(decide_access_change(&two, "a", AccessChange::Roles(&[Role::Viewer])).is_ok());
        let (_, after) = decide_access_change(&users, "b", AccessChange::Disabled(Some("later"))).expect("again");
        assert_eq!(after.disabled_at.as_deref(), Some("2026-12-01T00:00:00.000Z"));
    }
}

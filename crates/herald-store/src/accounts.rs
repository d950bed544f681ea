//! Users, passkeys, sessions, invites and passkey ceremonies in the embedded
//! store's database file (see `herald_core::accounts`).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::accounts::{
    AccessChange, AccessChangeRefused, AccountStore, FailureRecord, InviteRecord, LoginWindow, Millis, PasskeyInfo,
    RegistrationRefused, SETUP_INVITE_PREFIX, SessionRecord, StoredPasskey, User, decide_access_change,
};
use herald_core::auth::Role;
use herald_core::store::StoreError;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::sqlite::{EVENTS_FILE, ReaderPool, open_connection};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id           TEXT PRIMARY KEY,
    username     TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    roles        TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    disabled_at  TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS passkeys (
    credential_id TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users (id),
    passkey       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    last_used_at  TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS passkeys_user ON passkeys (user_id);
CREATE TABLE IF NOT EXISTS sessions (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    verified_at  INTEGER NOT NULL,
    user_agent   TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id);
CREATE TABLE IF NOT EXISTS invites (
    id         TEXT PRIMARY KEY,
    code_hash  TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_by    TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS ceremonies (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
-- Login attempts and failures per account, in fixed windows (the per-account
-- login limit, and which failure of a window is recorded in the log). Here
-- rather than in process memory so that several herald processes sharing this
-- database count together. `account` is a username, or '*' for failures that
-- named no account. `unrecorded`: failures since the account's last
-- `LoginFailed` event that no event recorded (the next one carries the count).
CREATE TABLE IF NOT EXISTS login_attempts (
    account      TEXT PRIMARY KEY,
    window_start INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    failures     INTEGER NOT NULL,
    unrecorded   INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS login_attempts_window ON login_attempts (window_start);
"#;

/// The `login_attempts` key of failures that named no account (no username
/// starts with `*`).
const NO_ACCOUNT: &str = "*";

/// Columns added after the first release, added to older files on open.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has = |column: &str| -> Result<bool, StoreError> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('users') WHERE name = ?1)",
            [column],
            |r| r.get(0),
        )
        .map_err(backend)
    };
    if !has("disabled_at")?
        && let Err(e) = conn.execute_batch("ALTER TABLE users ADD COLUMN disabled_at TEXT")
        // Another process may have added it in the meantime.
        && !has("disabled_at")?
    {
        return Err(backend(e));
    }
    Ok(())
}

pub struct SqliteAccounts {
    pool: ReaderPool,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl SqliteAccounts {
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let path = dir.join(EVENTS_FILE);
        let conn = open_connection(&path, false)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        migrate(&conn)?;
        Ok(Arc::new(SqliteAccounts {
            pool: ReaderPool::new(path, 4, false),
        }))
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.pool.run(f).await
    }
}

const USER_COLUMNS: &str = "id, username, display_name, roles, created_at, disabled_at";

type UserRow = (String, String, String, String, String, Option<String>);

fn row_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_user((id, username, display_name, roles, created_at, disabled_at): UserRow) -> Result<User, StoreError> {
    let roles: Vec<Role> = serde_json::from_str(&roles).map_err(|e| corrupt(&format!("user {id} roles"), e))?;
    Ok(User {
        id,
        username,
        display_name,
        roles,
        created_at,
        disabled_at,
    })
}

fn user_where(conn: &Connection, clause: &str, key: &str) -> Result<Option<User>, StoreError> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE {clause}"))
        .map_err(backend)?
        .query_row([key], row_user)
        .optional()
        .map_err(backend)?
        .map(to_user)
        .transpose()
}

/// Every user, oldest first.
fn all_users(conn: &Connection) -> Result<Vec<User>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"))
        .map_err(backend)?;
    let rows = stmt
        .query_map([], row_user)
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    rows.into_iter().map(to_user).collect()
}

/// [`decide_access_change`] on the users as stored, and the result written,
/// in one `BEGIN IMMEDIATE` transaction: SQLite has one writer at a time per
/// file, so every such decision (and every registration) of every process
/// sharing herald.db takes its turn, and each reads what the one before wrote.
fn change_access(
    conn: &Connection,
    user_id: &str,
    change: AccessChange<'_>,
) -> Result<Result<User, AccessChangeRefused>, StoreError> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(backend)?;
    let (before, after) = match decide_access_change(&all_users(&tx)?, user_id, change) {
        Ok(found) => found,
        Err(refused) => return Ok(Err(refused)),
    };
    if after != before {
        tx.execute(
            "UPDATE users SET roles = ?2, disabled_at = ?3 WHERE id = ?1",
            params![user_id, roles_json(&after.roles)?, after.disabled_at],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
    }
    Ok(Ok(before))
}

const PASSKEY_COLUMNS: &str = "credential_id, user_id, passkey, created_at";

fn row_passkey(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPasskey> {
    Ok(StoredPasskey {
        credential_id: r.get(0)?,
        user_id: r.get(1)?,
        passkey: r.get(2)?,
        created_at: r.get(3)?,
    })
}

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at, verified_at, user_agent";

fn row_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: r.get(0)?,
        user_id: r.get(1)?,
        created_at: r.get(2)?,
        last_seen_at: r.get(3)?,
        expires_at: r.get(4)?,
        verified_at: r.get(5)?,
        user_agent: r.get(6)?,
    })
}

const INVITE_COLUMNS: &str = "id, role, created_at, created_by, expires_at, used_by";

type InviteRow = (String, String, String, String, Millis, Option<String>);

fn row_invite(r: &rusqlite::Row<'_>) -> rusqlite::Result<InviteRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn to_invite((id, role, created_at, created_by, expires_at, used_by): InviteRow) -> Result<InviteRecord, StoreError> {
    Ok(InviteRecord {
        role: Role::parse(&role).ok_or_else(|| corrupt(&format!("invite {id}"), format!("unknown role {role:?}")))?,
        created_by: serde_json::from_str(&created_by).map_err(|e| corrupt(&format!("invite {id} created_by"), e))?,
        id,
        created_at,
        expires_at,
        used_by,
    })
}

fn roles_json(roles: &[Role]) -> Result<String, StoreError> {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    serde_json::to_string(&roles).map_err(backend)
}

/// Makes the unused invites whose id starts with `?1` expire at `?2`.
const EXPIRE_UNUSED_INVITES: &str = "UPDATE invites SET expires_at = ?2 \
     WHERE substr(id, 1, length(?1)) = ?1 AND used_by IS NULL AND expires_at > ?2";

#[async_trait]
impl AccountStore for SqliteAccounts {
    async fn count_users(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(backend)
        })
        .await
    }

    async fn find_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| user_where(conn, "id = ?1", &id)).await
    }

    async fn find_user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let username = username.to_owned();
        self.with(move |conn| user_where(conn, "username = ?1", &username))
            .await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.with(all_users).await
    }

    async fn insert_user(
        &self,
        user: &User,
        passkey: &StoredPasskey,
        invite_hash: Option<&str>,
        now: Millis,
    ) -> Result<Result<(), RegistrationRefused>, StoreError> {
        let (user, passkey, invite_hash) = (user.clone(), passkey.clone(), invite_hash.map(str::to_owned));
        self.with(move |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(backend)?;
            let taken: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM users WHERE username = ?1)",
                    [&user.username],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if taken {
                return Ok(Err(RegistrationRefused::UsernameTaken(user.username)));
            }
            let Some(hash) = &invite_hash else {
                return Ok(Err(RegistrationRefused::InviteRequired));
            };
            let invite: Option<String> = tx
                .query_row(
                    "UPDATE invites SET used_by = ?2 WHERE code_hash = ?1 AND used_by IS NULL AND expires_at > ?3 \
                     RETURNING id",
                    params![hash, user.id, now],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let Some(invite) = invite else {
                return Ok(Err(RegistrationRefused::InviteUnusable));
            };
            // Dropped without a commit, the transaction rolls back (the invite stays unused).
            let setup = invite.starts_with(SETUP_INVITE_PREFIX);
            if setup && all_users(&tx)?.iter().any(|u| u.roles.contains(&Role::Admin)) {
                return Ok(Err(RegistrationRefused::SetupDone));
            }
            tx.execute(
                "INSERT INTO users (id, username, display_name, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    user.id,
                    user.username,
                    user.display_name,
                    roles_json(&user.roles)?,
                    user.created_at
                ],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO passkeys (credential_id, user_id, passkey, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    passkey.credential_id,
                    passkey.user_id,
                    passkey.passkey,
                    passkey.created_at
                ],
            )
            .map_err(backend)?;
            if user.roles.contains(&Role::Admin) {
                // herald has an admin now: the setup codes still open are void.
                tx.execute(EXPIRE_UNUSED_INVITES, params![SETUP_INVITE_PREFIX, now])
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(Ok(()))
        })
        .await
    }

    async fn set_roles(&self, user_id: &str, roles: &[Role]) -> Result<Result<User, AccessChangeRefused>, StoreError> {
        let (user_id, roles) = (user_id.to_owned(), roles.to_vec());
        self.with(move |conn| change_access(conn, &user_id, AccessChange::Roles(&roles)))
            .await
    }

    async fn set_disabled(
        &self,
        user_id: &str,
        at: Option<&str>,
    ) -> Result<Result<User, AccessChangeRefused>, StoreError> {
        let (user_id, at) = (user_id.to_owned(), at.map(str::to_owned));
        self.with(move |conn| change_access(conn, &user_id, AccessChange::Disabled(at.as_deref())))
            .await
    }

    async fn passkeys_of(&self, user_id: &str) -> Result<Vec<StoredPasskey>, StoreError> {
        let user_id = user_id.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = ?1 ORDER BY created_at"
            ))
            .map_err(backend)?
            .query_map([user_id], row_passkey)
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn find_passkey(&self, credential_id: &str) -> Result<Option<StoredPasskey>, StoreError> {
        let credential_id = credential_id.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = ?1"
            ))
            .map_err(backend)?
            .query_row([credential_id], row_passkey)
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn update_passkey(&self, credential_id: &str, passkey: &str, used_at: &str) -> Result<(), StoreError> {
        let (credential_id, passkey, used_at) = (credential_id.to_owned(), passkey.to_owned(), used_at.to_owned());
        self.with(move |conn| {
            conn.execute(
                "UPDATE passkeys SET passkey = ?2, last_used_at = ?3 WHERE credential_id = ?1",
                params![credential_id, passkey, used_at],
            )
            .map(drop)
            .map_err(backend)
        })
        .await
    }

    async fn list_passkeys(&self) -> Result<Vec<PasskeyInfo>, StoreError> {
        self.with(|conn| {
            conn.prepare_cached(
                "SELECT credential_id, user_id, created_at, last_used_at FROM passkeys ORDER BY created_at, credential_id",
            )
            .map_err(backend)?
            .query_map([], |r| {
                Ok(PasskeyInfo {
                    credential_id: r.get(0)?,
                    user_id: r.get(1)?,
                    created_at: r.get(2)?,
                    last_used_at: r.get(3)?,
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn remove_passkey(&self, user_id: &str, credential_id: &str) -> Result<bool, StoreError> {
        let (user_id, credential_id) = (user_id.to_owned(), credential_id.to_owned());
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM passkeys WHERE credential_id = ?1 AND user_id = ?2",
                params![credential_id, user_id],
            )
            .map(|n| n == 1)
            .map_err(backend)
        })
        .await
    }

    async fn insert_session(&self, s: &SessionRecord, secret_hash: &str) -> Result<(), StoreError> {
        let (s, secret_hash) = (s.clone(), secret_hash.to_owned());
        self.with(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS}, secret_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    s.id,
                    s.user_id,
                    s.created_at,
                    s.last_seen_at,
                    s.expires_at,
                    s.verified_at,
                    s.user_agent,
                    secret_hash
                ],
            )
            .map(drop)
            .map_err(backend)
        })
        .await
    }

    async fn find_session(&self, secret_hash: &str, now: Millis) -> Result<Option<SessionRecord>, StoreError> {
        let secret_hash = secret_hash.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = ?1 AND expires_at > ?2"
            ))
            .map_err(backend)?
            .query_row(params![secret_hash, now], row_session)
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn touch_session(&self, id: &str, now: Millis, verified: bool) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let sql = if verified {
                "UPDATE sessions SET last_seen_at = ?2, verified_at = ?2 WHERE id = ?1"
            } else {
                "UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1"
            };
            conn.execute(sql, params![id, now]).map(drop).map_err(backend)
        })
        .await
    }

    async fn try_touch_session(&self, id: &str, now: Millis, wait: std::time::Duration) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let usual: i64 = conn
                .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
                .map_err(backend)?;
            conn.busy_timeout(wait).map_err(backend)?;
            let touched = conn
                .execute("UPDATE sessions SET last_seen_at = ?2 WHERE id = ?1", params![id, now])
                .map(drop)
                .map_err(backend);
            // The pooled connection goes back with its usual patience.
            let usual = std::time::Duration::from_millis(u64::try_from(usual).unwrap_or(0));
            conn.busy_timeout(usual).map_err(backend)?;
            touched
        })
        .await
    }

    async fn delete_sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let user_id = user_id.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "DELETE FROM sessions WHERE user_id = ?1 RETURNING {SESSION_COLUMNS}"
            ))
            .map_err(backend)?
            .query_map([user_id], row_session)
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "DELETE FROM sessions WHERE id = ?1 RETURNING {SESSION_COLUMNS}"
            ))
            .map_err(backend)?
            .query_row([id], row_session)
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_sessions(&self, user_id: Option<&str>, now: Millis) -> Result<Vec<SessionRecord>, StoreError> {
        let user_id = user_id.map(str::to_owned);
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > ?1 AND (?2 IS NULL OR user_id = ?2) \
                 ORDER BY created_at DESC, id"
            ))
            .map_err(backend)?
            .query_map(params![now, user_id], row_session)
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn purge_sessions(&self, now: Millis, idle_before: Millis) -> Result<Vec<SessionRecord>, StoreError> {
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "DELETE FROM sessions WHERE expires_at <= ?1 OR last_seen_at < ?2 RETURNING {SESSION_COLUMNS}"
            ))
            .map_err(backend)?
            .query_map(params![now, idle_before], row_session)
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)
        })
        .await
    }

    async fn insert_invite(&self, invite: &InviteRecord, code_hash: &str) -> Result<(), StoreError> {
        let (i, code_hash) = (invite.clone(), code_hash.to_owned());
        self.with(move |conn| {
            let created_by = serde_json::to_string(&i.created_by).map_err(backend)?;
            conn.execute(
                "INSERT INTO invites (id, code_hash, role, created_at, created_by, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![i.id, code_hash, i.role.as_str(), i.created_at, created_by, i.expires_at],
            )
            .map(drop)
            .map_err(backend)
        })
        .await
    }

    async fn find_invite(&self, code_hash: &str, now: Millis) -> Result<Option<InviteRecord>, StoreError> {
        let code_hash = code_hash.to_owned();
        self.with(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {INVITE_COLUMNS} FROM invites WHERE code_hash = ?1 AND used_by IS NULL AND expires_at > ?2"
            ))
            .map_err(backend)?
            .query_row(params![code_hash, now], row_invite)
            .optional()
            .map_err(backend)?
            .map(to_invite)
            .transpose()
        })
        .await
    }

    async fn list_invites(&self) -> Result<Vec<InviteRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, id"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map([], row_invite)
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter().map(to_invite).collect()
        })
        .await
    }

    async fn expire_unused_invites(&self, id_prefix: &str, now: Millis) -> Result<u64, StoreError> {
        let id_prefix = id_prefix.to_owned();
        self.with(move |conn| {
            conn.execute(EXPIRE_UNUSED_INVITES, params![id_prefix, now])
                .map(|n| n as u64)
                .map_err(backend)
        })
        .await
    }

    async fn count_login_attempt(
        &self,
        account: &str,
        now: Millis,
        window_ms: Millis,
    ) -> Result<LoginWindow, StoreError> {
        let account = account.to_owned();
        self.with(move |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(backend)?;
            let over = now.saturating_sub(window_ms);
            tx.prepare_cached("DELETE FROM login_attempts WHERE window_start <= ?1 AND unrecorded = 0")
                .map_err(backend)?
                .execute([over])
                .map_err(backend)?;
            // In SET, column names are the row's values before the update.
            let (started_at, attempts): (Millis, i64) = tx
                .prepare_cached(
                    "INSERT INTO login_attempts (account, window_start, attempts, failures, unrecorded)                      VALUES (?1, ?2, 1, 0, 0)                      ON CONFLICT (account) DO UPDATE SET                        attempts = CASE WHEN window_start <= ?3 THEN 1 ELSE attempts + 1 END,                        failures = CASE WHEN window_start <= ?3 THEN 0 ELSE failures END,                        window_start = CASE WHEN window_start <= ?3 THEN ?2 ELSE window_start END                      RETURNING window_start, attempts",
                )
                .map_err(backend)?
                .query_row(params![account, now, over], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(LoginWindow {
                started_at,
                attempts: u64::try_from(attempts).unwrap_or(0),
            })
        })
        .await
    }

    async fn clear_login_attempts(&self, account: &str) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.with(move |conn| {
            conn.prepare_cached("UPDATE login_attempts SET attempts = 0 WHERE account = ?1")
                .map_err(backend)?
                .execute([account])
                .map(drop)
                .map_err(backend)
        })
        .await
    }

    async fn count_login_failure(
        &self,
        account: Option<&str>,
        now: Millis,
        window_ms: Millis,
    ) -> Result<FailureRecord, StoreError> {
        let account = account.unwrap_or(NO_ACCOUNT).to_owned();
        self.with(move |conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate).map_err(backend)?;
            let row: Option<(Millis, i64, i64, i64)> = tx
                .prepare_cached(
                    "SELECT window_start, attempts, failures, unrecorded FROM login_attempts WHERE account = ?1",
                )
                .map_err(backend)?
                .query_row([&account], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .optional()
                .map_err(backend)?;
            let (outcome, (window_start, attempts, failures, unrecorded)) =
                herald_core::accounts::count_failure(row, now, window_ms);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO login_attempts (account, window_start, attempts, failures, unrecorded)                  VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(backend)?
            .execute(params![account, window_start, attempts, failures, unrecorded])
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(outcome)
        })
        .await
    }

    async fn put_ceremony(&self, id: &str, kind: &str, state: &str, expires_at: Millis) -> Result<(), StoreError> {
        let (id, kind, state) = (id.to_owned(), kind.to_owned(), state.to_owned());
        self.with(move |conn| {
            // Expired ceremonies are cleared as new ones arrive (bounded table).
            conn.execute(
                "DELETE FROM ceremonies WHERE expires_at <= ?1",
                params![expires_at - 10 * 60 * 1000],
            )
            .map_err(backend)?;
            conn.execute(
                "INSERT INTO ceremonies (id, kind, state, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, kind, state, expires_at],
            )
            .map(drop)
            .map_err(backend)
        })
        .await
    }

    async fn take_ceremony(&self, id: &str, kind: &str, now: Millis) -> Result<Option<String>, StoreError> {
        let (id, kind) = (id.to_owned(), kind.to_owned());
        self.with(move |conn| {
            let row: Option<(String, String, Millis)> = conn
                .prepare_cached("DELETE FROM ceremonies WHERE id = ?1 RETURNING kind, state, expires_at")
                .map_err(backend)?
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(backend)?;
            Ok(row.and_then(|(k, state, expires_at)| (k == kind && expires_at > now).then_some(state)))
        })
        .await
    }
}

//! Users, passkeys, sessions, invites, passkey ceremonies, login attempt
//! windows and API tokens on PostgreSQL (`herald_core::accounts` and
//! `herald_core::auth`), with the embedded store's semantics: the invite is
//! consumed in the registration's transaction, usernames are unique, the
//! login attempt table stays bounded, a best-effort touch gives up after its
//! wait (`lock_timeout` and `statement_timeout`, transaction-local).
//!
//! Several herald processes may share the database: every rule that needs
//! atomicity is one statement or one transaction with row locks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use herald_core::accounts::{
    AccessChange, AccessChangeRefused, AccountStore, FailureRecord, InviteRecord, LoginWindow, Millis, PasskeyInfo,
    RegistrationRefused, SETUP_INVITE_PREFIX, SessionRecord, StoredPasskey, User, decide_access_change,
};
use herald_core::auth::{CredentialStore, Role, TokenRecord};
use herald_core::envelope::Actor;
use herald_core::store::StoreError;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::store::{Database, pg, pool_error};

/// The `login_attempts` key of failures that named no account (no username
/// starts with `*`).
const NO_ACCOUNT: &str = "*";

/// The advisory lock every decision about who is an admin takes, for its
/// transaction ("herald-admins"): registrations (the setup-code rule, and an
/// admin's registration expiring the setup codes), role changes and
/// disabling (the last-admin rule).
///
/// Why a lock and not `SELECT … FOR UPDATE` on the admins' rows: the
/// first-admin race is about rows that do not exist yet (two registrations
/// with two setup codes each see no admin; row locks lock nothing there, and
/// under READ COMMITTED both would insert an admin), and the last-admin race
/// is about a count over rows two transactions change differently (each
/// demotes the other: locking only the target row lets both see the other
/// still an admin). One transaction-scoped lock serializes exactly these
/// decisions across every instance on the database, is released by the
/// commit or rollback (no lock can outlive a dropped connection's
/// transaction), and, taken before anything is read, lets each decision's
/// statements (READ COMMITTED: a snapshot per statement) see what the one
/// before it committed. These decisions are rare (people, not requests).
const ADMIN_DECISIONS_LOCK: i64 = 0x6865_7261_6c64_6164;

/// Every user, oldest first, as `tx` sees them.
async fn all_users(tx: &tokio_postgres::Transaction<'_>, what: &str) -> Result<Vec<User>, StoreError> {
    let rows = tx
        .query(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"),
            &[],
        )
        .await
        .map_err(|e| pg(what, e))?;
    rows.iter().map(to_user).collect()
}

/// Takes [`ADMIN_DECISIONS_LOCK`] for the rest of `tx`.
async fn lock_admin_decisions(tx: &tokio_postgres::Transaction<'_>, what: &str) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADMIN_DECISIONS_LOCK])
        .await
        .map(drop)
        .map_err(|e| pg(what, e))
}

/// Makes the unused invites whose id starts with `$1` expire at `$2`.
const EXPIRE_UNUSED_INVITES: &str =
    "UPDATE invites SET expires_at = $2 WHERE starts_with(id, $1) AND used_by IS NULL AND expires_at > $2";

/// The default number of pooled connections.
pub const ACCOUNTS_POOL_SIZE: usize = 4;

/// The [`AccountStore`] and [`CredentialStore`] on PostgreSQL.
pub struct PgAccounts {
    pool: Pool,
    /// Where the store is, without credentials (for messages).
    target: String,
}

impl std::fmt::Debug for PgAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAccounts").field("target", &self.target).finish()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A column of a row, or a precise error naming what was read.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize, what: &str) -> Result<T, StoreError> {
    row.try_get(idx).map_err(|e| pg(what, e))
}

/// Whether `e` is a unique violation of `constraint`.
fn violates(e: &tokio_postgres::Error, constraint: &str) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION) && e.as_db_error().and_then(|d| d.constraint()) == Some(constraint)
}

fn one_row(n: u64) -> bool {
    n == 1
}

const USER_COLUMNS: &str = "id, username, display_name, roles, created_at, disabled_at";

fn to_user(row: &Row) -> Result<User, StoreError> {
    const WHAT: &str = "reading a user";
    let id: String = col(row, 0, WHAT)?;
    let roles: &str = col(row, 3, WHAT)?;
    let roles: Vec<Role> = serde_json::from_str(roles).map_err(|e| corrupt(&format!("user {id} roles"), e))?;
    Ok(User {
        username: col(row, 1, WHAT)?,
        display_name: col(row, 2, WHAT)?,
        roles,
        created_at: col(row, 4, WHAT)?,
        disabled_at: col(row, 5, WHAT)?,
        id,
    })
}

const PASSKEY_COLUMNS: &str = "credential_id, user_id, passkey, created_at";

fn to_passkey(row: &Row) -> Result<StoredPasskey, StoreError> {
    const WHAT: &str = "reading a passkey";
    Ok(StoredPasskey {
        credential_id: col(row, 0, WHAT)?,
        user_id: col(row, 1, WHAT)?,
        passkey: col(row, 2, WHAT)?,
        created_at: col(row, 3, WHAT)?,
    })
}

const SESSION_COLUMNS: &str = "id, user_id, created_at, last_seen_at, expires_at, verified_at, user_agent";

fn to_session(row: &Row) -> Result<SessionRecord, StoreError> {
    const WHAT: &str = "reading a session";
    Ok(SessionRecord {
        id: col(row, 0, WHAT)?,
        user_id: col(row, 1, WHAT)?,
        created_at: col(row, 2, WHAT)?,
        last_seen_at: col(row, 3, WHAT)?,
        expires_at: col(row, 4, WHAT)?,
        verified_at: col(row, 5, WHAT)?,
        user_agent: col(row, 6, WHAT)?,
    })
}

const INVITE_COLUMNS: &str = "id, role, created_at, created_by, expires_at, used_by";

fn to_invite(row: &Row) -> Result<InviteRecord, StoreError> {
    const WHAT: &str = "reading an invite";
    let id: String = col(row, 0, WHAT)?;
    let role: &str = col(row, 1, WHAT)?;
    let created_by: &str = col(row, 3, WHAT)?;
    Ok(InviteRecord {
        role: Role::parse(role).ok_or_else(|| corrupt(&format!("invite {id}"), format!("unknown role {role:?}")))?,
        created_by: serde_json::from_str(created_by).map_err(|e| corrupt(&format!("invite {id} created_by"), e))?,
        created_at: col(row, 2, WHAT)?,
        expires_at: col(row, 4, WHAT)?,
        used_by: col(row, 5, WHAT)?,
        id,
    })
}

const TOKEN_COLUMNS: &str = "id, name, role, created_at, created_by, revoked_at";

fn to_token(row: &Row) -> Result<TokenRecord, StoreError> {
    const WHAT: &str = "reading a token";
    let id: String = col(row, 0, WHAT)?;
    let role: &str = col(row, 2, WHAT)?;
    let created_by: &str = col(row, 4, WHAT)?;
    Ok(TokenRecord {
        role: Role::parse(role).ok_or_else(|| StoreError::Corrupt(format!("token {id} has unknown role {role:?}")))?,
        created_by: serde_json::from_str(created_by)
            .map_err(|e| StoreError::Corrupt(format!("token {id} created_by: {e}")))?,
        name: col(row, 1, WHAT)?,
        created_at: col(row, 3, WHAT)?,
        revoked_at: col(row, 5, WHAT)?,
        id,
    })
}

fn roles_json(roles: &[Role]) -> Result<String, StoreError> {
    let mut roles = roles.to_vec();
    roles.sort();
    roles.dedup();
    serde_json::to_string(&roles).map_err(|e| StoreError::Backend(format!("encoding roles: {e}")))
}

fn actor_json(what: &str, actor: &Actor) -> Result<String, StoreError> {
    serde_json::to_string(actor).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

/// A stored counter (never negative).
fn counter(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl PgAccounts {
    /// Connects to `url` (a libpq URL or key=value string) with
    /// [`ACCOUNTS_POOL_SIZE`] connections and applies the migrations the
    /// database lacks (the event log's too: one schema per database).
    pub async fn open(url: &str) -> Result<Arc<PgAccounts>, StoreError> {
        Self::open_config(crate::store::parse_url(url)?, ACCOUNTS_POOL_SIZE).await
    }

    /// [`open`](Self::open) with a parsed configuration and a pool size.
    pub async fn open_config(
        pg_config: tokio_postgres::Config,
        pool_size: usize,
    ) -> Result<Arc<PgAccounts>, StoreError> {
        let database = Database::connect(pg_config, pool_size).await?;
        Ok(Self::with_database(&database))
    }

    /// The accounts on `database`'s pool (shared with the event store of a
    /// command that needs both: one pool, one migration run).
    pub fn with_database(database: &Database) -> Arc<PgAccounts> {
        Arc::new(PgAccounts {
            pool: database.pool.clone(),
            target: database.target.clone(),
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn user_where(&self, clause: &str, key: &str) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE {clause}"))
            .await
            .map_err(|e| pg("find_user", e))?;
        let row = client.query_opt(&stmt, &[&key]).await.map_err(|e| pg("find_user", e))?;
        row.as_ref().map(to_user).transpose()
    }

    /// [`decide_access_change`] on the users as stored, and the result
    /// written, in one transaction under [`ADMIN_DECISIONS_LOCK`].
    async fn change_access(
        &self,
        what: &str,
        user_id: &str,
        change: AccessChange<'_>,
    ) -> Result<Result<User, AccessChangeRefused>, StoreError> {
        let mut client = self.client().await?;
        // Dropped without a commit, the transaction rolls back (and the lock goes).
        let tx = client.transaction().await.map_err(|e| pg(what, e))?;
        lock_admin_decisions(&tx, what).await?;
        let (before, after) = match decide_access_change(&all_users(&tx, what).await?, user_id, change) {
            Ok(found) => found,
            Err(refused) => return Ok(Err(refused)),
        };
        if after != before {
            tx.execute(
                "UPDATE users SET roles = $2, disabled_at = $3 WHERE id = $1",
                &[&user_id, &roles_json(&after.roles)?, &after.disabled_at],
            )
            .await
            .map_err(|e| pg(what, e))?;
        }
        tx.commit().await.map_err(|e| pg(what, e))?;
        Ok(Ok(before))
    }

    /// The sessions a `DELETE … RETURNING` of `SESSION_COLUMNS` removed.
    async fn delete_sessions(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| pg(what, e))?;
        let rows = client.query(&stmt, params).await.map_err(|e| pg(what, e))?;
        rows.iter().map(to_session).collect()
    }

    /// One statement's affected row count.
    async fn execute(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| pg(what, e))?;
        client.execute(&stmt, params).await.map_err(|e| pg(what, e))
    }

    /// One statement's rows.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(|e| pg(what, e))?;
        client.query(&stmt, params).await.map_err(|e| pg(what, e))
    }
}

#[async_trait]
impl AccountStore for PgAccounts {
    async fn count_users(&self) -> Result<u64, StoreError> {
        let rows = self.query("count_users", "SELECT count(*) FROM users", &[]).await?;
        let n: i64 = match rows.first() {
            Some(row) => col(row, 0, "count_users")?,
            None => 0,
        };
        Ok(counter(n))
    }

    async fn find_user(&self, id: &str) -> Result<Option<User>, StoreError> {
        self.user_where("id = $1", id).await
    }

    async fn find_user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.user_where("username = $1", username).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id");
        let rows = self.query("list_users", &sql, &[]).await?;
        rows.iter().map(to_user).collect()
    }

    async fn insert_user(
        &self,
        user: &User,
        passkey: &StoredPasskey,
        invite_hash: Option<&str>,
        now: Millis,
    ) -> Result<Result<(), RegistrationRefused>, StoreError> {
        const WHAT: &str = "insert_user";
        let roles = roles_json(&user.roles)?;
        let mut client = self.client().await?;
        // Dropped without a commit, the transaction rolls back.
        let tx = client.transaction().await.map_err(|e| pg(WHAT, e))?;
        lock_admin_decisions(&tx, WHAT).await?;
        let taken = tx
            .query_opt("SELECT 1 FROM users WHERE username = $1", &[&user.username])
            .await
            .map_err(|e| pg(WHAT, e))?;
        if taken.is_some() {
            return Ok(Err(RegistrationRefused::UsernameTaken(user.username.clone())));
        }
        let Some(hash) = invite_hash else {
            return Ok(Err(RegistrationRefused::InviteRequired));
        };
        // Racing registrations wait for this row; the losers find it used.
        let used = tx
            .query_opt(
                "UPDATE invites SET used_by = $2 WHERE code_hash = $1 AND used_by IS NULL AND expires_at > $3 \
                 RETURNING id",
                &[&hash, &user.id, &now],
            )
            .await
            .map_err(|e| pg(WHAT, e))?;
        let Some(invite) = used else {
            return Ok(Err(RegistrationRefused::InviteUnusable));
        };
        let invite: &str = col(&invite, 0, WHAT)?;
        if invite.starts_with(SETUP_INVITE_PREFIX)
            && all_users(&tx, WHAT)
                .await?
                .iter()
                .any(|u| u.roles.contains(&Role::Admin))
        {
            return Ok(Err(RegistrationRefused::SetupDone));
        }
        let inserted = tx
            .execute(
                "INSERT INTO users (id, username, display_name, roles, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&user.id, &user.username, &user.display_name, &roles, &user.created_at],
            )
            .await;
        match inserted {
            Ok(_) => {}
            // A registration of the same name committed since the check.
            Err(e) if violates(&e, "users_username_key") => {
                return Ok(Err(RegistrationRefused::UsernameTaken(user.username.clone())));
            }
            Err(e) => return Err(pg(WHAT, e)),
        }
        tx.execute(
            "INSERT INTO passkeys (credential_id, user_id, passkey, created_at) VALUES ($1, $2, $3, $4)",
            &[
                &passkey.credential_id,
                &passkey.user_id,
                &passkey.passkey,
                &passkey.created_at,
            ],
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
        if user.roles.contains(&Role::Admin) {
            // herald has an admin now: the setup codes still open are void.
            tx.execute(EXPIRE_UNUSED_INVITES, &[&SETUP_INVITE_PREFIX, &now])
                .await
                .map_err(|e| pg(WHAT, e))?;
        }
        tx.commit().await.map_err(|e| pg(WHAT, e))?;
        Ok(Ok(()))
    }

    async fn set_roles(&self, user_id: &str, roles: &[Role]) -> Result<Result<User, AccessChangeRefused>, StoreError> {
        self.change_access("set_roles", user_id, AccessChange::Roles(roles))
            .await
    }

    async fn set_disabled(
        &self,
        user_id: &str,
        at: Option<&str>,
    ) -> Result<Result<User, AccessChangeRefused>, StoreError> {
        self.change_access("set_disabled", user_id, AccessChange::Disabled(at))
            .await
    }

    async fn passkeys_of(&self, user_id: &str) -> Result<Vec<StoredPasskey>, StoreError> {
        let sql =
            format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, credential_id");
        let rows = self.query("passkeys_of", &sql, &[&user_id]).await?;
        rows.iter().map(to_passkey).collect()
    }

    async fn find_passkey(&self, credential_id: &str) -> Result<Option<StoredPasskey>, StoreError> {
        let sql = format!("SELECT {PASSKEY_COLUMNS} FROM passkeys WHERE credential_id = $1");
        let rows = self.query("find_passkey", &sql, &[&credential_id]).await?;
        rows.first().map(to_passkey).transpose()
    }

    async fn update_passkey(&self, credential_id: &str, passkey: &str, used_at: &str) -> Result<(), StoreError> {
        self.execute(
            "update_passkey",
            "UPDATE passkeys SET passkey = $2, last_used_at = $3 WHERE credential_id = $1",
            &[&credential_id, &passkey, &used_at],
        )
        .await
        .map(drop)
    }

    async fn list_passkeys(&self) -> Result<Vec<PasskeyInfo>, StoreError> {
        const WHAT: &str = "list_passkeys";
        let rows = self
            .query(
                WHAT,
                "SELECT credential_id, user_id, created_at, last_used_at FROM passkeys ORDER BY created_at, credential_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(PasskeyInfo {
                    credential_id: col(row, 0, WHAT)?,
                    user_id: col(row, 1, WHAT)?,
                    created_at: col(row, 2, WHAT)?,
                    last_used_at: col(row, 3, WHAT)?,
                })
            })
            .collect()
    }

    async fn remove_passkey(&self, user_id: &str, credential_id: &str) -> Result<bool, StoreError> {
        self.execute(
            "remove_passkey",
            "DELETE FROM passkeys WHERE credential_id = $1 AND user_id = $2",
            &[&credential_id, &user_id],
        )
        .await
        .map(one_row)
    }

    async fn insert_session(&self, s: &SessionRecord, secret_hash: &str) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO sessions ({SESSION_COLUMNS}, secret_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)");
        self.execute(
            "insert_session",
            &sql,
            &[
                &s.id,
                &s.user_id,
                &s.created_at,
                &s.last_seen_at,
                &s.expires_at,
                &s.verified_at,
                &s.user_agent,
                &secret_hash,
            ],
        )
        .await
        .map(drop)
    }

    async fn find_session(&self, secret_hash: &str, now: Millis) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE secret_hash = $1 AND expires_at > $2");
        let rows = self.query("find_session", &sql, &[&secret_hash, &now]).await?;
        rows.first().map(to_session).transpose()
    }

    async fn touch_session(&self, id: &str, now: Millis, verified: bool) -> Result<(), StoreError> {
        let sql = if verified {
            "UPDATE sessions SET last_seen_at = $2, verified_at = $2 WHERE id = $1"
        } else {
            "UPDATE sessions SET last_seen_at = $2 WHERE id = $1"
        };
        self.execute("touch_session", sql, &[&id, &now]).await.map(drop)
    }

    async fn try_touch_session(&self, id: &str, now: Millis, wait: Duration) -> Result<(), StoreError> {
        const WHAT: &str = "try_touch_session";
        let busy = || StoreError::Backend(format!("{WHAT}: the database is busy; gave up after {wait:?}"));
        // A setting of 0 would mean no limit.
        let limit = format!("{}ms", wait.as_millis().max(1));
        let touch = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| pg(WHAT, e))?;
            tx.execute(
                "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $1, true)",
                &[&limit],
            )
            .await
            .map_err(|e| pg(WHAT, e))?;
            let touched = tx
                .execute("UPDATE sessions SET last_seen_at = $2 WHERE id = $1", &[&id, &now])
                .await;
            match touched {
                Ok(_) => tx.commit().await.map_err(|e| pg(WHAT, e)),
                Err(e) if matches!(e.code(), Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::QUERY_CANCELED) => {
                    Err(busy())
                }
                Err(e) => Err(pg(WHAT, e)),
            }
        };
        // Waiting for a pooled connection counts too (twice the wait: the
        // database's own limit answers first when it is the one busy).
        tokio::time::timeout(wait.saturating_mul(2), touch)
            .await
            .map_err(|_| busy())?
    }

    async fn delete_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let sql = format!("DELETE FROM sessions WHERE id = $1 RETURNING {SESSION_COLUMNS}");
        Ok(self
            .delete_sessions("delete_session", &sql, &[&id])
            .await?
            .into_iter()
            .next())
    }

    async fn delete_sessions_of(&self, user_id: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!("DELETE FROM sessions WHERE user_id = $1 RETURNING {SESSION_COLUMNS}");
        self.delete_sessions("delete_sessions_of", &sql, &[&user_id]).await
    }

    async fn list_sessions(&self, user_id: Option<&str>, now: Millis) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE expires_at > $1 AND ($2::text IS NULL OR user_id = $2) \
             ORDER BY created_at DESC, id"
        );
        let rows = self.query("list_sessions", &sql, &[&now, &user_id]).await?;
        rows.iter().map(to_session).collect()
    }

    async fn purge_sessions(&self, now: Millis, idle_before: Millis) -> Result<Vec<SessionRecord>, StoreError> {
        let sql =
            format!("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2 RETURNING {SESSION_COLUMNS}");
        self.delete_sessions("purge_sessions", &sql, &[&now, &idle_before])
            .await
    }

    async fn insert_invite(&self, i: &InviteRecord, code_hash: &str) -> Result<(), StoreError> {
        let created_by = actor_json("invite created_by", &i.created_by)?;
        self.execute(
            "insert_invite",
            "INSERT INTO invites (id, code_hash, role, created_at, created_by, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&i.id, &code_hash, &i.role.as_str(), &i.created_at, &created_by, &i.expires_at],
        )
        .await
        .map(drop)
    }

    async fn find_invite(&self, code_hash: &str, now: Millis) -> Result<Option<InviteRecord>, StoreError> {
        let sql = format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE code_hash = $1 AND used_by IS NULL AND expires_at > $2"
        );
        let rows = self.query("find_invite", &sql, &[&code_hash, &now]).await?;
        rows.first().map(to_invite).transpose()
    }

    async fn list_invites(&self) -> Result<Vec<InviteRecord>, StoreError> {
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites ORDER BY created_at DESC, id");
        let rows = self.query("list_invites", &sql, &[]).await?;
        rows.iter().map(to_invite).collect()
    }

    async fn expire_unused_invites(&self, id_prefix: &str, now: Millis) -> Result<u64, StoreError> {
        self.execute("expire_unused_invites", EXPIRE_UNUSED_INVITES, &[&id_prefix, &now])
            .await
    }

    async fn count_login_attempt(
        &self,
        account: &str,
        now: Millis,
        window_ms: Millis,
    ) -> Result<LoginWindow, StoreError> {
        const WHAT: &str = "count_login_attempt";
        let over = now.saturating_sub(window_ms);
        // Housekeeping first, on its own: windows long over with nothing left
        // to record (rows another transaction holds are left for next time).
        self.execute(
            WHAT,
            "DELETE FROM login_attempts WHERE account IN (SELECT account FROM login_attempts \
             WHERE window_start <= $1 AND unrecorded = 0 FOR UPDATE SKIP LOCKED)",
            &[&over],
        )
        .await?;
        // One statement: racing attempts each count once. In SET, column
        // names are the row's values before the update.
        let rows = self
            .query(
                WHAT,
                "INSERT INTO login_attempts AS a (account, window_start, attempts, failures, unrecorded) \
                 VALUES ($1, $2, 1, 0, 0) \
                 ON CONFLICT (account) DO UPDATE SET \
                   attempts = CASE WHEN a.window_start <= $3 THEN 1 ELSE a.attempts + 1 END, \
                   failures = CASE WHEN a.window_start <= $3 THEN 0 ELSE a.failures END, \
                   window_start = CASE WHEN a.window_start <= $3 THEN $2 ELSE a.window_start END \
                 RETURNING window_start, attempts",
                &[&account, &now, &over],
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Backend(format!("{WHAT}: the upsert returned no row")))?;
        Ok(LoginWindow {
            started_at: col(row, 0, WHAT)?,
            attempts: counter(col(row, 1, WHAT)?),
        })
    }

    async fn clear_login_attempts(&self, account: &str) -> Result<(), StoreError> {
        self.execute(
            "clear_login_attempts",
            "UPDATE login_attempts SET attempts = 0 WHERE account = $1",
            &[&account],
        )
        .await
        .map(drop)
    }

    async fn count_login_failure(
        &self,
        account: Option<&str>,
        now: Millis,
        window_ms: Millis,
    ) -> Result<FailureRecord, StoreError> {
        const WHAT: &str = "count_login_failure";
        let account = account.unwrap_or(NO_ACCOUNT);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| pg(WHAT, e))?;
        // The row exists and is locked by this transaction from here on, so
        // racing failures of one account are counted one after the other.
        tx.execute(
            "INSERT INTO login_attempts (account, window_start, attempts, failures, unrecorded) \
             VALUES ($1, $2, 0, 0, 0) ON CONFLICT (account) DO NOTHING",
            &[&account, &now],
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
        let row = tx
            .query_opt(
                "SELECT window_start, attempts, failures, unrecorded FROM login_attempts WHERE account = $1 FOR UPDATE",
                &[&account],
            )
            .await
            .map_err(|e| pg(WHAT, e))?;
        let row: Option<(Millis, i64, i64, i64)> = match row {
            Some(r) => Some((
                col(&r, 0, WHAT)?,
                col(&r, 1, WHAT)?,
                col(&r, 2, WHAT)?,
                col(&r, 3, WHAT)?,
            )),
            None => None,
        };
        let (outcome, (window_start, attempts, failures, unrecorded)) =
            herald_core::accounts::count_failure(row, now, window_ms);
        tx.execute(
            "INSERT INTO login_attempts (account, window_start, attempts, failures, unrecorded) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account) DO UPDATE SET \
               window_start = EXCLUDED.window_start, attempts = EXCLUDED.attempts, \
               failures = EXCLUDED.failures, unrecorded = EXCLUDED.unrecorded",
            &[&account, &window_start, &attempts, &failures, &unrecorded],
        )
        .await
        .map_err(|e| pg(WHAT, e))?;
        tx.commit().await.map_err(|e| pg(WHAT, e))?;
        Ok(outcome)
    }

    async fn put_ceremony(&self, id: &str, kind: &str, state: &str, expires_at: Millis) -> Result<(), StoreError> {
        // Expired ceremonies are cleared as new ones arrive (bounded table).
        let cutoff = expires_at.saturating_sub(10 * 60 * 1000);
        self.execute(
            "put_ceremony",
            "DELETE FROM ceremonies WHERE expires_at <= $1",
            &[&cutoff],
        )
        .await?;
        self.execute(
            "put_ceremony",
            "INSERT INTO ceremonies (id, kind, state, expires_at) VALUES ($1, $2, $3, $4)",
            &[&id, &kind, &state, &expires_at],
        )
        .await
        .map(drop)
    }

    async fn take_ceremony(&self, id: &str, kind: &str, now: Millis) -> Result<Option<String>, StoreError> {
        const WHAT: &str = "take_ceremony";
        let rows = self
            .query(
                WHAT,
                "DELETE FROM ceremonies WHERE id = $1 RETURNING kind, state, expires_at",
                &[&id],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let (k, state, expires_at): (&str, String, Millis) =
            (col(row, 0, WHAT)?, col(row, 1, WHAT)?, col(row, 2, WHAT)?);
        Ok((k == kind && expires_at > now).then_some(state))
    }
}

#[async_trait]
impl CredentialStore for PgAccounts {
    async fn insert_token(&self, record: &TokenRecord, secret_hash: &str) -> Result<(), StoreError> {
        let created_by = actor_json("token created_by", &record.created_by)?;
        self.execute(
            "insert_token",
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &record.id,
                &record.name,
                &record.role.as_str(),
                &secret_hash,
                &record.created_at,
                &created_by,
            ],
        )
        .await
        .map(drop)
    }

    async fn find_token(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL");
        let rows = self.query("find_token", &sql, &[&secret_hash]).await?;
        rows.first().map(to_token).transpose()
    }

    async fn revoke_token(&self, id: &str, at: &str) -> Result<bool, StoreError> {
        self.execute(
            "revoke_token",
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&id, &at],
        )
        .await
        .map(one_row)
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        let rows = self.query("list_tokens", &sql, &[]).await?;
        rows.iter().map(to_token).collect()
    }
}

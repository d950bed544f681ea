//! Roles and API tokens. Secrets never enter the event log: the log records that
//! a token was created or revoked (and by whom); the credential store keeps the
//! SHA-256 of the secret, which is what a presented token is checked against.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::Actor;
use crate::store::StoreError;

/// `viewer` < `operator` < `admin`: each role can do everything the ones below can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub created_by: Actor,
    pub revoked_at: Option<String>,
}

#[async_trait]
pub trait CredentialStore: Send + Sync + 'static {
    /// Stores a new token by the hash of its secret.
    async fn insert_token(&self, record: &TokenRecord, secret_hash: &str) -> Result<(), StoreError>;
    /// The live (not revoked) token whose secret hashes to `secret_hash`.
    async fn find_token(&self, secret_hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Marks a token revoked; false when there is no such live token.
    async fn revoke_token(&self, id: &str, at: &str) -> Result<bool, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
}

//! Secrets at rest: every token, session id and invite code is stored as its
//! SHA-256; and the cache of live tokens recently looked up. A leaf: it
//! knows nothing of requests or the application state.

use herald_core::auth::TokenRecord;
use sha2::{Digest, Sha256};

/// The hex SHA-256 a secret is stored and looked up as.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Live tokens recently looked up, by secret hash: agents send a request per
/// command, and a store round trip for each would cost more than the command.
/// Revocation through this process removes the entry at once; the TTL bounds
/// how long a revocation made elsewhere could go unseen. Unknown tokens are not
/// cached (a token created by `herald token create` works at once).
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (TokenRecord, std::time::Instant)>>,
    /// Bumped by every revocation: a lookup that began before one does not
    /// cache what it read (it may be the revoked token).
    revocations: std::sync::atomic::AtomicU64,
}

const TOKEN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);
const TOKEN_CACHE_MAX: usize = 10_000;

impl TokenCache {
    pub(crate) fn get(&self, hash: &str) -> Option<TokenRecord> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL)
            .map(|(record, _)| record.clone())
    }

    pub(crate) fn generation(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn put(&self, hash: &str, record: &TokenRecord, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= TOKEN_CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash.to_owned(), (record.clone(), std::time::Instant::now()));
    }

    /// Forgets a token (revoked).
    pub fn forget(&self, token_id: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.revocations.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.retain(|_, (record, _)| record.id != token_id);
    }
}

//! The account conformance suite on SQLite, one temporary directory per test
//! (accounts and tokens in one database file, as the server opens them).

use std::sync::Arc;

use herald_conformance::AccountsTempDirHarness;
use herald_core::accounts::AccountStore;
use herald_core::auth::CredentialStore;
use herald_store::accounts::SqliteAccounts;
use herald_store::credentials::SqliteCredentials;

herald_conformance::account_conformance_tests!(AccountsTempDirHarness::new(|dir| {
    let accounts: Arc<dyn AccountStore> = SqliteAccounts::open(dir)?;
    let tokens: Arc<dyn CredentialStore> = SqliteCredentials::open(dir)?;
    Ok((accounts, tokens))
}));

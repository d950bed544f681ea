//! A fresh database per test, for this crate's tests and any later crate's
//! tests on PostgreSQL. Needs only a reachable server: the admin URL is
//! `HERALD_TEST_DATABASE_URL`, by default [`DEFAULT_ADMIN_URL`].
//!
//! Without a server: under `CI=true` [`TestDatabase::create`] panics with the
//! reason (CI never skips); otherwise it prints a "skipped" line and returns
//! `None`, and the test returns early.

use std::time::Duration;

use tokio_postgres::NoTls;

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test, dropped (`WITH (FORCE)`) when this is dropped.
pub struct TestDatabase {
    admin: tokio_postgres::Config,
    name: String,
    url: String,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").field("name", &self.name).finish()
    }
}

/// `url` with its database name replaced by `name` (URL or key=value form).
pub fn with_database(url: &str, name: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (base, query) = match url.find('?') {
            Some(q) => (&url[..q], &url[q..]),
            None => (url, ""),
        };
        let authority_start = scheme_end + 3;
        let path_start = base[authority_start..]
            .find('/')
            .map_or(base.len(), |i| authority_start + i);
        format!("{}/{name}{query}", &base[..path_start])
    } else {
        format!("{url} dbname={name}")
    }
}

impl TestDatabase {
    /// Creates `herald_t_<uuid>` on the server of `HERALD_TEST_DATABASE_URL`.
    pub async fn create() -> Option<TestDatabase> {
        let admin_url = std::env::var("HERALD_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        match Self::try_create(&admin_url).await {
            Ok(db) => Some(db),
            Err(why) if ci => panic!("CI=true and no PostgreSQL to test on: {why}"),
            Err(why) => {
                println!("skipped: no PostgreSQL at {why}");
                None
            }
        }
    }

    async fn try_create(admin_url: &str) -> Result<TestDatabase, String> {
        let admin: tokio_postgres::Config = admin_url
            .parse()
            .map_err(|e| format!("(HERALD_TEST_DATABASE_URL does not parse: {e})"))?;
        let where_ = crate::store::describe_config(&admin);
        let connect = tokio::time::timeout(Duration::from_secs(10), admin.connect(NoTls));
        let (client, connection) = match connect.await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(format!("{where_}: {}", crate::store::with_causes(&e))),
            Err(_) => return Err(format!("{where_}: no answer within 10 s")),
        };
        let driver = tokio::spawn(connection);
        let name = format!("herald_t_{}", uuid::Uuid::new_v4().simple());
        let created = client.batch_execute(&format!("CREATE DATABASE {name}")).await;
        drop(client);
        let _ = driver.await;
        created.map_err(|e| format!("{where_}: CREATE DATABASE failed: {}", crate::store::with_causes(&e)))?;
        Ok(TestDatabase {
            url: with_database(admin_url, &name),
            admin,
            name,
        })
    }

    /// The connection string of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime: a thread of its own may block.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = admin.connect(NoTls).await.ok()?;
                let driver = tokio::spawn(connection);
                let result = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await;
                drop(client);
                let _ = driver.await;
                result.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("note: test database {} was not dropped", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5432", "t1"), "postgres://h:5432/t1");
        assert_eq!(with_database("host=h user=u", "t1"), "host=h user=u dbname=t1");
    }
}

//! The real `herald` binary with `--database-url` (API.md §8): `token create`,
//! `invite create`, `export` and `verify` work on PostgreSQL through the same
//! code as on the embedded store, and so do `serve` and `projections
//! rebuild` (the read models in the database too); `bench` refuses it. Each test has a fresh database ([`TestDatabase`]); without a
//! PostgreSQL server a test prints "skipped" and passes, unless `CI=true`.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use herald_core::accounts::AccountStore as _;
use herald_core::auth::{CredentialStore as _, Role};
use herald_core::envelope::Actor;
use herald_core::store::{AppendRequest, EventStore, ExpectedVersion, Filter, NewEvent};
use herald_postgres::testing::TestDatabase;
use herald_postgres::{PgAccounts, PgConfig, PgStore};

const HERALD_ENV: [&str; 5] = [
    "HERALD_DATA",
    "HERALD_DATABASE_URL",
    "HERALD_PUBLIC_ORIGIN",
    "HERALD_NAME",
    "HERALD_ROLE",
];

/// A password no message may contain.
const PASSWORD: &str = "pw-Do-Not-Print-7f3a";

/// Runs `herald` with `args` to completion (no `--data`: the embedded store
/// must not be touched, so it points at a directory that does not exist).
fn herald(env_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in HERALD_ENV {
        cmd.env_remove(var);
    }
    if let Some(url) = env_url {
        cmd.env("HERALD_DATABASE_URL", url);
    }
    cmd.env("RUST_LOG", "debug")
        .arg("--data")
        .arg("/nonexistent/herald-cli-postgres-test")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run herald")
}

fn with_url(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["--database-url", url];
    all.extend_from_slice(args);
    herald(None, &all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

fn last_line(out: &Output) -> String {
    stdout(out).lines().last().unwrap_or_default().to_owned()
}

/// The test database's URL with a password for its user (trust auth ignores
/// it), when the URL has the `scheme://user@` form.
fn with_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (user, after) = rest.split_once('@')?;
    (!user.contains(':') && !user.contains('/')).then(|| format!("{scheme}://{user}:{PASSWORD}@{after}"))
}

fn note(stream: &str, i: usize) -> AppendRequest {
    AppendRequest {
        stream: stream.to_owned(),
        expected: ExpectedVersion::Any,
        events: vec![NewEvent {
            event_type: "Noted".into(),
            schema: 1,
            data: serde_json::json!({ "text": format!("note {i}") }),
        }],
        actor: Actor::system("test"),
        command_id: format!("cmd-{stream}-{i}"),
        correlation_id: "c".into(),
        idempotency_fingerprint: None,
    }
}

async fn open_store(db: &TestDatabase) -> Arc<PgStore> {
    PgStore::open(db.url(), Arc::new(herald_server::sse::Sse), PgConfig::default())
        .await
        .expect("open the PostgreSQL store")
}

async fn admin_client(db: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_stores_the_token_in_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let out = with_url(db.url(), &["token", "create", "--name", "ci-bot", "--role", "operator"]);
    assert_ok(&out, "token create");
    let secret = last_line(&out);
    assert!(secret.starts_with("hrld_"), "{}", stdout(&out));
    assert!(stderr(&out).contains("created token"), "{}", stderr(&out));

    let accounts = PgAccounts::open(db.url()).await.expect("open accounts");
    let tokens = accounts.list_tokens().await.expect("list tokens");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].name, "ci-bot");
    assert_eq!(tokens[0].role, Role::Operator);
    assert!(stderr(&out).contains(&tokens[0].id), "{}", stderr(&out));

    // The same audit event as on the embedded store, in the log.
    let store = open_store(&db).await;
    let page = store.read_all(0, &Filter::default(), 10).await.expect("read");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].event_type(), "TokenCreated");

    // A second one, through the environment variable.
    let out = herald(
        Some(db.url()),
        &["token", "create", "--name", "second", "--role", "viewer"],
    );
    assert_ok(&out, "token create (HERALD_DATABASE_URL)");
    assert_eq!(accounts.list_tokens().await.expect("list tokens").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_create_prints_the_code() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let out = with_url(
        db.url(),
        &[
            "invite",
            "create",
            "--role",
            "admin",
            "--public-origin",
            "https://herald.example/",
        ],
    );
    assert_ok(&out, "invite create");
    let code = last_line(&out);
    assert!(code.starts_with("hinv_"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("register at https://herald.example/register?invite={code}")),
        "{}",
        stdout(&out)
    );
    let accounts = PgAccounts::open(db.url()).await.expect("open accounts");
    let invites = accounts.list_invites().await.expect("list invites");
    assert_eq!(invites.len(), 1, "{invites:?}");
    assert_eq!(invites[0].role, Role::Admin);
    assert!(invites[0].used_by.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_prints_every_envelope_in_order() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open_store(&db).await;
    for i in 0..7 {
        store
            .append(note(if i % 2 == 0 { "post-a" } else { "post-b" }, i))
            .await
            .expect("append");
    }
    let page = store.read_all(0, &Filter::default(), 100).await.expect("read");
    let expected: String = page
        .events
        .iter()
        .map(|e| format!("{}\n", String::from_utf8_lossy(e.json())))
        .collect();
    assert_eq!(page.events.len(), 7);

    let out = with_url(db.url(), &["export"]);
    assert_ok(&out, "export");
    assert_eq!(stdout(&out), expected);
    assert!(stderr(&out).contains("exported 7 events"), "{}", stderr(&out));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.ndjson");
    let out = herald(
        Some(db.url()),
        &["export", "--output", file.to_str().expect("utf-8 path")],
    );
    assert_ok(&out, "export --output");
    assert_eq!(std::fs::read_to_string(&file).expect("read export"), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_a_database_without_a_log_and_leaves_it_alone() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let out = with_url(db.url(), &["verify"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("there is no herald event log in the PostgreSQL database") && err.contains(db.name()),
        "{err}"
    );
    let row = admin_client(&db)
        .await
        .query_one("SELECT to_regclass('events') IS NULL", &[])
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0), "verify created the schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_then_names_the_tampered_position() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open_store(&db).await;
    for i in 0..5 {
        store.append(note("post-a", i)).await.expect("append");
    }
    let head = store.read_all(0, &Filter::default(), 100).await.expect("read");
    let third: serde_json::Value = serde_json::from_slice(head.events[2].json()).expect("envelope");
    let third_hash = third["hash"].as_str().expect("hash").to_owned();
    drop(store);

    let out = with_url(db.url(), &["verify"]);
    assert_ok(&out, "verify");
    assert!(
        stdout(&out).starts_with("ok: 5 events, head position 5"),
        "{}",
        stdout(&out)
    );

    let anchor = format!("3:{}", third_hash);
    let out = with_url(db.url(), &["verify", "--expect", &anchor]);
    assert_ok(&out, "verify --expect");
    assert!(
        stdout(&out).contains(&format!("ok: position 3 has the expected hash {}", third_hash)),
        "{}",
        stdout(&out)
    );

    admin_client(&db)
        .await
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER ALL;
             UPDATE events SET envelope = replace(envelope, 'note 3', 'note 9') WHERE position = 4;",
        )
        .await
        .expect("edit with the triggers disabled");
    let out = with_url(db.url(), &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("TAMPERED: first bad position 4"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_refuses_postgres() {
    // No database is needed: it refuses before connecting.
    let url = format!("postgres://herald:{PASSWORD}@127.0.0.1:1/herald");
    let out = with_url(&url, &["bench"]);
    assert!(!out.status.success(), "{:?}", out.status);
    let err = stderr(&out);
    assert!(
        err.contains("`herald bench` does not support PostgreSQL (--database-url)"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_rebuild_replays_the_log_into_the_models_on_postgres() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open_store(&db).await;
    for i in 0..30 {
        let started = AppendRequest {
            stream: format!("deployment-d{i}"),
            expected: ExpectedVersion::NoStream,
            events: vec![NewEvent {
                event_type: "DeploymentStarted".into(),
                schema: 1,
                data: serde_json::json!({ "service": "api", "version": format!("1.{i}"), "environment": "prod" }),
            }],
            ..note("unused", i)
        };
        store.append(started).await.expect("append");
    }
    let out = with_url(db.url(), &["projections", "rebuild"]);
    assert_ok(&out, "projections rebuild");
    assert!(
        stdout(&out).contains("rebuilt the deployments read model from 30 events"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("rebuilt the feeds read model from 0 events"),
        "{}",
        stdout(&out)
    );
    let client = admin_client(&db).await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM rm_deployments.deployments", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 30);
    let checkpoint: i64 = client
        .query_one("SELECT position FROM rm_deployments.checkpoint", &[])
        .await
        .expect("checkpoint")
        .get(0);
    assert_eq!(checkpoint, 30);
    // An unknown name is refused, naming the known ones.
    let out = with_url(db.url(), &["projections", "rebuild", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("known: deployments, feeds"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_never_printed() {
    // Unreachable: one line naming host, port and database, not the password.
    let url = format!("postgres://herald:{PASSWORD}@127.0.0.1:1/herald_nowhere");
    for args in [
        &["verify"][..],
        &["export"][..],
        &["serve", "--listen", "127.0.0.1:0"][..],
        &["projections", "rebuild"][..],
        &["token", "create", "--name", "x", "--role", "viewer"][..],
        &["invite", "create", "--role", "viewer"][..],
    ] {
        let out = with_url(&url, args);
        assert!(!out.status.success(), "{args:?}: {:?}", out.status);
        let err = stderr(&out);
        assert!(!err.contains(PASSWORD), "{args:?}: {err}");
        let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("herald: ")).collect();
        assert_eq!(error_lines.len(), 1, "{args:?}: {err}");
        assert!(error_lines[0].contains("127.0.0.1:1/herald_nowhere"), "{args:?}: {err}");
        // The environment variable is as secret.
        let out = herald(Some(&url), args);
        assert!(!out.status.success());
        assert!(!stderr(&out).contains(PASSWORD), "{args:?}: {}", stderr(&out));
    }

    // Not a valid connection string: said so, without repeating it.
    let bad = format!("postgres://herald:{PASSWORD}@127.0.0.1:notaport/herald");
    let out = with_url(&bad, &["export"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--database-url is not a valid PostgreSQL connection string"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");

    // Reachable (trust authentication ignores the password), with debug logs.
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let Some(url) = with_password(db.url()) else {
        println!("skipped the reachable half: the test database URL is not of the form scheme://user@…");
        return;
    };
    for args in [
        &["token", "create", "--name", "x", "--role", "viewer"][..],
        &["invite", "create", "--role", "viewer"][..],
        &["export"][..],
        &["verify"][..],
        &["projections", "rebuild"][..],
    ] {
        let out = with_url(&url, args);
        assert_ok(&out, &format!("{args:?}"));
        assert!(!stderr(&out).contains(PASSWORD), "{args:?}: {}", stderr(&out));
        assert!(!stdout(&out).contains(PASSWORD), "{args:?}: {}", stdout(&out));
    }
}

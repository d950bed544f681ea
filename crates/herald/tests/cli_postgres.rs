//! The real `herald` binary with `--database-url` (API.md §8): `token create`,
//! `invite create`, `export`, `import` and `verify` work on PostgreSQL through
//! the same code as on the embedded store, and so do `serve` and `projections
//! rebuild` (the read models in the database too); `bench` refuses it.
//! `import` is also tested here on the embedded store (a log moved between the
//! two backends, both ways). Each test has a fresh database ([`TestDatabase`]); without a
//! PostgreSQL server a test prints "skipped" and passes, unless `CI=true`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use herald_core::accounts::AccountStore as _;
use herald_core::auth::{CredentialStore as _, Role};
use herald_core::command::{CommandRequest, StreamLocks};
use herald_core::envelope::Actor;
use herald_core::names::AggregateId;
use herald_core::store::{AppendOutcome, AppendRequest, EventStore, ExpectedVersion, Filter, NewEvent};
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
    herald_on(Path::new("/nonexistent/herald-cli-postgres-test"), env_url, args)
}

/// Runs `herald --data DATA` with `args` to completion.
fn herald_on(data: &Path, env_url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for var in HERALD_ENV {
        cmd.env_remove(var);
    }
    if let Some(url) = env_url {
        cmd.env("HERALD_DATABASE_URL", url);
    }
    cmd.env("RUST_LOG", "debug")
        .arg("--data")
        .arg(data)
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

// ---------------------------------------------------------------------------
// import
// ---------------------------------------------------------------------------

fn request(command_type: &str, id: &str, command_id: Option<&str>, data: serde_json::Value) -> CommandRequest {
    CommandRequest {
        command_type: command_type.into(),
        aggregate_id: AggregateId::parse(id).expect("an aggregate id"),
        expected_version: None,
        command_id: command_id.map(str::to_owned),
        correlation_id: None,
        data,
        presence_verified: true,
    }
}

/// Commands of both domains (one with an idempotency key), and an account
/// event, through the server's command path on the embedded store in `dir`.
async fn fill_embedded_store(dir: &Path) -> Vec<CommandRequest> {
    let store = herald_store::sqlite::SqliteStore::open(dir, Arc::new(herald_server::sse::Sse)).expect("open");
    let registry = herald_server::domains::registry();
    let locks = StreamLocks::default();
    let actor = Actor::system("test");
    let requests = vec![
        request(
            "StartDeployment",
            "web-1",
            Some("start-web-1"),
            serde_json::json!({"service": "web", "version": "1.4.2"}),
        ),
        request(
            "CreatePost",
            "notes",
            None,
            serde_json::json!({"title": "Notes", "content": "é \"q\" 😀", "tags": ["ops"]}),
        ),
        request(
            "ReportDeploymentProgress",
            "web-1",
            Some("progress-40"),
            serde_json::json!({"percent": 40}),
        ),
        request(
            "UpdatePost",
            "notes",
            Some("retitle"),
            serde_json::json!({"title": "Release notes"}),
        ),
    ];
    for r in &requests {
        registry
            .commands()
            .handle(&*store, &locks, &actor, r.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", r.command_type));
    }
    // U+0000 in the data: stored escaped, which PostgreSQL's JSON operators refuse.
    let mut odd = note("token-x", 0);
    odd.events[0].data = serde_json::json!({ "text": "nul \u{0} here" });
    store.append(odd).await.expect("append");
    requests
}

fn write_export(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the export");
    path.to_str().expect("utf-8 path").to_owned()
}

async fn count_rows(db: &TestDatabase) -> (i64, i64, i64) {
    let client = admin_client(db).await;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM commands), (SELECT position FROM sequencer)",
            &[],
        )
        .await
        .expect("count");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_export_imports_into_postgres_byte_for_byte_and_the_log_goes_on() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("source");
    let requests = fill_embedded_store(&source).await;
    let file = tmp.path().join("events.ndjson");
    let out = herald_on(&source, None, &["export", "--output", file.to_str().expect("utf-8")]);
    assert_ok(&out, "export from the embedded store");
    let exported = std::fs::read_to_string(&file).expect("read the export");
    assert_eq!(exported.lines().count(), 5, "{exported}");

    let out = with_url(db.url(), &["import", file.to_str().expect("utf-8")]);
    assert_ok(&out, "import into PostgreSQL");
    let head: serde_json::Value = serde_json::from_str(exported.lines().last().expect("a line")).expect("json");
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "ok: 5 events, head position 5 hash {}",
            head["hash"].as_str().expect("hash")
        )
    );
    // One idempotency record per append (each command_id was used once).
    assert!(
        stderr(&out).contains("imported 5 events") && stderr(&out).contains("and 5 idempotency records"),
        "{}",
        stderr(&out)
    );

    // Byte for byte; verify passes.
    let out = with_url(db.url(), &["export"]);
    assert_ok(&out, "export from PostgreSQL");
    assert_eq!(stdout(&out), exported);
    let out = with_url(db.url(), &["verify"]);
    assert_ok(&out, "verify after import");
    assert!(
        stdout(&out).starts_with("ok: 5 events, head position 5"),
        "{}",
        stdout(&out)
    );

    // A retried command is recognised: its first result, nothing appended.
    let store = open_store(&db).await;
    let registry = herald_server::domains::registry();
    let locks = StreamLocks::default();
    // (StartDeployment and UpdatePost are refused on the stored state, so the
    // record is looked up; ReportDeploymentProgress decides to append again,
    // and the writer finds the record.)
    for (retry, first_position) in [(&requests[0], 1), (&requests[2], 3), (&requests[3], 4)] {
        match registry
            .commands()
            .handle(&*store, &locks, &Actor::system("test"), retry.clone())
            .await
            .expect("the retry")
        {
            AppendOutcome::Duplicate(committed) => {
                assert_eq!(committed.first_position(), first_position, "{}", retry.command_type)
            }
            AppendOutcome::Appended(c) => panic!("{} appended again at {}", retry.command_type, c.first_position()),
        }
    }
    // The next append continues the positions and the chain.
    let next = registry
        .commands()
        .handle(
            &*store,
            &locks,
            &Actor::system("test"),
            request(
                "ReportDeploymentProgress",
                "web-1",
                Some("more"),
                serde_json::json!({"percent": 90}),
            ),
        )
        .await
        .expect("a new command");
    assert!(matches!(next, AppendOutcome::Appended(_)));
    assert_eq!(next.committed().first_position(), 6);
    assert_eq!(next.committed().version, 3);
    drop(store);
    let out = with_url(db.url(), &["verify"]);
    assert_ok(&out, "verify after an append on the imported log");
    assert!(
        stdout(&out).starts_with("ok: 6 events, head position 6"),
        "{}",
        stdout(&out)
    );

    // A target that is not empty is refused, and left as it was.
    let out = with_url(db.url(), &["import", file.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("already holds a log (head position 6): import only into an empty store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count_rows(&db).await.0, 6);

    // And back into an embedded store, from stdin: the same bytes; its
    // verify (which checks the derived idempotency records too) passes.
    let out = with_url(db.url(), &["export"]);
    assert_ok(&out, "export again");
    let six = stdout(&out);
    let target = tmp.path().join("target");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .env_remove("HERALD_DATABASE_URL")
        .arg("--data")
        .arg(&target)
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald import");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(six.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("herald import");
    assert_ok(&out, "import into the embedded store");
    let out = herald_on(&target, None, &["export"]);
    assert_ok(&out, "export from the embedded store");
    assert_eq!(stdout(&out), six);
    let out = herald_on(&target, None, &["verify"]);
    assert_ok(&out, "verify the embedded store");
    // A retry there is recognised too (by the embedded writer, and by the lookup).
    let embedded = herald_store::sqlite::SqliteStore::open(&target, Arc::new(herald_server::sse::Sse)).expect("open");
    for (retry, first_position) in [(&requests[2], 3), (&requests[0], 1)] {
        let outcome = registry
            .commands()
            .handle(
                &*embedded,
                &StreamLocks::default(),
                &Actor::system("test"),
                retry.clone(),
            )
            .await
            .expect("the retry on the embedded store");
        assert!(matches!(outcome, AppendOutcome::Duplicate(_)), "{}", retry.command_type);
        assert_eq!(outcome.committed().first_position(), first_position);
    }
    assert_eq!(embedded.head().await.expect("head").position, 6);
    drop(embedded);
    let out = herald_on(&target, None, &["import", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already holds a log (head position 6)"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_reordered_or_truncated_export_is_refused_and_nothing_is_imported() {
    let (Some(source), Some(target)) = (TestDatabase::create().await, TestDatabase::create().await) else {
        return;
    };
    let store = open_store(&source).await;
    for i in 0..5 {
        store.append(note("post-a", i)).await.expect("append");
    }
    drop(store);
    let out = with_url(source.url(), &["export"]);
    assert_ok(&out, "export");
    let good = stdout(&out);
    let lines: Vec<&str> = good.lines().collect();
    let tmp = tempfile::tempdir().expect("tempdir");

    let tampered = write_export(tmp.path(), "tampered", &good.replace("note 2", "note 7"));
    let reordered = write_export(
        tmp.path(),
        "reordered",
        &format!("{}\n{}\n{}\n{}\n{}\n", lines[0], lines[1], lines[3], lines[2], lines[4]),
    );
    let truncated = write_export(tmp.path(), "truncated", &good[..good.len() - 20]);
    for (file, expected) in [
        (&tampered, "line 3 (position 3): the envelope's hash is"),
        (
            &reordered,
            "line 3 (position 3): the envelope is position 4 but position 3 comes next",
        ),
        (
            &truncated,
            "line 5 (position 5): the last line does not end with a line break: the file is truncated",
        ),
    ] {
        let out = with_url(target.url(), &["import", file]);
        assert!(!out.status.success(), "{file}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains(expected) && err.contains("nothing was imported"),
            "{file}: {err}"
        );
        assert_eq!(count_rows(&target).await, (0, 0, 0), "{file}");
        // The embedded store refuses it the same way, and holds nothing after.
        let data = tmp.path().join("embedded");
        let out = herald_on(&data, None, &["import", file]);
        assert!(!out.status.success(), "{file}: {}", stdout(&out));
        assert!(stderr(&out).contains(expected), "{file}: {}", stderr(&out));
        let out = herald_on(&data, None, &["export"]);
        assert_ok(&out, "export of the embedded store");
        assert_eq!(stdout(&out), "", "{file}");
    }

    // The target was left empty: the intact file imports.
    let good_file = write_export(tmp.path(), "good", &good);
    let out = with_url(target.url(), &["import", &good_file]);
    assert_ok(&out, "import the intact file");
    assert_eq!(count_rows(&target).await, (5, 5, 5));
    let out = with_url(target.url(), &["export"]);
    assert_eq!(stdout(&out), good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_does_not_migrate_and_names_the_schema_version() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // What a herald that knew only migration 1 left.
    let m1 = &herald_postgres::MIGRATIONS[0];
    let client = admin_client(&db).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE herald_migrations (version bigint PRIMARY KEY, name text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now()); {} \
             INSERT INTO herald_migrations (version, name) VALUES (1, '{}');",
            m1.sql, m1.name
        ))
        .await
        .expect("migration 1 alone");
    let out = with_url(db.url(), &["verify"]);
    assert_ok(&out, "verify an older schema");
    assert!(stdout(&out).starts_with("ok: 0 events"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the database's schema is at migration 1, older than this herald's"),
        "{}",
        stderr(&out)
    );
    let versions: Vec<i64> = client
        .query("SELECT version FROM herald_migrations ORDER BY version", &[])
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1], "verify migrated the database");
    let row = client
        .query_one("SELECT to_regclass('users') IS NULL", &[])
        .await
        .expect("query");
    assert!(row.get::<_, bool>(0), "verify created the accounts' tables");

    // A newer one is refused, naming both versions.
    client
        .batch_execute("INSERT INTO herald_migrations (version, name) VALUES (99, 'from the future')")
        .await
        .expect("a newer migration");
    let out = with_url(db.url(), &["verify"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!(
            "has schema migration 99, newer than this herald knows ({})",
            herald_postgres::MIGRATIONS.len()
        )),
        "{}",
        stderr(&out)
    );
}

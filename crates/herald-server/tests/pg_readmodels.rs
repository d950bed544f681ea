//! Every domain's read model on PostgreSQL is the one on SQLite: one log
//! (commands of both domains, through the aggregates), applied in pages of
//! random sizes to each domain's model in a temporary directory and in a fresh
//! PostgreSQL database, then every read the routes and resource streams make
//! compared — list and get, posts, feeds and the list of feeds, and the pages
//! of `changed` — and a rebuild on PostgreSQL compared with both.

use std::sync::Arc;

use herald_core::command::{CommandRequest, Commands, StreamLocks};
use herald_core::envelope::{Actor, ActorKind};
use herald_core::names::AggregateId;
use herald_core::store::EventStore;
use herald_postgres::PgModels;
use herald_postgres::testing::TestDatabase;
use herald_server::domains::deployments::aggregate::{Deployment, DeploymentStatus};
use herald_server::domains::deployments::projection::{self as deployments, Deployments};
use herald_server::domains::posts::aggregate::Post;
use herald_server::domains::posts::projection::{self as posts, Feeds};
use herald_server::sse::Sse;
use herald_store::projection::{AnyStore, Consumer, Db, ReadModel, RowProjection, Storage};
use herald_store::sqlite::SqliteStore;
use serde_json::{Value, json};

fn actor() -> Actor {
    Actor {
        kind: ActorKind::Token,
        id: "t-agent".into(),
        name: "agent".into(),
    }
}

/// A small deterministic generator (no dependency, the same log every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const TAGS: &[&str] = &["rust", "ops", "db", "web", "zeta", "Alpha", "ünï", "a-b"];

/// Writes a log of both domains' commands; returns the store.
async fn write_log(dir: &std::path::Path) -> Arc<SqliteStore> {
    let store = SqliteStore::open(dir, Arc::new(Sse)).expect("open the log");
    let mut commands = Commands::default();
    commands.register::<Deployment>();
    commands.register::<Post>();
    let locks = StreamLocks::default();
    let mut rng = Lcg(7);
    let run = |command_type: &str, id: String, data: Value| {
        let request = CommandRequest {
            command_type: command_type.into(),
            aggregate_id: AggregateId::parse(&id).expect("an id"),
            expected_version: None,
            command_id: None,
            correlation_id: None,
            data,
            presence_verified: true,
        };
        let commands = &commands;
        let locks = &locks;
        let store = store.clone();
        async move { commands.handle(&*store, locks, &actor(), request).await.is_ok() }
    };
    let mut accepted = 0;
    for i in 0..400u64 {
        let d = format!("d{}", rng.next(40));
        let p = format!("p{}", rng.next(30));
        let ok = match rng.next(9) {
            0 | 1 => {
                run(
                    "StartDeployment",
                    d,
                    json!({"service": format!("svc{}", i % 5), "version": "1.0"}),
                )
                .await
            }
            2 => {
                run(
                    "ReportDeploymentProgress",
                    d,
                    json!({"percent": rng.next(100), "message": "step"}),
                )
                .await
            }
            3 => run("SucceedDeployment", d, json!({})).await,
            4 => run("FailDeployment", d, json!({"reason": "boom"})).await,
            5 => run("CancelDeployment", d, json!({})).await,
            6 | 7 => {
                let tags: Vec<&str> = (0..rng.next(4))
                    .map(|_| TAGS[rng.next(TAGS.len() as u64) as usize])
                    .collect();
                run(
                    "CreatePost",
                    p,
                    json!({"title": format!("Post {i}"), "content": "text", "tags": tags}),
                )
                .await
            }
            _ => {
                let tags: Vec<&str> = (0..rng.next(4))
                    .map(|_| TAGS[rng.next(TAGS.len() as u64) as usize])
                    .collect();
                run("UpdatePost", p, json!({"tags": tags, "title": format!("Edited {i}")})).await
            }
        };
        accepted += usize::from(ok);
    }
    assert!(accepted > 120, "enough commands were accepted: {accepted}");
    store
}

/// `process_next` with pages of varying sizes until caught up.
async fn catch_up<P: RowProjection, S: Storage>(model: &ReadModel<P, S>, store: &Arc<dyn EventStore>, seed: u64) {
    let mut rng = Lcg(seed);
    loop {
        let step = Consumer::process_next(model, store, 1 + rng.next(37) as usize)
            .await
            .expect("a step");
        if step.caught_up() {
            return;
        }
    }
}

/// Everything the deployments model answers.
async fn deployment_reads<S: Storage>(model: &ReadModel<Deployments, S>) -> Vec<String> {
    let mut out = model
        .read(|db: &dyn Db, checkpoint| {
            let mut out = vec![format!("checkpoint {checkpoint}")];
            out.push(deployments::list(db, None, 1000)?.join("\n"));
            out.push(deployments::list(db, None, 3)?.join("\n"));
            for status in [
                DeploymentStatus::InProgress,
                DeploymentStatus::Succeeded,
                DeploymentStatus::Failed,
                DeploymentStatus::Cancelled,
            ] {
                out.push(deployments::list(db, Some(status), 1000)?.join("\n"));
            }
            for i in 0..40 {
                out.push(format!("{:?}", deployments::get(db, &format!("d{i}"))?));
            }
            Ok(out)
        })
        .await
        .expect("deployment reads");
    out.extend(changed_pages(model).await);
    out
}

/// Everything the feeds model answers.
async fn feed_reads<S: Storage>(model: &ReadModel<Feeds, S>) -> Vec<String> {
    let mut out = model
        .read(|db: &dyn Db, checkpoint| {
            let mut out = vec![format!("checkpoint {checkpoint}")];
            out.push(format!("{:?}", posts::feeds_json(db, checkpoint)?));
            for tag in TAGS.iter().map(|t| t.to_lowercase()).chain(["missing".to_owned()]) {
                let feed = posts::feed(db, &tag)?;
                out.push(format!("{tag}: {feed:?}"));
                if let Some(feed) = feed {
                    out.push(posts::feed_json(db, &tag, &feed, 5, checkpoint)?);
                    out.push(posts::feed_posts(db, &tag, 1000)?.join("\n"));
                }
            }
            for i in 0..30 {
                out.push(format!("{:?}", posts::post(db, &format!("p{i}"))?));
            }
            Ok(out)
        })
        .await
        .expect("feed reads");
    out.extend(changed_pages(model).await);
    out
}

/// `changed` from several positions, with several page sizes.
async fn changed_pages(model: &dyn Consumer) -> Vec<String> {
    let mut out = Vec::new();
    let checkpoint = model.checkpoint().await.expect("checkpoint");
    for after in [0, 1, checkpoint / 3, checkpoint / 2, checkpoint.saturating_sub(5)] {
        for limit in [1, 4, 1000] {
            let page = model.changed(after, limit).await.expect("changed");
            out.push(format!("changed({after}, {limit}): {page:?}"));
        }
    }
    out
}

fn assert_same(what: &str, sqlite: &[String], pg: &[String]) {
    assert_eq!(sqlite.len(), pg.len(), "{what}: as many answers");
    for (i, (a, b)) in sqlite.iter().zip(pg).enumerate() {
        assert_eq!(
            a, b,
            "{what}: answer {i} differs between SQLite (left) and PostgreSQL (right)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_answers_the_same_on_postgres_as_on_sqlite() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite_store = write_log(dir.path()).await;
    let store: Arc<dyn EventStore> = sqlite_store.clone();
    let pg = PgModels::new(db.url().parse().expect("test database URL"));

    let sqlite_deployments = ReadModel::<Deployments>::open(dir.path()).expect("open");
    let pg_deployments = pg.open::<Deployments>().await.expect("open on PostgreSQL");
    catch_up(&*sqlite_deployments, &store, 1).await;
    catch_up(&pg_deployments, &store, 2).await;
    let expected = deployment_reads(&sqlite_deployments).await;
    assert!(
        expected.iter().any(|a| a.contains("\"status\":\"failed\"")),
        "the log has failed deployments"
    );
    assert_same("deployments", &expected, &deployment_reads(&pg_deployments).await);

    let sqlite_feeds = ReadModel::<Feeds>::open(dir.path()).expect("open");
    let pg_feeds = pg.open::<Feeds>().await.expect("open on PostgreSQL");
    catch_up(&*sqlite_feeds, &store, 3).await;
    catch_up(&pg_feeds, &store, 4).await;
    let expected = feed_reads(&sqlite_feeds).await;
    assert!(
        expected.iter().any(|a| a.contains("\"post_count\":2")),
        "feeds with several posts"
    );
    assert_same("feeds", &expected, &feed_reads(&pg_feeds).await);

    // A rebuild on PostgreSQL comes out the same too.
    let source = Arc::new(AnyStore(store.clone()));
    Consumer::rebuild(&pg_feeds, source.clone(), &mut |_, _| {})
        .await
        .expect("rebuild feeds");
    assert_same("feeds rebuilt", &expected, &feed_reads(&pg_feeds).await);
    Consumer::rebuild(&pg_deployments, source, &mut |_, _| {})
        .await
        .expect("rebuild deployments");
    assert_same(
        "deployments rebuilt",
        &deployment_reads(&sqlite_deployments).await,
        &deployment_reads(&pg_deployments).await,
    );
}

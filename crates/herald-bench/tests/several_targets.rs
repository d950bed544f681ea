//! The fan-out over several targets that share one broadcast (three
//! in-process ceilings on one state, as instances of one herald share one
//! log): subscribers and publishers spread round-robin, and every subscriber
//! must get every message once, whichever target it was published on.

use std::net::SocketAddr;
use std::time::Duration;

use herald_bench::Kind;
use herald_bench::fanout::{self, FanConfig};
use herald_bench::targets::{CeilingState, ceiling_app, spread};

async fn shared_ceilings(n: usize) -> Vec<SocketAddr> {
    let state = CeilingState::new();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(listener.local_addr().expect("local addr"));
        let app = ceiling_app(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    addrs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_once_across_targets() {
    let addrs = shared_ceilings(3).await;
    let cfg = FanConfig {
        kind: Kind::Ceiling,
        addrs: addrs.clone(),
        token: None,
        channel: "unused".into(),
        subscribers: 10,
        rate: 40.0,
        duration: Duration::from_millis(300),
        // Fewer than the targets: each target still gets one (two runs).
        publishers: vec![1, 2],
        window: 16,
        payload: 200,
        herald_pad: 1,
        run: "t0000001".into(),
        max_messages: 5_000,
        pids: Vec::new(),
    };
    let r = fanout::run(cfg).await.expect("the fan-out runs");

    assert_eq!(r.connected, 10, "first connect error: {:?}", r.first_connect_error);
    assert_eq!(r.targets, addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    assert_eq!(
        r.per_target.iter().map(|t| t.subscribers).collect::<Vec<_>>(),
        vec![4, 3, 3]
    );
    assert_eq!(
        r.per_target.iter().map(|t| t.connected).collect::<Vec<_>>(),
        vec![4, 3, 3]
    );
    // 20 paced publishers (40/s ÷ 2), then max(1, 3) and max(2, 3) windowed ones.
    let publishers: Vec<usize> = spread(20, 3).iter().zip(spread(3, 3)).map(|(a, b)| a + 2 * b).collect();
    assert_eq!(
        r.per_target.iter().map(|t| t.publishers).collect::<Vec<_>>(),
        publishers
    );
    assert!(r.latency_published > 0, "the latency phase sent nothing");
    assert_eq!(
        r.sweep.iter().map(|run| run.publishers).collect::<Vec<_>>(),
        vec![3, 3],
        "one run per count, at least one publisher per target"
    );
    for run in &r.sweep {
        assert!(run.published > 0, "a throughput run sent nothing: {run:?}");
        assert_eq!(run.missing, 0, "{run:?}");
    }
    assert_eq!(
        r.throughput_published, r.sweep[1].published,
        "the last run is the flat-out figure"
    );
    assert_eq!(r.publish_errors, 0, "{:?}", r.first_publish_error);
    assert_eq!((r.latency_missing, r.missing), (0, 0));
    assert_eq!((r.duplicates, r.disconnects), (0, 0));
    let sent = (r.latency_published + r.sweep.iter().map(|run| run.published).sum::<usize>()) as u64;
    for t in &r.per_target {
        assert_eq!(t.missing, 0, "{t:?}");
        assert_eq!(t.delivered, t.connected as u64 * sent, "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_nobody_publishes_to_is_still_counted_missing() {
    // Two targets on separate broadcasts: what is published on one never
    // reaches the other's subscribers, and the bench must say so.
    let mut addrs = shared_ceilings(1).await;
    addrs.extend(shared_ceilings(1).await);
    let cfg = FanConfig {
        kind: Kind::Ceiling,
        addrs,
        token: None,
        channel: "unused".into(),
        subscribers: 4,
        rate: 20.0,
        duration: Duration::from_millis(200),
        publishers: vec![2],
        window: 8,
        payload: 200,
        herald_pad: 1,
        run: "t0000002".into(),
        max_messages: 5_000,
        pids: Vec::new(),
    };
    let r = fanout::run(cfg).await.expect("the fan-out runs");
    assert_eq!(r.connected, 4);
    let sent = (r.latency_published + r.throughput_published) as u64;
    assert!(sent > 0);
    // Each subscriber sees only its own target's messages.
    let missing: u64 = r.per_target.iter().map(|t| t.missing).sum();
    assert!(missing > 0, "{:?}", r.per_target);
    assert_eq!(missing, r.latency_missing + r.throughput_missing);
}

//! Prometheus metrics. One recorder per process (the `metrics` facade is global);
//! every app built in the process renders the same registry.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (once) and describes herald's metrics.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[0.0, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0])
            .ok()?
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).ok()?;
        // Histogram samples wait in the recorder until drained; without upkeep
        // they would pile up between scrapes (or forever, with no scraper).
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok()?;
        metrics::describe_counter!(
            "herald_commands_total",
            "Commands handled, by outcome (ok, conflict, rejected, error)."
        );
        metrics::describe_counter!(
            "herald_events_appended_total",
            "Events appended to the log by this process."
        );
        metrics::describe_gauge!("herald_live_subscribers", "Open live (SSE) streams.");
        metrics::describe_counter!("herald_live_deliveries_total", "Events written to live streams.");
        metrics::describe_counter!(
            "herald_live_lagged_disconnects_total",
            "Live streams disconnected for falling too far behind."
        );
        metrics::describe_histogram!(
            "herald_subscriber_lag_events",
            "How many events behind the head a live stream was when it wrote a chunk."
        );
        metrics::describe_gauge!(
            "herald_head_position",
            "The last position of the log this process has seen."
        );
        metrics::describe_gauge!(
            "herald_projection_position",
            "The position the deployments read model reflects."
        );
        Some(handle)
    });
}

pub fn render() -> String {
    install();
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

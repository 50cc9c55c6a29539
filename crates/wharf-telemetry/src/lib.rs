//! One Prometheus recorder per Wharf process, and the text its `/metrics` route serves.
//!
//! The parts of Wharf record through the [`metrics`] facade (`counter!`, `gauge!`,
//! `histogram!`) and never see an exporter. The binary calls [`Telemetry::install`] once at
//! start: it installs `metrics-exporter-prometheus` as the global recorder, with histogram
//! buckets for every metric whose name ends in `_seconds` or `_bytes` (without buckets the
//! exporter renders a summary, which Prometheus cannot aggregate across processes). Gauges that
//! describe state rather than events (jobs queued, actors active, runner slots busy) are
//! refreshed at scrape time by collectors the binary registers with
//! [`Telemetry::add_collector`], so no loop polls for them. [`Telemetry::render`] runs the
//! collectors, then renders the Prometheus text format; the front's `/metrics` route and a
//! storage node's metrics listener both serve it.
//!
//! Background loops started with [`spawn_named`] are listed in `wharf_background_tasks{task}`:
//! 1 while the loop runs, 0 once it has ended (returned, panicked or was aborted), so a loop
//! that died stands out.
//!
//! This crate owns no HTTP listener and knows no other Wharf crate: it is the seam between the
//! facade the libraries use and the exporter the binary chooses.

#![warn(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Bucket bounds of latency histograms, in seconds: from a local actor call (tens of
/// microseconds) to a long clone or a CI job step (minutes).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 900.0, 3600.0,
];

/// Bucket bounds of size histograms, in bytes: 1 KiB to 1 GiB by factors of four.
pub const SIZE_BUCKETS: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0, 268435456.0,
    1073741824.0,
];

/// How long a counter or histogram that nothing updates stays in the output. Labels such as a
/// deployed instance's id come and go: without expiry a long-running front would keep a series
/// for every instance it ever routed to. Gauges never expire (some, such as the Raft term,
/// change rarely); a counter that returns after expiring starts again from zero, which
/// Prometheus's `rate` treats as a reset.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How often histogram samples are folded into their buckets when nobody scrapes. A render
/// folds them too; this bounds the memory of a process that is never scraped.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter refused its configuration.
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] BuildError),
    /// The upkeep thread did not start.
    #[error("cannot start the metrics upkeep thread: {0}")]
    Upkeep(#[source] std::io::Error),
}

/// Refreshes gauges right before a render.
type Collector = Box<dyn Fn() + Send + Sync>;

/// The process's recorder: clones share it.
#[derive(Clone)]
pub struct Telemetry {
    handle: PrometheusHandle,
    collectors: Arc<Mutex<Vec<Collector>>>,
}

impl Telemetry {
    /// Installs the Prometheus recorder as the process's global recorder. Call once per
    /// process; a second call fails, since the facade has one global recorder.
    ///
    /// It also starts a thread, `wharf-metrics-upkeep`, that folds histogram samples into
    /// buckets every few seconds; it lives as long as the process, as the recorder does.
    pub fn install() -> Result<Telemetry, TelemetryError> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), SIZE_BUCKETS)?
            .idle_timeout(MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM, Some(IDLE_TIMEOUT))
            .install_recorder()?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("wharf-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_PERIOD);
                upkeep.run_upkeep();
            })
            .map_err(TelemetryError::Upkeep)?;
        Ok(Telemetry {
            handle,
            collectors: Arc::default(),
        })
    }

    /// Registers `collect`, called before every render to set gauges that describe state
    /// (counts read from the records, slots in use). It must be quick and must not block: it
    /// runs on the thread that answers the scrape.
    pub fn add_collector(&self, collect: impl Fn() + Send + Sync + 'static) {
        self.lock_collectors().push(Box::new(collect));
    }

    /// Every metric of this process in the Prometheus text format (version 0.0.4), after the
    /// collectors have run.
    pub fn render(&self) -> String {
        for collect in self.lock_collectors().iter() {
            collect();
        }
        self.handle.render()
    }

    fn lock_collectors(&self) -> std::sync::MutexGuard<'_, Vec<Collector>> {
        // A collector that panicked left the list itself intact: keep using it.
        self.collectors.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Spawns the background loop `work` on the current Tokio runtime under `name` (a fixed,
/// kebab-case name such as `rebalancer`): `wharf_background_tasks{task=name}` counts it while it
/// runs. Returns its handle, for an owner that stops it or waits for it.
pub fn spawn_named<F>(name: &'static str, work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let running = RunningTask::start(name);
    tokio::spawn(async move {
        let _running = running;
        work.await
    })
}

/// A named background task counted in `wharf_background_tasks{task}` while this guard lives:
/// it counts the task out when dropped, on return, on a panic's unwinding, or on abort. For an
/// owner that spawns its tasks itself (a node's `Background`); [`spawn_named`] uses it too.
pub struct RunningTask(&'static str);

impl RunningTask {
    /// Counts task `name` in.
    pub fn start(name: &'static str) -> RunningTask {
        metrics::gauge!("wharf_background_tasks", "task" => name).increment(1.0);
        RunningTask(name)
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        metrics::gauge!("wharf_background_tasks", "task" => self.0).decrement(1.0);
    }
}

/// The `Content-Type` of [`Telemetry::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Telemetry;

    #[test]
    fn durations_render_as_histograms_and_collectors_run_before_a_render() {
        let telemetry = Telemetry::install().expect("the first recorder of this process");
        metrics::histogram!("test_wait_seconds").record(0.003);
        metrics::histogram!("test_body_bytes").record(2000.0);
        telemetry.add_collector(|| metrics::gauge!("test_slots_busy").set(2.0));
        let text = telemetry.render();
        assert!(text.contains("test_wait_seconds_bucket{le=\"0.0025\"} 0"), "{text}");
        assert!(text.contains("test_wait_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("test_body_bytes_bucket{le=\"4096\"} 1"), "{text}");
        assert!(!text.contains("quantile="), "no summaries: {text}");
        assert!(text.contains("test_slots_busy 2"), "{text}");
        assert!(Telemetry::install().is_err(), "one recorder per process");

        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let _inside = runtime.enter();
            super::spawn_named("test-loop", async move {
                let _ = stopped.await;
            })
        };
        assert!(telemetry.render().contains("wharf_background_tasks{task=\"test-loop\"} 1"));
        let _ = stop.send(());
        runtime.block_on(task).expect("the loop ends");
        assert!(telemetry.render().contains("wharf_background_tasks{task=\"test-loop\"} 0"));
    }
}

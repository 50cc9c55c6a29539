//! The node's background loops, under one owner.
//!
//! Every loop a node runs besides its actors (the runner's claimer, lease expiry and artifact
//! sweeper, the deployment controllers and driver, the rebalancer, the passivation sweeper) is
//! started here, by name, and tracked: [`Background::running`] lists them, the gauge
//! `wharf_background_tasks{task}` counts them, and
//! [`Background::stop`] cancels them all and waits until each has ended, before the node stops
//! its actors. A loop is a step run again whenever its [`Wake`] says: after a fixed period, or
//! as soon as the metadata applies a new entry (so a queued job reaches a runner the moment its
//! record is applied, not at the next poll).

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::NodeContext;

/// When a loop runs its step again.
#[derive(Debug, Clone)]
pub(crate) enum Wake {
    /// After this long.
    Every(Duration),
    /// As soon as the metadata applies an entry or the notifier is notified (by something that
    /// is not a metadata change, such as a runner slot freeing), and after this long at the
    /// latest.
    OnChangeOr(Duration, Arc<tokio::sync::Notify>),
}

/// The owner of a node's background loops.
#[derive(Default)]
pub(crate) struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
    running: Arc<Mutex<Vec<&'static str>>>,
}

impl Background {
    /// Runs `step` on the node again and again, as `wake` says, until the node stops (or is
    /// gone).
    pub fn spawn_loop<S, F>(&self, name: &'static str, node: Weak<NodeContext>, wake: Wake, step: S)
    where
        S: Fn(Arc<NodeContext>) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send,
    {
        let stop = self.stop.clone();
        let running = self.running.clone();
        lock(&running).push(name);
        let counted = wharf_telemetry::RunningTask::start(name);
        self.tracker.spawn(async move {
            let _counted = counted;
            tracing::debug!(task = name, "background task started");
            let run = async {
                let mut seen = None;
                loop {
                    let Some(context) = node.upgrade() else { return };
                    step(context.clone()).await;
                    match &wake {
                        Wake::Every(period) => {
                            drop(context);
                            tokio::time::sleep(*period).await;
                        }
                        Wake::OnChangeOr(at_most, notifier) => {
                            let meta = context.meta.clone();
                            drop(context);
                            let woken = async {
                                tokio::select! {
                                    changed = meta.applied_changed(seen) => changed,
                                    () = notifier.notified() => seen,
                                }
                            };
                            seen = tokio::time::timeout(*at_most, woken).await.unwrap_or(seen);
                        }
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = run => {}
            }
            lock(&running).retain(|n| *n != name);
            tracing::debug!(task = name, "background task stopped");
        });
    }

    /// The names of the loops running now.
    pub fn running(&self) -> Vec<&'static str> {
        lock(&self.running).clone()
    }

    /// Cancels every loop and waits until all have ended, for at most `deadline`. A step in
    /// progress is dropped at its next await point.
    pub async fn stop(&self, deadline: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            tracing::warn!(still = ?self.running(), "background tasks did not stop in time");
        }
    }
}

fn lock<'a>(running: &'a Mutex<Vec<&'static str>>) -> std::sync::MutexGuard<'a, Vec<&'static str>> {
    running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

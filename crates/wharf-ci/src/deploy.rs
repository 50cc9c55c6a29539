//! The `deploy:` section of `.wharf.yml`: what a deployment runs (a command in the artifact
//! directory of one job), how an instance's health is checked, and per environment how many
//! instances run and with which strategy a new release replaces the old.
//!
//! ```yaml
//! deploy:
//!   from: build
//!   command: python3 out/app.py
//!   health: { path: /healthz, interval: 1s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 3 }
//!   environments:
//!     staging:
//!       branch: main
//!       instances: 2
//!       strategy: { type: rolling, max_surge: 1, max_unavailable: 0, min_ready: 1s }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
pub use wharf_proto::deploy::{DeploySpec, DriverSpec, EnvironmentSpec, HealthCheck, Strategy};

use crate::duration::parse_duration;

// ---- the section as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeploy {
    from: String,
    command: String,
    health: Option<RawHealth>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<u32>,
    unhealthy_threshold: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    branch: Option<String>,
    instances: Option<u32>,
    strategy: Option<RawStrategy>,
    progress_deadline: Option<String>,
    auto_revert: Option<bool>,
    driver: Option<String>,
    image: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawStrategy {
    Rolling {
        max_surge: Option<u32>,
        max_unavailable: Option<u32>,
        min_ready: Option<String>,
    },
    BlueGreen {
        auto_promote: Option<bool>,
        scale_down_delay: Option<String>,
    },
    Canary {
        steps: Vec<u32>,
        pause: Option<String>,
        max_error_rate: Option<f64>,
        max_latency: Option<String>,
    },
}

/// The most instances one environment runs.
const MAX_INSTANCES: u32 = 64;

fn millis(text: Option<String>, default: Duration) -> Result<u64, String> {
    let duration = match text {
        Some(text) => parse_duration(&text)?,
        None => default,
    };
    Ok(duration.as_millis() as u64)
}

impl RawDeploy {
    /// Checks the section; `artifact_jobs` are the file's jobs that keep artifacts.
    pub(crate) fn check(self, artifact_jobs: &[&str]) -> Result<DeploySpec, String> {
        if !artifact_jobs.contains(&self.from.as_str()) {
            return Err(format!("deploy.from {:?} must name a job of this file that keeps artifacts", self.from));
        }
        if self.command.trim().is_empty() {
            return Err("deploy.command is empty".into());
        }
        let defaults = HealthCheck::default();
        let health = match self.health {
            None => defaults,
            Some(raw) => HealthCheck {
                path: raw.path.unwrap_or(defaults.path),
                interval_ms: millis(raw.interval, Duration::from_millis(defaults.interval_ms))?,
                timeout_ms: millis(raw.timeout, Duration::from_millis(defaults.timeout_ms))?,
                healthy_threshold: raw.healthy_threshold.unwrap_or(defaults.healthy_threshold).max(1),
                unhealthy_threshold: raw.unhealthy_threshold.unwrap_or(defaults.unhealthy_threshold).max(1),
            },
        };
        if !health.path.starts_with('/') {
            return Err(format!("deploy.health.path {:?} must start with /", health.path));
        }
        // The path goes into a request line: a CR or LF would let it add headers or a second
        // request (issue 14); spaces and other controls would garble it.
        if health.path.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("deploy.health.path {:?} must not contain spaces or control characters", health.path));
        }
        let mut environments = BTreeMap::new();
        for (name, raw) in self.environments {
            let spec = raw.check().map_err(|m| format!("deploy.environments.{name}: {m}"))?;
            environments.insert(name, spec);
        }
        Ok(DeploySpec {
            from: self.from,
            command: self.command,
            health,
            environments,
        })
    }
}

impl RawEnvironment {
    fn check(self) -> Result<EnvironmentSpec, String> {
        let defaults = EnvironmentSpec::default();
        let instances = self.instances.unwrap_or(defaults.instances);
        if instances == 0 || instances > MAX_INSTANCES {
            return Err(format!("instances must be 1 to {MAX_INSTANCES}, not {instances}"));
        }
        let strategy = match self.strategy {
            None => defaults.strategy,
            Some(raw) => raw.check()?,
        };
        Ok(EnvironmentSpec {
            branch: self.branch,
            instances,
            strategy,
            progress_deadline_ms: millis(self.progress_deadline, Duration::from_millis(defaults.progress_deadline_ms))?,
            auto_revert: self.auto_revert.unwrap_or(defaults.auto_revert),
            driver: driver(self.driver.as_deref(), self.image)?,
        })
    }
}

fn driver(name: Option<&str>, image: Option<String>) -> Result<DriverSpec, String> {
    match (name, image) {
        (None | Some("process"), None) => Ok(DriverSpec::Process),
        (None | Some("process"), Some(_)) => Err("image is for the docker driver: add driver: docker".into()),
        (Some("docker"), Some(image)) if !image.trim().is_empty() => Ok(DriverSpec::Docker { image }),
        (Some("docker"), _) => Err("the docker driver needs an image".into()),
        (Some(other), _) => Err(format!("driver {other:?} is not one of process, docker")),
    }
}

impl RawStrategy {
    fn check(self) -> Result<Strategy, String> {
        Ok(match self {
            RawStrategy::Rolling {
                max_surge,
                max_unavailable,
                min_ready,
            } => {
                let (max_surge, max_unavailable) = (max_surge.unwrap_or(1), max_unavailable.unwrap_or(0));
                if max_surge == 0 && max_unavailable == 0 {
                    return Err("max_surge and max_unavailable cannot both be 0: nothing could ever be replaced".into());
                }
                Strategy::Rolling {
                    max_surge,
                    max_unavailable,
                    min_ready_ms: millis(min_ready, Duration::ZERO)?,
                }
            }
            RawStrategy::BlueGreen {
                auto_promote,
                scale_down_delay,
            } => Strategy::BlueGreen {
                auto_promote: auto_promote.unwrap_or(true),
                scale_down_delay_ms: millis(scale_down_delay, Duration::from_secs(30))?,
            },
            RawStrategy::Canary {
                steps,
                pause,
                max_error_rate,
                max_latency,
            } => {
                let increasing = steps.windows(2).all(|w| w[0] < w[1]);
                if steps.is_empty() || !increasing || steps.last() != Some(&100) || steps[0] == 0 {
                    return Err(format!("canary steps must rise from above 0 to 100, as [10, 50, 100]; not {steps:?}"));
                }
                let max_error_rate = max_error_rate.unwrap_or(0.01);
                if !(0.0..=1.0).contains(&max_error_rate) {
                    return Err(format!("max_error_rate is a fraction from 0 to 1, not {max_error_rate}"));
                }
                Strategy::Canary {
                    steps,
                    pause_ms: millis(pause, Duration::from_secs(30))?,
                    max_error_rate,
                    max_latency_ms: max_latency.map(|text| millis(Some(text), Duration::ZERO)).transpose()?,
                }
            }
        })
    }
}

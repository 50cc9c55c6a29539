//! The next step of a rollout, decided from the environment's instance records alone, so that
//! a controller that takes over from a dead one carries on where it stopped.
//!
//! Each call returns one step; the controller carries it out as a Raft write and asks again.

use wharf_proto::deploy::{InstanceHealth, InstanceRecord, Strategy};

/// How long an instance taken out of traffic keeps running, so that requests in flight to it
/// finish (fronts stop sending new ones once they apply the weight change).
pub(crate) const DRAIN_MS: u64 = 2_000;

/// What the controller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Add this many instances of the target revision, with this traffic weight.
    Start { count: u32, weight: u32 },
    /// Change these instances' weights at once.
    Weights(Vec<(u64, u32)>),
    /// Stop these instances.
    Stop(Vec<u64>),
    /// The new release cannot become healthy.
    Failed(String),
    /// Blue-green without auto promotion: the new set is ready and waits for a promote call.
    AwaitPromotion,
    /// Every instance runs the target revision.
    Done,
    /// Nothing to do until instances change; the words say how far it is.
    Wait(String),
}

/// The environment as a rollout sees it.
pub(crate) struct Situation<'a> {
    /// The revision being rolled out.
    pub target: u64,
    /// Instances wanted.
    pub desired: u32,
    /// How to roll.
    pub strategy: &'a Strategy,
    /// The environment's instances that are not stopped.
    pub instances: &'a [InstanceRecord],
    /// Whether a promotion was asked for (blue-green).
    pub promoted: bool,
    /// Now.
    pub now_ms: u64,
}

impl Situation<'_> {
    fn new_set(&self) -> Vec<&InstanceRecord> {
        self.instances.iter().filter(|i| i.revision == self.target).collect()
    }

    fn old_set(&self) -> Vec<&InstanceRecord> {
        self.instances.iter().filter(|i| i.revision != self.target).collect()
    }

    fn is_ready(&self, instance: &InstanceRecord, min_ready_ms: u64) -> bool {
        instance.health == InstanceHealth::Healthy
            && instance.healthy_since_ms.is_some_and(|since| since + min_ready_ms <= self.now_ms)
    }

    /// Old instances that were taken out of traffic at least `delay_ms` ago.
    fn drained(&self, delay_ms: u64) -> Vec<u64> {
        self.old_set()
            .iter()
            .filter(|i| i.retiring_since_ms.is_some_and(|since| since + delay_ms <= self.now_ms))
            .map(|i| i.id)
            .collect()
    }

    fn failed_new(&self) -> Option<String> {
        let failed = self.new_set().into_iter().find(|i| i.health == InstanceHealth::Unhealthy)?;
        Some(format!(
            "instance {} of revision {} is unhealthy: {}",
            failed.id,
            self.target,
            failed.message.as_deref().unwrap_or("its health check fails")
        ))
    }
}

/// The next step towards every instance running `situation.target`.
pub(crate) fn next_step(situation: &Situation) -> Step {
    if let Some(reason) = situation.failed_new() {
        return Step::Failed(reason);
    }
    match situation.strategy {
        Strategy::Rolling {
            max_surge,
            max_unavailable,
            min_ready_ms,
        } => rolling(situation, *max_surge, *max_unavailable, *min_ready_ms),
        Strategy::BlueGreen {
            auto_promote,
            scale_down_delay_ms,
        } => blue_green(situation, *auto_promote || situation.promoted, *scale_down_delay_ms),
        // Until the router's figures reach the controller, a canary rolls one instance at a
        // time, as the most careful rolling update does.
        Strategy::Canary { .. } => rolling(situation, 1, 0, 0),
    }
}

fn rolling(situation: &Situation, max_surge: u32, max_unavailable: u32, min_ready_ms: u64) -> Step {
    let drained = situation.drained(DRAIN_MS);
    if !drained.is_empty() {
        return Step::Stop(drained);
    }
    let desired = situation.desired as usize;
    let new = situation.new_set();
    let serving_old: Vec<&InstanceRecord> =
        situation.old_set().into_iter().filter(|i| i.retiring_since_ms.is_none()).collect();
    let new_ready = new.iter().filter(|i| situation.is_ready(i, min_ready_ms)).count();
    if new.len() < desired {
        let room = (desired + max_surge as usize).saturating_sub(new.len() + serving_old.len());
        let count = room.min(desired - new.len());
        if count > 0 {
            return Step::Start {
                count: count as u32,
                weight: 1,
            };
        }
    }
    let old_available = serving_old.iter().filter(|i| i.health == InstanceHealth::Healthy).count();
    let minimum = desired.saturating_sub(max_unavailable as usize);
    let spare = (new_ready + old_available).saturating_sub(minimum);
    // Retire unhealthy old instances first: they serve nothing anyway.
    let mut retire: Vec<&InstanceRecord> = serving_old.iter().filter(|i| i.health != InstanceHealth::Healthy).copied().collect();
    retire.extend(serving_old.iter().filter(|i| i.health == InstanceHealth::Healthy).take(spare));
    if !retire.is_empty() {
        return Step::Weights(retire.iter().map(|i| (i.id, 0)).collect());
    }
    if new_ready >= desired && situation.old_set().is_empty() {
        return Step::Done;
    }
    Step::Wait(format!("{new_ready} of {desired} instances updated"))
}

fn blue_green(situation: &Situation, promote: bool, scale_down_delay_ms: u64) -> Step {
    let desired = situation.desired as usize;
    let new = situation.new_set();
    if new.len() < desired {
        // The new set starts beside the old one, out of traffic (reachable at the preview route).
        return Step::Start {
            count: (desired - new.len()) as u32,
            weight: 0,
        };
    }
    let ready = new.iter().filter(|i| situation.is_ready(i, 0)).count();
    let switched = new.iter().all(|i| i.weight > 0);
    if !switched {
        if ready < desired {
            return Step::Wait(format!("{ready} of {desired} new instances healthy"));
        }
        if !promote {
            return Step::AwaitPromotion;
        }
        // One change moves all traffic: the new set in, the old set out.
        let mut weights: Vec<(u64, u32)> = new.iter().map(|i| (i.id, 1)).collect();
        weights.extend(situation.old_set().iter().filter(|i| i.weight > 0).map(|i| (i.id, 0)));
        return Step::Weights(weights);
    }
    let drained = situation.drained(scale_down_delay_ms.max(DRAIN_MS));
    if !drained.is_empty() {
        return Step::Stop(drained);
    }
    if situation.old_set().is_empty() {
        return Step::Done;
    }
    Step::Wait(format!("promoted; the old set stays for {} s for an instant rollback", scale_down_delay_ms / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_proto::NodeId;

    fn instance(id: u64, revision: u64, health: InstanceHealth, weight: u32) -> InstanceRecord {
        InstanceRecord {
            id,
            env: 1,
            revision,
            node: NodeId(1),
            host: "127.0.0.1".into(),
            port: Some(1000 + id as u16),
            pid: None,
            health,
            weight,
            healthy_since_ms: (health == InstanceHealth::Healthy).then_some(0),
            retiring_since_ms: None,
            message: None,
            created_ms: 0,
        }
    }

    fn step(strategy: &Strategy, instances: &[InstanceRecord], now_ms: u64) -> Step {
        next_step(&Situation {
            target: 2,
            desired: 2,
            strategy,
            instances,
            promoted: false,
            now_ms,
        })
    }

    #[test]
    fn a_rolling_update_surges_then_retires_without_going_below_the_desired_count() {
        use InstanceHealth::*;
        let rolling = Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_ms: 1000 };
        let mut set = vec![instance(1, 1, Healthy, 1), instance(2, 1, Healthy, 1)];
        assert_eq!(step(&rolling, &set, 10), Step::Start { count: 1, weight: 1 }, "one above the desired count");
        set.push(instance(3, 2, Starting, 1));
        assert!(matches!(step(&rolling, &set, 10), Step::Wait(_)), "nothing retires before the new one is ready");
        set[2].health = Healthy;
        set[2].healthy_since_ms = Some(10);
        assert!(matches!(step(&rolling, &set, 500), Step::Wait(_)), "min_ready has not passed");
        assert_eq!(step(&rolling, &set, 1010), Step::Weights(vec![(1, 0)]));
        set[0].weight = 0;
        set[0].retiring_since_ms = Some(1010);
        assert_eq!(step(&rolling, &set, 1020), Step::Start { count: 1, weight: 1 }, "the retiring one leaves room");
        assert_eq!(step(&rolling, &set, 1010 + DRAIN_MS), Step::Stop(vec![1]), "stopped once drained");
        let done = [instance(3, 2, Healthy, 1), instance(4, 2, Healthy, 1)];
        assert_eq!(step(&rolling, &done, 5000), Step::Done);
        let failing = [instance(1, 1, Healthy, 1), instance(3, 2, Unhealthy, 1)];
        assert!(matches!(step(&rolling, &failing, 10), Step::Failed(_)));
    }

    #[test]
    fn blue_green_switches_all_traffic_at_once_when_the_new_set_is_ready() {
        use InstanceHealth::*;
        let blue_green = Strategy::BlueGreen { auto_promote: true, scale_down_delay_ms: 5000 };
        let mut set = vec![instance(1, 1, Healthy, 1), instance(2, 1, Healthy, 1)];
        assert_eq!(step(&blue_green, &set, 10), Step::Start { count: 2, weight: 0 });
        set.push(instance(3, 2, Healthy, 0));
        set.push(instance(4, 2, Starting, 0));
        assert!(matches!(step(&blue_green, &set, 10), Step::Wait(_)));
        set[3].health = Healthy;
        set[3].healthy_since_ms = Some(10);
        assert_eq!(step(&blue_green, &set, 20), Step::Weights(vec![(3, 1), (4, 1), (1, 0), (2, 0)]));
        let manual = Strategy::BlueGreen { auto_promote: false, scale_down_delay_ms: 5000 };
        assert_eq!(step(&manual, &set, 20), Step::AwaitPromotion);
    }
}

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
    /// A canary step's traffic is in place: after its pause, the new set's error rate decides
    /// between the next step and an abort.
    Analyze {
        /// The step's index in the strategy's steps.
        index: usize,
        /// Its percentage of traffic on the new set.
        share: u32,
    },
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
        Strategy::Canary { steps, .. } => canary(situation, steps),
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

/// The instances the new set still lacks, started beside the old set and out of traffic (they
/// are reachable at the preview route while they wait).
fn start_beside(situation: &Situation) -> Option<Step> {
    let (desired, started) = (situation.desired as usize, situation.new_set().len());
    (started < desired).then(|| Step::Start {
        count: (desired - started) as u32,
        weight: 0,
    })
}

fn blue_green(situation: &Situation, promote: bool, scale_down_delay_ms: u64) -> Step {
    if let Some(start) = start_beside(situation) {
        return start;
    }
    let desired = situation.desired as usize;
    let new = situation.new_set();
    let ready = new.iter().filter(|i| situation.is_ready(i, 0)).count();
    let old = situation.old_set();
    let switched = new.iter().all(|i| i.weight > 0) && old.iter().all(|i| i.weight == 0);
    if !switched {
        if ready < desired {
            return Step::Wait(format!("{ready} of {desired} new instances healthy"));
        }
        if !promote {
            return Step::AwaitPromotion;
        }
        // One change moves all traffic: the new set in, the old set out.
        return Step::Weights(switch_weights(&new, &old, 100));
    }
    let waiting = format!("promoted; the old set stays for {} s for an instant rollback", scale_down_delay_ms / 1000);
    retire_old_set(situation, scale_down_delay_ms.max(DRAIN_MS), waiting)
}

/// Once all traffic is on the new set: stops the old instances out of traffic for `delay_ms`,
/// and is done when none is left.
fn retire_old_set(situation: &Situation, delay_ms: u64, waiting: String) -> Step {
    let drained = situation.drained(delay_ms);
    if !drained.is_empty() {
        return Step::Stop(drained);
    }
    if situation.old_set().is_empty() {
        return Step::Done;
    }
    Step::Wait(waiting)
}

fn canary(situation: &Situation, steps: &[u32]) -> Step {
    if let Some(start) = start_beside(situation) {
        return start;
    }
    let desired = situation.desired as usize;
    let new = situation.new_set();
    let ready = new.iter().filter(|i| situation.is_ready(i, 0)).count();
    if ready < desired {
        return Step::Wait(format!("{ready} of {desired} canary instances healthy"));
    }
    let old: Vec<&InstanceRecord> = situation.old_set();
    let share = new_share(&new, &old);
    let first = steps.first().copied().unwrap_or(100);
    let Some(index) = steps.iter().position(|step| *step == share).filter(|_| share > 0) else {
        // Not on a step yet (or no more): the first step above the current share.
        let next = steps.iter().copied().find(|step| *step > share).unwrap_or(first);
        return Step::Weights(switch_weights(&new, &old, next));
    };
    if share < 100 {
        return Step::Analyze { index, share };
    }
    retire_old_set(situation, DRAIN_MS, "canary at 100%: the old set drains".into())
}

/// The percentage of traffic weight on `new` (100 when nothing else serves).
fn new_share(new: &[&InstanceRecord], old: &[&InstanceRecord]) -> u32 {
    let new_weight: u64 = new.iter().map(|i| i.weight as u64).sum();
    let old_weight: u64 = old.iter().filter(|i| i.health == InstanceHealth::Healthy).map(|i| i.weight as u64).sum();
    if new_weight + old_weight == 0 {
        return 0;
    }
    ((new_weight * 100 + (new_weight + old_weight) / 2) / (new_weight + old_weight)) as u32
}

/// Weights that put `share` percent of traffic on `new` and the rest on `old`.
pub(crate) fn switch_weights(new: &[&InstanceRecord], old: &[&InstanceRecord], share: u32) -> Vec<(u64, u32)> {
    let serving_old: Vec<&&InstanceRecord> = old.iter().filter(|i| i.retiring_since_ms.is_none() || i.weight > 0).collect();
    let (new_count, old_count) = (new.len().max(1) as u32, serving_old.len().max(1) as u32);
    let (new_weight, old_weight) = if share >= 100 { (1, 0) } else { (share * old_count, (100 - share) * new_count) };
    let mut weights: Vec<(u64, u32)> = new.iter().map(|i| (i.id, new_weight)).collect();
    weights.extend(serving_old.iter().map(|i| (i.id, old_weight)));
    weights
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

    #[test]
    fn a_canary_moves_traffic_in_steps_and_analyzes_each() {
        use InstanceHealth::*;
        let canary = Strategy::Canary { steps: vec![25, 100], pause_ms: 1000, max_error_rate: 0.01, max_latency_ms: None };
        let mut set = vec![instance(1, 1, Healthy, 1), instance(2, 1, Healthy, 1), instance(3, 2, Healthy, 0), instance(4, 2, Healthy, 0)];
        assert_eq!(step(&canary, &set, 10), Step::Weights(vec![(3, 50), (4, 50), (1, 150), (2, 150)]), "25% on the canary");
        for (instance, weight) in [(3, 50), (4, 50), (1, 150), (2, 150)] {
            set.iter_mut().find(|i| i.id == instance).unwrap().weight = weight;
        }
        assert_eq!(step(&canary, &set, 20), Step::Analyze { index: 0, share: 25 });
        for (instance, weight) in [(3, 1), (4, 1), (1, 0), (2, 0)] {
            let record = set.iter_mut().find(|i| i.id == instance).unwrap();
            record.weight = weight;
            record.retiring_since_ms = (weight == 0).then_some(30);
        }
        assert!(matches!(step(&canary, &set, 40), Step::Wait(_)), "the old set drains");
        assert_eq!(step(&canary, &set, 30 + DRAIN_MS), Step::Stop(vec![1, 2]));
    }
}

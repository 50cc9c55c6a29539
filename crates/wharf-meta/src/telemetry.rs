//! Raft's state as Prometheus gauges, updated from openraft's metrics watch.
//!
//! [`export_raft_metrics`] waits on the watch openraft publishes after every change of term,
//! leader, log or membership, and sets the gauges from it: no timer, so a gauge is as fresh
//! as Raft's own view. It ends when Raft stops (the watch closes).
//!
//! Gauges (every member sets its own): `wharf_raft_term`, `wharf_raft_leader` (the leader's id,
//! 0 while there is none), `wharf_raft_has_leader` (1 or 0), `wharf_raft_is_leader`,
//! `wharf_raft_voter`, `wharf_raft_last_log_index`, `wharf_raft_applied_index`,
//! `wharf_raft_members`. `wharf_raft_commit_index` is set at the leader only: openraft 0.9
//! publishes no commit index, and the leader derives it from what a majority of voters has
//! replicated; a follower's applied index trails it by at most the entries in flight.

use openraft::ServerState;

use crate::Meta;

/// Keeps the Raft gauges of `meta` current until its Raft stops.
pub async fn export_raft_metrics(meta: Meta) {
    let mut watch = meta.inner.raft.metrics();
    loop {
        let raft = watch.borrow_and_update().clone();
        let membership = raft.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let leads = raft.state == ServerState::Leader;
        metrics::gauge!("wharf_raft_term").set(raft.current_term as f64);
        metrics::gauge!("wharf_raft_leader").set(raft.current_leader.unwrap_or(0) as f64);
        metrics::gauge!("wharf_raft_has_leader").set(if raft.current_leader.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!("wharf_raft_is_leader").set(if leads { 1.0 } else { 0.0 });
        metrics::gauge!("wharf_raft_voter").set(if voters.contains(&raft.id) { 1.0 } else { 0.0 });
        metrics::gauge!("wharf_raft_members").set(membership.nodes().count() as f64);
        metrics::gauge!("wharf_raft_last_log_index").set(raft.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("wharf_raft_applied_index").set(raft.last_applied.map_or(0, |id| id.index) as f64);
        if leads {
            let matched = |id: &u64| {
                if *id == raft.id {
                    raft.last_log_index
                } else {
                    let replication = raft.replication.as_ref()?;
                    replication.get(id).copied().flatten().map(|log_id| log_id.index)
                }
            };
            if let Some(commit) = majority_index(voters.iter().map(|id| matched(id).unwrap_or(0)).collect()) {
                metrics::gauge!("wharf_raft_commit_index").set(commit as f64);
            }
        }
        if watch.changed().await.is_err() {
            return;
        }
    }
}

/// The highest index that a majority of `matched` (one entry per voter) has reached.
fn majority_index(mut matched: Vec<u64>) -> Option<u64> {
    if matched.is_empty() {
        return None;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched.get(matched.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::majority_index;

    #[test]
    fn the_commit_index_is_what_a_majority_holds() {
        assert_eq!(majority_index(vec![]), None);
        assert_eq!(majority_index(vec![7]), Some(7));
        assert_eq!(majority_index(vec![9, 5, 7]), Some(7));
        assert_eq!(majority_index(vec![9, 5, 7, 3]), Some(5));
        assert_eq!(majority_index(vec![9, 9, 1, 1, 9]), Some(9));
    }
}

//! Every key space of the metadata state tree, in one place.
//!
//! The system keys (what has been applied, the membership, the current snapshot, the data
//! format) sit under prefixes below [`FIRST_RECORD_PREFIX`]; records of the domains above it:
//! the cluster's own (members, repositories, push events, tokens) here, CI's in
//! [`wharf_ci::state::keys`], deployments' in [`wharf_deploy::keys`]. Snapshots carry the
//! record spaces only. A prefix, once used, is never given to another kind of record.

use openraft::{BasicNode, LogId, StoredMembership};
use wharf_proto::store::KeySpace;
use wharf_proto::{NodeRecord, Principal, PushEvent, RepoRecord};

/// The version of the data directory's layout that this build writes. 1: records in typed key
/// spaces of the `state` tree, values in the versioned codec. (0 was the in-memory state
/// snapshotted as JSON; it is migrated on start.)
pub const DATA_FORMAT: u32 = 1;

/// The data format of this store.
pub const FORMAT: KeySpace<u8, u32> = KeySpace::new(0x00, "system.format");
/// The last log id applied.
pub const APPLIED: KeySpace<u8, Option<LogId<u64>>> = KeySpace::new(0x01, "system.applied");
/// The last membership applied.
pub const MEMBERSHIP: KeySpace<u8, StoredMembership<u64, BasicNode>> = KeySpace::new(0x02, "system.membership");
// 0x03 held the current snapshot's metadata while format 1 was being written; it now lives in
// the snapshot file's header. Not to be reused.
/// Present while a snapshot from the leader is being installed.
pub const INSTALLING: KeySpace<u8, u64> = KeySpace::new(0x04, "system.installing");

/// The first prefix of record key spaces; everything from here on travels in snapshots.
pub const FIRST_RECORD_PREFIX: u8 = 0x08;

/// Members by id.
pub const NODES: KeySpace<u64, NodeRecord> = KeySpace::new(0x08, "cluster.nodes");
/// Repositories by name.
pub const REPOS: KeySpace<String, RepoRecord> = KeySpace::new(0x09, "cluster.repos");
/// Index: repository id to name.
pub const REPOS_BY_ID: KeySpace<u64, String> = KeySpace::new(0x0A, "cluster.repos_by_id");
/// Push events by `(repository, seq)`.
pub const EVENTS: KeySpace<(u64, u64), PushEvent> = KeySpace::new(0x0B, "cluster.events");
/// Principals by token hash.
pub const TOKENS: KeySpace<String, Principal> = KeySpace::new(0x0C, "cluster.tokens");
/// Recent pushes by push id: their place in [`RECENT_PUSH_ORDER`] and the events recorded.
pub const RECENT_PUSHES: KeySpace<String, (u64, Vec<PushEvent>)> = KeySpace::new(0x0D, "cluster.recent_pushes");
/// Recent push ids, oldest first, so the oldest is forgotten first.
pub const RECENT_PUSH_ORDER: KeySpace<u64, String> = KeySpace::new(0x0E, "cluster.recent_push_order");
/// The next repository id, and the next place in [`RECENT_PUSH_ORDER`].
pub const SEQUENCES: KeySpace<String, u64> = KeySpace::new(0x0F, "cluster.sequences");

/// Every key space of the store: prefix and name.
pub fn all() -> Vec<(u8, &'static str)> {
    let system = [
        (FORMAT.prefix, FORMAT.name),
        (APPLIED.prefix, APPLIED.name),
        (MEMBERSHIP.prefix, MEMBERSHIP.name),
        (INSTALLING.prefix, INSTALLING.name),
    ];
    let cluster = [
        (NODES.prefix, NODES.name),
        (REPOS.prefix, REPOS.name),
        (REPOS_BY_ID.prefix, REPOS_BY_ID.name),
        (EVENTS.prefix, EVENTS.name),
        (TOKENS.prefix, TOKENS.name),
        (RECENT_PUSHES.prefix, RECENT_PUSHES.name),
        (RECENT_PUSH_ORDER.prefix, RECENT_PUSH_ORDER.name),
        (SEQUENCES.prefix, SEQUENCES.name),
    ];
    system
        .into_iter()
        .chain(cluster)
        .chain(wharf_ci::state::keys::ALL.iter().copied())
        .chain(wharf_deploy::keys::ALL.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_space_has_its_own_prefix() {
        let all = super::all();
        let mut prefixes: Vec<u8> = all.iter().map(|(prefix, _)| *prefix).collect();
        prefixes.sort();
        prefixes.dedup();
        assert_eq!(prefixes.len(), all.len(), "two key spaces share a prefix: {all:?}");
        for (prefix, name) in all {
            assert_eq!(prefix < super::FIRST_RECORD_PREFIX, name.starts_with("system."), "{name}");
        }
    }
}

//! Data directories of format 0, and their migration to the current format on open.
//!
//! Format 0 (Wharf before the records moved to sled key spaces) kept the whole applied state
//! in memory and made it durable as one JSON snapshot in the `raft_snapshot` tree; log
//! entries and the vote were JSON too. [`upgrade`] recognises such a directory (no format
//! key, but a log or a snapshot), then, before Raft starts: re-encodes the log and the vote
//! with the codec, writes the snapshot's records into the key spaces with its applied log id
//! and membership, cuts a snapshot file of them (the log before it may have been purged),
//! drops the old tree and records the format. It is idempotent until the format key is
//! written, so a crash midway is redone at the next start.
//!
//! The types below mirror format 0's JSON exactly; they are read here and nowhere else.

use std::collections::{BTreeMap, VecDeque};

use openraft::{BasicNode, Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use serde::Deserialize;
use wharf_proto::deploy::{DeploymentRecord, EnvironmentRecord, InstanceRecord};
use wharf_proto::store::RecordsMut;
use wharf_proto::{codec, JobRecord, NodeRecord, PipelineRecord, Principal, PushEvent, RepoId, RepoRecord, Variable};

use crate::keys::{APPLIED, DATA_FORMAT, FORMAT, MEMBERSHIP};
use crate::log_store::{COMMITTED, LAST_PURGED, VOTE};
use crate::state_machine::StateMachineStore;
use crate::store::{ApplyBatch, TreeRecords};
use crate::{MetaError, TypeConfig};

/// Brings the store in `db` to [`DATA_FORMAT`], or refuses a newer one.
pub(crate) fn upgrade(db: &sled::Db, state_machine: &StateMachineStore) -> Result<(), MetaError> {
    let mut records = state_machine.records.clone();
    match FORMAT.get(&records, &0) {
        Some(format) if format == DATA_FORMAT => return Ok(()),
        Some(found) if found > DATA_FORMAT => {
            return Err(MetaError::NewerFormat {
                found,
                known: DATA_FORMAT,
            })
        }
        Some(found) => return Err(MetaError::Migration(format!("unknown older format {found}"))),
        None => {}
    }
    let log = db.open_tree("raft_log").map_err(MetaError::storage("opening the log"))?;
    let raft_meta = db.open_tree("raft_meta").map_err(MetaError::storage("opening the log"))?;
    let has_snapshot = db
        .tree_names()
        .iter()
        .any(|name| name.as_ref() == b"raft_snapshot");
    if has_snapshot || !log.is_empty() || !raft_meta.is_empty() {
        tracing::info!("migrating the metadata from format 0 to format {DATA_FORMAT}");
        migrate_log(&log, &raft_meta)?;
        if has_snapshot {
            let snapshots = db.open_tree("raft_snapshot").map_err(MetaError::storage("opening the old snapshot"))?;
            if let Some(bytes) = snapshots.get(b"current").map_err(MetaError::storage("reading the old snapshot"))? {
                migrate_snapshot(&bytes, state_machine)?;
            }
            db.drop_tree("raft_snapshot").map_err(MetaError::storage("dropping the old snapshot"))?;
        }
    }
    FORMAT.put(&mut records, &0, &DATA_FORMAT);
    db.flush().map_err(MetaError::storage("flushing the migrated metadata"))?;
    Ok(())
}

/// Re-encodes log entries and the log's metadata from JSON. Values that already decode with
/// the codec (a migration redone after a crash) are left alone.
fn migrate_log(log: &sled::Tree, raft_meta: &sled::Tree) -> Result<(), MetaError> {
    let mut batch = sled::Batch::default();
    for item in log.iter() {
        let (key, value) = item.map_err(MetaError::storage("reading the log"))?;
        if codec::decode::<Entry<TypeConfig>>(&value).is_ok() {
            continue;
        }
        let entry: Entry<TypeConfig> = from_json(&value, "a log entry")?;
        batch.insert(key, encode(&entry)?);
    }
    log.apply_batch(batch).map_err(MetaError::storage("rewriting the log"))?;
    recode::<Vote<u64>>(raft_meta, VOTE)?;
    recode::<Option<LogId<u64>>>(raft_meta, COMMITTED)?;
    recode::<LogId<u64>>(raft_meta, LAST_PURGED)?;
    Ok(())
}

fn recode<T: serde::Serialize + serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<(), MetaError> {
    let Some(value) = tree.get(key).map_err(MetaError::storage("reading the log metadata"))? else {
        return Ok(());
    };
    if codec::decode::<T>(&value).is_ok() {
        return Ok(());
    }
    let decoded: T = from_json(&value, "the log metadata")?;
    tree.insert(key, encode(&decoded)?).map_err(MetaError::storage("rewriting the log metadata"))?;
    Ok(())
}

fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, MetaError> {
    serde_json::from_slice(bytes).map_err(|e| MetaError::Migration(format!("{what} is not format 0 JSON: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, MetaError> {
    codec::encode(value).map_err(|source| MetaError::Codec {
        what: "a migrated value",
        source,
    })
}

/// Format 0's snapshot as stored.
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// Format 0's whole state.
#[derive(Deserialize)]
struct State {
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    nodes: BTreeMap<u64, NodeRecord>,
    repos: BTreeMap<String, RepoRecord>,
    next_repo_id: u64,
    events: BTreeMap<u64, Vec<PushEvent>>,
    tokens: BTreeMap<String, Principal>,
    #[serde(default)]
    recent_pushes: BTreeMap<String, Vec<PushEvent>>,
    #[serde(default)]
    recent_order: VecDeque<String>,
    #[serde(default)]
    ci: CiState,
    #[serde(default)]
    deploy: DeployState,
}

#[derive(Deserialize, Default)]
struct CiState {
    pipelines: BTreeMap<u64, PipelineRecord>,
    jobs: BTreeMap<u64, JobRecord>,
    next_pipeline_id: u64,
    next_job_id: u64,
    variables: BTreeMap<u64, BTreeMap<String, Variable>>,
}

#[derive(Deserialize, Default)]
struct DeployState {
    environments: BTreeMap<u64, EnvironmentRecord>,
    deployments: BTreeMap<u64, DeploymentRecord>,
    instances: BTreeMap<u64, InstanceRecord>,
    next_id: u64,
}

/// Writes format 0's snapshot into the key spaces and cuts a snapshot file of them.
fn migrate_snapshot(bytes: &[u8], state_machine: &StateMachineStore) -> Result<(), MetaError> {
    let stored: StoredSnapshot = from_json(bytes, "the snapshot")?;
    let state: State = from_json(&stored.data, "the snapshot's state")?;
    let tree = state_machine.records.tree.clone();
    let mut batch = ApplyBatch::new(&tree);
    import(&mut batch, state);
    let batch = batch
        .finish()
        .map_err(|e| MetaError::Migration(format!("writing the records: {e}")))?;
    tree.apply_batch(batch).map_err(MetaError::storage("writing the migrated records"))?;
    let mut records = TreeRecords { tree };
    APPLIED.put(&mut records, &0, &stored.meta.last_log_id);
    MEMBERSHIP.put(&mut records, &0, &stored.meta.last_membership);
    state_machine
        .write_snapshot(&stored.meta)
        .map_err(MetaError::io("writing the migrated snapshot"))?;
    Ok(())
}

fn import(store: &mut dyn RecordsMut, state: State) {
    // The state's own applied id and membership equal the snapshot meta's; the caller writes
    // those from the meta.
    let _ = (state.last_applied, state.last_membership);
    let mut recent = state.recent_pushes;
    let recent_pushes: Vec<(String, Vec<PushEvent>)> = state
        .recent_order
        .into_iter()
        .filter_map(|id| recent.remove(&id).map(|events| (id, events)))
        .collect();
    crate::records::import(
        store,
        state.nodes.into_values(),
        state.repos.into_values(),
        state.next_repo_id,
        state.events.into_values().flatten(),
        state.tokens,
        recent_pushes,
    );
    let variables = state
        .ci
        .variables
        .into_iter()
        .flat_map(|(repo, vars)| vars.into_values().map(move |v| (RepoId(repo), v)));
    wharf_ci::state::import(
        store,
        state.ci.pipelines.into_values(),
        state.ci.jobs.into_values(),
        variables,
        state.ci.next_pipeline_id,
        state.ci.next_job_id,
    );
    wharf_deploy::import(
        store,
        state.deploy.environments.into_values(),
        state.deploy.deployments.into_values(),
        state.deploy.instances.into_values(),
        state.deploy.next_id,
    );
}

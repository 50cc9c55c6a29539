//! The Raft state machine: the applied [`State`] in memory, its snapshots in sled.
//!
//! The state is shared with [`crate::Meta::directory`] through one `RwLock`, so routing and
//! token checks read it without a Raft round trip. It is made durable by snapshots (the
//! `raft_snapshot` tree): after a restart the last snapshot is loaded and openraft re-applies
//! the committed log entries that came after it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::command::{CommandOutcome, CommandResult, SharedState, State};
use crate::TypeConfig;

const CURRENT: &[u8] = b"current";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// A snapshot as stored: its metadata and the serialized state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The state machine store. Clones share the state and the snapshot tree.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) state: Arc<SharedState>,
    db: sled::Db,
    snapshots: sled::Tree,
}

impl StateMachineStore {
    /// Opens the snapshot tree in `db` and loads the last snapshot, if any.
    pub fn open(db: &sled::Db) -> Result<StateMachineStore, String> {
        let snapshots = db.open_tree("raft_snapshot").map_err(|e| e.to_string())?;
        let state = match snapshots.get(CURRENT).map_err(|e| e.to_string())? {
            Some(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                serde_json::from_slice(&stored.data).map_err(|e| e.to_string())?
            }
            None => State::default(),
        };
        Ok(StateMachineStore {
            state: Arc::new(SharedState::new(state)),
            db: db.clone(),
            snapshots,
        })
    }

    async fn save(&self, snapshot: &StoredSnapshot) -> StorageResult<()> {
        let bytes = serde_json::to_vec(snapshot).map_err(snapshot_error)?;
        self.snapshots.insert(CURRENT, bytes).map_err(snapshot_error)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)?;
        Ok(())
    }

}

fn snapshot_error(error: impl ToString) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::error(error.to_string())).into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (data, last_log_id, last_membership) = {
            let state = self.state.read();
            let data = serde_json::to_vec(&*state).map_err(snapshot_error)?;
            (data, state.last_applied, state.last_membership.clone())
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}",
                last_log_id.map(|id| id.index).unwrap_or(0),
                crate::now_ms()
            ),
        };
        let stored = StoredSnapshot { meta, data };
        self.save(&stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let state = self.state.read();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write();
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => Ok(CommandOutcome::Done),
                EntryPayload::Normal(command) => state.apply(command),
                EntryPayload::Membership(membership) => {
                    state.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(CommandOutcome::Done)
                }
            });
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let installed: State = serde_json::from_slice(&data).map_err(snapshot_error)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save(&stored).await?;
        *self.state.write() = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self.snapshots.get(CURRENT).map_err(snapshot_error)? else {
            return Ok(None);
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(snapshot_error)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

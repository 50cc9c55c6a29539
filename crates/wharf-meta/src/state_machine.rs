//! The Raft state machine: the records in sled, applied in atomic batches, and snapshots as
//! files that stream the record key spaces.
//!
//! - **Apply.** Each call of `apply` runs its commands through [`crate::records::apply`]
//!   over one [`ApplyBatch`], then writes every change together with the last applied log id
//!   and membership in one atomic sled batch. A reader (the directory) sees all of a call's
//!   commands or none. Nothing is kept in memory: a restarted node reads from disk, through
//!   sled's cache, whose size is bounded by [`crate::MetaConfig::cache_bytes`].
//! - **Snapshots.** A snapshot is a file in `snapshots/` beside the database: a header with
//!   its metadata (last log id, membership), then every record key space entry as
//!   length-prefixed key and value, written by iterating the tree. The metadata travels inside
//!   the file, so an atomic rename makes a new snapshot current whole: a crash can never pair
//!   one snapshot's metadata with another's data. It is cut while applying waits (openraft asks for the builder on the state
//!   machine's own task), so it matches its log id exactly; openraft streams it to a follower
//!   in chunks. Installing one replaces the record spaces; an install cut short by a crash
//!   is detected at the next start, which refuses to serve a half-installed state.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};

use wharf_proto::codec;

use crate::keys::{APPLIED, FIRST_RECORD_PREFIX, INSTALLING, MEMBERSHIP};
use crate::records::{CommandOutcome, CommandResult};
use crate::store::{ApplyBatch, TreeRecords};
use crate::TypeConfig;

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The first bytes of a snapshot file, then its format version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"WHARFSNP";
const SNAPSHOT_FORMAT: u8 = 1;
/// The file of the current snapshot, in the snapshot directory.
const CURRENT_FILE: &str = "current.snap";
/// Entries written to sled per batch while installing a snapshot.
const INSTALL_BATCH: usize = 10_000;

/// The state machine store. Clones share the tree.
#[derive(Clone)]
pub struct StateMachineStore {
    pub(crate) records: TreeRecords,
    db: sled::Db,
    snapshot_dir: PathBuf,
}

impl StateMachineStore {
    /// Opens the state tree in `db`; snapshots go to `snapshot_dir`.
    pub fn open(db: &sled::Db, snapshot_dir: &Path) -> Result<StateMachineStore, crate::MetaError> {
        let tree = db.open_tree("state").map_err(crate::MetaError::storage("opening the state tree"))?;
        std::fs::create_dir_all(snapshot_dir).map_err(crate::MetaError::io("creating the snapshot directory"))?;
        let records = TreeRecords { tree };
        if INSTALLING.contains(&records, &0) {
            return Err(crate::MetaError::Interrupted);
        }
        Ok(StateMachineStore {
            records,
            db: db.clone(),
            snapshot_dir: snapshot_dir.to_owned(),
        })
    }

    fn tree(&self) -> &sled::Tree {
        &self.records.tree
    }

    /// Where a snapshot sent by the leader is received (one at a time).
    fn receiving_path(&self) -> PathBuf {
        self.snapshot_dir.join("receiving.snap")
    }

    fn current_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_FILE)
    }

    /// Writes the record spaces to the current snapshot file, as of now.
    pub(crate) fn write_snapshot(&self, meta: &SnapshotMeta<u64, BasicNode>) -> Result<(), std::io::Error> {
        let partial = self.snapshot_dir.join("building.snap");
        {
            let mut out = BufWriter::new(std::fs::File::create(&partial)?);
            out.write_all(SNAPSHOT_MAGIC)?;
            out.write_all(&[SNAPSHOT_FORMAT])?;
            write_chunk(&mut out, &codec::encode(meta).map_err(std::io::Error::other)?)?;
            for entry in self.tree().range(vec![FIRST_RECORD_PREFIX]..) {
                let (key, value) = entry.map_err(std::io::Error::other)?;
                write_chunk(&mut out, &key)?;
                write_chunk(&mut out, &value)?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&partial, self.current_path())?;
        // The log up to this snapshot may be purged next: the records it covers must be on
        // disk first (applying does not flush; the log's own flushes usually have).
        self.db.flush().map_err(std::io::Error::other)?;
        Ok(())
    }

    /// Replaces the record spaces with the snapshot file at `path`.
    fn load_snapshot(&self, path: &Path, meta: &SnapshotMeta<u64, BasicNode>) -> Result<(), std::io::Error> {
        let tree = self.tree();
        let mut records = self.records.clone();
        INSTALLING.put(&mut records, &0, &meta.last_log_id.map_or(0, |id| id.index));
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for entry in tree.range(vec![FIRST_RECORD_PREFIX]..) {
            let (key, _) = entry.map_err(std::io::Error::other)?;
            batch.remove(key);
            pending += 1;
            if pending == INSTALL_BATCH {
                tree.apply_batch(std::mem::take(&mut batch)).map_err(std::io::Error::other)?;
                pending = 0;
            }
        }
        let mut input = BufReader::new(std::fs::File::open(path)?);
        let written_for = read_header(&mut input)?;
        if written_for.last_log_id != meta.last_log_id {
            return Err(std::io::Error::other(format!(
                "the snapshot file is of {:?}, not of {:?}",
                written_for.last_log_id, meta.last_log_id
            )));
        }
        while let Some(key) = read_chunk(&mut input)? {
            let value = read_chunk(&mut input)?.ok_or_else(|| std::io::Error::other("snapshot ends inside an entry"))?;
            if key.first().is_none_or(|prefix| *prefix < FIRST_RECORD_PREFIX) {
                return Err(std::io::Error::other("snapshot holds a system key"));
            }
            batch.insert(key, value);
            pending += 1;
            if pending >= INSTALL_BATCH {
                tree.apply_batch(std::mem::take(&mut batch)).map_err(std::io::Error::other)?;
                pending = 0;
            }
        }
        tree.apply_batch(batch).map_err(std::io::Error::other)?;
        APPLIED.put(&mut records, &0, &meta.last_log_id);
        MEMBERSHIP.put(&mut records, &0, &meta.last_membership);
        if path != self.current_path() {
            std::fs::rename(path, self.current_path())?;
        }
        INSTALLING.remove(&mut records, &0);
        self.db.flush().map_err(std::io::Error::other)?;
        Ok(())
    }

    async fn open_current(&self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let path = self.current_path();
        let meta = match std::fs::File::open(&path) {
            Ok(file) => read_header(&mut BufReader::new(file)).map_err(snapshot_error)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(snapshot_error(error)),
        };
        // The whole file, header included, is what a follower receives and keeps.
        let file = tokio::fs::File::open(&path).await.map_err(snapshot_error)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Reads a snapshot file's header and returns the metadata it was written for.
fn read_header(input: &mut impl Read) -> std::io::Result<SnapshotMeta<u64, BasicNode>> {
    let mut magic = [0u8; 9];
    input.read_exact(&mut magic)?;
    if &magic[..8] != SNAPSHOT_MAGIC || magic[8] != SNAPSHOT_FORMAT {
        return Err(std::io::Error::other(format!(
            "not a Wharf snapshot of format {SNAPSHOT_FORMAT} (header {magic:02x?}): is the leader a newer Wharf?"
        )));
    }
    let meta = read_chunk(input)?.ok_or_else(|| std::io::Error::other("snapshot ends in its header"))?;
    codec::decode(&meta).map_err(std::io::Error::other)
}

fn write_chunk(out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    out.write_all(&len.to_be_bytes())?;
    out.write_all(bytes)
}

/// The next length-prefixed chunk, or `None` at a clean end of file.
fn read_chunk(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
    input.read_exact(&mut bytes)?;
    Ok(Some(bytes))
}

fn snapshot_error(error: impl ToString) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, AnyError::error(error.to_string())).into()
}

fn apply_error(error: impl ToString) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::error(error.to_string())).into()
}

/// A snapshot cut when openraft asked for the builder; building only hands it over.
pub struct CutSnapshot {
    store: StateMachineStore,
    cut: Result<(), String>,
}

impl RaftSnapshotBuilder<TypeConfig> for CutSnapshot {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        self.cut.clone().map_err(snapshot_error)?;
        self.store
            .open_current()
            .await?
            .ok_or_else(|| snapshot_error("the snapshot just cut is missing"))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = CutSnapshot;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let applied = APPLIED.get(&self.records, &0).flatten();
        let membership = MEMBERSHIP.get(&self.records, &0).unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tree = self.tree().clone();
        let mut batch = ApplyBatch::new(&tree);
        let mut results = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => Ok(CommandOutcome::Done),
                EntryPayload::Normal(command) => {
                    let result = crate::records::apply(&mut batch, command);
                    batch.end_command(result.is_ok());
                    result
                }
                EntryPayload::Membership(membership) => {
                    MEMBERSHIP.put(&mut batch, &0, &StoredMembership::new(Some(entry.log_id), membership));
                    Ok(CommandOutcome::Done)
                }
            });
        }
        if last.is_some() {
            APPLIED.put(&mut batch, &0, &last);
        }
        let batch = batch.finish().map_err(apply_error)?;
        tree.apply_batch(batch).map_err(apply_error)?;
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Cut here, on the state machine's task, so no apply runs while the tree is read.
        let store = self.clone();
        let cut = tokio::task::spawn_blocking(move || {
            let last_log_id = APPLIED.get(&store.records, &0).flatten();
            let meta = SnapshotMeta {
                last_log_id,
                last_membership: MEMBERSHIP.get(&store.records, &0).unwrap_or_default(),
                snapshot_id: format!("{}-{}", last_log_id.map_or(0, |id| id.index), crate::now_ms()),
            };
            store.write_snapshot(&meta).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(error) = &cut {
            tracing::error!(%error, "cutting a metadata snapshot");
        }
        CutSnapshot {
            store: self.clone(),
            cut,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<tokio::fs::File>> {
        let path = self.receiving_path();
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(snapshot_error)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> StorageResult<()> {
        // openraft wrote the whole snapshot into the file `begin_receiving_snapshot` opened.
        snapshot.sync_all().await.map_err(snapshot_error)?;
        drop(snapshot);
        let received = self.receiving_path();
        let store = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || store.load_snapshot(&received, &meta))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.open_current().await
    }
}

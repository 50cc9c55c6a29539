//! The Raft log, vote and commit index, in sled.
//!
//! Entries live in the `raft_log` tree under their index as 8 big-endian bytes, so sled's
//! key order is log order; the vote, the committed id and the last purged id live in the
//! `raft_meta` tree. Values are encoded with the one versioned codec
//! ([`wharf_proto::codec`]). An append is reported durable to openraft only after a blocking
//! `flush` (sled's `flush_async` can deadlock under concurrency).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use wharf_proto::codec;

use crate::TypeConfig;

pub(crate) const VOTE: &[u8] = b"vote";
pub(crate) const COMMITTED: &[u8] = b"committed";
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The log store. Cheap to clone: the trees are shared.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// Opens the log trees in `db`.
    pub fn open(db: &sled::Db) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let Some(bytes) = self.meta.get(key).map_err(read_error)? else {
            return Ok(None);
        };
        codec::decode(&bytes).map(Some).map_err(read_error)
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = codec::encode(value).map_err(write_error)?;
        self.meta.insert(key, bytes).map_err(write_error)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    async fn flush(&self) -> StorageResult<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(write_error)?
            .map_err(write_error)?;
        Ok(())
    }

    fn remove_from(&self, first: u64, last: Option<u64>) -> StorageResult<()> {
        let end = match last {
            Some(last) => Bound::Included(key(last)),
            None => Bound::Unbounded,
        };
        let mut batch = sled::Batch::default();
        for item in self.log.range((Bound::Included(key(first)), end)) {
            let (k, _) = item.map_err(write_error)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_error)
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_error(error: impl ToString) -> StorageError<u64> {
    StorageIOError::read_logs(AnyError::error(error.to_string())).into()
}

fn write_error(error: impl ToString) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::error(error.to_string())).into()
}

fn decode_entry(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    codec::decode(bytes).map_err(read_error)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(key(*i)),
            Bound::Excluded(i) => Bound::Excluded(key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range((start, end))
            .map(|item| item.map_err(read_error).and_then(|(_, v)| decode_entry(&v)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<u64>> = self.get_meta(LAST_PURGED)?;
        let last_log_id = match self.log.last().map_err(read_error)? {
            Some((_, bytes)) => Some(decode_entry(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        self.put_meta(VOTE, vote)?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        // Not flushed on its own: losing it only delays re-applying entries after a crash,
        // and the next append flushes it anyway.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        Ok(self.get_meta::<Option<LogId<u64>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = codec::encode(&entry).map_err(write_error)?;
            batch.insert(&key(entry.log_id.index), bytes);
        }
        self.log.apply_batch(batch).map_err(write_error)?;
        let flushed = self.flush().await;
        callback.log_io_completed(
            flushed
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        flushed
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.remove_from(log_id.index, None)?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        self.put_meta(LAST_PURGED, &log_id)?;
        self.remove_from(0, Some(log_id.index))?;
        self.flush().await
    }
}

//! Typed key spaces over an ordered byte store: how the metadata's records are laid out.
//!
//! The metadata store keeps every record in one ordered map of bytes to bytes (one sled tree
//! in `wharf-meta`, a `BTreeMap` in tests). A [`KeySpace`] is one kind of record in it: a
//! prefix byte, a key type whose encoding sorts the way its values do (numbers big-endian,
//! strings escaped and terminated, tuples concatenated, so `(repo, seq)` keys list a
//! repository's events in order), and a value type encoded with the one [`codec`](crate::codec)
//! (so every stored value carries the format version).
//!
//! The domain crates (`wharf-ci`, `wharf-deploy`, and the cluster records in `wharf-meta`)
//! define their key spaces and write their `apply` against [`Records`] / [`RecordsMut`], so
//! their rules are tested on [`MemRecords`] without Raft or I/O, and run unchanged on sled.
//!
//! Failure: reading a value that does not decode, or a storage error underneath, is reported
//! to the store through [`Records::report`] and the read answers "absent". The sled store
//! then refuses to commit the batch being applied, so a broken read never turns into a
//! half-applied command; a read outside a batch logs the error.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Bound;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;

/// A read that went wrong underneath a [`Records`] view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record store, key space {key_space}: {message}")]
pub struct StoreError {
    /// The key space read or written.
    pub key_space: &'static str,
    /// What went wrong.
    pub message: String,
}

/// The order of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Smallest key first.
    Ascending,
    /// Largest key first.
    Descending,
}

/// Read access to an ordered byte store.
pub trait Records {
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Entries with `start <= key < end` (`end: None`: no upper bound), in `order`, at most
    /// `limit`.
    fn range(&self, start: &[u8], end: Option<&[u8]>, order: Order, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Records a failure seen while reading (see the module doc).
    fn report(&self, error: StoreError);
}

/// Write access: what an `apply` gets.
pub trait RecordsMut: Records {
    /// Sets `key` to `value`.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);
    /// Removes `key`.
    fn remove(&mut self, key: &[u8]);
}

/// A key whose byte encoding sorts as the key does.
pub trait Key: Sized {
    /// Appends the encoding to `out`.
    fn write_key(&self, out: &mut Vec<u8>);
    /// Reads a key from the front of `bytes`; returns it and the rest.
    fn read_key(bytes: &[u8]) -> Option<(Self, &[u8])>;
}

impl Key for u64 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }

    fn read_key(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (head, rest) = bytes.split_first_chunk::<8>()?;
        Some((u64::from_be_bytes(*head), rest))
    }
}

impl Key for u8 {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.push(*self);
    }

    fn read_key(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (&head, rest) = bytes.split_first()?;
        Some((head, rest))
    }
}

/// Strings end with `00 00`; a zero byte inside is written `00 FF`. This keeps byte order
/// equal to string order, and a string key a proper prefix of the tuples that start with it.
impl Key for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        for &byte in self.as_bytes() {
            out.push(byte);
            if byte == 0 {
                out.push(0xFF);
            }
        }
        out.extend_from_slice(&[0, 0]);
    }

    fn read_key(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let mut text = Vec::new();
        let mut at = 0;
        loop {
            match (bytes.get(at)?, bytes.get(at + 1)) {
                (0, Some(0)) => return Some((String::from_utf8(text).ok()?, &bytes[at + 2..])),
                (0, Some(0xFF)) => {
                    text.push(0);
                    at += 2;
                }
                (0, _) => return None,
                (&byte, _) => {
                    text.push(byte);
                    at += 1;
                }
            }
        }
    }
}

impl<A: Key, B: Key> Key for (A, B) {
    fn write_key(&self, out: &mut Vec<u8>) {
        self.0.write_key(out);
        self.1.write_key(out);
    }

    fn read_key(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (a, rest) = A::read_key(bytes)?;
        let (b, rest) = B::read_key(rest)?;
        Some(((a, b), rest))
    }
}

/// One kind of record: a prefix byte, a key type and a value type.
pub struct KeySpace<K, V> {
    /// The first byte of every key of this space; unique across the store.
    pub prefix: u8,
    /// Its name, for errors and the list of key spaces.
    pub name: &'static str,
    types: Types<K, V>,
}

/// Marks the key and value types without owning either (so a key space is `Send`, `Sync` and
/// usable in a `const`).
type Types<K, V> = PhantomData<fn(K, V) -> (K, V)>;

impl<K: Key, V: Serialize + DeserializeOwned> KeySpace<K, V> {
    /// Declares a key space.
    pub const fn new(prefix: u8, name: &'static str) -> Self {
        KeySpace {
            prefix,
            name,
            types: PhantomData,
        }
    }

    /// The full store key of `key`.
    pub fn key(&self, key: &K) -> Vec<u8> {
        let mut out = vec![self.prefix];
        key.write_key(&mut out);
        out
    }

    /// The value under `key`.
    pub fn get(&self, records: &(impl Records + ?Sized), key: &K) -> Option<V> {
        let bytes = records.get(&self.key(key))?;
        self.decode_value(records, &bytes)
    }

    /// Whether there is a value under `key`.
    pub fn contains(&self, records: &(impl Records + ?Sized), key: &K) -> bool {
        records.get(&self.key(key)).is_some()
    }

    /// Sets `key` to `value`.
    pub fn put(&self, records: &mut (impl RecordsMut + ?Sized), key: &K, value: &V) {
        match codec::encode(value) {
            Ok(bytes) => records.put(self.key(key), bytes),
            // Only a type bincode's serde mode cannot express fails here; a test of every
            // key space's values catches it before it ships.
            Err(error) => records.report(self.error(error.to_string())),
        }
    }

    /// Removes `key`.
    pub fn remove(&self, records: &mut (impl RecordsMut + ?Sized), key: &K) {
        records.remove(&self.key(key));
    }

    /// Every entry whose key starts with `prefix` (a leading part of the key, such as the
    /// repository of a `(repo, seq)` key; `&()` for the whole space), in `order`, at most
    /// `limit`.
    pub fn scan(
        &self,
        records: &(impl Records + ?Sized),
        prefix: &impl KeyPrefix,
        order: Order,
        limit: usize,
    ) -> Vec<(K, V)> {
        let start = self.prefix_bytes(prefix);
        let end = successor(&start);
        self.decode_entries(records, records.range(&start, end.as_deref(), order, limit))
    }

    /// The entries with keys starting with `prefix` and greater than `after`, ascending, at
    /// most `limit`.
    pub fn scan_after(
        &self,
        records: &(impl Records + ?Sized),
        prefix: &impl KeyPrefix,
        after: &K,
        limit: usize,
    ) -> Vec<(K, V)> {
        let mut start = self.key(after);
        // The smallest key greater than `after`.
        start.push(0);
        let end = successor(&self.prefix_bytes(prefix));
        self.decode_entries(records, records.range(&start, end.as_deref(), Order::Ascending, limit))
    }

    /// The keys of every entry whose key starts with `prefix`, without decoding values.
    pub fn keys(&self, records: &(impl Records + ?Sized), prefix: &impl KeyPrefix) -> Vec<K> {
        let start = self.prefix_bytes(prefix);
        let end = successor(&start);
        records
            .range(&start, end.as_deref(), Order::Ascending, usize::MAX)
            .into_iter()
            .filter_map(|(key, _)| self.decode_key(records, &key))
            .collect()
    }

    fn prefix_bytes(&self, prefix: &impl KeyPrefix) -> Vec<u8> {
        let mut start = vec![self.prefix];
        prefix.write_prefix(&mut start);
        start
    }

    fn decode_entries(&self, records: &(impl Records + ?Sized), entries: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(K, V)> {
        entries
            .into_iter()
            .filter_map(|(key, value)| Some((self.decode_key(records, &key)?, self.decode_value(records, &value)?)))
            .collect()
    }

    fn decode_key(&self, records: &(impl Records + ?Sized), bytes: &[u8]) -> Option<K> {
        match bytes.split_first().and_then(|(_, rest)| K::read_key(rest)) {
            Some((key, [])) => Some(key),
            _ => {
                records.report(self.error(format!("malformed key {bytes:02x?}")));
                None
            }
        }
    }

    fn decode_value(&self, records: &(impl Records + ?Sized), bytes: &[u8]) -> Option<V> {
        match codec::decode(bytes) {
            Ok(value) => Some(value),
            Err(error) => {
                records.report(self.error(error.to_string()));
                None
            }
        }
    }

    fn error(&self, message: String) -> StoreError {
        StoreError {
            key_space: self.name,
            message,
        }
    }
}

/// A leading part of a key: `()` for none, one key component, or a key itself.
pub trait KeyPrefix {
    /// Appends the encoding to `out`.
    fn write_prefix(&self, out: &mut Vec<u8>);
}

impl KeyPrefix for () {
    fn write_prefix(&self, _out: &mut Vec<u8>) {}
}

impl<K: Key> KeyPrefix for K {
    fn write_prefix(&self, out: &mut Vec<u8>) {
        self.write_key(out);
    }
}

/// The smallest byte string greater than every string starting with `prefix`; `None` when
/// there is none (all bytes `FF`).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A counter kept in the store: the next id of some kind of record.
pub struct Sequence(pub KeySpace<String, u64>, pub &'static str);

impl Sequence {
    /// Takes the next id (ids start at 1 and are never reused).
    pub fn next(&self, records: &mut (impl RecordsMut + ?Sized)) -> u64 {
        let key = self.1.to_owned();
        let id = self.0.get(records, &key).unwrap_or(1).max(1);
        self.0.put(records, &key, &(id + 1));
        id
    }

    /// Makes the next id at least `next` (used when importing records written elsewhere).
    pub fn raise_to(&self, records: &mut (impl RecordsMut + ?Sized), next: u64) {
        let key = self.1.to_owned();
        if self.0.get(records, &key).unwrap_or(1) < next {
            self.0.put(records, &key, &next);
        }
    }
}

/// An in-memory store, for tests of the domain rules and for building records elsewhere.
#[derive(Debug, Default, Clone)]
pub struct MemRecords {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    errors: std::sync::Arc<std::sync::Mutex<Vec<StoreError>>>,
}

impl MemRecords {
    /// Failures reported so far.
    pub fn errors(&self) -> Vec<StoreError> {
        self.errors.lock().map(|errors| errors.clone()).unwrap_or_default()
    }

    /// How many entries the store holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Records for MemRecords {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.get(key).cloned()
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, order: Order, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let range = self.entries.range::<[u8], _>((Bound::Included(start), upper));
        let entries = range.map(|(k, v)| (k.clone(), v.clone()));
        match order {
            Order::Ascending => entries.take(limit).collect(),
            Order::Descending => entries.rev().take(limit).collect(),
        }
    }

    fn report(&self, error: StoreError) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push(error);
        }
    }
}

impl RecordsMut for MemRecords {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: KeySpace<(u64, u64), String> = KeySpace::new(1, "events");
    const NAMES: KeySpace<(String, u64), ()> = KeySpace::new(2, "names");

    #[test]
    fn keys_sort_as_their_values_and_read_back() {
        let strings = ["", "a", "a\0", "a\0b", "ab", "b"];
        let encoded: Vec<Vec<u8>> = strings
            .iter()
            .map(|s| {
                let mut out = Vec::new();
                s.to_string().write_key(&mut out);
                out
            })
            .collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted, "byte order is string order");
        for (text, bytes) in strings.iter().zip(&encoded) {
            assert_eq!(String::read_key(bytes), Some((text.to_string(), &[][..])));
        }
        let mut out = Vec::new();
        (7u64, "x".to_string()).write_key(&mut out);
        assert_eq!(<(u64, String)>::read_key(&out).map(|(k, _)| k), Some((7, "x".into())));
    }

    #[test]
    fn scans_stay_inside_their_prefix_in_either_order() {
        let mut store = MemRecords::default();
        for (repo, seq) in [(1, 1), (1, 2), (1, 3), (2, 1), (256, 1)] {
            EVENTS.put(&mut store, &(repo, seq), &format!("{repo}-{seq}"));
        }
        NAMES.put(&mut store, &("a".into(), 1), &());
        NAMES.put(&mut store, &("ab".into(), 2), &());
        let values = |entries: Vec<((u64, u64), String)>| entries.into_iter().map(|(_, v)| v).collect::<Vec<_>>();
        assert_eq!(values(EVENTS.scan(&store, &1u64, Order::Ascending, 10)), ["1-1", "1-2", "1-3"]);
        assert_eq!(values(EVENTS.scan(&store, &1u64, Order::Descending, 2)), ["1-3", "1-2"]);
        assert_eq!(values(EVENTS.scan_after(&store, &1u64, &(1, 1), 10)), ["1-2", "1-3"]);
        assert_eq!(EVENTS.scan(&store, &(), Order::Ascending, 100).len(), 5);
        assert_eq!(NAMES.keys(&store, &"a".to_string()), [("a".to_string(), 1)], "\"ab\" is not under \"a\"");
        EVENTS.remove(&mut store, &(1, 2));
        assert_eq!(values(EVENTS.scan(&store, &1u64, Order::Ascending, 10)), ["1-1", "1-3"]);
        assert!(store.errors().is_empty());
    }

    #[test]
    fn an_undecodable_value_is_reported_and_reads_as_absent() {
        let mut store = MemRecords::default();
        store.put(EVENTS.key(&(1, 1)), vec![codec::FORMAT_V1, 0xFF]);
        assert_eq!(EVENTS.get(&store, &(1, 1)), None);
        assert_eq!(store.errors().len(), 1);
        assert_eq!(store.errors()[0].key_space, "events");
    }

    #[test]
    fn sequences_start_at_one_and_never_repeat() {
        const SEQ: KeySpace<String, u64> = KeySpace::new(3, "sequences");
        let mut store = MemRecords::default();
        let ids = Sequence(SEQ, "job");
        assert_eq!(ids.next(&mut store), 1);
        assert_eq!(ids.next(&mut store), 2);
        ids.raise_to(&mut store, 10);
        ids.raise_to(&mut store, 5);
        assert_eq!(ids.next(&mut store), 10);
        assert_eq!(Sequence(SEQ, "other").next(&mut store), 1);
    }
}

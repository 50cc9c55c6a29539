//! The records on sled: a read view for the directory, and the batch an apply writes into.
//!
//! Every record of the state machine lives in one sled tree (`state`), under the typed key
//! spaces of [`crate::keys`] (a prefix byte each). One tree, not one per key space, because
//! sled transactions cannot scan: an apply reads and scans what earlier commands of the same
//! batch wrote through an overlay ([`ApplyBatch`]), and the whole batch, with the applied
//! log id, lands with one atomic `apply_batch`. A reader never sees half a command.
//!
//! This is the only module that touches the state tree's bytes; keep sled behind it so that
//! it can be measured and replaced.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

use wharf_proto::store::{Order, Records, RecordsMut, StoreError};

/// A read-only view of the state tree, as it is now.
#[derive(Clone)]
pub struct TreeRecords {
    pub(crate) tree: sled::Tree,
}

impl Records for TreeRecords {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.tree.get(key) {
            Ok(value) => value.map(|v| v.to_vec()),
            Err(error) => {
                tracing::error!(%error, "reading the metadata state");
                None
            }
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, order: Order, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let entries = tree_range(&self.tree, start, end, order);
        let mut out = Vec::new();
        for entry in entries.take(limit) {
            match entry {
                Ok(entry) => out.push(entry),
                Err(error) => {
                    tracing::error!(%error, "scanning the metadata state");
                    break;
                }
            }
        }
        out
    }

    fn report(&self, error: StoreError) {
        tracing::error!(%error, "undecodable metadata record");
    }
}

/// The tree as a [`RecordsMut`] that writes straight through: for the system keys, which
/// are written outside an apply batch.
impl RecordsMut for TreeRecords {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Err(error) = self.tree.insert(key, value) {
            tracing::error!(%error, "writing the metadata state");
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Err(error) = self.tree.remove(key) {
            tracing::error!(%error, "writing the metadata state");
        }
    }
}

type Entry = (Vec<u8>, Vec<u8>);

fn tree_range(
    tree: &sled::Tree,
    start: &[u8],
    end: Option<&[u8]>,
    order: Order,
) -> Box<dyn Iterator<Item = Result<Entry, sled::Error>>> {
    let upper = end.map_or(Bound::Unbounded, |end| Bound::Excluded(end.to_vec()));
    let range = tree.range::<Vec<u8>, _>((Bound::Included(start.to_vec()), upper));
    let entries = range.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())));
    match order {
        Order::Ascending => Box::new(entries),
        Order::Descending => Box::new(entries.rev()),
    }
}

/// Writes not yet in the tree: `None` removes the key.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
type OverlayEntry = (Vec<u8>, Option<Vec<u8>>);

/// What one call of the state machine's `apply` writes: reads see the tree with every write
/// made so far on top. The writes of a command that is refused are dropped
/// ([`ApplyBatch::end_command`]), so a refused command changes nothing.
pub struct ApplyBatch<'t> {
    tree: &'t sled::Tree,
    /// Writes of the commands applied so far.
    done: Overlay,
    /// Writes of the command being applied.
    current: Overlay,
    error: RefCell<Option<StoreError>>,
}

impl<'t> ApplyBatch<'t> {
    /// An empty batch over `tree`.
    pub fn new(tree: &'t sled::Tree) -> Self {
        ApplyBatch {
            tree,
            done: Overlay::new(),
            current: Overlay::new(),
            error: RefCell::new(None),
        }
    }

    /// Ends the current command: keeps its writes if it was `accepted`, else drops them.
    pub fn end_command(&mut self, accepted: bool) {
        let writes = std::mem::take(&mut self.current);
        if accepted {
            self.done.extend(writes);
        }
    }

    /// The sled batch of every kept write, or the first failure any read met.
    pub fn finish(mut self) -> Result<sled::Batch, StoreError> {
        self.end_command(true);
        if let Some(error) = self.error.into_inner() {
            return Err(error);
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.done {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        Ok(batch)
    }

    fn overlaid(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.current.get(key).or_else(|| self.done.get(key))
    }

    /// The overlay's writes in `[start, end)`, the current command's winning.
    fn overlay_range(&self, start: &[u8], end: Option<&[u8]>) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let bounds = (Bound::Included(start), upper);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for overlay in [&self.done, &self.current] {
            for (key, value) in overlay.range::<[u8], _>(bounds) {
                merged.insert(key.clone(), value.clone());
            }
        }
        merged
    }
}

impl Records for ApplyBatch<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if let Some(value) = self.overlaid(key) {
            return value.clone();
        }
        match self.tree.get(key) {
            Ok(value) => value.map(|v| v.to_vec()),
            Err(error) => {
                self.report(StoreError {
                    key_space: "state",
                    message: error.to_string(),
                });
                None
            }
        }
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>, order: Order, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let overlay = self.overlay_range(start, end);
        let mut overlay: Box<dyn Iterator<Item = OverlayEntry>> = match order {
            Order::Ascending => Box::new(overlay.into_iter()),
            Order::Descending => Box::new(overlay.into_iter().rev()),
        };
        let mut tree = tree_range(self.tree, start, end, order);
        let before = |a: &[u8], b: &[u8]| match order {
            Order::Ascending => a < b,
            Order::Descending => a > b,
        };
        let mut out = Vec::new();
        let mut next_overlay = overlay.next();
        let mut next_tree = self.next_from_tree(&mut tree);
        while out.len() < limit {
            let take_overlay = match (&next_overlay, &next_tree) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((o, _)), Some((t, _))) => {
                    if o == t {
                        // The overlay's write replaces the tree's value.
                        next_tree = self.next_from_tree(&mut tree);
                        true
                    } else {
                        before(o, t)
                    }
                }
            };
            if take_overlay {
                if let Some((key, Some(value))) = next_overlay.take() {
                    out.push((key, value));
                }
                next_overlay = overlay.next();
            } else if let Some(entry) = next_tree.take() {
                out.push(entry);
                next_tree = self.next_from_tree(&mut tree);
            }
        }
        out
    }

    fn report(&self, error: StoreError) {
        let mut first = self.error.borrow_mut();
        if first.is_none() {
            *first = Some(error);
        }
    }
}

impl ApplyBatch<'_> {
    fn next_from_tree(&self, tree: &mut dyn Iterator<Item = Result<Entry, sled::Error>>) -> Option<Entry> {
        match tree.next()? {
            Ok(entry) => Some(entry),
            Err(error) => {
                self.report(StoreError {
                    key_space: "state",
                    message: error.to_string(),
                });
                None
            }
        }
    }
}

impl RecordsMut for ApplyBatch<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.current.insert(key, Some(value));
    }

    fn remove(&mut self, key: &[u8]) {
        self.current.insert(key.to_vec(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_proto::store::MemRecords;

    /// The batch over a tree reads like the same writes on a plain map, in both orders, with
    /// deletes and replacements of what the tree holds, and drops a refused command's writes.
    #[test]
    fn a_batch_reads_its_own_writes_over_the_tree() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        let mut reference = MemRecords::default();
        for i in 0u8..10 {
            tree.insert([1, i * 2], vec![i]).unwrap();
            reference.put(vec![1, i * 2], vec![i]);
        }
        let mut batch = ApplyBatch::new(&tree);
        for (key, value) in [([1u8, 3u8], Some(30u8)), ([1, 4], None), ([1, 6], Some(60)), ([2, 0], Some(1))] {
            match value {
                Some(v) => {
                    batch.put(key.to_vec(), vec![v]);
                    reference.put(key.to_vec(), vec![v]);
                }
                None => {
                    batch.remove(&key);
                    reference.remove(&key);
                }
            }
        }
        batch.end_command(true);
        batch.put(vec![1, 5], vec![99]);
        batch.end_command(false);
        for order in [Order::Ascending, Order::Descending] {
            for limit in [0, 3, 100] {
                assert_eq!(
                    batch.range(&[1], Some(&[2]), order, limit),
                    reference.range(&[1], Some(&[2]), order, limit),
                    "{order:?} limit {limit}"
                );
            }
        }
        assert_eq!(batch.get(&[1, 5]), None, "a refused command's write is gone");
        assert_eq!(batch.get(&[1, 4]), None);
        assert_eq!(batch.get(&[1, 6]), Some(vec![60]));
        tree.apply_batch(batch.finish().unwrap()).unwrap();
        let view = TreeRecords { tree: tree.clone() };
        assert_eq!(view.range(&[0], None, Order::Ascending, 100), reference.range(&[0], None, Order::Ascending, 100));
    }
}

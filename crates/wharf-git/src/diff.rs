//! Per-file diff statistics between two trees, as `git diff --numstat` reports them (without
//! rename detection: a rename is a deletion and an addition).

use gix::diff::blob::{Algorithm, Diff, InternedInput};
use gix::object::tree::diff::ChangeDetached;
use wharf_proto::{ApiError, ChangeKind, FileDiffStat};

use crate::Context;

/// Git's own test for binary content: a NUL byte in the first 8000 bytes. Content that is not
/// UTF-8 is binary too, since the API would have to mangle it to show it as text.
pub(crate) fn is_binary(data: &[u8]) -> bool {
    data[..data.len().min(8000)].contains(&0) || std::str::from_utf8(data).is_err()
}

/// The files that differ between `old` (the empty tree when `None`) and `new`, by path.
pub(crate) fn file_stats(
    repo: &gix::Repository,
    old: Option<&gix::Tree<'_>>,
    new: &gix::Tree<'_>,
) -> Result<Vec<FileDiffStat>, ApiError> {
    let changes = repo
        .diff_tree_to_tree(old, Some(new), gix::diff::Options::default())
        .context("diff trees")?;
    let mut files = Vec::new();
    for change in changes {
        let (path, kind, before, after) = match change {
            ChangeDetached::Addition {
                location, entry_mode, id, ..
            } => (location, ChangeKind::Added, None, Some((entry_mode, id))),
            ChangeDetached::Deletion {
                location, entry_mode, id, ..
            } => (location, ChangeKind::Deleted, Some((entry_mode, id)), None),
            ChangeDetached::Modification {
                location,
                previous_entry_mode,
                previous_id,
                entry_mode,
                id,
            } => (
                location,
                ChangeKind::Modified,
                Some((previous_entry_mode, previous_id)),
                Some((entry_mode, id)),
            ),
            ChangeDetached::Rewrite {
                location, entry_mode, id, ..
            } => (location, ChangeKind::Added, None, Some((entry_mode, id))),
        };
        // Directories are listed too; only files carry content.
        let before = before.filter(|(mode, _)| mode.is_blob_or_symlink());
        let after = after.filter(|(mode, _)| mode.is_blob_or_symlink());
        if before.is_none() && after.is_none() {
            continue;
        }
        let kind = match (&before, &after) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Deleted,
            _ => kind,
        };
        let before = read_blob(repo, before.map(|(_, id)| id))?;
        let after = read_blob(repo, after.map(|(_, id)| id))?;
        let binary = is_binary(&before) || is_binary(&after);
        let (additions, deletions) = if binary { (0, 0) } else { count_lines(&before, &after) };
        files.push(FileDiffStat {
            path: path.to_string(),
            change: kind,
            additions,
            deletions,
            binary,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn read_blob(repo: &gix::Repository, id: Option<gix::hash::ObjectId>) -> Result<Vec<u8>, ApiError> {
    match id {
        Some(id) => Ok(repo.find_object(id).context("read blob")?.detach().data),
        None => Ok(Vec::new()),
    }
}

/// Lines added and removed, with the histogram algorithm git uses for `--histogram`.
fn count_lines(before: &[u8], after: &[u8]) -> (u64, u64) {
    let input = InternedInput::new(before, after);
    let diff = Diff::compute(Algorithm::Histogram, &input);
    (u64::from(diff.count_additions()), u64::from(diff.count_removals()))
}

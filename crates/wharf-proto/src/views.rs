//! What a repository read returns: plain serialisable views of branches, trees, blobs and
//! commits. They are shaped for the JSON API (the front serialises them as they are), and
//! object ids are lowercase hex strings so that this crate need not depend on gix.

use serde::{Deserialize, Serialize};

/// The summary of a repository that `GET /api/v1/repos/{owner}/{name}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct RepoSummary {
    /// The branch HEAD points at, if it exists (`None` for an empty repository).
    pub default_branch: Option<String>,
    /// Bytes the repository takes on disk.
    pub size_bytes: u64,
    /// Number of branches.
    pub branch_count: u64,
    /// Whether the repository has no commits yet.
    pub empty: bool,
}

/// A branch and the commit it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BranchView {
    /// Short name (`main`, `release/1.0`).
    pub name: String,
    /// The tip commit.
    pub commit: String,
    /// Whether HEAD points at it.
    pub default: bool,
}

/// A tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TagView {
    /// Short name (`v1.0`).
    pub name: String,
    /// What the ref points at (a tag object for annotated tags).
    pub target: String,
    /// The commit it finally points at.
    pub commit: String,
    /// The annotation message, for annotated tags.
    pub message: Option<String>,
}

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TreeEntryKind {
    /// A file.
    Blob,
    /// A directory.
    Tree,
    /// A symbolic link.
    Symlink,
    /// A submodule.
    Commit,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreeEntryView {
    /// The entry's name within its directory.
    pub name: String,
    /// The entry's path from the repository root.
    pub path: String,
    /// What it is.
    #[serde(rename = "type")]
    pub kind: TreeEntryKind,
    /// The git file mode in octal (`100644`, `100755`, `040000`, `120000`, `160000`).
    pub mode: String,
    /// The object id.
    pub id: String,
    /// Size in bytes, for blobs and symlinks.
    pub size: Option<u64>,
}

/// A page of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreePage {
    /// The commit the listing was read at.
    pub commit: String,
    /// The directory's path (empty for the root).
    pub path: String,
    /// The entries of this page: directories first, then by name.
    pub entries: Vec<TreeEntryView>,
    /// Entries in the whole directory.
    pub total: u64,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<u64>,
}

/// A file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobView {
    /// The commit it was read at.
    pub commit: String,
    /// Its path.
    pub path: String,
    /// Its object id.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Whether the content looks binary (a NUL byte in the first 8 KiB, or not UTF-8).
    pub binary: bool,
    /// The content (the front renders it as text or base64).
    pub content: Vec<u8>,
}

/// An author or committer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PersonView {
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Seconds since the Unix epoch.
    pub time: i64,
    /// Offset from UTC in seconds.
    pub offset: i32,
}

/// A commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitView {
    /// The commit id.
    pub id: String,
    /// Parent commit ids.
    pub parents: Vec<String>,
    /// The tree id.
    pub tree: String,
    /// The author.
    pub author: PersonView,
    /// The committer.
    pub committer: PersonView,
    /// The first line of the message.
    pub summary: String,
    /// The whole message.
    pub message: String,
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    /// The commits of this page.
    pub commits: Vec<CommitView>,
    /// Pass as `cursor` to get the next page; `None` at the end of history.
    pub next_cursor: Option<String>,
}

/// How a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New file.
    Added,
    /// Changed content or mode.
    Modified,
    /// Removed file.
    Deleted,
}

/// The diff statistics of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileDiffStat {
    /// The path.
    pub path: String,
    /// How it changed.
    pub change: ChangeKind,
    /// Lines added (0 for binary files).
    pub additions: u64,
    /// Lines removed (0 for binary files).
    pub deletions: u64,
    /// Whether either side is binary.
    pub binary: bool,
}

/// One commit with the diff against its first parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitDetail {
    /// The commit.
    pub commit: CommitView,
    /// Per-file statistics.
    pub files: Vec<FileDiffStat>,
    /// Total lines added.
    pub additions: u64,
    /// Total lines removed.
    pub deletions: u64,
}

/// Two refs compared: commits on `head` not on `base`, and the diff between their trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompareView {
    /// The resolved base commit.
    pub base: String,
    /// The resolved head commit.
    pub head: String,
    /// Their merge base, if they share history.
    pub merge_base: Option<String>,
    /// Commits reachable from head and not from base, newest first (at most 250).
    pub commits: Vec<CommitView>,
    /// Number of commits head has that base lacks.
    pub ahead_by: u64,
    /// Number of commits base has that head lacks.
    pub behind_by: u64,
    /// The per-file diff from the merge base (or base) to head.
    pub files: Vec<FileDiffStat>,
}

/// What a merge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MergeOutcome {
    /// The new tip of the base branch.
    pub commit: String,
    /// The branch that moved.
    pub base: String,
    /// The strategy used.
    pub strategy: crate::MergeStrategy,
}

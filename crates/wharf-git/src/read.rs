//! Reads: refs, directory listings, file contents, history and comparisons.

use std::collections::BTreeMap;

use gix::hash::ObjectId;
use gix::revision::walk::Sorting;
use gix::traverse::commit::simple::CommitTimeOrder;
use wharf_proto::{
    ApiError, BlobView, BranchView, CommitDetail, CommitView, CompareView, LogPage, PersonView, RepoSummary, TagView,
    TreeEntryKind, TreeEntryView, TreePage, MAX_BLOB_BYTES,
};

use crate::{diff, validate_tree_path, Context, GitRepo};

/// At most this many commits are listed by a comparison.
const COMPARE_MAX_COMMITS: usize = 250;

impl GitRepo {
    /// Default branch, size on disk and branch count.
    pub fn summary(&self) -> Result<RepoSummary, ApiError> {
        let branches = self.branches()?;
        let default_branch = branches.iter().find(|b| b.default).map(|b| b.name.clone());
        Ok(RepoSummary {
            default_branch,
            size_bytes: directory_size(&self.path),
            branch_count: branches.len() as u64,
            empty: branches.is_empty(),
        })
    }

    /// Every branch, by name.
    pub fn branches(&self) -> Result<Vec<BranchView>, ApiError> {
        let repo = self.local();
        let head = self.head_branch(&repo)?;
        let references = repo.references().context("list refs")?;
        let mut branches = Vec::new();
        for reference in references.local_branches().context("list branches")? {
            let mut reference = reference.context("read branch")?;
            let name = reference.name().shorten().to_string();
            let commit = reference.peel_to_id().context("peel branch")?.to_string();
            branches.push(BranchView {
                default: head.as_deref() == Some(name.as_str()),
                name,
                commit,
            });
        }
        branches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(branches)
    }

    /// Every tag, by name.
    pub fn tags(&self) -> Result<Vec<TagView>, ApiError> {
        let repo = self.local();
        let references = repo.references().context("list refs")?;
        let mut tags = Vec::new();
        for reference in references.tags().context("list tags")? {
            let mut reference = reference.context("read tag")?;
            let name = reference.name().shorten().to_string();
            let Some(target) = reference.target().try_id().map(|id| id.to_owned()) else {
                continue;
            };
            let commit = reference.peel_to_id().context("peel tag")?.to_string();
            let object = repo.find_object(target).context("read tag object")?;
            let message = match object.kind {
                gix::object::Kind::Tag => Some(
                    object
                        .into_tag()
                        .decode()
                        .context("decode tag")?
                        .message
                        .to_string(),
                ),
                _ => None,
            };
            tags.push(TagView {
                name,
                target: target.to_string(),
                commit,
                message,
            });
        }
        tags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tags)
    }

    /// Every direct ref (full name to object id). A push is recorded as the difference of two
    /// of these snapshots.
    pub fn refs(&self) -> Result<BTreeMap<String, String>, ApiError> {
        let repo = self.local();
        let references = repo.references().context("list refs")?;
        let mut refs = BTreeMap::new();
        for reference in references.all().context("list refs")? {
            let reference = reference.context("read ref")?;
            if let Some(id) = reference.target().try_id() {
                refs.insert(reference.name().as_bstr().to_string(), id.to_string());
            }
        }
        Ok(refs)
    }

    /// One page of the directory `path` at `rev`: directories first, then by name.
    pub fn tree(&self, rev: Option<&str>, path: &str, offset: u64, limit: u64) -> Result<TreePage, ApiError> {
        let repo = self.local();
        let commit = self.resolve(&repo, rev)?;
        let root = commit.tree().context("read tree")?;
        let path = path.trim_matches('/');
        let tree = if path.is_empty() {
            root
        } else {
            validate_tree_path(path)?;
            let entry = root
                .lookup_entry_by_path(path)
                .context("look up path")?
                .ok_or_else(|| self.path_not_found(rev, path))?;
            if !entry.mode().is_tree() {
                return Err(ApiError::invalid(format!("{path:?} is a file, not a directory")));
            }
            entry.object().context("read tree")?.into_tree()
        };
        let decoded = tree.decode().context("decode tree")?;
        let mut entries = Vec::with_capacity(decoded.entries.len());
        for entry in &decoded.entries {
            let name = entry.filename.to_string();
            let kind = entry_kind(entry.mode);
            let size = match kind {
                TreeEntryKind::Blob | TreeEntryKind::Symlink => {
                    Some(repo.find_header(entry.oid).context("read object header")?.size())
                }
                _ => None,
            };
            entries.push(TreeEntryView {
                path: if path.is_empty() { name.clone() } else { format!("{path}/{name}") },
                name,
                kind,
                mode: format!("{:06o}", entry.mode.kind() as u16),
                id: entry.oid.to_string(),
                size,
            });
        }
        entries.sort_by(|a, b| {
            let a_dir = a.kind != TreeEntryKind::Tree;
            let b_dir = b.kind != TreeEntryKind::Tree;
            (a_dir, &a.name).cmp(&(b_dir, &b.name))
        });
        let total = entries.len() as u64;
        let entries: Vec<_> = entries.into_iter().skip(offset as usize).take(limit as usize).collect();
        let end = offset + entries.len() as u64;
        Ok(TreePage {
            commit: commit.id.to_string(),
            path: path.to_owned(),
            entries,
            total,
            next_offset: (end < total).then_some(end),
        })
    }

    /// The file at `path` in `rev`, up to [`MAX_BLOB_BYTES`].
    pub fn blob(&self, rev: Option<&str>, path: &str) -> Result<BlobView, ApiError> {
        let repo = self.local();
        let commit = self.resolve(&repo, rev)?;
        let path = path.trim_matches('/');
        validate_tree_path(path)?;
        let entry = commit
            .tree()
            .context("read tree")?
            .lookup_entry_by_path(path)
            .context("look up path")?
            .ok_or_else(|| self.path_not_found(rev, path))?;
        if !entry.mode().is_blob_or_symlink() {
            return Err(ApiError::invalid(format!("{path:?} is not a file")));
        }
        let size = repo.find_header(entry.object_id()).context("read object header")?.size();
        if size > MAX_BLOB_BYTES {
            return Err(ApiError::TooLarge {
                what: format!("file {path:?} ({size} bytes)"),
                limit: MAX_BLOB_BYTES,
            });
        }
        let content = repo.find_object(entry.object_id()).context("read blob")?.detach().data;
        Ok(BlobView {
            commit: commit.id.to_string(),
            path: path.to_owned(),
            id: entry.object_id().to_string(),
            size,
            binary: diff::is_binary(&content),
            content,
        })
    }

    /// History from `rev`, newest first, optionally only the commits that change `path`.
    ///
    /// The cursor names the tip the first page started from and how many matching commits
    /// came before, so pages stay consistent while the branch moves.
    pub fn log(
        &self,
        rev: Option<&str>,
        path: Option<&str>,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<LogPage, ApiError> {
        let repo = self.local();
        let path = path.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
        if let Some(path) = path {
            validate_tree_path(path)?;
        }
        let (tip, skip) = match cursor {
            Some(cursor) => parse_cursor(cursor)?,
            None => (self.resolve(&repo, rev)?.id, 0),
        };
        let walk = repo
            .rev_walk([tip])
            .sorting(Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
            .all()
            .context("walk history")?;
        let mut matched = 0u64;
        let mut commits = Vec::new();
        let mut more = false;
        for info in walk {
            let info = info.context("walk history")?;
            let commit = info.object().context("read commit")?;
            if let Some(path) = path {
                if !changes_path(&repo, &commit, path)? {
                    continue;
                }
            }
            matched += 1;
            if matched <= skip {
                continue;
            }
            if commits.len() as u64 == limit {
                more = true;
                break;
            }
            commits.push(commit_view(&commit)?);
        }
        Ok(LogPage {
            next_cursor: more.then(|| format!("{tip}.{}", skip + limit)),
            commits,
        })
    }

    /// One commit with the diff statistics against its first parent.
    pub fn commit_detail(&self, rev: &str) -> Result<CommitDetail, ApiError> {
        let repo = self.local();
        let commit = self.resolve(&repo, Some(rev))?;
        let new_tree = commit.tree().context("read tree")?;
        let old_tree = match commit.parent_ids().next() {
            Some(parent) => Some(parent.object().context("read parent")?.peel_to_tree().context("read tree")?),
            None => None,
        };
        let files = diff::file_stats(&repo, old_tree.as_ref(), &new_tree)?;
        Ok(CommitDetail {
            commit: commit_view(&commit)?,
            additions: files.iter().map(|f| f.additions).sum(),
            deletions: files.iter().map(|f| f.deletions).sum(),
            files,
        })
    }

    /// What `head` has that `base` lacks: commits, and the diff from their merge base.
    pub fn compare(&self, base: &str, head: &str) -> Result<CompareView, ApiError> {
        let repo = self.local();
        let base_commit = self.resolve(&repo, Some(base))?;
        let head_commit = self.resolve(&repo, Some(head))?;
        let merge_base = repo
            .merge_base(base_commit.id, head_commit.id)
            .ok()
            .flatten()
            .map(|id| id.detach());
        let mut commits = Vec::new();
        let mut ahead_by = 0u64;
        for info in hidden_walk(&repo, head_commit.id, base_commit.id)? {
            let info = info.context("walk history")?;
            ahead_by += 1;
            if commits.len() < COMPARE_MAX_COMMITS {
                commits.push(commit_view(&info.object().context("read commit")?)?);
            }
        }
        let mut behind_by = 0u64;
        for info in hidden_walk(&repo, base_commit.id, head_commit.id)? {
            info.context("walk history")?;
            behind_by += 1;
        }
        let from = merge_base.unwrap_or(base_commit.id);
        let old_tree = repo
            .find_object(from)
            .context("read commit")?
            .peel_to_tree()
            .context("read tree")?;
        let new_tree = head_commit.tree().context("read tree")?;
        let files = diff::file_stats(&repo, Some(&old_tree), &new_tree)?;
        Ok(CompareView {
            base: base_commit.id.to_string(),
            head: head_commit.id.to_string(),
            merge_base: merge_base.map(|id| id.to_string()),
            commits,
            ahead_by,
            behind_by,
            files,
        })
    }

    /// The commit `rev` names (a branch, tag, commit id or any revision git understands);
    /// the default branch when `None`.
    pub(crate) fn resolve<'r>(&self, repo: &'r gix::Repository, rev: Option<&str>) -> Result<gix::Commit<'r>, ApiError> {
        let spec = rev.unwrap_or("HEAD");
        if spec.is_empty() || spec.starts_with('-') || spec.chars().any(|c| c.is_control()) || spec.len() > 400 {
            return Err(ApiError::invalid(format!("{:?} is not a revision", spec.chars().take(200).collect::<String>())));
        }
        let not_found = || self.revision_not_found(spec);
        // Branches first, so that a branch named like a hex prefix still means the branch.
        let branch = format!("refs/heads/{spec}");
        let id = match repo.try_find_reference(branch.as_str()) {
            Ok(Some(mut reference)) => reference.peel_to_id().map_err(|_| not_found())?.detach(),
            _ => repo.rev_parse_single(spec).map_err(|_| not_found())?.detach(),
        };
        repo.find_object(id)
            .map_err(|_| not_found())?
            .peel_to_commit()
            .map_err(|_| not_found())
    }

    /// The short name of the branch HEAD points at, whether or not it exists yet.
    pub(crate) fn head_branch(&self, repo: &gix::Repository) -> Result<Option<String>, ApiError> {
        Ok(repo
            .head_name()
            .context("read HEAD")?
            .map(|name| name.shorten().to_string()))
    }

    fn path_not_found(&self, rev: Option<&str>, path: &str) -> ApiError {
        ApiError::PathNotFound {
            rev: rev.unwrap_or("HEAD").to_owned(),
            path: path.to_owned(),
        }
    }
}

/// Walks from `tip`, leaving out everything reachable from `hidden`.
fn hidden_walk<'r>(
    repo: &'r gix::Repository,
    tip: ObjectId,
    hidden: ObjectId,
) -> Result<gix::revision::Walk<'r>, ApiError> {
    repo.rev_walk([tip])
        .sorting(Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
        .with_hidden([hidden])
        .all()
        .context("walk history")
}

/// Whether `commit` changes `path` compared to every parent, as `git log -- path` decides
/// for merges (a merge that takes the path unchanged from one side is left out).
fn changes_path(repo: &gix::Repository, commit: &gix::Commit<'_>, path: &str) -> Result<bool, ApiError> {
    let own = entry_id_at(&commit.tree().context("read tree")?, path)?;
    let mut parents = commit.parent_ids().peekable();
    if parents.peek().is_none() {
        return Ok(own.is_some());
    }
    for parent in parents {
        let parent_tree = repo
            .find_object(parent)
            .context("read parent")?
            .peel_to_tree()
            .context("read tree")?;
        if entry_id_at(&parent_tree, path)? == own {
            return Ok(false);
        }
    }
    Ok(true)
}

fn entry_id_at(tree: &gix::Tree<'_>, path: &str) -> Result<Option<ObjectId>, ApiError> {
    Ok(tree
        .lookup_entry_by_path(path)
        .context("look up path")?
        .map(|entry| entry.object_id()))
}

fn parse_cursor(cursor: &str) -> Result<(ObjectId, u64), ApiError> {
    let invalid = || ApiError::invalid(format!("{cursor:?} is not a cursor this API handed out"));
    let (tip, skip) = cursor.split_once('.').ok_or_else(invalid)?;
    let tip = ObjectId::from_hex(tip.as_bytes()).map_err(|_| invalid())?;
    let skip = skip.parse().map_err(|_| invalid())?;
    Ok((tip, skip))
}

pub(crate) fn commit_view(commit: &gix::Commit<'_>) -> Result<CommitView, ApiError> {
    let message = commit.message_raw().context("read commit message")?.to_string();
    Ok(CommitView {
        id: commit.id.to_string(),
        parents: commit.parent_ids().map(|id| id.to_string()).collect(),
        tree: commit.tree_id().context("read commit tree")?.to_string(),
        author: person(commit.author().context("read author")?)?,
        committer: person(commit.committer().context("read committer")?)?,
        summary: message.lines().next().unwrap_or_default().to_owned(),
        message,
    })
}

fn person(signature: gix::actor::SignatureRef<'_>) -> Result<PersonView, ApiError> {
    let time = signature.time().context("read signature time")?;
    Ok(PersonView {
        name: signature.name.to_string(),
        email: signature.email.to_string(),
        time: time.seconds,
        offset: time.offset,
    })
}

fn entry_kind(mode: gix::objs::tree::EntryMode) -> TreeEntryKind {
    if mode.is_tree() {
        TreeEntryKind::Tree
    } else if mode.is_link() {
        TreeEntryKind::Symlink
    } else if mode.is_commit() {
        TreeEntryKind::Commit
    } else {
        TreeEntryKind::Blob
    }
}

/// Bytes under `path`, counted the way `du --apparent-size` does.
fn directory_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_size(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

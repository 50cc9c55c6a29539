//! Writes: branches, commits built from file actions, and merges.
//!
//! Every ref update names the value it expects to replace, so a write that raced another
//! (a push through git, say) fails instead of losing it. The repository actor orders writes;
//! the expectation is the second line of defence.

use std::collections::{BTreeSet, HashMap};

use gix::bstr::ByteSlice;
use gix::hash::ObjectId;
use gix::objs::tree::{EntryKind, EntryMode};
use gix::refs::transaction::{Change, PreviousValue, RefEdit, RefLog};
use gix::refs::Target;
use wharf_proto::{
    ApiError, BranchView, CommitDetail, CommitFilesRequest, FileActionKind, MergeOutcome, MergeRequest, MergeStrategy,
};

use crate::{validate_branch_name, validate_new_branch_name, validate_new_path, validate_tree_path, Context, GitRepo};

impl GitRepo {
    /// Creates branch `name` at `from` (a branch, tag or commit; default: the default branch).
    pub fn create_branch(&self, name: &str, from: Option<&str>) -> Result<BranchView, ApiError> {
        validate_new_branch_name(name)?;
        let repo = self.local();
        let full_name = format!("refs/heads/{name}");
        if self.branch_tip(&repo, name)?.is_some() {
            return Err(ApiError::RefExists {
                repo: self.name.clone(),
                name: full_name,
            });
        }
        let start = self.resolve(&repo, from)?;
        repo.reference(
            full_name.as_str(),
            start.id,
            PreviousValue::MustNotExist,
            format!("branch: created from {}", from.unwrap_or("HEAD")),
        )
        .context("create branch")?;
        Ok(BranchView {
            default: self.head_branch(&repo)?.as_deref() == Some(name),
            name: name.to_owned(),
            commit: start.id.to_string(),
        })
    }

    /// Deletes branch `name`. The default branch cannot be deleted.
    pub fn delete_branch(&self, name: &str) -> Result<(), ApiError> {
        validate_branch_name(name)?;
        let repo = self.local();
        let tip = self
            .branch_tip(&repo, name)?
            .ok_or_else(|| self.revision_not_found(name))?;
        if self.head_branch(&repo)?.as_deref() == Some(name) {
            return Err(ApiError::invalid(format!("{name} is the default branch and cannot be deleted")));
        }
        repo.edit_reference(RefEdit {
            change: Change::Delete {
                expected: PreviousValue::MustExistAndMatch(Target::Object(tip)),
                log: RefLog::AndReference,
            },
            name: format!("refs/heads/{name}").try_into().context("branch name")?,
            deref: false,
        })
        .context("delete branch")?;
        Ok(())
    }

    /// Makes one commit on `request.branch` from its file actions.
    pub fn commit_files(&self, request: &CommitFilesRequest) -> Result<CommitDetail, ApiError> {
        validate_new_branch_name(&request.branch)?;
        if request.actions.is_empty() {
            return Err(ApiError::invalid("a commit needs at least one action"));
        }
        if request.message.trim().is_empty() {
            return Err(ApiError::invalid("a commit needs a message"));
        }
        let repo = self.local();
        let tip = self.branch_tip(&repo, &request.branch)?;
        if let Some(expected) = &request.expected_parent {
            if tip.map(|t| t.to_string()).as_deref() != Some(expected.as_str()) {
                return Err(ApiError::StaleParent {
                    branch: request.branch.clone(),
                    expected: expected.clone(),
                    actual: tip.map(|t| t.to_string()).unwrap_or_else(|| "nothing (no such branch)".into()),
                });
            }
        }
        let parent = match tip {
            Some(tip) => Some(tip),
            None => self.start_point(&repo, request.start_branch.as_deref())?,
        };
        let base_tree = match parent {
            Some(parent) => repo
                .find_object(parent)
                .context("read parent")?
                .peel_to_tree()
                .context("read tree")?
                .id,
            None => ObjectId::empty_tree(repo.object_hash()),
        };
        let base = repo.find_tree(base_tree).context("read tree")?;
        let mut editor = base.edit().context("edit tree")?;
        // What earlier actions of this request did, so that later ones see it.
        let mut touched: HashMap<&str, Option<EntryMode>> = HashMap::new();
        for action in &request.actions {
            match action.action {
                // A file that exists may be removed whatever its name.
                FileActionKind::Delete => validate_tree_path(&action.path)?,
                _ => validate_new_path(&action.path)?,
            }
            let existing = match touched.get(action.path.as_str()) {
                Some(mode) => *mode,
                None => base
                    .lookup_entry_by_path(action.path.as_str())
                    .context("look up path")?
                    .map(|entry| entry.mode()),
            };
            let conflict = |reason: &str| ApiError::FileConflict {
                action: format!("{:?}", action.action).to_lowercase(),
                path: action.path.clone(),
                reason: reason.to_owned(),
            };
            match (action.action, existing) {
                (FileActionKind::Create, Some(_)) => return Err(conflict("the path exists already")),
                (FileActionKind::Update | FileActionKind::Delete, None) => {
                    return Err(conflict("there is no file at that path"))
                }
                (FileActionKind::Update | FileActionKind::Delete, Some(mode)) if !mode.is_blob_or_symlink() => {
                    return Err(conflict("the path is a directory"))
                }
                _ => {}
            }
            match action.action {
                FileActionKind::Delete => {
                    editor.remove(action.path.as_str()).context("remove file")?;
                    touched.insert(&action.path, None);
                }
                FileActionKind::Create | FileActionKind::Update => {
                    let blob = repo.write_blob(&action.content).context("write blob")?;
                    let kind = if action.executable { EntryKind::BlobExecutable } else { EntryKind::Blob };
                    editor.upsert(action.path.as_str(), kind, blob).context("add file")?;
                    touched.insert(&action.path, Some(kind.into()));
                }
            }
        }
        let tree = editor.write().context("write tree")?.detach();
        let commit = self.commit_on_branch(
            &repo,
            &request.branch,
            &request.message,
            (&request.author_name, &request.author_email),
            tree,
            parent.into_iter().collect(),
        )?;
        self.commit_detail(&commit.to_string())
    }

    /// Merges `request.head` into the branch `request.base`.
    pub fn merge(&self, request: &MergeRequest) -> Result<MergeOutcome, ApiError> {
        validate_branch_name(&request.base)?;
        let repo = self.local();
        let base_tip = self
            .branch_tip(&repo, &request.base)?
            .ok_or_else(|| self.revision_not_found(&request.base))?;
        let head = self.resolve(&repo, Some(&request.head))?.id;
        let outcome = |commit: ObjectId| MergeOutcome {
            commit: commit.to_string(),
            base: request.base.clone(),
            strategy: request.strategy,
        };
        let merge_base = repo.merge_base(base_tip, head).ok().flatten().map(|id| id.detach());
        if merge_base == Some(head) {
            // Head is already part of base: nothing to merge.
            return Ok(outcome(base_tip));
        }
        let fast_forward_possible = merge_base == Some(base_tip);
        if request.strategy == MergeStrategy::FastForward {
            if !fast_forward_possible {
                return Err(ApiError::NotFastForward {
                    base: request.base.clone(),
                    head: request.head.clone(),
                });
            }
            self.move_branch(&repo, &request.base, base_tip, head, "merge: fast-forward")?;
            return Ok(outcome(head));
        }
        let tree = self.merged_tree(&repo, request, base_tip, head)?;
        let (message, parents) = match request.strategy {
            MergeStrategy::Squash => (
                request
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("Squash {} into {}", request.head, request.base)),
                vec![base_tip],
            ),
            _ => (
                request
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("Merge {} into {}", request.head, request.base)),
                vec![base_tip, head],
            ),
        };
        let commit = self.commit_on_branch(
            &repo,
            &request.base,
            &message,
            (&request.author_name, &request.author_email),
            tree,
            parents,
        )?;
        Ok(outcome(commit))
    }

    /// The tree of merging `head` into `base_tip`, or the conflicting paths.
    fn merged_tree(
        &self,
        repo: &gix::Repository,
        request: &MergeRequest,
        base_tip: ObjectId,
        head: ObjectId,
    ) -> Result<ObjectId, ApiError> {
        let labels = gix::merge::blob::builtin_driver::text::Labels {
            ancestor: None,
            current: Some(request.base.as_bytes().as_bstr()),
            other: Some(request.head.as_bytes().as_bstr()),
        };
        let options = repo.tree_merge_options().context("merge options")?;
        let mut merged = repo
            .merge_commits(base_tip, head, labels, options.into())
            .map_err(|error| {
                // Unrelated histories have no merge base; say so instead of an internal error.
                ApiError::invalid(format!("cannot merge {} into {}: {error}", request.head, request.base))
            })?;
        let how = gix::merge::tree::TreatAsUnresolved::default();
        if merged.tree_merge.has_unresolved_conflicts(how) {
            let paths: BTreeSet<String> = merged
                .tree_merge
                .conflicts
                .iter()
                .filter(|conflict| conflict.is_unresolved(how))
                .flat_map(|conflict| [conflict.ours.location().to_string(), conflict.theirs.location().to_string()])
                .filter(|path| !path.is_empty())
                .collect();
            return Err(ApiError::MergeConflict {
                base: request.base.clone(),
                head: request.head.clone(),
                paths: paths.into_iter().collect(),
            });
        }
        Ok(merged.tree_merge.tree.write().context("write merged tree")?.detach())
    }

    /// Writes a commit and moves `branch` to it, provided the branch is still at the first
    /// parent (or absent, for a commit with no parent or a new branch).
    fn commit_on_branch(
        &self,
        repo: &gix::Repository,
        branch: &str,
        message: &str,
        (name, email): (&str, &str),
        tree: ObjectId,
        parents: Vec<ObjectId>,
    ) -> Result<ObjectId, ApiError> {
        if name.trim().is_empty() || email.trim().is_empty() {
            return Err(ApiError::invalid("a commit needs an author name and email"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let signature = gix::actor::Signature {
            name: name.into(),
            email: email.into(),
            time: gix::date::Time::new(now, 0),
        };
        let mut time = gix::date::parse::TimeBuf::default();
        let signature = signature.to_ref(&mut time);
        let id = repo
            .commit_as(signature, signature, format!("refs/heads/{branch}").as_str(), message, tree, parents)
            .map_err(|error| ApiError::StaleParent {
                branch: branch.to_owned(),
                expected: "the tip read at the start of the write".into(),
                actual: format!("moved meanwhile ({error})"),
            })?;
        Ok(id.detach())
    }

    fn move_branch(
        &self,
        repo: &gix::Repository,
        branch: &str,
        from: ObjectId,
        to: ObjectId,
        why: &str,
    ) -> Result<(), ApiError> {
        repo.reference(
            format!("refs/heads/{branch}").as_str(),
            to,
            PreviousValue::MustExistAndMatch(Target::Object(from)),
            why,
        )
        .context("move branch")?;
        Ok(())
    }

    /// The commit a branch points at, if it exists.
    fn branch_tip(&self, repo: &gix::Repository, branch: &str) -> Result<Option<ObjectId>, ApiError> {
        let name = format!("refs/heads/{branch}");
        match repo.try_find_reference(name.as_str()).context("find branch")? {
            Some(mut reference) => Ok(Some(reference.peel_to_id().context("peel branch")?.detach())),
            None => Ok(None),
        }
    }

    /// Where a new branch starts: `start`, else the default branch, else nowhere (a root
    /// commit in an empty repository).
    fn start_point(&self, repo: &gix::Repository, start: Option<&str>) -> Result<Option<ObjectId>, ApiError> {
        if let Some(start) = start {
            return Ok(Some(self.resolve(repo, Some(start))?.id));
        }
        match self.head_branch(repo)? {
            Some(head) => self.branch_tip(repo, &head),
            None => Ok(None),
        }
    }
}

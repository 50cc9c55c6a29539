//! Ref changes, whatever made them: one event each in the repository's history, and the
//! pipeline rules run on them.
//!
//! A push (see [`crate::session`]) and a write through the API (a commit, a merge, a branch
//! created or deleted; see [`crate::repo_actor`]) both run in the repository's write turn: they
//! take a snapshot of the refs before ([`snapshot`]), change the repository, and hand the
//! snapshot to [`record_or_undo`]. That compares it with the refs after, commits the
//! differences as push events (`wharf_meta::Command::RecordPush`, so they appear in
//! `/events`), and starts the pipelines of the branches that moved ([`crate::ci::on_push`]),
//! the same way for every source (issue 13, point 7). If the events cannot be committed the
//! refs go back to the snapshot, so no change exists without its event.

use std::collections::BTreeMap;

use wharf_meta::{Command, RefUpdate};
use wharf_proto::ApiError;

use crate::repo_actor::RepoContext;

/// Every ref of the repository and its value. Call it in the write turn, before the change.
pub(crate) async fn snapshot(repo: &RepoContext) -> Result<BTreeMap<String, String>, ApiError> {
    let git = repo.git.clone();
    tokio::task::spawn_blocking(move || git.refs())
        .await
        .map_err(|e| ApiError::internal("snapshot refs", e))?
}

/// A name for one change that is unique in the metadata store, so that a retried record is
/// applied once.
pub(crate) fn change_id(repo: &RepoContext) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{}-{nanos}", repo.node.config.id, repo.id)
}

/// Commits the ref changes since `refs_before` as events by `user`, then runs the pipeline
/// rules on them. If the events cannot be committed, puts the refs back and returns the error.
pub(crate) async fn record_or_undo(
    repo: &RepoContext,
    refs_before: &BTreeMap<String, String>,
    user: &str,
    change_id: String,
) -> Result<(), ApiError> {
    let git = repo.git.clone();
    let refs_after = tokio::task::spawn_blocking(move || git.refs())
        .await
        .map_err(|e| ApiError::internal("read refs after the change", e))??;
    let updates = ref_updates(refs_before, &refs_after);
    if updates.is_empty() {
        return Ok(());
    }
    let command = Command::RecordPush {
        push_id: change_id,
        repo: repo.id,
        updates: updates.clone(),
        pusher: user.to_owned(),
        now_ms: crate::now_ms(),
    };
    let committed = match repo.node.meta.write(command).await {
        Ok(_) => {
            crate::ci::on_push(repo.node.clone(), repo.id, repo.git.clone(), &updates);
            return Ok(());
        }
        Err(wharf_meta::WriteError::Refused(error)) => error,
        Err(wharf_meta::WriteError::Meta(error)) => ApiError::Unavailable {
            what: "metadata store".into(),
            reason: error.to_string(),
            retry_after_secs: 1,
        },
    };
    tracing::error!(repo = %repo.name, error = %committed, "ref change event not committed; restoring refs");
    let path = repo.git.path().to_owned();
    tokio::task::spawn_blocking(move || restore_refs(&path, &updates))
        .await
        .map_err(|e| ApiError::internal("restore refs", e))??;
    Err(committed)
}

/// The ref changes between two snapshots, in ref-name order.
fn ref_updates(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<RefUpdate> {
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| RefUpdate {
            ref_name: name.clone(),
            old: before.get(name).cloned(),
            new: after.get(name).cloned(),
        })
        .collect()
}

/// Puts refs back to their values before a push, in one `git update-ref` transaction that
/// checks each ref still has the pushed value.
fn restore_refs(path: &std::path::Path, updates: &[RefUpdate]) -> Result<(), ApiError> {
    use std::io::Write;
    let zero = "0000000000000000000000000000000000000000";
    let mut script = String::from("start\n");
    for update in updates {
        let old = update.old.as_deref().unwrap_or(zero);
        let new = update.new.as_deref().unwrap_or(zero);
        script.push_str(&format!("update {} {old} {new}\n", update.ref_name));
    }
    script.push_str("prepare\ncommit\n");
    let mut child = std::process::Command::new("git")
        .args(["update-ref", "--stdin"])
        .current_dir(path)
        .env("GIT_DIR", path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ApiError::internal("spawn git update-ref", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| ApiError::internal("write to git update-ref", e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| ApiError::internal("wait for git update-ref", e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ApiError::GitFailed {
            command: "update-ref".into(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_updates_lists_created_changed_and_deleted_refs_only() {
        let before = BTreeMap::from([
            ("refs/heads/main".to_string(), "a".to_string()),
            ("refs/heads/gone".to_string(), "b".to_string()),
            ("refs/tags/v1".to_string(), "c".to_string()),
        ]);
        let after = BTreeMap::from([
            ("refs/heads/main".to_string(), "d".to_string()),
            ("refs/heads/new".to_string(), "e".to_string()),
            ("refs/tags/v1".to_string(), "c".to_string()),
        ]);
        let updates = ref_updates(&before, &after);
        let summary: Vec<_> = updates
            .iter()
            .map(|u| (u.ref_name.as_str(), u.old.as_deref(), u.new.as_deref()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("refs/heads/gone", Some("b"), None),
                ("refs/heads/main", Some("a"), Some("d")),
                ("refs/heads/new", None, Some("e")),
            ]
        );
    }
}

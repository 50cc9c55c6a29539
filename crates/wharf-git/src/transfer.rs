//! Copying a whole repository between nodes: a bundle of every ref on the source, fetched into
//! an incoming copy on the target, checked, then put in place.
//!
//! These run the `git` binary: `git bundle` and `git fsck` have no gix equivalent, and a move
//! is rare enough that a process per step costs nothing that matters.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use wharf_proto::ApiError;

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, ApiError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .map_err(|e| ApiError::internal("run git", e))?;
    if !output.status.success() {
        return Err(ApiError::GitFailed {
            command: args.first().copied().unwrap_or("git").to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).chars().take(2000).collect(),
        });
    }
    Ok(output.stdout)
}

/// Every ref of the repository at `repo` (full name to object id), as git lists them.
pub fn list_refs(repo: &Path) -> Result<BTreeMap<String, String>, ApiError> {
    let out = git(repo, &["for-each-ref", "--format=%(objectname) %(refname)"])?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, name)| (name.to_owned(), id.to_owned()))
        .collect())
}

/// The branch HEAD points at (`refs/heads/main`), if it is symbolic.
pub fn head_ref(repo: &Path) -> Result<Option<String>, ApiError> {
    match git(repo, &["symbolic-ref", "-q", "HEAD"]) {
        Ok(out) => Ok(Some(String::from_utf8_lossy(&out).trim().to_owned())),
        Err(_) => Ok(None),
    }
}

/// Writes a bundle of every ref of `repo` to `file`. Returns `false` (and writes nothing)
/// when the repository has no refs, which git cannot bundle.
pub fn create_bundle(repo: &Path, file: &Path) -> Result<bool, ApiError> {
    if list_refs(repo)?.is_empty() {
        return Ok(false);
    }
    let file = file.to_str().ok_or_else(|| ApiError::internal("bundle path", "not UTF-8"))?;
    git(repo, &["bundle", "create", "--quiet", file, "--all"])?;
    Ok(true)
}

/// Creates the bare repository `incoming` if it does not exist, ready to receive bundles.
pub fn prepare_incoming(incoming: &Path, name: &str) -> Result<(), ApiError> {
    if incoming.exists() {
        return Ok(());
    }
    crate::GitRepo::init(incoming, name).map(drop)
}

/// Fetches every ref of `bundle` into `incoming`, removing refs the bundle lacks.
pub fn fetch_bundle(incoming: &Path, bundle: &Path) -> Result<(), ApiError> {
    let bundle = bundle.to_str().ok_or_else(|| ApiError::internal("bundle path", "not UTF-8"))?;
    git(incoming, &["fetch", "--quiet", "--prune", "--no-write-fetch-head", bundle, "+refs/*:refs/*"])?;
    Ok(())
}

/// Checks the copy at `incoming` against the source: object graph intact (`git fsck`), the
/// same refs, the same HEAD.
pub fn verify(incoming: &Path, refs: &BTreeMap<String, String>, head: Option<&str>) -> Result<(), ApiError> {
    git(incoming, &["fsck", "--no-progress", "--no-dangling"])?;
    let copied = list_refs(incoming)?;
    if &copied != refs {
        return Err(ApiError::internal(
            "verify moved repository",
            format!("refs differ from the source: {} copied, {} expected", copied.len(), refs.len()),
        ));
    }
    if let Some(head) = head {
        git(incoming, &["symbolic-ref", "HEAD", head])?;
    }
    Ok(())
}

/// Whether the repository at `repo` holds commit `sha`.
pub fn has_commit(repo: &Path, sha: &str) -> bool {
    git(repo, &["cat-file", "-e", &format!("{sha}^{{commit}}")]).is_ok()
}

//! Operations on one bare Git repository.
//!
//! [`GitRepo`] owns a repository directory and answers the reads and writes of the browsing API
//! with gix: refs, trees, blobs, history, diffs, commits built from file actions, and merges.
//! [`service`] runs the server side of the pack protocol, which gix does not have, with the
//! `git` binary.
//!
//! A `GitRepo` is opened once by the repository's actor and shared by its tasks: it holds a
//! [`gix::ThreadSafeRepository`] and every call takes a thread-local handle, so reads run in
//! parallel on the blocking pool. Every error is an [`ApiError`], ready to travel to the front.

mod diff;
mod read;
pub mod service;
pub mod transfer;
mod write;

use std::path::{Path, PathBuf};

use wharf_proto::ApiError;

/// The branch a new repository's HEAD points at.
pub const DEFAULT_BRANCH: &str = "main";

/// The configuration every Wharf repository gets: pushes over HTTP are allowed, pushed objects
/// are checked, and objects and refs are fsynced before git reports success.
const REPOSITORY_CONFIG: &str = "\
[http]
\treceivepack = true
[receive]
\tfsckObjects = true
\tdenyNonFastForwards = false
[core]
\tfsync = objects,reference
\tfsyncMethod = fsync
[uploadpack]
\tallowFilter = true
\tallowAnySHA1InWant = true
";

/// One bare repository on disk.
pub struct GitRepo {
    path: PathBuf,
    /// The repository's name, used in error messages only.
    name: String,
    repo: gix::ThreadSafeRepository,
}

impl GitRepo {
    /// Creates an empty bare repository at `path`, which must not exist yet.
    pub fn init(path: &Path, name: impl Into<String>) -> Result<GitRepo, ApiError> {
        if path.exists() {
            return Err(ApiError::internal(
                "initialise repository",
                format!("{} exists already", path.display()),
            ));
        }
        gix::init_bare(path).map_err(|e| ApiError::internal("initialise repository", e))?;
        std::fs::write(path.join("HEAD"), format!("ref: refs/heads/{DEFAULT_BRANCH}\n"))
            .and_then(|()| append_config(path))
            .map_err(|e| ApiError::internal("configure repository", e))?;
        GitRepo::open(path, name)
    }

    /// Opens the bare repository at `path`.
    pub fn open(path: &Path, name: impl Into<String>) -> Result<GitRepo, ApiError> {
        let repo = gix::open(path)
            .map_err(|e| ApiError::internal("open repository", e))?
            .into_sync();
        Ok(GitRepo {
            path: path.to_owned(),
            name: name.into(),
            repo,
        })
    }

    /// The repository's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for this thread. Cheap: the object database and ref store are shared.
    fn local(&self) -> gix::Repository {
        let mut repo = self.repo.to_thread_local();
        repo.object_cache_size_if_unset(4 * 1024 * 1024);
        repo
    }

    /// Removes the quarantine directories of pushes that never finished (`git receive-pack`
    /// keeps a push's objects in `objects/tmp_objdir-incoming-*` until it is accepted).
    ///
    /// Only safe while no receive-pack runs on this repository: the caller holds its write
    /// turn, or no session is open. Returns how many were removed.
    pub fn remove_quarantines(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.path.join("objects"))? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("tmp_objdir-incoming-") {
                std::fs::remove_dir_all(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn revision_not_found(&self, rev: &str) -> ApiError {
        ApiError::RevisionNotFound {
            repo: self.name.clone(),
            rev: rev.to_owned(),
        }
    }
}

fn append_config(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path.join("config"))?;
    file.write_all(REPOSITORY_CONFIG.as_bytes())
}

/// Turns any library error into an internal [`ApiError`] naming what was being done.
trait Context<T> {
    fn context(self, what: &str) -> Result<T, ApiError>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, ApiError> {
        self.map_err(|error| ApiError::internal(what, error))
    }
}

/// Checks a path given by a client for a file in a tree: relative, `/`-separated, with no
/// empty, `.`, `..` or `.git` components.
pub fn validate_tree_path(path: &str) -> Result<(), ApiError> {
    let refuse = |reason: &str| {
        Err(ApiError::invalid(format!(
            "path {:?} {reason}",
            path.chars().take(200).collect::<String>()
        )))
    };
    if path.is_empty() {
        return refuse("is empty");
    }
    if path.len() > 4096 {
        return refuse("is longer than 4096 bytes");
    }
    if path.chars().any(|c| c.is_control()) {
        return refuse("contains a control character");
    }
    for component in path.split('/') {
        match component {
            "" => return refuse("has an empty component or a leading or trailing '/'"),
            "." | ".." => return refuse("has a '.' or '..' component"),
            c if c.eq_ignore_ascii_case(".git") => return refuse("has a '.git' component"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a branch name: what `git check-ref-format --branch` accepts, minus the exotic.
pub fn validate_branch_name(name: &str) -> Result<(), ApiError> {
    let refuse = |reason: &str| {
        Err(ApiError::InvalidName {
            name: name.chars().take(200).collect(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() || name.len() > 200 {
        return refuse("a branch name has 1 to 200 bytes");
    }
    if name.starts_with('-') || name.starts_with('/') || name.ends_with('/') {
        return refuse("a branch name may not start with '-' or '/' or end with '/'");
    }
    if name.ends_with(".lock") || name.ends_with('.') || name.contains("..") || name.contains("//") || name.contains("@{") {
        return refuse("a branch name may not contain '..', '//', '@{' or end with '.' or '.lock'");
    }
    if name == "HEAD" || name == "@" {
        return refuse("HEAD and @ are reserved");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
    {
        return refuse("a branch name may not contain spaces, control characters or ~^:?*[\\");
    }
    if name.split('/').any(|c| c.starts_with('.')) {
        return refuse("no component of a branch name may start with '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests;

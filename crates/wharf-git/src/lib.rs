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

/// Characters that change how text is displayed without being seen: bidirectional controls
/// (which can make `main` and a branch that only looks like it read alike, or reorder a path
/// on screen) and zero-width or otherwise invisible ones. Refused in the names and paths a
/// client creates through the API.
fn is_deceptive(c: char) -> bool {
    matches!(c,
        '\u{061C}' // Arabic letter mark
        | '\u{00AD}' // soft hyphen
        | '\u{180E}' // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}' // zero-width space, non-joiner, joiner; LRM, RLM
        | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}' // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}' // bidi isolates
        | '\u{206A}'..='\u{206F}' // deprecated format characters
        | '\u{FEFF}' // zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}' // interlinear annotations
    )
}

/// Checks a path given by a client for a file in a tree: relative, `/`-separated, each
/// component valid by git's rules for what may be checked out (gix-validate, with the HFS+
/// and NTFS protections on, so `.git` in any disguise is refused: `.GIT`, `.git\u{200c}`,
/// `GIT~1`, `.git.`, `.git::$INDEX_ALLOCATION`). What no repository can hold (git's fsck
/// refuses the same names on push) is a 400, never a search for it.
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
    let options = gix_validate::path::component::Options {
        // Windows device names and characters are allowed: git allows them on Unix, and a
        // repository pushed from one may hold `aux.c`.
        protect_windows: false,
        protect_hfs: true,
        protect_ntfs: true,
    };
    for component in path.split('/') {
        if component.is_empty() {
            return refuse("has an empty component or a leading or trailing '/'");
        }
        if let Err(error) = gix_validate::path::component(component.into(), None, options) {
            return refuse(&format!("has a component {component:?} git does not allow: {error}"));
        }
    }
    Ok(())
}

/// Checks the path of a file a client creates through the API: [`validate_tree_path`], and no
/// invisible or bidirectional-control characters (see `is_deceptive`).
pub fn validate_new_path(path: &str) -> Result<(), ApiError> {
    validate_tree_path(path)?;
    if let Some(c) = path.chars().find(|c| is_deceptive(*c)) {
        return Err(ApiError::invalid(format!(
            "path {:?} contains the invisible or bidirectional character U+{:04X}",
            path.chars().take(200).collect::<String>(),
            c as u32
        )));
    }
    Ok(())
}

/// Checks the name of a branch that exists or may be read: git's rules for a reference name
/// (gix-validate on `refs/heads/NAME`: no `..`, `@{`, control characters, spaces, `~^:?*[\`,
/// no component that starts with `.` or ends with `.lock`), not `HEAD`, not starting with `-`.
pub fn validate_branch_name(name: &str) -> Result<(), ApiError> {
    let refuse = |reason: String| {
        Err(ApiError::InvalidName {
            name: name.chars().take(200).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 200 {
        return refuse("a branch name has 1 to 200 bytes".into());
    }
    if name.starts_with('-') {
        return refuse("a branch name may not start with '-'".into());
    }
    if name == "HEAD" || name == "@" {
        return refuse("HEAD and @ are reserved".into());
    }
    let full = format!("refs/heads/{name}");
    if let Err(error) = gix_validate::reference::branch_name(full.as_str().into()) {
        return refuse(format!("not a valid git branch name: {error}"));
    }
    Ok(())
}

/// Checks the name of a branch a client creates (or commits to) through the API:
/// [`validate_branch_name`], and no invisible or bidirectional-control characters, which would
/// let one branch pass for another.
pub fn validate_new_branch_name(name: &str) -> Result<(), ApiError> {
    validate_branch_name(name)?;
    if let Some(c) = name.chars().find(|c| is_deceptive(*c)) {
        return Err(ApiError::InvalidName {
            name: name.chars().take(200).collect(),
            reason: format!("a branch name may not contain the invisible or bidirectional character U+{:04X}", c as u32),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;

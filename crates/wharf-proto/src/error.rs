//! Errors that travel in replies from a node to a front. Each variant carries its context as
//! fields and has a stable [`ApiError::code`]; the front maps variants to HTTP statuses in one
//! place. Add variants, never rename them: a peer that cannot decode a reply never answers.

use serde::{Deserialize, Serialize};

/// An error a caller of the Wharf API can see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApiError {
    /// A repository, branch or owner name that is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given (cut to 200 characters).
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// A request whose fields are missing, malformed or contradictory.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// No repository by that name.
    #[error("repository {repo} not found")]
    RepoNotFound {
        /// The name asked for.
        repo: String,
    },
    /// A branch, tag or revision that does not resolve in the repository.
    #[error("revision {rev:?} not found in {repo}")]
    RevisionNotFound {
        /// The repository.
        repo: String,
        /// The branch, tag or commit asked for.
        rev: String,
    },
    /// A path that does not exist in the tree of a revision.
    #[error("path {path:?} not found at {rev:?}")]
    PathNotFound {
        /// The revision that was read.
        rev: String,
        /// The path asked for.
        path: String,
    },
    /// A repository that exists already.
    #[error("repository {repo} already exists")]
    RepoExists {
        /// Its name.
        repo: String,
    },
    /// A branch or tag that exists already.
    #[error("ref {name} already exists in {repo}")]
    RefExists {
        /// The repository.
        repo: String,
        /// The full ref name.
        name: String,
    },
    /// A write whose expected parent is no longer the tip of the branch.
    #[error("branch {branch} is at {actual}, not at the expected parent {expected}")]
    StaleParent {
        /// The branch written to.
        branch: String,
        /// The parent the client expected.
        expected: String,
        /// The branch's actual tip.
        actual: String,
    },
    /// A file operation that contradicts the tree (create of an existing file, update of a
    /// missing one).
    #[error("{action} of {path:?} conflicts with the tree: {reason}")]
    FileConflict {
        /// `create`, `update` or `delete`.
        action: String,
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A merge that cannot be made without resolving conflicts.
    #[error("merging {head} into {base} conflicts in: {}", paths.join(", "))]
    MergeConflict {
        /// The branch merged into.
        base: String,
        /// The ref merged.
        head: String,
        /// The conflicting paths.
        paths: Vec<String>,
    },
    /// A fast-forward merge asked for where the base has diverged.
    #[error("{base} cannot be fast-forwarded to {head}: it has commits {head} lacks")]
    NotFastForward {
        /// The branch merged into.
        base: String,
        /// The ref merged.
        head: String,
    },
    /// No or wrong credentials.
    #[error("authentication required: {reason}")]
    Unauthorized {
        /// What was missing or wrong.
        reason: String,
    },
    /// A body or object over a size limit.
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The node that owns the repository cannot serve it now; the caller should retry.
    #[error("{what} is unavailable, retry in {retry_after_secs}s: {reason}")]
    Unavailable {
        /// What could not be reached.
        what: String,
        /// Why.
        reason: String,
        /// Seconds after which a retry may succeed.
        retry_after_secs: u32,
    },
    /// A git protocol session that does not exist (finished, aborted, or on another node).
    #[error("git session {session} not found")]
    SessionNotFound {
        /// The session id.
        session: u64,
    },
    /// The git binary failed.
    #[error("git {command} failed: {stderr}")]
    GitFailed {
        /// The subcommand.
        command: String,
        /// What it printed on stderr (cut).
        stderr: String,
    },
    /// Something else that does not exist: a pipeline, a job.
    #[error("{what} not found")]
    NotFound {
        /// What was asked for (`pipeline 7`).
        what: String,
    },
    /// A failure inside Wharf, not caused by the request.
    #[error("internal error in {context}: {message}")]
    Internal {
        /// Where it happened.
        context: String,
        /// What happened.
        message: String,
    },
    /// The request does not fit the current state of what it names (a running job retried).
    #[error("conflict: {message}")]
    Conflict {
        /// What is in the way.
        message: String,
    },
    /// A client over its budget of requests of some kind; it may retry after a while.
    #[error("too many {what} from this client; retry in {retry_after_secs}s")]
    RateLimited {
        /// What it sent too many of (`writes`, `failed authentications`).
        what: String,
        /// Seconds after which a retry may succeed.
        retry_after_secs: u32,
    },
    /// A body in a format the endpoint does not take (a JSON endpoint sent a form).
    #[error("unsupported media type {given:?}: send {expected}")]
    UnsupportedMediaType {
        /// The `Content-Type` sent, or empty when there was none.
        given: String,
        /// The type the endpoint takes.
        expected: String,
    },
}

impl ApiError {
    /// A stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidName { .. } => "invalid_name",
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::RepoNotFound { .. } => "repo_not_found",
            ApiError::RevisionNotFound { .. } => "revision_not_found",
            ApiError::PathNotFound { .. } => "path_not_found",
            ApiError::RepoExists { .. } => "repo_exists",
            ApiError::RefExists { .. } => "ref_exists",
            ApiError::StaleParent { .. } => "stale_parent",
            ApiError::FileConflict { .. } => "file_conflict",
            ApiError::MergeConflict { .. } => "merge_conflict",
            ApiError::NotFastForward { .. } => "not_fast_forward",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::SessionNotFound { .. } => "session_not_found",
            ApiError::GitFailed { .. } => "git_failed",
            ApiError::Internal { .. } => "internal",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
        }
    }

    /// Shorthand for an [`ApiError::InvalidRequest`].
    pub fn invalid(reason: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`ApiError::Internal`].
    pub fn internal(context: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ApiError::Internal {
            context: context.into(),
            message: message.to_string(),
        }
    }
}

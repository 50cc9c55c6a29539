//! Identifiers. Every id that crosses a crate boundary is a newtype, never a bare integer or
//! string, so a repository id cannot be passed where a node id is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ApiError;

/// A storage node, as numbered in its config. It doubles as the node's openraft id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A repository, numbered by the metadata store when it is created and never reused. The
/// repository's directory on disk is derived from this id, never from a user's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepoId(pub u64);

impl RepoId {
    /// The directory name of this repository under a node's `repos/` folder.
    pub fn dir_name(self) -> String {
        format!("{:016x}.git", self.0)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A git protocol session (one `git upload-pack` or `git receive-pack` process) on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A validated repository name, `owner/name`.
///
/// Each part is 1 to 100 bytes of ASCII letters, digits, `.`, `_` and `-`, does not start with
/// `.` or `-`, holds no `..`, and does not end in `.git` (that suffix belongs to clone URLs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepoName {
    owner: String,
    name: String,
}

/// Longest owner or name part, in bytes.
pub const MAX_NAME_PART_BYTES: usize = 100;

impl RepoName {
    /// Validates `owner` and `name` as two parts.
    pub fn new(owner: &str, name: &str) -> Result<Self, ApiError> {
        check_part(owner)?;
        check_part(name)?;
        Ok(RepoName {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `owner/name`, `owner/name.git`, or a clone URL ending in one of them
    /// (`http://host:port/owner/name.git`): the seed API's `repo_url`.
    pub fn parse(input: &str) -> Result<Self, ApiError> {
        let invalid = |reason: &str| ApiError::InvalidName {
            name: input.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let path = match input.find("://") {
            Some(scheme_end) => {
                let after_scheme = &input[scheme_end + 3..];
                let slash = after_scheme
                    .find('/')
                    .ok_or_else(|| invalid("a clone URL needs a path /owner/name.git"))?;
                &after_scheme[slash + 1..]
            }
            None => input,
        };
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let mut parts = path.split('/');
        let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid("expected owner/name"));
        };
        Self::new(owner, name)
    }

    /// The owner part.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The name part.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn check_part(part: &str) -> Result<(), ApiError> {
    let invalid = |reason: &str| ApiError::InvalidName {
        name: part.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    if part.is_empty() {
        return Err(invalid("a name part must not be empty"));
    }
    if part.len() > MAX_NAME_PART_BYTES {
        return Err(invalid("a name part must be at most 100 bytes"));
    }
    if let Some(bad) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(&format!(
            "{bad:?} is not allowed: use letters, digits, '.', '_' and '-'"
        )));
    }
    if part.starts_with('.') || part.starts_with('-') {
        return Err(invalid("a name part must not start with '.' or '-'"));
    }
    if part.contains("..") {
        return Err(invalid("a name part must not contain '..'"));
    }
    if part.ends_with(".git") {
        return Err(invalid("a name part must not end in '.git'"));
    }
    Ok(())
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_names_and_clone_urls() {
        for input in [
            "acme/app",
            "acme/app.git",
            "http://127.0.0.1:8080/acme/app.git",
            "https://wharf.example/acme/app",
        ] {
            let name = RepoName::parse(input).unwrap();
            assert_eq!(name.to_string(), "acme/app", "{input}");
        }
    }

    #[test]
    fn rejects_traversal_separators_control_and_long_names() {
        let long = format!("acme/{}", "a".repeat(101));
        for input in [
            "../etc",
            "acme/..",
            "acme/a..b",
            "acme/app/extra",
            "acme",
            "/app",
            "acme/",
            "acme/.hidden",
            "acme/-flag",
            "acme/a\u{7}b",
            "acme/a b",
            "acme/app.git.git",
            long.as_str(),
        ] {
            assert!(RepoName::parse(input).is_err(), "{input:?} should be rejected");
        }
    }
}

//! The request id: one name for one HTTP request in the log lines of every process it reaches.
//!
//! The front takes the id from the client's `x-request-id` header, or makes one, and runs the
//! request inside [`RequestId::scope`]. [`crate::NodeClient`] reads [`RequestId::current`] and
//! puts it in the [`crate::CallEnvelope`] of every call it sends; the node's router runs the call
//! inside the same scope and inside a span that carries the id, so the owning node's log lines
//! show it, and a call that node passes on (to a repository's new owner) carries it further.
//!
//! A task-local rather than a parameter: the id belongs to the request's whole task, and
//! threading it through every handler and helper would change every signature for a value
//! none of them reads.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of one HTTP request: 1 to [`RequestId::MAX_LEN`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestId(String);

impl RequestId {
    /// The longest id kept; a client's longer id is replaced by a new one.
    pub const MAX_LEN: usize = 128;

    /// `text` as an id, if it is one: 1 to [`RequestId::MAX_LEN`] visible ASCII characters, so
    /// that an id from a header can neither flood nor forge log lines.
    pub fn parse(text: &str) -> Option<RequestId> {
        let usable = !text.is_empty() && text.len() <= Self::MAX_LEN && text.bytes().all(|b| b.is_ascii_graphic());
        usable.then(|| RequestId(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the request the current task serves, if it serves one.
    pub fn current() -> Option<RequestId> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `work` as part of this request: [`RequestId::current`] answers this id inside it.
    pub async fn scope<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn only_short_visible_ascii_is_an_id() {
        assert!(RequestId::parse("abc-123_X.y").is_some());
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse("with space").is_none());
        assert!(RequestId::parse("line\nbreak").is_none());
        assert!(RequestId::parse(&"x".repeat(RequestId::MAX_LEN + 1)).is_none());
        assert!(RequestId::parse(&"x".repeat(RequestId::MAX_LEN)).is_some());
    }

    #[tokio::test]
    async fn the_scope_names_the_current_request() {
        assert_eq!(RequestId::current(), None);
        let id = RequestId::parse("req-1").expect("an id");
        let seen = id.clone().scope(async { RequestId::current() }).await;
        assert_eq!(seen, Some(id));
    }
}
